//! What counts as a secret when showing requests: credential and signature headers, and
//! URL userinfo and query values. Used wherever a request is displayed or recorded
//! (render output, the admin API, the delivery log).

/// Headers whose values are secrets, lower-case.
const SENSITIVE_HEADERS: [&str; 10] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-hub-signature",
    "x-hub-signature-256",
    "x-gitlab-token",
    "x-codeup-token",
    "x-gitee-token",
    "webhook-signature",
];

pub const REDACTED: &str = "[redacted]";

pub fn is_sensitive_header(name: &str) -> bool {
    SENSITIVE_HEADERS.iter().any(|sensitive| sensitive.eq_ignore_ascii_case(name))
}

/// Header pairs with secret values replaced by `[redacted]`.
pub fn redact_headers(headers: &[(String, String)]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| (name.clone(), if is_sensitive_header(name) { REDACTED.to_string() } else { value.clone() }))
        .collect()
}

/// A URL for display: userinfo and the values of credential-like query parameters
/// (`access_token`, `sign`, …) replaced by `***`; template expressions stay visible because
/// they hold no secret themselves.
pub fn redact_url(text: &str) -> String {
    let (base, query) = match text.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (text, None),
    };
    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            match authority.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://***@{host}{path}"),
                None => base.to_string(),
            }
        }
        None => base.to_string(),
    };
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, value)) if !value.is_empty() && !is_template(value) && is_secret_name(name) => format!("{name}=***"),
                _ => pair.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    out
}

/// Query parameter names that carry credentials (`access_token`, `sign`, `api_key`, …).
fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["token", "secret", "key", "sign", "sig", "password", "passwd", "auth", "credential"].iter().any(|word| name.contains(word))
}

fn is_template(value: &str) -> bool {
    value.starts_with("{{") && value.ends_with("}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_headers_are_redacted() {
        assert_eq!(
            redact_url("https://ci:pw@host:8443/v2/{{x}}?access_token=abc&sign={{s}}&branch=main&flag"),
            "https://***@host:8443/v2/{{x}}?access_token=***&sign={{s}}&branch=main&flag"
        );
        assert_eq!(redact_url("upstream:/a/b"), "upstream:/a/b");
        assert_eq!(redact_url("http://h/p"), "http://h/p");
        let headers = vec![("Authorization".to_string(), "Basic x".to_string()), ("x-env".to_string(), "prod".to_string())];
        assert_eq!(
            redact_headers(&headers),
            vec![("Authorization".to_string(), REDACTED.to_string()), ("x-env".to_string(), "prod".to_string())]
        );
    }
}

//! What counts as a secret when showing requests: credential and signature headers, and
//! URL userinfo and query values. Used wherever a request is displayed or recorded
//! (render output, the admin API, the delivery log).

/// Headers whose values are secrets, lower-case.
const SENSITIVE_HEADERS: [&str; 11] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-hub-signature",
    "x-hub-signature-256",
    "x-gitlab-token",
    "x-codeup-token",
    "x-gitee-token",
    "x-hookrelay-token",
    "webhook-signature",
];

pub const REDACTED: &str = "[redacted]";

pub fn is_sensitive_header(name: &str) -> bool {
    // A CloudEvents extension carried as `ce-<name>` is a credential when its name says so.
    let extension = name.get(..3).filter(|prefix| prefix.eq_ignore_ascii_case("ce-")).map(|_| &name[3..]);
    SENSITIVE_HEADERS.iter().any(|sensitive| sensitive.eq_ignore_ascii_case(name)) || extension.is_some_and(is_secret_name)
}

/// Header pairs with secret values replaced by `[redacted]`.
pub fn redact_headers(headers: &[(String, String)]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| (name.clone(), if is_sensitive_header(name) { REDACTED.to_string() } else { value.clone() }))
        .collect()
}

/// What the config marks as credentials beyond the fixed list: header names (verify token
/// and signature headers, `sign.hmac.header`) and body fields (`verify.token.field`, TAPD's
/// `secret`). Compiled with each snapshot and applied to everything recorded or shown:
/// stored events, attempt records, the admin API.
#[derive(Debug, Default)]
pub struct Redactions {
    headers: Vec<http::HeaderName>,
    fields: Vec<serde_json_path::JsonPath>,
    query_names: Vec<String>,
    /// Credential values, masked wherever they appear: `${VAR}`s written into URLs and
    /// headers, compared with in matches or named like credentials, and inbound secrets.
    values: Vec<String>,
    /// All of `values` found in one pass (built on first use: a config may hold hundreds,
    /// and every recorded header is searched for them).
    finder: std::sync::OnceLock<Option<aho_corasick::AhoCorasick>>,
}

impl Redactions {
    pub fn add_header(&mut self, name: &http::HeaderName) {
        if !self.headers.contains(name) && !is_sensitive_header(name.as_str()) {
            self.headers.push(name.clone());
        }
    }

    pub fn add_value(&mut self, value: &str) {
        // A value with a quote, a backslash or a control character reads otherwise inside
        // a JSON string (a body rendered from it): that form is masked too.
        let escaped = serde_json::to_string(value).ok().and_then(|quoted| quoted.get(1..quoted.len() - 1).map(str::to_owned));
        for form in [Some(value.to_string()), escaped].into_iter().flatten() {
            if !form.is_empty() && !self.values.contains(&form) {
                self.values.push(form);
                self.finder = std::sync::OnceLock::new();
            }
        }
    }

    /// Whether `text` holds a configured secret value or a stored credential marker.
    fn has_values(&self, text: &str) -> bool {
        text.contains('\u{1}') || (!self.values.is_empty() && self.finder().is_some_and(|finder| finder.is_match(text)))
    }

    fn finder(&self) -> Option<&aho_corasick::AhoCorasick> {
        self.finder
            .get_or_init(|| {
                // Longest first, so that a secret containing another is masked whole.
                aho_corasick::AhoCorasick::builder().match_kind(aho_corasick::MatchKind::LeftmostLongest).build(&self.values).ok()
            })
            .as_ref()
    }

    /// `text` with configured secret values and stored credential markers as `***`.
    pub fn mask_values(&self, text: &str) -> String {
        let finder = self.finder();
        let mut out = String::with_capacity(text.len());
        match finder {
            Some(finder) if !self.values.is_empty() => finder.replace_all_with(text, &mut out, |_, _, dst| {
                dst.push_str("***");
                true
            }),
            _ => out.push_str(text),
        }
        while let Some(start) = out.find('\u{1}') {
            let end = out[start + 1..].find('\u{1}').map_or(out.len(), |end| start + 1 + end + 1);
            out.replace_range(start..end, "***");
        }
        out
    }

    pub fn add_query_name(&mut self, name: String) {
        if !self.query_names.contains(&name) && !is_secret_name(&name) {
            self.query_names.push(name);
        }
    }

    /// A URL for display: [`redact_url`], and the query parameters the config marks.
    pub fn url(&self, text: &str) -> String {
        self.url_shown(text).0
    }

    /// [`Redactions::url`], and whether it differs from what [`redact_url`] alone shows
    /// (the config masked something of its own, which a later config may not know to).
    pub fn url_shown(&self, text: &str) -> (String, bool) {
        // Most URLs hold no value the config knows: then only the query names can differ.
        let masked = if self.has_values(text) { std::borrow::Cow::Owned(self.mask_values(text)) } else { std::borrow::Cow::Borrowed(text) };
        let values_found = masked != text;
        let shown = redact_url(&masked);
        let Some((base, query)) = shown.split_once('?').filter(|_| !self.query_names.is_empty()) else {
            let differs = values_found && shown != redact_url(text);
            return (shown, differs);
        };
        let mut named = false;
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, value))
                    if !value.is_empty()
                        && self
                            .query_names
                            .iter()
                            .any(|secret| percent_encoding::percent_decode_str(name).decode_utf8_lossy() == *secret) =>
                {
                    named = true;
                    format!("{name}=***")
                }
                _ => pair.to_string(),
            })
            .collect();
        let shown = format!("{base}?{}", pairs.join("&"));
        let differs = named || (values_found && shown != redact_url(text));
        (shown, differs)
    }

    pub fn add_field(&mut self, path: &serde_json_path::JsonPath) {
        if !self.fields.contains(path) {
            self.fields.push(path.clone());
        }
    }

    fn is_secret_header(&self, name: &str) -> bool {
        is_sensitive_header(name) || self.headers.iter().any(|secret| secret.as_str().eq_ignore_ascii_case(name))
    }

    /// Header pairs with every credential value replaced by `[redacted]`.
    pub fn headers(&self, headers: &[(String, String)]) -> Vec<(String, String)> {
        self.mask_headers(headers.to_vec())
    }

    /// [`Redactions::headers`] of pairs the caller owns: a value with nothing to mask is kept
    /// as it is, not copied.
    pub fn mask_headers(&self, mut headers: Vec<(String, String)>) -> Vec<(String, String)> {
        for (name, value) in &mut headers {
            if self.is_secret_header(name) {
                *value = REDACTED.to_string();
            } else if self.has_values(value) {
                *value = self.mask_values(value);
            }
        }
        headers
    }

    /// A body with credential fields replaced by `[redacted]`: JSON by path, a form by the
    /// field name the path ends in. Anything else, or a body with no such field, is
    /// returned as it is (without a copy).
    pub fn body(&self, content_type: Option<&str>, body: &bytes::Bytes) -> bytes::Bytes {
        let media_type = crate::inbound::media_type(content_type);
        let cloudevents = matches!(&*media_type, "application/cloudevents+json" | "application/cloudevents-batch+json");
        if (self.fields.is_empty() && !cloudevents) || body.is_empty() {
            return body.clone();
        }
        if media_type == "application/x-www-form-urlencoded" {
            return self.form(body).map_or_else(|| body.clone(), bytes::Bytes::from);
        }
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(mut value) => {
                let masked_extensions = cloudevents && mask_cloudevent_extensions(&mut value);
                let pointers: Vec<String> = self
                    .fields
                    .iter()
                    .flat_map(|path| path.query_located(&value).locations().map(|at| at.to_json_pointer()).collect::<Vec<_>>())
                    .collect();
                if pointers.is_empty() && !masked_extensions {
                    return body.clone();
                }
                for pointer in pointers {
                    if let Some(found) = value.pointer_mut(&pointer) {
                        *found = serde_json::Value::String(REDACTED.to_string());
                    }
                }
                serde_json::to_vec(&value).map_or_else(|_| body.clone(), bytes::Bytes::from)
            }
            Err(_) => body.clone(),
        }
    }

    /// A body for display: [`Redactions::body`], and every configured secret value in it as
    /// `***` (a template may have put one anywhere).
    pub fn shown_body(&self, content_type: Option<&str>, body: &bytes::Bytes) -> bytes::Bytes {
        let masked = self.body(content_type, body);
        let text = String::from_utf8_lossy(&masked);
        let shown = self.mask_values(&text);
        if shown == text {
            return masked;
        }
        bytes::Bytes::from(shown)
    }

    fn form(&self, body: &[u8]) -> Option<String> {
        let names: Vec<String> = self.fields.iter().filter_map(|path| top_level_name(&path.to_string())).collect();
        let pairs: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
        if !pairs.iter().any(|(name, _)| names.contains(name)) {
            return None;
        }
        let mut form = form_urlencoded::Serializer::new(String::new());
        for (name, value) in &pairs {
            form.append_pair(name, if names.contains(name) { REDACTED } else { value });
        }
        Some(form.finish())
    }
}

/// `$.secret` or `$['secret']` → `secret`: the form field a top-level JSONPath names.
fn top_level_name(path: &str) -> Option<String> {
    let rest = path.strip_prefix('$')?;
    if let Some(name) = rest.strip_prefix('.') {
        return (!name.is_empty() && !name.contains(['.', '[', '*'])).then(|| name.to_string());
    }
    let inner = rest.strip_prefix("['")?.strip_suffix("']")?;
    (!inner.contains('\'')).then(|| inner.to_string())
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
        out.push('?');
        for (index, pair) in query.split('&').enumerate() {
            if index > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((name, value)) if !value.is_empty() && !is_template(value) && is_secret_name(name) => {
                    out.push_str(name);
                    out.push_str("=***");
                }
                _ => out.push_str(pair),
            }
        }
    }
    out
}

/// Query parameter names that carry credentials (`access_token`, `sign`, `api_key`, …).
/// Whether a parameter or field name says its value is a credential.
/// Masks the extension attributes of a structured CloudEvent (or of each event of a batch)
/// whose names say they are credentials, as their `ce-*` headers are in binary mode.
/// Whether it masked any.
fn mask_cloudevent_extensions(value: &mut serde_json::Value) -> bool {
    const DEFINED: [&str; 10] =
        ["specversion", "id", "source", "type", "subject", "time", "datacontenttype", "dataschema", "data", "data_base64"];
    let events: Vec<&mut serde_json::Value> = match value {
        serde_json::Value::Array(entries) => entries.iter_mut().collect(),
        event => vec![event],
    };
    let mut masked = false;
    for event in events {
        let Some(attributes) = event.as_object_mut() else { continue };
        for (name, value) in attributes.iter_mut() {
            if !DEFINED.contains(&name.as_str()) && is_secret_name(name) {
                *value = serde_json::Value::String(REDACTED.to_string());
                masked = true;
            }
        }
    }
    masked
}

pub fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["token", "secret", "key", "sign", "sig", "password", "passwd", "auth", "credential"].iter().any(|word| name.contains(word))
}

fn is_template(value: &str) -> bool {
    value.starts_with("{{") && value.ends_with("}}")
}

#[cfg(test)]
mod tests {

    #[test]
    fn credential_like_cloudevents_extensions_are_secret() {
        for name in ["ce-authorization", "CE-Token", "ce-apisecret", "authorization"] {
            assert!(is_sensitive_header(name), "{name}");
        }
        for name in ["ce-type", "ce-source", "ce-id", "content-type"] {
            assert!(!is_sensitive_header(name), "{name}");
        }
    }

    use super::*;

    #[test]
    fn credential_extensions_of_structured_cloudevents_are_masked() {
        let none = Redactions::default();
        let event =
            br#"{"specversion":"1.0","id":"1","source":"s","type":"t","authtoken":"abc","traceparent":"x","data":{"token":"kept"}}"#;
        let masked = none.body(Some("application/cloudevents+json"), &bytes::Bytes::from_static(event));
        let masked: serde_json::Value = serde_json::from_slice(&masked).unwrap();
        assert_eq!((masked["authtoken"].as_str(), masked["id"].as_str()), (Some(REDACTED), Some("1")));
        assert_eq!(masked["data"]["token"], "kept", "data is the payload: only configured fields are masked in it");
        let batch = bytes::Bytes::from(format!("[{}]", std::str::from_utf8(event).unwrap()));
        let masked: serde_json::Value = serde_json::from_slice(&none.body(Some("application/cloudevents-batch+json"), &batch)).unwrap();
        assert_eq!(masked[0]["authtoken"], REDACTED);
        let plain = bytes::Bytes::from_static(event);
        assert_eq!(none.body(Some("application/json"), &plain), plain, "other JSON is left alone");
    }

    #[test]
    fn configured_headers_and_fields_are_redacted() {
        let mut redactions = Redactions::default();
        redactions.add_header(&http::HeaderName::from_static("x-hookrelay-token"));
        redactions.add_field(&serde_json_path::JsonPath::parse("$.secret").unwrap());
        let headers = vec![("X-Hookrelay-Token".to_string(), "t".to_string()), ("X-Gitlab-Token".to_string(), "g".to_string())];
        assert_eq!(
            redactions.headers(&headers),
            vec![("X-Hookrelay-Token".to_string(), REDACTED.to_string()), ("X-Gitlab-Token".to_string(), REDACTED.to_string())]
        );
        let json = bytes::Bytes::from_static(br#"{"event":"bug::create","secret":"s3"}"#);
        assert_eq!(&redactions.body(Some("application/json"), &json)[..], br#"{"event":"bug::create","secret":"[redacted]"}"#);
        let form = bytes::Bytes::from_static(b"event=bug%3A%3Acreate&secret=s3&title=a+b");
        assert_eq!(
            &redactions.body(Some("application/x-www-form-urlencoded"), &form)[..],
            b"event=bug%3A%3Acreate&secret=%5Bredacted%5D&title=a+b"
        );
        let untouched = bytes::Bytes::from_static(br#"{"event":"x"}"#);
        assert_eq!(redactions.body(Some("application/json"), &untouched).as_ptr(), untouched.as_ptr(), "no field, no copy");
    }

    #[test]
    fn a_secret_is_masked_in_a_json_body_as_json_writes_it() {
        let mut config = Redactions::default();
        config.add_value("SECRET\"q\\z");
        let body = bytes::Bytes::from(serde_json::to_vec(&serde_json::json!({ "echo": "SECRET\"q\\z", "n": 1 })).unwrap());
        assert_eq!(config.shown_body(Some("application/json"), &body), r#"{"echo":"***","n":1}"#);
        assert_eq!(config.mask_values("x SECRET\"q\\z"), "x ***", "and as it is, in a header");
    }

    /// Whether a URL is shown otherwise than [`redact_url`] alone would show it: exactly when
    /// the config masked a value or a query parameter of its own.
    #[test]
    fn a_url_says_whether_the_config_masked_it() {
        let none = Redactions::default();
        let generic = "http://u:p@h/p?access_token=abc&n=1";
        assert_eq!(none.url_shown(generic), (redact_url(generic), false));
        let mut config = Redactions::default();
        config.add_value("s3cr3t-value");
        config.add_query_name("team".into());
        assert_eq!(config.url_shown(generic), (redact_url(generic), false), "nothing of the config's in it");
        assert_eq!(config.url_shown("http://h/s3cr3t-value/p?n=1"), ("http://h/***/p?n=1".to_string(), true));
        assert_eq!(config.url_shown("http://h/p?team=k&n=1"), ("http://h/p?team=***&n=1".to_string(), true));
        assert_eq!(config.url_shown("http://h/p?team=&n=1"), ("http://h/p?team=&n=1".to_string(), false), "nothing to mask");
        let both = "http://h/p?access_token=s3cr3t-value";
        assert_eq!(config.url_shown(both), ("http://h/p?access_token=***".to_string(), false), "masked alike either way");
    }

    #[test]
    fn urls_and_headers_are_redacted() {
        assert_eq!(
            redact_url("https://ci:pw@host:8443/v2/{{x}}?access_token=abc&sign={{s}}&branch=main&flag"),
            "https://***@host:8443/v2/{{x}}?access_token=***&sign={{s}}&branch=main&flag"
        );
        assert_eq!(redact_url("upstream:/a/b"), "upstream:/a/b");
        assert_eq!(redact_url("http://h/p"), "http://h/p");
        assert_eq!(redact_url("http://h/p?"), "http://h/p?");
        assert_eq!(redact_url("http://h/p?a&&token=t&=x&b="), "http://h/p?a&&token=***&=x&b=");
        let headers = vec![("Authorization".to_string(), "Basic x".to_string()), ("x-env".to_string(), "prod".to_string())];
        assert_eq!(
            redact_headers(&headers),
            vec![("Authorization".to_string(), REDACTED.to_string()), ("x-env".to_string(), "prod".to_string())]
        );
    }
}

//! Header and query values a target's config writes from `${VAR}`: they are credentials
//! (an API key header, DingTalk's `access_token`), so they are left out of the rendered
//! request that is stored and added at send time from the config serving then. A retry
//! after a credential was fixed in the config sends the fixed one. Values that mix a
//! `${VAR}` with a template stay in the rendered request (and are masked when shown).

use http::{HeaderName, HeaderValue};

use crate::delivery::request::OutgoingRequest;

#[derive(Debug, Default)]
pub struct EnvCredentials {
    headers: Vec<(HeaderName, HeaderValue)>,
    /// `name=value` pairs, already URL-encoded, appended to the query string.
    query: Vec<(String, String)>,
    /// Values from `${VAR}` that stay inside a rendered URL or header value (a path token,
    /// a header mixing a secret with a template), by variable name: stored as markers
    /// naming the variable, filled in at send time.
    secret_values: Vec<(String, String)>,
    /// The same values as the URL parser writes them into a path (percent-encoded), where
    /// that differs: a URL carries them in that form.
    encoded_values: Vec<(String, String)>,
}

/// What the URL parser percent-encodes in a path (the WHATWG path percent-encode set).
const PATH_ENCODED: &percent_encoding::AsciiSet =
    &percent_encoding::CONTROLS.add(b' ').add(b'"').add(b'<').add(b'>').add(b'`').add(b'#').add(b'?').add(b'{').add(b'}');

/// Short values (`1`, `main`) would mask half of every request; credentials are longer.
const MIN_SECRET_LEN: usize = 6;

/// The marker for variable `name` in a stored URL or header value. Control characters
/// never occur in a rendered URL (the parser encodes them) or header value (refused), so a
/// marker cannot be forged from payload data. Naming the variable means a marker is only
/// ever filled with the value of the same variable, whatever the config has become.
fn marker(name: &str) -> String {
    format!("\u{1}{name}\u{1}")
}

/// The marker for variable `name` in its percent-encoded form (`%` never occurs in a
/// variable's name).
fn encoded_marker(name: &str) -> String {
    format!("\u{1}{name}%\u{1}")
}

impl EnvCredentials {
    pub fn add_secret_values<'v>(&mut self, values: impl Iterator<Item = &'v crate::config::env::Substituted>) {
        for substituted in values.filter(|v| v.value.len() >= MIN_SECRET_LEN) {
            if !self.secret_values.iter().any(|(name, _)| *name == substituted.name) {
                self.secret_values.push((substituted.name.clone(), substituted.value.clone()));
            }
        }
        // Longest first, so a value inside another is never replaced half-way.
        self.secret_values.sort_by_key(|(_, value)| std::cmp::Reverse(value.len()));
        self.encoded_values = self
            .secret_values
            .iter()
            .filter_map(|(name, value)| {
                let encoded = percent_encoding::utf8_percent_encode(value, PATH_ENCODED).to_string();
                (encoded != *value).then(|| (name.clone(), encoded))
            })
            .collect();
        self.encoded_values.sort_by_key(|(_, value)| std::cmp::Reverse(value.len()));
    }

    pub fn secret_values(&self) -> impl Iterator<Item = &str> {
        self.secret_values.iter().map(|(_, value)| value.as_str())
    }

    /// `text` with every secret value replaced by the marker of its variable (for the store).
    pub fn to_markers(&self, text: &str) -> String {
        self.into_markers(text.to_string())
    }

    /// [`EnvCredentials::to_markers`] of text the caller owns: no copy when it holds none.
    pub fn into_markers(&self, text: String) -> String {
        let mut out = text;
        for (name, value) in &self.encoded_values {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), &encoded_marker(name));
            }
        }
        for (name, value) in &self.secret_values {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), &marker(name));
            }
        }
        out
    }

    /// `stored` with each marker replaced by the value its variable has now; a marker whose
    /// variable this target no longer writes stays (the request cannot be sent as it is).
    pub fn from_markers<'s>(&self, stored: &'s str) -> std::borrow::Cow<'s, str> {
        if !stored.contains('\u{1}') {
            return std::borrow::Cow::Borrowed(stored);
        }
        let mut out = stored.to_string();
        for (name, value) in &self.encoded_values {
            out = out.replace(&encoded_marker(name), value);
        }
        for (name, value) in &self.secret_values {
            out = out.replace(&marker(name), value);
        }
        std::borrow::Cow::Owned(out)
    }

    pub fn add_header(&mut self, name: HeaderName, mut value: HeaderValue) {
        value.set_sensitive(true);
        self.headers.push((name, value));
    }

    /// A `query:` entry (name and value as written, encoded here).
    pub fn add_query_value(&mut self, name: &str, value: &str) {
        let encode = |text: &str| form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>();
        self.query.push((encode(name), encode(value)));
    }

    pub fn header_names(&self) -> impl Iterator<Item = &HeaderName> {
        self.headers.iter().map(|(name, _)| name)
    }

    /// Query parameter names, decoded.
    pub fn query_names(&self) -> impl Iterator<Item = String> + '_ {
        self.query.iter().map(|(name, _)| percent_encoding::percent_decode_str(name).decode_utf8_lossy().into_owned())
    }

    /// Takes the query parameters whose value came from `${VAR}` out of a target URL: `url`
    /// is the expanded text, `original` the text as written. Returns the URL without them.
    pub fn take_from_url(&mut self, url: &str, original: &str) -> String {
        let Some((_, original_query)) = original.split_once('?') else { return url.to_string() };
        let original_query = original_query.split('#').next().unwrap_or_default();
        let from_env: Vec<&str> =
            original_query.split('&').filter_map(|pair| pair.split_once('=')).filter(|(_, v)| v.contains("${")).map(|(k, _)| k).collect();
        let Some((base, rest)) = url.split_once('?') else { return url.to_string() };
        if from_env.is_empty() {
            return url.to_string();
        }
        let (query, fragment) = match rest.split_once('#') {
            Some((query, fragment)) => (query, Some(fragment)),
            None => (rest, None),
        };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some((name, value)) if from_env.contains(&name) && !value.contains("{{") => {
                    self.query.push((name.to_string(), value.to_string()));
                }
                _ => kept.push(pair),
            }
        }
        let mut out = base.to_string();
        if !kept.is_empty() {
            out.push('?');
            out.push_str(&kept.join("&"));
        }
        if let Some(fragment) = fragment {
            out.push('#');
            out.push_str(fragment);
        }
        out
    }

    /// Adds the headers and query parameters to a rendered request, just before sending.
    pub fn apply(&self, request: &mut OutgoingRequest) {
        for (name, value) in &self.headers {
            request.headers.insert(name.clone(), value.clone());
        }
        if self.query.is_empty() {
            return;
        }
        let (base, fragment) = match request.url.split_once('#') {
            Some((base, fragment)) => (base.to_string(), Some(fragment.to_string())),
            None => (request.url.clone(), None),
        };
        let mut url = base;
        for (name, value) in &self.query {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(name);
            url.push('=');
            url.push_str(value);
        }
        if let Some(fragment) = fragment {
            url.push('#');
            url.push_str(&fragment);
        }
        request.url = url;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_query_values_leave_the_url_and_come_back_at_send_time() {
        let mut credentials = EnvCredentials::default();
        let url = credentials.take_from_url(
            "https://oapi.dingtalk.com/robot/send?access_token=abc%2B1&x={{body.x}}&plain=1",
            "https://oapi.dingtalk.com/robot/send?access_token=${DINGTALK_TOKEN}&x={{body.x}}&plain=1",
        );
        assert_eq!(url, "https://oapi.dingtalk.com/robot/send?x={{body.x}}&plain=1");
        assert_eq!(credentials.query_names().collect::<Vec<_>>(), ["access_token"]);
        credentials.add_query_value("key", "a b&c");
        credentials.add_header(HeaderName::from_static("x-api-key"), HeaderValue::from_static("k1"));
        let mut request = OutgoingRequest {
            route: "r".into(),
            target: "t".into(),
            ordered_key: None,
            method: http::Method::POST,
            url: "https://oapi.dingtalk.com/robot/send?x=1&plain=1".into(),
            headers: http::HeaderMap::new(),
            body: bytes::Bytes::new(),
        };
        credentials.apply(&mut request);
        assert_eq!(request.url, "https://oapi.dingtalk.com/robot/send?x=1&plain=1&access_token=abc%2B1&key=a+b%26c");
        assert_eq!(request.headers["x-api-key"], "k1");
        let mut bare = EnvCredentials::default();
        assert_eq!(bare.take_from_url("https://h/p?t=s", "https://h/p?t=${T}"), "https://h/p");
    }

    /// A path token the URL parser percent-encodes (a space, non-ASCII) is stored as a
    /// marker in that form too, and comes back in the form it went out in.
    #[test]
    fn a_path_token_is_kept_out_in_the_form_the_url_carries_it() {
        let substituted =
            |name: &str, value: &str| crate::config::env::Substituted { name: name.into(), value: value.into(), at_start: false };
        let mut credentials = EnvCredentials::default();
        credentials.add_secret_values([substituted("SP_TOKEN", "tok enSECRET2"), substituted("WEIRD_TOKEN", "tökenSECRET1")].iter());
        let sent = url::Url::parse("http://h/robot/tok enSECRET2/x/tökenSECRET1/send").unwrap().to_string();
        let stored = credentials.to_markers(&sent);
        assert!(!stored.contains("SECRET"), "{stored}");
        assert_eq!(credentials.from_markers(&stored), sent);
        assert_eq!(crate::redact::Redactions::default().mask_values(&stored), "http://h/robot/***/x/***/send");
    }
}

//! One received webhook as the relay sees it after buffering: method, path, query,
//! headers, the raw bytes and the body parsed by Content-Type (DESIGN §2).

use std::borrow::Cow;
use std::net::IpAddr;

use bytes::Bytes;
use http::{HeaderMap, Method};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub enum ParsedBody {
    /// JSON, or a form decoded into an object of strings (GitHub's `payload=` form mode
    /// decoded as the JSON it holds).
    Parsed(Value),
    /// A content type the relay does not parse: templates see `body: null`.
    Unparsed,
    /// It claimed to be JSON or a form and was not: routes with body conditions do not match.
    Invalid,
}

/// The bytes of `headers` as sent: each name and value (framing not counted).
pub fn header_bytes(headers: &HeaderMap) -> usize {
    headers.iter().map(|(name, value)| name.as_str().len() + value.len()).sum()
}

/// A content type's media type without its parameters, lower-case (`""` when there is none):
/// `application/json; charset=utf-8` is `application/json`.
pub fn media_type(content_type: Option<&str>) -> Cow<'_, str> {
    let essence = content_type.and_then(|ct| ct.split(';').next()).map_or("", str::trim);
    // Asked several times a request: most senders write it in lower case, so no copy.
    match essence.bytes().any(|byte| byte.is_ascii_uppercase()) {
        true => Cow::Owned(essence.to_ascii_lowercase()),
        false => Cow::Borrowed(essence),
    }
}

/// Whether a media type (as [`media_type`] gives it) is JSON: `application/json` or `…+json`.
pub fn is_json(media_type: &str) -> bool {
    media_type == "application/json" || media_type.ends_with("+json")
}

impl ParsedBody {
    pub fn parse(content_type: Option<&str>, raw: &[u8]) -> ParsedBody {
        let essence = media_type(content_type);
        if is_json(&essence) || (essence.is_empty() && looks_like_json(raw)) {
            return serde_json::from_slice(raw).map(ParsedBody::Parsed).unwrap_or(ParsedBody::Invalid);
        }
        if essence == "application/x-www-form-urlencoded" {
            return parse_form(raw);
        }
        ParsedBody::Unparsed
    }

    /// The body as templates see it: the parsed value, or null.
    pub fn to_value(&self) -> Value {
        match self {
            ParsedBody::Parsed(value) => value.clone(),
            ParsedBody::Unparsed | ParsedBody::Invalid => Value::Null,
        }
    }

    /// The body for conditions and event extraction: only a parsed one.
    pub fn as_matchable(&self) -> Option<&Value> {
        match self {
            ParsedBody::Parsed(value) => Some(value),
            ParsedBody::Unparsed | ParsedBody::Invalid => None,
        }
    }
}

fn looks_like_json(raw: &[u8]) -> bool {
    matches!(raw.iter().find(|b| !b.is_ascii_whitespace()), Some(b'{') | Some(b'['))
}

fn parse_form(raw: &[u8]) -> ParsedBody {
    if std::str::from_utf8(raw).is_err() {
        return ParsedBody::Invalid;
    }
    let fields: serde_json::Map<String, Value> =
        form_urlencoded::parse(raw).map(|(k, v)| (k.into_owned(), Value::String(v.into_owned()))).collect();
    if fields.len() == 1 {
        if let Some(Value::String(payload)) = fields.get("payload") {
            if let Ok(value) = serde_json::from_str::<Value>(payload) {
                return ParsedBody::Parsed(value);
            }
        }
    }
    ParsedBody::Parsed(Value::Object(fields))
}

#[derive(Clone)]
pub struct InboundRequest {
    pub method: Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    /// The query string as sent (without `?`), for the event record.
    pub raw_query: String,
    pub headers: HeaderMap,
    pub raw: Bytes,
    pub body: ParsedBody,
    pub peer: IpAddr,
}

impl InboundRequest {
    /// Moves the parsed body out for the template context once matching and verification
    /// are done, so it is never copied.
    pub fn take_body(&mut self) -> Value {
        match std::mem::replace(&mut self.body, ParsedBody::Unparsed) {
            ParsedBody::Parsed(value) => value,
            ParsedBody::Unparsed | ParsedBody::Invalid => Value::Null,
        }
    }

    pub fn new(method: Method, path_and_query: &str, headers: HeaderMap, raw: Bytes, peer: IpAddr) -> InboundRequest {
        let (path, query_text) = match path_and_query.split_once('?') {
            Some((path, query)) => (path, query),
            None => (path_and_query, ""),
        };
        let query = form_urlencoded::parse(query_text.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        let content_type = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        let body = ParsedBody::parse(content_type, &raw);
        InboundRequest { method, path: path.to_string(), query, raw_query: query_text.to_string(), headers, raw, body, peer }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn media_types_without_parameters_in_lower_case() {
        assert_eq!(media_type(Some("application/json; charset=utf-8")), "application/json");
        assert_eq!(media_type(Some(" Application/JSON ;charset=UTF-8")), "application/json");
        assert!(matches!(media_type(Some("text/plain")), Cow::Borrowed("text/plain")), "lower case is not copied");
        assert_eq!(media_type(Some(";x=y")), "");
        assert_eq!(media_type(None), "");
    }

    #[test]
    fn bodies_by_content_type() {
        assert_eq!(ParsedBody::parse(Some("application/json; charset=utf-8"), br#"{"a":1}"#), ParsedBody::Parsed(json!({"a": 1})));
        assert_eq!(ParsedBody::parse(Some("application/json"), b"{nope"), ParsedBody::Invalid);
        assert_eq!(ParsedBody::parse(None, b" [1]"), ParsedBody::Parsed(json!([1])));
        assert_eq!(ParsedBody::parse(Some("text/plain"), b"{}"), ParsedBody::Unparsed);
        assert_eq!(
            ParsedBody::parse(Some("application/x-www-form-urlencoded"), b"event=bug%3A%3Acreate&title=a+b"),
            ParsedBody::Parsed(json!({"event": "bug::create", "title": "a b"}))
        );
        assert_eq!(
            ParsedBody::parse(Some("application/x-www-form-urlencoded"), b"payload=%7B%22zen%22%3A1%7D"),
            ParsedBody::Parsed(json!({"zen": 1}))
        );
        assert_eq!(
            ParsedBody::parse(Some("application/x-www-form-urlencoded"), b"payload=notjson"),
            ParsedBody::Parsed(json!({"payload": "notjson"}))
        );
    }
}

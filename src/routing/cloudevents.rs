//! Reading a CloudEvent off a request (HTTP binding 1.0): binary mode (`ce-*` headers,
//! the body is the data) or structured mode (an `application/cloudevents+json` body).
//! Gives the `cloudevents` source its event name and delivery id, and templates `ce` and
//! `data`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http::HeaderMap;
use serde_json::{Map, Value};

const PREFIX: &str = "ce-";

/// Whether the request carries a CloudEvent, and in which mode.
enum Mode {
    Binary,
    Structured,
}

/// The content type decides (HTTP binding §3): `application/cloudevents…` is structured
/// (its `ce-*` headers do not count), anything else with `ce-specversion` is binary.
fn mode(headers: &HeaderMap) -> Option<Mode> {
    let essence = crate::inbound::media_type(headers.get(http::header::CONTENT_TYPE).and_then(|value| value.to_str().ok()));
    if essence.starts_with("application/cloudevents") {
        return (essence == "application/cloudevents+json").then_some(Mode::Structured);
    }
    headers.contains_key("ce-specversion").then_some(Mode::Binary)
}

/// One context attribute: from its `ce-` header (percent-decoded, as the binding says),
/// or from the structured envelope.
pub fn attribute(headers: &HeaderMap, body: Option<&Value>, name: &str) -> Option<String> {
    match mode(headers)? {
        Mode::Binary => headers.get(format!("{PREFIX}{name}").as_str()).and_then(|value| value.to_str().ok()).and_then(decode),
        Mode::Structured => body?.get(name).and_then(Value::as_str).map(str::to_string),
    }
}

/// The delivery id a sender's retries share: `source` and `id` together (the spec makes
/// the pair unique), written as a JSON pair so that no two pairs read alike.
pub fn delivery_id(headers: &HeaderMap, body: Option<&Value>) -> Option<String> {
    let pair = [attribute(headers, body, "source")?, attribute(headers, body, "id")?];
    serde_json::to_string(&pair).ok()
}

/// `ce` (every context attribute, extensions included) and `data`, for templates; `None`
/// when the request is no CloudEvent.
pub fn template_fields(headers: &HeaderMap, body: &Value) -> Option<(Value, Value)> {
    match mode(headers)? {
        Mode::Binary => {
            // A repeated header counts once, as matching reads it: the first.
            let mut attributes = Map::new();
            for (name, value) in headers {
                let Some(attribute) = name.as_str().strip_prefix(PREFIX) else { continue };
                if let Some(decoded) = value.to_str().ok().and_then(decode) {
                    attributes.entry(attribute.to_string()).or_insert(Value::String(decoded));
                }
            }
            if let Some(content_type) = headers.get(http::header::CONTENT_TYPE).and_then(|value| value.to_str().ok()) {
                attributes.insert("datacontenttype".into(), Value::String(content_type.to_string()));
            }
            Some((Value::Object(attributes), body.clone()))
        }
        Mode::Structured => {
            let Value::Object(envelope) = body else { return Some((Value::Object(Map::new()), Value::Null)) };
            let mut attributes = envelope.clone();
            let data = match (attributes.remove("data"), attributes.remove("data_base64")) {
                (Some(data), _) => data,
                (None, Some(Value::String(encoded))) => STANDARD
                    .decode(encoded.as_bytes())
                    .ok()
                    .map(|bytes| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
                    .unwrap_or(Value::Null),
                _ => Value::Null,
            };
            Some((Value::Object(attributes), data))
        }
    }
}

/// Why a request to a `cloudevents` route is no CloudEvent, if it is not.
pub fn problem(headers: &HeaderMap, body: Option<&Value>) -> Option<String> {
    match mode(headers) {
        None => Some("not a CloudEvent: no `ce-specversion` header and not `application/cloudevents+json`".into()),
        Some(Mode::Structured) => match body {
            Some(envelope) => envelope_problem(envelope),
            None => Some("a structured CloudEvent must be a JSON object".into()),
        },
        Some(Mode::Binary) => {
            if attribute(headers, None, "specversion").as_deref() != Some("1.0") {
                return Some("`ce-specversion` must be 1.0".into());
            }
            ["id", "source", "type"]
                .into_iter()
                .find(|name| attribute(headers, None, name).is_none_or(|value| value.is_empty()))
                .map(|name| format!("`ce-{name}` must be a non-empty UTF-8 value"))
        }
    }
}

/// Why a JSON-format event (structured, or a batch entry) is no CloudEvent, if it is not:
/// an object with `specversion` 1.0, non-empty string `id`, `source` and `type`, not both
/// `data` and `data_base64` (which must be base64), a string `subject`, `datacontenttype`
/// and `dataschema`, and an RFC 3339 `time`.
pub fn envelope_problem(entry: &Value) -> Option<String> {
    let Value::Object(attributes) = entry else { return Some("not a JSON object".into()) };
    if attributes.get("specversion").and_then(Value::as_str) != Some("1.0") {
        return Some("`specversion` must be \"1.0\"".into());
    }
    for required in ["id", "source", "type"] {
        if attributes.get(required).and_then(Value::as_str).is_none_or(str::is_empty) {
            return Some(format!("`{required}` must be a non-empty string"));
        }
    }
    if attributes.contains_key("data") && attributes.contains_key("data_base64") {
        return Some("both `data` and `data_base64`".into());
    }
    if let Some(encoded) = attributes.get("data_base64") {
        let decodes = encoded.as_str().is_some_and(|text| STANDARD.decode(text).is_ok());
        if !decodes {
            return Some("`data_base64` must be a base64 string".into());
        }
    }
    // Optional attributes have types of their own (the JSON format's type system).
    for optional in ["subject", "datacontenttype", "dataschema"] {
        if attributes.get(optional).is_some_and(|value| !value.is_string()) {
            return Some(format!("`{optional}` must be a string"));
        }
    }
    if let Some(time) = attributes.get("time") {
        if time.as_str().is_none_or(|text| chrono::DateTime::parse_from_rfc3339(text).is_err()) {
            return Some("`time` must be an RFC 3339 timestamp".into());
        }
    }
    None
}

/// Percent-decoded; a value that does not decode to UTF-8 is no value (the binding says
/// to reject it).
fn decode(value: &str) -> Option<String> {
    percent_encoding::percent_decode_str(value).decode_utf8().ok().map(|text| text.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn attributes_of_the_wrong_type_are_named() {
        let event = |extra: Value| {
            let mut event = json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t"});
            event.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            envelope_problem(&event)
        };
        assert_eq!(event(json!({"time": "2026-12-02T10:00:00Z", "data_base64": "aGk=", "subject": "x"})), None);
        for (extra, named) in [
            (json!({"time": 1733133600}), "`time`"),
            (json!({"time": "yesterday"}), "`time`"),
            (json!({"data_base64": "not base64!"}), "`data_base64`"),
            (json!({"data_base64": 12}), "`data_base64`"),
            (json!({"subject": {"a": 1}}), "`subject`"),
            (json!({"datacontenttype": 5}), "`datacontenttype`"),
        ] {
            let problem = event(extra.clone()).unwrap_or_default();
            assert!(problem.contains(named), "{extra}: {problem}");
        }
    }

    #[test]
    fn binary_and_structured_events_read_alike() {
        let mut binary = HeaderMap::new();
        for (name, value) in
            [("ce-specversion", "1.0"), ("ce-id", "A%20234"), ("ce-source", "/git"), ("ce-type", "push"), ("ce-traceid", "t1")]
        {
            binary.insert(name, value.parse().unwrap());
        }
        binary.insert(http::header::CONTENT_TYPE, "application/json".parse().unwrap());
        let data = json!({"ref": "main"});
        assert_eq!(attribute(&binary, Some(&data), "type").as_deref(), Some("push"));
        assert_eq!(delivery_id(&binary, Some(&data)).as_deref(), Some(r#"["/git","A 234"]"#));
        let (ce, read) = template_fields(&binary, &data).unwrap();
        assert_eq!(
            ce,
            json!({"specversion": "1.0", "id": "A 234", "source": "/git", "type": "push", "traceid": "t1", "datacontenttype": "application/json"})
        );
        assert_eq!(read, data);

        let mut structured = HeaderMap::new();
        structured.insert(http::header::CONTENT_TYPE, "application/cloudevents+json; charset=utf-8".parse().unwrap());
        let envelope = json!({"specversion": "1.0", "id": "A 234", "source": "/git", "type": "push", "data": {"ref": "main"}});
        assert_eq!(delivery_id(&structured, Some(&envelope)).as_deref(), Some(r#"["/git","A 234"]"#));
        // The content type decides: `ce-*` headers beside a structured body do not count.
        let mut both = structured.clone();
        both.insert("ce-specversion", "1.0".parse().unwrap());
        both.insert("ce-type", "from.header".parse().unwrap());
        assert_eq!(attribute(&both, Some(&envelope), "type").as_deref(), Some("push"));
        // Pairs that would read alike joined with a space stay apart; undecodable is no value.
        let pair = |source: &str, id: &str| delivery_id(&structured, Some(&json!({"source": source, "id": id})));
        assert_ne!(pair("a", "b c"), pair("a b", "c"));
        let mut invalid = binary.clone();
        invalid.insert("ce-id", "%C0%A0".parse().unwrap());
        assert_eq!(attribute(&invalid, None, "id"), None);
        let (ce, read) = template_fields(&structured, &envelope).unwrap();
        assert_eq!(ce, json!({"specversion": "1.0", "id": "A 234", "source": "/git", "type": "push"}));
        assert_eq!(read, data);
        let encoded = json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "data_base64": "aGk="});
        assert_eq!(template_fields(&structured, &encoded).unwrap().1, json!("hi"));
        assert!(template_fields(&HeaderMap::new(), &data).is_none(), "no CloudEvent: no `ce`");
    }
}

//! A target's `cloudevents:` option: the rendered request sent as a CloudEvent (HTTP
//! binding 1.0), in binary mode (`ce-*` headers, the rendered body as the data) or in
//! structured mode (one `application/cloudevents+json` envelope).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use handlebars::Context;
use http::{HeaderMap, HeaderName, HeaderValue};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use serde_json::{Map, Value};

use crate::template::{TemplateEngine, TemplateId};

pub const SPEC_VERSION: &str = "1.0";
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Binary,
    Structured,
}

/// The compiled option: `type`, `source` and `subject` are templates.
#[derive(Debug)]
pub struct CloudEventsOut {
    pub mode: Mode,
    pub event_type: TemplateId,
    pub source: TemplateId,
    pub subject: Option<TemplateId>,
}

/// What the binding says to percent-encode in a `ce-*` header value: controls, space,
/// `"`, `%` and everything outside printable ASCII.
const HEADER_VALUE: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

impl CloudEventsOut {
    /// Wraps the rendered `body` (of `content_type`) as the event `id`; `time` is the
    /// event's receipt time. Errors name the attribute.
    pub fn wrap(
        &self,
        engine: &TemplateEngine,
        context: &Context,
        id: &str,
        body: Bytes,
        content_type: Option<HeaderValue>,
        headers: &mut HeaderMap,
    ) -> Result<(Bytes, Option<HeaderValue>), (&'static str, String)> {
        let render = |id: &TemplateId, field: &'static str| engine.render(id, context).map_err(|err| (field, err.to_string()));
        let event_type = render(&self.event_type, "cloudevents.type")?;
        let source = render(&self.source, "cloudevents.source")?;
        for (field, value) in [("cloudevents.type", &event_type), ("cloudevents.source", &source)] {
            if value.trim().is_empty() {
                return Err((field, "rendered empty: the CloudEvents spec requires it".to_string()));
            }
        }
        let subject = match &self.subject {
            Some(id) => Some(render(id, "cloudevents.subject")?).filter(|subject| !subject.is_empty()),
            None => None,
        };
        let time = context.data().get("received_at").and_then(Value::as_str).map(str::to_string);
        let datacontenttype = content_type.as_ref().and_then(|value| value.to_str().ok()).map(str::to_string);
        let mut attributes: Vec<(&str, String)> =
            vec![("specversion", SPEC_VERSION.to_string()), ("id", id.to_string()), ("source", source), ("type", event_type)];
        attributes.extend(time.map(|time| ("time", time)));
        attributes.extend(subject.map(|subject| ("subject", subject)));
        match self.mode {
            Mode::Binary if crate::inbound::media_type(datacontenttype.as_deref()).starts_with("application/cloudevents") => {
                Err(("cloudevents.mode", "binary mode cannot carry a CloudEvent envelope as its data (receivers would read the content type as structured mode and ignore the ce-* headers): give a `body:` or use `mode: structured`".to_string()))
            }
            Mode::Binary => {
                for (name, value) in attributes {
                    let encoded: String = utf8_percent_encode(&value, HEADER_VALUE).collect();
                    let header =
                        HeaderValue::from_str(&encoded).map_err(|_| ("cloudevents", format!("{name} cannot be a header value")))?;
                    headers.insert(
                        HeaderName::from_bytes(format!("ce-{name}").as_bytes()).map_err(|err| ("cloudevents", err.to_string()))?,
                        header,
                    );
                }
                Ok((body, content_type))
            }
            Mode::Structured => {
                let mut envelope: Map<String, Value> =
                    attributes.into_iter().map(|(name, value)| (name.to_string(), Value::String(value))).collect();
                if let Some(datacontenttype) = &datacontenttype {
                    envelope.insert("datacontenttype".into(), Value::String(datacontenttype.clone()));
                }
                if !body.is_empty() {
                    let (name, data) = data_member(datacontenttype.as_deref(), &body);
                    envelope.insert(name.into(), data);
                }
                let bytes = serde_json::to_vec(&Value::Object(envelope)).map_err(|err| ("cloudevents", err.to_string()))?;
                Ok((Bytes::from(bytes), Some(HeaderValue::from_static(STRUCTURED_CONTENT_TYPE))))
            }
        }
    }
}

/// The JSON event format's data member: JSON data as JSON, text as a string, anything
/// else base64-encoded in `data_base64`.
fn data_member(content_type: Option<&str>, body: &[u8]) -> (&'static str, Value) {
    let essence = crate::inbound::media_type(content_type);
    if crate::inbound::is_json(&essence) {
        if let Ok(value) = serde_json::from_slice(body) {
            return ("data", value);
        }
    }
    let is_text = essence.starts_with("text/") || essence == "application/x-www-form-urlencoded" || essence == "application/xml";
    match std::str::from_utf8(body) {
        Ok(text) if is_text => ("data", Value::String(text.to_string())),
        _ => ("data_base64", Value::String(STANDARD.encode(body))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_keeps_its_type_where_the_format_allows() {
        assert_eq!(data_member(Some("application/json"), br#"{"a":1}"#), ("data", serde_json::json!({"a": 1})));
        assert_eq!(data_member(Some("application/vnd.x+json; charset=utf-8"), b"[1]"), ("data", serde_json::json!([1])));
        assert_eq!(data_member(Some("text/plain; charset=utf-8"), "héllo".as_bytes()), ("data", Value::String("héllo".into())));
        assert_eq!(data_member(Some("application/octet-stream"), b"\x00\x01"), ("data_base64", Value::String("AAE=".into())));
        assert_eq!(data_member(Some("application/json"), b"{broken"), ("data_base64", Value::String("e2Jyb2tlbg==".into())));
    }
}

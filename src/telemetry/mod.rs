//! OpenTelemetry spans of the relay's work, exported over OTLP when `telemetry.otlp` is
//! set: the request, matching, rendering, the store commit and each delivery attempt,
//! with the ids the W3C `traceparent` headers carry (see [`crate::trace`]), so the spans
//! of the sender, the relay and the receiver form one tree. Off, a span costs one atomic
//! load.

mod export;

use std::borrow::Cow;
use std::time::SystemTime;

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use crate::config::model::{OtlpProtocol, RawTelemetry};
use crate::config::Problems;
use crate::trace::Trace;

pub use export::{install, Exporting, TelemetryError};

/// `telemetry.otlp`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpSettings {
    /// The full export URL (`/v1/traces` added for `http/protobuf` when it had no path).
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    pub headers: Vec<(String, String)>,
    pub service_name: String,
}

pub fn compile(raw: &RawTelemetry, problems: &mut Problems) -> Option<OtlpSettings> {
    let otlp = raw.otlp.as_ref()?;
    // Messages never quote the endpoint: it may carry a key.
    let at = "telemetry.otlp.endpoint";
    let mut endpoint = match url::Url::parse(otlp.endpoint.trim()) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => url,
        Ok(_) => {
            problems.push(at, "must be an http:// or https:// URL with a host");
            return None;
        }
        Err(err) => {
            problems.push(at, format!("not a valid URL: {err}"));
            return None;
        }
    };
    if !endpoint.username().is_empty() || endpoint.password().is_some() {
        problems.push(at, "credentials in the URL are not sent: give them in telemetry.otlp.headers (an authorization header)");
    }
    match otlp.protocol {
        OtlpProtocol::HttpProtobuf if endpoint.path() == "/" => endpoint.set_path("/v1/traces"),
        OtlpProtocol::Grpc if endpoint.path() != "/" || endpoint.query().is_some() => {
            problems.push(at, "a grpc endpoint is a scheme, host and port only (the service path is fixed)");
        }
        _ => {}
    }
    let mut headers: Vec<(String, String)> = Vec::with_capacity(otlp.headers.len());
    for (name, value) in &otlp.headers {
        let lower = name.to_ascii_lowercase();
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            problems.push(format!("telemetry.otlp.headers.{name}"), "not a valid header name");
        } else if http::HeaderValue::from_str(value).is_err() {
            problems.push(format!("telemetry.otlp.headers.{name}"), "not a valid header value");
        } else if value.trim().is_empty() {
            // `${KEY:-}` left empty: no key, so no header (an empty one is refused by some).
            continue;
        } else if headers.iter().any(|(known, _)| *known == lower) {
            problems.push(format!("telemetry.otlp.headers.{name}"), "given twice (header names ignore case)");
        } else {
            headers.push((lower, value.clone()));
        }
    }
    let service_name = otlp.service_name.clone().filter(|name| !name.trim().is_empty()).unwrap_or_else(|| "hookrelay".to_string());
    Some(OtlpSettings { endpoint: endpoint.to_string(), protocol: otlp.protocol, headers, service_name })
}

/// One span being timed. Built only while spans are exported and its trace is sampled, so
/// the relay's work costs nothing more when telemetry is off.
pub struct Span {
    ids: Trace,
    name: &'static str,
    kind: SpanKind,
    start: SystemTime,
    attributes: Vec<KeyValue>,
    error: Option<String>,
}

impl Span {
    /// A span with the ids in `ids`, started now.
    pub fn begin(ids: Trace, name: &'static str, kind: SpanKind) -> Option<Span> {
        Span::begin_at(ids, name, kind, SystemTime::now())
    }

    pub fn begin_at(ids: Trace, name: &'static str, kind: SpanKind, start: SystemTime) -> Option<Span> {
        (ids.sampled() && export::active()).then(|| Span { ids, name, kind, start, attributes: Vec::new(), error: None })
    }

    /// Adds an attribute. Never a credential: callers pass names, ids, counts and codes.
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        self.attributes.push(KeyValue::new(key, value));
    }

    pub fn with(mut self, key: &'static str, value: impl Into<Value>) -> Span {
        self.set(key, value);
        self
    }

    /// Marks the span failed, with why.
    pub fn fail(&mut self, message: impl Into<String>) {
        self.error = Some(message.into());
    }

    /// Ends the span now and hands it to the exporter.
    pub fn end(self) {
        let Span { ids, name, kind, start, attributes, error } = self;
        // The request span continues the sender's; every other span's parent is the relay's.
        let parent_span_is_remote = kind == SpanKind::Server && ids.parent_id().is_some();
        let data = SpanData {
            span_context: SpanContext::new(
                TraceId::from(ids.trace_id()),
                SpanId::from(ids.span_id()),
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
            parent_span_id: ids.parent_id().map_or(SpanId::INVALID, SpanId::from),
            parent_span_is_remote,
            span_kind: kind,
            name: Cow::Borrowed(name),
            start_time: start,
            end_time: SystemTime::now().max(start),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: match error {
                Some(message) => Status::error(message),
                None => Status::Unset,
            },
            instrumentation_scope: export::scope(),
        };
        export::send(data);
    }
}

/// Ends an optional span (most spans are optional: telemetry is off by default).
pub fn end(span: Option<Span>) {
    if let Some(span) = span {
        span.end();
    }
}

/// Ends an optional span, failed if `result` is an error.
pub fn end_with<T, E: std::fmt::Display>(span: Option<Span>, result: &Result<T, E>) {
    if let Some(mut span) = span {
        if let Err(err) = result {
            span.fail(err.to_string());
        }
        span.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_header_value_sends_no_header() {
        let raw: RawTelemetry =
            serde_yaml::from_str("otlp: { endpoint: \"http://127.0.0.1:4318\", headers: { authorization: \"\", x-key: k } }").unwrap();
        let mut problems = Problems::default();
        let settings = compile(&raw, &mut problems).unwrap();
        assert_eq!(settings.headers, [("x-key".to_string(), "k".to_string())]);
        assert_eq!(settings.endpoint, "http://127.0.0.1:4318/v1/traces");
    }
}

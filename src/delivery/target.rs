//! Forward targets: compiled from `forward:` entries, and rendered against one event's
//! context into the exact [`OutgoingRequest`] that would be sent. Rendering is pure; the
//! same function serves live delivery, `hookrelay render` and the admin dry run.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use handlebars::Context;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::Serialize;
use serde_json::Value;

use crate::condition::Condition;
use crate::config::model::RawRateLimit;
use crate::config::Problems;
use crate::delivery::answers::AnswerCodes;
use crate::delivery::credentials::EnvCredentials;
pub use crate::delivery::request::{OutgoingRequest, RenderError, WireRequest};
use crate::delivery::retry::RetryPolicy;
use crate::delivery::sign::{SignError, Signer};
use crate::inbound::InboundRequest;
use crate::ratelimit::LimitSpec;
use crate::settings::Upstream;
use crate::signature::basic_auth_header;
use crate::template::{TemplateEngine, TemplateId};

mod cloudevents;
mod compile;
mod url_values;
pub use compile::{compile, compile_queue_bound, compile_retry, valid_name};
use url_values::{UrlValues, EMPTY_VALUE_HELP};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentKind {
    Json,
    Form,
    Text,
    Raw,
}

#[derive(Debug)]
enum UrlSpec {
    /// A URL with no placeholder, parsed once.
    Fixed(url::Url),
    Absolute(TemplateId),
    /// `upstream:/path`: the path part, joined to `upstream` at render time.
    Upstream(TemplateId),
}

/// A structured (YAML mapping/sequence) body, rendered leaf by leaf.
#[derive(Debug)]
enum Structured {
    Literal(Value),
    Text(TemplateId),
    /// A leaf that is exactly one `{{x}}` / `{{json x}}`: rendered through `json` so the
    /// value keeps its JSON type.
    Typed(TemplateId),
    Array(Vec<Structured>),
    Object(Vec<(String, Structured)>),
}

#[derive(Debug)]
enum BodySpec {
    /// No `body:`: the original body is sent as it came.
    Original,
    Template(TemplateId),
    Structured(Structured),
}

#[derive(Debug)]
pub struct Target {
    pub name: String,
    url: UrlSpec,
    url_source: String,
    /// The URL parts written with a placeholder, and whether they may render empty
    /// (`strict: false`).
    url_values: UrlValues,
    empty_url_values_allowed: bool,
    pub method: Method,
    query: Vec<(String, TemplateId)>,
    headers: Vec<(HeaderName, TemplateId)>,
    authorization: Option<HeaderValue>,
    /// Header and query values written from `${VAR}`, added at send time, and values from
    /// `${VAR}` inside templated headers and URL paths, kept out of the store by markers.
    env_credentials: EnvCredentials,
    content: ContentKind,
    body: BodySpec,
    success: Option<Arc<[u16]>>,
    pub timeout: Duration,
    pub retry: RetryPolicy,
    pub rate_limit: Option<TargetLimit>,
    pub breaker: crate::delivery::breaker::BreakerPolicy,
    pub max_queued: QueueBound,
    /// Applied at send time, over the exact bytes sent.
    pub signer: Option<Signer>,
    /// Sent without the private-address guard: targets of YAML routes and `upstream:` URLs.
    pub trusted: bool,
    /// Where the configured URL sends, when its scheme and host are literal: credentials
    /// are added only to requests bound there (a delivery stored before the URL changed
    /// keeps its old host and must not receive the new host's credentials).
    origin: Option<String>,
    when: Option<TemplateId>,
    /// Must hold on the answer's JSON body for a delivery to count as done (chat APIs answer
    /// 200 with an error code).
    pub success_when: Option<Condition>,
    /// The preset receiver's answer codes: which failures are final or throttled.
    pub answer_codes: Option<&'static AnswerCodes>,
    ordered_by: Option<TemplateId>,
    cloudevents: Option<cloudevents::CloudEventsOut>,
}

/// A target's outbound rate limit: its bucket key and settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetLimit {
    pub key: String,
    pub spec: LimitSpec,
    /// How long a sync route waits for a permit before answering 429.
    pub max_wait: Duration,
}

/// How many of a target's deliveries may wait in the queue at once, so that one dead or
/// paused receiver cannot fill the queue for everyone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum QueueBound {
    Count(u64),
    /// A fraction (0, 1] of `limits.queue_capacity`.
    Share(f64),
}

impl QueueBound {
    pub const DEFAULT: QueueBound = QueueBound::Share(0.5);

    /// The bound as a count, for a queue of `capacity`.
    pub fn of(self, capacity: u64) -> u64 {
        match self {
            QueueBound::Count(count) => count,
            // At most `capacity`, so the float round trip cannot overflow.
            QueueBound::Share(share) => ((capacity as f64 * share).ceil() as u64).clamp(1, capacity.max(1)),
        }
    }
}

/// What the admin API shows of a target.
#[derive(Debug, Serialize)]
pub struct TargetSummary<'a> {
    pub name: &'a str,
    pub method: &'a str,
    pub url: &'a str,
}

/// Target-wide defaults from `defaults:`.
#[derive(Debug, Clone)]
pub struct TargetDefaults {
    pub timeout: Duration,
    pub retry: RetryPolicy,
    pub rate_limit: Option<RawRateLimit>,
    pub max_queued: QueueBound,
}

pub struct CompileCtx<'a> {
    pub templates: &'a mut TemplateEngine,
    pub regexes: &'a mut crate::condition::Regexes,
    pub defaults: &'a TargetDefaults,
    pub problems: &'a mut Problems,
    /// Settings per rate-limit key across the whole config: one key, one bucket, one rate.
    pub limit_keys: &'a mut std::collections::HashMap<String, LimitSpec>,
    pub route: &'a str,
    /// The text before `${VAR}` expansion of the file's values that held one, by YAML path.
    pub from_env: &'a std::collections::HashMap<String, crate::config::env::FromEnv>,
    /// The route came from the config files (trusted), not the admin API (guarded; its
    /// `upstream:` targets excepted).
    pub trusted_origin: bool,
}

impl Target {
    pub fn summary(&self) -> TargetSummary<'_> {
        TargetSummary { name: &self.name, method: self.method.as_str(), url: &self.url_source }
    }

    /// The rendered request with the configured credentials (`basic_auth`, `bearer`, URL
    /// userinfo, `${VAR}` headers and query values) but no signature: what `render` shows.
    pub fn with_credentials(&self, rendered: OutgoingRequest) -> WireRequest {
        if !self.sends_to(&rendered.url) {
            tracing::warn!(route = %rendered.route, target = %self.name, "the delivery's host is no longer the target's: sent without the target's credentials");
            return WireRequest::from_prepared(rendered);
        }
        let mut wire = rendered;
        if let Some(authorization) = &self.authorization {
            wire.headers.insert(http::header::AUTHORIZATION, authorization.clone());
        }
        self.env_credentials.apply(&mut wire);
        WireRequest::from_prepared(wire)
    }

    /// Whether `url` goes where this target's configured URL does (always, when the target's
    /// host is templated or `upstream:`).
    pub fn sends_to(&self, url: &str) -> bool {
        self.origin.as_deref().is_none_or(|origin| has_origin(url, origin))
    }

    /// Header and query names whose values come from `${VAR}` (redacted wherever shown).
    pub fn env_credentials(&self) -> &EnvCredentials {
        &self.env_credentials
    }

    /// Everything added just before sending: credentials, then the signature (over the
    /// exact bytes, with a fresh timestamp each attempt; the message id is the request's
    /// idempotency key, stable across retries). They come from the config serving now and
    /// are never stored: only the rendered request is.
    /// When signing fails, the error comes with the request as it stood (credentials, no
    /// signature), for the record.
    pub fn prepare(&self, rendered: OutgoingRequest, now_ms: i64) -> Result<WireRequest, Box<(SignError, WireRequest)>> {
        let mut wire = self.with_credentials(rendered).into_prepared();
        if let Some(signer) = &self.signer {
            let message_id = wire.headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
            if let Err(err) = signer.apply(&mut wire, &message_id, now_ms) {
                return Err(Box::new((err, WireRequest::from_prepared(wire))));
            }
        }
        Ok(WireRequest::from_prepared(wire))
    }

    pub fn success_statuses(&self) -> Option<&[u16]> {
        self.success.as_deref()
    }

    /// Why `url` (as this target rendered it) carries an empty value a placeholder wrote,
    /// whatever the target's `strict` says.
    pub fn empty_url_value(&self, url: &str) -> Option<String> {
        self.url_values.empty_part(url)
    }

    /// Renders the request for one event, or `None` when `when` says to skip it.
    pub fn render(
        &self,
        route: &str,
        engine: &TemplateEngine,
        context: &Context,
        request: &InboundRequest,
        upstream: Option<&Upstream>,
        event_id: &str,
    ) -> Result<Option<OutgoingRequest>, RenderError> {
        let fail = |field: &str, message: String| RenderError {
            route: route.to_string(),
            target: self.name.clone(),
            field: field.to_string(),
            message,
        };
        let render = |id: &TemplateId, field: &str| engine.render(id, context).map_err(|err| fail(field, err.to_string()));

        if let Some(when) = &self.when {
            if render(when, "when")?.trim() != "true" {
                return Ok(None);
            }
        }

        let mut url = match &self.url {
            UrlSpec::Fixed(url) => url.clone(),
            UrlSpec::Absolute(id) => {
                let text = render(id, "url")?;
                reject_dot_segments(text.trim()).map_err(|message| fail("url", message))?;
                url::Url::parse(text.trim()).map_err(|err| fail("url", format!("rendered URL is not valid: {err}")))?
            }
            UrlSpec::Upstream(id) => {
                let upstream = upstream.ok_or_else(|| fail("url", "`upstream:` URL but no `upstream` is configured".to_string()))?;
                let text = render(id, "url")?;
                reject_dot_segments(text.trim()).map_err(|message| fail("url", message))?;
                upstream.join(text.trim()).map_err(|message| fail("url", message))?
            }
        };
        if !matches!(url.scheme(), "http" | "https") {
            return Err(fail("url", format!("scheme {:?} is not http or https", url.scheme())));
        }

        let mut headers = HeaderMap::new();
        // Userinfo in the URL means Basic Auth, as Codeup documents; it never goes on the wire in the URL.
        if !url.username().is_empty() {
            let username = percent_encoding::percent_decode_str(url.username()).decode_utf8_lossy().into_owned();
            let password =
                url.password().map(|p| percent_encoding::percent_decode_str(p).decode_utf8_lossy().into_owned()).unwrap_or_default();
            let value = basic_auth_header(&crate::config::model::RawBasicAuth { username, password });
            headers.insert(
                http::header::AUTHORIZATION,
                HeaderValue::from_str(&value).map_err(|_| fail("url", "userinfo is not a valid credential".to_string()))?,
            );
            let _ = url.set_username("");
            let _ = url.set_password(None);
        }
        if !self.query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (name, id) in &self.query {
                // The field is named only when something fails: no allocation per request.
                let value = engine.render(id, context).map_err(|err| fail(&format!("query.{name}"), err.to_string()))?;
                pairs.append_pair(name, &value);
            }
        }

        if !self.empty_url_values_allowed {
            if let Some(why) = self.empty_url_value(url.as_str()) {
                return Err(fail("url", format!("{why} {EMPTY_VALUE_HELP}")));
            }
        }

        let idempotency = format!("{event_id}.{}", self.name);
        let (mut body, mut content_type) = self.render_body(engine, context, request, &fail)?;
        if let Some(envelope) = &self.cloudevents {
            (body, content_type) = envelope
                .wrap(engine, context, &idempotency, body, content_type, &mut headers)
                .map_err(|(field, message)| fail(field, message))?;
        }
        if let Some(content_type) = content_type {
            headers.insert(http::header::CONTENT_TYPE, content_type);
        }
        headers.insert(http::header::USER_AGENT, HeaderValue::from_static(concat!("hookrelay/", env!("CARGO_PKG_VERSION"))));
        // The request id travels on so one webhook can be followed through every hop.
        if let Some(id) = request.headers.get("x-request-id") {
            headers.insert(HeaderName::from_static("x-request-id"), id.clone());
        }
        if let Ok(value) = HeaderValue::from_str(&idempotency) {
            headers.insert(HeaderName::from_static("idempotency-key"), value);
        }
        for (name, id) in &self.headers {
            let field = || format!("headers.{name}");
            let text = engine.render(id, context).map_err(|err| fail(&field(), err.to_string()))?;
            if text.contains(['\r', '\n']) {
                return Err(fail(&field(), "rendered header value contains CR or LF".to_string()));
            }
            let value = HeaderValue::from_str(&text)
                .map_err(|_| fail(&field(), "rendered header value has characters not allowed in a header".to_string()))?;
            headers.insert(name.clone(), value);
        }
        let ordered_key = match &self.ordered_by {
            Some(id) => Some(render(id, "ordered_by")?),
            None => None,
        };
        Ok(Some(OutgoingRequest {
            route: route.to_string(),
            target: self.name.clone(),
            ordered_key,
            method: self.method.clone(),
            url: url.to_string(),
            headers,
            body,
        }))
    }

    fn render_body(
        &self,
        engine: &TemplateEngine,
        context: &Context,
        request: &InboundRequest,
        fail: &dyn Fn(&str, String) -> RenderError,
    ) -> Result<(Bytes, Option<HeaderValue>), RenderError> {
        let original_type = || request.headers.get(http::header::CONTENT_TYPE).cloned();
        match (&self.body, self.content) {
            (BodySpec::Original, _) => Ok((request.raw.clone(), original_type())),
            (BodySpec::Template(id), kind) => {
                let text = engine.render(id, context).map_err(|err| fail("body", err.to_string()))?;
                if kind == ContentKind::Json {
                    if let Err(err) = serde_json::from_str::<serde::de::IgnoredAny>(&text) {
                        return Err(fail(
                            "body",
                            format!("rendered body is not valid JSON at line {}, column {}: {err}", err.line(), err.column()),
                        ));
                    }
                }
                Ok((Bytes::from(text), Some(content_header(kind))))
            }
            (BodySpec::Structured(tree), ContentKind::Form) => {
                let Value::Object(fields) = render_structured(tree, engine, context).map_err(|message| fail("body", message))? else {
                    return Err(fail("body", "a form body must be a mapping".to_string()));
                };
                let mut form = form_urlencoded::Serializer::new(String::new());
                for (name, field) in &fields {
                    match field {
                        Value::String(text) => form.append_pair(name, text),
                        Value::Null => form.append_pair(name, ""),
                        other => form.append_pair(name, &other.to_string()),
                    };
                }
                Ok((Bytes::from(form.finish()), Some(content_header(ContentKind::Form))))
            }
            (BodySpec::Structured(tree), kind) => {
                let mut json = Vec::with_capacity(256);
                write_structured(tree, engine, context, &mut json).map_err(|message| fail("body", message))?;
                Ok((Bytes::from(json), Some(content_header(kind))))
            }
        }
    }
}

/// Whether `url` has `origin` (as `Origin::ascii_serialization` writes it). A URL written
/// as its origin followed by its path (as the URL parser writes every URL it renders) needs
/// no parse.
fn has_origin(url: &str, origin: &str) -> bool {
    if url.strip_prefix(origin).is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '?', '#'])) {
        return true;
    }
    url::Url::parse(url).is_ok_and(|parsed| parsed.origin().ascii_serialization() == origin)
}

/// URL parsers resolve `.` and `..` segments (also as `%2e`), so a value rendered into the
/// path could climb out of the configured prefix; such a request is refused instead.
fn reject_dot_segments(url: &str) -> Result<(), String> {
    // As the URL parser sees it: tabs and line breaks dropped, `\` a separator.
    let seen: String = url.chars().filter(|c| !matches!(c, '\t' | '\n' | '\r')).map(|c| if c == '\\' { '/' } else { c }).collect();
    let after_scheme = seen.split_once("://").map_or(seen.as_str(), |(_, rest)| rest);
    // Not split at `#`: joined onto `upstream:` the rest of a value is still path.
    let path = after_scheme.split('?').next().unwrap_or_default();
    let dotted = path.split(['/', '#']).any(|segment| {
        let decoded = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
        decoded == "." || decoded == ".."
    });
    if dotted {
        return Err("rendered URL path has a `.` or `..` segment".to_string());
    }
    Ok(())
}

/// `success:` statuses when given, else any 2xx.
pub fn is_success(success: Option<&[u16]>, status: u16) -> bool {
    match success {
        Some(list) => list.contains(&status),
        None => (200..300).contains(&status),
    }
}

fn content_header(kind: ContentKind) -> HeaderValue {
    HeaderValue::from_static(match kind {
        ContentKind::Json | ContentKind::Raw => "application/json",
        ContentKind::Form => "application/x-www-form-urlencoded",
        ContentKind::Text => "text/plain; charset=utf-8",
    })
}

fn render_structured(tree: &Structured, engine: &TemplateEngine, context: &Context) -> Result<Value, String> {
    Ok(match tree {
        Structured::Literal(value) => value.clone(),
        Structured::Text(id) => Value::String(engine.render(id, context).map_err(|e| e.to_string())?),
        Structured::Typed(id) => {
            let text = engine.render(id, context).map_err(|e| e.to_string())?;
            serde_json::from_str(&text).map_err(|err| format!("typed value is not JSON: {err}"))?
        }
        Structured::Array(items) => {
            Value::Array(items.iter().map(|item| render_structured(item, engine, context)).collect::<Result<_, _>>()?)
        }
        Structured::Object(fields) => Value::Object(
            fields.iter().map(|(k, v)| Ok((k.clone(), render_structured(v, engine, context)?))).collect::<Result<_, String>>()?,
        ),
    })
}

/// Writes `tree` rendered as compact JSON into `out`: the bytes `serde_json::to_vec` makes
/// of [`render_structured`]'s value, without building that value first.
fn write_structured(tree: &Structured, engine: &TemplateEngine, context: &Context, out: &mut Vec<u8>) -> Result<(), String> {
    let written = match tree {
        Structured::Literal(value) => serde_json::to_writer(&mut *out, value),
        Structured::Text(id) => serde_json::to_writer(&mut *out, &engine.render(id, context).map_err(|e| e.to_string())?),
        Structured::Typed(_) => serde_json::to_writer(&mut *out, &render_structured(tree, engine, context)?),
        Structured::Array(items) => {
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_structured(item, engine, context, out)?;
            }
            out.push(b']');
            Ok(())
        }
        Structured::Object(fields) => {
            out.push(b'{');
            for (index, (name, field)) in fields.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, name).map_err(|err| err.to_string())?;
                out.push(b':');
                write_structured(field, engine, context, out)?;
            }
            out.push(b'}');
            Ok(())
        }
    };
    written.map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_has_the_origin_its_scheme_host_and_port_name() {
        let origin = "https://hooks.example.com";
        for url in [
            "https://hooks.example.com/a?b=1",
            "https://hooks.example.com",
            "https://HOOKS.example.com:443/a",
            "https://user:pw@hooks.example.com/a",
        ] {
            assert!(has_origin(url, origin), "{url}");
        }
        for url in [
            "https://hooks.example.com.evil.net/a",
            "https://hooks.example.com:8443/a",
            "https://hooks.example.com@evil.net/a",
            "http://hooks.example.com/a",
            "not a url",
        ] {
            assert!(!has_origin(url, origin), "{url}");
        }
        assert!(has_origin("http://127.0.0.1:18080/robot/send?access_token=x", "http://127.0.0.1:18080"));
    }

    #[test]
    fn dot_segments_are_refused() {
        assert!(reject_dot_segments("https://h/a/../b").is_err());
        assert!(reject_dot_segments("https://h/a/%2E%2e/b").is_err());
        assert!(reject_dot_segments("/internal/./x").is_err());
        assert!(reject_dot_segments("https://h/a/..b/c?x=..").is_ok());
        // What the URL parser treats as separators and drops.
        assert!(reject_dot_segments("/api/v1/..\\..\\admin").is_err());
        assert!(reject_dot_segments("/api/v1/%2e%2e\\%2e%2e\\admin").is_err());
        assert!(reject_dot_segments("/api/v1/.\t./.\t./admin").is_err());
        assert!(reject_dot_segments("/api/v1/.\n./admin").is_err());
        assert!(reject_dot_segments("/api/v1/#/../../etc/passwd").is_err(), "a fragment joined onto upstream: is path");
        assert!(reject_dot_segments("/api/v1/a.b/c..d/...").is_ok());
    }
}

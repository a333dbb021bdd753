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

use crate::config::model::{RawMatch, RawRateLimit, RawRetry, RawTarget};
use crate::config::units::parse_duration;
use crate::config::{Problems, Upstream};
use crate::delivery::answers::AnswerCodes;
use crate::delivery::credentials::EnvCredentials;
pub use crate::delivery::request::{OutgoingRequest, RenderError, WireRequest};
use crate::delivery::retry::{RetryOn, RetryPolicy};
use crate::delivery::sign::{SignError, Signer};
use crate::inbound::InboundRequest;
use crate::ratelimit::{compile_spec, LimitSpec};
use crate::redact::redact_url;
use crate::routing::condition::{compile_match, Condition};
use crate::template::{Escape, TemplateEngine, TemplateId};
use crate::verify::basic_auth_header;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentKind {
    Json,
    Form,
    Text,
    Raw,
}

#[derive(Debug)]
enum UrlSpec {
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
    pub method: Method,
    query: Vec<(String, TemplateId)>,
    headers: Vec<(HeaderName, TemplateId)>,
    authorization: Option<HeaderValue>,
    /// Header and query values written from `${VAR}`, added at send time.
    env_credentials: EnvCredentials,
    content: ContentKind,
    body: BodySpec,
    success: Option<Arc<[u16]>>,
    pub timeout: Duration,
    pub retry: RetryPolicy,
    pub rate_limit: Option<TargetLimit>,
    /// Applied at send time, over the exact bytes sent.
    pub signer: Option<Signer>,
    /// Sent without the private-address guard: targets of YAML routes and `upstream:` URLs.
    pub trusted: bool,
    when: Option<TemplateId>,
    /// Must hold on the answer's JSON body for a delivery to count as done (chat APIs answer
    /// 200 with an error code).
    pub success_when: Option<Condition>,
    /// The preset receiver's answer codes: which failures are final or throttled.
    pub answer_codes: Option<&'static AnswerCodes>,
    ordered_by: Option<TemplateId>,
}

/// A target's outbound rate limit: its bucket key and settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetLimit {
    pub key: String,
    pub spec: LimitSpec,
    /// How long a sync route waits for a permit before answering 429.
    pub max_wait: Duration,
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
}

pub struct CompileCtx<'a> {
    pub templates: &'a mut TemplateEngine,
    pub defaults: &'a TargetDefaults,
    pub problems: &'a mut Problems,
    /// Settings per rate-limit key across the whole config: one key, one bucket, one rate.
    pub limit_keys: &'a mut std::collections::HashMap<String, LimitSpec>,
    pub route: &'a str,
    /// The text before `${VAR}` expansion of the file's values that held one, by YAML path.
    pub from_env: &'a std::collections::HashMap<String, String>,
}

impl Target {
    pub fn summary(&self) -> TargetSummary<'_> {
        TargetSummary { name: &self.name, method: self.method.as_str(), url: &self.url_source }
    }

    /// The rendered request with the configured credentials (`basic_auth`, `bearer`, URL
    /// userinfo, `${VAR}` headers and query values) but no signature: what `render` shows.
    pub fn with_credentials(&self, rendered: OutgoingRequest) -> WireRequest {
        let mut wire = rendered;
        if let Some(authorization) = &self.authorization {
            wire.headers.insert(http::header::AUTHORIZATION, authorization.clone());
        }
        self.env_credentials.apply(&mut wire);
        WireRequest::from_prepared(wire)
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

    pub fn targets_upstream(&self) -> bool {
        matches!(self.url, UrlSpec::Upstream(_))
    }

    pub fn success_statuses(&self) -> Option<&[u16]> {
        self.success.as_deref()
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
                pairs.append_pair(name, &render(id, &format!("query.{name}"))?);
            }
        }

        let (body, content_type) = self.render_body(engine, context, request, &fail)?;
        if let Some(content_type) = content_type {
            headers.insert(http::header::CONTENT_TYPE, content_type);
        }
        headers.insert(http::header::USER_AGENT, HeaderValue::from_static(concat!("hookrelay/", env!("CARGO_PKG_VERSION"))));
        // The request id travels on so one webhook can be followed through every hop.
        if let Some(id) = request.headers.get("x-request-id") {
            headers.insert(HeaderName::from_static("x-request-id"), id.clone());
        }
        let idempotency = format!("{event_id}.{}", self.name);
        if let Ok(value) = HeaderValue::from_str(&idempotency) {
            headers.insert(HeaderName::from_static("idempotency-key"), value);
        }
        for (name, id) in &self.headers {
            let field = format!("headers.{name}");
            let text = render(id, &field)?;
            if text.contains(['\r', '\n']) {
                return Err(fail(&field, "rendered header value contains CR or LF".to_string()));
            }
            let value = HeaderValue::from_str(&text)
                .map_err(|_| fail(&field, "rendered header value has characters not allowed in a header".to_string()))?;
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
            (BodySpec::Structured(tree), kind) => {
                let value = render_structured(tree, engine, context).map_err(|message| fail("body", message))?;
                let bytes = if kind == ContentKind::Form {
                    let Value::Object(fields) = &value else {
                        return Err(fail("body", "a form body must be a mapping".to_string()));
                    };
                    let mut form = form_urlencoded::Serializer::new(String::new());
                    for (name, field) in fields {
                        match field {
                            Value::String(text) => form.append_pair(name, text),
                            Value::Null => form.append_pair(name, ""),
                            other => form.append_pair(name, &other.to_string()),
                        };
                    }
                    Bytes::from(form.finish())
                } else {
                    Bytes::from(serde_json::to_vec(&value).map_err(|err| fail("body", err.to_string()))?)
                };
                Ok((bytes, Some(content_header(kind))))
            }
        }
    }
}

/// URL parsers resolve `.` and `..` segments (also as `%2e`), so a value rendered into the
/// path could climb out of the configured prefix; such a request is refused instead.
fn reject_dot_segments(url: &str) -> Result<(), String> {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = after_scheme.split(['?', '#']).next().unwrap_or_default();
    let dotted = path.split('/').any(|segment| {
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

/// A leaf that is one expression and nothing else (`{{x.y}}`, `{{{x.y}}}`, `{{json x}}`,
/// `{{len body.commits}}`): the template that renders its value as JSON, so the leaf keeps
/// the value's type. Blocks, comments and partials are not single values.
fn typed_leaf(text: &str) -> Option<String> {
    let trimmed = text.trim();
    let inner = trimmed
        .strip_prefix("{{{")
        .and_then(|t| t.strip_suffix("}}}"))
        .or_else(|| trimmed.strip_prefix("{{").and_then(|t| t.strip_suffix("}}")))?
        .trim();
    if inner.is_empty()
        || inner.contains("{{")
        || inner.contains("}}")
        || inner.starts_with(['#', '/', '^', '!', '>', '~'])
        || inner == "else"
    {
        return None;
    }
    if inner.starts_with("json ") {
        return Some(format!("{{{{{inner}}}}}"));
    }
    if inner.contains(char::is_whitespace) {
        return Some(format!("{{{{json ({inner})}}}}"));
    }
    Some(format!("{{{{json {inner}}}}}"))
}

fn compile_structured(value: &Value, at: &str, strict: bool, ctx: &mut CompileCtx<'_>) -> Structured {
    match value {
        Value::String(text) if text.contains("{{") => {
            if let Some(typed) = typed_leaf(text) {
                return compile_template(&typed, Escape::Plain, strict, at, ctx)
                    .map(Structured::Typed)
                    .unwrap_or(Structured::Literal(Value::Null));
            }
            compile_template(text, Escape::Plain, strict, at, ctx).map(Structured::Text).unwrap_or(Structured::Literal(Value::Null))
        }
        Value::Array(items) => Structured::Array(
            items.iter().enumerate().map(|(i, item)| compile_structured(item, &format!("{at}[{i}]"), strict, ctx)).collect(),
        ),
        Value::Object(fields) => {
            Structured::Object(fields.iter().map(|(k, v)| (k.clone(), compile_structured(v, &format!("{at}.{k}"), strict, ctx))).collect())
        }
        other => Structured::Literal(other.clone()),
    }
}

fn compile_template(source: &str, escape: Escape, strict: bool, at: &str, ctx: &mut CompileCtx<'_>) -> Option<TemplateId> {
    match ctx.templates.compile(source, escape, strict) {
        Ok(id) => Some(id),
        Err(err) => {
            ctx.problems.push(at, err.to_string());
            None
        }
    }
}

/// `overrides` merged field by field over `base` (the compiled `defaults.retry`).
pub fn compile_retry(overrides: &RawRetry, base: &RetryPolicy, at: &str, problems: &mut Problems) -> RetryPolicy {
    let duration = |name: &str, value: &Option<String>, fallback: Duration, problems: &mut Problems| match value {
        Some(text) => parse_duration(text).unwrap_or_else(|message| {
            problems.push(format!("{at}.{name}"), message);
            fallback
        }),
        None => fallback,
    };
    let policy = RetryPolicy {
        max_attempts: overrides.max_attempts.unwrap_or(base.max_attempts),
        initial: duration("initial", &overrides.initial, base.initial, problems),
        max: duration("max", &overrides.max, base.max, problems),
        factor: overrides.factor.unwrap_or(base.factor),
        jitter: overrides.jitter.unwrap_or(base.jitter),
        max_age: duration("max_age", &overrides.max_age, base.max_age, problems),
        retry_on: match &overrides.retry_on {
            Some(items) => RetryOn::parse(items).unwrap_or_else(|message| {
                problems.push(format!("{at}.retry_on"), message);
                base.retry_on.clone()
            }),
            None => base.retry_on.clone(),
        },
    };
    if policy.max_attempts == 0 {
        problems.push(format!("{at}.max_attempts"), "max_attempts must be at least 1");
    }
    if !(policy.factor >= 1.0 && policy.factor.is_finite()) {
        problems.push(format!("{at}.factor"), "factor must be a number ≥ 1");
    }
    policy
}

pub fn compile(raw: &RawTarget, index: usize, at: &str, ctx: &mut CompileCtx<'_>) -> Option<Target> {
    let with_preset = crate::delivery::preset::apply(raw, at, ctx.problems);
    let raw = &with_preset;
    let name = raw.name.clone().unwrap_or_else(|| index.to_string());
    if !valid_name(&name) {
        ctx.problems.push(format!("{at}.name"), format!("target name {name:?} must match [a-z0-9_-]+"));
    }
    // Literal userinfo (`https://user:pass@host/…`, as Codeup documents) is config, not
    // data: it becomes the target's credentials and leaves the URL.
    let (url_text, userinfo) = split_userinfo(&raw.url);
    let mut env_credentials = EnvCredentials::default();
    let url_text = match ctx.from_env.get(&format!("{at}.url")) {
        Some(original) => env_credentials.take_from_url(&url_text, original),
        None => url_text,
    };
    let url = match url_text.strip_prefix("upstream:") {
        Some(path) => compile_template(path, Escape::UrlPath, raw.strict, &format!("{at}.url"), ctx).map(UrlSpec::Upstream),
        None => {
            if !url_text.contains("{{") {
                match url::Url::parse(&url_text) {
                    Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
                    Ok(parsed) => ctx.problems.push(format!("{at}.url"), format!("scheme {:?} is not http or https", parsed.scheme())),
                    Err(err) => ctx.problems.push(format!("{at}.url"), format!("invalid URL {:?}: {err}", redact_url(&raw.url))),
                }
            }
            compile_template(&url_text, Escape::UrlPath, raw.strict, &format!("{at}.url"), ctx).map(UrlSpec::Absolute)
        }
    };
    let method = match Method::from_bytes(raw.method.as_deref().unwrap_or("POST").to_ascii_uppercase().as_bytes()) {
        Ok(method) => method,
        Err(_) => {
            ctx.problems.push(format!("{at}.method"), format!("invalid method {:?}", raw.method));
            Method::POST
        }
    };
    let mut query = Vec::new();
    for (name, value) in &raw.query {
        let here = format!("{at}.query.{name}");
        if ctx.from_env.contains_key(&here) && !value.contains("{{") {
            env_credentials.add_query_value(name, value);
        } else if let Some(id) = compile_template(value, Escape::Plain, raw.strict, &here, ctx) {
            query.push((name.clone(), id));
        }
    }
    let mut headers = Vec::new();
    for (name, value) in &raw.headers {
        let here = format!("{at}.headers.{name}");
        let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
            ctx.problems.push(here, format!("{name:?} is not a valid header name"));
            continue;
        };
        if value.contains(['\r', '\n']) {
            ctx.problems.push(here, "header values may not contain CR or LF");
            continue;
        }
        if ctx.from_env.contains_key(&here) && !value.contains("{{") {
            match HeaderValue::from_str(value) {
                Ok(value) => env_credentials.add_header(header, value),
                Err(_) => ctx.problems.push(here, "the value has characters not allowed in a header"),
            }
        } else if let Some(id) = compile_template(value, Escape::Plain, raw.strict, &here, ctx) {
            headers.push((header, id));
        }
    }
    let basic_auth = raw.basic_auth.clone().or(userinfo);
    let authorization = match (&basic_auth, &raw.bearer) {
        (Some(_), Some(_)) => {
            ctx.problems.push(format!("{at}.bearer"), "give either basic_auth or bearer, not both");
            None
        }
        (Some(auth), None) => HeaderValue::from_str(&basic_auth_header(auth)).ok(),
        (None, Some(token)) => match HeaderValue::from_str(&format!("Bearer {token}")) {
            Ok(value) => Some(value),
            Err(_) => {
                ctx.problems.push(format!("{at}.bearer"), "the token has characters not allowed in a header");
                None
            }
        },
        (None, None) => None,
    }
    .map(|mut value| {
        value.set_sensitive(true);
        value
    });
    let content = match raw.content_type.as_deref() {
        None if raw.body.is_none() => ContentKind::Raw,
        None | Some("json") => ContentKind::Json,
        Some("form") => ContentKind::Form,
        Some("text") => ContentKind::Text,
        Some("raw") => ContentKind::Raw,
        Some(other) => {
            ctx.problems.push(format!("{at}.content_type"), format!("unknown content_type {other:?} (json, form, text, raw)"));
            ContentKind::Json
        }
    };
    let body_at = format!("{at}.body");
    let body = match (&raw.body, content) {
        (None, _) => BodySpec::Original,
        (Some(_), ContentKind::Raw) => {
            ctx.problems.push(body_at, "content_type raw sends the original body: remove `body` or pick json, form or text");
            BodySpec::Original
        }
        (Some(Value::String(text)), kind) => {
            let escape = match kind {
                ContentKind::Json => Escape::Json,
                ContentKind::Form => Escape::UrlPath,
                ContentKind::Text | ContentKind::Raw => Escape::Plain,
            };
            compile_template(text, escape, raw.strict, &body_at, ctx).map(BodySpec::Template).unwrap_or(BodySpec::Original)
        }
        (Some(tree @ (Value::Object(_) | Value::Array(_))), ContentKind::Json | ContentKind::Form) => {
            if content == ContentKind::Form && !tree.is_object() {
                ctx.problems.push(body_at.clone(), "a form body must be a mapping");
            }
            BodySpec::Structured(compile_structured(tree, &body_at, raw.strict, ctx))
        }
        (Some(_), _) => {
            ctx.problems.push(body_at, "body must be a string template, or a mapping/sequence for json and form");
            BodySpec::Original
        }
    };
    let when = raw.when.as_ref().and_then(|w| compile_template(w, Escape::Plain, raw.strict, &format!("{at}.when"), ctx));
    let timeout = match &raw.timeout {
        Some(text) => parse_duration(text).unwrap_or_else(|message| {
            ctx.problems.push(format!("{at}.timeout"), message);
            ctx.defaults.timeout
        }),
        None => ctx.defaults.timeout,
    };
    if let Some(statuses) = &raw.success {
        if statuses.is_empty() || statuses.iter().any(|s| !(100..=599).contains(s)) {
            ctx.problems.push(format!("{at}.success"), "success must list HTTP statuses between 100 and 599");
        }
    }
    let retry = match &raw.retry {
        Some(overrides) => compile_retry(overrides, &ctx.defaults.retry, &format!("{at}.retry"), ctx.problems),
        None => ctx.defaults.retry.clone(),
    };
    let success_when = (!raw.success_when.is_empty()).then(|| {
        let conditions = RawMatch { body: raw.success_when.clone(), ..RawMatch::default() };
        let mut found = Problems::default();
        let condition = compile_match(&conditions, &format!("{at}.success_when"), true, &mut found);
        // The conditions were compiled as a match's `body:` list; report them where they are written.
        for (path, message) in found.iter() {
            ctx.problems.push(path.replace(".success_when.body[", ".success_when["), message);
        }
        condition
    });
    let ordered_by =
        raw.ordered_by.as_ref().and_then(|key| compile_template(key, Escape::Plain, raw.strict, &format!("{at}.ordered_by"), ctx));
    let rate_limit = match raw.rate_limit.as_ref().or(ctx.defaults.rate_limit.as_ref()) {
        Some(limit) => compile_limit(limit, &format!("{}/{name}", ctx.route), &format!("{at}.rate_limit"), ctx),
        None => None,
    };
    Some(Target {
        name,
        url: url?,
        url_source: redact_url(&raw.url),
        method,
        query,
        headers,
        authorization,
        env_credentials,
        content,
        body,
        success: raw.success.as_deref().map(Arc::from),
        timeout,
        retry,
        rate_limit,
        signer: raw.sign.as_ref().and_then(|sign| crate::delivery::sign::compile(sign, &format!("{at}.sign"), ctx.problems)),
        trusted: true,
        when,
        success_when,
        answer_codes: crate::delivery::answers::for_preset(raw.preset.as_deref()),
        ordered_by,
    })
}

fn compile_limit(raw: &RawRateLimit, default_key: &str, at: &str, ctx: &mut CompileCtx<'_>) -> Option<TargetLimit> {
    let spec = compile_spec(raw.per_second, raw.per_minute, raw.per_hour, raw.burst, raw.window, at, ctx.problems)?;
    let key = raw.key.clone().unwrap_or_else(|| default_key.to_string());
    let max_wait = match &raw.max_wait {
        Some(text) => parse_duration(text).map_err(|message| ctx.problems.push(format!("{at}.max_wait"), message)).ok()?,
        None => Duration::from_secs(2),
    };
    match ctx.limit_keys.get(&key) {
        Some(existing) if *existing != spec => {
            ctx.problems.push(
                format!("{at}.key"),
                format!("rate-limit key {key:?} is used elsewhere with different settings; targets sharing a key share one bucket"),
            );
            None
        }
        _ => {
            ctx.limit_keys.insert(key.clone(), spec);
            Some(TargetLimit { key, spec, max_wait })
        }
    }
}

/// Splits literal `user:password@` out of an absolute URL (not when it is templated).
fn split_userinfo(url: &str) -> (String, Option<crate::config::model::RawBasicAuth>) {
    let Some((scheme, rest)) = url.split_once("://") else { return (url.to_string(), None) };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else { return (url.to_string(), None) };
    if userinfo.contains("{{") {
        return (url.to_string(), None);
    }
    let decode = |part: &str| percent_encoding::percent_decode_str(part).decode_utf8_lossy().into_owned();
    let (username, password) = userinfo.split_once(':').map(|(u, p)| (decode(u), decode(p))).unwrap_or((decode(userinfo), String::new()));
    (format!("{scheme}://{host}{tail}"), Some(crate::config::model::RawBasicAuth { username, password }))
}

pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_userinfo_becomes_credentials() {
        let (url, auth) = split_userinfo("https://ci%40corp:pa%3Ass@host:8443/v2/x?y=1");
        assert_eq!(url, "https://host:8443/v2/x?y=1");
        let auth = auth.unwrap();
        assert_eq!((auth.username.as_str(), auth.password.as_str()), ("ci@corp", "pa:ss"));
        assert_eq!(split_userinfo("https://host/a@b").1.map(|a| a.username), None);
        assert!(split_userinfo("https://{{vars.user}}@host/").1.is_none());
    }

    #[test]
    fn dot_segments_are_refused() {
        assert!(reject_dot_segments("https://h/a/../b").is_err());
        assert!(reject_dot_segments("https://h/a/%2E%2e/b").is_err());
        assert!(reject_dot_segments("/internal/./x").is_err());
        assert!(reject_dot_segments("https://h/a/..b/c?x=..").is_ok());
    }

    #[test]
    fn typed_leaves_are_recognised() {
        assert_eq!(typed_leaf("{{body.commits}}").as_deref(), Some("{{json body.commits}}"));
        assert_eq!(typed_leaf(" {{json body.a.[0]}} ").as_deref(), Some("{{json body.a.[0]}}"));
        assert_eq!(typed_leaf("{{{body.x}}}").as_deref(), Some("{{json body.x}}"));
        assert_eq!(typed_leaf("{{len body.commits}}").as_deref(), Some("{{json (len body.commits)}}"));
        assert_eq!(typed_leaf("a {{body.x}}"), None);
        assert_eq!(typed_leaf("{{body.x}} {{body.y}}"), None);
        assert_eq!(typed_leaf("{{#if x}}y{{/if}}"), None);
        assert_eq!(typed_leaf("{{! note }}"), None);
    }
}

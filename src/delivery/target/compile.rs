//! Compiling a `forward:` entry into a [`Target`]: the preset filled in, the URL (literal
//! userinfo and `${VAR}` query values taken out as credentials), headers, body templates
//! (typed leaves), retry, rate limit, signing, `when`, `success_when`, `ordered_by`.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use serde_json::Value;

use super::*;
use crate::condition::compile_match;
use crate::config::model::{RawBreaker, RawCloudEvents, RawMatch, RawQueueBound, RawRateLimit, RawRetry, RawTarget};
use crate::config::units::parse_duration;
use crate::config::Problems;
use crate::delivery::breaker::BreakerPolicy;
use crate::delivery::credentials::EnvCredentials;
use crate::delivery::retry::{RetryOn, RetryPolicy};
use crate::ratelimit::compile_spec;
use crate::redact::redact_url;
use crate::signature::basic_auth_header;
use crate::template::{Escape, TemplateId};

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

/// The longest a breaker may hold a target (a `410` or an operator pauses for longer).
const LONGEST_COOLDOWN: Duration = Duration::from_secs(24 * 3600);

fn compile_breaker(raw: &RawBreaker, at: &str, problems: &mut Problems) -> BreakerPolicy {
    let defaults = BreakerPolicy::default();
    let duration = |name: &str, value: &Option<String>, fallback: Duration, problems: &mut Problems| match value {
        Some(text) => match parse_duration(text) {
            Ok(duration) if !duration.is_zero() => duration,
            Ok(_) => {
                problems.push(format!("{at}.{name}"), "must be longer than zero");
                fallback
            }
            Err(message) => {
                problems.push(format!("{at}.{name}"), message);
                fallback
            }
        },
        None => fallback,
    };
    let cooldown = duration("cooldown", &raw.cooldown, defaults.cooldown, problems);
    let max_cooldown = duration("max_cooldown", &raw.max_cooldown, defaults.max_cooldown, problems);
    if max_cooldown > LONGEST_COOLDOWN {
        problems.push(format!("{at}.max_cooldown"), format!("must not be longer than {}", humantime::format_duration(LONGEST_COOLDOWN)));
    }
    if cooldown > max_cooldown {
        problems
            .push(format!("{at}.cooldown"), format!("must not be longer than max_cooldown ({})", humantime::format_duration(max_cooldown)));
    }
    BreakerPolicy { failures: raw.failures.unwrap_or(defaults.failures), cooldown, max_cooldown }
}

/// `max_queued:` as written: a count of at least 1, or a share such as `"25%"`.
pub fn compile_queue_bound(raw: &RawQueueBound, at: &str, problems: &mut Problems) -> QueueBound {
    match raw {
        RawQueueBound::Count(0) => problems.push(at, "must be at least 1"),
        RawQueueBound::Count(count) => return QueueBound::Count(*count),
        RawQueueBound::Share(text) => match text.trim().strip_suffix('%').map(|number| number.trim().parse::<f64>()) {
            Some(Ok(percent)) if percent > 0.0 && percent <= 100.0 => return QueueBound::Share(percent / 100.0),
            Some(Ok(_)) => problems.push(at, "a share must be more than 0% and at most 100%"),
            _ => problems.push(at, format!("{text:?} is neither a count nor a share such as \"25%\"")),
        },
    }
    QueueBound::DEFAULT
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
        Some(from_env) => {
            // A value opening the URL is its base (`${CODEARTS_BASE}/v2/…`); any other
            // value in it (a path token, as Slack and Feishu use) is a credential.
            // Only values in the path or query: one in the host names a place, not a secret.
            let authority_end = url_text.find("://").map(|i| i + 3).and_then(|i| url_text[i..].find('/').map(|j| i + j));
            let after_authority = authority_end.map_or("", |end| &url_text[end..]);
            env_credentials.add_secret_values(from_env.values.iter().filter(|v| !v.at_start && after_authority.contains(&v.value)));
            env_credentials.take_from_url(&url_text, &from_env.original)
        }
        None => url_text,
    };
    // Unset, the URL is strict and the rest is not; `strict: true|false` sets both.
    let strict = raw.strict == Some(true);
    let url_strict = raw.strict != Some(false);
    let mut url_values = UrlValues::of(url_text.strip_prefix("upstream:").unwrap_or(&url_text));
    let url = match url_text.strip_prefix("upstream:") {
        Some(path) => compile_template(path, Escape::UrlPath, url_strict, &format!("{at}.url"), ctx).map(UrlSpec::Upstream),
        None => {
            let id = compile_template(&url_text, Escape::UrlPath, url_strict, &format!("{at}.url"), ctx);
            if url_text.contains("{{") {
                id.map(UrlSpec::Absolute)
            } else {
                // A URL without placeholders is parsed once, here. Shown as written: a
                // `${VAR}` value in the path is a credential.
                let written =
                    || redact_url(ctx.from_env.get(&format!("{at}.url")).map_or(raw.url.as_str(), |from_env| from_env.original.as_str()));
                let checked = match url::Url::parse(url_text.trim()) {
                    Ok(parsed) if !matches!(parsed.scheme(), "http" | "https") => {
                        Err(format!("scheme {:?} is not http or https", parsed.scheme()))
                    }
                    Ok(_) if super::reject_dot_segments(url_text.trim()).is_err() => {
                        Err("the URL's path has a `.` or `..` segment: every delivery would be refused".to_string())
                    }
                    Ok(parsed) => Ok(parsed),
                    Err(err) => Err(format!("invalid URL {:?}: {err}", written())),
                };
                match checked {
                    Ok(parsed) => Some(UrlSpec::Fixed(parsed)),
                    Err(problem) => {
                        ctx.problems.push(format!("{at}.url"), problem);
                        id.map(UrlSpec::Absolute)
                    }
                }
            }
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
        if let Some(from_env) = ctx.from_env.get(&here) {
            env_credentials.add_secret_values(from_env.values.iter());
        }
        if ctx.from_env.contains_key(&here) && !value.contains("{{") {
            env_credentials.add_query_value(name, value);
        } else if let Some(id) = compile_template(value, Escape::Plain, url_strict, &here, ctx) {
            url_values.push_query(name, value);
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
        if let Some(from_env) = ctx.from_env.get(&here) {
            env_credentials.add_secret_values(from_env.values.iter());
        }
        if ctx.from_env.contains_key(&here) && !value.contains("{{") {
            match HeaderValue::from_str(value) {
                Ok(value) => env_credentials.add_header(header, value),
                Err(_) => ctx.problems.push(here, "the value has characters not allowed in a header"),
            }
        } else if let Some(id) = compile_template(value, Escape::Plain, strict, &here, ctx) {
            headers.push((header, id));
        }
    }
    let basic_auth = raw.basic_auth.clone().or(userinfo);
    if let Some(auth) = &raw.basic_auth {
        ctx.problems.sent_credential(format!("{at}.basic_auth.password"), &auth.password);
    }
    if let Some(token) = &raw.bearer {
        ctx.problems.sent_credential(format!("{at}.bearer"), token);
    }
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
            compile_template(text, escape, strict, &body_at, ctx).map(BodySpec::Template).unwrap_or(BodySpec::Original)
        }
        (Some(tree @ (Value::Object(_) | Value::Array(_))), ContentKind::Json | ContentKind::Form) => {
            if content == ContentKind::Form && !tree.is_object() {
                ctx.problems.push(body_at.clone(), "a form body must be a mapping");
            }
            BodySpec::Structured(compile_structured(tree, &body_at, strict, ctx))
        }
        (Some(_), _) => {
            ctx.problems.push(body_at, "body must be a string template, or a mapping/sequence for json and form");
            BodySpec::Original
        }
    };
    let when = raw.when.as_ref().and_then(|w| compile_template(w, Escape::Plain, strict, &format!("{at}.when"), ctx));
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
        let condition = compile_match(&conditions, &format!("{at}.success_when"), true, &mut found, ctx.regexes);
        // The conditions were compiled as a match's `body:` list; report them where they are written.
        for (path, message) in found.iter() {
            ctx.problems.push(path.replace(".success_when.body[", ".success_when["), message);
        }
        condition
    });
    let cloudevents =
        raw.cloudevents.as_ref().and_then(|envelope| compile_cloudevents(envelope, strict, &format!("{at}.cloudevents"), ctx));
    let ordered_by = raw.ordered_by.as_ref().and_then(|key| compile_template(key, Escape::Plain, strict, &format!("{at}.ordered_by"), ctx));
    let rate_limit = match raw.rate_limit.as_ref().or(ctx.defaults.rate_limit.as_ref()) {
        Some(limit) => compile_limit(limit, &format!("{}/{name}", ctx.route), &format!("{at}.rate_limit"), ctx),
        None => None,
    };
    let breaker =
        raw.breaker.as_ref().map_or_else(BreakerPolicy::default, |raw| compile_breaker(raw, &format!("{at}.breaker"), ctx.problems));
    let max_queued =
        raw.max_queued.as_ref().map_or(ctx.defaults.max_queued, |raw| compile_queue_bound(raw, &format!("{at}.max_queued"), ctx.problems));
    Some(Target {
        name,
        trusted: ctx.trusted_origin || matches!(url, Some(UrlSpec::Upstream(_))),
        origin: literal_origin(&url_text),
        url: url?,
        // Shown by the admin API: as written (`${VAR}` names, not their values).
        url_values,
        empty_url_values_allowed: raw.strict == Some(false),
        url_source: redact_url(ctx.from_env.get(&format!("{at}.url")).map_or(raw.url.as_str(), |from_env| from_env.original.as_str())),
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
        breaker,
        max_queued,
        signer: raw.sign.as_ref().and_then(|sign| crate::delivery::sign::compile(sign, &format!("{at}.sign"), ctx.problems)),
        when,
        success_when,
        answer_codes: crate::delivery::answers::for_preset(raw.preset.as_deref()),
        ordered_by,
        cloudevents,
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

/// The origin (`https://host:port`) an absolute URL sends to, when its scheme and host are
/// written out rather than templated.
fn literal_origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if scheme.contains("{{") || authority.contains("{{") || authority.is_empty() {
        return None;
    }
    url::Url::parse(&format!("{scheme}://{authority}/")).ok().map(|parsed| parsed.origin().ascii_serialization())
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

fn compile_cloudevents(
    raw: &RawCloudEvents,
    strict: bool,
    at: &str,
    ctx: &mut CompileCtx<'_>,
) -> Option<super::cloudevents::CloudEventsOut> {
    use super::cloudevents::{CloudEventsOut, Mode};
    let mode = match raw.mode.as_deref() {
        None | Some("binary") => Mode::Binary,
        Some("structured") => Mode::Structured,
        Some(other) => {
            ctx.problems.push(format!("{at}.mode"), format!("unknown mode {other:?} (binary or structured)"));
            Mode::Binary
        }
    };
    for (field, value) in [("type", &raw.event_type), ("source", &raw.source)] {
        if value.trim().is_empty() {
            ctx.problems.push(format!("{at}.{field}"), "the CloudEvents spec requires a non-empty value");
        }
    }
    let event_type = compile_template(&raw.event_type, Escape::Plain, strict, &format!("{at}.type"), ctx);
    let source = compile_template(&raw.source, Escape::Plain, strict, &format!("{at}.source"), ctx);
    let subject = raw.subject.as_ref().and_then(|subject| compile_template(subject, Escape::Plain, strict, &format!("{at}.subject"), ctx));
    Some(CloudEventsOut { mode, event_type: event_type?, source: source?, subject })
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

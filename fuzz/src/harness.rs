//! What each fuzz target does with the fuzzer's bytes, as plain functions over the public
//! API. The targets in `fuzz/fuzz_targets/` only call these, and
//! `tests/it/fuzz_regressions.rs` replays the inputs kept under `fuzz/regressions/` through
//! the very same code under `cargo test`, so this file must build both ways: it uses only
//! crates the main crate depends on, and every item in it is used by both.
//!
//! No input may make these functions panic. Where a target also checks a property, it
//! panics with a message naming the property that broke.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::OnceLock;

use bytes::Bytes;
use handlebars::Context;
use hookrelay::condition::MatchInput;
use hookrelay::config::env::{Lookup, ProcessEnv};
use hookrelay::inbound::InboundRequest;
use hookrelay::render;
use hookrelay::routing::{self, path::PathPattern, Route};
use hookrelay::snapshot::{self, Snapshot};
use hookrelay::template::{Escape, TemplateEngine, TemplateId};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde_json::{json, Map, Value};

/// The name the config harnesses give the file they load.
const CONFIG_FILE: &str = "hookrelay.yaml";

fn split_once(data: &[u8], separator: u8) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == separator) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[]),
    }
}

fn text(data: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(data)
}

// ---------------------------------------------------------------------------------------
// config_load

/// Writes `data` as the main config file into `dir` (a folder of its own) and loads it.
/// Errors are expected; a config that loads is also dry-run with a small request on each
/// route's path, which renders every template the input managed to compile.
pub fn config_load(dir: &Path, data: &[u8]) {
    if !stays_in(data) {
        return;
    }
    let path = dir.join(CONFIG_FILE);
    if let Err(err) = std::fs::write(&path, data) {
        panic!("harness: cannot write {}: {err}", path.display());
    }
    let Ok(snapshot) = snapshot::load(&path, &ProcessEnv) else {
        return;
    };
    for route in snapshot.routes.iter() {
        let path = route.path.as_str().replace('*', "rest");
        for method in &route.methods {
            let mut headers = HeaderMap::new();
            headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            let request = InboundRequest::new(method.clone(), &path, headers, Bytes::from_static(b"{\"a\":1}"), localhost());
            check_selection(&snapshot, &request);
            let _ = render::dry_run(&snapshot, &request, Some(&route.name), false);
        }
    }
}

/// The route table (indexed by literal path) must select exactly what a plain walk over
/// every route in file order selects, and `may_take` must agree with that walk too.
fn check_selection(snapshot: &Snapshot, request: &InboundRequest) {
    let (method, path) = (&request.method, request.path.as_str());
    let takes = |route: &Route| route.methods.contains(method) && route.path.matches(path).is_some();
    let mut expected = Vec::new();
    for route in snapshot.routes.iter().filter(|route| takes(route)) {
        let body = request.body.as_matchable();
        if route.needs_body && body.is_none() {
            continue;
        }
        let info = route.source.extract(&request.headers, body);
        let input = MatchInput { headers: &request.headers, query: &request.query, body, event: info.event.as_deref() };
        if route.condition.eval(&input) {
            expected.push(route.name.as_str());
            if route.is_final {
                break;
            }
        }
    }
    let selected: Vec<&str> = routing::select(&snapshot.routes, request).iter().map(|m| m.route.name.as_str()).collect();
    assert_eq!(selected, expected, "select disagrees with a walk over every route for {method} {path:?}");
    let may_take = routing::may_take(&snapshot.routes, method, path);
    assert_eq!(may_take, snapshot.routes.iter().any(takes), "may_take is wrong for {method} {path:?}");
}

/// Settings outside `routes` name files (`include`, `tls`, `outbound.ca_file`) that the
/// loader reads. Inputs whose strings there could point outside the config's own folder
/// are skipped: reading `/dev/zero` or globbing `/**` is the operator's choice, not a bug,
/// and would only stall the fuzzer.
fn stays_in(data: &[u8]) -> bool {
    fn safe(value: &serde_yaml::Value) -> bool {
        match value {
            serde_yaml::Value::String(s) => !(s.starts_with('/') || s.contains("..") || s.contains('$') || s.contains('\\')),
            serde_yaml::Value::Sequence(items) => items.iter().all(safe),
            serde_yaml::Value::Mapping(map) => map.iter().all(|(k, v)| safe(k) && safe(v)),
            serde_yaml::Value::Tagged(tagged) => safe(&tagged.value),
            serde_yaml::Value::Null | serde_yaml::Value::Bool(_) | serde_yaml::Value::Number(_) => true,
        }
    }
    // Parsing twice halves the fuzzer's speed; without these keys (a backslash could spell
    // one in a quoted key) no file is named.
    let names_a_file = [&b"include"[..], b"tls", b"ca_file", b"\\"].iter().any(|word| data.windows(word.len()).any(|w| w == *word));
    if !names_a_file {
        return true;
    }
    match serde_yaml::from_slice::<serde_yaml::Value>(data) {
        Ok(serde_yaml::Value::Mapping(map)) => map.iter().filter(|(k, _)| k.as_str() != Some("routes")).all(|(k, v)| safe(k) && safe(v)),
        // Anything else fails to load before a file is named.
        _ => true,
    }
}

// ---------------------------------------------------------------------------------------
// body_match

/// The fixed config: every condition kind, several sources and verify schemes.
pub const BODY_MATCH_CONFIG: &str = include_str!("body_match.yaml");

const CONTENT_TYPES: [Option<&str>; 5] = [
    Some("application/json"),
    Some("application/x-www-form-urlencoded"),
    Some("text/plain; charset=utf-8"),
    None,
    Some("application/vnd.hook+JSON; charset=UTF-8"),
];

const PATHS: [&str; 6] = ["/hooks/codeup/", "/hooks/tapd", "/hooks/github/", "/hooks/generic/", "/hooks/any/", "/"];

/// Headers that carry the input's event name: the sources' own event headers.
const EVENT_HEADERS: [&str; 4] = ["x-github-event", "codeup-event", "x-gitlab-event", "x-bkrepo-event"];

/// Headers that carry the input's free header value: conditions, ids and verify schemes.
const VALUE_HEADERS: [&str; 14] = [
    "x-env",
    "x-custom",
    "x-id",
    "x-skip",
    "x-token",
    "x-sig",
    "x-ts",
    "x-hub-signature-256",
    "x-github-hook-installation-target-type",
    "x-codeup-token",
    "authorization",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// Never any environment: the fixed config must mean the same on every machine.
struct NoEnv;

impl Lookup for NoEnv {
    fn get(&self, _: &str) -> Option<String> {
        None
    }
}

/// The body_match config, loaded once.
pub struct BodyMatch {
    snapshot: Snapshot,
}

impl BodyMatch {
    /// Writes [`BODY_MATCH_CONFIG`] into `dir` and loads it; panics if it does not load,
    /// since then the target would test nothing.
    pub fn load(dir: &Path) -> BodyMatch {
        let path = dir.join(CONFIG_FILE);
        if let Err(err) = std::fs::write(&path, BODY_MATCH_CONFIG) {
            panic!("harness: cannot write {}: {err}", path.display());
        }
        match snapshot::load(&path, &NoEnv) {
            Ok(snapshot) => BodyMatch { snapshot },
            Err(errors) => panic!("harness: the body_match config must load:\n{errors}"),
        }
    }

    /// Input layout: byte 0 picks the Content-Type (low 4 bits) and a route for a forced
    /// dry run (high 4 bits); byte 1 picks the path prefix, GET instead of POST (0x80) and
    /// whether to force that route (0x40). Then, up to the first `\n`, tab-separated: a path
    /// suffix, an event name, a header value and a query string. The rest is the body.
    pub fn run(&self, data: &[u8]) {
        let [kind, route, rest @ ..] = data else {
            return;
        };
        let (line, body) = split_once(rest, b'\n');
        let mut fields = line.split(|&b| b == b'\t');
        let mut field = || text(fields.next().unwrap_or_default());
        let (suffix, event, value, query) = (field(), field(), field(), field());

        let mut headers = HeaderMap::new();
        if let Some(content_type) = CONTENT_TYPES[usize::from(kind & 0x0f) % CONTENT_TYPES.len()] {
            headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        }
        for (names, value) in [(&EVENT_HEADERS[..], &event), (&VALUE_HEADERS[..], &value)] {
            // Values hyper would refuse (control characters) never reach the relay.
            if let Ok(value) = HeaderValue::from_str(value) {
                for name in names {
                    headers.append(HeaderName::from_static(name), value.clone());
                }
            }
        }
        let mut target = format!("{}{suffix}", PATHS[usize::from(route & 0x3f) % PATHS.len()]);
        if !query.is_empty() {
            target = format!("{target}?{query}");
        }
        let method = if route & 0x80 != 0 { Method::GET } else { Method::POST };
        let request = InboundRequest::new(method, &target, headers, Bytes::copy_from_slice(body), localhost());

        check_selection(&self.snapshot, &request);
        let routes = &self.snapshot.routes;
        let only = (route & 0x40 != 0).then(|| routes[usize::from(kind >> 4) % routes.len()].name.as_str());
        match render::dry_run(&self.snapshot, &request, only, false) {
            Ok(report) => {
                if let Err(err) = serde_json::to_string(&report) {
                    panic!("a dry run report does not serialize: {err}");
                }
            }
            Err(err) => panic!("dry run of a route the config defines failed: {err}"),
        }
    }
}

fn localhost() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

// ---------------------------------------------------------------------------------------
// template_render

/// Input layout: a template source up to the first NUL byte, then the data: JSON if it
/// parses, else the bytes as a string. The template is compiled for every escape kind,
/// strict and not, and rendered with the data as `x`, `body` and (for an object) at the
/// top level. The data's text also goes through [`json_string_round_trip`].
pub fn template_render(data: &[u8]) {
    let (source, payload) = split_once(data, 0);
    let source = text(source);
    let payload_text = text(payload);
    json_string_round_trip(&payload_text);
    json_string_round_trip(&source);
    // Nested `each` over input arrays multiplies their lengths: slow by design, not a bug.
    if source.matches("each").count() > 2 {
        return;
    }
    let value = serde_json::from_slice(payload).unwrap_or_else(|_| Value::String(payload_text.into_owned()));
    let mut root = match &value {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    root.insert("body".into(), value.clone());
    root.insert("x".into(), value);
    let context = Context::from(Value::Object(root));
    let mut engine = TemplateEngine::new();
    for escape in [Escape::Json, Escape::Plain, Escape::UrlPath] {
        for strict in [false, true] {
            // Compiling does not depend on the escape kind or strictness.
            let Ok(id) = engine.compile(&source, escape, strict) else {
                return;
            };
            let _ = engine.render(&id, &context);
        }
    }
}

/// `{"t":"{{x}}"}` compiled with [`Escape::Json`] must give JSON whose `t` is `x` exactly,
/// whatever `x` holds.
pub fn json_string_round_trip(x: &str) {
    static TEMPLATE: OnceLock<(TemplateEngine, TemplateId)> = OnceLock::new();
    let (engine, id) = TEMPLATE.get_or_init(|| {
        let mut engine = TemplateEngine::new();
        match engine.compile(r#"{"t":"{{x}}"}"#, Escape::Json, false) {
            Ok(id) => (engine, id),
            Err(err) => panic!("harness: the round-trip template must compile: {err}"),
        }
    });
    let out = match engine.render(id, &Context::from(json!({ "x": x }))) {
        Ok(out) => out,
        Err(err) => panic!("rendering a string into a Json template failed: {err} (x = {x:?})"),
    };
    let parsed: Value = match serde_json::from_str(&out) {
        Ok(parsed) => parsed,
        Err(err) => panic!("a Json-escaped template rendered invalid JSON ({err}): {out:?} (x = {x:?})"),
    };
    assert_eq!(parsed["t"].as_str(), Some(x), "the JSON string does not round-trip: {out:?}");
}

// ---------------------------------------------------------------------------------------
// path_match

/// Input layout: a pattern up to the first `\n`, then a path. Parsing and matching must
/// not panic; a pattern that parses must match its own text when it has no parameters,
/// its lookup key must match the normalized path exactly when the pattern matches the
/// path, and it must match a path made from it with a value in each parameter, capturing
/// those values percent-decoded.
pub fn path_match(data: &[u8]) {
    let (pattern, path) = split_once(data, b'\n');
    let (pattern, path) = (text(pattern), text(path));
    let Ok(parsed) = PathPattern::parse(&pattern) else {
        return;
    };
    let _ = parsed.matches(&path);
    assert_eq!(parsed.as_str(), pattern, "a parsed pattern must keep its source text");
    if !pattern.contains(['{', '*']) {
        assert!(parsed.matches(&pattern).is_some(), "the literal pattern {pattern:?} does not match its own text");
    }
    // The route table looks literal patterns up by key: a key must stand for exactly the
    // paths the pattern matches.
    match parsed.literal_key() {
        Some(key) => assert_eq!(
            key == PathPattern::normalize(&path),
            parsed.matches(&path).is_some(),
            "pattern {pattern:?} (key {key:?}) and path {path:?} (normalized {:?})",
            PathPattern::normalize(&path)
        ),
        None => assert!(pattern.contains(['{', '*']), "the literal pattern {pattern:?} has no lookup key"),
    }
    let (instance, expected) = instantiate(&pattern);
    assert_eq!(parsed.matches(&instance), Some(expected), "pattern {pattern:?} on {instance:?}");
}

/// A path for `pattern` (which parsed) with `{name}` filled in and a tail for `/*`, and the
/// parameters matching it must capture.
fn instantiate(pattern: &str) -> (String, Vec<(String, String)>) {
    let segments: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
    let mut path = String::new();
    let mut params = Vec::new();
    for (index, segment) in segments.iter().enumerate() {
        if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            path.push_str(&format!("/v{index}%20%F0%9F%9A%80"));
            params.push((name.to_string(), format!("v{index} 🚀")));
        } else if *segment == "*" && index + 1 == segments.len() {
            path.push_str("/r%2Fx/s");
            params.push(("rest".to_string(), "r/x/s".to_string()));
        } else {
            path.push('/');
            path.push_str(segment);
        }
    }
    if path.is_empty() {
        path.push('/');
    }
    (path, params)
}

//! `hookrelay test`: config as code. Each case gives a request and what must go out; the
//! request goes through the real matching, verification and rendering (nothing is sent)
//! and every mismatch is reported with a diff.

use std::path::{Path, PathBuf};

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::config::{env::ProcessEnv, ConfigErrors};
use crate::inbound::InboundRequest;
use crate::render::{dry_run, TargetReport};
use crate::snapshot::{self, Snapshot};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    /// The config to test, relative to the cases file (`-c` overrides it).
    config: Option<PathBuf>,
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    request: CaseRequest,
    expect: Expectation,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseRequest {
    #[serde(default = "post")]
    method: String,
    path: String,
    #[serde(default)]
    headers: indexmap::IndexMap<String, String>,
    /// A JSON/YAML value (sent as JSON) or a string (sent as is).
    body: Option<Value>,
    /// A file holding the body, relative to the cases file.
    body_file: Option<PathBuf>,
    /// The sender's address, for `ip_allow` (default 127.0.0.1).
    peer: Option<std::net::IpAddr>,
}

fn post() -> String {
    "POST".to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expectation {
    /// Exactly the routes that fire (match and pass verification), in order.
    routes: Option<Vec<String>>,
    /// The requests that would go out, in route then target order.
    requests: Option<Vec<ExpectedRequest>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedRequest {
    route: Option<String>,
    target: Option<String>,
    method: Option<String>,
    url: Option<String>,
    /// Listed headers must be present with these values; others may be there too.
    #[serde(default)]
    headers: indexmap::IndexMap<String, String>,
    body: Option<Value>,
    /// Compare the body as a subset (objects may have more keys) instead of exactly.
    #[serde(default)]
    subset: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CasesError {
    #[error("{0}: {1}")]
    Read(PathBuf, String),
    #[error("{0}: no config (give `config:` in the file or -c)")]
    NoConfig(PathBuf),
    #[error("{0}")]
    Config(#[from] ConfigErrors),
}

/// The outcome of one case.
#[derive(Debug)]
pub struct CaseResult {
    pub file: PathBuf,
    pub name: String,
    /// Empty when the case passed; otherwise one explanation (with a diff) per mismatch.
    pub failures: Vec<String>,
}

/// Runs every case of every file; `config` overrides the files' own `config:`.
pub fn run(files: &[PathBuf], config: Option<&Path>) -> Result<Vec<CaseResult>, CasesError> {
    let mut results = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).map_err(|err| CasesError::Read(file.clone(), err.to_string()))?;
        let cases: CaseFile = serde_yaml::from_str(&text).map_err(|err| CasesError::Read(file.clone(), err.to_string()))?;
        let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let config_path = match (config, &cases.config) {
            (Some(path), _) => path.to_path_buf(),
            (None, Some(path)) => base.join(path),
            (None, None) => return Err(CasesError::NoConfig(file.clone())),
        };
        let snapshot = snapshot::load(&config_path, &ProcessEnv)?;
        for case in &cases.cases {
            let failures = match build_request(&case.request, &base) {
                Ok(request) => check(&snapshot, &request, &case.expect),
                Err(message) => vec![message],
            };
            results.push(CaseResult { file: file.clone(), name: case.name.clone(), failures });
        }
    }
    Ok(results)
}

fn build_request(spec: &CaseRequest, base: &Path) -> Result<InboundRequest, String> {
    let mut headers = HeaderMap::new();
    for (name, value) in &spec.headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("bad header name {name:?}"))?;
        let value = HeaderValue::from_str(value).map_err(|_| format!("bad value for header {name}"))?;
        headers.append(name, value);
    }
    let raw = match (&spec.body, &spec.body_file) {
        (Some(_), Some(_)) => return Err("give body or body_file, not both".to_string()),
        (Some(Value::String(text)), None) => text.clone().into_bytes(),
        (Some(value), None) => {
            headers.entry(http::header::CONTENT_TYPE).or_insert(HeaderValue::from_static("application/json"));
            value.to_string().into_bytes()
        }
        (None, Some(file)) => {
            let path = base.join(file);
            if path.extension().is_some_and(|e| e == "json") {
                headers.entry(http::header::CONTENT_TYPE).or_insert(HeaderValue::from_static("application/json"));
            }
            std::fs::read(&path).map_err(|err| format!("body_file {}: {err}", path.display()))?
        }
        (None, None) => Vec::new(),
    };
    let method = Method::from_bytes(spec.method.to_ascii_uppercase().as_bytes()).map_err(|_| format!("bad method {:?}", spec.method))?;
    let peer = spec.peer.unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
    Ok(InboundRequest::new(method, &spec.path, headers, raw.into(), peer))
}

fn check(snapshot: &Snapshot, request: &InboundRequest, expect: &Expectation) -> Vec<String> {
    let report = match dry_run(snapshot, request, None, true) {
        Ok(report) => report,
        Err(message) => return vec![message],
    };
    let mut failures = Vec::new();
    let fired: Vec<&crate::render::RouteReport> = report.routes.iter().filter(|r| r.matched && r.verify_errors.is_empty()).collect();
    if let Some(routes) = &expect.routes {
        let actual: Vec<&str> = fired.iter().map(|r| r.route.as_str()).collect();
        if actual != routes.iter().map(String::as_str).collect::<Vec<_>>() {
            let refused: Vec<String> = report
                .routes
                .iter()
                .filter(|r| !r.verify_errors.is_empty())
                .map(|r| format!("{} ({})", r.route, r.verify_errors.join(", ")))
                .collect();
            let mut note = if refused.is_empty() { String::new() } else { format!("\n  failed verification: {}", refused.join("; ")) };
            for missing in routes.iter().filter(|name| !actual.contains(&name.as_str())) {
                if let Some(why) = report.routes.iter().find(|r| &r.route == missing).and_then(|r| r.why_not.as_deref()) {
                    note.push_str(&format!("\n  {missing} did not fire: {why}"));
                }
            }
            failures.push(format!("routes fired: expected {routes:?}, got {actual:?}{note}"));
        }
    }
    let Some(expected) = &expect.requests else { return failures };
    let mut actual = Vec::new();
    for route in &fired {
        for target in &route.requests {
            let value = match target {
                TargetReport::Request(view) => {
                    json!({ "route": route.route, "target": view.target, "method": view.method, "url": view.url, "headers": view.headers, "body": view.body })
                }
                TargetReport::Skipped { target, skipped } => json!({ "route": route.route, "target": target, "skipped": skipped }),
                TargetReport::Error { target, error } => json!({ "route": route.route, "target": target, "error": error }),
            };
            actual.push(value);
        }
    }
    let sent: Vec<&Value> = actual.iter().filter(|a| a.get("skipped").is_none()).collect();
    if sent.len() != expected.len() {
        failures.push(format!(
            "expected {} outgoing request(s), got {}:\n{}",
            expected.len(),
            sent.len(),
            pretty(&Value::Array(sent.iter().map(|v| (*v).clone()).collect()))
        ));
        return failures;
    }
    for (index, (want, got)) in expected.iter().zip(sent).enumerate() {
        let projected = project(want, got);
        let wanted = expectation_value(want);
        let equal = if want.subset { is_subset(&wanted, &projected) } else { wanted == projected };
        if !equal {
            failures.push(format!("request {index} differs (- expected, + actual):\n{}", diff(&pretty(&wanted), &pretty(&projected))));
        }
    }
    failures
}

/// The expectation as a JSON object with only the fields it names.
fn expectation_value(want: &ExpectedRequest) -> Value {
    let mut object = Map::new();
    let mut put = |key: &str, value: Option<Value>| {
        if let Some(value) = value {
            object.insert(key.to_string(), value);
        }
    };
    put("route", want.route.clone().map(Value::String));
    put("target", want.target.clone().map(Value::String));
    put("method", want.method.clone().map(|m| Value::String(m.to_ascii_uppercase())));
    put("url", want.url.clone().map(Value::String));
    put("body", want.body.clone());
    if !want.headers.is_empty() {
        let headers: Map<String, Value> = want.headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), Value::String(v.clone()))).collect();
        object.insert("headers".into(), Value::Object(headers));
    }
    Value::Object(object)
}

/// The actual request cut down to what the expectation names, so a diff shows only those.
fn project(want: &ExpectedRequest, got: &Value) -> Value {
    let mut object = Map::new();
    if let Some(error) = got.get("error") {
        object.insert("error".into(), error.clone());
    }
    for (key, named) in [
        ("route", want.route.is_some()),
        ("target", want.target.is_some()),
        ("method", want.method.is_some()),
        ("url", want.url.is_some()),
        ("body", want.body.is_some()),
    ] {
        if named {
            object.insert(key.into(), got.get(key).cloned().unwrap_or(Value::Null));
        }
    }
    if !want.headers.is_empty() {
        let headers: Map<String, Value> = want
            .headers
            .keys()
            .map(|k| k.to_ascii_lowercase())
            .map(|k| (k.clone(), got["headers"].get(&k).cloned().unwrap_or(Value::Null)))
            .collect();
        object.insert("headers".into(), Value::Object(headers));
    }
    Value::Object(object)
}

/// Objects: every expected key present with a subset value; everything else: equal.
fn is_subset(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Object(want), Value::Object(got)) => want.iter().all(|(k, v)| got.get(k).is_some_and(|g| is_subset(v, g))),
        (Value::Array(want), Value::Array(got)) => want.len() == got.len() && want.iter().zip(got).all(|(w, g)| is_subset(w, g)),
        _ => expected == actual,
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

fn diff(expected: &str, actual: &str) -> String {
    similar::TextDiff::from_lines(expected, actual)
        .iter_all_changes()
        .map(|change| {
            let sign = match change.tag() {
                similar::ChangeTag::Delete => "-",
                similar::ChangeTag::Insert => "+",
                similar::ChangeTag::Equal => " ",
            };
            format!("  {sign} {}", change.value().trim_end_matches('\n'))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

//! Compiled match conditions (headers, query, body JSONPath, event globs, `any`/`not`) and
//! their pure evaluation against one request. Compiling never panics on user input; every
//! problem is reported with its YAML path.

use http::{HeaderMap, HeaderName};
use serde_json::Value;
use serde_json_path::JsonPath;

use crate::config::model::RawMatch;
use crate::config::Problems;
use crate::values::scalar_text;

/// One comparison applied to a header, query or body value.
#[derive(Debug, Clone)]
pub enum Test {
    Equals(Value),
    In(Vec<Value>),
    Regex(regex::Regex),
    Glob(glob::Pattern),
    Exists(bool),
    Contains(Value),
    Greater(f64),
    GreaterOrEqual(f64),
    Less(f64),
    LessOrEqual(f64),
}

#[derive(Debug, Clone)]
pub enum Condition {
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Not(Box<Condition>),
    Header(HeaderName, Vec<Test>),
    Query(String, Vec<Test>),
    Body(JsonPath, Vec<Test>),
    Event(Vec<EventPattern>),
}

/// An event name pattern: most are plain names, compared as text; the rest are globs.
#[derive(Debug, Clone)]
pub enum EventPattern {
    Exact(String),
    Glob(glob::Pattern),
}

impl EventPattern {
    fn matches(&self, event: &str) -> bool {
        match self {
            EventPattern::Exact(name) => name == event,
            EventPattern::Glob(glob) => glob.matches(event),
        }
    }
}

/// What conditions look at; borrowed from the request for one evaluation.
pub struct MatchInput<'a> {
    pub headers: &'a HeaderMap,
    pub query: &'a [(String, String)],
    pub body: Option<&'a Value>,
    pub event: Option<&'a str>,
}

impl Condition {
    pub fn always() -> Condition {
        Condition::All(Vec::new())
    }

    /// `(name, text)` when this condition cannot hold unless header `name` equals `text`
    /// (it is such a header test, or one item of an `all`): the route table skips a route
    /// with one comparison, before evaluating the rest.
    pub fn required_header(&self) -> Option<(HeaderName, String)> {
        match self {
            Condition::All(items) => items.iter().find_map(Condition::required_header),
            Condition::Header(name, tests) => tests.iter().find_map(|test| match test {
                Test::Equals(expected) => scalar_text(expected).map(|text| (name.clone(), text.into_owned())),
                _ => None,
            }),
            _ => None,
        }
    }

    /// True when any body condition appears anywhere below, so an unparsable body makes
    /// the route not match instead of letting a `not` turn the failure into a match.
    pub fn needs_body(&self) -> bool {
        match self {
            Condition::All(items) | Condition::Any(items) => items.iter().any(Condition::needs_body),
            Condition::Not(inner) => inner.needs_body(),
            Condition::Body(..) => true,
            Condition::Header(..) | Condition::Query(..) | Condition::Event(..) => false,
        }
    }

    pub fn eval(&self, input: &MatchInput<'_>) -> bool {
        match self {
            Condition::All(items) => items.iter().all(|c| c.eval(input)),
            Condition::Any(items) => items.iter().any(|c| c.eval(input)),
            Condition::Not(inner) => !inner.eval(input),
            Condition::Header(name, tests) => holds_all_text(tests, header_text(input.headers, name).as_deref().into_iter()),
            Condition::Query(name, tests) => holds_all_text(tests, input.query.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str())),
            Condition::Body(path, tests) => match input.body {
                Some(body) => holds_all(tests, path.query(body).all().into_iter()),
                None => false,
            },
            Condition::Event(patterns) => input.event.is_some_and(|event| patterns.iter().any(|p| p.matches(event))),
        }
    }
}

impl Condition {
    /// Why the condition does not hold for `input`: the first failing part and what it
    /// saw (`header Codeup-Event: "Tag Push Hook" not in ["Push Hook"]`); None when it
    /// holds. Values of credential-like names are never shown.
    pub fn why_not(&self, input: &MatchInput<'_>) -> Option<String> {
        if self.eval(input) {
            return None;
        }
        Some(match self {
            Condition::All(items) => return items.iter().find_map(|item| item.why_not(input)),
            Condition::Any(items) => {
                let reasons: Vec<String> = items.iter().filter_map(|item| item.why_not(input)).collect();
                format!("none of `any` held: {}", reasons.join("; or "))
            }
            Condition::Not(_) => "`not`: the condition inside it held".to_string(),
            Condition::Header(name, tests) => {
                let text = header_text(input.headers, name);
                explain(
                    &format!("header {name}"),
                    hides_values(name.as_str()),
                    tests,
                    text.as_deref().map(|t| Value::String(t.to_string())).into_iter().collect(),
                )
            }
            Condition::Query(name, tests) => {
                let values = input.query.iter().filter(|(k, _)| k == name).map(|(_, v)| Value::String(v.clone())).collect();
                explain(&format!("query {name}"), hides_values(name), tests, values)
            }
            Condition::Body(path, tests) => {
                let shown = path.to_string();
                let nodes = input.body.map(|body| path.query(body).all().into_iter().cloned().collect()).unwrap_or_default();
                explain(&format!("body {shown}"), hides_values(&shown), tests, nodes)
            }
            Condition::Event(patterns) => {
                let wanted: Vec<String> = patterns.iter().map(EventPattern::describe).collect();
                match input.event {
                    Some(event) => format!("event {} not in [{}]", Value::String(event.to_string()), wanted.join(", ")),
                    None => format!("no event name (wanted one of [{}])", wanted.join(", ")),
                }
            }
        })
    }
}

impl EventPattern {
    fn describe(&self) -> String {
        match self {
            EventPattern::Exact(name) => name.clone(),
            EventPattern::Glob(glob) => glob.as_str().to_string(),
        }
    }
}

/// Whether a header, query parameter or body field is named like a credential: its values
/// (seen and expected) stay out of explanations.
fn hides_values(name: &str) -> bool {
    // Every field of a body path (`$.a.token`, `$['auth'][0]`), or the whole name.
    name.split(['.', '[', ']', '\'', '"', '$'])
        .filter(|part| !part.is_empty() && !part.chars().all(|c| c.is_ascii_digit() || c == '*'))
        .any(|part| {
            crate::redact::is_sensitive_header(part)
                || crate::redact::is_secret_name(part)
                || ["cookie"].contains(&part.to_ascii_lowercase().as_str())
        })
}

/// A seen value as explanations show it: scalars as JSON, objects and arrays only by their
/// size (they may hold anything).
fn shown(value: &Value) -> String {
    match value {
        Value::Object(fields) => format!("an object of {} field(s)", fields.len()),
        Value::Array(items) => format!("an array of {} item(s)", items.len()),
        scalar => scalar.to_string(),
    }
}

/// The first of `tests` that the `seen` values fail, said as `what <seen> <test>`.
fn explain(what: &str, hidden: bool, tests: &[Test], seen: Vec<Value>) -> String {
    let Some(first) = seen.first() else {
        return format!("{what} missing");
    };
    let failed = tests.iter().find(|test| match test {
        Test::Exists(expected) => !*expected,
        other => !seen.iter().any(|node| other.holds(node)),
    });
    let shown = if hidden { "(value hidden)".to_string() } else { shown(first) };
    match failed {
        Some(Test::Exists(_)) => format!("{what} is present"),
        Some(test) if hidden => format!("{what} {shown} fails `{}`", test.operator()),
        Some(test) => format!("{what} = {shown} {}", test.failure()),
        None => format!("{what} = {shown}"),
    }
}

impl Test {
    fn operator(&self) -> &'static str {
        match self {
            Test::Equals(_) => "equals",
            Test::In(_) => "in",
            Test::Regex(_) => "regex",
            Test::Glob(_) => "glob",
            Test::Exists(_) => "exists",
            Test::Contains(_) => "contains",
            Test::Greater(_) => "gt",
            Test::GreaterOrEqual(_) => "gte",
            Test::Less(_) => "lt",
            Test::LessOrEqual(_) => "lte",
        }
    }

    /// What the value failed, as words after it.
    fn failure(&self) -> String {
        match self {
            Test::Equals(expected) => format!("≠ {expected}"),
            Test::In(options) => format!("not in [{}]", options.iter().map(Value::to_string).collect::<Vec<_>>().join(", ")),
            Test::Regex(regex) => format!("does not match {}", regex.as_str()),
            Test::Glob(glob) => format!("does not match {}", glob.as_str()),
            Test::Exists(_) => "exists".to_string(),
            Test::Contains(needle) => format!("does not contain {needle}"),
            Test::Greater(limit) => format!("is not > {limit}"),
            Test::GreaterOrEqual(limit) => format!("is not ≥ {limit}"),
            Test::Less(limit) => format!("is not < {limit}"),
            Test::LessOrEqual(limit) => format!("is not ≤ {limit}"),
        }
    }
}

/// Every test must hold; a test holds when any of the selected nodes satisfies it
/// (`exists` looks at whether there are nodes at all).
fn holds_all<'v>(tests: &[Test], nodes: impl Iterator<Item = &'v Value> + Clone) -> bool {
    tests.iter().all(|test| match test {
        Test::Exists(expected) => nodes.clone().next().is_some() == *expected,
        other => nodes.clone().any(|node| other.holds(node)),
    })
}

/// [`holds_all`] for text values (headers, query parameters), compared without building JSON.
fn holds_all_text<'v>(tests: &[Test], texts: impl Iterator<Item = &'v str> + Clone) -> bool {
    tests.iter().all(|test| match test {
        Test::Exists(expected) => texts.clone().next().is_some() == *expected,
        other => texts.clone().any(|text| other.holds_text(text)),
    })
}

/// A text equals a scalar when their texts are equal (as [`loosely_equal`] does for JSON).
/// A header as conditions see it: repeated values are one value joined with ", "; the usual
/// single header is borrowed in place. `None` when absent (or not text).
pub fn header_text<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<std::borrow::Cow<'h, str>> {
    let mut values = headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
    match (values.next(), values.next()) {
        (None, _) => None,
        (Some(only), None) => Some(std::borrow::Cow::Borrowed(only)),
        (Some(first), Some(second)) => {
            Some(std::borrow::Cow::Owned([first, second].into_iter().chain(values).collect::<Vec<_>>().join(", ")))
        }
    }
}

fn text_equals(text: &str, expected: &Value) -> bool {
    scalar_text(expected).is_some_and(|wanted| wanted == text)
}

impl Test {
    fn holds_text(&self, text: &str) -> bool {
        let number = || text.trim().parse::<f64>().ok();
        match self {
            Test::Equals(expected) => text_equals(text, expected),
            Test::In(options) => options.iter().any(|o| text_equals(text, o)),
            Test::Regex(regex) => regex.is_match(text),
            Test::Glob(glob) => glob.matches(text),
            Test::Exists(_) => true,
            Test::Contains(needle) => scalar_text(needle).is_some_and(|n| text.contains(n.as_ref())),
            Test::Greater(limit) => number().is_some_and(|n| n > *limit),
            Test::GreaterOrEqual(limit) => number().is_some_and(|n| n >= *limit),
            Test::Less(limit) => number().is_some_and(|n| n < *limit),
            Test::LessOrEqual(limit) => number().is_some_and(|n| n <= *limit),
        }
    }

    fn holds(&self, node: &Value) -> bool {
        match self {
            Test::Equals(expected) => loosely_equal(node, expected),
            Test::In(options) => options.iter().any(|o| loosely_equal(node, o)),
            Test::Regex(regex) => scalar_text(node).is_some_and(|t| regex.is_match(&t)),
            Test::Glob(glob) => scalar_text(node).is_some_and(|t| glob.matches(&t)),
            Test::Exists(_) => true,
            Test::Contains(needle) => match node {
                Value::Array(items) => items.iter().any(|item| loosely_equal(item, needle)),
                Value::String(text) => scalar_text(needle).is_some_and(|n| text.contains(n.as_ref())),
                _ => false,
            },
            Test::Greater(limit) => as_number(node).is_some_and(|n| n > *limit),
            Test::GreaterOrEqual(limit) => as_number(node).is_some_and(|n| n >= *limit),
            Test::Less(limit) => as_number(node).is_some_and(|n| n < *limit),
            Test::LessOrEqual(limit) => as_number(node).is_some_and(|n| n <= *limit),
        }
    }
}

/// Equal as JSON, or equal as text when both are scalars: headers and form fields are
/// always strings, and `equals: 15` should match the header `15`.
fn loosely_equal(node: &Value, expected: &Value) -> bool {
    if node == expected {
        return true;
    }
    match (node, expected) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => matches!((scalar_text(node), scalar_text(expected)), (Some(a), Some(b)) if a == b),
    }
}

fn as_number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(number) => number.as_f64(),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    }
}

/// Patterns compiled during one config compile: configs repeat the same few
/// (`^refs/heads/…`) across many routes, and a `Regex` clone shares the compiled program.
/// Owned by the compile and dropped with it.
#[derive(Debug, Default)]
pub struct Regexes(std::collections::HashMap<String, regex::Regex>);

impl Regexes {
    fn compile(&mut self, pattern: &str) -> Result<regex::Regex, regex::Error> {
        if let Some(hit) = self.0.get(pattern) {
            return Ok(hit.clone());
        }
        let regex = regex::Regex::new(pattern)?;
        self.0.insert(pattern.to_string(), regex.clone());
        Ok(regex)
    }
}

/// regex's syntax errors span several lines (pattern, caret, message); config errors are
/// one line each, and the position already points at the pattern.
fn regex_error(err: &regex::Error) -> String {
    let text = err.to_string();
    let last = text.lines().last().unwrap_or_default().trim();
    last.strip_prefix("error: ").unwrap_or(last).to_string()
}

/// Compiles the non-path parts of a `match:` block. `path`/`methods` are handled by the
/// caller at the top level and rejected in nested blocks.
pub fn compile_match(raw: &RawMatch, at: &str, nested: bool, problems: &mut Problems, regexes: &mut Regexes) -> Condition {
    let mut all = Vec::new();
    if nested {
        if raw.path.is_some() {
            problems.push(format!("{at}.path"), "`path` is only allowed in the route's top-level match");
        }
        if raw.methods.is_some() {
            problems.push(format!("{at}.methods"), "`methods` is only allowed in the route's top-level match");
        }
    }
    if let Some(events) = &raw.event {
        let mut patterns = Vec::new();
        for (index, event) in events.clone().into_vec().into_iter().enumerate() {
            if !event.contains(['*', '?', '[']) {
                patterns.push(EventPattern::Exact(event));
                continue;
            }
            match glob::Pattern::new(&event) {
                Ok(glob) => patterns.push(EventPattern::Glob(glob)),
                Err(err) => problems.push(format!("{at}.event[{index}]"), format!("bad glob {event:?}: {err}")),
            }
        }
        all.push(Condition::Event(patterns));
    }
    for (name, raw_test) in &raw.headers {
        let here = format!("{at}.headers.{name}");
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(header) => all.push(Condition::Header(header, compile_tests(raw_test, &here, problems, regexes))),
            Err(_) => problems.push(here, format!("{name:?} is not a valid header name")),
        }
    }
    for (name, raw_test) in &raw.query {
        let here = format!("{at}.query.{name}");
        all.push(Condition::Query(name.clone(), compile_tests(raw_test, &here, problems, regexes)));
    }
    for (index, entry) in raw.body.iter().enumerate() {
        let here = format!("{at}.body[{index}]");
        let mut ops = entry.clone();
        let Some(path_value) = ops.remove("path") else {
            problems.push(here, "a body condition needs `path` (a JSONPath such as $.ref)");
            continue;
        };
        let Some(path_text) = path_value.as_str() else {
            problems.push(format!("{here}.path"), "`path` must be a string JSONPath");
            continue;
        };
        let path = match JsonPath::parse(path_text) {
            Ok(path) => path,
            Err(err) => {
                problems.push(format!("{here}.path"), format!("invalid JSONPath {path_text:?}: {err}"));
                continue;
            }
        };
        if ops.is_empty() {
            problems.push(here, "a body condition needs a test beside `path` (equals, regex, exists, gt, …)");
            continue;
        }
        all.push(Condition::Body(path, compile_tests(&Value::Object(ops), &here, problems, regexes)));
    }
    if !raw.any.is_empty() {
        let options =
            raw.any.iter().enumerate().map(|(i, m)| compile_match(m, &format!("{at}.any[{i}]"), true, problems, regexes)).collect();
        all.push(Condition::Any(options));
    }
    if let Some(not) = &raw.not {
        all.push(Condition::Not(Box::new(compile_match(not, &format!("{at}.not"), true, problems, regexes))));
    }
    Condition::All(all)
}

/// A plain scalar means equals; a mapping holds one or more operators, all of which must hold.
pub fn compile_tests(raw: &Value, at: &str, problems: &mut Problems, regexes: &mut Regexes) -> Vec<Test> {
    let ops = match raw {
        Value::String(_) | Value::Number(_) | Value::Bool(_) => return vec![Test::Equals(raw.clone())],
        Value::Object(ops) => ops,
        Value::Null | Value::Array(_) => {
            problems.push(at, "a condition is a plain value (equals) or a mapping such as {regex: …}, {in: [..]}, {exists: true}");
            return Vec::new();
        }
    };
    if ops.is_empty() {
        problems.push(at, "an empty condition would always hold: give an operator such as {exists: true}");
        return Vec::new();
    }
    let mut tests = Vec::new();
    for (op, operand) in ops {
        let here = format!("{at}.{op}");
        let number = |problems: &mut Problems| {
            let parsed = operand.as_f64();
            if parsed.is_none() {
                problems.push(here.clone(), format!("`{op}` takes a number"));
            }
            parsed
        };
        let text = |problems: &mut Problems| {
            let parsed = operand.as_str().map(str::to_string);
            if parsed.is_none() {
                problems.push(here.clone(), format!("`{op}` takes a string"));
            }
            parsed
        };
        match op.as_str() {
            "equals" => tests.push(Test::Equals(operand.clone())),
            "in" => match operand {
                Value::Array(options) => tests.push(Test::In(options.clone())),
                _ => problems.push(here, "`in` takes a list of values"),
            },
            "regex" => {
                if let Some(pattern) = text(problems) {
                    match regexes.compile(&pattern) {
                        Ok(regex) => tests.push(Test::Regex(regex)),
                        Err(err) => problems.push(here, format!("invalid regex: {}", regex_error(&err))),
                    }
                }
            }
            "glob" => {
                if let Some(pattern) = text(problems) {
                    match glob::Pattern::new(&pattern) {
                        Ok(glob) => tests.push(Test::Glob(glob)),
                        Err(err) => problems.push(here, format!("invalid glob: {err}")),
                    }
                }
            }
            "exists" => match operand {
                Value::Bool(flag) => tests.push(Test::Exists(*flag)),
                _ => problems.push(here, "`exists` takes true or false"),
            },
            "contains" => tests.push(Test::Contains(operand.clone())),
            "gt" => tests.extend(number(problems).map(Test::Greater)),
            "gte" => tests.extend(number(problems).map(Test::GreaterOrEqual)),
            "lt" => tests.extend(number(problems).map(Test::Less)),
            "lte" => tests.extend(number(problems).map(Test::LessOrEqual)),
            _ => problems.push(
                here,
                format!("unknown operator `{op}` (expected one of equals, in, regex, glob, exists, contains, gt, gte, lt, lte)"),
            ),
        }
    }
    tests
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn credential_like_names_hide_their_values() {
        let hidden = ["x-gitlab-token", "Authorization", "$.secret", "$['data']['token']", "access_token", "$.sign", "x-api-key", "$.key"];
        for name in hidden.into_iter().chain(["$.credentials[0]", "sig", "credential", "$.auth.user"]) {
            assert!(hides_values(name), "{name}");
        }
        for name in ["codeup-event", "$.ref", "$.user", "x-github-event", "$.items[0].name"] {
            assert!(!hides_values(name), "{name}");
        }
        assert_eq!(shown(&json!({"name": "bob", "password": "x"})), "an object of 2 field(s)");
    }

    fn compile(yaml: &str) -> Condition {
        let raw: RawMatch = serde_yaml::from_str(yaml).unwrap();
        let mut problems = Problems::default();
        let condition = compile_match(&raw, "match", false, &mut problems, &mut Regexes::default());
        assert!(problems.is_empty(), "{problems:?}");
        condition
    }

    fn eval(condition: &Condition, headers: &[(&str, &str)], query: &[(&str, &str)], body: Option<&Value>, event: Option<&str>) -> bool {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        let query: Vec<(String, String)> = query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        condition.eval(&MatchInput { headers: &map, query: &query, body, event })
    }

    #[test]
    fn headers_are_case_insensitive_and_support_every_form() {
        let c = compile("headers: { Codeup-Event: Push Hook, X-Env: { regex: '^(prod|staging)$' } }");
        assert!(eval(&c, &[("codeup-event", "Push Hook"), ("x-env", "prod")], &[], None, None));
        assert!(!eval(&c, &[("codeup-event", "Push Hook"), ("x-env", "dev")], &[], None, None));
        assert!(!eval(&c, &[("x-env", "prod")], &[], None, None));
        let c = compile("headers: { X-A: { exists: false }, X-B: { in: [a, b] }, X-C: { glob: 'v1.*' } }");
        assert!(eval(&c, &[("x-b", "b"), ("x-c", "v1.2")], &[], None, None));
        assert!(!eval(&c, &[("x-a", "1"), ("x-b", "b"), ("x-c", "v1.2")], &[], None, None));
    }

    #[test]
    fn body_conditions_any_node_and_numbers() {
        let c = compile("body: [ { path: $.ref, regex: '^refs/heads/(main|release/.+)$' }, { path: $.total_commits_count, gt: 0 } ]");
        assert!(eval(&c, &[], &[], Some(&json!({"ref": "refs/heads/release/1.2", "total_commits_count": 2})), None));
        assert!(!eval(&c, &[], &[], Some(&json!({"ref": "refs/heads/dev", "total_commits_count": 2})), None));
        assert!(!eval(&c, &[], &[], Some(&json!({"ref": "refs/heads/main", "total_commits_count": 0})), None));
        assert!(!eval(&c, &[], &[], None, None));
        let c = compile("body: [ { path: '$.commits[*].author.name', equals: bob }, { path: $.labels, contains: urgent }, { path: $.n, lte: 3, gte: 3 } ]");
        let body = json!({"commits": [{"author": {"name": "al"}}, {"author": {"name": "bob"}}], "labels": ["x", "urgent"], "n": "3"});
        assert!(eval(&c, &[], &[], Some(&body), None));
    }

    #[test]
    fn combinators_events_and_query() {
        let c = compile("event: ['bug::*', story::update]\nquery: { token: { exists: true } }\nany: [ { headers: { X-A: '1' } }, { headers: { X-B: '1' } } ]\nnot: { query: { dry: 'yes' } }");
        assert!(eval(&c, &[("x-b", "1")], &[("token", "t")], None, Some("bug::create")));
        assert!(!eval(&c, &[("x-b", "1")], &[("token", "t")], None, Some("story::create")));
        assert!(!eval(&c, &[("x-b", "1")], &[("token", "t"), ("dry", "yes")], None, Some("bug::create")));
        assert!(!eval(&c, &[], &[("token", "t")], None, Some("bug::create")));
        assert!(!eval(&c, &[("x-a", "1")], &[], None, Some("bug::create")));
    }

    #[test]
    fn loose_equality_between_text_and_numbers() {
        let c = compile("body: [ { path: $.project_id, equals: '15' } ]\nheaders: { X-N: 15 }");
        assert!(eval(&c, &[("x-n", "15")], &[], Some(&json!({"project_id": 15})), None));
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let raw: RawMatch = serde_yaml::from_str("headers: { 'bad header': x, X-A: { regex: '(' } }\nbody: [ { regex: x }, { path: '$[', equals: 1 }, { path: $.a, nope: 1 } ]\nnot: { path: /x }").unwrap();
        let mut problems = Problems::default();
        compile_match(&raw, "routes[0].match", false, &mut problems, &mut Regexes::default());
        let paths: Vec<String> = problems.iter().map(|(p, _)| p.to_string()).collect();
        assert_eq!(
            paths,
            [
                "routes[0].match.headers.bad header",
                "routes[0].match.headers.X-A.regex",
                "routes[0].match.body[0]",
                "routes[0].match.body[1].path",
                "routes[0].match.body[2].nope",
                "routes[0].match.not.path",
            ]
        );
    }
}

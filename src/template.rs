//! Handlebars templates for hookrelay: one registry per (escape kind, strictness), the helper set, and rendering against a per-request context.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, PoisonError, RwLock};

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine as _};
use chrono::{DateTime, FixedOffset, NaiveDateTime, SecondsFormat, Utc};
use handlebars::template::TemplateElement;
use handlebars::{
    Context, Handlebars, Helper, HelperDef, HelperResult, Output, RenderContext, RenderError, RenderErrorReason, ScopedJson, Template,
};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use regex::{Regex, RegexBuilder};
use serde_json::Value as Json;
use serde_json_path::JsonPath;
use sha2::{Digest, Sha256};

use crate::values::MILLIS_THRESHOLD;

/// How `{{expr}}` output is escaped; `{{{expr}}}` is always raw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Escape {
    /// JSON string content (the text between the quotes).
    Json,
    /// No escaping.
    Plain,
    /// Percent-encoding of a URL path segment.
    UrlPath,
}

impl Escape {
    const ALL: [Escape; 3] = [Escape::Json, Escape::Plain, Escape::UrlPath];
}

fn registry_index(escape: Escape, strict: bool) -> usize {
    let base = match escape {
        Escape::Json => 0,
        Escape::Plain => 2,
        Escape::UrlPath => 4,
    };
    base + usize::from(strict)
}

/// Handle to a compiled template; only meaningful for the engine that issued it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TemplateId {
    registry: usize,
    index: usize,
}

/// Compile errors always carry a position; render errors when handlebars knows it.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum TemplateError {
    #[error("template syntax error at line {line}, column {column}: {message}")]
    Compile { message: String, line: usize, column: usize },
    #[error("render error{}: {message}", position(.line, .column))]
    Render { message: String, line: Option<usize>, column: Option<usize> },
}

fn position(line: &Option<usize>, column: &Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" at line {l}, column {c}"),
        (Some(l), None) => format!(" at line {l}"),
        _ => String::new(),
    }
}

fn render_err(message: impl Into<String>) -> TemplateError {
    TemplateError::Render { message: message.into(), line: None, column: None }
}

/// Compiled templates. Compilation needs `&mut self`; rendering is `&self`, so a
/// finished engine can be shared across request tasks.
#[derive(Debug)]
pub struct TemplateEngine {
    registries: Vec<Handlebars<'static>>,
    names: Vec<String>,
    /// Per template (by index): its text when it has no expression at all, which renders
    /// as itself without a trip through handlebars.
    fixed: Vec<Option<String>>,
    /// Literal patterns and paths of `regex_capture` / `jsonpath` calls, compiled with the
    /// templates; written while compiling, only read while rendering.
    literals: Arc<RwLock<Literals>>,
}

/// Helper arguments compiled once per engine. A pattern that is not a literal of some
/// template (it comes from the payload) is compiled on each call, never cached.
#[derive(Debug, Default)]
struct Literals {
    regexes: HashMap<String, Regex>,
    paths: HashMap<String, JsonPath>,
}

// The engine is shared across request tasks; fail the build, not the deploy, if that breaks.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<TemplateEngine>();
};

impl Default for TemplateEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl TemplateEngine {
    pub fn new() -> Self {
        let literals = Arc::new(RwLock::new(Literals::default()));
        let mut registries = Vec::with_capacity(6);
        for escape in Escape::ALL {
            for strict in [false, true] {
                debug_assert_eq!(registries.len(), registry_index(escape, strict));
                registries.push(build_registry(escape, strict, &literals));
            }
        }
        Self { registries, names: Vec::new(), fixed: Vec::new(), literals }
    }

    /// Compiles `source` into the registry for `escape`/`strict`. Partials and
    /// decorators are rejected; a position of 0 means handlebars gave none.
    pub fn compile(&mut self, source: &str, escape: Escape, strict: bool) -> Result<TemplateId, TemplateError> {
        let template = Template::compile(source).map_err(|e| {
            let (line, column) = e.pos().unwrap_or((0, 0));
            TemplateError::Compile { message: e.reason().to_string(), line, column }
        })?;
        reject_partials(&template)?;
        self.precompile_literals(source);
        let id = TemplateId { registry: registry_index(escape, strict), index: self.names.len() };
        let name = format!("t{}", id.index);
        self.fixed.push(fixed_text(&template));
        // Index is in range: `new` builds one registry per (escape, strict) pair.
        self.registries[id.registry].register_template(&name, template);
        self.names.push(name);
        Ok(id)
    }

    /// The text `id` always renders to, when it has no expression.
    fn fixed_text(&self, id: &TemplateId) -> Option<&str> {
        self.fixed.get(id.index).and_then(Option::as_deref)
    }

    /// Renders against a context the caller builds once per request and reuses.
    pub fn render(&self, id: &TemplateId, ctx: &Context) -> Result<String, TemplateError> {
        if let Some(text) = self.fixed_text(id) {
            return Ok(text.to_owned());
        }
        let (Some(registry), Some(name)) = (self.registries.get(id.registry), self.names.get(id.index)) else {
            return Err(render_err("unknown template id"));
        };
        registry.render_with_context(name, ctx).map_err(|e| TemplateError::Render {
            message: e.reason().to_string(),
            line: e.line_no,
            column: e.column_no,
        })
    }
}

impl TemplateEngine {
    /// Compiles the string literals passed to `regex_capture` and `jsonpath` in `source`
    /// (a literal that is not a valid pattern or path is left for the call to report).
    fn precompile_literals(&mut self, source: &str) {
        static CALLS: std::sync::LazyLock<Option<Regex>> = std::sync::LazyLock::new(|| {
            Regex::new(r#"\b(regex_capture|jsonpath)((?:\s+(?:"(?:[^"\\]|\\.)*"|[^\s"}()]+|\([^)]*\)))+)"#).ok()
        });
        static STRINGS: std::sync::LazyLock<Option<Regex>> = std::sync::LazyLock::new(|| Regex::new(r#""(?:[^"\\]|\\.)*""#).ok());
        let (Some(calls), Some(strings)) = (CALLS.as_ref(), STRINGS.as_ref()) else { return };
        let mut literals = self.literals.write().unwrap_or_else(PoisonError::into_inner);
        for call in calls.captures_iter(source) {
            for literal in strings.find_iter(&call[2]) {
                let Ok(text) = serde_json::from_str::<String>(literal.as_str()) else { continue };
                if &call[1] == "regex_capture" {
                    if let Ok(regex) = build_regex(&text) {
                        literals.regexes.insert(text, regex);
                    }
                } else if let Ok(path) = JsonPath::parse(&text) {
                    literals.paths.insert(text, path);
                }
            }
        }
    }
}

/// Partials resolve against every template in the registry (and inline ones), so a
/// template including itself would recurse until the stack overflows and take the
/// whole relay down. Hookrelay templates are standalone, so refuse them outright.
/// The text of a template that handlebars parsed as raw text only (no expression, no
/// block, no comment), which is what it renders to in every context.
fn fixed_text(template: &Template) -> Option<String> {
    match template.elements.as_slice() {
        [] => Some(String::new()),
        [TemplateElement::RawString(text)] => Some(text.clone()),
        _ => None,
    }
}

fn reject_partials(template: &Template) -> Result<(), TemplateError> {
    for (i, element) in template.elements.iter().enumerate() {
        let nested = match element {
            TemplateElement::PartialExpression(_)
            | TemplateElement::PartialBlock(_)
            | TemplateElement::DecoratorExpression(_)
            | TemplateElement::DecoratorBlock(_) => {
                let (line, column) = template.mapping.get(i).map_or((0, 0), |m| (m.0, m.1));
                return Err(TemplateError::Compile { message: "partials and decorators are not supported".to_owned(), line, column });
            }
            TemplateElement::HelperBlock(ht) | TemplateElement::Expression(ht) | TemplateElement::HtmlExpression(ht) => {
                [ht.template.as_ref(), ht.inverse.as_ref()]
            }
            _ => continue,
        };
        for inner in nested.into_iter().flatten() {
            reject_partials(inner)?;
        }
    }
    Ok(())
}

fn build_registry(escape: Escape, strict: bool, literals: &Arc<RwLock<Literals>>) -> Handlebars<'static> {
    let mut hb = Handlebars::new();
    // Dev mode re-reads templates and scripts from disk; templates must never touch files.
    hb.set_dev_mode(false);
    hb.set_strict_mode(strict);
    match escape {
        Escape::Json => hb.register_escape_fn(json_escape),
        Escape::Plain => hb.register_escape_fn(handlebars::no_escape),
        Escape::UrlPath => hb.register_escape_fn(url_escape),
    }
    // `log` would let a template copy payloads or credentials into the relay's own logs.
    hb.unregister_helper("log");
    hb.register_helper("json", Box::new(JsonHelper));
    for &(name, min, max, func) in VALUE_HELPERS {
        let helper = ValueHelper {
            func: Box::new(func),
            min,
            max,
            // `default` exists to absorb missing values, even in strict mode.
            missing_ok: name == "default",
        };
        hb.register_helper(name, Box::new(helper));
    }
    let regexes = literals.clone();
    let func = move |a: &[&Json]| regex_capture_helper(a, &regexes.read().unwrap_or_else(PoisonError::into_inner));
    hb.register_helper("regex_capture", Box::new(ValueHelper { func: Box::new(func), min: 2, max: 3, missing_ok: false }));
    let paths = literals.clone();
    let func = move |a: &[&Json]| jsonpath_helper(a, &paths.read().unwrap_or_else(PoisonError::into_inner));
    hb.register_helper("jsonpath", Box::new(ValueHelper { func: Box::new(func), min: 2, max: 2, missing_ok: false }));
    hb
}

/// Mirrors serde_json's string escaping so `"{{x}}"` is always a valid JSON string.
fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            // Writing to a String cannot fail.
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

/// Everything except RFC 3986 unreserved characters.
const NOT_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

fn url_escape(s: &str) -> String {
    utf8_percent_encode(s, NOT_UNRESERVED).collect()
}

fn helper_error(name: &str, message: impl std::fmt::Display) -> RenderError {
    RenderErrorReason::Other(format!("{name}: {message}")).into()
}

fn arity_error(name: &str, min: usize, max: usize, got: usize) -> RenderError {
    let expected = if min == max { format!("{min}") } else { format!("{min} to {max}") };
    helper_error(name, format!("expects {expected} argument(s), got {got}"))
}

/// Writes compact JSON straight to the output: it must bypass the escape function,
/// otherwise `{{json x}}` in a Json template would quote-escape its own syntax.
struct JsonHelper;

impl HelperDef for JsonHelper {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let [param] = h.params().as_slice() else {
            return Err(arity_error("json", 1, 1, h.params().len()));
        };
        if r.strict_mode() && param.is_value_missing() {
            return Err(RenderError::strict_error(param.relative_path()));
        }
        let text = serde_json::to_string(param.value()).map_err(RenderErrorReason::from)?;
        out.write(&text)?;
        Ok(())
    }
}

type ValueFn = fn(&[&Json]) -> Result<Json, String>;

/// Helpers returning values (rather than writing) compose as subexpressions and
/// have their `{{ }}` output escaped like any other value.
/// A value helper's body; some hold the engine's precompiled literals.
type HelperFn = Box<dyn Fn(&[&Json]) -> Result<Json, String> + Send + Sync>;

struct ValueHelper {
    func: HelperFn,
    min: usize,
    max: usize,
    missing_ok: bool,
}

impl HelperDef for ValueHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let params = h.params();
        if params.len() < self.min || params.len() > self.max {
            return Err(arity_error(h.name(), self.min, self.max, params.len()));
        }
        // Handlebars hands missing helper arguments over silently even in strict mode.
        if r.strict_mode() {
            let skip = usize::from(self.missing_ok);
            if let Some(p) = params.iter().skip(skip).find(|p| p.is_value_missing()) {
                return Err(RenderError::strict_error(p.relative_path()));
            }
        }
        let args: Vec<&Json> = params.iter().map(|p| p.value()).collect();
        (self.func)(&args).map(ScopedJson::Derived).map_err(|m| helper_error(h.name(), m))
    }
}

const VALUE_HELPERS: &[(&str, usize, usize, ValueFn)] = &[
    ("default", 2, 2, default_helper),
    ("upper", 1, 1, |a| Ok(text(a[0]).to_uppercase().into())),
    ("lower", 1, 1, |a| Ok(text(a[0]).to_lowercase().into())),
    ("trim", 1, 1, |a| Ok(text(a[0]).trim().into())),
    ("truncate", 2, 2, truncate_helper),
    ("replace", 3, 3, replace_helper),
    ("split", 2, 2, split_helper),
    ("join", 2, 2, join_helper),
    ("first", 1, 1, |a| Ok(first_or_last(a[0], true))),
    ("last", 1, 1, |a| Ok(first_or_last(a[0], false))),
    ("base64", 1, 1, |a| Ok(STANDARD.encode(text(a[0]).as_bytes()).into())),
    ("base64_decode", 1, 1, base64_decode_helper),
    ("urlencode", 1, 1, |a| Ok(url_escape(&text(a[0])).into())),
    ("sha256", 1, 1, sha256_helper),
    ("now", 0, 1, now_helper),
    ("date", 2, 2, date_helper),
];

/// String view of a helper argument: numbers and bools as their JSON text,
/// null/missing as empty, so `upper 12` works like `upper "12"`.
fn text(v: &Json) -> Cow<'_, str> {
    match v {
        Json::String(s) => Cow::Borrowed(s),
        Json::Null => Cow::Borrowed(""),
        other => Cow::Owned(other.to_string()),
    }
}

fn count(v: &Json, what: &str) -> Result<usize, String> {
    let n = match v {
        Json::Number(n) => n.as_u64().and_then(|n| usize::try_from(n).ok()),
        Json::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    n.ok_or_else(|| format!("{what} must be a non-negative integer, got {v}"))
}

fn default_helper(a: &[&Json]) -> Result<Json, String> {
    let blank = match a[0] {
        Json::Null => true,
        Json::String(s) => s.is_empty(),
        _ => false,
    };
    Ok(if blank { a[1] } else { a[0] }.clone())
}

fn truncate_helper(a: &[&Json]) -> Result<Json, String> {
    let s = text(a[0]);
    let n = count(a[1], "length")?;
    // Cut on a char boundary so multi-byte characters are never split.
    let end = s.char_indices().nth(n).map_or(s.len(), |(i, _)| i);
    Ok(s[..end].into())
}

fn replace_helper(a: &[&Json]) -> Result<Json, String> {
    let (s, from) = (text(a[0]), text(a[1]));
    // str::replace with an empty needle inserts between every char; nobody means that.
    if from.is_empty() {
        return Ok(s.into());
    }
    Ok(s.replace(from.as_ref(), &text(a[2])).into())
}

fn split_helper(a: &[&Json]) -> Result<Json, String> {
    let (s, sep) = (text(a[0]), text(a[1]));
    let parts: Vec<Json> = if sep.is_empty() {
        s.chars().map(|c| Json::String(c.to_string())).collect()
    } else {
        s.split(sep.as_ref()).map(Json::from).collect()
    };
    Ok(Json::Array(parts))
}

fn join_helper(a: &[&Json]) -> Result<Json, String> {
    let sep = text(a[1]);
    let joined = match a[0] {
        Json::Array(items) => items
            .iter()
            .map(|v| match v {
                Json::String(s) => Cow::Borrowed(s.as_str()),
                other => Cow::Owned(other.to_string()),
            })
            .collect::<Vec<_>>()
            .join(&sep),
        other => text(other).into_owned(),
    };
    Ok(joined.into())
}

fn first_or_last(v: &Json, first: bool) -> Json {
    let item = v.as_array().and_then(|a| if first { a.first() } else { a.last() });
    item.cloned().unwrap_or(Json::Null)
}

/// Patterns may come from payload data: the compiled size is capped.
fn build_regex(pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(pattern).size_limit(1 << 20).build().map_err(|e| format!("invalid pattern: {e}"))
}

fn regex_capture_helper(a: &[&Json], literals: &Literals) -> Result<Json, String> {
    let pattern = text(a[1]);
    let compiled;
    let re = match literals.regexes.get(pattern.as_ref()) {
        Some(re) => re,
        None => {
            compiled = build_regex(&pattern)?;
            &compiled
        }
    };
    let s = text(a[0]);
    let group = a.get(2).copied().unwrap_or(&Json::Null);
    let caps = re.captures(&s);
    let found = match group {
        Json::Null => caps.and_then(|c| c.get(0)),
        Json::String(name) if name.parse::<usize>().is_err() => {
            if !re.capture_names().any(|n| n == Some(name.as_str())) {
                return Err(format!("pattern has no group named {name:?}"));
            }
            caps.and_then(|c| c.name(name))
        }
        other => {
            let idx = count(other, "group")?;
            if idx >= re.captures_len() {
                return Err(format!("pattern has no group {idx}"));
            }
            caps.and_then(|c| c.get(idx))
        }
    };
    Ok(found.map_or("", |m| m.as_str()).into())
}

fn jsonpath_helper(a: &[&Json], literals: &Literals) -> Result<Json, String> {
    let given = text(a[1]);
    let parsed;
    let path = match literals.paths.get(given.as_ref()) {
        Some(path) => path,
        None => {
            parsed = JsonPath::parse(&given).map_err(|e| format!("invalid path: {e}"))?;
            &parsed
        }
    };
    Ok(match path.query(a[0]).all().as_slice() {
        [] => Json::Null,
        [one] => (*one).clone(),
        many => Json::Array(many.iter().map(|v| (*v).clone()).collect()),
    })
}

/// Standard alphabet, but padding is optional: senders often strip it.
const BASE64_LENIENT: GeneralPurpose =
    GeneralPurpose::new(&alphabet::STANDARD, GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent));

fn base64_decode_helper(a: &[&Json]) -> Result<Json, String> {
    let bytes = BASE64_LENIENT.decode(text(a[0]).trim().as_bytes()).map_err(|e| format!("invalid base64: {e}"))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned().into())
}

fn sha256_helper(a: &[&Json]) -> Result<Json, String> {
    let digest = Sha256::digest(text(a[0]).as_bytes());
    let mut hex = String::with_capacity(64);
    for b in digest.iter() {
        // Writing to a String cannot fail.
        let _ = write!(hex, "{b:02x}");
    }
    Ok(hex.into())
}

fn strftime(t: &DateTime<FixedOffset>, format: &str) -> Result<String, String> {
    // `to_string` would panic on a bad specifier; `write!` reports it instead.
    let mut out = String::new();
    write!(out, "{}", t.format(format)).map_err(|_| format!("invalid format {format:?}"))?;
    Ok(out)
}

fn now_helper(a: &[&Json]) -> Result<Json, String> {
    let now = Utc::now();
    match a.first().map(|v| text(v)).as_deref() {
        None | Some("") => Ok(now.to_rfc3339_opts(SecondsFormat::Secs, true).into()),
        Some("unix") => Ok(now.timestamp().into()),
        Some("unix_ms") => Ok(now.timestamp_millis().into()),
        Some(format) => strftime(&now.fixed_offset(), format).map(Json::from),
    }
}

fn date_helper(a: &[&Json]) -> Result<Json, String> {
    let t = parse_timestamp(a[0]).ok_or_else(|| format!("unrecognised timestamp {}", a[0]))?;
    strftime(&t, &text(a[1])).map(Json::from)
}

fn parse_timestamp(v: &Json) -> Option<DateTime<FixedOffset>> {
    let millis = match v {
        Json::Number(n) => match n.as_i64() {
            Some(i) if i.unsigned_abs() > MILLIS_THRESHOLD => Some(i),
            Some(i) => i.checked_mul(1000),
            // Saturating float casts turn absurd values into out-of-range errors below.
            None => n.as_f64().map(|f| if f.abs() > MILLIS_THRESHOLD as f64 { f } else { f * 1000.0 } as i64),
        },
        Json::String(s) => return parse_timestamp_str(s.trim()),
        _ => None,
    };
    Some(DateTime::from_timestamp_millis(millis?)?.fixed_offset())
}

fn parse_timestamp_str(s: &str) -> Option<DateTime<FixedOffset>> {
    if let Ok(n) = s.parse::<i64>() {
        return parse_timestamp(&n.into());
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t);
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f %z"] {
        if let Ok(t) = DateTime::parse_from_str(s, format) {
            return Some(t);
        }
    }
    let naive = s.strip_suffix(" UTC").unwrap_or(s);
    ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(naive, f).ok())
        .map(|t| t.and_utc().fixed_offset())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(src: &str, escape: Escape, strict: bool, data: Json) -> Result<String, TemplateError> {
        let mut engine = TemplateEngine::new();
        let id = engine.compile(src, escape, strict)?;
        engine.render(&id, &Context::from(data))
    }

    fn plain(src: &str, data: Json) -> String {
        render(src, Escape::Plain, false, data).unwrap()
    }

    fn render_error(src: &str, data: Json) -> String {
        match render(src, Escape::Plain, false, data) {
            Err(TemplateError::Render { message, .. }) => message,
            other => panic!("expected render error for {src}, got {other:?}"),
        }
    }

    #[test]
    fn text_without_expressions_renders_as_handlebars_renders_it() {
        let texts =
            ["", "plain", "a } b { c }} d", "\\{{escaped}}", "https://h/p?q=1&r=%20#f", "中文 🚀\n\t\\", "{{! comment }}x", "x{{y}}"];
        for escape in Escape::ALL {
            for text in texts {
                let mut engine = TemplateEngine::new();
                let id = engine.compile(text, escape, false).unwrap();
                let data = Context::from(json!({"y": "<&>"}));
                let handlebars = engine.registries[id.registry].render_with_context(&engine.names[id.index], &data).unwrap();
                assert_eq!(engine.render(&id, &data).unwrap(), handlebars, "{text:?} ({escape:?})");
            }
        }
        let mut engine = TemplateEngine::new();
        let fixed = engine.compile("https://example.com/hook", Escape::UrlPath, true).unwrap();
        let templated = engine.compile("https://example.com/{{y}}", Escape::UrlPath, true).unwrap();
        assert_eq!(engine.fixed_text(&fixed), Some("https://example.com/hook"));
        assert_eq!(engine.fixed_text(&templated), None);
    }

    #[test]
    fn json_escape_round_trips_hostile_string() {
        let hostile = "quo\"te\\ back\nnew\ttab 🚀 中文 </script>\u{0}\u{1f}\u{7f}";
        let out = render(r#"{"t":"{{x}}"}"#, Escape::Json, false, json!({"x": hostile})).unwrap();
        let parsed: Json = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed["t"], hostile);
        assert!(out.contains("🚀 中文 </script>"));
        for c in (0..0x80u8).map(char::from).chain(['é', '\u{2028}', '😀']) {
            let s = c.to_string();
            let quoted = serde_json::to_string(&s).unwrap();
            assert_eq!(json_escape(&s), quoted[1..quoted.len() - 1], "char {c:?}");
        }
    }

    #[test]
    fn json_helper_writes_raw_json() {
        let data = json!({"body": {"commits": [{"id": "a\"1", "n": 1}], "s": "x<y"}});
        let src = r#"{"commits": {{json body.commits}}, "s": {{json body.s}}, "m": {{json nope}}}"#;
        let out = render(src, Escape::Json, false, data.clone()).unwrap();
        assert_eq!(out, r#"{"commits": [{"id":"a\"1","n":1}], "s": "x<y", "m": null}"#);
        assert_eq!(render("{{{json body.s}}}", Escape::UrlPath, false, data).unwrap(), r#""x<y""#);
        assert_eq!(plain("{{upper (json x)}}", json!({"x": {"a": 1}})), r#"{"A":1}"#);
        assert!(render_error("{{json}}", json!({})).contains("expects 1"));
    }

    #[test]
    fn missing_values_and_strict_mode() {
        assert_eq!(plain("[{{nope}}][{{a.b.c}}][{{upper nope}}]", json!({"a": 1})), "[][][]");
        for src in ["{{nope}}", "{{json nope}}", "{{upper nope}}", "{{default x nope}}"] {
            let err = render(src, Escape::Json, true, json!({"x": null})).unwrap_err();
            assert!(matches!(err, TemplateError::Render { .. }), "{src}: {err:?}");
        }
        let ok = render("{{default nope \"fb\"}}{{x}}", Escape::Plain, true, json!({"x": 1}));
        assert_eq!(ok.unwrap(), "fb1");
    }

    #[test]
    fn escape_kinds() {
        let data = json!({"x": "a b/c?d", "h": "<&\"é"});
        assert_eq!(render("{{x}}", Escape::UrlPath, false, data.clone()).unwrap(), "a%20b%2Fc%3Fd");
        assert_eq!(render("{{h}}", Escape::UrlPath, false, data.clone()).unwrap(), "%3C%26%22%C3%A9");
        assert_eq!(render("{{h}}", Escape::Plain, false, data.clone()).unwrap(), "<&\"é");
        assert_eq!(render("{{h}}", Escape::Json, false, data.clone()).unwrap(), "<&\\\"é");
        for escape in Escape::ALL {
            assert_eq!(render("{{{x}}}", escape, false, data.clone()).unwrap(), "a b/c?d");
        }
        let safe = render("{{lower x}}-_.~", Escape::UrlPath, false, json!({"x": "Az09-_.~"}));
        assert_eq!(safe.unwrap(), "az09-_.~-_.~");
    }

    #[test]
    fn builtin_helpers() {
        let data = json!({"a": 1, "b": 2, "s": "x", "l": [1, 2, 3], "o": {"k": "v"}, "key": "k"});
        let src = "{{#if (and (lt a b) (gt b a) (not (eq a b)) (ne a b) (or false s))}}y{{else}}n{{/if}}\
                   {{len l}}{{#with o}}{{k}}{{/with}}{{lookup o key}}{{#each l}}{{@index}}={{this}};{{/each}}";
        assert_eq!(plain(src, data), "y3vv0=1;1=2;2=3;");
        let commits = json!({"body": {"commits": [{"id": "c1"}, {"id": "c2"}]}});
        assert_eq!(plain("{{#each body.commits}}{{this.id}},{{/each}}", commits), "c1,c2,");
    }

    #[test]
    fn string_helpers() {
        let data = json!({"s": "  Héllo Wörld  ", "e": "", "n": null, "num": 12, "arr": ["x", 1, null, {"k": true}]});
        let cases = [
            ("{{default n \"fb\"}}|{{default e \"fb\"}}|{{default s \"fb\"}}|{{default num 0}}", "fb|fb|  Héllo Wörld  |12"),
            ("{{upper s}}|{{lower s}}|{{trim s}}|{{upper num}}|{{upper true}}", "  HÉLLO WÖRLD  |  héllo wörld  |Héllo Wörld|12|TRUE"),
            ("{{truncate (trim s) 4}}|{{truncate \"🚀中文\" 2}}|{{truncate \"ab\" 10}}|{{truncate num \"1\"}}", "Héll|🚀中|ab|1"),
            ("{{replace \"a.b.c\" \".\" \"::\"}}|{{replace \"abc\" \"\" \"x\"}}|{{replace \"a+b\" \"+\" num}}", "a::b::c|abc|a12b"),
            ("{{json (split \"a,b,,c\" \",\")}}|{{json (split \"ab\" \"\")}}", r#"["a","b","","c"]|["a","b"]"#),
            ("{{join (split \"a/b\" \"/\") \" - \"}}|{{join arr \",\"}}", r#"a - b|x,1,null,{"k":true}"#),
            ("{{upper (first (split \"refs/heads/main\" \"/\"))}}|{{last (split \"refs/heads/main\" \"/\")}}", "REFS|main"),
            ("{{json (first n)}}{{json (last (split \"\" \"x\"))}}{{json (first e)}}", r#"null""null"#),
            ("{{base64 \"hi there\"}}|{{base64_decode \"aGkgdGhlcmU=\"}}|{{base64_decode \"aGk\"}}", "aGkgdGhlcmU=|hi there|hi"),
            (
                "{{urlencode \"a b&c=d/é\"}}|{{sha256 \"abc\"}}",
                "a%20b%26c%3Dd%2F%C3%A9|ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            ),
        ];
        for (src, expected) in cases {
            assert_eq!(plain(src, data.clone()), expected, "{src}");
        }
        assert!(render_error("{{truncate \"a\" -1}}", json!({})).starts_with("truncate: length must be"));
        assert!(render_error("{{base64_decode \"!!\"}}", json!({})).starts_with("base64_decode: invalid base64"));
        assert!(render_error("{{upper \"a\" \"b\"}}", json!({})).contains("expects 1 argument(s), got 2"));
    }

    #[test]
    fn regex_and_jsonpath() {
        let data = json!({"r": "refs/tags/v1.2.3", "body": {"items": [{"id": 1}, {"id": 2}], "one": {"id": 3}}});
        let src = r#"{{regex_capture r "v(\\d+)\\.(\\d+)" 2}}|{{regex_capture r "v(?<major>\\d+)" "major"}}|{{regex_capture r "^v" 0}}|{{regex_capture r "tags/(.*)"}}"#;
        assert_eq!(plain(src, data.clone()), "2|1||tags/v1.2.3");
        let src = r#"{{json (jsonpath body "$.items[*].id")}}|{{json (jsonpath body "$.one.id")}}|{{json (jsonpath body "$.zzz")}}"#;
        assert_eq!(plain(src, data), "[1,2]|3|null");
        assert!(render_error(r#"{{regex_capture "a" "(" 1}}"#, json!({})).contains("invalid pattern"));
        assert!(render_error(r#"{{regex_capture "a" "(a)" 2}}"#, json!({})).contains("no group 2"));
        assert!(render_error(r#"{{regex_capture "a" "(a)" "x"}}"#, json!({})).contains("no group named"));
        assert!(render_error(r#"{{jsonpath body "$[?"}}"#, json!({})).starts_with("jsonpath: invalid path"));
        // Literal patterns and paths are compiled with the template, once per engine.
        let mut engine = TemplateEngine::new();
        engine
            .compile(
                r#"{{regex_capture (lower r) "v(\\d+)" 1}}{{json (jsonpath body "$.items[*].id")}}{{regex_capture r body.p}}"#,
                Escape::Plain,
                false,
            )
            .unwrap();
        let literals = engine.literals.read().unwrap();
        assert_eq!(literals.regexes.keys().collect::<Vec<_>>(), ["v(\\d+)"]);
        assert_eq!(literals.paths.keys().collect::<Vec<_>>(), ["$.items[*].id"]);
    }

    #[test]
    fn time_helpers() {
        let now = plain("{{now}}", json!({}));
        let parsed = DateTime::parse_from_rfc3339(&now).unwrap();
        assert!(now.ends_with('Z') && now.len() == 20, "{now}");
        assert!((Utc::now().timestamp() - parsed.timestamp()).abs() < 5);
        let unix: i64 = plain("{{now \"unix\"}}", json!({})).parse().unwrap();
        let ms: i64 = plain("{{now \"unix_ms\"}}", json!({})).parse().unwrap();
        assert!((ms / 1000 - unix).abs() < 5);
        assert_eq!(plain("{{now \"%Y\"}}", json!({})), Utc::now().format("%Y").to_string());
        let data = json!({"ts": "2024-03-05T10:20:30+02:00", "gl": "2024-03-05 10:20:30 UTC", "s": 1709634030, "ms": 1709634030123_i64});
        let cases = [
            ("{{date ts \"%Y-%m-%d %H:%M %z\"}}", "2024-03-05 10:20 +0200"),
            ("{{date gl \"%d/%m/%Y %H:%M:%S %Z\"}}", "05/03/2024 10:20:30 +00:00"),
            ("{{date s \"%+\"}}|{{date ms \"%H:%M:%S%.3f\"}}", "2024-03-05T10:20:30+00:00|10:20:30.123"),
            ("{{date \"2024-03-05T10:20:30Z\" \"%s\"}}|{{date \"2024-03-05 10:20:30\" \"%s\"}}", "1709634030|1709634030"),
            ("{{date \"2024-03-05T10:20:30+0100\" \"%H %z\"}}|{{date \"1709634030\" \"%F\"}}", "10 +0100|2024-03-05"),
            ("{{date 1709634030.5 \"%s%.3f\"}}", "1709634030.500"),
        ];
        for (src, expected) in cases {
            assert_eq!(plain(src, data.clone()), expected, "{src}");
        }
        assert!(render_error("{{date \"yesterday\" \"%F\"}}", json!({})).contains("unrecognised timestamp"));
        assert!(render_error("{{date 0 \"%Q\"}}", json!({})).contains("invalid format"));
        assert!(render_error("{{now \"%Q\"}}", json!({})).contains("invalid format"));
    }

    #[test]
    fn compile_errors_report_position() {
        let mut engine = TemplateEngine::new();
        let err = engine.compile("line one\n  {{#if x}}oops", Escape::Json, false).unwrap_err();
        let TemplateError::Compile { line, column, .. } = &err else { panic!("{err:?}") };
        assert_eq!((*line, *column), (2, 16), "{err}");
        assert!(err.to_string().starts_with("template syntax error at line 2, column 16: "));
        for src in ["{{> t0}}", "a\n{{#if x}}{{#> layout}}b{{/layout}}{{/if}}", "{{#*inline \"p\"}}x{{/inline}}"] {
            let err = engine.compile(src, Escape::Plain, false).unwrap_err();
            assert!(matches!(err, TemplateError::Compile { .. }), "{src}: {err:?}");
        }
        let err = engine.compile("a\n{{#if x}}\n{{else}} {{> p}}{{/if}}", Escape::Plain, false).unwrap_err();
        assert_eq!(err.to_string(), "template syntax error at line 3, column 10: partials and decorators are not supported");
    }

    #[test]
    fn render_errors_and_sandbox() {
        let err = render("ok\n{{upper 1 2}}", Escape::Plain, false, json!({})).unwrap_err();
        assert_eq!(err, TemplateError::Render { message: "upper: expects 1 argument(s), got 2".into(), line: Some(2), column: Some(1) });
        assert_eq!(err.to_string(), "render error at line 2, column 1: upper: expects 1 argument(s), got 2");
        assert!(render("{{env \"HOME\"}}", Escape::Plain, false, json!({})).is_err());
        assert!(render("{{log body level=\"error\"}}", Escape::Plain, false, json!({"body": "secret"})).is_err(), "no `log` helper");
        let other = TemplateEngine::new();
        let id = TemplateEngine::new().compile("x", Escape::Plain, false).unwrap();
        assert_eq!(other.render(&id, &Context::from(json!({}))), Err(render_err("unknown template id")));
    }

    #[test]
    fn engine_is_shared_across_threads() {
        let mut engine = TemplateEngine::default();
        let json_id = engine.compile(r#"{"r":"{{body.r}}"}"#, Escape::Json, true).unwrap();
        let path_id = engine.compile("/{{body.r}}", Escape::UrlPath, false).unwrap();
        let ctx = Context::from(json!({"body": {"r": "a/b \"c\""}}));
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    assert_eq!(engine.render(&json_id, &ctx).unwrap(), r#"{"r":"a/b \"c\""}"#);
                    assert_eq!(engine.render(&path_id, &ctx).unwrap(), "/a%2Fb%20%22c%22");
                });
            }
        });
    }
}

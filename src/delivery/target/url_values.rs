//! The rule that a target's URL parts written with a placeholder may not render empty:
//! a CI trigger sent with `?branch=` starts a real pipeline with the wrong parameters.

/// The path segments and query values of a target's URL (its template, then its `query:`
/// entries) that are written with a placeholder and so may not render empty. One whose
/// placeholder calls `default` may: its author chose the fallback.
#[derive(Debug, Default)]
pub struct UrlValues {
    /// Each path segment of the template: its source when it is checked.
    path: Vec<Option<String>>,
    /// Each query pair: its name, and the value's source when it is checked.
    query: Vec<(String, Option<String>)>,
    /// A raw placeholder can write URL structure: parts are judged without the template's
    /// positions (see [`UrlValues::empty_part`]).
    raw: bool,
    /// Query names the template itself writes with an empty value (`?flag=`).
    literal_empty: Vec<String>,
}

/// Stands for one `{{…}}` in a template's skeleton.
const PLACEHOLDER: char = '\u{0}';
const DEFAULTED: char = '\u{1}';
/// A `{{{…}}}`: inserted unescaped, it may bring `/`, `?`, `&` and `=` of its own.
const RAW: char = '\u{2}';

impl UrlValues {
    /// The parts of the URL template `source` (absolute, or an `upstream:` path).
    pub fn of(source: &str) -> UrlValues {
        let (skeleton, expressions) = skeleton(source);
        let mut expressions = expressions.into_iter();
        let mut source_of = |part: &str| {
            let text: String = part
                .chars()
                .map(|c| match c {
                    PLACEHOLDER | DEFAULTED | RAW => expressions.next().unwrap_or_default(),
                    c => c.to_string(),
                })
                .collect();
            (part.contains(PLACEHOLDER) || part.contains(RAW)).then_some(text)
        };
        let (path, query) = parts(&skeleton);
        let literal_empty = query
            .iter()
            .filter(|(name, value)| value.is_empty() && !name.contains([PLACEHOLDER, DEFAULTED, RAW]))
            .map(|(name, _)| name.to_string())
            .collect();
        let path = path.iter().map(|segment| source_of(segment)).collect();
        let query = query
            .iter()
            .map(|(name, value)| {
                let name = source_of(name).unwrap_or_else(|| name.replace(DEFAULTED, "{{…}}"));
                (name, source_of(value))
            })
            .collect();
        UrlValues { path, query, raw: skeleton.contains(RAW), literal_empty }
    }

    /// A `query:` entry, appended after the template's own query.
    pub fn push_query(&mut self, name: &str, value_source: &str) {
        let (skeleton, _) = skeleton(value_source);
        let checked = skeleton.contains(PLACEHOLDER) || skeleton.contains(RAW);
        if !checked && value_source.is_empty() {
            self.literal_empty.push(name.to_string());
        }
        self.query.push((name.to_string(), checked.then(|| value_source.to_string())));
    }

    /// Why the URL as it will be sent breaks the rule, if it does. Its path may start with
    /// the upstream's base path: the template's segments are its last ones. When the
    /// rendered parts do not line up with the template's (a raw `{{{…}}}` wrote `/`, `?`,
    /// `&` or `=`), every empty query value and every empty path segment but a trailing
    /// one is refused, except query values the template itself writes empty.
    pub fn empty_part(&self, url: &str) -> Option<String> {
        let (path, query) = parts(url);
        let aligned = !self.raw && query.len() == self.query.len() && path.len() >= self.path.len();
        if !aligned {
            return self.empty_unaligned(&path, &query);
        }
        let offset = path.len() - self.path.len();
        let empty = self.path.iter().zip(&path[offset..]).find_map(|(source, segment)| source.as_ref().filter(|_| segment.is_empty()));
        if let Some(source) = empty {
            return Some(format!("the path segment `{source}` rendered empty"));
        }
        for ((name, source), (rendered_name, value)) in self.query.iter().zip(&query) {
            match source {
                Some(source) if value.is_empty() => return Some(format!("the query value `{name}` (`{source}`) rendered empty")),
                _ if rendered_name.is_empty() && name.contains("{{") => return Some(format!("the query name `{name}` rendered empty")),
                _ => {}
            }
        }
        None
    }

    fn empty_unaligned(&self, path: &[&str], query: &[(&str, &str)]) -> Option<String> {
        let templated = self.path.iter().any(Option::is_some) || self.query.iter().any(|(_, source)| source.is_some());
        if !templated {
            return None;
        }
        let inner = path.len().saturating_sub(1);
        if path[..inner].iter().any(|segment| segment.is_empty()) {
            return Some("the URL rendered with an empty path segment (`//`)".to_string());
        }
        let empty = query.iter().find(|(name, value)| value.is_empty() && !self.literal_empty.iter().any(|literal| literal == name));
        empty.map(|(name, _)| format!("the query value `{name}` rendered empty"))
    }
}

/// The explanation that follows every empty-value error.
pub const EMPTY_VALUE_HELP: &str = "(a missing value, null, \"\" or a capture that did not match); \
     give a default ({{default body.x \"main\"}}) or set `strict: false` on the target to send it empty";

/// `source` with each `{{…}}` (or `{{{…}}}`) replaced by one marker ([`DEFAULTED`] when it
/// calls `default`, [`RAW`] for `{{{…}}}`, else [`PLACEHOLDER`]) so that the URL's own separators can be found,
/// and the expressions replaced, in order.
fn skeleton(source: &str) -> (String, Vec<String>) {
    let mut out = String::with_capacity(source.len());
    let mut expressions = Vec::new();
    let mut rest = source;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let inner = &rest[start..];
        let Some(end) = inner.find("}}") else {
            out.push_str(inner);
            return (out, expressions);
        };
        let end = end + 2 + usize::from(inner[end + 2..].starts_with('}'));
        let expression = &inner[..end];
        let defaulted = expression.split(|c: char| !c.is_alphanumeric() && c != '_').any(|word| word == "default");
        out.push(if defaulted {
            DEFAULTED
        } else if expression.starts_with("{{{") {
            RAW
        } else {
            PLACEHOLDER
        });
        expressions.push(expression.to_string());
        rest = &inner[end..];
    }
    out.push_str(rest);
    (out, expressions)
}

type Parts<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>);

/// The path segments and query pairs of a URL (or of a path with an optional query).
fn parts(url: &str) -> Parts<'_> {
    let url = url.trim();
    let url = url.split_once('#').map_or(url, |(before, _)| before);
    let after_authority = match url.find("://") {
        Some(scheme_end) => {
            let rest = &url[scheme_end + 3..];
            rest.find(['/', '?']).map_or("", |at| &rest[at..])
        }
        None => url,
    };
    let (path, query) = after_authority.split_once('?').unwrap_or((after_authority, ""));
    let path = path.strip_prefix('/').unwrap_or(path);
    let segments = if path.is_empty() { Vec::new() } else { path.split('/').collect() };
    let pairs =
        if query.is_empty() { Vec::new() } else { query.split('&').map(|pair| pair.split_once('=').unwrap_or((pair, ""))).collect() };
    (segments, pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_placeholders_are_found_and_named() {
        let mut values = UrlValues::of("https://ci.example/{{body.project}}/trigger?branch={{body.ref}}&token=abc&x=");
        values.push_query("kind", "{{event}}");
        values.push_query("fixed", "");
        let sent = |query: &str| values.empty_part(&format!("https://ci.example/p/trigger?{query}"));
        assert_eq!(sent("branch=main&token=abc&x=&kind=push&fixed="), None, "literal empty values are the author's");
        assert_eq!(sent("branch=&token=abc&x=&kind=push&fixed=").unwrap(), "the query value `branch` (`{{body.ref}}`) rendered empty");
        assert_eq!(sent("branch=main&token=abc&x=&kind=&fixed=").unwrap(), "the query value `kind` (`{{event}}`) rendered empty");
        let path = values.empty_part("https://ci.example//trigger?branch=main&token=abc&x=&kind=push&fixed=");
        assert_eq!(path.unwrap(), "the path segment `{{body.project}}` rendered empty");
    }

    #[test]
    fn an_upstream_path_is_the_tail_of_the_sent_path() {
        let values = UrlValues::of("/builds/{{body.id}}");
        assert_eq!(values.empty_part("http://svc/base/builds/").unwrap(), "the path segment `{{body.id}}` rendered empty");
        assert_eq!(values.empty_part("http://svc/base/builds/7"), None);
    }

    #[test]
    fn a_default_may_render_empty() {
        let defaulted = UrlValues::of("https://h/x?tag={{default body.tag \"\"}}&b={{body.b}}");
        assert_eq!(defaulted.empty_part("https://h/x?tag=&b=1"), None);
        assert_eq!(defaulted.empty_part("https://h/x?tag=&b=").unwrap(), "the query value `b` (`{{body.b}}`) rendered empty");
        let named = UrlValues::of("https://h/x?{{body.name}}=1");
        assert_eq!(named.empty_part("https://h/x?=1").unwrap(), "the query name `{{body.name}}` rendered empty");
    }

    #[test]
    fn raw_placeholders_are_judged_on_what_they_rendered() {
        // A raw base that brings its own query: the empty value it carries is refused.
        let base = UrlValues::of("{{{body.base}}}{{body.empty}}");
        assert_eq!(base.empty_part("http://h/esc?ref=").unwrap(), "the query value `ref` rendered empty");
        // …but a base ending in `/` is a legitimate URL.
        assert_eq!(UrlValues::of("{{{vars.base}}}").empty_part("http://h/trail/"), None);
        assert_eq!(UrlValues::of("http://h/a/{{{body.sub}}}").empty_part("http://h/a/b/"), None);
        let inner = UrlValues::of("http://h/a/{{{body.slash}}}/c");
        assert_eq!(inner.empty_part("http://h/a///c").unwrap(), "the URL rendered with an empty path segment (`//`)");
        let amp = UrlValues::of("https://h/x?b={{{body.amp}}}&flag=");
        assert_eq!(amp.empty_part("https://h/x?b=&x=&flag=").unwrap(), "the query value `b` rendered empty");
        assert_eq!(amp.empty_part("https://h/x?b=1&x=2&flag="), None, "the template's own `flag=` stays");
    }
}

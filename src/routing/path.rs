//! Path patterns: exact (`/hooks/gitlab`), `{name}` segments captured into `params.name`,
//! and a trailing `/*` capturing the rest as `params.rest`. Trailing slashes never matter.

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(String),
    Param(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct PathPattern {
    segments: Vec<Segment>,
    rest: bool,
    source: String,
}

pub type Params = Vec<(String, String)>;

impl PathPattern {
    pub fn parse(pattern: &str) -> Result<PathPattern, String> {
        if !pattern.starts_with('/') {
            return Err(format!("path {pattern:?} must start with '/'"));
        }
        let mut parts: Vec<&str> = split_segments(pattern).collect();
        let rest = parts.last() == Some(&"*");
        if rest {
            parts.pop();
        }
        let mut segments = Vec::with_capacity(parts.len());
        for part in parts {
            if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!("bad parameter {part:?} in path {pattern:?}: use {{name}} with letters, digits or _"));
                }
                if name == "rest" && rest {
                    return Err(format!("parameter name `rest` is taken by the trailing /* in {pattern:?}"));
                }
                segments.push(Segment::Param(name.to_string()));
            } else if part.contains(['{', '}', '*']) {
                return Err(format!("bad segment {part:?} in path {pattern:?}: a segment is literal, {{name}}, or a final *"));
            } else {
                segments.push(Segment::Literal(part.to_string()));
            }
        }
        Ok(PathPattern { segments, rest, source: pattern.to_string() })
    }

    /// The lookup key of a pattern with no `{param}` and no `/*`, as [`normalize`] gives it.
    pub fn literal_key(&self) -> Option<String> {
        if self.rest || self.segments.iter().any(|s| matches!(s, Segment::Param(_))) {
            return None;
        }
        let parts: Vec<&str> =
            self.segments.iter().filter_map(|s| if let Segment::Literal(l) = s { Some(l.as_str()) } else { None }).collect();
        Some(format!("/{}", parts.join("/")))
    }

    /// A request path as literal patterns are keyed: empty segments (and so trailing
    /// slashes) dropped, compared as sent.
    pub fn normalize(path: &str) -> String {
        let mut key = String::with_capacity(path.len() + 1);
        for segment in split_segments(path) {
            key.push('/');
            key.push_str(segment);
        }
        if key.is_empty() {
            key.push('/');
        }
        key
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Captures on a match. Segments are compared as sent (not percent-decoded), and
    /// captured values are percent-decoded.
    pub fn matches(&self, path: &str) -> Option<Params> {
        let mut params = Params::new();
        let mut parts = split_segments(path);
        for segment in &self.segments {
            let part = parts.next()?;
            match segment {
                Segment::Literal(literal) => {
                    if literal != part {
                        return None;
                    }
                }
                Segment::Param(name) => params.push((name.clone(), decode(part))),
            }
        }
        if self.rest {
            let remaining: Vec<&str> = parts.collect();
            params.push(("rest".to_string(), decode(&remaining.join("/"))));
        } else if parts.next().is_some() {
            return None;
        }
        Some(params)
    }
}

fn split_segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|segment| !segment.is_empty())
}

fn decode(part: &str) -> String {
    percent_encoding::percent_decode_str(part).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pattern: &str, path: &str) -> Option<Params> {
        PathPattern::parse(pattern).unwrap().matches(path)
    }

    #[test]
    fn exact_params_and_rest() {
        assert_eq!(params("/hooks/gitlab", "/hooks/gitlab/"), Some(vec![]));
        assert_eq!(params("/hooks/gitlab", "/hooks/gitlab/x"), None);
        assert_eq!(params("/hooks/gitlab", "/hooks"), None);
        assert_eq!(params("/hooks/{project}", "/hooks/demo%20x"), Some(vec![("project".into(), "demo x".into())]));
        assert_eq!(params("/a/*", "/a/b/c"), Some(vec![("rest".into(), "b/c".into())]));
        assert_eq!(params("/a/*", "/a"), Some(vec![("rest".into(), "".into())]));
        assert_eq!(params("/", "/"), Some(vec![]));
        assert_eq!(params("/", "/x"), None);
    }

    #[test]
    fn literal_patterns_have_lookup_keys_matching_normalized_paths() {
        let key = |pattern: &str| PathPattern::parse(pattern).unwrap().literal_key();
        assert_eq!(key("/hooks/gitlab/"), Some("/hooks/gitlab".to_string()));
        assert_eq!(key("/"), Some("/".to_string()));
        assert_eq!(key("/hooks/{p}"), None);
        assert_eq!(key("/hooks/*"), None);
        assert_eq!(PathPattern::normalize("/hooks//gitlab/"), "/hooks/gitlab");
        assert_eq!(PathPattern::normalize(""), "/");
    }

    #[test]
    fn rejects_bad_patterns() {
        assert!(PathPattern::parse("hooks").is_err());
        assert!(PathPattern::parse("/a/{}").is_err());
        assert!(PathPattern::parse("/a/x*").is_err());
        assert!(PathPattern::parse("/a/{rest}/*").is_err());
    }
}

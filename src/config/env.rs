//! `${VAR}` and `${VAR:-default}` expansion of config strings, from the environment at
//! load time. Works on the parsed YAML tree (not the text) so that positions stay right
//! and a value can never inject YAML structure.

use serde_yaml::Value;

/// Looks a variable up; a function so tests need not touch the process environment.
pub trait Lookup {
    fn get(&self, name: &str) -> Option<String>;
}

pub struct ProcessEnv;

impl Lookup for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// One expansion failure, with the YAML path of the string that held it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpandError {
    pub path: String,
    pub message: String,
}

/// What one file's expansion did: the failures, and the original text of every string that
/// held a `${VAR}` (by YAML path), so the compile knows which values came from the
/// environment and treats them as credentials where they land in headers or queries.
#[derive(Debug, Default)]
pub struct Expansion {
    pub errors: Vec<ExpandError>,
    /// Every string that held a `${VAR}`, by YAML path.
    pub expanded: std::collections::HashMap<String, FromEnv>,
}

/// Expands every string scalar under `value` in place, collecting every failure. Expanded
/// values stay strings: a secret that happens to look like a number must never change
/// type (and end up quoted in a type error).
pub fn expand_tree(value: &mut Value, path: &str, env: &dyn Lookup, expansion: &mut Expansion) {
    match value {
        Value::String(text) => {
            if !text.contains("${") {
                return;
            }
            match expand_with_values(text, env) {
                Ok((expanded, values)) => {
                    let original = std::mem::replace(text, expanded);
                    if *text != original {
                        expansion.expanded.insert(path.to_string(), FromEnv { original, values });
                    }
                }
                Err(message) => expansion.errors.push(ExpandError { path: path.to_string(), message }),
            }
        }
        Value::Sequence(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                expand_tree(item, &format!("{path}[{index}]"), env, expansion);
            }
        }
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                let key_text = match key {
                    Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other).unwrap_or_default().trim().to_string(),
                };
                let child = if path.is_empty() { key_text } else { format!("{path}.{key_text}") };
                expand_tree(item, &child, env, expansion);
            }
        }
        Value::Tagged(tagged) => expand_tree(&mut tagged.value, path, env, expansion),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Expands one string. `$${` writes a literal `${`.
pub fn expand_str(text: &str, env: &dyn Lookup) -> Result<String, String> {
    expand_with_values(text, env).map(|(expanded, _)| expanded)
}

/// A string that held `${VAR}`s: its text as written and the values put into it.
#[derive(Debug, Clone, Default)]
pub struct FromEnv {
    pub original: String,
    pub values: Vec<Substituted>,
}

/// A value a `${VAR}` put into a string.
#[derive(Debug, Clone, PartialEq)]
pub struct Substituted {
    /// The variable's name.
    pub name: String,
    pub value: String,
    /// The reference opened the string (`${BASE}/path`): a base URL rather than a credential.
    pub at_start: bool,
}

/// Expands one string and says which values were substituted where.
pub fn expand_with_values(text: &str, env: &dyn Lookup) -> Result<(String, Vec<Substituted>), String> {
    let mut substituted = Vec::new();
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        if rest[..start].ends_with('$') {
            out.push_str(&rest[..start - 1]);
            out.push_str("${");
            rest = &rest[start + 2..];
            continue;
        }
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("unclosed `${{` in {text:?}"));
        };
        let reference = &after[..end];
        let (name, default) = match reference.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (reference, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("bad variable name {name:?} in `${{{reference}}}`"));
        }
        let at_start = out.is_empty();
        let value = match env.get(name) {
            Some(found) => found,
            None => match default {
                Some(default) => default.to_string(),
                None => return Err(format!("environment variable {name} is not set and has no default (write ${{{name}:-default}})")),
            },
        };
        out.push_str(&value);
        if !value.is_empty() {
            substituted.push(Substituted { name: name.to_string(), value, at_start });
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok((out, substituted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Fixed(HashMap<&'static str, &'static str>);
    impl Lookup for Fixed {
        fn get(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|v| v.to_string())
        }
    }

    fn env() -> Fixed {
        Fixed(HashMap::from([("TOKEN", "s3cr3t"), ("N", "5"), ("EMPTY", "")]))
    }

    #[test]
    fn expands_defaults_and_literals() {
        assert_eq!(expand_str("a ${TOKEN} b", &env()).unwrap(), "a s3cr3t b");
        assert_eq!(expand_str("${MISSING:-x:y}", &env()).unwrap(), "x:y");
        assert_eq!(expand_str("${EMPTY:-d}", &env()).unwrap(), "");
        assert_eq!(expand_str("${MISSING:-}", &env()).unwrap(), "");
        assert_eq!(expand_str("cost $${TOKEN}", &env()).unwrap(), "cost ${TOKEN}");
        assert!(expand_str("${MISSING}", &env()).unwrap_err().contains("MISSING"));
        assert!(expand_str("${OPEN", &env()).is_err());
    }

    #[test]
    fn tree_collects_every_error_with_paths_and_keeps_strings() {
        let mut value: Value = serde_yaml::from_str("a: ${N}\nb: [x, '${NOPE}']\nc: {d: '${ALSO_NOPE}', e: 'n=${N}'}").unwrap();
        let mut expansion = Expansion::default();
        expand_tree(&mut value, "", &env(), &mut expansion);
        let paths: Vec<_> = expansion.errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["b[1]", "c.d"]);
        let from_env = &expansion.expanded["c.e"];
        assert_eq!(from_env.original, "n=${N}");
        assert_eq!(from_env.values, [Substituted { name: "N".into(), value: "5".into(), at_start: false }]);
        assert_eq!(expansion.expanded["a"].values, [Substituted { name: "N".into(), value: "5".into(), at_start: true }]);
        assert_eq!(expansion.expanded.len(), 2, "{:?}", expansion.expanded);
        assert_eq!(value["a"], Value::String("5".into()));
        assert_eq!(value["c"]["e"], Value::String("n=5".into()));
    }
}

//! Configuration as written: the raw serde model of `hookrelay.yaml`, `${VAR}` expansion,
//! positions of YAML paths, units, and the errors with file, line:column and YAML path.
//! Compiling it into what the relay runs on is [`crate::settings`] and
//! [`crate::snapshot`]; this module knows none of the domains.

pub mod env;
pub mod locate;
pub mod model;
pub mod units;

use std::fmt;
use std::path::{Path, PathBuf};

use locate::{Locator, Position};

/// Problems found while compiling one file, as (YAML path, message) pairs; turned into
/// [`ConfigError`]s with positions once the file's locator is at hand.
#[derive(Debug, Default)]
pub struct Problems {
    items: Vec<(String, String)>,
    warnings: Vec<(String, String)>,
}

/// Values people leave in a config meaning to replace them later.
const PLACEHOLDER_SECRETS: [&str; 4] = ["change-me", "changeme", "secret", "password"];

impl Problems {
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.items.push((path.into(), message.into()));
    }

    /// Something that compiles but is probably a mistake (`hookrelay check` prints it).
    pub fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push((path.into(), message.into()));
    }

    /// A credential from the config (verify or sign secret, token value, HMAC key, Basic
    /// password): empty or blank is an error, since an empty key would accept anything an
    /// attacker signs with it; a well-known placeholder is a warning.
    pub fn secret(&mut self, path: impl Into<String>, value: &str) -> bool {
        let path = path.into();
        if value.trim().is_empty() {
            self.push(path, "the secret is empty (an unset ${VAR} with an empty default?): verification would accept anything");
            return false;
        }
        if PLACEHOLDER_SECRETS.iter().any(|placeholder| value.trim().eq_ignore_ascii_case(placeholder)) {
            self.warn(path, format!("the secret is the placeholder {:?}: replace it before exposing this relay", value.trim()));
        }
        true
    }

    /// A credential the relay sends (a target's bearer token or password): a well-known
    /// placeholder is a warning; empty is the receiver's business.
    pub fn sent_credential(&mut self, path: impl Into<String>, value: &str) {
        if PLACEHOLDER_SECRETS.iter().any(|placeholder| value.trim().eq_ignore_ascii_case(placeholder)) {
            self.warn(path, format!("the credential is the placeholder {:?}: replace it before sending to a real receiver", value.trim()));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.items.iter().map(|(p, m)| (p.as_str(), m.as_str()))
    }
}

/// One config error, located as precisely as possible.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub position: Option<Position>,
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(position) = self.position {
            write!(f, ":{position}")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every error of one load.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.0.len();
        writeln!(f, "{count} config error{}:", if count == 1 { "" } else { "s" })?;
        for error in &self.0 {
            writeln!(f, "  {error}")?;
        }
        Ok(())
    }
}

/// A config file's text with its position index.
pub struct SourceFile {
    pub path: PathBuf,
    locator: Locator,
    /// YAML paths whose `${VAR}` expansion failed.
    pub(crate) unexpanded: Vec<String>,
    /// The text before expansion of every value that held a `${VAR}`, by YAML path.
    pub from_env: std::collections::HashMap<String, env::FromEnv>,
}

impl SourceFile {
    /// An API route has no file: errors name it and carry no position.
    pub(crate) fn api(name: &str) -> SourceFile {
        SourceFile {
            path: PathBuf::from(format!("api route {name:?}")),
            locator: Locator::new(""),
            unexpanded: Vec::new(),
            from_env: Default::default(),
        }
    }

    pub(crate) fn new(path: &Path, text: &str) -> SourceFile {
        SourceFile { path: path.to_path_buf(), locator: Locator::new(text), unexpanded: Vec::new(), from_env: Default::default() }
    }

    pub fn error(&self, path: &str, message: impl Into<String>) -> ConfigError {
        ConfigError { file: self.path.clone(), position: self.locator.find(path), path: path.to_string(), message: message.into() }
    }

    /// Adds located problems, except those under a value whose `${VAR}` failed to expand:
    /// that error is already reported, and the unexpanded text would only add noise.
    pub(crate) fn collect(&self, problems: Problems, errors: &mut Vec<ConfigError>, warnings: &mut Vec<ConfigError>) {
        let fresh = problems
            .items
            .into_iter()
            .filter(|(path, _)| !self.unexpanded.iter().any(|bad| path == bad || path.starts_with(&format!("{bad}."))));
        errors.extend(fresh.map(|(path, message)| self.error(&path, message)).collect::<Vec<_>>());
        warnings.extend(problems.warnings.into_iter().map(|(path, message)| self.error(&path, message)));
    }
}

/// The JSON Schema of `hookrelay.yaml` (`hookrelay schema`), from the raw config types.
pub fn schema() -> schemars::Schema {
    schemars::schema_for!(model::RawConfig)
}

/// A route created through the admin API: the YAML route schema as JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiRoute {
    pub name: String,
    pub definition: serde_json::Value,
}

/// Turns a serde error from reading a YAML tree into a located config error. serde's
/// "unknown field" errors name the field but point at its parent, so the field is added
/// to the path to point at the offending key.
pub(crate) fn serde_error(file: &SourceFile, prefix: &str, err: serde_path_to_error::Error<serde_yaml::Error>) -> ConfigError {
    let inner = err.inner().to_string();
    let mut path = join_path(prefix, &err.path().to_string());
    if let Some(field) = inner.strip_prefix("unknown field `").and_then(|rest| rest.split('`').next()) {
        if !path.ends_with(field) {
            path = join_path(&path, field);
        }
    }
    let message = inner.split(" at line ").next().unwrap_or(&inner).to_string();
    file.error(&path, message)
}

fn join_path(prefix: &str, rest: &str) -> String {
    match (prefix.is_empty(), rest.is_empty() || rest == ".") {
        (_, true) => prefix.to_string(),
        (true, false) => rest.to_string(),
        (false, false) if rest.starts_with('[') => format!("{prefix}{rest}"),
        (false, false) => format!("{prefix}.{rest}"),
    }
}

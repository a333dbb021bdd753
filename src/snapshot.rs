//! The one compile step: the config's files (and the routes kept in the store) → one
//! validated, immutable [`Snapshot`] the hot path reads. Each route is read and compiled on
//! its own so every error in every file is reported together. Startup, `hookrelay check`,
//! every reload and the admin API's route changes all go through [`load`].

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, Method};
use serde_json::Value;

use crate::condition::{compile_match, Regexes};
use crate::config::env::{expand_tree, Expansion, Lookup};
use crate::config::model::{OneOrMany, RawConfig, RawInclude, RawRoute};
use crate::config::units::parse_duration;
use crate::config::{serde_error, ApiRoute, ConfigError, ConfigErrors, Problems, SourceFile};
use crate::delivery::retry::RetryPolicy;
use crate::delivery::target::{self, valid_name, CompileCtx, TargetDefaults};
use crate::ratelimit::LimitSpec;
use crate::routing::path::PathPattern;
use crate::routing::source::{Extractor, Source, SourceKind};
use crate::routing::{IngressLimit, LimitBy, Origin, Route, RouteTable};
use crate::settings::{compile_settings, Settings};
use crate::template::TemplateEngine;
use crate::verify;

/// Loads and compiles the config at `path`, reading `${VAR}` from `env`.
pub fn load(path: &Path, env: &dyn Lookup) -> Result<Snapshot, ConfigErrors> {
    compile_files(path, env, &[])
}

/// Like [`load`], with the routes kept in the store after the file's routes.
pub fn load_with_api_routes(path: &Path, env: &dyn Lookup, api_routes: &[ApiRoute]) -> Result<Snapshot, ConfigErrors> {
    compile_files(path, env, api_routes)
}

/// Everything the hot path reads, compiled and validated. Immutable once built.
pub struct Snapshot {
    pub settings: Settings,
    pub routes: RouteTable,
    pub templates: TemplateEngine,
    /// Every file that went into this snapshot (main file first), for the watcher.
    pub files: Vec<PathBuf>,
    /// `include:` globs resolved against the main file's folder: a new matching file is a change.
    pub include_patterns: Vec<PathBuf>,
    /// Hash of every file's path and text: a reload that reads the same bytes changes nothing.
    pub content_hash: u64,
    /// True when some template reads `raw`, so the context must carry the body text.
    pub templates_use_raw: bool,
    /// What compiled but looks like a mistake (placeholder secrets); `check` prints them.
    pub warnings: Vec<ConfigError>,
    /// Credential headers and body fields named by the config, redacted wherever recorded.
    pub redactions: crate::redact::Redactions,
}

impl Snapshot {
    pub fn route(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.name == name)
    }
}

struct ParsedFile {
    file: SourceFile,
    /// Nothing but whitespace was read.
    blank: bool,
    tree: serde_yaml::Value,
}

fn read_file(path: &Path, env: &dyn Lookup, hasher: &mut DefaultHasher, errors: &mut Vec<ConfigError>) -> Option<ParsedFile> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => {
            path.hash(hasher);
            text.hash(hasher);
            text
        }
        Err(err) => {
            errors.push(ConfigError {
                file: path.to_path_buf(),
                position: None,
                path: String::new(),
                message: format!("cannot read: {err}"),
            });
            return None;
        }
    };
    let blank = text.trim().is_empty();
    let mut file = SourceFile::new(path, &text);
    let mut tree: serde_yaml::Value = match serde_yaml::from_str(&text) {
        Ok(serde_yaml::Value::Null) => serde_yaml::Value::Mapping(Default::default()),
        Ok(tree) => tree,
        Err(err) => {
            let position = err.location().map(|l| crate::config::locate::Position { line: l.line(), column: l.column() });
            let message = err.to_string();
            let message = message.split(" at line ").next().unwrap_or(&message).to_string();
            errors.push(ConfigError {
                file: path.to_path_buf(),
                position,
                path: String::new(),
                message: format!("YAML syntax error: {message}"),
            });
            return None;
        }
    };
    let mut expansion = Expansion::default();
    expand_tree(&mut tree, "", env, &mut expansion);
    errors.extend(expansion.errors.iter().map(|e| file.error(&e.path, e.message.clone())));
    file.unexpanded = expansion.errors.into_iter().map(|e| e.path).collect();
    file.from_env = expansion.expanded;
    Some(ParsedFile { file, tree, blank })
}

/// Takes `routes:` out of a file's tree so the rest can be read even when a route is broken.
fn take_routes(tree: &mut serde_yaml::Value) -> Vec<serde_yaml::Value> {
    match tree.as_mapping_mut().and_then(|m| m.remove("routes")) {
        Some(serde_yaml::Value::Sequence(routes)) => routes,
        Some(other) => {
            if let Some(map) = tree.as_mapping_mut() {
                map.insert("routes".into(), other);
            }
            Vec::new()
        }
        None => Vec::new(),
    }
}

fn compile_files(path: &Path, env: &dyn Lookup, api_routes: &[ApiRoute]) -> Result<Snapshot, ConfigErrors> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut hasher = DefaultHasher::new();
    let Some(mut main) = read_file(path, env, &mut hasher, &mut errors) else {
        return Err(ConfigErrors(errors));
    };
    // Nobody means to run a relay from an empty file; an editor or a `>` redirect that has
    // truncated it and not yet written it has. Keep the config that is serving.
    if main.blank {
        return Err(ConfigErrors(vec![main
            .file
            .error("", "the config file is empty (being written?); the previous config keeps serving")]));
    }
    let main_routes = take_routes(&mut main.tree);
    let raw: Option<RawConfig> = match serde_path_to_error::deserialize(main.tree.clone()) {
        Ok(raw) => Some(raw),
        Err(err) => {
            errors.push(serde_error(&main.file, "", err));
            None
        }
    };
    let mut problems = Problems::default();
    let settings = raw.as_ref().map(|raw| compile_settings(raw, path, &mut problems));
    let defaults = raw.as_ref().map(|raw| compile_defaults(raw, &mut problems)).unwrap_or(TargetDefaults {
        timeout: Duration::from_secs(10),
        retry: RetryPolicy::default(),
        rate_limit: None,
        max_queued: target::QueueBound::DEFAULT,
    });
    main.file.collect(problems, &mut errors, &mut warnings);

    let mut files = vec![path.to_path_buf()];
    // Certificate files are watched and hashed like config files: a renewed certificate is a reload.
    if let Some(tls) = settings.as_ref().and_then(|s| s.tls.as_ref()) {
        for file in [Some(&tls.cert), Some(&tls.key), tls.client_ca_file.as_ref()].into_iter().flatten() {
            if let Ok(bytes) = std::fs::read(file) {
                file.hash(&mut hasher);
                bytes.hash(&mut hasher);
            }
            files.push(file.clone());
        }
    }
    let mut route_sources: Vec<(SourceFile, Vec<serde_yaml::Value>)> = Vec::new();
    let includes = raw.as_ref().map(|r| r.include.clone()).unwrap_or_default();
    route_sources.push((main.file, main_routes));
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let include_patterns: Vec<PathBuf> = includes.iter().map(|pattern| base_dir.join(pattern)).collect();
    for (index, pattern) in includes.iter().enumerate() {
        let full = base_dir.join(pattern);
        let matches = match glob::glob(&full.to_string_lossy()) {
            Ok(paths) => {
                let mut found: Vec<PathBuf> = paths.filter_map(Result::ok).collect();
                found.sort();
                found
            }
            Err(err) => {
                errors.push(route_sources[0].0.error(&format!("include[{index}]"), format!("bad glob {pattern:?}: {err}")));
                continue;
            }
        };
        for included in matches {
            let Some(mut parsed) = read_file(&included, env, &mut hasher, &mut errors) else {
                continue;
            };
            let routes = take_routes(&mut parsed.tree);
            if let Err(err) = serde_path_to_error::deserialize::<_, RawInclude>(parsed.tree.clone()) {
                errors.push(serde_error(&parsed.file, "", err));
            }
            files.push(included);
            route_sources.push((parsed.file, routes));
        }
    }

    // API routes come last, and are never `${VAR}`-expanded: whoever holds the admin token
    // must not be able to read the relay's environment through a URL.
    let mut api_sources = Vec::new();
    for route in api_routes {
        route.name.hash(&mut hasher);
        route.definition.to_string().hash(&mut hasher);
        match serde_yaml::to_value(&route.definition) {
            Ok(tree) => api_sources.push((SourceFile::api(&route.name), vec![tree])),
            Err(err) => errors.push(SourceFile::api(&route.name).error("", err.to_string())),
        }
    }
    let yaml_sources = route_sources.len();
    route_sources.extend(api_sources);
    let allow_private = settings.as_ref().is_some_and(|s| s.allow_private);
    let mut compiler = Compiler::new(defaults);
    let mut routes = Vec::new();
    // A `${VAR}` compared with in a match condition is often a shared secret, and one named
    // like a credential (by its variable or by the key it is written to) is one: never shown.
    let mut env_secrets: Vec<String> = Vec::new();
    for (source_index, (file, trees)) in route_sources.into_iter().enumerate() {
        let origin = if source_index < yaml_sources { Origin::Yaml } else { Origin::Api };
        for (path, from_env) in &file.from_env {
            let secret_key = path.contains(".match") || crate::redact::is_secret_name(path.rsplit('.').next().unwrap_or(path));
            let secrets = from_env.values.iter().filter(|each| secret_key || crate::redact::is_secret_name(&each.name));
            env_secrets.extend(secrets.map(|each| each.value.clone()));
        }
        for (index, tree) in trees.into_iter().enumerate() {
            let at = match origin {
                Origin::Yaml => format!("routes[{index}]"),
                Origin::Api => "route".to_string(),
            };
            compiler.templates_use_raw |= mentions_raw(&tree);
            let raw_route: RawRoute = match serde_path_to_error::deserialize(tree) {
                Ok(route) => route,
                Err(err) => {
                    errors.push(serde_error(&file, &at, err));
                    continue;
                }
            };
            let mut problems = Problems::default();
            let route = compiler.route(&raw_route, &at, &file, origin, &mut problems);
            if origin == Origin::Api && !allow_private {
                refuse_private_targets(&raw_route, &at, &mut problems);
            }
            file.collect(problems, &mut errors, &mut warnings);
            routes.extend(route);
        }
    }
    let mut redactions = credentials_named_by(&routes);
    env_secrets.iter().for_each(|value| redactions.add_value(value));
    // Main file first, then includes in order; within a file, by position.
    errors.sort_by_key(|e| (e.file != path, e.file.clone(), e.position.map(|p| (p.line, p.column))));
    match (settings, errors.is_empty()) {
        (Some(settings), true) => Ok(Snapshot {
            settings,
            routes: RouteTable::new(routes),
            templates: compiler.templates,
            files,
            include_patterns,
            content_hash: hasher.finish(),
            templates_use_raw: compiler.templates_use_raw,
            warnings,
            redactions,
        }),
        _ => Err(ConfigErrors(errors)),
    }
}

/// Every header and body field the routes treat as a credential: verify checks, custom
/// signature headers, and TAPD's `secret` field (sent whether or not it is verified).
fn credentials_named_by(routes: &[crate::routing::Route]) -> crate::redact::Redactions {
    let mut redactions = crate::redact::Redactions::default();
    for route in routes {
        route.verify.iter().for_each(|check| check.mark_credentials(&mut redactions));
        for target in &route.targets {
            if let Some(header) = target.signer.as_ref().and_then(|signer| signer.custom_header()) {
                redactions.add_header(header);
            }
            target.env_credentials().header_names().for_each(|name| redactions.add_header(name));
            target.env_credentials().query_names().for_each(|name| redactions.add_query_name(name));
            target.env_credentials().secret_values().for_each(|value| redactions.add_value(value));
        }
        if route.source.kind == SourceKind::Tapd {
            if let Ok(secret) = serde_json_path::JsonPath::parse("$.secret") {
                redactions.add_field(&secret);
            }
        }
    }
    redactions
}

/// API routes may not target loopback, private or link-local hosts written into the URL
/// (resolved names are checked again at send time); `upstream:` targets are allowed.
fn refuse_private_targets(raw: &RawRoute, at: &str, problems: &mut Problems) {
    for (index, target) in raw.forward.iter().enumerate() {
        if target.url.starts_with("upstream:") {
            continue;
        }
        let private = crate::delivery::guard::check_literal_host(&target.url).is_err();
        if private {
            problems.push(
                format!("{at}.forward[{index}].url"),
                "routes created through the API may not target loopback, private or link-local addresses (set outbound.allow_private: true to allow)",
            );
        }
    }
}

/// A cheap over-approximation: any string mentioning `raw` in a route's templates.
fn mentions_raw(tree: &serde_yaml::Value) -> bool {
    match tree {
        serde_yaml::Value::String(text) => text.contains("{{") && text.contains("raw"),
        serde_yaml::Value::Sequence(items) => items.iter().any(mentions_raw),
        serde_yaml::Value::Mapping(map) => map.values().any(mentions_raw),
        serde_yaml::Value::Tagged(tagged) => mentions_raw(&tagged.value),
        _ => false,
    }
}

fn compile_defaults(raw: &RawConfig, problems: &mut Problems) -> TargetDefaults {
    let timeout = match &raw.defaults.timeout {
        Some(text) => parse_duration(text).unwrap_or_else(|m| {
            problems.push("defaults.timeout", m);
            Duration::from_secs(10)
        }),
        None => Duration::from_secs(10),
    };
    let retry = target::compile_retry(&raw.defaults.retry, &RetryPolicy::default(), "defaults.retry", problems);
    if let Some(limit) = &raw.defaults.rate_limit {
        crate::ratelimit::compile_spec(
            limit.per_second,
            limit.per_minute,
            limit.per_hour,
            limit.burst,
            limit.window,
            "defaults.rate_limit",
            problems,
        );
    }
    let max_queued = raw
        .defaults
        .max_queued
        .as_ref()
        .map_or(target::QueueBound::DEFAULT, |bound| target::compile_queue_bound(bound, "defaults.max_queued", problems));
    TargetDefaults { timeout, retry, rate_limit: raw.defaults.rate_limit.clone(), max_queued }
}

/// What one compile shares across its routes: the templates registered so far, regexes
/// already compiled (configs repeat patterns), rate-limit keys with their settings (one key,
/// one bucket, one rate), route names, and the target defaults. Lives for one compile.
struct Compiler {
    templates: TemplateEngine,
    regexes: Regexes,
    limit_keys: HashMap<String, LimitSpec>,
    names: HashSet<String>,
    defaults: TargetDefaults,
    /// Some template reads `raw`, so requests must carry the body text.
    templates_use_raw: bool,
}

impl Compiler {
    fn new(defaults: TargetDefaults) -> Compiler {
        Compiler {
            templates: TemplateEngine::new(),
            regexes: Regexes::default(),
            limit_keys: HashMap::new(),
            names: HashSet::new(),
            defaults,
            templates_use_raw: false,
        }
    }

    /// Compiles one route from `file`; `origin` decides whether its targets are trusted
    /// (YAML routes and `upstream:` targets) or held to the private-address guard.
    fn route(&mut self, raw: &RawRoute, at: &str, file: &SourceFile, origin: Origin, problems: &mut Problems) -> Option<Route> {
        if !self.names.insert(raw.name.clone()) {
            problems.push(format!("{at}.name"), format!("route name {:?} is used twice", raw.name));
        }
        let mut route = compile_route(raw, at, file, origin, self, problems)?;
        route.origin = origin;
        Some(route)
    }
}

fn compile_route(
    raw: &RawRoute,
    at: &str,
    file: &SourceFile,
    origin: Origin,
    compiler: &mut Compiler,
    problems: &mut Problems,
) -> Option<Route> {
    if !valid_name(&raw.name) {
        problems.push(format!("{at}.name"), format!("route name {:?} must match [a-z0-9_-]+", raw.name));
    }
    let kind = match raw.source.as_deref() {
        None => SourceKind::Generic,
        Some(name) => SourceKind::parse(name).unwrap_or_else(|| {
            problems.push(format!("{at}.source"), format!("unknown source {name:?} (one of {})", SourceKind::NAMES));
            SourceKind::Generic
        }),
    };
    let mut extractor = |spec: &Option<String>, field: &str| {
        spec.as_ref().and_then(|s| {
            Extractor::parse(s)
                .map_err(|message| {
                    problems.push(format!("{at}.{field}"), message);
                })
                .ok()
        })
    };
    let event_from = extractor(&raw.event_from, "event_from");
    let id_from = extractor(&raw.id_from, "id_from");
    let source = if kind == SourceKind::Generic {
        Source::generic(event_from, id_from)
    } else {
        if raw.event_from.is_some() || raw.id_from.is_some() {
            problems.push(
                format!("{at}.event_from"),
                "event_from / id_from are for `source: generic`; presets read their platform's own fields",
            );
        }
        Source::preset(kind)
    };
    let match_at = format!("{at}.match");
    let path = match PathPattern::parse(raw.matcher.path.as_deref().unwrap_or("/")) {
        Ok(path) => Some(path),
        Err(message) => {
            problems.push(format!("{match_at}.path"), message);
            None
        }
    };
    if raw.matcher.path.is_none() {
        problems.push(format!("{match_at}.path"), "every route needs match.path (e.g. /hooks/codeup)");
    }
    let mut methods = Vec::new();
    for (index, text) in raw.matcher.methods.clone().unwrap_or_else(|| vec!["POST".to_string()]).iter().enumerate() {
        match Method::from_bytes(text.to_ascii_uppercase().as_bytes()) {
            Ok(method) => methods.push(method),
            Err(_) => problems.push(format!("{match_at}.methods[{index}]"), format!("invalid method {text:?}")),
        }
    }
    let condition = compile_match(&raw.matcher, &match_at, false, problems, &mut compiler.regexes);
    for pattern in raw.matcher.event.clone().map(OneOrMany::into_vec).unwrap_or_default() {
        if let Some(why) = crate::routing::events::never_matches(kind, &pattern) {
            problems.warn(format!("{match_at}.event"), why);
        }
    }
    let verify =
        raw.verify.as_ref().map(|v| verify::compile(v, kind.secret_scheme(), &format!("{at}.verify"), problems)).unwrap_or_default();
    if raw.forward.is_empty() {
        problems.push(format!("{at}.forward"), "a route needs at least one forward target");
    }
    let mut target_names = HashSet::new();
    let mut targets = Vec::new();
    let ingress_limit = raw.ingress_limit.as_ref().and_then(|limit| {
        let here = format!("{at}.ingress_limit");
        let by = match limit.by.as_deref().unwrap_or("ip") {
            "ip" => Some(LimitBy::Ip),
            other => match other.strip_prefix("header:").map(|name| HeaderName::from_bytes(name.trim().as_bytes())) {
                Some(Ok(name)) => Some(LimitBy::Header(name)),
                _ => {
                    problems.push(format!("{here}.by"), format!("`by` is `ip` or `header:NAME`, not {other:?}"));
                    None
                }
            },
        };
        let spec = crate::ratelimit::compile_spec(limit.per_second, limit.per_minute, limit.per_hour, limit.burst, false, &here, problems);
        Some(IngressLimit { spec: spec?, by: by? })
    });
    let dedupe =
        raw.dedupe.as_ref().and_then(|text| parse_duration(text).map_err(|message| problems.push(format!("{at}.dedupe"), message)).ok());
    if dedupe.is_some() && kind == SourceKind::Generic && raw.id_from.is_none() {
        problems.push(format!("{at}.dedupe"), "dedupe needs a delivery id: use a source that has one, or id_from");
    }
    let mut ctx = CompileCtx {
        templates: &mut compiler.templates,
        regexes: &mut compiler.regexes,
        defaults: &compiler.defaults,
        problems,
        limit_keys: &mut compiler.limit_keys,
        route: &raw.name,
        from_env: &file.from_env,
        trusted_origin: origin == Origin::Yaml,
    };
    for (index, raw_target) in raw.forward.iter().enumerate() {
        let target_at = format!("{at}.forward[{index}]");
        if let Some(target) = target::compile(raw_target, index, &target_at, &mut ctx) {
            if !target_names.insert(target.name.clone()) {
                ctx.problems.push(format!("{target_at}.name"), format!("target name {:?} is used twice in this route", target.name));
            }
            targets.push(target);
        }
    }
    Some(Route {
        name: raw.name.clone(),
        origin: Origin::Yaml,
        file: file.path.display().to_string(),
        source,
        path: path?,
        methods,
        needs_body: condition.needs_body(),
        condition,
        verify,
        cloudevents_origins: raw.verify.as_ref().and_then(|v| v.cloudevents_origins.clone()).unwrap_or_default(),
        ingress_limit,
        dedupe,
        vars: Value::Object(raw.vars.clone()),
        respond: raw.respond,
        is_final: raw.is_final,
        targets,
    })
}

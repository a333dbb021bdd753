//! The relay-wide settings of a config (listeners, TLS, admin, upstream, limits, store,
//! outbound), compiled and validated from the raw model. Everything else in a snapshot is
//! routes: see [`crate::snapshot`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::config::model::RawConfig;
use crate::config::units::{parse_duration, parse_size};
use crate::config::Problems;

/// The service hookrelay sits beside.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub base: url::Url,
    /// `scheme://authority/base-path` without a trailing slash: a proxied request's path
    /// and query are appended to it.
    proxy_prefix: String,
    /// Where the base path starts in `proxy_prefix` (origin-form request targets).
    path_start: usize,
    /// `host[:port]` as the URL gives it: the `Host` of a proxied request that had none.
    authority: String,
    /// `host:port` to connect to when the service speaks plain HTTP; `None` for `https`.
    plain_http_authority: Option<String>,
}

impl Upstream {
    pub fn new(base: url::Url) -> Option<Upstream> {
        // `host_str` writes an IPv6 address in its brackets already.
        let host = base.host_str()?;
        let authority = match base.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        let origin = format!("{}://{authority}", base.scheme());
        let path_start = origin.len();
        let proxy_prefix = origin + base.path().trim_end_matches('/');
        let plain_http_authority = (base.scheme() == "http").then(|| format!("{host}:{}", base.port().unwrap_or(80)));
        Some(Upstream { base, proxy_prefix, path_start, authority, plain_http_authority })
    }

    /// `host[:port]` as the URL gives it.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// `host:port` of a service that speaks plain HTTP (`None` for `https`).
    pub fn plain_http_authority(&self) -> Option<&str> {
        self.plain_http_authority.as_deref()
    }

    /// The origin-form request target (`/base/path?query`) for `path_and_query`.
    pub fn origin_form(&self, path_and_query: &str) -> String {
        [&self.proxy_prefix[self.path_start..], path_and_query].concat()
    }

    /// Where a request for `path_and_query` is proxied to.
    pub fn proxied(&self, path_and_query: &str) -> String {
        [self.proxy_prefix.as_str(), path_and_query].concat()
    }

    /// Joins an `upstream:` target path (with optional query) onto the base URL.
    pub fn join(&self, path_and_query: &str) -> Result<url::Url, String> {
        let mut joined = self.base.clone();
        let (path, query) = match path_and_query.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path_and_query, None),
        };
        let base_path = self.base.path().trim_end_matches('/');
        joined.set_path(&format!("{base_path}/{}", path.trim_start_matches('/')));
        joined.set_query(query);
        Ok(joined)
    }
}

#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    pub token: Option<String>,
    /// Lowercase names a browser may use for the listener when it has no token.
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body: u64,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    pub queue_capacity: usize,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_streams: u32,
    pub shutdown_grace: Duration,
    /// `None`: wait for a proxied service's answer as long as it takes (long polling).
    pub upstream_header_timeout: Option<Duration>,
    pub max_buffered_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            queue_capacity: 10_000,
            max_connections: 10_000,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_streams: 100,
            shutdown_grace: Duration::from_secs(10),
            upstream_header_timeout: Some(Duration::from_secs(60)),
            max_buffered_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// Inbound HTTPS, validated (certificate and key read and matched) at load.
    pub tls: Option<crate::tls::TlsSettings>,
    pub admin: Option<AdminSettings>,
    pub upstream: Option<Upstream>,
    pub limits: Limits,
    pub store: StoreLocation,
    /// How long finished events stay in the store.
    pub retention: Duration,
    /// `store.keep_unmatched`: how long requests no route took are kept (off when `None`).
    pub keep_unmatched: Option<Duration>,
    /// Extra CAs for HTTPS targets (`outbound.ca_file`).
    pub extra_roots: Vec<CertificateDer<'static>>,
    pub allow_private: bool,
    /// `telemetry.otlp`: where spans are exported, if anywhere.
    pub telemetry: Option<crate::telemetry::OtlpSettings>,
}

/// Where the relay keeps its events and deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// The embedded default: one relay, one file.
    Sqlite(PathBuf),
    /// A database shared by every relay configured with it.
    Postgres(String),
}

impl StoreLocation {
    /// Where it is, for people: the file, or the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            StoreLocation::Sqlite(path) => path.display().to_string(),
            StoreLocation::Postgres(url) => match url::Url::parse(url) {
                Ok(mut parsed) => {
                    if parsed.password().is_some() {
                        let _ = parsed.set_password(Some("***"));
                    }
                    // A password may also come as a parameter.
                    let parameters: Vec<(String, String)> = parsed
                        .query_pairs()
                        .map(|(key, value)| {
                            let secret = key.contains("password");
                            (key.into_owned(), if secret { "***".to_string() } else { value.into_owned() })
                        })
                        .collect();
                    if !parameters.is_empty() {
                        parsed.query_pairs_mut().clear().extend_pairs(parameters);
                    }
                    parsed.to_string()
                }
                Err(_) => "postgres://…".to_string(),
            },
        }
    }

    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            StoreLocation::Sqlite(path) => Some(path),
            StoreLocation::Postgres(_) => None,
        }
    }
}

/// Zero-width and byte-order characters: a token made of them looks empty and is one.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{2060}'..='\u{2064}' | '\u{feff}')
}

/// Compiles the settings part of the main file.
pub fn compile_settings(raw: &RawConfig, config_path: &Path, problems: &mut Problems) -> Settings {
    let listen = parse_addr(raw.listen.as_deref().unwrap_or("0.0.0.0:8080"), "listen", problems);
    let admin = raw.admin.as_ref().map(|admin| AdminSettings {
        listen: parse_addr(&admin.listen, "admin.listen", problems),
        // A blank token is no token (anyone could send it); it then needs a loopback address.
        token: admin.token.clone().filter(|t| !t.chars().all(|c| c.is_whitespace() || is_invisible(c))),
        hosts: admin.hosts.iter().map(|host| host.trim().trim_end_matches('.').to_ascii_lowercase()).collect(),
    });
    if let Some(admin) = &admin {
        if admin.token.is_none() && !admin.listen.ip().is_loopback() {
            problems.push("admin.listen", "an admin listener without a token may only bind a loopback address: set admin.token");
        }
    }
    let upstream = raw.upstream.as_ref().and_then(|text| match url::Url::parse(text) {
        Ok(base) if matches!(base.scheme(), "http" | "https") => {
            let upstream = Upstream::new(base);
            if upstream.is_none() {
                problems.push("upstream", "upstream has no host");
            }
            upstream
        }
        Ok(_) => {
            problems.push("upstream", "upstream must be an http:// or https:// URL");
            None
        }
        Err(err) => {
            problems.push("upstream", format!("invalid URL {text:?}: {err}"));
            None
        }
    });
    let defaults = Limits::default();
    let mut duration = |value: &Option<String>, at: &str, fallback: Duration| match value {
        Some(text) => parse_duration(text).unwrap_or_else(|m| {
            problems.push(at, m);
            fallback
        }),
        None => fallback,
    };
    let header_timeout = duration(&raw.limits.header_timeout, "limits.header_timeout", defaults.header_timeout);
    let shutdown_grace = duration(&raw.limits.shutdown_grace, "limits.shutdown_grace", defaults.shutdown_grace);
    let request_timeout = duration(&raw.limits.request_timeout, "limits.request_timeout", defaults.request_timeout);
    let max_body = match &raw.limits.max_body {
        Some(text) => parse_size(text).unwrap_or_else(|m| {
            problems.push("limits.max_body", m);
            defaults.max_body
        }),
        None => defaults.max_body,
    };
    let upstream_header_timeout = match raw.limits.upstream_header_timeout.as_deref().map(str::trim) {
        Some("0") => None,
        Some(text) => match parse_duration(text) {
            Ok(duration) if duration.is_zero() => None,
            Ok(duration) => Some(duration),
            Err(message) => {
                problems.push("limits.upstream_header_timeout", message);
                defaults.upstream_header_timeout
            }
        },
        None => defaults.upstream_header_timeout,
    };
    let max_buffered_bytes = match &raw.limits.max_buffered_bytes {
        Some(text) => parse_size(text).unwrap_or_else(|m| {
            problems.push("limits.max_buffered_bytes", m);
            defaults.max_buffered_bytes
        }),
        None => defaults.max_buffered_bytes.max(max_body),
    };
    if max_buffered_bytes < max_body {
        problems.push("limits.max_buffered_bytes", "must be at least limits.max_body, or no request of that size could be read");
    }
    let max_header_bytes = match &raw.limits.max_header_bytes {
        // hyper needs room for at least one full read buffer.
        Some(text) => parse_size(text).map(|size| usize::try_from(size).unwrap_or(usize::MAX).max(8192)).unwrap_or_else(|m| {
            problems.push("limits.max_header_bytes", m);
            defaults.max_header_bytes
        }),
        None => defaults.max_header_bytes,
    };
    let store_dir = config_path.parent().map(Path::to_path_buf).unwrap_or_default();
    let store = match raw.store.as_ref().map(|store| (&store.path, &store.url)) {
        Some((Some(_), Some(_))) => {
            problems.push("store", "store.path (SQLite) and store.url (PostgreSQL) name two stores: keep one");
            StoreLocation::Sqlite(store_dir.join("data/hookrelay.db"))
        }
        Some((_, Some(url))) => {
            if let Err(error) = crate::store::PostgresStore::check_url(url) {
                problems.push("store.url", error.to_string());
            }
            StoreLocation::Postgres(url.clone())
        }
        Some((Some(path), None)) => StoreLocation::Sqlite(store_dir.join(path)),
        _ => StoreLocation::Sqlite(store_dir.join("data/hookrelay.db")),
    };
    let retention = match raw.store.as_ref().and_then(|s| s.retention.as_ref()) {
        Some(text) => parse_duration(text).unwrap_or_else(|message| {
            problems.push("store.retention", message);
            Duration::from_secs(7 * 24 * 3600)
        }),
        None => Duration::from_secs(7 * 24 * 3600),
    };
    let keep_unmatched = raw.store.as_ref().and_then(|s| s.keep_unmatched.as_ref()).and_then(|text| match parse_duration(text) {
        Ok(duration) if duration.is_zero() => None,
        Ok(duration) => Some(duration),
        Err(message) => {
            problems.push("store.keep_unmatched", message);
            None
        }
    });
    let extra_roots = match &raw.outbound.ca_file {
        Some(file) => {
            let full = store_dir.join(file);
            let loaded: Result<Vec<_>, _> = CertificateDer::pem_file_iter(&full).and_then(|certs| certs.collect());
            match loaded {
                Ok(certs) if !certs.is_empty() => certs,
                Ok(_) => {
                    problems.push("outbound.ca_file", format!("{} holds no PEM certificate", full.display()));
                    Vec::new()
                }
                Err(err) => {
                    problems.push("outbound.ca_file", format!("cannot read certificates from {}: {err}", full.display()));
                    Vec::new()
                }
            }
        }
        None => Vec::new(),
    };
    let tls = raw.tls.as_ref().and_then(|tls| crate::tls::compile(tls, &store_dir, problems));
    Settings {
        listen,
        tls,
        admin,
        upstream,
        limits: Limits {
            max_body,
            header_timeout,
            request_timeout,
            queue_capacity: raw.limits.queue_capacity.unwrap_or(defaults.queue_capacity).max(1),
            max_connections: raw.limits.max_connections.unwrap_or(defaults.max_connections).max(1),
            max_header_bytes,
            max_headers: raw.limits.max_headers.unwrap_or(defaults.max_headers).max(1),
            max_streams: raw.limits.max_streams.unwrap_or(defaults.max_streams).max(1),
            shutdown_grace,
            upstream_header_timeout,
            max_buffered_bytes,
        },
        store,
        retention,
        keep_unmatched,
        extra_roots,
        allow_private: raw.outbound.allow_private,
        telemetry: crate::telemetry::compile(&raw.telemetry, problems),
    }
}

fn parse_addr(text: &str, at: &str, problems: &mut Problems) -> SocketAddr {
    text.parse().unwrap_or_else(|_| {
        problems.push(at, format!("{text:?} is not an address like 127.0.0.1:8080 or [::]:8080"));
        SocketAddr::from(([127, 0, 0, 1], 0))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_are_shown_without_passwords() {
        let shown = StoreLocation::Postgres("postgres://relay:pw-one@db:5432/hooks?password=pw-two&sslmode=require".into()).describe();
        assert_eq!(shown, "postgres://relay:***@db:5432/hooks?password=***&sslmode=require");
    }

    #[test]
    fn proxied_requests_keep_the_upstream_base_path_and_ipv6_host() {
        let proxied = |base: &str, path: &str| Upstream::new(url::Url::parse(base).unwrap()).unwrap().proxied(path);
        assert_eq!(proxied("http://[::1]:8080", "/x?y=1"), "http://[::1]:8080/x?y=1");
        assert_eq!(proxied("http://[::1]", "/x"), "http://[::1]/x");
        assert_eq!(proxied("http://127.0.0.1:3000/base/", "/x"), "http://127.0.0.1:3000/base/x");
        assert_eq!(proxied("https://svc.internal:443/base", "/x"), "https://svc.internal/base/x");
        let upstream = |base: &str| Upstream::new(url::Url::parse(base).unwrap()).unwrap();
        assert_eq!(upstream("http://[::1]:8080").plain_http_authority(), Some("[::1]:8080"));
        assert_eq!(upstream("http://svc/base/").plain_http_authority(), Some("svc:80"));
        assert_eq!(upstream("https://svc:8443").plain_http_authority(), None);
        assert_eq!(upstream("http://svc/base/").origin_form("/x?y"), "/base/x?y");
        assert_eq!(upstream("http://svc").origin_form("/x"), "/x");
        for uri in [proxied("http://[::1]:8080", "/x?y=1"), proxied("http://127.0.0.1:3000/base/", "/a/b?c")] {
            assert!(uri.parse::<http::Uri>().is_ok(), "{uri}");
        }
    }
}

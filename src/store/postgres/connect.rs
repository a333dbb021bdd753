//! Reaching the database: the URL (parameters checked, `sslmode` and `sslrootcert` read
//! for the TLS client) and the connection pools built from it.

use std::path::PathBuf;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::CONNECT_TIMEOUT;
use crate::store::StoreError;

/// Where and how to reach the database: the URL's own parameters, with `sslmode=verify-ca`
/// and `verify-full` read as `require` (the TLS client always verifies the certificate
/// and the host name) and `sslrootcert=FILE` added to the trusted roots.
pub(super) struct Connection {
    pub(super) config: tokio_postgres::Config,
    pub(super) extra_roots: Vec<CertificateDer<'static>>,
}

pub(super) fn parse_url(url: &str) -> Result<Connection, StoreError> {
    let invalid = |detail: String| StoreError::InvalidInput(detail);
    if url.trim().is_empty() {
        return Err(invalid("empty (an unset ${VAR}?): give postgres://user:pass@host:5432/db, or leave store.url out for SQLite".into()));
    }
    let mut parsed = url::Url::parse(url).map_err(|error| invalid(error.to_string()))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(invalid(format!("scheme {:?} is not postgres://", parsed.scheme())));
    }
    let mut extra_roots = Vec::new();
    let mut kept: Vec<(String, String)> = Vec::new();
    for (key, value) in parsed.query_pairs() {
        match (key.as_ref(), value.as_ref()) {
            ("sslmode", "verify-ca" | "verify-full") => kept.push(("sslmode".into(), "require".into())),
            ("sslmode", mode) if !matches!(mode, "disable" | "prefer" | "require") => {
                return Err(invalid(format!("sslmode {mode:?} is not disable, prefer, require, verify-ca or verify-full")));
            }
            ("sslrootcert", file) => {
                let path = PathBuf::from(file);
                let certs = CertificateDer::pem_file_iter(&path)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|error| invalid(format!("sslrootcert {}: {error}", path.display())))?;
                extra_roots.extend(certs);
            }
            (key, value) => kept.push((key.to_owned(), value.to_owned())),
        }
    }
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    let config = parsed.as_str().parse::<tokio_postgres::Config>().map_err(|error| invalid(error.to_string()))?;
    Ok(Connection { config, extra_roots })
}

pub(super) fn pool_of(
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    size: usize,
) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(config, tls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(CONNECT_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|error| StoreError::InvalidInput(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::parse_url;

    #[test]
    fn verify_modes_become_require_and_other_parameters_stay() {
        let parsed = parse_url("postgres://relay:secret@db.internal:6543/hooks?sslmode=verify-full&application_name=x").unwrap();
        assert_eq!(parsed.config.get_hosts().len(), 1);
        assert_eq!(parsed.config.get_ports(), &[6543]);
        assert_eq!(parsed.config.get_user(), Some("relay"));
        assert_eq!(parsed.config.get_dbname(), Some("hooks"));
        assert_eq!(parsed.config.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        assert!(parsed.extra_roots.is_empty());
    }

    #[test]
    fn bad_urls_are_refused_with_the_reason() {
        for (url, expected) in [
            ("mysql://x@y/z", "is not postgres://"),
            ("  ", "empty (an unset ${VAR}?)"),
            ("postgres://x@y/z?sslmode=sometimes", "sslmode"),
            ("postgres://x@y/z?sslrootcert=/nonexistent/ca.pem", "sslrootcert /nonexistent/ca.pem"),
        ] {
            let error = parse_url(url).err().unwrap().to_string();
            assert!(error.contains(expected), "{url}: {error}");
        }
    }
}

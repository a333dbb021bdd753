//! Inbound TLS (rustls, ring): the certificate chain and key are read and validated by the
//! config compile (so a bad file is reported like a bad config and the old one keeps
//! serving), watched with the config, and every handshake uses the serving snapshot's
//! certificate: a renewed certificate reaches new connections without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::model::RawTls;
use crate::config::Problems;

/// Validated TLS settings of one snapshot.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub certified: Arc<CertifiedKey>,
    /// Roots for admin client certificates; empty means no mutual TLS.
    pub client_ca: Vec<CertificateDer<'static>>,
    /// Where they were read from (watched and hashed like the config).
    pub client_ca_file: Option<PathBuf>,
}

/// Reads and checks the PEM files; problems are reported at `tls.cert` / `tls.key`.
pub fn compile(raw: &RawTls, base: &Path, problems: &mut Problems) -> Option<TlsSettings> {
    let (cert, key) = (base.join(&raw.cert), base.join(&raw.key));
    let chain: Vec<CertificateDer<'static>> =
        match CertificateDer::pem_file_iter(&cert).and_then(|certs| certs.collect::<Result<Vec<_>, _>>()) {
            Ok(chain) if !chain.is_empty() => chain,
            Ok(_) => {
                problems.push("tls.cert", format!("{} holds no PEM certificate", cert.display()));
                return None;
            }
            Err(err) => {
                problems.push("tls.cert", format!("cannot read {}: {err}", cert.display()));
                return None;
            }
        };
    let private = match PrivateKeyDer::from_pem_file(&key) {
        Ok(private) => private,
        Err(err) => {
            problems.push("tls.key", format!("cannot read a private key from {}: {err}", key.display()));
            return None;
        }
    };
    let signing = match rustls::crypto::ring::sign::any_supported_type(&private) {
        Ok(signing) => signing,
        Err(err) => {
            problems.push("tls.key", format!("unsupported private key in {}: {err}", key.display()));
            return None;
        }
    };
    let certified = CertifiedKey::new(chain, signing);
    if let Err(err) = certified.keys_match() {
        problems.push("tls.key", format!("the key does not match the certificate: {err}"));
        return None;
    }
    let client_ca = match &raw.client_ca {
        Some(file) => {
            let path = base.join(file);
            match CertificateDer::pem_file_iter(&path).and_then(|certs| certs.collect::<Result<Vec<_>, _>>()) {
                Ok(roots) if !roots.is_empty() => roots,
                Ok(_) => {
                    problems.push("tls.client_ca", format!("{} holds no PEM certificate", path.display()));
                    return None;
                }
                Err(err) => {
                    problems.push("tls.client_ca", format!("cannot read {}: {err}", path.display()));
                    return None;
                }
            }
        }
        None => Vec::new(),
    };
    let client_ca_file = raw.client_ca.as_ref().map(|file| base.join(file));
    Some(TlsSettings { cert, key, certified: Arc::new(certified), client_ca, client_ca_file })
}

/// Where each handshake gets the certificate: the serving config's, read at that moment.
pub type CurrentCertificate = Arc<dyn Fn() -> Option<Arc<CertifiedKey>> + Send + Sync>;

/// Hands every handshake the certificate serving right now.
struct Serving(CurrentCertificate);

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Serving")
    }
}

impl ResolvesServerCert for Serving {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        (self.0)()
    }
}

/// The admin listener's acceptor when `tls.client_ca` is set: the same certificate, and a
/// client certificate issued by that CA is required before any request is read.
pub fn admin_acceptor(
    certificate: CurrentCertificate,
    client_ca: &[CertificateDer<'static>],
) -> Result<tokio_rustls::TlsAcceptor, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for root in client_ca {
        roots.add(root.clone())?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|err| rustls::Error::General(err.to_string()))?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(Serving(certificate)));
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}

/// The acceptor for the ingress listener: HTTP/2 and HTTP/1.1 by ALPN.
pub fn acceptor(certificate: CurrentCertificate) -> Result<tokio_rustls::TlsAcceptor, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Serving(certificate)));
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}

/// The TLS client setup for every outbound connection (targets, PostgreSQL): the Mozilla
/// roots plus `extra_roots`, on the ring provider.
pub fn client_config(extra_roots: &[CertificateDer<'static>]) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    for root in extra_roots {
        roots.add(root.clone())?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

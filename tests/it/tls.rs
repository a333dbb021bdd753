//! HTTPS ingress: a test CA, HTTP/1.1 and HTTP/2 by ALPN, certificate rotation while
//! serving, and a broken certificate that keeps the old one in service.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls_pki_types::CertificateDer;

use crate::support::{Relay, TestSink};

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Ca { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap() }
    }

    /// A leaf for localhost: (chain PEM with the CA, key PEM, leaf DER).
    fn leaf(&self, name: &str) -> (String, String, Vec<u8>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (format!("{}{}", cert.pem(), self.issuer.pem()), key.serialize_pem(), cert.der().to_vec())
    }

    fn client_config(&self) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth()
    }
}

async fn https_status(ca: &Ca, url: &str, http2: bool) -> (u16, http::Version) {
    // ALPN offers exactly one protocol, so the server's choice is what is being tested.
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(ca.client_config()).https_only();
    let connector = if http2 { builder.enable_http2().build() } else { builder.enable_http1().build() };
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).http2_only(http2).build(connector);
    let request = http::Request::post(url).header("content-type", "application/json").body(Full::new(Bytes::from_static(b"{}"))).unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let version = response.version();
    let _ = response.into_body().collect().await;
    (status, version)
}

/// The leaf certificate a fresh TLS connection is served.
async fn served_certificate(ca: &Ca, port: u16) -> Vec<u8> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(ca.client_config()));
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let tls = connector.connect(rustls_pki_types::ServerName::try_from("localhost").unwrap(), stream).await.unwrap();
    let (_, connection) = tls.get_ref();
    let chain: &[CertificateDer<'_>] = connection.peer_certificates().unwrap();
    chain[0].to_vec()
}

#[tokio::test]
async fn https_ingress_http1_http2_and_rotation() {
    let sink = TestSink::start().await;
    let ca = Ca::new();
    let (chain, key, first_der) = ca.leaf("first");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tls.crt"), &chain).unwrap();
    std::fs::write(dir.path().join("tls.key"), &key).unwrap();
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\ntls: {{ cert: {}, key: {} }}\nroutes:\n  - name: r\n    match: {{ path: /hooks/r }}\n    respond: sync\n    forward:\n      - url: {}/r\n",
        dir.path().join("tls.crt").display(),
        dir.path().join("tls.key").display(),
        sink.url()
    );
    let relay = Relay::start(&yaml).await;
    let port = relay.running.ingress_addr.port();
    let url = format!("https://localhost:{port}/hooks/r");
    assert_eq!(https_status(&ca, &url, false).await, (200, http::Version::HTTP_11));
    assert_eq!(https_status(&ca, &url, true).await, (200, http::Version::HTTP_2));
    assert_eq!(sink.wait_for(2).await[1].header("x-forwarded-proto"), None, "a route target, not the proxy");
    assert_eq!(served_certificate(&ca, port).await, first_der);

    // A renewed certificate reaches new connections without a restart.
    let (chain, key, second_der) = ca.leaf("second");
    std::fs::write(dir.path().join("tls.key.tmp"), &key).unwrap();
    std::fs::write(dir.path().join("tls.crt.tmp"), &chain).unwrap();
    std::fs::rename(dir.path().join("tls.key.tmp"), dir.path().join("tls.key")).unwrap();
    std::fs::rename(dir.path().join("tls.crt.tmp"), dir.path().join("tls.crt")).unwrap();
    relay.wait_for_generation(2).await;
    assert_eq!(served_certificate(&ca, port).await, second_der);

    // A broken certificate is reported like a broken config; the renewed one keeps serving.
    std::fs::write(dir.path().join("tls.crt"), "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = relay.client.get(&relay.admin_url("/api/status"), &[]).await.json();
        if let Some(error) = status["config"]["last_error"].as_str() {
            assert!(error.contains("tls.cert"), "{error}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(served_certificate(&ca, port).await, second_der);
    assert_eq!(https_status(&ca, &url, false).await.0, 200);
}

#[tokio::test]
async fn admin_listener_requires_a_client_certificate_from_client_ca() {
    let ca = Ca::new();
    let (chain, key, _) = ca.leaf("server");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tls.crt"), &chain).unwrap();
    std::fs::write(dir.path().join("tls.key"), &key).unwrap();
    std::fs::write(dir.path().join("clients.pem"), ca.issuer.pem()).unwrap();
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\ntls: {{ cert: {}, key: {}, client_ca: {} }}\nroutes: []\n",
        dir.path().join("tls.crt").display(),
        dir.path().join("tls.key").display(),
        dir.path().join("clients.pem").display()
    );
    let relay = Relay::start(&yaml).await;
    let admin_port = relay.running.admin_addr.unwrap().port();
    let url: http::Uri = format!("https://localhost:{admin_port}/healthz").parse().unwrap();

    let anonymous = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(ca.client_config()).https_only().enable_http1().build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(anonymous);
    assert!(client.get(url.clone()).await.is_err(), "no client certificate, no answer");

    let client_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["operator".to_string()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = params.signed_by(&client_key, &ca.issuer).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.issuer.der().clone()).unwrap();
    let with_cert = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![client_cert.der().clone()], rustls_pki_types::PrivateKeyDer::Pkcs8(client_key.serialize_der().into()))
        .unwrap();
    let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(with_cert).https_only().enable_http1().build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let response = client.get(url).await.unwrap();
    assert_eq!(response.status(), 200);
}

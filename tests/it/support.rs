//! Test support: a real relay started from a YAML file on disk, and a `TestSink` HTTP
//! server that records what reaches it and answers from a script.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// One request as the sink saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query exactly as sent.
    pub uri: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    /// When the request was complete at the sink.
    pub at: std::time::Instant,
    /// The address it came from: which connection carried it.
    pub from: SocketAddr,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("sink body is not JSON ({err}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// How long after the request arrived the answer goes out.
    pub delay: Duration,
}

impl Answer {
    pub fn status_only(status: u16) -> Answer {
        Answer { status, ..Default::default() }
    }

    pub fn with_body(status: u16, body: &str) -> Answer {
        Answer { status, headers: vec![("content-type".into(), "application/json".into())], body: body.to_string(), ..Default::default() }
    }

    /// `429` with a `Retry-After` of `retry_after`.
    pub fn too_many_requests(retry_after: &str) -> Answer {
        Answer { status: 429, headers: vec![("retry-after".into(), retry_after.into())], ..Default::default() }
    }

    pub fn after(self, delay: Duration) -> Answer {
        Answer { delay, ..self }
    }
}

#[derive(Default)]
struct SinkState {
    seen: Vec<Seen>,
    script: VecDeque<Answer>,
}

/// A real HTTP server on 127.0.0.1:0 that records requests. Answers come from the script
/// in order, then `200 {}`.
#[derive(Clone)]
pub struct TestSink {
    pub addr: SocketAddr,
    state: Arc<Mutex<SinkState>>,
    arrived: Arc<Notify>,
}

impl TestSink {
    pub async fn start() -> TestSink {
        Self::scripted(Vec::new()).await
    }

    pub async fn scripted(script: Vec<Answer>) -> TestSink {
        Self::serve(script, None, "127.0.0.1:0").await
    }

    /// A sink on a given loopback address (one a relay already targets).
    pub async fn on(addr: &str) -> TestSink {
        Self::serve(Vec::new(), None, addr).await
    }

    /// A sink serving HTTPS (HTTP/1.1 and HTTP/2) with a certificate for `localhost` and
    /// 127.0.0.1 issued by a fresh test CA; returns the CA in PEM for the relay to trust.
    pub async fn tls(script: Vec<Answer>) -> (TestSink, String) {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap().signed_by(&leaf_key, &ca).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()))
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let sink = Self::serve(script, Some(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))), "127.0.0.1:0").await;
        (sink, ca.pem())
    }

    async fn serve(script: Vec<Answer>, tls: Option<tokio_rustls::TlsAcceptor>, addr: &str) -> TestSink {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(SinkState { seen: Vec::new(), script: script.into() }));
        let arrived = Arc::new(Notify::new());
        let sink = TestSink { addr, state: state.clone(), arrived: arrived.clone() };
        tokio::spawn(async move {
            loop {
                let Ok((stream, from)) = listener.accept().await else { return };
                let state = state.clone();
                let arrived = arrived.clone();
                match &tls {
                    Some(acceptor) => {
                        let acceptor = acceptor.clone();
                        tokio::spawn(async move {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                serve_connection(stream, from, state, arrived).await;
                            }
                        });
                    }
                    None => {
                        tokio::spawn(serve_connection(stream, from, state, arrived));
                    }
                }
            }
        });
        sink
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Waits (bounded) until at least `count` requests have arrived.
    pub async fn wait_for(&self, count: usize) -> Vec<Seen> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let notified = self.arrived.notified();
            let seen = self.seen();
            if seen.len() >= count {
                return seen;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("sink saw {} requests, expected {count}: {:#?}", self.seen().len(), self.seen());
            }
        }
    }
}

async fn serve_connection<S>(stream: S, from: SocketAddr, state: Arc<Mutex<SinkState>>, arrived: Arc<Notify>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: http::Request<Incoming>| {
        let state = state.clone();
        let arrived = arrived.clone();
        async move {
            let (parts, body) = request.into_parts();
            let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
            let uri = parts.uri.path_and_query().map(|pq| pq.to_string()).unwrap_or_default();
            let answer = {
                let mut state = state.lock().unwrap();
                state.seen.push(Seen {
                    method: parts.method.to_string(),
                    uri,
                    headers: parts.headers,
                    body,
                    at: std::time::Instant::now(),
                    from,
                });
                state.script.pop_front().unwrap_or_else(|| Answer::with_body(200, "{}"))
            };
            arrived.notify_waiters();
            tokio::time::sleep(answer.delay).await;
            let mut response = http::Response::builder().status(answer.status);
            for (name, value) in &answer.headers {
                response = response.header(name, value);
            }
            Ok::<_, std::convert::Infallible>(response.body(Full::new(Bytes::from(answer.body))).unwrap())
        }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
}

/// A relay started from a config written to a temporary directory.
pub struct Relay {
    pub running: hookrelay::app::Running,
    /// Holds the config file for as long as the relay runs.
    pub dir: tempfile::TempDir,
    pub client: reqwest_like::Client,
}

impl Relay {
    /// Writes `yaml` (after replacing `{sink}` with `sink_url`) and starts the relay on 127.0.0.1:0.
    pub async fn start(yaml: &str) -> Relay {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hookrelay.yaml");
        std::fs::write(&path, yaml).unwrap();
        let running = hookrelay::app::start(&path).await.unwrap_or_else(|err| panic!("relay did not start: {err}"));
        Relay { running, dir, client: reqwest_like::Client::new() }
    }

    /// Wraps a relay started some other way (its config lives elsewhere).
    pub fn attach(running: hookrelay::app::Running) -> Relay {
        Relay { running, dir: tempfile::tempdir().unwrap(), client: reqwest_like::Client::new() }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.ingress_addr)
    }

    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("hookrelay.yaml")
    }

    /// The config generation the relay reports.
    pub async fn generation(&self) -> u64 {
        self.client.get(&self.admin_url("/api/status"), &[]).await.json()["config"]["generation"].as_u64().expect("generation")
    }

    /// Waits (bounded) until the relay reports at least `generation`.
    pub async fn wait_for_generation(&self, generation: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.generation().await < generation {
            assert!(
                tokio::time::Instant::now() < deadline,
                "generation {generation} not reached; status: {}",
                self.client.get(&self.admin_url("/api/status"), &[]).await.text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.admin_addr.expect("admin listener"))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.running.stop();
    }
}

pub fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    std::fs::read(&path).unwrap_or_else(|err| panic!("fixture {}: {err}", path.display()))
}

/// A minimal HTTP client over hyper for the tests.
pub mod reqwest_like {
    use super::*;
    use hyper_util::client::legacy::{connect::HttpConnector, Client as HyperClient};

    #[derive(Debug)]
    pub struct Reply {
        pub status: u16,
        pub headers: http::HeaderMap,
        pub body: Bytes,
    }

    impl Reply {
        pub fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body)
                .unwrap_or_else(|err| panic!("reply is not JSON ({err}): {:?}", String::from_utf8_lossy(&self.body)))
        }

        pub fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }
    }

    #[derive(Clone)]
    pub struct Client(HyperClient<HttpConnector, Full<Bytes>>);

    impl Client {
        pub fn new() -> Client {
            // Shorter than any idle deadline the tests give the relay, so a pooled connection
            // is never reused just as the relay closes it.
            Client(HyperClient::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_millis(500)).build_http())
        }

        pub async fn send(&self, method: &str, url: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Reply {
            self.try_send(method, url, headers, body).await.unwrap_or_else(|err| panic!("{method} {url}: {err}"))
        }

        pub async fn try_send(&self, method: &str, url: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Result<Reply, String> {
            let mut request = http::Request::builder().method(method).uri(url);
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let response = self.0.request(request.body(Full::new(body.into())).unwrap()).await.map_err(|err| err.to_string())?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response.into_body().collect().await.map_err(|err| err.to_string())?.to_bytes();
            Ok(Reply { status, headers, body })
        }

        pub async fn try_get(&self, url: &str) -> Option<Reply> {
            self.try_send("GET", url, &[], Bytes::new()).await.ok()
        }

        pub async fn post_json(&self, url: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Reply {
            let mut all = vec![("content-type", "application/json")];
            all.extend_from_slice(headers);
            self.send("POST", url, &all, body).await
        }

        pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Reply {
            self.send("GET", url, headers, Bytes::new()).await
        }
    }
}

/// The real `hookrelay` binary, started on a config file in a temporary folder.
pub mod binary {
    use std::io::Read;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, ExitStatus, Stdio};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::reqwest_like::Client;

    /// A port free now, below the kernel's ephemeral range (32768 and up on Linux), where
    /// neither outgoing connections nor other listeners on port 0 will take it before the
    /// relay binds it.
    pub fn free_port() -> u16 {
        loop {
            let port = fastrand::u16(20_000..32_000);
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }

    /// A running relay process. Its log (stderr) is read as it comes, so a chatty relay
    /// never blocks on a full pipe; dropping it kills the process (a failed test leaves
    /// nothing running).
    pub struct Process {
        child: Child,
        logs: Arc<Mutex<Vec<u8>>>,
        reader: Option<std::thread::JoinHandle<()>>,
        /// A log pipe kept open and never read (see [`spawn_with_unread_log`]).
        _unread: Option<std::process::ChildStderr>,
    }

    /// Like [`spawn`], but nobody reads the relay's stderr: the pipe fills and stays full.
    pub fn spawn_with_unread_log(config: &Path, env: &[(&str, &str)]) -> Process {
        let mut child = command(config, &[], env).spawn().unwrap();
        let unread = child.stderr.take();
        Process { child, logs: Arc::new(Mutex::new(Vec::new())), reader: None, _unread: unread }
    }

    fn command(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_hookrelay"));
        command
            .arg("run")
            .args(args)
            .arg("-c")
            .arg(config)
            .current_dir(config.parent().unwrap())
            .env_clear()
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    }

    /// Starts `hookrelay run [args] -c config` in the config's folder, with only `env`.
    pub fn spawn(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Process {
        let mut child = command(config, args, env).spawn().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        let reader = std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(read) = stderr.read(&mut chunk) {
                if read == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&chunk[..read]);
            }
        });
        Process { child, logs, reader: Some(reader), _unread: None }
    }

    impl Process {
        pub fn signal(&self, name: &str) {
            let _ = Command::new("sh").args(["-c", &format!("kill -{name} {}", self.child.id())]).status();
        }

        /// Still running?
        pub fn running(&mut self) -> bool {
            self.child.try_wait().unwrap().is_none()
        }

        /// Everything logged so far.
        pub fn logs(&self) -> String {
            String::from_utf8_lossy(&self.logs.lock().unwrap()).into_owned()
        }

        /// Waits for the exit (after a signal) and returns it with everything logged.
        pub fn wait(mut self) -> (ExitStatus, String) {
            let status = self.child.wait().unwrap();
            if let Some(reader) = self.reader.take() {
                let _ = reader.join();
            }
            let logs = String::from_utf8_lossy(&self.logs.lock().unwrap()).into_owned();
            (status, logs)
        }
    }

    impl Drop for Process {
        fn drop(&mut self) {
            if matches!(self.child.try_wait(), Ok(None)) {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }

    /// Waits (bounded) until the process answers HTTP on `port`.
    pub async fn wait_up(client: &Client, process: &mut Process, port: u16) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while client.try_get(&format!("http://127.0.0.1:{port}/healthz")).await.is_none() {
            // Exited: another process may hold the port this test picked.
            if !process.running() {
                let logs = String::from_utf8_lossy(&process.logs.lock().unwrap()).into_owned();
                panic!("relay exited before answering on port {port}: {logs}");
            }
            assert!(tokio::time::Instant::now() < deadline, "relay did not start on port {port}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// SIGTERM, wait for the exit, and return what it logged.
    pub fn stop(process: Process) -> String {
        process.signal("TERM");
        process.wait().1
    }

    /// A config folder with `hookrelay.yaml` in it.
    pub struct Folder {
        pub dir: tempfile::TempDir,
    }

    impl Folder {
        pub fn new(yaml: &str) -> Folder {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("hookrelay.yaml"), yaml).unwrap();
            Folder { dir }
        }

        pub fn config(&self) -> PathBuf {
            self.dir.path().join("hookrelay.yaml")
        }

        pub fn write(&self, yaml: &str) {
            let temporary = self.dir.path().join(".hookrelay.yaml.new");
            std::fs::write(&temporary, yaml).unwrap();
            std::fs::rename(&temporary, self.config()).unwrap();
        }
    }
}

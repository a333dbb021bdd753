//! The pooled HTTP(S) clients shared by every target and by the sidecar proxy: keep-alive,
//! HTTP/1.1 and HTTP/2 (ALPN), rustls with the ring provider. Trusted targets (YAML routes,
//! `upstream:`) use the plain client (from a connection thread, that thread's own pool of
//! it); untrusted ones (API routes) go through the guard.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use rustls_pki_types::CertificateDer;
use tokio::time::Instant;

use crate::delivery::guard::{check_literal_host, PublicOnly, Refused};
use crate::delivery::request::WireRequest;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;
pub type HttpClient = Client<ConnectOn<HttpsConnector<HttpConnector>>, Body>;
type GuardedClient = Client<ConnectOn<HttpsConnector<HttpConnector<PublicOnly>>>, Body>;

/// Both clients, one connection pool each; and, for trusted sends made on a connection
/// thread, a pool of that thread's own (see [`Outbound::this_threads`]).
#[derive(Clone)]
pub struct Outbound {
    pub trusted: HttpClient,
    guarded: GuardedClient,
    tls: rustls::ClientConfig,
    /// Tells this relay's thread pools from another's (tests run several in one process).
    owner: Arc<()>,
    /// In the engine's paused-time tests, an in-process receiver answers instead of the
    /// network (real sockets would let tokio's paused clock run ahead of them).
    #[cfg(test)]
    receiver: Option<InProcessReceiver>,
}

/// Answers a request in-process; see [`Outbound::receiver`].
#[cfg(test)]
pub type InProcessReceiver =
    std::sync::Arc<dyn Fn(&WireRequest) -> futures_util::future::BoxFuture<'static, http::Response<Bytes>> + Send + Sync>;

impl Outbound {
    /// Trusting the public web roots plus `extra_roots` (an internal CA).
    pub fn build(extra_roots: &[CertificateDer<'static>]) -> Result<Outbound, ClientError> {
        let tls = crate::tls::client_config(extra_roots)?;
        Ok(Outbound {
            trusted: pooled(HttpConnector::new(), tls.clone(), POOL_IDLE_TIMEOUT, SHARED_IDLE_PER_HOST),
            guarded: pooled(HttpConnector::new_with_resolver(PublicOnly::default()), tls.clone(), POOL_IDLE_TIMEOUT, SHARED_IDLE_PER_HOST),
            tls,
            owner: Arc::new(()),
            #[cfg(test)]
            receiver: None,
        })
    }

    /// Every attempt answered by `receiver` instead of the network.
    #[cfg(test)]
    pub fn answered_in_process(receiver: InProcessReceiver) -> Outbound {
        let mut outbound = Outbound::build(&[]).expect("the default TLS roots load");
        outbound.receiver = Some(receiver);
        outbound
    }

    /// Sends one rendered request; `trusted: false` refuses private destinations.
    async fn send(&self, trusted: bool, outgoing: &WireRequest, timeout: Duration) -> Result<http::Response<Incoming>, SendError> {
        if trusted {
            // Plain HTTP only: a TLS handshake would hold up the connections on the thread.
            let this_threads = if outgoing.url.starts_with("http://") { self.this_threads() } else { None };
            return match this_threads {
                Some(pool) => send_with(&pool, outgoing, timeout).await,
                None => send_with(&self.trusted, outgoing, timeout).await,
            };
        }
        check_literal_host(&outgoing.url).map_err(|refused| SendError::Refused(refused.to_string()))?;
        send_with(&self.guarded, outgoing, timeout).await
    }

    /// One attempt, with the answer body read (and cut) for the record.
    /// Sends and reads the answer (up to `max_answer` bytes), all within `timeout`.
    pub async fn attempt(&self, trusted: bool, outgoing: &WireRequest, timeout: Duration, max_answer: usize) -> Attempt {
        #[cfg(test)]
        if let Some(receiver) = &self.receiver {
            let answered = async {
                match tokio::time::timeout(timeout, receiver(outgoing)).await {
                    Ok(answer) => Ok(answer.map(Full::new)),
                    Err(_) => Err(SendError::Timeout(timeout)),
                }
            };
            return attempt_by(answered, timeout, max_answer).await;
        }
        attempt_by(self.send(trusted, outgoing, timeout), timeout, max_answer).await
    }
}

thread_local! {
    /// A connection thread's own pools, one per relay (its [`Outbound`]); empty elsewhere.
    static THREAD_POOLS: RefCell<Vec<(Weak<()>, HttpClient)>> = const { RefCell::new(Vec::new()) };
    /// Whether this thread is a connection thread (see [`serve_connections_here`]).
    static CONNECTION_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as a connection thread: its trusted plain-HTTP sends go
/// through a pool of its own. Called by each connection shard's thread as it starts.
pub fn serve_connections_here() {
    CONNECTION_THREAD.set(true);
}

impl Outbound {
    /// On a connection thread, a pool of this thread's own for trusted plain-HTTP sends: its
    /// connections are opened and driven here, so a sync route's send from a connection with
    /// no target connection of its own yet (a sender that opens one per webhook) does not
    /// hop to the shared runtime and back. None elsewhere: the shared runtime's sends use
    /// the shared pool.
    fn this_threads(&self) -> Option<HttpClient> {
        if !CONNECTION_THREAD.try_with(Cell::get).unwrap_or(false) {
            return None;
        }
        THREAD_POOLS
            .try_with(|pools| {
                let mut pools = pools.borrow_mut();
                if let Some((_, pool)) = pools.iter().find(|(owner, _)| owner.as_ptr() == Arc::as_ptr(&self.owner)) {
                    return pool.clone();
                }
                // A relay stopped in this process (tests run several) leaves its pool behind.
                pools.retain(|(owner, _)| owner.strong_count() > 0);
                let pool = pooled(HttpConnector::new(), self.tls.clone(), POOL_IDLE_TIMEOUT, THREAD_IDLE_PER_HOST);
                pools.push((Arc::downgrade(&self.owner), pool.clone()));
                pool
            })
            .ok()
    }
}

/// One attempt made by `send` (through the pool, or over a connection of the caller's
/// own), with the answer read within what is left of `timeout`.
pub async fn attempt_by<B>(
    send: impl Future<Output = Result<http::Response<B>, SendError>>,
    timeout: Duration,
    max_answer: usize,
) -> Attempt
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let started = Instant::now();
    let sent = send.await;
    read_answer(sent, started, started + timeout, timeout, max_answer).await
}

/// Answer bodies kept for the record are cut here.
pub const MAX_RECORDED_ANSWER: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
}

/// How long a pooled connection may sit unused before the pool closes it.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections the shared pools keep per destination.
const SHARED_IDLE_PER_HOST: usize = 256;
/// Idle connections a connection thread's pool keeps per destination: it serves only the
/// sends of connections that have no target connection of their own yet.
const THREAD_IDLE_PER_HOST: usize = 16;

fn pooled<R>(
    mut http: HttpConnector<R>,
    tls: rustls::ClientConfig,
    idle_timeout: Duration,
    idle_per_host: usize,
) -> Client<ConnectOn<HttpsConnector<HttpConnector<R>>>, Body>
where
    R: tower_service::Service<hyper_util::client::legacy::connect::dns::Name> + Clone + Send + Sync + 'static,
    R::Response: Iterator<Item = std::net::SocketAddr>,
    R::Error: Into<BoxError>,
    R::Future: Send,
{
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let connector =
        hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().enable_http2().wrap_connector(http);
    let runtime = BuildersRuntime::current();
    let connector = ConnectOn { connector, runtime: runtime.clone() };
    // Without a timer the pool only drops an expired connection when the same destination
    // is asked for again: connections to a target nobody sends to any more stayed open.
    Client::builder(runtime)
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .pool_idle_timeout(idle_timeout)
        .pool_max_idle_per_host(idle_per_host)
        .build(connector)
}

/// Runs a pool's connections on the runtime that built the pool (the shared one), not on
/// the thread of whichever request first asked for one: a connection every sender may get
/// must not wait for a connection shard busy with one request, nor end with a shard.
#[derive(Clone)]
struct BuildersRuntime(Option<tokio::runtime::Handle>);

impl BuildersRuntime {
    fn current() -> BuildersRuntime {
        BuildersRuntime(tokio::runtime::Handle::try_current().ok())
    }
}

impl<F> hyper::rt::Executor<F> for BuildersRuntime
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, work: F) {
        match &self.0 {
            Some(runtime) => runtime.spawn(work),
            None => tokio::spawn(work),
        };
    }
}

/// Opens a pool's connections on its [`BuildersRuntime`]: a socket belongs to the reactor
/// of the runtime it was opened on, so one opened on a connection shard would be driven by
/// that shard's thread whichever runtime polls it.
#[derive(Clone)]
pub struct ConnectOn<C> {
    connector: C,
    runtime: BuildersRuntime,
}

impl<C> tower_service::Service<http::Uri> for ConnectOn<C>
where
    C: tower_service::Service<http::Uri>,
    C::Future: Send + 'static,
    C::Response: Send + 'static,
    C::Error: Into<BoxError> + Send + 'static,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        self.connector.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, destination: http::Uri) -> Self::Future {
        let connecting = self.connector.call(destination);
        match &self.runtime.0 {
            Some(runtime) => {
                let connecting = runtime.spawn(connecting);
                Box::pin(async move {
                    match connecting.await {
                        Ok(connected) => connected.map_err(Into::into),
                        Err(stopped) => Err(Box::new(stopped) as BoxError),
                    }
                })
            }
            None => Box::pin(async move { connecting.await.map_err(Into::into) }),
        }
    }
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// Why a send did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Refused(String),
}

impl SendError {
    /// A request that could not even be built will not improve by waiting.
    pub fn retryable(&self) -> bool {
        !matches!(self, SendError::Invalid(_) | SendError::Refused(_))
    }
}

async fn send_with<C>(client: &Client<C, Body>, outgoing: &WireRequest, timeout: Duration) -> Result<http::Response<Incoming>, SendError>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let mut builder = http::Request::builder().method(outgoing.method.clone()).uri(outgoing.url.as_str());
    if let Some(headers) = builder.headers_mut() {
        headers.extend(outgoing.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    let request = builder.body(full(outgoing.body.clone())).map_err(|err| SendError::Invalid(err.to_string()))?;
    match tokio::time::timeout(timeout, client.request(request)).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(err)) => Err(classify(&err)),
        Err(_) => Err(SendError::Timeout(timeout)),
    }
}

/// A refusal by the guard surfaces as a connect error; keep it recognisable (and final).
fn classify(err: &hyper_util::client::legacy::Error) -> SendError {
    match Refused::find(err) {
        Some(refused) => SendError::Refused(refused.to_string()),
        None => SendError::Connect(error_chain(err)),
    }
}

/// The outcome of one attempt, with the answer body read (and cut) for the record.
#[derive(Debug)]
pub struct Attempt {
    pub status: Option<u16>,
    pub headers: http::HeaderMap,
    pub answer: Bytes,
    pub retry_after: Option<Duration>,
    pub error: Option<String>,
    /// Without an answer: whether trying again can help.
    pub retryable: bool,
    /// The request or its answer ran out of time (as opposed to a connection failure).
    pub timed_out: bool,
    pub duration: Duration,
}

async fn read_answer<B>(
    sent: Result<http::Response<B>, SendError>,
    started: Instant,
    deadline: Instant,
    timeout: Duration,
    max_answer: usize,
) -> Attempt
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let response = match sent {
        Ok(response) => response,
        Err(err) => {
            return Attempt {
                status: None,
                headers: http::HeaderMap::new(),
                answer: Bytes::new(),
                retry_after: None,
                retryable: err.retryable(),
                timed_out: matches!(err, SendError::Timeout(_)),
                error: Some(err.to_string()),
                duration: started.elapsed(),
            }
        }
    };
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let retry_after = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let remaining = deadline.saturating_duration_since(Instant::now());
    let body = Limited::new(response.into_body(), max_answer);
    let (answer, error) = match tokio::time::timeout(remaining, body.collect()).await {
        Ok(Ok(collected)) => (collected.to_bytes(), None),
        Ok(Err(err)) => (Bytes::new(), Some(format!("answer body not fully read: {err}"))),
        Err(_) => (Bytes::new(), Some(format!("answer body timed out after {timeout:?}"))),
    };
    Attempt { status: Some(status), headers, answer, retry_after, error, retryable: true, timed_out: false, duration: started.elapsed() }
}

impl Attempt {
    /// An attempt that could not be made (the request could not be signed): final.
    pub fn failed_before_sending(error: String) -> Attempt {
        Attempt {
            status: None,
            headers: http::HeaderMap::new(),
            answer: Bytes::new(),
            retry_after: None,
            retryable: false,
            timed_out: false,
            error: Some(error),
            duration: Duration::ZERO,
        }
    }
}

/// Header pairs as text, for the store and the API.
pub fn header_pairs(headers: &http::HeaderMap) -> Vec<(String, String)> {
    headers.iter().map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect()
}

/// The error and its causes on one line: hyper's top-level messages alone say little.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    use super::*;

    #[tokio::test]
    async fn a_pooled_connection_left_idle_is_closed_by_the_pool() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (closed, connection_ended) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let answer = service_fn(|_| async { Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok")))) });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), answer).await;
            let _ = closed.send(());
        });
        let client =
            pooled(HttpConnector::new(), crate::tls::client_config(&[]).unwrap(), Duration::from_millis(200), SHARED_IDLE_PER_HOST);
        let request = http::Request::post(format!("http://{address}/")).body(full("hello")).unwrap();
        let answer = client.request(request).await.unwrap();
        assert_eq!(answer.into_body().collect().await.unwrap().to_bytes(), "ok");

        // The client stays alive and unused: only the pool's own timer can close the connection.
        let ended = tokio::time::timeout(Duration::from_secs(5), connection_ended).await;
        assert!(ended.is_ok(), "the idle pooled connection was still open 5 s after its last use");
        drop(client);
    }

    /// Trusted sends made on a connection thread go through that
    /// thread's own pool: one connection for consecutive sends, opened and driven on that
    /// thread, so it ends with the thread's runtime. Sends from the shared runtime keep
    /// using the shared pool, whose connections outlive any connection thread.
    #[test]
    fn sends_from_a_connection_thread_use_its_own_pool() {
        let shared = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let (outbound, address, mut ended) = shared.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let (ended, ended_now) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let ended = ended.clone();
                    tokio::spawn(async move {
                        let answer =
                            service_fn(|_| async { Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok")))) });
                        let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), answer).await;
                        let _ = ended.send(());
                    });
                }
            });
            (Outbound::build(&[]).unwrap(), address, ended_now)
        });
        let wire = WireRequest::bare(crate::delivery::request::OutgoingRequest {
            route: "r".into(),
            target: "t".into(),
            ordered_key: None,
            method: http::Method::POST,
            url: format!("http://{address}/"),
            headers: http::HeaderMap::new(),
            body: Bytes::from_static(b"hello"),
        });
        let connection_thread = {
            let (outbound, wire) = (outbound.clone(), wire.clone());
            std::thread::spawn(move || {
                serve_connections_here();
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(async {
                    for _ in 0..3 {
                        let answered = outbound.attempt(true, &wire, Duration::from_secs(5), 1024).await;
                        assert_eq!((answered.status, &answered.answer[..]), (Some(200), &b"ok"[..]), "{:?}", answered.error);
                    }
                });
            })
        };
        connection_thread.join().unwrap();
        shared.block_on(async {
            let first = tokio::time::timeout(Duration::from_secs(5), ended.recv()).await;
            assert!(first.is_ok(), "the connection thread's connection outlived its runtime");
            // Three sends, one connection: no other one ends.
            assert!(tokio::time::timeout(Duration::from_millis(200), ended.recv()).await.is_err());
            // From the shared runtime: the shared pool, whose connection stays open.
            let answered = outbound.attempt(true, &wire, Duration::from_secs(5), 1024).await;
            assert_eq!(answered.status, Some(200), "{:?}", answered.error);
            assert!(tokio::time::timeout(Duration::from_millis(200), ended.recv()).await.is_err());
        });
    }
}

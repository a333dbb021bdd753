//! The ingress listener's connections: accepting (backing off when the process is out of
//! file descriptors), the connection cap, TLS handshakes, the idle deadline and graceful
//! shutdown. What happens to each request is [`crate::ingress::handle`]'s business.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::delivery::client::{self, Body};
use crate::delivery::link::UpstreamLink;
use crate::relay::Relay;
use crate::respond::retry_later;
use crate::settings::Limits;
use crate::shards::Shards;

/// Who sent a request, and over what.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: SocketAddr,
    pub tls: bool,
}

impl Peer {
    pub fn scheme(self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }
}

/// Why a request's Host is ambiguous, if it is: two Host headers (or a list in one), an
/// HTTP/1.1 request without one, or an HTTP/2 `:authority` that names another host.
pub fn host_problem<B>(request: &Request<B>) -> Option<&'static str> {
    let mut hosts = request.headers().get_all(http::header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() || host.is_some_and(|h| h.as_bytes().contains(&b',')) {
        return Some("more than one Host");
    }
    if host.is_none() && request.version() == http::Version::HTTP_11 {
        return Some("an HTTP/1.1 request needs a Host header");
    }
    match (host, request.uri().authority()) {
        (Some(host), Some(authority)) if !host.as_bytes().eq_ignore_ascii_case(authority.as_str().as_bytes()) => {
            Some("Host and :authority name different hosts")
        }
        _ => None,
    }
}

/// How one listener treats its connections.
pub struct Listener {
    pub listener: TcpListener,
    pub acceptor: Option<tokio_rustls::TlsAcceptor>,
    /// Connections open at once; more are answered 503 and closed.
    pub max_connections: usize,
    pub limits: Limits,
    /// Where connections are served: on the shards, or (none) on the runtime accepting them.
    pub shards: Option<Arc<Shards>>,
}

/// Serves a listener until `shutdown` turns true, then stops accepting and lets in-flight
/// requests finish for up to `limits.shutdown_grace`. Each request goes to `handle`. The
/// ingress and admin listeners both run here, so both have the idle deadline, the
/// connection cap and the accept backoff.
pub async fn serve<H, F>(served: Listener, relay: Arc<Relay>, mut shutdown: watch::Receiver<bool>, handle: H)
where
    H: Fn(Arc<Relay>, Request<Incoming>, Peer) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let Listener { listener, acceptor, max_connections, limits, shards } = served;
    let builder = Arc::new(connection_builder(&limits));
    let connections = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    // Turned true when the grace is over: every connection still open ends at once, so no
    // answer goes out after the relay has moved on to closing its store.
    let (closing, closed) = watch::channel(false);
    let mut backoff = AcceptBackoff::default();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => {
                    backoff.succeeded();
                    pair
                }
                Err(err) => {
                    backoff.failed(&err).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            crate::metrics::count_limit("max_connections");
            tokio::spawn(refuse_busy(stream));
            continue;
        };
        crate::metrics::connection_opened();
        let relay = relay.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let mut closed = closed.clone();
        let acceptor = acceptor.clone();
        let idle_limit = limits.header_timeout;
        let handle = handle.clone();
        let offload = shards.clone();
        let connection = move |stream: TcpStream| async move {
            let peer = Peer { addr: peer, tls: acceptor.is_some() };
            let activity = Arc::new(Activity::new());
            let link = UpstreamLink::new();
            let service = {
                let activity = activity.clone();
                let link = link.clone();
                service_fn(move |mut request: Request<Incoming>| {
                    link.request_arrived();
                    request.extensions_mut().insert(link.clone());
                    let busy = activity.begin();
                    let elsewhere = offload.as_ref().and_then(|shards| shards.elsewhere_for(&request));
                    let answer = handle(relay.clone(), request, peer);
                    async move {
                        let answer = match elsewhere {
                            Some(runtime) => crate::shards::run_on(&runtime, answer)
                                .await
                                .unwrap_or_else(|stopping| retry_later(StatusCode::SERVICE_UNAVAILABLE, &stopping.to_string(), None, 1)),
                            None => answer.await,
                        };
                        Ok::<_, std::convert::Infallible>(busy.until_sent(answer))
                    }
                })
            };
            // The idle deadline counts from accept: a TLS handshake and the first request's
            // headers must both fit in it, as must the next request after each answer.
            let served = tokio::select! {
                served = async {
                    match acceptor {
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(tls) => watcher.watch(builder.serve_connection(TokioIo::new(tls), service)).await,
                            Err(err) => {
                                tracing::debug!(error = %err, "TLS handshake failed");
                                Ok(())
                            }
                        },
                        None => watcher.watch(builder.serve_connection(TokioIo::new(stream), service)).await,
                    }
                } => served,
                () = activity.idle_for(idle_limit) => {
                    crate::metrics::count_limit("idle_connection");
                    Ok(())
                }
                () = link.drive() => Ok(()),
                _ = closed.wait_for(|closed| *closed) => Ok(()),
            };
            if let Err(err) = served {
                tracing::debug!(error = %client::error_chain(err.as_ref()), "connection ended with an error");
            }
            drop(permit);
            crate::metrics::connection_closed();
        };
        match &shards {
            Some(shards) => {
                if let Err(err) = shards.serve(stream, connection) {
                    // The permit went with the closure, and the socket is closed.
                    tracing::debug!(error = %err, "an accepted connection could not be handed to a shard");
                    crate::metrics::connection_closed();
                }
            }
            None => {
                tokio::spawn(connection(stream));
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(grace = ?limits.shutdown_grace, "connections still open after the shutdown grace; closing them");
        let _ = closing.send(true);
        // Each ends at its next poll, a request's work included.
        let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(CLOSING, connections.acquire_many(all)).await;
    }
}

/// How long connections closed at the end of the grace may take to end.
const CLOSING: Duration = Duration::from_secs(1);

/// File descriptors the relay needs besides its connections (store, listeners, outbound
/// pools, watched folders).
const SPARE_DESCRIPTORS: u64 = 256;

/// Raises the soft open-files limit toward the hard one, as servers do, and says at
/// startup when `limits.max_connections` cannot be reached under it.
pub fn raise_descriptor_limit(max_connections: usize) {
    let wanted = u64::try_from(max_connections).unwrap_or(u64::MAX).saturating_add(SPARE_DESCRIPTORS);
    match rlimit::increase_nofile_limit(wanted) {
        Ok(limit) if limit < wanted => tracing::warn!(
            open_files = limit,
            max_connections,
            "limits.max_connections is more than the open-files limit allows; accept will fail (and back off) before the cap is reached"
        ),
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "cannot read or raise the open-files limit"),
    }
}

fn connection_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// Whether a connection is doing anything: requests being handled or answers being sent,
/// and since when it has been idle (from accept, then from the end of the last answer).
struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `started` when the connection last became idle.
    idle_since_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity { started: Instant::now(), in_flight: AtomicUsize::new(0), idle_since_ms: AtomicU64::new(0) }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// Resolves once the connection has had nothing in flight for `limit`. Requests do
    /// not touch the timer: it is looked at when it fires and set again to when the
    /// connection could next have been idle that long.
    async fn idle_for(&self, limit: Duration) {
        let mut deadline = self.started + limit;
        loop {
            tokio::time::sleep_until(deadline).await;
            if self.in_flight.load(Ordering::Acquire) > 0 {
                deadline = Instant::now() + limit;
                continue;
            }
            let idle_since = self.started + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
            if idle_since + limit <= Instant::now() {
                return;
            }
            deadline = idle_since + limit;
        }
    }
}

/// One request in flight on a connection; the connection is idle again when the answer's
/// body has been sent (or dropped).
struct Busy(Arc<Activity>);

impl Busy {
    fn until_sent(self, response: Response<Body>) -> Response<Body> {
        let (parts, body) = response.into_parts();
        let body = body.map_frame(move |frame| {
            let _in_flight = &self;
            frame
        });
        Response::from_parts(parts, body.boxed())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let activity = &self.0;
        let since = u64::try_from(activity.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        activity.idle_since_ms.store(since, Ordering::Release);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `accept` failing because the process or system is out of file descriptors (or memory)
/// would otherwise spin: back off from 10 ms to 1 s, log once per second with a count.
#[derive(Default)]
struct AcceptBackoff {
    delay: Option<Duration>,
    failures_since_log: u64,
    last_log: Option<Instant>,
}

impl AcceptBackoff {
    fn succeeded(&mut self) {
        self.delay = None;
    }

    async fn failed(&mut self, err: &std::io::Error) {
        ::metrics::counter!(crate::metrics::ACCEPT_ERRORS).increment(1);
        self.failures_since_log += 1;
        if self.last_log.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            tracing::warn!(error = %err, failures = self.failures_since_log, "accept failed");
            self.failures_since_log = 0;
            self.last_log = Some(Instant::now());
        }
        // Errors about one aborted connection are not a resource shortage: go on at once.
        if matches!(
            err.kind(),
            std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::Interrupted
        ) {
            return;
        }
        let delay = self.delay.map_or(Duration::from_millis(10), |delay| (delay * 2).min(Duration::from_secs(1)));
        self.delay = Some(delay);
        tokio::time::sleep(delay).await;
    }
}

/// Why a connection is answered before any handler sees its request.
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub enum Refusal {
    /// Over `limits.max_connections`.
    #[error("too many connections")]
    TooManyConnections,
}

impl Refusal {
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::TooManyConnections => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// When the sender should try again, in seconds.
    fn retry_after(self) -> u64 {
        match self {
            Refusal::TooManyConnections => 1,
        }
    }

    pub fn into_response(self) -> Response<Body> {
        retry_later(self.status(), &self.to_string(), None, self.retry_after())
    }
}

/// Over `limits.max_connections`: answer 503 on this connection and close it, so the
/// sender backs off instead of hanging.
async fn refuse_busy(stream: TcpStream) {
    // Either listener: the admin one's answers carry its security headers, refusals too.
    let service = service_fn(|_request: Request<Incoming>| async {
        let mut refused = Refusal::TooManyConnections.into_response();
        crate::respond::secure(&mut refused);
        Ok::<_, std::convert::Infallible>(refused)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.keep_alive(false).timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(2));
    let _ = tokio::time::timeout(Duration::from_secs(5), builder.serve_connection(TokioIo::new(stream), service)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_counts_from_accept_and_from_the_end_of_each_answer() {
        let activity = Arc::new(Activity::new());
        let limit = Duration::from_secs(10);
        let start = Instant::now();
        activity.idle_for(limit).await;
        assert_eq!(start.elapsed(), limit, "idle from accept");

        let activity = Arc::new(Activity::new());
        let watching = {
            let activity = activity.clone();
            tokio::spawn(async move { activity.idle_for(limit).await })
        };
        tokio::time::sleep(Duration::from_secs(4)).await;
        let busy = activity.begin();
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!watching.is_finished(), "a request in flight is not idle, however long");
        drop(busy);
        let answered = Instant::now();
        watching.await.unwrap();
        assert_eq!(answered.elapsed(), limit, "idle again from the end of the answer");
    }
}

//! One upstream connection per downstream HTTP/1 connection, driven inside that
//! connection's own task, so a request sent on (proxied, or a sync route's send) costs no
//! hand-off between tasks, no pool lock and no spawned task. HTTP/2 senders, `https`
//! services and targets use the shared pool.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::header::{HeaderValue, HOST};
use http::uri::{PathAndQuery, Scheme, Uri};
use http::{Method, Request, Response};
use hyper::body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::delivery::client::{error_chain, full, Body, SendError};
use crate::delivery::request::WireRequest;

/// As long as the shared pool waits for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type Driver = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The upstream side of one downstream connection. Requests on an HTTP/1 connection come
/// one after another, so one upstream connection serves them all.
#[derive(Default)]
pub struct UpstreamLink {
    /// The idle sender and the `host:port` it is connected to (the upstream may change on
    /// reload).
    idle: Mutex<Option<(Arc<str>, SendRequest<Body>)>>,
    /// A connection just made, waiting for [`UpstreamLink::drive`] to take it over.
    made: Mutex<Option<Driver>>,
    made_signal: Notify,
    /// Requests the downstream connection has carried (counted up to 2).
    requests: AtomicU32,
}

impl UpstreamLink {
    pub fn new() -> Arc<UpstreamLink> {
        Arc::new(UpstreamLink::default())
    }

    /// Counts a request arriving on the downstream connection.
    pub fn request_arrived(&self) {
        if self.requests.load(Ordering::Relaxed) < 2 {
            self.requests.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether a send to `authority` may go over the link: its downstream connection has
    /// carried more than one request (a sender that opens a connection per webhook is
    /// better served by the pool's warm connections than by a new one each time), and the
    /// link is not connected to another service (the proxy's, say).
    pub fn takes(&self, authority: &str) -> bool {
        self.requests.load(Ordering::Relaxed) > 1
            && self.idle.lock().unwrap_or_else(PoisonError::into_inner).as_ref().is_none_or(|(connected, _)| &**connected == authority)
    }

    /// Sends a trusted target's rendered request over the link, when the link takes it (see
    /// [`UpstreamLink::takes`]) and it is plain HTTP; None leaves it to the pool.
    pub fn sending<'a>(
        &'a self,
        outgoing: &'a WireRequest,
        timeout: Duration,
    ) -> Option<impl Future<Output = Result<Response<Incoming>, SendError>> + 'a> {
        let plain = PlainHttp::of(&outgoing.url).filter(|plain| self.takes(&plain.connect))?;
        Some(async move {
            let mut request = Request::new(full(outgoing.body.clone()));
            *request.method_mut() = outgoing.method.clone();
            *request.uri_mut() = plain.origin_form;
            *request.headers_mut() = outgoing.headers.clone();
            request.headers_mut().entry(HOST).or_insert(plain.host);
            match tokio::time::timeout(timeout, self.send(&plain.connect, request)).await {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(err)) => Err(SendError::Connect(err.to_string())),
                Err(_) => Err(SendError::Timeout(timeout)),
            }
        })
    }

    /// Drives the link's upstream connection. It never ends: run it beside the downstream
    /// connection and drop it with it (which closes the upstream connection).
    pub async fn drive(&self) {
        let mut current: Option<Driver> = None;
        loop {
            if let Some(made) = self.made.lock().unwrap_or_else(PoisonError::into_inner).take() {
                current = Some(made);
            }
            match current.as_mut() {
                Some(connection) => tokio::select! {
                    () = connection => current = None,
                    () = self.made_signal.notified() => {}
                },
                None => self.made_signal.notified().await,
            }
        }
    }

    /// Sends `request` (origin-form, with its Host) to `authority` over the link's
    /// connection, making one when there is none or it was closed. A request the reused
    /// connection could not take (the service had just closed it) goes once more over a
    /// fresh one.
    pub async fn send(&self, authority: &str, request: Request<Body>) -> Result<Response<Incoming>, LinkError> {
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner).take();
        let (authority, mut sender, reused) = match idle {
            Some((connected, sender)) if &*connected == authority && !sender.is_closed() => (connected, sender, true),
            _ => {
                let authority: Arc<str> = Arc::from(authority);
                let sender = self.connect(&authority).await?;
                (authority, sender, false)
            }
        };
        // The service may close a kept-alive connection just as a request goes out on it; a
        // safe request without a body can then go again. Only safe ones: hyper cannot tell
        // "closed unanswered" from "closed mid-answer", and a DELETE seen twice is not safe.
        let again = if reused { Replayable::of(&request) } else { None };
        let request = match sender.ready().await {
            Ok(()) => match sender.try_send_request(request).await {
                Ok(response) => {
                    *self.idle.lock().unwrap_or_else(PoisonError::into_inner) = Some((authority, sender));
                    return Ok(response);
                }
                Err(mut err) => match err.take_message() {
                    Some(request) if reused => request,
                    _ => {
                        let error = err.into_error();
                        match again {
                            Some(again) if error.is_incomplete_message() || error.is_closed() => again.request(),
                            _ => return Err(LinkError::Send(error)),
                        }
                    }
                },
            },
            Err(_) if reused => request,
            Err(err) => return Err(LinkError::Send(err)),
        };
        let mut sender = self.connect(&authority).await?;
        sender.ready().await.map_err(LinkError::Send)?;
        let response = sender.send_request(request).await.map_err(LinkError::Send)?;
        *self.idle.lock().unwrap_or_else(PoisonError::into_inner) = Some((authority, sender));
        Ok(response)
    }

    async fn connect(&self, authority: &str) -> Result<SendRequest<Body>, LinkError> {
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(authority)).await {
            Ok(connected) => connected.map_err(LinkError::Connect)?,
            Err(_) => return Err(LinkError::Connect(std::io::Error::new(std::io::ErrorKind::TimedOut, "connection timed out"))),
        };
        stream.set_nodelay(true).map_err(LinkError::Connect)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(LinkError::Send)?;
        let driver: Driver = Box::pin(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %error_chain(&err), "upstream connection ended with an error");
            }
        });
        *self.made.lock().unwrap_or_else(PoisonError::into_inner) = Some(driver);
        self.made_signal.notify_one();
        Ok(sender)
    }
}

/// Why a send over a link got no answer, in the words of the shared pool's errors, so that
/// an answer or a delivery log reads the same whichever way the request went.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("client error (Connect): tcp connect error: {0}")]
    Connect(std::io::Error),
    #[error("client error (SendRequest): {}", error_chain(.0))]
    Send(hyper::Error),
}

/// A plain-HTTP URL taken apart for a link: where to connect, the request's Host and its
/// origin-form target (as the pool would send them).
struct PlainHttp {
    /// `host:port`.
    connect: String,
    host: HeaderValue,
    origin_form: Uri,
}

impl PlainHttp {
    /// None for `https`, for a URL with credentials in it, or one that does not parse.
    fn of(url: &str) -> Option<PlainHttp> {
        let uri: Uri = url.parse().ok()?;
        let authority = uri.authority().filter(|authority| !authority.as_str().contains('@'))?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            return None;
        }
        let (connect, host) = match authority.port_u16() {
            Some(port) if port != 80 => (authority.as_str().to_string(), authority.as_str()),
            port => (format!("{}:{}", authority.host(), port.unwrap_or(80)), authority.host()),
        };
        let host = HeaderValue::from_str(host).ok()?;
        let mut parts = uri.into_parts();
        parts.scheme = None;
        parts.authority = None;
        parts.path_and_query = Some(parts.path_and_query.unwrap_or_else(|| PathAndQuery::from_static("/")));
        let origin_form = Uri::from_parts(parts).ok()?;
        Some(PlainHttp { connect, host, origin_form })
    }
}

/// What it takes to send a bodiless safe request again.
struct Replayable {
    method: Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
}

impl Replayable {
    fn of(request: &Request<Body>) -> Option<Replayable> {
        let safe = matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE);
        (safe && request.body().is_end_stream()).then(|| Replayable {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: request.headers().clone(),
        })
    }

    fn request(self) -> Request<Body> {
        let mut request = Request::new(full(bytes::Bytes::new()));
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers;
        request
    }
}

//! One upstream connection per downstream HTTP/1 connection, driven inside that
//! connection's own task, so a proxied request costs no hand-off between tasks, no pool
//! lock and no spawned task. HTTP/2 senders and `https` services use the shared pool.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::{Method, Request, Response};
use hyper::body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::delivery::client::{Body, BoxError};

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
}

impl UpstreamLink {
    pub fn new() -> Arc<UpstreamLink> {
        Arc::new(UpstreamLink::default())
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
    pub async fn send(&self, authority: &str, request: Request<Body>) -> Result<Response<Incoming>, BoxError> {
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
                            _ => return Err(error.into()),
                        }
                    }
                },
            },
            Err(_) if reused => request,
            Err(err) => return Err(err.into()),
        };
        let mut sender = self.connect(&authority).await?;
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        *self.idle.lock().unwrap_or_else(PoisonError::into_inner) = Some((authority, sender));
        Ok(response)
    }

    async fn connect(&self, authority: &str) -> Result<SendRequest<Body>, BoxError> {
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(authority)).await {
            Ok(connected) => connected.map_err(|err| format!("cannot connect to {authority}: {err}"))?,
            Err(_) => return Err(format!("cannot connect to {authority}: timed out after {CONNECT_TIMEOUT:?}").into()),
        };
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let driver: Driver = Box::pin(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %crate::delivery::client::error_chain(&err), "upstream connection ended with an error");
            }
        });
        *self.made.lock().unwrap_or_else(PoisonError::into_inner) = Some(driver);
        self.made_signal.notify_one();
        Ok(sender)
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
        let mut request = Request::new(crate::delivery::client::full(bytes::Bytes::new()));
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers;
        request
    }
}

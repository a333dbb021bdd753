//! The sidecar proxy: requests no route takes go to `upstream` unchanged, bodies streamed
//! both ways. Only hop-by-hop headers are dropped and `X-Forwarded-*` added.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Frame;

use super::IngressError;
use crate::delivery::client::{error_chain, Body, BoxError, HttpClient};
use crate::delivery::link::UpstreamLink;
use crate::settings::{Limits, Upstream};
use crate::trace::{Trace, TRACEPARENT};

/// `Proxy-Connection` is no standard's but old clients still send it (RFC 9110, 7.6.1: a
/// proxy removes it), and some services read it as `Connection`.
const HOP_BY_HOP: [HeaderName; 9] = [
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// End-to-end headers a sender cannot turn into hop-by-hop ones by naming them in
/// `Connection`: the service routes on `Host`, the body's framing is hyper's business, and
/// the request id and trace are the relay's promise to pass on.
const END_TO_END: [HeaderName; 4] =
    [http::header::HOST, http::header::CONTENT_LENGTH, HeaderName::from_static(super::REQUEST_ID), TRACEPARENT];

/// Removes hop-by-hop headers, including any the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !END_TO_END.contains(name))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Forwards one request to `upstream` and streams the answer back. The request body must
/// arrive within `limits.request_timeout` (else `408`), the service's response headers
/// within `limits.upstream_header_timeout` (else `504`); the response body is never cut.
/// An HTTP/1 request to a plain-HTTP service goes over its connection's `link`; others
/// over the shared pool.
pub async fn forward(
    client: &HttpClient,
    link: Option<&UpstreamLink>,
    upstream: &Upstream,
    request: Request<Body>,
    peer: SocketAddr,
    scheme: &'static str,
    limits: &Limits,
) -> Response<Body> {
    let (mut parts, body) = request.into_parts();
    let expired = Arc::new(AtomicBool::new(false));
    let body = Deadline {
        inner: body,
        deadline: tokio::time::Instant::now() + limits.request_timeout,
        sleep: None,
        done: false,
        expired: expired.clone(),
    };
    // HTTP/2 carries the host in `:authority`: the service still gets it as `Host`.
    let original_host = parts
        .headers
        .get(http::header::HOST)
        .cloned()
        .or_else(|| parts.uri.authority().and_then(|authority| HeaderValue::from_str(authority.as_str()).ok()));
    let path_and_query = parts.uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
    let over_link = match (link, upstream.plain_http_authority()) {
        (Some(link), Some(authority)) if parts.version <= http::Version::HTTP_11 => Some((link, authority)),
        _ => None,
    };
    let target = match over_link {
        Some(_) => upstream.origin_form(path_and_query),
        None => upstream.proxied(path_and_query),
    };
    parts.uri = match target.parse() {
        Ok(uri) => uri,
        Err(err) => return IngressError::Upstream(format!("cannot build the upstream URL: {err}")).counted(),
    };
    parts.version = http::Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    let forwarded_for = match parts.headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(previous) => format!("{previous}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        parts.headers.insert(X_FORWARDED_FOR, value);
    }
    parts.headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
    // A trace the sender started goes on with a span of the relay's; none is started here,
    // so the service's own traffic reaches it as it was sent.
    let trace = parts.extensions.remove::<Trace>().or_else(|| Trace::of(&parts.headers));
    if let Some(trace) = trace {
        parts.headers.insert(TRACEPARENT, trace.traceparent());
    }
    match original_host {
        Some(host) => {
            parts.headers.insert(http::header::HOST, host.clone());
            parts.headers.insert(X_FORWARDED_HOST, host);
        }
        // The pool fills it in from the URL; the link sends what it is given.
        None if over_link.is_some() => {
            if let Ok(host) = HeaderValue::from_str(upstream.authority()) {
                parts.headers.insert(http::header::HOST, host);
            }
        }
        None => {}
    }
    let request = Request::from_parts(parts, body.boxed());
    let sent = async move {
        match over_link {
            Some((link, authority)) => link.send(authority, request).await.map_err(BoxError::from),
            None => client.request(request).await.map_err(BoxError::from),
        }
    };
    let answered = match limits.upstream_header_timeout {
        Some(limit) => tokio::time::timeout(limit, sent).await.map_err(|_| limit),
        None => Ok(sent.await),
    };
    match answered {
        Ok(Ok(response)) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            if let Some(trace) = trace {
                parts.extensions.insert(trace);
            }
            Response::from_parts(parts, body.map_err(Into::into).boxed())
        }
        _ if expired.load(Ordering::Acquire) => IngressError::RequestTimeout(limits.request_timeout).counted(),
        Ok(Err(err)) => {
            tracing::warn!(error = %error_chain(err.as_ref()), "upstream request failed");
            IngressError::Upstream(error_chain(err.as_ref())).counted()
        }
        Err(limit) => IngressError::UpstreamTimeout(limit).counted(),
    }
}

/// A proxied request's body, failed when it has not fully arrived by the deadline, so a
/// sender trickling bytes cannot hold a connection and an upstream request forever. The
/// timer starts only when the body has to be waited for: most bodies are already in.
struct Deadline {
    inner: Body,
    deadline: tokio::time::Instant,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    done: bool,
    expired: Arc<AtomicBool>,
}

impl hyper::body::Body for Deadline {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Pin::new(&mut this.inner).poll_frame(cx);
        }
        if tokio::time::Instant::now() < this.deadline {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(frame)) => return Poll::Ready(Some(frame)),
                Poll::Pending => {
                    let deadline = this.deadline;
                    let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
            }
        }
        this.expired.store(true, Ordering::Release);
        this.done = true;
        Poll::Ready(Some(Err("the request body did not arrive within limits.request_timeout".into())))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

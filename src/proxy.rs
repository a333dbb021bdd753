//! The sidecar proxy: requests no route takes go to `upstream` unchanged, bodies streamed
//! both ways. Only hop-by-hop headers are dropped and `X-Forwarded-*` added.

use std::net::SocketAddr;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;

use crate::config::Upstream;
use crate::delivery::client::{error_chain, Body, HttpClient};
use crate::respond::json_error;

const HOP_BY_HOP: [&str; 8] =
    ["connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade"];

/// Removes hop-by-hop headers, including any the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Forwards one request to `upstream` and streams the answer back.
pub async fn forward(
    client: &HttpClient,
    upstream: &Upstream,
    request: Request<Body>,
    peer: SocketAddr,
    scheme: &'static str,
) -> Response<Body> {
    let (mut parts, body) = request.into_parts();
    let path_and_query = parts.uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
    let base_path = upstream.base.path().trim_end_matches('/');
    let authority = upstream.base.host_str().map(|host| match upstream.base.port() {
        Some(port) if host.contains(':') => format!("[{host}]:{port}"),
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    });
    let Some(authority) = authority else {
        return json_error(StatusCode::BAD_GATEWAY, "upstream has no host", None);
    };
    let uri = format!("{}://{authority}{base_path}{path_and_query}", upstream.base.scheme());
    parts.uri = match uri.parse() {
        Ok(uri) => uri,
        Err(err) => return json_error(StatusCode::BAD_GATEWAY, "cannot build the upstream URL", Some(err.to_string().into())),
    };
    parts.version = http::Version::HTTP_11;
    let original_host = parts.headers.get(http::header::HOST).cloned();
    strip_hop_by_hop(&mut parts.headers);
    let forwarded_for = match parts.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(previous) => format!("{previous}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        parts.headers.insert("x-forwarded-for", value);
    }
    parts.headers.insert("x-forwarded-proto", HeaderValue::from_static(scheme));
    if let Some(host) = original_host {
        parts.headers.insert("x-forwarded-host", host);
    }
    match client.request(Request::from_parts(parts, body)).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, body.map_err(Into::into).boxed())
        }
        Err(err) => {
            tracing::warn!(error = %error_chain(&err), "upstream request failed");
            json_error(StatusCode::BAD_GATEWAY, "upstream unavailable", Some(error_chain(&err).into()))
        }
    }
}

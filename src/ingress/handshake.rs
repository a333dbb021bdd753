//! The CloudEvents webhook validation handshake: an `OPTIONS` request with
//! `WebHook-Request-Origin` to a route that lists `verify.cloudevents_origins` is answered
//! with `WebHook-Allowed-Origin` (and `WebHook-Allowed-Rate`) when the origin is allowed,
//! and refused without those headers (so no consent can be read into it) when not.

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use serde_json::json;

use crate::delivery::client::{self, Body};
use crate::respond::json_response;
use crate::routing::Route;

const REQUEST_ORIGIN: &str = "webhook-request-origin";

/// The answer, when this is a handshake for a route that takes part in it.
pub fn answer<B>(routes: &[Route], request: &Request<B>) -> Option<Response<Body>> {
    if request.method() != Method::OPTIONS {
        return None;
    }
    let origin = request.headers().get(REQUEST_ORIGIN)?;
    let path = request.uri().path();
    let mut opted = routes.iter().filter(|route| !route.cloudevents_origins.is_empty() && route.path.matches(path).is_some()).peekable();
    opted.peek()?;
    let text = origin.to_str().unwrap_or_default().trim();
    let allowing = opted.find(|route| route.cloudevents_origins.iter().any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(text)));
    let Some(route) = allowing else {
        return Some(json_response(StatusCode::FORBIDDEN, &json!({ "error": "origin not allowed", "detail": text })));
    };
    let mut response = Response::new(client::full(Bytes::new()));
    let headers = response.headers_mut();
    headers.insert("webhook-allowed-origin", origin.clone());
    // The route's own inbound limit, in requests per minute; without one, no limit.
    let rate = route
        .ingress_limit
        .as_ref()
        .map_or_else(|| "*".to_string(), |limit| per_minute(limit.spec.cells.get(), limit.spec.per).to_string());
    if let Ok(rate) = HeaderValue::from_str(&rate) {
        headers.insert("webhook-allowed-rate", rate);
    }
    let allow: Vec<&str> = route.methods.iter().map(Method::as_str).collect();
    if let Ok(allow) = HeaderValue::from_str(&allow.join(", ")) {
        headers.insert(http::header::ALLOW, allow);
    }
    Some(response)
}

fn per_minute(cells: u32, per: std::time::Duration) -> u64 {
    let per_second = f64::from(cells) / per.as_secs_f64().max(f64::EPSILON);
    // At least 1: the header's value is a positive integer.
    ((per_second * 60.0).floor() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_given_per_minute() {
        assert_eq!(per_minute(2, std::time::Duration::from_secs(1)), 120);
        assert_eq!(per_minute(600, std::time::Duration::from_secs(3600)), 10);
        assert_eq!(per_minute(1, std::time::Duration::from_secs(3600)), 1);
    }
}

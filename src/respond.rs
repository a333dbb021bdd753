//! The one place errors become HTTP answers (`{"error": "...", "detail": ...}` JSON), and
//! the security headers answers a browser may read carry.

use http::{HeaderValue, Response, StatusCode};
use serde_json::{json, Value};

use crate::delivery::client::{full, Body};

pub fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    // A `Value` always serialises (its keys are strings); straight into bytes, not through `Display`.
    let mut response = Response::new(full(serde_json::to_vec(value).unwrap_or_default()));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub fn json_error(status: StatusCode, error: &str, detail: Option<Value>) -> Response<Body> {
    let body = match detail {
        Some(detail) => json!({ "error": error, "detail": detail }),
        None => json!({ "error": error }),
    };
    json_response(status, &body)
}

/// A 429/503 that tells the sender when to come back.
pub fn retry_later(status: StatusCode, error: &str, detail: Option<Value>, seconds: u64) -> Response<Body> {
    let mut response = json_error(status, error, detail);
    response.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// The console's own files and the API's JSON are all the admin listener serves: nothing
/// may run, load or frame anything else.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
     img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Adds the headers every admin answer carries (and refusals a browser may read).
pub fn secure(response: &mut Response<Body>) {
    let headers = response.headers_mut();
    headers.insert(http::header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(http::header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(http::header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(http::header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.entry(http::header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
}

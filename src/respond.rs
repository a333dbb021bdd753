//! The one place errors become HTTP answers: `{"error": "...", "detail": ...}` JSON.

use http::{HeaderValue, Response, StatusCode};
use serde_json::{json, Value};

use crate::delivery::client::{full, Body};

pub fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(full(value.to_string()));
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

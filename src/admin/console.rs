//! The console: a page and its script and style, embedded in the binary and served by the
//! admin listener at `/`. The page holds no data; everything it shows comes from the API
//! with the token the user enters.

use http::{HeaderValue, Response};

use crate::delivery::client::{full, Body};

const INDEX: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// The console file at `path`, if it is one.
pub fn asset(path: &str) -> Option<Response<Body>> {
    let (body, content_type) = match path {
        "" | "/" | "/index.html" => (INDEX, "text/html; charset=utf-8"),
        "/console.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "/console.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return None,
    };
    let mut response = Response::new(full(body));
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Some(response)
}

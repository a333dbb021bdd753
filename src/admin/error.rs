//! How an admin API call fails: each error knows its status and its JSON answer
//! (`{"error": …, "detail": …}`). No status code of a failed call is chosen elsewhere.

use http::{Response, StatusCode};
use serde_json::{json, Value};

use crate::delivery::client::Body;
use crate::respond::json_error;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("{what}")]
    NotFound { what: &'static str, detail: Option<Value> },
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{error}")]
    BadRequest { error: &'static str, detail: Value },
    #[error("request body unreadable or too large")]
    TooLarge(String),
    #[error("{error}")]
    Conflict { error: &'static str, detail: Value },
    #[error("{error}")]
    Forbidden { error: &'static str, detail: Value },
    #[error("{error}")]
    UnsupportedMediaType { error: &'static str, detail: Value },
    /// A config or route that does not compile: every error listed.
    #[error("{error}")]
    Invalid { error: &'static str, detail: Value },
    #[error("store request failed")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(&'static str),
    /// The relay cannot take the work now (its queue is full); try again later.
    #[error("{error}")]
    Busy { error: &'static str, detail: Option<Value> },
    /// `/readyz`: the relay cannot take webhooks (its store was lost).
    #[error("not ready")]
    NotReady(String),
}

impl ApiError {
    pub fn not_found(what: &'static str, detail: impl Into<Value>) -> ApiError {
        ApiError::NotFound { what, detail: Some(detail.into()) }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound { .. } | ApiError::Store(StoreError::NotFound) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BadRequest { .. } | ApiError::Store(StoreError::InvalidInput(_)) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Conflict { .. } | ApiError::Store(StoreError::Conflict(_)) => StatusCode::CONFLICT,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Store(_) | ApiError::NotReady(_) | ApiError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let (error, detail) = match self {
            ApiError::Store(StoreError::NotFound) => ("not found".to_string(), None),
            ApiError::Store(StoreError::Conflict(detail)) => ("conflict".to_string(), Some(json!(detail))),
            ApiError::Store(StoreError::InvalidInput(detail)) => ("invalid request".to_string(), Some(json!(detail))),
            ApiError::Store(other) => {
                tracing::error!(error = %other, "store request failed");
                ("store unavailable".to_string(), Some(json!(other.to_string())))
            }
            ApiError::TooLarge(detail) => ("request body unreadable or too large".to_string(), Some(json!(detail))),
            ApiError::NotReady(reason) => ("not ready".to_string(), Some(json!(reason))),
            ApiError::Busy { error, detail } => (error.to_string(), detail),
            ApiError::NotFound { what, detail } => (what.to_string(), detail),
            ApiError::BadRequest { error, detail }
            | ApiError::Conflict { error, detail }
            | ApiError::Invalid { error, detail }
            | ApiError::Forbidden { error, detail }
            | ApiError::UnsupportedMediaType { error, detail } => (error.to_string(), Some(detail)),
            other => (other.to_string(), None),
        };
        let mut response = json_error(status, &error, detail);
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<ApiError> for Response<Body> {
    fn from(err: ApiError) -> Response<Body> {
        err.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_know_their_answer() {
        let unauthorized = ApiError::Unauthorized.into_response();
        assert_eq!(unauthorized.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(unauthorized.headers()[http::header::WWW_AUTHENTICATE], "Bearer");
        assert_eq!(ApiError::Store(StoreError::NotFound).status(), StatusCode::NOT_FOUND);
        assert_eq!(ApiError::Store(StoreError::Conflict("x".into())).status(), StatusCode::CONFLICT);
        assert_eq!(ApiError::Store(StoreError::Closed).status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ApiError::not_found("no such route", "r").into_response().status(), StatusCode::NOT_FOUND);
    }
}

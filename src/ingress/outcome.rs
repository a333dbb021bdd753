//! How a webhook request ends: the errors that stop it, each knowing its status, its
//! `hookrelay_requests_total` outcome, the abuse limit it counts (if any) and its JSON
//! answer; and the outcomes of requests that went through. No status code or outcome
//! label is chosen anywhere else in the ingress.

use std::time::Duration;

use http::{Response, StatusCode};
use serde_json::{json, Value};

use crate::delivery::client::Body;
use crate::delivery::target::RenderError;
use crate::metrics::{count_limit, count_request};
use crate::respond::{json_error, retry_later};

#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error("{0}")]
    AmbiguousHost(&'static str),
    #[error("request timed out")]
    RequestTimeout(Duration),
    #[error("no route matched")]
    Unmatched,
    #[error("too many request bodies in memory")]
    BuffersFull,
    #[error("request body too large")]
    TooLarge { max_body: u64 },
    /// A CloudEvents batch whose events would store its headers too many times over:
    /// `header_bytes` of them in all, where at most `most` are taken.
    #[error("a CloudEvents batch's headers would be stored too many times")]
    BatchHeadersTooLarge { entries: usize, header_bytes: u64, most: u64 },
    #[error("could not read the request body")]
    BadBody(String),
    #[error("rate limit exceeded")]
    RateLimited { wait: Duration },
    #[error("verification failed")]
    Unauthorized,
    #[error("the store is unavailable; see the relay's log")]
    StoreLost,
    #[error("could not build the outgoing request")]
    Render(RenderError),
    /// A CloudEvents batch has no single answer to relay.
    #[error("a CloudEvents batch cannot go to a respond: sync route")]
    SyncBatch { route: String },
    #[error("delivery queue is full")]
    QueueFull,
    /// One target's share of the queue is full (its receiver is down or paused).
    #[error("delivery queue for a target is full")]
    TargetQueueFull(crate::delivery::queue_share::TargetFull),
    #[error("could not store the event")]
    StoreFailed,
    #[error("target unavailable")]
    TargetUnavailable { timed_out: bool, detail: String },
    /// The service beside the relay could not be reached (pass-through).
    #[error("upstream unavailable")]
    Upstream(String),
    #[error("upstream did not answer in time")]
    UpstreamTimeout(Duration),
}

impl IngressError {
    pub fn status(&self) -> StatusCode {
        match self {
            IngressError::AmbiguousHost(_) | IngressError::BadBody(_) => StatusCode::BAD_REQUEST,
            IngressError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            IngressError::Unmatched => StatusCode::NOT_FOUND,
            IngressError::TooLarge { .. } | IngressError::BatchHeadersTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            IngressError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            IngressError::Unauthorized => StatusCode::UNAUTHORIZED,
            IngressError::Render(_) | IngressError::SyncBatch { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            IngressError::BuffersFull
            | IngressError::StoreLost
            | IngressError::QueueFull
            | IngressError::TargetQueueFull(_)
            | IngressError::StoreFailed => StatusCode::SERVICE_UNAVAILABLE,
            IngressError::TargetUnavailable { timed_out: true, .. } => StatusCode::GATEWAY_TIMEOUT,
            IngressError::TargetUnavailable { timed_out: false, .. } | IngressError::Upstream(_) => StatusCode::BAD_GATEWAY,
            IngressError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The `outcome` label of `hookrelay_requests_total`.
    pub fn metric_outcome(&self) -> &'static str {
        match self {
            IngressError::AmbiguousHost(_) | IngressError::BadBody(_) => "bad_request",
            IngressError::RequestTimeout(_) => "timeout",
            IngressError::Unmatched => "unmatched",
            IngressError::BuffersFull => "busy",
            IngressError::TooLarge { .. } | IngressError::BatchHeadersTooLarge { .. } => "too_large",
            IngressError::RateLimited { .. } => "rate_limited",
            IngressError::Unauthorized => "unauthorized",
            IngressError::StoreLost | IngressError::StoreFailed => "store_error",
            IngressError::Render(_) => "render_error",
            IngressError::SyncBatch { .. } => "bad_request",
            IngressError::QueueFull | IngressError::TargetQueueFull(_) => "queue_full",
            IngressError::TargetUnavailable { .. } => "forwarded",
            IngressError::Upstream(_) | IngressError::UpstreamTimeout(_) => "proxied",
        }
    }

    /// The abuse limit this counts in `hookrelay_limited_total`, if it is one.
    fn limit(&self) -> Option<&'static str> {
        match self {
            IngressError::RequestTimeout(_) => Some("request_timeout"),
            IngressError::UpstreamTimeout(_) => Some("upstream_header_timeout"),
            IngressError::BuffersFull => Some("max_buffered_bytes"),
            IngressError::TooLarge { .. } | IngressError::BatchHeadersTooLarge { .. } => Some("max_body"),
            _ => None,
        }
    }

    /// When the sender should come back, in whole seconds (rounded up, never too early).
    fn retry_after(&self) -> Option<u64> {
        match self {
            IngressError::RateLimited { wait } => Some(wait.as_secs() + u64::from(wait.subsec_nanos() > 0)),
            IngressError::BuffersFull | IngressError::QueueFull | IngressError::StoreFailed => Some(1),
            IngressError::StoreLost => Some(5),
            // A target's share drains only as fast as its receiver comes back.
            IngressError::TargetQueueFull(_) => Some(30),
            _ => None,
        }
    }

    fn detail(&self) -> Option<Value> {
        match self {
            IngressError::RequestTimeout(limit) => Some(json!(format!("the request did not complete within {limit:?}"))),
            IngressError::TooLarge { max_body } => Some(json!({ "max_body": max_body })),
            IngressError::BatchHeadersTooLarge { entries, header_bytes, most } => Some(json!({
                "entries": entries,
                "header_bytes": header_bytes,
                "most": most,
                "hint": "each event of a batch (one per entry and route it fires) is stored with the batch's headers; send fewer events per batch, or fewer headers"
            })),
            IngressError::BadBody(detail) | IngressError::TargetUnavailable { detail, .. } | IngressError::Upstream(detail) => {
                Some(json!(detail))
            }
            IngressError::UpstreamTimeout(limit) => {
                Some(json!(format!("no response headers within {limit:?} (limits.upstream_header_timeout)")))
            }
            IngressError::Render(err) => Some(json!(err.to_string())),
            IngressError::SyncBatch { route } => {
                Some(json!({ "route": route, "hint": "send the events one by one, or use a respond: async route" }))
            }
            IngressError::TargetQueueFull(full) => Some(full.describe()),
            _ => None,
        }
    }

    /// Counts the request for `route` ("" when no route took it) and answers.
    pub fn answer(self, route: &str) -> Response<Body> {
        count_request(route, self.metric_outcome());
        self.counted()
    }

    /// Answers a request already counted (per route, by the caller).
    pub fn counted(self) -> Response<Body> {
        if let Some(limit) = self.limit() {
            count_limit(limit);
        }
        let status = self.status();
        let message = self.to_string();
        match self.retry_after() {
            Some(seconds) => retry_later(status, &message, self.detail(), seconds),
            None => json_error(status, &message, self.detail()),
        }
    }
}

/// How a request that went through ended, as `hookrelay_requests_total` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Stored for delivery (202).
    Accepted,
    /// The sender's delivery id was seen within the route's dedupe window (202).
    Duplicate,
    /// A sync route's target answered; its answer was relayed.
    Forwarded,
    /// No route took it; the service beside the relay answered.
    Proxied,
    /// `OPTIONS *`, answered by the relay.
    Options,
}

impl Handled {
    pub fn metric_outcome(self) -> &'static str {
        match self {
            Handled::Accepted => "accepted",
            Handled::Duplicate => "duplicate",
            Handled::Forwarded => "forwarded",
            Handled::Proxied => "proxied",
            Handled::Options => "options",
        }
    }

    pub fn count(self, route: &str) {
        count_request(route, self.metric_outcome());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_know_their_answer() {
        let limited = IngressError::RateLimited { wait: Duration::from_millis(1200) }.counted();
        assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limited.headers()[http::header::RETRY_AFTER], "2", "rounded up");
        let timeout = IngressError::TargetUnavailable { timed_out: true, detail: "x".into() };
        assert_eq!((timeout.status(), timeout.metric_outcome()), (StatusCode::GATEWAY_TIMEOUT, "forwarded"));
        assert_eq!(IngressError::TooLarge { max_body: 1 }.counted().status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
}

//! The two forms of an outgoing request. [`OutgoingRequest`] is what a target rendered for
//! one event: it is what the store keeps. [`WireRequest`] is that request with the target's
//! credentials and signature added, just before sending: it can be sent, shown masked and
//! recorded masked, but no function turns it into a stored request, so the type checker
//! refuses to store credentials.

use bytes::Bytes;
use http::{HeaderMap, Method};

/// One request as a target rendered it, without credentials or signature.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingRequest {
    pub route: String,
    pub target: String,
    /// The rendered `ordered_by` key, if the target has one.
    pub ordered_key: Option<String>,
    pub method: Method,
    pub url: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A request exactly as it goes on the wire, credentials and signature included. Built
/// only by [`crate::delivery::target::Target::prepare`] and `with_credentials` (or bare,
/// for a delivery whose target is gone); read through `Deref`.
#[derive(Debug, Clone, PartialEq)]
pub struct WireRequest(OutgoingRequest);

impl WireRequest {
    pub(crate) fn from_prepared(request: OutgoingRequest) -> WireRequest {
        WireRequest(request)
    }

    pub(crate) fn into_prepared(self) -> OutgoingRequest {
        self.0
    }

    /// A rendered request sent as it is: its target is gone, so there is nothing to add.
    pub fn bare(rendered: OutgoingRequest) -> WireRequest {
        WireRequest(rendered)
    }
}

impl std::ops::Deref for WireRequest {
    type Target = OutgoingRequest;

    fn deref(&self) -> &OutgoingRequest {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("route {route:?}, target {target:?}, {field}: {message}")]
pub struct RenderError {
    pub route: String,
    pub target: String,
    pub field: String,
    pub message: String,
}

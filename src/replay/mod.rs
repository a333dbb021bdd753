//! Replay: a stored event run again through a config's matching and rendering, and what
//! each target would send now beside what it was sent the first time. Verification is
//! skipped (the event passed it when it was received). Pure: the admin API commits what
//! [`Replay::events`] returns, `hookrelay replay` only prints the comparison.

pub mod offline;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::delivery::target::{RenderError, Target};
use crate::engine::{delivery_of, stored, Accepted};
use crate::inbound::InboundRequest;
use crate::plan::{plan, PlannedRoute, Rendered};
use crate::redact::Redactions;
use crate::render::why_not_fired;
use crate::routing::{self, RouteMatch};
use crate::snapshot::Snapshot;
use crate::store::{EventView, NewEvent, StoredRequest};
use crate::trace::{Trace, TRACEPARENT, TRACESTATE};

/// Said in every answer, so nobody mistakes a replay for a fresh, verified request.
pub const VERIFICATION_SKIPPED: &str = "skipped: the event was verified when it was received";
/// Said instead for a request kept unmatched (`store.keep_unmatched`).
pub const NEVER_VERIFIED: &str =
    "none: no route took the request when it arrived, so it was never verified; routes that verify do not replay it";
/// Why a route that verifies does not replay a kept unmatched request.
const CANNOT_VERIFY: &str =
    "verify: the request was kept unmatched and never verified, and its credentials are stored masked: a route that verifies cannot replay it";

/// A request kept by `store.keep_unmatched`, not an event a route took.
fn was_unmatched(event: &EventView) -> bool {
    event.route == crate::store::UNMATCHED_ROUTE
}

/// Which routes an event is replayed through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteChoice {
    /// The route that took the event the first time.
    Original,
    /// These routes, each only if it matches now.
    Named(Vec<String>),
    /// Every route that matches now.
    All,
}

impl RouteChoice {
    /// `None` is the original route; `["*"]` is every route.
    pub fn from_list(routes: Option<Vec<String>>) -> RouteChoice {
        match routes {
            None => RouteChoice::Original,
            Some(names) if names.iter().any(|name| name == "*") => RouteChoice::All,
            Some(names) => RouteChoice::Named(names),
        }
    }

    fn wants(&self, route: &str, original: &str) -> bool {
        match self {
            // A kept unmatched request had no route: every route that matches now.
            RouteChoice::Original if original == crate::store::UNMATCHED_ROUTE => true,
            RouteChoice::Original => route == original,
            RouteChoice::Named(names) => names.iter().any(|name| name == route),
            RouteChoice::All => true,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplayError {
    #[error("no route named {0:?} in the config")]
    UnknownRoute(String),
}

/// What replaying one stored event does under a config.
#[derive(Debug, Serialize)]
pub struct Comparison {
    pub replay_of: String,
    pub event: Option<String>,
    pub verification: &'static str,
    /// The routes that match now and are replayed.
    pub routes: Vec<String>,
    /// Routes asked for that do not match now, with why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_matched: Vec<NotMatched>,
    pub targets: Vec<TargetComparison>,
    /// Some target would send something else, or a route asked for no longer matches.
    pub changed: bool,
}

#[derive(Debug, Serialize)]
pub struct NotMatched {
    pub route: String,
    pub why_not: String,
}

/// One target: the request it sends now beside the one it was sent the first time (both
/// as stored: before credentials and signatures, which are added at send time), and the
/// differences, with credentials shown as `***`.
#[derive(Debug, Serialize)]
pub struct TargetComparison {
    pub route: String,
    pub target: String,
    /// `null` when the target sends nothing now.
    pub now: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `null` when the first time had no delivery to this target.
    pub first: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_delivery: Option<FirstDelivery>,
    pub changes: Vec<Change>,
}

#[derive(Debug, Serialize)]
pub struct FirstDelivery {
    pub id: String,
    pub status: String,
}

/// One difference, at a JSON Pointer into `{method, url, headers, body}`.
#[derive(Debug, Serialize, PartialEq)]
pub struct Change {
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub now: Option<Value>,
    /// The value is a credential: it changed, and both sides are shown masked.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
}

/// The stored event as a request again: method, path and query, headers and body as
/// recorded (credential headers and fields masked; the peer is unknown and shown as
/// 0.0.0.0, which only `ingress_limit` and `verify` read, and both are skipped).
pub fn inbound_of(event: &EventView) -> InboundRequest {
    let method = Method::from_bytes(event.method.as_bytes()).unwrap_or(Method::POST);
    let mut headers = HeaderMap::with_capacity(event.headers.len());
    for (name, value) in &event.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            headers.append(name, value);
        }
    }
    let body = Bytes::copy_from_slice(event.body.as_bytes());
    InboundRequest::new(method, &event.path, headers, body, std::net::Ipv4Addr::UNSPECIFIED.into())
}

/// The routes `choice` replays the event through, in config order, and those asked for
/// that do not match now (with why).
fn choose<'s>(
    snapshot: &'s Snapshot,
    inbound: &InboundRequest,
    event: &EventView,
    choice: &RouteChoice,
) -> Result<(Vec<RouteMatch<'s>>, Vec<NotMatched>), ReplayError> {
    if let RouteChoice::Named(names) = choice {
        if let Some(unknown) = names.iter().find(|name| snapshot.route(name).is_none()) {
            return Err(ReplayError::UnknownRoute(unknown.clone()));
        }
    }
    let selected = routing::select(&snapshot.routes, inbound);
    let stopped_by = selected.iter().find(|m| m.route.is_final).map(|m| m.route.name.clone());
    let mut not_matched = Vec::new();
    let asked: Vec<&str> = match choice {
        RouteChoice::Original if was_unmatched(event) => Vec::new(),
        RouteChoice::Original => vec![event.route.as_str()],
        RouteChoice::Named(names) => names.iter().map(String::as_str).collect(),
        RouteChoice::All => Vec::new(),
    };
    for name in asked {
        if selected.iter().any(|m| m.route.name == name) {
            continue;
        }
        let why_not = match snapshot.route(name) {
            None => "the route is no longer in the config".to_string(),
            Some(route) => why_not_fired(snapshot, route, inbound, stopped_by.as_deref()),
        };
        not_matched.push(NotMatched { route: name.to_string(), why_not });
    }
    let mut chosen: Vec<RouteMatch<'s>> = selected.into_iter().filter(|m| choice.wants(&m.route.name, &event.route)).collect();
    if was_unmatched(event) {
        chosen.retain(|m| {
            let verifies = !m.route.verify.is_empty();
            if verifies {
                not_matched.push(NotMatched { route: m.route.name.clone(), why_not: CANNOT_VERIFY.to_string() });
            }
            !verifies
        });
    }
    Ok((chosen, not_matched))
}

/// The event matched and rendered again under `snapshot`, at its receipt time, each route's
/// event named by `event_id`; and the routes asked for that do not match now.
fn replan<'s>(
    snapshot: &'s Snapshot,
    event: &EventView,
    choice: &RouteChoice,
    event_id: impl FnMut() -> String,
) -> Result<(Vec<PlannedRoute<'s>>, Vec<NotMatched>), ReplayError> {
    let mut inbound = inbound_of(event);
    let (chosen, not_matched) = choose(snapshot, &inbound, event, choice)?;
    let received_at = DateTime::<Utc>::from_timestamp_millis(event.received_at).unwrap_or_default();
    let body = inbound.take_body();
    Ok((plan(snapshot, &inbound, body, chosen, received_at, event_id), not_matched))
}

/// Renders the event under `snapshot` as its first delivery did (same event id and
/// receipt time, so only the config makes a difference) and compares per target.
pub fn compare(snapshot: &Snapshot, event: &EventView, choice: &RouteChoice) -> Result<Comparison, ReplayError> {
    let (planned, not_matched) = replan(snapshot, event, choice, || event.id.clone())?;
    let routes: Vec<String> = planned.iter().map(|p| p.matched.route.name.clone()).collect();
    let mut targets = Vec::new();
    let mut compared: Vec<&str> = Vec::new();
    for PlannedRoute { matched, targets: rendered, .. } in planned {
        for (target, rendered) in rendered {
            let first = event.deliveries.iter().find(|d| d.route == matched.route.name && d.target == target.name);
            if let Some(first) = first {
                compared.push(&first.id);
            }
            targets.push(target_comparison(&snapshot.redactions, &matched.route.name, target, rendered, first));
        }
    }
    // Deliveries of the first time that nothing replaces now (a target removed or renamed),
    // on the routes replayed or asked for.
    for first in event.deliveries.iter().filter(|d| !compared.contains(&d.id.as_str())) {
        let asked = routes.contains(&first.route) || not_matched.iter().any(|n| n.route == first.route);
        if asked {
            let shown_first = shown(&snapshot.redactions, &request_of(&first.request));
            targets.push(TargetComparison {
                route: first.route.clone(),
                target: first.target.clone(),
                now: None,
                skipped: None,
                error: None,
                first: Some(shown_first.clone()),
                first_delivery: Some(FirstDelivery { id: first.id.clone(), status: first.status.to_string() }),
                changes: vec![Change { path: String::new(), first: Some(shown_first), now: None, secret: false }],
            });
        }
    }
    let changed = !not_matched.is_empty() || targets.iter().any(|t| !t.changes.is_empty());
    Ok(Comparison {
        replay_of: event.id.clone(),
        event: event.event.clone(),
        verification: if was_unmatched(event) { NEVER_VERIFIED } else { VERIFICATION_SKIPPED },
        routes,
        not_matched,
        targets,
        changed,
    })
}

fn target_comparison(
    redactions: &Redactions,
    route: &str,
    target: &Target,
    rendered: Rendered,
    first: Option<&crate::store::DeliveryView>,
) -> TargetComparison {
    let first_request = first.map(|d| request_of(&d.request));
    let (now_request, skipped, error) = match rendered {
        Ok(Some(outgoing)) => (Some(stored(&outgoing, target)), None, None),
        Ok(None) => (None, Some("`when` did not render \"true\"".to_string()), None),
        Err(err) => (None, None, Some(err.to_string())),
    };
    let changes = differences(redactions, first_request.as_ref(), now_request.as_ref());
    TargetComparison {
        route: route.to_string(),
        target: target.name.clone(),
        now: now_request.as_ref().map(|r| shown(redactions, r)),
        skipped,
        error,
        first: first_request.as_ref().map(|r| shown(redactions, r)),
        first_delivery: first.map(|d| FirstDelivery { id: d.id.clone(), status: d.status.to_string() }),
        changes,
    }
}

fn request_of(view: &crate::store::StoredRequestView) -> StoredRequest {
    StoredRequest {
        method: view.method.clone(),
        url: view.url.clone(),
        headers: view.headers.clone(),
        body: Bytes::copy_from_slice(view.body.as_bytes()),
    }
}

/// `{method, url, headers, body}`: headers by lower-cased name (repeats joined with `, `),
/// the body as JSON when it parses, else as text. Trace context headers are left out: every
/// delivery has a span of its own, so they differ every time, whatever the config.
fn document(request: &StoredRequest) -> Value {
    let mut headers = Map::new();
    for (name, value) in &request.headers {
        let name = name.to_ascii_lowercase();
        if name == TRACEPARENT.as_str() || name == TRACESTATE.as_str() {
            continue;
        }
        match headers.get_mut(&name) {
            Some(Value::String(joined)) => {
                joined.push_str(", ");
                joined.push_str(value);
            }
            _ => {
                headers.insert(name, Value::String(value.clone()));
            }
        }
    }
    let body = serde_json::from_slice(&request.body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&request.body).into_owned()));
    json!({ "method": request.method, "url": request.url, "headers": headers, "body": body })
}

fn content_type(headers: &[(String, String)]) -> Option<&str> {
    headers.iter().find(|(name, _)| name.eq_ignore_ascii_case("content-type")).map(|(_, value)| value.as_str())
}

/// The request as people may see it: credential headers, query values, body fields and
/// secret values masked.
fn shown(redactions: &Redactions, request: &StoredRequest) -> Value {
    let headers = redactions.headers(&request.headers);
    let body = redactions.shown_body(content_type(&headers), &request.body);
    document(&StoredRequest { method: request.method.clone(), url: redactions.url(&request.url), headers, body })
}

/// The request as compared: as stored, except credential body fields (the event keeps them
/// masked, so a body forwarded from it has the mask where the first request had the value).
fn compared(redactions: &Redactions, request: &StoredRequest) -> Value {
    let body = redactions.body(content_type(&request.headers), &request.body);
    document(&StoredRequest { body, ..request.clone() })
}

/// What differs between the two requests, compared as stored (so a changed credential in a
/// URL or header is found) and shown masked (so it is not printed).
fn differences(redactions: &Redactions, first: Option<&StoredRequest>, now: Option<&StoredRequest>) -> Vec<Change> {
    let (first, now) = match (first, now) {
        (None, None) => return Vec::new(),
        (Some(first), None) => {
            return vec![Change { path: String::new(), first: Some(shown(redactions, first)), now: None, secret: false }]
        }
        (None, Some(now)) => return vec![Change { path: String::new(), first: None, now: Some(shown(redactions, now)), secret: false }],
        (Some(first), Some(now)) => (first, now),
    };
    let (shown_first, shown_now) = (shown(redactions, first), shown(redactions, now));
    json_patch::diff(&compared(redactions, first), &compared(redactions, now))
        .0
        .iter()
        .map(|operation| {
            let path = operation.path().as_str().to_string();
            let before = shown_first.pointer(&path).cloned();
            let after = shown_now.pointer(&path).cloned();
            let secret = before == after;
            Change { path, first: before, now: after, secret }
        })
        .collect()
}

/// The events a live replay commits: one per route replayed (as at receipt), each with a
/// new id, `replay_of` the original, and every target delivered asynchronously (a `sync`
/// route's sender is long gone); no dedupe window, so a replay is never dropped as a
/// duplicate. Targets that fail to render are returned to be recorded as failed.
pub fn events<'s>(
    snapshot: &'s Snapshot,
    event: &EventView,
    choice: &RouteChoice,
    now: DateTime<Utc>,
) -> Result<Replayed<'s>, ReplayError> {
    let (planned, _) = replan(snapshot, event, choice, || ulid::Ulid::generate().to_string())?;
    // The sender's trace, if the event carried one, goes on; else the replay starts one.
    let received = inbound_of(event).headers;
    let trace = Trace::of(&received).unwrap_or_else(Trace::start);
    let mut accepted = Vec::with_capacity(planned.len());
    let mut failures = Vec::new();
    for PlannedRoute { matched, event_id, targets } in planned {
        let route = matched.route;
        let mut deliveries = Vec::with_capacity(targets.len());
        for (target, rendered) in targets {
            match rendered {
                Ok(Some(mut outgoing)) => {
                    trace.mark(&mut outgoing.headers, &received);
                    deliveries.push(delivery_of(&event_id, &outgoing, target, now.timestamp_millis()));
                }
                Ok(None) => {}
                Err(err) => failures.push((event_id.clone(), target, err)),
            }
        }
        let replayed = NewEvent {
            id: event_id,
            received_at: now.timestamp_millis(),
            route: route.name.clone(),
            event: matched.info.event.clone(),
            delivery_id: None,
            method: event.method.clone(),
            path: event.path.clone(),
            headers: event.headers.clone(),
            body: Bytes::copy_from_slice(event.body.as_bytes()),
            replay_of: Some(event.id.clone()),
        };
        accepted.push(Accepted { event: replayed, deliveries, dedupe_since: None });
    }
    Ok(Replayed { events: accepted, render_failures: failures })
}

/// What a live replay commits, and the targets that failed to render (event id, target, why).
pub struct Replayed<'s> {
    pub events: Vec<Accepted>,
    pub render_failures: Vec<(String, &'s Target, RenderError)>,
}

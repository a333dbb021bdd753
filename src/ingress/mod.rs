//! One webhook request: enforces body and time limits, selects
//! routes on one config snapshot, verifies, renders, and answers (sync: the target's
//! answer; async: 202 once stored). Requests no route can take are proxied.

use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};

use crate::config::model::Respond;
use crate::connections::Peer;
use crate::delivery::client::{self, Body};
use crate::delivery::link::UpstreamLink;
use crate::delivery::target::{OutgoingRequest, RenderError, Target};
use crate::engine::{delivery_of, now_ms, recorded_headers, AcceptError, Accepted};
use crate::inbound::InboundRequest;
use crate::metrics::{count_request, DeliveryResult};
use crate::plan::{plan, PlannedRoute};
use crate::ratelimit::Throttled;
use crate::relay::Relay;
use crate::respond::json_response;
use crate::routing::{self, RouteMatch};
use crate::snapshot::Snapshot;
use crate::store::{AcceptOutcome, AttemptOutcome, AttemptRecord, FinishedDelivery, NewDelivery, NewEvent, StoredRequest};
use crate::telemetry::Span;
use crate::trace::Trace;
use crate::verify::VerifyInput;
use opentelemetry::trace::SpanKind;

mod batch;
mod handshake;
mod outcome;
pub mod proxy;
mod sync;
pub use outcome::{Handled, IngressError};

/// The request id: the sender's `X-Request-Id` if it gave a sane one (1 to 128 visible
/// ASCII characters), else a new one. It is passed on to targets and the upstream service
/// and returned to the sender. The text log writes it as it is: a space in it would let a
/// sender add fields of its own to the request's line.
fn request_id(request: &mut Request<Incoming>) -> HeaderValue {
    let sane = |id: &HeaderValue| !id.is_empty() && id.len() <= 128 && id.as_bytes().iter().all(u8::is_ascii_graphic);
    let given = request.headers().get(REQUEST_ID).filter(|id| sane(id)).cloned();
    let id =
        given.unwrap_or_else(|| HeaderValue::from_str(&ulid::Ulid::generate().to_string()).unwrap_or(HeaderValue::from_static("unknown")));
    request.headers_mut().insert(REQUEST_ID, id.clone());
    id
}

pub const REQUEST_ID: &str = "x-request-id";

/// One log line per request: who, what, which routes, how it ended, how long it took.
pub async fn handle(relay: &Relay, mut request: Request<Incoming>, peer: Peer) -> Response<Body> {
    let started = std::time::Instant::now();
    let started_at = std::time::SystemTime::now();
    let id = request_id(&mut request);
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let mut response = route_request(relay, request, peer).await;
    let routes = response.extensions_mut().remove::<FiredRoutes>().map(|fired| fired.0.join(",")).unwrap_or_default();
    let trace = response.extensions_mut().remove::<Trace>();
    if let Some(span) = trace.and_then(|trace| Span::begin_at(trace, "request", SpanKind::Server, started_at)) {
        let mut span =
            span.with("http.request.method", method.to_string()).with("http.response.status_code", i64::from(response.status().as_u16()));
        if !routes.is_empty() {
            span.set("hookrelay.routes", routes.clone());
        }
        if response.status().is_server_error() {
            span.fail(response.status().to_string());
        }
        span.end();
    }
    crate::request_log::RequestLine {
        request_id: id.as_bytes(),
        trace_id: trace.map(|trace| trace.trace_id()),
        peer: peer.addr.ip(),
        method: method.as_str(),
        path: &path,
        routes: &routes,
        status: response.status().as_u16(),
        duration: started.elapsed(),
    }
    .log();
    response.headers_mut().insert(REQUEST_ID, id);
    response
}

/// The routes a request fired, for its log line (a response extension, never sent).
#[derive(Clone)]
struct FiredRoutes(Vec<String>);

fn with_routes(mut response: Response<Body>, routes: &[&str]) -> Response<Body> {
    response.extensions_mut().insert(FiredRoutes(routes.iter().map(|r| r.to_string()).collect()));
    response
}

/// Handles one request on one config snapshot.
async fn route_request(relay: &Relay, request: Request<Incoming>, peer: Peer) -> Response<Body> {
    // `OPTIONS *` asks about the server itself, not a resource: no route or service owns it.
    if request.method() == http::Method::OPTIONS && request.uri() == "*" {
        Handled::Options.count("");
        let mut response = Response::new(client::full(Bytes::new()));
        response.headers_mut().insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"));
        return response;
    }
    // An ambiguous Host: which one would the service route on?
    if let Some(problem) = crate::connections::host_problem(&request) {
        return IngressError::AmbiguousHost(problem).answer("");
    }
    let snapshot = relay.snapshot();
    if let Some(answer) = handshake::answer(&snapshot.routes, &request) {
        Handled::Options.count("");
        return answer;
    }
    if !routing::may_take(&snapshot.routes, request.method(), request.uri().path()) {
        return unmatched(relay, &snapshot, request.map(|b| b.map_err(Into::into).boxed()), peer).await;
    }
    let limits = &snapshot.settings.limits;
    match tokio::time::timeout(limits.request_timeout, buffered(relay, &snapshot, request, peer)).await {
        Ok(response) => response,
        Err(_) => IngressError::RequestTimeout(limits.request_timeout).answer(""),
    }
}

async fn unmatched(relay: &Relay, snapshot: &Snapshot, request: Request<Body>, peer: Peer) -> Response<Body> {
    match &snapshot.settings.upstream {
        Some(upstream) => {
            Handled::Proxied.count("");
            let link = request.extensions().get::<Arc<UpstreamLink>>().cloned();
            let limits = &snapshot.settings.limits;
            proxy::forward(&relay.outbound.trusted, link.as_deref(), upstream, request, peer.addr, peer.scheme(), limits).await
        }
        None => IngressError::Unmatched.answer(""),
    }
}

/// A request some route's path and method could take, but no route matched: recorded as
/// an event would be (credentials masked), with no route and no delivery.
fn keep_unmatched(relay: &Relay, snapshot: &Snapshot, inbound: &InboundRequest) {
    let content_type = inbound.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let event = NewEvent {
        id: ulid::Ulid::generate().to_string(),
        received_at: now_ms(),
        route: crate::store::UNMATCHED_ROUTE.to_string(),
        event: None,
        delivery_id: None,
        method: inbound.method.to_string(),
        path: recorded_path(snapshot, inbound),
        headers: recorded_headers(&inbound.headers, &snapshot.redactions),
        body: snapshot.redactions.body(content_type, &inbound.raw),
        replay_of: None,
    };
    if !relay.unmatched.keep(&relay.engine, event) {
        tracing::debug!(path = %inbound.path, "an unmatched request was not kept: store.keep_unmatched is at its bound");
    }
}

/// The path as events record it: with its query, credential values masked (a replay sees it too).
fn recorded_path(snapshot: &Snapshot, inbound: &InboundRequest) -> String {
    if inbound.raw_query.is_empty() {
        inbound.path.clone()
    } else {
        snapshot.redactions.url(&format!("{}?{}", inbound.path, inbound.raw_query))
    }
}

async fn buffered(relay: &Relay, snapshot: &Arc<Snapshot>, request: Request<Incoming>, peer: Peer) -> Response<Body> {
    let max_body = snapshot.settings.limits.max_body;
    let declared = request.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max_body) {
        return IngressError::TooLarge { max_body }.answer("");
    }
    let Some(_room) = relay.reserve_body(declared.unwrap_or(max_body).min(max_body)) else {
        return IngressError::BuffersFull.answer("");
    };
    let (mut parts, body) = request.into_parts();
    let raw = match Limited::new(body, usize::try_from(max_body).unwrap_or(usize::MAX)).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => return IngressError::TooLarge { max_body }.answer(""),
        Err(err) => return IngressError::BadBody(err.to_string()).answer(""),
    };
    let path_and_query = parts.uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
    let headers = std::mem::take(&mut parts.headers);
    let mut inbound = InboundRequest::new(parts.method.clone(), path_and_query, headers, raw, peer.addr.ip());
    // The sender's trace goes on; without one, deliveries start one (a pass-through never
    // does: the proxy sends only a trace it was sent).
    let received = Trace::of(&inbound.headers);
    let trace = received.unwrap_or_else(Trace::start);
    if batch::is_batch(&inbound.headers) {
        return traced(batch::accept(relay, snapshot, &inbound, peer, trace).await, trace);
    }
    let matching = Span::begin(trace.child(), "match", SpanKind::Internal);
    let matched = routing::select(&snapshot.routes, &inbound);
    if let Some(mut span) = matching.filter(|_| !matched.is_empty()) {
        span.set("hookrelay.routes", matched.iter().map(|m| m.route.name.as_str()).collect::<Vec<_>>().join(","));
        if let Some(event) = matched.iter().find_map(|m| m.info.event.as_deref()) {
            span.set("hookrelay.event", event.to_string());
        }
        span.end();
    }
    if matched.is_empty() {
        if snapshot.settings.keep_unmatched.is_some() {
            keep_unmatched(relay, snapshot, &inbound);
        }
        parts.headers = inbound.headers;
        if let Some(received) = received {
            parts.extensions.insert(received);
        }
        let request = Request::from_parts(parts, client::full(inbound.raw));
        return unmatched(relay, snapshot, request, peer).await;
    }
    // A `cloudevents` route takes CloudEvents only: anything else is refused with why.
    if let Some(route) = matched.iter().find(|m| m.route.source.kind == routing::source::SourceKind::Cloudevents) {
        if let Some(problem) = routing::cloudevents::problem(&inbound.headers, inbound.body.as_matchable()) {
            return traced(IngressError::BadBody(problem).answer(&route.route.name), trace);
        }
    }
    let passed = match admit(relay, &inbound, matched, peer) {
        Ok(passed) => passed,
        Err(refused) => return traced(refused.counted(), trace),
    };
    let body = inbound.take_body();
    // A sync route's send may go over the connection's own upstream link (HTTP/1 only: an
    // HTTP/2 connection's requests run at once).
    let link = parts.extensions.get::<Arc<UpstreamLink>>().filter(|_| parts.version <= http::Version::HTTP_11);
    traced(accept(relay, snapshot, &inbound, body, passed, trace, link.map(Arc::as_ref)).await, trace)
}

/// Marks an answer with the trace its request was handled in, for its log line and its
/// `request` span (every answer a route gave, refusals included).
fn traced(mut response: Response<Body>, trace: Trace) -> Response<Body> {
    response.extensions_mut().insert(trace);
    response
}

/// The matched routes a request may fire: routes over their `ingress_limit` (charged before
/// and after verification) and routes whose verification fails are dropped; the refusal
/// when none is left.
fn admit<'r>(
    relay: &Relay,
    inbound: &InboundRequest,
    matched: Vec<RouteMatch<'r>>,
    peer: Peer,
) -> Result<Vec<RouteMatch<'r>>, IngressError> {
    let mut retry_after = None;
    let matched = charge_ingress_limits(relay, inbound, matched, true, &mut retry_after);
    if let (true, Some(wait)) = (matched.is_empty(), retry_after) {
        return Err(IngressError::RateLimited { wait });
    }
    let now_unix = Utc::now().timestamp();
    let verify_input = VerifyInput {
        headers: &inbound.headers,
        raw_body: &inbound.raw,
        body: inbound.body.as_matchable(),
        peer: peer.addr.ip(),
        now_unix,
    };
    let (passed, failed): (Vec<RouteMatch<'_>>, Vec<RouteMatch<'_>>) =
        matched.into_iter().partition(|m| m.route.verify.iter().all(|check| check.check(&verify_input).is_ok()));
    for route in &failed {
        count_request(&route.route.name, IngressError::Unauthorized.metric_outcome());
        tracing::info!(route = %route.route.name, peer = %peer.addr.ip(), "verification failed");
    }
    if passed.is_empty() {
        return Err(IngressError::Unauthorized);
    }
    let passed = charge_ingress_limits(relay, inbound, passed, false, &mut retry_after);
    if let (true, Some(wait)) = (passed.is_empty(), retry_after) {
        return Err(IngressError::RateLimited { wait });
    }
    Ok(passed)
}

/// Takes each route's `ingress_limit` (those keyed by IP before verification, those keyed by
/// request data after, so an unauthenticated sender cannot fill the key table); drops the
/// routes over their limit and remembers the longest wait.
fn charge_ingress_limits<'r>(
    relay: &Relay,
    inbound: &InboundRequest,
    matched: Vec<RouteMatch<'r>>,
    before_verification: bool,
    retry_after: &mut Option<std::time::Duration>,
) -> Vec<RouteMatch<'r>> {
    matched
        .into_iter()
        .filter(|m| {
            let Some(limit) = m.route.ingress_limit.as_ref().filter(|limit| limit.before_verification() == before_verification) else {
                return true;
            };
            match relay.ingress_limits.check(&m.route.name, limit.spec, &limit.sender(inbound)) {
                Ok(()) => true,
                Err(Throttled(wait)) => {
                    count_request(&m.route.name, IngressError::RateLimited { wait }.metric_outcome());
                    crate::metrics::count_limit("ingress_limit");
                    *retry_after = (*retry_after).max(Some(wait));
                    false
                }
            }
        })
        .collect()
}

/// Renders every target of every passing route, commits the event and its deliveries to
/// the store (one event per route), and answers: 202, or the sync target's answer.
async fn accept(
    relay: &Relay,
    snapshot: &Snapshot,
    inbound: &InboundRequest,
    body: Value,
    passed: Vec<RouteMatch<'_>>,
    trace: Trace,
    link: Option<&UpstreamLink>,
) -> Response<Body> {
    let route_names: Vec<&str> = passed.iter().map(|m| m.route.name.as_str()).collect();
    if relay.store_lost() {
        return fail_all(&route_names, IngressError::StoreLost);
    }
    let received_at = Utc::now();
    let rendering = Span::begin(trace.child(), "render", SpanKind::Internal);
    let Prepared { mut events, sync_send, render_failures, sync_failure } = prepare(snapshot, inbound, body, passed, received_at, &trace);
    if let Some(mut span) = rendering {
        let rendered: usize = events.iter().map(|e| e.deliveries.len()).sum::<usize>() + usize::from(sync_send.is_some());
        span.set("hookrelay.deliveries", rendered as i64);
        // Named by where it failed only: a render error may quote a value from the body.
        if let Some((_, err)) = &sync_failure {
            span.fail(format!("route {:?}, target {:?}, {}: failed to render", err.route, err.target, err.field));
        } else if let Some((_, _, err)) = render_failures.first() {
            span.fail(format!(
                "{} of the targets failed to render (first: route {:?}, target {:?}, {})",
                render_failures.len(),
                err.route,
                err.target,
                err.field
            ));
        }
        span.end();
    }
    // The sender of a sync route will retry after an error: store nothing, or the other
    // targets would receive the event twice.
    if let Some((route, err)) = sync_failure {
        return IngressError::Render(err).answer(route);
    }
    // An event whose only delivery is the sync one needs no commit before the answer: the
    // sender gets the target's answer itself. It is logged afterwards, off the request path.
    let deferred = sync_send.as_ref().and_then(|(_, _, sync_event)| {
        let position = events.iter().position(|e| &e.event.id == sync_event && e.deliveries.is_empty() && e.dedupe_since.is_none())?;
        let failed = render_failures.iter().any(|(id, _, _)| id == sync_event);
        (!failed).then(|| events.remove(position).event)
    });
    let ids: Vec<String> = events.iter().map(|e| e.event.id.clone()).collect();
    let outcomes = match commit(relay, &trace, events, false).await {
        Ok(outcomes) => outcomes,
        Err(refused) => return fail_all(&route_names, refused),
    };
    let accepted: Vec<&String> =
        ids.iter().zip(&outcomes).filter(|(_, outcome)| matches!(outcome, AcceptOutcome::Accepted)).map(|(id, _)| id).collect();
    record_render_failures(relay, &accepted, render_failures).await;
    let Some((outgoing, target, sync_event)) = sync_send else {
        let mut duplicates = Vec::new();
        for ((name, outcome), id) in route_names.iter().zip(&outcomes).zip(&ids) {
            match outcome {
                AcceptOutcome::Accepted => Handled::Accepted.count(name),
                AcceptOutcome::Duplicate { original_event_id } => {
                    Handled::Duplicate.count(name);
                    duplicates.push(json!({ "route": name, "id": id, "original": original_event_id }));
                }
            }
        }
        let mut answer = json!({ "id": ids.first(), "routes": route_names });
        if ids.len() > 1 {
            answer["ids"] = json!(ids);
        }
        if !duplicates.is_empty() {
            answer["duplicates"] = json!(duplicates);
        }
        return with_routes(json_response(StatusCode::ACCEPTED, &answer), &route_names);
    };
    for name in &route_names {
        Handled::Forwarded.count(name);
    }
    with_routes(sync::forward_sync(relay, snapshot, outgoing, target, &sync_event, deferred, link).await, &route_names)
}

/// Commits accepted events to the store, each on its own or (`whole`) all in one
/// transaction, timed as the request's `commit` span; a refusal is what every fired route
/// answers.
async fn commit(relay: &Relay, trace: &Trace, events: Vec<Accepted>, whole: bool) -> Result<Vec<AcceptOutcome>, IngressError> {
    let span = match events.is_empty() {
        true => None,
        false => Span::begin(trace.child(), "commit", SpanKind::Internal).map(|span| span.with("hookrelay.events", events.len() as i64)),
    };
    let committed = if whole { relay.engine.accept_whole(events).await } else { relay.engine.accept(events).await };
    crate::telemetry::end_with(span, &committed);
    committed.map_err(|err| match err {
        AcceptError::Full => IngressError::QueueFull,
        AcceptError::TargetFull(full) => IngressError::TargetQueueFull(full),
        AcceptError::Store(err) => {
            tracing::error!(error = %err, "could not store the event");
            IngressError::StoreFailed
        }
    })
}

/// What one request (or one entry of a batch) becomes: an event per passing route with its
/// rendered deliveries, the sync send if a sync route fired, and the render failures.
struct Prepared<'s> {
    events: Vec<Accepted>,
    sync_send: Option<(OutgoingRequest, &'s Target, String)>,
    render_failures: Vec<(String, &'s Target, RenderError)>,
    sync_failure: Option<(&'s str, RenderError)>,
}

fn prepare<'s>(
    snapshot: &'s Snapshot,
    inbound: &InboundRequest,
    body: Value,
    passed: Vec<RouteMatch<'s>>,
    received_at: chrono::DateTime<Utc>,
    trace: &Trace,
) -> Prepared<'s> {
    // The event as recorded (credentials masked) is the same for every route it fires.
    let content_type = inbound.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let recorded = (
        recorded_headers(&inbound.headers, &snapshot.redactions),
        snapshot.redactions.body(content_type, &inbound.raw),
        recorded_path(snapshot, inbound),
    );
    let planned = plan(snapshot, inbound, body, passed, received_at, || ulid::Ulid::generate().to_string());
    let mut events: Vec<Accepted> = Vec::with_capacity(planned.len());
    let mut sync_send: Option<(OutgoingRequest, &Target, String)> = None;
    let mut render_failures = Vec::new();
    let mut sync_failure = None;
    for PlannedRoute { matched, event_id, targets } in planned {
        let route = matched.route;
        let wants_sync = route.respond == Respond::Sync && sync_send.is_none() && sync_failure.is_none();
        let mut deliveries = Vec::with_capacity(route.targets.len());
        for (index, (target, rendered)) in targets.into_iter().enumerate() {
            let first_sync = wants_sync && index == 0;
            match rendered {
                Ok(Some(mut outgoing)) => {
                    trace.mark(&mut outgoing.headers, &inbound.headers);
                    if first_sync {
                        sync_send = Some((outgoing, target, event_id.clone()));
                    } else {
                        deliveries.push(delivery_of(&event_id, &outgoing, target, received_at.timestamp_millis()));
                    }
                }
                Ok(None) => tracing::debug!(route = %route.name, target = %target.name, "skipped by `when`"),
                Err(err) => {
                    crate::metrics::count_delivery(&route.name, &target.name, DeliveryResult::RenderError, None);
                    tracing::warn!(error = %err, "render failed");
                    if first_sync {
                        sync_failure = Some((route.name.as_str(), err));
                    } else {
                        render_failures.push((event_id.clone(), target, err));
                    }
                }
            }
        }
        let event = NewEvent {
            id: event_id,
            received_at: received_at.timestamp_millis(),
            route: route.name.clone(),
            event: matched.info.event.clone(),
            delivery_id: matched.info.delivery_id.clone(),
            method: inbound.method.to_string(),
            path: recorded.2.clone(),
            headers: recorded.0.clone(),
            body: recorded.1.clone(),
            replay_of: None,
        };
        let dedupe_since =
            route.dedupe.map(|window| received_at.timestamp_millis() - i64::try_from(window.as_millis()).unwrap_or(i64::MAX / 2));
        events.push(Accepted { event, deliveries, dedupe_since });
    }
    Prepared { events, sync_send, render_failures, sync_failure }
}

/// Every passing route counts `err`; the sender gets its answer once.
fn fail_all(routes: &[&str], err: IngressError) -> Response<Body> {
    for route in routes {
        count_request(route, err.metric_outcome());
    }
    err.counted()
}

/// Targets whose request could not be rendered fail at once (retrying cannot help); they
/// are logged on their event so the failure is visible in the delivery log.
pub(crate) async fn record_render_failures(relay: &Relay, accepted: &[&String], failures: Vec<(String, &Target, RenderError)>) {
    for (event_id, target, err) in failures {
        if !accepted.contains(&&event_id) {
            continue;
        }
        let now = now_ms();
        let summary = target.summary();
        let request =
            StoredRequest { method: summary.method.to_string(), url: summary.url.to_string(), headers: Vec::new(), body: Bytes::new() };
        let record = AttemptRecord {
            started_at: now,
            duration_ms: 0,
            request_url: None,
            request_method: request.method.clone(),
            request_headers: Vec::new(),
            request_body: Bytes::new(),
            status: None,
            response_headers: Vec::new(),
            response_body: Bytes::new(),
            error: Some(err.to_string()),
            counted: true,
        };
        let delivery = NewDelivery {
            id: ulid::Ulid::generate().to_string(),
            event_id: event_id.clone(),
            route: err.route.clone(),
            target: err.target.clone(),
            request,
            next_attempt_at: now,
            ordered_key: None,
            guarded: !target.trusted,
            handed_off: None,
        };
        let outcome = AttemptOutcome::Failed { reason: format!("render error: {err}") };
        let finished = FinishedDelivery { event: None, delivery, attempt: record, outcome };
        if let Err(store_err) = relay.engine.store().record_finished(Arc::from([finished]), now).await {
            tracing::warn!(error = %store_err, "could not log a render error");
        }
    }
}

//! The admin listener (DESIGN §7): health and readiness probes, Prometheus metrics, and the
//! JSON API. `/api/*` and `/metrics` need the bearer token when one is configured.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

mod browsers;
mod console;
mod error;
mod replay;
mod routes;
mod targets;

pub use error::ApiError;
pub use routes::follow_store;

/// Readiness probes usually give up after a second or two: answer before that.
const READY_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1500);

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::BodyExt;

use crate::delivery::client::{full, Body};
use crate::engine::{now_ms, AcceptError};
use crate::redact::Redactions;
use crate::relay::{Relay, ReloadOutcome};
use crate::reload::reload_now;
use crate::respond::json_response;
use crate::routing::Route;
use crate::store::{
    AttemptView, CancelFilter, DeliveryFilter, DeliveryStatus, DeliveryView, EventFilter, EventView, StoreError, DEFAULT_PAGE,
};
use crate::values::{instant_ms, secret_eq};

/// The bearer token a request carries ("" when none).
fn bearer<B>(request: &Request<B>) -> &str {
    request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
}

fn authorized(relay: &Relay, request: &Request<Incoming>) -> bool {
    let Some(token) = relay.admin_token() else {
        return true;
    };
    secret_eq(bearer(request).as_bytes(), token.as_bytes())
}

/// API request bodies (route definitions, sample requests) are small.
const MAX_API_BODY: usize = 1024 * 1024;

/// The delivery id in `/api/deliveries/{id}{call}`, when there is one.
fn delivery_call<'p>(path: &'p str, call: &str) -> Option<&'p str> {
    path.strip_prefix("/api/deliveries/")?.strip_suffix(call).filter(|id| !id.is_empty() && !id.contains('/'))
}

/// The event id in `/api/events/{id}{call}`, when there is one.
fn event_call<'p>(path: &'p str, call: &str) -> Option<&'p str> {
    path.strip_prefix("/api/events/")?.strip_suffix(call).filter(|id| !id.is_empty() && !id.contains('/'))
}

/// `POST /api/deliveries/cancel` with `{route?, target?, status?: "pending", before?}`
/// (`before`: RFC 3339, milliseconds since the epoch, or a duration ago): cancels the pending deliveries
/// that match all of them.
async fn cancel_pending(relay: &Arc<Relay>, body: &Bytes) -> Response<Body> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Filter {
        route: Option<String>,
        target: Option<String>,
        status: Option<String>,
        before: Option<Value>,
        /// Required to cancel every pending delivery, so that an empty body cancels nothing.
        #[serde(default)]
        all: bool,
    }
    let bad = |detail: String| ApiError::BadRequest { error: "invalid cancel filter", detail: json!(detail) }.into_response();
    let filter: Filter = match serde_json::from_slice(if body.is_empty() { b"{}" } else { body }) {
        Ok(filter) => filter,
        Err(err) => return bad(err.to_string()),
    };
    if filter.status.as_deref().is_some_and(|status| status != "pending") {
        return bad("only pending deliveries can be cancelled (status: pending)".to_string());
    }
    let before = match filter.before.as_ref().map(|before| instant_ms(before, now_ms())).transpose() {
        Ok(before) => before,
        Err(err) => return bad(format!("before: {err}")),
    };
    if filter.route.is_none() && filter.target.is_none() && before.is_none() && !filter.all {
        return bad("name a route, a target or a time (before), or say \"all\": true".to_string());
    }
    let filter = CancelFilter { route: filter.route, target: filter.target, before };
    match relay.engine.store().cancel_pending(filter, now_ms()).await {
        Ok(cancelled) => {
            recount(relay).await;
            relay.engine.feed().changed();
            json_response(StatusCode::OK, &json!({ "cancelled": cancelled }))
        }
        Err(err) => store_error(err),
    }
}

async fn read_body(request: Request<Incoming>) -> Result<Bytes, Response<Body>> {
    match http_body_util::Limited::new(request.into_body(), MAX_API_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) => Err(ApiError::TooLarge(err.to_string()).into_response()),
    }
}

pub async fn handle(relay: &Arc<Relay>, request: Request<Incoming>) -> Response<Body> {
    let mut response = answer(relay, request).await;
    crate::respond::secure(&mut response);
    response
}

async fn answer(relay: &Arc<Relay>, request: Request<Incoming>) -> Response<Body> {
    if let Some(problem) = crate::connections::host_problem(&request) {
        return ApiError::BadRequest { error: problem, detail: serde_json::Value::Null }.into_response();
    }
    let path = request.uri().path().trim_end_matches('/').to_string();
    let method = request.method().clone();
    match (method, path.as_str()) {
        (Method::GET, "/healthz") => return json_response(StatusCode::OK, &json!({ "status": "ok" })),
        (Method::GET, "/readyz") => {
            let ready = match relay.store_problem() {
                Ok(()) => match tokio::time::timeout(READY_PING_TIMEOUT, relay.engine.store().ping()).await {
                    Ok(answered) => answered.map_err(|err| err.to_string()),
                    Err(_) => Err(format!("the store did not answer within {READY_PING_TIMEOUT:?}")),
                },
                Err(reason) => Err(reason),
            };
            return match ready {
                Ok(()) => json_response(StatusCode::OK, &json!({ "status": "ready", "generation": relay.status().generation })),
                Err(reason) => ApiError::NotReady(reason).into_response(),
            };
        }
        _ => {}
    }
    if let Some(name) = browsers::rebound(relay, &request) {
        let detail = json!(format!("{name:?} is not this listener's address: add it to admin.hosts, or set admin.token"));
        return ApiError::Forbidden { error: "Host not allowed", detail }.into_response();
    }
    if request.method() == Method::GET {
        if let Some(asset) = console::asset(&path) {
            return asset;
        }
    }
    if !authorized(relay, &request) {
        return ApiError::Unauthorized.into_response();
    }
    if !browsers::changes(request.method()) {
        return api(relay, request, &path).await;
    }
    if !browsers::is_json(&request) {
        let detail = json!("send the body as JSON, with Content-Type: application/json (an empty body needs it too)");
        return ApiError::UnsupportedMediaType { error: "a change must be sent as JSON", detail }.into_response();
    }
    let (by, method) = (browsers::caller(&request, relay), request.method().clone());
    let response = api(relay, request, &path).await;
    browsers::audit(&by, &method, &path, response.status());
    response
}

/// `/metrics` and `/api/*`, once the caller is known to be allowed.
async fn api(relay: &Arc<Relay>, request: Request<Incoming>, path: &str) -> Response<Body> {
    match (request.method().clone(), path) {
        (Method::GET, "/metrics") => {
            let mut response = Response::new(full(crate::metrics::render()));
            response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; version=0.0.4"));
            response
        }
        (Method::GET, "/api/status") => {
            let status = relay.status();
            json_response(
                StatusCode::OK,
                &json!({
                    "config": {
                        "path": relay.config_path.display().to_string(),
                        "generation": status.generation,
                        "loaded_at": status.loaded_at,
                        "last_error": status.last_error,
                        "last_error_at": status.last_error_at,
                        "restart_required": status.restart_required,
                    },
                    "store": {
                        "path": relay.opened_store(),
                        "error": relay.store_problem().err(),
                    },
                    "routes": relay.snapshot().routes.len(),
                    "queue_depth": relay.engine.depth(),
                }),
            )
        }
        (Method::GET, "/api/routes") => {
            let snapshot = relay.snapshot();
            let routes: Vec<Value> = snapshot.routes.iter().map(describe).collect();
            json_response(StatusCode::OK, &json!({ "routes": routes }))
        }
        (Method::GET, "/api/events") => {
            let query = Query::of(&request);
            let filter = match query.event_filter() {
                Ok(filter) => filter,
                Err(err) => return err.into_response(),
            };
            match relay.engine.store().list_events(filter).await {
                Ok(mut page) => {
                    let snapshot = relay.snapshot();
                    for event in &mut page.items {
                        redact_event(event, &snapshot.redactions);
                        event.deliveries.iter_mut().for_each(|delivery| redact_delivery(delivery, &snapshot.redactions));
                    }
                    json_response(StatusCode::OK, &json!({ "items": page.items, "next_cursor": page.next_cursor }))
                }
                Err(err) => store_error(err),
            }
        }
        (Method::GET, "/api/targets") => targets::list(relay).await,
        (Method::GET, "/api/stream") => {
            let Some(frames) = relay.engine.feed().stream() else {
                let detail = json!(format!("at most {} live streams are open at once", crate::feed::MAX_STREAMS));
                return ApiError::Busy { error: "too many live streams", detail: Some(detail) }.into_response();
            };
            let frames = frames.map(|chunk| chunk.map(hyper::body::Frame::data));
            let body = http_body_util::StreamBody::new(frames).map_err(|never| match never {}).boxed();
            let mut response = Response::new(body);
            let headers = response.headers_mut();
            headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/event-stream"));
            headers.insert("x-accel-buffering", http::HeaderValue::from_static("no"));
            response
        }
        (Method::POST, other) if other.starts_with("/api/targets/") && (other.ends_with("/pause") || other.ends_with("/resume")) => {
            let pause = other.ends_with("/pause");
            let Some((route, target)) = targets::target_call(other, if pause { "/pause" } else { "/resume" }) else {
                return ApiError::NotFound { what: "not found", detail: None }.into_response();
            };
            match read_body(request).await {
                Ok(body) => targets::change(relay, &route, &target, pause, body).await,
                Err(response) => response,
            }
        }
        (Method::POST, "/api/replay") => match read_body(request).await {
            Ok(body) => replay::many(relay, body).await,
            Err(response) => response,
        },
        (Method::POST, other) if event_call(other, "/replay").is_some() => {
            let id = event_call(other, "/replay").unwrap_or_default().to_string();
            match read_body(request).await {
                Ok(body) => replay::one(relay, &id, body).await,
                Err(response) => response,
            }
        }
        (Method::GET, other) if other.starts_with("/api/events/") => {
            let id = &other["/api/events/".len()..];
            match relay.engine.store().get_event(id).await {
                Ok(Some(mut event)) => {
                    let snapshot = relay.snapshot();
                    redact_event(&mut event, &snapshot.redactions);
                    for delivery in &mut event.deliveries {
                        redact_delivery(delivery, &snapshot.redactions);
                    }
                    json_response(StatusCode::OK, &json!(event))
                }
                Ok(None) => ApiError::not_found("no such event", id).into_response(),
                Err(err) => store_error(err),
            }
        }
        (Method::GET, "/api/deliveries") => {
            let query = Query::of(&request);
            let status = match query.get("status").map(|s| s.parse::<DeliveryStatus>()).transpose() {
                Ok(status) => status,
                Err(err) => return store_error(err),
            };
            let filter = DeliveryFilter {
                status,
                route: query.get("route"),
                target: query.get("target"),
                limit: query.limit(),
                cursor: query.get("cursor"),
            };
            match relay.engine.store().list_deliveries(filter).await {
                Ok(mut page) => {
                    let snapshot = relay.snapshot();
                    page.items.iter_mut().for_each(|delivery| redact_delivery(delivery, &snapshot.redactions));
                    json_response(StatusCode::OK, &json!({ "items": page.items, "next_cursor": page.next_cursor }))
                }
                Err(err) => store_error(err),
            }
        }
        (Method::POST, "/api/deliveries/cancel") => match read_body(request).await {
            Ok(body) => cancel_pending(relay, &body).await,
            Err(response) => response,
        },
        (Method::POST, other) if delivery_call(other, "/cancel").is_some() => {
            let id = delivery_call(other, "/cancel").unwrap_or_default();
            match relay.engine.store().cancel(id, now_ms()).await {
                Ok(mut delivery) => {
                    recount(relay).await;
                    announce(relay, &delivery);
                    redact_delivery(&mut delivery, &relay.snapshot().redactions);
                    json_response(StatusCode::OK, &json!(delivery))
                }
                Err(err) => store_error(err),
            }
        }
        (Method::POST, other) if delivery_call(other, "/retry").is_some() => {
            retry(relay, delivery_call(other, "/retry").unwrap_or_default()).await
        }
        (Method::GET, other) if other.starts_with("/api/deliveries/") => {
            let id = &other["/api/deliveries/".len()..];
            match relay.engine.store().get_delivery(id).await {
                Ok(Some((mut delivery, mut attempts))) => {
                    let snapshot = relay.snapshot();
                    redact_delivery(&mut delivery, &snapshot.redactions);
                    attempts.iter_mut().for_each(|attempt| redact_attempt(attempt, &snapshot.redactions));
                    json_response(StatusCode::OK, &json!({ "delivery": delivery, "attempts": attempts }))
                }
                Ok(None) => ApiError::not_found("no such delivery", id).into_response(),
                Err(err) => store_error(err),
            }
        }
        (Method::POST, "/api/routes") => match read_body(request).await {
            Ok(body) => routes::create(relay, body).await,
            Err(response) => response,
        },
        (Method::POST, other) if other.starts_with("/api/routes/") && (other.ends_with("/render") || other.ends_with("/test")) => {
            let rest = &other["/api/routes/".len()..];
            let (name, call) = rest.rsplit_once('/').unwrap_or((rest, ""));
            let (name, call) = (name.to_string(), call.to_string());
            match read_body(request).await {
                Ok(body) if call == "render" => routes::render(relay, &name, body).await,
                Ok(body) => routes::test(relay, &name, body).await,
                Err(response) => response,
            }
        }
        (Method::PUT, other) if other.starts_with("/api/routes/") => {
            let name = other["/api/routes/".len()..].to_string();
            match read_body(request).await {
                Ok(body) => routes::replace(relay, &name, body).await,
                Err(response) => response,
            }
        }
        (Method::DELETE, other) if other.starts_with("/api/routes/") => routes::delete(relay, &other["/api/routes/".len()..]).await,
        (Method::GET, other) if other.starts_with("/api/routes/") => {
            let name = &other["/api/routes/".len()..];
            match relay.snapshot().route(name) {
                Some(route) => json_response(StatusCode::OK, &describe(route)),
                None => ApiError::not_found("no such route", name).into_response(),
            }
        }
        (Method::POST, "/api/reload") => match reload_now(relay).await {
            Ok(ReloadOutcome::Reloaded { generation }) => {
                json_response(StatusCode::OK, &json!({ "reloaded": true, "generation": generation }))
            }
            Ok(ReloadOutcome::Unchanged { generation }) => {
                json_response(StatusCode::OK, &json!({ "reloaded": false, "generation": generation }))
            }
            Err(errors) => {
                let detail: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
                ApiError::Invalid { error: "config invalid; the previous config keeps serving", detail: json!(detail) }.into_response()
            }
        },
        (
            _,
            "/metrics" | "/api/status" | "/api/routes" | "/api/reload" | "/api/events" | "/api/deliveries" | "/api/replay" | "/api/targets"
            | "/api/stream",
        ) => ApiError::MethodNotAllowed.into_response(),
        _ => ApiError::NotFound { what: "not found", detail: None }.into_response(),
    }
}

/// The query string of an admin request.
struct Query(Vec<(String, String)>);

impl Query {
    fn of(request: &Request<Incoming>) -> Query {
        let text = request.uri().query().unwrap_or_default();
        Query(form_urlencoded::parse(text.as_bytes()).into_owned().collect())
    }

    fn get(&self, name: &str) -> Option<String> {
        self.0.iter().find(|(k, v)| k == name && !v.is_empty()).map(|(_, v)| v.clone())
    }

    /// `route`, `event` (a glob), `since`, `until` (see [`instant_ms`]), `status` (of a
    /// delivery), `limit` and `cursor`.
    fn event_filter(&self) -> Result<EventFilter, ApiError> {
        let time = |name: &'static str| {
            self.get(name)
                .map(|text| instant_ms(&Value::String(text), now_ms()))
                .transpose()
                .map_err(|err| ApiError::BadRequest { error: "invalid event filter", detail: json!(format!("{name}: {err}")) })
        };
        Ok(EventFilter {
            route: if self.get("unmatched").as_deref() == Some("true") {
                Some(crate::store::UNMATCHED_ROUTE.to_string())
            } else {
                self.get("route")
            },
            event: self.get("event"),
            since: time("since")?,
            until: time("until")?,
            status: self.get("status").map(|s| s.parse::<DeliveryStatus>()).transpose().map_err(ApiError::Store)?,
            limit: self.limit(),
            cursor: self.get("cursor"),
        })
    }

    /// Page size; the store clamps it to its bounds, a non-number means the default.
    fn limit(&self) -> usize {
        self.get("limit").and_then(|l| l.parse().ok()).unwrap_or(DEFAULT_PAGE)
    }
}

/// What the API shows of stored requests and events: credential headers, query values and
/// body fields masked. A delivery that forwards the original body keeps its credential
/// fields in the store (the receiver may check them); they are masked here.
fn redact_delivery(delivery: &mut DeliveryView, redactions: &Redactions) {
    delivery.request.headers = redactions.headers(&delivery.request.headers);
    delivery.request.url = redactions.url(&delivery.request.url);
    delivery.request.body = redact_text(redactions, &delivery.request.headers, &delivery.request.body);
}

fn redact_attempt(attempt: &mut AttemptView, redactions: &Redactions) {
    attempt.request_headers = redactions.headers(&attempt.request_headers);
    attempt.request_url = redactions.url(&attempt.request_url);
    attempt.request_body = redact_text(redactions, &attempt.request_headers, &attempt.request_body);
}

fn redact_event(event: &mut EventView, redactions: &Redactions) {
    event.headers = redactions.headers(&event.headers);
    event.body = redact_text(redactions, &event.headers, &event.body);
}

fn redact_text(redactions: &Redactions, headers: &[(String, String)], body: &str) -> String {
    let content_type = headers.iter().find(|(name, _)| name.eq_ignore_ascii_case("content-type")).map(|(_, value)| value.as_str());
    let masked = redactions.shown_body(content_type, &Bytes::copy_from_slice(body.as_bytes()));
    String::from_utf8_lossy(&masked).into_owned()
}

/// `POST /api/deliveries/{id}/retry`: due now. A finished delivery joins the queue again,
/// so it needs room there and in its target's share, like a new one.
async fn retry(relay: &Arc<Relay>, id: &str) -> Response<Body> {
    let store = relay.engine.store();
    let before = match store.get_delivery(id).await {
        Ok(Some((before, _))) => before,
        Ok(None) => return ApiError::not_found("no such delivery", id).into_response(),
        Err(err) => return store_error(err),
    };
    let retried = if before.status.is_finished() {
        relay.engine.requeue(&before.route, &before.target, store.retry_now(id, now_ms())).await
    } else {
        store.retry_now(id, now_ms()).await.map_err(AcceptError::Store)
    };
    match retried {
        Ok(mut delivery) => {
            announce(relay, &delivery);
            relay.engine.wake();
            redact_delivery(&mut delivery, &relay.snapshot().redactions);
            json_response(StatusCode::OK, &json!(delivery))
        }
        Err(AcceptError::Store(err)) => store_error(err),
        Err(AcceptError::Full) => ApiError::Busy { error: "the queue is full: nothing was retried", detail: None }.into_response(),
        Err(AcceptError::TargetFull(full)) => {
            ApiError::Busy { error: "the target's share of the queue is full: nothing was retried", detail: Some(full.describe()) }
                .into_response()
        }
    }
}

/// Tells the live feed about a delivery changed by hand.
fn announce(relay: &Relay, delivery: &DeliveryView) {
    relay.engine.feed().delivery(crate::feed::DeliveryChange {
        id: &delivery.id,
        event_id: &delivery.event_id,
        route: &delivery.route,
        target: &delivery.target,
        status: delivery.status,
        attempts: delivery.attempts,
        last_status: delivery.last_status,
    });
}

/// The queue counted again after a change by hand; a failure only leaves the count stale
/// until the next change.
async fn recount(relay: &Relay) {
    if let Err(err) = relay.engine.recount().await {
        tracing::warn!(error = %err, "could not count the queue again");
    }
}

pub(crate) fn store_error(err: StoreError) -> Response<Body> {
    ApiError::Store(err).into_response()
}

/// A route as the API shows it; secrets never appear (targets show their URL template).
pub(crate) fn describe(route: &Route) -> Value {
    let methods: Vec<&str> = route.methods.iter().map(|m| m.as_str()).collect();
    let targets: Vec<_> = route.targets.iter().map(|t| t.summary()).collect();
    json!({
        "name": route.name,
        "origin": route.origin,
        "file": route.file,
        "source": format!("{:?}", route.source.kind).to_lowercase(),
        "path": route.path.as_str(),
        "methods": methods,
        "respond": route.respond,
        "final": route.is_final,
        "targets": targets,
    })
}

//! Routes through the admin API (DESIGN §7): create, replace and delete routes kept in the
//! store (YAML routes are read-only), and the `render` (dry run) and `test` (send now)
//! calls on any route. A change is compiled together with the whole config first and only
//! persisted and swapped in if everything still compiles.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};

use crate::config::{ApiRoute, ConfigErrors};
use crate::delivery::attempt::{AttemptSettings, Tried};
use crate::delivery::client::{header_pairs, Body, MAX_RECORDED_ANSWER};
use crate::delivery::verdict::{Judged, TargetSettings};
use crate::engine::now_ms;
use crate::inbound::InboundRequest;
use crate::plan::plan;
use crate::relay::Relay;
use crate::render::{dry_run, RequestView};
use crate::respond::json_response;
use crate::routing::{Origin, Route};
use crate::store::StoreNotice;

use super::{describe, store_error, ApiError};

/// What `render` and `test` take; everything optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleRequest {
    pub body: Option<Value>,
    #[serde(default)]
    pub headers: HashMap<String, String>,
    pub path: Option<String>,
    pub method: Option<String>,
}

/// A request the API refuses with 400, before anything is touched.
fn bad_request(error: &'static str, detail: impl Into<Value>) -> ApiError {
    ApiError::BadRequest { error, detail: detail.into() }
}

fn invalid(errors: ConfigErrors) -> Response<Body> {
    let detail: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
    ApiError::Invalid { error: "route invalid", detail: json!(detail) }.into_response()
}

fn read_only(name: &str) -> Response<Body> {
    ApiError::Conflict { error: "route is defined in the config file and is read-only through the API", detail: json!(name) }
        .into_response()
}

/// Runs a compile on a blocking thread (it reads the config files).
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(work).await.ok()
}

fn definition_of(body: &Bytes, name_from_path: Option<&str>) -> Result<(String, Value), ApiError> {
    let mut definition: Value = serde_json::from_slice(body).map_err(|err| bad_request("body is not JSON", err.to_string()))?;
    let Some(fields) = definition.as_object_mut() else {
        return Err(bad_request("a route is a JSON object with the YAML route schema", Value::Null));
    };
    let name = match (fields.get("name").and_then(Value::as_str), name_from_path) {
        (Some(given), Some(path)) if given != path => {
            return Err(bad_request("the body's name differs from the URL's", json!([given, path])))
        }
        (Some(given), _) => given.to_string(),
        (None, Some(path)) => {
            fields.insert("name".into(), json!(path));
            path.to_string()
        }
        (None, None) => return Err(bad_request("a route needs a name", Value::Null)),
    };
    Ok((name, definition))
}

fn is_yaml_route(relay: &Relay, name: &str) -> bool {
    relay.snapshot().route(name).is_some_and(|route| route.origin == Origin::Yaml)
}

/// Compiles with `routes`, persists with `persist`, then swaps in.
async fn change(
    relay: &Arc<Relay>,
    routes: Vec<ApiRoute>,
    persist: impl std::future::Future<Output = Result<(), Response<Body>>>,
) -> Result<(), Response<Body>> {
    let checking = relay.clone();
    let candidate = routes.clone();
    match blocking(move || checking.check_api_routes(&candidate)).await {
        Some(Ok(())) => {}
        Some(Err(errors)) => return Err(invalid(errors)),
        None => return Err(ApiError::Internal("route check failed").into_response()),
    }
    persist.await?;
    let applying = relay.clone();
    match blocking(move || applying.apply_api_routes(routes)).await {
        Some(Ok(_)) => Ok(()),
        // The files changed between the check and now; the store has the route, the next
        // good reload serves it.
        Some(Err(errors)) => Err(invalid(errors)),
        None => Err(ApiError::Internal("route swap failed").into_response()),
    }
}

/// On a shared store: serves the routes other relays create, replace or delete through
/// their admin API, as soon as the store says they changed.
pub async fn follow_store(relay: Arc<Relay>, mut notices: broadcast::Receiver<StoreNotice>, mut shutdown: watch::Receiver<bool>) {
    // The first pass catches what changed between reading the routes at startup and
    // subscribing.
    let mut first = true;
    loop {
        if !first {
            let notice = tokio::select! {
                notice = notices.recv() => notice,
                _ = shutdown.changed() => return,
            };
            match notice {
                Ok(StoreNotice::RoutesChanged) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Ok(StoreNotice::Due | StoreNotice::TargetsChanged) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
        first = false;
        let _guard = relay.api_lock.lock().await;
        let stored = match relay.engine.store().list_routes().await {
            Ok(stored) => stored,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the API routes another relay changed");
                continue;
            }
        };
        let routes: Vec<ApiRoute> = stored.into_iter().map(|route| ApiRoute { name: route.name, definition: route.definition }).collect();
        let mut serving = relay.api_routes();
        serving.sort_by(|a, b| a.name.cmp(&b.name));
        if routes == serving {
            // This relay's own change, or nothing new.
            continue;
        }
        let applying = relay.clone();
        match blocking(move || applying.apply_api_routes(routes)).await {
            Some(Ok(_)) => tracing::info!("API routes changed by another relay: now serving them"),
            Some(Err(errors)) => {
                tracing::error!(errors = %errors, "API routes changed by another relay do not compile here; serving the ones before")
            }
            None => tracing::error!("applying API routes changed by another relay failed"),
        }
    }
}

/// The API routes a change starts from: on a shared store, the store's (another relay may
/// have changed them a moment ago), so the change is checked against what all relays serve.
async fn api_routes_now(relay: &Relay) -> Result<Vec<ApiRoute>, Response<Body>> {
    let store = relay.engine.store();
    if !store.shared() {
        return Ok(relay.api_routes());
    }
    let stored = store.list_routes().await.map_err(store_error)?;
    Ok(stored.into_iter().map(|route| ApiRoute { name: route.name, definition: route.definition }).collect())
}

fn created_view(relay: &Relay, name: &str, status: StatusCode) -> Response<Body> {
    match relay.snapshot().route(name) {
        Some(route) => json_response(status, &describe(route)),
        None => json_response(status, &json!({ "name": name })),
    }
}

pub async fn create(relay: &Arc<Relay>, body: Bytes) -> Response<Body> {
    let (name, definition) = match definition_of(&body, None) {
        Ok(parsed) => parsed,
        Err(refusal) => return refusal.into_response(),
    };
    let _guard = relay.api_lock.lock().await;
    if is_yaml_route(relay, &name) {
        return read_only(&name);
    }
    let mut routes = match api_routes_now(relay).await {
        Ok(routes) => routes,
        Err(response) => return response,
    };
    if routes.iter().any(|r| r.name == name) {
        return ApiError::Conflict { error: "a route with this name exists", detail: json!(name) }.into_response();
    }
    routes.push(ApiRoute { name: name.clone(), definition: definition.clone() });
    let store = relay.engine.store().clone();
    let persist = async { store.insert_route(&name, definition, now_ms()).await.map(|_| ()).map_err(store_error) };
    match change(relay, routes, persist).await {
        Ok(()) => created_view(relay, &name, StatusCode::CREATED),
        Err(response) => response,
    }
}

pub async fn replace(relay: &Arc<Relay>, name: &str, body: Bytes) -> Response<Body> {
    let (name, definition) = match definition_of(&body, Some(name)) {
        Ok(parsed) => parsed,
        Err(refusal) => return refusal.into_response(),
    };
    let _guard = relay.api_lock.lock().await;
    if is_yaml_route(relay, &name) {
        return read_only(&name);
    }
    let mut routes = match api_routes_now(relay).await {
        Ok(routes) => routes,
        Err(response) => return response,
    };
    let Some(existing) = routes.iter_mut().find(|r| r.name == name) else {
        return ApiError::not_found("no such API route", name).into_response();
    };
    existing.definition = definition.clone();
    let store = relay.engine.store().clone();
    let persist = async { store.update_route(&name, definition, now_ms()).await.map(|_| ()).map_err(store_error) };
    match change(relay, routes, persist).await {
        Ok(()) => created_view(relay, &name, StatusCode::OK),
        Err(response) => response,
    }
}

pub async fn delete(relay: &Arc<Relay>, name: &str) -> Response<Body> {
    let _guard = relay.api_lock.lock().await;
    if is_yaml_route(relay, name) {
        return read_only(name);
    }
    let mut routes = match api_routes_now(relay).await {
        Ok(routes) => routes,
        Err(response) => return response,
    };
    let before = routes.len();
    routes.retain(|r| r.name != name);
    if routes.len() == before {
        return ApiError::not_found("no such API route", name).into_response();
    }
    let store = relay.engine.store().clone();
    let persist = async { store.delete_route(name).await.map(|_| ()).map_err(store_error) };
    match change(relay, routes, persist).await {
        Ok(()) => {
            let mut response = Response::new(crate::delivery::client::full(Bytes::new()));
            *response.status_mut() = StatusCode::NO_CONTENT;
            response
        }
        Err(response) => response,
    }
}

/// The sample request for `render` / `test`; the route's own path by default (parameters
/// filled with their names, `/*` with nothing).
fn sample(route: &Route, body: &Bytes, default_body: Option<Value>) -> Result<InboundRequest, ApiError> {
    let spec: SampleRequest = if body.is_empty() {
        SampleRequest::default()
    } else {
        serde_json::from_slice(body).map_err(|err| bad_request("invalid request", err.to_string()))?
    };
    let mut headers = HeaderMap::new();
    for (name, value) in &spec.headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad_request("bad header name", json!(name)))?;
        let value = HeaderValue::from_str(value).map_err(|_| bad_request("bad header value", json!(name.as_str())))?;
        headers.insert(name, value);
    }
    let raw = match spec.body.or(default_body) {
        Some(Value::String(text)) => Bytes::from(text),
        Some(value) => {
            headers.entry(http::header::CONTENT_TYPE).or_insert(HeaderValue::from_static("application/json"));
            Bytes::from(value.to_string())
        }
        None => Bytes::new(),
    };
    let path = spec.path.unwrap_or_else(|| {
        let pattern = route.path.as_str().trim_end_matches("/*");
        pattern.replace(['{', '}'], "")
    });
    let method = match spec.method {
        Some(method) => Method::from_bytes(method.to_ascii_uppercase().as_bytes()).map_err(|_| bad_request("bad method", json!(method)))?,
        None => route.methods.first().cloned().unwrap_or(Method::POST),
    };
    let peer = std::net::IpAddr::from([127, 0, 0, 1]);
    Ok(InboundRequest::new(method, &path, headers, raw, peer))
}

pub async fn render(relay: &Arc<Relay>, name: &str, body: Bytes) -> Response<Body> {
    let snapshot = relay.snapshot();
    let Some(route) = snapshot.route(name) else {
        return ApiError::not_found("no such route", name).into_response();
    };
    let request = match sample(route, &body, None) {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response(),
    };
    match dry_run(&snapshot, &request, Some(name), false) {
        Ok(report) => json_response(StatusCode::OK, &json!(report.routes.first())),
        Err(message) => ApiError::not_found("no such route", message).into_response(),
    }
}

/// Renders the route's targets for the sample and sends them now; nothing is stored.
pub async fn test(relay: &Arc<Relay>, name: &str, body: Bytes) -> Response<Body> {
    let snapshot = relay.snapshot();
    let Some(route) = snapshot.route(name) else {
        return ApiError::not_found("no such route", name).into_response();
    };
    let mut request = match sample(route, &body, Some(json!({ "event": "ping" }))) {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response(),
    };
    let params = route.path.matches(&request.path).unwrap_or_default();
    let info = route.source.extract(&request.headers, request.body.as_matchable());
    let matched = crate::routing::RouteMatch { route, params, info };
    let parsed = request.take_body();
    let planned = plan(&snapshot, &request, parsed, vec![matched], Utc::now(), || format!("test-{}", ulid::Ulid::generate()));
    let mut results = Vec::new();
    for (target, rendered) in planned.into_iter().flat_map(|route| route.targets) {
        let outgoing = match rendered {
            Ok(Some(outgoing)) => outgoing,
            Ok(None) => {
                results.push(json!({ "target": target.name, "skipped": "`when` did not render \"true\"" }));
                continue;
            }
            Err(err) => {
                results.push(json!({ "target": target.name, "error": err.to_string() }));
                continue;
            }
        };
        // A sample rarely has the values a trigger needs; sending one with `?branch=` starts
        // a real pipeline with the wrong parameters, so not even `strict: false` sends it here.
        if let Some(why) = target.empty_url_value(&outgoing.url) {
            let error = format!("not sent: {why}; the test call never sends an empty URL value, whatever `strict` says");
            results.push(json!({ "target": target.name, "error": error }));
            continue;
        }
        let send = AttemptSettings::for_rendered(
            &relay.outbound,
            target,
            snapshot.settings.allow_private,
            &snapshot.redactions,
            MAX_RECORDED_ANSWER,
        );
        let Tried { sent, answer: attempt, .. } = send.attempt(outgoing, now_ms()).await;
        let judged = attempt.status.map(|status| TargetSettings::of(Some(target)).judge(status, &attempt.answer));
        results.push(json!({
            "target": target.name,
            "request": RequestView::new(&sent, false, &snapshot.redactions),
            "status": attempt.status,
            "success": judged == Some(Judged::Delivered),
            "response_headers": header_pairs(&attempt.headers),
            "response_body": String::from_utf8_lossy(&attempt.answer),
            "duration_ms": attempt.duration.as_millis() as u64,
            "error": attempt.error,
        }));
    }
    json_response(
        StatusCode::OK,
        &json!({
            "route": route.name,
            "note": "these requests were really sent to the targets; a target whose URL would carry an empty value was not sent",
            "attempts": results,
        }),
    )
}

//! The admin listener (DESIGN §7): health and readiness probes, Prometheus metrics, and the
//! JSON API. `/api/*` and `/metrics` need the bearer token when one is configured.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::{Relay, ReloadOutcome};
use crate::delivery::client::{full, Body};
use crate::reload::reload_now;
use crate::respond::{json_error, json_response};
use crate::routing::Route;
use crate::values::secret_eq;

pub async fn serve(listener: TcpListener, relay: Arc<Relay>, mut shutdown: watch::Receiver<bool>) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(error = %err, "admin accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let relay = relay.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let relay = relay.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&relay, request).await) }
            });
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn authorized(relay: &Relay, request: &Request<Incoming>) -> bool {
    let snapshot = relay.snapshot();
    let Some(token) = snapshot.settings.admin.as_ref().and_then(|a| a.token.as_deref()) else {
        return true;
    };
    let given = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    secret_eq(given.as_bytes(), token.as_bytes())
}

pub async fn handle(relay: &Arc<Relay>, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().trim_end_matches('/').to_string();
    let method = request.method().clone();
    match (method, path.as_str()) {
        (Method::GET, "/healthz") => return json_response(StatusCode::OK, &json!({ "status": "ok" })),
        (Method::GET, "/readyz") => {
            return json_response(StatusCode::OK, &json!({ "status": "ready", "generation": relay.status().generation }))
        }
        _ => {}
    }
    if !authorized(relay, &request) {
        let mut response = json_error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token", None);
        response.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
        return response;
    }
    match (request.method().clone(), path.as_str()) {
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
        (Method::GET, other) if other.starts_with("/api/routes/") => {
            let name = &other["/api/routes/".len()..];
            match relay.snapshot().route(name) {
                Some(route) => json_response(StatusCode::OK, &describe(route)),
                None => json_error(StatusCode::NOT_FOUND, "no such route", Some(json!(name))),
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
                json_error(StatusCode::UNPROCESSABLE_ENTITY, "config invalid; the previous config keeps serving", Some(json!(detail)))
            }
        },
        (_, "/metrics" | "/api/status" | "/api/routes" | "/api/reload") => {
            json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed", None)
        }
        _ => json_error(StatusCode::NOT_FOUND, "not found", None),
    }
}

/// A route as the API shows it; secrets never appear (targets show their URL template).
fn describe(route: &Route) -> Value {
    let methods: Vec<&str> = route.methods.iter().map(|m| m.as_str()).collect();
    let targets: Vec<_> = route.targets.iter().map(|t| t.summary()).collect();
    json!({
        "name": route.name,
        "origin": "yaml",
        "file": route.file,
        "source": format!("{:?}", route.source.kind).to_lowercase(),
        "path": route.path.as_str(),
        "methods": methods,
        "respond": route.respond,
        "final": route.is_final,
        "targets": targets,
    })
}

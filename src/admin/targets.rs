//! The admin API's targets: `GET /api/targets` (every target's circuit-breaker state and
//! queue) and `POST /api/targets/{route}/{target}/pause|resume`.

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::{store_error, ApiError};
use crate::delivery::breaker::{TargetChange, TargetState};
use crate::delivery::client::Body;
use crate::engine::now_ms;
use crate::relay::Relay;
use crate::respond::json_response;
use crate::store::TargetRecord;

/// Every target of the config serving now, then any other with a record or a queue (a
/// target removed by a reload while deliveries to it wait).
pub async fn list(relay: &Arc<Relay>) -> Response<Body> {
    let queued = match relay.engine.store().queued_by_target().await {
        Ok(queued) => queued,
        Err(err) => return store_error(err),
    };
    let mut names: Vec<(String, String)> = Vec::new();
    for route in relay.snapshot().routes.iter() {
        names.extend(route.targets.iter().map(|target| (route.name.clone(), target.name.clone())));
    }
    for (route, target, _) in &queued {
        if !names.iter().any(|(r, t)| r == route && t == target) {
            names.push((route.clone(), target.clone()));
        }
    }
    let now = now_ms();
    let items: Vec<Value> = names
        .iter()
        .map(|(route, target)| {
            let record = relay.engine.target_record(route, target).unwrap_or_else(|| TargetRecord::new(route, target));
            let waiting = queued.iter().find(|(r, t, _)| r == route && t == target).map_or(0, |(_, _, n)| *n);
            let mut item = describe(&record, waiting, now);
            item["max_queued"] = json!(relay.engine.max_queued(route, target));
            item
        })
        .collect();
    json_response(StatusCode::OK, &json!({ "items": items }))
}

fn describe(record: &TargetRecord, queued: u64, now: i64) -> Value {
    let state = record.state(now);
    let next_probe = match state {
        TargetState::Open | TargetState::HalfOpen => record.blocked_until,
        TargetState::Closed | TargetState::Paused => None,
    };
    let mut item = json!({
        "route": record.route,
        "target": record.target,
        "state": state,
        "failures": record.failures,
        "next_probe": next_probe,
        "queued": queued,
    });
    if state == TargetState::Paused {
        item["paused_at"] = json!(record.paused_at);
        item["paused_reason"] = json!(record.paused_reason);
    }
    item
}

/// The route and target in `/api/targets/{route}/{target}{call}`, percent-decoded.
pub fn target_call(path: &str, call: &str) -> Option<(String, String)> {
    let (route, target) = path.strip_prefix("/api/targets/")?.strip_suffix(call)?.split_once('/')?;
    let decode = |text: &str| percent_encoding::percent_decode_str(text).decode_utf8().ok().map(|text| text.into_owned());
    Some((decode(route)?, decode(target)?)).filter(|(route, target)| !route.is_empty() && !target.is_empty() && !target.contains('/'))
}

/// `pause` (optional `{"reason": "…"}`) or `resume` one target.
pub async fn change(relay: &Arc<Relay>, route: &str, target: &str, pause: bool, body: Bytes) -> Response<Body> {
    let known = relay.snapshot().route(route).is_some_and(|r| r.targets.iter().any(|t| t.name == target))
        || relay.engine.target_record(route, target).is_some();
    if !known {
        return ApiError::not_found("no such target", format!("{route}/{target}")).into_response();
    }
    let change = if pause {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Pause {
            reason: Option<String>,
        }
        match serde_json::from_slice::<Pause>(if body.is_empty() { b"{}" } else { &body }) {
            Ok(Pause { reason }) => TargetChange::Pause(reason.unwrap_or_else(|| "paused by hand".to_string())),
            Err(err) => return ApiError::BadRequest { error: "invalid pause", detail: json!(err.to_string()) }.into_response(),
        }
    } else {
        TargetChange::Resume
    };
    match relay.engine.change_target(route, target, change).await {
        Ok(record) => {
            tracing::info!(route, target, paused = pause, "target changed by the admin API");
            json_response(StatusCode::OK, &describe(&record, 0, now_ms()))
        }
        Err(err) => store_error(err),
    }
}

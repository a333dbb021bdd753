//! The admin API's replay calls: `POST /api/events/{id}/replay` for one stored event and
//! `POST /api/replay` for a filtered, bounded page of them, each through the config
//! serving now, dry run or for real.

use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{store_error, ApiError};
use crate::delivery::client::Body;
use crate::engine::{now_ms, AcceptError, Accepted};
use crate::relay::Relay;
use crate::replay::{self, Comparison, ReplayError, RouteChoice};
use crate::respond::json_response;
use crate::store::{DeliveryStatus, EventFilter, EventView};
use crate::values::instant_ms;

/// Events one `POST /api/replay` call takes at most; the answer's `next_cursor` goes on.
pub const MAX_REPLAY_PAGE: usize = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct One {
    #[serde(default)]
    dry_run: bool,
    routes: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Many {
    #[serde(default)]
    dry_run: bool,
    routes: Option<Vec<String>>,
    /// Of the stored events: the route that took them, their event name (a glob), when
    /// they were received, and the status of one of their deliveries.
    route: Option<String>,
    event: Option<String>,
    since: Option<Value>,
    until: Option<Value>,
    status: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
    /// Only requests kept unmatched (`store.keep_unmatched`).
    #[serde(default)]
    unmatched: bool,
    /// Required for a real replay without any filter, so that an empty body resends nothing.
    #[serde(default)]
    all: bool,
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes, what: &'static str) -> Result<T, ApiError> {
    serde_json::from_slice(if body.is_empty() { b"{}" } else { body })
        .map_err(|err| ApiError::BadRequest { error: what, detail: json!(err.to_string()) })
}

fn replay_error(err: ReplayError) -> ApiError {
    ApiError::BadRequest { error: "invalid replay", detail: json!(err.to_string()) }
}

/// `POST /api/events/{id}/replay` with `{"dry_run": bool, "routes": [names]?}`.
pub async fn one(relay: &Arc<Relay>, id: &str, body: Bytes) -> Response<Body> {
    let request: One = match parse(&body, "invalid replay request") {
        Ok(request) => request,
        Err(err) => return err.into_response(),
    };
    let event = match relay.engine.store().get_event(id).await {
        Ok(Some(event)) => event,
        Ok(None) => return ApiError::not_found("no such event", id).into_response(),
        Err(err) => return store_error(err),
    };
    let choice = RouteChoice::from_list(request.routes);
    let snapshot = relay.snapshot();
    let comparison = match replay::compare(&snapshot, &event, &choice) {
        Ok(comparison) => comparison,
        Err(err) => return replay_error(err).into_response(),
    };
    if request.dry_run {
        return json_response(StatusCode::OK, &answer(&comparison, None, true));
    }
    if comparison.routes.is_empty() {
        let detail = serde_json::to_value(&comparison).unwrap_or(Value::Null);
        return ApiError::Invalid { error: "no route replays the event now", detail }.into_response();
    }
    match commit(relay, &[&event], &choice).await {
        Ok(mut ids) => json_response(StatusCode::OK, &answer(&comparison, ids.pop(), false)),
        Err(err) => err.into_response(),
    }
}

/// `POST /api/replay`: a page of stored events (newest first, at most [`MAX_REPLAY_PAGE`]),
/// each replayed as [`one`] would.
pub async fn many(relay: &Arc<Relay>, body: Bytes) -> Response<Body> {
    let mut request: Many = match parse(&body, "invalid replay filter") {
        Ok(request) => request,
        Err(err) => return err.into_response(),
    };
    // An empty text filters nothing, as in `GET /api/events`.
    for text in [&mut request.route, &mut request.event, &mut request.status, &mut request.cursor] {
        if text.as_deref() == Some("") {
            *text = None;
        }
    }
    if request.unmatched {
        if request.route.is_some() {
            let detail = json!("a request kept unmatched has no route: give route or unmatched, not both");
            return ApiError::BadRequest { error: "invalid replay filter", detail }.into_response();
        }
        request.route = Some(crate::store::UNMATCHED_ROUTE.to_string());
    }
    // A cursor only says where a page starts, not which events: it is no filter.
    let unfiltered = request.route.is_none()
        && request.event.is_none()
        && request.since.is_none()
        && request.until.is_none()
        && request.status.is_none();
    if unfiltered && !request.dry_run && !request.all {
        let detail = json!("name a route, an event, a time (since, until) or a status, or say \"all\": true");
        return ApiError::BadRequest { error: "invalid replay filter", detail }.into_response();
    }
    let filter = match filter_of(&request) {
        Ok(filter) => filter,
        Err(err) => return err.into_response(),
    };
    let page = match relay.engine.store().list_events(filter).await {
        Ok(page) => page,
        Err(err) => return store_error(err),
    };
    let choice = RouteChoice::from_list(request.routes);
    let snapshot = relay.snapshot();
    let mut compared = Vec::with_capacity(page.items.len());
    for listed in page.items {
        // Lists leave out deliveries; the comparison needs what was sent the first time.
        let event = match relay.engine.store().get_event(&listed.id).await {
            Ok(Some(event)) => event,
            Ok(None) => continue, // pruned since it was listed
            Err(err) => return store_error(err),
        };
        match replay::compare(&snapshot, &event, &choice) {
            Ok(comparison) => compared.push((event, comparison)),
            Err(err) => return replay_error(err).into_response(),
        }
    }
    let replayable: Vec<&EventView> =
        compared.iter().filter(|(_, comparison)| !comparison.routes.is_empty()).map(|(event, _)| event).collect();
    let mut ids = if request.dry_run {
        Vec::new()
    } else {
        match commit(relay, &replayable, &choice).await {
            Ok(ids) => ids,
            Err(err) => return err.into_response(),
        }
    }
    .into_iter();
    let mut items = Vec::with_capacity(compared.len());
    let (mut replayed, mut changed) = (0, 0);
    for (_, comparison) in &compared {
        let new_ids = if comparison.routes.is_empty() { None } else { ids.next() };
        replayed += usize::from(!comparison.routes.is_empty());
        changed += usize::from(comparison.changed);
        let mut item = answer(comparison, new_ids, request.dry_run);
        if !request.dry_run {
            // The comparison of each event is what a dry run is for; a real run answers ids.
            if let Some(item) = item.as_object_mut() {
                item.remove("targets");
                // Said once for all below; a request kept unmatched keeps its own.
                if item.get("verification").and_then(Value::as_str) == Some(replay::VERIFICATION_SKIPPED) {
                    item.remove("verification");
                }
            }
        }
        items.push(item);
    }
    json_response(
        StatusCode::OK,
        &json!({
            "dry_run": request.dry_run,
            "verification": replay::VERIFICATION_SKIPPED,
            "events": compared.len(),
            "replayed": replayed,
            "changed": changed,
            "items": items,
            "next_cursor": page.next_cursor,
        }),
    )
}

fn filter_of(request: &Many) -> Result<EventFilter, ApiError> {
    let bad = |detail: String| ApiError::BadRequest { error: "invalid replay filter", detail: json!(detail) };
    let now = now_ms();
    let time = |value: &Option<Value>, name: &str| {
        value.as_ref().map(|value| instant_ms(value, now)).transpose().map_err(|err| bad(format!("{name}: {err}")))
    };
    let status = request.status.as_deref().map(str::parse::<DeliveryStatus>).transpose().map_err(|err| bad(err.to_string()))?;
    Ok(EventFilter {
        route: request.route.clone(),
        event: request.event.clone(),
        since: time(&request.since, "since")?,
        until: time(&request.until, "until")?,
        status,
        limit: request.limit.unwrap_or(crate::store::DEFAULT_PAGE).clamp(1, MAX_REPLAY_PAGE),
        cursor: request.cursor.clone(),
    })
}

/// Commits the replays of `events` at once (the queue takes all of them or none), records
/// render failures, and returns the new event ids of each, in order.
async fn commit(relay: &Arc<Relay>, events: &[&EventView], choice: &RouteChoice) -> Result<Vec<Vec<String>>, ApiError> {
    let snapshot = relay.snapshot();
    let now = Utc::now();
    let mut all: Vec<Accepted> = Vec::new();
    let mut failures = Vec::new();
    let mut ids = Vec::with_capacity(events.len());
    for event in events {
        let replayed = replay::events(&snapshot, event, choice, now).map_err(replay_error)?;
        ids.push(replayed.events.iter().map(|a| a.event.id.clone()).collect::<Vec<_>>());
        all.extend(replayed.events);
        failures.extend(replayed.render_failures);
    }
    match relay.engine.accept(all).await {
        Ok(_) => {}
        Err(AcceptError::Full) => return Err(ApiError::Busy { error: "the queue is full: nothing was replayed", detail: None }),
        Err(AcceptError::TargetFull(full)) => {
            return Err(ApiError::Busy {
                error: "a target's share of the queue is full: nothing was replayed",
                detail: Some(full.describe()),
            })
        }
        Err(AcceptError::Store(err)) => return Err(ApiError::Store(err)),
    }
    let committed: Vec<&String> = ids.iter().flatten().collect();
    crate::ingress::record_render_failures(relay, &committed, failures).await;
    tracing::info!(events = events.len(), new_events = committed.len(), "replayed by the admin API");
    Ok(ids)
}

/// The comparison as answered: with the new event id (the first route's) and, when the
/// event was replayed through several routes, every id.
fn answer(comparison: &Comparison, ids: Option<Vec<String>>, dry_run: bool) -> Value {
    let mut answer = serde_json::to_value(comparison).unwrap_or(Value::Null);
    if let Some(object) = answer.as_object_mut() {
        object.insert("dry_run".into(), json!(dry_run));
        if let Some(ids) = ids {
            object.insert("id".into(), json!(ids.first()));
            if ids.len() > 1 {
                object.insert("ids".into(), json!(ids));
            }
        }
    }
    answer
}

//! CloudEvents batch mode (`application/cloudevents-batch+json`): each entry is matched,
//! verified, limited and deduplicated as a structured event of its own, and the batch is
//! stored in one transaction: the events of every entry, or nothing (`503`). A batch cannot go to
//! a `respond: sync` route (`422`): it has no single answer to relay.

use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use serde_json::{json, Value};

use super::{admit, commit, fail_all, prepare, record_render_failures, with_routes, Handled, IngressError, Prepared};
use crate::config::model::Respond;
use crate::connections::Peer;
use crate::delivery::client::Body;
use crate::inbound::InboundRequest;
use crate::relay::Relay;
use crate::respond::json_response;
use crate::routing;
use crate::snapshot::Snapshot;
use crate::store::AcceptOutcome;
use crate::trace::Trace;

const BATCH: &str = "application/cloudevents-batch+json";
/// Each entry costs a match, a render and a row: a batch is bounded so one request cannot
/// hold the server's threads for long.
pub const MAX_ENTRIES: usize = 1000;
const STRUCTURED: &str = "application/cloudevents+json";
/// A batch's events store at most this many times `limits.max_body` of headers in all.
const STORED_HEADERS_PER_MAX_BODY: u64 = 4;

pub fn is_batch(headers: &HeaderMap) -> bool {
    crate::inbound::media_type(headers.get(http::header::CONTENT_TYPE).and_then(|value| value.to_str().ok())) == BATCH
}

/// Takes a whole batch; the answer lists, per entry, the events it became.
pub async fn accept(relay: &Relay, snapshot: &Arc<Snapshot>, batch: &InboundRequest, peer: Peer, trace: Trace) -> Response<Body> {
    let entries = match serde_json::from_slice::<Value>(&batch.raw) {
        Ok(Value::Array(entries)) => entries,
        _ => return IngressError::BadBody("a CloudEvents batch is a JSON array of events in the JSON format".into()).answer(""),
    };
    if entries.len() > MAX_ENTRIES {
        return IngressError::BadBody(format!("a batch of {} events; at most {MAX_ENTRIES} are taken at once", entries.len())).answer("");
    }
    // Each stored event keeps the batch's headers: without a bound, 1,000 tiny entries under
    // 64 KiB of headers would store 64 MB from a request of about 130 KB. Each entry is
    // matched with a copy of them, so the bound is first held against entries × header
    // bytes, before that work, then against what the matched events would store.
    let most = snapshot.settings.limits.max_body.saturating_mul(STORED_HEADERS_PER_MAX_BODY);
    let copied = (crate::inbound::header_bytes(&batch.headers) as u64).saturating_mul(entries.len() as u64);
    if copied > most {
        return IngressError::BatchHeadersTooLarge { entries: entries.len(), header_bytes: copied, most }.answer("");
    }
    if let Some(problem) = entries
        .iter()
        .enumerate()
        .find_map(|(index, entry)| routing::cloudevents::envelope_problem(entry).map(|why| format!("entry {index}: {why}")))
    {
        return IngressError::BadBody(problem).answer("");
    }
    if relay.store_lost() {
        return IngressError::StoreLost.answer("");
    }
    let received_at = Utc::now();
    let path_and_query = if batch.raw_query.is_empty() { batch.path.clone() } else { format!("{}?{}", batch.path, batch.raw_query) };
    let mut events = Vec::new();
    let mut render_failures = Vec::new();
    // Per entry: the routes it fired and the event id of each.
    let mut entry_events: Vec<Vec<(String, String)>> = Vec::with_capacity(entries.len());
    for entry in entries {
        let mut headers = batch.headers.clone();
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(STRUCTURED));
        let raw = Bytes::from(serde_json::to_vec(&entry).unwrap_or_default());
        let mut one = InboundRequest::new(batch.method.clone(), &path_and_query, headers, raw, batch.peer);
        let matched = routing::select(&snapshot.routes, &one);
        if let Some(sync) = matched.iter().find(|m| m.route.respond == Respond::Sync) {
            return IngressError::SyncBatch { route: sync.route.name.clone() }.answer(&sync.route.name);
        }
        if matched.is_empty() {
            entry_events.push(Vec::new());
            continue;
        }
        // One entry refused refuses the batch: it is taken whole or not at all.
        let passed = match admit(relay, &one, matched, peer) {
            Ok(passed) => passed,
            Err(refused) => return refused.counted(),
        };
        let body = one.take_body();
        let Prepared { events: prepared, render_failures: failed, .. } = prepare(snapshot, &one, body, passed, received_at, &trace);
        entry_events.push(prepared.iter().map(|accepted| (accepted.event.route.clone(), accepted.event.id.clone())).collect());
        events.extend(prepared);
        render_failures.extend(failed);
    }
    // An empty batch included: no entry matched.
    if entry_events.iter().all(Vec::is_empty) {
        return IngressError::Unmatched.answer("");
    }
    // Every route an entry fires stores an event of its own, with the headers as JSON.
    let stored: u64 = events.iter().map(|accepted| crate::store::stored_headers_len(&accepted.event.headers) as u64).sum();
    if stored > most {
        return IngressError::BatchHeadersTooLarge { entries: entry_events.len(), header_bytes: stored, most }.answer("");
    }
    let route_names: Vec<String> = entry_events.iter().flatten().map(|(route, _)| route.clone()).collect();
    let names: Vec<&str> = route_names.iter().map(String::as_str).collect();
    let outcomes = if events.is_empty() {
        Vec::new()
    } else {
        match commit(relay, &trace, events, true).await {
            Ok(outcomes) => outcomes,
            Err(refused) => return fail_all(&names, refused),
        }
    };
    let mut outcomes = outcomes.into_iter();
    let mut accepted_ids = Vec::new();
    let mut answered = Vec::with_capacity(entry_events.len());
    for fired in &entry_events {
        let mut ids = Vec::new();
        let mut duplicates = Vec::new();
        for (route, id) in fired {
            match outcomes.next() {
                Some(AcceptOutcome::Duplicate { original_event_id }) => {
                    Handled::Duplicate.count(route);
                    duplicates.push(json!({ "route": route, "id": id, "original": original_event_id }));
                }
                _ => {
                    Handled::Accepted.count(route);
                    accepted_ids.push(id.clone());
                }
            }
            ids.push(id.clone());
        }
        let mut entry = json!({ "ids": ids, "routes": fired.iter().map(|(route, _)| route).collect::<Vec<_>>() });
        if !duplicates.is_empty() {
            entry["duplicates"] = json!(duplicates);
        }
        answered.push(entry);
    }
    let accepted: Vec<&String> = accepted_ids.iter().collect();
    record_render_failures(relay, &accepted, render_failures).await;
    with_routes(json_response(StatusCode::ACCEPTED, &json!({ "entries": answered })), &names)
}

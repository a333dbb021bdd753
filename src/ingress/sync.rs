//! A sync route's send: the first target is sent the event now and its answer goes back to
//! the sender; the delivery is logged afterwards (see [`crate::sync_log`]).

use http::{Response, StatusCode};

use super::{proxy, IngressError};
use crate::delivery::answers::CodeClass;
use crate::delivery::attempt::{AttemptOf, AttemptSettings, Tried};
use crate::delivery::client::{self, Body};
use crate::delivery::link::UpstreamLink;
use crate::delivery::target::{OutgoingRequest, Target};
use crate::delivery::verdict::{Judged, TargetSettings};
use crate::engine::{now_ms, stored};
use crate::metrics::DeliveryResult;
use crate::ratelimit::Throttled;
use crate::relay::Relay;
use crate::snapshot::Snapshot;
use crate::store::{AttemptOutcome, FinishedDelivery, NewDelivery, NewEvent};

/// A sync target's answer is buffered up to this size so it can be both returned and logged.
const MAX_SYNC_ANSWER: usize = 4 * 1024 * 1024;

/// Sends the sync target now, relays its answer (status, headers and body) and logs the
/// delivery with its one attempt on the route's event.
pub(super) async fn forward_sync(
    relay: &Relay,
    snapshot: &Snapshot,
    outgoing: OutgoingRequest,
    target: &Target,
    event_id: &str,
    deferred: Option<NewEvent>,
    link: Option<&UpstreamLink>,
) -> Response<Body> {
    if let Some(limit) = &target.rate_limit {
        if let Err(Throttled(wait)) = relay.outbound_limits.acquire(&limit.key, limit.spec, Some(limit.max_wait)).await {
            return IngressError::RateLimited { wait }.answer(&outgoing.route);
        }
    }
    let started_at = now_ms();
    // What is stored is the request as rendered: credentials and signatures are added by
    // the attempt, at send time, and never reach the store.
    let stored_request = stored(&outgoing, target);
    let (route, target_name) = (outgoing.route.clone(), outgoing.target.clone());
    let send = AttemptSettings {
        of: Some(AttemptOf { event_id, delivery_id: None, number: 1 }),
        link,
        ..AttemptSettings::for_rendered(&relay.outbound, target, snapshot.settings.allow_private, &snapshot.redactions, MAX_SYNC_ANSWER)
    };
    let Tried { answer, record, .. } = send.attempt(outgoing, started_at).await;
    // Judged as the engine judges (`success`, `success_when`, the preset's answer codes);
    // the sender gets the answer either way and retries on its own terms.
    let settings = TargetSettings::of(Some(target));
    let judged = match (answer.status, &answer.error) {
        (Some(code), None) => Some(settings.judge(code, &answer.answer)),
        _ => None,
    };
    let outcome = match (judged, &answer.error) {
        (Some(Judged::Delivered), _) => AttemptOutcome::Succeeded,
        (Some(Judged::Status(code)), _) => AttemptOutcome::Failed { reason: format!("answer {code} (returned to the sender)") },
        (Some(Judged::Code { class, reason }), _) => {
            if let (CodeClass::Throttled(pause), Some(limit)) = (class, &target.rate_limit) {
                relay.outbound_limits.pause(&limit.key, limit.spec, pause).await;
            }
            AttemptOutcome::Failed { reason: format!("{reason} (returned to the sender)") }
        }
        (None, Some(message)) => AttemptOutcome::Failed { reason: message.clone() },
        (None, None) => AttemptOutcome::Failed { reason: "no answer".to_string() },
    };
    crate::metrics::count_delivery(&route, &target_name, DeliveryResult::from(&outcome), Some(answer.duration.as_secs_f64()));
    let delivery = NewDelivery {
        id: ulid::Ulid::generate().to_string(),
        event_id: event_id.to_string(),
        route: route.clone(),
        target: target_name.clone(),
        request: stored_request,
        next_attempt_at: started_at,
        ordered_key: None,
        guarded: !target.trusted,
        handed_off: None,
    };
    // Logged after the answer; a slow disk makes the request wait only once the log's
    // queue is full.
    relay.sync_log.log(FinishedDelivery { event: deferred, delivery, attempt: record, outcome }).await;
    match (answer.status, answer.error) {
        (Some(status), None) => {
            let mut headers = answer.headers;
            proxy::strip_hop_by_hop(&mut headers);
            let mut response = Response::new(client::full(answer.answer));
            *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            *response.headers_mut() = headers;
            response
        }
        (_, error) => {
            let message = error.unwrap_or_else(|| "no answer".to_string());
            tracing::warn!(route = %route, target = %target_name, error = %message, "sync delivery failed");
            IngressError::TargetUnavailable { timed_out: answer.timed_out, detail: message }.counted()
        }
    }
}

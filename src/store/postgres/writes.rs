//! The rows a PostgreSQL write adds, inside the caller's transaction: an event, a delivery
//! (pending or already finished), an attempt stored compactly.

use std::borrow::Cow;

use deadpool_postgres::{GenericClient, Transaction};
use tokio_postgres::error::SqlState;

use super::{at_mark_or, db_due, db_now, due};
use crate::store::record::{answer_bound, cut, headers_beside, headers_json, Finished};
use crate::store::{AttemptOutcome, AttemptRecord, DeliveryStatus, NewDelivery, NewEvent, StoreError, MAX_STORED_BODY};

/// A delivery's request as its row stores it (headers as their JSON text).
pub(super) struct StoredForm {
    pub(super) url: String,
    pub(super) headers: String,
    pub(super) body: Vec<u8>,
}

pub(super) async fn insert_event(tx: &Transaction<'_>, event: &NewEvent, now: Option<i64>) -> Result<(), StoreError> {
    let statement = tx
        .prepare_cached(concat!(
            "INSERT INTO hookrelay_events (id, received_at, stored_at, route, event, delivery_id, method, path, headers, body, replay_of)
             VALUES ($1, $2, ",
            db_now!(3),
            ", $4, $5, $6, $7, $8, $9, $10, $11)"
        ))
        .await?;
    tx.execute(
        &statement,
        &[
            &event.id,
            &event.received_at,
            &now,
            &event.route,
            &event.event.as_deref().map(storable),
            &event.delivery_id.as_deref().map(storable),
            &event.method,
            &event.path,
            &headers_json(&event.headers)?,
            &&event.body[..],
            &event.replay_of,
        ],
    )
    .await
    .map_err(|error| unique_conflict(error, || format!("event {} already exists", event.id)))?;
    Ok(())
}

/// Inserts a delivery of an event whose body is `event_body` (when known), created at the
/// relay's `created_at`: pending, or already finished by `attempt`. Returns its `seq` and
/// its headers as stored (JSON).
pub(super) async fn insert_delivery(
    tx: &Transaction<'_>,
    delivery: &NewDelivery,
    event_body: Option<&[u8]>,
    created_at: i64,
    now: Option<i64>,
    finished: Option<(&AttemptRecord, &Finished)>,
) -> Result<(i64, String), StoreError> {
    let request = &delivery.request;
    let body_from_event = !request.body.is_empty() && event_body == Some(&request.body[..]);
    let headers = headers_json(&request.headers)?;
    let claim = delivery.handed_off.filter(|_| finished.is_none());
    let (status, attempts, delay, last_status, last_error) = match finished {
        Some((attempt, finished)) => (
            finished.status,
            i32::from(attempt.counted),
            finished.next_attempt_at.map(|at| at.saturating_sub(created_at)),
            attempt.status.map(i32::from),
            finished.last_error.as_deref(),
        ),
        None if claim.is_some() => (DeliveryStatus::InFlight, 0, Some(delivery.next_attempt_at.saturating_sub(created_at)), None, None),
        None => (DeliveryStatus::Pending, 0, Some(delivery.next_attempt_at.saturating_sub(created_at)), None, None),
    };
    let statement = tx
        .prepare_cached(concat!(
            "INSERT INTO hookrelay_deliveries (id, event_id, route, target, req_method, req_url, req_headers, req_body,
                 req_body_from_event, status, attempts, next_attempt_at, ordered_key, guarded, created_at, updated_at,
                 last_status, last_error, claim_token, lease_until)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, ",
            db_due!(12, 13),
            ", $14, $15, $16, $16, $17, $18, $19, ",
            db_now!(12),
            " + $20) RETURNING seq"
        ))
        .await?;
    let row = tx
        .query_one(
            &statement,
            &[
                &delivery.id,
                &delivery.event_id,
                &delivery.route,
                &delivery.target,
                &request.method,
                &request.url,
                &headers,
                &if body_from_event { &[][..] } else { &request.body[..] },
                &body_from_event,
                &status.as_str(),
                &attempts,
                &now,
                &delay,
                &delivery.ordered_key.as_deref().map(storable),
                &delivery.guarded,
                &created_at,
                &last_status,
                &last_error.map(storable),
                &claim.map(|claim| claim.token),
                &claim.map(|claim| claim.lease_ms),
            ],
        )
        .await
        .map_err(|error| unique_conflict(error, || format!("delivery {} already exists", delivery.id)))?;
    Ok((row.try_get(0)?, headers))
}

/// Stores one attempt: of its request only what differs from the delivery's `stored` one;
/// the answer cut shorter when another attempt will follow.
pub(super) async fn insert_attempt(
    tx: &Transaction<'_>,
    seq: i64,
    number: i32,
    attempt: &AttemptRecord,
    stored: &StoredForm,
    outcome: &AttemptOutcome,
    error_before: Option<&str>,
) -> Result<(), StoreError> {
    let headers = headers_json(&attempt.request_headers)?;
    // The error the attempt before had: that of the last attempt that stored its own.
    let repeats = attempt.error.is_some() && attempt.error.as_deref() == error_before;
    let (own_headers, added_headers) = headers_beside(&headers, &stored.headers);
    let statement = tx
        .prepare_cached(
            "INSERT INTO hookrelay_attempts (delivery_seq, number, started_at, duration_ms, request_url, request_method,
                 request_headers, request_body, status, response_headers, response_body, error, error_repeats, counted,
                 request_headers_added)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        )
        .await?;
    tx.execute(
        &statement,
        &[
            &seq,
            &number,
            &attempt.started_at,
            &attempt.duration_ms,
            &attempt.request_url.as_ref().filter(|url| **url != stored.url),
            &attempt.request_method,
            &own_headers,
            // Read back in place of the delivery's, a body is never longer than the bound.
            &(attempt.request_body.as_ref() != stored.body || stored.body.len() > MAX_STORED_BODY)
                .then(|| cut(&attempt.request_body, MAX_STORED_BODY)),
            &attempt.status.map(i32::from),
            &headers_json(&attempt.response_headers)?,
            &cut(&attempt.response_body, answer_bound(outcome)),
            &if repeats { None } else { attempt.error.as_deref().map(storable) },
            &repeats,
            &attempt.counted,
            &added_headers,
        ],
    )
    .await?;
    Ok(())
}

pub(super) fn unique_conflict(error: tokio_postgres::Error, message: impl FnOnce() -> String) -> StoreError {
    if error.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        StoreError::Conflict(message())
    } else {
        error.into()
    }
}

/// `text` as PostgreSQL can hold it: a NUL character (which a sender's field or a
/// receiver's answer may carry) becomes U+FFFD instead of failing the whole write.
pub(super) fn storable(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{fffd}"))
    } else {
        Cow::Borrowed(text)
    }
}

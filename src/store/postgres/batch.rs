//! Group commit of accepts on PostgreSQL: accepts that arrive while the writers are busy
//! wait for the next batch, which stores all of them with one statement (a multi-row
//! insert per table). One round trip and one WAL flush then serve dozens of webhooks. A batch that fails (a repeated id, say) is written again one accept at a
//! time, so only the accept at fault fails.

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};

use super::group::{self, refused};
use super::writes::storable;
use super::{at_mark_or, due};
use crate::store::record::headers_json;
use crate::store::{NewDelivery, NewEvent, StoreError};

/// The most accepts one transaction takes.
const MAX_BATCH: usize = 256;
/// Accepts waiting beyond this make callers wait (asynchronously) to queue theirs.
const QUEUE_CAPACITY: usize = 1024;

struct Pending {
    event: NewEvent,
    deliveries: Vec<NewDelivery>,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

pub(super) struct Batcher {
    queue: mpsc::Sender<Pending>,
}

impl Batcher {
    /// Starts the writer on `pool`, whose sessions must commit synchronously (an accept is
    /// a promise); with `pinned`, each event's `received_at` is its "now" (tests).
    pub(super) fn start(pool: Pool, pinned: bool) -> Batcher {
        let (queue, pending) = mpsc::channel(QUEUE_CAPACITY);
        // A caller that gave up (its sender got 503) is not stored behind its back.
        let keep = |accept: &Pending| !accept.reply.is_closed();
        tokio::spawn(group::run(pending, MAX_BATCH, keep, move |batch| {
            let pool = pool.clone();
            async move { commit(&pool, batch, pinned).await }
        }));
        Batcher { queue }
    }

    /// Commits the event and its deliveries (in some batch) and says how that went.
    pub(super) async fn accept(&self, event: NewEvent, deliveries: Vec<NewDelivery>) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue.send(Pending { event, deliveries, reply }).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

/// Writes one batch and answers its accepts.
async fn commit(pool: &Pool, batch: Vec<Pending>, pinned: bool) {
    match write(pool, &batch, pinned).await {
        Ok(()) => batch.into_iter().for_each(|accept| {
            let _ = accept.reply.send(Ok(()));
        }),
        Err(error) if batch.len() > 1 && refused(&error) => {
            for accept in batch {
                let alone = write(pool, std::slice::from_ref(&accept), pinned).await;
                let _ = accept.reply.send(alone);
            }
        }
        Err(error) => batch.into_iter().for_each(|accept| {
            let _ = accept.reply.send(Err(error.clone()));
        }),
    }
}

/// The events, their deliveries (those handed off at accept in flight under their claim,
/// leased from the database's clock) and the wake-up for idle relays when some delivery
/// waits for a claim, in one statement (so one round trip and one commit, atomic without a
/// transaction). `now` is NULL (the database's clock) unless pinned.
const INSERT_BATCH: &str = concat!(
    "WITH events AS (
         INSERT INTO hookrelay_events (id, received_at, stored_at, route, event, delivery_id, method, path, headers, body, replay_of)
         SELECT u.id, u.received_at, COALESCE(u.now, hookrelay_now_ms()), u.route, u.event, u.delivery_id, u.method, u.path,
                u.headers, u.body, u.replay_of
         FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                     $9::text[], $10::bytea[], $11::text[])
              AS u(id, received_at, now, route, event, delivery_id, method, path, headers, body, replay_of)
     ), deliveries AS (
         INSERT INTO hookrelay_deliveries (id, event_id, route, target, req_method, req_url, req_headers, req_body,
             req_body_from_event, status, attempts, next_attempt_at, ordered_key, guarded, created_at, updated_at,
             claim_token, lease_until)
         SELECT u.id, u.event_id, u.route, u.target, u.method, u.url, u.headers, u.body, u.from_event,
                CASE WHEN u.claim IS NULL THEN 'pending' ELSE 'in_flight' END, 0, ",
    due!("COALESCE(u.now, hookrelay_now_ms()) + u.delay"),
    ",
                u.ordered_key, u.guarded, u.created_at, u.created_at,
                u.claim, COALESCE(u.now, hookrelay_now_ms()) + u.lease
         FROM UNNEST($12::text[], $13::text[], $14::text[], $15::text[], $16::text[], $17::text[], $18::text[], $19::bytea[],
                     $20::boolean[], $21::bigint[], $22::bigint[], $23::text[], $24::boolean[], $25::bigint[], $27::bigint[],
                     $28::bigint[])
              AS u(id, event_id, route, target, method, url, headers, body, from_event, now, delay, ordered_key, guarded, created_at,
                   claim, lease)
         RETURNING claim_token
     )
     SELECT pg_notify($26, '') WHERE EXISTS (SELECT 1 FROM deliveries WHERE claim_token IS NULL)"
);

/// Writes `batch` in one statement, on a session that waits for the disk. Each accept's
/// deliveries were checked to be its own before it was queued.
async fn write(pool: &Pool, batch: &[Pending], pinned: bool) -> Result<(), StoreError> {
    let events: Vec<&NewEvent> = batch.iter().map(|p| &p.event).collect();
    let event_headers = events.iter().map(|e| headers_json(&e.headers)).collect::<Result<Vec<_>, _>>()?;
    let deliveries: Vec<(&NewDelivery, &NewEvent)> = batch.iter().flat_map(|p| p.deliveries.iter().map(move |d| (d, &p.event))).collect();
    let delivery_headers = deliveries.iter().map(|(d, _)| headers_json(&d.request.headers)).collect::<Result<Vec<_>, _>>()?;
    let from_event: Vec<bool> = deliveries.iter().map(|(d, e)| !d.request.body.is_empty() && d.request.body == e.body).collect();
    let client = pool.get().await.map_err(|error| StoreError::Unavailable(error.to_string()))?;
    let statement = client.prepare_cached(INSERT_BATCH).await?;
    client
        .execute(
            &statement,
            &[
                &events.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
                &events.iter().map(|e| e.received_at).collect::<Vec<_>>(),
                &events.iter().map(|e| pinned.then_some(e.received_at)).collect::<Vec<_>>(),
                &events.iter().map(|e| e.route.as_str()).collect::<Vec<_>>(),
                &events.iter().map(|e| e.event.as_deref().map(storable)).collect::<Vec<_>>(),
                &events.iter().map(|e| e.delivery_id.as_deref().map(storable)).collect::<Vec<_>>(),
                &events.iter().map(|e| e.method.as_str()).collect::<Vec<_>>(),
                &events.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
                &event_headers,
                &events.iter().map(|e| &e.body[..]).collect::<Vec<_>>(),
                &events.iter().map(|e| e.replay_of.as_deref()).collect::<Vec<_>>(),
                &deliveries.iter().map(|(d, _)| d.id.as_str()).collect::<Vec<_>>(),
                &deliveries.iter().map(|(d, _)| d.event_id.as_str()).collect::<Vec<_>>(),
                &deliveries.iter().map(|(d, _)| d.route.as_str()).collect::<Vec<_>>(),
                &deliveries.iter().map(|(d, _)| d.target.as_str()).collect::<Vec<_>>(),
                &deliveries.iter().map(|(d, _)| d.request.method.as_str()).collect::<Vec<_>>(),
                &deliveries.iter().map(|(d, _)| d.request.url.as_str()).collect::<Vec<_>>(),
                &delivery_headers,
                &deliveries
                    .iter()
                    .zip(&from_event)
                    .map(|((d, _), from_event)| if *from_event { &[][..] } else { &d.request.body[..] })
                    .collect::<Vec<_>>(),
                &from_event,
                &deliveries.iter().map(|(_, e)| pinned.then_some(e.received_at)).collect::<Vec<_>>(),
                &deliveries.iter().map(|(d, e)| d.next_attempt_at.saturating_sub(e.received_at)).collect::<Vec<_>>(),
                &deliveries.iter().map(|(d, _)| d.ordered_key.as_deref().map(storable)).collect::<Vec<_>>(),
                &deliveries.iter().map(|(d, _)| d.guarded).collect::<Vec<_>>(),
                &deliveries.iter().map(|(_, e)| e.received_at).collect::<Vec<_>>(),
                &super::DUE_CHANNEL,
                &deliveries.iter().map(|(d, _)| d.handed_off.map(|hand_off| hand_off.token)).collect::<Vec<_>>(),
                &deliveries.iter().map(|(d, _)| d.handed_off.map(|hand_off| hand_off.lease_ms)).collect::<Vec<_>>(),
            ],
        )
        .await
        .map_err(|error| conflict(error, batch))?;
    Ok(())
}

/// A repeated id, said in terms of the accept when the batch is one accept.
fn conflict(error: tokio_postgres::Error, batch: &[Pending]) -> StoreError {
    let Some(constraint) = error
        .as_db_error()
        .filter(|db| db.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
        .and_then(|db| db.constraint().map(str::to_owned))
    else {
        return error.into();
    };
    let what = match batch {
        [one] if constraint.contains("deliveries") => format!("a delivery of event {} already exists", one.event.id),
        [one] => format!("event {} already exists", one.event.id),
        _ => format!("a repeated id ({constraint})"),
    };
    StoreError::Conflict(what)
}

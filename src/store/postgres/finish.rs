//! Group commit of finished attempts on PostgreSQL: attempts that finish while the writers
//! are busy are recorded together by one statement, so a busy relay pays one round trip,
//! one executor start-up and one commit for dozens of deliveries instead of one each.

use std::borrow::Cow;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::Type;

use super::group::{self, refused};
use super::rows::delivery_body;
use super::writes::storable;
use super::{at_mark_or, due};
use crate::store::record::{answer_bound, cut, headers_json, Finished};
use crate::store::{AttemptOutcome, AttemptRecord, StoreError, MAX_STORED_BODY};

/// The most finishes one statement takes.
const MAX_BATCH: usize = 128;
/// Finishes waiting beyond this make callers wait (asynchronously) to queue theirs.
const QUEUE_CAPACITY: usize = 1024;

/// One attempt to record on the in-flight delivery `delivery_id`, claimed under `claim`.
struct Pending {
    delivery_id: String,
    claim: i64,
    attempt: AttemptRecord,
    outcome: AttemptOutcome,
    now: i64,
    /// The `now` due times count from: None for the database's clock.
    pinned: Option<i64>,
    reply: oneshot::Sender<Result<bool, StoreError>>,
}

pub(super) struct Finisher {
    queue: mpsc::Sender<Pending>,
}

impl Finisher {
    /// Starts the writer on `pool`.
    pub(super) fn start(pool: Pool) -> Finisher {
        let (queue, pending) = mpsc::channel(QUEUE_CAPACITY);
        // An attempt was made whether or not its caller still waits: it is recorded.
        tokio::spawn(group::run(
            pending,
            MAX_BATCH,
            |_| true,
            move |batch| {
                let pool = pool.clone();
                async move { commit(&pool, batch).await }
            },
        ));
        Finisher { queue }
    }

    /// Records `attempt` on the delivery and applies its `outcome` (in some batch). False
    /// when no delivery with that id is in flight under `claim`.
    pub(super) async fn finish(
        &self,
        delivery_id: &str,
        claim: i64,
        attempt: AttemptRecord,
        outcome: AttemptOutcome,
        now: i64,
        pinned: Option<i64>,
    ) -> Result<bool, StoreError> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending { delivery_id: delivery_id.to_owned(), claim, attempt, outcome, now, pinned, reply };
        self.queue.send(pending).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

/// Writes one batch and answers its finishes.
async fn commit(pool: &Pool, mut batch: Vec<Pending>) {
    // Every batch locks its rows in one order.
    batch.sort_unstable_by(|a, b| a.delivery_id.cmp(&b.delivery_id));
    match write(pool, &batch).await {
        Ok(applied) => batch.into_iter().zip(applied).for_each(|(pending, applied)| {
            let _ = pending.reply.send(Ok(applied));
        }),
        Err(error) if batch.len() > 1 && refused(&error) => {
            for pending in batch {
                let alone = write(pool, std::slice::from_ref(&pending)).await;
                let _ = pending.reply.send(alone.map(|applied| applied.contains(&true)));
            }
        }
        Err(error) => batch.into_iter().for_each(|pending| {
            let _ = pending.reply.send(Err(error.clone()));
        }),
    }
}

/// Records each attempt on its in-flight delivery and applies its outcome, in one
/// statement: the attempt's number, the delivery's request (an attempt stores only what
/// differs from it) and the error before (stored once when repeated) come from the locked
/// row; the token alone names an in-flight claim (see the store's module). Rows are
/// locked in the batch's order, by id. Returns the positions (from 1) of the finishes it
/// applied: a delivery finished twice in one batch is locked once, so only one applies.
const FINISH_BATCH: &str = concat!(
    "WITH u AS (
         SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[], $6::text[], $7::text[],
                              $8::bytea[], $9::bytea[], $10::int[], $11::text[], $12::bytea[], $13::text[], $14::boolean[],
                              $15::text[], $16::bigint[], $17::bigint[], $18::int[], $19::bigint[], $20::text[])
             WITH ORDINALITY
             AS u(id, claim, started_at, duration_ms, request_url, request_method, request_headers, request_body,
                  request_body_cut, answer_status, response_headers, response_body, error, counted, new_status, pinned,
                  delay, counts, now, last_error, n)
     ), d AS (
         SELECT d.seq, d.req_url, d.req_headers, ",
    delivery_body!(),
    " AS body,
                (SELECT COALESCE(MAX(a.number), 0) + 1 FROM hookrelay_attempts a WHERE a.delivery_seq = d.seq) AS number,
                (SELECT a.error FROM hookrelay_attempts a WHERE a.delivery_seq = d.seq AND NOT a.error_repeats
                 ORDER BY a.number DESC LIMIT 1) AS error_before,
                length(d.req_headers) > 2 AND starts_with(u.request_headers, left(d.req_headers, -1) || ',') AS adds_headers,
                u.*
         FROM u CROSS JOIN LATERAL (
             SELECT seq, req_url, req_headers, req_body, req_body_from_event, event_id FROM hookrelay_deliveries
             WHERE id = u.id AND claim_token = u.claim
             FOR UPDATE
         ) d
     ), recorded AS (
         INSERT INTO hookrelay_attempts (delivery_seq, number, started_at, duration_ms, request_url, request_method,
             request_headers, request_body, status, response_headers, response_body, error, error_repeats, counted,
             request_headers_added)
         SELECT d.seq, d.number, d.started_at, d.duration_ms, NULLIF(d.request_url, d.req_url), d.request_method,
                CASE WHEN d.request_headers = d.req_headers OR d.adds_headers THEN NULL ELSE d.request_headers END,
                CASE WHEN d.request_body = d.body AND length(d.body) <= $21 THEN NULL ELSE d.request_body_cut END,
                d.answer_status, d.response_headers, d.response_body,
                CASE WHEN COALESCE(d.error = d.error_before, false) THEN NULL ELSE d.error END,
                COALESCE(d.error = d.error_before, false), d.counted,
                -- As `headers_beside`: the delivery's headers followed by more keep only those.
                CASE WHEN d.adds_headers THEN '[' || substr(d.request_headers, length(d.req_headers) + 1) END
         FROM d
     )
     UPDATE hookrelay_deliveries x SET status = d.new_status, next_attempt_at = ",
    due!("COALESCE(d.pinned, hookrelay_now_ms()) + d.delay"),
    ", lease_until = NULL, claim_token = NULL, attempts = x.attempts + d.counts, updated_at = d.now,
             last_status = d.answer_status, last_error = d.last_error
     FROM d WHERE x.seq = d.seq
     RETURNING d.n"
);

/// Runs [`FINISH_BATCH`] on `batch`: for each of its finishes, whether it was applied.
async fn write(pool: &Pool, batch: &[Pending]) -> Result<Vec<bool>, StoreError> {
    let finished: Vec<Finished> = batch.iter().map(|p| Finished::of(&p.attempt, &p.outcome)).collect();
    let attempts = || batch.iter().map(|p| &p.attempt);
    let request_headers = attempts().map(|a| headers_json(&a.request_headers)).collect::<Result<Vec<_>, _>>()?;
    let response_headers = attempts().map(|a| headers_json(&a.response_headers)).collect::<Result<Vec<_>, _>>()?;
    let ids: Vec<&str> = batch.iter().map(|p| p.delivery_id.as_str()).collect();
    let claims: Vec<i64> = batch.iter().map(|p| p.claim).collect();
    let started_at: Vec<i64> = attempts().map(|a| a.started_at).collect();
    let duration_ms: Vec<i64> = attempts().map(|a| a.duration_ms).collect();
    let request_urls: Vec<Option<&str>> = attempts().map(|a| a.request_url.as_deref()).collect();
    let request_methods: Vec<&str> = attempts().map(|a| a.request_method.as_str()).collect();
    let request_bodies: Vec<&[u8]> = attempts().map(|a| &a.request_body[..]).collect();
    let request_bodies_cut: Vec<&[u8]> = attempts().map(|a| cut(&a.request_body, MAX_STORED_BODY)).collect();
    let answer_statuses: Vec<Option<i32>> = attempts().map(|a| a.status.map(i32::from)).collect();
    let response_bodies: Vec<&[u8]> = batch.iter().map(|p| cut(&p.attempt.response_body, answer_bound(&p.outcome))).collect();
    let errors: Vec<Option<Cow<str>>> = attempts().map(|a| a.error.as_deref().map(storable)).collect();
    let counted: Vec<bool> = attempts().map(|a| a.counted).collect();
    let new_statuses: Vec<&str> = finished.iter().map(|f| f.status.as_str()).collect();
    let pinned: Vec<Option<i64>> = batch.iter().map(|p| p.pinned).collect();
    let delays: Vec<Option<i64>> = batch.iter().zip(&finished).map(|(p, f)| f.next_attempt_at.map(|at| at.saturating_sub(p.now))).collect();
    let counts: Vec<i32> = attempts().map(|a| i32::from(a.counted)).collect();
    let nows: Vec<i64> = batch.iter().map(|p| p.now).collect();
    let last_errors: Vec<Option<Cow<str>>> = finished.iter().map(|f| f.last_error.as_deref().map(storable)).collect();
    let max_body = MAX_STORED_BODY as i32;
    let client = pool.get().await.map_err(|error| StoreError::Unavailable(error.to_string()))?;
    // Planned for each batch, with its arrays in hand: a plan kept from when the tables were
    // small (a fresh database) joins by scanning the whole deliveries table, and keeps doing
    // so as it grows until the next ANALYZE, which may be a minute away.
    let rows = client
        .query_typed(
            FINISH_BATCH,
            &[
                (&ids, Type::TEXT_ARRAY),
                (&claims, Type::INT8_ARRAY),
                (&started_at, Type::INT8_ARRAY),
                (&duration_ms, Type::INT8_ARRAY),
                (&request_urls, Type::TEXT_ARRAY),
                (&request_methods, Type::TEXT_ARRAY),
                (&request_headers, Type::TEXT_ARRAY),
                (&request_bodies, Type::BYTEA_ARRAY),
                (&request_bodies_cut, Type::BYTEA_ARRAY),
                (&answer_statuses, Type::INT4_ARRAY),
                (&response_headers, Type::TEXT_ARRAY),
                (&response_bodies, Type::BYTEA_ARRAY),
                (&errors, Type::TEXT_ARRAY),
                (&counted, Type::BOOL_ARRAY),
                (&new_statuses, Type::TEXT_ARRAY),
                (&pinned, Type::INT8_ARRAY),
                (&delays, Type::INT8_ARRAY),
                (&counts, Type::INT4_ARRAY),
                (&nows, Type::INT8_ARRAY),
                (&last_errors, Type::TEXT_ARRAY),
                (&max_body, Type::INT4),
            ],
        )
        .await?;
    let mut applied = vec![false; batch.len()];
    for row in rows {
        let position = row.try_get::<_, i64>(0)?;
        let index = usize::try_from(position - 1).ok().filter(|index| *index < applied.len());
        let Some(index) = index else { return Err(StoreError::Corrupt(format!("finish {position} of a batch of {}", batch.len()))) };
        applied[index] = true;
    }
    Ok(applied)
}

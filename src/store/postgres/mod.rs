//! [`PostgresStore`]: the shared [`Store`], for several relays on one PostgreSQL database.
//! Owns the connection pool (TLS by `sslmode`), the domain's SQL for PostgreSQL, and the
//! mapping of relay times onto the database's clock.
//!
//! Clock: every relay passes its own `now`; the store turns a relay time `t` into the
//! database's `hookrelay_now_ms() + (t - now)`, so due times, leases and dedupe windows are
//! all measured on the one clock the replicas share, and a replica whose clock is off by a
//! minute neither steals live leases nor retries early. Displayed times (`received_at`,
//! `created_at`, attempts' `started_at`) stay the relay's.
//!
//! Claims take rows `FOR UPDATE SKIP LOCKED`, so replicas never wait on each other's
//! claims; a claim is a lease that any replica may take over once it has run out. A claim
//! token is set only while its delivery is in flight (a constraint holds every row to it),
//! so finishing, releasing and renewing look a row up by id and token alone: with
//! `status = 'in_flight'` beside them, the planner takes the status index, whose statistics
//! count almost no deliveries in flight while under load it holds thousands of dead
//! in-flight entries, each visited.
//!
//! Accepts and manual retries `NOTIFY` [`DUE_CHANNEL`] so that idle replicas look at once;
//! a pause, a resume or a breaker opening `NOTIFY` [`TARGETS_CHANNEL`] so that every replica
//! holds back at once.

mod batch;
mod connect;
mod finish;
mod group;
mod limits;
mod listen;
mod rows;
pub(in crate::store) mod schema;
mod writes;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Pool};
use tokio::sync::{broadcast, watch};

use self::connect::{parse_url, pool_of, Connection};
use self::rows::*;
use self::writes::{insert_attempt, insert_delivery, insert_event, storable, StoredForm};
use super::record::{with_repeated_errors, Finished};
use super::{
    cannot_cancel, new_claim_token, not_claimed, not_handed_off, owned_by, AcceptItem, CancelFilter, Held, Reschedule, TargetRecord,
    TargetUpdate,
};
use super::{
    AcceptOutcome, AttemptOutcome, AttemptRecord, AttemptView, ClaimedDelivery, DeliveryFilter, DeliveryView, EventFilter, EventView,
    FinishedDelivery, NewDelivery, NewEvent, Page, SharedLimit, Store, StoreError, StoreNotice, StoredRoute,
};

/// Notified (after commit) when deliveries become due: accepts and manual retries.
const DUE_CHANNEL: &str = "hookrelay_due";
/// Notified (after commit) with the route's name when an API route changes.
const ROUTES_CHANNEL: &str = "hookrelay_routes";
/// Notified when a target is paused, resumed, or its breaker opens or closes, so that every
/// relay stops (or starts) sending to it at once rather than at its next re-read.
const TARGETS_CHANNEL: &str = "hookrelay_targets";

/// Connections per relay. Accepts commit concurrently (PostgreSQL groups their WAL
/// flushes), so a few more than the cores keep the disk busy without crowding the server.
const POOL_SIZE: usize = 16;
/// How long a caller waits for a connection (or to open one) before the store counts as
/// unavailable: a webhook then gets 503 instead of hanging.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Notices a slow subscriber may fall behind by before it is told it lagged (and then
/// re-reads everything, as for any notice).
const NOTICE_BACKLOG: usize = 64;
/// The isolation every transaction here is written for (dedupe locks, then reads what
/// committed before the lock), whatever the server's default.
const READ_COMMITTED: &str = "-c default_transaction_isolation=read\\ committed";
/// Idle time before a connection's keepalive probes start.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// How long data sent to the database may stay unacknowledged before the connection is
/// given up.
const UNACKNOWLEDGED_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an accept waits for its batch to commit before the webhook gets 503.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(15);
/// How often a relay looks for claims whose lease ran out.
const EXPIRED_LEASES_EVERY_MS: i64 = 1000;
/// Events deleted per transaction by `prune`.
const PRUNE_CHUNK: i64 = 1000;

/// The database's clock in SQL, or the caller's where a test pins time (`$n` is then set).
macro_rules! db_now {
    ($n:literal) => {
        concat!("COALESCE($", $n, "::bigint, hookrelay_now_ms())")
    };
}
use db_now;

/// `$time` (SQL), unless it lies within a day of the pause's mark
/// ([`PAUSED_UNTIL_MS`](crate::store::PAUSED_UNTIL_MS), far in the future): then `$at_mark`.
/// The mark is a mark, not a time: it is stored exactly, so that a resume finds every
/// delivery a pause parked, whatever the clocks.
macro_rules! at_mark_or {
    ($time:expr, $at_mark:literal) => {
        concat!("(CASE WHEN ", $time, " >= 7258032000000 THEN ", $at_mark, " ELSE ", $time, " END)")
    };
}
use at_mark_or;

/// The due time `$time` (SQL) as stored: the pause's mark kept exactly.
macro_rules! due {
    ($time:expr) => {
        at_mark_or!($time, "7258118400000")
    };
}
use due;

/// `db_now!($n) + $delay`: a due time on the database's clock, from a delay on the relay's.
macro_rules! db_due {
    ($n:literal, $delay:literal) => {
        due!(concat!(db_now!($n), " + $", $delay))
    };
}
use db_due;

/// The highest due time a move up to `db_due!($n, $up_to)` takes: past the pause's mark, any
/// time near it (stored before the mark was kept exactly).
macro_rules! db_due_up_to {
    ($n:literal, $up_to:literal) => {
        at_mark_or!(concat!(db_now!($n), " + $", $up_to), "7258204800000")
    };
}

#[cfg(test)]
pub(crate) fn db_due_sql() -> &'static str {
    db_due!(1, 2)
}

#[cfg(test)]
pub(crate) fn db_due_up_to_sql() -> &'static str {
    db_due_up_to!(1, 2)
}

pub struct PostgresStore {
    pool: Pool,
    /// The accepts' own sessions (see [`batch`]).
    accepts: Pool,
    /// Accepts without a dedupe window, committed in groups.
    batcher: batch::Batcher,
    /// Finished attempts, recorded in groups.
    finisher: finish::Finisher,
    notices: broadcast::Sender<StoreNotice>,
    /// Stops the notification listener.
    stop: watch::Sender<bool>,
    /// Tests pin time to the `now` they pass; a relay always runs on the database's clock.
    caller_clock: bool,
    closed: AtomicBool,
    /// When (the relay's ms) this relay last looked for expired leases.
    leases_checked_at: AtomicI64,
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:pass@host:port/db?sslmode=…`) and
    /// brings its schema up to date. Fails if the database cannot be reached.
    pub async fn connect(url: &str) -> Result<PostgresStore, StoreError> {
        Self::connect_with(url, schema::MIGRATIONS, false).await
    }

    /// Connects for reading only (offline commands): sessions refuse writes, and the schema
    /// must already be one this build reads; nothing is created or migrated.
    pub async fn connect_read_only(url: &str) -> Result<PostgresStore, StoreError> {
        Self::open(url, schema::MIGRATIONS, false, true).await
    }

    /// Whether `url` is one [`PostgresStore::connect`] can use (without connecting).
    pub fn check_url(url: &str) -> Result<(), StoreError> {
        parse_url(url).map(|_| ())
    }

    pub(in crate::store) async fn connect_with(
        url: &str,
        migrations: &[schema::Migration],
        caller_clock: bool,
    ) -> Result<PostgresStore, StoreError> {
        Self::open(url, migrations, caller_clock, false).await
    }

    async fn open(url: &str, migrations: &[schema::Migration], caller_clock: bool, read_only: bool) -> Result<PostgresStore, StoreError> {
        let Connection { mut config, extra_roots } = parse_url(url)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("hookrelay");
        // A database that stops answering (rather than refusing) is noticed in seconds, so
        // webhooks get 503 instead of waiting on a dead connection.
        config.keepalives(true).keepalives_idle(KEEPALIVE_IDLE).keepalives_interval(Duration::from_secs(5)).keepalives_retries(3);
        config.tcp_user_timeout(UNACKNOWLEDGED_TIMEOUT);
        let tls = crate::tls::client_config(&extra_roots).map_err(|error| StoreError::InvalidInput(format!("TLS setup: {error}")))?;
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls);
        // Accepts are a promise: their sessions commit synchronously, whatever the server's default.
        let mut base_options = config.get_options().unwrap_or_default().to_owned();
        if read_only {
            base_options.push_str(" -c default_transaction_read_only=on");
        }
        let mut durable_config = config.clone();
        durable_config.options(format!("{base_options} -c synchronous_commit=on {READ_COMMITTED}").trim());
        let accepts = pool_of(durable_config, tls.clone(), group::WRITERS)?;
        // Only what the relay promises must wait for the WAL to reach the disk: hand retries
        // and API routes say so per transaction (`durable`). Claims, leases, attempt records
        // and rate-limit state lost with the server mean a delivery is sent once more, never
        // that an acknowledged event is lost.
        config.options(format!("{base_options} -c synchronous_commit=off {READ_COMMITTED}").trim());
        let pool = pool_of(config.clone(), tls.clone(), POOL_SIZE)?;
        let (notices, _) = broadcast::channel(NOTICE_BACKLOG);
        let (stop, stopped) = watch::channel(false);
        let batcher = batch::Batcher::start(accepts.clone(), caller_clock);
        let finisher = finish::Finisher::start(pool.clone());
        let store = PostgresStore {
            pool,
            accepts,
            batcher,
            finisher,
            notices,
            stop,
            caller_clock,
            closed: AtomicBool::new(false),
            leases_checked_at: AtomicI64::new(0),
        };
        let mut client = store.client().await?;
        if read_only {
            schema::readable(&client, migrations).await?;
        } else {
            schema::migrate(&mut client, migrations).await?;
        }
        drop(client);
        // A reader wakes no engine (and a standby refuses LISTEN).
        if !read_only {
            tokio::spawn(listen::run(config, tls, store.notices.clone(), stopped));
        }
        Ok(store)
    }

    /// Fails once the store is closed.
    fn open_or_closed(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        Ok(())
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.open_or_closed()?;
        self.pool.get().await.map_err(|error| StoreError::Unavailable(error.to_string()))
    }

    /// The `now` to pass to a `db_now!` parameter: None (the database's clock) unless pinned.
    fn pinned(&self, now: i64) -> Option<i64> {
        self.caller_clock.then_some(now)
    }
}

/// The advisory lock that serialises accepts of one route's delivery id on every replica,
/// so of concurrent duplicates exactly one gets in (seed 0).
fn dedupe_lock(route: &str, delivery_id: &str) -> String {
    format!("{}:{}:{}", route.len(), route, storable(delivery_id))
}

/// The advisory lock of one ordering key (seed 1): its deliveries commit one at a time.
fn ordering_lock(delivery: &NewDelivery, key: &str) -> String {
    format!("{}:{}:{}:{}", delivery.route.len(), delivery.route, delivery.target.len(), delivery.target) + ":" + &storable(key)
}

/// The first event of `event`'s route with `delivery_id` stored within the dedupe window
/// (`since` as the event's receipt time counts it), if any.
async fn earlier_duplicate(
    tx: &deadpool_postgres::Transaction<'_>,
    event: &NewEvent,
    delivery_id: &str,
    since: i64,
    now: Option<i64>,
) -> Result<Option<String>, StoreError> {
    let window = event.received_at.saturating_sub(since);
    let first = tx
        .query_opt(
            concat!(
                "SELECT id FROM hookrelay_events WHERE route = $1 AND delivery_id = $2 AND stored_at >= ",
                db_now!(3),
                " - $4 ORDER BY seq LIMIT 1"
            ),
            &[&event.route, &storable(delivery_id), &now, &window],
        )
        .await?;
    Ok(match first {
        Some(row) => Some(row.try_get(0)?),
        None => None,
    })
}

/// Makes the transaction's commit wait for the disk (the pool's sessions do not by default).
async fn durable(tx: &deadpool_postgres::Transaction<'_>) -> Result<(), StoreError> {
    tx.batch_execute("SET LOCAL synchronous_commit = on").await?;
    Ok(())
}

/// Runs `op` in a transaction and commits it.
macro_rules! in_transaction {
    ($store:expr, |$tx:ident| $body:expr) => {{
        let mut client = $store.client().await?;
        let $tx = client.transaction().await?;
        let result: Result<_, StoreError> = $body;
        match result {
            Ok(value) => {
                $tx.commit().await?;
                Ok(value)
            }
            Err(error) => Err(error),
        }
    }};
}

#[async_trait]
impl Store for PostgresStore {
    async fn accept_unless_duplicate(
        &self,
        event: NewEvent,
        deliveries: Vec<NewDelivery>,
        dedupe_since: Option<i64>,
    ) -> Result<AcceptOutcome, StoreError> {
        owned_by(&event, &deliveries)?;
        let ordered = deliveries.iter().any(|delivery| delivery.ordered_key.is_some());
        if !ordered && (dedupe_since.is_none() || event.delivery_id.is_none()) {
            self.open_or_closed()?;
            let committed = tokio::time::timeout(ACCEPT_TIMEOUT, self.batcher.accept(event, deliveries)).await;
            return match committed {
                Ok(result) => result.map(|()| AcceptOutcome::Accepted),
                Err(_) => Err(StoreError::Unavailable(format!("the database did not commit within {ACCEPT_TIMEOUT:?}"))),
            };
        }
        let now = self.pinned(event.received_at);
        in_transaction!(self, |tx| {
            async {
                durable(&tx).await?;
                if let (Some(since), Some(delivery_id)) = (dedupe_since, &event.delivery_id) {
                    // One accept at a time per (route, delivery id), on every replica, so of
                    // concurrent duplicates exactly one gets in. (Seed 0; ordering keys use 1.)
                    tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[&dedupe_lock(&event.route, delivery_id)]).await?;
                    if let Some(original_event_id) = earlier_duplicate(&tx, &event, delivery_id, since, now).await? {
                        return Ok(AcceptOutcome::Duplicate { original_event_id });
                    }
                }
                // Deliveries of one ordering key are numbered (`seq`) in the order they commit:
                // a younger one never becomes visible to claims before an older one.
                let mut keys: Vec<String> =
                    deliveries.iter().filter_map(|d| d.ordered_key.as_deref().map(|key| ordering_lock(d, key))).collect();
                keys.sort();
                keys.dedup();
                for key in &keys {
                    tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 1))", &[key]).await?;
                }
                insert_event(&tx, &event, now).await?;
                for delivery in &deliveries {
                    insert_delivery(&tx, delivery, Some(&event.body), event.received_at, now, None).await?;
                }
                if !deliveries.is_empty() {
                    tx.execute("SELECT pg_notify($1, '')", &[&DUE_CHANNEL]).await?;
                }
                Ok(AcceptOutcome::Accepted)
            }
            .await
        })
    }

    async fn accept_all(&self, items: Vec<AcceptItem>) -> Result<Vec<AcceptOutcome>, StoreError> {
        for item in &items {
            owned_by(&item.event, &item.deliveries)?;
        }
        if items.is_empty() {
            return Ok(Vec::new());
        }
        in_transaction!(self, |tx| {
            async {
                durable(&tx).await?;
                // Every lock the items need (seed 0: a route's delivery id; 1: an ordering
                // key), taken in one order so that concurrent batches cannot deadlock.
                let mut locks: Vec<(i64, String)> = Vec::new();
                for item in &items {
                    if let (Some(_), Some(delivery_id)) = (item.dedupe_since, &item.event.delivery_id) {
                        locks.push((0, dedupe_lock(&item.event.route, delivery_id)));
                    }
                    for d in &item.deliveries {
                        if let Some(key) = d.ordered_key.as_deref() {
                            locks.push((1, ordering_lock(d, key)));
                        }
                    }
                }
                locks.sort();
                locks.dedup();
                for (seed, key) in &locks {
                    tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, $2))", &[key, seed]).await?;
                }
                let mut outcomes = Vec::with_capacity(items.len());
                let mut due = false;
                for item in &items {
                    let event = &item.event;
                    let now = self.pinned(event.received_at);
                    if let (Some(since), Some(delivery_id)) = (item.dedupe_since, &event.delivery_id) {
                        if let Some(original_event_id) = earlier_duplicate(&tx, event, delivery_id, since, now).await? {
                            outcomes.push(AcceptOutcome::Duplicate { original_event_id });
                            continue;
                        }
                    }
                    insert_event(&tx, event, now).await?;
                    for delivery in &item.deliveries {
                        insert_delivery(&tx, delivery, Some(&event.body), event.received_at, now, None).await?;
                    }
                    due |= !item.deliveries.is_empty();
                    outcomes.push(AcceptOutcome::Accepted);
                }
                if due {
                    tx.execute("SELECT pg_notify($1, '')", &[&DUE_CHANNEL]).await?;
                }
                Ok(outcomes)
            }
            .await
        })
    }

    async fn claim_due(&self, now: i64, limit: usize, lease_ms: i64) -> Result<Vec<ClaimedDelivery>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let pinned = self.pinned(now);
        let token = new_claim_token();
        let mut claimed = Vec::new();
        // Expired leases first: their worker died and they have waited longest. Leases run
        // for seconds, so looking for them once a second is soon enough.
        let last = self.leases_checked_at.load(Ordering::Relaxed);
        let look_for_expired = self.caller_clock || now.saturating_sub(last) >= EXPIRED_LEASES_EVERY_MS;
        if look_for_expired {
            self.leases_checked_at.store(now, Ordering::Relaxed);
        }
        let statements = [(CLAIM_EXPIRED, true), (CLAIM_DUE, false)];
        for (statement, recovering) in statements.into_iter().filter(|(_, recovering)| look_for_expired || !recovering) {
            let wanted = i64::try_from(limit - claimed.len()).unwrap_or(i64::MAX);
            if wanted == 0 {
                break;
            }
            let statement = client.prepare_cached(statement).await?;
            let rows = client.query(&statement, &[&pinned, &wanted, &lease_ms, &now, &token]).await?;
            let mut batch = rows.iter().map(claimed_delivery).collect::<Result<Vec<_>, _>>()?;
            batch.sort_by_key(|(order, _)| *order);
            for (_, delivery) in batch {
                if recovering {
                    tracing::warn!(delivery = %delivery.id, "delivery lease expired, handing it out again");
                }
                claimed.push(delivery);
            }
        }
        Ok(claimed)
    }

    async fn finish_attempt(
        &self,
        delivery_id: &str,
        claim: i64,
        attempt: AttemptRecord,
        outcome: AttemptOutcome,
        now: i64,
    ) -> Result<(), StoreError> {
        self.open_or_closed()?;
        if self.finisher.finish(delivery_id, claim, attempt, outcome, now, self.pinned(now)).await? {
            return Ok(());
        }
        Err(not_claimed(delivery_id, current_status(&self.client().await?, delivery_id).await?))
    }

    async fn release(&self, delivery_id: &str, claim: i64, next_attempt_at: i64, now: i64) -> Result<(), StoreError> {
        let client = self.client().await?;
        let delay = next_attempt_at.saturating_sub(now);
        let changed = client.execute(RELEASE, &[&delivery_id, &self.pinned(now), &delay, &claim]).await?;
        if changed == 0 {
            return Err(not_claimed(delivery_id, current_status(&client, delivery_id).await?));
        }
        Ok(())
    }

    async fn release_held(&self, delivery_id: &str, claim: i64, held: Held, now: i64) -> Result<Option<TargetRecord>, StoreError> {
        let (route, target) = (&held.decided_on.route, &held.decided_on.target);
        in_transaction!(self, |tx| {
            // Shared with the FOR UPDATE of a change to the record: a resume committed first
            // is seen here; one that waits for this commit moves the delivery held here.
            let stored = tx
                .query_opt(
                    &format!("SELECT {TARGET_COLUMNS} FROM hookrelay_target_states WHERE route = $1 AND target = $2 FOR SHARE"),
                    &[route, target],
                )
                .await?
                .as_ref()
                .map(target_record)
                .transpose()?;
            let due = held.due(stored.as_ref(), now);
            let changed = tx.execute(RELEASE, &[&delivery_id, &self.pinned(now), &due.saturating_sub(now), &claim]).await?;
            if changed == 0 {
                return Err(not_claimed(delivery_id, current_status(&tx, delivery_id).await?));
            }
            Ok(stored)
        })
    }

    async fn renew_lease(&self, delivery_id: &str, claim: i64, lease_ms: i64, now: i64) -> Result<(), StoreError> {
        let client = self.client().await?;
        let changed = client
            .execute(
                concat!("UPDATE hookrelay_deliveries SET lease_until = ", db_now!(2), " + $3 WHERE id = $1 AND claim_token = $4"),
                &[&delivery_id, &self.pinned(now), &lease_ms, &claim],
            )
            .await?;
        if changed == 0 {
            return Err(not_claimed(delivery_id, current_status(&client, delivery_id).await?));
        }
        Ok(())
    }

    #[cfg(test)]
    async fn current_claim(&self, delivery_id: &str) -> Result<Option<i64>, StoreError> {
        let client = self.client().await?;
        let row = client.query_opt("SELECT claim_token FROM hookrelay_deliveries WHERE id = $1", &[&delivery_id]).await?;
        Ok(row.map(|row| row.try_get::<_, Option<i64>>(0)).transpose()?.flatten())
    }

    async fn record_finished(&self, finished: Arc<[FinishedDelivery]>, now: i64) -> Result<(), StoreError> {
        for FinishedDelivery { event, delivery, .. } in finished.iter() {
            not_handed_off([delivery])?;
            if let Some(event) = event {
                owned_by(event, [delivery])?;
            }
        }
        let pinned = self.pinned(now);
        in_transaction!(self, |tx| {
            // Side by side: the connection pipelines their statements, so a batch costs
            // about the round trips of one delivery, not of each.
            let each = finished.iter().map(|FinishedDelivery { event, delivery, attempt, outcome }| {
                let tx = &tx;
                async move {
                    if let Some(event) = event {
                        insert_event(tx, event, pinned).await?;
                    }
                    let finished = Finished::of(attempt, outcome);
                    let event_body = event.as_ref().map(|event| &event.body[..]);
                    let (seq, headers) = insert_delivery(tx, delivery, event_body, now, pinned, Some((attempt, &finished))).await?;
                    let request = &delivery.request;
                    let stored = StoredForm { url: request.url.clone(), headers, body: request.body.to_vec() };
                    insert_attempt(tx, seq, 1, attempt, &stored, outcome, None).await
                }
            });
            futures_util::future::try_join_all(each).await.map(|_| ())
        })
    }

    async fn recover_claims(&self, _now: i64) -> Result<u64, StoreError> {
        // Other replicas may hold live claims: a dead one's claims come back when their
        // leases run out.
        Ok(0)
    }

    async fn retry_now(&self, delivery_id: &str, now: i64) -> Result<DeliveryView, StoreError> {
        let pinned = self.pinned(now);
        in_transaction!(self, |tx| {
            async {
                durable(&tx).await?;
                // Holds the event against a prune deciding to delete it (see `prune`).
                tx.execute(
                    "SELECT 1 FROM hookrelay_events e JOIN hookrelay_deliveries d ON d.event_id = e.id WHERE d.id = $1 FOR KEY SHARE OF e",
                    &[&delivery_id],
                )
                .await?;
                let changed = tx
                    .execute(
                        concat!(
                            "UPDATE hookrelay_deliveries SET status = 'pending', next_attempt_at = ",
                            db_now!(2),
                            ", lease_until = NULL, claim_token = NULL, updated_at = $3 WHERE id = $1 AND status IN ('pending', 'failed', 'cancelled')"
                        ),
                        &[&delivery_id, &pinned, &now],
                    )
                    .await?;
                if changed == 0 {
                    let status = current_status(&tx, delivery_id).await?;
                    return Err(StoreError::Conflict(format!("delivery {delivery_id} is {status}")));
                }
                tx.execute("SELECT pg_notify($1, '')", &[&DUE_CHANNEL]).await?;
                delivery_by_id(&tx, delivery_id).await?.ok_or(StoreError::NotFound)
            }
            .await
        })
    }

    async fn cancel(&self, delivery_id: &str, now: i64) -> Result<DeliveryView, StoreError> {
        in_transaction!(self, |tx| {
            async {
                durable(&tx).await?;
                let changed = tx
                    .execute(
                        "UPDATE hookrelay_deliveries SET status = 'cancelled', next_attempt_at = NULL, lease_until = NULL,
                                                         claim_token = NULL, updated_at = $2
                         WHERE id = $1 AND status = 'pending'",
                        &[&delivery_id, &now],
                    )
                    .await?;
                if changed == 0 {
                    return Err(cannot_cancel(delivery_id, current_status(&tx, delivery_id).await?));
                }
                delivery_by_id(&tx, delivery_id).await?.ok_or(StoreError::NotFound)
            }
            .await
        })
    }

    async fn cancel_pending(&self, filter: CancelFilter, now: i64) -> Result<u64, StoreError> {
        in_transaction!(self, |tx| {
            async {
                durable(&tx).await?;
                let cancelled = tx
                    .execute(
                        "UPDATE hookrelay_deliveries SET status = 'cancelled', next_attempt_at = NULL, lease_until = NULL,
                                                         claim_token = NULL, updated_at = $1
                         WHERE status = 'pending' AND ($2::text IS NULL OR route = $2) AND ($3::text IS NULL OR target = $3)
                           AND ($4::bigint IS NULL OR created_at < $4)",
                        &[&now, &filter.route, &filter.target, &filter.before],
                    )
                    .await?;
                Ok(cancelled)
            }
            .await
        })
    }

    async fn get_event(&self, id: &str) -> Result<Option<EventView>, StoreError> {
        let client = self.client().await?;
        let Some(row) = client.query_opt(&format!("SELECT {EVENT_COLUMNS} FROM hookrelay_events WHERE id = $1"), &[&id]).await? else {
            return Ok(None);
        };
        let mut event = event_view(&row)?;
        let rows = client
            .query(&format!("SELECT {DELIVERY_COLUMNS} FROM hookrelay_deliveries d WHERE d.event_id = $1 ORDER BY d.seq"), &[&id])
            .await?;
        event.deliveries = rows.iter().map(|row| delivery_view(row).map(|(_, view)| view)).collect::<Result<_, _>>()?;
        Ok(Some(event))
    }

    async fn list_events(&self, filter: EventFilter) -> Result<Page<EventView>, StoreError> {
        let mut query = PageQuery::new(filter.cursor.as_deref(), "seq")?;
        query.events(&filter);
        let client = self.client().await?;
        query
            .run(&client, &format!("SELECT {EVENT_COLUMNS} FROM hookrelay_events"), filter.limit, |row| {
                Ok((row.try_get("seq")?, event_view(row)?))
            })
            .await
    }

    async fn get_delivery(&self, id: &str) -> Result<Option<(DeliveryView, Vec<AttemptView>)>, StoreError> {
        let client = self.client().await?;
        let Some((seq, view)) = delivery_by_id_with_seq(&client, id).await? else { return Ok(None) };
        let rows = client.query(ATTEMPTS_OF_DELIVERY, &[&seq]).await?;
        let attempts = rows.iter().map(attempt_view).collect::<Result<Vec<_>, _>>()?;
        Ok(Some((view, with_repeated_errors(attempts))))
    }

    async fn list_deliveries(&self, filter: DeliveryFilter) -> Result<Page<DeliveryView>, StoreError> {
        let mut query = PageQuery::new(filter.cursor.as_deref(), "d.seq")?;
        query.filter("d.status", filter.status.map(|status| status.as_str().to_owned()));
        query.filter("d.route", filter.route);
        query.filter("d.target", filter.target);
        let client = self.client().await?;
        query.run(&client, &format!("SELECT {DELIVERY_COLUMNS} FROM hookrelay_deliveries d"), filter.limit, delivery_view).await
    }

    async fn queue_depth(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let depth: i64 = client
            .query_one("SELECT COUNT(*) FROM hookrelay_deliveries WHERE status IN ('pending', 'in_flight')", &[])
            .await?
            .try_get(0)?;
        Ok(depth.unsigned_abs())
    }

    async fn prune_unmatched(&self, older_than: i64, keep_newest: u64) -> Result<u64, StoreError> {
        let keep_newest = i64::try_from(keep_newest).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let deleted = client
            .execute(
                "DELETE FROM hookrelay_events WHERE route = '' AND (received_at < $1 OR seq <= COALESCE(
                   (SELECT seq FROM hookrelay_events WHERE route = '' ORDER BY seq DESC LIMIT 1 OFFSET $2), 0))",
                &[&older_than, &keep_newest],
            )
            .await?;
        Ok(deleted)
    }

    async fn prune(&self, older_than: i64) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            // Candidates are locked first (skipping events a hand retry holds), then checked
            // again with what committed since, so a delivery retried meanwhile is never
            // deleted with its event. Deliveries and attempts go with their event (CASCADE).
            let deleted = in_transaction!(self, |tx| {
                async {
                    let candidates: Vec<i64> = tx
                        .query(
                            "SELECT e.seq FROM hookrelay_events e
                             WHERE e.received_at < $1
                               AND NOT EXISTS (SELECT 1 FROM hookrelay_deliveries d
                                               WHERE d.event_id = e.id AND d.status IN ('pending', 'in_flight'))
                             LIMIT $2 FOR UPDATE OF e SKIP LOCKED",
                            &[&older_than, &PRUNE_CHUNK],
                        )
                        .await?
                        .iter()
                        .map(|row| row.try_get(0))
                        .collect::<Result<_, _>>()?;
                    let deleted = tx
                        .execute(
                            "DELETE FROM hookrelay_events e WHERE e.seq = ANY($1)
                               AND NOT EXISTS (SELECT 1 FROM hookrelay_deliveries d
                                               WHERE d.event_id = e.id AND d.status IN ('pending', 'in_flight'))",
                            &[&candidates],
                        )
                        .await?;
                    Ok((candidates.len(), deleted))
                }
                .await
            })?;
            let (candidates, deleted) = deleted;
            total += deleted;
            if candidates < PRUNE_CHUNK as usize {
                return Ok(total);
            }
        }
    }

    async fn list_routes(&self) -> Result<Vec<StoredRoute>, StoreError> {
        let client = self.client().await?;
        let rows = client.query(&format!("SELECT {ROUTE_COLUMNS} FROM hookrelay_routes ORDER BY name"), &[]).await?;
        rows.iter().map(stored_route).collect()
    }

    async fn get_route(&self, name: &str) -> Result<Option<StoredRoute>, StoreError> {
        let client = self.client().await?;
        route_by_name(&client, name).await
    }

    async fn insert_route(&self, name: &str, definition: serde_json::Value, now: i64) -> Result<StoredRoute, StoreError> {
        in_transaction!(self, |tx| {
            async {
                durable(&tx).await?;
                let inserted = tx
                    .execute(
                        "INSERT INTO hookrelay_routes (name, definition, created_at, updated_at) VALUES ($1, $2, $3, $3)
                         ON CONFLICT (name) DO NOTHING",
                        &[&name, &definition.to_string(), &now],
                    )
                    .await?;
                if inserted == 0 {
                    return Err(StoreError::Conflict(format!("route {name} already exists")));
                }
                tx.execute("SELECT pg_notify($1, $2)", &[&ROUTES_CHANNEL, &name]).await?;
                Ok(StoredRoute { name: name.to_owned(), definition, created_at: now, updated_at: now })
            }
            .await
        })
    }

    async fn update_route(&self, name: &str, definition: serde_json::Value, now: i64) -> Result<StoredRoute, StoreError> {
        in_transaction!(self, |tx| {
            async {
                durable(&tx).await?;
                tx.execute(
                    "UPDATE hookrelay_routes SET definition = $2, updated_at = $3 WHERE name = $1",
                    &[&name, &definition.to_string(), &now],
                )
                .await?;
                let route = route_by_name(&tx, name).await?.ok_or(StoreError::NotFound)?;
                tx.execute("SELECT pg_notify($1, $2)", &[&ROUTES_CHANNEL, &name]).await?;
                Ok(route)
            }
            .await
        })
    }

    async fn delete_route(&self, name: &str) -> Result<bool, StoreError> {
        in_transaction!(self, |tx| {
            async {
                durable(&tx).await?;
                let deleted = tx.execute("DELETE FROM hookrelay_routes WHERE name = $1", &[&name]).await? > 0;
                if deleted {
                    tx.execute("SELECT pg_notify($1, $2)", &[&ROUTES_CHANNEL, &name]).await?;
                }
                Ok(deleted)
            }
            .await
        })
    }

    async fn take_permit(&self, key: &str, limit: SharedLimit, now: i64) -> Result<Option<Duration>, StoreError> {
        let pinned = self.pinned(now);
        in_transaction!(self, |tx| limits::take_permit(&tx, key, limit, pinned).await)
    }

    async fn pause_limit(&self, key: &str, pause: Duration, now: i64) -> Result<(), StoreError> {
        let pinned = self.pinned(now);
        in_transaction!(self, |tx| limits::pause(&tx, key, pause, pinned).await)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.client().await?.simple_query("SELECT 1").await?;
        Ok(())
    }

    fn shared(&self) -> bool {
        true
    }

    fn notices(&self) -> Option<broadcast::Receiver<StoreNotice>> {
        Some(self.notices.subscribe())
    }

    async fn target_records(&self) -> Result<Vec<TargetRecord>, StoreError> {
        let client = self.client().await?;
        let rows = client.query(&format!("SELECT {TARGET_COLUMNS} FROM hookrelay_target_states ORDER BY route, target"), &[]).await?;
        rows.iter().map(target_record).collect()
    }

    async fn update_target(&self, route: &str, target: &str, update: TargetUpdate, now: i64) -> Result<TargetRecord, StoreError> {
        let synced = update.durable;
        in_transaction!(self, |tx| {
            if synced {
                durable(&tx).await?;
            }
            tx.execute(
                "INSERT INTO hookrelay_target_states (route, target) VALUES ($1, $2) ON CONFLICT (route, target) DO NOTHING",
                &[&route, &target],
            )
            .await?;
            let row = tx
                .query_one(
                    &format!("SELECT {TARGET_COLUMNS} FROM hookrelay_target_states WHERE route = $1 AND target = $2 FOR UPDATE"),
                    &[&route, &target],
                )
                .await?;
            let before = target_record(&row)?;
            let gate_before = (before.paused_at, before.blocked_until, before.opened);
            let (record, reschedule) = (update.apply)(before);
            tx.execute(
                "UPDATE hookrelay_target_states SET failures = $3, opened = $4, blocked_until = $5, probe_until = $6, paused_at = $7,
                        paused_reason = $8
                 WHERE route = $1 AND target = $2",
                &[
                    &route,
                    &target,
                    &i32::try_from(record.failures).unwrap_or(i32::MAX),
                    &i32::try_from(record.opened).unwrap_or(i32::MAX),
                    &record.blocked_until,
                    &record.probe_until,
                    &record.paused_at,
                    &record.paused_reason,
                ],
            )
            .await?;
            // Due times are on the database's clock: the times are moved there as offsets from now.
            if let Reschedule::Move { up_to, to } = reschedule {
                tx.execute(
                    concat!(
                        "UPDATE hookrelay_deliveries SET next_attempt_at = ",
                        db_due!(3, 5),
                        " WHERE status = 'pending' AND route = $1 AND target = $2 AND next_attempt_at <= ",
                        db_due_up_to!(3, 4),
                        " AND next_attempt_at <> ",
                        db_due!(3, 5)
                    ),
                    &[&route, &target, &self.pinned(now), &up_to.saturating_sub(now), &to.saturating_sub(now)],
                )
                .await?;
            }
            if gate_before != (record.paused_at, record.blocked_until, record.opened) {
                tx.execute("SELECT pg_notify($1, '')", &[&TARGETS_CHANNEL]).await?;
            }
            Ok(record)
        })
    }

    async fn take_probe(&self, route: &str, target: &str, until: i64, now: i64) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let taken = client
            .execute(
                "UPDATE hookrelay_target_states SET probe_until = $3
                 WHERE route = $1 AND target = $2 AND paused_at IS NULL AND blocked_until <= $4
                   AND (probe_until IS NULL OR probe_until <= $4)",
                &[&route, &target, &until, &now],
            )
            .await?;
        Ok(taken == 1)
    }

    async fn queued_by_target(&self) -> Result<Vec<(String, String, u64)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT route, target, COUNT(*) FROM hookrelay_deliveries WHERE status IN ('pending', 'in_flight') GROUP BY route, target",
                &[],
            )
            .await?;
        rows.iter().map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get::<_, i64>(2)?.unsigned_abs()))).collect()
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.closed.store(true, Ordering::Release);
        let _ = self.stop.send(true);
        self.pool.close();
        self.accepts.close();
        Ok(())
    }
}

/// Hands a claim back (`$1` the delivery, `$2` now, `$3` due in ms from now, `$4` the claim).
const RELEASE: &str = concat!(
    "UPDATE hookrelay_deliveries SET status = 'pending', next_attempt_at = ",
    db_due!(2, 3),
    ", lease_until = NULL, claim_token = NULL WHERE id = $1 AND claim_token = $4"
);

/// Claims expired leases (`$1` now, `$2` limit, `$3` lease, `$4` the relay's now for display,
/// `$5` the claim's token).
const CLAIM_EXPIRED: &str = concat!(
    "WITH due AS (SELECT d.seq FROM hookrelay_deliveries d WHERE d.status = 'in_flight' AND d.lease_until < ",
    db_now!(1),
    claimable!(),
    ") UPDATE hookrelay_deliveries d SET lease_until = ",
    db_now!(1),
    " + $3, updated_at = $4, claim_token = $5 FROM due WHERE d.seq = due.seq RETURNING ",
    claim_columns!()
);

/// Claims due pending deliveries (parameters as [`CLAIM_EXPIRED`]).
const CLAIM_DUE: &str = concat!(
    "WITH due AS (SELECT d.seq FROM hookrelay_deliveries d WHERE d.status = 'pending' AND d.next_attempt_at <= ",
    db_now!(1),
    claimable!(),
    ") UPDATE hookrelay_deliveries d SET status = 'in_flight', lease_until = ",
    db_now!(1),
    " + $3, updated_at = $4, claim_token = $5 FROM due WHERE d.seq = due.seq RETURNING ",
    claim_columns!()
);

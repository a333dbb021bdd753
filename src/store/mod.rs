//! The durable store: received events, the deliveries they fan out to, every attempt, and
//! the routes created through the admin API. [`Store`] speaks in domain types; two
//! backends sit behind it, [`SqliteStore`] (the embedded default, one relay) and
//! [`PostgresStore`] (shared by several relays, which also keeps their rate limits).
//!
//! The store owns persistence and the delivery state machine — `pending` → `in_flight` →
//! `succeeded` | `failed`, and `pending` → `cancelled` by hand — with leases for crash
//! recovery and one-at-a-time ordering per `ordered_key`. The caller passes every time in (milliseconds since the Unix epoch); a
//! shared store maps them onto the database's clock. It must not decide retry schedules
//! (the caller says when to retry) or redact: a
//! stored request is the rendered one (configured credentials and signatures are added
//! only when it is sent, but the URL may carry tokens), so the admin layer redacts views
//! before showing them. Attempt records arrive already redacted.

pub mod ownership;
mod postgres;
mod record;
mod rows;
mod schema;
mod sqlite;
#[cfg(test)]
mod tests;
mod writer;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use postgres::PostgresStore;
pub use record::stored_headers_len;
pub use sqlite::{SqliteReader, SqliteStore};

/// Request and response bodies of an attempt are cut to this many bytes before storing.
pub const MAX_STORED_BODY: usize = 64 * 1024;
/// The answer body of an attempt that will be retried is cut to this many bytes: the last
/// attempt's answer is kept whole (up to [`MAX_STORED_BODY`]), earlier ones only say enough
/// to see what went wrong.
pub const MAX_EARLIER_ANSWER: usize = 1024;
/// The largest page a list returns; a filter's `limit` is clamped to `1..=MAX_PAGE`.
pub const MAX_PAGE: usize = 500;
/// The page size of `EventFilter::default()` and `DeliveryFilter::default()`.
pub const DEFAULT_PAGE: usize = 50;

/// A delivery that already happened or never can, with its one attempt: to `event`, stored
/// in the same write, or to an event accepted before.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedDelivery {
    pub event: Option<NewEvent>,
    pub delivery: NewDelivery,
    pub attempt: AttemptRecord,
    pub outcome: AttemptOutcome,
}

/// A received webhook, as it came in.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub id: String,
    pub received_at: i64,
    pub route: String,
    pub event: Option<String>,
    /// The sender's own delivery id (e.g. `X-GitHub-Delivery`), used by `dedupe:` windows.
    pub delivery_id: Option<String>,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// The stored event this one replays, when it was replayed by hand.
    pub replay_of: Option<String>,
}

/// A rendered outgoing request, as it will be sent before credentials and signatures are added.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// The route of a kept request that no route took (`store.keep_unmatched`): such an event
/// has no deliveries.
pub const UNMATCHED_ROUTE: &str = "";

/// One target's delivery of an event, created `pending` by [`Store::accept`].
#[derive(Debug, Clone, PartialEq)]
pub struct NewDelivery {
    pub id: String,
    /// Must equal the id of the event it is accepted with.
    pub event_id: String,
    pub route: String,
    pub target: String,
    pub request: StoredRequest,
    pub next_attempt_at: i64,
    /// Deliveries sharing `(route, target, ordered_key)` go out one at a time, oldest first.
    pub ordered_key: Option<String>,
    /// Every attempt refuses private addresses (the route came from the admin API), whatever
    /// the route carrying this name has become since.
    pub guarded: bool,
    /// `Some`: stored already claimed, for a worker of this relay that sends it as soon as
    /// it is committed (no claim round trip through the store).
    pub handed_off: Option<HandOff>,
}

/// A delivery stored `in_flight` under a claim of this relay: `token` names the claim as
/// [`ClaimedDelivery::claim`] does, and the lease runs until `lease_until` (ms, the relay's
/// clock). A shared store leases it as its claims do, for `lease_ms` from the database's
/// clock, so other relays see it claimed until that lease runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandOff {
    pub token: i64,
    pub lease_until: i64,
    pub lease_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    InFlight,
    Succeeded,
    Failed,
    /// Cancelled by hand before it was sent: final, never sent.
    Cancelled,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::InFlight => "in_flight",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Cancelled => "cancelled",
        }
    }

    /// Succeeded, failed and cancelled deliveries are done: nothing happens to them unless
    /// retried by hand.
    pub fn is_finished(self) -> bool {
        matches!(self, DeliveryStatus::Succeeded | DeliveryStatus::Failed | DeliveryStatus::Cancelled)
    }
}

impl fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeliveryStatus {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, StoreError> {
        match s {
            "pending" => Ok(DeliveryStatus::Pending),
            "in_flight" => Ok(DeliveryStatus::InFlight),
            "succeeded" => Ok(DeliveryStatus::Succeeded),
            "failed" => Ok(DeliveryStatus::Failed),
            "cancelled" => Ok(DeliveryStatus::Cancelled),
            other => Err(StoreError::InvalidInput(format!("unknown delivery status {other:?}"))),
        }
    }
}

/// A delivery handed to a worker by [`Store::claim_due`]; it stays leased until finished,
/// released, or the lease runs out.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedDelivery {
    pub id: String,
    pub event_id: String,
    pub route: String,
    pub target: String,
    pub request: StoredRequest,
    /// Counted attempts so far, before this one.
    pub attempts: u32,
    pub created_at: i64,
    /// See [`NewDelivery::guarded`]; `None` for deliveries stored before it was recorded.
    pub guarded: Option<bool>,
    /// This claim's token. Finishing, releasing or renewing the claim names it, so that a
    /// worker whose lease ran out (and was taken over) cannot touch the new claim.
    pub claim: i64,
}

/// What happened on one try. Headers are expected to be redacted already.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    pub started_at: i64,
    pub duration_ms: i64,
    /// `None` when the attempt went to the URL its delivery holds (most do: only a signer
    /// that adds to the query changes it), so the log need not keep it once per attempt.
    pub request_url: Option<String>,
    pub request_method: String,
    pub request_headers: Vec<(String, String)>,
    pub request_body: Bytes,
    pub status: Option<u16>,
    pub response_headers: Vec<(String, String)>,
    pub response_body: Bytes,
    pub error: Option<String>,
    /// False for a throttled (429) attempt, which does not use up one of `max_attempts`.
    pub counted: bool,
}

/// What the worker decided after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    Succeeded,
    RetryAt(i64),
    Failed { reason: String },
}

impl AttemptOutcome {
    /// The delivery's status once this outcome is recorded.
    pub fn status(&self) -> DeliveryStatus {
        match self {
            AttemptOutcome::Succeeded => DeliveryStatus::Succeeded,
            AttemptOutcome::RetryAt(_) => DeliveryStatus::Pending,
            AttemptOutcome::Failed { .. } => DeliveryStatus::Failed,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum AcceptOutcome {
    Accepted,
    /// An event with the same route and sender delivery id was received inside the window.
    Duplicate {
        original_event_id: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredRequestView {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// UTF-8, with invalid bytes replaced.
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryView {
    pub id: String,
    pub event_id: String,
    pub route: String,
    pub target: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    /// None once finished; while in flight, the time it was due.
    pub next_attempt_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub request: StoredRequestView,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttemptView {
    /// 1-based, counting throttled attempts too.
    pub number: u32,
    pub started_at: i64,
    pub duration_ms: i64,
    pub request_url: String,
    pub request_method: String,
    pub request_headers: Vec<(String, String)>,
    pub request_body: String,
    pub status: Option<u16>,
    pub response_headers: Vec<(String, String)>,
    pub response_body: String,
    pub error: Option<String>,
    pub counted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventView {
    pub id: String,
    pub received_at: i64,
    pub route: String,
    pub event: Option<String>,
    pub delivery_id: Option<String>,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<String>,
    /// Filled by [`Store::get_event`] only; empty in lists.
    pub deliveries: Vec<DeliveryView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass back as the filter's `cursor` for the next (older) page; None on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFilter {
    pub route: Option<String>,
    /// The event name, or a glob of it (`*` any run of characters, `?` one character).
    pub event: Option<String>,
    /// Received at or after this time (ms).
    pub since: Option<i64>,
    /// Received before this time (ms).
    pub until: Option<i64>,
    /// Only events with at least one delivery in this status.
    pub status: Option<DeliveryStatus>,
    pub limit: usize,
    pub cursor: Option<String>,
}

impl Default for EventFilter {
    fn default() -> Self {
        EventFilter { route: None, event: None, since: None, until: None, status: None, limit: DEFAULT_PAGE, cursor: None }
    }
}

/// An event-name filter as each store's pattern syntax spells it: exact unless the glob
/// has a wildcard.
pub(crate) enum NamePattern {
    Exact(String),
    /// For SQLite's `GLOB`: `*` and `?` kept, `[` quoted as `[[]`.
    SqliteGlob(String),
    /// For PostgreSQL's `LIKE` (escape `\`): `*` → `%`, `?` → `_`, the rest quoted.
    Like(String),
}

impl NamePattern {
    pub(crate) fn for_sqlite(glob: String) -> NamePattern {
        if !glob.contains(['*', '?']) {
            return NamePattern::Exact(glob);
        }
        NamePattern::SqliteGlob(glob.replace('[', "[[]"))
    }

    pub(crate) fn for_postgres(glob: String) -> NamePattern {
        if !glob.contains(['*', '?']) {
            return NamePattern::Exact(glob);
        }
        let mut like = String::with_capacity(glob.len() + 4);
        for c in glob.chars() {
            match c {
                '*' => like.push('%'),
                '?' => like.push('_'),
                '%' | '_' | '\\' => {
                    like.push('\\');
                    like.push(c);
                }
                c => like.push(c),
            }
        }
        NamePattern::Like(like)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryFilter {
    pub status: Option<DeliveryStatus>,
    pub route: Option<String>,
    pub target: Option<String>,
    pub limit: usize,
    pub cursor: Option<String>,
}

impl Default for DeliveryFilter {
    fn default() -> Self {
        DeliveryFilter { status: None, route: None, target: None, limit: DEFAULT_PAGE, cursor: None }
    }
}

/// Which pending deliveries [`Store::cancel_pending`] cancels: all that match every given field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CancelFilter {
    pub route: Option<String>,
    pub target: Option<String>,
    /// Created before this time (ms).
    pub before: Option<i64>,
}

/// A target's circuit-breaker and pause record (the breaker module of delivery decides it); times
/// are the relay's milliseconds. A target with no record is closed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetRecord {
    pub route: String,
    pub target: String,
    /// Consecutive retryable failures.
    pub failures: u32,
    /// Times it opened since it last closed (the cool-down doubles with each).
    pub opened: u32,
    /// Open until then; half-open after, until a probe succeeds.
    pub blocked_until: Option<i64>,
    /// Half-open: a probe is on the wire until then.
    pub probe_until: Option<i64>,
    pub paused_at: Option<i64>,
    pub paused_reason: Option<String>,
}

impl TargetRecord {
    /// Whether `other` holds the target's deliveries as this one does: paused, or open or
    /// half-open until the same times (counts of failures alone hold nothing).
    pub fn holds_as(&self, other: &TargetRecord) -> bool {
        self.paused_at.is_some() == other.paused_at.is_some()
            && self.blocked_until == other.blocked_until
            && self.probe_until == other.probe_until
            && self.opened == other.opened
    }
}

/// A claim its target's record holds back, for [`Store::release_held`].
#[derive(Debug, Clone)]
pub struct Held {
    /// The record the relay decided on (its copy may lag the stored one).
    pub decided_on: TargetRecord,
    /// Due then, if the stored record still holds as `decided_on` does.
    pub until: i64,
}

impl Held {
    /// When the delivery is due, given the target's record as stored: `until`, or `now`
    /// when the record changed since the relay decided.
    pub fn due(&self, stored: Option<&TargetRecord>, now: i64) -> i64 {
        if stored.is_some_and(|record| record.holds_as(&self.decided_on)) {
            self.until
        } else {
            now
        }
    }
}

/// What happens to a target's pending deliveries when its record changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reschedule {
    Nothing,
    /// Those due at or before `up_to` are due at `to` instead.
    Move {
        up_to: i64,
        to: i64,
    },
}

/// When paused deliveries are due: never, until the target is resumed (year 2200). A mark
/// rather than a time: stores keep it exactly.
pub const PAUSED_UNTIL_MS: i64 = 7_258_118_400_000;

/// A change to a target's record, worked out from the record as stored (under its lock):
/// the new record and what happens to its pending deliveries.
pub struct TargetUpdate {
    pub apply: Box<dyn FnOnce(TargetRecord) -> (TargetRecord, Reschedule) + Send>,
    /// Whether the change must be on disk before it is reported (an operator's pause).
    pub durable: bool,
}

/// A route created through the admin API; `definition` has the YAML route schema, as JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredRoute {
    pub name: String,
    pub definition: serde_json::Value,
    pub created_at: i64,
    pub updated_at: i64,
}

/// An outbound rate limit as a shared store keeps it: `cells` per `per_ms`, up to `burst`
/// at once, and with `window` never more than `cells` in any sliding `per_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedLimit {
    pub cells: u32,
    pub per_ms: i64,
    pub burst: u32,
    pub window: bool,
}

/// What a shared store tells the relays using it about changes made by any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreNotice {
    /// Deliveries became due (accepted, or retried by hand): look for work now.
    Due,
    /// A route was created, replaced or deleted through the admin API: re-read them.
    RoutesChanged,
    /// A target was paused or resumed, or its breaker opened or closed: re-read the targets'
    /// records.
    TargetsChanged,
}

/// One event to accept with its deliveries, deduplicated since `dedupe_since` (ms) if given.
#[derive(Debug, Clone)]
pub struct AcceptItem {
    pub event: NewEvent,
    pub deliveries: Vec<NewDelivery>,
    pub dedupe_since: Option<i64>,
}

/// Clone so one failed commit can answer every write in its batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(Arc<rusqlite::Error>),
    #[error("postgres: {}", postgres_message(.0))]
    Postgres(Arc<tokio_postgres::Error>),
    /// The database cannot be reached (PostgreSQL down, no connection free in time).
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("{path}: {error}")]
    Io { path: String, error: Arc<std::io::Error> },
    #[error("the store is closed")]
    Closed,
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("the store holds data this build cannot read: {0}")]
    Corrupt(String),
    #[error("the store's schema version {found} is newer than this build knows ({known}): upgrade hookrelay")]
    SchemaTooNew { found: i64, known: i64 },
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        match error {
            // A stored value that does not parse (bad JSON, unknown status) is bad data, not a
            // failing database.
            rusqlite::Error::FromSqlConversionFailure(column, kind, cause) => {
                StoreError::Corrupt(format!("column {column} ({kind}): {cause}"))
            }
            other => StoreError::Sqlite(Arc::new(other)),
        }
    }
}

/// Everything the relay keeps durably. Used as `Arc<dyn Store>`.
///
/// A write that has been queued runs to completion even if the caller stops waiting for it.
#[async_trait]
pub trait Store: Send + Sync {
    /// Commits the event and its pending deliveries durably before returning.
    async fn accept(&self, event: NewEvent, deliveries: Vec<NewDelivery>) -> Result<(), StoreError> {
        self.accept_unless_duplicate(event, deliveries, None).await.map(|_| ())
    }

    /// Like [`Store::accept`], but when `dedupe_since` is given and an event with the same
    /// route and `delivery_id` was received at or after it, stores nothing and says which
    /// event came first. The check and the insert are one step, so of concurrent
    /// duplicates exactly one is accepted.
    async fn accept_unless_duplicate(
        &self,
        event: NewEvent,
        deliveries: Vec<NewDelivery>,
        dedupe_since: Option<i64>,
    ) -> Result<AcceptOutcome, StoreError>;

    /// Every item as [`Store::accept_unless_duplicate`] would take it, in one transaction:
    /// all of them (each stored or found a duplicate), or on an error none (a CloudEvents
    /// batch is taken whole).
    async fn accept_all(&self, items: Vec<AcceptItem>) -> Result<Vec<AcceptOutcome>, StoreError>;

    /// Leases up to `limit` due deliveries until `now + lease_ms`, oldest due first. Deliveries
    /// whose lease ran out (the worker died) are due again. Of the unfinished deliveries
    /// sharing `(route, target, ordered_key)`, only the oldest is ever handed out, and only
    /// while no other one of them holds a lease.
    async fn claim_due(&self, now: i64, limit: usize, lease_ms: i64) -> Result<Vec<ClaimedDelivery>, StoreError>;

    /// Records an attempt on a claimed delivery and applies the outcome. Bodies are cut to
    /// [`MAX_STORED_BODY`], the answer of an attempt to be retried to [`MAX_EARLIER_ANSWER`];
    /// a request the same as the delivery's is not stored again. NotFound if missing,
    /// Conflict if the delivery is not in flight under `claim`.
    async fn finish_attempt(
        &self,
        delivery_id: &str,
        claim: i64,
        attempt: AttemptRecord,
        outcome: AttemptOutcome,
        now: i64,
    ) -> Result<(), StoreError>;

    /// Hands a claim back untouched (shutdown, rate-limit wait): pending again, due at
    /// `next_attempt_at`, no attempt recorded. NotFound if missing, Conflict if not in
    /// flight under `claim`.
    async fn release(&self, delivery_id: &str, claim: i64, next_attempt_at: i64, now: i64) -> Result<(), StoreError>;

    /// Hands a claim back because its target's record holds it ([`Held`]). Decided under
    /// the target's lock: when the stored record holds differently from the one the relay
    /// decided on (another relay, or an operator, resumed, closed or paused it meanwhile),
    /// the delivery is due at `now` instead, so a resume's move of the held deliveries can
    /// never miss it. Returns the stored record (None: the target has none). Errors as
    /// [`Store::release`].
    async fn release_held(&self, delivery_id: &str, claim: i64, held: Held, now: i64) -> Result<Option<TargetRecord>, StoreError>;

    /// Extends the lease of a claim still on the wire to `now + lease_ms`, so that no other
    /// worker takes it over. NotFound if missing, Conflict if not in flight under `claim`.
    async fn renew_lease(&self, delivery_id: &str, claim: i64, lease_ms: i64, now: i64) -> Result<(), StoreError>;

    /// The token of the delivery's current claim (tests finish claims they did not keep).
    #[cfg(test)]
    async fn current_claim(&self, delivery_id: &str) -> Result<Option<i64>, StoreError>;

    /// Adds deliveries that already happened (a sync route's answered requests) or never can
    /// (a render error), each with its one attempt, so the log is complete; all in one
    /// write, all or none.
    async fn record_finished(&self, finished: Arc<[FinishedDelivery]>, now: i64) -> Result<(), StoreError>;

    /// Hands back every claim at startup, due at `now`: called by the only process using
    /// this store, so any in-flight delivery belonged to a process that died (at-least-once:
    /// it is sent again). Shared backends keep relying on lease expiry instead. Returns how
    /// many deliveries were handed back.
    async fn recover_claims(&self, now: i64) -> Result<u64, StoreError>;

    /// Makes a failed, cancelled or pending delivery due now. NotFound if missing; Conflict
    /// if it succeeded or is in flight. The attempt count is kept: the worker's retry policy
    /// decides how many more tries a hand retry gets.
    async fn retry_now(&self, delivery_id: &str, now: i64) -> Result<DeliveryView, StoreError>;

    /// Cancels a pending delivery: `cancelled`, final, never sent. NotFound if missing;
    /// Conflict if it is finished or on the wire.
    async fn cancel(&self, delivery_id: &str, now: i64) -> Result<DeliveryView, StoreError>;

    /// Cancels every pending delivery matching `filter`; returns how many.
    async fn cancel_pending(&self, filter: CancelFilter, now: i64) -> Result<u64, StoreError>;

    async fn get_event(&self, id: &str) -> Result<Option<EventView>, StoreError>;
    /// Newest first.
    async fn list_events(&self, filter: EventFilter) -> Result<Page<EventView>, StoreError>;
    /// The delivery with its attempts, oldest attempt first.
    async fn get_delivery(&self, id: &str) -> Result<Option<(DeliveryView, Vec<AttemptView>)>, StoreError>;
    /// Newest first.
    async fn list_deliveries(&self, filter: DeliveryFilter) -> Result<Page<DeliveryView>, StoreError>;
    /// Pending plus in-flight deliveries.
    async fn queue_depth(&self) -> Result<u64, StoreError>;

    /// Deletes events received before `older_than` whose deliveries are all finished, with
    /// their deliveries and attempts. Returns how many events went.
    async fn prune(&self, older_than: i64) -> Result<u64, StoreError>;

    /// Deletes kept unmatched requests (events of [`UNMATCHED_ROUTE`]) received before
    /// `older_than`, and all but the newest `keep_newest`. Returns how many went.
    async fn prune_unmatched(&self, older_than: i64, keep_newest: u64) -> Result<u64, StoreError>;

    /// Ordered by name.
    async fn list_routes(&self) -> Result<Vec<StoredRoute>, StoreError>;
    async fn get_route(&self, name: &str) -> Result<Option<StoredRoute>, StoreError>;
    /// Conflict if a route with that name exists.
    async fn insert_route(&self, name: &str, definition: serde_json::Value, now: i64) -> Result<StoredRoute, StoreError>;
    /// NotFound if missing.
    async fn update_route(&self, name: &str, definition: serde_json::Value, now: i64) -> Result<StoredRoute, StoreError>;
    /// False if there was no such route.
    async fn delete_route(&self, name: &str) -> Result<bool, StoreError>;

    /// Takes one permit of the rate limit `key` shared by every relay on this store: None
    /// when granted, else how long until one may be had. Only a [`Store::shared`] store
    /// keeps limits; a store of one's own leaves them to the relay's memory and refuses.
    async fn take_permit(&self, key: &str, limit: SharedLimit, now: i64) -> Result<Option<std::time::Duration>, StoreError> {
        let _ = (key, limit, now);
        Err(StoreError::InvalidInput("this store keeps no rate limits; they are kept in memory".into()))
    }

    /// Holds every relay back from the shared limit `key` for `pause` (a receiver's 429 with
    /// Retry-After, a robot's block). Shared stores only, as [`Store::take_permit`].
    async fn pause_limit(&self, key: &str, pause: std::time::Duration, now: i64) -> Result<(), StoreError> {
        let _ = (key, pause, now);
        Err(StoreError::InvalidInput("this store keeps no rate limits; they are kept in memory".into()))
    }

    /// Whether the store answers now (for readiness): a shared store's database is reachable.
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Whether other relays use this store at the same time (then leases, not a restart,
    /// hand back a dead relay's claims, and counts change under this relay's feet).
    fn shared(&self) -> bool {
        false
    }

    /// Changes other relays made, for a shared store; None for a store of one's own.
    /// After a lag or a reconnect a notice may stand for several changes: re-read.
    fn notices(&self) -> Option<tokio::sync::broadcast::Receiver<StoreNotice>> {
        None
    }

    /// Finishes queued writes and stops; every call after it answers `Closed`.
    /// Every target with a breaker or pause record.
    async fn target_records(&self) -> Result<Vec<TargetRecord>, StoreError>;

    /// Applies `update` to the target's record (a new one when it has none) under a lock,
    /// stores the result and moves the target's pending deliveries as it says. Returns the
    /// record as stored.
    async fn update_target(&self, route: &str, target: &str, update: TargetUpdate, now: i64) -> Result<TargetRecord, StoreError>;

    /// Takes the one probe of a half-open target until `until`: false when it is not
    /// half-open or another send is probing.
    async fn take_probe(&self, route: &str, target: &str, until: i64, now: i64) -> Result<bool, StoreError>;

    /// Pending and in-flight deliveries per (route, target).
    async fn queued_by_target(&self) -> Result<Vec<(String, String, u64)>, StoreError>;

    async fn close(&self) -> Result<(), StoreError>;
}

/// The server's own words when it refused a statement ("db error" alone says nothing).
fn postgres_message(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => error.to_string(),
    }
}

/// Refuses deliveries stored with an event they do not belong to.
pub(crate) fn owned_by<'d>(event: &NewEvent, deliveries: impl IntoIterator<Item = &'d NewDelivery>) -> Result<(), StoreError> {
    match deliveries.into_iter().find(|delivery| delivery.event_id != event.id) {
        Some(stray) => {
            Err(StoreError::InvalidInput(format!("delivery {} belongs to event {}, not {}", stray.id, stray.event_id, event.id)))
        }
        None => Ok(()),
    }
}

/// A shared store refuses deliveries handed off to one relay's worker (see [`HandOff`]).
pub(crate) fn not_handed_off<'d>(deliveries: impl IntoIterator<Item = &'d NewDelivery>) -> Result<(), StoreError> {
    match deliveries.into_iter().find(|delivery| delivery.handed_off.is_some()) {
        Some(claimed) => {
            Err(StoreError::InvalidInput(format!("delivery {} is claimed already; a shared store claims its own", claimed.id)))
        }
        None => Ok(()),
    }
}

/// A page cursor: the `seq` of the last item of the page before, in base 10.
pub(crate) fn cursor_seq(cursor: &str) -> Result<i64, StoreError> {
    cursor.parse().map_err(|_| StoreError::InvalidInput(format!("bad cursor {cursor:?}")))
}

/// A new claim token: random, so that tokens of different relays never collide.
pub(crate) fn new_claim_token() -> i64 {
    fastrand::i64(1..)
}

/// The Conflict a delivery that is not pending gets when cancelled.
pub(crate) fn cannot_cancel(delivery_id: &str, status: DeliveryStatus) -> StoreError {
    match status {
        DeliveryStatus::InFlight => StoreError::Conflict(format!("delivery {delivery_id} is on the wire")),
        other => StoreError::Conflict(format!("delivery {delivery_id} is already {other}")),
    }
}

/// The Conflict a stale claim gets.
pub(crate) fn not_claimed(delivery_id: &str, status: DeliveryStatus) -> StoreError {
    match status {
        DeliveryStatus::InFlight => StoreError::Conflict(format!("delivery {delivery_id} was claimed again by another worker")),
        other => StoreError::Conflict(format!("delivery {delivery_id} is {other}, not in flight")),
    }
}

/// Clamps a requested page size into `1..=MAX_PAGE`.
fn page_size(limit: usize) -> usize {
    limit.clamp(1, MAX_PAGE)
}

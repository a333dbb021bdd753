//! The PostgreSQL schema as an ordered list of migrations, recorded in `hookrelay_schema`
//! and applied under an advisory lock so that replicas starting together apply each step
//! once. A shipped migration is never edited. Steps are expand-then-contract: a step only
//! adds (tables, nullable columns, indexes) what the release before can ignore; removing
//! what an older release still reads waits for a later step, so replicas of two adjacent
//! releases can share the database during a rolling update.
//!
//! Every table carries the `hookrelay_` prefix: the database may be shared with the
//! service's own tables. Times are milliseconds since the Unix epoch; those that decide
//! when something happens (due times, leases, dedupe windows) are on the database's clock,
//! `hookrelay_now_ms()`, so replicas with skewed clocks agree.

use tokio_postgres::Client;

use crate::store::StoreError;

/// One step of the schema.
pub(in crate::store) struct Migration {
    pub sql: &'static str,
    /// The oldest schema version a relay may know and still run on the result: an
    /// expand-only step leaves the version before it readable, so relays of the release
    /// before keep running (and restarting) during a rolling update.
    pub readable_from: i32,
}

/// `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`.
pub(in crate::store) const MIGRATIONS: &[Migration] = &[
    Migration { sql: V1, readable_from: 1 },
    Migration { sql: V2, readable_from: 1 },
    Migration { sql: V3, readable_from: 1 },
    Migration { sql: V4, readable_from: 1 },
    Migration { sql: V5, readable_from: 1 },
];

// A claim token names an in-flight claim, so a claim is found by its token alone (see the
// store's module). Every release wrote rows this way; a stray token is cleared all the same,
// since a later update of its row (a pause moving pending deliveries) would then fail.
// NOT VALID spares the constraint a second scan.
const V5: &str = "UPDATE hookrelay_deliveries SET claim_token = NULL WHERE claim_token IS NOT NULL AND status <> 'in_flight';
ALTER TABLE hookrelay_deliveries ADD CONSTRAINT hookrelay_deliveries_claimed_in_flight
    CHECK (claim_token IS NULL OR status = 'in_flight') NOT VALID;";

// An event replayed by hand names the event it replays (nullable: the release before ignores it).
const V2: &str = "ALTER TABLE hookrelay_events ADD COLUMN replay_of text;";

// Each target's circuit breaker and pause (a target without a row is closed); the
// release before ignores it.
const V3: &str = "
CREATE TABLE hookrelay_target_states (
    route          text NOT NULL,
    target         text NOT NULL,
    failures       integer NOT NULL DEFAULT 0,
    opened         integer NOT NULL DEFAULT 0,
    blocked_until  bigint,
    probe_until    bigint,
    paused_at      bigint,
    paused_reason  text,
    PRIMARY KEY (route, target)
);
CREATE INDEX hookrelay_deliveries_pending_target ON hookrelay_deliveries (route, target, next_attempt_at) WHERE status = 'pending';
";

// An attempt sent with its delivery's headers and a few more (the credential or signature a
// target adds at send time) keeps only those: `request_headers` NULL, the added ones here.
// The release before shows such an attempt with its delivery's headers alone.
const V4: &str = "ALTER TABLE hookrelay_attempts ADD COLUMN request_headers_added text;";

/// The advisory lock held while migrating ("hookrelay" in ASCII, as a number).
const MIGRATION_LOCK: i64 = 0x686f_6f6b_7265_6c61;

const V1: &str = "
-- The statement's start on the database's clock: STABLE, so that claims compare it with
-- the due index (a volatile clock would make every claim scan the whole queue).
CREATE FUNCTION hookrelay_now_ms() RETURNS bigint LANGUAGE sql STABLE
    AS $$ SELECT (extract(epoch FROM statement_timestamp()) * 1000)::bigint $$;

CREATE TABLE hookrelay_events (
    seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          text NOT NULL UNIQUE,
    received_at bigint NOT NULL,          -- the receiving relay's clock, for display
    stored_at   bigint NOT NULL,          -- the database's clock, for dedupe windows
    route       text NOT NULL,
    event       text,
    delivery_id text,
    method      text NOT NULL,
    path        text NOT NULL,
    headers     text NOT NULL,            -- JSON [[name, value], ...]
    body        bytea NOT NULL
);
CREATE INDEX hookrelay_events_route ON hookrelay_events (route, seq);
CREATE INDEX hookrelay_events_event ON hookrelay_events (event, seq);
CREATE INDEX hookrelay_events_received ON hookrelay_events (received_at);
CREATE INDEX hookrelay_events_dedupe ON hookrelay_events (route, delivery_id, stored_at) WHERE delivery_id IS NOT NULL;

CREATE TABLE hookrelay_deliveries (
    seq                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                  text NOT NULL UNIQUE,
    event_id            text NOT NULL REFERENCES hookrelay_events (id) ON DELETE CASCADE,
    route               text NOT NULL,
    target              text NOT NULL,
    req_method          text NOT NULL,
    req_url             text NOT NULL,
    req_headers         text NOT NULL,
    req_body            bytea NOT NULL,
    req_body_from_event boolean NOT NULL DEFAULT false,  -- true: req_body is the event's body
    status              text NOT NULL CHECK (status IN ('pending', 'in_flight', 'succeeded', 'failed', 'cancelled')),
    attempts            integer NOT NULL DEFAULT 0,
    next_attempt_at     bigint,           -- database clock; NULL once finished
    lease_until         bigint,           -- database clock; set while in_flight
    claim_token         bigint,           -- set while in_flight: names the claim
    ordered_key         text,
    guarded             boolean,
    created_at          bigint NOT NULL,
    updated_at          bigint NOT NULL,
    last_status         integer,
    last_error          text
);
CREATE INDEX hookrelay_deliveries_event ON hookrelay_deliveries (event_id);
CREATE INDEX hookrelay_deliveries_status ON hookrelay_deliveries (status, seq);
CREATE INDEX hookrelay_deliveries_route ON hookrelay_deliveries (route, seq);
CREATE INDEX hookrelay_deliveries_target ON hookrelay_deliveries (target, seq);
CREATE INDEX hookrelay_deliveries_due ON hookrelay_deliveries (next_attempt_at, seq) WHERE status = 'pending';
CREATE INDEX hookrelay_deliveries_leased ON hookrelay_deliveries (lease_until, seq) WHERE status = 'in_flight';
CREATE INDEX hookrelay_deliveries_ordered ON hookrelay_deliveries (route, target, ordered_key, seq)
    WHERE ordered_key IS NOT NULL AND status IN ('pending', 'in_flight');

CREATE TABLE hookrelay_attempts (
    delivery_seq     bigint NOT NULL REFERENCES hookrelay_deliveries (seq) ON DELETE CASCADE,
    number           integer NOT NULL,
    started_at       bigint NOT NULL,
    duration_ms      bigint NOT NULL,
    request_url      text,                -- NULL: the delivery's req_url
    request_method   text NOT NULL,
    request_headers  text,                -- NULL: the delivery's req_headers
    request_body     bytea,               -- NULL: the delivery's body
    status           integer,
    response_headers text NOT NULL,
    response_body    bytea NOT NULL,
    error            text,
    error_repeats    boolean NOT NULL DEFAULT false,  -- true: the same error as the attempt before
    counted          boolean NOT NULL,
    PRIMARY KEY (delivery_seq, number)
);

CREATE TABLE hookrelay_routes (
    name       text PRIMARY KEY,
    definition text NOT NULL,             -- JSON
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL
);

CREATE TABLE hookrelay_rate_limits (
    key                    text PRIMARY KEY,
    theoretical_arrival_us bigint NOT NULL DEFAULT 0,         -- GCRA state, database clock (µs)
    window_sent_us         bigint[] NOT NULL DEFAULT '{}',    -- the last sends, for sliding windows
    paused_until_us        bigint NOT NULL DEFAULT 0
);
";

/// Brings the schema up to the last of `migrations`, each step in its own transaction,
/// while holding the migration lock.
pub(super) async fn migrate(client: &mut Client, migrations: &[Migration]) -> Result<(), StoreError> {
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await?;
    let result = apply(client, migrations).await;
    let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await;
    result?;
    unlocked?;
    Ok(())
}

/// The schema version the database is at, and the oldest version that can read it (0, 0
/// for a store not created yet).
async fn newest_version(client: &Client) -> Result<(i64, i64), StoreError> {
    let newest = client.query_opt("SELECT version, readable_from FROM hookrelay_schema ORDER BY version DESC LIMIT 1", &[]).await?;
    Ok(match newest {
        Some(row) => (i64::from(row.try_get::<_, i32>(0)?), i64::from(row.try_get::<_, i32>(1)?)),
        None => (0, 0),
    })
}

/// Checks, without changing anything, that the database holds a store whose schema this
/// build reads (for offline commands, which must not create or migrate one).
pub(super) async fn readable(client: &Client, migrations: &[Migration]) -> Result<(), StoreError> {
    let exists: bool = client.query_one("SELECT to_regclass('hookrelay_schema') IS NOT NULL", &[]).await?.try_get(0)?;
    if !exists {
        return Err(StoreError::InvalidInput("the database holds no hookrelay store".to_string()));
    }
    let known = migrations.len() as i64;
    let (found, readable_from) = newest_version(client).await?;
    if found > known && readable_from > known {
        return Err(StoreError::SchemaTooNew { found, known });
    }
    if found < known {
        return Err(StoreError::InvalidInput(format!(
            "the store's schema is version {found}, older than this hookrelay's ({known}); start this release's relay on it once to migrate it"
        )));
    }
    Ok(())
}

async fn apply(client: &mut Client, migrations: &[Migration]) -> Result<(), StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS hookrelay_schema (
                 version       integer PRIMARY KEY,
                 readable_from integer NOT NULL,
                 applied_at    timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await?;
    let known = migrations.len() as i64;
    loop {
        let (found, readable_from) = newest_version(client).await?;
        if found > known {
            if readable_from > known {
                return Err(StoreError::SchemaTooNew { found, known });
            }
            tracing::info!(found, known, "the store's schema is newer than this build and still readable by it");
            return Ok(());
        }
        let Some(step) = usize::try_from(found).ok().and_then(|index| migrations.get(index)) else {
            if found < 0 {
                return Err(StoreError::Corrupt(format!("negative schema version {found}")));
            }
            return Ok(());
        };
        let tx = client.transaction().await?;
        tx.batch_execute(step.sql).await?;
        let version = i32::try_from(found + 1).map_err(|_| StoreError::Corrupt(format!("schema version {found} out of range")))?;
        tx.execute("INSERT INTO hookrelay_schema (version, readable_from) VALUES ($1, $2)", &[&version, &step.readable_from]).await?;
        tx.commit().await?;
        tracing::info!(version, "store schema migrated");
    }
}

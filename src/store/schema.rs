//! The SQLite schema as an ordered list of migrations, tracked by `PRAGMA user_version`.
//! Owns the table layout and nothing else. A shipped migration is never edited: a change
//! is a new entry at the end of [`MIGRATIONS`].

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use super::StoreError;

/// `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5, V6, V7, V8];

// `seq` columns are AUTOINCREMENT so a pruned row's number is never handed out again: page
// cursors are `seq` values and must keep meaning the same place.
const V1: &str = "
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    received_at INTEGER NOT NULL,
    route       TEXT NOT NULL,
    event       TEXT,
    delivery_id TEXT,
    method      TEXT NOT NULL,
    path        TEXT NOT NULL,
    headers     TEXT NOT NULL,   -- JSON [[name, value], ...]
    body        BLOB NOT NULL
);
CREATE INDEX events_route ON events (route, seq);
CREATE INDEX events_received ON events (received_at);
CREATE INDEX events_dedupe ON events (route, delivery_id, received_at) WHERE delivery_id IS NOT NULL;

CREATE TABLE deliveries (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT NOT NULL UNIQUE,
    event_id        TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    route           TEXT NOT NULL,
    target          TEXT NOT NULL,
    req_method      TEXT NOT NULL,
    req_url         TEXT NOT NULL,
    req_headers     TEXT NOT NULL,
    req_body        BLOB NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'in_flight', 'succeeded', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,          -- NULL once finished
    lease_until     INTEGER,          -- set while in_flight
    ordered_key     TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    last_status     INTEGER,
    last_error      TEXT
);
CREATE INDEX deliveries_event ON deliveries (event_id);
CREATE INDEX deliveries_status ON deliveries (status, seq);
CREATE INDEX deliveries_route ON deliveries (route, seq);
CREATE INDEX deliveries_target ON deliveries (target, seq);
CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at, seq);
CREATE INDEX deliveries_ordered ON deliveries (route, target, ordered_key, seq)
    WHERE ordered_key IS NOT NULL AND status IN ('pending', 'in_flight');

CREATE TABLE attempts (
    delivery_seq     INTEGER NOT NULL REFERENCES deliveries (seq) ON DELETE CASCADE,
    number           INTEGER NOT NULL,
    started_at       INTEGER NOT NULL,
    duration_ms      INTEGER NOT NULL,
    request_url      TEXT NOT NULL,
    request_method   TEXT NOT NULL,
    request_headers  TEXT NOT NULL,
    request_body     BLOB NOT NULL,
    status           INTEGER,
    response_headers TEXT NOT NULL,
    response_body    BLOB NOT NULL,
    error            TEXT,
    counted          INTEGER NOT NULL,
    PRIMARY KEY (delivery_seq, number)
) WITHOUT ROWID;

CREATE TABLE api_routes (
    name       TEXT PRIMARY KEY,
    definition TEXT NOT NULL,   -- JSON
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
";

// Whether a delivery is held to the private-address guard is decided when it is accepted
// (its route came from the admin API) and travels with it; NULL for rows from before.
const V2: &str = "ALTER TABLE deliveries ADD COLUMN guarded INTEGER;";

// Compact delivery log. An attempt keeps its request's URL, headers and body only where
// they differ from the delivery's stored request (NULL: the same), and its error only when
// it differs from the attempt before, so a receiver that is down for a day costs a few
// dozen bytes per retry, not a copy of the request each time.
// A delivery that forwards its event's body unchanged points at it instead of holding a
// second copy. Finished deliveries (every sync one) leave the due index, which only claims
// read.
const V3: &str = "
ALTER TABLE deliveries ADD COLUMN req_body_from_event INTEGER;  -- 1: req_body is the event's body
CREATE TABLE attempts_v3 (
    delivery_seq     INTEGER NOT NULL REFERENCES deliveries (seq) ON DELETE CASCADE,
    number           INTEGER NOT NULL,
    started_at       INTEGER NOT NULL,
    duration_ms      INTEGER NOT NULL,
    request_url      TEXT,            -- NULL: the delivery's req_url
    request_method   TEXT NOT NULL,
    request_headers  TEXT,            -- NULL: the delivery's req_headers
    request_body     BLOB,            -- NULL: the delivery's req_body
    status           INTEGER,
    response_headers TEXT NOT NULL,
    response_body    BLOB NOT NULL,
    error            TEXT,
    error_repeats    INTEGER,         -- 1: the same error as the attempt before (error NULL)
    counted          INTEGER NOT NULL,
    PRIMARY KEY (delivery_seq, number)
) WITHOUT ROWID;
INSERT INTO attempts_v3 (delivery_seq, number, started_at, duration_ms, request_url, request_method, request_headers,
                         request_body, status, response_headers, response_body, error, counted) SELECT delivery_seq, number, started_at, duration_ms, request_url, request_method, request_headers,
                               request_body, status, response_headers, response_body, error, counted FROM attempts;
DROP TABLE attempts;
ALTER TABLE attempts_v3 RENAME TO attempts;
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at, seq) WHERE next_attempt_at IS NOT NULL;
";

// Each claim carries a token that finishing, releasing or renewing it must name, so that a
// worker whose lease was taken over cannot touch the new claim.
const V4: &str = "ALTER TABLE deliveries ADD COLUMN claim_token INTEGER;";

// A delivery may be cancelled by hand. SQLite cannot change a CHECK constraint, so the
// table is rebuilt (with foreign keys off: see `migrate`), keeping every row and `seq`.
const V5: &str = "
CREATE TABLE deliveries_v5 (
    seq                 INTEGER PRIMARY KEY AUTOINCREMENT,
    id                  TEXT NOT NULL UNIQUE,
    event_id            TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    route               TEXT NOT NULL,
    target              TEXT NOT NULL,
    req_method          TEXT NOT NULL,
    req_url             TEXT NOT NULL,
    req_headers         TEXT NOT NULL,
    req_body            BLOB NOT NULL,
    status              TEXT NOT NULL CHECK (status IN ('pending', 'in_flight', 'succeeded', 'failed', 'cancelled')),
    attempts            INTEGER NOT NULL DEFAULT 0,
    next_attempt_at     INTEGER,
    lease_until         INTEGER,
    ordered_key         TEXT,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    last_status         INTEGER,
    last_error          TEXT,
    guarded             INTEGER,
    req_body_from_event INTEGER,
    claim_token         INTEGER
);
INSERT INTO deliveries_v5 (seq, id, event_id, route, target, req_method, req_url, req_headers, req_body, status, attempts,
                           next_attempt_at, lease_until, ordered_key, created_at, updated_at, last_status, last_error, guarded,
                           req_body_from_event, claim_token)
    SELECT seq, id, event_id, route, target, req_method, req_url, req_headers, req_body, status, attempts, next_attempt_at,
           lease_until, ordered_key, created_at, updated_at, last_status, last_error, guarded, req_body_from_event, claim_token
    FROM deliveries;
-- The numbering continues where it was (page cursors are seq values).
DELETE FROM sqlite_sequence WHERE name = 'deliveries_v5';
INSERT INTO sqlite_sequence (name, seq) SELECT 'deliveries_v5', seq FROM sqlite_sequence WHERE name = 'deliveries';
DROP TABLE deliveries;
ALTER TABLE deliveries_v5 RENAME TO deliveries;
CREATE INDEX deliveries_event ON deliveries (event_id);
CREATE INDEX deliveries_status ON deliveries (status, seq);
CREATE INDEX deliveries_route ON deliveries (route, seq);
CREATE INDEX deliveries_target ON deliveries (target, seq);
CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at, seq) WHERE next_attempt_at IS NOT NULL;
CREATE INDEX deliveries_ordered ON deliveries (route, target, ordered_key, seq)
    WHERE ordered_key IS NOT NULL AND status IN ('pending', 'in_flight');
";

// An event replayed by hand names the event it replays.
const V6: &str = "ALTER TABLE events ADD COLUMN replay_of TEXT;";

// Each target's circuit breaker and pause (a target without a row is closed).
const V7: &str = "
CREATE TABLE target_states (
    route          TEXT NOT NULL,
    target         TEXT NOT NULL,
    failures       INTEGER NOT NULL DEFAULT 0,
    opened         INTEGER NOT NULL DEFAULT 0,
    blocked_until  INTEGER,
    probe_until    INTEGER,
    paused_at      INTEGER,
    paused_reason  TEXT,
    PRIMARY KEY (route, target)
);
CREATE INDEX deliveries_pending_target ON deliveries (route, target, next_attempt_at) WHERE status = 'pending';
";

// An attempt sent with its delivery's headers and a few more (the credential or signature a
// target adds at send time) keeps only those: `request_headers` NULL, the added ones here.
const V8: &str = "ALTER TABLE attempts ADD COLUMN request_headers_added TEXT;";

/// Brings the schema up to the last of `migrations`, one transaction per step. Each step
/// re-reads the version under the write lock, so two processes opening one file at once
/// cannot both apply a step.
pub(super) fn migrate(conn: &mut Connection, migrations: &[&str]) -> Result<(), StoreError> {
    // A step that rebuilds a parent table (V5) drops it: with foreign keys on, that would
    // cascade into its children. They are off while migrating (the pragma cannot change
    // inside a transaction) and checked before they come back on.
    conn.pragma_update(None, "foreign_keys", false)?;
    let migrated = apply(conn, migrations);
    conn.pragma_update(None, "foreign_keys", true)?;
    migrated
}

fn apply(conn: &mut Connection, migrations: &[&str]) -> Result<(), StoreError> {
    let known = migrations.len() as i64;
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
        if found > known {
            return Err(StoreError::SchemaTooNew { found, known });
        }
        let Some(step) = usize::try_from(found).ok().and_then(|index| migrations.get(index)) else {
            if found < 0 {
                return Err(StoreError::Corrupt(format!("negative schema version {found}")));
            }
            return Ok(());
        };
        tx.execute_batch(step)?;
        // Before the step counts as done: it kept every row's parent.
        for table in ["deliveries", "attempts"] {
            let orphaned: Option<String> = tx.query_row(&format!("PRAGMA foreign_key_check({table})"), [], |row| row.get(0)).optional()?;
            if orphaned.is_some() {
                return Err(StoreError::Corrupt(format!("schema step {} would leave rows in {table} without their parent", found + 1)));
            }
        }
        tx.pragma_update(None, "user_version", found + 1)?;
        tx.commit()?;
        tracing::info!(version = found + 1, "store schema migrated");
    }
}

//! [`SqliteStore`]: the embedded [`Store`]. Owns the database file (its permissions and
//! pragmas), the domain's SQL, and the split between the group-commit writer (every write)
//! and a small pool of read-only connections (every read), both kept off the async threads.
//!
//! Durability: WAL with `synchronous = FULL`, so every commit fsyncs the log and an event
//! acknowledged by `accept` survives power loss, not only a crash of the process. Group
//! commit keeps that affordable.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};

use super::record::{answer_bound, cut, headers_beside, headers_json, with_repeated_errors, Finished};
use super::rows::delivery_body;
use super::rows::*;
use super::schema::{migrate, MIGRATIONS};
use super::writer::Writer;
use super::{cannot_cancel, owned_by, AcceptItem, CancelFilter, Held, Reschedule, TargetRecord, TargetUpdate};
use super::{new_claim_token, not_claimed};
use super::{
    AcceptOutcome, AttemptOutcome, AttemptRecord, AttemptView, ClaimedDelivery, DeliveryFilter, DeliveryStatus, DeliveryView, EventFilter,
    EventView, FinishedDelivery, NewDelivery, NewEvent, Page, Store, StoreError, StoredRoute, MAX_STORED_BODY,
};

/// How long a statement waits for a lock held by another connection (another process on
/// the same file, or a checkpoint) before failing with SQLITE_BUSY.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Read connections kept open between calls; more are opened when needed.
const IDLE_READERS: usize = 4;
/// Events deleted per write transaction by `prune`, so a large prune never holds up accepts.
const PRUNE_CHUNK: u64 = 1000;
/// The write connection's page cache. Its writes append at the right edge of each table
/// and index, so a few hundred pages hold all it touches; SQLite's default (2 MiB) only
/// kept pages it will not read again, and 200 KiB made it read pages back.
const WRITER_CACHE_KIB: i64 = 512;

pub struct SqliteStore {
    writer: Writer,
    readers: Arc<Readers>,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    /// Blocking: call it at startup or from `spawn_blocking`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        Self::open_with(path, MIGRATIONS)
    }

    pub(super) fn open_with(path: &Path, migrations: &[&str]) -> Result<SqliteStore, StoreError> {
        prepare_file(path)?;
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String = conn.pragma_update_and_check(None, "journal_mode", "wal", |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Corrupt(format!("{}: cannot use WAL mode (got {mode})", path.display())));
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        // A batch that failed runs again with each write in a savepoint; its statement
        // journal belongs in memory, not in a temporary file per transaction.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
        migrate(&mut conn, migrations)?;
        let writer = Writer::start(conn).map_err(|error| io_error(path, error))?;
        let readers = Arc::new(Readers::new(path, false));
        Ok(SqliteStore { writer, readers, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write transactions committed since open; with group commit, far fewer than writes.
    pub fn commit_count(&self) -> u64 {
        self.writer.commits()
    }

    /// Reads a pragma on the write connection, where the durability settings live.
    #[cfg(test)]
    pub(super) async fn writer_pragma(&self, name: &'static str) -> Result<String, StoreError> {
        self.writer
            .write(move |conn| Ok(conn.pragma_query_value(None, name, |row| row.get::<_, rusqlite::types::Value>(0))?))
            .await
            .map(|value| format!("{value:?}"))
    }

    async fn read<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let readers = self.readers.clone();
        match tokio::task::spawn_blocking(move || readers.read(op)).await {
            Ok(result) => result,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => Err(StoreError::Closed),
        }
    }
}

/// Creates the folder, and the file readable by its owner only: it holds webhook payloads
/// and rendered requests (URLs may carry tokens). SQLite gives the -wal and -shm files the database file's mode.
fn prepare_file(path: &Path) -> Result<(), StoreError> {
    if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|error| io_error(parent, error))?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        // append: never truncate an existing database.
        fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path).map_err(|error| io_error(path, error))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(|error| io_error(path, error))?;
    }
    Ok(())
}

fn io_error(path: &Path, error: std::io::Error) -> StoreError {
    StoreError::Io { path: path.display().to_string(), error: Arc::new(error) }
}

fn event_with_deliveries(conn: &Connection, id: &str) -> Result<Option<EventView>, StoreError> {
    let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = ?1");
    let Some(mut event) = conn.query_row(&sql, [id], event_view).optional()? else { return Ok(None) };
    let sql = format!("SELECT {DELIVERY_COLUMNS} FROM deliveries d WHERE event_id = ?1 ORDER BY seq");
    let mut stmt = conn.prepare_cached(&sql)?;
    event.deliveries = stmt.query_map([id], delivery_view)?.map(|row| row.map(|(_, view)| view)).collect::<Result<_, _>>()?;
    Ok(Some(event))
}

fn events_page(conn: &Connection, filter: &EventFilter) -> Result<Page<EventView>, StoreError> {
    let mut query = PageQuery::new(filter.cursor.as_deref())?;
    query.events(filter);
    query.run(conn, &format!("SELECT {EVENT_COLUMNS} FROM events"), filter.limit, |row| Ok((row.get("seq")?, event_view(row)?)))
}

/// A SQLite store opened read-only, for offline commands: the relay that owns the file may
/// be running, and nothing here writes to it (nor migrates it).
pub struct SqliteReader {
    readers: Arc<Readers>,
}

impl SqliteReader {
    /// Opens the store at `path`, which must exist with this release's schema.
    pub fn open(path: &Path) -> Result<SqliteReader, StoreError> {
        if !path.exists() {
            return Err(io_error(path, std::io::Error::from(std::io::ErrorKind::NotFound)));
        }
        let version =
            |readers: &Readers| readers.read(|conn| Ok(conn.pragma_query_value(None, "user_version", |row| row.get::<_, i64>(0))?));
        let mut readers = Readers::new(path, false);
        let found = match version(&readers) {
            Ok(found) => found,
            // A read-only folder with no -shm file: WAL readers cannot start there. With no
            // -wal file either, no relay is writing it, and it can be read as a still file.
            Err(_) if !wal_file(path).exists() => {
                readers = Readers::new(path, true);
                version(&readers)?
            }
            Err(error) => return Err(error),
        };
        let readers = Arc::new(readers);
        let known = MIGRATIONS.len() as i64;
        if found > known {
            return Err(StoreError::SchemaTooNew { found, known });
        }
        if found < known {
            return Err(StoreError::InvalidInput(format!(
                "{}: its schema is version {found}, older than this hookrelay's ({known}); start this release's relay on it once to migrate it",
                path.display()
            )));
        }
        Ok(SqliteReader { readers })
    }

    pub async fn get_event(&self, id: &str) -> Result<Option<EventView>, StoreError> {
        let (readers, id) = (self.readers.clone(), id.to_owned());
        tokio::task::spawn_blocking(move || readers.read(|conn| event_with_deliveries(conn, &id))).await.map_err(|_| StoreError::Closed)?
    }

    pub async fn list_events(&self, filter: EventFilter) -> Result<Page<EventView>, StoreError> {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || readers.read(|conn| events_page(conn, &filter))).await.map_err(|_| StoreError::Closed)?
    }
}

fn wal_file(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

struct Readers {
    path: PathBuf,
    /// Opened as a file nobody changes (`immutable=1`): no -shm or -wal is needed or made.
    immutable: bool,
    idle: Mutex<Vec<Connection>>,
    closed: AtomicBool,
}

impl Readers {
    fn new(path: &Path, immutable: bool) -> Readers {
        Readers { path: path.to_path_buf(), immutable, idle: Mutex::new(Vec::new()), closed: AtomicBool::new(false) }
    }

    fn open(&self) -> Result<Connection, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = if self.immutable {
            let absolute = std::path::absolute(&self.path).map_err(|error| io_error(&self.path, error))?;
            let mut uri = url::Url::from_file_path(&absolute)
                .map_err(|()| StoreError::InvalidInput(format!("{}: not a file path", self.path.display())))?;
            uri.set_query(Some("immutable=1"));
            Connection::open_with_flags(uri.as_str(), flags | OpenFlags::SQLITE_OPEN_URI)?
        } else {
            Connection::open_with_flags(&self.path, flags)?
        };
        conn.busy_timeout(BUSY_TIMEOUT)?;
        Ok(conn)
    }

    /// Runs `op` in one read transaction, so a view assembled from several queries is consistent.
    fn read<T>(&self, op: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => self.open()?,
        };
        let result = conn.unchecked_transaction().map_err(StoreError::from).and_then(|tx| op(&tx));
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < IDLE_READERS && !self.closed.load(Ordering::Acquire) {
            idle.push(conn);
        }
        result
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn accept_unless_duplicate(
        &self,
        event: NewEvent,
        deliveries: Vec<NewDelivery>,
        dedupe_since: Option<i64>,
    ) -> Result<AcceptOutcome, StoreError> {
        self.writer.write(move |conn| accept(conn, &event, &deliveries, dedupe_since)).await
    }

    async fn accept_all(&self, items: Vec<AcceptItem>) -> Result<Vec<AcceptOutcome>, StoreError> {
        // One write: if any insert fails, all of its inserts are undone.
        self.writer
            .write(move |conn| items.iter().map(|item| accept(conn, &item.event, &item.deliveries, item.dedupe_since)).collect())
            .await
    }

    async fn claim_due(&self, now: i64, limit: usize, lease_ms: i64) -> Result<Vec<ClaimedDelivery>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Unsynced: a claim lost with the machine leaves the delivery due again.
        self.writer.write_unsynced(move |conn| claim_due(conn, now, limit, lease_ms)).await
    }

    async fn finish_attempt(
        &self,
        delivery_id: &str,
        claim: i64,
        attempt: AttemptRecord,
        outcome: AttemptOutcome,
        now: i64,
    ) -> Result<(), StoreError> {
        let id = delivery_id.to_owned();
        // Unsynced: an attempt's record lost with the machine means the delivery is sent
        // again (at least once), never that it is lost.
        self.writer.write_unsynced(move |conn| finish_attempt(conn, &id, claim, &attempt, &outcome, now)).await
    }

    async fn release(&self, delivery_id: &str, claim: i64, next_attempt_at: i64, _now: i64) -> Result<(), StoreError> {
        let id = delivery_id.to_owned();
        // Unsynced, as the claim it hands back.
        self.writer
            .write_unsynced(move |conn| {
                let seq = claimed_seq(conn, &id, claim)?;
                hand_back(conn, seq, next_attempt_at)
            })
            .await
    }

    async fn release_held(&self, delivery_id: &str, claim: i64, held: Held, now: i64) -> Result<Option<TargetRecord>, StoreError> {
        let id = delivery_id.to_owned();
        // The writer runs one write at a time: the record read here is the one a resume's
        // move of held deliveries would see.
        self.writer
            .write_unsynced(move |conn| {
                let seq = claimed_seq(conn, &id, claim)?;
                let stored = conn
                    .prepare_cached(&format!("SELECT {TARGET_COLUMNS} FROM target_states WHERE route = ?1 AND target = ?2"))?
                    .query_row([&held.decided_on.route, &held.decided_on.target], target_record)
                    .optional()?;
                hand_back(conn, seq, held.due(stored.as_ref(), now))?;
                Ok(stored)
            })
            .await
    }

    async fn renew_lease(&self, delivery_id: &str, claim: i64, lease_ms: i64, now: i64) -> Result<(), StoreError> {
        let id = delivery_id.to_owned();
        // Unsynced: a lease lost with the machine means nothing, every claim is handed back at startup.
        self.writer
            .write_unsynced(move |conn| {
                let seq = claimed_seq(conn, &id, claim)?;
                conn.prepare_cached("UPDATE deliveries SET lease_until = ?1 WHERE seq = ?2")?
                    .execute(params![now.saturating_add(lease_ms), seq])?;
                Ok(())
            })
            .await
    }

    #[cfg(test)]
    async fn current_claim(&self, delivery_id: &str) -> Result<Option<i64>, StoreError> {
        let id = delivery_id.to_owned();
        self.read(move |conn| {
            Ok(conn.query_row("SELECT claim_token FROM deliveries WHERE id = ?1", [&id], |row| row.get(0)).optional()?.flatten())
        })
        .await
    }

    async fn record_finished(&self, finished: Arc<[FinishedDelivery]>, now: i64) -> Result<(), StoreError> {
        // Unsynced: this records what already happened, after its sender was answered (a
        // sync route's answer, a 202 for an event already stored); an event only becomes a
        // promise through `accept`, which is synced.
        self.writer.write_unsynced(move |conn| finished.iter().try_for_each(|finished| insert_finished(conn, finished, now))).await
    }

    async fn recover_claims(&self, now: i64) -> Result<u64, StoreError> {
        self.writer
            .write(move |conn| {
                let changed = conn.execute(
                    "UPDATE deliveries SET status = 'pending', next_attempt_at = ?1, lease_until = NULL, claim_token = NULL WHERE status = 'in_flight'",
                    params![now],
                )?;
                Ok(changed as u64)
            })
            .await
    }

    async fn retry_now(&self, delivery_id: &str, now: i64) -> Result<DeliveryView, StoreError> {
        let id = delivery_id.to_owned();
        self.writer
            .write(move |conn| {
                let (seq, status) = delivery_state(conn, &id)?;
                if matches!(status, DeliveryStatus::Succeeded | DeliveryStatus::InFlight) {
                    return Err(StoreError::Conflict(format!("delivery {id} is {status}")));
                }
                conn.execute(
                    "UPDATE deliveries SET status = 'pending', next_attempt_at = ?1, lease_until = NULL, claim_token = NULL, updated_at = ?1 WHERE seq = ?2",
                    params![now, seq],
                )?;
                delivery_by_id(conn, &id)?.map(|(_, view)| view).ok_or(StoreError::NotFound)
            })
            .await
    }

    async fn cancel(&self, delivery_id: &str, now: i64) -> Result<DeliveryView, StoreError> {
        let id = delivery_id.to_owned();
        self.writer
            .write(move |conn| {
                let (seq, status) = delivery_state(conn, &id)?;
                if status != DeliveryStatus::Pending {
                    return Err(cannot_cancel(&id, status));
                }
                conn.prepare_cached(
                    "UPDATE deliveries SET status = 'cancelled', next_attempt_at = NULL, lease_until = NULL, claim_token = NULL,
                                           updated_at = ?1 WHERE seq = ?2",
                )?
                .execute(params![now, seq])?;
                delivery_by_id(conn, &id)?.map(|(_, view)| view).ok_or(StoreError::NotFound)
            })
            .await
    }

    async fn cancel_pending(&self, filter: CancelFilter, now: i64) -> Result<u64, StoreError> {
        self.writer
            .write(move |conn| {
                let cancelled = conn
                    .prepare_cached(
                        "UPDATE deliveries SET status = 'cancelled', next_attempt_at = NULL, lease_until = NULL, claim_token = NULL,
                                               updated_at = ?1
                         WHERE status = 'pending' AND next_attempt_at IS NOT NULL
                           AND (?2 IS NULL OR route = ?2) AND (?3 IS NULL OR target = ?3) AND (?4 IS NULL OR created_at < ?4)",
                    )?
                    .execute(params![now, filter.route, filter.target, filter.before])?;
                Ok(cancelled as u64)
            })
            .await
    }

    async fn get_event(&self, id: &str) -> Result<Option<EventView>, StoreError> {
        let id = id.to_owned();
        self.read(move |conn| event_with_deliveries(conn, &id)).await
    }

    async fn list_events(&self, filter: EventFilter) -> Result<Page<EventView>, StoreError> {
        self.read(move |conn| events_page(conn, &filter)).await
    }

    async fn get_delivery(&self, id: &str) -> Result<Option<(DeliveryView, Vec<AttemptView>)>, StoreError> {
        let id = id.to_owned();
        self.read(move |conn| {
            let Some((seq, view)) = delivery_by_id(conn, &id)? else { return Ok(None) };
            let mut stmt = conn.prepare_cached(concat!(
                "SELECT a.number, a.started_at, a.duration_ms, COALESCE(a.request_url, d.req_url) AS request_url, a.request_method,
                            COALESCE(a.request_headers, d.req_headers) AS request_headers, a.request_headers_added,
                            COALESCE(a.request_body, ",
                delivery_body!(),
                ") AS request_body, a.status, a.response_headers, a.response_body, a.error, a.error_repeats, a.counted
                     FROM attempts a JOIN deliveries d ON d.seq = a.delivery_seq WHERE a.delivery_seq = ?1 ORDER BY a.number"
            ))?;
            let rows: Vec<(AttemptView, bool)> = stmt.query_map([seq], attempt_view)?.collect::<Result<_, _>>()?;
            let attempts = with_repeated_errors(rows);
            Ok(Some((view, attempts)))
        })
        .await
    }

    async fn list_deliveries(&self, filter: DeliveryFilter) -> Result<Page<DeliveryView>, StoreError> {
        self.read(move |conn| {
            let mut query = PageQuery::new(filter.cursor.as_deref())?;
            query.filter("status", filter.status.map(|status| status.as_str().to_owned()));
            query.filter("route", filter.route);
            query.filter("target", filter.target);
            query.run(conn, &format!("SELECT {DELIVERY_COLUMNS} FROM deliveries d"), filter.limit, delivery_view)
        })
        .await
    }

    async fn queue_depth(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            let depth: i64 =
                conn.query_row("SELECT COUNT(*) FROM deliveries WHERE status IN ('pending', 'in_flight')", [], |row| row.get(0))?;
            Ok(depth.unsigned_abs())
        })
        .await
    }

    async fn prune(&self, older_than: i64) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let deleted = self.writer.write(move |conn| prune_chunk(conn, older_than)).await?;
            total += deleted;
            if deleted < PRUNE_CHUNK {
                return Ok(total);
            }
        }
    }

    async fn prune_unmatched(&self, older_than: i64, keep_newest: u64) -> Result<u64, StoreError> {
        let keep_newest = i64::try_from(keep_newest).unwrap_or(i64::MAX);
        self.writer
            .write(move |conn| {
                let deleted = conn
                    .prepare_cached(
                        "DELETE FROM events WHERE route = '' AND (received_at < ?1 OR seq <= COALESCE(
                           (SELECT seq FROM events WHERE route = '' ORDER BY seq DESC LIMIT 1 OFFSET ?2), 0))",
                    )?
                    .execute(params![older_than, keep_newest])?;
                Ok(deleted as u64)
            })
            .await
    }

    async fn list_routes(&self) -> Result<Vec<StoredRoute>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!("SELECT {ROUTE_COLUMNS} FROM api_routes ORDER BY name"))?;
            let routes = stmt.query_map([], stored_route)?.collect::<Result<_, _>>()?;
            Ok(routes)
        })
        .await
    }

    async fn get_route(&self, name: &str) -> Result<Option<StoredRoute>, StoreError> {
        let name = name.to_owned();
        self.read(move |conn| route_by_name(conn, &name)).await
    }

    async fn insert_route(&self, name: &str, definition: serde_json::Value, now: i64) -> Result<StoredRoute, StoreError> {
        let name = name.to_owned();
        self.writer
            .write(move |conn| {
                if route_by_name(conn, &name)?.is_some() {
                    return Err(StoreError::Conflict(format!("route {name} already exists")));
                }
                conn.execute(
                    "INSERT INTO api_routes (name, definition, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)",
                    params![name, definition.to_string(), now],
                )?;
                Ok(StoredRoute { name: name.clone(), definition: definition.clone(), created_at: now, updated_at: now })
            })
            .await
    }

    async fn update_route(&self, name: &str, definition: serde_json::Value, now: i64) -> Result<StoredRoute, StoreError> {
        let name = name.to_owned();
        self.writer
            .write(move |conn| {
                conn.execute(
                    "UPDATE api_routes SET definition = ?2, updated_at = ?3 WHERE name = ?1",
                    params![name, definition.to_string(), now],
                )?;
                route_by_name(conn, &name)?.ok_or(StoreError::NotFound)
            })
            .await
    }

    async fn delete_route(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.writer.write(move |conn| Ok(conn.execute("DELETE FROM api_routes WHERE name = ?1", [&name])? > 0)).await
    }

    async fn target_records(&self) -> Result<Vec<TargetRecord>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!("SELECT {TARGET_COLUMNS} FROM target_states ORDER BY route, target"))?;
            let records = stmt.query_map([], target_record)?.collect::<Result<_, _>>()?;
            Ok(records)
        })
        .await
    }

    // Due times here are the relay's own: nothing to map `now` onto.
    async fn update_target(&self, route: &str, target: &str, update: TargetUpdate, _now: i64) -> Result<TargetRecord, StoreError> {
        let (route, target) = (route.to_owned(), target.to_owned());
        // An operator's pause or resume waits for the disk; a breaker's count may be lost with the machine.
        let synced = update.durable;
        let op = move |conn: &Connection| {
            let sql = format!("SELECT {TARGET_COLUMNS} FROM target_states WHERE route = ?1 AND target = ?2");
            let record = conn.query_row(&sql, [&route, &target], target_record).optional()?;
            let (record, reschedule) = (update.apply)(record.unwrap_or_else(|| TargetRecord {
                route: route.clone(),
                target: target.clone(),
                ..TargetRecord::default()
            }));
            conn.prepare_cached(
                "INSERT INTO target_states (route, target, failures, opened, blocked_until, probe_until, paused_at, paused_reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (route, target) DO UPDATE SET failures = excluded.failures, opened = excluded.opened,
                     blocked_until = excluded.blocked_until, probe_until = excluded.probe_until,
                     paused_at = excluded.paused_at, paused_reason = excluded.paused_reason",
            )?
            .execute(params![
                route,
                target,
                record.failures,
                record.opened,
                record.blocked_until,
                record.probe_until,
                record.paused_at,
                record.paused_reason
            ])?;
            if let Reschedule::Move { up_to, to } = reschedule {
                conn.prepare_cached(
                    "UPDATE deliveries SET next_attempt_at = ?4
                     WHERE status = 'pending' AND route = ?1 AND target = ?2 AND next_attempt_at <= ?3 AND next_attempt_at <> ?4",
                )?
                .execute(params![route, target, up_to, to])?;
            }
            Ok(record)
        };
        self.writer.write_once(synced, op).await
    }

    async fn take_probe(&self, route: &str, target: &str, until: i64, now: i64) -> Result<bool, StoreError> {
        let (route, target) = (route.to_owned(), target.to_owned());
        self.writer
            .write_unsynced(move |conn| {
                let taken = conn
                    .prepare_cached(
                        "UPDATE target_states SET probe_until = ?3
                         WHERE route = ?1 AND target = ?2 AND paused_at IS NULL AND blocked_until <= ?4
                           AND (probe_until IS NULL OR probe_until <= ?4)",
                    )?
                    .execute(params![route, target, until, now])?;
                Ok(taken == 1)
            })
            .await
    }

    async fn queued_by_target(&self) -> Result<Vec<(String, String, u64)>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT route, target, COUNT(*) FROM deliveries WHERE status IN ('pending', 'in_flight') GROUP BY route, target",
            )?;
            let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get::<_, i64>(2)?.unsigned_abs())))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.readers.close();
        self.writer.close().await;
        Ok(())
    }
}

// ---- writes (run on the writer thread, inside a savepoint of the batch transaction) ----

fn accept(conn: &Connection, event: &NewEvent, deliveries: &[NewDelivery], dedupe_since: Option<i64>) -> Result<AcceptOutcome, StoreError> {
    if let (Some(since), Some(delivery_id)) = (dedupe_since, &event.delivery_id) {
        if let Some(original_event_id) = first_with_delivery_id(conn, &event.route, delivery_id, since)? {
            return Ok(AcceptOutcome::Duplicate { original_event_id });
        }
    }
    owned_by(event, deliveries)?;
    insert_event(conn, event)?;
    for delivery in deliveries {
        insert_delivery(conn, delivery, Some(&event.body), event.received_at, None)?;
    }
    Ok(AcceptOutcome::Accepted)
}

fn insert_finished(conn: &Connection, finished: &FinishedDelivery, now: i64) -> Result<(), StoreError> {
    let FinishedDelivery { event, delivery, attempt, outcome } = finished;
    if let Some(event) = event {
        owned_by(event, [delivery])?;
        insert_event(conn, event)?;
    }
    let finished = Finished::of(attempt, outcome);
    let event_body = event.as_ref().map(|event| &event.body[..]);
    let headers = insert_delivery(conn, delivery, event_body, now, Some((attempt, &finished)))?;
    let request = &delivery.request;
    let stored = StoredForm { url: &request.url, headers: &headers, body: &request.body };
    insert_attempt(conn, conn.last_insert_rowid(), 1, attempt, &stored, outcome)
}

fn insert_event(conn: &Connection, event: &NewEvent) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO events (id, received_at, route, event, delivery_id, method, path, headers, body, replay_of)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        event.id,
        event.received_at,
        event.route,
        event.event,
        event.delivery_id,
        event.method,
        event.path,
        headers_json(&event.headers)?,
        &event.body[..],
        event.replay_of,
    ])
    .map_err(|error| unique_conflict(error, || format!("event {} already exists", event.id)))?;
    Ok(())
}

/// Inserts a delivery of an event whose body is `event_body` (when known): pending, or
/// already finished by `attempt`. Returns its headers as stored (JSON).
fn insert_delivery(
    conn: &Connection,
    delivery: &NewDelivery,
    event_body: Option<&[u8]>,
    created_at: i64,
    finished: Option<(&AttemptRecord, &Finished)>,
) -> Result<String, StoreError> {
    let request = &delivery.request;
    let body_from_event = !request.body.is_empty() && event_body == Some(&request.body[..]);
    let headers = headers_json(&request.headers)?;
    let claim = delivery.handed_off.filter(|_| finished.is_none());
    let (status, attempts, next_attempt_at, last_status, last_error) = match finished {
        Some((attempt, finished)) => {
            (finished.status, i64::from(attempt.counted), finished.next_attempt_at, attempt.status, finished.last_error.as_deref())
        }
        None if claim.is_some() => (DeliveryStatus::InFlight, 0, Some(delivery.next_attempt_at), None, None),
        None => (DeliveryStatus::Pending, 0, Some(delivery.next_attempt_at), None, None),
    };
    conn.prepare_cached(
        "INSERT INTO deliveries (id, event_id, route, target, req_method, req_url, req_headers, req_body, status,
                                 attempts, next_attempt_at, ordered_key, created_at, updated_at, last_status,
                                 last_error, guarded, req_body_from_event, lease_until, claim_token)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
    )?
    .execute(params![
        delivery.id,
        delivery.event_id,
        delivery.route,
        delivery.target,
        request.method,
        request.url,
        headers,
        if body_from_event { &[][..] } else { &request.body[..] },
        status,
        attempts,
        next_attempt_at,
        delivery.ordered_key,
        created_at,
        last_status,
        last_error,
        delivery.guarded,
        body_from_event.then_some(1),
        claim.map(|claim| claim.lease_until),
        claim.map(|claim| claim.token),
    ])
    .map_err(|error| unique_conflict(error, || format!("delivery {} already exists", delivery.id)))?;
    Ok(headers)
}

// A parameter SQLite's planner may look at (a LIMIT, the key of a backward index walk)
// makes it compile the statement again whenever its value changes, which costs more than
// the query itself; a unary `+` keeps the value out of the plan.

/// The number the next attempt of delivery `?1` gets.
const NEXT_ATTEMPT_NUMBER: &str = "SELECT COALESCE(MAX(number), 0) + 1 FROM attempts WHERE delivery_seq = +?1";

/// Which deliveries may be claimed, given `?1` = now. An ordered delivery must be the oldest
/// unfinished one of its key, with no other one of its key holding a live lease (a failed
/// one retried by hand can be older than one already in flight).
const CLAIMABLE: &str = "
    AND (d.ordered_key IS NULL OR NOT EXISTS (
        SELECT 1 FROM deliveries o
        WHERE o.route = d.route AND o.target = d.target AND o.ordered_key = d.ordered_key
          AND o.status IN ('pending', 'in_flight') AND o.seq <> d.seq
          AND (o.seq < d.seq OR (o.status = 'in_flight' AND o.lease_until >= ?1))))
    ORDER BY d.next_attempt_at, d.seq
    LIMIT +?2";

/// The claim's queries, given `?1` = now and `?2` = how many: deliveries whose lease
/// expired, then deliveries due.
fn claim_queries() -> [String; 2] {
    [
        format!(
            "SELECT {CLAIM_COLUMNS} FROM deliveries d WHERE d.status = 'in_flight' AND d.next_attempt_at IS NOT NULL AND d.lease_until < ?1 {CLAIMABLE}"
        ),
        format!("SELECT {CLAIM_COLUMNS} FROM deliveries d WHERE d.status = 'pending' AND d.next_attempt_at <= ?1 {CLAIMABLE}"),
    ]
}

fn claim_due(conn: &Connection, now: i64, limit: usize, lease_ms: i64) -> Result<Vec<ClaimedDelivery>, StoreError> {
    // Expired leases first: their worker died and they have waited longest. Each query walks
    // the due index in due order and stops at the limit, however long the queue.
    // `next_attempt_at IS NOT NULL` (always true of unfinished deliveries) lets both use the
    // due index, which holds unfinished deliveries only.
    let [expired, due] = claim_queries();
    let lease_until = now.saturating_add(lease_ms);
    let token = new_claim_token();
    let mut claimed = Vec::new();
    for (sql, recovering) in [(expired, true), (due, false)] {
        let wanted = i64::try_from(limit - claimed.len()).unwrap_or(i64::MAX);
        if wanted == 0 {
            break;
        }
        let rows: Vec<(i64, ClaimedDelivery)> =
            conn.prepare_cached(&sql)?.query_map(params![now, wanted], claimed_delivery)?.collect::<Result<_, _>>()?;
        // Updated after each query, so the second sees the first's leases.
        let mut lease = conn.prepare_cached(
            "UPDATE deliveries SET status = 'in_flight', lease_until = ?1, updated_at = ?2, claim_token = ?3 WHERE seq = ?4",
        )?;
        for (seq, delivery) in rows {
            if recovering {
                tracing::warn!(delivery = %delivery.id, "delivery lease expired, handing it out again");
            }
            lease.execute(params![lease_until, now, token, seq])?;
            claimed.push(ClaimedDelivery { claim: token, ..delivery });
        }
    }
    Ok(claimed)
}

fn finish_attempt(
    conn: &Connection,
    id: &str,
    claim: i64,
    attempt: &AttemptRecord,
    outcome: &AttemptOutcome,
    now: i64,
) -> Result<(), StoreError> {
    // The claim check and the stored request in one lookup of the row.
    let found = conn
        .prepare_cached(concat!(
            "SELECT d.seq, d.status, d.claim_token, d.req_url, d.req_headers, ",
            delivery_body!(),
            " FROM deliveries d WHERE d.id = ?1"
        ))?
        .query_row([id], |row| {
            let state = (row.get(0)?, row.get(1)?, row.get(2)?);
            Ok((state, row.get::<_, String>(3)?, row.get::<_, String>(4)?, row.get::<_, Vec<u8>>(5)?))
        })
        .optional()?;
    let (state, url, headers, body) = found.ok_or(StoreError::NotFound)?;
    let seq = claimed(id, claim, state)?;
    let number: i64 = conn.prepare_cached(NEXT_ATTEMPT_NUMBER)?.query_row([seq], |row| row.get(0))?;
    insert_attempt(conn, seq, number, attempt, &StoredForm { url: &url, headers: &headers, body: &body }, outcome)?;
    let finished = Finished::of(attempt, outcome);
    conn.prepare_cached(
        "UPDATE deliveries SET status = ?1, next_attempt_at = ?2, lease_until = NULL, claim_token = NULL, attempts = attempts + ?3,
                               updated_at = ?4, last_status = ?5, last_error = ?6
         WHERE seq = ?7",
    )?
    .execute(params![
        finished.status,
        finished.next_attempt_at,
        i64::from(attempt.counted),
        now,
        attempt.status,
        finished.last_error,
        seq
    ])?;
    Ok(())
}

/// A delivery's request as its row stores it (headers as their JSON text).
struct StoredForm<'a> {
    url: &'a str,
    headers: &'a str,
    body: &'a [u8],
}

/// Stores one attempt: of its request only what differs from the delivery's `stored` one;
/// the answer cut shorter when another attempt will follow.
fn insert_attempt(
    conn: &Connection,
    seq: i64,
    number: i64,
    attempt: &AttemptRecord,
    stored: &StoredForm<'_>,
    outcome: &AttemptOutcome,
) -> Result<(), StoreError> {
    let headers = headers_json(&attempt.request_headers)?;
    // The error the attempt before had: that of the last attempt that stored its own.
    let error_before: Option<String> = if number > 1 {
        conn.prepare_cached(
            "SELECT error FROM attempts WHERE delivery_seq = ?1 AND number < ?2 AND error_repeats IS NULL ORDER BY number DESC LIMIT 1",
        )?
        .query_row(params![seq, number], |row| row.get(0))
        .optional()?
        .flatten()
    } else {
        None
    };
    let repeats = attempt.error.is_some() && attempt.error == error_before;
    let (own_headers, added_headers) = headers_beside(&headers, stored.headers);
    conn.prepare_cached(
        "INSERT INTO attempts (delivery_seq, number, started_at, duration_ms, request_url, request_method, request_headers,
                               request_body, status, response_headers, response_body, error, error_repeats, counted,
                               request_headers_added)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?
    .execute(params![
        seq,
        number,
        attempt.started_at,
        attempt.duration_ms,
        attempt.request_url.as_ref().filter(|url| *url != stored.url),
        attempt.request_method,
        own_headers,
        // Read back in place of the delivery's, a body is never longer than the bound.
        (attempt.request_body.as_ref() != stored.body || stored.body.len() > MAX_STORED_BODY)
            .then(|| cut(&attempt.request_body, MAX_STORED_BODY)),
        attempt.status,
        headers_json(&attempt.response_headers)?,
        cut(&attempt.response_body, answer_bound(outcome)),
        if repeats { None } else { attempt.error.as_deref() },
        repeats.then_some(1),
        attempt.counted,
        added_headers,
    ])?;
    Ok(())
}

fn prune_chunk(conn: &Connection, older_than: i64) -> Result<u64, StoreError> {
    // Deliveries and attempts go with their event (ON DELETE CASCADE).
    let deleted = conn
        .prepare_cached(
            "DELETE FROM events WHERE seq IN (
             SELECT e.seq FROM events e
             WHERE e.received_at < ?1
               AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.status IN ('pending', 'in_flight'))
             LIMIT +?2)",
        )?
        .execute(params![older_than, PRUNE_CHUNK as i64])?;
    Ok(deleted as u64)
}

fn unique_conflict(error: rusqlite::Error, message: impl FnOnce() -> String) -> StoreError {
    match error.sqlite_error_code() {
        Some(ErrorCode::ConstraintViolation) => StoreError::Conflict(message()),
        _ => error.into(),
    }
}

// ---- queries shared by reads and writes ----

fn first_with_delivery_id(conn: &Connection, route: &str, delivery_id: &str, since: i64) -> Result<Option<String>, StoreError> {
    let id = conn
        .prepare_cached("SELECT id FROM events WHERE route = ?1 AND delivery_id = ?2 AND received_at >= ?3 ORDER BY seq LIMIT 1")?
        .query_row(params![route, delivery_id, since], |row| row.get(0))
        .optional()?;
    Ok(id)
}

/// A claimed delivery pending again, due at `due`, its claim gone.
fn hand_back(conn: &Connection, seq: i64, due: i64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE deliveries SET status = 'pending', next_attempt_at = ?1, lease_until = NULL, claim_token = NULL WHERE seq = ?2",
    )?
    .execute(params![due, seq])?;
    Ok(())
}

/// The `seq` of the delivery in flight under `claim`; NotFound, or Conflict if it is not.
fn claimed_seq(conn: &Connection, id: &str, claim: i64) -> Result<i64, StoreError> {
    let state = conn
        .prepare_cached("SELECT seq, status, claim_token FROM deliveries WHERE id = ?1")?
        .query_row([id], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .optional()?;
    claimed(id, claim, state.ok_or(StoreError::NotFound)?)
}

/// The delivery's seq if its row (seq, status, claim token) still holds `claim`.
fn claimed(id: &str, claim: i64, state: (i64, DeliveryStatus, Option<i64>)) -> Result<i64, StoreError> {
    match state {
        (seq, DeliveryStatus::InFlight, Some(token)) if token == claim => Ok(seq),
        (_, status, _) => Err(not_claimed(id, status)),
    }
}

fn delivery_state(conn: &Connection, id: &str) -> Result<(i64, DeliveryStatus), StoreError> {
    let state = conn
        .prepare_cached("SELECT seq, status FROM deliveries WHERE id = ?1")?
        .query_row([id], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    state.ok_or(StoreError::NotFound)
}

fn delivery_by_id(conn: &Connection, id: &str) -> Result<Option<(i64, DeliveryView)>, StoreError> {
    let sql = format!("SELECT {DELIVERY_COLUMNS} FROM deliveries d WHERE id = ?1");
    Ok(conn.prepare_cached(&sql)?.query_row([id], delivery_view).optional()?)
}

fn route_by_name(conn: &Connection, name: &str) -> Result<Option<StoredRoute>, StoreError> {
    let sql = format!("SELECT {ROUTE_COLUMNS} FROM api_routes WHERE name = ?1");
    Ok(conn.prepare_cached(&sql)?.query_row([name], stored_route).optional()?)
}

#[cfg(test)]
mod tests {
    use rusqlite::{params, Connection, StatementStatus};

    use super::{claim_queries, migrate, MIGRATIONS, NEXT_ATTEMPT_NUMBER};

    #[test]
    fn statements_run_per_delivery_are_not_compiled_again_for_each_value() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, MIGRATIONS).unwrap();
        let [expired, due] = claim_queries();
        for sql in [NEXT_ATTEMPT_NUMBER, &expired, &due] {
            let mut statement = conn.prepare(sql).unwrap();
            for value in 1..=3_i64 {
                let mut rows = match statement.parameter_count() {
                    1 => statement.query(params![value]).unwrap(),
                    _ => statement.query(params![value * 1000, value]).unwrap(),
                };
                while rows.next().unwrap().is_some() {}
            }
            assert_eq!(statement.get_status(StatementStatus::RePrepare), 0, "{sql}");
        }
    }
}

//! `hookrelay replay`: stored events compared, offline, under a config file that is not
//! deployed yet, printed as a readable diff. Nothing is sent and nothing is written: the
//! SQLite file is opened read-only (its relay may be running), PostgreSQL sessions refuse
//! writes, and neither store is created or migrated.

use std::fmt::Write as _;

use serde_json::Value;

use super::{compare, Comparison, ReplayError, RouteChoice};
use crate::settings::StoreLocation;
use crate::snapshot::Snapshot;
use crate::store::{EventFilter, EventView, Page, PostgresStore, SqliteReader, StoreError};

/// Where the stored events are read from.
pub enum StoredEvents {
    Sqlite(SqliteReader),
    Shared(PostgresStore),
}

#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Replay(#[from] ReplayError),
}

impl StoredEvents {
    /// `--store` when given (a `postgres://` URL or a SQLite file), else the config's store.
    pub async fn open(given: Option<&str>, configured: &StoreLocation) -> Result<StoredEvents, StoreError> {
        let location = match given {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => StoreLocation::Postgres(url.to_string()),
            Some(path) => StoreLocation::Sqlite(path.into()),
            None => configured.clone(),
        };
        match location {
            StoreLocation::Sqlite(path) => tokio::task::spawn_blocking(move || SqliteReader::open(&path))
                .await
                .map_err(|_| StoreError::Closed)?
                .map(StoredEvents::Sqlite),
            StoreLocation::Postgres(url) => PostgresStore::connect_read_only(&url).await.map(StoredEvents::Shared),
        }
    }

    async fn list(&self, filter: EventFilter) -> Result<Page<EventView>, StoreError> {
        match self {
            StoredEvents::Sqlite(reader) => reader.list_events(filter).await,
            StoredEvents::Shared(store) => crate::store::Store::list_events(store, filter).await,
        }
    }

    async fn get(&self, id: &str) -> Result<Option<EventView>, StoreError> {
        match self {
            StoredEvents::Sqlite(reader) => reader.get_event(id).await,
            StoredEvents::Shared(store) => crate::store::Store::get_event(store, id).await,
        }
    }
}

/// Compares up to `limit` stored events that match `filter` (newest first) under `snapshot`.
pub async fn compare_stored(
    snapshot: &Snapshot,
    events: &StoredEvents,
    mut filter: EventFilter,
    limit: usize,
    choice: &RouteChoice,
) -> Result<Vec<Comparison>, OfflineError> {
    let mut compared = Vec::new();
    while compared.len() < limit {
        filter.limit = (limit - compared.len()).min(crate::store::MAX_PAGE);
        let page = events.list(filter.clone()).await?;
        for listed in page.items {
            // Lists leave deliveries out; the comparison needs what was sent.
            if let Some(event) = events.get(&listed.id).await? {
                compared.push(compare(snapshot, &event, choice)?);
            }
        }
        match page.next_cursor {
            Some(cursor) => filter.cursor = Some(cursor),
            None => break,
        }
    }
    Ok(compared)
}

/// One event's comparison as lines of text: unchanged in one line, else each route that no
/// longer matches and each target's differences (`first → now`, credentials as `***`).
pub fn describe(comparison: &Comparison) -> String {
    // Names and reasons carry what senders sent: control characters must not reach a terminal.
    let safe = |text: &str| text.escape_debug().to_string();
    let name = comparison.event.as_deref().map(|event| format!(" ({})", safe(event))).unwrap_or_default();
    let mut out =
        format!("event {}{name}: {}\n", safe(&comparison.replay_of), if comparison.changed { "would change" } else { "unchanged" });
    for missed in &comparison.not_matched {
        let _ = writeln!(out, "  route {}: no longer matches: {}", safe(&missed.route), safe(&missed.why_not));
    }
    for target in &comparison.targets {
        let heading = format!("  {} → {}", safe(&target.route), safe(&target.target));
        if let Some(error) = &target.error {
            let _ = writeln!(out, "{heading}: cannot render now: {}", safe(error));
        } else if let Some(skipped) = &target.skipped {
            let sent = if target.first.is_some() { " (it was sent the first time)" } else { "" };
            let _ = writeln!(out, "{heading}: skipped now: {skipped}{sent}");
        } else if target.first.is_none() {
            let _ = writeln!(out, "{heading}: new: it had no delivery of this event");
        } else if target.now.is_none() {
            let _ = writeln!(out, "{heading}: no longer sent");
        } else if target.changes.is_empty() {
            let _ = writeln!(out, "{heading}: same request");
        } else {
            let _ = writeln!(out, "{heading}:");
            for change in &target.changes {
                let shown = |value: &Option<Value>| value.as_ref().map(Value::to_string).unwrap_or_else(|| "(none)".to_string());
                let secret = if change.secret { " (a credential changed)" } else { "" };
                let _ = writeln!(out, "    {}: {} → {}{secret}", safe(&change.path), shown(&change.first), shown(&change.now));
            }
        }
    }
    out
}

//! Reading rows for [`super::PostgresStore`]: the column lists and shared SQL fragments,
//! rows to the store's domain types (headers and definitions as JSON text, statuses as
//! text), lookups by id and name, and newest-first paging over a table's `seq`.

use bytes::Bytes;
use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::store::record::lossy;
use crate::store::{cursor_seq, page_size, EventFilter, NamePattern, Page, TargetRecord};
use crate::store::{
    AttemptView, ClaimedDelivery, DeliveryStatus, DeliveryView, EventView, StoreError, StoredRequest, StoredRequestView, StoredRoute,
};

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        StoreError::Postgres(std::sync::Arc::new(error))
    }
}

pub(super) const TARGET_COLUMNS: &str = "route, target, failures, opened, blocked_until, probe_until, paused_at, paused_reason";

pub(super) fn target_record(row: &Row) -> Result<TargetRecord, StoreError> {
    Ok(TargetRecord {
        route: row.try_get("route")?,
        target: row.try_get("target")?,
        failures: row.try_get::<_, i32>("failures")?.unsigned_abs(),
        opened: row.try_get::<_, i32>("opened")?.unsigned_abs(),
        blocked_until: row.try_get("blocked_until")?,
        probe_until: row.try_get("probe_until")?,
        paused_at: row.try_get("paused_at")?,
        paused_reason: row.try_get("paused_reason")?,
    })
}

pub(super) const EVENT_COLUMNS: &str = "seq, id, received_at, route, event, delivery_id, method, path, headers, body, replay_of";
pub(super) const ROUTE_COLUMNS: &str = "name, definition, created_at, updated_at";

/// A delivery's request body (deliveries as `d`): its own, or its event's when it forwards
/// that unchanged (stored once).
macro_rules! delivery_body {
    () => {
        "CASE WHEN d.req_body_from_event THEN (SELECT body FROM hookrelay_events e WHERE e.id = d.event_id) ELSE d.req_body END"
    };
}
pub(super) use delivery_body;

/// Which deliveries `d` may be claimed, `$1` being the pinned now (or NULL) and `$2` the
/// limit. An ordered delivery must be the oldest unfinished one of its key, with no other
/// one of its key holding a live lease. Rows another replica is claiming are skipped, not
/// waited for; of an ordered key the oldest is then skipped too, and the younger ones stay
/// blocked behind it, so a key never has two claims.
macro_rules! claimable {
    () => {
        " AND (d.ordered_key IS NULL OR NOT EXISTS (
            SELECT 1 FROM hookrelay_deliveries o
            WHERE o.route = d.route AND o.target = d.target AND o.ordered_key = d.ordered_key
              AND o.status IN ('pending', 'in_flight') AND o.seq <> d.seq
              AND (o.seq < d.seq OR (o.status = 'in_flight' AND o.lease_until >= COALESCE($1::bigint, hookrelay_now_ms())))))
          ORDER BY d.next_attempt_at, d.seq
          LIMIT $2
          FOR UPDATE OF d SKIP LOCKED"
    };
}
pub(super) use claimable;

/// Columns of [`claimed_delivery`], for `hookrelay_deliveries d`.
macro_rules! claim_columns {
    () => {
        concat!(
            "d.seq, d.id, d.event_id, d.route, d.target, d.req_method, d.req_url, d.req_headers, ",
            delivery_body!(),
            " AS req_body, d.attempts, d.created_at, d.guarded, d.next_attempt_at, d.claim_token"
        )
    };
}
pub(super) use claim_columns;

/// Columns of [`delivery_view`], for `hookrelay_deliveries d`.
pub(super) const DELIVERY_COLUMNS: &str = concat!(
    "d.seq, d.id, d.event_id, d.route, d.target, d.status, d.attempts, d.next_attempt_at, d.created_at, d.updated_at, ",
    "d.last_status, d.last_error, d.req_method, d.req_url, d.req_headers, ",
    delivery_body!(),
    " AS req_body"
);

/// The attempts of the delivery with `seq` `$1`, oldest first, read back whole.
pub(super) const ATTEMPTS_OF_DELIVERY: &str = concat!(
    "SELECT a.number, a.started_at, a.duration_ms, COALESCE(a.request_url, d.req_url) AS request_url, a.request_method,
            COALESCE(a.request_headers, d.req_headers) AS request_headers, a.request_headers_added,
            COALESCE(a.request_body, ",
    delivery_body!(),
    ") AS request_body, a.status, a.response_headers, a.response_body, a.error, a.error_repeats, a.counted
     FROM hookrelay_attempts a JOIN hookrelay_deliveries d ON d.seq = a.delivery_seq WHERE a.delivery_seq = $1 ORDER BY a.number"
);

pub(super) fn status_of(row: &Row, column: usize) -> Result<DeliveryStatus, StoreError> {
    row.try_get::<_, &str>(column)?.parse().map_err(|error: StoreError| StoreError::Corrupt(error.to_string()))
}

fn headers(row: &Row, column: &str) -> Result<Vec<(String, String)>, StoreError> {
    serde_json::from_str(row.try_get(column)?).map_err(|error| StoreError::Corrupt(format!("{column}: {error}")))
}

/// An attempt's request headers: its own, or its delivery's followed by those it added.
fn with_added_headers(mut own: Vec<(String, String)>, row: &Row, added: &str) -> Result<Vec<(String, String)>, StoreError> {
    if row.try_get::<_, Option<&str>>(added)?.is_some() {
        own.extend(headers(row, added)?);
    }
    Ok(own)
}

fn unsigned<T: TryFrom<i32>>(row: &Row, column: &str) -> Result<T, StoreError> {
    let value: i32 = row.try_get(column)?;
    T::try_from(value).map_err(|_| StoreError::Corrupt(format!("{column}: {value} out of range")))
}

fn http_status(row: &Row, column: &str) -> Result<Option<u16>, StoreError> {
    let value: Option<i32> = row.try_get(column)?;
    value.map(|value| u16::try_from(value).map_err(|_| StoreError::Corrupt(format!("{column}: {value} out of range")))).transpose()
}

pub(super) fn event_view(row: &Row) -> Result<EventView, StoreError> {
    Ok(EventView {
        id: row.try_get("id")?,
        received_at: row.try_get("received_at")?,
        route: row.try_get("route")?,
        event: row.try_get("event")?,
        delivery_id: row.try_get("delivery_id")?,
        method: row.try_get("method")?,
        path: row.try_get("path")?,
        headers: headers(row, "headers")?,
        body: lossy(row.try_get("body")?),
        replay_of: row.try_get("replay_of")?,
        deliveries: Vec::new(),
    })
}

pub(super) fn delivery_view(row: &Row) -> Result<(i64, DeliveryView), StoreError> {
    let view = DeliveryView {
        id: row.try_get("id")?,
        event_id: row.try_get("event_id")?,
        route: row.try_get("route")?,
        target: row.try_get("target")?,
        status: status_of(row, 5)?,
        attempts: unsigned(row, "attempts")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        last_status: http_status(row, "last_status")?,
        last_error: row.try_get("last_error")?,
        request: StoredRequestView {
            method: row.try_get("req_method")?,
            url: row.try_get("req_url")?,
            headers: headers(row, "req_headers")?,
            body: lossy(row.try_get("req_body")?),
        },
    };
    Ok((row.try_get("seq")?, view))
}

/// A claimed delivery, with the order claims are handed out in (due time, then age).
pub(super) fn claimed_delivery(row: &Row) -> Result<((Option<i64>, i64), ClaimedDelivery), StoreError> {
    let delivery = ClaimedDelivery {
        id: row.try_get("id")?,
        event_id: row.try_get("event_id")?,
        route: row.try_get("route")?,
        target: row.try_get("target")?,
        request: StoredRequest {
            method: row.try_get("req_method")?,
            url: row.try_get("req_url")?,
            headers: headers(row, "req_headers")?,
            body: Bytes::from(row.try_get::<_, Vec<u8>>("req_body")?),
        },
        attempts: unsigned(row, "attempts")?,
        created_at: row.try_get("created_at")?,
        guarded: row.try_get("guarded")?,
        claim: row.try_get::<_, Option<i64>>("claim_token")?.unwrap_or_default(),
    };
    Ok(((row.try_get("next_attempt_at")?, row.try_get("seq")?), delivery))
}

/// An attempt row, and whether its error is stored as "the same as the attempt before".
pub(super) fn attempt_view(row: &Row) -> Result<(AttemptView, bool), StoreError> {
    let view = AttemptView {
        number: unsigned(row, "number")?,
        started_at: row.try_get("started_at")?,
        duration_ms: row.try_get("duration_ms")?,
        request_url: row.try_get("request_url")?,
        request_method: row.try_get("request_method")?,
        request_headers: with_added_headers(headers(row, "request_headers")?, row, "request_headers_added")?,
        request_body: lossy(row.try_get("request_body")?),
        status: http_status(row, "status")?,
        response_headers: headers(row, "response_headers")?,
        response_body: lossy(row.try_get("response_body")?),
        error: row.try_get("error")?,
        counted: row.try_get("counted")?,
    };
    Ok((view, row.try_get("error_repeats")?))
}

pub(super) fn stored_route(row: &Row) -> Result<StoredRoute, StoreError> {
    Ok(StoredRoute {
        name: row.try_get("name")?,
        definition: serde_json::from_str(row.try_get("definition")?)
            .map_err(|error| StoreError::Corrupt(format!("route definition: {error}")))?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// The status of a delivery, or NotFound.
pub(super) async fn current_status(client: &impl GenericClient, id: &str) -> Result<DeliveryStatus, StoreError> {
    let row = client.query_opt("SELECT status FROM hookrelay_deliveries WHERE id = $1", &[&id]).await?;
    let row = row.ok_or(StoreError::NotFound)?;
    status_of(&row, 0)
}

pub(super) async fn delivery_by_id_with_seq(client: &impl GenericClient, id: &str) -> Result<Option<(i64, DeliveryView)>, StoreError> {
    let row = client.query_opt(&format!("SELECT {DELIVERY_COLUMNS} FROM hookrelay_deliveries d WHERE d.id = $1"), &[&id]).await?;
    row.as_ref().map(delivery_view).transpose()
}

pub(super) async fn delivery_by_id(client: &impl GenericClient, id: &str) -> Result<Option<DeliveryView>, StoreError> {
    Ok(delivery_by_id_with_seq(client, id).await?.map(|(_, view)| view))
}

pub(super) async fn route_by_name(client: &impl GenericClient, name: &str) -> Result<Option<StoredRoute>, StoreError> {
    let row = client.query_opt(&format!("SELECT {ROUTE_COLUMNS} FROM hookrelay_routes WHERE name = $1"), &[&name]).await?;
    row.as_ref().map(stored_route).transpose()
}

/// A newest-first page over a table's `seq`, with optional equality filters.
pub(super) struct PageQuery {
    seq: &'static str,
    conditions: Vec<String>,
    values: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl PageQuery {
    /// Cursors are the `seq` of the last item of the previous page, in base 10.
    pub(super) fn new(cursor: Option<&str>, seq: &'static str) -> Result<PageQuery, StoreError> {
        let mut query = PageQuery { seq, conditions: Vec::new(), values: Vec::new() };
        if let Some(cursor) = cursor {
            let value = cursor_seq(cursor)?;
            query.values.push(Box::new(value));
            query.conditions.push(format!("{seq} < ${}", query.values.len()));
        }
        Ok(query)
    }

    /// `column` is always a literal from this file, never input.
    pub(super) fn filter(&mut self, column: &str, value: Option<String>) {
        if let Some(value) = value {
            self.values.push(Box::new(value));
            self.conditions.push(format!("{column} = ${}", self.values.len()));
        }
    }

    /// `condition` is a literal from this file with `{}` where the parameter goes.
    pub(super) fn condition<V: ToSql + Sync + Send + 'static>(&mut self, condition: &str, value: Option<V>) {
        if let Some(value) = value {
            self.values.push(Box::new(value));
            self.conditions.push(condition.replace("{}", &format!("${}", self.values.len())));
        }
    }

    /// The filters of a list of events.
    pub(super) fn events(&mut self, filter: &EventFilter) {
        self.filter("route", filter.route.clone());
        match filter.event.clone().map(NamePattern::for_postgres) {
            Some(NamePattern::Exact(name)) => self.filter("event", Some(name)),
            Some(NamePattern::Like(like) | NamePattern::SqliteGlob(like)) => self.condition("event LIKE {}", Some(like)),
            None => {}
        }
        self.condition("received_at >= {}", filter.since);
        self.condition("received_at < {}", filter.until);
        self.condition(
            "EXISTS (SELECT 1 FROM hookrelay_deliveries d WHERE d.event_id = hookrelay_events.id AND d.status = {})",
            filter.status.map(|status| status.as_str().to_owned()),
        );
    }

    pub(super) async fn run<T>(
        mut self,
        client: &impl GenericClient,
        select: &str,
        limit: usize,
        map: impl FnMut(&tokio_postgres::Row) -> Result<(i64, T), StoreError>,
    ) -> Result<Page<T>, StoreError> {
        let limit = page_size(limit);
        // One extra row tells whether another page follows.
        self.values.push(Box::new(limit as i64 + 1));
        let filter = if self.conditions.is_empty() { String::new() } else { format!("WHERE {}", self.conditions.join(" AND ")) };
        let sql = format!("{select} {filter} ORDER BY {} DESC LIMIT ${}", self.seq, self.values.len());
        let params: Vec<&(dyn ToSql + Sync)> = self.values.iter().map(|value| value.as_ref() as &(dyn ToSql + Sync)).collect();
        let rows = client.query(&sql, &params).await?;
        let mut items = rows.iter().map(map).collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|(seq, _)| seq.to_string())
        } else {
            None
        };
        Ok(Page { items: items.into_iter().map(|(_, item)| item).collect(), next_cursor })
    }
}

//! Row mappings for [`super::sqlite`]: the column lists, SQL rows to the store's domain
//! types and back (headers and definitions as JSON, statuses as text), and newest-first
//! paging over a table's `seq`.

use bytes::Bytes;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, Value, ValueRef};
use rusqlite::{params_from_iter, Connection, Row, ToSql};

use super::record::lossy;
use super::{
    cursor_seq, page_size, AttemptView, ClaimedDelivery, DeliveryStatus, DeliveryView, EventFilter, EventView, NamePattern, Page,
    StoreError, StoredRequest, StoredRequestView, StoredRoute, TargetRecord,
};

/// A newest-first page over a table's `seq`, with optional equality filters.
pub(super) struct PageQuery {
    conditions: Vec<String>,
    values: Vec<Value>,
}

impl PageQuery {
    /// Cursors are the `seq` of the last item of the previous page, in base 10.
    pub(super) fn new(cursor: Option<&str>) -> Result<PageQuery, StoreError> {
        let mut query = PageQuery { conditions: Vec::new(), values: Vec::new() };
        if let Some(cursor) = cursor {
            let seq = cursor_seq(cursor)?;
            query.values.push(Value::Integer(seq));
            query.conditions.push(format!("seq < ?{}", query.values.len()));
        }
        Ok(query)
    }

    /// `column` is always a literal from this file, never input.
    pub(super) fn filter(&mut self, column: &str, value: Option<String>) {
        if let Some(value) = value {
            self.values.push(Value::Text(value));
            self.conditions.push(format!("{column} = ?{}", self.values.len()));
        }
    }

    /// `condition` is a literal from this file with `{}` where the parameter goes.
    pub(super) fn condition(&mut self, condition: &str, value: Option<Value>) {
        if let Some(value) = value {
            self.values.push(value);
            self.conditions.push(condition.replace("{}", &format!("?{}", self.values.len())));
        }
    }

    /// The filters of a list of events.
    pub(super) fn events(&mut self, filter: &EventFilter) {
        self.filter("route", filter.route.clone());
        match filter.event.clone().map(NamePattern::for_sqlite) {
            Some(NamePattern::Exact(name)) => self.filter("event", Some(name)),
            Some(NamePattern::SqliteGlob(glob) | NamePattern::Like(glob)) => self.condition("event GLOB {}", Some(Value::Text(glob))),
            None => {}
        }
        self.condition("received_at >= {}", filter.since.map(Value::Integer));
        self.condition("received_at < {}", filter.until.map(Value::Integer));
        self.condition(
            "EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id AND d.status = {})",
            filter.status.map(|status| Value::Text(status.as_str().to_owned())),
        );
    }

    pub(super) fn run<T>(
        mut self,
        conn: &Connection,
        select: &str,
        limit: usize,
        map: impl FnMut(&Row<'_>) -> rusqlite::Result<(i64, T)>,
    ) -> Result<Page<T>, StoreError> {
        let limit = page_size(limit);
        // One extra row tells whether another page follows.
        self.values.push(Value::Integer(limit as i64 + 1));
        let filter = if self.conditions.is_empty() { String::new() } else { format!("WHERE {}", self.conditions.join(" AND ")) };
        let sql = format!("{select} {filter} ORDER BY seq DESC LIMIT ?{}", self.values.len());
        let mut rows: Vec<(i64, T)> =
            conn.prepare_cached(&sql)?.query_map(params_from_iter(self.values), map)?.collect::<Result<_, _>>()?;
        let next_cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|(seq, _)| seq.to_string())
        } else {
            None
        };
        Ok(Page { items: rows.into_iter().map(|(_, item)| item).collect(), next_cursor })
    }
}

pub(super) const TARGET_COLUMNS: &str = "route, target, failures, opened, blocked_until, probe_until, paused_at, paused_reason";

pub(super) fn target_record(row: &Row<'_>) -> rusqlite::Result<TargetRecord> {
    Ok(TargetRecord {
        route: row.get("route")?,
        target: row.get("target")?,
        failures: row.get("failures")?,
        opened: row.get("opened")?,
        blocked_until: row.get("blocked_until")?,
        probe_until: row.get("probe_until")?,
        paused_at: row.get("paused_at")?,
        paused_reason: row.get("paused_reason")?,
    })
}

pub(super) const EVENT_COLUMNS: &str = "seq, id, received_at, route, event, delivery_id, method, path, headers, body, replay_of";
/// A delivery's request body (deliveries as `d`): its own, or its event's when it forwards
/// that unchanged (`req_body_from_event`, stored once).
macro_rules! delivery_body {
    () => {
        "CASE WHEN d.req_body_from_event = 1 THEN (SELECT body FROM events e WHERE e.id = d.event_id) ELSE d.req_body END"
    };
}
pub(super) use delivery_body;

/// Columns of [`delivery_view`], for `FROM deliveries d`.
pub(super) const DELIVERY_COLUMNS: &str = concat!(
    "d.seq, d.id, d.event_id, d.route, d.target, d.status, d.attempts, d.next_attempt_at, d.created_at, d.updated_at, ",
    "d.last_status, d.last_error, d.req_method, d.req_url, d.req_headers, ",
    delivery_body!(),
    " AS req_body"
);
/// Columns of [`claimed_delivery`], for `FROM deliveries d`.
pub(super) const CLAIM_COLUMNS: &str = concat!(
    "d.seq, d.id, d.event_id, d.route, d.target, d.req_method, d.req_url, d.req_headers, ",
    delivery_body!(),
    " AS req_body, d.attempts, d.created_at, d.guarded"
);
pub(super) const ROUTE_COLUMNS: &str = "name, definition, created_at, updated_at";

pub(super) fn event_view(row: &Row<'_>) -> rusqlite::Result<EventView> {
    Ok(EventView {
        id: row.get("id")?,
        received_at: row.get("received_at")?,
        route: row.get("route")?,
        event: row.get("event")?,
        delivery_id: row.get("delivery_id")?,
        method: row.get("method")?,
        path: row.get("path")?,
        headers: row.get::<_, Headers>("headers")?.0,
        body: lossy(row.get("body")?),
        replay_of: row.get("replay_of")?,
        deliveries: Vec::new(),
    })
}

pub(super) fn delivery_view(row: &Row<'_>) -> rusqlite::Result<(i64, DeliveryView)> {
    let view = DeliveryView {
        id: row.get("id")?,
        event_id: row.get("event_id")?,
        route: row.get("route")?,
        target: row.get("target")?,
        status: row.get("status")?,
        attempts: row.get("attempts")?,
        next_attempt_at: row.get("next_attempt_at")?,
        created_at: row.get("created_at")?,
        updated_at: row.get("updated_at")?,
        last_status: row.get("last_status")?,
        last_error: row.get("last_error")?,
        request: StoredRequestView {
            method: row.get("req_method")?,
            url: row.get("req_url")?,
            headers: row.get::<_, Headers>("req_headers")?.0,
            body: lossy(row.get("req_body")?),
        },
    };
    Ok((row.get("seq")?, view))
}

pub(super) fn claimed_delivery(row: &Row<'_>) -> rusqlite::Result<(i64, ClaimedDelivery)> {
    let delivery = ClaimedDelivery {
        id: row.get("id")?,
        event_id: row.get("event_id")?,
        route: row.get("route")?,
        target: row.get("target")?,
        request: StoredRequest {
            method: row.get("req_method")?,
            url: row.get("req_url")?,
            headers: row.get::<_, Headers>("req_headers")?.0,
            body: Bytes::from(row.get::<_, Vec<u8>>("req_body")?),
        },
        attempts: row.get("attempts")?,
        created_at: row.get("created_at")?,
        guarded: row.get("guarded")?,
        // Set by the claim that hands it out.
        claim: 0,
    };
    Ok((row.get("seq")?, delivery))
}

/// An attempt row, and whether its error is stored as "the same as the attempt before"
/// (then `error` is `None` here; see `error_repeats`).
pub(super) fn attempt_view(row: &Row<'_>) -> rusqlite::Result<(AttemptView, bool)> {
    let view = AttemptView {
        number: row.get("number")?,
        started_at: row.get("started_at")?,
        duration_ms: row.get("duration_ms")?,
        request_url: row.get("request_url")?,
        request_method: row.get("request_method")?,
        request_headers: headers_with_added(row.get::<_, Headers>("request_headers")?, row.get("request_headers_added")?),
        request_body: lossy(row.get("request_body")?),
        status: row.get("status")?,
        response_headers: row.get::<_, Headers>("response_headers")?.0,
        response_body: lossy(row.get("response_body")?),
        error: row.get("error")?,
        counted: row.get("counted")?,
    };
    Ok((view, row.get::<_, Option<i64>>("error_repeats")? == Some(1)))
}

pub(super) fn stored_route(row: &Row<'_>) -> rusqlite::Result<StoredRoute> {
    Ok(StoredRoute {
        name: row.get("name")?,
        definition: row.get::<_, Json>("definition")?.0,
        created_at: row.get("created_at")?,
        updated_at: row.get("updated_at")?,
    })
}

/// An attempt's request headers: its own, or its delivery's followed by those it added.
fn headers_with_added(headers: Headers, added: Option<Headers>) -> Vec<(String, String)> {
    let mut all = headers.0;
    all.extend(added.into_iter().flat_map(|added| added.0));
    all
}

/// Headers as stored: JSON `[[name, value], ...]`, keeping order and repeats.
pub(super) struct Headers(pub(super) Vec<(String, String)>);

impl FromSql for Headers {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        serde_json::from_str(value.as_str()?).map(Headers).map_err(|error| FromSqlError::Other(Box::new(error)))
    }
}

pub(super) struct Json(pub(super) serde_json::Value);

impl FromSql for Json {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        serde_json::from_str(value.as_str()?).map(Json).map_err(|error| FromSqlError::Other(Box::new(error)))
    }
}

impl FromSql for DeliveryStatus {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value.as_str()?.parse().map_err(|error: StoreError| FromSqlError::Other(Box::new(error)))
    }
}

impl ToSql for DeliveryStatus {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

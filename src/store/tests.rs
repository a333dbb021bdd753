//! Tests of the stores: one conformance suite run against both backends (SQLite in a
//! temporary folder; PostgreSQL in a fresh database on a throwaway cluster, skipped with a
//! notice where PostgreSQL is not installed), then what is particular to each. Time is
//! passed in (the PostgreSQL store pinned to it), so every schedule is exact.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;

use super::*;

const T0: i64 = 1_700_000_000_000;
const LEASE: i64 = 30_000;

/// The wall clock, for the tests that run on the database's clock.
fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn open(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(&dir.path().join("data/hookrelay.db")).unwrap()
}

// Its private clusters serve the integration tests only.
#[path = "../../tests/it/postgres_cluster.rs"]
#[allow(dead_code)]
mod postgres_cluster;

/// A PostgreSQL store on a fresh database, its clock pinned to the times the test passes;
/// None where PostgreSQL is not installed.
async fn open_postgres(test: &str) -> Option<PostgresStore> {
    let url = postgres_cluster::fresh_database(test).await?;
    Some(open_postgres_at(&url).await)
}

async fn open_postgres_at(url: &str) -> PostgresStore {
    PostgresStore::connect_with(url, postgres::schema::MIGRATIONS, true).await.unwrap()
}

/// Runs each named test, `async fn name(store: Arc<dyn Store>)`, against both backends.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    super::$name(std::sync::Arc::new(super::open(&dir))).await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(store) = super::open_postgres(stringify!($name)).await else { return };
                    super::$name(std::sync::Arc::new(store)).await;
                }
            )*
        }
    };
}

conformance!(
    accept_claim_finish_succeeded,
    a_delivery_handed_off_at_accept_is_stored_claimed,
    a_delivery_handed_off_with_a_duplicate_check_is_stored_claimed,
    retry_at_is_not_claimed_early,
    failed_then_retry_now,
    throttled_attempt_does_not_count,
    finished_deliveries_are_recorded_with_their_attempt_and_never_claimed,
    finished_deliveries_logged_together_are_stored_all_or_none,
    release_hands_the_claim_back,
    renewed_leases_are_not_taken_over,
    a_claim_taken_over_is_no_longer_the_old_workers,
    nul_characters_from_senders_and_receivers_are_stored,
    pending_deliveries_can_be_cancelled_one_by_one_or_by_filter,
    claims_oldest_due_first_up_to_the_limit,
    expired_lease_is_claimable_again,
    ordered_key_goes_one_at_a_time_in_order,
    dedupe_window,
    accept_all_takes_every_item_or_none,
    concurrent_duplicates_accept_exactly_one,
    a_failing_write_does_not_spoil_its_batch,
    attempts_finished_at_once_are_each_recorded_as_if_alone,
    pages_have_no_gaps_or_duplicates,
    target_breakers_hold_and_release_their_pending_deliveries,
    a_hold_decided_on_an_outdated_record_is_due_at_once,
    events_filter_by_time_name_glob_and_delivery_status_and_keep_what_they_replay,
    prune_keeps_events_with_unfinished_deliveries,
    kept_unmatched_requests_are_pruned_by_age_and_count,
    attempt_bodies_are_cut_to_64_kib,
    api_route_crud,
    retried_attempts_store_only_what_differs_and_read_back_whole,
    a_delivery_forwarding_the_event_body_does_not_store_it_again,
    attempt_bodies_read_back_within_the_bound,
    store_is_usable_as_a_trait_object,
);

fn event(id: &str, route: &str, received_at: i64) -> NewEvent {
    NewEvent {
        id: id.into(),
        received_at,
        route: route.into(),
        event: Some("push".into()),
        delivery_id: None,
        method: "POST".into(),
        path: format!("/hooks/{route}"),
        headers: vec![("content-type".into(), "application/json".into()), ("x-seq".into(), "1".into()), ("x-seq".into(), "2".into())],
        body: Bytes::from_static(br#"{"ref":"main"}"#),
        replay_of: None,
    }
}

fn delivery(id: &str, event: &NewEvent, target: &str, next_attempt_at: i64) -> NewDelivery {
    NewDelivery {
        id: id.into(),
        event_id: event.id.clone(),
        route: event.route.clone(),
        target: target.into(),
        request: StoredRequest {
            method: "POST".into(),
            url: format!("https://{target}.example/hook"),
            headers: vec![("authorization".into(), "Bearer secret".into())],
            body: Bytes::from_static(b"{\"text\":\"hi\"}"),
        },
        next_attempt_at,
        ordered_key: None,
        guarded: false,
        handed_off: None,
    }
}

/// Accepts one event with one delivery `d-<id>` to target `t`, due at `at`.
async fn accept_one(store: &dyn Store, id: &str, route: &str, at: i64) -> NewDelivery {
    let event = event(id, route, at);
    let delivery = delivery(&format!("d-{id}"), &event, "t", at);
    store.accept(event, vec![delivery.clone()]).await.unwrap();
    delivery
}

fn attempt(status: Option<u16>, counted: bool) -> AttemptRecord {
    AttemptRecord {
        started_at: T0,
        duration_ms: 12,
        request_url: Some("https://t.example/hook".into()),
        request_method: "POST".into(),
        request_headers: vec![("authorization".into(), "[redacted]".into())],
        request_body: Bytes::from_static(b"{}"),
        status,
        response_headers: vec![("content-type".into(), "text/plain".into())],
        response_body: Bytes::from_static(b"ok"),
        error: None,
        counted,
    }
}

fn finished(event: Option<NewEvent>, delivery: NewDelivery, attempt: AttemptRecord, outcome: AttemptOutcome) -> FinishedDelivery {
    FinishedDelivery { event, delivery, attempt, outcome }
}

/// Finishes the delivery's current claim, whoever made it.
async fn finish(store: &dyn Store, id: &str, attempt: AttemptRecord, outcome: AttemptOutcome, now: i64) -> Result<(), StoreError> {
    let claim = store.current_claim(id).await.unwrap().unwrap_or_default();
    store.finish_attempt(id, claim, attempt, outcome, now).await
}

/// Hands the delivery's current claim back.
async fn release(store: &dyn Store, id: &str, next_attempt_at: i64, now: i64) -> Result<(), StoreError> {
    let claim = store.current_claim(id).await.unwrap().unwrap_or_default();
    store.release(id, claim, next_attempt_at, now).await
}

/// Renews the delivery's current claim.
async fn renew(store: &dyn Store, id: &str, lease_ms: i64, now: i64) -> Result<(), StoreError> {
    let claim = store.current_claim(id).await.unwrap().unwrap_or_default();
    store.renew_lease(id, claim, lease_ms, now).await
}

fn ids(claimed: &[ClaimedDelivery]) -> Vec<&str> {
    claimed.iter().map(|delivery| delivery.id.as_str()).collect()
}

async fn status_of(store: &dyn Store, id: &str) -> DeliveryView {
    store.get_delivery(id).await.unwrap().unwrap().0
}

async fn accept_claim_finish_succeeded(store: Arc<dyn Store>) {
    let sent = accept_one(&*store, "e1", "github", T0).await;
    assert_eq!(store.queue_depth().await.unwrap(), 1);

    let claimed = store.claim_due(T0, 10, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].request, sent.request);
    assert_eq!((claimed[0].attempts, claimed[0].created_at, claimed[0].event_id.as_str()), (0, T0, "e1"));
    assert_eq!(status_of(&*store, "d-e1").await.status, DeliveryStatus::InFlight);
    assert!(store.claim_due(T0 + 1, 10, LEASE).await.unwrap().is_empty(), "a leased delivery is not handed out twice");

    finish(&*store, "d-e1", attempt(Some(200), true), AttemptOutcome::Succeeded, T0 + 50).await.unwrap();
    let (view, attempts) = store.get_delivery("d-e1").await.unwrap().unwrap();
    assert_eq!(view.status, DeliveryStatus::Succeeded);
    assert_eq!((view.attempts, view.next_attempt_at, view.last_status, view.updated_at), (1, None, Some(200), T0 + 50));
    assert_eq!(view.request.headers, vec![("authorization".to_string(), "Bearer secret".to_string())]);
    assert_eq!(attempts.len(), 1);
    assert_eq!((attempts[0].number, attempts[0].status, attempts[0].response_body.as_str()), (1, Some(200), "ok"));
    assert_eq!(store.queue_depth().await.unwrap(), 0);

    let event = store.get_event("e1").await.unwrap().unwrap();
    assert_eq!(event.headers.len(), 3, "repeated headers keep their order");
    assert_eq!(event.body, r#"{"ref":"main"}"#);
    assert_eq!(event.deliveries, vec![view]);
    assert!(store.get_event("nope").await.unwrap().is_none());
    assert!(store.get_delivery("nope").await.unwrap().is_none());
    assert!(matches!(finish(&*store, "d-e1", attempt(Some(200), true), AttemptOutcome::Succeeded, T0).await, Err(StoreError::Conflict(_))));
    assert!(matches!(finish(&*store, "nope", attempt(None, true), AttemptOutcome::Succeeded, T0).await, Err(StoreError::NotFound)));
}

async fn retry_at_is_not_claimed_early(store: Arc<dyn Store>) {
    accept_one(&*store, "e1", "github", T0).await;
    assert!(store.claim_due(T0 - 1, 10, LEASE).await.unwrap().is_empty(), "not due yet");
    store.claim_due(T0, 10, LEASE).await.unwrap();
    let mut failed = attempt(Some(503), true);
    failed.error = Some("status 503".into());
    finish(&*store, "d-e1", failed, AttemptOutcome::RetryAt(T0 + 5_000), T0 + 10).await.unwrap();

    let view = status_of(&*store, "d-e1").await;
    assert_eq!(view.status, DeliveryStatus::Pending);
    assert_eq!((view.attempts, view.next_attempt_at, view.last_error.as_deref()), (1, Some(T0 + 5_000), Some("status 503")));
    assert!(store.claim_due(T0 + 4_999, 10, LEASE).await.unwrap().is_empty());
    let claimed = store.claim_due(T0 + 5_000, 10, LEASE).await.unwrap();
    assert_eq!(ids(&claimed), ["d-e1"]);
    assert_eq!(claimed[0].attempts, 1);
}

async fn failed_then_retry_now(store: Arc<dyn Store>) {
    accept_one(&*store, "e1", "github", T0).await;
    store.claim_due(T0, 10, LEASE).await.unwrap();
    assert!(matches!(store.retry_now("d-e1", T0).await, Err(StoreError::Conflict(_))), "in flight");
    finish(&*store, "d-e1", attempt(Some(404), true), AttemptOutcome::Failed { reason: "404 is final".into() }, T0 + 1).await.unwrap();
    let view = status_of(&*store, "d-e1").await;
    assert_eq!((view.status, view.last_error.as_deref(), view.next_attempt_at), (DeliveryStatus::Failed, Some("404 is final"), None));
    assert!(store.claim_due(T0 + 100_000, 10, LEASE).await.unwrap().is_empty(), "failed is dead");

    let view = store.retry_now("d-e1", T0 + 60_000).await.unwrap();
    assert_eq!((view.status, view.next_attempt_at, view.attempts), (DeliveryStatus::Pending, Some(T0 + 60_000), 1));
    assert_eq!(ids(&store.claim_due(T0 + 60_000, 10, LEASE).await.unwrap()), ["d-e1"]);
    finish(&*store, "d-e1", attempt(Some(200), true), AttemptOutcome::Succeeded, T0 + 60_001).await.unwrap();
    assert!(matches!(store.retry_now("d-e1", T0).await, Err(StoreError::Conflict(_))), "succeeded");
    assert!(matches!(store.retry_now("nope", T0).await, Err(StoreError::NotFound)));
    assert_eq!(store.get_delivery("d-e1").await.unwrap().unwrap().1.len(), 2);
}

async fn throttled_attempt_does_not_count(store: Arc<dyn Store>) {
    accept_one(&*store, "e1", "dingtalk", T0).await;
    store.claim_due(T0, 1, LEASE).await.unwrap();
    finish(&*store, "d-e1", attempt(Some(429), false), AttemptOutcome::RetryAt(T0 + 1_000), T0).await.unwrap();
    let claimed = store.claim_due(T0 + 1_000, 1, LEASE).await.unwrap();
    assert_eq!(claimed[0].attempts, 0);
    finish(&*store, "d-e1", attempt(Some(200), true), AttemptOutcome::Succeeded, T0 + 1_001).await.unwrap();
    let (view, attempts) = store.get_delivery("d-e1").await.unwrap().unwrap();
    assert_eq!(view.attempts, 1);
    assert_eq!(attempts.iter().map(|a| (a.number, a.counted)).collect::<Vec<_>>(), [(1, false), (2, true)]);
}

#[tokio::test]
async fn recover_claims_hands_back_every_in_flight_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    accept_one(&store, "e1", "github", T0).await;
    accept_one(&store, "e2", "github", T0).await;
    assert_eq!(store.claim_due(T0, 10, LEASE).await.unwrap().len(), 2);
    assert!(store.claim_due(T0 + 1, 10, LEASE).await.unwrap().is_empty(), "both leased");
    assert_eq!(store.recover_claims(T0 + 2).await.unwrap(), 2);
    assert_eq!(store.claim_due(T0 + 2, 10, LEASE).await.unwrap().len(), 2, "claimable at once, not after the lease");
}

/// A delivery handed to a worker as it is accepted is stored in flight under that claim:
/// not claimed again while its lease holds, finished by its token, handed back by a
/// restart (a shared store: claimable once its lease ran out, as other relays see it).
async fn a_delivery_handed_off_at_accept_is_stored_claimed(store: Arc<dyn Store>) {
    let first = event("e1", "github", T0);
    let mut handed = delivery("d-e1", &first, "t", T0);
    handed.handed_off = Some(HandOff { token: 42, lease_until: T0 + LEASE, lease_ms: LEASE });
    store.accept(first.clone(), vec![handed, delivery("d-other", &first, "t", T0)]).await.unwrap();
    assert_eq!(status_of(&*store, "d-e1").await.status, DeliveryStatus::InFlight);
    assert_eq!(store.current_claim("d-e1").await.unwrap(), Some(42));
    assert_eq!(ids(&store.claim_due(T0, 10, LEASE).await.unwrap()), ["d-other"], "only the other one is claimed");
    assert!(store.finish_attempt("d-e1", 41, attempt(Some(200), true), AttemptOutcome::Succeeded, T0 + 1).await.is_err(), "a wrong token");
    store.finish_attempt("d-e1", 42, attempt(Some(200), true), AttemptOutcome::Succeeded, T0 + 1).await.unwrap();
    assert_eq!(status_of(&*store, "d-e1").await.status, DeliveryStatus::Succeeded);

    // One handed off and lost with its process: a restart hands it back.
    let second = event("e2", "github", T0);
    let mut lost = delivery("d-e2", &second, "t", T0);
    lost.handed_off = Some(HandOff { token: 7, lease_until: T0 + LEASE, lease_ms: LEASE });
    store.accept(second, vec![lost]).await.unwrap();
    assert!(store.claim_due(T0 + 2, 10, LEASE).await.unwrap().is_empty(), "its lease holds");
    if store.shared() {
        assert!(store.claim_due(T0 + LEASE - 1, 10, LEASE).await.unwrap().is_empty(), "its lease holds to its end");
        assert_eq!(
            ids(&store.claim_due(T0 + LEASE + 1, 10, LEASE).await.unwrap()),
            ["d-other", "d-e2"],
            "claimable once their leases ran out"
        );
        return;
    }
    assert_eq!(store.recover_claims(T0 + 3).await.unwrap(), 2, "it and d-other");
    assert_eq!(ids(&store.claim_due(T0 + 3, 10, LEASE).await.unwrap()), ["d-other", "d-e2"]);
}

/// The same through an accept that checks for a duplicate first (its own transaction on a
/// shared store, not the batch of plain accepts).
async fn a_delivery_handed_off_with_a_duplicate_check_is_stored_claimed(store: Arc<dyn Store>) {
    let mut first = event("e1", "github", T0);
    first.delivery_id = Some("gh-1".into());
    let mut handed = delivery("d-e1", &first, "t", T0);
    handed.handed_off = Some(HandOff { token: 9, lease_until: T0 + LEASE, lease_ms: LEASE });
    let outcome = store.accept_unless_duplicate(first, vec![handed], Some(T0 - 1)).await.unwrap();
    assert!(matches!(outcome, AcceptOutcome::Accepted), "{outcome:?}");
    assert_eq!(status_of(&*store, "d-e1").await.status, DeliveryStatus::InFlight);
    assert_eq!(store.current_claim("d-e1").await.unwrap(), Some(9));
    assert!(store.claim_due(T0 + LEASE - 1, 10, LEASE).await.unwrap().is_empty(), "its lease holds");
    store.finish_attempt("d-e1", 9, attempt(Some(200), true), AttemptOutcome::Succeeded, T0 + 1).await.unwrap();
    assert_eq!(status_of(&*store, "d-e1").await.status, DeliveryStatus::Succeeded);
}

async fn finished_deliveries_are_recorded_with_their_attempt_and_never_claimed(store: Arc<dyn Store>) {
    let event = event("e1", "github", T0);
    store.accept(event.clone(), vec![]).await.unwrap();
    let sync = finished(None, delivery("d-sync", &event, "sync", T0), attempt(Some(201), true), AttemptOutcome::Succeeded);
    let reason = "render error".to_string();
    let broken = finished(None, delivery("d-render", &event, "broken", T0), attempt(None, false), AttemptOutcome::Failed { reason });
    store.record_finished(Arc::from([sync, broken]), T0 + 5).await.unwrap();
    let (view, attempts) = store.get_delivery("d-sync").await.unwrap().unwrap();
    assert_eq!((view.status, view.attempts, view.last_status), (DeliveryStatus::Succeeded, 1, Some(201)));
    assert_eq!(attempts.len(), 1);
    let (view, _) = store.get_delivery("d-render").await.unwrap().unwrap();
    assert_eq!((view.status, view.last_error.as_deref()), (DeliveryStatus::Failed, Some("render error")));
    assert!(store.claim_due(T0 + 10, 10, LEASE).await.unwrap().is_empty());
    assert_eq!(store.get_event("e1").await.unwrap().unwrap().deliveries.len(), 2);
}

async fn finished_deliveries_logged_together_are_stored_all_or_none(store: Arc<dyn Store>) {
    let first = event("e1", "github", T0);
    let second = event("e2", "github", T0);
    let logged = |event: &NewEvent, id: &str| {
        finished(Some(event.clone()), delivery(id, event, "sync", T0), attempt(Some(200), true), AttemptOutcome::Succeeded)
    };
    // The second names a delivery id the first already took: the write fails as a whole.
    let clashing = Arc::from([logged(&first, "d-1"), logged(&second, "d-1")]);
    assert!(store.record_finished(clashing, T0 + 5).await.is_err());
    assert!(store.get_event("e1").await.unwrap().is_none(), "nothing of a failed write is kept");
    assert!(store.get_delivery("d-1").await.unwrap().is_none());
    store.record_finished(Arc::from([logged(&first, "d-1"), logged(&second, "d-2")]), T0 + 5).await.unwrap();
    for (event, delivery) in [("e1", "d-1"), ("e2", "d-2")] {
        let view = store.get_event(event).await.unwrap().unwrap();
        assert_eq!(view.deliveries.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), [delivery]);
        let (_, attempts) = store.get_delivery(delivery).await.unwrap().unwrap();
        assert_eq!(attempts.iter().map(|a| a.status).collect::<Vec<_>>(), [Some(200)]);
    }
}

async fn release_hands_the_claim_back(store: Arc<dyn Store>) {
    accept_one(&*store, "e1", "github", T0).await;
    store.claim_due(T0, 1, LEASE).await.unwrap();
    release(&*store, "d-e1", T0 + 700, T0).await.unwrap();
    let (view, attempts) = store.get_delivery("d-e1").await.unwrap().unwrap();
    assert_eq!((view.status, view.attempts, view.next_attempt_at), (DeliveryStatus::Pending, 0, Some(T0 + 700)));
    assert!(attempts.is_empty());
    assert!(store.claim_due(T0 + 699, 1, LEASE).await.unwrap().is_empty());
    assert_eq!(store.claim_due(T0 + 700, 1, LEASE).await.unwrap().len(), 1);
    assert!(matches!(release(&*store, "nope", T0, T0).await, Err(StoreError::NotFound)));
}

async fn claims_oldest_due_first_up_to_the_limit(store: Arc<dyn Store>) {
    accept_one(&*store, "late", "r", T0 + 30).await;
    accept_one(&*store, "early", "r", T0 + 10).await;
    accept_one(&*store, "mid", "r", T0 + 20).await;
    assert!(store.claim_due(T0 + 100, 0, LEASE).await.unwrap().is_empty());
    assert_eq!(ids(&store.claim_due(T0 + 100, 2, LEASE).await.unwrap()), ["d-early", "d-mid"]);
    assert_eq!(ids(&store.claim_due(T0 + 100, 2, LEASE).await.unwrap()), ["d-late"]);
}

async fn expired_lease_is_claimable_again(store: Arc<dyn Store>) {
    for n in 0..5 {
        accept_one(&*store, &format!("e{n}"), "github", T0 + n).await;
    }
    assert_eq!(ids(&store.claim_due(T0 + 10, 2, LEASE).await.unwrap()), ["d-e0", "d-e1"]);
    // The worker holding those two dies here: no finish, no release.
    let claimed = store.claim_due(T0 + 10 + LEASE - 1, 10, LEASE).await.unwrap();
    assert_eq!(ids(&claimed), ["d-e2", "d-e3", "d-e4"], "leases still held");
    let recovered = store.claim_due(T0 + 10 + LEASE + 1, 10, LEASE).await.unwrap();
    assert_eq!(ids(&recovered), ["d-e0", "d-e1"], "expired leases are handed out again");
    let view = status_of(&*store, "d-e0").await;
    assert_eq!((view.status, view.attempts), (DeliveryStatus::InFlight, 0), "taking over a lease is no attempt");
}

/// A worker whose lease ran out while it was still sending cannot finish, renew or hand
/// back the claim another worker took over; only the new claim's attempt is recorded.
async fn a_claim_taken_over_is_no_longer_the_old_workers(store: Arc<dyn Store>) {
    accept_one(&*store, "e1", "github", T0).await;
    let first = store.claim_due(T0, 1, LEASE).await.unwrap();
    let taken = store.claim_due(T0 + LEASE + 1, 1, LEASE).await.unwrap();
    assert_eq!(ids(&taken), ["d-e1"], "the lease ran out");
    assert_ne!(first[0].claim, taken[0].claim);
    let late = T0 + LEASE + 2;
    let stale = store.finish_attempt("d-e1", first[0].claim, attempt(Some(200), true), AttemptOutcome::Succeeded, late).await;
    assert!(matches!(stale, Err(StoreError::Conflict(_))), "{stale:?}");
    assert!(matches!(store.renew_lease("d-e1", first[0].claim, LEASE, late).await, Err(StoreError::Conflict(_))));
    assert!(matches!(store.release("d-e1", first[0].claim, late, late).await, Err(StoreError::Conflict(_))));
    store.finish_attempt("d-e1", taken[0].claim, attempt(Some(200), true), AttemptOutcome::Succeeded, late + 1).await.unwrap();
    let (view, attempts) = store.get_delivery("d-e1").await.unwrap().unwrap();
    assert_eq!((view.status, attempts.len()), (DeliveryStatus::Succeeded, 1));
}

/// A NUL character in what a sender or a receiver controls (an event name, a delivery id,
/// an ordering key, an error quoting the answer) is stored, never a failed write: a failed
/// accept would answer 503 forever, a failed record would send the delivery again forever.
async fn nul_characters_from_senders_and_receivers_are_stored(store: Arc<dyn Store>) {
    let mut with_nul = event("e1", "github", T0);
    with_nul.event = Some("push\0".into());
    with_nul.delivery_id = Some("id\0".into());
    let mut ordered = delivery("d-e1", &with_nul, "t", T0);
    ordered.ordered_key = Some("key\0".into());
    store.accept(with_nul.clone(), vec![ordered]).await.unwrap();
    let mut again = with_nul.clone();
    again.id = "e2".into();
    let outcome = store.accept_unless_duplicate(again, vec![], Some(T0 - 1)).await.unwrap();
    assert_eq!(outcome, AcceptOutcome::Duplicate { original_event_id: "e1".into() }, "dedupe still recognises the id");
    let claimed = store.claim_due(T0, 1, LEASE).await.unwrap();
    let mut failed = attempt(Some(200), true);
    failed.error = Some("errmsg bad\0".into());
    let reason = AttemptOutcome::Failed { reason: "success_when failed: bad\0".into() };
    store.finish_attempt("d-e1", claimed[0].claim, failed, reason, T0 + 1).await.unwrap();
    let (view, attempts) = store.get_delivery("d-e1").await.unwrap().unwrap();
    let shown = |text: &str| text.replace('\0', "\u{fffd}");
    assert_eq!(shown(view.last_error.as_deref().unwrap()), "success_when failed: bad\u{fffd}");
    assert_eq!(shown(attempts[0].error.as_deref().unwrap()), "errmsg bad\u{fffd}");
    assert_eq!(shown(store.get_event("e1").await.unwrap().unwrap().event.as_deref().unwrap()), "push\u{fffd}");
}

/// A pending delivery can be cancelled (final, never claimed); one on the wire or already
/// finished cannot. Cancelling by filter takes only pending ones; a cancelled delivery no
/// longer holds its ordering key, and a hand retry brings it back.
async fn pending_deliveries_can_be_cancelled_one_by_one_or_by_filter(store: Arc<dyn Store>) {
    accept_one(&*store, "e1", "r", T0).await;
    accept_one(&*store, "e2", "r", T0 + 1).await;
    accept_one(&*store, "e3", "other", T0 + 2).await;
    for n in 4..=5 {
        let event = event(&format!("e{n}"), "ordered", T0 + n);
        let mut ordered = delivery(&format!("d-e{n}"), &event, "t", T0 + n);
        ordered.ordered_key = Some("k".into());
        store.accept(event, vec![ordered]).await.unwrap();
    }
    let cancelled = store.cancel("d-e1", T0 + 10).await.unwrap();
    assert_eq!((cancelled.status, cancelled.next_attempt_at, cancelled.updated_at), (DeliveryStatus::Cancelled, None, T0 + 10));
    assert!(matches!(store.cancel("d-e1", T0 + 11).await, Err(StoreError::Conflict(_))), "already cancelled");
    assert!(matches!(store.cancel("nope", T0).await, Err(StoreError::NotFound)));
    let by_route = CancelFilter { route: Some("r".into()), ..CancelFilter::default() };
    assert_eq!(store.cancel_pending(by_route.clone(), T0 + 12).await.unwrap(), 1, "d-e2; d-e1 is no longer pending");
    assert_eq!(store.cancel_pending(by_route, T0 + 12).await.unwrap(), 0);
    assert_eq!(store.cancel("d-e4", T0 + 13).await.unwrap().status, DeliveryStatus::Cancelled);
    let before = CancelFilter { before: Some(T0 + 2), ..CancelFilter::default() };
    assert_eq!(store.cancel_pending(before, T0 + 14).await.unwrap(), 0, "e3 was created at T0 + 2, not before");
    assert_eq!(store.queue_depth().await.unwrap(), 2);

    let claimed = store.claim_due(T0 + 20, 10, LEASE).await.unwrap();
    assert_eq!(ids(&claimed), ["d-e3", "d-e5"], "cancelled ones are never claimed; d-e4 no longer holds key k");
    assert!(matches!(store.cancel("d-e3", T0 + 21).await, Err(StoreError::Conflict(_))), "on the wire");
    let listed =
        store.list_deliveries(DeliveryFilter { status: Some(DeliveryStatus::Cancelled), ..DeliveryFilter::default() }).await.unwrap();
    assert_eq!(listed.items.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["d-e4", "d-e2", "d-e1"]);

    assert_eq!(store.retry_now("d-e1", T0 + 30).await.unwrap().status, DeliveryStatus::Pending, "a hand retry brings it back");
    assert_eq!(ids(&store.claim_due(T0 + 30, 10, LEASE).await.unwrap()), ["d-e1"]);
}

async fn renewed_leases_are_not_taken_over(store: Arc<dyn Store>) {
    accept_one(&*store, "e1", "github", T0).await;
    store.claim_due(T0, 1, LEASE).await.unwrap();
    renew(&*store, "d-e1", LEASE, T0 + LEASE - 1).await.unwrap();
    assert!(store.claim_due(T0 + LEASE + 1, 1, LEASE).await.unwrap().is_empty(), "the renewed lease still holds");
    assert_eq!(ids(&store.claim_due(T0 + 2 * LEASE, 1, LEASE).await.unwrap()), ["d-e1"], "until it runs out too");
    finish(&*store, "d-e1", attempt(Some(200), true), AttemptOutcome::Succeeded, T0 + 2 * LEASE).await.unwrap();
    assert!(matches!(renew(&*store, "d-e1", LEASE, T0).await, Err(StoreError::Conflict(_))), "finished");
    assert!(matches!(renew(&*store, "nope", LEASE, T0).await, Err(StoreError::NotFound)));
}

#[tokio::test]
async fn expired_lease_is_claimable_again_and_events_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data/hookrelay.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        for n in 0..5 {
            accept_one(&store, &format!("e{n}"), "github", T0 + n).await;
        }
        assert_eq!(store.claim_due(T0 + 10, 2, LEASE).await.unwrap().len(), 2);
        // The worker holding those two dies here: no finish, no release.
        store.close().await.unwrap();
        assert!(matches!(store.queue_depth().await, Err(StoreError::Closed)));
        assert!(matches!(store.release("d-e0", 0, T0, T0).await, Err(StoreError::Closed)));
    }
    let store = SqliteStore::open(&path).unwrap();
    let page = store.list_events(EventFilter::default()).await.unwrap();
    assert_eq!(page.items.len(), 5, "every accepted event is still there");
    assert_eq!(store.queue_depth().await.unwrap(), 5);

    let claimed = store.claim_due(T0 + 10 + LEASE - 1, 10, LEASE).await.unwrap();
    assert_eq!(ids(&claimed), ["d-e2", "d-e3", "d-e4"], "leases still held");
    let recovered = store.claim_due(T0 + 10 + LEASE + 1, 10, LEASE).await.unwrap();
    assert_eq!(ids(&recovered), ["d-e0", "d-e1"], "expired leases are handed out again");
    store.close().await.unwrap();
}

async fn ordered_key_goes_one_at_a_time_in_order(store: Arc<dyn Store>) {
    for n in 1..=3 {
        let event = event(&format!("e{n}"), "orders", T0 + n);
        let mut ordered = delivery(&format!("d{n}"), &event, "erp", T0 + n);
        ordered.ordered_key = Some("order-42".into());
        let mut other_key = delivery(&format!("x{n}"), &event, "erp", T0 + n);
        other_key.ordered_key = Some(format!("order-{n}"));
        store.accept(event, vec![ordered, other_key]).await.unwrap();
    }
    let now = T0 + 100;
    let first = store.claim_due(now, 10, LEASE).await.unwrap();
    assert_eq!(ids(&first), ["d1", "x1", "x2", "x3"], "one of key order-42, other keys unaffected");
    assert!(store.claim_due(now, 10, LEASE).await.unwrap().is_empty(), "d2 waits while d1 is in flight");

    finish(&*store, "d1", attempt(Some(503), true), AttemptOutcome::RetryAt(now + 1_000), now).await.unwrap();
    assert!(store.claim_due(now + 500, 10, LEASE).await.unwrap().is_empty(), "d2 never overtakes d1 waiting to retry");
    assert_eq!(ids(&store.claim_due(now + 1_000, 10, LEASE).await.unwrap()), ["d1"]);
    finish(&*store, "d1", attempt(Some(200), true), AttemptOutcome::Succeeded, now + 1_001).await.unwrap();

    assert_eq!(ids(&store.claim_due(now + 1_001, 10, LEASE).await.unwrap()), ["d2"]);
    assert!(store.claim_due(now + 1_001, 10, LEASE).await.unwrap().is_empty());
    finish(&*store, "d2", attempt(Some(400), true), AttemptOutcome::Failed { reason: "400".into() }, now + 1_002).await.unwrap();
    let third = store.claim_due(now + 1_002, 10, LEASE).await.unwrap();
    assert_eq!(ids(&third), ["d3"], "a failed delivery no longer holds the key");

    // A failed delivery retried by hand is older than d3, but must not run beside it.
    store.retry_now("d2", now + 1_003).await.unwrap();
    assert!(store.claim_due(now + 1_003, 10, LEASE).await.unwrap().is_empty());
    finish(&*store, "d3", attempt(Some(200), true), AttemptOutcome::Succeeded, now + 1_004).await.unwrap();
    assert_eq!(ids(&store.claim_due(now + 1_004, 10, LEASE).await.unwrap()), ["d2"]);
}

async fn dedupe_window(store: Arc<dyn Store>) {
    let mut first = event("e1", "github", T0);
    first.delivery_id = Some("gh-1".into());
    let outcome = store.accept_unless_duplicate(first.clone(), vec![], Some(T0 - 60_000)).await.unwrap();
    assert_eq!(outcome, AcceptOutcome::Accepted);
    let mut other_route = event("e-other", "gitlab", T0 + 500);
    other_route.delivery_id = Some("gh-1".into());
    let outcome = store.accept_unless_duplicate(other_route, vec![], Some(T0 - 60_000)).await.unwrap();
    assert_eq!(outcome, AcceptOutcome::Accepted, "the window is per route");

    let mut again = event("e2", "github", T0 + 1_000);
    again.delivery_id = Some("gh-1".into());
    let duplicate = store.accept_unless_duplicate(again.clone(), vec![delivery("d2", &again, "t", T0)], Some(T0 - 60_000)).await.unwrap();
    assert_eq!(duplicate, AcceptOutcome::Duplicate { original_event_id: "e1".into() });
    assert!(store.get_event("e2").await.unwrap().is_none());
    assert_eq!(store.queue_depth().await.unwrap(), 0, "a duplicate's deliveries are not stored");

    let later = store.accept_unless_duplicate(again, vec![], Some(T0 + 1)).await.unwrap();
    assert_eq!(later, AcceptOutcome::Accepted, "the first one fell out of the window");
}

async fn accept_all_takes_every_item_or_none(store: Arc<dyn Store>) {
    let item = |id: &str, delivery_id: Option<&str>, delivery: &str| {
        let mut event = event(id, "ce", T0);
        event.delivery_id = delivery_id.map(str::to_string);
        let deliveries = vec![self::delivery(delivery, &event, "t", T0)];
        AcceptItem { event, deliveries, dedupe_since: Some(T0 - 60_000) }
    };
    let outcomes =
        store.accept_all(vec![item("e1", None, "d1"), item("e2", Some("src 1"), "d2"), item("e3", Some("src 1"), "d3")]).await.unwrap();
    assert_eq!(outcomes, [AcceptOutcome::Accepted, AcceptOutcome::Accepted, AcceptOutcome::Duplicate { original_event_id: "e2".into() }]);
    assert_eq!(store.queue_depth().await.unwrap(), 2, "the duplicate's delivery is not stored");
    // An item that cannot be stored (its id is taken) takes the whole batch down with it.
    let failed = store.accept_all(vec![item("e9", None, "d9"), item("e1", None, "d10")]).await;
    assert!(failed.is_err(), "{failed:?}");
    assert!(store.get_event("e9").await.unwrap().is_none(), "nothing of a failed batch is stored");
    assert_eq!(store.queue_depth().await.unwrap(), 2);
    assert_eq!(store.accept_all(Vec::new()).await.unwrap(), []);
}

async fn concurrent_duplicates_accept_exactly_one(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..50)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut event = event(&format!("e{n}"), "github", T0 + n);
                event.delivery_id = Some("gh-same".into());
                let deliveries = vec![delivery(&format!("d{n}"), &event, "t", T0)];
                store.accept_unless_duplicate(event, deliveries, Some(T0 - 60_000)).await.unwrap()
            })
        })
        .collect();
    let mut accepted = 0;
    for task in tasks {
        if task.await.unwrap() == AcceptOutcome::Accepted {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 1);
    assert_eq!(store.list_events(EventFilter::default()).await.unwrap().items.len(), 1);
    assert_eq!(store.queue_depth().await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_shares_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&dir));
    let before = store.commit_count();
    let tasks: Vec<_> = (0..200)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                let event = event(&format!("e{n}"), "github", T0 + n);
                let deliveries = vec![delivery(&format!("d{n}"), &event, "t", T0)];
                store.accept(event, deliveries).await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let commits = store.commit_count() - before;
    assert!(commits < 50, "200 accepts took {commits} transactions");
    assert_eq!(store.queue_depth().await.unwrap(), 200);
}

async fn a_failing_write_does_not_spoil_its_batch(store: Arc<dyn Store>) {
    accept_one(&*store, "taken", "r", T0).await;
    let tasks: Vec<_> = (0..40)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                // Every fourth reuses a delivery id, so it fails after its event row went in.
                let event = event(&format!("e{n}"), "r", T0 + n);
                let delivery_id = if n % 4 == 0 { "d-taken".to_string() } else { format!("d{n}") };
                let deliveries = vec![delivery(&delivery_id, &event, "t", T0)];
                (n, store.accept(event, deliveries).await)
            })
        })
        .collect();
    for task in tasks {
        let (n, result) = task.await.unwrap();
        if n % 4 == 0 {
            assert!(matches!(result, Err(StoreError::Conflict(_))), "{result:?}");
        } else {
            result.unwrap();
        }
    }
    assert_eq!(store.list_events(EventFilter::default()).await.unwrap().items.len(), 31, "the rejected accepts left no event");
    assert_eq!(store.queue_depth().await.unwrap(), 31);
    assert!(matches!(store.accept(event("taken", "r", T0), vec![]).await, Err(StoreError::Conflict(_))), "event ids are unique too");
    // Alone in its batch, a write that fails after its event row went in leaves nothing either.
    let lone = event("lone", "r", T0);
    let taken = vec![delivery("d-taken", &lone, "t", T0)];
    assert!(matches!(store.accept(lone, taken).await, Err(StoreError::Conflict(_))));
    assert!(store.get_event("lone").await.unwrap().is_none(), "the failed write left its event row");

    let event = event("stray", "r", T0);
    let mut foreign = delivery("d-stray", &event, "t", T0);
    foreign.event_id = "someone-else".into();
    assert!(matches!(store.accept(event, vec![foreign]).await, Err(StoreError::InvalidInput(_))));
}

/// Attempts that finish at the same moment (recorded together by a store that groups its
/// writes) each get the outcome, the attempt and the answer they would get alone: a stale
/// claim and a second finish of one claim are refused without spoiling the others.
async fn attempts_finished_at_once_are_each_recorded_as_if_alone(store: Arc<dyn Store>) {
    for n in 0..40 {
        accept_one(&*store, &format!("e{n}"), "r", T0).await;
    }
    let claimed = store.claim_due(T0, 40, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 40);
    let claims: std::collections::HashMap<String, i64> = claimed.iter().map(|d| (d.id.clone(), d.claim)).collect();
    let outcome_of = |n: i64| match n % 3 {
        0 => AttemptOutcome::Succeeded,
        1 => AttemptOutcome::RetryAt(T0 + 1_000 + n),
        _ => AttemptOutcome::Failed { reason: format!("gave up on {n}") },
    };
    let mut finishes = Vec::new();
    for n in 0..40i64 {
        let id = format!("d-e{n}");
        // Every tenth names a claim it does not hold; d-e5 is finished twice under its own.
        let claim = if n % 10 == 7 { claims[&id] + 1 } else { claims[&id] };
        let copies = if n == 5 { 2 } else { 1 };
        for _ in 0..copies {
            let store = store.clone();
            let id = id.clone();
            let attempt = AttemptRecord { error: Some(format!("error {n}")), ..attempt(Some(500 + n as u16), true) };
            finishes.push(tokio::spawn(async move { (n, store.finish_attempt(&id, claim, attempt, outcome_of(n), T0 + 10 + n).await) }));
        }
    }
    let mut refused = Vec::new();
    for finish in finishes {
        let (n, result) = finish.await.unwrap();
        match result {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => refused.push(n),
            Err(error) => panic!("d-e{n}: {error}"),
        }
    }
    refused.sort();
    assert_eq!(refused, [5, 7, 17, 27, 37], "the stale claims and the second finish of d-e5");
    for n in 0..40i64 {
        let (view, attempts) = store.get_delivery(&format!("d-e{n}")).await.unwrap().unwrap();
        if n % 10 == 7 {
            assert_eq!((view.status, attempts.len()), (DeliveryStatus::InFlight, 0), "d-e{n}");
            continue;
        }
        let (status, next_attempt_at, last_error) = match outcome_of(n) {
            AttemptOutcome::Succeeded => (DeliveryStatus::Succeeded, None, Some(format!("error {n}"))),
            AttemptOutcome::RetryAt(at) => (DeliveryStatus::Pending, Some(at), Some(format!("error {n}"))),
            AttemptOutcome::Failed { reason } => (DeliveryStatus::Failed, None, Some(reason)),
        };
        assert_eq!((view.status, view.next_attempt_at, view.last_error), (status, next_attempt_at, last_error), "d-e{n}");
        assert_eq!((view.attempts, view.last_status, view.updated_at), (1, Some(500 + n as u16), T0 + 10 + n), "d-e{n}");
        assert_eq!(attempts.len(), 1, "d-e{n}");
        assert_eq!(
            (attempts[0].number, attempts[0].status, attempts[0].error.clone()),
            (1, Some(500 + n as u16), Some(format!("error {n}")))
        );
        assert_eq!((attempts[0].request_url.as_str(), attempts[0].response_body.as_str()), ("https://t.example/hook", "ok"));
    }
}

async fn events_filter_by_time_name_glob_and_delivery_status_and_keep_what_they_replay(store: Arc<dyn Store>) {
    let names = ["issue_comment.created", "issue.created", "push", "100%_done", "a[b]"];
    for (n, name) in names.iter().enumerate() {
        let mut event = event(&format!("e{n}"), "r", T0 + n as i64 * 1000);
        event.event = Some(name.to_string());
        let delivery = delivery(&format!("d-e{n}"), &event, "t", T0);
        store.accept(event, vec![delivery]).await.unwrap();
    }
    let ids = |page: Page<EventView>| page.items.into_iter().map(|event| event.id).collect::<Vec<_>>();
    let named = |pattern: &str| EventFilter { event: Some(pattern.into()), ..EventFilter::default() };
    assert_eq!(ids(store.list_events(named("issue*.created")).await.unwrap()), ["e1", "e0"]);
    assert_eq!(ids(store.list_events(named("issue?created")).await.unwrap()), ["e1"]);
    assert_eq!(ids(store.list_events(named("*%_*")).await.unwrap()), ["e3"], "% and _ are literal");
    assert_eq!(ids(store.list_events(named("100?_done")).await.unwrap()), ["e3"]);
    assert_eq!(ids(store.list_events(named("a[b]*")).await.unwrap()), ["e4"], "[ is literal");
    assert_eq!(ids(store.list_events(named("push")).await.unwrap()), ["e2"]);
    assert_eq!(ids(store.list_events(named("Push")).await.unwrap()), Vec::<String>::new(), "case counts");
    assert_eq!(ids(store.list_events(named("*")).await.unwrap()).len(), 5);

    let window = EventFilter { since: Some(T0 + 1000), until: Some(T0 + 3000), ..EventFilter::default() };
    assert_eq!(ids(store.list_events(window).await.unwrap()), ["e2", "e1"], "since inclusive, until exclusive");

    store.claim_due(T0 + 10, 2, LEASE).await.unwrap();
    finish(&*store, "d-e0", attempt(Some(500), true), AttemptOutcome::Failed { reason: "down".into() }, T0).await.unwrap();
    finish(&*store, "d-e1", attempt(Some(200), true), AttemptOutcome::Succeeded, T0).await.unwrap();
    let failed = EventFilter { status: Some(DeliveryStatus::Failed), ..EventFilter::default() };
    assert_eq!(ids(store.list_events(failed).await.unwrap()), ["e0"]);
    let pending = EventFilter { status: Some(DeliveryStatus::Pending), limit: 2, ..EventFilter::default() };
    let page = store.list_events(pending.clone()).await.unwrap();
    let cursor = page.next_cursor.clone();
    assert_eq!(ids(page), ["e4", "e3"]);
    assert_eq!(ids(store.list_events(EventFilter { cursor, ..pending }).await.unwrap()), ["e2"]);

    let mut replay = event("e0-again", "r", T0 + 9000);
    replay.replay_of = Some("e0".into());
    store.accept(replay, vec![]).await.unwrap();
    assert_eq!(store.get_event("e0-again").await.unwrap().unwrap().replay_of.as_deref(), Some("e0"));
    assert_eq!(store.get_event("e0").await.unwrap().unwrap().replay_of, None);
    let listed = store.list_events(EventFilter { limit: 1, ..EventFilter::default() }).await.unwrap();
    assert_eq!(listed.items[0].replay_of.as_deref(), Some("e0"));
    let mut batched = event("e1-again", "r", T0 + 9001);
    batched.replay_of = Some("e1".into());
    let delivery = delivery("d-e1-again", &batched, "t", T0);
    store.accept_unless_duplicate(batched, vec![delivery], None).await.unwrap();
    assert_eq!(store.get_event("e1-again").await.unwrap().unwrap().replay_of.as_deref(), Some("e1"));
}

/// A relay that decided to hold a delivery on its copy of the target's record, after a
/// resume through another relay had already moved the held deliveries, hands it back due
/// at once (it would have stayed parked until the next resume); a hold decided on the
/// record as stored stays. Either way the stored record comes back.
async fn a_hold_decided_on_an_outdated_record_is_due_at_once(store: Arc<dyn Store>) {
    let change = |paused: bool| TargetUpdate {
        apply: Box::new(move |record: TargetRecord| {
            let (paused_at, up_to, to) = if paused { (Some(T0), PAUSED_UNTIL_MS, PAUSED_UNTIL_MS) } else { (None, PAUSED_UNTIL_MS, T0) };
            (TargetRecord { paused_at, ..record }, Reschedule::Move { up_to, to })
        }),
        durable: true,
    };
    let paused = store.update_target("r", "t", change(true), T0).await.unwrap();
    accept_one(&*store, "e1", "r", T0).await;
    let claimed = store.claim_due(T0, 10, LEASE).await.unwrap();
    assert_eq!(ids(&claimed), ["d-e1"]);
    let resumed = store.update_target("r", "t", change(false), T0).await.unwrap();

    let held = Held { decided_on: paused.clone(), until: PAUSED_UNTIL_MS };
    let stored = store.release_held("d-e1", claimed[0].claim, held, T0 + 10).await.unwrap();
    assert_eq!(stored, Some(resumed));
    assert_eq!(status_of(&*store, "d-e1").await.next_attempt_at, Some(T0 + 10), "due at once, not parked");

    let claimed = store.claim_due(T0 + 10, 10, LEASE).await.unwrap();
    assert_eq!(ids(&claimed), ["d-e1"]);
    let paused_again = store.update_target("r", "t", change(true), T0 + 20).await.unwrap();
    // Failures counted since do not change how the record holds.
    let decided_on = TargetRecord { failures: paused_again.failures + 3, ..paused_again.clone() };
    let held = Held { decided_on, until: PAUSED_UNTIL_MS };
    let stored = store.release_held("d-e1", claimed[0].claim, held, T0 + 30).await.unwrap();
    assert_eq!(stored, Some(paused_again));
    assert_eq!(status_of(&*store, "d-e1").await.next_attempt_at, Some(PAUSED_UNTIL_MS), "parked until resumed");
    assert!(store.claim_due(T0 + 40, 10, LEASE).await.unwrap().is_empty());
    let held = Held { decided_on: paused, until: PAUSED_UNTIL_MS };
    assert!(
        matches!(store.release_held("d-e1", claimed[0].claim, held, T0 + 40).await, Err(StoreError::Conflict(_))),
        "a claim handed back once is no longer the worker's"
    );
}

async fn target_breakers_hold_and_release_their_pending_deliveries(store: Arc<dyn Store>) {
    const HELD: i64 = T0 + 10_000;
    const PROBING: i64 = T0 + 20_000;
    const FAR: i64 = T0 + 1_000_000_000;
    fn update(apply: impl FnOnce(TargetRecord) -> (TargetRecord, Reschedule) + Send + 'static) -> TargetUpdate {
        TargetUpdate { apply: Box::new(apply), durable: false }
    }
    for n in 0..3 {
        accept_one(&*store, &format!("e{n}"), "r", T0).await;
    }
    let other = event("o", "r", T0);
    let other_delivery = delivery("d-o", &other, "elsewhere", T0);
    store.accept(other, vec![other_delivery]).await.unwrap();
    assert!(store.target_records().await.unwrap().is_empty(), "no record: closed");
    let count =
        || update(|mut record| (TargetRecord { failures: record.failures + 1, ..std::mem::take(&mut record) }, Reschedule::Nothing));
    let once = store.update_target("r", "t", count(), T0).await.unwrap();
    assert_eq!((once.route.as_str(), once.target.as_str(), once.failures), ("r", "t", 1));
    assert_eq!(store.update_target("r", "t", count(), T0).await.unwrap().failures, 2, "each update sees the stored record");
    let hold = update(|record| (TargetRecord { blocked_until: Some(HELD), ..record }, Reschedule::Move { up_to: HELD, to: HELD }));
    let held = store.update_target("r", "t", hold, T0).await.unwrap();
    assert_eq!(store.target_records().await.unwrap(), vec![held]);
    // Its pending deliveries wait; another target's do not.
    let due: Vec<String> = store.claim_due(T0 + 1, 10, LEASE).await.unwrap().into_iter().map(|d| d.id).collect();
    assert_eq!(due, ["d-o"]);
    assert!(!store.take_probe("r", "t", PROBING, T0 + 1).await.unwrap(), "no probe while held");
    assert!(store.take_probe("r", "t", PROBING, HELD).await.unwrap(), "then one probe");
    assert!(!store.take_probe("r", "t", PROBING, HELD + 1).await.unwrap(), "and only one");
    let claimed = store.claim_due(HELD, 10, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 3, "due again once held no longer");
    for delivery in &claimed {
        store.release(&delivery.id, delivery.claim, PROBING, HELD).await.unwrap();
    }
    // Closed again: everything held up to the probe's end is due at once.
    let close = update(|record| {
        (
            TargetRecord { route: record.route, target: record.target, ..TargetRecord::default() },
            Reschedule::Move { up_to: PROBING, to: HELD },
        )
    });
    let closed = store.update_target("r", "t", close, HELD).await.unwrap();
    assert_eq!((closed.failures, closed.blocked_until, closed.probe_until), (0, None, None));
    let claimed = store.claim_due(HELD, 10, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 3);
    for delivery in &claimed {
        store.release(&delivery.id, delivery.claim, HELD, HELD).await.unwrap();
    }

    let pause = TargetUpdate {
        apply: Box::new(|record| {
            (
                TargetRecord { paused_at: Some(HELD), paused_reason: Some("by hand".into()), ..record },
                Reschedule::Move { up_to: FAR, to: FAR },
            )
        }),
        durable: true,
    };
    let paused = store.update_target("r", "t", pause, HELD).await.unwrap();
    assert_eq!(paused.paused_reason.as_deref(), Some("by hand"));
    let claimed = store.claim_due(FAR - 1, 10, LEASE).await.unwrap();
    assert!(claimed.iter().all(|d| d.target != "t"), "held until resumed");
    let mut queued = store.queued_by_target().await.unwrap();
    queued.sort();
    assert_eq!(queued, [("r".to_string(), "elsewhere".to_string(), 1), ("r".to_string(), "t".to_string(), 3)]);
    let resume =
        update(|record| (TargetRecord { paused_at: None, paused_reason: None, ..record }, Reschedule::Move { up_to: FAR, to: PROBING }));
    assert_eq!(store.update_target("r", "t", resume, PROBING).await.unwrap().paused_at, None);
    let claimed = store.claim_due(PROBING, 10, LEASE).await.unwrap();
    assert_eq!(claimed.iter().filter(|d| d.target == "t").count(), 3, "due at once when resumed");
}

async fn pages_have_no_gaps_or_duplicates(store: Arc<dyn Store>) {
    for n in 0..25 {
        let route = if n % 5 == 0 { "gitlab" } else { "github" };
        accept_one(&*store, &format!("e{n:02}"), route, T0 + n).await;
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = store.list_events(EventFilter { limit: 10, cursor, ..EventFilter::default() }).await.unwrap();
        pages += 1;
        seen.extend(page.items.iter().map(|event| event.id.clone()));
        assert!(page.items.iter().all(|event| event.deliveries.is_empty()));
        // An event arriving while paging shows up on no later page.
        accept_one(&*store, &format!("new{pages}"), "github", T0 + 1_000).await;
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..25).rev().map(|n| format!("e{n:02}")).collect();
    assert_eq!(seen, expected, "newest first, each once");

    let gitlab = store.list_events(EventFilter { route: Some("gitlab".into()), ..EventFilter::default() }).await.unwrap();
    assert_eq!(gitlab.items.iter().map(|event| event.id.as_str()).collect::<Vec<_>>(), ["e20", "e15", "e10", "e05", "e00"]);
    assert_eq!(gitlab.next_cursor, None);
    let none = store.list_events(EventFilter { event: Some("release".into()), ..EventFilter::default() }).await.unwrap();
    assert!(none.items.is_empty());
    assert!(matches!(
        store.list_events(EventFilter { cursor: Some("not-a-cursor".into()), ..EventFilter::default() }).await,
        Err(StoreError::InvalidInput(_))
    ));

    store.claim_due(T0 + 2, 3, LEASE).await.unwrap();
    finish(&*store, "d-e00", attempt(Some(200), true), AttemptOutcome::Succeeded, T0).await.unwrap();
    finish(&*store, "d-e01", attempt(Some(410), true), AttemptOutcome::Failed { reason: "gone".into() }, T0).await.unwrap();
    let by_status = |status| DeliveryFilter { status: Some(status), ..DeliveryFilter::default() };
    let failed = store.list_deliveries(by_status(DeliveryStatus::Failed)).await.unwrap();
    assert_eq!(failed.items.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["d-e01"]);
    assert_eq!(store.list_deliveries(by_status(DeliveryStatus::InFlight)).await.unwrap().items.len(), 1);
    let gitlab_pending =
        DeliveryFilter { status: Some(DeliveryStatus::Pending), route: Some("gitlab".into()), ..DeliveryFilter::default() };
    let gitlab_pending = store.list_deliveries(gitlab_pending).await.unwrap();
    assert_eq!(gitlab_pending.items.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["d-e20", "d-e15", "d-e10", "d-e05"]);
    let all = store.list_deliveries(DeliveryFilter { limit: 0, ..DeliveryFilter::default() }).await.unwrap();
    assert_eq!(all.items.len(), 1, "limit is clamped to at least 1");
    let big = store.list_deliveries(DeliveryFilter { limit: 10_000, target: Some("t".into()), ..DeliveryFilter::default() }).await.unwrap();
    assert_eq!(big.items.len(), 28);
    assert_eq!(big.items.iter().map(|d| &d.id).collect::<HashSet<_>>().len(), 28);
    assert!(store
        .list_deliveries(DeliveryFilter { target: Some("other".into()), ..DeliveryFilter::default() })
        .await
        .unwrap()
        .items
        .is_empty());
}

async fn prune_keeps_events_with_unfinished_deliveries(store: Arc<dyn Store>) {
    for n in 0..4 {
        accept_one(&*store, &format!("e{n}"), "r", T0 + n).await;
    }
    let no_deliveries = event("bare", "r", T0);
    store.accept(no_deliveries, vec![]).await.unwrap();
    store.accept(event("recent", "r", T0 + 10_000), vec![]).await.unwrap();

    store.claim_due(T0 + 3, 3, LEASE).await.unwrap(); // e0, e1, e2 in flight; e3 pending
    finish(&*store, "d-e0", attempt(Some(200), true), AttemptOutcome::Succeeded, T0).await.unwrap();
    finish(&*store, "d-e1", attempt(Some(400), true), AttemptOutcome::Failed { reason: "400".into() }, T0).await.unwrap();

    assert_eq!(store.prune(T0 + 5_000).await.unwrap(), 3, "e0, e1 and bare");
    for gone in ["e0", "e1", "bare"] {
        assert!(store.get_event(gone).await.unwrap().is_none(), "{gone}");
    }
    assert!(store.get_delivery("d-e0").await.unwrap().is_none(), "deliveries go with their event");
    for kept in ["e2", "e3", "recent"] {
        assert!(store.get_event(kept).await.unwrap().is_some(), "{kept}");
    }
    assert_eq!(store.prune(T0 + 5_000).await.unwrap(), 0);
}

async fn kept_unmatched_requests_are_pruned_by_age_and_count(store: Arc<dyn Store>) {
    for n in 0..6 {
        store.accept(event(&format!("u{n}"), UNMATCHED_ROUTE, T0 + n * 1_000), vec![]).await.unwrap();
    }
    accept_one(&*store, "routed", "r", T0).await;
    let unmatched = EventFilter { route: Some(UNMATCHED_ROUTE.into()), ..EventFilter::default() };
    let ids = |page: Page<EventView>| page.items.into_iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(ids(store.list_events(unmatched.clone()).await.unwrap()), ["u5", "u4", "u3", "u2", "u1", "u0"]);
    // Older than T0 + 1.5 s: u0 and u1; beyond the newest 3: u2 as well.
    assert_eq!(store.prune_unmatched(T0 + 1_500, 3).await.unwrap(), 3);
    assert_eq!(ids(store.list_events(unmatched.clone()).await.unwrap()), ["u5", "u4", "u3"]);
    assert_eq!(store.prune_unmatched(T0, 10).await.unwrap(), 0, "nothing past either bound");
    assert_eq!(store.prune_unmatched(T0 + 10_000, 10).await.unwrap(), 3);
    assert!(store.get_event("routed").await.unwrap().is_some(), "events a route took are not touched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_works_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&dir));
    let tasks: Vec<_> = (0..2_500)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move { store.accept(event(&format!("e{n}"), "r", T0), vec![]).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let before = store.commit_count();
    assert_eq!(store.prune(T0 + 1).await.unwrap(), 2_500);
    assert_eq!(store.commit_count() - before, 3);
    assert!(store.list_events(EventFilter::default()).await.unwrap().items.is_empty());
}

async fn attempt_bodies_are_cut_to_64_kib(store: Arc<dyn Store>) {
    let event = event("e1", "r", T0);
    let mut big = delivery("d1", &event, "t", T0);
    big.request.body = Bytes::from(vec![b'a'; 200_000]);
    store.accept(event, vec![big]).await.unwrap();
    let claimed = store.claim_due(T0, 1, LEASE).await.unwrap();
    assert_eq!(claimed[0].request.body.len(), 200_000, "the request to send is kept whole");

    let mut record = attempt(Some(200), true);
    record.request_body = Bytes::from(vec![b'q'; MAX_STORED_BODY + 1]);
    record.response_body = Bytes::from(vec![b'r'; 1_000_000]);
    finish(&*store, "d1", record, AttemptOutcome::Succeeded, T0).await.unwrap();
    let (_, attempts) = store.get_delivery("d1").await.unwrap().unwrap();
    assert_eq!(attempts[0].request_body.len(), MAX_STORED_BODY);
    assert_eq!(attempts[0].response_body.len(), MAX_STORED_BODY);
}

async fn api_route_crud(store: Arc<dyn Store>) {
    let definition = json!({"path": "/hooks/b", "targets": [{"url": "https://b.example"}], "a": 1});
    let created = store.insert_route("beta", definition.clone(), T0).await.unwrap();
    assert_eq!(created, StoredRoute { name: "beta".into(), definition: definition.clone(), created_at: T0, updated_at: T0 });
    store.insert_route("alpha", json!({"path": "/a"}), T0).await.unwrap();
    assert!(matches!(store.insert_route("beta", json!({}), T0).await, Err(StoreError::Conflict(_))));

    let fetched = store.get_route("beta").await.unwrap().unwrap();
    assert_eq!(fetched.definition.as_object().unwrap().keys().collect::<Vec<_>>(), ["path", "targets", "a"], "key order kept");
    let names: Vec<_> = store.list_routes().await.unwrap().into_iter().map(|route| route.name).collect();
    assert_eq!(names, ["alpha", "beta"]);

    let updated = store.update_route("beta", json!({"path": "/b2"}), T0 + 5).await.unwrap();
    assert_eq!((updated.definition, updated.created_at, updated.updated_at), (json!({"path": "/b2"}), T0, T0 + 5));
    assert!(matches!(store.update_route("gamma", json!({}), T0).await, Err(StoreError::NotFound)));

    assert!(store.delete_route("beta").await.unwrap());
    assert!(!store.delete_route("beta").await.unwrap());
    assert!(store.get_route("beta").await.unwrap().is_none());
}

#[tokio::test]
async fn migrations_apply_in_order_and_newer_schemas_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hookrelay.db");
    let store = SqliteStore::open(&path).unwrap();
    accept_one(&store, "e1", "r", T0).await;
    store.close().await.unwrap();

    let version = |path: &Path| -> i64 {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.pragma_query_value(None, "user_version", |row| row.get(0)).unwrap()
    };
    assert_eq!(version(&path), schema::MIGRATIONS.len() as i64);

    let mut next: Vec<&str> = schema::MIGRATIONS.to_vec();
    next.push("CREATE TABLE later (x INTEGER);");
    let store = SqliteStore::open_with(&path, &next).unwrap();
    assert!(store.get_event("e1").await.unwrap().is_some(), "data kept across a migration");
    store.close().await.unwrap();
    assert_eq!(version(&path), next.len() as i64);

    match SqliteStore::open(&path) {
        Err(StoreError::SchemaTooNew { found, known }) => assert_eq!((found, known), (next.len() as i64, schema::MIGRATIONS.len() as i64)),
        other => panic!("expected SchemaTooNew, got {:?}", other.err()),
    }
}

#[tokio::test]
async fn writes_are_fsynced_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    // synchronous = FULL (2): a commit fsyncs the WAL, so an acknowledged event survives power loss.
    assert_eq!(store.writer_pragma("synchronous").await.unwrap(), "Integer(2)");
    assert_eq!(store.writer_pragma("journal_mode").await.unwrap(), r#"Text("wal")"#);
    assert_eq!(store.writer_pragma("foreign_keys").await.unwrap(), "Integer(1)");
    // A batch of unsynced writes (a claim) commits without the fsync, and the connection
    // is back to FULL for the next accept.
    accept_one(&store, "e1", "r", T0).await;
    assert_eq!(store.claim_due(T0, 1, LEASE).await.unwrap().len(), 1);
    assert_eq!(store.writer_pragma("synchronous").await.unwrap(), "Integer(2)");
}

#[cfg(unix)]
#[tokio::test]
async fn database_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    accept_one(&store, "e1", "r", T0).await;
    for name in ["hookrelay.db", "hookrelay.db-wal"] {
        let mode = std::fs::metadata(dir.path().join("data").join(name)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
}

async fn store_is_usable_as_a_trait_object(store: Arc<dyn Store>) {
    let event = event("e1", "r", T0);
    store.accept(event.clone(), vec![delivery("d1", &event, "t", T0)]).await.unwrap();
    assert_eq!(store.queue_depth().await.unwrap(), 1);
    store.close().await.unwrap();
    store.close().await.unwrap();
    assert!(matches!(store.accept(event, vec![]).await, Err(StoreError::Closed)));
}

#[test]
fn statuses_round_trip() {
    for status in
        [DeliveryStatus::Pending, DeliveryStatus::InFlight, DeliveryStatus::Succeeded, DeliveryStatus::Failed, DeliveryStatus::Cancelled]
    {
        assert_eq!(status.as_str().parse::<DeliveryStatus>().unwrap(), status);
        assert_eq!(serde_json::to_value(status).unwrap(), json!(status.as_str()));
    }
    assert!("dead".parse::<DeliveryStatus>().is_err());
}

/// A delivery retried while its receiver is down: each attempt stores only what differs
/// from the delivery's request, yet reads back whole; answers of attempts that were retried
/// are cut to `MAX_EARLIER_ANSWER`, the last one is kept whole.
async fn retried_attempts_store_only_what_differs_and_read_back_whole(store: Arc<dyn Store>) {
    let sent = accept_one(&*store, "e1", "r", T0).await;
    let long_answer = Bytes::from(vec![b'x'; 5000]);
    let same_request = AttemptRecord {
        request_url: None,
        request_headers: sent.request.headers.clone(),
        request_body: sent.request.body.clone(),
        status: Some(503),
        response_body: long_answer.clone(),
        error: Some("answer 503".into()),
        ..attempt(Some(503), true)
    };
    for round in 0..3 {
        store.claim_due(T0 + round, 1, LEASE).await.unwrap();
        let outcome = if round < 2 { AttemptOutcome::RetryAt(T0 + round + 1) } else { AttemptOutcome::Failed { reason: "503".into() } };
        // The second with a credential added at send time (masked), after the delivery's headers.
        let mut sent_as = same_request.clone();
        if round == 1 {
            sent_as.request_headers.push(("authorization".into(), "[redacted]".into()));
        }
        finish(&*store, "d-e1", sent_as, outcome, T0 + round).await.unwrap();
    }
    // A signed retry: its headers and URL differ from the stored request, so they are stored.
    store.retry_now("d-e1", T0 + 10).await.unwrap();
    store.claim_due(T0 + 10, 1, LEASE).await.unwrap();
    let signed_url = format!("{}?sign=[redacted]", sent.request.url);
    let signed = AttemptRecord {
        request_url: Some(signed_url.clone()),
        request_headers: vec![("webhook-signature".into(), "[redacted]".into())],
        status: Some(200),
        response_body: Bytes::from_static(b"ok"),
        error: None,
        ..same_request.clone()
    };
    finish(&*store, "d-e1", signed, AttemptOutcome::Succeeded, T0 + 11).await.unwrap();

    let (_, attempts) = store.get_delivery("d-e1").await.unwrap().unwrap();
    assert_eq!(attempts.len(), 4);
    for attempt in &attempts[..3] {
        assert_eq!((attempt.request_url.as_str(), attempt.request_body.as_str()), (sent.request.url.as_str(), r#"{"text":"hi"}"#));
    }
    assert_eq!((attempts[3].request_url.as_str(), attempts[3].request_body.as_str()), (signed_url.as_str(), r#"{"text":"hi"}"#));
    assert_eq!(attempts[0].request_headers, sent.request.headers);
    let with_credential = [sent.request.headers.clone(), vec![("authorization".to_string(), "[redacted]".to_string())]].concat();
    assert_eq!((&attempts[1].request_headers, &attempts[2].request_headers), (&with_credential, &sent.request.headers));
    assert_eq!(attempts[3].request_headers, vec![("webhook-signature".to_string(), "[redacted]".to_string())]);
    let answer_sizes: Vec<usize> = attempts.iter().map(|a| a.response_body.len()).collect();
    assert_eq!(answer_sizes, [MAX_EARLIER_ANSWER, MAX_EARLIER_ANSWER, 5000, 2], "retried answers cut, final ones whole");
    let errors: Vec<Option<&str>> = attempts.iter().map(|a| a.error.as_deref()).collect();
    assert_eq!(errors, [Some("answer 503"), Some("answer 503"), Some("answer 503"), None]);
}

/// Attempts written before the compact layout (schema v2 kept a full copy of the request
/// in every attempt) read back the same after the migration.
#[tokio::test]
async fn attempts_from_schema_v2_survive_the_migration() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hookrelay.db");
    SqliteStore::open_with(&path, &schema::MIGRATIONS[..2]).unwrap().close().await.unwrap();
    // Rows as v2 code wrote them: every attempt with a full copy of its request.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(&format!(
            "INSERT INTO events (id, received_at, route, method, path, headers, body) VALUES ('e1', {T0}, 'r', 'POST', '/', '[]', x'7b7d');
             INSERT INTO deliveries (id, event_id, route, target, req_method, req_url, req_headers, req_body, status, attempts,
                                     next_attempt_at, created_at, updated_at, guarded)
             VALUES ('d-e1', 'e1', 'r', 't', 'PUT', 'https://old/hook', '[]', x'6f6c64', 'pending', 1, {T0}, {T0}, {T0}, 0);
             INSERT INTO attempts VALUES ((SELECT seq FROM deliveries WHERE id = 'd-e1'), 1, {T0}, 5, 'https://old/hook', 'PUT',
                                          '[[\"x-old\",\"1\"]]', x'6f6c64', 502, '[]', x'6261642067617465776179', 'bad', 1);"
        ))
        .unwrap();

    let store = SqliteStore::open(&path).unwrap();
    let (_, attempts) = store.get_delivery("d-e1").await.unwrap().unwrap();
    let old = &attempts[0];
    assert_eq!((old.request_url.as_str(), old.request_method.as_str(), old.request_body.as_str()), ("https://old/hook", "PUT", "old"));
    assert_eq!(old.request_headers, vec![("x-old".to_string(), "1".to_string())]);
    assert_eq!((old.status, old.response_body.as_str(), old.error.as_deref()), (Some(502), "bad gateway", Some("bad")));
    // And the rebuilt claim index still serves claims.
    let claimed = store.claim_due(T0 + 1, 1, LEASE).await.unwrap();
    assert_eq!((claimed[0].id.as_str(), &claimed[0].request.body[..]), ("d-e1", &b"old"[..]));
}

/// A delivery forwarding its event's body unchanged points at the event's copy: stored
/// once, read back (claim, view, attempts) as if it had its own.
async fn a_delivery_forwarding_the_event_body_does_not_store_it_again(store: Arc<dyn Store>) {
    let event = event("e1", "r", T0);
    let mut forwarded = delivery("d-e1", &event, "t", T0);
    forwarded.request.body = event.body.clone();
    store.accept(event.clone(), vec![forwarded]).await.unwrap();

    let claimed = store.claim_due(T0, 1, LEASE).await.unwrap();
    assert_eq!(claimed[0].request.body, event.body);
    let same =
        AttemptRecord { request_url: Some(claimed[0].request.url.clone()), request_body: event.body.clone(), ..attempt(Some(200), true) };
    finish(&*store, "d-e1", same, AttemptOutcome::Succeeded, T0 + 1).await.unwrap();
    let (view, attempts) = store.get_delivery("d-e1").await.unwrap().unwrap();
    assert_eq!((view.request.body.as_str(), attempts[0].request_body.as_str()), (r#"{"ref":"main"}"#, r#"{"ref":"main"}"#));
    assert_eq!(store.get_event("e1").await.unwrap().unwrap().deliveries[0].request.body, r#"{"ref":"main"}"#);
}

/// An attempt's request body reads back cut to `MAX_STORED_BODY`, also when the attempt
/// stores none of its own (the same body as the delivery's, which is kept whole).
async fn attempt_bodies_read_back_within_the_bound(store: Arc<dyn Store>) {
    let event = event("e1", "r", T0);
    let mut large = delivery("d-e1", &event, "t", T0);
    large.request.body = Bytes::from(vec![b'a'; MAX_STORED_BODY + 10]);
    store.accept(event, vec![large.clone()]).await.unwrap();
    store.claim_due(T0, 1, LEASE).await.unwrap();
    let same = AttemptRecord { request_url: None, request_body: large.request.body.clone(), ..attempt(Some(200), true) };
    finish(&*store, "d-e1", same, AttemptOutcome::Succeeded, T0 + 1).await.unwrap();
    let (view, attempts) = store.get_delivery("d-e1").await.unwrap().unwrap();
    assert_eq!((view.request.body.len(), attempts[0].request_body.len()), (MAX_STORED_BODY + 10, MAX_STORED_BODY));
}

#[test]
fn cuts_never_split_a_utf8_character() {
    let text = "ab€".as_bytes(); // '€' is 3 bytes, at 2..5
    assert_eq!(record::cut(text, 5), text);
    assert_eq!(record::cut(text, 4), b"ab");
    assert_eq!(record::cut(text, 3), b"ab");
    assert_eq!(record::cut(text, 2), b"ab");
    assert_eq!(record::cut(&[0xff, 0x80, 0x80, 0x80, 0x80], 4), &[0xff], "binary: backs off 3 bytes at most");
}

/// What the SQLite rows hold after [`retried_attempts_store_only_what_differs_and_read_back_whole`].
#[tokio::test]
async fn sqlite_stores_a_retried_request_once_and_a_repeated_error_once() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(open(&dir));
    retried_attempts_store_only_what_differs_and_read_back_whole(store.clone()).await;
    store.close().await.unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("data/hookrelay.db")).unwrap();
    type StoredRequestColumns = (Option<String>, Option<String>, Option<Vec<u8>>);
    let stored: Vec<StoredRequestColumns> = conn
        .prepare("SELECT request_url, request_headers, request_body FROM attempts ORDER BY number")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(stored[..3], [(None, None, None), (None, None, None), (None, None, None)], "the same request is not stored again");
    let added: Vec<Option<String>> = conn
        .prepare("SELECT request_headers_added FROM attempts ORDER BY number")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(added, [None, Some(r#"[["authorization","[redacted]"]]"#.to_string()), None, None], "only the added header is stored");
    let (url, headers, body) = &stored[3];
    assert!(url.as_deref().is_some_and(|url| url.ends_with("?sign=[redacted]")), "{url:?}");
    assert_eq!((headers.as_deref(), body), (Some(r#"[["webhook-signature","[redacted]"]]"#), &None));
    let errors: Vec<(Option<String>, Option<i64>)> = conn
        .prepare("SELECT error, error_repeats FROM attempts ORDER BY number")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        errors,
        [(Some("answer 503".to_string()), None), (None, Some(1)), (None, Some(1)), (None, None)],
        "a repeated error is stored once"
    );
}

/// What the SQLite rows hold after [`a_delivery_forwarding_the_event_body_does_not_store_it_again`].
#[tokio::test]
async fn sqlite_stores_a_forwarded_event_body_once() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(open(&dir));
    a_delivery_forwarding_the_event_body_does_not_store_it_again(store.clone()).await;
    store.close().await.unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("data/hookrelay.db")).unwrap();
    let (own, attempt_body): (Vec<u8>, Option<Vec<u8>>) = conn
        .query_row("SELECT d.req_body, a.request_body FROM deliveries d JOIN attempts a ON a.delivery_seq = d.seq", [], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .unwrap();
    assert_eq!((own, attempt_body), (Vec::new(), None), "the body is the event's, stored once");
}

/// Replicas starting together migrate once; a schema newer than the build is refused, one
/// step newer than it is kept with its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migrates_once_under_concurrent_starts_and_refuses_newer_schemas() {
    let Some(url) = postgres_cluster::fresh_database("postgres_migrates_once_under_concurrent_starts_and_refuses_newer_schemas").await
    else {
        return;
    };
    let starts: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn({
                let url = url.clone();
                async move { PostgresStore::connect(&url).await }
            })
        })
        .collect();
    let mut stores = Vec::new();
    for start in starts {
        stores.push(start.await.unwrap().unwrap());
    }
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let versions: Vec<i32> =
        client.query("SELECT version FROM hookrelay_schema ORDER BY version", &[]).await.unwrap().iter().map(|row| row.get(0)).collect();
    assert_eq!(versions, (1..=postgres::schema::MIGRATIONS.len() as i32).collect::<Vec<_>>(), "each step applied once");
    accept_one(&stores[0], "e1", "r", now_ms()).await;

    use postgres::schema::{Migration, MIGRATIONS};
    let known = MIGRATIONS.len() as i32;
    // The next release only adds a column: this one keeps running (and restarting) beside it.
    let mut next: Vec<Migration> = MIGRATIONS.iter().map(|step| Migration { sql: step.sql, readable_from: step.readable_from }).collect();
    next.push(Migration { sql: "ALTER TABLE hookrelay_events ADD COLUMN later text;", readable_from: known });
    let upgraded = PostgresStore::connect_with(&url, &next, false).await.unwrap();
    assert_eq!(upgraded.queue_depth().await.unwrap(), 1, "pending deliveries kept across a migration");
    let older = PostgresStore::connect(&url).await.expect("a release one expand step behind still starts");
    assert_eq!(older.queue_depth().await.unwrap(), 1);
    // The one after drops what this release reads: this release is refused, with the reason.
    next.push(Migration { sql: "ALTER TABLE hookrelay_events DROP COLUMN later;", readable_from: known + 2 });
    PostgresStore::connect_with(&url, &next, false).await.unwrap();
    match PostgresStore::connect(&url).await {
        Err(StoreError::SchemaTooNew { found, known }) => assert_eq!((found, known), (next.len() as i64, MIGRATIONS.len() as i64)),
        other => panic!("expected SchemaTooNew, got {:?}", other.err()),
    }
}

/// The step that holds claim tokens to in-flight deliveries clears a stray token first, so
/// that a later update of that row (a pause moving pending deliveries) cannot fail on it;
/// from then on the database refuses a token on a delivery not in flight.
#[tokio::test]
async fn postgres_claim_tokens_belong_to_in_flight_deliveries_after_the_upgrade() {
    let Some(url) = postgres_cluster::fresh_database("postgres_claim_tokens_belong_to_in_flight_deliveries_after_the_upgrade").await else {
        return;
    };
    use postgres::schema::MIGRATIONS;
    let before = PostgresStore::connect_with(&url, &MIGRATIONS[..4], true).await.unwrap();
    accept_one(&before, "e1", "r", T0).await;
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client.execute("UPDATE hookrelay_deliveries SET claim_token = 42 WHERE id = 'd-e1'", &[]).await.unwrap();

    let store = open_postgres_at(&url).await;
    let token: Option<i64> = client.query_one("SELECT claim_token FROM hookrelay_deliveries WHERE id = 'd-e1'", &[]).await.unwrap().get(0);
    assert_eq!(token, None, "the stray token was cleared");
    assert_eq!(status_of(&store, "d-e1").await.status, DeliveryStatus::Pending);
    let stray = client.execute("UPDATE hookrelay_deliveries SET claim_token = 42 WHERE id = 'd-e1'", &[]).await;
    let refused = stray.unwrap_err();
    assert_eq!(refused.as_db_error().and_then(|db| db.constraint()), Some("hookrelay_deliveries_claimed_in_flight"), "{refused:?}");
    let claimed = store.claim_due(T0, 1, LEASE).await.unwrap();
    assert_eq!(ids(&claimed), ["d-e1"]);
    store.finish_attempt("d-e1", claimed[0].claim, attempt(Some(200), true), AttemptOutcome::Succeeded, T0 + 1).await.unwrap();
    assert_eq!(status_of(&store, "d-e1").await.status, DeliveryStatus::Succeeded);
}

/// Two relays' stores claiming from one database at once: every delivery is handed out
/// exactly once, and of an ordered key never two at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_never_share_a_claim() {
    let Some(url) = postgres_cluster::fresh_database("postgres_replicas_never_share_a_claim").await else { return };
    let stores: Vec<Arc<dyn Store>> =
        vec![Arc::new(PostgresStore::connect(&url).await.unwrap()), Arc::new(PostgresStore::connect(&url).await.unwrap())];
    let now = now_ms();
    for n in 0..300 {
        let event = event(&format!("e{n}"), "r", now);
        let mut delivery = delivery(&format!("d{n:03}"), &event, "t", now);
        delivery.ordered_key = (n % 3 == 0).then(|| format!("key-{}", n % 2));
        stores[n % 2].accept(event, vec![delivery]).await.unwrap();
    }
    let in_flight: Arc<std::sync::Mutex<HashSet<String>>> = Arc::default();
    let claimed: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let workers: Vec<_> = stores
        .iter()
        .cloned()
        .map(|store| {
            let (in_flight, claimed) = (in_flight.clone(), claimed.clone());
            tokio::spawn(async move {
                let mut idle = 0;
                while idle < 5 {
                    let batch = store.claim_due(now_ms(), 7, LEASE).await.unwrap();
                    idle = if batch.is_empty() { idle + 1 } else { 0 };
                    for delivery in &batch {
                        claimed.lock().unwrap().push(delivery.id.clone());
                        let number: usize = delivery.id[1..].parse().unwrap();
                        if number.is_multiple_of(3) {
                            let key = format!("key-{}", number % 2);
                            assert!(in_flight.lock().unwrap().insert(key.clone()), "two deliveries of {key} in flight");
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    for delivery in batch {
                        let number: usize = delivery.id[1..].parse().unwrap();
                        if number.is_multiple_of(3) {
                            in_flight.lock().unwrap().remove(&format!("key-{}", number % 2));
                        }
                        store
                            .finish_attempt(&delivery.id, delivery.claim, attempt(Some(200), true), AttemptOutcome::Succeeded, now_ms())
                            .await
                            .unwrap();
                    }
                    if idle > 0 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let claimed = claimed.lock().unwrap().clone();
    let unique: HashSet<&String> = claimed.iter().collect();
    assert_eq!((claimed.len(), unique.len()), (300, 300), "each delivery claimed exactly once");
    assert_eq!(stores[0].queue_depth().await.unwrap(), 0);
}

/// A relay whose clock is an hour ahead still schedules on the database's clock: what it
/// accepts is due at once, and a retry in a minute is a minute from the database's now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_schedules_on_the_database_clock() {
    let Some(url) = postgres_cluster::fresh_database("postgres_schedules_on_the_database_clock").await else { return };
    let store = PostgresStore::connect(&url).await.unwrap();
    let skewed = now_ms() + 3_600_000;
    accept_one(&store, "e1", "r", skewed).await;
    let claimed = store.claim_due(skewed, 10, LEASE).await.unwrap();
    assert_eq!(ids(&claimed), ["d-e1"], "due at once although the relay's clock says in an hour");
    store
        .finish_attempt("d-e1", claimed[0].claim, attempt(Some(503), true), AttemptOutcome::RetryAt(skewed + 60_000), skewed)
        .await
        .unwrap();
    let due = status_of(&store, "d-e1").await.next_attempt_at.unwrap();
    let from_real_now = due - now_ms();
    assert!((55_000..=60_000).contains(&from_real_now), "due {from_real_now} ms from the real now");
    assert!(store.claim_due(skewed + 120_000, 10, LEASE).await.unwrap().is_empty(), "the relay's clock cannot make it due early");
}

/// A paused target's deliveries are parked at the pause's mark and all come back on resume,
/// however far the relay's clock is from the database's and however long each waited to
/// be written (the mark is stored exactly, not as an offset from the database's now).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_resume_finds_every_delivery_its_pause_parked() {
    let Some(url) = postgres_cluster::fresh_database("postgres_resume_finds_every_delivery_its_pause_parked").await else { return };
    let store = PostgresStore::connect(&url).await.unwrap();
    let relay_now = now_ms() - 1_234;
    let pause = TargetUpdate {
        apply: Box::new(move |mut record: TargetRecord| {
            record.paused_at = Some(relay_now);
            (record, Reschedule::Move { up_to: PAUSED_UNTIL_MS, to: PAUSED_UNTIL_MS })
        }),
        durable: true,
    };
    store.update_target("r", "t", pause, relay_now).await.unwrap();
    // Accepted while paused (held at the mark), one through each way in: the batch of plain
    // accepts, an accept with a duplicate check, and a claim handed back.
    let first = event("e1", "r", relay_now);
    store.accept(first.clone(), vec![delivery("d-e1", &first, "t", PAUSED_UNTIL_MS)]).await.unwrap();
    let mut second = event("e2", "r", relay_now - 5_000);
    second.delivery_id = Some("x-2".into());
    store.accept_unless_duplicate(second.clone(), vec![delivery("d-e2", &second, "t", PAUSED_UNTIL_MS)], Some(0)).await.unwrap();
    accept_one(&store, "e3", "r", relay_now).await;
    let claimed = store.claim_due(relay_now, 10, LEASE).await.unwrap();
    assert_eq!(ids(&claimed), ["d-e3"]);
    store.release("d-e3", claimed[0].claim, PAUSED_UNTIL_MS, relay_now + 777).await.unwrap();
    for id in ["d-e1", "d-e2", "d-e3"] {
        assert_eq!(status_of(&store, id).await.next_attempt_at, Some(PAUSED_UNTIL_MS), "{id} is parked at the mark");
    }
    let later = relay_now + 2_500;
    let resume = TargetUpdate {
        apply: Box::new(move |mut record: TargetRecord| {
            record.paused_at = None;
            (record, Reschedule::Move { up_to: PAUSED_UNTIL_MS, to: later })
        }),
        durable: true,
    };
    store.update_target("r", "t", resume, later).await.unwrap();
    let due = store.claim_due(later, 10, LEASE).await.unwrap();
    assert_eq!(due.len(), 3, "every parked delivery is due again: {:?}", ids(&due));
}

/// The SQL that keeps a pause's mark exact names the mark's value.
#[test]
fn the_due_time_sql_names_the_pause_mark() {
    let due = postgres::db_due_sql();
    assert!(due.contains(&PAUSED_UNTIL_MS.to_string()), "{due}");
    assert!(due.contains(&(PAUSED_UNTIL_MS - 86_400_000).to_string()), "{due}");
    assert!(postgres::db_due_up_to_sql().contains(&(PAUSED_UNTIL_MS + 86_400_000).to_string()));
}

/// A prune on one relay never deletes an event whose delivery another relay is retrying by
/// hand at that moment: the retry holds the event, and the prune passes it by.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_prune_passes_by_an_event_being_retried() {
    let Some(url) = postgres_cluster::fresh_database("postgres_prune_passes_by_an_event_being_retried").await else { return };
    let store = open_postgres_at(&url).await;
    accept_one(&store, "e1", "r", T0).await;
    let claimed = store.claim_due(T0, 1, LEASE).await.unwrap();
    let failed = AttemptOutcome::Failed { reason: "410".into() };
    store.finish_attempt("d-e1", claimed[0].claim, attempt(Some(410), true), failed, T0 + 1).await.unwrap();

    let (mut client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let retrying = client.transaction().await.unwrap();
    retrying.execute("SELECT 1 FROM hookrelay_events WHERE id = 'e1' FOR KEY SHARE", &[]).await.unwrap();
    assert_eq!(store.prune(T0 + 10).await.unwrap(), 0, "the event held by a retry is passed by");
    retrying.rollback().await.unwrap();
    assert_eq!(store.prune(T0 + 10).await.unwrap(), 1);
    assert!(store.get_event("e1").await.unwrap().is_none());
}

/// Rebuilding the deliveries table for the `cancelled` status (schema V5) keeps the
/// numbering: a delivery accepted after it never reuses the `seq` of one pruned before.
#[tokio::test]
async fn the_deliveries_rebuild_keeps_the_numbering() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hookrelay.db");
    SqliteStore::open_with(&path, &schema::MIGRATIONS[..4]).unwrap().close().await.unwrap();
    // Rows as the release with schema V4 wrote them.
    let conn = rusqlite::Connection::open(&path).unwrap();
    for n in 1..=3 {
        conn.execute_batch(&format!(
            "INSERT INTO events (id, received_at, route, method, path, headers, body) VALUES ('e{n}', {T0}, 'r', 'POST', '/', '[]', x'7b7d');
             INSERT INTO deliveries (id, event_id, route, target, req_method, req_url, req_headers, req_body, status, attempts,
                                     next_attempt_at, created_at, updated_at, guarded)
             VALUES ('d-e{n}', 'e{n}', 'r', 't', 'POST', 'https://t/', '[]', x'', 'pending', 0, {T0}, {T0}, {T0}, 0);"
        ))
        .unwrap();
    }
    conn.execute_batch("DELETE FROM deliveries WHERE id = 'd-e3'; DELETE FROM events WHERE id = 'e3';").unwrap();
    drop(conn);
    let store = SqliteStore::open(&path).unwrap();
    accept_one(&store, "e4", "r", T0 + 4).await;
    store.close().await.unwrap();
    let seq: i64 =
        rusqlite::Connection::open(&path).unwrap().query_row("SELECT seq FROM deliveries WHERE id = 'd-e4'", [], |row| row.get(0)).unwrap();
    assert_eq!(seq, 4, "seq 3 belonged to a pruned delivery");
}

//! Durable delivery (DESIGN §6). Accepted events and their pending deliveries are committed
//! to the store before the sender hears 202; workers claim due deliveries, take a
//! rate-limit permit, send, record every attempt and schedule the next one. Claims are
//! leased, so deliveries a crashed process held are sent again after a restart.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::future::join_all;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use tokio::sync::{broadcast, watch, Notify, OwnedSemaphorePermit, Semaphore};

use crate::delivery::attempt::{AttemptOf, AttemptSettings};
use crate::delivery::breaker::{self, Gate, TargetChange, TargetResult};
use crate::delivery::client::{header_pairs, Outbound, MAX_RECORDED_ANSWER};
use crate::delivery::queue_share::{tally, TargetFull, TargetQueues, Wanted};
use crate::delivery::target::{OutgoingRequest, QueueBound, Target};
use crate::delivery::verdict::{decide, TargetSettings};
use crate::feed::{DeliveryChange, Feed};
use crate::metrics;
use crate::ratelimit::{OutboundLimiters, Throttled};
use crate::snapshot::Snapshot;
use crate::store::{
    new_claim_token, AcceptItem, AcceptOutcome, AttemptOutcome, AttemptRecord, ClaimedDelivery, HandOff, Held, NewDelivery, NewEvent,
    Store, StoreError, StoreNotice, StoredRequest, TargetRecord,
};

/// How often workers look for due deliveries when nothing woke them.
const POLL: Duration = Duration::from_millis(250);
/// How long a claim holds before any worker (of any relay on a shared store) may take the
/// delivery over; renewed every [`RENEW_EVERY`] while its request is on the wire, so only a
/// dead worker's claims run out.
const LEASE_MS: i64 = 30_000;
const RENEW_EVERY: Duration = Duration::from_secs(10);
/// How often a relay on a shared store re-counts the queue, which other relays fill and drain.
const RECOUNT_EVERY: Duration = Duration::from_secs(1);
/// How long a relay on a shared store lets wake-ups gather before it claims.
const SHARED_CLAIM_GATHER: Duration = Duration::from_millis(25);
/// How long past its timeout a half-open target's probe keeps the others waiting.
const PROBE_MARGIN_MS: i64 = 1_000;
/// The longest pause between claims while the store fails.
const LONGEST_CLAIM_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("too many deliveries waiting")]
    Full,
    #[error("too many deliveries waiting for {} → {}", .0.route, .0.target)]
    TargetFull(TargetFull),
    #[error("the store failed: {0}")]
    Store(#[from] StoreError),
}

/// A delivery claimed as it is accepted, with the worker slot that will send it.
type Handed = (OwnedSemaphorePermit, ClaimedDelivery);

/// One event to commit: the event and its deliveries, with the route's dedupe window.
pub struct Accepted {
    pub event: NewEvent,
    pub deliveries: Vec<NewDelivery>,
    /// Drop the event if the same route saw its sender delivery id since this time (ms).
    pub dedupe_since: Option<i64>,
}

pub struct Engine {
    clock: Clock,
    store: Arc<dyn Store>,
    config: Arc<ArcSwap<Snapshot>>,
    client: Outbound,
    limiters: Arc<OutboundLimiters>,
    wake: Notify,
    slots: Arc<Semaphore>,
    concurrency: usize,
    /// Deliveries accepted and not finished; starts from the store's count.
    depth: AtomicI64,
    capacity: i64,
    /// Deliveries accepted and not finished, per target (bounded by each one's `max_queued`).
    per_target: TargetQueues,
    /// Held (shared) from counting deliveries in or out until the store has them, and
    /// (exclusively) while the counts are read again from the store, so that a recount
    /// never misses a change the store does not show yet.
    counting: tokio::sync::RwLock<()>,
    feed: Feed,
    /// The breaker and pause records of targets that are not plainly closed, as last read
    /// or written (few: a scan is cheaper than a map keyed by owned strings).
    targets: Mutex<Vec<TargetRecord>>,
    /// The runtime that started the engine: deliveries are sent there whichever thread
    /// handed them out (a connection shard's, say), beside the pooled connections they use.
    runtime: tokio::runtime::Handle,
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The time the engine schedules by.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    /// The system's wall clock (times in the store outlive the process).
    Wall,
    /// Tokio's clock, which a test pauses and advances, counted from `origin_ms`.
    #[cfg(test)]
    Tokio { origin_ms: i64, origin: tokio::time::Instant },
}

impl Clock {
    fn now_ms(self) -> i64 {
        match self {
            Clock::Wall => now_ms(),
            #[cfg(test)]
            Clock::Tokio { origin_ms, origin } => origin_ms + i64::try_from(origin.elapsed().as_millis()).unwrap_or(i64::MAX / 2),
        }
    }
}

impl Engine {
    pub async fn start(
        clock: Clock,
        store: Arc<dyn Store>,
        config: Arc<ArcSwap<Snapshot>>,
        client: Outbound,
        limiters: Arc<OutboundLimiters>,
        concurrency: usize,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Arc<Engine>, StoreError> {
        let recovered = store.recover_claims(clock.now_ms()).await?;
        if recovered > 0 {
            tracing::warn!(recovered, "deliveries in flight when the last process stopped will be sent again");
        }
        let waiting = store.queue_depth().await?;
        let per_target = TargetQueues::default();
        per_target.reset(store.queued_by_target().await?);
        let targets = store.target_records().await?;
        let capacity = config.load().settings.limits.queue_capacity;
        let engine = Arc::new(Engine {
            clock,
            store,
            config,
            client,
            limiters,
            wake: Notify::new(),
            slots: Arc::new(Semaphore::new(concurrency)),
            concurrency,
            depth: AtomicI64::new(i64::try_from(waiting).unwrap_or(i64::MAX)),
            capacity: i64::try_from(capacity).unwrap_or(i64::MAX),
            per_target,
            counting: tokio::sync::RwLock::new(()),
            feed: Feed::new(shutdown.clone()),
            targets: Mutex::new(Vec::new()),
            runtime: tokio::runtime::Handle::current(),
        });
        engine.publish_depth();
        // A store of its own: any probe on record was this relay's, and died with it.
        let lost: Vec<(String, String)> = if engine.store.shared() {
            Vec::new()
        } else {
            targets.iter().filter(|r| r.probe_until.is_some()).map(|r| (r.route.clone(), r.target.clone())).collect()
        };
        engine.remember_all(targets);
        for (route, target) in lost {
            engine.change_target(&route, &target, TargetChange::ProbeLost).await?;
        }
        if let Some(notices) = engine.store.notices() {
            tokio::spawn(engine.clone().follow(notices, shutdown.clone()));
        }
        tokio::spawn(engine.clone().run(shutdown));
        Ok(engine)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Live changes, for `/api/stream`.
    pub fn feed(&self) -> &Feed {
        &self.feed
    }

    pub fn depth(&self) -> i64 {
        self.depth.load(Ordering::Relaxed)
    }

    fn publish_depth(&self) {
        metrics::set_queue_depth(self.depth());
    }

    /// Commits every event with its deliveries; only after this returns may the sender be
    /// told 202. Returns, per event, whether it was a duplicate.
    pub async fn accept(self: &Arc<Self>, events: Vec<Accepted>) -> Result<Vec<AcceptOutcome>, AcceptError> {
        self.accept_detached(events, false).await
    }

    /// Like [`Engine::accept`], but the events commit in one transaction: all, or none
    /// (a CloudEvents batch).
    pub async fn accept_whole(self: &Arc<Self>, events: Vec<Accepted>) -> Result<Vec<AcceptOutcome>, AcceptError> {
        self.accept_detached(events, true).await
    }

    /// Accepts on a task of its own: a commit, once asked for, happens whether or not the
    /// request is still waiting for it (its sender hung up, its timeout fired), and the
    /// queue's counts and the sends of its deliveries must follow it.
    async fn accept_detached(self: &Arc<Self>, events: Vec<Accepted>, whole: bool) -> Result<Vec<AcceptOutcome>, AcceptError> {
        // Nothing to commit (a request whose only delivery is a sync one, a replay that
        // found nothing): no task.
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let engine = self.clone();
        match tokio::spawn(async move { engine.accept_events(events, whole).await }).await {
            Ok(accepted) => accepted,
            Err(stopped) => Err(AcceptError::Store(StoreError::Unavailable(format!("accepting stopped: {stopped}")))),
        }
    }

    async fn accept_events(self: &Arc<Self>, mut events: Vec<Accepted>, whole: bool) -> Result<Vec<AcceptOutcome>, AcceptError> {
        let _counting = self.counting.read().await;
        let count: i64 = events.iter().map(|e| e.deliveries.len() as i64).sum();
        let depth = self.depth.fetch_add(count, Ordering::AcqRel) + count;
        // Events without a delivery (a sync route's, kept for its `dedupe`; one whose
        // targets `when` all skipped) add nothing to the queue: never refused for it.
        if count > 0 && depth > self.capacity {
            self.depth.fetch_sub(count, Ordering::AcqRel);
            return Err(AcceptError::Full);
        }
        // Per event, its deliveries' targets: counted in now, and out again if it does not commit.
        let per_event: Vec<Vec<(String, String)>> =
            events.iter().map(|e| e.deliveries.iter().map(|d| (d.route.clone(), d.target.clone())).collect()).collect();
        let mut wanted = Wanted::new();
        for (route, target) in per_event.iter().flatten() {
            tally(&mut wanted, route, target);
        }
        if let Err(full) = self.reserve_targets(&wanted) {
            self.depth.fetch_sub(count, Ordering::AcqRel);
            return Err(AcceptError::TargetFull(full));
        }
        let now = self.clock.now_ms();
        let handed: Vec<Vec<Handed>> = events.iter_mut().map(|accepted| self.hand_off(accepted, now)).collect();
        let mut outcomes = Vec::with_capacity(events.len());
        let mut committed = 0;
        let mut failure = None;
        let frames: Vec<_> =
            events.iter().map(|accepted| (accepted.deliveries.len() as i64, self.feed.event_frame(&accepted.event))).collect();
        let stored: Vec<Result<AcceptOutcome, StoreError>> = if whole {
            let items = events
                .into_iter()
                .map(|accepted| AcceptItem { event: accepted.event, deliveries: accepted.deliveries, dedupe_since: accepted.dedupe_since })
                .collect();
            match self.store.accept_all(items).await {
                Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
                Err(err) => frames.iter().map(|_| Err(err.clone())).collect(),
            }
        } else {
            // Each event commits on its own (the writer batches them into one transaction).
            join_all(events.into_iter().map(|accepted| {
                let store = self.store.clone();
                async move { store.accept_unless_duplicate(accepted.event, accepted.deliveries, accepted.dedupe_since).await }
            }))
            .await
        };
        let results: Vec<(i64, Result<AcceptOutcome, StoreError>)> = frames
            .into_iter()
            .zip(stored)
            .map(|((deliveries, frame), outcome)| {
                if matches!(outcome, Ok(AcceptOutcome::Accepted)) {
                    self.feed.send(frame);
                }
                (deliveries, outcome)
            })
            .collect();
        let mut sent_at_once = 0;
        for (((deliveries, result), targets), handed) in results.into_iter().zip(&per_event).zip(handed) {
            match result {
                Ok(AcceptOutcome::Accepted) => {
                    committed += deliveries;
                    outcomes.push(AcceptOutcome::Accepted);
                    sent_at_once += handed.len() as i64;
                    for (slot, delivery) in handed {
                        self.send_claimed(slot, delivery);
                    }
                    continue;
                }
                Ok(duplicate) => outcomes.push(duplicate),
                Err(err) => failure = Some(err),
            }
            for (route, target) in targets {
                self.per_target.release(route, target, 1);
            }
        }
        self.depth.fetch_sub(count - committed, Ordering::AcqRel);
        self.publish_depth();
        if committed > sent_at_once {
            self.wake.notify_one();
        }
        match failure {
            Some(err) => Err(AcceptError::Store(err)),
            None => Ok(outcomes),
        }
    }

    /// Claims for free workers the deliveries of `accepted` that are due and need nothing
    /// the store decides (their order, a breaker or a pause): stored in flight, they are
    /// sent as soon as their event commits, without a claim through the store. Other relays
    /// sharing the store see them leased, as if claimed there.
    fn hand_off(&self, accepted: &mut Accepted, now: i64) -> Vec<Handed> {
        let mut handed = Vec::new();
        for delivery in &mut accepted.deliveries {
            if delivery.ordered_key.is_some()
                || delivery.next_attempt_at > now
                || self.target_record(&delivery.route, &delivery.target).is_some()
            {
                continue;
            }
            let Ok(slot) = self.slots.clone().try_acquire_owned() else { break };
            let claim = new_claim_token();
            delivery.handed_off = Some(HandOff { token: claim, lease_until: now.saturating_add(LEASE_MS), lease_ms: LEASE_MS });
            let claimed = ClaimedDelivery {
                id: delivery.id.clone(),
                event_id: delivery.event_id.clone(),
                route: delivery.route.clone(),
                target: delivery.target.clone(),
                request: delivery.request.clone(),
                attempts: 0,
                created_at: accepted.event.received_at,
                guarded: Some(delivery.guarded),
                claim,
            };
            handed.push((slot, claimed));
        }
        handed
    }

    /// Sends a claimed delivery on a worker of its own, which gives `slot` back when done.
    fn send_claimed(self: &Arc<Self>, slot: OwnedSemaphorePermit, delivery: ClaimedDelivery) {
        let engine = self.clone();
        self.runtime.spawn(async move {
            engine.process(delivery).await;
            drop(slot);
            // A free slot is worth a claim only if deliveries wait in the store (the count
            // can lag a change made over the admin API: the poll still finds those). Other
            // relays fill a shared store unseen.
            if engine.store.shared() || engine.waiting() > 0 {
                engine.wake.notify_one();
            }
        });
    }

    /// Deliveries accepted and unfinished that no worker holds: due, or waiting for a retry.
    fn waiting(&self) -> i64 {
        let sending = self.concurrency.saturating_sub(self.slots.available_permits());
        self.depth.load(Ordering::Acquire) - i64::try_from(sending).unwrap_or(i64::MAX)
    }

    /// Waits (until `deadline`) for the deliveries on the wire to finish. Claims still held
    /// then are handed back at the next start.
    pub async fn drain(&self, deadline: tokio::time::Instant) {
        while self.slots.available_permits() < self.concurrency && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Counts the queue again from the store, in all and per target: after a change by hand
    /// (a cancel, a retry of a finished delivery) and, on a shared store, every second.
    pub async fn recount(&self) -> Result<(), StoreError> {
        let _counting = self.counting.write().await;
        let waiting = self.store.queue_depth().await?;
        let per_target = self.store.queued_by_target().await?;
        self.depth.store(i64::try_from(waiting).unwrap_or(i64::MAX), Ordering::Release);
        self.per_target.reset(per_target);
        self.publish_depth();
        Ok(())
    }

    /// Retries a finished delivery by hand (`retry`, a store call that queues it again) if
    /// the queue and its target's share have room for it; counts it back in when it does.
    pub async fn requeue<T>(
        &self,
        route: &str,
        target: &str,
        retry: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, AcceptError> {
        let _counting = self.counting.read().await;
        if self.depth.fetch_add(1, Ordering::AcqRel) + 1 > self.capacity {
            self.depth.fetch_sub(1, Ordering::AcqRel);
            return Err(AcceptError::Full);
        }
        if let Err(full) = self.reserve_targets(&[(route, target, 1)]) {
            self.depth.fetch_sub(1, Ordering::AcqRel);
            return Err(AcceptError::TargetFull(full));
        }
        match retry.await {
            Ok(done) => {
                self.publish_depth();
                Ok(done)
            }
            Err(err) => {
                self.depth.fetch_sub(1, Ordering::AcqRel);
                self.per_target.release(route, target, 1);
                Err(AcceptError::Store(err))
            }
        }
    }

    /// Counts a batch's deliveries into their targets' shares, or none of them.
    fn reserve_targets(&self, wanted: &[(&str, &str, u64)]) -> Result<(), TargetFull> {
        let snapshot = self.config.load();
        self.per_target.reserve(wanted, |route, target| self.max_queued_in(&snapshot, route, target))
    }

    /// How many of a target's deliveries may wait (its `max_queued` as a count; the default
    /// share for a target the config no longer has).
    pub fn max_queued(&self, route: &str, target: &str) -> u64 {
        self.max_queued_in(&self.config.load(), route, target)
    }

    fn max_queued_in(&self, snapshot: &Snapshot, route: &str, target: &str) -> u64 {
        let configured = snapshot.route(route).and_then(|r| r.targets.iter().find(|t| t.name == target)).map(|t| t.max_queued);
        configured.unwrap_or(QueueBound::DEFAULT).of(u64::try_from(self.capacity).unwrap_or(0))
    }

    /// Wakes the workers now (after a manual retry, say).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The breaker or pause record of a target, when it is not plainly closed.
    pub fn target_record(&self, route: &str, target: &str) -> Option<TargetRecord> {
        let records = self.targets.lock().unwrap_or_else(PoisonError::into_inner);
        records.iter().find(|r| r.route == route && r.target == target).cloned()
    }

    fn remember(&self, record: TargetRecord) {
        let plain = record.is_plain();
        metrics::set_target_state(&record.route, &record.target, record.state(self.clock.now_ms()).as_str());
        let mut records = self.targets.lock().unwrap_or_else(PoisonError::into_inner);
        records.retain(|r| !(r.route == record.route && r.target == record.target));
        if !plain {
            records.push(record);
        }
    }

    fn remember_all(&self, fresh: Vec<TargetRecord>) {
        let now = self.clock.now_ms();
        let mut records = self.targets.lock().unwrap_or_else(PoisonError::into_inner);
        // Targets no longer listed were closed (by another relay): say so once.
        for gone in records.iter().filter(|old| !fresh.iter().any(|r| r.route == old.route && r.target == old.target)) {
            metrics::set_target_state(&gone.route, &gone.target, breaker::TargetState::Closed.as_str());
        }
        *records = fresh.into_iter().filter(|r| !r.is_plain()).collect();
        for record in records.iter() {
            metrics::set_target_state(&record.route, &record.target, record.state(now).as_str());
        }
    }

    /// Changes a target's record in the store (a pause, a resume, an attempt's result),
    /// keeps the result, and wakes the workers for deliveries it made due.
    pub async fn change_target(&self, route: &str, target: &str, change: TargetChange) -> Result<TargetRecord, StoreError> {
        let now = self.clock.now_ms();
        let record = self.store.update_target(route, target, change.update(now), now).await?;
        self.remember(record.clone());
        self.wake();
        Ok(record)
    }

    /// On a shared store: wakes up when another relay accepts or retries, and keeps the
    /// queue count (and so `queue_capacity`) the one all relays share.
    async fn follow(self: Arc<Self>, mut notices: broadcast::Receiver<StoreNotice>, mut shutdown: watch::Receiver<bool>) {
        let mut recount = tokio::time::interval(RECOUNT_EVERY);
        recount.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                notice = notices.recv() => match notice {
                    Ok(StoreNotice::Due) | Err(broadcast::error::RecvError::Lagged(_)) => self.wake(),
                    Ok(StoreNotice::RoutesChanged) => {}
                    Ok(StoreNotice::TargetsChanged) => {
                        if let Ok(records) = self.store.target_records().await {
                            self.remember_all(records);
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = recount.tick() => {
                    if let Err(err) = self.recount().await {
                        tracing::debug!(error = %err, "could not count the queue");
                    }
                    // Other relays open, close and pause targets too.
                    if let Ok(records) = self.store.target_records().await {
                        self.remember_all(records);
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = POLL;
        // A claim on a shared store is a round trip to the database: once woken, let a few
        // milliseconds of accepts and finished sends gather so that one claim serves them.
        let gather = if self.store.shared() { SHARED_CLAIM_GATHER } else { Duration::ZERO };
        loop {
            if !gather.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(gather) => {}
                    _ = shutdown.changed() => return,
                }
            }
            let free = self.slots.available_permits();
            if free > 0 {
                match self.store.claim_due(self.clock.now_ms(), free, LEASE_MS).await {
                    Ok(claimed) => {
                        backoff = POLL;
                        for delivery in claimed {
                            let Ok(slot) = self.slots.clone().acquire_owned().await else { return };
                            self.send_claimed(slot, delivery);
                        }
                    }
                    Err(err) => {
                        tracing::error!(error = %err, retry_in = ?backoff, "claiming deliveries failed");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = shutdown.changed() => return,
                        }
                        backoff = (backoff * 2).min(LONGEST_CLAIM_BACKOFF);
                        continue;
                    }
                }
            }
            // A send that frees a slot while more wait wakes this; the poll finds what the
            // count missed.
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Runs `sending` while a task of its own renews the claim (without holding the send
    /// up while the store answers), so that a slow receiver (up to the target's timeout,
    /// however long) never lets the lease run out under it.
    async fn renewing_lease<T>(&self, delivery: &ClaimedDelivery, sending: impl std::future::Future<Output = T>) -> T {
        tokio::pin!(sending);
        // Most sends end well within the first period: no renewal task for them.
        tokio::select! {
            done = &mut sending => return done,
            _ = tokio::time::sleep(RENEW_EVERY) => {}
        }
        let (store, clock, id, claim) = (self.store.clone(), self.clock, delivery.id.clone(), delivery.claim);
        let renewal = tokio::spawn(async move {
            let mut renew = tokio::time::interval(RENEW_EVERY);
            loop {
                renew.tick().await;
                match store.renew_lease(&id, claim, LEASE_MS, clock.now_ms()).await {
                    Ok(()) => {}
                    Err(err @ (StoreError::Conflict(_) | StoreError::NotFound)) => {
                        tracing::warn!(delivery = %id, error = %err, "the claim was lost while sending; another worker may send it too");
                        return;
                    }
                    Err(err) => tracing::warn!(delivery = %id, error = %err, "could not renew the claim"),
                }
            }
        });
        let done = sending.await;
        renewal.abort();
        done
    }

    /// Whether the target's breaker lets this claimed delivery go now; if not, the claim is
    /// handed back (no attempt used), due when it may go. Half-open, one delivery takes the
    /// probe (for as long as its send may take) and the others wait for its result.
    async fn passes_breaker(&self, delivery: &ClaimedDelivery, target: Option<&Target>, timeout: Duration) -> bool {
        let now = self.clock.now_ms();
        let record = self.target_record(&delivery.route, &delivery.target);
        // A breaker turned off (by a reload) no longer holds what it opened; a pause still holds.
        let breaker_off = target.is_some_and(|t| t.breaker.failures == 0);
        let gate = match breaker::gate(record.as_ref(), now) {
            Gate::Wait(_) | Gate::Probe if breaker_off && record.as_ref().is_some_and(|r| r.paused_at.is_none()) => Gate::Go,
            gate => gate,
        };
        let wait_until = match (gate, record) {
            (Gate::Go, _) => return true,
            (Gate::Wait(until), Some(record)) => {
                let until = if record.probe_until == Some(until) { until.min(now + PROBE_MARGIN_MS) } else { until };
                self.hand_back_held(delivery, Held { decided_on: record, until }, now).await;
                return false;
            }
            (Gate::Wait(until), None) => until,
            (Gate::Probe, _) => {
                let probe_until = now + i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX / 4) + PROBE_MARGIN_MS;
                match self.store.take_probe(&delivery.route, &delivery.target, probe_until, now).await {
                    Ok(true) => {
                        tracing::info!(route = %delivery.route, target = %delivery.target, delivery = %delivery.id, "half-open: sending a probe");
                        return true;
                    }
                    // Another send is probing: look again soon, since its result may
                    // land before this hand-back (a long wait would then outlive it).
                    Ok(false) => probe_until.min(now + PROBE_MARGIN_MS),
                    Err(err) => {
                        tracing::warn!(error = %err, "could not take the probe");
                        now + PROBE_MARGIN_MS
                    }
                }
            }
        };
        if let Err(err) = self.store.release(&delivery.id, delivery.claim, wait_until, now).await {
            tracing::warn!(delivery = %delivery.id, error = %err, "could not hand back a delivery its target's breaker holds");
        }
        false
    }

    /// Hands back a claim its target's record holds. This relay's copy of the record may
    /// lag the store's (a resume through another relay moves the held deliveries, then
    /// its notice arrives): the store decides under the target's lock, and its record is
    /// kept here so that the next claim decides on it.
    async fn hand_back_held(&self, delivery: &ClaimedDelivery, held: Held, now: i64) {
        match self.store.release_held(&delivery.id, delivery.claim, held, now).await {
            Ok(stored) => self.remember(stored.unwrap_or_else(|| TargetRecord {
                route: delivery.route.clone(),
                target: delivery.target.clone(),
                ..TargetRecord::default()
            })),
            Err(err) => tracing::warn!(delivery = %delivery.id, error = %err, "could not hand back a delivery its target's breaker holds"),
        }
    }

    /// One claimed delivery: permit, send, record, schedule.
    async fn process(&self, delivery: ClaimedDelivery) {
        let snapshot = self.config.load_full();
        let target = snapshot.route(&delivery.route).and_then(|route| route.targets.iter().find(|t| t.name == delivery.target));
        let settings = TargetSettings::of(target);
        if !self.passes_breaker(&delivery, target, settings.timeout).await {
            return;
        }
        if let Some(limit) = &settings.rate_limit {
            // Never hold a claim while waiting: hand it back, due when the permit will be.
            if let Err(Throttled(wait)) = self.limiters.acquire(&limit.key, limit.spec, Some(Duration::ZERO)).await {
                let due = self.clock.now_ms() + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2);
                if let Err(err) = self.store.release(&delivery.id, delivery.claim, due, self.clock.now_ms()).await {
                    tracing::warn!(delivery = %delivery.id, error = %err, "could not hand a throttled delivery back");
                }
                return;
            }
        }
        let started_at = self.clock.now_ms();
        // The guard goes with the delivery: a route renamed, replaced or removed since it was
        // accepted cannot lift it. Rows from before this was recorded trust only a target
        // that is trusted now.
        let guarded = delivery.guarded.unwrap_or(!target.is_some_and(|t| t.trusted));
        let send = AttemptSettings {
            outbound: &self.client,
            target,
            trusted: !guarded || snapshot.settings.allow_private,
            redactions: &snapshot.redactions,
            link: None,
            timeout: settings.timeout,
            max_answer: MAX_RECORDED_ANSWER,
            of: Some(AttemptOf { event_id: &delivery.event_id, delivery_id: Some(&delivery.id), number: i64::from(delivery.attempts) + 1 }),
        };
        let tried = self.renewing_lease(&delivery, send.attempt(outgoing(&delivery, target), started_at)).await;
        let result = &tried.answer;
        let decision = decide(delivery.attempts, delivery.created_at, result, &settings, started_at, fastrand::f64());
        if let (Some(limit), Some(pause)) = (&settings.rate_limit, decision.pause) {
            self.limiters.pause(&limit.key, limit.spec, pause).await;
        }
        let told = match (&decision.outcome, result.status) {
            (_, Some(410)) => Some(TargetResult::Gone),
            (AttemptOutcome::Succeeded, _) => Some(TargetResult::Succeeded),
            _ if decision.receiver_failed => Some(TargetResult::Failed),
            _ => None,
        };
        if let Some(told) = told {
            // A success changes nothing for a target that is plainly closed: no write.
            let known = self.target_record(&delivery.route, &delivery.target);
            if told != TargetResult::Succeeded || known.is_some() {
                let policy = target.map(|t| t.breaker).unwrap_or_default();
                let change = TargetChange::Attempted(told, policy);
                match self.change_target(&delivery.route, &delivery.target, change).await {
                    Ok(record) if known.as_ref().map(|k| k.state(started_at)) != Some(record.state(started_at)) => {
                        let state = record.state(self.clock.now_ms());
                        tracing::warn!(route = %delivery.route, target = %delivery.target, state = state.as_str(), failures = record.failures, "target state changed");
                    }
                    Ok(_) => {}
                    Err(err) => {
                        tracing::warn!(route = %delivery.route, target = %delivery.target, error = %err, "could not record the target's state")
                    }
                }
            }
        }
        let counted_as = metrics::DeliveryResult::from(&decision.outcome);
        metrics::count_delivery(&delivery.route, &delivery.target, counted_as, Some(result.duration.as_secs_f64()));
        match &decision.outcome {
            AttemptOutcome::Succeeded => {
                tracing::info!(delivery = %delivery.id, route = %delivery.route, target = %delivery.target, status = ?result.status, "delivered")
            }
            AttemptOutcome::RetryAt(at) => {
                tracing::debug!(delivery = %delivery.id, status = ?result.status, error = ?result.error, retry_in_ms = at - started_at, "will retry")
            }
            AttemptOutcome::Failed { reason } => {
                tracing::warn!(delivery = %delivery.id, route = %delivery.route, target = %delivery.target, reason = %reason, "delivery failed")
            }
        }
        let status = decision.outcome.status();
        let change = DeliveryChange {
            id: &delivery.id,
            event_id: &delivery.event_id,
            route: &delivery.route,
            target: &delivery.target,
            status,
            attempts: delivery.attempts + u32::from(decision.counted),
            last_status: result.status,
        };
        let record = AttemptRecord { counted: decision.counted, ..tried.record };
        let _counting = self.counting.read().await;
        match self.store.finish_attempt(&delivery.id, delivery.claim, record, decision.outcome, self.clock.now_ms()).await {
            Ok(()) if status.is_finished() => {
                self.depth.fetch_sub(1, Ordering::AcqRel);
                self.per_target.release(&delivery.route, &delivery.target, 1);
                self.publish_depth();
                self.feed.delivery(change);
            }
            Ok(()) => self.feed.delivery(change),
            Err(err) => {
                tracing::error!(delivery = %delivery.id, error = %err, "could not record the attempt; the lease will expire and it will be sent again")
            }
        }
    }
}

/// The stored request back in sendable form, its credential markers filled in from the
/// target serving now (without the target, they stay and the request cannot be sent).
fn outgoing(delivery: &ClaimedDelivery, target: Option<&Target>) -> OutgoingRequest {
    // Only the target's own host gets its credentials (see `Target::sends_to`).
    let owner = target.filter(|t| t.sends_to(&delivery.request.url));
    fn fill<'s>(owner: Option<&Target>, text: &'s str) -> std::borrow::Cow<'s, str> {
        owner.map_or(std::borrow::Cow::Borrowed(text), |t| t.env_credentials().from_markers(text))
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &delivery.request.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(&fill(owner, value))) {
            headers.append(name, value);
        }
    }
    OutgoingRequest {
        route: delivery.route.clone(),
        target: delivery.target.clone(),
        ordered_key: None,
        method: Method::from_bytes(delivery.request.method.as_bytes()).unwrap_or(Method::POST),
        url: fill(owner, &delivery.request.url).into_owned(),
        headers,
        body: delivery.request.body.clone(),
    }
}

/// A rendered request in the store's form: values the config writes from `${VAR}` into
/// its URL or headers are replaced by markers (filled in again at send time).
pub fn stored(request: &OutgoingRequest, target: &Target) -> StoredRequest {
    let credentials = target.env_credentials();
    StoredRequest {
        method: request.method.to_string(),
        url: credentials.to_markers(&request.url),
        headers: header_pairs(&request.headers).into_iter().map(|(name, value)| (name, credentials.into_markers(value))).collect(),
        body: request.body.clone(),
    }
}

/// A pending delivery of `event_id` to `target`, due at `due_ms`.
pub fn delivery_of(event_id: &str, outgoing: &OutgoingRequest, target: &Target, due_ms: i64) -> NewDelivery {
    NewDelivery {
        id: ulid::Ulid::generate().to_string(),
        event_id: event_id.to_string(),
        route: outgoing.route.clone(),
        target: target.name.clone(),
        request: stored(outgoing, target),
        next_attempt_at: due_ms,
        ordered_key: outgoing.ordered_key.clone(),
        guarded: !target.trusted,
        handed_off: None,
    }
}

/// Header pairs of an incoming request, credentials redacted (the event record is for people).
pub fn recorded_headers(headers: &HeaderMap, redactions: &crate::redact::Redactions) -> Vec<(String, String)> {
    redactions.mask_headers(header_pairs(headers))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use bytes::Bytes;
    use futures_util::FutureExt;

    use super::*;
    use crate::config::env::ProcessEnv;
    use crate::delivery::client::InProcessReceiver;
    use crate::store::DeliveryStatus;
    use crate::store::SqliteStore;

    const CONFIG: &str = r#"
listen: 127.0.0.1:0
store: { path: data/hookrelay.db }
routes:
  - name: robot
    match: { path: /hooks/robot }
    forward:
      - name: dingtalk
        url: http://robot.invalid/send
        timeout: 2s
        success_when: [{ path: $.errcode, equals: 0 }]
        retry: { max_attempts: 5, initial: 1s, factor: 2, jitter: false, max: 60s }
"#;

    /// The receiver's answers, in order: (virtual ms it takes to answer, status, headers, body).
    type Script = Vec<(u64, u16, Vec<(&'static str, &'static str)>, &'static str)>;

    /// Answers by `script`, noting when each request arrived; `last` is told when the last
    /// scripted answer is given.
    fn scripted(script: Script, received: Arc<Mutex<Vec<(i64, Bytes)>>>, last: Arc<Notify>, clock: Clock) -> InProcessReceiver {
        let script = Arc::new(Mutex::new(script.into_iter().peekable()));
        Arc::new(move |request| {
            received.lock().unwrap().push((clock.now_ms(), request.body.clone()));
            let mut script = script.lock().unwrap();
            let (after, status, headers, body) = script.next().expect("no more attempts were expected");
            if script.peek().is_none() {
                last.notify_one();
            }
            async move {
                tokio::time::sleep(Duration::from_millis(after)).await;
                let mut answer = http::Response::builder().status(status);
                for (name, value) in headers {
                    answer = answer.header(name, value);
                }
                answer.body(Bytes::from_static(body.as_bytes())).unwrap()
            }
            .boxed()
        })
    }

    /// The whole retry schedule of one delivery on tokio's paused clock, against the real
    /// store: backoff, a timeout, a `success_when` failure, a 429 with Retry-After (not
    /// counted), then success. Minutes of schedule run in milliseconds, and no attempt
    /// may start before it is due.
    #[tokio::test(start_paused = true)]
    async fn one_delivery_through_every_kind_of_failure_on_paused_time() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hookrelay.yaml"), CONFIG).unwrap();
        let snapshot = crate::snapshot::load(&dir.path().join("hookrelay.yaml"), &ProcessEnv).unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("data/hookrelay.db")).unwrap());
        let clock = Clock::Tokio { origin_ms: 1_800_000_000_000, origin: tokio::time::Instant::now() };
        let received = Arc::new(Mutex::new(Vec::new()));
        let script: Script = vec![
            (0, 503, vec![], "busy"),
            (10_000, 200, vec![], r#"{"errcode":0}"#), // past the 2 s timeout
            (0, 200, vec![], r#"{"errcode":310000,"errmsg":"keywords not in content"}"#),
            (0, 429, vec![("retry-after", "7")], ""),
            (0, 200, vec![], r#"{"errcode":0,"errmsg":"ok"}"#),
        ];
        let last = Arc::new(Notify::new());
        let outbound = Outbound::answered_in_process(scripted(script, received.clone(), last.clone(), clock));
        let (_stop, shutdown) = watch::channel(false);
        let config = Arc::new(ArcSwap::from_pointee(snapshot));
        let engine =
            Engine::start(clock, store.clone(), config, outbound, Arc::new(OutboundLimiters::default()), 4, shutdown).await.unwrap();

        let accepted_at = clock.now_ms();
        let event = NewEvent {
            id: "e1".into(),
            received_at: accepted_at,
            route: "robot".into(),
            event: None,
            delivery_id: None,
            method: "POST".into(),
            path: "/hooks/robot".into(),
            headers: vec![],
            body: Bytes::from_static(b"{}"),
            replay_of: None,
        };
        let delivery = NewDelivery {
            id: "d1".into(),
            event_id: "e1".into(),
            route: "robot".into(),
            target: "dingtalk".into(),
            request: StoredRequest {
                method: "POST".into(),
                url: "http://robot.invalid/send".into(),
                headers: vec![("content-type".into(), "application/json".into())],
                body: Bytes::from_static(br#"{"msgtype":"text"}"#),
            },
            next_attempt_at: accepted_at,
            ordered_key: None,
            guarded: false,
            handed_off: None,
        };
        engine.accept(vec![Accepted { event, deliveries: vec![delivery], dedupe_since: None }]).await.unwrap();

        tokio::time::timeout(Duration::from_secs(120), last.notified())
            .await
            .expect("every scripted answer given within 2 virtual minutes");
        let finished = async {
            loop {
                let (view, attempts) = store.get_delivery("d1").await.unwrap().unwrap();
                if view.status.is_finished() {
                    return (view, attempts);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let (view, attempts) = tokio::time::timeout(Duration::from_secs(10), finished).await.expect("the last attempt recorded");

        assert_eq!(view.status, DeliveryStatus::Succeeded);
        assert_eq!(view.attempts, 4, "the 429 is not counted");
        let summary: Vec<(Option<u16>, bool)> = attempts.iter().map(|a| (a.status, a.counted)).collect();
        assert_eq!(summary, [(Some(503), true), (None, true), (Some(200), true), (Some(429), false), (Some(200), true)]);
        assert!(attempts[1].error.as_deref().unwrap_or("").contains("timed out"), "{:?}", attempts[1].error);
        assert!(received.lock().unwrap().iter().all(|(_, body)| body.as_ref() == br#"{"msgtype":"text"}"#));

        // Each attempt starts when it is due, to the millisecond (the clock only moves when
        // every task waits for a timer): 1 s backoff; 2 s backoff counted from the start of
        // the attempt that timed out, so due as its 2 s timeout fires; 4 s backoff; the
        // receiver's Retry-After of 7 s.
        let started: Vec<i64> = received.lock().unwrap().iter().map(|(at, _)| at - accepted_at).collect();
        assert_eq!(started, [0, 1_000, 3_000, 7_000, 14_000]);
        assert_eq!(attempts.iter().map(|a| a.started_at - accepted_at).collect::<Vec<_>>(), started);
    }
}

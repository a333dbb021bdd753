//! Rate limits (GCRA, via governor): outbound buckets per `rate_limit.key` and inbound
//! `ingress_limit` per route and sender. Buckets live in registries owned by the running
//! relay, not by a config snapshot, so a reload keeps a bucket whose settings did not
//! change (no burst refill on every reload). Time comes from tokio's clock so tests can
//! run on paused time and be exact.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::ops::Add;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use crate::config::Problems;
use crate::metrics;
use crate::store::{SharedLimit, Store};

/// A rate: `cells` per `per`, with up to `burst` at once. With `window`, additionally no
/// sliding `per` ever carries more than `cells` (receivers such as DingTalk block a robot
/// that sends more than 20 in any minute, which a burst on top of the rate would allow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LimitSpec {
    pub cells: NonZeroU32,
    pub per: Duration,
    pub burst: NonZeroU32,
    pub window: bool,
}

impl LimitSpec {
    fn quota(&self) -> Quota {
        let period = self.per / self.cells.get();
        // A zero period cannot come from a validated spec (cells ≤ 1e6 per second and up);
        // fall back to the per-second quota rather than panic.
        Quota::with_period(period.max(Duration::from_nanos(1))).unwrap_or_else(|| Quota::per_second(self.cells)).allow_burst(self.burst)
    }
}

/// Reads the one-of `per_second` / `per_minute` / `per_hour` and `burst` (default: the
/// rate's count, as governor's own quotas do).
pub fn compile_spec(
    per_second: Option<u32>,
    per_minute: Option<u32>,
    per_hour: Option<u32>,
    burst: Option<u32>,
    window: bool,
    at: &str,
    problems: &mut Problems,
) -> Option<LimitSpec> {
    let rates: Vec<(u32, Duration)> = [(per_second, 1), (per_minute, 60), (per_hour, 3600)]
        .into_iter()
        .filter_map(|(count, seconds)| count.map(|c| (c, Duration::from_secs(seconds))))
        .collect();
    let [(count, per)] = rates[..] else {
        problems.push(at, "give exactly one of per_second, per_minute or per_hour");
        return None;
    };
    let Some(cells) = NonZeroU32::new(count).filter(|c| c.get() <= 1_000_000) else {
        problems.push(at, "the rate must be between 1 and 1000000");
        return None;
    };
    let Some(burst) = NonZeroU32::new(burst.unwrap_or(count)) else {
        problems.push(format!("{at}.burst"), "burst must be at least 1");
        return None;
    };
    Some(LimitSpec { cells, per, burst, window })
}

/// tokio's clock for governor, so paused-time tests see exact waits.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TokioInstant(Instant);

impl Add<Nanos> for TokioInstant {
    type Output = TokioInstant;
    fn add(self, other: Nanos) -> TokioInstant {
        TokioInstant(self.0 + Duration::from(other))
    }
}

impl Reference for TokioInstant {
    fn duration_since(&self, earlier: Self) -> Nanos {
        self.0.saturating_duration_since(earlier.0).into()
    }

    fn saturating_sub(&self, duration: Nanos) -> Self {
        TokioInstant(self.0.checked_sub(duration.into()).unwrap_or(self.0))
    }
}

impl Clock for TokioClock {
    type Instant = TokioInstant;
    fn now(&self) -> TokioInstant {
        TokioInstant(Instant::now())
    }
}

type DirectLimiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<TokioInstant>>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded maps stay consistent even if a holder panicked: every update is one insert.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One outbound bucket, shared by every target with the same key.
pub struct Bucket {
    key: String,
    spec: LimitSpec,
    limiter: DirectLimiter,
    /// Set when the receiver answered 429 with Retry-After: nobody sends before then.
    paused_until: Mutex<Option<Instant>>,
    /// With [`LimitSpec::window`]: when the last `cells` permits were given.
    window: Option<Mutex<std::collections::VecDeque<Instant>>>,
}

/// The caller waited as long as it may; try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled(pub Duration);

impl Bucket {
    /// Waits for a permit. `max_wait: None` waits as long as it takes (async deliveries are
    /// never dropped); otherwise gives up when the wait would pass `max_wait`.
    pub async fn acquire(&self, max_wait: Option<Duration>) -> Result<(), Throttled> {
        let started = Instant::now();
        let mut counted = false;
        loop {
            let now = Instant::now();
            let paused = (*lock(&self.paused_until)).filter(|until| *until > now);
            let wait = match paused {
                Some(until) => until - now,
                None => match self.take(now) {
                    Ok(()) => return Ok(()),
                    Err(wait) => wait,
                },
            };
            if let Some(max) = max_wait {
                if now + wait > started + max {
                    ::metrics::counter!(metrics::RATE_LIMITED, "key" => self.key.clone()).increment(1);
                    return Err(Throttled(wait));
                }
            }
            if !counted {
                ::metrics::counter!(metrics::RATE_LIMITED, "key" => self.key.clone()).increment(1);
                counted = true;
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// One permit now, or how long until one may be had: the window first (it does not use
    /// a cell), then the GCRA, both under the window's lock so two senders cannot both
    /// take the window's last place.
    fn take(&self, now: Instant) -> Result<(), Duration> {
        let Some(window) = &self.window else {
            return self.limiter.check().map_err(|not_until| not_until.wait_time_from(TokioClock.now()));
        };
        let mut sent = lock(window);
        while sent.front().is_some_and(|at| now.saturating_duration_since(*at) >= self.spec.per) {
            sent.pop_front();
        }
        if sent.len() >= self.spec.cells.get() as usize {
            let oldest = sent.front().copied().unwrap_or(now);
            return Err((oldest + self.spec.per).saturating_duration_since(now));
        }
        self.limiter.check().map_err(|not_until| not_until.wait_time_from(TokioClock.now()))?;
        sent.push_back(now);
        Ok(())
    }

    /// Holds every sender on this key back for `duration` (a 429 with Retry-After).
    pub fn pause(&self, duration: Duration) {
        let until = Instant::now() + duration;
        let mut paused = lock(&self.paused_until);
        if paused.is_none_or(|current| current < until) {
            *paused = Some(until);
        }
    }
}

/// Outbound buckets by key: in this relay's memory, or, on a store shared by several
/// relays, the store's (one limit for all of them).
#[derive(Default)]
pub struct OutboundLimiters {
    buckets: Mutex<HashMap<String, Arc<Bucket>>>,
    shared: Option<Arc<dyn Store>>,
}

/// How long a sender waits when the shared store cannot say (it is failing).
const STORE_FAILING_WAIT: Duration = Duration::from_secs(1);

impl OutboundLimiters {
    /// Limits kept in `store`, shared with every relay using it.
    pub fn shared_through(store: Arc<dyn Store>) -> OutboundLimiters {
        OutboundLimiters { buckets: Mutex::default(), shared: Some(store) }
    }

    /// Waits for a permit of `key`, as [`Bucket::acquire`].
    pub async fn acquire(&self, key: &str, spec: LimitSpec, max_wait: Option<Duration>) -> Result<(), Throttled> {
        let Some(store) = &self.shared else { return self.bucket(key, spec).acquire(max_wait).await };
        let limit = SharedLimit {
            cells: spec.cells.get(),
            per_ms: i64::try_from(spec.per.as_millis()).unwrap_or(i64::MAX),
            burst: spec.burst.get(),
            window: spec.window,
        };
        let started = Instant::now();
        let mut counted = false;
        loop {
            let wait = match store.take_permit(key, limit, chrono::Utc::now().timestamp_millis()).await {
                Ok(None) => return Ok(()),
                Ok(Some(wait)) => wait,
                Err(err) => {
                    tracing::warn!(key, error = %err, "the shared rate limit cannot be read; waiting");
                    STORE_FAILING_WAIT
                }
            };
            if !counted {
                ::metrics::counter!(metrics::RATE_LIMITED, "key" => key.to_string()).increment(1);
                counted = true;
            }
            if max_wait.is_some_and(|max| Instant::now() + wait > started + max) {
                return Err(Throttled(wait));
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Holds every sender on `key` back for `duration` (a 429 with Retry-After).
    pub async fn pause(&self, key: &str, spec: LimitSpec, duration: Duration) {
        match &self.shared {
            None => self.bucket(key, spec).pause(duration),
            Some(store) => {
                if let Err(err) = store.pause_limit(key, duration, chrono::Utc::now().timestamp_millis()).await {
                    tracing::warn!(key, error = %err, "could not pause the shared rate limit");
                }
            }
        }
    }

    /// The bucket for `key`; a new one only when the key is new or its settings changed.
    pub fn bucket(&self, key: &str, spec: LimitSpec) -> Arc<Bucket> {
        let mut buckets = lock(&self.buckets);
        if let Some(existing) = buckets.get(key).filter(|b| b.spec == spec) {
            return existing.clone();
        }
        let bucket = Arc::new(Bucket {
            key: key.to_string(),
            spec,
            limiter: RateLimiter::direct_with_clock(spec.quota(), TokioClock),
            paused_until: Mutex::new(None),
            window: spec.window.then(|| Mutex::new(std::collections::VecDeque::with_capacity(spec.cells.get() as usize))),
        });
        buckets.insert(key.to_string(), bucket.clone());
        bucket
    }
}

/// How many senders one route's `ingress_limit` tracks. Past this, a sender whose bucket is
/// still draining keeps it, and new senders share one overflow bucket until old ones refill.
pub const INGRESS_KEYS_PER_ROUTE: usize = 10_000;

/// Per-sender GCRA state for one route, bounded: keys are stored as keyed 64-bit hashes
/// (a long header costs what a short one does), at most `capacity` of them. Only a bucket
/// that has fully refilled (its state equals a new key's) is evicted, so a flood of new
/// keys can neither grow memory nor reset a throttled sender; when every slot is live, new
/// keys share the overflow bucket.
struct BoundedKeys {
    inner: Mutex<KeyTable>,
    capacity: usize,
    /// The limiter's start, set right after it is built: "now" for eviction is measured from
    /// it, as governor measures its own state (a later start only makes eviction later).
    start: std::sync::OnceLock<Instant>,
}

#[derive(Default)]
struct KeyTable {
    /// Least recently used first.
    buckets: hashlink::LinkedHashMap<u64, Nanos>,
    overflow: Option<Nanos>,
}

/// governor owns the state store; both it and the registry hold this handle.
#[derive(Clone)]
struct SharedKeys(Arc<BoundedKeys>);

impl governor::state::StateStore for SharedKeys {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let keys = &self.0;
        let mut table = lock(&keys.inner);
        if let Some(state) = table.buckets.to_back(key) {
            let (outcome, next) = f(Some(*state))?;
            *state = next;
            return Ok(outcome);
        }
        if table.buckets.len() >= keys.capacity {
            let now = keys.start.get().map(|start| Nanos::from(Instant::now().saturating_duration_since(*start)));
            let refilled = matches!((table.buckets.front(), now), (Some((_, tat)), Some(now)) if *tat <= now);
            if !refilled {
                let (outcome, next) = f(table.overflow)?;
                table.overflow = Some(next);
                return Ok(outcome);
            }
            table.buckets.pop_front();
        }
        let (outcome, next) = f(None)?;
        table.buckets.insert(*key, next);
        Ok(outcome)
    }
}

type BoundedLimiter = RateLimiter<u64, SharedKeys, TokioClock, NoOpMiddleware<TokioInstant>>;

struct RouteLimiter {
    spec: LimitSpec,
    limiter: BoundedLimiter,
    keys: Arc<BoundedKeys>,
}

/// Inbound limiters, one bounded keyed limiter per route.
pub struct IngressLimiters {
    routes: Mutex<HashMap<String, Arc<RouteLimiter>>>,
    /// Keys are hashed with a per-process random key, so senders cannot aim for collisions.
    hasher: std::hash::RandomState,
    capacity: usize,
}

impl Default for IngressLimiters {
    fn default() -> Self {
        IngressLimiters::with_capacity(INGRESS_KEYS_PER_ROUTE)
    }
}

impl IngressLimiters {
    pub fn with_capacity(capacity: usize) -> IngressLimiters {
        IngressLimiters { routes: Mutex::new(HashMap::new()), hasher: std::hash::RandomState::new(), capacity: capacity.max(1) }
    }

    /// Takes one request from `route`'s budget for `sender`, or says how long to wait.
    pub fn check(&self, route: &str, spec: LimitSpec, sender: &[u8]) -> Result<(), Throttled> {
        use std::hash::BuildHasher;
        let limiter = {
            let mut routes = lock(&self.routes);
            match routes.get(route).filter(|existing| existing.spec == spec) {
                Some(limiter) => limiter.clone(),
                None => {
                    let keys =
                        Arc::new(BoundedKeys { inner: Mutex::default(), capacity: self.capacity, start: std::sync::OnceLock::new() });
                    let limiter = RateLimiter::new(spec.quota(), SharedKeys(keys.clone()), TokioClock);
                    let _ = keys.start.set(Instant::now());
                    let limiter = Arc::new(RouteLimiter { spec, limiter, keys });
                    routes.insert(route.to_string(), limiter.clone());
                    limiter
                }
            }
        };
        let key = self.hasher.hash_one(sender);
        limiter.limiter.check_key(&key).map_err(|not_until| Throttled(not_until.wait_time_from(TokioClock.now())))
    }

    /// Senders tracked for `route` (for tests and the bounds they check).
    pub fn tracked(&self, route: &str) -> usize {
        lock(&self.routes).get(route).map_or(0, |limiter| lock(&limiter.keys.inner).buckets.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(cells: u32, per: Duration, burst: u32) -> LimitSpec {
        LimitSpec { cells: NonZeroU32::new(cells).unwrap(), per, burst: NonZeroU32::new(burst).unwrap(), window: false }
    }

    /// DingTalk's limit: no 60 s window may carry more than 20 messages to one robot, and an
    /// idle robot gets its first 20 at once.
    #[tokio::test(start_paused = true)]
    async fn a_window_limit_never_lets_a_period_carry_more_than_its_count() {
        let limiters = OutboundLimiters::default();
        let dingtalk = LimitSpec { window: true, ..spec(20, Duration::from_secs(60), 20) };
        let bucket = limiters.bucket("robot", dingtalk);
        let start = Instant::now();
        let mut times = Vec::new();
        for _ in 0..70 {
            bucket.acquire(None).await.unwrap();
            times.push(start.elapsed());
        }
        assert!(times[..20].iter().all(|t| *t == Duration::ZERO), "an idle robot sends its first 20 at once");
        assert_eq!(times[20], Duration::from_secs(60), "the 21st waits for the first to leave the window");
        for (index, first) in times.iter().enumerate() {
            let in_window = times[index..].iter().take_while(|t| **t < *first + Duration::from_secs(60)).count();
            assert!(in_window <= 20, "{in_window} messages in the 60 s from {first:?}");
        }
        // Without the window, the burst on top of the rate allows more than 20 in the first minute.
        let plain = limiters.bucket("other", spec(20, Duration::from_secs(60), 20));
        let start = Instant::now();
        let mut first_minute = 0;
        while start.elapsed() < Duration::from_secs(60) {
            plain.acquire(None).await.unwrap();
            first_minute += usize::from(start.elapsed() < Duration::from_secs(60));
        }
        assert!(first_minute > 20, "{first_minute}");
    }

    #[tokio::test(start_paused = true)]
    async fn five_per_second_with_burst_one_spaces_eleven_events_over_two_seconds() {
        let limiters = OutboundLimiters::default();
        let bucket = limiters.bucket("k", spec(5, Duration::from_secs(1), 1));
        let start = Instant::now();
        let mut times = Vec::new();
        for _ in 0..11 {
            bucket.acquire(None).await.unwrap();
            times.push(start.elapsed());
        }
        assert_eq!(times.first(), Some(&Duration::ZERO));
        assert_eq!(times.last(), Some(&Duration::from_secs(2)));
        for pair in times.windows(2) {
            assert_eq!(pair[1] - pair[0], Duration::from_millis(200));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn shared_key_shares_one_bucket_and_survives_an_unchanged_lookup() {
        let limiters = OutboundLimiters::default();
        let every_3s = spec(20, Duration::from_secs(60), 2);
        let a = limiters.bucket("robot", every_3s);
        let b = limiters.bucket("robot", every_3s);
        a.acquire(None).await.unwrap();
        b.acquire(None).await.unwrap();
        let start = Instant::now();
        a.acquire(None).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(3), "burst of 2 used by two targets on one key");
        // Changed settings make a fresh bucket.
        let c = limiters.bucket("robot", spec(1, Duration::from_secs(1), 1));
        let start = Instant::now();
        c.acquire(None).await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_pauses_the_key_and_max_wait_gives_up() {
        let limiters = OutboundLimiters::default();
        let bucket = limiters.bucket("k", spec(100, Duration::from_secs(1), 100));
        bucket.pause(Duration::from_secs(3));
        assert_eq!(bucket.acquire(Some(Duration::from_secs(2))).await, Err(Throttled(Duration::from_secs(3))));
        let start = Instant::now();
        bucket.acquire(None).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn ingress_limit_is_per_sender() {
        let limiters = IngressLimiters::default();
        let two_per_second = spec(2, Duration::from_secs(1), 2);
        assert!(limiters.check("r", two_per_second, b"10.0.0.1").is_ok());
        assert!(limiters.check("r", two_per_second, b"10.0.0.1").is_ok());
        let Err(Throttled(wait)) = limiters.check("r", two_per_second, b"10.0.0.1") else { panic!("third request must be limited") };
        assert_eq!(wait, Duration::from_millis(500));
        assert!(limiters.check("r", two_per_second, b"10.0.0.2").is_ok(), "another sender has its own budget");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(limiters.check("r", two_per_second, b"10.0.0.1").is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_new_keys_neither_grows_the_table_nor_resets_a_throttled_sender() {
        let limiters = IngressLimiters::with_capacity(3);
        let one_per_second = spec(1, Duration::from_secs(1), 1);
        for sender in [b"a", b"b", b"c"] {
            assert!(limiters.check("r", one_per_second, sender).is_ok());
        }
        assert!(limiters.check("r", one_per_second, b"a").is_err(), "a is throttled");
        // The table is full of live buckets: new senders share the overflow bucket.
        assert!(limiters.check("r", one_per_second, b"new-1").is_ok());
        for flood in 0..1000u32 {
            assert!(limiters.check("r", one_per_second, &flood.to_be_bytes()).is_err(), "overflow shared by every new key");
        }
        assert_eq!(limiters.tracked("r"), 3);
        assert!(limiters.check("r", one_per_second, b"a").is_err(), "the flood did not reset a");
        // Once refilled, the least recently used bucket (b: a was touched since) makes room.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(limiters.check("r", one_per_second, b"d").is_ok());
        assert!(limiters.check("r", one_per_second, b"d").is_err(), "d has a bucket of its own now");
        assert_eq!(limiters.tracked("r"), 3);
        assert!(limiters.check("r", one_per_second, b"a").is_ok(), "a kept its bucket and has refilled");
        assert!(limiters.check("r", one_per_second, b"a").is_err());
    }
}

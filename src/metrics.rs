//! Prometheus metrics (DESIGN §9): one process-wide recorder, rendered as text by the admin
//! listener. The names and labels used across the crate are defined here, in one place.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const REQUESTS: &str = "hookrelay_requests_total";
pub const DELIVERIES: &str = "hookrelay_deliveries_total";
pub const DELIVERY_DURATION: &str = "hookrelay_delivery_duration_seconds";
pub const QUEUE_DEPTH: &str = "hookrelay_queue_depth";
pub const CONFIG_RELOADS: &str = "hookrelay_config_reloads_total";
pub const CONFIG_GENERATION: &str = "hookrelay_config_generation";
pub const RATE_LIMITED: &str = "hookrelay_rate_limited_total";
/// Requests or connections refused by an abuse limit, by `limit`.
pub const LIMITED: &str = "hookrelay_limited_total";
pub const CONNECTIONS: &str = "hookrelay_connections_total";
pub const CONNECTIONS_OPEN: &str = "hookrelay_connections_open";
/// `accept` calls that failed (e.g. out of file descriptors).
pub const ACCEPT_ERRORS: &str = "hookrelay_accept_errors_total";
/// 1 for each target's current state (closed, open, half_open, paused), 0 for the others.
pub const TARGET_STATE: &str = "hookrelay_target_state";
/// Log lines dropped because stderr was not being read fast enough.
pub const LOG_LINES_DROPPED: &str = "hookrelay_log_lines_dropped_total";
/// Spans the OTLP collector did not take (exports that failed).
pub const SPANS_DROPPED: &str = "hookrelay_spans_dropped_total";

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the recorder on first use; several relays in one process (tests) share it.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let buckets = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(DELIVERY_DURATION.to_string()), &buckets)
                .and_then(|builder| builder.install_recorder())
                .map_err(|err| tracing::warn!(error = %err, "metrics recorder not installed"))
                .ok()
        })
        .as_ref()
}

/// How often histogram samples are folded into their buckets. Until then the recorder keeps
/// every sample, so without this a relay nobody scrapes would grow by each delivery.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds histogram samples into their buckets every [`UPKEEP_EVERY`] until shutdown.
pub async fn keep_up(mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let Some(handle) = handle() else { return };
    let mut every = tokio::time::interval(UPKEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => handle.run_upkeep(),
            _ = shutdown.changed() => return,
        }
    }
}

/// Publishes `dropped()` (a running total kept by the log writer) as
/// [`LOG_LINES_DROPPED`] every [`UPKEEP_EVERY`], for as long as the runtime runs.
pub async fn count_dropped_log_lines(dropped: impl Fn() -> u64 + Send + 'static) {
    let mut every = tokio::time::interval(UPKEEP_EVERY);
    loop {
        every.tick().await;
        metrics::counter!(LOG_LINES_DROPPED).absolute(dropped());
    }
}

/// The Prometheus text exposition.
pub fn render() -> String {
    match handle() {
        Some(handle) => {
            handle.run_upkeep();
            handle.render()
        }
        None => String::new(),
    }
}

/// `hookrelay_requests_total{route,outcome}`; requests that matched no route use route "".
pub fn count_request(route: &str, outcome: &'static str) {
    with_route_counters(route, |counters| counters.request(route, outcome).increment(1));
}

/// The counters of one route name on this thread, so that counting a request or a delivery
/// neither builds its key (the names copied) nor looks it up in the recorder each time.
#[derive(Default)]
struct RouteCounters {
    requests: Vec<(&'static str, Counter)>,
    deliveries: Vec<(Box<str>, &'static str, Counter)>,
}

impl RouteCounters {
    fn request(&mut self, route: &str, outcome: &'static str) -> &Counter {
        let index = match self.requests.iter().position(|(known, _)| *known == outcome) {
            Some(index) => index,
            None => {
                let counter = metrics::counter!(REQUESTS, "route" => route.to_string(), "outcome" => outcome);
                self.requests.push((outcome, counter));
                self.requests.len() - 1
            }
        };
        &self.requests[index].1
    }

    fn delivery(&mut self, route: &str, target: &str, result: &'static str) -> &Counter {
        let index = match self.deliveries.iter().position(|(known, label, _)| **known == *target && *label == result) {
            Some(index) => index,
            None => {
                let counter =
                    metrics::counter!(DELIVERIES, "route" => route.to_string(), "target" => target.to_string(), "result" => result);
                self.deliveries.push((target.into(), result, counter));
                self.deliveries.len() - 1
            }
        };
        &self.deliveries[index].2
    }
}

/// Route names come from the config and the admin API: a thread that has seen more than
/// this many starts over rather than keep every name it ever saw.
const MAX_COUNTED_ROUTES: usize = 1024;

thread_local! {
    static ROUTE_COUNTERS: RefCell<HashMap<Box<str>, RouteCounters>> = RefCell::new(HashMap::new());
}

/// Runs `count` with the route's counters. Before the recorder is installed, counters are
/// made each time (one kept then would count nowhere for good).
fn with_route_counters(route: &str, count: impl FnOnce(&mut RouteCounters)) {
    if handle_installed() {
        ROUTE_COUNTERS.with_borrow_mut(|routes| {
            if let Some(counters) = routes.get_mut(route) {
                return count(counters);
            }
            if routes.len() >= MAX_COUNTED_ROUTES {
                routes.clear();
            }
            count(routes.entry(route.into()).or_default());
        });
    } else {
        count(&mut RouteCounters::default());
    }
}

fn handle_installed() -> bool {
    matches!(HANDLE.get(), Some(Some(_)))
}

/// `hookrelay_limited_total{limit}`: max_connections, max_body, request_timeout, ingress_limit.
pub fn count_limit(limit: &'static str) {
    metrics::counter!(LIMITED, "limit" => limit).increment(1);
}

/// The `result` label of `hookrelay_deliveries_total`: what one attempt (or render) came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryResult {
    Succeeded,
    /// Failed, and will be tried again.
    Retry,
    Failed,
    /// The target's templates could not render this event; nothing was sent.
    RenderError,
}

impl DeliveryResult {
    pub fn label(self) -> &'static str {
        match self {
            DeliveryResult::Succeeded => "succeeded",
            DeliveryResult::Retry => "retry",
            DeliveryResult::Failed => "failed",
            DeliveryResult::RenderError => "render_error",
        }
    }
}

impl From<&crate::store::AttemptOutcome> for DeliveryResult {
    fn from(outcome: &crate::store::AttemptOutcome) -> DeliveryResult {
        match outcome {
            crate::store::AttemptOutcome::Succeeded => DeliveryResult::Succeeded,
            crate::store::AttemptOutcome::RetryAt(_) => DeliveryResult::Retry,
            crate::store::AttemptOutcome::Failed { .. } => DeliveryResult::Failed,
        }
    }
}

/// `hookrelay_deliveries_total{route,target,result}`, and the attempt's duration in
/// `hookrelay_delivery_duration_seconds`.
pub fn count_delivery(route: &str, target: &str, result: DeliveryResult, seconds: Option<f64>) {
    with_route_counters(route, |counters| counters.delivery(route, target, result.label()).increment(1));
    if let Some(seconds) = seconds {
        static DURATIONS: OnceLock<Histogram> = OnceLock::new();
        with_unlabelled(&DURATIONS, || metrics::histogram!(DELIVERY_DURATION), |durations| durations.record(seconds));
    }
}

/// `hookrelay_queue_depth`.
pub fn set_queue_depth(depth: i64) {
    static DEPTH: OnceLock<Gauge> = OnceLock::new();
    with_unlabelled(&DEPTH, || metrics::gauge!(QUEUE_DEPTH), |gauge| gauge.set(depth as f64));
}

/// A connection accepted: `hookrelay_connections_total` and `hookrelay_connections_open`.
pub fn connection_opened() {
    static ACCEPTED: OnceLock<Counter> = OnceLock::new();
    with_unlabelled(&ACCEPTED, || metrics::counter!(CONNECTIONS), |accepted| accepted.increment(1));
    with_unlabelled(&OPEN_CONNECTIONS, || metrics::gauge!(CONNECTIONS_OPEN), |open| open.increment(1.0));
}

/// An accepted connection closed (or never served).
pub fn connection_closed() {
    with_unlabelled(&OPEN_CONNECTIONS, || metrics::gauge!(CONNECTIONS_OPEN), |open| open.decrement(1.0));
}

static OPEN_CONNECTIONS: OnceLock<Gauge> = OnceLock::new();

/// Runs `count` with a metric that has no labels, looked up in the recorder once it is
/// installed rather than at each count; before, it is looked up each time (one kept then
/// would count nowhere for good).
fn with_unlabelled<M>(kept: &'static OnceLock<M>, lookup: impl FnOnce() -> M, count: impl FnOnce(&M)) {
    if handle_installed() {
        count(kept.get_or_init(lookup));
    } else {
        count(&lookup());
    }
}

/// The states a target's circuit breaker reports.
pub const TARGET_STATES: [&str; 4] = ["closed", "open", "half_open", "paused"];

/// Publishes a target's circuit-breaker state (one of [`TARGET_STATES`]) as
/// `hookrelay_target_state{route,target,state}`.
pub fn set_target_state(route: &str, target: &str, state: &str) {
    for each in TARGET_STATES {
        let value = if each == state { 1.0 } else { 0.0 };
        ::metrics::gauge!(TARGET_STATE, "route" => route.to_string(), "target" => target.to_string(), "state" => each).set(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sample's value in the exposition (0 when absent); other tests in this process may
    /// count too, so callers compare with at-least.
    fn sample(name: &str) -> f64 {
        render().lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0)
    }

    #[test]
    fn metrics_without_labels_count_every_time_once_kept() {
        assert!(handle().is_some(), "the recorder installs");
        let (accepted, durations) = (sample(CONNECTIONS), sample("hookrelay_delivery_duration_seconds_count"));
        for _ in 0..2 {
            connection_opened();
            connection_closed();
            count_delivery("route", "target", DeliveryResult::Succeeded, Some(0.02));
        }
        assert!(sample(CONNECTIONS) >= accepted + 2.0);
        assert!(sample("hookrelay_delivery_duration_seconds_count") >= durations + 2.0);
        assert!(render().contains(CONNECTIONS_OPEN));
        set_queue_depth(3);
        assert!(render().contains(QUEUE_DEPTH));
    }
}

//! Per-target circuit breaker and pause. After `failures` consecutive retryable failures a
//! target opens for a cool-down that doubles each time it opens again (capped); then one
//! probe goes through (half-open) and its result closes or re-opens it. A receiver's `410
//! Gone`, or an operator, pauses the target until it is resumed. Waiting deliveries use no
//! attempt. Pure: the stores keep each target's [`TargetRecord`] and move its pending
//! deliveries as [`Reschedule`] says; the engine asks [`gate`] before each send.

use std::time::Duration;

use serde::Serialize;

pub use crate::store::PAUSED_UNTIL_MS;
use crate::store::{Reschedule, TargetRecord, TargetUpdate};

/// A target's `breaker:` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive retryable failures that open it; 0 never opens it.
    pub failures: u32,
    pub cooldown: Duration,
    pub max_cooldown: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy { failures: 5, cooldown: Duration::from_secs(30), max_cooldown: Duration::from_secs(3600) }
    }
}

/// What one attempt says about its receiver. Final 4xx answers, throttling and render
/// errors say nothing (they are not the receiver being down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetResult {
    Succeeded,
    /// Failed in a way a retry could fix: no answer, a timeout, 5xx, 408, `success_when`.
    Failed,
    /// `410 Gone`: the receiver asks not to be sent to any more.
    Gone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetState {
    Closed,
    Open,
    HalfOpen,
    Paused,
}

impl TargetState {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Closed => "closed",
            TargetState::Open => "open",
            TargetState::HalfOpen => "half_open",
            TargetState::Paused => "paused",
        }
    }
}

/// What changes a target's record: an attempt's result, or an operator.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetChange {
    Attempted(TargetResult, BreakerPolicy),
    Pause(String),
    Resume,
    /// The relay restarted: a probe it had on the wire is gone, and those waiting for it go now.
    ProbeLost,
}

impl TargetChange {
    /// The store's update for this change at `now`: the record after it, and which pending
    /// deliveries move (every one the breaker held back is at or before `up_to`).
    pub fn update(self, now: i64) -> TargetUpdate {
        let durable = !matches!(self, TargetChange::Attempted(..));
        let apply = move |record: TargetRecord| match self {
            TargetChange::Attempted(result, policy) => record.after(result, &policy, now),
            TargetChange::Pause(reason) => record.paused(&reason, now),
            TargetChange::Resume => record.resumed(now),
            TargetChange::ProbeLost => record.probe_lost(now),
        };
        TargetUpdate { apply: Box::new(apply), durable }
    }
}

/// The latest time the breaker made a delivery wait for: the cool-down or the probe.
fn held_until(record: &TargetRecord) -> Option<i64> {
    record.blocked_until.max(record.probe_until)
}

/// Whether a claimed delivery of a target may be sent now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Go,
    /// Half-open and nobody is probing: this delivery may be the probe, if it takes it.
    Probe,
    /// Hand it back, due at this time.
    Wait(i64),
}

impl TargetRecord {
    pub fn new(route: &str, target: &str) -> TargetRecord {
        TargetRecord { route: route.to_string(), target: target.to_string(), ..TargetRecord::default() }
    }

    /// Closed with nothing counted: the same as having no record.
    pub fn is_plain(&self) -> bool {
        self.failures == 0
            && self.opened == 0
            && self.blocked_until.is_none()
            && self.probe_until.is_none()
            && self.paused_at.is_none()
            && self.paused_reason.is_none()
    }

    pub fn state(&self, now: i64) -> TargetState {
        match (self.paused_at, self.blocked_until) {
            (Some(_), _) => TargetState::Paused,
            (None, Some(until)) if until > now => TargetState::Open,
            (None, Some(_)) => TargetState::HalfOpen,
            (None, None) => TargetState::Closed,
        }
    }

    /// The record after an attempt's `result`, and what to do with the pending deliveries.
    pub fn after(mut self, result: TargetResult, policy: &BreakerPolicy, now: i64) -> (TargetRecord, Reschedule) {
        if result == TargetResult::Gone {
            return self.paused("the receiver answered 410 Gone", now);
        }
        let state = self.state(now);
        if state == TargetState::Paused {
            return (self, Reschedule::Nothing);
        }
        match result {
            TargetResult::Succeeded => {
                let held = held_until(&self);
                self.failures = 0;
                self.opened = 0;
                self.blocked_until = None;
                self.probe_until = None;
                (self, held.map_or(Reschedule::Nothing, |up_to| Reschedule::Move { up_to, to: now }))
            }
            _ => {
                self.failures = self.failures.saturating_add(1);
                let opens = match state {
                    TargetState::HalfOpen => true,
                    TargetState::Closed => policy.failures > 0 && self.failures >= policy.failures,
                    TargetState::Open | TargetState::Paused => false,
                };
                if !opens {
                    return (self, Reschedule::Nothing);
                }
                self.opened = self.opened.saturating_add(1);
                let doubling = 2u32.saturating_pow(self.opened - 1);
                let cooldown = policy.cooldown.saturating_mul(doubling).min(policy.max_cooldown);
                let until = now.saturating_add(i64::try_from(cooldown.as_millis()).unwrap_or(i64::MAX / 2));
                // Those waiting for the failed probe's result wait for the next one instead.
                let up_to = self.probe_until.unwrap_or(until).max(until);
                self.blocked_until = Some(until);
                self.probe_until = None;
                (self, Reschedule::Move { up_to, to: until })
            }
        }
    }

    pub fn paused(mut self, reason: &str, now: i64) -> (TargetRecord, Reschedule) {
        if self.paused_at.is_none() {
            self.paused_at = Some(now);
        }
        self.paused_reason = Some(reason.to_string());
        (self, Reschedule::Move { up_to: PAUSED_UNTIL_MS, to: PAUSED_UNTIL_MS })
    }

    /// The probe on the wire was lost with its relay: the next delivery may probe now.
    pub fn probe_lost(mut self, now: i64) -> (TargetRecord, Reschedule) {
        match self.probe_until.take() {
            Some(up_to) => (self, Reschedule::Move { up_to, to: now }),
            None => (self, Reschedule::Nothing),
        }
    }

    /// Resumed by hand: closed, its failures forgotten, and everything it held back due now.
    pub fn resumed(mut self, now: i64) -> (TargetRecord, Reschedule) {
        let held = if self.paused_at.is_some() { Some(PAUSED_UNTIL_MS) } else { held_until(&self) };
        self.paused_at = None;
        self.paused_reason = None;
        self.failures = 0;
        self.opened = 0;
        self.blocked_until = None;
        self.probe_until = None;
        (self, held.map_or(Reschedule::Nothing, |up_to| Reschedule::Move { up_to, to: now }))
    }
}

/// Whether a claimed delivery of the target with this record may go now.
pub fn gate(record: Option<&TargetRecord>, now: i64) -> Gate {
    let Some(record) = record else { return Gate::Go };
    match record.state(now) {
        TargetState::Closed => Gate::Go,
        TargetState::Paused => Gate::Wait(PAUSED_UNTIL_MS),
        TargetState::Open => Gate::Wait(record.blocked_until.unwrap_or(now)),
        TargetState::HalfOpen => match record.probe_until {
            Some(until) if until > now => Gate::Wait(until),
            _ => Gate::Probe,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_000_000;

    #[test]
    fn opens_after_consecutive_failures_doubles_its_cooldown_and_closes_on_a_good_probe() {
        let policy = BreakerPolicy { failures: 3, cooldown: Duration::from_secs(10), max_cooldown: Duration::from_secs(35) };
        let mut record = TargetRecord::new("r", "t");
        for n in 1..3 {
            let (next, reschedule) = record.after(TargetResult::Failed, &policy, T);
            assert_eq!((next.state(T), next.failures, reschedule), (TargetState::Closed, n, Reschedule::Nothing));
            record = next;
        }
        // A success in between starts the count again.
        let (reset, _) = record.clone().after(TargetResult::Succeeded, &policy, T);
        assert_eq!(reset.failures, 0);
        let (open, reschedule) = record.after(TargetResult::Failed, &policy, T);
        assert_eq!((open.state(T), reschedule), (TargetState::Open, Reschedule::Move { up_to: T + 10_000, to: T + 10_000 }));
        assert_eq!(gate(Some(&open), T + 1), Gate::Wait(T + 10_000));
        // In-flight sends failing while open change nothing.
        let (still, reschedule) = open.clone().after(TargetResult::Failed, &policy, T + 5);
        assert_eq!((still.blocked_until, reschedule), (Some(T + 10_000), Reschedule::Nothing));
        // Half-open: one probe; it fails, the cool-down doubles, then caps.
        assert_eq!(open.state(T + 10_000), TargetState::HalfOpen);
        assert_eq!(gate(Some(&open), T + 10_000), Gate::Probe);
        let probing = TargetRecord { probe_until: Some(T + 20_000), ..open.clone() };
        assert_eq!(gate(Some(&probing), T + 10_001), Gate::Wait(T + 20_000));
        // The others waited for the probe's result (until T + 20 s): they wait for the next one.
        let (again, reschedule) = probing.after(TargetResult::Failed, &policy, T + 10_000);
        assert_eq!(reschedule, Reschedule::Move { up_to: T + 30_000, to: T + 30_000 });
        let probing = TargetRecord { probe_until: Some(T + 40_000), ..again };
        let (capped, reschedule) = probing.after(TargetResult::Failed, &policy, T + 30_000);
        assert_eq!(reschedule, Reschedule::Move { up_to: T + 65_000, to: T + 65_000 }, "40 s capped at 35 s");
        let probing = TargetRecord { probe_until: Some(T + 80_000), ..capped };
        let (closed, reschedule) = probing.after(TargetResult::Succeeded, &policy, T + 65_000);
        assert_eq!((closed.state(T + 65_000), reschedule), (TargetState::Closed, Reschedule::Move { up_to: T + 80_000, to: T + 65_000 }));
        assert_eq!((closed.failures, closed.opened), (0, 0));
        assert_eq!(gate(Some(&closed), T + 65_000), Gate::Go);
    }

    #[test]
    fn gone_pauses_until_resumed_and_a_zero_threshold_never_opens() {
        let never = BreakerPolicy { failures: 0, ..BreakerPolicy::default() };
        let mut record = TargetRecord::new("r", "t");
        for _ in 0..100 {
            record = record.after(TargetResult::Failed, &never, T).0;
        }
        assert_eq!(record.state(T), TargetState::Closed);
        let (paused, reschedule) = record.after(TargetResult::Gone, &never, T);
        assert_eq!((paused.state(T), reschedule), (TargetState::Paused, Reschedule::Move { up_to: PAUSED_UNTIL_MS, to: PAUSED_UNTIL_MS }));
        assert_eq!(paused.paused_reason.as_deref(), Some("the receiver answered 410 Gone"));
        assert_eq!(gate(Some(&paused), T), Gate::Wait(PAUSED_UNTIL_MS));
        // A late success of a send already on the wire does not lift a pause.
        let (still, _) = paused.clone().after(TargetResult::Succeeded, &never, T);
        assert_eq!(still.state(T), TargetState::Paused);
        let (resumed, reschedule) = paused.resumed(T);
        assert_eq!((resumed.state(T), reschedule), (TargetState::Closed, Reschedule::Move { up_to: PAUSED_UNTIL_MS, to: T }));
        assert_eq!(gate(None, T), Gate::Go);
    }
}

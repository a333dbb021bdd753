//! The retry schedule: exponential backoff with full jitter, as a pure function of the
//! attempt number and a random draw so it can be tested exactly.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial: Duration,
    pub max: Duration,
    pub factor: f64,
    pub jitter: bool,
    /// A delivery older than this fails instead of retrying (throttled attempts included).
    pub max_age: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(600),
            factor: 2.0,
            jitter: true,
            max_age: Duration::from_secs(24 * 3600),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1`, after `attempt` (1-based) failed. `draw` is
    /// uniform in [0, 1); with jitter the wait is `draw × backoff` ("full jitter").
    pub fn delay(&self, attempt: u32, draw: f64) -> Duration {
        let exponent = attempt.saturating_sub(1).min(63) as i32;
        let backoff = self.initial.as_secs_f64() * self.factor.powi(exponent);
        let capped = backoff.min(self.max.as_secs_f64());
        let seconds = if self.jitter { capped * draw.clamp(0.0, 1.0) } else { capped };
        Duration::from_secs_f64(seconds.max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_capped_and_jittered() {
        let policy = RetryPolicy { jitter: false, max: Duration::from_secs(5), ..RetryPolicy::default() };
        let delays: Vec<u64> = (1..=5).map(|a| policy.delay(a, 0.5).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 5, 5]);
        let jittered = RetryPolicy { jitter: true, ..policy };
        assert_eq!(jittered.delay(3, 0.25), Duration::from_secs(1));
        assert_eq!(jittered.delay(3, 0.0), Duration::ZERO);
    }
}

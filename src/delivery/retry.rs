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
    pub retry_on: RetryOn,
}

/// Which failures are worth another attempt (`retry.retry_on`); anything else fails at once.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryOn {
    pub connect: bool,
    pub timeout: bool,
    pub success_when: bool,
    statuses: Vec<StatusRule>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum StatusRule {
    Exact(u16),
    /// `4xx` / `5xx`: the hundreds digit.
    Class(u16),
}

impl Default for RetryOn {
    fn default() -> Self {
        RetryOn {
            connect: true,
            timeout: true,
            success_when: true,
            statuses: vec![StatusRule::Exact(408), StatusRule::Exact(429), StatusRule::Class(5)],
        }
    }
}

impl RetryOn {
    /// From `[connect, timeout, success_when, 429, 5xx, …]`; the first bad item is the error.
    pub fn parse(items: &[String]) -> Result<RetryOn, String> {
        let mut on = RetryOn { connect: false, timeout: false, success_when: false, statuses: Vec::new() };
        for item in items {
            match item.trim().to_ascii_lowercase().as_str() {
                "connect" => on.connect = true,
                "timeout" => on.timeout = true,
                "success_when" => on.success_when = true,
                class @ ("4xx" | "5xx") => on.statuses.push(StatusRule::Class(u16::from(class.as_bytes()[0] - b'0'))),
                code => match code.parse::<u16>() {
                    Ok(status) if (100..=599).contains(&status) => on.statuses.push(StatusRule::Exact(status)),
                    _ => return Err(format!("retry_on takes connect, timeout, success_when, 4xx, 5xx or a status code, not {item:?}")),
                },
            }
        }
        Ok(on)
    }

    pub fn status(&self, status: u16) -> bool {
        self.statuses.iter().any(|rule| match rule {
            StatusRule::Exact(code) => *code == status,
            StatusRule::Class(class) => status / 100 == *class,
        })
    }
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
            retry_on: RetryOn::default(),
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
    fn retry_on_lists() {
        let default = RetryOn::default();
        assert!(default.status(503) && default.status(429) && default.status(408) && !default.status(404));
        let custom = RetryOn::parse(&["timeout".into(), "4xx".into(), "502".into()]).unwrap();
        assert!(custom.timeout && !custom.connect && custom.status(404) && custom.status(502) && !custom.status(503));
        assert!(RetryOn::parse(&["sometimes".into()]).is_err());
    }

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

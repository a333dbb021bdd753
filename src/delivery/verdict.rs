//! Judging one attempt, the same way for sync answers, the engine and the admin test call:
//! whether an answer counts as delivered (`success` statuses, `success_when`, the preset's
//! answer codes) and, for stored deliveries, what comes next (succeeded, retry at, failed,
//! pause the robot's bucket). Pure: the time and the jitter draw are passed in.

use std::time::Duration;

use http::HeaderMap;

use crate::condition::{Condition, MatchInput};
use crate::delivery::answers::{AnswerCodes, CodeClass};
use crate::delivery::client::Attempt;
use crate::delivery::retry::RetryPolicy;
use crate::delivery::target::{is_success, Target, TargetLimit};
use crate::store::AttemptOutcome;

/// The longest `Retry-After` honoured; a receiver cannot park a delivery for longer.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// What judging needs from a target's config; defaults when the target is gone (removed
/// by a reload): its deliveries are still sent, never dropped.
pub struct TargetSettings<'a> {
    pub timeout: Duration,
    pub retry: RetryPolicy,
    pub success: Option<&'a [u16]>,
    pub success_when: Option<&'a Condition>,
    pub answer_codes: Option<&'static AnswerCodes>,
    pub rate_limit: Option<TargetLimit>,
}

impl<'a> TargetSettings<'a> {
    pub fn of(target: Option<&'a Target>) -> TargetSettings<'a> {
        match target {
            Some(target) => TargetSettings {
                timeout: target.timeout,
                retry: target.retry.clone(),
                success: target.success_statuses(),
                success_when: target.success_when.as_ref(),
                answer_codes: target.answer_codes,
                rate_limit: target.rate_limit.clone(),
            },
            None => TargetSettings {
                timeout: Duration::from_secs(10),
                retry: RetryPolicy::default(),
                success: None,
                success_when: None,
                answer_codes: None,
                rate_limit: None,
            },
        }
    }

    /// How an answer with `status` and `body` is judged.
    pub fn judge(&self, status: u16, body: &[u8]) -> Judged {
        if !is_success(self.success, status) {
            return Judged::Status(status);
        }
        let satisfied = match self.success_when {
            None => true,
            Some(condition) => {
                let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
                let headers = HeaderMap::new();
                parsed
                    .as_ref()
                    .is_some_and(|body| condition.eval(&MatchInput { headers: &headers, query: &[], body: Some(body), event: None }))
            }
        };
        if satisfied {
            return Judged::Delivered;
        }
        match self.answer_codes.and_then(|codes| codes.classify(body)) {
            Some(classified) => Judged::Code { class: classified.class, reason: classified.reason },
            None => Judged::Code {
                class: CodeClass::Retryable,
                reason: format!("answer {status} did not satisfy success_when: {}", String::from_utf8_lossy(&body[..body.len().min(200)])),
            },
        }
    }
}

/// An answer, judged.
#[derive(Debug, Clone, PartialEq)]
pub enum Judged {
    Delivered,
    /// The status is not a success status.
    Status(u16),
    /// A success status whose body says it failed (`success_when`), classified by the
    /// preset's answer codes when it has them.
    Code {
        class: CodeClass,
        reason: String,
    },
}

/// What to do after one attempt of a stored delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub outcome: AttemptOutcome,
    /// Whether the attempt used up one of `retry.max_attempts` (throttling does not).
    pub counted: bool,
    /// Hold every delivery to this receiver's bucket back this long.
    pub pause: Option<Duration>,
    /// The receiver failed in a way a retry could fix (no answer, a timeout, a retryable
    /// status or `success_when`): what the target's circuit breaker counts.
    pub receiver_failed: bool,
}

/// The retry rules of DESIGN §6 for one attempt of a delivery that had `attempts` counted
/// attempts before it and was created at `created_at` (ms). `draw` in [0, 1) is the jitter.
pub fn decide(attempts: u32, created_at: i64, result: &Attempt, settings: &TargetSettings<'_>, now: i64, draw: f64) -> Decision {
    let mut throttled = result.status == Some(429);
    let mut pause = match (throttled, result.retry_after) {
        (true, Some(after)) => Some(after.min(MAX_RETRY_AFTER)),
        _ => None,
    };
    let (retryable, reason) = match result.status.map(|status| settings.judge(status, &result.answer)) {
        Some(Judged::Delivered) => {
            return Decision { outcome: AttemptOutcome::Succeeded, counted: true, pause: None, receiver_failed: false }
        }
        Some(Judged::Code { class: CodeClass::Final, reason }) => {
            let reason = format!("{reason} (final: retrying cannot help)");
            return Decision { outcome: AttemptOutcome::Failed { reason }, counted: true, pause: None, receiver_failed: false };
        }
        Some(Judged::Code { class: CodeClass::Throttled(wait), reason }) => {
            throttled = true;
            pause = Some(wait);
            (true, format!("{reason} (throttled)"))
        }
        Some(Judged::Code { class: CodeClass::Retryable, reason }) => (settings.retry.retry_on.success_when, reason),
        Some(Judged::Status(status)) => (settings.retry.retry_on.status(status), format!("answer {status}")),
        None => {
            let wanted = if result.timed_out { settings.retry.retry_on.timeout } else { settings.retry.retry_on.connect };
            (result.retryable && wanted, result.error.clone().unwrap_or_else(|| "no answer".to_string()))
        }
    };
    let counted = !throttled;
    if !retryable {
        return Decision { outcome: AttemptOutcome::Failed { reason }, counted, pause, receiver_failed: false };
    }
    let receiver_failed = counted;
    let attempts = attempts + u32::from(counted);
    let age = Duration::from_millis(u64::try_from(now - created_at).unwrap_or(0));
    if attempts >= settings.retry.max_attempts && counted {
        return Decision {
            outcome: AttemptOutcome::Failed { reason: format!("{reason}; gave up after {attempts} attempts") },
            counted,
            pause,
            receiver_failed,
        };
    }
    if age >= settings.retry.max_age {
        return Decision {
            outcome: AttemptOutcome::Failed { reason: format!("{reason}; gave up after {age:?} (max_age)") },
            counted,
            pause,
            receiver_failed,
        };
    }
    let backoff = settings.retry.delay(attempts.max(1), draw);
    let wait = match (pause, result.retry_after) {
        (Some(pause), _) => pause,
        (None, Some(after)) => after.min(MAX_RETRY_AFTER).max(backoff),
        (None, None) => backoff,
    };
    let wait_ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2);
    Decision { outcome: AttemptOutcome::RetryAt(now + wait_ms), counted, pause, receiver_failed }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::answers::DINGTALK;
    use bytes::Bytes;

    fn answer(status: Option<u16>, body: &str, retry_after: Option<u64>) -> Attempt {
        Attempt {
            status,
            headers: HeaderMap::new(),
            answer: Bytes::from(body.to_string()),
            retry_after: retry_after.map(Duration::from_secs),
            error: status.is_none().then(|| "connection refused".to_string()),
            retryable: true,
            timed_out: false,
            duration: Duration::ZERO,
        }
    }

    fn retry_at(ms: i64, counted: bool, pause: Option<u64>) -> Decision {
        Decision { outcome: AttemptOutcome::RetryAt(ms), counted, pause: pause.map(Duration::from_secs), receiver_failed: counted }
    }

    fn failed(reason: &str, receiver_failed: bool) -> Decision {
        Decision { outcome: AttemptOutcome::Failed { reason: reason.to_string() }, counted: true, pause: None, receiver_failed }
    }

    /// Every rule as a table: (attempts before, age ms, answer, jitter draw) → decision, with
    /// the default policy (10 attempts, 1 s initial, factor 2, jitter, 24 h max age) and the
    /// DingTalk preset's `success_when` and answer codes.
    #[test]
    fn decisions_table() {
        let condition = {
            let raw = crate::config::model::RawMatch {
                body: vec![serde_json::from_value(serde_json::json!({ "path": "$.errcode", "equals": 0 })).unwrap()],
                ..Default::default()
            };
            crate::condition::compile_match(&raw, "t", true, &mut crate::config::Problems::default(), &mut Default::default())
        };
        let settings = TargetSettings {
            timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            success: None,
            success_when: Some(&condition),
            answer_codes: Some(&DINGTALK),
            rate_limit: None,
        };
        let now = 100_000_000;
        let day = 24 * 3600 * 1000;
        let rows: Vec<(u32, i64, Attempt, f64, Decision)> = vec![
            (
                0,
                0,
                answer(Some(200), r#"{"errcode":0}"#, None),
                0.5,
                Decision { outcome: AttemptOutcome::Succeeded, counted: true, pause: None, receiver_failed: false },
            ),
            // Backoff: attempt n waits initial * 2^(n-1) * draw.
            (0, 0, answer(Some(503), "", None), 0.5, retry_at(now + 500, true, None)),
            (3, 0, answer(Some(503), "", None), 0.5, retry_at(now + 4_000, true, None)),
            (0, 0, answer(None, "", None), 1.0, retry_at(now + 1_000, true, None)),
            // Retry-After wins when longer than the backoff; a 429 does not use up an attempt.
            (0, 0, answer(Some(503), "", Some(30)), 0.5, retry_at(now + 30_000, true, None)),
            (9, 0, answer(Some(429), "", Some(5)), 0.5, retry_at(now + 5_000, false, Some(5))),
            // Other 4xx fail at once; the last attempt gives up.
            (0, 0, answer(Some(404), "", None), 0.5, failed("answer 404", false)),
            (9, 0, answer(Some(503), "", None), 0.5, failed("answer 503; gave up after 10 attempts", true)),
            (0, day, answer(Some(503), "", None), 0.5, failed("answer 503; gave up after 86400s (max_age)", true)),
            // Answer codes: final fails at once, throttled pauses without using an attempt.
            (
                0,
                0,
                answer(Some(200), r#"{"errcode":310000,"errmsg":"keywords not in content"}"#, None),
                0.5,
                failed("dingtalk errcode 310000: keywords not in content (final: retrying cannot help)", false),
            ),
            (9, 0, answer(Some(200), r#"{"errcode":410100,"errmsg":"too fast"}"#, None), 0.5, retry_at(now + 600_000, false, Some(600))),
            (0, 0, answer(Some(200), r#"{"errcode":-1,"errmsg":"busy"}"#, None), 0.5, retry_at(now + 500, true, None)),
        ];
        for (index, (attempts, age, result, draw, expected)) in rows.into_iter().enumerate() {
            assert_eq!(decide(attempts, now - age, &result, &settings, now, draw), expected, "row {index}");
        }
    }
}

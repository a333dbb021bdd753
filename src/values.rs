//! Small conversions shared by matching, sources, verification and templates: the text of
//! a JSON scalar, Unix timestamps that may be seconds or milliseconds, points in time as
//! filters give them, and constant-time comparison of secrets.

use std::borrow::Cow;

use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The text of a string, number or boolean; `None` for null, arrays and objects.
pub fn scalar_text(value: &Value) -> Option<Cow<'_, str>> {
    match value {
        Value::String(text) => Some(Cow::Borrowed(text)),
        Value::Number(number) => Some(Cow::Owned(number.to_string())),
        Value::Bool(flag) => Some(Cow::Borrowed(if *flag { "true" } else { "false" })),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// Timestamps above this are taken as milliseconds (10^11 seconds is the year 5138).
pub const MILLIS_THRESHOLD: u64 = 100_000_000_000;

/// Seconds since the epoch from a value that may be seconds or milliseconds.
pub fn unix_seconds(number: i64) -> i64 {
    if number.unsigned_abs() > MILLIS_THRESHOLD {
        number / 1000
    } else {
        number
    }
}

/// A point in time as an admin filter or a command-line flag gives it: milliseconds since
/// the epoch, RFC 3339, or a duration (`24h`, `90m`) meaning that long before `now_ms`.
pub fn instant_ms(value: &Value, now_ms: i64) -> Result<i64, String> {
    match value {
        Value::Number(number) => number.as_i64().ok_or_else(|| format!("{number} is not whole milliseconds")),
        Value::String(text) => {
            let text = text.trim();
            if let Ok(ms) = text.parse::<i64>() {
                return Ok(ms);
            }
            if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
                return Ok(time.timestamp_millis());
            }
            match crate::config::units::parse_duration(text) {
                Ok(ago) => Ok(now_ms.saturating_sub(i64::try_from(ago.as_millis()).unwrap_or(i64::MAX))),
                Err(_) => Err(format!("{text:?} is neither RFC 3339, milliseconds since the epoch, nor a duration such as 24h")),
            }
        }
        other => Err(format!("{other} is neither RFC 3339, milliseconds since the epoch, nor a duration such as 24h")),
    }
}

/// Compares a presented secret with the expected one in constant time. Both sides are
/// hashed first so neither the content nor the length leaks through timing.
pub fn secret_eq(given: &[u8], expected: &[u8]) -> bool {
    let given = Sha256::digest(given);
    let expected = Sha256::digest(expected);
    bool::from(given.as_slice().ct_eq(expected.as_slice()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn instants_as_filters_give_them() {
        let now = 1_700_000_000_000;
        assert_eq!(instant_ms(&json!(1_600_000_000_000i64), now), Ok(1_600_000_000_000));
        assert_eq!(instant_ms(&json!("1600000000000"), now), Ok(1_600_000_000_000));
        assert_eq!(instant_ms(&json!("2023-11-14T22:13:20Z"), now), Ok(1_700_000_000_000));
        assert_eq!(instant_ms(&json!("24h"), now), Ok(now - 86_400_000));
        assert!(instant_ms(&json!("yesterday"), now).unwrap_err().contains("RFC 3339"));
        assert!(instant_ms(&json!(1.5), now).is_err());
        assert!(instant_ms(&json!(null), now).is_err());
    }

    #[test]
    fn conversions() {
        assert_eq!(scalar_text(&json!("a")).as_deref(), Some("a"));
        assert_eq!(scalar_text(&json!(1.5)).as_deref(), Some("1.5"));
        assert_eq!(scalar_text(&json!(true)).as_deref(), Some("true"));
        assert_eq!(scalar_text(&json!([1])), None);
        assert_eq!(unix_seconds(1_700_000_000), 1_700_000_000);
        assert_eq!(unix_seconds(1_700_000_000_123), 1_700_000_000);
        assert!(secret_eq(b"s3cret", b"s3cret"));
        assert!(!secret_eq(b"s3cret", b"s3cre"));
        assert!(!secret_eq(b"", b"x"));
    }
}

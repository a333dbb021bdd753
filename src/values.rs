//! Small conversions shared by matching, sources, verification and templates: the text of
//! a JSON scalar, Unix timestamps that may be seconds or milliseconds, and constant-time
//! comparison of secrets.

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

//! How the delivery log keeps an attempt small, the same for every backend: bodies cut
//! without splitting a character, the answer of an attempt to be retried cut shorter, an
//! error equal to the one before stored as a repeat, request headers kept as what they add
//! to the delivery's, and the delivery's state after an attempt.

use super::{AttemptOutcome, AttemptRecord, AttemptView, DeliveryStatus, StoreError, MAX_EARLIER_ANSWER, MAX_STORED_BODY};

/// How much of an attempt's answer body is kept: all of it (up to [`MAX_STORED_BODY`]) for
/// the last attempt, [`MAX_EARLIER_ANSWER`] for one that will be retried.
pub(super) fn answer_bound(outcome: &AttemptOutcome) -> usize {
    if matches!(outcome, AttemptOutcome::RetryAt(_)) {
        MAX_EARLIER_ANSWER
    } else {
        MAX_STORED_BODY
    }
}

pub(super) fn lossy(body: Vec<u8>) -> String {
    String::from_utf8(body).unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned())
}

/// Headers as stored: JSON `[[name, value], ...]`, keeping order and repeats.
pub(super) fn headers_json(headers: &[(String, String)]) -> Result<String, StoreError> {
    serde_json::to_string(headers).map_err(|error| StoreError::InvalidInput(format!("headers: {error}")))
}

/// The bytes [`headers_json`] makes of `headers`, counted without building the text.
pub fn stored_headers_len(headers: &[(String, String)]) -> usize {
    struct Counted(usize);
    impl std::io::Write for Counted {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counted = Counted(0);
    // Writing strings into a counter cannot fail; were it to, the count so far still stands.
    let _ = serde_json::to_writer(&mut counted, headers);
    counted.0
}

/// An attempt's request headers (JSON) as stored beside its delivery's `stored` ones:
/// `(None, None)` when they are the same; `(None, Some(added))` when they are the
/// delivery's followed by more (the credential or signature a target adds at send time,
/// masked), `added` being the JSON of those; else `(Some(own), None)`. Both come from
/// [`headers_json`], so a text prefix that ends with a header pair is that pair.
pub(super) fn headers_beside<'a>(attempt: &'a str, stored: &str) -> (Option<&'a str>, Option<String>) {
    if attempt == stored {
        return (None, None);
    }
    let added = stored
        .strip_suffix(']')
        .filter(|open| open.len() > 1)
        .and_then(|open| attempt.strip_prefix(open))
        .and_then(|rest| rest.strip_prefix(','));
    match added {
        Some(more) => (None, Some(format!("[{more}"))),
        None => (Some(attempt), None),
    }
}

/// Attempts in order, with the errors stored as "the same as the attempt before"
/// (`error_repeats`) filled in.
pub(super) fn with_repeated_errors(rows: Vec<(AttemptView, bool)>) -> Vec<AttemptView> {
    let mut before: Option<String> = None;
    rows.into_iter()
        .map(|(mut attempt, repeats)| {
            if repeats {
                attempt.error.clone_from(&before);
            } else {
                before.clone_from(&attempt.error);
            }
            attempt
        })
        .collect()
}

/// The delivery's state after an attempt with `outcome`.
pub(super) struct Finished {
    pub(super) status: DeliveryStatus,
    pub(super) next_attempt_at: Option<i64>,
    pub(super) last_error: Option<String>,
}

impl Finished {
    pub(super) fn of(attempt: &AttemptRecord, outcome: &AttemptOutcome) -> Finished {
        match outcome {
            AttemptOutcome::Succeeded => {
                Finished { status: DeliveryStatus::Succeeded, next_attempt_at: None, last_error: attempt.error.clone() }
            }
            AttemptOutcome::RetryAt(at) => {
                Finished { status: DeliveryStatus::Pending, next_attempt_at: Some(*at), last_error: attempt.error.clone() }
            }
            AttemptOutcome::Failed { reason } => {
                Finished { status: DeliveryStatus::Failed, next_attempt_at: None, last_error: Some(reason.clone()) }
            }
        }
    }
}

/// `body` cut to at most `bound` bytes, backing off (by at most 3) so that the cut does not
/// split a UTF-8 character: the delivery log shows bodies as text.
pub(super) fn cut(body: &[u8], bound: usize) -> &[u8] {
    if body.len() <= bound {
        return body;
    }
    let mut end = bound;
    while end > 0 && bound - end < 3 && body[end] & 0b1100_0000 == 0b1000_0000 {
        end -= 1;
    }
    &body[..end]
}

#[cfg(test)]
mod tests {
    use super::headers_beside;

    #[test]
    fn an_attempt_keeps_only_the_headers_it_added() {
        let stored = r#"[["a","1"],["b","2"]]"#;
        assert_eq!(headers_beside(stored, stored), (None, None));
        assert_eq!(headers_beside(r#"[["a","1"],["b","2"],["c","3"]]"#, stored), (None, Some(r#"[["c","3"]]"#.to_string())));
        // A changed value, a value that only starts the same, fewer headers, none stored.
        for own in [r#"[["a","1"],["b","22"]]"#, r#"[["a","1"],["b","2\"],[\"c"]]"#, r#"[["a","1"]]"#] {
            assert_eq!(headers_beside(own, stored), (Some(own), None), "{own}");
        }
        assert_eq!(headers_beside(r#"[["c","3"]]"#, "[]"), (Some(r#"[["c","3"]]"#), None));
    }
}

//! An attempt made while its delivery's accept is still waiting to be written: when the
//! attempt ends first, the accept stores the delivery already finished by it (one write
//! instead of an accept and then a finish). Owns the hand-over between the worker that
//! sends and the store that writes the accept; both sides may get there first.

use std::sync::{Arc, Mutex, PoisonError};

use super::{AttemptOutcome, AttemptRecord};

/// An attempt and what its worker decided, made before its delivery was stored.
#[derive(Debug, Clone, PartialEq)]
pub struct MadeAttempt {
    pub attempt: AttemptRecord,
    pub outcome: AttemptOutcome,
    /// When it was decided (ms): the delivery's `updated_at`.
    pub decided_at: i64,
}

#[derive(Debug)]
enum State {
    /// Neither side has got here yet.
    Sending,
    /// The worker offered its attempt; the store has not written the delivery yet.
    Offered(Arc<MadeAttempt>),
    /// The store wrote the delivery: finished by this attempt, or (`None`) in flight.
    Written(Option<Arc<MadeAttempt>>),
}

/// Shared by a delivery handed off at accept and the worker sending it.
#[derive(Debug)]
pub struct EarlyAttempt {
    state: Mutex<State>,
    offered: tokio::sync::Notify,
}

/// The same hand-over, not an equal one: a delivery compares equal only with itself.
impl PartialEq for EarlyAttempt {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Default for EarlyAttempt {
    fn default() -> Self {
        EarlyAttempt { state: Mutex::new(State::Sending), offered: tokio::sync::Notify::new() }
    }
}

impl EarlyAttempt {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a plain value replaced whole: a panic elsewhere cannot leave it torn.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// For the store, as it writes the accept: the attempt to store the delivery finished
    /// by, or `None` to store it in flight. Decided at the first call: an accept written
    /// again (its batch was rolled back and run again) gets the same answer.
    pub fn settle(&self) -> Option<Arc<MadeAttempt>> {
        let mut state = self.state();
        let made = match &*state {
            State::Sending => None,
            State::Offered(made) => Some(made.clone()),
            State::Written(made) => return made.clone(),
        };
        *state = State::Written(made.clone());
        made
    }

    /// For the worker, once its attempt is decided: hands it to an accept not written yet.
    /// Too late (the delivery was stored in flight), it comes back, to be recorded as a
    /// finish.
    pub fn offer(&self, made: MadeAttempt) -> Option<MadeAttempt> {
        let mut state = self.state();
        match &*state {
            State::Sending => {
                *state = State::Offered(Arc::new(made));
                self.offered.notify_one();
                None
            }
            _ => Some(made),
        }
    }

    /// Returns once the worker offered its attempt.
    pub async fn offered(&self) {
        self.offered.notified().await;
    }

    /// For the worker, after the accept committed: `None` when the accept stored the
    /// offered attempt; otherwise the attempt back (a store that does not take early
    /// attempts left it), to be recorded as a finish.
    pub fn unrecorded(&self) -> Option<MadeAttempt> {
        match &*self.state() {
            State::Offered(made) => Some(MadeAttempt::clone(made)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn made(status: u16) -> MadeAttempt {
        MadeAttempt {
            attempt: AttemptRecord {
                started_at: 1,
                duration_ms: 2,
                request_url: None,
                request_method: "POST".into(),
                request_headers: vec![],
                request_body: bytes::Bytes::new(),
                status: Some(status),
                response_headers: vec![],
                response_body: bytes::Bytes::new(),
                error: None,
                counted: true,
            },
            outcome: AttemptOutcome::Succeeded,
            decided_at: 3,
        }
    }

    #[test]
    fn an_attempt_offered_first_is_written_with_the_accept_every_time_it_runs() {
        let early = EarlyAttempt::default();
        assert_eq!(early.offer(made(200)), None);
        let written = early.settle().map(|made| made.attempt.status);
        assert_eq!(written, Some(Some(200)));
        // The batch ran again: the same answer.
        assert_eq!(early.settle().map(|made| made.attempt.status), written);
        assert_eq!(early.unrecorded(), None);
    }

    #[test]
    fn an_attempt_offered_after_the_accept_was_written_comes_back() {
        let early = EarlyAttempt::default();
        assert!(early.settle().is_none());
        assert_eq!(early.offer(made(500)), Some(made(500)));
        assert!(early.settle().is_none());
        assert_eq!(early.unrecorded(), None);
    }

    #[test]
    fn an_attempt_a_store_never_took_comes_back_after_the_commit() {
        let early = EarlyAttempt::default();
        assert_eq!(early.offer(made(200)), None);
        assert_eq!(early.unrecorded(), Some(made(200)));
    }
}

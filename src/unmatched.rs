//! Requests no route took, kept for `store.keep_unmatched` when it is set (credentials
//! masked, bounded in count and bytes), so that a replay under a fixed config can pick up
//! what the old config missed. Best effort: the sender's answer never waits for it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::engine::Engine;
use crate::store::NewEvent;

/// The most kept requests on record; each prune keeps the newest this many.
pub const MAX_KEPT: u64 = 10_000;
/// Bytes of kept requests between two prunes (anyone can send unmatched requests).
const MAX_KEPT_BYTES: u64 = 256 * 1024 * 1024;
/// Writes in the background at once; beyond, a request is not kept.
const WRITES_AT_ONCE: usize = 16;

pub struct Keeper {
    writes: Arc<Semaphore>,
    kept: AtomicU64,
    bytes: AtomicU64,
}

impl Default for Keeper {
    fn default() -> Keeper {
        Keeper { writes: Arc::new(Semaphore::new(WRITES_AT_ONCE)), kept: AtomicU64::new(0), bytes: AtomicU64::new(0) }
    }
}

impl Keeper {
    /// Stores the request in the background when the bounds leave room; says whether it will.
    pub fn keep(&self, engine: &Arc<Engine>, event: NewEvent) -> bool {
        let size = (event.body.len() + event.path.len() + event.headers.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>()) as u64;
        let room = self.kept.fetch_update(Ordering::AcqRel, Ordering::Acquire, |kept| (kept < MAX_KEPT).then_some(kept + 1)).is_ok();
        if !room {
            return false;
        }
        let fits =
            self.bytes.fetch_update(Ordering::AcqRel, Ordering::Acquire, |bytes| (bytes + size <= MAX_KEPT_BYTES).then_some(bytes + size));
        let permit = self.writes.clone().try_acquire_owned();
        let (Ok(_), Ok(permit)) = (fits, permit) else {
            self.kept.fetch_sub(1, Ordering::AcqRel);
            if fits.is_ok() {
                self.bytes.fetch_sub(size, Ordering::AcqRel);
            }
            return false;
        };
        let engine = engine.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let frame = engine.feed().event_frame(&event);
            match engine.store().accept_unless_duplicate(event, Vec::new(), None).await {
                Ok(_) => engine.feed().send(frame),
                Err(err) => tracing::warn!(error = %err, "could not keep an unmatched request"),
            }
        });
        true
    }

    /// After a prune (which leaves at most [`MAX_KEPT`]) the bounds count again from zero.
    pub fn pruned(&self) {
        self.kept.store(0, Ordering::Release);
        self.bytes.store(0, Ordering::Release);
    }
}

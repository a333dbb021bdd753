//! The group-commit loop PostgreSQL's batched writes share: writes queued while the
//! writers are busy form the next batch, and at most [`WRITERS`] batches are on the server
//! at once, so a busy relay pays one round trip and one commit for dozens of writes.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};

use crate::store::StoreError;

/// Batches committing at once: the next batch forms while these wait on the server.
pub(super) const WRITERS: usize = 2;

/// Takes what `pending` holds, up to `max` at a time (those `keep` still wants), and runs
/// `commit` on each batch once a writer is free; returns when `pending` is closed.
pub(super) async fn run<T, C, F>(mut pending: mpsc::Receiver<T>, max: usize, keep: fn(&T) -> bool, commit: C)
where
    C: Fn(Vec<T>) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let writers = Arc::new(Semaphore::new(WRITERS));
    loop {
        // Wait for a free writer first: writes arriving meanwhile join the next batch.
        let Ok(writer) = writers.clone().acquire_owned().await else { return };
        let Some(first) = pending.recv().await else { return };
        let mut batch = vec![first];
        while batch.len() < max {
            match pending.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        batch.retain(keep);
        if batch.is_empty() {
            continue;
        }
        let committing = commit(batch);
        tokio::spawn(async move {
            committing.await;
            drop(writer);
        });
    }
}

/// Whether the database refused the statement (rather than the connection failing): only
/// then is a batch worth writing again one write at a time, so that only the one at fault
/// fails; a lost connection would only fail each of them again, slowly.
pub(super) fn refused(error: &StoreError) -> bool {
    match error {
        StoreError::Conflict(_) | StoreError::InvalidInput(_) => true,
        StoreError::Postgres(error) => error.as_db_error().is_some(),
        _ => false,
    }
}

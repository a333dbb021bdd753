//! Group commit: one thread owns the only write connection. It takes every write queued
//! (up to [`MAX_BATCH`]), runs them in one transaction, commits once and only then answers
//! them all, so many concurrent writers share one fsync. A write that fails is undone
//! alone and the rest of its batch still commits: the batch then runs again with each write
//! in its own savepoint (paid only then, as a savepoint copies every page its write
//! changes). A batch of only unsynced writes commits without the fsync (the next synced
//! commit or checkpoint syncs it). Owns batching and the commit counter; knows nothing of
//! the domain's SQL.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::StoreError;

/// The most writes one transaction takes; bounds how long a batch holds the others up.
const MAX_BATCH: usize = 256;
/// Writes waiting beyond this make callers wait (asynchronously) to queue theirs.
const QUEUE_CAPACITY: usize = 4096;

/// One queued write: run inside the batch's transaction, answered once the batch's fate is known.
trait Job: Send {
    /// Runs the write, `isolated` in a savepoint of its own that its failure rolls back. An
    /// error here means the savepoint machinery failed and the whole transaction can no
    /// longer be trusted; the write's own errors are kept for `answer`.
    fn run(&mut self, conn: &Connection, isolated: bool) -> Result<(), StoreError>;
    /// Whether its last run failed (and left the transaction with part of it, unless isolated).
    fn failed(&self) -> bool;
    /// Whether it can run again after its batch was rolled back; one that cannot runs isolated.
    fn rerunnable(&self) -> bool;
    fn answer(self: Box<Self>, batch: Result<(), StoreError>);
    /// Whether its commit must reach the disk before it is answered.
    fn synced(&self) -> bool;
}

struct Write<T, F> {
    synced: bool,
    /// False for a write that consumes what it writes: its batch runs isolated.
    rerunnable: bool,
    op: F,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job for Write<T, F>
where
    T: Send,
    F: FnMut(&Connection) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, conn: &Connection, isolated: bool) -> Result<(), StoreError> {
        if !isolated {
            self.result = Some((self.op)(conn));
            return Ok(());
        }
        self.result = Some(in_savepoint(conn, &mut self.op)?);
        Ok(())
    }

    fn failed(&self) -> bool {
        matches!(self.result, Some(Err(_)))
    }

    fn rerunnable(&self) -> bool {
        self.rerunnable
    }

    fn answer(self: Box<Self>, batch: Result<(), StoreError>) {
        let result = match (batch, self.result) {
            (Err(error), _) => Err(error),
            (Ok(()), Some(result)) => result,
            // A batch only commits after running every job in it, so this is unreachable.
            (Ok(()), None) => Err(StoreError::Closed),
        };
        // The caller may have stopped waiting; the write stands either way.
        let _ = self.reply.send(result);
    }

    fn synced(&self) -> bool {
        self.synced
    }
}

/// Runs `op` in a savepoint of its own, rolled back if it fails; the outer error is the
/// savepoint machinery's.
fn in_savepoint<T>(conn: &Connection, op: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<Result<T, StoreError>, StoreError> {
    conn.prepare_cached("SAVEPOINT write")?.execute([])?;
    let result = op(conn);
    if result.is_err() {
        conn.prepare_cached("ROLLBACK TO write")?.execute([])?;
    }
    conn.prepare_cached("RELEASE write")?.execute([])?;
    Ok(result)
}

type Queue = mpsc::Sender<Box<dyn Job>>;

pub(super) struct Writer {
    queue: Mutex<Option<Queue>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    commits: Arc<AtomicU64>,
}

impl Writer {
    pub(super) fn start(conn: Connection) -> std::io::Result<Writer> {
        let (queue, jobs) = mpsc::channel(QUEUE_CAPACITY);
        let commits = Arc::new(AtomicU64::new(0));
        let counter = commits.clone();
        let thread = std::thread::Builder::new().name("store-writer".into()).spawn(move || run(conn, jobs, &counter))?;
        Ok(Writer { queue: Mutex::new(Some(queue)), thread: Mutex::new(Some(thread)), commits })
    }

    /// Queues `op` and answers once the transaction it ran in is on disk (fsynced), or failed.
    /// `op` runs again, from the start, when another write of its batch fails: it may
    /// depend on nothing but the connection and what it captured.
    pub(super) async fn write<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.queue_write(true, true, op).await
    }

    /// Runs `op` and answers once its transaction is committed, without waiting for the
    /// disk: a crash of the process loses nothing, one of the machine may lose it. For
    /// writes that can be lost that way (a claim, an attempt's record: the delivery is
    /// sent again), never for accepting an event.
    pub(super) async fn write_unsynced<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.queue_write(false, true, op).await
    }

    /// As [`Writer::write`] or [`Writer::write_unsynced`], for an `op` that can run only once.
    pub(super) async fn write_once<T, F>(&self, synced: bool, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let mut op = Some(op);
        let once = move |conn: &Connection| match op.take() {
            Some(op) => op(conn),
            // Unreachable: a write that cannot run again runs isolated, once.
            None => Err(StoreError::Closed),
        };
        self.queue_write(synced, false, once).await
    }

    async fn queue_write<T, F>(&self, synced: bool, rerunnable: bool, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Write { synced, rerunnable, op, result: None, reply });
        let queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner).clone().ok_or(StoreError::Closed)?;
        #[cfg(test)]
        let _held = HoldPausedClock::new();
        queue.send(job).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Transactions committed so far.
    pub(super) fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Stops taking writes, lets the thread finish what is queued, and waits for it.
    pub(super) async fn close(&self) {
        drop(self.queue.lock().unwrap_or_else(PoisonError::into_inner).take());
        let thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(thread) = thread {
            let joined = tokio::task::spawn_blocking(move || thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::error!("the store writer thread panicked");
            }
        }
    }
}

/// In tests on tokio's paused clock: while a write is on the writer thread the runtime
/// looks idle and would move the clock on to its next timer. A blocking task holds the
/// clock still (tokio stops auto-advancing while one runs) until this is dropped.
#[cfg(test)]
struct HoldPausedClock {
    /// Dropping it ends the blocking task.
    _release: Option<std::sync::mpsc::Sender<()>>,
}

#[cfg(test)]
impl HoldPausedClock {
    fn new() -> HoldPausedClock {
        let (release, released) = std::sync::mpsc::channel::<()>();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(move || released.recv());
                HoldPausedClock { _release: Some(release) }
            }
            Err(_) => HoldPausedClock { _release: None },
        }
    }
}

/// The writer thread: runs until every sender is gone and the queue is empty.
fn run(mut conn: Connection, mut jobs: mpsc::Receiver<Box<dyn Job>>, commits: &AtomicU64) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    // The connection opens with synchronous = FULL.
    let mut synced = true;
    while let Some(first) = jobs.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let outcome = commit_batch(&mut conn, &mut batch, &mut synced);
        match &outcome {
            Ok(()) => {
                commits.fetch_add(1, Ordering::Relaxed);
                tracing::trace!(writes = batch.len(), "store batch committed");
            }
            Err(error) => tracing::error!(writes = batch.len(), %error, "store batch failed"),
        }
        for job in batch.drain(..) {
            job.answer(outcome.clone());
        }
    }
}

/// Commits one batch, with the fsync if any of its writes needs it. The durability level is
/// set before the batch runs, so a failure to set it fails the batch unrun: a synced write
/// is never committed at the lower level.
fn commit_batch(conn: &mut Connection, batch: &mut [Box<dyn Job>], synced: &mut bool) -> Result<(), StoreError> {
    let wanted = batch.iter().any(|job| job.synced());
    if wanted != *synced {
        conn.pragma_update(None, "synchronous", if wanted { "FULL" } else { "NORMAL" })?;
        *synced = wanted;
    }
    run_batch(conn, batch)
}

fn run_batch(conn: &mut Connection, batch: &mut [Box<dyn Job>]) -> Result<(), StoreError> {
    // A write that failed alone was undone with its rollback: nothing to run again.
    if batch.iter().all(|job| job.rerunnable()) && (run_writes(conn, batch, false)? || batch.len() == 1) {
        return Ok(());
    }
    // A write failed and left part of itself: the batch runs again from the start, each
    // write isolated, so that only the failed one is undone.
    run_writes(conn, batch, true).map(|_| ())
}

/// Runs every write of `batch` in one transaction and commits it; not isolated, it stops at
/// the first write that fails and rolls everything back (false).
fn run_writes(conn: &mut Connection, batch: &mut [Box<dyn Job>], isolated: bool) -> Result<bool, StoreError> {
    // Dropping `tx` on the way out rolls the whole batch back.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for job in batch.iter_mut() {
        job.run(&tx, isolated)?;
        if !isolated && job.failed() {
            return Ok(false);
        }
    }
    tx.commit()?;
    Ok(true)
}

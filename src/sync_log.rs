//! The log of sync deliveries: a sync route queues each answered delivery here and goes on;
//! one task writes what is queued, in one store write at a time, so a busy relay logs many
//! deliveries per commit and an idle one logs each at once. The queue is bounded: when it
//! is full, the request that wants to log waits its turn.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::engine::{now_ms, Engine};
use crate::feed::DeliveryChange;
use crate::store::FinishedDelivery;

/// The most deliveries one write takes.
const MAX_BATCH: usize = 128;
/// How long a busy relay waits for more deliveries before writing those it has: every
/// commit rewrites the last page of each table and index it adds to, so fewer, larger ones
/// write fewer pages.
const LINGER: Duration = Duration::from_millis(2);
/// Deliveries waiting beyond the batch being written; with it, at most 256 answered sync
/// deliveries (and the bodies they hold) wait for the disk.
const QUEUE_CAPACITY: usize = 128;

pub struct SyncLog {
    queue: mpsc::Sender<FinishedDelivery>,
    closing: watch::Sender<bool>,
    writing: Mutex<Option<JoinHandle<()>>>,
}

impl SyncLog {
    /// Starts the task that writes the log to `engine`'s store; call within the runtime.
    pub fn start(engine: Arc<Engine>) -> SyncLog {
        let (queue, queued) = mpsc::channel(QUEUE_CAPACITY);
        let (closing, closed) = watch::channel(false);
        let writing = tokio::spawn(write_queued(engine, queued, closed));
        SyncLog { queue, closing, writing: Mutex::new(Some(writing)) }
    }

    /// Queues `finished` to be logged, waiting while the queue is full.
    pub async fn log(&self, finished: FinishedDelivery) {
        if self.queue.send(finished).await.is_err() {
            tracing::warn!("could not log the sync delivery: the relay is stopping");
        }
    }

    /// Takes no more deliveries and waits, until `deadline`, for those queued to be written.
    pub async fn close(&self, deadline: tokio::time::Instant) {
        let _ = self.closing.send(true);
        let writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(writing) = writing {
            if tokio::time::timeout_at(deadline, writing).await.is_err() {
                tracing::warn!("stopped before every sync delivery was logged");
            }
        }
    }
}

/// Writes what is queued, a batch at a time, until the log is closed and its queue empty.
async fn write_queued(engine: Arc<Engine>, mut queued: mpsc::Receiver<FinishedDelivery>, mut closed: watch::Receiver<bool>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        tokio::select! {
            taken = queued.recv_many(&mut batch, MAX_BATCH) => if taken == 0 { return },
            // Senders may outlive the relay's shutdown: closing ends the queue, and what
            // is already in it is still written.
            _ = closed.wait_for(|closed| *closed), if !queued.is_closed() => {
                queued.close();
                continue;
            }
        }
        // More than one waiting: a busy relay, which logs more per commit if it waits a
        // moment for the deliveries being answered now. An idle one logs each at once.
        if batch.len() > 1 && batch.len() < MAX_BATCH && !queued.is_closed() {
            tokio::time::sleep(LINGER).await;
            while batch.len() < MAX_BATCH {
                match queued.try_recv() {
                    Ok(more) => batch.push(more),
                    Err(_) => break,
                }
            }
        }
        write(&engine, batch.drain(..).collect()).await;
    }
}

async fn write(engine: &Engine, finished: Arc<[FinishedDelivery]>) {
    match engine.store().record_finished(finished.clone(), now_ms()).await {
        Ok(()) => announce(engine, &finished),
        Err(error) if finished.len() == 1 => tracing::warn!(%error, "could not log the sync delivery"),
        // One write for all: one delivery the store refuses must not lose the others.
        Err(_) => {
            for one in finished.iter() {
                let one: Arc<[FinishedDelivery]> = Arc::from([one.clone()]);
                match engine.store().record_finished(one.clone(), now_ms()).await {
                    Ok(()) => announce(engine, &one),
                    Err(error) => tracing::warn!(%error, "could not log the sync delivery"),
                }
            }
        }
    }
}

/// Tells the live feed about logged deliveries, each after its event when it brought one.
fn announce(engine: &Engine, finished: &[FinishedDelivery]) {
    let feed = engine.feed();
    for FinishedDelivery { event, delivery, attempt, outcome } in finished {
        feed.send(event.as_ref().and_then(|event| feed.event_frame(event)));
        feed.delivery(DeliveryChange {
            id: &delivery.id,
            event_id: &delivery.event_id,
            route: &delivery.route,
            target: &delivery.target,
            status: outcome.status(),
            attempts: 1,
            last_status: attempt.status,
        });
    }
}

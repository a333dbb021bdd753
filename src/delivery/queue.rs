//! The in-memory delivery queue for `respond: async`: bounded, so a flood answers 503
//! instead of growing without limit; workers send each job with retries and backoff.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};

use crate::delivery::client::{attempt, HttpClient};
use crate::delivery::retry::RetryPolicy;
use crate::delivery::target::{is_success, OutgoingRequest};
use crate::metrics;

/// One delivery with what its target says about success and retries.
#[derive(Debug)]
pub struct Job {
    pub request: OutgoingRequest,
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// Statuses that count as delivered; `None` means any 2xx.
    pub success: Option<Arc<[u16]>>,
}

#[derive(Debug, thiserror::Error)]
#[error("the delivery queue is full")]
pub struct QueueFull;

#[derive(Clone)]
pub struct Queue {
    sender: mpsc::Sender<Job>,
    depth: Arc<AtomicI64>,
}

impl Queue {
    /// Starts the workers; at most `concurrency` deliveries are in flight at once.
    pub fn start(client: HttpClient, capacity: usize, concurrency: usize) -> Queue {
        let (sender, receiver) = mpsc::channel(capacity);
        let depth = Arc::new(AtomicI64::new(0));
        tokio::spawn(run(receiver, client, Arc::new(Semaphore::new(concurrency)), depth.clone()));
        Queue { sender, depth }
    }

    /// Queues all jobs of one event or none of them.
    pub fn enqueue_all(&self, jobs: Vec<Job>) -> Result<(), QueueFull> {
        if jobs.is_empty() {
            return Ok(());
        }
        let permits = self.sender.try_reserve_many(jobs.len()).map_err(|_| QueueFull)?;
        let count = jobs.len() as i64;
        for (permit, job) in permits.zip(jobs) {
            permit.send(job);
        }
        let depth = self.depth.fetch_add(count, Ordering::Relaxed) + count;
        ::metrics::gauge!(metrics::QUEUE_DEPTH).set(depth as f64);
        Ok(())
    }

    /// Deliveries accepted and not yet finished (including ones waiting to retry).
    pub fn depth(&self) -> i64 {
        self.depth.load(Ordering::Relaxed)
    }
}

async fn run(mut receiver: mpsc::Receiver<Job>, client: HttpClient, slots: Arc<Semaphore>, depth: Arc<AtomicI64>) {
    while let Some(job) = receiver.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let client = client.clone();
        let depth = depth.clone();
        tokio::spawn(async move {
            deliver(&client, job).await;
            drop(slot);
            let left = depth.fetch_sub(1, Ordering::Relaxed) - 1;
            ::metrics::gauge!(metrics::QUEUE_DEPTH).set(left as f64);
        });
    }
}

/// Sends until success, a permanent failure, or the attempts run out.
async fn deliver(client: &HttpClient, job: Job) {
    let request = &job.request;
    let mut attempt_number = 0;
    loop {
        let outcome = attempt(client, request, job.timeout).await;
        let seconds = outcome.duration.as_secs_f64();
        let status = outcome.status;
        let throttled = status == Some(429);
        if !throttled {
            attempt_number += 1;
        }
        if let Some(code) = status {
            if is_success(job.success.as_deref(), code) {
                metrics::count_delivery(&request.route, &request.target, "succeeded", Some(seconds));
                tracing::info!(route = %request.route, target = %request.target, status = code, attempt = attempt_number, "delivered");
                return;
            }
        }
        let retryable = match status {
            None => true,
            Some(code) => code == 408 || code == 429 || code >= 500,
        };
        if !retryable || attempt_number >= job.retry.max_attempts {
            metrics::count_delivery(&request.route, &request.target, "failed", Some(seconds));
            tracing::warn!(route = %request.route, target = %request.target, status = ?status, error = ?outcome.error, attempts = attempt_number, "delivery failed");
            return;
        }
        metrics::count_delivery(&request.route, &request.target, "retry", Some(seconds));
        let backoff = job.retry.delay(attempt_number.max(1), fastrand::f64());
        let wait = outcome.retry_after.map_or(backoff, |after| after.max(backoff));
        tracing::debug!(route = %request.route, target = %request.target, status = ?status, error = ?outcome.error, ?wait, "retrying");
        tokio::time::sleep(wait).await;
    }
}

//! The in-memory delivery queue for `respond: async`: bounded, so a flood answers 503
//! instead of growing without limit. Each job waits for its rate-limit permit, sends,
//! and retries with backoff; a concurrency slot is held only while a request is on the
//! wire, so receivers that are slow to recover cannot starve the others.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};

use crate::delivery::client::{attempt, HttpClient};
use crate::delivery::retry::RetryPolicy;
use crate::delivery::target::{is_success, OutgoingRequest, TargetLimit};
use crate::metrics;
use crate::ratelimit::OutboundLimiters;

/// One delivery with what its target says about success, retries and rate.
#[derive(Debug)]
pub struct Job {
    pub request: OutgoingRequest,
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// Statuses that count as delivered; `None` means any 2xx.
    pub success: Option<Arc<[u16]>>,
    pub rate_limit: Option<TargetLimit>,
}

#[derive(Debug, thiserror::Error)]
#[error("the delivery queue is full")]
pub struct QueueFull;

#[derive(Clone)]
pub struct Queue {
    sender: mpsc::UnboundedSender<Job>,
    depth: Arc<AtomicI64>,
    capacity: i64,
}

/// What a worker needs besides the job.
struct Workers {
    client: HttpClient,
    limiters: Arc<OutboundLimiters>,
    slots: Semaphore,
    depth: Arc<AtomicI64>,
}

impl Queue {
    /// Starts the workers; at most `concurrency` requests are on the wire at once.
    pub fn start(client: HttpClient, limiters: Arc<OutboundLimiters>, capacity: usize, concurrency: usize) -> Queue {
        // The bound is on deliveries accepted and not finished (waiting to retry included),
        // counted in `depth`; the channel only hands jobs to their tasks.
        let (sender, receiver) = mpsc::unbounded_channel();
        let depth = Arc::new(AtomicI64::new(0));
        let workers = Arc::new(Workers { client, limiters, slots: Semaphore::new(concurrency), depth: depth.clone() });
        tokio::spawn(run(receiver, workers));
        Queue { sender, depth, capacity: i64::try_from(capacity).unwrap_or(i64::MAX) }
    }

    /// Queues all jobs of one event or none of them.
    pub fn enqueue_all(&self, jobs: Vec<Job>) -> Result<(), QueueFull> {
        if jobs.is_empty() {
            return Ok(());
        }
        let count = jobs.len() as i64;
        let depth = self.depth.fetch_add(count, Ordering::AcqRel) + count;
        if depth > self.capacity {
            self.depth.fetch_sub(count, Ordering::AcqRel);
            return Err(QueueFull);
        }
        ::metrics::gauge!(metrics::QUEUE_DEPTH).set(depth as f64);
        for job in jobs {
            if self.sender.send(job).is_err() {
                // The workers are gone (shutting down): nothing will deliver it.
                self.depth.fetch_sub(1, Ordering::AcqRel);
                return Err(QueueFull);
            }
        }
        Ok(())
    }

    /// Deliveries accepted and not yet finished (including ones waiting to retry).
    pub fn depth(&self) -> i64 {
        self.depth.load(Ordering::Relaxed)
    }
}

async fn run(mut receiver: mpsc::UnboundedReceiver<Job>, workers: Arc<Workers>) {
    while let Some(job) = receiver.recv().await {
        let workers = workers.clone();
        tokio::spawn(async move {
            deliver(&workers, job).await;
            let left = workers.depth.fetch_sub(1, Ordering::Relaxed) - 1;
            ::metrics::gauge!(metrics::QUEUE_DEPTH).set(left as f64);
        });
    }
}

/// Sends until success, a permanent failure, or the attempts run out.
async fn deliver(workers: &Workers, job: Job) {
    let request = &job.request;
    let bucket = job.rate_limit.as_ref().map(|limit| workers.limiters.bucket(&limit.key, limit.spec));
    let mut attempt_number = 0;
    loop {
        if let Some(bucket) = &bucket {
            // Async deliveries wait for a permit as long as it takes; they are never dropped.
            let _ = bucket.acquire(None).await;
        }
        let outcome = {
            let Ok(_slot) = workers.slots.acquire().await else { return };
            attempt(&workers.client, request, job.timeout).await
        };
        let seconds = outcome.duration.as_secs_f64();
        let status = outcome.status;
        let throttled = status == Some(429);
        if !throttled {
            attempt_number += 1;
        }
        if status.is_some_and(|code| is_success(job.success.as_deref(), code)) {
            metrics::count_delivery(&request.route, &request.target, "succeeded", Some(seconds));
            tracing::info!(route = %request.route, target = %request.target, status = ?status, attempt = attempt_number, "delivered");
            return;
        }
        let retryable = match status {
            None => outcome.retryable,
            Some(code) => code == 408 || code == 429 || code >= 500,
        };
        if !retryable || attempt_number >= job.retry.max_attempts {
            metrics::count_delivery(&request.route, &request.target, "failed", Some(seconds));
            tracing::warn!(route = %request.route, target = %request.target, status = ?status, error = ?outcome.error, attempts = attempt_number, "delivery failed");
            return;
        }
        metrics::count_delivery(&request.route, &request.target, "retry", Some(seconds));
        // Retry-After is honoured but capped at the policy's longest wait.
        let retry_after = outcome.retry_after.map(|after| after.min(job.retry.max));
        if let (Some(after), Some(bucket), true) = (retry_after, &bucket, throttled) {
            bucket.pause(after);
        }
        let backoff = job.retry.delay(attempt_number.max(1), fastrand::f64());
        let wait = retry_after.map_or(backoff, |after| after.max(backoff));
        tracing::debug!(route = %request.route, target = %request.target, status = ?status, error = ?outcome.error, ?wait, "retrying");
        tokio::time::sleep(wait).await;
    }
}

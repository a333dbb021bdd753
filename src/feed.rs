//! Live changes for `GET /api/stream`: events as they are accepted and deliveries as their
//! status changes, each as one Server-Sent Events frame. Frames are built only while
//! someone watches, so the feed costs the hot path nothing otherwise.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, Stream};
use serde_json::json;
use tokio::sync::{broadcast, watch, Semaphore};

use crate::store::{DeliveryStatus, NewEvent};

/// Frames a slow reader may fall behind by before it loses some (it is told to reload).
const BACKLOG: usize = 1024;
/// A comment line this often keeps proxies and the browser from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Streams open at once: each holds an admin connection for good, and the listener's
/// connection cap must leave room for probes and API calls.
pub const MAX_STREAMS: usize = 32;

pub struct Feed {
    frames: broadcast::Sender<Bytes>,
    shutdown: watch::Receiver<bool>,
    streams: Arc<Semaphore>,
}

/// A delivery whose status just changed.
pub struct DeliveryChange<'a> {
    pub id: &'a str,
    pub event_id: &'a str,
    pub route: &'a str,
    pub target: &'a str,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub last_status: Option<u16>,
}

fn frame(name: &str, data: &serde_json::Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

impl Feed {
    pub fn new(shutdown: watch::Receiver<bool>) -> Feed {
        Feed { frames: broadcast::channel(BACKLOG).0, shutdown, streams: Arc::new(Semaphore::new(MAX_STREAMS)) }
    }

    /// Whether anyone reads the feed now (so that frames are worth building).
    pub fn watched(&self) -> bool {
        self.frames.receiver_count() > 0
    }

    /// The frame of an event about to be committed, when someone watches; [`Feed::send`]
    /// it once the commit is done.
    pub fn event_frame(&self, event: &NewEvent) -> Option<Bytes> {
        self.watched().then(|| {
            let data = json!({
                "id": event.id,
                "route": event.route,
                "event": event.event,
                "received_at": event.received_at,
                "replay_of": event.replay_of,
            });
            frame("event", &data)
        })
    }

    pub fn send(&self, frame: Option<Bytes>) {
        if let Some(frame) = frame {
            let _ = self.frames.send(frame);
        }
    }

    pub fn delivery(&self, change: DeliveryChange<'_>) {
        if self.watched() {
            let data = json!({
                "id": change.id,
                "event_id": change.event_id,
                "route": change.route,
                "target": change.target,
                "status": change.status,
                "attempts": change.attempts,
                "last_status": change.last_status,
            });
            let _ = self.frames.send(frame("delivery", &data));
        }
    }

    /// Deliveries changed by hand in bulk (a cancel by filter): watchers reload what they show.
    pub fn changed(&self) {
        if self.watched() {
            let _ = self.frames.send(frame("changed", &json!({})));
        }
    }

    /// The frames from now on, a keep-alive comment when idle, a `changed` frame when the
    /// reader fell behind; it ends when the relay shuts down. `None` when [`MAX_STREAMS`]
    /// are open.
    pub fn stream(&self) -> Option<impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static> {
        let permit = self.streams.clone().try_acquire_owned().ok()?;
        let opening = Bytes::from_static(b": hookrelay live changes\nretry: 2000\n\n");
        let state = (self.frames.subscribe(), self.shutdown.clone(), Some(opening), permit);
        Some(stream::unfold(state, |(mut frames, mut shutdown, first, permit)| async move {
            if let Some(first) = first {
                return Some((Ok(first), (frames, shutdown, None, permit)));
            }
            if *shutdown.borrow() {
                return None;
            }
            let next = tokio::select! {
                received = frames.recv() => match received {
                    Ok(frame) => frame,
                    Err(broadcast::error::RecvError::Lagged(_)) => frame("changed", &json!({ "lagged": true })),
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = tokio::time::sleep(KEEP_ALIVE) => Bytes::from_static(b": keep-alive\n\n"),
                _ = shutdown.changed() => return None,
            };
            Some((Ok(next), (frames, shutdown, None, permit)))
        }))
    }
}

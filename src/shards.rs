//! Connection shards: one single-threaded runtime per core, each serving the ingress
//! connections handed to it. A connection's socket, its requests and the tasks they spawn
//! stay on one thread, so a request costs no wake-ups of other threads (on a multi-thread
//! runtime a fifth of the pass-through's CPU went to them). Background work (deliveries,
//! reloads, the admin listener) stays on the main runtime.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The running shards. Dropping them stops their threads (tasks still on them are dropped).
pub struct Shards {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stops: Mutex<Vec<oneshot::Sender<()>>>,
}

impl Shards {
    /// Starts `count` shards (at least one), each on a thread of its own.
    pub fn start(count: usize) -> std::io::Result<Shards> {
        let mut handles = Vec::with_capacity(count);
        let mut stops = Vec::with_capacity(count);
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            handles.push(runtime.handle().clone());
            stops.push(stop);
            std::thread::Builder::new().name(format!("hookrelay-io-{index}")).spawn(move || {
                // Runs the shard's tasks until told to stop (or until the relay is gone).
                let _ = runtime.block_on(stopped);
            })?;
        }
        Ok(Shards { handles, next: AtomicUsize::new(0), stops: Mutex::new(stops) })
    }

    /// One shard per thread of the main runtime: the cores the relay was given.
    pub fn per_core() -> std::io::Result<Shards> {
        let cores = Handle::try_current().map(|runtime| runtime.metrics().num_workers()).unwrap_or(1);
        Shards::start(cores)
    }

    /// Serves an accepted connection on the next shard, in turn: `serve` gets the socket
    /// registered with that shard's reactor.
    pub fn serve<S, F>(&self, stream: TcpStream, serve: S) -> std::io::Result<()>
    where
        S: FnOnce(TcpStream) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        // A socket belongs to the reactor that registered it: hand the shard the bare one.
        let socket = stream.into_std()?;
        let shard = &self.handles[self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len()];
        shard.spawn(async move {
            match TcpStream::from_std(socket) {
                Ok(stream) => serve(stream).await,
                Err(err) => tracing::debug!(error = %err, "a connection could not move to its shard"),
            }
        });
        Ok(())
    }

    /// Stops every shard; connections still open on them are closed.
    pub fn stop(&self) {
        let stops = std::mem::take(&mut *self.stops.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        for stop in stops {
            let _ = stop.send(());
        }
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        self.stop();
    }
}

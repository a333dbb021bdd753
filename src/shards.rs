//! Connection shards: one single-threaded runtime per core, each serving the ingress
//! connections handed to it at accept. A connection's socket, its requests, its upstream
//! link, the thread's own target pool (see `delivery::client`) and the tasks its requests
//! spawn stay on one thread, so a request costs no
//! wake-ups of other threads. The shared runtime keeps everything else (deliveries started
//! by the engine, the shared pools' connections, reloads, the admin listener) and the
//! requests that may be CPU-heavy, so that one of those cannot stall the connections that
//! share its shard's thread.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use hyper::body::Body;
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// A request whose body and headers may be larger than this is handled on the shared
/// runtime: parsing, matching, rendering and verifying a request all cost time in
/// proportion to its size. Webhooks are mostly a few KiB; a request of this size takes
/// well under a millisecond.
pub const LARGEST_REQUEST_ON_SHARD: u64 = 64 * 1024;

/// The running shards. Dropping them stops their threads (tasks still on them are dropped).
pub struct Shards {
    shards: Vec<Shard>,
    /// Where the search for the least busy shard starts, turned at each connection so that
    /// shards equally busy take connections in turn.
    next: AtomicUsize,
    /// The runtime that started the shards.
    shared: Handle,
}

impl Shards {
    /// Starts `count` shards (at least one), each on a thread of its own; call it within
    /// the shared runtime.
    pub fn start(count: usize) -> std::io::Result<Shards> {
        let shared = Handle::current();
        let mut shards = Vec::with_capacity(count);
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            shards.push(Shard { runtime: runtime.handle().clone(), open: Arc::new(AtomicUsize::new(0)), stop: Mutex::new(Some(stop)) });
            std::thread::Builder::new().name(format!("hookrelay-io-{index}")).spawn(move || {
                crate::delivery::client::serve_connections_here();
                // Runs the shard's tasks until told to stop, or until the shards are gone.
                let _ = runtime.block_on(stopped);
            })?;
        }
        Ok(Shards { shards, next: AtomicUsize::new(0), shared })
    }

    /// One shard per thread of the shared runtime (the cores the relay was given).
    pub fn per_core() -> std::io::Result<Shards> {
        Shards::start(Handle::current().metrics().num_workers())
    }

    /// Serves an accepted connection on the shard with the fewest open connections (in
    /// turn among equals), so that long-lived connections spread over the shards whatever
    /// order they come in: `serve` gets the socket registered with that shard's reactor.
    pub fn serve<S, F>(&self, stream: TcpStream, serve: S) -> std::io::Result<()>
    where
        S: FnOnce(TcpStream) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        // A socket belongs to the reactor that registered it: the shard gets the bare one.
        let socket = stream.into_std()?;
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let count = self.shards.len();
        let shard = (0..count)
            .map(|offset| &self.shards[(start + offset) % count])
            .min_by_key(|shard| shard.open.load(Ordering::Relaxed))
            .unwrap_or(&self.shards[0]);
        let open = Open::count(&shard.open);
        shard.runtime.spawn(async move {
            let _open = open;
            match TcpStream::from_std(socket) {
                Ok(stream) => serve(stream).await,
                Err(err) => tracing::debug!(error = %err, "a connection could not move to its shard"),
            }
        });
        Ok(())
    }

    /// The runtime `request` is to be handled on, when not on its connection's shard: one
    /// whose body and headers together are larger than [`LARGEST_REQUEST_ON_SHARD`], or
    /// whose body is of a length not known before it is read. Headers count because some
    /// work multiplies them by the body (a CloudEvents batch gives each event its own).
    pub fn elsewhere_for<B: Body>(&self, request: &http::Request<B>) -> Option<Handle> {
        let headers = crate::inbound::header_bytes(request.headers());
        let small = request
            .body()
            .size_hint()
            .upper()
            .is_some_and(|most| most.saturating_add(u64::try_from(headers).unwrap_or(u64::MAX)) <= LARGEST_REQUEST_ON_SHARD);
        (!small).then(|| self.shared.clone())
    }

    /// Stops every shard; connections still open on them are closed.
    pub fn stop(&self) {
        for shard in &self.shards {
            if let Some(stop) = shard.stop.lock().unwrap_or_else(PoisonError::into_inner).take() {
                let _ = stop.send(());
            }
        }
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One connection thread's runtime, how many connections it serves, and what stops it.
struct Shard {
    runtime: Handle,
    open: Arc<AtomicUsize>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
}

/// One connection counted open on its shard until it ends (or its shard stops).
struct Open(Arc<AtomicUsize>);

impl Open {
    fn count(open: &Arc<AtomicUsize>) -> Open {
        open.fetch_add(1, Ordering::Relaxed);
        Open(open.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs `work` on `runtime` and waits for it; dropping the wait cancels the work, as
/// dropping `work` itself would have.
pub async fn run_on<F>(runtime: &Handle, work: F) -> Result<F::Output, Cancelled>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);
    impl<T> Drop for AbortOnDrop<T> {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let mut running = AbortOnDrop(runtime.spawn(work));
    match (&mut running.0).await {
        Ok(output) => Ok(output),
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(_) => Err(Cancelled),
    }
}

/// Work handed to the shared runtime was dropped by it: the relay is stopping.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the relay is stopping")]
pub struct Cancelled;

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{Full, StreamBody};

    fn request(body: usize, header: usize) -> http::Request<Full<Bytes>> {
        let mut request = http::Request::new(Full::new(Bytes::from(vec![b'x'; body])));
        request.headers_mut().insert("x-padding", http::HeaderValue::from_str(&"p".repeat(header)).unwrap());
        request
    }

    #[tokio::test]
    async fn small_requests_stay_on_their_shard_and_large_or_unsized_ones_go_to_the_shared_runtime() {
        let shards = Shards::start(1).unwrap();
        assert!(shards.elsewhere_for(&request(2_000, 100)).is_none(), "a webhook of a few KiB");
        assert!(shards.elsewhere_for(&request(60 * 1024, 2 * 1024)).is_none(), "just under, headers included");
        assert!(shards.elsewhere_for(&request(65 * 1024, 0)).is_some(), "a body over the bound");
        assert!(shards.elsewhere_for(&request(40 * 1024, 40 * 1024)).is_some(), "body and headers together over the bound");
        let streamed =
            http::Request::new(StreamBody::new(futures_util::stream::empty::<Result<hyper::body::Frame<Bytes>, std::io::Error>>()));
        assert!(shards.elsewhere_for(&streamed).is_some(), "a body of unknown length (chunked)");
        shards.stop();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_goes_to_the_shard_with_the_fewest_open_ones() {
        let shards = Shards::start(2).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (served_on, mut threads) = tokio::sync::mpsc::unbounded_channel();
        let mut clients = Vec::new();
        let mut holds = Vec::new();
        // Long-lived, short-lived, long-lived: taken in turn, both long-lived ones would
        // share a thread while the other idles.
        for long_lived in [true, false, true] {
            clients.push(TcpStream::connect(address).await.unwrap());
            let (stream, _) = listener.accept().await.unwrap();
            let (hold, held) = oneshot::channel::<()>();
            holds.push(hold);
            let served_on = served_on.clone();
            shards
                .serve(stream, move |stream| async move {
                    served_on.send(std::thread::current().name().unwrap_or_default().to_owned()).unwrap();
                    if long_lived {
                        let _ = held.await;
                    }
                    drop(stream);
                })
                .unwrap();
            let open = if long_lived { clients.len().div_ceil(2) } else { 1 };
            for _ in 0..500 {
                if shards.shards.iter().map(|shard| shard.open.load(Ordering::Relaxed)).sum::<usize>() == open {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        }
        let served: Vec<String> = [threads.recv().await.unwrap(), threads.recv().await.unwrap(), threads.recv().await.unwrap()].into();
        assert_ne!(served[0], served[2], "both long-lived connections on one thread: {served:?}");
        drop(holds);
        shards.stop();
    }
}

//! The log's writer: lines from every thread are gathered in one buffer and written out by
//! a thread of its own a few milliseconds later, many at a time, so a logged request costs a
//! copy under a short lock: no system call and no thread wake-up. Lossy past a bound, so
//! that a log nobody reads (a full pipe) never stops the relay.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

/// Lines wait at most this long before they are written (they are gathered meanwhile).
const GATHER: Duration = Duration::from_millis(10);
/// Bytes waiting to be written beyond which lines are dropped (and counted).
const MAX_WAITING: usize = 1024 * 1024;

struct Waiting {
    bytes: Vec<u8>,
    /// The writer thread sleeps until there is something to write; only then does a line
    /// need to wake it.
    asleep: bool,
    closed: bool,
}

struct Shared {
    waiting: Mutex<Waiting>,
    wake: Condvar,
    dropped: AtomicU64,
}

/// Hands out writers for `tracing_subscriber`; cloned into the subscriber.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

/// Writes what is left and stops the thread when dropped (keep it until exit); waits at
/// most [`LAST_WRITE`] for that, so a stuck stderr cannot hold the exit.
pub struct FlushGuard {
    shared: Arc<Shared>,
    finished: std::sync::mpsc::Receiver<()>,
}

const LAST_WRITE: Duration = Duration::from_secs(1);

impl LogWriter {
    /// Starts the thread that writes to `out`.
    pub fn start(out: impl Write + Send + 'static) -> std::io::Result<(LogWriter, FlushGuard)> {
        let shared = Arc::new(Shared {
            waiting: Mutex::new(Waiting { bytes: Vec::with_capacity(64 * 1024), asleep: false, closed: false }),
            wake: Condvar::new(),
            dropped: AtomicU64::new(0),
        });
        let writer = shared.clone();
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::Builder::new().name("log-writer".into()).spawn(move || {
            write_out(&writer, out);
            let _ = done.send(());
        })?;
        Ok((LogWriter { shared: shared.clone() }, FlushGuard { shared, finished }))
    }

    /// Adds one whole line (its newline included), as the tracing subscriber does.
    pub fn write_line(&self, line: &[u8]) {
        self.shared.push(line);
    }

    /// Lines dropped so far because the buffer was full.
    pub fn dropped_lines(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

fn write_out(shared: &Shared, mut out: impl Write) {
    let mut spare = Vec::with_capacity(64 * 1024);
    loop {
        let closed = {
            let mut waiting = shared.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            while waiting.bytes.is_empty() && !waiting.closed {
                waiting.asleep = true;
                waiting = shared.wake.wait(waiting).unwrap_or_else(PoisonError::into_inner);
            }
            waiting.asleep = false;
            waiting.closed
        };
        // Woken by the first line: let the lines that follow it gather.
        if !closed {
            std::thread::sleep(GATHER);
        }
        {
            let mut waiting = shared.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            std::mem::swap(&mut waiting.bytes, &mut spare);
        }
        // A log that cannot be written has nowhere to report that either.
        let _ = out.write_all(&spare).and_then(|()| out.flush());
        spare.clear();
        if closed {
            let waiting = shared.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            if waiting.bytes.is_empty() {
                return;
            }
        }
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        {
            let mut waiting = self.shared.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            waiting.closed = true;
        }
        self.shared.wake.notify_one();
        let _ = self.finished.recv_timeout(LAST_WRITE);
    }
}

/// One line's writer (tracing writes each formatted line with one `write_all`).
pub struct LineWriter<'a> {
    shared: &'a Shared,
}

impl Shared {
    fn push(&self, line: &[u8]) {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if waiting.bytes.len() + line.len() > MAX_WAITING {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        waiting.bytes.extend_from_slice(line);
        if waiting.asleep {
            waiting.asleep = false;
            drop(waiting);
            self.wake.notify_one();
        }
    }
}

impl Write for LineWriter<'_> {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.shared.push(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> LineWriter<'a> {
        LineWriter { shared: &self.shared }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test can read while the writer thread owns it.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_from_many_threads_all_arrive_whole_and_in_order_per_thread() {
        let sink = Sink::default();
        let (writer, guard) = LogWriter::start(sink.clone()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for n in 0..500 {
                        use tracing_subscriber::fmt::MakeWriter;
                        writer.make_writer().write_all(format!("thread {t} line {n}\n").as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        for t in 0..4 {
            let numbers: Vec<usize> =
                text.lines().filter_map(|line| line.strip_prefix(&format!("thread {t} line "))).map(|n| n.parse().unwrap()).collect();
            assert_eq!(numbers, (0..500).collect::<Vec<_>>());
        }
        assert_eq!(writer.dropped_lines(), 0);
    }

    /// A sink that never takes anything (a pipe nobody reads).
    struct Stuck;

    impl Write for Stuck {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            std::thread::sleep(Duration::from_secs(3600));
            Ok(0)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_log_nobody_reads_drops_lines_past_the_bound_instead_of_blocking() {
        use tracing_subscriber::fmt::MakeWriter;
        let (writer, guard) = LogWriter::start(Stuck).unwrap();
        let line = vec![b'x'; 1024];
        // At most one buffer full goes to the stuck write and one waits: the third is dropped.
        for _ in 0..(MAX_WAITING / 1024) * 3 {
            writer.make_writer().write_all(&line).unwrap();
        }
        assert!(writer.dropped_lines() >= (MAX_WAITING / 1024) as u64, "{}", writer.dropped_lines());
        // Exiting waits a bounded time for the stuck write.
        let started = std::time::Instant::now();
        drop(guard);
        assert!(started.elapsed() < LAST_WRITE * 2);
    }
}

//! Memory and throughput under hostile rate-limit keys: a route with
//! `ingress_limit: { by: "header:X-Tenant" }` and a token check receives 100,000 requests,
//! each with a unique 4 KB `X-Tenant`. Phase one is unauthenticated (answered 401, never
//! charged to a key); phase two is authenticated at one request per hour per key (every
//! request a new key: the bounded key table fills with live buckets, then the overflow
//! bucket answers 429 to the rest). Prints the relay's RSS at idle,
//! after 50k and 100k requests of each phase, and requests per second in the first and last
//! quarter second. Run with `cargo bench --bench hostile_keys`. Loopback only; bounded in count
//! and time.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const REQUESTS: usize = 100_000;
const SENDERS: usize = 16;
const KEY_BYTES: usize = 4096;
const TIME_LIMIT: Duration = Duration::from_secs(120);
/// Throughput is counted per window of this many milliseconds.
const WINDOW_MS: u128 = 250;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

fn spawn(dir: &std::path::Path, port: u16) -> Child {
    let config = dir.join("hookrelay.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\nstore: {{ path: ./relay.db }}\nroutes:\n  - name: tenants\n    match: {{ path: /hooks/t }}\n    ingress_limit: {{ by: 'header:X-Tenant', per_hour: 1 }}\n    verify: {{ token: {{ header: X-Token, value: right-token }} }}\n    forward: [ {{ url: 'http://127.0.0.1:9/x', retry: {{ max_attempts: 1 }} }} ]\n"
        ),
    )
    .expect("write config");
    Command::new(env!("CARGO_BIN_EXE_hookrelay"))
        .args(["run", "--no-watch", "-c"])
        .arg(&config)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start hookrelay")
}

/// Sends `REQUESTS` requests with unique keys; returns the RSS after half and after all, and
/// the requests completed in the first and in the last whole window.
async fn phase(port: u16, pid: u32, token: &'static str, phase: u8) -> (u64, u64, usize, usize) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let url: http::Uri = format!("http://127.0.0.1:{port}/hooks/t").parse().expect("uri");
    let started = Instant::now();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let per_second = std::sync::Arc::new(std::sync::Mutex::new(Vec::<usize>::new()));
    let half_rss = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut senders = Vec::new();
    for sender in 0..SENDERS {
        let (client, url, done, per_second, half_rss) = (client.clone(), url.clone(), done.clone(), per_second.clone(), half_rss.clone());
        senders.push(tokio::spawn(async move {
            let mut index = sender;
            while index < REQUESTS && started.elapsed() < TIME_LIMIT {
                let mut key = format!("{phase}-{index:012}-");
                key.extend(std::iter::repeat_n('k', KEY_BYTES - key.len()));
                let request = http::Request::post(url.clone())
                    .header("x-tenant", key)
                    .header("x-token", token)
                    .body(Full::new(Bytes::from_static(b"{}")))
                    .expect("request");
                if let Ok(response) = client.request(request).await {
                    let _ = response.into_body().collect().await;
                }
                let finished = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if finished == REQUESTS / 2 {
                    half_rss.store(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                }
                let second = (started.elapsed().as_millis() / WINDOW_MS) as usize;
                let mut counts = per_second.lock().expect("counts");
                if counts.len() <= second {
                    counts.resize(second + 1, 0);
                }
                counts[second] += 1;
                index += SENDERS;
            }
        }));
    }
    for sender in senders {
        let _ = sender.await;
    }
    let counts = per_second.lock().expect("counts").clone();
    // The last entry is a partial second.
    let last_full = counts.len().saturating_sub(2);
    (
        half_rss.load(std::sync::atomic::Ordering::Relaxed),
        rss_kib(pid),
        counts.first().copied().unwrap_or(0),
        counts.get(last_full).copied().unwrap_or(0),
    )
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let mut child = spawn(dir.path(), port);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.get(format!("http://127.0.0.1:{port}/").parse().expect("uri")).await.is_err() {
        assert!(Instant::now() < deadline, "relay did not start");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = rss_kib(child.id());
    println!("hostile keys: {REQUESTS} requests per phase, {SENDERS} senders, unique {KEY_BYTES}-byte X-Tenant each");
    println!("idle RSS: {:.1} MiB", idle as f64 / 1024.0);
    for (name, token, number) in [("unauthenticated (401)", "wrong-token", 1u8), ("authenticated (202/429)", "right-token", 2u8)] {
        let (half, full, first, last) = phase(port, child.id(), token, number).await;
        println!(
            "{name}: RSS after 50k {:.1} MiB, after 100k {:.1} MiB (+{:.1} MiB over idle, {:+.1} MiB from 50k to 100k); req/s in the first {WINDOW_MS} ms {}, in the last full window {} ({:.2}x)",
            half as f64 / 1024.0,
            full as f64 / 1024.0,
            (full.saturating_sub(idle)) as f64 / 1024.0,
            (full as f64 - half as f64) / 1024.0,
            first as u128 * 1000 / WINDOW_MS,
            last as u128 * 1000 / WINDOW_MS,
            last as f64 / first.max(1) as f64
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

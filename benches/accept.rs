//! Accepted events per second for an async route with the durable store: the store on
//! disk (every commit fsync'd) beside the same store on tmpfs (/dev/shm, where fsync costs
//! nothing), in one run, so the ratio shows what durability costs. Concurrent senders let
//! group commit batch the writes. Run with `cargo bench --bench accept`. Loopback only;
//! bounded by a fixed event count per run.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

const EVENTS: usize = 4000;
const SENDERS: usize = 32;
const PAYLOAD: &[u8] = include_bytes!("../tests/fixtures/codeup-push.json");

/// A sink that answers 200 to everything, so deliveries drain as fast as the relay sends.
async fn sink() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
    let addr = listener.local_addr().expect("sink addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_request| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(Empty::<Bytes>::new()))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    addr
}

async fn run(store_dir: &Path, sink: SocketAddr) -> (f64, Duration) {
    let config = store_dir.join("hookrelay.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\nlimits: {{ queue_capacity: 1000000 }}\nroutes:\n  - name: codeup\n    source: codeup\n    match: {{ path: /hooks/codeup, event: push }}\n    forward:\n      - url: http://{sink}/trigger\n        body: {{ ref: '{{{{body.ref}}}}', commits: '{{{{json body.commits}}}}' }}\n"
        ),
    )
    .expect("write config");
    let running = hookrelay::app::start(&config).await.expect("relay starts");
    let url: http::Uri = format!("http://{}/hooks/codeup", running.ingress_addr).parse().expect("uri");
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let started = Instant::now();
    let per_sender = EVENTS / SENDERS;
    let mut senders = Vec::new();
    for _ in 0..SENDERS {
        let client = client.clone();
        let url = url.clone();
        senders.push(tokio::spawn(async move {
            for _ in 0..per_sender {
                let request = http::Request::post(url.clone())
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from_static(PAYLOAD)))
                    .expect("request");
                let response = client.request(request).await.expect("relay answers");
                assert_eq!(response.status(), 202);
                let _ = response.into_body().collect().await;
            }
        }));
    }
    for sender in senders {
        sender.await.expect("sender");
    }
    let accept_time = started.elapsed();
    let rate = (per_sender * SENDERS) as f64 / accept_time.as_secs_f64();
    // Bounded wait for the deliveries to drain.
    let deadline = Instant::now() + Duration::from_secs(120);
    while running.relay.engine.depth() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained = started.elapsed();
    running.stop();
    (rate, drained)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let sink = sink().await;
        let disk = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("disk tempdir");
        let shm = tempfile::tempdir_in("/dev/shm").expect("tmpfs tempdir (/dev/shm)");
        let (disk_rate, disk_drain) = run(disk.path(), sink).await;
        let (shm_rate, shm_drain) = run(shm.path(), sink).await;
        println!("{EVENTS} events, {SENDERS} concurrent senders, Codeup push payload ({} bytes)", PAYLOAD.len());
        println!("| store | accepted events/s | all delivered after |");
        println!("|---|---:|---:|");
        println!("| disk (fsync per commit) | {disk_rate:.0} | {:.2} s |", disk_drain.as_secs_f64());
        println!("| tmpfs | {shm_rate:.0} | {:.2} s |", shm_drain.as_secs_f64());
        println!("durable / tmpfs accept rate: {:.2}×", disk_rate / shm_rate);
    });
}

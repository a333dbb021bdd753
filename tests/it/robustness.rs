//! Real deployments: idle and slow connections cannot hold the connection cap, proxied
//! requests have body and answer deadlines, buffered bodies have a total bound, accept
//! backs off when out of file descriptors, one relay per store, a store file deleted under
//! a running relay is noticed, and the small proxy corners (`Connection: host`, `OPTIONS *`).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::binary::{free_port, spawn, spawn_with_unread_log, stop, wait_up, Folder};
use crate::support::reqwest_like::Client;
use crate::support::{Relay, TestSink};

fn sync_route(sink: &TestSink, limits: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nlimits: {{ {limits} }}\nupstream: {}\nroutes:\n  - name: r\n    match: {{ path: /hooks/r }}\n    respond: sync\n    forward:\n      - url: {}/r\n",
        sink.url(),
        sink.url()
    )
}

/// Reads until the peer closes (bounded); returns what arrived.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut all = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&all).into_owned()),
            Ok(Ok(read)) => all.extend_from_slice(&chunk[..read]),
            Err(_) => return None,
        }
    }
}

/// Connections that never send a byte, and keep-alive connections left idle after an
/// answer, are closed after `header_timeout`, so they cannot fill `max_connections`.
#[tokio::test]
async fn idle_connections_are_closed_and_free_the_cap() {
    let sink = TestSink::start().await;
    let relay = Relay::start(&sync_route(&sink, "max_connections: 20, header_timeout: 1s")).await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(relay.running.ingress_addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = relay.client.post_json(&relay.url("/hooks/r"), &[], "{}").await;
    assert_eq!(refused.status, 503, "the cap is full of idle connections");
    for stream in &mut idle {
        assert!(read_until_closed(stream, Duration::from_secs(3)).await.is_some(), "an idle connection was not closed");
    }
    let reply = relay.client.post_json(&relay.url("/hooks/r"), &[], "{}").await;
    assert_eq!(reply.status, 200, "served once the idle connections were closed");

    // Keep-alive: the deadline starts again at the end of each answer.
    let mut kept = TcpStream::connect(relay.running.ingress_addr).await.unwrap();
    kept.write_all(b"POST /hooks/r HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}").await.unwrap();
    let started = tokio::time::Instant::now();
    let answer = read_until_closed(&mut kept, Duration::from_secs(4)).await.expect("closed after idling");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(900), "closed only after idling for header_timeout");
}

/// Headers sent a byte at a time never complete a request: the connection is closed once
/// `header_timeout` has passed since accept, however steadily the bytes keep coming.
#[tokio::test]
async fn headers_trickled_a_byte_at_a_time_are_cut_off_at_header_timeout() {
    let sink = TestSink::start().await;
    let relay = Relay::start(&sync_route(&sink, "header_timeout: 1s")).await;
    let stream = TcpStream::connect(relay.running.ingress_addr).await.unwrap();
    let started = tokio::time::Instant::now();
    let (mut reading, mut writing) = stream.into_split();
    let trickle = tokio::spawn(async move {
        for byte in b"POST /hooks/r HTTP/1.1\r\nhost: x\r\nx-slow: ".iter().chain([b'a'; 40].iter()) {
            if writing.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut chunk = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(4), async {
        loop {
            match reading.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    trickle.abort();
    assert!(closed.is_ok(), "a connection trickling its headers was still open after 4 s");
    let after = started.elapsed();
    assert!(after >= Duration::from_millis(900) && after < Duration::from_millis(2500), "closed after {after:?}, not at header_timeout");
    assert!(sink.seen().is_empty(), "an incomplete request reached the target");
}

/// The admin listener has the same idle deadline as the ingress one.
#[tokio::test]
async fn idle_admin_connections_are_closed_too() {
    let sink = TestSink::start().await;
    let relay =
        Relay::start(&sync_route(&sink, "header_timeout: 1s").replace("upstream:", "admin: { listen: 127.0.0.1:0 }\nupstream:")).await;
    let mut idle = TcpStream::connect(relay.running.admin_addr.unwrap()).await.unwrap();
    assert!(read_until_closed(&mut idle, Duration::from_secs(3)).await.is_some(), "an idle admin connection was not closed");
    assert_eq!(relay.client.get(&relay.admin_url("/healthz"), &[]).await.status, 200);
}

/// A pass-through request trickling its body gets 408 after `request_timeout`, and frees
/// its connection slot.
#[tokio::test]
async fn a_trickling_pass_through_body_gets_408() {
    let upstream = TestSink::start().await;
    let relay = Relay::start(&sync_route(&upstream, "max_connections: 5, request_timeout: 1s, header_timeout: 5s")).await;
    let mut slow = Vec::new();
    for _ in 0..5 {
        let mut stream = TcpStream::connect(relay.running.ingress_addr).await.unwrap();
        stream.write_all(b"POST /service/upload HTTP/1.1\r\nhost: x\r\ncontent-length: 1048576\r\n\r\nx").await.unwrap();
        slow.push(stream);
    }
    for stream in &mut slow {
        let answer = read_until_closed(stream, Duration::from_secs(5)).await.expect("answered and closed");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    let reply = relay.client.send("GET", &relay.url("/service/ok"), &[], "").await;
    assert_eq!(reply.status, 200);
}

/// A service that does not answer gets `504` after `upstream_header_timeout`; once
/// headers arrive, a slow streaming answer is passed on whole.
#[tokio::test]
async fn upstream_header_timeout_bounds_the_wait_for_headers_not_the_stream() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = vec![0u8; 4096];
                let read = stream.read(&mut head).await.unwrap_or(0);
                if String::from_utf8_lossy(&head[..read]).starts_with("GET /silent") {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    return;
                }
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").await;
                for part in 0..4 {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let _ = stream.write_all(format!("6\r\npart-{part}\r\n").as_bytes()).await;
                }
                let _ = stream.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    let relay = Relay::start(&format!(
        "listen: 127.0.0.1:0\nlimits: {{ upstream_header_timeout: 500ms }}\nupstream: http://{upstream}\nroutes: []\n"
    ))
    .await;
    let started = std::time::Instant::now();
    let reply = relay.client.send("GET", &relay.url("/silent"), &[], "").await;
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert!(started.elapsed() < Duration::from_secs(3));
    let reply = relay.client.send("GET", &relay.url("/stream"), &[], "").await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "part-0part-1part-2part-3"), "streamed 1.2 s past the header deadline");
}

/// Bodies held in memory at once are bounded: past `max_buffered_bytes`, a request is
/// refused with 503 and Retry-After before its body is read.
#[tokio::test]
async fn buffered_bodies_have_a_total_bound() {
    let sink = TestSink::start().await;
    let relay = Relay::start(&sync_route(&sink, "max_body: 1MiB, max_buffered_bytes: 2MiB, request_timeout: 10s")).await;
    let mut holding = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(relay.running.ingress_addr).await.unwrap();
        stream.write_all(b"POST /hooks/r HTTP/1.1\r\nhost: x\r\ncontent-length: 1048576\r\n\r\n{").await.unwrap();
        holding.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = relay.client.post_json(&relay.url("/hooks/r"), &[], "{}").await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.headers.get("retry-after").unwrap(), "1");
    drop(holding);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(relay.client.post_json(&relay.url("/hooks/r"), &[], "{}").await.status, 200, "room again once they left");
}

/// CPU time (user + system) of a process so far, from /proc, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    fields.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0) + fields.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

/// At the open-files limit, accept fails with EMFILE: the relay backs off instead of
/// spinning, logs a count about once a second, says at startup that `max_connections`
/// cannot be reached, and serves again once descriptors are free.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn out_of_file_descriptors_backs_off() {
    let sink = TestSink::start().await;
    let port = free_port();
    let folder =
        Folder::new(&sync_route(&sink, "header_timeout: 30s").replace("listen: 127.0.0.1:0", &format!("listen: 127.0.0.1:{port}")));
    let script = format!("ulimit -n 64 && exec {} run --no-watch -c {}", env!("CARGO_BIN_EXE_hookrelay"), folder.config().display());
    let mut child = std::process::Command::new("sh")
        .args(["-c", &script])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let logs = std::thread::spawn(move || {
        let mut text = String::new();
        let mut stderr = stderr;
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let client = Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.try_get(&format!("http://127.0.0.1:{port}/")).await.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "relay did not start");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut flood = Vec::new();
    for _ in 0..120 {
        if let Ok(stream) = TcpStream::connect(("127.0.0.1", port)).await {
            flood.push(stream);
        }
    }
    let before = cpu_ticks(child.id());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = cpu_ticks(child.id()) - before;
    assert!(spent < 50, "the accept loop spun: {spent} ticks of CPU in 2 s");
    drop(flood);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let reply = client.post_json(&format!("http://127.0.0.1:{port}/hooks/r"), &[], "{}").await;
    assert_eq!(reply.status, 200, "served again once descriptors were free");
    let _ = std::process::Command::new("sh").args(["-c", &format!("kill -TERM {}", child.id())]).status();
    let _ = child.wait();
    let logs = logs.join().unwrap();
    let accept_lines = logs.lines().filter(|line| line.contains("accept failed")).count();
    assert!((1..=6).contains(&accept_lines), "accept failures logged about once a second: {accept_lines} lines\n{logs}");
    assert!(logs.contains("open-files limit"), "startup says max_connections is out of reach: {logs}");
}

/// A second relay on the same store refuses to start and names the first one's pid; a
/// store file deleted under a running relay turns readiness and webhooks to 503.
#[cfg(unix)]
#[tokio::test]
async fn one_relay_per_store_and_a_deleted_store_is_noticed() {
    let sink = TestSink::start().await;
    let (port, admin) = (free_port(), free_port());
    let yaml = format!(
        "listen: 127.0.0.1:{port}\nadmin: {{ listen: 127.0.0.1:{admin} }}\nstore: {{ path: ./state/relay.db }}\nroutes:\n  - name: r\n    match: {{ path: /hooks/r }}\n    forward: [ {{ url: \"{}/r\" }} ]\n",
        sink.url()
    );
    let folder = Folder::new(&yaml);
    let client = Client::new();
    let mut first = spawn(&folder.config(), &["--no-watch"], &[]);
    wait_up(&client, &mut first, admin).await;
    let other =
        Folder::new(&yaml.replace(&format!("127.0.0.1:{port}"), "127.0.0.1:0").replace(&format!("127.0.0.1:{admin}"), "127.0.0.1:0"));
    std::fs::create_dir_all(other.dir.path().join("state")).unwrap();
    let shared = folder.dir.path().join("state/relay.db");
    std::fs::write(
        other.config(),
        std::fs::read_to_string(other.config()).unwrap().replace("./state/relay.db", &shared.display().to_string()),
    )
    .unwrap();
    let second = spawn(&other.config(), &["--no-watch"], &[]);
    let (status, logs) = second.wait();
    assert!(!status.success());
    assert!(logs.contains("in use by another hookrelay") && logs.contains("pid "), "{logs}");

    let hook = format!("http://127.0.0.1:{port}/hooks/r");
    assert_eq!(client.post_json(&hook, &[], "{}").await.status, 202);
    std::fs::remove_file(&shared).unwrap();
    let ready = format!("http://127.0.0.1:{admin}/readyz");
    let reply = client.get(&ready, &[]).await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert!(reply.text().contains("is gone"), "{}", reply.text());
    let reply = client.post_json(&hook, &[], "{}").await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    let status = client.get(&format!("http://127.0.0.1:{admin}/api/status"), &[]).await.json();
    assert!(status["store"]["error"].as_str().unwrap().contains("relay.db"), "{status}");
    let logs = stop(first);
    assert_eq!(logs.matches("store lost").count(), 1, "{logs}");
}

/// `hookrelay check` warns when the store cannot be written where the config puts it.
#[cfg(unix)]
#[test]
fn check_warns_about_an_unwritable_store_folder() {
    let folder = Folder::new("listen: 127.0.0.1:0\nstore: { path: /proc/hookrelay/relay.db }\nroutes: []\n");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hookrelay")).args(["check", "-c"]).arg(folder.config()).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("warning: store.path /proc/hookrelay/relay.db: cannot write in /proc"), "{stderr}");
}

/// A port already in use is reported once, with its cause once.
#[cfg(unix)]
#[test]
fn a_taken_port_is_reported_without_repeating_the_cause() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let folder = Folder::new(&format!("listen: 127.0.0.1:{port}\nroutes: []\n"));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hookrelay"))
        .args(["run", "--no-watch", "-c"])
        .arg(folder.config())
        .current_dir(folder.dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains(&format!("cannot bind listen on 127.0.0.1:{port}")), "{stderr}");
    assert_eq!(stderr.matches("os error 98").count(), 1, "{stderr}");
}

/// `Connection: host` cannot make the proxy drop the original Host (nor the request id or
/// trace the relay passes on); `OPTIONS *` is answered by the relay itself.
#[tokio::test]
async fn connection_cannot_name_host_and_options_star_is_answered() {
    let upstream = TestSink::start().await;
    let relay = Relay::start(&sync_route(&upstream, "")).await;
    let mut stream = TcpStream::connect(relay.running.ingress_addr).await.unwrap();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let request = format!(
        "GET /service/x HTTP/1.1\r\nhost: app.example\r\nx-request-id: req-9\r\ntraceparent: {traceparent}\r\n\
         x-gone: 1\r\nconnection: host, x-request-id, traceparent, x-gone, close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut stream, Duration::from_secs(5)).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = &upstream.wait_for(1).await[0];
    assert_eq!(seen.header("host"), Some("app.example"));
    // The relay's own request id and trace are passed on, whatever `Connection` names.
    assert_eq!(seen.header("x-request-id"), Some("req-9"));
    let passed_on = seen.header("traceparent").unwrap_or_default();
    assert!(passed_on.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "the sender's trace goes on: {passed_on}");
    assert_eq!(seen.header("x-gone"), None, "a header Connection names is hop-by-hop");

    let mut stream = TcpStream::connect(relay.running.ingress_addr).await.unwrap();
    stream.write_all(b"GET /service/x HTTP/1.1\r\nhost: a.example\r\nhost: b.example\r\nconnection: close\r\n\r\n").await.unwrap();
    let answer = read_until_closed(&mut stream, Duration::from_secs(5)).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "two Host headers are refused: {answer}");

    let mut stream = TcpStream::connect(relay.running.ingress_addr).await.unwrap();
    stream.write_all(b"OPTIONS * HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
    let answer = read_until_closed(&mut stream, Duration::from_secs(5)).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("allow: get, head, post"), "{answer}");
    assert_eq!(upstream.seen().len(), 1, "OPTIONS * never reached the service");
}

/// A relay whose stderr nobody reads (a full pipe) keeps serving: webhooks, health checks
/// and shutdown go on; the log lines it cannot write are dropped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_pipe_nobody_reads_does_not_stop_the_relay() {
    let (port, admin) = (free_port(), free_port());
    let folder = Folder::new(&format!(
        "listen: 127.0.0.1:{port}\nadmin: {{ listen: 127.0.0.1:{admin} }}\nroutes:\n  - {{ name: r, match: {{ path: /hook }}, respond: sync, forward: [ {{ url: http://127.0.0.1:9/ }} ] }}\n"
    ));
    let mut process = spawn_with_unread_log(&folder.config(), &[]);
    let client = Client::new();
    wait_up(&client, &mut process, admin).await;
    // Far more request lines than the pipe (64 KiB) and the waiting buffer (1 MiB) hold.
    let sent = tokio::time::timeout(Duration::from_secs(60), async {
        let senders = (0..16).map(|_| {
            let (client, url) = (client.clone(), format!("http://127.0.0.1:{port}/elsewhere"));
            tokio::spawn(async move {
                for _ in 0..800 {
                    client.try_send("GET", &url, &[], bytes::Bytes::new()).await.expect("the relay answers");
                }
            })
        });
        futures_util::future::join_all(senders).await
    })
    .await;
    assert!(sent.is_ok(), "requests stopped being answered once the log pipe was full");
    let health = tokio::time::timeout(Duration::from_secs(2), client.try_get(&format!("http://127.0.0.1:{admin}/healthz"))).await;
    assert_eq!(health.ok().flatten().map(|reply| reply.status), Some(200));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = client.get(&format!("http://127.0.0.1:{admin}/metrics"), &[]).await.text();
        let dropped = metrics
            .lines()
            .find_map(|line| line.strip_prefix("hookrelay_log_lines_dropped_total "))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if dropped > 0.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "dropped log lines are not counted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    process.signal("TERM");
    let exited = tokio::time::timeout(Duration::from_secs(15), tokio::task::spawn_blocking(move || process.wait().0)).await;
    assert!(exited.is_ok_and(|status| status.is_ok_and(|status| status.success())), "SIGTERM did not stop the relay");
}

/// One HTTP/1 connection of its own, kept open (the relay serves each connection on one
/// thread, so which requests share a connection matters here).
async fn connection(port: u16) -> hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (sender, driving) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(driving);
    sender
}

async fn post(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    path: &str,
    body: impl Into<bytes::Bytes>,
) -> (u16, bytes::Bytes) {
    use http_body_util::BodyExt;
    sender.ready().await.unwrap();
    let request = http::Request::post(path)
        .header("host", "relay")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(body.into()))
        .unwrap();
    let answer = sender.send_request(request).await.unwrap();
    let status = answer.status().as_u16();
    (status, answer.into_body().collect().await.unwrap().to_bytes())
}

/// A request with a large body takes time in proportion to it (parse, match, render) and
/// is handled off the threads that serve connections: while one renders a 2.7 MB body for
/// a long while, small requests on eight other connections (whichever threads serve them)
/// go on being answered, each in a fraction of that time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_a_large_body_does_not_hold_up_other_connections() {
    let sink = TestSink::start().await;
    let port = free_port();
    let yaml = format!(
        "listen: 127.0.0.1:{port}\nlimits: {{ max_body: 8MiB, request_timeout: 120s }}\nroutes:\n  - name: heavy\n    match: {{ path: /hooks/heavy }}\n    respond: sync\n    forward:\n      - url: {sink}/heavy\n        body: '[{{{{#each body.items}}}}{{{{this}}}},{{{{/each}}}}0]'\n  - name: light\n    match: {{ path: /hooks/light }}\n    respond: sync\n    forward:\n      - url: {sink}/light\n",
        sink = sink.url()
    );
    let folder = Folder::new(&yaml);
    let client = Client::new();
    let mut relay = spawn(&folder.config(), &["--no-watch"], &[]);
    wait_up(&client, &mut relay, port).await;

    // Connections are spread evenly over the threads as they are accepted: open them one
    // after another, each answered once, so that with up to four threads (one per core)
    // other connections share the heavy one's.
    let mut heavy = connection(port).await;
    assert_eq!(post(&mut heavy, "/hooks/light", "{}").await.0, 200);
    let mut others = Vec::new();
    for _ in 0..8 {
        let mut other = connection(port).await;
        assert_eq!(post(&mut other, "/hooks/light", "{}").await.0, 200);
        others.push(other);
    }

    let items: Vec<String> = (0..400_000).map(|n| n.to_string()).collect();
    let body = format!("{{\"items\":[{}]}}", items.join(","));
    let expected = format!("[{},0]", items.join(","));
    let started = tokio::time::Instant::now();
    let heavy = tokio::spawn(async move {
        let answered = post(&mut heavy, "/hooks/heavy", body).await;
        (answered, started.elapsed())
    });
    let mut slowest = Duration::ZERO;
    let mut rounds = 0;
    while !heavy.is_finished() {
        assert!(started.elapsed() < Duration::from_secs(120), "the large request was not answered");
        let round = tokio::time::Instant::now();
        let answers = futures_util::future::join_all(others.iter_mut().map(|other| post(other, "/hooks/light", "{}"))).await;
        assert!(answers.iter().all(|(status, _)| *status == 200), "{answers:?}");
        slowest = slowest.max(round.elapsed());
        rounds += 1;
    }
    let ((status, answer), took) = heavy.await.unwrap();
    assert_eq!(status, 200, "{answer:?}");
    let rendered = sink.seen().into_iter().find(|seen| seen.uri == "/heavy").expect("the large request was forwarded");
    assert!(rendered.body == expected.as_bytes(), "the large request's rendered body is not what the template makes");
    assert!(rounds >= 2, "the large request took {took:?}, too little to see the others answered beside it");
    assert!(
        slowest * 4 < took,
        "a small request waited {slowest:?} while the large one took {took:?}: it was held up behind it ({rounds} rounds)"
    );
    drop(relay);
}

//! Hostile input and operations: header limits, idle connections, connection caps, request
//! ids and JSON logs, graceful SIGTERM under load, and secrets that never leak.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::binary::{self, free_port, wait_up, Process};
use crate::support::{reqwest_like::Client, Relay, TestSink};

fn simple(sink: &TestSink, limits: &str) -> String {
    format!("listen: 127.0.0.1:0\nlimits: {{ {limits} }}\nroutes:\n  - name: r\n    match: {{ path: /hooks/r }}\n    respond: sync\n    forward:\n      - url: {}/r\n", sink.url())
}

async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer)).await.expect("answered").unwrap_or(0);
    String::from_utf8_lossy(&answer[..read]).into_owned()
}

#[tokio::test]
async fn huge_or_too_many_headers_get_431() {
    let sink = TestSink::start().await;
    let relay = Relay::start(&simple(&sink, "max_header_bytes: 16KiB, max_headers: 20")).await;
    let huge = format!("POST /hooks/r HTTP/1.1\r\nhost: x\r\nx-big: {}\r\ncontent-length: 0\r\n\r\n", "a".repeat(40_000));
    let answer = raw_exchange(relay.running.ingress_addr, huge.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    let many: String = (0..30).map(|i| format!("x-h{i}: v\r\n")).collect();
    let answer = raw_exchange(
        relay.running.ingress_addr,
        format!("POST /hooks/r HTTP/1.1\r\nhost: x\r\n{many}content-length: 0\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(sink.seen().is_empty());
}

#[tokio::test]
async fn idle_slowloris_connections_do_not_starve_real_requests() {
    let sink = TestSink::start().await;
    let relay = Relay::start(&simple(&sink, "header_timeout: 2s")).await;
    let mut idle = Vec::new();
    for _ in 0..200 {
        let mut stream = tokio::net::TcpStream::connect(relay.running.ingress_addr).await.unwrap();
        stream.write_all(b"POST /hooks/r HTTP/1.1\r\nhost: x\r\n").await.unwrap();
        idle.push(stream);
    }
    for _ in 0..20 {
        let reply = tokio::time::timeout(Duration::from_secs(5), relay.client.post_json(&relay.url("/hooks/r"), &[], "{}"))
            .await
            .expect("served while 200 connections idle");
        assert_eq!(reply.status, 200);
    }
    assert_eq!(sink.seen().len(), 20);
}

#[tokio::test]
async fn connections_over_the_cap_get_503() {
    let sink = TestSink::start().await;
    let relay = Relay::start(&simple(&sink, "max_connections: 2")).await;
    let _held: Vec<tokio::net::TcpStream> = vec![
        tokio::net::TcpStream::connect(relay.running.ingress_addr).await.unwrap(),
        tokio::net::TcpStream::connect(relay.running.ingress_addr).await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answer = raw_exchange(relay.running.ingress_addr, b"POST /hooks/r HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("retry-after: 1"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("content-security-policy: default-src 'none'"), "{answer}");
}

#[tokio::test]
async fn request_ids_are_kept_passed_on_and_returned() {
    let sink = TestSink::start().await;
    let relay = Relay::start(&simple(&sink, "")).await;
    let reply = relay.client.post_json(&relay.url("/hooks/r"), &[("x-request-id", "req-42")], "{}").await;
    assert_eq!(reply.headers.get("x-request-id").unwrap(), "req-42");
    assert_eq!(sink.wait_for(1).await[0].header("x-request-id"), Some("req-42"));
    let reply = relay.client.post_json(&relay.url("/hooks/r"), &[], "{}").await;
    let made = reply.headers.get("x-request-id").unwrap().to_str().unwrap().to_string();
    assert_eq!(made.len(), 26, "a ULID: {made}");
    assert_eq!(sink.wait_for(2).await[1].header("x-request-id"), Some(made.as_str()));
    // An id that would add fields to the text log's line, or that is not ASCII, is replaced.
    for odd in ["req-43 status=500 path=/admin", "req-\u{e9}t\u{e9}", &"x".repeat(129)] {
        let reply = relay.client.post_json(&relay.url("/hooks/r"), &[("x-request-id", odd)], "{}").await;
        let made = reply.headers.get("x-request-id").unwrap().to_str().unwrap().to_string();
        assert_eq!(made.len(), 26, "a ULID instead of {odd:?}: {made}");
    }
    assert_eq!(sink.wait_for(5).await[4].header("x-request-id").map(str::len), Some(26));
}

fn spawn(config: &std::path::Path, log_format: &str, env: &[(&str, &str)]) -> Process {
    binary::spawn(config, &["--no-watch", "--log-format", log_format], env)
}

/// `simple`'s config on a port known before the binary starts, in a folder of its own.
async fn config_on_a_fixed_port() -> (TestSink, tempfile::TempDir, u16, std::path::PathBuf) {
    let sink = TestSink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let path = dir.path().join("hookrelay.yaml");
    std::fs::write(&path, simple(&sink, "").replace("listen: 127.0.0.1:0", &format!("listen: 127.0.0.1:{port}"))).unwrap();
    (sink, dir, port, path)
}

#[cfg(unix)]
#[tokio::test]
async fn json_logs_parse_and_carry_the_request_id() {
    let (_sink, _dir, port, path) = config_on_a_fixed_port().await;
    let mut child = spawn(&path, "json", &[]);
    let client = Client::new();
    wait_up(&client, &mut child, port).await;
    let reply = client.post_json(&format!("http://127.0.0.1:{port}/hooks/r"), &[("x-request-id", "trace-me-7")], "{}").await;
    assert_eq!(reply.status, 200);
    child.signal("TERM");
    let (status, logs) = child.wait();
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
    let lines: Vec<Value> =
        logs.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"))).collect();
    let request_line = lines.iter().find(|l| l["fields"]["request_id"] == "trace-me-7").unwrap_or_else(|| panic!("{logs}"));
    assert_eq!(request_line["fields"]["status"], 200);
    assert_eq!(request_line["fields"]["routes"], "r");
    assert_eq!(request_line["fields"]["path"], "/hooks/r");
}

/// The text log's request line, as the rest of the log is formatted; `RUST_LOG` filters it
/// like any other line.
#[cfg(unix)]
#[tokio::test]
async fn text_logs_carry_one_line_per_request_and_obey_rust_log() {
    let (_sink, _dir, port, path) = config_on_a_fixed_port().await;
    let client = Client::new();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for (rust_log, expect_line) in [("info", true), ("warn", false), ("info,[{delivery}]=off", true), ("warn,[{delivery}]=info", false)] {
        let mut child = spawn(&path, "text", &[("RUST_LOG", rust_log)]);
        wait_up(&client, &mut child, port).await;
        let headers = [("x-request-id", "text-me-8"), ("traceparent", traceparent)];
        let reply = client.post_json(&format!("http://127.0.0.1:{port}/hooks/r?x=1"), &headers, "{}").await;
        assert_eq!(reply.status, 200);
        child.signal("TERM");
        let (status, logs) = child.wait();
        assert!(status.success(), "SIGTERM exits 0: {status:?}");
        let lines: Vec<&str> = logs.lines().filter(|line| line.contains("hookrelay::request")).collect();
        if !expect_line {
            assert!(lines.is_empty(), "RUST_LOG=warn leaves request lines out: {logs}");
            continue;
        }
        let [line] = lines.iter().filter(|line| line.contains("text-me-8")).collect::<Vec<_>>()[..] else {
            panic!("one line for the request: {logs}")
        };
        let (time, rest) = line.split_at(27);
        assert!(chrono::DateTime::parse_from_rfc3339(time).is_ok() && time.ends_with('Z'), "{line}");
        let expected = "  INFO hookrelay::request: request request_id=text-me-8 trace_id=4bf92f3577b34da6a3ce929d0e0e4736 \
                        peer=127.0.0.1 method=POST path=/hooks/r routes=r status=200 duration_ms=";
        let duration = rest.strip_prefix(expected).unwrap_or_else(|| panic!("{line}"));
        let fraction = duration.split_once('.').map(|(_, fraction)| fraction).unwrap_or_else(|| panic!("{line}"));
        assert!(duration.parse::<f64>().is_ok() && fraction.len() <= 3, "milliseconds to the microsecond: {line}");
    }
}

/// SIGTERM while async events pour in: every event answered 202 before the relay stopped
/// is delivered after a restart.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let (port, target_port) = (free_port(), free_port());
    let path = dir.path().join("hookrelay.yaml");
    std::fs::write(
        &path,
        format!("listen: 127.0.0.1:{port}\nroutes:\n  - name: load\n    match: {{ path: /hooks/load }}\n    forward:\n      - url: http://127.0.0.1:{target_port}/x\n        body: {{ n: '{{{{json body.n}}}}' }}\n        retry: {{ max_attempts: 1000, initial: 50ms, max: 200ms }}\n        breaker: {{ cooldown: 200ms, max_cooldown: 1s }}\n"),
    )
    .unwrap();
    let client = Client::new();
    let mut first = spawn(&path, "text", &[]);
    wait_up(&client, &mut first, port).await;
    let url = format!("http://127.0.0.1:{port}/hooks/load");
    let mut senders = Vec::new();
    for sender in 0..4 {
        let client = client.clone();
        let url = url.clone();
        senders.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0..150 {
                let n = sender * 1000 + i;
                match client.try_send("POST", &url, &[("content-type", "application/json")], json!({ "n": n }).to_string()).await {
                    Ok(reply) if reply.status == 202 => acknowledged.push(n),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            acknowledged
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.signal("TERM");
    let (status, _) = first.wait();
    assert!(status.success(), "{status:?}");
    let mut acknowledged = Vec::new();
    for sender in senders {
        acknowledged.extend(sender.await.unwrap());
    }
    assert!(!acknowledged.is_empty());

    let sink = TestSink::on(&format!("127.0.0.1:{target_port}")).await;
    let second = spawn(&path, "text", &[]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let delivered: std::collections::HashSet<i64> = sink.seen().iter().map(|s| s.json()["n"].as_i64().unwrap()).collect();
        if acknowledged.iter().all(|n| delivered.contains(n)) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{} acknowledged, {} delivered", acknowledged.len(), delivered.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    binary::stop(second);
}

/// Secrets from the config (admin token, inbound and outbound credentials, signing keys)
/// never appear in logs, the admin API, error answers or the store file.
#[cfg(unix)]
#[tokio::test]
async fn secrets_never_leak() {
    let secrets =
        ["ADMIN-TOKEN-s3cr3t-1", "INBOUND-PASSWORD-s3cr3t-2", "OUTBOUND-PASSWORD-s3cr3t-3", "BEARER-s3cr3t-4", "HMAC-SIGNING-s3cr3t-5"];
    let sink = TestSink::scripted(vec![crate::support::Answer::status_only(500)]).await;
    let dir = tempfile::tempdir().unwrap();
    let (port, admin_port) = (free_port(), free_port());
    let path = dir.path().join("hookrelay.yaml");
    std::fs::write(
        &path,
        format!(
            r#"listen: 127.0.0.1:{port}
admin: {{ listen: 127.0.0.1:{admin_port}, token: "${{ADMIN_TOKEN}}" }}
store: {{ path: ./state/relay.db }}
routes:
  - name: guarded
    match: {{ path: /hooks/guarded }}
    verify:
      basic_auth: {{ username: sender, password: "${{INBOUND_PASSWORD}}" }}
    forward:
      - name: basic
        url: "http://ci:${{OUTBOUND_PASSWORD}}@127.0.0.1:{sink_port}/basic"
        retry: {{ max_attempts: 2, initial: 10ms }}
      - name: bearer
        url: http://127.0.0.1:{sink_port}/bearer
        bearer: "${{BEARER}}"
        sign: {{ github: {{ secret: "${{HMAC_SECRET}}" }} }}
"#,
            sink_port = sink.addr.port()
        ),
    )
    .unwrap();
    let env = [
        ("ADMIN_TOKEN", secrets[0]),
        ("INBOUND_PASSWORD", secrets[1]),
        ("OUTBOUND_PASSWORD", secrets[2]),
        ("BEARER", secrets[3]),
        ("HMAC_SECRET", secrets[4]),
    ];
    let mut child = spawn(&path, "json", &env);
    let client = Client::new();
    wait_up(&client, &mut child, port).await;
    use base64::Engine as _;
    let good = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("sender:{}", secrets[1])));
    let url = format!("http://127.0.0.1:{port}/hooks/guarded");
    let mut written = String::new();
    for auth in [good.as_str(), "Basic d3Jvbmc6d3Jvbmc="] {
        let reply = client.post_json(&url, &[("authorization", auth), ("cookie", "session=abc")], "{}").await;
        written.push_str(&reply.text());
    }
    sink.wait_for(3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let admin = format!("http://127.0.0.1:{admin_port}");
    let token = format!("Bearer {}", secrets[0]);
    for path in ["/api/routes", "/api/status", "/api/events", "/api/deliveries", "/metrics"] {
        written.push_str(&client.get(&format!("{admin}{path}"), &[("authorization", &token)]).await.text());
    }
    let deliveries = client.get(&format!("{admin}/api/deliveries"), &[("authorization", &token)]).await.json();
    for delivery in deliveries["items"].as_array().unwrap() {
        written.push_str(
            &client.get(&format!("{admin}/api/deliveries/{}", delivery["id"].as_str().unwrap()), &[("authorization", &token)]).await.text(),
        );
    }
    let event = deliveries["items"][0]["event_id"].as_str().unwrap();
    written.push_str(&client.get(&format!("{admin}/api/events/{event}"), &[("authorization", &token)]).await.text());
    // The targets did get the real credentials.
    let seen = sink.seen();
    assert!(seen.iter().any(|s| s.header("authorization").is_some_and(|a| a.starts_with("Basic "))));
    assert!(seen.iter().any(|s| s.header("authorization") == Some(&format!("Bearer {}", secrets[3]))));
    let logs = binary::stop(child);
    written.push_str(&logs);
    for file in std::fs::read_dir(dir.path().join("state")).unwrap() {
        let bytes = std::fs::read(file.unwrap().path()).unwrap();
        written.push_str(&String::from_utf8_lossy(&bytes));
    }
    let basic_outbound = base64::engine::general_purpose::STANDARD.encode(format!("ci:{}", secrets[2]));
    for secret in secrets.iter().copied().chain([good.trim_start_matches("Basic "), basic_outbound.as_str(), "session=abc"]) {
        assert!(!written.contains(secret), "{secret:?} leaked");
    }
    assert!(logs.contains("request"), "logs were captured: {logs}");
}

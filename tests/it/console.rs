//! The admin listener as a browser meets it: the console's files with a strict
//! Content-Security-Policy on every answer, `Host` checked against DNS rebinding when no
//! token guards it, changes accepted only as JSON, one audit line per change, and live
//! changes streamed as Server-Sent Events.

use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::binary::{free_port, spawn, stop, wait_up, Folder};
use crate::support::reqwest_like::Client;
use crate::support::{Relay, TestSink};

const AUTH: [(&str, &str); 1] = [("authorization", "Bearer t0ken")];

fn config(sink: &str, admin: &str) -> String {
    format!(
        r#"listen: 127.0.0.1:0
admin: {admin}
routes:
  - name: push
    match: {{ path: /hooks/push }}
    forward:
      - name: ci
        url: {sink}/in
"#
    )
}

fn header<'a>(reply: &'a crate::support::reqwest_like::Reply, name: &str) -> &'a str {
    reply.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

#[tokio::test]
async fn the_console_is_served_with_a_policy_that_runs_only_its_own_script() {
    let sink = TestSink::start().await;
    let relay = Relay::start(&config(&sink.url(), "{ listen: 127.0.0.1:0, token: t0ken }")).await;
    // The page needs no token (it holds no data); the API does.
    let page = relay.client.get(&relay.admin_url("/"), &[]).await;
    assert_eq!(page.status, 200);
    assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
    let text = page.text();
    assert!(text.contains(r#"src="/console.js""#) || text.contains(r#"src="console.js""#), "{text}");
    assert!(!text.contains("<script>"), "no inline script: {text}");
    let script = relay.client.get(&relay.admin_url("/console.js"), &[]).await;
    assert_eq!((script.status, header(&script, "content-type")), (200, "text/javascript; charset=utf-8"));
    let style = relay.client.get(&relay.admin_url("/console.css"), &[]).await;
    assert_eq!((style.status, header(&style, "content-type")), (200, "text/css; charset=utf-8"));
    for reply in [&page, &script, &relay.client.get(&relay.admin_url("/api/status"), &[]).await] {
        let policy = header(reply, "content-security-policy");
        assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"), "{policy}");
        assert!(!policy.contains("unsafe-inline") && !policy.contains("unsafe-eval"), "{policy}");
        assert_eq!(header(reply, "x-content-type-options"), "nosniff");
    }
    assert_eq!(relay.client.get(&relay.admin_url("/api/status"), &[]).await.status, 401);
    // With a token, Host is not what guards the listener: a foreign name still needs the token.
    let foreign = relay.client.get(&relay.admin_url("/api/status"), &[("host", "rebound.example")]).await;
    assert_eq!(foreign.status, 401);
    let foreign = relay.client.get(&relay.admin_url("/api/status"), &[("host", "rebound.example"), AUTH[0]]).await;
    assert_eq!(foreign.status, 200);
}

/// Without a token, a page on another site could reach a loopback listener through a name
/// that resolves to it (DNS rebinding): only the listener's own names are served.
#[tokio::test]
async fn without_a_token_only_the_listeners_own_names_are_served() {
    let sink = TestSink::start().await;
    let relay = Relay::start(&config(&sink.url(), "{ listen: 127.0.0.1:0, hosts: [relay.internal] }")).await;
    let port = relay.running.admin_addr.unwrap().port();
    for allowed in [format!("127.0.0.1:{port}"), format!("localhost:{port}"), "relay.internal".to_string(), "RELAY.internal.".to_string()] {
        let reply = relay.client.get(&relay.admin_url("/api/status"), &[("host", &allowed)]).await;
        assert_eq!(reply.status, 200, "{allowed}: {}", reply.text());
    }
    for refused in [format!("rebound.example:{port}"), "127.0.0.1.nip.io".to_string()] {
        let reply = relay.client.get(&relay.admin_url("/api/status"), &[("host", &refused)]).await;
        assert_eq!(reply.status, 403, "{refused}");
        assert_eq!(reply.json()["error"], "Host not allowed");
        let page = relay.client.get(&relay.admin_url("/"), &[("host", &refused)]).await;
        assert_eq!(page.status, 403, "the console is not served to a rebound name either");
    }
    // No name, or one that is not text, is not the listener's either.
    for request in [&b"GET /api/status HTTP/1.0\r\n\r\n"[..], b"GET /api/status HTTP/1.1\r\nhost: evil\xff.example\r\n\r\n"] {
        let mut stream = tokio::net::TcpStream::connect(relay.running.admin_addr.unwrap()).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut seen = String::new();
        read_until(&mut stream, &mut seen, &["HTTP/1."]).await;
        read_until(&mut stream, &mut seen, &[" 403 "]).await;
    }
    // Probes answer whatever the name.
    let health = relay.client.get(&relay.admin_url("/healthz"), &[("host", "rebound.example")]).await;
    assert_eq!(health.status, 200);

    // A cross-site form can post text/plain or form data, never JSON without asking first.
    for content_type in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
        let reply = relay.client.send("POST", &relay.admin_url("/api/reload"), &[("content-type", content_type)], "{}").await;
        assert_eq!(reply.status, 415, "{content_type}");
    }
    let reply =
        relay.client.send("POST", &relay.admin_url("/api/reload"), &[("content-type", "application/json; charset=utf-8")], "").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}

/// Every change made through the admin API is logged once, naming the caller by the
/// fingerprint of their token (never the token) and what was changed.
#[tokio::test]
async fn every_admin_change_leaves_one_audit_line() {
    let sink = TestSink::start().await;
    let (port, admin_port) = (free_port(), free_port());
    let folder = Folder::new(
        &config(&sink.url(), &format!("{{ listen: 127.0.0.1:{admin_port}, token: s3cret-admin }}"))
            .replace("listen: 127.0.0.1:0\n", &format!("listen: 127.0.0.1:{port}\n")),
    );
    let mut process = spawn(&folder.config(), &[], &[]);
    let client = Client::new();
    wait_up(&client, &mut process, admin_port).await;
    let admin = |path: &str| format!("http://127.0.0.1:{admin_port}{path}");
    let auth = [("authorization", "Bearer s3cret-admin")];
    assert_eq!(client.post_json(&admin("/api/reload"), &auth, "").await.status, 200);
    assert_eq!(client.post_json(&admin("/api/targets/push/ci/pause"), &auth, r#"{"reason":"x"}"#).await.status, 200);
    assert_eq!(client.get(&admin("/api/targets"), &auth).await.status, 200);
    assert_eq!(client.post_json(&admin("/api/reload"), &[("authorization", "Bearer wrong")], "").await.status, 401);
    let logs = stop(process);
    assert!(!logs.contains("the store is in a folder watched"), "the default store, in data/, is not watched: {logs}");
    let fingerprint = &hex::encode(Sha256::digest(b"s3cret-admin"))[..12];
    let audit: Vec<&str> = logs.lines().filter(|line| line.contains("admin change")).collect();
    assert_eq!(audit.len(), 2, "one line per change, none for reads or refused calls: {logs}");
    assert!(audit[0].contains(&format!("token:{fingerprint}")) && audit[0].contains("/api/reload"), "{}", audit[0]);
    assert!(audit[1].contains("/api/targets/push/ci/pause") && audit[1].contains("200"), "{}", audit[1]);
    assert!(!logs.contains("s3cret-admin"), "the token is never logged: {logs}");
}

/// Reads a streaming answer until `wanted` has all appeared (bounded).
async fn read_until(stream: &mut tokio::net::TcpStream, seen: &mut String, wanted: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut chunk = [0u8; 4096];
    while !wanted.iter().all(|w| seen.contains(w)) {
        let read = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("{wanted:?} never came: {seen}"))
            .unwrap();
        assert!(read > 0, "the stream ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&chunk[..read]));
    }
}

#[tokio::test]
async fn live_changes_stream_as_server_sent_events() {
    let sink = TestSink::start().await;
    let relay = Relay::start(&config(&sink.url(), "{ listen: 127.0.0.1:0, token: t0ken }")).await;
    let mut stream = tokio::net::TcpStream::connect(relay.running.admin_addr.unwrap()).await.unwrap();
    stream.write_all(b"GET /api/stream HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer t0ken\r\n\r\n").await.unwrap();
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, &["HTTP/1.1 200", "text/event-stream", "hookrelay live changes"]).await;

    let accepted = relay.client.post_json(&relay.url("/hooks/push"), &[], r#"{"ref":"main"}"#).await;
    assert_eq!(accepted.status, 202);
    let id = accepted.json()["id"].as_str().unwrap().to_string();
    sink.wait_for(1).await;
    read_until(&mut stream, &mut seen, &["event: event\n", &format!(r#""id":"{id}""#), "event: delivery\n", r#""status":"succeeded""#])
        .await;
    let delivery = seen.lines().find(|line| line.starts_with("data: ") && line.contains(r#""status":"succeeded""#)).unwrap();
    let delivery: serde_json::Value = serde_json::from_str(&delivery["data: ".len()..]).unwrap();
    assert_eq!(
        (&delivery["event_id"], &delivery["target"], &delivery["attempts"]),
        (&serde_json::json!(id), &serde_json::json!("ci"), &serde_json::json!(1))
    );

    // Without the token there is no stream; and streams are capped, so that open ones can
    // never take every admin connection from probes and API calls.
    assert_eq!(relay.client.get(&relay.admin_url("/api/stream"), &[]).await.status, 401);
    let mut open = vec![stream];
    for _ in 1..hookrelay::feed::MAX_STREAMS {
        let mut another = tokio::net::TcpStream::connect(relay.running.admin_addr.unwrap()).await.unwrap();
        another.write_all(b"GET /api/stream HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer t0ken\r\n\r\n").await.unwrap();
        read_until(&mut another, &mut String::new(), &["HTTP/1.1 200"]).await;
        open.push(another);
    }
    let refused = relay.client.get(&relay.admin_url("/api/stream"), &AUTH).await;
    assert_eq!((refused.status, refused.json()["error"].clone()), (503, serde_json::json!("too many live streams")));
    assert_eq!(relay.client.get(&relay.admin_url("/healthz"), &[]).await.status, 200);
    drop(open);
}

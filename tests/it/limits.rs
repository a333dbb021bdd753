//! Body limits, malformed bodies, timeouts and the admin listener.

use serde_json::json;

use crate::support::{Relay, TestSink};

fn config(sink: &TestSink, extra: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0, token: t0ken }}\nlimits: {{ max_body: 1KiB{extra} }}\nroutes:\n  - name: body-route\n    match:\n      path: /hooks/body\n      body: [ {{ path: $.kind, equals: build }} ]\n    forward:\n      - url: {}/x\n  - name: any-body\n    match: {{ path: /hooks/any }}\n    forward:\n      - url: {}/y\n        body: '{{\"kind\": \"{{{{body.kind}}}}\"}}'\n",
        sink.url(),
        sink.url()
    )
}

#[tokio::test]
async fn oversized_body_is_413_and_nothing_is_sent() {
    let sink = TestSink::start().await;
    let relay = Relay::start(&config(&sink, "")).await;
    let big = format!(r#"{{"kind":"build","pad":"{}"}}"#, "x".repeat(2000));
    let reply = relay.client.post_json(&relay.url("/hooks/body"), &[], big.clone()).await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.json(), json!({ "error": "request body too large", "detail": { "max_body": 1024 } }));
    // Without a Content-Length (chunked), the limit still holds.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(relay.running.ingress_addr).await.unwrap();
    let mut raw = b"POST /hooks/body HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for chunk in big.as_bytes().chunks(256) {
        raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    stream.write_all(&raw).await.unwrap();
    let mut answer = vec![0u8; 1024];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut answer)).await.expect("answered").unwrap();
    let text = String::from_utf8_lossy(&answer[..read]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(sink.seen().is_empty());
}

#[tokio::test]
async fn malformed_json_never_causes_a_5xx() {
    let sink = TestSink::start().await;
    let relay = Relay::start(&config(&sink, "")).await;
    for body in ["{not json", "", "[1,2", "\u{0}\u{1}", "{\"kind\": \"build\""] {
        let reply = relay.client.post_json(&relay.url("/hooks/body"), &[], body).await;
        assert_eq!(reply.status, 404, "a body that does not parse makes the route not match: {body:?}");
        assert_eq!(reply.json(), json!({ "error": "no route matched" }));
    }
    // A route without body conditions still takes it, with `body` null in templates.
    let reply = relay.client.post_json(&relay.url("/hooks/any"), &[], "{nope").await;
    assert_eq!(reply.status, 202);
    let seen = sink.wait_for(1).await;
    assert_eq!(seen[0].json(), json!({ "kind": "" }));
}

#[tokio::test]
async fn slow_body_hits_request_timeout() {
    let sink = TestSink::start().await;
    let relay = Relay::start(&config(&sink, ", request_timeout: 300ms")).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(relay.running.ingress_addr).await.unwrap();
    stream
        .write_all(b"POST /hooks/body HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"kind\"")
        .await
        .unwrap();
    let mut answer = vec![0u8; 1024];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut answer)).await.expect("answered").unwrap();
    let text = String::from_utf8_lossy(&answer[..read]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
}

#[tokio::test]
async fn admin_listener_probes_metrics_and_api_with_token() {
    let sink = TestSink::start().await;
    let relay = Relay::start(&config(&sink, "")).await;
    assert_eq!(relay.client.get(&relay.admin_url("/healthz"), &[]).await.status, 200);
    assert_eq!(relay.client.get(&relay.admin_url("/readyz"), &[]).await.status, 200);
    let unauthorized = relay.client.get(&relay.admin_url("/api/routes"), &[]).await;
    assert_eq!(unauthorized.status, 401);
    assert_eq!(relay.client.get(&relay.admin_url("/api/routes"), &[("authorization", "Bearer wrong")]).await.status, 401);
    let auth = [("authorization", "Bearer t0ken")];
    let routes = relay.client.get(&relay.admin_url("/api/routes"), &auth).await.json();
    let names: Vec<&str> = routes["routes"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["body-route", "any-body"]);
    assert_eq!(routes["routes"][0]["path"], "/hooks/body");
    assert_eq!(routes["routes"][0]["origin"], "yaml");
    let one = relay.client.get(&relay.admin_url("/api/routes/any-body"), &auth).await;
    assert_eq!(one.json()["targets"][0]["url"], format!("{}/y", sink.url()));
    assert_eq!(relay.client.get(&relay.admin_url("/api/routes/nope"), &auth).await.status, 404);
    let status = relay.client.get(&relay.admin_url("/api/status"), &auth).await.json();
    assert_eq!(status["config"]["generation"], 1);
    assert_eq!(status["config"]["last_error"], serde_json::Value::Null);

    let reply = relay.client.post_json(&relay.url("/hooks/any"), &[], r#"{"kind":"x"}"#).await;
    assert_eq!(reply.status, 202);
    sink.wait_for(1).await;
    let metrics = relay.client.get(&relay.admin_url("/metrics"), &auth).await.text();
    assert!(metrics.contains(r#"hookrelay_requests_total{route="any-body",outcome="accepted"}"#), "{metrics}");
    assert!(metrics.contains("hookrelay_config_generation"), "{metrics}");
}

#[tokio::test]
async fn slow_headers_are_cut_off_by_header_timeout() {
    let sink = TestSink::start().await;
    let relay = Relay::start(&config(&sink, ", header_timeout: 300ms")).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(relay.running.ingress_addr).await.unwrap();
    stream.write_all(b"POST /hooks/body HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let mut answer = vec![0u8; 1024];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("the relay must not wait forever for headers");
    let text = String::from_utf8_lossy(&answer[..read.unwrap_or(0)]).into_owned();
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    // The listener still serves others.
    let reply = relay.client.post_json(&relay.url("/hooks/any"), &[], r#"{"kind":"x"}"#).await;
    assert_eq!(reply.status, 202);
}

#[tokio::test]
async fn full_queue_answers_503_with_retry_after_instead_of_dropping() {
    // A target that accepts connections and never answers keeps every delivery in flight.
    let black_hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole = black_hole.local_addr().unwrap();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = black_hole.accept().await {
            keep.lock().unwrap().push(stream);
        }
    });
    let yaml = format!("listen: 127.0.0.1:0\nlimits: {{ queue_capacity: 3 }}\nroutes:\n  - name: slow\n    match: {{ path: /hooks/slow }}\n    forward:\n      - url: http://{hole}/x\n        timeout: 20s\n        max_queued: 100%\n");
    let relay = Relay::start(&yaml).await;
    let mut accepted = 0;
    let mut refused = None;
    for _ in 0..100 {
        let reply = relay.client.post_json(&relay.url("/hooks/slow"), &[], "{}").await;
        match reply.status {
            202 => accepted += 1,
            503 => {
                refused = Some(reply);
                break;
            }
            other => panic!("unexpected {other}: {}", reply.text()),
        }
    }
    let refused = refused.expect("a full queue must refuse with 503");
    assert_eq!(refused.headers.get("retry-after").unwrap(), "1");
    assert_eq!(refused.json(), json!({ "error": "delivery queue is full" }));
    assert_eq!(accepted, 3, "the queue holds exactly its capacity");
}

/// A request that adds no delivery to the queue (a sync route's, with `dedupe` or without;
/// an event whose targets `when` all skipped) and a replay that finds nothing: a queue over
/// its capacity (a restart with a lower `queue_capacity` than the deliveries it holds)
/// refuses async events but still lets them through.
#[tokio::test]
async fn a_queue_over_its_capacity_does_not_refuse_a_sync_route() {
    let black_hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole = black_hole.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = black_hole.accept().await {
            held.push(stream);
        }
    });
    let sink = TestSink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hookrelay.yaml");
    let db = dir.path().join("data").join("hookrelay.db");
    let yaml = |capacity: usize| {
        format!(
            "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0, token: t0ken }}\nstore: {{ path: '{}' }}\nlimits: {{ queue_capacity: {capacity}, shutdown_grace: 1s }}\nroutes:\n  - name: slow\n    match: {{ path: /hooks/slow }}\n    forward:\n      - url: http://{hole}/x\n        timeout: 20s\n        max_queued: 100%\n  - name: now\n    respond: sync\n    match: {{ path: /hooks/now }}\n    forward:\n      - url: {sink}/now\n  - name: once\n    respond: sync\n    match: {{ path: /hooks/once }}\n    id_from: X-Id\n    dedupe: 1h\n    forward:\n      - url: {sink}/once\n  - name: skipped\n    match: {{ path: /hooks/skipped }}\n    forward:\n      - {{ url: '{sink}/never', when: '{{{{#if body.flag}}}}true{{{{/if}}}}' }}\n",
            db.display(),
            sink = sink.url()
        )
    };
    std::fs::write(&config, yaml(3)).unwrap();
    let first = hookrelay::app::start(&config).await.unwrap();
    let client = crate::support::reqwest_like::Client::new();
    for _ in 0..3 {
        assert_eq!(client.post_json(&format!("http://{}/hooks/slow", first.ingress_addr), &[], "{}").await.status, 202);
    }
    first.shutdown().await;

    std::fs::write(&config, yaml(1)).unwrap();
    let relay = Relay::attach(hookrelay::app::start(&config).await.unwrap());
    let refused = relay.client.post_json(&relay.url("/hooks/slow"), &[], "{}").await;
    assert_eq!(refused.status, 503, "three deliveries held, a capacity of one: {}", refused.text());
    let answered = relay.client.post_json(&relay.url("/hooks/now"), &[], r#"{"n":1}"#).await;
    assert_eq!(answered.status, 200, "{}", answered.text());
    let once = relay.client.post_json(&relay.url("/hooks/once"), &[("x-id", "a1")], r#"{"n":2}"#).await;
    assert_eq!(once.status, 200, "{}", once.text());
    let skipped = relay.client.post_json(&relay.url("/hooks/skipped"), &[], r#"{"flag":false}"#).await;
    assert_eq!(skipped.status, 202, "{}", skipped.text());
    let seen = sink.wait_for(2).await;
    let bodies: Vec<&[u8]> = seen.iter().map(|seen| &seen.body[..]).collect();
    assert_eq!(bodies, [&br#"{"n":1}"#[..], br#"{"n":2}"#]);
    let nothing = relay
        .client
        .post_json(
            &relay.admin_url("/api/replay"),
            &[("authorization", "Bearer t0ken")],
            r#"{"route":"now","since":"2099-01-01T00:00:00Z"}"#,
        )
        .await;
    assert_eq!(nothing.status, 200, "{}", nothing.text());
    assert_eq!(nothing.json()["replayed"], 0);
}

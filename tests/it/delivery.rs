//! Durable delivery through the admin API's eyes: retries and their record, dead letters
//! retried by hand, success_when, dedupe, paging, and a kill -9 in the middle.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{Answer, Relay, TestSink};

fn config(sink: &TestSink, target_extra: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0, token: t0ken }}\nroutes:\n  - name: hooks\n    source: github\n    dedupe: 1h\n    match: {{ path: '/hooks/{{kind}}' }}\n    forward:\n      - name: sink\n        url: {}/deliver\n        bearer: very-secret\n        retry: {{ max_attempts: 3, initial: 20ms, max: 100ms, jitter: false }}\n{target_extra}",
        sink.url()
    )
}

const AUTH: [(&str, &str); 1] = [("authorization", "Bearer t0ken")];

async fn get(relay: &Relay, path: &str) -> Value {
    let reply = relay.client.get(&relay.admin_url(path), &AUTH).await;
    assert_eq!(reply.status, 200, "GET {path}: {}", reply.text());
    reply.json()
}

/// Polls (bounded) until the event's only delivery is finished; returns it.
async fn finished_delivery(relay: &Relay, event_id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let event = get(relay, &format!("/api/events/{event_id}")).await;
        let delivery = event["deliveries"][0].clone();
        if matches!(delivery["status"].as_str(), Some("succeeded" | "failed")) {
            return delivery;
        }
        assert!(tokio::time::Instant::now() < deadline, "delivery not finished: {event}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn send(relay: &Relay, delivery_id: &str) -> String {
    let reply = relay
        .client
        .post_json(&relay.url("/hooks/push"), &[("x-github-event", "push"), ("x-github-delivery", delivery_id)], r#"{"a":1}"#)
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    reply.json()["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn two_503s_then_200_is_delivered_with_three_attempts_on_record() {
    let sink =
        TestSink::scripted(vec![Answer::with_body(503, r#"{"busy":true}"#), Answer::status_only(503), Answer::with_body(200, "{}")]).await;
    let relay = Relay::start(&config(&sink, "")).await;
    let event_id = send(&relay, "d-1").await;
    let delivery = finished_delivery(&relay, &event_id).await;
    assert_eq!(delivery["status"], "succeeded");
    assert_eq!(delivery["attempts"], 3);
    assert!(
        delivery["request"]["headers"].as_array().unwrap().iter().all(|h| h[0] != "authorization"),
        "config credentials are added at send time, never stored: {delivery}"
    );
    let record = get(&relay, &format!("/api/deliveries/{}", delivery["id"].as_str().unwrap())).await;
    let statuses: Vec<u64> = record["attempts"].as_array().unwrap().iter().map(|a| a["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [503, 503, 200]);
    assert_eq!(record["attempts"][0]["response_body"], r#"{"busy":true}"#);
    let sent_auth =
        record["attempts"][0]["request_headers"].as_array().unwrap().iter().find(|h| h[0] == "authorization").unwrap()[1].clone();
    assert_eq!(sent_auth, "[redacted]");
    let seen = sink.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[2].header("authorization"), Some("Bearer very-secret"), "the real credential still goes to the target");
    let keys: Vec<&str> = seen.iter().map(|s| s.header("idempotency-key").unwrap()).collect();
    assert!(keys.iter().all(|k| *k == format!("{event_id}.sink")), "{keys:?}");
    // Each attempt is a span of its own in one trace; the log keeps the delivery's
    // `traceparent` for all three.
    let sent: Vec<&str> = seen.iter().map(|s| s.header("traceparent").unwrap()).collect();
    assert!(sent.iter().all(|t| t[..35] == sent[0][..35]) && sent[0] != sent[1] && sent[1] != sent[2], "{sent:?}");
    let traceparent = |attempt: &serde_json::Value| {
        attempt["request_headers"].as_array().unwrap().iter().find(|h| h[0] == "traceparent").unwrap()[1].clone()
    };
    let logged: Vec<serde_json::Value> = record["attempts"].as_array().unwrap().iter().map(traceparent).collect();
    assert!(logged.iter().all(|t| *t == logged[0] && t.as_str().unwrap()[..35] == sent[0][..35]), "{logged:?}");
}

/// A target with a credential in its URL's query and a bearer token: every attempt shows
/// both masked, and the store keeps the URL and headers once, on the delivery, with only
/// the header the target adds (masked) per attempt.
#[tokio::test]
async fn a_retried_request_with_credentials_is_shown_masked_and_stored_once() {
    let sink = TestSink::scripted(vec![Answer::status_only(503), Answer::status_only(503), Answer::with_body(200, "{}")]).await;
    let yaml = config(&sink, "").replace("/deliver\n", "/deliver?access_token=q-secret&page=2\n");
    let relay = Relay::start(&yaml).await;
    let event_id = send(&relay, "d-url").await;
    let delivery = finished_delivery(&relay, &event_id).await;
    assert_eq!((delivery["status"].as_str(), delivery["attempts"].as_u64()), (Some("succeeded"), Some(3)), "{delivery}");
    let seen = sink.seen();
    assert!(seen.iter().all(|s| s.uri == "/deliver?access_token=q-secret&page=2"), "the target gets the real URL");
    let record = get(&relay, &format!("/api/deliveries/{}", delivery["id"].as_str().unwrap())).await;
    let shown = format!("{}/deliver?access_token=***&page=2", sink.url());
    assert_eq!(record["delivery"]["request"]["url"], shown.as_str());
    let urls: Vec<&str> = record["attempts"].as_array().unwrap().iter().map(|a| a["request_url"].as_str().unwrap()).collect();
    assert_eq!(urls, [shown.as_str(); 3]);
    let db = rusqlite::Connection::open_with_flags(relay.dir.path().join("data/hookrelay.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let own_urls: i64 = db.query_row("SELECT count(*) FROM attempts WHERE request_url IS NOT NULL", [], |row| row.get(0)).unwrap();
    assert_eq!(own_urls, 0, "an attempt to the delivery's URL does not store it again");
    for attempt in record["attempts"].as_array().unwrap() {
        let headers = attempt["request_headers"].as_array().unwrap();
        assert_eq!(headers[..headers.len() - 1], record["delivery"]["request"]["headers"].as_array().unwrap()[..], "{attempt}");
        assert_eq!(headers.last().unwrap(), &json!(["authorization", "[redacted]"]));
    }
    let stored: Vec<(Option<String>, Option<String>)> = db
        .prepare("SELECT request_headers, request_headers_added FROM attempts ORDER BY number")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(stored, vec![(None, Some(r#"[["authorization","[redacted]"]]"#.to_string())); 3]);
}

#[tokio::test]
async fn failed_delivery_is_kept_and_can_be_retried_by_hand() {
    let sink = TestSink::scripted(vec![Answer::status_only(500), Answer::status_only(500)]).await;
    let relay = Relay::start(&config(&sink, "").replace("max_attempts: 3", "max_attempts: 2")).await;
    let event_id = send(&relay, "d-2").await;
    let delivery = finished_delivery(&relay, &event_id).await;
    assert_eq!(delivery["status"], "failed");
    assert_eq!(delivery["attempts"], 2);
    let id = delivery["id"].as_str().unwrap();
    let failed = get(&relay, "/api/deliveries?status=failed").await;
    assert_eq!(failed["items"][0]["id"], id);

    // A change must say it is JSON (a cross-site form cannot), even with no body.
    let retry_url = relay.admin_url(&format!("/api/deliveries/{id}/retry"));
    let refused = relay.client.send("POST", &retry_url, &AUTH, "").await;
    assert_eq!(refused.status, 415, "{}", refused.text());
    assert_eq!(refused.json()["error"], "a change must be sent as JSON");
    let retried = relay.client.post_json(&retry_url, &AUTH, "").await;
    assert_eq!(retried.status, 200, "{}", retried.text());
    assert_eq!(retried.json()["status"], "pending");
    let delivery = finished_delivery(&relay, &event_id).await;
    assert_eq!(delivery["status"], "succeeded");
    assert_eq!(sink.seen().len(), 3);
    let again = relay.client.post_json(&relay.admin_url(&format!("/api/deliveries/{id}/retry")), &AUTH, "").await;
    assert_eq!(again.status, 409, "a delivered delivery is not retried: {}", again.text());
    let missing = relay.client.post_json(&relay.admin_url("/api/deliveries/nope/retry"), &AUTH, "").await;
    assert_eq!(missing.status, 404);
}

#[tokio::test]
async fn chat_api_errcode_is_retried_under_success_when() {
    let sink = TestSink::scripted(vec![
        Answer::with_body(200, r#"{"errcode":130101,"errmsg":"send too fast"}"#),
        Answer::with_body(200, r#"{"errcode":0,"errmsg":"ok"}"#),
    ])
    .await;
    let relay = Relay::start(&config(&sink, "        success_when:\n          - { path: $.errcode, equals: 0 }\n")).await;
    let event_id = send(&relay, "d-3").await;
    let delivery = finished_delivery(&relay, &event_id).await;
    assert_eq!(delivery["status"], "succeeded");
    assert_eq!(delivery["attempts"], 2);
}

#[tokio::test]
async fn a_429_is_recorded_but_does_not_use_up_an_attempt() {
    let sink = TestSink::scripted(vec![Answer::too_many_requests("1")]).await;
    let relay = Relay::start(&config(&sink, "").replace("max_attempts: 3", "max_attempts: 1")).await;
    let started = std::time::Instant::now();
    let event_id = send(&relay, "d-4").await;
    let delivery = finished_delivery(&relay, &event_id).await;
    assert_eq!(delivery["status"], "succeeded");
    assert_eq!(delivery["attempts"], 1, "only the 200 counts");
    assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After: 1 honoured");
    let record = get(&relay, &format!("/api/deliveries/{}", delivery["id"].as_str().unwrap())).await;
    let counted: Vec<bool> = record["attempts"].as_array().unwrap().iter().map(|a| a["counted"].as_bool().unwrap()).collect();
    assert_eq!(counted, [false, true]);
}

#[tokio::test]
async fn repeated_sender_delivery_id_is_acknowledged_but_not_sent_twice() {
    let sink = TestSink::start().await;
    let relay = Relay::start(&config(&sink, "")).await;
    let first = send(&relay, "same-id").await;
    let reply = relay
        .client
        .post_json(&relay.url("/hooks/push"), &[("x-github-event", "push"), ("x-github-delivery", "same-id")], r#"{"a":1}"#)
        .await;
    assert_eq!(reply.status, 202);
    assert_eq!(reply.json()["duplicates"][0]["original"], first);
    finished_delivery(&relay, &first).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.seen().len(), 1);
}

#[tokio::test]
async fn events_page_by_cursor_and_filter() {
    let sink = TestSink::start().await;
    let relay = Relay::start(&config(&sink, "")).await;
    let mut sent = Vec::new();
    for n in 0..25 {
        sent.push(send(&relay, &format!("page-{n}")).await);
    }
    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/api/events?route=hooks&limit=10&cursor={cursor}"),
            None => "/api/events?route=hooks&limit=10".to_string(),
        };
        let page = get(&relay, &path).await;
        pages += 1;
        listed.extend(page["items"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    sent.reverse();
    assert_eq!(listed, sent, "newest first, no gaps, no repeats");
    assert_eq!(get(&relay, "/api/events?route=other").await["items"], json!([]));
    let bad = relay.client.get(&relay.admin_url("/api/deliveries?status=lost"), &AUTH).await;
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert_eq!(relay.client.get(&relay.admin_url("/api/events/nope"), &AUTH).await.status, 404);
    assert_eq!(relay.client.get(&relay.admin_url("/api/events"), &[]).await.status, 401);
}

/// 50 events accepted while the target is down, the relay killed with SIGKILL, restarted,
/// the target brought up: all 50 arrive, each with its Idempotency-Key.
#[cfg(unix)]
#[tokio::test]
async fn acknowledged_events_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let free_port = crate::support::binary::free_port;
    let (port, target_port) = (free_port(), free_port());
    let path = dir.path().join("hookrelay.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: 127.0.0.1:{port}\nstore: {{ path: ./state/relay.db }}\nroutes:\n  - name: crash\n    match: {{ path: /hooks/crash }}\n    forward:\n      - name: down\n        url: http://127.0.0.1:{target_port}/x\n        body: {{ n: '{{{{json body.n}}}}' }}\n        retry: {{ max_attempts: 1000, initial: 50ms, max: 300ms }}\n        breaker: {{ cooldown: 200ms, max_cooldown: 1s }}\n"
        ),
    )
    .unwrap();
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_hookrelay"))
            .args(["run", "--no-watch", "-c", path.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let client = crate::support::reqwest_like::Client::new();
    let url = format!("http://127.0.0.1:{port}/hooks/crash");
    let wait_until_up = |client: crate::support::reqwest_like::Client| {
        let probe = format!("http://127.0.0.1:{port}/healthz-probe");
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while client.try_get(&probe).await.is_none() {
                assert!(tokio::time::Instant::now() < deadline, "relay did not start");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    };
    let mut first = spawn();
    wait_until_up(client.clone()).await;
    let mut ids = Vec::new();
    for n in 0..50 {
        let reply = client.post_json(&url, &[], json!({ "n": n }).to_string()).await;
        assert_eq!(reply.status, 202, "{}", reply.text());
        ids.push(reply.json()["id"].as_str().unwrap().to_string());
    }
    first.kill().unwrap();
    first.wait().unwrap();

    let sink = TestSink::on(&format!("127.0.0.1:{target_port}")).await;
    let mut second = spawn();
    let seen = sink.wait_for(50).await;
    let _ = second.kill();
    let _ = second.wait();
    let mut numbers: Vec<i64> = seen.iter().map(|s| s.json()["n"].as_i64().unwrap()).collect();
    numbers.sort();
    numbers.dedup();
    assert_eq!(numbers, (0..50).collect::<Vec<_>>(), "every acknowledged event arrived");
    for request in &seen {
        let key = request.header("idempotency-key").unwrap();
        let event = key.strip_suffix(".down").unwrap();
        assert!(ids.iter().any(|id| id == event), "{key}");
    }
}

#[tokio::test]
async fn sync_answers_and_render_errors_are_in_the_delivery_log() {
    let sink = TestSink::scripted(vec![Answer::with_body(201, r#"{"pipeline":"started"}"#)]).await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0, token: t0ken }}\nroutes:\n  - name: ci\n    respond: sync\n    match: {{ path: /hooks/ci }}\n    forward:\n      - name: trigger\n        url: {}/trigger\n        success: [201]\n      - name: strict\n        url: {}/never\n        strict: true\n        body: '{{\"x\": \"{{{{body.missing}}}}\"}}'\n",
        sink.url(),
        sink.url()
    );
    let relay = Relay::start(&yaml).await;
    let reply = relay.client.post_json(&relay.url("/hooks/ci"), &[], "{}").await;
    assert_eq!(reply.status, 201);
    assert_eq!(reply.text(), r#"{"pipeline":"started"}"#);
    let events = get(&relay, "/api/events?route=ci").await;
    let event_id = events["items"][0]["id"].as_str().unwrap().to_string();
    // The sync delivery is logged just after the answer went out.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let event = loop {
        let event = get(&relay, &format!("/api/events/{event_id}")).await;
        if event["deliveries"].as_array().unwrap().len() == 2 {
            break event;
        }
        assert!(tokio::time::Instant::now() < deadline, "{event}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut deliveries: Vec<(String, String)> = event["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["target"].as_str().unwrap().to_string(), d["status"].as_str().unwrap().to_string()))
        .collect();
    deliveries.sort();
    assert_eq!(deliveries, [("strict".to_string(), "failed".to_string()), ("trigger".to_string(), "succeeded".to_string())], "{event}");
    let strict = event["deliveries"].as_array().unwrap().iter().find(|d| d["target"] == "strict").unwrap();
    assert!(strict["last_error"].as_str().unwrap().contains("render error"), "{strict}");
    let trigger = event["deliveries"].as_array().unwrap().iter().find(|d| d["target"] == "trigger").unwrap();
    let record = get(&relay, &format!("/api/deliveries/{}", trigger["id"].as_str().unwrap())).await;
    assert_eq!(record["attempts"][0]["status"], 201);
    assert_eq!(record["attempts"][0]["response_body"], r#"{"pipeline":"started"}"#);
    assert_eq!(sink.seen().len(), 1, "the strict target was never sent");
}

#[tokio::test]
async fn a_single_target_sync_route_is_logged_after_answering() {
    let sink = TestSink::scripted(vec![Answer::with_body(202, r#"{"queued":true}"#)]).await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0, token: t0ken }}\nroutes:\n  - name: only-sync\n    respond: sync\n    match: {{ path: /hooks/s }}\n    forward:\n      - {{ name: one, url: '{}/one' }}\n",
        sink.url()
    );
    let relay = Relay::start(&yaml).await;
    let reply = relay.client.post_json(&relay.url("/hooks/s"), &[], r#"{"k":1}"#).await;
    assert_eq!((reply.status, reply.text().as_str()), (202, r#"{"queued":true}"#));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let events = get(&relay, "/api/events?route=only-sync").await;
        if let Some(id) = events["items"][0]["id"].as_str() {
            let event = get(&relay, &format!("/api/events/{id}")).await;
            if event["deliveries"][0]["status"] == "succeeded" {
                assert_eq!(event["body"], r#"{"k":1}"#);
                assert_eq!(event["deliveries"][0]["last_status"], 202);
                break;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "sync event never logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts a relay on `yaml` (kept in a folder of its own, so that it can start again on the
/// same store) and sends `count` sync requests `{"n": k}` to `path` at once; each task
/// yields the answer's status, None when no answer came.
async fn start_and_send(
    yaml: String,
    path: &str,
    count: usize,
) -> (tempfile::TempDir, std::path::PathBuf, hookrelay::app::Running, tokio::task::JoinSet<Option<u16>>) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hookrelay.yaml");
    std::fs::write(&config, yaml).unwrap();
    let running = hookrelay::app::start(&config).await.unwrap();
    let url = format!("http://{}{path}", running.ingress_addr);
    let client = crate::support::reqwest_like::Client::new();
    let mut sending = tokio::task::JoinSet::new();
    for n in 0..count {
        let (client, url) = (client.clone(), url.clone());
        sending.spawn(async move { client.try_send("POST", &url, &[], format!(r#"{{"n":{n}}}"#)).await.ok().map(|reply| reply.status) });
    }
    (dir, config, running, sending)
}

/// Sync deliveries answered together are logged together; a stop right after the answers
/// still logs every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answered_sync_delivery_is_logged_even_when_the_relay_stops_at_once() {
    const SENT: usize = 300;
    let sink = TestSink::start().await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0, token: t0ken }}\nroutes:\n  - name: burst\n    respond: sync\n    match: {{ path: /hooks/burst }}\n    forward:\n      - {{ name: one, url: '{}/one', body: '{{\"n\": {{{{body.n}}}}}}' }}\n",
        sink.url()
    );
    let (_dir, config, running, mut sending) = start_and_send(yaml, "/hooks/burst", SENT).await;
    while let Some(status) = sending.join_next().await {
        assert_eq!(status.unwrap(), Some(200));
    }
    running.shutdown().await;

    let relay = Relay::attach(hookrelay::app::start(&config).await.unwrap());
    let logged = get(&relay, "/api/deliveries?route=burst&limit=500").await;
    let items = logged["items"].as_array().unwrap();
    assert_eq!(items.len(), SENT, "one logged delivery per answered request");
    assert!(items.iter().all(|d| d["status"] == "succeeded" && d["last_status"] == 200), "{logged}");
    let mut bodies: Vec<i64> = Vec::with_capacity(SENT);
    for delivery in items {
        let record = get(&relay, &format!("/api/deliveries/{}", delivery["id"].as_str().unwrap())).await;
        assert_eq!(record["attempts"].as_array().unwrap().len(), 1, "{record}");
        let sent: Value = serde_json::from_str(record["attempts"][0]["request_body"].as_str().unwrap()).unwrap();
        bodies.push(sent["n"].as_i64().unwrap());
    }
    bodies.sort();
    assert_eq!(bodies, (0..SENT as i64).collect::<Vec<_>>(), "each with the body it was sent");
}

/// A stop whose grace runs out while sync requests wait on a slow target: those answered
/// in the grace are all logged, the others are cut off unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_past_its_grace_logs_every_sync_request_it_answered() {
    const SENT: usize = 60;
    // The answers come out from 0.6 s to 1.4 s after the requests: the 1 s grace ends among them.
    let script = (0..SENT).map(|k| Answer::with_body(200, "{}").after(Duration::from_millis(600 + 800 * k as u64 / SENT as u64)));
    let sink = TestSink::scripted(script.collect()).await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0, token: t0ken }}\nlimits: {{ shutdown_grace: 1s }}\nroutes:\n  - name: slow\n    respond: sync\n    match: {{ path: /hooks/slow }}\n    forward:\n      - {{ name: one, url: '{}/one', timeout: 10s }}\n",
        sink.url()
    );
    let (_dir, config, running, mut sending) = start_and_send(yaml, "/hooks/slow", SENT).await;
    sink.wait_for(SENT).await;
    running.shutdown().await;
    let mut answered = 0;
    while let Some(status) = sending.join_next().await {
        if let Some(status) = status.unwrap() {
            assert_eq!(status, 200);
            answered += 1;
        }
    }
    assert!(0 < answered && answered < SENT, "the grace ended among the answers: {answered} of {SENT} answered");

    let relay = Relay::attach(hookrelay::app::start(&config).await.unwrap());
    let logged = get(&relay, "/api/deliveries?route=slow&limit=500").await;
    assert_eq!(logged["items"].as_array().unwrap().len(), answered, "every answered request is logged: {logged}");
}

#[tokio::test]
async fn retry_on_decides_which_failures_are_retried() {
    let sink = TestSink::scripted(vec![Answer::status_only(404), Answer::status_only(503)]).await;
    let relay = Relay::start(&config(&sink, "").replace("jitter: false }", "jitter: false, retry_on: [4xx] }")).await;
    let event_id = send(&relay, "r-1").await;
    let delivery = finished_delivery(&relay, &event_id).await;
    // 404 is retried because retry_on says 4xx; 503 is not in the list, so it fails at once.
    assert_eq!(delivery["status"], "failed", "{delivery}");
    assert_eq!(delivery["attempts"], 2);
    assert_eq!(delivery["last_status"], 503);
}

/// DingTalk preset: a final answer code fails at once with the robot's message; a
/// throttling code pauses the robot for its block time without using up an attempt.
#[tokio::test]
async fn preset_answer_codes_decide_final_and_throttled() {
    let sink = TestSink::scripted(vec![
        Answer::with_body(200, r#"{"errcode":310000,"errmsg":"keywords not in content"}"#),
        Answer::with_body(200, r#"{"errcode":410100,"errmsg":"send too fast"}"#),
    ])
    .await;
    let relay = Relay::start(&format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0, token: t0ken }}\nroutes:\n  - name: robot\n    match: {{ path: /hooks/robot }}\n    forward:\n      - name: ding\n        preset: dingtalk\n        url: {}/robot/send?access_token=tok\n        body: {{ msgtype: text, text: {{ content: hi }} }}\n",
        sink.url()
    ))
    .await;
    let post = || async { relay.client.post_json(&relay.url("/hooks/robot"), &[], "{}").await.json()["id"].as_str().unwrap().to_string() };
    let first = post().await;
    let delivery = finished_delivery(&relay, &first).await;
    assert_eq!(delivery["status"], "failed");
    assert_eq!(delivery["attempts"], 1, "a final code is not retried");
    assert!(delivery["last_error"].as_str().unwrap().contains("errcode 310000: keywords not in content"), "{delivery}");

    let second = post().await;
    sink.wait_for(2).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let delivery = loop {
        let event = get(&relay, &format!("/api/events/{second}")).await;
        let delivery = event["deliveries"][0].clone();
        if delivery["status"] == "pending" && delivery["last_status"] == 200 {
            break delivery;
        }
        assert!(tokio::time::Instant::now() < deadline, "{event}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(delivery["attempts"], 0, "throttling does not use up an attempt: {delivery}");
    let wait = delivery["next_attempt_at"].as_i64().unwrap() - delivery["updated_at"].as_i64().unwrap();
    assert!((599_000..=601_000).contains(&wait), "paused for DingTalk's 10-minute block: {wait} ms");
    let record = get(&relay, &format!("/api/deliveries/{}", delivery["id"].as_str().unwrap())).await;
    assert_eq!(record["attempts"][0]["counted"], false, "{record}");
}

/// A sync route judges its target's answer like an async one: `success_when` and the
/// preset's codes decide what the delivery log says (the sender gets the answer as is).
#[tokio::test]
async fn sync_routes_apply_success_when() {
    let sink = TestSink::scripted(vec![Answer::with_body(200, r#"{"errcode":310000,"errmsg":"sign not match"}"#)]).await;
    let relay = Relay::start(&format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0, token: t0ken }}\nroutes:\n  - name: robot\n    match: {{ path: /hooks/robot }}\n    respond: sync\n    forward:\n      - name: ding\n        url: {}/robot/send\n        success_when: [ {{ path: $.errcode, equals: 0 }} ]\n",
        sink.url()
    ))
    .await;
    let reply = relay.client.post_json(&relay.url("/hooks/robot"), &[], "{}").await;
    assert_eq!((reply.status, reply.text().as_str()), (200, r#"{"errcode":310000,"errmsg":"sign not match"}"#));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let deliveries = get(&relay, "/api/deliveries").await;
        if let Some(delivery) = deliveries["items"].as_array().unwrap().first() {
            assert_eq!(delivery["status"], "failed", "{delivery}");
            assert!(delivery["last_error"].as_str().unwrap().contains("did not satisfy success_when"), "{delivery}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the sync delivery was not logged");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A backlog can be cancelled over the admin API, one delivery or by filter; cancelled
/// deliveries are final, never sent, and leave the queue.
#[tokio::test]
async fn pending_deliveries_are_cancelled_over_the_admin_api() {
    let down = crate::support::binary::free_port();
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0, token: t0ken }}\nroutes:\n  - name: robot\n    match: {{ path: /hooks/robot }}\n    forward:\n      - name: down\n        url: http://127.0.0.1:{down}/send\n        retry: {{ max_attempts: 100, initial: 1h, max: 1h, jitter: false }}\n"
    );
    let relay = Relay::start(&yaml).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let reply = relay.client.post_json(&relay.url("/hooks/robot"), &[], format!(r#"{{"n":{n}}}"#)).await;
        assert_eq!(reply.status, 202, "{}", reply.text());
        ids.push(reply.json()["id"].as_str().unwrap().to_string());
    }
    // Each was tried once (refused) and now waits an hour for its next try.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while get(&relay, "/api/deliveries?status=pending").await["items"].as_array().unwrap().len() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "deliveries did not settle as pending");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let all = get(&relay, "/api/deliveries").await;
    let first = all["items"][2]["id"].as_str().unwrap().to_string();
    let cancel = |path: String, body: &'static str| {
        let client = relay.client.clone();
        let url = relay.admin_url(&path);
        async move { client.post_json(&url, &AUTH, body).await }
    };
    let one = cancel(format!("/api/deliveries/{first}/cancel"), "").await;
    assert_eq!(one.status, 200, "{}", one.text());
    assert_eq!(one.json()["status"], "cancelled");
    let again = cancel(format!("/api/deliveries/{first}/cancel"), "").await;
    assert_eq!(again.status, 409, "{}", again.text());
    let refused = cancel("/api/deliveries/cancel".into(), r#"{"status":"failed"}"#).await;
    assert_eq!(refused.status, 400, "{}", refused.text());
    let rest = cancel("/api/deliveries/cancel".into(), r#"{"route":"robot","before":"2999-01-01T00:00:00Z"}"#).await;
    assert_eq!(rest.status, 200, "{}", rest.text());
    assert_eq!(rest.json(), json!({ "cancelled": 2 }));
    let status = get(&relay, "/api/status").await;
    assert_eq!(status["queue_depth"], 0, "{status}");
    for (body, why) in [("", "an empty filter cancels nothing"), (r#"{"before": 1e3}"#, "not whole milliseconds")] {
        let refused = cancel("/api/deliveries/cancel".into(), body).await;
        assert_eq!(refused.status, 400, "{why}: {}", refused.text());
    }
    // Retried by hand, a cancelled delivery is back in the queue count; cancelled again, out.
    let retried = cancel(format!("/api/deliveries/{first}/retry"), "").await;
    assert_eq!(retried.status, 200, "{}", retried.text());
    assert_eq!(get(&relay, "/api/status").await["queue_depth"], 1);
    // It is tried at once (refused) and waits an hour again: pending, not on the wire.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while get(&relay, &format!("/api/deliveries/{first}")).await["attempts"].as_array().unwrap().len() < 2
        || get(&relay, &format!("/api/deliveries/{first}")).await["delivery"]["status"] != "pending"
    {
        assert!(tokio::time::Instant::now() < deadline, "the retried delivery did not settle");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(cancel("/api/deliveries/cancel".into(), r#"{"all": true}"#).await.json(), json!({ "cancelled": 1 }));
    assert_eq!(get(&relay, "/api/status").await["queue_depth"], 0);
    let cancelled = get(&relay, "/api/deliveries?status=cancelled").await;
    assert_eq!(cancelled["items"].as_array().unwrap().len(), 3);
    assert!(cancelled["items"].as_array().unwrap().iter().all(|d| ids.contains(&d["event_id"].as_str().unwrap().to_string())));
}

/// A secret the config knows only by value (a `${VAR}` copied through `vars` into a URL)
/// stays masked in the attempts' record after a reload that drops it from the config.
#[tokio::test]
async fn an_attempt_url_masked_by_a_config_value_stays_masked_after_a_reload() {
    let sink = TestSink::start().await;
    let yaml = |vars: &str| {
        format!(
            "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0, token: t0ken }}\nroutes:\n  - name: hooks\n    match: {{ path: /hooks/in }}\n{vars}    forward:\n      - name: sink\n        url: \"{}/vp/{{{{default vars.k \\\"none\\\"}}}}\"\n",
            sink.url()
        )
    };
    let relay = Relay::start(&yaml("    vars: { k: \"${HOOKRELAY_TEST_PATH_SECRET:-path-secret-5150}\" }\n")).await;
    let reply = relay.client.post_json(&relay.url("/hooks/in"), &[], r#"{"a":1}"#).await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let event_id = reply.json()["id"].as_str().unwrap().to_string();
    assert_eq!(sink.wait_for(1).await[0].uri, "/vp/path-secret-5150");
    let delivery = finished_delivery(&relay, &event_id).await;
    let path = format!("/api/deliveries/{}", delivery["id"].as_str().unwrap());
    let shown = format!("{}/vp/***", sink.url());
    assert_eq!(get(&relay, &path).await["attempts"][0]["request_url"], shown.as_str());

    std::fs::write(relay.config_path(), yaml("")).unwrap();
    let reloaded = relay.client.post_json(&relay.admin_url("/api/reload"), &AUTH, "").await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    assert_eq!(get(&relay, &path).await["attempts"][0]["request_url"], shown.as_str(), "masked as it was recorded");
}

/// An event whose commit outlasts its request (the sender was answered 408 while the store
/// was busy, or hung up) is still committed; its delivery then goes out at once, not when
/// a lease runs out, and the queue's count comes back to 0.
#[tokio::test]
async fn a_delivery_committed_after_its_request_timed_out_is_sent_at_once() {
    let sink = TestSink::start().await;
    let relay = Relay::start(&format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0, token: t0ken }}\nlimits: {{ request_timeout: 300ms }}\nroutes:\n  - name: hooks\n    match: {{ path: /hooks/in }}\n    forward:\n      - name: sink\n        url: {}/deliver\n",
        sink.url()
    ))
    .await;
    assert_eq!(relay.client.post_json(&relay.url("/hooks/in"), &[], r#"{"n":0}"#).await.status, 202);
    sink.wait_for(1).await;
    let db = rusqlite::Connection::open(relay.dir.path().join("data/hookrelay.db")).unwrap();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();
    let timed_out = relay.client.post_json(&relay.url("/hooks/in"), &[], r#"{"n":1}"#).await;
    assert_eq!(timed_out.status, 408, "{}", timed_out.text());
    let gone = tokio::time::timeout(Duration::from_millis(100), relay.client.post_json(&relay.url("/hooks/in"), &[], r#"{"n":2}"#)).await;
    assert!(gone.is_err(), "answered while the store was locked");
    db.execute_batch("COMMIT").unwrap();
    // Bounded by `wait_for` (10 s), well within the 30 s a lost claim would hold them.
    let mut sent: Vec<i64> = sink.wait_for(3).await[1..].iter().map(|seen| seen.json()["n"].as_i64().unwrap()).collect();
    sent.sort();
    assert_eq!(sent, [1, 2]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while get(&relay, "/api/status").await["queue_depth"] != 0 {
        assert!(tokio::time::Instant::now() < deadline, "queue_depth stays above 0");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

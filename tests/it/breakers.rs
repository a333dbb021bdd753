//! Per-target circuit breakers and pause: a failing receiver is left alone for a cool-down
//! that doubles, one probe tests it, and waiting deliveries use no attempt; a `410 Gone`
//! pauses its target until resumed, across a restart.

use std::time::Duration;

use serde_json::Value;

use crate::support::{Answer, Relay, TestSink};

const AUTH: [(&str, &str); 1] = [("authorization", "Bearer t0ken")];

fn config(flaky: &str, gone: &str) -> String {
    format!(
        r#"listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0, token: t0ken }}
routes:
  - name: hook
    match: {{ path: /hooks/flaky }}
    forward:
      - name: flaky
        url: {flaky}/in
        retry: {{ max_attempts: 20, initial: 100ms, max: 100ms, jitter: false }}
        breaker: {{ failures: 2, cooldown: 1s }}
  - name: gone
    match: {{ path: /hooks/gone }}
    forward:
      - name: old
        url: {gone}/in
"#
    )
}

/// `hookrelay check` refuses a target with `setting` (one YAML line), saying `message`.
fn check_refuses(setting: &str, message: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    let yaml = format!("listen: 127.0.0.1:0\nroutes:\n  - name: r\n    match: {{ path: /r }}\n    forward:\n      - url: http://127.0.0.1:9/\n        {setting}\n");
    std::fs::write(&path, yaml).unwrap();
    let output =
        std::process::Command::new(env!("CARGO_BIN_EXE_hookrelay")).args(["check", "-c", path.to_str().unwrap()]).output().unwrap();
    let errors = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{setting}: {errors}");
    assert!(errors.contains(message), "{setting}: {errors}");
}

async fn targets(relay: &Relay) -> Vec<Value> {
    relay.client.get(&relay.admin_url("/api/targets"), &AUTH).await.json()["items"].as_array().unwrap().clone()
}

async fn target(relay: &Relay, name: &str) -> Value {
    targets(relay).await.into_iter().find(|t| t["target"] == name).unwrap()
}

async fn wait_state(relay: &Relay, name: &str, state: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let target = target(relay, name).await;
        if target["state"] == state {
            return target;
        }
        assert!(tokio::time::Instant::now() < deadline, "{name} never became {state}: {target}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_open_breaker_holds_deliveries_without_using_attempts_and_one_probe_closes_it() {
    let flaky = TestSink::scripted(vec![Answer::status_only(503), Answer::status_only(503), Answer::status_only(503)]).await;
    let gone = TestSink::start().await;
    let relay = Relay::start(&config(&flaky.url(), &gone.url())).await;
    assert_eq!(target(&relay, "flaky").await["state"], "closed");
    assert_eq!(relay.client.post_json(&relay.url("/hooks/flaky"), &[], r#"{"n":0}"#).await.status, 202);
    // Two failures in a row (the first try and one retry) open it.
    let open = wait_state(&relay, "flaky", "open").await;
    assert_eq!(open["failures"], 2, "{open}");
    assert!(open["next_probe"].as_i64().is_some(), "{open}");
    for n in 1..3 {
        assert_eq!(relay.client.post_json(&relay.url("/hooks/flaky"), &[], format!(r#"{{"n":{n}}}"#)).await.status, 202);
    }
    assert_eq!(target(&relay, "flaky").await["queued"], 3);
    // After the cool-down one probe goes (and fails: open again, for twice as long); after
    // that one, the next probe succeeds and everything waiting goes.
    let seen = flaky.wait_for(6).await;
    assert!(seen[..3].iter().all(|s| s.uri == "/in"));
    let gap = |a: usize, b: usize| seen[b].at.duration_since(seen[a].at);
    assert!(gap(1, 2) >= Duration::from_millis(900), "the cool-down was not kept: {:?}", gap(1, 2));
    assert!(gap(2, 3) >= Duration::from_millis(1_900), "the cool-down did not double: {:?}", gap(2, 3));
    let closed = wait_state(&relay, "flaky", "closed").await;
    assert_eq!((closed["failures"].as_u64(), closed["next_probe"].clone()), (Some(0), Value::Null), "{closed}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while target(&relay, "flaky").await["queued"] != 0 {
        assert!(tokio::time::Instant::now() < deadline, "deliveries left waiting");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(flaky.seen().len(), 6, "3 failures, then each of the 3 deliveries once: nothing sent while open");
    // Waiting used no attempt: 6 requests, 6 attempts recorded over the 3 deliveries.
    let deliveries = relay.client.get(&relay.admin_url("/api/deliveries?route=hook"), &AUTH).await.json();
    let attempts: u64 = deliveries["items"].as_array().unwrap().iter().map(|d| d["attempts"].as_u64().unwrap()).sum();
    assert_eq!(attempts, 6, "{deliveries}");
    let metrics = relay.client.get(&relay.admin_url("/metrics"), &AUTH).await.text();
    assert!(metrics.contains(r#"hookrelay_target_state{route="hook",target="flaky",state="closed"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"hookrelay_target_state{route="hook",target="flaky",state="open"} 0"#), "{metrics}");
}

#[tokio::test]
async fn a_410_pauses_its_target_across_a_restart_until_it_is_resumed() {
    let flaky = TestSink::start().await;
    let gone = TestSink::scripted(vec![Answer::status_only(410)]).await;
    let relay = Relay::start(&config(&flaky.url(), &gone.url())).await;
    assert_eq!(relay.client.post_json(&relay.url("/hooks/gone"), &[], "{}").await.status, 202);
    let paused = wait_state(&relay, "old", "paused").await;
    assert_eq!(paused["paused_reason"], "the receiver answered 410 Gone", "{paused}");
    assert_eq!(relay.client.post_json(&relay.url("/hooks/gone"), &[], r#"{"n":2}"#).await.status, 202, "still accepted");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gone.seen().len(), 1, "nothing is sent to a paused target");
    assert_eq!(target(&relay, "old").await["queued"], 1);

    relay.running.stop();
    relay.running.relay.engine.store().close().await.unwrap();
    relay.running.relay.store_owner.as_ref().expect("a SQLite store").release();
    let again = Relay::attach(hookrelay::app::start(&relay.config_path()).await.unwrap());
    assert_eq!(target(&again, "old").await["state"], "paused", "the pause survives a restart");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gone.seen().len(), 1);

    let url = |call: &str| again.admin_url(&format!("/api/targets/gone/old/{call}"));
    let resumed = again.client.post_json(&url("resume"), &AUTH, "").await;
    assert_eq!(resumed.status, 200, "{}", resumed.text());
    assert_eq!(resumed.json()["state"], "closed");
    assert_eq!(gone.wait_for(2).await[1].json()["n"], 2, "the held delivery goes once resumed");
    // Paused by hand, with a reason; an unknown target is 404.
    let paused = again.client.post_json(&url("pause"), &AUTH, r#"{"reason":"maintenance"}"#).await;
    assert_eq!((paused.status, paused.json()["paused_reason"].clone()), (200, Value::from("maintenance")));
    let missing = again.client.post_json(&again.admin_url("/api/targets/gone/nope/pause"), &AUTH, "").await;
    assert_eq!(missing.status, 404);
    let flaky_state = target(&again, "flaky").await;
    assert_eq!(flaky_state["state"], "closed", "other targets are not affected: {flaky_state}");
}

/// A breaker cannot hold a target for longer than its cap, and one turned off by a reload
/// lets what it held go at once.
#[tokio::test]
async fn breaker_limits_are_checked_and_turning_it_off_releases_what_it_held() {
    for (breaker, message) in [
        ("{ cooldown: 2h }", "cooldown: must not be longer than max_cooldown (1h)"),
        ("{ cooldown: 18446744073709551615s }", "breaker.cooldown"),
        ("{ max_cooldown: 30d }", "max_cooldown: must not be longer than 1day"),
    ] {
        check_refuses(&format!("breaker: {breaker}"), message);
    }

    let flaky = TestSink::scripted(vec![Answer::status_only(503), Answer::status_only(503)]).await;
    let gone = TestSink::start().await;
    let held =
        config(&flaky.url(), &gone.url()).replace("breaker: { failures: 2, cooldown: 1s }", "breaker: { failures: 2, cooldown: 1h }");
    let relay = Relay::start(&held).await;
    assert_eq!(relay.client.post_json(&relay.url("/hooks/flaky"), &[], r#"{"n":0}"#).await.status, 202);
    wait_state(&relay, "flaky", "open").await;
    assert_eq!(relay.client.post_json(&relay.url("/hooks/flaky"), &[], r#"{"n":1}"#).await.status, 202);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(flaky.seen().len(), 2, "held for the hour");
    std::fs::write(relay.config_path(), held.replace("failures: 2, cooldown: 1h", "failures: 0")).unwrap();
    let reloaded = relay.client.post_json(&relay.admin_url("/api/reload"), &AUTH, "").await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    // The next delivery goes through the breaker turned off; its answer closes the target
    // and brings what was held.
    relay.client.post_json(&relay.url("/hooks/flaky"), &[], r#"{"n":2}"#).await;
    let seen = flaky.wait_for(5).await;
    let mut sent: Vec<i64> = seen[2..].iter().map(|s| s.json()["n"].as_i64().unwrap()).collect();
    sent.sort();
    assert_eq!(sent, [0, 1, 2]);
}

/// A paused (or dead) target fills only its own share of the queue: beyond its
/// `max_queued` the route sending to it answers 503 and stores nothing, while other
/// targets keep their room; cancelling what waits makes room again.
#[tokio::test]
async fn a_paused_target_fills_only_its_own_share_of_the_queue() {
    let held = TestSink::start().await;
    let live = TestSink::start().await;
    let relay = Relay::start(&format!(
        r#"listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0, token: t0ken }}
limits: {{ queue_capacity: 10 }}
routes:
  - name: slow
    match: {{ path: /hooks/slow }}
    forward:
      - name: held
        url: {held}/in
        max_queued: 2
  - name: other
    match: {{ path: /hooks/other }}
    forward:
      - name: live
        url: {live}/in
"#,
        held = held.url(),
        live = live.url()
    ))
    .await;
    let paused = relay.client.post_json(&relay.admin_url("/api/targets/slow/held/pause"), &AUTH, "").await;
    assert_eq!(paused.status, 200, "{}", paused.text());
    for n in 0..2 {
        assert_eq!(relay.client.post_json(&relay.url("/hooks/slow"), &[], format!(r#"{{"n":{n}}}"#)).await.status, 202);
    }
    let full = relay.client.post_json(&relay.url("/hooks/slow"), &[], r#"{"n":2}"#).await;
    assert_eq!((full.status, full.headers.get("retry-after").and_then(|v| v.to_str().ok())), (503, Some("30")), "{}", full.text());
    assert_eq!(full.json()["detail"], serde_json::json!({ "route": "slow", "target": "held", "max_queued": 2 }));
    let events = relay.client.get(&relay.admin_url("/api/events?route=slow"), &AUTH).await.json();
    assert_eq!(events["items"].as_array().unwrap().len(), 2, "the refused event was not stored: {events}");

    // The other route still has its room (half of the queue by default).
    assert_eq!(relay.client.post_json(&relay.url("/hooks/other"), &[], r#"{"n":9}"#).await.status, 202);
    assert_eq!(live.wait_for(1).await[0].json()["n"], 9);
    assert_eq!(target(&relay, "held").await["max_queued"], 2);
    // Out of the queue once its answer is recorded, just after the sink saw it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let other = loop {
        let other = target(&relay, "live").await;
        if other["queued"] == 0 || tokio::time::Instant::now() > deadline {
            break other;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((other["max_queued"].as_u64(), other["queued"].as_u64()), (Some(5), Some(0)), "{other}");

    // A replay into the full share is refused whole, with the same reason.
    let first = events["items"][0]["id"].as_str().unwrap();
    let replay = relay.client.post_json(&relay.admin_url(&format!("/api/events/{first}/replay")), &AUTH, "{}").await;
    assert_eq!(replay.status, 503, "{}", replay.text());
    assert_eq!(replay.json()["detail"]["target"], "held");

    let cancelled = relay.client.post_json(&relay.admin_url("/api/deliveries/cancel"), &AUTH, r#"{"route":"slow"}"#).await;
    assert_eq!(cancelled.json()["cancelled"], 2);
    assert_eq!(relay.client.post_json(&relay.url("/hooks/slow"), &[], r#"{"n":3}"#).await.status, 202, "room again");

    // A cancelled delivery retried by hand joins the queue again: only while there is room.
    let gone = relay.client.get(&relay.admin_url("/api/deliveries?route=slow&status=cancelled"), &AUTH).await.json();
    let ids: Vec<&str> = gone["items"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    let retry = |id: &str| relay.admin_url(&format!("/api/deliveries/{id}/retry"));
    assert_eq!(relay.client.post_json(&retry(ids[0]), &AUTH, "").await.status, 200);
    let refused = relay.client.post_json(&retry(ids[1]), &AUTH, "").await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.json()["detail"]["max_queued"], 2);
    assert_eq!(target(&relay, "held").await["queued"], 2);

    for (bound, message) in [("0", "max_queued: must be at least 1"), ("\"150%\"", "at most 100%"), ("lots", "neither a count nor a share")]
    {
        check_refuses(&format!("max_queued: {bound}"), message);
    }
}

/// The share holds while counts are read again from the store (after every cancel) under
/// concurrent accepts: a delivery reserved but not yet committed is never lost from the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_share_holds_while_cancels_recount_the_queue_under_load() {
    let held = TestSink::start().await;
    let relay = std::sync::Arc::new(
        Relay::start(&format!(
            r#"listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0, token: t0ken }}
routes:
  - name: slow
    match: {{ path: /hooks/slow }}
    forward:
      - name: held
        url: {held}/in
        max_queued: 10
"#,
            held = held.url()
        ))
        .await,
    );
    assert_eq!(relay.client.post_json(&relay.admin_url("/api/targets/slow/held/pause"), &AUTH, "").await.status, 200);
    let senders: Vec<_> = (0..8)
        .map(|_| {
            let relay = relay.clone();
            tokio::spawn(async move {
                for _ in 0..25 {
                    relay.client.post_json(&relay.url("/hooks/slow"), &[], "{}").await;
                }
            })
        })
        .collect();
    let cancel = r#"{"route":"slow","before":"2000-01-01T00:00:00Z"}"#;
    for _ in 0..40 {
        // Cancels nothing (nothing is that old), but recounts the queue each time.
        relay.client.post_json(&relay.admin_url("/api/deliveries/cancel"), &AUTH, cancel).await;
    }
    for sender in senders {
        sender.await.unwrap();
    }
    let pending = relay.client.get(&relay.admin_url("/api/deliveries?route=slow&status=pending&limit=100"), &AUTH).await.json();
    assert_eq!(pending["items"].as_array().unwrap().len(), 10, "exactly the share, never more");
}

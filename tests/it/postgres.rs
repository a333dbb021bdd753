//! Several relays on one PostgreSQL store (a fresh database on the throwaway test cluster;
//! skipped with a notice where PostgreSQL is not installed): the queue, the delivery log,
//! dedupe and API routes are shared, and a relay killed with SIGKILL loses nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::json;

use crate::postgres_cluster::{fresh_database, PrivateCluster};
use crate::support::binary::{self, free_port};
use crate::support::{reqwest_like::Client, Relay, TestSink};

const AUTH: [(&str, &str); 1] = [("authorization", "Bearer t0ken")];

fn shared_config(url: &str, sink: &TestSink) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0, token: t0ken }}\nstore: {{ url: '{url}' }}\noutbound: {{ allow_private: true }}\nroutes:\n  - name: github\n    source: github\n    dedupe: 1h\n    match: {{ path: /hooks/github }}\n    forward:\n      - name: sink\n        url: {}/deliver\n",
        sink.url()
    )
}

/// Polls (bounded) until `check` passes.
async fn eventually<T>(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_on_one_database_share_the_log_dedupe_and_api_routes() {
    let Some(url) = fresh_database("relays_on_one_database_share_the_log_dedupe_and_api_routes").await else { return };
    let sink = TestSink::start().await;
    let first = Relay::start(&shared_config(&url, &sink)).await;
    let second = Relay::start(&shared_config(&url, &sink)).await;

    // The same GitHub delivery sent to both relays fires once.
    let headers = [("x-github-event", "push"), ("x-github-delivery", "gh-42")];
    let accepted = first.client.post_json(&first.url("/hooks/github"), &headers, r#"{"ref":"main"}"#).await;
    assert_eq!(accepted.status, 202, "{}", accepted.text());
    let event_id = accepted.json()["id"].as_str().unwrap().to_string();
    let again = second.client.post_json(&second.url("/hooks/github"), &headers, r#"{"ref":"main"}"#).await;
    assert_eq!(again.status, 202, "{}", again.text());
    assert_eq!(again.json()["duplicates"][0]["original"], event_id.as_str(), "the second relay knows the first one's event");
    let seen = sink.wait_for(1).await;
    assert_eq!(seen[0].header("idempotency-key"), Some(format!("{event_id}.sink").as_str()));

    // Either relay answers for the whole log.
    let delivered = eventually("the delivery is logged as succeeded on the other relay", Duration::from_secs(10), async || {
        let event = second.client.get(&second.admin_url(&format!("/api/events/{event_id}")), &AUTH).await;
        (event.status == 200 && event.json()["deliveries"][0]["status"] == "succeeded").then(|| event.json())
    })
    .await;
    assert_eq!(delivered["route"], "github");

    // A route created on one relay is served by the other within a second.
    let route = json!({"name": "made-on-first", "match": {"path": "/hooks/made"}, "forward": [{"name": "sink", "url": format!("{}/made", sink.url())}]});
    let created = first.client.post_json(&first.admin_url("/api/routes"), &AUTH, route.to_string()).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let served = eventually("the second relay serves the new route", Duration::from_secs(1), async || {
        let reply = second.client.post_json(&second.url("/hooks/made"), &[], r#"{"x":1}"#).await;
        (reply.status == 202).then_some(reply)
    })
    .await;
    let made_id = served.json()["id"].as_str().unwrap().to_string();
    let seen = sink.wait_for(2).await;
    assert!(seen.iter().any(|s| s.uri == "/made" && s.header("idempotency-key") == Some(format!("{made_id}.sink").as_str())));

    // And deleted there, it is gone here too.
    let deleted = second.client.send("DELETE", &second.admin_url("/api/routes/made-on-first"), &AUTH, "").await;
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    eventually("the first relay drops the deleted route", Duration::from_secs(1), async || {
        let reply = first.client.post_json(&first.url("/hooks/made"), &[], r#"{"x":1}"#).await;
        (reply.status != 202).then_some(())
    })
    .await;
}

/// Three relay processes on one database take 3,000 webhooks while their target is down;
/// one is killed with SIGKILL halfway. Every acknowledged event arrives once the target is
/// up, duplicates are bounded by what the dead relay had on the wire, and every copy of an
/// event carries the same Idempotency-Key.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_mid_stream_loses_nothing_acknowledged() {
    let Some(url) = fresh_database("a_relay_killed_mid_stream_loses_nothing_acknowledged").await else { return };
    let started = tokio::time::Instant::now();
    let target_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let client = Client::new();
    let mut relays = Vec::new();
    let mut ports = Vec::new();
    for n in 0..3 {
        let port = free_port();
        let path = dir.path().join(format!("relay{n}.yaml"));
        std::fs::write(
            &path,
            format!(
                "listen: 127.0.0.1:{port}\nstore: {{ url: '{url}' }}\nroutes:\n  - name: spread\n    match: {{ path: /hooks/spread }}\n    forward:\n      - name: down\n        url: http://127.0.0.1:{target_port}/x\n        body: {{ n: '{{{{json body.n}}}}' }}\n        retry: {{ max_attempts: 1000, initial: 200ms, max: 1s }}\n"
            ),
        )
        .unwrap();
        let mut relay = binary::spawn(&path, &["--no-watch"], &[]);
        binary::wait_up(&client, &mut relay, port).await;
        relays.push(relay);
        ports.push(port);
    }

    const EVENTS: usize = 3000;
    let mut acknowledged = BTreeSet::new();
    for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(30) {
        if chunk[0] == EVENTS / 2 {
            relays[1].signal("KILL");
        }
        let sends = chunk.iter().map(|&n| {
            // After the kill, relay 1's share goes to the others.
            let relay = if n >= EVENTS / 2 && n % 3 == 1 { 0 } else { n % 3 };
            let client = client.clone();
            let url = format!("http://127.0.0.1:{}/hooks/spread", ports[relay]);
            async move { (n, client.try_send("POST", &url, &[("content-type", "application/json")], json!({ "n": n }).to_string()).await) }
        });
        for (n, reply) in futures_util::future::join_all(sends).await {
            if reply.is_ok_and(|reply| reply.status == 202) {
                acknowledged.insert(n as i64);
            }
        }
    }
    assert!(acknowledged.len() >= EVENTS - 30, "only {} of {EVENTS} acknowledged", acknowledged.len());

    // The target comes up 10 s after the first webhook, or once all were sent.
    tokio::time::sleep_until(started + Duration::from_secs(10)).await;
    let sink = TestSink::on(&format!("127.0.0.1:{target_port}")).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let keys = loop {
        let mut keys: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
        for seen in sink.seen() {
            let n = seen.json()["n"].as_i64().unwrap();
            keys.entry(n).or_default().insert(seen.header("idempotency-key").unwrap().to_string());
        }
        if acknowledged.iter().all(|n| keys.contains_key(n)) {
            break keys;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} acknowledged events never arrived",
            acknowledged.iter().filter(|n| !keys.contains_key(n)).count()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Duplicates: at most the deliveries the killed relay had on the wire (64 workers).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let copies = sink.seen().len();
    assert!(copies - keys.len() <= 64, "{} duplicates", copies - keys.len());
    for (n, keys) in &keys {
        assert_eq!(keys.len(), 1, "event {n} arrived with different keys: {keys:?}");
    }
}

/// `rate_limit: { per_second: 5 }` on a target of three relays sharing one database holds
/// for all of them together: over 20 s of steady traffic, no 1 s window carries more than
/// the limit's burst plus its rate allows, and the total is the limit's, not three times it.
/// A pause through one relay holds the other relay's deliveries at once, not at its next
/// re-read of the targets (every second): none goes out after the pause answered, and every
/// one held goes out when the target is resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_through_one_relay_holds_every_relay_at_once() {
    let Some(url) = fresh_database("a_pause_through_one_relay_holds_every_relay_at_once").await else { return };
    let sink = TestSink::start().await;
    let first = Relay::start(&shared_config(&url, &sink)).await;
    let second = Relay::start(&shared_config(&url, &sink)).await;
    let warm = first.client.post_json(&first.url("/hooks/github"), &[("x-github-event", "push")], "{}").await;
    assert_eq!(warm.status, 202);
    sink.wait_for(1).await;

    let paused = second.client.post_json(&second.admin_url("/api/targets/github/sink/pause"), &AUTH, "").await;
    assert_eq!(paused.status, 200, "{}", paused.text());
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Spread over most of a second, so that a relay re-reading the targets only every
    // second sends some of them.
    for n in 0..8 {
        let sent = first.client.post_json(&first.url("/hooks/github"), &[("x-github-event", "push")], format!(r#"{{"n":{n}}}"#)).await;
        assert_eq!(sent.status, 202);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.seen().len(), 1, "a delivery went to the paused target");

    let resumed = second.client.post_json(&second.admin_url("/api/targets/github/sink/resume"), &AUTH, "").await;
    assert_eq!(resumed.status, 200, "{}", resumed.text());
    sink.wait_for(9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_across_relays() {
    let Some(url) = fresh_database("a_rate_limit_holds_across_relays").await else { return };
    let sink = TestSink::start().await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nstore: {{ url: '{url}' }}\nroutes:\n  - name: limited\n    match: {{ path: /hooks/limited }}\n    forward:\n      - name: robot\n        url: {}/robot\n        rate_limit: {{ per_second: 5 }}\n        body: {{ n: '{{{{json body.n}}}}' }}\n",
        sink.url()
    );
    let relays = [Relay::start(&yaml).await, Relay::start(&yaml).await, Relay::start(&yaml).await];
    for n in 0..150 {
        let relay = &relays[n % 3];
        let reply = relay.client.post_json(&relay.url("/hooks/limited"), &[], json!({ "n": n }).to_string()).await;
        assert_eq!(reply.status, 202, "{}", reply.text());
    }
    let first = sink.wait_for(1).await[0].at;
    tokio::time::sleep_until(tokio::time::Instant::from_std(first + Duration::from_secs(20))).await;
    let arrivals: Vec<Duration> =
        sink.seen().iter().map(|seen| seen.at.duration_since(first)).filter(|at| *at < Duration::from_secs(20)).collect();
    // GCRA at 5/s with a burst of 5: at most 5 + 4 in any second, and 5 + 5 × 20 in all.
    for (index, start) in arrivals.iter().enumerate() {
        let within = arrivals[index..].iter().take_while(|at| **at < *start + Duration::from_secs(1)).count();
        assert!(within <= 10, "{within} deliveries in the second after {start:?}: {arrivals:?}");
    }
    assert!((80..=106).contains(&arrivals.len()), "{} deliveries in 20 s at 5/s shared by three relays", arrivals.len());
}

/// The database goes away under a running relay: new webhooks get 503 (nothing is
/// acknowledged that is not committed), `/readyz` says why, the relay keeps running, and
/// once the database is back everything works again without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_database_answers_503_until_it_is_back() {
    let Some(mut cluster) = PrivateCluster::start("losing") else { return };
    let sink = TestSink::start().await;
    let relay = Relay::start(&format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0, token: t0ken }}\nstore: {{ url: '{}' }}\nroutes:\n  - name: hooks\n    match: {{ path: /hooks/a }}\n    forward:\n      - name: sink\n        url: {}/a\n",
        cluster.url(),
        sink.url()
    ))
    .await;
    let before = relay.client.post_json(&relay.url("/hooks/a"), &[], r#"{"n":1}"#).await;
    assert_eq!(before.status, 202, "{}", before.text());
    sink.wait_for(1).await;

    cluster.stop();
    let refused = relay.client.post_json(&relay.url("/hooks/a"), &[], r#"{"n":2}"#).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.json()["error"], "could not store the event");
    let ready = relay.client.get(&relay.admin_url("/readyz"), &[]).await;
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert_eq!(ready.json()["error"], "not ready");

    cluster.restart();
    let after = eventually("webhooks are accepted again", Duration::from_secs(30), async || {
        let reply = relay.client.post_json(&relay.url("/hooks/a"), &[], r#"{"n":3}"#).await;
        (reply.status == 202).then_some(reply)
    })
    .await;
    let id = after.json()["id"].as_str().unwrap().to_string();
    let seen = sink.wait_for(2).await;
    assert_eq!(seen[1].header("idempotency-key"), Some(format!("{id}.sink").as_str()));
    assert_eq!(seen.len(), 2, "the refused webhook was never sent");
    let ready = relay.client.get(&relay.admin_url("/readyz"), &[]).await;
    assert_eq!(ready.status, 200, "{}", ready.text());
}

/// A relay started before its database neither exits nor restarts in a loop: it waits,
/// says why, and is ready once the database is. The password in the URL is never shown.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_started_before_its_database_waits_for_it() {
    let Some(mut cluster) = PrivateCluster::start("before") else { return };
    cluster.stop();
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let path = dir.path().join("hookrelay.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: 127.0.0.1:{port}\nadmin: {{ listen: 127.0.0.1:{admin} }}\nstore: {{ url: '{}' }}\nroutes:\n  - name: r\n    match: {{ path: /hooks/r }}\n    forward:\n      - url: http://127.0.0.1:9/x\n",
            cluster.url().replace("hookrelay@", "hookrelay:s3cret-pw@")
        ),
    )
    .unwrap();
    let mut relay = binary::spawn(&path, &["--no-watch"], &[]);
    eventually("the relay says it waits for the store", Duration::from_secs(10), async || {
        relay.logs().contains("cannot reach the store yet").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(relay.running(), "the relay exited while its database was down: {}", relay.logs());

    cluster.restart();
    let client = Client::new();
    eventually("the relay becomes ready once the database is up", Duration::from_secs(40), async || {
        let reply = client.try_get(&format!("http://127.0.0.1:{admin}/readyz")).await?;
        (reply.status == 200).then_some(())
    })
    .await;
    let accepted = client.post_json(&format!("http://127.0.0.1:{port}/hooks/r"), &[], "{}").await;
    assert_eq!(accepted.status, 202, "{}", accepted.text());
    let status = client.get(&format!("http://127.0.0.1:{admin}/api/status"), &[]).await.text();
    assert!(status.contains("hookrelay:***@127.0.0.1"), "{status}");
    assert!(
        !status.contains("s3cret-pw") && !relay.logs().contains("s3cret-pw"),
        "the store password was shown: {status}\n{}",
        relay.logs()
    );
}

/// A relay waiting for a database that is not there still stops at once when asked.
#[cfg(unix)]
#[tokio::test]
async fn a_relay_waiting_for_its_database_stops_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hookrelay.yaml");
    let nothing_there = free_port();
    std::fs::write(
        &path,
        format!("listen: 127.0.0.1:0\nstore: {{ url: 'postgres://relay@127.0.0.1:{nothing_there}/hooks?sslmode=disable' }}\nroutes: []\n"),
    )
    .unwrap();
    let mut relay = binary::spawn(&path, &["--no-watch"], &[]);
    eventually("the relay says it waits for the store", Duration::from_secs(10), async || {
        relay.logs().contains("cannot reach the store yet").then_some(())
    })
    .await;
    relay.signal("TERM");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while relay.running() {
        assert!(tokio::time::Instant::now() < deadline, "SIGTERM did not stop a relay waiting for its database: {}", relay.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, logs) = relay.wait();
    assert!(status.success(), "{status:?}: {logs}");
    assert!(logs.contains("stopped before the relay was started"), "{logs}");
}

/// Pointing the config at another store does not move a running relay (its queue is in the
/// store it opened): a reload says a restart is needed, without the new URL's password.
#[tokio::test]
async fn a_reload_to_another_store_waits_for_a_restart() {
    let config = |store: &str| format!("listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0, token: t0ken }}\nstore: {store}\nroutes: []\n");
    let relay = Relay::start(&config("{ path: ./relay.db }")).await;
    std::fs::write(relay.config_path(), config("{ url: 'postgres://relay:pw-in-url@db.invalid:5432/hooks' }")).unwrap();
    let reloaded = relay.client.post_json(&relay.admin_url("/api/reload"), &AUTH, "").await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    let status = relay.client.get(&relay.admin_url("/api/status"), &AUTH).await.json();
    let notes = status["config"]["restart_required"].to_string();
    assert!(notes.contains("store changed") && notes.contains("relay:***@db.invalid"), "{notes}");
    assert!(!status.to_string().contains("pw-in-url"), "{status}");
    assert!(status["store"]["path"].as_str().unwrap().ends_with("relay.db"), "{status}");
}

/// `hookrelay replay` on a shared store reads it without writing: an empty database gets
/// no tables, and a store in use is compared like a SQLite one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_replay_reads_a_shared_store_and_creates_none() {
    let Some(empty) = fresh_database("offline_replay_reads_a_shared_store_and_creates_none").await else { return };
    let Some(url) = fresh_database("offline_replay_reads_a_shared_store_and_creates_none").await else { return };
    let sink = TestSink::start().await;
    let relay = Relay::start(&shared_config(&url, &sink)).await;
    let accepted = relay.client.post_json(&relay.url("/hooks/github"), &[("x-github-event", "push")], r#"{"ref":"main"}"#).await;
    assert_eq!(accepted.status, 202, "{}", accepted.text());
    sink.wait_for(1).await;
    let config = relay.config_path();
    let replay = |store: &str| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_hookrelay"))
            .env_clear()
            .args(["replay", "-c", config.to_str().unwrap(), "--store", store, "--fail-on-change"])
            .output()
            .unwrap();
        (output.status.code(), String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let (code, out, err) = replay(&url);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.ends_with("1 events: 0 would change, 1 unchanged\n"), "{out}");

    let (code, _, err) = replay(&empty);
    assert_eq!(code, Some(1));
    assert!(err.contains("no hookrelay store"), "{err}");
    let (client, connection) = tokio_postgres::connect(&empty, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let tables: i64 =
        client.query_one("SELECT COUNT(*) FROM information_schema.tables WHERE table_name LIKE 'hookrelay%'", &[]).await.unwrap().get(0);
    assert_eq!(tables, 0, "an offline replay creates no store");
}

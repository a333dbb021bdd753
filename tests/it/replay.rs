//! Replay: a stored event run again under the config serving now (the admin API) or under
//! a new config file (`hookrelay replay`), with what changes beside what was sent.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{Relay, TestSink};

const AUTH: [(&str, &str); 1] = [("authorization", "Bearer t0ken")];

/// A DingTalk-like robot whose token is in the URL, behind a sync route with a dedupe window.
fn config(sink: &str, token: &str, prefix: &str) -> String {
    format!(
        r#"listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0, token: t0ken }}
routes:
  - name: robot
    source: github
    respond: sync
    dedupe: 1h
    match: {{ path: /hooks/robot, body: [ {{ path: $.action, equals: opened }} ] }}
    forward:
      - name: dingtalk
        url: {sink}/robot/send?access_token={token}
        body: '{{"msgtype": "text", "text": {{"content": "{prefix}{{{{body.title}}}}"}}}}'
  - name: audit
    match: {{ path: /hooks/robot }}
    forward:
      - name: log
        url: {sink}/audit
"#
    )
}

async fn admin(relay: &Relay, path: &str, body: Value) -> (u16, Value) {
    let reply = relay.client.post_json(&relay.admin_url(path), &AUTH, body.to_string()).await;
    let json = serde_json::from_str(&reply.text()).unwrap_or(Value::Null);
    (reply.status, json)
}

async fn get(relay: &Relay, path: &str) -> Value {
    relay.client.get(&relay.admin_url(path), &AUTH).await.json()
}

/// The first request fails under the old token; the token is fixed in the config; the dry
/// run shows what would change (the token masked); the replay sends the new request as a
/// new, linked event, asynchronously, not dropped by the dedupe window.
#[tokio::test]
async fn a_replay_sends_the_stored_event_under_the_fixed_config() {
    let sink = TestSink::start().await;
    let relay = Relay::start(&config(&sink.url(), "OLD-TOKEN", "")).await;
    let headers = [("x-github-event", "issues"), ("x-github-delivery", "d-1"), ("x-request-id", "req-1")];
    let sent = relay.client.post_json(&relay.url("/hooks/robot?team=ops"), &headers, r#"{"action":"opened","title":"disk full"}"#).await;
    assert_eq!(sent.status, 200, "the sync route answers with the robot's answer: {}", sent.text());
    sink.wait_for(1).await;
    // The sync delivery is logged after the answer: wait for its event.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let original = loop {
        let events = get(&relay, "/api/events?route=robot").await;
        if let Some(id) = events["items"][0]["id"].as_str() {
            break id.to_string();
        }
        assert!(tokio::time::Instant::now() < deadline, "the sync event was not logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(get(&relay, &format!("/api/events/{original}")).await["path"], "/hooks/robot?team=ops", "the query is recorded");

    std::fs::write(relay.config_path(), config(&sink.url(), "NEW-TOKEN", "[alert] ")).unwrap();
    let (status, reloaded) = admin(&relay, "/api/reload", json!({})).await;
    assert_eq!(status, 200, "{reloaded}");

    let (status, dry) = admin(&relay, &format!("/api/events/{original}/replay"), json!({ "dry_run": true })).await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(dry["dry_run"], true);
    assert!(dry.get("id").is_none(), "a dry run creates nothing: {dry}");
    assert_eq!(dry["routes"], json!(["robot"]), "only the event's own route by default");
    assert_eq!(dry["changed"], true);
    assert!(dry["verification"].as_str().unwrap().starts_with("skipped"), "{dry}");
    let target = &dry["targets"][0];
    assert_eq!((target["route"].as_str(), target["target"].as_str()), (Some("robot"), Some("dingtalk")));
    assert_eq!(target["first_delivery"]["status"], "succeeded");
    let changes = target["changes"].as_array().unwrap();
    let url = changes.iter().find(|c| c["path"] == "/url").unwrap_or_else(|| panic!("no url change: {dry}"));
    assert_eq!(url["secret"], true, "{url}");
    assert!(url["first"].as_str().unwrap().ends_with("access_token=***") && url["now"] == url["first"], "{url}");
    let content = changes.iter().find(|c| c["path"] == "/body/text/content").unwrap_or_else(|| panic!("{dry}"));
    assert_eq!((content["first"].as_str(), content["now"].as_str()), (Some("disk full"), Some("[alert] disk full")));
    assert_eq!(changes.len(), 2, "nothing else differs (same event id, same receipt time): {changes:?}");
    let shown = dry.to_string();
    assert!(!shown.contains("OLD-TOKEN") && !shown.contains("NEW-TOKEN"), "credentials never shown: {shown}");
    assert_eq!(sink.seen().len(), 2, "a dry run sends nothing");

    // For real, twice: the dedupe window (same sender delivery id) drops neither.
    let mut replays = Vec::new();
    for _ in 0..2 {
        let (status, replay) = admin(&relay, &format!("/api/events/{original}/replay"), json!({})).await;
        assert_eq!(status, 200, "{replay}");
        replays.push(replay["id"].as_str().unwrap_or_else(|| panic!("{replay}")).to_string());
    }
    let seen = sink.wait_for(4).await;
    let robot: Vec<_> = seen.iter().filter(|s| s.uri.starts_with("/robot/send")).collect();
    assert_eq!(robot.len(), 3);
    assert_eq!(robot[0].uri, "/robot/send?access_token=OLD-TOKEN");
    for (replayed, id) in robot[1..].iter().zip(&replays) {
        assert_eq!(replayed.uri, "/robot/send?access_token=NEW-TOKEN");
        assert_eq!(replayed.json(), json!({"msgtype": "text", "text": {"content": "[alert] disk full"}}));
        assert_eq!(replayed.header("idempotency-key"), Some(format!("{id}.dingtalk").as_str()), "a new Idempotency-Key");
        assert_eq!(replayed.header("x-request-id"), Some("req-1"));
    }
    assert!(seen.iter().all(|s| s.uri == "/audit" || s.uri.starts_with("/robot/send")));
    assert_eq!(seen.iter().filter(|s| s.uri == "/audit").count(), 1, "the other route is not replayed by default");
    for id in &replays {
        let event = get(&relay, &format!("/api/events/{id}")).await;
        assert_eq!(event["replay_of"], original.as_str());
        assert_eq!(event["route"], "robot");
        assert_eq!(event["path"], "/hooks/robot?team=ops");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut event = event;
        while event["deliveries"][0]["status"] != "succeeded" {
            assert!(tokio::time::Instant::now() < deadline, "the replay was not delivered: {event}");
            tokio::time::sleep(Duration::from_millis(20)).await;
            event = get(&relay, &format!("/api/events/{id}")).await;
        }
        assert_eq!(event["deliveries"].as_array().unwrap().len(), 1, "queued like an async route's: {event}");
    }
}

/// Routes asked for by name, every route that matches now (`*`), a route that no longer
/// matches (with why), an unknown route, and a filtered bulk replay.
#[tokio::test]
async fn replay_chooses_routes_and_says_why_one_does_not_match() {
    let sink = TestSink::start().await;
    let relay = Relay::start(&config(&sink.url(), "T", "")).await;
    for title in ["one", "two"] {
        let headers = [("x-github-event", "issues"), ("x-github-delivery", title)];
        let body = format!(r#"{{"action":"opened","title":"{title}"}}"#);
        assert_eq!(relay.client.post_json(&relay.url("/hooks/robot"), &headers, body).await.status, 200);
    }
    sink.wait_for(4).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let robot_events = loop {
        let events = get(&relay, "/api/events?route=robot").await;
        let ids: Vec<String> = events["items"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
        if ids.len() == 2 {
            break ids;
        }
        assert!(tokio::time::Instant::now() < deadline, "sync events not logged: {events}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let one = &robot_events[1];

    let (status, all) = admin(&relay, &format!("/api/events/{one}/replay"), json!({ "dry_run": true, "routes": ["*"] })).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["routes"], json!(["robot", "audit"]));
    assert_eq!(all["changed"], true, "the audit target had no delivery of this event: {all}");
    let audit = all["targets"].as_array().unwrap().iter().find(|t| t["route"] == "audit").unwrap().clone();
    assert_eq!(audit["first"], Value::Null);
    assert_eq!(audit["now"]["url"], format!("{}/audit", sink.url()));

    let (status, unknown) = admin(&relay, &format!("/api/events/{one}/replay"), json!({ "routes": ["nope"] })).await;
    assert_eq!(status, 400, "{unknown}");
    assert!(unknown["detail"].as_str().unwrap().contains("nope"), "{unknown}");
    let (status, missing) = admin(&relay, "/api/events/no-such-event/replay", json!({})).await;
    assert_eq!(status, 404, "{missing}");
    let (status, typo) = admin(&relay, &format!("/api/events/{one}/replay"), json!({ "dryrun": true })).await;
    assert_eq!(status, 400, "unknown fields are refused, not ignored into a real replay: {typo}");

    // The route now wants another action: the event no longer matches it, and the answer says why.
    let changed = config(&sink.url(), "T", "").replace("equals: opened", "equals: closed");
    std::fs::write(relay.config_path(), changed).unwrap();
    assert_eq!(admin(&relay, "/api/reload", json!({})).await.0, 200);
    let (status, refused) = admin(&relay, &format!("/api/events/{one}/replay"), json!({})).await;
    assert_eq!(status, 422, "{refused}");
    let why = refused["detail"]["not_matched"][0]["why_not"].as_str().unwrap_or_else(|| panic!("{refused}"));
    assert!(why.contains("opened") && why.contains("closed"), "{why}");
    let (_, dry) = admin(&relay, &format!("/api/events/{one}/replay"), json!({ "dry_run": true })).await;
    assert_eq!(dry["changed"], true);
    assert_eq!(dry["routes"], json!([]));
    assert_eq!(dry["targets"][0]["now"], Value::Null, "what was sent the first time, and nothing now: {dry}");
    assert_eq!(dry["targets"][0]["first"]["body"], json!({"msgtype": "text", "text": {"content": "one"}}));

    // Bulk: both robot events, through the audit route; a page of one goes on by cursor.
    let (status, page) =
        admin(&relay, "/api/replay", json!({ "route": "robot", "routes": ["audit"], "limit": 1, "since": "1h", "status": "succeeded" }))
            .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!((page["events"].as_u64(), page["replayed"].as_u64()), (Some(1), Some(1)), "{page}");
    let cursor = page["next_cursor"].as_str().unwrap_or_else(|| panic!("{page}")).to_string();
    let (status, rest) =
        admin(&relay, "/api/replay", json!({ "route": "robot", "routes": ["audit"], "cursor": cursor, "status": "succeeded" })).await;
    assert_eq!(status, 200, "{rest}");
    assert_eq!((rest["events"].as_u64(), rest["next_cursor"].clone()), (Some(1), Value::Null), "{rest}");
    let replayed: Vec<&str> = [&page, &rest].iter().map(|answer| answer["items"][0]["replay_of"].as_str().unwrap()).collect();
    assert_eq!(replayed, [robot_events[0].as_str(), robot_events[1].as_str()], "newest first, each once");
    let seen = sink.wait_for(6).await;
    assert_eq!(seen.iter().filter(|s| s.uri == "/audit").count(), 4);
    let (status, none) = admin(&relay, "/api/replay", json!({ "route": "robot", "until": "2000-01-01T00:00:00Z" })).await;
    assert_eq!((status, none["events"].as_u64()), (200, Some(0)), "{none}");
    let (status, bad) = admin(&relay, "/api/replay", json!({ "since": "last tuesday" })).await;
    assert_eq!(status, 400, "{bad}");
    for unfiltered in [json!({}), json!({ "cursor": "999999999" }), json!({ "route": "", "limit": 1 })] {
        let (status, answer) = admin(&relay, "/api/replay", unfiltered.clone()).await;
        assert_eq!(status, 400, "{unfiltered} resends nothing: {answer}");
    }
    let (status, everything) = admin(&relay, "/api/replay", json!({ "dry_run": true })).await;
    assert_eq!((status, everything["dry_run"].clone()), (200, json!(true)), "a dry run may look at everything: {everything}");
}

fn hookrelay(args: &[&str]) -> (i32, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hookrelay")).env_clear().args(args).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `hookrelay replay -c NEW.yaml`: reads the store of a running relay without writing to it,
/// prints per event what the new config would send beside what was sent, and fails the
/// build with `--fail-on-change` only when something would change.
#[tokio::test]
async fn offline_replay_shows_what_a_new_config_would_change() {
    let sink = TestSink::start().await;
    let relay = Relay::start(&config(&sink.url(), "OLD-TOKEN", "")).await;
    for (n, action) in ["opened", "closed"].iter().enumerate() {
        let headers = [("x-github-event", "issues"), ("x-github-delivery", if n == 0 { "a" } else { "b" })];
        let body = format!(r#"{{"action":"{action}","title":"disk full"}}"#);
        relay.client.post_json(&relay.url("/hooks/robot"), &headers, body).await;
    }
    sink.wait_for(3).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while get(&relay, "/api/events").await["items"].as_array().unwrap().len() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "events not logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let db = relay.dir.path().join("data/hookrelay.db");
    let db = db.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (same, changed) = (dir.path().join("same.yaml"), dir.path().join("new.yaml"));
    std::fs::write(&same, config(&sink.url(), "OLD-TOKEN", "")).unwrap();
    std::fs::write(&changed, config(&sink.url(), "NEW-TOKEN", "[alert] ")).unwrap();

    let (code, out, err) = hookrelay(&["replay", "-c", same.to_str().unwrap(), "--store", db, "--fail-on-change"]);
    assert_eq!(code, 0, "the deployed config changes nothing: {out}{err}");
    assert!(out.ends_with("3 events: 0 would change, 3 unchanged\n"), "{out}");

    let (code, out, err) = hookrelay(&["replay", "-c", changed.to_str().unwrap(), "--store", db, "--fail-on-change"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("robot → dingtalk:\n"), "{out}");
    assert!(out.contains("    /url: \"") && out.contains("access_token=***\" (a credential changed)"), "{out}");
    assert!(out.contains("    /body/text/content: \"disk full\" → \"[alert] disk full\"\n"), "{out}");
    assert!(out.contains("audit → log: same request"), "{out}");
    assert!(out.ends_with("3 events: 1 would change, 2 unchanged\n"), "{out}");
    assert!(!out.contains("OLD-TOKEN") && !out.contains("NEW-TOKEN"), "credentials never printed: {out}");
    let (code, out, _) = hookrelay(&["replay", "-c", changed.to_str().unwrap(), "--store", db, "--route", "audit"]);
    assert_eq!(code, 0, "without --fail-on-change a change is reported, not failed");
    assert!(out.ends_with("2 events: 0 would change, 2 unchanged\n"), "{out}");

    let (code, out, err) =
        hookrelay(&["replay", "-c", changed.to_str().unwrap(), "--store", db, "--json", "--since", "1h", "--through", "*", "--limit", "2"]);
    assert_eq!(code, 0, "{err}");
    let compared: Vec<Value> = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(compared.len(), 2, "--limit");
    assert!(compared.iter().all(|c| c["routes"].as_array().unwrap().len() <= 2));
    let (code, _, err) = hookrelay(&["replay", "-c", changed.to_str().unwrap(), "--store", db, "--since", "someday"]);
    assert_eq!(code, 1);
    assert!(err.contains("--since"), "{err}");
    let missing = dir.path().join("missing.db");
    let (code, _, err) = hookrelay(&["replay", "-c", changed.to_str().unwrap(), "--store", missing.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("missing.db"), "{err}");
    assert!(!missing.exists(), "an offline replay creates no store");

    // Nothing was sent or written by the offline runs; the relay still serves from its file.
    assert_eq!(sink.seen().len(), 3);
    assert_eq!(get(&relay, "/api/events").await["items"].as_array().unwrap().len(), 3);
}

/// Secrets a template copied into a request (an inbound verify secret, a `${VAR}` named like
/// a credential) are masked in the replay's comparison and in the delivery log; a body
/// forwarded from the event (whose record keeps its secret field masked) is not reported
/// as a change.
#[tokio::test]
async fn replay_masks_secrets_templates_copied_and_a_forwarded_secret_field_is_no_change() {
    let sink = TestSink::start().await;
    let yaml = format!(
        r#"listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0, token: t0ken }}
routes:
  - name: tapd
    source: tapd
    match: {{ path: /hooks/tapd }}
    verify: {{ secret: TAPDBODYSECRET42 }}
    vars: {{ api_key: "${{HOOKRELAY_UNSET_TEST_KEY:-APIKEYSECRET77}}" }}
    forward:
      - name: raw
        url: {sink}/raw
      - name: templated
        url: {sink}/templated
        body: {{ s: "{{{{body.secret}}}}", key: "{{{{vars.api_key}}}}", title: "{{{{body.title}}}}" }}
"#,
        sink = sink.url()
    );
    let relay = Relay::start(&yaml).await;
    let body = r#"{"event":"bug::update","title":"t","secret":"TAPDBODYSECRET42"}"#;
    assert_eq!(relay.client.post_json(&relay.url("/hooks/tapd"), &[], body).await.status, 202);
    let seen = sink.wait_for(2).await;
    let templated = seen.iter().find(|s| s.uri == "/templated").unwrap().json();
    assert_eq!(templated, json!({"s": "TAPDBODYSECRET42", "key": "APIKEYSECRET77", "title": "t"}), "sent as configured");
    let event = get(&relay, "/api/events").await["items"][0]["id"].as_str().unwrap().to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while get(&relay, &format!("/api/events/{event}")).await["deliveries"].as_array().unwrap().iter().any(|d| d["status"] != "succeeded") {
        assert!(tokio::time::Instant::now() < deadline, "not delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (status, dry) = admin(&relay, &format!("/api/events/{event}/replay"), json!({ "dry_run": true })).await;
    assert_eq!(status, 200, "{dry}");
    let shown = dry.to_string();
    assert!(!shown.contains("TAPDBODYSECRET42") && !shown.contains("APIKEYSECRET77"), "secrets shown: {shown}");
    let target = |name: &str| dry["targets"].as_array().unwrap().iter().find(|t| t["target"] == name).unwrap().clone();
    assert_eq!(target("raw")["changes"], json!([]), "the forwarded body's secret field is masked on both sides: {dry}");
    // The replay really would send the mask where the secret was: reported, both sides masked.
    assert_eq!(target("templated")["changes"], json!([{ "path": "/body/s", "first": "***", "now": "[redacted]" }]), "{dry}");
    assert_eq!(target("templated")["first"]["body"]["key"], "***");
    let log = relay.client.get(&relay.admin_url("/api/deliveries"), &AUTH).await.text();
    assert!(!log.contains("TAPDBODYSECRET42") && !log.contains("APIKEYSECRET77"), "the delivery log shows them: {log}");
}

/// A stopped relay's SQLite store in a folder the reader may not write (a read-only mount)
/// is still read, and nothing is written beside it. As root (whom permissions do not stop)
/// the command runs as `nobody`, which owns the folder without write permission.
#[cfg(unix)]
#[tokio::test]
async fn offline_replay_reads_a_store_in_a_read_only_folder() {
    use std::os::unix::fs::PermissionsExt;
    let sink = TestSink::start().await;
    let relay = Relay::start(&config(&sink.url(), "T", "")).await;
    relay.client.post_json(&relay.url("/hooks/robot"), &[("x-github-event", "issues")], r#"{"action":"closed"}"#).await;
    sink.wait_for(1).await;
    relay.running.stop();
    relay.running.relay.engine.store().close().await.unwrap();
    relay.running.relay.store_owner.as_ref().expect("a SQLite store").release();
    let data = relay.dir.path().join("data");
    let db = data.join("hookrelay.db");
    let before: Vec<_> = std::fs::read_dir(&data).unwrap().map(|e| e.unwrap().file_name()).collect();
    let as_root = unsafe { libc::geteuid() } == 0;
    if as_root {
        const NOBODY: u32 = 65534;
        std::fs::set_permissions(relay.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for path in [&data, &db] {
            std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
        }
    }
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o555)).unwrap();
    let bin = env!("CARGO_BIN_EXE_hookrelay");
    let config = relay.config_path();
    let args = ["replay", "-c", config.to_str().unwrap(), "--store", db.to_str().unwrap()];
    let mut command = if as_root {
        let mut setpriv = std::process::Command::new("setpriv");
        setpriv.args(["--reuid", "65534", "--regid", "65534", "--clear-groups", bin]);
        setpriv
    } else {
        std::process::Command::new(bin)
    };
    let output = command.env_clear().args(args).output().unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (out, err) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.status.code(), Some(0), "{out}{err}");
    assert!(out.ends_with("1 events: 0 would change, 1 unchanged\n"), "{out}");
    let after: Vec<_> = std::fs::read_dir(&data).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(before, after, "nothing written beside the store");
}

/// `store.keep_unmatched`: a request a route's path could take but no route matched is
/// kept (credentials masked); once the config is fixed, a replay delivers it. A route that
/// verifies never replays it (it was never verified, and its token is stored masked).
#[tokio::test]
async fn requests_no_route_took_are_kept_and_replay_under_the_fixed_config() {
    let sink = TestSink::start().await;
    let yaml = |event: &str| {
        format!(
            r#"listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0, token: t0ken }}
store: {{ keep_unmatched: 24h }}
routes:
  - name: pushes
    match: {{ path: /hooks/codeup, headers: {{ Codeup-Event: {event} }} }}
    forward:
      - name: ci
        url: {sink}/ci
        body: {{ ref: "{{{{body.ref}}}}" }}
  - name: verified
    source: gitlab
    match: {{ path: /hooks/codeup, headers: {{ Codeup-Event: {event} }} }}
    verify: {{ token: {{ header: X-Gitlab-Token, value: gitlab-s3cret }} }}
    forward:
      - name: audit
        url: {sink}/audit
"#,
            sink = sink.url()
        )
    };
    let relay = Relay::start(&yaml("Push Hook")).await;
    let headers = [("codeup-event", "Tag Push Hook"), ("x-gitlab-token", "gitlab-s3cret")];
    let missed = relay.client.post_json(&relay.url("/hooks/codeup?access_token=q-s3cret"), &headers, r#"{"ref":"refs/tags/v1"}"#).await;
    assert_eq!(missed.status, 404, "{}", missed.text());
    // Paths no route could take are the service's traffic: never kept.
    assert_eq!(relay.client.post_json(&relay.url("/elsewhere"), &[], "{}").await.status, 404);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let kept = loop {
        let page = get(&relay, "/api/events?unmatched=true").await;
        if let Some(first) = page["items"].as_array().and_then(|items| items.first()) {
            break first.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "the unmatched request was never kept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(get(&relay, "/api/events?unmatched=true").await["items"].as_array().unwrap().len(), 1);
    assert_eq!((&kept["route"], &kept["path"]), (&json!(""), &json!("/hooks/codeup?access_token=***")), "{kept}");
    let token = kept["headers"].as_array().unwrap().iter().find(|h| h[0] == "x-gitlab-token").unwrap();
    assert_eq!(token[1], "[redacted]", "credentials are kept masked: {kept}");
    let id = kept["id"].as_str().unwrap().to_string();

    // Under the old config nothing matches; fixed, the route that does not verify replays it.
    let (status, before) = admin(&relay, &format!("/api/events/{id}/replay"), json!({ "dry_run": true })).await;
    assert_eq!((status, &before["routes"]), (200, &json!([])), "{before}");
    assert_eq!(admin(&relay, &format!("/api/events/{id}/replay"), json!({})).await.0, 422, "nothing to replay yet");
    std::fs::write(relay.config_path(), yaml("Tag Push Hook")).unwrap();
    assert_eq!(admin(&relay, "/api/reload", json!({})).await.0, 200);
    let (status, dry) = admin(&relay, &format!("/api/events/{id}/replay"), json!({ "dry_run": true })).await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(dry["routes"], json!(["pushes"]), "{dry}");
    assert!(dry["verification"].as_str().unwrap().starts_with("none: "), "{dry}");
    assert_eq!(dry["not_matched"][0]["route"], "verified");
    assert!(dry["not_matched"][0]["why_not"].as_str().unwrap().contains("never verified"), "{dry}");
    assert_eq!(dry["targets"][0]["now"]["body"], json!({ "ref": "refs/tags/v1" }), "{dry}");

    let (status, replayed) = admin(&relay, "/api/replay", json!({ "unmatched": true })).await;
    assert_eq!((status, replayed["replayed"].as_u64()), (200, Some(1)), "{replayed}");
    let seen = sink.wait_for(1).await;
    assert_eq!((seen[0].uri.as_str(), seen[0].json()), ("/ci", json!({ "ref": "refs/tags/v1" })));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sink.seen().len(), 1, "the route that verifies sent nothing");
}

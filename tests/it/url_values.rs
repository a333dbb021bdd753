//! A URL path segment or query value written with a placeholder may not render empty
//! unless the target says `strict: false` or the template gives a default: a CI trigger
//! sent with `?source_branch=` starts a real pipeline with the wrong parameters.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{Relay, TestSink};

const AUTH: [(&str, &str); 1] = [("authorization", "Bearer t0ken")];

fn config(sink: &TestSink) -> String {
    let url = sink.url();
    format!(
        r#"listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0, token: t0ken }}
routes:
  - name: ci-sync
    respond: sync
    match: {{ path: /hooks/sync }}
    forward:
      - name: trigger
        url: "{url}/trigger/{{{{body.project}}}}?source_branch={{{{body.branch}}}}"
  - name: ci-async
    match: {{ path: /hooks/async }}
    forward:
      - name: trigger
        url: "{url}/trigger/{{{{body.project}}}}?source_branch={{{{body.branch}}}}"
        retry: {{ max_attempts: 3, initial: 10ms }}
  - name: choices
    respond: sync
    match: {{ path: /hooks/choices }}
    forward:
      - name: defaulted
        url: "{url}/defaulted?source_branch={{{{default body.branch \"main\"}}}}"
      - name: lenient
        url: "{url}/lenient?source_branch={{{{body.branch}}}}"
        strict: false
      - name: captured
        url: "{url}/captured"
        query: {{ tag: "{{{{regex_capture body.ref '^refs/tags/(.+)$' 1}}}}" }}
"#
    )
}

async fn admin(relay: &Relay, method: &str, path: &str, body: Value) -> (u16, Value) {
    let body = if body.is_null() { String::new() } else { body.to_string() };
    let mut headers = AUTH.to_vec();
    headers.push(("content-type", "application/json"));
    let reply = relay.client.send(method, &relay.admin_url(path), &headers, body).await;
    (reply.status, reply.json())
}

#[tokio::test]
async fn a_sync_trigger_missing_a_url_value_answers_422_and_sends_nothing() {
    let sink = TestSink::start().await;
    let relay = Relay::start(&config(&sink)).await;
    for (body, expected) in [
        (json!({"project": "web"}), "body.branch"),
        (json!({"project": "web", "branch": null}), "`source_branch` (`{{body.branch}}`) rendered empty"),
        (json!({"project": "web", "branch": ""}), "`source_branch` (`{{body.branch}}`) rendered empty"),
        (json!({"project": "", "branch": "main"}), "path segment `{{body.project}}` rendered empty"),
    ] {
        let reply = relay.client.post_json(&relay.url("/hooks/sync"), &[], body.to_string()).await;
        assert_eq!(reply.status, 422, "{body}: {}", reply.text());
        let answer = reply.json();
        let reason = answer.to_string();
        assert!(reason.contains(expected) && reason.contains("url"), "{body}: {answer}");
    }
    let reply = relay.client.post_json(&relay.url("/hooks/sync"), &[], r#"{"project": "web", "branch": "main"}"#).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = sink.wait_for(1).await;
    assert_eq!(seen.iter().map(|s| s.uri.as_str()).collect::<Vec<_>>(), ["/trigger/web?source_branch=main"]);
}

#[tokio::test]
async fn an_async_delivery_missing_a_url_value_fails_at_once_without_retries() {
    let sink = TestSink::start().await;
    let relay = Relay::start(&config(&sink)).await;
    let reply = relay.client.post_json(&relay.url("/hooks/async"), &[], r#"{"project": "web"}"#).await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let event_id = reply.json()["id"].as_str().map(str::to_string).unwrap_or_else(|| panic!("{}", reply.text()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let delivery = loop {
        let (status, event) = admin(&relay, "GET", &format!("/api/events/{event_id}"), Value::Null).await;
        assert_eq!(status, 200, "{event}");
        let delivery = event["deliveries"][0].clone();
        if delivery["status"] == "failed" {
            break delivery;
        }
        assert!(tokio::time::Instant::now() < deadline, "{event}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let error = delivery["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("url") && error.contains("body.branch"), "{delivery}");
    assert!(delivery["attempts"].as_u64().unwrap_or(0) <= 1, "a render error is not retried: {delivery}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(sink.seen().is_empty(), "nothing was sent: {:?}", sink.seen());
}

#[tokio::test]
async fn a_default_or_strict_false_lets_the_request_go_and_an_unmatched_capture_does_not() {
    let sink = TestSink::start().await;
    let relay = Relay::start(&config(&sink)).await;
    // The first target answers a sync route; the others are logged beside it.
    let reply = relay.client.post_json(&relay.url("/hooks/choices"), &[], r#"{"ref": "refs/heads/main"}"#).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let mut seen: Vec<String> = sink.wait_for(2).await.iter().map(|s| s.uri.clone()).collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    seen.extend(sink.seen().iter().skip(2).map(|s| s.uri.clone()));
    seen.sort();
    assert_eq!(seen, ["/defaulted?source_branch=main", "/lenient?source_branch="], "the tag capture did not match: not sent");

    let reply = relay.client.post_json(&relay.url("/hooks/choices"), &[], r#"{"ref": "refs/tags/v1.2", "branch": "dev"}"#).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = sink.wait_for(5).await;
    let mut uris: Vec<&str> = seen[2..].iter().map(|s| s.uri.as_str()).collect();
    uris.sort();
    assert_eq!(uris, ["/captured?tag=v1.2", "/defaulted?source_branch=dev", "/lenient?source_branch=dev"]);
}

#[tokio::test]
async fn the_test_call_says_it_sends_and_never_sends_an_empty_url_value() {
    let sink = TestSink::start().await;
    let relay = Relay::start(&config(&sink)).await;
    let (status, tested) = admin(&relay, "POST", "/api/routes/choices/test", json!({"body": {"ref": "refs/heads/x"}})).await;
    assert_eq!(status, 200, "{tested}");
    assert!(tested["note"].as_str().unwrap_or_default().contains("really sent"), "{tested}");
    let by_target = |name: &str| tested["attempts"].as_array().unwrap().iter().find(|a| a["target"] == name).cloned().unwrap();
    assert_eq!(by_target("defaulted")["status"], 200, "{tested}");
    let lenient = by_target("lenient");
    assert!(lenient["error"].as_str().unwrap_or_default().starts_with("not sent: the query value `source_branch`"), "{lenient}");
    assert!(by_target("captured")["error"].as_str().unwrap_or_default().contains("`tag`"), "{tested}");
    let seen = sink.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(sink.seen().len(), 1, "{seen:?}");
    assert_eq!(seen[0].uri, "/defaulted?source_branch=main");
}

//! Webhooks in, transformed requests out: what reaches the sink, byte for byte.

use base64::Engine as _;
use serde_json::json;

use crate::support::{fixture, Answer, Relay, TestSink};

fn codeup_config(sink: &TestSink, respond: &str) -> String {
    format!(
        r#"
listen: 127.0.0.1:0
routes:
  - name: codeup-push-to-codearts
    source: codeup
    match:
      path: /hooks/codeup/{{project}}
      headers: {{ Codeup-Event: Push Hook }}
      event: push
      body:
        - {{ path: $.ref, regex: "^refs/heads/(master|main|release/.+)$" }}
        - {{ path: $.total_commits_count, gt: 0 }}
    verify:
      basic_auth: {{ username: codeup, password: hook-pw }}
    vars: {{ webhook_id: 0a1b2c3d }}
    respond: {respond}
    forward:
      - name: codearts
        url: "{sink}/v2/manage/webhooks/{{{{vars.webhook_id}}}}"
        query:
          branch: "{{{{regex_capture body.ref '^refs/heads/(.+)$' 1}}}}"
          commit: "{{{{body.after}}}}"
          project: "{{{{params.project}}}}"
        basic_auth: {{ username: ci, password: "p@ss:word" }}
        success: [201]
        body:
          ref: "{{{{body.ref}}}}"
          commits: "{{{{json body.commits}}}}"
          count: "{{{{body.total_commits_count}}}}"
          pusher: "pushed by {{{{body.user_name}}}}"
"#,
        sink = sink.url()
    )
}

fn codeup_auth() -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("codeup:hook-pw"))
}

async fn post_codeup_push(relay: &Relay) -> crate::support::reqwest_like::Reply {
    let auth = codeup_auth();
    relay
        .client
        .post_json(
            &relay.url("/hooks/codeup/demo"),
            &[("codeup-event", "Push Hook"), ("authorization", &auth)],
            fixture("codeup-push.json"),
        )
        .await
}

#[tokio::test]
async fn codeup_push_triggers_codearts_pipeline_with_basic_auth_and_201() {
    let sink = TestSink::scripted(vec![Answer::with_body(201, "{}")]).await;
    let relay = Relay::start(&codeup_config(&sink, "sync")).await;
    let reply = post_codeup_push(&relay).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(reply.text(), "{}");

    let seen = sink.wait_for(1).await;
    assert_eq!(seen.len(), 1);
    let request = &seen[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.uri, "/v2/manage/webhooks/0a1b2c3d?branch=master&commit=eb63d0277e64684236ebf8394b919230c4b8a286&project=demo");
    let expected_auth = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("ci:p@ss:word"));
    assert_eq!(request.header("authorization"), Some(expected_auth.as_str()));
    assert_eq!(request.header("content-type"), Some("application/json"));
    let payload: serde_json::Value = serde_json::from_slice(&fixture("codeup-push.json")).unwrap();
    assert_eq!(
        request.json(),
        json!({ "ref": "refs/heads/master", "commits": payload["commits"], "count": 2, "pusher": "pushed by Codeup" })
    );
}

#[tokio::test]
async fn async_route_answers_202_then_delivers_with_idempotency_key() {
    let sink = TestSink::scripted(vec![Answer::with_body(201, "{}")]).await;
    let relay = Relay::start(&codeup_config(&sink, "async")).await;
    let reply = post_codeup_push(&relay).await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let answer = reply.json();
    assert_eq!(answer["routes"], json!(["codeup-push-to-codearts"]));
    let id = answer["id"].as_str().expect("event id");
    let seen = sink.wait_for(1).await;
    assert_eq!(seen[0].header("idempotency-key"), Some(format!("{id}.codearts").as_str()));
    assert!(seen[0].uri.starts_with("/v2/manage/webhooks/0a1b2c3d?branch=master"));
}

#[tokio::test]
async fn non_matching_branch_and_wrong_event_do_not_fire() {
    let sink = TestSink::scripted(vec![Answer::with_body(201, "{}")]).await;
    let relay = Relay::start(&codeup_config(&sink, "sync")).await;
    let auth = codeup_auth();
    let mut body: serde_json::Value = serde_json::from_slice(&fixture("codeup-push.json")).unwrap();
    body["ref"] = json!("refs/heads/feature/x");
    let reply = relay
        .client
        .post_json(&relay.url("/hooks/codeup/demo"), &[("codeup-event", "Push Hook"), ("authorization", &auth)], body.to_string())
        .await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.json(), json!({ "error": "no route matched" }));
    // Only the event differs from a push that matches.
    let mut body: serde_json::Value = serde_json::from_slice(&fixture("codeup-push.json")).unwrap();
    body["object_kind"] = json!("tag_push");
    let reply = relay
        .client
        .post_json(&relay.url("/hooks/codeup/demo"), &[("codeup-event", "Push Hook"), ("authorization", &auth)], body.to_string())
        .await;
    assert_eq!(reply.status, 404);
    body["object_kind"] = json!("push");
    let reply = relay
        .client
        .post_json(&relay.url("/hooks/codeup/demo"), &[("codeup-event", "Push Hook"), ("authorization", &auth)], body.to_string())
        .await;
    assert_eq!(reply.status, 201, "the same body as a push does match");
    assert_eq!(sink.seen().len(), 1);
}

#[tokio::test]
async fn wrong_basic_auth_is_401_and_nothing_is_sent() {
    let sink = TestSink::start().await;
    let relay = Relay::start(&codeup_config(&sink, "async")).await;
    let wrong = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("codeup:nope"));
    for headers in [vec![("codeup-event", "Push Hook"), ("authorization", wrong.as_str())], vec![("codeup-event", "Push Hook")]] {
        let reply = relay.client.post_json(&relay.url("/hooks/codeup/demo"), &headers, fixture("codeup-push.json")).await;
        assert_eq!(reply.status, 401);
        assert_eq!(reply.json()["error"], "verification failed");
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(sink.seen().is_empty());
}

#[tokio::test]
async fn github_hmac_is_verified() {
    let sink = TestSink::start().await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nroutes:\n  - name: gh\n    source: github\n    match: {{ path: /hooks/github, event: push }}\n    verify: {{ secret: s3cret }}\n    respond: sync\n    forward:\n      - url: {}/gh\n",
        sink.url()
    );
    let relay = Relay::start(&yaml).await;
    let body = br#"{"ref":"refs/heads/main"}"#;
    // Computed independently with Python: hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    let good = "sha256=232a5e067b6a5aa567ed5a1d21a0dffaf6ef0eeecb6bd9bcf43b3d5ef3fc4f43";
    let reply = relay
        .client
        .post_json(&relay.url("/hooks/github"), &[("x-github-event", "push"), ("x-hub-signature-256", "sha256=00ff")], &body[..])
        .await;
    assert_eq!(reply.status, 401);
    assert!(sink.seen().is_empty());
    let reply =
        relay.client.post_json(&relay.url("/hooks/github"), &[("x-github-event", "push"), ("x-hub-signature-256", good)], &body[..]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = sink.wait_for(1).await;
    assert_eq!(&seen[0].body[..], &body[..], "content_type raw by default: the original bytes");
}

#[tokio::test]
async fn tapd_form_bug_becomes_dingtalk_markdown() {
    let sink = TestSink::scripted(vec![Answer::with_body(200, r#"{"errcode":0,"errmsg":"ok"}"#)]).await;
    let yaml = format!(
        r####"
listen: 127.0.0.1:0
routes:
  - name: tapd-bug-to-dingtalk
    source: tapd
    match: {{ path: /hooks/tapd, event: "bug::*" }}
    verify: {{ secret: tapd-secret }}
    respond: sync
    forward:
      - name: dingtalk
        url: "{sink}/robot/send?access_token=abc123"
        body: |
          {{"msgtype": "markdown", "markdown": {{"title": "TAPD {{{{event}}}}", "text": "### {{{{body.title}}}}\n- 处理人: {{{{body.current_owner}}}}\n- 优先级: {{{{upper body.priority}}}}"}}}}
"####,
        sink = sink.url()
    );
    let relay = Relay::start(&yaml).await;
    let reply = relay
        .client
        .send("POST", &relay.url("/hooks/tapd"), &[("content-type", "application/x-www-form-urlencoded")], fixture("tapd-bug-create.form"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json(), json!({"errcode": 0, "errmsg": "ok"}));
    let seen = sink.wait_for(1).await;
    assert_eq!(seen[0].uri, "/robot/send?access_token=abc123");
    assert_eq!(
        seen[0].json(),
        json!({
            "msgtype": "markdown",
            "markdown": { "title": "TAPD bug::create", "text": "### 登录页 \"crash\" on <submit>\n- 处理人: alice;bob;\n- 优先级: HIGH" }
        })
    );
    let wrong = String::from_utf8(fixture("tapd-bug-create.form")).unwrap().replace("secret=tapd-secret", "secret=guess");
    let reply = relay.client.send("POST", &relay.url("/hooks/tapd"), &[("content-type", "application/x-www-form-urlencoded")], wrong).await;
    assert_eq!(reply.status, 401);
    assert_eq!(sink.seen().len(), 1);
}

#[tokio::test]
async fn hostile_text_survives_a_json_string_template_exactly() {
    let sink = TestSink::start().await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nroutes:\n  - name: echo\n    match: {{ path: /hooks/echo }}\n    respond: sync\n    forward:\n      - url: {}/echo\n        headers: {{ X-Title: '{{{{body.title}}}}' }}\n        body: '{{\"text\": \"{{{{body.msg}}}}\", \"n\": {{{{json body.n}}}}, \"missing\": \"{{{{body.nope}}}}\", \"m\": {{{{json body.nope}}}}}}'\n",
        sink.url()
    );
    let relay = Relay::start(&yaml).await;
    let hostile = "quo\"te \\ back\\slash\nnew\r\nline\ttab \u{1} 🚀 中文 </script><script>alert(1)</script> {{body}} ${HOME}";
    let body = json!({ "msg": hostile, "n": 12.5, "title": "plain title" });
    let reply = relay.client.post_json(&relay.url("/hooks/echo"), &[], body.to_string()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = sink.wait_for(1).await;
    assert_eq!(seen[0].json(), json!({ "text": hostile, "n": 12.5, "missing": "", "m": null }));
    assert_eq!(seen[0].header("x-title"), Some("plain title"));

    // A header template that would carry CR/LF is refused, never sent.
    let body = json!({ "msg": "x", "n": 1, "title": "evil\r\nX-Injected: 1" });
    let reply = relay.client.post_json(&relay.url("/hooks/echo"), &[], body.to_string()).await;
    assert_eq!(reply.status, 422, "{}", reply.text());
    assert!(reply.json()["detail"].as_str().unwrap().contains("headers.x-title"));
    assert_eq!(sink.seen().len(), 1);
}

/// A `body:` written as YAML reaches the target as compact JSON with the mapping's order:
/// strings escaped, single-expression leaves keeping their JSON type, literals as written.
#[tokio::test]
async fn a_structured_body_reaches_the_target_as_these_exact_bytes() {
    let sink = TestSink::start().await;
    let yaml = format!(
        r#"listen: 127.0.0.1:0
routes:
  - name: shaped
    match: {{ path: /hooks/shaped }}
    respond: sync
    forward:
      - url: {}/shaped
        body:
          text: "say {{{{body.msg}}}}"
          n: "{{{{body.n}}}}"
          whole: "{{{{json body.o}}}}"
          list: [1, two, "{{{{body.msg}}}}", {{ deep: "{{{{body.msg}}}}", "quo\"ted key": x }}, null, true, 2.5]
          empty: {{}}
          none: []
          missing: "{{{{body.nope}}}}"
"#,
        sink.url()
    );
    let relay = Relay::start(&yaml).await;
    let hostile = "quo\"te \\ back\nline\ttab \u{1} \u{7f} 🚀 中文 </script> \u{2028}";
    let body = json!({ "msg": hostile, "n": 12.5, "o": { "z": 1, "a": [true, null, "s"] } });
    let reply = relay.client.post_json(&relay.url("/hooks/shaped"), &[], body.to_string()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let expected = json!({
        "text": format!("say {hostile}"),
        "n": 12.5,
        "whole": { "z": 1, "a": [true, null, "s"] },
        "list": [1, "two", hostile, { "deep": hostile, "quo\"ted key": "x" }, null, true, 2.5],
        "empty": {},
        "none": [],
        // A leaf that is only an expression keeps its JSON type: a missing value is null.
        "missing": null,
    });
    let seen = sink.wait_for(1).await;
    assert_eq!(String::from_utf8_lossy(&seen[0].body), serde_json::to_string(&expected).unwrap());
    assert_eq!(seen[0].header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn fan_out_when_and_final() {
    let sink = TestSink::start().await;
    let yaml = format!(
        r#"
listen: 127.0.0.1:0
routes:
  - name: first
    match: {{ path: /hooks/multi }}
    forward:
      - {{ name: a, url: "{sink}/a", body: {{ n: "{{{{json body.n}}}}" }} }}
      - {{ name: b, url: "{sink}/b", content_type: form, body: {{ text: "{{{{body.s}}}}", n: "{{{{body.n}}}}" }} }}
      - {{ name: skipped, url: "{sink}/never", when: "{{{{#if body.flag}}}}true{{{{/if}}}}" }}
  - name: second
    final: true
    match: {{ path: /hooks/multi }}
    forward:
      - {{ url: "upstream:/internal/{{{{body.s}}}}?from=relay", method: PUT, content_type: text, body: "s={{{{body.s}}}}" }}
  - name: never
    match: {{ path: /hooks/multi }}
    forward:
      - {{ url: "{sink}/after-final" }}
upstream: {sink}/base
"#,
        sink = sink.url()
    );
    let relay = Relay::start(&yaml).await;
    let reply = relay.client.post_json(&relay.url("/hooks/multi"), &[], r#"{"n": 7, "s": "a b&c/d"}"#).await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    assert_eq!(reply.json()["routes"], json!(["first", "second"]));
    let mut seen = sink.wait_for(3).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(sink.seen().len(), 3, "{:#?}", sink.seen());
    seen.sort_by(|a, b| a.uri.cmp(&b.uri));
    assert_eq!(seen[0].uri, "/a");
    assert_eq!(seen[0].json(), json!({ "n": 7 }));
    assert_eq!(seen[1].uri, "/b");
    assert_eq!(seen[1].header("content-type"), Some("application/x-www-form-urlencoded"));
    assert_eq!(&seen[1].body[..], b"text=a+b%26c%2Fd&n=7");
    assert_eq!(seen[2].method, "PUT");
    assert_eq!(seen[2].uri, "/base/internal/a%20b%26c%2Fd?from=relay");
    assert_eq!(&seen[2].body[..], b"s=a b&c/d");
    assert_eq!(seen[2].header("content-type"), Some("text/plain; charset=utf-8"));
}

#[tokio::test]
async fn url_userinfo_becomes_basic_auth() {
    let sink = TestSink::start().await;
    let yaml = format!("listen: 127.0.0.1:0\nroutes:\n  - name: u\n    match: {{ path: /u }}\n    respond: sync\n    forward:\n      - url: http://ci%40corp:pa%3Ass@{}/trigger\n", sink.addr);
    let relay = Relay::start(&yaml).await;
    let reply = relay.client.post_json(&relay.url("/u"), &[], "{}").await;
    assert_eq!(reply.status, 200);
    let seen = sink.wait_for(1).await;
    let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("ci@corp:pa:ss"));
    assert_eq!(seen[0].header("authorization"), Some(expected.as_str()));
    assert_eq!(seen[0].uri, "/trigger");
}

#[tokio::test]
async fn https_target_trusted_through_outbound_ca_file() {
    let (sink, ca_pem) = TestSink::tls(vec![Answer::with_body(201, r#"{"ok":true}"#)]).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca_pem).unwrap();
    let ca_path = dir.path().join("ca.pem");
    let yaml = format!(
        "listen: 127.0.0.1:0\noutbound: {{ ca_file: {} }}\nroutes:\n  - name: tls\n    match: {{ path: /hooks/tls }}\n    respond: sync\n    forward:\n      - url: https://localhost:{}/secure\n        body: {{ a: '{{{{body.a}}}}' }}\n",
        ca_path.display(),
        sink.addr.port()
    );
    let relay = Relay::start(&yaml).await;
    let reply = relay.client.post_json(&relay.url("/hooks/tls"), &[], r#"{"a":"b"}"#).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(reply.json(), json!({ "ok": true }));
    let seen = sink.wait_for(1).await;
    assert_eq!(seen[0].uri, "/secure");
    assert_eq!(seen[0].json(), json!({ "a": "b" }));
}

#[tokio::test]
async fn https_target_with_an_untrusted_certificate_is_refused() {
    let (sink, _ca) = TestSink::tls(vec![]).await;
    let yaml = format!("listen: 127.0.0.1:0\nroutes:\n  - name: tls\n    match: {{ path: /hooks/tls }}\n    respond: sync\n    forward:\n      - url: https://localhost:{}/secure\n", sink.addr.port());
    let relay = Relay::start(&yaml).await;
    let reply = relay.client.post_json(&relay.url("/hooks/tls"), &[], "{}").await;
    assert_eq!(reply.status, 502);
    assert!(reply.json()["detail"].as_str().unwrap().contains("certificate"), "{}", reply.text());
    assert!(sink.seen().is_empty());
}

#[tokio::test]
async fn literal_and_patterned_routes_fire_in_file_order() {
    let sink = TestSink::start().await;
    let target = |name: &str| format!("    forward: [ {{ url: '{}/{name}' }} ]\n", sink.url());
    let yaml = format!(
        "listen: 127.0.0.1:0\nroutes:\n  - name: p1\n    match: {{ path: '/hooks/{{x}}' }}\n{}  - name: l1\n    match: {{ path: /hooks/a/ }}\n{}  - name: rest\n    match: {{ path: '/hooks/*' }}\n{}  - name: l2\n    match: {{ path: /hooks/a }}\n{}  - name: other\n    match: {{ path: /hooks/b }}\n{}",
        target("p1"),
        target("l1"),
        target("rest"),
        target("l2"),
        target("other")
    );
    let relay = Relay::start(&yaml).await;
    let reply = relay.client.post_json(&relay.url("/hooks//a"), &[], "{}").await;
    assert_eq!(reply.status, 202);
    assert_eq!(reply.json()["routes"], json!(["p1", "l1", "rest", "l2"]));
}

/// A sender that keeps its connection open has its sync sends made over a target
/// connection of that connection's own from its second request on; the target sees the
/// same request either way (Host, path and query, headers, body), and a pass-through to
/// another service on the same connection, and a sender on a fresh connection, still go
/// where they should.
#[tokio::test]
async fn sync_sends_on_a_kept_alive_connection_reach_the_target_as_through_the_pool() {
    let target = TestSink::start().await;
    let service = TestSink::start().await;
    let relay = Relay::start(&format!(
        "listen: 127.0.0.1:0\nupstream: {}\nroutes:\n  - name: ci\n    respond: sync\n    match: {{ path: /hooks/ci }}\n    forward:\n      - url: '{}/trigger?token=t&n={{{{body.n}}}}'\n        headers: {{ X-Run: '{{{{body.n}}}}' }}\n        body: {{ n: '{{{{json body.n}}}}' }}\n",
        service.url(),
        target.url()
    ))
    .await;
    // One client: one kept-alive connection to the relay.
    for n in 1..=3 {
        let reply = relay.client.post_json(&relay.url("/hooks/ci"), &[], json!({ "n": n }).to_string()).await;
        assert_eq!((reply.status, reply.text().as_str()), (200, "{}"));
    }
    let proxied = relay.client.get(&relay.url("/service/path?q=1"), &[]).await;
    assert_eq!(proxied.status, 200);
    let last = relay.client.post_json(&relay.url("/hooks/ci"), &[], json!({ "n": 4 }).to_string()).await;
    assert_eq!(last.status, 200);
    let fresh = crate::support::reqwest_like::Client::new();
    assert_eq!(fresh.post_json(&relay.url("/hooks/ci"), &[], json!({ "n": 5 }).to_string()).await.status, 200);

    let seen = target.wait_for(5).await;
    for (n, request) in (1..=5).zip(&seen) {
        assert_eq!(request.method, "POST");
        assert_eq!(request.uri, format!("/trigger?token=t&n={n}"));
        assert_eq!(request.header("host"), Some(target.addr.to_string().as_str()), "request {n}");
        assert_eq!(request.header("x-run"), Some(n.to_string().as_str()));
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(request.header("content-length"), Some(request.body.len().to_string().as_str()));
        assert_eq!(request.json(), json!({ "n": n }));
    }
    // The first request of the connection went through the pool; the next ones over one
    // connection of its own; the fresh sender's through the pool again.
    assert_eq!(seen[1].from, seen[2].from);
    assert_ne!(seen[0].from, seen[1].from);
    assert_ne!(seen[4].from, seen[1].from);
    let service_seen = service.wait_for(1).await;
    assert_eq!(service_seen[0].uri, "/service/path?q=1");
}

/// A target that refuses connections gets the same `502` whether the send went through
/// the pool (a connection's first request) or over the connection's own target link.
#[tokio::test]
async fn a_refused_sync_send_reads_the_same_over_the_pool_and_the_link() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = closed.local_addr().unwrap();
    drop(closed);
    let relay = Relay::start(&format!(
        "listen: 127.0.0.1:0\nroutes:\n  - name: ci\n    respond: sync\n    match: {{ path: /hooks/ci }}\n    forward:\n      - url: http://{refused}/trigger\n"
    ))
    .await;
    let first = relay.client.post_json(&relay.url("/hooks/ci"), &[], "{}").await;
    let second = relay.client.post_json(&relay.url("/hooks/ci"), &[], "{}").await;
    assert_eq!((first.status, second.status), (502, 502), "{} {}", first.text(), second.text());
    assert_eq!(first.json(), second.json());
    assert!(first.json()["detail"].as_str().is_some_and(|detail| detail.contains("tcp connect error")), "{}", first.text());
}

/// The shared pool's connections run on the runtime that built the pool, not on the thread
/// of the request that happened to open one (a connection thread, which may be busy with
/// one request or gone): a connection opened from another runtime that has since ended is
/// still there for the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_outlives_the_runtime_that_opened_it() {
    use hookrelay::delivery::client::{full, Outbound};
    use http_body_util::BodyExt;

    let sink = TestSink::start().await;
    let outbound = Outbound::build(&[]).unwrap();
    let (opener, first) = (outbound.clone(), format!("{}/first", sink.url()));
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let answer = opener.trusted.request(http::Request::post(first).body(full("one")).unwrap()).await.unwrap();
            assert_eq!(answer.status(), 200);
            answer.into_body().collect().await.unwrap();
        });
        // The runtime, and every task still on it, ends here.
    })
    .join()
    .unwrap();
    // The pool takes a connection back on a task of its own once its answer is read: let
    // that task run (a loaded machine gave it the race), as a sender's next request would.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let second = http::Request::post(format!("{}/second", sink.url())).body(full("two")).unwrap();
    let answer = outbound.trusted.request(second).await.unwrap();
    assert_eq!(answer.status(), 200);
    let seen = sink.wait_for(2).await;
    assert_eq!((seen[0].uri.as_str(), seen[1].uri.as_str()), ("/first", "/second"));
    assert_eq!(seen[0].from, seen[1].from, "the second request needed a new connection: the first ended with the runtime that opened it");
}

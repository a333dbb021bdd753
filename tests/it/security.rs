//! Attacks on the running binary: the private-address guard through route replacement,
//! manual retry and restart; admin auth across reloads; verification that fails closed.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::binary::{free_port, spawn, stop, wait_up, Folder};
use crate::support::reqwest_like::Client;
use crate::support::TestSink;

async fn admin_call(client: &Client, admin: u16, token: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let text = if body.is_null() { String::new() } else { body.to_string() };
    let reply = client
        .send(method, &format!("http://127.0.0.1:{admin}{path}"), &[("authorization", &auth), ("content-type", "application/json")], text)
        .await;
    let json = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    (reply.status, json)
}

/// Waits (bounded) until the delivery is failed with at least `attempts` attempts on record.
async fn failed_after(client: &Client, admin: u16, id: &str, attempts: usize) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, found) = admin_call(client, admin, "t0ken", "GET", &format!("/api/deliveries/{id}"), Value::Null).await;
        if found["delivery"]["status"] == "failed" && found["attempts"].as_array().is_some_and(|a| a.len() >= attempts) {
            return found;
        }
        assert!(tokio::time::Instant::now() < deadline, "delivery {id} did not fail {attempts} times: {found}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A route created through the API takes its host from the body. The guard refuses the
/// private address on the first try, and keeps refusing after the route is replaced by one
/// with an `upstream:` target, after a manual retry, after the route is deleted, and after
/// a restart: the guard belongs to the delivery, not to whatever route now has its name.
#[cfg(unix)]
#[tokio::test]
async fn the_private_address_guard_holds_through_replacement_retry_and_restart() {
    let secret_service = TestSink::scripted(vec![crate::support::Answer::with_body(200, "instance-credentials")]).await;
    let upstream = TestSink::start().await;
    let (port, admin) = (free_port(), free_port());
    let folder = Folder::new(&format!(
        "listen: 127.0.0.1:{port}\nadmin: {{ listen: 127.0.0.1:{admin}, token: t0ken }}\nupstream: {}\nstore: {{ path: ./relay.db }}\nroutes: []\n",
        upstream.url()
    ));
    let client = Client::new();
    let mut child = spawn(&folder.config(), &["--no-watch"], &[]);
    wait_up(&client, &mut child, admin).await;
    let route = |url: &str| json!({ "name": "meta", "match": { "path": "/hooks/meta" }, "forward": [ { "name": "svc", "url": url, "retry": { "max_attempts": 1 } } ] });
    let (status, created) = admin_call(&client, admin, "t0ken", "POST", "/api/routes", route("http://{{{body.h}}}/latest/meta-data")).await;
    assert_eq!(status, 201, "{created}");
    let sink_port = secret_service.addr.port();
    let mut ids = Vec::new();
    for host in [format!("127.0.0.1:{sink_port}"), format!("[::ffff:127.0.0.1]:{sink_port}"), format!("localhost:{sink_port}")] {
        let reply = client.post_json(&format!("http://127.0.0.1:{port}/hooks/meta"), &[], json!({ "h": host }).to_string()).await;
        assert_eq!(reply.status, 202, "{}", reply.text());
        let event = reply.json()["id"].as_str().unwrap().to_string();
        let (_, event) = admin_call(&client, admin, "t0ken", "GET", &format!("/api/events/{event}"), Value::Null).await;
        ids.push(event["deliveries"][0]["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        let found = failed_after(&client, admin, id, 1).await;
        assert!(found["delivery"]["last_error"].as_str().unwrap().contains("allow_private"), "{found}");
    }

    let (status, replaced) = admin_call(&client, admin, "t0ken", "PUT", "/api/routes/meta", route("upstream:/meta")).await;
    assert_eq!(status, 200, "{replaced}");
    let (status, _) = admin_call(&client, admin, "t0ken", "POST", &format!("/api/deliveries/{}/retry", ids[0]), Value::Null).await;
    assert_eq!(status, 200);
    let found = failed_after(&client, admin, &ids[0], 2).await;
    assert!(found["attempts"][1]["error"].as_str().unwrap().contains("allow_private"), "{found}");
    assert_eq!(found["attempts"][1]["response_body"], "");

    let (status, _) = admin_call(&client, admin, "t0ken", "DELETE", "/api/routes/meta", Value::Null).await;
    assert_eq!(status, 204);
    admin_call(&client, admin, "t0ken", "POST", &format!("/api/deliveries/{}/retry", ids[1]), Value::Null).await;
    failed_after(&client, admin, &ids[1], 2).await;

    stop(child);
    child = spawn(&folder.config(), &["--no-watch"], &[]);
    wait_up(&client, &mut child, admin).await;
    admin_call(&client, admin, "t0ken", "POST", &format!("/api/deliveries/{}/retry", ids[2]), Value::Null).await;
    let found = failed_after(&client, admin, &ids[2], 2).await;
    assert!(found["attempts"][1]["error"].as_str().unwrap().contains("allow_private"), "{found}");
    stop(child);
    assert!(secret_service.seen().is_empty(), "the private service was reached: {:?}", secret_service.seen());
    assert!(upstream.seen().is_empty(), "a stored private delivery was sent to the new route's target");
}

/// Removing `admin.token` (or moving `admin.listen`) in a reload does not open the running
/// admin listener; a new token applies at once.
#[cfg(unix)]
#[tokio::test]
async fn a_reload_never_loosens_admin_auth() {
    let (port, admin, elsewhere) = (free_port(), free_port(), free_port());
    let config =
        |admin_block: String| format!("listen: 127.0.0.1:{port}\nadmin: {admin_block}\nstore: {{ path: ./relay.db }}\nroutes: []\n");
    let folder = Folder::new(&config(format!("{{ listen: 127.0.0.1:{admin}, token: first-token }}")));
    let client = Client::new();
    let mut child = spawn(&folder.config(), &["--no-watch"], &[]);
    wait_up(&client, &mut child, admin).await;
    let status_with = |token: Option<&'static str>| {
        let client = client.clone();
        async move {
            let auth = token.map(|t| format!("Bearer {t}")).unwrap_or_default();
            let headers: Vec<(&str, &str)> = if token.is_some() { vec![("authorization", auth.as_str())] } else { Vec::new() };
            let api = client.get(&format!("http://127.0.0.1:{admin}/api/status"), &headers).await.status;
            let metrics = client.get(&format!("http://127.0.0.1:{admin}/metrics"), &headers).await.status;
            assert_eq!(api, metrics, "/api and /metrics disagree with token {token:?}");
            api
        }
    };
    assert_eq!(status_with(None).await, 401);
    assert_eq!(status_with(Some("first-token")).await, 200);

    for loosened in [format!("{{ listen: 127.0.0.1:{admin} }}"), format!("{{ listen: 127.0.0.1:{elsewhere} }}")] {
        folder.write(&config(loosened));
        let (status, reloaded) = admin_call(&client, admin, "first-token", "POST", "/api/reload", Value::Null).await;
        assert_eq!((status, reloaded["reloaded"].as_bool()), (200, Some(true)), "{reloaded}");
        assert_eq!(status_with(None).await, 401, "a reload without admin.token opened the admin API");
        let (_, status) = admin_call(&client, admin, "first-token", "GET", "/api/status", Value::Null).await;
        let notes = status["config"]["restart_required"].to_string();
        assert!(notes.contains("admin.token"), "{notes}");
    }
    // SIGHUP takes the same path.
    folder.write(&config(format!("{{ listen: 127.0.0.1:{admin}, token: second-token }}")));
    child.signal("HUP");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let second = [("authorization", "Bearer second-token")];
    while client.get(&format!("http://127.0.0.1:{admin}/api/status"), &second).await.status != 200 {
        assert!(tokio::time::Instant::now() < deadline, "the new token did not apply");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(status_with(Some("second-token")).await, 200);
    assert_eq!(status_with(Some("first-token")).await, 401, "the old token still works");
    assert_eq!(status_with(None).await, 401);
    stop(child);
}

fn check(config: &std::path::Path, env: &[(&str, &str)]) -> (i32, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hookrelay"))
        .args(["check", "-c"])
        .arg(config)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// An unset `${VAR:-}` secret is a config error with its position, not a check that
/// accepts everything; placeholders are warned about.
#[test]
fn empty_secrets_are_config_errors_and_placeholders_are_warned_about() {
    let folder = Folder::new(
        r#"listen: 127.0.0.1:0
routes:
  - name: gitlab
    source: gitlab
    match: { path: /hooks/gitlab }
    verify: { secret: "${GITLAB_TOKEN:-}" }
    forward: [ { url: "http://127.0.0.1:9/x" } ]
  - name: tapd
    source: tapd
    match: { path: /hooks/tapd }
    verify: { secret: "  " }
    forward: [ { url: "http://127.0.0.1:9/x" } ]
  - name: generic
    match: { path: /hooks/generic }
    verify:
      token: { header: X-Token, value: "${TOKEN:-}" }
      hmac: { header: X-Sig, secret: "" }
      basic_auth: { username: u, password: "" }
    forward:
      - url: "http://127.0.0.1:9/x"
        sign: { github: { secret: "${SIGNING:-}" } }
  - name: standard
    match: { path: /hooks/standard }
    verify: { standard_webhooks: { secret: "whsec_${SW_KEY:-}" } }
    forward: [ { url: "http://127.0.0.1:9/x" } ]
admin: { listen: "0.0.0.0:9999", token: "   " }
"#,
    );
    let (code, stderr) = check(&folder.config(), &[]);
    assert_eq!(code, 1, "{stderr}");
    for (line_col, path) in [
        ("6:15", "routes[0].verify.secret"),
        ("11:15", "routes[1].verify.secret"),
        ("16:33", "routes[2].verify.token.value"),
        ("17:30", "routes[2].verify.hmac.secret"),
        ("18:34", "routes[2].verify.basic_auth.password"),
        ("21:27", "routes[2].forward[0].sign.github.secret"),
    ] {
        assert!(stderr.contains(&format!("hookrelay.yaml:{line_col}: {path}: the secret is empty")), "{path} at {line_col}:\n{stderr}");
    }
    assert!(stderr.contains("routes[3].verify.standard_webhooks.secret: the Standard Webhooks key is empty"), "{stderr}");
    assert!(
        stderr.contains("admin.listen: an admin listener without a token may only bind a loopback address"),
        "a blank token is no token: {stderr}"
    );

    folder.write(
        "listen: 127.0.0.1:0\nroutes:\n  - name: gitlab\n    source: gitlab\n    match: { path: /hooks/gitlab }\n    verify: { secret: change-me }\n    forward: [ { url: \"http://127.0.0.1:9/x\" } ]\n",
    );
    let (code, stderr) = check(&folder.config(), &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("warning: ") && stderr.contains("routes[0].verify.secret: the secret is the placeholder \"change-me\""),
        "{stderr}"
    );
}

/// With a real secret, a request without the credential header is refused.
#[tokio::test]
async fn a_missing_credential_never_matches() {
    let sink = TestSink::start().await;
    let relay = crate::support::Relay::start(&format!(
        "listen: 127.0.0.1:0\nroutes:\n  - name: gitlab\n    source: gitlab\n    match: {{ path: /hooks/gitlab }}\n    verify: {{ secret: real-token }}\n    forward: [ {{ url: \"{}/x\" }} ]\n",
        sink.url()
    ))
    .await;
    let url = relay.url("/hooks/gitlab");
    for headers in [vec![], vec![("x-gitlab-token", "")], vec![("x-gitlab-token", "real-token-2")]] {
        let reply = relay.client.post_json(&url, &headers, r#"{"object_kind":"push"}"#).await;
        assert_eq!(reply.status, 401, "{headers:?}: {}", reply.text());
    }
    let reply = relay.client.post_json(&url, &[("x-gitlab-token", "real-token")], r#"{"object_kind":"push"}"#).await;
    assert_eq!(reply.status, 202);
}

/// Every configured secret and every signature the relay sent, across a sync and an async
/// route, is absent from the store files (db and WAL), the admin API and the logs; the
/// receivers got the real values. A credential written from `${VAR}` is stored as a
/// reference: a retry after the config changed sends the new value.
#[cfg(unix)]
#[tokio::test]
async fn secrets_reach_neither_the_store_nor_the_api_nor_the_logs() {
    let env = [
        ("ADMIN_TOKEN", "admin-s3cr3t-01"),
        ("INBOUND_TOKEN", "inbound-s3cr3t-02"),
        ("ROBOT_TOKEN", "robot-s3cr3t-03"),
        ("API_KEY", "apikey-s3cr3t-04"),
        ("BEARER", "bearer-s3cr3t-05"),
        ("DING_SECRET", "SECding-s3cr3t-06"),
        ("TAPD_SECRET", "tapd-s3cr3t-07"),
        ("OUTBOUND_PASSWORD", "outbound-s3cr3t-08"),
        ("HMAC_SECRET", "hmac-s3cr3t-09"),
        ("FEISHU_SECRET", "feishu-s3cr3t-10"),
        ("GENERIC_TOKEN", "generic-s3cr3t-11"),
        ("GITHUB_SECRET", "github-s3cr3t-12"),
        ("API_KEY_V2", "apikey-v2-s3cr3t-13"),
        ("PATH_TOKEN", "T000-B000-path-s3cr3t-14"),
        ("MIXED_KEY", "mixed-header-s3cr3t-15"),
        ("QUERY_TOKEN", "mixed-query-s3cr3t-16"),
    ];
    let sink = TestSink::start().await;
    let flaky = TestSink::scripted(vec![crate::support::Answer::status_only(503)]).await;
    let (port, admin) = (free_port(), free_port());
    let config = |api_key_var: &str| {
        format!(
            r#"listen: 127.0.0.1:{port}
admin: {{ listen: 127.0.0.1:{admin}, token: "${{ADMIN_TOKEN}}" }}
store: {{ path: ./state/relay.db }}
routes:
  - name: codearts-sync
    source: codearts
    match: {{ path: /hooks/codearts }}
    respond: sync
    verify: {{ secret: "${{INBOUND_TOKEN}}" }}
    forward:
      - name: robot
        url: "{sink}/robot/send?access_token=${{ROBOT_TOKEN}}&plain=1"
        headers: {{ X-Api-Key: "${{API_KEY}}" }}
        bearer: "${{BEARER}}"
        sign: {{ dingtalk: {{ secret: "${{DING_SECRET}}" }} }}
        body: {{ text: "{{{{body.eventCode}}}}" }}
  - name: tapd-async
    source: tapd
    match: {{ path: /hooks/tapd }}
    verify: {{ secret: "${{TAPD_SECRET}}" }}
    forward:
      - name: hmac
        url: "http://ci:${{OUTBOUND_PASSWORD}}@{sink_host}/hmac"
        sign: {{ hmac: {{ header: X-Custom-Sig, secret: "${{HMAC_SECRET}}" }} }}
        body: {{ event: "{{{{body.event}}}}" }}
      - name: feishu
        url: "{sink}/feishu"
        sign: {{ feishu: {{ secret: "${{FEISHU_SECRET}}" }} }}
        body: {{ msg_type: text }}
  - name: generic
    match: {{ path: /hooks/generic }}
    verify: {{ token: {{ header: X-My-Token, value: "${{GENERIC_TOKEN}}" }} }}
    forward:
      - name: github
        url: "{sink}/github"
        sign: {{ github: {{ secret: "${{GITHUB_SECRET}}" }} }}
      - name: mixed
        url: "{sink}/services/${{PATH_TOKEN}}"
        headers: {{ X-Mixed: "K ${{MIXED_KEY}} {{{{body.kind}}}}" }}
        query: {{ mixed: "p${{QUERY_TOKEN}}{{{{body.kind}}}}" }}
      - name: flaky
        url: "{flaky}/flaky"
        headers: {{ X-Api-Key: "${{{api_key_var}}}" }}
        retry: {{ max_attempts: 1 }}
"#,
            sink = sink.url(),
            sink_host = sink.addr,
            flaky = flaky.url(),
        )
    };
    let folder = Folder::new(&config("API_KEY"));
    let client = Client::new();
    let mut child = spawn(&folder.config(), &["--no-watch", "--log-format", "json"], &env);
    wait_up(&client, &mut child, admin).await;
    let hook = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let reply = client
        .post_json(&hook("/hooks/codearts"), &[("x-hookrelay-token", env[1].1)], r#"{"eventCode":"MR_CREATED","event":{"id":"e1"}}"#)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = client
        .send(
            "POST",
            &hook("/hooks/tapd"),
            &[("content-type", "application/x-www-form-urlencoded")],
            format!("event=bug%3A%3Acreate&secret={}&title=t", env[6].1),
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let reply = client.post_json(&hook("/hooks/generic"), &[("x-my-token", env[10].1)], r#"{"tapd":{"secret":"x"},"kind":"z"}"#).await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let seen = sink.wait_for(5).await;
    // Values from `${VAR}` inside a URL path and inside templated header and query values.
    let mixed = seen.iter().find(|s| s.uri.starts_with("/services/")).expect("mixed request");
    assert_eq!(mixed.uri, format!("/services/{}?mixed=p{}z", env[13].1, env[15].1));
    assert_eq!(mixed.header("x-mixed"), Some(format!("K {} z", env[14].1).as_str()));
    let (_, routes) = admin_call(&client, admin, env[0].1, "GET", "/api/routes/generic", Value::Null).await;
    assert!(routes.to_string().contains("/services/${PATH_TOKEN}"), "routes show URLs as written: {routes}");
    flaky.wait_for(1).await;

    // The receivers got the real credentials.
    let robot = seen.iter().find(|s| s.uri.starts_with("/robot/send")).expect("robot request");
    assert!(robot.uri.contains(&format!("access_token={}", env[2].1)), "{}", robot.uri);
    assert_eq!(robot.header("x-api-key"), Some(env[3].1));
    assert_eq!(robot.header("authorization"), Some(format!("Bearer {}", env[4].1).as_str()));
    assert_eq!(flaky.seen()[0].header("x-api-key"), Some(env[3].1));
    // Every signature sent.
    let query_value = |uri: &str, name: &str| {
        form_urlencoded::parse(uri.split_once('?').unwrap().1.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned()).unwrap()
    };
    let mut signatures = vec![query_value(&robot.uri, "sign")];
    for (path, header) in [("/hmac", "x-custom-sig"), ("/github", "x-hub-signature-256")] {
        let request = seen.iter().find(|s| s.uri == path).expect(path);
        signatures.push(request.header(header).expect(header).to_string());
    }
    let feishu = seen.iter().find(|s| s.uri == "/feishu").expect("feishu");
    signatures.push(feishu.json()["sign"].as_str().unwrap().to_string());
    let basic = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("ci:{}", env[7].1))
    };
    assert_eq!(seen.iter().find(|s| s.uri == "/hmac").unwrap().header("authorization"), Some(format!("Basic {basic}").as_str()));

    // A credential from `${VAR}` is filled in at send time from the config serving then.
    let token = env[0].1;
    let deliveries =
        |client: Client| async move { admin_call(&client, admin, token, "GET", "/api/deliveries?target=flaky", Value::Null).await.1 };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let flaky_id = loop {
        let found = deliveries(client.clone()).await;
        if found["items"][0]["status"] == "failed" {
            break found["items"][0]["id"].as_str().unwrap().to_string();
        }
        assert!(tokio::time::Instant::now() < deadline, "flaky delivery did not fail: {found}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    folder.write(&config("API_KEY_V2"));
    let (status, reloaded) = admin_call(&client, admin, token, "POST", "/api/reload", Value::Null).await;
    assert_eq!(status, 200, "{reloaded}");
    admin_call(&client, admin, token, "POST", &format!("/api/deliveries/{flaky_id}/retry"), Value::Null).await;
    assert_eq!(flaky.wait_for(2).await[1].header("x-api-key"), Some(env[12].1), "the retry used the fixed credential");

    // Everything the relay wrote or shows.
    let mut written = String::new();
    for path in ["/api/routes", "/api/status", "/api/events", "/api/deliveries", "/metrics"] {
        written.push_str(&admin_call(&client, admin, token, "GET", path, Value::Null).await.1.to_string());
        written.push_str(
            &client.get(&format!("http://127.0.0.1:{admin}{path}"), &[("authorization", &format!("Bearer {token}"))]).await.text(),
        );
    }
    let all = admin_call(&client, admin, token, "GET", "/api/deliveries", Value::Null).await.1;
    assert!(all["items"].as_array().unwrap().len() >= 5, "{all}");
    for delivery in all["items"].as_array().unwrap() {
        let (_, one) =
            admin_call(&client, admin, token, "GET", &format!("/api/deliveries/{}", delivery["id"].as_str().unwrap()), Value::Null).await;
        assert!(!one["attempts"].as_array().unwrap().is_empty(), "{one}");
        written.push_str(&one.to_string());
        let (_, event) =
            admin_call(&client, admin, token, "GET", &format!("/api/events/{}", delivery["event_id"].as_str().unwrap()), Value::Null).await;
        written.push_str(&event.to_string());
    }
    let logs = stop(child);
    assert!(logs.contains("\"request\""), "logs were captured: {logs}");
    written.push_str(&logs);
    for file in std::fs::read_dir(folder.dir.path().join("state")).unwrap() {
        written.push_str(&String::from_utf8_lossy(&std::fs::read(file.unwrap().path()).unwrap()));
    }
    for (name, value) in env.iter().copied() {
        assert!(!written.contains(value), "{name} ({value}) leaked");
    }
    for signature in &signatures {
        assert!(!written.contains(signature.as_str()), "signature {signature} leaked");
    }
    assert!(!written.contains(&basic), "the Basic credential leaked");
}

/// A target that forwards the original body sends it byte for byte, TAPD's `secret` field
/// included (the receiver may check it); the admin API masks the field.
#[tokio::test]
async fn forwarded_original_bodies_keep_their_secret_field_and_the_api_masks_it() {
    let sink = TestSink::start().await;
    let relay = crate::support::Relay::start(&format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0, token: t0ken }}\nroutes:\n  - name: tapd\n    source: tapd\n    match: {{ path: /hooks/tapd }}\n    verify: {{ secret: tapd-field-secret }}\n    forward: [ {{ name: original, url: \"{}/x\" }} ]\n",
        sink.url()
    ))
    .await;
    let body = r#"{"event":"bug::create","secret":"tapd-field-secret","title":"t"}"#;
    let reply = relay.client.post_json(&relay.url("/hooks/tapd"), &[], body).await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    assert_eq!(&sink.wait_for(1).await[0].body[..], body.as_bytes(), "sent byte for byte");
    let event = reply.json()["id"].as_str().unwrap().to_string();
    let auth = [("authorization", "Bearer t0ken")];
    let shown = relay.client.get(&relay.admin_url(&format!("/api/events/{event}")), &auth).await.json();
    assert_eq!(serde_json::from_str::<Value>(shown["body"].as_str().unwrap()).unwrap()["secret"], "[redacted]", "{shown}");
    let delivery = shown["deliveries"][0]["id"].as_str().unwrap();
    let text = relay.client.get(&relay.admin_url(&format!("/api/deliveries/{delivery}")), &auth).await.text();
    assert!(!text.contains("tapd-field-secret") && text.contains("[redacted]"), "{text}");
}

/// A delivery stored for one receiver keeps that receiver: after the config moves the
/// target to another host with other credentials, a retry of the old delivery does not
/// carry the new host's credentials to the old one.
#[cfg(unix)]
#[tokio::test]
async fn a_retry_never_carries_another_receivers_credentials() {
    let env = [
        ("ADMIN", "admin-token-x1"),
        ("TOK_A", "path-token-aaaa"),
        ("KEY_A", "key-aaaa-1234"),
        ("TOK_B", "path-token-bbbb"),
        ("KEY_B", "key-bbbb-5678"),
    ];
    let receiver_a = TestSink::scripted(vec![crate::support::Answer::status_only(503)]).await;
    let receiver_b = TestSink::start().await;
    let (port, admin) = (free_port(), free_port());
    let config = |sink: &TestSink, token: &str, key: &str| {
        format!(
            "listen: 127.0.0.1:{port}\nadmin: {{ listen: 127.0.0.1:{admin}, token: \"${{ADMIN}}\" }}\nstore: {{ path: ./relay.db }}\nroutes:\n  - name: notify\n    match: {{ path: /hooks/n }}\n    forward:\n      - name: robot\n        url: \"{}/hook/${{{token}}}\"\n        headers: {{ X-Api-Key: \"${{{key}}}\" }}\n        retry: {{ max_attempts: 1 }}\n",
            sink.url()
        )
    };
    let folder = Folder::new(&config(&receiver_a, "TOK_A", "KEY_A"));
    let client = Client::new();
    let mut child = spawn(&folder.config(), &["--no-watch"], &env);
    wait_up(&client, &mut child, admin).await;
    let reply = client.post_json(&format!("http://127.0.0.1:{port}/hooks/n"), &[], "{}").await;
    assert_eq!(reply.status, 202);
    let first = receiver_a.wait_for(1).await;
    assert_eq!(first[0].uri, "/hook/path-token-aaaa");
    let token = env[0].1;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let id = loop {
        let (_, found) = admin_call(&client, admin, token, "GET", "/api/deliveries", Value::Null).await;
        if found["items"][0]["status"] == "failed" {
            break found["items"][0]["id"].as_str().unwrap().to_string();
        }
        assert!(tokio::time::Instant::now() < deadline, "{found}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    folder.write(&config(&receiver_b, "TOK_B", "KEY_B"));
    assert_eq!(admin_call(&client, admin, token, "POST", "/api/reload", Value::Null).await.0, 200);
    admin_call(&client, admin, token, "POST", &format!("/api/deliveries/{id}/retry"), Value::Null).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, found) = admin_call(&client, admin, token, "GET", &format!("/api/deliveries/{id}"), Value::Null).await;
        if found["attempts"].as_array().is_some_and(|a| a.len() >= 2) {
            assert!(found["attempts"][1]["error"].as_str().unwrap_or_default().contains("no longer in the target's config"), "{found}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{found}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stop(child);
    let seen_by_a = receiver_a.seen();
    assert_eq!(seen_by_a.len(), 1, "the old receiver got nothing more: {seen_by_a:?}");
    assert!(receiver_b.seen().is_empty());
}

/// A raw `{{{x}}}` value joined onto `upstream:` cannot climb out of the configured path,
/// whatever it hides the dots behind (`#`, `\`, tabs, `%2e`).
#[tokio::test]
async fn upstream_paths_cannot_climb() {
    let upstream = TestSink::start().await;
    let relay = crate::support::Relay::start(&format!(
        "listen: 127.0.0.1:0\nupstream: {}\nroutes:\n  - name: climb\n    match: {{ path: /hooks/climb }}\n    respond: sync\n    forward: [ {{ url: \"upstream:/api/v1/{{{{{{body.p}}}}}}\" }} ]\n",
        upstream.url()
    ))
    .await;
    for p in ["#/../../etc/passwd", "a#/../../admin", "..\\\\..\\\\admin", "%2e%2e/%2e%2e/admin", ".\t./.\t./admin", "ok/../../admin"] {
        let reply = relay.client.post_json(&relay.url("/hooks/climb"), &[], serde_json::json!({ "p": p }).to_string()).await;
        assert_eq!(reply.status, 422, "{p:?}: {}", reply.text());
    }
    let reply = relay.client.post_json(&relay.url("/hooks/climb"), &[], r#"{"p":"items/7"}"#).await;
    assert_eq!(reply.status, 200);
    let paths: Vec<String> = upstream.seen().iter().map(|s| s.uri.clone()).collect();
    assert_eq!(paths, ["/api/v1/items/7"]);
}

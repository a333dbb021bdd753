//! Routes created, changed and deleted through the admin API, the read-only YAML routes,
//! the private-address guard, and the `render` / `test` calls.

use serde_json::{json, Value};

use crate::support::{Relay, TestSink};

const AUTH: [(&str, &str); 1] = [("authorization", "Bearer t0ken")];

fn config(sink: &TestSink) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0, token: t0ken }}\nupstream: {}/service\nroutes:\n  - name: from-yaml\n    match: {{ path: /hooks/yaml }}\n    respond: sync\n    forward:\n      - url: {}/yaml\n        body: {{ ref: '{{{{body.ref}}}}' }}\n",
        sink.url(),
        sink.url()
    )
}

async fn call(relay: &Relay, method: &str, path: &str, body: Value) -> (u16, Value) {
    let text = if body.is_null() { String::new() } else { body.to_string() };
    let reply = relay.client.send(method, &relay.admin_url(path), &[AUTH[0], ("content-type", "application/json")], text).await;
    let json = if reply.body.is_empty() { Value::Null } else { reply.json() };
    (reply.status, json)
}

fn api_route(body_text: &str) -> Value {
    json!({
        "name": "from-api",
        "source": "gitlab",
        "match": { "path": "/hooks/api", "event": "push" },
        "forward": [ { "name": "svc", "url": "upstream:/from-api", "body": { "text": body_text, "ref": "{{body.ref}}" } } ]
    })
}

#[tokio::test]
async fn api_routes_are_created_served_changed_and_deleted() {
    let sink = TestSink::start().await;
    let relay = Relay::start(&config(&sink)).await;
    let (status, created) = call(&relay, "POST", "/api/routes", api_route("v1")).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["origin"], "api");
    let webhook = |relay: &Relay| {
        let url = relay.url("/hooks/api");
        let client = relay.client.clone();
        async move { client.post_json(&url, &[], r#"{"object_kind":"push","ref":"refs/heads/main"}"#).await }
    };
    assert_eq!(webhook(&relay).await.status, 202);
    let seen = sink.wait_for(1).await;
    assert_eq!(seen[0].uri, "/service/from-api");
    assert_eq!(seen[0].json(), json!({ "text": "v1", "ref": "refs/heads/main" }));

    let (status, listed) = call(&relay, "GET", "/api/routes", Value::Null).await;
    assert_eq!(status, 200);
    let origins: Vec<(&str, &str)> =
        listed["routes"].as_array().unwrap().iter().map(|r| (r["name"].as_str().unwrap(), r["origin"].as_str().unwrap())).collect();
    assert_eq!(origins, [("from-yaml", "yaml"), ("from-api", "api")]);

    let (status, _) = call(&relay, "PUT", "/api/routes/from-api", api_route("v2")).await;
    assert_eq!(status, 200);
    assert_eq!(webhook(&relay).await.status, 202);
    assert_eq!(sink.wait_for(2).await[1].json()["text"], "v2");

    let (status, _) = call(&relay, "DELETE", "/api/routes/from-api", Value::Null).await;
    assert_eq!(status, 204);
    assert_eq!(call(&relay, "DELETE", "/api/routes/from-api", Value::Null).await.0, 404);
    let reply = webhook(&relay).await;
    assert_eq!(reply.status, 200, "no route now: proxied to the service");
    assert_eq!(sink.wait_for(3).await[2].uri, "/service/hooks/api");
}

#[tokio::test]
async fn api_routes_survive_a_restart() {
    let sink = TestSink::start().await;
    let relay = Relay::start(&config(&sink)).await;
    assert_eq!(call(&relay, "POST", "/api/routes", api_route("kept")).await.0, 201);
    // A store belongs to one relay: the first must close it and give it up before the next starts.
    relay.running.stop();
    relay.running.relay.engine.store().close().await.unwrap();
    relay.running.relay.store_owner.as_ref().expect("a SQLite store").release();
    let again = hookrelay::app::start(&relay.config_path()).await.unwrap();
    let again = Relay::attach(again);
    let (status, route) = call(&again, "GET", "/api/routes/from-api", Value::Null).await;
    assert_eq!(status, 200, "{route}");
    assert_eq!(route["origin"], "api");
}

#[tokio::test]
async fn yaml_routes_are_read_only_and_bad_routes_are_refused() {
    let sink = TestSink::start().await;
    let relay = Relay::start(&config(&sink)).await;
    let mut clash = api_route("x");
    clash["name"] = json!("from-yaml");
    assert_eq!(call(&relay, "POST", "/api/routes", clash.clone()).await.0, 409);
    assert_eq!(call(&relay, "PUT", "/api/routes/from-yaml", clash).await.0, 409);
    assert_eq!(call(&relay, "DELETE", "/api/routes/from-yaml", Value::Null).await.0, 409);

    let mut broken = api_route("x");
    broken["forward"][0]["url"] = json!("ftp://example.com/x");
    broken["match"]["body"] = json!([{ "path": "$.ref", "regex": "(" }]);
    let (status, answer) = call(&relay, "POST", "/api/routes", broken).await;
    assert_eq!(status, 422, "{answer}");
    let detail = answer["detail"].to_string();
    assert!(detail.contains("route.forward[0].url") && detail.contains("route.match.body[0].regex"), "{detail}");

    let mut env_probe = api_route("x");
    env_probe["forward"][0]["url"] = json!("upstream:/${HOME}");
    assert_eq!(call(&relay, "POST", "/api/routes", env_probe).await.0, 201, "accepted, but ${{HOME}} is not expanded");
    let (_, rendered) = call(&relay, "POST", "/api/routes/from-api/render", json!({ "body": { "object_kind": "push" } })).await;
    assert!(rendered["requests"][0]["url"].as_str().unwrap().ends_with("/service/$%7BHOME%7D"), "{rendered}");
}

#[tokio::test]
async fn api_routes_may_not_target_private_addresses() {
    let sink = TestSink::start().await;
    let relay = Relay::start(&config(&sink)).await;
    for url in [format!("{}/x", sink.url()), "http://localhost:9/x".to_string(), "http://169.254.169.254/latest/meta-data".to_string()] {
        let mut route = api_route("x");
        route["forward"][0]["url"] = json!(url);
        let (status, answer) = call(&relay, "POST", "/api/routes", route).await;
        assert_eq!(status, 422, "{url}: {answer}");
        assert!(answer["detail"].to_string().contains("private"), "{answer}");
    }
    assert!(sink.seen().is_empty());

    // With outbound.allow_private the operator opts in.
    let open = Relay::start(&config(&sink).replace("upstream:", "outbound: { allow_private: true }\nupstream:")).await;
    let mut route = api_route("x");
    route["forward"][0]["url"] = json!(format!("{}/private-ok", sink.url()));
    assert_eq!(call(&open, "POST", "/api/routes", route).await.0, 201);
    assert_eq!(open.client.post_json(&open.url("/hooks/api"), &[], r#"{"object_kind":"push"}"#).await.status, 202);
    assert_eq!(sink.wait_for(1).await[0].uri, "/private-ok");
}

#[tokio::test]
async fn render_and_test_calls() {
    let sink = TestSink::start().await;
    let relay = Relay::start(&config(&sink)).await;
    let (status, rendered) = call(&relay, "POST", "/api/routes/from-yaml/render", json!({ "body": { "ref": "refs/heads/x" } })).await;
    assert_eq!(status, 200, "{rendered}");
    assert_eq!(rendered["matched"], true);
    assert_eq!(rendered["requests"][0]["body"], json!({ "ref": "refs/heads/x" }));
    assert!(sink.seen().is_empty(), "render sends nothing");

    let (status, tested) = call(&relay, "POST", "/api/routes/from-yaml/test", Value::Null).await;
    assert_eq!(status, 200, "{tested}");
    assert_eq!(tested["attempts"][0]["status"], 200);
    assert_eq!(tested["attempts"][0]["success"], true);
    let seen = sink.wait_for(1).await;
    assert_eq!(seen[0].uri, "/yaml");
    assert_eq!(seen[0].json(), json!({ "ref": null }), "the default test event is {{\"event\":\"ping\"}}: no ref");
    assert_eq!(call(&relay, "POST", "/api/routes/nope/render", Value::Null).await.0, 404);
}

//! Requests no route takes go to `upstream` untouched.

use serde_json::json;

use crate::support::{Answer, Relay, TestSink};

#[tokio::test]
async fn put_with_query_passes_through_and_418_comes_back() {
    let upstream = TestSink::scripted(vec![Answer {
        status: 418,
        headers: vec![("x-teapot".into(), "short and stout".into())],
        body: "I'm a teapot".into(),
    }])
    .await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nupstream: {}\nroutes:\n  - name: only\n    match: {{ path: /hooks/only }}\n    forward:\n      - url: {}/x\n",
        upstream.url(),
        upstream.url()
    );
    let relay = Relay::start(&yaml).await;
    let reply = relay
        .client
        .send(
            "PUT",
            &relay.url("/api/items/42?force=true&tag=a%20b"),
            &[("content-type", "text/plain"), ("x-custom", "kept"), ("connection", "keep-alive, x-hop"), ("x-hop", "dropped")],
            "body bytes \u{1F680}",
        )
        .await;
    assert_eq!(reply.status, 418);
    assert_eq!(reply.text(), "I'm a teapot");
    assert_eq!(reply.headers.get("x-teapot").unwrap(), "short and stout");
    let seen = upstream.wait_for(1).await;
    let request = &seen[0];
    assert_eq!(request.method, "PUT");
    assert_eq!(request.uri, "/api/items/42?force=true&tag=a%20b");
    assert_eq!(&request.body[..], "body bytes \u{1F680}".as_bytes());
    assert_eq!(request.header("x-custom"), Some("kept"));
    assert_eq!(request.header("content-type"), Some("text/plain"));
    assert_eq!(request.header("x-hop"), None, "headers named by Connection are hop-by-hop");
    assert_eq!(request.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(request.header("x-forwarded-proto"), Some("http"));
    assert_eq!(request.header("x-forwarded-host"), Some(relay.running.ingress_addr.to_string().as_str()));
}

#[tokio::test]
async fn route_path_that_does_not_match_conditions_is_proxied_with_its_body() {
    let upstream = TestSink::start().await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nupstream: {}\nroutes:\n  - name: prod-only\n    match: {{ path: /hooks/x, headers: {{ X-Env: prod }} }}\n    forward:\n      - url: {}/routed\n",
        upstream.url(),
        upstream.url()
    );
    let relay = Relay::start(&yaml).await;
    let reply = relay.client.post_json(&relay.url("/hooks/x"), &[("x-env", "dev")], r#"{"a":1}"#).await;
    assert_eq!(reply.status, 200);
    let seen = upstream.wait_for(1).await;
    assert_eq!(seen[0].uri, "/hooks/x");
    assert_eq!(&seen[0].body[..], br#"{"a":1}"#);
}

#[tokio::test]
async fn no_upstream_means_404_json() {
    let relay = Relay::start("listen: 127.0.0.1:0\nroutes: []\n").await;
    let reply = relay.client.get(&relay.url("/anything"), &[]).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.json(), json!({ "error": "no route matched" }));
}

#[tokio::test]
async fn upstream_down_is_502_json() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let relay = Relay::start(&format!("listen: 127.0.0.1:0\nupstream: http://{closed}\n")).await;
    let reply = relay.client.get(&relay.url("/x"), &[]).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.json()["error"], "upstream unavailable");
}

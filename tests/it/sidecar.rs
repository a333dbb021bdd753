//! Requests no route takes go to `upstream` untouched.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::json;

use crate::support::{Answer, Relay, TestSink};

#[tokio::test]
async fn put_with_query_passes_through_and_418_comes_back() {
    let upstream = TestSink::scripted(vec![Answer {
        status: 418,
        headers: vec![("x-teapot".into(), "short and stout".into())],
        body: "I'm a teapot".into(),
        ..Default::default()
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
            &[
                ("content-type", "text/plain"),
                ("x-custom", "kept"),
                ("connection", "keep-alive, x-hop"),
                ("x-hop", "dropped"),
                ("proxy-connection", "keep-alive"),
            ],
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
    assert_eq!(request.header("proxy-connection"), None);
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

/// A plain HTTP/1 service that answers each request with the port the request came from
/// (so a test sees which connection carried it) and closes every connection silently
/// `keep_for` after accepting it, as services with a short keep-alive timeout do.
async fn service_closing_connections_after(keep_for: std::time::Duration) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let service = hyper::service::service_fn(move |_request: http::Request<hyper::body::Incoming>| async move {
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from(
                    peer.port().to_string(),
                ))))
            });
            let connection = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::spawn(async move {
                let _ = tokio::time::timeout(keep_for, connection).await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn a_senders_connection_keeps_one_service_connection_and_replaces_it_when_the_service_closes_it() {
    let (service, accepted) = service_closing_connections_after(std::time::Duration::from_millis(150)).await;
    let relay = Relay::start(&format!("listen: 127.0.0.1:0\nupstream: http://{service}\n")).await;
    // One client, so one connection to the relay (it is reused within its idle time).
    let first = relay.client.get(&relay.url("/a"), &[]).await;
    let second = relay.client.get(&relay.url("/b"), &[]).await;
    assert_eq!((first.status, second.status), (200, 200));
    assert_eq!(first.text(), second.text(), "both requests went over the same service connection");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    // The service has closed that connection meanwhile: the next request makes a new one.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let third = relay.client.get(&relay.url("/c"), &[]).await;
    assert_eq!(third.status, 200, "{}", third.text());
    assert_ne!(third.text(), first.text());
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_answer_with_connection_close_does_not_fail_the_next_request() {
    let upstream = TestSink::scripted(vec![Answer {
        status: 200,
        headers: vec![("connection".into(), "close".into())],
        body: "closing".into(),
        ..Default::default()
    }])
    .await;
    let relay = Relay::start(&format!("listen: 127.0.0.1:0\nupstream: {}\n", upstream.url())).await;
    let first = relay.client.get(&relay.url("/a"), &[]).await;
    assert_eq!((first.status, first.text().as_str()), (200, "closing"));
    assert_eq!(first.headers.get("connection"), None, "the service's hop-by-hop header is not passed on");
    let second = relay.client.get(&relay.url("/b"), &[]).await;
    assert_eq!((second.status, second.text().as_str()), (200, "{}"));
    assert_eq!(upstream.wait_for(2).await.len(), 2);
}

#[tokio::test]
async fn a_reload_that_moves_the_upstream_moves_open_connections_too() {
    let old = TestSink::start().await;
    let new = TestSink::start().await;
    let config = |upstream: &TestSink| format!("listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nupstream: {}\n", upstream.url());
    let relay = Relay::start(&config(&old)).await;
    assert_eq!(relay.client.get(&relay.url("/before"), &[]).await.status, 200);
    std::fs::write(relay.config_path(), config(&new)).unwrap();
    relay.wait_for_generation(2).await;
    assert_eq!(relay.client.get(&relay.url("/after"), &[]).await.status, 200);
    assert_eq!(old.seen().iter().map(|s| s.uri.clone()).collect::<Vec<_>>(), ["/before"]);
    assert_eq!(new.wait_for(1).await[0].uri, "/after");
}

/// A service that answers the first request on each connection and drops the connection
/// on the second without answering, as one whose keep-alive ran out just then does.
async fn service_dropping_second_requests() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let served = Arc::new(AtomicUsize::new(0));
            let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let served = served.clone();
                async move {
                    if served.fetch_add(1, Ordering::SeqCst) == 1 {
                        return Err("the connection is gone".to_string());
                    }
                    let body = format!("{} {}", request.method(), request.uri());
                    Ok(http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body))))
                }
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), service));
        }
    });
    addr
}

#[tokio::test]
async fn a_bodiless_safe_request_goes_again_when_the_service_drops_a_kept_connection() {
    let service = service_dropping_second_requests().await;
    let relay = Relay::start(&format!("listen: 127.0.0.1:0\nupstream: http://{service}\n")).await;
    assert_eq!(relay.client.get(&relay.url("/first"), &[]).await.text(), "GET /first");
    let again = relay.client.get(&relay.url("/second"), &[]).await;
    assert_eq!((again.status, again.text().as_str()), (200, "GET /second"), "sent again on a new connection");
    // The same happens to a POST (the second request on the new connection): it may have
    // had its effect, so it is not sent twice.
    let lost = relay.client.post_json(&relay.url("/third"), &[], "{}").await;
    assert_eq!(lost.status, 502, "{}", lost.text());
    assert_eq!(relay.client.get(&relay.url("/fourth"), &[]).await.text(), "GET /fourth");
    // Nor a DELETE: the service may have acted on it before it closed.
    let deleted = relay.client.send("DELETE", &relay.url("/fifth"), &[], "").await;
    assert_eq!(deleted.status, 502, "{}", deleted.text());
}

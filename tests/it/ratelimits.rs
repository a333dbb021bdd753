//! Rate limits on real sockets: async deliveries wait and none is lost; sync routes and
//! ingress limits answer 429 with Retry-After.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{Answer, Relay, TestSink};

#[tokio::test]
async fn async_deliveries_wait_for_permits_and_none_is_lost() {
    let sink = TestSink::start().await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nroutes:\n  - name: limited\n    match: {{ path: /hooks/limited }}\n    forward:\n      - url: {}/robot\n        rate_limit: {{ per_second: 20, burst: 1 }}\n        body: {{ n: '{{{{json body.n}}}}' }}\n",
        sink.url()
    );
    let relay = Relay::start(&yaml).await;
    let started = Instant::now();
    for n in 0..30 {
        let reply = relay.client.post_json(&relay.url("/hooks/limited"), &[], json!({ "n": n }).to_string()).await;
        assert_eq!(reply.status, 202);
    }
    let seen = sink.wait_for(30).await;
    let elapsed = started.elapsed();
    let mut numbers: Vec<i64> = seen.iter().map(|s| s.json()["n"].as_i64().unwrap()).collect();
    numbers.sort();
    assert_eq!(numbers, (0..30).collect::<Vec<_>>());
    // 30 permits at 20/s with no burst cannot be spent in less than 29 × 50 ms.
    assert!(elapsed >= Duration::from_millis(1450), "the limiter was not applied: {elapsed:?}");
}

#[tokio::test]
async fn sync_route_over_its_limit_answers_429_with_retry_after() {
    let sink = TestSink::start().await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nroutes:\n  - name: sync-limited\n    respond: sync\n    match: {{ path: /hooks/s }}\n    forward:\n      - url: {}/s\n        rate_limit: {{ per_minute: 1, burst: 1, max_wait: 100ms }}\n",
        sink.url()
    );
    let relay = Relay::start(&yaml).await;
    assert_eq!(relay.client.post_json(&relay.url("/hooks/s"), &[], "{}").await.status, 200);
    let reply = relay.client.post_json(&relay.url("/hooks/s"), &[], "{}").await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.json(), json!({ "error": "rate limit exceeded" }));
    let retry_after: u64 = reply.headers.get("retry-after").unwrap().to_str().unwrap().parse().unwrap();
    assert!((59..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(sink.seen().len(), 1);
}

#[tokio::test]
async fn ingress_limit_answers_429_per_sender_and_stores_nothing() {
    let sink = TestSink::start().await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nroutes:\n  - name: tenants\n    match: {{ path: /hooks/t }}\n    ingress_limit: {{ per_minute: 2, burst: 2, by: 'header:X-Tenant' }}\n    forward:\n      - url: {}/t\n",
        sink.url()
    );
    let relay = Relay::start(&yaml).await;
    let send = |tenant: &'static str| {
        let relay = &relay;
        async move { relay.client.post_json(&relay.url("/hooks/t"), &[("x-tenant", tenant)], "{}").await }
    };
    assert_eq!(send("a").await.status, 202);
    assert_eq!(send("a").await.status, 202);
    let limited = send("a").await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.headers.get("retry-after").unwrap(), "30");
    assert_eq!(send("b").await.status, 202, "another tenant has its own budget");
    sink.wait_for(3).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(sink.seen().len(), 3, "the limited request was neither stored nor sent");
}

#[tokio::test]
async fn a_429_with_retry_after_is_honoured_and_the_event_still_arrives() {
    let sink = TestSink::scripted(vec![Answer::too_many_requests("1")]).await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nroutes:\n  - name: r\n    match: {{ path: /hooks/r }}\n    forward:\n      - url: {}/r\n        retry: {{ max_attempts: 1, initial: 10ms }}\n        rate_limit: {{ per_second: 50 }}\n",
        sink.url()
    );
    let relay = Relay::start(&yaml).await;
    let started = Instant::now();
    assert_eq!(relay.client.post_json(&relay.url("/hooks/r"), &[], "{}").await.status, 202);
    let seen = sink.wait_for(2).await;
    assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After: 1 was not honoured");
    assert_eq!(seen.len(), 2, "max_attempts 1 still allowed the retry: a 429 does not use up an attempt");
}

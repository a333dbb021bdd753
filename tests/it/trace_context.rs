//! W3C Trace Context: a sender's trace goes on through every request the relay sends (a
//! span of its own each), deliveries start one when the sender had none, and the service
//! beside the relay never gets a trace it was not sent.

use crate::support::{Relay, TestSink};

const SENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn fields(traceparent: &str) -> Vec<&str> {
    let fields: Vec<&str> = traceparent.split('-').collect();
    assert_eq!((fields.len(), fields[0], fields[1].len(), fields[2].len()), (4, "00", 32, 16), "{traceparent}");
    fields
}

#[tokio::test]
async fn a_senders_trace_goes_on_and_deliveries_start_one_when_there_is_none() {
    let sink = TestSink::start().await;
    let service = TestSink::start().await;
    let relay = Relay::start(&format!(
        r#"listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
upstream: {service}
routes:
  - name: hook
    match: {{ path: /hooks/in }}
    forward:
      - {{ name: a, url: "{sink}/a" }}
      - {{ name: b, url: "{sink}/b" }}
"#,
        sink = sink.url(),
        service = service.url()
    ))
    .await;
    let traced = [("traceparent", SENT), ("tracestate", "vendor=x"), ("tracestate", "other=y")];
    assert_eq!(relay.client.post_json(&relay.url("/hooks/in"), &traced, "{}").await.status, 202);
    let seen = sink.wait_for(2).await;
    let spans: Vec<String> = seen
        .iter()
        .map(|request| {
            let parent = fields(request.header("traceparent").expect("a traceparent"));
            assert_eq!((parent[1], parent[3]), ("4bf92f3577b34da6a3ce929d0e0e4736", "01"), "the same trace");
            assert_eq!(request.header("tracestate"), Some("vendor=x,other=y"), "several tracestate headers are one list");
            parent[2].to_string()
        })
        .collect();
    assert!(spans.iter().all(|span| span != "00f067aa0ba902b7") && spans[0] != spans[1], "a span per request: {spans:?}");
    // The delivery log records it.
    let deliveries = relay.client.get(&relay.admin_url("/api/deliveries?route=hook"), &[]).await.json();
    let recorded = deliveries["items"][0]["request"]["headers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h[0] == "traceparent" && h[1].as_str().unwrap().contains("4bf92f3577b34da6a3ce929d0e0e4736"));
    assert!(recorded, "{deliveries}");
    // An attempt's own span id is not worth a copy of the request's headers in the store.
    let db = rusqlite::Connection::open_with_flags(relay.dir.path().join("data/hookrelay.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let own_headers: i64 = db.query_row("SELECT count(*) FROM attempts WHERE request_headers IS NOT NULL", [], |row| row.get(0)).unwrap();
    assert_eq!(own_headers, 0, "attempts store only what differs from the delivery's request");

    // No trace, or one that is not valid: the deliveries start their own (one per event).
    for sent in [None, Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01")] {
        let mut headers: Vec<(&str, &str)> = sent.map(|value| ("traceparent", value)).into_iter().collect();
        headers.push(("tracestate", "orphan=1"));
        assert_eq!(relay.client.post_json(&relay.url("/hooks/in"), &headers, "{}").await.status, 202);
    }
    let seen = sink.wait_for(6).await;
    let started: Vec<String> = seen[2..].iter().map(|r| fields(r.header("traceparent").unwrap())[1].to_string()).collect();
    assert!(seen[2..].iter().all(|r| r.header("tracestate").is_none()), "a tracestate goes only with the sender's own trace");
    assert!(started.iter().all(|id| id != "00000000000000000000000000000000"));
    let mut distinct = started.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 2, "one trace per event, shared by its deliveries: {started:?}");

    // Pass-through: a trace the sender started goes on; none is started.
    assert_eq!(relay.client.post_json(&relay.url("/service/x"), &traced, "{}").await.status, 200);
    assert_eq!(relay.client.post_json(&relay.url("/service/y"), &[], "{}").await.status, 200);
    let proxied = service.wait_for(2).await;
    let parent = fields(proxied[0].header("traceparent").unwrap());
    assert_eq!(parent[1], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(parent[2], "00f067aa0ba902b7");
    assert_eq!(proxied[0].header("tracestate"), Some("vendor=x"));
    assert_eq!(proxied[1].header("traceparent"), None, "the service's own traffic gets no trace it was not sent");
}

#[tokio::test]
async fn a_target_traceparent_that_is_not_valid_is_replaced_by_the_relays() {
    let sink = TestSink::start().await;
    let relay = Relay::start(&format!(
        r#"listen: 127.0.0.1:0
routes:
  - name: hook
    match: {{ path: /hooks/in }}
    forward:
      - {{ name: own, url: "{sink}/own", headers: {{ traceparent: "{{{{body.tp}}}}" }} }}
"#,
        sink = sink.url()
    ))
    .await;
    let valid = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    for tp in ["not-valid", "", "00-00000000000000000000000000000000-b7ad6b7169203331-01", valid] {
        let body = serde_json::json!({ "tp": tp }).to_string();
        assert_eq!(relay.client.post_json(&relay.url("/hooks/in"), &[], body).await.status, 202);
    }
    let seen = sink.wait_for(4).await;
    for request in &seen {
        let sent = request.header("traceparent").expect("a traceparent");
        let parts = fields(sent);
        assert!(parts[1] != "00000000000000000000000000000000" && parts[3].len() == 2, "a valid traceparent: {sent}");
    }
    let traces: Vec<&str> = seen.iter().map(|r| fields(r.header("traceparent").unwrap())[1]).collect();
    assert!(traces.contains(&"0af7651916cd43dd8448eb211c80319c"), "a valid trace of the target's own is kept: {traces:?}");
    let own = seen.iter().find(|r| r.header("traceparent").unwrap().contains("0af7651916cd43dd8448eb211c80319c")).unwrap();
    assert_ne!(fields(own.header("traceparent").unwrap())[2], "b7ad6b7169203331", "with a span of the relay's own");
}

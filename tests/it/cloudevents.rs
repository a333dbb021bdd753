//! CloudEvents (HTTP binding 1.0) in and out, checked with the official SDK: what the
//! relay sends parses as the event it should be, in both modes, and the SDK's own output
//! is read on the way in (`source: cloudevents`, `ce` and `data` in templates, dedupe on
//! `source` + `id`).

use std::time::Duration;

use cloudevents::{AttributesReader, Data, EventBuilder, EventBuilderV10};
use serde_json::{json, Value};

use crate::support::{Relay, TestSink};

fn event_of(seen: &crate::support::Seen) -> cloudevents::Event {
    cloudevents::binding::http::to_event(&seen.headers, seen.body.to_vec())
        .unwrap_or_else(|err| panic!("not a CloudEvent ({err}): {seen:?}"))
}

#[tokio::test]
async fn a_target_sends_the_rendered_body_as_a_cloudevent_in_either_mode() {
    let sink = TestSink::start().await;
    let url = sink.url();
    let relay = Relay::start(&format!(
        r#"listen: 127.0.0.1:0
routes:
  - name: pushes
    match: {{ path: /hooks/push }}
    forward:
      - name: binary
        url: {url}/binary
        body: {{ repo: "{{{{body.repo}}}}", commits: "{{{{len body.commits}}}}" }}
        cloudevents: {{ type: "com.example.{{{{body.kind}}}}", source: "/hookrelay/{{{{route}}}}", subject: "{{{{body.ref}}}}" }}
      - name: structured
        url: {url}/structured
        body: {{ repo: "{{{{body.repo}}}}", commits: "{{{{len body.commits}}}}" }}
        cloudevents: {{ mode: structured, type: "com.example.{{{{body.kind}}}}", source: "/hookrelay/{{{{route}}}}", subject: "{{{{body.missing}}}}" }}
      - name: text
        url: {url}/text
        content_type: text
        body: "{{{{body.repo}}}} 100% done"
        cloudevents: {{ mode: structured, type: t, source: s }}
"#
    ))
    .await;
    let payload = json!({"kind": "push", "ref": "refs/heads/main", "repo": "web", "commits": [1, 2]});
    let reply = relay.client.post_json(&relay.url("/hooks/push"), &[], payload.to_string()).await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let event_id = reply.json()["id"].as_str().unwrap().to_string();
    let seen = sink.wait_for(3).await;
    let by_path = |path: &str| seen.iter().find(|s| s.uri == path).unwrap_or_else(|| panic!("nothing at {path}: {seen:?}"));

    let binary = by_path("/binary");
    assert!(binary.header("ce-specversion").is_some() && binary.header("content-type") == Some("application/json"));
    let event = event_of(binary);
    assert_eq!(event.id(), format!("{event_id}.binary"), "the id is the delivery's Idempotency-Key");
    assert_eq!(binary.header("idempotency-key"), Some(event.id()));
    assert_eq!((event.ty(), event.source().as_str()), ("com.example.push", "/hookrelay/pushes"));
    assert_eq!(event.subject(), Some("refs/heads/main"));
    assert_eq!(event.datacontenttype(), Some("application/json"));
    assert!(event.time().is_some(), "time is the receipt time");
    // In binary mode the SDK hands the body over as bytes: they are the rendered JSON.
    let Some(Data::Binary(bytes)) = event.data() else { panic!("{event}") };
    assert_eq!(serde_json::from_slice::<Value>(bytes).unwrap(), json!({"repo": "web", "commits": 2}));

    let structured = by_path("/structured");
    assert_eq!(structured.header("content-type"), Some("application/cloudevents+json; charset=utf-8"));
    let event = event_of(structured);
    assert_eq!(event.id(), format!("{event_id}.structured"));
    assert_eq!(event.subject(), None, "a subject that renders empty is left out");
    assert_eq!(event.data(), Some(&Data::Json(json!({"repo": "web", "commits": 2}))));
    let time = event.time().unwrap();
    assert_eq!(event_of(binary).time(), Some(time), "both carry the same receipt time");

    let text = event_of(by_path("/text"));
    assert_eq!(text.datacontenttype(), Some("text/plain; charset=utf-8"));
    assert_eq!(text.data(), Some(&Data::String("web 100% done".into())));
}

#[tokio::test]
async fn the_sdks_events_are_read_in_both_modes_with_ce_data_and_dedupe() {
    let sink = TestSink::start().await;
    let relay = Relay::start(&format!(
        r#"listen: 127.0.0.1:0
routes:
  - name: knative
    source: cloudevents
    dedupe: 1h
    match: {{ path: /hooks/ce, event: "com.example.*", body: [ {{ path: $.ref, exists: true }} ] }}
    forward:
      - url: {}/got
        body: {{ event: "{{{{event}}}}", ref: "{{{{data.ref}}}}", ext: "{{{{ce.team}}}}", source: "{{{{ce.source}}}}", delivery: "{{{{delivery_id}}}}" }}
  - name: structured
    source: cloudevents
    dedupe: 1h
    match: {{ path: /hooks/ce-structured, event: "com.example.*" }}
    forward:
      - url: {}/got
        body: {{ event: "{{{{event}}}}", ref: "{{{{data.ref}}}}", ext: "{{{{ce.team}}}}", source: "{{{{ce.source}}}}", delivery: "{{{{delivery_id}}}}" }}
"#,
        sink.url(),
        sink.url()
    ))
    .await;
    let event = EventBuilderV10::new()
        .id("evt 1")
        .source("https://git.example.com/web")
        .ty("com.example.push")
        .extension("team", "platform")
        .data("application/json", json!({"ref": "refs/heads/main"}))
        .build()
        .unwrap();
    // Binary mode, as the SDK writes it.
    let request: http::Request<Option<Vec<u8>>> = http::Request::try_from(event.clone()).unwrap();
    let headers: Vec<(String, String)> =
        request.headers().iter().map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_string())).collect();
    let header_refs: Vec<(&str, &str)> = headers.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
    let body = request.into_body().unwrap();
    for _ in 0..2 {
        let reply = relay.client.send("POST", &relay.url("/hooks/ce"), &header_refs, body.clone()).await;
        assert!(reply.status == 202 || reply.status == 200, "{}: {}", reply.status, reply.text());
    }
    // Structured mode: the SDK's JSON event format.
    let envelope = serde_json::to_vec(&event).unwrap();
    for _ in 0..2 {
        let reply = relay
            .client
            .send("POST", &relay.url("/hooks/ce-structured"), &[("content-type", "application/cloudevents+json")], envelope.clone())
            .await;
        assert!(reply.status == 202 || reply.status == 200, "{}: {}", reply.status, reply.text());
    }
    let seen = sink.wait_for(2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sink.seen().len(), 2, "each repeat of source + id was dropped: {:?}", sink.seen());
    let expected = json!({
        "event": "com.example.push",
        "ref": "refs/heads/main",
        "ext": "platform",
        "source": "https://git.example.com/web",
        "delivery": r#"["https://git.example.com/web","evt 1"]"#,
    });
    for got in &seen {
        assert_eq!(got.json(), expected, "{got:?}");
    }
}

#[tokio::test]
async fn the_validation_handshake_answers_allowed_origins_only() {
    let sink = TestSink::start().await;
    let relay = Relay::start(&format!(
        r#"listen: 127.0.0.1:0
routes:
  - name: events
    source: cloudevents
    match: {{ path: /hooks/events }}
    verify: {{ cloudevents_origins: [eventemitter.example.com] }}
    ingress_limit: {{ per_minute: 120 }}
    forward:
      - url: {}/got
  - name: plain
    match: {{ path: /hooks/plain }}
    forward:
      - url: {}/got
"#,
        sink.url(),
        sink.url()
    ))
    .await;
    let options = |path: &str, origin: &'static str| {
        let url = relay.url(path);
        let client = relay.client.clone();
        async move { client.send("OPTIONS", &url, &[("webhook-request-origin", origin), ("webhook-request-rate", "600")], "").await }
    };
    let granted = options("/hooks/events", "eventemitter.example.com").await;
    assert_eq!(granted.status, 200, "{}", granted.text());
    assert_eq!(granted.headers.get("webhook-allowed-origin").unwrap(), "eventemitter.example.com");
    assert_eq!(granted.headers.get("webhook-allowed-rate").unwrap(), "120", "the route's own limit, per minute");
    assert_eq!(granted.headers.get("allow").unwrap(), "POST");
    let refused = options("/hooks/events", "intruder.example.net").await;
    assert_eq!(refused.status, 403);
    assert!(refused.headers.get("webhook-allowed-origin").is_none(), "no consent to read into a refusal");
    let not_opted = options("/hooks/plain", "eventemitter.example.com").await;
    assert!(not_opted.headers.get("webhook-allowed-origin").is_none(), "a route that does not opt in gives no consent");
    assert!(sink.seen().is_empty());
}

#[tokio::test]
async fn a_batch_is_taken_entry_by_entry_and_stored_whole_or_not_at_all() {
    let sink = TestSink::start().await;
    let relay = Relay::start(&format!(
        r#"listen: 127.0.0.1:0
routes:
  - name: batched
    source: cloudevents
    dedupe: 1h
    match: {{ path: /hooks/batch, event: "com.example.*" }}
    verify: {{ token: {{ field: $.data.token, value: s3cret }} }}
    forward:
      - url: {}/got
        body: {{ event: "{{{{event}}}}", n: "{{{{data.n}}}}" }}
  - name: answering
    source: cloudevents
    respond: sync
    match: {{ path: /hooks/sync-batch }}
    forward:
      - url: {}/sync
"#,
        sink.url(),
        sink.url()
    ))
    .await;
    let event = |id: &str, n: i64, token: &str| {
        EventBuilderV10::new()
            .id(id)
            .source("https://shop.example.com")
            .ty("com.example.order")
            .data("application/json", json!({ "n": n, "token": token }))
            .build()
            .unwrap()
    };
    let post = |path: &'static str, events: Vec<cloudevents::Event>| {
        let body = serde_json::to_vec(&events).unwrap();
        let url = relay.url(path);
        let client = relay.client.clone();
        async move { client.send("POST", &url, &[("content-type", "application/cloudevents-batch+json")], body).await }
    };
    let batch = vec![event("1", 1, "s3cret"), event("2", 2, "s3cret"), event("3", 3, "s3cret")];
    let reply = post("/hooks/batch", batch.clone()).await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let entries = reply.json()["entries"].as_array().cloned().unwrap();
    assert_eq!(entries.len(), 3);
    assert!(
        entries.iter().all(|entry| entry["ids"].as_array().map(Vec::len) == Some(1) && entry["routes"] == json!(["batched"])),
        "{entries:?}"
    );
    let seen = sink.wait_for(3).await;
    let mut numbers: Vec<i64> = seen.iter().map(|s| s.json()["n"].as_i64().unwrap()).collect();
    numbers.sort();
    assert_eq!(numbers, [1, 2, 3]);
    assert!(seen.iter().all(|s| s.json()["event"] == "com.example.order"));

    // The same batch again: every entry is a repeat of its source + id.
    let again = post("/hooks/batch", batch).await;
    assert_eq!(again.status, 202, "{}", again.text());
    assert!(
        again.json()["entries"].as_array().unwrap().iter().all(|entry| entry["duplicates"].as_array().map(Vec::len) == Some(1)),
        "{}",
        again.text()
    );

    // One entry that fails verification refuses the whole batch: nothing of it is stored.
    let mixed = post("/hooks/batch", vec![event("4", 4, "s3cret"), event("5", 5, "wrong")]).await;
    assert_eq!(mixed.status, 401, "{}", mixed.text());
    let synced = post("/hooks/sync-batch", vec![event("6", 6, "s3cret")]).await;
    assert_eq!(synced.status, 422, "{}", synced.text());
    assert_eq!(synced.json()["detail"]["route"], "answering");
    let broken =
        relay.client.send("POST", &relay.url("/hooks/batch"), &[("content-type", "application/cloudevents-batch+json")], "{}").await;
    assert_eq!(broken.status, 400, "{}", broken.text());
    let empty = post("/hooks/batch", Vec::new()).await;
    assert_eq!(empty.status, 404, "an empty batch matches nothing: {}", empty.text());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sink.seen().len(), 3, "{:?}", sink.seen());
}

#[tokio::test]
async fn malformed_batches_and_mixed_signals_are_refused_or_read_by_the_content_type() {
    let sink = TestSink::start().await;
    let relay = Relay::start(&format!(
        r#"listen: 127.0.0.1:0
routes:
  - name: by-type
    source: cloudevents
    match: {{ path: /hooks/ce, event: "com.example.*" }}
    forward:
      - url: {url}/got
        body: {{ type: "{{{{ce.type}}}}" }}
  - name: rewrap
    source: cloudevents
    respond: sync
    match: {{ path: /hooks/rewrap }}
    forward:
      - url: {url}/rewrapped
        cloudevents: {{ mode: binary, type: relay.wrapped, source: /relay }}
"#,
        url = sink.url()
    ))
    .await;
    let batch = |body: String| {
        let url = relay.url("/hooks/ce");
        let client = relay.client.clone();
        async move { client.send("POST", &url, &[("content-type", "application/cloudevents-batch+json")], body).await }
    };
    let entry = json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "com.example.a"});
    let too_many = format!("[{}]", vec![entry.to_string(); 1001].join(","));
    let refused = batch(too_many).await;
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert!(refused.json()["detail"].as_str().unwrap().contains("at most 1000"));
    for (bad, why) in
        [(json!([entry, "str"]), "entry 1: not a JSON object"), (json!([{"specversion": "1.0", "source": "/s", "type": "t"}]), "`id`")]
    {
        let reply = batch(bad.to_string()).await;
        assert_eq!(reply.status, 400, "{bad}: {}", reply.text());
        assert!(reply.json()["detail"].as_str().unwrap().contains(why), "{}", reply.text());
    }
    // A `cloudevents` route takes CloudEvents only, and says what is missing.
    let plain = relay.client.post_json(&relay.url("/hooks/rewrap"), &[], r#"{"type":"com.example.x"}"#).await;
    assert_eq!(plain.status, 400, "{}", plain.text());
    assert!(plain.json()["detail"].as_str().unwrap().contains("not a CloudEvent"), "{}", plain.text());
    let binary = relay
        .client
        .post_json(&relay.url("/hooks/rewrap"), &[("ce-specversion", "1.0"), ("ce-type", "com.example.x"), ("ce-source", "/s")], "{}")
        .await;
    assert_eq!(binary.status, 400, "{}", binary.text());
    assert!(binary.json()["detail"].as_str().unwrap().contains("`ce-id`"), "{}", binary.text());
    // A structured event's own attributes count, not `ce-*` headers beside it.
    let structured = json!({"specversion": "1.0", "id": "2", "source": "/s", "type": "com.example.body", "data": {}});
    let reply = relay
        .client
        .send(
            "POST",
            &relay.url("/hooks/ce"),
            &[("content-type", "application/cloudevents+json"), ("ce-specversion", "1.0"), ("ce-type", "org.other.header")],
            structured.to_string(),
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    assert_eq!(sink.wait_for(1).await[0].json(), json!({"type": "com.example.body"}));
    // Binary mode cannot carry a CloudEvent envelope as its data.
    let reply = relay
        .client
        .send("POST", &relay.url("/hooks/rewrap"), &[("content-type", "application/cloudevents+json")], structured.to_string())
        .await;
    assert_eq!(reply.status, 422, "{}", reply.text());
    assert!(reply.text().contains("binary mode cannot carry"), "{}", reply.text());
    assert_eq!(sink.seen().len(), 1);
}

#[tokio::test]
async fn a_batch_that_would_store_its_headers_too_many_times_is_refused_whole() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let sink = TestSink::start().await;
    // 4 × max_body = 64 KiB of headers in all for a batch's events; two routes take each entry.
    let relay = Relay::start(&format!(
        r#"listen: 127.0.0.1:0
limits: {{ max_body: 16KiB }}
routes:
  - name: batched
    source: cloudevents
    match: {{ path: /hooks/batch }}
    forward:
      - url: {url}/got
        body: {{ id: "{{{{ce.id}}}}" }}
  - name: batched-too
    source: cloudevents
    match: {{ path: /hooks/batch }}
    forward:
      - url: {url}/too
        body: {{ id: "{{{{ce.id}}}}" }}
"#,
        url = sink.url()
    ))
    .await;
    let body = |first: usize, count: usize| {
        let entries: Vec<Value> = (first..first + count)
            .map(|id| json!({"specversion": "1.0", "id": id.to_string(), "source": "/s", "type": "com.example.a"}))
            .collect();
        serde_json::to_vec(&entries).unwrap()
    };
    let post = |padding: usize, body: Vec<u8>| {
        let url = relay.url("/hooks/batch");
        let client = relay.client.clone();
        let padding = "p".repeat(padding);
        async move { client.send("POST", &url, &[("content-type", "application/cloudevents-batch+json"), ("x-padding", &padding)], body).await }
    };
    let most = 4 * 16 * 1024;
    // 100 entries × at least 700 bytes of headers: over 64 KiB before any entry is matched.
    let refused = post(700, body(0, 100)).await;
    assert_eq!(refused.status, 413, "{}", refused.text());
    let detail = &refused.json()["detail"];
    assert_eq!((detail["entries"].as_u64(), detail["most"].as_u64()), (Some(100), Some(most)), "{}", refused.text());
    assert!(detail["header_bytes"].as_u64().unwrap() > 100 * 700, "{}", refused.text());
    // 100 × about 450 bytes is under the bound, but each entry fires two routes: 200 events
    // would store them.
    let twice = post(300, body(100, 100)).await;
    assert_eq!(twice.status, 413, "{}", twice.text());
    assert!(twice.json()["detail"]["header_bytes"].as_u64().unwrap() > most, "{}", twice.text());
    // A header value that is not UTF-8 is stored with three bytes for each of its own: 40
    // entries under 300 such bytes would store about 84 KB, under 300 ASCII ones about 36 KB.
    let raw = |padding: u8| {
        let batch = body(200 + usize::from(padding == b'p') * 100, 40);
        let mut request = format!(
            "POST /hooks/batch HTTP/1.1\r\nhost: x\r\ncontent-type: application/cloudevents-batch+json\r\ncontent-length: {}\r\nx-padding: ",
            batch.len()
        )
        .into_bytes();
        request.extend(std::iter::repeat_n(padding, 300));
        request.extend_from_slice(b"\r\n\r\n");
        request.extend_from_slice(&batch);
        let address = relay.running.ingress_addr;
        async move {
            let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
            stream.write_all(&request).await.unwrap();
            let mut answer = vec![0u8; 4096];
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer)).await.expect("answered").unwrap();
            String::from_utf8_lossy(&answer[..read]).into_owned()
        }
    };
    let not_utf8 = raw(0xff).await;
    assert!(not_utf8.starts_with("HTTP/1.1 413"), "{not_utf8}");
    let ascii = raw(b'p').await;
    assert!(ascii.starts_with("HTTP/1.1 202"), "{ascii}");
    // Fewer header bytes: both routes' events are taken.
    let taken = post(50, body(400, 100)).await;
    assert_eq!(taken.status, 202, "{}", taken.text());
    let seen = sink.wait_for(280).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sink.seen().len(), 280, "nothing of the refused batches was stored or sent");
    assert!(seen.iter().all(|s| s.json()["id"].as_str().unwrap().parse::<usize>().unwrap() >= 300));
}

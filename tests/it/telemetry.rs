//! OTLP export: the relay binary sends its spans to a collector on loopback (a recording
//! HTTP server for `http/protobuf`, the OTLP gRPC service for `grpc`), decoded here with the
//! OpenTelemetry protocol's own types. The span tree is checked against the `traceparent`
//! the sender sent and the one the target received.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use crate::support::binary::{free_port, spawn, stop, wait_up, Folder};
use crate::support::{Answer, TestSink};

const SENDER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SENDER_SPAN: &str = "00f067aa0ba902b7";
const SINK_TOKEN: &str = "query-secret-4711";
const SINK_BEARER: &str = "bearer-secret-0815";

/// One exported span, flattened with its resource's `service.name`.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    span: Span,
}

impl Exported {
    fn trace(&self) -> String {
        hex::encode(&self.span.trace_id)
    }
    fn id(&self) -> String {
        hex::encode(&self.span.span_id)
    }
    fn parent(&self) -> String {
        hex::encode(&self.span.parent_span_id)
    }
    fn attribute(&self, key: &str) -> Option<String> {
        self.span.attributes.iter().find(|kv| kv.key == key).map(value_text)
    }
}

fn value_text(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(text)) => text.clone(),
        Some(AnyValue::IntValue(n)) => n.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    }
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<Exported> {
    let mut spans = Vec::new();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name").map(value_text))
            .unwrap_or_default();
        for scope in resource.scope_spans {
            spans.extend(scope.spans.into_iter().map(|span| Exported { service: service.clone(), span }));
        }
    }
    spans
}

/// Waits (bounded) until `spans()` holds every name in `names` for `trace`.
async fn spans_of(spans: impl Fn() -> Vec<Exported>, trace: &str, names: &[&str]) -> Vec<Exported> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let of_trace: Vec<Exported> = spans().into_iter().filter(|s| s.trace() == trace).collect();
        if names.iter().all(|name| of_trace.iter().any(|s| s.span.name == *name)) {
            return of_trace;
        }
        assert!(tokio::time::Instant::now() < deadline, "spans {names:?} of {trace} did not all arrive: {of_trace:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn one<'a>(spans: &'a [Exported], name: &str) -> &'a Exported {
    let named: Vec<&Exported> = spans.iter().filter(|s| s.span.name == name).collect();
    assert_eq!(named.len(), 1, "one {name} span: {spans:#?}");
    named[0]
}

fn traceparent_fields(value: &str) -> (String, String, String) {
    let fields: Vec<&str> = value.split('-').collect();
    assert_eq!(fields.len(), 4, "{value}");
    (fields[1].to_string(), fields[2].to_string(), fields[3].to_string())
}

fn config(port: u16, admin: u16, sink: &TestSink, telemetry: &str) -> String {
    format!(
        r#"listen: 127.0.0.1:{port}
admin: {{ listen: 127.0.0.1:{admin} }}
store: {{ path: ./relay.db }}
telemetry:
{telemetry}
routes:
  - name: hook
    source: github
    match: {{ path: /hooks/in }}
    forward:
      - name: sink
        url: "{sink}/deliver?token=${{SINK_TOKEN}}"
        bearer: "${{SINK_BEARER}}"
        retry: {{ max_attempts: 3, initial: 20ms, max: 50ms, jitter: false }}
  - name: now
    respond: sync
    match: {{ path: /hooks/sync }}
    forward:
      - {{ name: answer, url: "{sink}/sync" }}
  - name: dated
    match: {{ path: /hooks/dated }}
    forward:
      - {{ name: dated, url: "{sink}/dated", body: {{ when: '{{{{date body.ts "%Y"}}}}' }} }}
  - name: signed
    source: github
    match: {{ path: /hooks/signed }}
    verify: {{ secret: "${{SINK_TOKEN}}" }}
    forward:
      - {{ name: signed, url: "{sink}/signed" }}
"#,
        sink = sink.url()
    )
}

/// What a test sends and reads back: the relay's ports, sink and exported spans.
struct Run {
    client: crate::support::reqwest_like::Client,
    port: u16,
}

impl Run {
    async fn post(&self, path: &str, headers: &[(&str, &str)]) -> u16 {
        let mut headers = headers.to_vec();
        headers.push(("x-github-event", "push"));
        self.client.post_json(&format!("http://127.0.0.1:{}{path}", self.port), &headers, r#"{"ref":"refs/heads/main"}"#).await.status
    }
}

/// The checks both protocols share: a continued trace with a retried delivery, a started
/// trace on a sync route, an unsampled trace exported not at all, and no secret anywhere.
async fn check_span_tree(run: &Run, sink: &TestSink, spans: impl Fn() -> Vec<Exported>) {
    // A sender's sampled trace; the sink fails the first attempt.
    let sent = format!("00-{SENDER_TRACE}-{SENDER_SPAN}-01");
    assert_eq!(run.post("/hooks/in", &[("traceparent", &sent)]).await, 202);
    let seen = sink.wait_for(2).await;
    let tree = spans_of(&spans, SENDER_TRACE, &["request", "match", "render", "commit", "attempt"]).await;
    let tree = {
        // Both attempts arrive; wait for the second.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let mut tree = tree;
        while tree.iter().filter(|s| s.span.name == "attempt").count() < 2 {
            assert!(tokio::time::Instant::now() < deadline, "two attempt spans: {tree:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
            tree = spans().into_iter().filter(|s| s.trace() == SENDER_TRACE).collect();
        }
        tree
    };
    let request = one(&tree, "request");
    assert_eq!(request.span.kind, SpanKind::Server as i32);
    assert_eq!(request.parent(), SENDER_SPAN, "the request span continues the sender's");
    assert_eq!(request.attribute("hookrelay.routes").as_deref(), Some("hook"));
    assert_eq!(request.attribute("http.response.status_code").as_deref(), Some("202"));
    assert_eq!(request.service, "relay-under-test");
    for name in ["match", "render", "commit"] {
        let span = one(&tree, name);
        assert_eq!((span.parent(), span.span.kind), (request.id(), SpanKind::Internal as i32), "{name} under the request");
    }
    assert_eq!(one(&tree, "match").attribute("hookrelay.event").as_deref(), Some("push"));
    let mut attempts: Vec<&Exported> = tree.iter().filter(|s| s.span.name == "attempt").collect();
    attempts.sort_by_key(|s| s.attribute("hookrelay.attempt"));
    for (number, (attempt, received)) in attempts.iter().zip(&seen).enumerate() {
        assert_eq!(attempt.parent(), request.id(), "each attempt under the request");
        assert_eq!(attempt.span.kind, SpanKind::Client as i32);
        let (trace, parent, flags) = traceparent_fields(received.header("traceparent").expect("a traceparent"));
        assert_eq!((trace.as_str(), parent, flags.as_str()), (SENDER_TRACE, attempt.id(), "01"), "the target's parent is the attempt span");
        assert_eq!(attempt.attribute("hookrelay.attempt"), Some((number + 1).to_string()));
        assert_eq!(attempt.attribute("hookrelay.route").as_deref(), Some("hook"));
        assert_eq!(attempt.attribute("hookrelay.target").as_deref(), Some("sink"));
        assert_eq!(attempt.attribute("server.address").as_deref(), Some("127.0.0.1"));
        assert!(attempt.attribute("hookrelay.event_id").is_some() && attempt.attribute("hookrelay.delivery_id").is_some());
    }
    assert_eq!(attempts[0].attribute("http.response.status_code").as_deref(), Some("503"));
    assert_eq!(attempts[0].span.status.as_ref().map(|s| s.code), Some(StatusCode::Error as i32));
    assert_eq!(attempts[1].attribute("http.response.status_code").as_deref(), Some("200"));

    // No trace sent, a sync route: the relay starts one, and the target's parent is its attempt.
    assert_eq!(run.post("/hooks/sync", &[]).await, 200);
    let answered = sink.wait_for(3).await;
    let (started, parent, _) = traceparent_fields(answered[2].header("traceparent").expect("a started trace"));
    let tree = spans_of(&spans, &started, &["request", "attempt"]).await;
    let request = one(&tree, "request");
    assert!(request.span.parent_span_id.is_empty(), "a root span: {request:?}");
    assert_eq!(one(&tree, "attempt").id(), parent);
    assert_eq!(one(&tree, "attempt").parent(), request.id());

    // An unsampled trace goes on to the target unsampled and is not exported; a sampled one
    // sent after it shows the exporter has sent everything before it.
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    assert_eq!(run.post("/hooks/sync", &[("traceparent", &format!("00-{unsampled}-b7ad6b7169203331-00"))]).await, 200);
    let answered = sink.wait_for(4).await;
    assert_eq!(traceparent_fields(answered[3].header("traceparent").unwrap()).2, "00");
    let marker = "11111111111111111111111111111111";
    assert_eq!(run.post("/hooks/sync", &[("traceparent", &format!("00-{marker}-b7ad6b7169203331-01"))]).await, 200);
    spans_of(&spans, marker, &["request", "attempt"]).await;
    assert!(spans().iter().all(|s| s.trace() != unsampled), "an unsampled trace is not exported");

    // A target that fails to render: the span says where, never the value that failed.
    let card = "CARD-4111111111111111";
    let dated_trace = "22222222222222222222222222222222";
    let status = run
        .client
        .post_json(
            &format!("http://127.0.0.1:{}/hooks/dated", run.port),
            &[("traceparent", &format!("00-{dated_trace}-b7ad6b7169203331-01"))],
            format!(r#"{{"ts":"{card}"}}"#),
        )
        .await
        .status;
    assert_eq!(status, 202);
    let tree = spans_of(&spans, dated_trace, &["request", "render"]).await;
    let render = one(&tree, "render");
    let status = render.span.status.clone().expect("a status");
    assert_eq!(status.code, StatusCode::Error as i32);
    assert!(status.message.contains("\"dated\"") && !status.message.contains(card), "{}", status.message);

    // A request a route refuses is a span too, failed or not, with the children it had.
    let refused_trace = "33333333333333333333333333333333";
    assert_eq!(run.post("/hooks/signed", &[("traceparent", &format!("00-{refused_trace}-b7ad6b7169203331-01"))]).await, 401);
    let tree = spans_of(&spans, refused_trace, &["request", "match"]).await;
    let request = one(&tree, "request");
    assert_eq!(request.attribute("http.response.status_code").as_deref(), Some("401"));
    assert_eq!(one(&tree, "match").parent(), request.id());

    // Nothing credential-like in any span, its status or resource attributes.
    for span in spans() {
        let status = span.span.status.as_ref().map(|s| s.message.clone()).unwrap_or_default();
        for text in span.span.attributes.iter().map(value_text).chain([status, span.span.name.clone()]) {
            assert!(!text.contains(SINK_TOKEN) && !text.contains(SINK_BEARER) && !text.contains(card), "{span:?}: {text}");
        }
    }
}

#[tokio::test]
async fn spans_go_to_an_http_collector_as_one_tree_with_the_senders_and_the_targets() {
    let collector = TestSink::start().await;
    let sink = TestSink::scripted(vec![Answer::status_only(503)]).await;
    let (port, admin) = (free_port(), free_port());
    let telemetry = format!(
        "  otlp: {{ endpoint: \"{}\", headers: {{ x-api-key: \"${{OTLP_KEY}}\" }}, service_name: relay-under-test }}",
        collector.url()
    );
    let folder = Folder::new(&config(port, admin, &sink, &telemetry));
    let env = [("SINK_TOKEN", SINK_TOKEN), ("SINK_BEARER", SINK_BEARER), ("OTLP_KEY", "collector-key")];
    let mut relay = spawn(&folder.config(), &[], &env);
    let run = Run { client: crate::support::reqwest_like::Client::new(), port };
    wait_up(&run.client, &mut relay, admin).await;
    let exports = || {
        let seen = collector.seen();
        for export in &seen {
            assert_eq!((export.method.as_str(), export.uri.as_str()), ("POST", "/v1/traces"));
            assert_eq!(export.header("content-type"), Some("application/x-protobuf"));
            assert_eq!(export.header("x-api-key"), Some("collector-key"));
        }
        seen.iter().flat_map(|export| flatten(ExportTraceServiceRequest::decode(export.body.clone()).expect("OTLP protobuf"))).collect()
    };
    check_span_tree(&run, &sink, exports).await;
    let logs = stop(relay);
    assert!(logs.contains("exporting spans over OTLP"), "{logs}");
}

/// The OTLP gRPC trace service, recording what it is sent.
#[derive(Default, Clone)]
struct GrpcCollector {
    spans: Arc<Mutex<Vec<Exported>>>,
    metadata: Arc<Mutex<Vec<HashMap<String, String>>>>,
}

#[async_trait::async_trait]
impl TraceService for GrpcCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let metadata =
            request.metadata().clone().into_headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string())).collect();
        self.metadata.lock().unwrap().push(metadata);
        self.spans.lock().unwrap().extend(flatten(request.into_inner()));
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tokio::test]
async fn spans_go_to_a_grpc_collector_too() {
    let collector = GrpcCollector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    let service = TraceServiceServer::new(collector.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper_util::service::TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let sink = TestSink::scripted(vec![Answer::status_only(503)]).await;
    let (port, admin) = (free_port(), free_port());
    let telemetry = format!(
        "  otlp: {{ endpoint: \"http://{collector_addr}\", protocol: grpc, headers: {{ x-api-key: collector-key }}, service_name: relay-under-test }}"
    );
    let folder = Folder::new(&config(port, admin, &sink, &telemetry));
    let env = [("SINK_TOKEN", SINK_TOKEN), ("SINK_BEARER", SINK_BEARER)];
    let mut relay = spawn(&folder.config(), &[], &env);
    let run = Run { client: crate::support::reqwest_like::Client::new(), port };
    wait_up(&run.client, &mut relay, admin).await;
    let spans = collector.spans.clone();
    check_span_tree(&run, &sink, move || spans.lock().unwrap().clone()).await;
    assert!(collector.metadata.lock().unwrap().iter().all(|m| m.get("x-api-key").map(String::as_str) == Some("collector-key")));
    stop(relay);
}

#[test]
fn a_bad_collector_setting_is_a_config_error() {
    for (telemetry, expected) in [
        ("  otlp: { endpoint: \"ftp://collector\" }", "telemetry.otlp.endpoint"),
        ("  otlp: { endpoint: \"http://collector:4318\", protocol: zipkin }", "protocol"),
        ("  otlp: { endpoint: \"http://collector:4318\", headers: { \"bad header\": x } }", "telemetry.otlp.headers"),
        ("  otlp: { endpoint: \"http://collector:4318\", headers: { X-Key: a, x-key: b } }", "given twice"),
        ("  otlp: { endpoint: \"http://user:pw-1234@collector:4318\" }", "credentials in the URL"),
        ("  otlp: { endpoint: \"http://collector:4317/traces\", protocol: grpc }", "a grpc endpoint"),
    ] {
        let yaml = format!("listen: 127.0.0.1:0\ntelemetry:\n{telemetry}\n");
        let folder = Folder::new(&yaml);
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_hookrelay"))
            .args(["check", "-c"])
            .arg(folder.config())
            .env_clear()
            .output()
            .unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(!output.status.success() && said.contains(expected), "{telemetry}: {said}");
        assert!(!said.contains("pw-1234"), "the endpoint's credentials are not repeated: {said}");
    }
}

#[tokio::test]
async fn a_collector_that_is_down_costs_spans_not_webhooks() {
    let sink = TestSink::start().await;
    let (port, admin, down) = (free_port(), free_port(), free_port());
    let telemetry = format!("  otlp: {{ endpoint: \"http://127.0.0.1:{down}\" }}");
    let folder = Folder::new(&config(port, admin, &sink, &telemetry));
    let mut relay = spawn(&folder.config(), &[], &[("SINK_TOKEN", SINK_TOKEN), ("SINK_BEARER", SINK_BEARER)]);
    let run = Run { client: crate::support::reqwest_like::Client::new(), port };
    wait_up(&run.client, &mut relay, admin).await;
    for _ in 0..3 {
        assert_eq!(run.post("/hooks/sync", &[]).await, 200);
    }
    assert_eq!(sink.wait_for(3).await.len(), 3);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let metrics = run.client.get(&format!("http://127.0.0.1:{admin}/metrics"), &[]).await.text();
        let dropped = metrics
            .lines()
            .find_map(|line| line.strip_prefix("hookrelay_spans_dropped_total "))
            .and_then(|n| n.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if dropped >= 6.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the dropped spans are counted: {metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(run.post("/hooks/sync", &[]).await, 200, "still serving");
    let logs = stop(relay);
    assert_eq!(logs.matches("could not export spans").count(), 1, "said once per outage: {logs}");
}

#[tokio::test]
async fn a_collector_that_never_answers_does_not_hold_up_the_exit() {
    // Accepts connections and never answers one.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let holding = held.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            holding.lock().unwrap().push(stream);
        }
    });
    let sink = TestSink::start().await;
    let (port, admin) = (free_port(), free_port());
    let telemetry = format!("  otlp: {{ endpoint: \"http://{collector}\" }}");
    let yaml = config(port, admin, &sink, &telemetry).replace("store: ", "limits: { shutdown_grace: 1s }\nstore: ");
    let folder = Folder::new(&yaml);
    let mut relay = spawn(&folder.config(), &[], &[("SINK_TOKEN", SINK_TOKEN), ("SINK_BEARER", SINK_BEARER)]);
    let run = Run { client: crate::support::reqwest_like::Client::new(), port };
    wait_up(&run.client, &mut relay, admin).await;
    for _ in 0..20 {
        assert_eq!(run.post("/hooks/sync", &[]).await, 200);
    }
    // Wait for an export to be waiting on the collector, with more spans queued behind it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while held.lock().unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the relay is exporting: {}", relay.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stopping = std::time::Instant::now();
    let logs = stop(relay);
    // The grace is 1 s; one export alone may wait 10 s for its answer.
    assert!(stopping.elapsed() < Duration::from_secs(8), "exit took {:?}: {logs}", stopping.elapsed());
    assert!(logs.contains("stopped"), "{logs}");
}

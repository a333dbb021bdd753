//! Micro-benchmarks of the per-event hot path, on the seed Codeup push payload:
//!
//! - `match_render/{10,100,1000}`: selecting the routes for one request and rendering the
//!   matching route's target (a DingTalk markdown message), as the ingress does for every
//!   event; the matching route is the last one, the others have other paths or the same
//!   path with a header condition that does not hold;
//! - `parse_match_render/1000`: the same with the body parsed from bytes first;
//! - `compile/1000`: loading and compiling a config of 1,000 such routes.
//!
//! Run with `cargo bench --bench match_render` (about half a minute); `bench/run` runs it
//! too and puts the figures in its report.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderValue, Method};

use hookrelay::config::env::ProcessEnv;
use hookrelay::inbound::InboundRequest;
use hookrelay::plan::plan;
use hookrelay::routing;
use hookrelay::snapshot::{self, Snapshot};

const PAYLOAD: &[u8] = include_bytes!("../tests/fixtures/codeup-push.json");
const SIZES: [usize; 3] = [10, 100, 1000];

/// Route `index` of a config of `count`: the last one matches the seed push; every fourth
/// other route shares its path but wants another `Codeup-Event`, the rest have other paths.
fn route(index: usize, count: usize) -> String {
    let (path, event_header) = if index + 1 == count {
        ("/hooks/codeup".to_string(), "Push Hook".to_string())
    } else if index.is_multiple_of(4) {
        ("/hooks/codeup".to_string(), format!("Tag Push Hook {index}"))
    } else {
        (format!("/hooks/codeup-{index}"), "Push Hook".to_string())
    };
    format!(
        r####"  - name: route-{index}
    source: codeup
    respond: sync
    match: {{ path: {path}, event: push, headers: {{ Codeup-Event: "{event_header}" }}, body: [ {{ path: $.ref, regex: "^refs/heads/" }} ] }}
    forward:
      - url: http://127.0.0.1:9/robot/send?access_token=token-{index}
        body: {{ msgtype: markdown, markdown: {{ title: "push {{{{body.repository.name}}}}", text: "### {{{{body.user_name}}}} pushed {{{{len body.commits}}}} commit(s) to {{{{body.ref}}}}" }} }}
"####
    )
}

fn write_config(dir: &Path, count: usize) -> PathBuf {
    let mut text = String::from("listen: 127.0.0.1:0\nroutes:\n");
    for index in 0..count {
        text.push_str(&route(index, count));
    }
    let path = dir.join(format!("routes-{count}.yaml"));
    std::fs::write(&path, text).expect("write config");
    path
}

fn request() -> InboundRequest {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("codeup-event", HeaderValue::from_static("Push Hook"));
    headers.insert("user-agent", HeaderValue::from_static("git-oschina-hook"));
    InboundRequest::new(Method::POST, "/hooks/codeup", headers, Bytes::from_static(PAYLOAD), IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// What the ingress does for one buffered request once it is parsed: select the routes,
/// move the parsed body into the template context and render every target of the matching
/// routes (`plan`, the ingress's own path). Returns the size of the rendered bodies.
fn match_render(snapshot: &Snapshot, mut request: InboundRequest) -> usize {
    let matched = routing::select(&snapshot.routes, &request);
    let body = request.take_body();
    plan(snapshot, &request, body, matched, chrono::Utc::now(), || "01KBENCHEVENTID0000000000".to_string())
        .iter()
        .flat_map(|planned| &planned.targets)
        .map(|(_, rendered)| rendered.as_ref().expect("renders").as_ref().expect("not skipped").body.len())
        .sum()
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sample = request();

    let mut group = c.benchmark_group("match_render");
    group.sample_size(30).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    let mut largest = None;
    for count in SIZES {
        let path = write_config(dir.path(), count);
        let snapshot = snapshot::load(&path, &ProcessEnv).expect("config compiles");
        let matched = routing::select(&snapshot.routes, &sample);
        assert_eq!(matched.len(), 1, "exactly the last route matches");
        assert_eq!(matched[0].route.name, format!("route-{}", count - 1));
        assert!(match_render(&snapshot, sample.clone()) > 0);
        group.bench_with_input(BenchmarkId::from_parameter(count), &snapshot, |b, snapshot| {
            b.iter_batched(|| sample.clone(), |request| match_render(black_box(snapshot), black_box(request)), BatchSize::SmallInput)
        });
        largest = Some((count, path, snapshot));
    }
    group.finish();
    let Some((count, path, snapshot)) = largest else { return };

    let mut group = c.benchmark_group("parse_match_render");
    group.sample_size(30).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    group.bench_function(BenchmarkId::from_parameter(count), |b| b.iter(|| match_render(&snapshot, request())));
    group.finish();

    let mut group = c.benchmark_group("compile");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    group.bench_function(BenchmarkId::from_parameter(count), |b| {
        b.iter(|| snapshot::load(black_box(&path), &ProcessEnv).expect("config compiles").routes.len())
    });
    group.finish();
}

criterion_group!(match_render_benches, benches);
criterion_main!(match_render_benches);

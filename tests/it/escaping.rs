//! Property: any string, through any kind of template, gives well-formed output that
//! decodes back to exactly that string (or, for a header, is refused when it cannot be a
//! header value). Runs the real compile and render path on a config on disk.

use std::sync::OnceLock;

use proptest::prelude::*;
use serde_json::{json, Value};

use hookrelay::config::env::ProcessEnv;
use hookrelay::inbound::InboundRequest;
use hookrelay::render::{dry_run, TargetReport};
use hookrelay::snapshot::{self, Snapshot};

fn snapshot() -> &'static Snapshot {
    static SNAPSHOT: OnceLock<(tempfile::TempDir, Snapshot)> = OnceLock::new();
    let (_, snapshot) = SNAPSHOT.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hookrelay.yaml");
        std::fs::write(
            &path,
            r#"listen: 127.0.0.1:0
routes:
  - name: escape
    match: { path: /e }
    forward:
      - name: json
        url: "http://127.0.0.1:9/{{body.s}}/tail"
        query: { q: "{{body.s}}" }
        body: '{"t": "{{body.s}}"}'
      - name: form
        url: http://127.0.0.1:9/form
        content_type: form
        body: { t: "{{body.s}}" }
      - name: text-form
        url: http://127.0.0.1:9/text-form
        content_type: form
        body: "t={{body.s}}"
      - name: header
        url: http://127.0.0.1:9/header
        headers: { X-T: "{{body.s}}" }
"#,
        )
        .unwrap();
        let snapshot = snapshot::load(&path, &ProcessEnv).unwrap();
        (dir, snapshot)
    });
    snapshot
}

fn rendered(s: &str) -> Vec<TargetReport> {
    let body = json!({ "s": s }).to_string();
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    let request = InboundRequest::new(http::Method::POST, "/e", headers, body.into(), std::net::IpAddr::from([127, 0, 0, 1]));
    let mut report = dry_run(snapshot(), &request, None, true).unwrap();
    report.routes.remove(0).requests
}

fn request<'a>(reports: &'a [TargetReport], target: &str) -> Option<&'a hookrelay::render::RequestView> {
    reports.iter().find_map(|r| match r {
        TargetReport::Request(view) if view.target == target => Some(view),
        _ => None,
    })
}

fn form_field(encoded: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(encoded.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn any_string_round_trips_through_every_template_kind(s in any::<String>()) {
        let reports = rendered(&s);

        let json_target = request(&reports, "json");
        match json_target {
            Some(view) => {
                // JSON string template: the body parses and holds the exact text.
                prop_assert_eq!(&view.body, &json!({ "t": s }));
                // Query value: percent-encoded by the relay, decodes back.
                let url = url::Url::parse(&view.url).unwrap();
                let q: Option<String> = url.query_pairs().find(|(k, _)| k == "q").map(|(_, v)| v.into_owned());
                prop_assert_eq!(q.as_deref(), Some(s.as_str()));
                // URL path expression: one segment, decodes back.
                let segments: Vec<&str> = url.path_segments().unwrap().collect();
                prop_assert_eq!(segments.len(), 2);
                prop_assert_eq!(percent_encoding::percent_decode_str(segments[0]).decode_utf8_lossy(), s.as_str());
            }
            // Only a `.`/`..` path segment is refused (it would climb the URL path).
            None => prop_assert!(s.is_empty() || s == "." || s == "..", "json target refused for {:?}: {:?}", s, reports),
        }

        let form = request(&reports, "form").expect("structured form always renders");
        let Value::String(encoded) = &form.body else { panic!("form body is text") };
        let field = form_field(encoded, "t");
        prop_assert_eq!(field.as_deref(), Some(s.as_str()));

        let text_form = request(&reports, "text-form").expect("string form always renders");
        let Value::String(encoded) = &text_form.body else { panic!("form body is text") };
        let field = form_field(encoded, "t");
        prop_assert_eq!(field.as_deref(), Some(s.as_str()));

        match request(&reports, "header") {
            Some(view) => prop_assert_eq!(view.headers.get("x-t").map(String::as_str), Some(s.as_str())),
            None => prop_assert!(s.chars().any(|c| c == '\r' || c == '\n' || c == '\0' || (c.is_control() && c != '\t')) || !s.is_ascii(),
                "header refused for a harmless value {:?}", s),
        }
    }
}

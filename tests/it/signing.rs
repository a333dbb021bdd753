//! Outbound signatures checked by implementations we did not write (the official
//! `standardwebhooks` Python package; Python's hmac for GitHub, DingTalk and Feishu's
//! documented algorithms), on requests captured at a real sink.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::json;

use crate::support::{Relay, Seen, TestSink};

const STANDARD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn verified_elsewhere(scheme: &str, secret: &str, seen: &Seen) -> Result<(), String> {
    let headers: serde_json::Map<String, serde_json::Value> =
        seen.headers.iter().map(|(k, v)| (k.as_str().to_string(), json!(v.to_str().unwrap_or_default()))).collect();
    let case = json!({
        "scheme": scheme,
        "secret": secret,
        "url": format!("http://sink{}", seen.uri),
        "headers": headers,
        "body": String::from_utf8_lossy(&seen.body),
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/crosscheck/verify_signature.py");
    let mut child = Command::new("python3").arg(script).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(|e| e.to_string())?;
    child.stdin.take().unwrap().write_all(case.to_string().as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

#[tokio::test]
async fn signatures_verify_with_independent_implementations() {
    let sink = TestSink::start().await;
    let target = |name: &str, sign: &str, body: &str| {
        format!("      - name: {name}\n        url: {}/{name}?access_token=t\n        sign: {sign}\n        body: {body}\n", sink.url())
    };
    let yaml = format!(
        "listen: 127.0.0.1:0\nroutes:\n  - name: signed\n    match: {{ path: /hooks/signed }}\n    forward:\n{}{}{}{}",
        target("standard", &format!("{{ standard_webhooks: {{ secret: {STANDARD_SECRET} }} }}"), "'{\"text\": \"{{body.text}}\"}'"),
        target("github", "{ github: { secret: gh-s3cret } }", "'{\"text\": \"{{body.text}}\"}'"),
        target("dingtalk", "{ dingtalk: { secret: SECding } }", "{ msgtype: text, text: { content: '{{body.text}}' } }"),
        target("feishu", "{ feishu: { secret: fs-secret } }", "{ msg_type: text, content: { text: '{{body.text}}' } }"),
    );
    let relay = Relay::start(&yaml).await;
    let reply = relay.client.post_json(&relay.url("/hooks/signed"), &[], r#"{"text":"发布 \"v1\" done"}"#).await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let seen = sink.wait_for(4).await;
    let by_target = |name: &str| {
        seen.iter().find(|s| s.uri.starts_with(&format!("/{name}"))).unwrap_or_else(|| panic!("no request for {name}")).clone()
    };
    for (scheme, secret) in
        [("standard_webhooks", STANDARD_SECRET), ("github", "gh-s3cret"), ("dingtalk", "SECding"), ("feishu", "fs-secret")]
    {
        let name = match scheme {
            "standard_webhooks" => "standard",
            other => other,
        };
        let request = by_target(name);
        verified_elsewhere(scheme, secret, &request).unwrap_or_else(|reason| panic!("{scheme}: {reason}\n{request:#?}"));
    }
    // Tampering is caught by the same verifier, so the checks above can fail.
    let mut tampered = by_target("standard");
    tampered.body = bytes::Bytes::from_static(b"{\"text\":\"changed\"}");
    assert!(verified_elsewhere("standard_webhooks", STANDARD_SECRET, &tampered).is_err());
    let feishu = by_target("feishu").json();
    assert_eq!(feishu["content"]["text"], "发布 \"v1\" done");
    assert!(feishu["timestamp"].is_string());
}

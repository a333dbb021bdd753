//! Every example under `examples/` passes its own `cases.yaml` under `hookrelay test`, and
//! its sample requests, replayed through the running binary, reach a real sink.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::{reqwest_like::Client, Answer, TestSink};

fn examples() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut dirs: Vec<PathBuf> =
        std::fs::read_dir(root).unwrap().map(|e| e.unwrap().path()).filter(|p| p.join("cases.yaml").exists()).collect();
    dirs.sort();
    dirs
}

#[test]
fn every_example_passes_its_cases() {
    let dirs = examples();
    assert!(dirs.len() >= 8, "{dirs:?}");
    for dir in dirs {
        let output = Command::new(env!("CARGO_BIN_EXE_hookrelay")).env_clear().arg("test").arg(dir.join("cases.yaml")).output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{}:\n{stdout}{}", dir.display(), String::from_utf8_lossy(&output.stderr));
        assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    }
}

#[test]
fn a_failing_case_prints_a_diff_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/bkrepo-to-slack");
    std::fs::write(
        dir.path().join("cases.yaml"),
        format!(
            "config: {}\ncases:\n  - name: wrong text\n    request:\n      path: /hooks/bkrepo\n      headers: {{ X-Hookrelay-Token: change-me }}\n      body_file: {}\n    expect:\n      routes: [bkrepo-apk-to-slack]\n      requests:\n        - body: {{ text: something else }}\n",
            example.join("hookrelay.yaml").display(),
            example.join("node-created.json").display()
        ),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_hookrelay")).env_clear().arg("test").arg(dir.path().join("cases.yaml")).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL"), "{stdout}");
    assert!(stdout.contains(r#"-     "text": "something else""#), "{stdout}");
    assert!(stdout.contains(r#"+     "text": ":package: mobile/generic-local/release/app-1.2.0.apk (NODE_CREATED by admin)""#), "{stdout}");
    assert!(stdout.contains("0 passed, 1 failed"), "{stdout}");
}

/// A case whose route does not fire says why: the first condition that failed and what it saw.
#[test]
fn a_case_whose_route_does_not_fire_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/bkrepo-to-slack");
    std::fs::write(dir.path().join("ipa.json"), r#"{"type":"NODE_CREATED","projectId":"mobile","resourceKey":"/app.ipa"}"#).unwrap();
    std::fs::write(
        dir.path().join("cases.yaml"),
        format!(
            "config: {}\ncases:\n  - name: an ipa\n    request:\n      path: /hooks/bkrepo\n      headers: {{ X-Hookrelay-Token: change-me }}\n      body_file: {}\n    expect:\n      routes: [bkrepo-apk-to-slack]\n",
            example.join("hookrelay.yaml").display(),
            dir.path().join("ipa.json").display()
        ),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_hookrelay")).env_clear().arg("test").arg(dir.path().join("cases.yaml")).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    // `resourceKey` reads as a credential name to the one list every display uses.
    assert!(stdout.contains("bkrepo-apk-to-slack did not fire: body $.resourceKey (value hidden) fails `regex`"), "{stdout}");
}

/// A case's request to replay, and how many requests it should send on.
struct Replay {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    requests: usize,
}

/// The requests of the cases that expect requests to go out.
fn replayable(dir: &Path) -> Vec<Replay> {
    let cases: Value = serde_yaml::from_str(&std::fs::read_to_string(dir.join("cases.yaml")).unwrap()).unwrap();
    let mut out = Vec::new();
    for case in cases["cases"].as_array().unwrap() {
        let Some(expected) = case["expect"]["requests"].as_array() else { continue };
        let request = &case["request"];
        let mut headers: Vec<(String, String)> = request["headers"]
            .as_object()
            .map(|h| h.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())).collect())
            .unwrap_or_default();
        let body = match (&request["body"], request["body_file"].as_str()) {
            (Value::Null, Some(file)) => std::fs::read(dir.join(file)).unwrap(),
            (Value::String(text), _) => text.clone().into_bytes(),
            (Value::Null, None) => Vec::new(),
            (value, _) => value.to_string().into_bytes(),
        };
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
            headers.push(("content-type".into(), "application/json".into()));
        }
        let method = request["method"].as_str().unwrap_or("POST").to_string();
        out.push(Replay { method, path: request["path"].as_str().unwrap().to_string(), headers, body, requests: expected.len() });
    }
    out
}

#[tokio::test]
async fn example_payloads_reach_a_sink_through_the_running_relay() {
    // Chat robots' presets count only `errcode`/`code` 0 as delivered: any other answer is
    // retried, and a retry would be counted as one more request.
    let sink = TestSink::scripted(vec![Answer::with_body(200, r#"{"errcode":0,"code":0}"#); 1000]).await;
    let client = Client::new();
    let mut expected_total = 0;
    for dir in examples() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let work = tempfile::tempdir().unwrap();
        let config = std::fs::read_to_string(dir.join("hookrelay.yaml"))
            .unwrap()
            .replace("listen: 127.0.0.1:8080", &format!("listen: 127.0.0.1:{port}"));
        std::fs::write(work.path().join("hookrelay.yaml"), config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_hookrelay"))
            .args(["run", "--no-watch", "-c"])
            .arg(work.path().join("hookrelay.yaml"))
            .envs(["CODEARTS_BASE", "DINGTALK_BASE", "FEISHU_BASE", "WECOM_BASE", "SLACK_BASE", "SERVICE"].map(|name| (name, sink.url())))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while client.try_get(&format!("{base}/__probe")).await.is_none() {
            assert!(tokio::time::Instant::now() < deadline, "{} did not start", dir.display());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        for replay in replayable(&dir) {
            let headers: Vec<(&str, &str)> = replay.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let reply = client.send(&replay.method, &format!("{base}{}", replay.path), &headers, replay.body).await;
            assert!(reply.status < 300, "{} {}: {} {}", dir.display(), replay.path, reply.status, reply.text());
            expected_total += replay.requests;
        }
        // The start-up probe of an example with `upstream:` reaches the sink too: not counted.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while delivered(&sink) < expected_total && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    assert_eq!(delivered(&sink), expected_total);
}

/// Requests the sink got, start-up probes left out.
fn delivered(sink: &TestSink) -> usize {
    sink.seen().iter().filter(|seen| !seen.uri.starts_with("/__probe")).count()
}

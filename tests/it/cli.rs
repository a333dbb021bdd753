//! The `hookrelay` binary's `check` and `render` commands, run as a user would.

use std::path::Path;
use std::process::Command;

fn hookrelay(args: &[&str]) -> (i32, String, String) {
    let output =
        Command::new(env!("CARGO_BIN_EXE_hookrelay")).env_clear().current_dir(env!("CARGO_MANIFEST_DIR")).args(args).output().unwrap();
    (output.status.code().unwrap_or(-1), String::from_utf8(output.stdout).unwrap(), String::from_utf8(output.stderr).unwrap())
}

#[test]
fn check_lists_every_error_with_file_line_and_column() {
    let (code, _, stderr) = hookrelay(&["check", "-c", "tests/fixtures/broken/hookrelay.yaml"]);
    assert_eq!(code, 1, "{stderr}");
    let expected = [
        "9 config errors:",
        "  tests/fixtures/broken/hookrelay.yaml:4:3: limits.max_body: unknown size unit \"parsec\" in \"1 parsec\" (use B, KiB, MiB, GiB)",
        "  tests/fixtures/broken/hookrelay.yaml:10:26: routes[0].match.body[0].regex: invalid regex: unclosed character class",
        "  tests/fixtures/broken/hookrelay.yaml:16:9: routes[1].forward[0].url: scheme \"ftp\" is not http or https",
        "  tests/fixtures/broken/hookrelay.yaml:17:9: routes[1].forward[0].timeout: invalid duration \"soon\": expected number at 0 (examples: 500ms, 10s, 5m)",
        "  tests/fixtures/broken/routes/extra.yaml:5:9: routes[0].forward[0].url: environment variable HOOKRELAY_TEST_UNSET_VAR is not set and has no default (write ${HOOKRELAY_TEST_UNSET_VAR:-default})",
        "  tests/fixtures/broken/routes/extra.yaml:6:5: routes[1].name: route name \"good\" is used twice",
        "  tests/fixtures/broken/routes/extra.yaml:7:48: routes[1].match.headers.X-A.regex: invalid regex: unclosed group",
    ];
    let lines: Vec<&str> = stderr.lines().collect();
    for line in expected {
        assert!(lines.contains(&line), "missing line:\n{line}\nin:\n{stderr}");
    }
    let unknown = lines.iter().find(|l| l.contains("colour")).expect("unknown field reported");
    assert!(
        unknown.starts_with(
            "  tests/fixtures/broken/hookrelay.yaml:22:9: routes[2].forward[0].colour: unknown field `colour`, expected one of `name`, "
        ),
        "{unknown}"
    );
    let template_error = lines.iter().find(|l| l.contains("routes[3].forward[0].body")).expect("template error reported");
    assert!(
        template_error.starts_with(
            "  tests/fixtures/broken/hookrelay.yaml:27:9: routes[3].forward[0].body: template syntax error at line 1, column 24"
        ),
        "{template_error}"
    );
    assert_eq!(lines.len(), 10, "{stderr}");
}

#[test]
fn check_accepts_the_shipped_configs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut configs = vec!["config.example.yaml".to_string()];
    for entry in std::fs::read_dir(root.join("examples")).unwrap() {
        let path = entry.unwrap().path().join("hookrelay.yaml");
        if path.exists() {
            configs.push(path.strip_prefix(root).unwrap().display().to_string());
        }
    }
    assert!(configs.len() >= 3);
    for config in configs {
        let (code, stdout, stderr) = hookrelay(&["check", "-c", &config]);
        assert_eq!(code, 0, "{config}: {stderr}");
        assert!(stdout.contains(": ok"), "{stdout}");
    }
}

#[test]
fn check_reports_yaml_syntax_errors_with_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "listen: 127.0.0.1:0\nroutes:\n  - name: x\n    match: { path: /a\n").unwrap();
    let (code, _, stderr) = hookrelay(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("bad.yaml:5:1: YAML syntax error"), "{stderr}");
    let (code, _, stderr) = hookrelay(&["check", "-c", "does/not/exist.yaml"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("does/not/exist.yaml: cannot read"), "{stderr}");
}

#[test]
fn render_on_a_named_route_shows_requests_even_when_it_does_not_match() {
    // A push to a feature branch: the route's `ref` condition does not hold.
    let dir = tempfile::tempdir().unwrap();
    let feature_push = dir.path().join("feature-push.json");
    let push = std::fs::read_to_string("examples/codeup-to-codearts/push.json").unwrap();
    std::fs::write(&feature_push, push.replace("refs/heads/master", "refs/heads/feature-x")).unwrap();
    let (code, stdout, stderr) = hookrelay(&[
        "render",
        "-c",
        "examples/codeup-to-codearts/hookrelay.yaml",
        "--route",
        "codeup-push-to-codearts",
        "--body",
        feature_push.to_str().unwrap(),
        "--path",
        "/hooks/codeup/demo",
        "--show-secrets",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["routes"][0]["matched"], false);
    assert_eq!(report["routes"][0]["requests"][0]["headers"]["authorization"], "Basic Y2k6c2VjcmV0");
    // Off its path, `params.project` is missing: the URL would carry `project=`.
    let (code, stdout, stderr) = hookrelay(&[
        "render",
        "-c",
        "examples/codeup-to-codearts/hookrelay.yaml",
        "--route",
        "codeup-push-to-codearts",
        "--body",
        "examples/codeup-to-codearts/push.json",
        "--path",
        "/elsewhere",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let error = report["routes"][0]["requests"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("query.project") && error.contains("params.project"), "{report}");
}

#[test]
fn schema_describes_the_config_for_editors() {
    let (code, stdout, stderr) = hookrelay(&["schema"]);
    assert_eq!(code, 0, "{stderr}");
    let schema: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(schema["title"], "hookrelay config");
    assert_eq!(schema["additionalProperties"], false, "unknown keys are errors");
    for key in ["listen", "admin", "upstream", "store", "limits", "defaults", "outbound", "include", "routes", "tls"] {
        assert!(schema["properties"].get(key).is_some(), "{key} missing");
    }
    let route = &schema["$defs"]["RawRoute"];
    for key in ["name", "source", "match", "verify", "forward", "respond", "final", "dedupe", "ingress_limit", "vars"] {
        assert!(route["properties"].get(key).is_some(), "route.{key} missing: {route}");
    }
    assert!(schema["$defs"]["RawTarget"]["properties"].get("success_when").is_some());
    // Editors complete and validate: every property says what it is, and the closed sets
    // of names are enums.
    fn undescribed(value: &serde_json::Value, at: &str, found: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(fields) => {
                for (name, property) in fields.get("properties").and_then(|p| p.as_object()).into_iter().flatten() {
                    if property.get("description").is_none() {
                        found.push(format!("{at}.{name}"));
                    }
                }
                fields.iter().for_each(|(key, inner)| undescribed(inner, &format!("{at}/{key}"), found));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|item| undescribed(item, at, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    undescribed(&schema, "", &mut found);
    assert!(found.is_empty(), "properties without a description: {found:?}");
    let enum_of = |definition: &str, property: &str| schema["$defs"][definition]["properties"][property]["enum"].clone();
    assert_eq!(enum_of("RawRoute", "source")[0], "github");
    assert_eq!(enum_of("RawTarget", "preset").as_array().map(Vec::len), Some(6));
    assert_eq!(enum_of("RawTarget", "content_type"), serde_json::json!(["json", "form", "text", "raw"]));
    assert_eq!(schema["$defs"]["Respond"]["enum"], serde_json::json!(["async", "sync"]));
    let operators = schema["$defs"]["OperatorsShape"]["properties"].as_object().unwrap();
    let names: Vec<&str> = operators.keys().map(String::as_str).collect();
    assert_eq!(names, ["equals", "in", "regex", "glob", "exists", "contains", "gt", "gte", "lt", "lte"]);
}

#[test]
fn check_warns_about_routes_that_never_fire_and_unsigned_dingtalk_robots() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hookrelay.yaml");
    std::fs::write(
        &config,
        r#"listen: 127.0.0.1:0
routes:
  - name: codeup-push
    source: codeup
    match: { path: /hooks/codeup, event: "Push Hook" }
    forward:
      - preset: dingtalk
        url: https://oapi.dingtalk.com/robot/send?access_token=abc
        body: { msgtype: text, text: { content: "pushed" } }
  - name: tapd-bugs
    source: tapd
    match: { path: /hooks/tapd, event: "bug::*" }
    forward:
      - preset: dingtalk
        url: https://oapi.dingtalk.com/robot/send?access_token=def
        secret: SEC123
        body: { msgtype: text, text: { content: "bug" } }
"#,
    )
    .unwrap();
    let (code, stdout, stderr) = hookrelay(&["check", "-c", config.to_str().unwrap()]);
    assert_eq!(code, 0, "warnings do not fail the check: {stderr}");
    assert!(stdout.contains("ok (2 routes"), "{stdout}");
    let warnings: Vec<&str> = stderr.lines().filter(|line| line.starts_with("warning: ")).collect();
    assert_eq!(warnings.len(), 2, "{stderr}");
    assert!(
        warnings[0]
            .contains(r#"routes[0].match.event: no codeup event is named "Push Hook" (did you mean "push"?): this route never fires"#),
        "{stderr}"
    );
    assert!(warnings[1].contains("routes[0].forward[0].secret: a DingTalk robot without `secret`"), "{stderr}");
}

/// `render` names, for every route that did not fire, the first condition that failed and
/// what it saw; values of credential-like headers are never printed.
#[test]
fn render_says_why_each_other_route_did_not_match() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hookrelay.yaml");
    std::fs::write(
        &config,
        r#"listen: 127.0.0.1:0
routes:
  - { name: fires, match: { path: /hooks/a }, forward: [ { url: "http://127.0.0.1:9/x" } ] }
  - { name: other-path, match: { path: /hooks/b }, forward: [ { url: "http://127.0.0.1:9/x" } ] }
  - { name: tags-only, match: { path: /hooks/a, headers: { Codeup-Event: { in: [Tag Push Hook] } } }, forward: [ { url: "http://127.0.0.1:9/x" } ] }
  - name: main-only
    match: { path: /hooks/a, body: [ { path: $.ref, regex: "^refs/heads/(main|master)$" } ] }
    forward: [ { url: "http://127.0.0.1:9/x" } ]
  - { name: missing-field, match: { path: /hooks/a, body: [ { path: $.project.id, exists: true } ] }, forward: [ { url: "http://127.0.0.1:9/x" } ] }
  - { name: token-gated, match: { path: /hooks/a, headers: { X-Gitlab-Token: very-secret-value } }, forward: [ { url: "http://127.0.0.1:9/x" } ] }
  - { name: gets-only, match: { path: /hooks/a, methods: [GET] }, forward: [ { url: "http://127.0.0.1:9/x" } ] }
  - { name: env-gated, match: { path: /hooks/a, headers: { X-Shared: "${HR_TEST_SHARED:-S3CR3T-SHARED-VALUE}" } }, forward: [ { url: "http://127.0.0.1:9/x" } ] }
  - { name: nested, match: { path: /hooks/a, body: [ { path: $.user, equals: nobody } ] }, forward: [ { url: "http://127.0.0.1:9/x" } ] }
"#,
    )
    .unwrap();
    let body = dir.path().join("body.json");
    std::fs::write(&body, r#"{"ref":"refs/heads/dev","user":{"name":"bob","password":"HUNTER2"}}"#).unwrap();
    let (code, stdout, stderr) = hookrelay(&[
        "render",
        "-c",
        config.to_str().unwrap(),
        "--body",
        body.to_str().unwrap(),
        "--path",
        "/hooks/a",
        "-H",
        "Codeup-Event: Push Hook",
        "-H",
        "X-Gitlab-Token: what-the-sender-sent",
        "-H",
        "X-Shared: a-guess",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let why: std::collections::BTreeMap<String, String> = report["routes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|route| route["matched"] == false)
        .map(|route| (route["route"].as_str().unwrap().to_string(), route["why_not"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(report["routes"][0]["route"], "fires");
    assert_eq!(why["other-path"], "path /hooks/a ≠ /hooks/b");
    assert_eq!(why["tags-only"], r#"header codeup-event = "Push Hook" not in ["Tag Push Hook"]"#);
    assert_eq!(why["main-only"], r#"body $.ref = "refs/heads/dev" does not match ^refs/heads/(main|master)$"#);
    assert_eq!(why["missing-field"], "body $.project.id missing");
    assert_eq!(why["token-gated"], "header x-gitlab-token (value hidden) fails `equals`");
    assert_eq!(why["gets-only"], "method POST not in [GET]");
    assert_eq!(why["env-gated"], r#"header x-shared = "a-guess" ≠ "***""#, "a value from the environment compared with is a secret");
    assert_eq!(why["nested"], "body $.user = an object of 2 field(s) ≠ \"nobody\"");
    for secret in ["very-secret-value", "what-the-sender-sent", "S3CR3T-SHARED-VALUE"] {
        assert!(!stdout.contains(secret), "{secret} shown: {stdout}");
    }
    // (The matching route forwards the body as it came: its request shows it, as sent.)
    assert!(why.values().all(|reason| !reason.contains("HUNTER2")), "{why:?}");
}

/// `hookrelay probe`: a container health check without shell tools.
#[tokio::test]
async fn probe_exits_0_only_when_the_relay_is_ready() {
    let relay = crate::support::Relay::start("listen: 127.0.0.1:0\nadmin: { listen: 127.0.0.1:0 }\nroutes: []\n").await;
    let admin = format!("http://{}", relay.running.admin_addr.unwrap());
    let probe = |admin: String| {
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_hookrelay")).args(["probe", "--admin", &admin]).output().unwrap()
        })
    };
    let ready = probe(admin.clone()).await.unwrap();
    assert_eq!(ready.status.code(), Some(0), "{}", String::from_utf8_lossy(&ready.stderr));
    assert!(String::from_utf8_lossy(&ready.stdout).contains("answered 200"));
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let down = probe(format!("http://{closed}")).await.unwrap();
    assert_eq!(down.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&down.stderr).contains("not ready"), "{}", String::from_utf8_lossy(&down.stderr));
}

/// A fixed URL that cannot be sent is reported when the config is checked, as written: a
/// `${VAR}` value in its path (a credential) is never echoed.
#[test]
fn check_reports_an_unsendable_url_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hookrelay.yaml");
    std::fs::write(
        &config,
        "listen: 127.0.0.1:0\nroutes:\n  - name: typo\n    match: { path: /a }\n    forward:\n      - url: http://127.0.0.1:190033/robot/${ROBOT_TOKEN}/send\n  - name: climbs\n    match: { path: /b }\n    forward:\n      - url: http://127.0.0.1:9/api/../admin\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_hookrelay"))
        .env_clear()
        .env("ROBOT_TOKEN", "robotTOKENxyz123")
        .args(["check", "-c", config.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("robotTOKENxyz123"), "the token is echoed:\n{stderr}");
    assert!(stderr.contains("routes[0].forward[0].url: invalid URL \"http://127.0.0.1:190033/robot/${ROBOT_TOKEN}/send\""), "{stderr}");
    assert!(stderr.contains("routes[1].forward[0].url: the URL's path has a `.` or `..` segment"), "{stderr}");
}

//! Golden transforms: each `tests/fixtures/golden/<case>.yaml` names an example config, a
//! seed payload and headers; `hookrelay render` (the real binary) must print exactly
//! `<case>.expected.json`. Set `UPDATE_GOLDEN=1` to rewrite the expected files after
//! reviewing a deliberate change.

use std::path::Path;
use std::process::Command;

#[derive(serde::Deserialize)]
struct Case {
    config: String,
    body: String,
    path: String,
    #[serde(default)]
    headers: Vec<String>,
}

#[test]
fn golden_transforms() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests/fixtures/golden");
    let mut cases: Vec<_> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "yaml")).collect();
    cases.sort();
    assert!(cases.len() >= 5, "golden cases missing: {cases:?}");
    let mut failures = Vec::new();
    for case_path in cases {
        let case: Case = serde_yaml::from_str(&std::fs::read_to_string(&case_path).unwrap()).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_hookrelay"));
        command.env_clear().current_dir(root).args(["render", "-c", &case.config, "--body", &case.body, "--path", &case.path]);
        for header in &case.headers {
            command.args(["-H", header]);
        }
        let output = command.output().unwrap();
        assert!(output.status.success(), "{}: {}", case_path.display(), String::from_utf8_lossy(&output.stderr));
        let actual = String::from_utf8(output.stdout).unwrap();
        let expected_path = case_path.with_extension("expected.json");
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("missing {} (run with UPDATE_GOLDEN=1)", expected_path.display()));
        if actual != expected {
            failures.push(format!("{}:\n--- expected\n{expected}\n--- actual\n{actual}", case_path.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

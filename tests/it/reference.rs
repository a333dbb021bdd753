//! `docs/configuration.md` stays whole: every property `hookrelay schema` knows is
//! described in it, and every YAML example in it passes `hookrelay check`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

fn reference() -> String {
    std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md")).unwrap()
}

fn property_names(schema: &serde_json::Value, names: &mut BTreeSet<String>) {
    match schema {
        serde_json::Value::Object(fields) => {
            if let Some(serde_json::Value::Object(properties)) = fields.get("properties") {
                names.extend(properties.keys().cloned());
            }
            fields.values().for_each(|value| property_names(value, names));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| property_names(item, names)),
        _ => {}
    }
}

#[test]
fn every_config_property_is_in_the_reference() {
    let output = Command::new(env!("CARGO_BIN_EXE_hookrelay")).arg("schema").output().unwrap();
    assert!(output.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut names = BTreeSet::new();
    property_names(&schema, &mut names);
    assert!(names.len() > 90, "the schema lists the config's properties: {names:?}");
    let text = reference();
    let missing: Vec<&String> = names.iter().filter(|name| !text.contains(&format!("`{name}`"))).collect();
    assert!(missing.is_empty(), "docs/configuration.md does not describe: {missing:?}");
}

#[test]
fn every_yaml_example_in_the_reference_passes_check() {
    let text = reference();
    let examples: Vec<&str> = text.split("```yaml\n").skip(1).map(|rest| rest.split("```").next().unwrap_or_default()).collect();
    assert!(examples.len() >= 8, "found {} examples", examples.len());
    let folder = tempfile::tempdir().unwrap();
    for (index, example) in examples.iter().enumerate() {
        let path = folder.path().join(format!("example-{index}.yaml"));
        std::fs::write(&path, example).unwrap();
        // With no environment: every `${VAR}` in an example has a fallback.
        let output = Command::new(env!("CARGO_BIN_EXE_hookrelay")).args(["check", "-c"]).arg(&path).env_clear().output().unwrap();
        assert!(
            output.status.success(),
            "example {index} fails `hookrelay check`:\n{example}\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

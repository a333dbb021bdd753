//! Fuzz findings stay fixed: every file under `fuzz/regressions/<target>/` (minimized
//! crashes, and hostile seeds written by hand) is replayed through the same harness the
//! fuzz target runs, `fuzz/src/harness.rs`, without libFuzzer. See `fuzz/run`.

#[path = "../../fuzz/src/harness.rs"]
mod harness;

use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;

/// The saved inputs of one target, in name order.
fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("cannot list {}: {err}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no inputs under {}", dir.display());
    files
}

/// Runs every input, and fails naming each one that panicked (its message is printed above).
fn replay(target: &str, run: impl Fn(&[u8])) {
    let failed: Vec<String> = inputs(target)
        .into_iter()
        .filter(|file| {
            let data = std::fs::read(file).unwrap();
            panic::catch_unwind(AssertUnwindSafe(|| run(&data))).is_err()
        })
        .map(|file| file.display().to_string())
        .collect();
    assert!(failed.is_empty(), "{target}: {} input(s) panicked: {failed:#?}", failed.len());
}

#[test]
fn config_load() {
    let dir = tempfile::tempdir().unwrap();
    replay("config_load", |data| harness::config_load(dir.path(), data));
}

#[test]
fn body_match() {
    let dir = tempfile::tempdir().unwrap();
    let relay = harness::BodyMatch::load(dir.path());
    replay("body_match", |data| relay.run(data));
}

#[test]
fn template_render() {
    replay("template_render", harness::template_render);
}

#[test]
fn path_match() {
    replay("path_match", harness::path_match);
}

#[test]
fn json_escaping_round_trips_every_char_class() {
    for x in ["", "\"", "\\", "\u{0}\u{1f}\u{7f}", "\u{2028}\u{2029}", "}}{{x}}", "😀 中文 </script>", "\r\n\t\u{8}\u{c}"] {
        harness::json_string_round_trip(x);
    }
}

//! Fuzzing support for hookrelay. The targets' logic lives in [`harness`] so that
//! `tests/it/fuzz_regressions.rs` can replay saved inputs through it without libFuzzer.

pub mod harness;

use std::path::{Path, PathBuf};

/// A folder of this process's own for the files a target loads, on tmpfs where there is
/// one so writing a config per input stays cheap. `fuzz/run` removes it afterwards.
pub fn scratch_dir(target: &str) -> PathBuf {
    let base = Path::new("/dev/shm");
    let base = if base.is_dir() { base.to_path_buf() } else { std::env::temp_dir() };
    let dir = base.join(format!("hookrelay-fuzz-{target}-{}", std::process::id()));
    if let Err(err) = std::fs::create_dir_all(&dir) {
        panic!("cannot create {}: {err}", dir.display());
    }
    dir
}

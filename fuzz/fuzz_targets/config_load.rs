//! Arbitrary bytes as the main config file: loading must report errors, never panic.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use hookrelay_fuzz::{harness, scratch_dir};
use libfuzzer_sys::fuzz_target;

static DIR: OnceLock<PathBuf> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    harness::config_load(DIR.get_or_init(|| scratch_dir("config_load")), data);
});

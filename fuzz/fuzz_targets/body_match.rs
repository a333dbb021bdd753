//! Hostile requests (content type, path, headers, query, body) against a fixed config
//! using every condition kind: parsing, route selection, verification and rendering.
#![no_main]

use std::sync::OnceLock;

use hookrelay_fuzz::harness::BodyMatch;
use hookrelay_fuzz::scratch_dir;
use libfuzzer_sys::fuzz_target;

static RELAY: OnceLock<BodyMatch> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    RELAY.get_or_init(|| BodyMatch::load(&scratch_dir("body_match"))).run(data);
});

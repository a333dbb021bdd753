//! Path patterns and paths: parse and match never panic, and a pattern matches the paths
//! it describes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hookrelay_fuzz::harness::path_match(data);
});

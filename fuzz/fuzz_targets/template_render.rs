//! Hostile templates and data: compile and render with every escape kind, strict and not,
//! and check that Json escaping always yields a JSON string holding the value exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hookrelay_fuzz::harness::template_render(data);
});

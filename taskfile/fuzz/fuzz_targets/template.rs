//! Fuzzes the template engine alone with a small data model and small limits.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kiln_taskfile::fuzzing::template_input(data);
});

//! Fuzzes the whole loader (comments, aliases, templates, YAML, graph, plan JSON): it must
//! never panic and must stay within its time and memory bounds on hostile input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kiln_taskfile::fuzzing::plan_input(data);
});

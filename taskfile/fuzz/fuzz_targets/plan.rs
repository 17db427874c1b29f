//! Fuzzes the whole loader (comments, aliases, templates, YAML, graph): it must never panic and
//! must stay within its output/step bounds on hostile input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let inputs = kiln_taskfile::Inputs::default();
        let _ = kiln_taskfile::plan("fuzz.yaml", text, &inputs);
        let _ = kiln_taskfile::declared_secrets("fuzz.yaml", text);
        let _ = kiln_taskfile::parse_cmd(text);
    }
});

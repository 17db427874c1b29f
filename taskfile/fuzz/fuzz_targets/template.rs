//! Fuzzes the template engine alone with a small data model.
#![no_main]

use kiln_taskfile::template::{render, Limits, Value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let root = Value::Map(
            [("Values".to_string(), Value::List(vec![Value::Int(1), "a".into()]))]
                .into_iter()
                .collect(),
        );
        let limits = Limits { max_output: 1 << 16, max_steps: 100_000, max_depth: 16 };
        if let Ok(out) = render("fuzz", text, &root, limits) {
            assert!(out.text.len() <= 1 << 16);
        }
    }
});

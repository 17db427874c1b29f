//! Entry points shared by the fuzz targets (`fuzz/`) and the stable replay test
//! (`tests/fuzz_replay.rs`), so both drive exactly the same code. Each takes arbitrary bytes
//! and must return without panicking, within the engine's time and memory bounds.

use std::collections::BTreeMap;

use crate::template::{self, Limits, Value};
use crate::{Inputs, RunVars, StepKind};

/// Separates a task file from a values file in one `plan` input.
pub const VALUES_SEPARATOR: &str = "\n#---values---\n";

/// The secret every `plan` input can see (and that JSON output must mask).
const SECRET: (&str, &str) = ("mysecret", "s3cr3t-value");

/// Limits of the `template` target: small, so the fuzzer reaches them quickly.
pub const TEMPLATE_LIMITS: Limits = Limits {
    max_output: 1 << 16,
    max_steps: 100_000,
    max_depth: 16,
};

/// Run variables and a secret like the conformance suite's; a values file after
/// [`VALUES_SEPARATOR`] when the input has one.
fn inputs(values_yaml: Option<&str>) -> Inputs {
    let mut secrets = BTreeMap::new();
    secrets.insert(SECRET.0.to_string(), SECRET.1.to_string());
    Inputs {
        run: RunVars {
            id: "cf19".into(),
            registry: "myregistry.azurecr.io".into(),
            date_ms: 1_556_858_022_000,
            os: "linux".into(),
            architecture: "amd64".into(),
            commit: "abc123".into(),
            branch: "main".into(),
            task_name: "mytask".into(),
            ..RunVars::default()
        },
        values_yaml: values_yaml.map(str::to_string),
        set: vec![("fromSet".into(), "12345".into())],
        secrets,
    }
}

/// Everything `kiln task plan|render|validate` and the coordinator do with a task file:
/// plan it (with a values file when the input has one), print the plan or the diagnostics as
/// JSON with secrets masked, list the declared secrets, split every cmd into words.
pub fn plan_input(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (task, values) = match text.split_once(VALUES_SEPARATOR) {
        Some((t, v)) => (t, Some(v)),
        None => (&*text, None),
    };
    let inputs = inputs(values);
    let mask = &inputs.secrets;
    match crate::plan_with_rendered("fuzz.yaml", task, &inputs) {
        Ok((plan, rendered)) => {
            let json = plan.to_json(&rendered, Some(mask));
            assert!(
                !json.to_string().contains(SECRET.1),
                "a secret value leaked into the plan JSON"
            );
            for step in &plan.steps {
                if let StepKind::Cmd(c) = &step.kind {
                    let _ = crate::parse_cmd(&c.cmd);
                }
            }
        }
        Err(d) => {
            assert!(!d.0.is_empty(), "an error without diagnostics");
            let _ = d.to_json(Some(mask));
            let _ = d.to_string();
        }
    }
    let _ = crate::render("fuzz.yaml", task, &inputs);
    let _ = crate::declared_secrets("fuzz.yaml", task);
    let _ = crate::parse_cmd(task);
}

/// The template engine alone, with a small data model and [`TEMPLATE_LIMITS`].
pub fn template_input(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut run = BTreeMap::new();
    run.insert("ID".to_string(), Value::from("cf19"));
    let mut values = BTreeMap::new();
    values.insert(
        "l".to_string(),
        Value::List(vec![Value::Int(1), "a".into(), Value::Float(2.5)]),
    );
    values.insert("m".to_string(), Value::map(run.clone()));
    let root = Value::map(
        [
            ("Run".to_string(), Value::map(run)),
            ("Values".to_string(), Value::map(values)),
        ]
        .into_iter()
        .collect(),
    );
    if let Ok(out) = template::render("fuzz", &text, &root, TEMPLATE_LIMITS) {
        assert!(out.text.len() <= TEMPLATE_LIMITS.max_output);
        if let Some(last) = out.segments.last() {
            assert!(last.out <= out.text.len());
        }
        // Every output offset maps back into the source.
        for off in [0, out.text.len() / 2, out.text.len()] {
            assert!(template::map_offset(&out.segments, off) <= text.len());
        }
    }
}

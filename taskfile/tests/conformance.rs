//! Data-driven conformance suite: every `conformance/valid/*.yaml` must plan to the JSON in the
//! sibling `.json` file, every `conformance/invalid/*.yaml` must fail with exactly the
//! diagnostics in the sibling `.err` file. Inputs are fixed (see `inputs`); a sibling
//! `.values.yaml` is used as the values file. Set `KILN_BLESS=1` to rewrite the expectations
//! (review the diff before committing).

use std::path::{Path, PathBuf};

use kiln_taskfile::{Inputs, RunVars};

fn inputs(case: &Path) -> Inputs {
    let values = case.with_extension("values.yaml");
    let mut secrets = std::collections::BTreeMap::new();
    secrets.insert("mysecret".to_string(), "s3cr3t-value".to_string());
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
            shared_volume: "acb_vol_00000000-0000-0000-0000-000000000000".into(),
            ..RunVars::default()
        },
        values_yaml: std::fs::read_to_string(values).ok(),
        set: vec![("fromSet".into(), "12345".into())],
        secrets,
    }
}

fn cases(dir: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/conformance")
        .join(dir);
    let mut out: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", root.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "yaml")
                && !p.to_string_lossy().ends_with(".values.yaml")
        })
        .collect();
    out.sort();
    out
}

fn bless() -> bool {
    std::env::var("KILN_BLESS").is_ok_and(|v| v == "1")
}

#[test]
fn valid_task_files_plan_as_expected() {
    let all = cases("valid");
    assert!(all.len() >= 10, "conformance cases missing");
    let mut failures = Vec::new();
    for case in all {
        let name = case
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let src = std::fs::read_to_string(&case).expect("read case");
        let got = match kiln_taskfile::plan_with_rendered(&name, &src, &inputs(&case)) {
            Ok((plan, rendered)) => plan.to_json(&rendered, None),
            Err(d) => {
                failures.push(format!("{name}: expected a plan, got:\n{d}"));
                continue;
            }
        };
        let expected_path = case.with_extension("json");
        if bless() {
            let text = serde_json::to_string_pretty(&got).expect("json") + "\n";
            std::fs::write(&expected_path, text).expect("write expectation");
            continue;
        }
        let expected: serde_json::Value = match std::fs::read_to_string(&expected_path) {
            Ok(t) => serde_json::from_str(&t).expect("expected json parses"),
            Err(_) => {
                failures.push(format!("{name}: missing {}", expected_path.display()));
                continue;
            }
        };
        if got != expected {
            failures.push(format!(
                "{name}: plan differs\n--- expected\n{}\n--- got\n{}",
                serde_json::to_string_pretty(&expected).unwrap_or_default(),
                serde_json::to_string_pretty(&got).unwrap_or_default()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn invalid_task_files_fail_as_expected() {
    let all = cases("invalid");
    assert!(all.len() >= 10, "conformance cases missing");
    let mut failures = Vec::new();
    for case in all {
        let name = case
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let src = std::fs::read_to_string(&case).expect("read case");
        let got = match kiln_taskfile::plan(&name, &src, &inputs(&case)) {
            Ok(_) => {
                failures.push(format!("{name}: expected diagnostics, got a plan"));
                continue;
            }
            Err(d) => d.to_string() + "\n",
        };
        let expected_path = case.with_extension("err");
        if bless() {
            std::fs::write(&expected_path, &got).expect("write expectation");
            continue;
        }
        match std::fs::read_to_string(&expected_path) {
            Ok(expected) if expected == got => {}
            Ok(expected) => failures.push(format!(
                "{name}: diagnostics differ\n--- expected\n{expected}--- got\n{got}"
            )),
            Err(_) => failures.push(format!("{name}: missing {}", expected_path.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

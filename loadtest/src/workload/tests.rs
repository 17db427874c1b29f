//! Tests of the request a load-test run submits.

use std::io::Write as _;

use kiln_state::PlatformSpec;

use super::{Workload, TRIGGERED_BY};

fn amd64() -> PlatformSpec {
    PlatformSpec::parse("linux/amd64").expect("a valid platform")
}

#[test]
fn cmd_workload_builds_a_quick_run_request() {
    let workload = Workload::cmd("127.0.0.1:5000/base/busybox:latest true").expect("workload");
    assert_eq!(
        workload.label,
        "cmd: 127.0.0.1:5000/base/busybox:latest true"
    );
    let request = workload
        .run_request("127.0.0.1:5000", &amd64(), 120)
        .expect("a valid request");
    assert_eq!(request.kind, "run");
    assert_eq!(request.task_file_name, "quick-run.yaml");
    assert_eq!(request.registry, "127.0.0.1:5000");
    assert_eq!(request.timeout_seconds, 120);
    assert_eq!(request.triggered_by, TRIGGERED_BY);
    assert!(request.context_digest.is_empty());
    assert!(request
        .task_yaml
        .contains("127.0.0.1:5000/base/busybox:latest true"));
    let platform = request.platform.expect("platform");
    assert_eq!(
        (platform.os.as_str(), platform.architecture.as_str()),
        ("linux", "amd64")
    );
}

#[test]
fn empty_cmd_is_refused() {
    assert!(Workload::cmd("   ").is_err());
}

#[test]
fn task_file_is_read_and_planned() {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    writeln!(
        file,
        "version: v1.1.0\nsteps:\n  - cmd: '{{{{.Run.Registry}}}}/base/busybox:latest echo hi'\n"
    )
    .expect("write");
    let workload = Workload::task_file(file.path()).expect("workload");
    assert!(workload.label.starts_with("task: "));
    let request = workload
        .run_request("127.0.0.1:5000", &amd64(), 60)
        .expect("a valid request");
    assert!(request.task_yaml.contains("{{.Run.Registry}}"));
    assert_eq!(
        Some(request.task_file_name.as_str()),
        file.path().file_name().and_then(|n| n.to_str())
    );
}

#[test]
fn invalid_task_file_is_refused_before_submitting() {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    writeln!(file, "version: v1.1.0\nsteps: {{ not: [valid").expect("write");
    let workload = Workload::task_file(file.path()).expect("readable");
    let error = workload
        .run_request("127.0.0.1:5000", &amd64(), 60)
        .expect_err("an invalid task file");
    assert!(
        error.to_string().contains("nothing was submitted"),
        "{error}"
    );
}

#[test]
fn missing_task_file_is_an_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let error = Workload::task_file(&dir.path().join("absent.yaml")).expect_err("missing file");
    assert!(error.to_string().contains("cannot read the task file"));
}

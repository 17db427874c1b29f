//! Unit tests of the runner's ACR semantics with the scripted runtime.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_proto::pb::{Platform, RunRequest, RunStatus, StepStatus};
use kiln_proto::v1::{Assignment, LogStored};
use tokio::sync::Barrier;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::executor::fake::{Call, FakeRuntime, Script};
use crate::executor::ContainerSpec;
use crate::reports::report_channel;
use crate::task::{BuildStep, CmdStep, Plan, PushStep, Step, StepKind};

/// Guards every test against hangs (a failing assertion, not a synchronisation sleep).
const TEST_LIMIT: Duration = Duration::from_secs(20);

#[derive(Default)]
struct FakeBlobs {
    uploads: Mutex<Vec<String>>,
    fail_uploads: bool,
}

impl BlobStore for FakeBlobs {
    async fn fetch_context(&self, _: &str, _: &str, dest: &Path) -> Result<(), String> {
        tokio::fs::write(dest.join("from-context"), b"x")
            .await
            .map_err(|e| e.to_string())
    }

    async fn upload_log(&self, _: &str, path: &Path) -> Result<(String, u64), String> {
        if self.fail_uploads {
            return Err("registry unreachable".into());
        }
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| e.to_string())?;
        lock(&self.uploads).push(text.clone());
        Ok(("sha256:log".into(), text.len() as u64))
    }
}

fn cmd(id: &str, image: &str, deps: &[&str]) -> Step {
    Step {
        id: id.into(),
        kind: StepKind::Cmd(CmdStep {
            cmd: format!("{image} arg1"),
        }),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        working_directory: "/workspace".into(),
        timeout: 600,
        ..Default::default()
    }
}

fn plan(steps: Vec<Step>) -> Plan {
    Plan {
        version: "v1.0.0".into(),
        step_timeout: 600,
        steps,
        ..Default::default()
    }
}

struct Outcome {
    reports: Vec<Report>,
    runtime: Arc<RunnerEnv<FakeRuntime, FakeBlobs>>,
    _dir: tempfile::TempDir,
}

impl Outcome {
    fn finished(&self) -> (RunStatus, String) {
        self.reports
            .iter()
            .find_map(|r| match r {
                Report::Finished(f) => Some((
                    RunStatus::try_from(f.status).unwrap_or(RunStatus::Unspecified),
                    f.reason.clone(),
                )),
                _ => None,
            })
            .expect("RunFinished")
    }

    /// The last reported status of `step`.
    fn step(&self, step: &str) -> StepUpdate {
        self.reports
            .iter()
            .rev()
            .find_map(|r| match r {
                Report::Step(u) if u.step_id == step => Some(u.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no update for step {step}"))
    }

    fn step_status(&self, step: &str) -> StepStatus {
        StepStatus::try_from(self.step(step).status).unwrap_or(StepStatus::Unspecified)
    }

    fn calls(&self) -> Vec<Call> {
        self.runtime.runtime.calls()
    }

    fn starts(&self, name: &str) -> usize {
        self.calls()
            .iter()
            .filter(|c| matches!(c, Call::Start { spec, .. } if spec.name.starts_with(name)))
            .count()
    }

    fn position(&self, wanted: impl Fn(&Call) -> bool) -> usize {
        self.calls()
            .iter()
            .position(wanted)
            .expect("call not found")
    }
}

async fn run(runtime: FakeRuntime, plan: Plan) -> Outcome {
    run_with(runtime, FakeBlobs::default(), plan, 0, |_, _| {}).await
}

/// Runs `plan` as run `r1`; `on_report` sees every report (and may cancel the run).
async fn run_with(
    runtime: FakeRuntime,
    blobs: FakeBlobs,
    plan: Plan,
    timeout_seconds: u64,
    on_report: impl Fn(&Report, &CancellationToken),
) -> Outcome {
    let request = RunRequest {
        registry: "127.0.0.1:5000".into(),
        timeout_seconds,
        ..Default::default()
    };
    run_answering(runtime, blobs, plan, request, on_report, |_| Ok(())).await
}

/// Like `run_with`; `answer` is the coordinator's answer to each report the runner waits to
/// have committed.
async fn run_answering(
    runtime: FakeRuntime,
    blobs: FakeBlobs,
    plan: Plan,
    request: RunRequest,
    on_report: impl Fn(&Report, &CancellationToken),
    answer: impl Fn(&Report) -> crate::reports::CommitResult,
) -> Outcome {
    let dir = tempfile::tempdir().expect("tempdir");
    let (reports, mut rx) = report_channel(16);
    let env = Arc::new(RunnerEnv {
        name_scope: String::new(),
        platform_gate: Default::default(),
        secrets: Arc::new(crate::secrets::NoSecretStore),
        engine_socket: None,
        runtime,
        blobs,
        reports,
        work_dir: dir.path().to_path_buf(),
    });
    let assignment = Assignment {
        run_id: "r1".into(),
        request: Some(request),
        created_at_ms: 0,
        platform: Some(Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: String::new(),
        }),
        emulated: false,
        ..Default::default()
    };
    let cancel = CancellationToken::new();
    let task = tokio::spawn(execute_planned(
        Arc::clone(&env),
        assignment,
        Some(plan),
        cancel.clone(),
    ));
    let mut seen = Vec::new();
    let collect = async {
        while let Some(envelope) = rx.recv_envelope().await {
            let report = envelope.report;
            if let Some(committed) = envelope.committed {
                let _ = committed.send(answer(&report));
            }
            on_report(&report, &cancel);
            let done = matches!(report, Report::Finished(_));
            seen.push(report);
            if done {
                break;
            }
        }
    };
    tokio::time::timeout(TEST_LIMIT, collect)
        .await
        .expect("run did not finish in time");
    task.await.expect("run task");
    assert!(
        !dir.path().join("runs").join("r1").exists(),
        "run directory left behind"
    );
    Outcome {
        reports: seen,
        runtime: env,
        _dir: dir,
    }
}

#[tokio::test]
async fn independent_steps_run_in_parallel() {
    let runtime = FakeRuntime::new();
    let gate = Arc::new(Barrier::new(2));
    for image in ["left", "right"] {
        runtime.script(
            image,
            Script {
                gate: Some(Arc::clone(&gate)),
                ..Default::default()
            },
        );
    }
    let out = run(
        runtime,
        plan(vec![cmd("a", "left", &[]), cmd("b", "right", &[])]),
    )
    .await;
    assert_eq!(out.finished().0, RunStatus::Succeeded);
    assert_eq!(out.step_status("a"), StepStatus::Succeeded);
    assert_eq!(out.step_status("b"), StepStatus::Succeeded);
    assert!(out.calls().contains(&Call::CreateNetwork("kiln-r1".into())));
    assert!(out.calls().contains(&Call::RemoveNetwork("kiln-r1".into())));
    assert!(out.runtime.runtime.live_containers().is_empty());
}

#[tokio::test]
async fn dependents_start_after_their_dependencies() {
    let out = run(
        FakeRuntime::new(),
        plan(vec![
            cmd("a", "img", &[]),
            cmd("b", "img", &["a"]),
            cmd("c", "img", &["a", "b"]),
        ]),
    )
    .await;
    assert_eq!(out.finished().0, RunStatus::Succeeded);
    let exited_a = out.position(|c| matches!(c, Call::Exited { name, .. } if name == "kiln-r1-a"));
    let start_b =
        out.position(|c| matches!(c, Call::Start { spec, .. } if spec.name == "kiln-r1-b"));
    let exited_b = out.position(|c| matches!(c, Call::Exited { name, .. } if name == "kiln-r1-b"));
    let start_c =
        out.position(|c| matches!(c, Call::Start { spec, .. } if spec.name == "kiln-r1-c"));
    assert!(exited_a < start_b && exited_b < start_c);
    let spec = out
        .calls()
        .into_iter()
        .find_map(|c| match c {
            Call::Start { spec, .. } if spec.name == "kiln-r1-a" => Some(spec),
            _ => None,
        })
        .expect("spec");
    assert_eq!(spec.network.as_deref(), Some("kiln-r1"));
    assert_eq!(spec.network_aliases, vec!["a".to_string()]);
    assert_eq!(spec.working_dir.as_deref(), Some("/workspace"));
    assert!(spec.binds[0].ends_with(":/workspace"));
    assert_eq!(spec.args, vec!["arg1".to_string()]);
    // Every step's log was stored in segments, reported before the step's end, which carries
    // only the log's size.
    let update = out.step("c");
    assert!(update.log_digest.is_empty());
    assert!(update.has_exit_code && update.exit_code == 0);
    let segments: Vec<&LogStored> = out
        .reports
        .iter()
        .filter_map(|r| match r {
            Report::LogStored(s) if s.step_id == "c" => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(segments.len(), 1);
    assert_eq!(segments[0].index, 0);
    assert_eq!(segments[0].digest, "sha256:log");
    assert_eq!(segments[0].size, update.log_size);
    assert!(update.log_size > 0);
    let stored_at = out
        .reports
        .iter()
        .position(|r| matches!(r, Report::LogStored(s) if s.step_id == "c"));
    let ended_at = out.reports.iter().position(|r| {
        matches!(r, Report::Step(u) if u.step_id == "c" && u.status == StepStatus::Succeeded as i32)
    });
    assert!(stored_at < ended_at);
    let uploads = lock(&out.runtime.blobs.uploads).clone();
    assert_eq!(uploads.len(), 3);
    assert!(uploads[0].starts_with("Executing step ID: a. Timeout(sec): 600, Working directory: '/workspace', Network: 'kiln-r1'"));
}

#[tokio::test]
async fn a_failure_stops_the_run_and_skips_dependents() {
    let runtime = FakeRuntime::new();
    runtime.script(
        "bad",
        Script {
            exit_codes: vec![3],
            ..Default::default()
        },
    );
    runtime.script(
        "slow",
        Script {
            hang: true,
            ..Default::default()
        },
    );
    let out = run(
        runtime,
        plan(vec![
            cmd("slow", "slow", &[]),
            cmd("a", "bad", &[]),
            cmd("b", "img", &["a"]),
        ]),
    )
    .await;
    assert_eq!(
        out.finished(),
        (RunStatus::Failed, "step a failed: exit code 3".to_string())
    );
    let a = out.step("a");
    assert_eq!(a.status, StepStatus::Failed as i32);
    assert!(a.has_exit_code && a.exit_code == 3);
    assert_eq!(out.step_status("b"), StepStatus::Skipped);
    assert_eq!(out.step_status("slow"), StepStatus::Canceled);
    assert_eq!(out.starts("kiln-r1-b"), 0);
    assert!(out.runtime.runtime.live_containers().is_empty());
}

#[tokio::test]
async fn ignored_errors_let_dependents_run() {
    let runtime = FakeRuntime::new();
    runtime.script(
        "bad",
        Script {
            exit_codes: vec![1],
            ..Default::default()
        },
    );
    let mut a = cmd("a", "bad", &[]);
    a.ignore_errors = true;
    let out = run(runtime, plan(vec![a, cmd("b", "img", &["a"])])).await;
    assert_eq!(out.finished().0, RunStatus::Succeeded);
    let a = out.step("a");
    assert_eq!(a.status, StepStatus::Succeeded as i32);
    assert!(a.reason.contains("error ignored"), "{}", a.reason);
    assert_eq!(out.step_status("b"), StepStatus::Succeeded);
}

#[tokio::test]
async fn retries_until_success_and_repeat_runs_again() {
    let runtime = FakeRuntime::new();
    runtime.script(
        "flaky",
        Script {
            exit_codes: vec![1, 1, 0],
            ..Default::default()
        },
    );
    let mut a = cmd("a", "flaky", &[]);
    a.retries = 2;
    a.retry_delay = 0;
    let mut b = cmd("b", "img", &["a"]);
    b.repeat = 2;
    let out = run(runtime, plan(vec![a, b])).await;
    assert_eq!(out.finished().0, RunStatus::Succeeded);
    assert_eq!(out.starts("kiln-r1-a"), 3);
    assert_eq!(out.starts("kiln-r1-b"), 3);
    assert!(out.runtime.runtime.live_containers().is_empty());
}

#[tokio::test]
async fn retries_exhausted_fail_the_step() {
    let runtime = FakeRuntime::new();
    runtime.script(
        "bad",
        Script {
            exit_codes: vec![2],
            ..Default::default()
        },
    );
    let mut a = cmd("a", "bad", &[]);
    a.retries = 1;
    let out = run(runtime, plan(vec![a])).await;
    assert_eq!(out.finished().0, RunStatus::Failed);
    assert_eq!(out.starts("kiln-r1-a"), 2);
}

#[tokio::test]
async fn step_timeout_times_out_the_run() {
    let runtime = FakeRuntime::new();
    runtime.script(
        "hang",
        Script {
            hang: true,
            ..Default::default()
        },
    );
    let mut a = cmd("a", "hang", &[]);
    a.timeout = 1;
    let out = run(runtime, plan(vec![a, cmd("b", "img", &["a"])])).await;
    let (status, reason) = out.finished();
    assert_eq!(status, RunStatus::Timeout);
    assert!(reason.contains("timed out"), "{reason}");
    assert_eq!(out.step_status("a"), StepStatus::Timeout);
    assert_eq!(out.step_status("b"), StepStatus::Skipped);
    assert!(out.runtime.runtime.live_containers().is_empty());
}

#[tokio::test]
async fn run_timeout_stops_running_steps() {
    let runtime = FakeRuntime::new();
    runtime.script(
        "hang",
        Script {
            hang: true,
            ..Default::default()
        },
    );
    let out = run_with(
        runtime,
        FakeBlobs::default(),
        plan(vec![cmd("a", "hang", &[])]),
        1,
        |_, _| {},
    )
    .await;
    assert_eq!(
        out.finished(),
        (RunStatus::Timeout, "run timed out after 1s".into())
    );
    assert_eq!(out.step_status("a"), StepStatus::Timeout);
    assert!(out.runtime.runtime.live_containers().is_empty());
}

#[tokio::test]
async fn cancel_stops_everything_and_cleans_up() {
    let runtime = FakeRuntime::new();
    runtime.script(
        "hang",
        Script {
            hang: true,
            output: "serving\n".into(),
            ..Default::default()
        },
    );
    let out = run_with(
        runtime,
        FakeBlobs::default(),
        plan(vec![cmd("a", "hang", &[]), cmd("b", "img", &["a"])]),
        0,
        |report, cancel| {
            // The container is running once its output arrives.
            if let Report::Log(chunk) = report {
                if String::from_utf8_lossy(&chunk.data).contains("serving") {
                    cancel.cancel();
                }
            }
        },
    )
    .await;
    assert_eq!(out.finished().0, RunStatus::Canceled);
    assert_eq!(out.step_status("a"), StepStatus::Canceled);
    assert_eq!(out.step_status("b"), StepStatus::Canceled);
    assert!(out.calls().contains(&Call::Remove("kiln-r1-a".into())));
    assert!(out.calls().contains(&Call::RemoveNetwork("kiln-r1".into())));
    assert!(out.runtime.runtime.live_containers().is_empty());
}

#[tokio::test]
async fn a_step_never_starts_under_a_lease_the_coordinator_took_back() {
    let stale = |report: &Report| match report {
        Report::Step(u) if u.step_id == "b" => Err(crate::reports::ReportError::Stale(
            "run r1 is leased to agent-2".into(),
        )),
        _ => Ok(()),
    };
    let out = run_answering(
        FakeRuntime::new(),
        FakeBlobs::default(),
        plan(vec![
            cmd("a", "first", &[]),
            cmd("b", "second", &["a"]),
            cmd("c", "third", &["b"]),
        ]),
        RunRequest::default(),
        |_, _| {},
        stale,
    )
    .await;
    let (status, reason) = out.finished();
    assert_eq!(status, RunStatus::Canceled);
    assert!(reason.contains("agent-2"), "{reason}");
    assert_eq!(out.starts("kiln-r1-a"), 1);
    assert_eq!(out.starts("kiln-r1-b"), 0, "b started under a lost lease");
    assert_eq!(out.starts("kiln-r1-c"), 0);
    // b reported nothing after its refused Running; c ends as a cancel leaves it.
    assert_eq!(out.step_status("b"), StepStatus::Running);
    assert_eq!(out.step_status("c"), StepStatus::Canceled);
    assert!(out.calls().contains(&Call::RemoveNetwork("kiln-r1".into())));
    assert!(out.runtime.runtime.live_containers().is_empty());
}

#[tokio::test]
async fn a_closed_session_starts_no_container() {
    let out = run_answering(
        FakeRuntime::new(),
        FakeBlobs::default(),
        plan(vec![cmd("a", "first", &[]), cmd("b", "second", &[])]),
        RunRequest::default(),
        |_, _| {},
        |_| Err(crate::reports::ReportError::Closed),
    )
    .await;
    assert_eq!(out.finished().0, RunStatus::Canceled);
    assert!(!out.calls().iter().any(|c| matches!(c, Call::Start { .. })));
    assert!(out.calls().contains(&Call::RemoveNetwork("kiln-r1".into())));
}

#[tokio::test]
async fn a_refused_running_report_fails_the_step() {
    let out = run_answering(
        FakeRuntime::new(),
        FakeBlobs::default(),
        plan(vec![cmd("a", "first", &[]), cmd("b", "second", &["a"])]),
        RunRequest::default(),
        |_, _| {},
        |_| Err(crate::reports::ReportError::Rejected("no such step".into())),
    )
    .await;
    assert_eq!(out.finished().0, RunStatus::Failed);
    assert_eq!(out.step_status("a"), StepStatus::Failed);
    assert!(out.step("a").reason.contains("no such step"));
    assert_eq!(out.step_status("b"), StepStatus::Skipped);
    assert!(!out.calls().iter().any(|c| matches!(c, Call::Start { .. })));
}

#[tokio::test]
async fn the_run_limits_reach_every_container_and_build() {
    let build = Step {
        id: "build".into(),
        kind: StepKind::Build(BuildStep {
            tags: vec!["reg/app:1".into()],
            ..Default::default()
        }),
        timeout: 600,
        ..Default::default()
    };
    let mut detached = cmd("server", "nginx", &[]);
    detached.detach = true;
    let request = RunRequest {
        cpu_millis: 1500,
        memory_bytes: 256 << 20,
        ..Default::default()
    };
    let out = run_answering(
        FakeRuntime::new(),
        FakeBlobs::default(),
        plan(vec![cmd("a", "img", &[]), detached, build]),
        request,
        |_, _| {},
        |_| Ok(()),
    )
    .await;
    assert_eq!(out.finished().0, RunStatus::Succeeded);
    let mut containers = 0;
    let mut builds = 0;
    for call in out.calls() {
        match call {
            Call::Start { spec, .. } => {
                containers += 1;
                assert_eq!(spec.cpu_millis, Some(1500), "{}", spec.name);
                assert_eq!(spec.memory_bytes, Some(256 << 20), "{}", spec.name);
            }
            Call::Build(spec) => {
                builds += 1;
                assert_eq!(spec.cpu_millis, Some(1500));
                assert_eq!(spec.memory_bytes, Some(256 << 20));
            }
            _ => {}
        }
    }
    assert_eq!((containers, builds), (2, 1));
    // Without limits, none are set.
    let out = run(FakeRuntime::new(), plan(vec![cmd("a", "img", &[])])).await;
    let spec = start_spec(&out, "kiln-r1-a");
    assert_eq!((spec.cpu_millis, spec.memory_bytes), (None, None));
}

#[tokio::test]
async fn detached_containers_keep_running_until_the_end() {
    let mut server = cmd("server", "nginx", &[]);
    server.detach = true;
    let out = run(
        FakeRuntime::new(),
        plan(vec![server, cmd("client", "curl", &["server"])]),
    )
    .await;
    assert_eq!(out.finished().0, RunStatus::Succeeded);
    let started = out.position(
        |c| matches!(c, Call::Start { spec, detached: true } if spec.name == "kiln-r1-server"),
    );
    let client_done =
        out.position(|c| matches!(c, Call::Exited { name, .. } if name == "kiln-r1-client"));
    let removed = out.position(|c| *c == Call::Remove("kiln-r1-server".into()));
    assert!(started < client_done && client_done < removed);
    assert!(out.runtime.runtime.live_containers().is_empty());
}

#[tokio::test]
async fn kept_containers_survive_the_run() {
    let mut a = cmd("a", "img", &[]);
    a.keep = true;
    let out = run(FakeRuntime::new(), plan(vec![a])).await;
    assert_eq!(out.finished().0, RunStatus::Succeeded);
    assert!(out.runtime.runtime.live_containers().contains("kiln-r1-a"));
}

#[tokio::test]
async fn build_failures_report_the_builder_exit_code() {
    let runtime = FakeRuntime::new();
    runtime.script(
        "reg/app:1",
        Script {
            exit_codes: vec![3],
            ..Default::default()
        },
    );
    let build = Step {
        id: "build".into(),
        kind: StepKind::Build(BuildStep {
            tags: vec!["reg/app:1".into()],
            context: ".".into(),
            ..Default::default()
        }),
        working_directory: "/workspace".into(),
        timeout: 600,
        ..Default::default()
    };
    let out = run(runtime, plan(vec![build])).await;
    let (status, reason) = out.finished();
    assert_eq!(status, RunStatus::Failed);
    assert!(reason.contains("returned a non-zero code: 3"), "{reason}");
    let update = out.step("build");
    assert!(update.has_exit_code && update.exit_code == 3);
}

#[tokio::test]
async fn pushes_report_digests() {
    let runtime = FakeRuntime::new();
    runtime.script(
        "reg/app:1",
        Script {
            digest: Some("sha256:abc".into()),
            ..Default::default()
        },
    );
    let build = Step {
        id: "build".into(),
        kind: StepKind::Build(BuildStep {
            tags: vec!["reg/app:1".into()],
            context: "sub".into(),
            dockerfile: "sub/Dockerfile".into(),
            ..Default::default()
        }),
        working_directory: "/workspace".into(),
        timeout: 600,
        ..Default::default()
    };
    let push = Step {
        id: "push".into(),
        kind: StepKind::Push(PushStep {
            images: vec!["reg/app:1".into()],
        }),
        depends_on: vec!["build".into()],
        timeout: 600,
        ..Default::default()
    };
    let out = run(runtime, plan(vec![build, push])).await;
    assert_eq!(out.finished().0, RunStatus::Succeeded);
    let image = out
        .reports
        .iter()
        .find_map(|r| match r {
            Report::Image(i) => Some(i.clone()),
            _ => None,
        })
        .expect("ImagePushed");
    assert_eq!(
        (image.image.as_str(), image.digest.as_str()),
        ("reg/app:1", "sha256:abc")
    );
    let spec = out
        .calls()
        .into_iter()
        .find_map(|c| match c {
            Call::Build(spec) => Some(spec),
            _ => None,
        })
        .expect("build");
    assert!(spec.context_dir.ends_with("runs/r1/workspace/sub"));
    assert!(spec
        .dockerfile
        .expect("dockerfile")
        .ends_with("workspace/sub/Dockerfile"));
    assert_eq!(spec.platform.as_deref(), Some("linux/amd64"));
}

#[tokio::test]
async fn log_upload_failures_do_not_lose_the_run() {
    let blobs = FakeBlobs {
        fail_uploads: true,
        ..Default::default()
    };
    let out = run_with(
        FakeRuntime::new(),
        blobs,
        plan(vec![cmd("a", "img", &[])]),
        0,
        |_, _| {},
    )
    .await;
    assert_eq!(out.finished().0, RunStatus::Succeeded);
    let a = out.step("a");
    assert_eq!(a.status, StepStatus::Succeeded as i32);
    assert!(
        a.reason.contains("the log could not be stored"),
        "{}",
        a.reason
    );
    assert!(a.reason.contains("registry unreachable"), "{}", a.reason);
    assert!(a.log_digest.is_empty());
    assert!(!out
        .reports
        .iter()
        .any(|r| matches!(r, Report::LogStored(_))));
}

#[tokio::test]
async fn missing_images_fail_with_the_reason() {
    let runtime = FakeRuntime::new();
    runtime.script(
        "pull:ghost",
        Script {
            error: Some(RuntimeError::Image {
                image: "ghost".into(),
                message: "manifest unknown".into(),
            }),
            ..Default::default()
        },
    );
    let out = run(runtime, plan(vec![cmd("a", "ghost", &[])])).await;
    let (status, reason) = out.finished();
    assert_eq!(status, RunStatus::Failed);
    assert!(reason.contains("image ghost: manifest unknown"), "{reason}");
}

#[tokio::test]
async fn invalid_task_files_end_in_error_with_diagnostics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (reports, mut rx) = report_channel(16);
    let env = Arc::new(RunnerEnv {
        name_scope: String::new(),
        platform_gate: Default::default(),
        secrets: Arc::new(crate::secrets::NoSecretStore),
        engine_socket: None,
        runtime: FakeRuntime::new(),
        blobs: FakeBlobs::default(),
        reports,
        work_dir: dir.path().to_path_buf(),
    });
    let assignment = Assignment {
        run_id: "r2".into(),
        request: Some(RunRequest {
            task_yaml: "steps:\n  - id: a\n    cmd: x\n    when: [b]\n".into(),
            task_file_name: "acb.yaml".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    execute(env, assignment, CancellationToken::new()).await;
    let mut log = String::new();
    let mut finished = None;
    while let Ok(report) = rx.try_recv() {
        match report {
            Report::Log(chunk) => log.push_str(&String::from_utf8_lossy(&chunk.data)),
            Report::Finished(f) => finished = Some(f),
            other => panic!("unexpected report {other:?}"),
        }
    }
    let finished = finished.expect("RunFinished");
    assert_eq!(finished.status, RunStatus::Error as i32);
    assert!(
        finished.reason.contains("b does not exist as a vertex"),
        "{}",
        finished.reason
    );
    assert!(log.contains("acb.yaml:4"), "{log}");
}

#[tokio::test]
async fn rendered_task_files_run_with_run_variables() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (reports, mut rx) = report_channel(64);
    let env = Arc::new(RunnerEnv {
        name_scope: String::new(),
        platform_gate: Default::default(),
        secrets: Arc::new(crate::secrets::NoSecretStore),
        engine_socket: None,
        runtime: FakeRuntime::new(),
        blobs: FakeBlobs::default(),
        reports,
        work_dir: dir.path().to_path_buf(),
    });
    let assignment = Assignment {
        run_id: "r3".into(),
        request: Some(RunRequest {
            task_yaml: "steps:\n  - cmd: -e X=1 {{.Run.Registry}}/tool:{{.Run.ID}} say '{{.Values.word}}'\n".into(),
            values_yaml: "word: hi there\n".into(),
            registry: "127.0.0.1:5000".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    // Read concurrently: the runner waits for each step's `Running` to be committed.
    let task = tokio::spawn(execute(
        Arc::clone(&env),
        assignment,
        CancellationToken::new(),
    ));
    let mut statuses = Vec::new();
    let collect = async {
        while let Some(report) = rx.recv().await {
            if let Report::Finished(f) = report {
                statuses.push(f.status);
                break;
            }
        }
    };
    tokio::time::timeout(TEST_LIMIT, collect)
        .await
        .expect("run did not finish in time");
    task.await.expect("run task");
    assert_eq!(statuses, vec![RunStatus::Succeeded as i32]);
    let spec = env
        .runtime
        .calls()
        .into_iter()
        .find_map(|c| match c {
            Call::Start { spec, .. } => Some(spec),
            _ => None,
        })
        .expect("container");
    assert_eq!(spec.image, "127.0.0.1:5000/tool:r3");
    assert_eq!(spec.args, vec!["say".to_string(), "hi there".to_string()]);
    assert!(spec.env.contains(&"X=1".to_string()));
}

#[test]
fn paths_are_confined_to_the_workspace() {
    assert_eq!(normalize_path("/workspace/a/../b/./c"), "/workspace/b/c");
    assert_eq!(normalize_path("/../up"), "/up");
    assert_eq!(container_name("r1", "a b/c"), "kiln-r1-a_b_c");
    assert_eq!(
        resolve_build_args(&["A=1".into(), "B".into(), "C".into()], &["B=2".into()]),
        vec!["A=1".to_string(), "B=2".to_string()]
    );
}

/// Runs the task file `yaml` (rendered by the runner, secrets from `secrets`) as run `r9`.
async fn run_task(
    runtime: FakeRuntime,
    yaml: &str,
    secrets: BTreeMap<String, String>,
    engine_socket: Option<PathBuf>,
) -> Outcome {
    let dir = tempfile::tempdir().expect("tempdir");
    let (reports, mut rx) = report_channel(16);
    let mut env = RunnerEnv::new(
        runtime,
        FakeBlobs::default(),
        reports,
        dir.path().to_path_buf(),
    );
    env.secrets = Arc::new(crate::secrets::StaticSecrets(secrets));
    env.engine_socket = engine_socket;
    let env = Arc::new(env);
    let assignment = Assignment {
        run_id: "r9".into(),
        request: Some(RunRequest {
            task_yaml: yaml.into(),
            task_file_name: "acb.yaml".into(),
            registry: "127.0.0.1:5000".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let task = tokio::spawn(execute(
        Arc::clone(&env),
        assignment,
        CancellationToken::new(),
    ));
    let mut seen = Vec::new();
    let collect = async {
        while let Some(report) = rx.recv().await {
            let done = matches!(report, Report::Finished(_));
            seen.push(report);
            if done {
                break;
            }
        }
    };
    tokio::time::timeout(TEST_LIMIT, collect)
        .await
        .expect("run did not finish in time");
    task.await.expect("run task");
    assert!(
        !dir.path().join("runs").join("r9").exists(),
        "run directory left behind"
    );
    Outcome {
        reports: seen,
        runtime: env,
        _dir: dir,
    }
}

/// Every string of every report, for "never appears anywhere" checks.
fn all_report_text(reports: &[Report]) -> String {
    let mut text = String::new();
    for report in reports {
        text.push_str(&format!("{report:?}\n"));
        if let Report::Log(chunk) = report {
            text.push_str(&String::from_utf8_lossy(&chunk.data));
        }
    }
    text
}

fn start_spec(out: &Outcome, name: &str) -> ContainerSpec {
    out.calls()
        .into_iter()
        .find_map(|c| match c {
            Call::Start { spec, .. } if spec.name == name => Some(spec),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no container {name}"))
}

const SECRET_TASK: &str = r#"version: v1.1.0
secrets:
  - id: token
    keyvault: https://kv.vault.azure.net/secrets/api-token
volumes:
  - name: creds
    secret:
      token.txt: {{.Secrets.token | b64enc}}
      plain.txt: aGVsbG8gd29ybGQK
steps:
  - id: show
    cmd: printer say {{.Secrets.token}}
    env: ["API_TOKEN={{.Secrets.token}}"]
    volumeMounts:
      - name: creds
        mountPath: /run/secrets
  - id: bad
    cmd: 127.0.0.1:5000/missing-{{.Secrets.token}}:v1
    ignoreErrors: true
"#;

#[tokio::test]
async fn secrets_reach_containers_but_never_reports() {
    let value = "tok-9f3a-SECRET";
    let runtime = FakeRuntime::new();
    runtime.script(
        "printer",
        Script {
            output: format!("the token is {value}, twice: {value}{value}\n"),
            ..Default::default()
        },
    );
    let missing = format!("127.0.0.1:5000/missing-{value}:v1");
    runtime.script(
        &format!("pull:{missing}"),
        Script {
            error: Some(RuntimeError::Image {
                image: missing.clone(),
                message: "manifest unknown".into(),
            }),
            ..Default::default()
        },
    );
    let out = run_task(
        runtime,
        SECRET_TASK,
        BTreeMap::from([("token".to_string(), value.to_string())]),
        None,
    )
    .await;
    assert_eq!(out.finished().0, RunStatus::Succeeded, "{:?}", out.reports);
    // The container got the real value, in its arguments and its environment.
    let spec = start_spec(&out, "kiln-r9-show");
    assert_eq!(spec.args, vec!["say".to_string(), value.to_string()]);
    assert!(spec.env.contains(&format!("API_TOKEN={value}")));
    // Nothing reported carries it: logs, reasons, uploads.
    let reported = all_report_text(&out.reports);
    assert!(!reported.contains(value), "{reported}");
    assert!(
        reported.contains("the token is ***, twice: ******"),
        "{reported}"
    );
    let bad = out.step("bad");
    assert!(bad.reason.contains("missing-***:v1"), "{}", bad.reason);
    let uploads = lock(&out.runtime.blobs.uploads).clone();
    assert!(uploads.iter().all(|u| !u.contains(value)), "{uploads:?}");
    assert!(uploads.iter().any(|u| u.contains("the token is ***")));
}

#[tokio::test]
async fn secret_volumes_are_read_only_files_outside_the_workspace() {
    let value = "volume-secret-value";
    let out = run_task(
        FakeRuntime::new(),
        SECRET_TASK,
        BTreeMap::from([("token".to_string(), value.to_string())]),
        None,
    )
    .await;
    assert_eq!(out.finished().0, RunStatus::Succeeded);
    let spec = start_spec(&out, "kiln-r9-show");
    let bind = spec
        .binds
        .iter()
        .find(|b| b.ends_with(":/run/secrets:ro"))
        .unwrap_or_else(|| panic!("no secret volume bind in {:?}", spec.binds));
    assert!(!bind.contains("/workspace"), "{bind}");
    let files = out.runtime.runtime.mounted_files("kiln-r9-show");
    let names: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        names,
        vec!["/run/secrets/plain.txt", "/run/secrets/token.txt"]
    );
    assert_eq!(files[0].content, b"hello world\n");
    assert_eq!(files[1].content, value.as_bytes());
    assert!(files.iter().all(|f| f.mode == 0o400), "{files:?}");
    // Removed with the run, and the volume's content is masked like a secret.
    assert!(files.iter().all(|f| !f.host_path.exists()));
    // Steps without volumeMounts get no secret volume.
    let other = start_spec(&out, "kiln-r9-bad");
    assert!(
        !other.binds.iter().any(|b| b.ends_with(":ro")),
        "{:?}",
        other.binds
    );
}

#[tokio::test]
async fn a_secret_the_store_lacks_ends_the_run_in_error_without_starting_steps() {
    let out = run_task(FakeRuntime::new(), SECRET_TASK, BTreeMap::new(), None).await;
    let (status, reason) = out.finished();
    assert_eq!(status, RunStatus::Error);
    assert!(reason.contains("secret token"), "{reason}");
    assert_eq!(reason.lines().count(), 1);
    assert!(out
        .calls()
        .iter()
        .all(|c| !matches!(c, Call::Start { .. } | Call::CreateNetwork(_))));
    let logged = all_report_text(&out.reports);
    assert!(logged.contains("secret token"), "{logged}");
}

#[tokio::test]
async fn undecodable_secret_volumes_end_the_run_in_error() {
    let yaml = "volumes:\n  - name: v\n    secret:\n      f: '%%%'\nsteps:\n  - cmd: img\n";
    let out = run_task(FakeRuntime::new(), yaml, BTreeMap::new(), None).await;
    let (status, reason) = out.finished();
    assert_eq!(status, RunStatus::Error);
    assert!(
        reason.contains("volume v: file f: failed to decode Base64"),
        "{reason}"
    );
    assert_eq!(out.step_status("acb_step_0"), StepStatus::Skipped);
    assert!(out.calls().iter().all(|c| !matches!(c, Call::Start { .. })));
}

#[tokio::test]
async fn steps_get_home_and_the_engine_socket_like_acr() {
    let yaml = "steps:\n  - cmd: img\n    env: [A=1]\n  - cmd: -v /elsewhere.sock:/var/run/docker.sock img2\n";
    let out = run_task(
        FakeRuntime::new(),
        yaml,
        BTreeMap::new(),
        Some(PathBuf::from("/run/engine.sock")),
    )
    .await;
    assert_eq!(out.finished().0, RunStatus::Succeeded);
    let spec = start_spec(&out, "kiln-r9-acb_step_0");
    assert_eq!(
        spec.env,
        vec!["HOME=/acb/home".to_string(), "A=1".to_string()]
    );
    assert!(
        spec.binds.iter().any(|b| b.ends_with("/home:/acb/home")),
        "{:?}",
        spec.binds
    );
    assert!(
        spec.binds
            .contains(&"/run/engine.sock:/var/run/docker.sock".to_string()),
        "{:?}",
        spec.binds
    );
    // A step that mounts its own socket there keeps it.
    let own = start_spec(&out, "kiln-r9-acb_step_1");
    let sockets: Vec<&String> = own
        .binds
        .iter()
        .filter(|b| b.ends_with(":/var/run/docker.sock"))
        .collect();
    assert_eq!(sockets, vec!["/elsewhere.sock:/var/run/docker.sock"]);
}

#[tokio::test]
async fn retry_on_errors_retries_only_matching_failures() {
    let script = |output: &str| Script {
        output: output.into(),
        exit_codes: vec![1, 1, 0],
        ..Default::default()
    };
    let runtime = FakeRuntime::new();
    runtime.script("flaky", script("error: connection reset by peer\n"));
    runtime.script("broken", script("error: disk full\n"));
    let mut a = cmd("a", "flaky", &[]);
    a.retries = 3;
    a.retry_delay = 0;
    a.retry_on_errors = vec!["connection reset".into()];
    let mut b = cmd("b", "broken", &["-"]);
    b.depends_on.clear();
    b.retries = 3;
    b.retry_delay = 0;
    b.retry_on_errors = vec!["connection reset".into(), "timeout".into()];
    b.ignore_errors = true;
    let out = run(runtime, plan(vec![a, b])).await;
    assert_eq!(out.finished().0, RunStatus::Succeeded);
    assert_eq!(out.starts("kiln-r1-a"), 3);
    assert_eq!(out.starts("kiln-r1-b"), 1);
    assert!(out.step("b").reason.contains("exit code 1"));
}

#[tokio::test]
async fn cmd_download_retries_repeat_a_failed_pull() {
    let runtime = FakeRuntime::new();
    runtime.script(
        "pull:ghost",
        Script {
            error: Some(RuntimeError::Image {
                image: "ghost".into(),
                message: "connection refused".into(),
            }),
            ..Default::default()
        },
    );
    let mut a = cmd("a", "ghost", &[]);
    a.pull = true;
    a.cmd_download_retries = 2;
    a.cmd_download_retry_delay = 0;
    let out = run(runtime, plan(vec![a])).await;
    assert_eq!(out.finished().0, RunStatus::Failed);
    let pulls = out
        .calls()
        .iter()
        .filter(
            |c| matches!(c, Call::EnsureImage { image, always_pull: true, .. } if image == "ghost"),
        )
        .count();
    assert_eq!(pulls, 3);
}

#[test]
fn engine_sockets_come_from_unix_endpoints_only() {
    assert_eq!(
        unix_socket_path("unix:///var/run/docker.sock"),
        Some(PathBuf::from("/var/run/docker.sock"))
    );
    assert_eq!(unix_socket_path("tcp://127.0.0.1:2375"), None);
    assert_eq!(unix_socket_path("unix://relative"), None);
}

/// A secret store that never answers.
#[derive(Debug)]
struct SilentStore;

impl crate::secrets::SecretResolver for SilentStore {
    fn resolve<'a>(
        &'a self,
        _: &'a crate::secrets::SecretRef,
    ) -> futures::future::BoxFuture<'a, Result<String, crate::secrets::SecretError>> {
        Box::pin(std::future::pending())
    }
}

#[tokio::test]
async fn a_cancel_while_secrets_resolve_cancels_the_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (reports, mut rx) = report_channel(16);
    let mut env = RunnerEnv::new(
        FakeRuntime::new(),
        FakeBlobs::default(),
        reports,
        dir.path().to_path_buf(),
    );
    env.secrets = Arc::new(SilentStore);
    let assignment = Assignment {
        run_id: "r5".into(),
        request: Some(RunRequest {
            task_yaml: SECRET_TASK.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let cancel = CancellationToken::new();
    let task = tokio::spawn(execute(Arc::new(env), assignment, cancel.clone()));
    cancel.cancel();
    let finished = tokio::time::timeout(TEST_LIMIT, async {
        loop {
            match rx.recv().await {
                Some(Report::Finished(f)) => break f,
                Some(_) => {}
                None => panic!("no RunFinished"),
            }
        }
    })
    .await
    .expect("the run ended");
    task.await.expect("run task");
    assert_eq!(finished.status, RunStatus::Canceled as i32);
    assert!(!dir.path().join("runs").join("r5").exists());
}

//! Simulated agents against a real coordinator process: the load generator's own load with two
//! simulated agents must see every run succeed, and the coordinator must agree.
//!
//! The coordinator binary is taken from `KILN_BIN_DIR`, else from the directory this test's
//! `kiln-loadtest` was built into (build it with `cargo build -p kiln-coordinator --bin
//! kiln-coordinator`). A missing binary fails the test with that command; nothing is skipped.

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln_proto::v1::control_client::ControlClient;
use kiln_proto::v1::{GetInfoRequest, ListRunsRequest};
use kiln_state::pb::{RunStatus, StepStatus};

const RUNS: usize = 20;
/// How long the coordinator may take to answer, and the load generator to finish.
const DEADLINE: Duration = Duration::from_secs(120);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// A coordinator process, killed when dropped.
struct Coordinator {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Coordinator {
    fn start(port: u16) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = dir.path().join("coordinator.log");
        let log_file = std::fs::File::create(&log).expect("a log file");
        let child = Command::new(common::coordinator_binary())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--peer-listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--http-listen", "off", "--initial-cluster-state", "new"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--registry", "127.0.0.1:5000"])
            .stdout(log_file.try_clone().expect("a second log handle"))
            .stderr(log_file)
            .spawn()
            .expect("kiln-coordinator starts");
        Self {
            child,
            log,
            _dir: dir,
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects once the coordinator answers `GetInfo` (it is a fresh process: connection refused
/// until it listens), failing at the deadline with its log.
async fn connect(
    address: &str,
    coordinator: &mut Coordinator,
) -> ControlClient<tonic::transport::Channel> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(20);
    loop {
        if let Ok(Some(status)) = coordinator.child.try_wait() {
            panic!(
                "the coordinator exited with {status}:\n{}",
                coordinator.log_tail()
            );
        }
        if let Ok(mut client) = ControlClient::connect(address.to_string()).await {
            if client.get_info(GetInfoRequest {}).await.is_ok() {
                return client;
            }
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the coordinator did not answer within {DEADLINE:?}:\n{}",
            coordinator.log_tail()
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_runs_succeed_on_two_simulated_agents() {
    let port = free_port();
    let address = format!("http://127.0.0.1:{port}");
    let mut coordinator = Coordinator::start(port);
    let mut client = connect(&address, &mut coordinator).await;

    let mut load = tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln-loadtest"));
    load.args(["--coordinator", &address])
        .args([
            "--runs",
            &RUNS.to_string(),
            "--rate",
            "0",
            "--poll-ms",
            "50",
        ])
        .args([
            "--sim-agents",
            "2",
            "--sim-capacity",
            "2",
            "--sim-step-ms",
            "20",
        ])
        .args(["--submitter", "sim-test", "--max-seconds", "120", "--json"])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(DEADLINE, load.output())
        .await
        .expect("kiln-loadtest ends within the deadline")
        .expect("kiln-loadtest runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "kiln-loadtest failed ({}):\n{stdout}\n{stderr}\n{}",
        output.status,
        coordinator.log_tail()
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("a JSON report");
    assert_eq!(report["counts"]["submitted"], RUNS);
    assert_eq!(report["counts"]["succeeded"], RUNS);
    assert_eq!(report["sim"]["succeeded"], RUNS, "{report}");
    assert_eq!(report["sim"]["assigned"], RUNS, "{report}");
    assert_eq!(report["sim"]["over_capacity"], 0, "{report}");
    assert_eq!(report["sim"]["report_errors"], 0, "{report}");

    // The coordinator's own record: every run succeeded, on a simulated agent, with its one
    // step succeeded, and the two agents shared the work.
    let runs = client
        .list_runs(ListRunsRequest { limit: 100 })
        .await
        .expect("ListRuns")
        .into_inner()
        .runs;
    assert_eq!(runs.len(), RUNS, "{runs:?}");
    let mut agents = std::collections::BTreeSet::new();
    for run in &runs {
        assert_eq!(run.status(), RunStatus::Succeeded, "{run:?}");
        assert_eq!(
            run.request.as_ref().map(|r| r.submitter.as_str()),
            Some("sim-test")
        );
        assert_eq!(run.steps.len(), 1, "{run:?}");
        assert_eq!(run.steps[0].id, "sim");
        assert_eq!(run.steps[0].status(), StepStatus::Succeeded, "{run:?}");
        assert!(run.started_at_ms >= run.created_at_ms && run.finished_at_ms >= run.started_at_ms);
        agents.insert(run.agent_id.clone());
    }
    assert_eq!(
        agents.len(),
        2,
        "both simulated agents took runs: {agents:?}"
    );
}

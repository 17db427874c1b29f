//! The short chaos run of the test suite: three coordinator processes, simulated agents and
//! continuous submissions while the leader is killed with SIGKILL ten times and isolated three
//! times. `kiln-loadtest chaos` itself checks that every acknowledged run ended once, none
//! executed under two leases and the replicas converged, and exits 1 otherwise; this test also
//! reads its report. The long version is `kiln-loadtest chaos --kills 200 --partitions 20`
//! (loadtest/README.md).

mod common;

use std::process::Command;

#[test]
fn ten_leader_kills_and_three_partitions_lose_no_run_and_run_none_twice() {
    let output = Command::new(env!("CARGO_BIN_EXE_kiln-loadtest"))
        .args([
            "chaos",
            "--kills",
            "10",
            "--partitions",
            "3",
            "--json",
            "--net",
            "78",
        ])
        .arg("--coordinator-binary")
        .arg(common::coordinator_binary())
        .output()
        .expect("kiln-loadtest runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "chaos failed:\n{stdout}\n{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(report["kills"], 10, "{report}");
    assert_eq!(report["partitions"], 3, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["executed_twice"], 0, "{report}");
    assert_eq!(report["not_terminal"], 0, "{report}");
    assert!(
        report["acknowledged"].as_u64().unwrap_or(0) > 50,
        "{report}"
    );
    assert_eq!(report["failover_ms"]["count"], 10, "{report}");
}

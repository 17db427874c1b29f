//! Dispatch that survives failures, on the real engine, registry and processes: an agent
//! killed mid-step, frozen past the liveness limit, stopped with SIGTERM, drained, or
//! duplicated; a coordinator-side timeout while the agent cannot act.

use kiln_e2e::{run_id, text, Farm};

/// A step that prints a numbered line every 200 ms for a minute.
fn ticking(registry: &str) -> String {
    format!(
        "{registry}/base/busybox:latest sh -c 'i=0; while [ $i -lt 300 ]; do i=$((i+1)); echo tick-$i; sleep 0.2; done'"
    )
}

/// Bytes of the run's first step log stored so far, from `kiln runs show` (the LOG column).
fn stored_log_bytes(farm: &Farm, run_id: &str) -> u64 {
    let show = text(&farm.kiln(&["runs", "show", run_id]));
    show.lines()
        .find(|line| line.starts_with("  acb_step_0"))
        .and_then(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "B" || *w == "KiB")?;
            let number: f64 = words.get(at - 1)?.parse().ok()?;
            Some(if words[at] == "KiB" {
                (number * 1024.0) as u64
            } else {
                number as u64
            })
        })
        .unwrap_or(0)
}

#[test]
fn an_agent_killed_mid_step_ends_the_run_its_log_survives_and_nothing_is_left_behind() {
    let mut farm = Farm::start();
    let queued = farm.kiln(&[
        "run",
        "--no-wait",
        "--cmd",
        &ticking(&farm.registry),
        "/dev/null",
    ]);
    assert!(queued.status.success(), "{}", text(&queued));
    let id = run_id(&queued);
    farm.wait_for_running_step(&id);
    // The log is stored while the step runs: wait until a first segment is in the registry.
    farm.wait_for("a log segment to be stored", || {
        stored_log_bytes(&farm, &id) > 0
    });
    farm.kill_agent();
    // The agent comes back (as systemd would restart it): its Hello lacks the run, which
    // then ends at once by the lost-agent policy.
    farm.start_agent();
    farm.wait_for("the run to end in Error", || {
        farm.run_field(&id, "Status:") == "Error"
    });
    let reason = farm.run_field(&id, "Reason:");
    // Restarted within the grace period (usual) or just after it: either way it names the
    // agent and what happened to it.
    assert!(
        reason.contains(&farm.agent_id)
            && (reason.contains("restarted mid-run") || reason.contains("disconnected mid-run")),
        "{reason}"
    );
    let logs = text(&farm.kiln(&["logs", &id]));
    assert!(logs.contains("tick-1\n"), "{logs}\n{}", farm.logs());
    farm.wait_for(
        "the killed run's containers and networks to be removed",
        || farm.run_resources(&id).is_empty(),
    );
}

#[test]
fn a_frozen_agent_is_declared_lost_its_late_reports_change_nothing_and_it_stops_the_run() {
    let farm = Farm::start();
    let queued = farm.kiln(&[
        "run",
        "--no-wait",
        "--cmd",
        &ticking(&farm.registry),
        "/dev/null",
    ]);
    let id = run_id(&queued);
    farm.wait_for_running_step(&id);
    farm.signal_agent("STOP");
    farm.wait_for("the frozen agent to be declared lost", || {
        farm.agent_state().as_deref() == Some("lost")
    });
    // After the grace period the run ends by the policy (Error, naming the agent).
    farm.wait_for("the run to end in Error", || {
        farm.run_field(&id, "Status:") == "Error"
    });
    let reason = farm.run_field(&id, "Reason:");
    assert!(reason.contains("was lost"), "{reason}");
    farm.signal_agent("CONT");
    // Back, it is told to stop the run it holds: the container goes away, and what it
    // reports about the run is refused.
    farm.wait_for("the stopped run's container to be removed", || {
        farm.run_resources(&id).is_empty()
    });
    farm.wait_for("the agent to be ready again", || {
        farm.agent_state().as_deref() == Some("ready")
    });
    assert_eq!(farm.run_field(&id, "Status:"), "Error");
    assert_eq!(farm.run_field(&id, "Reason:"), reason);
    let agent_log = farm.process_log("agent");
    assert!(
        agent_log.contains("no longer holds the run") || agent_log.contains("stopped the run"),
        "{}",
        farm.logs()
    );
}

#[test]
fn a_coordinator_side_timeout_stops_the_container_on_the_agent() {
    // The agent is frozen (but not declared lost) when the run's time is up: the coordinator
    // ends it and, once the agent runs again, the container is stopped and removed.
    let farm = Farm::start_with_args(
        &[
            "--timeout-slack-seconds",
            "0",
            "--agent-lost-after-ms",
            "120000",
        ],
        &[],
    );
    let queued = farm.kiln(&[
        "run",
        "--no-wait",
        "--timeout",
        "4",
        "--cmd",
        &ticking(&farm.registry),
        "/dev/null",
    ]);
    let id = run_id(&queued);
    farm.wait_for_running_step(&id);
    farm.signal_agent("STOP");
    farm.wait_for("the coordinator to end the run Timeout", || {
        farm.run_field(&id, "Status:") == "Timeout"
    });
    let reason = farm.run_field(&id, "Reason:");
    assert!(
        reason.contains("did not finish within its timeout of 4s"),
        "{reason}"
    );
    farm.signal_agent("CONT");
    farm.wait_for("the container to be removed", || {
        farm.run_resources(&id).is_empty()
    });
    assert_eq!(farm.run_field(&id, "Status:"), "Timeout");
}

#[test]
fn sigterm_lets_a_running_build_finish_and_takes_no_new_runs() {
    let mut farm = Farm::start_with_args(&[], &["--drain-timeout-seconds".into(), "120".into()]);
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!(
            "FROM {}/base/busybox:latest\nRUN echo building && sleep 6 && echo built\n",
            farm.registry
        ),
    )
    .unwrap();
    let build = std::process::Command::new(farm.bin_dir.join("kiln"))
        .args(["build", "--no-push", "--no-cache", "-t", "drain:v1"])
        .arg(ctx.path())
        .env("KILN_COORDINATOR", &farm.address)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    farm.wait_for("the build step to run", || {
        let list = text(&farm.kiln(&["runs", "list"]));
        list.lines().any(|l| l.contains("Running"))
    });
    let runs = text(&farm.kiln(&["runs", "list"]));
    let id = runs
        .lines()
        .find(|l| l.contains("Running"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    farm.wait_for_running_step(&id);
    farm.signal_agent("TERM");
    farm.wait_for("the agent to drain", || {
        farm.agent_state().as_deref() == Some("draining")
    });
    // A run submitted now waits: the draining agent takes nothing new.
    let waiting = farm.kiln(&[
        "run",
        "--no-wait",
        "--cmd",
        &format!("{}/base/busybox:latest true", farm.registry),
        "/dev/null",
    ]);
    let waiting = run_id(&waiting);
    let output = build.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}\n{}",
        text(&output),
        farm.logs()
    );
    assert!(
        text(&output).contains("Status: Succeeded"),
        "{}",
        text(&output)
    );
    assert!(farm.wait_for_agent_exit(), "{}", farm.logs());
    assert_eq!(farm.run_field(&waiting, "Status:"), "Queued");
    // Started again, it takes the waiting run.
    farm.start_agent();
    farm.wait_for("the waiting run to succeed", || {
        farm.run_field(&waiting, "Status:") == "Succeeded"
    });
}

#[test]
fn a_drained_agent_takes_no_runs_and_a_second_agent_with_its_id_is_refused() {
    let farm = Farm::start();
    let drained = farm.kiln(&["agents", "drain", &farm.agent_id]);
    assert!(drained.status.success(), "{}", text(&drained));
    assert!(text(&drained).contains("draining"), "{}", text(&drained));
    let queued = farm.kiln(&[
        "run",
        "--no-wait",
        "--cmd",
        &format!("{}/base/busybox:latest echo undrained", farm.registry),
        "/dev/null",
    ]);
    let id = run_id(&queued);
    assert_eq!(farm.run_field(&id, "Status:"), "Queued");
    assert!(
        farm.run_field(&id, "Waiting:")
            .contains("no agent is connected and ready"),
        "{}",
        farm.run_field(&id, "Waiting:")
    );
    let undrained = farm.kiln(&["agents", "undrain", &farm.agent_id]);
    assert!(undrained.status.success(), "{}", text(&undrained));
    farm.wait_for("the run to succeed once undrained", || {
        farm.run_field(&id, "Status:") == "Succeeded"
    });
    let unknown = farm.kiln(&["agents", "drain", "no-such-agent"]);
    assert!(!unknown.status.success());
    assert!(text(&unknown).contains("not known"), "{}", text(&unknown));

    // The same id from another process: it refuses to start (before touching the engine,
    // where the first one's containers are not leftovers), with a clear error and a non-zero
    // exit; the first keeps its place.
    let twin = farm.spawn_agent(&farm.agent_id, "twin");
    let status = kiln_e2e::wait_for_exit(twin).expect("the twin agent exits by itself");
    assert!(!status.success());
    let log = farm.process_log("twin");
    assert!(
        log.contains("is in use") && log.contains("--agent-id"),
        "{log}"
    );
    assert_eq!(farm.agent_state().as_deref(), Some("ready"));
}

//! A cluster of three coordinators on the real engine and registry: a run survives its leader
//! being killed, then the next one being frozen, and so do the live logs of `kiln run` and
//! `kiln logs -f`: every line printed once, in order, none lost. Then every member is killed at
//! once, and runs, steps, pushed digests and logs are all back.

use kiln_e2e::{
    copy_dir, examples_dir, pushed, run_id, run_id_in, text, unique, wait_for_exit, Farm,
};

const LINES: u32 = 200;

/// A step that prints `line-1` … `line-200`, one every 100 ms.
fn counting(registry: &str) -> String {
    format!(
        "{registry}/base/busybox:latest sh -c 'i=0; while [ $i -lt {LINES} ]; do i=$((i+1)); echo line-$i; sleep 0.1; done'"
    )
}

/// The `line-N` lines of `output`, in the order printed.
fn numbered_lines(output: &str) -> Vec<u32> {
    output
        .lines()
        .filter_map(|line| line.trim().strip_prefix("line-")?.parse().ok())
        .collect()
}

/// Checks `output` printed line-1 … line-200 exactly once each, in order.
fn assert_every_line_once(what: &str, output: &str, farm: &Farm) {
    let lines = numbered_lines(output);
    let expected: Vec<u32> = (1..=LINES).collect();
    assert_eq!(
        lines,
        expected,
        "{what} did not print every line once, in order:\n{output}\n{}",
        farm.logs()
    );
}

/// The highest `line-N` the run's log holds so far, as the leader sees it.
fn lines_so_far(farm: &Farm, run_id: &str) -> u32 {
    let out = farm.kiln(&["logs", run_id]);
    numbered_lines(&String::from_utf8_lossy(&out.stdout))
        .into_iter()
        .max()
        .unwrap_or(0)
}

#[test]
fn a_run_and_its_live_logs_survive_a_killed_and_a_frozen_leader() {
    let mut farm = Farm::start_cluster(3);
    // `kiln run` follows the log live from the first line.
    let run = farm.spawn_kiln(
        "run",
        &["run", "--cmd", &counting(&farm.registry), "/dev/null"],
    );
    let mut id = String::new();
    farm.wait_for("the run to be queued", || {
        id = run_id_in(&farm.process_log("run")).unwrap_or_default();
        !id.is_empty()
    });
    farm.wait_for("line 40", || lines_so_far(&farm, &id) >= 40);

    let first = farm.leader();
    farm.kill_coordinator(first);
    // A follower of the run started while there is no leader, or just after the election.
    let follower = farm.spawn_kiln("follow", &["logs", "-f", &id]);
    let second = farm.leader();
    assert_ne!(first, second);
    farm.start_coordinator();
    farm.wait_for("line 120", || lines_so_far(&farm, &id) >= 120);

    // The second leader freezes instead (SIGSTOP): its TCP connections stay open, so the
    // clients must notice by their keepalive pings, and when it thaws it must not keep them.
    let second = farm.leader();
    farm.signal_coordinator(second, "STOP");
    let run_status = wait_for_exit(run).map(|s| s.success());
    let follow_status = wait_for_exit(follower).map(|s| s.success());
    farm.signal_coordinator(second, "CONT");

    assert_eq!(
        run_status,
        Some(true),
        "kiln run did not succeed:\n{}\n{}",
        farm.process_log("run"),
        farm.logs()
    );
    assert_eq!(follow_status, Some(true), "{}", farm.process_log("follow"));
    assert_every_line_once("kiln run", &farm.output_of("run"), &farm);
    assert_every_line_once("kiln logs -f", &farm.output_of("follow"), &farm);
    // The stored log, read after the run, is whole too.
    let stored = farm.kiln(&["logs", &id]);
    assert_every_line_once("kiln logs", &text(&stored), &farm);
    assert_eq!(farm.run_field(&id, "Status:"), "Succeeded");
    // Neither stream hid a gap: they said nothing is missing.
    for name in ["run", "follow"] {
        assert!(
            !farm.output_of(name).contains("are missing here"),
            "{name}: {}",
            farm.output_of(name)
        );
    }

    // A build that pushes, then every member killed at once: the runs, their steps, the
    // pushed digest and the logs are all back after the restart.
    let tag = format!("{}/{}:1", farm.registry, unique("e2e/cluster"));
    let ctx = copy_dir(&examples_dir().join("hello"));
    let build = farm.kiln(&["build", "-t", &tag, ctx.path().to_str().unwrap()]);
    assert!(build.status.success(), "{}\n{}", text(&build), farm.logs());
    let digests = pushed(&build);
    assert_eq!(digests.len(), 1, "{}", text(&build));
    let build_id = run_id(&build);
    let before = text(&farm.kiln(&["runs", "show", &build_id]));
    let build_log = text(&farm.kiln(&["logs", &build_id]));
    for member in 1..=3 {
        farm.kill_coordinator(member);
    }
    farm.start_coordinator();
    farm.leader();
    assert_eq!(text(&farm.kiln(&["runs", "show", &build_id])), before);
    assert!(before.contains(&digests[0].1), "{before}");
    assert_eq!(text(&farm.kiln(&["logs", &build_id])), build_log);
    assert_every_line_once(
        "kiln logs after every member was killed",
        &text(&farm.kiln(&["logs", &id])),
        &farm,
    );
    assert_eq!(farm.run_field(&id, "Status:"), "Succeeded");
}

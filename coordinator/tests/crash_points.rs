//! Crash safety at every point: for each crash point (`kiln_coordinator::store::CRASH_POINTS`),
//! real `kiln-coordinator` processes, the point armed (`FAILPOINTS`) on one member, on the side
//! where it matters (the leader, a follower, or a cluster of one). Runs are submitted
//! continuously with request ids and every acknowledged one is recorded; the armed member
//! aborts at its point (SIGABRT, its log naming the point: it fired there and not elsewhere),
//! and is restarted WITHOUT the point on the same data directory. Then: it starts without
//! panicking, rejoins and catches up (all members converge on one applied index); requests
//! whose outcome was unknown, retried with their ids, make no second run; and, on every
//! member's store once all are stopped, every acknowledged run is there exactly once, committed
//! entries agree and states are equal at equal applied index.

mod support;

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use support::{check_stores, describe, read_store, ProcessCluster, Submitter, POLL, SIGABRT, WAIT};

const BINARY: &str = env!("CARGO_BIN_EXE_kiln-coordinator");
/// Concurrent submitters, so that several proposals share a Ready.
const SUBMITTERS: usize = 3;
/// Acknowledged submissions wanted after the restart (the restarted member must catch up on
/// them too).
const AFTER_RESTART: u64 = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// Armed on the leader of three.
    Leader,
    /// Armed on a follower of three.
    Follower,
    /// A cluster of one.
    Single,
}

#[derive(Clone, Copy, Debug)]
struct Scenario {
    point: &'static str,
    side: Side,
    /// Evaluations of the point the armed member lets pass before it aborts at the next one
    /// (enough to get past the election and into the submissions).
    pass: u32,
    /// `--compact-after-entries`, `--catch-up-entries` for every member.
    compact: Option<(u64, u64)>,
    /// The armed member (a follower) is first killed, falls behind the leader's compacted log
    /// and is restarted armed: the leader sends it a snapshot, and it aborts installing it.
    lagging: bool,
    /// Loopback addresses 127.0.`net`.x, one net per scenario.
    net: u8,
}

#[derive(Default)]
struct Record {
    acknowledged: HashMap<String, String>,
    /// Submissions no member answered: they may or may not have been committed.
    unknown: Vec<String>,
}

fn acked(record: &Mutex<Record>) -> u64 {
    record.lock().unwrap().acknowledged.len() as u64
}

async fn wait_acked(
    cluster: &mut ProcessCluster,
    record: &Mutex<Record>,
    at_least: u64,
    what: &str,
) {
    let deadline = Instant::now() + WAIT;
    while acked(record) < at_least {
        cluster.assert_alive();
        assert!(
            Instant::now() < deadline,
            "{what}: fewer than {at_least} submissions acknowledged within {WAIT:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

fn last_log_index(data_dir: &Path) -> u64 {
    use raft::Storage as _;
    let store = kiln_coordinator::store::Store::open(&data_dir.join("db")).unwrap();
    kiln_coordinator::store::RaftStorage {
        store,
        state: Default::default(),
    }
    .last_index()
    .unwrap()
}

async fn run(scenario: Scenario) {
    let started = Instant::now();
    let point = scenario.point;
    assert!(
        kiln_coordinator::store::CRASH_POINTS.contains(&point),
        "{point} is not a crash point"
    );
    let size = if scenario.side == Side::Single { 1 } else { 3 };
    let extra: Vec<String> = match scenario.compact {
        None => Vec::new(),
        Some((after, keep)) => vec![
            "--compact-after-entries".into(),
            after.to_string(),
            "--catch-up-entries".into(),
            keep.to_string(),
        ],
    };
    let mut cluster = ProcessCluster::new(Path::new(BINARY), size, scenario.net, &extra).await;
    let armed = 1;
    // The per-Ready write points fire at the first batch past `pass` that holds applied state
    // (the state, its index and the log must stay together there); the others at the first
    // evaluation past `pass`.
    let per_ready = point.starts_with("store-persist-");
    let action = if per_ready {
        "return(applied)"
    } else {
        "return"
    };
    let spec = if scenario.pass == 0 {
        format!("{point}={action}")
    } else {
        format!("{point}={}*off->{action}", scenario.pass)
    };
    for id in cluster.ids() {
        let arm = id == armed && !scenario.lagging;
        cluster.spawn(id, arm.then_some(spec.as_str()));
    }
    cluster.wait_leader().await;
    match scenario.side {
        Side::Leader => cluster.make_leader(armed).await,
        Side::Follower => cluster.make_leader_other_than(armed).await,
        Side::Single => {}
    }

    // Submissions, continuously, from the start to the end of the scenario.
    let record: Arc<Mutex<Record>> = Arc::default();
    let stop = CancellationToken::new();
    let mut submitters = Vec::new();
    for k in 0..SUBMITTERS {
        let mut submitter = Submitter::new(&cluster.urls());
        let record = record.clone();
        let stop = stop.clone();
        submitters.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.is_cancelled() {
                n += 1;
                let request_id = format!("{point}-{k}-{n}");
                match submitter.submit_once(&request_id).await {
                    Some(run_id) => {
                        let mut record = record.lock().unwrap();
                        let previous = record.acknowledged.insert(request_id.clone(), run_id);
                        assert!(previous.is_none(), "{request_id} was answered twice");
                    }
                    None => {
                        record.lock().unwrap().unknown.push(request_id);
                        tokio::time::sleep(POLL).await;
                    }
                }
            }
        }));
    }

    if scenario.lagging {
        wait_acked(&mut cluster, &record, 5, "before the follower is killed").await;
        cluster.kill(armed);
        let behind = last_log_index(&cluster.members[&armed].data_dir());
        // Wait until the leader compacted away the entries the killed member needs next.
        let deadline = Instant::now() + WAIT;
        loop {
            let leader = cluster.wait_leader().await;
            if let Some(status) = cluster.status(leader).await {
                if status.first_index > behind + 1 {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the leader did not compact past index {behind} within {WAIT:?}"
            );
            tokio::time::sleep(POLL).await;
        }
        cluster.spawn(armed, Some(&spec));
    }

    // The armed member aborts at its point; what it last said of itself is its role there.
    let deadline = Instant::now() + WAIT;
    let mut role = String::new();
    let exit = loop {
        if let Some(status) = cluster.status(armed).await {
            role = status.role;
        }
        if let Some(exit) = cluster.exited(armed) {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "crash point {point} did not fire within {WAIT:?} (armed as {spec})"
        );
        tokio::time::sleep(POLL).await;
    };
    let crashed_log = cluster.members[&armed].log();
    assert_eq!(
        exit.signal(),
        Some(SIGABRT),
        "member {armed} ended by {} instead of aborting at {point}:\n{crashed_log}",
        describe(&exit)
    );
    let marker = format!("crash point {point} reached");
    let last_words = crashed_log
        .lines()
        .find(|line| line.contains(&marker))
        .unwrap_or_else(|| panic!("member {armed} aborted, but not at {point}:\n{crashed_log}"))
        .to_string();
    if per_ready {
        assert!(
            !last_words.contains("applied state None"),
            "{point} fired at a batch without applied state: {last_words}"
        );
    }
    // A lagging member that has just restarted may abort before it answers a status call; it
    // cannot lead with its shorter log anyway.
    let expected_role = match scenario.side {
        Side::Leader | Side::Single => "leader",
        Side::Follower => "follower",
    };
    assert!(
        role == expected_role || (scenario.lagging && role.is_empty()),
        "member {armed} was to abort at {point} as the {expected_role}, it was {role:?}"
    );
    let acked_at_crash = acked(&record);
    assert!(
        acked_at_crash > 0,
        "{point} fired before any submission was acknowledged"
    );

    // Restarted without the point, on the same directory.
    cluster.spawn(armed, None);
    wait_acked(
        &mut cluster,
        &record,
        acked_at_crash + AFTER_RESTART,
        "after the restart",
    )
    .await;
    stop.cancel();
    for submitter in submitters {
        submitter.await.unwrap();
    }
    cluster.wait_converged().await;

    // The submissions nobody answered, retried with their request ids: one committed before
    // its proposer was told comes back with its run, and never makes a second one.
    let unknown = std::mem::take(&mut record.lock().unwrap().unknown);
    let existing = cluster.runs_by_request().await;
    let mut committed_unanswered = 0;
    let mut retry = Submitter::new(&cluster.urls());
    for request_id in &unknown {
        let run_id = retry.submit(request_id).await;
        if let Some(runs) = existing.get(request_id) {
            committed_unanswered += 1;
            assert_eq!(
                runs,
                std::slice::from_ref(&run_id),
                "the retry of {request_id} did not return the run it made"
            );
        }
        record
            .lock()
            .unwrap()
            .acknowledged
            .insert(request_id.clone(), run_id);
    }
    if point == "raft-before-reply" {
        assert!(
            committed_unanswered > 0,
            "{point}: no submission was committed and left unanswered ({} unknown)",
            unknown.len()
        );
    }
    let applied = cluster.wait_converged().await;

    for id in cluster.ids() {
        assert!(
            cluster.running(id),
            "member {id} stopped:\n{}",
            cluster.members[&id].log()
        );
        let log = cluster.members[&id].log();
        assert!(!log.contains("panicked"), "member {id} panicked:\n{log}");
    }
    cluster.kill_all();
    let disks: Vec<_> = cluster
        .members
        .values()
        .map(|m| read_store(m.id, &m.data_dir()))
        .collect();
    let acknowledged = record.lock().unwrap().acknowledged.clone();
    check_stores(&disks, &acknowledged);
    eprintln!(
        "{point} ({:?}{}): fired as {role} after {acked_at_crash} acknowledged: {last_words}; {} acknowledged in all, {} unknown retried ({committed_unanswered} had been committed); converged at {applied}; {:?}",
        scenario.side,
        if scenario.lagging { ", lagging" } else { "" },
        acknowledged.len(),
        unknown.len(),
        started.elapsed()
    );
}

fn scenario(point: &'static str, side: Side, pass: u32, net: u8) -> Scenario {
    Scenario {
        point,
        side,
        pass,
        compact: None,
        lagging: false,
        net,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_dies_before_the_ready_batch_is_written() {
    run(scenario("store-persist-before-write", Side::Leader, 40, 30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_member_dies_before_the_ready_batch_is_written() {
    run(scenario("store-persist-before-write", Side::Single, 40, 41)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_dies_after_the_ready_batch_is_written() {
    run(scenario(
        "store-persist-after-write",
        Side::Follower,
        40,
        31,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_member_dies_after_the_ready_batch_is_written() {
    run(scenario("store-persist-after-write", Side::Single, 40, 32)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_dies_after_persisting_before_its_append_responses_go() {
    run(scenario(
        "raft-before-persisted-messages",
        Side::Follower,
        20,
        33,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_dies_after_applying_before_the_applied_state_is_written() {
    run(scenario("raft-before-applied-write", Side::Leader, 20, 34)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_dies_after_commit_before_answering_the_client() {
    run(scenario("raft-before-reply", Side::Leader, 10, 35)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_member_dies_after_commit_before_answering_the_client() {
    run(scenario("raft-before-reply", Side::Single, 10, 36)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_dies_before_its_compaction_is_written() {
    run(Scenario {
        compact: Some((20, 5)),
        ..scenario("store-compact-before-write", Side::Follower, 1, 37)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_dies_after_its_compaction_is_written() {
    run(Scenario {
        compact: Some((20, 5)),
        ..scenario("store-compact-after-write", Side::Leader, 1, 38)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_follower_dies_before_the_snapshot_it_was_sent_is_written() {
    run(Scenario {
        compact: Some((20, 5)),
        lagging: true,
        ..scenario("store-snapshot-before-write", Side::Follower, 0, 39)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_follower_dies_after_the_snapshot_it_was_sent_is_written() {
    run(Scenario {
        compact: Some((20, 5)),
        lagging: true,
        ..scenario("store-snapshot-after-write", Side::Follower, 0, 40)
    })
    .await;
}

/// Every crash point is exercised above (a point renamed or added must be tested too).
#[test]
fn every_crash_point_has_a_scenario() {
    let source = include_str!("crash_points.rs");
    for point in kiln_coordinator::store::CRASH_POINTS {
        assert!(
            source.contains(&format!("\"{point}\",")),
            "crash point {point} has no scenario in tests/crash_points.rs"
        );
    }
}

//! The benchmarks' arithmetic and limits, without a coordinator.

use std::time::Duration;

use super::{goal_met, unique_submitter, validate_fairness, LoneRun};
use crate::stats::LatencySummary;

fn lone(queue_ms: Option<u64>) -> LoneRun {
    LoneRun {
        run_id: "r".to_string(),
        queue_ms,
        observed_ms: queue_ms,
        flood_unfinished: 100,
        error: None,
    }
}

fn summary(runs: &[LoneRun]) -> LatencySummary {
    LatencySummary::from_durations(
        runs.iter()
            .filter_map(|r| r.queue_ms.map(Duration::from_millis)),
    )
}

#[test]
fn the_goal_is_a_p99_of_at_most_one_second() {
    let fast: Vec<LoneRun> = (1..=20).map(|ms| lone(Some(ms * 10))).collect();
    assert!(goal_met(&fast, &summary(&fast)));
    let mut one_slow = fast.clone();
    one_slow[0] = lone(Some(1001));
    assert!(!goal_met(&one_slow, &summary(&one_slow)));
    let exactly = vec![lone(Some(1000))];
    assert!(goal_met(&exactly, &summary(&exactly)));
}

#[test]
fn a_lone_run_that_never_started_misses_the_goal() {
    let runs = vec![lone(Some(5)), lone(None)];
    assert!(!goal_met(&runs, &summary(&runs)));
    assert!(!goal_met(&[], &LatencySummary::default()));
}

#[test]
fn fairness_limits() {
    assert!(validate_fairness(10_000, 20, 1000).is_ok());
    for (queued, lone, every, flag) in [
        (0, 20, 1000, "--queued"),
        (100_001, 20, 1000, "--queued"),
        (10, 0, 1000, "--lone"),
        (10, 1001, 1000, "--lone"),
        (10, 1, 9, "--lone-every-ms"),
    ] {
        let error = validate_fairness(queued, lone, every)
            .unwrap_err()
            .to_string();
        assert!(error.starts_with(flag), "{error}");
    }
}

#[test]
fn submitters_are_unique_per_call_site_and_prefixed() {
    let name = unique_submitter("dispatch");
    assert!(name.starts_with(&format!("dispatch-{}-", std::process::id())));
}

//! Tests of the report built from a test's observations.

use std::time::Duration;

use kiln_state::pb::RunStatus;

use super::{Report, Settings, MAX_LISTED_PROBLEMS};
use crate::driver::{LoadPlan, LoadResult, StopReason};
use crate::outcome::{Attempt, FinishedRun, Outcome, RunEnd, StopCause, SubmittedRun};

fn ms(value: u64) -> Duration {
    Duration::from_millis(value)
}

fn plan(runs: u32) -> LoadPlan {
    LoadPlan {
        runs,
        rate: 2.0,
        concurrency_limit: 200,
        max_duration: Duration::from_secs(600),
        poll_interval: ms(500),
        progress_every: None,
    }
}

fn settings(runs: u32) -> Settings {
    Settings::new(
        "http://127.0.0.1:7878",
        "cmd: 127.0.0.1:5000/base/busybox:latest true",
        "linux/amd64",
        &plan(runs),
    )
}

/// A run sent at `sent` ms that waited `queue` ms, ran `run` ms and ended with `status`.
fn finished(index: u64, sent: u64, queue: u64, run: u64, status: RunStatus) -> Attempt {
    let end_to_end = ms(5 + queue + run);
    Attempt {
        schedule_lag: ms(index),
        sent_at: ms(sent),
        outcome: Outcome::Submitted(SubmittedRun {
            run_id: format!("ca{index}"),
            submit_latency: ms(5),
            end: RunEnd::Finished(FinishedRun {
                status,
                reason: if status == RunStatus::Succeeded {
                    String::new()
                } else {
                    format!("step 1 exited with 1\ndetails of ca{index}")
                },
                queue: Some(ms(queue)),
                run: Some(ms(run)),
                end_to_end,
                finished_at: ms(sent) + end_to_end,
            }),
        }),
    }
}

fn result(attempts: Vec<Attempt>, stopped_by: StopReason, canceled: u32) -> LoadResult {
    LoadResult {
        attempts,
        elapsed: Duration::from_millis(10_000),
        stopped_by,
        canceled,
    }
}

#[test]
fn an_all_green_test_counts_rates_and_percentiles() {
    // Ten runs, one every 500 ms (2/s); queue 100 ms, run 1000 ms.
    let attempts = (0..10)
        .map(|i| finished(i, i * 500, 100, 1000, RunStatus::Succeeded))
        .collect();
    let report = Report::new(settings(10), &result(attempts, StopReason::Completed, 0));
    assert!(report.all_succeeded());
    assert_eq!(report.counts.submitted, 10);
    assert_eq!(report.counts.succeeded, 10);
    assert_eq!(report.counts.failed + report.counts.unfinished, 0);
    assert_eq!(report.final_status.get("succeeded"), Some(&10));
    assert_eq!(report.submit_rate_per_second, Some(2.0));
    // Ten runs from the first submission (0 ms) to the last finish (4500 + 1105 ms).
    assert_eq!(report.throughput_runs_per_second, round3(10.0 / 5.605));
    assert_eq!(report.max_schedule_lag_ms, 9.0);
    assert_eq!(report.latency_ms.submit.count, 10);
    assert_eq!(report.latency_ms.queue.p50_ms, Some(100.0));
    assert_eq!(report.latency_ms.run.max_ms, Some(1000.0));
    assert_eq!(report.latency_ms.end_to_end.p99_ms, Some(1105.0));
    assert!(report.problems.is_empty());
}

#[test]
fn failures_unfinished_runs_and_submit_errors_are_counted_apart() {
    let attempts = vec![
        finished(1, 0, 100, 1000, RunStatus::Succeeded),
        finished(2, 500, 100, 2000, RunStatus::Failed),
        finished(3, 1000, 100, 3000, RunStatus::Timeout),
        Attempt {
            schedule_lag: ms(0),
            sent_at: ms(1500),
            outcome: Outcome::SubmitFailed {
                error: "Unavailable: connection refused".to_string(),
            },
        },
        Attempt {
            schedule_lag: ms(0),
            sent_at: ms(2000),
            outcome: Outcome::Submitted(SubmittedRun {
                run_id: "ca4".to_string(),
                submit_latency: ms(7),
                end: RunEnd::Unfinished {
                    last_status: RunStatus::Running,
                    queue: Some(ms(300)),
                    why: StopCause::Deadline,
                },
            }),
        },
    ];
    let report = Report::new(settings(6), &result(attempts, StopReason::Deadline, 1));
    assert!(!report.all_succeeded());
    let counts = &report.counts;
    assert_eq!(
        (
            counts.submitted,
            counts.submit_errors,
            counts.not_sent,
            counts.succeeded,
            counts.failed,
            counts.unfinished,
            counts.canceled_by_loadtest,
        ),
        (4, 1, 1, 1, 2, 1, 1)
    );
    assert_eq!(report.final_status.get("failed"), Some(&1));
    assert_eq!(report.final_status.get("timeout"), Some(&1));
    assert_eq!(report.final_status.get("succeeded"), Some(&1));
    // The unfinished run's queue time counts; its run and end-to-end times do not exist.
    assert_eq!(report.latency_ms.queue.count, 4);
    assert_eq!(report.latency_ms.queue.max_ms, Some(300.0));
    assert_eq!(report.latency_ms.run.count, 3);
    assert_eq!(report.latency_ms.end_to_end.count, 3);
    assert_eq!(report.latency_ms.submit.count, 4);

    let statuses: Vec<&str> = report.problems.iter().map(|p| p.status.as_str()).collect();
    assert_eq!(
        statuses,
        ["failed", "timeout", "submit_error", "unfinished"]
    );
    let unfinished = &report.problems[3];
    assert_eq!(unfinished.run_id, "ca4");
    assert_eq!(
        unfinished.reason,
        "last seen running when --max-seconds ran out"
    );
}

#[test]
fn the_problem_list_is_bounded() {
    let attempts = (0..50)
        .map(|i| finished(i, i * 10, 1, 1, RunStatus::Error))
        .collect();
    let report = Report::new(settings(50), &result(attempts, StopReason::Completed, 0));
    assert_eq!(report.counts.failed, 50);
    assert_eq!(report.problems.len(), MAX_LISTED_PROBLEMS);
}

#[test]
fn an_empty_test_reports_no_rates() {
    let report = Report::new(settings(5), &result(Vec::new(), StopReason::Interrupted, 0));
    assert_eq!(report.counts.not_sent, 5);
    assert_eq!(report.submit_rate_per_second, None);
    assert_eq!(report.throughput_runs_per_second, 0.0);
    assert_eq!(report.latency_ms.end_to_end.count, 0);
    assert!(report.to_table().contains("interrupted"));
}

#[test]
fn json_is_one_object_with_every_section() {
    let attempts = vec![finished(0, 0, 100, 1000, RunStatus::Succeeded)];
    let report = Report::new(settings(1), &result(attempts, StopReason::Completed, 0));
    let json = report.to_json();
    assert!(!json.contains('\n'));
    let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    assert_eq!(value["stopped_by"], "completed");
    assert_eq!(value["settings"]["runs"], 1);
    assert_eq!(value["settings"]["coordinator"], "http://127.0.0.1:7878");
    assert_eq!(value["counts"]["succeeded"], 1);
    assert_eq!(value["final_status"]["succeeded"], 1);
    assert_eq!(value["latency_ms"]["queue"]["p50_ms"], 100.0);
    assert_eq!(value["latency_ms"]["end_to_end"]["count"], 1);
    // One submission: no rate between submissions.
    assert!(value["submit_rate_per_second"].is_null());
}

#[test]
fn the_table_shows_counts_percentiles_and_problems() {
    let attempts = vec![
        finished(0, 0, 100, 1000, RunStatus::Succeeded),
        finished(1, 500, 200, 2000, RunStatus::Failed),
    ];
    let table = Report::new(settings(2), &result(attempts, StopReason::Completed, 0)).to_table();
    assert!(
        table.contains("submitted 2/2  succeeded 1  failed 1  unfinished 0  submit errors 0"),
        "{table}"
    );
    assert!(
        table.contains("final status  failed 1, succeeded 1"),
        "{table}"
    );
    let queue_row = table
        .lines()
        .find(|line| line.starts_with("queue"))
        .expect("a queue row");
    let cells: Vec<&str> = queue_row.split_whitespace().collect();
    assert_eq!(
        cells,
        ["queue", "2", "100.0", "200.0", "200.0", "200.0", "150.0"]
    );
    // The failure is named, on one line.
    let problem = table
        .lines()
        .find(|line| line.contains("ca1"))
        .expect("the failed run is listed");
    assert!(problem.contains("failed") && problem.contains("step 1 exited with 1…"));
    assert!(!table.contains("details of ca1"));
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

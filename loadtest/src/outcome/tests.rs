//! Tests of reading latencies from a run record.

use std::time::Duration;

use kiln_state::pb::{Run, RunStatus};

use super::{queue_time, FinishedRun};

fn run(created: u64, started: u64, finished: u64, status: RunStatus) -> Run {
    let mut run = Run {
        id: "ca7".to_string(),
        created_at_ms: created,
        started_at_ms: started,
        finished_at_ms: finished,
        reason: "exit code 1".to_string(),
        ..Run::default()
    };
    run.set_status(status);
    run
}

#[test]
fn latencies_come_from_the_coordinator_time_stamps() {
    let record = run(10_050, 10_300, 11_300, RunStatus::Failed);
    let finished = FinishedRun::from_run(
        &record,
        Duration::from_secs(2),
        10_000,
        Duration::from_millis(1_600),
    );
    assert_eq!(finished.status, RunStatus::Failed);
    assert_eq!(finished.reason, "exit code 1");
    assert_eq!(finished.queue, Some(Duration::from_millis(250)));
    assert_eq!(finished.run, Some(Duration::from_millis(1_000)));
    assert_eq!(finished.end_to_end, Duration::from_millis(1_300));
    assert_eq!(finished.finished_at, Duration::from_millis(3_300));
}

#[test]
fn a_run_canceled_in_the_queue_has_no_queue_or_run_time() {
    let record = run(10_050, 0, 10_400, RunStatus::Canceled);
    let finished = FinishedRun::from_run(&record, Duration::ZERO, 10_000, Duration::from_secs(1));
    assert_eq!(finished.queue, None);
    assert_eq!(finished.run, None);
    assert_eq!(finished.end_to_end, Duration::from_millis(400));
}

#[test]
fn end_to_end_falls_back_to_the_observed_time() {
    // No finish time stamp.
    let record = run(10_050, 10_100, 0, RunStatus::Error);
    let observed = Duration::from_millis(700);
    let finished = FinishedRun::from_run(&record, Duration::ZERO, 10_000, observed);
    assert_eq!(finished.end_to_end, observed);
    assert_eq!(finished.run, None);

    // A coordinator clock behind ours: the finish stamp precedes the submission.
    let record = run(9_000, 9_100, 9_500, RunStatus::Succeeded);
    let finished = FinishedRun::from_run(&record, Duration::ZERO, 10_000, observed);
    assert_eq!(finished.end_to_end, observed);

    // A coordinator clock ahead of ours: never later than when the end was seen.
    let record = run(20_000, 20_100, 25_000, RunStatus::Succeeded);
    let finished = FinishedRun::from_run(&record, Duration::ZERO, 10_000, observed);
    assert_eq!(finished.end_to_end, observed);
}

#[test]
fn queue_time_needs_both_time_stamps_in_order() {
    assert_eq!(
        queue_time(&run(100, 350, 0, RunStatus::Running)),
        Some(Duration::from_millis(250))
    );
    assert_eq!(queue_time(&run(100, 0, 0, RunStatus::Queued)), None);
    assert_eq!(queue_time(&run(0, 350, 0, RunStatus::Running)), None);
    assert_eq!(queue_time(&run(400, 350, 0, RunStatus::Running)), None);
}

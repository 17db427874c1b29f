//! What the load generator learned about each run it tried to submit.

use std::time::Duration;

use kiln_state::pb::{Run, RunStatus};

/// One scheduled submission and what became of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Attempt {
    /// How long after its scheduled time the submission was sent: large values mean the
    /// concurrency limit or this machine held the open-loop schedule back.
    pub schedule_lag: Duration,
    /// When the submission was sent, from the start of the test.
    pub sent_at: Duration,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// `SubmitRun` failed: the farm never had this run.
    SubmitFailed {
        error: String,
    },
    Submitted(SubmittedRun),
}

#[derive(Clone, Debug, PartialEq)]
pub struct SubmittedRun {
    pub run_id: String,
    /// How long `SubmitRun` took.
    pub submit_latency: Duration,
    pub end: RunEnd,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RunEnd {
    /// The run reached a terminal status.
    Finished(FinishedRun),
    /// The test stopped before the run ended (or its status could not be read).
    Unfinished {
        /// The last status seen (`Unspecified` when never seen).
        last_status: RunStatus,
        /// Created→started, when the run had started.
        queue: Option<Duration>,
        why: StopCause,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct FinishedRun {
    pub status: RunStatus,
    pub reason: String,
    /// Created→started, from the coordinator's time stamps; `None` when the run never started
    /// (for example when it was canceled in the queue).
    pub queue: Option<Duration>,
    /// Started→finished, from the coordinator's time stamps.
    pub run: Option<Duration>,
    /// From sending `SubmitRun` to the coordinator's finish time stamp.
    pub end_to_end: Duration,
    /// When the run finished, from the start of the test.
    pub finished_at: Duration,
}

/// Why a submitted run was left unfinished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopCause {
    /// `--max-seconds` ran out.
    Deadline,
    /// The user interrupted the test.
    Interrupted,
    /// `GetRun` kept failing; the last error.
    Unreadable(String),
}

impl FinishedRun {
    /// Reads the latencies of a terminal `run`. `sent_wall_ms` is the wall-clock time (ms since
    /// the Unix epoch) at which `SubmitRun` was sent and `observed` how long after sending the
    /// terminal status was seen: the end-to-end time comes from the coordinator's finish time
    /// stamp (the same clock on a loopback farm), or from `observed` when the run has none.
    pub fn from_run(run: &Run, sent_at: Duration, sent_wall_ms: u64, observed: Duration) -> Self {
        let end_to_end = match run.finished_at_ms.checked_sub(sent_wall_ms) {
            Some(ms) if run.finished_at_ms > 0 => Duration::from_millis(ms).min(observed),
            _ => observed,
        };
        Self {
            status: run.status(),
            reason: run.reason.clone(),
            queue: queue_time(run),
            run: span_ms(run.started_at_ms, run.finished_at_ms),
            end_to_end,
            finished_at: sent_at + end_to_end,
        }
    }
}

/// Created→started of `run`, when it has started.
pub fn queue_time(run: &Run) -> Option<Duration> {
    span_ms(run.created_at_ms, run.started_at_ms)
}

/// `to - from` for two millisecond time stamps that are both set and in order.
fn span_ms(from: u64, to: u64) -> Option<Duration> {
    if from == 0 || to == 0 {
        return None;
    }
    to.checked_sub(from).map(Duration::from_millis)
}

#[cfg(test)]
mod tests;

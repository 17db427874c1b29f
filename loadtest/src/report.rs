//! The test's report: counts, rates and latency percentiles, as a table for a person or as one
//! JSON object for CI.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use kiln_state::pb::RunStatus;

use crate::driver::{LoadPlan, LoadResult, StopReason};
use crate::outcome::{Outcome, RunEnd, StopCause};
use crate::stats::LatencySummary;

/// How many failed or unfinished runs the report names.
pub const MAX_LISTED_PROBLEMS: usize = 10;

/// What was asked for, copied into the report so that two reports can be compared.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Settings {
    pub coordinator: String,
    pub workload: String,
    pub platform: String,
    pub runs: u32,
    pub rate_per_second: f64,
    pub concurrency_limit: usize,
    pub max_seconds: f64,
    pub poll_interval_ms: u64,
}

impl Settings {
    pub fn new(coordinator: &str, workload: &str, platform: &str, plan: &LoadPlan) -> Self {
        Self {
            coordinator: coordinator.to_string(),
            workload: workload.to_string(),
            platform: platform.to_string(),
            runs: plan.runs,
            rate_per_second: plan.rate,
            concurrency_limit: plan.concurrency_limit,
            max_seconds: plan.max_duration.as_secs_f64(),
            poll_interval_ms: u64::try_from(plan.poll_interval.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub settings: Settings,
    pub stopped_by: StopReason,
    pub counts: Counts,
    /// Finished runs by final status (`succeeded`, `failed`, `error`, `timeout`, `canceled`).
    pub final_status: BTreeMap<String, u32>,
    /// From the start of the test until the last run ended or the test stopped.
    pub wall_seconds: f64,
    /// Submissions sent per second, between the first and the last (`None` below two).
    pub submit_rate_per_second: Option<f64>,
    /// Finished runs per second, from the first submission to the last finish.
    pub throughput_runs_per_second: f64,
    /// The largest delay of a submission behind its open-loop schedule.
    pub max_schedule_lag_ms: f64,
    pub latency_ms: Latencies,
    /// The first failed, unfinished or unsubmitted runs, with why.
    pub problems: Vec<Problem>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Runs the farm accepted.
    pub submitted: u32,
    /// Submissions the farm refused or that failed on the way.
    pub submit_errors: u32,
    /// Runs never sent because the test stopped first.
    pub not_sent: u32,
    pub succeeded: u32,
    /// Runs that ended in any status but succeeded.
    pub failed: u32,
    /// Submitted runs whose end the test did not see.
    pub unfinished: u32,
    /// Unfinished runs the test canceled on the farm when it stopped.
    pub canceled_by_loadtest: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Latencies {
    /// The `SubmitRun` RPC.
    pub submit: LatencySummary,
    /// Created → started (waiting for an agent), for every run that started.
    pub queue: LatencySummary,
    /// Started → finished, for every run that finished after starting.
    pub run: LatencySummary,
    /// Sending `SubmitRun` → finished, for every finished run.
    pub end_to_end: LatencySummary,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Empty when the submission failed.
    pub run_id: String,
    /// A final status, or `unfinished` or `submit_error`.
    pub status: String,
    pub reason: String,
}

impl Report {
    pub fn new(settings: Settings, result: &LoadResult) -> Self {
        let mut counts = Counts {
            canceled_by_loadtest: result.canceled,
            ..Counts::default()
        };
        let mut final_status = BTreeMap::new();
        let mut problems = Vec::new();
        let mut note = |problem: Problem| {
            if problems.len() < MAX_LISTED_PROBLEMS {
                problems.push(problem);
            }
        };
        let (mut submit, mut queue, mut run, mut end_to_end) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut last_finish: Option<Duration> = None;
        for attempt in &result.attempts {
            let submitted = match &attempt.outcome {
                Outcome::SubmitFailed { error } => {
                    counts.submit_errors += 1;
                    note(Problem {
                        run_id: String::new(),
                        status: "submit_error".to_string(),
                        reason: error.clone(),
                    });
                    continue;
                }
                Outcome::Submitted(submitted) => submitted,
            };
            counts.submitted += 1;
            submit.push(submitted.submit_latency);
            match &submitted.end {
                RunEnd::Finished(finished) => {
                    let status = status_name(finished.status);
                    *final_status.entry(status.clone()).or_insert(0) += 1;
                    if finished.status == RunStatus::Succeeded {
                        counts.succeeded += 1;
                    } else {
                        counts.failed += 1;
                        note(Problem {
                            run_id: submitted.run_id.clone(),
                            status,
                            reason: finished.reason.clone(),
                        });
                    }
                    queue.extend(finished.queue);
                    run.extend(finished.run);
                    end_to_end.push(finished.end_to_end);
                    last_finish = last_finish.max(Some(finished.finished_at));
                }
                RunEnd::Unfinished {
                    last_status,
                    queue: queued_for,
                    why,
                } => {
                    counts.unfinished += 1;
                    queue.extend(*queued_for);
                    note(Problem {
                        run_id: submitted.run_id.clone(),
                        status: "unfinished".to_string(),
                        reason: unfinished_reason(*last_status, why),
                    });
                }
            }
        }
        let sent = u32::try_from(result.attempts.len()).unwrap_or(u32::MAX);
        counts.not_sent = settings.runs.saturating_sub(sent);

        let first_sent = result.attempts.iter().map(|a| a.sent_at).min();
        let last_sent = result.attempts.iter().map(|a| a.sent_at).max();
        let submit_rate_per_second = match (first_sent, last_sent) {
            (Some(first), Some(last)) if sent >= 2 && last > first => {
                Some(round3(f64::from(sent - 1) / (last - first).as_secs_f64()))
            }
            _ => None,
        };
        let finished = u32::try_from(end_to_end.len()).unwrap_or(u32::MAX);
        let throughput_runs_per_second = match (first_sent, last_finish) {
            (Some(first), Some(last)) if last > first => {
                round3(f64::from(finished) / (last - first).as_secs_f64())
            }
            _ => 0.0,
        };
        let max_schedule_lag = result
            .attempts
            .iter()
            .map(|a| a.schedule_lag)
            .max()
            .unwrap_or_default();
        Self {
            settings,
            stopped_by: result.stopped_by,
            counts,
            final_status,
            wall_seconds: round3(result.elapsed.as_secs_f64()),
            submit_rate_per_second,
            throughput_runs_per_second,
            max_schedule_lag_ms: round3(max_schedule_lag.as_secs_f64() * 1000.0),
            latency_ms: Latencies {
                submit: LatencySummary::from_durations(submit),
                queue: LatencySummary::from_durations(queue),
                run: LatencySummary::from_durations(run),
                end_to_end: LatencySummary::from_durations(end_to_end),
            },
            problems,
        }
    }

    /// True when every requested run was submitted and succeeded.
    pub fn all_succeeded(&self) -> bool {
        self.counts.succeeded == self.settings.runs
    }

    /// The report as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("the report has only string keys and finite numbers")
    }

    /// The report as a table for a person.
    pub fn to_table(&self) -> String {
        let s = &self.settings;
        let c = &self.counts;
        let mut out = String::new();
        let rate = if s.rate_per_second > 0.0 {
            format!("at {}/s", s.rate_per_second)
        } else {
            "as fast as possible".to_string()
        };
        let _ = writeln!(out, "coordinator   {}", s.coordinator);
        let _ = writeln!(out, "workload      {} ({})", s.workload, s.platform);
        let _ = writeln!(
            out,
            "load          {} runs {rate}, at most {} RPCs in flight, polled every {} ms",
            s.runs, s.concurrency_limit, s.poll_interval_ms
        );
        let stopped = match self.stopped_by {
            StopReason::Completed => "every run ended",
            StopReason::Deadline => "--max-seconds ran out",
            StopReason::Interrupted => "interrupted",
        };
        let _ = writeln!(
            out,
            "stopped       after {:.1} s: {stopped}",
            self.wall_seconds
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "runs          submitted {}/{}  succeeded {}  failed {}  unfinished {}  submit errors {}",
            c.submitted, s.runs, c.succeeded, c.failed, c.unfinished, c.submit_errors
        );
        if c.not_sent > 0 || c.canceled_by_loadtest > 0 {
            let _ = writeln!(
                out,
                "              not sent {}  canceled by kiln-loadtest {}",
                c.not_sent, c.canceled_by_loadtest
            );
        }
        if !self.final_status.is_empty() {
            let statuses: Vec<String> = self
                .final_status
                .iter()
                .map(|(status, n)| format!("{status} {n}"))
                .collect();
            let _ = writeln!(out, "final status  {}", statuses.join(", "));
        }
        let submit_rate = self
            .submit_rate_per_second
            .map_or_else(|| "-".to_string(), |r| format!("{r:.2}/s"));
        let _ = writeln!(
            out,
            "rates         submitted {submit_rate}  completed {:.2} runs/s  max schedule lag {:.1} ms",
            self.throughput_runs_per_second, self.max_schedule_lag_ms
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<14}{:>6}{:>10}{:>10}{:>10}{:>10}{:>10}",
            "latency (ms)", "count", "p50", "p90", "p99", "max", "mean"
        );
        let l = &self.latency_ms;
        for (name, summary) in [
            ("submit", &l.submit),
            ("queue", &l.queue),
            ("run", &l.run),
            ("end-to-end", &l.end_to_end),
        ] {
            let _ = writeln!(
                out,
                "{name:<14}{:>6}{:>10}{:>10}{:>10}{:>10}{:>10}",
                summary.count,
                cell(summary.p50_ms),
                cell(summary.p90_ms),
                cell(summary.p99_ms),
                cell(summary.max_ms),
                cell(summary.mean_ms),
            );
        }
        if !self.problems.is_empty() {
            let _ = writeln!(out);
            let _ = writeln!(out, "problems (first {MAX_LISTED_PROBLEMS}):");
            for problem in &self.problems {
                let run_id = if problem.run_id.is_empty() {
                    "-"
                } else {
                    &problem.run_id
                };
                let _ = writeln!(
                    out,
                    "  {run_id:<8} {:<13} {}",
                    problem.status,
                    one_line(&problem.reason)
                );
            }
        }
        out
    }
}

/// `RUN_STATUS_SUCCEEDED` → `succeeded`.
fn status_name(status: RunStatus) -> String {
    status
        .as_str_name()
        .trim_start_matches("RUN_STATUS_")
        .to_ascii_lowercase()
}

fn unfinished_reason(last_status: RunStatus, why: &StopCause) -> String {
    let last = match last_status {
        RunStatus::Unspecified => "status never read".to_string(),
        other => format!("last seen {}", status_name(other)),
    };
    match why {
        StopCause::Deadline => format!("{last} when --max-seconds ran out"),
        StopCause::Interrupted => format!("{last} when the test was interrupted"),
        StopCause::Unreadable(error) => format!("{last}; GetRun kept failing: {error}"),
    }
}

fn cell(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"))
}

fn one_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    let mut shown: String = line.chars().take(100).collect();
    if shown.len() < line.len() || text.lines().nth(1).is_some() {
        shown.push('…');
    }
    shown
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests;

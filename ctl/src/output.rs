//! Formatting of runs, steps and times for the terminal.

use std::time::{Duration, UNIX_EPOCH};

use kiln_state::machine::{status_name, step_status_name};
use kiln_state::pb::{Platform, Run};

pub fn time(ms: u64) -> String {
    if ms == 0 {
        return "-".to_string();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// How long the run took, or has been running.
pub fn duration(run: &Run) -> String {
    if run.started_at_ms == 0 {
        return "-".to_string();
    }
    let end = if run.finished_at_ms > 0 {
        run.finished_at_ms
    } else {
        now_ms()
    };
    let seconds = end.saturating_sub(run.started_at_ms) / 1000;
    humantime::format_duration(Duration::from_secs(seconds)).to_string()
}

pub fn platform(platform: Option<&Platform>) -> String {
    kiln_state::PlatformSpec::from_pb(platform).map_or_else(|e| e, |p| p.to_string())
}

pub fn status(run: &Run) -> &'static str {
    status_name(run.status())
}

/// A table of runs, newest first.
pub fn runs_table(runs: &[Run]) -> String {
    let mut rows = vec![[
        "RUN ID".to_string(),
        "STATUS".to_string(),
        "KIND".to_string(),
        "PLATFORM".to_string(),
        "CREATED".to_string(),
        "DURATION".to_string(),
    ]];
    for run in runs {
        let request = run.request.clone().unwrap_or_default();
        rows.push([
            run.id.clone(),
            status(run).to_string(),
            request.kind.clone(),
            platform(request.platform.as_ref()),
            time(run.created_at_ms),
            duration(run),
        ]);
    }
    table(&rows)
}

/// Everything known about one run.
/// How much of a step's log is stored: bytes, and segments while it runs.
fn stored_log(step: &kiln_state::pb::Step) -> String {
    let stored: u64 = step.log_segments.iter().map(|s| s.size).sum();
    let bytes = stored.max(step.log_size);
    if bytes == 0 && step.log_segments.is_empty() && step.log_digest.is_empty() {
        return "-".to_string();
    }
    if step.log_segments.len() > 1 {
        format!("{} ({} parts)", human_size(bytes), step.log_segments.len())
    } else {
        human_size(bytes)
    }
}

fn human_size(bytes: u64) -> String {
    match bytes {
        b if b < 1024 => format!("{b} B"),
        b if b < 1024 * 1024 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
    }
}

pub fn run_details(run: &Run, queued_reason: &str) -> String {
    let request = run.request.clone().unwrap_or_default();
    let mut out = String::new();
    let mut line = |key: &str, value: &str| out.push_str(&format!("{key:<10} {value}\n"));
    line("Run ID:", &run.id);
    line("Status:", status(run));
    if !queued_reason.is_empty() {
        line("Waiting:", queued_reason);
    }
    if !run.reason.is_empty() {
        line("Reason:", &run.reason);
    }
    line("Kind:", &request.kind);
    line("Platform:", &platform(request.platform.as_ref()));
    if !run.agent_id.is_empty() {
        let emulated = if run.emulated {
            " (emulated with QEMU)"
        } else {
            ""
        };
        line("Agent:", &format!("{}{emulated}", run.agent_id));
    }
    line("Registry:", &request.registry);
    line("Created:", &time(run.created_at_ms));
    line("Started:", &time(run.started_at_ms));
    line("Finished:", &time(run.finished_at_ms));
    line("Duration:", &duration(run));
    if run.cancel_requested && run.finished_at_ms == 0 {
        line("Cancel:", "requested");
    }
    if run.attempt > 1 || !run.requeues.is_empty() {
        line("Attempt:", &run.attempt.to_string());
        for requeue in &run.requeues {
            line("Requeued:", requeue);
        }
    }
    if !request.agent_pool.is_empty() {
        line("Pool:", &request.agent_pool);
    }
    if !run.steps.is_empty() {
        out.push_str("Steps:\n");
        let mut rows = vec![[
            "  STEP".to_string(),
            "STATUS".to_string(),
            "EXIT".to_string(),
            "DURATION".to_string(),
            "LOG".to_string(),
            "REASON".to_string(),
        ]];
        for step in &run.steps {
            let exit = if step.has_exit_code {
                step.exit_code.to_string()
            } else {
                "-".to_string()
            };
            let took = if step.started_at_ms > 0 && step.finished_at_ms >= step.started_at_ms {
                humantime::format_duration(Duration::from_secs(
                    (step.finished_at_ms - step.started_at_ms) / 1000,
                ))
                .to_string()
            } else {
                "-".to_string()
            };
            rows.push([
                format!("  {}", step.id),
                step_status_name(step.status()).to_string(),
                exit,
                took,
                stored_log(step),
                step.reason.clone(),
            ]);
        }
        out.push_str(&table(&rows));
    }
    if !run.images.is_empty() {
        out.push_str("Images:\n");
        for image in &run.images {
            out.push_str(&format!("  {}@{}\n", image.image, image.digest));
        }
    }
    out
}

/// Left-aligned columns separated by two spaces.
pub fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(index, (cell, width))| {
                if index + 1 == N {
                    cell.clone()
                } else {
                    format!("{cell:<width$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

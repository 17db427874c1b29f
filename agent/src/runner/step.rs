//! One step from its start delay to its terminal report: the step log, the body, retries,
//! repeat and the step timeout.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_proto::pb::StepStatus;
use tokio_util::sync::CancellationToken;

use super::actions::{build_step, cmd_step, push_step};
use super::{safe_name, Fail, RunCtx, StepEnd};
use crate::blobs::BlobStore;
use crate::executor::ContainerRuntime;
use crate::logs::StepLog;
use crate::reports::{Report, ReportError};
use crate::task::{Step, StepKind};

/// Runs one step from its start delay to its terminal report.
pub(super) async fn run_step<R: ContainerRuntime, B: BlobStore>(
    ctx: Arc<RunCtx<R, B>>,
    step: Step,
    token: CancellationToken,
) -> StepEnd {
    if step.start_delay > 0 {
        let delay = tokio::time::sleep(Duration::from_secs(step.start_delay));
        let stopped = tokio::select! {
            _ = delay => false,
            _ = token.cancelled() => true,
        };
        if stopped {
            let fail = ctx.stopped_fail();
            ctx.send_step(&step.id, fail.status, None, &fail.reason, None)
                .await;
            return StepEnd::not_ok(None);
        }
    }
    // A step never starts under a lease the coordinator took back: `Running` must be
    // committed first.
    let running = ctx.step_update(&step.id, StepStatus::Running, None, "", None);
    let committed = tokio::select! {
        committed = ctx.env.reports.send_committed(Report::Step(running)) => Some(committed),
        _ = token.cancelled() => None,
    };
    let refused = match committed {
        Some(Ok(())) => None,
        Some(Err(error @ (ReportError::Stale(_) | ReportError::Closed))) => {
            tracing::warn!(run_id = ctx.run_id, step = ctx.masker.mask(&step.id), %error, "step not started");
            return StepEnd {
                lease_lost: Some(error.to_string()),
                ..StepEnd::not_ok(None)
            };
        }
        Some(Err(ReportError::Rejected(message))) => Some(message),
        None => {
            let fail = ctx.stopped_fail();
            ctx.send_step(&step.id, fail.status, None, &fail.reason, None)
                .await;
            return StepEnd::not_ok(None);
        }
    };
    let started = Instant::now();
    let log_dir = ctx.run_dir.join("logs").join(safe_name(&step.id));
    let mut log = match StepLog::create(
        &log_dir,
        &ctx.run_id,
        &ctx.masker.mask(&step.id),
        ctx.env.reports.clone(),
        ctx.masker.clone(),
        ctx.log_store(),
    )
    .await
    {
        Ok(log) => log,
        Err(error) => {
            let reason = format!("cannot create the step log: {error}");
            ctx.send_step(&step.id, StepStatus::Error, None, &reason, None)
                .await;
            let fail = Fail {
                status: StepStatus::Error,
                exit_code: None,
                reason,
            };
            return StepEnd::not_ok(Some(fail));
        }
    };
    let network = ctx.step_network(&step);
    let working_dir = if step.disable_working_directory_override {
        String::new()
    } else {
        step.working_directory.clone()
    };
    log.line(&format!(
        "Executing step ID: {}. Timeout(sec): {}, Working directory: '{}', Network: '{}'",
        step.id, step.timeout, working_dir, network
    ))
    .await;

    let result = match (&refused, &step.kind) {
        (Some(message), _) => Err(Fail::failed(
            None,
            format!("the coordinator refused the step: {message}"),
        )),
        (None, StepKind::Cmd(cmd)) => cmd_step(&ctx, &step, cmd, &mut log, &token).await,
        (None, StepKind::Build(build)) => build_step(&ctx, &step, build, &mut log, &token).await,
        (None, StepKind::Push(push)) => push_step(&ctx, &step, push, &mut log, &token).await,
    };
    let stopped = token.is_cancelled();
    let (status, exit_code, reason, end) = match result {
        Ok(code) => (StepStatus::Succeeded, code, String::new(), StepEnd::ok()),
        Err(fail)
            if stopped
                && matches!(fail.status, StepStatus::Canceled | StepStatus::Timeout)
                && ctx.stopped_by_others(&step.id) =>
        {
            (
                fail.status,
                fail.exit_code,
                fail.reason,
                StepEnd::not_ok(None),
            )
        }
        Err(fail) if step.ignore_errors => {
            log.line(&format!(
                "Step ID: {} encountered an error: {}, but is set to ignore errors. Continuing...",
                step.id, fail.reason
            ))
            .await;
            let reason = format!("error ignored: {}", fail.reason);
            (StepStatus::Succeeded, fail.exit_code, reason, StepEnd::ok())
        }
        Err(fail) => {
            log.line(&format!("Step ID: {} failed: {}", step.id, fail.reason))
                .await;
            (
                fail.status,
                fail.exit_code,
                fail.reason.clone(),
                StepEnd::not_ok(Some(fail)),
            )
        }
    };
    log.line(&format!(
        "Step ID: {} marked as {} (elapsed time in seconds: {:.6})",
        step.id,
        status_word(status),
        started.elapsed().as_secs_f64()
    ))
    .await;
    // The log is in the segments reported while it was written (`LogStored`); the terminal
    // update carries only its size.
    let (reason, log_size) = match log.finish().await {
        Ok(stored) => match stored.error {
            Some(error) => (join_reason(&reason, &error), stored.size),
            None => (reason, stored.size),
        },
        Err(error) => (
            join_reason(&reason, &format!("log capture failed: {error}")),
            0,
        ),
    };
    ctx.send_step(
        &step.id,
        status,
        exit_code,
        &reason,
        Some((String::new(), log_size)),
    )
    .await;
    end
}

pub(super) fn join_reason(reason: &str, extra: &str) -> String {
    if reason.is_empty() {
        extra.to_string()
    } else {
        format!("{reason}; {extra}")
    }
}

pub(super) fn status_word(status: StepStatus) -> &'static str {
    match status {
        StepStatus::Succeeded => "successful",
        StepStatus::Failed => "failed",
        StepStatus::Timeout => "timed out",
        StepStatus::Canceled => "canceled",
        StepStatus::Skipped => "skipped",
        _ => "errored",
    }
}

/// One attempt of a step body, for `retry_loop`.
pub(super) trait Attempt: Sync {
    /// Runs attempt number `n` (counting every repetition and retry from 0).
    fn run<'a>(
        &'a self,
        n: usize,
        log: &'a mut StepLog,
    ) -> impl Future<Output = Result<(), Fail>> + Send + 'a;
}

/// `repeat + 1` repetitions, each with up to `retries` extra attempts `retryDelay` apart; fails
/// if any repetition ultimately failed (reasons joined).
pub(super) async fn retry_loop(
    step: &Step,
    log: &mut StepLog,
    attempt: &impl Attempt,
) -> Result<(), Fail> {
    let mut failures: Vec<Fail> = Vec::new();
    let mut n = 0usize;
    for _ in 0..=step.repeat {
        let mut last = None;
        for try_idx in 0..=step.retries {
            let watch = !step.retry_on_errors.is_empty() && try_idx < step.retries;
            if watch {
                log.start_capture();
            }
            let result = attempt.run(n, log).await;
            n += 1;
            let output = if watch {
                log.take_capture()
            } else {
                Vec::new()
            };
            let retryable = match &result {
                Err(fail) if watch => {
                    matches_retry_errors(&step.retry_on_errors, &output, &fail.reason)
                }
                _ => true,
            };
            match result {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(fail) => last = Some(fail),
            }
            if !retryable {
                log.line(&format!(
                    "Step ID: {} failed with an error that matches none of its retryOnErrors; not retrying",
                    step.id
                ))
                .await;
                break;
            }
            if try_idx < step.retries {
                log.line(&format!(
                    "Container failed during run: {}, waiting {} seconds before retrying...",
                    step.id, step.retry_delay
                ))
                .await;
                tokio::time::sleep(Duration::from_secs(step.retry_delay)).await;
            }
        }
        if let Some(fail) = last {
            failures.push(fail);
        }
    }
    match failures.len() {
        0 => Ok(()),
        1 => Err(failures.remove(0)),
        _ => {
            let reason = failures
                .iter()
                .map(|f| f.reason.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let last = failures.pop().unwrap_or_else(|| Fail::failed(None, ""));
            Err(Fail { reason, ..last })
        }
    }
}

/// Whether a failed attempt's output (or its error) contains one of `patterns` (ACR's
/// `retryOnErrors`: plain substrings).
pub(super) fn matches_retry_errors(patterns: &[String], output: &[u8], reason: &str) -> bool {
    let output = String::from_utf8_lossy(output);
    patterns
        .iter()
        .filter(|p| !p.is_empty())
        .any(|p| output.contains(p.as_str()) || reason.contains(p.as_str()))
}

/// Runs `fut` under the step timeout; `Err` when the timeout or a stop came first.
pub(super) async fn timed<T, R: ContainerRuntime, B: BlobStore>(
    fut: impl Future<Output = T>,
    timeout_secs: u64,
    token: &CancellationToken,
    ctx: &Arc<RunCtx<R, B>>,
) -> Result<T, Fail> {
    let limit = Duration::from_secs(timeout_secs.max(1));
    tokio::select! {
        result = fut => Ok(result),
        _ = tokio::time::sleep(limit) => Err(Fail {
            status: StepStatus::Timeout,
            exit_code: None,
            reason: format!("timed out after {timeout_secs}s"),
        }),
        _ = token.cancelled() => Err(ctx.stopped_fail()),
    }
}

pub(super) async fn cancellable<T>(
    fut: impl Future<Output = T>,
    token: &CancellationToken,
) -> Option<T> {
    tokio::select! {
        result = fut => Some(result),
        _ = token.cancelled() => None,
    }
}

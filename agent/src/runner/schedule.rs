//! Runs the plan's steps in dependency order: parallel branches, fail-fast, run timeout and
//! cancel.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kiln_proto::pb::{RunStatus, StepStatus};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::graph::StepGraph;
use super::step::run_step;
use super::{lock, Fail, RunCtx, StepEnd, StopCause};
use crate::blobs::BlobStore;
use crate::executor::ContainerRuntime;
use crate::task::{Plan, Step};

pub(super) async fn schedule<R: ContainerRuntime, B: BlobStore>(
    ctx: &Arc<RunCtx<R, B>>,
    plan: &Plan,
    run_timeout: Duration,
    cancel: &CancellationToken,
) -> (RunStatus, String) {
    let steps = &plan.steps;
    let mut graph = StepGraph::new(steps);
    let mut tasks: JoinSet<(usize, StepEnd)> = JoinSet::new();
    let mut task_steps: HashMap<tokio::task::Id, usize> = HashMap::new();
    // Independent of `cancel`, so that the stop cause is recorded before steps see it.
    let stop_token = CancellationToken::new();
    let deadline = tokio::time::sleep(run_timeout);
    tokio::pin!(deadline);
    let mut first_failure: Option<(String, Fail)> = None;

    loop {
        if lock(&ctx.stop).is_none() {
            for i in graph.ready() {
                graph.start(i);
                let ctx = Arc::clone(ctx);
                let step = steps[i].clone();
                let token = stop_token.clone();
                let id = tasks
                    .spawn(async move { (i, run_step(ctx, step, token).await) })
                    .id();
                task_steps.insert(id, i);
            }
        }
        if tasks.is_empty() {
            break;
        }
        let stopping = lock(&ctx.stop).is_some();
        tokio::select! {
            joined = tasks.join_next_with_id() => {
                let (i, end) = match joined {
                    Some(Ok((_, (i, end)))) => (i, end),
                    Some(Err(error)) => {
                        let Some(i) = task_steps.get(&error.id()).copied() else { continue };
                        let fail = Fail { status: StepStatus::Error, exit_code: None, reason: format!("agent error: {error}") };
                        ctx.send_step(&steps[i].id, StepStatus::Error, None, &fail.reason, None).await;
                        (i, StepEnd::not_ok(Some(fail)))
                    }
                    None => break,
                };
                graph.finish(i, end.ok);
                if let Some(reason) = end.lease_lost {
                    let mut stop = lock(&ctx.stop);
                    if !matches!(*stop, Some(StopCause::LeaseLost { .. })) {
                        *stop = Some(StopCause::LeaseLost { reason });
                        stop_token.cancel();
                    }
                } else if let Some(fail) = end.failure {
                    let mut stop = lock(&ctx.stop);
                    if stop.is_none() {
                        *stop = Some(StopCause::Failed { step: steps[i].id.clone() });
                        first_failure = Some((steps[i].id.clone(), fail));
                        stop_token.cancel();
                    }
                }
            }
            _ = cancel.cancelled(), if !stopping => {
                *lock(&ctx.stop) = Some(StopCause::Canceled);
                stop_token.cancel();
            }
            _ = &mut deadline, if !stopping => {
                *lock(&ctx.stop) = Some(StopCause::RunTimeout { secs: run_timeout.as_secs() });
                stop_token.cancel();
            }
        }
    }

    let stop = lock(&ctx.stop).clone();
    let unstarted: Vec<Step> = graph
        .pending()
        .into_iter()
        .map(|i| steps[i].clone())
        .collect();
    match &stop {
        Some(StopCause::Canceled | StopCause::LeaseLost { .. }) => {
            ctx.finish_unstarted(&unstarted, StepStatus::Canceled, "run canceled")
                .await
        }
        _ => {
            ctx.finish_unstarted(&unstarted, StepStatus::Skipped, "")
                .await
        }
    }
    match (stop, first_failure) {
        (None, _) => (RunStatus::Succeeded, String::new()),
        (Some(StopCause::Canceled), _) => (RunStatus::Canceled, "run canceled".to_string()),
        (Some(StopCause::LeaseLost { reason }), _) => (RunStatus::Canceled, reason),
        (Some(StopCause::RunTimeout { secs }), _) => {
            (RunStatus::Timeout, format!("run timed out after {secs}s"))
        }
        (Some(StopCause::Failed { .. }), Some((step, fail))) => {
            let status = if fail.status == StepStatus::Timeout {
                RunStatus::Timeout
            } else {
                RunStatus::Failed
            };
            (status, format!("step {step} failed: {}", fail.reason))
        }
        (Some(StopCause::Failed { step }), None) => {
            (RunStatus::Failed, format!("step {step} failed"))
        }
    }
}

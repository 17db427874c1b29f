//! The leader's control loop: compares what the state wants with what agents are doing and
//! proposes the difference. It never changes the state itself; everything goes through Raft.
//!
//! Each pass: hand queued runs to agents (the pure `kiln_state::scheduler::solve` decides),
//! deliver cancellations, end runs whose agent is gone for good, end runs far past their
//! timeout, and close the live logs of finished runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use kiln_proto::v1::{coordinator_message, Assignment, CancelRun, CoordinatorMessage};
use kiln_state::machine::is_terminal;
use kiln_state::pb::{command, AssignRun, FinishRun, Run, RunStatus};
use kiln_state::scheduler;

use crate::agents::Agents;
use crate::logs::LogHub;
use crate::raft_node::{now_ms, RaftHandle};

/// How long a run may stay assigned to an agent that is not connected before it ends in Error,
/// unless configured otherwise.
pub const DEFAULT_AGENT_GRACE: Duration = Duration::from_secs(30);
/// How long a connected agent may not know a run assigned to it before that run ends in Error.
const UNKNOWN_RUN_GRACE: Duration = Duration::from_secs(15);
/// Runs get this long past their own timeout for the agent to report Timeout itself.
const TIMEOUT_SLACK_MS: u64 = 120_000;
/// The whole-run limit when the request sets none (ACR's default).
pub const DEFAULT_RUN_TIMEOUT_SECONDS: u64 = 3600;
/// The loop runs at least this often, for the time-based checks.
const PASS_INTERVAL: Duration = Duration::from_secs(1);

pub struct Control {
    pub raft: RaftHandle,
    pub agents: Arc<Agents>,
    pub logs: Arc<LogHub>,
    pub started: Instant,
    /// How long a run waits for its disconnected agent to come back.
    pub agent_grace: Duration,
}

impl Control {
    pub async fn run(self, shutdown: CancellationToken) {
        self.raft.wait_for_leadership().await;
        let mut applied = self.raft.applied();
        let mut interval = tokio::time::interval(PASS_INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = applied.changed() => {}
                _ = self.agents.changed.notified() => {}
                _ = interval.tick() => {}
            }
            if self.raft.is_leader() {
                self.pass().await;
            }
        }
    }

    async fn pass(&self) {
        self.assign_queued_runs().await;
        let running: Vec<Run> = self
            .raft
            .read(|state| state.running_runs().cloned().collect());
        for run in &running {
            self.check_running(run).await;
        }
        for run_id in self.logs.open_runs() {
            let finished = self.raft.read(|state| {
                state
                    .run(&run_id)
                    .is_none_or(|run| is_terminal(run.status()))
            });
            if finished {
                self.logs.close(&run_id);
            }
        }
    }

    async fn assign_queued_runs(&self) {
        let views = self.raft.read(|state| {
            self.agents.views(|agent_id| {
                state
                    .running_runs()
                    .filter(|r| r.agent_id == agent_id)
                    .count() as u32
            })
        });
        let assignments = self.raft.read(|state| scheduler::solve(state, &views));
        for assignment in assignments {
            let proposal = command::Kind::AssignRun(AssignRun {
                run_id: assignment.run_id.clone(),
                agent_id: assignment.agent_id.clone(),
                agent_platform: Some(assignment.platform.to_pb()),
                emulated: assignment.emulated,
            });
            if let Err(error) = self.raft.propose(proposal).await {
                tracing::warn!(run_id = %assignment.run_id, %error, "could not assign run");
                continue;
            }
            let Some(run) = self
                .raft
                .read(|state| state.run(&assignment.run_id).cloned())
            else {
                continue;
            };
            self.logs.open(&run.id);
            self.agents.mark_active(&assignment.agent_id, &run.id);
            let message = CoordinatorMessage {
                msg: Some(coordinator_message::Msg::Assign(Assignment {
                    run_id: run.id.clone(),
                    request: run.request.clone(),
                    created_at_ms: run.created_at_ms,
                    platform: Some(assignment.platform.to_pb()),
                    emulated: assignment.emulated,
                })),
            };
            tracing::info!(run_id = %run.id, agent_id = %assignment.agent_id, platform = %assignment.platform, emulated = assignment.emulated, "assigned run");
            if !self.agents.send(&assignment.agent_id, message) {
                let reason = format!(
                    "could not hand the run to agent {}: it disconnected",
                    assignment.agent_id
                );
                self.finish(&run.id, RunStatus::Error, reason).await;
            }
        }
    }

    async fn check_running(&self, run: &Run) {
        match self.agents.status(&run.agent_id) {
            Ok(agent) => {
                if run.cancel_requested && self.agents.first_cancel(&run.agent_id, &run.id) {
                    let message = CoordinatorMessage {
                        msg: Some(coordinator_message::Msg::Cancel(CancelRun {
                            run_id: run.id.clone(),
                        })),
                    };
                    self.agents.send(&run.agent_id, message);
                }
                if !agent.active.contains(&run.id)
                    && agent.connected_since.elapsed() > UNKNOWN_RUN_GRACE
                {
                    let reason = format!(
                        "agent {} reconnected without this run (it was restarted mid-run); submit the run again",
                        agent.agent_id
                    );
                    self.finish(&run.id, RunStatus::Error, reason).await;
                    return;
                }
            }
            Err(gone_since) => {
                let since = gone_since.unwrap_or(self.started);
                if since.elapsed() > self.agent_grace {
                    let reason = format!(
                        "agent {} disconnected mid-run and did not come back within {}s",
                        run.agent_id,
                        self.agent_grace.as_secs()
                    );
                    self.finish(&run.id, RunStatus::Error, reason).await;
                    return;
                }
            }
        }
        let timeout_s = run
            .request
            .as_ref()
            .map(|r| r.timeout_seconds)
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_RUN_TIMEOUT_SECONDS);
        let deadline = run
            .started_at_ms
            .saturating_add(timeout_s.saturating_mul(1000))
            .saturating_add(TIMEOUT_SLACK_MS);
        if now_ms() > deadline {
            let reason = format!("the run did not finish within its timeout of {timeout_s}s");
            self.finish(&run.id, RunStatus::Timeout, reason).await;
        }
    }

    async fn finish(&self, run_id: &str, status: RunStatus, reason: String) {
        tracing::warn!(run_id, ?status, %reason, "ending run");
        let proposal = command::Kind::FinishRun(FinishRun {
            run_id: run_id.to_string(),
            status: status as i32,
            reason,
            agent_id: String::new(),
        });
        if let Err(error) = self.raft.propose(proposal).await {
            tracing::warn!(run_id, %error, "could not end run");
        }
    }
}

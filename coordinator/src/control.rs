//! The leader's control loop: compares what the state wants with what agents are doing and
//! proposes the difference. It never changes the state itself; everything goes through Raft.
//!
//! Each pass: declare silent agents lost, hand queued runs to agents (the pure
//! `kiln_state::scheduler::solve` decides), requeue assignments that were never acknowledged,
//! deliver cancellations, apply the lost-agent policy to runs whose agent is gone for good,
//! end runs far past their timeout (telling the agent to stop them), and close the live logs
//! of finished runs. Every proposal about a running run carries the lease it is about, so a
//! decision made on a stale view changes nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;

use kiln_proto::v1::{coordinator_message, Assignment, CancelRun, CoordinatorMessage, StopRun};
use kiln_state::machine::{is_terminal, run_has_started_a_step, DEFAULT_MAX_ATTEMPTS};
use kiln_state::pb::{
    command, AssignRun, FinishRun, Lease, LostAgentPolicy, Member, PruneRuns, RequeueRun, Run,
    RunStatus, SetMember,
};
use kiln_state::scheduler;

use crate::agents::{Agents, Liveness};
use crate::logs::LogHub;
use crate::raft_node::{now_ms, ProposeError, RaftHandle};

/// How long a run may stay assigned to an agent that is gone before the lost-agent policy
/// applies, unless configured otherwise.
pub const DEFAULT_AGENT_GRACE: Duration = Duration::from_secs(30);
/// How often agents and coordinator send each other heartbeats, unless configured otherwise.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// How long an agent may be silent before it is declared lost, unless configured otherwise.
pub const DEFAULT_LOST_AFTER: Duration = Duration::from_secs(5);
/// How long an agent has to acknowledge an assignment before the run goes back to the queue.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Runs get this long past their own timeout for the agent to report Timeout itself, unless
/// configured otherwise.
pub const DEFAULT_TIMEOUT_SLACK: Duration = Duration::from_secs(120);
/// The whole-run limit when the request sets none (ACR's default).
pub const DEFAULT_RUN_TIMEOUT_SECONDS: u64 = 3600;
/// The loop runs at least this often, for the time-based checks.
const PASS_INTERVAL: Duration = Duration::from_millis(500);
/// Assignments proposed at once in one pass.
const ASSIGNMENTS_IN_FLIGHT: usize = 512;

/// The failure-detection settings, shared by the control loop and the agent API.
#[derive(Clone, Copy, Debug)]
pub struct LivenessConfig {
    pub heartbeat_interval: Duration,
    pub lost_after: Duration,
    /// How long a lost agent's runs keep their lease.
    pub agent_grace: Duration,
    pub ack_timeout: Duration,
    /// How long past its timeout a run may go before the leader ends it.
    pub timeout_slack: Duration,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            lost_after: DEFAULT_LOST_AFTER,
            agent_grace: DEFAULT_AGENT_GRACE,
            ack_timeout: DEFAULT_ACK_TIMEOUT,
            timeout_slack: DEFAULT_TIMEOUT_SLACK,
        }
    }
}

pub struct Control {
    pub raft: RaftHandle,
    pub agents: Arc<Agents>,
    pub logs: Arc<LogHub>,
    pub liveness: LivenessConfig,
    pub retention: Retention,
    /// This node's own entry in the address book, recorded when it leads.
    pub me: Member,
}

/// Which finished runs the state keeps (their logs stay in the registry either way).
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub keep_finished: u64,
    /// 0: no age limit.
    pub max_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            keep_finished: DEFAULT_RETAIN_FINISHED,
            max_age: Duration::from_secs(DEFAULT_RETAIN_DAYS * 86_400),
        }
    }
}

/// Finished runs kept by default, and for how many days.
pub const DEFAULT_RETAIN_FINISHED: u64 = 100_000;
pub const DEFAULT_RETAIN_DAYS: u64 = 90;
/// How often the leader applies the retention policy.
const RETENTION_INTERVAL: Duration = Duration::from_secs(60);

/// What to do about one running run this pass.
#[derive(Debug, PartialEq)]
enum Decision {
    Nothing,
    Requeue { reason: String, unstarted: bool },
    Finish { status: RunStatus, reason: String },
}

impl Control {
    pub async fn run(self, shutdown: CancellationToken) {
        // Heartbeats and loss detection run on their own, so a long pass (a deep queue, a slow
        // commit) never delays them.
        tokio::spawn(liveness_loop(
            self.agents.clone(),
            self.liveness,
            shutdown.clone(),
        ));
        let mut applied = self.raft.applied();
        let mut status = self.raft.status_watch();
        let mut interval = tokio::time::interval(PASS_INTERVAL);
        // When this node last became the leader: the agent grace and other timers count from
        // then, not from process start, so a follower promoted after hours does not fail every
        // running run at once.
        let mut leading_since: Option<Instant> = None;
        let mut last_retention = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = applied.changed() => {}
                _ = status.changed() => {}
                _ = self.agents.changed.notified() => {}
                _ = interval.tick() => {}
            }
            if !self.raft.is_leader() {
                if leading_since.take().is_some() {
                    // Agents must follow the new leader: end their sessions here, with the
                    // leader's address in the answer to their reconnect.
                    tracing::info!("no longer the leader; disconnecting agents");
                    self.agents.disconnect_all();
                }
                continue;
            }
            let since = *leading_since.get_or_insert_with(|| {
                tracing::info!(term = self.raft.status().term, "leading: dispatch resumes");
                Instant::now()
            });
            self.pass(since).await;
            if last_retention.elapsed() >= RETENTION_INTERVAL {
                last_retention = Instant::now();
                self.apply_retention().await;
            }
            self.record_own_address().await;
        }
    }

    /// Keeps this leader's addresses in the replicated address book (a directory from before
    /// clusters had none; addresses change when a member restarts with new flags).
    async fn record_own_address(&self) {
        let current = self.raft.read(|state| state.member(self.me.id).cloned());
        if current.as_ref() == Some(&self.me) {
            return;
        }
        let proposal = command::Kind::SetMember(SetMember {
            member: Some(self.me.clone()),
        });
        if let Err(error) = self.raft.propose(proposal).await {
            tracing::warn!(%error, "could not record this member's addresses");
        }
    }

    async fn apply_retention(&self) {
        let (finished, oldest) = self.raft.read(|state| {
            let finished: Vec<u64> = state
                .runs()
                .filter(|run| is_terminal(run.status()))
                .map(|run| run.finished_at_ms)
                .collect();
            (finished.len() as u64, finished.iter().min().copied())
        });
        let max_age_ms = self.retention.max_age.as_millis() as u64;
        let too_old =
            max_age_ms > 0 && oldest.is_some_and(|at| at.saturating_add(max_age_ms) < now_ms());
        if finished <= self.retention.keep_finished && !too_old {
            return;
        }
        let proposal = command::Kind::PruneRuns(PruneRuns {
            keep_finished: self.retention.keep_finished,
            max_age_ms,
        });
        match self.raft.propose(proposal).await {
            Ok(_) => tracing::info!(finished, "applied the run retention policy"),
            Err(error) => tracing::warn!(%error, "could not apply the run retention policy"),
        }
    }

    async fn pass(&self, leading_since: Instant) {
        self.agents.prune();
        self.assign_queued_runs().await;
        let running: Vec<Run> = self
            .raft
            .read(|state| state.running_runs().cloned().collect());
        for run in &running {
            self.check_running(run, leading_since).await;
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
        let assignments = self.raft.read(|state| {
            // A pass runs after every applied change; most find nothing queued.
            if state.queued_runs().next().is_none() {
                return Vec::new();
            }
            let mut running: HashMap<&str, u32> = HashMap::new();
            for run in state.running_runs() {
                *running.entry(run.agent_id.as_str()).or_default() += 1;
            }
            let views = self
                .agents
                .views(|agent_id| running.get(agent_id).copied().unwrap_or(0));
            let views = candidates(views, |most| state.queued_runs().take(most).count());
            if views.is_empty() {
                return Vec::new();
            }
            scheduler::solve(state, &views)
        });
        // Proposed together, so that they share Raft batches (one fsync for many) instead of
        // one commit after another.
        futures::stream::iter(assignments)
            .for_each_concurrent(ASSIGNMENTS_IN_FLIGHT, |assignment| self.assign(assignment))
            .await;
    }

    /// Commits one assignment and hands it to its agent.
    async fn assign(&self, assignment: scheduler::Assignment) {
        let proposal = command::Kind::AssignRun(AssignRun {
            run_id: assignment.run_id.clone(),
            agent_id: assignment.agent_id.clone(),
            agent_platform: Some(assignment.platform.to_pb()),
            emulated: assignment.emulated,
        });
        match self.raft.propose(proposal).await {
            Ok(_) => {}
            // Planned from a view that changed meanwhile (the run was canceled): fine.
            Err(ProposeError::Rejected(message)) => {
                tracing::debug!(run_id = %assignment.run_id, %message, "assignment overtaken");
                return;
            }
            Err(error) => {
                tracing::warn!(run_id = %assignment.run_id, %error, "could not assign run");
                return;
            }
        }
        let Some(run) = self
            .raft
            .read(|state| state.run(&assignment.run_id).cloned())
        else {
            return;
        };
        if run.agent_id != assignment.agent_id {
            return;
        }
        self.logs.open(&run.id);
        self.agents
            .mark_active(&assignment.agent_id, &run.id, run.lease_epoch);
        let message = CoordinatorMessage {
            msg: Some(coordinator_message::Msg::Assign(Assignment {
                run_id: run.id.clone(),
                request: run.request.clone(),
                created_at_ms: run.created_at_ms,
                platform: Some(assignment.platform.to_pb()),
                emulated: assignment.emulated,
                epoch: run.lease_epoch,
            })),
        };
        tracing::info!(run_id = %run.id, agent_id = %assignment.agent_id, epoch = run.lease_epoch, attempt = run.attempt, platform = %assignment.platform, emulated = assignment.emulated, "assigned run");
        if !self.agents.send(&assignment.agent_id, message) {
            // Not delivered: back to the queue at once (nothing can have started).
            let reason = format!(
                "could not hand the run to agent {}: it disconnected",
                assignment.agent_id
            );
            self.requeue(&run, reason, true).await;
        }
    }

    async fn check_running(&self, run: &Run, leading_since: Instant) {
        let liveness = self.agents.liveness(&run.agent_id);
        if let Liveness::Alive { .. } = &liveness {
            if run.cancel_requested && self.agents.first_cancel(&run.agent_id, &run.id) {
                let message = CoordinatorMessage {
                    msg: Some(coordinator_message::Msg::Cancel(CancelRun {
                        run_id: run.id.clone(),
                    })),
                };
                self.agents.send(&run.agent_id, message);
            }
        }
        let decision = decide(run, &liveness, &self.liveness, leading_since, now_ms());
        match decision {
            Decision::Nothing => {}
            Decision::Requeue { reason, unstarted } => self.requeue(run, reason, unstarted).await,
            Decision::Finish { status, reason } => {
                self.finish(run, status, reason.clone()).await;
                // The agent may still be executing it (a timeout, a reconnect too late).
                self.agents.send(
                    &run.agent_id,
                    CoordinatorMessage {
                        msg: Some(coordinator_message::Msg::Stop(StopRun {
                            run_id: run.id.clone(),
                            epoch: run.lease_epoch,
                            reason,
                        })),
                    },
                );
            }
        }
    }

    async fn requeue(&self, run: &Run, reason: String, unstarted: bool) {
        tracing::warn!(run_id = %run.id, agent_id = %run.agent_id, epoch = run.lease_epoch, %reason, "requeueing run");
        let proposal = command::Kind::RequeueRun(RequeueRun {
            run_id: run.id.clone(),
            lease: Some(lease_of(run)),
            reason: reason.clone(),
            only_if_unstarted: unstarted,
        });
        match self.raft.propose(proposal).await {
            Ok(_) => {
                self.agents.mark_finished(&run.agent_id, &run.id);
                // Should the agent have it after all, it stops it.
                self.agents.send(
                    &run.agent_id,
                    CoordinatorMessage {
                        msg: Some(coordinator_message::Msg::Stop(StopRun {
                            run_id: run.id.clone(),
                            epoch: run.lease_epoch,
                            reason: format!("the run went back to the queue: {reason}"),
                        })),
                    },
                );
            }
            Err(ProposeError::Rejected(message)) if message.contains("assigned") => {
                // Attempts exhausted: the run ends instead.
                let reason = format!("{reason}; {message}");
                self.finish(run, RunStatus::Error, reason).await;
            }
            Err(error) => {
                tracing::info!(run_id = %run.id, %error, "run not requeued");
            }
        }
    }

    async fn finish(&self, run: &Run, status: RunStatus, reason: String) {
        tracing::warn!(run_id = %run.id, ?status, %reason, "ending run");
        let proposal = command::Kind::FinishRun(FinishRun {
            run_id: run.id.clone(),
            status: status as i32,
            reason,
            agent_id: String::new(),
            lease: Some(lease_of(run)),
        });
        if let Err(error) = self.raft.propose(proposal).await {
            tracing::warn!(run_id = %run.id, %error, "could not end run");
        }
    }
}

/// Sends heartbeats to every agent and declares the silent ones lost.
async fn liveness_loop(agents: Arc<Agents>, config: LivenessConfig, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(config.heartbeat_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        agents.send_heartbeats();
        for agent_id in agents.declare_lost() {
            tracing::warn!(
                agent_id,
                lost_after_ms = config.lost_after.as_millis() as u64,
                "agent declared lost: no message within the liveness limit"
            );
        }
    }
}

fn lease_of(run: &Run) -> Lease {
    Lease {
        agent_id: run.agent_id.clone(),
        epoch: run.lease_epoch,
    }
}

/// The pure part of the control loop: what to do about a running run, given how its agent is.
fn decide(
    run: &Run,
    agent: &Liveness,
    config: &LivenessConfig,
    leading_since: Instant,
    now_ms: u64,
) -> Decision {
    let started_a_step = run_has_started_a_step(run);
    let assigned_for_ms = now_ms.saturating_sub(run.started_at_ms);
    match agent {
        Liveness::Alive {
            connected_at_ms,
            active,
        } => {
            let known = active
                .get(&run.id)
                .is_some_and(|epoch| *epoch == 0 || *epoch == run.lease_epoch);
            if !run.acknowledged
                && !known
                && assigned_for_ms > config.ack_timeout.as_millis() as u64
            {
                return Decision::Requeue {
                    reason: format!(
                        "agent {} did not acknowledge the assignment within {}s",
                        run.agent_id,
                        config.ack_timeout.as_secs()
                    ),
                    unstarted: true,
                };
            }
            // The run was handed out before this connection, and the agent's Hello did not
            // list it: the agent restarted and lost it.
            if !known && run.acknowledged && run.started_at_ms < *connected_at_ms {
                let reason = format!(
                    "agent {} restarted mid-run and no longer runs it",
                    run.agent_id
                );
                return lost_policy(run, reason, started_a_step);
            }
        }
        Liveness::Gone { .. } | Liveness::Unknown => {
            // How the agent went away, and for how long: since it was lost or disconnected, or
            // (never seen by this coordinator) since the coordinator started.
            let (how, away) = match agent {
                Liveness::Gone { since, lost: true } => (
                    format!("was lost (no message for {}s)", config.lost_after.as_secs()),
                    since.elapsed(),
                ),
                Liveness::Gone { since, .. } => ("disconnected".to_string(), since.elapsed()),
                _ => (
                    "was not seen by this leader".to_string(),
                    leading_since.elapsed(),
                ),
            };
            // A new leader gives agents time to re-attach before it moves their runs.
            if matches!(agent, Liveness::Unknown) && leading_since.elapsed() < config.lost_after {
                return Decision::Nothing;
            }
            if !started_a_step {
                return Decision::Requeue {
                    reason: format!("agent {} {how} before any step started", run.agent_id),
                    unstarted: true,
                };
            }
            if away > config.agent_grace {
                let reason = format!(
                    "agent {} {how} mid-run and did not come back within {}s",
                    run.agent_id,
                    config.agent_grace.as_secs()
                );
                return lost_policy(run, reason, started_a_step);
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
        .saturating_add(config.timeout_slack.as_millis() as u64);
    if now_ms > deadline {
        return Decision::Finish {
            status: RunStatus::Timeout,
            reason: format!("the run did not finish within its timeout of {timeout_s}s"),
        };
    }
    Decision::Nothing
}

/// The lost-agent policy for a run whose agent is gone: unstarted runs go back to the queue;
/// started ones end Error, or with `requeue` go back to the queue while attempts remain.
fn lost_policy(run: &Run, reason: String, started_a_step: bool) -> Decision {
    if !started_a_step {
        return Decision::Requeue {
            reason,
            unstarted: true,
        };
    }
    let request = run.request.as_ref();
    let policy = request
        .map(|r| r.on_agent_lost())
        .unwrap_or(LostAgentPolicy::Error);
    let max_attempts = request
        .map(|r| r.max_attempts)
        .filter(|m| *m > 0)
        .unwrap_or(DEFAULT_MAX_ATTEMPTS);
    match policy {
        LostAgentPolicy::Requeue if run.attempt < max_attempts => Decision::Requeue {
            reason,
            unstarted: false,
        },
        LostAgentPolicy::Requeue => Decision::Finish {
            status: RunStatus::Error,
            reason: format!(
                "{reason}; no attempts left ({} of {max_attempts})",
                run.attempt
            ),
        },
        LostAgentPolicy::Error => Decision::Finish {
            status: RunStatus::Error,
            reason,
        },
    }
}

/// The agents `scheduler::solve` may choose from, given how many runs are queued (counted up
/// to a limit). `solve` compares every agent with a free slot for every run it places (agent
/// ids break ties: a string comparison each), which dominated the leader's profile with 1000
/// agents; this leaves out agents it would never choose, so its choices are the same:
/// - full agents (it skips them);
/// - when every agent offers the same platforms, pool and labels, a run that fits one fits
///   all and `solve` always takes the least-loaded agent (lowest id first), so for K runs
///   only the K least-loaded agents can be taken: an agent ranked r-th is chosen only after
///   each of the r-1 before it was chosen at least once.
fn candidates(
    mut views: Vec<scheduler::AgentView>,
    queued: impl FnOnce(usize) -> usize,
) -> Vec<scheduler::AgentView> {
    views.retain(|view| view.running < view.capacity);
    let free: usize = views
        .iter()
        .map(|view| (view.capacity - view.running) as usize)
        .sum();
    let runs = queued(free);
    let Some(first) = views.first() else {
        return views;
    };
    let alike = views.iter().all(|view| {
        view.platforms == first.platforms && view.pool == first.pool && view.labels == first.labels
    });
    if alike && views.len() > runs {
        views.select_nth_unstable_by(runs, |a, b| {
            (a.running, &a.agent_id).cmp(&(b.running, &b.agent_id))
        });
        views.truncate(runs);
    }
    views
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kiln_state::pb::{RunRequest, Step, StepStatus};

    use super::*;

    fn run(acknowledged: bool, step: Option<StepStatus>, policy: LostAgentPolicy) -> Run {
        Run {
            id: "ca1".into(),
            seq: 1,
            status: RunStatus::Running as i32,
            agent_id: "a".into(),
            lease_epoch: 9,
            acknowledged,
            attempt: 1,
            started_at_ms: 1_000,
            steps: step
                .map(|s| Step {
                    id: "s".into(),
                    status: s as i32,
                    ..Step::default()
                })
                .into_iter()
                .collect(),
            request: Some(RunRequest {
                on_agent_lost: policy as i32,
                ..RunRequest::default()
            }),
            ..Run::default()
        }
    }

    fn alive(connected_at_ms: u64, active: &[(&str, u64)]) -> Liveness {
        Liveness::Alive {
            connected_at_ms,
            active: active
                .iter()
                .map(|(r, e)| (r.to_string(), *e))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn gone_for(seconds: u64) -> Liveness {
        Liveness::Gone {
            since: Instant::now() - Duration::from_secs(seconds),
            lost: true,
        }
    }

    const NOW: u64 = 1_000 + 60_000;

    #[test]
    fn an_unacknowledged_assignment_goes_back_to_the_queue() {
        let config = LivenessConfig::default();
        let decision = decide(
            &run(false, None, LostAgentPolicy::Error),
            &alive(0, &[]),
            &config,
            Instant::now(),
            NOW,
        );
        assert!(
            matches!(decision, Decision::Requeue { unstarted: true, ref reason } if reason.contains("acknowledge")),
            "{decision:?}"
        );
        // Acknowledged (or listed by the agent): nothing to do.
        let decision = decide(
            &run(false, None, LostAgentPolicy::Error),
            &alive(0, &[("ca1", 9)]),
            &config,
            Instant::now(),
            NOW,
        );
        assert_eq!(decision, Decision::Nothing);
    }

    #[test]
    fn a_lost_agent_requeues_unstarted_runs_at_once_and_applies_the_policy_after_grace() {
        let config = LivenessConfig::default();
        let started = Instant::now();
        let unstarted = decide(
            &run(true, Some(StepStatus::Queued), LostAgentPolicy::Error),
            &gone_for(1),
            &config,
            started,
            NOW,
        );
        assert!(matches!(
            unstarted,
            Decision::Requeue {
                unstarted: true,
                ..
            }
        ));
        let within_grace = decide(
            &run(true, Some(StepStatus::Running), LostAgentPolicy::Error),
            &gone_for(1),
            &config,
            started,
            NOW,
        );
        assert_eq!(within_grace, Decision::Nothing);
        let after_grace = decide(
            &run(true, Some(StepStatus::Running), LostAgentPolicy::Error),
            &gone_for(31),
            &config,
            started,
            NOW,
        );
        assert!(
            matches!(after_grace, Decision::Finish { status: RunStatus::Error, ref reason } if reason.contains("agent a was lost")),
            "{after_grace:?}"
        );
        let requeued = decide(
            &run(true, Some(StepStatus::Running), LostAgentPolicy::Requeue),
            &gone_for(31),
            &config,
            started,
            NOW,
        );
        assert!(matches!(
            requeued,
            Decision::Requeue {
                unstarted: false,
                ..
            }
        ));
        let mut exhausted = run(true, Some(StepStatus::Running), LostAgentPolicy::Requeue);
        exhausted.attempt = DEFAULT_MAX_ATTEMPTS;
        let decision = decide(&exhausted, &gone_for(31), &config, started, NOW);
        assert!(
            matches!(decision, Decision::Finish { ref reason, .. } if reason.contains("no attempts left")),
            "{decision:?}"
        );
    }

    #[test]
    fn an_agent_that_restarted_without_the_run_gets_the_policy_at_once() {
        let config = LivenessConfig::default();
        let decision = decide(
            &run(true, Some(StepStatus::Running), LostAgentPolicy::Error),
            &alive(2_000, &[]),
            &config,
            Instant::now(),
            NOW,
        );
        assert!(
            matches!(decision, Decision::Finish { ref reason, .. } if reason.contains("restarted")),
            "{decision:?}"
        );
    }

    #[test]
    fn a_run_far_past_its_timeout_ends_timeout() {
        let config = LivenessConfig::default();
        let mut late = run(true, Some(StepStatus::Running), LostAgentPolicy::Error);
        late.request.as_mut().unwrap().timeout_seconds = 10;
        let decision = decide(
            &late,
            &alive(0, &[("ca1", 9)]),
            &config,
            Instant::now(),
            1_000 + 10_000 + DEFAULT_TIMEOUT_SLACK.as_millis() as u64 + 1,
        );
        assert!(matches!(
            decision,
            Decision::Finish {
                status: RunStatus::Timeout,
                ..
            }
        ));
    }

    fn view(id: &str, running: u32, arch: &str) -> scheduler::AgentView {
        scheduler::AgentView {
            agent_id: id.to_string(),
            platforms: vec![(
                kiln_state::PlatformSpec::parse(&format!("linux/{arch}")).unwrap(),
                false,
            )],
            capacity: 4,
            running,
            pool: String::new(),
            labels: Vec::new(),
        }
    }

    fn queued_state(runs: u64) -> kiln_state::State {
        let mut state = kiln_state::State::default();
        for index in 1..=runs {
            let request = RunRequest {
                task_yaml: "steps:\n  - cmd: busybox true\n".to_string(),
                registry: "127.0.0.1:5000".to_string(),
                platform: Some(
                    kiln_state::PlatformSpec::parse("linux/amd64")
                        .unwrap()
                        .to_pb(),
                ),
                kind: "run".to_string(),
                submitter: format!("s{}", index % 3),
                ..RunRequest::default()
            };
            let command = kiln_state::pb::Command {
                at_ms: index,
                kind: Some(command::Kind::SubmitRun(kiln_state::pb::SubmitRun {
                    request: Some(request),
                    request_id: format!("r{index}"),
                })),
            };
            let outcome = state.apply(index, &command);
            assert!(outcome.result.error.is_empty(), "{:?}", outcome.result);
        }
        state
    }

    #[test]
    fn leaving_out_agents_the_scheduler_would_not_choose_changes_no_assignment() {
        // Loads 0..=4 in a scrambled order over 60 agents, some full.
        let alike: Vec<scheduler::AgentView> = (0..60u32)
            .map(|n| view(&format!("agent-{:02}", (n * 37) % 60), (n * 7) % 5, "amd64"))
            .collect();
        let mut mixed = alike.clone();
        mixed[5] = view("arm-agent", 0, "arm64");
        for runs in [0, 1, 3, 10, 25, 200] {
            let state = queued_state(runs);
            for views in [&alike, &mixed] {
                let all = scheduler::solve(&state, views);
                let kept = candidates(views.clone(), |most| state.queued_runs().take(most).count());
                assert!(kept.iter().all(|v| v.running < v.capacity));
                assert_eq!(scheduler::solve(&state, &kept), all, "{runs} runs");
            }
            let kept = candidates(alike.clone(), |most| state.queued_runs().take(most).count());
            let free = alike.iter().filter(|v| v.running < v.capacity).count();
            assert_eq!(kept.len(), free.min(runs as usize));
        }
    }
}

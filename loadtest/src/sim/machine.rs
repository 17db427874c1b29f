//! One simulated agent's protocol logic as a pure state machine: messages from the coordinator
//! (and "the step's time is up") go in, messages to send and timers to set come out. The
//! session code in `sim.rs` owns the gRPC stream, the clock and the timers.
//!
//! Every run has one step, `sim`: assignment → `AssignmentAck`, `RunPlanned`, `StepUpdate`
//! Running → (its ack) → the step's time → `StepUpdate` Succeeded, `RunFinished` Succeeded →
//! (its ack) the run is over.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kiln_proto::v1::{
    agent_message, coordinator_message, ActiveRun, AgentMessage, AgentPlatform, Assignment,
    AssignmentAck, CoordinatorMessage, Heartbeat, Hello, ReportAck, RunFinished, RunPlanned,
    StepUpdate, Welcome,
};
use kiln_state::pb::{RunStatus, StepStatus};

/// The id of every simulated run's only step.
pub const STEP_ID: &str = "sim";

/// What a simulated agent is.
#[derive(Clone, Debug)]
pub struct Identity {
    pub agent_id: String,
    pub platforms: Vec<AgentPlatform>,
    pub capacity: u32,
    pub pool: String,
    /// How long every step takes.
    pub step: Duration,
}

/// Something the session must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Send(AgentMessage),
    /// Call `Machine::step_done(run_id, epoch)` after `after`.
    Wake {
        run_id: String,
        epoch: u64,
        after: Duration,
    },
    /// A report was acknowledged this long after it was made.
    Acked(Duration),
    /// A new lease was taken (not a repeated assignment).
    Assigned {
        run_id: String,
        epoch: u64,
    },
    /// The step of a run started executing under `epoch` (its Running report was committed).
    Executing {
        run_id: String,
        epoch: u64,
    },
    /// A run's `RunFinished` was committed: the run is over on the coordinator too.
    Finished {
        run_id: String,
        submitter: String,
        status: RunStatus,
    },
}

/// What the agent saw, for the summary (anomalies are the coordinator's doing).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Assignments taken.
    pub assigned: u64,
    /// Assignments of a run (and epoch) already held: acknowledged again, nothing restarted.
    pub duplicate_assignments: u64,
    /// Assignments beyond `capacity` runs at once (taken anyway).
    pub over_capacity: u64,
    /// Assignments received while draining (not acknowledged, so the coordinator requeues them).
    pub refused_draining: u64,
    /// Runs finished Succeeded / Canceled (their `RunFinished` committed).
    pub succeeded: u64,
    pub canceled: u64,
    /// Runs dropped on `StopRun`.
    pub stopped: u64,
    /// Reports answered `stale` (the run was dropped).
    pub stale: u64,
    /// Reports finally rejected with an error.
    pub report_errors: u64,
    /// The most runs held at once.
    pub max_active: u64,
    /// Gauges the session sets when it publishes the counters: runs held now, reports waiting
    /// for their ack now.
    pub held: u64,
    pub unacknowledged: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// `StepUpdate` Running was sent; waiting for its ack before the step "starts".
    Starting,
    /// The step is running (a timer is set).
    Stepping,
    /// `RunFinished` was sent; waiting for its ack.
    Finishing,
}

#[derive(Clone, Debug)]
struct SimRun {
    epoch: u64,
    submitter: String,
    phase: Phase,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReportKind {
    Planned,
    StepRunning,
    StepEnded,
    Finished(RunStatus),
}

#[derive(Clone, Debug)]
struct Pending {
    run_id: String,
    epoch: u64,
    submitter: String,
    kind: ReportKind,
    /// Kept to resend after a reconnect.
    message: AgentMessage,
    made_at: Instant,
}

/// One simulated agent.
#[derive(Debug)]
pub struct Machine {
    identity: Identity,
    next_report_id: u64,
    heartbeat_seq: u64,
    draining: bool,
    runs: BTreeMap<String, SimRun>,
    /// Reports not acknowledged yet, by report id (increasing).
    pending: BTreeMap<u64, Pending>,
    pub counters: Counters,
    /// The first rejection's text, for the summary.
    pub first_error: Option<String>,
}

impl Machine {
    pub fn new(identity: Identity) -> Self {
        Self {
            identity,
            next_report_id: 1,
            heartbeat_seq: 0,
            draining: false,
            runs: BTreeMap::new(),
            pending: BTreeMap::new(),
            counters: Counters::default(),
            first_error: None,
        }
    }

    pub fn agent_id(&self) -> &str {
        &self.identity.agent_id
    }

    /// Runs held (assigned and not over).
    pub fn active(&self) -> usize {
        self.runs.len()
    }

    /// Reports waiting for their ack.
    pub fn unacknowledged(&self) -> usize {
        self.pending.len()
    }

    /// The first message of a session: who this agent is and the runs it holds.
    pub fn hello(&self) -> AgentMessage {
        AgentMessage {
            msg: Some(agent_message::Msg::Hello(Hello {
                agent_id: self.identity.agent_id.clone(),
                platforms: self.identity.platforms.clone(),
                capacity: self.identity.capacity,
                active_runs: self.runs.keys().cloned().collect(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                protocol_version: kiln_proto::PROTOCOL_VERSION,
                pool: self.identity.pool.clone(),
                labels: Vec::new(),
                draining: self.draining,
                leases: self.leases(),
            })),
            report_id: 0,
        }
    }

    /// Checks the coordinator's `Welcome` and returns the reports to send again (every
    /// unacknowledged one, oldest first): after a reconnect, acks of the old session are lost.
    pub fn welcome(&mut self, welcome: &Welcome) -> Result<Vec<AgentMessage>, String> {
        if welcome.protocol_version < kiln_proto::MIN_PROTOCOL_VERSION {
            return Err(format!(
                "the coordinator speaks agent protocol {}, older than {}",
                welcome.protocol_version,
                kiln_proto::MIN_PROTOCOL_VERSION
            ));
        }
        Ok(self.pending.values().map(|p| p.message.clone()).collect())
    }

    /// The next heartbeat.
    pub fn heartbeat(&mut self) -> AgentMessage {
        self.heartbeat_seq += 1;
        AgentMessage {
            msg: Some(agent_message::Msg::Heartbeat(Heartbeat {
                seq: self.heartbeat_seq,
                active: self.leases(),
                draining: self.draining,
                ack_seq: 0,
            })),
            report_id: 0,
        }
    }

    /// Handles one message from the coordinator. A `Welcome` here (not the first message) is
    /// ignored.
    pub fn handle(&mut self, message: CoordinatorMessage, now: Instant) -> Vec<Action> {
        match message.msg {
            Some(coordinator_message::Msg::Assign(assignment)) => self.assign(assignment, now),
            Some(coordinator_message::Msg::ReportAck(ack)) => self.report_ack(&ack, now),
            Some(coordinator_message::Msg::Cancel(cancel)) => self.cancel(&cancel.run_id, now),
            Some(coordinator_message::Msg::Stop(stop)) => {
                let holds = self
                    .runs
                    .get(&stop.run_id)
                    .is_some_and(|run| stop.epoch == 0 || stop.epoch == run.epoch);
                if holds {
                    self.counters.stopped += 1;
                    // A run stopped after its `RunFinished` was sent (the coordinator may have
                    // committed it before its ack arrives): that report's ack still counts.
                    let finishing =
                        self.runs.get(&stop.run_id).map(|run| run.phase) == Some(Phase::Finishing);
                    self.runs.remove(&stop.run_id);
                    self.pending.retain(|_, pending| {
                        pending.run_id != stop.run_id
                            || (finishing && matches!(pending.kind, ReportKind::Finished(_)))
                    });
                }
                Vec::new()
            }
            Some(coordinator_message::Msg::Drain(drain)) => {
                self.draining = drain.drain;
                Vec::new()
            }
            Some(coordinator_message::Msg::Heartbeat(_) | coordinator_message::Msg::Welcome(_))
            | None => Vec::new(),
        }
    }

    /// The step of `run_id` under `epoch` has run its time: it succeeds and the run finishes.
    pub fn step_done(&mut self, run_id: &str, epoch: u64, now: Instant) -> Vec<Action> {
        let stepping = self
            .runs
            .get(run_id)
            .is_some_and(|run| run.epoch == epoch && run.phase == Phase::Stepping);
        if !stepping {
            // Stopped, canceled or reassigned meanwhile.
            return Vec::new();
        }
        self.finish(
            run_id,
            epoch,
            StepStatus::Succeeded,
            RunStatus::Succeeded,
            now,
        )
    }

    fn assign(&mut self, assignment: Assignment, now: Instant) -> Vec<Action> {
        let run_id = assignment.run_id;
        let epoch = assignment.epoch;
        let ack = || {
            Action::Send(AgentMessage {
                msg: Some(agent_message::Msg::AssignmentAck(AssignmentAck {
                    run_id: run_id.clone(),
                    epoch,
                })),
                report_id: 0,
            })
        };
        if let Some(held) = self.runs.get(&run_id) {
            if held.epoch == epoch {
                self.counters.duplicate_assignments += 1;
                return vec![ack()];
            }
            if held.epoch > epoch {
                // An older lease than the one held: out of date, ignored.
                return Vec::new();
            }
            // A newer lease: the old one is gone; start again under the new one.
            self.drop_run(&run_id);
        }
        if self.draining {
            self.counters.refused_draining += 1;
            return Vec::new();
        }
        if self.runs.len() >= self.identity.capacity as usize {
            self.counters.over_capacity += 1;
        }
        self.counters.assigned += 1;
        let submitter = assignment
            .request
            .map(|request| request.submitter)
            .unwrap_or_default();
        self.runs.insert(
            run_id.clone(),
            SimRun {
                epoch,
                submitter,
                phase: Phase::Starting,
            },
        );
        self.counters.max_active = self.counters.max_active.max(self.runs.len() as u64);
        let planned = agent_message::Msg::RunPlanned(RunPlanned {
            run_id: run_id.clone(),
            step_ids: vec![STEP_ID.to_string()],
            epoch,
        });
        let running =
            agent_message::Msg::StepUpdate(step_update(&run_id, epoch, StepStatus::Running, ""));
        let mut actions = vec![
            ack(),
            Action::Assigned {
                run_id: run_id.clone(),
                epoch,
            },
        ];
        actions.push(self.report(&run_id, epoch, ReportKind::Planned, planned, now));
        actions.push(self.report(&run_id, epoch, ReportKind::StepRunning, running, now));
        actions
    }

    fn report_ack(&mut self, ack: &ReportAck, now: Instant) -> Vec<Action> {
        let Some(pending) = self.pending.remove(&ack.report_id) else {
            // Already acknowledged (a resent report), or of a run dropped since.
            return Vec::new();
        };
        let mut actions = vec![Action::Acked(
            now.saturating_duration_since(pending.made_at),
        )];
        let Some(run) = self.runs.get_mut(&pending.run_id) else {
            if let (ReportKind::Finished(status), false, true) =
                (pending.kind, ack.stale, ack.error.is_empty())
            {
                // Stopped while finishing; the finish was committed all the same.
                self.count_finished(status);
                actions.push(Action::Finished {
                    run_id: pending.run_id,
                    submitter: pending.submitter,
                    status,
                });
            }
            return actions;
        };
        if run.epoch != pending.epoch {
            return actions;
        }
        if ack.stale {
            self.counters.stale += 1;
            self.drop_run(&pending.run_id);
            return actions;
        }
        if !ack.error.is_empty() {
            self.counters.report_errors += 1;
            if self.first_error.is_none() {
                self.first_error = Some(format!(
                    "run {}: {:?} report rejected: {}",
                    pending.run_id, pending.kind, ack.error
                ));
            }
            if pending.kind != ReportKind::StepEnded {
                // The run cannot go on (or is over): forget it.
                self.drop_run(&pending.run_id);
            }
            return actions;
        }
        match (pending.kind, run.phase) {
            (ReportKind::StepRunning, Phase::Starting) => {
                run.phase = Phase::Stepping;
                actions.push(Action::Executing {
                    run_id: pending.run_id.clone(),
                    epoch: pending.epoch,
                });
                actions.push(Action::Wake {
                    run_id: pending.run_id,
                    epoch: pending.epoch,
                    after: self.identity.step,
                });
            }
            (ReportKind::Finished(status), Phase::Finishing) => {
                self.count_finished(status);
                self.drop_run(&pending.run_id);
                actions.push(Action::Finished {
                    run_id: pending.run_id,
                    submitter: pending.submitter,
                    status,
                });
            }
            _ => {}
        }
        actions
    }

    fn count_finished(&mut self, status: RunStatus) {
        match status {
            RunStatus::Canceled => self.counters.canceled += 1,
            _ => self.counters.succeeded += 1,
        }
    }

    fn cancel(&mut self, run_id: &str, now: Instant) -> Vec<Action> {
        let Some(run) = self.runs.get(run_id) else {
            return Vec::new();
        };
        if run.phase == Phase::Finishing {
            return Vec::new();
        }
        let epoch = run.epoch;
        self.finish(
            run_id,
            epoch,
            StepStatus::Canceled,
            RunStatus::Canceled,
            now,
        )
    }

    /// Ends the step and the run: `StepUpdate(step)`, `RunFinished(status)`.
    fn finish(
        &mut self,
        run_id: &str,
        epoch: u64,
        step: StepStatus,
        status: RunStatus,
        now: Instant,
    ) -> Vec<Action> {
        if let Some(run) = self.runs.get_mut(run_id) {
            run.phase = Phase::Finishing;
        }
        let reason = if status == RunStatus::Canceled {
            "canceled"
        } else {
            ""
        };
        let ended = agent_message::Msg::StepUpdate(step_update(run_id, epoch, step, reason));
        let finished = agent_message::Msg::RunFinished(RunFinished {
            run_id: run_id.to_string(),
            status: status as i32,
            reason: reason.to_string(),
            epoch,
        });
        vec![
            self.report(run_id, epoch, ReportKind::StepEnded, ended, now),
            self.report(run_id, epoch, ReportKind::Finished(status), finished, now),
        ]
    }

    /// Makes a report with the next report id, remembered until acknowledged.
    fn report(
        &mut self,
        run_id: &str,
        epoch: u64,
        kind: ReportKind,
        msg: agent_message::Msg,
        now: Instant,
    ) -> Action {
        let report_id = self.next_report_id;
        self.next_report_id += 1;
        let submitter = self
            .runs
            .get(run_id)
            .map(|run| run.submitter.clone())
            .unwrap_or_default();
        let message = AgentMessage {
            msg: Some(msg),
            report_id,
        };
        self.pending.insert(
            report_id,
            Pending {
                run_id: run_id.to_string(),
                epoch,
                submitter,
                kind,
                message: message.clone(),
                made_at: now,
            },
        );
        Action::Send(message)
    }

    /// Forgets a run and its unacknowledged reports: nothing more is sent for it.
    fn drop_run(&mut self, run_id: &str) {
        self.runs.remove(run_id);
        self.pending.retain(|_, pending| pending.run_id != run_id);
    }

    fn leases(&self) -> Vec<ActiveRun> {
        self.runs
            .iter()
            .map(|(run_id, run)| ActiveRun {
                run_id: run_id.clone(),
                epoch: run.epoch,
            })
            .collect()
    }
}

fn step_update(run_id: &str, epoch: u64, status: StepStatus, reason: &str) -> StepUpdate {
    StepUpdate {
        run_id: run_id.to_string(),
        step_id: STEP_ID.to_string(),
        status: status as i32,
        has_exit_code: status == StepStatus::Succeeded,
        exit_code: 0,
        reason: reason.to_string(),
        epoch,
        ..StepUpdate::default()
    }
}

#[cfg(test)]
mod tests;

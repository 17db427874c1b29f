//! [`State`] and its `apply` function: the only way the replicated state changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::pb::{
    command, AcknowledgeRun, ApplyResult, AssignRun, Command, FinishRun, Lease, Member, PlanRun,
    PruneRuns, RecordImage, RecordLog, RequestCancel, RequeueRun, Run, RunRequest, RunStatus,
    SetMember, StateMeta, StateSnapshot, Step, StepStatus, SubmitRun, UpdateStep,
};
use crate::platform::PlatformSpec;

/// Largest task file accepted in a run request. Task files are small; this bounds the replicated log.
pub const MAX_TASK_BYTES: usize = 512 * 1024;
/// Largest values file accepted in a run request.
pub const MAX_VALUES_BYTES: usize = 256 * 1024;
/// Most steps one run may have; equal to `kiln_taskfile`'s limit, so every plan fits.
pub const MAX_STEPS: usize = 1000;
/// Most pushed images recorded for one run.
pub const MAX_IMAGES: usize = 1000;
/// Longest reason text kept in a record; longer reasons are cut.
pub const MAX_REASON_BYTES: usize = 4096;
/// Longest whole-run timeout a request may ask for (ACR's limit: 8 hours).
pub const MAX_RUN_TIMEOUT_SECONDS: u64 = 28_800;
/// Most stored log segments one step may have; an agent stores the rest of a longer log as
/// one last segment when the step ends.
pub const MAX_LOG_SEGMENTS: usize = 10_000;
/// Most assignments one run gets in all, whatever the reason for going back to the queue.
pub const MAX_ATTEMPTS: u32 = 10;
/// Attempts a run gets with the requeue policy when its request sets none.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Bounds on the smaller request fields.
pub const MAX_NAME_BYTES: usize = 256;
pub const MAX_SET_VALUES: usize = 1000;
pub const MAX_SET_VALUE_BYTES: usize = 64 * 1024;
pub const MAX_AGENT_LABELS: usize = 32;
pub const MAX_SECRET_NAMES: usize = 256;
/// Longest client request id of a `SubmitRun`.
pub const MAX_REQUEST_ID_BYTES: usize = 64;
/// Most runs one `PruneRuns` forgets, so that one command never stalls the apply loop.
pub const MAX_PRUNED_PER_COMMAND: usize = 10_000;
/// Longest member address.
pub const MAX_URL_BYTES: usize = 1024;

/// The applied state: every retained run, by sequence number, with indexes of the queued and
/// running ones and of client request ids (all derived from the runs, so the scheduler never
/// scans finished runs), the next run number and the cluster's address book.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    runs: BTreeMap<u64, Run>,
    queued: BTreeSet<u64>,
    running: BTreeSet<u64>,
    by_request: HashMap<String, u64>,
    /// The number the next run gets; never reused, even after old runs are pruned.
    next_seq: u64,
    members: BTreeMap<u64, Member>,
}

/// What applying one command did.
#[derive(Clone, Debug, PartialEq)]
pub struct ApplyOutcome {
    /// Returned to the proposer.
    pub result: ApplyResult,
    /// The sequence number of the run that changed, if any, so the caller can persist it.
    pub changed_run: Option<u64>,
    /// Runs the command removed (retention), so the caller can delete them.
    pub removed_runs: Vec<u64>,
    /// The meta record (next run number, members) changed.
    pub meta_changed: bool,
}

impl ApplyOutcome {
    fn rejected(message: impl Into<String>) -> Self {
        Self {
            result: ApplyResult {
                error: message.into(),
                ..ApplyResult::default()
            },
            changed_run: None,
            removed_runs: Vec::new(),
            meta_changed: false,
        }
    }

    /// Rejected because the sender does not hold the run's current lease.
    fn stale(message: impl Into<String>) -> Self {
        let mut outcome = Self::rejected(message);
        outcome.result.stale_lease = true;
        outcome
    }

    fn changed(seq: u64) -> Self {
        Self {
            result: ApplyResult {
                run_id: run_id_for_seq(seq),
                ..ApplyResult::default()
            },
            changed_run: Some(seq),
            removed_runs: Vec::new(),
            meta_changed: false,
        }
    }

    /// Accepted, but nothing needed to change (a repeated report).
    fn unchanged(seq: u64) -> Self {
        Self {
            result: ApplyResult {
                run_id: run_id_for_seq(seq),
                ..ApplyResult::default()
            },
            changed_run: None,
            removed_runs: Vec::new(),
            meta_changed: false,
        }
    }

    /// Accepted; nothing needed to change.
    fn nothing() -> Self {
        Self {
            meta_changed: false,
            ..Self::meta_changed()
        }
    }

    fn meta_changed() -> Self {
        Self {
            result: ApplyResult::default(),
            changed_run: None,
            removed_runs: Vec::new(),
            meta_changed: true,
        }
    }
}

/// Formats a run id the way ACR does: a short prefix and an increasing number (`ca1`, `ca2`, …).
pub fn run_id_for_seq(seq: u64) -> String {
    format!("ca{seq}")
}

/// The sequence number of a run id, if it is one.
pub fn seq_from_run_id(run_id: &str) -> Option<u64> {
    let digits = run_id.strip_prefix("ca")?;
    if digits.is_empty() || digits.starts_with('0') {
        return None;
    }
    digits.parse().ok()
}

pub fn is_terminal(status: RunStatus) -> bool {
    !matches!(
        status,
        RunStatus::Queued | RunStatus::Running | RunStatus::Unspecified
    )
}

pub fn is_step_terminal(status: StepStatus) -> bool {
    !matches!(
        status,
        StepStatus::Queued | StepStatus::Running | StepStatus::Unspecified
    )
}

impl State {
    /// Rebuilds the state from persisted runs (and no meta record).
    pub fn from_runs(runs: impl IntoIterator<Item = Run>) -> Self {
        Self::from_parts(StateMeta::default(), runs)
    }

    /// Rebuilds the state from its persisted meta record and runs.
    pub fn from_parts(meta: StateMeta, runs: impl IntoIterator<Item = Run>) -> Self {
        let mut state = Self {
            next_seq: meta.next_seq,
            members: meta.members.into_iter().map(|m| (m.id, m)).collect(),
            ..Self::default()
        };
        for run in runs {
            let seq = run.seq;
            if !run.request_id.is_empty() {
                state.by_request.insert(run.request_id.clone(), seq);
            }
            state.runs.insert(seq, run);
            state.reindex(seq);
        }
        state.next_seq = state.next_seq();
        state
    }

    /// Rebuilds the state from a snapshot.
    pub fn from_snapshot(snapshot: StateSnapshot) -> Self {
        Self::from_parts(snapshot.meta.unwrap_or_default(), snapshot.runs)
    }

    /// The whole state, for a Raft snapshot or a backup.
    pub fn snapshot(&self) -> StateSnapshot {
        StateSnapshot {
            meta: Some(self.meta()),
            runs: self.runs.values().cloned().collect(),
        }
    }

    /// Everything that is not a run.
    pub fn meta(&self) -> StateMeta {
        StateMeta {
            next_seq: self.next_seq(),
            members: self.members.values().cloned().collect(),
        }
    }

    /// The cluster's address book, by member id.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    pub fn member(&self, id: u64) -> Option<&Member> {
        self.members.get(&id)
    }

    /// Keeps the address book in step with a Raft configuration change that was applied:
    /// `added` joins (or updates) it, `removed` leaves it.
    pub fn apply_membership(&mut self, added: Option<Member>, removed: Option<u64>) {
        if let Some(member) = added {
            if member.id != 0 {
                self.members.insert(member.id, member);
            }
        }
        if let Some(id) = removed {
            self.members.remove(&id);
        }
    }

    /// How many runs are retained.
    pub fn run_count(&self) -> usize {
        self.runs.len()
    }

    pub fn run(&self, run_id: &str) -> Option<&Run> {
        self.runs.get(&seq_from_run_id(run_id)?)
    }

    pub fn run_by_seq(&self, seq: u64) -> Option<&Run> {
        self.runs.get(&seq)
    }

    /// All runs, oldest first.
    pub fn runs(&self) -> impl DoubleEndedIterator<Item = &Run> {
        self.runs.values()
    }

    /// Runs waiting for an agent, oldest first.
    pub fn queued_runs(&self) -> impl Iterator<Item = &Run> {
        self.queued.iter().filter_map(|seq| self.runs.get(seq))
    }

    /// Runs an agent is executing, oldest first.
    pub fn running_runs(&self) -> impl Iterator<Item = &Run> {
        self.running.iter().filter_map(|seq| self.runs.get(seq))
    }

    /// Keeps the queued and running indexes in step with run `seq`'s status.
    fn reindex(&mut self, seq: u64) {
        let status = self.runs.get(&seq).map(Run::status);
        if status == Some(RunStatus::Queued) {
            self.queued.insert(seq);
        } else {
            self.queued.remove(&seq);
        }
        if status == Some(RunStatus::Running) {
            self.running.insert(seq);
        } else {
            self.running.remove(&seq);
        }
    }

    fn next_seq(&self) -> u64 {
        let after_last = self
            .runs
            .keys()
            .next_back()
            .map_or(1, |last| last.saturating_add(1));
        self.next_seq.max(after_last)
    }

    /// Applies the command committed at Raft log `index`. Deterministic and total: bad content
    /// is rejected, never panics. The index is the epoch of the lease an `AssignRun` creates.
    pub fn apply(&mut self, index: u64, command: &Command) -> ApplyOutcome {
        let outcome = self.apply_kind(index, command);
        if let Some(seq) = outcome.changed_run {
            self.reindex(seq);
        }
        outcome
    }

    fn apply_kind(&mut self, index: u64, command: &Command) -> ApplyOutcome {
        let at_ms = command.at_ms;
        match &command.kind {
            None => ApplyOutcome::rejected("empty command"),
            Some(command::Kind::SubmitRun(c)) => self.submit_run(c, at_ms),
            Some(command::Kind::AssignRun(c)) => self.assign_run(c, index, at_ms),
            Some(command::Kind::PlanRun(c)) => self.plan_run(c),
            Some(command::Kind::UpdateStep(c)) => self.update_step(c, at_ms),
            Some(command::Kind::RecordImage(c)) => self.record_image(c),
            Some(command::Kind::FinishRun(c)) => self.finish_run(c, at_ms),
            Some(command::Kind::RequestCancel(c)) => self.request_cancel(c, at_ms),
            Some(command::Kind::AcknowledgeRun(c)) => self.acknowledge_run(c),
            Some(command::Kind::RequeueRun(c)) => self.requeue_run(c),
            Some(command::Kind::RecordLog(c)) => self.record_log(c),
            Some(command::Kind::SetMember(c)) => self.set_member(c),
            Some(command::Kind::PruneRuns(c)) => self.prune_runs(c, at_ms),
        }
    }

    fn set_member(&mut self, command: &SetMember) -> ApplyOutcome {
        let Some(member) = &command.member else {
            return ApplyOutcome::rejected("the member is missing");
        };
        if member.id == 0 {
            return ApplyOutcome::rejected("a member id must not be 0");
        }
        for (what, url) in [("peer", &member.peer_url), ("client", &member.client_url)] {
            if url.is_empty() || url.len() > MAX_URL_BYTES {
                return ApplyOutcome::rejected(format!(
                    "member {}: the {what} address must be 1 to {MAX_URL_BYTES} bytes",
                    member.id
                ));
            }
        }
        if self.members.get(&member.id) == Some(member) {
            return ApplyOutcome::nothing();
        }
        self.members.insert(member.id, member.clone());
        ApplyOutcome::meta_changed()
    }

    /// Forgets finished runs beyond the retention policy, oldest first.
    fn prune_runs(&mut self, command: &PruneRuns, at_ms: u64) -> ApplyOutcome {
        let finished: Vec<(u64, u64)> = self
            .runs
            .values()
            .filter(|run| is_terminal(run.status()))
            .map(|run| (run.seq, run.finished_at_ms))
            .collect();
        let keep = usize::try_from(command.keep_finished).unwrap_or(usize::MAX);
        let beyond_count = finished.len().saturating_sub(keep);
        let mut removed = Vec::new();
        for (position, (seq, finished_at_ms)) in finished.into_iter().enumerate() {
            if removed.len() >= MAX_PRUNED_PER_COMMAND {
                break;
            }
            let too_many = position < beyond_count;
            let too_old =
                command.max_age_ms > 0 && finished_at_ms.saturating_add(command.max_age_ms) < at_ms;
            if too_many || too_old {
                removed.push(seq);
            }
        }
        // Remember where numbering goes on before the last run can disappear.
        self.next_seq = self.next_seq();
        for seq in &removed {
            if let Some(run) = self.runs.remove(seq) {
                if !run.request_id.is_empty() {
                    self.by_request.remove(&run.request_id);
                }
            }
        }
        ApplyOutcome {
            result: ApplyResult::default(),
            changed_run: None,
            meta_changed: !removed.is_empty(),
            removed_runs: removed,
        }
    }

    fn submit_run(&mut self, command: &SubmitRun, at_ms: u64) -> ApplyOutcome {
        let Some(request) = &command.request else {
            return ApplyOutcome::rejected("run request is missing");
        };
        if let Err(message) = validate_request(request) {
            return ApplyOutcome::rejected(message);
        }
        if command.request_id.len() > MAX_REQUEST_ID_BYTES {
            return ApplyOutcome::rejected(format!(
                "the request id is {} bytes; at most {MAX_REQUEST_ID_BYTES} are allowed",
                command.request_id.len()
            ));
        }
        // A retry of a submission that was committed: the same run, not a second one.
        if let Some(seq) = self.by_request.get(&command.request_id) {
            return ApplyOutcome::unchanged(*seq);
        }
        let seq = self.next_seq();
        let run = Run {
            id: run_id_for_seq(seq),
            seq,
            request: Some(request.clone()),
            status: RunStatus::Queued as i32,
            created_at_ms: at_ms,
            request_id: command.request_id.clone(),
            ..Run::default()
        };
        if !command.request_id.is_empty() {
            self.by_request.insert(command.request_id.clone(), seq);
        }
        self.runs.insert(seq, run);
        self.next_seq = seq + 1;
        let mut outcome = ApplyOutcome::changed(seq);
        outcome.meta_changed = true;
        outcome
    }

    fn assign_run(&mut self, command: &AssignRun, index: u64, at_ms: u64) -> ApplyOutcome {
        if command.agent_id.is_empty() {
            return ApplyOutcome::rejected("agent id is missing");
        }
        let (seq, run) = match self.run_mut(&command.run_id) {
            Ok(found) => found,
            Err(outcome) => return outcome,
        };
        if run.status() != RunStatus::Queued {
            return ApplyOutcome::rejected(format!(
                "run {} is {:?}, not Queued",
                run.id,
                run.status()
            ));
        }
        if run.attempt >= MAX_ATTEMPTS {
            return ApplyOutcome::rejected(format!(
                "run {} was assigned {} times already",
                run.id, run.attempt
            ));
        }
        run.status = RunStatus::Running as i32;
        run.agent_id = command.agent_id.clone();
        run.agent_platform = command.agent_platform.clone();
        run.emulated = command.emulated;
        run.started_at_ms = at_ms;
        run.lease_epoch = index;
        run.acknowledged = false;
        run.attempt += 1;
        ApplyOutcome::changed(seq)
    }

    fn acknowledge_run(&mut self, command: &AcknowledgeRun) -> ApplyOutcome {
        if let Some(run) = self.ended_under(&command.run_id, command.lease.as_ref()) {
            if run.acknowledged {
                return ApplyOutcome::unchanged(run.seq);
            }
        }
        let (seq, run) = match self.leased_run_mut(&command.run_id, command.lease.as_ref()) {
            Ok(found) => found,
            Err(outcome) => return outcome,
        };
        if run.acknowledged {
            return ApplyOutcome::unchanged(seq);
        }
        run.acknowledged = true;
        ApplyOutcome::changed(seq)
    }

    fn requeue_run(&mut self, command: &RequeueRun) -> ApplyOutcome {
        let (seq, run) = match self.leased_run_mut(&command.run_id, command.lease.as_ref()) {
            Ok(found) => found,
            Err(outcome) => return outcome,
        };
        if command.only_if_unstarted && run_has_started_a_step(run) {
            return ApplyOutcome::rejected(format!(
                "run {} has started a step on agent {}; it is not requeued",
                run.id, run.agent_id
            ));
        }
        if run.cancel_requested {
            return ApplyOutcome::rejected(format!(
                "run {} was canceled; it is not requeued",
                run.id
            ));
        }
        if run.attempt >= MAX_ATTEMPTS {
            return ApplyOutcome::rejected(format!(
                "run {} was assigned {} times already; it is not requeued",
                run.id, run.attempt
            ));
        }
        let note = bounded(&format!(
            "attempt {} on agent {}: {}",
            run.attempt, run.agent_id, command.reason
        ));
        if run.requeues.len() >= MAX_ATTEMPTS as usize {
            run.requeues.remove(0);
        }
        run.requeues.push(note);
        run.status = RunStatus::Queued as i32;
        run.agent_id.clear();
        run.agent_platform = None;
        run.emulated = false;
        run.acknowledged = false;
        run.started_at_ms = 0;
        run.steps.clear();
        run.images.clear();
        ApplyOutcome::changed(seq)
    }

    fn record_log(&mut self, command: &RecordLog) -> ApplyOutcome {
        let Some(segment) = &command.segment else {
            return ApplyOutcome::rejected("log segment is missing");
        };
        if !is_sha256_digest(&segment.digest) {
            return ApplyOutcome::rejected(format!(
                "log segment digest '{}' is not of the form sha256:<64 hex digits>",
                segment.digest
            ));
        }
        if let Some(run) = self.ended_under(&command.run_id, command.lease.as_ref()) {
            let recorded = run.steps.iter().any(|s| {
                s.id == command.step_id
                    && s.log_segments.get(segment.index as usize) == Some(segment)
            });
            if recorded {
                return ApplyOutcome::unchanged(run.seq);
            }
        }
        let (seq, run) = match self.leased_run_mut(&command.run_id, command.lease.as_ref()) {
            Ok(found) => found,
            Err(outcome) => return outcome,
        };
        let run_id = run.id.clone();
        let Some(step) = run.steps.iter_mut().find(|s| s.id == command.step_id) else {
            return ApplyOutcome::rejected(format!(
                "run {run_id} has no step '{}'",
                command.step_id
            ));
        };
        let index = segment.index as usize;
        if let Some(existing) = step.log_segments.get(index) {
            if existing == segment {
                return ApplyOutcome::unchanged(seq);
            }
            return ApplyOutcome::rejected(format!(
                "log segment {index} of step '{}' of run {run_id} is already recorded with another digest",
                step.id
            ));
        }
        if index != step.log_segments.len() {
            return ApplyOutcome::rejected(format!(
                "log segment {index} of step '{}' of run {run_id} is out of order (next is {})",
                step.id,
                step.log_segments.len()
            ));
        }
        if index >= MAX_LOG_SEGMENTS {
            return ApplyOutcome::rejected(format!(
                "step '{}' of run {run_id} has {MAX_LOG_SEGMENTS} log segments already",
                step.id
            ));
        }
        step.log_segments.push(segment.clone());
        ApplyOutcome::changed(seq)
    }

    fn plan_run(&mut self, command: &PlanRun) -> ApplyOutcome {
        let (seq, run) = match self.leased_run_mut(&command.run_id, command.lease.as_ref()) {
            Ok(found) => found,
            Err(outcome) => return outcome,
        };
        if command.step_ids.len() > MAX_STEPS {
            return ApplyOutcome::rejected(format!(
                "run {} has {} steps; at most {MAX_STEPS} are allowed",
                run.id,
                command.step_ids.len()
            ));
        }
        for (index, id) in command.step_ids.iter().enumerate() {
            if id.is_empty() || command.step_ids[..index].contains(id) {
                return ApplyOutcome::rejected(format!("step id '{id}' is empty or repeated"));
            }
        }
        let planned: Vec<&str> = run.steps.iter().map(|s| s.id.as_str()).collect();
        if !planned.is_empty() {
            if planned
                == command
                    .step_ids
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
            {
                return ApplyOutcome::unchanged(seq);
            }
            return ApplyOutcome::rejected(format!("run {} is already planned", run.id));
        }
        run.steps = command
            .step_ids
            .iter()
            .map(|id| Step {
                id: id.clone(),
                status: StepStatus::Queued as i32,
                ..Step::default()
            })
            .collect();
        ApplyOutcome::changed(seq)
    }

    fn update_step(&mut self, command: &UpdateStep, at_ms: u64) -> ApplyOutcome {
        let status = StepStatus::try_from(command.status).unwrap_or(StepStatus::Unspecified);
        if status == StepStatus::Unspecified {
            return ApplyOutcome::rejected(format!("invalid step status {}", command.status));
        }
        if let Some(run) = self.ended_under(&command.run_id, command.lease.as_ref()) {
            if run
                .steps
                .iter()
                .any(|s| s.id == command.step_id && s.status() == status)
            {
                return ApplyOutcome::unchanged(run.seq);
            }
        }
        let (seq, run) = match self.leased_run_mut(&command.run_id, command.lease.as_ref()) {
            Ok(found) => found,
            Err(outcome) => return outcome,
        };
        let run_id = run.id.clone();
        let step = match run.steps.iter_mut().position(|s| s.id == command.step_id) {
            Some(index) => &mut run.steps[index],
            None => {
                return ApplyOutcome::rejected(format!(
                    "run {run_id} has no step '{}'",
                    command.step_id
                ))
            }
        };
        let current = step.status();
        if is_step_terminal(current) {
            // A repeated report of the same outcome (after an agent reconnects) is fine; a
            // terminal step never changes status again.
            if current == status {
                return ApplyOutcome::unchanged(seq);
            }
            return ApplyOutcome::rejected(format!(
                "step '{}' of run {run_id} already ended {current:?}",
                step.id
            ));
        }
        if status == current && !is_step_terminal(status) {
            return ApplyOutcome::unchanged(seq);
        }
        step.status = status as i32;
        if status == StepStatus::Running && step.started_at_ms == 0 {
            step.started_at_ms = at_ms;
        }
        if is_step_terminal(status) {
            step.finished_at_ms = at_ms;
            step.has_exit_code = command.has_exit_code;
            step.exit_code = command.exit_code;
            step.reason = bounded(&command.reason);
            step.log_digest = command.log_digest.clone();
            step.log_size = command.log_size;
        }
        ApplyOutcome::changed(seq)
    }

    fn record_image(&mut self, command: &RecordImage) -> ApplyOutcome {
        let Some(image) = &command.image else {
            return ApplyOutcome::rejected("image is missing");
        };
        if image.image.is_empty() || !image.digest.starts_with("sha256:") {
            return ApplyOutcome::rejected("an image record needs a name and a sha256 digest");
        }
        if let Some(run) = self.ended_under(&command.run_id, command.lease.as_ref()) {
            if run.images.iter().any(|i| i == image) {
                return ApplyOutcome::unchanged(run.seq);
            }
        }
        let (seq, run) = match self.leased_run_mut(&command.run_id, command.lease.as_ref()) {
            Ok(found) => found,
            Err(outcome) => return outcome,
        };
        if run.images.iter().any(|i| i == image) {
            return ApplyOutcome::unchanged(seq);
        }
        if run.images.len() >= MAX_IMAGES {
            return ApplyOutcome::rejected(format!("run {} pushed too many images", run.id));
        }
        run.images.push(image.clone());
        ApplyOutcome::changed(seq)
    }

    fn finish_run(&mut self, command: &FinishRun, at_ms: u64) -> ApplyOutcome {
        let status = RunStatus::try_from(command.status).unwrap_or(RunStatus::Unspecified);
        if !is_terminal(status) {
            return ApplyOutcome::rejected(format!(
                "a run can only finish with a terminal status, not {status:?}"
            ));
        }
        // The same finish again (its acknowledgement was lost): accepted, nothing changes.
        if let (Some(lease), Some(run)) = (&command.lease, self.run(&command.run_id)) {
            if is_terminal(run.status())
                && run.status() == status
                && run.agent_id == lease.agent_id
                && run.lease_epoch == lease.epoch
            {
                return ApplyOutcome::unchanged(run.seq);
            }
        }
        // Agents' finishes and the leader's (lost agent, timeout) alike are about one lease.
        let (seq, run) = match self.leased_run_mut(&command.run_id, command.lease.as_ref()) {
            Ok(found) => found,
            Err(outcome) => return outcome,
        };
        if !command.agent_id.is_empty() && command.agent_id != run.agent_id {
            return ApplyOutcome::stale(format!(
                "run {} is not assigned to agent {}",
                run.id, command.agent_id
            ));
        }
        finish(run, status, &command.reason, at_ms);
        ApplyOutcome::changed(seq)
    }

    fn request_cancel(&mut self, command: &RequestCancel, at_ms: u64) -> ApplyOutcome {
        let (seq, run) = match self.run_mut(&command.run_id) {
            Ok(found) => found,
            Err(outcome) => return outcome,
        };
        match run.status() {
            RunStatus::Queued => finish(
                run,
                RunStatus::Canceled,
                "canceled before it started",
                at_ms,
            ),
            RunStatus::Running if run.cancel_requested => return ApplyOutcome::unchanged(seq),
            RunStatus::Running => run.cancel_requested = true,
            status => {
                return ApplyOutcome::rejected(format!(
                    "run {} already finished: {}",
                    run.id,
                    status_name(status)
                ))
            }
        }
        ApplyOutcome::changed(seq)
    }

    fn run_mut(&mut self, run_id: &str) -> Result<(u64, &mut Run), ApplyOutcome> {
        let seq = seq_from_run_id(run_id)
            .ok_or_else(|| ApplyOutcome::rejected(format!("'{run_id}' is not a run id")))?;
        match self.runs.get_mut(&seq) {
            Some(run) => Ok((seq, run)),
            None => Err(ApplyOutcome::rejected(format!(
                "run {run_id} does not exist"
            ))),
        }
    }

    /// The run a lease-fenced command is about: it must be Running, assigned to the lease's
    /// agent under the lease's epoch. Anything else is a stale (or forged) report.
    /// The run `run_id` if it ended while leased to `lease`. An agent resends every report
    /// not acknowledged, in order, after a reconnect, and the run's finish may have been
    /// committed before the acknowledgements of the reports ahead of it were lost: such a
    /// report, when it changes nothing, is answered as applied instead of stale.
    fn ended_under(&self, run_id: &str, lease: Option<&Lease>) -> Option<&Run> {
        let lease = lease?;
        let run = self.run(run_id)?;
        (is_terminal(run.status())
            && run.agent_id == lease.agent_id
            && run.lease_epoch == lease.epoch)
            .then_some(run)
    }

    fn leased_run_mut(
        &mut self,
        run_id: &str,
        lease: Option<&Lease>,
    ) -> Result<(u64, &mut Run), ApplyOutcome> {
        let Some(lease) = lease else {
            return Err(ApplyOutcome::rejected(format!(
                "a report about run {run_id} carries no lease"
            )));
        };
        let (seq, run) = self.run_mut(run_id)?;
        if run.status() != RunStatus::Running {
            return Err(ApplyOutcome::stale(format!(
                "stale lease: run {run_id} is {}, not Running",
                status_name(run.status())
            )));
        }
        if run.agent_id != lease.agent_id || run.lease_epoch != lease.epoch {
            return Err(ApplyOutcome::stale(format!(
                "stale lease: run {run_id} is leased to agent {} under epoch {}, not to agent {} under epoch {}",
                run.agent_id, run.lease_epoch, lease.agent_id, lease.epoch
            )));
        }
        Ok((seq, run))
    }
}

/// ACR's name for a run status.
pub fn status_name(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Unspecified => "Unknown",
        RunStatus::Queued => "Queued",
        RunStatus::Running => "Running",
        RunStatus::Succeeded => "Succeeded",
        RunStatus::Failed => "Failed",
        RunStatus::Canceled => "Canceled",
        RunStatus::Error => "Error",
        RunStatus::Timeout => "Timeout",
    }
}

/// The name shown for a step status.
pub fn step_status_name(status: StepStatus) -> &'static str {
    match status {
        StepStatus::Unspecified => "Unknown",
        StepStatus::Queued => "Queued",
        StepStatus::Running => "Running",
        StepStatus::Succeeded => "Succeeded",
        StepStatus::Failed => "Failed",
        StepStatus::Skipped => "Skipped",
        StepStatus::Canceled => "Canceled",
        StepStatus::Timeout => "Timeout",
        StepStatus::Error => "Error",
    }
}

fn finish(run: &mut Run, status: RunStatus, reason: &str, at_ms: u64) {
    run.status = status as i32;
    run.reason = bounded(reason);
    run.finished_at_ms = at_ms;
    // Steps that never got to report an outcome end with the run.
    for step in &mut run.steps {
        match step.status() {
            StepStatus::Queued | StepStatus::Unspecified => {
                step.status = StepStatus::Skipped as i32
            }
            StepStatus::Running => {
                step.status = match status {
                    RunStatus::Timeout => StepStatus::Timeout,
                    RunStatus::Error => StepStatus::Error,
                    _ => StepStatus::Canceled,
                } as i32;
                step.finished_at_ms = at_ms;
            }
            _ => {}
        }
    }
}

/// Whether any step of the run's current attempt has started (or ended).
pub fn run_has_started_a_step(run: &Run) -> bool {
    run.steps
        .iter()
        .any(|s| !matches!(s.status(), StepStatus::Queued | StepStatus::Unspecified))
}

fn bounded(text: &str) -> String {
    if text.len() <= MAX_REASON_BYTES {
        return text.to_string();
    }
    let mut end = MAX_REASON_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

fn validate_request(request: &RunRequest) -> Result<(), String> {
    if request.task_yaml.trim().is_empty() {
        return Err("the task file is empty".to_string());
    }
    if request.task_yaml.len() > MAX_TASK_BYTES {
        return Err(format!(
            "the task file is {} bytes; at most {MAX_TASK_BYTES} are allowed",
            request.task_yaml.len()
        ));
    }
    if request.values_yaml.len() > MAX_VALUES_BYTES {
        return Err(format!(
            "the values file is {} bytes; at most {MAX_VALUES_BYTES} are allowed",
            request.values_yaml.len()
        ));
    }
    if request.registry.is_empty() {
        return Err("the run has no registry".to_string());
    }
    if request.timeout_seconds > MAX_RUN_TIMEOUT_SECONDS {
        return Err(format!(
            "the run timeout is {}s; at most {MAX_RUN_TIMEOUT_SECONDS}s (8 hours) is allowed",
            request.timeout_seconds
        ));
    }
    for (what, value) in [
        ("the task file name", &request.task_file_name),
        ("the registry", &request.registry),
        ("the task name", &request.task_name),
        ("the trigger", &request.triggered_by),
        ("the agent pool", &request.agent_pool),
        ("the submitter", &request.submitter),
        ("the kind", &request.kind),
    ] {
        if value.len() > MAX_NAME_BYTES {
            return Err(format!(
                "{what} is {} bytes long; at most {MAX_NAME_BYTES} are allowed",
                value.len()
            ));
        }
    }
    if request.set.len() > MAX_SET_VALUES {
        return Err(format!(
            "the run sets {} values; at most {MAX_SET_VALUES} are allowed",
            request.set.len()
        ));
    }
    if let Some(kv) = request
        .set
        .iter()
        .find(|kv| kv.key.len() > MAX_NAME_BYTES || kv.value.len() > MAX_SET_VALUE_BYTES)
    {
        return Err(format!(
            "the value '{}' is too long (keys up to {MAX_NAME_BYTES} bytes, values up to {MAX_SET_VALUE_BYTES})",
            kv.key.chars().take(40).collect::<String>()
        ));
    }
    if request.agent_labels.len() > MAX_AGENT_LABELS {
        return Err(format!(
            "the run asks for {} agent labels; at most {MAX_AGENT_LABELS} are allowed",
            request.agent_labels.len()
        ));
    }
    if request.secret_names.len() > MAX_SECRET_NAMES {
        return Err(format!(
            "the task declares {} secrets; at most {MAX_SECRET_NAMES} are allowed",
            request.secret_names.len()
        ));
    }
    if request.max_attempts > MAX_ATTEMPTS {
        return Err(format!(
            "max attempts is {}; at most {MAX_ATTEMPTS} are allowed",
            request.max_attempts
        ));
    }
    if !request.context_digest.is_empty() && !is_sha256_digest(&request.context_digest) {
        return Err(format!(
            "context digest '{}' is not of the form sha256:<64 hex digits>",
            request.context_digest
        ));
    }
    PlatformSpec::from_pb(request.platform.as_ref())?;
    Ok(())
}

pub fn is_sha256_digest(text: &str) -> bool {
    text.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[cfg(test)]
mod tests;

//! The gRPC services: `Control` for the CLI and `AgentService` for agents. The only module of
//! the coordinator that builds `tonic::Status`.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::stream::FuturesOrdered;
use futures::{Stream, StreamExt as _};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use kiln_proto::v1::agent_service_server::AgentService;
use kiln_proto::v1::control_server::Control;
use kiln_proto::v1::{
    agent_message, coordinator_message, AgentMessage, CancelRunRequest, CancelRunResponse,
    CoordinatorMessage, DrainAgentRequest, DrainAgentResponse, GetInfoRequest, GetInfoResponse,
    GetRunRequest, GetRunResponse, Hello, ListRunsRequest, ListRunsResponse, LogChunk, ReportAck,
    StopRun, StreamLogsRequest, SubmitRunRequest, SubmitRunResponse, Welcome,
};
use kiln_registry::Registry;
use kiln_state::machine::{is_step_terminal, is_terminal, MAX_AGENT_LABELS, MAX_NAME_BYTES};
use kiln_state::pb::{
    command, AcknowledgeRun, ApplyResult, FinishRun, Lease, LogSegment, PlanRun, PushedImage,
    RecordImage, RecordLog, RequestCancel, Run, RunStatus, SubmitRun, UpdateStep,
};
use kiln_state::{scheduler, PlatformSpec};

use crate::agents::{AgentHello, Agents, AGENT_OUTBOX};
use crate::control::LivenessConfig;
use crate::logs::{Cursor, LogHub};
use crate::raft_node::{now_ms, NotLeader, ProposeError, RaftHandle};
use crate::stored_logs;
use crate::transport::cluster_id_text;

/// Longest agent id accepted.
const MAX_AGENT_ID_BYTES: usize = 128;
/// Most platforms one agent may offer.
const MAX_AGENT_PLATFORMS: usize = 64;
/// Largest capacity an agent may claim.
const MAX_AGENT_CAPACITY: u32 = 256;
/// An agent that keeps reporting a run it should not run is told to stop again this often.
const STOP_REPEAT: std::time::Duration = std::time::Duration::from_secs(5);
/// Most reports of one agent proposed and not yet answered; with this many, its session reads
/// nothing more until the oldest is answered.
const REPORTS_IN_FLIGHT: usize = 256;
/// How long an acknowledgement may wait for room in the agent's outbox (the agent reads
/// nothing); then the session ends, as when the outbox is found full elsewhere.
const ACK_ROOM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Chunks queued for one `kiln logs` client; the sender waits when the client reads slowly.
const LOG_STREAM_BUFFER: usize = 64;
/// Most runs `ListRuns` returns.
const MAX_LIST: usize = 1000;

#[derive(Clone)]
pub struct Api {
    pub raft: RaftHandle,
    pub agents: Arc<Agents>,
    pub logs: Arc<LogHub>,
    pub registry: Registry,
    pub tasks: TaskTracker,
    pub liveness: LivenessConfig,
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<LogChunk, Status>> + Send>>;
type CoordinatorStream = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

pub(crate) fn propose_status(error: ProposeError) -> Status {
    match error {
        ProposeError::Rejected(message) | ProposeError::Stale(message) => {
            Status::failed_precondition(message)
        }
        ProposeError::NotLeader(not_leader) => not_leader_status(&not_leader),
        ProposeError::Overloaded => Status::resource_exhausted(error.to_string()),
        ProposeError::ShuttingDown | ProposeError::Timeout(_) | ProposeError::LeaderChanged => {
            Status::unavailable(error.to_string())
        }
    }
}

/// Request metadata: the cluster the client expects (16 hex digits).
pub const CLUSTER_ID_HEADER: &str = "kiln-cluster-id";
/// Response metadata of a not-leader answer: the leader's id and client address.
pub const LEADER_ID_HEADER: &str = "kiln-leader-id";
pub const LEADER_URL_HEADER: &str = "kiln-leader-url";
/// Request metadata: a read may be answered from this member's own, possibly stale, state.
pub const STALE_HEADER: &str = "kiln-stale";

/// UNAVAILABLE, naming the leader in the message and in metadata, so clients go there at once.
pub(crate) fn not_leader_status(not_leader: &NotLeader) -> Status {
    let mut status = Status::unavailable(not_leader.to_string());
    if not_leader.leader_id != 0 {
        if let Ok(value) = not_leader.leader_id.to_string().parse() {
            status.metadata_mut().insert(LEADER_ID_HEADER, value);
        }
        if let Ok(value) = not_leader.leader_url.parse() {
            if !not_leader.leader_url.is_empty() {
                status.metadata_mut().insert(LEADER_URL_HEADER, value);
            }
        }
    }
    status
}

/// Refuses requests meant for another cluster. Installed on every client-facing service.
pub fn cluster_interceptor(
    cluster_id: u64,
) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    let ours = cluster_id_text(cluster_id);
    move |request: Request<()>| {
        if let Some(theirs) = request.metadata().get(CLUSTER_ID_HEADER) {
            let theirs = theirs.to_str().unwrap_or("");
            if theirs != ours {
                return Err(Status::failed_precondition(format!(
                    "this coordinator belongs to cluster {ours}, not {theirs}; check --coordinator"
                )));
            }
        }
        Ok(request)
    }
}

fn wants_stale<T>(request: &Request<T>) -> bool {
    request
        .metadata()
        .get(STALE_HEADER)
        .is_some_and(|v| matches!(v.to_str(), Ok("1") | Ok("true")))
}

fn find_run(raft: &RaftHandle, run_id: &str) -> Result<Run, Status> {
    raft.read(|state| state.run(run_id).cloned())
        .ok_or_else(|| {
            Status::not_found(format!(
                "run {run_id} does not exist (see `kiln runs list`)"
            ))
        })
}

impl Api {
    /// Only the leader (that has applied its term's first entry) may act.
    fn leader_only(&self) -> Result<(), Status> {
        self.raft
            .require_leader()
            .map_err(|not_leader| not_leader_status(&not_leader))
    }

    /// Waits until this member is no longer the ready leader, and says so as clients expect.
    async fn leadership_lost(&self) -> Status {
        let mut status = self.raft.status_watch();
        loop {
            if let Err(not_leader) = self.raft.require_leader() {
                return not_leader_status(&not_leader);
            }
            if status.changed().await.is_err() {
                return Status::unavailable("the coordinator is shutting down");
            }
        }
    }

    /// Before a read: on the leader, confirm leadership with a quorum (ReadIndex) and wait
    /// until that is applied, so the read is linearizable; with `kiln-stale`, any member
    /// answers from what it has.
    async fn read_barrier<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if wants_stale(request) {
            return Ok(());
        }
        self.leader_only()?;
        self.raft.linearizable().await.map_err(propose_status)
    }
}

#[tonic::async_trait]
impl Control for Api {
    async fn get_info(
        &self,
        _: Request<GetInfoRequest>,
    ) -> Result<Response<GetInfoResponse>, Status> {
        let status = self.raft.status();
        Ok(Response::new(GetInfoResponse {
            registry: self.registry.host().to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            agents: self.agents.infos(),
            cluster_id: cluster_id_text(self.raft.cluster_id),
            node_id: self.raft.node_id,
            leader_id: status.leader_id,
        }))
    }

    async fn submit_run(
        &self,
        request: Request<SubmitRunRequest>,
    ) -> Result<Response<SubmitRunResponse>, Status> {
        self.leader_only()?;
        let SubmitRunRequest {
            request,
            request_id,
        } = request.into_inner();
        let mut run_request =
            request.ok_or_else(|| Status::invalid_argument("the request has no run"))?;
        if run_request.registry.is_empty() {
            run_request.registry = self.registry.host().to_string();
        }
        // Contexts and logs always live in the farm's registry, whatever the run pushes to.
        run_request.storage_registry = self.registry.host().to_string();
        let platform = PlatformSpec::from_pb(run_request.platform.as_ref())
            .map_err(Status::invalid_argument)?;
        run_request.platform = Some(platform.to_pb());
        let result = self
            .raft
            .propose(command::Kind::SubmitRun(SubmitRun {
                request: Some(run_request),
                request_id,
            }))
            .await
            .map_err(|error| match error {
                ProposeError::Rejected(message) | ProposeError::Stale(message) => {
                    Status::invalid_argument(message)
                }
                other => propose_status(other),
            })?;
        tracing::info!(run_id = %result.run_id, "queued run");
        Ok(Response::new(SubmitRunResponse {
            run_id: result.run_id,
        }))
    }

    async fn get_run(
        &self,
        request: Request<GetRunRequest>,
    ) -> Result<Response<GetRunResponse>, Status> {
        self.read_barrier(&request).await?;
        let run = find_run(&self.raft, &request.into_inner().run_id)?;
        let queued_reason = if run.status() == RunStatus::Queued {
            let views = self.raft.read(|state| {
                self.agents.views(|agent_id| {
                    state
                        .running_runs()
                        .filter(|r| r.agent_id == agent_id)
                        .count() as u32
                })
            });
            scheduler::queued_reason(&run, &views)
        } else {
            String::new()
        };
        Ok(Response::new(GetRunResponse {
            run: Some(run),
            queued_reason,
        }))
    }

    async fn list_runs(
        &self,
        request: Request<ListRunsRequest>,
    ) -> Result<Response<ListRunsResponse>, Status> {
        self.read_barrier(&request).await?;
        let limit = match request.into_inner().limit {
            0 => 20,
            n => (n as usize).min(MAX_LIST),
        };
        let runs = self
            .raft
            .read(|state| state.runs().rev().take(limit).cloned().collect());
        Ok(Response::new(ListRunsResponse { runs }))
    }

    async fn cancel_run(
        &self,
        request: Request<CancelRunRequest>,
    ) -> Result<Response<CancelRunResponse>, Status> {
        self.leader_only()?;
        let run_id = request.into_inner().run_id;
        find_run(&self.raft, &run_id)?;
        self.raft
            .propose(command::Kind::RequestCancel(RequestCancel {
                run_id: run_id.clone(),
            }))
            .await
            .map_err(propose_status)?;
        let run = find_run(&self.raft, &run_id)?;
        Ok(Response::new(CancelRunResponse { status: run.status }))
    }

    async fn drain_agent(
        &self,
        request: Request<DrainAgentRequest>,
    ) -> Result<Response<DrainAgentResponse>, Status> {
        self.leader_only()?;
        let DrainAgentRequest { agent_id, drain } = request.into_inner();
        let state = self.agents.set_draining(&agent_id, drain).ok_or_else(|| {
            Status::not_found(format!(
                "agent {agent_id} is not known to this coordinator (see `kiln agents`)"
            ))
        })?;
        tracing::info!(%agent_id, drain, state, "agent drain changed");
        Ok(Response::new(DrainAgentResponse {
            state: state.to_string(),
        }))
    }

    type StreamLogsStream = ChunkStream;

    async fn stream_logs(
        &self,
        request: Request<StreamLogsRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        // Live output reaches the leader only.
        self.leader_only()?;
        self.raft.linearizable().await.map_err(propose_status)?;
        let StreamLogsRequest { run_id, follow } = request.into_inner();
        find_run(&self.raft, &run_id)?;
        let (tx, rx) = mpsc::channel(LOG_STREAM_BUFFER);
        let api = self.clone();
        self.tasks.spawn(async move {
            // A member that stops leading gets no more live output (the agents go to the new
            // leader): it ends the stream with the not-leader answer, and the client
            // re-attaches there.
            let result = tokio::select! {
                sent = api.send_logs(&run_id, follow, &tx) => sent,
                not_leader = api.leadership_lost() => Err(not_leader),
            };
            if let Err(status) = result {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

type LogSender = mpsc::Sender<Result<LogChunk, Status>>;

impl Api {
    /// Sends a run's log, and with `follow` the live output until the run ends. A coordinator
    /// that has watched the run from its start sends its live buffer. Any other (a new leader,
    /// a restarted one, one whose buffer dropped output) sends what is stored of every step,
    /// running ones too, then its buffer and the live output; a [`Cursor`] cuts the overlap,
    /// so each byte of a step goes out once, with its offset in the step's log.
    async fn send_logs(&self, run_id: &str, follow: bool, tx: &LogSender) -> Result<(), Status> {
        let mut applied = self.raft.applied();
        let mut cursor = Cursor::default();
        loop {
            // Subscribe before reading the state, so that nothing falls between the two.
            let subscription = self.logs.subscribe(run_id);
            let run = find_run(&self.raft, run_id)?;
            if run.status() == RunStatus::Queued {
                if !follow {
                    return Ok(());
                }
                applied
                    .changed()
                    .await
                    .map_err(|_| Status::unavailable("the coordinator is shutting down"))?;
                continue;
            }
            let finished = is_terminal(run.status());
            if finished || !subscription.complete {
                self.send_stored(&run, finished, &mut cursor, tx).await?;
            }
            if finished {
                self.logs.close(run_id);
                return Ok(());
            }
            // The live buffer: whole if it is complete; else the notices and the steps still
            // running (the ended ones were just sent from storage; the cursor cuts what the
            // running ones stored).
            let running_steps: Vec<String> = run
                .steps
                .iter()
                .filter(|s| !is_step_terminal(s.status()))
                .map(|s| s.id.clone())
                .collect();
            let wanted = |chunk: &LogChunk| {
                subscription.complete
                    || chunk.step_id.is_empty()
                    || running_steps.contains(&chunk.step_id)
            };
            for chunk in subscription.buffered.into_iter().filter(|c| wanted(c)) {
                send_new(tx, &mut cursor, chunk).await?;
            }
            if !follow {
                return Ok(());
            }
            let mut live = subscription.live;
            loop {
                match live.recv().await {
                    Ok(chunk) => send_new(tx, &mut cursor, chunk).await?,
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        let notice = format!(
                            "\n[kiln] this client fell behind and missed {missed} log chunks; `kiln logs {run_id}` shows the complete log once the run ends\n"
                        );
                        send(tx, notice_chunk(run_id, "", notice)).await?;
                    }
                }
            }
        }
    }

    /// Sends what is stored of each step that has a stored log (all of it once the step
    /// ended, the segments so far while it runs), after what `cursor` says was sent; a notice
    /// for an ended step whose log was not stored; and, for a run that ended other than
    /// Succeeded, why.
    async fn send_stored(
        &self,
        run: &Run,
        finished: bool,
        cursor: &mut Cursor,
        tx: &LogSender,
    ) -> Result<(), Status> {
        for step in &run.steps {
            if stored_logs::has_stored_log(step) {
                stored_logs::send_step_log(&self.registry, &run.id, step, cursor, tx).await?;
            } else if is_step_terminal(step.status()) && step.started_at_ms > 0 {
                let notice = format!(
                    "[kiln] the log of step {} was not stored{}\n",
                    step.id,
                    reason_suffix(&step.reason)
                );
                send(tx, notice_chunk(&run.id, &step.id, notice)).await?;
            }
        }
        if finished && !run.reason.is_empty() && run.status() != RunStatus::Succeeded {
            let summary = format!(
                "[kiln] run {} ended {}: {}\n",
                run.id,
                kiln_state::machine::status_name(run.status()),
                run.reason
            );
            send(tx, notice_chunk(&run.id, "", summary)).await?;
        }
        Ok(())
    }
}

/// A line the coordinator writes into a run's log (not part of any step's output).
fn notice_chunk(run_id: &str, step_id: &str, text: String) -> LogChunk {
    LogChunk {
        run_id: run_id.to_string(),
        step_id: step_id.to_string(),
        data: text.into_bytes(),
        offset: None,
    }
}

/// Sends the part of `chunk` this stream has not sent yet.
async fn send_new(tx: &LogSender, cursor: &mut Cursor, chunk: LogChunk) -> Result<(), Status> {
    match cursor.admit(chunk) {
        Some(chunk) => send(tx, chunk).await,
        None => Ok(()),
    }
}

fn reason_suffix(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(" ({reason})")
    }
}

async fn send(tx: &LogSender, chunk: LogChunk) -> Result<(), Status> {
    // The client went away: stop quietly.
    tx.send(Ok(chunk))
        .await
        .map_err(|_| Status::cancelled("the client disconnected"))
}

#[tonic::async_trait]
impl AgentService for Api {
    type SessionStream = CoordinatorStream;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<CoordinatorStream>, Status> {
        self.leader_only()?;
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.ok_or_else(|| {
            Status::invalid_argument("the agent closed the session before saying Hello")
        })?;
        let Some(agent_message::Msg::Hello(hello)) = first.msg else {
            return Err(Status::invalid_argument(
                "an agent's first message must be Hello",
            ));
        };
        let hello = check_hello(hello)?;
        let (tx, rx) = mpsc::channel(AGENT_OUTBOX);
        // Welcome goes first, before anything the control loop may queue.
        let welcome = CoordinatorMessage {
            msg: Some(coordinator_message::Msg::Welcome(Welcome {
                protocol_version: kiln_proto::PROTOCOL_VERSION,
                heartbeat_interval_ms: self.liveness.heartbeat_interval.as_millis() as u64,
                lost_after_ms: self.agents.lost_after.as_millis() as u64,
                coordinator_version: env!("CARGO_PKG_VERSION").to_string(),
                cluster_id: cluster_id_text(self.raft.cluster_id),
            })),
        };
        tx.try_send(welcome)
            .map_err(|_| Status::internal("cannot queue the welcome"))?;
        // Acknowledgements go to this connection's own outbox, waiting for room in it; weak, so
        // that the stream still ends when the agent registry drops the connection.
        let outbox = tx.downgrade();
        let agent_id = hello.agent_id.clone();
        let description = format!(
            "capacity {}, pool '{}', platforms {}",
            hello.capacity,
            hello.pool,
            hello
                .platforms
                .iter()
                .map(|(p, e)| format!("{p}{}", if *e { " (emulated)" } else { "" }))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let leases = hello.leases.clone();
        let connection = self.agents.connect(hello, tx, now_ms()).map_err(|error| {
            tracing::warn!(%agent_id, %error, "agent refused");
            Status::already_exists(error.to_string())
        })?;
        tracing::info!(%agent_id, connection, %description, runs = leases.len(), "agent connected");
        self.stop_stale_leases(&agent_id, leases.iter().map(|(r, e)| (r.as_str(), *e)));
        let api = self.clone();
        self.tasks.spawn(async move {
            // The agent's reports, proposed in the order they arrived and answered in that
            // order as their commands commit (oldest first).
            let mut proposed = FuturesOrdered::new();
            let mut outbox = Some(outbox);
            loop {
                tokio::select! {
                    biased;
                    Some((report, result)) = proposed.next(), if !proposed.is_empty() => {
                        match api.answer_report(&agent_id, outbox.as_ref(), report, result).await {
                            Answered::Yes => {}
                            Answered::Unknown => break,
                            Answered::OutboxStuck => {
                                outbox = None;
                                break;
                            }
                        }
                    }
                    message = inbound.message(), if proposed.len() < REPORTS_IN_FLIGHT => match message {
                        Ok(Some(message)) => {
                            if !api.agents.is_current(&agent_id, connection) {
                                tracing::info!(%agent_id, connection, "ignoring a replaced or lost connection");
                                break;
                            }
                            api.agents.touch(&agent_id, connection);
                            match api.handle_message(&agent_id, connection, message) {
                                Handled::Done => {}
                                Handled::Proposed(report) => proposed.push_back(report),
                                // Nothing after it may be proposed, or it would be applied
                                // out of order: the agent sends it again on a new session.
                                Handled::NotProposed => break,
                            }
                        }
                        Ok(None) => break,
                        Err(status) => {
                            tracing::info!(%agent_id, %status, "agent stream failed");
                            break;
                        }
                    },
                }
            }
            // What was proposed is answered (committed, refused or timed out) before the agent
            // counts as gone, as a report being handled was before.
            while let Some((report, result)) = proposed.next().await {
                if api.answer_report(&agent_id, outbox.as_ref(), report, result).await
                    == Answered::OutboxStuck
                {
                    outbox = None;
                }
            }
            tracing::info!(%agent_id, connection, "agent disconnected");
            api.agents.disconnect(&agent_id, connection);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map_ok())))
    }
}

/// Checks a Hello and turns it into what the coordinator keeps. Platforms this coordinator
/// does not know (an agent with every QEMU handler registered offers riscv64, s390x, …) are
/// ignored with a warning rather than refusing the agent.
fn check_hello(hello: Hello) -> Result<AgentHello, Status> {
    if hello.agent_id.is_empty() {
        return Err(Status::invalid_argument(
            "the agent has no id (pass --agent-id)",
        ));
    }
    if hello.agent_id.len() > MAX_AGENT_ID_BYTES {
        return Err(Status::invalid_argument(format!(
            "agent id is {} bytes long; at most {MAX_AGENT_ID_BYTES} are allowed",
            hello.agent_id.len()
        )));
    }
    if hello.protocol_version < kiln_proto::MIN_PROTOCOL_VERSION {
        return Err(Status::failed_precondition(format!(
            "agent {} speaks protocol {} (kiln-agent {}); this coordinator needs protocol {} or newer: upgrade the agent",
            hello.agent_id,
            hello.protocol_version,
            if hello.version.is_empty() { "unknown" } else { &hello.version },
            kiln_proto::MIN_PROTOCOL_VERSION
        )));
    }
    let mut platforms = Vec::new();
    for offered in hello.platforms.iter().take(MAX_AGENT_PLATFORMS) {
        match PlatformSpec::from_pb(offered.platform.as_ref()) {
            Ok(platform) => platforms.push((platform, offered.emulated)),
            Err(error) => {
                tracing::warn!(agent_id = %hello.agent_id, %error, "ignoring a platform the coordinator does not know")
            }
        }
    }
    if platforms.is_empty() {
        return Err(Status::invalid_argument(format!(
            "agent {} offers no platform this coordinator knows",
            hello.agent_id
        )));
    }
    if hello.pool.len() > MAX_NAME_BYTES || hello.labels.len() > MAX_AGENT_LABELS {
        return Err(Status::invalid_argument(format!(
            "agent {}: the pool name is at most {MAX_NAME_BYTES} bytes and at most {MAX_AGENT_LABELS} labels are allowed",
            hello.agent_id
        )));
    }
    let mut leases: BTreeMap<String, u64> = hello
        .leases
        .iter()
        .take(MAX_AGENT_CAPACITY as usize)
        .map(|l| (l.run_id.clone(), l.epoch))
        .collect();
    for run_id in hello.active_runs.iter().take(MAX_AGENT_CAPACITY as usize) {
        leases.entry(run_id.clone()).or_insert(0);
    }
    Ok(AgentHello {
        agent_id: hello.agent_id,
        platforms,
        capacity: hello.capacity.clamp(1, MAX_AGENT_CAPACITY),
        pool: hello.pool,
        labels: hello.labels,
        draining: hello.draining,
        version: hello.version,
        protocol_version: hello.protocol_version,
        leases,
    })
}

impl Api {
    /// Tells the agent to stop each of `runs` that it does not hold the current lease of (the
    /// run ended, or went to another agent). Repeated at most every few seconds per run.
    fn stop_stale_leases<'a>(
        &self,
        agent_id: &str,
        runs: impl IntoIterator<Item = (&'a str, u64)>,
    ) {
        for (run_id, epoch) in runs {
            let now = now_ms();
            let verdict = self.raft.read(|state| match state.run(run_id) {
                None => Some(format!("run {run_id} does not exist on this farm")),
                // Just finished by the agent itself: its finish acknowledgement may still be
                // on the way, and the runner is winding down anyway.
                Some(run)
                    if is_terminal(run.status())
                        && run.agent_id == agent_id
                        && now.saturating_sub(run.finished_at_ms)
                            < STOP_REPEAT.as_millis() as u64 * 2 =>
                {
                    None
                }
                Some(run) if is_terminal(run.status()) => Some(format!(
                    "run {run_id} already ended {}",
                    kiln_state::machine::status_name(run.status())
                )),
                Some(run) if run.agent_id != agent_id => {
                    Some(format!("run {run_id} is no longer assigned to this agent"))
                }
                Some(run) if epoch != 0 && run.lease_epoch != epoch => Some(format!(
                    "run {run_id} was assigned again (epoch {} replaced {epoch})",
                    run.lease_epoch
                )),
                Some(_) => None,
            });
            if let Some(reason) = verdict {
                self.send_stop(agent_id, run_id, epoch, reason);
            }
        }
    }

    fn send_stop(&self, agent_id: &str, run_id: &str, epoch: u64, reason: String) {
        if !self.agents.stop_due(agent_id, run_id, STOP_REPEAT) {
            return;
        }
        tracing::info!(agent_id, run_id, epoch, %reason, "telling the agent to stop a run");
        self.agents.send(
            agent_id,
            CoordinatorMessage {
                msg: Some(coordinator_message::Msg::Stop(StopRun {
                    run_id: run_id.to_string(),
                    epoch,
                    reason,
                })),
            },
        );
    }

    /// Handles one message of an agent's stream. A report is proposed at once (before the
    /// next message is read, so an agent's reports enter the log in the order it sent them and
    /// a step's end is applied before the run's end); the returned future resolves when its
    /// command is committed or finally rejected, and [`Api::answer_report`] acknowledges it.
    fn handle_message(
        &self,
        agent_id: &str,
        connection: u64,
        message: AgentMessage,
    ) -> Handled<impl std::future::Future<Output = (ProposedReport, ProposeResult)> + Send + 'static>
    {
        let report_id = message.report_id;
        let (run_id, epoch, proposal) = match message.msg {
            None | Some(agent_message::Msg::Hello(_)) => return Handled::Done,
            Some(agent_message::Msg::Heartbeat(beat)) => {
                self.agents.heartbeat(agent_id, connection, &beat);
                self.stop_stale_leases(
                    agent_id,
                    beat.active.iter().map(|a| (a.run_id.as_str(), a.epoch)),
                );
                return Handled::Done;
            }
            Some(agent_message::Msg::Log(chunk)) => {
                let active = self.raft.read(|state| {
                    state
                        .run(&chunk.run_id)
                        .is_some_and(|r| r.agent_id == agent_id && !is_terminal(r.status()))
                });
                if active {
                    self.logs.append(chunk);
                }
                return Handled::Done;
            }
            Some(agent_message::Msg::AssignmentAck(ack)) => (
                ack.run_id.clone(),
                ack.epoch,
                command::Kind::AcknowledgeRun(AcknowledgeRun {
                    run_id: ack.run_id,
                    lease: Some(lease(agent_id, ack.epoch)),
                }),
            ),
            Some(agent_message::Msg::RunPlanned(planned)) => (
                planned.run_id.clone(),
                planned.epoch,
                command::Kind::PlanRun(PlanRun {
                    run_id: planned.run_id,
                    step_ids: planned.step_ids,
                    lease: Some(lease(agent_id, planned.epoch)),
                }),
            ),
            Some(agent_message::Msg::StepUpdate(update)) => (
                update.run_id.clone(),
                update.epoch,
                command::Kind::UpdateStep(UpdateStep {
                    run_id: update.run_id,
                    step_id: update.step_id,
                    status: update.status,
                    has_exit_code: update.has_exit_code,
                    exit_code: update.exit_code,
                    reason: update.reason,
                    log_digest: update.log_digest,
                    log_size: update.log_size,
                    lease: Some(lease(agent_id, update.epoch)),
                }),
            ),
            Some(agent_message::Msg::ImagePushed(pushed)) => (
                pushed.run_id.clone(),
                pushed.epoch,
                command::Kind::RecordImage(RecordImage {
                    run_id: pushed.run_id,
                    image: Some(PushedImage {
                        step_id: pushed.step_id,
                        image: pushed.image,
                        digest: pushed.digest,
                    }),
                    lease: Some(lease(agent_id, pushed.epoch)),
                }),
            ),
            Some(agent_message::Msg::LogStored(stored)) => (
                stored.run_id.clone(),
                stored.epoch,
                command::Kind::RecordLog(RecordLog {
                    run_id: stored.run_id,
                    step_id: stored.step_id,
                    segment: Some(LogSegment {
                        index: stored.index,
                        digest: stored.digest,
                        size: stored.size,
                    }),
                    lease: Some(lease(agent_id, stored.epoch)),
                }),
            ),
            Some(agent_message::Msg::RunFinished(finished)) => (
                finished.run_id.clone(),
                finished.epoch,
                command::Kind::FinishRun(FinishRun {
                    run_id: finished.run_id,
                    status: finished.status,
                    reason: finished.reason,
                    agent_id: agent_id.to_string(),
                    lease: Some(lease(agent_id, finished.epoch)),
                }),
            ),
        };
        let report = ProposedReport {
            report_id,
            finishes: matches!(proposal, command::Kind::FinishRun(_)),
            run_id,
            epoch,
        };
        match self.raft.propose_enqueued(proposal) {
            Ok(committed) => Handled::Proposed(async move { (report, committed.await) }),
            Err(error) => {
                tracing::warn!(agent_id, run_id = %report.run_id, %error, "could not propose an agent report; ending the session");
                Handled::NotProposed
            }
        }
    }

    /// Answers a report once its proposal's outcome is known: the acknowledgement (after the
    /// commit, or with the refusal), or nothing when the outcome is unknown (the agent sends it
    /// again, on a new session: the session ends, as the reports proposed after it may already
    /// be applied).
    async fn answer_report(
        &self,
        agent_id: &str,
        outbox: Option<&mpsc::WeakSender<CoordinatorMessage>>,
        report: ProposedReport,
        result: ProposeResult,
    ) -> Answered {
        let ProposedReport {
            report_id,
            finishes,
            run_id,
            epoch,
        } = report;
        let run_id = run_id.as_str();
        let ack = match result {
            Ok(_) => Some(ReportAck {
                report_id,
                ..ReportAck::default()
            }),
            Err(ProposeError::Stale(message)) => {
                tracing::info!(agent_id, run_id, epoch, %message, "stale report rejected");
                self.send_stop(agent_id, run_id, epoch, message.clone());
                Some(ReportAck {
                    report_id,
                    error: message,
                    stale: true,
                })
            }
            // A report the state machine refuses (a repeat that conflicts, a bad value) will be
            // refused again: acknowledge it so the agent stops resending it.
            Err(ProposeError::Rejected(message)) => {
                tracing::warn!(agent_id, run_id, epoch, %message, "agent report rejected");
                Some(ReportAck {
                    report_id,
                    error: message,
                    stale: false,
                })
            }
            // Not committed, not refused: no acknowledgement, so the agent sends it again.
            Err(error) => {
                tracing::warn!(agent_id, run_id, %error, "could not record agent report");
                None
            }
        };
        let Some(ack) = ack else {
            return Answered::Unknown;
        };
        if finishes {
            self.agents.mark_finished(agent_id, run_id);
        }
        if report_id == 0 {
            return Answered::Yes;
        }
        // The connection is gone (the registry dropped its outbox, or it stayed full): nobody
        // to tell.
        let Some(outbox) = outbox.and_then(mpsc::WeakSender::upgrade) else {
            return Answered::Yes;
        };
        let message = CoordinatorMessage {
            msg: Some(coordinator_message::Msg::ReportAck(ack)),
        };
        // Many acknowledgements can become due at once (their commands commit together):
        // wait for room rather than overflow the bounded outbox.
        let room = tokio::time::timeout(ACK_ROOM_TIMEOUT, outbox.reserve()).await;
        match room {
            Ok(Ok(permit)) => {
                permit.send(message);
                Answered::Yes
            }
            Ok(Err(_)) => Answered::Yes,
            Err(_) => {
                tracing::warn!(
                    agent_id,
                    "agent outbox full for {ACK_ROOM_TIMEOUT:?}; dropping the connection"
                );
                Answered::OutboxStuck
            }
        }
    }
}

type ProposeResult = Result<ApplyResult, ProposeError>;

/// What one message of an agent's stream came to.
enum Handled<F> {
    /// Handled at once (a heartbeat, a log chunk).
    Done,
    /// A report, proposed: the future resolves with its outcome.
    Proposed(F),
    /// A report that could not be proposed (the Raft inbox is full, the node stops).
    NotProposed,
}

/// How [`Api::answer_report`] answered.
#[derive(Debug, PartialEq, Eq)]
enum Answered {
    /// Acknowledged, or nobody left to tell.
    Yes,
    /// The outcome is unknown: no acknowledgement.
    Unknown,
    /// The agent's outbox stayed full: no acknowledgement will get through.
    OutboxStuck,
}

/// A report proposed to Raft and waiting for its outcome.
struct ProposedReport {
    report_id: u64,
    finishes: bool,
    run_id: String,
    epoch: u64,
}

fn lease(agent_id: &str, epoch: u64) -> Lease {
    Lease {
        agent_id: agent_id.to_string(),
        epoch,
    }
}

type OkStream<S> =
    futures::stream::Map<S, fn(<S as Stream>::Item) -> Result<<S as Stream>::Item, Status>>;

/// Wraps stream items in `Ok` for tonic.
trait MapOk: Stream + Sized {
    fn map_ok(self) -> OkStream<Self> {
        futures::StreamExt::map(self, Ok)
    }
}

impl<S: Stream> MapOk for S {}

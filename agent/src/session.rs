//! The agent's session with the coordinator (the only file that knows tonic).
//!
//! One long-lived bidirectional `AgentService.Session` stream. The agent says `Hello` (with the
//! runs it executes and their leases), the coordinator answers `Welcome`; then:
//!
//! * **Assignments** are acknowledged at once and executed under their lease epoch; the
//!   session stamps that epoch on every report of the run (runners know nothing of leases).
//! * **Reports** are durable: each is written to the [`Spool`] before it is sent and removed
//!   when the coordinator's `ReportAck` says it is committed (or finally rejected). After a
//!   reconnect, or an agent restart, whatever is spooled is sent again, in order. A runner that
//!   needs to know its report is committed (a step about to start) waits for that ack.
//! * **Liveness**: heartbeats both ways every interval the coordinator asks for; a session
//!   from which nothing arrived for the coordinator's lost-agent limit is dropped and
//!   reopened, as is one whose stream fails (capped exponential backoff).
//! * **Stop**: the coordinator says which runs the agent must stop (they ended, or went to
//!   another agent); a stale `ReportAck` means the same. Their containers, networks and
//!   volumes are removed by the runner's cancel path.
//! * **Drain**: `kiln agents drain` or SIGTERM: no new runs are taken; on SIGTERM the agent
//!   waits for its runs up to the drain timeout, then cancels them, flushes its spool and exits.
//!
//! Everything happens in one loop over a closed `Event` enum. Reports are taken from the
//! runners only when the outbox is empty, the spool has room and the outbound gRPC channel has
//! room, which gives backpressure without blocking the handling of incoming messages.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use kiln_proto::v1::agent_service_client::AgentServiceClient;
use kiln_proto::v1::{
    agent_message, coordinator_message, ActiveRun, AgentMessage, AgentPlatform, Assignment,
    AssignmentAck, CoordinatorMessage, Heartbeat, Hello, ReportAck,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::blobs::BlobStore;
use crate::config::AgentConfig;
use crate::executor::ContainerRuntime;
use crate::reports::{CommitResult, Envelope, Report, ReportError, ReportReceiver};
use crate::runner::{self, RunnerEnv};
use crate::spool::Spool;

/// Messages buffered between the session loop and the gRPC stream.
const OUTBOUND_BUFFER: usize = 64;
/// How long the agent waits for a TCP/HTTP2 connection to the coordinator.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long opening a session (connection and Hello/answer) may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 keepalive, so a coordinator that vanished without closing the stream is noticed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// After shutdown, how long spooled reports may take to reach the coordinator.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);
/// An unacknowledged report is sent again after this long on the same connection.
const RESEND_AFTER: Duration = Duration::from_secs(10);
/// Until the coordinator's Welcome says otherwise.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
const DEFAULT_SILENCE_LIMIT: Duration = Duration::from_secs(5);
/// Finished runs remembered, so a repeated assignment of one is not executed again.
const RECENT_MAX: usize = 1024;

type Connected = (
    mpsc::Sender<AgentMessage>,
    tonic::codec::Streaming<CoordinatorMessage>,
);

enum Connection {
    /// Waiting until `retry_at` before the next attempt.
    Down {
        retry_at: Instant,
    },
    Connecting(BoxFuture<'static, Result<Connected, String>>),
    Up {
        tx: mpsc::Sender<AgentMessage>,
        inbound: Box<tonic::codec::Streaming<CoordinatorMessage>>,
        last_heard: Instant,
    },
}

/// Everything the session loop reacts to.
enum Event {
    Connected(Result<Connected, String>),
    RetryDue,
    /// Boxed: an assignment carries a whole run request.
    Inbound(Result<Option<Box<CoordinatorMessage>>, tonic::Status>),
    SendSlot(Result<mpsc::OwnedPermit<AgentMessage>, mpsc::error::SendError<()>>),
    Report(Option<Envelope>),
    RunEnded(Option<Result<(tokio::task::Id, String), tokio::task::JoinError>>),
    Tick,
    Shutdown,
    StopNow,
    DrainExpired,
}

/// A run this agent executes.
struct ActiveRunState {
    epoch: u64,
    cancel: CancellationToken,
}

struct Session<R: ContainerRuntime, B: BlobStore> {
    config: AgentConfig,
    platforms: Vec<AgentPlatform>,
    env: Arc<RunnerEnv<R, B>>,
    spool: Spool,
    active: HashMap<String, ActiveRunState>,
    /// Lease epochs of runs whose finish has not been stamped yet.
    epochs: HashMap<String, u64>,
    /// Why the session canceled a run, until its finish is stamped (it replaces the runner's
    /// plain "run canceled").
    cancel_reasons: HashMap<String, String>,
    /// An assignment of a run that is still winding down under an older lease.
    pending: HashMap<String, Assignment>,
    recent: VecDeque<(String, u64)>,
    runs: JoinSet<String>,
    task_runs: HashMap<tokio::task::Id, String>,
    waiters: HashMap<u64, oneshot::Sender<CommitResult>>,
    outbox: VecDeque<AgentMessage>,
    heartbeat_every: Duration,
    silence_limit: Duration,
    heartbeat_seq: u64,
    /// Operator's drain (from the coordinator) or our own shutdown.
    drained_by_coordinator: bool,
    shutting_down: bool,
}

/// Runs the session until shutdown. On `shutdown` the agent drains: it takes no new runs and
/// waits for its runs up to the configured drain timeout, then cancels them; `config.stop_now`
/// cancels them at once.
pub async fn run<R: ContainerRuntime, B: BlobStore>(
    config: AgentConfig,
    platforms: Vec<AgentPlatform>,
    env: Arc<RunnerEnv<R, B>>,
    mut reports_rx: ReportReceiver,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let spool = Spool::open(&config.work_dir.join("spool"))?;
    if !spool.is_empty() {
        tracing::info!(
            reports = spool.len(),
            "found reports a previous process did not get acknowledged; they will be sent"
        );
    }
    let stop_now = config.stop_now.clone();
    let mut session = Session {
        platforms,
        env,
        spool,
        active: HashMap::new(),
        epochs: HashMap::new(),
        cancel_reasons: HashMap::new(),
        pending: HashMap::new(),
        recent: VecDeque::new(),
        runs: JoinSet::new(),
        task_runs: HashMap::new(),
        waiters: HashMap::new(),
        outbox: VecDeque::new(),
        heartbeat_every: DEFAULT_HEARTBEAT,
        silence_limit: DEFAULT_SILENCE_LIMIT,
        heartbeat_seq: 0,
        drained_by_coordinator: false,
        shutting_down: false,
        config,
    };
    let mut backoff = session.config.reconnect_initial;
    let mut conn = Connection::Down {
        retry_at: Instant::now(),
    };
    let mut flush_deadline: Option<Instant> = None;
    let mut drain_deadline: Option<Instant> = None;
    let mut ticker = tokio::time::interval(DEFAULT_HEARTBEAT);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        if session.shutting_down && session.runs.is_empty() {
            let drained = reports_rx.is_empty() && session.spool.is_empty();
            let deadline = *flush_deadline.get_or_insert_with(|| Instant::now() + SHUTDOWN_FLUSH);
            if drained || Instant::now() >= deadline {
                if !drained {
                    tracing::warn!(
                        spooled = session.spool.len(),
                        "stopping with unacknowledged reports; the next start sends them"
                    );
                }
                break;
            }
        }
        let take_reports = session.outbox.is_empty() && !session.spool.is_full();
        let shutting_down = session.shutting_down;
        let event = match &mut conn {
            Connection::Down { retry_at } => {
                let retry_at = *retry_at;
                tokio::select! {
                    _ = tokio::time::sleep_until(retry_at) => Event::RetryDue,
                    report = reports_rx.recv_envelope(), if take_reports => Event::Report(report),
                    ended = session.runs.join_next_with_id(), if !session.runs.is_empty() => Event::RunEnded(ended),
                    _ = ticker.tick() => Event::Tick,
                    _ = shutdown.cancelled(), if !shutting_down => Event::Shutdown,
                    _ = stop_now.cancelled(), if !session.active.is_empty() => Event::StopNow,
                    _ = sleep_until_opt(drain_deadline) => Event::DrainExpired,
                }
            }
            Connection::Connecting(fut) => {
                tokio::select! {
                    result = fut => Event::Connected(result),
                    report = reports_rx.recv_envelope(), if take_reports => Event::Report(report),
                    ended = session.runs.join_next_with_id(), if !session.runs.is_empty() => Event::RunEnded(ended),
                    _ = ticker.tick() => Event::Tick,
                    _ = shutdown.cancelled(), if !shutting_down => Event::Shutdown,
                    _ = stop_now.cancelled(), if !session.active.is_empty() => Event::StopNow,
                    _ = sleep_until_opt(drain_deadline) => Event::DrainExpired,
                }
            }
            Connection::Up { tx, inbound, .. } => {
                let has_outgoing = !session.outbox.is_empty();
                let tx = tx.clone();
                tokio::select! {
                    msg = inbound.message() => Event::Inbound(msg.map(|m| m.map(Box::new))),
                    slot = tx.reserve_owned(), if has_outgoing => Event::SendSlot(slot),
                    report = reports_rx.recv_envelope(), if take_reports => Event::Report(report),
                    ended = session.runs.join_next_with_id(), if !session.runs.is_empty() => Event::RunEnded(ended),
                    _ = ticker.tick() => Event::Tick,
                    _ = shutdown.cancelled(), if !shutting_down => Event::Shutdown,
                    _ = stop_now.cancelled(), if !session.active.is_empty() => Event::StopNow,
                    _ = sleep_until_opt(drain_deadline) => Event::DrainExpired,
                }
            }
        };

        match event {
            Event::RetryDue => {
                if let Connection::Down { .. } = conn {
                    tracing::debug!(coordinator = %session.config.coordinator, "connecting");
                    let hello = session.hello();
                    let endpoint = session.config.coordinator.clone();
                    conn = Connection::Connecting(
                        async move {
                            tokio::time::timeout(HANDSHAKE_TIMEOUT, connect(endpoint, hello))
                                .await
                                .unwrap_or_else(|_| {
                                    Err(format!(
                                        "the coordinator did not answer within {HANDSHAKE_TIMEOUT:?}"
                                    ))
                                })
                        }
                        .boxed(),
                    );
                }
            }
            Event::Connected(Ok((tx, inbound))) => {
                tracing::info!(coordinator = %session.config.coordinator, "session established");
                backoff = session.config.reconnect_initial;
                session.outbox.clear();
                session.spool.reset_sent();
                session.outbox.extend(session.spool.due(RESEND_AFTER));
                conn = Connection::Up {
                    tx,
                    inbound: Box::new(inbound),
                    last_heard: Instant::now(),
                };
            }
            Event::Connected(Err(error)) => {
                tracing::warn!(coordinator = %session.config.coordinator, %error, "cannot open session");
                conn = down_after(&mut backoff, session.config.reconnect_max);
            }
            Event::Inbound(Ok(Some(message))) => {
                if let Connection::Up { last_heard, .. } = &mut conn {
                    *last_heard = Instant::now();
                }
                if let Some(interval) = session.handle_inbound(*message) {
                    ticker = tokio::time::interval(interval);
                    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                }
            }
            Event::Inbound(Ok(None)) => {
                tracing::warn!("coordinator closed the session");
                conn = down_after(&mut backoff, session.config.reconnect_max);
            }
            Event::Inbound(Err(status)) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "session failed");
                conn = down_after(&mut backoff, session.config.reconnect_max);
            }
            Event::SendSlot(Ok(permit)) => {
                if let Some(message) = session.outbox.pop_front() {
                    permit.send(message);
                }
            }
            Event::SendSlot(Err(_)) => {
                tracing::warn!("session stream closed");
                conn = down_after(&mut backoff, session.config.reconnect_max);
            }
            Event::Report(Some(envelope)) => {
                let up = matches!(conn, Connection::Up { .. });
                session.take_report(envelope, up);
            }
            Event::Report(None) => {
                // Every sender is gone; nothing more will be reported.
                if session.runs.is_empty() {
                    session.shutting_down = true;
                }
            }
            Event::RunEnded(Some(Ok((task_id, run_id)))) => {
                session.task_runs.remove(&task_id);
                session.run_ended(&run_id);
            }
            Event::RunEnded(Some(Err(error))) => {
                if let Some(run_id) = session.task_runs.remove(&error.id()) {
                    tracing::error!(run_id, %error, "run task died");
                    let mut report = runner::crashed_report(&run_id, &error.to_string());
                    if let Some(epoch) = session.epochs.remove(&run_id) {
                        report.set_epoch(epoch);
                    }
                    let up = matches!(conn, Connection::Up { .. });
                    session.spool_report(report, None, up);
                    session.run_ended(&run_id);
                }
            }
            Event::RunEnded(None) => {}
            Event::Tick => {
                if let Connection::Up { last_heard, .. } = &conn {
                    if last_heard.elapsed() > session.silence_limit {
                        tracing::warn!(
                            silent_ms = last_heard.elapsed().as_millis() as u64,
                            "nothing from the coordinator within its liveness limit; reconnecting"
                        );
                        conn = down_after(&mut backoff, session.config.reconnect_max);
                        continue;
                    }
                    let beat = session.heartbeat();
                    session.outbox.push_back(beat);
                    let due = session.spool.due(RESEND_AFTER);
                    session.outbox.extend(due);
                }
            }
            Event::Shutdown => {
                session.shutting_down = true;
                let limit = session.config.drain_timeout;
                tracing::info!(
                    active_runs = session.active.len(),
                    drain_timeout_s = limit.as_secs(),
                    "shutting down: draining (no new runs; running runs may finish)"
                );
                drain_deadline = Some(Instant::now() + limit);
                if let Connection::Up { .. } = conn {
                    let beat = session.heartbeat();
                    session.outbox.push_front(beat);
                }
            }
            Event::DrainExpired => {
                drain_deadline = None;
                let reason = format!(
                    "canceled: the agent shut down and its drain timeout of {}s expired",
                    session.config.drain_timeout.as_secs()
                );
                session.cancel_all(&reason);
            }
            Event::StopNow => {
                drain_deadline = None;
                session.cancel_all("canceled: the agent was stopped");
            }
        }
    }
    for (_, waiter) in session.waiters.drain() {
        let _ = waiter.send(Err(ReportError::Closed));
    }
    Ok(())
}

impl<R: ContainerRuntime, B: BlobStore> Session<R, B> {
    fn hello(&self) -> AgentMessage {
        let mut leases: Vec<ActiveRun> = self
            .active
            .iter()
            .map(|(run_id, run)| ActiveRun {
                run_id: run_id.clone(),
                epoch: run.epoch,
            })
            .collect();
        leases.sort_by(|a, b| a.run_id.cmp(&b.run_id));
        AgentMessage {
            msg: Some(agent_message::Msg::Hello(Hello {
                agent_id: self.config.agent_id.clone(),
                platforms: self.platforms.clone(),
                capacity: self.config.capacity,
                active_runs: leases.iter().map(|l| l.run_id.clone()).collect(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                protocol_version: kiln_proto::PROTOCOL_VERSION,
                pool: self.config.pool.clone(),
                labels: self.config.labels.clone(),
                draining: self.draining(),
                leases,
            })),
            report_id: 0,
        }
    }

    fn draining(&self) -> bool {
        self.shutting_down || self.drained_by_coordinator
    }

    fn heartbeat(&mut self) -> AgentMessage {
        self.heartbeat_seq += 1;
        let mut active: Vec<ActiveRun> = self
            .active
            .iter()
            .map(|(run_id, run)| ActiveRun {
                run_id: run_id.clone(),
                epoch: run.epoch,
            })
            .collect();
        active.sort_by(|a, b| a.run_id.cmp(&b.run_id));
        AgentMessage {
            msg: Some(agent_message::Msg::Heartbeat(Heartbeat {
                seq: self.heartbeat_seq,
                active,
                draining: self.draining(),
                ack_seq: 0,
            })),
            report_id: 0,
        }
    }

    /// A report from a runner: stamp its lease, spool it, queue it.
    fn take_report(&mut self, envelope: Envelope, up: bool) {
        let Envelope {
            mut report,
            committed,
        } = envelope;
        let run_id = report.run_id().to_string();
        let epoch = self.epochs.get(&run_id).copied().unwrap_or(0);
        report.set_epoch(epoch);
        if let Report::Finished(finished) = &mut report {
            self.epochs.remove(&run_id);
            let canceled = finished.status == kiln_proto::pb::RunStatus::Canceled as i32;
            if let Some(reason) = self.cancel_reasons.remove(&run_id) {
                if canceled {
                    finished.reason = reason;
                }
            }
        }
        if !report.is_durable() {
            // Live log chunks: sent when connected, dropped otherwise (the stored log segments
            // carry the same bytes).
            if up {
                self.outbox.push_back(report.into_message());
            }
            if let Some(waiter) = committed {
                let _ = waiter.send(Ok(()));
            }
            return;
        }
        self.spool_report(report, committed, up);
    }

    fn spool_report(
        &mut self,
        report: Report,
        committed: Option<oneshot::Sender<CommitResult>>,
        up: bool,
    ) {
        match self.spool.append(report.into_message()) {
            Ok(id) => {
                if let Some(waiter) = committed {
                    self.waiters.insert(id, waiter);
                }
                if up {
                    let due = self.spool.due(RESEND_AFTER);
                    self.outbox.extend(due);
                }
            }
            Err(error) => {
                // The disk is full or broken: the report cannot be made durable. It is not
                // lost silently: the runner waiting on it hears why.
                tracing::error!(%error, "cannot write a report to the spool");
                if let Some(waiter) = committed {
                    let _ = waiter.send(Err(ReportError::Rejected(format!(
                        "the agent cannot write its report spool: {error}"
                    ))));
                }
            }
        }
    }

    /// Handles one coordinator message; returns a new heartbeat interval when it changes.
    fn handle_inbound(&mut self, message: CoordinatorMessage) -> Option<Duration> {
        match message.msg {
            Some(coordinator_message::Msg::Welcome(welcome)) => {
                tracing::info!(
                    protocol = welcome.protocol_version,
                    coordinator_version = welcome.coordinator_version,
                    heartbeat_ms = welcome.heartbeat_interval_ms,
                    lost_after_ms = welcome.lost_after_ms,
                    "welcomed by the coordinator"
                );
                if welcome.lost_after_ms > 0 {
                    self.silence_limit = Duration::from_millis(welcome.lost_after_ms);
                }
                if welcome.heartbeat_interval_ms > 0 {
                    let every = Duration::from_millis(welcome.heartbeat_interval_ms);
                    if every != self.heartbeat_every {
                        self.heartbeat_every = every;
                        return Some(every);
                    }
                }
            }
            Some(coordinator_message::Msg::Heartbeat(_)) => {}
            Some(coordinator_message::Msg::ReportAck(ack)) => self.acknowledged(ack),
            Some(coordinator_message::Msg::Assign(assignment)) => self.assigned(assignment),
            Some(coordinator_message::Msg::Cancel(cancel)) => match self.active.get(&cancel.run_id)
            {
                Some(run) => {
                    tracing::info!(run_id = cancel.run_id, "cancel requested");
                    run.cancel.cancel();
                }
                None => tracing::debug!(run_id = cancel.run_id, "cancel for an unknown run"),
            },
            Some(coordinator_message::Msg::Stop(stop)) => {
                self.pending.remove(&stop.run_id);
                match self.active.get_mut(&stop.run_id) {
                    Some(run) if stop.epoch == 0 || stop.epoch == run.epoch => {
                        tracing::warn!(
                            run_id = stop.run_id,
                            epoch = run.epoch,
                            reason = stop.reason,
                            "the coordinator stopped the run"
                        );
                        run.cancel.cancel();
                        self.cancel_reasons
                            .insert(stop.run_id.clone(), format!("stopped: {}", stop.reason));
                    }
                    Some(run) => tracing::debug!(
                        run_id = stop.run_id,
                        epoch = stop.epoch,
                        held = run.epoch,
                        "stop for an older lease"
                    ),
                    None => tracing::debug!(run_id = stop.run_id, "stop for an unknown run"),
                }
            }
            Some(coordinator_message::Msg::Drain(drain)) => {
                tracing::info!(drain = drain.drain, "drain changed by the coordinator");
                self.drained_by_coordinator = drain.drain;
                let beat = self.heartbeat();
                self.outbox.push_front(beat);
            }
            None => tracing::warn!("empty message from the coordinator"),
        }
        None
    }

    fn acknowledged(&mut self, ack: ReportAck) {
        let Some(message) = self.spool.ack(ack.report_id) else {
            return;
        };
        let waiter = self.waiters.remove(&ack.report_id);
        if ack.error.is_empty() {
            if let Some(waiter) = waiter {
                let _ = waiter.send(Ok(()));
            }
            return;
        }
        let run_id = Report::from_message(message)
            .map(|r| r.run_id().to_string())
            .unwrap_or_default();
        if ack.stale {
            tracing::warn!(
                run_id,
                reason = ack.error,
                "report refused: this agent no longer holds the run; stopping it"
            );
            if let Some(run) = self.active.get_mut(&run_id) {
                run.cancel.cancel();
                self.cancel_reasons
                    .insert(run_id.clone(), format!("stopped: {}", ack.error));
            }
            if let Some(waiter) = waiter {
                let _ = waiter.send(Err(ReportError::Stale(ack.error)));
            }
        } else {
            tracing::warn!(
                run_id,
                reason = ack.error,
                "report refused by the coordinator"
            );
            if let Some(waiter) = waiter {
                let _ = waiter.send(Err(ReportError::Rejected(ack.error)));
            }
        }
    }

    fn assigned(&mut self, assignment: Assignment) {
        let run_id = assignment.run_id.clone();
        let epoch = assignment.epoch;
        if self.draining() {
            // Not acknowledged: the coordinator gives it to another agent.
            tracing::warn!(run_id, "assignment received while draining; not taken");
            return;
        }
        if self.recent.iter().any(|(r, e)| *r == run_id && *e == epoch) {
            tracing::debug!(run_id, epoch, "assignment of a run that already ended here");
            return;
        }
        match self.active.get_mut(&run_id) {
            Some(run) if run.epoch == epoch => {
                // A resend: acknowledge again, change nothing.
            }
            Some(run) => {
                // The run was given to us again under a new lease (it went back to the queue
                // while we were away): end the old execution, then start the new one.
                tracing::warn!(
                    run_id,
                    old = run.epoch,
                    new = epoch,
                    "run assigned again; restarting it under the new lease"
                );
                run.cancel.cancel();
                self.cancel_reasons.insert(
                    run_id.clone(),
                    "stopped: assigned again under a new lease".into(),
                );
                self.pending.insert(run_id.clone(), assignment);
            }
            None => self.start_run(assignment),
        }
        self.outbox.push_front(AgentMessage {
            msg: Some(agent_message::Msg::AssignmentAck(AssignmentAck {
                run_id,
                epoch,
            })),
            report_id: 0,
        });
    }

    fn start_run(&mut self, assignment: Assignment) {
        let run_id = assignment.run_id.clone();
        tracing::info!(run_id, epoch = assignment.epoch, "run assigned");
        let token = CancellationToken::new();
        self.active.insert(
            run_id.clone(),
            ActiveRunState {
                epoch: assignment.epoch,
                cancel: token.clone(),
            },
        );
        self.epochs.insert(run_id.clone(), assignment.epoch);
        let env = Arc::clone(&self.env);
        let task_run = run_id.clone();
        let id = self
            .runs
            .spawn(async move {
                runner::execute(env, assignment, token).await;
                task_run
            })
            .id();
        self.task_runs.insert(id, run_id);
    }

    fn run_ended(&mut self, run_id: &str) {
        if let Some(run) = self.active.remove(run_id) {
            self.recent.push_back((run_id.to_string(), run.epoch));
            while self.recent.len() > RECENT_MAX {
                self.recent.pop_front();
            }
        }
        if let Some(next) = self.pending.remove(run_id) {
            self.start_run(next);
        }
    }

    fn cancel_all(&mut self, reason: &str) {
        for (run_id, run) in &self.active {
            tracing::warn!(run_id, reason, "canceling run");
            run.cancel.cancel();
            self.cancel_reasons
                .insert(run_id.clone(), reason.to_string());
        }
        self.pending.clear();
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn down_after(backoff: &mut Duration, max: Duration) -> Connection {
    let delay = *backoff;
    *backoff = (*backoff * 2).min(max);
    Connection::Down {
        retry_at: Instant::now() + delay,
    }
}

async fn connect(endpoint: String, hello: AgentMessage) -> Result<Connected, String> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint)
        .map_err(|e| format!("invalid coordinator address: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_INTERVAL)
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(|e| error_chain(&e))?;
    let mut client = AgentServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(OUTBOUND_BUFFER);
    // Hello goes first and is queued before the call, so a coordinator that waits for it
    // before answering cannot deadlock the handshake.
    tx.send(hello)
        .await
        .map_err(|_| "session channel closed".to_string())?;
    let response = client
        .session(ReceiverStream::new(rx))
        .await
        .map_err(|status| match status.code() {
            tonic::Code::AlreadyExists => format!(
                "refused: {} (retrying; another agent process is using this id)",
                status.message()
            ),
            code => format!("{code:?}: {}", status.message()),
        })?;
    Ok((tx, response.into_inner()))
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// How often, and how many times, the start-up check asks whether this agent's id is in use.
const ID_CHECK_TRIES: u32 = 4;
const ID_CHECK_PAUSE: Duration = Duration::from_secs(2);

/// Before an agent removes what "its" previous process left on the engine, it makes sure no
/// other live process uses its id: that one's containers are not leftovers. An id the
/// coordinator still lists as ready or draining is asked about a few times (a predecessor
/// that just died is declared lost within seconds); an unreachable coordinator is no reason
/// not to start.
pub async fn check_id_is_free(config: &AgentConfig) -> Result<(), String> {
    use kiln_proto::v1::control_client::ControlClient;
    use kiln_proto::v1::GetInfoRequest;
    let endpoint = match tonic::transport::Endpoint::from_shared(config.coordinator.clone()) {
        Ok(endpoint) => endpoint.connect_timeout(CONNECT_TIMEOUT),
        Err(_) => return Ok(()),
    };
    let Ok(channel) = endpoint.connect().await else {
        return Ok(());
    };
    let mut client = ControlClient::new(channel);
    for attempt in 1..=ID_CHECK_TRIES {
        let Ok(info) = client.get_info(GetInfoRequest {}).await else {
            return Ok(());
        };
        let live = info.into_inner().agents.into_iter().any(|agent| {
            agent.agent_id == config.agent_id
                && matches!(agent.state.as_str(), "ready" | "draining")
        });
        if !live {
            return Ok(());
        }
        if attempt < ID_CHECK_TRIES {
            tracing::warn!(agent_id = config.agent_id, "the coordinator lists this agent id as connected; waiting to see whether that process is gone");
            tokio::time::sleep(ID_CHECK_PAUSE).await;
        }
    }
    Err(format!(
        "agent id {} is in use: another kiln-agent connected to {} with it is alive; give each agent its own --agent-id",
        config.agent_id, config.coordinator
    ))
}

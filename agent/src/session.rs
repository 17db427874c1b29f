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
//!   reopened, as is one whose stream fails.
//! * **Which coordinator**: `--coordinator` lists members of the cluster
//!   ([`kiln_proto::Endpoints`]). A follower's refusal names the leader, which is tried at
//!   once; otherwise the next member is tried after 50–100 ms for the first
//!   [`FAST_FAILOVER`], then with capped exponential backoff.
//! * **Which cluster**: the first `Welcome` that names a cluster id is recorded in
//!   `<work dir>/cluster-id` and sent on every later session (`kiln-cluster-id`); a
//!   coordinator of another cluster is refused with a logged error, and the other members
//!   are tried. Nothing but Hello is sent before the Welcome is checked.
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
use kiln_proto::endpoints::{self, Endpoints, Next, Settings};
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
use crate::live_tail::LiveTails;
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
/// For this long after the session was lost, other members are tried quickly (50–100 ms
/// apart), so that a new leader is found within about an election; then backoff.
pub const FAST_FAILOVER: Duration = Duration::from_secs(2);
/// Leader hints followed in a row without a pause (two members naming each other cannot make
/// the agent spin).
const MAX_IMMEDIATE_HINTS: u32 = 3;
/// The file in the work directory that records the cluster this agent serves.
pub const CLUSTER_ID_FILE: &str = "cluster-id";

type Connected = (
    mpsc::Sender<AgentMessage>,
    tonic::codec::Streaming<CoordinatorMessage>,
);

enum Connection {
    /// Waiting until `retry_at` before the next attempt.
    Down {
        retry_at: Instant,
    },
    Connecting(BoxFuture<'static, Result<Connected, ConnectFailure>>),
    Up {
        tx: mpsc::Sender<AgentMessage>,
        inbound: Box<tonic::codec::Streaming<CoordinatorMessage>>,
        last_heard: Instant,
        /// The coordinator's Welcome arrived and names our cluster (or none): until then
        /// nothing but Hello is sent.
        welcomed: bool,
    },
}

/// Why a session could not be opened: a message for the log, and the coordinator's status
/// when it answered (it may name the leader).
struct ConnectFailure {
    message: String,
    status: Option<tonic::Status>,
}

/// When to try again after a failure, and where (through the endpoints).
struct Reconnect {
    /// The first failure since the last good session.
    failing_since: Option<Instant>,
    backoff: Duration,
    hints_in_a_row: u32,
}

impl Reconnect {
    fn new(config: &AgentConfig) -> Reconnect {
        Reconnect {
            failing_since: None,
            backoff: config.reconnect_initial,
            hints_in_a_row: 0,
        }
    }

    /// A coordinator of our cluster welcomed us.
    fn welcomed(&mut self, config: &AgentConfig) {
        *self = Reconnect::new(config);
    }

    /// The session with `url` failed (with the coordinator's `status`, if it answered): follow
    /// its leader hint at once, else rotate to the next member, quickly at first.
    fn after_failure(
        &mut self,
        endpoints: &Endpoints,
        url: &str,
        status: Option<&tonic::Status>,
        config: &AgentConfig,
    ) -> Connection {
        let now = Instant::now();
        let since = *self.failing_since.get_or_insert(now);
        let delay = match endpoints.failed(url, status) {
            Next::Leader(leader) if self.hints_in_a_row < MAX_IMMEDIATE_HINTS => {
                self.hints_in_a_row += 1;
                tracing::info!(leader, "the coordinator named the leader; connecting to it");
                Duration::ZERO
            }
            _ if now.duration_since(since) < FAST_FAILOVER => {
                self.hints_in_a_row = 0;
                endpoints::jitter(endpoints::ROTATE_JITTER.0, endpoints::ROTATE_JITTER.1)
            }
            _ => {
                self.hints_in_a_row = 0;
                let delay = self.backoff;
                self.backoff = (self.backoff * 2).min(config.reconnect_max);
                delay
            }
        };
        Connection::Down {
            retry_at: now + delay,
        }
    }
}

/// Everything the session loop reacts to.
enum Event {
    Connected(Result<Connected, ConnectFailure>),
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
    /// The coordinators, the one to try next and the cluster id sent with every session.
    endpoints: Endpoints,
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
    /// Live output no acknowledged log segment covers yet, sent again on every new session.
    tails: LiveTails,
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
    let endpoints = Endpoints::with_settings(
        &config.coordinator,
        Settings {
            connect_timeout: CONNECT_TIMEOUT,
            keepalive: Some(KEEPALIVE_INTERVAL),
            ..Settings::default()
        },
    )
    .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidInput, error.to_string()))?;
    if let Some(cluster_id) = read_cluster_id(&config) {
        tracing::info!(cluster_id, "this agent serves cluster {cluster_id}");
        let _ = endpoints.learn_cluster_id(&cluster_id);
    }
    let stop_now = config.stop_now.clone();
    let mut session = Session {
        endpoints,
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
        tails: LiveTails::default(),
        heartbeat_every: DEFAULT_HEARTBEAT,
        silence_limit: DEFAULT_SILENCE_LIMIT,
        heartbeat_seq: 0,
        drained_by_coordinator: false,
        shutting_down: false,
        config,
    };
    let mut reconnect = Reconnect::new(&session.config);
    // The member the current (or last) connection went to.
    let mut url = session.endpoints.preferred();
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
            Connection::Up {
                tx,
                inbound,
                welcomed,
                ..
            } => {
                let has_outgoing = *welcomed && !session.outbox.is_empty();
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
                    url = session.endpoints.preferred();
                    tracing::debug!(coordinator = %url, "connecting");
                    let hello = session.hello();
                    let connecting = connect(session.endpoints.clone(), url.clone(), hello);
                    conn = Connection::Connecting(
                        async move {
                            tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting)
                                .await
                                .unwrap_or_else(|_| {
                                    Err(ConnectFailure {
                                        message: format!(
                                            "the coordinator did not answer within {HANDSHAKE_TIMEOUT:?}"
                                        ),
                                        status: None,
                                    })
                                })
                        }
                        .boxed(),
                    );
                }
            }
            Event::Connected(Ok((tx, inbound))) => {
                tracing::info!(coordinator = %url, "session established");
                session.outbox.clear();
                session.spool.reset_sent();
                session.outbox.extend(session.spool.due(RESEND_AFTER));
                // After the spooled reports (the stored segments they name come first).
                let replay: Vec<AgentMessage> = session
                    .tails
                    .replay()
                    .map(|chunk| Report::Log(chunk.clone()).into_message())
                    .collect();
                if !replay.is_empty() {
                    tracing::info!(
                        chunks = replay.len(),
                        bytes = session.tails.bytes(),
                        "sending the live output no stored log segment covers yet again"
                    );
                }
                session.outbox.extend(replay);
                conn = Connection::Up {
                    tx,
                    inbound: Box::new(inbound),
                    last_heard: Instant::now(),
                    welcomed: false,
                };
            }
            Event::Connected(Err(failure)) => {
                let refused = failure
                    .status
                    .as_ref()
                    .is_some_and(|status| status.code() == tonic::Code::FailedPrecondition);
                if refused {
                    tracing::error!(
                        coordinator = %url,
                        error = failure.message,
                        "refusing this coordinator: {}; trying the others",
                        session.cluster_hint()
                    );
                } else {
                    tracing::warn!(coordinator = %url, error = failure.message, "cannot open session");
                }
                conn = reconnect.after_failure(
                    &session.endpoints,
                    &url,
                    failure.status.as_ref(),
                    &session.config,
                );
            }
            Event::Inbound(Ok(Some(message))) => {
                if let Some(coordinator_message::Msg::Welcome(welcome)) = &message.msg {
                    if let Err(error) = session.check_cluster(&welcome.cluster_id) {
                        tracing::error!(coordinator = %url, "refusing this coordinator: {error}; trying the others");
                        conn = reconnect.after_failure(
                            &session.endpoints,
                            &url,
                            None,
                            &session.config,
                        );
                        continue;
                    }
                    reconnect.welcomed(&session.config);
                    session.endpoints.succeeded(&url);
                    if let Connection::Up { welcomed, .. } = &mut conn {
                        *welcomed = true;
                    }
                }
                if let Connection::Up { last_heard, .. } = &mut conn {
                    *last_heard = Instant::now();
                }
                if let Some(interval) = session.handle_inbound(*message) {
                    ticker = tokio::time::interval(interval);
                    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                }
            }
            Event::Inbound(Ok(None)) => {
                tracing::warn!(coordinator = %url, "coordinator closed the session");
                conn = reconnect.after_failure(&session.endpoints, &url, None, &session.config);
            }
            Event::Inbound(Err(status)) => {
                tracing::warn!(coordinator = %url, code = ?status.code(), message = status.message(), "session failed");
                conn = reconnect.after_failure(
                    &session.endpoints,
                    &url,
                    Some(&status),
                    &session.config,
                );
            }
            Event::SendSlot(Ok(permit)) => {
                if let Some(message) = session.outbox.pop_front() {
                    permit.send(message);
                }
            }
            Event::SendSlot(Err(_)) => {
                tracing::warn!(coordinator = %url, "session stream closed");
                conn = reconnect.after_failure(&session.endpoints, &url, None, &session.config);
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
                    session.tails.run_ended(&run_id);
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
                        conn = reconnect.after_failure(
                            &session.endpoints,
                            &url,
                            None,
                            &session.config,
                        );
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
    /// Checks a Welcome's cluster id: the first one is recorded (in memory and in the work
    /// directory), a different one later is refused. An empty id (an older coordinator) is
    /// accepted.
    fn check_cluster(&self, cluster_id: &str) -> Result<(), String> {
        match self.endpoints.learn_cluster_id(cluster_id) {
            Ok(false) => Ok(()),
            Ok(true) => {
                let path = self.config.work_dir.join(CLUSTER_ID_FILE);
                match write_cluster_id(&path, cluster_id) {
                    Ok(()) => tracing::info!(
                        cluster_id,
                        file = %path.display(),
                        "this agent now serves cluster {cluster_id}"
                    ),
                    Err(error) => tracing::error!(
                        cluster_id,
                        file = %path.display(),
                        %error,
                        "cannot record the cluster id; it is kept for this process only"
                    ),
                }
                Ok(())
            }
            Err(mismatch) => Err(format!("{mismatch} ({})", self.cluster_hint())),
        }
    }

    /// What to do about a coordinator of another cluster, for the log.
    fn cluster_hint(&self) -> String {
        format!(
            "this agent serves cluster {}, recorded in {}: point --coordinator at that cluster's members, or delete the file to move the agent to another cluster",
            self.endpoints.cluster_id().unwrap_or_else(|| "-".to_string()),
            self.config.work_dir.join(CLUSTER_ID_FILE).display()
        )
    }

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
            self.tails.run_ended(&run_id);
            let canceled = finished.status == kiln_proto::pb::RunStatus::Canceled as i32;
            if let Some(reason) = self.cancel_reasons.remove(&run_id) {
                if canceled {
                    finished.reason = reason;
                }
            }
        }
        if !report.is_durable() {
            // Live log chunks: sent when connected, and kept until a stored segment covers
            // them, to be sent again to the next coordinator (see `live_tail`).
            if let Report::Log(chunk) = &report {
                self.tails.record(chunk);
            }
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
        if let Some(agent_message::Msg::LogStored(stored)) = &message.msg {
            // Committed or refused for good: either way it is never sent again, and what it
            // covers need not be either.
            self.tails.stored(
                &stored.run_id,
                &stored.step_id,
                stored.offset.saturating_add(stored.size),
            );
        }
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

/// Opens a session with the coordinator at `url`: Hello first, then the call.
async fn connect(
    endpoints: Endpoints,
    url: String,
    hello: AgentMessage,
) -> Result<Connected, ConnectFailure> {
    let failure = |message: String| ConnectFailure {
        message,
        status: None,
    };
    let channel = endpoints
        .connection(&url)
        .map_err(|status| ConnectFailure {
            message: status.message().to_string(),
            status: None,
        })?;
    let mut client = AgentServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(OUTBOUND_BUFFER);
    // Hello goes first and is queued before the call, so a coordinator that waits for it
    // before answering cannot deadlock the handshake.
    tx.send(hello)
        .await
        .map_err(|_| failure("session channel closed".to_string()))?;
    let response = client
        .session(ReceiverStream::new(rx))
        .await
        .map_err(|status| {
            let message = match status.code() {
                tonic::Code::AlreadyExists => format!(
                    "refused: {} (retrying; another agent process is using this id)",
                    status.message()
                ),
                _ if endpoints::is_transport(&status) => endpoints::status_detail(&status),
                code => format!("{code:?}: {}", status.message()),
            };
            ConnectFailure {
                message,
                status: Some(status),
            }
        })?;
    Ok((tx, response.into_inner()))
}

/// The cluster id recorded in the work directory, if any (a damaged file is reported and
/// ignored: the next Welcome records the id again).
fn read_cluster_id(config: &AgentConfig) -> Option<String> {
    let path = config.work_dir.join(CLUSTER_ID_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
        Err(error) => {
            tracing::error!(file = %path.display(), %error, "cannot read the recorded cluster id; ignoring it");
            return None;
        }
    };
    let id = text.trim();
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        tracing::error!(file = %path.display(), "the recorded cluster id is not hex digits; ignoring it");
        return None;
    }
    Some(id.to_string())
}

/// Records the cluster id durably: a temporary file, fsync, rename, fsync of the directory.
fn write_cluster_id(path: &std::path::Path, cluster_id: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(format!("{cluster_id}\n").as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
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
    let Ok(endpoints) = Endpoints::with_settings(
        &config.coordinator,
        Settings {
            connect_timeout: CONNECT_TIMEOUT,
            request_timeout: Some(CONNECT_TIMEOUT),
            ..Settings::default()
        },
    ) else {
        return Ok(());
    };
    if let Some(cluster_id) = read_cluster_id(config) {
        let _ = endpoints.learn_cluster_id(&cluster_id);
    }
    for attempt in 1..=ID_CHECK_TRIES {
        // Every member is asked: agents connect to the leader, so only its list is live, and
        // which member leads is not known yet.
        let asks = endpoints.urls().iter().map(|url| {
            endpoints.call_at(url, |conn| async move {
                ControlClient::new(conn).get_info(GetInfoRequest {}).await
            })
        });
        let answers = futures::future::join_all(asks).await;
        if answers.iter().all(Result::is_err) {
            return Ok(());
        }
        let live = answers.into_iter().flatten().any(|info| {
            info.into_inner().agents.into_iter().any(|agent| {
                agent.agent_id == config.agent_id
                    && matches!(agent.state.as_str(), "ready" | "draining")
            })
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

#[cfg(test)]
mod tests {
    //! The session against fake coordinators on loopback gRPC: following a follower's leader
    //! hint, recording the cluster id, refusing a coordinator of another cluster.

    use std::path::Path;
    use std::pin::Pin;

    use kiln_proto::endpoints::{CLUSTER_ID_KEY, LEADER_ID_KEY, LEADER_URL_KEY};
    use kiln_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
    use kiln_proto::v1::Welcome;
    use tonic::transport::Server;
    use tonic::{Request, Response, Status, Streaming};

    use super::*;
    use crate::executor::fake::FakeRuntime;

    const LIMIT: Duration = Duration::from_secs(20);

    /// What a fake coordinator saw.
    #[derive(Debug, PartialEq)]
    enum Seen {
        /// A session was opened, with this `kiln-cluster-id` metadata.
        Session(&'static str, Option<String>),
        /// A heartbeat arrived: the agent accepted the Welcome.
        Heartbeat(&'static str),
    }

    enum Role {
        Follower(String),
        /// Welcomes every agent with this cluster id (without checking the metadata, as a
        /// coordinator that predates it would).
        Leader(&'static str),
    }

    struct FakeCoordinator {
        name: &'static str,
        role: Role,
        seen: mpsc::Sender<Seen>,
    }

    type Outbound = Pin<Box<dyn futures::Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

    #[tonic::async_trait]
    impl AgentService for FakeCoordinator {
        type SessionStream = Outbound;

        async fn session(
            &self,
            request: Request<Streaming<AgentMessage>>,
        ) -> Result<Response<Outbound>, Status> {
            let cluster = request
                .metadata()
                .get(CLUSTER_ID_KEY)
                .and_then(|value| value.to_str().ok())
                .map(str::to_string);
            let _ = self.seen.send(Seen::Session(self.name, cluster)).await;
            let cluster_id = match &self.role {
                Role::Follower(leader) => {
                    let mut status = Status::unavailable(format!(
                        "node 2 is not the leader; the leader is node 1 at {leader}"
                    ));
                    status
                        .metadata_mut()
                        .insert(LEADER_ID_KEY, "1".parse().expect("ascii"));
                    status
                        .metadata_mut()
                        .insert(LEADER_URL_KEY, leader.parse().expect("ascii"));
                    return Err(status);
                }
                Role::Leader(cluster_id) => cluster_id.to_string(),
            };
            let mut inbound = request.into_inner();
            let (tx, rx) = mpsc::channel(8);
            let welcome = CoordinatorMessage {
                msg: Some(coordinator_message::Msg::Welcome(Welcome {
                    protocol_version: kiln_proto::PROTOCOL_VERSION,
                    heartbeat_interval_ms: 50,
                    lost_after_ms: 5_000,
                    coordinator_version: "test".into(),
                    cluster_id,
                })),
            };
            tx.send(Ok(welcome)).await.expect("room for the welcome");
            let seen = self.seen.clone();
            let name = self.name;
            tokio::spawn(async move {
                // Keeps the stream open (tx) while the agent talks; reports heartbeats.
                let _tx = tx;
                while let Ok(Some(message)) = inbound.message().await {
                    if let Some(agent_message::Msg::Heartbeat(_)) = message.msg {
                        let _ = seen.send(Seen::Heartbeat(name)).await;
                    }
                }
            });
            Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
        }
    }

    async fn serve(name: &'static str, role: Role, seen: &mpsc::Sender<Seen>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let address = listener.local_addr().expect("a bound address");
        let fake = FakeCoordinator {
            name,
            role,
            seen: seen.clone(),
        };
        tokio::spawn(
            Server::builder()
                .add_service(AgentServiceServer::new(fake))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        format!("http://{address}")
    }

    struct NoBlobs;

    impl BlobStore for NoBlobs {
        async fn fetch_context(&self, _: &str, _: &str, _: &Path) -> Result<(), String> {
            Err("no blobs in this test".into())
        }

        async fn upload_log(&self, _: &str, _: &Path) -> Result<(String, u64), String> {
            Err("no blobs in this test".into())
        }
    }

    /// Runs an agent of `coordinators` until `until` returns true for what the fakes saw;
    /// returns everything seen, in order.
    async fn run_agent(
        coordinators: String,
        work_dir: &Path,
        seen: &mut mpsc::Receiver<Seen>,
        until: impl Fn(&Seen) -> bool,
    ) -> Vec<Seen> {
        let config = AgentConfig::new(coordinators, "unix:///nonexistent", work_dir, "agent-1");
        let shutdown = CancellationToken::new();
        let agent = tokio::spawn(crate::run_with(
            config,
            FakeRuntime::new(),
            NoBlobs,
            Vec::new(),
            shutdown.clone(),
        ));
        let mut log = Vec::new();
        let waited = tokio::time::timeout(LIMIT, async {
            while let Some(event) = seen.recv().await {
                let done = until(&event);
                log.push(event);
                if done {
                    return;
                }
            }
        })
        .await;
        shutdown.cancel();
        let stopped = tokio::time::timeout(LIMIT, agent).await;
        assert!(waited.is_ok(), "the agent did not get there; saw {log:?}");
        assert!(matches!(stopped, Ok(Ok(Ok(())))), "{stopped:?}");
        log
    }

    #[tokio::test]
    async fn the_agent_follows_the_leader_hint_and_records_the_cluster_id() {
        let (seen_tx, mut seen) = mpsc::channel(64);
        let leader = serve("leader", Role::Leader("00000000000000aa"), &seen_tx).await;
        let follower = serve("follower", Role::Follower(leader.clone()), &seen_tx).await;
        let work = tempfile::tempdir().expect("a temporary directory");
        let log = run_agent(follower, work.path(), &mut seen, |event| {
            *event == Seen::Heartbeat("leader")
        })
        .await;
        assert_eq!(
            log[..2],
            [
                Seen::Session("follower", None),
                Seen::Session("leader", None)
            ]
        );
        let recorded = std::fs::read_to_string(work.path().join(CLUSTER_ID_FILE)).unwrap();
        assert_eq!(recorded, "00000000000000aa\n");
    }

    #[tokio::test]
    async fn a_coordinator_of_another_cluster_is_refused_and_the_others_are_tried() {
        let (seen_tx, mut seen) = mpsc::channel(64);
        let foreign = serve("foreign", Role::Leader("00000000000000aa"), &seen_tx).await;
        let ours = serve("ours", Role::Leader("00000000000000bb"), &seen_tx).await;
        let work = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(work.path().join(CLUSTER_ID_FILE), "00000000000000bb\n").unwrap();
        let log = run_agent(
            format!("{foreign},{ours}"),
            work.path(),
            &mut seen,
            |event| *event == Seen::Heartbeat("ours"),
        )
        .await;
        let recorded = Some("00000000000000bb".to_string());
        assert_eq!(log[0], Seen::Session("foreign", recorded.clone()));
        assert!(log.contains(&Seen::Session("ours", recorded)), "{log:?}");
        assert!(
            !log.contains(&Seen::Heartbeat("foreign")),
            "nothing but Hello goes to a coordinator whose Welcome is refused: {log:?}"
        );
        let kept = std::fs::read_to_string(work.path().join(CLUSTER_ID_FILE)).unwrap();
        assert_eq!(kept, "00000000000000bb\n");
    }

    #[test]
    fn a_damaged_cluster_id_file_is_ignored() {
        let work = tempfile::tempdir().expect("a temporary directory");
        let config = AgentConfig::new("a:1", "unix:///x", work.path(), "agent-1");
        assert_eq!(read_cluster_id(&config), None);
        std::fs::write(work.path().join(CLUSTER_ID_FILE), "not hex\n").unwrap();
        assert_eq!(read_cluster_id(&config), None);
        write_cluster_id(&work.path().join(CLUSTER_ID_FILE), "00000000000000aa").unwrap();
        assert_eq!(
            read_cluster_id(&config).as_deref(),
            Some("00000000000000aa")
        );
    }
}

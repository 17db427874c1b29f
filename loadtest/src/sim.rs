//! Simulated agents: real gRPC clients of `AgentService.Session` speaking agent protocol 2,
//! without Docker. Each completes every run's single step after a fixed time, so that the
//! coordinator's dispatch and fairness can be measured with many agents and slots on one
//! machine.
//!
//! The protocol logic is the pure state machine in `machine`; this file owns the sessions:
//! connecting (and reconnecting like the real agent: a follower's leader hint at once, other
//! members 50–100 ms apart for the first 2 s, then capped backoff), heartbeats, step timers
//! and the shared tally the benchmarks wait on. `coordinator` is a comma-separated list of
//! members; each simulated agent has its own connections.

pub mod machine;

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{anyhow, bail};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use kiln_proto::endpoints::{self, Endpoints, Next, Settings};
use kiln_proto::v1::agent_service_client::AgentServiceClient;
use kiln_proto::v1::{coordinator_message, AgentMessage, AgentPlatform};
use kiln_state::pb::RunStatus;
use kiln_state::PlatformSpec;

use crate::stats::LatencySummary;
use machine::{Action, Counters, Identity, Machine};

/// The most simulated agents one process runs.
pub const MAX_AGENTS: u32 = 1_000;
/// The most runs one simulated agent takes at once.
pub const MAX_CAPACITY: u32 = 10_000;
/// The longest simulated step, in milliseconds (one hour).
pub const MAX_STEP_MS: u64 = 3_600_000;

/// Messages buffered between a session and its gRPC stream.
const OUTBOUND_BUFFER: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the coordinator may take to answer `Hello` with `Welcome`.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
const RECONNECT_INITIAL: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// After a session is lost, other members are tried 50–100 ms apart for this long.
const FAST_FAILOVER: Duration = Duration::from_secs(2);
/// Leader hints followed in a row without a pause.
const MAX_IMMEDIATE_HINTS: u32 = 3;
/// Bounds on the coordinator's heartbeat interval, and the silence after which the session is
/// dropped when the `Welcome` names none.
const MIN_HEARTBEAT: Duration = Duration::from_millis(50);
const MAX_HEARTBEAT: Duration = Duration::from_secs(60);
const DEFAULT_LOST_AFTER: Duration = Duration::from_secs(30);
/// Report-ack latencies kept for the summary (the first ones; later ones are counted only).
const MAX_ACK_SAMPLES: usize = 200_000;
/// Submitters tallied separately; runs of more are tallied under "".
const MAX_SUBMITTERS: usize = 1_000;

/// What simulated agents to run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub coordinator: String,
    pub agents: u32,
    pub capacity: u32,
    pub step: Duration,
    pub pool: String,
    pub platform: PlatformSpec,
    /// Agent ids are `PREFIX-1`, `PREFIX-2`, …
    pub id_prefix: String,
}

/// Checks the simulated agents' numbers.
pub fn validate(agents: u32, capacity: u32, step_ms: u64) -> anyhow::Result<()> {
    if agents == 0 || agents > MAX_AGENTS {
        bail!("--sim-agents must be between 1 and {MAX_AGENTS}");
    }
    if capacity == 0 || capacity > MAX_CAPACITY {
        bail!("--sim-capacity must be between 1 and {MAX_CAPACITY}");
    }
    if step_ms > MAX_STEP_MS {
        bail!("--sim-step-ms must be at most {MAX_STEP_MS}");
    }
    Ok(())
}

/// Finished runs of one submitter, as the simulated agents saw them committed.
#[derive(Clone, Copy, Debug)]
pub struct Tally {
    pub finished: u64,
    pub last_finish: Instant,
}

/// What every session reports to, watched by the benchmarks.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// Agents welcomed at least once.
    pub welcomed: u32,
    /// Runs whose `RunFinished` was committed, all submitters together.
    pub finished: u64,
    /// An agent gave up for good (refused by the coordinator): why.
    pub fatal: Option<String>,
}

#[derive(Default)]
struct Collected {
    /// Every agent's counters, by index, as of its last message.
    per_agent: Vec<Counters>,
    sessions: u64,
    session_errors: u64,
    first_session_error: Option<String>,
    first_report_error: Option<String>,
    ack_samples: Vec<Duration>,
    by_submitter: HashMap<String, Tally>,
    /// The leases under which each run's step executed: the agents' own record, to check that
    /// no run executed under two leases.
    executions: HashMap<String, BTreeSet<u64>>,
    /// When new assignments arrived, with the start of the session they came on (newest last).
    assignments: VecDeque<(Instant, Instant)>,
}

/// Most runs whose executions are recorded, and assignment arrivals kept.
const MAX_EXECUTIONS: usize = 1_000_000;
const MAX_ASSIGNMENT_LOG: usize = 100_000;

struct Shared {
    progress: watch::Sender<Progress>,
    collected: Mutex<Collected>,
}

impl Shared {
    fn collected(&self) -> std::sync::MutexGuard<'_, Collected> {
        self.collected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Running simulated agents; `stop` ends them and returns their summary.
pub struct SimFarm {
    tasks: JoinSet<()>,
    stop: CancellationToken,
    shared: Arc<Shared>,
    config: SimConfig,
}

/// What the simulated agents did, for the report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SimSummary {
    pub agents: u32,
    pub capacity: u32,
    pub step_ms: u64,
    pub assigned: u64,
    pub succeeded: u64,
    pub canceled: u64,
    pub stopped: u64,
    pub stale: u64,
    pub report_errors: u64,
    pub duplicate_assignments: u64,
    pub over_capacity: u64,
    pub refused_draining: u64,
    /// Runs held and reports unacknowledged when the summary was taken.
    pub held: u64,
    pub unacknowledged: u64,
    /// Sessions opened (more than `agents` means reconnects).
    pub sessions: u64,
    pub session_errors: u64,
    pub first_error: Option<String>,
    /// Sending a report → its `ReportAck` (a Raft commit on the coordinator).
    pub report_ack_ms: LatencySummary,
}

impl SimSummary {
    /// Anything the coordinator did that a correct one does not (for the report).
    pub fn anomalies(&self) -> Vec<String> {
        let mut found = Vec::new();
        let mut note = |count: u64, what: &str| {
            if count > 0 {
                found.push(format!("{count} {what}"));
            }
        };
        note(self.over_capacity, "assignments beyond an agent's capacity");
        note(self.duplicate_assignments, "duplicate assignments");
        note(self.refused_draining, "assignments to a draining agent");
        note(self.stale, "reports answered stale");
        note(self.report_errors, "reports rejected");
        note(self.session_errors, "failed sessions");
        found
    }

    pub fn to_table(&self) -> String {
        let ms = |value: Option<f64>| value.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"));
        let mut out = format!(
            "sim agents    {} x capacity {}, steps of {} ms, {} session(s)\n",
            self.agents, self.capacity, self.step_ms, self.sessions
        );
        out.push_str(&format!(
            "sim runs      assigned {}  succeeded {}  canceled {}  stopped {}\n",
            self.assigned, self.succeeded, self.canceled, self.stopped
        ));
        out.push_str(&format!(
            "report ack    count {}  p50 {} ms  p99 {} ms  max {} ms\n",
            self.report_ack_ms.count,
            ms(self.report_ack_ms.p50_ms),
            ms(self.report_ack_ms.p99_ms),
            ms(self.report_ack_ms.max_ms),
        ));
        let anomalies = self.anomalies();
        if !anomalies.is_empty() {
            out.push_str(&format!("sim noticed   {}\n", anomalies.join(", ")));
        }
        if let Some(error) = &self.first_error {
            out.push_str(&format!("first error   {error}\n"));
        }
        out
    }
}

impl SimFarm {
    /// Starts `config.agents` agents, each connecting on its own.
    pub fn start(config: SimConfig) -> Self {
        let shared = Arc::new(Shared {
            progress: watch::Sender::new(Progress::default()),
            collected: Mutex::new(Collected {
                per_agent: vec![Counters::default(); config.agents as usize],
                ..Collected::default()
            }),
        });
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        for index in 1..=config.agents {
            let identity = Identity {
                agent_id: format!("{}-{index}", config.id_prefix),
                platforms: vec![AgentPlatform {
                    platform: Some(config.platform.to_pb()),
                    emulated: false,
                }],
                capacity: config.capacity,
                pool: config.pool.clone(),
                step: config.step,
            };
            tasks.spawn(agent(
                index as usize - 1,
                Machine::new(identity),
                config.coordinator.clone(),
                Arc::clone(&shared),
                stop.clone(),
            ));
        }
        Self {
            tasks,
            stop,
            shared,
            config,
        }
    }

    /// Every run whose step executed, with the leases (epochs) it executed under.
    pub fn executions(&self) -> HashMap<String, BTreeSet<u64>> {
        self.shared.collected().executions.clone()
    }

    /// When the first assignment arrived on a session opened at or after `since`: after a
    /// leader is killed at `since`, that is when dispatch resumed.
    pub fn first_assignment_after(&self, since: Instant) -> Option<Instant> {
        self.shared
            .collected()
            .assignments
            .iter()
            .find(|(session, at)| *session >= since && *at >= since)
            .map(|(_, at)| *at)
    }

    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.shared.progress.subscribe()
    }

    /// Waits until every agent has been welcomed, or fails on the first refusal or at `limit`.
    pub async fn wait_connected(&self, limit: Duration) -> anyhow::Result<()> {
        let agents = self.config.agents;
        let mut progress = self.progress();
        let waited = tokio::time::timeout(
            limit,
            progress.wait_for(|p| p.welcomed >= agents || p.fatal.is_some()),
        )
        .await;
        let progress = match waited {
            Ok(Ok(progress)) => progress.clone(),
            Ok(Err(_)) => bail!("the simulated agents stopped"),
            Err(_) => {
                let error = self.shared.collected().first_session_error.clone();
                bail!(
                    "only {} of {agents} simulated agents connected within {limit:?}{}",
                    self.progress().borrow().welcomed,
                    error
                        .map(|e| format!(" (first error: {e})"))
                        .unwrap_or_default()
                );
            }
        };
        match progress.fatal {
            Some(fatal) => Err(anyhow!("a simulated agent was refused: {fatal}")),
            None => Ok(()),
        }
    }

    /// Finished runs of `submitter`.
    pub fn tally(&self, submitter: &str) -> Option<Tally> {
        self.shared.collected().by_submitter.get(submitter).copied()
    }

    /// Waits until `count` runs of `submitter` finished, or `limit` passes; returns the tally.
    pub async fn wait_finished(
        &self,
        submitter: &str,
        count: u64,
        limit: Duration,
    ) -> Option<Tally> {
        let mut progress = self.progress();
        let reached = |shared: &Shared| {
            shared
                .collected()
                .by_submitter
                .get(submitter)
                .is_some_and(|tally| tally.finished >= count)
        };
        let _ = tokio::time::timeout(
            limit,
            progress.wait_for(|p| p.fatal.is_some() || reached(&self.shared)),
        )
        .await;
        self.tally(submitter)
    }

    /// Stops the agents (their sessions close) and summarises what they did.
    pub async fn stop(mut self) -> SimSummary {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
        self.summary()
    }

    pub fn summary(&self) -> SimSummary {
        let collected = self.shared.collected();
        let mut counters = Counters::default();
        for agent in &collected.per_agent {
            add_counters(&mut counters, agent);
        }
        let fatal = self.shared.progress.borrow().fatal.clone();
        SimSummary {
            agents: self.config.agents,
            capacity: self.config.capacity,
            step_ms: u64::try_from(self.config.step.as_millis()).unwrap_or(u64::MAX),
            assigned: counters.assigned,
            succeeded: counters.succeeded,
            canceled: counters.canceled,
            stopped: counters.stopped,
            stale: counters.stale,
            report_errors: counters.report_errors,
            duplicate_assignments: counters.duplicate_assignments,
            over_capacity: counters.over_capacity,
            refused_draining: counters.refused_draining,
            held: counters.held,
            unacknowledged: counters.unacknowledged,
            sessions: collected.sessions,
            session_errors: collected.session_errors,
            first_error: fatal
                .or_else(|| collected.first_report_error.clone())
                .or_else(|| collected.first_session_error.clone()),
            report_ack_ms: LatencySummary::from_durations(collected.ack_samples.iter().copied()),
        }
    }
}

/// Why a session ended.
enum SessionEnd {
    /// The farm is stopping.
    Stopped,
    /// Worth connecting again; the coordinator's status, when it answered, may name the
    /// leader.
    Retry(String, Option<tonic::Status>),
    /// Refused for good (bad id, protocol, arguments).
    Fatal(String),
}

/// One agent: sessions until stopped, reconnecting with capped backoff.
async fn agent(
    index: usize,
    mut machine: Machine,
    coordinator: String,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let endpoints = match Endpoints::with_settings(
        &coordinator,
        Settings {
            connect_timeout: CONNECT_TIMEOUT,
            keepalive: Some(Duration::from_secs(10)),
            tcp_nodelay: true,
            ..Settings::default()
        },
    ) {
        Ok(endpoints) => endpoints,
        Err(error) => {
            let error = format!("{}: {error}", machine.agent_id());
            shared
                .progress
                .send_modify(|p| p.fatal = p.fatal.take().or(Some(error)));
            return;
        }
    };
    let mut backoff = RECONNECT_INITIAL;
    let mut failing_since: Option<Instant> = None;
    let mut hints_in_a_row = 0;
    let mut welcomed_once = false;
    let mut timers = Timers::default();
    loop {
        let url = endpoints.preferred();
        let mut welcomed = false;
        let end = session(
            index,
            &mut machine,
            (&endpoints, &url),
            &shared,
            &stop,
            (&mut welcomed_once, &mut welcomed),
            &mut timers,
        )
        .await;
        if welcomed {
            backoff = RECONNECT_INITIAL;
            failing_since = None;
            hints_in_a_row = 0;
        }
        let (error, status) = match end {
            SessionEnd::Stopped => return,
            SessionEnd::Fatal(error) => {
                let error = format!("{}: {error}", machine.agent_id());
                shared
                    .progress
                    .send_modify(|p| p.fatal = p.fatal.take().or(Some(error)));
                return;
            }
            SessionEnd::Retry(error, status) => (error, status),
        };
        {
            let mut collected = shared.collected();
            collected.session_errors += 1;
            if collected.first_session_error.is_none() {
                collected.first_session_error = Some(format!("{}: {error}", machine.agent_id()));
            }
        }
        let now = Instant::now();
        let since = *failing_since.get_or_insert(now);
        let pause = match endpoints.failed(&url, status.as_ref()) {
            Next::Leader(_) if hints_in_a_row < MAX_IMMEDIATE_HINTS => {
                hints_in_a_row += 1;
                Duration::ZERO
            }
            _ if now.duration_since(since) < FAST_FAILOVER => {
                hints_in_a_row = 0;
                endpoints::jitter(endpoints::ROTATE_JITTER.0, endpoints::ROTATE_JITTER.1)
            }
            _ => {
                hints_in_a_row = 0;
                let pause = backoff;
                backoff = (backoff * 2).min(RECONNECT_MAX);
                pause
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

fn add_counters(total: &mut Counters, more: &Counters) {
    total.assigned += more.assigned;
    total.duplicate_assignments += more.duplicate_assignments;
    total.over_capacity += more.over_capacity;
    total.refused_draining += more.refused_draining;
    total.succeeded += more.succeeded;
    total.canceled += more.canceled;
    total.stopped += more.stopped;
    total.stale += more.stale;
    total.report_errors += more.report_errors;
    total.max_active = total.max_active.max(more.max_active);
    total.held += more.held;
    total.unacknowledged += more.unacknowledged;
}

/// Step timers, earliest first.
#[derive(Default)]
struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u64, String)>>,
}

impl Timers {
    fn set(&mut self, at: Instant, epoch: u64, run_id: String) {
        self.heap.push(Reverse((at, epoch, run_id)));
    }

    fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    fn pop_due(&mut self, now: Instant) -> Option<(u64, String)> {
        if self.next().is_some_and(|at| at <= now) {
            self.heap
                .pop()
                .map(|Reverse((_, epoch, run_id))| (epoch, run_id))
        } else {
            None
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn retry(error: impl Into<String>) -> SessionEnd {
    SessionEnd::Retry(error.into(), None)
}

/// One session with the member at `url`: `Hello`, `Welcome`, then messages both ways until it
/// fails or the farm stops. Sets `welcomed` once a Welcome of our cluster arrived.
async fn session(
    index: usize,
    machine: &mut Machine,
    (endpoints, url): (&Endpoints, &str),
    shared: &Shared,
    stop: &CancellationToken,
    (welcomed_once, welcomed): (&mut bool, &mut bool),
    timers: &mut Timers,
) -> SessionEnd {
    let channel = match endpoints.connection(url) {
        Ok(channel) => channel,
        Err(status) => return SessionEnd::Fatal(status.message().to_string()),
    };
    let connect = async {
        let mut client = AgentServiceClient::new(channel);
        let (tx, rx) = mpsc::channel::<AgentMessage>(OUTBOUND_BUFFER);
        // Hello is queued before the call, so a coordinator that waits for it cannot deadlock
        // the handshake.
        tx.send(machine.hello())
            .await
            .map_err(|_| retry("session channel closed"))?;
        let mut inbound = client
            .session(ReceiverStream::new(rx))
            .await
            .map_err(|status| refused(&status, *welcomed_once))?
            .into_inner();
        let first = tokio::time::timeout(WELCOME_TIMEOUT, inbound.message())
            .await
            .map_err(|_| retry("no Welcome within 10 s"))?
            .map_err(|status| refused(&status, *welcomed_once))?;
        match first.and_then(|m| m.msg) {
            Some(coordinator_message::Msg::Welcome(welcome)) => Ok((tx, inbound, welcome)),
            Some(_) => Err(SessionEnd::Fatal(
                "the coordinator's first message is not a Welcome (does it speak agent protocol 2?)"
                    .to_string(),
            )),
            None => Err(retry(
                "the coordinator closed the session before its Welcome",
            )),
        }
    };
    let (tx, mut inbound, welcome) = tokio::select! {
        () = stop.cancelled() => return SessionEnd::Stopped,
        connected = connect => match connected {
            Ok(connected) => connected,
            Err(end) => return end,
        },
    };
    if let Err(mismatch) = endpoints.learn_cluster_id(&welcome.cluster_id) {
        return retry(format!("{url}: {mismatch}"));
    }
    *welcomed = true;
    endpoints.succeeded(url);
    let mut outbox: VecDeque<AgentMessage> = match machine.welcome(&welcome) {
        Ok(resend) => resend.into(),
        Err(error) => return SessionEnd::Fatal(error),
    };
    shared.collected().sessions += 1;
    if !*welcomed_once {
        *welcomed_once = true;
        shared.progress.send_modify(|p| p.welcomed += 1);
    }
    let heartbeat_every =
        Duration::from_millis(welcome.heartbeat_interval_ms).clamp(MIN_HEARTBEAT, MAX_HEARTBEAT);
    let lost_after = match welcome.lost_after_ms {
        0 => DEFAULT_LOST_AFTER,
        ms => Duration::from_millis(ms),
    };
    let mut heartbeat = tokio::time::interval_at(Instant::now() + heartbeat_every, heartbeat_every);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let session_started = Instant::now();

    loop {
        let has_outgoing = !outbox.is_empty();
        tokio::select! {
            () = stop.cancelled() => return SessionEnd::Stopped,
            message = inbound.message() => {
                let message = match message {
                    Ok(Some(message)) => message,
                    Ok(None) => return retry("the coordinator closed the session"),
                    Err(status) => return SessionEnd::Retry(status_line(&status), Some(status)),
                };
                last_heard = Instant::now();
                let actions = machine.handle(message, std::time::Instant::now());
                apply(actions, &mut outbox, timers, shared, session_started);
                publish(index, machine, shared);
            }
            permit = tx.reserve(), if has_outgoing => {
                let Ok(permit) = permit else {
                    return retry("the session stream closed");
                };
                if let Some(message) = outbox.pop_front() {
                    permit.send(message);
                }
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > lost_after {
                    return retry(format!("the coordinator was silent for {lost_after:?}"));
                }
                outbox.push_back(machine.heartbeat());
            }
            () = sleep_until_opt(timers.next()) => {
                let now = Instant::now();
                while let Some((epoch, run_id)) = timers.pop_due(now) {
                    let actions = machine.step_done(&run_id, epoch, std::time::Instant::now());
                    apply(actions, &mut outbox, timers, shared, session_started);
                }
                publish(index, machine, shared);
            }
        }
    }
}

/// Publishes an agent's counters (and its first rejected report) for the summary.
fn publish(index: usize, machine: &Machine, shared: &Shared) {
    let mut collected = shared.collected();
    if let Some(slot) = collected.per_agent.get_mut(index) {
        slot.clone_from(&machine.counters);
        slot.held = machine.active() as u64;
        slot.unacknowledged = machine.unacknowledged() as u64;
    }
    if collected.first_report_error.is_none() {
        collected
            .first_report_error
            .clone_from(&machine.first_error);
    }
}

/// Carries out the state machine's actions.
fn apply(
    actions: Vec<Action>,
    outbox: &mut VecDeque<AgentMessage>,
    timers: &mut Timers,
    shared: &Shared,
    session_started: Instant,
) {
    let mut finished = 0;
    for action in actions {
        match action {
            Action::Send(message) => outbox.push_back(message),
            Action::Wake {
                run_id,
                epoch,
                after,
            } => timers.set(Instant::now() + after, epoch, run_id),
            Action::Assigned { .. } => {
                let mut collected = shared.collected();
                if collected.assignments.len() >= MAX_ASSIGNMENT_LOG {
                    collected.assignments.pop_front();
                }
                collected
                    .assignments
                    .push_back((session_started, Instant::now()));
            }
            Action::Executing { run_id, epoch } => {
                let mut collected = shared.collected();
                if collected.executions.len() < MAX_EXECUTIONS
                    || collected.executions.contains_key(&run_id)
                {
                    collected
                        .executions
                        .entry(run_id)
                        .or_default()
                        .insert(epoch);
                }
            }
            Action::Acked(latency) => {
                let mut collected = shared.collected();
                if collected.ack_samples.len() < MAX_ACK_SAMPLES {
                    collected.ack_samples.push(latency);
                }
            }
            Action::Finished {
                submitter, status, ..
            } => {
                let mut collected = shared.collected();
                let known = collected.by_submitter.contains_key(&submitter);
                let key = if known || collected.by_submitter.len() < MAX_SUBMITTERS {
                    submitter
                } else {
                    String::new()
                };
                let tally = collected.by_submitter.entry(key).or_insert(Tally {
                    finished: 0,
                    last_finish: Instant::now(),
                });
                if status == RunStatus::Succeeded || status == RunStatus::Canceled {
                    tally.finished += 1;
                    tally.last_finish = Instant::now();
                }
                finished += 1;
            }
        }
    }
    if finished > 0 {
        shared.progress.send_modify(|p| p.finished += finished);
    }
}

/// A status the coordinator refused the session with: fatal for a bad protocol or argument,
/// and for a taken agent id on the first connection (a reconnect may race the old session).
fn refused(status: &tonic::Status, welcomed_once: bool) -> SessionEnd {
    let line = status_line(status);
    match status.code() {
        tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument => SessionEnd::Fatal(line),
        tonic::Code::AlreadyExists if !welcomed_once => SessionEnd::Fatal(line),
        _ => SessionEnd::Retry(line, Some(status.clone())),
    }
}

fn status_line(status: &tonic::Status) -> String {
    if endpoints::is_transport(status) {
        return format!("cannot connect: {}", endpoints::status_detail(status));
    }
    let message = status.message().lines().next().unwrap_or_default().trim();
    if message.is_empty() {
        format!("{:?}", status.code())
    } else {
        format!("{:?}: {message}", status.code())
    }
}

/// Runs simulated agents until `interrupt` or `limit`, printing a summary line every
/// `progress_every`; returns their summary.
pub async fn run_until(
    config: SimConfig,
    interrupt: CancellationToken,
    limit: Duration,
    progress_every: Duration,
) -> anyhow::Result<SimSummary> {
    let farm = SimFarm::start(config);
    let connected = tokio::select! {
        result = farm.wait_connected(WELCOME_TIMEOUT + CONNECT_TIMEOUT) => result,
        () = interrupt.cancelled() => Ok(()),
    };
    if let Err(error) = connected {
        farm.stop().await;
        return Err(error);
    }
    eprintln!(
        "kiln-loadtest: {} simulated agents connected; Ctrl-C stops them",
        farm.config.agents
    );
    let start = Instant::now();
    let mut ticker = tokio::time::interval_at(start + progress_every, progress_every);
    let mut progress = farm.progress();
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = interrupt.cancelled() => break,
            () = &mut deadline => break,
            _ = ticker.tick() => {
                let summary = farm.summary();
                eprintln!(
                    "kiln-loadtest: {:>6.1}s  assigned {}  succeeded {}  canceled {}  holding {}  unacknowledged reports {}",
                    start.elapsed().as_secs_f64(),
                    summary.assigned,
                    summary.succeeded,
                    summary.canceled,
                    summary.held,
                    summary.unacknowledged
                );
            }
            changed = progress.changed() => {
                if changed.is_err() || progress.borrow().fatal.is_some() {
                    break;
                }
            }
        }
    }
    let fatal = progress.borrow().fatal.clone();
    let summary = farm.stop().await;
    match fatal {
        Some(fatal) => Err(anyhow!("a simulated agent was refused: {fatal}")),
        None => Ok(summary),
    }
}

#[cfg(test)]
mod tests;

//! Drives raft-rs: one OS thread owns the `RawNode` and reads one bounded inbox of proposals,
//! peer messages, read-index requests and admin requests; it ticks, persists each Ready in one
//! synced batch, applies committed commands to the [`State`] and hands messages to the
//! [`Transport`].
//!
//! Ready order (raft-rs 0.7's documented one): send the leader's messages at once; apply a
//! received snapshot; apply committed entries in memory; write entries, hard state and the
//! applied state in ONE synced batch; answer proposers; send the messages that must follow
//! persistence (votes, append responses); advance; the light ready the same way. Crash points
//! (`store::CRASH_POINTS`) sit between these steps.
//!
//! A proposal is identified by the (index, term) its entry got: when that index is applied with
//! another term, a leader change replaced it and its proposer is told the outcome is unknown.
//! Nothing changes the state except through here. If the thread fails, it says so on
//! [`RaftHandle::failed`] and the process stops (fail-stop): a coordinator that cannot persist
//! must not keep answering.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, RwLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message as _;
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry, EntryType, Message as RaftMessage,
};
use raft::{ProgressState, RawNode, SnapshotStatus, StateRole};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use kiln_state::pb::{command, ApplyResult, Command, Member, StateSnapshot};
use kiln_state::State;

use crate::cluster_api::CommitLatency;
use crate::store::{crash_point, Applied, Persist, RaftStorage, Store};
use crate::transport::Transport;

/// Messages waiting for the Raft thread. When it is full, proposers are told to retry and peer
/// messages are dropped (Raft resends).
const INBOX: usize = 8192;
/// Most inbox messages handled before the next Ready, so that many proposals share one fsync.
const BATCH: usize = 4096;
/// How long a proposer waits for its command to be committed and applied.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a linearizable read waits for the leader to confirm it still leads.
const READ_TIMEOUT: Duration = Duration::from_secs(3);
/// A learner is promoted to voter once it is this close to the commit index.
const PROMOTE_WITHIN: u64 = 100;

/// Raft timing and log-size settings.
#[derive(Clone, Copy, Debug)]
pub struct RaftConfig {
    /// Raft's logical clock.
    pub tick: Duration,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
    /// Ticks of silence before a follower campaigns (randomised up to twice this).
    pub election_ticks: usize,
    /// Compact the log once this many applied entries are kept.
    pub compact_after: u64,
    /// Entries kept after compaction, so a briefly lagging follower catches up from the log.
    pub catch_up_entries: u64,
}

impl Default for RaftConfig {
    /// 50 ms ticks, heartbeat every 100 ms, elections after 500–1000 ms of silence: detection
    /// plus pre-vote, vote and the new leader's first commit fit in the 1.5 s failover goal.
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(50),
            heartbeat_ticks: 2,
            election_ticks: 10,
            compact_after: 10_000,
            catch_up_entries: 5_000,
        }
    }
}

impl RaftConfig {
    /// The silence after which a follower campaigns (at the least; raft-rs randomises it up
    /// to twice this).
    pub fn election_timeout(&self) -> Duration {
        self.tick * self.election_ticks as u32
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    #[error("{0}")]
    NotLeader(NotLeader),
    #[error("the coordinator is overloaded: too many proposals in flight, retry shortly")]
    Overloaded,
    #[error("the coordinator is shutting down")]
    ShuttingDown,
    #[error("the command was not committed within {0:?}; its outcome is unknown")]
    Timeout(Duration),
    #[error("the leader changed before the command was committed; its outcome is unknown")]
    LeaderChanged,
    #[error("{0}")]
    Rejected(String),
    /// Rejected because the report's lease is not the run's current one.
    #[error("{0}")]
    Stale(String),
}

/// This node does not lead; who does, if known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotLeader {
    pub node_id: u64,
    pub leader_id: u64,
    /// The leader's client address, when it is in the address book.
    pub leader_url: String,
}

impl std::fmt::Display for NotLeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.leader_id, self.leader_url.as_str()) {
            (0, _) => write!(
                f,
                "node {} is not the leader and no leader is elected yet; retry shortly",
                self.node_id
            ),
            (leader, "") => write!(
                f,
                "node {} is not the leader; the leader is node {leader}",
                self.node_id
            ),
            (leader, url) => write!(
                f,
                "node {} is not the leader; the leader is node {leader} at {url}",
                self.node_id
            ),
        }
    }
}

/// Raft's view from this node, published after every Ready.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RaftStatus {
    pub node_id: u64,
    pub role: Role,
    pub term: u64,
    pub leader_id: u64,
    /// This node leads and has applied its term's first entry: its state is complete and it
    /// may act (dispatch, answer reads).
    pub ready_leader: bool,
    /// There is a leader and this node has applied an entry of the current term.
    pub ready: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    Leader,
    #[default]
    Follower,
    Candidate,
    Learner,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
        }
    }
}

/// A member's progress as the leader sees it.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    pub id: u64,
    pub learner: bool,
    pub matched: u64,
    pub last_contact: Option<Duration>,
}

/// What `kiln cluster status` shows of one node.
#[derive(Clone, Debug, Default)]
pub struct StatusReport {
    pub status: RaftStatus,
    pub commit: u64,
    pub applied: u64,
    pub first_index: u64,
    pub last_index: u64,
    pub snapshot_index: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// Every member's progress, on the leader only.
    pub progress: Vec<Progress>,
}

type Reply<T> = oneshot::Sender<Result<T, ProposeError>>;

/// An admin request for the Raft thread.
pub enum Admin {
    AddLearner(Member),
    Remove(u64),
    /// 0: the most caught-up voter.
    TransferLeader(u64),
}

/// A saved snapshot: its bytes, index and term.
type SavedSnapshot = Result<(Vec<u8>, u64, u64), String>;

enum Inbox {
    Propose(Box<Command>, Reply<ApplyResult>),
    Step(RaftMessage),
    Unreachable(u64),
    Snapshot(u64, SnapshotStatus),
    ReadIndex(Reply<u64>),
    Admin(Admin, Reply<u64>),
    Status(oneshot::Sender<StatusReport>),
    SaveSnapshot(oneshot::Sender<SavedSnapshot>),
}

/// The rest of the coordinator's view of Raft: propose commands, read the applied state.
#[derive(Clone)]
pub struct RaftHandle {
    inbox: SyncSender<Inbox>,
    state: Arc<RwLock<State>>,
    applied: watch::Receiver<u64>,
    status: watch::Receiver<RaftStatus>,
    failed: CancellationToken,
    failure: Arc<std::sync::Mutex<String>>,
    latency: Arc<CommitLatency>,
    pub node_id: u64,
    pub cluster_id: u64,
}

impl RaftHandle {
    /// Proposes a command stamped with the current time and waits until it is applied.
    /// A command the state machine rejects comes back as [`ProposeError::Rejected`].
    pub async fn propose(&self, kind: command::Kind) -> Result<ApplyResult, ProposeError> {
        self.propose_enqueued(kind)?.await
    }

    /// Like [`RaftHandle::propose`], but the command enters the Raft thread's inbox before
    /// this returns (the future only waits for the outcome): commands enqueued one after
    /// another from one task are appended to the log in that order. Fails at once when the
    /// inbox is full or the Raft thread stopped.
    pub fn propose_enqueued(
        &self,
        kind: command::Kind,
    ) -> Result<
        impl std::future::Future<Output = Result<ApplyResult, ProposeError>> + Send + 'static,
        ProposeError,
    > {
        let command = Command {
            at_ms: now_ms(),
            kind: Some(kind),
        };
        let (reply, response) = oneshot::channel();
        self.send(Inbox::Propose(Box::new(command), reply))?;
        Ok(async move {
            match tokio::time::timeout(PROPOSE_TIMEOUT, response).await {
                Err(_) => Err(ProposeError::Timeout(PROPOSE_TIMEOUT)),
                Ok(Err(_)) => Err(ProposeError::ShuttingDown),
                Ok(Ok(Err(error))) => Err(error),
                Ok(Ok(Ok(result))) if result.stale_lease => Err(ProposeError::Stale(result.error)),
                Ok(Ok(Ok(result))) if !result.error.is_empty() => {
                    Err(ProposeError::Rejected(result.error))
                }
                Ok(Ok(Ok(result))) => Ok(result),
            }
        })
    }

    /// This node's commit latency since it started: (upper bound in µs, count) of every
    /// non-empty bucket, lowest first. Only a leader's proposals are counted.
    pub fn commit_latency(&self) -> Vec<(u64, u64)> {
        self.latency.buckets()
    }

    fn send(&self, message: Inbox) -> Result<(), ProposeError> {
        match self.inbox.try_send(message) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(ProposeError::Overloaded),
            Err(TrySendError::Disconnected(_)) => Err(ProposeError::ShuttingDown),
        }
    }

    /// Waits until this node has applied everything committed before the call, as confirmed
    /// by a quorum (ReadIndex): a read after this sees every write acknowledged before it.
    pub async fn linearizable(&self) -> Result<(), ProposeError> {
        let (reply, response) = oneshot::channel();
        self.send(Inbox::ReadIndex(reply))?;
        let index = match tokio::time::timeout(READ_TIMEOUT, response).await {
            Err(_) => return Err(ProposeError::Timeout(READ_TIMEOUT)),
            Ok(Err(_)) => return Err(ProposeError::ShuttingDown),
            Ok(Ok(result)) => result?,
        };
        let mut applied = self.applied.clone();
        let result = tokio::time::timeout(READ_TIMEOUT, applied.wait_for(|a| *a >= index))
            .await
            .map(|r| r.map(|_| ()));
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ProposeError::ShuttingDown),
            Err(_) => Err(ProposeError::Timeout(READ_TIMEOUT)),
        }
    }

    /// Reads the applied state. Keep `read` short: the Raft thread waits for it to apply.
    pub fn read<R>(&self, read: impl FnOnce(&State) -> R) -> R {
        let state = self
            .state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        read(&state)
    }

    /// Changes whenever a new entry has been applied.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    pub fn status(&self) -> RaftStatus {
        self.status.borrow().clone()
    }

    pub fn status_watch(&self) -> watch::Receiver<RaftStatus> {
        self.status.clone()
    }

    /// This node leads and has applied its term's first entry.
    pub fn is_leader(&self) -> bool {
        self.status.borrow().ready_leader
    }

    /// `Ok` on the ready leader; else who leads.
    pub fn require_leader(&self) -> Result<(), NotLeader> {
        let status = self.status();
        if status.ready_leader {
            return Ok(());
        }
        Err(self.not_leader(&status))
    }

    pub fn not_leader(&self, status: &RaftStatus) -> NotLeader {
        let leader_id = if status.role == Role::Leader {
            0
        } else {
            status.leader_id
        };
        let leader_url = self.read(|state| {
            state
                .member(leader_id)
                .map(|m| m.client_url.clone())
                .unwrap_or_default()
        });
        NotLeader {
            node_id: self.node_id,
            leader_id,
            leader_url,
        }
    }

    /// Resolves once this node leads the group and may act.
    pub async fn wait_for_leadership(&self) {
        let mut status = self.status.clone();
        let _ = status.wait_for(|status| status.ready_leader).await;
    }

    /// Cancelled when the Raft thread stopped because of an error.
    pub fn failed(&self) -> CancellationToken {
        self.failed.clone()
    }

    /// Why the Raft thread stopped, once [`RaftHandle::failed`] is cancelled.
    pub fn failure(&self) -> String {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A Raft message from a peer. Dropped when the inbox is full: Raft resends.
    pub fn step(&self, message: RaftMessage) {
        let _ = self.inbox.try_send(Inbox::Step(message));
    }

    pub(crate) fn report_unreachable(&self, id: u64) {
        let _ = self.inbox.try_send(Inbox::Unreachable(id));
    }

    pub(crate) fn report_snapshot(&self, id: u64, status: SnapshotStatus) {
        // Must not be lost, or the follower's progress stays paused: block briefly if full.
        let _ = self.inbox.send(Inbox::Snapshot(id, status));
    }

    pub async fn status_report(&self) -> Result<StatusReport, ProposeError> {
        let (reply, response) = oneshot::channel();
        self.send(Inbox::Status(reply))?;
        response.await.map_err(|_| ProposeError::ShuttingDown)
    }

    /// Runs a membership or leadership change on the leader; returns the log index of the
    /// configuration change (or the new leader's id for a transfer) once it took effect.
    pub async fn admin(&self, admin: Admin) -> Result<u64, ProposeError> {
        let (reply, response) = oneshot::channel();
        self.send(Inbox::Admin(admin, reply))?;
        match tokio::time::timeout(PROPOSE_TIMEOUT, response).await {
            Err(_) => Err(ProposeError::Timeout(PROPOSE_TIMEOUT)),
            Ok(Err(_)) => Err(ProposeError::ShuttingDown),
            Ok(Ok(result)) => result,
        }
    }

    /// A consistent snapshot of the applied state: its bytes (`StateSnapshot`), index and term.
    pub async fn save_snapshot(&self) -> SavedSnapshot {
        let (reply, response) = oneshot::channel();
        self.send(Inbox::SaveSnapshot(reply))
            .map_err(|e| e.to_string())?;
        response
            .await
            .map_err(|_| "the coordinator is shutting down".to_string())?
    }
}

/// Opens the Raft node on `store` (already initialized as a member), loads the applied state
/// and starts the Raft thread.
pub fn start(
    store: Store,
    node_id: u64,
    cluster_id: u64,
    config: RaftConfig,
    transport: Transport,
    shutdown: CancellationToken,
) -> anyhow::Result<(RaftHandle, thread::JoinHandle<()>)> {
    let applied = store.applied_index()?;
    let state = Arc::new(RwLock::new(store.load_state()?));
    let raft_config = raft::Config {
        id: node_id,
        election_tick: config.election_ticks,
        heartbeat_tick: config.heartbeat_ticks,
        applied,
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        max_uncommitted_size: 32 * 1024 * 1024,
        max_committed_size_per_ready: 4 * 1024 * 1024,
        ..raft::Config::default()
    };
    raft_config.validate()?;
    let logger = slog::Logger::root(TracingDrain, slog::o!());
    let storage = RaftStorage {
        store: store.clone(),
        state: state.clone(),
    };
    let mut node = RawNode::new(&raft_config, storage.clone(), &logger)?;
    // A sole voter has nobody to wait for: campaign at once instead of after a timeout.
    let voters: Vec<u64> = node.raft.prs().conf().voters().ids().iter().collect();
    if voters == [node_id] {
        node.campaign()?;
    }
    let (inbox_tx, inbox) = mpsc::sync_channel(INBOX);
    let (applied_tx, applied_rx) = watch::channel(applied);
    let (status_tx, status_rx) = watch::channel(RaftStatus {
        node_id,
        ..RaftStatus::default()
    });
    let failed = CancellationToken::new();
    let failure = Arc::new(std::sync::Mutex::new(String::new()));
    let latency = Arc::new(CommitLatency::default());
    let handle = RaftHandle {
        inbox: inbox_tx,
        state: state.clone(),
        applied: applied_rx,
        status: status_rx,
        failed: failed.clone(),
        failure: failure.clone(),
        latency: latency.clone(),
        node_id,
        cluster_id,
    };
    transport.attach(handle.clone());
    transport.set_members(state.read().unwrap_or_else(|p| p.into_inner()).members());
    let mut driver = Driver {
        node,
        storage,
        store,
        state,
        config,
        transport,
        pending: BTreeMap::new(),
        reads: HashMap::new(),
        next_read: AtomicU64::new(1),
        admin: None,
        transfer: None,
        applied: applied_tx,
        status: status_tx,
        last_heard: HashMap::new(),
        removed: false,
        latency,
    };
    let thread = thread::Builder::new()
        .name("raft".to_string())
        .spawn(move || {
            if let Err(error) = driver.run(inbox, shutdown) {
                let reason = format!("{error:#}");
                tracing::error!(error = %reason, "the Raft thread stopped; the coordinator stops");
                *failure.lock().unwrap_or_else(|p| p.into_inner()) = reason;
                failed.cancel();
            }
        })?;
    Ok((handle, thread))
}

struct Driver {
    node: RawNode<RaftStorage>,
    storage: RaftStorage,
    store: Store,
    state: Arc<RwLock<State>>,
    config: RaftConfig,
    transport: Transport,
    /// This node's proposals waiting to be applied: index → (term, reply, when the Raft
    /// thread received it).
    pending: BTreeMap<u64, (u64, Reply<ApplyResult>, Instant)>,
    /// Read-index requests by their context.
    reads: HashMap<u64, Reply<u64>>,
    next_read: AtomicU64,
    /// The one admin change in flight: its entry's (index, term) once proposed.
    admin: Option<(u64, u64, Reply<u64>)>,
    /// A leadership transfer waiting for another node to lead.
    transfer: Option<(Instant, Reply<u64>)>,
    applied: watch::Sender<u64>,
    status: watch::Sender<RaftStatus>,
    /// When each peer was last heard from.
    last_heard: HashMap<u64, Instant>,
    /// This node was removed from the cluster.
    removed: bool,
    /// Proposal received → applied, persisted and its proposer answered.
    latency: Arc<CommitLatency>,
}

impl Driver {
    fn run(
        &mut self,
        inbox: mpsc::Receiver<Inbox>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut last_tick = Instant::now();
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let wait = self.config.tick.saturating_sub(last_tick.elapsed());
            match inbox.recv_timeout(wait) {
                Ok(message) => {
                    self.handle(message);
                    // Take whatever else is waiting, so that it shares this Ready's fsync.
                    for message in inbox.try_iter().take(BATCH) {
                        self.handle(message);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if last_tick.elapsed() >= self.config.tick {
                self.node.tick();
                last_tick = Instant::now();
                self.on_tick();
            }
            self.on_ready()?;
            if self.removed {
                anyhow::bail!("this member was removed from the cluster");
            }
        }
        self.fail_all(ProposeError::ShuttingDown);
        Ok(())
    }

    fn fail_all(&mut self, error: ProposeError) {
        for (_, (_, reply, _)) in std::mem::take(&mut self.pending) {
            let _ = reply.send(Err(error.clone()));
        }
        for (_, reply) in self.reads.drain() {
            let _ = reply.send(Err(error.clone()));
        }
        if let Some((_, _, reply)) = self.admin.take() {
            let _ = reply.send(Err(error.clone()));
        }
        if let Some((_, reply)) = self.transfer.take() {
            let _ = reply.send(Err(error));
        }
    }

    fn not_leader(&self) -> ProposeError {
        let leader_id = self.node.raft.leader_id;
        let leader_url = self
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .member(leader_id)
            .map(|m| m.client_url.clone())
            .unwrap_or_default();
        ProposeError::NotLeader(NotLeader {
            node_id: self.node.raft.id,
            leader_id: if self.node.raft.state == StateRole::Leader {
                0
            } else {
                leader_id
            },
            leader_url,
        })
    }

    fn is_ready_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader && self.node.raft.apply_to_current_term()
    }

    fn handle(&mut self, message: Inbox) {
        match message {
            Inbox::Propose(command, reply) => self.propose(*command, reply),
            Inbox::Step(message) => {
                let from = message.get_from();
                self.last_heard.insert(from, Instant::now());
                if let Err(error) = self.node.step(message) {
                    tracing::debug!(%error, from, "ignored a raft message");
                }
            }
            Inbox::Unreachable(id) => self.node.report_unreachable(id),
            Inbox::Snapshot(id, status) => self.node.report_snapshot(id, status),
            Inbox::ReadIndex(reply) => {
                if !self.is_ready_leader() {
                    let _ = reply.send(Err(self.not_leader()));
                    return;
                }
                let id = self.next_read.fetch_add(1, Ordering::Relaxed);
                self.reads.insert(id, reply);
                self.node.read_index(id.to_be_bytes().to_vec());
            }
            Inbox::Admin(admin, reply) => self.admin(admin, reply),
            Inbox::Status(reply) => {
                let _ = reply.send(self.status_report());
            }
            Inbox::SaveSnapshot(reply) => {
                let result = self
                    .storage
                    .build_snapshot()
                    .map(|snapshot| {
                        let metadata = snapshot.get_metadata();
                        (
                            snapshot.get_data().to_vec(),
                            metadata.get_index(),
                            metadata.get_term(),
                        )
                    })
                    .map_err(|e| e.to_string());
                let _ = reply.send(result);
            }
        }
    }

    fn propose(&mut self, command: Command, reply: Reply<ApplyResult>) {
        let received = Instant::now();
        if !self.is_ready_leader() {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        let data = command.encode_to_vec();
        let before = self.node.raft.raft_log.last_index();
        match self.node.propose(Vec::new(), data) {
            Ok(()) => {
                let index = self.node.raft.raft_log.last_index();
                if index == before {
                    let _ = reply.send(Err(ProposeError::Overloaded));
                    return;
                }
                self.pending
                    .insert(index, (self.node.raft.term, reply, received));
            }
            // Dropped: no leader any more, a transfer in progress, or too much uncommitted.
            Err(raft::Error::ProposalDropped) => {
                let error = if self.node.raft.state == StateRole::Leader {
                    ProposeError::Overloaded
                } else {
                    self.not_leader()
                };
                let _ = reply.send(Err(error));
            }
            Err(error) => {
                let _ = reply.send(Err(ProposeError::Rejected(error.to_string())));
            }
        }
    }

    fn admin(&mut self, admin: Admin, reply: Reply<u64>) {
        if !self.is_ready_leader() {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        if let Admin::TransferLeader(target) = admin {
            let target = if target == 0 {
                match self.best_transferee() {
                    Some(id) => id,
                    None => {
                        let _ = reply.send(Err(ProposeError::Rejected(
                            "there is no other voter to hand leadership to".to_string(),
                        )));
                        return;
                    }
                }
            } else {
                target
            };
            if target == self.node.raft.id {
                let _ = reply.send(Ok(target));
                return;
            }
            if !self.node.raft.prs().conf().voters().contains(target) {
                let _ = reply.send(Err(ProposeError::Rejected(format!(
                    "node {target} is not a voting member"
                ))));
                return;
            }
            self.node.transfer_leader(target);
            self.transfer = Some((Instant::now(), reply));
            return;
        }
        if self.admin.is_some() || self.node.raft.has_pending_conf() {
            let _ = reply.send(Err(ProposeError::Rejected(
                "another membership change is in progress; retry when it is done".to_string(),
            )));
            return;
        }
        let conf = self.node.raft.prs().conf();
        let voters: Vec<u64> = conf.voters().ids().iter().collect();
        let learners: Vec<u64> = conf.learners().iter().copied().collect();
        let (change, context) = match admin {
            Admin::AddLearner(member) => {
                if voters.contains(&member.id) || learners.contains(&member.id) {
                    let _ = reply.send(Err(ProposeError::Rejected(format!(
                        "node {} is already a member",
                        member.id
                    ))));
                    return;
                }
                (
                    single(member.id, ConfChangeType::AddLearnerNode),
                    member.encode_to_vec(),
                )
            }
            Admin::Remove(id) => {
                let is_member = voters.contains(&id) || learners.contains(&id);
                if !is_member {
                    let _ = reply.send(Err(ProposeError::Rejected(format!(
                        "node {id} is not a member"
                    ))));
                    return;
                }
                if voters == [id] {
                    let _ = reply.send(Err(ProposeError::Rejected(
                        "the last voter cannot be removed".to_string(),
                    )));
                    return;
                }
                if id == self.node.raft.id {
                    // Hand leadership over first; the caller retries on the new leader.
                    if let Some(target) = self.best_transferee() {
                        self.node.transfer_leader(target);
                    }
                    let _ = reply.send(Err(self.not_leader_after_transfer()));
                    return;
                }
                (single(id, ConfChangeType::RemoveNode), Vec::new())
            }
            Admin::TransferLeader(_) => unreachable!("handled above"),
        };
        let mut cc = ConfChangeV2::default();
        cc.set_changes(vec![change].into());
        let before = self.node.raft.raft_log.last_index();
        match self.node.propose_conf_change(context, cc) {
            Ok(()) if self.node.raft.raft_log.last_index() > before => {
                let index = self.node.raft.raft_log.last_index();
                self.admin = Some((index, self.node.raft.term, reply));
            }
            Ok(()) => {
                let _ = reply.send(Err(ProposeError::Rejected(
                    "the membership change was dropped; retry".to_string(),
                )));
            }
            Err(error) => {
                let _ = reply.send(Err(ProposeError::Rejected(error.to_string())));
            }
        }
    }

    fn not_leader_after_transfer(&self) -> ProposeError {
        ProposeError::NotLeader(NotLeader {
            node_id: self.node.raft.id,
            leader_id: 0,
            leader_url: String::new(),
        })
    }

    /// The voter other than this one with the most of the log.
    fn best_transferee(&self) -> Option<u64> {
        let me = self.node.raft.id;
        let prs = self.node.raft.prs();
        prs.conf()
            .voters()
            .ids()
            .iter()
            .filter(|id| *id != me)
            .max_by_key(|id| prs.get(*id).map_or(0, |p| p.matched))
    }

    fn on_tick(&mut self) {
        // A transfer that did not happen within an election timeout is abandoned by raft-rs.
        if let Some((since, _)) = &self.transfer {
            let limit = self.config.tick * (self.config.election_ticks as u32) * 2;
            if since.elapsed() > limit {
                let stepped_down = self.node.raft.state != StateRole::Leader;
                if let Some((_, reply)) = self.transfer.take() {
                    let _ = reply.send(if stepped_down {
                        Ok(self.node.raft.leader_id)
                    } else {
                        Err(ProposeError::Rejected(
                            "the leadership transfer did not complete; is the target up and caught up?"
                                .to_string(),
                        ))
                    });
                }
            }
        }
        // Promote a learner that caught up (one change at a time).
        if self.is_ready_leader() && self.admin.is_none() && !self.node.raft.has_pending_conf() {
            let commit = self.node.raft.raft_log.committed;
            let prs = self.node.raft.prs();
            let ready: Option<u64> = prs.conf().learners().iter().copied().find(|id| {
                prs.get(*id).is_some_and(|p| {
                    p.state == ProgressState::Replicate && p.matched + PROMOTE_WITHIN >= commit
                })
            });
            if let Some(id) = ready {
                let mut cc = ConfChangeV2::default();
                cc.set_changes(vec![single(id, ConfChangeType::AddNode)].into());
                let context = self
                    .state
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .member(id)
                    .map(|m| m.encode_to_vec())
                    .unwrap_or_default();
                tracing::info!(id, "promoting a caught-up learner to voter");
                if let Err(error) = self.node.propose_conf_change(context, cc) {
                    tracing::warn!(%error, id, "could not propose the promotion");
                }
            }
        }
    }

    fn status_report(&self) -> StatusReport {
        let raft = &self.node.raft;
        let conf = raft.prs().conf();
        let voters: Vec<u64> = conf.voters().ids().iter().collect();
        let mut learners: Vec<u64> = conf.learners().iter().copied().collect();
        learners.sort_unstable();
        let progress = if raft.state == StateRole::Leader {
            raft.prs()
                .iter()
                .map(|(id, p)| Progress {
                    id: *id,
                    learner: learners.contains(id),
                    matched: p.matched,
                    last_contact: if *id == raft.id {
                        Some(Duration::ZERO)
                    } else {
                        self.last_heard.get(id).map(Instant::elapsed)
                    },
                })
                .collect()
        } else {
            Vec::new()
        };
        StatusReport {
            status: self.current_status(),
            commit: raft.raft_log.committed,
            applied: raft.raft_log.applied,
            first_index: self.store.truncated().0 + 1,
            last_index: raft.raft_log.last_index(),
            snapshot_index: self.store.truncated().0,
            voters,
            learners,
            progress,
        }
    }

    fn current_status(&self) -> RaftStatus {
        let raft = &self.node.raft;
        let learner = raft.prs().conf().learners().contains(&raft.id);
        let role = match raft.state {
            StateRole::Leader => Role::Leader,
            StateRole::Candidate | StateRole::PreCandidate => Role::Candidate,
            StateRole::Follower if learner => Role::Learner,
            StateRole::Follower => Role::Follower,
        };
        RaftStatus {
            node_id: raft.id,
            role,
            term: raft.term,
            leader_id: raft.leader_id,
            ready_leader: self.is_ready_leader(),
            ready: raft.leader_id != 0 && raft.apply_to_current_term(),
        }
    }

    fn on_ready(&mut self) -> anyhow::Result<()> {
        if !self.node.has_ready() {
            self.publish_status();
            return Ok(());
        }
        let mut ready = self.node.ready();
        // The leader's appends and heartbeats may go before its own write (raft thesis §10.2.1).
        self.transport.send(ready.take_messages());
        if !ready.snapshot().is_empty() {
            self.apply_snapshot(ready.snapshot().clone(), ready.hs().cloned())?;
        }
        for read in ready.read_states() {
            if let Ok(bytes) = <[u8; 8]>::try_from(read.request_ctx.as_slice()) {
                if let Some(reply) = self.reads.remove(&u64::from_be_bytes(bytes)) {
                    let _ = reply.send(Ok(read.index));
                }
            }
        }
        let committed = ready.take_committed_entries();
        let outcome = self.apply_entries(&committed)?;
        self.persist(ready.entries(), ready.hs().cloned(), None, outcome)?;
        if !ready.persisted_messages().is_empty() {
            crash_point!("raft-before-persisted-messages");
        }
        self.transport.send(ready.take_persisted_messages());

        let mut light = self.node.advance(ready);
        self.transport.send(light.take_messages());
        let committed = light.take_committed_entries();
        let outcome = self.apply_entries(&committed)?;
        self.persist(&[], None, light.commit_index(), outcome)?;
        self.node.advance_apply();
        self.maybe_compact()?;
        self.publish_status();
        Ok(())
    }

    fn publish_status(&mut self) {
        let status = self.current_status();
        let was_leader = self.status.borrow().role == Role::Leader;
        if was_leader && status.role != Role::Leader {
            // Reads waiting for this leader's confirmation will not get it.
            for (_, reply) in self.reads.drain() {
                let _ = reply.send(Err(ProposeError::LeaderChanged));
            }
        }
        // The transfer is done once another member is known to lead.
        if status.leader_id != self.node.raft.id && status.leader_id != 0 {
            if let Some((_, reply)) = self.transfer.take() {
                let _ = reply.send(Ok(status.leader_id));
            }
        }
        self.status.send_if_modified(|current| {
            if *current == status {
                false
            } else {
                *current = status;
                true
            }
        });
    }

    /// Applies committed entries to the in-memory state; returns what to persist and whom to
    /// answer.
    fn apply_entries(&mut self, entries: &[Entry]) -> anyhow::Result<Option<Outcome>> {
        let Some(last) = entries.last().map(Entry::get_index) else {
            return Ok(None);
        };
        let mut outcome = Outcome {
            index: last,
            ..Outcome::default()
        };
        let mut state = self
            .state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for entry in entries {
            let index = entry.get_index();
            let result = match entry.get_entry_type() {
                // The empty entry a new leader appends to commit its term.
                EntryType::EntryNormal if entry.get_data().is_empty() => None,
                EntryType::EntryNormal => Some(match Command::decode(entry.get_data()) {
                    Ok(command) => {
                        outcome.members_changed |=
                            matches!(command.kind, Some(command::Kind::SetMember(_)));
                        let applied = state.apply(index, &command);
                        outcome.changed.extend(applied.changed_run);
                        outcome.removed.extend(applied.removed_runs);
                        outcome.meta |= applied.meta_changed;
                        applied.result
                    }
                    Err(error) => ApplyResult {
                        error: format!("undecodable command at index {index}: {error}"),
                        ..ApplyResult::default()
                    },
                }),
                EntryType::EntryConfChange => {
                    let change: raft::eraftpb::ConfChange =
                        protobuf::Message::parse_from_bytes(entry.get_data())?;
                    let conf_state = self.node.apply_conf_change(&change)?;
                    outcome.conf_state = Some(conf_state);
                    None
                }
                EntryType::EntryConfChangeV2 => {
                    let change: ConfChangeV2 =
                        protobuf::Message::parse_from_bytes(entry.get_data())?;
                    let conf_state = self.node.apply_conf_change(&change)?;
                    let member = Member::decode(entry.get_context())
                        .ok()
                        .filter(|m| m.id != 0);
                    for single in change.get_changes() {
                        match single.get_change_type() {
                            ConfChangeType::RemoveNode => {
                                state.apply_membership(None, Some(single.get_node_id()));
                                if single.get_node_id() == self.node.raft.id {
                                    self.removed = true;
                                }
                            }
                            _ => state.apply_membership(member.clone(), None),
                        }
                    }
                    outcome.meta = true;
                    outcome.members_changed = true;
                    outcome.conf_state = Some(conf_state);
                    if let Some((admin_index, term, _)) = &self.admin {
                        if *admin_index == index {
                            let same = *term == entry.get_term();
                            if let Some((_, _, reply)) = self.admin.take() {
                                let _ = reply.send(if same {
                                    Ok(index)
                                } else {
                                    Err(ProposeError::LeaderChanged)
                                });
                            }
                        }
                    }
                    None
                }
            };
            if let Some((term, reply, received)) = self.pending.remove(&index) {
                let (answer, received) = if term != entry.get_term() {
                    (Err(ProposeError::LeaderChanged), None)
                } else {
                    (Ok(result.unwrap_or_default()), Some(received))
                };
                outcome.replies.push((reply, answer, received));
            }
        }
        // Proposals below the applied index that never came back were replaced.
        let stale: Vec<u64> = self.pending.range(..=last).map(|(i, _)| *i).collect();
        for index in stale {
            if let Some((_, reply, _)) = self.pending.remove(&index) {
                outcome
                    .replies
                    .push((reply, Err(ProposeError::LeaderChanged), None));
            }
        }
        if outcome.meta {
            outcome.meta_record = Some(state.meta());
        }
        Ok(Some(outcome))
    }

    fn persist(
        &mut self,
        entries: &[Entry],
        hard_state: Option<raft::eraftpb::HardState>,
        commit: Option<u64>,
        outcome: Option<Outcome>,
    ) -> anyhow::Result<()> {
        let mut outcome = outcome;
        if outcome.is_some() {
            crash_point!("raft-before-applied-write");
        }
        {
            let state = self.state.read().unwrap_or_else(|p| p.into_inner());
            let applied = outcome.as_mut().map(|outcome| {
                outcome.changed.sort_unstable();
                outcome.changed.dedup();
                Applied {
                    index: outcome.index,
                    runs: outcome
                        .changed
                        .iter()
                        .filter_map(|seq| state.run_by_seq(*seq))
                        .collect(),
                    removed_runs: std::mem::take(&mut outcome.removed),
                    meta: outcome.meta_record.take(),
                    conf_state: outcome.conf_state.take(),
                }
            });
            self.store.persist(Persist {
                entries,
                hard_state,
                commit,
                applied,
            })?;
            if outcome.as_ref().is_some_and(|o| o.members_changed) {
                self.transport.set_members(state.members());
            }
        }
        if let Some(outcome) = outcome {
            if !outcome.replies.is_empty() {
                crash_point!("raft-before-reply");
            }
            for (reply, answer, received) in outcome.replies {
                let _ = reply.send(answer);
                if let Some(received) = received {
                    self.latency.record(received.elapsed());
                }
            }
            self.applied.send_replace(outcome.index);
        }
        Ok(())
    }

    fn apply_snapshot(
        &mut self,
        snapshot: raft::eraftpb::Snapshot,
        hard_state: Option<raft::eraftpb::HardState>,
    ) -> anyhow::Result<()> {
        let metadata = snapshot.get_metadata().clone();
        let decoded = StateSnapshot::decode(snapshot.get_data())
            .map_err(|e| anyhow::anyhow!("the leader sent an undecodable snapshot: {e}"))?;
        self.store
            .apply_snapshot(&metadata, &decoded, hard_state.as_ref())?;
        let new_state = State::from_snapshot(decoded);
        self.transport.set_members(new_state.members());
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = new_state;
        tracing::info!(
            index = metadata.get_index(),
            term = metadata.get_term(),
            bytes = snapshot.get_data().len(),
            "applied a snapshot from the leader"
        );
        // Proposals below the snapshot can no longer be matched to their entries.
        let stale: Vec<u64> = self
            .pending
            .range(..=metadata.get_index())
            .map(|(i, _)| *i)
            .collect();
        for index in stale {
            if let Some((_, reply, _)) = self.pending.remove(&index) {
                let _ = reply.send(Err(ProposeError::LeaderChanged));
            }
        }
        self.applied.send_replace(metadata.get_index());
        Ok(())
    }

    fn maybe_compact(&mut self) -> anyhow::Result<()> {
        let applied = self.node.raft.raft_log.applied;
        let (truncated, _) = self.store.truncated();
        if applied.saturating_sub(truncated) < self.config.compact_after {
            return Ok(());
        }
        let to = applied.saturating_sub(self.config.catch_up_entries);
        if to > truncated {
            self.store.compact(to)?;
            tracing::debug!(to, "compacted the raft log");
        }
        Ok(())
    }
}

#[derive(Default)]
struct Outcome {
    index: u64,
    changed: Vec<u64>,
    removed: Vec<u64>,
    meta: bool,
    meta_record: Option<kiln_state::pb::StateMeta>,
    members_changed: bool,
    conf_state: Option<raft::eraftpb::ConfState>,
    replies: Vec<Answer>,
}

/// A proposer's answer, and when its proposal was received if it committed.
type Answer = (
    Reply<ApplyResult>,
    Result<ApplyResult, ProposeError>,
    Option<Instant>,
);

fn single(id: u64, change_type: ConfChangeType) -> ConfChangeSingle {
    let mut change = ConfChangeSingle::default();
    change.set_node_id(id);
    change.set_change_type(change_type);
    change
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Forwards raft-rs's slog records to tracing.
struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record<'_>, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{}", record.msg())
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{}", record.msg()),
            slog::Level::Info => tracing::debug!(target: "raft", "{}", record.msg()),
            _ => tracing::trace!(target: "raft", "{}", record.msg()),
        }
        Ok(())
    }
}

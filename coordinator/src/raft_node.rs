//! Drives raft-rs: one OS thread owns the `RawNode`, takes proposals from a bounded channel,
//! ticks, persists the log to RocksDB and applies committed commands to the [`State`].
//!
//! The Ready handling follows raft-rs's documented order: send messages, persist the snapshot,
//! apply committed entries, persist new entries and the hard state, advance, then handle the
//! light ready. Replies to proposers are sent only after the applied state is durable.
//!
//! The group has a single voter for now; there is no peer transport yet, so messages addressed
//! to peers would be dropped with a warning. Nothing changes the state except through here.

use std::collections::HashMap;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, RwLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType};
use raft::{RawNode, StateRole};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use kiln_state::pb::{command, ApplyResult, Command};
use kiln_state::State;

use crate::store::Store;

/// Proposals waiting for the Raft thread. When it is full, callers are told to retry instead of
/// queueing without bound.
const PROPOSAL_QUEUE: usize = 1024;
/// Raft's logical clock.
const TICK: Duration = Duration::from_millis(100);
/// How long a proposer waits for its command to be committed and applied.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error("this coordinator is not the Raft leader")]
    NotLeader,
    #[error("the coordinator is overloaded: too many proposals in flight, retry shortly")]
    Overloaded,
    #[error("the coordinator is shutting down")]
    ShuttingDown,
    #[error("the command was not committed within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Rejected(String),
    /// Rejected because the report's lease is not the run's current one.
    #[error("{0}")]
    Stale(String),
}

struct Proposal {
    command: Command,
    reply: oneshot::Sender<Result<ApplyResult, ProposeError>>,
}

/// The rest of the coordinator's view of Raft: propose commands, read the applied state.
#[derive(Clone)]
pub struct RaftHandle {
    proposals: SyncSender<Proposal>,
    state: Arc<RwLock<State>>,
    applied: watch::Receiver<u64>,
    leader: watch::Receiver<bool>,
}

impl RaftHandle {
    /// Proposes a command stamped with the current time and waits until it is applied.
    /// A command the state machine rejects comes back as [`ProposeError::Rejected`].
    pub async fn propose(&self, kind: command::Kind) -> Result<ApplyResult, ProposeError> {
        let command = Command {
            at_ms: now_ms(),
            kind: Some(kind),
        };
        let (reply, response) = oneshot::channel();
        match self.proposals.try_send(Proposal { command, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(ProposeError::Overloaded),
            Err(TrySendError::Disconnected(_)) => return Err(ProposeError::ShuttingDown),
        }
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

    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Resolves once this node leads the group.
    pub async fn wait_for_leadership(&self) {
        let mut leader = self.leader.clone();
        let _ = leader.wait_for(|is_leader| *is_leader).await;
    }
}

/// Opens the Raft node on `store`, loads the applied state and starts the Raft thread.
pub fn start(
    store: Store,
    node_id: u64,
    shutdown: CancellationToken,
) -> anyhow::Result<(RaftHandle, thread::JoinHandle<()>)> {
    store.bootstrap(node_id)?;
    let applied = store.applied_index()?;
    let state = Arc::new(RwLock::new(State::from_runs(store.load_runs()?)));
    let config = raft::Config {
        id: node_id,
        election_tick: 10,
        heartbeat_tick: 3,
        applied,
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        ..raft::Config::default()
    };
    config.validate()?;
    let logger = slog::Logger::root(TracingDrain, slog::o!());
    let mut node = RawNode::new(&config, store.clone(), &logger)?;
    // With a single voter there is nobody to wait for: campaign at once.
    if node.raft.prs().conf().voters().ids().iter().count() == 1 {
        node.campaign()?;
    }
    let (proposals, inbox) = mpsc::sync_channel(PROPOSAL_QUEUE);
    let (applied_tx, applied_rx) = watch::channel(applied);
    let (leader_tx, leader_rx) = watch::channel(false);
    let mut driver = Driver {
        node,
        store,
        state: state.clone(),
        pending: HashMap::new(),
        next_proposal: 1,
        applied: applied_tx,
        leader: leader_tx,
    };
    let thread = thread::Builder::new()
        .name("raft".to_string())
        .spawn(move || driver.run(inbox, shutdown))?;
    let handle = RaftHandle {
        proposals,
        state,
        applied: applied_rx,
        leader: leader_rx,
    };
    Ok((handle, thread))
}

type Reply = oneshot::Sender<Result<ApplyResult, ProposeError>>;

struct Driver {
    node: RawNode<Store>,
    store: Store,
    state: Arc<RwLock<State>>,
    /// Proposals of this node waiting to be applied, by the id carried in the entry context.
    pending: HashMap<u64, Reply>,
    next_proposal: u64,
    applied: watch::Sender<u64>,
    leader: watch::Sender<bool>,
}

impl Driver {
    fn run(&mut self, inbox: mpsc::Receiver<Proposal>, shutdown: CancellationToken) {
        let mut last_tick = Instant::now();
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let wait = TICK.saturating_sub(last_tick.elapsed());
            match inbox.recv_timeout(wait) {
                Ok(proposal) => self.propose(proposal),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if last_tick.elapsed() >= TICK {
                self.node.tick();
                last_tick = Instant::now();
            }
            if let Err(error) = self.on_ready() {
                // A storage failure leaves the node unable to make progress safely.
                tracing::error!(%error, "raft storage failed; the coordinator stops applying commands");
                break;
            }
        }
        for (_, reply) in self.pending.drain() {
            let _ = reply.send(Err(ProposeError::ShuttingDown));
        }
    }

    fn propose(&mut self, proposal: Proposal) {
        if self.node.raft.state != StateRole::Leader {
            let _ = proposal.reply.send(Err(ProposeError::NotLeader));
            return;
        }
        let id = self.next_proposal;
        self.next_proposal += 1;
        let data = proposal.command.encode_to_vec();
        match self.node.propose(id.to_be_bytes().to_vec(), data) {
            Ok(()) => {
                self.pending.insert(id, proposal.reply);
            }
            Err(error) => {
                let _ = proposal
                    .reply
                    .send(Err(ProposeError::Rejected(error.to_string())));
            }
        }
    }

    fn on_ready(&mut self) -> anyhow::Result<()> {
        if !self.node.has_ready() {
            return Ok(());
        }
        let mut ready = self.node.ready();
        self.send_messages(ready.take_messages());
        if !ready.snapshot().is_empty() {
            anyhow::bail!("received a snapshot, but snapshots are not supported yet");
        }
        self.apply_committed(ready.take_committed_entries())?;
        self.store.append(ready.entries())?;
        if let Some(hard_state) = ready.hs() {
            self.store.set_hard_state(hard_state)?;
        }
        self.send_messages(ready.take_persisted_messages());
        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.store.set_commit(commit)?;
        }
        self.send_messages(light.take_messages());
        self.apply_committed(light.take_committed_entries())?;
        self.node.advance_apply();
        let _ = self.leader.send_if_modified(|leader| {
            let now = self.node.raft.state == StateRole::Leader;
            std::mem::replace(leader, now) != now
        });
        Ok(())
    }

    fn send_messages(&self, messages: Vec<raft::eraftpb::Message>) {
        for message in messages {
            tracing::warn!(
                to = message.to,
                "dropping a raft message: there is no peer transport yet"
            );
        }
    }

    fn apply_committed(&mut self, entries: Vec<Entry>) -> anyhow::Result<()> {
        let Some(last) = entries.last().map(Entry::get_index) else {
            return Ok(());
        };
        let mut changed = Vec::new();
        let mut replies = Vec::new();
        {
            let mut state = self
                .state
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for entry in &entries {
                match entry.get_entry_type() {
                    EntryType::EntryNormal if entry.get_data().is_empty() => {
                        // The empty entry a new leader appends to commit its term.
                    }
                    EntryType::EntryNormal => {
                        let result = match Command::decode(entry.get_data()) {
                            Ok(command) => {
                                let outcome = state.apply(entry.get_index(), &command);
                                if let Some(seq) = outcome.changed_run {
                                    changed.push(seq);
                                }
                                outcome.result
                            }
                            Err(error) => ApplyResult {
                                error: format!(
                                    "undecodable command at index {}: {error}",
                                    entry.get_index()
                                ),
                                ..ApplyResult::default()
                            },
                        };
                        if let Some(reply) =
                            proposal_id(entry).and_then(|id| self.pending.remove(&id))
                        {
                            replies.push((reply, result));
                        }
                    }
                    EntryType::EntryConfChange => {
                        let change: ConfChange =
                            protobuf::Message::parse_from_bytes(entry.get_data())?;
                        let conf_state = self.node.apply_conf_change(&change)?;
                        self.store.set_conf_state(&conf_state)?;
                    }
                    EntryType::EntryConfChangeV2 => {
                        let change: ConfChangeV2 =
                            protobuf::Message::parse_from_bytes(entry.get_data())?;
                        let conf_state = self.node.apply_conf_change(&change)?;
                        self.store.set_conf_state(&conf_state)?;
                    }
                }
            }
            changed.sort_unstable();
            changed.dedup();
            let runs: Vec<_> = changed
                .iter()
                .filter_map(|seq| state.run_by_seq(*seq))
                .collect();
            self.store.save_applied(last, &runs)?;
        }
        for (reply, result) in replies {
            let _ = reply.send(Ok(result));
        }
        self.applied.send_replace(last);
        Ok(())
    }
}

fn proposal_id(entry: &Entry) -> Option<u64> {
    let bytes: [u8; 8] = entry.get_context().try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
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

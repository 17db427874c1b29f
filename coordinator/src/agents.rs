//! The agents known to this coordinator: what they run, how to reach them, whether they are
//! alive, and what they say they are doing. Leader memory only: agents reconnect and say
//! `Hello` again after a leader change or a restart, so none of this is replicated.
//!
//! Liveness: every message from an agent (heartbeats at least every `heartbeat_interval`)
//! refreshes `last_seen`. The control loop declares an agent that was silent for `lost_after`
//! lost: its connection is dropped, it gets no new runs, and its runs follow the lost-agent
//! policy once the grace period has passed. A connection that is not the agent's current one
//! is ignored, so a frozen agent that wakes up cannot act on its old stream.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify};

use kiln_proto::v1::{
    coordinator_message, AgentInfo, AgentPlatform, CoordinatorMessage, Drain, Heartbeat,
};
use kiln_state::pb::KeyValue;
use kiln_state::scheduler::AgentView;
use kiln_state::PlatformSpec;

/// Messages queued for one agent. An agent that does not read them is disconnected rather
/// than being queued for without bound.
pub const AGENT_OUTBOX: usize = 64;
/// A disconnected or lost agent is forgotten after this long (its runs were dealt with long
/// before: the grace period is much shorter).
pub const FORGET_AFTER: Duration = Duration::from_secs(600);
/// A run handed to an agent counts as active on it this long before the agent lists it.
const HANDED_GRACE: Duration = Duration::from_secs(10);
/// Most agents remembered at once; beyond it, the longest-gone disconnected agents go first.
pub const MAX_AGENTS: usize = 10_000;

/// What an agent said about itself in its `Hello`.
#[derive(Clone, Debug, Default)]
pub struct AgentHello {
    pub agent_id: String,
    pub platforms: Vec<(PlatformSpec, bool)>,
    pub capacity: u32,
    pub pool: String,
    pub labels: Vec<KeyValue>,
    pub draining: bool,
    pub version: String,
    pub protocol_version: u32,
    /// Runs it executes, with the lease epoch of each.
    pub leases: BTreeMap<String, u64>,
}

struct Agent {
    hello: AgentHello,
    /// `None` while disconnected or lost.
    outbox: Option<mpsc::Sender<CoordinatorMessage>>,
    /// Distinguishes this connection from an older one of the same agent.
    connection: u64,
    connected_at: Instant,
    /// Wall-clock time of the connection, to compare with replicated timestamps.
    connected_at_ms: u64,
    last_seen: Instant,
    /// When the connection ended or the agent was declared lost.
    gone_at: Option<Instant>,
    lost: bool,
    /// Draining: asked by an operator (`kiln agents drain`) or said by the agent (it shuts
    /// down, or follows an earlier coordinator's drain); it takes no new runs while either.
    operator_drain: bool,
    draining: bool,
    /// Runs it executes (from Hello and heartbeats), plus runs handed to it on this connection.
    active: BTreeMap<String, u64>,
    /// The sequence number of the last heartbeat it sent.
    heartbeat_seq: u64,
    /// Runs handed to it on this connection recently, with the epoch and when.
    handed: BTreeMap<String, (u64, Instant)>,
    /// Runs whose cancellation was already sent on this connection.
    cancels_sent: BTreeSet<String>,
    /// Runs it was told to stop, and when (stops are repeated at most every few seconds).
    stops_sent: BTreeMap<String, Instant>,
}

/// How an agent is doing, as the control loop sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// Connected and heard from recently.
    Alive {
        connected_at_ms: u64,
        /// Runs it executes (or was handed on this connection), with their epochs.
        active: BTreeMap<String, u64>,
    },
    /// Declared lost or disconnected, since the given time.
    Gone { since: Instant, lost: bool },
    /// Never seen by this coordinator (or forgotten).
    Unknown,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("agent {agent_id} is already connected (last heard from {seen_ms} ms ago); give every agent its own --agent-id")]
    Duplicate { agent_id: String, seen_ms: u128 },
}

pub struct Agents {
    agents: Mutex<BTreeMap<String, Agent>>,
    next_connection: Mutex<u64>,
    /// An agent silent this long is declared lost.
    pub lost_after: Duration,
    /// Wakes the scheduler when agents come, go or free up.
    pub changed: Notify,
}

impl Agents {
    pub fn new(lost_after: Duration) -> Self {
        Self {
            agents: Mutex::new(BTreeMap::new()),
            next_connection: Mutex::new(1),
            lost_after,
            changed: Notify::new(),
        }
    }

    /// Registers a connection. An agent of the same id that is still alive is not replaced
    /// (two processes with one id would take each other's runs): the newcomer is refused.
    /// A connection of an agent that is gone, or silent for longer than `lost_after`, is
    /// replaced. Returns the connection number.
    pub fn connect(
        &self,
        hello: AgentHello,
        outbox: mpsc::Sender<CoordinatorMessage>,
        now_ms: u64,
    ) -> Result<u64, ConnectError> {
        let mut agents = lock(&self.agents);
        if let Some(existing) = agents.get(&hello.agent_id) {
            let silent = existing.last_seen.elapsed();
            if existing.outbox.is_some() && !existing.lost && silent < self.lost_after {
                return Err(ConnectError::Duplicate {
                    agent_id: hello.agent_id.clone(),
                    seen_ms: silent.as_millis(),
                });
            }
        }
        let connection = {
            let mut next = lock(&self.next_connection);
            *next += 1;
            *next
        };
        let now = Instant::now();
        let agent = Agent {
            active: hello.leases.clone(),
            operator_drain: false,
            draining: hello.draining,
            hello,
            outbox: Some(outbox),
            connection,
            connected_at: now,
            connected_at_ms: now_ms,
            last_seen: now,
            gone_at: None,
            lost: false,
            heartbeat_seq: 0,
            handed: BTreeMap::new(),
            cancels_sent: BTreeSet::new(),
            stops_sent: BTreeMap::new(),
        };
        let id = agent.hello.agent_id.clone();
        agents.insert(id, agent);
        prune(&mut agents);
        drop(agents);
        self.changed.notify_one();
        Ok(connection)
    }

    /// Whether `connection` is the agent's current, live connection.
    pub fn is_current(&self, agent_id: &str, connection: u64) -> bool {
        lock(&self.agents)
            .get(agent_id)
            .is_some_and(|a| a.connection == connection && a.outbox.is_some())
    }

    /// Records that the agent was heard from on `connection`.
    pub fn touch(&self, agent_id: &str, connection: u64) {
        if let Some(agent) = lock(&self.agents).get_mut(agent_id) {
            if agent.connection == connection && agent.outbox.is_some() {
                agent.last_seen = Instant::now();
            }
        }
    }

    /// Applies a heartbeat: what the agent executes and whether it drains.
    pub fn heartbeat(&self, agent_id: &str, connection: u64, beat: &Heartbeat) {
        let mut agents = lock(&self.agents);
        let Some(agent) = agents.get_mut(agent_id) else {
            return;
        };
        if agent.connection != connection || agent.outbox.is_none() {
            return;
        }
        agent.last_seen = Instant::now();
        agent.heartbeat_seq = beat.seq;
        let was = (agent.draining, agent.active.len());
        agent.hello.draining = beat.draining;
        agent.draining = agent.operator_drain || beat.draining;
        let reported: BTreeMap<String, u64> = beat
            .active
            .iter()
            .map(|a| (a.run_id.clone(), a.epoch))
            .collect();
        // Runs handed out moments ago that the agent has not listed yet stay counted.
        let mut active = reported;
        agent
            .handed
            .retain(|_, (_, at)| at.elapsed() < HANDED_GRACE);
        for (run_id, (epoch, _)) in &agent.handed {
            active.entry(run_id.clone()).or_insert(*epoch);
        }
        agent.active = active;
        let now = (agent.draining, agent.active.len());
        drop(agents);
        if was != now {
            self.changed.notify_one();
        }
    }

    /// Drops every connection (the coordinator is shutting down): their streams end, and the
    /// agents reconnect to whichever coordinator serves next.
    pub fn disconnect_all(&self) {
        let mut agents = lock(&self.agents);
        for agent in agents.values_mut() {
            if agent.outbox.take().is_some() {
                agent.gone_at = Some(Instant::now());
            }
        }
    }

    /// Marks the agent disconnected, unless a newer connection replaced this one.
    pub fn disconnect(&self, agent_id: &str, connection: u64) {
        let mut agents = lock(&self.agents);
        if let Some(agent) = agents.get_mut(agent_id) {
            if agent.connection == connection && agent.outbox.is_some() {
                agent.outbox = None;
                agent.gone_at = Some(Instant::now());
            }
        }
        drop(agents);
        self.changed.notify_one();
    }

    /// Declares every connected agent that has been silent for `lost_after` lost: its
    /// connection is dropped (which ends its stream). Returns the ids newly declared lost.
    pub fn declare_lost(&self) -> Vec<String> {
        let mut lost = Vec::new();
        let mut agents = lock(&self.agents);
        for (id, agent) in agents.iter_mut() {
            if agent.outbox.is_some() && agent.last_seen.elapsed() > self.lost_after {
                agent.outbox = None;
                agent.lost = true;
                agent.gone_at = Some(Instant::now());
                lost.push(id.clone());
            }
        }
        drop(agents);
        if !lost.is_empty() {
            self.changed.notify_one();
        }
        lost
    }

    /// Queues a message for a connected agent. Returns false when it is not connected or its
    /// outbox is full (then it is treated as gone: the connection is dropped).
    pub fn send(&self, agent_id: &str, message: CoordinatorMessage) -> bool {
        let mut agents = lock(&self.agents);
        let Some(agent) = agents.get_mut(agent_id) else {
            return false;
        };
        let Some(outbox) = &agent.outbox else {
            return false;
        };
        if outbox.try_send(message).is_ok() {
            return true;
        }
        tracing::warn!(
            agent_id,
            "agent outbox full or closed; dropping the connection"
        );
        agent.outbox = None;
        agent.gone_at = Some(Instant::now());
        false
    }

    /// Sends every connected agent a heartbeat echoing the last one it sent.
    pub fn send_heartbeats(&self) {
        let targets: Vec<(String, u64)> = lock(&self.agents)
            .iter()
            .filter(|(_, a)| a.outbox.is_some())
            .map(|(id, a)| (id.clone(), a.heartbeat_seq))
            .collect();
        for (agent_id, ack_seq) in targets {
            self.send(
                &agent_id,
                CoordinatorMessage {
                    msg: Some(coordinator_message::Msg::Heartbeat(Heartbeat {
                        ack_seq,
                        ..Heartbeat::default()
                    })),
                },
            );
        }
    }

    /// Records a run handed to the agent on its current connection.
    pub fn mark_active(&self, agent_id: &str, run_id: &str, epoch: u64) {
        if let Some(agent) = lock(&self.agents).get_mut(agent_id) {
            agent.active.insert(run_id.to_string(), epoch);
            agent
                .handed
                .insert(run_id.to_string(), (epoch, Instant::now()));
        }
    }

    pub fn mark_finished(&self, agent_id: &str, run_id: &str) {
        if let Some(agent) = lock(&self.agents).get_mut(agent_id) {
            agent.active.remove(run_id);
            agent.handed.remove(run_id);
            agent.cancels_sent.remove(run_id);
        }
        self.changed.notify_one();
    }

    /// Records that a cancellation is being sent; false if it was sent on this connection already.
    pub fn first_cancel(&self, agent_id: &str, run_id: &str) -> bool {
        match lock(&self.agents).get_mut(agent_id) {
            Some(agent) if agent.outbox.is_some() => agent.cancels_sent.insert(run_id.to_string()),
            _ => false,
        }
    }

    /// Records that a stop is being sent; false if one was sent in the last `every`.
    pub fn stop_due(&self, agent_id: &str, run_id: &str, every: Duration) -> bool {
        let mut agents = lock(&self.agents);
        let Some(agent) = agents.get_mut(agent_id) else {
            return false;
        };
        if agent.outbox.is_none() {
            return false;
        }
        let now = Instant::now();
        match agent.stops_sent.get(run_id) {
            Some(at) if now.duration_since(*at) < every => false,
            _ => {
                agent.stops_sent.insert(run_id.to_string(), now);
                if agent.stops_sent.len() > 4 * AGENT_OUTBOX {
                    // Bounded: forget the oldest.
                    if let Some(oldest) = agent
                        .stops_sent
                        .iter()
                        .min_by_key(|(_, at)| **at)
                        .map(|(id, _)| id.clone())
                    {
                        agent.stops_sent.remove(&oldest);
                    }
                }
                true
            }
        }
    }

    /// Drains an agent (it takes no new runs) or makes it take runs again; the agent is told.
    /// Returns the state it is in now, or `None` for an unknown agent.
    pub fn set_draining(&self, agent_id: &str, drain: bool) -> Option<&'static str> {
        let known = {
            let mut agents = lock(&self.agents);
            match agents.get_mut(agent_id) {
                Some(agent) => {
                    agent.operator_drain = drain;
                    // Undrained: it takes runs again from now on; an agent that drains by
                    // itself (shutting down) says so again in its next heartbeat.
                    agent.draining = drain;
                    Some(state_name(agent))
                }
                None => None,
            }
        };
        if known.is_some() {
            self.send(
                agent_id,
                CoordinatorMessage {
                    msg: Some(coordinator_message::Msg::Drain(Drain { drain })),
                },
            );
            self.changed.notify_one();
        }
        known
    }

    /// The agents that take new runs, for the scheduler; `running` counts the runs the state
    /// assigns each. An agent that says it executes more (runs the coordinator ended but it
    /// has not stopped yet) is counted with those.
    pub fn views(&self, running: impl Fn(&str) -> u32) -> Vec<AgentView> {
        lock(&self.agents)
            .iter()
            .filter(|(_, agent)| agent.outbox.is_some() && !agent.draining)
            .map(|(id, agent)| AgentView {
                agent_id: id.clone(),
                platforms: agent.hello.platforms.clone(),
                capacity: agent.hello.capacity,
                running: running(id).max(agent.active.len() as u32),
                pool: agent.hello.pool.clone(),
                labels: agent.hello.labels.clone(),
            })
            .collect()
    }

    pub fn liveness(&self, agent_id: &str) -> Liveness {
        match lock(&self.agents).get(agent_id) {
            Some(agent) if agent.outbox.is_some() => Liveness::Alive {
                connected_at_ms: agent.connected_at_ms,
                active: agent.active.clone(),
            },
            Some(agent) => Liveness::Gone {
                since: agent.gone_at.unwrap_or(agent.connected_at),
                lost: agent.lost,
            },
            None => Liveness::Unknown,
        }
    }

    /// Every known agent, for `kiln agents`: ready, draining, and lost or disconnected ones.
    pub fn infos(&self) -> Vec<AgentInfo> {
        lock(&self.agents)
            .iter()
            .map(|(id, agent)| AgentInfo {
                agent_id: id.clone(),
                platforms: agent
                    .hello
                    .platforms
                    .iter()
                    .map(|(platform, emulated)| AgentPlatform {
                        platform: Some(platform.to_pb()),
                        emulated: *emulated,
                    })
                    .collect(),
                capacity: agent.hello.capacity,
                active_runs: agent.active.keys().cloned().collect(),
                state: state_name(agent).to_string(),
                pool: agent.hello.pool.clone(),
                labels: agent.hello.labels.clone(),
                last_seen_ms_ago: agent.last_seen.elapsed().as_millis() as u64,
                protocol_version: agent.hello.protocol_version,
                version: agent.hello.version.clone(),
            })
            .collect()
    }
}

fn state_name(agent: &Agent) -> &'static str {
    if agent.outbox.is_none() {
        if agent.lost {
            "lost"
        } else {
            "disconnected"
        }
    } else if agent.draining {
        "draining"
    } else {
        "ready"
    }
}

/// Forgets agents gone for longer than [`FORGET_AFTER`], and the longest-gone ones beyond
/// [`MAX_AGENTS`].
fn prune(agents: &mut BTreeMap<String, Agent>) {
    agents.retain(|_, agent| {
        agent
            .gone_at
            .is_none_or(|gone| gone.elapsed() < FORGET_AFTER)
    });
    while agents.len() > MAX_AGENTS {
        let Some(oldest) = agents
            .iter()
            .filter_map(|(id, a)| a.gone_at.map(|g| (g, id.clone())))
            .min()
            .map(|(_, id)| id)
        else {
            break;
        };
        agents.remove(&oldest);
    }
}

impl Agents {
    /// Forgets long-gone agents (also done on every connect).
    pub fn prune(&self) {
        prune(&mut lock(&self.agents));
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(id: &str) -> AgentHello {
        AgentHello {
            agent_id: id.into(),
            platforms: vec![(PlatformSpec::parse("linux/amd64").unwrap(), false)],
            capacity: 2,
            ..AgentHello::default()
        }
    }

    #[test]
    fn a_second_live_agent_with_the_same_id_is_refused() {
        let agents = Agents::new(Duration::from_secs(5));
        let (tx1, _rx1) = mpsc::channel(4);
        let first = agents.connect(hello("a"), tx1, 0).unwrap();
        let (tx2, _rx2) = mpsc::channel(4);
        let error = agents.connect(hello("a"), tx2, 0).unwrap_err();
        assert!(error.to_string().contains("already connected"), "{error}");
        assert!(agents.is_current("a", first));
        // Once the first is gone, the id is free again.
        agents.disconnect("a", first);
        let (tx3, _rx3) = mpsc::channel(4);
        let third = agents.connect(hello("a"), tx3, 0).unwrap();
        assert!(!agents.is_current("a", first));
        assert!(agents.is_current("a", third));
    }

    #[test]
    fn a_silent_agent_is_declared_lost_and_leaves_the_schedule() {
        let agents = Agents::new(Duration::from_millis(0));
        let (tx, _rx) = mpsc::channel(4);
        let connection = agents.connect(hello("a"), tx, 0).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(agents.declare_lost(), vec!["a".to_string()]);
        assert!(agents.views(|_| 0).is_empty());
        assert!(!agents.is_current("a", connection));
        assert!(matches!(
            agents.liveness("a"),
            Liveness::Gone { lost: true, .. }
        ));
        assert_eq!(agents.infos()[0].state, "lost");
    }

    #[test]
    fn a_draining_agent_gets_no_runs_and_says_so() {
        let agents = Agents::new(Duration::from_secs(5));
        let (tx, mut rx) = mpsc::channel(4);
        agents.connect(hello("a"), tx, 0).unwrap();
        assert_eq!(agents.views(|_| 0).len(), 1);
        assert_eq!(agents.set_draining("a", true), Some("draining"));
        assert!(agents.views(|_| 0).is_empty());
        assert!(matches!(
            rx.try_recv().unwrap().msg,
            Some(coordinator_message::Msg::Drain(Drain { drain: true }))
        ));
        assert_eq!(agents.set_draining("a", false), Some("ready"));
        assert_eq!(agents.views(|_| 0).len(), 1);
        assert_eq!(agents.set_draining("nobody", true), None);
    }

    #[test]
    fn runs_the_agent_still_executes_count_against_its_capacity() {
        let agents = Agents::new(Duration::from_secs(5));
        let (tx, _rx) = mpsc::channel(4);
        let connection = agents.connect(hello("a"), tx, 0).unwrap();
        agents.heartbeat(
            "a",
            connection,
            &Heartbeat {
                seq: 1,
                active: vec![kiln_proto::v1::ActiveRun {
                    run_id: "ca9".into(),
                    epoch: 3,
                }],
                ..Heartbeat::default()
            },
        );
        assert_eq!(agents.views(|_| 0)[0].running, 1);
    }
}

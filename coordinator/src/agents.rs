//! The agents connected to this coordinator: what they run, how to reach them, what they are
//! doing. Leader memory only: agents reconnect and say `Hello` again after a leader change or a
//! restart, so none of this is replicated.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::{mpsc, Notify};

use kiln_proto::v1::{AgentInfo, AgentPlatform, CoordinatorMessage};
use kiln_state::scheduler::AgentView;
use kiln_state::PlatformSpec;

/// Messages queued for one agent. An agent that does not read them is disconnected rather
/// than being queued for without bound.
pub const AGENT_OUTBOX: usize = 64;

struct Agent {
    platforms: Vec<(PlatformSpec, bool)>,
    capacity: u32,
    /// `None` while disconnected.
    outbox: Option<mpsc::Sender<CoordinatorMessage>>,
    /// Distinguishes this connection from an older one of the same agent.
    connection: u64,
    connected_at: Instant,
    disconnected_at: Option<Instant>,
    /// Runs the agent says it executes, plus runs handed to it on this connection.
    active: BTreeSet<String>,
    /// Runs whose cancellation was already sent on this connection.
    cancels_sent: BTreeSet<String>,
}

pub struct Agents {
    agents: Mutex<BTreeMap<String, Agent>>,
    next_connection: Mutex<u64>,
    /// Wakes the scheduler when agents come, go or free up.
    pub changed: Notify,
}

/// A connected agent's state as the control loop sees it.
pub struct AgentStatus {
    pub agent_id: String,
    pub connected_since: Instant,
    pub active: BTreeSet<String>,
}

impl Agents {
    pub fn new() -> Self {
        Self {
            agents: Mutex::new(BTreeMap::new()),
            next_connection: Mutex::new(1),
            changed: Notify::new(),
        }
    }

    /// Registers a connection; a previous connection of the same agent is replaced (its outbox
    /// is dropped, which ends that stream). Returns the connection number.
    pub fn connect(
        &self,
        agent_id: &str,
        platforms: Vec<(PlatformSpec, bool)>,
        capacity: u32,
        active_runs: &[String],
        outbox: mpsc::Sender<CoordinatorMessage>,
    ) -> u64 {
        let connection = {
            let mut next = lock(&self.next_connection);
            *next += 1;
            *next
        };
        let agent = Agent {
            platforms,
            capacity,
            outbox: Some(outbox),
            connection,
            connected_at: Instant::now(),
            disconnected_at: None,
            active: active_runs.iter().cloned().collect(),
            cancels_sent: BTreeSet::new(),
        };
        lock(&self.agents).insert(agent_id.to_string(), agent);
        self.changed.notify_one();
        connection
    }

    /// Marks the agent disconnected, unless a newer connection replaced this one.
    pub fn disconnect(&self, agent_id: &str, connection: u64) {
        let mut agents = lock(&self.agents);
        if let Some(agent) = agents.get_mut(agent_id) {
            if agent.connection == connection {
                agent.outbox = None;
                agent.disconnected_at = Some(Instant::now());
            }
        }
        drop(agents);
        self.changed.notify_one();
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
        agent.disconnected_at = Some(Instant::now());
        false
    }

    pub fn mark_active(&self, agent_id: &str, run_id: &str) {
        if let Some(agent) = lock(&self.agents).get_mut(agent_id) {
            agent.active.insert(run_id.to_string());
        }
    }

    pub fn mark_finished(&self, agent_id: &str, run_id: &str) {
        if let Some(agent) = lock(&self.agents).get_mut(agent_id) {
            agent.active.remove(run_id);
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

    /// The connected agents for the scheduler; `running` counts the runs the state assigns them.
    pub fn views(&self, running: impl Fn(&str) -> u32) -> Vec<AgentView> {
        lock(&self.agents)
            .iter()
            .filter(|(_, agent)| agent.outbox.is_some())
            .map(|(id, agent)| AgentView {
                agent_id: id.clone(),
                platforms: agent.platforms.clone(),
                capacity: agent.capacity,
                running: running(id),
            })
            .collect()
    }

    /// `Some(status)` for a connected agent; `None` with the time it went away otherwise
    /// (`None, None` when this coordinator never saw it).
    pub fn status(&self, agent_id: &str) -> Result<AgentStatus, Option<Instant>> {
        match lock(&self.agents).get(agent_id) {
            Some(agent) if agent.outbox.is_some() => Ok(AgentStatus {
                agent_id: agent_id.to_string(),
                connected_since: agent.connected_at,
                active: agent.active.clone(),
            }),
            Some(agent) => Err(agent.disconnected_at),
            None => Err(None),
        }
    }

    pub fn infos(&self) -> Vec<AgentInfo> {
        lock(&self.agents)
            .iter()
            .filter(|(_, agent)| agent.outbox.is_some())
            .map(|(id, agent)| AgentInfo {
                agent_id: id.clone(),
                platforms: agent
                    .platforms
                    .iter()
                    .map(|(platform, emulated)| AgentPlatform {
                        platform: Some(platform.to_pb()),
                        emulated: *emulated,
                    })
                    .collect(),
                capacity: agent.capacity,
                active_runs: agent.active.iter().cloned().collect(),
            })
            .collect()
    }
}

impl Default for Agents {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

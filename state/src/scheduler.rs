//! Placement of queued runs on agents: a pure function the leader calls, whose decisions enter
//! the state only as committed `AssignRun` commands.
//!
//! Objectives, in order: a run goes only to an agent that can run its platform; native beats
//! QEMU emulation; the least-loaded capable agent wins (ties by agent id, for determinism);
//! runs are considered oldest first, and a run that cannot be placed does not block later runs
//! for other platforms.

use crate::machine::State;
use crate::pb::Run;
use crate::platform::PlatformSpec;

/// What the leader knows about one connected agent.
#[derive(Clone, Debug)]
pub struct AgentView {
    pub agent_id: String,
    /// Platforms it runs, each with whether it runs it through emulation.
    pub platforms: Vec<(PlatformSpec, bool)>,
    pub capacity: u32,
    /// Runs assigned to it that have not finished.
    pub running: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub run_id: String,
    pub agent_id: String,
    pub platform: PlatformSpec,
    pub emulated: bool,
}

/// Chooses an agent for as many queued runs as capacity allows.
pub fn solve(state: &State, agents: &[AgentView]) -> Vec<Assignment> {
    let mut load: Vec<u32> = agents.iter().map(|a| a.running).collect();
    let mut assignments = Vec::new();
    for run in state.queued_runs() {
        let Ok(wanted) = wanted_platform(run) else {
            continue;
        };
        let mut best: Option<(bool, u32, &str, usize)> = None;
        for (index, agent) in agents.iter().enumerate() {
            if load[index] >= agent.capacity {
                continue;
            }
            let Some(emulated) = runs_as(agent, &wanted) else {
                continue;
            };
            let key = (emulated, load[index], agent.agent_id.as_str(), index);
            if best.is_none_or(|b| (key.0, key.1, key.2) < (b.0, b.1, b.2)) {
                best = Some(key);
            }
        }
        if let Some((emulated, _, agent_id, index)) = best {
            load[index] += 1;
            assignments.push(Assignment {
                run_id: run.id.clone(),
                agent_id: agent_id.to_string(),
                platform: wanted,
                emulated,
            });
        }
    }
    assignments
}

/// Explains why a queued run has no agent yet.
pub fn queued_reason(run: &Run, agents: &[AgentView]) -> String {
    let wanted = match wanted_platform(run) {
        Ok(p) => p,
        Err(message) => return message,
    };
    if agents.is_empty() {
        return format!("waiting for an agent: no agent is connected (the run needs {wanted})");
    }
    let capable: Vec<&AgentView> = agents
        .iter()
        .filter(|a| runs_as(a, &wanted).is_some())
        .collect();
    if capable.is_empty() {
        let offered: Vec<String> = agents
            .iter()
            .map(|a| {
                let platforms: Vec<String> = a
                    .platforms
                    .iter()
                    .map(|(p, emulated)| {
                        if *emulated {
                            format!("{p} (emulated)")
                        } else {
                            p.to_string()
                        }
                    })
                    .collect();
                format!("{}: {}", a.agent_id, platforms.join(", "))
            })
            .collect();
        return format!(
            "no connected agent can run {wanted} (connected: {}); start an agent on a {wanted} machine or register a QEMU handler for it",
            offered.join("; ")
        );
    }
    format!(
        "waiting for a free slot on an agent that runs {wanted} ({} capable, all busy)",
        capable.len()
    )
}

fn wanted_platform(run: &Run) -> Result<PlatformSpec, String> {
    PlatformSpec::from_pb(run.request.as_ref().and_then(|r| r.platform.as_ref()))
}

/// `Some(emulated)` when the agent can run `wanted`, preferring a native platform.
fn runs_as(agent: &AgentView, wanted: &PlatformSpec) -> Option<bool> {
    let mut result = None;
    for (platform, emulated) in &agent.platforms {
        if platform.can_run(wanted) {
            if !emulated {
                return Some(false);
            }
            result = Some(true);
        }
    }
    result
}

//! Placement of queued runs on agents: a pure function the leader calls, whose decisions enter
//! the state only as committed `AssignRun` commands.
//!
//! Objectives, in order: a run goes only to an agent of its pool, with the labels it asks for,
//! that can run its platform; native beats QEMU emulation; the least-loaded capable agent wins
//! (ties by agent id, for determinism). Runs are considered fairly across fairness keys (the
//! stored task's name, else the submitter): the oldest run of every key first, then the second
//! oldest of every key, and so on, so one flood of runs does not starve everyone else. A run
//! that cannot be placed does not block later runs for other platforms or pools.

use std::collections::BTreeMap;

use crate::machine::State;
use crate::pb::{KeyValue, Run};
use crate::platform::PlatformSpec;

/// What the leader knows about one agent that takes runs (connected, not draining, not lost).
#[derive(Clone, Debug, Default)]
pub struct AgentView {
    pub agent_id: String,
    /// Platforms it runs, each with whether it runs it through emulation.
    pub platforms: Vec<(PlatformSpec, bool)>,
    pub capacity: u32,
    /// Runs assigned to it that have not finished (or that it still executes, if more).
    pub running: u32,
    /// Its agent pool; empty is the default pool.
    pub pool: String,
    pub labels: Vec<KeyValue>,
}

/// The scheduler's fairness key of a run: its stored task, else its submitter.
pub fn fairness_key(run: &Run) -> &str {
    match &run.request {
        Some(r) if !r.task_name.is_empty() => &r.task_name,
        Some(r) => &r.submitter,
        None => "",
    }
}

/// Queued runs in fair order. A key's n-th oldest queued run comes at position
/// `running(key) + n`, where `running(key)` counts the key's runs already executing: the
/// least-served key goes first, so a lone run is next in line however long another key's
/// queue is, and keys then take turns. Ties go to the older run.
fn fair_order(state: &State) -> Vec<&Run> {
    let mut by_key: BTreeMap<&str, Vec<&Run>> = BTreeMap::new();
    for run in state.queued_runs() {
        by_key.entry(fairness_key(run)).or_default().push(run);
    }
    if by_key.len() <= 1 {
        return by_key.into_values().next().unwrap_or_default();
    }
    let mut running: BTreeMap<&str, usize> = BTreeMap::new();
    for run in state.running_runs() {
        *running.entry(fairness_key(run)).or_default() += 1;
    }
    let mut ranked: Vec<(usize, u64, &Run)> = by_key
        .into_iter()
        .flat_map(|(key, runs)| {
            let served = running.get(key).copied().unwrap_or(0);
            runs.into_iter()
                .enumerate()
                .map(move |(rank, run)| (served + rank, run.seq, run))
        })
        .collect();
    ranked.sort_unstable_by_key(|(position, seq, _)| (*position, *seq));
    ranked.into_iter().map(|(_, _, run)| run).collect()
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
    let mut free: u64 = agents
        .iter()
        .map(|a| u64::from(a.capacity.saturating_sub(a.running)))
        .sum();
    let mut assignments = Vec::new();
    if free == 0 {
        return assignments;
    }
    for run in fair_order(state) {
        if free == 0 {
            break;
        }
        let Ok(wanted) = wanted_platform(run) else {
            continue;
        };
        let mut best: Option<(bool, u32, &str, usize)> = None;
        for (index, agent) in agents.iter().enumerate() {
            if load[index] >= agent.capacity || !serves(agent, run) {
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
            free -= 1;
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
        return format!(
            "waiting for an agent: no agent is connected and ready (the run needs {wanted})"
        );
    }
    let pool = run.request.as_ref().map_or("", |r| r.agent_pool.as_str());
    let in_pool: Vec<&AgentView> = agents.iter().filter(|a| serves(a, run)).collect();
    if in_pool.is_empty() {
        let labels = run
            .request
            .as_ref()
            .map(|r| {
                r.agent_labels
                    .iter()
                    .map(|kv| format!("{}={}", kv.key, kv.value))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let pool_name = if pool.is_empty() { "default" } else { pool };
        let with_labels = if labels.is_empty() {
            String::new()
        } else {
            format!(" with labels {}", labels.join(","))
        };
        return format!(
            "no ready agent of pool '{pool_name}'{with_labels} is connected (the run needs {wanted}); start one with --pool {pool_name}"
        );
    }
    let capable: Vec<&AgentView> = in_pool
        .into_iter()
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

/// Whether the agent is of the run's pool and has every label the run asks for.
fn serves(agent: &AgentView, run: &Run) -> bool {
    let Some(request) = &run.request else {
        return false;
    };
    agent.pool == request.agent_pool
        && request
            .agent_labels
            .iter()
            .all(|wanted| agent.labels.iter().any(|have| have == wanted))
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

//! Placement of queued runs on agents: a pure function the leader calls, whose decisions enter
//! the state only as committed `AssignRun` commands.
//!
//! Objectives, in order: a run goes only to an agent of its pool, with the labels it asks for,
//! that can run its platform; native beats QEMU emulation; the least-loaded capable agent wins
//! (ties by agent id, for determinism). Runs are considered fairly across fairness keys (the
//! stored task's name, else the submitter): the oldest run of every key first, then the second
//! oldest of every key, and so on, so one flood of runs does not starve everyone else. A run
//! that cannot be placed does not block later runs for other platforms or pools.

use std::collections::{BTreeMap, HashMap};

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

/// What a run asks of an agent: its platform, pool and labels.
type Requirement<'a> = (PlatformSpec, &'a str, &'a [KeyValue]);

/// Chooses an agent for as many queued runs as capacity allows.
///
/// Agents are compared by (emulated, load, rank of the agent id), all small integers: the
/// ranks are the agents' positions in id order, computed once per call, and which agents can
/// take a run at all (pool, labels, platform: string comparisons) is worked out once per
/// distinct (platform, pool, labels) among the queued runs, not once per run and agent. With
/// 1000 agents the per-run, per-agent string comparisons (`memcmp`) were most of the leader's
/// scheduling time. The order is the ids' order, equal ids by position (a stable sort), as
/// the first of them found used to win, and the capable agents are visited in the same
/// order: the choices are the same.
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
    let rank = id_ranks(agents);
    // For each distinct requirement: the agents that meet it, in order, and whether each would
    // emulate.
    let mut capable: HashMap<Requirement<'_>, Vec<(usize, bool)>> = HashMap::new();
    for run in fair_order(state) {
        if free == 0 {
            break;
        }
        let Ok(wanted) = wanted_platform(run) else {
            continue;
        };
        let Some(request) = &run.request else {
            continue; // `serves` takes no run without a request
        };
        let requirement = (
            wanted,
            request.agent_pool.as_str(),
            request.agent_labels.as_slice(),
        );
        if !capable.contains_key(&requirement) {
            let able = agents
                .iter()
                .enumerate()
                .filter(|(_, agent)| serves(agent, run))
                .filter_map(|(index, agent)| Some((index, runs_as(agent, &requirement.0)?)))
                .collect();
            capable.insert(requirement.clone(), able);
        }
        // (emulated, load, id rank) of the best agent so far, and its index.
        let mut best: Option<((bool, u32, usize), usize)> = None;
        for &(index, emulated) in &capable[&requirement] {
            if load[index] >= agents[index].capacity {
                continue;
            }
            let key = (emulated, load[index], rank[index]);
            if best.is_none_or(|(b, _)| key < b) {
                best = Some((key, index));
            }
        }
        if let Some(((emulated, _, _), index)) = best {
            load[index] += 1;
            free -= 1;
            assignments.push(Assignment {
                run_id: run.id.clone(),
                agent_id: agents[index].agent_id.clone(),
                platform: requirement.0,
                emulated,
            });
        }
    }
    assignments
}

/// Each agent's position when the agents are sorted by id, equal ids by their position in
/// `agents` (so comparing ranks orders agents as comparing ids, then positions, would).
fn id_ranks(agents: &[AgentView]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..agents.len()).collect();
    order.sort_by(|&a, &b| agents[a].agent_id.cmp(&agents[b].agent_id));
    let mut rank = vec![0; agents.len()];
    for (position, index) in order.into_iter().enumerate() {
        rank[index] = position;
    }
    rank
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{command, AssignRun, Command, Platform, RunRequest, SubmitRun};

    /// `solve` as it was before agents were ranked: the best agent by (emulated, load, id
    /// string), the first found on a tie.
    fn reference_solve(state: &State, agents: &[AgentView]) -> Vec<Assignment> {
        let mut load: Vec<u32> = agents.iter().map(|a| a.running).collect();
        let mut free: u64 = agents
            .iter()
            .map(|a| u64::from(a.capacity.saturating_sub(a.running)))
            .sum();
        let mut assignments = Vec::new();
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

    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) as usize
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.next() % items.len()]
        }
    }

    const PLATFORMS: &[&str] = &["linux/amd64", "linux/arm64", "linux/arm/v7", "linux/arm"];

    fn random_state(rng: &mut Lcg) -> State {
        let mut state = State::default();
        let runs = rng.next() % 40;
        for _ in 0..runs {
            let request = RunRequest {
                task_yaml: "steps:\n  - cmd: busybox echo hi\n".to_string(),
                registry: "127.0.0.1:5000".to_string(),
                platform: Some(PlatformSpec::parse(rng.pick(PLATFORMS)).unwrap().to_pb()),
                kind: "run".to_string(),
                submitter: rng.pick(&["flood", "lone", "ci"]).to_string(),
                agent_pool: rng.pick(&["", "", "", "gpu"]).to_string(),
                agent_labels: if rng.next().is_multiple_of(3) {
                    random_labels(rng)
                } else {
                    Vec::new()
                },
                ..RunRequest::default()
            };
            let outcome = state.apply(
                1,
                &Command {
                    at_ms: 1,
                    kind: Some(command::Kind::SubmitRun(SubmitRun {
                        request: Some(request),
                        ..Default::default()
                    })),
                },
            );
            assert_eq!(outcome.result.error, "");
            // Some runs already running, so that fairness keys differ in how served they are.
            if rng.next().is_multiple_of(4) {
                let agent_id = rng.pick(&["a1", "b", "a10"]).to_string();
                let assigned = state.apply(
                    7,
                    &Command {
                        at_ms: 2,
                        kind: Some(command::Kind::AssignRun(AssignRun {
                            run_id: outcome.result.run_id.clone(),
                            agent_id,
                            agent_platform: Some(Platform::default()),
                            emulated: false,
                        })),
                    },
                );
                assert_eq!(assigned.result.error, "");
            }
        }
        state
    }

    fn random_labels(rng: &mut Lcg) -> Vec<KeyValue> {
        (0..rng.next() % 3)
            .map(|_| KeyValue {
                key: rng.pick(&["disk", "gpu"]).to_string(),
                value: rng.pick(&["ssd", "hdd", "yes"]).to_string(),
            })
            .collect()
    }

    fn random_agents(rng: &mut Lcg) -> Vec<AgentView> {
        // Few distinct ids, so that equal ids (and ids that are prefixes of others) occur.
        let ids = ["a1", "a10", "a2", "b", "", "a1"];
        (0..rng.next() % 12)
            .map(|_| {
                let platforms = (0..1 + rng.next() % 2)
                    .map(|_| {
                        (
                            PlatformSpec::parse(rng.pick(PLATFORMS)).unwrap(),
                            rng.next().is_multiple_of(3),
                        )
                    })
                    .collect();
                let capacity = (rng.next() % 4) as u32;
                AgentView {
                    agent_id: rng.pick(&ids).to_string(),
                    platforms,
                    capacity,
                    running: (rng.next() % 3) as u32,
                    pool: rng.pick(&["", "", "gpu"]).to_string(),
                    labels: random_labels(rng),
                }
            })
            .collect()
    }

    #[test]
    fn choices_match_the_reference_that_compares_agent_ids() {
        let mut rng = Lcg(0x5eed);
        let mut placed = 0;
        let mut ties = 0;
        for case in 0..3000 {
            let state = random_state(&mut rng);
            let agents = random_agents(&mut rng);
            let expected = reference_solve(&state, &agents);
            assert_eq!(solve(&state, &agents), expected, "case {case}: {agents:?}");
            placed += expected.len();
            let mut ids: Vec<&str> = agents.iter().map(|a| a.agent_id.as_str()).collect();
            ids.sort_unstable();
            ties += usize::from(ids.windows(2).any(|w| w[0] == w[1]));
        }
        // The cases exercised something: many placements, and agents sharing an id.
        assert!(placed > 3000, "only {placed} placements");
        assert!(ties > 300, "only {ties} cases with equal ids");
    }

    #[test]
    fn ranks_follow_id_order_and_then_position() {
        let agents: Vec<AgentView> = ["b", "a10", "a1", "b", "a2", ""]
            .iter()
            .map(|id| AgentView {
                agent_id: id.to_string(),
                ..AgentView::default()
            })
            .collect();
        assert_eq!(id_ranks(&agents), vec![4, 2, 1, 5, 3, 0]);
    }
}

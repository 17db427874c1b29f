//! `kiln agents`: the agents the farm knows (ready, draining, lost), their platforms and runs;
//! `kiln agents drain ID` / `undrain ID`.

use std::process::ExitCode;

use clap::Subcommand;

use crate::client::Farm;
use crate::output;

#[derive(Subcommand, Debug)]
pub enum AgentsCommand {
    /// Lists the agents (the default).
    List,
    /// Stops handing new runs to an agent; its running runs go on. The agent shows as
    /// `draining` until `kiln agents undrain ID`.
    Drain {
        /// The agent's id, as `kiln agents` lists it.
        agent_id: String,
    },
    /// Lets a drained agent take runs again.
    Undrain {
        /// The agent's id, as `kiln agents` lists it.
        agent_id: String,
    },
}

pub async fn run(coordinator: &str, command: Option<AgentsCommand>) -> anyhow::Result<ExitCode> {
    match command.unwrap_or(AgentsCommand::List) {
        AgentsCommand::List => list(coordinator).await,
        AgentsCommand::Drain { agent_id } => drain(coordinator, agent_id, true).await,
        AgentsCommand::Undrain { agent_id } => drain(coordinator, agent_id, false).await,
    }
}

async fn drain(coordinator: &str, agent_id: String, drain: bool) -> anyhow::Result<ExitCode> {
    let farm = Farm::connect(coordinator).await?;
    let state = farm.drain_agent(&agent_id, drain).await?;
    println!("Agent {agent_id}: {state}");
    Ok(ExitCode::SUCCESS)
}

async fn list(coordinator: &str) -> anyhow::Result<ExitCode> {
    let farm = Farm::connect(coordinator).await?;
    let info = farm.leader_info().await?;
    println!("Registry: {}", info.registry);
    if info.agents.is_empty() {
        println!("No agent is connected: runs stay Queued until one connects.");
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![[
        "AGENT".to_string(),
        "STATE".to_string(),
        "POOL".to_string(),
        "CAPACITY".to_string(),
        "RUNS".to_string(),
        "LAST SEEN".to_string(),
        "PLATFORMS".to_string(),
    ]];
    for agent in &info.agents {
        let platforms: Vec<String> = agent
            .platforms
            .iter()
            .map(|p| {
                let name = output::platform(p.platform.as_ref());
                if p.emulated {
                    format!("{name} (emulated)")
                } else {
                    name
                }
            })
            .collect();
        let pool = if agent.pool.is_empty() {
            "-".to_string()
        } else {
            agent.pool.clone()
        };
        rows.push([
            agent.agent_id.clone(),
            agent.state.clone(),
            pool,
            agent.capacity.to_string(),
            agent
                .active_runs
                .join(",")
                .chars()
                .take(40)
                .collect::<String>(),
            format!("{:.1}s ago", agent.last_seen_ms_ago as f64 / 1000.0),
            platforms.join(", "),
        ]);
    }
    print!("{}", output::table(&rows));
    Ok(ExitCode::SUCCESS)
}

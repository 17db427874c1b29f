//! `kiln agents`: the agents connected to the farm and the platforms they run.

use std::process::ExitCode;

use kiln_proto::v1::GetInfoRequest;

use crate::client::{self, status_error};
use crate::output;

pub async fn run(coordinator: &str) -> anyhow::Result<ExitCode> {
    let mut client = client::connect(coordinator).await?;
    let info = client
        .get_info(GetInfoRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    println!("Registry: {}", info.registry);
    if info.agents.is_empty() {
        println!("No agent is connected: runs stay Queued until one connects.");
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![[
        "AGENT".to_string(),
        "CAPACITY".to_string(),
        "RUNS".to_string(),
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
        rows.push([
            agent.agent_id.clone(),
            agent.capacity.to_string(),
            agent
                .active_runs
                .join(",")
                .chars()
                .take(40)
                .collect::<String>(),
            platforms.join(", "),
        ]);
    }
    print!("{}", output::table(&rows));
    Ok(ExitCode::SUCCESS)
}

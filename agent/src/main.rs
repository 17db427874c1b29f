//! The `kiln-agent` binary: parses flags, sets up logging and signals, runs the agent.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use kiln_agent::AgentConfig;
use tokio_util::sync::CancellationToken;

/// kiln build agent: runs task-file steps on a Docker Engine for a kiln coordinator.
#[derive(Debug, Parser)]
#[command(name = "kiln-agent", version)]
struct Args {
    /// gRPC address of a coordinator (any member; followers point to the leader).
    #[arg(
        long,
        env = "KILN_COORDINATOR",
        default_value = "http://127.0.0.1:7878"
    )]
    coordinator: String,

    /// Docker Engine endpoint (unix:///path or tcp://host:port).
    #[arg(
        long,
        env = "DOCKER_HOST",
        default_value = "unix:///var/run/docker.sock"
    )]
    docker_host: String,

    /// Directory for run workspaces, step logs and scratch files. It must be visible to the
    /// Docker Engine at the same path, because workspaces are bind-mounted into containers.
    #[arg(
        long,
        env = "KILN_AGENT_WORK_DIR",
        default_value = "/var/lib/kiln-agent"
    )]
    work_dir: PathBuf,

    /// Stable identity of this agent, kept across restarts (default: the host name).
    #[arg(long, env = "KILN_AGENT_ID")]
    agent_id: Option<String>,

    /// How many runs this agent executes at once.
    #[arg(long, env = "KILN_AGENT_CAPACITY", default_value_t = 2)]
    capacity: u32,

    /// Secret store for task files' `secrets:`: the secret with Key Vault URL
    /// https://<vault-host>/secrets/<name>[/<version>] is the file DIR/<vault-host>/<name>
    /// (a trailing newline is stripped). Without it, runs that declare secrets end in Error.
    #[arg(long, env = "KILN_AGENT_SECRETS_DIR", value_name = "DIR")]
    secrets_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let agent_id = match args.agent_id {
        Some(id) => id,
        None => std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .context("no --agent-id given and no host name found")?,
    };
    let mut config = AgentConfig::new(args.coordinator, args.docker_host, args.work_dir, agent_id);
    config.capacity = args.capacity.max(1);
    config.secrets_dir = args.secrets_dir;

    let shutdown = CancellationToken::new();
    let signal_token = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received, shutting down");
        signal_token.cancel();
    });
    kiln_agent::run(config, shutdown)
        .await
        .context("agent failed")?;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

//! The `kiln-agent` binary: parses flags, sets up logging and signals, runs the agent.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kiln_agent::{prune, AgentConfig};
use tokio_util::sync::CancellationToken;

/// kiln build agent: runs task-file steps on a Docker Engine for a kiln coordinator.
#[derive(Debug, Parser)]
#[command(name = "kiln-agent", version)]
struct Args {
    /// gRPC addresses of the coordinators: a comma-separated list of HOST:PORT or http://
    /// URLs, any members of the cluster (followers point to the leader; members that are down
    /// are skipped).
    #[arg(
        long,
        env = "KILN_COORDINATOR",
        default_value = "http://127.0.0.1:7878",
        value_name = "ENDPOINTS",
        value_parser = parse_coordinators
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

    /// The agent pool this agent serves (ACR's --agent-pool); runs submitted with
    /// `--agent-pool NAME` go only to agents of that pool, other runs only to agents of none.
    #[arg(long, env = "KILN_AGENT_POOL", default_value = "")]
    pool: String,

    /// A label runs can ask for with `--agent-label KEY=VALUE` (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,

    /// On SIGTERM, seconds the running runs may take to finish before they are canceled
    /// (no new runs are taken meanwhile). A second SIGTERM or Ctrl-C cancels them at once.
    #[arg(long, env = "KILN_AGENT_DRAIN_TIMEOUT", default_value_t = kiln_agent::config::DEFAULT_DRAIN_TIMEOUT.as_secs())]
    drain_timeout_seconds: u64,

    /// Seconds between disk clean-ups (old dangling images, build cache, scratch files and
    /// directories of finished runs); the first runs at start. 0 disables them.
    #[arg(long, env = "KILN_AGENT_PRUNE_INTERVAL", default_value_t = prune::DEFAULT_INTERVAL.as_secs())]
    prune_interval_seconds: u64,

    /// Dangling (untagged) images no container uses are removed once created this many hours
    /// ago. Tagged images are never removed.
    #[arg(long, env = "KILN_AGENT_PRUNE_IMAGE_AGE", default_value_t = hours(prune::DEFAULT_IMAGE_MAX_AGE))]
    prune_image_age_hours: u64,

    /// Build cache unused for this many hours is removed.
    #[arg(long, env = "KILN_AGENT_PRUNE_BUILD_CACHE_AGE", default_value_t = hours(prune::DEFAULT_BUILD_CACHE_MAX_AGE))]
    prune_build_cache_age_hours: u64,

    /// Files in the work directory's scratch/ unmodified for this many hours are removed, and
    /// so are directories of runs the agent no longer runs (those never before 8.5 hours, the
    /// longest a run can last).
    #[arg(long, env = "KILN_AGENT_PRUNE_SCRATCH_AGE", default_value_t = hours(prune::DEFAULT_SCRATCH_MAX_AGE))]
    prune_scratch_age_hours: u64,
}

fn hours(duration: Duration) -> u64 {
    duration.as_secs() / 3600
}

fn from_hours(hours: u64) -> Duration {
    Duration::from_secs(hours.saturating_mul(3600))
}

/// Checks the endpoint list at start, so a typo is a one-line error, not endless reconnects.
fn parse_coordinators(text: &str) -> Result<String, String> {
    kiln_proto::endpoints::parse_list(text)
        .map(|_| text.to_string())
        .map_err(|error| error.to_string())
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("'{text}' is not KEY=VALUE")),
    }
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
    config.pool = args.pool;
    config.labels = args
        .labels
        .into_iter()
        .map(|(key, value)| kiln_proto::pb::KeyValue { key, value })
        .collect();
    config.drain_timeout = Duration::from_secs(args.drain_timeout_seconds);
    config.prune = prune::PrunePolicy {
        interval: Duration::from_secs(args.prune_interval_seconds),
        image_max_age: from_hours(args.prune_image_age_hours),
        build_cache_max_age: from_hours(args.prune_build_cache_age_hours),
        scratch_max_age: from_hours(args.prune_scratch_age_hours),
        ..config.prune
    };

    let shutdown = CancellationToken::new();
    let signal_token = shutdown.clone();
    let stop_now = config.stop_now.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received: draining (a second signal cancels running runs)");
        signal_token.cancel();
        wait_for_signal().await;
        tracing::warn!("second signal: canceling running runs");
        stop_now.cancel();
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

//! `kiln-coordinator`: the coordinator daemon.

use std::net::SocketAddr;
use std::path::PathBuf;

use std::time::Duration;

use clap::Parser;
use kiln_coordinator::control;
use tokio_util::sync::CancellationToken;

/// Runs the kiln coordinator: keeps runs in Raft-replicated state (RocksDB on disk), schedules
/// them on connected agents and serves the gRPC API used by `kiln` and `kiln-agent`.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to serve gRPC on, for the CLI and agents.
    #[arg(long, env = "KILN_LISTEN", default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
    /// Directory for the Raft log and the applied state. Created if missing.
    #[arg(long, env = "KILN_DATA_DIR")]
    data_dir: PathBuf,
    /// Registry that runs push to by default and where build contexts and step logs are stored
    /// (host[:port]; plain HTTP for loopback addresses).
    #[arg(long, env = "KILN_REGISTRY", default_value = "127.0.0.1:5000")]
    registry: String,
    /// This coordinator's Raft node id.
    #[arg(long, default_value_t = 1)]
    node_id: u64,
    /// Seconds a run whose agent was lost or disconnected mid-step keeps its lease, waiting for
    /// the agent to come back, before the lost-agent policy applies (Error, or requeue when the
    /// run asked for it). Runs whose agent is lost before any step started are requeued at once.
    #[arg(long, default_value_t = control::DEFAULT_AGENT_GRACE.as_secs())]
    agent_grace_seconds: u64,
    /// Milliseconds between heartbeats to and from each agent.
    #[arg(long, default_value_t = control::DEFAULT_HEARTBEAT_INTERVAL.as_millis() as u64)]
    heartbeat_interval_ms: u64,
    /// Milliseconds of silence after which an agent is declared lost: it gets no new runs and
    /// its connection is dropped.
    #[arg(long, default_value_t = control::DEFAULT_LOST_AFTER.as_millis() as u64)]
    agent_lost_after_ms: u64,
    /// Milliseconds an agent has to acknowledge an assignment before the run goes back to the
    /// queue.
    #[arg(long, default_value_t = control::DEFAULT_ACK_TIMEOUT.as_millis() as u64)]
    ack_timeout_ms: u64,
    /// Seconds past its own timeout a run may go (its agent should end it) before the
    /// coordinator ends it Timeout and tells the agent to stop it.
    #[arg(long, default_value_t = control::DEFAULT_TIMEOUT_SLACK.as_secs())]
    timeout_slack_seconds: u64,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    if args.heartbeat_interval_ms == 0 || args.agent_lost_after_ms <= args.heartbeat_interval_ms {
        eprintln!(
            "kiln-coordinator: --agent-lost-after-ms ({}) must be larger than --heartbeat-interval-ms ({}), which must not be 0",
            args.agent_lost_after_ms, args.heartbeat_interval_ms
        );
        return std::process::ExitCode::from(2);
    }
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        on_signal.cancel();
    });
    let config = kiln_coordinator::Config {
        listen: args.listen,
        data_dir: args.data_dir,
        registry: args.registry,
        node_id: args.node_id,
        liveness: control::LivenessConfig {
            heartbeat_interval: Duration::from_millis(args.heartbeat_interval_ms),
            lost_after: Duration::from_millis(args.agent_lost_after_ms),
            agent_grace: Duration::from_secs(args.agent_grace_seconds),
            ack_timeout: Duration::from_millis(args.ack_timeout_ms.max(1)),
            timeout_slack: Duration::from_secs(args.timeout_slack_seconds),
        },
    };
    match kiln_coordinator::run(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kiln-coordinator: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn wait_for_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

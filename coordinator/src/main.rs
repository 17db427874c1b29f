//! `kiln-coordinator`: the coordinator daemon.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
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
    /// Seconds a run waits for its agent to reconnect after a disconnect (or a coordinator
    /// restart) before it ends in Error.
    #[arg(long, default_value_t = kiln_coordinator::control::DEFAULT_AGENT_GRACE.as_secs())]
    agent_grace_seconds: u64,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
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
        agent_grace: std::time::Duration::from_secs(args.agent_grace_seconds),
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

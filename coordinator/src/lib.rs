//! The kiln coordinator: holds runs in Raft-replicated state, schedules them on agents and
//! serves the gRPC API for the CLI and agents.
//!
//! Module map: `store` (RocksDB: Raft log and applied state), `raft_node` (drives raft-rs and
//! applies commands to `kiln_state::State`), `control` (the leader's loop that proposes
//! assignments, cancellations and failures), `agents` (connected agents, leader memory),
//! `logs` (live log fan-out), `stored_logs` (stored step logs streamed back), `api` (the gRPC services, the only place that knows tonic's
//! server side).

pub mod agents;
pub mod api;
pub mod control;
pub mod logs;
pub mod raft_node;
pub mod store;
pub mod stored_logs;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use kiln_proto::v1::agent_service_server::AgentServiceServer;
use kiln_proto::v1::control_server::ControlServer;

/// How long open calls may take to finish once shutdown begins.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
/// Largest gRPC message accepted (a run request carries a task file of at most 512 KiB).
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Registry host runs push to by default, and where contexts and logs are stored.
    pub registry: String,
    pub node_id: u64,
    /// Heartbeats, the lost-agent limit, the grace period and the acknowledgement timeout.
    pub liveness: control::LivenessConfig,
}

/// Runs the coordinator until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    serve(listener, config, shutdown).await
}

/// Like [`run`], on a listener the caller bound (tests bind port 0).
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            config.data_dir.display()
        )
    })?;
    let registry = kiln_registry::Registry::new(&config.registry)
        .with_context(|| format!("invalid registry '{}'", config.registry))?;
    let store = store::Store::open(&config.data_dir.join("db"))?;
    let raft_shutdown = CancellationToken::new();
    let (raft, raft_thread) = raft_node::start(store, config.node_id, raft_shutdown.clone())?;
    let agents = Arc::new(agents::Agents::new(config.liveness.lost_after));
    let logs = Arc::new(logs::LogHub::default());
    let tasks = TaskTracker::new();

    let control = control::Control {
        raft: raft.clone(),
        agents: agents.clone(),
        logs: logs.clone(),
        started: Instant::now(),
        liveness: config.liveness,
    };
    tasks.spawn(control.run(shutdown.child_token()));

    let api = api::Api {
        raft,
        agents: agents.clone(),
        logs,
        registry,
        tasks: tasks.clone(),
        liveness: config.liveness,
    };
    let address = listener.local_addr()?;
    tracing::info!(%address, registry = %config.registry, data_dir = %config.data_dir.display(), "coordinator listening");
    // Live log lines are small writes: without TCP_NODELAY, Nagle's algorithm holds some of
    // them back behind heartbeats (tonic does not set it on a caller's listener).
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |stream| {
            if let Ok(stream) = &stream {
                let _ = stream.set_nodelay(true);
            }
            stream
        },
    );
    let server = tonic::transport::Server::builder()
        // HTTP/2 pings, so a peer that vanished without closing its connection is noticed
        // even when no heartbeat is due.
        .http2_keepalive_interval(Some(
            config
                .liveness
                .heartbeat_interval
                .max(std::time::Duration::from_secs(1)),
        ))
        .http2_keepalive_timeout(Some(config.liveness.lost_after))
        .add_service(
            ControlServer::new(api.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            AgentServiceServer::new(api)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled());
    // On shutdown, end the agents' streams at once (they would keep the server open), and give
    // the remaining calls (log followers) a few seconds before they are cut.
    let result = tokio::select! {
        result = server => result,
        _ = async {
            shutdown.cancelled().await;
            agents.disconnect_all();
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!("some calls did not finish within {SHUTDOWN_GRACE:?} of shutdown; cut");
            Ok(())
        }
    };
    // Ordered drain: the API is closed, now stop the loops, then Raft (which flushes RocksDB).
    tasks.close();
    shutdown.cancel();
    if tokio::time::timeout(std::time::Duration::from_secs(5), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("some coordinator tasks did not stop within 5s");
    }
    raft_shutdown.cancel();
    let _ = tokio::task::spawn_blocking(move || raft_thread.join()).await;
    result.context("the gRPC server failed")
}

//! The kiln coordinator: holds runs in Raft-replicated state, schedules them on agents and
//! serves the gRPC API for the CLI and agents.
//!
//! Module map: `store` (RocksDB: Raft log, snapshots and applied state), `cluster` (how a data
//! directory becomes a member: new, join, restore, forced), `raft_node` (drives raft-rs and
//! applies commands to `kiln_state::State`), `transport` (Raft messages between coordinators),
//! `control` (the leader's loop that proposes assignments, cancellations, failures and
//! retention), `agents` (connected agents, leader memory), `logs` (live log fan-out),
//! `stored_logs` (stored step logs streamed back), `api` and `cluster_api` (the client gRPC
//! services, the only places that build tonic statuses for clients), `http` (health).

pub mod agents;
pub mod api;
pub mod cluster;
pub mod cluster_api;
pub mod control;
pub mod http;
pub mod logs;
pub mod raft_node;
pub mod store;
pub mod stored_logs;
pub mod transport;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::interceptor::InterceptedService;

use kiln_proto::v1::agent_service_server::AgentServiceServer;
use kiln_proto::v1::cluster_server::ClusterServer;
use kiln_proto::v1::control_server::ControlServer;
use kiln_proto::v1::peer_server::PeerServer;
use kiln_state::pb::Member;

use crate::raft_node::Admin;

/// How long open calls may take to finish once shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long a leader that is shutting down waits to hand leadership over.
const TRANSFER_ON_SHUTDOWN: Duration = Duration::from_secs(2);
/// Largest gRPC message accepted (a run request carries a task file of at most 512 KiB).
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct Config {
    /// Where the CLI and agents connect.
    pub listen: SocketAddr,
    /// Where the other coordinators send Raft messages.
    pub peer_listen: SocketAddr,
    /// Health (and later metrics, webhooks, dashboard); `None` turns it off.
    pub http_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    /// Registry host runs push to by default, and where contexts and logs are stored.
    pub registry: String,
    /// This node's id, addresses and how it joins the cluster. Empty advertised URLs default
    /// to `http://` and the bound listen addresses.
    pub membership: cluster::Membership,
    pub raft: raft_node::RaftConfig,
    /// Heartbeats, the lost-agent limit, the grace period and the acknowledgement timeout.
    pub liveness: control::LivenessConfig,
    pub retention: control::Retention,
}

/// The sockets a coordinator serves on, bound by the caller (tests bind port 0).
pub struct Listeners {
    pub client: TcpListener,
    pub peer: TcpListener,
    pub http: Option<TcpListener>,
}

/// Binds the listen addresses of `config`, with errors that name the flag.
pub async fn bind(config: &Config) -> anyhow::Result<Listeners> {
    let client = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", config.listen))?;
    let peer = TcpListener::bind(config.peer_listen)
        .await
        .with_context(|| format!("cannot listen on {} (--peer-listen)", config.peer_listen))?;
    let http = match config.http_listen {
        Some(address) => Some(http::bind(address).await?),
        None => None,
    };
    Ok(Listeners { client, peer, http })
}

/// Runs the coordinator until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listeners = bind(&config).await?;
    serve(listeners, config, shutdown).await
}

/// Like [`run`], on listeners the caller bound.
pub async fn serve(
    listeners: Listeners,
    mut config: Config,
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
    let client_address = listeners.client.local_addr()?;
    let peer_address = listeners.peer.local_addr()?;
    if config.membership.client_url.is_empty() {
        config.membership.client_url = format!("http://{client_address}");
    }
    if config.membership.peer_url.is_empty() {
        config.membership.peer_url = format!("http://{peer_address}");
    }
    let store = store::Store::open(&config.data_dir.join("db"))?;
    let identity = cluster::prepare(&store, &config.membership)?;
    let raft_shutdown = CancellationToken::new();
    // If this future is dropped (its task aborted), Raft, the peer server and the HTTP port
    // stop with it instead of running on detached.
    let _stop_raft_on_drop = raft_shutdown.clone().drop_guard();
    let transport = transport::Transport::new(
        identity.node_id,
        identity.cluster_id,
        config.membership.peer_url.clone(),
        Some(peer_address.ip()).filter(|ip| !ip.is_unspecified()),
        tokio::runtime::Handle::current(),
        raft_shutdown.clone(),
    );
    let (raft, raft_thread) = raft_node::start(
        store,
        identity.node_id,
        identity.cluster_id,
        config.raft,
        transport.clone(),
        raft_shutdown.clone(),
    )?;
    let agents = Arc::new(agents::Agents::new(config.liveness.lost_after));
    let logs = Arc::new(logs::LogHub::default());
    let tasks = TaskTracker::new();

    // Raft traffic first: peers must reach this node before anything else.
    let peer_server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(1)))
        .http2_keepalive_timeout(Some(Duration::from_secs(2)))
        .add_service(
            PeerServer::new(transport::PeerService {
                raft: raft.clone(),
                transport: transport.clone(),
                stop: raft_shutdown.clone(),
            })
            .max_decoding_message_size(transport::MAX_PEER_MESSAGE)
            .max_encoding_message_size(transport::MAX_PEER_MESSAGE),
        )
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listeners.peer),
            raft_shutdown.clone().cancelled_owned(),
        );
    let peer_task = tokio::spawn(peer_server);
    let http_shutdown = CancellationToken::new();
    let _stop_http_on_drop = http_shutdown.clone().drop_guard();
    if let Some(listener) = listeners.http {
        let address = listener.local_addr()?;
        tracing::info!(%address, "health on http://{address}/healthz and /readyz");
        tokio::spawn(http::serve(listener, raft.clone(), http_shutdown.clone()));
    }

    let me = Member {
        id: identity.node_id,
        peer_url: config.membership.peer_url.clone(),
        client_url: config.membership.client_url.clone(),
    };
    let control = control::Control {
        raft: raft.clone(),
        agents: agents.clone(),
        logs: logs.clone(),
        liveness: config.liveness,
        retention: config.retention,
        me,
    };
    tasks.spawn(control.run(shutdown.child_token()));

    let api = api::Api {
        raft: raft.clone(),
        agents: agents.clone(),
        logs,
        registry,
        tasks: tasks.clone(),
        liveness: config.liveness,
    };
    tracing::info!(
        address = %client_address,
        peer = %peer_address,
        node_id = identity.node_id,
        cluster_id = %transport::cluster_id_text(identity.cluster_id),
        registry = %config.registry,
        data_dir = %config.data_dir.display(),
        "coordinator listening"
    );
    // Live log lines are small writes: without TCP_NODELAY, Nagle's algorithm holds some of
    // them back behind heartbeats (tonic does not set it on a caller's listener).
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listeners.client),
        |stream| {
            if let Ok(stream) = &stream {
                let _ = stream.set_nodelay(true);
            }
            stream
        },
    );
    let check = api::cluster_interceptor(identity.cluster_id);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    tokio::spawn(report_health(
        raft.clone(),
        health_reporter,
        shutdown.clone(),
    ));
    // The gRPC server stops only after the leadership hand-over below, so that agents and
    // clients get a not-leader answer naming the new leader rather than a refused connection.
    let server_stop = CancellationToken::new();
    let server = tonic::transport::Server::builder()
        // HTTP/2 pings, so a peer that vanished without closing its connection is noticed
        // even when no heartbeat is due.
        .http2_keepalive_interval(Some(
            config
                .liveness
                .heartbeat_interval
                .max(Duration::from_secs(1)),
        ))
        .http2_keepalive_timeout(Some(config.liveness.lost_after))
        .add_service(health_service)
        .add_service(InterceptedService::new(
            ControlServer::new(api.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            check.clone(),
        ))
        .add_service(InterceptedService::new(
            AgentServiceServer::new(api)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            check.clone(),
        ))
        .add_service(InterceptedService::new(
            ClusterServer::new(cluster_api::ClusterApi { raft: raft.clone() }),
            check,
        ))
        .serve_with_incoming_shutdown(incoming, server_stop.clone().cancelled_owned());
    // A cluster of one leads within milliseconds: wait for that, so that its first clients do
    // not get a not-leader answer. A member of a larger cluster serves at once (it answers
    // with leader hints).
    let voters = raft
        .status_report()
        .await
        .map(|r| r.voters)
        .unwrap_or_default();
    if voters == [identity.node_id] {
        let _ = tokio::time::timeout(Duration::from_secs(2), raft.wait_for_leadership()).await;
    }
    let failed = raft.failed();
    let mut server = std::pin::pin!(server);
    // A failed Raft thread takes the process down (fail-stop).
    let result = tokio::select! {
        result = &mut server => result.map_err(anyhow::Error::from),
        _ = failed.cancelled() => Err(anyhow::anyhow!("the Raft thread stopped: {}", raft.failure())),
        _ = shutdown.cancelled() => {
            hand_over_leadership(&raft).await;
            server_stop.cancel();
            agents.disconnect_all();
            // Give the remaining calls (log followers) a few seconds before they are cut.
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(result) => result.map_err(anyhow::Error::from),
                Err(_) => {
                    tracing::warn!("some calls did not finish within {SHUTDOWN_GRACE:?} of shutdown; cut");
                    Ok(())
                }
            }
        }
    };
    // Ordered drain: the API is closed, now stop the loops, then Raft (which flushes RocksDB).
    tasks.close();
    shutdown.cancel();
    if tokio::time::timeout(Duration::from_secs(5), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("some coordinator tasks did not stop within 5s");
    }
    http_shutdown.cancel();
    raft_shutdown.cancel();
    // Peers keep their streams open; a graceful stop would wait for them forever.
    peer_task.abort();
    let _ = tokio::task::spawn_blocking(move || raft_thread.join()).await;
    result.context("the coordinator failed")
}

/// A leader that stops hands leadership to the most caught-up voter first, so a planned
/// restart costs about one round trip instead of an election timeout.
async fn hand_over_leadership(raft: &raft_node::RaftHandle) {
    if !raft.is_leader() {
        return;
    }
    let voters = raft
        .status_report()
        .await
        .map(|report| report.voters.len())
        .unwrap_or(0);
    if voters < 2 {
        return;
    }
    match tokio::time::timeout(TRANSFER_ON_SHUTDOWN, raft.admin(Admin::TransferLeader(0))).await {
        Ok(Ok(leader)) => tracing::info!(leader, "handed leadership over before stopping"),
        Ok(Err(error)) => tracing::warn!(%error, "could not hand leadership over before stopping"),
        Err(_) => tracing::warn!("leadership hand-over did not finish in {TRANSFER_ON_SHUTDOWN:?}"),
    }
}

/// Keeps the gRPC health service in step with readiness.
async fn report_health(
    raft: raft_node::RaftHandle,
    reporter: tonic_health::server::HealthReporter,
    shutdown: CancellationToken,
) {
    let mut status = raft.status_watch();
    loop {
        let current = status.borrow_and_update().clone();
        let ready = current.ready || current.ready_leader;
        let serving = if ready {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        reporter.set_service_status("", serving).await;
        reporter
            .set_service_status("kiln.v1.Control", serving)
            .await;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = status.changed() => if changed.is_err() { return },
        }
    }
}

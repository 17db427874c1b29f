//! `kiln-coordinator`: the coordinator daemon.

use std::net::SocketAddr;
use std::path::PathBuf;

use std::time::Duration;

use clap::Parser;
use kiln_coordinator::cluster::{self, InitialClusterState};
use kiln_coordinator::{control, raft_node, store, transport};
use tokio_util::sync::CancellationToken;

/// Runs the kiln coordinator: keeps runs in Raft-replicated state (RocksDB on disk), schedules
/// them on connected agents and serves the gRPC API used by `kiln` and `kiln-agent`.
///
/// A new cluster of three: start each member with its own --node-id, --listen, --peer-listen
/// and --data-dir, the same --initial-member list and --initial-cluster-state new. A member
/// added later (`kiln cluster add`) starts with --join --cluster-id and an empty directory.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to serve gRPC on, for the CLI and agents.
    #[arg(long, env = "KILN_LISTEN", default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
    /// Address to serve Raft traffic from the other coordinators on.
    #[arg(long, env = "KILN_PEER_LISTEN", default_value = "127.0.0.1:7879")]
    peer_listen: SocketAddr,
    /// Address of the HTTP port: /healthz and /readyz (later metrics, webhooks, dashboard).
    /// `off` turns it off.
    #[arg(long, env = "KILN_HTTP_LISTEN", default_value = kiln_coordinator::http::DEFAULT_HTTP_LISTEN)]
    http_listen: String,
    /// The client URL others are told to use for this member (default: http:// and --listen).
    #[arg(long, env = "KILN_ADVERTISE_CLIENT_URL")]
    advertise_client_url: Option<String>,
    /// The peer URL the other members send Raft traffic to (default: http:// and --peer-listen).
    #[arg(long, env = "KILN_ADVERTISE_PEER_URL")]
    advertise_peer_url: Option<String>,
    /// Directory for the Raft log and the applied state. Created if missing.
    #[arg(long, env = "KILN_DATA_DIR")]
    data_dir: PathBuf,
    /// Registry that runs push to by default and where build contexts and step logs are stored
    /// (host[:port]; plain HTTP for loopback addresses).
    #[arg(long, env = "KILN_REGISTRY", default_value = "127.0.0.1:5000")]
    registry: String,
    /// This coordinator's Raft node id (above 0, unique in the cluster, never reused).
    #[arg(long, env = "KILN_NODE_ID", default_value_t = 1)]
    node_id: u64,
    /// A member of a new cluster, `id=1,peer=http://10.0.0.1:7879,client=http://10.0.0.1:7878`;
    /// repeat for each member (or separate them with `;`). Only read with
    /// --initial-cluster-state new on an empty data directory. Without it, a new cluster is this
    /// node alone.
    #[arg(
        long = "initial-member",
        env = "KILN_INITIAL_MEMBERS",
        value_delimiter = ';'
    )]
    initial_members: Vec<String>,
    /// `new`: an empty data directory starts a new cluster from --initial-member. `existing`:
    /// the data directory must already belong to a cluster. A directory that does is never
    /// reset, whatever this says.
    #[arg(
        long,
        env = "KILN_INITIAL_CLUSTER_STATE",
        value_enum,
        default_value = "existing"
    )]
    initial_cluster_state: InitialClusterState,
    /// Distinguishes two new clusters started with the same members.
    #[arg(long, env = "KILN_CLUSTER_TOKEN", default_value = "kiln")]
    cluster_token: String,
    /// Start with an empty data directory and wait to be added (`kiln cluster add`) to the
    /// cluster given by --cluster-id.
    #[arg(long, requires = "cluster_id")]
    join: bool,
    /// The cluster to join (16 hex digits, printed by `kiln cluster add` and `kiln cluster status`).
    #[arg(long, env = "KILN_CLUSTER_ID")]
    cluster_id: Option<String>,
    /// Start a new cluster from a backup made by `kiln cluster snapshot save` (with
    /// --initial-cluster-state new; every initial member restores the same file).
    #[arg(long)]
    restore: Option<PathBuf>,
    /// Disaster recovery after losing a quorum: keep this member's applied state and make it a
    /// cluster of one. Add the others back afterwards with empty directories and new ids.
    #[arg(long)]
    force_new_cluster: bool,
    /// Finished runs kept in the replicated state (older ones are forgotten; their logs and
    /// images stay in the registry).
    #[arg(long, default_value_t = control::DEFAULT_RETAIN_FINISHED)]
    retain_finished_runs: u64,
    /// Days a finished run is kept (0 = no age limit).
    #[arg(long, default_value_t = control::DEFAULT_RETAIN_DAYS)]
    retain_days: u64,
    /// Compact the Raft log once it holds this many applied entries.
    #[arg(long, default_value_t = raft_node::RaftConfig::default().compact_after)]
    compact_after_entries: u64,
    /// Entries kept after a compaction for followers that fell a little behind.
    #[arg(long, default_value_t = raft_node::RaftConfig::default().catch_up_entries)]
    catch_up_entries: u64,
    /// Milliseconds of silence from the leader after which a follower campaigns (randomised up
    /// to twice this). The default fits a 1.5 s failover; on machines so loaded that a leader's
    /// heartbeats (every 100 ms) can stall for this long, raise it on every member, trading
    /// failover time for fewer needless elections. From 300 to 60000.
    #[arg(
        long,
        env = "KILN_ELECTION_TIMEOUT_MS",
        default_value_t = raft_node::RaftConfig::default().election_timeout().as_millis() as u64
    )]
    election_timeout_ms: u64,
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

/// The Raft settings the flags ask for, or what is wrong with them.
fn raft_config(args: &Args) -> Result<raft_node::RaftConfig, String> {
    let defaults = raft_node::RaftConfig::default();
    if !(300..=60_000).contains(&args.election_timeout_ms) {
        return Err(format!(
            "--election-timeout-ms must be from 300 to 60000, not {}",
            args.election_timeout_ms
        ));
    }
    let tick_ms = defaults.tick.as_millis() as u64;
    Ok(raft_node::RaftConfig {
        election_ticks: args.election_timeout_ms.div_ceil(tick_ms) as usize,
        compact_after: args.compact_after_entries,
        catch_up_entries: args.catch_up_entries,
        ..defaults
    })
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    // Crash points (kiln_coordinator::store::CRASH_POINTS), for tests/crash_points.rs; never
    // set in production. Equivalent to `fail::FailScenario::setup()`, but an unknown point or
    // a malformed action is an error instead of a panic or a point that never fires.
    if let Ok(spec) = std::env::var("FAILPOINTS") {
        match store::arm_crash_points(&spec) {
            Ok(armed) if !armed.is_empty() => {
                tracing::warn!(points = ?armed, "crash points armed (FAILPOINTS): this process aborts on purpose when one fires");
            }
            Ok(_) => {}
            Err(message) => {
                eprintln!("kiln-coordinator: FAILPOINTS: {message}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    if args.heartbeat_interval_ms == 0 || args.agent_lost_after_ms <= args.heartbeat_interval_ms {
        eprintln!(
            "kiln-coordinator: --agent-lost-after-ms ({}) must be larger than --heartbeat-interval-ms ({}), which must not be 0",
            args.agent_lost_after_ms, args.heartbeat_interval_ms
        );
        return std::process::ExitCode::from(2);
    }
    let raft = match raft_config(&args) {
        Ok(raft) => raft,
        Err(message) => {
            eprintln!("kiln-coordinator: {message}");
            return std::process::ExitCode::from(2);
        }
    };
    let membership = match membership(&args) {
        Ok(membership) => membership,
        Err(message) => {
            eprintln!("kiln-coordinator: {message}");
            return std::process::ExitCode::from(2);
        }
    };
    let http_listen = match args.http_listen.as_str() {
        "off" | "" => None,
        text => match text.parse() {
            Ok(address) => Some(address),
            Err(_) => {
                eprintln!("kiln-coordinator: --http-listen '{text}' is not host:port (or `off`)");
                return std::process::ExitCode::from(2);
            }
        },
    };
    if args.catch_up_entries >= args.compact_after_entries {
        eprintln!(
            "kiln-coordinator: --catch-up-entries ({}) must be smaller than --compact-after-entries ({})",
            args.catch_up_entries, args.compact_after_entries
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
        peer_listen: args.peer_listen,
        http_listen,
        data_dir: args.data_dir,
        registry: args.registry,
        membership,
        raft,
        retention: control::Retention {
            keep_finished: args.retain_finished_runs,
            max_age: Duration::from_secs(args.retain_days.saturating_mul(86_400)),
        },
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

fn membership(args: &Args) -> Result<cluster::Membership, String> {
    if args.node_id == 0 {
        return Err("--node-id must be above 0".to_string());
    }
    let url = |flag: &str, value: &Option<String>| -> Result<String, String> {
        match value {
            None => Ok(String::new()),
            Some(text) => cluster::normalize_url(text).map_err(|e| format!("{flag}: {e}")),
        }
    };
    let join = match (&args.cluster_id, args.join) {
        (Some(text), true) => Some(transport::parse_cluster_id(text).ok_or_else(|| {
            format!("--cluster-id '{text}' is not 16 hex digits (see `kiln cluster status`)")
        })?),
        (Some(_), false) | (None, _) => None,
    };
    if args.restore.is_some() && args.initial_cluster_state != InitialClusterState::New {
        return Err("--restore starts a new cluster: pass --initial-cluster-state new".to_string());
    }
    let mut peer_url = url("--advertise-peer-url", &args.advertise_peer_url)?;
    let mut client_url = url("--advertise-client-url", &args.advertise_client_url)?;
    if peer_url.is_empty() {
        peer_url = format!("http://{}", args.peer_listen);
    }
    if client_url.is_empty() {
        client_url = format!("http://{}", args.listen);
    }
    Ok(cluster::Membership {
        node_id: args.node_id,
        peer_url,
        client_url,
        initial_members: cluster::parse_members(&args.initial_members)
            .map_err(|e| format!("--initial-member: {e}"))?,
        initial_state: args.initial_cluster_state,
        cluster_token: args.cluster_token.clone(),
        join,
        restore: args.restore.clone(),
        force_new_cluster: args.force_new_cluster,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["kiln-coordinator", "--data-dir", "/nonexistent"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).expect("valid flags")
    }

    #[test]
    fn the_election_timeout_becomes_ticks_and_is_bounded() {
        let default = raft_config(&args(&[])).unwrap();
        assert_eq!(
            default.election_ticks,
            raft_node::RaftConfig::default().election_ticks
        );
        let slow = raft_config(&args(&["--election-timeout-ms", "2025"])).unwrap();
        assert_eq!(slow.election_timeout(), Duration::from_millis(2050));
        assert!(slow.election_ticks > slow.heartbeat_ticks);
        for bad in ["299", "60001", "0"] {
            let error = raft_config(&args(&["--election-timeout-ms", bad])).unwrap_err();
            assert!(error.contains("--election-timeout-ms"), "{error}");
        }
    }
}

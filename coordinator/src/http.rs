//! The coordinator's HTTP port: `/healthz` (the process and its Raft thread are alive) and
//! `/readyz` (there is a leader and this member has applied an entry of the current term; on
//! the leader, its term's first entry). Metrics, webhooks and the dashboard will live here too.

use std::net::SocketAddr;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::raft_node::{RaftHandle, Role};

/// The default HTTP listen address (`--http-listen`).
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:7880";

pub fn router(raft: RaftHandle) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(raft)
}

async fn healthz(State(raft): State<RaftHandle>) -> (StatusCode, String) {
    if raft.failed().is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "raft thread failed\n".to_string(),
        );
    }
    (StatusCode::OK, "ok\n".to_string())
}

async fn readyz(State(raft): State<RaftHandle>) -> (StatusCode, String) {
    let status = raft.status();
    let ready = if status.role == Role::Leader {
        status.ready_leader
    } else {
        status.ready
    };
    let text = format!(
        "node {} {} term {} leader {}\n",
        status.node_id,
        status.role.name(),
        status.term,
        status.leader_id
    );
    if ready {
        (StatusCode::OK, format!("ready: {text}"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {text}"),
        )
    }
}

/// Serves the HTTP port until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    raft: RaftHandle,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(raft))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Binds the HTTP port, with an error that names the flag.
pub async fn bind(address: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {address} (--http-listen): {e}"))
}

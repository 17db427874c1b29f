//! The agent's session with the coordinator (the only file that knows tonic).
//!
//! One long-lived bidirectional `AgentService.Session` stream: the agent says `Hello`, then
//! forwards its runs' reports; the coordinator pushes `Assignment`s and `CancelRun`s. When the
//! stream fails the agent reconnects with capped exponential backoff while its runs go on;
//! after reconnecting it replays every active and recently finished run's report state.
//!
//! Everything happens in one loop over a closed `Event` enum. Reports are taken from the
//! runners only when the outbox is empty and the outbound gRPC channel has room, which gives
//! backpressure without blocking the handling of incoming messages.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use kiln_proto::v1::agent_service_client::AgentServiceClient;
use kiln_proto::v1::{
    agent_message, coordinator_message, AgentMessage, AgentPlatform, Assignment,
    CoordinatorMessage, Hello,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::blobs::BlobStore;
use crate::config::AgentConfig;
use crate::executor::ContainerRuntime;
use crate::reports::{Report, RunReports};
use crate::runner::{self, RunnerEnv};

/// Messages buffered between the session loop and the gRPC stream.
const OUTBOUND_BUFFER: usize = 64;
/// How long the agent waits for a TCP/HTTP2 connection to the coordinator.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 keepalive, so a coordinator that vanished without closing the stream is noticed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// After shutdown, how long queued reports may take to reach the coordinator.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);

type Connected = (
    mpsc::Sender<AgentMessage>,
    tonic::codec::Streaming<CoordinatorMessage>,
);

enum Connection {
    /// Waiting until `retry_at` before the next attempt.
    Down {
        retry_at: tokio::time::Instant,
    },
    Connecting(BoxFuture<'static, Result<Connected, String>>),
    Up {
        tx: mpsc::Sender<AgentMessage>,
        inbound: Box<tonic::codec::Streaming<CoordinatorMessage>>,
    },
}

/// Everything the session loop reacts to.
enum Event {
    Connected(Result<Connected, String>),
    RetryDue,
    /// Boxed: an assignment carries a whole run request.
    Inbound(Result<Option<Box<CoordinatorMessage>>, tonic::Status>),
    SendSlot(Result<mpsc::OwnedPermit<AgentMessage>, mpsc::error::SendError<()>>),
    Report(Option<Report>),
    RunEnded(Option<Result<(tokio::task::Id, String), tokio::task::JoinError>>),
    Shutdown,
}

/// Runs the session until `shutdown`; then cancels active runs and waits for them to report.
pub async fn run<R: ContainerRuntime, B: BlobStore>(
    config: AgentConfig,
    platforms: Vec<AgentPlatform>,
    env: Arc<RunnerEnv<R, B>>,
    mut reports_rx: mpsc::Receiver<Report>,
    shutdown: CancellationToken,
) {
    let mut state = RunReports::default();
    let mut active: HashMap<String, CancellationToken> = HashMap::new();
    let mut runs: JoinSet<String> = JoinSet::new();
    // Which run each task executes, to report a run whose task died.
    let mut task_runs: HashMap<tokio::task::Id, String> = HashMap::new();
    let mut outbox: VecDeque<AgentMessage> = VecDeque::new();
    let mut backoff = config.reconnect_initial;
    let mut conn = Connection::Down {
        retry_at: tokio::time::Instant::now(),
    };
    let mut shutting_down = false;
    let mut flush_deadline: Option<tokio::time::Instant> = None;

    loop {
        if shutting_down && runs.is_empty() {
            let drained = reports_rx.is_empty() && outbox.is_empty();
            let deadline =
                *flush_deadline.get_or_insert_with(|| tokio::time::Instant::now() + SHUTDOWN_FLUSH);
            let up = matches!(conn, Connection::Up { .. });
            if drained || !up || tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        let event = {
            let want_report = outbox.is_empty();
            let connection = &mut conn;
            match connection {
                Connection::Down { retry_at } => {
                    let retry_at = *retry_at;
                    tokio::select! {
                        _ = tokio::time::sleep_until(retry_at), if !shutting_down => Event::RetryDue,
                        report = reports_rx.recv() => Event::Report(report),
                        ended = runs.join_next_with_id(), if !runs.is_empty() => Event::RunEnded(ended),
                        _ = shutdown.cancelled(), if !shutting_down => Event::Shutdown,
                    }
                }
                Connection::Connecting(fut) => {
                    tokio::select! {
                        result = fut => Event::Connected(result),
                        report = reports_rx.recv() => Event::Report(report),
                        ended = runs.join_next_with_id(), if !runs.is_empty() => Event::RunEnded(ended),
                        _ = shutdown.cancelled(), if !shutting_down => Event::Shutdown,
                    }
                }
                Connection::Up { tx, inbound } => {
                    let has_outgoing = !outbox.is_empty();
                    let tx = tx.clone();
                    let flush_deadline = flush_deadline;
                    tokio::select! {
                        msg = inbound.message() => Event::Inbound(msg.map(|m| m.map(Box::new))),
                        slot = tx.reserve_owned(), if has_outgoing => Event::SendSlot(slot),
                        report = reports_rx.recv(), if want_report => Event::Report(report),
                        ended = runs.join_next_with_id(), if !runs.is_empty() => Event::RunEnded(ended),
                        _ = shutdown.cancelled(), if !shutting_down => Event::Shutdown,
                        _ = sleep_until_opt(flush_deadline) => Event::RetryDue,
                    }
                }
            }
        };

        match event {
            Event::RetryDue => {
                if let Connection::Down { .. } = conn {
                    tracing::debug!(coordinator = %config.coordinator, "connecting");
                    let hello = hello(&config, &platforms, &active);
                    conn =
                        Connection::Connecting(connect(config.coordinator.clone(), hello).boxed());
                }
            }
            Event::Connected(Ok((tx, inbound))) => {
                tracing::info!(coordinator = %config.coordinator, "session established");
                backoff = config.reconnect_initial;
                outbox.clear();
                outbox.extend(state.replay());
                conn = Connection::Up {
                    tx,
                    inbound: Box::new(inbound),
                };
            }
            Event::Connected(Err(error)) => {
                tracing::warn!(coordinator = %config.coordinator, %error, "cannot open session");
                conn = down_after(&mut backoff, config.reconnect_max);
            }
            Event::Inbound(Ok(Some(message))) => {
                if let Some((task_id, run_id)) = handle_inbound(
                    *message,
                    &env,
                    &state,
                    &mut active,
                    &mut runs,
                    shutting_down,
                ) {
                    task_runs.insert(task_id, run_id);
                }
            }
            Event::Inbound(Ok(None)) => {
                tracing::warn!("coordinator closed the session");
                conn = down_after(&mut backoff, config.reconnect_max);
            }
            Event::Inbound(Err(status)) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "session failed");
                conn = down_after(&mut backoff, config.reconnect_max);
            }
            Event::SendSlot(Ok(permit)) => {
                if let Some(message) = outbox.pop_front() {
                    permit.send(message);
                }
            }
            Event::SendSlot(Err(_)) => {
                tracing::warn!("session stream closed");
                conn = down_after(&mut backoff, config.reconnect_max);
            }
            Event::Report(Some(report)) => {
                state.record(&report, Instant::now());
                if let Connection::Up { .. } = conn {
                    outbox.push_back(report.into_message());
                }
                // While disconnected, log chunks are dropped (the step's complete log is
                // uploaded when it ends); everything else is replayed from `state`.
            }
            Event::Report(None) => {
                // Every sender is gone; nothing more will be reported.
                if runs.is_empty() {
                    shutting_down = true;
                }
            }
            Event::RunEnded(Some(Ok((task_id, run_id)))) => {
                task_runs.remove(&task_id);
                active.remove(&run_id);
            }
            Event::RunEnded(Some(Err(error))) => {
                if let Some(run_id) = task_runs.remove(&error.id()) {
                    tracing::error!(run_id, %error, "run task died");
                    active.remove(&run_id);
                    let report = runner::crashed_report(&run_id, &error.to_string());
                    state.record(&report, Instant::now());
                    if let Connection::Up { .. } = conn {
                        outbox.push_back(report.into_message());
                    }
                }
            }
            Event::RunEnded(None) => {}
            Event::Shutdown => {
                tracing::info!(
                    active_runs = active.len(),
                    "shutting down: canceling active runs"
                );
                shutting_down = true;
                for token in active.values() {
                    token.cancel();
                }
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn down_after(backoff: &mut Duration, max: Duration) -> Connection {
    let delay = *backoff;
    *backoff = (*backoff * 2).min(max);
    Connection::Down {
        retry_at: tokio::time::Instant::now() + delay,
    }
}

fn hello(
    config: &AgentConfig,
    platforms: &[AgentPlatform],
    active: &HashMap<String, CancellationToken>,
) -> AgentMessage {
    let mut active_runs: Vec<String> = active.keys().cloned().collect();
    active_runs.sort();
    AgentMessage {
        msg: Some(agent_message::Msg::Hello(Hello {
            agent_id: config.agent_id.clone(),
            platforms: platforms.to_vec(),
            capacity: config.capacity,
            active_runs,
            version: env!("CARGO_PKG_VERSION").to_string(),
        })),
    }
}

async fn connect(endpoint: String, hello: AgentMessage) -> Result<Connected, String> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint)
        .map_err(|e| format!("invalid coordinator address: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_INTERVAL)
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(|e| error_chain(&e))?;
    let mut client = AgentServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(OUTBOUND_BUFFER);
    // Hello goes first and is queued before the call, so a coordinator that waits for it
    // before answering cannot deadlock the handshake.
    tx.send(hello)
        .await
        .map_err(|_| "session channel closed".to_string())?;
    let response = client
        .session(ReceiverStream::new(rx))
        .await
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?;
    Ok((tx, response.into_inner()))
}

fn handle_inbound<R: ContainerRuntime, B: BlobStore>(
    message: CoordinatorMessage,
    env: &Arc<RunnerEnv<R, B>>,
    state: &RunReports,
    active: &mut HashMap<String, CancellationToken>,
    runs: &mut JoinSet<String>,
    shutting_down: bool,
) -> Option<(tokio::task::Id, String)> {
    match message.msg {
        Some(coordinator_message::Msg::Assign(assignment)) => {
            let run_id = assignment.run_id.clone();
            if active.contains_key(&run_id) || state.contains(&run_id) {
                tracing::debug!(run_id, "assignment already known");
                return None;
            }
            if shutting_down {
                tracing::warn!(run_id, "assignment received while shutting down; ignored");
                return None;
            }
            Some((start_run(assignment, env, active, runs), run_id))
        }
        Some(coordinator_message::Msg::Cancel(cancel)) => match active.get(&cancel.run_id) {
            Some(token) => {
                tracing::info!(run_id = cancel.run_id, "cancel requested");
                token.cancel();
                None
            }
            None => {
                tracing::debug!(run_id = cancel.run_id, "cancel for an unknown run");
                None
            }
        },
        None => {
            tracing::warn!("empty message from the coordinator");
            None
        }
    }
}

fn start_run<R: ContainerRuntime, B: BlobStore>(
    assignment: Assignment,
    env: &Arc<RunnerEnv<R, B>>,
    active: &mut HashMap<String, CancellationToken>,
    runs: &mut JoinSet<String>,
) -> tokio::task::Id {
    let run_id = assignment.run_id.clone();
    tracing::info!(run_id, "run assigned");
    let token = CancellationToken::new();
    active.insert(run_id.clone(), token.clone());
    let env = Arc::clone(env);
    runs.spawn(async move {
        runner::execute(env, assignment, token).await;
        run_id
    })
    .id()
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

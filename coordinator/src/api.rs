//! The gRPC services: `Control` for the CLI and `AgentService` for agents. The only module of
//! the coordinator that builds `tonic::Status`.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use kiln_proto::v1::agent_service_server::AgentService;
use kiln_proto::v1::control_server::Control;
use kiln_proto::v1::{
    agent_message, AgentMessage, CancelRunRequest, CancelRunResponse, CoordinatorMessage,
    GetInfoRequest, GetInfoResponse, GetRunRequest, GetRunResponse, ListRunsRequest,
    ListRunsResponse, LogChunk, StreamLogsRequest, SubmitRunRequest, SubmitRunResponse,
};
use kiln_registry::{Registry, LOGS_REPOSITORY};
use kiln_state::machine::{is_step_terminal, is_terminal};
use kiln_state::pb::{
    command, FinishRun, PlanRun, PushedImage, RecordImage, RequestCancel, Run, RunStatus,
    SubmitRun, UpdateStep,
};
use kiln_state::{scheduler, PlatformSpec};

use crate::agents::{Agents, AGENT_OUTBOX};
use crate::logs::LogHub;
use crate::raft_node::{ProposeError, RaftHandle};

/// Chunks queued for one `kiln logs` client; the sender waits when the client reads slowly.
const LOG_STREAM_BUFFER: usize = 64;
/// Largest stored step log sent back.
const MAX_STORED_LOG_BYTES: u64 = 256 * 1024 * 1024;
/// Size of the pieces a stored log is sent in.
const LOG_PIECE: usize = 64 * 1024;
/// Most runs `ListRuns` returns.
const MAX_LIST: usize = 1000;

#[derive(Clone)]
pub struct Api {
    pub raft: RaftHandle,
    pub agents: Arc<Agents>,
    pub logs: Arc<LogHub>,
    pub registry: Registry,
    pub tasks: TaskTracker,
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<LogChunk, Status>> + Send>>;
type CoordinatorStream = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

fn propose_status(error: ProposeError) -> Status {
    match error {
        ProposeError::Rejected(message) => Status::failed_precondition(message),
        ProposeError::NotLeader => Status::unavailable(error.to_string()),
        ProposeError::Overloaded => Status::resource_exhausted(error.to_string()),
        ProposeError::ShuttingDown | ProposeError::Timeout(_) => {
            Status::unavailable(error.to_string())
        }
    }
}

fn find_run(raft: &RaftHandle, run_id: &str) -> Result<Run, Status> {
    raft.read(|state| state.run(run_id).cloned())
        .ok_or_else(|| {
            Status::not_found(format!(
                "run {run_id} does not exist (see `kiln runs list`)"
            ))
        })
}

#[tonic::async_trait]
impl Control for Api {
    async fn get_info(
        &self,
        _: Request<GetInfoRequest>,
    ) -> Result<Response<GetInfoResponse>, Status> {
        Ok(Response::new(GetInfoResponse {
            registry: self.registry.host().to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            agents: self.agents.infos(),
        }))
    }

    async fn submit_run(
        &self,
        request: Request<SubmitRunRequest>,
    ) -> Result<Response<SubmitRunResponse>, Status> {
        let mut run_request = request
            .into_inner()
            .request
            .ok_or_else(|| Status::invalid_argument("the request has no run"))?;
        if run_request.registry.is_empty() {
            run_request.registry = self.registry.host().to_string();
        }
        // Contexts and logs always live in the farm's registry, whatever the run pushes to.
        run_request.storage_registry = self.registry.host().to_string();
        let platform = PlatformSpec::from_pb(run_request.platform.as_ref())
            .map_err(Status::invalid_argument)?;
        run_request.platform = Some(platform.to_pb());
        let result = self
            .raft
            .propose(command::Kind::SubmitRun(SubmitRun {
                request: Some(run_request),
            }))
            .await
            .map_err(|error| match error {
                ProposeError::Rejected(message) => Status::invalid_argument(message),
                other => propose_status(other),
            })?;
        tracing::info!(run_id = %result.run_id, "queued run");
        Ok(Response::new(SubmitRunResponse {
            run_id: result.run_id,
        }))
    }

    async fn get_run(
        &self,
        request: Request<GetRunRequest>,
    ) -> Result<Response<GetRunResponse>, Status> {
        let run = find_run(&self.raft, &request.into_inner().run_id)?;
        let queued_reason = if run.status() == RunStatus::Queued {
            let views = self.raft.read(|state| {
                self.agents.views(|agent_id| {
                    state
                        .running_runs()
                        .filter(|r| r.agent_id == agent_id)
                        .count() as u32
                })
            });
            scheduler::queued_reason(&run, &views)
        } else {
            String::new()
        };
        Ok(Response::new(GetRunResponse {
            run: Some(run),
            queued_reason,
        }))
    }

    async fn list_runs(
        &self,
        request: Request<ListRunsRequest>,
    ) -> Result<Response<ListRunsResponse>, Status> {
        let limit = match request.into_inner().limit {
            0 => 20,
            n => (n as usize).min(MAX_LIST),
        };
        let runs = self
            .raft
            .read(|state| state.runs().rev().take(limit).cloned().collect());
        Ok(Response::new(ListRunsResponse { runs }))
    }

    async fn cancel_run(
        &self,
        request: Request<CancelRunRequest>,
    ) -> Result<Response<CancelRunResponse>, Status> {
        let run_id = request.into_inner().run_id;
        find_run(&self.raft, &run_id)?;
        self.raft
            .propose(command::Kind::RequestCancel(RequestCancel {
                run_id: run_id.clone(),
            }))
            .await
            .map_err(propose_status)?;
        let run = find_run(&self.raft, &run_id)?;
        Ok(Response::new(CancelRunResponse { status: run.status }))
    }

    type StreamLogsStream = ChunkStream;

    async fn stream_logs(
        &self,
        request: Request<StreamLogsRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let StreamLogsRequest { run_id, follow } = request.into_inner();
        find_run(&self.raft, &run_id)?;
        let (tx, rx) = mpsc::channel(LOG_STREAM_BUFFER);
        let api = self.clone();
        self.tasks.spawn(async move {
            if let Err(status) = api.send_logs(&run_id, follow, &tx).await {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

type LogSender = mpsc::Sender<Result<LogChunk, Status>>;

impl Api {
    /// Sends a run's log: stored step logs for what has ended, the live buffer for what has not,
    /// and with `follow` the live output until the run ends.
    async fn send_logs(&self, run_id: &str, follow: bool, tx: &LogSender) -> Result<(), Status> {
        let mut applied = self.raft.applied();
        loop {
            // Subscribe before reading the state, so that nothing falls between the two.
            let subscription = self.logs.subscribe(run_id);
            let run = find_run(&self.raft, run_id)?;
            if run.status() == RunStatus::Queued {
                if !follow {
                    return Ok(());
                }
                applied
                    .changed()
                    .await
                    .map_err(|_| Status::unavailable("the coordinator is shutting down"))?;
                continue;
            }
            let finished = is_terminal(run.status());
            let stored_all = finished || !subscription.complete;
            if stored_all {
                self.send_stored(&run, finished, tx).await?;
            }
            if finished {
                self.logs.close(run_id);
                return Ok(());
            }
            // The live buffer: whole if it is complete, else only the steps still running (the
            // ended ones were just sent from storage).
            let running_steps: Vec<String> = run
                .steps
                .iter()
                .filter(|s| !is_step_terminal(s.status()))
                .map(|s| s.id.clone())
                .collect();
            let wanted = |chunk: &LogChunk| {
                subscription.complete
                    || chunk.step_id.is_empty()
                    || running_steps.contains(&chunk.step_id)
            };
            for chunk in subscription.buffered.iter().filter(|c| wanted(c)) {
                send(tx, chunk.clone()).await?;
            }
            if !follow {
                return Ok(());
            }
            let mut live = subscription.live;
            loop {
                match live.recv().await {
                    Ok(chunk) => send(tx, chunk).await?,
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        let notice = format!(
                            "\n[kiln] this client fell behind and missed {missed} log chunks; `kiln logs {run_id}` shows the complete log once the run ends\n"
                        );
                        send(
                            tx,
                            LogChunk {
                                run_id: run_id.to_string(),
                                step_id: String::new(),
                                data: notice.into_bytes(),
                            },
                        )
                        .await?;
                    }
                }
            }
        }
    }

    async fn send_stored(&self, run: &Run, finished: bool, tx: &LogSender) -> Result<(), Status> {
        for step in &run.steps {
            if !is_step_terminal(step.status()) {
                continue;
            }
            if step.log_digest.is_empty() {
                if step.started_at_ms > 0 {
                    let notice = format!(
                        "[kiln] the log of step {} was not stored{}\n",
                        step.id,
                        reason_suffix(&step.reason)
                    );
                    send(
                        tx,
                        LogChunk {
                            run_id: run.id.clone(),
                            step_id: step.id.clone(),
                            data: notice.into_bytes(),
                        },
                    )
                    .await?;
                }
                continue;
            }
            let bytes = self
                .registry
                .pull_blob_bytes(LOGS_REPOSITORY, &step.log_digest, MAX_STORED_LOG_BYTES)
                .await
                .map_err(|error| {
                    Status::unavailable(format!("cannot read the log of step {}: {error}", step.id))
                })?;
            for piece in bytes.chunks(LOG_PIECE) {
                send(
                    tx,
                    LogChunk {
                        run_id: run.id.clone(),
                        step_id: step.id.clone(),
                        data: piece.to_vec(),
                    },
                )
                .await?;
            }
        }
        if finished && !run.reason.is_empty() && run.status() != RunStatus::Succeeded {
            let summary = format!(
                "[kiln] run {} ended {}: {}\n",
                run.id,
                kiln_state::machine::status_name(run.status()),
                run.reason
            );
            send(
                tx,
                LogChunk {
                    run_id: run.id.clone(),
                    step_id: String::new(),
                    data: summary.into_bytes(),
                },
            )
            .await?;
        }
        Ok(())
    }
}

fn reason_suffix(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(" ({reason})")
    }
}

async fn send(tx: &LogSender, chunk: LogChunk) -> Result<(), Status> {
    // The client went away: stop quietly.
    tx.send(Ok(chunk))
        .await
        .map_err(|_| Status::cancelled("the client disconnected"))
}

#[tonic::async_trait]
impl AgentService for Api {
    type SessionStream = CoordinatorStream;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<CoordinatorStream>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.ok_or_else(|| {
            Status::invalid_argument("the agent closed the session before saying Hello")
        })?;
        let Some(agent_message::Msg::Hello(hello)) = first.msg else {
            return Err(Status::invalid_argument(
                "an agent's first message must be Hello",
            ));
        };
        if hello.agent_id.is_empty() {
            return Err(Status::invalid_argument(
                "the agent has no id (pass --agent-id)",
            ));
        }
        let mut platforms = Vec::new();
        for offered in &hello.platforms {
            let platform = PlatformSpec::from_pb(offered.platform.as_ref())
                .map_err(|e| Status::invalid_argument(format!("agent {}: {e}", hello.agent_id)))?;
            platforms.push((platform, offered.emulated));
        }
        if platforms.is_empty() {
            return Err(Status::invalid_argument(format!(
                "agent {} offers no platform",
                hello.agent_id
            )));
        }
        let (tx, rx) = mpsc::channel(AGENT_OUTBOX);
        let capacity = hello.capacity.max(1);
        let connection = self.agents.connect(
            &hello.agent_id,
            platforms.clone(),
            capacity,
            &hello.active_runs,
            tx,
        );
        tracing::info!(agent_id = %hello.agent_id, capacity, platforms = ?platforms.iter().map(|(p, e)| format!("{p}{}", if *e { " (emulated)" } else { "" })).collect::<Vec<_>>(), "agent connected");
        let api = self.clone();
        let agent_id = hello.agent_id;
        self.tasks.spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(message)) => api.handle_report(&agent_id, message).await,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::info!(%agent_id, %status, "agent stream failed");
                        break;
                    }
                }
            }
            tracing::info!(%agent_id, "agent disconnected");
            api.agents.disconnect(&agent_id, connection);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map_ok())))
    }
}

impl Api {
    /// Turns one agent report into a command. Reports are proposed one at a time, in the order
    /// the agent sent them, so a step's end is applied before the run's end.
    async fn handle_report(&self, agent_id: &str, message: AgentMessage) {
        let proposal = match message.msg {
            None | Some(agent_message::Msg::Hello(_)) => return,
            Some(agent_message::Msg::Log(chunk)) => {
                let active = self.raft.read(|state| {
                    state
                        .run(&chunk.run_id)
                        .is_some_and(|r| r.agent_id == agent_id && !is_terminal(r.status()))
                });
                if active {
                    self.logs.append(chunk);
                }
                return;
            }
            Some(agent_message::Msg::RunPlanned(planned)) => {
                self.agents.mark_active(agent_id, &planned.run_id);
                command::Kind::PlanRun(PlanRun {
                    run_id: planned.run_id,
                    step_ids: planned.step_ids,
                })
            }
            Some(agent_message::Msg::StepUpdate(update)) => command::Kind::UpdateStep(UpdateStep {
                run_id: update.run_id,
                step_id: update.step_id,
                status: update.status,
                has_exit_code: update.has_exit_code,
                exit_code: update.exit_code,
                reason: update.reason,
                log_digest: update.log_digest,
                log_size: update.log_size,
            }),
            Some(agent_message::Msg::ImagePushed(pushed)) => {
                command::Kind::RecordImage(RecordImage {
                    run_id: pushed.run_id,
                    image: Some(PushedImage {
                        step_id: pushed.step_id,
                        image: pushed.image,
                        digest: pushed.digest,
                    }),
                })
            }
            Some(agent_message::Msg::RunFinished(finished)) => {
                self.agents.mark_finished(agent_id, &finished.run_id);
                command::Kind::FinishRun(FinishRun {
                    run_id: finished.run_id,
                    status: finished.status,
                    reason: finished.reason,
                    agent_id: agent_id.to_string(),
                })
            }
        };
        match self.raft.propose(proposal).await {
            Ok(_) => {}
            // Repeats after a reconnect are expected to be rejected; they change nothing.
            Err(ProposeError::Rejected(message)) => {
                tracing::debug!(agent_id, %message, "agent report rejected")
            }
            Err(error) => tracing::warn!(agent_id, %error, "could not record agent report"),
        }
    }
}

type OkStream<S> =
    futures::stream::Map<S, fn(<S as Stream>::Item) -> Result<<S as Stream>::Item, Status>>;

/// Wraps stream items in `Ok` for tonic.
trait MapOk: Stream + Sized {
    fn map_ok(self) -> OkStream<Self> {
        futures::StreamExt::map(self, Ok)
    }
}

impl<S: Stream> MapOk for S {}

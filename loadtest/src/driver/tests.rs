//! Tests of the load driver against an in-process fake coordinator served over loopback gRPC.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use kiln_proto::v1::control_server::{Control, ControlServer};
use kiln_proto::v1::{
    CancelRunRequest, CancelRunResponse, DrainAgentRequest, DrainAgentResponse, GetInfoRequest,
    GetInfoResponse, GetRunRequest, GetRunResponse, ListRunsRequest, ListRunsResponse, LogChunk,
    StreamLogsRequest, SubmitRunRequest, SubmitRunResponse,
};
use kiln_state::pb::{Run, RunRequest, RunStatus};

use super::{connect, run_load, LoadPlan, LoadResult, StopReason};
use crate::outcome::{Outcome, RunEnd, StopCause};

/// How the fake farm treats runs.
#[derive(Clone)]
enum Behaviour {
    /// A run starts at its first poll and ends at its second; every `fail_every`-th fails.
    Finish { fail_every: u64 },
    /// Runs stay queued forever.
    NeverStart,
    /// Every submission is refused.
    RejectSubmits,
}

#[derive(Default)]
struct FarmState {
    runs: Vec<FakeRun>,
    canceled: Vec<String>,
    submit_requests: Vec<RunRequest>,
}

struct FakeRun {
    record: Run,
    polls: u32,
}

struct FakeFarm {
    behaviour: Behaviour,
    state: Mutex<FarmState>,
    /// Cancelled when the `interrupt_after`-th submission arrives.
    interrupt: Option<(usize, CancellationToken)>,
}

impl FakeFarm {
    fn new(behaviour: Behaviour) -> Self {
        Self {
            behaviour,
            state: Mutex::new(FarmState::default()),
            interrupt: None,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FarmState> {
        self.state
            .lock()
            .expect("the fake farm's lock is never poisoned")
    }
}

fn now_ms() -> u64 {
    super::wall_clock_ms()
}

#[tonic::async_trait]
impl Control for FakeFarm {
    async fn get_info(
        &self,
        _: Request<GetInfoRequest>,
    ) -> Result<Response<GetInfoResponse>, Status> {
        Ok(Response::new(GetInfoResponse {
            registry: "127.0.0.1:5000".to_string(),
            version: "test".to_string(),
            agents: Vec::new(),
            ..GetInfoResponse::default()
        }))
    }

    async fn submit_run(
        &self,
        request: Request<SubmitRunRequest>,
    ) -> Result<Response<SubmitRunResponse>, Status> {
        if matches!(self.behaviour, Behaviour::RejectSubmits) {
            return Err(Status::unavailable("the coordinator has no Raft leader"));
        }
        let mut state = self.state();
        let seq = state.runs.len() as u64 + 1;
        let mut record = Run {
            id: format!("ca{seq}"),
            seq,
            created_at_ms: now_ms(),
            ..Run::default()
        };
        record.set_status(RunStatus::Queued);
        state.runs.push(FakeRun { record, polls: 0 });
        state
            .submit_requests
            .push(request.into_inner().request.unwrap_or_default());
        if let Some((after, token)) = &self.interrupt {
            if state.runs.len() == *after {
                token.cancel();
            }
        }
        Ok(Response::new(SubmitRunResponse {
            run_id: format!("ca{seq}"),
        }))
    }

    async fn get_run(
        &self,
        request: Request<GetRunRequest>,
    ) -> Result<Response<GetRunResponse>, Status> {
        let run_id = request.into_inner().run_id;
        let mut state = self.state();
        let run = state
            .runs
            .iter_mut()
            .find(|run| run.record.id == run_id)
            .ok_or_else(|| Status::not_found(format!("no run {run_id}")))?;
        run.polls += 1;
        if let Behaviour::Finish { fail_every } = self.behaviour {
            match run.polls {
                1 => {
                    run.record.started_at_ms = now_ms();
                    run.record.set_status(RunStatus::Running);
                }
                2 => {
                    run.record.finished_at_ms = now_ms();
                    if run.record.seq % fail_every == 0 {
                        run.record.set_status(RunStatus::Failed);
                        run.record.reason = "step 'acb_step_0' exited with 1".to_string();
                    } else {
                        run.record.set_status(RunStatus::Succeeded);
                    }
                }
                _ => {}
            }
        }
        Ok(Response::new(GetRunResponse {
            run: Some(run.record.clone()),
            queued_reason: String::new(),
        }))
    }

    async fn list_runs(
        &self,
        _: Request<ListRunsRequest>,
    ) -> Result<Response<ListRunsResponse>, Status> {
        Err(Status::unimplemented("the load test does not list runs"))
    }

    async fn cancel_run(
        &self,
        request: Request<CancelRunRequest>,
    ) -> Result<Response<CancelRunResponse>, Status> {
        self.state().canceled.push(request.into_inner().run_id);
        Ok(Response::new(CancelRunResponse {
            status: RunStatus::Canceled.into(),
        }))
    }

    async fn drain_agent(
        &self,
        _: Request<DrainAgentRequest>,
    ) -> Result<Response<DrainAgentResponse>, Status> {
        Err(Status::unimplemented("the load test drains no agent"))
    }

    type StreamLogsStream = tokio_stream::Empty<Result<LogChunk, Status>>;

    async fn stream_logs(
        &self,
        _: Request<StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        Err(Status::unimplemented("the load test reads no logs"))
    }
}

/// Serves `farm` on a free loopback port until the test's runtime ends; returns its address.
async fn serve(farm: Arc<FakeFarm>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let address = listener.local_addr().expect("a bound address");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        Server::builder()
            .add_service(ControlServer::from_arc(farm))
            .serve_with_incoming(incoming),
    );
    format!("http://{address}")
}

fn plan(runs: u32, rate: f64) -> LoadPlan {
    LoadPlan {
        runs,
        rate,
        concurrency_limit: 8,
        max_duration: Duration::from_secs(60),
        poll_interval: Duration::from_millis(10),
        progress_every: None,
    }
}

fn request() -> RunRequest {
    RunRequest {
        task_yaml: "version: v1.1.0\nsteps:\n  - cmd: busybox true\n".to_string(),
        kind: "run".to_string(),
        ..RunRequest::default()
    }
}

async fn load(farm: &Arc<FakeFarm>, plan: &LoadPlan, interrupt: CancellationToken) -> LoadResult {
    let address = serve(Arc::clone(farm)).await;
    let (client, info) = connect(&address).await.expect("the fake farm answers");
    assert_eq!(info.registry, "127.0.0.1:5000");
    run_load(client, plan, request(), interrupt)
        .await
        .expect("the load runs")
}

fn run_ids(result: &LoadResult) -> Vec<String> {
    result
        .attempts
        .iter()
        .filter_map(|attempt| match &attempt.outcome {
            Outcome::Submitted(run) => Some(run.run_id.clone()),
            Outcome::SubmitFailed { .. } => None,
        })
        .collect()
}

#[tokio::test]
async fn every_run_is_followed_to_its_end() {
    let farm = Arc::new(FakeFarm::new(Behaviour::Finish { fail_every: 3 }));
    let result = load(&farm, &plan(6, 0.0), CancellationToken::new()).await;
    assert_eq!(result.stopped_by, StopReason::Completed);
    assert_eq!(result.canceled, 0);
    assert_eq!(result.attempts.len(), 6);
    let mut failed = Vec::new();
    for attempt in &result.attempts {
        let Outcome::Submitted(run) = &attempt.outcome else {
            panic!("a submission failed: {attempt:?}");
        };
        let RunEnd::Finished(finished) = &run.end else {
            panic!("{} did not finish: {:?}", run.run_id, run.end);
        };
        if finished.status == RunStatus::Failed {
            failed.push(run.run_id.clone());
            assert!(finished.reason.contains("exited with 1"));
        } else {
            assert_eq!(finished.status, RunStatus::Succeeded);
        }
        let (queue, run_time) = (
            finished.queue.expect("a queue time"),
            finished.run.expect("a run time"),
        );
        assert!(finished.end_to_end >= queue + run_time || finished.end_to_end > run_time);
        assert!(finished.finished_at >= attempt.sent_at);
    }
    failed.sort();
    assert_eq!(failed, ["ca3", "ca6"]);
    // Every run submitted the request as given, and none was canceled.
    let state = farm.state();
    assert_eq!(state.submit_requests.len(), 6);
    assert!(state.submit_requests.iter().all(|r| *r == request()));
    assert!(state.canceled.is_empty());
}

#[tokio::test]
async fn submissions_follow_the_rate() {
    let farm = Arc::new(FakeFarm::new(Behaviour::Finish { fail_every: 1000 }));
    // 100 runs/s: the fifth submission is due 40 ms after the first.
    let result = load(&farm, &plan(5, 100.0), CancellationToken::new()).await;
    assert_eq!(result.attempts.len(), 5);
    let sent: Vec<Duration> = result.attempts.iter().map(|a| a.sent_at).collect();
    for (index, at) in sent.iter().enumerate() {
        // Less a microsecond for the float arithmetic of the schedule.
        let due = Duration::from_millis(10 * index as u64).saturating_sub(Duration::from_micros(1));
        assert!(
            *at >= due,
            "submission {index} sent at {at:?}, due at {due:?}"
        );
    }
    assert!(sent.windows(2).all(|pair| pair[0] <= pair[1]), "{sent:?}");
}

#[tokio::test]
async fn the_deadline_stops_the_test_and_cancels_unfinished_runs() {
    let farm = Arc::new(FakeFarm::new(Behaviour::NeverStart));
    let mut plan = plan(3, 0.0);
    plan.max_duration = Duration::from_millis(200);
    let result = load(&farm, &plan, CancellationToken::new()).await;
    assert_eq!(result.stopped_by, StopReason::Deadline);
    assert!(result.elapsed >= Duration::from_millis(200));
    assert_eq!(result.attempts.len(), 3);
    for attempt in &result.attempts {
        let Outcome::Submitted(run) = &attempt.outcome else {
            panic!("a submission failed: {attempt:?}");
        };
        assert_eq!(
            run.end,
            RunEnd::Unfinished {
                last_status: RunStatus::Queued,
                queue: None,
                why: StopCause::Deadline,
            }
        );
    }
    assert_eq!(result.canceled, 3);
    let mut canceled = farm.state().canceled.clone();
    canceled.sort();
    assert_eq!(canceled, run_ids(&result));
}

#[tokio::test]
async fn an_interruption_stops_submitting_and_cancels_what_was_submitted() {
    let interrupt = CancellationToken::new();
    let farm = Arc::new(FakeFarm {
        interrupt: Some((3, interrupt.clone())),
        ..FakeFarm::new(Behaviour::NeverStart)
    });
    // 20 runs/s: the interruption at the third submission comes long before the fortieth.
    let result = load(&farm, &plan(40, 20.0), interrupt).await;
    assert_eq!(result.stopped_by, StopReason::Interrupted);
    let submitted = run_ids(&result);
    assert!(
        (3..40).contains(&submitted.len()),
        "{} runs were submitted",
        submitted.len()
    );
    for attempt in &result.attempts {
        if let Outcome::Submitted(run) = &attempt.outcome {
            assert!(
                matches!(
                    run.end,
                    RunEnd::Unfinished {
                        why: StopCause::Interrupted,
                        ..
                    }
                ),
                "{:?}",
                run.end
            );
        }
    }
    let mut canceled = farm.state().canceled.clone();
    canceled.sort();
    let mut expected = submitted.clone();
    expected.sort();
    assert_eq!(canceled, expected);
    assert_eq!(result.canceled as usize, submitted.len());
}

#[tokio::test]
async fn refused_submissions_are_recorded_with_their_error() {
    let farm = Arc::new(FakeFarm::new(Behaviour::RejectSubmits));
    let result = load(&farm, &plan(4, 0.0), CancellationToken::new()).await;
    assert_eq!(result.stopped_by, StopReason::Completed);
    assert_eq!(result.attempts.len(), 4);
    for attempt in &result.attempts {
        assert_eq!(
            attempt.outcome,
            Outcome::SubmitFailed {
                error: "Unavailable: the coordinator has no Raft leader".to_string()
            }
        );
    }
    assert_eq!(result.canceled, 0);
}

#[tokio::test]
async fn an_unreachable_coordinator_is_a_one_line_error() {
    // A port that was free a moment ago: nothing listens on it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let address = format!("http://{}", listener.local_addr().expect("an address"));
    drop(listener);
    let error = connect(&address)
        .await
        .expect_err("nothing listens there")
        .to_string();
    assert!(
        error.starts_with(&format!("cannot reach the kiln coordinator at {address}")),
        "{error}"
    );
    assert!(!error.contains('\n'), "{error}");
}

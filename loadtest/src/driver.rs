//! The open-loop load: submits runs on a fixed schedule, follows each one to its end with
//! `GetRun`, and stops by itself when every run ended, `--max-seconds` ran out or the user
//! interrupted it; runs still unfinished then are canceled on the farm.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::anyhow;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Response, Status};

use kiln_proto::endpoints::{self, Connection, Endpoints, Settings};
use kiln_proto::v1::control_client::ControlClient;
use kiln_proto::v1::{
    CancelRunRequest, CancelRunResponse, GetInfoRequest, GetInfoResponse, GetRunRequest,
    GetRunResponse, LogChunk, StreamLogsRequest, SubmitRunRequest, SubmitRunResponse,
};
use kiln_state::machine::is_terminal;
use kiln_state::pb::{RunRequest, RunStatus};

use crate::outcome::{queue_time, Attempt, FinishedRun, Outcome, RunEnd, StopCause, SubmittedRun};

/// The farm's Control API through [`Endpoints`]: every call follows the leader and rotates
/// over unavailable members (for up to 15 s), like the `kiln` CLI. Cheap to clone; clones
/// share the leader found and the cluster id learned.
#[derive(Clone, Debug)]
pub struct Client {
    endpoints: Endpoints,
}

fn control(connection: Connection) -> ControlClient<Connection> {
    ControlClient::new(connection)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

impl Client {
    /// A client of the comma-separated endpoint list `address`.
    pub fn new(address: &str) -> anyhow::Result<Client> {
        let endpoints = Endpoints::with_settings(
            address,
            Settings {
                connect_timeout: CONNECT_TIMEOUT,
                request_timeout: Some(RPC_TIMEOUT),
                tcp_nodelay: true,
                ..Settings::default()
            },
        )?;
        Ok(Client { endpoints })
    }

    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// Submits a run. A request without `request_id` gets one, so the retries of this one
    /// submission (after a leader change) make one run.
    pub async fn submit_run(
        &mut self,
        mut request: SubmitRunRequest,
    ) -> Result<Response<SubmitRunResponse>, Status> {
        if request.request_id.is_empty() {
            request.request_id = endpoints::random_id();
        }
        let request = &request;
        self.endpoints
            .call(|conn| async move { control(conn).submit_run(request.clone()).await })
            .await
            .map_err(|error| error.status)
    }

    pub async fn get_run(
        &mut self,
        request: GetRunRequest,
    ) -> Result<Response<GetRunResponse>, Status> {
        let request = &request;
        self.endpoints
            .call(|conn| async move { control(conn).get_run(request.clone()).await })
            .await
            .map_err(|error| error.status)
    }

    pub async fn cancel_run(
        &mut self,
        request: CancelRunRequest,
    ) -> Result<Response<CancelRunResponse>, Status> {
        let request = &request;
        self.endpoints
            .call(|conn| async move { control(conn).cancel_run(request.clone()).await })
            .await
            .map_err(|error| error.status)
    }

    pub async fn stream_logs(
        &mut self,
        request: StreamLogsRequest,
    ) -> Result<Response<tonic::Streaming<LogChunk>>, Status> {
        let request = &request;
        self.endpoints
            .call(|conn| async move { control(conn).stream_logs(request.clone()).await })
            .await
            .map_err(|error| error.status)
    }

    /// `GetInfo`; learns the cluster id, so that every later call is refused by a member of
    /// another cluster.
    pub async fn get_info(&mut self) -> Result<GetInfoResponse, endpoints::CallError> {
        let info = self
            .endpoints
            .call(|conn| async move {
                control(conn)
                    .get_info(GetInfoRequest {})
                    .await
                    .map(Response::into_inner)
            })
            .await?;
        if let Err(mismatch) = self.endpoints.learn_cluster_id(&info.cluster_id) {
            return Err(endpoints::CallError {
                status: Status::failed_precondition(mismatch.to_string()),
                endpoint: self.endpoints.preferred(),
                gave_up_after: None,
            });
        }
        Ok(info)
    }
}

/// How long to wait for the coordinator to accept the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The limit of one RPC: a coordinator slower than this counts as failing.
const RPC_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Consecutive failed `GetRun` polls after which a run is given up as unreadable.
const POLL_ERROR_LIMIT: u32 = 20;
/// How long canceling the unfinished runs may take in all.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The shape of the load.
#[derive(Clone, Debug)]
pub struct LoadPlan {
    /// How many runs to submit.
    pub runs: u32,
    /// Submissions per second; 0 submits as fast as the concurrency limit lets.
    pub rate: f64,
    /// RPCs (submits and polls) in flight at once.
    pub concurrency_limit: usize,
    /// The whole test's wall-clock limit.
    pub max_duration: Duration,
    /// How often each unfinished run's status is read.
    pub poll_interval: Duration,
    /// How often a progress line goes to stderr; `None` for none.
    pub progress_every: Option<Duration>,
}

/// Why the test stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// Every submitted run ended.
    Completed,
    /// `--max-seconds` ran out.
    Deadline,
    /// The user interrupted the test.
    Interrupted,
}

/// Everything the test observed.
#[derive(Clone, Debug)]
pub struct LoadResult {
    /// One entry per submission sent, in the order they were sent.
    pub attempts: Vec<Attempt>,
    /// From the start of the test until the last run ended or the test stopped.
    pub elapsed: Duration,
    pub stopped_by: StopReason,
    /// Unfinished runs the test canceled on the farm when it stopped.
    pub canceled: u32,
}

/// Connects to the coordinators at `address` (a comma-separated list of members) and reads
/// what the farm is, which also proves one answers.
pub async fn connect(address: &str) -> anyhow::Result<(Client, GetInfoResponse)> {
    let mut client = Client::new(address)?;
    let info = client.get_info().await.map_err(|error| {
        let detail = if endpoints::is_transport(&error.status) {
            error.detail()
        } else {
            status_line(&error.status)
        };
        anyhow!(
            "cannot reach the kiln coordinator at {} ({detail}): start the local farm with deploy/local/up.sh, or pass --coordinator",
            client.endpoints().describe()
        )
    })?;
    Ok((client, info))
}

/// Runs the load described by `plan`, every run submitting `request`. Cancelling `interrupt`
/// stops the test early; it still returns what it observed.
pub async fn run_load(
    client: Client,
    plan: &LoadPlan,
    request: RunRequest,
    interrupt: CancellationToken,
) -> anyhow::Result<LoadResult> {
    let start = Instant::now();
    let deadline = start + plan.max_duration;
    let stop = interrupt.child_token();
    let shared = Arc::new(Shared {
        client,
        request,
        slots: Arc::new(Semaphore::new(plan.concurrency_limit.max(1))),
        stop: stop.clone(),
        interrupt,
        poll_interval: plan.poll_interval,
        start,
        submitted: AtomicU32::new(0),
        ended: AtomicU32::new(0),
    });

    let work = submit_and_follow(&shared, plan);
    let deadline_timer = async {
        tokio::time::sleep_until(deadline).await;
        stop.cancel();
        std::future::pending::<()>().await;
    };
    let progress = print_progress(&shared, plan);
    let mut attempts = tokio::select! {
        attempts = work => attempts?,
        () = deadline_timer => unreachable!("the deadline timer never completes"),
        () = progress => unreachable!("the progress printer never completes"),
    };
    let elapsed = start.elapsed();
    attempts.sort_by_key(|attempt| attempt.sent_at);

    let stopped_by = if shared.interrupt.is_cancelled() {
        StopReason::Interrupted
    } else if stop.is_cancelled() {
        StopReason::Deadline
    } else {
        StopReason::Completed
    };
    let canceled = cancel_unfinished(&shared, &attempts).await;
    Ok(LoadResult {
        attempts,
        elapsed,
        stopped_by,
        canceled,
    })
}

/// What every run's task shares.
struct Shared {
    client: Client,
    request: RunRequest,
    /// One permit per RPC in flight (`--concurrency-limit`).
    slots: Arc<Semaphore>,
    /// Cancelled at the deadline or on interruption.
    stop: CancellationToken,
    /// Cancelled on interruption only.
    interrupt: CancellationToken,
    poll_interval: Duration,
    start: Instant,
    submitted: AtomicU32,
    ended: AtomicU32,
}

impl Shared {
    fn stop_cause(&self) -> StopCause {
        if self.interrupt.is_cancelled() {
            StopCause::Interrupted
        } else {
            StopCause::Deadline
        }
    }

    /// A permit for one RPC, or `None` once the test stops.
    async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        tokio::select! {
            biased;
            () = self.stop.cancelled() => None,
            permit = self.slots.clone().acquire_owned() => permit.ok(),
        }
    }
}

/// Submits on schedule and waits for every run; the set of run tasks is bounded by
/// `plan.runs`.
async fn submit_and_follow(shared: &Arc<Shared>, plan: &LoadPlan) -> anyhow::Result<Vec<Attempt>> {
    let period = (plan.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / plan.rate));
    let mut tasks = JoinSet::new();
    for index in 0..plan.runs {
        let scheduled = match period {
            Some(period) => shared.start + period.mul_f64(f64::from(index)),
            None => Instant::now(),
        };
        tokio::select! {
            biased;
            () = shared.stop.cancelled() => break,
            () = tokio::time::sleep_until(scheduled) => {}
        }
        let Some(permit) = shared.slot().await else {
            break;
        };
        tasks.spawn(follow_run(Arc::clone(shared), scheduled, permit));
    }
    let mut attempts = Vec::with_capacity(tasks.len());
    while let Some(joined) = tasks.join_next().await {
        attempts.push(joined.map_err(|error| anyhow!("a run's task failed: {error}"))?);
    }
    Ok(attempts)
}

/// Submits one run (holding `permit` for the RPC) and follows it to its end.
async fn follow_run(
    shared: Arc<Shared>,
    scheduled: Instant,
    permit: OwnedSemaphorePermit,
) -> Attempt {
    let sent = Instant::now();
    let sent_wall_ms = wall_clock_ms();
    let sent_at = sent.duration_since(shared.start);
    let schedule_lag = sent.saturating_duration_since(scheduled);
    // The submission is not abandoned when the test stops: its run id is needed to cancel it.
    let submitted = shared
        .client
        .clone()
        .submit_run(SubmitRunRequest {
            request: Some(shared.request.clone()),
            request_id: endpoints::random_id(),
        })
        .await;
    let submit_latency = sent.elapsed();
    drop(permit);
    let outcome = match submitted {
        Err(status) => Outcome::SubmitFailed {
            error: status_line(&status),
        },
        Ok(response) => {
            shared.submitted.fetch_add(1, Ordering::Relaxed);
            let run_id = response.into_inner().run_id;
            let end = watch_run(&shared, &run_id, sent, sent_at, sent_wall_ms).await;
            if matches!(end, RunEnd::Finished(_)) {
                shared.ended.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Submitted(SubmittedRun {
                run_id,
                submit_latency,
                end,
            })
        }
    };
    Attempt {
        schedule_lag,
        sent_at,
        outcome,
    }
}

/// Polls `GetRun` until the run is terminal, the test stops, or the status cannot be read.
async fn watch_run(
    shared: &Shared,
    run_id: &str,
    sent: Instant,
    sent_at: Duration,
    sent_wall_ms: u64,
) -> RunEnd {
    let mut last_status = RunStatus::Unspecified;
    let mut queue = None;
    let mut failed_polls = 0;
    loop {
        let unfinished = |last_status, queue, why| RunEnd::Unfinished {
            last_status,
            queue,
            why,
        };
        tokio::select! {
            biased;
            () = shared.stop.cancelled() => return unfinished(last_status, queue, shared.stop_cause()),
            () = tokio::time::sleep(shared.poll_interval) => {}
        }
        let Some(permit) = shared.slot().await else {
            return unfinished(last_status, queue, shared.stop_cause());
        };
        let mut client = shared.client.clone();
        let request = GetRunRequest {
            run_id: run_id.to_string(),
        };
        let response = tokio::select! {
            biased;
            () = shared.stop.cancelled() => return unfinished(last_status, queue, shared.stop_cause()),
            response = client.get_run(request) => response,
        };
        let observed = sent.elapsed();
        drop(permit);
        match response {
            Ok(response) => {
                failed_polls = 0;
                let Some(run) = response.into_inner().run else {
                    continue;
                };
                last_status = run.status();
                queue = queue.or_else(|| queue_time(&run));
                if is_terminal(last_status) {
                    return RunEnd::Finished(FinishedRun::from_run(
                        &run,
                        sent_at,
                        sent_wall_ms,
                        observed,
                    ));
                }
            }
            Err(status) => {
                failed_polls += 1;
                if failed_polls >= POLL_ERROR_LIMIT {
                    let why = StopCause::Unreadable(status_line(&status));
                    return unfinished(last_status, queue, why);
                }
            }
        }
    }
}

/// Cancels the runs the test left unfinished, so that the load stops with the test. Returns
/// how many the coordinator accepted to cancel.
async fn cancel_unfinished(shared: &Shared, attempts: &[Attempt]) -> u32 {
    let unfinished: Vec<String> = attempts
        .iter()
        .filter_map(|attempt| match &attempt.outcome {
            Outcome::Submitted(SubmittedRun {
                run_id,
                end: RunEnd::Unfinished { .. },
                ..
            }) => Some(run_id.clone()),
            _ => None,
        })
        .collect();
    if unfinished.is_empty() {
        return 0;
    }
    eprintln!(
        "kiln-loadtest: canceling {} unfinished run(s)",
        unfinished.len()
    );
    let mut tasks = JoinSet::new();
    let cancel_all = async {
        let mut canceled = 0;
        for run_id in unfinished {
            // The stop token is cancelled by now: the semaphore alone bounds these RPCs.
            let Ok(permit) = shared.slots.clone().acquire_owned().await else {
                break;
            };
            let mut client = shared.client.clone();
            tasks.spawn(async move {
                let canceled = client.cancel_run(CancelRunRequest { run_id }).await.is_ok();
                drop(permit);
                canceled
            });
        }
        while let Some(joined) = tasks.join_next().await {
            if matches!(joined, Ok(true)) {
                canceled += 1;
            }
        }
        canceled
    };
    match tokio::time::timeout(CLEANUP_TIMEOUT, cancel_all).await {
        Ok(canceled) => canceled,
        Err(_) => {
            eprintln!("kiln-loadtest: gave up canceling unfinished runs after {CLEANUP_TIMEOUT:?}");
            0
        }
    }
}

/// Prints a progress line to stderr every `plan.progress_every`; never completes.
async fn print_progress(shared: &Shared, plan: &LoadPlan) {
    let Some(every) = plan.progress_every else {
        return std::future::pending().await;
    };
    let mut ticker = tokio::time::interval_at(shared.start + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticker.tick().await;
        let submitted = shared.submitted.load(Ordering::Relaxed);
        let ended = shared.ended.load(Ordering::Relaxed);
        eprintln!(
            "kiln-loadtest: {:>6.1}s  submitted {submitted}/{}  ended {ended}  in flight {}",
            shared.start.elapsed().as_secs_f64(),
            plan.runs,
            submitted.saturating_sub(ended),
        );
    }
}

/// A gRPC error as one line: its code and message.
fn status_line(status: &tonic::Status) -> String {
    let message = status.message().lines().next().unwrap_or_default().trim();
    if message.is_empty() {
        format!("{:?}", status.code())
    } else {
        format!("{:?}: {message}", status.code())
    }
}

fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

#[cfg(test)]
mod tests;

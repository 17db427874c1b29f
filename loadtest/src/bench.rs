//! Two benchmarks of the coordinator itself, with simulated agents:
//!
//! - dispatch: submit N runs as fast as the concurrency limit lets and count them through the
//!   simulated agents (no status polling): runs per second from the first submission to the
//!   last committed `RunFinished`;
//! - fairness: queue K runs from one submitter (`flood`), then submit single runs from another
//!   (`lone`) one by one and measure how long each waits in the queue (created → started, the
//!   coordinator's time stamps).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use kiln_proto::v1::cluster_client::ClusterClient;
use kiln_proto::v1::{CancelRunRequest, ClusterStatusRequest, GetRunRequest, SubmitRunRequest};
use kiln_state::pb::{RunRequest, RunStatus};

use crate::driver::Client;
use crate::outcome::queue_time;
use crate::sim::{SimFarm, SimSummary};
use crate::stats::{bucket_difference, Buckets, HistogramSummary, LatencySummary};

/// The fairness goal: a lone run waits at most this long (p99) behind a flood.
pub const FAIRNESS_GOAL: Duration = Duration::from_secs(1);
/// The flood's and the lone runs' submitters.
pub const FLOOD_SUBMITTER: &str = "flood";
pub const LONE_SUBMITTER: &str = "lone";
/// How long canceling what a benchmark left may take in all.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a lone run's status is read while it is queued.
pub const LONE_POLL: Duration = Duration::from_millis(10);

/// `count` submissions of `request`, at most `concurrency` at once, in order of the results.
/// Returns the run ids and the submission errors (the first one's text and how many).
async fn submit_many(
    client: &Client,
    request: &RunRequest,
    count: u32,
    concurrency: usize,
    stop: &CancellationToken,
) -> (Vec<String>, u32, Option<String>) {
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    let mut ids = Vec::with_capacity(count as usize);
    let mut errors = 0;
    let mut first_error = None;
    let mut collect =
        |joined: Result<Result<String, tonic::Status>, tokio::task::JoinError>| match joined {
            Ok(Ok(run_id)) => ids.push(run_id),
            Ok(Err(status)) => {
                errors += 1;
                first_error.get_or_insert_with(|| status_line(&status));
            }
            Err(error) => {
                errors += 1;
                first_error.get_or_insert_with(|| error.to_string());
            }
        };
    for _ in 0..count {
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let mut client = client.clone();
        let request = request.clone();
        tasks.spawn(async move {
            let response = client
                .submit_run(SubmitRunRequest {
                    request: Some(request),
                    request_id: String::new(),
                })
                .await;
            drop(permit);
            response.map(|r| r.into_inner().run_id)
        });
        while let Some(joined) = tasks.try_join_next() {
            collect(joined);
        }
    }
    while let Some(joined) = tasks.join_next().await {
        collect(joined);
    }
    (ids, errors, first_error)
}

/// Cancels `run_ids` (those already over refuse, which is fine), bounded in concurrency and
/// time. Returns how many the coordinator accepted to cancel.
pub async fn cancel_all(client: &Client, run_ids: Vec<String>, concurrency: usize) -> u32 {
    if run_ids.is_empty() {
        return 0;
    }
    eprintln!(
        "kiln-loadtest: canceling {} run(s) left over",
        run_ids.len()
    );
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    let work = async {
        for run_id in run_ids {
            let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                break;
            };
            let mut client = client.clone();
            tasks.spawn(async move {
                let canceled = client.cancel_run(CancelRunRequest { run_id }).await.is_ok();
                drop(permit);
                canceled
            });
        }
        let mut canceled = 0;
        while let Some(joined) = tasks.join_next().await {
            if matches!(joined, Ok(true)) {
                canceled += 1;
            }
        }
        canceled
    };
    tokio::time::timeout(CLEANUP_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| {
            eprintln!("kiln-loadtest: gave up canceling after {CLEANUP_TIMEOUT:?}");
            0
        })
}

/// A unique submitter name for one dispatch benchmark, so that its runs are told apart.
pub fn unique_submitter(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos());
    format!("{prefix}-{}-{nanos}", std::process::id())
}

#[derive(Clone, Debug)]
pub struct DispatchPlan {
    pub runs: u32,
    pub concurrency: usize,
    pub max_duration: Duration,
    /// After the load: this many runs submitted one at a time (the light-load commit latency).
    pub light_runs: u32,
}

/// How long one `Cluster.Status` call may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// What the leader said about itself at one moment.
#[derive(Clone, Debug)]
pub struct LeaderView {
    pub node_id: u64,
    pub term: u64,
    pub commit_index: u64,
    pub commit_latency: Buckets,
}

/// Asks every endpoint for its cluster status and returns the leader's, if one answers.
pub async fn leader_view(client: &Client) -> Option<LeaderView> {
    let endpoints = client.endpoints();
    for url in endpoints.urls() {
        let Ok(connection) = endpoints.connection(url) else {
            continue;
        };
        let mut cluster = ClusterClient::new(connection);
        let call = cluster.status(ClusterStatusRequest {});
        let Ok(Ok(response)) = tokio::time::timeout(STATUS_TIMEOUT, call).await else {
            continue;
        };
        let status = response.into_inner();
        if status.role == "leader" {
            return Some(LeaderView {
                node_id: status.node_id,
                term: status.term,
                commit_index: status.commit_index,
                commit_latency: status
                    .commit_latency
                    .iter()
                    .map(|b| (b.le_us, b.count))
                    .collect(),
            });
        }
    }
    None
}

/// The leader's commit latency and commit rate between two views of it.
#[derive(Clone, Debug, Serialize)]
pub struct CommitFigures {
    pub leader_id: u64,
    /// Log entries committed in between.
    pub commands: u64,
    pub commands_per_second: f64,
    /// Proposal received by the leader's Raft thread → committed, applied, persisted and the
    /// proposer answered (bucket upper bounds, about 9 % wide).
    pub latency_ms: HistogramSummary,
}

/// `None` when a view is missing or the leadership moved in between (the histograms are per
/// process).
pub fn commit_figures(
    before: Option<&LeaderView>,
    after: Option<&LeaderView>,
    seconds: f64,
) -> Option<CommitFigures> {
    let (before, after) = (before?, after?);
    if before.node_id != after.node_id || before.term != after.term {
        return None;
    }
    let commands = after.commit_index.saturating_sub(before.commit_index);
    Some(CommitFigures {
        leader_id: after.node_id,
        commands,
        commands_per_second: rate(commands, seconds),
        latency_ms: HistogramSummary::from_buckets(&bucket_difference(
            &before.commit_latency,
            &after.commit_latency,
        )),
    })
}

fn commit_line(name: &str, figures: Option<&CommitFigures>) -> String {
    let ms = |value: Option<f64>| value.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
    match figures {
        Some(f) => format!(
            "{name:<13} {} commits ({:.0} entries/s) on leader {}: p50 {} ms  p90 {} ms  p99 {} ms  max {} ms\n",
            f.latency_ms.count,
            f.commands_per_second,
            f.leader_id,
            ms(f.latency_ms.p50_ms),
            ms(f.latency_ms.p90_ms),
            ms(f.latency_ms.p99_ms),
            ms(f.latency_ms.max_ms),
        ),
        None => format!("{name:<13} - (no leader answered, or the leadership moved)\n"),
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct DispatchReport {
    pub runs: u32,
    pub submitted: u32,
    pub submit_errors: u32,
    pub first_submit_error: Option<String>,
    /// Runs whose `RunFinished` the simulated agents saw committed.
    pub finished: u64,
    pub submit_seconds: f64,
    pub submit_rate_per_second: f64,
    /// First submission → last committed finish.
    pub wall_seconds: f64,
    pub throughput_runs_per_second: f64,
    pub stopped_by: &'static str,
    pub sim: SimSummary,
    /// The leader's commits over the load (first submission → last finish).
    pub commit: Option<CommitFigures>,
    /// The leader's commits while `light_runs` runs were submitted one at a time afterwards.
    pub light_runs: u32,
    pub light_commit: Option<CommitFigures>,
}

impl DispatchReport {
    pub fn succeeded(&self) -> bool {
        self.submit_errors == 0 && self.finished == u64::from(self.runs)
    }

    pub fn to_table(&self) -> String {
        let mut out = format!(
            "dispatch      {} runs, {} submitted ({} errors) in {:.2} s = {:.0} submissions/s\n",
            self.runs,
            self.submitted,
            self.submit_errors,
            self.submit_seconds,
            self.submit_rate_per_second
        );
        out.push_str(&format!(
            "finished      {} in {:.2} s ({})\n",
            self.finished, self.wall_seconds, self.stopped_by
        ));
        out.push_str(&format!(
            "throughput    {:.1} runs/s (first submission to last committed finish)\n",
            self.throughput_runs_per_second
        ));
        if let Some(error) = &self.first_submit_error {
            out.push_str(&format!("first submit error  {error}\n"));
        }
        out.push_str(&commit_line("commit", self.commit.as_ref()));
        if self.light_runs > 0 {
            out.push_str(&format!(
                "light load    {} runs submitted one at a time after the load\n",
                self.light_runs
            ));
            out.push_str(&commit_line("light commit", self.light_commit.as_ref()));
        }
        out.push_str(&self.sim.to_table());
        out
    }
}

/// The dispatch benchmark on `farm` (connected): every run is `request` with a unique
/// submitter.
pub async fn dispatch(
    client: &Client,
    farm: SimFarm,
    request: RunRequest,
    plan: &DispatchPlan,
    interrupt: &CancellationToken,
) -> DispatchReport {
    let submitter = unique_submitter("dispatch");
    let request = RunRequest {
        submitter: submitter.clone(),
        ..request
    };
    let view_before = leader_view(client).await;
    let start = Instant::now();
    let deadline = start + plan.max_duration;
    let stop = interrupt.child_token();
    let timer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            stop.cancel();
        })
    };
    let (ids, submit_errors, first_submit_error) =
        submit_many(client, &request, plan.runs, plan.concurrency, &stop).await;
    let submit_seconds = start.elapsed().as_secs_f64();
    let submitted = u32::try_from(ids.len()).unwrap_or(u32::MAX);
    let waited = tokio::select! {
        tally = farm.wait_finished(&submitter, u64::from(submitted), deadline.saturating_duration_since(Instant::now())) => tally,
        () = stop.cancelled() => farm.tally(&submitter),
    };
    let view_after = leader_view(client).await;
    let finished = waited.map_or(0, |t| t.finished);
    let stopped_by = if finished >= u64::from(submitted) {
        "every run finished"
    } else if interrupt.is_cancelled() {
        "interrupted"
    } else {
        "deadline"
    };
    let wall = waited.map_or_else(
        || start.elapsed(),
        |t| t.last_finish.saturating_duration_since(start),
    );
    if finished < u64::from(submitted) {
        cancel_all(client, ids, plan.concurrency).await;
    }
    let commit = commit_figures(
        view_before.as_ref(),
        view_after.as_ref(),
        wall.as_secs_f64(),
    );
    // The acknowledgement latencies of the load alone, before the light phase adds its own.
    let sim = farm.summary();
    let light_commit = if plan.light_runs > 0 && !stop.is_cancelled() {
        light_load(client, &farm, &request, plan.light_runs, deadline, &stop).await
    } else {
        None
    };
    timer.abort();
    farm.stop().await;
    DispatchReport {
        runs: plan.runs,
        submitted,
        submit_errors,
        first_submit_error,
        finished,
        submit_seconds,
        submit_rate_per_second: rate(u64::from(submitted), submit_seconds),
        wall_seconds: wall.as_secs_f64(),
        throughput_runs_per_second: rate(finished, wall.as_secs_f64()),
        stopped_by,
        sim,
        commit,
        light_runs: plan.light_runs,
        light_commit,
    }
}

/// Light load: `runs` runs submitted one after another (each once the previous submission was
/// answered), under a submitter of their own, until they finished; the leader's commits over
/// that time.
async fn light_load(
    client: &Client,
    farm: &SimFarm,
    request: &RunRequest,
    runs: u32,
    deadline: Instant,
    stop: &CancellationToken,
) -> Option<CommitFigures> {
    let submitter = unique_submitter("light");
    let request = RunRequest {
        submitter: submitter.clone(),
        ..request.clone()
    };
    let before = leader_view(client).await;
    let start = Instant::now();
    let (ids, _, _) = submit_many(client, &request, runs, 1, stop).await;
    let limit = deadline.saturating_duration_since(Instant::now());
    let finished = tokio::select! {
        tally = farm.wait_finished(&submitter, ids.len() as u64, limit) => tally.map_or(0, |t| t.finished),
        () = stop.cancelled() => 0,
    };
    let seconds = start.elapsed().as_secs_f64();
    let after = leader_view(client).await;
    if finished < ids.len() as u64 {
        cancel_all(client, ids, 16).await;
    }
    commit_figures(before.as_ref(), after.as_ref(), seconds)
}

fn rate(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

#[derive(Clone, Debug)]
pub struct FairnessPlan {
    /// The flood: runs queued from `flood` first.
    pub queued: u32,
    /// Lone runs, one every `lone_every`.
    pub lone: u32,
    pub lone_every: Duration,
    pub concurrency: usize,
    pub max_duration: Duration,
}

/// One lone run's wait.
#[derive(Clone, Debug, Serialize)]
pub struct LoneRun {
    pub run_id: String,
    /// Created → started (coordinator time stamps), when it started.
    pub queue_ms: Option<u64>,
    /// Sending `SubmitRun` → seeing it Running here (within the poll interval).
    pub observed_ms: Option<u64>,
    /// Flood runs not yet finished when it was submitted (queued or running).
    pub flood_unfinished: u64,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FairnessReport {
    pub queued: u32,
    pub flood_submitted: u32,
    pub flood_submit_errors: u32,
    pub first_submit_error: Option<String>,
    pub flood_submit_seconds: f64,
    pub lone_runs: Vec<LoneRun>,
    /// Created → started of the lone runs that started.
    pub queue_ms: LatencySummary,
    pub observed_ms: LatencySummary,
    /// The fewest flood runs unfinished when a lone run was submitted.
    pub min_flood_unfinished: u64,
    pub goal_ms: u64,
    pub goal_met: bool,
    pub stopped_by: &'static str,
    pub sim: Option<SimSummary>,
}

impl FairnessReport {
    pub fn to_table(&self) -> String {
        let ms = |value: Option<f64>| value.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"));
        let mut out = format!(
            "flood         {} runs from '{FLOOD_SUBMITTER}' queued in {:.2} s ({} errors)\n",
            self.flood_submitted, self.flood_submit_seconds, self.flood_submit_errors
        );
        let started = self
            .lone_runs
            .iter()
            .filter(|r| r.queue_ms.is_some())
            .count();
        out.push_str(&format!(
            "lone runs     {} from '{LONE_SUBMITTER}', {} started; at least {} flood runs unfinished at each submission\n",
            self.lone_runs.len(),
            started,
            self.min_flood_unfinished
        ));
        out.push_str("latency (ms)   count       p50       p90       p99       max      mean\n");
        for (name, summary) in [("queue", &self.queue_ms), ("observed", &self.observed_ms)] {
            out.push_str(&format!(
                "{name:<12} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
                summary.count,
                ms(summary.p50_ms),
                ms(summary.p90_ms),
                ms(summary.p99_ms),
                ms(summary.max_ms),
                ms(summary.mean_ms)
            ));
        }
        out.push_str(&format!(
            "goal          lone-run queue p99 <= {} ms: {} ({})\n",
            self.goal_ms,
            if self.goal_met { "met" } else { "NOT met" },
            self.stopped_by
        ));
        if let Some(error) = &self.first_submit_error {
            out.push_str(&format!("first submit error  {error}\n"));
        }
        for lone in self.lone_runs.iter().filter(|r| r.error.is_some()).take(10) {
            out.push_str(&format!(
                "problem       {}: {}\n",
                lone.run_id,
                lone.error.as_deref().unwrap_or_default()
            ));
        }
        if let Some(sim) = &self.sim {
            out.push_str(&sim.to_table());
        }
        out
    }
}

/// Whether the lone runs' waits meet the goal: all of them started and p99 ≤ the goal.
pub fn goal_met(lone_runs: &[LoneRun], queue: &LatencySummary) -> bool {
    !lone_runs.is_empty()
        && lone_runs.iter().all(|r| r.queue_ms.is_some())
        && queue
            .p99_ms
            .is_some_and(|p99| p99 <= FAIRNESS_GOAL.as_secs_f64() * 1000.0)
}

/// The fairness benchmark. `farm` (when given) is connected and is what runs the flood; with
/// none, the farm's own agents do.
pub async fn fairness(
    client: &Client,
    farm: Option<SimFarm>,
    request: RunRequest,
    plan: &FairnessPlan,
    interrupt: &CancellationToken,
) -> FairnessReport {
    let start = Instant::now();
    let deadline = start + plan.max_duration;
    let stop = interrupt.child_token();
    let timer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            stop.cancel();
        })
    };
    let flood_request = RunRequest {
        submitter: FLOOD_SUBMITTER.to_string(),
        ..request.clone()
    };
    let (flood_ids, flood_submit_errors, first_submit_error) =
        submit_many(client, &flood_request, plan.queued, plan.concurrency, &stop).await;
    let flood_submit_seconds = start.elapsed().as_secs_f64();
    let flood_submitted = u32::try_from(flood_ids.len()).unwrap_or(u32::MAX);
    eprintln!(
        "kiln-loadtest: {flood_submitted} flood runs submitted in {flood_submit_seconds:.1} s; submitting {} lone runs",
        plan.lone
    );

    let lone_request = RunRequest {
        submitter: LONE_SUBMITTER.to_string(),
        ..request
    };
    let farm = farm.map(Arc::new);
    let lone_start = Instant::now();
    let mut tasks = JoinSet::new();
    for index in 0..plan.lone {
        let due = lone_start + plan.lone_every.mul_f64(f64::from(index));
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep_until(due) => {}
        }
        let flood_finished = farm
            .as_ref()
            .and_then(|farm| farm.tally(FLOOD_SUBMITTER))
            .map_or(0, |t| t.finished);
        let flood_unfinished = u64::from(flood_submitted).saturating_sub(flood_finished);
        tasks.spawn(lone_run(
            client.clone(),
            lone_request.clone(),
            flood_unfinished,
            stop.clone(),
        ));
    }
    let mut lone_runs = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(lone) = joined {
            lone_runs.push(lone);
        }
    }
    timer.abort();
    let stopped_by = if interrupt.is_cancelled() {
        "interrupted"
    } else if stop.is_cancelled() {
        "deadline"
    } else {
        "every lone run measured"
    };
    let mut leftovers = flood_ids;
    leftovers.extend(lone_runs.iter().map(|r| r.run_id.clone()));
    leftovers.retain(|id| !id.is_empty());
    cancel_all(client, leftovers, plan.concurrency).await;
    let sim = match farm.map(Arc::try_unwrap) {
        Some(Ok(farm)) => Some(farm.stop().await),
        _ => None,
    };
    let queue_ms = LatencySummary::from_durations(
        lone_runs
            .iter()
            .filter_map(|r| r.queue_ms.map(Duration::from_millis)),
    );
    let observed_ms = LatencySummary::from_durations(
        lone_runs
            .iter()
            .filter_map(|r| r.observed_ms.map(Duration::from_millis)),
    );
    FairnessReport {
        queued: plan.queued,
        flood_submitted,
        flood_submit_errors,
        first_submit_error,
        flood_submit_seconds,
        min_flood_unfinished: lone_runs
            .iter()
            .map(|r| r.flood_unfinished)
            .min()
            .unwrap_or(0),
        goal_ms: u64::try_from(FAIRNESS_GOAL.as_millis()).unwrap_or(u64::MAX),
        goal_met: goal_met(&lone_runs, &queue_ms),
        queue_ms,
        observed_ms,
        lone_runs,
        stopped_by,
        sim,
    }
}

/// Submits one lone run and follows it until it leaves the queue.
async fn lone_run(
    mut client: Client,
    request: RunRequest,
    flood_unfinished: u64,
    stop: CancellationToken,
) -> LoneRun {
    let sent = Instant::now();
    let mut lone = LoneRun {
        run_id: String::new(),
        queue_ms: None,
        observed_ms: None,
        flood_unfinished,
        error: None,
    };
    let submitted = client
        .submit_run(SubmitRunRequest {
            request: Some(request),
            request_id: String::new(),
        })
        .await;
    match submitted {
        Ok(response) => lone.run_id = response.into_inner().run_id,
        Err(status) => {
            lone.error = Some(format!("submit: {}", status_line(&status)));
            return lone;
        }
    }
    loop {
        let response = tokio::select! {
            biased;
            () = stop.cancelled() => {
                lone.error = Some("still queued when the benchmark stopped".to_string());
                return lone;
            }
            response = client.get_run(GetRunRequest { run_id: lone.run_id.clone() }) => response,
        };
        match response.map(|r| r.into_inner().run) {
            Ok(Some(run)) if run.status() != RunStatus::Queued => {
                lone.observed_ms = Some(millis(sent.elapsed()));
                lone.queue_ms = queue_time(&run).map(millis);
                if lone.queue_ms.is_none() {
                    lone.error = Some(format!("ended {:?} without starting", run.status()));
                }
                return lone;
            }
            Ok(_) => {}
            Err(status) => {
                lone.error = Some(format!("status: {}", status_line(&status)));
                return lone;
            }
        }
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(LONE_POLL) => {}
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

pub(crate) fn status_line(status: &tonic::Status) -> String {
    let message = status.message().lines().next().unwrap_or_default().trim();
    if message.is_empty() {
        format!("{:?}", status.code())
    } else {
        format!("{:?}: {message}", status.code())
    }
}

/// Checks the fairness benchmark's numbers.
pub fn validate_fairness(queued: u32, lone: u32, lone_every_ms: u64) -> anyhow::Result<()> {
    if queued == 0 || queued > crate::MAX_RUNS {
        bail!("--queued must be between 1 and {}", crate::MAX_RUNS);
    }
    if lone == 0 || lone > 1_000 {
        bail!("--lone must be between 1 and 1000");
    }
    if !(10..=600_000).contains(&lone_every_ms) {
        bail!("--lone-every-ms must be between 10 and 600000");
    }
    Ok(())
}

#[cfg(test)]
mod tests;

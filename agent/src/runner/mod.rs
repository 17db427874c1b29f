//! Executes one assigned run with ACR semantics: renders the task file, fetches the context,
//! creates the run's network, schedules the step DAG (parallel branches, fail-fast,
//! `ignoreErrors`, retries, repeat, start delays, step and run timeouts, detach, keep),
//! reports every state change, and always cleans up.
//!
//! The workspace is a host directory under the agent's work dir, bind-mounted at `/workspace`
//! in every step container; this requires the agent and the engine to share a filesystem.
//! Next to it (outside the workspace) are the run's home directory (`/acb/home`, `HOME` of every
//! step, as ACR's `home` volume but per run) and its secret volumes (read-only files, mode
//! 0400). Declared secrets are resolved through the agent's `SecretResolver` before the real
//! render; their values go only into the render inputs, and everything the run reports (log
//! bytes, reasons, ids, image names) passes through the run's `Masker`.
//!
//! This module holds the run's lifecycle (`execute`: render, context, networks, cleanup, the
//! final report) and the per-run context; `render` (task file and secrets), `volumes` (secret
//! volumes), `graph` (the step dependency graph, pure), `schedule` (drives the graph), `step`
//! (one step: start delay, log, retries, repeat, timeouts, its terminal report), `actions`
//! (the cmd, build and push bodies) and `container` (container specs and paths).

mod actions;
mod container;
mod graph;
mod render;
mod schedule;
mod step;
mod volumes;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kiln_proto::pb::{Platform, RunRequest, RunStatus, StepStatus};
use kiln_proto::v1::{Assignment, LogChunk, RunFinished, RunPlanned, StepUpdate};
use tokio_util::sync::CancellationToken;

use crate::blobs::BlobStore;
use crate::executor::{ContainerRuntime, RuntimeError};
use crate::logs::LogStore;
use crate::mask::Masker;
use crate::platform_gate::PlatformGate;
use crate::platforms::platform_string;
use crate::reports::{Report, ReportSender};
use crate::secrets::{self, SecretResolver};
use crate::task::{Plan, Step};

use render::render;
use schedule::schedule;
use volumes::{decode_volumes, remove_volumes, run_masker, write_volumes};

#[cfg(test)]
use actions::resolve_build_args;
#[cfg(test)]
use container::normalize_path;

/// Whole-run limit when the request does not set one.
pub const DEFAULT_RUN_TIMEOUT_SECS: u64 = 3600;
/// Where the workspace appears inside step containers.
pub const WORKSPACE_MOUNT: &str = "/workspace";
/// Where the run's home directory appears inside step containers (`HOME`), as in ACR.
pub const HOME_MOUNT: &str = "/acb/home";
/// Where the engine's socket appears inside step containers, as in ACR.
pub const DOCKER_SOCKET_MOUNT: &str = "/var/run/docker.sock";
/// Secret-volume files larger than this are not masked in logs (the masking look-behind is
/// bounded by the longest value).
pub const MAX_MASKED_VOLUME_FILE: usize = secrets::MAX_SECRET_BYTES;

/// What every run on this agent shares.
#[derive(Debug)]
pub struct RunnerEnv<R, B> {
    pub runtime: R,
    pub blobs: B,
    pub reports: ReportSender,
    /// The agent's work directory; runs live in `<work_dir>/runs/<run id>`.
    pub work_dir: PathBuf,
    /// Goes into the names of the containers and networks a run creates (`kiln-<scope>-<run>-<step>`),
    /// so that agents of different farms sharing one engine never collide: run ids are only
    /// unique within one coordinator. Empty for no scope.
    pub name_scope: String,
    /// Keeps pulls and builds for different platforms apart (see `platform_gate`).
    pub platform_gate: PlatformGate,
    /// Where declared secrets (`secrets:` with `keyvault:`) get their values.
    pub secrets: Arc<dyn SecretResolver>,
    /// The engine's unix socket on this host, mounted at `/var/run/docker.sock` in step
    /// containers; `None` when the engine is not reached through a local socket.
    pub engine_socket: Option<PathBuf>,
}

impl<R, B> RunnerEnv<R, B> {
    /// An environment with no secret store, no engine socket for steps and no name scope.
    pub fn new(runtime: R, blobs: B, reports: ReportSender, work_dir: PathBuf) -> Self {
        RunnerEnv {
            runtime,
            blobs,
            reports,
            work_dir,
            name_scope: String::new(),
            platform_gate: PlatformGate::default(),
            secrets: Arc::new(secrets::NoSecretStore),
            engine_socket: None,
        }
    }
}

/// The host path of a `unix://` engine endpoint.
pub fn unix_socket_path(docker_host: &str) -> Option<PathBuf> {
    docker_host
        .strip_prefix("unix://")
        .filter(|path| path.starts_with('/'))
        .map(PathBuf::from)
}

/// The report sent for a run whose task died unexpectedly.
pub fn crashed_report(run_id: &str, error: &str) -> Report {
    Report::Finished(RunFinished {
        run_id: run_id.to_string(),
        epoch: 0,
        status: RunStatus::Error as i32,
        reason: format!("agent error: {error}"),
    })
}

/// Executes an assignment to the end and reports `RunFinished`. Cancel with `cancel`.
pub async fn execute<R: ContainerRuntime, B: BlobStore>(
    env: Arc<RunnerEnv<R, B>>,
    assignment: Assignment,
    cancel: CancellationToken,
) {
    execute_planned(env, assignment, None, cancel).await;
}

/// Like `execute`, with an already made plan instead of the request's task file when given.
pub async fn execute_planned<R: ContainerRuntime, B: BlobStore>(
    env: Arc<RunnerEnv<R, B>>,
    assignment: Assignment,
    plan: Option<Plan>,
    cancel: CancellationToken,
) {
    let run_id = assignment.run_id.clone();
    let run_dir = env.work_dir.join("runs").join(safe_name(&run_id));
    let mut masker = Masker::default();
    let (status, reason) =
        execute_in(&env, &assignment, plan, &run_dir, &cancel, &mut masker).await;
    let reason = masker.mask(&reason);
    if let Err(error) = tokio::fs::remove_dir_all(&run_dir).await {
        if error.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(run_id, %error, "cannot remove the run directory");
        }
    }
    tracing::info!(run_id, status = ?status, reason, "run finished");
    env.reports
        .send(Report::Finished(RunFinished {
            run_id,
            epoch: 0,
            status: status as i32,
            reason,
        }))
        .await;
}

/// Runs the assignment in `run_dir`; `masker` is set as soon as the secret values are known, and
/// the caller masks the returned reason with it.
async fn execute_in<R: ContainerRuntime, B: BlobStore>(
    env: &Arc<RunnerEnv<R, B>>,
    assignment: &Assignment,
    plan: Option<Plan>,
    run_dir: &Path,
    cancel: &CancellationToken,
    masker: &mut Masker,
) -> (RunStatus, String) {
    let run_id = assignment.run_id.as_str();
    let request = assignment.request.clone().unwrap_or_default();
    let platform = assignment
        .platform
        .clone()
        .or_else(|| request.platform.clone())
        .filter(|p| !p.os.is_empty())
        .unwrap_or_else(|| Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: String::new(),
        });
    let workspace = run_dir.join("workspace");
    let home = run_dir.join("home");
    for dir in [&workspace, &home] {
        if let Err(error) = tokio::fs::create_dir_all(dir).await {
            return (
                RunStatus::Error,
                format!("cannot create {}: {error}", dir.display()),
            );
        }
    }

    let rendered = match plan {
        Some(plan) => Ok((plan, BTreeMap::new())),
        None => {
            // Resolving secrets may take a while (each has a two-minute limit).
            let rendering = render(env, assignment, &request, &platform, &workspace);
            tokio::select! {
                rendered = rendering => rendered,
                _ = cancel.cancelled() => {
                    return (RunStatus::Canceled, "run canceled".to_string());
                }
            }
        }
    };
    let (plan, secret_values) = match rendered {
        Ok(rendered) => rendered,
        Err(failure) => {
            *masker = Masker::new(failure.secrets.values());
            let mut text = masker.mask(&failure.text);
            if !text.ends_with('\n') {
                text.push('\n');
            }
            env.reports
                .send(Report::Log(LogChunk {
                    run_id: run_id.to_string(),
                    step_id: String::new(),
                    data: text.into_bytes(),
                    offset: None,
                }))
                .await;
            let first = failure.text.lines().next().unwrap_or("invalid task file");
            return (RunStatus::Error, first.to_string());
        }
    };
    let volume_files = match decode_volumes(&plan) {
        Ok(files) => files,
        Err(reason) => {
            *masker = Masker::new(secret_values.values());
            return fail_before_start(env, run_id, &plan, masker, reason).await;
        }
    };
    *masker = run_masker(&secret_values, &volume_files);
    env.reports
        .send(Report::Planned(RunPlanned {
            run_id: run_id.to_string(),
            epoch: 0,
            step_ids: plan.steps.iter().map(|s| masker.mask(&s.id)).collect(),
        }))
        .await;
    let volumes_dir = run_dir.join("volumes");
    let volume_dirs = match write_volumes(&volumes_dir, &volume_files).await {
        Ok(dirs) => dirs,
        Err(reason) => {
            remove_volumes(run_id, &volumes_dir).await;
            skip_all(env, run_id, &plan, masker).await;
            return (RunStatus::Error, reason);
        }
    };

    let resource_key = if env.name_scope.is_empty() {
        run_id.to_string()
    } else {
        format!("{}-{run_id}", env.name_scope)
    };
    let ctx = Arc::new(RunCtx {
        env: Arc::clone(env),
        run_id: run_id.to_string(),
        resource_key: resource_key.clone(),
        registry: storage_registry(&request).to_string(),
        run_dir: run_dir.to_path_buf(),
        workspace: workspace.clone(),
        platform: platform_string(&platform),
        emulated: assignment.emulated,
        networks: run_networks(&resource_key, &plan),
        default_network: format!("kiln-{}", safe_name(&resource_key)),
        plan_default_network: plan.default_network.clone(),
        containers: Mutex::new(Vec::new()),
        stop: Mutex::new(None),
        masker: masker.clone(),
        home,
        volume_dirs,
        limits: Limits::of(&request),
    });

    if !request.context_digest.is_empty() {
        let fetch = env.blobs.fetch_context(
            storage_registry(&request),
            &request.context_digest,
            &workspace,
        );
        let fetched = tokio::select! {
            result = fetch => Some(result),
            _ = cancel.cancelled() => None,
        };
        match fetched {
            Some(Ok(())) => {}
            Some(Err(error)) => {
                ctx.finish_unstarted(&plan.steps, StepStatus::Skipped, "")
                    .await;
                return (
                    RunStatus::Error,
                    format!("cannot fetch the build context: {error}"),
                );
            }
            None => {
                ctx.finish_unstarted(&plan.steps, StepStatus::Canceled, "run canceled")
                    .await;
                return (RunStatus::Canceled, "run canceled".to_string());
            }
        }
    }

    let mut created_networks = Vec::new();
    let mut setup_error = None;
    for name in ctx.networks_to_create() {
        match env.runtime.create_network(&name).await {
            Ok(()) => created_networks.push(name),
            Err(error) => {
                setup_error = Some(format!("cannot create network {name}: {error}"));
                break;
            }
        }
    }

    let timeout_secs = match request.timeout_seconds {
        0 => DEFAULT_RUN_TIMEOUT_SECS,
        n => n,
    };
    let outcome = match setup_error {
        Some(error) => {
            ctx.finish_unstarted(&plan.steps, StepStatus::Skipped, "")
                .await;
            (RunStatus::Error, error)
        }
        None => schedule(&ctx, &plan, Duration::from_secs(timeout_secs), cancel).await,
    };

    ctx.remove_containers().await;
    for name in created_networks {
        if let Err(error) = env.runtime.remove_network(&name).await {
            tracing::warn!(run_id, network = name, %error, "cannot remove network");
        }
    }
    remove_volumes(run_id, &volumes_dir).await;
    outcome
}

/// Ends a planned run that cannot start: every step Skipped, the run Error.
async fn fail_before_start<R: ContainerRuntime, B: BlobStore>(
    env: &Arc<RunnerEnv<R, B>>,
    run_id: &str,
    plan: &Plan,
    masker: &Masker,
    reason: String,
) -> (RunStatus, String) {
    env.reports
        .send(Report::Planned(RunPlanned {
            run_id: run_id.to_string(),
            epoch: 0,
            step_ids: plan.steps.iter().map(|s| masker.mask(&s.id)).collect(),
        }))
        .await;
    skip_all(env, run_id, plan, masker).await;
    (RunStatus::Error, reason)
}

/// Reports every step of the plan Skipped.
async fn skip_all<R: ContainerRuntime, B: BlobStore>(
    env: &Arc<RunnerEnv<R, B>>,
    run_id: &str,
    plan: &Plan,
    masker: &Masker,
) {
    for step in &plan.steps {
        send_update(
            env,
            run_id,
            masker,
            &step.id,
            StepStatus::Skipped,
            None,
            "",
            None,
        )
        .await;
    }
}

/// Reports a step's state, masked.
#[allow(clippy::too_many_arguments)]
async fn send_update<R, B>(
    env: &RunnerEnv<R, B>,
    run_id: &str,
    masker: &Masker,
    step_id: &str,
    status: StepStatus,
    exit_code: Option<i32>,
    reason: &str,
    log: Option<(String, u64)>,
) {
    let update = step_update(run_id, masker, step_id, status, exit_code, reason, log);
    env.reports.send(Report::Step(update)).await;
}

/// A step's state as reported, masked (the session stamps the lease epoch).
fn step_update(
    run_id: &str,
    masker: &Masker,
    step_id: &str,
    status: StepStatus,
    exit_code: Option<i32>,
    reason: &str,
    log: Option<(String, u64)>,
) -> StepUpdate {
    let (log_digest, log_size) = log.unwrap_or_default();
    StepUpdate {
        run_id: run_id.to_string(),
        epoch: 0,
        step_id: masker.mask(step_id),
        status: status as i32,
        has_exit_code: exit_code.is_some(),
        exit_code: exit_code.unwrap_or(0),
        reason: masker.mask(reason),
        log_digest,
        log_size,
    }
}

/// The registry holding the run's context and step logs: the farm's, which may differ from the
/// registry the run pushes to (`Run.Registry`).
fn storage_registry(request: &RunRequest) -> &str {
    if request.storage_registry.is_empty() {
        &request.registry
    } else {
        &request.storage_registry
    }
}

/// Docker network names for the plan's networks: the task's own ones are made per-run so that
/// concurrent runs do not share them; `skipCreation` networks are used as named.
fn run_networks(run_id: &str, plan: &Plan) -> HashMap<String, (String, bool)> {
    plan.networks
        .iter()
        .map(|n| {
            let docker_name = if n.skip_creation {
                n.name.clone()
            } else if n.is_default || n.name == plan.default_network {
                format!("kiln-{}", safe_name(run_id))
            } else {
                format!("kiln-{}-{}", safe_name(run_id), safe_name(&n.name))
            };
            (n.name.clone(), (docker_name, !n.skip_creation))
        })
        .collect()
}

/// Why the scheduler stopped starting steps.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StopCause {
    Failed {
        step: String,
    },
    Canceled,
    RunTimeout {
        secs: u64,
    },
    /// The coordinator no longer assigns the run to this agent (or the session stopped): stop
    /// at once, as a cancel does.
    LeaseLost {
        reason: String,
    },
}

/// A failed step body.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fail {
    status: StepStatus,
    exit_code: Option<i32>,
    reason: String,
}

impl Fail {
    fn failed(exit_code: Option<i32>, reason: impl Into<String>) -> Fail {
        Fail {
            status: StepStatus::Failed,
            exit_code,
            reason: reason.into(),
        }
    }

    fn runtime(error: &RuntimeError) -> Fail {
        Fail::failed(Some(error.exit_code()), error.to_string())
    }
}

/// How a step ended, as reported and as the scheduler needs it.
#[derive(Debug, Clone)]
struct StepEnd {
    /// Whether dependents may start.
    ok: bool,
    /// A failure that stops the run (not ignored, not caused by the stop itself).
    failure: Option<Fail>,
    /// The step did not start because the run's lease is gone: the run stops at once.
    lease_lost: Option<String>,
}

impl StepEnd {
    fn ok() -> StepEnd {
        StepEnd {
            ok: true,
            failure: None,
            lease_lost: None,
        }
    }

    fn not_ok(failure: Option<Fail>) -> StepEnd {
        StepEnd {
            ok: false,
            failure,
            lease_lost: None,
        }
    }
}

struct RunCtx<R, B> {
    env: Arc<RunnerEnv<R, B>>,
    run_id: String,
    /// The run id with the agent's name scope: what docker resource names are made from.
    resource_key: String,
    registry: String,
    run_dir: PathBuf,
    workspace: PathBuf,
    /// `os/arch[/variant]` of the run.
    platform: String,
    emulated: bool,
    /// Task network name → (docker network name, created by this run).
    networks: HashMap<String, (String, bool)>,
    /// The run's own network (steps without `network` join it).
    default_network: String,
    plan_default_network: String,
    /// Containers this run created and has not removed yet, with their `keep` flag.
    containers: Mutex<Vec<(String, bool)>>,
    stop: Mutex<Option<StopCause>>,
    /// Masks the run's secret values in everything it reports.
    masker: Masker,
    /// The run's home directory on the host (mounted at `HOME_MOUNT`).
    home: PathBuf,
    /// Secret volume name → its directory on the host.
    volume_dirs: HashMap<String, PathBuf>,
    /// The run's CPU and memory limits, for every container it starts.
    limits: Limits,
}

/// Per-run resource limits (`RunRequest.cpu_millis`, `memory_bytes`; 0 is no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Limits {
    cpu_millis: Option<u32>,
    memory_bytes: Option<u64>,
}

impl Limits {
    fn of(request: &RunRequest) -> Limits {
        Limits {
            cpu_millis: (request.cpu_millis > 0).then_some(request.cpu_millis),
            memory_bytes: (request.memory_bytes > 0).then_some(request.memory_bytes),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<R: ContainerRuntime, B: BlobStore> RunCtx<R, B> {
    async fn send_step(
        &self,
        step_id: &str,
        status: StepStatus,
        exit_code: Option<i32>,
        reason: &str,
        log: Option<(String, u64)>,
    ) {
        send_update(
            &self.env,
            &self.run_id,
            &self.masker,
            step_id,
            status,
            exit_code,
            reason,
            log,
        )
        .await;
    }

    /// A step's state as reported, masked.
    fn step_update(
        &self,
        step_id: &str,
        status: StepStatus,
        exit_code: Option<i32>,
        reason: &str,
        log: Option<(String, u64)>,
    ) -> StepUpdate {
        step_update(
            &self.run_id,
            &self.masker,
            step_id,
            status,
            exit_code,
            reason,
            log,
        )
    }

    /// Stores step log segments in the run's storage registry.
    fn log_store(&self) -> LogStore {
        let env = Arc::clone(&self.env);
        let registry = self.registry.clone();
        LogStore::new(move |path: PathBuf| {
            let env = Arc::clone(&env);
            let registry = registry.clone();
            async move { env.blobs.upload_log(&registry, &path).await }
        })
    }

    async fn finish_unstarted(&self, steps: &[Step], status: StepStatus, reason: &str) {
        for step in steps {
            self.send_step(&step.id, status, None, reason, None).await;
        }
    }

    /// The failure a step reports when the run stopped underneath it.
    fn stopped_fail(&self) -> Fail {
        let (status, reason) = match lock(&self.stop).clone() {
            Some(StopCause::Failed { step }) => (
                StepStatus::Canceled,
                format!("canceled: step {step} failed"),
            ),
            Some(StopCause::RunTimeout { secs }) => {
                (StepStatus::Timeout, format!("run timed out after {secs}s"))
            }
            Some(StopCause::Canceled | StopCause::LeaseLost { .. }) | None => {
                (StepStatus::Canceled, "run canceled".to_string())
            }
        };
        Fail {
            status,
            exit_code: None,
            reason,
        }
    }

    /// Whether the run was stopped by something other than this step's own failure.
    fn stopped_by_others(&self, step_id: &str) -> bool {
        !matches!(&*lock(&self.stop), Some(StopCause::Failed { step }) if step == step_id)
    }

    fn networks_to_create(&self) -> Vec<String> {
        let mut names = vec![self.default_network.clone()];
        for (docker_name, create) in self.networks.values() {
            if *create && !names.contains(docker_name) {
                names.push(docker_name.clone());
            }
        }
        names
    }

    fn track(&self, name: &str, keep: bool) {
        let mut containers = lock(&self.containers);
        if !containers.iter().any(|(n, _)| n == name) {
            containers.push((name.to_string(), keep));
        }
    }

    async fn remove_container(&self, name: &str) {
        if let Err(error) = self.env.runtime.remove_container(name).await {
            tracing::warn!(run_id = self.run_id, container = name, %error, "cannot remove container");
        }
        lock(&self.containers).retain(|(n, _)| n != name);
    }

    /// Removes every container the run still has, except those marked `keep`.
    async fn remove_containers(&self) {
        let names: Vec<String> = lock(&self.containers)
            .iter()
            .filter(|(_, keep)| !keep)
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            self.remove_container(&name).await;
        }
    }
}

fn clamp_code(code: i64) -> i32 {
    i32::try_from(code).unwrap_or(i32::MAX)
}

/// `kiln-<run>-<step>`, restricted to the characters docker allows in names.
pub fn container_name(run_id: &str, step_id: &str) -> String {
    format!("kiln-{}-{}", safe_name(run_id), safe_name(step_id))
}

/// Replaces characters docker names and file names cannot hold.
fn safe_name(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() || cleaned.starts_with('.') || cleaned.starts_with('-') {
        format!("x{cleaned}")
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests;

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

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kiln_proto::pb::{Platform, RunRequest, RunStatus, StepStatus};
use kiln_proto::v1::{Assignment, ImagePushed, LogChunk, RunFinished, RunPlanned, StepUpdate};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::blobs::BlobStore;
use crate::cmdline::{self, CmdFlags};
use crate::executor::{BuildSpec, ContainerRuntime, ContainerSpec, RuntimeError};
use crate::logs::StepLog;
use crate::mask::Masker;
use crate::platform_gate::PlatformGate;
use crate::platforms::platform_string;
use crate::reports::{Report, ReportSender};
use crate::secrets::{self, SecretResolver};
use crate::task::{self, BuildStep, CmdStep, Plan, PushStep, Step, StepKind};

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
/// Pauses between the three attempts of one image push (as acb does).
const PUSH_RETRY_DELAYS: [Duration; 2] = [Duration::from_millis(250), Duration::from_millis(500)];

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

/// Why a task file could not be turned into a plan: the text for the run's log (its first line
/// is the run's reason) and the secret values resolved so far, to mask it with.
struct RenderFailure {
    text: String,
    secrets: BTreeMap<String, String>,
}

impl RenderFailure {
    fn new(text: impl Into<String>) -> RenderFailure {
        RenderFailure {
            text: text.into(),
            secrets: BTreeMap::new(),
        }
    }
}

/// Renders the task file with the run's variables, ACR's way: a pre-pass with no secret
/// values finds the declared secrets, the agent's resolver supplies their values, and the
/// real render uses them. Returns the plan and the secret values by id.
async fn render<R, B>(
    env: &RunnerEnv<R, B>,
    assignment: &Assignment,
    request: &RunRequest,
    platform: &Platform,
    workspace: &Path,
) -> Result<(Plan, BTreeMap<String, String>), RenderFailure> {
    let mut inputs = task::Inputs {
        run: task::RunVars {
            id: assignment.run_id.clone(),
            registry: request.registry.clone(),
            date_ms: assignment.created_at_ms,
            os: platform.os.clone(),
            architecture: platform.architecture.clone(),
            task_name: request.task_name.clone(),
            triggered_by: request.triggered_by.clone(),
            shared_volume: workspace.to_string_lossy().into_owned(),
            ..Default::default()
        },
        values_yaml: (!request.values_yaml.is_empty()).then(|| request.values_yaml.clone()),
        set: request
            .set
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect(),
        secrets: Default::default(),
    };
    let file_name = if request.task_file_name.is_empty() {
        "acb.yaml"
    } else {
        request.task_file_name.as_str()
    };
    // The pre-pass: like acb's, a task that is invalid without secret values fails here.
    let prepass =
        task::render(file_name, &request.task_yaml, &inputs).map_err(RenderFailure::new)?;
    if prepass.secrets.is_empty() {
        return Ok((prepass, BTreeMap::new()));
    }
    let declared: Vec<secrets::SecretRef> = prepass
        .secrets
        .iter()
        .map(|s| secrets::SecretRef {
            id: s.id.clone(),
            keyvault: s.keyvault.clone(),
            client_id: s.client_id.clone(),
        })
        .collect();
    let values = secrets::resolve_all(env.secrets.as_ref(), &declared)
        .await
        .map_err(|error| RenderFailure::new(error.to_string()))?;
    inputs.secrets = values.clone();
    match task::render(file_name, &request.task_yaml, &inputs) {
        Ok(plan) => Ok((plan, values)),
        Err(text) => Err(RenderFailure {
            text,
            secrets: values,
        }),
    }
}

/// Every file of every secret volume: (volume name, file name, decoded content).
type VolumeFiles = Vec<(String, String, Vec<u8>)>;

/// Decodes the base64 content of the plan's secret volumes.
fn decode_volumes(plan: &Plan) -> Result<VolumeFiles, String> {
    use base64::Engine as _;
    let mut files = Vec::new();
    for volume in &plan.volumes {
        if !is_plain_name(&volume.name) {
            return Err(format!("volume name {:?} cannot be used", volume.name));
        }
        for (name, encoded) in &volume.secret {
            if !is_plain_name(name) {
                return Err(format!(
                    "volume {}: file name {name:?} cannot be used",
                    volume.name
                ));
            }
            let compact: String = encoded
                .chars()
                .filter(|c| !c.is_ascii_whitespace())
                .collect();
            let content = base64::engine::general_purpose::STANDARD
                .decode(compact.as_bytes())
                .map_err(|_| {
                    format!(
                        "volume {}: file {name}: failed to decode Base64 value. please make sure value provided is Base64 encoded",
                        volume.name
                    )
                })?;
            files.push((volume.name.clone(), name.clone(), content));
        }
    }
    Ok(files)
}

/// A volume or file name that is one safe path component.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The masker of a run: its secret values and the contents of its secret-volume files (also
/// without a trailing newline, as `$(cat file)` prints them).
fn run_masker(secrets: &BTreeMap<String, String>, volume_files: &VolumeFiles) -> Masker {
    let mut values: Vec<Vec<u8>> = secrets.values().map(|v| v.as_bytes().to_vec()).collect();
    for (volume, file, content) in volume_files {
        if content.len() > MAX_MASKED_VOLUME_FILE {
            tracing::warn!(
                volume,
                file,
                "secret-volume file too large to be masked in logs"
            );
            continue;
        }
        values.push(content.clone());
        let mut trimmed = content.as_slice();
        while let Some(rest) = trimmed.strip_suffix(b"\n") {
            trimmed = rest.strip_suffix(b"\r").unwrap_or(rest);
        }
        values.push(trimmed.to_vec());
    }
    Masker::new(values)
}

/// Writes the secret volumes under `dir` (`<dir>/<volume>/<file>`, directories 0700, files
/// 0400) and returns each volume's directory.
async fn write_volumes(
    dir: &Path,
    files: &VolumeFiles,
) -> Result<HashMap<String, PathBuf>, String> {
    let mut dirs = HashMap::new();
    for (volume, name, content) in files {
        let volume_dir = dir.join(volume);
        if !dirs.contains_key(volume) {
            create_private_dir(&volume_dir)
                .await
                .map_err(|e| format!("cannot create secret volume {volume}: {e}"))?;
            dirs.insert(volume.clone(), volume_dir.clone());
        }
        write_private_file(&volume_dir.join(name), content)
            .await
            .map_err(|e| format!("cannot write secret volume {volume}, file {name}: {e}"))?;
    }
    Ok(dirs)
}

async fn create_private_dir(path: &Path) -> std::io::Result<()> {
    let mut builder = tokio::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    builder.mode(0o700);
    builder.create(path).await
}

async fn write_private_file(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o400);
    let mut file = options.open(path).await?;
    file.write_all(content).await?;
    file.flush().await
}

/// Removes the run's secret volumes (also after a failure or a cancel).
async fn remove_volumes(run_id: &str, dir: &Path) {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!(run_id, %error, "cannot remove the run's secret volumes"),
    }
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
    let (log_digest, log_size) = log.unwrap_or_default();
    env.reports
        .send(Report::Step(StepUpdate {
            run_id: run_id.to_string(),
            step_id: masker.mask(step_id),
            status: status as i32,
            has_exit_code: exit_code.is_some(),
            exit_code: exit_code.unwrap_or(0),
            reason: masker.mask(reason),
            log_digest,
            log_size,
        }))
        .await;
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
    Failed { step: String },
    Canceled,
    RunTimeout { secs: u64 },
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepState {
    Pending,
    Running,
    Done { ok: bool },
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
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn schedule<R: ContainerRuntime, B: BlobStore>(
    ctx: &Arc<RunCtx<R, B>>,
    plan: &Plan,
    run_timeout: Duration,
    cancel: &CancellationToken,
) -> (RunStatus, String) {
    let steps = &plan.steps;
    let index: HashMap<&str, usize> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    let mut states = vec![StepState::Pending; steps.len()];
    let mut tasks: JoinSet<(usize, StepEnd)> = JoinSet::new();
    let mut task_steps: HashMap<tokio::task::Id, usize> = HashMap::new();
    // Independent of `cancel`, so that the stop cause is recorded before steps see it.
    let stop_token = CancellationToken::new();
    let deadline = tokio::time::sleep(run_timeout);
    tokio::pin!(deadline);
    let mut first_failure: Option<(String, Fail)> = None;

    loop {
        if lock(&ctx.stop).is_none() {
            for i in 0..steps.len() {
                if states[i] != StepState::Pending {
                    continue;
                }
                let ready = steps[i]
                    .depends_on
                    .iter()
                    .all(|dep| match index.get(dep.as_str()) {
                        Some(&d) => states[d] == StepState::Done { ok: true },
                        None => true,
                    });
                if ready {
                    states[i] = StepState::Running;
                    let ctx = Arc::clone(ctx);
                    let step = steps[i].clone();
                    let token = stop_token.clone();
                    let id = tasks
                        .spawn(async move { (i, run_step(ctx, step, token).await) })
                        .id();
                    task_steps.insert(id, i);
                }
            }
        }
        if tasks.is_empty() {
            break;
        }
        let stopping = lock(&ctx.stop).is_some();
        tokio::select! {
            joined = tasks.join_next_with_id() => {
                let (i, end) = match joined {
                    Some(Ok((_, (i, end)))) => (i, end),
                    Some(Err(error)) => {
                        let Some(i) = task_steps.get(&error.id()).copied() else { continue };
                        let fail = Fail { status: StepStatus::Error, exit_code: None, reason: format!("agent error: {error}") };
                        ctx.send_step(&steps[i].id, StepStatus::Error, None, &fail.reason, None).await;
                        (i, StepEnd { ok: false, failure: Some(fail) })
                    }
                    None => break,
                };
                states[i] = StepState::Done { ok: end.ok };
                if let Some(fail) = end.failure {
                    let mut stop = lock(&ctx.stop);
                    if stop.is_none() {
                        *stop = Some(StopCause::Failed { step: steps[i].id.clone() });
                        first_failure = Some((steps[i].id.clone(), fail));
                        stop_token.cancel();
                    }
                }
            }
            _ = cancel.cancelled(), if !stopping => {
                *lock(&ctx.stop) = Some(StopCause::Canceled);
                stop_token.cancel();
            }
            _ = &mut deadline, if !stopping => {
                *lock(&ctx.stop) = Some(StopCause::RunTimeout { secs: run_timeout.as_secs() });
                stop_token.cancel();
            }
        }
    }

    let stop = lock(&ctx.stop).clone();
    let unstarted: Vec<Step> = steps
        .iter()
        .zip(&states)
        .filter(|(_, state)| **state == StepState::Pending)
        .map(|(step, _)| step.clone())
        .collect();
    match &stop {
        Some(StopCause::Canceled) => {
            ctx.finish_unstarted(&unstarted, StepStatus::Canceled, "run canceled")
                .await
        }
        _ => {
            ctx.finish_unstarted(&unstarted, StepStatus::Skipped, "")
                .await
        }
    }
    match (stop, first_failure) {
        (None, _) => (RunStatus::Succeeded, String::new()),
        (Some(StopCause::Canceled), _) => (RunStatus::Canceled, "run canceled".to_string()),
        (Some(StopCause::RunTimeout { secs }), _) => {
            (RunStatus::Timeout, format!("run timed out after {secs}s"))
        }
        (Some(StopCause::Failed { .. }), Some((step, fail))) => {
            let status = if fail.status == StepStatus::Timeout {
                RunStatus::Timeout
            } else {
                RunStatus::Failed
            };
            (status, format!("step {step} failed: {}", fail.reason))
        }
        (Some(StopCause::Failed { step }), None) => {
            (RunStatus::Failed, format!("step {step} failed"))
        }
    }
}

/// Runs one step from its start delay to its terminal report.
async fn run_step<R: ContainerRuntime, B: BlobStore>(
    ctx: Arc<RunCtx<R, B>>,
    step: Step,
    token: CancellationToken,
) -> StepEnd {
    if step.start_delay > 0 {
        let delay = tokio::time::sleep(Duration::from_secs(step.start_delay));
        let stopped = tokio::select! {
            _ = delay => false,
            _ = token.cancelled() => true,
        };
        if stopped {
            let fail = ctx.stopped_fail();
            ctx.send_step(&step.id, fail.status, None, &fail.reason, None)
                .await;
            return StepEnd {
                ok: false,
                failure: None,
            };
        }
    }
    let started = Instant::now();
    ctx.send_step(&step.id, StepStatus::Running, None, "", None)
        .await;
    let log_path = ctx
        .run_dir
        .join("logs")
        .join(format!("{}.log", safe_name(&step.id)));
    let mut log = match StepLog::create(
        &log_path,
        &ctx.run_id,
        &ctx.masker.mask(&step.id),
        ctx.env.reports.clone(),
        ctx.masker.clone(),
    )
    .await
    {
        Ok(log) => log,
        Err(error) => {
            let reason = format!("cannot create the step log: {error}");
            ctx.send_step(&step.id, StepStatus::Error, None, &reason, None)
                .await;
            let fail = Fail {
                status: StepStatus::Error,
                exit_code: None,
                reason,
            };
            return StepEnd {
                ok: false,
                failure: Some(fail),
            };
        }
    };
    let network = ctx.step_network(&step);
    let working_dir = if step.disable_working_directory_override {
        String::new()
    } else {
        step.working_directory.clone()
    };
    log.line(&format!(
        "Executing step ID: {}. Timeout(sec): {}, Working directory: '{}', Network: '{}'",
        step.id, step.timeout, working_dir, network
    ))
    .await;

    let result = match &step.kind {
        StepKind::Cmd(cmd) => cmd_step(&ctx, &step, cmd, &mut log, &token).await,
        StepKind::Build(build) => build_step(&ctx, &step, build, &mut log, &token).await,
        StepKind::Push(push) => push_step(&ctx, &step, push, &mut log, &token).await,
    };
    let stopped = token.is_cancelled();
    let (status, exit_code, reason, end) = match result {
        Ok(code) => (
            StepStatus::Succeeded,
            code,
            String::new(),
            StepEnd {
                ok: true,
                failure: None,
            },
        ),
        Err(fail)
            if stopped
                && matches!(fail.status, StepStatus::Canceled | StepStatus::Timeout)
                && ctx.stopped_by_others(&step.id) =>
        {
            (
                fail.status,
                fail.exit_code,
                fail.reason,
                StepEnd {
                    ok: false,
                    failure: None,
                },
            )
        }
        Err(fail) if step.ignore_errors => {
            log.line(&format!(
                "Step ID: {} encountered an error: {}, but is set to ignore errors. Continuing...",
                step.id, fail.reason
            ))
            .await;
            let reason = format!("error ignored: {}", fail.reason);
            (
                StepStatus::Succeeded,
                fail.exit_code,
                reason,
                StepEnd {
                    ok: true,
                    failure: None,
                },
            )
        }
        Err(fail) => {
            log.line(&format!("Step ID: {} failed: {}", step.id, fail.reason))
                .await;
            (
                fail.status,
                fail.exit_code,
                fail.reason.clone(),
                StepEnd {
                    ok: false,
                    failure: Some(fail),
                },
            )
        }
    };
    log.line(&format!(
        "Step ID: {} marked as {} (elapsed time in seconds: {:.6})",
        step.id,
        status_word(status),
        started.elapsed().as_secs_f64()
    ))
    .await;
    let (reason, uploaded) = match log.finish().await {
        Ok(file) => match ctx.env.blobs.upload_log(&ctx.registry, &file.path).await {
            Ok(uploaded) => (reason, Some(uploaded)),
            Err(error) => (
                join_reason(&reason, &format!("log upload failed: {error}")),
                None,
            ),
        },
        Err(error) => (
            join_reason(&reason, &format!("log capture failed: {error}")),
            None,
        ),
    };
    ctx.send_step(&step.id, status, exit_code, &reason, uploaded)
        .await;
    end
}

fn join_reason(reason: &str, extra: &str) -> String {
    if reason.is_empty() {
        extra.to_string()
    } else {
        format!("{reason}; {extra}")
    }
}

fn status_word(status: StepStatus) -> &'static str {
    match status {
        StepStatus::Succeeded => "successful",
        StepStatus::Failed => "failed",
        StepStatus::Timeout => "timed out",
        StepStatus::Canceled => "canceled",
        StepStatus::Skipped => "skipped",
        _ => "errored",
    }
}

async fn cmd_step<R: ContainerRuntime, B: BlobStore>(
    ctx: &Arc<RunCtx<R, B>>,
    step: &Step,
    cmd: &CmdStep,
    log: &mut StepLog,
    token: &CancellationToken,
) -> Result<Option<i32>, Fail> {
    let invocation = task::parse_cmd(&cmd.cmd).map_err(|e| Fail::failed(None, e))?;
    let flags =
        cmdline::parse_docker_flags(&invocation.docker_flags).map_err(|e| Fail::failed(None, e))?;
    let mut spec = ctx
        .container_spec(step, &invocation.image, invocation.args.clone(), &flags)
        .map_err(|e| Fail::failed(None, e))?;
    let platform = flags
        .platform
        .clone()
        .unwrap_or_else(|| ctx.platform.clone());
    let pass = ctx.env.platform_gate.enter(&platform);
    let ensure = async {
        let _pass = pass.await;
        // `cmdDownloadRetries` extra attempts, `cmdDownloadRetryDelay` seconds apart.
        let mut attempt = 0;
        loop {
            let result = ctx
                .env
                .runtime
                .ensure_image(&spec.image, Some(&platform), step.pull, log)
                .await;
            match result {
                Err(error) if attempt < step.cmd_download_retries => {
                    attempt += 1;
                    log.line(&format!(
                        "{error}; waiting {} seconds before pulling again (retry {attempt} of {})",
                        step.cmd_download_retry_delay, step.cmd_download_retries
                    ))
                    .await;
                    tokio::time::sleep(Duration::from_secs(step.cmd_download_retry_delay)).await;
                }
                other => break other,
            }
        }
    };
    match cancellable(ensure, token).await {
        None => return Err(ctx.stopped_fail()),
        Some(Err(error)) => return Err(Fail::runtime(&error)),
        Some(Ok(())) => {}
    }
    if ctx.emulated || flags.platform.is_some() {
        spec.platform = Some(platform);
    }
    let base_name = container_name(&ctx.resource_key, &step.id);
    if step.detach {
        spec.name = base_name;
        ctx.track(&spec.name, step.keep);
        log.line(&format!("Launching container with name: {}", spec.name))
            .await;
        let start = ctx.env.runtime.start_container(&spec);
        return match timed(start, step.timeout, token, ctx).await {
            Ok(Ok(())) => Ok(None),
            Ok(Err(error)) => Err(Fail::runtime(&error)),
            Err(fail) => Err(fail),
        };
    }
    let attempt = CmdAttempt {
        ctx: Arc::clone(ctx),
        spec,
        base_name,
        keep: step.keep,
        names: Mutex::new(Vec::new()),
    };
    let result = timed(retry_loop(step, log, &attempt), step.timeout, token, ctx).await;
    if result.is_err() {
        // Timed out or stopped mid-attempt: the attempt's container may still be running.
        let names = lock(&attempt.names).clone();
        for name in names {
            ctx.remove_container(&name).await;
        }
    }
    match result {
        Ok(Ok(())) => Ok(Some(0)),
        Ok(Err(fail)) | Err(fail) => Err(fail),
    }
}

/// One attempt of a step body, for `retry_loop`.
trait Attempt: Sync {
    /// Runs attempt number `n` (counting every repetition and retry from 0).
    fn run<'a>(
        &'a self,
        n: usize,
        log: &'a mut StepLog,
    ) -> impl Future<Output = Result<(), Fail>> + Send + 'a;
}

struct CmdAttempt<R, B> {
    ctx: Arc<RunCtx<R, B>>,
    spec: ContainerSpec,
    base_name: String,
    keep: bool,
    /// Every container name used so far.
    names: Mutex<Vec<String>>,
}

impl<R: ContainerRuntime, B: BlobStore> Attempt for CmdAttempt<R, B> {
    async fn run(&self, n: usize, log: &mut StepLog) -> Result<(), Fail> {
        let mut spec = self.spec.clone();
        spec.name = if n == 0 {
            self.base_name.clone()
        } else {
            format!("{}-{n}", self.base_name)
        };
        lock(&self.names).push(spec.name.clone());
        self.ctx.track(&spec.name, self.keep);
        log.line(&format!("Launching container with name: {}", spec.name))
            .await;
        let result = self.ctx.env.runtime.run_container(&spec, log).await;
        if !self.keep {
            self.ctx.remove_container(&spec.name).await;
        }
        match result {
            Ok(0) => {
                log.line(&format!("Successfully executed container: {}", spec.name))
                    .await;
                Ok(())
            }
            Ok(code) => Err(Fail::failed(
                Some(clamp_code(code)),
                format!("exit code {code}"),
            )),
            Err(error) => Err(Fail::runtime(&error)),
        }
    }
}

struct BuildAttempt<R, B> {
    ctx: Arc<RunCtx<R, B>>,
    spec: BuildSpec,
}

impl<R: ContainerRuntime, B: BlobStore> Attempt for BuildAttempt<R, B> {
    async fn run(&self, _n: usize, log: &mut StepLog) -> Result<(), Fail> {
        let platform = self.spec.platform.as_deref().unwrap_or(&self.ctx.platform);
        let _pass = self.ctx.env.platform_gate.enter(platform).await;
        self.ctx
            .env
            .runtime
            .build_image(&self.spec, log)
            .await
            .map_err(|error| Fail::runtime(&error))
    }
}

async fn build_step<R: ContainerRuntime, B: BlobStore>(
    ctx: &Arc<RunCtx<R, B>>,
    step: &Step,
    build: &BuildStep,
    log: &mut StepLog,
    token: &CancellationToken,
) -> Result<Option<i32>, Fail> {
    let context = if build.context.is_empty() {
        "."
    } else {
        build.context.as_str()
    };
    if is_remote_context(context) {
        return Err(Fail::failed(
            None,
            format!("remote build contexts are not supported: {context}"),
        ));
    }
    let working_dir =
        if step.working_directory.is_empty() || step.disable_working_directory_override {
            WORKSPACE_MOUNT.to_string()
        } else {
            step.working_directory.clone()
        };
    let context_dir = ctx
        .host_path(&working_dir, context)
        .map_err(|e| Fail::failed(None, e))?;
    let dockerfile = if build.dockerfile.is_empty() {
        None
    } else {
        Some(
            ctx.host_path(
                &working_dir,
                build.dockerfile.trim_matches(|c| c == '"' || c == '\''),
            )
            .map_err(|e| Fail::failed(None, e))?,
        )
    };
    let spec = BuildSpec {
        context_dir,
        dockerfile,
        tags: build.tags.clone(),
        build_args: resolve_build_args(&build.build_args, &step.env),
        target: (!build.target.is_empty()).then(|| build.target.clone()),
        no_cache: build.no_cache,
        pull: build.pull,
        platform: Some(if build.platform.is_empty() {
            ctx.platform.clone()
        } else {
            build.platform.clone()
        }),
        labels: build.labels.clone(),
        network: None,
    };
    let attempt = BuildAttempt {
        ctx: Arc::clone(ctx),
        spec,
    };
    let attempts = retry_loop(step, log, &attempt);
    match timed(attempts, step.timeout, token, ctx).await {
        Ok(Ok(())) => Ok(Some(0)),
        Ok(Err(fail)) | Err(fail) => Err(fail),
    }
}

async fn push_step<R: ContainerRuntime, B: BlobStore>(
    ctx: &Arc<RunCtx<R, B>>,
    step: &Step,
    push: &PushStep,
    log: &mut StepLog,
    token: &CancellationToken,
) -> Result<Option<i32>, Fail> {
    let pushes = async {
        for image in &push.images {
            let mut attempt = 0usize;
            let digest = loop {
                attempt += 1;
                log.line(&format!("Pushing image: {image}, attempt {attempt}"))
                    .await;
                match ctx.env.runtime.push_image(image, log).await {
                    Ok(digest) => break digest,
                    Err(error) => {
                        log.line(&error.to_string()).await;
                        match PUSH_RETRY_DELAYS.get(attempt - 1) {
                            Some(delay) => tokio::time::sleep(*delay).await,
                            None => return Err(Fail::runtime(&error)),
                        }
                    }
                }
            };
            log.line(&format!("Successfully pushed image: {image}"))
                .await;
            ctx.env
                .reports
                .send(Report::Image(ImagePushed {
                    run_id: ctx.run_id.clone(),
                    step_id: ctx.masker.mask(&step.id),
                    image: ctx.masker.mask(image),
                    digest,
                }))
                .await;
        }
        Ok(())
    };
    match timed(pushes, step.timeout, token, ctx).await {
        Ok(Ok(())) => Ok(Some(0)),
        Ok(Err(fail)) | Err(fail) => Err(fail),
    }
}

/// `repeat + 1` repetitions, each with up to `retries` extra attempts `retryDelay` apart; fails
/// if any repetition ultimately failed (reasons joined).
async fn retry_loop(step: &Step, log: &mut StepLog, attempt: &impl Attempt) -> Result<(), Fail> {
    let mut failures: Vec<Fail> = Vec::new();
    let mut n = 0usize;
    for _ in 0..=step.repeat {
        let mut last = None;
        for try_idx in 0..=step.retries {
            let watch = !step.retry_on_errors.is_empty() && try_idx < step.retries;
            if watch {
                log.start_capture();
            }
            let result = attempt.run(n, log).await;
            n += 1;
            let output = if watch {
                log.take_capture()
            } else {
                Vec::new()
            };
            let retryable = match &result {
                Err(fail) if watch => {
                    matches_retry_errors(&step.retry_on_errors, &output, &fail.reason)
                }
                _ => true,
            };
            match result {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(fail) => last = Some(fail),
            }
            if !retryable {
                log.line(&format!(
                    "Step ID: {} failed with an error that matches none of its retryOnErrors; not retrying",
                    step.id
                ))
                .await;
                break;
            }
            if try_idx < step.retries {
                log.line(&format!(
                    "Container failed during run: {}, waiting {} seconds before retrying...",
                    step.id, step.retry_delay
                ))
                .await;
                tokio::time::sleep(Duration::from_secs(step.retry_delay)).await;
            }
        }
        if let Some(fail) = last {
            failures.push(fail);
        }
    }
    match failures.len() {
        0 => Ok(()),
        1 => Err(failures.remove(0)),
        _ => {
            let reason = failures
                .iter()
                .map(|f| f.reason.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let last = failures.pop().unwrap_or_else(|| Fail::failed(None, ""));
            Err(Fail { reason, ..last })
        }
    }
}

/// Whether a failed attempt's output (or its error) contains one of `patterns` (ACR's
/// `retryOnErrors`: plain substrings).
fn matches_retry_errors(patterns: &[String], output: &[u8], reason: &str) -> bool {
    let output = String::from_utf8_lossy(output);
    patterns
        .iter()
        .filter(|p| !p.is_empty())
        .any(|p| output.contains(p.as_str()) || reason.contains(p.as_str()))
}

/// Runs `fut` under the step timeout; `Err` when the timeout or a stop came first.
async fn timed<T, R: ContainerRuntime, B: BlobStore>(
    fut: impl Future<Output = T>,
    timeout_secs: u64,
    token: &CancellationToken,
    ctx: &Arc<RunCtx<R, B>>,
) -> Result<T, Fail> {
    let limit = Duration::from_secs(timeout_secs.max(1));
    tokio::select! {
        result = fut => Ok(result),
        _ = tokio::time::sleep(limit) => Err(Fail {
            status: StepStatus::Timeout,
            exit_code: None,
            reason: format!("timed out after {timeout_secs}s"),
        }),
        _ = token.cancelled() => Err(ctx.stopped_fail()),
    }
}

async fn cancellable<T>(fut: impl Future<Output = T>, token: &CancellationToken) -> Option<T> {
    tokio::select! {
        result = fut => Some(result),
        _ = token.cancelled() => None,
    }
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
            Some(StopCause::Canceled) | None => (StepStatus::Canceled, "run canceled".to_string()),
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

    /// The docker network a step joins, and whether it is one of the run's own networks.
    fn resolve_network(&self, requested: &str) -> (String, bool) {
        if requested.is_empty() || requested == self.plan_default_network {
            return (self.default_network.clone(), true);
        }
        match self.networks.get(requested) {
            Some((docker_name, created)) => (docker_name.clone(), *created),
            None => (requested.to_string(), false),
        }
    }

    fn step_network(&self, step: &Step) -> String {
        self.resolve_network(&step.network).0
    }

    fn container_spec(
        &self,
        step: &Step,
        image: &str,
        args: Vec<String>,
        flags: &CmdFlags,
    ) -> Result<ContainerSpec, String> {
        let (network, own) =
            self.resolve_network(flags.network.as_deref().unwrap_or(&step.network));
        let working_dir = if let Some(wd) = &flags.workdir {
            Some(wd.clone())
        } else if step.disable_working_directory_override {
            None
        } else if step.working_directory.is_empty() {
            Some(WORKSPACE_MOUNT.to_string())
        } else {
            Some(step.working_directory.clone())
        };
        // ACR sets HOME before the step's own variables, so a step may override it.
        let mut env = vec![format!("HOME={HOME_MOUNT}")];
        env.extend(step.env.iter().cloned());
        env.extend(flags.env.iter().cloned());
        let mut ports = step.ports.clone();
        ports.extend(flags.ports.iter().cloned());
        let mut expose = step.expose.clone();
        expose.extend(flags.expose.iter().cloned());
        let entrypoint = flags
            .entrypoint
            .clone()
            .or_else(|| (!step.entry_point.is_empty()).then(|| step.entry_point.clone()))
            .map(|e| vec![e]);
        let user = flags
            .user
            .clone()
            .or_else(|| (!step.user.is_empty()).then(|| step.user.clone()));
        let mut binds = vec![
            format!("{}:{}", self.workspace.display(), WORKSPACE_MOUNT),
            format!("{}:{}", self.home.display(), HOME_MOUNT),
        ];
        let user_targets: Vec<&str> = flags
            .volumes
            .iter()
            .filter_map(|v| v.split(':').nth(1))
            .collect();
        if let Some(socket) = &self.env.engine_socket {
            if !user_targets.contains(&DOCKER_SOCKET_MOUNT) {
                binds.push(format!("{}:{}", socket.display(), DOCKER_SOCKET_MOUNT));
            }
        }
        for mount in &step.volume_mounts {
            let dir = self
                .volume_dirs
                .get(&mount.name)
                .ok_or_else(|| format!("volume mount {}: no volume of that name", mount.name))?;
            if !mount.mount_path.starts_with('/') || mount.mount_path.contains(':') {
                return Err(format!(
                    "volume mount {}: mountPath {:?} must be an absolute path without ':'",
                    mount.name, mount.mount_path
                ));
            }
            binds.push(format!("{}:{}:ro", dir.display(), mount.mount_path));
        }
        binds.extend(flags.volumes.iter().cloned());
        Ok(ContainerSpec {
            name: container_name(&self.resource_key, &step.id),
            image: image.to_string(),
            args,
            entrypoint,
            env,
            working_dir,
            user,
            network_aliases: if own && network != "host" && network != "none" {
                vec![step.id.clone()]
            } else {
                Vec::new()
            },
            network: Some(network),
            binds,
            ports,
            expose,
            privileged: step.privileged || flags.privileged,
            isolation: (!step.isolation.is_empty()).then(|| step.isolation.clone()),
            platform: None,
            tty: flags.tty,
        })
    }

    /// Maps `rel` (relative to the container directory `base`, or absolute) to the workspace
    /// on the host; only paths inside `/workspace` exist on the host.
    fn host_path(&self, base: &str, rel: &str) -> Result<PathBuf, String> {
        let joined = if rel.starts_with('/') {
            rel.to_string()
        } else {
            format!("{base}/{rel}")
        };
        let normalized = normalize_path(&joined);
        let inside = normalized
            .strip_prefix(WORKSPACE_MOUNT)
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
            .ok_or_else(|| format!("{rel} is outside {WORKSPACE_MOUNT}"))?;
        Ok(self.workspace.join(inside.trim_start_matches('/')))
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

/// Lexically cleans an absolute path (`/a/./b/../c` → `/a/c`); `..` never climbs above `/`.
fn normalize_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}

fn is_remote_context(context: &str) -> bool {
    context.contains("://") || context.starts_with("git@") || context.starts_with("github.com/")
}

/// `KEY=value` build args; a bare `KEY` takes its value from the step's env (and is dropped
/// when the step has none, as docker does for unset variables).
fn resolve_build_args(args: &[String], env: &[String]) -> Vec<String> {
    args.iter()
        .filter_map(|arg| {
            if arg.contains('=') {
                return Some(arg.clone());
            }
            env.iter()
                .rev()
                .find(|e| e.split_once('=').is_some_and(|(k, _)| k == arg))
                .cloned()
        })
        .collect()
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

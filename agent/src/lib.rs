//! kiln's build agent: connects to the coordinator, advertises the platforms it can run,
//! receives runs and executes their task files on a Docker Engine, streaming logs and results.
//!
//! Code map: `session` (the gRPC session, the only module that knows tonic), `runner` (one
//! run's ACR semantics), `executor` (`ContainerRuntime`: `docker` on bollard, `fake` for
//! tests), `logs` (per-step capture), `reports` (the report channel), `spool` (reports kept
//! on disk until the coordinator acknowledges them),
//! `blobs` (contexts and logs in the registry), `platforms` (native and QEMU platforms),
//! `cmdline` (docker flags inside `cmd`), `secrets` (resolving declared secrets), `mask`
//! (masking their values in everything reported), `config`.

pub mod blobs;
pub mod cmdline;
pub mod config;
pub mod executor;
pub mod live_tail;
pub mod logs;
pub mod mask;
pub mod platform_gate;
pub mod platforms;
pub mod prune;
pub mod reports;
pub mod runner;
pub mod secrets;
mod session;
pub mod spool;
pub mod task;

use std::sync::Arc;

use kiln_proto::v1::AgentPlatform;
use tokio_util::sync::CancellationToken;

use crate::blobs::{BlobStore, RegistryBlobStore};
pub use crate::config::AgentConfig;
use crate::executor::docker::DockerRuntime;
use crate::executor::ContainerRuntime;
use crate::runner::RunnerEnv;
use crate::secrets::{FileSecretStore, NoSecretStore, SecretResolver};

/// Reports buffered between runners and the session; a full buffer makes runners wait.
const REPORT_BUFFER: usize = 256;

/// Errors that stop the agent from starting.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot prepare the work directory {path}: {source}")]
    WorkDir {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    DuplicateId(String),
    #[error("cannot use the report spool under {path}: {source}")]
    Spool {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot use the Docker Engine at {host}: {source}")]
    Docker {
        host: String,
        source: executor::RuntimeError,
    },
}

/// Runs an agent on the Docker Engine of `config.docker_host` until `shutdown` is cancelled;
/// active runs are then canceled and cleaned up before it returns.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    prepare_work_dir(&config).await?;
    let docker_error = |source| AgentError::Docker {
        host: config.docker_host.clone(),
        source,
    };
    let runtime = DockerRuntime::connect(&config.docker_host, &config.work_dir.join("scratch"))
        .await
        .map_err(docker_error)?
        .owned_by(&config.agent_id);
    // Another live process with this id may be using the same engine: its containers are not
    // leftovers. Refuse to start rather than remove them.
    session::check_id_is_free(&config)
        .await
        .map_err(AgentError::DuplicateId)?;
    let removed = runtime.remove_leftovers().await.map_err(docker_error)?;
    if removed > 0 {
        tracing::warn!(
            removed,
            "removed containers and networks a previous run of this agent left behind"
        );
    }
    let native = runtime.engine_platform().await.map_err(docker_error)?;
    let platforms = platforms::detect(&native, &config.binfmt_dir);
    tracing::info!(
        agent_id = config.agent_id,
        platforms = ?platforms.iter().filter_map(|p| p.platform.as_ref().map(platforms::platform_string)).collect::<Vec<_>>(),
        "agent starting"
    );
    // Run directories exist only while their run executes (the runner removes them, a restart
    // clears them); leftovers are recognised by age (`prune::LONGEST_RUN`), so no active set
    // is passed.
    let prune_stop = shutdown.child_token();
    let pruner = tokio::spawn(prune::prune_loop(
        Arc::new(runtime.clone()),
        config.work_dir.clone(),
        config.prune.clone(),
        Vec::new,
        prune_stop.clone(),
    ));
    let result = run_with(config, runtime, RegistryBlobStore, platforms, shutdown).await;
    prune_stop.cancel();
    let _ = pruner.await;
    result
}

/// Runs an agent on any runtime and blob store (used by tests with the fake runtime).
pub async fn run_with<R: ContainerRuntime, B: BlobStore>(
    config: AgentConfig,
    runtime: R,
    blobs: B,
    platforms: Vec<AgentPlatform>,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    prepare_work_dir(&config).await?;
    let (reports, reports_rx) = reports::report_channel(REPORT_BUFFER);
    let secrets: Arc<dyn SecretResolver> = match &config.secrets_dir {
        Some(dir) => Arc::new(FileSecretStore::new(dir)),
        None => Arc::new(NoSecretStore),
    };
    let env = Arc::new(RunnerEnv {
        runtime,
        blobs,
        reports,
        work_dir: config.work_dir.clone(),
        name_scope: config.agent_id.clone(),
        platform_gate: Default::default(),
        secrets,
        engine_socket: runner::unix_socket_path(&config.docker_host),
    });
    let spool_dir = config.work_dir.join("spool");
    session::run(config, platforms, env, reports_rx, shutdown)
        .await
        .map_err(|source| AgentError::Spool {
            path: spool_dir.display().to_string(),
            source,
        })
}

/// Creates the work directory and removes run directories a previous process left behind.
async fn prepare_work_dir(config: &AgentConfig) -> Result<(), AgentError> {
    let runs = config.work_dir.join("runs");
    let error = |source| AgentError::WorkDir {
        path: runs.display().to_string(),
        source,
    };
    match tokio::fs::remove_dir_all(&runs).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(error(e)),
    }
    tokio::fs::create_dir_all(&runs).await.map_err(error)
}

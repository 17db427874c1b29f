//! The container runtime the runner drives, in the agent's own vocabulary.
//!
//! `ContainerRuntime` is the seam between ACR step semantics (`runner.rs`) and a container
//! engine: `docker.rs` implements it on a real Docker Engine, `fake.rs` is a scripted
//! implementation for unit tests. Every operation is cancelled by dropping its future; the
//! runner then removes the step's container explicitly, so implementations need no
//! cancellation plumbing of their own.

pub mod docker;
pub mod fake;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use crate::logs::StepLog;

/// The operating system and architecture of an engine, in OCI terms (`linux`, `amd64`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnginePlatform {
    pub os: String,
    pub architecture: String,
    pub variant: String,
}

/// Everything needed to create one step container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerSpec {
    /// Unique container name (`kiln-<run>-<step>`).
    pub name: String,
    pub image: String,
    /// Arguments after the image (the container command).
    pub args: Vec<String>,
    /// Replaces the image's entrypoint when set.
    pub entrypoint: Option<Vec<String>>,
    /// `KEY=value` entries.
    pub env: Vec<String>,
    /// Container working directory; `None` keeps the image's `WORKDIR`.
    pub working_dir: Option<String>,
    pub user: Option<String>,
    /// Network to attach to; `None` uses the engine's default bridge.
    pub network: Option<String>,
    /// Names the container is reachable by on `network`.
    pub network_aliases: Vec<String>,
    /// Bind mounts as `host-path:container-path`.
    pub binds: Vec<String>,
    /// Published ports in `docker run -p` syntax.
    pub ports: Vec<String>,
    /// Exposed ports in `docker run --expose` syntax.
    pub expose: Vec<String>,
    pub privileged: bool,
    pub isolation: Option<String>,
    /// `os/arch[/variant]` to create the container for (set when running emulated).
    pub platform: Option<String>,
    /// Allocates a pseudo-terminal (`-t` in a `cmd`).
    pub tty: bool,
    /// CPU limit in millicores (the run's `cpu_millis`); `None`: no limit.
    pub cpu_millis: Option<u32>,
    /// Memory limit in bytes (the run's `memory_bytes`); `None`: no limit.
    pub memory_bytes: Option<u64>,
}

/// Everything needed for one classic-builder image build.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildSpec {
    /// Host directory sent as the build context.
    pub context_dir: PathBuf,
    /// Dockerfile on the host; `None` means `Dockerfile` inside the context.
    pub dockerfile: Option<PathBuf>,
    pub tags: Vec<String>,
    /// `KEY=value` pairs; a bare `KEY` takes its value from `env`.
    pub build_args: Vec<String>,
    pub target: Option<String>,
    pub no_cache: bool,
    pub pull: bool,
    /// `os/arch[/variant]` to build for.
    pub platform: Option<String>,
    pub labels: Vec<String>,
    /// Network for `RUN` instructions; `None` is the engine's default.
    pub network: Option<String>,
    /// CPU limit of the build's containers in millicores; `None`: no limit.
    pub cpu_millis: Option<u32>,
    /// Memory limit of the build's containers in bytes; `None`: no limit.
    pub memory_bytes: Option<u64>,
}

/// The CFS period the engine's build API gets with a CPU quota (100 ms, docker's default).
pub const CPU_PERIOD_MICROS: u32 = 100_000;

/// `nano_cpus` for a limit in millicores.
pub fn nano_cpus(cpu_millis: u32) -> i64 {
    i64::from(cpu_millis) * 1_000_000
}

/// The CFS quota (microseconds per `CPU_PERIOD_MICROS`) for a limit in millicores.
pub fn cpu_quota_micros(cpu_millis: u32) -> u64 {
    u64::from(cpu_millis) * u64::from(CPU_PERIOD_MICROS) / 1000
}

/// Which images an image prune may remove. The engine never removes an image a container
/// (running or stopped) uses, whatever the filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImagePrune {
    /// Only untagged images; `false` removes every unused image that passes the other filters.
    pub dangling_only: bool,
    /// Only images created at least this long ago (by the engine's clock).
    pub older_than: Duration,
    /// Only images carrying every one of these labels (`key` or `key=value`); empty: any.
    pub labels: Vec<String>,
}

/// What one prune removed, as the engine reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// What the engine reports deleted: image ids and the ids of their deleted layers, or
    /// build-cache record ids.
    pub removed: Vec<String>,
    /// Disk space freed.
    pub reclaimed_bytes: u64,
}

/// Why a runtime operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    /// The image could not be found or pulled.
    #[error("image {image}: {message}")]
    Image { image: String, message: String },
    /// A build instruction failed; `exit_code` is the failing command's code when known.
    #[error("{message}")]
    Build { message: String, exit_code: i32 },
    /// The registry refused a push.
    #[error("push of {image} failed: {message}")]
    Push { image: String, message: String },
    /// The step's own input cannot be run (bad flags, bad paths, …).
    #[error("{0}")]
    Invalid(String),
    /// The engine failed or could not be reached.
    #[error("docker engine: {0}")]
    Engine(String),
}

impl RuntimeError {
    /// The exit code to report for this error (1 when no better one is known).
    pub fn exit_code(&self) -> i32 {
        match self {
            RuntimeError::Build { exit_code, .. } => *exit_code,
            _ => 1,
        }
    }
}

/// A container engine as the runner needs it.
pub trait ContainerRuntime: Send + Sync + 'static {
    /// The engine's own platform.
    fn engine_platform(&self) -> impl Future<Output = Result<EnginePlatform, RuntimeError>> + Send;

    /// Creates a bridge network (idempotent: an existing network of that name is fine).
    fn create_network(&self, name: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Removes a network; a missing one is fine.
    fn remove_network(&self, name: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Makes sure `image` is present for `platform`, pulling it when missing or when
    /// `always_pull` is set. Pull progress goes to `log`.
    fn ensure_image(
        &self,
        image: &str,
        platform: Option<&str>,
        always_pull: bool,
        log: &mut StepLog,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Creates and starts a container, streams its output into `log` until it exits, and
    /// returns its exit code. The container is left in place (see `remove_container`).
    fn run_container(
        &self,
        spec: &ContainerSpec,
        log: &mut StepLog,
    ) -> impl Future<Output = Result<i64, RuntimeError>> + Send;

    /// Creates and starts a container and returns as soon as it runs (`detach`).
    fn start_container(
        &self,
        spec: &ContainerSpec,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Kills and removes a container; a missing one is fine.
    fn remove_container(&self, name: &str)
        -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Builds an image, streaming the builder's output into `log`.
    fn build_image(
        &self,
        spec: &BuildSpec,
        log: &mut StepLog,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Pushes `image` (a full reference with tag) and returns the pushed manifest digest.
    fn push_image(
        &self,
        image: &str,
        log: &mut StepLog,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send;

    /// Removes the unused images `prune` selects.
    fn prune_images(
        &self,
        prune: &ImagePrune,
    ) -> impl Future<Output = Result<PruneReport, RuntimeError>> + Send;

    /// Removes build-cache records unused for at least `unused_for`, keeping at least
    /// `keep_bytes` of cache when set.
    fn prune_build_cache(
        &self,
        unused_for: Duration,
        keep_bytes: Option<u64>,
    ) -> impl Future<Output = Result<PruneReport, RuntimeError>> + Send;
}

/// A duration as the engine's `until` filters take it (a Go duration, relative to the
/// engine's clock, so the agent's and the engine's clocks need not agree).
pub fn engine_duration(duration: Duration) -> String {
    format!("{}s", duration.as_secs())
}

/// Splits `registry/repo:tag` (or `repo@digest`) into the repository and the tag or digest;
/// a reference without either gets `latest`.
pub fn split_image_reference(image: &str) -> (String, String) {
    if let Some((repo, digest)) = image.split_once('@') {
        return (repo.to_string(), digest.to_string());
    }
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(colon) => {
            let at = last_slash + colon;
            (image[..at].to_string(), image[at + 1..].to_string())
        }
        None => (image.to_string(), "latest".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_limits_in_engine_units() {
        assert_eq!(nano_cpus(1500), 1_500_000_000);
        assert_eq!(cpu_quota_micros(1500), 150_000);
        assert_eq!(cpu_quota_micros(250), 25_000);
        assert_eq!(nano_cpus(u32::MAX), i64::from(u32::MAX) * 1_000_000);
    }

    #[test]
    fn durations_for_engine_filters() {
        assert_eq!(engine_duration(Duration::from_secs(24 * 3600)), "86400s");
        assert_eq!(engine_duration(Duration::from_millis(1500)), "1s");
        assert_eq!(engine_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn splits_references() {
        assert_eq!(
            split_image_reference("127.0.0.1:5000/base/busybox:1.0"),
            ("127.0.0.1:5000/base/busybox".into(), "1.0".into())
        );
        assert_eq!(
            split_image_reference("127.0.0.1:5000/base/busybox"),
            ("127.0.0.1:5000/base/busybox".into(), "latest".into())
        );
        assert_eq!(
            split_image_reference("busybox@sha256:abc"),
            ("busybox".into(), "sha256:abc".into())
        );
        assert_eq!(split_image_reference("a:b"), ("a".into(), "b".into()));
    }
}

//! A scripted `ContainerRuntime` for unit tests: no engine, every call recorded.
//!
//! Behaviour is looked up by key: the image for containers, the first tag for builds, the image
//! for pushes. Unknown keys succeed with no output.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Barrier;

use super::{
    BuildSpec, ContainerRuntime, ContainerSpec, EnginePlatform, ImagePrune, PruneReport,
    RuntimeError,
};
use crate::logs::StepLog;

/// What a scripted container, build or push does.
#[derive(Debug, Clone, Default)]
pub struct Script {
    /// Written to the step log on every attempt.
    pub output: String,
    /// Exit code of each attempt in turn; the last one repeats; empty means 0.
    pub exit_codes: Vec<i64>,
    /// Never finishes (until the runner gives up on it).
    pub hang: bool,
    /// Waits on this barrier before finishing (proves that steps run concurrently).
    pub gate: Option<Arc<Barrier>>,
    /// Fails the operation with this error instead of running.
    pub error: Option<RuntimeError>,
    /// Digest returned by a push.
    pub digest: Option<String>,
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    CreateNetwork(String),
    RemoveNetwork(String),
    EnsureImage {
        image: String,
        platform: Option<String>,
        always_pull: bool,
    },
    /// A container was created and started (`detached` for `start_container`).
    Start {
        spec: ContainerSpec,
        detached: bool,
    },
    /// A non-detached container exited with this code.
    Exited {
        name: String,
        code: i64,
    },
    Remove(String),
    Build(BuildSpec),
    Push(String),
    PruneImages(ImagePrune),
    PruneBuildCache {
        unused_for: Duration,
        keep_bytes: Option<u64>,
    },
}

/// A file a container saw through a read-only bind mount when it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountedFile {
    /// Path inside the container.
    pub path: String,
    /// Path on the host.
    pub host_path: std::path::PathBuf,
    pub content: Vec<u8>,
    /// Permission bits (`0o400`, …).
    pub mode: u32,
}

/// The scripted runtime.
#[derive(Debug, Default)]
pub struct FakeRuntime {
    scripts: Mutex<HashMap<String, Script>>,
    attempts: Mutex<HashMap<String, usize>>,
    calls: Mutex<Vec<Call>>,
    live: Mutex<BTreeSet<String>>,
    mounted: Mutex<HashMap<String, Vec<MountedFile>>>,
    /// Answers of `prune_images` and `prune_build_cache`; `None`: nothing removed.
    image_prune: Mutex<Option<Result<PruneReport, RuntimeError>>>,
    cache_prune: Mutex<Option<Result<PruneReport, RuntimeError>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread poisons the lock; the data is still fine for assertions.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl FakeRuntime {
    pub fn new() -> FakeRuntime {
        FakeRuntime::default()
    }

    /// Sets the behaviour for `key` (an image, or a build's first tag).
    pub fn script(&self, key: &str, script: Script) {
        lock(&self.scripts).insert(key.to_string(), script);
    }

    /// What every `prune_images` call answers.
    pub fn script_image_prune(&self, answer: Result<PruneReport, RuntimeError>) {
        *lock(&self.image_prune) = Some(answer);
    }

    /// What every `prune_build_cache` call answers.
    pub fn script_cache_prune(&self, answer: Result<PruneReport, RuntimeError>) {
        *lock(&self.cache_prune) = Some(answer);
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.calls).clone()
    }

    /// Containers created and not removed.
    pub fn live_containers(&self) -> BTreeSet<String> {
        lock(&self.live).clone()
    }

    /// The files each container (by name) found in its read-only bind mounts when it started.
    pub fn mounted_files(&self, container: &str) -> Vec<MountedFile> {
        lock(&self.mounted)
            .get(container)
            .cloned()
            .unwrap_or_default()
    }

    fn record(&self, call: Call) {
        lock(&self.calls).push(call);
    }

    /// Reads the files of the spec's read-only bind mounts, as the container would see them.
    fn snapshot_mounts(&self, spec: &ContainerSpec) {
        let mut files = Vec::new();
        for bind in &spec.binds {
            let parts: Vec<&str> = bind.split(':').collect();
            let [host, target, "ro"] = parts.as_slice() else {
                continue;
            };
            let Ok(entries) = std::fs::read_dir(host) else {
                continue;
            };
            for entry in entries.flatten() {
                let host_path = entry.path();
                let Ok(meta) = entry.metadata() else { continue };
                #[cfg(unix)]
                let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777;
                #[cfg(not(unix))]
                let mode = 0;
                files.push(MountedFile {
                    path: format!("{target}/{}", entry.file_name().to_string_lossy()),
                    content: std::fs::read(&host_path).unwrap_or_default(),
                    host_path,
                    mode,
                });
            }
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        lock(&self.mounted).insert(spec.name.clone(), files);
    }

    /// Runs the script for `key` and returns the attempt's exit code.
    async fn play(&self, key: &str, log: Option<&mut StepLog>) -> Result<i64, RuntimeError> {
        let script = lock(&self.scripts).get(key).cloned().unwrap_or_default();
        let attempt = {
            let mut attempts = lock(&self.attempts);
            let n = attempts.entry(key.to_string()).or_insert(0);
            *n += 1;
            *n - 1
        };
        if let Some(error) = script.error {
            return Err(error);
        }
        if let Some(log) = log {
            log.write(script.output.clone()).await;
        }
        if let Some(gate) = &script.gate {
            gate.wait().await;
        }
        if script.hang {
            std::future::pending::<()>().await;
        }
        let code = script
            .exit_codes
            .get(attempt)
            .or(script.exit_codes.last())
            .copied()
            .unwrap_or(0);
        Ok(code)
    }
}

impl ContainerRuntime for FakeRuntime {
    async fn engine_platform(&self) -> Result<EnginePlatform, RuntimeError> {
        Ok(EnginePlatform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: String::new(),
        })
    }

    async fn create_network(&self, name: &str) -> Result<(), RuntimeError> {
        self.record(Call::CreateNetwork(name.to_string()));
        Ok(())
    }

    async fn remove_network(&self, name: &str) -> Result<(), RuntimeError> {
        self.record(Call::RemoveNetwork(name.to_string()));
        Ok(())
    }

    async fn ensure_image(
        &self,
        image: &str,
        platform: Option<&str>,
        always_pull: bool,
        _log: &mut StepLog,
    ) -> Result<(), RuntimeError> {
        self.record(Call::EnsureImage {
            image: image.to_string(),
            platform: platform.map(str::to_string),
            always_pull,
        });
        let missing = lock(&self.scripts)
            .get(&format!("pull:{image}"))
            .and_then(|s| s.error.clone());
        match missing {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    async fn run_container(
        &self,
        spec: &ContainerSpec,
        log: &mut StepLog,
    ) -> Result<i64, RuntimeError> {
        if !lock(&self.live).insert(spec.name.clone()) {
            return Err(RuntimeError::Engine(format!(
                "Conflict. The container name \"/{}\" is already in use",
                spec.name
            )));
        }
        self.snapshot_mounts(spec);
        self.record(Call::Start {
            spec: spec.clone(),
            detached: false,
        });
        let code = self.play(&spec.image, Some(log)).await?;
        self.record(Call::Exited {
            name: spec.name.clone(),
            code,
        });
        Ok(code)
    }

    async fn start_container(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        lock(&self.live).insert(spec.name.clone());
        self.snapshot_mounts(spec);
        self.record(Call::Start {
            spec: spec.clone(),
            detached: true,
        });
        Ok(())
    }

    async fn remove_container(&self, name: &str) -> Result<(), RuntimeError> {
        if lock(&self.live).remove(name) {
            self.record(Call::Remove(name.to_string()));
        }
        Ok(())
    }

    async fn build_image(&self, spec: &BuildSpec, log: &mut StepLog) -> Result<(), RuntimeError> {
        self.record(Call::Build(spec.clone()));
        let key = spec.tags.first().cloned().unwrap_or_default();
        match self.play(&key, Some(log)).await? {
            0 => Ok(()),
            code => Err(RuntimeError::Build {
                message: format!(
                    "The command '/bin/sh -c exit {code}' returned a non-zero code: {code}"
                ),
                exit_code: i32::try_from(code).unwrap_or(1),
            }),
        }
    }

    async fn push_image(&self, image: &str, log: &mut StepLog) -> Result<String, RuntimeError> {
        self.record(Call::Push(image.to_string()));
        let digest = lock(&self.scripts)
            .get(image)
            .and_then(|s| s.digest.clone());
        self.play(image, Some(log)).await?;
        Ok(digest.unwrap_or_else(|| "sha256:0000".to_string()))
    }

    async fn prune_images(&self, prune: &ImagePrune) -> Result<PruneReport, RuntimeError> {
        self.record(Call::PruneImages(prune.clone()));
        lock(&self.image_prune)
            .clone()
            .unwrap_or_else(|| Ok(PruneReport::default()))
    }

    async fn prune_build_cache(
        &self,
        unused_for: Duration,
        keep_bytes: Option<u64>,
    ) -> Result<PruneReport, RuntimeError> {
        self.record(Call::PruneBuildCache {
            unused_for,
            keep_bytes,
        });
        lock(&self.cache_prune)
            .clone()
            .unwrap_or_else(|| Ok(PruneReport::default()))
    }
}

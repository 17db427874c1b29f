//! `ContainerRuntime` on a real Docker Engine through bollard (the only file that knows bollard).
//!
//! Targets Engine API 1.41 (Docker 20.10) and newer: version negotiated at connect time,
//! builds use the classic builder, pushes send an empty `X-Registry-Auth` header (bollard adds
//! it), and the pushed digest is read from the push stream.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, NetworkCreateRequest, NetworkingConfig,
    PortBinding,
};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, LogsOptionsBuilder,
    PruneBuildOptionsBuilder, PruneImagesOptionsBuilder, PushImageOptionsBuilder,
    RemoveContainerOptionsBuilder, TagImageOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;
use tokio_util::io::ReaderStream;

use super::{
    engine_duration, split_image_reference, BuildSpec, ContainerRuntime, ContainerSpec,
    EnginePlatform, ImagePrune, PruneReport, RuntimeError,
};
use crate::logs::StepLog;

/// Limit for the engine to start answering a request (streams may then run longer; the runner
/// applies the step and run timeouts on top).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// Most engine log frames joined into one write (a frame holds at most one 16 KiB line).
const LOG_FRAMES_PER_BATCH: usize = 64;

/// A Docker Engine connection.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: Docker,
    /// Where build-context tarballs are staged before upload.
    scratch_dir: PathBuf,
    /// The agent whose containers and networks these are: every one gets the label
    /// `OWNER_LABEL=<owner>`, so a restarted agent can find what a crashed one left behind.
    owner: String,
}

/// Label on every container and network an agent creates, naming the agent.
pub const OWNER_LABEL: &str = "kiln.agent";

impl DockerRuntime {
    /// Connects to `host` (`unix:///…` or `tcp://…`) and negotiates the API version.
    pub async fn connect(host: &str, scratch_dir: &Path) -> Result<DockerRuntime, RuntimeError> {
        let docker = Docker::connect_with_host(host)
            .map_err(engine)?
            .with_timeout(REQUEST_TIMEOUT)
            .negotiate_version()
            .await
            .map_err(engine)?;
        docker.ping().await.map_err(engine)?;
        Ok(DockerRuntime {
            docker,
            scratch_dir: scratch_dir.to_path_buf(),
            owner: String::new(),
        })
    }

    /// Labels what this runtime creates as belonging to agent `owner`.
    pub fn owned_by(mut self, owner: &str) -> Self {
        self.owner = owner.to_string();
        self
    }

    fn owner_labels(&self) -> Option<HashMap<String, String>> {
        (!self.owner.is_empty())
            .then(|| HashMap::from([(OWNER_LABEL.to_string(), self.owner.clone())]))
    }

    /// Removes the containers and networks a previous process of this agent left behind (it
    /// crashed or was killed mid-run; the coordinator has already ended those runs). Returns how
    /// many were removed.
    pub async fn remove_leftovers(&self) -> Result<usize, RuntimeError> {
        if self.owner.is_empty() {
            return Ok(0);
        }
        let filter = HashMap::from([("label", vec![format!("{OWNER_LABEL}={}", self.owner)])]);
        let containers = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filter)
                    .build(),
            ))
            .await
            .map_err(engine)?;
        let mut removed = 0;
        for container in containers {
            let Some(id) = container.id else { continue };
            let options = RemoveContainerOptionsBuilder::default().force(true).build();
            if self
                .docker
                .remove_container(&id, Some(options))
                .await
                .is_ok()
            {
                removed += 1;
            }
        }
        let networks = self
            .docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::default()
                    .filters(&filter)
                    .build(),
            ))
            .await
            .map_err(engine)?;
        for network in networks {
            let Some(id) = network.id else { continue };
            if self.docker.remove_network(&id).await.is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        let mut options = CreateContainerOptionsBuilder::default().name(&spec.name);
        if let Some(platform) = &spec.platform {
            options = options.platform(platform);
        }
        let mut port_bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
        let mut exposed: Vec<String> = spec.expose.iter().map(|p| with_protocol(p)).collect();
        for port in &spec.ports {
            let (container_port, binding) = parse_port(port)?;
            exposed.push(container_port.clone());
            port_bindings
                .entry(container_port)
                .or_insert_with(|| Some(Vec::new()))
                .get_or_insert_with(Vec::new)
                .push(binding);
        }
        let networking_config = spec.network.as_ref().map(|network| NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                network.clone(),
                EndpointSettings {
                    aliases: Some(spec.network_aliases.clone()),
                    ..Default::default()
                },
            )])),
        });
        let isolation = match &spec.isolation {
            Some(value) => Some(
                value
                    .parse()
                    .map_err(|_| RuntimeError::Invalid(format!("invalid isolation {value:?}")))?,
            ),
            None => None,
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: (!spec.args.is_empty()).then(|| spec.args.clone()),
            entrypoint: spec.entrypoint.clone(),
            env: Some(spec.env.clone()),
            working_dir: spec.working_dir.clone(),
            user: spec.user.clone(),
            tty: Some(spec.tty),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            labels: self.owner_labels(),
            host_config: Some(HostConfig {
                binds: Some(spec.binds.clone()),
                network_mode: spec.network.clone(),
                port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
                privileged: Some(spec.privileged),
                isolation,
                nano_cpus: spec.cpu_millis.map(super::nano_cpus),
                memory: spec
                    .memory_bytes
                    .map(|m| i64::try_from(m).unwrap_or(i64::MAX)),
                ..Default::default()
            }),
            networking_config,
            ..Default::default()
        };
        self.docker
            .create_container(Some(options.build()), body)
            .await
            .map_err(|e| match e {
                BollardError::DockerResponseServerError {
                    status_code: 404,
                    message,
                } => RuntimeError::Image {
                    image: spec.image.clone(),
                    message,
                },
                other => engine(other),
            })?;
        Ok(())
    }

    async fn pull(
        &self,
        image: &str,
        platform: Option<&str>,
        log: &mut StepLog,
    ) -> Result<(), RuntimeError> {
        let (repo, tag) = split_image_reference(image);
        let mut options = CreateImageOptionsBuilder::default()
            .from_image(&repo)
            .tag(&tag);
        if let Some(platform) = platform {
            options = options.platform(platform);
        }
        log.line(&format!("Pulling image: {image}")).await;
        let mut stream = self.docker.create_image(Some(options.build()), None, None);
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    // Per-layer progress lines are noise in a build log; keep the summary ones.
                    if let (Some(status), None) = (info.status, info.id) {
                        log.line(&status).await;
                    }
                }
                Err(e) => {
                    return Err(RuntimeError::Image {
                        image: image.to_string(),
                        message: error_message(e),
                    })
                }
            }
        }
        Ok(())
    }

    async fn image_matches(&self, image: &str, platform: Option<&str>) -> Option<bool> {
        let inspect = self.docker.inspect_image(image).await.ok()?;
        let Some(platform) = platform else {
            return Some(true);
        };
        let mut parts = platform.split('/');
        let (os, arch, variant) = (parts.next(), parts.next(), parts.next());
        let matches = os.is_none_or(|os| inspect.os.as_deref() == Some(os))
            && arch.is_none_or(|arch| inspect.architecture.as_deref() == Some(arch))
            && variant.is_none_or(|v| inspect.variant.as_deref().is_none_or(|iv| iv == v));
        Some(matches)
    }

    async fn context_tar(&self, spec: &BuildSpec) -> Result<(PathBuf, String), RuntimeError> {
        tokio::fs::create_dir_all(&self.scratch_dir)
            .await
            .map_err(|e| RuntimeError::Invalid(format!("cannot create scratch dir: {e}")))?;
        let tar_path = tempfile_path(&self.scratch_dir);
        let spec = spec.clone();
        let path = tar_path.clone();
        let dockerfile_name = tokio::task::spawn_blocking(move || write_context_tar(&spec, &path))
            .await
            .map_err(|e| RuntimeError::Invalid(e.to_string()))??;
        Ok((tar_path, dockerfile_name))
    }
}

impl ContainerRuntime for DockerRuntime {
    async fn engine_platform(&self) -> Result<EnginePlatform, RuntimeError> {
        let info = self.docker.info().await.map_err(engine)?;
        let (architecture, variant) = oci_architecture(info.architecture.as_deref().unwrap_or(""));
        Ok(EnginePlatform {
            os: info.os_type.unwrap_or_else(|| "linux".to_string()),
            architecture,
            variant,
        })
    }

    async fn create_network(&self, name: &str) -> Result<(), RuntimeError> {
        let request = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".to_string()),
            labels: self.owner_labels(),
            ..Default::default()
        };
        match self.docker.create_network(request).await {
            Ok(_) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(e) => Err(engine(e)),
        }
    }

    async fn remove_network(&self, name: &str) -> Result<(), RuntimeError> {
        match self.docker.remove_network(name).await {
            Ok(()) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(engine(e)),
        }
    }

    async fn ensure_image(
        &self,
        image: &str,
        platform: Option<&str>,
        always_pull: bool,
        log: &mut StepLog,
    ) -> Result<(), RuntimeError> {
        if !always_pull && self.image_matches(image, platform).await == Some(true) {
            return Ok(());
        }
        self.pull(image, platform, log).await
    }

    async fn run_container(
        &self,
        spec: &ContainerSpec,
        log: &mut StepLog,
    ) -> Result<i64, RuntimeError> {
        self.create(spec).await?;
        self.docker
            .start_container(&spec.name, None)
            .await
            .map_err(engine)?;
        let options = LogsOptionsBuilder::default()
            .follow(true)
            .stdout(true)
            .stderr(true)
            .build();
        // The engine hands over one frame per line; frames that are already there are joined
        // and passed on together, so a chatty step costs per batch, not per line.
        let mut output = self
            .docker
            .logs(&spec.name, Some(options))
            .ready_chunks(LOG_FRAMES_PER_BATCH);
        'read: while let Some(items) = output.next().await {
            let mut batch = bytes::BytesMut::new();
            for item in items {
                match item {
                    Ok(chunk) => batch.extend_from_slice(&chunk.into_bytes()),
                    Err(e) => {
                        if !batch.is_empty() {
                            log.write(batch.split().freeze()).await;
                        }
                        log.line(&format!("log stream interrupted: {}", error_message(e)))
                            .await;
                        break 'read;
                    }
                }
            }
            if !batch.is_empty() {
                log.write(batch.freeze()).await;
            }
        }
        let mut wait = self.docker.wait_container(&spec.name, None);
        match wait.next().await {
            Some(Ok(response)) => Ok(response.status_code),
            Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(engine(e)),
            None => Err(RuntimeError::Engine(format!(
                "no exit status for container {}",
                spec.name
            ))),
        }
    }

    async fn start_container(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        self.create(spec).await?;
        self.docker
            .start_container(&spec.name, None)
            .await
            .map_err(engine)
    }

    async fn remove_container(&self, name: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            // 409: removal already in progress.
            Err(BollardError::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(e) => Err(engine(e)),
        }
    }

    async fn build_image(&self, spec: &BuildSpec, log: &mut StepLog) -> Result<(), RuntimeError> {
        self.prepare_base_images(spec, log).await;
        let (tar_path, dockerfile) = self.context_tar(spec).await?;
        let result = self.build_from_tar(spec, &tar_path, &dockerfile, log).await;
        let _ = tokio::fs::remove_file(&tar_path).await;
        result
    }

    async fn push_image(&self, image: &str, log: &mut StepLog) -> Result<String, RuntimeError> {
        let (repo, tag) = split_image_reference(image);
        let options = PushImageOptionsBuilder::default().tag(&tag).build();
        // bollard sends an empty credential as `X-Registry-Auth`, which the API requires.
        let mut stream = self.docker.push_image(&repo, Some(options), None);
        let mut digest = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(status) = info.status {
                        if let Some(found) = digest_from_status(&status) {
                            digest = Some(found);
                        }
                        // Per-layer progress ticks are noise in a log (the engine's push
                        // messages carry no layer id here); keep each layer's outcome.
                        if !matches!(status.as_str(), "Preparing" | "Waiting" | "Pushing") {
                            log.line(&status).await;
                        }
                    }
                }
                Err(e) => {
                    return Err(RuntimeError::Push {
                        image: image.to_string(),
                        message: error_message(e),
                    })
                }
            }
        }
        match digest {
            Some(digest) => Ok(digest),
            None => self.repo_digest(image, &repo).await,
        }
    }

    async fn prune_images(&self, prune: &ImagePrune) -> Result<PruneReport, RuntimeError> {
        let mut filters: HashMap<&str, Vec<String>> = HashMap::from([
            ("dangling", vec![prune.dangling_only.to_string()]),
            ("until", vec![engine_duration(prune.older_than)]),
        ]);
        if !prune.labels.is_empty() {
            filters.insert("label", prune.labels.clone());
        }
        let options = PruneImagesOptionsBuilder::default()
            .filters(&filters)
            .build();
        let response = self
            .docker
            .prune_images(Some(options))
            .await
            .map_err(engine)?;
        Ok(PruneReport {
            removed: response
                .images_deleted
                .unwrap_or_default()
                .into_iter()
                .filter_map(|item| item.deleted)
                .collect(),
            reclaimed_bytes: reclaimed(response.space_reclaimed),
        })
    }

    async fn prune_build_cache(
        &self,
        unused_for: Duration,
        keep_bytes: Option<u64>,
    ) -> Result<PruneReport, RuntimeError> {
        let filters = HashMap::from([("until", vec![engine_duration(unused_for)])]);
        let mut options = PruneBuildOptionsBuilder::default().filters(&filters);
        if let Some(keep) = keep_bytes {
            // `reserved-space` is API 1.48's name; older engines ignore it (their
            // `keep-storage` is not in bollard's parameters), so they prune by age alone.
            options = options.reserved_space(i64::try_from(keep).unwrap_or(i64::MAX));
        }
        let response = self
            .docker
            .prune_build(Some(options.build()))
            .await
            .map_err(engine)?;
        Ok(PruneReport {
            removed: response.caches_deleted.unwrap_or_default(),
            reclaimed_bytes: reclaimed(response.space_reclaimed),
        })
    }
}

/// The engine's `SpaceReclaimed` (absent or negative means nothing).
fn reclaimed(space: Option<i64>) -> u64 {
    space.and_then(|s| u64::try_from(s).ok()).unwrap_or(0)
}

impl DockerRuntime {
    /// Makes the local copies of the Dockerfile's base images match the build platform.
    ///
    /// The classic builder uses a local image of the `FROM` name whatever its platform, and one
    /// engine keeps one image per tag; after a build for another platform the local tag may
    /// point at a foreign variant. Base images that are missing or of the wrong platform are
    /// pulled for the right one first; a failed pull is left to the build to report (the base
    /// may be a local-only image).
    async fn prepare_base_images(&self, spec: &BuildSpec, log: &mut StepLog) {
        let path = spec
            .dockerfile
            .clone()
            .unwrap_or_else(|| spec.context_dir.join("Dockerfile"));
        let Ok(text) = tokio::fs::read_to_string(&path).await else {
            return;
        };
        for image in base_images(&text) {
            if self.image_matches(&image, spec.platform.as_deref()).await == Some(true) {
                continue;
            }
            if let Err(error) = self.pull(&image, spec.platform.as_deref(), log).await {
                log.line(&format!("cannot pull base image {image}: {error}"))
                    .await;
            }
        }
    }

    async fn build_from_tar(
        &self,
        spec: &BuildSpec,
        tar_path: &Path,
        dockerfile: &str,
        log: &mut StepLog,
    ) -> Result<(), RuntimeError> {
        let mut options = BuildImageOptionsBuilder::default()
            .dockerfile(dockerfile)
            .rm(true)
            .forcerm(true)
            .nocache(spec.no_cache);
        if let Some(tag) = spec.tags.first() {
            options = options.t(tag);
        }
        if spec.pull {
            options = options.pull("1");
        }
        if let Some(target) = &spec.target {
            options = options.target(target);
        }
        if let Some(platform) = &spec.platform {
            options = options.platform(platform);
        }
        if let Some(network) = &spec.network {
            options = options.networkmode(network);
        }
        if let Some(millis) = spec.cpu_millis {
            // The build API takes 32-bit values.
            match i32::try_from(super::cpu_quota_micros(millis)) {
                Ok(quota) => {
                    options = options
                        .cpuquota(quota)
                        .cpuperiod(super::CPU_PERIOD_MICROS as i32);
                }
                Err(_) => {
                    log.line(&format!("The CPU limit ({millis} millicores) is too large for the build API; the build runs without one")).await;
                }
            }
        }
        if let Some(bytes) = spec.memory_bytes {
            match i32::try_from(bytes) {
                Ok(memory) => options = options.memory(memory),
                Err(_) => {
                    log.line(&format!("The engine's build API takes memory limits up to {} bytes; the build runs without the run's limit of {bytes} bytes", i32::MAX)).await;
                }
            }
        }
        let build_args = parse_pairs(&spec.build_args);
        if !build_args.is_empty() {
            options = options.buildargs(&build_args);
        }
        let labels = parse_pairs(&spec.labels);
        if !labels.is_empty() {
            options = options.labels(&labels);
        }
        let file = tokio::fs::File::open(tar_path)
            .await
            .map_err(|e| RuntimeError::Invalid(format!("cannot read build context: {e}")))?;
        let body = bollard::body_try_stream(ReaderStream::new(file));
        let mut stream = self.docker.build_image(options.build(), None, Some(body));
        let mut built = false;
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(text) = info.stream {
                        log.write(text).await;
                    }
                    if let Some(status) = info.status {
                        log.line(&status).await;
                    }
                    if info.aux.is_some() {
                        built = true;
                    }
                }
                Err(e) => {
                    let message = error_message(e);
                    log.line(&message).await;
                    let exit_code = build_exit_code(&message);
                    return Err(RuntimeError::Build { message, exit_code });
                }
            }
        }
        if !built && spec.tags.is_empty() {
            // The classic builder reports the image id in `aux`; without it and without a tag
            // nothing proves the build produced an image, but no error was reported either.
            log.line("build finished without reporting an image id")
                .await;
        }
        for extra in spec.tags.iter().skip(1) {
            let Some(first) = spec.tags.first() else {
                break;
            };
            let (repo, tag) = split_image_reference(extra);
            let options = TagImageOptionsBuilder::default()
                .repo(&repo)
                .tag(&tag)
                .build();
            self.docker
                .tag_image(first, Some(options))
                .await
                .map_err(engine)?;
        }
        Ok(())
    }

    async fn repo_digest(&self, image: &str, repo: &str) -> Result<String, RuntimeError> {
        let inspect = self.docker.inspect_image(image).await.map_err(engine)?;
        inspect
            .repo_digests
            .unwrap_or_default()
            .iter()
            .find_map(|d| d.strip_prefix(&format!("{repo}@")).map(str::to_string))
            .ok_or_else(|| RuntimeError::Push {
                image: image.to_string(),
                message: "the engine did not report the pushed digest".to_string(),
            })
    }
}

fn engine(e: BollardError) -> RuntimeError {
    RuntimeError::Engine(error_message(e))
}

fn error_message(e: BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError { message, .. } => message,
        BollardError::DockerStreamError { error } => error,
        other => other.to_string(),
    }
}

/// Maps `uname -m` / engine architectures to OCI names (`x86_64` → `amd64`).
pub fn oci_architecture(arch: &str) -> (String, String) {
    let (a, v) = match arch {
        "x86_64" | "amd64" => ("amd64", ""),
        "aarch64" | "arm64" => ("arm64", ""),
        "armv7l" | "armhf" => ("arm", "v7"),
        "armv6l" | "armel" => ("arm", "v6"),
        "i386" | "i686" => ("386", ""),
        other => (other, ""),
    };
    (a.to_string(), v.to_string())
}

/// Extracts the exit code from a classic-builder error such as
/// "The command '/bin/sh -c exit 3' returned a non-zero code: 3".
pub fn build_exit_code(message: &str) -> i32 {
    message
        .rsplit_once("returned a non-zero code:")
        .and_then(|(_, code)| code.trim().parse().ok())
        .unwrap_or(1)
}

/// Extracts the digest from a push status line like "latest: digest: sha256:… size: 528".
pub fn digest_from_status(status: &str) -> Option<String> {
    let rest = status.split_once("digest: ")?.1;
    let digest = rest.split_whitespace().next()?;
    digest.starts_with("sha256:").then(|| digest.to_string())
}

/// The external images a Dockerfile's `FROM` lines name (not `scratch`, earlier stages, or
/// names built from build args).
fn base_images(dockerfile: &str) -> Vec<String> {
    let mut stages: Vec<String> = Vec::new();
    let mut images = Vec::new();
    for line in dockerfile.lines() {
        let mut words = line.split_whitespace();
        if !words.next().is_some_and(|w| w.eq_ignore_ascii_case("FROM")) {
            continue;
        }
        let rest: Vec<&str> = words.filter(|w| !w.starts_with("--")).collect();
        let Some(image) = rest.first() else { continue };
        let image = image.to_string();
        let is_stage = stages.contains(&image.to_ascii_lowercase());
        if let (Some(as_kw), Some(name)) = (rest.get(1), rest.get(2)) {
            if as_kw.eq_ignore_ascii_case("AS") {
                stages.push(name.to_ascii_lowercase());
            }
        }
        if is_stage
            || image.eq_ignore_ascii_case("scratch")
            || image.contains('$')
            || images.contains(&image)
        {
            continue;
        }
        images.push(image);
    }
    images
}

fn with_protocol(port: &str) -> String {
    if port.contains('/') {
        port.to_string()
    } else {
        format!("{port}/tcp")
    }
}

/// Parses `docker run -p` syntax: `[ip:][host-port:]container-port[/proto]`.
fn parse_port(spec: &str) -> Result<(String, PortBinding), RuntimeError> {
    let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
    let (container, host_port, host_ip) = match parts.as_slice() {
        [c] => (*c, None, None),
        [c, h] => (*c, Some(*h), None),
        [c, h, ip] => (*c, Some(*h), Some(*ip)),
        _ => return Err(RuntimeError::Invalid(format!("invalid port {spec:?}"))),
    };
    if container.is_empty() {
        return Err(RuntimeError::Invalid(format!("invalid port {spec:?}")));
    }
    Ok((
        with_protocol(container),
        PortBinding {
            host_ip: host_ip.filter(|s| !s.is_empty()).map(str::to_string),
            host_port: host_port.filter(|s| !s.is_empty()).map(str::to_string),
        },
    ))
}

fn parse_pairs(entries: &[String]) -> HashMap<String, String> {
    entries
        .iter()
        // Bare keys were resolved from the step's env by the runner; the agent's own
        // environment is never consulted.
        .filter_map(|entry| {
            entry
                .split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

fn tempfile_path(dir: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("context-{}-{n}.tar", std::process::id()))
}

/// Writes the build context as a tar file and returns the Dockerfile's name inside it. A
/// Dockerfile outside the context directory is added under a generated name, like the docker
/// CLI does.
fn write_context_tar(spec: &BuildSpec, tar_path: &Path) -> Result<String, RuntimeError> {
    let io = |e: std::io::Error| RuntimeError::Invalid(format!("cannot pack build context: {e}"));
    if !spec.context_dir.is_dir() {
        return Err(RuntimeError::Invalid(format!(
            "build context {} is not a directory",
            spec.context_dir.display()
        )));
    }
    let file = std::fs::File::create(tar_path).map_err(io)?;
    let mut builder = tar::Builder::new(std::io::BufWriter::new(file));
    builder.follow_symlinks(false);
    builder.append_dir_all(".", &spec.context_dir).map_err(io)?;
    let name = match &spec.dockerfile {
        None => "Dockerfile".to_string(),
        Some(path) => match path.strip_prefix(&spec.context_dir) {
            Ok(relative) => relative.to_string_lossy().into_owned(),
            Err(_) => {
                let name = ".kiln-dockerfile".to_string();
                let mut f = std::fs::File::open(path).map_err(|e| {
                    RuntimeError::Invalid(format!("cannot read {}: {e}", path.display()))
                })?;
                builder.append_file(&name, &mut f).map_err(io)?;
                name
            }
        },
    };
    builder
        .into_inner()
        .and_then(|mut w| std::io::Write::flush(&mut w))
        .map_err(io)?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_builder_exit_codes() {
        assert_eq!(
            build_exit_code("The command '/bin/sh -c exit 3' returned a non-zero code: 3"),
            3
        );
        assert_eq!(build_exit_code("something else"), 1);
    }

    #[test]
    fn parses_push_digests() {
        assert_eq!(
            digest_from_status("latest: digest: sha256:abcd size: 528").as_deref(),
            Some("sha256:abcd")
        );
        assert_eq!(digest_from_status("Pushed"), None);
    }

    #[test]
    fn parses_ports() {
        let (port, binding) = parse_port("127.0.0.1:8080:80").expect("port");
        assert_eq!(port, "80/tcp");
        assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(binding.host_port.as_deref(), Some("8080"));
        let (port, binding) = parse_port("53/udp").expect("port");
        assert_eq!(port, "53/udp");
        assert_eq!(binding.host_port, None);
    }

    #[test]
    fn finds_base_images() {
        let dockerfile = "FROM --platform=$BUILDPLATFORM reg/a:1 AS build\nRUN x\nfrom build\nFROM scratch\nFROM ${BASE}\nFROM reg/b\n";
        assert_eq!(
            base_images(dockerfile),
            vec!["reg/a:1".to_string(), "reg/b".to_string()]
        );
    }

    #[test]
    fn maps_architectures() {
        assert_eq!(oci_architecture("x86_64"), ("amd64".into(), "".into()));
        assert_eq!(oci_architecture("armv7l"), ("arm".into(), "v7".into()));
    }
}

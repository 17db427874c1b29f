//! The bodies of the three kinds of step: `cmd` (a container), `build` (the engine's build
//! API) and `push`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_proto::v1::ImagePushed;
use tokio_util::sync::CancellationToken;

use super::step::{cancellable, retry_loop, timed, Attempt};
use super::{clamp_code, container_name, lock, Fail, RunCtx, WORKSPACE_MOUNT};
use crate::blobs::BlobStore;
use crate::cmdline;
use crate::executor::{BuildSpec, ContainerRuntime, ContainerSpec};
use crate::logs::StepLog;
use crate::reports::Report;
use crate::task::{self, BuildStep, CmdStep, PushStep, Step};

/// Pauses between the three attempts of one image push (as acb does).
pub(super) const PUSH_RETRY_DELAYS: [Duration; 2] =
    [Duration::from_millis(250), Duration::from_millis(500)];

pub(super) async fn cmd_step<R: ContainerRuntime, B: BlobStore>(
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

pub(super) struct CmdAttempt<R, B> {
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

pub(super) struct BuildAttempt<R, B> {
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

pub(super) async fn build_step<R: ContainerRuntime, B: BlobStore>(
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
        cpu_millis: ctx.limits.cpu_millis,
        memory_bytes: ctx.limits.memory_bytes,
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

pub(super) async fn push_step<R: ContainerRuntime, B: BlobStore>(
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
                    epoch: 0,
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

pub(super) fn is_remote_context(context: &str) -> bool {
    context.contains("://") || context.starts_with("git@") || context.starts_with("github.com/")
}

/// `KEY=value` build args; a bare `KEY` takes its value from the step's env (and is dropped
/// when the step has none, as docker does for unset variables).
pub(super) fn resolve_build_args(args: &[String], env: &[String]) -> Vec<String> {
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

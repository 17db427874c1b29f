//! `kiln build`: the equivalent of `az acr build`, a quick build of one context.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;

use kiln_state::pb::RunRequest;
use kiln_state::PlatformSpec;
use kiln_taskfile::QuickBuild;

use crate::client::Farm;
use crate::commands::submit::{self, Follow};

/// ACR's default timeout for a quick build, in seconds.
const DEFAULT_TIMEOUT: u64 = 3600;

/// Builds an image from a context directory on the farm, pushes it and streams the log.
#[derive(Args, Debug)]
pub struct BuildArgs {
    #[command(flatten)]
    dispatch: submit::DispatchArgs,
    /// Image to build and push, as NAME:TAG; repeat for more tags. Run variables such as
    /// {{.Run.ID}} work; a name without a registry host gets the registry prefixed.
    #[arg(
        short = 't',
        long = "image",
        visible_alias = "tag",
        value_name = "IMAGE:TAG"
    )]
    images: Vec<String>,
    /// Registry to push to (host[:port]); defaults to the farm's registry.
    #[arg(short = 'r', long)]
    registry: Option<String>,
    /// Dockerfile, relative to the context directory.
    #[arg(
        short = 'f',
        long = "file",
        value_name = "DOCKERFILE",
        default_value = "Dockerfile"
    )]
    file: PathBuf,
    /// Platform to build for: os/arch[/variant], e.g. linux/arm64 or linux/arm/v7.
    #[arg(long, default_value = "linux/amd64")]
    platform: String,
    /// A build argument, KEY=VALUE; repeatable.
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    build_args: Vec<String>,
    /// Build only up to this stage of a multi-stage Dockerfile.
    #[arg(long)]
    target: Option<String>,
    /// Build without pushing.
    #[arg(long)]
    no_push: bool,
    /// Do not use the layer cache.
    #[arg(long)]
    no_cache: bool,
    /// Do not stream the log; still wait for the outcome.
    #[arg(long)]
    no_logs: bool,
    /// Print the run id and return as soon as the build is queued.
    #[arg(long)]
    no_wait: bool,
    /// Whole-run limit in seconds.
    #[arg(long, default_value_t = DEFAULT_TIMEOUT)]
    timeout: u64,
    /// The build context: a local directory, packed honouring .dockerignore.
    context: PathBuf,
}

pub async fn run(coordinator: &str, args: BuildArgs) -> anyhow::Result<ExitCode> {
    let platform = PlatformSpec::parse(&args.platform).map_err(anyhow::Error::msg)?;
    if !args.context.is_dir() {
        bail!(
            "context directory '{}' does not exist or is not a directory",
            args.context.display()
        );
    }
    if args.file.is_absolute() {
        bail!(
            "-f takes the Dockerfile's path relative to the context directory, not '{}'",
            args.file.display()
        );
    }
    if !args.context.join(&args.file).is_file() {
        bail!(
            "no Dockerfile at {}: pass -f with the Dockerfile's path relative to the context",
            args.context.join(&args.file).display()
        );
    }
    if args.images.is_empty() && !args.no_push {
        bail!("nothing to push: give at least one -t IMAGE:TAG, or --no-push");
    }
    if args.timeout == 0 || args.timeout > kiln_state::machine::MAX_RUN_TIMEOUT_SECONDS {
        bail!(
            "--timeout must be between 1 and {} seconds (8 hours)",
            kiln_state::machine::MAX_RUN_TIMEOUT_SECONDS
        );
    }
    // Bad dispatch flags are reported before the context is packed and uploaded.
    args.dispatch.apply(&mut RunRequest::default())?;
    submit::parse_pairs("--build-arg", &args.build_args)?;

    let connected = Farm::connect(coordinator).await?;
    let submit::Registries {
        push: registry,
        farm,
    } = submit::registries(&connected, args.registry.as_deref());
    let context_digest = submit::upload_context(&args.context, Some(&args.file), &farm).await?;
    let task_yaml = kiln_taskfile::quick_build_task(&QuickBuild {
        tags: args.images,
        dockerfile: args.file.to_string_lossy().into_owned(),
        build_args: args.build_args,
        target: args.target.unwrap_or_default(),
        platform: platform.to_string(),
        context: ".".to_string(),
        registry: registry.clone(),
        push: !args.no_push,
        no_cache: args.no_cache,
    });
    let request = RunRequest {
        task_yaml,
        task_file_name: "quick-build.yaml".to_string(),
        context_digest,
        platform: Some(platform.to_pb()),
        timeout_seconds: args.timeout,
        registry,
        kind: "build".to_string(),
        ..RunRequest::default()
    };
    let mut request = request;
    args.dispatch.apply(&mut request)?;
    let follow = Follow {
        logs: !args.no_logs,
        wait: !args.no_wait,
    };
    submit::submit_and_follow(&connected, request, follow).await
}

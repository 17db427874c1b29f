//! `kiln run`: a quick run of one image (`--cmd`) or of a multi-step task file (`-f`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::Args;

use kiln_state::pb::{KeyValue, RunRequest};
use kiln_state::PlatformSpec;
use kiln_taskfile::{Inputs, RunVars};

use crate::client::Farm;
use crate::commands::submit::{self, Follow};

const DEFAULT_TIMEOUT: u64 = 3600;

/// Runs a task file, or a single container with --cmd, on the farm and streams the log.
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["file", "cmd"])))]
pub struct RunArgs {
    #[command(flatten)]
    dispatch: submit::DispatchArgs,
    /// The task file (ACR task YAML) to run.
    #[arg(short = 'f', long = "file", value_name = "TASK_FILE")]
    file: Option<PathBuf>,
    /// Run one container: 'IMAGE [ARGS...]', the image from a registry the farm can reach.
    #[arg(long, value_name = "'IMAGE [ARGS...]'")]
    cmd: Option<String>,
    /// A value for {{.Values.KEY}}, KEY=VALUE; repeatable; overrides the values file.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// A YAML file of values for {{.Values.*}}.
    #[arg(long, value_name = "FILE")]
    values: Option<PathBuf>,
    /// Registry for {{.Run.Registry}} and pushes (host[:port]); defaults to the farm's registry.
    #[arg(short = 'r', long)]
    registry: Option<String>,
    /// Platform to run on: os/arch[/variant].
    #[arg(long, default_value = "linux/amd64")]
    platform: String,
    /// Do not stream the log; still wait for the outcome.
    #[arg(long)]
    no_logs: bool,
    /// Print the run id and return as soon as the run is queued.
    #[arg(long)]
    no_wait: bool,
    /// Whole-run limit in seconds.
    #[arg(long, default_value_t = DEFAULT_TIMEOUT)]
    timeout: u64,
    /// The context directory mounted at /workspace, or /dev/null for none.
    context: PathBuf,
}

pub async fn run(coordinator: &str, args: RunArgs) -> anyhow::Result<ExitCode> {
    let platform = PlatformSpec::parse(&args.platform).map_err(anyhow::Error::msg)?;
    let set = submit::parse_pairs("--set", &args.set)?;
    if args.timeout == 0 || args.timeout > kiln_state::machine::MAX_RUN_TIMEOUT_SECONDS {
        bail!(
            "--timeout must be between 1 and {} seconds (8 hours)",
            kiln_state::machine::MAX_RUN_TIMEOUT_SECONDS
        );
    }
    // Bad dispatch flags are reported before the context is packed and uploaded.
    args.dispatch.apply(&mut RunRequest::default())?;
    let values_yaml = match &args.values {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the values file {}", path.display()))?,
        ),
        None => None,
    };
    let (task_yaml, file_name) = match (&args.file, &args.cmd) {
        (Some(path), None) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the task file {}", path.display()))?;
            let name = path.file_name().map_or_else(
                || "task.yaml".to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            (text, name)
        }
        (None, Some(cmd)) => {
            if cmd.trim().is_empty() {
                bail!("--cmd needs an image, for example --cmd '127.0.0.1:5000/base/busybox echo hello'");
            }
            (
                kiln_taskfile::quick_cmd_task(cmd),
                "quick-run.yaml".to_string(),
            )
        }
        _ => bail!("give either -f TASK_FILE or --cmd 'IMAGE [ARGS...]'"),
    };
    let no_context = args.context == Path::new("/dev/null");
    if !no_context && !args.context.is_dir() {
        bail!(
            "context directory '{}' does not exist: give a directory, or /dev/null for none",
            args.context.display()
        );
    }

    let connected = Farm::connect(coordinator).await?;
    let submit::Registries {
        push: registry,
        farm,
    } = submit::registries(&connected, args.registry.as_deref());
    // Check the task file here, so mistakes show at once with their line and column; the agent
    // renders it again with the real run id.
    let inputs = Inputs {
        run: RunVars {
            id: "ca0".to_string(),
            registry: registry.clone(),
            os: platform.os().to_string(),
            architecture: platform.architecture().to_string(),
            ..RunVars::default()
        },
        values_yaml: values_yaml.clone(),
        set: set.clone(),
        secrets: Default::default(),
    };
    if let Err(diagnostics) = kiln_taskfile::plan(&file_name, &task_yaml, &inputs) {
        eprint!("{diagnostics}");
        if !diagnostics.to_string().ends_with('\n') {
            eprintln!();
        }
        bail!("the task file is not valid; nothing was submitted");
    }
    let context_digest = if no_context {
        String::new()
    } else {
        submit::upload_context(&args.context, None, &farm).await?
    };
    let request = RunRequest {
        secret_names: kiln_taskfile::declared_secrets(&file_name, &task_yaml),
        task_yaml,
        task_file_name: file_name,
        values_yaml: values_yaml.unwrap_or_default(),
        set: set
            .into_iter()
            .map(|(key, value)| KeyValue { key, value })
            .collect(),
        context_digest,
        platform: Some(platform.to_pb()),
        timeout_seconds: args.timeout,
        registry,
        kind: "run".to_string(),
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

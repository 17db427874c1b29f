//! What every load-test run executes: a single container (`--cmd`) or a task file (`--task`),
//! turned into the `RunRequest` the CLI would submit for `kiln run`.

use std::path::Path;

use anyhow::{bail, Context as _};

use kiln_state::pb::RunRequest;
use kiln_state::PlatformSpec;
use kiln_taskfile::{Inputs, RunVars};

/// Marks the runs this tool submits, so that an operator can tell them from real work.
pub const TRIGGERED_BY: &str = "kiln-loadtest";

/// The task file every run of the load test executes.
#[derive(Clone, Debug)]
pub struct Workload {
    /// How the report names the workload (`cmd: …` or `task: …`).
    pub label: String,
    file_name: String,
    task_yaml: String,
}

impl Workload {
    /// A single-container run, like `kiln run --cmd 'IMAGE ARGS' /dev/null`.
    pub fn cmd(cmd: &str) -> anyhow::Result<Self> {
        if cmd.trim().is_empty() {
            bail!(
                "--cmd needs an image, for example --cmd '127.0.0.1:5000/base/busybox:latest true'"
            );
        }
        Ok(Self {
            label: format!("cmd: {cmd}"),
            file_name: "quick-run.yaml".to_string(),
            task_yaml: kiln_taskfile::quick_cmd_task(cmd),
        })
    }

    /// The task file at `path`, like `kiln run -f FILE /dev/null`.
    pub fn task_file(path: &Path) -> anyhow::Result<Self> {
        let task_yaml = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the task file {}", path.display()))?;
        let file_name = path.file_name().map_or_else(
            || "task.yaml".to_string(),
            |name| name.to_string_lossy().into_owned(),
        );
        Ok(Self {
            label: format!("task: {}", path.display()),
            file_name,
            task_yaml,
        })
    }

    /// The request every run submits. The task file is planned here first, so that a mistake
    /// shows once with its line and column instead of as N failed runs.
    pub fn run_request(
        &self,
        registry: &str,
        platform: &PlatformSpec,
        timeout_seconds: u64,
    ) -> anyhow::Result<RunRequest> {
        let inputs = Inputs {
            run: RunVars {
                id: "ca0".to_string(),
                registry: registry.to_string(),
                os: platform.os().to_string(),
                architecture: platform.architecture().to_string(),
                ..RunVars::default()
            },
            ..Inputs::default()
        };
        if let Err(diagnostics) = kiln_taskfile::plan(&self.file_name, &self.task_yaml, &inputs) {
            let text = diagnostics.to_string();
            bail!(
                "the task file is not valid; nothing was submitted:\n{}",
                text.trim_end()
            );
        }
        Ok(RunRequest {
            secret_names: kiln_taskfile::declared_secrets(&self.file_name, &self.task_yaml),
            task_yaml: self.task_yaml.clone(),
            task_file_name: self.file_name.clone(),
            platform: Some(platform.to_pb()),
            timeout_seconds,
            registry: registry.to_string(),
            kind: "run".to_string(),
            triggered_by: TRIGGERED_BY.to_string(),
            ..RunRequest::default()
        })
    }
}

#[cfg(test)]
mod tests;

//! The agent's view of the task-file crate: the plan types, rendering a task file with a run's
//! inputs, and splitting a `cmd` into docker flags, image and arguments.

pub use kiln_taskfile::{
    parse_cmd, BuildStep, CmdInvocation, CmdStep, Inputs, Plan, PushStep, RunVars, Step, StepKind,
};

/// Renders and plans a task file; `Err` carries the diagnostics as text, one per line.
pub fn render(file_name: &str, source: &str, inputs: &Inputs) -> Result<Plan, String> {
    kiln_taskfile::plan(file_name, source, inputs).map_err(|diagnostics| diagnostics.to_string())
}

//! Rendering a run's task file with the run variables, and resolving its declared secrets.

use std::collections::BTreeMap;
use std::path::Path;

use kiln_proto::pb::{Platform, RunRequest};
use kiln_proto::v1::Assignment;

use super::RunnerEnv;
use crate::secrets;
use crate::task::{self, Plan};

/// Why a task file could not be turned into a plan: the text for the run's log (its first line
/// is the run's reason) and the secret values resolved so far, to mask it with.
pub(super) struct RenderFailure {
    pub(super) text: String,
    pub(super) secrets: BTreeMap<String, String>,
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
pub(super) async fn render<R, B>(
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
            // acb renders at run time: `now` is the render time and random functions are
            // random. Both passes (secrets pre-pass and real render) share these inputs.
            render_time_ns: render_time_ns(),
            random_seed: random_seed(),
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

/// The wall clock in nanoseconds since the Unix epoch, for the template's `now`.
fn render_time_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// A fresh random seed for the template's random functions (std's per-process random hash
/// keys, mixed with the clock, so every render differs).
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_i64(render_time_ns());
    hasher.finish().max(1)
}

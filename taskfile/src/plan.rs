//! The public data model: what goes into a task-file evaluation (`Inputs`, `RunVars`) and the
//! normalised plan that comes out (`Plan`, `Step`, ...), plus its JSON form used by `kiln task plan`.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value as Json};

/// Everything a task-file evaluation depends on besides the file itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    /// Run variables (`{{.Run.*}}`).
    pub run: RunVars,
    /// Text of the `--values` file (plain YAML mapping; not templated).
    pub values_yaml: Option<String>,
    /// `--set K=V` pairs in the order given; they override values-file keys.
    pub set: Vec<(String, String)>,
    /// Resolved secret values by secret id (`{{.Secrets.<id>}}`).
    pub secrets: BTreeMap<String, String>,
}

/// The run variables a template can read. All strings are empty by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunVars {
    pub id: String,
    pub registry: String,
    /// Derived from `registry` (text before the first `.`) when empty.
    pub registry_name: String,
    /// Run start in milliseconds since the Unix epoch; `Run.Date` is formatted from it
    /// (`yyyyMMdd-HHmmssz`, UTC).
    pub date_ms: u64,
    pub os: String,
    pub architecture: String,
    pub os_version: String,
    pub commit: String,
    pub branch: String,
    pub repository: String,
    pub git_tag: String,
    pub task_name: String,
    pub triggered_by: String,
    pub shared_volume: String,
    /// The render time in nanoseconds since the Unix epoch: what the template's `now` returns.
    /// 0 means the run's start (`date_ms`).
    pub render_time_ns: i64,
    /// Seed of the template's random functions (`randAlpha`, `uuidv4`, `shuffle`, ...). 0
    /// derives one from the run id, so a render is reproducible from its inputs.
    pub random_seed: u64,
}

/// A docker network declared by the task (or the implicit `acb_default_network`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Network {
    pub name: String,
    pub driver: String,
    pub ipv6: bool,
    pub skip_creation: bool,
    pub is_default: bool,
}

/// A secret declaration (`secrets:` entry).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretDecl {
    pub id: String,
    pub keyvault: String,
    pub client_id: String,
    pub aad_resource_id: String,
}

/// A secret-file volume (`volumes:` entry): file name to base64 content.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Volume {
    pub name: String,
    pub secret: BTreeMap<String, String>,
}

/// A step's mount of a task volume.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
}

/// The normalised plan of a task file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The task version as written (`v1.0.0` when absent).
    pub version: String,
    /// Default per-step timeout in seconds (600 unless set to a positive value).
    pub step_timeout: u64,
    /// Task-level working directory as written (empty when absent).
    pub working_directory: String,
    /// Task-level env after splitting entries on `,`.
    pub env: Vec<String>,
    /// Networks to create/use, including the implicit `acb_default_network`.
    pub networks: Vec<Network>,
    /// Name of the default network for steps without `network` (empty: none).
    pub default_network: String,
    pub secrets: Vec<SecretDecl>,
    pub volumes: Vec<Volume>,
    /// Whether `$` aliases were enabled (version sniff `>= v1.1.0`).
    pub aliases_enabled: bool,
    pub steps: Vec<Step>,
}

/// One step of the plan with every default applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Step {
    pub id: String,
    pub kind: StepKind,
    /// `when` as written.
    pub when: Vec<String>,
    /// The ids this step waits for after the default rules (empty: starts at once).
    pub depends_on: Vec<String>,
    /// Merged env (step entries first, then task entries whose key the step lacks).
    pub env: Vec<String>,
    pub entry_point: String,
    /// Normalised container working directory (`/workspace` when unset).
    pub working_directory: String,
    pub user: String,
    pub network: String,
    pub isolation: String,
    pub cpus: String,
    pub ports: Vec<String>,
    pub expose: Vec<String>,
    pub volume_mounts: Vec<VolumeMount>,
    pub timeout: u64,
    pub retries: u32,
    pub retry_delay: u64,
    pub retry_on_errors: Vec<String>,
    pub repeat: u32,
    pub start_delay: u64,
    pub cmd_download_retries: u32,
    pub cmd_download_retry_delay: u64,
    pub detach: bool,
    pub keep: bool,
    pub ignore_errors: bool,
    pub privileged: bool,
    pub pull: bool,
    pub disable_working_directory_override: bool,
    /// 1-based line of the step in the original file (0 when unknown).
    pub line: u32,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepKind {
    Build(BuildStep),
    Cmd(CmdStep),
    Push(PushStep),
}

impl Default for StepKind {
    fn default() -> Self {
        StepKind::Cmd(CmdStep::default())
    }
}

impl StepKind {
    /// `build`, `cmd` or `push`.
    pub fn type_name(&self) -> &'static str {
        match self {
            StepKind::Build(_) => "build",
            StepKind::Cmd(_) => "cmd",
            StepKind::Push(_) => "push",
        }
    }
}

/// A `build:` step: the arguments of `docker build`, with the fields acb extracts from them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildStep {
    /// The build string as written (after templating).
    pub args: String,
    pub tags: Vec<String>,
    pub build_args: Vec<String>,
    /// Dockerfile path (empty: docker's default `Dockerfile`).
    pub dockerfile: String,
    pub target: String,
    /// Build context (`.` when none is recognised).
    pub context: String,
    pub platform: String,
    pub no_cache: bool,
    pub pull: bool,
    pub labels: Vec<String>,
    /// `cache: enabled` (buildx with a registry cache).
    pub cache: bool,
}

/// A `cmd:` step: `IMAGE [ARGS]` (possibly preceded by docker run flags), after alias expansion.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CmdStep {
    pub cmd: String,
}

/// A `push:` step: image names after `:latest` normalisation and de-duplication.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushStep {
    pub images: Vec<String>,
}

/// Replaces every occurrence of every secret value (longest first) with `***`.
pub fn mask_secrets(text: &str, secrets: &BTreeMap<String, String>) -> String {
    let mut values: Vec<&str> = secrets
        .values()
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .collect();
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    let mut out = text.to_string();
    for v in values {
        out = out.replace(v, "***");
    }
    out
}

impl Step {
    /// Approximate bytes this step holds (for the plan size limit): its text plus the size
    /// of a `String` for each list item.
    pub fn text_bytes(&self) -> usize {
        let list = |v: &[String]| {
            v.iter()
                .map(|s| s.len() + std::mem::size_of::<String>())
                .sum::<usize>()
        };
        let kind = match &self.kind {
            StepKind::Build(b) => {
                b.args.len()
                    + list(&b.tags)
                    + list(&b.build_args)
                    + list(&b.labels)
                    + b.dockerfile.len()
                    + b.context.len()
                    + b.target.len()
                    + b.platform.len()
            }
            StepKind::Cmd(c) => c.cmd.len(),
            StepKind::Push(p) => list(&p.images),
        };
        kind + self.id.len()
            + list(&self.when)
            + list(&self.depends_on)
            + list(&self.env)
            + self.entry_point.len()
            + self.working_directory.len()
            + self.user.len()
            + self.network.len()
            + self.isolation.len()
            + self.cpus.len()
            + list(&self.ports)
            + list(&self.expose)
            + self
                .volume_mounts
                .iter()
                .map(|m| m.name.len() + m.mount_path.len())
                .sum::<usize>()
            + list(&self.retry_on_errors)
    }
}

impl Plan {
    /// The JSON object `kiln task plan -o json` prints for a valid task (`ok: true`).
    /// `rendered` is the text after templating. When `mask` is given, every occurrence of a
    /// secret value in any string is replaced by `***`.
    pub fn to_json(&self, rendered: &str, mask: Option<&BTreeMap<String, String>>) -> Json {
        let m = |s: &str| match mask {
            Some(secrets) => mask_secrets(s, secrets),
            None => s.to_string(),
        };
        let ml = |v: &[String]| v.iter().map(|s| m(s)).collect::<Vec<_>>();
        let steps: Vec<Json> = self
            .steps
            .iter()
            .map(|s| {
                let mut o = Map::new();
                o.insert("id".into(), json!(m(&s.id)));
                o.insert("type".into(), json!(s.kind.type_name()));
                match &s.kind {
                    StepKind::Build(b) => {
                        o.insert("build".into(), json!(m(&b.args)));
                        o.insert("tags".into(), json!(ml(&b.tags)));
                        o.insert("buildArgs".into(), json!(ml(&b.build_args)));
                    }
                    StepKind::Cmd(c) => {
                        o.insert("cmd".into(), json!(m(&c.cmd)));
                    }
                    StepKind::Push(p) => {
                        o.insert("push".into(), json!(ml(&p.images)));
                    }
                }
                o.insert("when".into(), json!(ml(&s.when)));
                o.insert("dependsOn".into(), json!(ml(&s.depends_on)));
                o.insert("env".into(), json!(ml(&s.env)));
                o.insert("entryPoint".into(), json!(m(&s.entry_point)));
                o.insert("workingDirectory".into(), json!(m(&s.working_directory)));
                o.insert("user".into(), json!(m(&s.user)));
                o.insert("network".into(), json!(m(&s.network)));
                o.insert("isolation".into(), json!(m(&s.isolation)));
                o.insert("ports".into(), json!(ml(&s.ports)));
                o.insert("expose".into(), json!(ml(&s.expose)));
                o.insert("timeout".into(), json!(s.timeout));
                o.insert("retries".into(), json!(s.retries));
                o.insert("retryDelay".into(), json!(s.retry_delay));
                o.insert("repeat".into(), json!(s.repeat));
                o.insert("startDelay".into(), json!(s.start_delay));
                o.insert("detach".into(), json!(s.detach));
                o.insert("keep".into(), json!(s.keep));
                o.insert("ignoreErrors".into(), json!(s.ignore_errors));
                o.insert("privileged".into(), json!(s.privileged));
                o.insert("pull".into(), json!(s.pull));
                o.insert(
                    "disableWorkingDirectoryOverride".into(),
                    json!(s.disable_working_directory_override),
                );
                Json::Object(o)
            })
            .collect();
        json!({
            "ok": true,
            "version": m(&self.version),
            "stepTimeout": self.step_timeout,
            "rendered": m(rendered),
            "steps": steps,
        })
    }
}

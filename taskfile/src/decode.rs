//! P6–P8: decodes the rendered YAML into a task with yaml.v2's typing rules (unknown keys
//! ignored), validates it, applies acb's defaults and normalisations and builds the step graph.
//! Every problem found is collected as a diagnostic pointing into the original file.

use std::collections::{BTreeMap, HashSet};

use crate::load::{diag, Loaded};
use crate::plan::{
    BuildStep, CmdStep, Network, Plan, PushStep, SecretDecl, Step, StepKind, Volume, VolumeMount,
};
use crate::yaml::{Kind, Node, Scalar};
use crate::Diagnostic;

pub const DEFAULT_STEP_TIMEOUT: u64 = 600;
pub const DEFAULT_RETRY_DELAY: u64 = 5;
/// Upper bounds kiln puts on step settings (acb has none; a typo such as `repeat: 1000000`
/// would otherwise occupy an agent for good). The timeouts match the whole-run limit,
/// `kiln_state::machine::MAX_RUN_TIMEOUT_SECONDS` (8 hours).
pub const MAX_STEP_TIMEOUT: u64 = 28_800;
pub const MAX_RETRIES: i64 = 100;
pub const MAX_REPEAT: i64 = 1000;
pub const MAX_DELAY_SECONDS: i64 = 3600;
pub const DEFAULT_NETWORK: &str = "acb_default_network";
const VALID_VERSIONS: &[&str] = &["1.0-preview-1", "v1.0.0", "v1.1.0"];
/// Largest plan (bytes of text in its steps) a task may produce. Every step copies the
/// task-level env, working directory and network and may expand a cmd alias, so a small
/// rendered file with many steps could otherwise build a plan of many gigabytes.
pub const MAX_PLAN_BYTES: usize = 64 << 20;
/// Most steps one task may have (acb has no limit). Each step becomes part of the replicated
/// run record, which is rewritten on every step update; this equals the coordinator's
/// `kiln_state::machine::MAX_STEPS`, so that every plan an agent makes is one it can record.
pub const MAX_STEPS: usize = 1_000;
/// Most diagnostics kept for one task (a hostile file can have a problem per node).
pub const MAX_DIAGNOSTICS: usize = 1_000;

pub struct Decoder<'a> {
    pub file: &'a str,
    pub loaded: &'a Loaded,
    pub diags: Vec<Diagnostic>,
}

fn dedup_keep_first(items: Vec<String>) -> Vec<String> {
    let mut seen = HashSet::new();
    items
        .into_iter()
        .filter(|i| seen.insert(i.clone()))
        .collect()
}

/// Path-cleans like Go's `path.Clean`.
pub fn clean_path(p: &str) -> String {
    let abs = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !abs {
                    parts.push("..");
                }
            }
            s => parts.push(s),
        }
    }
    let joined = parts.join("/");
    match (abs, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// §5.6: container working directory of a step.
pub fn normalise_working_directory(wd: &str) -> String {
    if wd.starts_with('/') {
        clean_path(wd)
    } else {
        clean_path(&format!("/workspace/{wd}"))
    }
}

/// §5.4: `:latest` is appended when a name has neither `:` nor `@`; duplicates are dropped.
pub fn normalise_push_names(names: &[String]) -> Vec<String> {
    dedup_keep_first(
        names
            .iter()
            .map(|n| {
                if n.contains(':') || n.contains('@') {
                    n.clone()
                } else {
                    format!("{n}:latest")
                }
            })
            .collect(),
    )
}

fn trim_quotes(s: &str) -> String {
    s.trim_matches(['"', '\'']).to_string()
}

/// §5.3: the fields acb extracts from a build string (purely positional, whitespace-split).
pub fn parse_build(args: &str) -> BuildStep {
    let fields: Vec<&str> = args.split_whitespace().collect();
    let mut b = BuildStep {
        args: args.to_string(),
        ..BuildStep::default()
    };
    let next = |i: usize| fields.get(i + 1).map(|s| s.to_string());
    for (i, f) in fields.iter().enumerate() {
        match *f {
            "-t" | "--tag" => b.tags.extend(next(i)),
            "--build-arg" => b.build_args.extend(next(i)),
            "-f" | "--file" => b.dockerfile = next(i).map(|s| trim_quotes(&s)).unwrap_or_default(),
            "--target" => b.target = next(i).unwrap_or_default(),
            "--platform" => b.platform = next(i).unwrap_or_default(),
            "--label" => b.labels.extend(next(i)),
            "--no-cache" => b.no_cache = true,
            "--pull" => b.pull = true,
            other => {
                if let Some(p) = other.strip_prefix("--platform=") {
                    b.platform = p.to_string();
                }
            }
        }
    }
    b.context = ".".into();
    for i in (0..fields.len()).rev() {
        let f = fields[i];
        if f.starts_with('-') {
            continue;
        }
        if i > 0 && fields[i - 1].starts_with('-') {
            continue;
        }
        b.context = trim_quotes(f);
        break;
    }
    b
}

impl Decoder<'_> {
    fn pos(&self, node: &Node) -> (u32, u32) {
        self.loaded.map.pos_mark(&self.loaded.rendered, node.mark)
    }

    fn err(&mut self, node: &Node, msg: impl Into<String>) {
        if self.diags.len() >= MAX_DIAGNOSTICS {
            return;
        }
        let d = diag(self.file, self.pos(node), msg);
        self.diags.push(d);
    }

    fn unmarshal_err(&mut self, key: &str, node: &Node, want: &str, hint: &str) {
        let shown = match &node.kind {
            Kind::Scalar { value, .. } => format!("{} `{}`", node.tag_name(), value),
            _ => node.tag_name().to_string(),
        };
        self.err(
            node,
            format!("`{key}`: cannot unmarshal {shown} into {want}: {hint}"),
        );
    }

    fn string(&mut self, parent: &Node, key: &str) -> String {
        let Some(v) = parent.get(key) else {
            return String::new();
        };
        match &v.kind {
            Kind::Scalar { value, .. } => {
                if v.is_null() {
                    String::new()
                } else {
                    value.clone()
                }
            }
            _ => {
                self.unmarshal_err(key, v, "string", "write a single text value");
                String::new()
            }
        }
    }

    fn int(&mut self, parent: &Node, key: &str) -> i64 {
        let Some(v) = parent.get(key) else { return 0 };
        match (&v.kind, v.resolve()) {
            (Kind::Scalar { .. }, Scalar::Int(i)) => i,
            (Kind::Scalar { .. }, Scalar::Float(f)) if f.is_finite() => f as i64,
            (Kind::Scalar { .. }, Scalar::Null) => 0,
            _ => {
                self.unmarshal_err(key, v, "int", "write a whole number without quotes");
                0
            }
        }
    }

    fn boolean(&mut self, parent: &Node, key: &str) -> bool {
        let Some(v) = parent.get(key) else {
            return false;
        };
        match (&v.kind, v.resolve()) {
            (Kind::Scalar { .. }, Scalar::Bool(b)) => b,
            (Kind::Scalar { .. }, Scalar::Null) => false,
            _ => {
                self.unmarshal_err(key, v, "bool", "write true or false without quotes");
                false
            }
        }
    }

    fn strings(&mut self, parent: &Node, key: &str) -> Vec<String> {
        let Some(v) = parent.get(key) else {
            return Vec::new();
        };
        match &v.kind {
            Kind::Seq(items) => {
                let mut out = Vec::new();
                for it in items {
                    match &it.kind {
                        Kind::Scalar { value, .. } => out.push(if it.is_null() {
                            String::new()
                        } else {
                            value.clone()
                        }),
                        _ => self.unmarshal_err(
                            key,
                            it,
                            "string",
                            "each list item must be a single text value",
                        ),
                    }
                }
                out
            }
            Kind::Scalar { .. } if v.is_null() => Vec::new(),
            _ => {
                let hint = match v.text() {
                    Some(t) => format!("write a list, e.g. {key}: [\"{t}\"]"),
                    None => "write a list of text values".to_string(),
                };
                self.unmarshal_err(key, v, "[]string", &hint);
                Vec::new()
            }
        }
    }

    fn list<'n>(&mut self, parent: &'n Node, key: &str, what: &str) -> Vec<&'n Node> {
        let Some(v) = parent.get(key) else {
            return Vec::new();
        };
        match &v.kind {
            Kind::Seq(items) => {
                let mut out = Vec::new();
                for it in items {
                    if matches!(it.kind, Kind::Map(_)) {
                        out.push(it);
                    } else if !it.is_null() {
                        self.unmarshal_err(
                            key,
                            it,
                            what,
                            &format!("each `{key}` entry must be a mapping"),
                        );
                    }
                }
                out
            }
            Kind::Scalar { .. } if v.is_null() => Vec::new(),
            _ => {
                self.unmarshal_err(
                    key,
                    v,
                    &format!("[]{what}"),
                    &format!("`{key}` must be a list"),
                );
                Vec::new()
            }
        }
    }

    fn secrets(&mut self, root: &Node) -> Vec<SecretDecl> {
        let mut out: Vec<SecretDecl> = Vec::new();
        let mut seen = HashSet::new();
        for node in self.list(root, "secrets", "secret") {
            let s = SecretDecl {
                id: self.string(node, "id"),
                keyvault: self.string(node, "keyvault"),
                client_id: self.string(node, "clientID"),
                aad_resource_id: self.string(node, "aadresourceid"),
            };
            if s.id.is_empty() {
                self.err(
                    node,
                    "secret is missing an ID as well as auto-generated ID: add `id: <name>`",
                );
                continue;
            }
            if s.id.chars().any(char::is_whitespace) {
                self.err(
                    node,
                    format!(
                        "failed to validate secret with ID: {}: secret ID cannot contain spaces",
                        s.id
                    ),
                );
            } else if s.keyvault.is_empty() && s.aad_resource_id.is_empty() {
                self.err(node, format!("failed to validate secret with ID: {}: secret should contain either keyvault property for vault secret, or msi clientID/aadResourceId for msi authentication", s.id));
            } else if !s.client_id.is_empty() && !is_guid(&s.client_id) {
                self.err(
                    node,
                    format!(
                        "failed to validate secret with ID: {}: msi client ID is not a valid guid",
                        s.id
                    ),
                );
            } else if !s.keyvault.is_empty() && !valid_keyvault_url(&s.keyvault) {
                self.err(node, format!("failed to validate secret with ID: {}: keyvault must be an https URL of the form https://<vault>.<domain>/secrets/<name>[/<version>]", s.id));
            }
            if !seen.insert(s.id.clone()) {
                self.err(node, format!("duplicate secret found with ID: {}", s.id));
                continue;
            }
            out.push(s);
        }
        out
    }

    fn volumes(&mut self, root: &Node) -> Vec<Volume> {
        let name_re = regex::Regex::new(r"^[a-zA-Z0-9\-_]+$").ok();
        let file_re = regex::Regex::new(r"^[a-zA-Z0-9\-_.]+$").ok();
        let mut out: Vec<Volume> = Vec::new();
        let mut seen = HashSet::new();
        for node in self.list(root, "volumes", "volume") {
            let name = self.string(node, "name");
            if name.is_empty() {
                self.err(node, "volume name is empty: add `name: <name>`");
                continue;
            }
            if !name_re.as_ref().is_some_and(|r| r.is_match(&name)) {
                self.err(
                    node,
                    format!(
                        "volume name {name:?} is not well formed. Only use alphanumeric and - _"
                    ),
                );
                continue;
            }
            let mut secret = BTreeMap::new();
            match node.get("secret") {
                None => {
                    self.err(node, format!("volume {name}: currently only support for source type secret (add a `secret:` mapping of file names to base64 values)"));
                    continue;
                }
                Some(s) => match &s.kind {
                    Kind::Map(pairs) if !pairs.is_empty() => {
                        for (k, v) in pairs {
                            let key = k.text().unwrap_or_default().to_string();
                            if key.is_empty() {
                                self.err(k, "secret name provided for value is empty");
                            } else if !file_re.as_ref().is_some_and(|r| r.is_match(&key)) {
                                self.err(k, format!("file name, {key}, is not well formed. Only use alphanumeric and - _ ."));
                            }
                            let value = if v.is_null() {
                                String::new()
                            } else {
                                v.text().unwrap_or_default().to_string()
                            };
                            secret.insert(key, value);
                        }
                    }
                    _ => {
                        self.err(s, format!("volume {name}: secret is empty"));
                        continue;
                    }
                },
            }
            if !seen.insert(name.clone()) {
                self.err(node, format!("volume with duplicate name found: {name}"));
                continue;
            }
            out.push(Volume { name, secret });
        }
        out
    }

    fn networks(&mut self, root: &Node) -> Vec<Network> {
        let mut out = Vec::new();
        for node in self.list(root, "networks", "network") {
            out.push(Network {
                name: self.string(node, "name"),
                driver: self.string(node, "driver"),
                ipv6: self.boolean(node, "ipv6"),
                skip_creation: self.boolean(node, "skipCreation"),
                is_default: self.boolean(node, "isDefault"),
            });
        }
        out
    }

    /// Decodes and normalises the whole task.
    pub fn task(&mut self, root: Option<&Node>) -> Plan {
        let empty = Node {
            kind: Kind::Map(Vec::new()),
            mark: crate::yaml::Mark { line: 1, col: 0 },
        };
        let root = match root {
            Some(r) if matches!(r.kind, Kind::Map(_)) => r,
            Some(r) if r.is_null() => &empty,
            Some(r) => {
                self.unmarshal_err(
                    "task",
                    r,
                    "a task",
                    "the file must be a YAML mapping with `version`, `steps`, ...",
                );
                &empty
            }
            None => &empty,
        };
        let mut version = self.string(root, "version");
        if version.is_empty() {
            version = "v1.0.0".into();
        }
        if !VALID_VERSIONS
            .iter()
            .any(|v| v.eq_ignore_ascii_case(&version))
        {
            let node = root.get("version").unwrap_or(root);
            self.err(node, format!("invalid version specified: {version:?}, the current version is \"v1.0.0\" (use v1.0.0 or v1.1.0)"));
        }
        let step_timeout = self.int(root, "stepTimeout");
        if step_timeout > MAX_STEP_TIMEOUT as i64 {
            self.err(
                root.get("stepTimeout").unwrap_or(root),
                format!("stepTimeout is {step_timeout}s; at most {MAX_STEP_TIMEOUT}s (8 hours) is allowed"),
            );
        }
        let step_timeout = if step_timeout <= 0 {
            DEFAULT_STEP_TIMEOUT
        } else {
            step_timeout as u64
        };
        let working_directory = self.string(root, "workingDirectory");
        let raw_env = self.strings(root, "env");
        let mut env = Vec::new();
        for e in &raw_env {
            for piece in e.split(',') {
                if !piece.contains('=') {
                    let node = root.get("env").unwrap_or(root);
                    self.err(node, format!("cannot parse task environment variable {piece} correctly: write KEY=value (task-level entries are also split on ',')"));
                }
                env.push(piece.to_string());
            }
        }
        let secrets = self.secrets(root);
        let volumes = self.volumes(root);
        let mut networks = self.networks(root);
        let mut default_network = networks
            .iter()
            .rev()
            .find(|n| n.is_default)
            .map(|n| n.name.clone())
            .unwrap_or_default();
        if root.get("networks").is_none_or(|n| n.is_null()) && networks.is_empty() {
            networks.push(Network {
                name: DEFAULT_NETWORK.into(),
                driver: "bridge".into(),
                ipv6: false,
                skip_creation: false,
                is_default: true,
            });
            default_network = DEFAULT_NETWORK.into();
        }
        let ctx = StepCtx {
            step_timeout,
            working_directory: &working_directory,
            env: &env,
            default_network: &default_network,
            volume_names: volumes.iter().map(|v| v.name.as_str()).collect(),
        };
        let steps = self.steps(root, &ctx);
        Plan {
            version,
            step_timeout,
            working_directory,
            env,
            networks,
            default_network,
            secrets,
            volumes,
            aliases_enabled: self.loaded.aliases_enabled,
            steps,
        }
    }

    fn steps(&mut self, root: &Node, ctx: &StepCtx<'_>) -> Vec<Step> {
        let nodes = self.list(root, "steps", "step");
        if nodes.len() > MAX_STEPS {
            let at = root.get("steps").unwrap_or(root);
            self.err(
                at,
                format!(
                    "the task has {} steps; at most {MAX_STEPS} are allowed",
                    nodes.len()
                ),
            );
            return Vec::new();
        }
        let mut steps: Vec<Step> = Vec::new();
        let mut ids: HashSet<String> = HashSet::new();
        let mut plan_bytes = 0usize;
        for (index, node) in nodes.iter().enumerate() {
            let step = self.step(node, index, ctx);
            plan_bytes = plan_bytes.saturating_add(step.text_bytes());
            if plan_bytes > MAX_PLAN_BYTES {
                self.err(
                    node,
                    format!("the task is too large: its steps exceed {MAX_PLAN_BYTES} bytes (every step copies the task-level env, working directory and network)"),
                );
                return steps;
            }
            // Graph construction (§3.1): the id becomes a vertex, then edges from earlier vertices.
            let id = step.id.clone();
            if id == "acb_root" {
                self.err(
                    node,
                    "acb_root is a reserved ID, it can't be used: choose another step id",
                );
            } else if ids.contains(&id) {
                let at = node.get("id").unwrap_or(node);
                self.err(at, format!("{id} already exists as a vertex: step ids must be unique (the default id of step {index} is acb_step_{index})"));
            }
            for dep in &step.depends_on {
                if dep == &id {
                    continue;
                }
                if !ids.contains(dep) {
                    let at = node.get("when").unwrap_or(node);
                    self.err(at, format!("{dep} does not exist as a vertex [from: {dep}, to: {id}]: `when` may only name steps defined earlier in the file (unknown id, forward reference or cycle)"));
                }
            }
            ids.insert(id);
            steps.push(step);
        }
        // Default dependency: the previous step in the file.
        for i in 0..steps.len() {
            if steps[i].when.is_empty() && i > 0 {
                steps[i].depends_on = vec![steps[i - 1].id.clone()];
            }
        }
        steps
    }

    fn step(&mut self, node: &Node, index: usize, ctx: &StepCtx<'_>) -> Step {
        let has = |k: &str| node.get(k).is_some_and(|v| !v.is_null());
        let build = self.string(node, "build");
        let cmd = self.string(node, "cmd");
        let push = self.strings(node, "push");
        let mut id = self.string(node, "id");
        if id.is_empty() {
            id = format!("acb_step_{index}");
        }
        let retries = self.int(node, "retries");
        let repeat = self.int(node, "repeat");
        if retries < 0 {
            self.err(
                node.get("retries").unwrap_or(node),
                "step must specify retries >= 0",
            );
        }
        if repeat < 0 {
            self.err(
                node.get("repeat").unwrap_or(node),
                "step must specify repeat >= 0",
            );
        }
        if retries > MAX_RETRIES {
            self.err(
                node.get("retries").unwrap_or(node),
                format!("retries is {retries}; at most {MAX_RETRIES} are allowed"),
            );
        }
        if repeat > MAX_REPEAT {
            self.err(
                node.get("repeat").unwrap_or(node),
                format!("repeat is {repeat}; at most {MAX_REPEAT} are allowed"),
            );
        }
        let types = [
            has("build") && !build.is_empty(),
            has("cmd") && !cmd.is_empty(),
            !push.is_empty(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if types > 1 {
            self.err(node, format!("step {id}: step must only contain a single build, cmd, or push property: split it into several steps"));
        }
        if id.chars().any(char::is_whitespace) {
            self.err(
                node.get("id").unwrap_or(node),
                format!("step ID cannot contain spaces: {id:?}"),
            );
        }
        if types == 0 {
            self.err(
                node,
                format!("step {id}: step is missing a cmd, build, or push property"),
            );
        }
        let kind = if !build.is_empty() {
            StepKind::Build(parse_build(&build))
        } else if !cmd.is_empty() {
            StepKind::Cmd(CmdStep {
                cmd: self.expand_cmd_alias(&cmd),
            })
        } else {
            StepKind::Push(PushStep {
                images: normalise_push_names(&push),
            })
        };
        // Volume mounts.
        let mut volume_mounts = Vec::new();
        let mut mount_paths = HashSet::new();
        let mount_nodes = self.list(node, "volumeMounts", "volumeMount");
        if !mount_nodes.is_empty() && matches!(kind, StepKind::Push(_)) {
            self.err(node, "invalid use of Mounts. Mounts must have unique container paths and only used for cmd or build steps");
        }
        for m in mount_nodes {
            let vm = VolumeMount {
                name: self.string(m, "name"),
                mount_path: self.string(m, "mountPath"),
            };
            if vm.name.is_empty() || vm.mount_path.is_empty() {
                self.err(
                    m,
                    "mount name or mount path is empty: give both `name` and `mountPath`",
                );
                continue;
            }
            if !mount_paths.insert(vm.mount_path.clone()) {
                self.err(
                    m,
                    format!(
                        "mount with duplicate container file path found: {}",
                        vm.mount_path
                    ),
                );
                continue;
            }
            if !ctx.volume_names.contains(vm.name.as_str()) {
                self.err(m, format!("mount name, {}, does not correspond to a volume: declare it under the task's `volumes`", vm.name));
            }
            volume_mounts.push(vm);
        }
        let when_raw = self.strings(node, "when");
        let when_dedup = dedup_keep_first(when_raw.clone());
        if when_dedup.iter().any(|w| w == "-") && when_dedup.len() > 1 {
            self.err(node.get("when").unwrap_or(node), format!("step {id}: step cannot contain other IDs in when if the immediate execution token is specified: use either [\"-\"] or a list of ids"));
        }
        if when_dedup.contains(&id) {
            self.err(
                node.get("when").unwrap_or(node),
                format!("Step ID: {id} is self-referenced: remove it from its own `when`"),
            );
        }
        let cache = self.string(node, "cache");
        let cache_on = cache.eq_ignore_ascii_case("enabled");
        if !cache.is_empty() && !cache_on && !cache.eq_ignore_ascii_case("disabled") {
            self.err(
                node.get("cache").unwrap_or(node),
                "invalid value for cache property. Valid values are 'enabled', 'disabled'",
            );
        }
        let kind = match kind {
            StepKind::Build(mut b) => {
                b.cache = cache_on;
                StepKind::Build(b)
            }
            other => other,
        };
        let depends_on = if when_dedup.iter().any(|w| w == "-") {
            Vec::new()
        } else {
            when_dedup.iter().filter(|w| **w != id).cloned().collect()
        };
        // Env merge (§2.3).
        let step_env = self.strings(node, "env");
        if !ctx.env.is_empty() {
            for e in &step_env {
                if !e.contains('=') {
                    self.err(
                        node.get("env").unwrap_or(node),
                        format!(
                            "cannot parse step environment variable {e} correctly: write KEY=value"
                        ),
                    );
                }
            }
        }
        let step_keys: HashSet<&str> = step_env
            .iter()
            .map(|e| e.split_once('=').map(|(k, _)| k).unwrap_or(e))
            .collect();
        let mut env = step_env.clone();
        for e in ctx.env {
            let k = e.split_once('=').map(|(k, _)| k).unwrap_or(e);
            if !step_keys.contains(k) {
                env.push(e.clone());
            }
        }
        let wd = self.string(node, "workingDirectory");
        let wd = if wd.is_empty() {
            ctx.working_directory.to_string()
        } else {
            wd
        };
        let network = self.string(node, "network");
        let network = if network.is_empty() {
            ctx.default_network.to_string()
        } else {
            network
        };
        let timeout = self.int(node, "timeout");
        let retry_delay = self.int(node, "retryDelay");
        let start_delay = self.int(node, "startDelay");
        let cmd_download_retries = self.int(node, "cmdDownloadRetries");
        let cmd_download_retry_delay = self.int(node, "cmdDownloadRetryDelay");
        if timeout > MAX_STEP_TIMEOUT as i64 {
            self.err(
                node.get("timeout").unwrap_or(node),
                format!("timeout is {timeout}s; at most {MAX_STEP_TIMEOUT}s (8 hours) is allowed"),
            );
        }
        for (key, value) in [
            ("retryDelay", retry_delay),
            ("startDelay", start_delay),
            ("cmdDownloadRetryDelay", cmd_download_retry_delay),
        ] {
            if value > MAX_DELAY_SECONDS {
                self.err(
                    node.get(key).unwrap_or(node),
                    format!("{key} is {value}s; at most {MAX_DELAY_SECONDS}s is allowed"),
                );
            }
        }
        if cmd_download_retries > MAX_RETRIES {
            self.err(
                node.get("cmdDownloadRetries").unwrap_or(node),
                format!("cmdDownloadRetries is {cmd_download_retries}; at most {MAX_RETRIES} are allowed"),
            );
        }
        let line = self.pos(node).0;
        Step {
            id,
            kind,
            when: when_raw,
            depends_on,
            env,
            entry_point: self.string(node, "entryPoint"),
            working_directory: normalise_working_directory(&wd),
            user: self.string(node, "user"),
            network,
            isolation: self.string(node, "isolation"),
            cpus: self.string(node, "cpus"),
            ports: self.strings(node, "ports"),
            expose: self.strings(node, "expose"),
            volume_mounts,
            timeout: if timeout <= 0 {
                ctx.step_timeout
            } else {
                timeout as u64
            },
            retries: retries.clamp(0, u32::MAX as i64) as u32,
            retry_delay: if retry_delay <= 0 {
                DEFAULT_RETRY_DELAY
            } else {
                retry_delay as u64
            },
            retry_on_errors: self.strings(node, "retryOnErrors"),
            repeat: repeat.clamp(0, u32::MAX as i64) as u32,
            start_delay: start_delay.max(0) as u64,
            cmd_download_retries: cmd_download_retries.clamp(0, u32::MAX as i64) as u32,
            cmd_download_retry_delay: cmd_download_retry_delay.max(0) as u64,
            detach: self.boolean(node, "detach"),
            keep: self.boolean(node, "keep"),
            ignore_errors: self.boolean(node, "ignoreErrors"),
            privileged: self.boolean(node, "privileged"),
            pull: self.boolean(node, "pull"),
            disable_working_directory_override: self
                .boolean(node, "disableWorkingDirectoryOverride"),
            line,
        }
    }

    /// P8: replaces the first word of a cmd when it is an alias key (aliases enabled only).
    fn expand_cmd_alias(&self, cmd: &str) -> String {
        if !self.loaded.aliases_enabled {
            return cmd.to_string();
        }
        let trimmed = cmd.trim();
        let mut pieces: Vec<&str> = trimmed.split(' ').collect();
        match pieces.first().and_then(|f| self.loaded.aliases.get(*f)) {
            Some(rep) => {
                pieces[0] = rep;
                pieces.join(" ")
            }
            None => cmd.to_string(),
        }
    }
}

struct StepCtx<'a> {
    step_timeout: u64,
    working_directory: &'a str,
    env: &'a [String],
    default_network: &'a str,
    volume_names: HashSet<&'a str>,
}

fn is_guid(s: &str) -> bool {
    let t = s.trim_start_matches('{').trim_end_matches('}');
    let t = t.strip_prefix("urn:uuid:").unwrap_or(t);
    let hex: String = t.chars().filter(|c| *c != '-').collect();
    let groups: Vec<usize> = t.split('-').map(str::len).collect();
    hex.len() == 32
        && hex.chars().all(|c| c.is_ascii_hexdigit())
        && (groups == [8, 4, 4, 4, 12] || groups == [32])
}

fn valid_keyvault_url(u: &str) -> bool {
    let Some(rest) = u.strip_prefix("https://") else {
        return false;
    };
    let rest = rest.trim_end_matches('/');
    let mut parts = rest.split('/');
    let host = parts.next().unwrap_or_default();
    let segs: Vec<&str> = parts.collect();
    host.contains('.')
        && (segs.len() == 2 || segs.len() == 3)
        && segs[0] == "secrets"
        && segs.iter().all(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_parse_pinned() {
        let b = parse_build(
            "-f Dockerfile -t {{.Run.ID}}:latest https://github.com/Azure/acr-builder.git",
        );
        assert_eq!(
            (b.dockerfile.as_str(), b.target.as_str(), b.context.as_str()),
            ("Dockerfile", "", "https://github.com/Azure/acr-builder.git")
        );
        let b = parse_build(
            "https://github.com/Azure/acr-builder.git#master:blah -f Dockerfile -t foo:bar",
        );
        assert_eq!(
            b.context,
            "https://github.com/Azure/acr-builder.git#master:blah"
        );
        assert_eq!(b.tags, vec!["foo:bar"]);
        assert_eq!(parse_build(".").context, ".");
        let b = parse_build("--file src/Dockerfile . -t foo:bar");
        assert_eq!(
            (b.dockerfile.as_str(), b.context.as_str()),
            ("src/Dockerfile", ".")
        );
        let b = parse_build("-t foo --target build https://x.git#:HelloWorld");
        assert_eq!(b.target, "build");
        let b = parse_build("--no-cache https://x.git");
        assert_eq!(b.context, ".");
        assert!(b.no_cache);
    }

    #[test]
    fn push_and_workdir() {
        let v: Vec<String> = [
            "a/b",
            "a/b:latest",
            "localhost:5000/x",
            "r.io/x@sha256:abc",
            "a/b",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            normalise_push_names(&v),
            vec!["a/b:latest", "localhost:5000/x", "r.io/x@sha256:abc"]
        );
        assert_eq!(normalise_working_directory(""), "/workspace");
        assert_eq!(normalise_working_directory("pullDir"), "/workspace/pullDir");
        assert_eq!(normalise_working_directory("/abs/dir"), "/abs/dir");
        assert_eq!(normalise_working_directory("../up"), "/up");
    }

    #[test]
    fn guids_and_vaults() {
        assert!(is_guid("c3b0a4c2-1111-2222-3333-444455556666"));
        assert!(!is_guid("nope"));
        assert!(valid_keyvault_url("https://v.vault.azure.net/secrets/name"));
        assert!(valid_keyvault_url(
            "https://v.vault.azure.net/secrets/name/version/"
        ));
        assert!(!valid_keyvault_url("http://v.vault.azure.net/secrets/name"));
        assert!(!valid_keyvault_url("https://v.vault.azure.net/keys/name"));
    }
}

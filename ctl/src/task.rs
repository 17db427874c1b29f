//! `kiln task validate|render|plan`: offline commands that load a task file with the
//! `kiln-taskfile` crate and print diagnostics, the rendered text or the normalised plan.
//! All file reading happens here; the crate itself is pure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use kiln_taskfile::{Diagnostics, Inputs, RunVars, StepKind};

/// Offline task-file commands (no farm needed).
#[derive(clap::Subcommand, Debug)]
pub enum TaskCommand {
    /// Checks a task file: prints `ok` or every problem as `file:line:col: message`.
    Validate(ValidateArgs),
    /// Prints the task file's text after comments, aliases and templates.
    Render(RenderArgs),
    /// Prints the normalised plan (steps, dependencies, defaults).
    Plan(PlanArgs),
}

#[derive(clap::Args, Debug)]
pub struct ValidateArgs {
    /// The task file (e.g. acb.yaml).
    pub file: PathBuf,
    #[command(flatten)]
    pub inputs: InputArgs,
}

#[derive(clap::Args, Debug)]
pub struct RenderArgs {
    /// The task file (e.g. acb.yaml).
    pub file: PathBuf,
    #[command(flatten)]
    pub inputs: InputArgs,
}

#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    /// The task file (e.g. acb.yaml).
    pub file: PathBuf,
    #[command(flatten)]
    pub inputs: InputArgs,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = PlanFormat::Table)]
    pub output: PlanFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanFormat {
    Json,
    Table,
}

/// Values for the template variables of one evaluation.
#[derive(clap::Args, Debug, Default)]
pub struct InputArgs {
    /// {{.Run.ID}}
    #[arg(long)]
    pub run_id: Option<String>,
    /// {{.Run.Registry}} (login server, e.g. localhost:5000)
    #[arg(long)]
    pub registry: Option<String>,
    /// {{.Run.Date}} source, RFC 3339 (e.g. 2024-05-03T04:33:42Z)
    #[arg(long)]
    pub date: Option<String>,
    /// {{.Run.Commit}}
    #[arg(long)]
    pub commit: Option<String>,
    /// {{.Run.Branch}}
    #[arg(long)]
    pub branch: Option<String>,
    /// {{.Run.Repository}}
    #[arg(long)]
    pub repository: Option<String>,
    /// {{.Run.GitTag}}
    #[arg(long)]
    pub git_tag: Option<String>,
    /// {{.Run.OS}}
    #[arg(long)]
    pub os: Option<String>,
    /// {{.Run.Architecture}}
    #[arg(long)]
    pub arch: Option<String>,
    /// {{.Run.OSVersion}}
    #[arg(long)]
    pub os_version: Option<String>,
    /// {{.Run.TaskName}}
    #[arg(long)]
    pub task_name: Option<String>,
    /// {{.Run.TriggeredBy}}
    #[arg(long)]
    pub triggered_by: Option<String>,
    /// {{.Run.SharedVolume}}
    #[arg(long)]
    pub shared_volume: Option<String>,
    /// A YAML file of values ({{.Values.x}}).
    #[arg(long)]
    pub values: Option<PathBuf>,
    /// A value KEY=VALUE (repeatable; overrides the values file).
    #[arg(long = "set", value_name = "K=V")]
    pub set: Vec<String>,
    /// A secret value ID=VALUE for a declared secret (repeatable).
    #[arg(long = "secret", value_name = "ID=VALUE")]
    pub secret: Vec<String>,
    /// Print secret values instead of `***`.
    #[arg(long)]
    pub show_secrets: bool,
}

impl InputArgs {
    fn to_inputs(&self) -> anyhow::Result<Inputs> {
        let s = |v: &Option<String>| v.clone().unwrap_or_default();
        let date_ms = match &self.date {
            Some(d) => kiln_taskfile::parse_rfc3339_ms(d).map_err(anyhow::Error::msg)?,
            None => 0,
        };
        let values_yaml = match &self.values {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read values file {}", p.display()))?,
            ),
            None => None,
        };
        let mut set = Vec::new();
        for kv in &self.set {
            let Some((k, v)) = kv.split_once('=') else {
                bail!(
                    "failed to parse --set data; invalid format, no = assignment found in {kv:?}"
                );
            };
            if k.is_empty() {
                bail!("failed to parse --set data; expected a key=val format, got {kv:?}");
            }
            set.push((k.to_string(), v.to_string()));
        }
        let mut secrets = BTreeMap::new();
        for kv in &self.secret {
            // The value is never echoed back in errors.
            let Some((k, v)) = kv.split_once('=') else {
                bail!("--secret expects ID=VALUE (no `=` found)");
            };
            if k.is_empty() {
                bail!("--secret expects ID=VALUE (the id is empty)");
            }
            secrets.insert(k.to_string(), v.to_string());
        }
        Ok(Inputs {
            run: RunVars {
                id: s(&self.run_id),
                registry: s(&self.registry),
                registry_name: String::new(),
                date_ms,
                os: s(&self.os),
                architecture: s(&self.arch),
                os_version: s(&self.os_version),
                commit: s(&self.commit),
                branch: s(&self.branch),
                repository: s(&self.repository),
                git_tag: s(&self.git_tag),
                task_name: s(&self.task_name),
                triggered_by: s(&self.triggered_by),
                shared_volume: s(&self.shared_volume),
                ..RunVars::default()
            },
            values_yaml,
            set,
            secrets,
        })
    }

    fn mask<'a>(&self, inputs: &'a Inputs) -> Option<&'a BTreeMap<String, String>> {
        if self.show_secrets {
            None
        } else {
            Some(&inputs.secrets)
        }
    }
}

fn read(file: &Path) -> anyhow::Result<(String, String)> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read task file {}", file.display()))?;
    Ok((file.display().to_string(), text))
}

fn masked(text: &str, mask: Option<&BTreeMap<String, String>>) -> String {
    match mask {
        Some(m) => kiln_taskfile::mask_secrets(text, m),
        None => text.to_string(),
    }
}

fn print_diagnostics(d: &Diagnostics, mask: Option<&BTreeMap<String, String>>) {
    for diag in &d.0 {
        eprintln!("{}", masked(&diag.to_string(), mask));
    }
}

/// Runs one `kiln task` command.
pub fn run(cmd: TaskCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TaskCommand::Validate(a) => {
            let (name, text) = read(&a.file)?;
            let inputs = a.inputs.to_inputs()?;
            // Not errors, so on stderr: stdout keeps the verdict scripts read.
            for w in kiln_taskfile::compatibility_warnings(&name, &text) {
                eprintln!("warning: {w} (kiln differs from ACR here)");
            }
            match kiln_taskfile::plan(&name, &text, &inputs) {
                Ok(_) => {
                    println!("ok");
                    Ok(ExitCode::SUCCESS)
                }
                Err(d) => {
                    // Diagnostics go to stdout so scripts can capture them with the verdict.
                    for diag in &d.0 {
                        println!("{}", masked(&diag.to_string(), a.inputs.mask(&inputs)));
                    }
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        TaskCommand::Render(a) => {
            let (name, text) = read(&a.file)?;
            let inputs = a.inputs.to_inputs()?;
            match kiln_taskfile::render(&name, &text, &inputs) {
                Ok(r) => {
                    print!("{}", masked(&r, a.inputs.mask(&inputs)));
                    if !r.ends_with('\n') {
                        println!();
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(d) => {
                    print_diagnostics(&d, a.inputs.mask(&inputs));
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        TaskCommand::Plan(a) => {
            let (name, text) = read(&a.file)?;
            let inputs = a.inputs.to_inputs()?;
            let mask = a.inputs.mask(&inputs);
            let result = kiln_taskfile::plan_with_rendered(&name, &text, &inputs);
            match (a.output, result) {
                (PlanFormat::Json, Ok((plan, rendered))) => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&plan.to_json(&rendered, mask))?
                    );
                    Ok(ExitCode::SUCCESS)
                }
                (PlanFormat::Json, Err(d)) => {
                    println!("{}", serde_json::to_string_pretty(&d.to_json(mask))?);
                    Ok(ExitCode::FAILURE)
                }
                (PlanFormat::Table, Ok((plan, _))) => {
                    print_table(&plan, mask);
                    Ok(ExitCode::SUCCESS)
                }
                (PlanFormat::Table, Err(d)) => {
                    print_diagnostics(&d, mask);
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

fn print_table(plan: &kiln_taskfile::Plan, mask: Option<&BTreeMap<String, String>>) {
    println!(
        "version: {}  stepTimeout: {}s",
        plan.version, plan.step_timeout
    );
    let rows: Vec<[String; 5]> = plan
        .steps
        .iter()
        .map(|s| {
            let what = match &s.kind {
                StepKind::Build(b) => b.args.clone(),
                StepKind::Cmd(c) => c.cmd.clone(),
                StepKind::Push(p) => p.images.join(" "),
            };
            let deps = if s.depends_on.is_empty() {
                "-".to_string()
            } else {
                s.depends_on.join(",")
            };
            [
                s.id.clone(),
                s.kind.type_name().to_string(),
                deps,
                format!("{}s", s.timeout),
                masked(what.trim(), mask),
            ]
        })
        .collect();
    let headers = ["ID", "TYPE", "WAITS FOR", "TIMEOUT", "WHAT"];
    let mut widths = headers.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: [&str; 5]| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i == 4 {
                out.push_str(c);
            } else {
                out.push_str(&format!("{:<w$}  ", c, w = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers);
    for r in &rows {
        line([&r[0], &r[1], &r[2], &r[3], &r[4]]);
    }
}

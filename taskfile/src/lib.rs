//! Pure loader and planner for ACR task files (`acb.yaml`, `acr-task.yaml`).
//!
//! The crate implements acb's processing pipeline phase by phase — comment stripping, version
//! sniff, `$` aliases, the secrets pre-pass, Go-template rendering, `<no value>` removal, YAML
//! decoding with yaml.v2's typing, defaults and the step graph — and returns either a normalised
//! [`Plan`] or [`Diagnostics`] that point at the original file.
//!
//! **Architecture invariant:** no I/O, no clock, no randomness, no async. Everything a result
//! depends on is an argument: the templates' `now` and the seed of their random functions too
//! ([`RunVars::render_time_ns`], [`RunVars::random_seed`]).

mod decode;
#[doc(hidden)]
pub mod fuzzing;
mod load;
pub mod plan;
mod quick;
pub mod template;
mod yaml;

use std::collections::BTreeMap;
use std::fmt;

pub use decode::{
    normalise_push_names, normalise_working_directory, parse_build, MAX_DELAY_SECONDS, MAX_REPEAT,
    MAX_RETRIES, MAX_STEP_TIMEOUT,
};
pub use load::{format_run_date, parse_rfc3339_ms};
pub use plan::{
    mask_secrets, BuildStep, CmdStep, Inputs, Network, Plan, PushStep, RunVars, SecretDecl, Step,
    StepKind, Volume, VolumeMount,
};
pub use quick::{parse_cmd, quick_build_task, quick_cmd_task, CmdInvocation, QuickBuild};

/// One problem, located in the original file (1-based line and column; 0 when unknown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: u32,
    pub column: u32,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// Every problem found in a task file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl Diagnostics {
    /// The first diagnostic (there is always at least one in an error).
    pub fn first(&self) -> Option<&Diagnostic> {
        self.0.first()
    }

    /// The JSON object `kiln task plan -o json` prints for an invalid task: the first problem's
    /// `error`, `line`, `column`, plus all of them under `errors`.
    pub fn to_json(&self, mask: Option<&BTreeMap<String, String>>) -> serde_json::Value {
        let m = |s: &str| match mask {
            Some(secrets) => mask_secrets(s, secrets),
            None => s.to_string(),
        };
        let first = self.0.first();
        serde_json::json!({
            "ok": false,
            "error": first.map(|d| m(&d.message)).unwrap_or_default(),
            "line": first.map(|d| d.line).unwrap_or(0),
            "column": first.map(|d| d.column).unwrap_or(0),
            "errors": self.0.iter().map(|d| serde_json::json!({
                "file": d.file, "line": d.line, "column": d.column, "message": m(&d.message),
            })).collect::<Vec<_>>(),
        })
    }
}

fn sort_diags(mut v: Vec<Diagnostic>) -> Diagnostics {
    v.sort_by_key(|d| (d.line, d.column));
    v.dedup();
    Diagnostics(v)
}

/// What the secrets pre-pass found: the declared secret ids and, when it rendered the file,
/// the rendered text and its parsed YAML. The main pass reuses these when no secret is visible
/// to it, because it would then render exactly the same text (a large file is not rendered
/// and parsed twice).
struct Prepass {
    ids: Vec<String>,
    done: Option<(load::Loaded, Parsed)>,
}

type Parsed = Result<Option<yaml::Node>, yaml::YamlError>;

/// P4: the secrets pre-pass. Finds the declared secret ids (none when the text does not
/// mention `secrets`), or returns the diagnostics of a failing pre-pass render.
fn secrets_prepass(file: &str, source: &str, inputs: &Inputs) -> Result<Prepass, Vec<Diagnostic>> {
    if !source.contains("secrets") {
        return Ok(Prepass {
            ids: Vec::new(),
            done: None,
        });
    }
    let mut diags = Vec::new();
    let Some(loaded) = load::load(file, source, inputs, &BTreeMap::new(), &mut diags) else {
        return Err(diags);
    };
    let parsed = yaml::parse(&loaded.rendered);
    let mut ids = Vec::new();
    let mut seen = std::collections::HashSet::new();
    // A YAML error is reported by the main pass, with the real secrets in place.
    if let Some(yaml::Kind::Seq(items)) = parsed
        .as_ref()
        .ok()
        .and_then(Option::as_ref)
        .and_then(|r| r.get("secrets"))
        .map(|s| &s.kind)
    {
        for it in items {
            if let Some(id) = it.get("id").and_then(|i| i.text()) {
                if !id.is_empty() && seen.insert(id) {
                    ids.push(id.to_string());
                }
            }
        }
    }
    Ok(Prepass {
        ids,
        done: Some((loaded, parsed)),
    })
}

/// P4 and P5: the pre-pass, then the text phases with the declared secrets visible.
fn load_visible(
    file_name: &str,
    source: &str,
    inputs: &Inputs,
) -> Result<(load::Loaded, Option<Parsed>), Diagnostics> {
    let pre = secrets_prepass(file_name, source, inputs).map_err(sort_diags)?;
    let visible: BTreeMap<String, String> = inputs
        .secrets
        .iter()
        .filter(|(k, _)| pre.ids.contains(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if visible.is_empty() {
        if let Some((loaded, parsed)) = pre.done {
            return Ok((loaded, Some(parsed)));
        }
    }
    let mut diags = Vec::new();
    match load::load(file_name, source, inputs, &visible, &mut diags) {
        Some(loaded) => Ok((loaded, None)),
        None => Err(sort_diags(diags)),
    }
}

/// Runs the whole pipeline; returns the plan and the rendered text.
pub fn plan_with_rendered(
    file_name: &str,
    source: &str,
    inputs: &Inputs,
) -> Result<(Plan, String), Diagnostics> {
    let (loaded, parsed) = load_visible(file_name, source, inputs)?;
    let parsed = parsed.unwrap_or_else(|| yaml::parse(&loaded.rendered));
    let root = match parsed {
        Ok(r) => r,
        Err(e) => {
            let pos = loaded.map.pos_mark(&loaded.rendered, e.mark);
            let msg = format!("invalid YAML after templating: {}", e.message);
            return Err(sort_diags(vec![load::diag(file_name, pos, msg)]));
        }
    };
    let mut dec = decode::Decoder {
        file: file_name,
        loaded: &loaded,
        diags: Vec::new(),
    };
    let plan = dec.task(root.as_ref());
    if !dec.diags.is_empty() {
        return Err(sort_diags(dec.diags));
    }
    Ok((plan, loaded.rendered))
}

/// Loads, renders and plans a task file.
pub fn plan(file_name: &str, source: &str, inputs: &Inputs) -> Result<Plan, Diagnostics> {
    plan_with_rendered(file_name, source, inputs).map(|(p, _)| p)
}

/// The task file's text after comment stripping, aliases and templating.
pub fn render(file_name: &str, source: &str, inputs: &Inputs) -> Result<String, Diagnostics> {
    load_visible(file_name, source, inputs).map(|(loaded, _)| loaded.rendered)
}

/// Warnings for template functions whose kiln behaviour knowingly differs from ACR's (see
/// [`template::DIFFERS_FROM_ACR`]), located in the original file. Not errors: the task may
/// still render the same on both.
pub fn compatibility_warnings(file_name: &str, source: &str) -> Vec<Diagnostic> {
    let (text, line_map) = load::strip_comments(source);
    template::compatibility_notes(&text)
        .into_iter()
        .map(|(pos, name, note)| {
            let before = &text[..pos.min(text.len())];
            let line = before.matches('\n').count();
            let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
            let orig_line = line_map.get(line).copied().unwrap_or(line) + 1;
            Diagnostic {
                file: file_name.to_string(),
                line: orig_line as u32,
                column: col as u32,
                message: format!("{name}: {note}"),
            }
        })
        .collect()
}

/// Ids of the secrets a task file declares (empty when it declares none or cannot be read).
pub fn declared_secrets(file_name: &str, source: &str) -> Vec<String> {
    secrets_prepass(file_name, source, &Inputs::default())
        .map(|p| p.ids)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Inputs {
        Inputs {
            run: RunVars {
                id: "cf19".into(),
                registry: "myregistry.azurecr.io".into(),
                ..RunVars::default()
            },
            ..Inputs::default()
        }
    }

    #[test]
    fn plans_a_simple_file() {
        let src = "version: v1.1.0\nsteps:\n  - build: -t $Registry/hello:$ID -f hello.dockerfile .\n  - cmd: $Registry/hello:{{.Run.ID}}\n  - push: [\"{{.Run.Registry}}/hello:{{.Run.ID}}\"]\n    when: [\"-\"]\n";
        let p = plan("acb.yaml", src, &inputs()).unwrap();
        assert_eq!(p.steps.len(), 3);
        assert_eq!(p.steps[0].id, "acb_step_0");
        let StepKind::Build(b) = &p.steps[0].kind else {
            panic!("build")
        };
        assert_eq!(b.tags, vec!["myregistry.azurecr.io/hello:cf19"]);
        assert_eq!(b.dockerfile, "hello.dockerfile");
        assert_eq!(p.steps[1].depends_on, vec!["acb_step_0"]);
        assert!(p.steps[2].depends_on.is_empty());
        assert_eq!(p.steps[1].network, "acb_default_network");
        assert_eq!(p.steps[1].timeout, 600);
        assert_eq!(p.steps[1].retry_delay, 5);
    }

    #[test]
    fn reports_all_problems_with_positions() {
        let src = "# comment\nsteps:\n  - id: a\n    cmd: x\n    when: [b]\n  - id: a\n    cmd: y\n    retries: \"3\"\n";
        let d = plan("f.yaml", src, &Inputs::default()).unwrap_err();
        let text = d.to_string();
        assert_eq!(d.0.len(), 3, "{text}");
        assert!(
            text.contains("f.yaml:5:11: b does not exist as a vertex"),
            "{text}"
        );
        assert!(
            text.contains("f.yaml:6:9: a already exists as a vertex"),
            "{text}"
        );
        assert!(
            text.contains("f.yaml:8:14: `retries`: cannot unmarshal !!str `3` into int"),
            "{text}"
        );
    }

    #[test]
    fn compatibility_warnings_point_at_the_function() {
        let src = "# {{ keys . }}\nversion: v1.1.0\nsteps:\n  - cmd: echo {{ keys .Values | join \",\" }} {{ env \"HOME\" }}\n";
        let w = compatibility_warnings("acb.yaml", src);
        assert_eq!(w.len(), 2, "{w:?}");
        assert_eq!((w[0].line, w[0].column), (4, 18));
        assert!(w[0].message.starts_with("keys: "), "{}", w[0].message);
        assert!(w[1].message.starts_with("env: kiln refuses it"));
        assert!(
            compatibility_warnings("acb.yaml", "steps:\n  - cmd: {{ upper \"a\" }}\n").is_empty()
        );
    }

    #[test]
    fn template_error_points_at_original() {
        let src = "# c\n# c\nsteps:\n  - cmd: {{.Values.a.b}}\n";
        let d = plan("f.yaml", src, &Inputs::default()).unwrap_err();
        assert_eq!((d.0[0].line, d.0[0].column), (4, 12), "{d}");
        assert!(d.0[0]
            .message
            .contains("nil pointer evaluating interface {}.b"));
    }

    #[test]
    fn secrets_prepass_and_declared() {
        let src = "secrets:\n  - id: pw\n    keyvault: https://v.vault.azure.net/secrets/pw\nsteps:\n  - cmd: img {{.Secrets.pw}} {{.Secrets.other}}\n";
        assert_eq!(declared_secrets("f", src), vec!["pw"]);
        let mut i = Inputs::default();
        i.secrets.insert("pw".into(), "s3cret".into());
        i.secrets.insert("other".into(), "nope".into());
        let p = plan("f", src, &i).unwrap();
        let StepKind::Cmd(c) = &p.steps[0].kind else {
            panic!("cmd")
        };
        assert_eq!(c.cmd, "img s3cret");
    }

    #[test]
    fn alias_expansion_too_large_is_a_diagnostic() {
        let src = format!(
            "version: v1.1.0\nalias:\n  values:\n    a: '{{{{ repeat 3000000 \"x\" }}}}'\nsteps:\n- cmd: {}\n",
            "$a".repeat(2000)
        );
        let d = plan("f.yaml", &src, &Inputs::default()).unwrap_err();
        assert!(d.0[0].message.contains("the result exceeds"), "{d}");
    }

    #[test]
    fn many_steps_plan_in_linear_time() {
        // The most steps allowed, each naming the first: ids, `when` and positions must not be quadratic.
        let mut src = String::from("steps:\n- {id: s0, cmd: x}\n");
        for i in 1..1_000 {
            src.push_str(&format!("- {{id: s{i}, cmd: x, when: [s0]}}\n"));
        }
        let p = plan("f.yaml", &src, &Inputs::default()).unwrap();
        assert_eq!(p.steps.len(), 1_000);
        assert_eq!(p.steps[999].depends_on, vec!["s0"]);
        let more = format!("{src}- cmd: y\n");
        let d = plan("f.yaml", &more, &Inputs::default()).unwrap_err();
        assert_eq!(
            d.0[0].message,
            "the task has 1001 steps; at most 1000 are allowed"
        );
        assert_eq!((d.0[0].line, d.0[0].column), (2, 3));
        let src = src.replacen("{id: s0, cmd: x}", "{id: s0, cmd: x, when: [s0]}", 1);
        let d = plan("f.yaml", &src, &Inputs::default()).unwrap_err();
        assert_eq!(d.0.len(), 1, "only step s0 names itself: {d}");
        assert_eq!((d.0[0].line, d.0[0].column), (2, 26));
        // Every step copies the task-level working directory.
        let src = "workingDirectory: '{{ repeat 2000000 \"x\" }}'\nsteps:\n{{range 100}}- cmd: a\n{{end}}";
        let d = plan("f.yaml", src, &Inputs::default()).unwrap_err();
        assert!(d.0[0].message.contains("the task is too large"), "{d}");
        assert_eq!(d.0.len(), 1);
    }

    #[test]
    fn diagnostics_are_capped() {
        let src = "env: [\"{{ range $i := until 5000 }}x{{ $i }},{{ end }}\"]\nsteps:\n- cmd: x\n";
        let d = plan("f.yaml", src, &Inputs::default()).unwrap_err();
        assert_eq!(d.0.len(), decode::MAX_DIAGNOSTICS);
    }

    #[test]
    fn quick_tasks_round_trip() {
        let qb = QuickBuild {
            tags: vec!["app:{{.Run.ID}}".into(), "yes".into()],
            build_args: vec!["A=hello world".into()],
            registry: "localhost:5000".into(),
            push: true,
            ..QuickBuild::default()
        };
        let text = quick_build_task(&qb);
        let p = plan("quick.yaml", &text, &inputs()).unwrap();
        assert_eq!(p.steps[0].id, "build");
        assert_eq!(p.steps[0].timeout, 28800);
        let StepKind::Build(b) = &p.steps[0].kind else {
            panic!("build")
        };
        assert_eq!(
            b.tags,
            vec!["localhost:5000/app:cf19", "localhost:5000/yes"]
        );
        assert_eq!(p.steps[1].id, "push");
        assert_eq!(p.steps[1].timeout, 3600);
        assert_eq!(p.steps[1].depends_on, vec!["build"]);
        let StepKind::Push(ps) = &p.steps[1].kind else {
            panic!("push")
        };
        assert_eq!(
            ps.images,
            vec!["localhost:5000/app:cf19", "localhost:5000/yes"]
        );
        let qc = quick_cmd_task("busybox echo 'a: b' \"#x\"");
        let p = plan("q", &qc, &inputs()).unwrap();
        let StepKind::Cmd(c) = &p.steps[0].kind else {
            panic!("cmd")
        };
        assert_eq!(c.cmd, "busybox echo 'a: b' \"#x\"");
    }
}

//! Generated task files for quick builds (`kiln build`) and quick runs (`kiln run --cmd`), and
//! the POSIX-shell view of a `cmd` string (`parse_cmd`). YAML is produced with a serializer so
//! every value is quoted correctly.

use yaml_rust2::yaml::Hash;
use yaml_rust2::{Yaml, YamlEmitter};

/// Timeout of the quick-build `build` step (8 h), as in acb.
pub const QUICK_BUILD_TIMEOUT: i64 = 28_800;
/// Timeout of the quick-build `push` step (1 h).
pub const QUICK_PUSH_TIMEOUT: i64 = 3_600;
/// Timeout of a quick-run `cmd` step.
pub const QUICK_CMD_TIMEOUT: i64 = 3_600;

/// Inputs of a quick build (`kiln build`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuickBuild {
    /// Image tags; may contain `{{.Run.ID}}`. Prefixed with `registry` (spec §5.5).
    pub tags: Vec<String>,
    /// Dockerfile path (empty: `Dockerfile`).
    pub dockerfile: String,
    /// `--build-arg` values (`KEY=value`).
    pub build_args: Vec<String>,
    pub target: String,
    pub platform: String,
    /// Build context (empty: `.`).
    pub context: String,
    pub registry: String,
    /// Add a `push` step for the tags.
    pub push: bool,
    pub no_cache: bool,
}

/// A docker invocation as `/bin/sh -c "docker run ... <cmd>"` would see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CmdInvocation {
    /// `docker run` flags written before the image (e.g. `-t`, `-e X=1`).
    pub docker_flags: Vec<String>,
    pub image: String,
    pub args: Vec<String>,
}

/// `docker run` flags that take no value.
const BOOL_FLAGS: &[&str] = &[
    "-d",
    "--detach",
    "-i",
    "--interactive",
    "-t",
    "--tty",
    "--rm",
    "--privileged",
    "--init",
    "--read-only",
    "-P",
    "--publish-all",
    "--no-healthcheck",
    "--oom-kill-disable",
    "-it",
    "-ti",
    "--sig-proxy",
];

/// Splits a cmd string with POSIX word splitting and quote removal, then separates docker flags,
/// the image and its arguments. `$` expansion, globbing and operators are not performed.
pub fn parse_cmd(cmd: &str) -> Result<CmdInvocation, String> {
    let words = shell_words::split(cmd).map_err(|e| format!("cannot split cmd into words: {e}"))?;
    let mut inv = CmdInvocation::default();
    let mut i = 0;
    while i < words.len() {
        let w = &words[i];
        if !w.starts_with('-') || w == "-" {
            break;
        }
        inv.docker_flags.push(w.clone());
        let combined_bool_shorts =
            w.len() > 2 && !w.starts_with("--") && w[1..].chars().all(|c| "ditP".contains(c));
        let takes_value =
            !w.contains('=') && !BOOL_FLAGS.contains(&w.as_str()) && !combined_bool_shorts;
        if takes_value {
            match words.get(i + 1) {
                Some(v) => inv.docker_flags.push(v.clone()),
                None => return Err(format!("docker flag {w} needs a value")),
            }
            i += 1;
        }
        i += 1;
    }
    match words.get(i) {
        Some(img) => inv.image = img.clone(),
        None => return Err("cmd names no image: write `cmd: IMAGE [ARGS...]`".into()),
    }
    inv.args = words[i + 1..].to_vec();
    Ok(inv)
}

fn shell_arg(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || "_-.,:/@%+={}=".contains(c)
                || (c == ' ' && s.contains("{{"))
        });
    if safe && !s.contains(' ') {
        s.to_string()
    } else {
        shell_words::quote(s).into_owned()
    }
}

fn prefix_tag(tag: &str, registry: &str) -> String {
    if registry.is_empty() || tag.starts_with(registry) || tag.starts_with("library/") {
        tag.to_string()
    } else {
        format!("{registry}/{tag}")
    }
}

fn s(v: &str) -> Yaml {
    Yaml::String(v.to_string())
}

fn emit(doc: &Yaml) -> String {
    let mut out = String::new();
    let mut emitter = YamlEmitter::new(&mut out);
    // Emitting into a String cannot fail for documents built from strings, ints and bools.
    if emitter.dump(doc).is_err() {
        return String::new();
    }
    out.push('\n');
    out
}

/// The task file of a quick build (spec §5.5): step `build` and, when `push`, step `push`.
pub fn quick_build_task(build: &QuickBuild) -> String {
    let tags: Vec<String> = build
        .tags
        .iter()
        .map(|t| prefix_tag(t, &build.registry))
        .collect();
    let mut args: Vec<String> = Vec::new();
    if build.no_cache {
        args.push("--no-cache".into());
    }
    let dockerfile = if build.dockerfile.is_empty() {
        "Dockerfile"
    } else {
        &build.dockerfile
    };
    args.push("-f".into());
    args.push(shell_arg(dockerfile));
    for t in &tags {
        args.push("-t".into());
        args.push(shell_arg(t));
    }
    for a in &build.build_args {
        args.push("--build-arg".into());
        args.push(shell_arg(a));
    }
    if !build.target.is_empty() {
        args.push("--target".into());
        args.push(shell_arg(&build.target));
    }
    if !build.platform.is_empty() {
        args.push("--platform".into());
        args.push(shell_arg(&build.platform));
    }
    args.push(shell_arg(if build.context.is_empty() {
        "."
    } else {
        &build.context
    }));

    let mut build_step = Hash::new();
    build_step.insert(s("id"), s("build"));
    build_step.insert(s("build"), s(&args.join(" ")));
    build_step.insert(s("timeout"), Yaml::Integer(QUICK_BUILD_TIMEOUT));
    let mut steps = vec![Yaml::Hash(build_step)];
    if build.push && !tags.is_empty() {
        let mut push_step = Hash::new();
        push_step.insert(s("id"), s("push"));
        push_step.insert(s("push"), Yaml::Array(tags.iter().map(|t| s(t)).collect()));
        push_step.insert(s("when"), Yaml::Array(vec![s("build")]));
        push_step.insert(s("timeout"), Yaml::Integer(QUICK_PUSH_TIMEOUT));
        steps.push(Yaml::Hash(push_step));
    }
    let mut doc = Hash::new();
    // v1.0.0: no `$` aliases, so `$` in build arguments stays literal.
    doc.insert(s("version"), s("v1.0.0"));
    doc.insert(s("stepTimeout"), Yaml::Integer(QUICK_BUILD_TIMEOUT));
    doc.insert(s("steps"), Yaml::Array(steps));
    emit(&Yaml::Hash(doc))
}

/// The task file of a quick run (`kiln run --cmd 'IMAGE ARGS'`): one cmd step.
pub fn quick_cmd_task(cmd: &str) -> String {
    let mut step = Hash::new();
    step.insert(s("cmd"), s(cmd));
    step.insert(s("disableWorkingDirectoryOverride"), Yaml::Boolean(true));
    step.insert(s("timeout"), Yaml::Integer(QUICK_CMD_TIMEOUT));
    let mut doc = Hash::new();
    doc.insert(s("version"), s("v1.1.0"));
    doc.insert(s("steps"), Yaml::Array(vec![Yaml::Hash(step)]));
    emit(&Yaml::Hash(doc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmd_words() {
        let c = parse_cmd("-t -e 'A=b c' --network=host r.io/img:1 bash -c 'echo $(date) >> x'")
            .unwrap();
        assert_eq!(c.docker_flags, vec!["-t", "-e", "A=b c", "--network=host"]);
        assert_eq!(c.image, "r.io/img:1");
        assert_eq!(c.args, vec!["bash", "-c", "echo $(date) >> x"]);
        assert!(parse_cmd("-e").is_err());
        assert!(parse_cmd("").is_err());
        assert!(parse_cmd("img 'unterminated").is_err());
    }

    #[test]
    fn tag_prefixing() {
        assert_eq!(
            prefix_tag("test:latest", "foo.azurecr.io"),
            "foo.azurecr.io/test:latest"
        );
        assert_eq!(
            prefix_tag("library/test:latest", "foo.azurecr.io"),
            "library/test:latest"
        );
        assert_eq!(
            prefix_tag("foo.azurecr.io/x", "foo.azurecr.io"),
            "foo.azurecr.io/x"
        );
        assert_eq!(prefix_tag("x", ""), "x");
    }
}

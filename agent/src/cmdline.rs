//! The `docker run` flags a `cmd` step may put before its image (`cmd: -e A=1 -t img args`),
//! turned into container settings. Only flags with a meaning for an agent-run container are
//! accepted; anything else fails the step with a clear message instead of being ignored.

/// Container settings taken from a `cmd`'s docker flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CmdFlags {
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub entrypoint: Option<String>,
    pub ports: Vec<String>,
    pub expose: Vec<String>,
    pub volumes: Vec<String>,
    pub network: Option<String>,
    pub platform: Option<String>,
    pub privileged: bool,
    pub tty: bool,
}

/// Parses docker flags (`-e X=1`, `--env=X=1`, `-t`, …).
pub fn parse_docker_flags(flags: &[String]) -> Result<CmdFlags, String> {
    let mut out = CmdFlags::default();
    let mut iter = flags.iter();
    while let Some(flag) = iter.next() {
        let (name, inline) = match flag.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name, Some(value.to_string())),
            _ => (flag.as_str(), None),
        };
        let mut value = |what: &str| -> Result<String, String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => iter
                    .next()
                    .cloned()
                    .ok_or_else(|| format!("docker flag {what} needs a value")),
            }
        };
        match name {
            "-e" | "--env" => out.env.push(value(name)?),
            "-w" | "--workdir" => out.workdir = Some(value(name)?),
            "-u" | "--user" => out.user = Some(value(name)?),
            "--entrypoint" => out.entrypoint = Some(value(name)?),
            "-p" | "--publish" => out.ports.push(value(name)?),
            "--expose" => out.expose.push(value(name)?),
            "-v" | "--volume" => out.volumes.push(value(name)?),
            "--network" | "--net" => out.network = Some(value(name)?),
            "--platform" => out.platform = Some(value(name)?),
            "--privileged" => out.privileged = true,
            "-t" | "--tty" => out.tty = true,
            "-it" | "-ti" => out.tty = true,
            // Meaningless for an agent-run container: no stdin, removal is the agent's job.
            "-i" | "--interactive" | "--rm" | "-d" | "--detach" => {}
            other => return Err(format!("unsupported docker run flag in cmd: {other}")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_common_flags() {
        let flags = parse_docker_flags(&strings(&[
            "-e",
            "A=1",
            "--env=B=2",
            "-t",
            "-w",
            "/src",
            "--privileged",
            "-p",
            "8080:80",
        ]))
        .expect("flags");
        assert_eq!(flags.env, vec!["A=1", "B=2"]);
        assert!(flags.tty && flags.privileged);
        assert_eq!(flags.workdir.as_deref(), Some("/src"));
        assert_eq!(flags.ports, vec!["8080:80"]);
    }

    #[test]
    fn rejects_unknown_and_incomplete_flags() {
        assert!(parse_docker_flags(&strings(&["--cap-add", "X"]))
            .expect_err("unknown")
            .contains("--cap-add"));
        assert!(parse_docker_flags(&strings(&["-e"]))
            .expect_err("missing value")
            .contains("needs a value"));
    }
}

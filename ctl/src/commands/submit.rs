//! What `kiln build` and `kiln run` share: uploading the context, submitting the run, following
//! its log and printing the outcome.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;

use kiln_proto::v1::{LogChunk, SubmitRunRequest};
use kiln_registry::{Registry, CONTEXTS_REPOSITORY};
use kiln_state::machine::is_terminal;
use kiln_state::pb::{Run, RunRequest, RunStatus};

use crate::client::{Farm, StreamBreak};
use crate::output;

/// How often the CLI asks for the status of a run it waits for without a log stream.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Re-attachments of a broken log stream in a row without a new byte before the CLI gives up
/// (each one already waits up to 15 s for a leader).
const MAX_REATTACH: u32 = 10;

/// Where and how a run is dispatched: shared by `kiln build` and `kiln run`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DispatchArgs {
    /// Run only on agents of this agent pool (agents started with `--pool NAME`); without it,
    /// only agents of no pool take the run.
    #[arg(long, value_name = "NAME")]
    pub agent_pool: Option<String>,
    /// Run only on an agent with this label (started with `--label KEY=VALUE`); repeatable.
    #[arg(long = "agent-label", value_name = "KEY=VALUE")]
    pub agent_labels: Vec<String>,
    /// CPU limit for every container of the run, in cores (e.g. 2 or 0.5), like ACR's --cpu.
    #[arg(long, value_name = "CORES", allow_negative_numbers = true)]
    pub cpu: Option<f64>,
    /// Memory limit for every container of the run, e.g. 512m or 4g.
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// What happens when the run's agent is lost after a step started: `error` ends the run
    /// (the default), `requeue` starts it again from the beginning on another agent.
    #[arg(long, value_name = "POLICY", value_parser = ["error", "requeue"], default_value = "error")]
    pub on_agent_lost: String,
    /// With `--on-agent-lost requeue`: attempts in all (default 3, at most 10).
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<u32>,
    /// Who submits the run: the scheduler shares the farm fairly between submitters (default:
    /// $KILN_SUBMITTER, else $USER).
    #[arg(long, env = "KILN_SUBMITTER", value_name = "NAME")]
    pub submitter: Option<String>,
}

impl DispatchArgs {
    /// Fills the request's dispatch fields, or says what is wrong with a flag.
    pub fn apply(&self, request: &mut RunRequest) -> anyhow::Result<()> {
        if let Some(pool) = &self.agent_pool {
            if pool.trim().is_empty() {
                anyhow::bail!("--agent-pool needs a pool name");
            }
            request.agent_pool = pool.clone();
        }
        for label in &self.agent_labels {
            let Some((key, value)) = label.split_once('=').filter(|(k, _)| !k.is_empty()) else {
                anyhow::bail!("--agent-label '{label}' is not KEY=VALUE");
            };
            request.agent_labels.push(kiln_state::pb::KeyValue {
                key: key.to_string(),
                value: value.to_string(),
            });
        }
        if let Some(cpu) = self.cpu {
            if !(cpu > 0.0 && cpu <= 1024.0) {
                anyhow::bail!(
                    "--cpu {cpu} must be a number of cores between 0 and 1024, e.g. 2 or 0.5"
                );
            }
            request.cpu_millis = (cpu * 1000.0).round() as u32;
        }
        if let Some(memory) = &self.memory {
            request.memory_bytes = parse_size(memory).ok_or_else(|| {
                anyhow::anyhow!(
                    "--memory '{memory}' is not a size such as 512m or 4g (at least 6m)"
                )
            })?;
        }
        request.on_agent_lost = match self.on_agent_lost.as_str() {
            "requeue" => kiln_state::pb::LostAgentPolicy::Requeue,
            _ => kiln_state::pb::LostAgentPolicy::Error,
        } as i32;
        if let Some(attempts) = self.max_attempts {
            if attempts == 0 || attempts > kiln_state::machine::MAX_ATTEMPTS {
                anyhow::bail!(
                    "--max-attempts must be between 1 and {}",
                    kiln_state::machine::MAX_ATTEMPTS
                );
            }
            if request.on_agent_lost != kiln_state::pb::LostAgentPolicy::Requeue as i32 {
                anyhow::bail!("--max-attempts goes with --on-agent-lost requeue");
            }
            request.max_attempts = attempts;
        }
        request.submitter = self
            .submitter
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_default();
        Ok(())
    }
}

/// Parses a size like `512m`, `4g`, `1048576` (bytes) or `64k`; the engine needs 6 MiB at least.
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim().to_ascii_lowercase();
    let text = text.strip_suffix('b').unwrap_or(&text);
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => text.split_at(at),
        None => (text, ""),
    };
    let number: u64 = digits.parse().ok()?;
    let multiplier: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return None,
    };
    let bytes = number.checked_mul(multiplier)?;
    (bytes >= 6 << 20).then_some(bytes)
}

/// How to wait for a submitted run.
pub struct Follow {
    pub logs: bool,
    pub wait: bool,
}

/// The registries of a run: where it pushes (the one given, else the farm's) and the farm's
/// own, which holds contexts and logs.
pub struct Registries {
    pub push: String,
    pub farm: String,
}

pub fn registries(farm: &Farm, given: Option<&str>) -> Registries {
    let push = match given {
        Some(registry) => registry.trim_end_matches('/').to_string(),
        None => farm.info.registry.clone(),
    };
    Registries {
        push,
        farm: farm.info.registry.clone(),
    }
}

/// Packs `dir` (honouring `.dockerignore`) and uploads it unless the registry already has it.
/// Returns the context digest.
pub async fn upload_context(
    dir: &Path,
    dockerfile: Option<&Path>,
    registry: &str,
) -> anyhow::Result<String> {
    let packed = kiln_registry::context::pack(dir, dockerfile)
        .with_context(|| format!("cannot pack the context {}", dir.display()))?;
    eprintln!(
        "Packed context {} ({}) as {}",
        dir.display(),
        human_bytes(packed.size),
        packed.digest
    );
    let client =
        Registry::new(registry).with_context(|| format!("invalid registry '{registry}'"))?;
    if client
        .blob_exists(CONTEXTS_REPOSITORY, &packed.digest)
        .await?
    {
        eprintln!("The registry {registry} already has this context: upload skipped");
    } else {
        client
            .push_blob_file(CONTEXTS_REPOSITORY, packed.file.path(), &packed.digest)
            .await
            .with_context(|| format!("cannot upload the context to {registry}"))?;
        eprintln!("Uploaded the context to {registry}/{CONTEXTS_REPOSITORY}");
    }
    Ok(packed.digest)
}

/// Submits the run, then follows it as asked. The exit code is 0 only when the run succeeded
/// (or when not waiting for it).
pub async fn submit_and_follow(
    farm: &Farm,
    request: RunRequest,
    follow: Follow,
) -> anyhow::Result<ExitCode> {
    let kind = request.kind.clone();
    // One id for this invocation: a retry after a timeout or a leader change returns the run
    // the first attempt made instead of making a second one.
    let run_id = farm
        .submit_run(SubmitRunRequest {
            request: Some(request),
            request_id: kiln_proto::endpoints::random_id(),
        })
        .await?;
    let noun = if kind == "build" { "build" } else { "run" };
    eprintln!("Queued a {noun} with ID: {run_id}");
    if !follow.wait {
        println!("{run_id}");
        return Ok(ExitCode::SUCCESS);
    }
    if follow.logs {
        eprintln!("Waiting for an agent...");
        if let Err(error) = stream_logs(farm, &run_id, true).await {
            eprintln!("kiln: the log stream broke ({error:#}); waiting for the run to end");
        }
    }
    let run = wait_until_finished(farm, &run_id).await?;
    print!("{}", summary(&run));
    Ok(if run.status() == RunStatus::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Copies a run's log to stdout; with `follow`, until the run ends. A stream that breaks
/// because its member went away or stopped leading is re-attached on the leader, printing
/// only what was not printed yet.
pub async fn stream_logs(farm: &Farm, run_id: &str, follow: bool) -> anyhow::Result<()> {
    let mut printed = Printed::default();
    let mut breaks = 0;
    let stdout = std::io::stdout();
    loop {
        let mut stream = farm.stream_logs(run_id, follow).await?;
        printed.reattached();
        loop {
            match stream.next(farm).await {
                Ok(Some(chunk)) => {
                    let new = printed.new_part(&chunk);
                    if !new.is_empty() {
                        breaks = 0;
                        let mut out = stdout.lock();
                        out.write_all(&new)?;
                        out.flush()?;
                    }
                }
                Ok(None) => return Ok(()),
                Err(StreamBreak::Failed(error)) => return Err(error),
                Err(StreamBreak::Lost(why)) => {
                    breaks += 1;
                    if breaks > MAX_REATTACH {
                        anyhow::bail!(
                            "the log stream of {run_id} broke {MAX_REATTACH} times in a row ({why})"
                        );
                    }
                    eprintln!("kiln: the log stream was interrupted ({why}); re-attaching");
                    break;
                }
            }
        }
    }
}

/// What of a run's log has been printed, per step: a re-attached stream (another leader, or
/// the same one) starts from the run's beginning again, and only bytes past those are new.
/// Chunks say where they start in their step's log; a chunk past what was printed means
/// bytes went missing in between, which is said in a notice instead of silently joining the
/// two. Chunks without a step or an offset are notices from the coordinator or the agent;
/// they are always printed and never counted. (A coordinator older than offsets sends none:
/// then the bytes received on the current stream count instead.) Both maps hold one entry
/// per step of one run.
#[derive(Default)]
pub struct Printed {
    printed: HashMap<String, u64>,
    /// Bytes of each step received on the current stream (for chunks without an offset).
    received: HashMap<String, u64>,
}

impl Printed {
    /// A new stream starts.
    pub fn reattached(&mut self) {
        self.received.clear();
    }

    /// The part of `chunk` not printed yet (and counts it as printed), after a notice if
    /// bytes are missing before it.
    pub fn new_part<'a>(&mut self, chunk: &'a LogChunk) -> Cow<'a, [u8]> {
        if chunk.step_id.is_empty() {
            return Cow::Borrowed(&chunk.data);
        }
        let length = chunk.data.len() as u64;
        let received = self.received.entry(chunk.step_id.clone()).or_default();
        let begin = match chunk.offset {
            Some(offset) => offset,
            None if length > 0 => *received,
            None => return Cow::Borrowed(&chunk.data),
        };
        *received = begin + length;
        let end = begin + length;
        let printed = self.printed.entry(chunk.step_id.clone()).or_default();
        if end <= *printed {
            return Cow::Borrowed(&[]);
        }
        if begin > *printed {
            let missing = begin - *printed;
            *printed = end;
            let mut out = format!(
                "\n[kiln] {missing} bytes of step {}'s log are missing here (the live stream lost them); `kiln logs` shows the stored log once the step ends\n",
                chunk.step_id
            )
            .into_bytes();
            out.extend_from_slice(&chunk.data);
            return Cow::Owned(out);
        }
        let skip = usize::try_from(*printed - begin).unwrap_or(usize::MAX);
        *printed = end;
        Cow::Borrowed(chunk.data.get(skip..).unwrap_or_default())
    }
}

pub async fn wait_until_finished(farm: &Farm, run_id: &str) -> anyhow::Result<Run> {
    loop {
        let response = farm.get_run(run_id).await?;
        if let Some(run) = response.run {
            if is_terminal(run.status()) {
                return Ok(run);
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The closing lines: run id, status, duration and every pushed image with its digest.
pub fn summary(run: &Run) -> String {
    let mut out = format!(
        "Run ID: {}  Status: {}  Duration: {}\n",
        run.id,
        output::status(run),
        output::duration(run)
    );
    if !run.reason.is_empty() {
        out.push_str(&format!("Reason: {}\n", run.reason));
    }
    for image in &run.images {
        out.push_str(&format!("Pushed: {}@{}\n", image.image, image.digest));
    }
    out
}

/// Parses repeated `K=V` arguments.
pub fn parse_pairs(flag: &str, pairs: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    pairs
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                Ok((key.trim().to_string(), value.to_string()))
            }
            _ => anyhow::bail!("{flag} expects KEY=VALUE, got '{pair}'"),
        })
        .collect()
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(step: &str, data: &str) -> LogChunk {
        LogChunk {
            run_id: "ca1".into(),
            step_id: step.into(),
            data: data.as_bytes().to_vec(),
            offset: None,
        }
    }

    fn at(step: &str, offset: u64, data: &str) -> LogChunk {
        LogChunk {
            offset: Some(offset),
            ..chunk(step, data)
        }
    }

    /// Prints `chunks` through `printed` into `out`, as `stream_logs` does.
    fn feed(printed: &mut Printed, out: &mut Vec<u8>, chunks: &[LogChunk]) {
        for chunk in chunks {
            out.extend_from_slice(&printed.new_part(chunk));
        }
    }

    #[test]
    fn chunks_with_offsets_print_each_byte_once_and_say_where_bytes_are_missing() {
        let mut printed = Printed::default();
        let mut out = Vec::new();
        printed.reattached();
        feed(
            &mut printed,
            &mut out,
            &[at("a", 0, "one\n"), at("a", 4, "tw")],
        );
        // A new leader: stored segments from the start, then the agent's resent tail, which
        // overlaps them, then new output.
        printed.reattached();
        feed(
            &mut printed,
            &mut out,
            &[
                at("a", 0, "one\ntwo\n"),
                chunk("", "[notice]\n"),
                at("a", 4, "two\nthree\n"),
                at("a", 14, "four\n"),
            ],
        );
        // A chunk past a gap: the gap is named, and the cursor moves on.
        feed(
            &mut printed,
            &mut out,
            &[at("a", 30, "six\n"), at("a", 25, "xxxxx")],
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "one\ntwo\n[notice]\nthree\nfour\n\n[kiln] 11 bytes of step a's log are missing here (the live stream lost them); `kiln logs` shows the stored log once the step ends\nsix\n"
        );
    }

    #[test]
    fn a_reattached_log_prints_only_what_is_new_per_step() {
        let mut printed = Printed::default();
        let mut out = Vec::new();
        printed.reattached();
        feed(
            &mut printed,
            &mut out,
            &[
                chunk("a", "one\n"),
                chunk("", "[notice]\n"),
                chunk("a", "tw"),
            ],
        );
        // The stream broke; the new one starts from the beginning, cut differently, and goes
        // on with another step.
        printed.reattached();
        feed(
            &mut printed,
            &mut out,
            &[
                chunk("a", "on"),
                chunk("a", "e\ntwo\n"),
                chunk("", "[notice]\n"),
                chunk("b", "three\n"),
            ],
        );
        printed.reattached();
        feed(
            &mut printed,
            &mut out,
            &[chunk("a", "one\ntwo\n"), chunk("b", "three\nfour\n")],
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "one\n[notice]\ntwo\n[notice]\nthree\nfour\n"
        );
    }

    #[test]
    fn the_step_timeout_limit_is_the_run_timeout_limit() {
        assert_eq!(
            kiln_taskfile::MAX_STEP_TIMEOUT,
            kiln_state::machine::MAX_RUN_TIMEOUT_SECONDS
        );
    }

    #[test]
    fn sizes_parse_like_the_docker_cli() {
        assert_eq!(parse_size("512m"), Some(512 << 20));
        assert_eq!(parse_size("4G"), Some(4 << 30));
        assert_eq!(parse_size("8mb"), Some(8 << 20));
        assert_eq!(parse_size("1m"), None, "below the engine's minimum");
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("12x"), None);
    }

    #[test]
    fn dispatch_flags_fill_the_request_or_say_what_is_wrong() {
        let args = DispatchArgs {
            agent_pool: Some("gpu".into()),
            agent_labels: vec!["disk=ssd".into()],
            cpu: Some(1.5),
            memory: Some("1g".into()),
            on_agent_lost: "requeue".into(),
            max_attempts: Some(2),
            submitter: Some("ana".into()),
        };
        let mut request = RunRequest::default();
        args.apply(&mut request).unwrap();
        assert_eq!(request.agent_pool, "gpu");
        assert_eq!(request.agent_labels[0].value, "ssd");
        assert_eq!((request.cpu_millis, request.memory_bytes), (1500, 1 << 30));
        assert_eq!(request.max_attempts, 2);
        assert_eq!(request.submitter, "ana");
        for (bad, expected) in [
            (
                DispatchArgs {
                    agent_labels: vec!["nolabel".into()],
                    ..DispatchArgs::default()
                },
                "KEY=VALUE",
            ),
            (
                DispatchArgs {
                    cpu: Some(-1.0),
                    ..DispatchArgs::default()
                },
                "--cpu",
            ),
            (
                DispatchArgs {
                    max_attempts: Some(3),
                    on_agent_lost: "error".into(),
                    ..DispatchArgs::default()
                },
                "goes with",
            ),
        ] {
            let error = bad
                .apply(&mut RunRequest::default())
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{error}");
        }
    }
}

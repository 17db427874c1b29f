//! What `kiln build` and `kiln run` share: uploading the context, submitting the run, following
//! its log and printing the outcome.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;

use kiln_proto::v1::{GetInfoRequest, GetRunRequest, StreamLogsRequest, SubmitRunRequest};
use kiln_registry::{Registry, CONTEXTS_REPOSITORY};
use kiln_state::machine::is_terminal;
use kiln_state::pb::{Run, RunRequest, RunStatus};

use crate::client::{status_error, Client};
use crate::output;

/// How often the CLI asks for the status of a run it waits for without a log stream.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

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

pub async fn registries(client: &mut Client, given: Option<&str>) -> anyhow::Result<Registries> {
    let info = client
        .get_info(GetInfoRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let push = match given {
        Some(registry) => registry.trim_end_matches('/').to_string(),
        None => info.registry.clone(),
    };
    Ok(Registries {
        push,
        farm: info.registry,
    })
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
    client: &mut Client,
    request: RunRequest,
    follow: Follow,
) -> anyhow::Result<ExitCode> {
    let kind = request.kind.clone();
    let run_id = client
        .submit_run(SubmitRunRequest {
            request: Some(request),
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .run_id;
    let noun = if kind == "build" { "build" } else { "run" };
    eprintln!("Queued a {noun} with ID: {run_id}");
    if !follow.wait {
        println!("{run_id}");
        return Ok(ExitCode::SUCCESS);
    }
    if follow.logs {
        eprintln!("Waiting for an agent...");
        if let Err(error) = stream_logs(client, &run_id, true).await {
            eprintln!("kiln: the log stream broke ({error:#}); waiting for the run to end");
        }
    }
    let run = wait_until_finished(client, &run_id).await?;
    print!("{}", summary(&run));
    Ok(if run.status() == RunStatus::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Copies a run's log to stdout; with `follow`, until the run ends.
pub async fn stream_logs(client: &mut Client, run_id: &str, follow: bool) -> anyhow::Result<()> {
    let mut stream = client
        .stream_logs(StreamLogsRequest {
            run_id: run_id.to_string(),
            follow,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let stdout = std::io::stdout();
    while let Some(chunk) = stream.message().await.map_err(status_error)? {
        let mut out = stdout.lock();
        out.write_all(&chunk.data)?;
        out.flush()?;
    }
    Ok(())
}

pub async fn wait_until_finished(client: &mut Client, run_id: &str) -> anyhow::Result<Run> {
    loop {
        let response = client
            .get_run(GetRunRequest {
                run_id: run_id.to_string(),
            })
            .await
            .map_err(status_error)?
            .into_inner();
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

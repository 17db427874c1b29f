//! `kiln-loadtest`: an open-loop load generator that measures the throughput and latency of a
//! kiln farm (coordinator and agents) by submitting runs at a fixed rate and following each one
//! to its end.
//!
//! Exit codes: 0 when every requested run succeeded, 1 on an error (bad arguments, coordinator
//! unreachable, no run could be submitted), 3 when the test ran but some runs failed, did not
//! finish or were not sent, 130 when interrupted twice.

mod driver;
mod outcome;
mod report;
mod stats;
mod target;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use kiln_state::PlatformSpec;

use crate::driver::LoadPlan;
use crate::outcome::Outcome;
use crate::report::{Report, Settings};
use crate::workload::Workload;

/// The most runs one test may submit: the test keeps a record (and a task) per run.
const MAX_RUNS: u32 = 100_000;
/// The highest submission rate accepted, in runs per second.
const MAX_RATE: f64 = 10_000.0;
/// The most RPCs in flight at once.
const MAX_CONCURRENCY: usize = 10_000;
/// The longest test, in seconds (one day).
const MAX_SECONDS: u64 = 86_400;
/// How often a progress line goes to stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// The exit code of a test that ran but whose runs did not all succeed.
const EXIT_RUNS_NOT_ALL_SUCCEEDED: u8 = 3;
/// The exit code after a second interruption.
const EXIT_INTERRUPTED: u8 = 130;

/// Measures a kiln farm: submits runs at a fixed rate (open loop), follows each to its end and
/// reports throughput and submit, queue, run and end-to-end latency percentiles.
///
/// Load goes only to loopback addresses unless --allow-remote is given.
#[derive(Parser, Debug)]
#[command(name = "kiln-loadtest", version)]
#[command(group(clap::ArgGroup::new("what").args(["cmd", "task"])))]
struct Args {
    /// The coordinator's gRPC address.
    #[arg(
        long,
        env = "KILN_COORDINATOR",
        default_value = "http://127.0.0.1:7878"
    )]
    coordinator: String,
    /// How many runs to submit.
    #[arg(long, default_value_t = 50)]
    runs: u32,
    /// Submissions per second (open loop); 0 submits as fast as --concurrency-limit lets.
    #[arg(long, default_value_t = 5.0)]
    rate: f64,
    /// The most RPCs (submissions and status polls) in flight at once.
    #[arg(long, default_value_t = 200)]
    concurrency_limit: usize,
    /// Each run executes one container: 'IMAGE [ARGS...]' [default: 'REGISTRY/base/busybox:latest
    /// true', REGISTRY being the farm's registry].
    #[arg(long, value_name = "'IMAGE [ARGS...]'")]
    cmd: Option<String>,
    /// Each run executes this task file (ACR task YAML).
    #[arg(long, value_name = "FILE")]
    task: Option<PathBuf>,
    /// The platform the runs ask for: os/arch[/variant].
    #[arg(long, default_value = "linux/amd64")]
    platform: String,
    /// Each run's whole-run limit, in seconds.
    #[arg(long, default_value_t = 600)]
    timeout_seconds: u64,
    /// The whole test's limit, in seconds: then it stops submitting and cancels unfinished runs.
    #[arg(long, default_value_t = 600)]
    max_seconds: u64,
    /// How often each unfinished run's status is read, in milliseconds.
    #[arg(long, default_value_t = 500)]
    poll_ms: u64,
    /// Allow a coordinator that is not on a loopback address.
    #[arg(long)]
    allow_remote: bool,
    /// Print the report as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kiln-loadtest: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("kiln-loadtest: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let plan = plan_from(&args)?;
    target::check(&args.coordinator, args.allow_remote)?;
    let platform = PlatformSpec::parse(&args.platform).map_err(anyhow::Error::msg)?;
    if args.timeout_seconds == 0 {
        bail!("--timeout-seconds must be at least 1");
    }
    let task_workload = match &args.task {
        Some(path) => Some(Workload::task_file(path)?),
        None => None,
    };

    let (client, info) = driver::connect(&args.coordinator).await?;
    let workload = match (task_workload, &args.cmd) {
        (Some(workload), _) => workload,
        (None, Some(cmd)) => Workload::cmd(cmd)?,
        (None, None) => Workload::cmd(&format!("{}/base/busybox:latest true", info.registry))?,
    };
    let request = workload.run_request(&info.registry, &platform, args.timeout_seconds)?;
    warn_if_no_agent_runs(&info, &platform);

    let interrupt = CancellationToken::new();
    let on_interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            return std::future::pending().await;
        }
        eprintln!("kiln-loadtest: interrupted: stopping (interrupt again to quit at once)");
        interrupt.cancel();
        let _ = tokio::signal::ctrl_c().await;
    };
    eprintln!(
        "kiln-loadtest: submitting {} runs to {} ({})",
        plan.runs, args.coordinator, workload.label
    );
    let result = tokio::select! {
        result = driver::run_load(client, &plan, request, interrupt.clone()) => result?,
        () = on_interrupt => {
            eprintln!("kiln-loadtest: interrupted twice: quitting without a report");
            return Ok(ExitCode::from(EXIT_INTERRUPTED));
        }
    };

    let nothing_submitted = result
        .attempts
        .iter()
        .all(|attempt| !matches!(attempt.outcome, Outcome::Submitted(_)));
    if nothing_submitted {
        if let Some(Outcome::SubmitFailed { error }) =
            result.attempts.first().map(|attempt| &attempt.outcome)
        {
            bail!("no run could be submitted: {error}");
        }
    }
    let settings = Settings::new(&args.coordinator, &workload.label, &args.platform, &plan);
    let report = Report::new(settings, &result);
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    Ok(if report.all_succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_RUNS_NOT_ALL_SUCCEEDED)
    })
}

/// Checks the numeric arguments and turns them into the load's shape.
fn plan_from(args: &Args) -> anyhow::Result<LoadPlan> {
    if args.runs == 0 || args.runs > MAX_RUNS {
        bail!("--runs must be between 1 and {MAX_RUNS}");
    }
    if !args.rate.is_finite() || args.rate < 0.0 || args.rate > MAX_RATE {
        bail!("--rate must be between 0 (as fast as possible) and {MAX_RATE} runs per second");
    }
    if args.concurrency_limit == 0 || args.concurrency_limit > MAX_CONCURRENCY {
        bail!("--concurrency-limit must be between 1 and {MAX_CONCURRENCY}");
    }
    if args.max_seconds == 0 || args.max_seconds > MAX_SECONDS {
        bail!("--max-seconds must be between 1 and {MAX_SECONDS}");
    }
    if !(10..=60_000).contains(&args.poll_ms) {
        bail!("--poll-ms must be between 10 and 60000");
    }
    Ok(LoadPlan {
        runs: args.runs,
        rate: args.rate,
        concurrency_limit: args.concurrency_limit,
        max_duration: Duration::from_secs(args.max_seconds),
        poll_interval: Duration::from_millis(args.poll_ms),
        progress_every: Some(PROGRESS_EVERY),
    })
}

/// Warns when no connected agent runs `platform`: the runs would wait in the queue until
/// --max-seconds runs out.
fn warn_if_no_agent_runs(info: &kiln_proto::v1::GetInfoResponse, platform: &PlatformSpec) {
    let runs_it = info.agents.iter().any(|agent| {
        agent.platforms.iter().any(|offered| {
            PlatformSpec::from_pb(offered.platform.as_ref())
                .is_ok_and(|offered| offered.can_run(platform))
        })
    });
    if !runs_it {
        eprintln!(
            "kiln-loadtest: warning: no connected agent runs {platform}: runs stay queued until one connects"
        );
    }
}

#[cfg(test)]
mod tests;

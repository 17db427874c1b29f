//! `kiln-loadtest`: an open-loop load generator that measures the throughput and latency of a
//! kiln farm (coordinator and agents) by submitting runs at a fixed rate and following each one
//! to its end.
//!
//! With `--sim-agents N` it also runs simulated agents (gRPC clients of the agent protocol,
//! without Docker); `sim-agents` runs only those, and `dispatch` and `fairness` benchmark the
//! coordinator's dispatch rate and fair queueing with them; `log-latency` and `log-throughput`
//! measure the live log path of a real agent and Docker Engine.
//!
//! Exit codes: 0 when every requested run succeeded, 1 on an error (bad arguments, coordinator
//! unreachable, no run could be submitted), 3 when the test ran but some runs failed, did not
//! finish or were not sent (or a benchmark missed its goal), 130 when interrupted twice.

mod bench;
mod chaos;
mod driver;
mod logbench;
mod outcome;
mod report;
mod sim;
mod stats;
mod target;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;
use tokio_util::sync::CancellationToken;

use kiln_state::PlatformSpec;

use crate::bench::{DispatchPlan, FairnessPlan};
use crate::driver::{Client, LoadPlan};
use crate::outcome::Outcome;
use crate::report::{Report, Settings};
use crate::sim::{SimConfig, SimFarm};
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
/// How long simulated agents may take to connect.
const SIM_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Measures a kiln farm: submits runs at a fixed rate (open loop), follows each to its end and
/// reports throughput and submit, queue, run and end-to-end latency percentiles.
///
/// Load goes only to loopback addresses unless --allow-remote is given.
#[derive(Parser, Debug)]
#[command(name = "kiln-loadtest", version)]
#[command(group(clap::ArgGroup::new("what").args(["cmd", "task"])))]
#[command(args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
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
    /// The runs' submitter (the scheduler's fairness key); empty sends none.
    #[arg(long, default_value = "")]
    submitter: String,
    #[command(flatten)]
    sim: SimArgs,
}

/// Simulated agents: gRPC clients of the agent protocol that complete every run's single step
/// after --sim-step-ms, without Docker.
#[derive(clap::Args, Debug, Clone)]
struct SimArgs {
    /// How many simulated agents to run alongside (0: none).
    #[arg(long, default_value_t = 0)]
    sim_agents: u32,
    /// How many runs each simulated agent takes at once.
    #[arg(long, default_value_t = 4)]
    sim_capacity: u32,
    /// How long each simulated run's step takes, in milliseconds.
    #[arg(long, default_value_t = 0)]
    sim_step_ms: u64,
    /// The agent pool the simulated agents serve (empty: the default pool).
    #[arg(long, default_value = "")]
    sim_pool: String,
}

/// Where the coordinator is.
#[derive(clap::Args, Debug, Clone)]
struct Conn {
    /// The coordinator's gRPC address.
    #[arg(
        long,
        env = "KILN_COORDINATOR",
        default_value = "http://127.0.0.1:7878"
    )]
    coordinator: String,
    /// Allow a coordinator that is not on a loopback address.
    #[arg(long)]
    allow_remote: bool,
    /// The platform the runs ask for and the simulated agents run: os/arch[/variant].
    #[arg(long, default_value = "linux/amd64")]
    platform: String,
    /// The whole command's limit, in seconds.
    #[arg(long, default_value_t = 600)]
    max_seconds: u64,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Runs only simulated agents, until Ctrl-C or --max-seconds, for another load to use.
    SimAgents {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        sim: SimArgs,
    },
    /// Dispatch throughput: submits --runs runs as fast as --concurrency-limit lets and counts
    /// them through simulated agents (no status polling): runs/s to the last committed finish.
    Dispatch {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        sim: SimArgs,
        /// How many runs to submit.
        #[arg(long, default_value_t = 1000)]
        runs: u32,
        /// The most submissions in flight at once.
        #[arg(long, default_value_t = 200)]
        concurrency_limit: usize,
        /// After the load, this many runs submitted one at a time, for the leader's commit
        /// latency at light load (0: none).
        #[arg(long, default_value_t = 100)]
        light_runs: u32,
        /// Print the report as one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Fair queueing: queues --queued runs from submitter 'flood', then submits --lone runs from
    /// 'lone', one every --lone-every-ms, and measures how long each waits in the queue.
    Fairness {
        #[command(flatten)]
        conn: Conn,
        /// Simulated agents to run the flood (with none, the farm's own agents do).
        #[command(flatten)]
        sim: SimArgs,
        /// How many flood runs to queue first.
        #[arg(long, default_value_t = 10_000)]
        queued: u32,
        /// How many lone runs to measure.
        #[arg(long, default_value_t = 20)]
        lone: u32,
        /// The time between two lone runs, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        lone_every_ms: u64,
        /// The most submissions in flight at once.
        #[arg(long, default_value_t = 200)]
        concurrency_limit: usize,
        /// Print the report as one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Live log latency on the farm's own agents: one run prints --lines lines stamped with
    /// the time they were written; each line's arrival at a follower minus its stamp.
    LogLatency {
        #[command(flatten)]
        conn: Conn,
        /// How many stamped lines the container prints.
        #[arg(long, default_value_t = 500)]
        lines: u32,
        /// The pause between two lines, in milliseconds (0: as fast as the shell prints).
        #[arg(long, default_value_t = 20)]
        every_ms: u64,
        /// The image whose busybox `sh` runs the step [default: REGISTRY/base/busybox:latest].
        #[arg(long)]
        image: Option<String>,
        /// Print the report as one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Per-step log throughput on the farm's own agents: one run's step writes --mib MiB as
    /// fast as it can; MiB/s over the step, and a check that the stored log has every byte.
    /// Failover and safety of a coordinator cluster: starts --members coordinator processes
    /// (from KILN_BIN_DIR or next to this binary) with fault proxies on their peer links,
    /// simulated agents and continuous submissions, kills the leader with SIGKILL --kills
    /// times and isolates it --partitions times, then checks that every acknowledged run ended
    /// once, none executed under two leases and the replicas converged. Exits 1 if not.
    Chaos {
        #[arg(long, default_value_t = 3)]
        members: u64,
        #[arg(long, default_value_t = 10)]
        kills: u32,
        #[arg(long, default_value_t = 3)]
        partitions: u32,
        /// Simulated agents, and runs each takes at once.
        #[arg(long, default_value_t = 4)]
        agents: u32,
        #[arg(long, default_value_t = 4)]
        capacity: u32,
        /// How long each simulated step takes, in milliseconds.
        #[arg(long, default_value_t = 300)]
        step_ms: u64,
        /// Milliseconds between two submissions.
        #[arg(long, default_value_t = 20)]
        submit_every_ms: u64,
        /// The loopback net 127.N.x.y the members and proxies use (pick another to run two at once).
        #[arg(long, default_value_t = 77)]
        net: u8,
        /// The kiln-coordinator binary [default: KILN_BIN_DIR or next to this one].
        #[arg(long)]
        coordinator_binary: Option<PathBuf>,
        /// Print the report as one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    LogThroughput {
        #[command(flatten)]
        conn: Conn,
        /// How many MiB the step writes.
        #[arg(long, default_value_t = 1024)]
        mib: u64,
        /// The length of each line written, newline included: a power of two, 64 to 16384.
        #[arg(long, default_value_t = logbench::DEFAULT_LINE_BYTES)]
        line_bytes: u64,
        /// Do not follow the live log (measures the agent and storage alone).
        #[arg(long)]
        no_follow: bool,
        /// The image whose busybox `sh`, `yes` and `head` run the step [default:
        /// REGISTRY/base/busybox:latest].
        #[arg(long)]
        image: Option<String>,
        /// Print the report as one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
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

async fn run(mut args: Args) -> anyhow::Result<ExitCode> {
    match args.command.take() {
        None => run_load(args).await,
        Some(Command::SimAgents { conn, sim }) => run_sim_agents(&conn, &sim).await,
        Some(Command::Dispatch {
            conn,
            sim,
            runs,
            concurrency_limit,
            light_runs,
            json,
        }) => {
            let plan = dispatch_plan(&conn, &sim, runs, concurrency_limit, light_runs)?;
            run_dispatch(&conn, &sim, &plan, json).await
        }
        Some(Command::Fairness {
            conn,
            sim,
            queued,
            lone,
            lone_every_ms,
            concurrency_limit,
            json,
        }) => {
            let plan = fairness_plan(&conn, &sim, queued, lone, lone_every_ms, concurrency_limit)?;
            run_fairness(&conn, &sim, &plan, json).await
        }
        Some(Command::LogLatency {
            conn,
            lines,
            every_ms,
            image,
            json,
        }) => run_log_latency(&conn, lines, every_ms, image, json).await,
        Some(Command::LogThroughput {
            conn,
            mib,
            line_bytes,
            no_follow,
            image,
            json,
        }) => run_log_throughput(&conn, mib, line_bytes, !no_follow, image, json).await,
        Some(Command::Chaos {
            members,
            kills,
            partitions,
            agents,
            capacity,
            step_ms,
            submit_every_ms,
            net,
            coordinator_binary,
            json,
        }) => {
            sim::validate(agents, capacity, step_ms)?;
            let work = tempfile::tempdir().context("cannot make a work directory")?;
            let platform = PlatformSpec::parse("linux/amd64").map_err(|e| anyhow::anyhow!(e))?;
            let request = workload::Workload::cmd("127.0.0.1:5000/base/busybox:latest true")?
                .run_request("127.0.0.1:5000", &platform, 600)?;
            let plan = chaos::ChaosPlan {
                coordinator_binary: chaos::coordinator_binary(coordinator_binary.as_deref())?,
                members,
                kills,
                partitions,
                agents,
                capacity,
                step: Duration::from_millis(step_ms),
                submit_every: Duration::from_millis(submit_every_ms),
                net,
                request,
                work_dir: work.path().to_path_buf(),
            };
            let report = chaos::run(&plan).await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{}", report.to_table());
            }
            let failures = report.failures();
            if !failures.is_empty() {
                eprintln!(
                    "kiln-loadtest: chaos checks failed: {}",
                    failures.join("; ")
                );
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Connects for a log benchmark: the client and the request of one run executing `script`
/// (built from the farm's registry) in `image`.
async fn log_bench_request(
    conn: &Conn,
    image: Option<String>,
    script: impl FnOnce() -> String,
) -> anyhow::Result<(Client, kiln_state::pb::RunRequest)> {
    let platform = check_conn(conn)?;
    let (client, info) = driver::connect(&conn.coordinator).await?;
    warn_if_no_agent_runs(&info, &platform);
    let image = image.unwrap_or_else(|| format!("{}/base/busybox:latest", info.registry));
    let workload = Workload::cmd(&logbench::shell_cmd(&image, &script())?)?;
    let request = workload.run_request(&info.registry, &platform, conn.max_seconds)?;
    Ok((client, request))
}

async fn run_log_latency(
    conn: &Conn,
    lines: u32,
    every_ms: u64,
    image: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    check_conn(conn)?;
    logbench::validate_latency(lines, every_ms, conn.max_seconds)?;
    let (client, request) =
        log_bench_request(conn, image, || logbench::latency_script(lines, every_ms)).await?;
    let interrupt = on_interrupt();
    let report = logbench::log_latency(
        &client,
        request,
        lines,
        every_ms,
        Duration::from_secs(conn.max_seconds),
        &interrupt,
    )
    .await?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.to_table());
    }
    Ok(if report.goal_met {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_RUNS_NOT_ALL_SUCCEEDED)
    })
}

async fn run_log_throughput(
    conn: &Conn,
    mib: u64,
    line_bytes: u64,
    follow: bool,
    image: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    check_conn(conn)?;
    logbench::validate_throughput(mib, line_bytes)?;
    let bytes = mib * 1024 * 1024;
    let (client, request) = log_bench_request(conn, image, || {
        logbench::throughput_script(bytes, line_bytes)
    })
    .await?;
    let interrupt = on_interrupt();
    let report = logbench::log_throughput(
        &client,
        request,
        bytes,
        line_bytes,
        follow,
        Duration::from_secs(conn.max_seconds),
        &interrupt,
    )
    .await?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.to_table());
    }
    Ok(if report.goal_met {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_RUNS_NOT_ALL_SUCCEEDED)
    })
}

/// The interrupt token, cancelled on the first Ctrl-C; a second one exits at once.
fn on_interrupt() -> CancellationToken {
    let interrupt = CancellationToken::new();
    let token = interrupt.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        eprintln!("kiln-loadtest: interrupted: stopping (interrupt again to quit at once)");
        token.cancel();
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("kiln-loadtest: interrupted twice: quitting");
            std::process::exit(i32::from(EXIT_INTERRUPTED));
        }
    });
    interrupt
}

/// Checks the connection arguments shared by the subcommands.
fn check_conn(conn: &Conn) -> anyhow::Result<PlatformSpec> {
    if conn.max_seconds == 0 || conn.max_seconds > MAX_SECONDS {
        bail!("--max-seconds must be between 1 and {MAX_SECONDS}");
    }
    target::check(&conn.coordinator, conn.allow_remote)?;
    PlatformSpec::parse(&conn.platform).map_err(anyhow::Error::msg)
}

fn check_concurrency(limit: usize) -> anyhow::Result<()> {
    if limit == 0 || limit > MAX_CONCURRENCY {
        bail!("--concurrency-limit must be between 1 and {MAX_CONCURRENCY}");
    }
    Ok(())
}

/// The simulated agents `sim` asks for, or `None` for none (`required`: at least one).
fn sim_config(
    sim: &SimArgs,
    coordinator: &str,
    platform: &PlatformSpec,
    required: bool,
) -> anyhow::Result<Option<SimConfig>> {
    if sim.sim_agents == 0 && !required {
        return Ok(None);
    }
    sim::validate(sim.sim_agents, sim.sim_capacity, sim.sim_step_ms)?;
    Ok(Some(SimConfig {
        coordinator: coordinator.to_string(),
        agents: sim.sim_agents,
        capacity: sim.sim_capacity,
        step: Duration::from_millis(sim.sim_step_ms),
        pool: sim.sim_pool.clone(),
        platform: platform.clone(),
        id_prefix: format!("sim-{}", std::process::id()),
    }))
}

/// Starts simulated agents and waits until every one is connected.
async fn start_sim(config: SimConfig) -> anyhow::Result<SimFarm> {
    let farm = SimFarm::start(config);
    if let Err(error) = farm.wait_connected(SIM_CONNECT_TIMEOUT).await {
        farm.stop().await;
        return Err(error);
    }
    Ok(farm)
}

/// The request every benchmark run submits: one busybox container (never started by the
/// simulated agents).
async fn bench_request(
    conn: &Conn,
    platform: &PlatformSpec,
) -> anyhow::Result<(Client, kiln_state::pb::RunRequest)> {
    let (client, info) = driver::connect(&conn.coordinator).await?;
    let workload = Workload::cmd(&format!("{}/base/busybox:latest true", info.registry))?;
    let request = workload.run_request(&info.registry, platform, 600)?;
    Ok((client, request))
}

async fn run_sim_agents(conn: &Conn, sim: &SimArgs) -> anyhow::Result<ExitCode> {
    let platform = check_conn(conn)?;
    let config = sim_config(sim, &conn.coordinator, &platform, true)?
        .expect("required simulated agents are configured");
    let interrupt = on_interrupt();
    let summary = sim::run_until(
        config,
        interrupt,
        Duration::from_secs(conn.max_seconds),
        PROGRESS_EVERY,
    )
    .await?;
    print!("{}", summary.to_table());
    Ok(ExitCode::SUCCESS)
}

fn dispatch_plan(
    conn: &Conn,
    sim: &SimArgs,
    runs: u32,
    concurrency_limit: usize,
    light_runs: u32,
) -> anyhow::Result<DispatchPlan> {
    check_conn(conn)?;
    if runs == 0 || runs > MAX_RUNS {
        bail!("--runs must be between 1 and {MAX_RUNS}");
    }
    check_concurrency(concurrency_limit)?;
    if sim.sim_agents == 0 {
        bail!("dispatch counts runs through simulated agents: pass --sim-agents N");
    }
    sim::validate(sim.sim_agents, sim.sim_capacity, sim.sim_step_ms)?;
    if light_runs > MAX_RUNS {
        bail!("--light-runs must be at most {MAX_RUNS}");
    }
    Ok(DispatchPlan {
        runs,
        concurrency: concurrency_limit,
        max_duration: Duration::from_secs(conn.max_seconds),
        light_runs,
    })
}

async fn run_dispatch(
    conn: &Conn,
    sim: &SimArgs,
    plan: &DispatchPlan,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let platform = check_conn(conn)?;
    let (client, request) = bench_request(conn, &platform).await?;
    let config = sim_config(sim, &conn.coordinator, &platform, true)?
        .expect("required simulated agents are configured");
    let farm = start_sim(config).await?;
    let interrupt = on_interrupt();
    eprintln!(
        "kiln-loadtest: dispatching {} runs to {} simulated agents x {}",
        plan.runs, sim.sim_agents, sim.sim_capacity
    );
    let report = bench::dispatch(&client, farm, request, plan, &interrupt).await;
    if report.submitted == 0 {
        if let Some(error) = &report.first_submit_error {
            bail!("no run could be submitted: {error}");
        }
    }
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.to_table());
    }
    Ok(if report.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_RUNS_NOT_ALL_SUCCEEDED)
    })
}

fn fairness_plan(
    conn: &Conn,
    sim: &SimArgs,
    queued: u32,
    lone: u32,
    lone_every_ms: u64,
    concurrency_limit: usize,
) -> anyhow::Result<FairnessPlan> {
    check_conn(conn)?;
    bench::validate_fairness(queued, lone, lone_every_ms)?;
    check_concurrency(concurrency_limit)?;
    if sim.sim_agents > 0 {
        sim::validate(sim.sim_agents, sim.sim_capacity, sim.sim_step_ms)?;
    }
    Ok(FairnessPlan {
        queued,
        lone,
        lone_every: Duration::from_millis(lone_every_ms),
        concurrency: concurrency_limit,
        max_duration: Duration::from_secs(conn.max_seconds),
    })
}

async fn run_fairness(
    conn: &Conn,
    sim: &SimArgs,
    plan: &FairnessPlan,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let platform = check_conn(conn)?;
    let (client, request) = bench_request(conn, &platform).await?;
    let farm = match sim_config(sim, &conn.coordinator, &platform, false)? {
        Some(config) => Some(start_sim(config).await?),
        None => None,
    };
    let interrupt = on_interrupt();
    eprintln!(
        "kiln-loadtest: queueing {} runs from '{}'",
        plan.queued,
        bench::FLOOD_SUBMITTER
    );
    let report = bench::fairness(&client, farm, request, plan, &interrupt).await;
    if report.flood_submitted == 0 {
        if let Some(error) = &report.first_submit_error {
            bail!("no run could be submitted: {error}");
        }
    }
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.to_table());
    }
    Ok(if report.goal_met {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_RUNS_NOT_ALL_SUCCEEDED)
    })
}

async fn run_load(args: Args) -> anyhow::Result<ExitCode> {
    let plan = plan_from(&args)?;
    target::check(&args.coordinator, args.allow_remote)?;
    let platform = PlatformSpec::parse(&args.platform).map_err(anyhow::Error::msg)?;
    if args.timeout_seconds == 0 {
        bail!("--timeout-seconds must be at least 1");
    }
    let sim = sim_config(&args.sim, &args.coordinator, &platform, false)?;
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
    let mut request = workload.run_request(&info.registry, &platform, args.timeout_seconds)?;
    request.submitter.clone_from(&args.submitter);
    let farm = match sim {
        Some(config) => Some(start_sim(config).await?),
        None => {
            warn_if_no_agent_runs(&info, &platform);
            None
        }
    };

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
    let sim_summary = match farm {
        Some(farm) => Some(farm.stop().await),
        None => None,
    };
    let settings = Settings::new(&args.coordinator, &workload.label, &args.platform, &plan);
    let report = Report::new(settings, &result);
    if args.json {
        let mut json: serde_json::Value = serde_json::from_str(&report.to_json())?;
        if let (Some(object), Some(summary)) = (json.as_object_mut(), &sim_summary) {
            object.insert("sim".to_string(), serde_json::to_value(summary)?);
        }
        println!("{json}");
    } else {
        print!("{}", report.to_table());
        if let Some(summary) = &sim_summary {
            print!("{}", summary.to_table());
        }
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

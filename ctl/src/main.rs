//! `kiln`: the command-line client of the kiln build farm.

mod client;
mod commands;
mod output;
mod task;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use commands::{build, logs, run, runs};

/// kiln: build container images and run task files on your own build farm.
///
/// Talks to the coordinators at --coordinator (default: the local farm that deploy/local/up.sh
/// starts).
#[derive(Parser, Debug)]
#[command(name = "kiln", version)]
struct Cli {
    /// The coordinators' gRPC addresses: a comma-separated list of HOST:PORT or http://
    /// URLs, any members of the cluster (calls follow the leader and skip members that are
    /// down).
    #[arg(
        long,
        global = true,
        env = "KILN_COORDINATOR",
        default_value = "http://127.0.0.1:7878",
        value_name = "ENDPOINTS"
    )]
    coordinator: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Builds an image from a context directory and pushes it (like `az acr build`).
    Build(Box<build::BuildArgs>),
    /// Runs a task file or a single container (like `az acr run`).
    Run(Box<run::RunArgs>),
    /// Lists, shows and cancels runs.
    #[command(subcommand)]
    Runs(runs::RunsCommand),
    /// Prints a run's log.
    Logs(logs::LogsArgs),
    /// Lists the agents (ready, draining, lost) and the platforms they run; drains them.
    Agents {
        #[command(subcommand)]
        command: Option<commands::agents::AgentsCommand>,
    },
    /// Shows the coordinator cluster's members and health; adds, removes members, moves the
    /// leadership; saves snapshots of the state.
    #[command(subcommand)]
    Cluster(commands::cluster::ClusterCommand),
    /// Validates, renders and plans task files offline (no farm needed).
    #[command(subcommand)]
    Task(Box<task::TaskCommand>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kiln: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    let coordinator = cli.coordinator;
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Build(args) => build::run(&coordinator, *args).await,
            Command::Run(args) => run::run(&coordinator, *args).await,
            Command::Runs(command) => runs::run(&coordinator, command).await,
            Command::Logs(args) => logs::run(&coordinator, args).await,
            Command::Agents { command } => commands::agents::run(&coordinator, command).await,
            Command::Cluster(command) => commands::cluster::run(&coordinator, command).await,
            Command::Task(command) => task::run(*command),
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("kiln: {error:#}");
            ExitCode::FAILURE
        }
    }
}

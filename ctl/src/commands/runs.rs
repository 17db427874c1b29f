//! `kiln runs list|show|cancel`.

use std::process::ExitCode;

use clap::Subcommand;

use kiln_state::machine::status_name;
use kiln_state::pb::RunStatus;

use crate::client::Farm;
use crate::output;

#[derive(Subcommand, Debug)]
pub enum RunsCommand {
    /// Lists the most recent runs, newest first.
    List {
        /// How many runs to show.
        #[arg(long, default_value_t = 20)]
        top: u32,
        /// Let any member answer from its own state, which may lag the leader's (works while
        /// there is no leader).
        #[arg(long)]
        stale: bool,
    },
    /// Shows one run: status, reason, steps, pushed images.
    Show {
        /// The run's id, as `kiln runs list` shows it (e.g. ca12).
        run_id: String,
        /// Let any member answer from its own state, which may lag the leader's.
        #[arg(long)]
        stale: bool,
    },
    /// Cancels a queued or running run.
    Cancel {
        /// The run's id, as `kiln runs list` shows it (e.g. ca12).
        run_id: String,
    },
}

pub async fn run(coordinator: &str, command: RunsCommand) -> anyhow::Result<ExitCode> {
    let farm = Farm::connect(coordinator).await?;
    match command {
        RunsCommand::List { top, stale } => {
            let runs = farm.list_runs_read(top, stale).await?;
            if runs.is_empty() {
                println!("No runs yet: start one with `kiln build` or `kiln run`.");
            } else {
                print!("{}", output::runs_table(&runs));
            }
        }
        RunsCommand::Show { run_id, stale } => {
            let response = farm.get_run_read(&run_id, stale).await?;
            if let Some(run) = response.run {
                print!("{}", output::run_details(&run, &response.queued_reason));
            }
        }
        RunsCommand::Cancel { run_id } => {
            let status = farm.cancel_run(&run_id).await?;
            match status {
                RunStatus::Running => {
                    println!("Cancellation of {run_id} requested; the agent is stopping it.")
                }
                other => println!("Run {run_id}: {}", status_name(other)),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! `kiln runs list|show|cancel`.

use std::process::ExitCode;

use clap::Subcommand;

use kiln_proto::v1::{CancelRunRequest, GetRunRequest, ListRunsRequest};
use kiln_state::machine::status_name;
use kiln_state::pb::RunStatus;

use crate::client::{self, status_error};
use crate::output;

#[derive(Subcommand, Debug)]
pub enum RunsCommand {
    /// Lists the most recent runs, newest first.
    List {
        /// How many runs to show.
        #[arg(long, default_value_t = 20)]
        top: u32,
    },
    /// Shows one run: status, reason, steps, pushed images.
    Show { run_id: String },
    /// Cancels a queued or running run.
    Cancel { run_id: String },
}

pub async fn run(coordinator: &str, command: RunsCommand) -> anyhow::Result<ExitCode> {
    let mut client = client::connect(coordinator).await?;
    match command {
        RunsCommand::List { top } => {
            let runs = client
                .list_runs(ListRunsRequest { limit: top })
                .await
                .map_err(status_error)?
                .into_inner()
                .runs;
            if runs.is_empty() {
                println!("No runs yet: start one with `kiln build` or `kiln run`.");
            } else {
                print!("{}", output::runs_table(&runs));
            }
        }
        RunsCommand::Show { run_id } => {
            let response = client
                .get_run(GetRunRequest { run_id })
                .await
                .map_err(status_error)?
                .into_inner();
            if let Some(run) = response.run {
                print!("{}", output::run_details(&run, &response.queued_reason));
            }
        }
        RunsCommand::Cancel { run_id } => {
            let status = client
                .cancel_run(CancelRunRequest {
                    run_id: run_id.clone(),
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .status();
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

//! `kiln logs RUN_ID [--follow]`.

use std::process::ExitCode;

use clap::Args;

use crate::client;
use crate::commands::submit;

/// Prints a run's log: from its start, and with --follow live until the run ends.
#[derive(Args, Debug)]
pub struct LogsArgs {
    run_id: String,
    /// Keep streaming until the run ends.
    #[arg(short = 'f', long)]
    follow: bool,
}

pub async fn run(coordinator: &str, args: LogsArgs) -> anyhow::Result<ExitCode> {
    let mut client = client::connect(coordinator).await?;
    submit::stream_logs(&mut client, &args.run_id, args.follow).await?;
    Ok(ExitCode::SUCCESS)
}

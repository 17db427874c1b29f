//! `kiln logs RUN_ID [--follow]`.

use std::process::ExitCode;

use clap::Args;

use crate::client::Farm;
use crate::commands::submit;

/// Prints a run's log: from its start, and with --follow live until the run ends.
#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The run's id, as `kiln runs list` shows it (e.g. ca12).
    run_id: String,
    /// Keep streaming until the run ends.
    #[arg(short = 'f', long)]
    follow: bool,
}

pub async fn run(coordinator: &str, args: LogsArgs) -> anyhow::Result<ExitCode> {
    let farm = Farm::connect(coordinator).await?;
    submit::stream_logs(&farm, &args.run_id, args.follow).await?;
    Ok(ExitCode::SUCCESS)
}

//! The connection to the coordinator: the only ctl module that knows tonic.

use std::time::Duration;

use anyhow::{anyhow, Context as _};
use tonic::transport::{Channel, Endpoint};

use kiln_proto::v1::control_client::ControlClient;

/// How long to wait for the coordinator to accept the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

pub type Client = ControlClient<Channel>;

/// Connects to the coordinator at `address` (`http://host:port`).
pub async fn connect(address: &str) -> anyhow::Result<Client> {
    let endpoint = Endpoint::from_shared(address.to_string())
        .with_context(|| format!("'{address}' is not a coordinator address: use http://HOST:PORT"))?
        .connect_timeout(CONNECT_TIMEOUT);
    let channel = endpoint.connect().await.map_err(|error| {
        anyhow!(
            "cannot reach the kiln coordinator at {address} ({}): start the local farm with deploy/local/up.sh, or pass --coordinator / set KILN_COORDINATOR",
            root_cause(&error)
        )
    })?;
    Ok(ControlClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Turns a gRPC error into a one-line error for the user.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    match status.code() {
        tonic::Code::Unavailable
            if status.message().contains("tcp connect") || status.message().is_empty() =>
        {
            anyhow!(
                "the kiln coordinator is not reachable: {}",
                status.message()
            )
        }
        _ => anyhow!("{}", status.message()),
    }
}

fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

//! The connection to the coordinators: the only ctl module that knows tonic.
//!
//! Every call goes through [`kiln_proto::Endpoints`]: `--coordinator` may name several members;
//! calls follow the leader's hints and rotate over unavailable members. [`Farm::connect`] asks
//! `GetInfo` first, which proves a member answers and learns the cluster id that every later
//! request carries, so a member of another cluster is refused instead of used.

use std::time::Duration;

use anyhow::anyhow;
use tonic::codec::Streaming;
use tonic::Response;

use kiln_proto::endpoints::{self, CallError, Connection, Settings};
use kiln_proto::v1::cluster_client::ClusterClient;
use kiln_proto::v1::control_client::ControlClient;
use kiln_proto::v1::{
    AddMemberRequest, CancelRunRequest, ClusterStatusRequest, ClusterStatusResponse,
    DrainAgentRequest, GetInfoRequest, GetInfoResponse, GetRunRequest, GetRunResponse,
    ListRunsRequest, LogChunk, RemoveMemberRequest, SaveSnapshotRequest, SnapshotPiece,
    StreamLogsRequest, SubmitRunRequest, TransferLeaderRequest,
};
use kiln_proto::Endpoints;
use kiln_state::pb::{Run, RunStatus};

const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// How long one member may take to answer `kiln cluster status`.
const MEMBER_STATUS_TIMEOUT: Duration = Duration::from_secs(3);

fn control(connection: Connection) -> ControlClient<Connection> {
    ControlClient::new(connection)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

fn cluster(connection: Connection) -> ClusterClient<Connection> {
    ClusterClient::new(connection)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// How often the CLI pings the coordinator on an open connection, and how long it waits for
/// the answer before it treats the connection as broken.
const CLIENT_KEEPALIVE: Duration = Duration::from_secs(3);

/// A farm that answered: its endpoints (with the leader and cluster id learned) and what it is.
pub struct Farm {
    endpoints: Endpoints,
    pub info: GetInfoResponse,
}

impl Farm {
    /// Parses `--coordinator` (a comma-separated list) and asks `GetInfo`.
    pub async fn connect(coordinator: &str) -> anyhow::Result<Farm> {
        let endpoints = Endpoints::with_settings(
            coordinator,
            Settings {
                // A member that froze (SIGSTOP, a hung machine) keeps its TCP connections
                // open; unanswered pings end a log stream so that it re-attaches elsewhere.
                keepalive: Some(CLIENT_KEEPALIVE),
                ..Settings::default()
            },
        )
        .map_err(|error| anyhow!("--coordinator: {error}"))?;
        let info = endpoints
            .call(|conn| async move {
                control(conn)
                    .get_info(GetInfoRequest {})
                    .await
                    .map(Response::into_inner)
            })
            .await
            .map_err(|error| call_error(&endpoints, error))?;
        endpoints
            .learn_cluster_id(&info.cluster_id)
            .map_err(|mismatch| anyhow!("{mismatch}"))?;
        Ok(Farm { endpoints, info })
    }

    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// `GetInfo` as the leader answers it (its agent list is the live one: agents connect to
    /// the leader). A follower answered `connect`: the leader's client URL comes from the
    /// follower's cluster status. Falls back to the answer at hand when no leader is known.
    pub async fn leader_info(&self) -> anyhow::Result<GetInfoResponse> {
        let info = &self.info;
        if info.leader_id == 0 || info.leader_id == info.node_id {
            return Ok(info.clone());
        }
        let status = self.cluster_status().await?;
        let Some(leader) = status
            .members
            .iter()
            .find(|member| member.id == status.leader_id && !member.client_url.is_empty())
        else {
            return Ok(info.clone());
        };
        let url = endpoints::parse_endpoint(&leader.client_url)
            .map_err(|error| anyhow!("the leader's client URL is unusable: {error}"))?;
        self.endpoints
            .call_at(&url, |conn| async move {
                control(conn)
                    .get_info(GetInfoRequest {})
                    .await
                    .map(Response::into_inner)
            })
            .await
            .map_err(|error| anyhow!("the leader at {url} did not answer: {}", error.detail()))
    }

    fn error(&self, error: CallError) -> anyhow::Error {
        call_error(&self.endpoints, error)
    }

    /// Submits a run; `request_id` makes a retry after a timeout or leader change return the
    /// run the first attempt made.
    pub async fn submit_run(&self, request: SubmitRunRequest) -> anyhow::Result<String> {
        let request = &request;
        self.endpoints
            .call(|conn| async move { control(conn).submit_run(request.clone()).await })
            .await
            .map(|response| response.into_inner().run_id)
            .map_err(|error| self.error(error))
    }

    pub async fn get_run(&self, run_id: &str) -> anyhow::Result<GetRunResponse> {
        self.get_run_read(run_id, false).await
    }

    /// `GetRun`; with `stale`, the first member that answers may do so from its own, possibly
    /// stale, state (no leader needed).
    pub async fn get_run_read(&self, run_id: &str, stale: bool) -> anyhow::Result<GetRunResponse> {
        self.endpoints
            .call(|conn| async move {
                let request = GetRunRequest {
                    run_id: run_id.to_string(),
                };
                let request = if stale {
                    kiln_proto::endpoints::stale(request)
                } else {
                    tonic::Request::new(request)
                };
                control(conn).get_run(request).await
            })
            .await
            .map(Response::into_inner)
            .map_err(|error| self.error(error))
    }

    /// `ListRuns`; `stale` as in [`Farm::get_run_read`].
    pub async fn list_runs_read(&self, limit: u32, stale: bool) -> anyhow::Result<Vec<Run>> {
        self.endpoints
            .call(|conn| async move {
                let request = ListRunsRequest { limit };
                let request = if stale {
                    kiln_proto::endpoints::stale(request)
                } else {
                    tonic::Request::new(request)
                };
                control(conn).list_runs(request).await
            })
            .await
            .map(|response| response.into_inner().runs)
            .map_err(|error| self.error(error))
    }

    pub async fn cancel_run(&self, run_id: &str) -> anyhow::Result<RunStatus> {
        self.endpoints
            .call(|conn| async move {
                control(conn)
                    .cancel_run(CancelRunRequest {
                        run_id: run_id.to_string(),
                    })
                    .await
            })
            .await
            .map(|response| response.into_inner().status())
            .map_err(|error| self.error(error))
    }

    /// Drains (or undrains) an agent; returns its state afterwards.
    pub async fn drain_agent(&self, agent_id: &str, drain: bool) -> anyhow::Result<String> {
        self.endpoints
            .call(|conn| async move {
                control(conn)
                    .drain_agent(DrainAgentRequest {
                        agent_id: agent_id.to_string(),
                        drain,
                    })
                    .await
            })
            .await
            .map(|response| response.into_inner().state)
            .map_err(|error| self.error(error))
    }

    /// Opens the run's log stream on the leader (found through the endpoints).
    pub async fn stream_logs(&self, run_id: &str, follow: bool) -> anyhow::Result<LogStream> {
        let stream = self
            .endpoints
            .call(|conn| async move {
                control(conn)
                    .stream_logs(StreamLogsRequest {
                        run_id: run_id.to_string(),
                        follow,
                    })
                    .await
                    .map(Response::into_inner)
            })
            .await
            .map_err(|error| self.error(error))?;
        // `call` made the member that answered the preferred one.
        Ok(LogStream {
            stream,
            url: self.endpoints.preferred(),
        })
    }

    /// The cluster status as the first member that answers sees it.
    pub async fn cluster_status(&self) -> anyhow::Result<ClusterStatusResponse> {
        self.endpoints
            .call(|conn| async move { cluster(conn).status(ClusterStatusRequest {}).await })
            .await
            .map(Response::into_inner)
            .map_err(|error| self.cluster_error(error))
    }

    /// One member's own status, asked of that member only (bounded by a short timeout).
    pub async fn member_status(&self, url: &str) -> Result<ClusterStatusResponse, String> {
        let asked = self.endpoints.call_at(url, |conn| async move {
            cluster(conn).status(ClusterStatusRequest {}).await
        });
        match tokio::time::timeout(MEMBER_STATUS_TIMEOUT, asked).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(error)) => Err(error.detail()),
            Err(_) => Err(format!(
                "no answer within {}s",
                MEMBER_STATUS_TIMEOUT.as_secs()
            )),
        }
    }

    /// Adds a member (on the leader); returns the cluster id the new member joins.
    pub async fn add_member(&self, request: AddMemberRequest) -> anyhow::Result<String> {
        let request = &request;
        self.endpoints
            .call(|conn| async move { cluster(conn).add_member(request.clone()).await })
            .await
            .map(|response| response.into_inner().cluster_id)
            .map_err(|error| self.cluster_error(error))
    }

    pub async fn remove_member(&self, id: u64) -> anyhow::Result<()> {
        self.endpoints
            .call(|conn| async move {
                cluster(conn)
                    .remove_member(RemoveMemberRequest { id })
                    .await
            })
            .await
            .map(|_| ())
            .map_err(|error| self.cluster_error(error))
    }

    /// Moves the leadership (0: to the most caught-up voter); returns the new leader's id.
    pub async fn transfer_leader(&self, id: u64) -> anyhow::Result<u64> {
        self.endpoints
            .call(|conn| async move {
                cluster(conn)
                    .transfer_leader(TransferLeaderRequest { id })
                    .await
            })
            .await
            .map(|response| response.into_inner().leader_id)
            .map_err(|error| self.cluster_error(error))
    }

    /// Opens a snapshot stream of the applied state.
    pub async fn save_snapshot(&self) -> anyhow::Result<SnapshotStream> {
        let stream = self
            .endpoints
            .call(|conn| async move {
                cluster(conn)
                    .save_snapshot(SaveSnapshotRequest {})
                    .await
                    .map(Response::into_inner)
            })
            .await
            .map_err(|error| self.cluster_error(error))?;
        Ok(SnapshotStream { stream })
    }

    fn cluster_error(&self, error: CallError) -> anyhow::Error {
        if error.status.code() == tonic::Code::Unimplemented {
            return anyhow!(
                "the coordinator at {} does not serve the Cluster API: upgrade it to a version with Raft membership",
                error.endpoint
            );
        }
        self.error(error)
    }
}

/// Why a log stream stopped early.
pub enum StreamBreak {
    /// The member went away or stopped leading: find the leader again and re-attach.
    Lost(String),
    /// Anything else: a one-line error.
    Failed(anyhow::Error),
}

/// A run's log as it arrives.
pub struct LogStream {
    stream: Streaming<LogChunk>,
    url: String,
}

impl LogStream {
    /// The next chunk; `Ok(None)` when the stream ended.
    pub async fn next(&mut self, farm: &Farm) -> Result<Option<LogChunk>, StreamBreak> {
        match self.stream.message().await {
            Ok(chunk) => Ok(chunk),
            Err(status) if endpoints::is_retryable(&status) => {
                // Remember where to go next (the hinted leader, else the next member).
                farm.endpoints.failed(&self.url, Some(&status));
                Err(StreamBreak::Lost(endpoints::status_detail(&status)))
            }
            Err(status) => Err(StreamBreak::Failed(anyhow!(
                "{}",
                endpoints::status_detail(&status)
            ))),
        }
    }
}

/// A snapshot's pieces as they arrive.
pub struct SnapshotStream {
    stream: Streaming<SnapshotPiece>,
}

impl SnapshotStream {
    pub async fn next(&mut self) -> anyhow::Result<Option<SnapshotPiece>> {
        self.stream.message().await.map_err(|status| {
            anyhow!(
                "the snapshot stream broke: {}",
                endpoints::status_detail(&status)
            )
        })
    }
}

/// Turns a failed call into a one-line error for the user.
fn call_error(endpoints: &Endpoints, error: CallError) -> anyhow::Error {
    if !error.unreachable() {
        return anyhow!("{}", error.detail());
    }
    let waited = error.gave_up_after.map_or(0, |after| after.as_secs());
    if endpoints::is_transport(&error.status) {
        anyhow!(
            "cannot reach the kiln coordinator at {} ({}; tried for {waited}s): start the local farm with deploy/local/up.sh, or pass --coordinator / set KILN_COORDINATOR",
            endpoints.describe(),
            error.detail()
        )
    } else {
        anyhow!(
            "no kiln coordinator at {} could serve the request within {waited}s ({}: {}): wait for the cluster to elect a leader (kiln cluster status)",
            endpoints.describe(),
            error.endpoint,
            error.detail()
        )
    }
}

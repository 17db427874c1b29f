//! `kiln.v1.Cluster`: membership, leadership and backups, for `kiln cluster`.

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status};

use kiln_proto::v1::cluster_server::Cluster;
use kiln_proto::v1::{
    AddMemberRequest, AddMemberResponse, ClusterStatusRequest, ClusterStatusResponse,
    LatencyBucket, MemberStatus, RemoveMemberRequest, RemoveMemberResponse, SaveSnapshotRequest,
    SnapshotPiece, TransferLeaderRequest, TransferLeaderResponse,
};
use kiln_state::pb::Member;

use crate::api::{not_leader_status, propose_status};
use crate::cluster::normalize_url;
use crate::raft_node::{Admin, RaftHandle, Role};
use crate::transport::{cluster_id_text, SNAPSHOT_PIECE};

#[derive(Clone)]
pub struct ClusterApi {
    pub raft: RaftHandle,
}

type PieceStream = Pin<Box<dyn Stream<Item = Result<SnapshotPiece, Status>> + Send>>;

impl ClusterApi {
    fn leader_only(&self) -> Result<(), Status> {
        self.raft
            .require_leader()
            .map_err(|not_leader| not_leader_status(&not_leader))
    }
}

#[tonic::async_trait]
impl Cluster for ClusterApi {
    async fn status(
        &self,
        _: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        let report = self.raft.status_report().await.map_err(propose_status)?;
        let book: Vec<Member> = self.raft.read(|state| state.members().cloned().collect());
        let mut ids: Vec<u64> = report
            .voters
            .iter()
            .chain(report.learners.iter())
            .copied()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let me = report.status.node_id;
        let leading = report.status.role == Role::Leader;
        let members = ids
            .iter()
            .map(|id| {
                let address = book.iter().find(|m| m.id == *id);
                let progress = report.progress.iter().find(|p| p.id == *id);
                let role = if *id == me {
                    report.status.role.name()
                } else if report.learners.contains(id) {
                    "learner"
                } else if *id == report.status.leader_id {
                    "leader"
                } else {
                    "follower"
                };
                MemberStatus {
                    id: *id,
                    peer_url: address.map(|m| m.peer_url.clone()).unwrap_or_default(),
                    client_url: address.map(|m| m.client_url.clone()).unwrap_or_default(),
                    role: role.to_string(),
                    matched: progress.map_or(0, |p| p.matched),
                    behind: if leading {
                        progress.map_or(0, |p| report.commit.saturating_sub(p.matched))
                    } else {
                        0
                    },
                    last_contact_ms: progress
                        .and_then(|p| p.last_contact)
                        .map_or(0, |d| d.as_millis() as u64),
                }
            })
            .collect();
        Ok(Response::new(ClusterStatusResponse {
            cluster_id: cluster_id_text(self.raft.cluster_id),
            node_id: me,
            leader_id: report.status.leader_id,
            role: report.status.role.name().to_string(),
            term: report.status.term,
            commit_index: report.commit,
            applied_index: report.applied,
            first_index: report.first_index,
            last_index: report.last_index,
            snapshot_index: report.snapshot_index,
            members,
            commit_latency: self
                .raft
                .commit_latency()
                .into_iter()
                .map(|(le_us, count)| LatencyBucket { le_us, count })
                .collect(),
        }))
    }

    async fn add_member(
        &self,
        request: Request<AddMemberRequest>,
    ) -> Result<Response<AddMemberResponse>, Status> {
        self.leader_only()?;
        let AddMemberRequest {
            id,
            peer_url,
            client_url,
        } = request.into_inner();
        if id == 0 {
            return Err(Status::invalid_argument("a member id must be above 0"));
        }
        let peer_url = normalize_url(&peer_url).map_err(Status::invalid_argument)?;
        let client_url = normalize_url(&client_url).map_err(Status::invalid_argument)?;
        let member = Member {
            id,
            peer_url,
            client_url,
        };
        tracing::info!(id, peer = %member.peer_url, "adding a member as a learner");
        self.raft
            .admin(Admin::AddLearner(member))
            .await
            .map_err(propose_status)?;
        Ok(Response::new(AddMemberResponse {
            cluster_id: cluster_id_text(self.raft.cluster_id),
        }))
    }

    async fn remove_member(
        &self,
        request: Request<RemoveMemberRequest>,
    ) -> Result<Response<RemoveMemberResponse>, Status> {
        self.leader_only()?;
        let id = request.into_inner().id;
        tracing::info!(id, "removing a member");
        self.raft
            .admin(Admin::Remove(id))
            .await
            .map_err(propose_status)?;
        Ok(Response::new(RemoveMemberResponse {}))
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        self.leader_only()?;
        let id = request.into_inner().id;
        let leader_id = self
            .raft
            .admin(Admin::TransferLeader(id))
            .await
            .map_err(propose_status)?;
        tracing::info!(leader_id, "leadership transferred");
        Ok(Response::new(TransferLeaderResponse { leader_id }))
    }

    type SaveSnapshotStream = PieceStream;

    async fn save_snapshot(
        &self,
        _: Request<SaveSnapshotRequest>,
    ) -> Result<Response<PieceStream>, Status> {
        let (data, index, term) = self
            .raft
            .save_snapshot()
            .await
            .map_err(Status::unavailable)?;
        let cluster_id = cluster_id_text(self.raft.cluster_id);
        let from = self.raft.node_id;
        let pieces: Vec<Result<SnapshotPiece, Status>> = data
            .chunks(SNAPSHOT_PIECE)
            .map(|chunk| {
                Ok(SnapshotPiece {
                    cluster_id: cluster_id.clone(),
                    from,
                    message: Vec::new(),
                    data: chunk.to_vec(),
                    index,
                    term,
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(pieces))))
    }
}

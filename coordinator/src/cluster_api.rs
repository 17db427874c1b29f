//! `kiln.v1.Cluster`: membership, leadership and backups, for `kiln cluster`.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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

/// Sub-buckets per power of two of [`CommitLatency`]: about 9 % resolution.
const LATENCY_SUB_BUCKETS: u64 = 8;
/// Powers of two split in sub-buckets, from 8 µs: up to 2^28 µs (268 s, far beyond the
/// proposal timeout); anything longer counts in the last bucket.
const LATENCY_OCTAVES: usize = 25;

/// A fixed-size log-linear histogram of commit latencies in microseconds, lock-free (one
/// relaxed atomic add per commit) and cumulative since the process started: a benchmark
/// reads it before and after its load and subtracts.
pub struct CommitLatency {
    counts: Vec<AtomicU64>,
}

impl Default for CommitLatency {
    fn default() -> Self {
        let size = LATENCY_SUB_BUCKETS as usize * (LATENCY_OCTAVES + 1);
        Self {
            counts: (0..size).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl CommitLatency {
    /// Values below 8 µs have a bucket each; above, each power of two is split in 8.
    fn bucket(micros: u64) -> usize {
        if micros < LATENCY_SUB_BUCKETS {
            return micros as usize;
        }
        let octave = 63 - u64::from(micros.leading_zeros()); // ≥ 3
        let sub = (micros >> (octave - 3)) & (LATENCY_SUB_BUCKETS - 1);
        ((octave - 2) * LATENCY_SUB_BUCKETS + sub) as usize
    }

    /// The largest value (µs) that falls in `bucket`.
    fn upper_bound(bucket: usize) -> u64 {
        let bucket = bucket as u64;
        if bucket < LATENCY_SUB_BUCKETS {
            return bucket;
        }
        let octave = bucket / LATENCY_SUB_BUCKETS + 2;
        let sub = bucket % LATENCY_SUB_BUCKETS;
        ((LATENCY_SUB_BUCKETS + sub + 1) << (octave - 3)) - 1
    }

    pub fn record(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = Self::bucket(micros).min(self.counts.len() - 1);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// (upper bound in µs, count) of every non-empty bucket, lowest first.
    pub fn buckets(&self) -> Vec<(u64, u64)> {
        self.counts
            .iter()
            .enumerate()
            .filter_map(|(bucket, count)| {
                let count = count.load(Ordering::Relaxed);
                (count > 0).then(|| (Self::upper_bound(bucket), count))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_latency_buckets_hold_their_values_and_are_ordered() {
        let mut previous = None;
        for micros in (0..5000).chain([65_535, 65_536, 10_000_000, 200_000_000]) {
            let bucket = CommitLatency::bucket(micros);
            assert!(micros <= CommitLatency::upper_bound(bucket), "{micros}");
            if bucket > 0 {
                assert!(micros > CommitLatency::upper_bound(bucket - 1), "{micros}");
            }
            if let Some(previous) = previous {
                assert!(bucket >= previous);
            }
            previous = Some(bucket);
        }
        let latency = CommitLatency::default();
        latency.record(Duration::from_micros(3));
        latency.record(Duration::from_micros(1000));
        latency.record(Duration::from_micros(1001));
        latency.record(Duration::from_secs(3600));
        let buckets = latency.buckets();
        assert_eq!(buckets.len(), 3);
        assert_eq!(buckets[0], (3, 1));
        assert_eq!(buckets[1].1, 2);
        assert!(buckets[1].0 >= 1001 && buckets[1].0 < 1100);
        assert_eq!(buckets[2].1, 1);
    }
}

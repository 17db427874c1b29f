//! Raft traffic between coordinators over gRPC (`kiln.v1.Peer`).
//!
//! Sending: one task per peer with a bounded queue. The Raft thread never waits: a full queue
//! drops the message and reports the peer unreachable (Raft resends). Each task keeps one
//! long-lived client stream (`Peer.Raft`) and sends batches of up to [`MAX_BATCH`] messages or
//! [`MAX_BATCH_BYTES`]; when the stream breaks it reports the peer unreachable, drops what was
//! queued and reconnects. Snapshot messages take their own stream (`Peer.InstallSnapshot`) in
//! [`SNAPSHOT_PIECE`] pieces, and their outcome is always reported to Raft.
//!
//! Receiving: [`PeerService`] checks the cluster id of every batch, decodes the messages
//! (raft-rs's rust-protobuf encoding) and hands them to the Raft thread.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use futures::StreamExt as _;
use raft::eraftpb::{Message as RaftMessage, MessageType};
use raft::SnapshotStatus;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use kiln_proto::v1::peer_client::PeerClient;
use kiln_proto::v1::peer_server::Peer;
use kiln_proto::v1::{PeerDone, RaftBatch, SnapshotPiece};
use kiln_state::pb::Member;

use crate::raft_node::RaftHandle;
use crate::store::encode_raft;

/// Messages queued for one peer.
const PEER_QUEUE: usize = 4096;
pub const MAX_BATCH: usize = 128;
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Snapshot data travels in pieces of this size.
pub const SNAPSHOT_PIECE: usize = 1024 * 1024;
/// Largest snapshot a member accepts.
const MAX_SNAPSHOT_BYTES: usize = 2 * 1024 * 1024 * 1024;
/// Largest peer gRPC message (a batch of entries, each up to the 4 MiB request bound).
pub const MAX_PEER_MESSAGE: usize = 16 * 1024 * 1024;
const RECONNECT_AFTER: Duration = Duration::from_millis(50);
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);

/// Formats a cluster id the way it is shown and sent: 16 hex digits.
pub fn cluster_id_text(id: u64) -> String {
    format!("{id:016x}")
}

pub fn parse_cluster_id(text: &str) -> Option<u64> {
    if text.len() != 16 {
        return None;
    }
    u64::from_str_radix(text, 16).ok()
}

/// The sending half, shared by the Raft thread and the peer service.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: u64,
    cluster_id: u64,
    peer_url: String,
    /// Outgoing peer connections start from this address (the peer listen address), so that
    /// firewalls and fault proxies can tell members apart.
    source: Option<std::net::IpAddr>,
    runtime: tokio::runtime::Handle,
    raft: OnceLock<RaftHandle>,
    /// Peer addresses: the replicated address book, plus senders heard from.
    urls: RwLock<HashMap<u64, String>>,
    queues: Mutex<HashMap<u64, PeerQueue>>,
    shutdown: CancellationToken,
}

struct PeerQueue {
    url: String,
    tx: mpsc::Sender<RaftMessage>,
    stop: CancellationToken,
}

impl Transport {
    pub fn new(
        node_id: u64,
        cluster_id: u64,
        peer_url: String,
        source: Option<std::net::IpAddr>,
        runtime: tokio::runtime::Handle,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                node_id,
                cluster_id,
                peer_url,
                source,
                runtime,
                raft: OnceLock::new(),
                urls: RwLock::new(HashMap::new()),
                queues: Mutex::new(HashMap::new()),
                shutdown,
            }),
        }
    }

    pub(crate) fn attach(&self, raft: RaftHandle) {
        let _ = self.inner.raft.set(raft);
    }

    /// Replaces the address book with the replicated one.
    pub fn set_members<'a>(&self, members: impl Iterator<Item = &'a Member>) {
        let mut urls = self.inner.urls.write().unwrap_or_else(|p| p.into_inner());
        for member in members {
            if member.id != self.inner.node_id {
                urls.insert(member.id, member.peer_url.clone());
            }
        }
    }

    /// Records the address of a sender that is not in the address book yet (a new member
    /// hears from the leader before it has the address book).
    fn learn(&self, id: u64, url: &str) {
        if url.is_empty() || id == self.inner.node_id {
            return;
        }
        let mut urls = self.inner.urls.write().unwrap_or_else(|p| p.into_inner());
        urls.entry(id).or_insert_with(|| url.to_string());
    }

    fn report_unreachable(&self, id: u64) {
        if let Some(raft) = self.inner.raft.get() {
            raft.report_unreachable(id);
        }
    }

    /// Hands messages to their peers' queues. Never blocks.
    pub fn send(&self, messages: Vec<RaftMessage>) {
        for message in messages {
            let to = message.get_to();
            if to == self.inner.node_id || to == 0 {
                continue;
            }
            let Some(url) = self
                .inner
                .urls
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&to)
                .cloned()
            else {
                tracing::debug!(to, "no address for a raft peer; message dropped");
                self.report_unreachable(to);
                continue;
            };
            if message.get_msg_type() == MessageType::MsgSnapshot {
                self.send_snapshot(to, url, message);
                continue;
            }
            let mut queues = self.inner.queues.lock().unwrap_or_else(|p| p.into_inner());
            if queues.get(&to).is_some_and(|q| q.url != url) {
                if let Some(old) = queues.remove(&to) {
                    old.stop.cancel();
                }
            }
            let queue = queues.entry(to).or_insert_with(|| self.spawn_peer(to, url));
            if queue.tx.try_send(message).is_err() {
                drop(queues);
                self.report_unreachable(to);
            }
        }
    }

    fn spawn_peer(&self, id: u64, url: String) -> PeerQueue {
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        let stop = self.inner.shutdown.child_token();
        let transport = self.clone();
        let task_url = url.clone();
        let task_stop = stop.clone();
        self.inner
            .runtime
            .spawn(async move { transport.peer_loop(id, task_url, rx, task_stop).await });
        PeerQueue { url, tx, stop }
    }

    async fn peer_loop(
        self,
        id: u64,
        url: String,
        mut queue: mpsc::Receiver<RaftMessage>,
        stop: CancellationToken,
    ) {
        let endpoint = match tonic::transport::Endpoint::from_shared(url.clone()) {
            Ok(endpoint) => endpoint
                .connect_timeout(Duration::from_millis(500))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(1))
                .keep_alive_timeout(Duration::from_secs(2))
                .keep_alive_while_idle(true)
                .local_address(self.inner.source),
            Err(error) => {
                tracing::error!(id, %url, %error, "invalid peer address");
                return;
            }
        };
        let mut warned = false;
        while !stop.is_cancelled() {
            let channel = endpoint.connect_lazy();
            let mut client = PeerClient::new(channel)
                .max_encoding_message_size(MAX_PEER_MESSAGE)
                .max_decoding_message_size(MAX_PEER_MESSAGE);
            let (batches, batches_rx) = mpsc::channel::<RaftBatch>(8);
            let mut call =
                tokio::spawn(async move { client.raft(ReceiverStream::new(batches_rx)).await });
            let ended = loop {
                tokio::select! {
                    _ = stop.cancelled() => break None,
                    result = &mut call => break Some(result),
                    message = queue.recv() => {
                        let Some(message) = message else { break None };
                        let batch = self.batch(message, &mut queue);
                        if batches.send(batch).await.is_err() {
                            break None;
                        }
                    }
                }
            };
            call.abort();
            if stop.is_cancelled() {
                return;
            }
            match ended {
                Some(Ok(Err(status))) if status.code() == tonic::Code::FailedPrecondition => {
                    tracing::error!(id, %url, "raft peer refused this member: {}", status.message());
                }
                Some(Ok(Err(status))) if !warned => {
                    tracing::warn!(id, %url, "raft peer unreachable: {}", status.message());
                    warned = true;
                }
                _ => {}
            }
            // What was queued is stale by the time the peer is back: Raft resends.
            while queue.try_recv().is_ok() {}
            self.report_unreachable(id);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(RECONNECT_AFTER) => {}
            }
        }
    }

    fn batch(&self, first: RaftMessage, queue: &mut mpsc::Receiver<RaftMessage>) -> RaftBatch {
        let mut messages = vec![encode_raft(&first)];
        let mut bytes = messages[0].len();
        while messages.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match queue.try_recv() {
                Ok(message) => {
                    let encoded = encode_raft(&message);
                    bytes += encoded.len();
                    messages.push(encoded);
                }
                Err(_) => break,
            }
        }
        RaftBatch {
            cluster_id: cluster_id_text(self.inner.cluster_id),
            from: self.inner.node_id,
            from_peer_url: self.inner.peer_url.clone(),
            messages,
        }
    }

    fn send_snapshot(&self, to: u64, url: String, mut message: RaftMessage) {
        let transport = self.clone();
        let data = message.mut_snapshot().take_data();
        let header = encode_raft(&message);
        let index = message.get_snapshot().get_metadata().get_index();
        self.inner.runtime.spawn(async move {
            let started = std::time::Instant::now();
            let size = data.len();
            let result =
                tokio::time::timeout(SNAPSHOT_TIMEOUT, transport.stream_snapshot(&url, header, data))
                    .await
                    .unwrap_or_else(|_| Err("timed out".to_string()));
            let status = match result {
                Ok(()) => {
                    tracing::info!(to, index, bytes = size, elapsed = ?started.elapsed(), "sent a snapshot");
                    SnapshotStatus::Finish
                }
                Err(error) => {
                    tracing::warn!(to, index, %error, "sending a snapshot failed");
                    SnapshotStatus::Failure
                }
            };
            if let Some(raft) = transport.inner.raft.get() {
                let raft = raft.clone();
                let _ = tokio::task::spawn_blocking(move || raft.report_snapshot(to, status)).await;
            }
        });
    }

    async fn stream_snapshot(
        &self,
        url: &str,
        header: Vec<u8>,
        data: bytes::Bytes,
    ) -> Result<(), String> {
        let channel = tonic::transport::Endpoint::from_shared(url.to_string())
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(1))
            .local_address(self.inner.source)
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        let mut client = PeerClient::new(channel).max_encoding_message_size(MAX_PEER_MESSAGE);
        let cluster_id = cluster_id_text(self.inner.cluster_id);
        let from = self.inner.node_id;
        let mut pieces = vec![SnapshotPiece {
            cluster_id: cluster_id.clone(),
            from,
            message: header,
            ..SnapshotPiece::default()
        }];
        for chunk in data.chunks(SNAPSHOT_PIECE) {
            pieces.push(SnapshotPiece {
                data: chunk.to_vec(),
                ..SnapshotPiece::default()
            });
        }
        client
            .install_snapshot(tokio_stream::iter(pieces))
            .await
            .map(|_| ())
            .map_err(|status| status.message().to_string())
    }
}

/// The receiving half: `kiln.v1.Peer` on the peer listen address.
#[derive(Clone)]
pub struct PeerService {
    pub raft: RaftHandle,
    pub transport: Transport,
    /// Cancelled when this member's Raft stops: open streams end at once, so that peers
    /// reconnect (to whatever listens next) instead of talking to a member that is gone.
    pub stop: CancellationToken,
}

impl PeerService {
    fn check_cluster(&self, cluster_id: &str, from: u64) -> Result<(), Status> {
        let ours = cluster_id_text(self.raft.cluster_id);
        if cluster_id != ours {
            tracing::warn!(
                from,
                their_cluster = cluster_id,
                "refused raft traffic from another cluster"
            );
            return Err(Status::failed_precondition(format!(
                "node {} belongs to cluster {ours}; node {from} sent cluster '{cluster_id}'",
                self.raft.node_id
            )));
        }
        Ok(())
    }

    fn decode(&self, bytes: &[u8]) -> Result<RaftMessage, Status> {
        let message: RaftMessage = protobuf::Message::parse_from_bytes(bytes)
            .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))?;
        Ok(message)
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(
        &self,
        request: Request<Streaming<RaftBatch>>,
    ) -> Result<Response<PeerDone>, Status> {
        let mut stream = request.into_inner();
        loop {
            let batch = tokio::select! {
                _ = self.stop.cancelled() => {
                    return Err(Status::unavailable("this member is stopping"));
                }
                batch = stream.next() => batch,
            };
            let Some(batch) = batch else { break };
            let batch = batch?;
            self.check_cluster(&batch.cluster_id, batch.from)?;
            self.transport.learn(batch.from, &batch.from_peer_url);
            for bytes in &batch.messages {
                let message = self.decode(bytes)?;
                if message.get_to() == self.raft.node_id && message.get_from() == batch.from {
                    self.raft.step(message);
                }
            }
        }
        Ok(Response::new(PeerDone {}))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotPiece>>,
    ) -> Result<Response<PeerDone>, Status> {
        let mut stream = request.into_inner();
        let Some(first) = stream.next().await.transpose()? else {
            return Err(Status::invalid_argument("an empty snapshot stream"));
        };
        self.check_cluster(&first.cluster_id, first.from)?;
        let mut message = self.decode(&first.message)?;
        let mut data = Vec::new();
        while let Some(piece) = stream.next().await {
            let piece = piece?;
            if data.len() + piece.data.len() > MAX_SNAPSHOT_BYTES {
                return Err(Status::resource_exhausted("the snapshot is too large"));
            }
            data.extend_from_slice(&piece.data);
        }
        if message.get_to() != self.raft.node_id || message.get_from() != first.from {
            return Err(Status::invalid_argument(
                "the snapshot is addressed to another node",
            ));
        }
        message.mut_snapshot().set_data(data.into());
        self.raft.step(message);
        Ok(Response::new(PeerDone {}))
    }
}

//! Three (and four) real coordinators in one process: real RocksDB stores on temporary
//! directories, real gRPC between them through fault proxies (kiln-faultnet) that cut and delay
//! links, and restarts on the same data directories. A seeded schedule of faults runs while
//! runs are submitted; afterwards the invariants are checked on the stores themselves:
//! at most one leader per term, identical committed prefixes, equal states at equal applied
//! index, and every acknowledged submission present exactly once.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use kiln_coordinator::cluster::{InitialClusterState, Membership};
use kiln_coordinator::raft_node::RaftConfig;
use kiln_coordinator::store::Store;
use kiln_faultnet::{Network, Proxy};
use kiln_proto::pb::Member;
use kiln_proto::v1::cluster_client::ClusterClient;
use kiln_proto::v1::control_client::ControlClient;
use kiln_proto::v1::{
    AddMemberRequest, ClusterStatusRequest, ClusterStatusResponse, RemoveMemberRequest,
    SubmitRunRequest,
};

const WAIT: Duration = Duration::from_secs(30);

/// A small deterministic generator, so a failing schedule can be replayed from its seed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn ip(node: u64, net: u8) -> IpAddr {
    IpAddr::from([127, net, 1, node as u8])
}

struct Node {
    id: u64,
    dir: PathBuf,
    client: SocketAddr,
    peer: SocketAddr,
    /// What the others dial: the fault proxy in front of `peer`.
    proxy: Proxy,
    running: Option<(
        CancellationToken,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    )>,
}

struct Cluster {
    network: Network,
    nodes: BTreeMap<u64, Node>,
    base: tempfile::TempDir,
    raft: RaftConfig,
    /// Leaders seen, by term.
    leaders: BTreeMap<u64, HashSet<u64>>,
    cluster_id: u64,
}

impl Cluster {
    /// Starts `count` members of a new cluster. The loopback nets 127.<net>.1.x keep tests that
    /// run at the same time apart.
    async fn start(count: u64, net: u8, raft: RaftConfig) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("KILN_TEST_LOG")
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let base = tempfile::tempdir().unwrap();
        let network = Network::new();
        let mut nodes = BTreeMap::new();
        for id in 1..=count {
            nodes.insert(id, Self::new_node(&network, &base, id, net).await);
        }
        let members: Vec<Member> = nodes.values().map(member_of).collect();
        let mut cluster = Self {
            network,
            nodes,
            base,
            raft,
            leaders: BTreeMap::new(),
            cluster_id: 0,
        };
        for id in 1..=count {
            cluster.boot(id, members.clone(), None).await;
        }
        cluster.wait_for_leader().await;
        cluster.cluster_id =
            u64::from_str_radix(&cluster.any_status().await.cluster_id, 16).unwrap();
        cluster
    }

    async fn new_node(network: &Network, base: &tempfile::TempDir, id: u64, net: u8) -> Node {
        let client = free(ip(id, net)).await;
        let peer = free(ip(id, net)).await;
        let proxy_ip = IpAddr::from([127, net, 2, id as u8]);
        let proxy = Proxy::start(network.clone(), id, SocketAddr::new(proxy_ip, 0), peer)
            .await
            .unwrap();
        network.add_member(id, ip(id, net));
        Node {
            id,
            dir: base.path().join(format!("n{id}")),
            client,
            peer,
            proxy,
            running: None,
        }
    }

    async fn boot(&mut self, id: u64, initial: Vec<Member>, join: Option<u64>) {
        let node = self.nodes.get_mut(&id).unwrap();
        let config = kiln_coordinator::Config {
            raft: self.raft,
            ..member_config(
                node.client,
                node.peer,
                node.dir.clone(),
                Membership {
                    peer_url: format!("http://{}", node.proxy.address),
                    client_url: format!("http://{}", node.client),
                    initial_members: initial,
                    join,
                    ..membership(id, "cluster-test")
                },
            )
        };
        // The ports were used before a restart; binding again may briefly fail.
        let listeners = loop {
            match kiln_coordinator::bind(&config).await {
                Ok(listeners) => break listeners,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(kiln_coordinator::serve(listeners, config, shutdown.clone()));
        node.running = Some((shutdown, task));
    }

    async fn stop(&mut self, id: u64) {
        if let Some((shutdown, task)) = self.nodes.get_mut(&id).unwrap().running.take() {
            shutdown.cancel();
            let _ = task.await;
        }
    }

    /// An abrupt stop: the task is aborted mid-flight (no hand-over, no flush beyond what
    /// each synced batch already made durable).
    async fn crash(&mut self, id: u64) {
        if let Some((shutdown, task)) = self.nodes.get_mut(&id).unwrap().running.take() {
            task.abort();
            let _ = task.await;
            shutdown.cancel();
            // The Raft thread stops at its next loop turn and releases the database.
            let db = self.nodes[&id].dir.join("db");
            let deadline = Instant::now() + WAIT;
            while Store::open(&db).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "node {id}'s database stays locked"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    async fn restart(&mut self, id: u64) {
        self.boot(id, Vec::new(), None).await;
    }

    async fn status(&self, id: u64) -> Option<ClusterStatusResponse> {
        let node = &self.nodes[&id];
        node.running.as_ref()?;
        let url = format!("http://{}", node.client);
        let call = async {
            let mut client = ClusterClient::connect(url).await.ok()?;
            client
                .status(ClusterStatusRequest {})
                .await
                .ok()
                .map(|r| r.into_inner())
        };
        tokio::time::timeout(Duration::from_secs(1), call)
            .await
            .ok()
            .flatten()
    }

    async fn any_status(&self) -> ClusterStatusResponse {
        for id in self.nodes.keys() {
            if let Some(status) = self.status(*id).await {
                return status;
            }
        }
        panic!("no member answers");
    }

    /// Polls every member and records who leads in which term.
    async fn observe(&mut self) -> Option<u64> {
        let mut leader = None;
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            if let Some(status) = self.status(id).await {
                if status.role == "leader" {
                    self.leaders.entry(status.term).or_default().insert(id);
                    leader = Some(id);
                }
            }
        }
        leader
    }

    async fn wait_for_leader(&mut self) -> u64 {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(leader) = self.observe().await {
                return leader;
            }
            assert!(Instant::now() < deadline, "no leader within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Submits a run through whichever member leads; `None` when nobody took it in time (the
    /// outcome is then unknown and the caller does not count it).
    async fn submit(&self, request_id: &str, task: &str) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            for node in self.nodes.values() {
                if node.running.is_none() {
                    continue;
                }
                let url = format!("http://{}", node.client);
                let call = async {
                    let mut client = ControlClient::connect(url).await.ok()?;
                    client
                        .submit_run(SubmitRunRequest {
                            request: Some(support::request(task)),
                            request_id: request_id.to_string(),
                        })
                        .await
                        .ok()
                        .map(|r| r.into_inner().run_id)
                };
                if let Ok(Some(run_id)) = tokio::time::timeout(Duration::from_secs(2), call).await {
                    return Some(run_id);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Waits until every running member has applied the same index.
    async fn wait_converged(&mut self) -> u64 {
        let deadline = Instant::now() + WAIT;
        loop {
            self.observe().await;
            let mut applied = HashSet::new();
            let mut all = true;
            for id in self.nodes.keys().copied().collect::<Vec<_>>() {
                if self.nodes[&id].running.is_none() {
                    continue;
                }
                match self.status(id).await {
                    Some(status) if status.commit_index == status.applied_index => {
                        applied.insert(status.applied_index);
                    }
                    _ => all = false,
                }
            }
            if all && applied.len() == 1 {
                return applied.into_iter().next().unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "members did not converge within {WAIT:?}: {applied:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop_all(&mut self) {
        for id in self.nodes.keys().copied().collect::<Vec<_>>() {
            self.stop(id).await;
        }
    }

    fn dirs(&self) -> Vec<(u64, PathBuf)> {
        self.nodes.values().map(|n| (n.id, n.dir.clone())).collect()
    }
}

fn member_of(node: &Node) -> Member {
    Member {
        id: node.id,
        peer_url: format!("http://{}", node.proxy.address),
        client_url: format!("http://{}", node.client),
    }
}

async fn free(ip: IpAddr) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, 0))
        .await
        .unwrap();
    listener.local_addr().unwrap()
}

/// A member's configuration: no HTTP port, default Raft settings and an unreachable registry
/// (these tests never store logs).
fn member_config(
    listen: SocketAddr,
    peer_listen: SocketAddr,
    data_dir: PathBuf,
    membership: Membership,
) -> kiln_coordinator::Config {
    kiln_coordinator::Config {
        listen,
        peer_listen,
        http_listen: None,
        data_dir,
        registry: "127.0.0.1:1".to_string(),
        membership,
        raft: RaftConfig::default(),
        liveness: Default::default(),
        retention: Default::default(),
    }
}

/// Node `node_id` of a new cluster of one (made from `token`), without addresses.
fn membership(node_id: u64, token: &str) -> Membership {
    Membership {
        node_id,
        peer_url: String::new(),
        client_url: String::new(),
        initial_members: Vec::new(),
        initial_state: InitialClusterState::New,
        cluster_token: token.to_string(),
        join: None,
        restore: None,
        force_new_cluster: false,
    }
}

/// Opens every stopped member's store and checks the Raft invariants on what is on disk
/// (`support::check_stores`).
fn check_stores(dirs: &[(u64, PathBuf)], acknowledged: &HashMap<String, String>) {
    let disks: Vec<_> = dirs
        .iter()
        .map(|(id, dir)| support::read_store(*id, dir))
        .collect();
    support::check_stores(&disks, acknowledged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_seeded_schedule_of_cuts_delays_crashes_and_restarts_keeps_raft_safe() {
    let seed: u64 = std::env::var("KILN_CLUSTER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261202);
    let rounds: u64 = std::env::var("KILN_CLUSTER_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let mut rng = Lcg(seed);
    let mut cluster = Cluster::start(3, 61, RaftConfig::default()).await;
    let mut acknowledged = HashMap::new();
    let mut next = 0u64;
    for round in 0..rounds {
        let fault = rng.below(5);
        let victim = 1 + rng.below(3);
        let what = match fault {
            0 => {
                cluster.network.isolate(victim);
                format!("isolate {victim}")
            }
            1 => {
                let other = 1 + (victim % 3);
                cluster.network.partition(&[victim, other]);
                format!("partition [{victim},{other}] | rest")
            }
            2 => {
                for to in 1..=3 {
                    if to != victim {
                        cluster.network.delay(
                            victim,
                            to,
                            Duration::from_millis(30 + rng.below(60)),
                        );
                    }
                }
                format!("delay from {victim}")
            }
            3 => {
                cluster.crash(victim).await;
                format!("crash {victim}")
            }
            _ => {
                cluster.stop(victim).await;
                format!("stop {victim}")
            }
        };
        eprintln!("seed {seed} round {round}: {what}");
        for _ in 0..(3 + rng.below(5)) {
            next += 1;
            let request_id = format!("r{next}");
            if let Some(run_id) = cluster.submit(&request_id, support::TASK).await {
                acknowledged.insert(request_id.clone(), run_id);
            }
            // A retry of the same request never makes a second run.
            if rng.below(3) == 0 {
                if let Some(again) = cluster.submit(&request_id, support::TASK).await {
                    if let Some(first) = acknowledged.get(&request_id) {
                        assert_eq!(&again, first, "a retry of {request_id} made another run");
                    }
                    acknowledged.insert(request_id, again);
                }
            }
            cluster.observe().await;
        }
        cluster.network.heal();
        if cluster.nodes[&victim].running.is_none() {
            cluster.restart(victim).await;
        }
        cluster.wait_for_leader().await;
    }
    cluster.wait_converged().await;
    for (term, leaders) in &cluster.leaders {
        assert!(leaders.len() <= 1, "term {term} had leaders {leaders:?}");
    }
    assert!(
        acknowledged.len() as u64 >= next / 2,
        "only {} of {next} submissions were acknowledged",
        acknowledged.len()
    );
    cluster.stop_all().await;
    check_stores(&cluster.dirs(), &acknowledged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lagging_follower_catches_up_by_a_multi_piece_snapshot_and_membership_changes_while_runs_flow(
) {
    // Compact early so that the isolated follower falls behind the log.
    let raft = RaftConfig {
        compact_after: 200,
        catch_up_entries: 20,
        ..RaftConfig::default()
    };
    let mut cluster = Cluster::start(3, 62, raft).await;
    let leader = cluster.wait_for_leader().await;
    let lagging = if leader == 3 { 2 } else { 3 };
    cluster.network.isolate(lagging);
    // About 6 MiB of state: 60 runs with 100 KiB task files.
    let big = format!("{}# {}\n", support::TASK, "x".repeat(100 * 1024));
    let mut acknowledged = HashMap::new();
    for i in 0..60 {
        let request_id = format!("big{i}");
        let run_id = cluster
            .submit(&request_id, &big)
            .await
            .expect("the majority takes runs");
        acknowledged.insert(request_id, run_id);
    }
    // More small entries than the log keeps, so the follower cannot catch up from the log.
    for i in 0..260 {
        let request_id = format!("small{i}");
        let run_id = cluster
            .submit(&request_id, support::TASK)
            .await
            .expect("the majority takes runs");
        acknowledged.insert(request_id, run_id);
    }
    let leader = cluster.wait_for_leader().await;
    let leader_status = cluster.status(leader).await.unwrap();
    assert!(
        leader_status.first_index > 60,
        "the leader compacted its log: {leader_status:?}"
    );
    cluster.network.heal();
    cluster.wait_converged().await;
    let caught_up = cluster.status(lagging).await.unwrap();
    assert!(
        caught_up.snapshot_index >= leader_status.first_index - 1,
        "node {lagging} caught up by a snapshot: {caught_up:?}"
    );

    // A fourth member joins (empty, with --join) and one is removed, while runs flow.
    let net = 62;
    let node = Cluster::new_node(&cluster.network, &cluster.base, 4, net).await;
    let member = member_of(&node);
    cluster.nodes.insert(4, node);
    let flow = {
        let clients: Vec<String> = cluster
            .nodes
            .values()
            .map(|n| format!("http://{}", n.client))
            .collect();
        tokio::spawn(async move {
            let mut made = Vec::new();
            for i in 0..40 {
                for url in &clients {
                    let Ok(mut client) = ControlClient::connect(url.clone()).await else {
                        continue;
                    };
                    let request_id = format!("flow{i}");
                    if let Ok(response) = client
                        .submit_run(SubmitRunRequest {
                            request: Some(support::request(support::TASK)),
                            request_id: request_id.clone(),
                        })
                        .await
                    {
                        made.push((request_id, response.into_inner().run_id));
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            made
        })
    };
    let leader = cluster.wait_for_leader().await;
    let leader_url = format!("http://{}", cluster.nodes[&leader].client);
    let mut admin = ClusterClient::connect(leader_url).await.unwrap();
    admin
        .add_member(AddMemberRequest {
            id: 4,
            peer_url: member.peer_url.clone(),
            client_url: member.client_url.clone(),
        })
        .await
        .unwrap();
    let cluster_id = cluster.cluster_id;
    cluster.boot(4, Vec::new(), Some(cluster_id)).await;
    // Promoted to voter once caught up.
    let deadline = Instant::now() + WAIT;
    loop {
        let status = cluster.status(leader).await.unwrap();
        if status
            .members
            .iter()
            .any(|m| m.id == 4 && m.role == "follower")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 4 was not promoted: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let removed = if leader == 1 { 2 } else { 1 };
    admin
        .remove_member(RemoveMemberRequest { id: removed })
        .await
        .unwrap();
    for (request_id, run_id) in flow.await.unwrap() {
        acknowledged.insert(request_id, run_id);
    }
    // The removed member stops by itself.
    let (_, task) = cluster
        .nodes
        .get_mut(&removed)
        .unwrap()
        .running
        .take()
        .unwrap();
    let result = tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    assert!(
        format!("{result:?}").contains("removed"),
        "the removed member stops: {result:?}"
    );
    let leader = cluster.wait_for_leader().await;
    let status = cluster.status(leader).await.unwrap();
    let ids: Vec<u64> = status.members.iter().map(|m| m.id).collect();
    assert!(!ids.contains(&removed) && ids.contains(&4), "{ids:?}");
    cluster.wait_converged().await;
    cluster.stop_all().await;
    let dirs: Vec<(u64, PathBuf)> = cluster
        .dirs()
        .into_iter()
        .filter(|(id, _)| *id != removed)
        .collect();
    check_stores(&dirs, &acknowledged);
}

/// Saves a backup through `Cluster.SaveSnapshot` and returns its bytes.
async fn save_backup(url: String) -> Vec<u8> {
    use futures::StreamExt as _;
    let mut client = ClusterClient::connect(url).await.unwrap();
    let mut pieces = client
        .save_snapshot(kiln_proto::v1::SaveSnapshotRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut data = Vec::new();
    while let Some(piece) = pieces.next().await {
        data.extend_from_slice(&piece.unwrap().data);
    }
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_whole_cluster_restart_a_backup_restore_and_a_forced_cluster_of_one_keep_every_run() {
    let mut cluster = Cluster::start(3, 63, RaftConfig::default()).await;
    let mut acknowledged = HashMap::new();
    for i in 0..30 {
        let request_id = format!("keep{i}");
        let run_id = cluster
            .submit(&request_id, support::TASK)
            .await
            .expect("taken");
        acknowledged.insert(request_id, run_id);
    }
    cluster.wait_converged().await;
    let leader = cluster.wait_for_leader().await;
    let backup = save_backup(format!("http://{}", cluster.nodes[&leader].client)).await;

    // Kill every member at once, then start them all again: every run is back.
    for id in 1..=3 {
        cluster.crash(id).await;
    }
    for id in 1..=3 {
        cluster.restart(id).await;
    }
    cluster.wait_for_leader().await;
    for i in 30..35 {
        let request_id = format!("keep{i}");
        let run_id = cluster
            .submit(&request_id, support::TASK)
            .await
            .expect("taken after restart");
        acknowledged.insert(request_id, run_id);
    }
    cluster.wait_converged().await;
    cluster.stop_all().await;
    check_stores(&cluster.dirs(), &acknowledged);

    // Quorum lost for good: only member 1 survives. Forced into a cluster of one, it leads alone
    // with every run it had applied.
    let node = &cluster.nodes[&1];
    let config_dir = node.dir.clone();
    let config = member_config(
        node.client,
        node.peer,
        config_dir.clone(),
        Membership {
            peer_url: format!("http://{}", node.proxy.address),
            client_url: format!("http://{}", node.client),
            initial_state: InitialClusterState::Existing,
            force_new_cluster: true,
            ..membership(1, "cluster-test")
        },
    );
    let listeners = kiln_coordinator::bind(&config).await.unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(kiln_coordinator::serve(listeners, config, shutdown.clone()));
    let url = format!("http://{}", node.client);
    let deadline = Instant::now() + WAIT;
    let status = loop {
        let status = async {
            ClusterClient::connect(url.clone())
                .await
                .ok()?
                .status(ClusterStatusRequest {})
                .await
                .ok()
        }
        .await;
        if let Some(status) = status.map(|s| s.into_inner()) {
            if status.role == "leader" {
                break status;
            }
        }
        assert!(Instant::now() < deadline, "the forced member does not lead");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.members.len(), 1, "{status:?}");
    let mut control = ControlClient::connect(url.clone()).await.unwrap();
    for run_id in acknowledged.values() {
        control
            .get_run(kiln_proto::v1::GetRunRequest {
                run_id: run_id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("run {run_id} after the forced start: {e}"));
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();

    // A new cluster from the backup has the first 30 runs, and numbering goes on after them.
    let backup_file = cluster.base.path().join("backup.snapshot");
    std::fs::write(&backup_file, &backup).unwrap();
    let fresh = cluster.base.path().join("restored");
    let client = free(ip(9, 63)).await;
    let peer = free(ip(9, 63)).await;
    let config = member_config(
        client,
        peer,
        fresh,
        Membership {
            restore: Some(backup_file),
            ..membership(1, "restored")
        },
    );
    let listeners = kiln_coordinator::bind(&config).await.unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(kiln_coordinator::serve(listeners, config, shutdown.clone()));
    let mut control = ControlClient::connect(format!("http://{client}"))
        .await
        .unwrap();
    let runs = control
        .list_runs(kiln_proto::v1::ListRunsRequest { limit: 1000 })
        .await
        .unwrap()
        .into_inner()
        .runs;
    assert_eq!(runs.len(), 30, "the backup holds the first 30 runs");
    let next = control
        .submit_run(SubmitRunRequest {
            request: Some(support::request(support::TASK)),
            request_id: "after-restore".to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .run_id;
    assert_eq!(next, "ca31", "numbering goes on after the restored runs");
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

async fn http_get(address: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_answer_on_the_http_port() {
    let dir = tempfile::tempdir().unwrap();
    let client = free(ip(1, 64)).await;
    let peer = free(ip(1, 64)).await;
    let http = free(ip(1, 64)).await;
    let config = kiln_coordinator::Config {
        http_listen: Some(http),
        ..member_config(
            client,
            peer,
            dir.path().to_path_buf(),
            membership(1, "health"),
        )
    };
    let listeners = kiln_coordinator::bind(&config).await.unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(kiln_coordinator::serve(listeners, config, shutdown.clone()));
    let deadline = Instant::now() + WAIT;
    loop {
        let ready = http_get(http, "/readyz").await;
        if ready.starts_with("HTTP/1.1 200") {
            assert!(ready.contains("ready: node 1 leader"), "{ready}");
            break;
        }
        assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
        assert!(Instant::now() < deadline, "never ready: {ready}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let health = http_get(http, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    // The gRPC health service says the same.
    let mut health_client = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{client}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let serving = health_client
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        serving,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

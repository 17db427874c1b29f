//! Shared by the coordinator's integration tests: a cluster of real `kiln-coordinator`
//! PROCESSES (started the way `kiln-loadtest chaos` starts them: `--initial-member` for each,
//! `--initial-cluster-state new`, one data directory each), the `kiln cluster status` calls
//! that find the leader and tell when the members converged, client submissions with request
//! ids, and the checks made on the members' RocksDB stores once they are stopped.
//!
//! A test uses it with `mod support;`. Killing a process (SIGKILL) and restarting it on the
//! same directory is the crash; `FAILPOINTS` in a member's environment arms its crash points
//! (`kiln_coordinator::store::CRASH_POINTS`).

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use kiln_coordinator::store::{RaftStorage, Store};
use kiln_proto::pb::{Platform, RunRequest};
use kiln_proto::v1::cluster_client::ClusterClient;
use kiln_proto::v1::control_client::ControlClient;
use kiln_proto::v1::{
    ClusterStatusRequest, ClusterStatusResponse, ListRunsRequest, SubmitRunRequest,
    TransferLeaderRequest,
};
use tonic::transport::{Channel, Endpoint};

/// The longest any one wait (an election, a restart, convergence) may take.
pub const WAIT: Duration = Duration::from_secs(30);
/// Polling interval of the waits (never a synchronisation by itself: each wait has a condition
/// and a deadline).
pub const POLL: Duration = Duration::from_millis(20);
pub const SIGABRT: i32 = 6;

pub const TASK: &str = "version: v1.1.0\nsteps:\n  - cmd: busybox true\n";

pub fn request(task: &str) -> RunRequest {
    RunRequest {
        task_yaml: task.to_string(),
        task_file_name: "acb.yaml".to_string(),
        platform: Some(Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: String::new(),
        }),
        ..RunRequest::default()
    }
}

/// A lazily connected channel: reconnects by itself once a restarted member listens again.
pub fn channel(url: &str) -> Channel {
    Endpoint::from_shared(url.to_string())
        .expect("a valid url")
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(3))
        .connect_lazy()
}

async fn free_port(ip: IpAddr) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, 0))
        .await
        .unwrap_or_else(|e| panic!("cannot bind a port on {ip}: {e}"));
    listener.local_addr().unwrap()
}

pub struct Member {
    pub id: u64,
    pub client: SocketAddr,
    pub peer: SocketAddr,
    /// The member's own directory: `data/` (its `--data-dir`) and one log file per start.
    pub dir: PathBuf,
    pub child: Option<Child>,
    /// Starts so far; start N logs to `start-N.log`.
    pub starts: u32,
    status: ClusterClient<Channel>,
}

impl Member {
    pub fn client_url(&self) -> String {
        format!("http://{}", self.client)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The log of the latest start.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join(format!("start-{}.log", self.starts))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

pub struct ProcessCluster {
    pub members: BTreeMap<u64, Member>,
    binary: PathBuf,
    initial: String,
    extra_args: Vec<String>,
    _base: tempfile::TempDir,
}

impl ProcessCluster {
    /// Allocates addresses on 127.0.`net`.`id` for `size` members; starts none.
    pub async fn new(binary: &Path, size: u64, net: u8, extra_args: &[String]) -> Self {
        let base = tempfile::Builder::new()
            .prefix("kiln-processes-")
            .tempdir()
            .unwrap();
        let mut members = BTreeMap::new();
        for id in 1..=size {
            let ip = IpAddr::from([127, 0, net, id as u8]);
            let client = free_port(ip).await;
            let peer = free_port(ip).await;
            let dir = base.path().join(format!("member-{id}"));
            std::fs::create_dir_all(&dir).unwrap();
            members.insert(
                id,
                Member {
                    id,
                    client,
                    peer,
                    dir,
                    child: None,
                    starts: 0,
                    status: ClusterClient::new(channel(&format!("http://{client}"))),
                },
            );
        }
        let initial = members
            .values()
            .map(|m| {
                format!(
                    "id={},peer=http://{},client={}",
                    m.id,
                    m.peer,
                    m.client_url()
                )
            })
            .collect::<Vec<_>>()
            .join(";");
        Self {
            members,
            binary: binary.to_path_buf(),
            initial,
            extra_args: extra_args.to_vec(),
            _base: base,
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.members.values().map(Member::client_url).collect()
    }

    /// Starts member `id` on its data directory (new or not: a directory that belongs to the
    /// cluster is never reset), with `failpoints` as its `FAILPOINTS` or none.
    pub fn spawn(&mut self, id: u64, failpoints: Option<&str>) {
        let initial = self.initial.clone();
        let member = self.members.get_mut(&id).unwrap();
        assert!(member.child.is_none(), "member {id} is already running");
        member.starts += 1;
        let log = std::fs::File::create(member.log_path()).unwrap();
        let mut command = Command::new(&self.binary);
        command
            .args(["--node-id", &id.to_string()])
            .args(["--listen", &member.client.to_string()])
            .args(["--peer-listen", &member.peer.to_string()])
            .args(["--http-listen", "off"])
            .args(["--initial-member", &initial])
            .args(["--initial-cluster-state", "new"])
            .args(["--cluster-token", "processes"])
            .args(["--registry", "127.0.0.1:1"])
            .args(&self.extra_args)
            .arg("--data-dir")
            .arg(member.data_dir())
            .env_remove("FAILPOINTS")
            .env("RUST_LOG", "info")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(failpoints) = failpoints {
            command.env("FAILPOINTS", failpoints);
        }
        member.child = Some(
            command
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display())),
        );
    }

    pub fn spawn_all(&mut self) {
        for id in self.ids() {
            self.spawn(id, None);
        }
    }

    pub fn ids(&self) -> Vec<u64> {
        self.members.keys().copied().collect()
    }

    /// kill -9, and waits for the process to be gone.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.members.get_mut(&id).unwrap().child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn kill_all(&mut self) {
        for id in self.ids() {
            self.kill(id);
        }
    }

    /// The exit status of member `id` if its process has ended (it is then marked stopped).
    pub fn exited(&mut self, id: u64) -> Option<ExitStatus> {
        let member = self.members.get_mut(&id).unwrap();
        let status = member.child.as_mut()?.try_wait().unwrap()?;
        member.child = None;
        Some(status)
    }

    pub fn running(&mut self, id: u64) -> bool {
        self.exited(id);
        self.members[&id].child.is_some()
    }

    /// Fails at once, with its log, if a member that was started has stopped.
    pub fn assert_alive(&mut self) {
        for id in self.ids() {
            let member = self.members.get_mut(&id).unwrap();
            if let Some(child) = member.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "member {id} stopped ({}):\n{}",
                        describe(&status),
                        member.log()
                    );
                }
            }
        }
    }

    pub async fn status(&self, id: u64) -> Option<ClusterStatusResponse> {
        let member = &self.members[&id];
        member.child.as_ref()?;
        let mut client = member.status.clone();
        let call = client.status(ClusterStatusRequest {});
        match tokio::time::timeout(Duration::from_millis(500), call).await {
            Ok(Ok(response)) => Some(response.into_inner()),
            _ => None,
        }
    }

    /// The member that reports itself leader, if one does.
    pub async fn leader(&self) -> Option<u64> {
        for id in self.ids() {
            if self.status(id).await.is_some_and(|s| s.role == "leader") {
                return Some(id);
            }
        }
        None
    }

    pub async fn wait_leader(&self) -> u64 {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(id) = self.leader().await {
                return id;
            }
            assert!(Instant::now() < deadline, "no leader within {WAIT:?}");
            tokio::time::sleep(POLL).await;
        }
    }

    /// Makes `target` the leader (if it is not already) and waits until it says so.
    pub async fn make_leader(&self, target: u64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let leader = self.wait_leader().await;
            if leader == target {
                return;
            }
            let mut client = self.members[&leader].status.clone();
            let _ = client
                .transfer_leader(TransferLeaderRequest { id: target })
                .await;
            assert!(
                Instant::now() < deadline,
                "member {target} did not take the lead within {WAIT:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Makes a member other than `avoid` the leader.
    pub async fn make_leader_other_than(&self, avoid: u64) {
        let other = self.ids().into_iter().find(|id| *id != avoid).unwrap();
        if self.wait_leader().await == avoid {
            self.make_leader(other).await;
        }
    }

    /// Waits until every member runs, knows a leader, and all have applied everything
    /// committed, at the same index; returns that index.
    pub async fn wait_converged(&mut self) -> u64 {
        let deadline = Instant::now() + WAIT;
        loop {
            self.assert_alive();
            let mut seen = Vec::new();
            for id in self.ids() {
                if let Some(status) = self.status(id).await {
                    if status.leader_id != 0 && status.commit_index == status.applied_index {
                        seen.push(status.applied_index);
                    }
                }
            }
            if seen.len() == self.members.len() && seen.iter().all(|a| *a == seen[0]) {
                return seen[0];
            }
            assert!(
                Instant::now() < deadline,
                "the members did not converge within {WAIT:?}: applied {seen:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Every run the leader holds, by request id (several runs for one id would be a bug, so
    /// they are all kept).
    pub async fn runs_by_request(&self) -> HashMap<String, Vec<String>> {
        let deadline = Instant::now() + WAIT;
        loop {
            let leader = self.wait_leader().await;
            let mut client = ControlClient::new(channel(&self.members[&leader].client_url()));
            if let Ok(response) = client.list_runs(ListRunsRequest { limit: 1000 }).await {
                let mut runs: HashMap<String, Vec<String>> = HashMap::new();
                for run in response.into_inner().runs {
                    runs.entry(run.request_id).or_default().push(run.id);
                }
                return runs;
            }
            assert!(Instant::now() < deadline, "the leader does not list runs");
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Submits runs through any member that takes them; keeps the member that last did.
#[derive(Clone)]
pub struct Submitter {
    clients: Vec<ControlClient<Channel>>,
    current: usize,
}

impl Submitter {
    pub fn new(urls: &[String]) -> Self {
        Self {
            clients: urls
                .iter()
                .map(|u| ControlClient::new(channel(u)))
                .collect(),
            current: 0,
        }
    }

    /// One attempt on each member at most: the run id, or `None` when no member took it (its
    /// outcome is then unknown: it may have been committed).
    pub async fn submit_once(&mut self, request_id: &str) -> Option<String> {
        for _ in 0..self.clients.len() {
            let client = &mut self.clients[self.current];
            let call = client.submit_run(SubmitRunRequest {
                request: Some(request(TASK)),
                request_id: request_id.to_string(),
            });
            if let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(3), call).await {
                return Some(response.into_inner().run_id);
            }
            self.current = (self.current + 1) % self.clients.len();
        }
        None
    }

    /// Retries the same request id until a member takes it.
    pub async fn submit(&mut self, request_id: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(run_id) = self.submit_once(request_id).await {
                return run_id;
            }
            assert!(
                Instant::now() < deadline,
                "no member took request {request_id} within {WAIT:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

/// What a stopped member holds on disk.
pub struct OnDisk {
    pub id: u64,
    pub commit: u64,
    pub applied: u64,
    pub state: kiln_state::State,
    /// Committed entries still in its log: index → (term, data).
    pub committed: BTreeMap<u64, (u64, Vec<u8>)>,
}

pub fn read_store(id: u64, data_dir: &Path) -> OnDisk {
    use raft::Storage as _;
    let store = Store::open(&data_dir.join("db"))
        .unwrap_or_else(|e| panic!("member {id}: the store does not open: {e}"));
    let hard_state = store.hard_state().unwrap();
    let applied = store.applied_index().unwrap();
    let storage = RaftStorage {
        store: store.clone(),
        state: Default::default(),
    };
    let first = storage.first_index().unwrap();
    let last = storage.last_index().unwrap().min(hard_state.get_commit());
    let mut committed = BTreeMap::new();
    if last >= first {
        for entry in storage
            .entries(first, last + 1, None, raft::GetEntriesContext::empty(false))
            .unwrap()
        {
            committed.insert(
                entry.get_index(),
                (entry.get_term(), entry.get_data().to_vec()),
            );
        }
    }
    OnDisk {
        id,
        commit: hard_state.get_commit(),
        applied,
        state: store.load_state().unwrap(),
        committed,
    }
}

/// The invariants on the stores of stopped members: applied never past the durable commit;
/// identical committed entries wherever two members hold the same index; equal states at
/// equal applied index; and on EVERY member, each acknowledged request exactly once, under the
/// run id it was answered with, and no request id on two runs.
pub fn check_stores(disks: &[OnDisk], acknowledged: &HashMap<String, String>) {
    let mut committed: BTreeMap<u64, (u64, u64, &[u8])> = BTreeMap::new();
    for disk in disks {
        assert!(
            disk.applied <= disk.commit,
            "member {}: applied {} is past the durable commit {}",
            disk.id,
            disk.applied,
            disk.commit
        );
        for (index, (term, data)) in &disk.committed {
            match committed.get(index) {
                None => {
                    committed.insert(*index, (disk.id, *term, data));
                }
                Some((other, t, d)) => assert!(
                    t == term && d == data,
                    "committed entry {index} differs between members {other} and {}",
                    disk.id
                ),
            }
        }
    }
    for a in disks {
        for b in disks {
            if a.id < b.id && a.applied == b.applied {
                assert!(
                    a.state == b.state,
                    "members {} and {} differ at applied index {}",
                    a.id,
                    b.id,
                    a.applied
                );
            }
        }
    }
    for disk in disks {
        let mut by_request: HashMap<&str, Vec<&str>> = HashMap::new();
        for run in disk.state.runs() {
            if !run.request_id.is_empty() {
                by_request
                    .entry(run.request_id.as_str())
                    .or_default()
                    .push(run.id.as_str());
            }
        }
        for (request_id, runs) in &by_request {
            assert!(
                runs.len() == 1,
                "member {}: request {request_id} made runs {runs:?}",
                disk.id
            );
        }
        for (request_id, run_id) in acknowledged {
            let runs = by_request.get(request_id.as_str());
            assert!(
                runs.is_some_and(|r| r == &[run_id.as_str()]),
                "member {} (applied {}): acknowledged request {request_id} (run {run_id}) is {:?}",
                disk.id,
                disk.applied,
                runs
            );
        }
    }
}

/// How a process ended, for messages.
pub fn describe(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => format!("{status:?}"),
    }
}

//! `kiln-loadtest chaos`: a real cluster of coordinator processes, simulated agents, runs
//! submitted continuously, and a nemesis that kills the leader with SIGKILL again and again and
//! partitions members (kiln-faultnet proxies on the peer links). Then the checks: every
//! acknowledged run reaches exactly one terminal state, no run executed under two leases (the
//! simulated agents' own record), the replicas converge. Failover is timed from the kill to the
//! first assignment a simulated agent receives on a session opened after it (dispatch resumed).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use kiln_faultnet::{Network, Proxy};
use kiln_proto::pb::{RunRequest, RunStatus};
use kiln_proto::v1::cluster_client::ClusterClient;
use kiln_proto::v1::{
    ClusterStatusRequest, ClusterStatusResponse, GetRunRequest, SubmitRunRequest,
};
use kiln_state::machine::is_terminal;

use crate::driver::Client;
use crate::sim::{SimConfig, SimFarm};
use crate::stats::LatencySummary;

#[derive(Clone, Debug)]
pub struct ChaosPlan {
    pub coordinator_binary: PathBuf,
    pub members: u64,
    pub kills: u32,
    pub partitions: u32,
    pub agents: u32,
    pub capacity: u32,
    pub step: Duration,
    /// Pause between two submissions.
    pub submit_every: Duration,
    /// Loopback net 127.<net>.x.y used for the members and proxies.
    pub net: u8,
    pub request: RunRequest,
    pub work_dir: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct ChaosReport {
    pub members: u64,
    pub kills: u32,
    pub partitions: u32,
    pub submitted: u64,
    pub acknowledged: u64,
    pub succeeded: u64,
    pub other_terminal: u64,
    pub lost: u64,
    pub not_terminal: u64,
    pub executed_twice: u64,
    pub converged_at_index: u64,
    /// Kill -9 of the leader until dispatch resumed.
    pub failover_ms: LatencySummary,
    /// Kill -9 of the leader until another member reports itself leader (the election alone).
    pub election_ms: LatencySummary,
    pub problems: Vec<String>,
}

struct Member {
    id: u64,
    client: SocketAddr,
    peer: SocketAddr,
    http: SocketAddr,
    proxy: Proxy,
    dir: PathBuf,
    child: Option<Child>,
}

impl Member {
    fn client_url(&self) -> String {
        format!("http://{}", self.client)
    }
}

fn member_ip(net: u8, id: u64) -> IpAddr {
    IpAddr::from([127, net, 1, id as u8])
}

async fn free_port(ip: IpAddr) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, 0))
        .await
        .with_context(|| format!("cannot bind a port on {ip}"))?;
    Ok(listener.local_addr()?)
}

struct Cluster {
    members: Vec<Member>,
    network: Network,
    binary: PathBuf,
    initial: String,
}

impl Cluster {
    async fn start(plan: &ChaosPlan) -> anyhow::Result<Self> {
        let network = Network::new();
        let mut members = Vec::new();
        for id in 1..=plan.members {
            let ip = member_ip(plan.net, id);
            let peer = free_port(ip).await?;
            let proxy_ip = IpAddr::from([127, plan.net, 2, id as u8]);
            let proxy =
                Proxy::start(network.clone(), id, SocketAddr::new(proxy_ip, 0), peer).await?;
            network.add_member(id, ip);
            members.push(Member {
                id,
                client: free_port(ip).await?,
                peer,
                http: free_port(ip).await?,
                proxy,
                dir: plan.work_dir.join(format!("member-{id}")),
                child: None,
            });
        }
        let initial = members
            .iter()
            .map(|m| {
                format!(
                    "id={},peer=http://{},client={}",
                    m.id,
                    m.proxy.address,
                    m.client_url()
                )
            })
            .collect::<Vec<_>>()
            .join(";");
        let mut cluster = Self {
            members,
            network,
            binary: plan.coordinator_binary.clone(),
            initial,
        };
        for index in 0..cluster.members.len() {
            cluster.spawn(index)?;
        }
        Ok(cluster)
    }

    fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(Member::client_url)
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, index: usize) -> anyhow::Result<()> {
        let initial = self.initial.clone();
        let member = &mut self.members[index];
        std::fs::create_dir_all(&member.dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(member.dir.join("coordinator.log"))?;
        let child = Command::new(&self.binary)
            .args(["--node-id", &member.id.to_string()])
            .args(["--listen", &member.client.to_string()])
            .args(["--peer-listen", &member.peer.to_string()])
            .args(["--http-listen", &member.http.to_string()])
            .args([
                "--advertise-peer-url",
                &format!("http://{}", member.proxy.address),
            ])
            .args(["--initial-member", &initial])
            .args(["--initial-cluster-state", "new"])
            .args(["--registry", "127.0.0.1:1"])
            .arg("--data-dir")
            .arg(member.dir.join("data"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))?;
        member.child = Some(child);
        Ok(())
    }

    fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.members[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn status(&self, index: usize) -> Option<ClusterStatusResponse> {
        let member = &self.members[index];
        member.child.as_ref()?;
        let url = member.client_url();
        let call = async {
            let mut client = ClusterClient::connect(url).await.ok()?;
            client
                .status(ClusterStatusRequest {})
                .await
                .ok()
                .map(|r| r.into_inner())
        };
        tokio::time::timeout(Duration::from_millis(500), call)
            .await
            .ok()
            .flatten()
    }

    /// The index of the member that reports itself leader, if one does.
    async fn leader(&self) -> Option<usize> {
        for index in 0..self.members.len() {
            if self.status(index).await.is_some_and(|s| s.role == "leader") {
                return Some(index);
            }
        }
        None
    }

    async fn wait_leader(&self, limit: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(index) = self.leader().await {
                return Ok(index);
            }
            if Instant::now() > deadline {
                bail!("no leader within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_ready(&self, index: usize, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        while self.status(index).await.is_none_or(|s| s.leader_id == 0) {
            if Instant::now() > deadline {
                bail!(
                    "member {} did not rejoin within {limit:?}; see {}",
                    self.members[index].id,
                    self.members[index].dir.join("coordinator.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Waits until every member has applied the same index, and returns it.
    async fn converged(&self, limit: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + limit;
        loop {
            let mut applied = Vec::new();
            for index in 0..self.members.len() {
                if let Some(status) = self.status(index).await {
                    if status.commit_index == status.applied_index {
                        applied.push(status.applied_index);
                    }
                }
            }
            if applied.len() == self.members.len() && applied.iter().all(|a| *a == applied[0]) {
                return Ok(applied[0]);
            }
            if Instant::now() > deadline {
                bail!("the members did not converge within {limit:?}: applied {applied:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for index in 0..self.members.len() {
            self.kill(index);
        }
    }
}

/// Runs the whole chaos scenario.
pub async fn run(plan: &ChaosPlan) -> anyhow::Result<ChaosReport> {
    if plan.members < 3 || plan.members > 9 {
        bail!("--members must be 3 to 9");
    }
    let mut cluster = Cluster::start(plan).await?;
    cluster.wait_leader(Duration::from_secs(20)).await?;
    let endpoints = cluster.endpoints();
    let farm = SimFarm::start(SimConfig {
        coordinator: endpoints.clone(),
        agents: plan.agents,
        capacity: plan.capacity,
        step: plan.step,
        pool: String::new(),
        platform: kiln_state::PlatformSpec::parse(&platform_of(&plan.request))
            .map_err(|e| anyhow!(e))?,
        id_prefix: format!("chaos-{}", std::process::id()),
    });
    farm.wait_connected(Duration::from_secs(30)).await?;

    // Submissions, continuously, each with its own request id (retried by the client).
    let acknowledged: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let submitted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop_submitting = CancellationToken::new();
    let submitter = {
        let client = Client::new(&endpoints)?;
        let acknowledged = acknowledged.clone();
        let submitted = submitted.clone();
        let stop = stop_submitting.clone();
        let request = plan.request.clone();
        let every = plan.submit_every;
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.is_cancelled() {
                n += 1;
                submitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let request_id = format!("chaos-{}-{n}", std::process::id());
                let mut client = client.clone();
                if let Ok(response) = client
                    .submit_run(SubmitRunRequest {
                        request: Some(request.clone()),
                        request_id: request_id.clone(),
                    })
                    .await
                {
                    let run_id = response.into_inner().run_id;
                    acknowledged
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(request_id, run_id);
                }
                tokio::time::sleep(every).await;
            }
        })
    };

    let mut failovers = Vec::new();
    let mut elections = Vec::new();
    let mut problems = Vec::new();
    let total = plan.kills + plan.partitions;
    let partition_every = total
        .checked_div(plan.partitions)
        .map_or(u32::MAX, |every| every.max(1));
    let (mut kills, mut partitions) = (0, 0);
    for round in 0..total {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let leader = cluster.wait_leader(Duration::from_secs(20)).await?;
        let partition_now = partitions < plan.partitions
            && (kills >= plan.kills || round % partition_every == partition_every - 1);
        if partition_now {
            partitions += 1;
            let id = cluster.members[leader].id;
            cluster.network.isolate(id);
            // The isolated leader steps down (check_quorum); the others elect a new one.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let other = cluster.leader().await.filter(|l| *l != leader);
                if other.is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    problems.push(format!("no new leader while member {id} was isolated"));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            cluster.network.heal();
            eprintln!("chaos: partition {partitions}: isolated member {id}, healed");
            continue;
        }
        kills += 1;
        let id = cluster.members[leader].id;
        let killed_at = Instant::now();
        cluster.kill(leader);
        let deadline = killed_at + Duration::from_secs(15);
        let mut elected = None;
        let resumed = loop {
            if elected.is_none() && cluster.leader().await.is_some() {
                elected = Some(killed_at.elapsed());
            }
            if let Some(at) = farm.first_assignment_after(killed_at) {
                break Some(at.saturating_duration_since(killed_at));
            }
            if Instant::now() > deadline {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        match resumed {
            Some(took) => failovers.push(took),
            None => problems.push(format!(
                "dispatch did not resume within 15s of killing member {id}"
            )),
        }
        if let Some(took) = elected {
            elections.push(took);
        }
        eprintln!(
            "chaos: kill {kills}: member {id}, new leader seen after {:?}, dispatch resumed after {:?}",
            elected.unwrap_or_default(),
            resumed.unwrap_or_default()
        );
        cluster.spawn(leader)?;
        cluster.wait_ready(leader, Duration::from_secs(20)).await?;
    }
    stop_submitting.cancel();
    let _ = submitter.await;

    // Every acknowledged run ends, once.
    let acknowledged = acknowledged
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut client = Client::new(&endpoints)?;
    let (mut succeeded, mut other_terminal, mut lost, mut not_terminal) = (0, 0, 0, 0);
    let deadline = Instant::now() + Duration::from_secs(120);
    for (request_id, run_id) in &acknowledged {
        loop {
            match client
                .get_run(GetRunRequest {
                    run_id: run_id.clone(),
                })
                .await
            {
                Ok(response) => {
                    let run = response.into_inner().run.unwrap_or_default();
                    if run.request_id != *request_id {
                        problems.push(format!(
                            "run {run_id} carries request {} instead of {request_id}",
                            run.request_id
                        ));
                    }
                    if is_terminal(run.status()) {
                        if run.status() == RunStatus::Succeeded {
                            succeeded += 1;
                        } else {
                            other_terminal += 1;
                            if problems.len() < 20 {
                                problems.push(format!(
                                    "run {run_id} ended {:?}: {}",
                                    run.status(),
                                    run.reason
                                ));
                            }
                        }
                        break;
                    }
                    if Instant::now() > deadline {
                        not_terminal += 1;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(status) if status.code() == tonic::Code::NotFound => {
                    lost += 1;
                    problems.push(format!("acknowledged run {run_id} is missing"));
                    break;
                }
                Err(status) => {
                    if Instant::now() > deadline {
                        problems.push(format!("cannot read run {run_id}: {}", status.message()));
                        not_terminal += 1;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    let executions = farm.executions();
    let executed_twice = executions
        .values()
        .filter(|epochs| epochs.len() > 1)
        .count() as u64;
    for (run_id, epochs) in executions.iter().filter(|(_, e)| e.len() > 1).take(10) {
        problems.push(format!("run {run_id} executed under leases {epochs:?}"));
    }
    let converged_at_index = match cluster.converged(Duration::from_secs(30)).await {
        Ok(index) => index,
        Err(error) => {
            problems.push(error.to_string());
            0
        }
    };
    let summary = farm.stop().await;
    // Sessions fail and assignments repeat by design while leaders die; the rest is a bug.
    for anomaly in summary.anomalies() {
        let expected = anomaly.contains("failed sessions")
            || anomaly.contains("duplicate assignments")
            || anomaly.contains("answered stale");
        let tag = if expected { "expected" } else { "unexpected" };
        problems.push(format!("simulated agents ({tag}): {anomaly}"));
    }
    Ok(ChaosReport {
        members: plan.members,
        kills,
        partitions,
        submitted: submitted.load(std::sync::atomic::Ordering::Relaxed),
        acknowledged: acknowledged.len() as u64,
        succeeded,
        other_terminal,
        lost,
        not_terminal,
        executed_twice,
        converged_at_index,
        failover_ms: LatencySummary::from_durations(failovers.iter().copied()),
        election_ms: LatencySummary::from_durations(elections.iter().copied()),
        problems,
    })
}

fn platform_of(request: &RunRequest) -> String {
    request
        .platform
        .as_ref()
        .map(|p| {
            if p.variant.is_empty() {
                format!("{}/{}", p.os, p.architecture)
            } else {
                format!("{}/{}/{}", p.os, p.architecture, p.variant)
            }
        })
        .unwrap_or_else(|| "linux/amd64".to_string())
}

impl ChaosReport {
    /// The checks that make a chaos run fail.
    pub fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        if self.lost > 0 {
            failures.push(format!("{} acknowledged runs were lost", self.lost));
        }
        if self.not_terminal > 0 {
            failures.push(format!(
                "{} acknowledged runs never ended",
                self.not_terminal
            ));
        }
        if self.executed_twice > 0 {
            failures.push(format!(
                "{} runs executed under two leases",
                self.executed_twice
            ));
        }
        if self.converged_at_index == 0 {
            failures.push("the replicas did not converge".to_string());
        }
        if self.acknowledged == 0 {
            failures.push("no submission was acknowledged".to_string());
        }
        failures.extend(
            self.problems
                .iter()
                .filter(|p| {
                    p.contains("did not resume")
                        || p.contains("carries request")
                        || p.contains("(unexpected)")
                })
                .cloned(),
        );
        failures
    }

    pub fn to_table(&self) -> String {
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0} ms"));
        format!(
            "members {}  kills {}  partitions {}\nsubmitted {}  acknowledged {}  succeeded {}  other terminal {}  lost {}  never ended {}\nexecuted under two leases {}  replicas converged at index {}\nfailover (kill -9 → dispatch resumes): p50 {}  p99 {}  max {}  (n={})\nelection (kill -9 → new leader seen): p50 {}  p99 {}  max {}\n{}",
            self.members,
            self.kills,
            self.partitions,
            self.submitted,
            self.acknowledged,
            self.succeeded,
            self.other_terminal,
            self.lost,
            self.not_terminal,
            self.executed_twice,
            self.converged_at_index,
            ms(self.failover_ms.p50_ms),
            ms(self.failover_ms.p99_ms),
            ms(self.failover_ms.max_ms),
            self.failover_ms.count,
            ms(self.election_ms.p50_ms),
            ms(self.election_ms.p99_ms),
            ms(self.election_ms.max_ms),
            self.problems
                .iter()
                .map(|p| format!("  note: {p}"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    }
}

/// The coordinator binary next to this one, or in `KILN_BIN_DIR`.
pub fn coordinator_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    let dir = match std::env::var_os("KILN_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::current_exe()?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    };
    let binary = dir.join("kiln-coordinator");
    if !binary.exists() {
        bail!(
            "{} is missing: build it (cargo build -p kiln-coordinator) or pass --coordinator-binary",
            binary.display()
        );
    }
    Ok(binary)
}

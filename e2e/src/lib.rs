//! Test support for the end-to-end suite: starts a real coordinator and agent as processes and
//! runs the real `kiln` CLI against them.
//!
//! The Docker Engine, the registry with `base/busybox` and the QEMU handlers are started by the
//! test command (`test.sh` → `deploy/local/infra.sh start`); this harness needs:
//! - `KILN_BIN_DIR`: where `kiln`, `kiln-coordinator` and `kiln-agent` are;
//! - `DOCKER_HOST`: the engine's socket (`unix://…`);
//! - `KILN_REGISTRY`: the registry (`127.0.0.1:5000`).
//!
//! A missing prerequisite fails the test with a message saying what to start; nothing is skipped.

use std::ffi::OsString;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the harness waits for a process to come up or a run to reach a state.
pub const DEADLINE: Duration = Duration::from_secs(300);
/// The coordinators' grace period for a vanished agent, short so tests need not wait 30 s.
pub const AGENT_GRACE_SECONDS: u64 = 3;
/// The agents' drain timeout on shutdown, unless a test sets its own.
pub const AGENT_DRAIN_SECONDS: u64 = 5;

pub struct Farm {
    pub dir: tempfile::TempDir,
    pub bin_dir: PathBuf,
    pub registry: String,
    pub docker_host: String,
    /// The coordinators' client URLs, comma-separated (what `--coordinator` takes).
    pub address: String,
    pub agent_id: String,
    /// The coordinators: one, or the members of a cluster.
    members: Vec<Member>,
    agent: Option<Child>,
    /// Extra flags for every start of the agent.
    agent_args: Vec<OsString>,
    /// Extra flags for every start of the coordinator.
    coordinator_args: Vec<OsString>,
}

/// A name unique to this test invocation, so repositories never collide across tests or runs.
pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

fn required_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!(
            "{name} is not set: run the end-to-end tests through ./test.sh, which starts the Docker Engine, the registry and QEMU and builds the binaries"
        ),
    }
}

/// One coordinator process of the farm.
struct Member {
    id: u64,
    port: u16,
    /// Its Raft peer port (a cluster of one still listens for peers).
    peer_port: u16,
    child: Option<Child>,
}

impl Member {
    /// The name of its data directory and log file.
    fn name(&self) -> String {
        if self.id == 1 {
            "coordinator".to_string()
        } else {
            format!("coordinator-{}", self.id)
        }
    }

    fn initial_member(&self) -> String {
        format!(
            "id={},peer=http://127.0.0.1:{},client=http://127.0.0.1:{}",
            self.id, self.peer_port, self.port
        )
    }
}

/// A loopback port nothing listens on, for a process this farm starts. It is picked below
/// the kernel's ephemeral range: a port the kernel handed out (`bind(:0)`) can be taken again
/// by any outgoing connection before the coordinator binds it, which made a test fail with
/// "Address already in use"; ports below the range are only ever taken by a `bind`.
fn free_port() -> u16 {
    static PICKED: AtomicU64 = AtomicU64::new(0);
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_start);
    if high > low + 1000 {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ (u64::from(std::process::id()) << 20);
        for attempt in 0..200u64 {
            let n = PICKED.fetch_add(1, Ordering::Relaxed);
            let mixed = (seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ attempt)
                .wrapping_mul(0xBF58_476D_1CE4_E5B9);
            let port = low + ((mixed >> 32) % u64::from(high - low)) as u16;
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

impl Farm {
    /// Starts a coordinator and one agent with state in a fresh temporary directory.
    pub fn start() -> Self {
        Self::start_with_agent_args(&[])
    }

    /// Like `start`, with the agent started with a secret store (`--secrets-dir dir`).
    pub fn start_with_secrets_dir(dir: &Path) -> Self {
        Self::start_with_agent_args(&["--secrets-dir".into(), dir.as_os_str().to_owned()])
    }

    /// Like `start`, with extra flags for the agent (kept for its restarts).
    pub fn start_with_agent_args(agent_args: &[OsString]) -> Self {
        Self::start_with_args(&[], agent_args)
    }

    /// Like `start`, with extra flags for the coordinator and the agent (kept for restarts).
    pub fn start_with_args(coordinator_args: &[&str], agent_args: &[OsString]) -> Self {
        Self::start_members(1, coordinator_args, agent_args)
    }

    /// Starts a cluster of `members` coordinators (node ids 1…) and one agent that knows them
    /// all.
    pub fn start_cluster(members: u64) -> Self {
        Self::start_members(members, &[], &[])
    }

    fn start_members(count: u64, coordinator_args: &[&str], agent_args: &[OsString]) -> Self {
        let bin_dir = PathBuf::from(required_env("KILN_BIN_DIR"));
        for binary in ["kiln", "kiln-coordinator", "kiln-agent"] {
            assert!(
                bin_dir.join(binary).is_file(),
                "{} is missing: build the binaries first (./test.sh does)",
                bin_dir.join(binary).display()
            );
        }
        let members: Vec<Member> = (1..=count)
            .map(|id| Member {
                id,
                port: free_port(),
                peer_port: free_port(),
                child: None,
            })
            .collect();
        let address = members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.port))
            .collect::<Vec<_>>()
            .join(",");
        let mut farm = Self {
            dir: tempfile::tempdir().expect("a temporary directory"),
            bin_dir,
            registry: required_env("KILN_REGISTRY"),
            docker_host: required_env("DOCKER_HOST"),
            address,
            agent_id: unique("agent"),
            members,
            agent: None,
            agent_args: agent_args.to_vec(),
            coordinator_args: coordinator_args.iter().map(OsString::from).collect(),
        };
        farm.start_coordinator();
        farm.start_agent();
        farm
    }

    fn log_file(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .expect("a log file in the temporary directory")
    }

    /// Starts every coordinator that is not running, and waits until the farm answers.
    pub fn start_coordinator(&mut self) {
        for index in 0..self.members.len() {
            if self.members[index].child.is_none() {
                self.spawn_member(index);
            }
        }
        // A member that exits (a port taken, a bad flag) fails the test at once with its log,
        // instead of at the deadline.
        let start = Instant::now();
        let mut pause = Duration::from_millis(50);
        while !self.kiln(&["agents"]).status.success() {
            for member in &mut self.members {
                if let Some(Ok(Some(status))) = member.child.as_mut().map(Child::try_wait) {
                    member.child = None;
                    panic!(
                        "{} exited ({status}) while starting\n{}",
                        member.name(),
                        std::fs::read_to_string(
                            self.dir.path().join(format!("{}.log", member.name()))
                        )
                        .unwrap_or_default()
                    );
                }
            }
            if start.elapsed() > DEADLINE {
                panic!(
                    "timed out waiting for the coordinator to answer\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    fn spawn_member(&mut self, index: usize) {
        let initial: Vec<String> = self.members.iter().map(Member::initial_member).collect();
        let member = &self.members[index];
        let name = member.name();
        let child = Command::new(self.bin_dir.join("kiln-coordinator"))
            .args(["--node-id", &member.id.to_string()])
            .args(["--listen", &format!("127.0.0.1:{}", member.port)])
            .args(["--peer-listen", &format!("127.0.0.1:{}", member.peer_port)])
            .args(["--http-listen", "off", "--initial-cluster-state", "new"])
            .args(["--initial-member", &initial.join(";")])
            .arg("--data-dir")
            .arg(self.dir.path().join(&name))
            .args(["--registry", &self.registry])
            .args(["--agent-grace-seconds", &AGENT_GRACE_SECONDS.to_string()])
            .args(&self.coordinator_args)
            .stdout(self.log_file(&name))
            .stderr(self.log_file(&name))
            .spawn()
            .expect("kiln-coordinator starts");
        self.members[index].child = Some(child);
    }

    /// Stops every coordinator with SIGTERM and waits for them to exit.
    pub fn stop_coordinator(&mut self) {
        for member in &mut self.members {
            if let Some(child) = member.child.take() {
                terminate(child);
            }
        }
    }

    /// The node id of the cluster's leader, once a running member says it leads (`kiln
    /// cluster status` exits non-zero while a member is down, but still names the leader).
    pub fn leader(&self) -> u64 {
        let mut leader = 0;
        self.wait_for("the cluster to have a leader", || {
            let output = self.kiln(&["cluster", "status"]);
            leader = String::from_utf8_lossy(&output.stdout)
                .lines()
                .next()
                .and_then(|line| line.split("Leader: ").nth(1))
                .and_then(|id| id.trim().parse().ok())
                .unwrap_or(0);
            leader > 0
        });
        leader
    }

    /// Sends `signal` (e.g. "STOP", "CONT") to coordinator `id`.
    pub fn signal_coordinator(&self, id: u64, signal: &str) {
        let pid = self
            .members
            .iter()
            .find(|m| m.id == id)
            .and_then(|m| m.child.as_ref())
            .expect("a running member of this farm")
            .id();
        send_signal(pid, signal);
    }

    /// Kills coordinator `id` with SIGKILL (no hand-over), like a crashed machine.
    pub fn kill_coordinator(&mut self, id: u64) {
        let member = self
            .members
            .iter_mut()
            .find(|m| m.id == id)
            .expect("a member of this farm");
        if let Some(mut child) = member.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn start_agent(&mut self) {
        let child = self.spawn_agent(&self.agent_id.clone(), "agent");
        self.agent = Some(child);
        self.wait_for("the agent to connect", || {
            self.agent_state().as_deref() == Some("ready")
        });
    }

    /// Starts another agent process with id `agent_id` (its work directory and log under
    /// `name`), without waiting for it; the caller owns it.
    pub fn spawn_agent(&self, agent_id: &str, name: &str) -> Child {
        let mut command = Command::new(self.bin_dir.join("kiln-agent"));
        command
            .args(["--coordinator", &self.address])
            .args(["--docker-host", &self.docker_host])
            .arg("--work-dir")
            .arg(self.dir.path().join(name))
            .args(["--agent-id", agent_id])
            .args(&self.agent_args);
        if !self
            .agent_args
            .iter()
            .any(|a| a == "--drain-timeout-seconds")
        {
            // Tests end with runs still going; a shutdown should not wait ten minutes.
            command.args(["--drain-timeout-seconds", &AGENT_DRAIN_SECONDS.to_string()]);
        }
        command
            .stdout(self.log_file(name))
            .stderr(self.log_file(name))
            .spawn()
            .expect("kiln-agent starts")
    }

    /// Sends `signal` (e.g. "STOP", "CONT", "TERM") to the agent process.
    pub fn signal_agent(&self, signal: &str) {
        let pid = self.agent.as_ref().expect("the agent runs").id();
        send_signal(pid, signal);
    }

    /// Waits for the agent process to exit by itself (after SIGTERM) and returns whether it
    /// exited successfully.
    pub fn wait_for_agent_exit(&mut self) -> bool {
        let child = self.agent.take().expect("the agent runs");
        match wait_for_exit(child) {
            Some(status) => status.success(),
            None => panic!("the agent did not exit\n{}", self.logs()),
        }
    }

    /// The log of a process this farm started (`coordinator`, `agent`, or a `spawn_agent` name).
    pub fn process_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// The agent's state as `kiln agents` lists it (`ready`, `draining`, `lost`,
    /// `disconnected`), or `None` when it is not listed.
    pub fn agent_state(&self) -> Option<String> {
        let output = self.kiln(&["agents"]);
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .find_map(|line| {
                let mut words = line.split_whitespace();
                (words.next() == Some(self.agent_id.as_str()))
                    .then(|| words.next().unwrap_or_default().to_string())
            })
    }

    /// Kills the agent with SIGKILL: no goodbye, no cleanup, like a crashed machine.
    pub fn kill_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn stop_agent(&mut self) {
        if let Some(child) = self.agent.take() {
            terminate(child);
        }
        self.wait_for("the agent to disconnect", || {
            !matches!(self.agent_state().as_deref(), Some("ready" | "draining"))
        });
    }

    /// Runs the `kiln` CLI against this farm.
    pub fn kiln(&self, args: &[&str]) -> Output {
        self.kiln_in(Path::new("."), args)
    }

    /// Starts the `kiln` CLI against this farm without waiting for it; its standard output
    /// goes to `<farm dir>/<name>.out` (read it with [`Farm::output_of`]), its errors to
    /// `<name>.log`.
    pub fn spawn_kiln(&self, name: &str, args: &[&str]) -> Child {
        let stdout = std::fs::File::create(self.dir.path().join(format!("{name}.out")))
            .expect("an output file in the temporary directory");
        Command::new(self.bin_dir.join("kiln"))
            .args(args)
            .env("KILN_COORDINATOR", &self.address)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(self.log_file(name))
            .spawn()
            .expect("the kiln CLI runs")
    }

    /// What a [`Farm::spawn_kiln`] command printed so far.
    pub fn output_of(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.out"))).unwrap_or_default()
    }

    pub fn kiln_in(&self, dir: &Path, args: &[&str]) -> Output {
        Command::new(self.bin_dir.join("kiln"))
            .args(args)
            .current_dir(dir)
            .env("KILN_COORDINATOR", &self.address)
            .stdin(Stdio::null())
            .output()
            .expect("the kiln CLI runs")
    }

    /// Polls `condition` until it holds, failing the test (with the farm's logs) at the deadline.
    pub fn wait_for(&self, what: &str, mut condition: impl FnMut() -> bool) {
        let start = Instant::now();
        let mut pause = Duration::from_millis(50);
        while !condition() {
            if start.elapsed() > DEADLINE {
                panic!("timed out waiting for {what}\n{}", self.logs());
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// The coordinators' and agent's logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let mut names: Vec<String> = self.members.iter().map(Member::name).collect();
        names.push("agent".to_string());
        for name in &names {
            let text = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
                .unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            out.push_str(&format!("--- {name} log (last lines) ---\n"));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// A `kiln runs show` field, e.g. `Status:`.
    pub fn run_field(&self, run_id: &str, field: &str) -> String {
        let output = self.kiln(&["runs", "show", run_id]);
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .find_map(|line| line.strip_prefix(field).map(|rest| rest.trim().to_string()))
            .unwrap_or_default()
    }

    /// Runs the docker CLI against the farm's engine and returns its standard output; a failing
    /// command fails the test with docker's own message.
    pub fn docker(&self, args: &[&str]) -> String {
        let output = Command::new("docker")
            .args(args)
            .env("DOCKER_HOST", &self.docker_host)
            .output()
            .expect("the docker CLI runs (installed with docker.io)");
        assert!(
            output.status.success(),
            "docker {}: {}",
            args.join(" "),
            text(&output)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Names of the engine's containers (running or not) whose name contains `fragment`.
    pub fn containers(&self, fragment: &str) -> Vec<String> {
        self.docker(&["ps", "--all", "--format", "{{.Names}}"])
            .lines()
            .filter(|name| name.contains(fragment))
            .map(str::to_string)
            .collect()
    }

    /// Names of the engine's networks whose name contains `fragment`.
    pub fn networks(&self, fragment: &str) -> Vec<String> {
        self.docker(&["network", "ls", "--format", "{{.Name}}"])
            .lines()
            .filter(|name| name.contains(fragment))
            .map(str::to_string)
            .collect()
    }

    /// The containers and networks of run `run_id` that still exist (their names are
    /// `kiln-<agent>-<run>` and `kiln-<agent>-<run>-<step or network>`).
    pub fn run_resources(&self, run_id: &str) -> Vec<String> {
        let name = format!("kiln-{}-{run_id}", self.agent_id);
        let prefix = format!("{name}-");
        let mut found = self.containers(&name);
        found.extend(self.networks(&name));
        found.retain(|n| *n == name || n.starts_with(&prefix));
        found
    }

    /// The agent's directory for run `run_id` (workspace, home, secret volumes, step logs).
    pub fn agent_run_dir(&self, run_id: &str) -> PathBuf {
        self.dir.path().join("agent").join("runs").join(run_id)
    }

    /// Waits until a step of the run is Running (its container has started).
    pub fn wait_for_running_step(&self, run_id: &str) {
        self.wait_for("a step to be running", || {
            let show = text(&self.kiln(&["runs", "show", run_id]));
            show.lines()
                .any(|line| line.starts_with("  ") && line.contains("Running"))
        });
    }

    pub fn registry_client(&self) -> kiln_registry::Registry {
        kiln_registry::Registry::new(&self.registry).expect("a valid registry address")
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        if let Some(child) = self.agent.take() {
            terminate(child);
        }
        self.stop_coordinator();
    }
}

/// Sends `signal` ("STOP", "CONT", "TERM", …) to process `pid` with kill(1).
fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// Waits up to [`DEADLINE`] for `child` to exit by itself; kills it and returns `None` if it
/// does not.
pub fn wait_for_exit(mut child: Child) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < DEADLINE {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn terminate(mut child: Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Text of a command's stdout and stderr together, for assertions and failure messages.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The run id printed by `kiln build`/`kiln run` ("Queued a build with ID: ca1").
pub fn run_id(output: &Output) -> String {
    let text = text(output);
    run_id_in(&text).unwrap_or_else(|| panic!("no run id in the output:\n{text}"))
}

/// The run id a `Queued a run with ID: …` line in `text` names.
pub fn run_id_in(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        line.split("with ID: ")
            .nth(1)
            .map(|id| id.trim().to_string())
    })
}

/// The `Pushed: image@digest` lines of a run's summary.
pub fn pushed(output: &Output) -> Vec<(String, String)> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.strip_prefix("Pushed: "))
        .filter_map(|rest| rest.rsplit_once('@'))
        .map(|(image, digest)| (image.to_string(), digest.to_string()))
        .collect()
}

/// Writes `files` (path, contents) under a new temporary directory.
pub fn context(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for (path, contents) in files {
        let full = dir.path().join(path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).expect("a context subdirectory");
        }
        std::fs::write(full, contents).expect("a context file");
    }
    dir
}

/// The repository's `examples/` directory.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|root| root.join("examples"))
        .expect("the e2e crate lives inside the repository")
}

/// Copies the directory `from` (recursively) into a new temporary directory.
pub fn copy_dir(from: &Path) -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("a directory");
        for entry in std::fs::read_dir(from).expect("a readable directory") {
            let entry = entry.expect("a directory entry");
            let target = to.join(entry.file_name());
            if entry.file_type().expect("a file type").is_dir() {
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), &target).expect("a copied file");
            }
        }
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    copy(from, dir.path());
    dir
}

/// Runs a future on a small runtime (the registry client is async).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(future)
}

//! The agent's configuration (filled from command-line flags by `main.rs`, or directly by tests).

use std::path::PathBuf;
use std::time::Duration;

use kiln_proto::pb::KeyValue;
use tokio_util::sync::CancellationToken;

use crate::platforms::BINFMT_MISC_DIR;
use crate::prune::PrunePolicy;

/// How long a shutting-down agent lets its runs finish before it cancels them, by default.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(600);

/// How one agent process is set up.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The coordinators' gRPC endpoints: a comma-separated list of `host:port` or
    /// `http://host:port` items, any members of the cluster, e.g.
    /// `http://10.0.0.1:7878,10.0.0.2:7878`. The agent follows the leader among them.
    pub coordinator: String,
    /// The Docker Engine endpoint, e.g. `unix:///var/run/docker.sock`.
    pub docker_host: String,
    /// Directory for run workspaces, step logs and scratch files.
    pub work_dir: PathBuf,
    /// Stable identity across restarts.
    pub agent_id: String,
    /// How many runs this agent takes at once.
    pub capacity: u32,
    /// Where QEMU binfmt_misc handlers are listed.
    pub binfmt_dir: PathBuf,
    /// Reconnect delay once the quick failover (other members tried 50–100 ms apart for the
    /// first 2 s after a session is lost) found no leader; doubled after each failed attempt
    /// up to `reconnect_max`.
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
    /// The file secret store (`<dir>/<vault-host>/<secret-name>`); `None`: runs that declare
    /// secrets end in Error saying how to configure one.
    pub secrets_dir: Option<PathBuf>,
    /// ACR's agent pool this agent serves (empty: the default pool).
    pub pool: String,
    /// Labels runs can ask for (`key=value`).
    pub labels: Vec<KeyValue>,
    /// On shutdown, how long running runs may take to finish before they are canceled.
    pub drain_timeout: Duration,
    /// Cancelled to cancel every run at once (a second signal during a drain).
    pub stop_now: CancellationToken,
    /// What the agent removes from its disk and engine, and how often (defaults in
    /// `prune.rs`).
    pub prune: PrunePolicy,
}

impl AgentConfig {
    /// A configuration with defaults for everything but the required settings.
    pub fn new(
        coordinator: impl Into<String>,
        docker_host: impl Into<String>,
        work_dir: impl Into<PathBuf>,
        agent_id: impl Into<String>,
    ) -> AgentConfig {
        AgentConfig {
            coordinator: coordinator.into(),
            docker_host: docker_host.into(),
            work_dir: work_dir.into(),
            agent_id: agent_id.into(),
            capacity: 2,
            binfmt_dir: PathBuf::from(BINFMT_MISC_DIR),
            reconnect_initial: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(10),
            secrets_dir: None,
            pool: String::new(),
            labels: Vec::new(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            stop_now: CancellationToken::new(),
            prune: PrunePolicy::default(),
        }
    }

    /// Where the run's workspace, logs and scratch files live.
    pub fn run_dir(&self, run_id: &str) -> PathBuf {
        self.work_dir.join("runs").join(run_id)
    }
}

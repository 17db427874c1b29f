//! Talking to a farm: the coordinator endpoints a client was given, the leader it follows and
//! the cluster it belongs to. Every client (the `kiln` CLI, agents, the load generator) goes
//! through [`Endpoints`].
//!
//! * **Endpoints** are a comma-separated list; each item is `host:port` (meaning
//!   `http://host:port`) or a full `http://` / `https://` URL ([`parse_list`]).
//! * **The leader.** A follower answers with `UNAVAILABLE` and the metadata
//!   [`LEADER_URL_KEY`] (and [`LEADER_ID_KEY`]); [`Endpoints::call`] switches to that URL at
//!   once. `UNAVAILABLE` without a hint (no leader elected yet) and connection errors rotate to
//!   the next endpoint after 50–100 ms of jitter, for [`Settings::retry_for`] (15 s by
//!   default); then the last error is returned. Every other error is returned at once.
//! * **The cluster id.** Once learned ([`Endpoints::learn_cluster_id`], from `GetInfo` or an
//!   agent's `Welcome`), it is sent as [`CLUSTER_ID_KEY`] on every request; a coordinator of
//!   another cluster answers `FAILED_PRECONDITION`, which is never retried.
//!
//! Channels are created lazily, one per URL, and cached (at most [`MAX_CHANNELS`]).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Request, Status};

/// Response metadata of a follower: the leader's node id.
pub const LEADER_ID_KEY: &str = "kiln-leader-id";
/// Response metadata of a follower: the leader's client URL.
pub const LEADER_URL_KEY: &str = "kiln-leader-url";
/// Request metadata: the cluster the client belongs to (16 hex digits).
pub const CLUSTER_ID_KEY: &str = "kiln-cluster-id";
/// Request metadata (`1`) on `GetRun`, `ListRuns` and `GetInfo`: a follower may answer from
/// its own, possibly stale, state.
pub const STALE_KEY: &str = "kiln-stale";

/// How long [`Endpoints::call`] keeps trying endpoints that are unavailable, by default.
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(15);
/// The pause before trying the next endpoint: a random time in this range.
pub const ROTATE_JITTER: (Duration, Duration) =
    (Duration::from_millis(50), Duration::from_millis(100));
/// Channels kept open at once (configured endpoints and leaders learned from hints).
pub const MAX_CHANNELS: usize = 32;
/// Leader hints followed in a row without a pause; after that a pause is taken each time, so
/// two members that name each other cannot make a client spin.
const MAX_IMMEDIATE_HINTS: u32 = 3;

/// A coordinator address that cannot be used; its text is one line that says what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointError(String);

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EndpointError {}

/// Normalises one endpoint: `host:port` becomes `http://host:port`; `http://` and `https://`
/// URLs are kept (without a trailing `/`). Anything else is an error.
pub fn parse_endpoint(item: &str) -> Result<String, EndpointError> {
    let item = item.trim();
    let bad = |why: &str| {
        EndpointError(format!(
            "'{item}' is not a coordinator address ({why}): use HOST:PORT or http://HOST:PORT"
        ))
    };
    if item.is_empty() {
        return Err(EndpointError(
            "an empty coordinator address: use HOST:PORT or http://HOST:PORT, separated by commas"
                .to_string(),
        ));
    }
    let url = if let Some((scheme @ ("http" | "https"), rest)) = item.split_once("://") {
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() {
            return Err(bad("no host"));
        }
        format!("{scheme}://{rest}")
    } else if item.contains("://") {
        return Err(bad("only http:// and https:// are supported"));
    } else {
        let Some((host, port)) = item.rsplit_once(':') else {
            return Err(bad("no port"));
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        if port.parse::<u16>().is_err() {
            return Err(bad("the port is not a number up to 65535"));
        }
        format!("http://{item}")
    };
    let uri: Uri = url.parse().map_err(|_| bad("not a valid URL"))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad("a coordinator address has no path"));
    }
    Ok(url)
}

/// Parses a comma-separated list of endpoints (duplicates are dropped, order is kept).
pub fn parse_list(list: &str) -> Result<Vec<String>, EndpointError> {
    let mut urls: Vec<String> = Vec::new();
    for item in list.split(',') {
        let url = parse_endpoint(item)?;
        if !urls.contains(&url) {
            urls.push(url);
        }
    }
    Ok(urls)
}

/// How channels are opened and how long calls keep retrying.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a TCP/HTTP2 connection may take.
    pub connect_timeout: Duration,
    /// The limit of one request (none by default: log streams last as long as their run).
    pub request_timeout: Option<Duration>,
    /// HTTP/2 keepalive pings (also while idle), so a vanished peer is noticed.
    pub keepalive: Option<Duration>,
    pub tcp_nodelay: bool,
    /// How long [`Endpoints::call`] keeps trying while every endpoint is unavailable.
    pub retry_for: Duration,
    /// How long it keeps trying while no endpoint can even be connected to (nothing listens:
    /// the farm is down or the address is wrong), which is worth saying sooner.
    pub unreachable_for: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            connect_timeout: Duration::from_secs(5),
            request_timeout: None,
            keepalive: None,
            tcp_nodelay: true,
            retry_for: DEFAULT_RETRY_FOR,
            unreachable_for: DEFAULT_UNREACHABLE_FOR,
        }
    }
}

/// See [`Settings::unreachable_for`]: long enough for a member to restart, short enough that a
/// mistyped address fails fast.
pub const DEFAULT_UNREACHABLE_FOR: Duration = Duration::from_secs(3);

/// Adds the learned cluster id to every request.
#[derive(Clone)]
pub struct ClusterStamp {
    cluster_id: Arc<Mutex<Option<String>>>,
}

impl Interceptor for ClusterStamp {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let id = lock(&self.cluster_id).clone();
        if let Some(value) = id.and_then(|id| MetadataValue::try_from(id).ok()) {
            request.metadata_mut().insert(CLUSTER_ID_KEY, value);
        }
        Ok(request)
    }
}

/// What a generated client is built on: `ControlClient::new(connection)`.
pub type Connection = InterceptedService<Channel, ClusterStamp>;

/// Where to go after a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// The member named itself a follower and named the leader: go there at once.
    Leader(String),
    /// No hint: the next endpoint, after a pause.
    Rotate(String),
}

impl Next {
    pub fn url(&self) -> &str {
        match self {
            Next::Leader(url) | Next::Rotate(url) => url,
        }
    }
}

/// A call that failed for good: the last status, and where it came from.
#[derive(Debug)]
pub struct CallError {
    pub status: Status,
    /// The endpoint that gave `status`.
    pub endpoint: String,
    /// Set when every endpoint stayed unavailable until the retry bound: how long it tried.
    pub gave_up_after: Option<Duration>,
}

impl CallError {
    /// True when no coordinator answered (only unavailable members or connection errors).
    pub fn unreachable(&self) -> bool {
        self.gave_up_after.is_some()
    }

    /// The cause in one line: the root of a transport error, else the status message.
    pub fn detail(&self) -> String {
        status_detail(&self.status)
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.gave_up_after {
            Some(after) => write!(
                f,
                "no kiln coordinator answered within {}s (last: {}: {})",
                after.as_secs_f64().round(),
                self.endpoint,
                self.detail()
            ),
            None => f.write_str(&self.detail()),
        }
    }
}

impl std::error::Error for CallError {}

/// The learned cluster id differs from the one a coordinator reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMismatch {
    pub expected: String,
    pub found: String,
}

impl fmt::Display for ClusterMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "this coordinator belongs to cluster {}, not {}",
            self.found, self.expected
        )
    }
}

impl std::error::Error for ClusterMismatch {}

/// The coordinator endpoints of one farm. Cheap to clone; clones share the preferred endpoint,
/// the learned cluster id and the channels.
#[derive(Clone)]
pub struct Endpoints {
    inner: Arc<Inner>,
}

struct Inner {
    urls: Vec<String>,
    settings: Settings,
    cluster_id: Arc<Mutex<Option<String>>>,
    state: Mutex<State>,
}

struct State {
    /// Where the next call goes: the last endpoint that answered, or the leader named by a hint.
    preferred: String,
    /// The position in `urls` rotation continues from.
    cursor: usize,
    channels: HashMap<String, Channel>,
}

impl fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoints")
            .field("urls", &self.inner.urls)
            .field("preferred", &self.preferred())
            .field("cluster_id", &self.cluster_id())
            .finish()
    }
}

impl Endpoints {
    /// Parses a comma-separated endpoint list with default settings.
    pub fn parse(list: &str) -> Result<Endpoints, EndpointError> {
        Endpoints::with_settings(list, Settings::default())
    }

    pub fn with_settings(list: &str, settings: Settings) -> Result<Endpoints, EndpointError> {
        let urls = parse_list(list)?;
        let preferred = urls[0].clone();
        Ok(Endpoints {
            inner: Arc::new(Inner {
                urls,
                settings,
                cluster_id: Arc::new(Mutex::new(None)),
                state: Mutex::new(State {
                    preferred,
                    cursor: 0,
                    channels: HashMap::new(),
                }),
            }),
        })
    }

    /// The configured endpoints, normalised, in order.
    pub fn urls(&self) -> &[String] {
        &self.inner.urls
    }

    /// The configured endpoints as one line, for messages.
    pub fn describe(&self) -> String {
        self.inner.urls.join(", ")
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Where the next call goes.
    pub fn preferred(&self) -> String {
        lock(&self.inner.state).preferred.clone()
    }

    /// The cluster id learned so far.
    pub fn cluster_id(&self) -> Option<String> {
        lock(&self.inner.cluster_id).clone()
    }

    /// Records the cluster id a coordinator reported. An empty id (an older coordinator)
    /// changes nothing; the first non-empty one is kept and sent on every later request; a
    /// different one is an error. Returns whether the id was new.
    pub fn learn_cluster_id(&self, id: &str) -> Result<bool, ClusterMismatch> {
        let id = id.trim();
        if id.is_empty() {
            return Ok(false);
        }
        let mut known = lock(&self.inner.cluster_id);
        match known.as_deref() {
            None => {
                *known = Some(id.to_string());
                Ok(true)
            }
            Some(expected) if expected.eq_ignore_ascii_case(id) => Ok(false),
            Some(expected) => Err(ClusterMismatch {
                expected: expected.to_string(),
                found: id.to_string(),
            }),
        }
    }

    /// A connection to `url` (cached per URL; connected lazily, so this does no I/O). Must be
    /// called inside a Tokio runtime.
    pub fn connection(&self, url: &str) -> Result<Connection, Status> {
        let channel = {
            let mut state = lock(&self.inner.state);
            match state.channels.get(url) {
                Some(channel) => channel.clone(),
                None => {
                    let channel = self.open(url)?;
                    if state.channels.len() >= MAX_CHANNELS {
                        // Drop a channel to an endpoint that is not configured first (an old
                        // leader hint), else any.
                        let victim = state
                            .channels
                            .keys()
                            .find(|known| !self.inner.urls.contains(known))
                            .or_else(|| state.channels.keys().next())
                            .cloned();
                        if let Some(victim) = victim {
                            state.channels.remove(&victim);
                        }
                    }
                    state.channels.insert(url.to_string(), channel.clone());
                    channel
                }
            }
        };
        Ok(InterceptedService::new(
            channel,
            ClusterStamp {
                cluster_id: Arc::clone(&self.inner.cluster_id),
            },
        ))
    }

    fn open(&self, url: &str) -> Result<Channel, Status> {
        if url.starts_with("https://") {
            return Err(Status::invalid_argument(format!(
                "{url}: https:// coordinators need TLS, which this build of kiln does not include; use http://"
            )));
        }
        let settings = &self.inner.settings;
        let mut endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|_| Status::invalid_argument(format!("'{url}' is not a coordinator address")))?
            .connect_timeout(settings.connect_timeout)
            .tcp_nodelay(settings.tcp_nodelay);
        if let Some(timeout) = settings.request_timeout {
            endpoint = endpoint.timeout(timeout);
        }
        if let Some(every) = settings.keepalive {
            endpoint = endpoint
                .http2_keep_alive_interval(every)
                .keep_alive_timeout(every)
                .keep_alive_while_idle(true);
        }
        Ok(endpoint.connect_lazy())
    }

    /// `url` answered: later calls go there first.
    pub fn succeeded(&self, url: &str) {
        lock(&self.inner.state).preferred = url.to_string();
    }

    /// `url` failed (with `status`, or `None` for a failure without one, such as a silent
    /// stream): follows the leader hint in `status`, else rotates to the next configured
    /// endpoint. The result is also where later calls go first.
    pub fn failed(&self, url: &str, status: Option<&Status>) -> Next {
        let hint = status
            .and_then(leader_hint)
            .filter(|(_, leader)| leader != url);
        let mut state = lock(&self.inner.state);
        let next = match hint {
            Some((_, leader)) => Next::Leader(leader),
            None => {
                let urls = &self.inner.urls;
                let from = urls
                    .iter()
                    .position(|known| known == url)
                    .unwrap_or(state.cursor);
                state.cursor = (from + 1) % urls.len();
                Next::Rotate(urls[state.cursor].clone())
            }
        };
        state.preferred = next.url().to_string();
        next
    }

    /// Runs a unary call (or opens a stream) on the preferred endpoint, following leader
    /// hints and rotating over unavailable endpoints until [`Settings::retry_for`] passes.
    /// `op` is called once per attempt with a fresh connection; it may borrow:
    ///
    /// ```text
    /// let request = &request;
    /// let run = endpoints
    ///     .call(|conn| async move { ControlClient::new(conn).get_run(request.clone()).await })
    ///     .await?;
    /// ```
    pub async fn call<T, F, Fut>(&self, mut op: F) -> Result<T, CallError>
    where
        F: FnMut(Connection) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let started = Instant::now();
        let deadline = started + self.inner.settings.retry_for;
        let mut url = self.preferred();
        let mut hints_in_a_row = 0;
        // Whether every failure so far was a connection that could not be made.
        let mut only_unreachable = true;
        loop {
            let connection = self.connection(&url).map_err(|status| CallError {
                status,
                endpoint: url.clone(),
                gave_up_after: None,
            })?;
            let status = match op(connection).await {
                Ok(value) => {
                    self.succeeded(&url);
                    return Ok(value);
                }
                Err(status) => status,
            };
            if !is_retryable(&status) {
                return Err(CallError {
                    status,
                    endpoint: url,
                    gave_up_after: None,
                });
            }
            // A status the client made itself (it has a transport error as its source) means
            // nothing answered; a coordinator's own UNAVAILABLE has none.
            only_unreachable &= std::error::Error::source(&status).is_some();
            let unreachable_limit = started + self.inner.settings.unreachable_for;
            if Instant::now() >= deadline
                || (only_unreachable && Instant::now() >= unreachable_limit)
            {
                return Err(CallError {
                    status,
                    endpoint: url,
                    gave_up_after: Some(started.elapsed()),
                });
            }
            let next = self.failed(&url, Some(&status));
            let pause = match &next {
                Next::Leader(_) if hints_in_a_row < MAX_IMMEDIATE_HINTS => {
                    hints_in_a_row += 1;
                    false
                }
                _ => {
                    hints_in_a_row = 0;
                    true
                }
            };
            if pause {
                let wake =
                    (Instant::now() + jitter(ROTATE_JITTER.0, ROTATE_JITTER.1)).min(deadline);
                tokio::time::sleep_until(wake).await;
            }
            url = next.url().to_string();
        }
    }

    /// One attempt on `url` only: no hints followed, no retries (e.g. asking every member for
    /// its own status).
    pub async fn call_at<T, F, Fut>(&self, url: &str, op: F) -> Result<T, CallError>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let error = |status| CallError {
            status,
            endpoint: url.to_string(),
            gave_up_after: None,
        };
        let connection = self.connection(url).map_err(error)?;
        op(connection).await.map_err(error)
    }
}

/// The leader a follower named in its answer: `(node id, client URL)`. Only `UNAVAILABLE`
/// answers carry hints; an unusable URL is no hint.
pub fn leader_hint(status: &Status) -> Option<(Option<u64>, String)> {
    if status.code() != Code::Unavailable {
        return None;
    }
    let metadata = status.metadata();
    let url = metadata.get(LEADER_URL_KEY)?.to_str().ok()?;
    let url = parse_endpoint(url).ok()?;
    let id = metadata
        .get(LEADER_ID_KEY)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok());
    Some((id, url))
}

/// Whether another endpoint (or the same one later) may answer: the member is unavailable (a
/// follower, no leader yet) or the connection failed before the server answered.
pub fn is_retryable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable => true,
        Code::Unknown | Code::Cancelled | Code::Internal => is_transport(status),
        _ => false,
    }
}

/// True when the status was made on this side from a connection error, not sent by a server.
pub fn is_transport(status: &Status) -> bool {
    std::error::Error::source(status).is_some()
}

/// A status in one line: the root cause of a transport error, else its message (or code).
pub fn status_detail(status: &Status) -> String {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    let mut root = None;
    while let Some(current) = cause {
        root = Some(current);
        cause = current.source();
    }
    let text = match root {
        Some(root) => root.to_string(),
        None => status.message().to_string(),
    };
    let line = text.lines().next().unwrap_or_default().trim().to_string();
    if line.is_empty() {
        format!("{:?}", status.code())
    } else {
        line
    }
}

/// Marks a request as a stale read ([`STALE_KEY`]): a follower may answer it from its own
/// state.
pub fn stale<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(STALE_KEY, MetadataValue::from_static("1"));
    request
}

/// A random duration in `[min, max]`, from the process's random hasher keys and the clock (no
/// random-number crate needed for jitter).
pub fn jitter(min: Duration, max: Duration) -> Duration {
    let span = max.saturating_sub(min).as_micros() as u64;
    if span == 0 {
        return min;
    }
    min + Duration::from_micros(random_u64() % (span + 1))
}

/// 32 random hex digits, e.g. for `SubmitRunRequest.request_id`.
pub fn random_id() -> String {
    format!("{:016x}{:016x}", random_u64(), random_u64())
}

fn random_u64() -> u64 {
    // Each `RandomState` has fresh keys (randomly seeded per process, then advanced).
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    hasher.write_u128(now);
    hasher.finish()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    //! The retry helper against real tonic servers on loopback: followers with and without a
    //! leader hint, a dead endpoint, a coordinator of another cluster.

    use std::sync::atomic::{AtomicU32, Ordering};

    use tonic::transport::Server;
    use tonic::Response;

    use super::*;
    use crate::v1::control_client::ControlClient;
    use crate::v1::control_server::{Control, ControlServer};
    use crate::v1::*;

    /// How a fake coordinator answers.
    #[derive(Clone)]
    enum Role {
        /// Answers `GetInfo` with `registry` = its name.
        Leader,
        /// `UNAVAILABLE` naming the leader at this URL.
        Follower(String),
        /// `UNAVAILABLE` without a hint.
        NoLeader,
        /// `UNAVAILABLE` without a hint for this many calls, then the leader.
        ElectedAfter(u32),
    }

    struct Fake {
        name: &'static str,
        cluster_id: &'static str,
        role: Role,
        calls: AtomicU32,
    }

    impl Fake {
        fn new(name: &'static str, role: Role) -> Arc<Fake> {
            Arc::new(Fake {
                name,
                cluster_id: "00000000000000aa",
                role,
                calls: AtomicU32::new(0),
            })
        }

        fn calls(&self) -> u32 {
            self.calls.load(Ordering::SeqCst)
        }
    }

    #[tonic::async_trait]
    impl Control for Fake {
        async fn get_info(
            &self,
            request: Request<GetInfoRequest>,
        ) -> Result<Response<GetInfoResponse>, Status> {
            let calls = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            if let Some(asked) = request.metadata().get(CLUSTER_ID_KEY) {
                let asked = asked.to_str().unwrap_or_default();
                if asked != self.cluster_id {
                    return Err(Status::failed_precondition(format!(
                        "this coordinator belongs to cluster {}, not {asked}",
                        self.cluster_id
                    )));
                }
            }
            let role = self.role.clone();
            match role {
                Role::ElectedAfter(n) if calls <= n => {
                    Err(Status::unavailable("no leader is elected yet; retry"))
                }
                Role::Leader | Role::ElectedAfter(_) => Ok(Response::new(GetInfoResponse {
                    registry: self.name.to_string(),
                    cluster_id: self.cluster_id.to_string(),
                    ..GetInfoResponse::default()
                })),
                Role::Follower(leader) => {
                    let mut status = Status::unavailable(format!(
                        "node 2 is not the leader; the leader is node 1 at {leader}"
                    ));
                    let metadata = status.metadata_mut();
                    metadata.insert(LEADER_ID_KEY, MetadataValue::from_static("1"));
                    metadata.insert(LEADER_URL_KEY, leader.parse().expect("ascii"));
                    Err(status)
                }
                Role::NoLeader => Err(Status::unavailable("no leader is elected yet; retry")),
            }
        }

        async fn submit_run(
            &self,
            _: Request<SubmitRunRequest>,
        ) -> Result<Response<SubmitRunResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }

        async fn get_run(
            &self,
            _: Request<GetRunRequest>,
        ) -> Result<Response<GetRunResponse>, Status> {
            Err(Status::not_found("no such run"))
        }

        async fn list_runs(
            &self,
            _: Request<ListRunsRequest>,
        ) -> Result<Response<ListRunsResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }

        async fn cancel_run(
            &self,
            _: Request<CancelRunRequest>,
        ) -> Result<Response<CancelRunResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }

        type StreamLogsStream = tokio_stream::Empty<Result<LogChunk, Status>>;

        async fn stream_logs(
            &self,
            _: Request<StreamLogsRequest>,
        ) -> Result<Response<Self::StreamLogsStream>, Status> {
            Err(Status::unimplemented("fake"))
        }

        async fn drain_agent(
            &self,
            _: Request<DrainAgentRequest>,
        ) -> Result<Response<DrainAgentResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
    }

    /// Serves `fake` on a free loopback port for the rest of the test; returns its URL.
    async fn serve(fake: Arc<Fake>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let address = listener.local_addr().expect("a bound address");
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(
            Server::builder()
                .add_service(ControlServer::from_arc(fake))
                .serve_with_incoming(incoming),
        );
        format!("http://{address}")
    }

    /// A loopback address nothing listens on (bound, then released).
    async fn dead() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let address = listener.local_addr().expect("a bound address");
        drop(listener);
        format!("http://{address}")
    }

    fn endpoints(urls: &[&str], retry_for: Duration) -> Endpoints {
        Endpoints::with_settings(
            &urls.join(","),
            Settings {
                retry_for,
                ..Settings::default()
            },
        )
        .expect("valid endpoints")
    }

    async fn get_info(endpoints: &Endpoints) -> Result<GetInfoResponse, CallError> {
        endpoints
            .call(|conn| async move {
                ControlClient::new(conn)
                    .get_info(GetInfoRequest {})
                    .await
                    .map(Response::into_inner)
            })
            .await
    }

    #[test]
    fn endpoint_lists_parse_or_say_what_is_wrong() {
        assert_eq!(
            parse_list("127.0.0.1:7878, http://b:1/,https://c:443,127.0.0.1:7878").unwrap(),
            ["http://127.0.0.1:7878", "http://b:1", "https://c:443"]
        );
        assert_eq!(parse_list("[::1]:7878").unwrap(), ["http://[::1]:7878"]);
        for (bad, says) in [
            ("a:1,,b:2", "empty coordinator address"),
            ("localhost", "no port"),
            ("a:port", "port is not a number"),
            ("a:70000", "port is not a number"),
            (":7878", "no host"),
            ("grpc://a:1", "only http:// and https://"),
            ("http://a:1/path", "no path"),
            ("http://", "host"),
        ] {
            let error = parse_list(bad).unwrap_err().to_string();
            assert!(error.contains(says), "{bad}: {error}");
            assert!(!error.contains('\n'), "{error}");
        }
        assert!(Endpoints::parse("").is_err());
    }

    #[test]
    fn jitter_stays_in_its_range_and_ids_differ() {
        for _ in 0..1000 {
            let pause = jitter(ROTATE_JITTER.0, ROTATE_JITTER.1);
            assert!(
                pause >= ROTATE_JITTER.0 && pause <= ROTATE_JITTER.1,
                "{pause:?}"
            );
        }
        let (a, b) = (random_id(), random_id());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }

    #[test]
    fn the_cluster_id_is_learned_once_and_a_different_one_is_refused() {
        let endpoints = Endpoints::parse("a:1").unwrap();
        assert_eq!(endpoints.learn_cluster_id(""), Ok(false));
        assert_eq!(endpoints.cluster_id(), None);
        assert_eq!(endpoints.learn_cluster_id("00000000000000AA"), Ok(true));
        assert_eq!(endpoints.learn_cluster_id("00000000000000aa"), Ok(false));
        let mismatch = endpoints.learn_cluster_id("00000000000000bb").unwrap_err();
        assert_eq!(
            mismatch.to_string(),
            "this coordinator belongs to cluster 00000000000000bb, not 00000000000000AA"
        );
    }

    #[tokio::test]
    async fn a_follower_hint_leads_to_the_leader_at_once() {
        let leader = Fake::new("leader", Role::Leader);
        let leader_url = serve(Arc::clone(&leader)).await;
        let follower = Fake::new("follower", Role::Follower(leader_url.clone()));
        let follower_url = serve(Arc::clone(&follower)).await;
        let other = Fake::new("other", Role::NoLeader);
        let other_url = serve(Arc::clone(&other)).await;
        // The leader is not even in the list: the hint alone finds it.
        let endpoints = endpoints(&[&follower_url, &other_url], DEFAULT_RETRY_FOR);
        let started = Instant::now();
        let info = get_info(&endpoints).await.expect("the leader answers");
        assert_eq!(info.registry, "leader");
        assert!(
            started.elapsed() < ROTATE_JITTER.0,
            "no pause before a hint"
        );
        assert_eq!((follower.calls(), other.calls(), leader.calls()), (1, 0, 1));
        // Later calls go straight to the leader.
        assert_eq!(endpoints.preferred(), leader_url);
        get_info(&endpoints).await.expect("the leader answers");
        assert_eq!((follower.calls(), leader.calls()), (1, 2));
    }

    #[tokio::test]
    async fn dead_and_leaderless_endpoints_are_rotated_over() {
        let leader = Fake::new("leader", Role::Leader);
        let leader_url = serve(Arc::clone(&leader)).await;
        let leaderless = Fake::new("leaderless", Role::NoLeader);
        let leaderless_url = serve(Arc::clone(&leaderless)).await;
        let dead_url = dead().await;
        let endpoints = endpoints(
            &[&dead_url, &leaderless_url, &leader_url],
            DEFAULT_RETRY_FOR,
        );
        let info = get_info(&endpoints).await.expect("the leader answers");
        assert_eq!(info.registry, "leader");
        assert_eq!((leaderless.calls(), leader.calls()), (1, 1));
        assert_eq!(endpoints.preferred(), leader_url);
    }

    #[tokio::test]
    async fn an_election_in_progress_is_waited_out() {
        let member = Fake::new("member", Role::ElectedAfter(3));
        let url = serve(Arc::clone(&member)).await;
        let endpoints = endpoints(&[&url], DEFAULT_RETRY_FOR);
        let info = get_info(&endpoints).await.expect("answered once elected");
        assert_eq!(info.registry, "member");
        assert_eq!(member.calls(), 4);
    }

    #[tokio::test]
    async fn the_helper_gives_up_after_its_bound_with_the_last_error() {
        let leaderless = Fake::new("leaderless", Role::NoLeader);
        let leaderless_url = serve(Arc::clone(&leaderless)).await;
        let dead_url = dead().await;
        let bound = Duration::from_millis(400);
        let endpoints = endpoints(&[&leaderless_url, &dead_url], bound);
        let started = Instant::now();
        let error = get_info(&endpoints).await.unwrap_err();
        let took = started.elapsed();
        assert!(
            took >= bound && took < bound + Duration::from_secs(2),
            "{took:?}"
        );
        assert!(error.unreachable(), "{error}");
        assert_eq!(error.status.code(), Code::Unavailable);
        assert!(leaderless.calls() >= 2, "rotated back to it");
        assert!(
            error
                .to_string()
                .starts_with("no kiln coordinator answered within"),
            "{error}"
        );
        assert!(!error.to_string().contains('\n'));
        // Only dead endpoints: the transport error is what is reported.
        let endpoints = endpoints_of_dead(bound).await;
        let error = get_info(&endpoints).await.unwrap_err();
        assert!(
            error.unreachable() && is_transport(&error.status),
            "{error:?}"
        );
        assert!(error.detail().contains("refused"), "{}", error.detail());
    }

    #[tokio::test]
    async fn when_nothing_listens_it_gives_up_after_the_shorter_unreachable_bound() {
        let endpoints = Endpoints::with_settings(
            &[dead().await, dead().await].join(","),
            Settings {
                unreachable_for: Duration::from_millis(300),
                ..Settings::default()
            },
        )
        .expect("valid endpoints");
        let started = Instant::now();
        let error = get_info(&endpoints).await.unwrap_err();
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < DEFAULT_RETRY_FOR,
            "gave up after {took:?}"
        );
        assert!(
            error.unreachable() && is_transport(&error.status),
            "{error:?}"
        );
    }

    async fn endpoints_of_dead(bound: Duration) -> Endpoints {
        endpoints(&[&dead().await, &dead().await], bound)
    }

    #[tokio::test]
    async fn a_coordinator_of_another_cluster_stops_the_call_at_once() {
        let foreign = Fake::new("foreign", Role::Leader);
        let foreign_url = serve(Arc::clone(&foreign)).await;
        let ours = Fake::new("ours", Role::Leader);
        let ours_url = serve(Arc::clone(&ours)).await;
        let endpoints = endpoints(&[&foreign_url, &ours_url], DEFAULT_RETRY_FOR);
        endpoints.learn_cluster_id("00000000000000bb").unwrap();
        let started = Instant::now();
        let error = get_info(&endpoints).await.unwrap_err();
        assert!(started.elapsed() < ROTATE_JITTER.0, "no retry");
        assert_eq!(error.status.code(), Code::FailedPrecondition);
        assert_eq!(
            error.to_string(),
            "this coordinator belongs to cluster 00000000000000aa, not 00000000000000bb"
        );
        assert_eq!(error.endpoint, foreign_url);
        assert_eq!((foreign.calls(), ours.calls()), (1, 0));
    }

    #[tokio::test]
    async fn other_errors_are_returned_at_once_and_call_at_tries_one_member() {
        let leader = Fake::new("leader", Role::Leader);
        let url = serve(Arc::clone(&leader)).await;
        let follower = Fake::new("follower", Role::Follower(url.clone()));
        let follower_url = serve(Arc::clone(&follower)).await;
        let endpoints = endpoints(&[&url], DEFAULT_RETRY_FOR);
        let error = endpoints
            .call(|conn| async move {
                ControlClient::new(conn)
                    .get_run(GetRunRequest::default())
                    .await
                    .map(Response::into_inner)
            })
            .await
            .unwrap_err();
        assert_eq!(error.status.code(), Code::NotFound);
        assert!(!error.unreachable());
        let error = endpoints
            .call_at(&follower_url, |conn| async move {
                ControlClient::new(conn).get_info(GetInfoRequest {}).await
            })
            .await
            .unwrap_err();
        assert_eq!(leader_hint(&error.status), Some((Some(1), url.clone())));
        assert_eq!(leader.calls(), 0, "call_at follows no hint");
    }

    #[test]
    fn rotation_goes_round_the_list_and_hints_are_remembered() {
        let endpoints = Endpoints::parse("a:1,b:2,c:3").unwrap();
        let next = endpoints.failed("http://a:1", None);
        assert_eq!(next, Next::Rotate("http://b:2".into()));
        assert_eq!(endpoints.failed("http://c:3", None).url(), "http://a:1");
        let mut status = Status::unavailable("not the leader");
        status
            .metadata_mut()
            .insert(LEADER_URL_KEY, MetadataValue::from_static("d:4"));
        assert_eq!(
            endpoints.failed("http://a:1", Some(&status)),
            Next::Leader("http://d:4".into())
        );
        assert_eq!(endpoints.preferred(), "http://d:4");
        // A hinted leader that fails: rotation continues where it was.
        assert_eq!(endpoints.failed("http://d:4", None).url(), "http://b:2");
        // A hint naming the failing member itself is no hint.
        let mut status = Status::unavailable("confused");
        status
            .metadata_mut()
            .insert(LEADER_URL_KEY, MetadataValue::from_static("http://b:2"));
        assert_eq!(
            endpoints.failed("http://b:2", Some(&status)).url(),
            "http://c:3"
        );
    }

    #[tokio::test]
    async fn the_channel_cache_is_bounded() {
        let endpoints = Endpoints::parse("a:1").unwrap();
        for port in 0..(MAX_CHANNELS as u16 * 2) {
            endpoints
                .connection(&format!("http://127.0.0.1:{}", 1000 + port))
                .unwrap();
        }
        endpoints.connection("http://a:1").unwrap();
        assert!(lock(&endpoints.inner.state).channels.len() <= MAX_CHANNELS);
        assert!(endpoints.connection("https://a:1").is_err());
    }
}

//! Two benchmarks of the live log path on a real farm (a real agent and Docker Engine):
//!
//! - log latency: one run whose container prints lines stamped with the time they were
//!   written (busybox ash's `$EPOCHREALTIME`, microseconds), followed here with
//!   `StreamLogs(follow)`; each line's latency is its arrival here minus its stamp (the same
//!   machine, so the same clock);
//! - log throughput: one run whose step writes `--mib` MiB of fixed 64-byte lines as fast as
//!   it can, followed live (byte count over time); afterwards the stored log is read back
//!   (`StreamLogs` without follow) and every payload line is counted.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail};
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use kiln_proto::v1::{GetRunRequest, LogChunk, StreamLogsRequest, SubmitRunRequest};
use kiln_state::pb::{Run, RunRequest, RunStatus};

use crate::bench::{cancel_all, status_line};
use crate::driver::Client;

/// The latency goal: p99 from the container's write to the follower.
pub const LATENCY_GOAL: Duration = Duration::from_millis(100);
/// The throughput goal for one step, in MiB/s.
pub const THROUGHPUT_GOAL_MIB_S: f64 = 100.0;
/// What starts every stamped line: `kiln-lat SEQ SECONDS.MICROS`.
pub const LATENCY_MARK: &str = "kiln-lat";
/// How the lines are stamped, for the report.
pub const STAMP_SOURCE: &str = "busybox ash $EPOCHREALTIME (gettimeofday, 1 us resolution)";
/// What every line the throughput step repeats starts with.
pub const PAYLOAD_MARK: &str = "kiln-throughput-";
/// Bytes per payload line (newline included) by default, and the bounds.
pub const DEFAULT_LINE_BYTES: u64 = 64;
pub const MIN_LINE_BYTES: u64 = 64;
pub const MAX_LINE_BYTES_PAYLOAD: u64 = 16 * 1024;
/// How long the latency container waits before its first line, so that the follower is
/// attached to the live stream (and not reading the buffer) when lines are written.
const START_DELAY_SECONDS: u32 = 1;
/// The longest line kept while splitting; longer ones are counted and skipped.
const MAX_LINE_BYTES: usize = 64 * 1024;
/// The most stamped lines one latency run may print.
pub const MAX_LINES: u32 = 100_000;
/// The most MiB one throughput run may write.
pub const MAX_MIB: u64 = 16 * 1024;
/// How many of the slowest lines the latency report names.
const SLOWEST_SHOWN: usize = 8;
const MIB: f64 = 1024.0 * 1024.0;

/// The shell script of the latency step: `lines` stamped lines, `every_ms` apart.
pub fn latency_script(lines: u32, every_ms: u64) -> String {
    let pause = if every_ms == 0 {
        String::new()
    } else {
        format!(" usleep {};", every_ms * 1000)
    };
    format!(
        "sleep {START_DELAY_SECONDS}; i=0; while [ $i -lt {lines} ]; do echo \"{LATENCY_MARK} $i $EPOCHREALTIME\";{pause} i=$((i+1)); done"
    )
}

/// The line the throughput step repeats: `line_bytes` bytes with its newline (which is not
/// part of the string).
pub fn payload_line(line_bytes: u64) -> String {
    const FILL: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut line = String::from(PAYLOAD_MARK);
    let mut next = 0;
    while (line.len() as u64) + 1 < line_bytes {
        line.push(char::from(FILL[next % FILL.len()]));
        next += 1;
    }
    line
}

/// The shell script of the throughput step: exactly `bytes` bytes of `line_bytes`-byte lines.
pub fn throughput_script(bytes: u64, line_bytes: u64) -> String {
    format!("yes {} | head -c {bytes}", payload_line(line_bytes))
}

/// The `--cmd` of a step running `script` with busybox's `sh` in `image`.
pub fn shell_cmd(image: &str, script: &str) -> anyhow::Result<String> {
    if script.contains('\'') {
        bail!("the step's script cannot contain a single quote");
    }
    Ok(format!("{image} sh -c '{script}'"))
}

/// Splits a byte stream into lines (without their newline), however it is cut into chunks.
/// A line longer than `max` bytes is skipped and counted in `overlong`.
#[derive(Debug)]
pub struct LineSplitter {
    partial: Vec<u8>,
    max: usize,
    skipping: bool,
    pub overlong: u64,
}

impl LineSplitter {
    pub fn new(max: usize) -> Self {
        Self {
            partial: Vec::new(),
            max,
            skipping: false,
            overlong: 0,
        }
    }

    /// Feeds `data`; `each` gets every line it completes.
    pub fn push(&mut self, mut data: &[u8], mut each: impl FnMut(&[u8])) {
        while let Some(end) = data.iter().position(|&b| b == b'\n') {
            let line = &data[..end];
            data = &data[end + 1..];
            if self.skipping {
                self.skipping = false;
            } else if self.partial.is_empty() {
                if line.len() <= self.max {
                    each(line);
                } else {
                    self.overlong += 1;
                }
            } else if self.partial.len() + line.len() <= self.max {
                self.partial.extend_from_slice(line);
                each(&self.partial);
            } else {
                self.overlong += 1;
            }
            self.partial.clear();
        }
        if self.skipping || data.is_empty() {
            return;
        }
        if self.partial.len() + data.len() > self.max {
            self.partial.clear();
            self.skipping = true;
            self.overlong += 1;
        } else {
            self.partial.extend_from_slice(data);
        }
    }

    /// Ends the stream: `each` gets an unterminated last line.
    pub fn finish(&mut self, mut each: impl FnMut(&[u8])) {
        if !self.skipping && !self.partial.is_empty() {
            each(&self.partial);
        }
        self.partial.clear();
        self.skipping = false;
    }
}

/// Reads a stamped line: its sequence number and its stamp in microseconds since the epoch.
pub fn parse_stamp(line: &[u8]) -> Option<(u32, i64)> {
    let text = std::str::from_utf8(line).ok()?;
    let mut words = text.trim_end_matches('\r').split(' ');
    if words.next()? != LATENCY_MARK {
        return None;
    }
    let seq = words.next()?.parse().ok()?;
    let stamp = words.next()?;
    if words.next().is_some() {
        return None;
    }
    let (seconds, fraction) = stamp.split_once('.').unwrap_or((stamp, ""));
    if seconds.is_empty()
        || !seconds.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let seconds: i64 = seconds.parse().ok()?;
    let mut micros: i64 = 0;
    for position in 0..6 {
        let digit = fraction.as_bytes().get(position).map_or(0, |b| b - b'0');
        micros = micros * 10 + i64::from(digit);
    }
    Some((seq, seconds.checked_mul(1_000_000)?.checked_add(micros)?))
}

/// Now, in microseconds since the epoch.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
        })
}

/// Percentiles of signed microsecond samples, reported in milliseconds (nearest rank).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MicroSummary {
    pub count: u64,
    pub min_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub mean_ms: Option<f64>,
}

impl MicroSummary {
    pub fn from_micros(mut samples: Vec<i64>) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let count = samples.len();
        let rank = |percent: usize| {
            let rank = (percent * count).div_ceil(100).max(1);
            samples[rank.min(count) - 1]
        };
        let ms = |micros: i64| Some(micros as f64 / 1000.0);
        let total: i128 = samples.iter().map(|&s| i128::from(s)).sum();
        Self {
            count: count as u64,
            min_ms: ms(samples[0]),
            p50_ms: ms(rank(50)),
            p95_ms: ms(rank(95)),
            p99_ms: ms(rank(99)),
            max_ms: ms(samples[count - 1]),
            mean_ms: Some(((total as f64 / count as f64).round()) / 1000.0),
        }
    }
}

/// The follower's view of the latency run: every stamped line's latency.
#[derive(Debug)]
pub struct LatencyTally {
    expected: u32,
    seen: Vec<bool>,
    splitters: HashMap<String, LineSplitter>,
    /// (sequence number, arrival − stamp in µs) of every line received, in arrival order.
    pub latencies_us: Vec<(u32, i64)>,
    pub duplicates: u64,
    pub unexpected: u64,
    pub lag_notices: u64,
}

impl LatencyTally {
    pub fn new(expected: u32) -> Self {
        Self {
            expected,
            seen: vec![false; expected as usize],
            splitters: HashMap::new(),
            latencies_us: Vec::with_capacity(expected as usize),
            duplicates: 0,
            unexpected: 0,
            lag_notices: 0,
        }
    }

    /// One chunk of `step` that arrived at `arrived_us`.
    pub fn chunk(&mut self, step: &str, data: &[u8], arrived_us: i64) {
        if step.is_empty() {
            if is_lag_notice(data) {
                self.lag_notices += 1;
            }
            return;
        }
        let splitter = self
            .splitters
            .entry(step.to_string())
            .or_insert_with(|| LineSplitter::new(MAX_LINE_BYTES));
        let (seen, latencies, duplicates, unexpected) = (
            &mut self.seen,
            &mut self.latencies_us,
            &mut self.duplicates,
            &mut self.unexpected,
        );
        splitter.push(data, |line| {
            let Some((seq, written)) = parse_stamp(line) else {
                return;
            };
            match seen.get_mut(seq as usize) {
                Some(flag) if *flag => *duplicates += 1,
                Some(flag) => {
                    *flag = true;
                    latencies.push((seq, arrived_us - written));
                }
                None => *unexpected += 1,
            }
        });
    }

    pub fn received(&self) -> u32 {
        u32::try_from(self.seen.iter().filter(|&&seen| seen).count()).unwrap_or(u32::MAX)
    }

    pub fn missing(&self) -> u32 {
        self.expected - self.received()
    }

    /// The `count` slowest lines, slowest first: (sequence number, latency in ms).
    pub fn slowest(&self, count: usize) -> Vec<(u32, f64)> {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable_by_key(|&(seq, micros)| (std::cmp::Reverse(micros), seq));
        sorted
            .into_iter()
            .take(count)
            .map(|(seq, micros)| (seq, micros as f64 / 1000.0))
            .collect()
    }
}

/// Counts the payload lines of the throughput run's log (live or stored).
#[derive(Debug)]
pub struct PayloadTally {
    line: String,
    splitters: HashMap<String, LineSplitter>,
    pub bytes: u64,
    pub payload_lines: u64,
    /// Lines of a step that are neither payload nor agent text (`[kiln]`, `Executing…`): a
    /// truncated or corrupted payload line shows here.
    pub other_lines: u64,
    pub lag_notices: u64,
}

impl PayloadTally {
    /// Counts lines equal to `line` (without its newline).
    pub fn new(line: String) -> Self {
        Self {
            line,
            splitters: HashMap::new(),
            bytes: 0,
            payload_lines: 0,
            other_lines: 0,
            lag_notices: 0,
        }
    }

    pub fn chunk(&mut self, step: &str, data: &[u8]) {
        self.bytes += data.len() as u64;
        if step.is_empty() {
            if is_lag_notice(data) {
                self.lag_notices += 1;
            }
            return;
        }
        let splitter = self
            .splitters
            .entry(step.to_string())
            .or_insert_with(|| LineSplitter::new(MAX_LINE_BYTES));
        let (payload, other) = (&mut self.payload_lines, &mut self.other_lines);
        let expected = self.line.as_bytes();
        splitter.push(data, |line| {
            if line == expected {
                *payload += 1;
            } else if line.starts_with(PAYLOAD_MARK.as_bytes()) {
                *other += 1;
            }
        });
    }

    pub fn finish(&mut self) {
        let other = &mut self.other_lines;
        for splitter in self.splitters.values_mut() {
            splitter.finish(|line| {
                if line.starts_with(PAYLOAD_MARK.as_bytes()) {
                    *other += 1;
                }
            });
        }
    }

    pub fn payload_bytes(&self) -> u64 {
        self.payload_lines * (self.line.len() as u64 + 1)
    }
}

fn is_lag_notice(data: &[u8]) -> bool {
    std::str::from_utf8(data).is_ok_and(|text| text.contains("fell behind"))
}

/// MiB per second, or 0 without time.
pub fn mib_per_second(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 / MIB / seconds
    } else {
        0.0
    }
}

/// Checks the latency benchmark's numbers against the time it may take.
pub fn validate_latency(lines: u32, every_ms: u64, max_seconds: u64) -> anyhow::Result<()> {
    if lines == 0 || lines > MAX_LINES {
        bail!("--lines must be between 1 and {MAX_LINES}");
    }
    if every_ms > 10_000 {
        bail!("--every-ms must be between 0 and 10000");
    }
    let needs = u64::from(lines) * every_ms / 1000 + u64::from(START_DELAY_SECONDS) + 10;
    if needs > max_seconds {
        bail!("{lines} lines every {every_ms} ms need about {needs} s: raise --max-seconds");
    }
    Ok(())
}

pub fn validate_throughput(mib: u64, line_bytes: u64) -> anyhow::Result<()> {
    if mib == 0 || mib > MAX_MIB {
        bail!("--mib must be between 1 and {MAX_MIB}");
    }
    if !line_bytes.is_power_of_two()
        || !(MIN_LINE_BYTES..=MAX_LINE_BYTES_PAYLOAD).contains(&line_bytes)
    {
        bail!("--line-bytes must be a power of two between {MIN_LINE_BYTES} and {MAX_LINE_BYTES_PAYLOAD}");
    }
    Ok(())
}

/// A run in progress: submitted, and canceled when the benchmark gives up on it.
struct Submitted {
    client: Client,
    run_id: String,
}

impl Submitted {
    async fn new(client: &Client, request: RunRequest) -> anyhow::Result<Self> {
        let mut client = client.clone();
        let run_id = client
            .submit_run(SubmitRunRequest {
                request: Some(request),
                request_id: String::new(),
            })
            .await
            .map_err(|status| anyhow!("cannot submit the run: {}", status_line(&status)))?
            .into_inner()
            .run_id;
        Ok(Self { client, run_id })
    }

    async fn logs(&self, follow: bool) -> anyhow::Result<tonic::Streaming<LogChunk>> {
        Ok(self
            .client
            .clone()
            .stream_logs(StreamLogsRequest {
                run_id: self.run_id.clone(),
                follow,
            })
            .await
            .map_err(|status| {
                anyhow!(
                    "cannot read the log of {}: {}",
                    self.run_id,
                    status_line(&status)
                )
            })?
            .into_inner())
    }

    async fn run(&self) -> anyhow::Result<Run> {
        self.client
            .clone()
            .get_run(GetRunRequest {
                run_id: self.run_id.clone(),
            })
            .await
            .map_err(|status| {
                anyhow!(
                    "cannot read the run {}: {}",
                    self.run_id,
                    status_line(&status)
                )
            })?
            .into_inner()
            .run
            .ok_or_else(|| anyhow!("the coordinator has no run {}", self.run_id))
    }

    /// Waits (bounded) until the run has ended: the follow stream ends with the run, but its
    /// final record may be a moment behind.
    async fn ended(&self, limit: Duration) -> anyhow::Result<Run> {
        let deadline = Instant::now() + limit;
        loop {
            let run = self.run().await?;
            if is_terminal(run.status()) || Instant::now() >= deadline {
                return Ok(run);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn cancel(self) {
        cancel_all(&self.client, vec![self.run_id], 1).await;
    }
}

fn is_terminal(status: RunStatus) -> bool {
    !matches!(
        status,
        RunStatus::Queued | RunStatus::Running | RunStatus::Unspecified
    )
}

/// Why a benchmark stopped before its run ended, if it did.
enum Stop {
    Deadline,
    Interrupted,
}

/// Runs `work` until it ends, `limit` passes or `interrupt` fires.
async fn bounded<T>(
    work: impl std::future::Future<Output = anyhow::Result<T>>,
    limit: Duration,
    interrupt: &CancellationToken,
) -> Result<anyhow::Result<T>, Stop> {
    tokio::select! {
        result = tokio::time::timeout(limit, work) => result.map_err(|_| Stop::Deadline),
        () = interrupt.cancelled() => Err(Stop::Interrupted),
    }
}

fn stopped(stop: &Stop, run_id: &str) -> anyhow::Error {
    match stop {
        Stop::Deadline => anyhow!("run {run_id} did not end within --max-seconds: canceled it"),
        Stop::Interrupted => anyhow!("interrupted: canceled run {run_id}"),
    }
}

/// The first step's (started, finished) coordinator time stamps, in ms.
fn step_times(run: &Run) -> Option<(String, u64, u64)> {
    let step = run.steps.first()?;
    (step.started_at_ms > 0 && step.finished_at_ms >= step.started_at_ms)
        .then(|| (step.id.clone(), step.started_at_ms, step.finished_at_ms))
}

fn status_name(run: &Run) -> String {
    format!("{:?}", run.status())
}

#[derive(Clone, Debug, Serialize)]
pub struct LatencyReport {
    pub run_id: String,
    pub status: String,
    pub reason: String,
    pub lines: u32,
    pub every_ms: u64,
    pub received: u32,
    pub missing: u32,
    pub duplicates: u64,
    pub unexpected: u64,
    pub lag_notices: u64,
    pub stamp_source: &'static str,
    pub latency: MicroSummary,
    /// The slowest lines: (sequence number, ms); with --every-ms, the sequence number says
    /// when in the run each was written.
    pub slowest: Vec<(u32, f64)>,
    pub goal_ms: u64,
    pub goal_met: bool,
}

impl LatencyReport {
    pub fn to_table(&self) -> String {
        let ms = |value: Option<f64>| value.map_or_else(|| "-".to_string(), |v| format!("{v:.3}"));
        let mut out = format!(
            "run           {} {} ({} lines, one every {} ms)\n",
            self.run_id, self.status, self.lines, self.every_ms
        );
        if !self.reason.is_empty() {
            out.push_str(&format!("reason        {}\n", self.reason));
        }
        out.push_str(&format!(
            "lines         received {}  missing {}  duplicates {}  lag notices {}\n",
            self.received, self.missing, self.duplicates, self.lag_notices
        ));
        out.push_str(&format!("stamps        {}\n", self.stamp_source));
        out.push_str(
            "latency (ms)   count       min       p50       p95       p99       max      mean\n",
        );
        let l = &self.latency;
        out.push_str(&format!(
            "write→follow {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            l.count,
            ms(l.min_ms),
            ms(l.p50_ms),
            ms(l.p95_ms),
            ms(l.p99_ms),
            ms(l.max_ms),
            ms(l.mean_ms)
        ));
        let slowest: Vec<String> = self
            .slowest
            .iter()
            .map(|(seq, ms)| format!("#{seq} {ms:.1}"))
            .collect();
        out.push_str(&format!("slowest (ms)  {}\n", slowest.join("  ")));
        out.push_str(&format!(
            "goal          p99 <= {} ms with every line received: {}\n",
            self.goal_ms,
            if self.goal_met { "met" } else { "NOT met" }
        ));
        out
    }
}

/// The latency benchmark: submits `request` (running `latency_script(lines, every_ms)`) and
/// follows its log.
pub async fn log_latency(
    client: &Client,
    request: RunRequest,
    lines: u32,
    every_ms: u64,
    limit: Duration,
    interrupt: &CancellationToken,
) -> anyhow::Result<LatencyReport> {
    let submitted = Submitted::new(client, request).await?;
    eprintln!(
        "kiln-loadtest: run {} prints {lines} stamped lines; following its log",
        submitted.run_id
    );
    let follow = async {
        let mut stream = submitted.logs(true).await?;
        let mut tally = LatencyTally::new(lines);
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(|status| anyhow!("the log stream failed: {}", status_line(&status)))?
        {
            let arrived = now_micros();
            tally.chunk(&chunk.step_id, &chunk.data, arrived);
        }
        let run = submitted.ended(Duration::from_secs(10)).await?;
        Ok((tally, run))
    };
    let (tally, run) = match bounded(follow, limit, interrupt).await {
        Ok(result) => result?,
        Err(stop) => {
            let error = stopped(&stop, &submitted.run_id);
            submitted.cancel().await;
            return Err(error);
        }
    };
    let latency = MicroSummary::from_micros(tally.latencies_us.iter().map(|&(_, us)| us).collect());
    let goal_ms = u64::try_from(LATENCY_GOAL.as_millis()).unwrap_or(u64::MAX);
    let goal_met = tally.missing() == 0
        && run.status() == RunStatus::Succeeded
        && latency.p99_ms.is_some_and(|p99| p99 <= goal_ms as f64);
    Ok(LatencyReport {
        run_id: submitted.run_id.clone(),
        status: status_name(&run),
        reason: run.reason.clone(),
        lines,
        every_ms,
        received: tally.received(),
        missing: tally.missing(),
        duplicates: tally.duplicates,
        unexpected: tally.unexpected,
        lag_notices: tally.lag_notices,
        stamp_source: STAMP_SOURCE,
        latency,
        slowest: tally.slowest(SLOWEST_SHOWN),
        goal_ms,
        goal_met,
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct ThroughputReport {
    pub run_id: String,
    pub status: String,
    pub reason: String,
    pub payload_bytes: u64,
    pub line_bytes: u64,
    /// The step's started → finished (coordinator time stamps, ms resolution).
    pub step_id: String,
    pub step_seconds: Option<f64>,
    pub step_mib_per_second: Option<f64>,
    /// The run's created → finished.
    pub run_seconds: Option<f64>,
    /// Live: bytes the follower received and its first → last chunk.
    pub followed: bool,
    pub live_bytes: u64,
    pub live_payload_bytes: u64,
    pub live_seconds: f64,
    pub live_mib_per_second: f64,
    pub live_lag_notices: u64,
    /// The stored log read back after the run.
    pub stored_bytes: u64,
    pub stored_payload_bytes: u64,
    pub stored_other_lines: u64,
    pub stored_segments: usize,
    pub stored_read_seconds: f64,
    pub stored_complete: bool,
    pub goal_mib_per_second: f64,
    pub goal_met: bool,
}

impl ThroughputReport {
    pub fn to_table(&self) -> String {
        let opt = |value: Option<f64>, unit: &str| {
            value.map_or_else(|| "-".to_string(), |v| format!("{v:.1}{unit}"))
        };
        let mut out = format!(
            "run           {} {} ({} MiB of {}-byte lines in step {})\n",
            self.run_id,
            self.status,
            self.payload_bytes / (1024 * 1024),
            self.line_bytes,
            self.step_id
        );
        if !self.reason.is_empty() {
            out.push_str(&format!("reason        {}\n", self.reason));
        }
        out.push_str(&format!(
            "step          {} started → finished = {} (run {} created → finished)\n",
            opt(self.step_seconds, " s"),
            opt(self.step_mib_per_second, " MiB/s"),
            opt(self.run_seconds, " s"),
        ));
        if self.followed {
            out.push_str(&format!(
                "live          {} bytes ({} payload) in {:.2} s = {:.1} MiB/s, lag notices {}\n",
                self.live_bytes,
                self.live_payload_bytes,
                self.live_seconds,
                self.live_mib_per_second,
                self.live_lag_notices
            ));
        } else {
            out.push_str("live          not followed (--no-follow)\n");
        }
        out.push_str(&format!(
            "stored        {} bytes in {} segments, payload {} of {} bytes ({}), {} damaged lines, read in {:.2} s\n",
            self.stored_bytes,
            self.stored_segments,
            self.stored_payload_bytes,
            self.payload_bytes,
            if self.stored_complete { "complete" } else { "INCOMPLETE" },
            self.stored_other_lines,
            self.stored_read_seconds
        ));
        out.push_str(&format!(
            "goal          >= {:.0} MiB/s per step with the whole log stored: {}\n",
            self.goal_mib_per_second,
            if self.goal_met { "met" } else { "NOT met" }
        ));
        out
    }
}

/// The throughput benchmark: submits `request` (running `throughput_script(bytes)`), follows
/// its log unless `follow` is false, then reads the stored log back.
pub async fn log_throughput(
    client: &Client,
    request: RunRequest,
    bytes: u64,
    line_bytes: u64,
    follow: bool,
    limit: Duration,
    interrupt: &CancellationToken,
) -> anyhow::Result<ThroughputReport> {
    let submitted = Submitted::new(client, request).await?;
    eprintln!(
        "kiln-loadtest: run {} writes {} MiB{}",
        submitted.run_id,
        bytes / (1024 * 1024),
        if follow { "; following its log" } else { "" }
    );
    let live = async {
        let mut tally = PayloadTally::new(payload_line(line_bytes));
        let mut first: Option<Instant> = None;
        let mut last = Instant::now();
        if follow {
            let mut stream = submitted.logs(true).await?;
            let mut next_progress = Instant::now() + Duration::from_secs(5);
            while let Some(chunk) = stream
                .message()
                .await
                .map_err(|status| anyhow!("the log stream failed: {}", status_line(&status)))?
            {
                let now = Instant::now();
                if !chunk.step_id.is_empty() {
                    first.get_or_insert(now);
                    last = now;
                }
                tally.chunk(&chunk.step_id, &chunk.data);
                if now >= next_progress {
                    eprintln!(
                        "kiln-loadtest: followed {:.0} MiB",
                        tally.bytes as f64 / MIB
                    );
                    next_progress = now + Duration::from_secs(5);
                }
            }
            tally.finish();
        }
        let run = submitted
            .ended(if follow {
                Duration::from_secs(10)
            } else {
                limit
            })
            .await?;
        let live_seconds = first.map_or(0.0, |first| (last - first).as_secs_f64());
        Ok((tally, live_seconds, run))
    };
    let (live, live_seconds, run) = match bounded(live, limit, interrupt).await {
        Ok(result) => result?,
        Err(stop) => {
            let error = stopped(&stop, &submitted.run_id);
            submitted.cancel().await;
            return Err(error);
        }
    };
    if !is_terminal(run.status()) {
        let error = anyhow!(
            "run {} did not end within --max-seconds: canceled it",
            submitted.run_id
        );
        submitted.cancel().await;
        return Err(error);
    }

    let read_start = Instant::now();
    let mut stored = PayloadTally::new(payload_line(line_bytes));
    let mut stream = submitted.logs(false).await?;
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|status| anyhow!("reading the stored log failed: {}", status_line(&status)))?
    {
        stored.chunk(&chunk.step_id, &chunk.data);
    }
    stored.finish();
    let stored_read_seconds = read_start.elapsed().as_secs_f64();

    let times = step_times(&run);
    let step_seconds = times.as_ref().map(|(_, s, f)| (f - s) as f64 / 1000.0);
    let step_mib_per_second = step_seconds.map(|seconds| mib_per_second(bytes, seconds));
    let run_seconds = (run.created_at_ms > 0 && run.finished_at_ms >= run.created_at_ms)
        .then(|| (run.finished_at_ms - run.created_at_ms) as f64 / 1000.0);
    let stored_complete = stored.payload_bytes() == bytes && stored.other_lines == 0;
    let goal_met = run.status() == RunStatus::Succeeded
        && stored_complete
        && step_mib_per_second.is_some_and(|rate| rate >= THROUGHPUT_GOAL_MIB_S);
    Ok(ThroughputReport {
        run_id: submitted.run_id.clone(),
        status: status_name(&run),
        reason: run.reason.clone(),
        payload_bytes: bytes,
        line_bytes,
        step_id: times.map(|(id, _, _)| id).unwrap_or_default(),
        step_seconds,
        step_mib_per_second,
        run_seconds,
        followed: follow,
        live_bytes: live.bytes,
        live_payload_bytes: live.payload_bytes(),
        live_seconds,
        live_mib_per_second: mib_per_second(live.bytes, live_seconds),
        live_lag_notices: live.lag_notices,
        stored_bytes: stored.bytes,
        stored_payload_bytes: stored.payload_bytes(),
        stored_other_lines: stored.other_lines,
        stored_segments: run.steps.first().map_or(0, |s| s.log_segments.len()),
        stored_read_seconds,
        stored_complete,
        goal_mib_per_second: THROUGHPUT_GOAL_MIB_S,
        goal_met,
    })
}

#[cfg(test)]
mod tests;

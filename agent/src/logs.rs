//! Per-step log capture: every byte a step produces is sent live to the coordinator as
//! `LogChunk`s and stored in the registry in segments while the step runs, with secret values
//! masked in both (the masking is streaming, so a value cut across writes is masked too; see
//! `mask`).
//!
//! Writers hand data to a small per-step task through a bounded queue. The task sends what has
//! arrived at once (batching only what is already queued, up to `LOG_CHUNK_BYTES`) and awaits
//! the bounded report channel, so a slow coordinator slows the container's log reader instead
//! of growing memory. The same task appends the masked bytes to a scratch file; whenever
//! `SEGMENT_BYTES` are pending or `SEGMENT_INTERVAL` has passed since the first pending byte,
//! it closes the file and uploads it as the step's next segment (one upload at a time, while
//! it keeps reading into a new file) and reports `LogStored`. A segment whose upload keeps
//! failing is kept and stored with everything after it as the step's last segment, when the
//! step ends; so is everything after the step's `MAX_LOG_SEGMENTS - 1`th segment. Uploaded
//! files are deleted.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use kiln_proto::v1::{LogChunk, LogStored};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::mask::Masker;
use crate::reports::{Report, ReportSender};

/// Largest `LogChunk` payload sent to the coordinator.
pub const LOG_CHUNK_BYTES: usize = 16 * 1024;
/// Pending (not yet stored) log bytes that make the step log store a segment.
pub const SEGMENT_BYTES: u64 = 1024 * 1024;
/// Longest time a log byte stays unstored while the step runs (when the registry answers).
pub const SEGMENT_INTERVAL: Duration = Duration::from_secs(2);
/// Most segments one step may store: the replicated state's limit.
pub const MAX_LOG_SEGMENTS: u32 = kiln_state::machine::MAX_LOG_SEGMENTS as u32;
/// Pauses between the attempts of one segment upload.
const UPLOAD_RETRY_DELAYS: [Duration; 2] = [Duration::from_millis(500), Duration::from_secs(2)];
/// Writes queued between a writer and the step's log task; a full queue makes the writer wait.
const STEP_LOG_QUEUE: usize = 64;
/// Most output kept for one attempt's `retryOnErrors` check (its last bytes are kept).
pub const CAPTURE_LIMIT: usize = 1024 * 1024;

/// The upload of one segment file: its digest and size, or why it failed.
pub type UploadResult = Result<(String, u64), String>;
type UploadFuture = Pin<Box<dyn Future<Output = UploadResult> + Send>>;

/// Where a step's log segments go: uploads a closed segment file as a blob (the runner makes
/// one from its `BlobStore`).
#[derive(Clone)]
pub struct LogStore {
    upload: Arc<dyn Fn(PathBuf) -> UploadFuture + Send + Sync>,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogStore")
    }
}

impl LogStore {
    pub fn new<F, Fut>(upload: F) -> LogStore
    where
        F: Fn(PathBuf) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = UploadResult> + Send + 'static,
    {
        LogStore {
            upload: Arc::new(move |path| Box::pin(upload(path))),
        }
    }

    /// Uploads `path`, retrying with backoff; the last error when every attempt failed.
    async fn upload_with_retries(&self, path: PathBuf) -> UploadResult {
        let mut attempt = 0;
        loop {
            match (self.upload)(path.clone()).await {
                Ok(stored) => return Ok(stored),
                Err(error) => match UPLOAD_RETRY_DELAYS.get(attempt) {
                    Some(delay) => {
                        tracing::debug!(%error, "log segment upload failed; retrying");
                        attempt += 1;
                        tokio::time::sleep(*delay).await;
                    }
                    None => return Err(error),
                },
            }
        }
    }
}

/// When a step log stores segments.
#[derive(Debug, Clone, Copy)]
struct Limits {
    segment_bytes: u64,
    interval: Duration,
    max_segments: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            segment_bytes: SEGMENT_BYTES,
            interval: SEGMENT_INTERVAL,
            max_segments: MAX_LOG_SEGMENTS,
        }
    }
}

/// What a finished step log stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLog {
    /// Every byte of the (masked) log.
    pub size: u64,
    /// Segments stored and reported (`LogStored` indexes `0..segments`).
    pub segments: u32,
    /// Why the end of the log could not be stored, if it could not.
    pub error: Option<String>,
}

/// The log of one running step.
#[derive(Debug)]
pub struct StepLog {
    tx: mpsc::Sender<bytes::Bytes>,
    task: JoinHandle<io::Result<StoredLog>>,
    /// Output kept since `start_capture`, unmasked, at most `CAPTURE_LIMIT` bytes.
    capture: Option<Vec<u8>>,
}

impl StepLog {
    /// Creates the step's scratch directory `dir` and starts the step's log task; everything
    /// written is masked with `masker` before it is stored (through `store`) or sent.
    pub async fn create(
        dir: &Path,
        run_id: &str,
        step_id: &str,
        reports: ReportSender,
        masker: Masker,
        store: LogStore,
    ) -> io::Result<StepLog> {
        StepLog::create_with(
            dir,
            run_id,
            step_id,
            reports,
            masker,
            store,
            Limits::default(),
        )
        .await
    }

    async fn create_with(
        dir: &Path,
        run_id: &str,
        step_id: &str,
        reports: ReportSender,
        masker: Masker,
        store: LogStore,
        limits: Limits,
    ) -> io::Result<StepLog> {
        tokio::fs::create_dir_all(dir).await?;
        let mut segments = Segments {
            dir: dir.to_path_buf(),
            store,
            limits,
            reports: reports.clone(),
            run_id: run_id.to_string(),
            step_id: step_id.to_string(),
            files: 0,
            current: None,
            index: 0,
            stored: 0,
            total: 0,
            cutting: true,
        };
        segments.open().await?;
        let (tx, rx) = mpsc::channel(STEP_LOG_QUEUE);
        let live = Live {
            reports,
            run_id: run_id.to_string(),
            step_id: step_id.to_string(),
        };
        let task = tokio::spawn(pump(rx, segments, live, masker));
        Ok(StepLog {
            tx,
            task,
            capture: None,
        })
    }

    /// Starts keeping a copy of what is written (for `retryOnErrors`), dropping an earlier one.
    pub fn start_capture(&mut self) {
        self.capture = Some(Vec::new());
    }

    /// Stops keeping a copy and returns what was written since `start_capture` (its last
    /// `CAPTURE_LIMIT` bytes).
    pub fn take_capture(&mut self) -> Vec<u8> {
        self.capture.take().unwrap_or_default()
    }

    /// Appends raw output.
    pub async fn write(&mut self, data: impl Into<bytes::Bytes>) {
        let data = data.into();
        if data.is_empty() {
            return;
        }
        if let Some(capture) = &mut self.capture {
            capture.extend_from_slice(&data);
            if capture.len() > CAPTURE_LIMIT {
                let excess = capture.len() - CAPTURE_LIMIT;
                capture.drain(..excess);
            }
        }
        // The task only stops early after a file error, which `finish` reports.
        let _ = self.tx.send(data).await;
    }

    /// Appends one line of agent text (a newline is added).
    pub async fn line(&mut self, text: &str) {
        let mut line = String::with_capacity(text.len() + 1);
        line.push_str(text);
        line.push('\n');
        self.write(line).await;
    }

    /// Sends and stores everything (waiting for the uploads) and says what was stored.
    pub async fn finish(self) -> io::Result<StoredLog> {
        drop(self.tx);
        match self.task.await {
            Ok(result) => result,
            Err(join_error) => Err(io::Error::other(join_error.to_string())),
        }
    }
}

/// The live half: `LogChunk`s.
struct Live {
    reports: ReportSender,
    run_id: String,
    step_id: String,
}

impl Live {
    /// Sends `data`, which starts at byte `offset` of the step's log.
    async fn send(&self, data: &[u8], mut offset: u64) {
        for chunk in data.chunks(LOG_CHUNK_BYTES) {
            self.reports
                .send(Report::Log(LogChunk {
                    run_id: self.run_id.clone(),
                    step_id: self.step_id.clone(),
                    data: chunk.to_vec(),
                    offset: Some(offset),
                }))
                .await;
            offset += chunk.len() as u64;
        }
    }
}

/// The scratch file holding the bytes not stored yet.
struct Current {
    path: PathBuf,
    file: tokio::io::BufWriter<tokio::fs::File>,
    size: u64,
    /// When its first byte arrived.
    first_at: Option<Instant>,
}

/// A closed segment file being uploaded.
struct Upload {
    path: PathBuf,
    size: u64,
    future: Pin<Box<dyn Future<Output = UploadResult> + Send>>,
}

/// The stored half: segment files and their uploads.
struct Segments {
    dir: PathBuf,
    store: LogStore,
    limits: Limits,
    reports: ReportSender,
    run_id: String,
    step_id: String,
    /// Scratch files made so far (names them).
    files: u64,
    current: Option<Current>,
    /// The index of the next stored segment.
    index: u32,
    /// Bytes in the segments stored so far: where the next one starts.
    stored: u64,
    /// Every byte written.
    total: u64,
    /// Whether segments are still stored while the step runs (false after an upload failed
    /// for good, or once only the last segment is left).
    cutting: bool,
}

impl Segments {
    async fn open(&mut self) -> io::Result<()> {
        let path = self.dir.join(format!("{}.log", self.files));
        self.files += 1;
        let file = tokio::fs::File::create(&path).await?;
        self.current = Some(Current {
            path,
            file: tokio::io::BufWriter::new(file),
            size: 0,
            first_at: None,
        });
        Ok(())
    }

    fn current(&mut self) -> io::Result<&mut Current> {
        self.current
            .as_mut()
            .ok_or_else(|| io::Error::other("the step log has no scratch file"))
    }

    async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let current = self.current()?;
        current.file.write_all(data).await?;
        current.size += data.len() as u64;
        current.first_at.get_or_insert_with(Instant::now);
        self.total += data.len() as u64;
        Ok(())
    }

    /// Whether another segment may be stored before the last one.
    fn may_cut(&self) -> bool {
        self.cutting && self.index.saturating_add(1) < self.limits.max_segments
    }

    /// Whether enough bytes are pending to store them at once.
    fn full(&self) -> bool {
        self.may_cut()
            && self
                .current
                .as_ref()
                .is_some_and(|c| c.size >= self.limits.segment_bytes)
    }

    /// When the pending bytes are due to be stored (`None`: not while the step runs).
    fn due(&self) -> Option<Instant> {
        let current = self.current.as_ref()?;
        if !self.may_cut() || current.size == 0 {
            return None;
        }
        let first = current.first_at?;
        if current.size >= self.limits.segment_bytes {
            Some(first)
        } else {
            Some(first + self.limits.interval)
        }
    }

    /// Closes the scratch file, starts its upload and opens the next one.
    async fn cut(&mut self) -> io::Result<Upload> {
        let Some(mut current) = self.current.take() else {
            return Err(io::Error::other("the step log has no scratch file"));
        };
        current.file.flush().await?;
        drop(current.file);
        self.open().await?;
        let store = self.store.clone();
        let path = current.path.clone();
        Ok(Upload {
            path: current.path,
            size: current.size,
            future: Box::pin(async move { store.upload_with_retries(path).await }),
        })
    }

    /// Handles the end of an upload: reports a stored segment, or keeps a failed one's bytes
    /// ahead of the pending ones for the last segment.
    async fn uploaded(&mut self, upload: Upload, result: UploadResult) -> io::Result<()> {
        match result {
            Ok((digest, size)) => {
                if size != upload.size {
                    tracing::warn!(
                        run_id = self.run_id,
                        expected = upload.size,
                        size,
                        "log segment size differs from what was written"
                    );
                }
                self.report(digest, size).await;
                remove_file(&upload.path).await;
                Ok(())
            }
            Err(error) => {
                tracing::warn!(
                    run_id = self.run_id,
                    step = self.step_id,
                    %error,
                    "cannot store a log segment; keeping it for the end of the step"
                );
                self.cutting = false;
                self.prepend(upload.path, upload.size).await
            }
        }
    }

    async fn report(&mut self, digest: String, size: u64) {
        self.reports
            .send(Report::LogStored(LogStored {
                run_id: self.run_id.clone(),
                step_id: self.step_id.clone(),
                epoch: 0,
                index: self.index,
                digest,
                size,
                offset: self.stored,
            }))
            .await;
        self.index += 1;
        self.stored += size;
    }

    /// Makes the file at `path` (`size` bytes, older than the scratch file) the scratch file,
    /// followed by the scratch file's bytes.
    async fn prepend(&mut self, path: PathBuf, size: u64) -> io::Result<()> {
        let Some(mut current) = self.current.take() else {
            return Err(io::Error::other("the step log has no scratch file"));
        };
        current.file.flush().await?;
        drop(current.file);
        let mut older = tokio::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .await?;
        let mut newer = tokio::fs::File::open(&current.path).await?;
        tokio::io::copy(&mut newer, &mut older).await?;
        drop(newer);
        remove_file(&current.path).await;
        self.current = Some(Current {
            path,
            file: tokio::io::BufWriter::new(older),
            size: size + current.size,
            first_at: current.first_at,
        });
        Ok(())
    }

    /// Stores the pending bytes as the last segment.
    async fn finish(mut self) -> io::Result<StoredLog> {
        let Some(mut current) = self.current.take() else {
            return Err(io::Error::other("the step log has no scratch file"));
        };
        current.file.flush().await?;
        drop(current.file);
        let mut error = None;
        if current.size > 0 {
            match self.store.upload_with_retries(current.path.clone()).await {
                Ok((digest, size)) => self.report(digest, size).await,
                Err(e) => {
                    tracing::warn!(run_id = self.run_id, step = self.step_id, error = %e, "cannot store the step log");
                    error = Some(format!(
                        "the log could not be stored ({} of {} bytes lost): {e}",
                        current.size, self.total
                    ));
                }
            }
        }
        remove_file(&current.path).await;
        Ok(StoredLog {
            size: self.total,
            segments: self.index,
            error,
        })
    }
}

async fn remove_file(path: &Path) {
    if let Err(error) = tokio::fs::remove_file(path).await {
        if error.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), %error, "cannot remove a log scratch file");
        }
    }
}

async fn upload_done(upload: &mut Option<Upload>) -> UploadResult {
    match upload {
        Some(upload) => upload.future.as_mut().await,
        None => std::future::pending().await,
    }
}

async fn pump(
    mut rx: mpsc::Receiver<bytes::Bytes>,
    mut segments: Segments,
    live: Live,
    masker: Masker,
) -> io::Result<StoredLog> {
    let mut masking = masker.stream();
    let mut upload: Option<Upload> = None;
    loop {
        let due = if upload.is_none() {
            segments.due()
        } else {
            None
        };
        tokio::select! {
            data = rx.recv() => {
                let Some(data) = data else { break };
                // Send at once, with whatever else has already arrived.
                let mut batch = masking.push(&data);
                while batch.len() < LOG_CHUNK_BYTES {
                    match rx.try_recv() {
                        Ok(more) => batch.extend(masking.push(&more)),
                        Err(_) => break,
                    }
                }
                let offset = segments.total;
                segments.write(&batch).await?;
                if upload.is_none() && segments.full() {
                    upload = Some(segments.cut().await?);
                }
                live.send(&batch, offset).await;
            }
            result = upload_done(&mut upload) => {
                if let Some(done) = upload.take() {
                    segments.uploaded(done, result).await?;
                }
                if segments.full() {
                    upload = Some(segments.cut().await?);
                }
            }
            _ = sleep_until(due), if due.is_some() => {
                upload = Some(segments.cut().await?);
            }
        }
    }
    let tail = masking.finish();
    let offset = segments.total;
    segments.write(&tail).await?;
    live.send(&tail, offset).await;
    if let Some(mut done) = upload.take() {
        let result = done.future.as_mut().await;
        segments.uploaded(done, result).await?;
    }
    segments.finish().await
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::sync::{watch, Semaphore};

    use super::*;
    use crate::reports::{report_channel, ReportReceiver};

    /// A scripted segment store: records what it stored, fails the first `failures` attempts,
    /// waits for a permit of `gate` when given.
    struct FakeStore {
        stored: Mutex<Vec<Vec<u8>>>,
        failures: Mutex<usize>,
        gate: Option<Arc<Semaphore>>,
        attempts: watch::Sender<usize>,
    }

    impl FakeStore {
        fn new(failures: usize, gate: Option<Arc<Semaphore>>) -> Arc<FakeStore> {
            Arc::new(FakeStore {
                stored: Mutex::new(Vec::new()),
                failures: Mutex::new(failures),
                gate,
                attempts: watch::channel(0).0,
            })
        }

        fn store(self: &Arc<Self>) -> LogStore {
            let fake = Arc::clone(self);
            LogStore::new(move |path: PathBuf| {
                let fake = Arc::clone(&fake);
                async move {
                    if let Some(gate) = &fake.gate {
                        let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
                    }
                    fake.attempts.send_modify(|n| *n += 1);
                    let bytes = tokio::fs::read(&path).await.map_err(|e| e.to_string())?;
                    {
                        let mut failures = fake.failures.lock().expect("lock");
                        if *failures > 0 {
                            *failures -= 1;
                            return Err("registry unreachable".to_string());
                        }
                    }
                    let digest = kiln_registry::sha256_digest(&bytes);
                    let size = bytes.len() as u64;
                    fake.stored.lock().expect("lock").push(bytes);
                    Ok((digest, size))
                }
            })
        }

        fn stored(&self) -> Vec<Vec<u8>> {
            self.stored.lock().expect("lock").clone()
        }
    }

    struct Seen {
        live: Vec<Vec<u8>>,
        stored: Vec<LogStored>,
    }

    fn drain(rx: &mut ReportReceiver) -> Seen {
        let mut seen = Seen {
            live: Vec::new(),
            stored: Vec::new(),
        };
        while let Ok(report) = rx.try_recv() {
            match report {
                Report::Log(chunk) => seen.live.push(chunk.data),
                Report::LogStored(stored) => seen.stored.push(stored),
                other => panic!("unexpected report {other:?}"),
            }
        }
        seen
    }

    /// Waits for the next live chunk (reports in between are returned too).
    async fn next_chunk(rx: &mut ReportReceiver) -> (Vec<u8>, Vec<LogStored>) {
        let mut stored = Vec::new();
        loop {
            match rx.recv().await.expect("report") {
                Report::Log(chunk) => return (chunk.data, stored),
                Report::LogStored(s) => stored.push(s),
                other => panic!("unexpected report {other:?}"),
            }
        }
    }

    async fn next_stored(rx: &mut ReportReceiver) -> LogStored {
        loop {
            match rx.recv().await.expect("report") {
                Report::LogStored(s) => return s,
                Report::Log(_) => {}
                other => panic!("unexpected report {other:?}"),
            }
        }
    }

    fn limits(segment_bytes: u64, max_segments: u32) -> Limits {
        Limits {
            segment_bytes,
            interval: Duration::from_secs(3600),
            max_segments,
        }
    }

    async fn step_log(
        dir: &Path,
        tx: ReportSender,
        masker: Masker,
        store: LogStore,
        limits: Limits,
    ) -> StepLog {
        StepLog::create_with(dir, "r1", "s1", tx, masker, store, limits)
            .await
            .expect("create")
    }

    fn files_in(dir: &Path) -> usize {
        std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
    }

    #[tokio::test]
    async fn queued_writes_go_out_together_and_the_log_is_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, mut rx) = report_channel(256);
        let fake = FakeStore::new(0, None);
        let mut log = StepLog::create(dir.path(), "r1", "s1", tx, Masker::default(), fake.store())
            .await
            .expect("create");
        for i in 0..50 {
            log.write(format!("line {i}\n")).await;
        }
        let stored = log.finish().await.expect("finish");
        let seen = drain(&mut rx);
        assert!(seen.live.len() <= 2, "queued writes were sent one by one");
        let live: Vec<u8> = seen.live.concat();
        assert_eq!(String::from_utf8_lossy(&live).lines().count(), 50);
        assert_eq!(fake.stored(), vec![live.clone()]);
        assert_eq!(seen.stored.len(), 1);
        let segment = &seen.stored[0];
        assert_eq!((segment.index, segment.size), (0, live.len() as u64));
        assert_eq!(segment.digest, kiln_registry::sha256_digest(&live));
        assert_eq!(
            (segment.run_id.as_str(), segment.step_id.as_str()),
            ("r1", "s1")
        );
        assert_eq!(
            stored,
            StoredLog {
                size: live.len() as u64,
                segments: 1,
                error: None
            }
        );
        assert_eq!(files_in(dir.path()), 0, "scratch files left behind");
    }

    #[tokio::test]
    async fn large_writes_are_split_into_bounded_chunks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, mut rx) = report_channel(64);
        let fake = FakeStore::new(0, None);
        let mut log = step_log(
            dir.path(),
            tx,
            Masker::default(),
            fake.store(),
            Limits::default(),
        )
        .await;
        log.write(vec![b'x'; LOG_CHUNK_BYTES * 3 + 5]).await;
        log.finish().await.expect("finish");
        let sizes: Vec<usize> = drain(&mut rx).live.iter().map(Vec::len).collect();
        assert_eq!(
            sizes,
            vec![LOG_CHUNK_BYTES, LOG_CHUNK_BYTES, LOG_CHUNK_BYTES, 5]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn live_chunks_go_out_without_waiting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, mut rx) = report_channel(64);
        let fake = FakeStore::new(0, None);
        let mut log = step_log(
            dir.path(),
            tx,
            Masker::default(),
            fake.store(),
            Limits::default(),
        )
        .await;
        let start = Instant::now();
        log.write("ready\n").await;
        let (chunk, _) = next_chunk(&mut rx).await;
        assert_eq!(chunk, b"ready\n");
        // With the clock paused, any timer before the send would show here.
        assert!(
            start.elapsed() < Duration::from_millis(1),
            "{:?}",
            start.elapsed()
        );
        log.finish().await.expect("finish");
    }

    #[tokio::test]
    async fn segments_are_stored_while_the_step_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, mut rx) = report_channel(256);
        let fake = FakeStore::new(0, None);
        let mut log = step_log(
            dir.path(),
            tx,
            Masker::default(),
            fake.store(),
            limits(1000, 100),
        )
        .await;
        let mut written = Vec::new();
        let mut stored = Vec::new();
        for i in 0..10u8 {
            let data = vec![b'a' + i; 600];
            written.extend_from_slice(&data);
            log.write(data).await;
            let (_, before) = next_chunk(&mut rx).await;
            stored.extend(before);
            if i % 2 == 1 && stored.len() < usize::from(i / 2 + 1) {
                // 1200 bytes are pending: they are stored while the step runs.
                stored.push(next_stored(&mut rx).await);
            }
        }
        let end = log.finish().await.expect("finish");
        stored.extend(drain(&mut rx).stored);
        let indexes: Vec<u32> = stored.iter().map(|s| s.index).collect();
        assert_eq!(indexes, vec![0, 1, 2, 3, 4]);
        assert!(stored.iter().all(|s| s.size == 1200));
        let blobs = fake.stored();
        assert_eq!(blobs.concat(), written, "bytes lost or reordered");
        assert_eq!(end.segments, 5);
        assert_eq!(end.size, written.len() as u64);
        assert_eq!(files_in(dir.path()), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn pending_bytes_are_stored_after_the_interval() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, mut rx) = report_channel(64);
        let fake = FakeStore::new(0, None);
        let mut log = step_log(
            dir.path(),
            tx,
            Masker::default(),
            fake.store(),
            Limits::default(),
        )
        .await;
        let start = Instant::now();
        log.write("one line\n").await;
        let segment = next_stored(&mut rx).await;
        assert!(start.elapsed() >= SEGMENT_INTERVAL);
        assert!(start.elapsed() < SEGMENT_INTERVAL + Duration::from_millis(100));
        assert_eq!((segment.index, segment.size), (0, 9));
        let end = log.finish().await.expect("finish");
        assert_eq!(end.segments, 1, "an empty last segment was stored");
        assert_eq!(fake.stored(), vec![b"one line\n".to_vec()]);
    }

    #[tokio::test]
    async fn a_slow_registry_does_not_hold_back_live_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, mut rx) = report_channel(256);
        let gate = Arc::new(Semaphore::new(0));
        let fake = FakeStore::new(0, Some(Arc::clone(&gate)));
        let mut log = step_log(
            dir.path(),
            tx,
            Masker::default(),
            fake.store(),
            limits(100, 100),
        )
        .await;
        log.write(vec![b'x'; 200]).await;
        next_chunk(&mut rx).await;
        for i in 0..20 {
            log.line(&format!("after {i}")).await;
            let (chunk, stored) = next_chunk(&mut rx).await;
            assert_eq!(chunk, format!("after {i}\n").into_bytes());
            assert!(stored.is_empty());
        }
        assert!(fake.stored().is_empty());
        gate.add_permits(100);
        let end = log.finish().await.expect("finish");
        assert_eq!(fake.stored().concat().len() as u64, end.size);
        assert_eq!(end.segments, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_segment_that_cannot_be_stored_goes_into_the_last_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, mut rx) = report_channel(256);
        // Every attempt of the first segment fails.
        let fake = FakeStore::new(1 + UPLOAD_RETRY_DELAYS.len(), None);
        let mut log = step_log(
            dir.path(),
            tx,
            Masker::default(),
            fake.store(),
            limits(100, 100),
        )
        .await;
        log.write(vec![b'a'; 150]).await;
        next_chunk(&mut rx).await;
        let mut attempts = fake.attempts.subscribe();
        attempts
            .wait_for(|n| *n > UPLOAD_RETRY_DELAYS.len())
            .await
            .expect("attempts");
        log.write(vec![b'b'; 150]).await;
        next_chunk(&mut rx).await;
        log.write(vec![b'c'; 10]).await;
        let end = log.finish().await.expect("finish");
        let seen = drain(&mut rx);
        let mut expected = vec![b'a'; 150];
        expected.extend(vec![b'b'; 150]);
        expected.extend(vec![b'c'; 10]);
        assert_eq!(fake.stored(), vec![expected]);
        assert_eq!(seen.stored.len(), 1);
        assert_eq!((seen.stored[0].index, seen.stored[0].size), (0, 310));
        assert_eq!(end.error, None);
        assert_eq!(files_in(dir.path()), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_last_segment_that_cannot_be_stored_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, mut rx) = report_channel(64);
        let fake = FakeStore::new(usize::MAX, None);
        let mut log = step_log(
            dir.path(),
            tx,
            Masker::default(),
            fake.store(),
            Limits::default(),
        )
        .await;
        log.write("lost\n").await;
        let end = log.finish().await.expect("finish");
        assert!(drain(&mut rx).stored.is_empty());
        assert_eq!(end.segments, 0);
        assert_eq!(end.size, 5);
        let error = end.error.expect("an error");
        assert!(error.contains("could not be stored"), "{error}");
        assert!(error.contains("registry unreachable"), "{error}");
    }

    #[tokio::test]
    async fn the_rest_of_a_long_log_is_the_last_segment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, mut rx) = report_channel(256);
        let fake = FakeStore::new(0, None);
        let mut log = step_log(
            dir.path(),
            tx,
            Masker::default(),
            fake.store(),
            limits(10, 3),
        )
        .await;
        for i in 0..2u8 {
            log.write(vec![b'0' + i; 20]).await;
            assert_eq!(next_stored(&mut rx).await.index, u32::from(i));
        }
        for i in 2..5u8 {
            log.write(vec![b'0' + i; 20]).await;
            let (_, stored) = next_chunk(&mut rx).await;
            assert!(stored.is_empty(), "a segment beyond the limit: {stored:?}");
        }
        let end = log.finish().await.expect("finish");
        let last = drain(&mut rx).stored;
        assert_eq!(last.len(), 1);
        assert_eq!((last[0].index, last[0].size), (2, 60));
        assert_eq!(end.segments, 3);
        assert_eq!(fake.stored().concat().len(), 100);
    }

    #[tokio::test]
    async fn secrets_cut_across_writes_are_masked_in_the_stored_log_and_the_chunks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, mut rx) = report_channel(64);
        let masker = Masker::new(["hunter2-secret"]);
        let fake = FakeStore::new(0, None);
        let mut log = step_log(dir.path(), tx, masker, fake.store(), Limits::default()).await;
        log.write("token: hunt").await;
        log.write("er2-sec").await;
        log.write("ret\nagain hunter2-secret").await;
        // A prefix left at the very end is released unmasked when the log ends.
        log.write(" and hunter2").await;
        let end = log.finish().await.expect("finish");
        let text = "token: ***\nagain *** and hunter2";
        assert_eq!(fake.stored().concat(), text.as_bytes());
        assert_eq!(end.size, text.len() as u64);
        assert_eq!(drain(&mut rx).live.concat(), text.as_bytes());
    }

    #[tokio::test]
    async fn captures_keep_the_last_bytes_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, _rx) = report_channel(256);
        let fake = FakeStore::new(0, None);
        let mut log = step_log(
            dir.path(),
            tx,
            Masker::default(),
            fake.store(),
            Limits::default(),
        )
        .await;
        log.write("before\n").await;
        log.start_capture();
        log.write(vec![b'x'; CAPTURE_LIMIT]).await;
        log.write("connection reset").await;
        let captured = log.take_capture();
        assert_eq!(captured.len(), CAPTURE_LIMIT);
        assert!(captured.ends_with(b"connection reset"));
        assert!(log.take_capture().is_empty());
        log.finish().await.expect("finish");
    }
}

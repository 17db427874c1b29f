//! Per-step log capture: every byte a step produces is appended to the step's log file and
//! sent live to the coordinator as `LogChunk`s, with secret values masked in both (the masking
//! is streaming, so a value cut across writes is masked too; see `mask`).
//!
//! Writers hand data to a small per-step task through a bounded queue. The task batches small
//! writes into chunks of up to `LOG_CHUNK_BYTES` (sent at the latest `LOG_FLUSH_INTERVAL` after
//! the first unsent byte) and awaits the bounded report channel, so a slow coordinator slows
//! the container's log reader instead of growing memory.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kiln_proto::v1::LogChunk;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::mask::Masker;
use crate::reports::{Report, ReportSender};

/// Largest `LogChunk` payload sent to the coordinator.
pub const LOG_CHUNK_BYTES: usize = 16 * 1024;
/// How long a partial chunk may wait for more data before it is sent anyway.
pub const LOG_FLUSH_INTERVAL: Duration = Duration::from_millis(200);
/// Writes queued between a writer and the step's log task; a full queue makes the writer wait.
const STEP_LOG_QUEUE: usize = 64;
/// Most output kept for one attempt's `retryOnErrors` check (its last bytes are kept).
pub const CAPTURE_LIMIT: usize = 1024 * 1024;

/// The complete log of a finished step, on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFile {
    pub path: PathBuf,
    pub size: u64,
}

/// The log of one running step.
#[derive(Debug)]
pub struct StepLog {
    tx: mpsc::Sender<Bytes>,
    task: JoinHandle<io::Result<LogFile>>,
    /// Output kept since `start_capture`, unmasked, at most `CAPTURE_LIMIT` bytes.
    capture: Option<Vec<u8>>,
}

impl StepLog {
    /// Creates (truncates) the log file at `path` and starts the step's log task; everything
    /// written is masked with `masker` before it is stored or sent.
    pub async fn create(
        path: &Path,
        run_id: &str,
        step_id: &str,
        reports: ReportSender,
        masker: Masker,
    ) -> io::Result<StepLog> {
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let file = tokio::fs::File::create(path).await?;
        let (tx, rx) = mpsc::channel(STEP_LOG_QUEUE);
        let task = tokio::spawn(pump(
            rx,
            file,
            path.to_path_buf(),
            run_id.to_string(),
            step_id.to_string(),
            reports,
            masker,
        ));
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
    pub async fn write(&mut self, data: impl Into<Bytes>) {
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

    /// Flushes everything, closes the file and returns it.
    pub async fn finish(self) -> io::Result<LogFile> {
        drop(self.tx);
        match self.task.await {
            Ok(result) => result,
            Err(join_error) => Err(io::Error::other(join_error.to_string())),
        }
    }
}

async fn pump(
    mut rx: mpsc::Receiver<Bytes>,
    file: tokio::fs::File,
    path: PathBuf,
    run_id: String,
    step_id: String,
    reports: ReportSender,
    masker: Masker,
) -> io::Result<LogFile> {
    let mut file = tokio::io::BufWriter::new(file);
    let mut masking = masker.stream();
    let mut pending = BytesMut::new();
    let mut size: u64 = 0;
    let mut flush_at: Option<tokio::time::Instant> = None;
    let send = |pending: &mut BytesMut| {
        let data = pending.split().freeze().to_vec();
        Report::Log(LogChunk {
            run_id: run_id.clone(),
            step_id: step_id.clone(),
            data,
        })
    };
    loop {
        let deadline = flush_at;
        tokio::select! {
            data = rx.recv() => {
                let Some(data) = data else { break };
                let data = masking.push(&data);
                file.write_all(&data).await?;
                size += data.len() as u64;
                let mut rest = &data[..];
                while !rest.is_empty() {
                    let room = LOG_CHUNK_BYTES - pending.len();
                    let take = room.min(rest.len());
                    pending.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if pending.len() >= LOG_CHUNK_BYTES {
                        reports.send(send(&mut pending)).await;
                        flush_at = None;
                    }
                }
                if !pending.is_empty() && flush_at.is_none() {
                    flush_at = Some(tokio::time::Instant::now() + LOG_FLUSH_INTERVAL);
                }
            }
            _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await }, if deadline.is_some() => {
                reports.send(send(&mut pending)).await;
                flush_at = None;
            }
        }
    }
    let tail = masking.finish();
    file.write_all(&tail).await?;
    size += tail.len() as u64;
    pending.extend_from_slice(&tail);
    while !pending.is_empty() {
        let rest = pending.split_off(pending.len().min(LOG_CHUNK_BYTES));
        reports.send(send(&mut pending)).await;
        pending = rest;
    }
    file.flush().await?;
    Ok(LogFile { path, size })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reports::report_channel;

    #[tokio::test]
    async fn batches_small_writes_and_keeps_the_whole_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, mut rx) = report_channel(16);
        let mut log = StepLog::create(&dir.path().join("s.log"), "r1", "s1", tx, Masker::default())
            .await
            .expect("create");
        for i in 0..100 {
            log.write(format!("line {i}\n")).await;
        }
        let file = log.finish().await.expect("finish");
        let text = std::fs::read_to_string(&file.path).expect("read");
        assert_eq!(text.lines().count(), 100);
        assert_eq!(file.size, text.len() as u64);
        let mut chunks = Vec::new();
        while let Ok(report) = rx.try_recv() {
            match report {
                Report::Log(chunk) => chunks.push(chunk),
                other => panic!("unexpected report {other:?}"),
            }
        }
        assert!(
            chunks.len() < 10,
            "small writes were not batched: {}",
            chunks.len()
        );
        let all: Vec<u8> = chunks.iter().flat_map(|c| c.data.clone()).collect();
        assert_eq!(all, text.as_bytes());
        assert!(chunks.iter().all(|c| c.run_id == "r1" && c.step_id == "s1"));
    }

    #[tokio::test]
    async fn large_writes_are_split_into_bounded_chunks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, mut rx) = report_channel(64);
        let mut log = StepLog::create(&dir.path().join("s.log"), "r1", "s1", tx, Masker::default())
            .await
            .expect("create");
        log.write(vec![b'x'; LOG_CHUNK_BYTES * 3 + 5]).await;
        log.finish().await.expect("finish");
        let mut sizes = Vec::new();
        while let Ok(Report::Log(chunk)) = rx.try_recv() {
            sizes.push(chunk.data.len());
        }
        assert_eq!(
            sizes,
            vec![LOG_CHUNK_BYTES, LOG_CHUNK_BYTES, LOG_CHUNK_BYTES, 5]
        );
    }

    #[tokio::test]
    async fn secrets_cut_across_writes_are_masked_in_the_file_and_the_chunks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, mut rx) = report_channel(64);
        let masker = Masker::new(["hunter2-secret"]);
        let mut log = StepLog::create(&dir.path().join("s.log"), "r1", "s1", tx, masker)
            .await
            .expect("create");
        log.write("token: hunt").await;
        log.write("er2-sec").await;
        log.write("ret\nagain hunter2-secret").await;
        // A prefix left at the very end is released unmasked when the log ends.
        log.write(" and hunter2").await;
        let file = log.finish().await.expect("finish");
        let text = std::fs::read_to_string(&file.path).expect("read");
        assert_eq!(text, "token: ***\nagain *** and hunter2");
        assert_eq!(file.size, text.len() as u64);
        let mut streamed = Vec::new();
        while let Ok(Report::Log(chunk)) = rx.try_recv() {
            streamed.extend(chunk.data);
        }
        assert_eq!(streamed, text.as_bytes());
    }

    #[tokio::test]
    async fn captures_keep_the_last_bytes_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, _rx) = report_channel(256);
        let mut log = StepLog::create(&dir.path().join("s.log"), "r1", "s1", tx, Masker::default())
            .await
            .expect("create");
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

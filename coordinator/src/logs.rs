//! Live run logs: agents' chunks fan out to every `kiln logs --follow` through bounded buffers.
//!
//! Logs never go through Raft. While a run is active its recent output is kept here (at most
//! [`MAX_BUFFERED_BYTES`] per run); each step's complete log is stored by the agent as a blob in
//! the registry and its digest is replicated, which is what `kiln logs` reads once a step has
//! ended, also after a coordinator restart.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::broadcast;

use kiln_proto::v1::LogChunk;

/// Output of one active run kept for followers that join late. Older chunks are dropped first
/// (counted, and announced to followers) once the bound is reached.
pub const MAX_BUFFERED_BYTES: usize = 8 * 1024 * 1024;
/// Chunks a slow follower may fall behind before it is told it lagged.
const FOLLOWER_BACKLOG: usize = 1024;

struct RunLog {
    chunks: VecDeque<LogChunk>,
    bytes: usize,
    /// Whether the buffer holds the run's output from its start (false after a coordinator
    /// restart or when chunks were dropped).
    complete: bool,
    /// Made when the first follower joins: most runs are never followed, and a channel of
    /// `FOLLOWER_BACKLOG` slots per run was a measurable part of the leader's work.
    live: Option<broadcast::Sender<LogChunk>>,
}

/// What a follower gets when it joins: the buffered output, and the live stream after it.
pub struct Subscription {
    pub buffered: Vec<LogChunk>,
    pub complete: bool,
    pub live: broadcast::Receiver<LogChunk>,
}

#[derive(Default)]
pub struct LogHub {
    runs: Mutex<HashMap<String, RunLog>>,
}

impl LogHub {
    /// Starts the buffer of a run that was just handed to an agent: it will be complete.
    pub fn open(&self, run_id: &str) {
        lock(&self.runs)
            .entry(run_id.to_string())
            .or_insert_with(|| RunLog::new(true));
    }

    pub fn append(&self, chunk: LogChunk) {
        let mut runs = lock(&self.runs);
        let log = runs
            .entry(chunk.run_id.clone())
            .or_insert_with(|| RunLog::new(false));
        log.bytes += chunk.data.len();
        log.chunks.push_back(chunk.clone());
        while log.bytes > MAX_BUFFERED_BYTES {
            let Some(old) = log.chunks.pop_front() else {
                break;
            };
            log.bytes -= old.data.len();
            log.complete = false;
        }
        if let Some(live) = &log.live {
            // No follower left is not an error.
            let _ = live.send(chunk);
        }
    }

    /// Joins a run's log; for a run that has no buffer yet, one is started (not complete).
    pub fn subscribe(&self, run_id: &str) -> Subscription {
        let mut runs = lock(&self.runs);
        let log = runs
            .entry(run_id.to_string())
            .or_insert_with(|| RunLog::new(false));
        let live = log
            .live
            .get_or_insert_with(|| broadcast::channel(FOLLOWER_BACKLOG).0)
            .subscribe();
        Subscription {
            buffered: log.chunks.iter().cloned().collect(),
            complete: log.complete,
            live,
        }
    }

    /// Ends a finished run's live log: followers get what is left and then the end of stream.
    pub fn close(&self, run_id: &str) {
        lock(&self.runs).remove(run_id);
    }

    pub fn open_runs(&self) -> Vec<String> {
        lock(&self.runs).keys().cloned().collect()
    }
}

impl RunLog {
    fn new(complete: bool) -> Self {
        Self {
            chunks: VecDeque::new(),
            bytes: 0,
            complete,
            live: None,
        }
    }
}

/// What one log stream has sent of each step: the end of the contiguous bytes from the step's
/// start. A stream puts a step's stored segments and the live chunks of the same bytes
/// together (a new leader's buffer starts where the agent's unacknowledged output starts,
/// which overlaps what is stored), so each chunk is cut to what was not sent yet.
#[derive(Debug, Default)]
pub struct Cursor {
    sent: HashMap<String, u64>,
}

impl Cursor {
    /// Where the step's unsent bytes start.
    pub fn sent(&self, step_id: &str) -> u64 {
        self.sent.get(step_id).copied().unwrap_or(0)
    }

    /// The part of `chunk` not sent yet, or `None` when it was all sent. Chunks without an
    /// offset (notices, and the output of agents older than offsets) pass as they are. A
    /// chunk past a gap passes too: the client says what is missing.
    pub fn admit(&mut self, mut chunk: LogChunk) -> Option<LogChunk> {
        let Some(offset) = chunk.offset else {
            return Some(chunk);
        };
        let end = offset + chunk.data.len() as u64;
        let sent = self.sent.entry(chunk.step_id.clone()).or_default();
        if end <= *sent {
            return None;
        }
        if offset < *sent {
            let skip = (*sent - offset) as usize;
            chunk.data.drain(..skip);
            chunk.offset = Some(*sent);
        }
        *sent = end;
        Some(chunk)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(run: &str, data: &[u8]) -> LogChunk {
        LogChunk {
            run_id: run.into(),
            step_id: "s".into(),
            data: data.to_vec(),
            offset: None,
        }
    }

    fn at(step: &str, offset: u64, data: &[u8]) -> LogChunk {
        LogChunk {
            run_id: "ca1".into(),
            step_id: step.into(),
            data: data.to_vec(),
            offset: Some(offset),
        }
    }

    #[test]
    fn a_cursor_sends_each_byte_of_a_step_once() {
        let mut cursor = Cursor::default();
        let mut out = Vec::new();
        let mut feed = |cursor: &mut Cursor, chunk: LogChunk| {
            if let Some(c) = cursor.admit(chunk) {
                out.push((c.step_id.clone(), c.offset, c.data));
            }
        };
        // Stored segments, then a live buffer that starts inside them.
        feed(&mut cursor, at("a", 0, b"one\n"));
        feed(&mut cursor, at("a", 4, b"two\n"));
        feed(&mut cursor, at("a", 2, b"e\ntwo\nthr"));
        feed(&mut cursor, at("a", 0, b"one\n"));
        feed(&mut cursor, at("b", 0, b"x"));
        feed(&mut cursor, chunk("ca1", b"[notice]"));
        // A gap passes through, and the cursor moves past it.
        feed(&mut cursor, at("a", 20, b"later"));
        feed(&mut cursor, at("a", 18, b"..la"));
        assert_eq!(cursor.sent("a"), 25);
        assert_eq!(
            out,
            vec![
                ("a".to_string(), Some(0), b"one\n".to_vec()),
                ("a".to_string(), Some(4), b"two\n".to_vec()),
                ("a".to_string(), Some(8), b"thr".to_vec()),
                ("b".to_string(), Some(0), b"x".to_vec()),
                ("s".to_string(), None, b"[notice]".to_vec()),
                ("a".to_string(), Some(20), b"later".to_vec()),
            ]
        );
    }

    #[tokio::test]
    async fn followers_get_buffered_then_live_output_then_the_end() {
        let hub = LogHub::default();
        hub.open("ca1");
        hub.append(chunk("ca1", b"one "));
        let mut sub = hub.subscribe("ca1");
        assert!(sub.complete);
        assert_eq!(sub.buffered.len(), 1);
        hub.append(chunk("ca1", b"two"));
        hub.close("ca1");
        assert_eq!(sub.live.recv().await.unwrap().data, b"two");
        assert!(matches!(
            sub.live.recv().await,
            Err(broadcast::error::RecvError::Closed)
        ));
    }

    #[test]
    fn the_buffer_is_bounded_and_says_when_it_dropped_output() {
        let hub = LogHub::default();
        hub.open("ca1");
        let big = vec![b'x'; 1024 * 1024];
        for _ in 0..10 {
            hub.append(chunk("ca1", &big));
        }
        let sub = hub.subscribe("ca1");
        let total: usize = sub.buffered.iter().map(|c| c.data.len()).sum();
        assert!(total <= MAX_BUFFERED_BYTES);
        assert!(!sub.complete);
    }
}

//! The report spool: every durable report is written to disk before it is sent, and removed
//! only once the coordinator acknowledges that its command is committed (or finally rejected).
//! An agent that is killed, or a coordinator that restarts, therefore loses no step result, no
//! pushed digest and no finish: the next session sends whatever is still spooled, in order.
//!
//! One file per report, `<id:020>.pb`, holding the encoded `AgentMessage` (with its
//! `report_id`). Files are written to a temporary name, synced and renamed, so a crash leaves
//! either the whole report or none of it. Ids increase across restarts: a new process starts
//! above both the highest spooled id and the current time in microseconds.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use kiln_proto::v1::AgentMessage;
use prost::Message;

/// Most reports kept waiting for acknowledgement; the session takes no new reports from the
/// runners while the spool is full, which makes them wait.
pub const MAX_SPOOLED: usize = 10_000;

#[derive(Debug)]
struct Entry {
    message: AgentMessage,
    /// When it was last sent (None: not on this connection yet).
    sent: Option<Instant>,
}

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    next_id: u64,
    entries: BTreeMap<u64, Entry>,
}

impl Spool {
    /// Opens the spool in `dir` (created if missing) and loads what a previous process left.
    /// Unreadable files are moved aside with a warning, never silently dropped.
    pub fn open(dir: &Path) -> io::Result<Spool> {
        std::fs::create_dir_all(dir)?;
        let mut entries = BTreeMap::new();
        for item in std::fs::read_dir(dir)? {
            let item = item?;
            let path = item.path();
            let name = item.file_name().to_string_lossy().to_string();
            if name.ends_with(".tmp") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(id) = name
                .strip_suffix(".pb")
                .and_then(|stem| stem.parse::<u64>().ok())
            else {
                continue;
            };
            match std::fs::read(&path)
                .ok()
                .and_then(|bytes| AgentMessage::decode(bytes.as_slice()).ok())
            {
                Some(message) => {
                    entries.insert(
                        id,
                        Entry {
                            message,
                            sent: None,
                        },
                    );
                }
                None => {
                    tracing::warn!(file = %path.display(), "unreadable spooled report; moved aside");
                    let _ = std::fs::rename(&path, path.with_extension("corrupt"));
                }
            }
        }
        let after_spooled = entries.keys().next_back().map_or(1, |last| last + 1);
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        Ok(Spool {
            dir: dir.to_path_buf(),
            next_id: after_spooled.max(now_us),
            entries,
        })
    }

    /// Writes a report durably and returns its id (also set in the message's `report_id`).
    pub fn append(&mut self, mut message: AgentMessage) -> io::Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        message.report_id = id;
        let path = self.path(id);
        let tmp = path.with_extension("tmp");
        {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&message.encode_to_vec())?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        self.entries.insert(
            id,
            Entry {
                message,
                sent: None,
            },
        );
        Ok(id)
    }

    /// Forgets an acknowledged report. Returns it, or `None` for an unknown id.
    pub fn ack(&mut self, id: u64) -> Option<AgentMessage> {
        let entry = self.entries.remove(&id)?;
        if let Err(error) = std::fs::remove_file(self.path(id)) {
            if error.kind() != io::ErrorKind::NotFound {
                tracing::warn!(id, %error, "cannot remove an acknowledged report from the spool");
            }
        }
        Some(entry.message)
    }

    /// Every report not yet sent on the current connection, or sent longer than `resend_after`
    /// ago without an acknowledgement, oldest first; they are marked sent now.
    pub fn due(&mut self, resend_after: std::time::Duration) -> Vec<AgentMessage> {
        let now = Instant::now();
        let mut out = Vec::new();
        for entry in self.entries.values_mut() {
            let due = entry
                .sent
                .is_none_or(|at| now.duration_since(at) >= resend_after);
            if due {
                entry.sent = Some(now);
                out.push(entry.message.clone());
            }
        }
        out
    }

    /// A new connection: everything is to be sent again.
    pub fn reset_sent(&mut self) {
        for entry in self.entries.values_mut() {
            entry.sent = None;
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.entries.len() >= MAX_SPOOLED
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:020}.pb"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_proto::v1::{agent_message, RunFinished};
    use std::time::Duration;

    fn finished(run: &str) -> AgentMessage {
        AgentMessage {
            msg: Some(agent_message::Msg::RunFinished(RunFinished {
                run_id: run.into(),
                ..RunFinished::default()
            })),
            report_id: 0,
        }
    }

    #[test]
    fn reports_survive_a_restart_until_acknowledged_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = {
            let mut spool = Spool::open(dir.path()).unwrap();
            let a = spool.append(finished("ca1")).unwrap();
            let b = spool.append(finished("ca2")).unwrap();
            assert!(b > a);
            assert_eq!(spool.due(Duration::from_secs(10)).len(), 2);
            // Sent and not acknowledged: not due again until the resend time.
            assert!(spool.due(Duration::from_secs(10)).is_empty());
            (a, b)
        };
        // A new process (after kill -9) finds both, in order, with their ids.
        let mut spool = Spool::open(dir.path()).unwrap();
        let due = spool.due(Duration::from_secs(10));
        assert_eq!(
            due.iter().map(|m| m.report_id).collect::<Vec<_>>(),
            vec![a, b]
        );
        assert!(spool.ack(a).is_some());
        assert!(spool.ack(a).is_none());
        let c = spool.append(finished("ca3")).unwrap();
        assert!(c > b);
        let mut spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.len(), 2);
        spool.ack(b);
        spool.ack(c);
        assert!(Spool::open(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn a_torn_or_corrupt_file_is_set_aside_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("00000000000000000005.pb"),
            [0xff, 0xff, 0xff],
        )
        .unwrap();
        std::fs::write(dir.path().join("00000000000000000006.tmp"), b"partial").unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        assert!(spool.is_empty());
        assert!(dir.path().join("00000000000000000005.corrupt").exists());
        assert!(!dir.path().join("00000000000000000006.tmp").exists());
    }
}

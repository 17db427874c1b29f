//! The coordinator's RocksDB database: the Raft log and hard state, and the applied state machine.
//!
//! This is the only module that knows RocksDB. Key layout (one column family, prefixed keys):
//!
//! | key                      | value                                   |
//! |--------------------------|-----------------------------------------|
//! | `raft/entry/<index:u64be>` | raft-rs `Entry` (protobuf)            |
//! | `raft/hard-state`        | raft-rs `HardState`                     |
//! | `raft/conf-state`        | raft-rs `ConfState`                     |
//! | `state/applied`          | last applied log index (u64 big endian) |
//! | `state/run/<seq:u64be>`  | `kiln.state.v1.Run` (protobuf)          |
//!
//! Every write that must survive a crash is synced: log entries before they count as persisted,
//! and the applied runs together with the applied index in one atomic batch, so a restart never
//! applies an entry twice nor loses one.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prost::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};

use kiln_state::pb::Run;

const ENTRY_PREFIX: &[u8] = b"raft/entry/";
const HARD_STATE_KEY: &[u8] = b"raft/hard-state";
const CONF_STATE_KEY: &[u8] = b"raft/conf-state";
const APPLIED_KEY: &[u8] = b"state/applied";
const RUN_PREFIX: &[u8] = b"state/run/";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the coordinator database in {path}: {source}")]
    Open {
        path: String,
        source: rocksdb::Error,
    },
    #[error("coordinator database error: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("corrupt record under key {key}: {message}")]
    Corrupt { key: String, message: String },
}

/// A handle on the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
    /// Index of the last Raft entry written (0 when the log is empty).
    last_index: Arc<AtomicU64>,
}

impl Store {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        let db = DB::open(&options, dir).map_err(|source| StoreError::Open {
            path: dir.display().to_string(),
            source,
        })?;
        let store = Self {
            db: Arc::new(db),
            last_index: Arc::new(AtomicU64::new(0)),
        };
        let last = store.scan_last_index()?;
        store.last_index.store(last, Ordering::SeqCst);
        Ok(store)
    }

    /// Writes the initial membership on first start: a group whose only voter is `node_id`.
    /// Does nothing when the database already has a membership.
    pub fn bootstrap(&self, node_id: u64) -> Result<(), StoreError> {
        if self.db.get(CONF_STATE_KEY)?.is_some() {
            return Ok(());
        }
        let mut conf_state = ConfState::default();
        conf_state.set_voters(vec![node_id]);
        self.put_synced(CONF_STATE_KEY, &encode_raft(&conf_state))
    }

    /// Appends entries to the log, replacing any conflicting suffix, and syncs.
    pub fn append(&self, entries: &[Entry]) -> Result<(), StoreError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let mut batch = WriteBatch::default();
        let old_last = self.last_index.load(Ordering::SeqCst);
        let new_last = entries.last().map_or(old_last, Entry::get_index);
        // Entries after the new ones belong to an abandoned term: remove them.
        for index in new_last.saturating_add(1)..=old_last {
            batch.delete(entry_key(index));
        }
        for entry in entries {
            batch.put(entry_key(entry.get_index()), encode_raft(entry));
        }
        self.write_synced(batch)?;
        debug_assert!(first.get_index() >= 1);
        self.last_index.store(new_last, Ordering::SeqCst);
        Ok(())
    }

    pub fn set_hard_state(&self, hard_state: &HardState) -> Result<(), StoreError> {
        self.put_synced(HARD_STATE_KEY, &encode_raft(hard_state))
    }

    /// Records a new commit index in the hard state.
    pub fn set_commit(&self, commit: u64) -> Result<(), StoreError> {
        let mut hard_state = self.hard_state()?;
        hard_state.set_commit(commit);
        self.set_hard_state(&hard_state)
    }

    pub fn set_conf_state(&self, conf_state: &ConfState) -> Result<(), StoreError> {
        self.put_synced(CONF_STATE_KEY, &encode_raft(conf_state))
    }

    /// Persists the runs an applied entry changed, together with its index, atomically.
    pub fn save_applied(&self, applied: u64, runs: &[&Run]) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for run in runs {
            batch.put(run_key(run.seq), run.encode_to_vec());
        }
        batch.put(APPLIED_KEY, applied.to_be_bytes());
        self.write_synced(batch)
    }

    pub fn applied_index(&self) -> Result<u64, StoreError> {
        match self.db.get(APPLIED_KEY)? {
            None => Ok(0),
            Some(bytes) => decode_u64(APPLIED_KEY, &bytes),
        }
    }

    /// Every persisted run, oldest first.
    pub fn load_runs(&self) -> Result<Vec<Run>, StoreError> {
        let mut runs = Vec::new();
        for item in self
            .db
            .iterator(IteratorMode::From(RUN_PREFIX, Direction::Forward))
        {
            let (key, value) = item?;
            if !key.starts_with(RUN_PREFIX) {
                break;
            }
            let run = Run::decode(value.as_ref()).map_err(|e| StoreError::Corrupt {
                key: String::from_utf8_lossy(&key).into_owned(),
                message: e.to_string(),
            })?;
            runs.push(run);
        }
        Ok(runs)
    }

    fn hard_state(&self) -> Result<HardState, StoreError> {
        match self.db.get(HARD_STATE_KEY)? {
            None => Ok(HardState::default()),
            Some(bytes) => decode_raft(HARD_STATE_KEY, &bytes),
        }
    }

    fn conf_state(&self) -> Result<ConfState, StoreError> {
        match self.db.get(CONF_STATE_KEY)? {
            None => Ok(ConfState::default()),
            Some(bytes) => decode_raft(CONF_STATE_KEY, &bytes),
        }
    }

    fn entry(&self, index: u64) -> Result<Option<Entry>, StoreError> {
        let key = entry_key(index);
        match self.db.get(&key)? {
            None => Ok(None),
            Some(bytes) => decode_raft(&key, &bytes).map(Some),
        }
    }

    fn scan_last_index(&self) -> Result<u64, StoreError> {
        let mut end = ENTRY_PREFIX.to_vec();
        end.extend_from_slice(&u64::MAX.to_be_bytes());
        let mut iter = self
            .db
            .iterator(IteratorMode::From(&end, Direction::Reverse));
        match iter.next() {
            Some(item) => {
                let (key, _) = item?;
                if key.starts_with(ENTRY_PREFIX) {
                    decode_u64(&key, &key[ENTRY_PREFIX.len()..])
                } else {
                    Ok(0)
                }
            }
            None => Ok(0),
        }
    }

    fn put_synced(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.put(key, value);
        self.write_synced(batch)
    }

    fn write_synced(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db.write_opt(batch, &options)?;
        Ok(())
    }
}

/// raft-rs reads the log through this trait. The log is never compacted yet (see
/// ARCHITECTURE.md), so the first index is always 1.
impl raft::Storage for Store {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState {
            hard_state: self.hard_state().map_err(other)?,
            conf_state: self.conf_state().map_err(other)?,
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let last = self.last_index.load(Ordering::SeqCst);
        if low < 1 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > last + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let mut entries = Vec::with_capacity((high - low) as usize);
        for index in low..high {
            match self.entry(index).map_err(other)? {
                Some(entry) => entries.push(entry),
                None => return Err(raft::Error::Store(StorageError::Unavailable)),
            }
        }
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index == 0 {
            return Ok(0);
        }
        match self.entry(index).map_err(other)? {
            Some(entry) => Ok(entry.get_term()),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index.load(Ordering::SeqCst))
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // The log is never compacted, so a follower can always catch up from entries.
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

fn entry_key(index: u64) -> Vec<u8> {
    let mut key = ENTRY_PREFIX.to_vec();
    key.extend_from_slice(&index.to_be_bytes());
    key
}

fn run_key(seq: u64) -> Vec<u8> {
    let mut key = RUN_PREFIX.to_vec();
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn encode_raft(message: &impl protobuf::Message) -> Vec<u8> {
    message
        .write_to_bytes()
        .expect("encoding an in-memory raft message cannot fail")
}

fn decode_raft<M: protobuf::Message>(key: &[u8], bytes: &[u8]) -> Result<M, StoreError> {
    M::parse_from_bytes(bytes).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        message: e.to_string(),
    })
}

fn decode_u64(key: &[u8], bytes: &[u8]) -> Result<u64, StoreError> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        message: format!("expected 8 bytes, found {}", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(array))
}

fn other(error: StoreError) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(error)))
}

#[cfg(test)]
mod tests {
    use raft::Storage as _;

    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        let mut entry = Entry::default();
        entry.set_index(index);
        entry.set_term(term);
        entry.set_data(format!("e{index}").into_bytes().into());
        entry
    }

    #[test]
    fn log_survives_reopen_and_conflicting_suffix_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.bootstrap(1).unwrap();
            store
                .append(&[entry(1, 1), entry(2, 1), entry(3, 1)])
                .unwrap();
            store.append(&[entry(2, 2)]).unwrap();
            let run = Run {
                id: "ca1".into(),
                seq: 1,
                ..Run::default()
            };
            store.save_applied(2, &[&run]).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.last_index().unwrap(), 2);
        assert_eq!(store.term(2).unwrap(), 2);
        assert!(store.term(3).is_err());
        let entries = store
            .entries(1, 3, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(store.applied_index().unwrap(), 2);
        assert_eq!(store.load_runs().unwrap()[0].id, "ca1");
        assert_eq!(store.initial_state().unwrap().conf_state.get_voters(), &[1]);
    }
}

//! The coordinator's RocksDB database: the Raft log and hard state, and the applied state machine.
//!
//! This is the only module that knows RocksDB. Key layout (one column family, prefixed keys, so
//! that one `WriteBatch` is atomic across all of them):
//!
//! | key                        | value                                              |
//! |----------------------------|----------------------------------------------------|
//! | `raft/entry/<index:u64be>` | raft-rs `Entry` (protobuf)                         |
//! | `raft/hard-state`          | raft-rs `HardState`                                |
//! | `raft/conf-state`          | raft-rs `ConfState` as of the applied index        |
//! | `raft/truncated`           | index and term of the last entry compacted away    |
//! | `raft/identity`            | cluster id and node id (`Identity`)                |
//! | `state/applied`            | last applied log index (u64 big endian)            |
//! | `state/meta`               | `kiln.state.v1.StateMeta` (next run number, members) |
//! | `state/run/<seq:u64be>`    | `kiln.state.v1.Run` (protobuf)                     |
//!
//! Each Raft `Ready` is written as ONE batch ([`Store::persist`]): new log entries, the hard
//! state, and what the committed entries changed in the state machine together with the applied
//! index and configuration; synced when it holds entries or a hard state. So a crash between any
//! two writes leaves either all of a Ready or none of it, the applied index never runs ahead of
//! the commit index stored with it, and a restart never applies an entry twice nor loses one.
//!
//! Crash points ([`CRASH_POINTS`]) sit between the durable writes, here and in `raft_node`:
//! armed through the `FAILPOINTS` environment variable (`name=action`, the `fail` crate's
//! syntax, e.g. `store-persist-after-write=20*off->return`), a point's `return` aborts the
//! process on the spot, as kill -9 would: no destructor runs and nothing is flushed.
//! `return(applied)` (or `entries`, `hard-state`) at a per-Ready point fires only at a batch
//! that holds that.
//! `tests/crash_points.rs` arms each one in a real cluster of coordinator processes.
//!
//! The most recently appended entries are also kept in memory ([`EntryCache`]), from which
//! [`RaftStorage`] answers raft-rs's reads of the log tail (the term of the last entry, appends
//! to followers, committed entries to apply) instead of reading and decoding them from RocksDB.
//! The cache changes only after the batch that changes the log on disk has been written, in
//! the same way (appends, a replaced suffix, compaction, snapshots, initialisation), and starts
//! empty when the database is opened, so it holds exactly what the disk holds for its indexes.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use prost::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};

use kiln_state::pb::{Run, StateMeta, StateSnapshot};
use kiln_state::State;

const ENTRY_PREFIX: &[u8] = b"raft/entry/";
const HARD_STATE_KEY: &[u8] = b"raft/hard-state";
const CONF_STATE_KEY: &[u8] = b"raft/conf-state";
const TRUNCATED_KEY: &[u8] = b"raft/truncated";
const IDENTITY_KEY: &[u8] = b"raft/identity";
const APPLIED_KEY: &[u8] = b"state/applied";
const META_KEY: &[u8] = b"state/meta";
const RUN_PREFIX: &[u8] = b"state/run/";

/// Every crash point, in the order a Ready reaches them. Between each two of them lies one
/// durable write (or the sending of messages or answers that must follow one).
pub const CRASH_POINTS: &[&str] = &[
    // A received snapshot: before and after its one synced batch (log cleared, state, applied
    // index, conf state and truncation point all in it, so nothing lies between "state
    // written" and "log truncated").
    "store-snapshot-before-write",
    "store-snapshot-after-write",
    // Committed entries applied in memory; the applied-state write not made.
    "raft-before-applied-write",
    // The Ready's batch (entries, hard state, applied state), and the light Ready's.
    "store-persist-before-write",
    "store-persist-after-write",
    // Committed, applied and written; the proposers (clients, agents) not answered yet.
    "raft-before-reply",
    // Entries and hard state durable; the votes and append responses not sent.
    "raft-before-persisted-messages",
    // Log compaction: before and after its synced batch.
    "store-compact-before-write",
    "store-compact-after-write",
];

/// Evaluates crash point `$name` (see [`CRASH_POINTS`]): with the action `return` it dies
/// like kill -9. `crash_point!("name", tags, "format", args)` describes the write: its last
/// words say what it held, and `return(TAG)` fires only at a write that holds TAG (so a test
/// can ask for "the first batch after 40 that holds applied state").
macro_rules! crash_point {
    ($name:literal) => {
        $crate::store::eval_crash_point($name, &[], String::new)
    };
    ($name:literal, $tags:expr, $($detail:tt)+) => {
        $crate::store::eval_crash_point($name, $tags, || format!($($detail)+))
    };
}
pub(crate) use crash_point;

/// See [`crash_point!`]. With no point armed this is one lookup in an empty registry.
#[inline]
pub fn eval_crash_point(name: &str, tags: &[&str], detail: impl FnOnce() -> String) {
    fail::eval(name, |only: Option<String>| {
        let wanted = only.as_deref().is_none_or(|tag| tags.contains(&tag));
        if wanted {
            crash(name, &detail());
        }
    });
}

/// Ends the process at crash point `name` without unwinding, running destructors or flushing
/// anything: the one line on stderr (unbuffered) lets a test tell this abort from any other.
#[cold]
pub fn crash(name: &str, detail: &str) -> ! {
    if detail.is_empty() {
        eprintln!("kiln-coordinator: crash point {name} reached: aborting");
    } else {
        eprintln!("kiln-coordinator: crash point {name} reached ({detail}): aborting");
    }
    std::process::abort()
}

/// Arms the crash points named in `spec` (`FAILPOINTS`: `name=actions;name=actions`, the
/// `fail` crate's syntax). Refuses names that are not crash points, so that a typo does not
/// leave a test waiting for a crash that cannot come. Returns the names armed.
pub fn arm_crash_points(spec: &str) -> Result<Vec<String>, String> {
    let mut armed = Vec::new();
    for item in spec.split(';').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, actions) = item
            .split_once('=')
            .ok_or_else(|| format!("'{item}' is not name=actions"))?;
        let name = name.trim();
        if !CRASH_POINTS.contains(&name) {
            return Err(format!(
                "'{name}' is not a crash point (known: {})",
                CRASH_POINTS.join(", ")
            ));
        }
        fail::cfg(name, actions.trim()).map_err(|e| format!("{name}: {e}"))?;
        armed.push(name.to_string());
    }
    Ok(armed)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the coordinator database in {path}: {cause}{hint}")]
    Open {
        path: String,
        cause: rocksdb::Error,
        hint: &'static str,
    },
    #[error("coordinator database error: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("corrupt record under key {key}: {message}")]
    Corrupt { key: String, message: String },
}

/// Which cluster a data directory belongs to, and as which member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub cluster_id: u64,
    pub node_id: u64,
}

/// What the state machine changed while applying a batch of committed entries.
#[derive(Default)]
pub struct Applied<'a> {
    pub index: u64,
    pub runs: Vec<&'a Run>,
    pub removed_runs: Vec<u64>,
    pub meta: Option<StateMeta>,
    pub conf_state: Option<ConfState>,
}

/// One Ready's worth of writes, made durable together.
#[derive(Default)]
pub struct Persist<'a> {
    pub entries: &'a [Entry],
    pub hard_state: Option<HardState>,
    /// A new commit index alone (from a light ready), when `hard_state` is not given.
    pub commit: Option<u64>,
    pub applied: Option<Applied<'a>>,
}

impl Persist<'_> {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
            && self.hard_state.is_none()
            && self.commit.is_none()
            && self.applied.is_none()
    }
}

/// Bounds of the in-memory cache of recent log entries: whichever is reached first.
///
/// 16,384 entries is about 0.8 s of log at the 20,000 entries/s goal, several times the
/// commit latency under load (p99 80–330 ms measured): the entries raft-rs reads back (the
/// last one's term, the appends to followers in flight, the committed entries to apply) are
/// that recent, and a follower further behind is catching up, which may read RocksDB. It is
/// also more than the 5,000–15,000 entries the log keeps between compactions
/// (`RaftConfig::compact_after`, `catch_up_entries`), so the whole kept log is usually cached.
/// 16 MiB bounds the memory when entries are large (16 of raft-rs's 1 MiB messages, 4 of its
/// 4 MiB committed-entry batches); with the ~200–400-byte entries of ordinary commands the
/// entry count binds first, at about 5–8 MiB.
#[derive(Clone, Copy, Debug)]
pub struct CacheLimits {
    pub max_entries: usize,
    pub max_bytes: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        Self {
            max_entries: 16 * 1024,
            max_bytes: 16 * 1024 * 1024,
        }
    }
}

/// One cached entry and its encoded size (what `compute_size` gives for it, which is what
/// raft-rs's `max_size` counts).
struct CachedEntry {
    entry: Entry,
    size: u64,
}

/// The last entries of the log, contiguous, ending at the last index when not empty
/// (`Store::last_index`): entries are only appended at the end (replacing any suffix from the
/// first appended index on), and removed from the front (bounds, compaction) or all at once
/// (snapshot, initialisation).
struct EntryCache {
    entries: VecDeque<CachedEntry>,
    /// Sum of the cached entries' sizes plus a fixed overhead per entry.
    bytes: usize,
    limits: CacheLimits,
}

/// Memory per cached entry besides its encoded bytes (the `Entry` struct and its buffers' headers).
const CACHED_ENTRY_OVERHEAD: usize = std::mem::size_of::<CachedEntry>();

impl EntryCache {
    fn new(limits: CacheLimits) -> Self {
        Self {
            entries: VecDeque::new(),
            bytes: 0,
            limits,
        }
    }

    /// The cached index range, inclusive.
    fn range(&self) -> Option<(u64, u64)> {
        Some((
            self.entries.front()?.entry.get_index(),
            self.entries.back()?.entry.get_index(),
        ))
    }

    fn get(&self, index: u64) -> Option<&CachedEntry> {
        let first = self.entries.front()?.entry.get_index();
        let offset = usize::try_from(index.checked_sub(first)?).ok()?;
        self.entries.get(offset)
    }

    /// Appends `entries` (contiguous, as written to disk), first removing every cached entry
    /// from the first one's index on, as the disk write replaced them.
    fn append(&mut self, entries: &[Entry], sizes: &[u64]) {
        let Some(first) = entries.first().map(Entry::get_index) else {
            return;
        };
        // More new entries than the cache holds: only the last of them can stay.
        let skip = entries.len().saturating_sub(self.limits.max_entries);
        if let Some((cached_first, cached_last)) = self.range() {
            if skip > 0 || first <= cached_first || first > cached_last + 1 {
                // Replaced or evicted all of it, or a gap would follow it.
                self.clear();
            } else {
                let keep = (first - cached_first) as usize;
                for removed in self.entries.drain(keep..) {
                    self.bytes -= removed.size as usize + CACHED_ENTRY_OVERHEAD;
                }
            }
        }
        for (entry, size) in entries.iter().zip(sizes).skip(skip) {
            self.bytes += *size as usize + CACHED_ENTRY_OVERHEAD;
            self.entries.push_back(CachedEntry {
                entry: entry.clone(),
                size: *size,
            });
        }
        // The last entry stays even if it alone is over the byte bound: its term is the one
        // raft-rs asks for most.
        while self.entries.len() > 1
            && (self.entries.len() > self.limits.max_entries || self.bytes > self.limits.max_bytes)
        {
            self.pop_front();
        }
    }

    /// Removes the entries up to and including `index` (compacted away on disk).
    fn compact(&mut self, index: u64) {
        while self
            .entries
            .front()
            .is_some_and(|e| e.entry.get_index() <= index)
        {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(removed) = self.entries.pop_front() {
            self.bytes -= removed.size as usize + CACHED_ENTRY_OVERHEAD;
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

/// How often raft-rs's reads were answered from the cache and from RocksDB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
}

/// A handle on the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
    /// Index of the last Raft entry written (the truncated index when the log is empty).
    last_index: Arc<AtomicU64>,
    /// Index and term of the last entry removed by compaction or covered by a snapshot.
    truncated: Arc<RwLock<(u64, u64)>>,
    /// The last entries written, as on disk (see [`EntryCache`]).
    cache: Arc<Mutex<EntryCache>>,
    cache_hits: Arc<AtomicU64>,
    cache_misses: Arc<AtomicU64>,
}

impl Store {
    /// Opens (or creates) the database in `dir`, with the default cache bounds.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(dir, CacheLimits::default())
    }

    /// Opens (or creates) the database in `dir`; the entry cache starts empty.
    pub fn open_with_cache(dir: &Path, limits: CacheLimits) -> Result<Self, StoreError> {
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        let db = DB::open(&options, dir).map_err(|cause| StoreError::Open {
            path: dir.display().to_string(),
            hint: if cause.to_string().contains("lock") {
                " (is another kiln-coordinator running on this data directory?)"
            } else {
                ""
            },
            cause,
        })?;
        let store = Self {
            db: Arc::new(db),
            last_index: Arc::new(AtomicU64::new(0)),
            truncated: Arc::new(RwLock::new((0, 0))),
            cache: Arc::new(Mutex::new(EntryCache::new(limits))),
            cache_hits: Arc::new(AtomicU64::new(0)),
            cache_misses: Arc::new(AtomicU64::new(0)),
        };
        let truncated = store.read_truncated()?;
        *store.truncated.write().unwrap_or_else(|p| p.into_inner()) = truncated;
        let last = store.scan_last_index()?.max(truncated.0);
        store.last_index.store(last, Ordering::SeqCst);
        Ok(store)
    }

    /// True when nothing was ever written: no membership, no log.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.db.get(CONF_STATE_KEY)?.is_none()
            && self.db.get(IDENTITY_KEY)?.is_none()
            && self.last_index.load(Ordering::SeqCst) == 0)
    }

    /// True when the data directory holds a membership (it was part of a cluster).
    pub fn has_membership(&self) -> Result<bool, StoreError> {
        Ok(!self.conf_state()?.get_voters().is_empty()
            || !self.conf_state()?.get_learners().is_empty())
    }

    pub fn identity(&self) -> Result<Option<Identity>, StoreError> {
        match self.db.get(IDENTITY_KEY)? {
            None => Ok(None),
            Some(bytes) if bytes.len() == 16 => Ok(Some(Identity {
                cluster_id: u64::from_be_bytes(bytes[..8].try_into().unwrap_or_default()),
                node_id: u64::from_be_bytes(bytes[8..].try_into().unwrap_or_default()),
            })),
            Some(bytes) => Err(StoreError::Corrupt {
                key: String::from_utf8_lossy(IDENTITY_KEY).into_owned(),
                message: format!("expected 16 bytes, found {}", bytes.len()),
            }),
        }
    }

    pub fn set_identity(&self, identity: Identity) -> Result<(), StoreError> {
        let mut value = identity.cluster_id.to_be_bytes().to_vec();
        value.extend_from_slice(&identity.node_id.to_be_bytes());
        let mut batch = WriteBatch::default();
        batch.put(IDENTITY_KEY, value);
        self.write_synced(batch)
    }

    /// Starts the data directory over from `snapshot` at (`index`, `term`) with `conf_state`:
    /// a new cluster (every initial member writes the same), a restore from a backup, or a
    /// survivor forced into a cluster of one. Everything else in it is replaced.
    pub fn initialize(
        &self,
        identity: Identity,
        conf_state: &ConfState,
        snapshot: &StateSnapshot,
        index: u64,
        term: u64,
    ) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        self.clear_log_and_runs(&mut batch);
        let mut value = identity.cluster_id.to_be_bytes().to_vec();
        value.extend_from_slice(&identity.node_id.to_be_bytes());
        batch.put(IDENTITY_KEY, value);
        let mut hard_state = HardState::default();
        hard_state.set_term(term);
        hard_state.set_commit(index);
        batch.put(HARD_STATE_KEY, encode_raft(&hard_state));
        batch.put(CONF_STATE_KEY, encode_raft(conf_state));
        batch.put(TRUNCATED_KEY, encode_pair(index, term));
        batch.put(APPLIED_KEY, index.to_be_bytes());
        put_snapshot_state(&mut batch, snapshot);
        self.write_synced(batch)?;
        self.lock_cache().clear();
        *self.truncated.write().unwrap_or_else(|p| p.into_inner()) = (index, term);
        self.last_index.store(index, Ordering::SeqCst);
        Ok(())
    }

    /// Writes one Ready: entries (replacing any conflicting suffix), hard state or commit
    /// index, and the applied state, in one batch. The batch is synced when it holds log entries
    /// or a hard state (a vote or term must be durable before it is answered). A batch of only
    /// a commit index and applied state is not: the entries it applied are already durable in
    /// the log, so if a crash loses it, the applied index and the state go back together and
    /// the same entries are applied again on restart (the next synced write makes it durable
    /// anyway, as RocksDB's WAL is sequential).
    pub fn persist(&self, persist: Persist<'_>) -> Result<(), StoreError> {
        if persist.is_empty() {
            return Ok(());
        }
        let sync = !persist.entries.is_empty() || persist.hard_state.is_some();
        // What the batch holds, for the crash points.
        let (entries, hard_state, applied_to) = (
            persist.entries.len(),
            persist.hard_state.is_some() || persist.commit.is_some(),
            persist.applied.as_ref().map(|a| a.index),
        );
        let tags = [
            if entries > 0 { "entries" } else { "" },
            if hard_state { "hard-state" } else { "" },
            if applied_to.is_some() { "applied" } else { "" },
        ];
        let mut batch = WriteBatch::default();
        let old_last = self.last_index.load(Ordering::SeqCst);
        let mut new_last = old_last;
        let mut sizes = Vec::with_capacity(persist.entries.len());
        if let Some(last) = persist.entries.last() {
            new_last = last.get_index();
            // Entries after the new ones belong to an abandoned term: remove them.
            for index in new_last.saturating_add(1)..=old_last {
                batch.delete(entry_key(index));
            }
            for entry in persist.entries {
                let encoded = encode_raft(entry);
                sizes.push(encoded.len() as u64);
                batch.put(entry_key(entry.get_index()), encoded);
            }
        }
        match (persist.hard_state, persist.commit) {
            (Some(hard_state), _) => batch.put(HARD_STATE_KEY, encode_raft(&hard_state)),
            (None, Some(commit)) => {
                let mut hard_state = self.hard_state()?;
                hard_state.set_commit(commit);
                batch.put(HARD_STATE_KEY, encode_raft(&hard_state));
            }
            (None, None) => {}
        }
        if let Some(applied) = persist.applied {
            for run in &applied.runs {
                batch.put(run_key(run.seq), run.encode_to_vec());
            }
            for seq in &applied.removed_runs {
                batch.delete(run_key(*seq));
            }
            if let Some(meta) = &applied.meta {
                batch.put(META_KEY, meta.encode_to_vec());
            }
            if let Some(conf_state) = &applied.conf_state {
                batch.put(CONF_STATE_KEY, encode_raft(conf_state));
            }
            batch.put(APPLIED_KEY, applied.index.to_be_bytes());
        }
        crash_point!(
            "store-persist-before-write",
            &tags,
            "entries {entries}, hard state {hard_state}, applied state {applied_to:?}"
        );
        if sync {
            self.write_synced(batch)?;
        } else {
            self.db.write(batch)?;
        }
        crash_point!(
            "store-persist-after-write",
            &tags,
            "entries {entries}, hard state {hard_state}, applied state {applied_to:?}"
        );
        let mut cache = self.lock_cache();
        cache.append(persist.entries, &sizes);
        debug_assert!(cache.range().is_none_or(|(_, last)| last == new_last));
        self.last_index.store(new_last, Ordering::SeqCst);
        Ok(())
    }

    /// Replaces the log and the state machine with a snapshot received from the leader.
    pub fn apply_snapshot(
        &self,
        metadata: &SnapshotMetadata,
        state: &StateSnapshot,
        hard_state: Option<&HardState>,
    ) -> Result<(), StoreError> {
        let index = metadata.get_index();
        let term = metadata.get_term();
        let mut batch = WriteBatch::default();
        self.clear_log_and_runs(&mut batch);
        let mut hs = match hard_state {
            Some(hs) => hs.clone(),
            None => self.hard_state()?,
        };
        // After this batch the log ends at `index`, so that is the commit index to write, never
        // more: the Ready's hard state may already commit entries after the snapshot, which
        // `persist` writes next (raft-rs puts both in one Ready). Written here, a crash before
        // that write left commit > last index, and raft-rs panicked on restart.
        hs.set_commit(index);
        if hs.get_term() < term {
            hs.set_term(term);
        }
        batch.put(HARD_STATE_KEY, encode_raft(&hs));
        batch.put(CONF_STATE_KEY, encode_raft(metadata.get_conf_state()));
        batch.put(TRUNCATED_KEY, encode_pair(index, term));
        batch.put(APPLIED_KEY, index.to_be_bytes());
        put_snapshot_state(&mut batch, state);
        crash_point!("store-snapshot-before-write");
        self.write_synced(batch)?;
        crash_point!("store-snapshot-after-write");
        self.lock_cache().clear();
        *self.truncated.write().unwrap_or_else(|p| p.into_inner()) = (index, term);
        self.last_index.store(index, Ordering::SeqCst);
        Ok(())
    }

    /// Removes log entries up to and including `index` (which must be applied).
    pub fn compact(&self, index: u64) -> Result<(), StoreError> {
        let (truncated, _) = self.truncated();
        let last = self.last_index.load(Ordering::SeqCst);
        if index <= truncated || index > last {
            return Ok(());
        }
        let term = match self.term_of(index)? {
            Some(term) => term,
            None => return Ok(()),
        };
        let mut batch = WriteBatch::default();
        batch.delete_range(entry_key(truncated + 1), entry_key(index + 1));
        batch.put(TRUNCATED_KEY, encode_pair(index, term));
        crash_point!("store-compact-before-write");
        self.write_synced(batch)?;
        crash_point!("store-compact-after-write");
        self.lock_cache().compact(index);
        *self.truncated.write().unwrap_or_else(|p| p.into_inner()) = (index, term);
        Ok(())
    }

    /// Index and term of the last entry compacted away (0, 0 when none).
    pub fn truncated(&self) -> (u64, u64) {
        *self.truncated.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn applied_index(&self) -> Result<u64, StoreError> {
        match self.db.get(APPLIED_KEY)? {
            None => Ok(0),
            Some(bytes) => decode_u64(APPLIED_KEY, &bytes),
        }
    }

    /// Loads the applied state machine.
    pub fn load_state(&self) -> Result<State, StoreError> {
        let meta = match self.db.get(META_KEY)? {
            None => StateMeta::default(),
            Some(bytes) => {
                StateMeta::decode(bytes.as_slice()).map_err(|e| StoreError::Corrupt {
                    key: String::from_utf8_lossy(META_KEY).into_owned(),
                    message: e.to_string(),
                })?
            }
        };
        Ok(State::from_parts(meta, self.load_runs()?))
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

    pub fn hard_state(&self) -> Result<HardState, StoreError> {
        match self.db.get(HARD_STATE_KEY)? {
            None => Ok(HardState::default()),
            Some(bytes) => decode_raft(HARD_STATE_KEY, &bytes),
        }
    }

    pub fn conf_state(&self) -> Result<ConfState, StoreError> {
        match self.db.get(CONF_STATE_KEY)? {
            None => Ok(ConfState::default()),
            Some(bytes) => decode_raft(CONF_STATE_KEY, &bytes),
        }
    }

    /// Writes a conf state by itself (used once, to turn a legacy single-node directory into
    /// a cluster of one, and by tests).
    pub fn set_conf_state(&self, conf_state: &ConfState) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.put(CONF_STATE_KEY, encode_raft(conf_state));
        self.write_synced(batch)
    }

    /// How many entry reads the cache answered, and how many RocksDB did.
    pub fn cache_stats(&self) -> CacheStats {
        CacheStats {
            hits: self.cache_hits.load(Ordering::Relaxed),
            misses: self.cache_misses.load(Ordering::Relaxed),
        }
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, EntryCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The term of the entry at `index` in the log (not the truncation point), from the cache
    /// or else from disk.
    fn term_of(&self, index: u64) -> Result<Option<u64>, StoreError> {
        if let Some(cached) = self.lock_cache().get(index) {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(cached.entry.get_term()));
        }
        self.cache_misses.fetch_add(1, Ordering::Relaxed);
        Ok(self.entry(index)?.map(|entry| entry.get_term()))
    }

    /// Entries `low..high` of the log as raft-rs wants them: stops before the entry that would
    /// take the total encoded size over `max_size`, but returns at least one
    /// (`raft::util::limit_size`'s rule). `None` when one of them is missing.
    fn entries_limited(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> Result<Option<Vec<Entry>>, StoreError> {
        let mut entries = Vec::with_capacity((high - low).min(1024) as usize);
        let mut size = 0u64;
        let cache = self.lock_cache();
        let (mut hits, mut misses) = (0, 0);
        let mut result = Ok(Some(()));
        for index in low..high {
            let (entry, entry_size) = match cache.get(index) {
                Some(cached) => {
                    hits += 1;
                    (cached.entry.clone(), cached.size)
                }
                None => {
                    misses += 1;
                    match self.entry(index) {
                        Ok(Some(entry)) => {
                            let entry_size = u64::from(protobuf::Message::compute_size(&entry));
                            (entry, entry_size)
                        }
                        Ok(None) => {
                            result = Ok(None);
                            break;
                        }
                        Err(error) => {
                            result = Err(error);
                            break;
                        }
                    }
                }
            };
            size = size.saturating_add(entry_size);
            if !entries.is_empty() && max_size.is_some_and(|max| size > max) {
                break;
            }
            entries.push(entry);
        }
        drop(cache);
        self.cache_hits.fetch_add(hits, Ordering::Relaxed);
        self.cache_misses.fetch_add(misses, Ordering::Relaxed);
        result.map(|found| found.map(|()| entries))
    }

    fn entry(&self, index: u64) -> Result<Option<Entry>, StoreError> {
        let key = entry_key(index);
        match self.db.get(&key)? {
            None => Ok(None),
            Some(bytes) => decode_raft(&key, &bytes).map(Some),
        }
    }

    fn clear_log_and_runs(&self, batch: &mut WriteBatch) {
        batch.delete_range(entry_key(0), entry_key(u64::MAX));
        batch.delete(entry_key(u64::MAX));
        let mut runs_end = RUN_PREFIX.to_vec();
        runs_end.extend_from_slice(&[0xff; 9]);
        batch.delete_range(RUN_PREFIX.to_vec(), runs_end);
    }

    fn read_truncated(&self) -> Result<(u64, u64), StoreError> {
        match self.db.get(TRUNCATED_KEY)? {
            None => Ok((0, 0)),
            Some(bytes) if bytes.len() == 16 => Ok((
                decode_u64(TRUNCATED_KEY, &bytes[..8])?,
                decode_u64(TRUNCATED_KEY, &bytes[8..])?,
            )),
            Some(bytes) => Err(StoreError::Corrupt {
                key: String::from_utf8_lossy(TRUNCATED_KEY).into_owned(),
                message: format!("expected 16 bytes, found {}", bytes.len()),
            }),
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

    fn write_synced(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db.write_opt(batch, &options)?;
        Ok(())
    }
}

fn put_snapshot_state(batch: &mut WriteBatch, snapshot: &StateSnapshot) {
    for run in &snapshot.runs {
        batch.put(run_key(run.seq), run.encode_to_vec());
    }
    batch.put(
        META_KEY,
        snapshot.meta.clone().unwrap_or_default().encode_to_vec(),
    );
}

/// raft-rs reads the log through this: the [`Store`], plus the applied in-memory state from
/// which snapshots are cut.
#[derive(Clone)]
pub struct RaftStorage {
    pub store: Store,
    pub state: Arc<RwLock<State>>,
}

impl RaftStorage {
    /// A snapshot of the applied state (taken on the Raft thread, so the in-memory state, the
    /// applied index and the configuration agree).
    pub fn build_snapshot(&self) -> Result<Snapshot, StoreError> {
        let applied = self.store.applied_index()?;
        let term = match self.store.term_of(applied)? {
            Some(term) => term,
            None => {
                let (index, term) = self.store.truncated();
                if index == applied {
                    term
                } else {
                    0
                }
            }
        };
        let data = {
            let state = self.state.read().unwrap_or_else(|p| p.into_inner());
            state.snapshot().encode_to_vec()
        };
        let mut snapshot = Snapshot::default();
        snapshot.set_data(data.into());
        let metadata = snapshot.mut_metadata();
        metadata.set_index(applied);
        metadata.set_term(term);
        metadata.set_conf_state(self.store.conf_state()?);
        Ok(snapshot)
    }
}

impl raft::Storage for RaftStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState {
            hard_state: self.store.hard_state().map_err(other)?,
            conf_state: self.store.conf_state().map_err(other)?,
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let (truncated, _) = self.store.truncated();
        let last = self.store.last_index.load(Ordering::SeqCst);
        if low <= truncated {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > last + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        match self
            .store
            .entries_limited(low, high, max_size.into())
            .map_err(other)?
        {
            Some(entries) => Ok(entries),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        let (truncated, truncated_term) = self.store.truncated();
        if index == truncated {
            return Ok(truncated_term);
        }
        if index < truncated {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        match self.store.term_of(index).map_err(other)? {
            Some(term) => Ok(term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.store.truncated().0 + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.store.last_index.load(Ordering::SeqCst))
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let snapshot = self.build_snapshot().map_err(other)?;
        if snapshot.get_metadata().get_index() < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(snapshot)
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

fn encode_pair(a: u64, b: u64) -> Vec<u8> {
    let mut value = a.to_be_bytes().to_vec();
    value.extend_from_slice(&b.to_be_bytes());
    value
}

pub fn encode_raft(message: &impl protobuf::Message) -> Vec<u8> {
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

    fn raft_storage(store: &Store) -> RaftStorage {
        RaftStorage {
            store: store.clone(),
            state: Arc::new(RwLock::new(store.load_state().unwrap())),
        }
    }

    #[test]
    fn log_survives_reopen_and_conflicting_suffix_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let mut conf_state = ConfState::default();
            conf_state.set_voters(vec![1]);
            store.set_conf_state(&conf_state).unwrap();
            store
                .persist(Persist {
                    entries: &[entry(1, 1), entry(2, 1), entry(3, 1)],
                    ..Persist::default()
                })
                .unwrap();
            let run = Run {
                id: "ca1".into(),
                seq: 1,
                ..Run::default()
            };
            store
                .persist(Persist {
                    entries: &[entry(2, 2)],
                    applied: Some(Applied {
                        index: 2,
                        runs: vec![&run],
                        ..Applied::default()
                    }),
                    ..Persist::default()
                })
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let storage = raft_storage(&store);
        assert_eq!(storage.last_index().unwrap(), 2);
        assert_eq!(storage.term(2).unwrap(), 2);
        assert!(storage.term(3).is_err());
        let entries = storage
            .entries(1, 3, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(store.applied_index().unwrap(), 2);
        assert_eq!(store.load_runs().unwrap()[0].id, "ca1");
        assert_eq!(
            storage.initial_state().unwrap().conf_state.get_voters(),
            &[1]
        );
    }

    #[test]
    fn compaction_keeps_the_term_of_the_last_compacted_entry_and_reports_compacted_below() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let entries: Vec<_> = (1..=10).map(|i| entry(i, 1 + i / 5)).collect();
        store
            .persist(Persist {
                entries: &entries,
                applied: Some(Applied {
                    index: 10,
                    ..Applied::default()
                }),
                ..Persist::default()
            })
            .unwrap();
        store.compact(6).unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let storage = raft_storage(&store);
        assert_eq!(storage.first_index().unwrap(), 7);
        assert_eq!(storage.last_index().unwrap(), 10);
        assert_eq!(storage.term(6).unwrap(), 2);
        assert!(matches!(
            storage.term(5),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert!(matches!(
            storage.entries(6, 8, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert_eq!(
            storage
                .entries(7, 11, None, GetEntriesContext::empty(false))
                .unwrap()
                .len(),
            4
        );
    }

    #[test]
    fn an_initialized_store_starts_at_its_snapshot_and_a_received_snapshot_replaces_everything() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.is_empty().unwrap());
        let mut conf_state = ConfState::default();
        conf_state.set_voters(vec![1, 2, 3]);
        let identity = Identity {
            cluster_id: 0xabc,
            node_id: 2,
        };
        store
            .initialize(identity, &conf_state, &StateSnapshot::default(), 5, 5)
            .unwrap();
        let storage = raft_storage(&store);
        assert_eq!(storage.first_index().unwrap(), 6);
        assert_eq!(storage.last_index().unwrap(), 5);
        assert_eq!(storage.term(5).unwrap(), 5);
        assert_eq!(store.identity().unwrap(), Some(identity));
        store
            .persist(Persist {
                entries: &[entry(6, 5), entry(7, 5)],
                ..Persist::default()
            })
            .unwrap();

        let run = Run {
            id: "ca9".into(),
            seq: 9,
            ..Run::default()
        };
        let snapshot_state = StateSnapshot {
            meta: Some(StateMeta {
                next_seq: 10,
                members: vec![],
            }),
            runs: vec![run],
        };
        let mut metadata = SnapshotMetadata::default();
        metadata.set_index(20);
        metadata.set_term(7);
        metadata.set_conf_state(conf_state);
        store
            .apply_snapshot(&metadata, &snapshot_state, None)
            .unwrap();
        drop(storage);
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let storage = raft_storage(&store);
        assert_eq!(storage.first_index().unwrap(), 21);
        assert_eq!(storage.last_index().unwrap(), 20);
        assert_eq!(storage.term(20).unwrap(), 7);
        assert_eq!(store.applied_index().unwrap(), 20);
        assert_eq!(store.hard_state().unwrap().get_commit(), 20);
        let state = store.load_state().unwrap();
        assert_eq!(state.run_count(), 1);
        assert_eq!(state.meta().next_seq, 10);
        let built = storage.build_snapshot().unwrap();
        assert_eq!(built.get_metadata().get_index(), 20);
        assert_eq!(built.get_metadata().get_term(), 7);
    }

    /// A Ready may carry a snapshot AND entries after it (raft-rs fills both when a MsgSnapshot
    /// and a following MsgAppend are stepped before one Ready), with a hard state that already
    /// commits some of those entries. The snapshot is written first, the entries in the next
    /// batch: a crash between the two must restart. It used to write the Ready's commit index
    /// with the snapshot, past the end of the log, and raft-rs refused to start
    /// ("hs.commit 23 is out of range [20, 20]").
    #[test]
    fn a_crash_between_a_snapshot_and_the_entries_of_its_ready_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut conf_state = ConfState::default();
        conf_state.set_voters(vec![1, 2, 3]);
        {
            let store = Store::open(dir.path()).unwrap();
            let identity = Identity {
                cluster_id: 7,
                node_id: 2,
            };
            store
                .initialize(identity, &conf_state, &StateSnapshot::default(), 5, 5)
                .unwrap();
            let mut metadata = SnapshotMetadata::default();
            metadata.set_index(20);
            metadata.set_term(7);
            metadata.set_conf_state(conf_state.clone());
            let mut ready_hs = HardState::default();
            ready_hs.set_term(7);
            ready_hs.set_vote(1);
            ready_hs.set_commit(23);
            store
                .apply_snapshot(&metadata, &StateSnapshot::default(), Some(&ready_hs))
                .unwrap();
            // Killed here: entries 21..=23 of the same Ready are never written.
        }
        let store = Store::open(dir.path()).unwrap();
        let hard_state = store.hard_state().unwrap();
        assert_eq!(hard_state.get_commit(), 20);
        assert_eq!((hard_state.get_term(), hard_state.get_vote()), (7, 1));
        let config = raft::Config {
            id: 2,
            applied: store.applied_index().unwrap(),
            ..raft::Config::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let node = raft::RawNode::new(&config, raft_storage(&store), &logger).unwrap();
        assert_eq!(node.raft.raft_log.committed, 20);
        assert_eq!(node.raft.raft_log.last_index(), 20);
    }

    // ---- The entry cache ----

    fn entry_of(index: u64, term: u64, bytes: usize) -> Entry {
        let mut entry = Entry::default();
        entry.set_index(index);
        entry.set_term(term);
        entry.set_data(vec![b'a' + (index % 26) as u8; bytes].into());
        entry
    }

    fn small_cache(max_entries: usize, max_bytes: usize) -> CacheLimits {
        CacheLimits {
            max_entries,
            max_bytes,
        }
    }

    fn append(store: &Store, entries: &[Entry]) {
        store
            .persist(Persist {
                entries,
                ..Persist::default()
            })
            .unwrap();
    }

    fn cached_range(store: &Store) -> Option<(u64, u64)> {
        store.lock_cache().range()
    }

    /// Entries `low..high` read from RocksDB alone.
    fn disk_entries(store: &Store, low: u64, high: u64) -> Vec<Entry> {
        (low..high)
            .map(|i| store.entry(i).unwrap().expect("entry on disk"))
            .collect()
    }

    /// The cache holds exactly what the disk holds at its indexes, ends at the last index,
    /// starts after the truncation point, and whole-log reads through raft's interface equal
    /// the disk's.
    fn assert_cache_is_disk(storage: &RaftStorage) {
        let store = &storage.store;
        let (truncated, truncated_term) = store.truncated();
        let last = store.last_index.load(Ordering::SeqCst);
        {
            let cache = store.lock_cache();
            if let Some((first, cached_last)) = cache.range() {
                assert_eq!(cached_last, last, "the cache ends at the last index");
                assert!(
                    first > truncated,
                    "cache starts at {first}, truncated {truncated}"
                );
                assert_eq!(cache.entries.len() as u64, cached_last - first + 1);
                let mut bytes = 0;
                for cached in &cache.entries {
                    let on_disk = store.entry(cached.entry.get_index()).unwrap();
                    assert_eq!(Some(&cached.entry), on_disk.as_ref());
                    assert_eq!(
                        cached.size,
                        u64::from(protobuf::Message::compute_size(&on_disk.unwrap()))
                    );
                    bytes += cached.size as usize + CACHED_ENTRY_OVERHEAD;
                }
                assert_eq!(cache.bytes, bytes);
                assert!(cache.entries.len() <= cache.limits.max_entries.max(1));
                assert!(cache.entries.len() == 1 || cache.bytes <= cache.limits.max_bytes);
            }
        }
        // Nothing on disk past the last index, nor at or below the truncation point.
        assert_eq!(store.entry(last + 1).unwrap(), None);
        assert_eq!(store.scan_last_index().unwrap().max(truncated), last);
        if last > truncated {
            let all = storage
                .entries(
                    truncated + 1,
                    last + 1,
                    None,
                    GetEntriesContext::empty(false),
                )
                .unwrap();
            assert_eq!(all, disk_entries(store, truncated + 1, last + 1));
        }
        assert_eq!(storage.term(truncated).unwrap(), truncated_term);
        for index in truncated + 1..=last {
            assert_eq!(
                storage.term(index).unwrap(),
                store.entry(index).unwrap().unwrap().get_term()
            );
        }
        assert!(matches!(
            storage.term(last + 1),
            Err(raft::Error::Store(StorageError::Unavailable))
        ));
    }

    #[test]
    fn the_cache_holds_what_is_on_disk_after_appends_and_answers_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with_cache(dir.path(), small_cache(8, 1 << 20)).unwrap();
        let storage = raft_storage(&store);
        assert_eq!(cached_range(&store), None);
        let mut index = 1;
        for batch in [1, 3, 5, 2, 7] {
            let entries: Vec<_> = (index..index + batch).map(|i| entry_of(i, 1, 10)).collect();
            append(&store, &entries);
            index += batch;
            assert_cache_is_disk(&storage);
        }
        // 18 entries written, the last 8 cached.
        assert_eq!(cached_range(&store), Some((11, 18)));
        let before = store.cache_stats();
        let tail = storage
            .entries(11, 19, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(tail, disk_entries(&store, 11, 19));
        assert_eq!(storage.term(18).unwrap(), 1);
        let after = store.cache_stats();
        assert_eq!(
            (after.hits - before.hits, after.misses - before.misses),
            (9, 0)
        );
        // Older entries come from disk, and a read across the boundary from both.
        let across = storage
            .entries(8, 13, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(across, disk_entries(&store, 8, 13));
        let end = store.cache_stats();
        assert_eq!((end.hits - after.hits, end.misses - after.misses), (2, 3));
    }

    #[test]
    fn the_byte_bound_evicts_but_keeps_the_last_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with_cache(dir.path(), small_cache(100, 1000)).unwrap();
        let storage = raft_storage(&store);
        let entries: Vec<_> = (1..=10).map(|i| entry_of(i, 1, 300)).collect();
        append(&store, &entries);
        assert_cache_is_disk(&storage);
        let (first, last) = cached_range(&store).unwrap();
        assert_eq!(last, 10);
        assert!(first > 1 && first < 10, "cached {first}..={last}");
        // One entry larger than the whole bound is still cached, alone.
        append(&store, &[entry_of(11, 1, 5000)]);
        assert_eq!(cached_range(&store), Some((11, 11)));
        assert_cache_is_disk(&storage);
    }

    #[test]
    fn a_conflicting_suffix_is_replaced_in_the_cache_as_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with_cache(dir.path(), small_cache(6, 1 << 20)).unwrap();
        let storage = raft_storage(&store);
        let entries: Vec<_> = (1..=10).map(|i| entry_of(i, 1, 10)).collect();
        append(&store, &entries);
        assert_eq!(cached_range(&store), Some((5, 10)));
        // A new leader (term 2) overwrites from 8 on with a shorter log: 9 and 10 go away.
        append(&store, &[entry_of(8, 2, 20)]);
        assert_eq!(cached_range(&store), Some((5, 8)));
        assert_cache_is_disk(&storage);
        assert_eq!(storage.term(8).unwrap(), 2);
        assert_eq!(storage.term(7).unwrap(), 1);
        assert!(matches!(
            storage.entries(5, 10, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Unavailable))
        ));
        let got = storage
            .entries(7, 9, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(
            got.iter()
                .map(|e| (e.get_index(), e.get_term()))
                .collect::<Vec<_>>(),
            vec![(7, 1), (8, 2)]
        );
        // An overwrite from before the cached range (3) replaces the whole cache.
        append(&store, &[entry_of(3, 3, 10), entry_of(4, 3, 10)]);
        assert_eq!(cached_range(&store), Some((3, 4)));
        assert_cache_is_disk(&storage);
        assert_eq!(storage.term(4).unwrap(), 3);
        // An overwrite of exactly the cache's first entry, and of its whole range.
        append(&store, &[entry_of(3, 4, 10)]);
        assert_eq!(cached_range(&store), Some((3, 3)));
        assert_cache_is_disk(&storage);
        // More entries in one batch than the cache holds: only the last ones stay.
        let many: Vec<_> = (4..=20).map(|i| entry_of(i, 4, 10)).collect();
        append(&store, &many);
        assert_eq!(cached_range(&store), Some((15, 20)));
        assert_cache_is_disk(&storage);
    }

    #[test]
    fn compaction_removes_compacted_entries_from_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with_cache(dir.path(), small_cache(8, 1 << 20)).unwrap();
        let storage = raft_storage(&store);
        let entries: Vec<_> = (1..=10).map(|i| entry_of(i, 1 + i / 5, 10)).collect();
        append(&store, &entries);
        assert_eq!(cached_range(&store), Some((3, 10)));
        store.compact(6).unwrap();
        assert_eq!(cached_range(&store), Some((7, 10)));
        assert_cache_is_disk(&storage);
        assert_eq!(storage.term(6).unwrap(), 2);
        assert!(matches!(
            storage.entries(6, 8, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        // Compacting past the cached range's start when it starts later (a small cache).
        store.compact(10).unwrap();
        assert_eq!(cached_range(&store), None);
        assert_cache_is_disk(&storage);
        append(&store, &[entry_of(11, 3, 10)]);
        assert_eq!(cached_range(&store), Some((11, 11)));
        assert_cache_is_disk(&storage);
    }

    #[test]
    fn a_snapshot_or_initialisation_empties_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut conf_state = ConfState::default();
        conf_state.set_voters(vec![1, 2, 3]);
        let identity = Identity {
            cluster_id: 1,
            node_id: 2,
        };
        store
            .initialize(identity, &conf_state, &StateSnapshot::default(), 5, 5)
            .unwrap();
        let storage = raft_storage(&store);
        let entries: Vec<_> = (6..=30).map(|i| entry_of(i, 5, 10)).collect();
        append(&store, &entries);
        assert_eq!(cached_range(&store), Some((6, 30)));
        // A snapshot inside the cached range: the whole log goes, on disk and in memory.
        let mut metadata = SnapshotMetadata::default();
        metadata.set_index(20);
        metadata.set_term(7);
        metadata.set_conf_state(conf_state.clone());
        store
            .apply_snapshot(&metadata, &StateSnapshot::default(), None)
            .unwrap();
        assert_eq!(cached_range(&store), None);
        assert_cache_is_disk(&storage);
        assert!(matches!(
            storage.entries(21, 22, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Unavailable))
        ));
        append(&store, &[entry_of(21, 7, 10), entry_of(22, 7, 10)]);
        assert_eq!(cached_range(&store), Some((21, 22)));
        assert_cache_is_disk(&storage);
        // Initialising (a restore) replaces everything again.
        store
            .initialize(identity, &conf_state, &StateSnapshot::default(), 40, 9)
            .unwrap();
        assert_eq!(cached_range(&store), None);
        assert_cache_is_disk(&storage);
        assert_eq!(storage.last_index().unwrap(), 40);
    }

    #[test]
    fn after_a_restart_the_cache_is_empty_and_entries_come_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let written: Vec<_> = (1..=10)
            .map(|i| entry_of(i, 1 + i / 4, 10 + i as usize))
            .collect();
        {
            let store = Store::open(dir.path()).unwrap();
            append(&store, &written[..6]);
            append(&store, &written[6..]);
            assert_eq!(cached_range(&store), Some((1, 10)));
            // Stopped here (the cache is memory only; a kill -9 loses it the same way).
        }
        let store = Store::open(dir.path()).unwrap();
        let storage = raft_storage(&store);
        assert_eq!(cached_range(&store), None);
        let got = storage
            .entries(1, 11, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(got, written);
        assert_eq!(storage.term(10).unwrap(), 3);
        assert_eq!(
            store.cache_stats(),
            CacheStats {
                hits: 0,
                misses: 11
            }
        );
        // New entries are cached from where the log continues; older ones stay on disk.
        append(&store, &[entry_of(11, 3, 10)]);
        assert_eq!(cached_range(&store), Some((11, 11)));
        assert_cache_is_disk(&storage);
    }

    #[test]
    fn max_size_is_applied_as_raft_limit_size_does_across_cache_and_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with_cache(dir.path(), small_cache(10, 1 << 20)).unwrap();
        let storage = raft_storage(&store);
        // Varied sizes, so that limits fall between and on entry boundaries.
        let entries: Vec<_> = (1..=20)
            .map(|i| entry_of(i, 1, (i as usize * 37) % 200))
            .collect();
        append(&store, &entries);
        assert_eq!(cached_range(&store), Some((11, 20)));
        let sizes: Vec<u64> = entries
            .iter()
            .map(|e| u64::from(protobuf::Message::compute_size(e)))
            .collect();
        let mut limits = vec![None, Some(0), Some(1), Some(raft::NO_LIMIT)];
        for low in 0..20 {
            let mut total = 0;
            for size in &sizes[low..] {
                total += size;
                limits.extend([Some(total - 1), Some(total), Some(total + 1)]);
            }
        }
        for low in 1..=20 {
            for high in low + 1..=21 {
                for max_size in &limits {
                    let mut expected = disk_entries(&store, low, high);
                    raft::util::limit_size(&mut expected, *max_size);
                    let got = storage
                        .entries(low, high, *max_size, GetEntriesContext::empty(false))
                        .unwrap();
                    assert_eq!(got, expected, "entries({low}, {high}, {max_size:?})");
                    assert!(!got.is_empty());
                }
            }
        }
    }

    /// Random appends (with conflicting overwrites), compactions, snapshots and reopenings,
    /// with a small cache, checked against a model of the log and against the disk.
    #[test]
    fn the_cache_follows_random_log_changes() {
        let dir = tempfile::tempdir().unwrap();
        let limits = small_cache(7, 1500);
        let mut store = Store::open_with_cache(dir.path(), limits).unwrap();
        let mut storage = raft_storage(&store);
        let mut model: std::collections::BTreeMap<u64, Entry> = Default::default();
        let (mut truncated, mut truncated_term) = (0u64, 0u64);
        let mut term = 1;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut conf_state = ConfState::default();
        conf_state.set_voters(vec![1]);
        for step in 0..600 {
            let last = model.keys().next_back().copied().unwrap_or(truncated);
            match next() % 20 {
                0..=11 => {
                    // Append, from last + 1, or overwriting a suffix (a new term).
                    let from = if next() % 3 == 0 && last > truncated {
                        term += 1;
                        truncated + 1 + next() % (last - truncated)
                    } else {
                        last + 1
                    };
                    let count = 1 + next() % 9;
                    let entries: Vec<_> = (from..from + count)
                        .map(|i| entry_of(i, term, (next() % 400) as usize))
                        .collect();
                    append(&store, &entries);
                    model.retain(|index, _| *index < from);
                    model.extend(entries.into_iter().map(|e| (e.get_index(), e)));
                }
                12..=15 if last > truncated => {
                    let to = truncated + 1 + next() % (last - truncated);
                    store.compact(to).unwrap();
                    truncated_term = model[&to].get_term();
                    truncated = to;
                    model.retain(|index, _| *index > to);
                }
                16 => {
                    let index = last + next() % 5;
                    term += 1;
                    let mut metadata = SnapshotMetadata::default();
                    metadata.set_index(index);
                    metadata.set_term(term);
                    metadata.set_conf_state(conf_state.clone());
                    store
                        .apply_snapshot(&metadata, &StateSnapshot::default(), None)
                        .unwrap();
                    (truncated, truncated_term) = (index, term);
                    model.clear();
                }
                17 => {
                    drop(storage);
                    drop(store);
                    store = Store::open_with_cache(dir.path(), limits).unwrap();
                    storage = raft_storage(&store);
                    assert_eq!(cached_range(&store), None, "step {step}");
                }
                _ => {}
            }
            assert_eq!(
                store.truncated(),
                (truncated, truncated_term),
                "step {step}"
            );
            let last = model.keys().next_back().copied().unwrap_or(truncated);
            assert_eq!(storage.last_index().unwrap(), last, "step {step}");
            assert_cache_is_disk(&storage);
            if last > truncated {
                let low = truncated + 1 + next() % (last - truncated);
                let high = low + 1 + next() % (last + 1 - low);
                let max_size = [None, Some(0), Some(next() % 2000)][(next() % 3) as usize];
                let mut expected: Vec<Entry> =
                    model.range(low..high).map(|(_, e)| e.clone()).collect();
                raft::util::limit_size(&mut expected, max_size);
                let got = storage
                    .entries(low, high, max_size, GetEntriesContext::empty(false))
                    .unwrap();
                assert_eq!(
                    got, expected,
                    "step {step}: entries({low}, {high}, {max_size:?})"
                );
            }
        }
        let stats = store.cache_stats();
        assert!(stats.hits > 0 && stats.misses > 0, "{stats:?}");
    }
}

//! Durable Raft storage: `raft::Storage` over fjall.
//!
//! Layout, in one fjall [`Database`]:
//!
//! * keyspace `raft_log`: key = entry index as 8-byte big-endian, value = protobuf `Entry`.
//!   The keys present are always exactly `first_index..=last_index`.
//! * keyspace `raft_state`: `hard_state`, `conf_state`, `truncated` (index and term of the
//!   entry just before the first one kept, 16 bytes big-endian) and `snapshot_meta` (the
//!   metadata of the most recent snapshot).
//! * keyspace `snapshots`: key = snapshot index as 8-byte big-endian, value = the snapshot's
//!   data (the encoded state machine). Only the blob named by `snapshot_meta` counts; a blob
//!   written ahead of its metadata (a local snapshot is written off the raft thread, then
//!   recorded) and orphaned by a crash is removed on open.
//!
//! Every mutation is one atomic fjall write batch, so after a crash at any point the store is
//! either before or after that mutation. Batches that raft needs durable are synced (appends,
//! term and vote changes, snapshots, ConfStates); a commit-index-only HardState is not (see
//! [`must_sync`]). On open the log bounds
//! are rebuilt from the keys and checked for contiguity; any inconsistency is reported as
//! [`StorageError::Corrupt`] rather than guessed around.
//!
//! The most recent entries are kept in a bounded in-memory cache so the leader's hot path
//! (`entries()` for replication, `term()` for matching) rarely reads fjall.

mod cache;
mod codec;
mod error;

pub use error::StorageError;

use std::cmp;
use std::fmt;
use std::path::{Path, PathBuf};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch, PersistMode};

use cache::{EntryCache, SizeLimited};
use codec::{decode_entry, decode_log_key, decode_truncated, encode, encode_truncated, log_key};
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState};

const LOG_KEYSPACE: &str = "raft_log";
const STATE_KEYSPACE: &str = "raft_state";
const SNAPSHOT_KEYSPACE: &str = "snapshots";

const KEY_HARD_STATE: &[u8] = b"hard_state";
const KEY_CONF_STATE: &[u8] = b"conf_state";
const KEY_TRUNCATED: &[u8] = b"truncated";
const KEY_SNAPSHOT_META: &[u8] = b"snapshot_meta";

/// Default bound on the number of cached log entries.
const CACHE_MAX_ENTRIES: usize = 4096;
/// Default bound on the encoded size of cached log entries.
const CACHE_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Whether a Ready must be fsynced before its messages go out and its entries are applied:
/// when it appends entries, or changes the term or the vote (etcd's `raft.MustSync`). A
/// HardState that only moves the commit index is written to the journal without an fsync:
/// it reaches the disk with the next fsynced batch (the journal is appended in order), and
/// losing it in a crash is harmless, because a restarted member learns the commit index
/// again from the leader and only ever applies committed entries. Without this, every commit
/// costs a second fsync on the path from commit to apply.
pub fn must_sync(stored: &HardState, entries: &[Entry], hard_state: Option<&HardState>) -> bool {
    !entries.is_empty()
        || hard_state.is_some_and(|hs| hs.term != stored.term || hs.vote != stored.vote)
}

/// Commits `batch` atomically and fsyncs the journal before returning.
fn commit_synced(batch: OwnedWriteBatch) -> Result<(), StorageError> {
    batch.durability(Some(PersistMode::SyncAll)).commit()?;
    Ok(())
}

/// Writes snapshot data off the raft thread. Cheap to clone.
#[derive(Clone)]
pub struct SnapshotWriter {
    db: Database,
    snapshots: Keyspace,
}

impl fmt::Debug for SnapshotWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotWriter").finish_non_exhaustive()
    }
}

impl SnapshotWriter {
    /// Writes the data of a snapshot at `index`, fsynced. It counts only once
    /// [`FjallStorage::record_snapshot`] records its metadata.
    pub fn write(&self, index: u64, data: &[u8]) -> Result<(), StorageError> {
        let mut batch = self.db.batch();
        batch.insert(&self.snapshots, log_key(index), data);
        commit_synced(batch)
    }
}

/// `raft::Storage` over a fjall database. See the module docs for the layout.
pub struct FjallStorage {
    dir: PathBuf,
    db: Database,
    log: Keyspace,
    state: Keyspace,
    snapshots: Keyspace,
    hard_state: HardState,
    conf_state: ConfState,
    /// Index and term of the entry just before the first one kept (0, 0 when nothing was
    /// ever compacted).
    truncated_index: u64,
    truncated_term: u64,
    last_index: u64,
    snapshot_meta: Option<SnapshotMetadata>,
    initialized: bool,
    cache: EntryCache,
    /// Set when raft asked for a snapshot the stored one cannot serve (its
    /// configuration predates the peer); the driver asks for a new one.
    snapshot_wanted: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for FjallStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FjallStorage")
            .field("dir", &self.dir)
            .field("first_index", &self.first_index_inner())
            .field("last_index", &self.last_index)
            .field("truncated_term", &self.truncated_term)
            .field("hard_state", &self.hard_state)
            .field("conf_state", &self.conf_state)
            .field(
                "snapshot_index",
                &self.snapshot_meta.as_ref().map(|m| m.index),
            )
            .field("initialized", &self.initialized)
            .field("cached_entries", &self.cache.len())
            .finish_non_exhaustive()
    }
}

impl FjallStorage {
    /// Opens (creating if absent) the raft storage in `dir` (a fjall Database directory).
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        Self::open_with_cache_limits(dir, CACHE_MAX_ENTRIES, CACHE_MAX_BYTES)
    }

    fn open_with_cache_limits(
        dir: &Path,
        cache_entries: usize,
        cache_bytes: u64,
    ) -> Result<Self, StorageError> {
        let db = Database::builder(dir).open()?;
        let log = db.keyspace(LOG_KEYSPACE, KeyspaceCreateOptions::default)?;
        let state = db.keyspace(STATE_KEYSPACE, KeyspaceCreateOptions::default)?;
        let snapshots = db.keyspace(SNAPSHOT_KEYSPACE, KeyspaceCreateOptions::default)?;

        let hard_state = state
            .get(KEY_HARD_STATE)?
            .map(|v| HardState::parse_from_bytes(&v))
            .transpose()?;
        let conf_state = state
            .get(KEY_CONF_STATE)?
            .map(|v| ConfState::parse_from_bytes(&v))
            .transpose()?;
        let truncated = state
            .get(KEY_TRUNCATED)?
            .map(|v| decode_truncated(&v))
            .transpose()?;
        let snapshot_meta = state
            .get(KEY_SNAPSHOT_META)?
            .map(|v| SnapshotMetadata::parse_from_bytes(&v))
            .transpose()?;
        let initialized = hard_state.is_some()
            || conf_state.is_some()
            || truncated.is_some()
            || snapshot_meta.is_some();
        let (truncated_index, truncated_term) = truncated.unwrap_or((0, 0));

        // The log must hold exactly the keys truncated_index+1 ..= last.
        let mut expected = truncated_index + 1;
        for guard in log.iter() {
            let idx = decode_log_key(&guard.key()?)?;
            if idx != expected {
                return Err(StorageError::Corrupt(format!(
                    "raft log not contiguous: expected index {expected}, found {idx} \
                     (truncated index {truncated_index})"
                )));
            }
            expected += 1;
        }
        let last_index = expected - 1;

        let hard_state = hard_state.unwrap_or_default();
        if hard_state.commit > last_index || hard_state.commit < truncated_index {
            return Err(StorageError::Corrupt(format!(
                "hard state commit {} outside [{truncated_index}, {last_index}] \
                 (truncated index, last index)",
                hard_state.commit
            )));
        }
        if let Some(meta) = &snapshot_meta
            && meta.index > last_index
        {
            return Err(StorageError::Corrupt(format!(
                "snapshot index {} beyond last index {last_index}",
                meta.index
            )));
        }
        let current_blob = snapshot_meta.as_ref().map(|m| log_key(m.index));
        if let Some(key) = &current_blob
            && !snapshots.contains_key(key)?
        {
            return Err(StorageError::Corrupt(format!(
                "snapshot metadata at index {} without its data",
                snapshot_meta.as_ref().map_or(0, |m| m.index)
            )));
        }
        let mut orphans = db.batch();
        let mut orphaned = 0;
        for guard in snapshots.iter() {
            let key = guard.key()?;
            if current_blob.as_ref().is_none_or(|k| k[..] != key[..]) {
                orphans.remove(&snapshots, key.to_vec());
                orphaned += 1;
            }
        }
        if orphaned > 0 {
            tracing::info!(orphaned, "removing snapshot data that was never recorded");
            commit_synced(orphans)?;
        }

        let mut storage = Self {
            dir: dir.to_path_buf(),
            db,
            log,
            state,
            snapshots,
            hard_state,
            conf_state: conf_state.unwrap_or_default(),
            truncated_index,
            truncated_term,
            last_index,
            snapshot_meta,
            initialized,
            cache: EntryCache::new(cache_entries, cache_bytes),
            snapshot_wanted: std::sync::atomic::AtomicBool::new(false),
        };
        storage.warm_cache()?;
        tracing::debug!(storage = ?storage, "opened raft storage");
        Ok(storage)
    }

    /// Loads the most recent entries into the cache.
    fn warm_cache(&mut self) -> Result<(), StorageError> {
        let first = self.first_index_inner();
        let n = u64::try_from(self.cache.max_entries).unwrap_or(u64::MAX);
        let start = cmp::max(first, (self.last_index + 1).saturating_sub(n));
        if start > self.last_index {
            return Ok(());
        }
        let mut ents = Vec::new();
        let mut expected = start;
        for guard in self.log.range(log_key(start)..) {
            let (k, v) = guard.into_inner()?;
            let idx = decode_log_key(&k)?;
            if idx != expected {
                return Err(StorageError::Corrupt(format!(
                    "raft log not contiguous: expected index {expected}, found {idx}"
                )));
            }
            ents.push(decode_entry(idx, &v)?);
            expected += 1;
        }
        if expected != self.last_index + 1 {
            return Err(StorageError::Corrupt(format!(
                "raft log ends at {} but last index is {}",
                expected - 1,
                self.last_index
            )));
        }
        self.cache.append(&ents);
        Ok(())
    }

    /// True once a HardState, a ConfState or a snapshot was ever persisted (i.e. the member was
    /// bootstrapped).
    pub fn is_initialized(&self) -> bool {
        self.initialized
    }

    /// Bootstrap of a fresh member of a static cluster: record `conf_state` (voters) as of
    /// index 0 term 0, persisted and fsynced.
    pub fn initialize_with_conf_state(
        &mut self,
        conf_state: ConfState,
    ) -> Result<(), StorageError> {
        if self.initialized || self.last_index != 0 {
            return Err(StorageError::AlreadyInitialized);
        }
        let hard_state = HardState::default();
        let mut batch = self.db.batch();
        batch.insert(&self.state, KEY_CONF_STATE, encode(&conf_state)?);
        batch.insert(&self.state, KEY_HARD_STATE, encode(&hard_state)?);
        batch.insert(&self.state, KEY_TRUNCATED, encode_truncated(0, 0));
        commit_synced(batch)?;
        self.conf_state = conf_state;
        self.hard_state = hard_state;
        self.truncated_index = 0;
        self.truncated_term = 0;
        self.initialized = true;
        Ok(())
    }

    /// Persists one Ready: appends `entries` (truncating any existing suffix starting at
    /// `entries[0].index`) and the HardState if given, in ONE fjall batch, fsynced before
    /// returning when it must be (see [`must_sync`]). Either may be empty/None.
    ///
    /// Errors if the entries are not consecutive, start before the first index, after
    /// `last_index + 1` or at/below the persisted commit index (raft-rs itself refuses that),
    /// or if the resulting commit index would lie beyond the last entry or below the truncated
    /// index.
    pub fn persist(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StorageError> {
        // fdatasync, like etcd's WAL: it flushes the data and the file size, which is all a
        // journal append needs to be readable after a crash.
        let durability = match must_sync(&self.hard_state, entries, hard_state) {
            true => PersistMode::SyncData,
            false => PersistMode::Buffer,
        };
        self.write(entries, hard_state, durability)
    }

    /// [`FjallStorage::persist`] with a chosen durability.
    fn write(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
        durability: PersistMode,
    ) -> Result<(), StorageError> {
        if entries.is_empty() && hard_state.is_none() {
            return Ok(());
        }
        let mut batch = self.db.batch();
        let mut new_last = self.last_index;
        if let Some(first) = entries.first() {
            let start = first.index;
            let first_index = self.first_index_inner();
            if start < first_index {
                return Err(StorageError::AppendCompacted {
                    index: start,
                    first_index,
                });
            }
            if start > self.last_index + 1 {
                return Err(StorageError::AppendGap {
                    index: start,
                    last_index: self.last_index,
                });
            }
            if start <= self.hard_state.commit {
                return Err(StorageError::OverwriteCommitted {
                    index: start,
                    commit: self.hard_state.commit,
                });
            }
            for (expected, e) in (start..).zip(entries) {
                if e.index != expected {
                    return Err(StorageError::NotContiguous {
                        expected,
                        found: e.index,
                    });
                }
                batch.insert(&self.log, log_key(e.index), encode(e)?);
            }
            new_last = start + entries.len() as u64 - 1;
            for idx in new_last + 1..=self.last_index {
                batch.remove(&self.log, log_key(idx));
            }
        }
        let commit = hard_state.map_or(self.hard_state.commit, |hs| hs.commit);
        if commit > new_last {
            return Err(StorageError::CommitBeyondLast {
                commit,
                last_index: new_last,
            });
        }
        if commit < self.truncated_index {
            return Err(StorageError::CommitBelowTruncated {
                commit,
                truncated_index: self.truncated_index,
            });
        }
        if let Some(hs) = hard_state {
            batch.insert(&self.state, KEY_HARD_STATE, encode(hs)?);
        }
        batch.durability(Some(durability)).commit()?;

        if let Some(first) = entries.first() {
            self.cache.truncate_from(first.index);
            self.cache.append(entries);
            self.last_index = new_last;
        }
        if let Some(hs) = hard_state {
            self.hard_state = hs.clone();
            self.initialized = true;
        }
        Ok(())
    }

    /// Updates only the commit index of the HardState (from a LightReady). Written in the same
    /// atomic way but **not fsynced**: it reaches the disk with the next fsynced batch. Losing
    /// it in a crash is harmless (raft learns the commit index again from the leader), and an
    /// fsync here would double the fsyncs per Ready. Errors if `commit` is beyond the last
    /// index or below the truncated index.
    pub fn set_commit(&mut self, commit: u64) -> Result<(), StorageError> {
        if commit == self.hard_state.commit && self.initialized {
            return Ok(());
        }
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.write(&[], Some(&hs), PersistMode::Buffer)
    }

    /// Records a new ConfState (after applying a conf change), persisted.
    pub fn set_conf_state(&mut self, conf_state: ConfState) -> Result<(), StorageError> {
        let mut batch = self.db.batch();
        batch.insert(&self.state, KEY_CONF_STATE, encode(&conf_state)?);
        commit_synced(batch)?;
        self.conf_state = conf_state;
        self.initialized = true;
        Ok(())
    }

    /// Removes log entries below `compact_index` (point removes in one batch), recording the
    /// truncated index/term so `term(first_index - 1)` still answers. At or below the first
    /// index this is a no-op; beyond `last_index + 1` it is an error, and so is beyond
    /// `commit + 1` (uncommitted entries must stay). `compact_index == last_index + 1` removes
    /// every entry.
    pub fn compact(&mut self, compact_index: u64) -> Result<(), StorageError> {
        let first_index = self.first_index_inner();
        if compact_index <= first_index {
            return Ok(());
        }
        if compact_index > self.last_index + 1 {
            return Err(StorageError::CompactBeyondLast {
                compact_index,
                last_index: self.last_index,
            });
        }
        if compact_index > self.hard_state.commit + 1 {
            return Err(StorageError::CompactBeyondCommit {
                compact_index,
                commit: self.hard_state.commit,
            });
        }
        let truncated_index = compact_index - 1;
        let truncated_term = self.term_in_log(truncated_index)?;
        let mut batch = self.db.batch();
        for idx in first_index..compact_index {
            batch.remove(&self.log, log_key(idx));
        }
        batch.insert(
            &self.state,
            KEY_TRUNCATED,
            encode_truncated(truncated_index, truncated_term),
        );
        commit_synced(batch)?;
        self.truncated_index = truncated_index;
        self.truncated_term = truncated_term;
        self.cache.compact_to(compact_index);
        self.initialized = true;
        Ok(())
    }

    /// Stores a snapshot produced locally (its data + metadata); later `snapshot()` returns it.
    /// Does not touch the log. The snapshot must not be older than the stored one or the
    /// truncation point, must not be beyond the persisted commit index, and its term must match
    /// the log.
    pub fn store_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        let meta = snapshot.get_metadata();
        self.check_local_snapshot(meta)?;
        let mut batch = self.db.batch();
        batch.insert(&self.snapshots, log_key(meta.index), snapshot.get_data());
        self.record_in(&mut batch, meta)?;
        commit_synced(batch)?;
        self.snapshot_meta = Some(meta.clone());
        self.initialized = true;
        Ok(())
    }

    /// A handle that writes snapshot data from another thread, ahead of
    /// [`FjallStorage::record_snapshot`].
    pub fn snapshot_writer(&self) -> SnapshotWriter {
        SnapshotWriter {
            db: self.db.clone(),
            snapshots: self.snapshots.clone(),
        }
    }

    /// Makes the snapshot whose data a [`SnapshotWriter`] wrote at `meta.index` the one
    /// `snapshot()` returns, and drops the previous one's data. Same checks as
    /// [`FjallStorage::store_snapshot`]; also errors if the data is missing.
    pub fn record_snapshot(&mut self, meta: &SnapshotMetadata) -> Result<(), StorageError> {
        self.check_local_snapshot(meta)?;
        if !self.snapshots.contains_key(log_key(meta.index))? {
            return Err(StorageError::InvalidSnapshot(format!(
                "no snapshot data was written at index {}",
                meta.index
            )));
        }
        let mut batch = self.db.batch();
        self.record_in(&mut batch, meta)?;
        commit_synced(batch)?;
        self.snapshot_meta = Some(meta.clone());
        self.initialized = true;
        Ok(())
    }

    /// Adds the metadata of a new current snapshot to `batch`, and the removal of the
    /// previous snapshot's data.
    fn record_in(
        &self,
        batch: &mut OwnedWriteBatch,
        meta: &SnapshotMetadata,
    ) -> Result<(), StorageError> {
        batch.insert(&self.state, KEY_SNAPSHOT_META, encode(meta)?);
        if let Some(previous) = &self.snapshot_meta
            && previous.index != meta.index
        {
            batch.remove(&self.snapshots, log_key(previous.index).to_vec());
        }
        Ok(())
    }

    /// The checks of a locally produced snapshot against the log.
    fn check_local_snapshot(&self, meta: &SnapshotMetadata) -> Result<(), StorageError> {
        let index = meta.index;
        let older_than_stored = self.snapshot_meta.as_ref().is_some_and(|m| index < m.index);
        if older_than_stored || index < self.truncated_index {
            return Err(StorageError::SnapshotOutOfDate {
                index,
                first_index: self.first_index_inner(),
            });
        }
        if index > self.hard_state.commit {
            return Err(StorageError::InvalidSnapshot(format!(
                "snapshot index {index} beyond commit index {}",
                self.hard_state.commit
            )));
        }
        let term = if index == self.truncated_index {
            self.truncated_term
        } else {
            self.term_in_log(index)?
        };
        if term != meta.term {
            return Err(StorageError::InvalidSnapshot(format!(
                "snapshot at index {index} has term {} but the log has term {term}",
                meta.term
            )));
        }
        Ok(())
    }

    /// Installs a snapshot received from the leader: replaces the log, sets the hard state's
    /// commit to the snapshot index and its term to at least the snapshot term, and the conf
    /// state to the snapshot's, like `MemStorage::apply_snapshot`, atomically (one batch,
    /// fsynced). The snapshot also becomes the one `snapshot()` returns. Errors if it is older
    /// than the current first index.
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        let meta = snapshot.get_metadata();
        let index = meta.index;
        let first_index = self.first_index_inner();
        if first_index > index {
            return Err(StorageError::SnapshotOutOfDate { index, first_index });
        }
        let mut hard_state = self.hard_state.clone();
        hard_state.term = cmp::max(hard_state.term, meta.term);
        hard_state.commit = index;
        let conf_state = meta.get_conf_state().clone();

        let mut batch = self.db.batch();
        for idx in first_index..=self.last_index {
            batch.remove(&self.log, log_key(idx));
        }
        batch.insert(
            &self.state,
            KEY_TRUNCATED,
            encode_truncated(index, meta.term),
        );
        batch.insert(&self.state, KEY_HARD_STATE, encode(&hard_state)?);
        batch.insert(&self.state, KEY_CONF_STATE, encode(&conf_state)?);
        batch.insert(&self.snapshots, log_key(index), snapshot.get_data());
        self.record_in(&mut batch, meta)?;
        commit_synced(batch)?;

        self.truncated_index = index;
        self.truncated_term = meta.term;
        self.last_index = index;
        self.cache.clear();
        self.hard_state = hard_state;
        self.conf_state = conf_state;
        self.snapshot_meta = Some(meta.clone());
        self.initialized = true;
        Ok(())
    }

    /// The fjall database, so the node layer can keep its own keyspace (member metadata) in the
    /// same directory.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The persisted hard state.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The persisted conf state.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// Whether raft asked for a snapshot newer than the stored one since the
    /// last call (clears the request).
    pub fn take_snapshot_request(&self) -> bool {
        self.snapshot_wanted
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    /// The data of the snapshot at `index`.
    pub fn snapshot_data(&self, index: u64) -> Result<Vec<u8>, StorageError> {
        let data = self.snapshots.get(log_key(index))?.ok_or_else(|| {
            StorageError::Corrupt(format!("snapshot data at index {index} is missing"))
        })?;
        Ok(data.to_vec())
    }

    /// Metadata of the stored snapshot, if any.
    pub fn snapshot_metadata(&self) -> Option<&SnapshotMetadata> {
        self.snapshot_meta.as_ref()
    }

    fn first_index_inner(&self) -> u64 {
        self.truncated_index + 1
    }

    /// Reads one entry, from the cache or fjall. `idx` must be in `first..=last`.
    fn read_entry(&self, idx: u64) -> Result<Entry, StorageError> {
        if let Some(e) = self.cache.get(idx) {
            return Ok(e.clone());
        }
        let v = self
            .log
            .get(log_key(idx))?
            .ok_or_else(|| StorageError::Corrupt(format!("log entry {idx} missing")))?;
        decode_entry(idx, &v)
    }

    /// Term of an entry in `first..=last`.
    fn term_in_log(&self, idx: u64) -> Result<u64, StorageError> {
        if let Some(e) = self.cache.get(idx) {
            return Ok(e.term);
        }
        Ok(self.read_entry(idx)?.term)
    }

    fn entries_inner(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first_index_inner() {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > self.last_index + 1 {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        if low > high {
            return Err(StorageError::InvalidRange { low, high }.into());
        }
        let count = usize::try_from(high - low).unwrap_or(usize::MAX);
        let mut out = SizeLimited::new(max_size, cmp::min(count, 1024));

        // Entries before the cache come from fjall.
        let cache_first = self.cache.first_index().unwrap_or(self.last_index + 1);
        let disk_high = cmp::min(high, cache_first);
        if low < disk_high {
            let mut expected = low;
            for guard in self.log.range(log_key(low)..log_key(disk_high)) {
                let (k, v) = guard.into_inner().map_err(StorageError::from)?;
                let idx = decode_log_key(&k)?;
                if idx != expected {
                    return Err(StorageError::Corrupt(format!(
                        "log entry {expected} missing (found {idx})"
                    ))
                    .into());
                }
                expected += 1;
                if !out.push(decode_entry(idx, &v)?) {
                    return Ok(out.out);
                }
            }
            if expected != disk_high {
                return Err(StorageError::Corrupt(format!("log entry {expected} missing")).into());
            }
        }
        for idx in cmp::max(low, cache_first)..high {
            let Some(e) = self.cache.get(idx) else {
                return Err(StorageError::Corrupt(format!("cache lost entry {idx}")).into());
            };
            if !out.push(e.clone()) {
                break;
            }
        }
        Ok(out.out)
    }
}

impl raft::Storage for FjallStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.entries_inner(low, high, max_size.into())
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.truncated_index {
            return Ok(self.truncated_term);
        }
        if idx < self.first_index_inner() {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if idx > self.last_index {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        Ok(self.term_in_log(idx)?)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first_index_inner())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // A peer added after the stored snapshot was taken would refuse it
        // (raft-rs ignores a snapshot whose configuration lacks the
        // receiver): ask for a new one, and let raft retry.
        let includes_peer = self.snapshot_meta.as_ref().is_some_and(|m| {
            let conf = m.get_conf_state();
            conf.voters.contains(&to) || conf.learners.contains(&to)
        });
        if !includes_peer {
            self.snapshot_wanted
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let available = self
            .snapshot_meta
            .as_ref()
            .is_some_and(|m| m.index >= request_index);
        if !available {
            return Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let Some(meta) = &self.snapshot_meta else {
            return Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        };
        let data = self.snapshot_data(meta.index)?;
        let mut snapshot = Snapshot::default();
        snapshot.set_metadata(meta.clone());
        snapshot.set_data(data.into());
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests;

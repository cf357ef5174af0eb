//! Conformance suite for [`FjallStorage`].
//!
//! The generic cases run against raft's own `MemStorage` (the reference semantics) and against
//! `FjallStorage` with the default cache and with a tiny cache (so reads straddle fjall and the
//! cache). Every write in the generic cases is followed by a reopen check, which for
//! `FjallStorage` drops the database and opens it again and must give the same answers.
//!
//! The cases are split by what they check: [`conformance`] (the generic cases, on every
//! implementation), [`fjall_only`] (what only `FjallStorage` promises: durability of each
//! write, the truncated term, bounds, snapshots, the cache), [`on_open`] (damage found when
//! opening) and [`props`] (random operation sequences against `MemStorage`).

mod conformance;
mod fjall_only;
mod on_open;
mod props;

use std::panic::{AssertUnwindSafe, catch_unwind};

use proptest::prelude::*;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::storage::MemStorage;
use raft::{Error as RaftError, GetEntriesContext, Storage, StorageError as RaftStorageError};
use tempfile::TempDir;

use super::{
    CACHE_MAX_BYTES, CACHE_MAX_ENTRIES, FjallStorage, KEY_HARD_STATE, KEY_TRUNCATED, LOG_KEYSPACE,
    STATE_KEYSPACE, StorageError,
};

// ---------------------------------------------------------------------------------------------
// helpers

fn ent(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        ..Default::default()
    }
}

fn ent_data(index: u64, term: u64, len: usize) -> Entry {
    let mut e = ent(index, term);
    e.data = vec![(index % 251) as u8; len].into();
    e
}

fn ents(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    range.map(|i| ent(i, term)).collect()
}

fn snap(index: u64, term: u64, voters: Vec<u64>) -> Snapshot {
    let mut s = Snapshot::default();
    s.mut_metadata().index = index;
    s.mut_metadata().term = term;
    s.mut_metadata().mut_conf_state().voters = voters;
    s
}

fn hs(term: u64, vote: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote,
        commit,
        ..Default::default()
    }
}

fn voters(v: Vec<u64>) -> ConfState {
    ConfState {
        voters: v,
        ..Default::default()
    }
}

fn ctx() -> GetEntriesContext {
    GetEntriesContext::empty(false)
}

fn size_of(e: &Entry) -> u64 {
    u64::from(e.compute_size())
}

const COMPACTED: RaftError = RaftError::Store(RaftStorageError::Compacted);
const UNAVAILABLE: RaftError = RaftError::Store(RaftStorageError::Unavailable);

/// The write side every implementation under test offers.
trait TestLog: Storage {
    fn append(&mut self, ents: &[Entry]) -> Result<(), String>;
    fn set_hard_state(&mut self, hs: HardState) -> Result<(), String>;
    fn set_conf(&mut self, cs: ConfState) -> Result<(), String>;
    fn compact(&mut self, compact_index: u64) -> Result<(), String>;
    fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<(), String>;
    /// Simulates a restart (no-op for in-memory storage).
    fn reopen(&mut self);
}

impl TestLog for MemStorage {
    fn append(&mut self, ents: &[Entry]) -> Result<(), String> {
        // MemStorage::append panics on these two; report them as errors so the suite can check
        // that both implementations refuse them.
        if let Some(e) = ents.first() {
            let (first, last) = (self.first_index().unwrap(), self.last_index().unwrap());
            if e.index < first {
                return Err(format!("append at {} below first index {first}", e.index));
            }
            if e.index > last + 1 {
                return Err(format!("append at {} leaves gap after {last}", e.index));
            }
        }
        self.wl().append(ents).map_err(|e| e.to_string())
    }

    fn set_hard_state(&mut self, hs: HardState) -> Result<(), String> {
        self.wl().set_hardstate(hs);
        Ok(())
    }

    fn set_conf(&mut self, cs: ConfState) -> Result<(), String> {
        self.wl().set_conf_state(cs);
        Ok(())
    }

    fn compact(&mut self, compact_index: u64) -> Result<(), String> {
        // MemStorage::compact panics here; see `append`.
        let last = self.last_index().unwrap();
        if compact_index > last + 1 {
            return Err(format!("compact to {compact_index} beyond last {last}"));
        }
        self.wl().compact(compact_index).map_err(|e| e.to_string())
    }

    fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<(), String> {
        self.wl()
            .apply_snapshot(snapshot)
            .map_err(|e| e.to_string())
    }

    fn reopen(&mut self) {}
}

/// A `FjallStorage` on a temporary directory that can be closed and reopened.
struct FjallLog {
    dir: TempDir,
    store: Option<FjallStorage>,
    cache_entries: usize,
    cache_bytes: u64,
}

impl FjallLog {
    fn new(cache_entries: usize, cache_bytes: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store =
            FjallStorage::open_with_cache_limits(dir.path(), cache_entries, cache_bytes).unwrap();
        Self {
            dir,
            store: Some(store),
            cache_entries,
            cache_bytes,
        }
    }

    fn s(&self) -> &FjallStorage {
        self.store.as_ref().unwrap()
    }

    fn s_mut(&mut self) -> &mut FjallStorage {
        self.store.as_mut().unwrap()
    }
}

impl Storage for FjallLog {
    fn initial_state(&self) -> raft::Result<raft::RaftState> {
        self.s().initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.s().entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.s().term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.s().first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.s().last_index()
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        self.s().snapshot(request_index, to)
    }
}

impl TestLog for FjallLog {
    fn append(&mut self, ents: &[Entry]) -> Result<(), String> {
        self.s_mut().persist(ents, None).map_err(|e| e.to_string())
    }

    fn set_hard_state(&mut self, hs: HardState) -> Result<(), String> {
        self.s_mut()
            .persist(&[], Some(&hs))
            .map_err(|e| e.to_string())
    }

    fn set_conf(&mut self, cs: ConfState) -> Result<(), String> {
        self.s_mut().set_conf_state(cs).map_err(|e| e.to_string())
    }

    fn compact(&mut self, compact_index: u64) -> Result<(), String> {
        self.s_mut()
            .compact(compact_index)
            .map_err(|e| e.to_string())
    }

    fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<(), String> {
        self.s_mut()
            .apply_snapshot(snapshot)
            .map_err(|e| e.to_string())
    }

    fn reopen(&mut self) {
        // The database must be closed (lock released) before it is opened again.
        drop(self.store.take());
        self.store = Some(
            FjallStorage::open_with_cache_limits(
                self.dir.path(),
                self.cache_entries,
                self.cache_bytes,
            )
            .unwrap(),
        );
    }
}

fn new_mem() -> MemStorage {
    MemStorage::new()
}

fn new_fjall() -> FjallLog {
    FjallLog::new(CACHE_MAX_ENTRIES, CACHE_MAX_BYTES)
}

fn new_fjall_tiny_cache() -> FjallLog {
    FjallLog::new(2, 1024)
}

/// Everything the read side of `Storage` answers about a log (the snapshot aside).
#[derive(Debug, PartialEq)]
struct Answers {
    first: u64,
    last: u64,
    hard_state: HardState,
    conf_state: ConfState,
    terms: Vec<(u64, raft::Result<u64>)>,
    entries: Option<raft::Result<Vec<Entry>>>,
}

fn answers<S: Storage>(s: &S) -> Answers {
    let first = s.first_index().unwrap();
    let last = s.last_index().unwrap();
    let state = s.initial_state().unwrap();
    let terms = (first.saturating_sub(3)..=last + 2)
        .map(|i| (i, s.term(i)))
        .collect();
    // MemStorage::entries indexes its vector even for empty ranges, so only ask when there
    // are entries.
    let entries = (last >= first).then(|| s.entries(first, last + 1, None, ctx()));
    Answers {
        first,
        last,
        hard_state: state.hard_state,
        conf_state: state.conf_state,
        terms,
        entries,
    }
}

/// Reopens and checks that nothing observable changed.
fn check_reopen<L: TestLog>(l: &mut L) {
    let before = answers(l);
    l.reopen();
    let after = answers(l);
    assert_eq!(before, after, "answers changed across reopen");
}

/// Applies a snapshot at (`index`, `term`) when `index > 0`, then appends `entries`.
fn setup<L: TestLog>(l: &mut L, index: u64, term: u64, entries: &[Entry]) {
    if index > 0 {
        l.apply_snapshot(snap(index, term, vec![1, 2, 3])).unwrap();
        check_reopen(l);
    }
    l.append(entries).unwrap();
    check_reopen(l);
}

fn open_tmp() -> (TempDir, FjallStorage) {
    let dir = tempfile::tempdir().unwrap();
    let s = FjallStorage::open(dir.path()).unwrap();
    (dir, s)
}

fn reopen(dir: &TempDir, s: FjallStorage) -> FjallStorage {
    drop(s);
    FjallStorage::open(dir.path()).unwrap()
}

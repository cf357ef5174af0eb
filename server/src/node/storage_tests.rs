//! Conformance suite for [`FjallStorage`].
//!
//! The generic cases run against raft's own `MemStorage` (the reference semantics) and against
//! `FjallStorage` with the default cache and with a tiny cache (so reads straddle fjall and the
//! cache). Every write in the generic cases is followed by a reopen check, which for
//! `FjallStorage` drops the database and opens it again and must give the same answers.

use std::panic::{AssertUnwindSafe, catch_unwind};

use proptest::prelude::*;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::storage::MemStorage;
use raft::{Error as RaftError, GetEntriesContext, Storage, StorageError as RaftStorageError};
use tempfile::TempDir;

use super::{FjallStorage, StorageError};

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
    FjallLog::new(super::CACHE_MAX_ENTRIES, super::CACHE_MAX_BYTES)
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

// ---------------------------------------------------------------------------------------------
// generic conformance cases

fn empty_storage<L: TestLog>(mut l: L) {
    assert_eq!(l.first_index(), Ok(1));
    assert_eq!(l.last_index(), Ok(0));
    assert_eq!(l.term(0), Ok(0));
    assert_eq!(l.term(1), Err(UNAVAILABLE));
    let state = l.initial_state().unwrap();
    assert_eq!(state.hard_state, HardState::default());
    assert_eq!(state.conf_state, ConfState::default());
    check_reopen(&mut l);
    // Empty appends are no-ops.
    l.append(&[]).unwrap();
    assert_eq!(l.last_index(), Ok(0));
    check_reopen(&mut l);
}

fn append_and_read<L: TestLog>(mut l: L) {
    l.append(&ents(1..=3, 1)).unwrap();
    check_reopen(&mut l);
    l.append(&[ent(4, 2), ent(5, 2)]).unwrap();
    check_reopen(&mut l);
    assert_eq!(l.first_index(), Ok(1));
    assert_eq!(l.last_index(), Ok(5));
    for (i, t) in [(0, 0), (1, 1), (2, 1), (3, 1), (4, 2), (5, 2)] {
        assert_eq!(l.term(i), Ok(t), "term({i})");
    }
    assert_eq!(l.term(6), Err(UNAVAILABLE));
    let want = vec![ent(1, 1), ent(2, 1), ent(3, 1), ent(4, 2), ent(5, 2)];
    assert_eq!(l.entries(1, 6, None, ctx()), Ok(want.clone()));
    assert_eq!(l.entries(2, 4, None, ctx()), Ok(want[1..3].to_vec()));
    assert_eq!(l.entries(3, 3, None, ctx()), Ok(vec![]));
}

fn append_overwrites_conflicting_suffix<L: TestLog>(mut l: L) {
    l.append(&ents(1..=5, 1)).unwrap();
    check_reopen(&mut l);

    // Shorter conflicting suffix: 4 and 5 go, 3 is replaced.
    l.append(&[ent(3, 2)]).unwrap();
    check_reopen(&mut l);
    assert_eq!(l.last_index(), Ok(3));
    assert_eq!(l.term(3), Ok(2));
    assert_eq!(l.term(4), Err(UNAVAILABLE));
    assert_eq!(
        l.entries(1, 4, None, ctx()),
        Ok(vec![ent(1, 1), ent(2, 1), ent(3, 2)])
    );

    // Longer conflicting suffix.
    l.append(&ents(2..=7, 3)).unwrap();
    check_reopen(&mut l);
    assert_eq!(l.last_index(), Ok(7));
    assert_eq!(l.term(1), Ok(1));
    assert_eq!(l.term(2), Ok(3));
    assert_eq!(l.term(7), Ok(3));

    // Overwrite from the very first entry.
    l.append(&[ent(1, 4)]).unwrap();
    check_reopen(&mut l);
    assert_eq!(l.last_index(), Ok(1));
    assert_eq!(l.entries(1, 2, None, ctx()), Ok(vec![ent(1, 4)]));

    // Append right after the last entry.
    l.append(&[ent(2, 4)]).unwrap();
    check_reopen(&mut l);
    assert_eq!(l.entries(1, 3, None, ctx()), Ok(vec![ent(1, 4), ent(2, 4)]));
}

fn append_gap_is_error<L: TestLog>(mut l: L) {
    l.append(&ents(1..=3, 1)).unwrap();
    let before = answers(&l);
    assert!(l.append(&[ent(5, 1)]).is_err());
    assert_eq!(answers(&l), before, "failed append changed the log");
    check_reopen(&mut l);
    assert_eq!(answers(&l), before);
}

fn append_before_first_index_is_error<L: TestLog>(mut l: L) {
    setup(&mut l, 5, 2, &ents(6..=8, 2));
    let before = answers(&l);
    assert!(l.append(&[ent(3, 3), ent(4, 3)]).is_err());
    assert!(l.append(&ents(5..=9, 3)).is_err());
    assert_eq!(answers(&l), before, "failed append changed the log");
    check_reopen(&mut l);
    assert_eq!(answers(&l), before);
    // Appending exactly at the first index is fine.
    l.append(&[ent(6, 3)]).unwrap();
    check_reopen(&mut l);
    assert_eq!(l.last_index(), Ok(6));
    assert_eq!(l.term(6), Ok(3));
}

/// raft's `test_storage_term`, shifted: the dummy entry 3 is a snapshot at 2 here.
fn term_table<L: TestLog>(mut l: L) {
    setup(&mut l, 2, 2, &[ent(3, 3), ent(4, 4), ent(5, 5)]);
    let cases = [
        (1, Err(COMPACTED)),
        (2, Ok(2)),
        (3, Ok(3)),
        (4, Ok(4)),
        (5, Ok(5)),
        (6, Err(UNAVAILABLE)),
    ];
    for (idx, want) in cases {
        assert_eq!(l.term(idx), want, "term({idx})");
    }
}

/// raft's `test_storage_entries`, on entries 3..=6 after a snapshot at 2.
fn entries_table<L: TestLog>(mut l: L) {
    let e = [ent(3, 3), ent(4, 4), ent(5, 5), ent(6, 6)];
    setup(&mut l, 2, 2, &e);
    let (s1, s2, s3) = (size_of(&e[1]), size_of(&e[2]), size_of(&e[3]));
    let max = u64::MAX;
    let cases: Vec<(u64, u64, u64, raft::Result<Vec<Entry>>)> = vec![
        (2, 6, max, Err(COMPACTED)),
        (1, 2, max, Err(COMPACTED)),
        (3, 4, max, Ok(vec![ent(3, 3)])),
        (4, 5, max, Ok(vec![ent(4, 4)])),
        (4, 6, max, Ok(vec![ent(4, 4), ent(5, 5)])),
        (4, 7, max, Ok(vec![ent(4, 4), ent(5, 5), ent(6, 6)])),
        (3, 7, max, Ok(e.to_vec())),
        // even if max_size is zero, the first entry is returned
        (4, 7, 0, Ok(vec![ent(4, 4)])),
        (4, 7, s1 + s2, Ok(vec![ent(4, 4), ent(5, 5)])),
        (4, 7, s1 + s2 + s3 / 2, Ok(vec![ent(4, 4), ent(5, 5)])),
        (4, 7, s1 + s2 + s3 - 1, Ok(vec![ent(4, 4), ent(5, 5)])),
        (
            4,
            7,
            s1 + s2 + s3,
            Ok(vec![ent(4, 4), ent(5, 5), ent(6, 6)]),
        ),
        (6, 6, max, Ok(vec![])),
    ];
    for (i, (lo, hi, max_size, want)) in cases.into_iter().enumerate() {
        assert_eq!(l.entries(lo, hi, max_size, ctx()), want, "case #{i}");
    }
    // `None` means no limit.
    assert_eq!(l.entries(3, 7, None, ctx()), Ok(e.to_vec()));
}

fn first_and_last_index<L: TestLog>(mut l: L) {
    setup(&mut l, 2, 2, &[ent(3, 3), ent(4, 4), ent(5, 5)]);
    assert_eq!(l.first_index(), Ok(3));
    assert_eq!(l.last_index(), Ok(5));
    l.append(&[ent(6, 5)]).unwrap();
    check_reopen(&mut l);
    assert_eq!(l.last_index(), Ok(6));
    l.set_hard_state(hs(5, 0, 3)).unwrap();
    l.compact(4).unwrap();
    check_reopen(&mut l);
    assert_eq!(l.first_index(), Ok(4));
    assert_eq!(l.last_index(), Ok(6));
}

/// raft's `test_storage_compact`, on entries 3..=5 after a snapshot at 2.
fn compact_table<L: TestLog>(new: fn() -> L) {
    let cases = [(2, 3, 3, 3), (3, 3, 3, 3), (4, 4, 4, 2), (5, 5, 5, 1)];
    for (i, (idx, want_first, want_term, want_len)) in cases.into_iter().enumerate() {
        let mut l = new();
        setup(&mut l, 2, 2, &[ent(3, 3), ent(4, 4), ent(5, 5)]);
        l.set_hard_state(hs(5, 0, 5)).unwrap();
        l.compact(idx).unwrap();
        check_reopen(&mut l);
        let first = l.first_index().unwrap();
        assert_eq!(first, want_first, "#{i}: first index");
        let got = l.entries(first, first + 1, 1, ctx()).unwrap();
        assert_eq!(got[0].term, want_term, "#{i}: term");
        let last = l.last_index().unwrap();
        assert_eq!(last, 5, "#{i}: last index");
        let len = l.entries(first, last + 1, 100, ctx()).unwrap().len();
        assert_eq!(len, want_len, "#{i}: len");
        assert_eq!(
            l.entries(first - 1, last + 1, None, ctx()),
            Err(COMPACTED),
            "#{i}"
        );
    }
}

fn compact_beyond_last_is_error<L: TestLog>(mut l: L) {
    l.append(&ents(1..=3, 1)).unwrap();
    let before = answers(&l);
    assert!(l.compact(5).is_err());
    assert!(l.compact(100).is_err());
    assert_eq!(answers(&l), before);
    check_reopen(&mut l);
    assert_eq!(answers(&l), before);
}

fn append_after_compact<L: TestLog>(mut l: L) {
    l.append(&ents(1..=6, 1)).unwrap();
    l.set_hard_state(hs(1, 0, 3)).unwrap();
    l.compact(4).unwrap();
    check_reopen(&mut l);
    // Overwrite starting at the first index.
    l.append(&[ent(4, 2), ent(5, 2)]).unwrap();
    check_reopen(&mut l);
    assert_eq!(l.first_index(), Ok(4));
    assert_eq!(l.last_index(), Ok(5));
    assert_eq!(l.entries(4, 6, None, ctx()), Ok(vec![ent(4, 2), ent(5, 2)]));
    // Below the first index is refused.
    assert!(l.append(&[ent(3, 2)]).is_err());
    // Compacting again, then appending at the end.
    l.set_hard_state(hs(2, 0, 4)).unwrap();
    l.compact(5).unwrap();
    l.append(&[ent(6, 3)]).unwrap();
    check_reopen(&mut l);
    assert_eq!(l.entries(5, 7, None, ctx()), Ok(vec![ent(5, 2), ent(6, 3)]));
    assert_eq!(l.term(3), Err(COMPACTED));
}

fn apply_snapshot_replaces_log<L: TestLog>(mut l: L) {
    l.append(&[ent(1, 1), ent(2, 1), ent(3, 2), ent(4, 2), ent(5, 3)])
        .unwrap();
    l.set_hard_state(hs(5, 2, 2)).unwrap();
    l.set_conf(voters(vec![1])).unwrap();
    check_reopen(&mut l);

    l.apply_snapshot(snap(4, 2, vec![1, 2, 3])).unwrap();
    check_reopen(&mut l);
    assert_eq!(l.first_index(), Ok(5));
    assert_eq!(l.last_index(), Ok(4));
    assert_eq!(l.term(4), Ok(2));
    assert_eq!(l.term(3), Err(COMPACTED));
    assert_eq!(l.term(5), Err(UNAVAILABLE));
    assert_eq!(l.entries(3, 5, None, ctx()), Err(COMPACTED));
    let state = l.initial_state().unwrap();
    // Term keeps the larger of the two, commit jumps to the snapshot.
    assert_eq!(state.hard_state, hs(5, 2, 4));
    assert_eq!(state.conf_state, voters(vec![1, 2, 3]));

    // The log continues after the snapshot.
    l.append(&[ent(5, 5), ent(6, 5)]).unwrap();
    check_reopen(&mut l);
    assert_eq!(l.entries(5, 7, None, ctx()), Ok(vec![ent(5, 5), ent(6, 5)]));
    assert_eq!(l.term(4), Ok(2));

    // A newer snapshot with a higher term takes the term.
    l.apply_snapshot(snap(6, 7, vec![1, 2])).unwrap();
    check_reopen(&mut l);
    let state = l.initial_state().unwrap();
    assert_eq!(state.hard_state, hs(7, 2, 6));
    assert_eq!(state.conf_state, voters(vec![1, 2]));
}

fn apply_snapshot_out_of_date<L: TestLog>(mut l: L) {
    setup(&mut l, 4, 2, &ents(5..=6, 2));
    let before = answers(&l);
    assert!(l.apply_snapshot(snap(3, 2, vec![1])).is_err());
    assert!(l.apply_snapshot(snap(4, 2, vec![1])).is_err());
    assert_eq!(answers(&l), before);
    check_reopen(&mut l);
    // At the first index it is accepted (and clears the log).
    l.apply_snapshot(snap(5, 2, vec![1])).unwrap();
    check_reopen(&mut l);
    assert_eq!(l.first_index(), Ok(6));
    assert_eq!(l.last_index(), Ok(5));
}

fn apply_snapshot_ahead_of_log<L: TestLog>(mut l: L) {
    l.append(&ents(1..=3, 1)).unwrap();
    l.apply_snapshot(snap(10, 4, vec![1, 2, 3])).unwrap();
    check_reopen(&mut l);
    assert_eq!(l.first_index(), Ok(11));
    assert_eq!(l.last_index(), Ok(10));
    assert_eq!(l.term(10), Ok(4));
    assert_eq!(l.term(3), Err(COMPACTED));
    assert!(l.append(&[ent(12, 4)]).is_err());
    l.append(&[ent(11, 4)]).unwrap();
    check_reopen(&mut l);
    assert_eq!(l.entries(11, 12, None, ctx()), Ok(vec![ent(11, 4)]));
}

fn term_of_first_index_minus_one<L: TestLog>(mut l: L) {
    assert_eq!(l.term(l.first_index().unwrap() - 1), Ok(0));
    l.append(&ents(1..=3, 1)).unwrap();
    assert_eq!(l.term(0), Ok(0));
    l.apply_snapshot(snap(7, 3, vec![1])).unwrap();
    check_reopen(&mut l);
    assert_eq!(l.term(l.first_index().unwrap() - 1), Ok(3));
    l.append(&ents(8..=9, 3)).unwrap();
    check_reopen(&mut l);
    assert_eq!(l.first_index(), Ok(8));
    assert_eq!(l.term(7), Ok(3));
}

fn hard_state_and_conf_state<L: TestLog>(mut l: L) {
    l.append(&ents(1..=4, 2)).unwrap();
    l.set_hard_state(hs(2, 3, 3)).unwrap();
    check_reopen(&mut l);
    l.set_conf(voters(vec![1, 2, 3])).unwrap();
    check_reopen(&mut l);
    let state = l.initial_state().unwrap();
    assert_eq!(state.hard_state, hs(2, 3, 3));
    assert_eq!(state.conf_state, voters(vec![1, 2, 3]));
    assert!(state.initialized());
    let mut cs = voters(vec![1, 2]);
    cs.learners = vec![4];
    l.set_conf(cs.clone()).unwrap();
    l.set_hard_state(hs(3, 0, 4)).unwrap();
    check_reopen(&mut l);
    let state = l.initial_state().unwrap();
    assert_eq!(state.hard_state, hs(3, 0, 4));
    assert_eq!(state.conf_state, cs);
}

/// A longer log with data, written in chunks, overwritten in the middle and compacted, read in
/// ranges with size limits. With the tiny cache this crosses the fjall/cache boundary.
fn long_log_with_data<L: TestLog>(mut l: L) {
    for chunk in 0..10u64 {
        let batch: Vec<Entry> = (chunk * 10 + 1..=chunk * 10 + 10)
            .map(|i| ent_data(i, 1, 30))
            .collect();
        l.append(&batch).unwrap();
    }
    check_reopen(&mut l);
    let overwrite: Vec<Entry> = (55..=70).map(|i| ent_data(i, 2, 10)).collect();
    l.append(&overwrite).unwrap();
    check_reopen(&mut l);
    assert_eq!(l.last_index(), Ok(70));
    l.set_hard_state(hs(2, 0, 19)).unwrap();
    l.compact(20).unwrap();
    check_reopen(&mut l);

    let all = l.entries(20, 71, None, ctx()).unwrap();
    assert_eq!(all.len(), 51);
    for (i, e) in (20..).zip(&all) {
        assert_eq!(e.index, i);
        assert_eq!(e.term, if i < 55 { 1 } else { 2 });
        assert_eq!(l.term(i), Ok(e.term));
    }
    for (lo, hi) in [(20, 71), (40, 60), (54, 56), (69, 71), (20, 21)] {
        for max in [0, 1, 50, 100, 333, 1000] {
            let got = l.entries(lo, hi, max, ctx()).unwrap();
            let mut want = all[(lo - 20) as usize..(hi - 20) as usize].to_vec();
            raft::util::limit_size(&mut want, Some(max));
            assert_eq!(got, want, "entries({lo}, {hi}, {max})");
        }
    }
}

macro_rules! conformance_suite {
    (fresh: [$($case:ident),* $(,)?], factory: [$($fcase:ident),* $(,)?] $(,)?) => {
        mod mem_storage {
            $( #[test] fn $case() { super::$case(super::new_mem()); } )*
            $( #[test] fn $fcase() { super::$fcase(super::new_mem); } )*
        }
        mod fjall_storage {
            $( #[test] fn $case() { super::$case(super::new_fjall()); } )*
            $( #[test] fn $fcase() { super::$fcase(super::new_fjall); } )*
        }
        mod fjall_storage_tiny_cache {
            $( #[test] fn $case() { super::$case(super::new_fjall_tiny_cache()); } )*
            $( #[test] fn $fcase() { super::$fcase(super::new_fjall_tiny_cache); } )*
        }
    };
}

conformance_suite! {
    fresh: [
        empty_storage,
        append_and_read,
        append_overwrites_conflicting_suffix,
        append_gap_is_error,
        append_before_first_index_is_error,
        term_table,
        entries_table,
        first_and_last_index,
        compact_beyond_last_is_error,
        append_after_compact,
        apply_snapshot_replaces_log,
        apply_snapshot_out_of_date,
        apply_snapshot_ahead_of_log,
        term_of_first_index_minus_one,
        hard_state_and_conf_state,
        long_log_with_data,
    ],
    factory: [compact_table],
}

// ---------------------------------------------------------------------------------------------
// FjallStorage-only behaviour

fn open_tmp() -> (TempDir, FjallStorage) {
    let dir = tempfile::tempdir().unwrap();
    let s = FjallStorage::open(dir.path()).unwrap();
    (dir, s)
}

fn reopen(dir: &TempDir, s: FjallStorage) -> FjallStorage {
    drop(s);
    FjallStorage::open(dir.path()).unwrap()
}

#[test]
fn compact_keeps_term_of_truncated_index() {
    // MemStorage forgets term(first_index - 1) after compact; FjallStorage keeps it.
    let (dir, mut s) = open_tmp();
    let entries = [ent(1, 1), ent(2, 1), ent(3, 2), ent(4, 3)];
    s.persist(&entries, Some(&hs(3, 0, 3))).unwrap();
    s.compact(4).unwrap();
    assert_eq!(s.first_index(), Ok(4));
    assert_eq!(s.term(3), Ok(2));
    assert_eq!(s.term(2), Err(COMPACTED));
    let s = reopen(&dir, s);
    assert_eq!(s.first_index(), Ok(4));
    assert_eq!(s.last_index(), Ok(4));
    assert_eq!(s.term(3), Ok(2));
    assert_eq!(s.term(4), Ok(3));
    assert_eq!(s.term(2), Err(COMPACTED));
    assert_eq!(s.entries(3, 5, None, ctx()), Err(COMPACTED));
    assert_eq!(s.entries(4, 5, None, ctx()), Ok(vec![ent(4, 3)]));
}

#[test]
fn compact_everything() {
    let (dir, mut s) = open_tmp();
    s.persist(&ents(1..=5, 2), Some(&hs(2, 1, 5))).unwrap();
    s.compact(6).unwrap();
    assert_eq!(s.first_index(), Ok(6));
    assert_eq!(s.last_index(), Ok(5));
    assert_eq!(s.term(5), Ok(2));
    assert_eq!(s.term(4), Err(COMPACTED));
    assert_eq!(s.term(6), Err(UNAVAILABLE));
    assert_eq!(s.entries(6, 6, None, ctx()), Ok(vec![]));
    let mut s = reopen(&dir, s);
    assert_eq!(s.first_index(), Ok(6));
    assert_eq!(s.last_index(), Ok(5));
    assert_eq!(s.term(5), Ok(2));
    assert!(matches!(
        s.compact(7),
        Err(StorageError::CompactBeyondLast { .. })
    ));
    // Compacting at or below the first index is a no-op.
    s.compact(6).unwrap();
    s.compact(2).unwrap();
    s.persist(&[ent(6, 3)], None).unwrap();
    let s = reopen(&dir, s);
    assert_eq!(s.entries(6, 7, None, ctx()), Ok(vec![ent(6, 3)]));
    assert_eq!(s.term(5), Ok(2));
}

#[test]
fn compact_beyond_commit_is_error() {
    let (dir, mut s) = open_tmp();
    s.persist(&ents(1..=6, 1), Some(&hs(1, 0, 3))).unwrap();
    assert!(matches!(
        s.compact(5),
        Err(StorageError::CompactBeyondCommit {
            compact_index: 5,
            commit: 3
        })
    ));
    // Beyond the last index is reported as such first.
    assert!(matches!(
        s.compact(9),
        Err(StorageError::CompactBeyondLast { .. })
    ));
    s.compact(4).unwrap();
    let s = reopen(&dir, s);
    assert_eq!(s.first_index(), Ok(4));
    assert_eq!(s.term(3), Ok(1));
}

#[test]
fn bootstrap_and_is_initialized() {
    let (dir, s) = open_tmp();
    assert!(!s.is_initialized());
    assert!(!s.initial_state().unwrap().initialized());
    let s = reopen(&dir, s);
    assert!(!s.is_initialized());
    let mut s = s;
    s.initialize_with_conf_state(voters(vec![1, 2, 3])).unwrap();
    assert!(s.is_initialized());
    let mut s = reopen(&dir, s);
    assert!(s.is_initialized());
    let state = s.initial_state().unwrap();
    assert_eq!(state.conf_state, voters(vec![1, 2, 3]));
    assert_eq!(state.hard_state, HardState::default());
    assert_eq!(s.first_index(), Ok(1));
    assert_eq!(s.last_index(), Ok(0));
    assert_eq!(s.term(0), Ok(0));
    assert!(matches!(
        s.initialize_with_conf_state(voters(vec![1])),
        Err(StorageError::AlreadyInitialized)
    ));
    assert_eq!(s.conf_state(), &voters(vec![1, 2, 3]));
}

#[test]
fn is_initialized_after_any_state_write() {
    let (dir, mut s) = open_tmp();
    s.persist(&[], Some(&hs(1, 0, 0))).unwrap();
    assert!(reopen(&dir, s).is_initialized());

    let (dir, mut s) = open_tmp();
    s.set_conf_state(voters(vec![1])).unwrap();
    assert!(reopen(&dir, s).is_initialized());

    let (dir, mut s) = open_tmp();
    s.apply_snapshot(snap(3, 1, vec![1])).unwrap();
    assert!(reopen(&dir, s).is_initialized());

    // Entries alone do not initialize (no raft state was recorded).
    let (dir, mut s) = open_tmp();
    s.persist(&[ent(1, 1)], None).unwrap();
    assert!(!reopen(&dir, s).is_initialized());
}

#[test]
fn persist_entries_and_hard_state_together() {
    let (dir, mut s) = open_tmp();
    s.initialize_with_conf_state(voters(vec![1])).unwrap();
    s.persist(&ents(1..=3, 1), Some(&hs(1, 1, 2))).unwrap();
    s.persist(&[ent(4, 1)], None).unwrap();
    s.persist(&[], Some(&hs(1, 1, 4))).unwrap();
    s.persist(&[], None).unwrap();
    let s = reopen(&dir, s);
    assert_eq!(s.hard_state(), &hs(1, 1, 4));
    assert_eq!(s.last_index(), Ok(4));
    assert_eq!(s.entries(1, 5, None, ctx()), Ok(ents(1..=4, 1)));
}

#[test]
fn persist_rejects_bad_entries_without_side_effects() {
    let (dir, mut s) = open_tmp();
    s.persist(&ents(1..=3, 1), Some(&hs(1, 0, 1))).unwrap();
    let before = answers(&s);
    let bad = [ent(4, 1), ent(6, 1)];
    assert!(matches!(
        s.persist(&bad, Some(&hs(2, 0, 1))),
        Err(StorageError::NotContiguous {
            expected: 5,
            found: 6
        })
    ));
    assert!(matches!(
        s.persist(&[ent(5, 1)], None),
        Err(StorageError::AppendGap {
            index: 5,
            last_index: 3
        })
    ));
    s.compact(2).unwrap();
    assert!(matches!(
        s.persist(&[ent(1, 2)], None),
        Err(StorageError::AppendCompacted {
            index: 1,
            first_index: 2
        })
    ));
    let s = reopen(&dir, s);
    let mut after = answers(&s);
    // Only the compaction happened.
    after.terms.retain(|(i, _)| *i >= 2);
    let mut want = before;
    want.first = 2;
    want.terms.retain(|(i, _)| *i >= 2);
    want.entries = Some(Ok(ents(2..=3, 1)));
    assert_eq!(after, want);
}

#[test]
fn commit_bounds_are_enforced() {
    let (dir, mut s) = open_tmp();
    s.persist(&ents(1..=3, 1), Some(&hs(1, 0, 2))).unwrap();
    assert!(matches!(
        s.persist(&[], Some(&hs(1, 0, 4))),
        Err(StorageError::CommitBeyondLast {
            commit: 4,
            last_index: 3
        })
    ));
    assert!(matches!(
        s.set_commit(4),
        Err(StorageError::CommitBeyondLast { .. })
    ));
    // Overwriting committed entries is refused.
    assert!(matches!(
        s.persist(&[ent(2, 2)], None),
        Err(StorageError::OverwriteCommitted {
            index: 2,
            commit: 2
        })
    ));
    assert!(matches!(
        s.persist(&[ent(1, 2), ent(2, 2), ent(3, 2)], None),
        Err(StorageError::OverwriteCommitted { .. })
    ));
    // Uncommitted entries may be overwritten.
    s.persist(&[ent(3, 2)], None).unwrap();
    let mut s = reopen(&dir, s);
    assert_eq!(s.hard_state(), &hs(1, 0, 2));
    assert_eq!(
        s.entries(1, 4, None, ctx()),
        Ok(vec![ent(1, 1), ent(2, 1), ent(3, 2)])
    );
    // The commit index may not fall below the truncation point.
    s.compact(3).unwrap();
    assert!(matches!(
        s.set_commit(1),
        Err(StorageError::CommitBelowTruncated {
            commit: 1,
            truncated_index: 2
        })
    ));
    let s = reopen(&dir, s);
    assert_eq!(s.hard_state(), &hs(1, 0, 2));
}

#[test]
fn set_commit_persists() {
    let (dir, mut s) = open_tmp();
    s.persist(&ents(1..=5, 2), Some(&hs(2, 7, 1))).unwrap();
    s.set_commit(4).unwrap();
    assert_eq!(s.hard_state(), &hs(2, 7, 4));
    let mut s = reopen(&dir, s);
    assert_eq!(s.initial_state().unwrap().hard_state, hs(2, 7, 4));
    s.set_commit(4).unwrap();
    s.set_commit(5).unwrap();
    let s = reopen(&dir, s);
    assert_eq!(s.hard_state(), &hs(2, 7, 5));
}

#[test]
fn snapshot_unavailable_until_stored() {
    let (dir, mut s) = open_tmp();
    let unavailable = Err(RaftError::Store(
        RaftStorageError::SnapshotTemporarilyUnavailable,
    ));
    assert_eq!(s.snapshot(0, 2), unavailable);
    s.persist(&ents(1..=10, 3), Some(&hs(3, 1, 8))).unwrap();
    assert_eq!(s.snapshot(0, 2), unavailable);

    let mut sn = snap(8, 3, vec![1, 2, 3]);
    sn.data = b"state machine at 8".to_vec().into();
    s.store_snapshot(sn.clone()).unwrap();
    // The log is untouched.
    assert_eq!(s.first_index(), Ok(1));
    assert_eq!(s.last_index(), Ok(10));
    assert_eq!(s.snapshot(0, 2), Ok(sn.clone()));
    assert_eq!(s.snapshot(8, 2), Ok(sn.clone()));
    assert_eq!(s.snapshot(9, 2), unavailable);

    let mut s = reopen(&dir, s);
    assert_eq!(s.snapshot(5, 2), Ok(sn.clone()));
    assert_eq!(s.snapshot_metadata(), Some(sn.get_metadata()));
    assert_eq!(s.snapshot(9, 2), unavailable);
    // Compacting up to the snapshot keeps it.
    s.compact(9).unwrap();
    let s = reopen(&dir, s);
    assert_eq!(s.snapshot(0, 2), Ok(sn));
    assert_eq!(s.term(8), Ok(3));
}

#[test]
fn store_snapshot_validation() {
    let (dir, mut s) = open_tmp();
    s.persist(
        &[ent(1, 1), ent(2, 1), ent(3, 2), ent(4, 2)],
        Some(&hs(2, 1, 3)),
    )
    .unwrap();
    // Beyond the commit index (and beyond the last index).
    for index in [4, 5] {
        assert!(matches!(
            s.store_snapshot(snap(index, 2, vec![1])),
            Err(StorageError::InvalidSnapshot(_))
        ));
    }
    // Term does not match the log.
    assert!(matches!(
        s.store_snapshot(snap(3, 1, vec![1])),
        Err(StorageError::InvalidSnapshot(_))
    ));
    s.store_snapshot(snap(3, 2, vec![1])).unwrap();
    // Older than the stored one.
    assert!(matches!(
        s.store_snapshot(snap(2, 1, vec![1])),
        Err(StorageError::SnapshotOutOfDate { .. })
    ));
    // Same index again (e.g. regenerated) is fine, newer too.
    s.store_snapshot(snap(3, 2, vec![1, 2])).unwrap();
    s.set_commit(4).unwrap();
    s.store_snapshot(snap(4, 2, vec![1, 2])).unwrap();
    s.compact(5).unwrap();
    let s = reopen(&dir, s);
    assert_eq!(s.snapshot(0, 1), Ok(snap(4, 2, vec![1, 2])));
    // Older than the truncation point.
    let (_d, mut s2) = open_tmp();
    s2.persist(&ents(1..=4, 1), Some(&hs(1, 0, 4))).unwrap();
    s2.compact(4).unwrap();
    assert!(matches!(
        s2.store_snapshot(snap(2, 1, vec![1])),
        Err(StorageError::SnapshotOutOfDate { .. })
    ));
    s2.store_snapshot(snap(3, 1, vec![1])).unwrap();
}

#[test]
fn applied_snapshot_is_served() {
    let (dir, mut s) = open_tmp();
    s.persist(&ents(1..=3, 1), Some(&hs(1, 1, 3))).unwrap();
    let mut sn = snap(20, 4, vec![1, 2, 3]);
    sn.data = vec![7u8; 100_000].into();
    s.apply_snapshot(sn.clone()).unwrap();
    assert_eq!(s.snapshot(0, 3), Ok(sn.clone()));
    let s = reopen(&dir, s);
    assert_eq!(s.snapshot(20, 3), Ok(sn.clone()));
    assert_eq!(s.hard_state(), &hs(4, 1, 20));
    assert_eq!(s.conf_state(), sn.get_metadata().get_conf_state());
    let mut s = s;
    assert!(matches!(
        s.apply_snapshot(snap(19, 4, vec![1])),
        Err(StorageError::SnapshotOutOfDate {
            index: 19,
            first_index: 21
        })
    ));
}

#[test]
fn entries_out_of_range() {
    let (_dir, mut s) = open_tmp();
    s.persist(&ents(1..=3, 1), None).unwrap();
    assert_eq!(s.entries(1, 5, None, ctx()), Err(UNAVAILABLE));
    assert!(matches!(
        s.entries(3, 2, None, ctx()),
        Err(RaftError::Store(RaftStorageError::Other(_)))
    ));
    assert_eq!(s.term(4), Err(UNAVAILABLE));
}

#[test]
fn errors_map_into_raft_errors() {
    let e: RaftError = StorageError::SnapshotOutOfDate {
        index: 1,
        first_index: 3,
    }
    .into();
    assert_eq!(e, RaftError::Store(RaftStorageError::SnapshotOutOfDate));
    let e: RaftError = StorageError::Corrupt("x".into()).into();
    assert!(matches!(e, RaftError::Store(RaftStorageError::Other(_))));
    assert!(e.to_string().contains("corrupt raft storage: x"), "{e}");
}

fn log_keyspace(s: &FjallStorage) -> fjall::Keyspace {
    s.database()
        .keyspace(super::LOG_KEYSPACE, fjall::KeyspaceCreateOptions::default)
        .unwrap()
}

fn state_keyspace(s: &FjallStorage) -> fjall::Keyspace {
    s.database()
        .keyspace(super::STATE_KEYSPACE, fjall::KeyspaceCreateOptions::default)
        .unwrap()
}

fn expect_corrupt(dir: &TempDir, s: FjallStorage, what: &str) {
    drop(s);
    match FjallStorage::open(dir.path()) {
        Err(StorageError::Corrupt(msg)) => assert!(msg.contains(what), "{msg}"),
        other => panic!("expected corruption ({what}), got {other:?}"),
    }
}

#[test]
fn open_detects_gap_in_log() {
    let (dir, mut s) = open_tmp();
    s.persist(&ents(1..=5, 1), None).unwrap();
    log_keyspace(&s).remove(3u64.to_be_bytes()).unwrap();
    expect_corrupt(&dir, s, "expected index 3, found 4");
}

#[test]
fn open_detects_entry_below_first_index() {
    let (dir, mut s) = open_tmp();
    s.persist(&ents(1..=5, 1), Some(&hs(1, 0, 2))).unwrap();
    s.compact(3).unwrap();
    let stray = ent(1, 1).write_to_bytes().unwrap();
    log_keyspace(&s).insert(1u64.to_be_bytes(), stray).unwrap();
    expect_corrupt(&dir, s, "expected index 3, found 1");
}

#[test]
fn open_detects_missing_head_after_truncation() {
    let (dir, mut s) = open_tmp();
    s.persist(&ents(1..=5, 1), None).unwrap();
    log_keyspace(&s).remove(1u64.to_be_bytes()).unwrap();
    expect_corrupt(&dir, s, "expected index 1, found 2");
}

#[test]
fn open_detects_commit_beyond_last() {
    let (dir, mut s) = open_tmp();
    s.persist(&ents(1..=2, 1), Some(&hs(1, 0, 2))).unwrap();
    let bad = hs(1, 0, 9).write_to_bytes().unwrap();
    state_keyspace(&s)
        .insert(super::KEY_HARD_STATE, bad)
        .unwrap();
    expect_corrupt(&dir, s, "commit 9 outside [0, 2]");
}

#[test]
fn open_detects_entry_with_wrong_index() {
    let (dir, mut s) = open_tmp();
    s.persist(&ents(1..=3, 1), None).unwrap();
    let wrong = ent(7, 1).write_to_bytes().unwrap();
    log_keyspace(&s).insert(3u64.to_be_bytes(), wrong).unwrap();
    expect_corrupt(&dir, s, "log key 3 holds entry with index 7");
}

#[test]
fn open_detects_garbage_records() {
    let (dir, mut s) = open_tmp();
    s.persist(&ents(1..=3, 1), None).unwrap();
    state_keyspace(&s)
        .insert(super::KEY_TRUNCATED, b"short")
        .unwrap();
    expect_corrupt(&dir, s, "truncated record of 5 bytes");
}

#[test]
fn node_keyspace_lives_beside_raft_state() {
    let (dir, mut s) = open_tmp();
    s.persist(&ents(1..=2, 1), None).unwrap();
    let meta = s
        .database()
        .keyspace("member", fjall::KeyspaceCreateOptions::default)
        .unwrap();
    meta.insert("id", "7").unwrap();
    drop(meta);
    let s = reopen(&dir, s);
    let meta = s
        .database()
        .keyspace("member", fjall::KeyspaceCreateOptions::default)
        .unwrap();
    assert_eq!(meta.get("id").unwrap().as_deref(), Some(&b"7"[..]));
    assert_eq!(s.last_index(), Ok(2));
}

#[test]
fn database_is_locked_while_open() {
    let (dir, s) = open_tmp();
    assert!(matches!(
        FjallStorage::open(dir.path()),
        Err(StorageError::Fjall(_))
    ));
    drop(s);
    FjallStorage::open(dir.path()).unwrap();
}

#[test]
fn cache_bounded_by_entries_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = FjallStorage::open_with_cache_limits(dir.path(), 8, 1000).unwrap();
    let big: Vec<Entry> = (1..=20).map(|i| ent_data(i, 1, 300)).collect();
    s.persist(&big, None).unwrap();
    assert!(s.cache.len() <= 3, "cache holds {}", s.cache.len());
    assert!(s.cache.bytes <= 1000);
    assert_eq!(
        s.cache.first_index().map(|i| i + s.cache.len() as u64 - 1),
        Some(20)
    );
    let small: Vec<Entry> = (21..=40).map(|i| ent(i, 1)).collect();
    s.persist(&small, None).unwrap();
    assert_eq!(s.cache.len(), 8);
    assert_eq!(s.cache.first_index(), Some(33));
    assert_eq!(
        s.entries(1, 41, None, ctx()).unwrap(),
        [big, small].concat()
    );
    // Overwriting before the cache start empties it, then refills it.
    s.persist(&[ent(10, 2)], None).unwrap();
    assert_eq!(s.cache.first_index(), Some(10));
    assert_eq!(s.term(10), Ok(2));
    assert_eq!(s.term(9), Ok(1));
    drop(s);
    let s = FjallStorage::open_with_cache_limits(dir.path(), 8, 1000).unwrap();
    // Three entries of ~300 bytes plus the small entry 10.
    assert_eq!(s.cache.len(), 4);
    assert_eq!(s.cache.first_index(), Some(7));
    assert!(s.cache.bytes <= 1000);
    assert_eq!(
        s.cache.bytes,
        s.cache.entries.iter().map(size_of).sum::<u64>()
    );
}

#[test]
fn many_entries_beyond_default_cache() {
    let (dir, mut s) = open_tmp();
    let all: Vec<Entry> = (1..=5000).map(|i| ent_data(i, 1 + i / 1000, 16)).collect();
    for chunk in all.chunks(700) {
        s.persist(chunk, None).unwrap();
    }
    assert_eq!(s.cache.len(), super::CACHE_MAX_ENTRIES);
    let s = reopen(&dir, s);
    assert_eq!(s.cache.len(), super::CACHE_MAX_ENTRIES);
    assert_eq!(s.entries(1, 5001, None, ctx()).unwrap(), all);
    assert_eq!(
        s.entries(850, 950, None, ctx()).unwrap(),
        all[849..949].to_vec()
    );
    assert_eq!(s.term(1), Ok(1));
    assert_eq!(s.term(4999), Ok(5));
    let max = size_of(&all[0]) * 10;
    assert_eq!(s.entries(1, 5001, max, ctx()).unwrap().len(), 10);
}

#[test]
fn debug_is_informative() {
    let (_dir, mut s) = open_tmp();
    s.persist(&ents(1..=2, 1), None).unwrap();
    let d = format!("{s:?}");
    assert!(
        d.contains("FjallStorage") && d.contains("last_index: 2"),
        "{d}"
    );
}

#[test]
fn mem_storage_panics_that_the_adapter_reports() {
    // The MemStorage adapter turns these panics into errors; make sure they really are the
    // reference behaviour, so the suite is not checking an invention.
    let m = MemStorage::new();
    m.wl().append(&ents(1..=3, 1)).unwrap();
    let gap = catch_unwind(AssertUnwindSafe(|| m.wl().append(&[ent(5, 1)])));
    assert!(gap.is_err());
    let m = MemStorage::new();
    m.wl().append(&ents(1..=3, 1)).unwrap();
    let beyond = catch_unwind(AssertUnwindSafe(|| m.wl().compact(5)));
    assert!(beyond.is_err());
}

// ---------------------------------------------------------------------------------------------
// property test: FjallStorage behaves like MemStorage under random operation sequences

#[derive(Debug, Clone)]
enum Op {
    /// Append `len` entries of `term` starting `back` entries before `last_index + 1`
    /// (clamped to the first index).
    Append {
        back: u64,
        len: u64,
        term: u64,
    },
    /// Append starting `ahead` (>= 2) after the last index: both must refuse.
    Gap {
        ahead: u64,
    },
    /// Compact to somewhere in `first_index - 1..=commit + 2`.
    Compact {
        pick: u64,
    },
    /// Apply a snapshot at `last_index + ahead - 3` (saturating).
    Snapshot {
        ahead: u64,
        term: u64,
    },
    /// Persist a hard state, its commit somewhere in `commit..=last_index` (raft never lowers
    /// it).
    HardState {
        term: u64,
        vote: u64,
        pick: u64,
    },
    /// Advance the commit index to somewhere in `commit..=last_index` (`set_commit`).
    Commit {
        pick: u64,
    },
    Reopen,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u64..6, 0u64..6, 1u64..5).prop_map(|(back, len, term)| Op::Append {
            back,
            len,
            term
        }),
        1 => (2u64..4).prop_map(|ahead| Op::Gap { ahead }),
        4 => any::<u64>().prop_map(|pick| Op::Compact { pick }),
        1 => (0u64..8, 1u64..6).prop_map(|(ahead, term)| Op::Snapshot { ahead, term }),
        2 => (1u64..6, 0u64..4, any::<u64>()).prop_map(|(term, vote, pick)| Op::HardState {
            term,
            vote,
            pick
        }),
        3 => any::<u64>().prop_map(|pick| Op::Commit { pick }),
        2 => Just(Op::Reopen),
    ]
}

/// Compares every read answer of `f` with the reference `m`. `truncated` is what
/// `term(first_index - 1)` must answer (MemStorage forgets it after compaction).
fn compare(
    f: &FjallLog,
    m: &MemStorage,
    truncated: (u64, u64),
    reads: &[(u64, u64, u64)],
) -> Result<(), TestCaseError> {
    let first = m.first_index().unwrap();
    let last = m.last_index().unwrap();
    prop_assert_eq!(f.first_index(), Ok(first));
    prop_assert_eq!(f.last_index(), Ok(last));
    let (fs, ms) = (f.initial_state().unwrap(), m.initial_state().unwrap());
    prop_assert_eq!(fs.hard_state, ms.hard_state);
    prop_assert_eq!(fs.conf_state, ms.conf_state);

    prop_assert_eq!(truncated.0, first - 1);
    prop_assert_eq!(f.term(first - 1), Ok(truncated.1));
    if let Ok(t) = m.term(first - 1) {
        prop_assert_eq!(t, truncated.1);
    }
    if first >= 2 {
        prop_assert_eq!(f.term(first - 2), Err(COMPACTED));
    }
    for idx in first..=last + 1 {
        prop_assert_eq!(f.term(idx), m.term(idx), "term({})", idx);
    }
    if last >= first {
        prop_assert_eq!(
            f.entries(first, last + 1, None, ctx()),
            m.entries(first, last + 1, None, ctx())
        );
        let span = last + 2 - first;
        for &(a, b, max) in reads {
            let lo = first + a % span;
            let hi = lo + b % (last + 2 - lo);
            prop_assert_eq!(
                f.entries(lo, hi, max, ctx()),
                m.entries(lo, hi, max, ctx()),
                "entries({}, {}, {})",
                lo,
                hi,
                max
            );
        }
    } else {
        prop_assert_eq!(f.entries(first, first, None, ctx()), Ok(vec![]));
    }
    if first >= 2 {
        prop_assert_eq!(f.entries(first - 1, last + 1, None, ctx()), Err(COMPACTED));
    }
    Ok(())
}

fn run_ops(
    ops: &[Op],
    reads: &[(u64, u64, u64)],
    cache: (usize, u64),
) -> Result<(), TestCaseError> {
    let mut f = FjallLog::new(cache.0, cache.1);
    let mut m = MemStorage::new();
    let mut truncated = (0u64, 0u64);
    for op in ops {
        let first = m.first_index().unwrap();
        let last = m.last_index().unwrap();
        let commit = m.initial_state().unwrap().hard_state.commit;
        match *op {
            Op::Append { back, len, term } => {
                let start = cmp_max(first, (last + 1).saturating_sub(back));
                let batch: Vec<Entry> = (start..start + len).map(|i| ent(i, term)).collect();
                if len > 0 && start <= commit {
                    // Would overwrite committed entries: FjallStorage refuses, MemStorage does
                    // not check (raft never asks for it).
                    prop_assert!(f.append(&batch).is_err());
                    continue;
                }
                prop_assert!(f.append(&batch).is_ok());
                prop_assert!(m.append(&batch).is_ok());
            }
            Op::Gap { ahead } => {
                let batch = [ent(last + ahead, 1)];
                prop_assert!(f.append(&batch).is_err());
                prop_assert!(m.append(&batch).is_err());
            }
            Op::Compact { pick } => {
                let ci = (first - 1) + pick % (commit + 4 - first);
                if ci == last + 1 {
                    // MemStorage's first_index goes back to its snapshot after compacting
                    // everything; covered by `compact_everything` instead.
                    continue;
                }
                if ci > first && ci <= last + 1 && ci > commit + 1 {
                    // Compacting uncommitted entries: FjallStorage refuses, MemStorage does not
                    // check.
                    let fr = f.s_mut().compact(ci);
                    prop_assert!(
                        matches!(fr, Err(StorageError::CompactBeyondCommit { .. })),
                        "compact({}): {:?}",
                        ci,
                        fr
                    );
                    continue;
                }
                let term_before = m.term(ci.saturating_sub(1));
                let fr = f.compact(ci);
                let mr = m.compact(ci);
                prop_assert_eq!(fr.is_ok(), mr.is_ok(), "compact({}): {:?} {:?}", ci, fr, mr);
                if mr.is_ok() && ci > first {
                    truncated = (ci - 1, term_before.unwrap());
                }
            }
            Op::Snapshot { ahead, term } => {
                let index = (last + ahead).saturating_sub(3);
                let s = snap(index, term, vec![1, 2, 3]);
                let fr = f.apply_snapshot(s.clone());
                let mr = m.apply_snapshot(s);
                prop_assert_eq!(
                    fr.is_ok(),
                    mr.is_ok(),
                    "snapshot({}): {:?} {:?}",
                    index,
                    fr,
                    mr
                );
                if mr.is_ok() {
                    truncated = (index, term);
                }
            }
            Op::HardState { term, vote, pick } => {
                let h = hs(term, vote, commit + pick % (last + 1 - commit));
                prop_assert!(f.set_hard_state(h.clone()).is_ok());
                prop_assert!(m.set_hard_state(h).is_ok());
            }
            Op::Commit { pick } => {
                let c = commit + pick % (last + 1 - commit);
                prop_assert!(f.s_mut().set_commit(c).is_ok());
                m.wl().mut_hard_state().commit = c;
            }
            Op::Reopen => f.reopen(),
        }
        compare(&f, &m, truncated, reads)?;
    }
    f.reopen();
    compare(&f, &m, truncated, reads)
}

fn cmp_max(a: u64, b: u64) -> u64 {
    std::cmp::max(a, b)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        // Regression files would land beside this source file; keep the tree clean.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn fjall_matches_mem_storage(
        ops in prop::collection::vec(op_strategy(), 1..40),
        reads in prop::collection::vec((any::<u64>(), any::<u64>(), 0u64..64), 3),
        tiny_cache in any::<bool>(),
    ) {
        let cache = if tiny_cache {
            (3, 200)
        } else {
            (super::CACHE_MAX_ENTRIES, super::CACHE_MAX_BYTES)
        };
        run_ops(&ops, &reads, cache)?;
    }
}

#[test]
fn only_entries_term_or_vote_changes_are_fsynced() {
    use super::must_sync;
    let stored = hs(3, 2, 10);
    let cases: [(&str, Vec<Entry>, Option<HardState>, bool); 7] = [
        ("nothing", vec![], None, false),
        ("commit moves", vec![], Some(hs(3, 2, 11)), false),
        ("same hard state", vec![], Some(hs(3, 2, 10)), false),
        ("term moves", vec![], Some(hs(4, 0, 10)), true),
        ("vote moves", vec![], Some(hs(3, 1, 10)), true),
        ("entries alone", ents(11..=11, 3), None, true),
        (
            "entries and commit",
            ents(11..=12, 3),
            Some(hs(3, 2, 11)),
            true,
        ),
    ];
    for (what, entries, hard_state, expected) in cases {
        assert_eq!(
            must_sync(&stored, &entries, hard_state.as_ref()),
            expected,
            "{what}"
        );
    }
}

#[test]
fn a_commit_written_without_fsync_is_read_back_after_reopening() {
    let (dir, mut s) = open_tmp();
    s.persist(&ents(1..=3, 1), Some(&hs(1, 1, 1))).unwrap();
    s.persist(&[], Some(&hs(1, 1, 3))).unwrap();
    let s = reopen(&dir, s);
    assert_eq!(s.hard_state().commit, 3);
    assert_eq!(s.last_index(), Ok(3));
}

//! What only `FjallStorage` promises: the truncated entry's term, commit and snapshot
//! bounds, initialization, the entry cache, and which writes are fsynced.

use super::*;

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
    assert_eq!(s.cache.len(), CACHE_MAX_ENTRIES);
    let s = reopen(&dir, s);
    assert_eq!(s.cache.len(), CACHE_MAX_ENTRIES);
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

#[test]
fn only_entries_term_or_vote_changes_are_fsynced() {
    use crate::node::storage::must_sync;
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

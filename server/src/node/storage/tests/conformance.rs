//! The generic cases, run against raft's `MemStorage` (the reference), `FjallStorage`, and
//! `FjallStorage` with a tiny cache. Each write is followed by a reopen check.

use super::*;

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

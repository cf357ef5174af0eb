//! Property test: `FjallStorage` answers like `MemStorage` under random sequences of
//! appends, compactions, snapshots and reopens.

use super::*;

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
            (CACHE_MAX_ENTRIES, CACHE_MAX_BYTES)
        };
        run_ops(&ops, &reads, cache)?;
    }
}

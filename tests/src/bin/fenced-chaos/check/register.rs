//! Linearizability of the `register` workload, key by key (a history is
//! linearizable iff each key's sub-history is: locality), with the
//! Wing & Gong search and Lowe's memoisation of (linearized set, state).
//!
//! Every write puts a value unique in the run, so a read names the one
//! write it saw. Two consequences make the search cheap and the reports
//! short:
//!
//! - An unknown write whose value nobody observed can be dropped: if the
//!   rest is linearizable, the write can go at the very end. (Observed
//!   means read, read back by a failed compare-and-swap, or expected by a
//!   successful one.)
//! - A sub-history that keeps, for every value it observes, the write that
//!   produced it is a sound witness: if the whole history were
//!   linearizable, so would it be. Minimisation removes operations (with
//!   the readers of any write it removes) while the rest still fails.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use crate::check::{Verdict, Violation};
use crate::record::{Call, Op, Outcome, Ret};

/// The most search steps spent on one key before giving up on it (and
/// saying so) instead of running for ever.
const STEP_BUDGET: u64 = 50_000_000;

/// How long minimising one violation may take.
const MINIMISE_BUDGET: Duration = Duration::from_secs(30);

/// Checks every register operation in `history`.
pub(crate) fn check(history: &[Op]) -> Verdict {
    let mut verdict = Verdict {
        checker: "register",
        ..Verdict::default()
    };
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in history {
        let key = match &op.call {
            Call::Read { key } | Call::Write { key, .. } | Call::Cas { key, .. } => key,
            _ => continue,
        };
        by_key.entry(key).or_default().push(op);
        verdict.checked += 1;
    }
    let mut dropped = 0;
    for (key, ops) in by_key {
        let (model_ops, unobserved) = model_ops(&ops);
        dropped += unobserved;
        match linearizable(&model_ops, STEP_BUDGET) {
            Search::Linearizable => {}
            Search::GaveUp => verdict.notes.push(format!(
                "register {key}: search gave up after {STEP_BUDGET} steps; not checked"
            )),
            Search::NotLinearizable => {
                let witness = minimise(model_ops);
                let ids: BTreeSet<usize> = witness.iter().map(|op| op.id).collect();
                let ops = ops
                    .iter()
                    .filter(|op| ids.contains(&op.id))
                    .map(|op| (*op).clone())
                    .collect();
                verdict.violations.push(Violation::new(
                    format!(
                        "register {key} is not linearizable; these {} operations admit no \
                         order that respects real time and register semantics",
                        ids.len()
                    ),
                    ops,
                ));
            }
        }
    }
    if dropped > 0 {
        verdict.notes.push(format!(
            "{dropped} unknown writes whose values nobody observed were left out of the search"
        ));
    }
    verdict
}

/// A register operation as the search sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ModelOp {
    /// The history id, to map back.
    id: usize,
    invoke: u64,
    /// `u64::MAX` for an unknown operation: it may take effect any time.
    complete: u64,
    kind: Kind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Saw this value (`None`: no key).
    Read(Option<u64>),
    /// Wrote this value.
    Write(u64),
    /// Swapped `expect` for `new`.
    Swap { expect: u64, new: u64 },
    /// Unknown compare-and-swap: swaps if it finds `expect`, else nothing.
    MaybeSwap { expect: u64, new: u64 },
    /// A failed compare-and-swap: saw `value`, which is not `expect`.
    NotSwapped { value: Option<u64>, expect: u64 },
}

impl Kind {
    /// The value this operation observed, if any.
    fn observes(self) -> Option<u64> {
        match self {
            Kind::Read(value) | Kind::NotSwapped { value, .. } => value,
            Kind::Swap { expect, .. } => Some(expect),
            Kind::Write(_) | Kind::MaybeSwap { .. } => None,
        }
    }

    /// The value this operation may write.
    fn writes(self) -> Option<u64> {
        match self {
            Kind::Write(value) => Some(value),
            Kind::Swap { new, .. } | Kind::MaybeSwap { new, .. } => Some(new),
            Kind::Read(_) | Kind::NotSwapped { .. } => None,
        }
    }

    /// The register model: the state after this operation, or `None` if it
    /// cannot happen in `state`.
    fn step(self, state: Option<u64>) -> Option<Option<u64>> {
        match self {
            Kind::Read(value) => (state == value).then_some(state),
            Kind::Write(value) => Some(Some(value)),
            Kind::Swap { expect, new } => (state == Some(expect)).then_some(Some(new)),
            Kind::MaybeSwap { expect, new } => match state == Some(expect) {
                true => Some(Some(new)),
                false => Some(state),
            },
            Kind::NotSwapped { value, expect } => {
                (state == value && value != Some(expect)).then_some(state)
            }
        }
    }
}

/// The operations of one key that constrain the register, and how many
/// unknown writes were dropped as unobserved.
fn model_ops(ops: &[&Op]) -> (Vec<ModelOp>, usize) {
    let mut model = Vec::new();
    for op in ops {
        let kind = match (&op.call, &op.outcome) {
            (Call::Read { .. }, Outcome::Ok(Ret::Value { value })) => Kind::Read(*value),
            (Call::Write { value, .. }, Outcome::Ok(_)) => Kind::Write(*value),
            (Call::Write { value, .. }, Outcome::Unknown { .. } | Outcome::Pending) => {
                Kind::Write(*value)
            }
            (Call::Cas { expect, new, .. }, Outcome::Ok(Ret::Swapped { .. })) => Kind::Swap {
                expect: *expect,
                new: *new,
            },
            (Call::Cas { expect, .. }, Outcome::Ok(Ret::NotSwapped { value })) => {
                Kind::NotSwapped {
                    value: *value,
                    expect: *expect,
                }
            }
            (Call::Cas { expect, new, .. }, Outcome::Unknown { .. } | Outcome::Pending) => {
                Kind::MaybeSwap {
                    expect: *expect,
                    new: *new,
                }
            }
            // Failed operations had no effect; reads that did not answer
            // constrain nothing.
            _ => continue,
        };
        model.push(ModelOp {
            id: op.id,
            invoke: op.invoke,
            complete: op.complete_or_max(),
            kind,
        });
    }
    let observed: HashSet<u64> = model.iter().filter_map(|op| op.kind.observes()).collect();
    let before = model.len();
    model.retain(|op| {
        op.complete != u64::MAX || op.kind.writes().is_some_and(|v| observed.contains(&v))
    });
    (model.clone(), before - model.len())
}

/// What the search concluded.
#[derive(Debug, PartialEq, Eq)]
enum Search {
    Linearizable,
    NotLinearizable,
    GaveUp,
}

/// One call or return event of the search's event list.
#[derive(Clone, Copy, Debug)]
struct Entry {
    op: usize,
    is_call: bool,
    /// Index of the matching call / return entry.
    matching: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// Wing & Gong's search over the events of `ops`, memoised as Lowe
/// suggests: a (linearized set, state) pair already explored is not
/// explored again.
fn linearizable(ops: &[ModelOp], budget: u64) -> Search {
    if ops.is_empty() {
        return Search::Linearizable;
    }
    // Events by time; at equal times calls come first, which only allows
    // more overlap (never a false alarm).
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.invoke, true, i));
        events.push((op.complete, false, i));
    }
    events.sort_by_key(|&(time, is_call, op)| (time, !is_call, op));
    let mut entries: Vec<Entry> = Vec::with_capacity(events.len());
    let mut call_entry = vec![0; ops.len()];
    let mut return_entry = vec![0; ops.len()];
    for (index, &(_, is_call, op)) in events.iter().enumerate() {
        match is_call {
            true => call_entry[op] = index,
            false => return_entry[op] = index,
        }
        entries.push(Entry {
            op,
            is_call,
            matching: 0,
            prev: index.checked_sub(1),
            next: (index + 1 < events.len()).then_some(index + 1),
        });
    }
    for op in 0..ops.len() {
        entries[call_entry[op]].matching = return_entry[op];
        entries[return_entry[op]].matching = call_entry[op];
    }

    let mut head: Option<usize> = Some(0);
    let mut linearized = vec![0u64; ops.len().div_ceil(64)];
    let mut state: Option<u64> = None;
    let mut cache: HashSet<(Vec<u64>, Option<u64>)> = HashSet::new();
    let mut calls: Vec<(usize, Option<u64>)> = Vec::new();
    let mut entry = head;
    let mut steps = 0u64;

    // Unlinks a call entry and its return; relinks them in reverse.
    fn lift(entries: &mut [Entry], head: &mut Option<usize>, call: usize) {
        for index in [call, entries[call].matching] {
            let Entry { prev, next, .. } = entries[index];
            match prev {
                Some(prev) => entries[prev].next = next,
                None => *head = next,
            }
            if let Some(next) = next {
                entries[next].prev = prev;
            }
        }
    }
    fn unlift(entries: &mut [Entry], head: &mut Option<usize>, call: usize) {
        for index in [entries[call].matching, call] {
            let Entry { prev, next, .. } = entries[index];
            match prev {
                Some(prev) => entries[prev].next = Some(index),
                None => *head = Some(index),
            }
            if let Some(next) = next {
                entries[next].prev = Some(index);
            }
        }
    }

    loop {
        steps += 1;
        if steps > budget {
            return Search::GaveUp;
        }
        let Some(current) = entry else {
            if head.is_none() {
                return Search::Linearizable;
            }
            unreachable!("the list ends with a return entry, which is handled below");
        };
        let Entry {
            op, is_call, next, ..
        } = entries[current];
        if is_call {
            if let Some(new_state) = ops[op].kind.step(state) {
                let mut new_linearized = linearized.clone();
                new_linearized[op / 64] |= 1 << (op % 64);
                if cache.insert((new_linearized.clone(), new_state)) {
                    calls.push((current, state));
                    state = new_state;
                    linearized = new_linearized;
                    lift(&mut entries, &mut head, current);
                    if head.is_none() {
                        return Search::Linearizable;
                    }
                    entry = head;
                    continue;
                }
            }
            entry = next;
        } else {
            // A return whose call is not linearized yet: back up.
            let Some((call, previous_state)) = calls.pop() else {
                return Search::NotLinearizable;
            };
            let op = entries[call].op;
            state = previous_state;
            linearized[op / 64] &= !(1 << (op % 64));
            unlift(&mut entries, &mut head, call);
            entry = entries[call].next;
        }
    }
}

/// Shrinks a non-linearizable history to a small sub-history that still
/// fails, removing chunks (halving their size) and then single operations.
/// Removing a write also removes everything that observed its value, so
/// each candidate stays a sound witness.
fn minimise(mut ops: Vec<ModelOp>) -> Vec<ModelOp> {
    let started = Instant::now();
    let mut chunk = ops.len().div_ceil(2).max(1);
    loop {
        let mut start = 0;
        while start < ops.len() {
            if started.elapsed() > MINIMISE_BUDGET {
                return ops;
            }
            let end = (start + chunk).min(ops.len());
            let candidate = without(&ops, start..end);
            if candidate.len() < ops.len()
                && linearizable(&candidate, STEP_BUDGET) == Search::NotLinearizable
            {
                ops = candidate;
            } else {
                start = end;
            }
        }
        if chunk == 1 {
            return ops;
        }
        chunk = chunk.div_ceil(2);
    }
}

/// `ops` without the operations at `range` and, transitively, without
/// everything that observed a value they wrote.
fn without(ops: &[ModelOp], range: std::ops::Range<usize>) -> Vec<ModelOp> {
    let mut removed = vec![false; ops.len()];
    let mut gone: HashSet<u64> = HashSet::new();
    for i in range {
        removed[i] = true;
        gone.extend(ops[i].kind.writes());
    }
    loop {
        let mut changed = false;
        for (i, op) in ops.iter().enumerate() {
            if !removed[i] && op.kind.observes().is_some_and(|v| gone.contains(&v)) {
                removed[i] = true;
                gone.extend(op.kind.writes());
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    ops.iter()
        .zip(removed)
        .filter(|(_, removed)| !removed)
        .map(|(op, _)| op.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::tests::HistoryBuilder;

    #[test]
    fn sequential_reads_and_writes_pass() {
        let mut h = HistoryBuilder::new();
        h.op(1, 0, 10, Call::read("x"), Ret::value(None));
        h.op(1, 20, 30, Call::write("x", 1), Ret::written(5));
        h.op(2, 40, 50, Call::read("x"), Ret::value(Some(1)));
        h.op(
            2,
            60,
            70,
            Call::cas("x", 1, 2),
            Ret::Swapped { revision: 6 },
        );
        h.op(
            1,
            80,
            90,
            Call::cas("x", 1, 3),
            Ret::NotSwapped { value: Some(2) },
        );
        let verdict = check(&h.ops);
        assert_eq!(verdict.checked, 5);
        assert!(verdict.violations.is_empty(), "{:?}", verdict.violations);
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        let mut h = HistoryBuilder::new();
        h.op(1, 0, 100, Call::write("x", 1), Ret::written(5));
        // Overlaps the write: may see before or after.
        h.op(2, 10, 20, Call::read("x"), Ret::value(Some(1)));
        h.op(3, 30, 40, Call::read("x"), Ret::value(Some(1)));
        assert!(check(&h.ops).violations.is_empty());
    }

    #[test]
    fn a_stale_read_is_flagged_with_a_minimal_witness() {
        let mut h = HistoryBuilder::new();
        h.op(1, 0, 10, Call::write("x", 1), Ret::written(5));
        h.op(1, 20, 30, Call::write("x", 2), Ret::written(6));
        for i in 0..20 {
            h.op(3, 31 + i * 2, 32 + i * 2, Call::read("y"), Ret::value(None));
        }
        h.op(4, 33, 34, Call::read("x"), Ret::value(Some(2)));
        // Invoked after the write of 2 completed, yet sees 1.
        h.op(2, 100, 110, Call::read("x"), Ret::value(Some(1)));
        let verdict = check(&h.ops);
        assert_eq!(verdict.violations.len(), 1, "{:?}", verdict.violations);
        let witness: Vec<&Call> = verdict.violations[0]
            .ops
            .iter()
            .map(|op| &op.call)
            .collect();
        assert_eq!(
            witness,
            [&Call::write("x", 1), &Call::write("x", 2), &Call::read("x")]
        );
    }

    #[test]
    fn a_lost_write_is_flagged() {
        let mut h = HistoryBuilder::new();
        h.op(1, 0, 10, Call::write("x", 1), Ret::written(5));
        h.op(2, 20, 30, Call::write("x", 2), Ret::written(6));
        // The acknowledged write of 2 vanished: later reads see 1 again.
        h.op(3, 40, 50, Call::read("x"), Ret::value(Some(2)));
        h.op(3, 60, 70, Call::read("x"), Ret::value(Some(1)));
        let verdict = check(&h.ops);
        assert_eq!(verdict.violations.len(), 1);
    }

    #[test]
    fn a_read_of_a_value_never_written_is_flagged() {
        let mut h = HistoryBuilder::new();
        h.op(1, 0, 10, Call::write("x", 1), Ret::written(5));
        h.op(2, 20, 30, Call::read("x"), Ret::value(Some(9)));
        assert_eq!(check(&h.ops).violations.len(), 1);
    }

    #[test]
    fn a_swap_that_found_a_value_it_could_not_have_is_flagged() {
        let mut h = HistoryBuilder::new();
        h.op(1, 0, 10, Call::write("x", 1), Ret::written(5));
        // Claims the value was not 1, and shows 1.
        h.op(
            2,
            20,
            30,
            Call::cas("x", 1, 2),
            Ret::NotSwapped { value: Some(1) },
        );
        assert_eq!(check(&h.ops).violations.len(), 1);
    }

    #[test]
    fn unknown_writes_may_take_effect_late_or_never() {
        let mut h = HistoryBuilder::new();
        h.op(1, 0, 10, Call::write("x", 1), Ret::written(5));
        h.unknown(2, 20, Call::write("x", 2));
        h.unknown(5, 21, Call::write("x", 7));
        h.op(3, 30, 40, Call::read("x"), Ret::value(Some(1)));
        // The unknown write lands long after it timed out.
        h.op(3, 500, 510, Call::read("x"), Ret::value(Some(2)));
        h.unknown(4, 600, Call::cas("x", 2, 3));
        h.op(3, 700, 710, Call::read("x"), Ret::value(Some(3)));
        let verdict = check(&h.ops);
        assert!(verdict.violations.is_empty(), "{:?}", verdict.violations);
        assert_eq!(verdict.notes.len(), 1, "the unobserved write 7 is dropped");
    }

    #[test]
    fn an_unknown_write_cannot_take_effect_before_it_was_invoked() {
        let mut h = HistoryBuilder::new();
        h.op(1, 0, 10, Call::read("x"), Ret::value(Some(2)));
        h.unknown(2, 20, Call::write("x", 2));
        assert_eq!(check(&h.ops).violations.len(), 1);
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut h = HistoryBuilder::new();
        h.op(1, 0, 10, Call::write("x", 1), Ret::written(5));
        h.op(1, 20, 30, Call::write("y", 2), Ret::written(6));
        h.op(2, 40, 50, Call::read("x"), Ret::value(Some(1)));
        h.op(2, 60, 70, Call::read("y"), Ret::value(None));
        let verdict = check(&h.ops);
        assert_eq!(verdict.violations.len(), 1);
        assert!(verdict.violations[0].what.contains("register y"));
    }

    #[test]
    fn a_long_concurrent_history_is_checked_quickly() {
        // 8 processes, 4000 operations, heavy overlap, all consistent: a
        // write of v at [10v, 10v + 35], reads of the latest completed or
        // a concurrent value.
        let mut h = HistoryBuilder::new();
        let mut last_completed = None;
        for v in 1..=2000u64 {
            let process = v % 8;
            h.op(
                process,
                10 * v,
                10 * v + 35,
                Call::write("x", v),
                Ret::written(0),
            );
            if v > 4 {
                last_completed = Some(v - 4);
            }
            h.op(
                process + 8,
                10 * v + 1,
                10 * v + 2,
                Call::read("x"),
                Ret::value(last_completed),
            );
        }
        let started = Instant::now();
        let verdict = check(&h.ops);
        assert!(verdict.violations.is_empty(), "{:?}", verdict.violations);
        assert!(verdict.notes.is_empty(), "{:?}", verdict.notes);
        assert!(started.elapsed() < Duration::from_secs(20));
    }
}

//! The `watch` checker: every watcher, opened at the same revision, saw
//! the same gapless sequence of changes, and that sequence is the writes
//! the cluster acknowledged (each at the revision it was acknowledged
//! with), plus possibly some whose outcome was unknown, and nothing else.

use std::collections::HashMap;

use crate::check::{Verdict, Violation};
use crate::record::{Call, Op, Outcome, Ret, Seen, StreamLog};

/// Checks the puts of `history` against what `watchers` saw.
pub(crate) fn check(history: &[Op], watchers: &[StreamLog<Seen>]) -> Verdict {
    let mut verdict = Verdict {
        checker: "watch",
        ..Verdict::default()
    };
    let mut puts: HashMap<u64, &Op> = HashMap::new();
    let mut acknowledged: Vec<(i64, &Op)> = Vec::new();
    for op in history {
        let Call::Put { value, .. } = op.call else {
            continue;
        };
        verdict.checked += 1;
        puts.insert(value, op);
        if let Some(Ret::Written { revision }) = op.ret() {
            acknowledged.push((*revision, op));
        }
    }
    acknowledged.sort_by_key(|(revision, _)| *revision);
    for watcher in watchers {
        verdict.checked += watcher.items.len();
        check_one_watcher(watcher, &puts, &acknowledged, &mut verdict);
    }
    check_watchers_agree(watchers, &mut verdict);
    verdict
}

/// Revisions go up; every event is a put that may have happened, at the
/// revision it was acknowledged with; no acknowledged put is missing, up to
/// the end of the run.
fn check_one_watcher(
    watcher: &StreamLog<Seen>,
    puts: &HashMap<u64, &Op>,
    acknowledged: &[(i64, &Op)],
    verdict: &mut Verdict,
) {
    let name = &watcher.name;
    let mut previous: Option<&Seen> = None;
    for seen in &watcher.items {
        if let Some(previous) = previous
            && seen.revision <= previous.revision
        {
            verdict.violations.push(
                Violation::new(
                    format!(
                        "{name}: revision {} after revision {} (repeat or out of order)",
                        seen.revision, previous.revision
                    ),
                    Vec::new(),
                )
                .with_items(vec![previous.to_string(), seen.to_string()]),
            );
        }
        previous = Some(seen);
        let put = seen.value.and_then(|value| puts.get(&value));
        let Some(put) = put else {
            verdict.violations.push(
                Violation::new(format!("{name}: a change nobody wrote"), Vec::new())
                    .with_items(vec![seen.to_string()]),
            );
            continue;
        };
        let Call::Put { key, .. } = &put.call else {
            unreachable!("only puts are indexed");
        };
        let wrong = match &put.outcome {
            Outcome::Fail { .. } => Some("a write that failed is visible".to_owned()),
            Outcome::Ok(Ret::Written { revision }) if *revision != seen.revision => Some(format!(
                "a write acknowledged at revision {revision} was delivered at revision {}",
                seen.revision
            )),
            _ if *key != seen.key => {
                Some(format!("a write to {key} was delivered as {}", seen.key))
            }
            _ => None,
        };
        if let Some(wrong) = wrong {
            verdict.violations.push(
                Violation::new(format!("{name}: {wrong}"), vec![(*put).clone()])
                    .with_items(vec![seen.to_string()]),
            );
        }
    }
    let delivered: std::collections::HashSet<i64> =
        watcher.items.iter().map(|seen| seen.revision).collect();
    let missing: Vec<&Op> = acknowledged
        .iter()
        .filter(|(revision, _)| *revision >= watcher.start_revision)
        .filter(|(revision, _)| !delivered.contains(revision))
        .map(|(_, op)| *op)
        .collect();
    if let Some(first) = missing.first() {
        let revision = match first.ret() {
            Some(Ret::Written { revision }) => *revision,
            _ => 0,
        };
        let around: Vec<String> = watcher
            .items
            .iter()
            .filter(|seen| (seen.revision - revision).abs() <= 10)
            .map(ToString::to_string)
            .collect();
        let last = watcher.items.last().map_or(0, |seen| seen.revision);
        verdict.violations.push(
            Violation::new(
                format!(
                    "{name}: gap: {} acknowledged write(s) never delivered, the first at \
                     revision {revision} (the watcher got as far as revision {last})",
                    missing.len()
                ),
                missing.iter().take(5).map(|op| (*op).clone()).collect(),
            )
            .with_items(around),
        );
    }
}

/// Watchers opened at the same revision saw the same changes, up to where
/// the one that got least far stopped.
fn check_watchers_agree(watchers: &[StreamLog<Seen>], verdict: &mut Verdict) {
    let Some(reference) = watchers.first() else {
        return;
    };
    let common_end = watchers
        .iter()
        .map(|w| w.items.last().map_or(i64::MIN, |seen| seen.revision))
        .min()
        .unwrap_or(i64::MIN);
    let prefix = |w: &StreamLog<Seen>| -> Vec<(i64, String, Option<u64>)> {
        w.items
            .iter()
            .filter(|seen| seen.revision <= common_end)
            .map(|seen| (seen.revision, seen.key.clone(), seen.value))
            .collect()
    };
    let expected = prefix(reference);
    for other in &watchers[1..] {
        let got = prefix(other);
        if got == expected {
            continue;
        }
        let at = expected
            .iter()
            .zip(&got)
            .position(|(a, b)| a != b)
            .unwrap_or(expected.len().min(got.len()));
        let mut items = Vec::new();
        for w in [reference, other] {
            items.extend(
                w.items
                    .iter()
                    .skip(at.saturating_sub(2))
                    .take(5)
                    .map(|seen| format!("{}: {seen}", w.name)),
            );
        }
        verdict.violations.push(
            Violation::new(
                format!(
                    "{} and {} disagree at their change #{at}",
                    reference.name, other.name
                ),
                Vec::new(),
            )
            .with_items(items),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::tests::HistoryBuilder;

    fn put(key: &str, value: u64) -> Call {
        Call::Put {
            key: key.into(),
            value,
        }
    }

    fn seen(revision: i64, key: &str, value: u64) -> Seen {
        Seen {
            time: 0,
            revision,
            key: key.into(),
            value: Some(value),
        }
    }

    fn watcher(name: &str, items: Vec<Seen>) -> StreamLog<Seen> {
        StreamLog {
            name: name.into(),
            start_revision: 1,
            items,
            errors: Vec::new(),
        }
    }

    /// Puts 1 and 2 acknowledged at revisions 3 and 7, put 3 unknown.
    fn history() -> HistoryBuilder {
        let mut h = HistoryBuilder::new();
        h.op(1, 0, 10, put("w/a", 1), Ret::written(3));
        h.op(1, 20, 30, put("w/b", 2), Ret::written(7));
        h.unknown(2, 40, put("w/a", 3));
        h
    }

    #[test]
    fn watchers_that_saw_every_acknowledged_write_pass() {
        let h = history();
        let with_unknown = vec![seen(3, "w/a", 1), seen(7, "w/b", 2), seen(9, "w/a", 3)];
        let watchers = [
            watcher("watcher 1", with_unknown.clone()),
            watcher("watcher 2", with_unknown),
        ];
        let verdict = check(&h.ops, &watchers);
        assert!(verdict.violations.is_empty(), "{:?}", verdict.violations);
        assert_eq!(verdict.checked, 3 + 6);
    }

    #[test]
    fn a_gap_is_flagged() {
        let h = history();
        let watchers = [watcher("watcher 1", vec![seen(7, "w/b", 2)])];
        let verdict = check(&h.ops, &watchers);
        assert_eq!(verdict.violations.len(), 1, "{:?}", verdict.violations);
        assert!(verdict.violations[0].what.contains("gap"));
    }

    #[test]
    fn a_repeat_and_a_wrong_revision_are_flagged() {
        let h = history();
        let items = vec![seen(3, "w/a", 1), seen(3, "w/a", 1), seen(8, "w/b", 2)];
        let verdict = check(&h.ops, &[watcher("watcher 1", items)]);
        let whats: Vec<&str> = verdict.violations.iter().map(|v| v.what.as_str()).collect();
        assert!(whats.iter().any(|w| w.contains("repeat")), "{whats:?}");
        assert!(
            whats.iter().any(|w| w.contains("delivered at revision 8")),
            "{whats:?}"
        );
        assert!(whats.iter().any(|w| w.contains("gap")), "{whats:?}");
    }

    #[test]
    fn watchers_that_differ_on_an_unknown_write_are_flagged() {
        let h = history();
        let watchers = [
            watcher(
                "watcher 1",
                vec![seen(3, "w/a", 1), seen(7, "w/b", 2), seen(9, "w/a", 3)],
            ),
            watcher(
                "watcher 2",
                vec![seen(3, "w/a", 1), seen(7, "w/b", 2), seen(10, "w/a", 3)],
            ),
        ];
        let verdict = check(&h.ops, &watchers);
        assert_eq!(verdict.violations.len(), 1, "{:?}", verdict.violations);
        assert!(verdict.violations[0].what.contains("disagree"));
    }

    #[test]
    fn a_failed_write_that_shows_up_is_flagged() {
        let mut h = history();
        h.fail(3, 50, 60, put("w/c", 4));
        let items = vec![seen(3, "w/a", 1), seen(7, "w/b", 2), seen(8, "w/c", 4)];
        let verdict = check(&h.ops, &[watcher("watcher 1", items)]);
        assert_eq!(verdict.violations.len(), 1, "{:?}", verdict.violations);
        assert!(verdict.violations[0].what.contains("failed"));
    }
}

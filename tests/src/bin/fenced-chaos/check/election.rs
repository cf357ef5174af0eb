//! The `election` checker: at most one leader per token, tokens that
//! follow real time, no two leaders at once (as for locks), and observers
//! that all saw the same sequence of leaders, which includes every
//! acknowledged win and nothing nobody campaigned for.

use std::collections::BTreeMap;

use crate::check::lock::{Grant, check_exclusion, check_tokens};
use crate::check::{Verdict, Violation};
use crate::record::{Call, Observed, Op, Outcome, Ret, StreamLog};

/// Checks the election operations of `history` and what `observers` saw.
pub(crate) fn check(history: &[Op], observers: &[StreamLog<Observed>]) -> Verdict {
    let mut verdict = Verdict {
        checker: "election",
        ..Verdict::default()
    };
    let mut wins: BTreeMap<&str, Vec<Grant<'_>>> = BTreeMap::new();
    // Campaigns that may have been elected, by lease: (election, value, op).
    let mut campaigns: BTreeMap<i64, Vec<&Op>> = BTreeMap::new();
    for op in history {
        match (&op.call, &op.outcome) {
            (
                Call::Campaign {
                    election, lease, ..
                },
                outcome,
            ) => {
                if let Outcome::Ok(Ret::Granted { token }) = outcome {
                    wins.entry(election).or_default().push(Grant {
                        acquire: op,
                        token: *token,
                        lease: *lease,
                        uses: Vec::new(),
                    });
                }
                campaigns.entry(*lease).or_default().push(op);
            }
            (Call::Resign { .. }, _) => {}
            _ => continue,
        }
        verdict.checked += 1;
    }
    for op in history {
        let (Call::Resign {
            election, token, ..
        }
        | Call::Pause {
            token,
            election: Some(election),
            ..
        }) = &op.call
        else {
            continue;
        };
        if let Some(win) = wins.get_mut(election.as_str()).and_then(|wins| {
            wins.iter_mut()
                .find(|w| w.token == *token && w.acquire.process == op.process)
        }) {
            win.uses.push(op);
        }
    }
    for (election, wins) in &wins {
        verdict
            .violations
            .extend(check_tokens("election", election, wins));
        verdict
            .violations
            .extend(check_exclusion("election", election, wins));
    }
    for observer in observers {
        verdict.checked += observer.items.len();
        check_one_observer(observer, &campaigns, &mut verdict);
    }
    check_observers_agree(observers, &mut verdict);
    for (election, wins) in &wins {
        check_wins_observed(election, wins, observers, &mut verdict);
    }
    verdict
}

/// Revisions go up, leader tokens never go down, and every leader is a
/// campaign that was not refused, publishing that campaign's value.
fn check_one_observer(
    observer: &StreamLog<Observed>,
    campaigns: &BTreeMap<i64, Vec<&Op>>,
    verdict: &mut Verdict,
) {
    let mut previous: Option<&Observed> = None;
    let mut highest_token: Option<&Observed> = None;
    for item in &observer.items {
        if let Some(previous) = previous
            && item.revision <= previous.revision
        {
            verdict.violations.push(
                Violation::new(
                    format!(
                        "{}: revision {} after revision {} (repeat or out of order)",
                        observer.name, item.revision, previous.revision
                    ),
                    Vec::new(),
                )
                .with_items(vec![previous.to_string(), item.to_string()]),
            );
        }
        previous = Some(item);
        let Some(leader) = item.leader else {
            continue;
        };
        if let Some(high) = highest_token
            && let Some(high_leader) = high.leader
            && leader.token < high_leader.token
        {
            verdict.violations.push(
                Violation::new(
                    format!(
                        "{}: leader token went down from {} to {}",
                        observer.name, high_leader.token, leader.token
                    ),
                    Vec::new(),
                )
                .with_items(vec![high.to_string(), item.to_string()]),
            );
        }
        if highest_token
            .and_then(|high| high.leader)
            .is_none_or(|high| leader.token >= high.token)
        {
            highest_token = Some(item);
        }
        let candidates = campaigns.get(&leader.lease).map_or(&[][..], Vec::as_slice);
        let matching = candidates.iter().find(|op| match op.call {
            Call::Campaign { value, .. } => Some(value) == leader.value,
            _ => false,
        });
        match matching {
            None => verdict.violations.push(
                Violation::new(
                    format!(
                        "{}: a leader nobody campaigned for (lease {}, value {:?})",
                        observer.name, leader.lease, leader.value
                    ),
                    candidates.iter().map(|op| (*op).clone()).collect(),
                )
                .with_items(vec![item.to_string()]),
            ),
            // Only the server's own refusals count: the client also fails a
            // campaign by itself when its session is lost, after which the
            // server may still elect it.
            Some(op) if refused_by_server(&op.outcome) => verdict.violations.push(
                Violation::new(
                    format!("{}: a campaign that was refused is leader", observer.name),
                    vec![(*op).clone()],
                )
                .with_items(vec![item.to_string()]),
            ),
            Some(_) => {}
        }
    }
}

/// Whether the server refused the campaign outright (no such lease, bad
/// input), so it can never lead.
fn refused_by_server(outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Fail { error } => {
            error.starts_with("NotFound") || error.starts_with("InvalidArgument")
        }
        _ => false,
    }
}

/// Every observer started at the same revision, so up to the revision
/// all of them reached they must have seen the same states.
fn check_observers_agree(observers: &[StreamLog<Observed>], verdict: &mut Verdict) {
    let Some(common_end) = observers
        .iter()
        .map(|o| o.items.last().map_or(i64::MIN, |item| item.revision))
        .min()
    else {
        return;
    };
    let Some(reference) = observers.first() else {
        return;
    };
    let prefix = |o: &StreamLog<Observed>| -> Vec<(i64, Option<crate::record::ObservedLeader>)> {
        o.items
            .iter()
            .filter(|item| item.revision <= common_end)
            .map(|item| (item.revision, item.leader))
            .collect()
    };
    let expected = prefix(reference);
    for other in &observers[1..] {
        let got = prefix(other);
        if got == expected {
            continue;
        }
        let at = expected
            .iter()
            .zip(&got)
            .position(|(a, b)| a != b)
            .unwrap_or(expected.len().min(got.len()));
        let context = |o: &StreamLog<Observed>| -> Vec<String> {
            let start = at.saturating_sub(2);
            o.items
                .iter()
                .skip(start)
                .take(5)
                .map(|item| format!("{}: {item}", o.name))
                .collect()
        };
        let mut items = context(reference);
        items.extend(context(other));
        verdict.violations.push(
            Violation::new(
                format!(
                    "{} and {} disagree at their state #{at} (both reached revision \
                     {common_end})",
                    reference.name, other.name
                ),
                Vec::new(),
            )
            .with_items(items),
        );
    }
}

/// An acknowledged win at token `t` is the state at revision `t`: every
/// observer that got past `t` saw it there.
fn check_wins_observed(
    election: &str,
    wins: &[Grant<'_>],
    observers: &[StreamLog<Observed>],
    verdict: &mut Verdict,
) {
    for observer in observers {
        let Some(last) = observer.items.last() else {
            continue;
        };
        for win in wins {
            if win.token < observer.start_revision || win.token > last.revision {
                continue;
            }
            // The win is the state at revision `token`.
            let seen = observer.items.iter().any(|item| {
                item.revision == win.token
                    && item.leader.is_some_and(|leader| leader.token == win.token)
            });
            if !seen {
                let near: Vec<String> = observer
                    .items
                    .iter()
                    .filter(|item| (item.revision - win.token).abs() <= 20)
                    .map(ToString::to_string)
                    .collect();
                verdict.violations.push(
                    Violation::new(
                        format!(
                            "election {election}: {} never saw the acknowledged leader with \
                             token {} although it reached revision {}",
                            observer.name, win.token, last.revision
                        ),
                        vec![win.acquire.clone()],
                    )
                    .with_items(near),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::tests::HistoryBuilder;
    use crate::record::ObservedLeader;

    fn campaign(lease: i64, value: u64) -> Call {
        Call::Campaign {
            election: "e".into(),
            lease,
            value,
        }
    }

    fn resign(token: i64, alive_until: u64) -> Call {
        Call::Resign {
            election: "e".into(),
            token,
            alive_until,
        }
    }

    fn observed(revision: i64, leader: Option<(i64, i64, u64)>) -> Observed {
        Observed {
            time: 0,
            revision,
            leader: leader.map(|(token, lease, value)| ObservedLeader {
                token,
                lease,
                value: Some(value),
            }),
        }
    }

    fn observer(name: &str, items: Vec<Observed>) -> StreamLog<Observed> {
        StreamLog {
            name: name.into(),
            start_revision: 1,
            items,
            errors: Vec::new(),
        }
    }

    /// Lease 1 leads at 5, resigns; lease 2 leads at 8, resigns.
    fn two_terms() -> HistoryBuilder {
        let mut h = HistoryBuilder::new();
        h.op(1, 0, 10, campaign(1, 100), Ret::Granted { token: 5 });
        h.op(1, 20, 30, resign(5, 1_000), Ret::Done);
        h.op(2, 5, 31, campaign(2, 200), Ret::Granted { token: 8 });
        h.op(2, 40, 50, resign(8, 1_000), Ret::Done);
        h
    }

    fn good_observations() -> Vec<Observed> {
        vec![
            observed(5, Some((5, 1, 100))),
            observed(8, Some((8, 2, 200))),
            observed(9, None),
        ]
    }

    #[test]
    fn agreeing_observers_of_orderly_terms_pass() {
        let h = two_terms();
        let observers = [
            observer("observer 1", good_observations()),
            observer("observer 2", good_observations()),
        ];
        let verdict = check(&h.ops, &observers);
        assert!(verdict.violations.is_empty(), "{:?}", verdict.violations);
        assert_eq!(verdict.checked, 4 + 6);
    }

    #[test]
    fn two_leaders_with_one_token_are_flagged() {
        let mut h = two_terms();
        h.op(3, 0, 12, campaign(3, 300), Ret::Granted { token: 5 });
        let verdict = check(&h.ops, &[]);
        assert!(
            verdict
                .violations
                .iter()
                .any(|v| v.what.contains("two grants carry token 5")),
            "{:?}",
            verdict.violations
        );
    }

    #[test]
    fn two_leaders_at_once_are_flagged() {
        let mut h = HistoryBuilder::new();
        h.op(1, 0, 10, campaign(1, 100), Ret::Granted { token: 5 });
        h.op(2, 5, 15, campaign(2, 200), Ret::Granted { token: 8 });
        h.op(1, 20, 30, resign(5, 1_000), Ret::Done);
        let verdict = check(&h.ops, &[]);
        assert_eq!(verdict.violations.len(), 1, "{:?}", verdict.violations);
        assert!(verdict.violations[0].what.contains("two holders at once"));
    }

    #[test]
    fn disagreeing_observers_are_flagged() {
        let h = two_terms();
        let mut other = good_observations();
        other[1].leader = Some(ObservedLeader {
            token: 8,
            lease: 1,
            value: Some(100),
        });
        let observers = [
            observer("observer 1", good_observations()),
            observer("observer 2", other),
        ];
        let verdict = check(&h.ops, &observers);
        assert!(
            verdict
                .violations
                .iter()
                .any(|v| v.what.contains("disagree")),
            "{:?}",
            verdict.violations
        );
    }

    #[test]
    fn a_missed_leader_and_a_token_going_down_are_flagged() {
        let h = two_terms();
        let observers = [observer(
            "observer 1",
            vec![
                observed(8, Some((8, 2, 200))),
                observed(9, Some((5, 1, 100))),
            ],
        )];
        let verdict = check(&h.ops, &observers);
        let whats: Vec<&str> = verdict.violations.iter().map(|v| v.what.as_str()).collect();
        assert!(
            whats.iter().any(|w| w.contains("went down from 8 to 5")),
            "{whats:?}"
        );
        assert!(whats.iter().any(|w| w.contains("never saw")), "{whats:?}");
    }

    #[test]
    fn only_a_campaign_the_server_refused_cannot_lead() {
        let mut h = two_terms();
        // The client gave up on its own (session lost); the server may
        // still have elected it.
        h.push_fail(
            3,
            60,
            70,
            campaign(3, 300),
            "FailedPrecondition: session lost",
        );
        // The server said the lease does not exist.
        h.push_fail(4, 60, 70, campaign(4, 400), "NotFound: lease 4 not found");
        let mut items = good_observations();
        items.push(observed(12, Some((12, 3, 300))));
        let ok = check(&h.ops, &[observer("observer 1", items.clone())]);
        assert!(ok.violations.is_empty(), "{:?}", ok.violations);
        items.push(observed(14, Some((14, 4, 400))));
        let bad = check(&h.ops, &[observer("observer 1", items)]);
        assert_eq!(bad.violations.len(), 1, "{:?}", bad.violations);
        assert!(bad.violations[0].what.contains("refused"));
    }

    #[test]
    fn a_leader_nobody_campaigned_for_is_flagged() {
        let h = two_terms();
        let mut items = good_observations();
        items.push(observed(12, Some((12, 77, 1))));
        let verdict = check(&h.ops, &[observer("observer 1", items)]);
        assert_eq!(verdict.violations.len(), 1, "{:?}", verdict.violations);
        assert!(verdict.violations[0].what.contains("nobody campaigned"));
    }
}

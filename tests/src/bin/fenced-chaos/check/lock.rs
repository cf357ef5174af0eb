//! The `lock` checker: fencing tokens and mutual exclusion of exclusive
//! locks, and the fenced resource the holders write to.
//!
//! - Tokens: a grant carries a token no other grant of the lock has, and a
//!   grant acknowledged before another was asked for has the lower token.
//! - Exclusion: a grant acknowledged while an earlier holder's lease was
//!   still vouched for by its session (and that holder had not started to
//!   release) breaks mutual exclusion. The client's promise, `alive_until`,
//!   lies before the server could expire the lease, on the one monotonic
//!   clock the machine has, so this needs no clock tolerance.
//! - Resource: the harness's fenced resource refuses tokens below the
//!   highest it accepted; every write it accepted must build on every write
//!   accepted before (nothing acknowledged is lost) and carry a higher
//!   token than the previous one. A holder that uses its token after its
//!   lease ran out (a client pause) is the case fencing exists for: it is
//!   counted, not flagged.

use std::collections::BTreeMap;

use crate::check::{Verdict, Violation};
use crate::record::{Call, Op, Outcome, Ret};

/// A grant the holder was told about, and what it did with it.
#[derive(Debug)]
pub(crate) struct Grant<'a> {
    pub(crate) acquire: &'a Op,
    pub(crate) token: i64,
    /// The lease that holds it. An acquire (or campaign) by a lease that
    /// already holds finds the same grant and token again.
    pub(crate) lease: i64,
    /// The holder's operations under this grant (resource use, release,
    /// client pause).
    pub(crate) uses: Vec<&'a Op>,
}

impl Grant<'_> {
    /// The latest lease deadline the holder's session vouched for while it
    /// used the grant.
    pub(crate) fn alive_until(&self) -> Option<u64> {
        self.uses
            .iter()
            .filter_map(|op| match op.call {
                Call::ResourceRead { alive_until, .. }
                | Call::ResourceWrite { alive_until, .. }
                | Call::Release { alive_until, .. }
                | Call::Resign { alive_until, .. } => Some(alive_until),
                _ => None,
            })
            .max()
    }

    /// Until when the grant certainly held: its lease was vouched for and
    /// no release had been sent.
    pub(crate) fn held_until(&self) -> Option<u64> {
        let release = self
            .uses
            .iter()
            .filter(|op| matches!(op.call, Call::Release { .. } | Call::Resign { .. }))
            .map(|op| op.invoke)
            .min()
            .unwrap_or(u64::MAX);
        self.alive_until().map(|alive| alive.min(release))
    }
}

/// Checks every lock operation in `history`.
pub(crate) fn check(history: &[Op]) -> Verdict {
    let mut verdict = Verdict {
        checker: "lock",
        ..Verdict::default()
    };
    let mut grants: BTreeMap<&str, Vec<Grant<'_>>> = BTreeMap::new();
    for op in history {
        match (&op.call, &op.outcome) {
            (Call::Acquire { lock, lease }, Outcome::Ok(Ret::Granted { token })) => {
                grants.entry(lock).or_default().push(Grant {
                    acquire: op,
                    token: *token,
                    lease: *lease,
                    uses: Vec::new(),
                });
            }
            (
                Call::ResourceRead { .. }
                | Call::ResourceWrite { .. }
                | Call::Release { .. }
                | Call::Acquire { .. },
                _,
            ) => {}
            (Call::Pause { lock: Some(_), .. }, _) => {}
            _ => continue,
        }
        verdict.checked += 1;
    }
    for op in history {
        let (lock, token) = match &op.call {
            Call::ResourceRead { lock, token, .. }
            | Call::ResourceWrite { lock, token, .. }
            | Call::Release { lock, token, .. } => (lock.as_str(), *token),
            Call::Pause {
                token,
                lock: Some(lock),
                ..
            } => (lock.as_str(), *token),
            _ => continue,
        };
        if let Some(grant) = grants.get_mut(lock).and_then(|grants| {
            grants
                .iter_mut()
                .find(|g| g.token == token && g.acquire.process == op.process)
        }) {
            grant.uses.push(op);
        }
    }
    for (lock, grants) in &grants {
        verdict
            .violations
            .extend(check_tokens("lock", lock, grants));
        verdict
            .violations
            .extend(check_exclusion("lock", lock, grants));
        check_stale_uses(lock, grants, &mut verdict);
    }
    check_resource(history, &grants, &mut verdict);
    verdict
}

/// Tokens are unique per lock and follow real-time order: a grant
/// acknowledged before another was asked for has the lower token.
pub(crate) fn check_tokens(what: &str, name: &str, grants: &[Grant<'_>]) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (i, a) in grants.iter().enumerate() {
        for b in &grants[i + 1..] {
            if a.token == b.token && a.lease == b.lease {
                // The same grant found again by its own lease (a retry
                // after an unknown outcome): idempotent, not a second one.
                continue;
            }
            if a.token == b.token {
                violations.push(Violation::new(
                    format!(
                        "{what} {name}: two grants carry token {} (processes {} and {})",
                        a.token, a.acquire.process, b.acquire.process
                    ),
                    vec![a.acquire.clone(), b.acquire.clone()],
                ));
                continue;
            }
            for (first, second) in [(a, b), (b, a)] {
                if first.acquire.complete_or_max() < second.acquire.invoke
                    && first.token > second.token
                {
                    violations.push(Violation::new(
                        format!(
                            "{what} {name}: token went down: {} was granted before {} was \
                             asked for, yet {} got the lower token {}",
                            first.token, second.token, second.token, second.token
                        ),
                        vec![first.acquire.clone(), second.acquire.clone()],
                    ));
                }
            }
        }
    }
    violations
}

/// No two holders certainly held at the same time. A holder certainly
/// holds from the acknowledgement of its grant until
/// [`Grant::held_until`]; one that never used its grant, at least at the
/// moment of the acknowledgement.
pub(crate) fn check_exclusion(what: &str, name: &str, grants: &[Grant<'_>]) -> Vec<Violation> {
    let interval = |grant: &Grant<'_>| {
        let start = grant.acquire.complete_or_max();
        (start, grant.held_until().unwrap_or(start).max(start))
    };
    let mut violations = Vec::new();
    for (i, a) in grants.iter().enumerate() {
        for b in &grants[i + 1..] {
            if a.token == b.token && a.lease == b.lease {
                continue;
            }
            let ((a_start, a_end), (b_start, b_end)) = (interval(a), interval(b));
            if !(a_start < b_end && b_start < a_end) {
                continue;
            }
            let (first, second) = match a_start <= b_start {
                true => (a, b),
                false => (b, a),
            };
            let mut ops = vec![first.acquire.clone(), second.acquire.clone()];
            ops.extend(first.uses.iter().map(|op| (*op).clone()));
            violations.push(Violation::new(
                format!(
                    "{what} {name}: two holders at once: token {} was granted at {} while \
                     token {}'s holder still held it (its lease vouched for until {}, no \
                     release sent before {})",
                    second.token,
                    crate::record::secs(second.acquire.complete_or_max()),
                    first.token,
                    crate::record::secs(first.alive_until().unwrap_or(0)),
                    crate::record::secs(interval(first).1)
                ),
                ops,
            ));
        }
    }
    violations
}

/// Counts holders that used their token after their lease ran out, and
/// whether the resource refused them.
fn check_stale_uses(lock: &str, grants: &[Grant<'_>], verdict: &mut Verdict) {
    let (mut stale, mut paused, mut refused) = (0, 0, 0);
    for grant in grants {
        for op in &grant.uses {
            let (Call::ResourceRead { alive_until, .. } | Call::ResourceWrite { alive_until, .. }) =
                op.call
            else {
                continue;
            };
            if op.invoke <= alive_until {
                continue;
            }
            stale += 1;
            let was_paused = grant
                .uses
                .iter()
                .any(|pause| matches!(pause.call, Call::Pause { .. }) && pause.invoke <= op.invoke);
            if was_paused {
                paused += 1;
            }
            if matches!(op.ret(), Some(Ret::Rejected { .. })) {
                refused += 1;
            }
        }
    }
    if stale > 0 {
        verdict.notes.push(format!(
            "lock {lock}: {stale} resource reads or writes came after the holder's lease ran \
             out ({paused} after a client pause); the fenced resource refused {refused} of them \
             (the others came before any newer holder used the resource)"
        ));
    }
}

/// The fenced resource: accepted writes carry strictly increasing tokens
/// and each builds on every write accepted before it.
fn check_resource(history: &[Op], grants: &BTreeMap<&str, Vec<Grant<'_>>>, verdict: &mut Verdict) {
    // A token granted to one lease only may be used by it more than once.
    let single_lease = |lock: &str, token: i64| {
        let leases: std::collections::BTreeSet<i64> = grants
            .get(lock)
            .into_iter()
            .flatten()
            .filter(|g| g.token == token)
            .map(|g| g.lease)
            .collect();
        leases.len() <= 1
    };
    let mut accepted: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    let mut writes: Vec<&Op> = history
        .iter()
        .filter(|op| matches!(op.call, Call::ResourceWrite { .. }))
        .collect();
    writes.sort_by_key(|op| (op.complete_or_max(), op.id));
    for op in writes {
        let Call::ResourceWrite {
            lock,
            token,
            base_len,
            ..
        } = &op.call
        else {
            continue;
        };
        if !matches!(op.ret(), Some(Ret::Done)) {
            continue;
        }
        let before = accepted.entry(lock).or_default();
        if let Some(previous) = before.last() {
            let Call::ResourceWrite {
                token: previous_token,
                ..
            } = previous.call
            else {
                unreachable!("only resource writes are collected");
            };
            if *token < previous_token || (*token == previous_token && !single_lease(lock, *token))
            {
                verdict.violations.push(Violation::new(
                    format!(
                        "fenced resource {lock}: accepted token {token} after token \
                         {previous_token}; accepted tokens must increase from holder to holder"
                    ),
                    vec![(*previous).clone(), op.clone()],
                ));
            }
        }
        if *base_len < before.len() {
            let lost: Vec<Op> = before[*base_len..].iter().map(|op| (*op).clone()).collect();
            let mut ops = lost.clone();
            ops.push(op.clone());
            verdict.violations.push(Violation::new(
                format!(
                    "fenced resource {lock}: acknowledged write(s) lost: the write with token \
                     {token} replaced the list built on {base_len} values, dropping {} \
                     accepted write(s)",
                    lost.len()
                ),
                ops,
            ));
        }
        before.push(op);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::tests::HistoryBuilder;

    fn acquire(lock: &str, lease: i64) -> Call {
        Call::Acquire {
            lock: lock.into(),
            lease,
        }
    }

    fn read(token: i64, alive_until: u64) -> Call {
        Call::ResourceRead {
            lock: "l".into(),
            token,
            alive_until,
        }
    }

    fn write(token: i64, value: u64, base_len: usize, alive_until: u64) -> Call {
        Call::ResourceWrite {
            lock: "l".into(),
            token,
            value,
            base_len,
            alive_until,
        }
    }

    fn release(token: i64, alive_until: u64) -> Call {
        Call::Release {
            lock: "l".into(),
            token,
            alive_until,
        }
    }

    /// One holder's whole cycle: acquire, read, write, release.
    fn cycle(h: &mut HistoryBuilder, process: u64, at: u64, token: i64, base_len: usize) {
        let alive = at + 1_000;
        h.op(
            process,
            at,
            at + 10,
            acquire("l", process as i64),
            Ret::Granted { token },
        );
        h.op(
            process,
            at + 20,
            at + 21,
            read(token, alive),
            Ret::Values { values: vec![] },
        );
        h.op(
            process,
            at + 30,
            at + 31,
            write(token, at, base_len, alive),
            Ret::Done,
        );
        h.op(process, at + 40, at + 50, release(token, alive), Ret::Done);
    }

    #[test]
    fn holders_one_after_another_pass() {
        let mut h = HistoryBuilder::new();
        cycle(&mut h, 1, 0, 5, 0);
        cycle(&mut h, 2, 100, 9, 1);
        cycle(&mut h, 3, 200, 12, 2);
        let verdict = check(&h.ops);
        assert_eq!(verdict.checked, 12);
        assert!(verdict.violations.is_empty(), "{:?}", verdict.violations);
    }

    #[test]
    fn two_overlapping_holders_are_flagged() {
        let mut h = HistoryBuilder::new();
        cycle(&mut h, 1, 0, 5, 0);
        // Granted at 30, while holder 1 held until its release at 40.
        h.op(2, 15, 30, acquire("l", 2), Ret::Granted { token: 9 });
        let verdict = check(&h.ops);
        assert_eq!(verdict.violations.len(), 1, "{:?}", verdict.violations);
        assert!(verdict.violations[0].what.contains("two holders at once"));
    }

    #[test]
    fn a_grant_after_the_lease_ran_out_is_not_an_overlap() {
        let mut h = HistoryBuilder::new();
        h.op(1, 0, 10, acquire("l", 1), Ret::Granted { token: 5 });
        h.op(1, 20, 21, read(5, 100), Ret::Values { values: vec![] });
        // Holder 1 is paused past its lease (vouched for until 100) ...
        let pause = Call::Pause {
            millis: 1,
            token: 5,
            lock: Some("l".into()),
            election: None,
        };
        h.op(1, 25, 500, pause, Ret::Done);
        // ... holder 2 is granted at 300 and writes ...
        h.op(2, 200, 300, acquire("l", 2), Ret::Granted { token: 9 });
        h.op(2, 310, 311, read(9, 1_000), Ret::Values { values: vec![] });
        h.op(2, 320, 321, write(9, 2, 0, 1_000), Ret::Done);
        // ... and holder 1's stale write is refused.
        h.op(
            1,
            510,
            511,
            write(5, 1, 0, 100),
            Ret::Rejected { highest: 9 },
        );
        let verdict = check(&h.ops);
        assert!(verdict.violations.is_empty(), "{:?}", verdict.violations);
        assert_eq!(verdict.notes.len(), 1);
        assert!(
            verdict.notes[0].contains("1 after a client pause"),
            "{:?}",
            verdict.notes
        );
        assert!(
            verdict.notes[0].contains("refused 1"),
            "{:?}",
            verdict.notes
        );
    }

    #[test]
    fn a_token_going_down_is_flagged() {
        let mut h = HistoryBuilder::new();
        cycle(&mut h, 1, 0, 9, 0);
        cycle(&mut h, 2, 100, 5, 1);
        let verdict = check(&h.ops);
        let token_violations: Vec<_> = verdict
            .violations
            .iter()
            .filter(|v| v.what.contains("token went down"))
            .collect();
        assert_eq!(token_violations.len(), 1, "{:?}", verdict.violations);
        // The resource also saw the accepted tokens go down.
        assert!(
            verdict
                .violations
                .iter()
                .any(|v| v.what.contains("accepted tokens must increase"))
        );
    }

    #[test]
    fn a_shared_token_and_a_lost_write_are_flagged() {
        let mut h = HistoryBuilder::new();
        // Two holders get token 5; both read the empty list, both write.
        h.op(1, 0, 10, acquire("l", 1), Ret::Granted { token: 5 });
        h.op(2, 0, 10, acquire("l", 2), Ret::Granted { token: 5 });
        h.op(1, 20, 21, read(5, 1_000), Ret::Values { values: vec![] });
        h.op(2, 22, 23, read(5, 1_000), Ret::Values { values: vec![] });
        h.op(1, 30, 31, write(5, 1, 0, 1_000), Ret::Done);
        h.op(2, 32, 33, write(5, 2, 0, 1_000), Ret::Done);
        let verdict = check(&h.ops);
        let whats: Vec<&str> = verdict.violations.iter().map(|v| v.what.as_str()).collect();
        assert!(
            whats.iter().any(|w| w.contains("two grants carry token 5")),
            "{whats:?}"
        );
        assert!(whats.iter().any(|w| w.contains("lost")), "{whats:?}");
    }

    #[test]
    fn a_lease_that_finds_its_own_grant_again_is_not_a_second_holder() {
        let mut h = HistoryBuilder::new();
        h.op(1, 0, 10, acquire("l", 7), Ret::Granted { token: 5 });
        h.op(1, 20, 21, read(5, 1_000), Ret::Values { values: vec![] });
        h.op(1, 30, 31, write(5, 1, 0, 1_000), Ret::Done);
        h.unknown(1, 40, release(5, 1_000));
        // The release did not happen; the same lease acquires again and
        // finds its grant, token 5, and uses it again.
        h.op(2, 50, 60, acquire("l", 7), Ret::Granted { token: 5 });
        h.op(2, 70, 71, read(5, 1_000), Ret::Values { values: vec![1] });
        h.op(2, 80, 81, write(5, 2, 1, 1_000), Ret::Done);
        let verdict = check(&h.ops);
        assert!(verdict.violations.is_empty(), "{:?}", verdict.violations);
    }

    #[test]
    fn unknown_and_failed_acquires_are_not_grants() {
        let mut h = HistoryBuilder::new();
        cycle(&mut h, 1, 0, 5, 0);
        h.unknown(2, 15, acquire("l", 2));
        h.fail(3, 15, 20, acquire("l", 3));
        assert!(check(&h.ops).violations.is_empty());
    }
}

//! Table-driven tests of locks: grants and fencing tokens, FIFO queues,
//! shared and semaphore modes, retries, try-only, release, cancel, lease
//! ends, lock-delays, the lock-token compare, and the lock key format.

use super::Step::{
    Apply, Delay as DelayIs, Events, InUse, LeaseKeys, Locks, Places, Range, Revision, Unchanged,
};
use super::*;
use crate::state::{
    AcquireCommand, ApplyError, CancelOutcome, Delay, LeaveReason, LockMode, StateMachine,
    parse_lock_key,
};

use LeaveReason::{Cancelled, LeaseExpired, LeaseRevoked, Released};
use LockMode::{Exclusive, Shared};

/// Grants leases 1 to `count`, each with a TTL of 10 s.
fn leases(count: i64) -> Vec<Step> {
    (1..=count)
        .map(|id| Apply(grant_lease(0, 10), lease_granted(id, 10)))
        .collect()
}

/// `leases(count)` followed by `steps`.
fn with_leases(count: i64, steps: Vec<Step>) -> Vec<Step> {
    leases(count).into_iter().chain(steps).collect()
}

fn lock_conflict(text: &str) -> Response {
    error(ApplyError::LockConflict(text.to_string()))
}

fn stale(name: &str, token: i64) -> Response {
    error(ApplyError::StaleToken {
        name: name.to_string(),
        token,
    })
}

fn busy(name: &str, holders: usize) -> Response {
    error(ApplyError::LockBusy {
        name: name.to_string(),
        holders,
    })
}

/// The answer to a cancel that found the lease holding the lock.
fn held(name: &str, lease: i64, token: i64, holders: Vec<Holder>) -> Response {
    Response::LockCancel(CancelOutcome::Held(grant_of(name, lease, token, holders)))
}

fn x(lease: i64, token: i64) -> Holder {
    holder("a", lease, token, Exclusive)
}

fn s(lease: i64, token: i64) -> Holder {
    holder("a", lease, token, Shared)
}

#[test]
fn exclusive() {
    let key = |lease: i64| lock_key("a", lease);
    run(vec![
        (
            "an uncontended acquire is granted at once; its token is the revision of its key",
            with_leases(
                1,
                vec![
                    Apply(put("k", "1"), put_ok(1)),
                    Events(
                        acquire("a", 1),
                        granted("a", 1, 2, vec![x(1, 2)]),
                        vec![put_event(kv_on(1, key(1), "", 2, 2, 1), None)],
                    ),
                    Revision(2),
                    Places("a", vec![(1, 2)], vec![]),
                    LeaseKeys(1, Some(vec![key(1)])),
                ],
            ),
        ),
        (
            "an acquire reports the grant as a lock change",
            with_leases(
                1,
                vec![Locks(
                    acquire("a", 1),
                    granted("a", 1, 1, vec![x(1, 1)]),
                    vec![got("a", 1, 1)],
                )],
            ),
        ),
        (
            "waiters queue in order; a release hands the lock on at its own revision",
            with_leases(
                3,
                vec![
                    Locks(
                        acquire("a", 1),
                        granted("a", 1, 1, vec![x(1, 1)]),
                        vec![got("a", 1, 1)],
                    ),
                    Locks(acquire("a", 2), queued("a", 2, 0), vec![]),
                    Revision(2),
                    Locks(acquire("a", 3), queued("a", 3, 1), vec![]),
                    Revision(3),
                    Places("a", vec![(1, 1)], vec![2, 3]),
                    Locks(
                        release("a", 1, 0),
                        released(4),
                        vec![left("a", 1, Released), got("a", 2, 4)],
                    ),
                    Revision(4),
                    Places("a", vec![(2, 4)], vec![3]),
                    Range(get(key(2)), found(4, vec![kv_on(2, key(2), "", 2, 4, 2)])),
                    Events(
                        release("a", 4, 2),
                        released(5),
                        vec![
                            delete_event(key(2), 5, kv_on(2, key(2), "", 2, 4, 2)),
                            put_event(
                                kv_on(3, key(3), "", 3, 5, 2),
                                Some(kv_on(3, key(3), "", 3, 3, 1)),
                            ),
                        ],
                    ),
                    Locks(
                        release("a", 5, 3),
                        released(6),
                        vec![left("a", 3, Released)],
                    ),
                    InUse("a", false),
                    Range(scan(LOCK_PREFIX), found(6, vec![])),
                    LeaseKeys(1, Some(vec![])),
                ],
            ),
        ),
        (
            "locks of different names do not interact",
            with_leases(
                2,
                vec![
                    Apply(acquire("a", 1), granted("a", 1, 1, vec![x(1, 1)])),
                    Apply(
                        acquire("b", 2),
                        granted("b", 2, 2, vec![holder("b", 2, 2, Exclusive)]),
                    ),
                    Apply(acquire("b", 1), queued("b", 1, 0)),
                    LeaseKeys(1, Some(vec![key(1), lock_key("b", 1)])),
                ],
            ),
        ),
        (
            "an acquire with a dead or unknown lease is refused",
            with_leases(
                1,
                vec![
                    Unchanged(acquire("a", 2), error(ApplyError::LeaseNotFound(2))),
                    Apply(revoke(1), Response::LeaseRevoke { revision: 0 }),
                    Unchanged(acquire("a", 1), error(ApplyError::LeaseNotFound(1))),
                    InUse("a", false),
                ],
            ),
        ),
    ]);
}

#[test]
fn retries_find_the_same_place() {
    run(vec![(
        "acquiring again with the same lease changes nothing",
        with_leases(
            2,
            vec![
                Apply(acquire("a", 1), granted("a", 1, 1, vec![x(1, 1)])),
                Unchanged(acquire("a", 1), granted("a", 1, 1, vec![x(1, 1)])),
                Unchanged(acquire_try("a", 1), granted("a", 1, 1, vec![x(1, 1)])),
                Apply(acquire("a", 2), queued("a", 2, 0)),
                Unchanged(acquire("a", 2), queued("a", 2, 0)),
                Unchanged(acquire_try("a", 2), queued("a", 2, 0)),
                Revision(2),
            ],
        ),
    )]);
}

#[test]
fn shared() {
    run(vec![
        (
            "readers share; a writer waits for all of them; later readers queue behind it",
            with_leases(
                4,
                vec![
                    Apply(acquire_shared("a", 1), granted("a", 1, 1, vec![s(1, 1)])),
                    Apply(
                        acquire_shared("a", 2),
                        granted("a", 2, 2, vec![s(1, 1), s(2, 2)]),
                    ),
                    Apply(acquire("a", 3), queued("a", 3, 0)),
                    Apply(acquire_shared("a", 4), queued("a", 4, 1)),
                    Locks(
                        release("a", 1, 0),
                        released(5),
                        vec![left("a", 1, Released)],
                    ),
                    Places("a", vec![(2, 2)], vec![3, 4]),
                    Locks(
                        release("a", 2, 0),
                        released(6),
                        vec![left("a", 2, Released), got("a", 3, 6)],
                    ),
                    Locks(
                        release("a", 6, 0),
                        released(7),
                        vec![left("a", 3, Released), got("a", 4, 7)],
                    ),
                ],
            ),
        ),
        (
            "consecutive readers are granted together, with one token",
            with_leases(
                5,
                vec![
                    Apply(acquire("a", 1), granted("a", 1, 1, vec![x(1, 1)])),
                    Apply(acquire_shared("a", 2), queued("a", 2, 0)),
                    Apply(acquire_shared("a", 3), queued("a", 3, 1)),
                    Apply(acquire("a", 4), queued("a", 4, 2)),
                    Apply(acquire_shared("a", 5), queued("a", 5, 3)),
                    Locks(
                        release("a", 1, 0),
                        released(6),
                        vec![left("a", 1, Released), got("a", 2, 6), got("a", 3, 6)],
                    ),
                    Places("a", vec![(2, 6), (3, 6)], vec![4, 5]),
                    Range(
                        get(lock_key("a", 3)),
                        found(6, vec![kv_on(3, lock_key("a", 3), "", 3, 6, 2)]),
                    ),
                    Unchanged(
                        acquire_shared("a", 3),
                        granted("a", 3, 6, vec![s(2, 6), s(3, 6)]),
                    ),
                    Unchanged(
                        release("a", 6, 0),
                        error(ApplyError::AmbiguousToken {
                            name: "a".to_string(),
                            token: 6,
                            holders: 2,
                        }),
                    ),
                    Unchanged(release("a", 6, 4), stale("a", 6)),
                    Locks(
                        release("a", 6, 3),
                        released(7),
                        vec![left("a", 3, Released)],
                    ),
                    Locks(
                        release("a", 6, 2),
                        released(8),
                        vec![left("a", 2, Released), got("a", 4, 8)],
                    ),
                    Locks(
                        release("a", 8, 0),
                        released(9),
                        vec![left("a", 4, Released), got("a", 5, 9)],
                    ),
                ],
            ),
        ),
    ]);
}

#[test]
fn semaphores() {
    let permit = |lease: i64, token: i64| holder("a", lease, token, Exclusive);
    run(vec![
        (
            "a semaphore grants up to N; each release or lease end lets the next in",
            with_leases(
                4,
                vec![
                    Apply(
                        acquire_permits("a", 1, 2),
                        granted("a", 1, 1, vec![permit(1, 1)]),
                    ),
                    Apply(
                        acquire_permits("a", 2, 2),
                        granted("a", 2, 2, vec![permit(1, 1), permit(2, 2)]),
                    ),
                    Apply(acquire_permits("a", 3, 2), queued("a", 3, 0)),
                    Apply(acquire_permits("a", 4, 2), queued("a", 4, 1)),
                    Locks(
                        release("a", 1, 0),
                        released(5),
                        vec![left("a", 1, Released), got("a", 3, 5)],
                    ),
                    Places("a", vec![(2, 2), (3, 5)], vec![4]),
                    Locks(
                        expire(&[2]),
                        expired(6, &[2]),
                        vec![left("a", 2, LeaseExpired), got("a", 4, 6)],
                    ),
                    Places("a", vec![(3, 5), (4, 6)], vec![]),
                ],
            ),
        ),
        (
            "two permits freed at once let two waiters in, with one token",
            with_leases(
                5,
                vec![
                    Apply(
                        acquire_permits("a", 1, 3),
                        granted("a", 1, 1, vec![permit(1, 1)]),
                    ),
                    Apply(
                        acquire_permits("a", 2, 3),
                        granted("a", 2, 2, vec![permit(1, 1), permit(2, 2)]),
                    ),
                    Apply(
                        acquire_permits("a", 3, 3),
                        granted("a", 3, 3, vec![permit(1, 1), permit(2, 2), permit(3, 3)]),
                    ),
                    Apply(acquire_permits("a", 4, 3), queued("a", 4, 0)),
                    Apply(acquire_permits("a", 5, 3), queued("a", 5, 1)),
                    Locks(
                        revoke(1),
                        Response::LeaseRevoke { revision: 6 },
                        vec![left("a", 1, LeaseRevoked), got("a", 4, 6)],
                    ),
                    Locks(
                        expire(&[2, 3]),
                        expired(7, &[2, 3]),
                        vec![
                            left("a", 2, LeaseExpired),
                            left("a", 3, LeaseExpired),
                            got("a", 5, 7),
                        ],
                    ),
                    Places("a", vec![(4, 6), (5, 7)], vec![]),
                ],
            ),
        ),
    ]);
}

#[test]
fn try_only() {
    run(vec![
        (
            "try-only on a free lock takes it",
            with_leases(
                1,
                vec![Locks(
                    acquire_try("a", 1),
                    granted("a", 1, 1, vec![x(1, 1)]),
                    vec![got("a", 1, 1)],
                )],
            ),
        ),
        (
            "try-only on a taken lock is refused and leaves nothing behind",
            with_leases(
                2,
                vec![
                    Apply(acquire("a", 1), granted("a", 1, 1, vec![x(1, 1)])),
                    Unchanged(acquire_try("a", 2), busy("a", 1)),
                    Places("a", vec![(1, 1)], vec![]),
                    Range(get(lock_key("a", 2)), found(1, vec![])),
                    LeaseKeys(2, Some(vec![])),
                ],
            ),
        ),
        (
            "try-only does not jump the queue, even when the holders would admit it",
            with_leases(
                3,
                vec![
                    Apply(acquire_shared("a", 1), granted("a", 1, 1, vec![s(1, 1)])),
                    Apply(acquire("a", 2), queued("a", 2, 0)),
                    Unchanged(
                        Command::LockAcquire(AcquireCommand {
                            mode: Shared,
                            try_only: true,
                            ..acquire_cmd("a", 3)
                        }),
                        busy("a", 1),
                    ),
                ],
            ),
        ),
    ]);
}

#[test]
fn conflicts() {
    run(vec![
        (
            "permits must be at least one; a semaphore has no shared mode",
            with_leases(
                1,
                vec![
                    Unchanged(
                        acquire_permits("a", 1, 0),
                        lock_conflict("lock \"a\": permits must be at least 1"),
                    ),
                    Unchanged(
                        Command::LockAcquire(AcquireCommand {
                            mode: Shared,
                            permits: 2,
                            ..acquire_cmd("a", 1)
                        }),
                        lock_conflict("lock \"a\": a semaphore (2 permits) has no shared mode"),
                    ),
                    InUse("a", false),
                ],
            ),
        ),
        (
            "an acquire must agree with the permits of a lock in use, and may change them once it is free",
            with_leases(
                2,
                vec![
                    Apply(acquire("a", 1), granted("a", 1, 1, vec![x(1, 1)])),
                    Unchanged(
                        acquire_permits("a", 2, 3),
                        lock_conflict(
                            "lock \"a\" is in use with 1 permit(s); this acquire asked for 3",
                        ),
                    ),
                    Unchanged(
                        acquire_permits("a", 1, 3),
                        lock_conflict(
                            "lock \"a\" is in use with 1 permit(s); this acquire asked for 3",
                        ),
                    ),
                    Apply(release("a", 1, 1), released(2)),
                    Apply(
                        acquire_permits("a", 2, 3),
                        granted("a", 2, 3, vec![x(2, 3)]),
                    ),
                ],
            ),
        ),
    ]);
}

#[test]
fn releases() {
    run(vec![(
        "a release must name a current token; a stale one changes nothing",
        with_leases(
            2,
            vec![
                Unchanged(release("a", 1, 0), stale("a", 1)),
                Apply(acquire("a", 1), granted("a", 1, 1, vec![x(1, 1)])),
                Unchanged(release("a", 2, 0), stale("a", 2)),
                Unchanged(release("a", 1, 2), stale("a", 1)),
                Unchanged(release("b", 1, 0), stale("b", 1)),
                Apply(release("a", 1, 1), released(2)),
                Unchanged(release("a", 1, 1), stale("a", 1)),
                Apply(acquire("a", 1), granted("a", 1, 3, vec![x(1, 3)])),
                Unchanged(release("a", 1, 1), stale("a", 1)),
                Unchanged(release("a", 1, 0), stale("a", 1)),
                Apply(release("a", 3, 0), released(4)),
            ],
        ),
    )]);
}

#[test]
fn cancels() {
    run(vec![
        (
            "cancel removes a waiter, answers a holder with its grant, and knows no one else",
            with_leases(
                3,
                vec![
                    Unchanged(
                        cancel("a", 1),
                        Response::LockCancel(CancelOutcome::NotQueued),
                    ),
                    Apply(acquire("a", 1), granted("a", 1, 1, vec![x(1, 1)])),
                    Apply(acquire("a", 2), queued("a", 2, 0)),
                    Apply(acquire("a", 3), queued("a", 3, 1)),
                    Unchanged(cancel("a", 1), held("a", 1, 1, vec![x(1, 1)])),
                    Events(
                        cancel("a", 2),
                        Response::LockCancel(CancelOutcome::Cancelled),
                        vec![delete_event(
                            lock_key("a", 2),
                            4,
                            kv_on(2, lock_key("a", 2), "", 2, 2, 1),
                        )],
                    ),
                    Places("a", vec![(1, 1)], vec![3]),
                    LeaseKeys(2, Some(vec![])),
                    Unchanged(
                        cancel("a", 2),
                        Response::LockCancel(CancelOutcome::NotQueued),
                    ),
                    Unchanged(
                        cancel("b", 3),
                        Response::LockCancel(CancelOutcome::NotQueued),
                    ),
                    Apply(acquire("a", 2), queued("a", 2, 1)),
                    Places("a", vec![(1, 1)], vec![3, 2]),
                ],
            ),
        ),
        (
            "a cancel reports the place that ended",
            with_leases(
                2,
                vec![
                    Apply(acquire("a", 1), granted("a", 1, 1, vec![x(1, 1)])),
                    Apply(acquire("a", 2), queued("a", 2, 0)),
                    Locks(
                        cancel("a", 2),
                        Response::LockCancel(CancelOutcome::Cancelled),
                        vec![left("a", 2, Cancelled)],
                    ),
                ],
            ),
        ),
        (
            "cancelling the writer ahead of readers lets them in at once",
            with_leases(
                4,
                vec![
                    Apply(acquire_shared("a", 1), granted("a", 1, 1, vec![s(1, 1)])),
                    Apply(acquire("a", 2), queued("a", 2, 0)),
                    Apply(acquire_shared("a", 3), queued("a", 3, 1)),
                    Apply(acquire_shared("a", 4), queued("a", 4, 2)),
                    Locks(
                        cancel("a", 2),
                        Response::LockCancel(CancelOutcome::Cancelled),
                        vec![left("a", 2, Cancelled), got("a", 3, 5), got("a", 4, 5)],
                    ),
                    Revision(5),
                    Places("a", vec![(1, 1), (3, 5), (4, 5)], vec![]),
                ],
            ),
        ),
    ]);
}

#[test]
fn lease_ends() {
    run(vec![
        (
            "revoking the holder hands the lock on at the revoke's revision",
            with_leases(
                2,
                vec![
                    Apply(put_on(1, "k", ""), put_ok(1)),
                    Apply(acquire("a", 1), granted("a", 1, 2, vec![x(1, 2)])),
                    Apply(acquire("a", 2), queued("a", 2, 0)),
                    Locks(
                        revoke(1),
                        Response::LeaseRevoke { revision: 4 },
                        vec![left("a", 1, LeaseRevoked), got("a", 2, 4)],
                    ),
                    Revision(4),
                    Places("a", vec![(2, 4)], vec![]),
                    DelayIs("a", None),
                    Range(get("k"), found(4, vec![])),
                ],
            ),
        ),
        (
            "revoking a waiter removes its place",
            with_leases(
                3,
                vec![
                    Apply(acquire("a", 1), granted("a", 1, 1, vec![x(1, 1)])),
                    Apply(acquire("a", 2), queued("a", 2, 0)),
                    Apply(acquire("a", 3), queued("a", 3, 1)),
                    Locks(
                        revoke(2),
                        Response::LeaseRevoke { revision: 4 },
                        vec![left("a", 2, LeaseRevoked)],
                    ),
                    Places("a", vec![(1, 1)], vec![3]),
                ],
            ),
        ),
        (
            "one expiry ends several leases in several locks at one revision",
            with_leases(
                4,
                vec![
                    Apply(acquire("a", 1), granted("a", 1, 1, vec![x(1, 1)])),
                    Apply(
                        acquire("b", 1),
                        granted("b", 1, 2, vec![holder("b", 1, 2, Exclusive)]),
                    ),
                    Apply(acquire("a", 2), queued("a", 2, 0)),
                    Apply(acquire("b", 3), queued("b", 3, 0)),
                    Apply(acquire("a", 4), queued("a", 4, 1)),
                    Locks(
                        expire(&[1, 2]),
                        expired(6, &[1, 2]),
                        vec![
                            left("a", 1, LeaseExpired),
                            left("b", 1, LeaseExpired),
                            left("a", 2, LeaseExpired),
                            got("a", 4, 6),
                            got("b", 3, 6),
                        ],
                    ),
                    Revision(6),
                    Places("a", vec![(4, 6)], vec![]),
                    Places("b", vec![(3, 6)], vec![]),
                    Range(
                        scan(LOCK_PREFIX),
                        found(
                            6,
                            vec![
                                kv_on(4, lock_key("a", 4), "", 5, 6, 2),
                                kv_on(3, lock_key("b", 3), "", 4, 6, 2),
                            ],
                        ),
                    ),
                ],
            ),
        ),
    ]);
}

#[test]
fn lock_delays() {
    let delayed = |lease: i64, token: i64, delay_ms: u64| Holder {
        delay_ms,
        ..x(lease, token)
    };
    run(vec![
        (
            "an expired holder's delay keeps everyone out until its end commits",
            with_leases(
                3,
                vec![
                    Apply(
                        acquire_delayed("a", 1, 500),
                        granted("a", 1, 1, vec![delayed(1, 1, 500)]),
                    ),
                    Apply(acquire("a", 2), queued("a", 2, 0)),
                    Locks(
                        expire(&[1]),
                        expired(3, &[1]),
                        vec![left("a", 1, LeaseExpired)],
                    ),
                    DelayIs("a", Some(Delay { since: 3, ms: 500 })),
                    Places("a", vec![], vec![2]),
                    Unchanged(acquire_try("a", 3), busy("a", 0)),
                    Apply(acquire("a", 3), queued("a", 3, 1)),
                    Unchanged(delay_end("a", 2), Response::LockDelayEnd(false)),
                    Unchanged(delay_end("a", 4), Response::LockDelayEnd(false)),
                    Unchanged(delay_end("b", 3), Response::LockDelayEnd(false)),
                    Locks(
                        delay_end("a", 3),
                        Response::LockDelayEnd(true),
                        vec![got("a", 2, 5)],
                    ),
                    Revision(5),
                    DelayIs("a", None),
                    Places("a", vec![(2, 5)], vec![3]),
                    Unchanged(delay_end("a", 3), Response::LockDelayEnd(false)),
                ],
            ),
        ),
        (
            "a lock with only a delay is still in use; a new acquirer queues",
            with_leases(
                2,
                vec![
                    Apply(
                        acquire_delayed("a", 1, 100),
                        granted("a", 1, 1, vec![delayed(1, 1, 100)]),
                    ),
                    Apply(expire(&[1]), expired(2, &[1])),
                    InUse("a", true),
                    Places("a", vec![], vec![]),
                    Apply(acquire("a", 2), queued("a", 2, 0)),
                    Locks(
                        delay_end("a", 2),
                        Response::LockDelayEnd(true),
                        vec![got("a", 2, 4)],
                    ),
                ],
            ),
        ),
        (
            "a delay that ends with nobody waiting frees the lock without a revision",
            with_leases(
                2,
                vec![
                    Apply(
                        acquire_delayed("a", 1, 100),
                        granted("a", 1, 1, vec![delayed(1, 1, 100)]),
                    ),
                    Apply(expire(&[1]), expired(2, &[1])),
                    Events(delay_end("a", 2), Response::LockDelayEnd(true), vec![]),
                    Revision(2),
                    InUse("a", false),
                    Apply(acquire("a", 2), granted("a", 2, 3, vec![x(2, 3)])),
                ],
            ),
        ),
        (
            "a clean release or a revoke starts no delay",
            with_leases(
                3,
                vec![
                    Apply(
                        acquire_delayed("a", 1, 100),
                        granted("a", 1, 1, vec![delayed(1, 1, 100)]),
                    ),
                    Apply(acquire_delayed("a", 2, 100), queued("a", 2, 0)),
                    Locks(
                        release("a", 1, 0),
                        released(3),
                        vec![left("a", 1, Released), got("a", 2, 3)],
                    ),
                    DelayIs("a", None),
                    Apply(acquire("a", 3), queued("a", 3, 0)),
                    Locks(
                        revoke(2),
                        Response::LeaseRevoke { revision: 5 },
                        vec![left("a", 2, LeaseRevoked), got("a", 3, 5)],
                    ),
                    DelayIs("a", None),
                ],
            ),
        ),
        (
            "an expired waiter, or a holder without a delay, starts none",
            with_leases(
                3,
                vec![
                    Apply(acquire("a", 1), granted("a", 1, 1, vec![x(1, 1)])),
                    Apply(acquire_delayed("a", 2, 100), queued("a", 2, 0)),
                    Apply(acquire("a", 3), queued("a", 3, 1)),
                    Apply(expire(&[2]), expired(4, &[2])),
                    DelayIs("a", None),
                    Locks(
                        expire(&[1]),
                        expired(5, &[1]),
                        vec![left("a", 1, LeaseExpired), got("a", 3, 5)],
                    ),
                    DelayIs("a", None),
                ],
            ),
        ),
        (
            "a second expiry during a delay restarts it, with the longer wait",
            with_leases(
                3,
                vec![
                    Apply(
                        Command::LockAcquire(AcquireCommand {
                            mode: Shared,
                            delay_ms: 300,
                            ..acquire_cmd("a", 1)
                        }),
                        granted(
                            "a",
                            1,
                            1,
                            vec![Holder {
                                delay_ms: 300,
                                ..s(1, 1)
                            }],
                        ),
                    ),
                    Apply(
                        Command::LockAcquire(AcquireCommand {
                            mode: Shared,
                            delay_ms: 100,
                            ..acquire_cmd("a", 2)
                        }),
                        granted(
                            "a",
                            2,
                            2,
                            vec![
                                Holder {
                                    delay_ms: 300,
                                    ..s(1, 1)
                                },
                                Holder {
                                    delay_ms: 100,
                                    ..s(2, 2)
                                },
                            ],
                        ),
                    ),
                    Apply(acquire("a", 3), queued("a", 3, 0)),
                    Apply(expire(&[1]), expired(4, &[1])),
                    DelayIs("a", Some(Delay { since: 4, ms: 300 })),
                    Apply(expire(&[2]), expired(5, &[2])),
                    DelayIs("a", Some(Delay { since: 5, ms: 300 })),
                    Unchanged(delay_end("a", 4), Response::LockDelayEnd(false)),
                    Locks(
                        delay_end("a", 5),
                        Response::LockDelayEnd(true),
                        vec![got("a", 3, 6)],
                    ),
                ],
            ),
        ),
    ]);
}

/// Whether a lock-token compare holds on lock "a", where lease 2 holds the
/// lock with token 3 (granted when lease 1 released token 1).
#[test]
fn txn_lock_token_compares() {
    use CompareOp::{Equal, Greater, Less, NotEqual};
    let cases: Vec<(Vec<u8>, CompareOp, i64, bool)> = vec![
        (bytes("a"), Equal, 3, true),
        (bytes("a"), Equal, 1, false),
        // The waiter's key was written at 2, but 2 was never a grant.
        (bytes("a"), Equal, 2, false),
        (bytes("a"), Equal, 4, false),
        (bytes("a"), NotEqual, 4, true),
        (bytes("a"), NotEqual, 3, false),
        (bytes("a"), NotEqual, 1, true),
        (bytes("a"), Greater, 3, false),
        (bytes("a"), Greater, 1, false),
        (bytes("a"), Less, 3, false),
        (bytes("a"), Less, 4, false),
        // Not a lock in use.
        (bytes("b"), Equal, 3, false),
        (bytes("b"), NotEqual, 3, true),
        // The compare names the lock, not its key.
        (lock_key("a", 2), Equal, 3, false),
        (bytes(b"\xff"), Equal, 3, false),
        (bytes(b"\xff"), NotEqual, 3, true),
    ];
    for (key, op, token, holds) in cases {
        let mut state = StateMachine::new();
        for command in [
            grant_lease(0, 10),
            grant_lease(0, 10),
            acquire("a", 1),
            acquire("a", 2),
            release("a", 1, 0),
        ] {
            state.apply(&command);
        }
        assert!(state.locks().is_current("a", 3));
        let command = txn(
            vec![Compare {
                key: key.clone(),
                op,
                target: CompareTarget::LockToken(token),
            }],
            vec![op_put("s", "")],
            vec![op_put("f", "")],
        );
        let ran = if holds { "s" } else { "f" };
        let response = txn_ok(
            4,
            holds,
            vec![TxnOpResult::Put(PutResult {
                revision: 4,
                prev_kv: None,
            })],
        );
        let events = vec![put_event(kv(ran, "", 4, 4, 1), None)];
        assert_eq!(
            state.apply(&command),
            (response, events),
            "{key:?} {op:?} {token}"
        );
    }
}

#[test]
fn lock_keys() {
    assert_eq!(
        lock_key("jobs", 0x2a),
        bytes("__fenced/lock/jobs/@000000000000002a")
    );
    assert_eq!(
        lock_key("#db-primary", 0x2a),
        bytes("__fenced/election/db-primary/@000000000000002a")
    );
    for (name, lease) in [
        ("jobs", 1),
        ("", 2),
        ("a/b", i64::MAX),
        ("x/@0000000000000001", 3),
        ("#db-primary", 4),
        ("#a/b", 5),
    ] {
        assert_eq!(
            parse_lock_key(&lock_key(name, lease)),
            Some((name.to_string(), lease)),
            "{name:?}"
        );
    }
    for key in [
        "jobs/@0000000000000001",
        "__fenced/lock/",
        "__fenced/lock/jobs",
        "__fenced/lock/jobs/@000000000000001",
        "__fenced/lock/jobs/#0000000000000001",
        "__fenced/lock/jobs/@00000000000000zz",
        "__fenced/election/jobs/@000000000000001",
        "__fenced/leader/jobs",
    ] {
        assert_eq!(parse_lock_key(key.as_bytes()), None, "{key:?}");
    }
}

/// Locks are part of the digest. Pinned like `kv_table::digest_is_stable`,
/// after lease 1 (TTL 10) took lock "a": the keyspace, the lease table, then
/// the lock count and per lock in name order: name, permits, holder count,
/// per holder lease, token, key, mode (0 exclusive, 1 shared) and delay;
/// waiter count, per waiter lease, key, mode and delay; then the delay's
/// start and length, or -1 for none.
#[test]
fn digest_covers_locks() {
    let mut state = StateMachine::new();
    state.apply(&grant_lease(0, 10));
    state.apply(&acquire("a", 1));
    assert_eq!(state.digest(), ONE_LOCK_DIGEST);
}

const ONE_LOCK_DIGEST: u64 = 0x8b2b_d496_9d83_6548;

/// States that differ in one field of a lease or a lock (and nowhere in the
/// keyspace) have different digests: no field is left out of the hash.
#[test]
fn digest_covers_every_field() {
    let shared = |lease: i64, delay_ms: u64| {
        Command::LockAcquire(AcquireCommand {
            mode: Shared,
            delay_ms,
            ..acquire_cmd("a", lease)
        })
    };
    let two = || vec![grant_lease(0, 10), grant_lease(0, 10)];
    let then = |mut commands: Vec<Command>, more: Vec<Command>| {
        commands.extend(more);
        commands
    };
    let cases: Vec<(&str, Vec<Command>, Vec<Command>)> = vec![
        (
            "lease TTL",
            vec![grant_lease(0, 10)],
            vec![grant_lease(0, 20)],
        ),
        (
            "highest lease id",
            vec![grant_lease(0, 10), revoke(1)],
            vec![],
        ),
        (
            "permits",
            then(two(), vec![acquire("a", 1)]),
            then(two(), vec![acquire_permits("a", 1, 2)]),
        ),
        (
            "holder mode",
            then(two(), vec![acquire("a", 1)]),
            then(two(), vec![shared(1, 0)]),
        ),
        (
            "holder delay",
            then(two(), vec![acquire("a", 1)]),
            then(two(), vec![acquire_delayed("a", 1, 100)]),
        ),
        (
            "waiter mode",
            then(two(), vec![acquire("a", 1), acquire("a", 2)]),
            then(two(), vec![acquire("a", 1), shared(2, 0)]),
        ),
        (
            "waiter delay",
            then(two(), vec![acquire("a", 1), acquire("a", 2)]),
            then(two(), vec![acquire("a", 1), acquire_delayed("a", 2, 100)]),
        ),
        (
            "delay length",
            then(two(), vec![acquire_delayed("a", 1, 100), expire(&[1])]),
            then(two(), vec![acquire_delayed("a", 1, 200), expire(&[1])]),
        ),
        (
            "delay or none",
            then(two(), vec![acquire_delayed("a", 1, 100), expire(&[1])]),
            then(two(), vec![acquire("a", 1), expire(&[1])]),
        ),
    ];
    for (field, left, right) in cases {
        let [one, other] = [left, right].map(|commands| {
            let mut state = StateMachine::new();
            for command in &commands {
                state.apply(command);
            }
            state
        });
        assert_eq!(
            one.range(&scan("")),
            other.range(&scan("")),
            "{field}: the keyspaces should be equal"
        );
        assert_ne!(one, other, "{field}");
        assert_ne!(one.digest(), other.digest(), "{field}");
    }
}

//! Table-driven tests of leases: ids and TTLs, keys attached by puts,
//! revoke and expiry at one revision, and the reserved prefix that client
//! writes may not touch.

use super::Step::{Apply, Events, LeaseKeys, Locks, Places, Range, Revision, Unchanged};
use super::*;
use crate::state::{ApplyError, StateMachine};

/// The keys a live lease lists.
fn keys(keys: &[&str]) -> Option<Vec<Vec<u8>>> {
    Some(keys.iter().map(bytes).collect())
}

fn txn_put_ok(revision: i64) -> TxnOpResult {
    TxnOpResult::Put(PutResult {
        revision,
        prev_kv: None,
    })
}

#[test]
fn lease_ids() {
    run(vec![
        (
            "id 0 picks one above the highest id granted",
            vec![
                Apply(grant_lease(0, 10), lease_granted(1, 10)),
                Apply(grant_lease(0, 20), lease_granted(2, 20)),
                Apply(grant_lease(10, 5), lease_granted(10, 5)),
                Apply(grant_lease(0, 5), lease_granted(11, 5)),
                LeaseKeys(10, keys(&[])),
                LeaseKeys(3, None),
            ],
        ),
        (
            "an explicit id must be above every id granted; a live one exists",
            vec![
                Apply(grant_lease(5, 10), lease_granted(5, 10)),
                Unchanged(
                    grant_lease(3, 10),
                    error(ApplyError::LeaseIdUsed { id: 3, max: 5 }),
                ),
                Unchanged(grant_lease(5, 10), error(ApplyError::LeaseExists(5))),
                Unchanged(
                    grant_lease(-1, 10),
                    error(ApplyError::LeaseIdUsed { id: -1, max: 5 }),
                ),
                Apply(grant_lease(6, 10), lease_granted(6, 10)),
            ],
        ),
        (
            "ids are never reused, even after revoke or expiry",
            vec![
                Apply(grant_lease(0, 10), lease_granted(1, 10)),
                Apply(grant_lease(0, 10), lease_granted(2, 10)),
                Apply(revoke(2), Response::LeaseRevoke { revision: 0 }),
                Apply(expire(&[1]), expired(0, &[1])),
                LeaseKeys(1, None),
                LeaseKeys(2, None),
                Unchanged(
                    grant_lease(2, 10),
                    error(ApplyError::LeaseIdUsed { id: 2, max: 2 }),
                ),
                Unchanged(
                    grant_lease(1, 10),
                    error(ApplyError::LeaseIdUsed { id: 1, max: 2 }),
                ),
                Apply(grant_lease(0, 10), lease_granted(3, 10)),
            ],
        ),
        (
            "a TTL must be positive",
            vec![
                Unchanged(grant_lease(0, 0), error(ApplyError::InvalidTtl(0))),
                Unchanged(grant_lease(0, -5), error(ApplyError::InvalidTtl(-5))),
                Unchanged(grant_lease(7, 0), error(ApplyError::InvalidTtl(0))),
                Apply(grant_lease(0, 1), lease_granted(1, 1)),
            ],
        ),
        (
            "granting does not move the revision",
            vec![
                Apply(put("a", "1"), put_ok(1)),
                Events(grant_lease(0, 10), lease_granted(1, 10), vec![]),
                Revision(1),
                Apply(put("b", "1"), put_ok(2)),
            ],
        ),
        (
            "the highest id is granted once, then ids run out",
            vec![
                Apply(grant_lease(i64::MAX, 1), lease_granted(i64::MAX, 1)),
                Unchanged(grant_lease(0, 1), error(ApplyError::LeaseIdsExhausted)),
                Unchanged(
                    grant_lease(i64::MAX, 1),
                    error(ApplyError::LeaseExists(i64::MAX)),
                ),
            ],
        ),
    ]);
}

#[test]
fn attached_keys() {
    run(vec![
        (
            "a put with a lease attaches the key",
            vec![
                Apply(grant_lease(0, 10), lease_granted(1, 10)),
                Apply(put_on(1, "a", "1"), put_ok(1)),
                LeaseKeys(1, keys(&["a"])),
                Range(get("a"), found(1, vec![kv_on(1, "a", "1", 1, 1, 1)])),
            ],
        ),
        (
            "an overwrite with another lease moves the key",
            vec![
                Apply(grant_lease(0, 10), lease_granted(1, 10)),
                Apply(grant_lease(0, 10), lease_granted(2, 10)),
                Apply(put_on(1, "a", "1"), put_ok(1)),
                Apply(put_on(2, "a", "2"), put_ok(2)),
                LeaseKeys(1, keys(&[])),
                LeaseKeys(2, keys(&["a"])),
                Events(revoke(1), Response::LeaseRevoke { revision: 2 }, vec![]),
                Range(get("a"), found(2, vec![kv_on(2, "a", "2", 1, 2, 2)])),
            ],
        ),
        (
            "an overwrite without a lease detaches the key",
            vec![
                Apply(grant_lease(0, 10), lease_granted(1, 10)),
                Apply(put_on(1, "a", "1"), put_ok(1)),
                Apply(put("a", "2"), put_ok(2)),
                LeaseKeys(1, keys(&[])),
                Apply(revoke(1), Response::LeaseRevoke { revision: 2 }),
                Range(get("a"), found(2, vec![kv("a", "2", 1, 2, 2)])),
            ],
        ),
        (
            "a delete detaches the key; a put after it does not come back attached",
            vec![
                Apply(grant_lease(0, 10), lease_granted(1, 10)),
                Apply(put_on(1, "a", "1"), put_ok(1)),
                Apply(put_on(1, "ab", "1"), put_ok(2)),
                Apply(put_on(1, "b", "1"), put_ok(3)),
                Apply(del("b"), deleted(4, 1, vec![])),
                LeaseKeys(1, keys(&["a", "ab"])),
                Apply(del_prefix("a"), deleted(5, 2, vec![])),
                LeaseKeys(1, keys(&[])),
                Apply(put("a", "2"), put_ok(6)),
                LeaseKeys(1, keys(&[])),
            ],
        ),
        (
            "a transaction attaches, moves and detaches like single commands",
            vec![
                Apply(grant_lease(0, 10), lease_granted(1, 10)),
                Apply(grant_lease(0, 10), lease_granted(2, 10)),
                Apply(
                    txn(
                        vec![],
                        vec![
                            TxnOp::Put(PutRequest {
                                lease: 1,
                                ..put_req("a", "1")
                            }),
                            TxnOp::Put(PutRequest {
                                lease: 1,
                                ..put_req("b", "1")
                            }),
                            TxnOp::Put(PutRequest {
                                lease: 2,
                                ..put_req("b", "2")
                            }),
                            TxnOp::Put(PutRequest {
                                lease: 1,
                                ..put_req("c", "1")
                            }),
                            op_del("c"),
                        ],
                        vec![],
                    ),
                    txn_ok(
                        1,
                        true,
                        vec![
                            txn_put_ok(1),
                            txn_put_ok(1),
                            txn_put_ok(1),
                            txn_put_ok(1),
                            TxnOpResult::DeleteRange(DeleteResult {
                                revision: 1,
                                deleted: 1,
                                prev_kvs: vec![],
                            }),
                        ],
                    ),
                ),
                LeaseKeys(1, keys(&["a"])),
                LeaseKeys(2, keys(&["b"])),
            ],
        ),
        (
            "a put or a transaction naming a dead lease changes nothing",
            vec![
                Apply(grant_lease(0, 10), lease_granted(1, 10)),
                Apply(revoke(1), Response::LeaseRevoke { revision: 0 }),
                Unchanged(put_on(1, "a", "1"), error(ApplyError::LeaseNotFound(1))),
                Unchanged(
                    txn(
                        vec![],
                        vec![],
                        vec![TxnOp::Put(PutRequest {
                            lease: 1,
                            ..put_req("a", "1")
                        })],
                    ),
                    error(ApplyError::LeaseNotFound(1)),
                ),
            ],
        ),
    ]);
}

#[test]
fn revoke_and_expire() {
    run(vec![
        (
            "revoke deletes every attached key at one revision, in key order",
            vec![
                Apply(grant_lease(0, 10), lease_granted(1, 10)),
                Apply(grant_lease(0, 10), lease_granted(2, 10)),
                Apply(put_on(1, "c", "1"), put_ok(1)),
                Apply(put_on(2, "b", "2"), put_ok(2)),
                Apply(put_on(1, "a", "1"), put_ok(3)),
                Apply(put("d", "0"), put_ok(4)),
                Events(
                    revoke(1),
                    Response::LeaseRevoke { revision: 5 },
                    vec![
                        delete_event("a", 5, kv_on(1, "a", "1", 3, 3, 1)),
                        delete_event("c", 5, kv_on(1, "c", "1", 1, 1, 1)),
                    ],
                ),
                Revision(5),
                Range(
                    scan(""),
                    found(5, vec![kv_on(2, "b", "2", 2, 2, 1), kv("d", "0", 4, 4, 1)]),
                ),
                LeaseKeys(1, None),
                LeaseKeys(2, keys(&["b"])),
            ],
        ),
        (
            "revoking an unknown or ended lease is refused",
            vec![
                Unchanged(revoke(1), error(ApplyError::LeaseNotFound(1))),
                Apply(grant_lease(0, 10), lease_granted(1, 10)),
                Apply(revoke(1), Response::LeaseRevoke { revision: 0 }),
                Unchanged(revoke(1), error(ApplyError::LeaseNotFound(1))),
                Unchanged(revoke(0), error(ApplyError::LeaseNotFound(0))),
            ],
        ),
        (
            "revoking a lease without keys keeps the revision",
            vec![
                Apply(grant_lease(0, 10), lease_granted(1, 10)),
                Apply(put("a", "1"), put_ok(1)),
                Events(revoke(1), Response::LeaseRevoke { revision: 1 }, vec![]),
                Revision(1),
            ],
        ),
        (
            "one expiry ends several leases at one revision and skips unknown ids",
            vec![
                Apply(grant_lease(0, 10), lease_granted(1, 10)),
                Apply(grant_lease(0, 10), lease_granted(2, 10)),
                Apply(grant_lease(0, 10), lease_granted(3, 10)),
                Apply(put_on(1, "a", "1"), put_ok(1)),
                Apply(put_on(2, "b", "2"), put_ok(2)),
                Apply(put_on(3, "c", "3"), put_ok(3)),
                Events(
                    expire(&[2, 9, 1, 2, 0, -1]),
                    expired(4, &[2, 1]),
                    vec![
                        delete_event("b", 4, kv_on(2, "b", "2", 2, 2, 1)),
                        delete_event("a", 4, kv_on(1, "a", "1", 1, 1, 1)),
                    ],
                ),
                Revision(4),
                Range(scan(""), found(4, vec![kv_on(3, "c", "3", 3, 3, 1)])),
                LeaseKeys(3, keys(&["c"])),
                Events(expire(&[1, 2, 9]), expired(4, &[]), vec![]),
                Events(expire(&[]), expired(4, &[]), vec![]),
                Events(
                    expire(&[3]),
                    expired(5, &[3]),
                    vec![delete_event("c", 5, kv_on(3, "c", "3", 3, 3, 1))],
                ),
            ],
        ),
    ]);
}

#[test]
fn reserved_keys() {
    let lock = lock_key("a", 1);
    let lock_kv = kv_on(1, &lock, "", 1, 1, 1);
    run(vec![
        (
            "client puts under __fenced/ are refused",
            vec![
                Unchanged(
                    put("__fenced/x", "1"),
                    error(ApplyError::ReservedKey("__fenced/x".to_string())),
                ),
                Unchanged(
                    put(&lock, ""),
                    error(ApplyError::ReservedKey(
                        "__fenced/lock/a/@0000000000000001".to_string(),
                    )),
                ),
                Apply(put("__fenced", "1"), put_ok(1)),
                Apply(put("__fencedx/", "1"), put_ok(2)),
            ],
        ),
        (
            "transaction puts under __fenced/ are refused in either branch",
            vec![
                Unchanged(
                    txn(vec![], vec![op_put("__fenced/x", "")], vec![]),
                    error(ApplyError::ReservedKey("__fenced/x".to_string())),
                ),
                Unchanged(
                    txn(
                        vec![],
                        vec![op_put("a", "")],
                        vec![op_put("__fenced/lock/x", "")],
                    ),
                    error(ApplyError::ReservedKey("__fenced/lock/x".to_string())),
                ),
            ],
        ),
        (
            "client deletes never remove reserved keys, even a delete of everything",
            vec![
                Apply(grant_lease(0, 10), lease_granted(1, 10)),
                Locks(
                    acquire("a", 1),
                    granted("a", 1, 1, vec![holder("a", 1, 1, LockMode::Exclusive)]),
                    vec![got("a", 1, 1)],
                ),
                Apply(put("z", "1"), put_ok(2)),
                Events(
                    del_prefix(""),
                    deleted(3, 1, vec![]),
                    vec![delete_event("z", 3, kv("z", "1", 2, 2, 1))],
                ),
                Unchanged(del_prefix(""), deleted(3, 0, vec![])),
                Unchanged(del_prefix("__fenced/"), deleted(3, 0, vec![])),
                Unchanged(del_prefix("__fenced/lock/a/"), deleted(3, 0, vec![])),
                Unchanged(del(&lock), deleted(3, 0, vec![])),
                Unchanged(
                    txn(
                        vec![],
                        vec![TxnOp::DeleteRange(del_req("", true, true))],
                        vec![],
                    ),
                    txn_ok(
                        3,
                        true,
                        vec![TxnOpResult::DeleteRange(DeleteResult {
                            revision: 3,
                            deleted: 0,
                            prev_kvs: vec![],
                        })],
                    ),
                ),
                Range(scan("__fenced/"), found(3, vec![lock_kv.clone()])),
                Places("a", vec![(1, 1)], vec![]),
                LeaseKeys(1, Some(vec![lock.clone()])),
            ],
        ),
    ]);
}

/// Leases are part of the digest, including the highest id ever granted
/// (which decides the next id). Pinned like `kv_table::digest_is_stable`:
/// after the keyspace, the highest id, the lease count, then per lease in id
/// order its id, TTL, key count and length-prefixed keys; then the lock
/// count.
#[test]
fn digest_covers_leases() {
    let mut state = StateMachine::new();
    let empty = state.digest();
    state.apply(&grant_lease(0, 10));
    assert_eq!(state.revision(), 0);
    assert_eq!(state.digest(), ONE_LEASE_DIGEST);
    state.apply(&revoke(1));
    assert_eq!(state.digest(), REVOKED_DIGEST);
    assert_ne!(state.digest(), empty, "the highest id granted is state");
}

const ONE_LEASE_DIGEST: u64 = 0x8c88_86d8_28d5_114e;
const REVOKED_DIGEST: u64 = 0x1a2e_f4d1_338c_71e4;

/// A deposed leader's expiry, appended by its successor in a later term,
/// ends nothing; the same command in its own term ends the lease.
#[test]
fn a_leader_command_from_an_older_term_is_void() {
    let mut state = StateMachine::new();
    state.execute(&Command::LeaseGrant { id: 0, ttl: 10 });
    state.execute(&Command::Put(PutRequest {
        lease: 1,
        ..put_req("held", "v")
    }));
    let stale = Command::LeaseExpireInTerm {
        ids: vec![1],
        term: 3,
    };
    let output = state.execute_entry(&stale, 4);
    assert_eq!(
        output.response,
        Response::Error(ApplyError::StaleLeaderCommand {
            proposed: 3,
            entry: 4
        })
    );
    assert!(output.events.is_empty());
    assert!(state.leases().contains(1), "a stale expiry ended the lease");
    let delay = Command::LockDelayEndInTerm {
        name: "l".into(),
        since: 1,
        term: 3,
    };
    assert!(matches!(
        state.execute_entry(&delay, 5).response,
        Response::Error(ApplyError::StaleLeaderCommand { .. })
    ));

    let current = state.execute_entry(&stale, 3);
    assert!(
        matches!(current.response, Response::LeaseExpire { ref expired, .. } if expired == &[1]),
        "{:?}",
        current.response
    );
    assert!(!state.leases().contains(1));
    assert_eq!(current.events.len(), 1, "the attached key is deleted");
}

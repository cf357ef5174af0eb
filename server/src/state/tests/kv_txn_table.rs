//! Table-driven tests of transactions: every compare target and relation,
//! one revision per transaction, and operations that see each other.

use super::Step::{Apply, Events, Range, Revision};
use super::*;
use crate::state::{ApplyError, KvStore, StateMachine};

/// Whether `compare` holds against a keyspace where "k" was created at 1 with
/// "v1", "other" was put at 2, and "k" was overwritten at 3 with "v2".
#[test]
fn txn_compares() {
    use CompareOp::{Equal, Greater, Less, NotEqual};
    use CompareTarget::{CreateRevision, Lease, ModRevision, Value, Version};
    let value = |text: &str| Value(bytes(text));
    let cases: Vec<(&str, CompareOp, CompareTarget, bool)> = vec![
        ("k", Equal, Version(2), true),
        ("k", Equal, Version(1), false),
        ("k", Greater, Version(1), true),
        ("k", Greater, Version(2), false),
        ("k", Less, Version(3), true),
        ("k", Less, Version(2), false),
        ("k", NotEqual, Version(1), true),
        ("k", NotEqual, Version(2), false),
        ("k", Equal, CreateRevision(1), true),
        ("k", Equal, CreateRevision(3), false),
        ("k", Greater, CreateRevision(0), true),
        ("k", Less, CreateRevision(1), false),
        ("k", NotEqual, CreateRevision(2), true),
        ("k", Equal, ModRevision(3), true),
        ("k", Equal, ModRevision(1), false),
        ("k", Greater, ModRevision(2), true),
        ("k", Less, ModRevision(4), true),
        ("k", Less, ModRevision(3), false),
        ("k", NotEqual, ModRevision(3), false),
        ("k", Equal, value("v2"), true),
        ("k", Equal, value("v1"), false),
        ("k", Greater, value("v1"), true),
        ("k", Greater, value("v2"), false),
        ("k", Less, value("v3"), true),
        ("k", Less, value("v2"), false),
        ("k", Less, value("v20"), true),
        ("k", NotEqual, value("v1"), true),
        ("k", NotEqual, value("v2"), false),
        ("k", Equal, Lease(0), true),
        ("k", Greater, Lease(0), false),
        ("k", Less, Lease(1), true),
        ("k", NotEqual, Lease(0), false),
        // A missing key: numbers are 0, and every value compare fails.
        ("missing", Equal, Version(0), true),
        ("missing", Greater, Version(0), false),
        ("missing", Equal, CreateRevision(0), true),
        ("missing", Less, ModRevision(1), true),
        ("missing", NotEqual, ModRevision(0), false),
        ("missing", Equal, Lease(0), true),
        ("missing", Equal, value(""), false),
        ("missing", NotEqual, value(""), false),
        ("missing", NotEqual, value("x"), false),
        ("missing", Greater, value(""), false),
        ("missing", Less, value("x"), false),
    ];
    for (key, op, target, holds) in cases {
        let mut state = StateMachine::new();
        for command in [put("k", "v1"), put("other", "x"), put("k", "v2")] {
            state.apply(&command);
        }
        let command = txn(
            vec![compare(key, op, target.clone())],
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
            "{key} {op:?} {target:?}"
        );
    }
}

/// Leases cannot be attached through `StateMachine` yet, so the lease
/// compare of an attached key is checked on the keyspace directly.
#[test]
fn txn_compare_lease_of_attached_key() {
    let mut store = KvStore::default();
    store.put(
        &PutRequest {
            lease: 7,
            ..put_req("k", "v")
        },
        &mut Vec::new(),
    );
    let cases = [
        (CompareOp::Equal, 7, true),
        (CompareOp::Equal, 0, false),
        (CompareOp::Greater, 6, true),
        (CompareOp::Less, 8, true),
        (CompareOp::NotEqual, 0, true),
        (CompareOp::NotEqual, 7, false),
    ];
    for (op, lease, holds) in cases {
        let request = TxnRequest {
            compare: vec![compare("k", op, CompareTarget::Lease(lease))],
            success: vec![],
            failure: vec![],
        };
        let result = store.clone().txn(&request, &mut Vec::new());
        assert_eq!(result.succeeded, holds, "{op:?} {lease}");
    }
}

#[test]
fn transactions() {
    let equal = |key, target| compare(key, CompareOp::Equal, target);
    let range = |revision, kvs| TxnOpResult::Range(found(revision, kvs));
    let put_at = |revision| {
        TxnOpResult::Put(PutResult {
            revision,
            prev_kv: None,
        })
    };
    let del_at = |revision, deleted| {
        TxnOpResult::DeleteRange(DeleteResult {
            revision,
            deleted,
            prev_kvs: vec![],
        })
    };
    run(vec![
        (
            "every compare must hold; an empty list holds",
            vec![
                Apply(put("a", "1"), put_ok(1)),
                Apply(
                    txn(
                        vec![
                            equal("a", CompareTarget::Version(1)),
                            equal("b", CompareTarget::Version(1)),
                        ],
                        vec![op_put("s", "")],
                        vec![op_put("f", "")],
                    ),
                    txn_ok(2, false, vec![put_at(2)]),
                ),
                Apply(
                    txn(vec![], vec![op_get("f")], vec![]),
                    txn_ok(2, true, vec![range(2, vec![kv("f", "", 2, 2, 1)])]),
                ),
            ],
        ),
        (
            "all writes share one revision, with one event each",
            vec![
                Apply(put("c", "1"), put_ok(1)),
                Events(
                    txn(
                        vec![],
                        vec![op_put("a", "1"), op_put("b", "1"), op_del("c")],
                        vec![],
                    ),
                    txn_ok(2, true, vec![put_at(2), put_at(2), del_at(2, 1)]),
                    vec![
                        put_event(kv("a", "1", 2, 2, 1), None),
                        put_event(kv("b", "1", 2, 2, 1), None),
                        delete_event("c", 2, kv("c", "1", 1, 1, 1)),
                    ],
                ),
                Revision(2),
                Apply(put("d", "1"), put_ok(3)),
            ],
        ),
        (
            "a txn that changes nothing keeps the revision",
            vec![
                Apply(put("a", "1"), put_ok(1)),
                Events(
                    txn(vec![], vec![op_get("a"), op_del("zz")], vec![]),
                    txn_ok(
                        1,
                        true,
                        vec![range(1, vec![kv("a", "1", 1, 1, 1)]), del_at(1, 0)],
                    ),
                    vec![],
                ),
                Events(txn(vec![], vec![], vec![]), txn_ok(1, true, vec![]), vec![]),
                Events(
                    txn(
                        vec![equal("a", CompareTarget::Version(9))],
                        vec![op_put("a", "2")],
                        vec![],
                    ),
                    txn_ok(1, false, vec![]),
                    vec![],
                ),
                Revision(1),
            ],
        ),
        (
            "operations see earlier operations of the same txn",
            vec![
                Apply(put("x", "1"), put_ok(1)),
                Events(
                    txn(
                        vec![],
                        vec![
                            op_get("a"),
                            op_put("a", "1"),
                            op_get("a"),
                            op_del("a"),
                            op_get("a"),
                            op_del("a"),
                        ],
                        vec![],
                    ),
                    txn_ok(
                        2,
                        true,
                        vec![
                            range(1, vec![]),
                            put_at(2),
                            range(2, vec![kv("a", "1", 2, 2, 1)]),
                            del_at(2, 1),
                            range(2, vec![]),
                            del_at(2, 0),
                        ],
                    ),
                    vec![
                        put_event(kv("a", "1", 2, 2, 1), None),
                        delete_event("a", 2, kv("a", "1", 2, 2, 1)),
                    ],
                ),
                Range(scan(""), found(2, vec![kv("x", "1", 1, 1, 1)])),
            ],
        ),
        (
            "the same key written twice applies in order and counts both puts",
            vec![
                Apply(put("a", "0"), put_ok(1)),
                Events(
                    txn(vec![], vec![op_put("a", "1"), op_put("a", "2")], vec![]),
                    txn_ok(2, true, vec![put_at(2), put_at(2)]),
                    vec![
                        put_event(kv("a", "1", 1, 2, 2), Some(kv("a", "0", 1, 1, 1))),
                        put_event(kv("a", "2", 1, 2, 3), Some(kv("a", "1", 1, 2, 2))),
                    ],
                ),
                Events(
                    txn(vec![], vec![op_del("a"), op_put("a", "3")], vec![]),
                    txn_ok(3, true, vec![del_at(3, 1), put_at(3)]),
                    vec![
                        delete_event("a", 3, kv("a", "2", 1, 2, 3)),
                        put_event(kv("a", "3", 3, 3, 1), None),
                    ],
                ),
            ],
        ),
        (
            "the failure branch runs when a compare fails",
            vec![
                Apply(put("lock", "me"), put_ok(1)),
                Apply(
                    txn(
                        vec![equal("lock", CompareTarget::Value(bytes("you")))],
                        vec![op_del("lock")],
                        vec![op_get("lock")],
                    ),
                    txn_ok(1, false, vec![range(1, vec![kv("lock", "me", 1, 1, 1)])]),
                ),
                Apply(
                    txn(
                        vec![equal("lock", CompareTarget::Value(bytes("me")))],
                        vec![op_del("lock")],
                        vec![op_get("lock")],
                    ),
                    txn_ok(2, true, vec![del_at(2, 1)]),
                ),
            ],
        ),
        (
            "prev_kv inside a txn",
            vec![
                Apply(put("a", "1"), put_ok(1)),
                Apply(
                    txn(
                        vec![],
                        vec![
                            TxnOp::Put(PutRequest {
                                prev_kv: true,
                                ..put_req("a", "2")
                            }),
                            TxnOp::DeleteRange(del_req("a", false, true)),
                        ],
                        vec![],
                    ),
                    txn_ok(
                        2,
                        true,
                        vec![
                            TxnOpResult::Put(PutResult {
                                revision: 2,
                                prev_kv: Some(kv("a", "1", 1, 1, 1)),
                            }),
                            TxnOpResult::DeleteRange(DeleteResult {
                                revision: 2,
                                deleted: 1,
                                prev_kvs: vec![kv("a", "2", 1, 2, 2)],
                            }),
                        ],
                    ),
                ),
            ],
        ),
        (
            "an unknown lease in either branch refuses the whole txn",
            vec![Events(
                txn(
                    vec![],
                    vec![op_put("a", "1")],
                    vec![TxnOp::Put(PutRequest {
                        lease: 3,
                        ..put_req("b", "1")
                    })],
                ),
                Response::Error(ApplyError::LeaseNotFound(3)),
                vec![],
            )],
        ),
    ]);
}

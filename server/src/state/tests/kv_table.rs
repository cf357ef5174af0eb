//! Table-driven tests of puts, deletes, ranges and the digest.

use super::Step::{Apply, Events, Range, Revision};
use super::*;
use crate::state::{ApplyError, StateMachine};

#[test]
fn puts() {
    run(vec![
        (
            "a new key starts at the new revision with version 1",
            vec![
                Revision(0),
                Apply(put("a", "1"), put_ok(1)),
                Revision(1),
                Range(get("a"), found(1, vec![kv("a", "1", 1, 1, 1)])),
            ],
        ),
        (
            "an overwrite keeps create_revision and bumps version and mod_revision",
            vec![
                Apply(put("a", "1"), put_ok(1)),
                Apply(put("b", "1"), put_ok(2)),
                Apply(put("a", "2"), put_ok(3)),
                Apply(put("a", "3"), put_ok(4)),
                Range(get("a"), found(4, vec![kv("a", "3", 1, 4, 3)])),
                Range(get("b"), found(4, vec![kv("b", "1", 2, 2, 1)])),
            ],
        ),
        (
            "prev_kv is answered only when asked for and present",
            vec![
                Apply(put("a", "1"), put_ok(1)),
                Apply(put("a", "2"), put_ok(2)),
                Apply(put_prev("a", "3"), put_ok_prev(3, kv("a", "2", 1, 2, 2))),
                Apply(put_prev("b", "1"), put_ok(4)),
            ],
        ),
        (
            "put events carry the previous pair even when not asked for",
            vec![
                Events(
                    put("a", "1"),
                    put_ok(1),
                    vec![put_event(kv("a", "1", 1, 1, 1), None)],
                ),
                Events(
                    put("a", "2"),
                    put_ok(2),
                    vec![put_event(
                        kv("a", "2", 1, 2, 2),
                        Some(kv("a", "1", 1, 1, 1)),
                    )],
                ),
            ],
        ),
        (
            "a put naming an unknown lease changes nothing",
            vec![
                Apply(put("a", "1"), put_ok(1)),
                Events(
                    Command::Put(PutRequest {
                        lease: 5,
                        ..put_req("a", "2")
                    }),
                    Response::Error(ApplyError::LeaseNotFound(5)),
                    vec![],
                ),
                Revision(1),
                Range(get("a"), found(1, vec![kv("a", "1", 1, 1, 1)])),
            ],
        ),
        (
            "an empty key (refused at the API edge) is stored without a panic",
            vec![
                Apply(put("", "1"), put_ok(1)),
                Range(get(""), found(1, vec![kv("", "1", 1, 1, 1)])),
                Range(scan(""), found(1, vec![kv("", "1", 1, 1, 1)])),
            ],
        ),
    ]);
}

#[test]
fn deletes() {
    run(vec![
        (
            "deleting one key leaves its neighbours",
            vec![
                Apply(put("a", "1"), put_ok(1)),
                Apply(put("ab", "1"), put_ok(2)),
                Events(
                    del("a"),
                    deleted(3, 1, vec![]),
                    vec![delete_event("a", 3, kv("a", "1", 1, 1, 1))],
                ),
                Range(scan(""), found(3, vec![kv("ab", "1", 2, 2, 1)])),
            ],
        ),
        (
            "prev_kv returns the deleted pairs",
            vec![
                Apply(put("a", "1"), put_ok(1)),
                Apply(
                    Command::DeleteRange(del_req("a", false, true)),
                    deleted(2, 1, vec![kv("a", "1", 1, 1, 1)]),
                ),
            ],
        ),
        (
            "a prefix delete removes every key under it at one revision, in key order",
            vec![
                Apply(put("b", "1"), put_ok(1)),
                Apply(put("abc", "1"), put_ok(2)),
                Apply(put("a", "1"), put_ok(3)),
                Apply(put("ab", "1"), put_ok(4)),
                Events(
                    Command::DeleteRange(del_req("a", true, true)),
                    deleted(
                        5,
                        3,
                        vec![
                            kv("a", "1", 3, 3, 1),
                            kv("ab", "1", 4, 4, 1),
                            kv("abc", "1", 2, 2, 1),
                        ],
                    ),
                    vec![
                        delete_event("a", 5, kv("a", "1", 3, 3, 1)),
                        delete_event("ab", 5, kv("ab", "1", 4, 4, 1)),
                        delete_event("abc", 5, kv("abc", "1", 2, 2, 1)),
                    ],
                ),
                Range(scan(""), found(5, vec![kv("b", "1", 1, 1, 1)])),
            ],
        ),
        (
            "an empty prefix deletes every key",
            vec![
                Apply(put("a", "1"), put_ok(1)),
                Apply(put("b", "1"), put_ok(2)),
                Apply(del_prefix(""), deleted(3, 2, vec![])),
                Range(scan(""), found(3, vec![])),
            ],
        ),
        (
            "deleting nothing keeps the revision and emits no event",
            vec![
                Apply(put("a", "1"), put_ok(1)),
                Events(del("b"), deleted(1, 0, vec![]), vec![]),
                Events(del_prefix("x"), deleted(1, 0, vec![]), vec![]),
                Events(del("aa"), deleted(1, 0, vec![]), vec![]),
                Revision(1),
                Events(
                    del_prefix(""),
                    deleted(2, 1, vec![]),
                    vec![delete_event("a", 2, kv("a", "1", 1, 1, 1))],
                ),
                Events(del_prefix(""), deleted(2, 0, vec![]), vec![]),
            ],
        ),
        (
            "a key put again after a delete is a new incarnation",
            vec![
                Apply(put("a", "1"), put_ok(1)),
                Apply(put("a", "2"), put_ok(2)),
                Apply(del("a"), deleted(3, 1, vec![])),
                Events(
                    put("a", "3"),
                    put_ok(4),
                    vec![put_event(kv("a", "3", 4, 4, 1), None)],
                ),
            ],
        ),
        (
            "prefixes ending in 0xff stop at the right key",
            vec![
                Apply(put(b"a\xff", "1"), put_ok(1)),
                Apply(put(b"a\xff\xff", "1"), put_ok(2)),
                Apply(put(b"b", "1"), put_ok(3)),
                Apply(put(b"\xff", "1"), put_ok(4)),
                Apply(put(b"\xff\x00", "1"), put_ok(5)),
                Apply(del_prefix(b"a\xff"), deleted(6, 2, vec![])),
                Apply(del_prefix(b"\xff"), deleted(7, 2, vec![])),
                Range(scan(""), found(7, vec![kv("b", "1", 3, 3, 1)])),
            ],
        ),
    ]);
}

/// Five keys at revisions 1 to 5: a, ab, b, ba, c, with value "v" + key.
fn five_keys() -> Vec<Step> {
    ["b", "a", "ba", "ab", "c"]
        .iter()
        .zip(1..)
        .map(|(key, revision)| Apply(put(key, &format!("v{key}")), put_ok(revision)))
        .collect()
}

#[test]
fn ranges() {
    let a = kv("a", "va", 2, 2, 1);
    let ab = kv("ab", "vab", 4, 4, 1);
    let b = kv("b", "vb", 1, 1, 1);
    let ba = kv("ba", "vba", 3, 3, 1);
    let c = kv("c", "vc", 5, 5, 1);
    let all = vec![a.clone(), ab.clone(), b.clone(), ba.clone(), c.clone()];
    let limited = |limit: i64| RangeRequest { limit, ..scan("") };
    let with = |steps: Vec<Step>| five_keys().into_iter().chain(steps).collect::<Vec<_>>();
    run(vec![
        (
            "a missing key matches nothing",
            with(vec![Range(get("aa"), found(5, vec![]))]),
        ),
        (
            "a single key does not match its extensions",
            with(vec![Range(get("a"), found(5, vec![a.clone()]))]),
        ),
        (
            "a prefix matches the keys under it, in key order",
            with(vec![
                Range(scan("a"), found(5, vec![a.clone(), ab.clone()])),
                Range(scan("b"), found(5, vec![b.clone(), ba.clone()])),
                Range(scan("ab"), found(5, vec![ab.clone()])),
                Range(scan("d"), found(5, vec![])),
                Range(scan(""), found(5, all.clone())),
            ]),
        ),
        (
            "a limit truncates, sets more and still counts every match",
            with(vec![
                Range(
                    limited(2),
                    RangeResult {
                        revision: 5,
                        kvs: vec![a.clone(), ab.clone()],
                        more: true,
                        count: 5,
                    },
                ),
                Range(limited(5), found(5, all.clone())),
                Range(limited(6), found(5, all.clone())),
                Range(limited(i64::MAX), found(5, all.clone())),
            ]),
        ),
        (
            "a limit of 0 or below is no limit",
            with(vec![
                Range(limited(0), found(5, all.clone())),
                Range(limited(-1), found(5, all.clone())),
                Range(limited(i64::MIN), found(5, all.clone())),
            ]),
        ),
        (
            "count_only answers the count and no pairs",
            with(vec![
                Range(
                    RangeRequest {
                        count_only: true,
                        ..scan("b")
                    },
                    RangeResult {
                        revision: 5,
                        kvs: vec![],
                        more: false,
                        count: 2,
                    },
                ),
                Range(
                    RangeRequest {
                        count_only: true,
                        limit: 1,
                        ..scan("")
                    },
                    RangeResult {
                        revision: 5,
                        kvs: vec![],
                        more: true,
                        count: 5,
                    },
                ),
            ]),
        ),
        (
            "keys_only leaves values empty and keeps the metadata",
            with(vec![Range(
                RangeRequest {
                    keys_only: true,
                    ..scan("b")
                },
                found(5, vec![kv("b", "", 1, 1, 1), kv("ba", "", 3, 3, 1)]),
            )]),
        ),
        (
            "a range answers the current revision",
            with(vec![
                Apply(put("c", "vc2"), put_ok(6)),
                Range(get("b"), found(6, vec![b.clone()])),
                Range(get("c"), found(6, vec![kv("c", "vc2", 5, 6, 2)])),
            ]),
        ),
    ]);
}

/// The digest is pinned: members on different builds compare digests, so
/// its encoding must not drift. The values were computed independently, by a
/// Python FNV-1a over the documented encoding (revision, key count, then per
/// key: length-prefixed key, create, mod, version, length-prefixed value,
/// lease; then the lease table: highest id, lease count; then the lock
/// table: lock count; integers as 8 little-endian bytes). `lease_table` and
/// `lock_table` pin states with a lease and a lock.
#[test]
fn digest_is_stable() {
    let mut state = StateMachine::new();
    assert_eq!(state.digest(), EMPTY_DIGEST);
    state.apply(&put("a", "1"));
    assert_eq!(state.digest(), ONE_KEY_DIGEST);
    let before = state.digest();
    state.apply(&put("a", "1"));
    assert_ne!(state.digest(), before, "the version and revision changed");
}

const EMPTY_DIGEST: u64 = 0x40d6_9e0c_f0f6_5c45;
const ONE_KEY_DIGEST: u64 = 0x711f_ef30_deee_abaa;

//! Elections: campaigns queue FIFO, the leader record follows the leader,
//! proclaim and resign check the leader key, and over random sequences the
//! record, the tokens and the observed sequence stay consistent.

use proptest::prelude::*;

use super::*;
use crate::state::{ApplyError, CancelOutcome, LEADER_PREFIX, Leader, lock_key};

fn campaign(name: &str, lease: i64, value: &str) -> Command {
    Command::ElectionCampaign {
        name: name.into(),
        lease,
        value: bytes(value),
    }
}

fn proclaim(name: &str, token: i64, lease: i64, value: &str) -> Command {
    Command::ElectionProclaim {
        name: name.into(),
        token,
        lease,
        value: bytes(value),
    }
}

fn resign(name: &str, token: i64, lease: i64) -> Command {
    Command::ElectionResign {
        name: name.into(),
        token,
        lease,
    }
}

fn record_key(name: &str) -> Vec<u8> {
    [LEADER_PREFIX, name.as_bytes()].concat()
}

fn candidate_key(name: &str, lease: i64) -> Vec<u8> {
    lock_key(&format!("#{name}"), lease)
}

fn machine_with_leases(count: i64) -> StateMachine {
    let mut state = StateMachine::new();
    for _ in 0..count {
        let _ = state.execute(&grant_lease(0, 10));
    }
    state
}

/// The record as stored.
fn record(state: &StateMachine, name: &str) -> Option<KeyValue> {
    state.range(&get(record_key(name))).kvs.into_iter().next()
}

#[test]
fn first_candidate_leads_and_publishes_its_value() {
    let mut state = machine_with_leases(2);
    let out = state.execute(&campaign("db", 1, "host-a"));
    let Response::LockAcquire(AcquireOutcome::Granted(grant)) = out.response else {
        panic!("first candidate should lead: {:?}", out.response);
    };
    assert_eq!(grant.token, 1);
    assert_eq!(grant.key, candidate_key("db", 1));
    assert_eq!(
        out.events
            .iter()
            .map(|e| (e.kind, e.kv.key.clone()))
            .collect::<Vec<_>>(),
        vec![
            (EventKind::Put, candidate_key("db", 1)),
            (EventKind::Put, record_key("db")),
        ],
        "candidate key and leader record at one revision"
    );
    let rec = record(&state, "db").expect("record");
    assert_eq!(
        (rec.value.as_slice(), rec.create_revision, rec.lease),
        (b"host-a".as_slice(), 1, 1)
    );
    assert_eq!(
        state.leader("db"),
        Some(Leader {
            name: "db".into(),
            key: candidate_key("db", 1),
            token: 1,
            lease: 1,
            value: bytes("host-a"),
        })
    );

    // The second candidate queues; nothing about the leader changes.
    let out = state.execute(&campaign("db", 2, "host-b"));
    assert!(matches!(
        out.response,
        Response::LockAcquire(AcquireOutcome::Queued { position: 0, .. })
    ));
    assert_eq!(record(&state, "db").map(|r| r.mod_revision), Some(1));
    // A retry by the leader finds its place and changes nothing.
    let revision = state.revision();
    let out = state.execute(&campaign("db", 1, "host-a"));
    assert!(matches!(
        out.response,
        Response::LockAcquire(AcquireOutcome::Granted(Grant { token: 1, .. }))
    ));
    assert_eq!(state.revision(), revision);
}

#[test]
fn proclaim_checks_the_leader_key() {
    let mut state = machine_with_leases(2);
    let _ = state.execute(&campaign("db", 1, "v1"));
    let _ = state.execute(&campaign("db", 2, "other"));
    let before = state.clone();
    for (token, lease) in [(1, 2), (2, 1), (0, 1)] {
        let out = state.execute(&proclaim("db", token, lease, "forged"));
        assert_eq!(
            out.response,
            error(ApplyError::NotLeader {
                name: "db".into(),
                token
            })
        );
        assert_eq!(state, before, "a refused proclaim changes nothing");
    }
    let out = state.execute(&proclaim("db", 1, 1, "v2"));
    assert_eq!(
        out.response,
        Response::ElectionProclaim {
            revision: before.revision() + 1
        }
    );
    let rec = record(&state, "db").expect("record");
    assert_eq!(
        (rec.value.as_slice(), rec.create_revision, rec.version),
        (b"v2".as_slice(), 1, 2),
        "same leadership: create_revision (the token) is kept"
    );
    assert_eq!(state.leader("db").map(|l| l.token), Some(1));
}

#[test]
fn resign_hands_over_in_one_revision() {
    let mut state = machine_with_leases(3);
    let _ = state.execute(&campaign("db", 1, "a"));
    let _ = state.execute(&campaign("db", 2, "b"));
    let _ = state.execute(&campaign("db", 3, "c"));
    let before = state.revision();
    let out = state.execute(&resign("db", 1, 1));
    assert_eq!(
        out.response,
        Response::ElectionResign {
            revision: before + 1
        }
    );
    let leader = state.leader("db").expect("next candidate leads");
    assert_eq!((leader.lease, leader.token), (2, before + 1));
    assert_eq!(leader.value, bytes("b"));
    let keys: Vec<(EventKind, Vec<u8>)> = out
        .events
        .iter()
        .map(|e| (e.kind, e.kv.key.clone()))
        .collect();
    assert_eq!(
        keys,
        vec![
            (EventKind::Delete, candidate_key("db", 1)),
            (EventKind::Put, candidate_key("db", 2)),
            (EventKind::Delete, record_key("db")),
            (EventKind::Put, record_key("db")),
        ]
    );
    assert!(out.events.iter().all(|e| e.kv.mod_revision == before + 1));
    // The old key cannot resign or proclaim again.
    let again = state.execute(&resign("db", 1, 1));
    assert!(matches!(
        again.response,
        Response::Error(ApplyError::NotLeader { .. })
    ));
}

#[test]
fn resign_with_token_0_withdraws_whatever_the_lease_has() {
    let mut state = machine_with_leases(3);
    let _ = state.execute(&campaign("db", 1, "a"));
    let _ = state.execute(&campaign("db", 2, "b"));
    let _ = state.execute(&campaign("db", 3, "c"));
    // A waiting candidate leaves the queue; the leader stays.
    let out = state.execute(&resign("db", 0, 2));
    assert!(matches!(out.response, Response::ElectionResign { .. }));
    assert_eq!(
        out.events
            .iter()
            .map(|e| (e.kind, e.kv.key.clone()))
            .collect::<Vec<_>>(),
        vec![(EventKind::Delete, candidate_key("db", 2))]
    );
    assert_eq!(state.leader("db").map(|l| l.lease), Some(1));
    // The leader withdraws: the next in line (3, not 2) leads at once.
    let _ = state.execute(&resign("db", 0, 1));
    assert_eq!(
        state.leader("db").map(|l| (l.lease, l.value)),
        Some((3, bytes("c")))
    );
    // A lease with nothing in the election: answered, nothing changes.
    let before = state.clone();
    let out = state.execute(&resign("db", 0, 2));
    assert_eq!(
        out.response,
        Response::ElectionResign {
            revision: before.revision()
        }
    );
    assert_eq!(state, before);
}

#[test]
fn leader_lease_end_passes_leadership_and_the_last_one_clears_the_record() {
    let mut state = machine_with_leases(2);
    let _ = state.execute(&campaign("db", 1, "a"));
    let _ = state.execute(&campaign("db", 2, "b"));
    let _ = state.execute(&expire(&[1]));
    assert_eq!(state.leader("db").map(|l| l.lease), Some(2));
    assert_eq!(
        record(&state, "db").map(|r| (r.lease, r.value)),
        Some((2, bytes("b")))
    );
    let _ = state.execute(&revoke(2));
    assert_eq!(state.leader("db"), None);
    assert_eq!(record(&state, "db"), None);
    assert!(state.locks().iter().next().is_none(), "nothing left behind");
}

#[test]
fn elections_and_locks_of_one_name_are_separate() {
    let mut state = machine_with_leases(2);
    let _ = state.execute(&acquire("db", 1));
    let out = state.execute(&campaign("db", 2, "x"));
    assert!(
        matches!(
            out.response,
            Response::LockAcquire(AcquireOutcome::Granted(_))
        ),
        "the lock does not hold up the election: {:?}",
        out.response
    );
    assert!(state.locks().get("db").is_some());
    assert!(state.locks().get("#db").is_some());
    // Cancelling the election candidacy by its lock-table name works too.
    let _ = state.execute(&campaign("db", 1, "y"));
    let out = state.execute(&cancel("#db", 1));
    assert_eq!(out.response, Response::LockCancel(CancelOutcome::Cancelled));
    assert_eq!(state.leader("db").map(|l| l.lease), Some(2));
}

#[derive(Clone, Debug)]
enum Op {
    Campaign {
        election: u8,
        lease: u8,
    },
    /// Proclaim by the current leader (or, if `stale`, a made-up key).
    Proclaim {
        election: u8,
        stale: bool,
    },
    Resign {
        election: u8,
    },
    /// Resign with token 0: whatever the lease has.
    Withdraw {
        election: u8,
        lease: u8,
    },
    Cancel {
        election: u8,
        lease: u8,
    },
    Expire {
        lease: u8,
    },
    Revoke {
        lease: u8,
    },
    Grant,
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        4 => (0..2u8, 1..6u8).prop_map(|(election, lease)| Op::Campaign { election, lease }),
        2 => (0..2u8, any::<bool>()).prop_map(|(election, stale)| Op::Proclaim { election, stale }),
        2 => (0..2u8).prop_map(|election| Op::Resign { election }),
        1 => (0..2u8, 1..6u8).prop_map(|(election, lease)| Op::Withdraw { election, lease }),
        1 => (0..2u8, 1..6u8).prop_map(|(election, lease)| Op::Cancel { election, lease }),
        2 => (1..6u8).prop_map(|lease| Op::Expire { lease }),
        1 => (1..6u8).prop_map(|lease| Op::Revoke { lease }),
        1 => Just(Op::Grant),
    ];
    prop::collection::vec(op, 1..80)
}

const NAMES: [&str; 2] = ["alpha", "beta"];

fn command(op: &Op, state: &StateMachine, step: usize) -> Command {
    match *op {
        Op::Campaign { election, lease } => campaign(
            NAMES[election as usize],
            i64::from(lease),
            &format!("v{step}"),
        ),
        Op::Proclaim { election, stale } => {
            let name = NAMES[election as usize];
            match (state.leader(name), stale) {
                (Some(l), false) => proclaim(name, l.token, l.lease, &format!("p{step}")),
                (Some(l), true) => proclaim(name, l.token - 1, l.lease, "stale"),
                (None, _) => proclaim(name, 1, 1, "nobody"),
            }
        }
        Op::Resign { election } => {
            let name = NAMES[election as usize];
            match state.leader(name) {
                Some(l) => resign(name, l.token, l.lease),
                None => resign(name, 1, 1),
            }
        }
        Op::Withdraw { election, lease } => resign(NAMES[election as usize], 0, i64::from(lease)),
        Op::Cancel { election, lease } => {
            cancel(&format!("#{}", NAMES[election as usize]), i64::from(lease))
        }
        Op::Expire { lease } => expire(&[i64::from(lease)]),
        Op::Revoke { lease } => revoke(i64::from(lease)),
        Op::Grant => grant_lease(0, 10),
    }
}

/// What an observer of `name` sees after one command: the last change of
/// the record in its events, if any (`Some(None)`: no leader).
fn observed(events: &[Event], name: &str) -> Option<Option<(i64, i64, Vec<u8>)>> {
    let key = record_key(name);
    let last = events.iter().rev().find(|e| e.kv.key == key)?;
    Some(match last.kind {
        EventKind::Put => Some((
            last.kv.create_revision,
            last.kv.lease,
            last.kv.value.clone(),
        )),
        EventKind::Delete => None,
    })
}

proptest! {
    /// After every command of a random sequence, for both elections: the
    /// record exists exactly while there is a leader and names it (token,
    /// lease); every leader lease is alive; a new leadership has a higher
    /// token than every earlier one; and what an observer reconstructs from
    /// the events alone equals the leader the state reports.
    #[test]
    fn leader_record_follows_the_leader(ops in ops()) {
        let mut state = machine_with_leases(5);
        let mut last_token = [0i64; 2];
        let mut observer: [Option<(i64, i64, Vec<u8>)>; 2] = [None, None];
        for (step, op) in ops.iter().enumerate() {
            let command = command(op, &state, step);
            let before = state.clone();
            let out = state.execute(&command);
            if matches!(out.response, Response::Error(_)) {
                prop_assert_eq!(&state, &before, "step {}: an error changes nothing", step);
            }
            for (i, name) in NAMES.iter().enumerate() {
                let leader = state.leader(name);
                let rec = record(&state, name);
                match (&leader, &rec) {
                    (None, None) => {}
                    (Some(l), Some(r)) => {
                        prop_assert_eq!((r.create_revision, r.lease), (l.token, l.lease), "step {}", step);
                        prop_assert!(state.leases().contains(l.lease), "step {}: dead leader", step);
                        if l.token != last_token[i] {
                            prop_assert!(l.token > last_token[i], "step {}: token went down", step);
                            last_token[i] = l.token;
                        }
                    }
                    _ => prop_assert!(false, "step {}: leader {:?} but record {:?}", step, leader, rec),
                }
                if let Some(seen) = observed(&out.events, name) {
                    observer[i] = seen;
                }
                let expected = leader.map(|l| (l.token, l.lease, l.value));
                prop_assert_eq!(&observer[i], &expected, "step {} {:?}", step, command);
            }
        }
    }
}

//! Tests of the state machine: plain tables of commands and expected answers,
//! and property tests against a naive model. No servers, no clocks.
//!
//! The helpers below keep the tables short: they build requests, commands and
//! expected answers from string keys with lease 0 (or a lease, for the lease
//! and lock tables), and [`run`] plays a table of [`Step`]s against a fresh
//! [`StateMachine`], checking [`consistency`] after every step.

mod election;
mod kv_props;
mod kv_table;
mod kv_txn_table;
mod lease_table;
mod lock_props;
mod lock_table;
mod snapshot;

use std::collections::{BTreeMap, BTreeSet};

use super::{
    AcquireCommand, AcquireOutcome, ApplyError, Command, Compare, CompareOp, CompareTarget, Delay,
    DeleteRequest, DeleteResult, Event, EventKind, Grant, Holder, KeyValue, LOCK_PREFIX,
    LeaveReason, LockChange, LockMode, PutRequest, PutResult, RangeRequest, RangeResult, Response,
    StateMachine, TxnOp, TxnOpResult, TxnRequest, TxnResult, lock_key,
};

fn bytes(text: impl AsRef<[u8]>) -> Vec<u8> {
    text.as_ref().to_vec()
}

/// A stored pair with lease 0.
fn kv(key: impl AsRef<[u8]>, value: &str, create: i64, modified: i64, version: i64) -> KeyValue {
    KeyValue {
        key: bytes(key),
        create_revision: create,
        mod_revision: modified,
        version,
        value: bytes(value),
        lease: 0,
    }
}

/// A stored pair attached to `lease`.
fn kv_on(
    lease: i64,
    key: impl AsRef<[u8]>,
    value: &str,
    create: i64,
    modified: i64,
    version: i64,
) -> KeyValue {
    KeyValue {
        lease,
        ..kv(key, value, create, modified, version)
    }
}

fn put_req(key: impl AsRef<[u8]>, value: &str) -> PutRequest {
    PutRequest {
        key: bytes(key),
        value: bytes(value),
        lease: 0,
        prev_kv: false,
    }
}

fn put(key: impl AsRef<[u8]>, value: &str) -> Command {
    Command::Put(put_req(key, value))
}

fn put_prev(key: impl AsRef<[u8]>, value: &str) -> Command {
    Command::Put(PutRequest {
        prev_kv: true,
        ..put_req(key, value)
    })
}

/// A put attaching the key to `lease`.
fn put_on(lease: i64, key: impl AsRef<[u8]>, value: &str) -> Command {
    Command::Put(PutRequest {
        lease,
        ..put_req(key, value)
    })
}

fn del_req(key: impl AsRef<[u8]>, prefix: bool, prev_kv: bool) -> DeleteRequest {
    DeleteRequest {
        key: bytes(key),
        prefix,
        prev_kv,
    }
}

fn del(key: impl AsRef<[u8]>) -> Command {
    Command::DeleteRange(del_req(key, false, false))
}

fn del_prefix(prefix: impl AsRef<[u8]>) -> Command {
    Command::DeleteRange(del_req(prefix, true, false))
}

fn get(key: impl AsRef<[u8]>) -> RangeRequest {
    RangeRequest {
        key: bytes(key),
        ..RangeRequest::default()
    }
}

fn scan(prefix: impl AsRef<[u8]>) -> RangeRequest {
    RangeRequest {
        key: bytes(prefix),
        prefix: true,
        ..RangeRequest::default()
    }
}

fn compare(key: &str, op: CompareOp, target: CompareTarget) -> Compare {
    Compare {
        key: bytes(key),
        op,
        target,
    }
}

fn txn(compare: Vec<Compare>, success: Vec<TxnOp>, failure: Vec<TxnOp>) -> Command {
    Command::Txn(TxnRequest {
        compare,
        success,
        failure,
    })
}

fn op_put(key: &str, value: &str) -> TxnOp {
    TxnOp::Put(put_req(key, value))
}

fn op_del(key: &str) -> TxnOp {
    TxnOp::DeleteRange(del_req(key, false, false))
}

fn op_get(key: &str) -> TxnOp {
    TxnOp::Range(get(key))
}

fn put_ok(revision: i64) -> Response {
    Response::Put(PutResult {
        revision,
        prev_kv: None,
    })
}

fn put_ok_prev(revision: i64, prev_kv: KeyValue) -> Response {
    Response::Put(PutResult {
        revision,
        prev_kv: Some(prev_kv),
    })
}

fn deleted(revision: i64, deleted: i64, prev_kvs: Vec<KeyValue>) -> Response {
    Response::DeleteRange(DeleteResult {
        revision,
        deleted,
        prev_kvs,
    })
}

/// A range answer whose count is the number of pairs and `more` is false.
fn found(revision: i64, kvs: Vec<KeyValue>) -> RangeResult {
    let count = i64::try_from(kvs.len()).unwrap_or(i64::MAX);
    RangeResult {
        revision,
        kvs,
        more: false,
        count,
    }
}

fn txn_ok(revision: i64, succeeded: bool, responses: Vec<TxnOpResult>) -> Response {
    Response::Txn(TxnResult {
        revision,
        succeeded,
        responses,
    })
}

fn put_event(kv: KeyValue, prev_kv: Option<KeyValue>) -> Event {
    Event {
        kind: EventKind::Put,
        kv,
        prev_kv,
    }
}

fn delete_event(key: impl AsRef<[u8]>, revision: i64, prev_kv: KeyValue) -> Event {
    Event {
        kind: EventKind::Delete,
        kv: KeyValue {
            key: bytes(key),
            create_revision: 0,
            mod_revision: revision,
            version: 0,
            value: Vec::new(),
            lease: 0,
        },
        prev_kv: Some(prev_kv),
    }
}

fn error(error: ApplyError) -> Response {
    Response::Error(error)
}

fn grant_lease(id: i64, ttl: i64) -> Command {
    Command::LeaseGrant { id, ttl }
}

fn lease_granted(id: i64, ttl: i64) -> Response {
    Response::LeaseGrant { id, ttl }
}

fn revoke(id: i64) -> Command {
    Command::LeaseRevoke { id }
}

fn expire(ids: &[i64]) -> Command {
    Command::LeaseExpire { ids: ids.to_vec() }
}

fn expired(revision: i64, expired: &[i64]) -> Response {
    Response::LeaseExpire {
        revision,
        expired: expired.to_vec(),
    }
}

/// An exclusive, waiting acquire of a plain lock (one permit, no delay).
fn acquire_cmd(name: &str, lease: i64) -> AcquireCommand {
    AcquireCommand {
        name: name.to_string(),
        lease,
        mode: LockMode::Exclusive,
        permits: 1,
        try_only: false,
        delay_ms: 0,
    }
}

fn acquire(name: &str, lease: i64) -> Command {
    Command::LockAcquire(acquire_cmd(name, lease))
}

fn acquire_shared(name: &str, lease: i64) -> Command {
    Command::LockAcquire(AcquireCommand {
        mode: LockMode::Shared,
        ..acquire_cmd(name, lease)
    })
}

fn acquire_permits(name: &str, lease: i64, permits: u32) -> Command {
    Command::LockAcquire(AcquireCommand {
        permits,
        ..acquire_cmd(name, lease)
    })
}

fn acquire_try(name: &str, lease: i64) -> Command {
    Command::LockAcquire(AcquireCommand {
        try_only: true,
        ..acquire_cmd(name, lease)
    })
}

fn acquire_delayed(name: &str, lease: i64, delay_ms: u64) -> Command {
    Command::LockAcquire(AcquireCommand {
        delay_ms,
        ..acquire_cmd(name, lease)
    })
}

fn release(name: &str, token: i64, lease: i64) -> Command {
    Command::LockRelease {
        name: name.to_string(),
        token,
        lease,
    }
}

fn released(revision: i64) -> Response {
    Response::LockRelease { revision }
}

fn cancel(name: &str, lease: i64) -> Command {
    Command::LockCancel {
        name: name.to_string(),
        lease,
    }
}

fn delay_end(name: &str, since: i64) -> Command {
    Command::LockDelayEnd {
        name: name.to_string(),
        since,
    }
}

/// A holder of lock `name` without a lock-delay.
fn holder(name: &str, lease: i64, token: i64, mode: LockMode) -> Holder {
    Holder {
        lease,
        token,
        key: lock_key(name, lease),
        mode,
        delay_ms: 0,
    }
}

fn grant_of(name: &str, lease: i64, token: i64, holders: Vec<Holder>) -> Grant {
    Grant {
        token,
        key: lock_key(name, lease),
        holders,
    }
}

/// The answer to an acquire that (now or before) got the lock.
fn granted(name: &str, lease: i64, token: i64, holders: Vec<Holder>) -> Response {
    Response::LockAcquire(AcquireOutcome::Granted(grant_of(
        name, lease, token, holders,
    )))
}

fn queued(name: &str, lease: i64, position: u64) -> Response {
    Response::LockAcquire(AcquireOutcome::Queued {
        key: lock_key(name, lease),
        position,
    })
}

/// The lock change granting `lease` the lock `name` with `token`.
fn got(name: &str, lease: i64, token: i64) -> LockChange {
    LockChange::Granted {
        name: name.to_string(),
        lease,
        token,
    }
}

/// The lock change ending `lease`'s place in lock `name`.
fn left(name: &str, lease: i64, reason: LeaveReason) -> LockChange {
    LockChange::Left {
        name: name.to_string(),
        lease,
        reason,
    }
}

/// One step of a case.
#[derive(Debug)]
enum Step {
    /// Apply a command; check the response.
    Apply(Command, Response),
    /// Apply a command; check the response and the events.
    Events(Command, Response, Vec<Event>),
    /// Apply a command; check the response and the lock changes.
    Locks(Command, Response, Vec<LockChange>),
    /// Apply a command; check the response, and that it changed nothing at
    /// all: no event, no lock change, the same state and digest.
    Unchanged(Command, Response),
    /// Read; check the answer.
    Range(RangeRequest, RangeResult),
    /// Check the current revision.
    Revision(i64),
    /// Check a lock's holders as (lease, token), in grant order, and its
    /// waiters' leases, head first. A lock not in use has neither.
    Places(&'static str, Vec<(i64, i64)>, Vec<i64>),
    /// Check whether a lock is in use (has holders, waiters or a delay).
    InUse(&'static str, bool),
    /// Check a lock's delay.
    Delay(&'static str, Option<Delay>),
    /// Check the keys attached to a lease; `None`: the lease is not alive.
    LeaseKeys(i64, Option<Vec<Vec<u8>>>),
}

/// Runs each case against a fresh [`StateMachine`], checking every step and
/// the [`consistency`] of the state after it.
fn run(cases: Vec<(&str, Vec<Step>)>) {
    for (name, steps) in cases {
        let mut state = StateMachine::new();
        for (index, step) in steps.into_iter().enumerate() {
            let at = format!("case {name:?}, step {index}");
            match step {
                Step::Apply(command, response) => {
                    assert_eq!(state.apply(&command).0, response, "{at}");
                }
                Step::Events(command, response, events) => {
                    assert_eq!(state.apply(&command), (response, events), "{at}");
                }
                Step::Locks(command, response, changes) => {
                    let output = state.execute(&command);
                    assert_eq!((output.response, output.locks), (response, changes), "{at}");
                }
                Step::Unchanged(command, response) => {
                    let before = state.clone();
                    let output = state.execute(&command);
                    assert_eq!(output.response, response, "{at}");
                    assert_eq!((output.events, output.locks), (vec![], vec![]), "{at}");
                    assert_eq!(state, before, "{at}");
                    assert_eq!(state.digest(), before.digest(), "{at}");
                }
                Step::Range(request, result) => assert_eq!(state.range(&request), result, "{at}"),
                Step::Revision(revision) => assert_eq!(state.revision(), revision, "{at}"),
                Step::Places(lock, holders, waiters) => {
                    let (have_holders, have_waiters) = places(&state, lock);
                    assert_eq!((have_holders, have_waiters), (holders, waiters), "{at}");
                }
                Step::InUse(lock, in_use) => {
                    assert_eq!(state.locks().get(lock).is_some(), in_use, "{at}");
                }
                Step::Delay(lock, delay) => {
                    let have = state.locks().get(lock).and_then(|lock| lock.delay);
                    assert_eq!(have, delay, "{at}");
                }
                Step::LeaseKeys(lease, keys) => {
                    let have = state
                        .leases()
                        .get(lease)
                        .map(|lease| lease.keys.iter().cloned().collect::<Vec<_>>());
                    assert_eq!(have, keys, "{at}");
                }
            }
            if let Err(problem) = consistency(&state) {
                panic!("{at}: {problem}");
            }
        }
    }
}

/// A lock's holders as (lease, token) and its waiters' leases; both empty
/// for a lock not in use.
fn places(state: &StateMachine, lock: &str) -> (Vec<(i64, i64)>, Vec<i64>) {
    state.locks().get(lock).map_or((vec![], vec![]), |lock| {
        (
            lock.holders.iter().map(|h| (h.lease, h.token)).collect(),
            lock.waiters.iter().map(|w| w.lease).collect(),
        )
    })
}

/// Whether a place wanting `mode` may join `holders` of a lock with
/// `permits`: a semaphore admits up to N, a plain lock one exclusive holder
/// or any number of shared ones.
fn admits(permits: u32, holders: &[Holder], mode: LockMode) -> bool {
    if permits > 1 {
        return holders.len() < permits as usize;
    }
    match mode {
        LockMode::Exclusive => holders.is_empty(),
        LockMode::Shared => holders.iter().all(|h| h.mode == LockMode::Shared),
    }
}

/// What must hold between any two commands, or what is wrong:
///
/// - each lease's key set is exactly the keys attached to it, and a key is
///   attached only to a live lease;
/// - every lock in use has a holder, a waiter or a delay;
/// - every place is the key `lock_key(name, lease)`, attached to its lease
///   (which is alive), one place per lease and lock; a holder's key was
///   last written at its token;
/// - every key under [`LOCK_PREFIX`] is a place;
/// - the holders fit together (one exclusive, or shared ones, or at most N
///   of a semaphore), and no queue head could hold the lock and does not
///   (unless a delay is in force).
fn consistency(state: &StateMachine) -> Result<(), String> {
    let kvs = state.range(&scan("")).kvs;
    let stored: BTreeMap<&[u8], &KeyValue> = kvs.iter().map(|kv| (kv.key.as_slice(), kv)).collect();
    for lease in state.leases().iter() {
        for key in &lease.keys {
            match stored.get(key.as_slice()) {
                Some(kv) if kv.lease == lease.id => {}
                other => {
                    return Err(format!(
                        "lease {} lists key {key:?}, stored as {other:?}",
                        lease.id
                    ));
                }
            }
        }
    }
    for kv in &kvs {
        let listed = state
            .leases()
            .get(kv.lease)
            .is_some_and(|lease| lease.keys.contains(&kv.key));
        if kv.lease != 0 && !listed {
            return Err(format!("{kv:?} is not listed by a live lease {}", kv.lease));
        }
    }
    let mut keys = BTreeSet::new();
    for (name, lock) in state.locks().iter() {
        if lock.holders.is_empty() && lock.waiters.is_empty() && lock.delay.is_none() {
            return Err(format!("lock {name:?} is kept without any use"));
        }
        let holders = lock
            .holders
            .iter()
            .map(|h| (h.lease, &h.key, Some(h.token)));
        let waiters = lock.waiters.iter().map(|w| (w.lease, &w.key, None));
        for (lease, key, token) in holders.chain(waiters) {
            if *key != lock_key(name, lease) {
                return Err(format!("lock {name:?}: lease {lease} has key {key:?}"));
            }
            if !keys.insert(key.clone()) {
                return Err(format!("lock {name:?}: lease {lease} has two places"));
            }
            if !state.leases().contains(lease) {
                return Err(format!(
                    "lock {name:?}: lease {lease} has a place but is gone"
                ));
            }
            let kv = stored.get(key.as_slice());
            let fits = kv.is_some_and(|kv| {
                kv.lease == lease && token.is_none_or(|token| kv.mod_revision == token)
            });
            if !fits {
                return Err(format!(
                    "lock {name:?}: place of lease {lease} (token {token:?}) is stored as {kv:?}"
                ));
            }
        }
        let fit = lock
            .holders
            .iter()
            .enumerate()
            .all(|(index, holder)| admits(lock.permits, &lock.holders[..index], holder.mode));
        if lock.permits == 0 || !fit {
            return Err(format!("lock {name:?}: holders do not fit: {lock:?}"));
        }
        if let Some(head) = lock.waiters.front()
            && lock.delay.is_none()
            && admits(lock.permits, &lock.holders, head.mode)
        {
            return Err(format!("lock {name:?}: the head could hold it: {lock:?}"));
        }
    }
    for kv in &kvs {
        if kv.key.starts_with(LOCK_PREFIX) && !keys.contains(&kv.key) {
            return Err(format!("lock key {:?} is no place", kv.key));
        }
    }
    Ok(())
}

//! Tests of the state machine: plain tables of commands and expected answers,
//! and property tests against a naive model. No servers, no clocks.
//!
//! The helpers below keep the tables short: they build requests, commands and
//! expected answers from string keys with lease 0, and [`run`] plays a table
//! of [`Step`]s against a fresh [`StateMachine`].

mod kv_props;
mod kv_table;
mod kv_txn_table;

use super::{
    Command, Compare, CompareOp, CompareTarget, DeleteRequest, DeleteResult, Event, EventKind,
    KeyValue, PutRequest, PutResult, RangeRequest, RangeResult, Response, StateMachine, TxnOp,
    TxnOpResult, TxnRequest, TxnResult,
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

/// One step of a case.
#[derive(Debug)]
enum Step {
    /// Apply a command; check the response.
    Apply(Command, Response),
    /// Apply a command; check the response and the events.
    Events(Command, Response, Vec<Event>),
    /// Read; check the answer.
    Range(RangeRequest, RangeResult),
    /// Check the current revision.
    Revision(i64),
}

/// Runs each case against a fresh [`StateMachine`], checking every step.
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
                Step::Range(request, result) => assert_eq!(state.range(&request), result, "{at}"),
                Step::Revision(revision) => assert_eq!(state.revision(), revision, "{at}"),
            }
        }
    }
}

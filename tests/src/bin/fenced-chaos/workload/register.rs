//! The `register` workload: processes read, write and compare-and-swap a
//! few keys, each write with a value unique in the run.
//!
//! Every process has its own client, starting on its own member and
//! moving on after a failure, with retries off (see
//! [`Context::client`]). Reads are linearizable ranges; a compare-and-swap
//! is a transaction that reads the key back when the compare fails, so a
//! failed swap is a read too.

use std::collections::HashMap;
use std::time::Duration;

use fenced_client::Client;
use fenced_client::pb::compare::{CompareResult, CompareTarget, TargetUnion};
use fenced_client::pb::request_op::Request;
use fenced_client::pb::response_op::Response;
use fenced_client::pb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};
use rand::Rng as _;
use tokio::task::JoinSet;

use crate::record::{Call, Outcome, Ret};
use crate::workload::{Context, parse_value, read_error, write_error};

/// Concurrent processes.
const PROCESSES: usize = 6;
/// Keys, `r/0` ..; few enough that processes contend on each.
const KEYS: usize = 4;

/// Starts the workload's processes on `tasks`.
pub(crate) fn start(context: &Context, tasks: &mut JoinSet<()>) {
    for worker in 0..PROCESSES {
        let context = context.clone();
        tasks.spawn(async move { run(context, worker).await });
    }
}

async fn run(context: Context, worker: usize) {
    let client = context.client(worker, false);
    let recorder = context.recorder.clone();
    let mut process = recorder.process();
    // The last value this process saw per key: what its swaps expect.
    let mut last_seen: HashMap<String, u64> = HashMap::new();
    while !context.stopped() {
        let (key, choice) = {
            let mut rng = rand::rng();
            (
                format!("r/{}", rng.random_range(0..KEYS)),
                rng.random_range(0..4),
            )
        };
        let expect = last_seen.get(&key).copied();
        let outcome = match (choice, expect) {
            (0 | 1, _) => {
                let pending = recorder.invoke(process, Call::Read { key: key.clone() });
                let outcome = match client.get(key.clone()).await {
                    Ok(kv) => {
                        let value = kv.and_then(|kv| parse_value(&kv.value));
                        if let Some(value) = value {
                            last_seen.insert(key.clone(), value);
                        }
                        Outcome::Ok(Ret::Value { value })
                    }
                    Err(err) => read_error(&err),
                };
                recorder.complete(pending, outcome.clone());
                outcome
            }
            // A swap needs a value to expect: write first.
            (2, _) | (_, None) => {
                let value = context.unique_value();
                let call = Call::Write {
                    key: key.clone(),
                    value,
                };
                let pending = recorder.invoke(process, call);
                let outcome = match client.put(key.clone(), value.to_string()).await {
                    Ok(response) => {
                        last_seen.insert(key.clone(), value);
                        Outcome::Ok(Ret::Written {
                            revision: response.header.map_or(0, |h| h.revision),
                        })
                    }
                    Err(err) => write_error(&err),
                };
                recorder.complete(pending, outcome.clone());
                outcome
            }
            (_, Some(expect)) => {
                let new = context.unique_value();
                let call = Call::Cas {
                    key: key.clone(),
                    expect,
                    new,
                };
                let pending = recorder.invoke(process, call);
                let outcome = cas(&client, &key, expect, new).await;
                match outcome {
                    Outcome::Ok(Ret::NotSwapped { value: Some(value) }) => {
                        last_seen.insert(key.clone(), value);
                    }
                    Outcome::Ok(Ret::Swapped { .. }) => {
                        last_seen.insert(key.clone(), new);
                    }
                    _ => {}
                }
                recorder.complete(pending, outcome.clone());
                outcome
            }
        };
        if matches!(outcome, Outcome::Unknown { .. }) {
            // The operation may still be in flight: carry on as a new
            // process, so no process has two operations open.
            process = recorder.process();
        }
        let think = Duration::from_millis(rand::rng().random_range(0..20));
        context.think(think).await;
    }
}

/// Puts `new` under `key` if it holds `expect`; otherwise reads it back.
async fn cas(client: &Client, key: &str, expect: u64, new: u64) -> Outcome {
    let request = TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal.into(),
            target: CompareTarget::Value.into(),
            key: key.into(),
            target_union: Some(TargetUnion::Value(expect.to_string().into())),
        }],
        success: vec![RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: key.into(),
                value: new.to_string().into(),
                ..PutRequest::default()
            })),
        }],
        failure: vec![RequestOp {
            request: Some(Request::RequestRange(RangeRequest {
                key: key.into(),
                ..RangeRequest::default()
            })),
        }],
    };
    match client.txn(request).await {
        Ok(response) if response.succeeded => Outcome::Ok(Ret::Swapped {
            revision: response.header.map_or(0, |h| h.revision),
        }),
        Ok(response) => {
            let value = response
                .responses
                .into_iter()
                .find_map(|op| match op.response {
                    Some(Response::ResponseRange(range)) => Some(range),
                    _ => None,
                })
                .and_then(|range| range.kvs.into_iter().next())
                .and_then(|kv| parse_value(&kv.value));
            Outcome::Ok(Ret::NotSwapped { value })
        }
        Err(err) => write_error(&err),
    }
}

//! The `watch` workload: writers put unique values under `w/`; watchers
//! on different members watch the prefix from one start revision, through
//! the client's resuming watch stream (opened again where it left off if
//! it ends with an error).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fenced_client::EventKind;
use futures::StreamExt as _;
use rand::Rng as _;
use tokio::task::JoinSet;

use crate::record::{Call, Outcome, Ret, Seen, StreamLog};
use crate::workload::{Context, parse_value, write_error};

/// Concurrent writers.
const WRITERS: usize = 2;
/// Watchers, each starting on another member.
const WATCHERS: usize = 3;
/// Keys written, `w/0` ..
const KEYS: usize = 3;
/// The watched prefix.
pub(crate) const PREFIX: &str = "w/";

/// What the watchers saw; shared with the tasks that fill them.
pub(crate) type Watchers = Vec<Arc<Mutex<StreamLog<Seen>>>>;

/// Starts writers and watchers on `tasks`; watchers watch from
/// `start_revision` until the stop signal and then until they reach the
/// revision in `until` (set at the end of the run).
pub(crate) fn start(
    context: &Context,
    tasks: &mut JoinSet<()>,
    start_revision: i64,
    until: tokio::sync::watch::Receiver<Option<i64>>,
) -> Watchers {
    for worker in 0..WRITERS {
        let context = context.clone();
        tasks.spawn(async move { write(context, worker).await });
    }
    (0..WATCHERS)
        .map(|worker| {
            let log = Arc::new(Mutex::new(StreamLog {
                name: format!("watcher {worker}"),
                start_revision,
                items: Vec::new(),
                errors: Vec::new(),
            }));
            let context = context.clone();
            let until = until.clone();
            let task_log = log.clone();
            tasks.spawn(async move { watch(context, worker, task_log, until).await });
            log
        })
        .collect()
}

/// One put of a unique value under the prefix, recorded.
pub(crate) async fn put(
    context: &Context,
    client: &fenced_client::Client,
    process: u64,
) -> Outcome {
    let key = format!("{PREFIX}{}", rand::rng().random_range(0..KEYS));
    let value = context.unique_value();
    let call = Call::Put {
        key: key.clone(),
        value,
    };
    let pending = context.recorder.invoke(process, call);
    let outcome = match client.put(key, value.to_string()).await {
        Ok(response) => Outcome::Ok(Ret::Written {
            revision: response.header.map_or(0, |h| h.revision),
        }),
        Err(err) => write_error(&err),
    };
    context.recorder.complete(pending, outcome.clone());
    outcome
}

async fn write(context: Context, worker: usize) {
    // Retries off: a retried put could be applied twice, at two revisions.
    let client = context.client(worker + 2, false);
    let mut process = context.recorder.process();
    while !context.stopped() {
        if let Outcome::Unknown { .. } = put(&context, &client, process).await {
            process = context.recorder.process();
        }
        let think = Duration::from_millis(rand::rng().random_range(0..30));
        context.think(think).await;
    }
}

async fn watch(
    context: Context,
    worker: usize,
    log: Arc<Mutex<StreamLog<Seen>>>,
    mut until: tokio::sync::watch::Receiver<Option<i64>>,
) {
    let client = context.client(worker, true);
    let recorder = context.recorder.clone();
    let start_revision = lock(&log).start_revision;
    loop {
        let from = lock(&log)
            .items
            .last()
            .map_or(start_revision, |seen| seen.revision + 1);
        if reached(&until, from - 1) {
            return;
        }
        let opened = client
            .watch(PREFIX)
            .prefix()
            .from_revision(from)
            .stream()
            .await;
        let mut stream = match opened {
            Ok(stream) => stream,
            Err(err) => {
                lock(&log).errors.push((recorder.now(), err.to_string()));
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                next = stream.next() => next,
                _ = until.changed() => {
                    let last = lock(&log).items.last().map_or(from - 1, |s| s.revision);
                    if reached(&until, last) {
                        return;
                    }
                    continue;
                }
            };
            match next {
                Some(Ok(batch)) => {
                    let time = recorder.now();
                    let mut log = lock(&log);
                    for event in batch.events {
                        log.items.push(Seen {
                            time,
                            revision: batch.revision,
                            key: String::from_utf8_lossy(&event.kv.key).into_owned(),
                            value: match event.kind {
                                EventKind::Put => parse_value(&event.kv.value),
                                EventKind::Delete => None,
                            },
                        });
                    }
                    if reached(&until, batch.revision) {
                        return;
                    }
                }
                Some(Err(err)) => {
                    lock(&log).errors.push((recorder.now(), err.to_string()));
                    break;
                }
                None => break,
            }
        }
    }
}

fn reached(until: &tokio::sync::watch::Receiver<Option<i64>>, revision: i64) -> bool {
    until.borrow().is_some_and(|until| revision >= until)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

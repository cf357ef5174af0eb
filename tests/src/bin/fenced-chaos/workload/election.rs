//! The `election` workload: candidates campaign in one election with
//! sessions of a short TTL, lead for a moment and resign; observers on
//! different members follow the election from one start revision.
//!
//! A client pause freezes a leader past its lease before it resigns (its
//! session's keepalives stop too, as a frozen process's would), so the
//! next leader is elected while the old one still thinks it leads.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt as _;
use rand::Rng as _;
use tokio::task::JoinSet;

use crate::record::{Call, Observed, ObservedLeader, Outcome, Ret, StreamLog};
use crate::workload::{Context, LEASE_TTL, grant_error, parse_value, write_error};

/// Concurrent candidates.
const CANDIDATES: usize = 3;
/// Observers, each starting on another member.
const OBSERVERS: usize = 3;
/// The election.
pub(crate) const ELECTION: &str = "chaos";

/// What the observers saw; shared with the tasks that fill them.
pub(crate) type Observers = Vec<Arc<Mutex<StreamLog<Observed>>>>;

/// Starts candidates and observers on `tasks`; observers follow from
/// `start_revision` until the stop signal and then until they reach the
/// revision in `until` (set at the end of the run).
pub(crate) fn start(
    context: &Context,
    tasks: &mut JoinSet<()>,
    start_revision: i64,
    until: tokio::sync::watch::Receiver<Option<i64>>,
) -> Observers {
    for worker in 0..CANDIDATES {
        let context = context.clone();
        tasks.spawn(async move { candidate(context, worker).await });
    }
    (0..OBSERVERS)
        .map(|worker| {
            let log = Arc::new(Mutex::new(StreamLog {
                name: format!("observer {worker}"),
                start_revision,
                items: Vec::new(),
                errors: Vec::new(),
            }));
            let context = context.clone();
            let until = until.clone();
            let task_log = log.clone();
            tasks.spawn(async move { observe(context, worker, task_log, until).await });
            log
        })
        .collect()
}

async fn candidate(context: Context, worker: usize) {
    let client = context.client(worker + 1, true);
    let recorder = context.recorder.clone();
    let mut process = recorder.process();
    'sessions: while !context.stopped() {
        let session = match client.session_builder().ttl(LEASE_TTL).build().await {
            Ok(session) => session,
            Err(_) => {
                context.think(Duration::from_millis(200)).await;
                continue;
            }
        };
        while !context.stopped() && !session.is_lost() {
            let value = context.unique_value();
            let call = Call::Campaign {
                election: ELECTION.into(),
                lease: session.lease_id(),
                value,
            };
            let pending = recorder.invoke(process, call);
            let wait = Duration::from_secs(3);
            let leadership = match session
                .campaign_with_timeout(ELECTION, value.to_string(), wait)
                .await
            {
                Ok(leadership) => {
                    let token = leadership.token();
                    recorder.complete(pending, Outcome::Ok(Ret::Granted { token }));
                    leadership
                }
                Err(err) => {
                    let outcome = grant_error(&err);
                    if matches!(outcome, Outcome::Unknown { .. }) {
                        process = recorder.process();
                    }
                    recorder.complete(pending, outcome);
                    // Without a pause a refusal that comes back at once
                    // (the session's claim is still being given back)
                    // would spin and starve the runtime.
                    context.think(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let token = leadership.token();
            let lead = Duration::from_millis(rand::rng().random_range(100..800));
            context.think(lead).await;
            // Resigned explicitly and recorded even when the session is
            // lost: dropping the leadership would resign in the background,
            // unrecorded.
            let status = session.status();
            let alive_until = recorder.at(status.alive_until().into_std());
            if let Some(hold) = context.pauses.take() {
                // A frozen process sends no keepalives either: stop the
                // session without revoking its lease, so the leadership can
                // run out during the freeze.
                drop(session);
                let call = Call::Pause {
                    millis: u64::try_from(hold.as_millis()).unwrap_or(u64::MAX),
                    token,
                    lock: None,
                    election: Some(ELECTION.into()),
                };
                let pending = recorder.invoke(process, call);
                // The nemesis's pacing: this is the fault itself.
                tokio::time::sleep(hold).await;
                recorder.complete(pending, Outcome::Ok(Ret::Done));
                process = resign(&context, process, leadership, alive_until).await;
                continue 'sessions;
            }
            process = resign(&context, process, leadership, alive_until).await;
        }
        let _ = session.close().await;
    }
}

/// Resigns `leadership`, recorded with the lease deadline the session
/// vouched for; returns the process to go on with.
async fn resign(
    context: &Context,
    mut process: u64,
    leadership: fenced_client::Leadership,
    alive_until: u64,
) -> u64 {
    let recorder = &context.recorder;
    let call = Call::Resign {
        election: ELECTION.into(),
        token: leadership.token(),
        alive_until,
    };
    let pending = recorder.invoke(process, call);
    match leadership.resign().await {
        Ok(()) => recorder.complete(pending, Outcome::Ok(Ret::Done)),
        Err(err) => {
            let outcome = write_error(&err);
            if matches!(outcome, Outcome::Unknown { .. }) {
                process = recorder.process();
            }
            recorder.complete(pending, outcome);
        }
    }
    process
}

async fn observe(
    context: Context,
    worker: usize,
    log: Arc<Mutex<StreamLog<Observed>>>,
    mut until: tokio::sync::watch::Receiver<Option<i64>>,
) {
    let client = context.client(worker, true);
    let recorder = context.recorder.clone();
    let start_revision = lock(&log).start_revision;
    loop {
        let from = lock(&log)
            .items
            .last()
            .map_or(start_revision, |item| item.revision + 1);
        if reached(&until, from - 1) {
            return;
        }
        let mut stream = match client.observe_from(ELECTION, from).await {
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
                    let last = lock(&log).items.last().map_or(from - 1, |i| i.revision);
                    if reached(&until, last) {
                        return;
                    }
                    continue;
                }
            };
            match next {
                Some(Ok(observation)) => {
                    let item = Observed {
                        time: recorder.now(),
                        revision: observation.revision,
                        leader: observation.leader.map(|leader| ObservedLeader {
                            token: leader.token,
                            lease: leader.lease,
                            value: parse_value(&leader.value),
                        }),
                    };
                    let revision = item.revision;
                    lock(&log).items.push(item);
                    if reached(&until, revision) {
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

/// Whether an observer at `revision` is done: the run is over and it got
/// to the revision the end asked for.
fn reached(until: &tokio::sync::watch::Receiver<Option<i64>>, revision: i64) -> bool {
    until.borrow().is_some_and(|until| revision >= until)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

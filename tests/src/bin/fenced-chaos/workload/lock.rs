//! The `lock` workload: holders take a few exclusive locks with sessions
//! of a short TTL, append a value to the lock's fenced resource (read it,
//! write it back one value longer) and release.
//!
//! Before each use of its token a holder checks that its session still
//! vouches for the lease and records the deadline it vouched for. A client
//! pause (from the nemesis) freezes the holder right after that check,
//! for longer than the lease, and stops its session's keepalives as a
//! frozen process's would: the stale holder then writes with its old
//! token, which the resource must refuse once a newer holder has used it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fenced_client::{LockOptions, SessionStatus};
use rand::Rng as _;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::record::{Call, Outcome, Recorder, Ret};
use crate::workload::{Context, LEASE_TTL, grant_error, write_error};

/// Concurrent holders.
const HOLDERS: usize = 4;
/// Lock names, `l/0` ..
const LOCKS: usize = 2;

/// A register per lock that refuses tokens below the highest it accepted,
/// as a storage system given fencing tokens would.
#[derive(Debug, Default)]
pub(crate) struct FencedResource {
    /// Lock name → (highest token accepted, the list). A std mutex, held
    /// while the operation is recorded so the history's order is the
    /// resource's order.
    state: Mutex<HashMap<String, (i64, Vec<u64>)>>,
}

impl FencedResource {
    /// Reads the list with the user's token; refused below the highest
    /// token.
    fn read(&self, user: &User<'_>) -> Option<Vec<u64>> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let call = Call::ResourceRead {
            lock: user.lock.into(),
            token: user.token,
            alive_until: user.alive_until,
        };
        let pending = user.recorder.invoke(user.process, call);
        let (highest, values) = state.entry(user.lock.into()).or_default();
        let (ret, result) = match user.token < *highest {
            true => (Ret::Rejected { highest: *highest }, None),
            false => {
                *highest = user.token;
                (
                    Ret::Values {
                        values: values.clone(),
                    },
                    Some(values.clone()),
                )
            }
        };
        user.recorder.complete(pending, Outcome::Ok(ret));
        result
    }

    /// Replaces the list by `base` plus `value`, with the user's token.
    fn write(&self, user: &User<'_>, base: Vec<u64>, value: u64) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let call = Call::ResourceWrite {
            lock: user.lock.into(),
            token: user.token,
            value,
            base_len: base.len(),
            alive_until: user.alive_until,
        };
        let pending = user.recorder.invoke(user.process, call);
        let (highest, values) = state.entry(user.lock.into()).or_default();
        let ret = match user.token < *highest {
            true => Ret::Rejected { highest: *highest },
            false => {
                *highest = user.token;
                *values = base;
                values.push(value);
                Ret::Done
            }
        };
        user.recorder.complete(pending, Outcome::Ok(ret));
    }
}

/// Who uses the resource, with what, and what the holder's session
/// vouched for when it last checked.
struct User<'a> {
    recorder: &'a Recorder,
    process: u64,
    lock: &'a str,
    token: i64,
    alive_until: u64,
}

/// Starts the holders on `tasks`.
pub(crate) fn start(context: &Context, tasks: &mut JoinSet<()>) {
    let resource = Arc::new(FencedResource::default());
    for worker in 0..HOLDERS {
        let context = context.clone();
        let resource = resource.clone();
        tasks.spawn(async move { run(context, resource, worker).await });
    }
}

async fn run(context: Context, resource: Arc<FencedResource>, worker: usize) {
    let client = context.client(worker, true);
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
            let lock = format!("l/{}", rand::rng().random_range(0..LOCKS));
            let call = Call::Acquire {
                lock: lock.clone(),
                lease: session.lease_id(),
            };
            let pending = recorder.invoke(process, call);
            let options = LockOptions::default().wait_timeout(Duration::from_secs(3));
            let guard = match session.lock_with(lock.clone(), options).await {
                Ok(guard) => {
                    let token = guard.token();
                    recorder.complete(pending, Outcome::Ok(Ret::Granted { token }));
                    guard
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
            let token = guard.token();
            let held = Holder {
                context: &context,
                status: session.status_changes(),
                resource: &resource,
                process,
                lock: &lock,
                token,
            };
            if let Some(hold) = context.pauses.take()
                && let Some(alive_until) = held.check()
            {
                // A frozen process sends no keepalives and no release
                // either: stop the session without revoking the lease and
                // keep the grant, so the lease runs out during the freeze.
                std::mem::forget(guard);
                drop(session);
                held.freeze(hold).await;
                held.use_resource_stale(alive_until);
                continue 'sessions;
            }
            held.use_resource().await;
            let hold = Duration::from_millis(rand::rng().random_range(0..100));
            context.think(hold).await;
            // Released explicitly and recorded even when the session is
            // lost: dropping the guard would release in the background,
            // unrecorded, and the checker would see the next holder while
            // this one still seemed to hold.
            let call = Call::Release {
                lock: lock.clone(),
                token,
                alive_until: held.alive_until(),
            };
            let pending = recorder.invoke(process, call);
            match guard.release().await {
                Ok(()) => recorder.complete(pending, Outcome::Ok(Ret::Done)),
                Err(err) => {
                    let outcome = write_error(&err);
                    if matches!(outcome, Outcome::Unknown { .. }) {
                        process = recorder.process();
                    }
                    recorder.complete(pending, outcome);
                }
            }
        }
        // Revokes the lease if it still exists; a lost one is gone anyway.
        let _ = session.close().await;
    }
}

/// A holder between its grant and its release.
struct Holder<'a> {
    context: &'a Context,
    /// The session's status: the holder reads what its session vouches
    /// for, without keeping the session itself.
    status: watch::Receiver<SessionStatus>,
    resource: &'a FencedResource,
    process: u64,
    lock: &'a str,
    token: i64,
}

impl Holder<'_> {
    /// The lease deadline the session vouches for now (ns since start), or
    /// `None` when it no longer vouches for one in the future.
    fn check(&self) -> Option<u64> {
        let status = self.status.borrow().clone();
        let now = tokio::time::Instant::now();
        if status.lost().is_some() || status.alive_until() <= now {
            return None;
        }
        Some(self.alive_until())
    }

    fn alive_until(&self) -> u64 {
        let alive_until = self.status.borrow().alive_until();
        self.context.recorder.at(alive_until.into_std())
    }

    /// Reads the resource and writes it back one value longer, checking
    /// the session before each use.
    async fn use_resource(&self) {
        let Some(alive_until) = self.check() else {
            return;
        };
        let Some(base) = self.resource.read(&self.user(alive_until)) else {
            return;
        };
        let Some(alive_until) = self.check() else {
            return;
        };
        let value = self.context.unique_value();
        self.resource.write(&self.user(alive_until), base, value);
    }

    /// What a holder frozen right after checking its session does when it
    /// thaws: it uses its token anyway, with what it checked before.
    fn use_resource_stale(&self, alive_until: u64) {
        let Some(base) = self.resource.read(&self.user(alive_until)) else {
            return;
        };
        let value = self.context.unique_value();
        self.resource.write(&self.user(alive_until), base, value);
    }

    fn user(&self, alive_until: u64) -> User<'_> {
        User {
            recorder: &self.context.recorder,
            process: self.process,
            lock: self.lock,
            token: self.token,
            alive_until,
        }
    }

    /// Freezes for `hold`, recording it as a client pause.
    async fn freeze(&self, hold: Duration) {
        let call = Call::Pause {
            millis: u64::try_from(hold.as_millis()).unwrap_or(u64::MAX),
            token: self.token,
            lock: Some(self.lock.to_owned()),
            election: None,
        };
        let pending = self.context.recorder.invoke(self.process, call);
        // The nemesis's pacing: this is the fault, not a wait for an event.
        tokio::time::sleep(hold).await;
        self.context
            .recorder
            .complete(pending, Outcome::Ok(Ret::Done));
    }
}

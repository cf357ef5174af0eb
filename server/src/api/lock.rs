//! The `Lock` service: acquire (blocking, FIFO), release, describe, check a
//! token.
//!
//! An acquire is one log command. When it queues, the call waits here for the
//! apply loop to report the grant (registered before proposing, so it cannot
//! be missed); no client polls. When the wait ends first, or the client goes
//! away, a cancel command removes the queue place, so no waiter is left
//! behind.

use std::time::Duration;

use fenced_proto::pb::{self, lock_server::Lock};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::api::convert::check_name;
use crate::api::lease::unexpected;
use crate::api::{client_timeout, header};
use crate::node::{Node, NodeError};
use crate::state::{
    AcquireCommand, AcquireOutcome, CancelOutcome, Command, ELECTION_MARK, Grant, Holder,
    LeaveReason, LockChange, LockMode, Response as Applied,
};

/// Longest lock-delay a client may ask for (Consul's limit too).
pub const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);
/// Margin kept before the call's own deadline so that a timed-out wait can
/// still remove its queue place and answer.
const CANCEL_MARGIN: Duration = Duration::from_millis(250);

/// Serves the `Lock` service.
#[derive(Clone, Debug)]
pub struct LockService {
    node: Node,
}

impl LockService {
    /// A service for `node`.
    pub fn new(node: Node) -> Self {
        Self { node }
    }
}

fn mode_to_pb(mode: LockMode) -> i32 {
    match mode {
        LockMode::Exclusive => pb::LockMode::Exclusive as i32,
        LockMode::Shared => pb::LockMode::Shared as i32,
    }
}

fn holder_to_pb(h: &Holder) -> pb::LockHolder {
    pb::LockHolder {
        lease: h.lease,
        token: h.token,
        key: h.key.clone(),
        mode: mode_to_pb(h.mode),
    }
}

/// Validates and converts an acquire.
fn acquire_command(req: &pb::AcquireRequest) -> Result<AcquireCommand, Status> {
    check_name(&req.name, "acquire")?;
    if req.lease <= 0 {
        return Err(Status::invalid_argument(format!(
            "acquire: lease {} is not a lease id; grant one with Lease.Grant and keep it alive",
            req.lease
        )));
    }
    let mode = match pb::LockMode::try_from(req.mode) {
        Ok(pb::LockMode::Exclusive) => LockMode::Exclusive,
        Ok(pb::LockMode::Shared) => LockMode::Shared,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "acquire: unknown mode {} (expected EXCLUSIVE or SHARED)",
                req.mode
            )));
        }
    };
    let permits = req.permits.unwrap_or(1);
    if permits == 0 {
        return Err(Status::invalid_argument(
            "acquire: permits must be at least 1 (1 = a lock, N > 1 = a semaphore of N)",
        ));
    }
    if permits > 1 && mode == LockMode::Shared {
        return Err(Status::invalid_argument(format!(
            "acquire: a semaphore ({permits} permits) has no SHARED mode; use EXCLUSIVE"
        )));
    }
    if req.wait_timeout_ms < 0 {
        return Err(Status::invalid_argument(format!(
            "acquire: wait_timeout_ms {} is negative (0 waits until the call's deadline)",
            req.wait_timeout_ms
        )));
    }
    let delay_ms = u64::try_from(req.lock_delay_ms).map_err(|_| {
        Status::invalid_argument(format!(
            "acquire: lock_delay_ms {} is negative",
            req.lock_delay_ms
        ))
    })?;
    if Duration::from_millis(delay_ms) > MAX_LOCK_DELAY {
        return Err(Status::invalid_argument(format!(
            "acquire: lock_delay_ms {delay_ms} is above the limit of {} ms",
            MAX_LOCK_DELAY.as_millis()
        )));
    }
    Ok(AcquireCommand {
        name: req.name.clone(),
        lease: req.lease,
        mode,
        permits,
        try_only: req.try_only,
        delay_ms,
    })
}

/// Removes a queue place when the waiting call is dropped (the client went
/// away) without having been answered.
struct CancelOnDrop {
    node: Node,
    name: String,
    lease: i64,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let node = self.node.clone();
        let command = Command::LockCancel {
            name: std::mem::take(&mut self.name),
            lease: self.lease,
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = node.propose(command, node.deadline(None)).await;
            });
        }
    }
}

impl LockService {
    fn grant_response(&self, grant: Grant, revision: i64) -> pb::AcquireResponse {
        pb::AcquireResponse {
            header: Some(header(&self.node, revision)),
            token: grant.token,
            key: grant.key,
            holders: grant.holders.iter().map(holder_to_pb).collect(),
        }
    }
}

/// How a lock-table name reads in a message: elections (`#NAME`) say so.
fn display_name(name: &str) -> String {
    match name.strip_prefix(ELECTION_MARK) {
        Some(election) => format!("election {election:?}"),
        None => format!("lock {name:?}"),
    }
}

/// The grant of `lease` in lock `name` as the applied state shows it now
/// (the holder list may have moved on since the grant itself).
fn current_grant(node: &Node, name: &str, token: i64, key: Vec<u8>) -> Grant {
    let state = node.state();
    let holders = state
        .locks()
        .get(name)
        .map(|lock| lock.holders.clone())
        .unwrap_or_default();
    Grant {
        token,
        key,
        holders,
    }
}

/// Removes the place after a wait ran out; answers the grant instead if it
/// won the race.
async fn give_up(
    node: &Node,
    cmd: &AcquireCommand,
    waited: Duration,
    guard: &mut CancelOnDrop,
) -> Result<(Grant, i64), Status> {
    let cancel = Command::LockCancel {
        name: cmd.name.clone(),
        lease: cmd.lease,
    };
    let applied = node.propose(cancel, node.deadline(None)).await;
    let what = format!(
        "{} was not granted within {} ms",
        display_name(&cmd.name),
        waited.as_millis()
    );
    match applied {
        Ok(applied) => {
            guard.armed = false;
            match applied.response {
                Applied::LockCancel(CancelOutcome::Held(grant)) => Ok((grant, applied.revision)),
                _ => Err(Status::deadline_exceeded(format!(
                    "{what}; the queue place was removed"
                ))),
            }
        }
        Err(err) => Err(Status::deadline_exceeded(format!(
            "{what}; removing the queue place failed ({err}), it ends with the lease"
        ))),
    }
}

/// Proposes `propose` (an acquire or a campaign for the place `cmd`
/// describes) and waits until the place is granted: the grant and the
/// revision to answer at. The wait ends at `wait_timeout_ms` (0: none) or
/// shortly before the call's own deadline, whichever comes first; then the
/// place is removed and the answer is DEADLINE_EXCEEDED. A caller that goes
/// away while waiting also removes its place.
pub(crate) async fn wait_for_grant(
    node: &Node,
    cmd: &AcquireCommand,
    propose: Command,
    wait_timeout_ms: i64,
    call_timeout: Option<Duration>,
) -> Result<(Grant, i64), Status> {
    let started = Instant::now();
    // Checked: a far-off timeout from a client is simply no end.
    let wait_end = [
        (wait_timeout_ms > 0)
            .then(|| started.checked_add(Duration::from_millis(wait_timeout_ms as u64)))
            .flatten(),
        call_timeout.and_then(|t| started.checked_add(t.saturating_sub(CANCEL_MARGIN))),
    ]
    .into_iter()
    .flatten()
    .min();
    let mut guard = CancelOnDrop {
        node: node.clone(),
        name: cmd.name.clone(),
        lease: cmd.lease,
        armed: false,
    };
    loop {
        let mut wait = node.lock_waits().register(&cmd.name, cmd.lease);
        let propose_deadline = match wait_end {
            Some(end) => node.deadline(call_timeout).min(end.max(Instant::now())),
            None => node.deadline(None),
        };
        let applied = node.propose(propose.clone(), propose_deadline).await;
        let applied = match applied {
            Ok(applied) => applied,
            Err(NodeError::DeadlineExceeded(_)) if wait_end.is_some() => {
                // The acquire may or may not have queued: remove it.
                return give_up(node, cmd, started.elapsed(), &mut guard).await;
            }
            Err(err) => return Err(err.into()),
        };
        let key = match applied.response {
            Applied::LockAcquire(AcquireOutcome::Granted(grant)) => {
                return Ok((grant, applied.revision));
            }
            Applied::LockAcquire(AcquireOutcome::Queued { key, .. }) => key,
            Applied::Error(err) => return Err(err.into()),
            other => return Err(unexpected(&other)),
        };
        guard.armed = true;
        if cmd.try_only {
            // The lease already had a place in the queue (an earlier
            // acquire): a try does not wait, and leaves no place behind.
            return give_up(node, cmd, started.elapsed(), &mut guard).await;
        }
        let acquired_at = applied.index;
        let changed = loop {
            let received = match wait_end {
                Some(end) => match tokio::time::timeout_at(end, &mut wait.changed).await {
                    Ok(received) => received,
                    Err(_) => return give_up(node, cmd, started.elapsed(), &mut guard).await,
                },
                None => (&mut wait.changed).await,
            };
            let Ok((index, change)) = received else {
                return Err(Status::unavailable("member is shutting down"));
            };
            if index > acquired_at {
                break Some(change);
            }
            // A late notice about an earlier place of this lease (say its
            // previous release): wait again, and look at the state in case
            // the real change came in between.
            wait = node.lock_waits().register(&cmd.name, cmd.lease);
            let state = node.state();
            let Some(lock) = state.locks().get(&cmd.name) else {
                break None;
            };
            if let Some(holder) = lock.holders.iter().find(|h| h.lease == cmd.lease) {
                break Some(LockChange::Granted {
                    name: cmd.name.clone(),
                    lease: cmd.lease,
                    token: holder.token,
                });
            }
            if !lock.waiters.iter().any(|w| w.lease == cmd.lease) {
                break None;
            }
        };
        guard.armed = false;
        match changed {
            Some(LockChange::Granted { token, .. }) => {
                let revision = node.state().revision();
                return Ok((current_grant(node, &cmd.name, token, key), revision));
            }
            // The place is gone while the lease lives: another call with the
            // same lease gave it up (a retried acquire whose first attempt
            // timed out). Queue again.
            Some(LockChange::Left {
                reason: LeaveReason::Cancelled,
                ..
            }) => continue,
            None if node.state().leases().contains(cmd.lease) => continue,
            None => {
                return Err(Status::failed_precondition(format!(
                    "lease {} ended while waiting for {}; its queue place is gone",
                    cmd.lease,
                    display_name(&cmd.name)
                )));
            }
            Some(LockChange::Left { reason, .. }) => {
                let why = match reason {
                    LeaveReason::LeaseExpired => "expired",
                    LeaveReason::LeaseRevoked => "was revoked",
                    LeaveReason::Released | LeaveReason::Cancelled => "ended",
                };
                return Err(Status::failed_precondition(format!(
                    "lease {} {why} while waiting for {}; its queue place is gone",
                    cmd.lease,
                    display_name(&cmd.name)
                )));
            }
        }
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn acquire(
        &self,
        request: Request<pb::AcquireRequest>,
    ) -> Result<Response<pb::AcquireResponse>, Status> {
        let call_timeout = client_timeout(&request);
        let req = request.into_inner();
        let cmd = acquire_command(&req)?;
        let (grant, revision) = wait_for_grant(
            &self.node,
            &cmd,
            Command::LockAcquire(cmd.clone()),
            req.wait_timeout_ms,
            call_timeout,
        )
        .await?;
        Ok(Response::new(self.grant_response(grant, revision)))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let deadline = self.node.deadline(client_timeout(&request));
        let req = request.into_inner();
        check_name(&req.name, "release")?;
        if req.token <= 0 {
            return Err(Status::invalid_argument(format!(
                "release: token {} is not a fencing token (tokens are positive revisions)",
                req.token
            )));
        }
        let command = Command::LockRelease {
            name: req.name,
            token: req.token,
            lease: req.lease.max(0),
        };
        let applied = self.node.propose(command, deadline).await?;
        match applied.response {
            Applied::LockRelease { revision } => Ok(Response::new(pb::ReleaseResponse {
                header: Some(header(&self.node, revision)),
            })),
            Applied::Error(err) => Err(err.into()),
            other => Err(unexpected(&other)),
        }
    }

    async fn describe(
        &self,
        request: Request<pb::DescribeRequest>,
    ) -> Result<Response<pb::DescribeResponse>, Status> {
        let deadline = self.node.deadline(client_timeout(&request));
        let req = request.into_inner();
        check_name(&req.name, "describe")?;
        if !req.serializable {
            self.node.read_barrier(deadline).await?;
        }
        let state = self.node.state();
        let mut response = pb::DescribeResponse {
            header: Some(header(&self.node, state.revision())),
            ..Default::default()
        };
        if let Some(lock) = state.locks().get(&req.name) {
            response.holders = lock.holders.iter().map(holder_to_pb).collect();
            response.waiters = lock
                .waiters
                .iter()
                .map(|w| pb::LockWaiter {
                    lease: w.lease,
                    key: w.key.clone(),
                    mode: mode_to_pb(w.mode),
                })
                .collect();
            response.permits = lock.permits;
            response.delayed = lock.delay.is_some();
        }
        Ok(Response::new(response))
    }

    async fn check_token(
        &self,
        request: Request<pb::CheckTokenRequest>,
    ) -> Result<Response<pb::CheckTokenResponse>, Status> {
        let deadline = self.node.deadline(client_timeout(&request));
        let req = request.into_inner();
        check_name(&req.name, "check token")?;
        if !req.serializable {
            self.node.read_barrier(deadline).await?;
        }
        let state = self.node.state();
        Ok(Response::new(pb::CheckTokenResponse {
            header: Some(header(&self.node, state.revision())),
            current: state.locks().is_current(&req.name, req.token),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: &str) -> pb::AcquireRequest {
        pb::AcquireRequest {
            name: name.into(),
            lease: 7,
            ..Default::default()
        }
    }

    #[test]
    fn acquire_validation_names_what_is_wrong() {
        let cases: Vec<(pb::AcquireRequest, &str)> = vec![
            (req(""), "must not be empty"),
            (req(&"x".repeat(257)), "the limit is 256"),
            (req("a b"), "contains ' '"),
            (req("a@b"), "contains '@'"),
            (
                pb::AcquireRequest {
                    lease: 0,
                    ..req("a")
                },
                "not a lease id",
            ),
            (
                pb::AcquireRequest {
                    permits: Some(0),
                    ..req("a")
                },
                "at least 1",
            ),
            (
                pb::AcquireRequest {
                    permits: Some(3),
                    mode: pb::LockMode::Shared as i32,
                    ..req("a")
                },
                "no SHARED mode",
            ),
            (
                pb::AcquireRequest {
                    mode: 9,
                    ..req("a")
                },
                "unknown mode 9",
            ),
            (
                pb::AcquireRequest {
                    wait_timeout_ms: -1,
                    ..req("a")
                },
                "negative",
            ),
            (
                pb::AcquireRequest {
                    lock_delay_ms: 60_001,
                    ..req("a")
                },
                "limit of 60000",
            ),
        ];
        for (request, expected) in cases {
            let status = acquire_command(&request).expect_err(expected);
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{expected}");
            assert!(
                status.message().contains(expected),
                "{:?} should mention {expected:?}",
                status.message()
            );
        }
        let ok = acquire_command(&pb::AcquireRequest {
            permits: Some(3),
            lock_delay_ms: 500,
            ..req("jobs/nightly:v1.2")
        })
        .expect("valid");
        assert_eq!((ok.permits, ok.delay_ms), (3, 500));
    }
}

//! Holding a lock: [`LockOptions`], [`Session::lock`] /
//! [`Session::lock_with`], and [`LockGuard`], the grant, which releases
//! the lock when it is dropped.
//!
//! A lock is held by the session's lease, so a grant is only as good as the
//! session: once [`Session::lost`] fires, the guard's token must not be
//! used. An acquire that is cancelled or fails half-way leaves no queue
//! place behind: it is abandoned in the background.
//!
//! The server keeps one queue place per lease and lock, so a session takes
//! each lock name once at a time: a second acquire of a name the session
//! holds would only find the same grant, and releasing one guard would
//! release the other's lock. The session's *claims* refuse that, and a
//! name is only given back once its release (or abandon) has been sent.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tonic::{Code, Status};

use crate::lock::ceil_millis;
use crate::pb::{AcquireRequest, LockHolder, LockMode};
use crate::{Client, Error, LostReason, Session};

/// How to acquire a lock with [`Session::lock_with`].
///
/// Build it with `..LockOptions::default()` or the setters, so that fields
/// added later do not break the code:
///
/// ```
/// # use std::time::Duration;
/// # use fenced_client::LockOptions;
/// let options = LockOptions {
///     wait_timeout: Some(Duration::from_secs(5)),
///     ..LockOptions::default()
/// };
/// assert_eq!(options, LockOptions::default().wait_timeout(Duration::from_secs(5)));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockOptions {
    /// Exclusive (the default) or shared. Shared holders are granted
    /// together, as long as no exclusive holder or earlier exclusive waiter
    /// is in the way.
    pub mode: LockMode,
    /// `None` or 1: a readers-writer lock. N > 1: a semaphore of N exclusive
    /// holders. Everyone acquiring one name must agree on it while the lock
    /// is in use.
    pub permits: Option<u32>,
    /// How long to wait for the grant; `None` waits until it comes (or the
    /// session is lost). `Some(Duration::ZERO)` is the same as `try_only`.
    /// A wait that ends first is `DEADLINE_EXCEEDED`.
    pub wait_timeout: Option<Duration>,
    /// Do not queue: `DEADLINE_EXCEEDED` at once unless granted now.
    pub try_only: bool,
    /// If the session's lease *expires* while holding the lock, nobody gets
    /// the lock for this long after (Chubby's lock-delay), giving a holder
    /// that lost its lease time to notice before the next one writes. Not
    /// applied on a release or a revoke.
    pub lock_delay: Option<Duration>,
}

impl LockOptions {
    /// Exclusive, waiting as long as it takes: the same as `default()`.
    pub fn new() -> Self {
        LockOptions::default()
    }

    /// Acquire in shared (reader) mode.
    pub fn shared(mut self) -> Self {
        self.mode = LockMode::Shared;
        self
    }

    /// A semaphore with `permits` holders.
    pub fn permits(mut self, permits: u32) -> Self {
        self.permits = Some(permits);
        self
    }

    /// Wait at most `timeout` for the grant.
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.wait_timeout = Some(timeout);
        self
    }

    /// Do not queue; fail unless granted at once.
    pub fn try_only(mut self) -> Self {
        self.try_only = true;
        self
    }

    /// Keep the lock unavailable for `delay` after this holder's lease expires.
    pub fn lock_delay(mut self, delay: Duration) -> Self {
        self.lock_delay = Some(delay);
        self
    }

    /// The request that acquires lock `name` for `lease` with these options.
    ///
    /// Durations are rounded *up* to whole milliseconds, so a tiny wait
    /// never becomes 0 (which the server reads as "no limit").
    pub fn to_request(&self, name: &str, lease: i64) -> AcquireRequest {
        let try_only = self.try_only || self.wait_timeout == Some(Duration::ZERO);
        AcquireRequest {
            name: name.to_owned(),
            lease,
            mode: self.mode.into(),
            permits: self.permits,
            wait_timeout_ms: match self.wait_timeout {
                Some(wait) if !try_only => ceil_millis(wait),
                _ => 0,
            },
            try_only,
            lock_delay_ms: self.lock_delay.map_or(0, ceil_millis),
        }
    }
}

/// A lock held by a [`Session`]'s lease.
///
/// The lock stays held until [`LockGuard::release`], until the guard is
/// dropped (which releases in the background, when a Tokio runtime is
/// there to do it), or until the session's lease ends. Watch
/// [`Session::lost`]: once it fires, the grant may have ended without this
/// guard knowing, and [`LockGuard::token`] must not be used any more.
#[derive(Debug)]
pub struct LockGuard {
    /// For the release; shares the session's connections.
    client: Client,
    name: String,
    lease: i64,
    token: i64,
    key: Vec<u8>,
    holders: Vec<LockHolder>,
    /// The session's claim on `name`; taken by the release (or by the
    /// task `Drop` spawns for it), so it is released only once.
    claim: Option<Claim>,
}

/// The lock names a session holds or is acquiring, and (as
/// `" election NAME"`) the elections it leads or campaigns in.
pub(crate) type Claims = Arc<Mutex<HashSet<String>>>;

/// One name among a session's claims; dropping it gives the name back.
#[derive(Debug)]
pub(crate) struct Claim {
    claims: Claims,
    name: String,
}

impl LockGuard {
    /// The fencing token of this grant: the revision at which it committed.
    /// It is larger than every token this lock had before; pass it to the
    /// resource you write to, so it can refuse a holder that is out of date.
    pub fn token(&self) -> i64 {
        self.token
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key this grant wrote (`__fenced/lock/NAME/@LEASE`).
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The lease holding the lock: the session's.
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// Every holder of the lock at the time of this grant, this one included
    /// (several for a shared lock or a semaphore).
    pub fn holders(&self) -> &[LockHolder] {
        &self.holders
    }

    /// Releases the lock. `FAILED_PRECONDITION` means the grant had already
    /// ended (the lease expired or was revoked) — or, after a retry, that the
    /// first attempt's release went through and its answer was lost.
    pub async fn release(mut self) -> Result<(), Error> {
        let claim = self.claim.take();
        let released = self
            .client
            .lock_release(self.name.clone(), self.token, self.lease)
            .await;
        drop(claim);
        released.map(drop)
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let Some(claim) = self.claim.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Nothing can send the release; the grant ends with the lease.
            return;
        };
        let client = self.client.clone();
        let (name, token, lease) = (std::mem::take(&mut self.name), self.token, self.lease);
        runtime.spawn(async move {
            if let Err(err) = client.lock_release(name.clone(), token, lease).await {
                tracing::debug!(lock = %name, token, cause = %err, "release on drop failed");
            }
            drop(claim);
        });
    }
}

impl Claim {
    /// Claims lock `name`, unless the session already holds or acquires it.
    fn take(claims: &Claims, name: &str) -> Result<Claim, Error> {
        Claim::take_key(claims, name.to_owned(), || {
            format!(
                "this session already holds or is acquiring lock {name:?}; a session \
                 takes each lock once at a time"
            )
        })
    }

    /// Claims election `name`, unless the session already leads it or
    /// campaigns in it. Elections and locks are separate namespaces, so the
    /// claim's key starts with a space, which no name may contain.
    pub(crate) fn take_election(claims: &Claims, name: &str) -> Result<Claim, Error> {
        Claim::take_key(claims, format!(" election {name}"), || {
            format!(
                "this session already leads or campaigns in election {name:?}; a \
                 session campaigns once at a time in each election"
            )
        })
    }

    fn take_key(
        claims: &Claims,
        key: String,
        refusal: impl FnOnce() -> String,
    ) -> Result<Claim, Error> {
        let mut names = claims.lock().unwrap_or_else(PoisonError::into_inner);
        if !names.insert(key.clone()) {
            return Err(Status::failed_precondition(refusal()).into());
        }
        Ok(Claim {
            claims: claims.clone(),
            name: key,
        })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut names = self.claims.lock().unwrap_or_else(PoisonError::into_inner);
        names.remove(&self.name);
    }
}

impl Session {
    /// Acquires lock `name` exclusively, waiting as long as it takes; see
    /// [`Session::lock_with`].
    pub async fn lock(&self, name: impl Into<String>) -> Result<LockGuard, Error> {
        self.lock_with(name, LockOptions::default()).await
    }

    /// Acquires lock `name` with this session's lease.
    ///
    /// Fails with the server's code: `DEADLINE_EXCEEDED` when the wait
    /// timeout (or `try_only`) ends first, `FAILED_PRECONDITION` when the
    /// lease ended while waiting, `INVALID_ARGUMENT` for a bad name or
    /// options. It also fails with `FAILED_PRECONDITION` as soon as the
    /// session is [lost](Session::lost), without waiting for the server.
    ///
    /// Cancellation-safe: when this future is dropped before the answer, or
    /// fails in a way that may have left the lease queued, a background
    /// task abandons the queue place (an acquire with the same lease and a
    /// 1 ms wait, which removes it, or releases what it was granted).
    ///
    /// A session takes each lock name once at a time: acquiring a name it
    /// holds, or is still acquiring or releasing, fails at once with
    /// `FAILED_PRECONDITION`.
    pub async fn lock_with(
        &self,
        name: impl Into<String>,
        options: LockOptions,
    ) -> Result<LockGuard, Error> {
        let name = name.into();
        let request = options.to_request(&name, self.lease_id());
        let lost = self.lost();
        if let Some(reason) = lost.reason() {
            return Err(lost_while_waiting(&name, &reason));
        }
        let claim = Claim::take(self.claims(), &name)?;
        let mut abandon = Abandon {
            client: self.client().clone(),
            request: Some(request.clone()),
            claim: Some(claim),
        };
        let result = tokio::select! {
            result = self.client().lock_acquire(request) => result,
            // The place stays queued: `abandon` removes it.
            reason = lost.wait() => return Err(lost_while_waiting(&name, &reason)),
        };
        match result {
            Ok(response) => {
                abandon.request = None;
                let guard = LockGuard {
                    client: self.client().clone(),
                    name,
                    lease: self.lease_id(),
                    token: response.token,
                    key: response.key,
                    holders: response.holders,
                    claim: abandon.claim.take(),
                };
                match lost.reason() {
                    // Granted, but the session can no longer vouch for the
                    // lease: dropping the guard releases what it got.
                    Some(reason) => Err(lost_while_waiting(&guard.name, &reason)),
                    None => Ok(guard),
                }
            }
            Err(err) => {
                if !may_still_be_queued(&err) {
                    abandon.request = None;
                }
                Err(err)
            }
        }
    }
}

/// Abandons the queue place of an acquire when dropped while still armed
/// (`request` is `Some`): the acquire future was dropped, or failed in a way
/// that may have left the lease queued.
#[derive(Debug)]
struct Abandon {
    client: Client,
    request: Option<AcquireRequest>,
    /// The name's claim, held until the abandon has been sent (or handed
    /// to the guard of a successful acquire).
    claim: Option<Claim>,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        let Some(mut request) = self.request.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = self.client.clone();
        let claim = self.claim.take();
        runtime.spawn(async move {
            // The same lease finds the same place; a wait that ends at once
            // removes it. If the place was granted meanwhile, give it back.
            request.try_only = false;
            request.wait_timeout_ms = 1;
            let (name, lease) = (request.name.clone(), request.lease);
            if let Ok(response) = client.lock_acquire(request).await {
                let _ = client.lock_release(name, response.token, lease).await;
            }
            drop(claim);
        });
    }
}

/// Whether an acquire that failed with `err` may have left the lease queued
/// on the server. The server removes the place itself when it answers a
/// timeout, a lease that ended or a bad request.
pub(crate) fn may_still_be_queued(err: &Error) -> bool {
    !matches!(
        err.code(),
        Code::InvalidArgument
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::OutOfRange
    )
}

fn lost_while_waiting(name: &str, reason: &LostReason) -> Error {
    Status::failed_precondition(format!(
        "session lost while acquiring lock {name:?}: {reason}"
    ))
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn default_options_wait_forever_exclusively() {
        let request = LockOptions::default().to_request("jobs/nightly", 7);
        assert_eq!(
            request,
            AcquireRequest {
                name: "jobs/nightly".to_owned(),
                lease: 7,
                mode: LockMode::Exclusive.into(),
                permits: None,
                wait_timeout_ms: 0,
                try_only: false,
                lock_delay_ms: 0,
            }
        );
    }

    #[test]
    fn options_become_request_fields() {
        let options = LockOptions::new()
            .shared()
            .permits(3)
            .wait_timeout(Duration::from_micros(1500))
            .lock_delay(Duration::from_secs(2));
        let request = options.to_request("db", 9);
        assert_eq!(request.mode(), LockMode::Shared);
        assert_eq!(request.permits, Some(3));
        // Rounded up: 1.5 ms must not become 1 ms, and a 1 ns wait must not
        // become 0 (no limit).
        assert_eq!(request.wait_timeout_ms, 2);
        assert_eq!(request.lock_delay_ms, 2000);
        let tiny = LockOptions::new().wait_timeout(Duration::from_nanos(1));
        assert_eq!(tiny.to_request("db", 9).wait_timeout_ms, 1);
    }

    #[test]
    fn a_zero_wait_is_a_try() {
        for options in [
            LockOptions::new().try_only(),
            LockOptions::new().wait_timeout(Duration::ZERO),
            LockOptions::new().try_only().wait_timeout(SECOND),
        ] {
            let request = options.to_request("db", 1);
            assert!(request.try_only, "{options:?}");
            assert_eq!(request.wait_timeout_ms, 0, "{options:?}");
        }
    }

    #[test]
    fn a_name_is_claimed_once_until_given_back() {
        let claims = Claims::default();
        let claim = Claim::take(&claims, "db").unwrap();
        let err = Claim::take(&claims, "db").unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        let other = Claim::take(&claims, "jobs").unwrap();
        // An election of the same name is another namespace.
        let election = Claim::take_election(&claims, "db").unwrap();
        let err = Claim::take_election(&claims, "db").unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        drop(claim);
        let again = Claim::take(&claims, "db").unwrap();
        drop((other, again, election));
        assert!(claims.lock().unwrap().is_empty());
    }

    #[test]
    fn errors_that_leave_no_queue_place() {
        let queued = |status: Status| may_still_be_queued(&Error::from(status));
        assert!(!queued(Status::deadline_exceeded("waited 3s")));
        assert!(!queued(Status::failed_precondition("lease 7 expired")));
        assert!(!queued(Status::invalid_argument("bad name")));
        assert!(queued(Status::unavailable("no leader")));
        assert!(queued(Status::cancelled("stream reset")));
    }
}

//! The `Lock` RPCs on [`Client`].
//!
//! An acquire is a long poll: the server answers once the lock is granted or
//! the wait ends, so its call deadline is the wait plus an ordinary request
//! timeout. The server keeps one queue place per lease and an acquire with
//! the same lease finds it again, which is what makes retrying an acquire
//! safe. Holding a lock (a lease kept alive, a guard that releases) is in
//! `guard`.

use std::time::Duration;

use tokio::time::Instant;
use tonic::Code;

use crate::client::with_timeout;
use crate::pb::lock_client::LockClient;
use crate::pb::{
    AcquireRequest, AcquireResponse, CheckTokenRequest, CheckTokenResponse, DescribeRequest,
    DescribeResponse, ReleaseRequest, ReleaseResponse,
};
use crate::{Client, Error};

/// The call deadline of an acquire that waits "forever" (`wait_timeout_ms`
/// 0, which the server reads as "until the call's deadline"). A year is
/// forever for a lock wait, and stays far inside what `Instant` arithmetic,
/// Tokio's timer and the gRPC timeout header can express.
const WAIT_FOREVER: Duration = Duration::from_secs(365 * 24 * 60 * 60);

impl Client {
    /// Sends an acquire and waits for the grant.
    ///
    /// The call deadline is the request's wait plus this client's request
    /// timeout (for `try_only`, the request timeout alone; for
    /// `wait_timeout_ms` 0, practically forever). Retried on `UNAVAILABLE`,
    /// `ABORTED` and broken connections like every request, and also on a
    /// `DEADLINE_EXCEEDED` that comes before the wait is over (the member
    /// could not tell whether its proposal committed); each retry asks for
    /// what is left of the wait, and finds the lease's queue place again.
    ///
    /// Prefer [`Session::lock_with`](crate::Session::lock_with), which supplies the lease and keeps it
    /// alive while waiting.
    pub async fn lock_acquire(&self, request: AcquireRequest) -> Result<AcquireResponse, Error> {
        let config = self.config();
        let timing = WaitTiming::new(&request, config.request_timeout, config.attempt_timeout);
        let started = Instant::now();
        let call_deadline = started.checked_add(timing.total);
        let wait_deadline = timing.wait.map(|wait| started + wait);
        loop {
            let left = call_deadline.map_or(timing.total, |end| {
                end.saturating_duration_since(Instant::now())
            });
            let result = self
                .call_within(left, timing.attempt_cap, |channel, timeout| {
                    let mut request = request.clone();
                    if let Some(deadline) = wait_deadline {
                        let left = deadline.saturating_duration_since(Instant::now());
                        request.wait_timeout_ms = ceil_millis(left).max(1);
                    }
                    let request = with_timeout(request, timeout);
                    async move { LockClient::new(channel).acquire(request).await }
                })
                .await;
            // A member answers DEADLINE_EXCEEDED before the wait is over when
            // the outcome of its proposal became unknown (the leader it
            // forwarded the acquire to lost leadership). An acquire with the
            // same lease finds its queue place again, so it is asked again
            // rather than failed; a write of any other kind is not.
            let now = Instant::now();
            let unknown_outcome = matches!(&result, Err(err) if err.code() == Code::DeadlineExceeded)
                && call_deadline.is_none_or(|end| now < end)
                && wait_deadline.is_none_or(|end| now < end);
            if !unknown_outcome {
                return result;
            }
            tokio::time::sleep(config.backoff_initial).await;
        }
    }

    /// Releases the grant of lock `name` with `token`. `lease` is needed only
    /// when several shared holders were granted with one token; pass the
    /// holder's lease (or 0).
    pub async fn lock_release(
        &self,
        name: impl Into<String>,
        token: i64,
        lease: i64,
    ) -> Result<ReleaseResponse, Error> {
        let request = ReleaseRequest {
            name: name.into(),
            token,
            lease,
        };
        self.call(|channel, timeout| {
            let request = with_timeout(request.clone(), timeout);
            async move { LockClient::new(channel).release(request).await }
        })
        .await
    }

    /// The holders and waiters of lock `name`, in order (a linearizable read).
    pub async fn lock_describe(&self, name: impl Into<String>) -> Result<DescribeResponse, Error> {
        self.lock_describe_with(DescribeRequest {
            name: name.into(),
            serializable: false,
        })
        .await
    }

    /// Sends a full [`DescribeRequest`], for a serializable read.
    pub async fn lock_describe_with(
        &self,
        request: DescribeRequest,
    ) -> Result<DescribeResponse, Error> {
        self.call(|channel, timeout| {
            let request = with_timeout(request.clone(), timeout);
            async move { LockClient::new(channel).describe(request).await }
        })
        .await
    }

    /// Whether `token` is a current holder's token of lock `name` (a
    /// linearizable read).
    pub async fn lock_check_token(
        &self,
        name: impl Into<String>,
        token: i64,
    ) -> Result<CheckTokenResponse, Error> {
        self.lock_check_token_with(CheckTokenRequest {
            name: name.into(),
            token,
            serializable: false,
        })
        .await
    }

    /// Sends a full [`CheckTokenRequest`], for a serializable read.
    pub async fn lock_check_token_with(
        &self,
        request: CheckTokenRequest,
    ) -> Result<CheckTokenResponse, Error> {
        self.call(|channel, timeout| {
            let request = with_timeout(request.clone(), timeout);
            async move { LockClient::new(channel).check_token(request).await }
        })
        .await
    }
}

/// The time limits of one call that waits on the server: a lock acquire or
/// an election campaign.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WaitTiming {
    /// The whole call, retries included.
    pub(crate) total: Duration,
    /// The cap on one attempt: the configured attempt timeout plus the wait,
    /// so a long wait is not mistaken for a silent member. `None` for an
    /// endless wait, where only the connection's keepalive pings can tell a
    /// frozen member from a lock that is simply taken.
    pub(crate) attempt_cap: Option<Duration>,
    /// The wait the server is asked for, when it is finite and not
    /// `try_only`; retries ask for what is left of it.
    pub(crate) wait: Option<Duration>,
}

impl WaitTiming {
    fn new(
        request: &AcquireRequest,
        request_timeout: Duration,
        attempt_timeout: Option<Duration>,
    ) -> Self {
        WaitTiming::for_wait(
            request.try_only,
            request.wait_timeout_ms,
            request_timeout,
            attempt_timeout,
        )
    }

    /// The limits of a call that asks the server to wait `wait_timeout_ms`
    /// (0: until the call's deadline), or not at all when `try_only`.
    pub(crate) fn for_wait(
        try_only: bool,
        wait_timeout_ms: i64,
        request_timeout: Duration,
        attempt_timeout: Option<Duration>,
    ) -> Self {
        if try_only {
            return WaitTiming {
                total: request_timeout,
                attempt_cap: attempt_timeout,
                wait: None,
            };
        }
        match u64::try_from(wait_timeout_ms) {
            Ok(ms) if ms > 0 => {
                let wait = Duration::from_millis(ms);
                WaitTiming {
                    total: wait + request_timeout,
                    attempt_cap: attempt_timeout.map(|cap| cap + wait),
                    wait: Some(wait),
                }
            }
            // 0 (or a negative value, which the server rejects): no limit
            // but the call's deadline.
            _ => WaitTiming {
                total: WAIT_FOREVER,
                attempt_cap: None,
                wait: None,
            },
        }
    }
}

/// `duration` in whole milliseconds, rounded up, saturating.
pub(crate) fn ceil_millis(duration: Duration) -> i64 {
    let ms = duration.as_nanos().div_ceil(1_000_000);
    i64::try_from(ms).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LockOptions;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn acquire_deadline_is_wait_plus_request_timeout() {
        let five = 5 * SECOND;
        let finite = LockOptions::new()
            .wait_timeout(3 * SECOND)
            .to_request("a", 1);
        assert_eq!(
            WaitTiming::new(&finite, five, Some(SECOND)),
            WaitTiming {
                total: 8 * SECOND,
                attempt_cap: Some(4 * SECOND),
                wait: Some(3 * SECOND),
            }
        );
        let forever = LockOptions::new().to_request("a", 1);
        assert_eq!(
            WaitTiming::new(&forever, five, Some(SECOND)),
            WaitTiming {
                total: WAIT_FOREVER,
                attempt_cap: None,
                wait: None,
            }
        );
        let try_only = LockOptions::new().try_only().to_request("a", 1);
        assert_eq!(
            WaitTiming::new(&try_only, five, None),
            WaitTiming {
                total: five,
                attempt_cap: None,
                wait: None,
            }
        );
    }
}

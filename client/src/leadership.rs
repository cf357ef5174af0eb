//! Leading an election: [`Session::campaign`] (and
//! [`Client::campaign`], which brings its own session) give a
//! [`Leadership`], which resigns when it is dropped.
//!
//! A candidate is held by the session's lease, so leadership is only as
//! good as the session: once [`Leadership::lost`] fires, the leader may
//! have been replaced without this handle knowing, and its token must not
//! be used. A campaign that is cancelled or fails half-way leaves no
//! candidacy behind: it is abandoned in the background, the way a lock
//! acquire is (see `guard`).
//!
//! The server keeps one candidacy per lease and election, so a session
//! campaigns once at a time in each election; the session's claims refuse
//! a second campaign while the first one waits or leads.

use std::time::Duration;

use tonic::Status;

use crate::guard::{Claim, may_still_be_queued};
use crate::lock::ceil_millis;
use crate::pb::{CampaignRequest, LeaderKey};
use crate::{Client, Error, Lost, LostReason, Session};

/// Leadership of an election, held by a [`Session`]'s lease.
///
/// It lasts until [`Leadership::resign`], until the handle is dropped
/// (which resigns in the background, when a Tokio runtime is there to do
/// it), or until the session's lease ends. Watch [`Leadership::lost`]: once
/// it fires, stop acting as the leader.
#[derive(Debug)]
pub struct Leadership {
    /// For proclaim and resign; shares the session's connections.
    client: Client,
    /// Names this leadership to the server.
    leader: LeaderKey,
    /// The session's loss signal.
    lost: Lost,
    /// The session's claim on the election; taken by the resign (or by the
    /// task `Drop` spawns for it), so the resign is sent once.
    claim: Option<Claim>,
    /// The session this leadership made for itself ([`Client::campaign`]),
    /// closed after the resign. `None` for [`Session::campaign`], whose
    /// session belongs to the caller.
    own_session: Option<Session>,
}

impl Leadership {
    /// The election's name.
    pub fn name(&self) -> &str {
        &self.leader.name
    }

    /// The candidate key (`__fenced/election/NAME/@LEASE`).
    pub fn key(&self) -> &[u8] {
        &self.leader.key
    }

    /// The fencing token of this leadership: the revision at which it was
    /// elected, larger than every earlier leader's. Pass it to whatever the
    /// leader writes to, so that a write from an older leader is refused.
    pub fn token(&self) -> i64 {
        self.leader.token
    }

    /// The lease holding the leadership: the session's.
    pub fn lease(&self) -> i64 {
        self.leader.lease
    }

    /// The leader key, as `Proclaim` and `Resign` take it.
    pub fn leader_key(&self) -> &LeaderKey {
        &self.leader
    }

    /// A handle that resolves when the session holding the leadership is
    /// lost (see [`Session::lost`]); from then on this process must not act
    /// as the leader.
    pub fn lost(&self) -> Lost {
        self.lost.clone()
    }

    /// Whether the session holding the leadership is lost.
    pub fn is_lost(&self) -> bool {
        self.lost.is_lost()
    }

    /// Publishes `value` as the leader's value; observers see it at the
    /// revision it commits. `FAILED_PRECONDITION` when this is no longer the
    /// leader, or (without asking the server) when the session is lost.
    pub async fn proclaim(&self, value: impl Into<Vec<u8>>) -> Result<(), Error> {
        if let Some(reason) = self.lost.reason() {
            return Err(lost_leadership(self.name(), &reason));
        }
        self.client
            .election_proclaim(self.leader.clone(), value)
            .await
            .map(drop)
    }

    /// Gives up the leadership; the next candidate, if any, is elected in
    /// the same revision. `FAILED_PRECONDITION` means the leadership had
    /// already ended (the lease expired or was revoked) — or, after a retry,
    /// that the first attempt's resign went through and its answer was
    /// lost. A session made by [`Client::campaign`] is closed after the
    /// resign, whatever its outcome.
    pub async fn resign(mut self) -> Result<(), Error> {
        let claim = self.claim.take();
        let resigned = self.client.election_resign(self.leader.clone()).await;
        drop(claim);
        let closed = match self.own_session.take() {
            Some(session) => session.close().await,
            None => Ok(()),
        };
        resigned.map(drop).and(closed)
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        let claim = self.claim.take();
        let session = self.own_session.take();
        if claim.is_none() && session.is_none() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Nothing can send the resign; the leadership ends with the
            // lease.
            return;
        };
        let client = self.client.clone();
        let leader = self.leader.clone();
        runtime.spawn(async move {
            if claim.is_some()
                && let Err(err) = client.election_resign(leader.clone()).await
            {
                tracing::debug!(
                    election = %leader.name,
                    token = leader.token,
                    cause = %err,
                    "resign on drop failed"
                );
            }
            drop(claim);
            if let Some(session) = session {
                let _ = session.close().await;
            }
        });
    }
}

impl Session {
    /// Campaigns in election `name` with this session's lease, waiting as
    /// long as it takes, and publishes `value` once elected.
    ///
    /// Candidates are elected in the order they campaigned. Fails with the
    /// server's code (`FAILED_PRECONDITION` when the lease ended while
    /// waiting, `INVALID_ARGUMENT` for a bad name), and with
    /// `FAILED_PRECONDITION` as soon as the session is
    /// [lost](Session::lost), without waiting for the server.
    ///
    /// Cancellation-safe: when this future is dropped before the answer, or
    /// fails in a way that may have left the candidacy queued, a background
    /// task withdraws it (a campaign with the same lease and a 1 ms wait,
    /// which removes it, or a resign of what it was granted).
    ///
    /// A session campaigns once at a time in each election: a second
    /// campaign while the first waits or leads fails at once with
    /// `FAILED_PRECONDITION`.
    pub async fn campaign(
        &self,
        name: impl Into<String>,
        value: impl Into<Vec<u8>>,
    ) -> Result<Leadership, Error> {
        self.campaign_inner(name.into(), value.into(), None).await
    }

    /// Like [`Session::campaign`], but gives up after `wait`: then
    /// `DEADLINE_EXCEEDED`, and the candidacy is removed.
    pub async fn campaign_with_timeout(
        &self,
        name: impl Into<String>,
        value: impl Into<Vec<u8>>,
        wait: Duration,
    ) -> Result<Leadership, Error> {
        self.campaign_inner(name.into(), value.into(), Some(wait))
            .await
    }

    async fn campaign_inner(
        &self,
        name: String,
        value: Vec<u8>,
        wait: Option<Duration>,
    ) -> Result<Leadership, Error> {
        let request = campaign_request(&name, self.lease_id(), value, wait);
        let lost = self.lost();
        if let Some(reason) = lost.reason() {
            return Err(lost_leadership(&name, &reason));
        }
        let claim = Claim::take_election(self.claims(), &name)?;
        let mut withdraw = Withdraw {
            client: self.client().clone(),
            request: Some(request.clone()),
            claim: Some(claim),
        };
        let result = tokio::select! {
            result = self.client().election_campaign(request) => result,
            // The candidacy stays queued: `withdraw` removes it.
            reason = lost.wait() => return Err(lost_leadership(&name, &reason)),
        };
        let response = match result {
            Ok(response) => response,
            Err(err) => {
                if !may_still_be_queued(&err) {
                    withdraw.request = None;
                }
                return Err(err);
            }
        };
        // Without a leader key nothing can be resigned by name; `withdraw`
        // stays armed and removes the candidacy through its lease.
        let Some(leader) = response.leader else {
            return Err(Status::internal(format!(
                "the server elected a leader of {name:?} without naming its key"
            ))
            .into());
        };
        withdraw.request = None;
        let leadership = Leadership {
            client: self.client().clone(),
            leader,
            lost: lost.clone(),
            claim: withdraw.claim.take(),
            own_session: None,
        };
        match lost.reason() {
            // Elected, but the session can no longer vouch for the lease:
            // dropping the leadership resigns what it got.
            Some(reason) => Err(lost_leadership(&name, &reason)),
            None => Ok(leadership),
        }
    }
}

impl Client {
    /// Campaigns in election `name` with a session of its own (a lease of
    /// `ttl`, whole seconds, kept alive): a shorthand for
    /// [`Client::session`] then [`Session::campaign`]. The session lives as
    /// long as the [`Leadership`]: [`Leadership::resign`] (or dropping it)
    /// closes it, revoking the lease. When the campaign fails, the session
    /// is closed before the error is returned.
    pub async fn campaign(
        &self,
        name: impl Into<String>,
        value: impl Into<Vec<u8>>,
        ttl: Duration,
    ) -> Result<Leadership, Error> {
        let session = self.session(ttl).await?;
        match session.campaign(name, value).await {
            Ok(mut leadership) => {
                leadership.own_session = Some(session);
                Ok(leadership)
            }
            Err(err) => {
                let _ = session.close().await;
                Err(err)
            }
        }
    }
}

/// The campaign request for `name` with `lease`. A wait is rounded *up* to
/// whole milliseconds, so a tiny one never becomes 0 (no limit).
fn campaign_request(
    name: &str,
    lease: i64,
    value: Vec<u8>,
    wait: Option<Duration>,
) -> CampaignRequest {
    CampaignRequest {
        name: name.to_owned(),
        lease,
        value,
        wait_timeout_ms: wait.map_or(0, |wait| ceil_millis(wait).max(1)),
    }
}

/// Withdraws the candidacy of a campaign when dropped while still armed
/// (`request` is `Some`): the campaign future was dropped, or failed in a
/// way that may have left the lease queued.
#[derive(Debug)]
struct Withdraw {
    client: Client,
    request: Option<CampaignRequest>,
    /// The election's claim, held until the withdrawal has been sent (or
    /// handed to the leadership of a successful campaign).
    claim: Option<Claim>,
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        let Some(request) = self.request.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = self.client.clone();
        let claim = self.claim.take();
        runtime.spawn(async move {
            // A resign with token 0 withdraws whatever the lease has in the
            // election: its place in the queue, or the leadership it won
            // meanwhile, or nothing.
            let withdraw = LeaderKey {
                name: request.name,
                key: Vec::new(),
                token: 0,
                lease: request.lease,
            };
            let _ = client.election_resign(withdraw).await;
            drop(claim);
        });
    }
}

fn lost_leadership(name: &str, reason: &LostReason) -> Error {
    Status::failed_precondition(format!("session lost in election {name:?}: {reason}")).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn campaign_waits_are_whole_milliseconds_rounded_up() {
        let forever = campaign_request("db", 7, b"a".to_vec(), None);
        assert_eq!(
            forever,
            CampaignRequest {
                name: "db".to_owned(),
                lease: 7,
                value: b"a".to_vec(),
                wait_timeout_ms: 0,
            }
        );
        let wait = |wait| campaign_request("db", 7, Vec::new(), Some(wait)).wait_timeout_ms;
        assert_eq!(wait(Duration::from_micros(1500)), 2);
        assert_eq!(wait(Duration::from_nanos(1)), 1);
        // A zero wait is not "no limit".
        assert_eq!(wait(Duration::ZERO), 1);
        assert_eq!(wait(Duration::from_secs(3)), 3000);
    }
}

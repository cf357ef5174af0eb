//! The `Election` RPCs on [`Client`], and [`LeaderInfo`], who leads an
//! election.
//!
//! A campaign is a long poll like a lock acquire: the server answers once
//! the lease leads the election, so its call deadline is the wait plus an
//! ordinary request timeout, and a retry with the same lease finds the same
//! place in the queue. Holding leadership (a session, proclaim, resign, the
//! lost signal) is in `leadership`; following an election is in `observe`.

use tokio::time::Instant;
use tonic::Code;

use crate::client::with_timeout;
use crate::lock::{WaitTiming, ceil_millis};
use crate::pb::election_client::ElectionClient;
use crate::pb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use crate::{Client, Error};

/// The leader of an election and the value it published.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct LeaderInfo {
    /// The election's name.
    pub name: String,
    /// The leader's candidate key (`__fenced/election/NAME/@LEASE`).
    pub key: Vec<u8>,
    /// The revision at which this leader was elected. It is larger than the
    /// token of every earlier leader of the election, so it serves as a
    /// fencing token.
    pub token: i64,
    /// The leader's lease.
    pub lease: i64,
    /// The value the leader published (at its election, or by its last
    /// proclaim).
    pub value: Vec<u8>,
}

impl LeaderInfo {
    /// The leader named by `key`, publishing `value`.
    pub fn new(key: LeaderKey, value: Vec<u8>) -> Self {
        LeaderInfo {
            name: key.name,
            key: key.key,
            token: key.token,
            lease: key.lease,
            value,
        }
    }

    /// The key that names this leadership in `Proclaim` and `Resign`.
    pub fn leader_key(&self) -> LeaderKey {
        LeaderKey {
            name: self.name.clone(),
            key: self.key.clone(),
            token: self.token,
            lease: self.lease,
        }
    }
}

impl Client {
    /// The current leader of election `name`, or `None` when it has none
    /// (a linearizable read).
    pub async fn leader(&self, name: impl Into<String>) -> Result<Option<LeaderInfo>, Error> {
        self.leader_with(LeaderRequest {
            name: name.into(),
            serializable: false,
        })
        .await
    }

    /// Sends a full [`LeaderRequest`], for a serializable read. The
    /// server's `NOT_FOUND` ("no leader") is `Ok(None)`.
    pub async fn leader_with(&self, request: LeaderRequest) -> Result<Option<LeaderInfo>, Error> {
        match self.election_leader(request).await {
            Ok(LeaderResponse {
                leader: Some(leader),
                value,
                ..
            }) => Ok(Some(LeaderInfo::new(leader, value))),
            // An answer without a leader key says the same as NOT_FOUND.
            Ok(LeaderResponse { leader: None, .. }) => Ok(None),
            Err(err) if err.code() == Code::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// The raw `Leader` call: `NOT_FOUND` when the election has no leader.
    pub async fn election_leader(&self, request: LeaderRequest) -> Result<LeaderResponse, Error> {
        self.call(|channel, timeout| {
            let request = with_timeout(request.clone(), timeout);
            async move { ElectionClient::new(channel).leader(request).await }
        })
        .await
    }

    /// Sends a campaign and waits until the request's lease leads the
    /// election.
    ///
    /// The call deadline is the request's wait plus this client's request
    /// timeout (for `wait_timeout_ms` 0, practically forever). Retried on
    /// `UNAVAILABLE`, `ABORTED` and broken connections; each retry asks for
    /// what is left of the wait and finds the lease's place again.
    ///
    /// Prefer [`Session::campaign`](crate::Session::campaign), which supplies
    /// the lease, keeps it alive while waiting and gives a
    /// [`Leadership`](crate::Leadership).
    pub async fn election_campaign(
        &self,
        request: CampaignRequest,
    ) -> Result<CampaignResponse, Error> {
        let config = self.config();
        let timing = WaitTiming::for_wait(
            false,
            request.wait_timeout_ms,
            config.request_timeout,
            config.attempt_timeout,
        );
        let wait_deadline = timing.wait.map(|wait| Instant::now() + wait);
        self.call_within(timing.total, timing.attempt_cap, |channel, timeout| {
            let mut request = request.clone();
            if let Some(deadline) = wait_deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                request.wait_timeout_ms = ceil_millis(left).max(1);
            }
            let request = with_timeout(request, timeout);
            async move { ElectionClient::new(channel).campaign(request).await }
        })
        .await
    }

    /// Publishes `value` as the leader's value. `FAILED_PRECONDITION` unless
    /// `leader` still leads its election.
    pub async fn election_proclaim(
        &self,
        leader: LeaderKey,
        value: impl Into<Vec<u8>>,
    ) -> Result<ProclaimResponse, Error> {
        let request = ProclaimRequest {
            leader: Some(leader),
            value: value.into(),
        };
        self.call(|channel, timeout| {
            let request = with_timeout(request.clone(), timeout);
            async move { ElectionClient::new(channel).proclaim(request).await }
        })
        .await
    }

    /// Gives up the leadership `leader` names; the next candidate becomes
    /// leader in the same revision. `FAILED_PRECONDITION` unless `leader`
    /// still leads — which is also what a retry sees when the first
    /// attempt's resign went through and its answer was lost.
    pub async fn election_resign(&self, leader: LeaderKey) -> Result<ResignResponse, Error> {
        let request = ResignRequest {
            leader: Some(leader),
        };
        self.call(|channel, timeout| {
            let request = with_timeout(request.clone(), timeout);
            async move { ElectionClient::new(channel).resign(request).await }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_info_round_trips_its_key() {
        let key = LeaderKey {
            name: "db".to_owned(),
            key: b"__fenced/election/db/@7".to_vec(),
            token: 12,
            lease: 7,
        };
        let info = LeaderInfo::new(key.clone(), b"node-a".to_vec());
        assert_eq!(info.name, "db");
        assert_eq!(info.token, 12);
        assert_eq!(info.value, b"node-a");
        assert_eq!(info.leader_key(), key);
    }
}

//! The `Lease` RPCs on [`Client`]: grant, revoke, time-to-live and list.
//!
//! Keeping a lease alive is not here: that is a long-lived stream with its
//! own failover, owned by a [`Session`](crate::Session).

use crate::Client;
use crate::Error;
use crate::client::with_timeout;
use crate::pb::lease_client::LeaseClient;
use crate::pb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseListRequest, LeaseListResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};

impl Client {
    /// Grants a lease of `ttl_secs` seconds. `id` 0 lets the server pick the
    /// id; otherwise it must be positive and above every id granted before.
    ///
    /// A TTL outside the server's bounds is `INVALID_ARGUMENT`, naming them.
    /// Retried like a write: when the answer to a first attempt is lost, a
    /// retry with `id` 0 grants a second lease and the first one simply
    /// expires after its TTL.
    pub async fn lease_grant(&self, ttl_secs: i64, id: i64) -> Result<LeaseGrantResponse, Error> {
        let request = LeaseGrantRequest { ttl: ttl_secs, id };
        self.call(|channel, timeout| {
            let request = with_timeout(request, timeout);
            async move { LeaseClient::new(channel).grant(request).await }
        })
        .await
    }

    /// Ends a lease now: its keys are deleted and its locks released.
    /// `NOT_FOUND` when the lease does not exist (any more), which is also
    /// what a retry after a lost answer sees.
    pub async fn lease_revoke(&self, id: i64) -> Result<LeaseRevokeResponse, Error> {
        let request = LeaseRevokeRequest { id };
        self.call(|channel, timeout| {
            let request = with_timeout(request, timeout);
            async move { LeaseClient::new(channel).revoke(request).await }
        })
        .await
    }

    /// The remaining and granted TTL of a lease, with its attached keys when
    /// `keys` is set.
    pub async fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> Result<LeaseTimeToLiveResponse, Error> {
        let request = LeaseTimeToLiveRequest { id, keys };
        self.call(|channel, timeout| {
            let request = with_timeout(request, timeout);
            async move { LeaseClient::new(channel).time_to_live(request).await }
        })
        .await
    }

    /// Every live lease, with its granted TTL.
    pub async fn lease_list(&self) -> Result<LeaseListResponse, Error> {
        self.call(|channel, timeout| async move {
            LeaseClient::new(channel)
                .list(with_timeout(LeaseListRequest {}, timeout))
                .await
        })
        .await
    }
}

//! [`Client`]: one method per RPC, all going through one retry loop.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::endpoint::MemberEndpoint;
use crate::error::is_retryable;
use crate::pb::cluster_client::ClusterClient;
use crate::pb::kv_client::KvClient;
use crate::pb::{
    DeleteRangeRequest, DeleteRangeResponse, KeyValue, MemberAddRequest, MemberChangeResponse,
    MemberListRequest, MemberListResponse, MemberPromoteRequest, MemberRemoveRequest, PutRequest,
    PutResponse, RangeRequest, RangeResponse, StatusRequest, StatusResponse, TransferLeaderRequest,
    TransferLeaderResponse, TxnRequest, TxnResponse,
};
use crate::{ClientConfig, Error};

/// A handle to a fenced cluster.
///
/// Cheap to clone: clones share the channels and the current endpoint. The
/// channels are created by the first request and belong to the Tokio runtime
/// that made it, so use one client within one runtime.
///
/// See the [crate documentation](crate#retries) for which failures are
/// retried; in short `UNAVAILABLE`, `ABORTED` and broken connections move to
/// the next endpoint until the request deadline, and a retried write may be
/// applied twice.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

/// The state clones of a [`Client`] share.
#[derive(Debug)]
struct Inner {
    config: ClientConfig,
    /// In the order given; the round-robin order of failover.
    members: Vec<MemberEndpoint>,
    /// Index into `members` of the endpoint requests go to first. It is
    /// sticky, so consecutive requests reuse one warm connection, and moves
    /// on only when an attempt on it fails in a retryable way or gets no
    /// answer in time. An atomic rather
    /// than a lock because concurrent requests may each move it; whichever
    /// store lands last wins, and every value is a valid index.
    current: AtomicUsize,
    /// Finding the leader, with `prefer_leader`.
    routing: Routing,
}

/// How often a client with `prefer_leader` looks for the leader again while
/// it makes requests.
const ROUTE_REFRESH: Duration = Duration::from_secs(5);

/// How long the leader lookup waits for each member's `Status`.
const ROUTE_STATUS_TIMEOUT: Duration = Duration::from_millis(500);

/// The largest response the client decodes: 2 GiB, etcd's client default.
/// A range over many keys can be far larger than gRPC's usual 4 MiB, and
/// the server sends it whole; refusing it here would fail the read after
/// the work was done, with a message about message sizes.
pub(crate) const MAX_RESPONSE_BYTES: usize = i32::MAX as usize;

/// A KV stub that accepts responses up to [`MAX_RESPONSE_BYTES`].
fn kv(channel: Channel) -> KvClient<Channel> {
    KvClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES)
}

/// When the leader was last looked up, and whether a lookup is running.
#[derive(Debug, Default)]
struct Routing {
    /// `None`: look it up at the next request.
    next_lookup: Mutex<Option<Instant>>,
    looking: AtomicBool,
}

impl Routing {
    fn next_lookup(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.next_lookup
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Client {
    /// A client for these endpoints with the default configuration; a
    /// shorthand for `ClientConfig::new(endpoints).build()`.
    pub fn new<I, S>(endpoints: I) -> Result<Client, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientConfig::new(endpoints).build()
    }

    /// Builds a client from a configuration; see [`ClientConfig::build`].
    pub fn from_config(config: ClientConfig) -> Result<Client, Error> {
        if config.endpoints.is_empty() {
            return Err(Error::NoEndpoints);
        }
        let members = config
            .endpoints
            .iter()
            .map(|name| MemberEndpoint::parse(name, &config))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Client {
            inner: Arc::new(Inner {
                config,
                members,
                current: AtomicUsize::new(0),
                routing: Routing::default(),
            }),
        })
    }

    /// The configured endpoints, as given, in failover order.
    pub fn endpoints(&self) -> impl ExactSizeIterator<Item = &str> {
        self.inner.members.iter().map(|member| member.name.as_str())
    }

    /// The endpoint the next request goes to first.
    pub fn current_endpoint(&self) -> &str {
        &self.inner.members[self.current_index()].name
    }

    /// The configuration this client was built from.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    // ------------------------------------------------------------ KV

    /// Writes `value` under `key`. A retried write may be applied twice (see
    /// the [crate documentation](crate#retries)).
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<PutResponse, Error> {
        self.put_with(PutRequest {
            key: key.into(),
            value: value.into(),
            ..PutRequest::default()
        })
        .await
    }

    /// Sends a full [`PutRequest`], for a lease or `prev_kv`.
    pub async fn put_with(&self, request: PutRequest) -> Result<PutResponse, Error> {
        self.call(|channel, timeout| {
            let request = with_timeout(request.clone(), timeout);
            async move { kv(channel).put(request).await }
        })
        .await
    }

    /// Reads one key with a linearizable read; `None` when it does not exist.
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<KeyValue>, Error> {
        let response = self
            .range(RangeRequest {
                key: key.into(),
                ..RangeRequest::default()
            })
            .await?;
        Ok(response.kvs.into_iter().next())
    }

    /// Reads a key or a prefix, as the request says.
    pub async fn range(&self, request: RangeRequest) -> Result<RangeResponse, Error> {
        self.call(|channel, timeout| {
            let request = with_timeout(request.clone(), timeout);
            async move { kv(channel).range(request).await }
        })
        .await
    }

    /// Deletes one key. The response's `deleted` is 0 when it did not exist.
    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<DeleteRangeResponse, Error> {
        self.delete_range(DeleteRangeRequest {
            key: key.into(),
            ..DeleteRangeRequest::default()
        })
        .await
    }

    /// Deletes a key or every key under a prefix, as the request says.
    pub async fn delete_range(
        &self,
        request: DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, Error> {
        self.call(|channel, timeout| {
            let request = with_timeout(request.clone(), timeout);
            async move { kv(channel).delete_range(request).await }
        })
        .await
    }

    /// Runs a transaction. Retried like a write, so guard it with compares
    /// if running it twice would be wrong.
    pub async fn txn(&self, request: TxnRequest) -> Result<TxnResponse, Error> {
        self.call(|channel, timeout| {
            let request = with_timeout(request.clone(), timeout);
            async move { kv(channel).txn(request).await }
        })
        .await
    }

    // ------------------------------------------------------------ Cluster

    /// The status of the current endpoint's member, failing over like any
    /// other request (so the answer may come from another member; its
    /// `member_id` says which).
    pub async fn status(&self) -> Result<StatusResponse, Error> {
        self.call(|channel, timeout| async move {
            ClusterClient::new(channel)
                .status(with_timeout(StatusRequest::default(), timeout))
                .await
        })
        .await
    }

    /// The status of one particular member, with a single attempt and no
    /// failover: the answer must come from `endpoint` or not at all. The
    /// endpoint need not be one of the configured ones.
    pub async fn status_of(&self, endpoint: &str) -> Result<StatusResponse, Error> {
        self.status_of_with(endpoint, false).await
    }

    /// [`Client::status_of`], also asking for the state digest when
    /// `digest` is set (it costs the member a pass over its whole state).
    pub async fn status_of_with(
        &self,
        endpoint: &str,
        digest: bool,
    ) -> Result<StatusResponse, Error> {
        let timeout = self.inner.config.request_timeout;
        let channel = match self.inner.members.iter().find(|m| m.matches(endpoint)) {
            Some(member) => member.channel(),
            None => MemberEndpoint::parse(endpoint, &self.inner.config)?.channel(),
        };
        let mut cluster = ClusterClient::new(channel);
        let request = with_timeout(StatusRequest { digest }, timeout);
        match attempt(endpoint, timeout, cluster.status(request)).await {
            Ok(status) => Ok(status),
            Err(failure) => Err(failure.status.into()),
        }
    }

    /// The members of the cluster.
    pub async fn member_list(&self) -> Result<MemberListResponse, Error> {
        self.call(|channel, timeout| async move {
            ClusterClient::new(channel)
                .member_list(with_timeout(MemberListRequest {}, timeout))
                .await
        })
        .await
    }

    /// Adds member `id` (a learner unless `voter`); the members afterwards.
    /// Any member forwards it to the leader.
    pub async fn member_add(
        &self,
        id: u64,
        peer_addr: &str,
        client_addr: &str,
        voter: bool,
    ) -> Result<MemberChangeResponse, Error> {
        let request = MemberAddRequest {
            id,
            peer_addr: peer_addr.to_string(),
            client_addr: client_addr.to_string(),
            voter,
        };
        self.call(|channel, timeout| {
            let request = request.clone();
            async move {
                ClusterClient::new(channel)
                    .member_add(with_timeout(request, timeout))
                    .await
            }
        })
        .await
    }

    /// Makes learner `id` a voter (refused until it has caught up).
    pub async fn member_promote(&self, id: u64) -> Result<MemberChangeResponse, Error> {
        self.call(|channel, timeout| async move {
            ClusterClient::new(channel)
                .member_promote(with_timeout(MemberPromoteRequest { id }, timeout))
                .await
        })
        .await
    }

    /// Removes member `id`; it stops.
    pub async fn member_remove(&self, id: u64) -> Result<MemberChangeResponse, Error> {
        self.call(|channel, timeout| async move {
            ClusterClient::new(channel)
                .member_remove(with_timeout(MemberRemoveRequest { id }, timeout))
                .await
        })
        .await
    }

    /// Hands leadership to voter `target`; answers once it leads.
    pub async fn transfer_leader(&self, target: u64) -> Result<TransferLeaderResponse, Error> {
        self.call(|channel, timeout| async move {
            ClusterClient::new(channel)
                .transfer_leader(with_timeout(TransferLeaderRequest { target }, timeout))
                .await
        })
        .await
    }

    // ------------------------------------------------------------ routing

    /// With `prefer_leader`, starts a background lookup of the leader when
    /// one is due and none is running. Never waits.
    fn route(&self) {
        let inner = &self.inner;
        if !inner.config.prefer_leader || inner.members.len() < 2 {
            return;
        }
        if inner
            .routing
            .next_lookup()
            .is_some_and(|at| Instant::now() < at)
        {
            return;
        }
        if inner.routing.looking.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            inner.routing.looking.store(false, Ordering::Release);
            return;
        };
        let client = self.clone();
        runtime.spawn(async move {
            let found = client.find_leader().await;
            let inner = &client.inner;
            let retry_in = match found {
                Some(index) => {
                    inner.current.store(index, Ordering::Relaxed);
                    ROUTE_REFRESH
                }
                // No member leads right now (an election): look again soon.
                None => ROUTE_STATUS_TIMEOUT,
            };
            *inner.routing.next_lookup() = Some(Instant::now() + retry_in);
            inner.routing.looking.store(false, Ordering::Release);
        });
    }

    /// Asks every endpoint for its status and returns the index of the one
    /// that says it leads (in the highest term, should a deposed leader not
    /// know yet).
    async fn find_leader(&self) -> Option<usize> {
        let asks = self
            .inner
            .members
            .iter()
            .enumerate()
            .map(|(index, member)| {
                let request = with_timeout(StatusRequest::default(), ROUTE_STATUS_TIMEOUT);
                async move {
                    let mut cluster = ClusterClient::new(member.channel());
                    let answer =
                        attempt(&member.name, ROUTE_STATUS_TIMEOUT, cluster.status(request));
                    (index, answer.await)
                }
            });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .filter_map(|(index, answer)| answer.ok().map(|status| (index, status)))
            .filter(|(_, status)| status.leader != 0 && status.leader == status.member_id)
            .max_by_key(|(_, status)| status.raft_term)
            .map(|(index, _)| index)
    }

    // ------------------------------------------------------------ retry loop

    fn current_index(&self) -> usize {
        self.inner.current.load(Ordering::Relaxed) % self.inner.members.len()
    }

    /// The number of configured endpoints (at least one).
    pub(crate) fn member_count(&self) -> usize {
        self.inner.members.len()
    }

    /// The index of the endpoint requests go to first, for callers that run
    /// their own failover (the keepalive stream of a session).
    pub(crate) fn first_member(&self) -> usize {
        self.current_index()
    }

    /// The name and channel of endpoint `index` (modulo the endpoint count).
    pub(crate) fn member(&self, index: usize) -> (&str, Channel) {
        let member = &self.inner.members[index % self.inner.members.len()];
        (&member.name, member.channel())
    }

    /// Runs `rpc` against the current endpoint and, on a retryable failure,
    /// against the following ones in turn, until it succeeds, fails for good
    /// or the request deadline passes.
    ///
    /// `rpc` gets the channel to try and the time that attempt may take (to
    /// send as the gRPC timeout); it is called once per attempt, so it
    /// clones the request each time.
    pub(crate) async fn call<T, F, Fut>(&self, rpc: F) -> Result<T, Error>
    where
        F: FnMut(Channel, Duration) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let config = &self.inner.config;
        self.call_within(config.request_timeout, config.attempt_timeout, rpc)
            .await
    }

    /// The retry loop of [`Client::call`] with its own total `timeout` and
    /// per-attempt cap, for calls that are meant to take longer than one
    /// ordinary request (a lock acquire waits for the grant).
    pub(crate) async fn call_within<T, F, Fut>(
        &self,
        timeout: Duration,
        attempt_timeout: Option<Duration>,
        mut rpc: F,
    ) -> Result<T, Error>
    where
        F: FnMut(Channel, Duration) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let config = &self.inner.config;
        let members = &self.inner.members;
        let deadline = Instant::now() + timeout;
        self.route();
        let mut index = self.current_index();
        let mut backoff = config.backoff_initial;
        let mut attempts = 0;
        loop {
            let budget = deadline.saturating_duration_since(Instant::now());
            let budget = attempt_timeout.map_or(budget, |cap| cap.min(budget));
            let member = &members[index];
            attempts += 1;
            let Failure { status, timed_out } =
                match attempt(&member.name, budget, rpc(member.channel(), budget)).await {
                    Ok(response) => return Ok(response),
                    Err(failure) => failure,
                };
            let out_of_time = Instant::now() >= deadline;
            // A member that is unreachable, has no leader, or did not answer
            // in time stops being the current endpoint, even when this
            // request gives up here: the next request starts elsewhere.
            let member_failed = is_retryable(&status) || timed_out;
            if member_failed {
                self.inner
                    .current
                    .store((index + 1) % members.len(), Ordering::Relaxed);
                if config.prefer_leader {
                    *self.inner.routing.next_lookup() = None;
                }
            }
            if timed_out && out_of_time {
                return Err(self.deadline_error(timeout, attempts, &member.name, &status));
            }
            // An attempt cut short by `attempt_timeout` (the request deadline
            // still ahead) is treated like an unreachable member.
            if !config.retry || !member_failed {
                return Err(status.into());
            }
            if out_of_time {
                return Err(self.deadline_error(timeout, attempts, &member.name, &status));
            }
            tracing::debug!(
                endpoint = %member.name,
                code = ?status.code(),
                message = status.message(),
                "request failed; trying the next endpoint"
            );
            index = (index + 1) % members.len();
            if attempts % members.len() == 0 {
                let pause = backoff.min(deadline.saturating_duration_since(Instant::now()));
                tokio::time::sleep(pause).await;
                backoff = (backoff * 2).min(config.backoff_max);
                if Instant::now() >= deadline {
                    return Err(self.deadline_error(timeout, attempts, &member.name, &status));
                }
            }
        }
    }

    /// The error for a request whose deadline passed: `DEADLINE_EXCEEDED`,
    /// with the last failure in the message so the cause is not lost.
    fn deadline_error(
        &self,
        timeout: Duration,
        attempts: usize,
        endpoint: &str,
        last: &Status,
    ) -> Error {
        let last = Error::from(last.clone());
        Status::deadline_exceeded(format!(
            "request deadline of {timeout:?} exceeded after {attempts} attempt(s); \
             last error from {endpoint}: {last}"
        ))
        .into()
    }
}

/// Why one attempt failed.
struct Failure {
    status: Status,
    /// The attempt's time budget ran out (the status is then
    /// `DEADLINE_EXCEEDED`, naming the endpoint).
    timed_out: bool,
}

/// Runs one attempt against `endpoint` within `budget`.
///
/// The channel enforces the gRPC timeout we send too, and reports it as
/// CANCELLED, sometimes a moment before our own timer fires; both become the
/// same `DEADLINE_EXCEEDED`.
async fn attempt<T>(
    endpoint: &str,
    budget: Duration,
    rpc: impl Future<Output = Result<Response<T>, Status>>,
) -> Result<T, Failure> {
    let attempt_deadline = Instant::now() + budget;
    match tokio::time::timeout(budget, rpc).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status))
            if !(status.code() == Code::Cancelled && Instant::now() >= attempt_deadline) =>
        {
            Err(Failure {
                status,
                timed_out: false,
            })
        }
        Ok(Err(_)) | Err(_) => Err(Failure {
            status: Status::deadline_exceeded(format!(
                "no answer from {endpoint} within {budget:?}"
            )),
            timed_out: true,
        }),
    }
}

/// Wraps a message in a request that carries the attempt's time budget, so
/// the server can give up on work whose answer nobody will wait for.
pub(crate) fn with_timeout<T>(message: T, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    request
}

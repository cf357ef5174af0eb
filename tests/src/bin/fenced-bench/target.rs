//! The systems under test behind one interface, so both see the same
//! workload shape through comparable gRPC clients.

use std::time::Duration;

use anyhow::Context;
use fenced_client::pb;
use fenced_client::pb::kv_client::KvClient;
use fenced_client::pb::lease_client::LeaseClient;
use fenced_client::pb::lock_client::LockClient;
use tonic::transport::{Channel, Endpoint};

use crate::{Route, TargetKind};

/// Longest a single call (acquire, release, grant, revoke, range, one
/// keepalive's answer) may take before it counts as an error. Only a safety
/// net: a closed-loop run with every waiter releasing promptly never comes
/// near it.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// One connection to one system. Cheap to clone (shares the connection).
#[derive(Clone)]
pub(crate) enum Target {
    /// fenced: fenced-client for `put`, and one raw gRPC channel to a single
    /// member for `lock` (the generated stubs, not fenced-client's lock API).
    Fenced {
        client: fenced_client::Client,
        channel: Channel,
    },
    /// etcd through the etcd-client crate (balances over all endpoints).
    /// Boxed: it holds every etcd service client.
    #[cfg(feature = "etcd")]
    Etcd(Box<etcd_client::Client>),
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Fenced { client, .. } => f.debug_tuple("Fenced").field(client).finish(),
            #[cfg(feature = "etcd")]
            Target::Etcd(_) => f.write_str("Etcd"),
        }
    }
}

/// fenced's `endpoints` with the one whose member says it leads first.
pub(crate) async fn leader_first(endpoints: &[String]) -> anyhow::Result<Vec<String>> {
    let client = fenced_client::Client::new(endpoints)?;
    for (i, endpoint) in endpoints.iter().enumerate() {
        if let Ok(status) = client.status_of(endpoint).await
            && status.leader != 0
            && status.leader == status.member_id
        {
            let mut ordered = vec![endpoint.clone()];
            ordered.extend(endpoints[..i].iter().cloned());
            ordered.extend(endpoints[i + 1..].iter().cloned());
            return Ok(ordered);
        }
    }
    anyhow::bail!("--route leader: no endpoint of {endpoints:?} says it leads")
}

/// `host:port` or `http://host:port` as a URL.
pub(crate) fn url(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("http://{endpoint}")
    }
}

impl Target {
    /// Opens connection number `index` to `endpoints` of the given system.
    /// For fenced, connection `index` talks to `endpoints[index % len]`, so
    /// the connections are spread over the members.
    /// With `Route::Leader`, fenced-client follows the leader.
    pub(crate) async fn connect(
        kind: TargetKind,
        endpoints: &[String],
        index: usize,
        route: Route,
    ) -> anyhow::Result<Self> {
        match kind {
            TargetKind::Fenced => {
                let member = endpoints
                    .get(index % endpoints.len().max(1))
                    .context("no endpoints given")?;
                let channel = Endpoint::from_shared(url(member))
                    .with_context(|| format!("endpoint {member:?}"))?
                    .connect_timeout(Duration::from_secs(5))
                    .tcp_nodelay(true)
                    .connect_lazy();
                let client = fenced_client::ClientConfig::new(endpoints)
                    .prefer_leader(route == Route::Leader)
                    .build()?;
                Ok(Target::Fenced { client, channel })
            }
            #[cfg(feature = "etcd")]
            TargetKind::Etcd => {
                let urls: Vec<String> = endpoints.iter().map(|e| url(e)).collect();
                let client = etcd_client::Client::connect(urls, None).await?;
                Ok(Target::Etcd(Box::new(client)))
            }
            #[cfg(not(feature = "etcd"))]
            TargetKind::Etcd => anyhow::bail!(
                "this fenced-bench was built without the etcd target; build it with \
                 `cargo build --release -p fenced-tests --features etcd` (needs protoc on PATH)"
            ),
        }
    }

    /// Writes one key.
    pub(crate) async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()> {
        match self {
            Target::Fenced { client, .. } => {
                client.put(key, value).await?;
            }
            #[cfg(feature = "etcd")]
            Target::Etcd(c) => {
                c.kv_client().put(key, value, None).await?;
            }
        }
        Ok(())
    }

    /// Reads one key; `serializable` answers from the member's applied
    /// state, otherwise the read is linearizable (a ReadIndex round on
    /// fenced, a quorum read on etcd). Returns whether the key was found.
    ///
    /// fenced goes through the generated KV stub on this connection's
    /// member (not fenced-client, which sticks to its first endpoint), so
    /// the reads are spread over the members as etcd-client spreads them.
    pub(crate) async fn range(&self, key: Vec<u8>, serializable: bool) -> anyhow::Result<bool> {
        match self {
            Target::Fenced { channel, .. } => {
                let request = pb::RangeRequest {
                    key,
                    serializable,
                    ..Default::default()
                };
                let response = timed(KvClient::new(channel.clone()).range(request)).await?;
                Ok(!response.into_inner().kvs.is_empty())
            }
            #[cfg(feature = "etcd")]
            Target::Etcd(c) => {
                let options =
                    serializable.then(|| etcd_client::GetOptions::new().with_serializable());
                let response = timed(c.kv_client().get(key, options)).await?;
                Ok(!response.kvs().is_empty())
            }
        }
    }

    /// Grants a lease of `ttl` seconds on this connection and returns a
    /// locker that acquires with it.
    pub(crate) async fn locker(&self, ttl: i64) -> anyhow::Result<Locker> {
        match self {
            Target::Fenced { channel, .. } => {
                let mut lease = LeaseClient::new(channel.clone());
                let granted = timed(lease.grant(pb::LeaseGrantRequest { ttl, id: 0 }))
                    .await
                    .context("lease grant")?
                    .into_inner();
                Ok(Locker::Fenced {
                    lock: LockClient::new(channel.clone()),
                    lease,
                    id: granted.id,
                })
            }
            #[cfg(feature = "etcd")]
            Target::Etcd(c) => {
                let mut lease = c.lease_client();
                let granted = timed(lease.grant(ttl, None)).await.context("lease grant")?;
                Ok(Locker::Etcd {
                    lock: c.lock_client(),
                    lease: Box::new(lease),
                    id: granted.id(),
                })
            }
        }
    }
}

/// The Raft role of the member behind `endpoint` ("leader", "follower",
/// ...), as that member reports it. The watch workloads record it: a
/// watcher on the leader sees a commit before a watcher on a follower,
/// which learns it one append later.
pub(crate) async fn member_role(kind: TargetKind, endpoint: &str) -> anyhow::Result<String> {
    match kind {
        TargetKind::Fenced => {
            let client = fenced_client::Client::new([endpoint])?;
            Ok(client.status_of(endpoint).await?.role)
        }
        #[cfg(feature = "etcd")]
        TargetKind::Etcd => {
            let client = etcd_client::Client::connect([url(endpoint)], None).await?;
            let status = client.maintenance_client().status().await?;
            let me = status.header().map(|h| h.member_id()).unwrap_or_default();
            Ok(if me != 0 && me == status.leader() {
                "leader".to_owned()
            } else {
                "follower".to_owned()
            })
        }
        #[cfg(not(feature = "etcd"))]
        TargetKind::Etcd => anyhow::bail!("this fenced-bench was built without the etcd target"),
    }
}

/// One benchmark client's lease and lock stubs.
pub(crate) enum Locker {
    Fenced {
        lock: LockClient<Channel>,
        lease: LeaseClient<Channel>,
        id: i64,
    },
    #[cfg(feature = "etcd")]
    Etcd {
        lock: etcd_client::LockClient,
        /// Boxed: only revoking uses it.
        lease: Box<etcd_client::LeaseClient>,
        id: i64,
    },
}

impl std::fmt::Debug for Locker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Locker::Fenced { id, .. } => f.debug_struct("Fenced").field("lease", id).finish(),
            #[cfg(feature = "etcd")]
            Locker::Etcd { id, .. } => f.debug_struct("Etcd").field("lease", id).finish(),
        }
    }
}

/// A granted lock, with what its release needs.
#[derive(Debug)]
pub(crate) enum Held {
    /// fenced releases by name, token and lease.
    Fenced { name: String, token: i64 },
    /// etcd releases by the lock's key (`name/<lease id in hex>`).
    #[cfg(feature = "etcd")]
    Etcd { key: Vec<u8> },
}

impl Locker {
    /// Acquires lock `name` with this locker's lease, waiting in FIFO order
    /// behind its current holder and earlier waiters.
    pub(crate) async fn acquire(&mut self, name: &str) -> anyhow::Result<Held> {
        match self {
            Locker::Fenced { lock, id, .. } => {
                let request = pb::AcquireRequest {
                    name: name.to_owned(),
                    lease: *id,
                    ..Default::default()
                };
                let granted = timed(lock.acquire(request)).await?.into_inner();
                Ok(Held::Fenced {
                    name: name.to_owned(),
                    token: granted.token,
                })
            }
            #[cfg(feature = "etcd")]
            Locker::Etcd { lock, id, .. } => {
                let options = etcd_client::LockOptions::new().with_lease(*id);
                let granted = timed(lock.lock(name, Some(options))).await?;
                Ok(Held::Etcd {
                    key: granted.key().to_vec(),
                })
            }
        }
    }

    /// Releases `held`, granting the lock to the next waiter.
    pub(crate) async fn release(&mut self, held: Held) -> anyhow::Result<()> {
        match (self, held) {
            (Locker::Fenced { lock, id, .. }, Held::Fenced { name, token }) => {
                let request = pb::ReleaseRequest {
                    name,
                    token,
                    lease: *id,
                };
                timed(lock.release(request)).await?;
            }
            #[cfg(feature = "etcd")]
            (Locker::Etcd { lock, .. }, Held::Etcd { key }) => {
                timed(lock.unlock(key)).await?;
            }
            #[cfg(feature = "etcd")]
            _ => anyhow::bail!("a lock held on one system released on the other"),
        }
        Ok(())
    }

    /// Revokes the lease, so it does not expire (and cost the cluster work)
    /// during a later run.
    pub(crate) async fn revoke(mut self) -> anyhow::Result<()> {
        match &mut self {
            Locker::Fenced { lease, id, .. } => {
                timed(lease.revoke(pb::LeaseRevokeRequest { id: *id })).await?;
            }
            #[cfg(feature = "etcd")]
            Locker::Etcd { lease, id, .. } => {
                timed(lease.revoke(*id)).await?;
            }
        }
        Ok(())
    }
}

/// `call` bounded by [`CALL_TIMEOUT`]; dropping a timed-out call
/// cancels it on the server (which removes a queued acquire).
pub(crate) async fn timed<T, E>(call: impl Future<Output = Result<T, E>>) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => Ok(result?),
        Err(_) => anyhow::bail!("no answer within {CALL_TIMEOUT:?}"),
    }
}

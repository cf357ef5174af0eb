//! The `member-failover` workload: how long lock acquires stop succeeding
//! when the leading member of the cluster is killed (SIGKILL).
//!
//! `--pids` names the server process of each endpoint, in the order of
//! `--endpoints` (compare.sh passes the pids of the members it started).
//! The bench must be able to signal them: same user, or root.
//!
//! C clients run the lock workload (acquire + release cycles, client i on
//! lock `bench-mf-{i mod L}` with a lease of its own, TTL 120 s, not kept
//! alive), each through a client of its own that knows every endpoint and
//! starts on endpoint i mod n: fenced-client (which moves to the next
//! endpoint when a call fails in a retryable way) or etcd-client (which
//! balances over the endpoints). A failed call counts as an error and the
//! client tries again 10 ms later, on both systems; an acquire retried with
//! the same lease finds the place it already had, on both systems.
//!
//! After `--kill-after` seconds the bench asks every member for its status,
//! SIGKILLs the process of the member that reports itself leader, and
//! notes the instant. The figure is the time from that instant to the
//! first successful acquire *issued after it* (an acquire answered after
//! the kill but committed before it would say nothing about the new
//! leader): `failover_ms` is the first such acquire over all clients,
//! `all_clients_ms` the last client's. The run goes on until every client
//! had one, then `--after` seconds more, and fails if any client had none
//! within 30 s. The killed member is left dead: compare.sh restarts it
//! (same data dir, same flags) before the next workload.
//!
//! The figure includes the time the members need to notice the leader is
//! gone (an election timeout without heartbeats, randomized on both
//! systems), the election, and the client's move off a dead connection or a
//! forwarded request that was lost with the leader.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};
use fenced_client::pb;
use hdrhistogram::Histogram;
use tokio::sync::mpsc;
use tokio::time::Instant;

#[cfg(feature = "etcd")]
use crate::target::url;
use crate::{Route, TargetKind, new_histogram};

/// TTL of each client's lease; the run never comes near it.
const LEASE_TTL_SECS: i64 = 120;
/// Longest one call may take before it counts as failed and is retried.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed call before the next attempt.
const RETRY_PAUSE: Duration = Duration::from_millis(10);
/// Every client must have acquired again within this time of the kill.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(30);

/// The shape of a `member-failover` run.
#[derive(Clone, Debug)]
pub(crate) struct Shape {
    pub(crate) kind: TargetKind,
    pub(crate) endpoints: Vec<String>,
    /// The server process of each endpoint.
    pub(crate) pids: Vec<u32>,
    pub(crate) clients: usize,
    pub(crate) locks: usize,
    /// Lock cycles before the kill.
    pub(crate) kill_after: Duration,
    /// Lock cycles after every client recovered.
    pub(crate) after: Duration,
    /// With `Route::Leader`, each fenced client follows the leader.
    pub(crate) route: Route,
}

/// What a `member-failover` run measured.
#[derive(Debug)]
pub(crate) struct MemberFailoverRun {
    /// Kill → the first successful acquire issued after it (one value).
    pub(crate) hist: Histogram<u64>,
    pub(crate) failover_ms: f64,
    /// Kill → the last client's first successful acquire issued after it.
    pub(crate) all_clients_ms: f64,
    /// 1-based position in `--endpoints` of the member killed.
    pub(crate) killed_member: usize,
    pub(crate) killed_endpoint: String,
    /// The leader after the run, as the surviving members report it.
    pub(crate) new_leader: Option<String>,
    pub(crate) cycles_before_kill: u64,
    pub(crate) cycles_after_kill: u64,
    pub(crate) acquire_errors: u64,
    pub(crate) release_errors: u64,
    pub(crate) seconds: f64,
}

/// One client's lease and lock calls, on any member.
enum Locker {
    Fenced {
        client: fenced_client::Client,
        lease: i64,
    },
    #[cfg(feature = "etcd")]
    Etcd {
        client: Box<etcd_client::Client>,
        lease: i64,
    },
}

/// What a release needs.
enum Held {
    Fenced {
        token: i64,
    },
    #[cfg(feature = "etcd")]
    Etcd {
        key: Vec<u8>,
    },
}

/// `call` bounded by [`CALL_TIMEOUT`].
async fn bounded<T, E>(call: impl Future<Output = Result<T, E>>) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => Ok(result?),
        Err(_) => bail!("no answer within {CALL_TIMEOUT:?}"),
    }
}

impl Locker {
    /// A client of its own, starting on `endpoints[first]`, with a lease.
    async fn open(
        kind: TargetKind,
        endpoints: &[String],
        first: usize,
        route: Route,
    ) -> anyhow::Result<Self> {
        let n = endpoints.len();
        let order: Vec<String> = (0..n).map(|k| endpoints[(first + k) % n].clone()).collect();
        match kind {
            TargetKind::Fenced => {
                let client = fenced_client::ClientConfig::new(order)
                    .prefer_leader(route == Route::Leader)
                    .build()?;
                let lease = bounded(client.lease_grant(LEASE_TTL_SECS, 0))
                    .await
                    .context("lease grant")?
                    .id;
                Ok(Locker::Fenced { client, lease })
            }
            #[cfg(feature = "etcd")]
            TargetKind::Etcd => {
                let urls: Vec<String> = order.iter().map(|e| url(e)).collect();
                let client = etcd_client::Client::connect(urls, None).await?;
                let lease = bounded(client.lease_client().grant(LEASE_TTL_SECS, None))
                    .await
                    .context("lease grant")?
                    .id();
                Ok(Locker::Etcd {
                    client: Box::new(client),
                    lease,
                })
            }
            #[cfg(not(feature = "etcd"))]
            TargetKind::Etcd => bail!("this fenced-bench was built without the etcd target"),
        }
    }

    async fn acquire(&self, name: &str) -> anyhow::Result<Held> {
        match self {
            Locker::Fenced { client, lease } => {
                let request = pb::AcquireRequest {
                    name: name.to_owned(),
                    lease: *lease,
                    ..Default::default()
                };
                let granted = bounded(client.lock_acquire(request)).await?;
                Ok(Held::Fenced {
                    token: granted.token,
                })
            }
            #[cfg(feature = "etcd")]
            Locker::Etcd { client, lease } => {
                let options = etcd_client::LockOptions::new().with_lease(*lease);
                let granted = bounded(client.lock_client().lock(name, Some(options))).await?;
                Ok(Held::Etcd {
                    key: granted.key().to_vec(),
                })
            }
        }
    }

    async fn release(&self, name: &str, held: Held) -> anyhow::Result<()> {
        match (self, held) {
            (Locker::Fenced { client, lease }, Held::Fenced { token }) => {
                bounded(client.lock_release(name, token, *lease)).await?;
            }
            #[cfg(feature = "etcd")]
            (Locker::Etcd { client, .. }, Held::Etcd { key }) => {
                bounded(client.lock_client().unlock(key)).await?;
            }
            #[cfg(feature = "etcd")]
            _ => bail!("a lock held on one system released on the other"),
        }
        Ok(())
    }

    /// Revokes the lease, trying a few times: a client may still pick the
    /// killed member's endpoint for the first attempt.
    async fn revoke(self) -> anyhow::Result<()> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = match &self {
                Locker::Fenced { client, lease } => {
                    bounded(client.lease_revoke(*lease)).await.map(drop)
                }
                #[cfg(feature = "etcd")]
                Locker::Etcd { client, lease } => bounded(client.lease_client().revoke(*lease))
                    .await
                    .map(drop),
            };
            match result {
                Ok(()) => return Ok(()),
                Err(err) if attempt >= 5 => return Err(err),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

/// The position in `endpoints` of the member that reports itself leader
/// (the highest term wins if two do), and the members that answered.
async fn find_leader(kind: TargetKind, endpoints: &[String]) -> anyhow::Result<Option<usize>> {
    let statuses = futures::future::join_all(
        endpoints
            .iter()
            .map(|endpoint| leader_term(kind, endpoint.clone())),
    )
    .await;
    Ok(statuses
        .into_iter()
        .enumerate()
        .filter_map(|(i, status)| status.ok().flatten().map(|term| (term, i)))
        .max()
        .map(|(_, i)| i))
}

/// `Some(term)` when the member behind `endpoint` says it is the leader.
async fn leader_term(kind: TargetKind, endpoint: String) -> anyhow::Result<Option<u64>> {
    let ask = async {
        match kind {
            TargetKind::Fenced => {
                let client = fenced_client::Client::new([endpoint.as_str()])?;
                let status = client.status_of(&endpoint).await?;
                Ok((status.role == "leader").then_some(status.raft_term))
            }
            #[cfg(feature = "etcd")]
            TargetKind::Etcd => {
                let client = etcd_client::Client::connect([url(&endpoint)], None).await?;
                let status = client.maintenance_client().status().await?;
                let me = status.header().map(|h| h.member_id()).unwrap_or_default();
                Ok((me != 0 && me == status.leader()).then_some(status.raft_term()))
            }
            #[cfg(not(feature = "etcd"))]
            TargetKind::Etcd => bail!("this fenced-bench was built without the etcd target"),
        }
    };
    match tokio::time::timeout(Duration::from_secs(2), ask).await {
        Ok(answer) => answer,
        Err(_) => bail!("{endpoint}: no status within 2 s"),
    }
}

/// SIGKILL to `pid`.
#[allow(unsafe_code)]
fn sigkill(pid: u32) -> anyhow::Result<()> {
    let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: kill(2) takes two integers and touches none of our memory.
    // The pid was given by the caller as a member's server process, and
    // that member answered a status call just before.
    let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("kill -KILL {pid}"));
    }
    Ok(())
}

/// Counters the clients share with the main task.
#[derive(Debug, Default)]
struct Shared {
    /// The instant of the kill, once it happened.
    killed_at: OnceLock<Instant>,
    stop: AtomicBool,
    cycles_before_kill: AtomicU64,
    cycles_after_kill: AtomicU64,
    acquire_errors: AtomicU64,
    release_errors: AtomicU64,
    /// The first error of each distinct message, with when it happened,
    /// for stderr: (call and message, the line to print).
    error_log: std::sync::Mutex<Vec<(String, String)>>,
}

/// How many distinct errors [`Shared::error_log`] keeps.
const ERRORS_LOGGED: usize = 8;

impl Shared {
    /// Counts a failed call and keeps its message when it is among the
    /// first of its kind.
    fn failed(&self, call: &str, started: Instant, err: &anyhow::Error) {
        let counter = match call {
            "acquire" => &self.acquire_errors,
            _ => &self.release_errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let when = match self.killed_at.get() {
            Some(&k) => format!(
                "issued {:+.0} ms, failed {:+.0} ms from the kill",
                signed_ms(started, k),
                signed_ms(now, k)
            ),
            None => "before the kill".to_owned(),
        };
        let key = format!("{call}: {err:#}");
        // A poisoned log only loses messages.
        if let Ok(mut log) = self.error_log.lock()
            && log.len() < ERRORS_LOGGED
            && log.iter().all(|(k, _)| *k != key)
        {
            let line = format!("{call} ({when}): {err:#}");
            log.push((key, line));
        }
    }
}

/// `at - reference` in milliseconds, negative when `at` is earlier.
fn signed_ms(at: Instant, reference: Instant) -> f64 {
    if at >= reference {
        (at - reference).as_secs_f64() * 1000.0
    } else {
        -((reference - at).as_secs_f64() * 1000.0)
    }
}

pub(crate) async fn run(shape: &Shape) -> anyhow::Result<MemberFailoverRun> {
    if shape.pids.len() != shape.endpoints.len() {
        bail!(
            "--pids must name one process per endpoint, in the order of --endpoints ({} endpoints, {} pids)",
            shape.endpoints.len(),
            shape.pids.len()
        );
    }
    if shape.endpoints.len() < 3 {
        bail!("member-failover needs at least 3 members: killing one of 2 leaves no quorum");
    }
    if shape.locks == 0 {
        bail!("--locks must be at least 1");
    }
    let lockers = futures::future::try_join_all(
        (0..shape.clients).map(|i| Locker::open(shape.kind, &shape.endpoints, i, shape.route)),
    )
    .await
    .context("granting the clients' leases")?;
    let shared = Arc::new(Shared::default());
    let (recovered_tx, mut recovered) = mpsc::unbounded_channel();
    let started = Instant::now();
    let tasks: Vec<_> = lockers
        .into_iter()
        .enumerate()
        .map(|(i, locker)| {
            let name = format!("bench-mf-{}", i % shape.locks);
            tokio::spawn(client_loop(
                locker,
                name,
                shared.clone(),
                recovered_tx.clone(),
            ))
        })
        .collect();
    drop(recovered_tx);

    let measured = async {
        tokio::time::sleep(shape.kill_after).await;
        let leader = find_leader(shape.kind, &shape.endpoints)
            .await?
            .context("no member reports itself leader")?;
        let pid = shape.pids[leader];
        sigkill(pid)?;
        let killed_at = Instant::now();
        let _ = shared.killed_at.set(killed_at);
        eprintln!(
            "fenced-bench: killed the leader, member {} ({}), pid {pid}",
            leader + 1,
            shape.endpoints[leader]
        );
        // Every client's first acquire issued after the kill.
        let deadline = killed_at + RECOVERY_DEADLINE;
        let mut first = None;
        let mut last = None;
        for _ in 0..shape.clients {
            tokio::select! {
                at = recovered.recv() => {
                    let at: Instant = at.context("a client ended before it acquired again")?;
                    first.get_or_insert(at);
                    last = Some(at);
                }
                () = tokio::time::sleep_until(deadline) => bail!(
                    "not every client acquired again within {RECOVERY_DEADLINE:?} of the kill"
                ),
            }
        }
        tokio::time::sleep(shape.after).await;
        anyhow::Ok((leader, killed_at, first, last))
    }
    .await;
    shared.stop.store(true, Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    let mut lockers = Vec::with_capacity(tasks.len());
    for task in tasks {
        lockers.push(task.await?);
    }
    let revoked = futures::future::join_all(lockers.into_iter().map(Locker::revoke)).await;
    if let Some(Err(err)) = revoked.into_iter().find(Result::is_err) {
        eprintln!("fenced-bench: revoking a lease failed: {err:#}");
    }
    if let Ok(log) = shared.error_log.lock() {
        for (_, line) in log.iter() {
            eprintln!("fenced-bench: first failed {line}");
        }
    }
    let (leader, killed_at, first, last) = measured?;
    let ms = |at: Option<Instant>| {
        at.map_or(f64::NAN, |at| {
            at.saturating_duration_since(killed_at).as_micros() as f64 / 1000.0
        })
    };
    let failover_ms = ms(first);
    let mut hist = new_histogram();
    let _ = hist.record((failover_ms * 1000.0) as u64);
    let survivors: Vec<String> = shape
        .endpoints
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, e)| e.clone())
        .collect();
    let new_leader = find_leader(shape.kind, &survivors)
        .await
        .ok()
        .flatten()
        .map(|i| survivors[i].clone());
    Ok(MemberFailoverRun {
        hist,
        failover_ms,
        all_clients_ms: ms(last),
        killed_member: leader + 1,
        killed_endpoint: shape.endpoints[leader].clone(),
        new_leader,
        cycles_before_kill: shared.cycles_before_kill.load(Ordering::Relaxed),
        cycles_after_kill: shared.cycles_after_kill.load(Ordering::Relaxed),
        acquire_errors: shared.acquire_errors.load(Ordering::Relaxed),
        release_errors: shared.release_errors.load(Ordering::Relaxed),
        seconds,
    })
}

/// One client: acquire + release cycles until `stop`, a failed call
/// retried after [`RETRY_PAUSE`]. Sends the instant its first acquire
/// issued after the kill succeeded. Returns its locker for the revoke.
async fn client_loop(
    locker: Locker,
    name: String,
    shared: Arc<Shared>,
    recovered: mpsc::UnboundedSender<Instant>,
) -> Locker {
    let mut reported = false;
    while !shared.stop.load(Ordering::Relaxed) {
        let issued = Instant::now();
        let after_kill = shared.killed_at.get().is_some_and(|&k| issued >= k);
        let held = match locker.acquire(&name).await {
            Ok(held) => held,
            Err(err) => {
                shared.failed("acquire", issued, &err);
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        if after_kill && !reported {
            reported = true;
            let _ = recovered.send(Instant::now());
        }
        let releasing = Instant::now();
        match locker.release(&name, held).await {
            Ok(()) => {
                let counter = if shared.killed_at.get().is_some() {
                    &shared.cycles_after_kill
                } else {
                    &shared.cycles_before_kill
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => {
                // The lock may still be held by this lease; the next
                // acquire with the same lease finds it granted.
                shared.failed("release", releasing, &err);
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
    locker
}

//! The `lease-keepalive` workload: how many lease keepalives a cluster
//! acknowledges per second, and how long one round trip takes.
//!
//! Each client grants one lease (not timed) and opens one keepalive stream
//! for it over the client's connection (`--conns`, fenced: connection k on
//! endpoint k mod n; etcd: etcd-client, balanced over the endpoints). Then
//! it sends a keepalive, waits for the answer, and sends the next one:
//! one keepalive in flight per lease, closed loop, or, with `--interval`,
//! one every interval (the schedule a client library keeps, TTL/3 apart),
//! where a late answer delays the next keepalive and the histogram is
//! corrected for the keepalives that would have been sent meanwhile
//! (coordinated omission). An answer with a TTL of 0 or an error code, a
//! broken stream, or no answer within the call timeout counts as an error
//! and ends that client.
//!
//! Both systems acknowledge a keepalive only on the leader, so a keepalive
//! reaching a follower is forwarded. fenced confirms its leadership in the
//! current term before acknowledging (batched over the keepalives waiting);
//! etcd 3.4's leader answers from its lessor without a check.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fenced_client::pb;
use fenced_client::pb::lease_client::LeaseClient;
use hdrhistogram::Histogram;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::Streaming;
use tonic::transport::Channel;

use crate::target::{Target, timed};
use crate::{Stop, new_histogram};

/// One lease with its keepalive stream.
pub(crate) enum Keeper {
    Fenced {
        leases: LeaseClient<Channel>,
        id: i64,
        requests: mpsc::Sender<pb::LeaseKeepAliveRequest>,
        answers: Streaming<pb::LeaseKeepAliveResponse>,
    },
    #[cfg(feature = "etcd")]
    Etcd {
        leases: Box<etcd_client::LeaseClient>,
        id: i64,
        keeper: etcd_client::LeaseKeeper,
        answers: etcd_client::LeaseKeepAliveStream,
    },
}

impl std::fmt::Debug for Keeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Keeper::Fenced { id, .. } => f.debug_struct("Fenced").field("lease", id).finish(),
            #[cfg(feature = "etcd")]
            Keeper::Etcd { id, .. } => f.debug_struct("Etcd").field("lease", id).finish(),
        }
    }
}

impl Keeper {
    /// Grants a lease of `ttl` seconds over `target`'s connection, opens its
    /// keepalive stream and has a first keepalive answered on it.
    pub(crate) async fn open(target: &Target, ttl: i64) -> anyhow::Result<Self> {
        match target {
            Target::Fenced { channel, .. } => {
                let mut leases = LeaseClient::new(channel.clone());
                let id = timed(leases.grant(pb::LeaseGrantRequest { ttl, id: 0 }))
                    .await
                    .context("lease grant")?
                    .into_inner()
                    .id;
                let (requests, inbox) = mpsc::channel(1);
                // Queued before the call, so the stream has a first message
                // whatever the server waits for before answering the call.
                requests.send(pb::LeaseKeepAliveRequest { id }).await?;
                let answers = timed(leases.keep_alive(ReceiverStream::new(inbox)))
                    .await
                    .context("opening the keepalive stream")?
                    .into_inner();
                let mut keeper = Keeper::Fenced {
                    leases,
                    id,
                    requests,
                    answers,
                };
                keeper.answer().await.context("first keepalive")?;
                Ok(keeper)
            }
            #[cfg(feature = "etcd")]
            Target::Etcd(c) => {
                let mut leases = c.lease_client();
                let id = timed(leases.grant(ttl, None))
                    .await
                    .context("lease grant")?
                    .id();
                // Sends the first keepalive and reads its answer.
                let (keeper, answers) = timed(leases.keep_alive(id))
                    .await
                    .context("opening the keepalive stream")?;
                Ok(Keeper::Etcd {
                    leases: Box::new(leases),
                    id,
                    keeper,
                    answers,
                })
            }
        }
    }

    /// One keepalive round trip: send, wait for the answer.
    pub(crate) async fn keep_alive(&mut self) -> anyhow::Result<()> {
        match self {
            Keeper::Fenced { id, requests, .. } => requests
                .send(pb::LeaseKeepAliveRequest { id: *id })
                .await
                .context("the keepalive stream is closed")?,
            #[cfg(feature = "etcd")]
            Keeper::Etcd { keeper, .. } => keeper.keep_alive().await?,
        }
        self.answer().await
    }

    /// Waits for the answer to the keepalive in flight; an error unless it
    /// refreshed the lease.
    async fn answer(&mut self) -> anyhow::Result<()> {
        match self {
            Keeper::Fenced { id, answers, .. } => {
                let answer = timed(answers.message())
                    .await?
                    .context("the keepalive stream ended")?;
                if answer.code != 0 || answer.ttl <= 0 {
                    bail!(
                        "lease {id}: keepalive answered ttl {} code {} {:?}",
                        answer.ttl,
                        answer.code,
                        answer.message
                    );
                }
            }
            #[cfg(feature = "etcd")]
            Keeper::Etcd { id, answers, .. } => {
                let answer = timed(answers.message())
                    .await?
                    .context("the keepalive stream ended")?;
                if answer.ttl() <= 0 {
                    bail!("lease {id}: keepalive answered ttl {}", answer.ttl());
                }
            }
        }
        Ok(())
    }

    /// Closes the stream and revokes the lease.
    pub(crate) async fn revoke(self) -> anyhow::Result<()> {
        match self {
            Keeper::Fenced {
                mut leases,
                id,
                requests,
                answers,
            } => {
                drop((requests, answers));
                timed(leases.revoke(pb::LeaseRevokeRequest { id })).await?;
            }
            #[cfg(feature = "etcd")]
            Keeper::Etcd {
                mut leases,
                id,
                keeper,
                answers,
            } => {
                drop((keeper, answers));
                timed(leases.revoke(id)).await?;
            }
        }
        Ok(())
    }
}

/// What a `lease-keepalive` run measured.
#[derive(Debug)]
pub(crate) struct KeepaliveRun {
    /// One keepalive's round trip (corrected for coordinated omission with
    /// an interval).
    pub(crate) hist: Histogram<u64>,
    /// Keepalives acknowledged.
    pub(crate) acks: u64,
    pub(crate) errors: u64,
    pub(crate) seconds: f64,
}

/// Grants `clients` leases of `ttl` seconds, then keeps them alive until
/// `stop`, every `interval` (zero: closed loop).
pub(crate) async fn run(
    targets: &[Target],
    clients: usize,
    stop: Stop,
    ttl: i64,
    interval: Duration,
) -> anyhow::Result<KeepaliveRun> {
    let keepers = futures::future::try_join_all(
        (0..clients).map(|i| Keeper::open(&targets[i % targets.len()], ttl)),
    )
    .await
    .context("granting the leases and opening their streams")?;
    let started = Instant::now();
    let issued = Arc::new(AtomicU64::new(0));
    let interval_us = interval.as_micros() as u64;
    let mut tasks = Vec::with_capacity(clients);
    for mut keeper in keepers {
        let issued = issued.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = new_histogram();
            let mut acked = 0u64;
            let mut error = None;
            let mut next = tokio::time::Instant::now();
            loop {
                let more = match stop {
                    Stop::After(d) => started.elapsed() < d,
                    Stop::Total(n) => issued.fetch_add(1, Ordering::Relaxed) < n,
                };
                if !more {
                    break;
                }
                if interval_us > 0 {
                    tokio::time::sleep_until(next).await;
                    next = (next + interval).max(tokio::time::Instant::now());
                }
                let t = Instant::now();
                match keeper.keep_alive().await {
                    Ok(()) => {
                        acked += 1;
                        let us = t.elapsed().as_micros() as u64;
                        let _ = if interval_us > 0 {
                            hist.record_correct(us, interval_us)
                        } else {
                            hist.record(us)
                        };
                    }
                    Err(err) => {
                        error = Some(err);
                        break;
                    }
                }
            }
            (hist, acked, error, keeper)
        }));
    }
    let mut hist = new_histogram();
    let mut acks = 0;
    let mut errors = 0;
    let mut first_error = None;
    let mut keepers = Vec::with_capacity(tasks.len());
    for task in tasks {
        let (h, acked, error, keeper) = task.await?;
        acks += acked;
        hist.add(&h).context("merging histograms")?;
        if let Some(err) = error {
            errors += 1;
            first_error.get_or_insert(err);
        }
        keepers.push(keeper);
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Some(err) = first_error {
        eprintln!("fenced-bench: {errors} keepalive streams failed; the first: {err:#}");
    }
    let revoked = futures::future::join_all(keepers.into_iter().map(Keeper::revoke)).await;
    if let Some(Err(err)) = revoked.into_iter().find(Result::is_err) {
        eprintln!("fenced-bench: revoking a lease failed: {err:#}");
    }
    Ok(KeepaliveRun {
        hist,
        acks,
        errors,
        seconds,
    })
}

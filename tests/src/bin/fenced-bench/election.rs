//! The `election-failover` workload: how long an election stays without a
//! usable leader when the leader's process dies.
//!
//! K candidates campaign in one election (a fresh name per run), each with
//! a lease of the same TTL that it keeps alive every TTL/3 (fenced:
//! fenced-client's `Session`; etcd: an etcd-client `LeaseKeeper` driven on
//! the same schedule), candidate i over a connection of its own to
//! endpoint i mod 3. An observer follows the election from the first
//! endpoint (fenced: fenced-client's `observe`; etcd: the `Observe` RPC).
//!
//! One round: once the observer shows the elected candidate as leader, the
//! leader is "killed" right after its next keepalive was acknowledged — its
//! keepalives stop there and then, and nothing is revoked or resigned
//! (fenced: the `Session` is dropped, which stops its keepalive task, and
//! the `Leadership` is forgotten so it does not resign; etcd: the keepalive
//! task is aborted, closing its stream). The failover time is from the kill
//! to the observer receiving a leader with another lease. It is bounded
//! below by the TTL (the lease must run out) and adds the system's expiry
//! granularity (fenced's lessor checks every 50 ms; etcd 3.4's every
//! 500 ms), the commit of the expiry, the next candidate's election and
//! the observer's notification. A new candidate then joins at the back of
//! the queue, so every round starts with K candidates.

use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

#[cfg(feature = "etcd")]
use crate::target::url;
use crate::{Stop, TargetKind, new_histogram};

/// A round with no new leader this long after the TTL is a failed round.
const ROUND_SLACK: Duration = Duration::from_secs(15);
/// Failed rounds after which the run gives up.
const MAX_FAILED_ROUNDS: u64 = 3;

/// What an `election-failover` run measured.
#[derive(Debug)]
pub(crate) struct FailoverRun {
    /// Kill → the observer sees the next leader, one value per round.
    pub(crate) hist: Histogram<u64>,
    /// The same, round by round, in milliseconds.
    pub(crate) rounds_ms: Vec<f64>,
    pub(crate) errors: u64,
    pub(crate) seconds: f64,
    /// The TTL the leases were granted with (a system may raise a short
    /// one to its minimum).
    pub(crate) granted_ttl: i64,
}

/// What the main loop hears from a candidate.
#[derive(Debug)]
enum Note {
    /// Campaign answered: this candidate leads, with this lease.
    Elected { lease: i64 },
    /// The candidate failed before it was elected.
    Failed(String),
    /// The lease was granted with this TTL (may differ from the request).
    Granted { ttl: i64 },
}

/// What the main loop tells a candidate once it leads.
enum Command {
    /// Stop the keepalives right after the next acknowledged one, without
    /// revoking or resigning; answer with the moment they stopped.
    Kill(oneshot::Sender<Instant>),
}

/// A running candidate. Dropping `commands` (without a kill) makes it
/// resign and revoke its lease.
struct Candidate {
    commands: Option<oneshot::Sender<Command>>,
    task: JoinHandle<()>,
    /// Its lease, once elected.
    lease: Option<i64>,
}

pub(crate) async fn run(
    kind: TargetKind,
    endpoints: &[String],
    stop: Stop,
    candidates: usize,
    ttl: u64,
) -> anyhow::Result<FailoverRun> {
    if candidates < 2 {
        bail!("--candidates must be at least 2: a failover needs a next candidate");
    }
    let name = format!(
        "bench-election-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default()
    );
    let (obs_tx, mut observations) = mpsc::unbounded_channel();
    let observer = tokio::spawn(observe(kind, endpoints[0].clone(), name.clone(), obs_tx));
    let (note_tx, mut notes) = mpsc::unbounded_channel::<(usize, Note)>();
    let mut spawned = 0usize;
    let mut pool: Vec<(usize, Candidate)> = Vec::new();
    let spawn = |id: usize| {
        let (commands, inbox) = oneshot::channel();
        let endpoint = endpoints[id % endpoints.len()].clone();
        let others = endpoints.to_vec();
        let task = tokio::spawn(candidate(
            kind,
            endpoint,
            others,
            name.clone(),
            ttl,
            id,
            note_tx.clone(),
            inbox,
        ));
        Candidate {
            commands: Some(commands),
            task,
            lease: None,
        }
    };
    // They campaign concurrently; which of them queues first does not
    // matter, only that K are queued.
    for _ in 0..candidates {
        pool.push((spawned, spawn(spawned)));
        spawned += 1;
    }

    let mut hist = new_histogram();
    let mut rounds_ms = Vec::new();
    let mut errors = 0u64;
    let mut failed_rounds = 0u64;
    let mut granted_ttl = 0i64;
    let mut observed: Option<i64> = None;
    let started = Instant::now();
    let mut rounds = 0u64;
    let result: anyhow::Result<()> = async {
        loop {
            let more = match stop {
                Stop::After(d) => rounds == 0 || started.elapsed() < d,
                Stop::Total(n) => rounds < n,
            };
            if !more {
                return Ok(());
            }
            // Wait until a candidate is elected and the observer shows it.
            let deadline = Instant::now() + Duration::from_secs(ttl) + ROUND_SLACK;
            let leader = loop {
                let elected = pool.iter().find(|(_, c)| c.lease.is_some() && c.lease == observed);
                if let Some((id, c)) = elected {
                    break (*id, c.lease.unwrap_or_default());
                }
                tokio::select! {
                    note = notes.recv() => {
                        let (id, note) = note.context("every candidate ended")?;
                        match note {
                            Note::Elected { lease } => {
                                if let Some((_, c)) = pool.iter_mut().find(|(i, _)| *i == id) {
                                    c.lease = Some(lease);
                                }
                            }
                            Note::Granted { ttl } => granted_ttl = ttl,
                            Note::Failed(err) => {
                                errors += 1;
                                eprintln!("fenced-bench: candidate {id} failed: {err}");
                                pool.retain(|(i, _)| *i != id);
                                pool.push((spawned, spawn(spawned)));
                                spawned += 1;
                            }
                        }
                    }
                    obs = observations.recv() => {
                        let (_, lease) = obs.context("the observer ended")??;
                        if lease.is_some() {
                            observed = lease;
                        }
                    }
                    () = tokio::time::sleep_until(deadline) => {
                        bail!("no leader observed within {:?}", deadline.saturating_duration_since(started));
                    }
                }
            };
            // Kill it right after its next acknowledged keepalive.
            let (leader_id, leader_lease) = leader;
            let index = pool
                .iter()
                .position(|(id, _)| *id == leader_id)
                .context("the leader left the pool")?;
            let (_, mut victim) = pool.remove(index);
            let (reply, killed) = oneshot::channel();
            victim
                .commands
                .take()
                .context("the leader was already told")?
                .send(Command::Kill(reply))
                .map_err(|_| anyhow::anyhow!("the leader's task ended"))?;
            let killed_at = match tokio::time::timeout(Duration::from_secs(ttl) * 2, killed).await {
                Ok(Ok(at)) => at,
                _ => bail!("the leader did not get a keepalive acknowledged within 2 x TTL"),
            };
            let _ = victim.task.await;
            // Wait for the observer to show someone else.
            let deadline = killed_at + Duration::from_secs(ttl) + ROUND_SLACK;
            let next = loop {
                tokio::select! {
                    obs = observations.recv() => {
                        let (at, lease) = obs.context("the observer ended")??;
                        if lease.is_some() {
                            observed = lease;
                        }
                        if lease.is_some() && lease != Some(leader_lease) {
                            break Some(at);
                        }
                    }
                    note = notes.recv() => {
                        let (id, note) = note.context("every candidate ended")?;
                        match note {
                            Note::Elected { lease } => {
                                if let Some((_, c)) = pool.iter_mut().find(|(i, _)| *i == id) {
                                    c.lease = Some(lease);
                                }
                            }
                            Note::Granted { ttl } => granted_ttl = ttl,
                            Note::Failed(err) => {
                                errors += 1;
                                eprintln!("fenced-bench: candidate {id} failed: {err}");
                                pool.retain(|(i, _)| *i != id);
                            }
                        }
                    }
                    () = tokio::time::sleep_until(deadline) => break None,
                }
            };
            match next {
                Some(at) => {
                    let took = at.saturating_duration_since(killed_at);
                    let _ = hist.record(took.as_micros() as u64);
                    rounds_ms.push((took.as_micros() as f64 / 1000.0).round());
                }
                None => {
                    errors += 1;
                    failed_rounds += 1;
                    eprintln!("fenced-bench: no new leader observed within TTL + {ROUND_SLACK:?} of the kill");
                    if failed_rounds >= MAX_FAILED_ROUNDS {
                        bail!("{failed_rounds} rounds without a new leader");
                    }
                }
            }
            rounds += 1;
            // Back to K candidates: the newcomer queues behind the others.
            while pool.len() < candidates {
                pool.push((spawned, spawn(spawned)));
                spawned += 1;
            }
        }
    }
    .await;
    let seconds = started.elapsed().as_secs_f64();
    observer.abort();
    // The rest resign and revoke their leases (commands dropped).
    let tasks: Vec<_> = pool.into_iter().map(|(_, c)| c.task).collect();
    drop(notes);
    let _ = tokio::time::timeout(Duration::from_secs(10), futures::future::join_all(tasks)).await;
    result?;
    Ok(FailoverRun {
        hist,
        rounds_ms,
        errors,
        seconds,
        granted_ttl,
    })
}

/// One observation: when it was received, and the leader's lease (`None`:
/// no leader).
type Observed = anyhow::Result<(Instant, Option<i64>)>;

/// Follows the election from `endpoint`, sending each observation with the
/// moment it was received.
async fn observe(
    kind: TargetKind,
    endpoint: String,
    name: String,
    out: mpsc::UnboundedSender<Observed>,
) {
    let result: anyhow::Result<()> = async {
        match kind {
            TargetKind::Fenced => {
                let client = fenced_client::Client::new([endpoint.as_str()])?;
                let mut stream = client.observe(name).await?;
                while let Some(observation) = stream.next().await {
                    let observation = observation?;
                    let at = Instant::now();
                    let lease = observation.leader.map(|leader| leader.lease);
                    if out.send(Ok((at, lease))).is_err() {
                        return Ok(());
                    }
                }
                bail!("the observe stream ended")
            }
            #[cfg(feature = "etcd")]
            TargetKind::Etcd => {
                let client = etcd_client::Client::connect([url(&endpoint)], None).await?;
                let mut stream = client.election_client().observe(name).await?;
                while let Some(response) = stream.message().await? {
                    let at = Instant::now();
                    let lease = response.kv().map(|kv| kv.lease());
                    if out.send(Ok((at, lease))).is_err() {
                        return Ok(());
                    }
                }
                bail!("the observe stream ended")
            }
            #[cfg(not(feature = "etcd"))]
            TargetKind::Etcd => bail!("this fenced-bench was built without the etcd target"),
        }
    }
    .await;
    if let Err(err) = result {
        let _ = out.send(Err(err.context("observer")));
    }
}

/// One candidate: grant a lease and keep it alive, campaign, report the
/// election, then wait for the kill (or for the end of the run, when it
/// resigns and revokes).
#[allow(clippy::too_many_arguments)]
async fn candidate(
    kind: TargetKind,
    endpoint: String,
    endpoints: Vec<String>,
    name: String,
    ttl: u64,
    id: usize,
    notes: mpsc::UnboundedSender<(usize, Note)>,
    commands: oneshot::Receiver<Command>,
) {
    let value = format!("candidate-{id}");
    let result = match kind {
        TargetKind::Fenced => {
            fenced_candidate(
                &endpoint, &endpoints, &name, ttl, value, id, &notes, commands,
            )
            .await
        }
        #[cfg(feature = "etcd")]
        TargetKind::Etcd => {
            etcd_candidate(&endpoint, &name, ttl, value, id, &notes, commands).await
        }
        #[cfg(not(feature = "etcd"))]
        TargetKind::Etcd => Err(anyhow::anyhow!(
            "this fenced-bench was built without the etcd target"
        )),
    };
    if let Err(err) = result {
        let _ = notes.send((id, Note::Failed(format!("{err:#}"))));
    }
}

#[allow(clippy::too_many_arguments)]
async fn fenced_candidate(
    endpoint: &str,
    endpoints: &[String],
    name: &str,
    ttl: u64,
    value: String,
    id: usize,
    notes: &mpsc::UnboundedSender<(usize, Note)>,
    mut commands: oneshot::Receiver<Command>,
) -> anyhow::Result<()> {
    // Its own client (its own connections), starting at its endpoint.
    let order = std::iter::once(endpoint.to_owned())
        .chain(endpoints.iter().filter(|e| *e != endpoint).cloned());
    let client = fenced_client::Client::new(order)?;
    let session = client
        .session(Duration::from_secs(ttl))
        .await
        .context("session")?;
    let _ = notes.send((
        id,
        Note::Granted {
            ttl: session.ttl().as_secs() as i64,
        },
    ));
    let leadership = tokio::select! {
        elected = session.campaign(name, value) => elected.context("campaign")?,
        _ = &mut commands => {
            // The run ended before this candidate was elected.
            session.close().await?;
            return Ok(());
        }
    };
    let _ = notes.send((
        id,
        Note::Elected {
            lease: session.lease_id(),
        },
    ));
    match commands.await {
        Ok(Command::Kill(reply)) => {
            let mut acks = session.status_changes();
            let before = acks.borrow().acks();
            while acks.changed().await.is_ok() && acks.borrow().acks() <= before {}
            let at = Instant::now();
            // No resign on drop: the leadership must end by expiry only.
            std::mem::forget(leadership);
            // Stops the keepalive task; the lease is not revoked.
            drop(session);
            let _ = reply.send(at);
        }
        Err(_) => {
            let _ = leadership.resign().await;
            session.close().await?;
        }
    }
    Ok(())
}

#[cfg(feature = "etcd")]
async fn etcd_candidate(
    endpoint: &str,
    name: &str,
    ttl: u64,
    value: String,
    id: usize,
    notes: &mpsc::UnboundedSender<(usize, Note)>,
    mut commands: oneshot::Receiver<Command>,
) -> anyhow::Result<()> {
    let client = etcd_client::Client::connect([url(endpoint)], None).await?;
    let granted = client
        .lease_client()
        .grant(ttl as i64, None)
        .await
        .context("lease grant")?;
    let lease = granted.id();
    let _ = notes.send((id, Note::Granted { ttl: granted.ttl() }));
    let (acks_tx, mut acks) = tokio::sync::watch::channel(0u64);
    let keepalive = tokio::spawn(etcd_keepalive(
        client.lease_client(),
        lease,
        Duration::from_secs(ttl) / 3,
        acks_tx,
    ))
    .abort_handle();
    let revoke = |client: etcd_client::Client, keepalive: tokio::task::AbortHandle| async move {
        keepalive.abort();
        let _ = client.lease_client().revoke(lease).await;
    };
    let mut election = client.election_client();
    let elected = tokio::select! {
        elected = election.campaign(name, value, lease) => elected,
        _ = &mut commands => {
            revoke(client, keepalive).await;
            return Ok(());
        }
    };
    if let Err(err) = elected {
        revoke(client, keepalive).await;
        return Err(anyhow::Error::from(err).context("campaign"));
    }
    let _ = notes.send((id, Note::Elected { lease }));
    match commands.await {
        Ok(Command::Kill(reply)) => {
            let before = *acks.borrow();
            while acks.changed().await.is_ok() && *acks.borrow() <= before {}
            let at = Instant::now();
            // Drops the keeper and its stream: no more keepalives, and
            // nothing revokes the lease.
            keepalive.abort();
            let _ = reply.send(at);
        }
        Err(_) => revoke(client, keepalive).await,
    }
    Ok(())
}

/// Keeps an etcd lease alive every `interval`, one keepalive in flight at
/// a time (fenced-client's schedule), counting acknowledgements.
#[cfg(feature = "etcd")]
async fn etcd_keepalive(
    mut leases: etcd_client::LeaseClient,
    lease: i64,
    interval: Duration,
    acks: tokio::sync::watch::Sender<u64>,
) -> anyhow::Result<()> {
    // Sends the first keepalive and waits for its answer.
    let (mut keeper, mut answers) = leases.keep_alive(lease).await?;
    acks.send_modify(|n| *n += 1);
    loop {
        tokio::time::sleep(interval).await;
        keeper.keep_alive().await?;
        match answers.message().await? {
            Some(answer) if answer.ttl() > 0 => acks.send_modify(|n| *n += 1),
            _ => bail!("lease {lease} is gone"),
        }
    }
}

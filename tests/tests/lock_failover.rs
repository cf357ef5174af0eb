//! Locks across faults of real members: holders that keep their sessions
//! alive keep their locks through a leader crash and a leader pause, and a
//! holder cut off with a minority loses its session before the majority can
//! grant its lock to anyone else.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use fenced_client::pb::{self, lease_client::LeaseClient};
use fenced_client::{Client, ClientConfig, Session};
use fenced_tests::{Cluster, wait_until};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const LEADER_TIMEOUT: Duration = Duration::from_secs(15);
/// The default election timeout of the test members.
const ELECTION_TIMEOUT: Duration = Duration::from_secs(1);

/// A client over every member, with `first` tried first.
fn client_starting_at(cluster: &Cluster, first: u64) -> anyhow::Result<Client> {
    Ok(ClientConfig::new(cluster.endpoints_from(first))
        .request_timeout(Duration::from_secs(3))
        .build()?)
}

/// Waits until every session has had `more` keepalives acknowledged since
/// now: proof that its lease is being kept alive by whoever leads.
async fn acks_advance(sessions: &[&Session], more: u64, what: &str) -> anyhow::Result<()> {
    let targets: Vec<u64> = sessions.iter().map(|s| s.status().acks() + more).collect();
    wait_until(Duration::from_secs(20), what, || {
        let done = sessions
            .iter()
            .zip(&targets)
            .all(|(s, target)| s.status().acks() >= *target);
        async move { done }
    })
    .await
}

async fn holder_token(client: &Client, name: &str) -> anyhow::Result<Vec<(i64, i64)>> {
    let view = client.lock_describe(name).await?;
    Ok(view.holders.iter().map(|h| (h.lease, h.token)).collect())
}

#[tokio::test]
async fn holders_keep_their_locks_through_a_leader_crash_and_a_leader_pause() -> anyhow::Result<()>
{
    let cluster = Cluster::start(3).await?;
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    // The holders' clients start at the leader, so its crash forces their
    // keepalives over to the other members.
    let ttl = Duration::from_secs(5);
    let a = client_starting_at(&cluster, leader)?.session(ttl).await?;
    let b = client_starting_at(&cluster, leader)?.session(ttl).await?;
    let alpha = a.lock("alpha").await?;
    let beta = b.lock("beta").await?;
    let (alpha_token, beta_token) = (alpha.token(), beta.token());
    let (a_lease, b_lease) = (a.lease_id(), b.lease_id());
    // A waiter behind A proves nothing is granted while A is alive.
    let waiter_client = client_starting_at(&cluster, leader)?;
    let c = waiter_client.session(ttl).await?;
    let c_lease = c.lease_id();
    let waiting = tokio::spawn(async move {
        let guard = c.lock("alpha").await;
        (c, guard)
    });
    let observer = cluster.client();
    wait_until(Duration::from_secs(5), "C to queue behind A", || {
        let observer = observer.clone();
        async move {
            observer
                .lock_describe("alpha")
                .await
                .is_ok_and(|d| d.waiters.iter().any(|w| w.lease == c_lease))
        }
    })
    .await?;
    let expect_unchanged = |when: &'static str| {
        let observer = observer.clone();
        async move {
            assert_eq!(
                holder_token(&observer, "alpha").await?,
                vec![(a_lease, alpha_token)],
                "alpha {when}"
            );
            assert_eq!(
                holder_token(&observer, "beta").await?,
                vec![(b_lease, beta_token)],
                "beta {when}"
            );
            anyhow::Ok(())
        }
    };

    // 1. SIGKILL the leader.
    cluster.kill(leader).await?;
    let second = cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    acks_advance(&[&a, &b], 3, "keepalives through the new leader").await?;
    assert!(!a.is_lost() && !b.is_lost(), "a session was lost");
    expect_unchanged("after the leader crash").await?;
    assert!(!waiting.is_finished(), "C was granted while A held alpha");
    cluster.restart(leader)?;
    cluster.wait_for_leader(LEADER_TIMEOUT).await?;

    // 2. SIGSTOP the (new) leader for three election timeouts. A keepalive
    // sent into its socket while it is frozen must not be acknowledged by
    // it in its old term once it wakes up deposed.
    let paused = cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    let old_term = cluster.status(paused).await?.raft_term;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.endpoint(paused)))?
            .connect()
            .await?;
    let (tx, rx) = mpsc::channel(4);
    let mut stale = LeaseClient::new(channel)
        .keep_alive(ReceiverStream::new(rx))
        .await?
        .into_inner();
    cluster.pause(paused).await?;
    tx.send(pb::LeaseKeepAliveRequest { id: a.lease_id() })
        .await?;
    tokio::time::sleep(ELECTION_TIMEOUT * 3).await; // the fault's duration
    cluster.resume(paused)?;
    let answer = tokio::time::timeout(Duration::from_secs(10), stale.message())
        .await
        .context("the woken member never answered the keepalive")??
        .context("stream ended")?;
    let answered_term = answer.header.as_ref().map_or(0, |h| h.raft_term);
    assert!(
        answer.code != 0 || answered_term > old_term,
        "the deposed leader acknowledged a keepalive in its old term {old_term}: {answer:?}"
    );
    let third = cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    acks_advance(&[&a, &b], 3, "keepalives after the pause").await?;
    assert!(!a.is_lost() && !b.is_lost(), "a session was lost");
    expect_unchanged("after the leader pause").await?;
    assert!(!waiting.is_finished(), "C was granted while A held alpha");
    eprintln!("leaders: {leader} (killed), {second}, {paused} (paused), {third}");

    // The lock still moves on when A lets go, with a higher token.
    alpha.release().await?;
    let (c, granted) = waiting.await?;
    let granted = granted?;
    assert!(granted.token() > alpha_token);
    beta.release().await?;
    drop(granted);
    c.close().await?;
    a.close().await?;
    b.close().await?;
    Ok(())
}

#[tokio::test]
async fn a_holder_cut_off_with_a_minority_loses_its_session_before_the_lock_moves()
-> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    // The holder's client reaches only the leader, which is about to be cut
    // off: the most dangerous minority, a leader that does not know yet.
    let holder_client = ClientConfig::new([cluster.endpoint(leader)])
        .request_timeout(Duration::from_secs(2))
        .build()?;
    let ttl = Duration::from_secs(3);
    let holder = holder_client.session(ttl).await?;
    let held = holder.lock("gamma").await?;
    let majority: Vec<String> = cluster
        .ids()
        .filter(|&id| id != leader)
        .map(|id| cluster.endpoint(id))
        .collect();
    let other = ClientConfig::new(majority).build()?.session(ttl).await?;
    let other_lease = other.lease_id();
    let contender = tokio::spawn(async move {
        let guard = other.lock("gamma").await;
        (Instant::now(), other, guard)
    });
    let observer = cluster.client();
    wait_until(Duration::from_secs(5), "the contender to queue", || {
        let observer = observer.clone();
        async move {
            observer
                .lock_describe("gamma")
                .await
                .is_ok_and(|d| d.waiters.iter().any(|w| w.lease == other_lease))
        }
    })
    .await?;

    let lost = holder.lost();
    cluster.isolate(leader);
    let cut_at = Instant::now();
    let lost_reason = lost.await;
    let lost_at = Instant::now();
    let (granted_at, other, granted) = contender.await?;
    let granted = granted?;
    assert!(
        lost_at < granted_at,
        "the holder learned it lost the lock {:?} after the cut, but the contender \
         was granted {:?} after the cut ({lost_reason:?})",
        lost_at - cut_at,
        granted_at - cut_at
    );
    assert!(granted.token() > held.token());
    // The lock moved no earlier than the TTL after the cut allows.
    assert!(
        granted_at - cut_at >= ttl - ttl / 3,
        "granted {:?} after the cut, TTL {ttl:?}",
        granted_at - cut_at
    );
    cluster.heal_all();
    drop(held);
    granted.release().await?;
    other.close().await?;
    Ok(())
}

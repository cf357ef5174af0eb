//! Membership changes on a real cluster that keeps serving.
//!
//! - While writers and a lock holder run: a 4th member joins (`fenced
//!   --join`), catches up from a snapshot and is promoted; an original
//!   member is removed and exits cleanly; leadership moves to the new
//!   member. No acknowledged write is lost, and the lock holder's lease
//!   never expires.
//! - Bad changes are refused with the right code and change nothing,
//!   including a second change while one is in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use fenced_client::pb::RangeRequest;
use fenced_client::{Client, ClientConfig};
use fenced_tests::{Cluster, ClusterConfig, wait_for};
use tonic::Code;

const TIMEOUT: Duration = Duration::from_secs(60);
const SNAPSHOT_ARGS: [&str; 4] = ["--snapshot-interval", "2000", "--snapshot-tail", "500"];

/// Puts keys `w/N` until told to stop; returns the acknowledged ones.
async fn writer(client: Client, stop: Arc<AtomicBool>, next: Arc<AtomicU64>) -> Vec<String> {
    let mut acknowledged = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let key = format!("w/{:07}", next.fetch_add(1, Ordering::Relaxed));
        if client.put(key.clone(), "v").await.is_ok() {
            acknowledged.push(key);
        }
    }
    acknowledged
}

async fn members(client: &Client) -> anyhow::Result<Vec<(u64, bool)>> {
    Ok(client
        .member_list()
        .await?
        .members
        .iter()
        .map(|m| (m.id, m.learner))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn join_promote_remove_and_transfer_while_serving() -> anyhow::Result<()> {
    let mut cluster = Cluster::start_with(ClusterConfig::new(3).args(SNAPSHOT_ARGS)).await?;
    let client = cluster.client();

    // Traffic: writers, and a session that takes and releases a lock.
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..4)
        .map(|_| tokio::spawn(writer(client.clone(), stop.clone(), next.clone())))
        .collect();
    let session = client.session(Duration::from_secs(5)).await?;
    let lease = session.lease_id();
    let locker = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut cycles = 0u64;
            let mut tokens = Vec::new();
            // A call in flight when its member is removed or the leader
            // changes can fail with an unknown outcome, as a put can; a
            // real holder retries (acquiring again with the same lease
            // finds the same grant).
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let guard = match session.lock("membership-test").await {
                    Ok(guard) => guard,
                    Err(err) => {
                        failures.push(err.to_string());
                        continue;
                    }
                };
                tokens.push(guard.token());
                match guard.release().await {
                    Ok(()) => cycles += 1,
                    Err(err) => failures.push(err.to_string()),
                }
            }
            anyhow::Ok((session, cycles, tokens, failures))
        })
    };
    // Enough writes for snapshots to be taken, so the joiner needs one.
    wait_for(TIMEOUT, "5,000 writes", || async {
        ensure!(next.load(Ordering::Relaxed) > 5_000, "not yet");
        Ok(())
    })
    .await?;

    // Join member 4; it is promoted once caught up.
    cluster.join(4, 2, &SNAPSHOT_ARGS)?;
    wait_for(TIMEOUT, "member 4 to be a voter", || async {
        let list = members(&client).await?;
        ensure!(list.contains(&(4, false)), "members: {list:?}");
        Ok(())
    })
    .await?;
    let joined_log = std::fs::read_to_string(cluster.log_path(4))?;
    ensure!(
        joined_log.contains("installed a snapshot from the leader"),
        "member 4 did not catch up from a snapshot:\n{joined_log}"
    );

    // Remove member 1 (maybe the leader); it stops by itself, cleanly.
    let after = client.member_remove(1).await?;
    ensure!(after.members.iter().all(|m| m.id != 1));
    let exit = wait_for(TIMEOUT, "member 1 to exit", || async {
        cluster.exit_status(1).context("still running")
    })
    .await?;
    ensure!(exit.success(), "member 1 exited with {exit}");
    let log = std::fs::read_to_string(cluster.log_path(1))?;
    ensure!(log.contains("this member was removed from the cluster"));

    // Leadership to the new member.
    let moved = client.transfer_leader(4).await?;
    ensure!(moved.leader == 4);
    ensure!(cluster.status(4).await?.leader == 4);

    // Refusals leave the cluster as it is.
    let before = members(&client).await?;
    let refusals = [
        (
            client.member_add(2, "127.0.0.1:1", "", false).await.err(),
            Code::AlreadyExists,
        ),
        (
            client.member_add(1, "127.0.0.1:1", "", false).await.err(),
            Code::FailedPrecondition,
        ),
        (
            client.member_promote(2).await.err(),
            Code::FailedPrecondition,
        ),
        (client.member_remove(99).await.err(), Code::NotFound),
        (
            client.member_add(5, "no-port", "", false).await.err(),
            Code::InvalidArgument,
        ),
    ];
    for (i, (error, code)) in refusals.into_iter().enumerate() {
        let error = error.with_context(|| format!("refusal {i} was accepted"))?;
        ensure!(
            error.code() == code,
            "refusal {i}: {error} (wanted {code:?})"
        );
    }
    ensure!(members(&client).await? == before);

    // Stop the traffic: every acknowledged write is there, the lease lived.
    let serving = next.load(Ordering::Relaxed);
    wait_for(TIMEOUT, "writes to go on after the changes", || async {
        ensure!(next.load(Ordering::Relaxed) > serving + 500, "not yet");
        Ok(())
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    for w in writers {
        acknowledged.extend(w.await?);
    }
    let (session, cycles, tokens, failures) = locker.await??;
    ensure!(!session.is_lost(), "the lock session was lost");
    ensure!(cycles > 10, "only {cycles} lock cycles");
    ensure!(
        tokens.windows(2).all(|w| w[0] <= w[1]),
        "a fencing token went down: {tokens:?}"
    );
    println!("lock calls that failed with an unknown outcome: {failures:?}");
    let ttl = client.lease_time_to_live(lease, false).await?.ttl;
    ensure!(ttl > 0, "lease {lease} expired (ttl {ttl})");
    session.close().await?;

    let digests: Vec<(u64, u64, u64)> = cluster
        .digests_at_one_index(TIMEOUT)
        .await?
        .values()
        .map(|s| (s.member_id, s.applied_index, s.state_digest))
        .collect();
    ensure!(
        digests
            .windows(2)
            .all(|w| (w[0].1, w[0].2) == (w[1].1, w[1].2)),
        "members 2, 3 and 4 differ: {digests:?}"
    );
    let new_member = ClientConfig::new([cluster.endpoint(4)]).build()?;
    let stored = new_member
        .range(RangeRequest {
            key: b"w/".to_vec(),
            prefix: true,
            keys_only: true,
            ..RangeRequest::default()
        })
        .await?;
    let stored: std::collections::BTreeSet<Vec<u8>> =
        stored.kvs.into_iter().map(|kv| kv.key).collect();
    let missing: Vec<&String> = acknowledged
        .iter()
        .filter(|k| !stored.contains(k.as_bytes()))
        .collect();
    ensure!(
        missing.is_empty(),
        "{} of {} acknowledged writes are missing, e.g. {:?}",
        missing.len(),
        acknowledged.len(),
        missing.first()
    );
    println!(
        "{} acknowledged writes, {cycles} lock cycles, all kept",
        acknowledged.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_change_at_a_time_and_no_removing_the_last_voter() -> anyhow::Result<()> {
    // A long election timeout keeps the leader leading while its followers
    // are paused, so a change stays in flight.
    let cluster =
        Cluster::start_with(ClusterConfig::new(3).args(["--election-ticks", "600"])).await?;
    let leader = cluster.wait_for_leader(TIMEOUT).await?;
    let followers: Vec<u64> = cluster.ids().filter(|&id| id != leader).collect();
    for &id in &followers {
        cluster.pause(id).await?;
    }
    let on_leader = ClientConfig::new([cluster.endpoint(leader)])
        .request_timeout(Duration::from_millis(500))
        .build()?;
    let first = on_leader.member_add(7, "127.0.0.1:9", "", false).await;
    ensure!(first.is_err(), "a change committed without a quorum");
    let second = on_leader
        .member_add(8, "127.0.0.1:10", "", false)
        .await
        .err()
        .context("a second change was accepted while one was in flight")?;
    ensure!(
        second.code() == Code::FailedPrecondition && second.to_string().contains("in flight"),
        "{second}"
    );
    for &id in &followers {
        cluster.resume(id)?;
    }
    // The first change commits once the quorum is back; the second never
    // happened.
    let client = cluster.client();
    wait_for(TIMEOUT, "the first change to be applied", || async {
        let list = members(&client).await?;
        ensure!(list.contains(&(7, true)), "members: {list:?}");
        ensure!(
            !list.iter().any(|m| m.0 == 8),
            "member 8 was added: {list:?}"
        );
        Ok(())
    })
    .await?;
    // A learner that never started cannot be promoted.
    let lagging = client.member_promote(7).await.err().context("promoted")?;
    ensure!(
        lagging.code() == Code::FailedPrecondition && lagging.to_string().contains("caught up"),
        "{lagging}"
    );
    client.member_remove(7).await?;

    // Down to one voter, which cannot be removed. Through the leader: a
    // client whose current member is the one being removed sees its
    // connection close (CANCELLED) mid-call.
    let via_leader = ClientConfig::new([cluster.endpoint(leader)]).build()?;
    let others: Vec<u64> = cluster.ids().filter(|&id| id != leader).collect();
    for id in others {
        via_leader.member_remove(id).await?;
    }
    let last = via_leader
        .member_remove(leader)
        .await
        .err()
        .context("the last voter was removed")?;
    ensure!(
        last.code() == Code::FailedPrecondition && last.to_string().contains("last voter"),
        "{last}"
    );
    Ok(())
}

//! Smoke tests of the harness against the real server: a member starts, a
//! leader is found, the client reads its own writes, and the fault proxy
//! really partitions a three-member cluster.

use std::time::Duration;

use anyhow::Context as _;
use fenced_client::ClientConfig;
use fenced_tests::{Cluster, wait_for};

const LEADER_TIMEOUT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn one_member_serves_put_and_get() -> anyhow::Result<()> {
    let cluster = Cluster::start(1).await?;
    assert_eq!(cluster.wait_for_leader(LEADER_TIMEOUT).await?, 1);

    let client = cluster.client();
    let put = client.put("greeting", "hello").await?;
    let kv = client
        .get("greeting")
        .await?
        .context("key missing after put")?;
    assert_eq!(kv.value, b"hello");
    assert_eq!(kv.version, 1);
    assert_eq!(Some(kv.mod_revision), put.header.map(|h| h.revision));
    Ok(())
}

#[tokio::test]
async fn an_isolated_leader_is_replaced_and_rejoins_after_healing() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let old_leader = cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    cluster.client().put("before", "1").await?;

    cluster.isolate(old_leader);
    let new_leader = wait_for(LEADER_TIMEOUT, "a new leader", || async {
        let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await?;
        match leader != old_leader {
            true => Ok(leader),
            false => Err(anyhow::anyhow!("member {old_leader} still leads")),
        }
    })
    .await?;
    // The majority side takes writes; the isolated member cannot.
    cluster.client_of(new_leader).put("during", "2").await?;
    let isolated = cluster.client_of(old_leader);
    let lost = ClientConfig::new([cluster.endpoint(old_leader)])
        .retry(false)
        .request_timeout(Duration::from_secs(2))
        .build()?
        .put("lost", "3")
        .await;
    assert!(lost.is_err(), "an isolated member accepted a write");

    cluster.heal_all();
    // Once healed, the old leader catches up and serves the write it missed.
    wait_for(LEADER_TIMEOUT, "the healed member to catch up", || async {
        let status = cluster.status(old_leader).await?;
        anyhow::ensure!(status.leader != 0, "member {old_leader} knows no leader");
        let kv = isolated.get("during").await?;
        kv.context("write made during the partition not there yet")
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn members_can_be_paused_killed_stopped_and_restarted() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    let follower = cluster
        .ids()
        .find(|&id| id != leader)
        .context("a follower")?;
    let client = cluster.client();

    cluster.pause(follower).await?;
    assert!(!cluster.is_live(follower));
    client.put("while-paused", "1").await?;
    cluster.resume(follower)?;
    assert!(cluster.is_live(follower));

    cluster.kill(follower).await?;
    assert!(cluster.status(follower).await.is_err());
    client.put("while-down", "2").await?;
    cluster.restart(follower)?;
    let caught_up = cluster.client_of(follower);
    wait_for(
        LEADER_TIMEOUT,
        "the restarted member to catch up",
        || async { caught_up.get("while-down").await?.context("not yet") },
    )
    .await?;

    // SIGTERM is a clean shutdown, and the others elect a new leader.
    let status = cluster.stop(leader).await?;
    assert!(status.success(), "SIGTERM exit: {status}");
    let new_leader = cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    assert_ne!(new_leader, leader);
    client.put("after-stop", "3").await?;
    Ok(())
}

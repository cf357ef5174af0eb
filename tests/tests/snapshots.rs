//! Snapshots and log compaction on real 3-member clusters.
//!
//! - 100,000 writes: the raft log on every member stays within the snapshot
//!   interval plus the kept tail; a member that was down for the first
//!   50,000 catches up by installing a snapshot and ends with the same state
//!   digest as the others; a member restarted at the end comes back (from
//!   its snapshot plus the tail) with everything.
//! - A follower SIGKILLed while it receives and installs a snapshot comes
//!   back consistent and catches up.

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use fenced_client::Client;
use fenced_client::pb::{PutRequest, RangeRequest, StatusResponse};
use fenced_tests::{Cluster, ClusterConfig, wait_for};
use futures::StreamExt as _;

/// Generous: debug builds on a loaded 2-core machine encode, send and
/// decode snapshots of several MB slowly.
const TIMEOUT: Duration = Duration::from_secs(120);
/// Puts in flight at once.
const CONCURRENCY: usize = 64;

/// Writes keys `{prefix}{i}` for `i` in `range`, `CONCURRENCY` at a time;
/// every put must be acknowledged.
async fn write(
    client: &Client,
    prefix: &str,
    range: std::ops::Range<u64>,
    value: &[u8],
) -> anyhow::Result<()> {
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(range)
        .map(|i| async move {
            let request = PutRequest {
                key: format!("{prefix}{i:07}").into_bytes(),
                value: value.to_vec(),
                ..PutRequest::default()
            };
            client
                .put_with(request)
                .await
                .map(|_| ())
                .with_context(|| format!("put {prefix}{i}"))
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect()
}

/// How many keys start with `prefix`, read linearizably.
async fn count(client: &Client, prefix: &str) -> anyhow::Result<i64> {
    let response = client
        .range(RangeRequest {
            key: prefix.as_bytes().to_vec(),
            prefix: true,
            count_only: true,
            ..RangeRequest::default()
        })
        .await?;
    Ok(response.count)
}

/// Every live member has applied the same index and has the same digest.
/// A difference is reported with what differs.
async fn converged_digests(cluster: &Cluster) -> anyhow::Result<Vec<StatusResponse>> {
    let statuses: Vec<StatusResponse> = cluster
        .digests_at_one_index(TIMEOUT)
        .await?
        .into_values()
        .collect();
    let digests: Vec<(u64, u64, u64)> = statuses
        .iter()
        .map(|s| (s.member_id, s.applied_index, s.state_digest))
        .collect();
    let first = digests[0];
    if digests.iter().all(|d| (d.1, d.2) == (first.1, first.2)) {
        return Ok(statuses);
    }
    // Say what differs: keys, revision, member tables. A read that fails
    // here is reported with the rest, not instead of it.
    let mut report =
        format!("members differ at one applied index (member, index, digest): {digests:?}");
    let reference = match cluster.contents(first.0).await {
        Ok(contents) => contents,
        Err(err) => anyhow::bail!("{report}\n{err:#}"),
    };
    for d in &digests[1..] {
        let other = match cluster.contents(d.0).await {
            Ok(contents) => contents,
            Err(err) => {
                report += &format!("\n{err:#}");
                continue;
            }
        };
        let diff = reference
            .kvs
            .iter()
            .zip(&other.kvs)
            .find(|(a, b)| a != b)
            .map(|(a, b)| format!("{a:?} vs {b:?}"));
        report += &format!(
            "\nmember {} vs {}: revisions {} / {}, {} / {} keys, first difference {diff:?}",
            first.0,
            d.0,
            reference.revision,
            other.revision,
            reference.kvs.len(),
            other.kvs.len()
        );
    }
    for d in &digests {
        match cluster.client_of(d.0).member_list().await {
            Ok(list) => report += &format!("\nmember {} sees members {:?}", d.0, list.members),
            Err(err) => report += &format!("\nmember {}: member list: {err:#}", d.0),
        }
    }
    anyhow::bail!(report)
}

/// The log of every member spans at most interval + tail, plus what can
/// arrive while a snapshot is being written.
fn check_log_bound(statuses: &[StatusResponse], interval: u64, tail: u64) -> anyhow::Result<()> {
    const IN_FLIGHT: u64 = 2_000;
    for s in statuses {
        let span = s.last_index.saturating_sub(s.first_index) + 1;
        ensure!(
            span <= interval + tail + IN_FLIGHT,
            "member {} holds {span} log entries ({}..={}), more than interval {interval} + tail \
             {tail} + {IN_FLIGHT}",
            s.member_id,
            s.first_index,
            s.last_index
        );
    }
    Ok(())
}

/// Every live member has recorded a snapshot past `index` (they are
/// written in the background, so this waits).
async fn wait_snapshots(cluster: &Cluster, index: u64) -> anyhow::Result<()> {
    let live: Vec<u64> = cluster.ids().filter(|&id| cluster.is_live(id)).collect();
    for id in live {
        wait_for(
            TIMEOUT,
            &format!("member {id} to snapshot past {index}"),
            || async {
                let status = cluster.status(id).await?;
                ensure!(
                    status.snapshot_index > index,
                    "snapshot index {}",
                    status.snapshot_index
                );
                Ok(())
            },
        )
        .await?;
    }
    Ok(())
}

fn log_contains(cluster: &Cluster, id: u64, needle: &str) -> bool {
    std::fs::read_to_string(cluster.log_path(id)).is_ok_and(|log| log.contains(needle))
}

fn log_count(cluster: &Cluster, id: u64, needle: &str) -> usize {
    std::fs::read_to_string(cluster.log_path(id)).map_or(0, |log| log.matches(needle).count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn log_stays_bounded_and_a_member_down_for_50k_writes_catches_up_by_snapshot()
-> anyhow::Result<()> {
    const INTERVAL: u64 = 10_000;
    const TAIL: u64 = 5_000;
    let cluster = Cluster::start_with(ClusterConfig::new(3).args([
        "--snapshot-interval",
        &INTERVAL.to_string(),
        "--snapshot-tail",
        &TAIL.to_string(),
    ]))
    .await?;
    let client = cluster.client();

    // Member 3 misses the first 50,000 writes.
    cluster.kill(3).await?;
    for chunk in 0..5 {
        write(&client, "k/", chunk * 10_000..(chunk + 1) * 10_000, b"v").await?;
        for id in [1, 2] {
            check_log_bound(&[cluster.status(id).await?], INTERVAL, TAIL)?;
        }
    }
    let leader = cluster.wait_for_leader(TIMEOUT).await?;
    let first = cluster.status(leader).await?.first_index;
    ensure!(
        first > 10_000,
        "the leader's log should have been compacted far past member 3 (first index {first})"
    );

    cluster.restart(3)?;
    let statuses = converged_digests(&cluster).await?;
    ensure!(
        log_contains(&cluster, 3, "installed a snapshot from the leader"),
        "member 3 caught up without a snapshot; its log:\n{}",
        std::fs::read_to_string(cluster.log_path(3)).unwrap_or_default()
    );
    ensure!(
        count(&cluster.client_of(3), "k/").await? == 50_000,
        "member 3 does not see the 50,000 keys"
    );
    check_log_bound(&statuses, INTERVAL, TAIL)?;
    wait_snapshots(&cluster, 40_000).await?;

    // The other 50,000, with every member up.
    for chunk in 5..10 {
        write(&client, "k/", chunk * 10_000..(chunk + 1) * 10_000, b"v").await?;
    }
    let statuses = converged_digests(&cluster).await?;
    check_log_bound(&statuses, INTERVAL, TAIL)?;
    wait_snapshots(&cluster, 90_000).await?;

    // A restart reads the latest snapshot and replays at most the log.
    cluster.kill(1).await?;
    let restarted = Instant::now();
    cluster.restart(1)?;
    let back = wait_for(TIMEOUT, "member 1 back with every key", || async {
        let status = cluster.status(1).await?;
        ensure!(
            status.applied_index >= statuses[0].applied_index,
            "member 1 applied {}",
            status.applied_index
        );
        Ok(status)
    })
    .await?;
    println!(
        "member 1 restarted and applied index {} in {:?} (snapshot index {})",
        back.applied_index,
        restarted.elapsed(),
        back.snapshot_index
    );
    ensure!(
        log_contains(&cluster, 1, "loaded the latest snapshot index="),
        "member 1 did not start from its snapshot"
    );
    converged_digests(&cluster).await?;
    ensure!(count(&cluster.client_of(1), "k/").await? == 100_000);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_killed_while_installing_a_snapshot_comes_back_consistent() -> anyhow::Result<()>
{
    let cluster = Cluster::start_with(ClusterConfig::new(3).args([
        "--snapshot-interval",
        "1000",
        "--snapshot-tail",
        "100",
    ]))
    .await?;
    let client = cluster.client();
    // A state of about 5 MB per round, so a snapshot takes a while to send
    // and install.
    let value = vec![b'x'; 1024];
    let mut written = 0;
    for (round, marker) in [
        "received a snapshot",
        "installed a snapshot from the leader into storage",
    ]
    .into_iter()
    .enumerate()
    {
        let had = cluster.status(3).await?.applied_index;
        cluster.kill(3).await?;
        write(&client, &format!("big{round}/"), 0..5_000, &value).await?;
        written += 5_000;
        // Member 3 can only catch up from a snapshot once the leader's log
        // starts after what it has. Snapshots are written in the background
        // and started by applied entries, so keep a trickle of writes.
        wait_for(TIMEOUT, "the leader to compact past member 3", || async {
            client.put("tick", "t").await?;
            let leader = cluster.wait_for_leader(TIMEOUT).await?;
            let first = cluster.status(leader).await?.first_index;
            ensure!(
                first > had + 1,
                "leader's first index {first}, member 3 had {had}"
            );
            Ok(())
        })
        .await?;
        let seen = log_count(&cluster, 3, marker);
        cluster.restart(3)?;
        // Kill it the moment the marker shows up in its log.
        wait_for(TIMEOUT, &format!("member 3 to log {marker:?}"), || async {
            ensure!(log_count(&cluster, 3, marker) > seen, "not yet");
            Ok(())
        })
        .await?;
        cluster.kill(3).await?;
        cluster.restart(3)?;
        converged_digests(&cluster).await?;
        let on_three = count(&cluster.client_of(3), "big").await?;
        ensure!(
            on_three == written,
            "member 3 sees {on_three} keys after round {round}, {written} were written"
        );
    }
    Ok(())
}

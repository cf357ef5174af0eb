//! A leader cut off from the other two members: the majority goes on
//! without it, it serves no linearizable read and commits nothing, the write
//! it took while cut off is never committed, and after healing every member
//! holds the same data.

use std::time::Duration;

use anyhow::anyhow;
use fenced_client::pb::RangeRequest;
use fenced_client::{Client, ClientConfig};
use fenced_tests::{Cluster, wait_for};

const LEADER_TIMEOUT: Duration = Duration::from_secs(15);

/// The deadline of requests sent to the isolated member: long enough for it
/// to try (and fail) to reach a quorum, short enough to keep the test quick.
const ISOLATED_DEADLINE: Duration = Duration::from_secs(2);

/// The key whose reads must never be stale.
const KEY: &str = "register";

/// A key written only through the isolated member.
const LOST_KEY: &str = "written-while-isolated";

/// A client of member `id` alone, one attempt, with a short deadline.
fn isolated_client(cluster: &Cluster, id: u64) -> anyhow::Result<Client> {
    Ok(ClientConfig::new([cluster.endpoint(id)])
        .retry(false)
        .request_timeout(ISOLATED_DEADLINE)
        .build()?)
}

/// A read of `key` through `client` (one member), as asked.
async fn read(client: &Client, key: &str, serializable: bool) -> anyhow::Result<Option<Vec<u8>>> {
    let response = client
        .range(RangeRequest {
            key: key.into(),
            serializable,
            ..RangeRequest::default()
        })
        .await?;
    Ok(response.kvs.into_iter().next().map(|kv| kv.value))
}

/// Describes a read's outcome for a failure message.
fn describe(outcome: &anyhow::Result<Option<Vec<u8>>>) -> String {
    match outcome {
        Ok(Some(value)) => format!("returned {:?}", String::from_utf8_lossy(value)),
        Ok(None) => "returned no value".into(),
        Err(err) => format!("failed: {err:#}"),
    }
}

#[tokio::test]
async fn an_isolated_leader_serves_no_stale_reads_commits_nothing_and_converges_after_healing()
-> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let old_leader = cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    let majority: Vec<u64> = cluster.ids().filter(|&id| id != old_leader).collect();
    let majority_client = ClientConfig::new(majority.iter().map(|&id| cluster.endpoint(id)))
        .request_timeout(LEADER_TIMEOUT)
        .build()?;

    cluster.client().put(KEY, "v1").await?;
    cluster.client().put("other", "1").await?;
    // Every member has applied v1, so the isolated one has a value to be
    // stale with.
    for id in cluster.ids() {
        wait_for(LEADER_TIMEOUT, "v1 applied everywhere", || async {
            let value = read(&cluster.client_of(id), KEY, true).await?;
            anyhow::ensure!(
                value.as_deref() == Some(&b"v1"[..]),
                "member {id}: {value:?}"
            );
            anyhow::Ok(())
        })
        .await?;
    }

    cluster.isolate(old_leader);
    let before = cluster.status(old_leader).await?;
    let isolated = isolated_client(&cluster, old_leader)?;

    // At once, while the old leader may still believe it leads: a write and
    // a linearizable read on it, and the majority's election.
    let (isolated_write, early_read, new_leader) = tokio::join!(
        isolated.put(LOST_KEY, "lost"),
        read(&isolated, KEY, false),
        wait_for(
            LEADER_TIMEOUT,
            "a leader other than the isolated one",
            || async {
                let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await?;
                match leader != old_leader {
                    true => Ok(leader),
                    false => Err(anyhow!("member {old_leader} still counts as leader")),
                }
            }
        ),
    );
    let new_leader = new_leader?;
    println!("isolated member {old_leader}; member {new_leader} leads the majority");
    println!("write on the isolated member: {isolated_write:?}");
    println!(
        "early linearizable read on the isolated member: {}",
        describe(&early_read)
    );
    assert!(
        isolated_write.is_err(),
        "the isolated member acknowledged a write it cannot commit: {isolated_write:?}"
    );
    assert!(
        early_read.is_err(),
        "the isolated member served a linearizable read: {}",
        describe(&early_read)
    );

    // (a) The majority serves writes and linearizable reads.
    majority_client.put(KEY, "v2").await?;
    majority_client.put("during", "1").await?;
    for &id in &majority {
        let value = read(&cluster.client_of(id), KEY, false).await?;
        assert_eq!(value.as_deref(), Some(&b"v2"[..]), "member {id}");
    }

    // (b) With v2 committed elsewhere, a linearizable read on the isolated
    // member must fail: returning v1 would be a stale read.
    let stale_read = read(&isolated, KEY, false).await;
    println!(
        "linearizable read on the isolated member: {}",
        describe(&stale_read)
    );
    assert!(
        stale_read.is_err(),
        "a linearizable read on the isolated member {} (the majority holds v2)",
        describe(&stale_read)
    );
    // A serializable read answers from the member's applied state without
    // asking anyone: it is allowed to be stale, and here it is.
    let serializable = read(&isolated, KEY, true).await?;
    assert_eq!(
        serializable.as_deref(),
        Some(&b"v1"[..]),
        "a serializable read on the isolated member answers from its own (stale) state"
    );

    // (c) Nothing committed on the isolated member; the write it took is in
    // its log only.
    let during = cluster.status(old_leader).await?;
    println!(
        "isolated member: commit {} -> {}, last index {} -> {}",
        before.commit_index, during.commit_index, before.last_index, during.last_index
    );
    assert_eq!(
        during.commit_index, before.commit_index,
        "the isolated member's commit index advanced"
    );
    assert!(
        during.last_index > before.last_index,
        "the isolated write never reached the old leader's log, so this test no longer \
         exercises an uncommitted entry being overwritten (last index {} -> {})",
        before.last_index,
        during.last_index
    );

    // (d) Heal: every member converges on the majority's history, and the
    // old leader's uncommitted entry is overwritten, never committed.
    cluster.heal_all();
    let statuses = cluster.wait_converged(LEADER_TIMEOUT).await?;
    for (id, status) in &statuses {
        println!(
            "member {id} after healing: leader {} applied {} revision {}",
            status.leader, status.applied_index, status.revision
        );
    }
    let reference = cluster.contents(new_leader).await?;
    for id in cluster.ids() {
        let contents = cluster.contents(id).await?;
        assert_eq!(
            contents, reference,
            "member {id} differs from member {new_leader}"
        );
        let member = cluster.client_of(id);
        assert_eq!(
            read(&member, KEY, false).await?.as_deref(),
            Some(&b"v2"[..])
        );
        assert_eq!(
            read(&member, LOST_KEY, false).await?,
            None,
            "member {id} holds the write that was never acknowledged"
        );
    }
    let keys: Vec<String> = reference
        .kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect();
    assert_eq!(keys, ["during", "other", KEY], "{reference:?}");
    let rejoined = cluster.status(old_leader).await?;
    assert!(rejoined.commit_index > before.commit_index);
    assert_ne!(rejoined.leader, 0, "the healed member knows a leader");
    cluster.client_of(old_leader).put(KEY, "v3").await?;
    let value = read(&cluster.client_of(new_leader), KEY, false).await?;
    assert_eq!(
        value.as_deref(),
        Some(&b"v3"[..]),
        "the healed member takes writes"
    );
    Ok(())
}

//! One member on its own: the KV API end to end (put, get, delete, prefix
//! ranges, transactions, response headers), and durability across a clean
//! stop and across a crash.

use std::time::Duration;

use anyhow::Context as _;
use fenced_client::Client;
use fenced_client::pb::compare::{CompareResult, CompareTarget, TargetUnion};
use fenced_client::pb::{
    Compare, KeyValue, PutRequest, RangeRequest, RequestOp, ResponseHeader, TxnRequest, request_op,
    response_op,
};
use fenced_tests::{Cluster, Contents};

const LEADER_TIMEOUT: Duration = Duration::from_secs(15);

/// The header of a response, which every response must carry.
fn header(header: Option<ResponseHeader>) -> ResponseHeader {
    header.expect("every response carries a header")
}

/// Checks the header of a write's response and returns its revision, which
/// must be one more than `previous`.
fn write_revision(response_header: Option<ResponseHeader>, previous: i64, what: &str) -> i64 {
    let header = header(response_header);
    assert_ne!(header.cluster_id, 0, "{what}: cluster_id is 0");
    assert_eq!(header.member_id, 1, "{what}: member_id");
    assert!(
        header.raft_term > 0,
        "{what}: raft_term {}",
        header.raft_term
    );
    assert_eq!(
        header.revision,
        previous + 1,
        "{what}: a write must advance the revision by exactly one"
    );
    header.revision
}

fn compare(key: &str, result: CompareResult, target: CompareTarget, value: TargetUnion) -> Compare {
    Compare {
        result: result.into(),
        target: target.into(),
        key: key.into(),
        target_union: Some(value),
    }
}

fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.into(),
            value: value.into(),
            ..PutRequest::default()
        })),
    }
}

fn get_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: key.into(),
            ..RangeRequest::default()
        })),
    }
}

async fn must_get(client: &Client, key: &str) -> KeyValue {
    client
        .get(key)
        .await
        .unwrap_or_else(|err| panic!("get {key}: {err}"))
        .unwrap_or_else(|| panic!("key {key} is missing"))
}

fn prefix(key: &str) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        prefix: true,
        ..RangeRequest::default()
    }
}

#[tokio::test]
async fn put_get_delete_range_txn_and_headers() -> anyhow::Result<()> {
    let cluster = Cluster::start(1).await?;
    assert_eq!(cluster.wait_for_leader(LEADER_TIMEOUT).await?, 1);
    let client = cluster.client_of(1);

    let status = cluster.status(1).await?;
    let status_header = header(status.header);
    assert_ne!(status_header.cluster_id, 0);
    assert_eq!(status_header.member_id, 1);
    assert_eq!(status.member_id, 1);
    let cluster_id = status_header.cluster_id;
    let mut revision = status.revision;

    // Put, then overwrite with prev_kv.
    let put = client.put("a", "1").await?;
    assert_eq!(header(put.header).cluster_id, cluster_id);
    revision = write_revision(put.header, revision, "put a=1");
    let created = revision;
    let kv = must_get(&client, "a").await;
    assert_eq!(
        (
            kv.value.as_slice(),
            kv.version,
            kv.create_revision,
            kv.mod_revision,
            kv.lease
        ),
        (&b"1"[..], 1, created, created, 0)
    );
    let put = client
        .put_with(PutRequest {
            key: "a".into(),
            value: "2".into(),
            prev_kv: true,
            ..PutRequest::default()
        })
        .await?;
    assert_eq!(
        put.prev_kv.as_ref().map(|kv| kv.value.as_slice()),
        Some(&b"1"[..])
    );
    revision = write_revision(put.header, revision, "put a=2");
    let kv = must_get(&client, "a").await;
    assert_eq!(
        (
            kv.value.as_slice(),
            kv.version,
            kv.create_revision,
            kv.mod_revision
        ),
        (&b"2"[..], 2, created, revision)
    );

    // A read reports the current revision and changes nothing.
    let read = client.range(prefix("a")).await?;
    assert_eq!(header(read.header).revision, revision);

    // Delete, then delete again: deleting nothing is not a write.
    let deleted = client.delete("a").await?;
    assert_eq!(deleted.deleted, 1);
    revision = write_revision(deleted.header, revision, "delete a");
    assert_eq!(client.get("a").await?, None);
    let deleted_again = client.delete("a").await?;
    assert_eq!(deleted_again.deleted, 0);
    assert_eq!(header(deleted_again.header).revision, revision);
    // Re-creating a deleted key starts a new life: version 1.
    revision = write_revision(client.put("a", "3").await?.header, revision, "put a=3");
    let kv = must_get(&client, "a").await;
    assert_eq!((kv.version, kv.create_revision), (1, revision));

    // Prefix ranges: limit, more, count, count_only, keys_only.
    for n in 1..=5 {
        let key = format!("p/{n}");
        revision = write_revision(
            client.put(key.as_str(), format!("v{n}")).await?.header,
            revision,
            &key,
        );
    }
    // Neighbours of the prefix must not match it.
    revision = write_revision(client.put("p", "no").await?.header, revision, "put p");
    revision = write_revision(client.put("q/1", "no").await?.header, revision, "put q/1");
    let all = client.range(prefix("p/")).await?;
    let keys: Vec<&[u8]> = all.kvs.iter().map(|kv| kv.key.as_slice()).collect();
    assert_eq!(keys, [&b"p/1"[..], b"p/2", b"p/3", b"p/4", b"p/5"]);
    assert_eq!((all.count, all.more), (5, false));
    assert_eq!(all.kvs[2].value, b"v3");
    let limited = client
        .range(RangeRequest {
            limit: 2,
            ..prefix("p/")
        })
        .await?;
    let keys: Vec<&[u8]> = limited.kvs.iter().map(|kv| kv.key.as_slice()).collect();
    assert_eq!(keys, [&b"p/1"[..], b"p/2"]);
    assert_eq!((limited.count, limited.more), (5, true));
    let exact = client
        .range(RangeRequest {
            limit: 5,
            ..prefix("p/")
        })
        .await?;
    assert_eq!((exact.kvs.len(), exact.count, exact.more), (5, 5, false));
    let counted = client
        .range(RangeRequest {
            count_only: true,
            ..prefix("p/")
        })
        .await?;
    assert_eq!((counted.kvs.len(), counted.count), (0, 5));
    let keys_only = client
        .range(RangeRequest {
            keys_only: true,
            ..prefix("p/")
        })
        .await?;
    assert_eq!(keys_only.kvs.len(), 5);
    assert!(
        keys_only.kvs.iter().all(|kv| kv.value.is_empty()),
        "{keys_only:?}"
    );
    let none = client.range(prefix("nothing/")).await?;
    assert_eq!((none.kvs.len(), none.count, none.more), (0, 0, false));
    assert_eq!(header(none.header).revision, revision);

    // Transactions: every compare holds → success branch, one revision for
    // all its writes.
    revision = write_revision(client.put("t", "x").await?.header, revision, "put t=x");
    let t_created = revision;
    let txn = client
        .txn(TxnRequest {
            compare: vec![
                compare(
                    "t",
                    CompareResult::Equal,
                    CompareTarget::Value,
                    TargetUnion::Value("x".into()),
                ),
                compare(
                    "t",
                    CompareResult::Equal,
                    CompareTarget::Version,
                    TargetUnion::Version(1),
                ),
                compare(
                    "t",
                    CompareResult::Equal,
                    CompareTarget::Mod,
                    TargetUnion::ModRevision(t_created),
                ),
                compare(
                    "t",
                    CompareResult::Less,
                    CompareTarget::Mod,
                    TargetUnion::ModRevision(t_created + 1),
                ),
                compare(
                    "t",
                    CompareResult::Equal,
                    CompareTarget::Create,
                    TargetUnion::CreateRevision(t_created),
                ),
            ],
            success: vec![put_op("t", "y"), put_op("t2", "z"), get_op("t")],
            failure: vec![put_op("t", "wrong branch")],
        })
        .await?;
    assert!(txn.succeeded, "every compare holds: {txn:?}");
    revision = write_revision(txn.header, revision, "txn (success)");
    assert_eq!(txn.responses.len(), 3);
    match &txn.responses[2].response {
        Some(response_op::Response::ResponseRange(range)) => {
            assert_eq!(
                range.kvs[0].value, b"y",
                "a txn op sees earlier ops of its branch"
            );
        }
        other => panic!("third txn response is not a range: {other:?}"),
    }
    let t = must_get(&client, "t").await;
    let t2 = must_get(&client, "t2").await;
    assert_eq!(
        (t.value.as_slice(), t.version, t.mod_revision),
        (&b"y"[..], 2, revision)
    );
    assert_eq!(
        (t2.value.as_slice(), t2.version, t2.mod_revision),
        (&b"z"[..], 1, revision)
    );

    // One compare fails → failure branch.
    let txn = client
        .txn(TxnRequest {
            compare: vec![
                compare(
                    "t",
                    CompareResult::Equal,
                    CompareTarget::Version,
                    TargetUnion::Version(2),
                ),
                compare(
                    "t",
                    CompareResult::Equal,
                    CompareTarget::Value,
                    TargetUnion::Value("x".into()),
                ),
            ],
            success: vec![put_op("t", "wrong branch")],
            failure: vec![put_op("t", "else"), put_op("t3", "else")],
        })
        .await?;
    assert!(!txn.succeeded, "the value compare fails: {txn:?}");
    revision = write_revision(txn.header, revision, "txn (failure)");
    assert_eq!(must_get(&client, "t").await.value, b"else");
    assert_eq!(must_get(&client, "t3").await.mod_revision, revision);

    // A compare on mod_revision guards against a lost update: the old
    // mod_revision no longer matches.
    let txn = client
        .txn(TxnRequest {
            compare: vec![compare(
                "t",
                CompareResult::Equal,
                CompareTarget::Mod,
                TargetUnion::ModRevision(t_created),
            )],
            success: vec![put_op("t", "lost update")],
            failure: vec![],
        })
        .await?;
    assert!(!txn.succeeded);
    // Nothing was written, so the revision stays.
    assert_eq!(header(txn.header).revision, revision);
    assert_eq!(must_get(&client, "t").await.value, b"else");

    let status = cluster.status(1).await?;
    assert_eq!(status.revision, revision);
    assert_eq!(header(status.header).cluster_id, cluster_id);
    Ok(())
}

/// Writes a mix of puts, overwrites, deletes and a transaction; returns the
/// revision of the last one.
async fn write_some(client: &Client, tag: &str) -> anyhow::Result<i64> {
    for n in 0..20 {
        client.put(format!("{tag}/{n}"), format!("{n}")).await?;
    }
    for n in 0..5 {
        client
            .put(format!("{tag}/{n}"), format!("{n} again"))
            .await?;
    }
    client.delete(format!("{tag}/7")).await?;
    let txn = client
        .txn(TxnRequest {
            compare: vec![compare(
                &format!("{tag}/1"),
                CompareResult::Equal,
                CompareTarget::Version,
                TargetUnion::Version(2),
            )],
            success: vec![
                put_op(&format!("{tag}/txn"), "yes"),
                put_op(&format!("{tag}/2"), "txn"),
            ],
            failure: vec![],
        })
        .await?;
    assert!(txn.succeeded);
    Ok(header(txn.header).revision)
}

/// Waits for the restarted member to lead again and reads all it holds,
/// linearizably.
async fn contents_after_restart(cluster: &Cluster) -> anyhow::Result<Contents> {
    assert_eq!(cluster.wait_for_leader(LEADER_TIMEOUT).await?, 1);
    let response = cluster.client_of(1).range(prefix("")).await?;
    Ok(Contents {
        revision: header(response.header).revision,
        kvs: response.kvs,
    })
}

/// A range answer is not bounded by gRPC's usual 4 MiB message limit: the
/// member sends it whole and the client library takes it whole (etcd's
/// client accepts up to 2 GiB too).
#[tokio::test]
async fn a_range_larger_than_four_mib_comes_back_whole() -> anyhow::Result<()> {
    let cluster = Cluster::start(1).await?;
    cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    let client = cluster.client();
    // Values at the default largest value size (1 MiB), minus room for the
    // key, so that each put fits in one request.
    let value = vec![b'v'; 1024 * 1024 - 64];
    let count = 6;
    for i in 0..count {
        client.put(format!("big/{i}"), value.clone()).await?;
    }
    let response = client.range(prefix("big/")).await?;
    let bytes: usize = response
        .kvs
        .iter()
        .map(|kv| kv.key.len() + kv.value.len())
        .sum();
    assert_eq!(response.kvs.len(), count, "keys returned");
    assert!(
        bytes > 4 * 1024 * 1024,
        "the test must exceed 4 MiB to mean anything: {bytes} bytes"
    );
    assert!(response.kvs.iter().all(|kv| kv.value == value));
    Ok(())
}

#[tokio::test]
async fn acknowledged_writes_survive_sigterm_and_sigkill() -> anyhow::Result<()> {
    let cluster = Cluster::start(1).await?;
    assert_eq!(cluster.wait_for_leader(LEADER_TIMEOUT).await?, 1);
    let client = cluster.client_of(1);
    let cluster_id = header(cluster.status(1).await?.header).cluster_id;

    let last = write_some(&client, "before-stop").await?;
    let before = cluster.contents(1).await?;
    assert_eq!(before.revision, last);
    assert_eq!(before.kvs.len(), 20, "20 keys, one deleted, one added");

    // Clean shutdown, then restart on the same data dir.
    let exit = cluster.stop(1).await?;
    assert!(exit.success(), "SIGTERM must exit 0, got {exit}");
    cluster.restart(1)?;
    let after = contents_after_restart(&cluster).await?;
    assert_eq!(after, before, "state after SIGTERM + restart");
    assert_eq!(
        header(cluster.status(1).await?.header).cluster_id,
        cluster_id
    );

    // The revision carries on where it was.
    let put = client.put("after-restart", "1").await?;
    write_revision(put.header, last, "first put after restart");

    // Crash right after the last acknowledgement: everything acknowledged
    // was fsynced before it was acknowledged.
    let last = write_some(&client, "before-kill").await?;
    let before = cluster.contents(1).await?;
    assert_eq!(before.revision, last);
    cluster.kill(1).await?;
    cluster.restart(1)?;
    let after = contents_after_restart(&cluster).await?;
    assert_eq!(after, before, "state after SIGKILL + restart");
    let put = client.put("after-crash", "1").await?;
    write_revision(put.header, last, "first put after the crash");
    let kv = must_get(&client, "before-kill/txn").await;
    assert_eq!(kv.value, b"yes");
    assert_eq!(
        header(cluster.status(1).await?.header).cluster_id,
        cluster_id
    );
    Ok(())
}

/// Concurrent writers make the server batch many proposals into one fsync;
/// a crash right after the last acknowledgement still loses none of them.
#[tokio::test]
async fn concurrent_acknowledged_writes_survive_sigkill() -> anyhow::Result<()> {
    let cluster = Cluster::start(1).await?;
    assert_eq!(cluster.wait_for_leader(LEADER_TIMEOUT).await?, 1);
    let client = cluster.client_of(1);
    let writers = (0..8).map(|w| {
        let client = client.clone();
        async move {
            let mut acknowledged = Vec::new();
            for n in 0..25 {
                let key = format!("w{w}/{n}");
                let put = client.put(key.as_str(), format!("{w}.{n}")).await?;
                acknowledged.push((key, header(put.header).revision));
            }
            anyhow::Ok(acknowledged)
        }
    });
    let acknowledged: Vec<(String, i64)> = futures::future::try_join_all(writers)
        .await?
        .into_iter()
        .flatten()
        .collect();
    let before = cluster.contents(1).await?;
    cluster.kill(1).await?;
    cluster.restart(1)?;
    let after = contents_after_restart(&cluster).await?;
    assert_eq!(after, before, "state after SIGKILL + restart");
    for (key, revision) in &acknowledged {
        let kv = after
            .kvs
            .iter()
            .find(|kv| kv.key == key.as_bytes())
            .with_context(|| format!("{key} lost"))?;
        assert_eq!(kv.mod_revision, *revision, "{key}");
    }
    // Every revision was handed out once.
    let mut revisions: Vec<i64> = acknowledged.iter().map(|(_, r)| *r).collect();
    revisions.sort_unstable();
    revisions.dedup();
    assert_eq!(
        revisions.len(),
        acknowledged.len(),
        "two writes shared a revision"
    );
    Ok(())
}

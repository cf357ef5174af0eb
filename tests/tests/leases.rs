//! Leases and locks over the raw gRPC API against real clusters: grants,
//! keepalive streams, expiry through the log, FIFO hand-off across members,
//! fenced writes, and the errors bad input gets.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use fenced_client::pb::{
    self, compare::CompareTarget, lease_client::LeaseClient, lock_client::LockClient,
};
use fenced_tests::{Cluster, wait_until};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

const LEADER_TIMEOUT: Duration = Duration::from_secs(15);

async fn channel(cluster: &Cluster, id: u64) -> anyhow::Result<Channel> {
    Ok(
        tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.endpoint(id)))?
            .connect()
            .await?,
    )
}

async fn grant(leases: &mut LeaseClient<Channel>, ttl: i64) -> anyhow::Result<i64> {
    let response = leases
        .grant(pb::LeaseGrantRequest { ttl, id: 0 })
        .await
        .context("grant")?
        .into_inner();
    anyhow::ensure!(response.ttl == ttl, "granted ttl {} != {ttl}", response.ttl);
    Ok(response.id)
}

fn acquire(name: &str, lease: i64) -> pb::AcquireRequest {
    pb::AcquireRequest {
        name: name.into(),
        lease,
        ..Default::default()
    }
}

#[tokio::test]
async fn lease_lifecycle_keepalive_stream_and_bad_input() -> anyhow::Result<()> {
    let cluster = Cluster::start(1).await?;
    cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    let ch = channel(&cluster, 1).await?;
    let mut leases = LeaseClient::new(ch.clone());
    let client = cluster.client();

    // TTL bounds are named, never silently changed.
    let err = leases
        .grant(pb::LeaseGrantRequest { ttl: 1, id: 0 })
        .await
        .expect_err("ttl below the minimum");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("minimum is 2s"), "{}", err.message());
    let err = leases
        .grant(pb::LeaseGrantRequest {
            ttl: 10_000_000,
            id: 0,
        })
        .await
        .expect_err("ttl above the maximum");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("maximum is 86400s"),
        "{}",
        err.message()
    );

    let id = grant(&mut leases, 30).await?;
    let second = grant(&mut leases, 30).await?;
    assert!(second > id, "ids increase: {id} then {second}");
    client
        .put_with(pb::PutRequest {
            key: b"svc/a".to_vec(),
            value: b"1".to_vec(),
            lease: id,
            prev_kv: false,
        })
        .await?;
    client
        .put_with(pb::PutRequest {
            key: b"svc/b".to_vec(),
            value: b"2".to_vec(),
            lease: id,
            prev_kv: false,
        })
        .await?;
    let ttl = leases
        .time_to_live(pb::LeaseTimeToLiveRequest { id, keys: true })
        .await?
        .into_inner();
    assert_eq!(ttl.granted_ttl, 30);
    assert!(ttl.ttl > 0 && ttl.ttl <= 30, "remaining {}", ttl.ttl);
    assert_eq!(ttl.keys, vec![b"svc/a".to_vec(), b"svc/b".to_vec()]);
    let listed = leases.list(pb::LeaseListRequest {}).await?.into_inner();
    let ids: Vec<i64> = listed.leases.iter().map(|l| l.id).collect();
    assert_eq!(ids, vec![id, second]);

    // A put naming an unknown lease is NOT_FOUND and writes nothing.
    let err = client
        .put_with(pb::PutRequest {
            key: b"svc/c".to_vec(),
            value: b"3".to_vec(),
            lease: 999_999,
            prev_kv: false,
        })
        .await
        .expect_err("unknown lease");
    assert_eq!(err.code(), Code::NotFound, "{err}");
    assert!(client.get("svc/c").await?.is_none());

    // The keepalive stream answers each request in order; an unknown lease
    // is NOT_FOUND *in* the stream, which stays open.
    let (tx, rx) = mpsc::channel(4);
    let mut answers = leases
        .keep_alive(ReceiverStream::new(rx))
        .await?
        .into_inner();
    for ask in [id, 424_242, second] {
        tx.send(pb::LeaseKeepAliveRequest { id: ask }).await?;
        let answer = answers.message().await?.context("stream ended")?;
        assert_eq!(answer.id, ask);
        if ask == 424_242 {
            assert_eq!((answer.code, answer.ttl), (Code::NotFound as i32, 0));
            assert!(answer.message.contains("not found"), "{}", answer.message);
        } else {
            assert_eq!((answer.code, answer.ttl), (0, 30), "{}", answer.message);
        }
    }

    // Revoke deletes every attached key in one revision.
    let before = client.status().await?.header.context("header")?.revision;
    leases.revoke(pb::LeaseRevokeRequest { id }).await?;
    assert!(client.get("svc/a").await?.is_none());
    assert!(client.get("svc/b").await?.is_none());
    let after = client.status().await?.header.context("header")?.revision;
    assert_eq!(after, before + 1, "one revision for the whole revoke");
    let err = leases
        .time_to_live(pb::LeaseTimeToLiveRequest { id, keys: false })
        .await
        .expect_err("revoked");
    assert_eq!(err.code(), Code::NotFound);
    tx.send(pb::LeaseKeepAliveRequest { id }).await?;
    let answer = answers.message().await?.context("stream ended")?;
    assert_eq!((answer.code, answer.ttl), (Code::NotFound as i32, 0));
    let err = leases
        .revoke(pb::LeaseRevokeRequest { id })
        .await
        .expect_err("revoked twice");
    assert_eq!(err.code(), Code::NotFound);

    // Ids are never reused.
    let err = leases
        .grant(pb::LeaseGrantRequest { ttl: 5, id })
        .await
        .expect_err("reused id");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("never reused"), "{}", err.message());
    Ok(())
}

#[tokio::test]
async fn an_unrefreshed_lease_expires_through_the_log_no_earlier_than_its_ttl() -> anyhow::Result<()>
{
    let cluster = Cluster::start(3).await?;
    cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    let mut leases = LeaseClient::new(channel(&cluster, 2).await?);
    let client = cluster.client();
    let granted_at = Instant::now();
    let id = grant(&mut leases, 2).await?;
    client
        .put_with(pb::PutRequest {
            key: b"ephemeral".to_vec(),
            value: b"x".to_vec(),
            lease: id,
            prev_kv: false,
        })
        .await?;
    wait_until(
        Duration::from_secs(10),
        "the lease's key to be deleted",
        || {
            let client = client.clone();
            async move { matches!(client.get("ephemeral").await, Ok(None)) }
        },
    )
    .await?;
    let lived = granted_at.elapsed();
    assert!(
        lived >= Duration::from_secs(2),
        "expired after {lived:?}, before its 2 s TTL"
    );
    // Every member applied the same expiry.
    for member in cluster.ids() {
        let mut leases = LeaseClient::new(channel(&cluster, member).await?);
        let err = leases
            .time_to_live(pb::LeaseTimeToLiveRequest { id, keys: false })
            .await
            .expect_err("expired");
        assert_eq!(err.code(), Code::NotFound, "member {member}");
    }
    Ok(())
}

#[tokio::test]
async fn lock_queue_is_fifo_across_members_and_tokens_fence_writes() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    let mut lease_clients = Vec::new();
    let mut lock_clients = Vec::new();
    for id in cluster.ids() {
        let ch = channel(&cluster, id).await?;
        lease_clients.push(LeaseClient::new(ch.clone()));
        lock_clients.push(LockClient::new(ch));
    }
    let mut ids = Vec::new();
    for leases in &mut lease_clients {
        ids.push(grant(leases, 60).await?);
    }
    let (a, b, c) = (ids[0], ids[1], ids[2]);

    // A holds the lock through member 1.
    let first = lock_clients[0]
        .acquire(acquire("job", a))
        .await?
        .into_inner();
    // B queues through member 2, then C through member 3.
    let mut b_lock = lock_clients[1].clone();
    let b_wait = tokio::spawn(async move { b_lock.acquire(acquire("job", b)).await });
    let mut describe = lock_clients[0].clone();
    wait_until(Duration::from_secs(5), "B to queue", || {
        let mut describe = describe.clone();
        async move {
            describe
                .describe(pb::DescribeRequest {
                    name: "job".into(),
                    serializable: false,
                })
                .await
                .is_ok_and(|d| d.into_inner().waiters.len() == 1)
        }
    })
    .await?;
    let mut c_lock = lock_clients[2].clone();
    let c_wait = tokio::spawn(async move { c_lock.acquire(acquire("job", c)).await });
    wait_until(Duration::from_secs(5), "C to queue", || {
        let mut describe = describe.clone();
        async move {
            describe
                .describe(pb::DescribeRequest {
                    name: "job".into(),
                    serializable: false,
                })
                .await
                .is_ok_and(|d| d.into_inner().waiters.len() == 2)
        }
    })
    .await?;
    let view = describe
        .describe(pb::DescribeRequest {
            name: "job".into(),
            serializable: false,
        })
        .await?
        .into_inner();
    assert_eq!(view.holders.len(), 1);
    assert_eq!(view.holders[0].token, first.token);
    let waiters: Vec<i64> = view.waiters.iter().map(|w| w.lease).collect();
    assert_eq!(waiters, vec![b, c], "waiters in arrival order");

    // A fenced write with A's token succeeds while A holds the lock.
    let client = cluster.client();
    let fenced_put = |token: i64, value: &str| pb::TxnRequest {
        compare: vec![pb::Compare {
            result: pb::compare::CompareResult::Equal as i32,
            target: CompareTarget::LockToken as i32,
            key: b"job".to_vec(),
            target_union: Some(pb::compare::TargetUnion::LockToken(token)),
        }],
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: b"job/output".to_vec(),
                value: value.as_bytes().to_vec(),
                ..Default::default()
            })),
        }],
        failure: vec![],
    };
    assert!(client.txn(fenced_put(first.token, "by A")).await?.succeeded);

    // Releasing with a stale token releases nothing.
    let err = lock_clients[0]
        .release(pb::ReleaseRequest {
            name: "job".into(),
            token: first.token + 1_000,
            lease: 0,
        })
        .await
        .expect_err("stale token");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("not a current holder"),
        "{}",
        err.message()
    );

    // A releases: B is granted in the same step, with a higher token.
    let released = lock_clients[0]
        .release(pb::ReleaseRequest {
            name: "job".into(),
            token: first.token,
            lease: a,
        })
        .await?
        .into_inner();
    let second = b_wait.await??.into_inner();
    assert!(
        second.token > first.token,
        "{} then {}",
        first.token,
        second.token
    );
    assert_eq!(
        second.token,
        released.header.context("header")?.revision,
        "the hand-off costs no extra revision"
    );
    // A's token no longer fences anything.
    assert!(
        !client
            .txn(fenced_put(first.token, "stale A"))
            .await?
            .succeeded
    );
    let check = lock_clients[2]
        .check_token(pb::CheckTokenRequest {
            name: "job".into(),
            token: first.token,
            serializable: false,
        })
        .await?
        .into_inner();
    assert!(!check.current);
    assert_eq!(
        client.get("job/output").await?.context("output")?.value,
        b"by A"
    );

    // B's lease is revoked: C is granted, with a higher token still.
    lease_clients[1]
        .revoke(pb::LeaseRevokeRequest { id: b })
        .await?;
    let third = c_wait.await??.into_inner();
    assert!(third.token > second.token);
    assert_eq!(third.holders.len(), 1);
    assert_eq!(third.holders[0].lease, c);
    Ok(())
}

#[tokio::test]
async fn acquire_timeouts_leave_no_queue_place_and_bad_input_is_named() -> anyhow::Result<()> {
    let cluster = Cluster::start(1).await?;
    cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    let ch = channel(&cluster, 1).await?;
    let mut leases = LeaseClient::new(ch.clone());
    let mut locks = LockClient::new(ch);
    let holder = grant(&mut leases, 60).await?;
    let waiter = grant(&mut leases, 60).await?;
    let held = locks.acquire(acquire("db", holder)).await?.into_inner();

    // Idempotent: acquiring again with the holder's lease finds its grant.
    let again = locks.acquire(acquire("db", holder)).await?.into_inner();
    assert_eq!(again.token, held.token);

    // A wait timeout is DEADLINE_EXCEEDED and leaves no waiter behind.
    let started = Instant::now();
    let err = locks
        .acquire(pb::AcquireRequest {
            wait_timeout_ms: 300,
            ..acquire("db", waiter)
        })
        .await
        .expect_err("times out");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{}", err.message());
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Try-only does not wait either.
    let err = locks
        .acquire(pb::AcquireRequest {
            try_only: true,
            ..acquire("db", waiter)
        })
        .await
        .expect_err("busy");
    assert_eq!(err.code(), Code::DeadlineExceeded);
    let view = locks
        .describe(pb::DescribeRequest {
            name: "db".into(),
            serializable: false,
        })
        .await?
        .into_inner();
    assert!(view.waiters.is_empty(), "residue: {:?}", view.waiters);

    // Bad input, each answered with the right code and a message naming it.
    let cases: Vec<(pb::AcquireRequest, Code, &str)> = vec![
        (acquire("", waiter), Code::InvalidArgument, "empty"),
        (
            acquire(&"n".repeat(300), waiter),
            Code::InvalidArgument,
            "256",
        ),
        (acquire("db", 777_777), Code::NotFound, "lease 777777"),
        (
            pb::AcquireRequest {
                permits: Some(0),
                ..acquire("db", waiter)
            },
            Code::InvalidArgument,
            "permits",
        ),
        (
            pb::AcquireRequest {
                permits: Some(3),
                ..acquire("db", waiter)
            },
            Code::InvalidArgument,
            "1 permit(s)",
        ),
    ];
    for (request, code, words) in cases {
        let err = locks.acquire(request).await.expect_err(words);
        assert_eq!(err.code(), code, "{words}: {}", err.message());
        assert!(err.message().contains(words), "{words}: {}", err.message());
    }
    // Reserved keys cannot be written through KV.
    let err = cluster
        .client()
        .put("__fenced/lock/db/x", "forged")
        .await
        .expect_err("reserved");
    assert_eq!(err.code(), Code::InvalidArgument);
    Ok(())
}

/// Six clients cycling acquire/release on one lock as fast as they can: every
/// cycle succeeds (a late notice about a client's own previous release must
/// not fail its next acquire) and each client sees increasing tokens.
#[tokio::test]
async fn contended_acquire_release_cycles_never_fail() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    let mut tasks = Vec::new();
    for member in [1, 2, 3, 1, 2, 3] {
        let ch = channel(&cluster, member).await?;
        let mut leases = LeaseClient::new(ch.clone());
        let mut locks = LockClient::new(ch);
        let lease = grant(&mut leases, 60).await?;
        tasks.push(tokio::spawn(async move {
            let mut last = 0;
            for cycle in 0..60 {
                let grant = locks
                    .acquire(acquire("hot", lease))
                    .await
                    .with_context(|| format!("acquire, cycle {cycle}"))?
                    .into_inner();
                anyhow::ensure!(grant.token > last, "token {} after {last}", grant.token);
                last = grant.token;
                locks
                    .release(pb::ReleaseRequest {
                        name: "hot".into(),
                        token: grant.token,
                        lease,
                    })
                    .await
                    .with_context(|| format!("release, cycle {cycle}"))?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

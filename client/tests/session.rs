//! Sessions and lock guards against in-process fake members: keepalive
//! failover, the lost signal, closing, and abandoning a cancelled acquire.
//!
//! Real time, with a 1 s TTL (keepalive every 333 ms, answer timeout
//! 333 ms, margin 100 ms), so each test takes a second or two.

mod fake;

use std::time::Duration;

use fenced_client::{Client, ClientConfig, LockOptions, LostReason};
use tokio::time::Instant;
use tonic::Code;

use crate::fake::{Fake, KeepAlive, LEASE, TTL, fake};

fn client(members: &[&Fake]) -> Client {
    ClientConfig::new(members.iter().map(|member| member.endpoint.clone()))
        .request_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

#[tokio::test]
async fn keepalives_refresh_the_lease() {
    let member = fake(KeepAlive::Answer).await;
    let session = client(&[&member]).session(TTL).await.unwrap();
    assert_eq!((session.lease_id(), session.ttl()), (LEASE, TTL));
    tokio::time::sleep(3 * TTL).await;
    assert!(!session.is_lost());
    // One every third of the TTL.
    let sent = member.keepalives();
    assert!((8..=10).contains(&sent), "{sent} keepalives in 3 TTLs");
    assert!(session.status().acks() >= 8);
}

#[tokio::test]
async fn a_silent_member_is_left_for_the_next() {
    for behaviour in [KeepAlive::Silent, KeepAlive::Hang] {
        let silent = fake(behaviour).await;
        let good = fake(KeepAlive::Answer).await;
        let session = client(&[&silent, &good]).session(TTL).await.unwrap();
        tokio::time::sleep(3 * TTL).await;
        assert!(!session.is_lost(), "{behaviour:?}: {:?}", session.status());
        assert!(good.keepalives() >= 6, "{behaviour:?}");
    }
}

#[tokio::test]
async fn unavailable_moves_to_the_next_member() {
    let unavailable = fake(KeepAlive::Code(Code::Unavailable)).await;
    let good = fake(KeepAlive::Answer).await;
    let session = client(&[&unavailable, &good]).session(TTL).await.unwrap();
    tokio::time::sleep(2 * TTL).await;
    assert!(!session.is_lost());
    assert_eq!(unavailable.keepalives(), 1);
    assert!(good.keepalives() >= 4);
}

#[tokio::test]
async fn not_found_loses_the_session_at_once() {
    let member = fake(KeepAlive::Code(Code::NotFound)).await;
    let session = client(&[&member]).session(TTL).await.unwrap();
    let started = Instant::now();
    let reason = session.lost().await;
    assert_eq!(
        reason,
        LostReason::NotFound(format!("lease {LEASE} says NotFound"))
    );
    // The first keepalive goes a third of the TTL after the grant.
    assert!(started.elapsed() < Duration::from_millis(500));
    assert!(session.is_lost());
    // Lost is final: no more keepalives.
    tokio::time::sleep(TTL).await;
    assert_eq!(member.keepalives(), 1);
}

#[tokio::test]
async fn without_answers_the_session_is_lost_a_margin_before_the_ttl() {
    let first = fake(KeepAlive::Silent).await;
    let second = fake(KeepAlive::Hang).await;
    let granted = Instant::now();
    let session = client(&[&first, &second]).session(TTL).await.unwrap();
    let lost = session.lost();
    assert!(!lost.is_lost());
    assert_eq!(lost.clone().await, LostReason::Expired);
    // TTL minus the 100 ms margin, from (just before) the grant was sent.
    let elapsed = granted.elapsed();
    assert!(
        elapsed >= Duration::from_millis(880) && elapsed < Duration::from_millis(1000),
        "lost after {elapsed:?}"
    );
    assert!(session.is_lost());
    // Both members were tried, with backoff, but not in a busy loop.
    let tried = first.keepalives();
    assert!(
        (1..=5).contains(&tried),
        "{tried} keepalives to a silent member"
    );
}

#[tokio::test]
async fn close_revokes_and_drop_only_stops() {
    let member = fake(KeepAlive::Answer).await;
    let client = client(&[&member]);
    let session = client.session(TTL).await.unwrap();
    let lost = session.lost();
    session.close().await.unwrap();
    assert_eq!(lost.await, LostReason::Closed);
    assert_eq!(member.log.lock().unwrap().revokes, [LEASE]);

    let session = client.session(TTL).await.unwrap();
    let lost = session.lost();
    drop(session);
    assert_eq!(lost.await, LostReason::Closed);
    let before = member.keepalives();
    tokio::time::sleep(TTL).await;
    assert_eq!(member.keepalives(), before);
    assert_eq!(member.log.lock().unwrap().revokes, [LEASE]);
}

#[tokio::test]
async fn an_existing_lease_takes_the_ttl_of_its_first_answer() {
    let member = fake(KeepAlive::Answer).await;
    let session = client(&[&member])
        .session_builder()
        .existing_lease(99)
        .build()
        .await
        .unwrap();
    assert_eq!((session.lease_id(), session.ttl()), (99, TTL));
    assert_eq!(session.status().acks(), 1);

    let gone = fake(KeepAlive::Code(Code::NotFound)).await;
    let err = client(&[&gone])
        .session_builder()
        .existing_lease(99)
        .build()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn a_guard_releases_when_dropped() {
    let member = fake(KeepAlive::Answer).await;
    let session = client(&[&member]).session(TTL).await.unwrap();
    let guard = session.lock("free").await.unwrap();
    assert_eq!(
        (guard.token(), guard.lease(), guard.name()),
        (42, LEASE, "free")
    );
    assert_eq!(guard.key(), b"__fenced/lock/free/@7");
    drop(guard);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = member.log.lock().unwrap();
    assert_eq!(log.releases.len(), 1);
    assert_eq!(
        (log.releases[0].name.as_str(), log.releases[0].token),
        ("free", 42)
    );
}

#[tokio::test]
async fn a_wait_timeout_keeps_the_server_code() {
    let member = fake(KeepAlive::Answer).await;
    let session = client(&[&member]).session(TTL).await.unwrap();
    let options = LockOptions::default().wait_timeout(Duration::from_millis(300));
    let err = session.lock_with("busy", options).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert!(err.to_string().contains("waited 300 ms"), "{err}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The server removed the place itself: no abandon was needed.
    assert_eq!(member.log.lock().unwrap().acquires.len(), 1);
}

#[tokio::test]
async fn an_acquire_with_an_unknown_outcome_is_asked_again() {
    let member = fake(KeepAlive::Answer).await;
    let session = client(&[&member]).session(TTL).await.unwrap();
    let options = LockOptions::default().wait_timeout(Duration::from_secs(1));
    let guard = session.lock_with("unknown-once", options).await.unwrap();
    assert_eq!(guard.token(), 42);
    let log = member.log.lock().unwrap();
    assert_eq!(log.acquires.len(), 2, "asked again, with the same lease");
    assert!(log.acquires.iter().all(|a| a.lease == LEASE));
}

#[tokio::test]
async fn a_cancelled_acquire_is_abandoned() {
    let member = fake(KeepAlive::Answer).await;
    let session = client(&[&member]).session(TTL).await.unwrap();
    let waiting = tokio::time::timeout(Duration::from_millis(200), session.lock("busy")).await;
    assert!(waiting.is_err());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = member.log.lock().unwrap();
    let waits: Vec<i64> = log.acquires.iter().map(|a| a.wait_timeout_ms).collect();
    // The original (wait forever), then the abandon (1 ms), same lease.
    assert_eq!(waits, [0, 1]);
    assert!(log.acquires.iter().all(|a| a.lease == LEASE));
}

#[tokio::test]
async fn losing_the_session_ends_the_wait() {
    let member = fake(KeepAlive::Silent).await;
    let session = client(&[&member]).session(TTL).await.unwrap();
    let started = Instant::now();
    let err = session.lock("busy").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.to_string().contains("session lost"), "{err}");
    assert!(started.elapsed() < TTL);
}

#[tokio::test]
async fn a_session_takes_a_name_once_at_a_time() {
    let member = fake(KeepAlive::Answer).await;
    let session = client(&[&member]).session(TTL).await.unwrap();
    let guard = session.lock("free").await.unwrap();
    let err = session.lock("free").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    guard.release().await.unwrap();
    let again = session.lock("free").await.unwrap();
    assert_eq!(again.token(), 42);
    // Only the two real acquires reached the server.
    assert_eq!(member.log.lock().unwrap().acquires.len(), 2);
}

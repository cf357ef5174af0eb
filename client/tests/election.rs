//! Campaigns, leadership and leader queries against in-process fake
//! members: what is sent, the lost signal, resigning on drop and
//! withdrawing a cancelled campaign.

mod fake;

use std::time::Duration;

use fenced_client::{Client, ClientConfig, LeaderInfo, LostReason};
use tonic::Code;

use crate::fake::{Fake, KeepAlive, LEADER_TOKEN, LEASE, TTL, fake};

fn client(member: &Fake) -> Client {
    ClientConfig::new([member.endpoint.clone()])
        .request_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_campaign_leads_proclaims_and_resigns() {
    let member = fake(KeepAlive::Answer).await;
    let session = client(&member).session(TTL).await.unwrap();
    let leadership = session.campaign("free", "node-a").await.unwrap();
    assert_eq!(leadership.name(), "free");
    assert_eq!(leadership.token(), LEADER_TOKEN);
    assert_eq!(leadership.lease(), LEASE);
    assert_eq!(leadership.key(), b"__fenced/election/free/@7");
    assert!(!leadership.is_lost());
    // One campaign per election and session at a time.
    let again = session.campaign("free", "node-a").await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    leadership.proclaim("node-a2").await.unwrap();
    leadership.resign().await.unwrap();
    {
        let log = member.log.lock().unwrap();
        assert_eq!(log.campaigns.len(), 1);
        assert_eq!(log.campaigns[0].value, b"node-a");
        assert_eq!(
            (log.campaigns[0].lease, log.campaigns[0].wait_timeout_ms),
            (LEASE, 0)
        );
        assert_eq!(log.proclaims.len(), 1);
        assert_eq!(log.proclaims[0].value, b"node-a2");
        assert_eq!(log.resigns.len(), 1);
        assert_eq!(log.resigns[0].leader.as_ref().unwrap().token, LEADER_TOKEN);
    }
    // Resigned: the election can be entered again.
    let leadership = session.campaign("free", "node-a").await.unwrap();
    // Dropping the leadership resigns in the background.
    drop(leadership);
    member.wait_for(|log| log.resigns.len() == 2).await;
    session.close().await.unwrap();
}

#[tokio::test]
async fn the_leader_or_none() {
    let member = fake(KeepAlive::Answer).await;
    let client = client(&member);
    assert_eq!(client.leader("none").await.unwrap(), None);
    assert_eq!(
        client.leader("db").await.unwrap(),
        Some(LeaderInfo {
            name: "db".to_owned(),
            key: b"__fenced/election/db/@7".to_vec(),
            token: LEADER_TOKEN,
            lease: LEASE,
            value: b"node-a".to_vec(),
        })
    );
}

#[tokio::test]
async fn leadership_is_lost_with_the_session() {
    let member = fake(KeepAlive::Answer).await;
    let session = client(&member).session(TTL).await.unwrap();
    let leadership = session.campaign("free", "node-a").await.unwrap();
    member.set_keepalive(KeepAlive::Code(Code::NotFound));
    let reason = leadership.lost().await;
    assert!(matches!(reason, LostReason::NotFound(_)), "{reason:?}");
    assert!(leadership.is_lost());
    // A lost leader does not proclaim.
    let err = leadership.proclaim("late").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(member.log.lock().unwrap().proclaims.is_empty());
}

#[tokio::test]
async fn a_cancelled_campaign_is_withdrawn() {
    let member = fake(KeepAlive::Answer).await;
    let session = client(&member).session(TTL).await.unwrap();
    let campaign = session.campaign("busy", "node-a");
    tokio::select! {
        _ = campaign => panic!("elected in a busy election"),
        () = member.wait_for(|log| log.campaigns.len() == 1) => {}
    }
    // The dropped campaign is withdrawn: a resign with token 0 for its
    // lease, never a second campaign.
    member.wait_for(|log| log.resigns.len() == 1).await;
    let log = member.log.lock().unwrap();
    let withdraw = log.resigns[0].leader.clone().expect("a leader key");
    assert_eq!(
        (withdraw.name.as_str(), withdraw.token, withdraw.lease),
        ("busy", 0, LEASE)
    );
    assert_eq!(log.campaigns.len(), 1);
}

#[tokio::test]
async fn a_campaign_wait_ends_with_deadline_exceeded() {
    let member = fake(KeepAlive::Answer).await;
    let session = client(&member).session(TTL).await.unwrap();
    let err = session
        .campaign_with_timeout("busy", "node-a", Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    let log = member.log.lock().unwrap();
    // The server removed the candidacy itself: no withdrawal.
    assert_eq!(log.campaigns.len(), 1);
    // What was left of the wait when the request went.
    assert!((1..=50).contains(&log.campaigns[0].wait_timeout_ms));
}

#[tokio::test]
async fn a_campaign_with_its_own_session_closes_it_on_resign() {
    let member = fake(KeepAlive::Answer).await;
    let leadership = client(&member)
        .campaign("free", "node-a", TTL)
        .await
        .unwrap();
    assert_eq!(leadership.lease(), LEASE);
    leadership.resign().await.unwrap();
    let log = member.log.lock().unwrap();
    assert_eq!(log.resigns.len(), 1);
    assert_eq!(log.revokes, [LEASE]);
}

//! Watch and observe streams against in-process fake members that the test
//! answers message by message: reconnecting to the next member, resuming
//! from the revision after the last one delivered, dropping repeats, and
//! the errors that end a stream.

mod fake;

use std::time::Duration;

use fenced_client::pb::event::EventType;
use fenced_client::pb::{Event, KeyValue, ObserveResponse, ResponseHeader, WatchResponse};
use fenced_client::{Client, ClientConfig, EventKind, WatchBatch, WatchBuilder, WatchStream};
use futures::StreamExt as _;
use tonic::{Code, Status};

use crate::fake::{Fake, KeepAlive, WatchCall, fake, leader_key};

fn client(members: &[&Fake]) -> Client {
    ClientConfig::new(members.iter().map(|member| member.endpoint.clone()))
        .request_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..ResponseHeader::default()
    })
}

fn created(revision: i64) -> Result<WatchResponse, Status> {
    Ok(WatchResponse {
        header: header(revision),
        watch_id: 1,
        created: true,
        ..WatchResponse::default()
    })
}

/// A put of `key` at `revision`, whose value is the revision.
fn put(key: &str, revision: i64) -> Result<WatchResponse, Status> {
    Ok(WatchResponse {
        header: header(revision),
        watch_id: 1,
        events: vec![Event {
            r#type: EventType::Put.into(),
            kv: Some(KeyValue {
                key: key.into(),
                value: revision.to_string().into_bytes(),
                mod_revision: revision,
                ..KeyValue::default()
            }),
            prev_kv: None,
        }],
        ..WatchResponse::default()
    })
}

fn cancel(code: Code, resume_revision: i64) -> Result<WatchResponse, Status> {
    Ok(WatchResponse {
        watch_id: 1,
        canceled: true,
        code: code as i32,
        resume_revision,
        cancel_reason: format!("cancelled with {code:?}"),
        ..WatchResponse::default()
    })
}

/// Starts `watch`, answers its create on `member` with `created` at
/// `revision`, and returns the stream and the call.
async fn open(member: &Fake, watch: WatchBuilder, revision: i64) -> (WatchStream, WatchCall) {
    let opening = tokio::spawn(watch.stream());
    let call = member.next_watch().await;
    call.responses.send(created(revision)).unwrap();
    (opening.await.unwrap().unwrap(), call)
}

async fn next_batch(stream: &mut WatchStream) -> WatchBatch {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("no batch within 5 s")
        .expect("the stream ended")
        .expect("the stream failed")
}

#[tokio::test]
async fn a_watch_resumes_on_the_next_member_without_gaps_or_repeats() {
    let (a, b) = (fake(KeepAlive::Answer).await, fake(KeepAlive::Answer).await);
    let watch = client(&[&a, &b]).watch("app/").prefix().prev_kv();
    let (mut stream, call) = open(&a, watch, 10).await;
    assert_eq!(call.create.key, b"app/");
    assert!(call.create.prefix && call.create.prev_kv && call.create.progress_notify);
    assert_eq!(call.create.start_revision, 0);
    call.responses.send(put("app/x", 11)).unwrap();
    call.responses.send(put("app/y", 12)).unwrap();
    let first = next_batch(&mut stream).await;
    assert_eq!(first.revision, 11);
    assert_eq!(first.events[0].kind, EventKind::Put);
    assert_eq!(first.events[0].kv.key, b"app/x");
    assert_eq!(next_batch(&mut stream).await.revision, 12);
    // The member shuts down, suggesting a resume point the client has
    // already passed.
    call.responses.send(cancel(Code::Unavailable, 12)).unwrap();
    let next = tokio::spawn(async move {
        let batch = next_batch(&mut stream).await;
        (stream, batch)
    });
    let call = b.next_watch().await;
    assert_eq!(call.create.start_revision, 13);
    assert!(call.create.prefix && call.create.prev_kv);
    call.responses.send(created(12)).unwrap();
    // B replays 12, which was delivered already.
    call.responses.send(put("app/y", 12)).unwrap();
    call.responses.send(put("app/z", 13)).unwrap();
    let (mut stream, batch) = next.await.unwrap();
    assert_eq!(batch.revision, 13);
    call.responses.send(put("app/z", 14)).unwrap();
    assert_eq!(next_batch(&mut stream).await.revision, 14);
}

#[tokio::test]
async fn a_stream_broken_before_any_event_resumes_after_its_creation() {
    let (a, b) = (fake(KeepAlive::Answer).await, fake(KeepAlive::Answer).await);
    let (mut stream, call) = open(&a, client(&[&a, &b]).watch("k"), 20).await;
    call.responses
        .send(Err(Status::unavailable("member going away")))
        .unwrap();
    let next = tokio::spawn(async move { next_batch(&mut stream).await });
    let call = b.next_watch().await;
    // Not 0 ("from now"): the changes made while reconnecting count.
    assert_eq!(call.create.start_revision, 21);
    call.responses.send(created(25)).unwrap();
    call.responses.send(put("k", 21)).unwrap();
    assert_eq!(next.await.unwrap().revision, 21);
}

#[tokio::test]
async fn progress_moves_the_resume_point() {
    let (a, b) = (fake(KeepAlive::Answer).await, fake(KeepAlive::Answer).await);
    let (mut stream, call) = open(&a, client(&[&a, &b]).watch("k"), 5).await;
    call.responses
        .send(Ok(WatchResponse {
            header: header(30),
            watch_id: 1,
            progress: true,
            ..WatchResponse::default()
        }))
        .unwrap();
    // A clean end of the stream is a break too.
    drop(call);
    let next = tokio::spawn(async move { next_batch(&mut stream).await });
    let call = b.next_watch().await;
    assert_eq!(call.create.start_revision, 31);
    call.responses.send(created(31)).unwrap();
    call.responses.send(put("k", 31)).unwrap();
    assert_eq!(next.await.unwrap().revision, 31);
}

#[tokio::test]
async fn a_slow_watcher_is_resumed_on_the_same_member_when_it_is_the_only_one() {
    let member = fake(KeepAlive::Answer).await;
    let watch = client(&[&member]).watch("k").from_revision(3);
    let (mut stream, call) = open(&member, watch, 9).await;
    assert_eq!(call.create.start_revision, 3);
    call.responses.send(put("k", 3)).unwrap();
    assert_eq!(next_batch(&mut stream).await.revision, 3);
    call.responses
        .send(cancel(Code::ResourceExhausted, 4))
        .unwrap();
    let next = tokio::spawn(async move { next_batch(&mut stream).await });
    let call = member.next_watch().await;
    assert_eq!(call.create.start_revision, 4);
    call.responses.send(created(9)).unwrap();
    call.responses.send(put("k", 7)).unwrap();
    assert_eq!(next.await.unwrap().revision, 7);
}

#[tokio::test]
async fn compaction_ends_the_stream_with_out_of_range() {
    let (a, b) = (fake(KeepAlive::Answer).await, fake(KeepAlive::Answer).await);
    let (stream, call) = open(&a, client(&[&a, &b]).watch("k"), 5).await;
    drop(call);
    let rest = tokio::spawn(async move { stream.collect::<Vec<_>>().await });
    let call = b.next_watch().await;
    assert_eq!(call.create.start_revision, 6);
    call.responses
        .send(Ok(WatchResponse {
            canceled: true,
            compact_revision: 40,
            code: Code::OutOfRange as i32,
            cancel_reason: "revision 6 is compacted".to_owned(),
            ..WatchResponse::default()
        }))
        .unwrap();
    let rest = rest.await.unwrap();
    assert_eq!(rest.len(), 1, "{rest:?}");
    let err = rest[0].as_ref().unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    assert!(err.to_string().contains("40"), "{err}");
}

#[tokio::test]
async fn a_refused_watch_fails_to_open() {
    let member = fake(KeepAlive::Answer).await;
    let opening = tokio::spawn(client(&[&member]).watch("").stream());
    let call = member.next_watch().await;
    call.responses
        .send(Ok(WatchResponse {
            code: Code::InvalidArgument as i32,
            cancel_reason: "an exact watch needs a key".to_owned(),
            ..WatchResponse::default()
        }))
        .unwrap();
    let err = opening.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.to_string().contains("needs a key"), "{err}");
}

#[tokio::test]
async fn a_watch_nobody_takes_back_gives_up_after_the_reconnect_timeout() {
    let member = fake(KeepAlive::Answer).await;
    let client = ClientConfig::new([member.endpoint.clone()])
        .request_timeout(Duration::from_secs(2))
        .reconnect_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let (mut stream, call) = open(&member, client.watch("k"), 5).await;
    drop(call);
    // Every later stream ends as soon as it is opened.
    let refuse = async {
        loop {
            let call = member.next_watch().await;
            assert_eq!(call.create.start_revision, 6);
            call.responses
                .send(Err(Status::unavailable("no leader")))
                .unwrap();
        }
    };
    let item = tokio::select! {
        item = tokio::time::timeout(Duration::from_secs(5), stream.next()) => item,
        () = refuse => unreachable!(),
    };
    let err = item.expect("gave up too late").unwrap().unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert!(err.to_string().contains("no leader"), "{err}");
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn observe_resumes_after_the_last_observation() {
    let (a, b) = (fake(KeepAlive::Answer).await, fake(KeepAlive::Answer).await);
    let observing = tokio::spawn({
        let client = client(&[&a, &b]);
        async move { client.observe("db").await }
    });
    let call = a.next_observe().await;
    assert_eq!(
        (call.request.name.as_str(), call.request.start_revision),
        ("db", 0)
    );
    let mut stream = observing.await.unwrap().unwrap();
    let led = |revision, lease| {
        Ok(ObserveResponse {
            header: None,
            revision,
            leader: Some(leader_key("db", lease)),
            value: format!("node-{lease}").into_bytes(),
        })
    };
    let no_leader = |revision| {
        Ok(ObserveResponse {
            revision,
            ..ObserveResponse::default()
        })
    };
    call.responses.send(led(10, 7)).unwrap();
    call.responses.send(no_leader(12)).unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.revision, 10);
    let leader = first.leader.unwrap();
    assert_eq!((leader.lease, leader.value), (7, b"node-7".to_vec()));
    let second = stream.next().await.unwrap().unwrap();
    assert_eq!((second.revision, second.leader), (12, None));
    call.responses
        .send(Err(Status::unavailable("member going away")))
        .unwrap();
    let next = tokio::spawn(async move {
        let observation = stream.next().await.unwrap().unwrap();
        (stream, observation)
    });
    let call = b.next_observe().await;
    assert_eq!(call.request.start_revision, 13);
    call.responses.send(no_leader(12)).unwrap();
    call.responses.send(led(13, 8)).unwrap();
    let (stream, observation) = next.await.unwrap();
    assert_eq!(observation.revision, 13);
    assert_eq!(observation.leader.unwrap().lease, 8);
    // Resuming below the history window ends the stream.
    call.responses
        .send(Err(Status::unavailable("member going away")))
        .unwrap();
    let rest = tokio::spawn(async move { stream.collect::<Vec<_>>().await });
    let call = a.next_observe().await;
    assert_eq!(call.request.start_revision, 14);
    call.responses
        .send(Err(Status::out_of_range(
            "revision 14 is compacted; oldest is 50",
        )))
        .unwrap();
    let rest = rest.await.unwrap();
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert_eq!(rest[0].as_ref().unwrap_err().code(), Code::OutOfRange);
}

//! The `elect`, `leader`, `observe` and `watch` commands of fencectl, run as
//! a process against in-process fake members: outputs in both formats,
//! exit codes, and what happens on a signal or a lost session.

mod fake;

use std::process::{Output, Stdio};

use fenced_client::pb::event::EventType;
use fenced_client::pb::{Event, KeyValue, ObserveResponse, ResponseHeader, WatchResponse};
use tokio::io::{AsyncBufReadExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tonic::Code;

use crate::fake::{Fake, KeepAlive, LEASE, fake, leader_key};

fn fencectl(member: &Fake, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fencectl"));
    command
        .args(["--endpoints", &member.endpoint, "--timeout", "2"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

fn spawn(member: &Fake, args: &[&str]) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = fencectl(member, args).spawn().unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

async fn line(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    lines.next_line().await.unwrap().expect("stdout ended")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn send_sigterm(child: &Child) {
    let pid = child.id().unwrap().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn leader_prints_both_formats() {
    let member = fake(KeepAlive::Answer).await;
    let cases: [(&[&str], &str); 4] = [
        (
            &["leader", "db"],
            "db: node-a (token 42, key __fenced/election/db/@7, lease 7)\n",
        ),
        (
            &["-o", "json", "leader", "db"],
            "{\"name\":\"db\",\"value\":\"node-a\",\"token\":42,\
             \"key\":\"__fenced/election/db/@7\",\"lease\":7}\n",
        ),
        (&["leader", "none"], "none: no leader\n"),
        (
            &["-o", "json", "leader", "none"],
            "{\"name\":\"none\",\"value\":null,\"token\":null,\"key\":null,\"lease\":null}\n",
        ),
    ];
    for (args, expected) in cases {
        let output = fencectl(&member, args).output().await.unwrap();
        assert_eq!(
            output.status.code(),
            Some(0),
            "{args:?}: {}",
            stderr(&output)
        );
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            expected,
            "{args:?}"
        );
    }
}

#[tokio::test]
async fn elect_leads_until_sigterm_then_resigns() {
    let member = fake(KeepAlive::Answer).await;
    let (mut child, mut lines) = spawn(
        &member,
        &["-o", "json", "elect", "free", "node-a", "--ttl", "1"],
    );
    assert_eq!(
        line(&mut lines).await,
        "{\"name\":\"free\",\"value\":\"node-a\",\"token\":42,\
         \"key\":\"__fenced/election/free/@7\",\"lease\":7}"
    );
    send_sigterm(&child).await;
    assert_eq!(child.wait().await.unwrap().code(), Some(0));
    let log = member.log.lock().unwrap();
    assert_eq!(log.campaigns.len(), 1);
    assert_eq!(log.campaigns[0].value, b"node-a");
    assert_eq!(log.resigns.len(), 1);
    assert_eq!(log.revokes, [LEASE]);
}

#[tokio::test]
async fn elect_fails_when_the_session_is_lost() {
    let member = fake(KeepAlive::Answer).await;
    let (child, mut lines) = spawn(&member, &["elect", "free", "node-a", "--ttl", "1"]);
    assert_eq!(
        line(&mut lines).await,
        "elected leader of free: token 42, key __fenced/election/free/@7, lease 7"
    );
    member.set_keepalive(KeepAlive::Code(Code::NotFound));
    let output = child.wait_with_output().await.unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).starts_with("Error: leadership of free lost: the lease was not found"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn observe_prints_the_state_then_each_change() {
    for json in [false, true] {
        let member = fake(KeepAlive::Answer).await;
        let args: &[&str] = match json {
            false => &["observe", "db"],
            true => &["-o", "json", "observe", "db"],
        };
        let (child, mut lines) = spawn(&member, args);
        let call = member.next_observe().await;
        assert_eq!(call.request.start_revision, 0);
        call.responses
            .send(Ok(ObserveResponse {
                header: None,
                revision: 10,
                leader: Some(leader_key("db", 7)),
                value: b"node-a".to_vec(),
            }))
            .unwrap();
        call.responses
            .send(Ok(ObserveResponse {
                revision: 12,
                ..ObserveResponse::default()
            }))
            .unwrap();
        let expected = match json {
            false => [
                "db: node-a (token 42, key __fenced/election/db/@7, lease 7, revision 10)",
                "db: no leader (revision 12)",
            ],
            true => [
                "{\"name\":\"db\",\"value\":\"node-a\",\"token\":42,\
                 \"key\":\"__fenced/election/db/@7\",\"lease\":7,\"revision\":10}",
                "{\"name\":\"db\",\"value\":null,\"token\":null,\"key\":null,\"lease\":null,\
                 \"revision\":12}",
            ],
        };
        for expected in expected {
            assert_eq!(line(&mut lines).await, expected);
        }
        send_sigterm(&child).await;
        let output = child.wait_with_output().await.unwrap();
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    }
}

fn kv(key: &str, value: &str, mod_revision: i64) -> Option<KeyValue> {
    Some(KeyValue {
        key: key.into(),
        value: value.into(),
        mod_revision,
        ..KeyValue::default()
    })
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..ResponseHeader::default()
    })
}

#[tokio::test]
async fn watch_prints_one_line_per_event_and_fails_when_compacted() {
    for json in [false, true] {
        let member = fake(KeepAlive::Answer).await;
        let args: &[&str] = match json {
            false => &["watch", "app/", "--prefix", "--prev-kv", "--rev", "3"],
            true => &[
                "-o",
                "json",
                "watch",
                "app/",
                "--prefix",
                "--prev-kv",
                "--rev",
                "3",
            ],
        };
        let (child, mut lines) = spawn(&member, args);
        let call = member.next_watch().await;
        assert_eq!(call.create.key, b"app/");
        assert!(call.create.prefix && call.create.prev_kv);
        assert_eq!(call.create.start_revision, 3);
        let created = WatchResponse {
            header: header(5),
            created: true,
            ..WatchResponse::default()
        };
        // One revision that changed two keys.
        let events = WatchResponse {
            header: header(4),
            events: vec![
                Event {
                    r#type: EventType::Put.into(),
                    kv: kv("app/a", "2", 4),
                    prev_kv: kv("app/a", "1", 3),
                },
                Event {
                    r#type: EventType::Delete.into(),
                    kv: kv("app/b", "", 4),
                    prev_kv: None,
                },
            ],
            ..WatchResponse::default()
        };
        call.responses.send(Ok(created)).unwrap();
        call.responses.send(Ok(events)).unwrap();
        let expected = match json {
            false => [
                "PUT app/a = 2 (revision 4, prev 1)",
                "DELETE app/b (revision 4)",
            ],
            true => [
                "{\"type\":\"PUT\",\"key\":\"app/a\",\"value\":\"2\",\"mod_revision\":4,\
                 \"prev_value\":\"1\"}",
                "{\"type\":\"DELETE\",\"key\":\"app/b\",\"value\":\"\",\"mod_revision\":4,\
                 \"prev_value\":null}",
            ],
        };
        for expected in expected {
            assert_eq!(line(&mut lines).await, expected);
        }
        // The member shuts down; the watch resumes on it from revision 5
        // and is then found compacted.
        call.responses
            .send(Ok(WatchResponse {
                canceled: true,
                code: Code::Unavailable as i32,
                resume_revision: 5,
                ..WatchResponse::default()
            }))
            .unwrap();
        let call = member.next_watch().await;
        assert_eq!(call.create.start_revision, 5);
        call.responses
            .send(Ok(WatchResponse {
                canceled: true,
                code: Code::OutOfRange as i32,
                compact_revision: 9,
                cancel_reason: "revision 5 is compacted".to_owned(),
                ..WatchResponse::default()
            }))
            .unwrap();
        let output = child.wait_with_output().await.unwrap();
        assert_eq!(output.status.code(), Some(1));
        assert_eq!(
            stderr(&output),
            "Error: watching prefix app/: OutOfRange: the watch's start revision is no longer \
             in the history window (the oldest revision left is 9): revision 5 is compacted\n"
        );
    }
}

#[tokio::test]
async fn watch_stops_on_sigterm() {
    let member = fake(KeepAlive::Answer).await;
    let (child, mut lines) = spawn(&member, &["watch", "k"]);
    let call = member.next_watch().await;
    assert_eq!(call.create.start_revision, 0);
    call.responses
        .send(Ok(WatchResponse {
            header: header(5),
            created: true,
            ..WatchResponse::default()
        }))
        .unwrap();
    call.responses
        .send(Ok(WatchResponse {
            header: header(6),
            events: vec![Event {
                r#type: EventType::Put.into(),
                kv: kv("k", "v", 6),
                prev_kv: None,
            }],
            ..WatchResponse::default()
        }))
        .unwrap();
    assert_eq!(line(&mut lines).await, "PUT k = v (revision 6)");
    send_sigterm(&child).await;
    let output = child.wait_with_output().await.unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

//! The `lease` and `lock` commands of fencectl, run as a process against
//! in-process fake members: outputs, exit codes, the command's environment,
//! and what happens on a signal or a lost session.

mod fake;

use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tonic::Code;

use crate::fake::{Fake, KeepAlive, LEASE, fake};

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

async fn run(member: &Fake, args: &[&str]) -> Output {
    fencectl(member, args).output().await.unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
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

async fn settle() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn lease_commands_print_both_formats() {
    let member = fake(KeepAlive::Answer).await;
    let cases: [(&[&str], &str); 8] = [
        (&["lease", "grant", "5"], "lease 7 granted with TTL(5s)\n"),
        (
            &["-o", "json", "lease", "grant", "5"],
            "{\"id\":7,\"ttl\":5}\n",
        ),
        (&["lease", "list"], "7, 10\n8, 60\n"),
        (
            &["-o", "json", "lease", "list"],
            "{\"id\":7,\"granted_ttl\":10}\n{\"id\":8,\"granted_ttl\":60}\n",
        ),
        (
            &["lease", "ttl", "7", "--keys"],
            "lease 7 granted with TTL(10s), remaining(9s), attached keys([a b])\n",
        ),
        (
            &["-o", "json", "lease", "ttl", "7"],
            "{\"id\":7,\"ttl\":9,\"granted_ttl\":10,\"remaining_ms\":8500,\"keys\":[]}\n",
        ),
        (&["lease", "revoke", "0x7"], "lease 7 revoked\n"),
        (
            &["-o", "json", "lease", "revoke", "7"],
            "{\"id\":7,\"revision\":0}\n",
        ),
    ];
    for (args, expected) in cases {
        let output = run(&member, args).await;
        assert_eq!(
            output.status.code(),
            Some(0),
            "{args:?}: {}",
            stderr(&output)
        );
        assert_eq!(stdout(&output), expected, "{args:?}");
    }
    let output = run(&member, &["lease", "ttl", "8"]).await;
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stderr(&output), "Error: NotFound: lease 8 not found\n");
    let output = run(&member, &["lease", "grant", "x"]).await;
    assert_eq!(output.status.code(), Some(2));
}

#[tokio::test]
async fn lease_keepalive_prints_each_answer_and_fails_when_lost() {
    let member = fake(KeepAlive::Answer).await;
    let mut child = fencectl(&member, &["-o", "json", "lease", "keepalive", "7"])
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for _ in 0..3 {
        let line = lines.next_line().await.unwrap().unwrap();
        assert_eq!(line, "{\"id\":7,\"ttl\":1}");
    }
    member.set_keepalive(KeepAlive::Code(Code::NotFound));
    let output = child.wait_with_output().await.unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).starts_with("Error: lease 7 lost: the lease was not found"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn lease_keepalive_stops_on_sigterm_without_revoking() {
    let member = fake(KeepAlive::Answer).await;
    let mut child = fencectl(&member, &["lease", "keepalive", "7"])
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next_line().await.unwrap().unwrap();
    assert_eq!(line, "lease 7 keepalived with TTL(1)");
    send_sigterm(&child).await;
    let status = child.wait().await.unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(member.log.lock().unwrap().revokes.is_empty());
}

#[tokio::test]
async fn lock_runs_the_command_with_the_grant_in_its_environment() {
    let member = fake(KeepAlive::Answer).await;
    let script = "echo $FENCED_LOCK_TOKEN $FENCED_LOCK_NAME $FENCED_LOCK_KEY $FENCED_LEASE_ID; \
                  exit 3";
    let output = run(
        &member,
        &["lock", "free", "--ttl", "1", "--", "sh", "-c", script],
    )
    .await;
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert_eq!(stdout(&output), "42 free __fenced/lock/free/@7 7\n");
    assert_eq!(stderr(&output), "");
    let log = member.log.lock().unwrap();
    assert_eq!(log.releases.len(), 1);
    assert_eq!(log.revokes, [LEASE]);
}

#[tokio::test]
async fn a_lost_lock_terminates_the_command() {
    let member = fake(KeepAlive::Answer).await;
    let child = fencectl(
        &member,
        &["lock", "free", "--ttl", "1", "--", "sleep", "30"],
    )
    .spawn()
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    member.set_keepalive(KeepAlive::Code(Code::NotFound));
    let output = tokio::time::timeout(Duration::from_secs(5), child.wait_with_output())
        .await
        .expect("fencectl did not stop")
        .unwrap();
    // sleep was killed by SIGTERM (15).
    assert_eq!(output.status.code(), Some(128 + 15), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("lock free lost: the lease was not found"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn a_missing_command_exits_127() {
    let member = fake(KeepAlive::Answer).await;
    let output = run(&member, &["lock", "free", "--", "/nonexistent/cmd"]).await;
    assert_eq!(output.status.code(), Some(127));
    assert!(stderr(&output).contains("/nonexistent/cmd"));
    settle().await;
    assert_eq!(member.log.lock().unwrap().revokes, [LEASE]);
}

#[tokio::test]
async fn lock_without_command_holds_until_sigterm() {
    let member = fake(KeepAlive::Answer).await;
    let mut child = fencectl(&member, &["-o", "json", "lock", "free", "--ttl", "1"])
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next_line().await.unwrap().unwrap();
    assert_eq!(
        line,
        "{\"name\":\"free\",\"token\":42,\"key\":\"__fenced/lock/free/@7\",\"lease\":7}"
    );
    // Still holding after a few keepalives.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(member.log.lock().unwrap().releases.is_empty());
    send_sigterm(&child).await;
    let status = child.wait().await.unwrap();
    assert_eq!(status.code(), Some(0));
    let log = member.log.lock().unwrap();
    assert_eq!(log.releases.len(), 1);
    assert_eq!(log.revokes, [LEASE]);
}

#[tokio::test]
async fn lock_without_command_fails_when_lost() {
    let member = fake(KeepAlive::Answer).await;
    let mut child = fencectl(&member, &["lock", "free", "--ttl", "1"])
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next_line().await.unwrap().unwrap();
    assert_eq!(
        line,
        "lock free acquired: token 42, key __fenced/lock/free/@7, lease 7"
    );
    member.set_keepalive(KeepAlive::Silent);
    let output = tokio::time::timeout(Duration::from_secs(5), child.wait_with_output())
        .await
        .expect("fencectl did not stop")
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).starts_with("Error: lock free lost: no keepalive was acknowledged"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn a_wait_timeout_exits_1_with_the_server_message() {
    let member = fake(KeepAlive::Answer).await;
    let output = run(&member, &["lock", "busy", "--timeout", "0.3", "--", "true"]).await;
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        "Error: acquiring lock busy: DeadlineExceeded: waited 300 ms for lock busy\n"
    );
    settle().await;
    assert_eq!(member.log.lock().unwrap().revokes, [LEASE]);
}

//! `fencectl lock` as users run it, against a real three-member cluster:
//! contenders never run their commands at the same time and see strictly
//! increasing tokens; a holder whose client dies loses the lock when its
//! lease runs out, not before and not much later; lock-delay holds the lock
//! after an expiry but not after a clean release.

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fenced_tests::{Cluster, wait_for};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const LEADER_TIMEOUT: Duration = Duration::from_secs(15);

/// `fencectl lock NAME ARGS...` as a child in its own process group, so the
/// test can kill the client together with its command (a crashed machine).
fn fencectl_lock(cluster: &Cluster, args: &[&str]) -> Command {
    let mut std_command = cluster.fencectl();
    std_command.arg("lock").args(args).process_group(0);
    let mut command = Command::from(std_command);
    command.kill_on_drop(true);
    command
}

#[allow(unsafe_code)]
fn kill_group(child: &Child) -> anyhow::Result<()> {
    let pid = child.id().context("already reaped")? as i32;
    // SAFETY: killpg(2) takes two integers and touches none of our memory;
    // the group is our unreaped child's own (process_group(0)).
    let rc = unsafe { libc::killpg(pid, libc::SIGKILL) };
    anyhow::ensure!(rc == 0, "killpg failed");
    Ok(())
}

#[allow(unsafe_code)]
fn terminate(child: &Child) -> anyhow::Result<()> {
    let pid = child.id().context("already reaped")? as i32;
    // SAFETY: kill(2) takes two integers and touches none of our memory;
    // the pid is our child, not reaped yet (we hold its `Child`).
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    anyhow::ensure!(rc == 0, "kill failed");
    Ok(())
}

/// Waits for `path` to hold a token written by a lock's command.
async fn token_in(path: &Path) -> anyhow::Result<i64> {
    wait_for(
        Duration::from_secs(20),
        "the holder's command to start",
        || async {
            let text = tokio::fs::read_to_string(path).await?;
            text.trim().parse::<i64>().context("not a token yet")
        },
    )
    .await
}

/// Starts `fencectl -o json lock NAME ARGS` without a command and returns it
/// with a future that resolves to the grant line (and when it came).
async fn json_holder(
    cluster: &Cluster,
    name: &str,
    args: &[&str],
) -> anyhow::Result<(
    Child,
    tokio::task::JoinHandle<anyhow::Result<(Instant, i64)>>,
)> {
    let mut std_command = cluster.fencectl();
    std_command
        .args(["-o", "json", "lock", name])
        .args(args)
        .process_group(0)
        .stdout(Stdio::piped());
    let mut child = Command::from(std_command).kill_on_drop(true).spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let name = name.to_string();
    let grant = tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        let line = lines.next_line().await?.context("no grant printed")?;
        let at = Instant::now();
        let json: serde_json::Value = serde_json::from_str(&line)?;
        let token = json["token"].as_i64().context("token")?;
        anyhow::ensure!(json["name"] == name.as_str(), "{line}");
        Ok((at, token))
    });
    Ok((child, grant))
}

#[tokio::test]
async fn contenders_never_run_together_and_see_increasing_tokens() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("log");
    let script = format!(
        "echo \"start $FENCED_LOCK_TOKEN $FENCED_LOCK_NAME\" >> {log}; sleep 0.2; \
         echo \"end $FENCED_LOCK_TOKEN\" >> {log}",
        log = log.display()
    );
    let mut children = Vec::new();
    for _ in 0..4 {
        children.push(
            fencectl_lock(&cluster, &["job", "--ttl", "5", "--", "sh", "-c", &script]).spawn()?,
        );
    }
    // One more whose command fails: fencectl exits with the command's code.
    let mut failing =
        fencectl_lock(&cluster, &["job", "--ttl", "5", "--", "sh", "-c", "exit 7"]).spawn()?;
    for child in &mut children {
        let status = tokio::time::timeout(Duration::from_secs(60), child.wait()).await??;
        assert!(status.success(), "{status}");
    }
    let status = tokio::time::timeout(Duration::from_secs(60), failing.wait()).await??;
    assert_eq!(status.code(), Some(7));

    let text = std::fs::read_to_string(&log)?;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 8, "{text}");
    let mut last = 0;
    for pair in lines.chunks(2) {
        let start: Vec<&str> = pair[0].split_whitespace().collect();
        let end: Vec<&str> = pair[1].split_whitespace().collect();
        assert_eq!(start[0], "start", "commands overlapped:\n{text}");
        assert_eq!(end[0], "end", "commands overlapped:\n{text}");
        assert_eq!(start[1], end[1], "commands overlapped:\n{text}");
        assert_eq!(start[2], "job");
        let token: i64 = start[1].parse()?;
        assert!(token > last, "tokens not increasing:\n{text}");
        last = token;
    }
    // Nothing is left behind.
    let view = cluster.client().lock_describe("job").await?;
    assert!(
        view.holders.is_empty() && view.waiters.is_empty(),
        "{view:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_killed_holder_loses_the_lock_when_its_lease_runs_out() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("a");
    let script = format!(
        "echo $FENCED_LOCK_TOKEN > {}; exec sleep 600",
        token_file.display()
    );
    let ttl = 3;
    let holder = fencectl_lock(
        &cluster,
        &["job", "--ttl", &ttl.to_string(), "--", "sh", "-c", &script],
    )
    .spawn()?;
    let first = token_in(&token_file).await?;
    let (mut next, granted) = json_holder(&cluster, "job", &["--ttl", "3"]).await?;
    let observer = cluster.client();
    wait_for(
        Duration::from_secs(10),
        "the second client to queue",
        || {
            let observer = observer.clone();
            async move {
                let view = observer.lock_describe("job").await?;
                anyhow::ensure!(!view.waiters.is_empty(), "not queued yet");
                anyhow::Ok(())
            }
        },
    )
    .await?;
    kill_group(&holder)?;
    let killed_at = Instant::now();
    let (granted_at, second) = granted.await??;
    let waited = granted_at - killed_at;
    assert!(second > first, "token {second} after {first}");
    // The holder may have been acknowledged a keepalive up to TTL/3 before
    // it died; the lease lives a full TTL after that, so the lock cannot
    // move before 2/3 of the TTL, and the lessor must act within TTL + 1 s.
    let ttl = Duration::from_secs(ttl);
    assert!(
        waited >= ttl * 2 / 3,
        "the lock moved after only {waited:?}"
    );
    assert!(
        waited <= ttl + Duration::from_secs(1),
        "the lock took {waited:?} to move"
    );
    // SIGTERM: the holder releases and exits 0.
    terminate(&next)?;
    let status = tokio::time::timeout(Duration::from_secs(10), next.wait()).await??;
    assert!(status.success(), "{status}");
    let view = cluster.client().lock_describe("job").await?;
    assert!(view.holders.is_empty(), "{view:?}");
    Ok(())
}

#[tokio::test]
async fn lock_delay_holds_the_lock_after_an_expiry_but_not_after_a_release() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    let dir = tempfile::tempdir()?;
    let ttl = Duration::from_secs(2);
    let delay = Duration::from_secs(3);

    // Expiry: the holder's client dies, so its lease expires, then the delay.
    let token_file = dir.path().join("a");
    let script = format!(
        "echo $FENCED_LOCK_TOKEN > {}; exec sleep 600",
        token_file.display()
    );
    let holder = fencectl_lock(
        &cluster,
        &[
            "expiring",
            "--ttl",
            "2",
            "--lock-delay",
            "3",
            "--",
            "sh",
            "-c",
            &script,
        ],
    )
    .spawn()?;
    token_in(&token_file).await?;
    let (mut next, granted) = json_holder(&cluster, "expiring", &["--ttl", "5"]).await?;
    kill_group(&holder)?;
    let killed_at = Instant::now();
    let observer = cluster.client();
    wait_for(Duration::from_secs(10), "the lock-delay to start", || {
        let observer = observer.clone();
        async move {
            let view = observer.lock_describe("expiring").await?;
            anyhow::ensure!(view.delayed && view.holders.is_empty(), "{view:?}");
            anyhow::Ok(())
        }
    })
    .await?;
    let (granted_at, _) = granted.await??;
    let waited = granted_at - killed_at;
    println!("granted {waited:?} after the holder died (TTL {ttl:?}, delay {delay:?})");
    assert!(
        waited >= ttl * 2 / 3 + delay,
        "granted {waited:?} after the holder died: the {delay:?} delay was not kept"
    );
    assert!(
        waited <= ttl + delay + Duration::from_secs(1),
        "granted only {waited:?} after the holder died"
    );
    terminate(&next)?;
    next.wait().await?;

    // Clean release: the delay does not apply.
    let (mut first, first_granted) =
        json_holder(&cluster, "released", &["--ttl", "2", "--lock-delay", "3"]).await?;
    first_granted.await??;
    let (mut second, second_granted) = json_holder(&cluster, "released", &["--ttl", "5"]).await?;
    wait_for(
        Duration::from_secs(10),
        "the second client to queue",
        || {
            let observer = observer.clone();
            async move {
                let view = observer.lock_describe("released").await?;
                anyhow::ensure!(!view.waiters.is_empty(), "not queued yet");
                anyhow::Ok(())
            }
        },
    )
    .await?;
    terminate(&first)?;
    let released_at = Instant::now();
    let (granted_at, _) = second_granted.await??;
    assert!(
        granted_at - released_at < delay,
        "a clean release imposed the lock-delay ({:?})",
        granted_at - released_at
    );
    assert!(first.wait().await?.success());
    terminate(&second)?;
    second.wait().await?;
    Ok(())
}

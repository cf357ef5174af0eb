//! `fencectl` as a user runs it: output formats, and exit codes 0, 1 and 2.

use std::process::{Command, Output};
use std::time::Duration;

use fenced_tests::{Cluster, fencectl_bin};
use serde_json::Value;

const LEADER_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs a prepared command without blocking the test's runtime.
async fn run(command: Command) -> Output {
    let mut command = tokio::process::Command::from(command);
    command.env_remove("FENCED_ENDPOINTS");
    command.output().await.expect("fencectl runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The JSON objects of `-o json` output, one per line.
fn json_lines(output: &Output) -> Vec<Value> {
    stdout(output)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{line:?}: {err}")))
        .collect()
}

/// Asserts success and returns the output.
async fn ok(cluster: &Cluster, args: &[&str]) -> Output {
    let mut command = cluster.fencectl();
    command.args(args);
    let output = run(command).await;
    assert!(
        output.status.success(),
        "fencectl {args:?} failed ({}): {}",
        output.status,
        stderr(&output)
    );
    output
}

#[tokio::test]
async fn put_get_del_and_status_against_a_cluster() -> anyhow::Result<()> {
    let cluster = Cluster::start(1).await?;
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await?;

    assert_eq!(
        stdout(&ok(&cluster, &["put", "color", "blue"]).await),
        "OK\n"
    );
    let put = json_lines(&ok(&cluster, &["-o", "json", "put", "size", "-1"]).await);
    assert!(put[0]["revision"].as_i64() > Some(0), "{put:?}");

    // Simple get: key line, value line, like etcdctl.
    assert_eq!(
        stdout(&ok(&cluster, &["get", "color"]).await),
        "color\nblue\n"
    );
    let got = json_lines(&ok(&cluster, &["get", "color", "-o", "json"]).await);
    assert_eq!(got.len(), 1);
    let kv = &got[0];
    assert_eq!(kv["key"], "color");
    assert_eq!(kv["value"], "blue");
    assert_eq!(kv["version"], 1);
    assert_eq!(kv["lease"], 0);
    assert!(kv["create_revision"].as_i64() > Some(0));
    assert_eq!(kv["mod_revision"], kv["create_revision"]);

    let both = json_lines(&ok(&cluster, &["-o", "json", "get", "", "--prefix"]).await);
    assert_eq!(both.len(), 2);
    let limited = json_lines(
        &ok(
            &cluster,
            &["-o", "json", "get", "", "--prefix", "--limit", "1"],
        )
        .await,
    );
    assert_eq!(limited.len(), 1);
    let serializable =
        json_lines(&ok(&cluster, &["-o", "json", "get", "color", "--serializable"]).await);
    assert_eq!(serializable[0]["value"], "blue");

    assert_eq!(stdout(&ok(&cluster, &["del", "color"]).await), "1\n");
    assert_eq!(stdout(&ok(&cluster, &["get", "color"]).await), "");
    assert_eq!(stdout(&ok(&cluster, &["del", "color"]).await), "0\n");

    let status = json_lines(&ok(&cluster, &["-o", "json", "status"]).await);
    assert_eq!(status.len(), 1);
    let member = &status[0];
    assert_eq!(member["endpoint"], cluster.endpoint(1));
    assert_eq!(member["id"], 1);
    assert_eq!(member["leader"], leader);
    assert!(member["term"].as_u64() >= Some(1));
    assert!(member["applied_index"].as_u64() >= Some(1));
    assert!(member["commit_index"].as_u64() >= member["applied_index"].as_u64());
    assert!(member["revision"].as_i64() >= Some(2));
    assert_eq!(member["role"], "leader");
    assert!(member.get("error").is_none());

    let table = stdout(&ok(&cluster, &["status"]).await);
    assert!(table.starts_with("ENDPOINT"), "{table}");
    assert!(table.contains(&cluster.endpoint(1)), "{table}");

    // A member publishes its client address through the log after it
    // starts: wait until that entry has applied.
    let members = fenced_tests::wait_for(
        Duration::from_secs(10),
        "the member's published client address",
        || async {
            let members = json_lines(&ok(&cluster, &["-o", "json", "member", "list"]).await);
            match members.first().and_then(|m| m["client_addr"].as_str()) {
                Some(addr) if !addr.is_empty() => Ok(members),
                _ => Err(format!("{members:?}")),
            }
        },
    )
    .await?;
    assert_eq!(members.len(), 1);
    assert_eq!(members[0]["id"], 1);
    assert_eq!(members[0]["client_addr"], cluster.endpoint(1));
    assert_eq!(members[0]["learner"], false);
    assert!(members[0]["peer_addr"].is_string());

    // One endpoint down: its row carries the error and the exit code is 1.
    let mut command = Command::new(fencectl_bin());
    command.args([
        "--endpoints",
        &format!("{},127.0.0.1:1", cluster.endpoint(1)),
        "-o",
        "json",
        "status",
    ]);
    let output = run(command).await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let rows = json_lines(&output);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["id"], 1);
    assert_eq!(rows[1]["endpoint"], "127.0.0.1:1");
    assert!(rows[1]["error"].is_string(), "{rows:?}");
    Ok(())
}

#[tokio::test]
async fn an_unreachable_cluster_exits_with_1_and_a_message() {
    let mut command = Command::new(fencectl_bin());
    command.args(["--endpoints", "127.0.0.1:1", "--timeout", "1", "get", "k"]);
    let output = run(command).await;
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stdout(&output), "");
    let message = stderr(&output);
    assert!(message.starts_with("Error: "), "{message}");
    assert!(message.contains("DeadlineExceeded"), "{message}");
    assert!(message.contains("Unavailable"), "{message}");
}

#[tokio::test]
async fn usage_errors_exit_with_2() {
    for args in [
        &["no-such-command"][..],
        &["put", "only-a-key"],
        &["get"],
        &["-o", "yaml", "get", "k"],
        &["--timeout", "-3", "get", "k"],
        &["--endpoints", "https://127.0.0.1:1", "get", "k"],
        &["put", "k", "v", "--lease", "ten"],
    ] {
        let mut command = Command::new(fencectl_bin());
        command.args(args);
        let output = run(command).await;
        assert_eq!(
            output.status.code(),
            Some(2),
            "fencectl {args:?}: {}",
            stderr(&output)
        );
        assert!(!stderr(&output).is_empty());
    }
}

//! Requests a member must refuse: each gets the right gRPC code and a message
//! that says what was wrong (naming the limit where there is one), writes
//! nothing, and leaves the member serving.

use std::time::Duration;

use fenced_client::pb::compare::{CompareResult, CompareTarget, TargetUnion};
use fenced_client::pb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, request_op,
};
use fenced_client::{Client, Error};
use fenced_tests::Cluster;
use tonic::Code;

const LEADER_TIMEOUT: Duration = Duration::from_secs(15);

/// The server's defaults (`--max-key-bytes`, `--max-value-bytes`,
/// `--max-request-bytes`), which the cluster runs with.
const MAX_KEY_BYTES: usize = 4096;
const MAX_VALUE_BYTES: usize = 1024 * 1024;
const MAX_REQUEST_BYTES: usize = 3 * 1024 * 1024 / 2;

/// One bad request and what the member must answer.
struct Case {
    name: &'static str,
    code: Code,
    /// Every one of these must appear in the error message.
    message_contains: Vec<String>,
    outcome: Result<(), Error>,
}

fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        ..PutRequest::default()
    }
}

fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(put(key, value))),
    }
}

fn txn_with_compare(compare: Compare) -> TxnRequest {
    TxnRequest {
        compare: vec![compare],
        success: vec![put_op("txn-ran", "yes")],
        failure: vec![put_op("txn-ran", "no")],
    }
}

/// Runs every bad request against `client` and records what came back.
async fn run_cases(client: &Client, current_revision: i64) -> Vec<Case> {
    let long_key = vec![b'k'; MAX_KEY_BYTES + 1];
    let mut cases = Vec::new();
    let mut case = |name, code, message_contains: &[&str], outcome: Result<(), Error>| {
        cases.push(Case {
            name,
            code,
            message_contains: message_contains.iter().map(|s| s.to_string()).collect(),
            outcome,
        });
    };

    case(
        "put with an empty key",
        Code::InvalidArgument,
        &["empty"],
        client.put("", "v").await.map(drop),
    );
    case(
        "range of an empty key without prefix",
        Code::InvalidArgument,
        &["empty"],
        client.get("").await.map(drop),
    );
    case(
        "put with a key of 4097 bytes",
        Code::InvalidArgument,
        &["4097", "4096"],
        client.put(long_key.clone(), "v").await.map(drop),
    );
    case(
        "range of a key of 4097 bytes",
        Code::InvalidArgument,
        &["4097", "4096"],
        client.get(long_key.clone()).await.map(drop),
    );
    case(
        "delete of a key of 4097 bytes",
        Code::InvalidArgument,
        &["4097", "4096"],
        client
            .delete_range(DeleteRangeRequest {
                key: long_key.clone(),
                ..DeleteRangeRequest::default()
            })
            .await
            .map(drop),
    );
    case(
        "put with a value of 1 MiB + 1",
        Code::InvalidArgument,
        &["1048577", "1048576"],
        client
            .put("big", vec![b'v'; MAX_VALUE_BYTES + 1])
            .await
            .map(drop),
    );
    case(
        "txn compare with TARGET_UNSPECIFIED",
        Code::InvalidArgument,
        &["target"],
        client
            .txn(txn_with_compare(Compare {
                result: CompareResult::Equal.into(),
                target: CompareTarget::TargetUnspecified.into(),
                key: "k".into(),
                target_union: Some(TargetUnion::Version(1)),
            }))
            .await
            .map(drop),
    );
    case(
        "txn compare VERSION with a value in the union",
        Code::InvalidArgument,
        &["VERSION"],
        client
            .txn(txn_with_compare(Compare {
                result: CompareResult::Equal.into(),
                target: CompareTarget::Version.into(),
                key: "k".into(),
                target_union: Some(TargetUnion::Value("1".into())),
            }))
            .await
            .map(drop),
    );
    case(
        "txn compare VALUE with no union",
        Code::InvalidArgument,
        &["VALUE"],
        client
            .txn(txn_with_compare(Compare {
                result: CompareResult::Equal.into(),
                target: CompareTarget::Value.into(),
                key: "k".into(),
                target_union: None,
            }))
            .await
            .map(drop),
    );
    case(
        "txn writing one key twice",
        Code::InvalidArgument,
        &["twice"],
        client
            .txn(TxnRequest {
                compare: vec![],
                success: vec![put_op("dup", "1"), put_op("dup", "2")],
                failure: vec![],
            })
            .await
            .map(drop),
    );
    case(
        "txn with a key of 4097 bytes in a put",
        Code::InvalidArgument,
        &["4097", "4096"],
        client
            .txn(TxnRequest {
                compare: vec![],
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestPut(put(long_key.clone(), "v"))),
                }],
                failure: vec![],
            })
            .await
            .map(drop),
    );
    case(
        "range with a negative limit",
        Code::InvalidArgument,
        &["-1"],
        client
            .range(RangeRequest {
                key: "k".into(),
                prefix: true,
                limit: -1,
                ..RangeRequest::default()
            })
            .await
            .map(drop),
    );
    for revision in [current_revision - 1, current_revision + 1] {
        let asked = revision.to_string();
        let current = current_revision.to_string();
        case(
            "range at a revision that is not the current one",
            Code::InvalidArgument,
            &[&asked, &current],
            client
                .range(RangeRequest {
                    key: "k".into(),
                    revision,
                    ..RangeRequest::default()
                })
                .await
                .map(drop),
        );
    }
    let lease = 7_777_777_i64;
    case(
        "put with an unknown lease",
        Code::NotFound,
        &[&lease.to_string()],
        client
            .put_with(PutRequest {
                lease,
                ..put("leased", "v")
            })
            .await
            .map(drop),
    );
    let limit = MAX_REQUEST_BYTES.to_string();
    case(
        "request larger than --max-request-bytes",
        Code::InvalidArgument,
        &[&limit],
        client
            .put("huge", vec![b'v'; MAX_REQUEST_BYTES + 1])
            .await
            .map(drop),
    );
    cases
}

#[tokio::test]
async fn bad_requests_get_the_right_code_and_the_member_keeps_serving() -> anyhow::Result<()> {
    let cluster = Cluster::start(1).await?;
    cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    let client = cluster.client_of(1);
    // Two writes, so the revision before the current one is not 0 (which
    // means "current").
    client.put("k", "first").await?;
    client.put("k", "before").await?;
    let before = cluster.contents(1).await?;
    assert!(before.revision >= 2, "{before:?}");

    let cases = run_cases(&client, before.revision).await;
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.name;
        match &case.outcome {
            Ok(()) => failures.push(format!("{name}: accepted, expected {:?}", case.code)),
            Err(err) => {
                let message = err.status().map(|s| s.message()).unwrap_or_default();
                if err.code() != case.code {
                    failures.push(format!("{name}: expected {:?}, got {err}", case.code));
                }
                for part in &case.message_contains {
                    if !message.contains(part.as_str()) {
                        failures.push(format!("{name}: message {message:?} lacks {part:?}"));
                    }
                }
                println!("{name}: {err}");
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad requests got the wrong answer:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // Nothing was written, not even a revision used up, and the member
    // still serves.
    assert!(cluster.is_live(1), "the member exited");
    assert_eq!(cluster.contents(1).await?, before);
    let put = client.put("k", "after").await?;
    assert_eq!(put.header.map(|h| h.revision), Some(before.revision + 1));
    let kv = client.get("k").await?.map(|kv| kv.value);
    assert_eq!(kv.as_deref(), Some(&b"after"[..]));
    Ok(())
}

//! Conversions between `fenced_proto::pb` and the state machine's types,
//! with the validation that makes a request safe to propose.

use std::collections::BTreeSet;

use fenced_proto::pb;
use tonic::Status;

use crate::api::Limits;
use crate::state;

impl From<state::KeyValue> for pb::KeyValue {
    fn from(kv: state::KeyValue) -> Self {
        pb::KeyValue {
            key: kv.key,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            value: kv.value,
            lease: kv.lease,
        }
    }
}

/// Checks a key used as an exact key (non-empty, not too long).
pub fn check_key(key: &[u8], limits: &Limits, what: &str) -> Result<(), Status> {
    if key.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{what}: key must not be empty"
        )));
    }
    check_key_len(key, limits, what)
}

fn check_key_len(key: &[u8], limits: &Limits, what: &str) -> Result<(), Status> {
    if key.len() > limits.max_key_bytes {
        return Err(Status::invalid_argument(format!(
            "{what}: key is {} bytes, the limit is {} bytes",
            key.len(),
            limits.max_key_bytes
        )));
    }
    Ok(())
}

/// Checks a key that may be a prefix: empty is fine when `prefix` is set.
fn check_range_key(key: &[u8], prefix: bool, limits: &Limits, what: &str) -> Result<(), Status> {
    if prefix {
        check_key_len(key, limits, what)
    } else {
        check_key(key, limits, what)
    }
}

/// Longest lock or election name, bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// Checks a lock (or election) name: 1 to [`MAX_NAME_BYTES`] bytes of
/// `A-Z a-z 0-9 . _ - : /`. The set keeps names readable in keys and logs,
/// and leaves `@` free to separate the name from the lease in a lock key.
pub fn check_name(name: &str, what: &str) -> Result<(), Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{what}: name must not be empty"
        )));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(Status::invalid_argument(format!(
            "{what}: name is {} bytes, the limit is {MAX_NAME_BYTES} bytes",
            name.len()
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/')))
    {
        return Err(Status::invalid_argument(format!(
            "{what}: name {name:?} contains {bad:?}; names use only A-Z a-z 0-9 . _ - : /"
        )));
    }
    Ok(())
}

/// Refuses client writes under the reserved prefix.
fn check_writable(key: &[u8], what: &str) -> Result<(), Status> {
    if state::is_reserved(key) {
        return Err(Status::invalid_argument(format!(
            "{what}: key {:?} is under the reserved prefix \"__fenced/\" (lock and election queues); \
             it can be read and watched but only changed through the Lock and Election services",
            String::from_utf8_lossy(key)
        )));
    }
    Ok(())
}

/// Validates and converts a put.
pub fn put(req: pb::PutRequest, limits: &Limits) -> Result<state::PutRequest, Status> {
    check_key(&req.key, limits, "put")?;
    check_writable(&req.key, "put")?;
    if req.value.len() > limits.max_value_bytes {
        return Err(Status::invalid_argument(format!(
            "put: value is {} bytes, the limit is {} bytes",
            req.value.len(),
            limits.max_value_bytes
        )));
    }
    if req.lease < 0 {
        return Err(Status::invalid_argument(format!(
            "put: lease id {} is negative",
            req.lease
        )));
    }
    Ok(state::PutRequest {
        key: req.key,
        value: req.value,
        lease: req.lease,
        prev_kv: req.prev_kv,
    })
}

/// Validates and converts a delete.
pub fn delete(
    req: pb::DeleteRangeRequest,
    limits: &Limits,
) -> Result<state::DeleteRequest, Status> {
    check_range_key(&req.key, req.prefix, limits, "delete")?;
    Ok(state::DeleteRequest {
        key: req.key,
        prefix: req.prefix,
        prev_kv: req.prev_kv,
    })
}

/// Validates and converts a range (the `revision` and `serializable`
/// fields are handled by the caller).
pub fn range(req: &pb::RangeRequest, limits: &Limits) -> Result<state::RangeRequest, Status> {
    check_range_key(&req.key, req.prefix, limits, "range")?;
    if req.limit < 0 {
        return Err(Status::invalid_argument(format!(
            "range: limit {} is negative (0 means no limit)",
            req.limit
        )));
    }
    if req.revision < 0 {
        return Err(Status::invalid_argument(format!(
            "range: revision {} is negative",
            req.revision
        )));
    }
    Ok(state::RangeRequest {
        key: req.key.clone(),
        prefix: req.prefix,
        limit: req.limit,
        count_only: req.count_only,
        keys_only: req.keys_only,
    })
}

/// Validates and converts a transaction.
pub fn txn(req: pb::TxnRequest, limits: &Limits) -> Result<state::TxnRequest, Status> {
    let max = limits.max_txn_ops;
    for (what, n) in [
        ("compares", req.compare.len()),
        ("success ops", req.success.len()),
        ("failure ops", req.failure.len()),
    ] {
        if n > max {
            return Err(Status::invalid_argument(format!(
                "txn: {n} {what}, the limit is {max}"
            )));
        }
    }
    let compare = req
        .compare
        .into_iter()
        .enumerate()
        .map(|(i, c)| compare(c, limits).map_err(|s| prefix_status(s, &format!("txn compare {i}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let success = txn_ops(req.success, limits, "txn success")?;
    let failure = txn_ops(req.failure, limits, "txn failure")?;
    Ok(state::TxnRequest {
        compare,
        success,
        failure,
    })
}

fn compare(c: pb::Compare, limits: &Limits) -> Result<state::Compare, Status> {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    check_key(&c.key, limits, "compare")?;
    if c.target == CompareTarget::LockToken as i32 {
        return lock_compare(c);
    }
    let op = match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => state::CompareOp::Equal,
        Ok(CompareResult::Greater) => state::CompareOp::Greater,
        Ok(CompareResult::Less) => state::CompareOp::Less,
        Ok(CompareResult::NotEqual) => state::CompareOp::NotEqual,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown compare result {} (expected EQUAL, GREATER, LESS or NOT_EQUAL)",
                c.result
            )));
        }
    };
    let target = CompareTarget::try_from(c.target).unwrap_or(CompareTarget::TargetUnspecified);
    let target = match (target, c.target_union) {
        (CompareTarget::Version, Some(TargetUnion::Version(v))) => state::CompareTarget::Version(v),
        (CompareTarget::Create, Some(TargetUnion::CreateRevision(v))) => {
            state::CompareTarget::CreateRevision(v)
        }
        (CompareTarget::Mod, Some(TargetUnion::ModRevision(v))) => {
            state::CompareTarget::ModRevision(v)
        }
        (CompareTarget::Value, Some(TargetUnion::Value(v))) => {
            if v.len() > limits.max_value_bytes {
                return Err(Status::invalid_argument(format!(
                    "compare value is {} bytes, the limit is {} bytes",
                    v.len(),
                    limits.max_value_bytes
                )));
            }
            state::CompareTarget::Value(v)
        }
        (CompareTarget::Lease, Some(TargetUnion::Lease(v))) => state::CompareTarget::Lease(v),
        (CompareTarget::TargetUnspecified, _) => {
            return Err(Status::invalid_argument(format!(
                "unknown compare target {} (expected VERSION, CREATE, MOD, VALUE, LEASE or LOCK_TOKEN)",
                c.target
            )));
        }
        (target, _) => {
            return Err(Status::invalid_argument(format!(
                "compare target {} needs the matching target_union field set",
                target.as_str_name()
            )));
        }
    };
    Ok(state::Compare {
        key: c.key,
        op,
        target,
    })
}

/// A "token is still the current holder of lock `key`" compare.
fn lock_compare(c: pb::Compare) -> Result<state::Compare, Status> {
    use pb::compare::{CompareResult, TargetUnion};
    let name = std::str::from_utf8(&c.key)
        .map_err(|_| Status::invalid_argument("compare LOCK_TOKEN: the key must be a lock name"))?;
    check_name(name, "compare LOCK_TOKEN")?;
    let op = match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => state::CompareOp::Equal,
        Ok(CompareResult::NotEqual) => state::CompareOp::NotEqual,
        _ => {
            return Err(Status::invalid_argument(
                "compare LOCK_TOKEN accepts only EQUAL (token is current) or NOT_EQUAL (it is not)",
            ));
        }
    };
    let Some(TargetUnion::LockToken(token)) = c.target_union else {
        return Err(Status::invalid_argument(
            "compare target LOCK_TOKEN needs the lock_token field set",
        ));
    };
    Ok(state::Compare {
        key: c.key,
        op,
        target: state::CompareTarget::LockToken(token),
    })
}

fn txn_ops(
    ops: Vec<pb::RequestOp>,
    limits: &Limits,
    what: &str,
) -> Result<Vec<state::TxnOp>, Status> {
    let mut written: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut deleted_prefixes: Vec<(Vec<u8>, bool)> = Vec::new();
    let mut out = Vec::with_capacity(ops.len());
    for (i, op) in ops.into_iter().enumerate() {
        let ctx = format!("{what} op {i}");
        let converted = match op.request {
            Some(pb::request_op::Request::RequestRange(r)) => {
                state::TxnOp::Range(range(&r, limits).map_err(|s| prefix_status(s, &ctx))?)
            }
            Some(pb::request_op::Request::RequestPut(p)) => {
                let p = put(p, limits).map_err(|s| prefix_status(s, &ctx))?;
                if !written.insert(p.key.clone()) {
                    return Err(Status::invalid_argument(format!(
                        "{ctx}: key {:?} is written twice in one transaction",
                        String::from_utf8_lossy(&p.key)
                    )));
                }
                state::TxnOp::Put(p)
            }
            Some(pb::request_op::Request::RequestDeleteRange(d)) => {
                let d = delete(d, limits).map_err(|s| prefix_status(s, &ctx))?;
                deleted_prefixes.push((d.key.clone(), d.prefix));
                state::TxnOp::DeleteRange(d)
            }
            None => return Err(Status::invalid_argument(format!("{ctx}: empty operation"))),
        };
        out.push(converted);
    }
    for key in &written {
        let overlaps = deleted_prefixes.iter().any(|(d, prefix)| {
            if *prefix {
                key.starts_with(d)
            } else {
                key == d
            }
        });
        if overlaps {
            return Err(Status::invalid_argument(format!(
                "{what}: key {:?} is both put and deleted in one transaction",
                String::from_utf8_lossy(key)
            )));
        }
    }
    Ok(out)
}

fn prefix_status(status: Status, context: &str) -> Status {
    Status::new(status.code(), format!("{context}: {}", status.message()))
}

/// Converts a range answer.
pub fn range_response(header: pb::ResponseHeader, r: state::RangeResult) -> pb::RangeResponse {
    pb::RangeResponse {
        header: Some(header),
        kvs: r.kvs.into_iter().map(Into::into).collect(),
        more: r.more,
        count: r.count,
    }
}

/// Converts a put answer.
pub fn put_response(header: pb::ResponseHeader, r: state::PutResult) -> pb::PutResponse {
    pb::PutResponse {
        header: Some(header),
        prev_kv: r.prev_kv.map(Into::into),
    }
}

/// Converts a delete answer.
pub fn delete_response(
    header: pb::ResponseHeader,
    r: state::DeleteResult,
) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header: Some(header),
        deleted: r.deleted,
        prev_kvs: r.prev_kvs.into_iter().map(Into::into).collect(),
    }
}

/// Converts a transaction answer; inner responses carry the same header.
pub fn txn_response(header: pb::ResponseHeader, r: state::TxnResult) -> pb::TxnResponse {
    use pb::response_op::Response as R;
    let responses = r
        .responses
        .into_iter()
        .map(|op| pb::ResponseOp {
            response: Some(match op {
                state::TxnOpResult::Range(x) => R::ResponseRange(range_response(header, x)),
                state::TxnOpResult::Put(x) => R::ResponsePut(put_response(header, x)),
                state::TxnOpResult::DeleteRange(x) => {
                    R::ResponseDeleteRange(delete_response(header, x))
                }
            }),
        })
        .collect();
    pb::TxnResponse {
        header: Some(header),
        succeeded: r.succeeded,
        responses,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: Limits = Limits {
        max_key_bytes: 16,
        max_value_bytes: 32,
        max_txn_ops: 4,
    };

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>(), 0..40)
    }

    fn range_req() -> impl Strategy<Value = pb::RangeRequest> {
        (
            bytes(),
            any::<bool>(),
            any::<i64>(),
            any::<i64>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(key, prefix, limit, revision, count_only, keys_only)| {
                pb::RangeRequest {
                    key,
                    prefix,
                    limit,
                    revision,
                    serializable: false,
                    count_only,
                    keys_only,
                }
            })
    }

    fn put_req() -> impl Strategy<Value = pb::PutRequest> {
        (bytes(), bytes(), any::<i64>(), any::<bool>()).prop_map(|(key, value, lease, prev_kv)| {
            pb::PutRequest {
                key,
                value,
                lease,
                prev_kv,
            }
        })
    }

    fn delete_req() -> impl Strategy<Value = pb::DeleteRangeRequest> {
        (bytes(), any::<bool>(), any::<bool>()).prop_map(|(key, prefix, prev_kv)| {
            pb::DeleteRangeRequest {
                key,
                prefix,
                prev_kv,
            }
        })
    }

    fn op() -> impl Strategy<Value = pb::RequestOp> {
        use pb::request_op::Request;
        prop_oneof![
            Just(None),
            range_req().prop_map(|r| Some(Request::RequestRange(r))),
            put_req().prop_map(|r| Some(Request::RequestPut(r))),
            delete_req().prop_map(|r| Some(Request::RequestDeleteRange(r))),
        ]
        .prop_map(|request| pb::RequestOp { request })
    }

    fn compare() -> impl Strategy<Value = pb::Compare> {
        use pb::compare::TargetUnion;
        let union = prop_oneof![
            Just(None),
            any::<i64>().prop_map(|v| Some(TargetUnion::Version(v))),
            any::<i64>().prop_map(|v| Some(TargetUnion::CreateRevision(v))),
            any::<i64>().prop_map(|v| Some(TargetUnion::ModRevision(v))),
            bytes().prop_map(|v| Some(TargetUnion::Value(v))),
            any::<i64>().prop_map(|v| Some(TargetUnion::Lease(v))),
            any::<i64>().prop_map(|v| Some(TargetUnion::LockToken(v))),
        ];
        (-2i32..8, -2i32..8, bytes(), union).prop_map(|(result, target, key, target_union)| {
            pb::Compare {
                result,
                target,
                key,
                target_union,
            }
        })
    }

    fn txn_req() -> impl Strategy<Value = pb::TxnRequest> {
        (
            prop::collection::vec(compare(), 0..6),
            prop::collection::vec(op(), 0..6),
            prop::collection::vec(op(), 0..6),
        )
            .prop_map(|(compare, success, failure)| pb::TxnRequest {
                compare,
                success,
                failure,
            })
    }

    proptest! {
        /// Whatever a client sends, validation answers Ok or INVALID_ARGUMENT
        /// (never panics), and what it accepts respects every limit.
        #[test]
        fn validation_never_panics_and_enforces_limits(
            put in put_req(),
            del in delete_req(),
            range_req in range_req(),
            txn_req in txn_req(),
        ) {
            let checks = [
                put_ok(put),
                delete(del, &LIMITS).map(|d| assert!(d.key.len() <= LIMITS.max_key_bytes)),
                range(&range_req, &LIMITS).map(|r| assert!(r.limit >= 0)),
                txn(txn_req, &LIMITS).map(|t| {
                    assert!(t.compare.len() <= LIMITS.max_txn_ops);
                    assert!(t.success.len() <= LIMITS.max_txn_ops);
                    for op in t.success.iter().chain(&t.failure) {
                        if let state::TxnOp::Put(p) = op {
                            assert!(!p.key.is_empty() && p.key.len() <= LIMITS.max_key_bytes);
                        }
                    }
                }),
            ];
            for check in checks {
                if let Err(status) = check {
                    prop_assert_eq!(status.code(), tonic::Code::InvalidArgument);
                    prop_assert!(!status.message().is_empty());
                }
            }
        }
    }

    fn put_ok(req: pb::PutRequest) -> Result<(), Status> {
        let p = put(req, &LIMITS)?;
        assert!(!p.key.is_empty() && p.key.len() <= LIMITS.max_key_bytes);
        assert!(p.value.len() <= LIMITS.max_value_bytes);
        assert!(p.lease >= 0);
        Ok(())
    }

    #[test]
    fn errors_name_the_limit() {
        let err = put(
            pb::PutRequest {
                key: vec![b'k'; 17],
                ..Default::default()
            },
            &LIMITS,
        )
        .unwrap_err();
        assert!(err.message().contains("16"), "{}", err.message());
        let err = put(
            pb::PutRequest {
                key: b"k".to_vec(),
                value: vec![0; 33],
                ..Default::default()
            },
            &LIMITS,
        )
        .unwrap_err();
        assert!(err.message().contains("32"), "{}", err.message());
        let too_many = pb::TxnRequest {
            success: vec![pb::RequestOp::default(); 5],
            ..Default::default()
        };
        assert!(txn(too_many, &LIMITS).unwrap_err().message().contains('4'));
    }

    #[test]
    fn a_txn_may_not_write_a_key_twice_or_put_and_delete_it() {
        use pb::request_op::Request;
        let put_k = || pb::RequestOp {
            request: Some(Request::RequestPut(pb::PutRequest {
                key: b"k".to_vec(),
                ..Default::default()
            })),
        };
        let twice = pb::TxnRequest {
            success: vec![put_k(), put_k()],
            ..Default::default()
        };
        assert!(txn(twice, &LIMITS).unwrap_err().message().contains("twice"));
        let del_prefix = pb::RequestOp {
            request: Some(Request::RequestDeleteRange(pb::DeleteRangeRequest {
                key: vec![],
                prefix: true,
                prev_kv: false,
            })),
        };
        let both = pb::TxnRequest {
            failure: vec![put_k(), del_prefix],
            ..Default::default()
        };
        assert!(
            txn(both, &LIMITS)
                .unwrap_err()
                .message()
                .contains("both put and deleted")
        );
    }
}

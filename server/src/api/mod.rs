//! The gRPC services, one per file. Each validates its input, converts
//! between `fenced_proto::pb` and domain types, and calls the [`Node`].
//!
//! **Architecture Invariant:** nothing a client sends can panic the server;
//! every rejection names what was wrong and the limit.

pub mod cluster;
pub mod convert;
pub mod election;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod peer;
pub mod watch;

use std::time::Duration;

use fenced_proto::pb;
use tonic::Status;

use crate::node::{Node, NodeError};
use crate::state::ApplyError;

/// Request limits, from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest key, bytes.
    pub max_key_bytes: usize,
    /// Largest value, bytes.
    pub max_value_bytes: usize,
    /// Most operations in one transaction branch, and most compares.
    pub max_txn_ops: usize,
}

impl From<NodeError> for Status {
    fn from(err: NodeError) -> Self {
        match err {
            NodeError::Unavailable(m) => Status::unavailable(m),
            NodeError::Aborted(m) => Status::aborted(m),
            NodeError::DeadlineExceeded(m) => Status::deadline_exceeded(m),
            NodeError::Storage(m) => Status::unavailable(format!("storage failure: {m}")),
            NodeError::FailedPrecondition(m) => Status::failed_precondition(m),
        }
    }
}

impl From<ApplyError> for Status {
    fn from(err: ApplyError) -> Self {
        let message = err.to_string();
        match err {
            ApplyError::LeaseNotFound(_) => Status::not_found(message),
            ApplyError::LeaseExists(_) => Status::already_exists(message),
            ApplyError::LeaseIdsExhausted => Status::resource_exhausted(message),
            ApplyError::LeaseIdUsed { .. }
            | ApplyError::InvalidTtl(_)
            | ApplyError::ReservedKey(_)
            | ApplyError::LockConflict(_)
            | ApplyError::AmbiguousToken { .. } => Status::invalid_argument(message),
            ApplyError::LockBusy { .. } => Status::deadline_exceeded(message),
            ApplyError::StaleToken { .. }
            | ApplyError::NotLeader { .. }
            | ApplyError::StaleLeaderCommand { .. } => Status::failed_precondition(message),
        }
    }
}

/// The header every response carries.
pub fn header(node: &Node, revision: i64) -> pb::ResponseHeader {
    pb::ResponseHeader {
        cluster_id: node.cluster_id(),
        member_id: node.id(),
        revision,
        raft_term: node.status().term(),
    }
}

/// The client's deadline from the `grpc-timeout` header, if it sent one.
pub fn client_timeout<T>(request: &tonic::Request<T>) -> Option<Duration> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    parse_grpc_timeout(value)
}

/// Parses the gRPC wire format of a timeout: at most 8 digits (the gRPC
/// spec's limit) then one unit letter.
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(
            parse_grpc_timeout("99999999H"),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
        for bad in [
            "",
            "S",
            "5x",
            "-5S",
            "5",
            "18446744073709551615S",
            "123456789S",
        ] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }
}

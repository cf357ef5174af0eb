//! The snapshot format: the whole state machine (keyspace, leases, lock and
//! election queues, lock-delays, members, revision) in one byte string.
//!
//! Layout: the 8-byte magic `FNCDSNAP`, a little-endian `u32` format version,
//! a little-endian `u64` FNV-1a checksum of the body (checked on decode, so a
//! damaged snapshot is refused rather than installed), then the body: the
//! state in postcard. The watch history is not in it: a member that starts from a
//! snapshot serves watches from the snapshot's revision on.

use super::StateMachine;
use super::kv::Fnv1a64;

const MAGIC: &[u8; 8] = b"FNCDSNAP";
const VERSION: u32 = 1;
const HEADER: usize = 8 + 4 + 8;

/// Why a snapshot could not be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// Not a fenced snapshot, or cut short.
    #[error("not a fenced snapshot (bad header, {0} bytes)")]
    BadHeader(usize),
    /// Written by a version this one cannot read.
    #[error("snapshot format version {0} is not supported (this build reads version {VERSION})")]
    Version(u32),
    /// The body does not decode.
    #[error("snapshot body does not decode: {0}")]
    Body(String),
    /// The body's checksum differs from the header's.
    #[error("snapshot checksum mismatch: header {expected:016x}, body {actual:016x}")]
    Checksum {
        /// Checksum in the header.
        expected: u64,
        /// Checksum of the body.
        actual: u64,
    },
}

/// Encodes the whole state.
pub fn encode(state: &StateMachine) -> Vec<u8> {
    let mut out = vec![0; HEADER];
    out[..8].copy_from_slice(MAGIC);
    out[8..12].copy_from_slice(&VERSION.to_le_bytes());
    // Serializing plain owned data into a Vec cannot fail.
    let mut out = postcard::to_extend(state, out).unwrap_or_default();
    let sum = checksum(&out[HEADER..]);
    out[12..20].copy_from_slice(&sum.to_le_bytes());
    out
}

fn checksum(body: &[u8]) -> u64 {
    let mut hash = Fnv1a64::new();
    hash.write_bytes(body);
    hash.finish()
}

/// Decodes a snapshot written by [`encode`], checking its digest.
pub fn decode(bytes: &[u8]) -> Result<StateMachine, SnapshotError> {
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err(SnapshotError::BadHeader(bytes.len()));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default());
    if version != VERSION {
        return Err(SnapshotError::Version(version));
    }
    let expected = u64::from_le_bytes(bytes[12..20].try_into().unwrap_or_default());
    let body = &bytes[HEADER..];
    let actual = checksum(body);
    if actual != expected {
        return Err(SnapshotError::Checksum { expected, actual });
    }
    postcard::from_bytes(body).map_err(|e| SnapshotError::Body(e.to_string()))
}

//! What can go wrong in the raft storage.

/// Errors of the fjall-backed Raft storage. Any of them should make the node fail-stop.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The storage engine failed (I/O error, poisoned after a failed fsync, locked, ...).
    #[error("fjall: {0}")]
    Fjall(#[from] fjall::Error),
    /// A stored record could not be encoded or decoded.
    #[error("protobuf codec: {0}")]
    Codec(#[from] protobuf::ProtobufError),
    /// The stored data violates an invariant of this module.
    #[error("corrupt raft storage: {0}")]
    Corrupt(String),
    /// `persist` was given entries that would overwrite compacted entries.
    #[error(
        "cannot append at index {index}: entries before first index {first_index} are compacted"
    )]
    AppendCompacted {
        /// Index of the first entry given.
        index: u64,
        /// Current first index.
        first_index: u64,
    },
    /// `persist` was given entries that would leave a gap after the last entry.
    #[error("cannot append at index {index}: gap after last index {last_index}")]
    AppendGap {
        /// Index of the first entry given.
        index: u64,
        /// Current last index.
        last_index: u64,
    },
    /// `persist` was given entries whose indexes are not consecutive.
    #[error("entries to append are not contiguous: expected index {expected}, found {found}")]
    NotContiguous {
        /// The index expected at that position.
        expected: u64,
        /// The index found.
        found: u64,
    },
    /// `persist` was given entries that would overwrite committed entries (raft never does).
    #[error("cannot append at index {index}: entries up to commit index {commit} are committed")]
    OverwriteCommitted {
        /// Index of the first entry given.
        index: u64,
        /// Current (persisted) commit index.
        commit: u64,
    },
    /// The write would leave the commit index beyond the last log entry.
    #[error("commit index {commit} beyond last index {last_index}")]
    CommitBeyondLast {
        /// The commit index.
        commit: u64,
        /// The last index after the write.
        last_index: u64,
    },
    /// The write would leave the commit index below the truncated (compacted or snapshot)
    /// index; raft-rs would refuse to start on such a store.
    #[error("commit index {commit} below truncated index {truncated_index}")]
    CommitBelowTruncated {
        /// The commit index.
        commit: u64,
        /// Index of the last compacted entry (or of the snapshot).
        truncated_index: u64,
    },
    /// `compact` was asked to remove entries that were never received.
    #[error("cannot compact to {compact_index}: last index is {last_index}")]
    CompactBeyondLast {
        /// Requested compact index.
        compact_index: u64,
        /// Current last index.
        last_index: u64,
    },
    /// `compact` was asked to remove entries that are not committed. raft-rs would refuse to
    /// start on such a log (its commit index would precede the first index).
    #[error("cannot compact to {compact_index}: commit index is {commit}")]
    CompactBeyondCommit {
        /// Requested compact index.
        compact_index: u64,
        /// Current (persisted) commit index.
        commit: u64,
    },
    /// The snapshot is older than what the storage already has.
    #[error("snapshot at index {index} is out of date (first index {first_index})")]
    SnapshotOutOfDate {
        /// Snapshot index.
        index: u64,
        /// Current first index.
        first_index: u64,
    },
    /// A locally produced snapshot does not match the log.
    #[error("invalid snapshot: {0}")]
    InvalidSnapshot(String),
    /// `initialize_with_conf_state` on a storage that was already initialized.
    #[error("raft storage is already initialized")]
    AlreadyInitialized,
    /// An encoded record exceeds fjall's value size limit.
    #[error("value of {len} bytes exceeds the storage limit")]
    ValueTooLarge {
        /// Encoded length.
        len: usize,
    },
    /// `entries` was called with `low > high`.
    #[error("invalid entry range [{low}, {high})")]
    InvalidRange {
        /// Low bound.
        low: u64,
        /// High bound (exclusive).
        high: u64,
    },
}

impl From<StorageError> for raft::Error {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::SnapshotOutOfDate { .. } => {
                raft::Error::Store(raft::StorageError::SnapshotOutOfDate)
            }
            other => raft::Error::Store(raft::StorageError::Other(Box::new(other))),
        }
    }
}

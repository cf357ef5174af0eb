//! The deterministic state machine: everything a committed log entry can do.
//!
//! **Architecture Invariant:** this module reads no clock, does no IO, spawns
//! nothing, uses no randomness and never depends on hash-map iteration order.
//! Time enters only as data inside committed commands. The same log applied
//! on every member yields the same state, the same responses and the same
//! events. It is tested with plain tables and property tests, no servers.
//!
//! **Architecture Invariant:** `apply` never panics, whatever the command
//! holds: a command that cannot be carried out answers [`Response::Error`].

mod kv;
#[cfg(test)]
mod tests;

pub use kv::KvStore;

use serde::{Deserialize, Serialize};

/// One key with its metadata, as stored in the revisioned keyspace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key bytes; never empty.
    pub key: Vec<u8>,
    /// Revision of the put that created this incarnation of the key.
    pub create_revision: i64,
    /// Revision of the last put to this key.
    pub mod_revision: i64,
    /// Puts since creation; 1 after the creating put.
    pub version: i64,
    /// The value bytes.
    pub value: Vec<u8>,
    /// Lease the key is attached to; 0 for none.
    pub lease: i64,
}

/// A write that goes through the log. Variants are only ever appended, never
/// reordered: the encoding of committed entries must stay readable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Write one key.
    Put(PutRequest),
    /// Delete a key or a prefix.
    DeleteRange(DeleteRequest),
    /// Compare-and-swap transaction.
    Txn(TxnRequest),
}

/// Write one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    /// Key to write; non-empty (validated at the API edge).
    pub key: Vec<u8>,
    /// Value to store.
    pub value: Vec<u8>,
    /// Lease to attach the key to; 0 for none.
    pub lease: i64,
    /// Whether to return the previous key-value pair.
    pub prev_kv: bool,
}

/// Delete one key, or every key starting with `key` when `prefix` is set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRequest {
    /// The key or the prefix. An empty prefix means every key.
    pub key: Vec<u8>,
    /// Treat `key` as a prefix.
    pub prefix: bool,
    /// Return the deleted key-value pairs.
    pub prev_kv: bool,
}

/// Read one key, or the keys starting with `key` when `prefix` is set, at the
/// current revision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    /// The key or the prefix. An empty prefix means every key.
    pub key: Vec<u8>,
    /// Treat `key` as a prefix.
    pub prefix: bool,
    /// At most this many key-value pairs in the answer; 0 = no limit.
    pub limit: i64,
    /// Answer only the count.
    pub count_only: bool,
    /// Leave values empty.
    pub keys_only: bool,
}

/// How a [`Compare`] relates the stored field to the given one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    /// stored == given
    Equal,
    /// stored > given
    Greater,
    /// stored < given
    Less,
    /// stored != given
    NotEqual,
}

/// Which field of a key a [`Compare`] looks at, with the value to compare to.
/// A missing key has version, create and mod revision 0, lease 0, and an
/// empty value that compares unequal to every given value (like etcd).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The key's version.
    Version(i64),
    /// The key's create revision.
    CreateRevision(i64),
    /// The key's mod revision.
    ModRevision(i64),
    /// The key's value (byte-wise comparison).
    Value(Vec<u8>),
    /// The key's lease id.
    Lease(i64),
}

/// One condition of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The key whose field is compared.
    pub key: Vec<u8>,
    /// The relation that must hold.
    pub op: CompareOp,
    /// The field and the value it is compared to.
    pub target: CompareTarget,
}

/// One operation inside a transaction branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    /// Read.
    Range(RangeRequest),
    /// Write.
    Put(PutRequest),
    /// Delete.
    DeleteRange(DeleteRequest),
}

/// If every compare holds, run `success`, else `failure`; atomically, at one
/// revision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRequest {
    /// Conditions, all of which must hold for `success` to run.
    pub compare: Vec<Compare>,
    /// Operations run when every compare holds.
    pub success: Vec<TxnOp>,
    /// Operations run otherwise.
    pub failure: Vec<TxnOp>,
}

/// The answer to a [`Command`], computed identically on every member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to a put.
    Put(PutResult),
    /// Answer to a delete.
    DeleteRange(DeleteResult),
    /// Answer to a transaction.
    Txn(TxnResult),
    /// The command could not be carried out; nothing changed.
    Error(ApplyError),
}

/// Why a command changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApplyError {
    /// The command names a lease that does not exist.
    #[error("lease {0} not found")]
    LeaseNotFound(i64),
}

/// Answer to a put.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResult {
    /// Keyspace revision after the command.
    pub revision: i64,
    /// The previous pair, when asked for and present.
    pub prev_kv: Option<KeyValue>,
}

/// Answer to a delete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteResult {
    /// Keyspace revision after the command.
    pub revision: i64,
    /// How many keys were deleted.
    pub deleted: i64,
    /// The deleted pairs, when asked for.
    pub prev_kvs: Vec<KeyValue>,
}

/// Answer to a range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResult {
    /// Keyspace revision the answer reflects.
    pub revision: i64,
    /// The matching pairs, in key order, at most `limit`.
    pub kvs: Vec<KeyValue>,
    /// More keys matched than `limit` allowed.
    pub more: bool,
    /// How many keys matched (regardless of `limit`).
    pub count: i64,
}

/// Answer to one operation of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOpResult {
    /// Answer to a range.
    Range(RangeResult),
    /// Answer to a put.
    Put(PutResult),
    /// Answer to a delete.
    DeleteRange(DeleteResult),
}

/// Answer to a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResult {
    /// Keyspace revision after the transaction.
    pub revision: i64,
    /// Whether every compare held (and so `success` ran).
    pub succeeded: bool,
    /// One answer per operation of the branch that ran.
    pub responses: Vec<TxnOpResult>,
}

/// What kind of change an [`Event`] records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// A key was written.
    Put,
    /// A key was deleted.
    Delete,
}

/// One change to one key, emitted by `apply` for watchers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The pair after the change. For a delete: the key, empty value, and
    /// `mod_revision` set to the revision of the delete.
    pub kv: KeyValue,
    /// The pair before the change, if the key existed.
    pub prev_kv: Option<KeyValue>,
}

/// The whole replicated state. See the module docs for what it must never do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateMachine {
    /// The revisioned keyspace.
    kv: KvStore,
}

impl StateMachine {
    /// An empty state at revision 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current keyspace revision: the number of committed commands that
    /// changed the keyspace.
    pub fn revision(&self) -> i64 {
        self.kv.revision()
    }

    /// Applies one committed command. Never panics.
    pub fn apply(&mut self, command: &Command) -> (Response, Vec<Event>) {
        let mut events = Vec::new();
        let response = match command {
            Command::Put(put) => match self.check_lease(put.lease) {
                Err(err) => Response::Error(err),
                Ok(()) => Response::Put(self.kv.put(put, &mut events)),
            },
            Command::DeleteRange(del) => Response::DeleteRange(self.kv.delete(del, &mut events)),
            Command::Txn(txn) => {
                let leases = txn
                    .success
                    .iter()
                    .chain(&txn.failure)
                    .filter_map(|op| match op {
                        TxnOp::Put(p) => Some(p.lease),
                        _ => None,
                    });
                match leases.map(|l| self.check_lease(l)).find(Result::is_err) {
                    Some(Err(err)) => Response::Error(err),
                    _ => Response::Txn(self.kv.txn(txn, &mut events)),
                }
            }
        };
        (response, events)
    }

    /// Reads at the current revision.
    pub fn range(&self, request: &RangeRequest) -> RangeResult {
        self.kv.range(request)
    }

    /// A digest of the whole state, equal on members that applied the same
    /// log prefix. Stable across processes and versions of the std library.
    pub fn digest(&self) -> u64 {
        self.kv.digest()
    }

    /// Leases do not exist yet (they arrive with the leases issue), so every
    /// lease id but 0 is unknown.
    fn check_lease(&self, lease: i64) -> Result<(), ApplyError> {
        if lease == 0 {
            Ok(())
        } else {
            Err(ApplyError::LeaseNotFound(lease))
        }
    }
}

//! What applying a command answers and produces: responses, errors, key
//! events and lock changes.

use serde::{Deserialize, Serialize};

use super::{AcquireOutcome, CancelOutcome, KeyValue, LockChange};

/// The answer to a [`Command`], computed identically on every member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to a put.
    Put(PutResult),
    /// Answer to a delete.
    DeleteRange(DeleteResult),
    /// Answer to a transaction.
    Txn(TxnResult),
    /// A lease was created.
    LeaseGrant {
        /// Its id.
        id: i64,
        /// Its TTL, seconds.
        ttl: i64,
    },
    /// A lease was revoked.
    LeaseRevoke {
        /// Keyspace revision after the command.
        revision: i64,
    },
    /// Leases expired.
    LeaseExpire {
        /// Keyspace revision after the command.
        revision: i64,
        /// The ids that were alive and are now gone.
        expired: Vec<i64>,
    },
    /// Answer to an acquire.
    LockAcquire(AcquireOutcome),
    /// A grant was released.
    LockRelease {
        /// Keyspace revision after the command.
        revision: i64,
    },
    /// Answer to a cancel.
    LockCancel(CancelOutcome),
    /// Answer to a delay end: whether a delay ended.
    LockDelayEnd(bool),
    /// A leader published a value.
    ElectionProclaim {
        /// Keyspace revision after the command.
        revision: i64,
    },
    /// A leader resigned.
    ElectionResign {
        /// Keyspace revision after the command.
        revision: i64,
    },
    /// The member table changed (or a publish changed nothing).
    Members,
    /// The command could not be carried out; nothing changed.
    Error(ApplyError),
}

/// Why a command changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApplyError {
    /// The command names a lease that does not exist.
    #[error("lease {0} not found (it expired, was revoked, or never existed)")]
    LeaseNotFound(i64),
    /// A grant asked for the id of a live lease.
    #[error("lease {0} already exists")]
    LeaseExists(i64),
    /// A grant asked for an id that is not above every id granted so far.
    #[error("lease id {id} cannot be granted: ids are never reused, pick one above {max}")]
    LeaseIdUsed {
        /// The requested id.
        id: i64,
        /// The highest id granted so far.
        max: i64,
    },
    /// Every positive 64-bit id was handed out.
    #[error("no lease ids left")]
    LeaseIdsExhausted,
    /// A TTL that is not positive reached the log.
    #[error("lease TTL must be positive, got {0}")]
    InvalidTtl(i64),
    /// A client write named a key under the reserved prefix.
    #[error("key {0:?} is under the reserved prefix \"__fenced/\"; locks and elections change it")]
    ReservedKey(String),
    /// An acquire disagrees with how the lock is in use.
    #[error("{0}")]
    LockConflict(String),
    /// A try-only acquire found the lock taken.
    #[error(
        "lock {name:?} is not free ({holders} holder(s) or waiters ahead); try-only acquire does not wait"
    )]
    LockBusy {
        /// Lock name.
        name: String,
        /// Current holders.
        holders: usize,
    },
    /// A release or check named a token that is not current.
    #[error(
        "token {token} is not a current holder of lock {name:?} (released, expired or superseded)"
    )]
    StaleToken {
        /// Lock name.
        name: String,
        /// The token.
        token: i64,
    },
    /// A proclaim or resign named a leadership that is not current.
    #[error(
        "token {token} is not the current leader of election {name:?} (it resigned, its lease ended, or another candidate leads)"
    )]
    NotLeader {
        /// Election name.
        name: String,
        /// The token.
        token: i64,
    },
    /// A leader-only command proposed in an older term than its entry's.
    #[error(
        "a command the leader of term {proposed} proposed was appended in term {entry}; it is void"
    )]
    StaleLeaderCommand {
        /// The proposing leader's term.
        proposed: u64,
        /// The entry's term.
        entry: u64,
    },
    /// A release by token alone matched several shared holders.
    #[error("token {token} of lock {name:?} is shared by {holders} holders; pass the lease too")]
    AmbiguousToken {
        /// Lock name.
        name: String,
        /// The token.
        token: i64,
        /// How many holders share it.
        holders: usize,
    },
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

/// Everything one applied command produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// The answer for the proposer.
    pub response: Response,
    /// Key changes, for watchers.
    pub events: Vec<Event>,
    /// Lock places granted or ended, for waiting acquirers.
    pub locks: Vec<LockChange>,
}

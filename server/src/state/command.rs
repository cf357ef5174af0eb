//! The commands a committed log entry carries, with their request types.

use serde::{Deserialize, Serialize};

use super::{AcquireCommand, MemberChange};

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
    /// Create a lease (`id` 0: the next id).
    LeaseGrant {
        /// Requested id, or 0.
        id: i64,
        /// Seconds.
        ttl: i64,
    },
    /// End a lease at a client's request.
    LeaseRevoke {
        /// The lease.
        id: i64,
    },
    /// End leases whose deadline passed on the leader. Unknown ids (already
    /// revoked) are skipped.
    LeaseExpire {
        /// The leases, in the order the lessor found them.
        ids: Vec<i64>,
    },
    /// Queue for a lock, or take it.
    LockAcquire(AcquireCommand),
    /// Release a grant.
    LockRelease {
        /// Lock name.
        name: String,
        /// The grant's token.
        token: i64,
        /// The holder's lease, or 0 when the token names one holder.
        lease: i64,
    },
    /// Give up a place in the queue (wait timeout, client gone).
    LockCancel {
        /// Lock name.
        name: String,
        /// The waiter's lease.
        lease: i64,
    },
    /// End the lock-delay of `name` that started at revision `since`.
    LockDelayEnd {
        /// Lock name.
        name: String,
        /// The delay's start revision.
        since: i64,
    },
    /// Queue as a candidate of an election, or lead it. Answered like an
    /// acquire (`Response::LockAcquire`) of the lock-table name `#NAME`.
    ElectionCampaign {
        /// Election name (validated at the API edge), without the mark.
        name: String,
        /// The candidate's lease.
        lease: i64,
        /// The value to publish once elected.
        value: Vec<u8>,
    },
    /// Publish a new value as the leader.
    ElectionProclaim {
        /// Election name.
        name: String,
        /// The leader's token.
        token: i64,
        /// The leader's lease.
        lease: i64,
        /// The new value.
        value: Vec<u8>,
    },
    /// Give up leadership; the next candidate leads at the same revision.
    /// With `token` 0: withdraw whatever `lease` has in the election (its
    /// leadership, its place in the queue, or nothing).
    ElectionResign {
        /// Election name.
        name: String,
        /// The leader's token, or 0.
        token: i64,
        /// The leader's lease.
        lease: i64,
    },
    /// A configuration change raft accepted (carried in the context of a
    /// raft configuration-change entry, never in a normal entry).
    MemberChange(MemberChange),
    /// A member tells the cluster the addresses it listens on.
    MemberPublish {
        /// The member.
        id: u64,
        /// Its peer address.
        peer_addr: String,
        /// Its client address.
        client_addr: String,
    },
    /// `LeaseExpire` as proposed by the leader of `term`. Applied only from
    /// an entry of that term ([`StateMachine::execute_entry`]): a deposed
    /// leader (paused, say) whose clock says every lease is overdue must not
    /// end leases its successor keeps alive, and raft-rs forwards a
    /// follower's proposals to the new leader, which appends them in its
    /// own, higher term.
    LeaseExpireInTerm {
        /// The leases.
        ids: Vec<i64>,
        /// The proposing leader's term.
        term: u64,
    },
    /// `LockDelayEnd` as proposed by the leader of `term`; same rule.
    LockDelayEndInTerm {
        /// Lock name.
        name: String,
        /// The delay's start revision.
        since: i64,
        /// The proposing leader's term.
        term: u64,
    },
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
    /// The compare's key is a lock name; holds (with `Equal`) when this token
    /// is a current holder's token of that lock, or (with `NotEqual`) when it
    /// is not.
    LockToken(i64),
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

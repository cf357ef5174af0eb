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

mod election;
mod kv;
mod lease;
mod lock;
mod members;
pub mod snapshot;
#[cfg(test)]
mod tests;

pub use election::{LEADER_PREFIX, Leader, election_lock_name, leader_record_key};
pub use kv::KvStore;
pub use lease::{Lease, LeaseTable};
pub use lock::{
    AcquireCommand, AcquireOutcome, CancelOutcome, Delay, ELECTION_MARK, ELECTION_PREFIX, Grant,
    Holder, LOCK_PREFIX, LeaveReason, Lock, LockChange, LockMode, LockTable, Waiter, lock_key,
    parse_lock_key,
};
pub use members::{Member, MemberChange, MemberTable};

/// Keys under this prefix belong to fenced (lock queues, elections): clients
/// may read and watch them but never write or delete them through KV.
pub const RESERVED_PREFIX: &[u8] = b"__fenced/";

/// Whether `key` is under [`RESERVED_PREFIX`].
pub fn is_reserved(key: &[u8]) -> bool {
    key.starts_with(RESERVED_PREFIX)
}

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

/// The writes of one command in progress: everything happens at one
/// revision, which becomes current only if some key changed.
pub(crate) struct Write<'a> {
    kv: &'a mut KvStore,
    revision: i64,
    changed: bool,
    events: &'a mut Vec<Event>,
    changes: &'a mut Vec<LockChange>,
}

impl Write<'_> {
    /// The revision this command writes at.
    fn revision(&self) -> i64 {
        self.revision
    }

    /// (Re)writes a reserved key with its current value, attached to `lease`.
    fn put(&mut self, key: &[u8], lease: i64) {
        let value = self
            .kv
            .get(key)
            .map(|kv| kv.value.clone())
            .unwrap_or_default();
        self.put_value(key, value, lease);
    }

    /// Writes a reserved key with `value`, attached to `lease`.
    fn put_value(&mut self, key: &[u8], value: Vec<u8>, lease: i64) {
        let put = PutRequest {
            key: key.to_vec(),
            value,
            lease,
            prev_kv: false,
        };
        self.kv.put_at(&put, self.revision, self.events);
        self.changed = true;
    }

    /// Deletes one key, reserved or not.
    fn remove(&mut self, key: &[u8]) {
        if self.kv.remove_at(key, self.revision, self.events).is_some() {
            self.changed = true;
        }
    }
}

/// The whole replicated state. See the module docs for what it must never do.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMachine {
    /// The revisioned keyspace.
    kv: KvStore,
    /// Live leases and their keys.
    leases: LeaseTable,
    /// Locks in use.
    locks: LockTable,
    /// The cluster's members.
    members: MemberTable,
}

impl StateMachine {
    /// An empty state at revision 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty state whose member table holds the initial voters.
    pub fn bootstrap(members: MemberTable) -> Self {
        Self {
            members,
            ..Self::default()
        }
    }

    /// The member table.
    pub fn members(&self) -> &MemberTable {
        &self.members
    }

    /// The current keyspace revision: the number of committed commands that
    /// changed the keyspace.
    pub fn revision(&self) -> i64 {
        self.kv.revision()
    }

    /// Applies one committed command; the answer and the key events.
    pub fn apply(&mut self, command: &Command) -> (Response, Vec<Event>) {
        let output = self.execute(command);
        (output.response, output.events)
    }

    /// Applies the command of a committed entry of term `entry_term`.
    /// Leader-only commands of another term change nothing.
    pub fn execute_entry(&mut self, command: &Command, entry_term: u64) -> Output {
        match command {
            Command::LeaseExpireInTerm { term, .. } | Command::LockDelayEndInTerm { term, .. }
                if *term != entry_term =>
            {
                Output {
                    response: Response::Error(ApplyError::StaleLeaderCommand {
                        proposed: *term,
                        entry: entry_term,
                    }),
                    events: Vec::new(),
                    locks: Vec::new(),
                }
            }
            _ => self.execute(command),
        }
    }

    /// Applies one committed command. Never panics.
    pub fn execute(&mut self, command: &Command) -> Output {
        let mut events = Vec::new();
        let mut locks = Vec::new();
        let response = self
            .dispatch(command, &mut events, &mut locks)
            .unwrap_or_else(Response::Error);
        self.track_attachments(&events);
        Output {
            response,
            events,
            locks,
        }
    }

    fn dispatch(
        &mut self,
        command: &Command,
        events: &mut Vec<Event>,
        changes: &mut Vec<LockChange>,
    ) -> Result<Response, ApplyError> {
        let mut w = Write {
            revision: self.kv.next_revision(),
            kv: &mut self.kv,
            changed: false,
            events,
            changes,
        };
        let response = match command {
            Command::Put(put) => {
                check_writable(&put.key)?;
                check_lease(&self.leases, put.lease)?;
                Response::Put(w.kv.put(put, w.events))
            }
            Command::DeleteRange(del) => Response::DeleteRange(w.kv.delete(del, w.events)),
            Command::Txn(txn) => {
                for op in txn.success.iter().chain(&txn.failure) {
                    if let TxnOp::Put(put) = op {
                        check_writable(&put.key)?;
                        check_lease(&self.leases, put.lease)?;
                    }
                }
                let locks = &self.locks;
                let succeeded = txn.compare.iter().all(|c| match &c.target {
                    CompareTarget::LockToken(token) => {
                        let current = std::str::from_utf8(&c.key)
                            .is_ok_and(|name| locks.is_current(name, *token));
                        match c.op {
                            CompareOp::Equal => current,
                            CompareOp::NotEqual => !current,
                            CompareOp::Greater | CompareOp::Less => false,
                        }
                    }
                    _ => w.kv.holds(c),
                });
                Response::Txn(w.kv.txn_branch(txn, succeeded, w.events))
            }
            Command::LeaseGrant { id, ttl } => {
                let id = self.leases.grant(*id, *ttl)?;
                Response::LeaseGrant { id, ttl: *ttl }
            }
            Command::LeaseRevoke { id } => {
                if !self.leases.contains(*id) {
                    return Err(ApplyError::LeaseNotFound(*id));
                }
                end_leases(
                    &mut self.leases,
                    &mut self.locks,
                    &[*id],
                    LeaveReason::LeaseRevoked,
                    &mut w,
                );
                election::publish_leaders(&self.locks, &mut w);
                w.finish();
                Response::LeaseRevoke {
                    revision: w.kv.revision(),
                }
            }
            Command::LeaseExpire { ids } | Command::LeaseExpireInTerm { ids, .. } => {
                let expired = end_leases(
                    &mut self.leases,
                    &mut self.locks,
                    ids,
                    LeaveReason::LeaseExpired,
                    &mut w,
                );
                election::publish_leaders(&self.locks, &mut w);
                w.finish();
                Response::LeaseExpire {
                    revision: w.kv.revision(),
                    expired,
                }
            }
            Command::LockAcquire(cmd) => {
                let outcome = self.locks.acquire(cmd, &self.leases, &mut w)?;
                w.finish();
                Response::LockAcquire(outcome)
            }
            Command::LockRelease { name, token, lease } => {
                self.locks
                    .release(name, *token, *lease, &self.leases, &mut w)?;
                w.finish();
                Response::LockRelease {
                    revision: w.kv.revision(),
                }
            }
            Command::LockCancel { name, lease } => {
                let outcome = self.locks.cancel(name, *lease, &self.leases, &mut w);
                election::publish_leaders(&self.locks, &mut w);
                w.finish();
                Response::LockCancel(outcome)
            }
            Command::LockDelayEnd { name, since }
            | Command::LockDelayEndInTerm { name, since, .. } => {
                let ended = self.locks.end_delay(name, *since, &self.leases, &mut w);
                w.finish();
                Response::LockDelayEnd(ended)
            }
            Command::ElectionCampaign { name, lease, value } => {
                let cmd = AcquireCommand {
                    name: election_lock_name(name),
                    lease: *lease,
                    mode: LockMode::Exclusive,
                    permits: 1,
                    try_only: false,
                    delay_ms: 0,
                };
                let outcome = self
                    .locks
                    .acquire_with_value(&cmd, value, &self.leases, &mut w)?;
                election::publish_leaders(&self.locks, &mut w);
                w.finish();
                Response::LockAcquire(outcome)
            }
            Command::ElectionProclaim {
                name,
                token,
                lease,
                value,
            } => {
                election::check_leader(&self.locks, name, *token, *lease)?;
                election::proclaim(name, *lease, value, &mut w);
                w.finish();
                Response::ElectionProclaim {
                    revision: w.kv.revision(),
                }
            }
            Command::ElectionResign {
                name,
                token: 0,
                lease,
            } => {
                let place = election_lock_name(name);
                if let CancelOutcome::Held(grant) =
                    self.locks.cancel(&place, *lease, &self.leases, &mut w)
                {
                    self.locks
                        .release(&place, grant.token, *lease, &self.leases, &mut w)?;
                }
                election::publish_leaders(&self.locks, &mut w);
                w.finish();
                Response::ElectionResign {
                    revision: w.kv.revision(),
                }
            }
            Command::MemberChange(change) => {
                self.members.apply(change);
                Response::Members
            }
            Command::MemberPublish {
                id,
                peer_addr,
                client_addr,
            } => {
                self.members.publish(*id, peer_addr, client_addr);
                Response::Members
            }
            Command::ElectionResign { name, token, lease } => {
                election::check_leader(&self.locks, name, *token, *lease)?;
                self.locks.release(
                    &election_lock_name(name),
                    *token,
                    *lease,
                    &self.leases,
                    &mut w,
                )?;
                election::publish_leaders(&self.locks, &mut w);
                w.finish();
                Response::ElectionResign {
                    revision: w.kv.revision(),
                }
            }
        };
        Ok(response)
    }

    /// Keeps each lease's key set in step with the keyspace: a put moves the
    /// key to its new lease, a delete detaches it.
    fn track_attachments(&mut self, events: &[Event]) {
        for event in events {
            if let Some(prev) = &event.prev_kv
                && prev.lease != 0
                && (event.kind == EventKind::Delete || prev.lease != event.kv.lease)
            {
                self.leases.detach(prev.lease, &prev.key);
            }
            if event.kind == EventKind::Put && event.kv.lease != 0 {
                self.leases.attach(event.kv.lease, &event.kv.key);
            }
        }
    }

    /// Reads at the current revision.
    pub fn range(&self, request: &RangeRequest) -> RangeResult {
        self.kv.range(request)
    }

    /// The lease table.
    pub fn leases(&self) -> &LeaseTable {
        &self.leases
    }

    /// The lock table.
    pub fn locks(&self) -> &LockTable {
        &self.locks
    }

    /// The current leader of election `name`, if any.
    pub fn leader(&self, name: &str) -> Option<Leader> {
        election::leader(&self.locks, &self.kv, name)
    }

    /// A digest of the whole state, equal on members that applied the same
    /// log prefix. Stable across processes and versions of the std library.
    pub fn digest(&self) -> u64 {
        let mut hash = kv::Fnv1a64::new();
        self.kv.digest_into(&mut hash);
        self.leases.digest_into(&mut hash);
        self.locks.digest_into(&mut hash);
        self.members.digest_into(&mut hash);
        hash.finish()
    }
}

impl Write<'_> {
    /// Makes the command's revision current if it changed a key.
    fn finish(&mut self) {
        if self.changed {
            self.kv.advance_to(self.revision);
        }
    }
}

/// Ends every live lease of `ids`: deletes its keys, removes its lock places
/// (an expired holder with a lock-delay starts the delay), then grants the
/// next waiters of every lock it touched, all at one revision. Returns the
/// ids that were alive.
fn end_leases(
    leases: &mut LeaseTable,
    locks: &mut LockTable,
    ids: &[i64],
    reason: LeaveReason,
    w: &mut Write<'_>,
) -> Vec<i64> {
    let mut ended = Vec::new();
    let mut touched = std::collections::BTreeSet::new();
    for &id in ids {
        let Some(lease) = leases.remove(id) else {
            continue;
        };
        for key in &lease.keys {
            match parse_lock_key(key) {
                Some((name, owner)) if owner == id => {
                    if locks.leave(&name, id, reason, w) {
                        touched.insert(name);
                    } else {
                        w.remove(key);
                    }
                }
                _ => w.remove(key),
            }
        }
        ended.push(id);
    }
    for name in &touched {
        locks.grant(name, leases, w);
    }
    ended
}

/// Client writes may not touch reserved keys.
fn check_writable(key: &[u8]) -> Result<(), ApplyError> {
    if is_reserved(key) {
        Err(ApplyError::ReservedKey(
            String::from_utf8_lossy(key).into_owned(),
        ))
    } else {
        Ok(())
    }
}

/// A key may be attached only to a live lease (or to none, 0).
fn check_lease(leases: &LeaseTable, lease: i64) -> Result<(), ApplyError> {
    if lease == 0 || leases.contains(lease) {
        Ok(())
    } else {
        Err(ApplyError::LeaseNotFound(lease))
    }
}

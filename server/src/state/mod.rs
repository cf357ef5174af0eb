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

mod command;
mod election;
mod kv;
mod lease;
mod lock;
mod members;
mod response;
pub mod snapshot;
#[cfg(test)]
mod tests;

pub use command::{
    Command, Compare, CompareOp, CompareTarget, DeleteRequest, PutRequest, RangeRequest, TxnOp,
    TxnRequest,
};
pub use election::{LEADER_PREFIX, Leader, election_lock_name, leader_record_key};
pub use kv::KvStore;
pub use lease::{Lease, LeaseTable};
pub use lock::{
    AcquireCommand, AcquireOutcome, CancelOutcome, Delay, ELECTION_MARK, ELECTION_PREFIX, Grant,
    Holder, LOCK_PREFIX, LeaveReason, Lock, LockChange, LockMode, LockTable, Waiter, lock_key,
    parse_lock_key,
};
pub use members::{Member, MemberChange, MemberTable};
pub use response::{
    ApplyError, DeleteResult, Event, EventKind, Output, PutResult, RangeResult, Response,
    TxnOpResult, TxnResult,
};

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

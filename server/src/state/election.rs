//! Elections: campaigns on top of the lock queues, and the published leader.
//!
//! An election `NAME` is the exclusive lock `#NAME` of the lock table (see
//! [`ELECTION_MARK`]): candidates queue FIFO, each a key
//! `__fenced/election/NAME/@LEASE` holding the value it campaigned with, and
//! the holder is the leader. The grant's revision is the leader's token, so
//! tokens strictly increase with every new leader, exactly like lock tokens.
//!
//! What the leader publishes lives in one more key, the **leader record**
//! `__fenced/leader/NAME`. It exists exactly while the election has a leader
//! and is attached to the leader's lease. It is created at the revision of the
//! grant (so its `create_revision` is the leader's token), rewritten by
//! Proclaim, and deleted when the leadership ends; a hand-over deletes and
//! recreates it in the same revision. Observing an election is therefore a
//! watch on one key: every member emits the same events at the same
//! revisions, so observers anywhere see the same sequence, and resuming from a
//! revision replays it from the watch history.

use std::collections::BTreeSet;

use super::lock::{ELECTION_MARK, LockChange, LockTable};
use super::{ApplyError, KvStore, Write};

/// Prefix of every leader record.
pub const LEADER_PREFIX: &[u8] = b"__fenced/leader/";

/// The lock-table name of election `name`.
pub fn election_lock_name(name: &str) -> String {
    format!("{ELECTION_MARK}{name}")
}

/// The key of election `name`'s leader record.
pub fn leader_record_key(name: &str) -> Vec<u8> {
    [LEADER_PREFIX, name.as_bytes()].concat()
}

/// An election's current leader, as the applied state shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leader {
    /// Election name.
    pub name: String,
    /// The leader's candidate key.
    pub key: Vec<u8>,
    /// The revision of the grant: the leader's fencing token.
    pub token: i64,
    /// The leader's lease.
    pub lease: i64,
    /// The published value.
    pub value: Vec<u8>,
}

/// The leader of election `name`, if it has one.
pub(super) fn leader(locks: &LockTable, kv: &KvStore, name: &str) -> Option<Leader> {
    let holder = locks.get(&election_lock_name(name))?.holders.first()?;
    let value = kv
        .get(&leader_record_key(name))
        .map(|record| record.value.clone())
        .unwrap_or_default();
    Some(Leader {
        name: name.to_string(),
        key: holder.key.clone(),
        token: holder.token,
        lease: holder.lease,
        value,
    })
}

/// Checks that `token` and `lease` name the current leader of `name`.
pub(super) fn check_leader(
    locks: &LockTable,
    name: &str,
    token: i64,
    lease: i64,
) -> Result<(), ApplyError> {
    let current = locks
        .get(&election_lock_name(name))
        .and_then(|lock| lock.holders.first())
        .is_some_and(|h| h.token == token && h.lease == lease);
    if current {
        Ok(())
    } else {
        Err(ApplyError::NotLeader {
            name: name.to_string(),
            token,
        })
    }
}

/// Brings the leader record of every election that a command touched (a
/// grant or a place leaving, in `w.changes`) in line with its holder.
pub(super) fn publish_leaders(locks: &LockTable, w: &mut Write<'_>) {
    let touched: BTreeSet<String> = w
        .changes
        .iter()
        .filter_map(|change| {
            let (LockChange::Granted { name, .. } | LockChange::Left { name, .. }) = change;
            name.strip_prefix(ELECTION_MARK).map(str::to_string)
        })
        .collect();
    for name in touched {
        publish_leader(locks, &name, w);
    }
}

/// Makes the leader record of `name` say who leads it now: deleted when
/// nobody leads, (re)created with the candidate's value when the leadership
/// changed hands, untouched when the same leadership goes on.
fn publish_leader(locks: &LockTable, name: &str, w: &mut Write<'_>) {
    let record_key = leader_record_key(name);
    let holder = locks
        .get(&election_lock_name(name))
        .and_then(|lock| lock.holders.first());
    let record = w.kv.get(&record_key).map(|r| r.create_revision);
    match (holder, record) {
        (None, None) => {}
        (None, Some(_)) => w.remove(&record_key),
        (Some(holder), Some(since)) if since == holder.token => {}
        (Some(holder), record) => {
            if record.is_some() {
                w.remove(&record_key);
            }
            let value =
                w.kv.get(&holder.key)
                    .map(|candidate| candidate.value.clone())
                    .unwrap_or_default();
            w.put_value(&record_key, value, holder.lease);
        }
    }
}

/// Rewrites the published value of `name`'s leader (checked by the caller).
pub(super) fn proclaim(name: &str, lease: i64, value: &[u8], w: &mut Write<'_>) {
    w.put_value(&leader_record_key(name), value.to_vec(), lease);
}

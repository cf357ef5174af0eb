//! Lock queues, grants and fencing tokens.
//!
//! A lock is a FIFO queue of waiters plus the set of current holders. Every
//! place (waiter or holder) is also a key in the revisioned keyspace,
//! `__fenced/lock/NAME/@LEASE`, attached to the place's lease, so a watch on
//! `__fenced/lock/NAME/` sees the queue move and a lease that ends takes its
//! places with it.
//!
//! A grant rewrites the grantee's key. The revision of that write is the
//! grant's **fencing token**, so the token is also the key's `mod_revision`.
//! Revisions only grow, hence tokens of one lock strictly increase across
//! grants (shared holders granted in the same step share one token).
//!
//! **Architecture Invariant:** grants happen only inside [`LockTable::grant`],
//! which admits waiters strictly from the head of the queue and only while
//! their lease is alive. A release, cancel or lease end grants the next
//! waiters in the same apply step, at the same revision: a contended hand-off
//! costs no extra commit and clients never poll.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::kv::Fnv1a64;
use super::lease::LeaseTable;
use super::{ApplyError, Write};

/// Prefix of every lock key.
pub const LOCK_PREFIX: &[u8] = b"__fenced/lock/";

/// Prefix of every election candidate key.
pub const ELECTION_PREFIX: &[u8] = b"__fenced/election/";

/// Elections live in the lock table under their name with this character in
/// front, which client lock names cannot contain (`api/convert.rs`), so an
/// election and a lock of the same name never meet. Their keys are under
/// [`ELECTION_PREFIX`] instead of [`LOCK_PREFIX`].
pub const ELECTION_MARK: char = '#';

/// How a place holds or wants the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockMode {
    /// Alone (or one of N permits of a semaphore).
    Exclusive,
    /// Together with other shared holders (readers).
    Shared,
}

/// A current holder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The holder's lease.
    pub lease: i64,
    /// The fencing token: the revision of the grant.
    pub token: i64,
    /// The holder's key.
    pub key: Vec<u8>,
    /// How it holds.
    pub mode: LockMode,
    /// Lock-delay to impose if this holder's lease expires, milliseconds.
    pub delay_ms: u64,
}

/// A place in the queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiter {
    /// The waiter's lease.
    pub lease: i64,
    /// The waiter's key.
    pub key: Vec<u8>,
    /// What it wants.
    pub mode: LockMode,
    /// Lock-delay it asked for, carried into its grant.
    pub delay_ms: u64,
}

/// A lock-delay in force: nobody is granted until the end is committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delay {
    /// Revision at which the expired holder left; names this delay.
    pub since: i64,
    /// How long the leader waits before proposing the end, milliseconds.
    pub ms: u64,
}

/// One lock in use: it exists while it has holders, waiters or a delay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    /// 1 for a readers-writer lock, N > 1 for a semaphore.
    pub permits: u32,
    /// Holders in grant order.
    pub holders: Vec<Holder>,
    /// Waiters, head first.
    pub waiters: VecDeque<Waiter>,
    /// A lock-delay in force.
    pub delay: Option<Delay>,
}

impl Lock {
    fn new(permits: u32) -> Self {
        Self {
            permits,
            holders: Vec::new(),
            waiters: VecDeque::new(),
            delay: None,
        }
    }

    /// Whether a place wanting `mode` could hold the lock together with the
    /// current holders (ignoring the queue and any delay).
    fn admits(&self, mode: LockMode) -> bool {
        if self.permits > 1 {
            return self.holders.len() < self.permits as usize;
        }
        match mode {
            LockMode::Exclusive => self.holders.is_empty(),
            LockMode::Shared => self.holders.iter().all(|h| h.mode == LockMode::Shared),
        }
    }

    fn is_unused(&self) -> bool {
        self.holders.is_empty() && self.waiters.is_empty() && self.delay.is_none()
    }
}

/// An acquire, as committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcquireCommand {
    /// Lock name (validated at the API edge).
    pub name: String,
    /// The acquirer's lease.
    pub lease: i64,
    /// Exclusive or shared.
    pub mode: LockMode,
    /// 1, or N > 1 for a semaphore.
    pub permits: u32,
    /// Do not queue when not grantable now.
    pub try_only: bool,
    /// Lock-delay to impose if this holder's lease expires.
    pub delay_ms: u64,
}

/// The answer to an acquire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AcquireOutcome {
    /// The lease holds the lock (now, or already before this command).
    Granted(Grant),
    /// The lease waits in the queue; the grant will be a [`LockChange`].
    Queued {
        /// The waiter's key.
        key: Vec<u8>,
        /// 0-based place in the queue.
        position: u64,
    },
}

/// A grant and who holds the lock with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The fencing token.
    pub token: i64,
    /// The holder's key.
    pub key: Vec<u8>,
    /// Every current holder, in grant order.
    pub holders: Vec<Holder>,
}

/// The answer to cancelling a wait.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CancelOutcome {
    /// The place was removed from the queue.
    Cancelled,
    /// The lease was granted before the cancel committed; it holds the lock.
    Held(Grant),
    /// The lease had no place in this lock.
    NotQueued,
}

/// Why a place left a lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaveReason {
    /// The holder released it.
    Released,
    /// The waiter gave up (timeout or disconnect).
    Cancelled,
    /// The lease was revoked.
    LeaseRevoked,
    /// The lease expired.
    LeaseExpired,
}

/// A change to one place, for whoever waits on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockChange {
    /// `lease` now holds lock `name` with `token`.
    Granted {
        /// Lock name.
        name: String,
        /// The grantee.
        lease: i64,
        /// Its fencing token.
        token: i64,
    },
    /// `lease` no longer has a place in lock `name`.
    Left {
        /// Lock name.
        name: String,
        /// Whose place ended.
        lease: i64,
        /// Why.
        reason: LeaveReason,
    },
}

/// The key of `lease`'s place in lock `name` (an election's place when the
/// name starts with [`ELECTION_MARK`]).
pub fn lock_key(name: &str, lease: i64) -> Vec<u8> {
    let mut key = match name.strip_prefix(ELECTION_MARK) {
        Some(election) => [ELECTION_PREFIX, election.as_bytes()].concat(),
        None => [LOCK_PREFIX, name.as_bytes()].concat(),
    };
    key.extend_from_slice(format!("/@{lease:016x}").as_bytes());
    key
}

/// The lock-table name and lease of a lock or election key; `None` for any
/// other key.
pub fn parse_lock_key(key: &[u8]) -> Option<(String, i64)> {
    let (election, rest) = match key.strip_prefix(LOCK_PREFIX) {
        Some(rest) => (false, rest),
        None => (true, key.strip_prefix(ELECTION_PREFIX)?),
    };
    let at = rest.len().checked_sub(18)?;
    let (name, tail) = rest.split_at(at);
    let hex = tail.strip_prefix(b"/@")?;
    let lease = i64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
    let name = std::str::from_utf8(name).ok()?;
    let name = if election {
        format!("{ELECTION_MARK}{name}")
    } else {
        name.to_string()
    };
    Some((name, lease))
}

/// Every lock in use, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockTable {
    /// Persistent, like the keyspace, so a snapshot copies it in constant
    /// time.
    locks: imbl::OrdMap<String, Lock>,
    /// Changes whenever a delay starts or ends, so the lessor can tell
    /// cheaply whether to look at the delays again.
    delay_generation: u64,
}

impl LockTable {
    /// The lock `name`, if in use.
    pub fn get(&self, name: &str) -> Option<&Lock> {
        self.locks.get(name)
    }

    /// Whether `token` is a current holder's token of lock `name`.
    pub fn is_current(&self, name: &str, token: i64) -> bool {
        self.locks
            .get(name)
            .is_some_and(|lock| lock.holders.iter().any(|h| h.token == token))
    }

    /// Locks in use, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Lock)> {
        self.locks.iter().map(|(name, lock)| (name.as_str(), lock))
    }

    /// Lock-delays in force: (name, delay).
    pub fn delays(&self) -> impl Iterator<Item = (&str, Delay)> {
        self.locks
            .iter()
            .filter_map(|(name, lock)| Some((name.as_str(), lock.delay?)))
    }

    /// Changes whenever a delay starts or ends.
    pub fn delay_generation(&self) -> u64 {
        self.delay_generation
    }

    /// Queues `cmd.lease` for the lock, granting at once when nobody is ahead
    /// and the holders admit it. Retrying with the same lease finds the same
    /// place and changes nothing.
    pub(super) fn acquire(
        &mut self,
        cmd: &AcquireCommand,
        leases: &LeaseTable,
        w: &mut Write<'_>,
    ) -> Result<AcquireOutcome, ApplyError> {
        self.acquire_with_value(cmd, &[], leases, w)
    }

    /// [`LockTable::acquire`], writing `value` into a new place's key (an
    /// election candidate's value).
    pub(super) fn acquire_with_value(
        &mut self,
        cmd: &AcquireCommand,
        value: &[u8],
        leases: &LeaseTable,
        w: &mut Write<'_>,
    ) -> Result<AcquireOutcome, ApplyError> {
        if !leases.contains(cmd.lease) {
            return Err(ApplyError::LeaseNotFound(cmd.lease));
        }
        if cmd.permits == 0 {
            return Err(ApplyError::LockConflict(format!(
                "lock {:?}: permits must be at least 1",
                cmd.name
            )));
        }
        if cmd.permits > 1 && cmd.mode == LockMode::Shared {
            return Err(ApplyError::LockConflict(format!(
                "lock {:?}: a semaphore ({} permits) has no shared mode",
                cmd.name, cmd.permits
            )));
        }
        if let Some(lock) = self.locks.get(&cmd.name) {
            if lock.permits != cmd.permits {
                return Err(ApplyError::LockConflict(format!(
                    "lock {:?} is in use with {} permit(s); this acquire asked for {}",
                    cmd.name, lock.permits, cmd.permits
                )));
            }
            if let Some(holder) = lock.holders.iter().find(|h| h.lease == cmd.lease) {
                return Ok(AcquireOutcome::Granted(Grant {
                    token: holder.token,
                    key: holder.key.clone(),
                    holders: lock.holders.clone(),
                }));
            }
            if let Some(position) = lock.waiters.iter().position(|w| w.lease == cmd.lease) {
                return Ok(AcquireOutcome::Queued {
                    key: lock.waiters[position].key.clone(),
                    position: position as u64,
                });
            }
        }
        let lock = self
            .locks
            .entry(cmd.name.clone())
            .or_insert_with(|| Lock::new(cmd.permits));
        let grantable = lock.waiters.is_empty() && lock.delay.is_none() && lock.admits(cmd.mode);
        if !grantable && cmd.try_only {
            let holders = lock.holders.len();
            if lock.is_unused() {
                self.locks.remove(&cmd.name);
            }
            return Err(ApplyError::LockBusy {
                name: cmd.name.clone(),
                holders,
            });
        }
        let key = lock_key(&cmd.name, cmd.lease);
        w.put_value(&key, value.to_vec(), cmd.lease);
        if grantable {
            lock.holders.push(Holder {
                lease: cmd.lease,
                token: w.revision(),
                key: key.clone(),
                mode: cmd.mode,
                delay_ms: cmd.delay_ms,
            });
            w.changes.push(LockChange::Granted {
                name: cmd.name.clone(),
                lease: cmd.lease,
                token: w.revision(),
            });
            return Ok(AcquireOutcome::Granted(Grant {
                token: w.revision(),
                key,
                holders: lock.holders.clone(),
            }));
        }
        lock.waiters.push_back(Waiter {
            lease: cmd.lease,
            key: key.clone(),
            mode: cmd.mode,
            delay_ms: cmd.delay_ms,
        });
        Ok(AcquireOutcome::Queued {
            key,
            position: lock.waiters.len() as u64 - 1,
        })
    }

    /// Releases the grant with `token` (of `lease`, when several shared
    /// holders share the token) and grants the next waiters.
    pub(super) fn release(
        &mut self,
        name: &str,
        token: i64,
        lease: i64,
        leases: &LeaseTable,
        w: &mut Write<'_>,
    ) -> Result<(), ApplyError> {
        let stale = || ApplyError::StaleToken {
            name: name.to_string(),
            token,
        };
        let lock = self.locks.get_mut(name).ok_or_else(stale)?;
        let matching: Vec<usize> = lock
            .holders
            .iter()
            .enumerate()
            .filter(|(_, h)| h.token == token && (lease == 0 || h.lease == lease))
            .map(|(i, _)| i)
            .collect();
        let index = match matching.as_slice() {
            [] => return Err(stale()),
            [index] => *index,
            _ => {
                return Err(ApplyError::AmbiguousToken {
                    name: name.to_string(),
                    token,
                    holders: matching.len(),
                });
            }
        };
        let holder = lock.holders.remove(index);
        w.remove(&holder.key);
        w.changes.push(LockChange::Left {
            name: name.to_string(),
            lease: holder.lease,
            reason: LeaveReason::Released,
        });
        self.grant(name, leases, w);
        Ok(())
    }

    /// Removes `lease`'s place from the queue of `name`, unless it was
    /// granted already.
    pub(super) fn cancel(
        &mut self,
        name: &str,
        lease: i64,
        leases: &LeaseTable,
        w: &mut Write<'_>,
    ) -> CancelOutcome {
        let Some(lock) = self.locks.get_mut(name) else {
            return CancelOutcome::NotQueued;
        };
        if let Some(holder) = lock.holders.iter().find(|h| h.lease == lease) {
            return CancelOutcome::Held(Grant {
                token: holder.token,
                key: holder.key.clone(),
                holders: lock.holders.clone(),
            });
        }
        let Some(position) = lock.waiters.iter().position(|w| w.lease == lease) else {
            return CancelOutcome::NotQueued;
        };
        let waiter = lock.waiters.remove(position);
        if let Some(waiter) = waiter {
            w.remove(&waiter.key);
        }
        w.changes.push(LockChange::Left {
            name: name.to_string(),
            lease,
            reason: LeaveReason::Cancelled,
        });
        // A waiter that left may have been what held up those behind it
        // (an exclusive waiter ahead of shared ones).
        self.grant(name, leases, w);
        CancelOutcome::Cancelled
    }

    /// Removes the place of `lease` in lock `name` because the lease ended.
    /// An expired holder that asked for a lock-delay starts one. Does not
    /// grant: the caller grants once every place of the lease is gone.
    pub(super) fn leave(
        &mut self,
        name: &str,
        lease: i64,
        reason: LeaveReason,
        w: &mut Write<'_>,
    ) -> bool {
        let Some(lock) = self.locks.get_mut(name) else {
            return false;
        };
        let key = if let Some(index) = lock.holders.iter().position(|h| h.lease == lease) {
            let holder = lock.holders.remove(index);
            if reason == LeaveReason::LeaseExpired && holder.delay_ms > 0 {
                let ms = lock.delay.map_or(0, |d| d.ms).max(holder.delay_ms);
                lock.delay = Some(Delay {
                    since: w.revision(),
                    ms,
                });
                self.delay_generation = self.delay_generation.wrapping_add(1);
            }
            holder.key
        } else if let Some(index) = lock.waiters.iter().position(|w| w.lease == lease) {
            match lock.waiters.remove(index) {
                Some(waiter) => waiter.key,
                None => return false,
            }
        } else {
            return false;
        };
        w.remove(&key);
        w.changes.push(LockChange::Left {
            name: name.to_string(),
            lease,
            reason,
        });
        true
    }

    /// Ends the lock-delay of `name` that started at `since` (a stale end,
    /// for an older delay, changes nothing) and grants the next waiters.
    pub(super) fn end_delay(
        &mut self,
        name: &str,
        since: i64,
        leases: &LeaseTable,
        w: &mut Write<'_>,
    ) -> bool {
        let Some(lock) = self.locks.get_mut(name) else {
            return false;
        };
        if lock.delay.map(|d| d.since) != Some(since) {
            return false;
        }
        lock.delay = None;
        self.delay_generation = self.delay_generation.wrapping_add(1);
        self.grant(name, leases, w);
        true
    }

    /// Grants waiters from the head of the queue while the holders admit
    /// them, then forgets the lock if nobody uses it any more.
    pub(super) fn grant(&mut self, name: &str, leases: &LeaseTable, w: &mut Write<'_>) {
        let Some(lock) = self.locks.get_mut(name) else {
            return;
        };
        while lock.delay.is_none() {
            let Some(head) = lock.waiters.front() else {
                break;
            };
            if !leases.contains(head.lease) {
                // Cannot happen (a lease's places leave with it), but a grant
                // to a dead lease must be impossible, not merely unlikely.
                if let Some(dead) = lock.waiters.pop_front() {
                    w.remove(&dead.key);
                    w.changes.push(LockChange::Left {
                        name: name.to_string(),
                        lease: dead.lease,
                        reason: LeaveReason::LeaseExpired,
                    });
                }
                continue;
            }
            if !lock.admits(head.mode) {
                break;
            }
            let Some(waiter) = lock.waiters.pop_front() else {
                break;
            };
            w.put(&waiter.key, waiter.lease);
            w.changes.push(LockChange::Granted {
                name: name.to_string(),
                lease: waiter.lease,
                token: w.revision(),
            });
            lock.holders.push(Holder {
                lease: waiter.lease,
                token: w.revision(),
                key: waiter.key,
                mode: waiter.mode,
                delay_ms: waiter.delay_ms,
            });
        }
        if lock.is_unused() {
            self.locks.remove(name);
        }
    }

    /// Feeds the table into the state digest.
    pub(super) fn digest_into(&self, hash: &mut Fnv1a64) {
        hash.write_len(self.locks.len());
        for (name, lock) in &self.locks {
            hash.write_bytes(name.as_bytes());
            hash.write_i64(i64::from(lock.permits));
            hash.write_len(lock.holders.len());
            for h in &lock.holders {
                hash.write_i64(h.lease);
                hash.write_i64(h.token);
                hash.write_bytes(&h.key);
                hash.write_i64(mode_code(h.mode));
                hash.write_i64(h.delay_ms as i64);
            }
            hash.write_len(lock.waiters.len());
            for w in &lock.waiters {
                hash.write_i64(w.lease);
                hash.write_bytes(&w.key);
                hash.write_i64(mode_code(w.mode));
                hash.write_i64(w.delay_ms as i64);
            }
            match lock.delay {
                None => hash.write_i64(-1),
                Some(d) => {
                    hash.write_i64(d.since);
                    hash.write_i64(d.ms as i64);
                }
            }
        }
    }
}

fn mode_code(mode: LockMode) -> i64 {
    match mode {
        LockMode::Exclusive => 0,
        LockMode::Shared => 1,
    }
}

//! The revisioned keyspace: every live key with its create and mod revision,
//! version and lease, and one global revision that advances by exactly one per
//! command that changes a key.
//!
//! It keeps no history: a read always sees the latest state, and a deleted key
//! is simply gone (an etcd keyspace that is compacted after every command).
//!
//! **Architecture Invariant:** nothing here panics, whatever the request
//! holds. Client numbers (`limit`) are only compared, never used as an index;
//! counters use saturating arithmetic; the only `OrdMap::range` calls have a
//! lower bound that is never above the upper bound.

use std::ops::Bound;

use imbl::OrdMap;

use super::{
    Compare, CompareOp, CompareTarget, DeleteRequest, DeleteResult, Event, EventKind, KeyValue,
    PutRequest, PutResult, RangeRequest, RangeResult, TxnOp, TxnOpResult, TxnRequest, TxnResult,
};

/// The keyspace at its current revision.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KvStore {
    /// Every live key. A `BTreeMap` and not a `HashMap` because prefix reads
    /// are range scans, and because responses, events and the digest must
    /// list keys in one order on every member.
    ///
    /// A persistent map (shared, copy-on-write nodes) so that a snapshot
    /// clones the whole keyspace in constant time and the apply loop keeps
    /// going while the copy is written out.
    kvs: OrdMap<Vec<u8>, KeyValue>,
    /// How many commands changed the keyspace; 0 for an empty history.
    revision: i64,
}

impl KvStore {
    /// The current keyspace revision.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Writes one key at the next revision. The `Put` event carries the
    /// previous pair whenever there was one; the answer only when asked.
    pub fn put(&mut self, req: &PutRequest, events: &mut Vec<Event>) -> PutResult {
        let revision = self.next_revision();
        let prev_kv = self.put_at(req, revision, events);
        self.revision = revision;
        PutResult {
            revision,
            prev_kv: prev_kv.filter(|_| req.prev_kv),
        }
    }

    /// Deletes a key or every key under a prefix, all at the next revision,
    /// with one `Delete` event per key in key order. Deleting nothing is not a
    /// change: the revision stays and no event is emitted.
    pub fn delete(&mut self, req: &DeleteRequest, events: &mut Vec<Event>) -> DeleteResult {
        let revision = self.next_revision();
        let deleted = self.delete_at(req, revision, events);
        if !deleted.is_empty() {
            self.revision = revision;
        }
        delete_result(req, deleted, self.revision)
    }

    /// Reads a key or a prefix at the current revision.
    pub fn range(&self, req: &RangeRequest) -> RangeResult {
        self.range_at(req, self.revision)
    }

    /// Runs `success` if every compare holds against the state before the
    /// transaction, else `failure`.
    ///
    /// Every write of the branch happens at the same revision (the current
    /// one plus one), and the revision advances only if some operation changed
    /// a key. Operations see the effects of earlier operations of the branch.
    /// Each operation's answer reports the revision as of just after it: a
    /// range before the first change reports the old revision, anything after
    /// it the new one. The same key written twice is applied in order.
    pub fn txn(&mut self, req: &TxnRequest, events: &mut Vec<Event>) -> TxnResult {
        let succeeded = req.compare.iter().all(|compare| self.holds(compare));
        self.txn_branch(req, succeeded, events)
    }

    /// Runs the branch of `req` that `succeeded` selects (the compares were
    /// evaluated by the caller, which also knows about locks).
    pub(super) fn txn_branch(
        &mut self,
        req: &TxnRequest,
        succeeded: bool,
        events: &mut Vec<Event>,
    ) -> TxnResult {
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let next = self.next_revision();
        let mut changed = false;
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match op {
                TxnOp::Range(range) => {
                    let seen = if changed { next } else { self.revision };
                    TxnOpResult::Range(self.range_at(range, seen))
                }
                TxnOp::Put(put) => {
                    let prev_kv = self.put_at(put, next, events);
                    changed = true;
                    TxnOpResult::Put(PutResult {
                        revision: next,
                        prev_kv: prev_kv.filter(|_| put.prev_kv),
                    })
                }
                TxnOp::DeleteRange(delete) => {
                    let deleted = self.delete_at(delete, next, events);
                    changed |= !deleted.is_empty();
                    let seen = if changed { next } else { self.revision };
                    TxnOpResult::DeleteRange(delete_result(delete, deleted, seen))
                }
            };
            responses.push(response);
        }
        if changed {
            self.revision = next;
        }
        TxnResult {
            revision: self.revision,
            succeeded,
            responses,
        }
    }

    /// FNV-1a (64 bit) over the revision, the number of keys, then for each
    /// pair in key order: key, create revision, mod revision, version, value,
    /// lease. Integers are 8 little-endian bytes; byte strings are prefixed
    /// by their length, so no two states encode alike.
    ///
    /// Hand-written because `std`'s hashers may change output between
    /// releases, and members on different builds must agree. The encoding is
    /// part of the cluster's contract: changing it makes members of mixed
    /// versions report different digests for the same state.
    pub fn digest(&self) -> u64 {
        let mut hash = Fnv1a64::new();
        self.digest_into(&mut hash);
        hash.finish()
    }

    /// Feeds the encoding described at [`KvStore::digest`] into `hash`.
    pub(super) fn digest_into(&self, hash: &mut Fnv1a64) {
        hash.write_i64(self.revision);
        hash.write_len(self.kvs.len());
        for kv in self.kvs.values() {
            hash.write_bytes(&kv.key);
            hash.write_i64(kv.create_revision);
            hash.write_i64(kv.mod_revision);
            hash.write_i64(kv.version);
            hash.write_bytes(&kv.value);
            hash.write_i64(kv.lease);
        }
    }

    /// The live pair stored under `key`.
    pub(super) fn get(&self, key: &[u8]) -> Option<&KeyValue> {
        self.kvs.get(key)
    }

    /// Makes `revision` current, after writes made with `put_at` and
    /// `remove_at` at that revision.
    pub(super) fn advance_to(&mut self, revision: i64) {
        self.revision = self.revision.max(revision);
    }

    /// Deletes exactly `key` (reserved or not) at `revision` with its event,
    /// returning the removed pair. Does not touch `self.revision`.
    pub(super) fn remove_at(
        &mut self,
        key: &[u8],
        revision: i64,
        events: &mut Vec<Event>,
    ) -> Option<KeyValue> {
        let prev = self.kvs.remove(key)?;
        events.push(Event {
            kind: EventKind::Delete,
            kv: tombstone(prev.key.clone(), revision),
            prev_kv: Some(prev.clone()),
        });
        Some(prev)
    }

    /// The revision the next change will get. Saturating: 2^63 commands will
    /// not happen, and a panic in apply would be worse than a stuck counter.
    pub(super) fn next_revision(&self) -> i64 {
        self.revision.saturating_add(1)
    }

    /// Writes one key with `revision` as its mod revision, emits the event
    /// and returns the previous pair. Does not touch `self.revision`.
    pub(super) fn put_at(
        &mut self,
        req: &PutRequest,
        revision: i64,
        events: &mut Vec<Event>,
    ) -> Option<KeyValue> {
        let prev_kv = self.kvs.get(req.key.as_slice()).cloned();
        let (create_revision, version) = match &prev_kv {
            Some(prev) => (prev.create_revision, prev.version.saturating_add(1)),
            None => (revision, 1),
        };
        let kv = KeyValue {
            key: req.key.clone(),
            create_revision,
            mod_revision: revision,
            version,
            value: req.value.clone(),
            lease: req.lease,
        };
        self.kvs.insert(req.key.clone(), kv.clone());
        events.push(Event {
            kind: EventKind::Put,
            kv,
            prev_kv: prev_kv.clone(),
        });
        prev_kv
    }

    /// Removes the matching keys, emits one event per key in key order and
    /// returns the removed pairs. Does not touch `self.revision`. Reserved
    /// keys (locks, elections) are never removed by a client's delete, even a
    /// prefix delete that covers them: only their own commands change them.
    fn delete_at(
        &mut self,
        req: &DeleteRequest,
        revision: i64,
        events: &mut Vec<Event>,
    ) -> Vec<KeyValue> {
        let keys: Vec<Vec<u8>> = matching(&self.kvs, &req.key, req.prefix)
            .filter(|(key, _)| !super::is_reserved(key))
            .map(|(key, _)| key.clone())
            .collect();
        let mut deleted = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(prev) = self.kvs.remove(&key) else {
                continue;
            };
            events.push(Event {
                kind: EventKind::Delete,
                kv: tombstone(key, revision),
                prev_kv: Some(prev.clone()),
            });
            deleted.push(prev);
        }
        deleted
    }

    /// Reads the matching keys and reports them as of `revision`.
    fn range_at(&self, req: &RangeRequest, revision: i64) -> RangeResult {
        // A limit of 0 or below means none. On a 32-bit target a limit above
        // `usize::MAX` also means none, which is what it would amount to.
        let limit = usize::try_from(req.limit).ok().filter(|&limit| limit > 0);
        let mut count: usize = 0;
        let mut kvs = Vec::new();
        for (_, kv) in matching(&self.kvs, &req.key, req.prefix) {
            count = count.saturating_add(1);
            if req.count_only || limit.is_some_and(|limit| kvs.len() >= limit) {
                continue;
            }
            kvs.push(if req.keys_only {
                KeyValue {
                    key: kv.key.clone(),
                    value: Vec::new(),
                    ..*kv
                }
            } else {
                kv.clone()
            });
        }
        RangeResult {
            revision,
            kvs,
            more: limit.is_some_and(|limit| count > limit),
            count: i64::try_from(count).unwrap_or(i64::MAX),
        }
    }

    /// Whether one transaction condition holds now. A missing key has
    /// version, revisions and lease 0, and a value that fails every compare.
    pub(super) fn holds(&self, compare: &Compare) -> bool {
        let stored = self.kvs.get(compare.key.as_slice());
        let field = |get: fn(&KeyValue) -> i64| stored.map_or(0, get);
        let ordering = match &compare.target {
            CompareTarget::Value(value) => match stored {
                Some(kv) => kv.value.as_slice().cmp(value.as_slice()),
                None => return false,
            },
            CompareTarget::Version(given) => field(|kv| kv.version).cmp(given),
            CompareTarget::CreateRevision(given) => field(|kv| kv.create_revision).cmp(given),
            CompareTarget::ModRevision(given) => field(|kv| kv.mod_revision).cmp(given),
            CompareTarget::Lease(given) => field(|kv| kv.lease).cmp(given),
            // Lock compares are evaluated by the state machine, which knows
            // the lock table; the keyspace alone cannot confirm a holder.
            CompareTarget::LockToken(_) => return false,
        };
        match compare.op {
            CompareOp::Equal => ordering.is_eq(),
            CompareOp::Greater => ordering.is_gt(),
            CompareOp::Less => ordering.is_lt(),
            CompareOp::NotEqual => ordering.is_ne(),
        }
    }
}

/// What a delete event carries: the key, empty value, `mod_revision` set to
/// the revision of the delete.
fn tombstone(key: Vec<u8>, revision: i64) -> KeyValue {
    KeyValue {
        key,
        create_revision: 0,
        mod_revision: revision,
        version: 0,
        value: Vec::new(),
        lease: 0,
    }
}

/// The answer to a delete that removed `deleted`, as of `revision`.
fn delete_result(req: &DeleteRequest, deleted: Vec<KeyValue>, revision: i64) -> DeleteResult {
    DeleteResult {
        revision,
        deleted: i64::try_from(deleted.len()).unwrap_or(i64::MAX),
        prev_kvs: if req.prev_kv { deleted } else { Vec::new() },
    }
}

/// The pairs whose key is `key`, or starts with `key` when `prefix` is set,
/// in key order, without scanning the rest of the map.
fn matching<'a>(
    kvs: &'a OrdMap<Vec<u8>, KeyValue>,
    key: &[u8],
    prefix: bool,
) -> impl Iterator<Item = (&'a Vec<u8>, &'a KeyValue)> + 'a {
    // An ordered map's range may panic when the start is above the end, or
    // equal to it with both bounds excluded. Neither can happen: a single key
    // is an included start and end, and `prefix_end` is always above the
    // prefix.
    if !prefix {
        return kvs.range::<_, [u8]>((Bound::Included(key), Bound::Included(key)));
    }
    let end = prefix_end(key);
    let upper = end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
    kvs.range::<_, [u8]>((Bound::Included(key), upper))
}

/// The smallest key above every key that starts with `prefix`: drop trailing
/// 0xff bytes and increment the last remaining one. `None` when there is no
/// such key (the prefix is empty or all 0xff), so the range is unbounded.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if let Some(incremented) = last.checked_add(1) {
            end.push(incremented);
            return Some(end);
        }
    }
    None
}

/// The 64-bit FNV-1a hash, fed with fixed-width little-endian integers.
#[derive(Debug)]
pub(super) struct Fnv1a64(u64);

impl Fnv1a64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    pub(super) fn new() -> Self {
        Self(Self::OFFSET_BASIS)
    }

    fn write_raw(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    pub(super) fn write_i64(&mut self, value: i64) {
        self.write_raw(&value.to_le_bytes());
    }

    pub(super) fn write_len(&mut self, len: usize) {
        self.write_raw(&u64::try_from(len).unwrap_or(u64::MAX).to_le_bytes());
    }

    /// A byte string, prefixed by its length.
    pub(super) fn write_bytes(&mut self, bytes: &[u8]) {
        self.write_len(bytes.len());
        self.write_raw(bytes);
    }

    pub(super) fn finish(&self) -> u64 {
        self.0
    }
}

//! The lease table: which leases are alive, their granted TTL, and the keys
//! attached to each.
//!
//! The table knows no time. A lease is alive from the `LeaseGrant` that
//! created it until the `LeaseRevoke` or `LeaseExpire` that ends it; the
//! leader's lessor decides *when* to propose an expiry, the log decides that
//! it happened.
//!
//! **Architecture Invariant:** lease ids are never reused. Ids are handed out
//! above the highest id ever granted, and a client-chosen id must be above it
//! too, so a stale reference to an ended lease can never name a new one.

use std::collections::BTreeSet;

use super::ApplyError;
use super::kv::Fnv1a64;

/// One live lease.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lease {
    /// The lease id; positive.
    pub id: i64,
    /// Granted time to live, seconds.
    pub ttl: i64,
    /// Keys attached to the lease, lock and election keys included.
    pub keys: BTreeSet<Vec<u8>>,
}

/// Every live lease.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeaseTable {
    /// Persistent, like the keyspace, so a snapshot copies it in constant
    /// time.
    leases: imbl::OrdMap<i64, Lease>,
    /// The highest id ever granted; the next automatic id is one above.
    max_id: i64,
    /// Counts grants and removals, so the lessor can tell cheaply whether it
    /// must look at the table again.
    generation: u64,
}

impl LeaseTable {
    /// Creates a lease. `id` 0 picks the next id. Fails when `id` is taken or
    /// not above every id granted before, or when `ttl` is not positive.
    pub fn grant(&mut self, id: i64, ttl: i64) -> Result<i64, ApplyError> {
        if ttl <= 0 {
            return Err(ApplyError::InvalidTtl(ttl));
        }
        let id = match id {
            0 => self
                .max_id
                .checked_add(1)
                .ok_or(ApplyError::LeaseIdsExhausted)?,
            id if self.leases.contains_key(&id) => return Err(ApplyError::LeaseExists(id)),
            id if id < 0 || id <= self.max_id => {
                return Err(ApplyError::LeaseIdUsed {
                    id,
                    max: self.max_id,
                });
            }
            id => id,
        };
        self.max_id = id;
        self.generation = self.generation.wrapping_add(1);
        self.leases.insert(
            id,
            Lease {
                id,
                ttl,
                keys: BTreeSet::new(),
            },
        );
        Ok(id)
    }

    /// Removes a lease, returning it (with its keys) if it was alive.
    pub fn remove(&mut self, id: i64) -> Option<Lease> {
        let lease = self.leases.remove(&id)?;
        self.generation = self.generation.wrapping_add(1);
        Some(lease)
    }

    /// The live lease `id`.
    pub fn get(&self, id: i64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    /// Whether lease `id` is alive.
    pub fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    /// Records that `key` is now attached to lease `id` (no-op for 0 or an
    /// unknown id).
    pub fn attach(&mut self, id: i64, key: &[u8]) {
        if let Some(lease) = self.leases.get_mut(&id) {
            lease.keys.insert(key.to_vec());
        }
    }

    /// Records that `key` is no longer attached to lease `id`.
    pub fn detach(&mut self, id: i64, key: &[u8]) {
        if let Some(lease) = self.leases.get_mut(&id) {
            lease.keys.remove(key);
        }
    }

    /// Live leases in id order.
    pub fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    /// How many leases are alive.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// Whether no lease is alive.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Changes whenever a lease is granted or removed.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The highest id ever granted.
    pub fn max_id(&self) -> i64 {
        self.max_id
    }

    /// Feeds the table into the state digest: the id high-water mark, then
    /// per lease in id order its id, TTL and keys.
    pub(super) fn digest_into(&self, hash: &mut Fnv1a64) {
        hash.write_i64(self.max_id);
        hash.write_len(self.leases.len());
        for lease in self.leases.values() {
            hash.write_i64(lease.id);
            hash.write_i64(lease.ttl);
            hash.write_len(lease.keys.len());
            for key in &lease.keys {
                hash.write_bytes(key);
            }
        }
    }
}

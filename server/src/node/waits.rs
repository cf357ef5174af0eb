//! Lock waits: an acquirer whose place is queued waits here for the apply
//! loop to report that the place was granted or ended.
//!
//! The waiter registers *before* it proposes the acquire, so a grant that
//! commits in the same apply batch as the acquire cannot be missed. Every
//! notice carries the raft index of the entry that made the change, because
//! a notice may be stale: changes are announced after their whole apply
//! batch, so a client whose release was already answered can register a new
//! wait in time to receive that release's notice. A waiter ignores notices
//! from entries at or before its own acquire.

use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use tokio::sync::oneshot;

use crate::state::LockChange;

type Place = (String, i64);
/// A registered waiter: its id and where to send (raft index, change).
type Waiter = (u64, oneshot::Sender<(u64, LockChange)>);

/// Who waits on which lock place.
#[derive(Debug, Default)]
pub struct LockWaits {
    next_id: AtomicU64,
    waiters: DashMap<Place, Vec<Waiter>>,
}

/// A registered wait; dropping it unregisters.
#[derive(Debug)]
pub struct LockWait<'a> {
    waits: &'a LockWaits,
    place: Place,
    id: u64,
    /// Fires with the first change to the place: (raft index, change).
    pub changed: oneshot::Receiver<(u64, LockChange)>,
}

impl LockWaits {
    /// Waits for the next change to `lease`'s place in lock `name`.
    pub fn register(&self, name: &str, lease: i64) -> LockWait<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let place = (name.to_string(), lease);
        self.waiters
            .entry(place.clone())
            .or_default()
            .push((id, tx));
        LockWait {
            waits: self,
            place,
            id,
            changed: rx,
        }
    }

    /// Wakes whoever waits on the place `change` (applied at raft `index`)
    /// is about.
    pub fn notify(&self, index: u64, change: &LockChange) {
        let place = match change {
            LockChange::Granted { name, lease, .. } | LockChange::Left { name, lease, .. } => {
                (name.clone(), *lease)
            }
        };
        if let Some((_, waiters)) = self.waiters.remove(&place) {
            for (_, tx) in waiters {
                let _ = tx.send((index, change.clone()));
            }
        }
    }
}

impl LockWaits {
    /// Wakes every waiter with a notice older than any acquire, so each
    /// looks at the state again (it was replaced by a snapshot's).
    pub fn wake_all(&self) {
        let places: Vec<Place> = self.waiters.iter().map(|e| e.key().clone()).collect();
        for place in places {
            if let Some(((name, lease), waiters)) = self.waiters.remove(&place) {
                let change = LockChange::Left {
                    name,
                    lease,
                    reason: crate::state::LeaveReason::Cancelled,
                };
                for (_, tx) in waiters {
                    let _ = tx.send((0, change.clone()));
                }
            }
        }
    }
}

impl Drop for LockWait<'_> {
    fn drop(&mut self) {
        if let dashmap::Entry::Occupied(mut entry) = self.waits.waiters.entry(self.place.clone()) {
            entry.get_mut().retain(|(id, _)| *id != self.id);
            if entry.get().is_empty() {
                entry.remove();
            }
        }
    }
}

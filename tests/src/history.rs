//! [`History`]: the writes a cluster acknowledged, to hold it to after faults.
//!
//! A write that returned `Ok` must be readable afterwards, with the value
//! written, from every member. A write that failed may or may not have been
//! applied (its outcome is unknown), so it is not recorded and not checked.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use fenced_client::pb::KeyValue;

/// Acknowledged writes, key → value. Cheap to clone: clones share one
/// record, so concurrent writer tasks can each hold one.
///
/// Each key should be written by one writer only: with two writers racing
/// on a key, the last acknowledgement recorded need not be the last write
/// applied.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// A std mutex: it is never held across an await.
    acknowledged: Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>>,
}

impl History {
    /// An empty history.
    pub fn new() -> History {
        History::default()
    }

    /// Records that the cluster acknowledged writing `value` under `key`.
    pub fn record(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.lock().insert(key.into(), value.into());
    }

    /// How many keys have an acknowledged write.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing was acknowledged.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// A copy of the acknowledged writes.
    pub fn acknowledged(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.lock().clone()
    }

    /// Every acknowledged write that `held` (what one member returned for a
    /// range covering all recorded keys) lacks or holds with another value,
    /// one line each. Empty when the member holds every acknowledged write.
    pub fn violations(&self, held: &[KeyValue]) -> Vec<String> {
        let held: BTreeMap<&[u8], &[u8]> = held
            .iter()
            .map(|kv| (kv.key.as_slice(), kv.value.as_slice()))
            .collect();
        let mut violations = Vec::new();
        for (key, value) in self.lock().iter() {
            let key_text = String::from_utf8_lossy(key);
            match held.get(key.as_slice()) {
                None => violations.push(format!(
                    "{key_text}: acknowledged as {:?}, missing",
                    String::from_utf8_lossy(value)
                )),
                Some(found) if *found != value.as_slice() => violations.push(format!(
                    "{key_text}: acknowledged as {:?}, holds {:?}",
                    String::from_utf8_lossy(value),
                    String::from_utf8_lossy(found)
                )),
                Some(_) => {}
            }
        }
        violations
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        // Every update is a single insert, so a poisoned map is consistent.
        self.acknowledged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.into(),
            ..KeyValue::default()
        }
    }

    #[test]
    fn reports_missing_and_changed_keys_only() {
        let history = History::new();
        assert!(history.is_empty());
        history.record("a", "1");
        history.record("b", "2");
        history.record("c", "3");
        assert_eq!(history.len(), 3);
        let held = [kv("a", "1"), kv("b", "two"), kv("unrecorded", "x")];
        let violations = history.violations(&held);
        assert_eq!(violations.len(), 2, "{violations:?}");
        assert!(violations[0].starts_with("b:"), "{violations:?}");
        assert!(violations[1].contains("missing"), "{violations:?}");
        assert!(
            history
                .violations(&[kv("a", "1"), kv("b", "2"), kv("c", "3")])
                .is_empty()
        );
    }
}

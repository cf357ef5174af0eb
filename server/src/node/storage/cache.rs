//! The in-memory tail of the log, and raft's size limit on `entries()` answers.

use std::collections::VecDeque;

use protobuf::Message as _;
use raft::NO_LIMIT;
use raft::eraftpb::Entry;

/// Bounded cache of the most recent log entries. Invariant: contiguous, and when non-empty its
/// last entry is the storage's last entry.
pub(super) struct EntryCache {
    pub(super) entries: VecDeque<Entry>,
    pub(super) bytes: u64,
    pub(super) max_entries: usize,
    pub(super) max_bytes: u64,
}

impl EntryCache {
    pub(super) fn new(max_entries: usize, max_bytes: u64) -> Self {
        Self {
            entries: VecDeque::new(),
            bytes: 0,
            max_entries,
            max_bytes,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|e| e.index)
    }

    pub(super) fn get(&self, idx: u64) -> Option<&Entry> {
        let first = self.first_index()?;
        let offset = usize::try_from(idx.checked_sub(first)?).ok()?;
        self.entries.get(offset)
    }

    pub(super) fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Drops every entry with index >= `idx`.
    pub(super) fn truncate_from(&mut self, idx: u64) {
        while let Some(e) = self.entries.back() {
            if e.index < idx {
                break;
            }
            self.bytes -= entry_size(e);
            self.entries.pop_back();
        }
    }

    /// Drops every entry with index < `idx`.
    pub(super) fn compact_to(&mut self, idx: u64) {
        while let Some(e) = self.entries.front() {
            if e.index >= idx {
                break;
            }
            self.bytes -= entry_size(e);
            self.entries.pop_front();
        }
    }

    /// Appends contiguous entries that follow the cached ones (the cache is cleared first if
    /// they do not).
    pub(super) fn append(&mut self, ents: &[Entry]) {
        let Some(first) = ents.first() else { return };
        if self
            .entries
            .back()
            .is_some_and(|e| e.index + 1 != first.index)
        {
            self.clear();
        }
        // Entries that would be evicted right away are not worth cloning.
        let skip = ents.len().saturating_sub(self.max_entries);
        for e in &ents[skip..] {
            self.bytes += entry_size(e);
            self.entries.push_back(e.clone());
        }
        self.evict();
    }

    pub(super) fn evict(&mut self) {
        while self.entries.len() > self.max_entries || self.bytes > self.max_bytes {
            match self.entries.pop_front() {
                Some(e) => self.bytes -= entry_size(&e),
                None => break,
            }
        }
    }
}

pub(super) fn entry_size(e: &Entry) -> u64 {
    u64::from(e.compute_size())
}

/// Collects entries under raft's `limit_size` rule: the first entry always, then more while
/// the running total stays within `max`.
pub(super) struct SizeLimited {
    pub(super) out: Vec<Entry>,
    pub(super) size: u64,
    pub(super) max: u64,
}

impl SizeLimited {
    pub(super) fn new(max_size: Option<u64>, capacity: usize) -> Self {
        let max = match max_size {
            None | Some(NO_LIMIT) => u64::MAX,
            Some(m) => m,
        };
        Self {
            out: Vec::with_capacity(capacity),
            size: 0,
            max,
        }
    }

    /// Returns false (and drops `e`) once the limit is reached; the caller stops then.
    pub(super) fn push(&mut self, e: Entry) -> bool {
        self.size = self.size.saturating_add(entry_size(&e));
        if !self.out.is_empty() && self.size > self.max {
            return false;
        }
        self.out.push(e);
        true
    }
}

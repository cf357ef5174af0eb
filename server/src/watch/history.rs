//! The history window: the events of the last `--watch-history` revisions
//! (fewer if they would take more than `--watch-history-bytes`), appended by
//! the apply loop, read by the fan-out thread.

use std::collections::VecDeque;

use super::Revision;
use crate::state::Event;

/// Bookkeeping bytes counted per event on top of its keys and values.
const EVENT_OVERHEAD_BYTES: usize = 160;

/// The applied events of the last revisions, within a count and a size.
#[derive(Debug)]
pub struct History {
    /// Oldest first, with their size; revisions are consecutive (every
    /// revision changed at least one key, so it has at least one event).
    revisions: VecDeque<(i64, Revision, usize)>,
    /// How many revisions to keep.
    capacity: usize,
    /// How many bytes of events to keep (the newest revision is kept
    /// whatever its size).
    max_bytes: usize,
    /// Bytes of the revisions held.
    bytes: usize,
    /// The newest revision appended; 0 before any.
    head: i64,
    /// Counts resets, so the fan-out thread notices one.
    epoch: u64,
}

impl History {
    /// An empty history that keeps `capacity` revisions and at most
    /// `max_bytes` of their events.
    pub fn new(capacity: usize, max_bytes: usize) -> Self {
        Self {
            revisions: VecDeque::new(),
            capacity: capacity.max(1),
            max_bytes,
            bytes: 0,
            head: 0,
            epoch: 0,
        }
    }

    /// Forgets every revision and makes `revision` the head: the state jumped
    /// there (a snapshot), and nothing before it can be watched.
    pub fn reset(&mut self, revision: i64) {
        self.revisions.clear();
        self.bytes = 0;
        self.head = revision;
        self.epoch += 1;
    }

    /// How many resets happened.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Appends the events of `revision`, forgetting the oldest revisions
    /// while over the count or the size. A revision that is not newer than
    /// the head is ignored.
    pub fn append(&mut self, revision: i64, events: Vec<Event>) {
        if revision <= self.head || events.is_empty() {
            return;
        }
        let size: usize = events.iter().map(event_bytes).sum();
        self.revisions.push_back((revision, events.into(), size));
        self.bytes += size;
        self.head = revision;
        while self.revisions.len() > self.capacity
            || (self.bytes > self.max_bytes && self.revisions.len() > 1)
        {
            if let Some((_, _, size)) = self.revisions.pop_front() {
                self.bytes -= size;
            }
        }
        metrics::gauge!("fenced_watch_history_bytes").set(self.bytes as f64);
    }

    /// Bytes of events held, as counted against the size limit.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The newest revision appended.
    pub fn head(&self) -> i64 {
        self.head
    }

    /// The oldest revision a watch can start from.
    pub fn oldest(&self) -> i64 {
        self.revisions.front().map_or(self.head + 1, |(r, _, _)| *r)
    }

    /// The events of `revision`, if held.
    pub fn get(&self, revision: i64) -> Option<&Revision> {
        let (first, _, _) = self.revisions.front()?;
        let offset = usize::try_from(revision.checked_sub(*first)?).ok()?;
        self.revisions.get(offset).map(|(_, events, _)| events)
    }
}

/// What an event costs to hold: its keys and values, and a fixed overhead.
fn event_bytes(event: &Event) -> usize {
    let pair = |kv: &crate::state::KeyValue| kv.key.len() + kv.value.len();
    EVENT_OVERHEAD_BYTES + pair(&event.kv) + event.prev_kv.as_ref().map_or(0, pair)
}

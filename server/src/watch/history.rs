//! The history window: the events of the last `--watch-history` revisions,
//! appended by the apply loop, read by the fan-out thread.

use std::collections::VecDeque;

use super::Revision;
use crate::state::Event;

/// The applied events of the last `capacity` revisions.
#[derive(Debug)]
pub struct History {
    /// Oldest first; revisions are consecutive (every revision changed at
    /// least one key, so it has at least one event).
    revisions: VecDeque<(i64, Revision)>,
    /// How many revisions to keep.
    capacity: usize,
    /// The newest revision appended; 0 before any.
    head: i64,
}

impl History {
    /// An empty history that keeps `capacity` revisions.
    pub fn new(capacity: usize) -> Self {
        Self {
            revisions: VecDeque::new(),
            capacity: capacity.max(1),
            head: 0,
        }
    }

    /// Appends the events of `revision`, forgetting the oldest revision when
    /// full. A revision that is not newer than the head is ignored.
    pub fn append(&mut self, revision: i64, events: Vec<Event>) {
        if revision <= self.head || events.is_empty() {
            return;
        }
        if self.revisions.len() == self.capacity {
            self.revisions.pop_front();
        }
        self.revisions.push_back((revision, events.into()));
        self.head = revision;
    }

    /// The newest revision appended.
    pub fn head(&self) -> i64 {
        self.head
    }

    /// The oldest revision a watch can start from.
    pub fn oldest(&self) -> i64 {
        self.revisions.front().map_or(self.head + 1, |(r, _)| *r)
    }

    /// The events of `revision`, if held.
    pub fn get(&self, revision: i64) -> Option<&Revision> {
        let (first, _) = self.revisions.front()?;
        let offset = usize::try_from(revision.checked_sub(*first)?).ok()?;
        self.revisions.get(offset).map(|(_, events)| events)
    }
}

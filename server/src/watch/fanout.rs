//! The fan-out thread: owns every watcher, moves revisions from the history
//! into the streams' queues, and ends a watcher that falls too far behind
//! instead of waiting for it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{
    Backlog, Control, Ended, History, Outgoing, Revision, STREAM_BACKLOG, WATCH_BACKLOG, WatchSpec,
    WatchTag,
};

/// Catching up stops at half the backlog limits, so a stream's watches that
/// are level keep room for new revisions while others replay the past.
const CATCH_UP_WATCH_MARK: usize = WATCH_BACKLOG / 2;
const CATCH_UP_STREAM_MARK: usize = STREAM_BACKLOG / 2;
/// Most revisions one round copies out of the history for catching up.
const CATCH_UP_CHUNK: i64 = 4096;

/// Messages to the fan-out thread.
pub(super) enum HubMsg {
    /// New revisions are in the history.
    Applied,
    Open {
        stream: u64,
        queue: mpsc::UnboundedSender<Outgoing>,
        control: mpsc::UnboundedSender<Control>,
        backlog: Backlog,
    },
    Create {
        stream: u64,
        watch: WatchTag,
        spec: WatchSpec,
        start_revision: i64,
        backlog: Backlog,
    },
    Cancel {
        stream: u64,
        watch_id: i64,
    },
    Progress {
        stream: u64,
    },
    Close {
        stream: u64,
    },
    /// The member is stopping: tell every level watch how far it got, drop
    /// every stream (their tasks then tell each watch where to resume) and
    /// end the thread.
    Shutdown,
}

impl std::fmt::Debug for HubMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HubMsg")
    }
}

/// A registered watch, owned by the fan-out thread.
struct Watcher {
    stream: u64,
    watch: WatchTag,
    spec: WatchSpec,
    /// The first revision it was to deliver.
    first: i64,
    /// The next revision to send; meaningful while unsynced.
    next: i64,
    /// Its event responses not yet taken by the stream.
    backlog: Backlog,
}

struct StreamSink {
    queue: mpsc::UnboundedSender<Outgoing>,
    control: mpsc::UnboundedSender<Control>,
    /// Event responses of all its watches not yet taken.
    backlog: Backlog,
    /// (watch id → watcher id).
    watches: HashMap<i64, u64>,
    progress_wanted: bool,
}

/// The fan-out thread's state.
pub(super) struct Fanout {
    history: Arc<RwLock<History>>,
    progress_interval: Duration,
    streams: HashMap<u64, StreamSink>,
    watchers: HashMap<u64, Watcher>,
    next_watcher: u64,
    /// Synced watchers by exact key.
    exact: HashMap<Vec<u8>, HashSet<u64>>,
    /// Synced watchers by prefix.
    prefixes: BTreeMap<Vec<u8>, HashSet<u64>>,
    /// Watchers being caught up from the history (or waiting for a start
    /// revision in the future).
    unsynced: HashSet<u64>,
    /// The last revision sent to the synced group.
    dispatched: i64,
    /// The history's reset count as of the last round.
    epoch: u64,
    last_progress: Instant,
}

impl Fanout {
    pub(super) fn new(history: Arc<RwLock<History>>, progress_interval: Duration) -> Self {
        Self {
            history,
            progress_interval,
            streams: HashMap::new(),
            watchers: HashMap::new(),
            next_watcher: 1,
            exact: HashMap::new(),
            prefixes: BTreeMap::new(),
            unsynced: HashSet::new(),
            dispatched: 0,
            epoch: 0,
            last_progress: Instant::now(),
        }
    }

    pub(super) fn run(mut self, inbox: std_mpsc::Receiver<HubMsg>) {
        loop {
            // Watchers that are catching up are served again soon; otherwise
            // the thread sleeps until a message (or a progress tick).
            let wait = if self.catching_up() || self.any_progress_wanted() {
                Duration::from_millis(5)
            } else {
                self.progress_interval.min(Duration::from_secs(1))
            };
            let mut stop = false;
            match inbox.recv_timeout(wait) {
                Ok(HubMsg::Shutdown) => stop = true,
                Ok(msg) => self.handle(msg),
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            }
            while !stop && let Ok(msg) = inbox.try_recv() {
                match msg {
                    HubMsg::Shutdown => stop = true,
                    msg => self.handle(msg),
                }
            }
            self.round();
            if stop {
                self.farewell();
                return;
            }
        }
    }

    /// Whether some unsynced watcher has revisions to receive and room for
    /// them.
    fn catching_up(&self) -> bool {
        self.unsynced.iter().any(|id| {
            self.watchers
                .get(id)
                .is_some_and(|w| w.next <= self.dispatched && self.has_room(w))
        })
    }

    fn has_room(&self, w: &Watcher) -> bool {
        w.backlog.len() < CATCH_UP_WATCH_MARK
            && self
                .streams
                .get(&w.stream)
                .is_some_and(|s| s.backlog.len() < CATCH_UP_STREAM_MARK)
    }

    fn any_progress_wanted(&self) -> bool {
        self.streams.values().any(|s| s.progress_wanted)
    }

    fn handle(&mut self, msg: HubMsg) {
        match msg {
            HubMsg::Applied | HubMsg::Shutdown => {}
            HubMsg::Open {
                stream,
                queue,
                control,
                backlog,
            } => {
                self.streams.insert(
                    stream,
                    StreamSink {
                        queue,
                        control,
                        backlog,
                        watches: HashMap::new(),
                        progress_wanted: false,
                    },
                );
            }
            HubMsg::Create {
                stream,
                watch,
                spec,
                start_revision,
                backlog,
            } => self.create(stream, watch, spec, start_revision, backlog),
            HubMsg::Cancel { stream, watch_id } => {
                let id = self
                    .streams
                    .get_mut(&stream)
                    .and_then(|s| s.watches.remove(&watch_id));
                if let Some(id) = id {
                    self.remove_watcher(id);
                }
            }
            HubMsg::Progress { stream } => {
                if let Some(sink) = self.streams.get_mut(&stream) {
                    sink.progress_wanted = true;
                }
            }
            HubMsg::Close { stream } => {
                if let Some(sink) = self.streams.remove(&stream) {
                    for id in sink.watches.into_values() {
                        self.remove_watcher(id);
                    }
                }
            }
        }
        metrics::gauge!("fenced_watchers").set(self.watchers.len() as f64);
    }

    fn create(
        &mut self,
        stream: u64,
        watch: WatchTag,
        spec: WatchSpec,
        start_revision: i64,
        backlog: Backlog,
    ) {
        let (oldest, head) = {
            let history = self.read_history();
            (history.oldest(), history.head())
        };
        let Some(sink) = self.streams.get_mut(&stream) else {
            return;
        };
        // Level with what was dispatched (not with the head: revisions
        // between the two reach the synced group in the next round) unless
        // the watch starts elsewhere.
        let first = if start_revision == 0 {
            self.dispatched.max(head) + 1
        } else {
            start_revision
        };
        if first < oldest {
            let _ = sink.control.send(Control {
                watch,
                ended: Ended::Compacted { oldest },
                first,
            });
            return;
        }
        let created = Outgoing::Created {
            watch,
            revision: head,
        };
        if sink.queue.send(created).is_err() {
            return;
        }
        let id = self.next_watcher;
        self.next_watcher += 1;
        // A watch created again under the same id replaces the old one.
        if let Some(old) = sink.watches.insert(watch.id, id) {
            self.remove_watcher(old);
        }
        let watcher = Watcher {
            stream,
            watch,
            spec,
            first,
            next: first,
            backlog,
        };
        self.watchers.insert(id, watcher);
        if start_revision == 0 && head <= self.dispatched {
            self.index(id);
        } else {
            self.unsynced.insert(id);
        }
    }

    fn read_history(&self) -> std::sync::RwLockReadGuard<'_, History> {
        self.history
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn index(&mut self, id: u64) {
        let Some(w) = self.watchers.get(&id) else {
            return;
        };
        let map = if w.spec.prefix {
            self.prefixes.entry(w.spec.key.clone()).or_default()
        } else {
            self.exact.entry(w.spec.key.clone()).or_default()
        };
        map.insert(id);
    }

    fn remove_watcher(&mut self, id: u64) {
        let Some(w) = self.watchers.remove(&id) else {
            return;
        };
        self.unsynced.remove(&id);
        if w.spec.prefix {
            if let Some(set) = self.prefixes.get_mut(&w.spec.key) {
                set.remove(&id);
                if set.is_empty() {
                    self.prefixes.remove(&w.spec.key);
                }
            }
        } else if let Some(set) = self.exact.get_mut(&w.spec.key) {
            set.remove(&id);
            if set.is_empty() {
                self.exact.remove(&w.spec.key);
            }
        }
    }

    /// Sends new revisions to the synced group, catches up the unsynced,
    /// answers progress requests.
    fn round(&mut self) {
        let window = self.snapshot();
        let head = window.head;
        if window.epoch != self.epoch {
            // The state jumped to a snapshot: no watch here can continue
            // without a gap.
            self.epoch = window.epoch;
            let all: Vec<u64> = self.watchers.keys().copied().collect();
            for id in all {
                self.end(id, Ended::Reset);
            }
            self.dispatched = window.oldest - 1;
        }
        if self.dispatched + 1 < window.oldest {
            // Revisions left the history before the synced group got them
            // (a burst larger than the window between two rounds): every
            // level watch missed them.
            let synced: Vec<u64> = self
                .watchers
                .keys()
                .filter(|id| !self.unsynced.contains(id))
                .copied()
                .collect();
            for id in synced {
                self.end(
                    id,
                    Ended::Compacted {
                        oldest: window.oldest,
                    },
                );
            }
            self.dispatched = window.oldest - 1;
        }
        let mut too_slow = HashSet::new();
        while self.dispatched < head {
            let revision = self.dispatched + 1;
            if let Some(events) = window.get(revision) {
                self.dispatch(revision, events, &mut too_slow);
            }
            self.dispatched = revision;
        }
        for id in too_slow {
            self.end(id, Ended::TooSlow);
        }
        self.catch_up(&window);
        self.send_progress(head);
    }

    /// The revisions this round needs, copied out (as shared pointers) so
    /// that the history's lock, which the apply loop needs to append, is
    /// held only for the copy: everything the synced group has not been
    /// sent, and a bounded chunk for the unsynced watchers that have room.
    fn snapshot(&self) -> Window {
        let history = self.read_history();
        let head = history.head();
        let oldest = history.oldest();
        let epoch = history.epoch();
        let copy = |from: i64, to: i64| -> (i64, Vec<Revision>) {
            let from = from.max(oldest);
            let revisions = (from..=to)
                .filter_map(|revision| history.get(revision).cloned())
                .collect();
            (from, revisions)
        };
        let new = copy(self.dispatched + 1, head);
        let behind = self
            .unsynced
            .iter()
            .filter_map(|id| self.watchers.get(id))
            .filter(|w| w.next <= self.dispatched && self.has_room(w))
            .map(|w| w.next)
            .min();
        let past = behind.map(|from| copy(from, (from + CATCH_UP_CHUNK - 1).min(self.dispatched)));
        Window {
            head,
            oldest,
            epoch,
            ranges: [Some(new), past].into_iter().flatten().collect(),
        }
    }

    /// Sends one revision to every synced watcher it concerns. A watcher
    /// whose backlog is full goes into `too_slow` and gets nothing more.
    fn dispatch(&mut self, revision: i64, events: &Revision, too_slow: &mut HashSet<u64>) {
        let mut picks: HashMap<u64, Vec<u32>> = HashMap::new();
        for (index, event) in events.iter().enumerate() {
            let key = &event.kv.key;
            let mut add = |ids: &HashSet<u64>| {
                for id in ids {
                    picks.entry(*id).or_default().push(index as u32);
                }
            };
            if let Some(ids) = self.exact.get(key) {
                add(ids);
            }
            if self.prefixes.len() <= key.len() + 1 {
                for (prefix, ids) in &self.prefixes {
                    if key.starts_with(prefix) {
                        add(ids);
                    }
                }
            } else {
                for end in 0..=key.len() {
                    if let Some(ids) = self.prefixes.get(&key[..end]) {
                        add(ids);
                    }
                }
            }
        }
        for (id, candidates) in picks {
            if too_slow.contains(&id) {
                continue;
            }
            let Some(w) = self.watchers.get(&id) else {
                continue;
            };
            let pick: Vec<u32> = candidates
                .into_iter()
                .filter(|i| w.spec.matches(&events[*i as usize]))
                .collect();
            if pick.is_empty() {
                continue;
            }
            let Some(sink) = self.streams.get(&w.stream) else {
                continue;
            };
            if w.backlog.len() >= WATCH_BACKLOG || sink.backlog.len() >= STREAM_BACKLOG {
                too_slow.insert(id);
                continue;
            }
            let pick = (pick.len() != events.len()).then_some(pick);
            let out = Outgoing::Events {
                watch: w.watch,
                revision,
                events: events.clone(),
                pick,
            };
            if sink.queue.send(out).is_ok() {
                w.backlog.add();
                sink.backlog.add();
            }
        }
    }

    /// Sends unsynced watchers what they missed, as far as the copied chunk
    /// and their backlogs allow; a watcher that is level joins the synced
    /// group.
    fn catch_up(&mut self, window: &Window) {
        let head = self.dispatched;
        let ids: Vec<u64> = self.unsynced.iter().copied().collect();
        for id in ids {
            let Some(w) = self.watchers.get(&id) else {
                self.unsynced.remove(&id);
                continue;
            };
            if w.next < window.oldest {
                // Evicted while it waited for room in its queue.
                self.end(
                    id,
                    Ended::Compacted {
                        oldest: window.oldest,
                    },
                );
                continue;
            }
            let Some(sink) = self.streams.get(&w.stream) else {
                continue;
            };
            let Some(w) = self.watchers.get_mut(&id) else {
                continue;
            };
            while w.next <= head {
                if w.backlog.len() >= CATCH_UP_WATCH_MARK
                    || sink.backlog.len() >= CATCH_UP_STREAM_MARK
                {
                    // The reader may simply be slower than the catch-up;
                    // go on in a later round.
                    break;
                }
                let Some(events) = window.get(w.next) else {
                    // Not in this round's chunk.
                    break;
                };
                let pick: Vec<u32> = (0..events.len() as u32)
                    .filter(|i| w.spec.matches(&events[*i as usize]))
                    .collect();
                if !pick.is_empty() {
                    let pick = (pick.len() != events.len()).then_some(pick);
                    let out = Outgoing::Events {
                        watch: w.watch,
                        revision: w.next,
                        events: events.clone(),
                        pick,
                    };
                    if sink.queue.send(out).is_err() {
                        break;
                    }
                    w.backlog.add();
                    sink.backlog.add();
                }
                w.next += 1;
            }
            if w.next == head + 1 {
                self.unsynced.remove(&id);
                self.index(id);
            }
        }
    }

    /// Ends a watcher from the hub's side and tells its stream.
    fn end(&mut self, id: u64, ended: Ended) {
        let Some(w) = self.watchers.get(&id) else {
            return;
        };
        let (stream, watch, first) = (w.stream, w.watch, w.first);
        if let Some(sink) = self.streams.get_mut(&stream) {
            if sink.watches.get(&watch.id) == Some(&id) {
                sink.watches.remove(&watch.id);
            }
            let _ = sink.control.send(Control {
                watch,
                ended,
                first,
            });
        }
        metrics::counter!("fenced_watch_canceled_total").increment(1);
        self.remove_watcher(id);
    }

    /// Before stopping: tells each level watch that everything up to the
    /// last dispatched revision was sent, so its stream can name the right
    /// revision to resume from.
    fn farewell(&mut self) {
        for sink in self.streams.values() {
            for id in sink.watches.values() {
                if let Some(w) = self.watchers.get(id)
                    && !self.unsynced.contains(id)
                {
                    let _ = sink.queue.send(Outgoing::Progress {
                        watch: Some(w.watch),
                        revision: self.dispatched,
                    });
                }
            }
        }
    }

    /// Answers stream progress requests once every watch of the stream is
    /// level, and sends periodic progress to watches that asked for it and
    /// have taken everything queued for them (so a stalled reader does not
    /// pile up progress responses).
    fn send_progress(&mut self, head: i64) {
        let periodic = self.last_progress.elapsed() >= self.progress_interval;
        if periodic {
            self.last_progress = Instant::now();
        }
        for sink in self.streams.values_mut() {
            let all_synced = sink.watches.values().all(|id| !self.unsynced.contains(id));
            if sink.progress_wanted && all_synced {
                let _ = sink.queue.send(Outgoing::Progress {
                    watch: None,
                    revision: head,
                });
                sink.progress_wanted = false;
            }
            if periodic {
                for id in sink.watches.values() {
                    let Some(w) = self.watchers.get(id) else {
                        continue;
                    };
                    if w.spec.progress_notify && !self.unsynced.contains(id) && w.backlog.len() == 0
                    {
                        let _ = sink.queue.send(Outgoing::Progress {
                            watch: Some(w.watch),
                            revision: head,
                        });
                    }
                }
            }
        }
    }
}

/// The revisions one round works on, copied out of the history: one or two
/// runs of consecutive revisions.
struct Window {
    head: i64,
    oldest: i64,
    epoch: u64,
    /// (revision of the first, revisions).
    ranges: Vec<(i64, Vec<Revision>)>,
}

impl Window {
    fn get(&self, revision: i64) -> Option<&Revision> {
        self.ranges.iter().find_map(|(first, revisions)| {
            let offset = usize::try_from(revision.checked_sub(*first)?).ok()?;
            revisions.get(offset)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Event, EventKind, KeyValue};

    fn revision(n: i64) -> Revision {
        vec![Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: b"k".to_vec(),
                create_revision: n,
                mod_revision: n,
                version: 1,
                value: Vec::new(),
                lease: 0,
            },
            prev_kv: None,
        }]
        .into()
    }

    /// A watch whose backlog was full for revision R must not be sent R+1
    /// in the same round even if its reader took something in between:
    /// that would leave a hole at R.
    #[test]
    fn a_watch_found_too_slow_gets_nothing_more_in_the_round() {
        let history = Arc::new(RwLock::new(History::new(10, usize::MAX)));
        let mut fanout = Fanout::new(history, Duration::from_secs(60));
        let (queue, mut queued) = mpsc::unbounded_channel();
        let (control, _control) = mpsc::unbounded_channel();
        let stream_backlog = Backlog::default();
        fanout.handle(HubMsg::Open {
            stream: 1,
            queue,
            control,
            backlog: stream_backlog.clone(),
        });
        let watch_backlog = Backlog::default();
        let watch = WatchTag {
            id: 1,
            generation: 1,
        };
        let spec = WatchSpec {
            key: b"k".to_vec(),
            prefix: false,
            no_put: false,
            no_delete: false,
            progress_notify: false,
        };
        fanout.handle(HubMsg::Create {
            stream: 1,
            watch,
            spec,
            start_revision: 0,
            backlog: watch_backlog.clone(),
        });
        for _ in 0..WATCH_BACKLOG {
            watch_backlog.add();
        }
        let mut too_slow = HashSet::new();
        fanout.dispatch(1, &revision(1), &mut too_slow);
        assert_eq!(too_slow.len(), 1, "the full backlog is noticed");
        // The reader takes one response; the next revision must still not
        // be queued for this watch.
        watch_backlog.take();
        fanout.dispatch(2, &revision(2), &mut too_slow);
        while let Ok(out) = queued.try_recv() {
            assert!(
                !matches!(out, Outgoing::Events { .. }),
                "nothing queued after the hole: {out:?}"
            );
        }
    }
}

//! The fan-out thread: owns every watcher, moves revisions from the history
//! into the streams' bounded queues with `try_send`, and ends a watcher whose
//! queue is full instead of waiting for it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{
    Backlog, Control, Ended, History, Outgoing, Revision, STREAM_BACKLOG, WATCH_BACKLOG, WatchSpec,
};

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
        watch_id: i64,
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
    /// The member is stopping: drop every stream (their tasks then tell
    /// each watch where to resume) and end the thread.
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
    watch_id: i64,
    spec: WatchSpec,
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
    /// Watchers being caught up from the history.
    unsynced: HashSet<u64>,
    /// The last revision sent to the synced group.
    dispatched: i64,
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
            last_progress: Instant::now(),
        }
    }

    pub(super) fn run(mut self, inbox: std_mpsc::Receiver<HubMsg>) {
        loop {
            // Unsynced watchers whose queue was full are retried soon.
            let wait = if self.unsynced.is_empty() && !self.any_progress_wanted() {
                self.progress_interval.min(Duration::from_secs(1))
            } else {
                Duration::from_millis(5)
            };
            match inbox.recv_timeout(wait) {
                Ok(HubMsg::Shutdown) => return,
                Ok(msg) => self.handle(msg),
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            }
            while let Ok(msg) = inbox.try_recv() {
                if matches!(msg, HubMsg::Shutdown) {
                    return;
                }
                self.handle(msg);
            }
            self.round();
        }
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
                watch_id,
                spec,
                start_revision,
                backlog,
            } => self.create(stream, watch_id, spec, start_revision, backlog),
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
        watch_id: i64,
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
        if start_revision > 0 && start_revision < oldest {
            let _ = sink.control.send(Control {
                watch_id,
                ended: Ended::Compacted { oldest },
            });
            return;
        }
        let created = Outgoing::Created {
            watch_id,
            revision: head,
        };
        if sink.queue.send(created).is_err() {
            return;
        }
        let id = self.next_watcher;
        self.next_watcher += 1;
        sink.watches.insert(watch_id, id);
        // Level with what was dispatched (not with the head: revisions
        // between the two reach the synced group in this round) unless the
        // watch starts elsewhere.
        let next = if start_revision == 0 {
            self.dispatched.max(head) + 1
        } else {
            start_revision
        };
        let watcher = Watcher {
            stream,
            watch_id,
            spec,
            next,
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
        let mut too_slow = Vec::new();
        while self.dispatched < head {
            let revision = self.dispatched + 1;
            if let Some(events) = window.get(revision) {
                self.dispatch(revision, &events.clone(), &mut too_slow);
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
    /// held only for the copy.
    fn snapshot(&self) -> Window {
        let history = self.read_history();
        let head = history.head();
        let oldest = history.oldest();
        let from = self
            .unsynced
            .iter()
            .filter_map(|id| self.watchers.get(id).map(|w| w.next))
            .chain([self.dispatched + 1])
            .min()
            .unwrap_or(head + 1)
            .max(oldest);
        let revisions = (from..=head)
            .filter_map(|revision| history.get(revision).cloned())
            .collect();
        Window {
            first: from,
            head,
            oldest,
            revisions,
        }
    }

    /// Sends one revision to every synced watcher it concerns.
    fn dispatch(&mut self, revision: i64, events: &Revision, too_slow: &mut Vec<u64>) {
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
                too_slow.push(id);
                continue;
            }
            let pick = (pick.len() != events.len()).then_some(pick);
            let out = Outgoing::Events {
                watch_id: w.watch_id,
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

    /// Sends unsynced watchers what they missed, as far as their queues take
    /// it; a watcher that is level joins the synced group.
    fn catch_up(&mut self, history: &Window) {
        let head = self.dispatched;
        let oldest = history.oldest;
        let ids: Vec<u64> = self.unsynced.iter().copied().collect();
        for id in ids {
            let Some(w) = self.watchers.get_mut(&id) else {
                self.unsynced.remove(&id);
                continue;
            };
            if w.next < oldest {
                // Evicted while it waited for room in its queue.
                self.end(id, Ended::Compacted { oldest });
                continue;
            }
            let Some(sink) = self.streams.get(&w.stream) else {
                continue;
            };
            while w.next <= head {
                let Some(events) = history.get(w.next) else {
                    break;
                };
                let pick: Vec<u32> = (0..events.len() as u32)
                    .filter(|i| w.spec.matches(&events[*i as usize]))
                    .collect();
                if !pick.is_empty() {
                    if w.backlog.len() >= WATCH_BACKLOG || sink.backlog.len() >= STREAM_BACKLOG {
                        // The reader may simply be slower than the catch-up;
                        // go on next round.
                        break;
                    }
                    let pick = (pick.len() != events.len()).then_some(pick);
                    let out = Outgoing::Events {
                        watch_id: w.watch_id,
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
        let (stream, watch_id) = (w.stream, w.watch_id);
        if let Some(sink) = self.streams.get_mut(&stream) {
            sink.watches.remove(&watch_id);
            let _ = sink.control.send(Control { watch_id, ended });
        }
        metrics::counter!("fenced_watch_canceled_total").increment(1);
        self.remove_watcher(id);
    }

    /// Answers stream progress requests once every watch of the stream is
    /// level, and sends periodic progress to watches that asked for it.
    fn send_progress(&mut self, head: i64) {
        let periodic = self.last_progress.elapsed() >= self.progress_interval;
        if periodic {
            self.last_progress = Instant::now();
        }
        for sink in self.streams.values_mut() {
            let all_synced = sink.watches.values().all(|id| !self.unsynced.contains(id));
            if sink.progress_wanted && all_synced {
                let out = Outgoing::Progress {
                    watch_id: -1,
                    revision: head,
                };
                let _ = sink.queue.send(out);
                sink.progress_wanted = false;
            }
            if periodic {
                for (watch_id, id) in &sink.watches {
                    let wants = self
                        .watchers
                        .get(id)
                        .is_some_and(|w| w.spec.progress_notify);
                    if wants && !self.unsynced.contains(id) {
                        let _ = sink.queue.send(Outgoing::Progress {
                            watch_id: *watch_id,
                            revision: head,
                        });
                    }
                }
            }
        }
    }
}

/// The revisions one round works on, copied out of the history.
struct Window {
    /// Revision of `revisions[0]`.
    first: i64,
    head: i64,
    oldest: i64,
    revisions: Vec<Revision>,
}

impl Window {
    fn get(&self, revision: i64) -> Option<&Revision> {
        let offset = usize::try_from(revision.checked_sub(self.first)?).ok()?;
        self.revisions.get(offset)
    }
}

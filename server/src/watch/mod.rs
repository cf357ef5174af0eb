//! The watch hub: the history window of applied events and their fan-out to
//! watchers.
//!
//! The apply loop appends each applied command's events to the [`History`]
//! (one entry per revision) and nudges the hub; that is all it does for
//! watchers. A dedicated fan-out thread owns every watcher and moves events
//! from the history into per-stream bounded queues with `try_send`. A
//! watcher whose queue is full is canceled on the spot, with the revision to
//! resume from, so **the apply loop and the other watchers never wait for a
//! slow reader** (invariant 7).
//!
//! Watchers come in two groups, as in etcd: *synced* watchers are level with
//! the head of the history and receive each new revision as it is dispatched,
//! found through an index by key and by prefix; *unsynced* watchers started
//! in the past (or in the future) and are caught up from the history, a queue
//! at a time, until they are level and join the synced group. A start below
//! the history window is answered with the oldest revision still held.
//!
//! The history survives a restart because a restarting member re-applies its
//! log (until snapshots exist, the whole log); whatever replaces that must
//! keep the last `--watch-history` revisions watchable.

mod fanout;
mod history;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::state::{Event, EventKind};
use fanout::{Fanout, HubMsg};
pub use history::History;

/// Event responses queued for one watch and not yet taken by its stream
/// before the watch counts as too slow and is canceled.
pub const WATCH_BACKLOG: usize = 1024;
/// The same, for all the watches of one stream together.
pub const STREAM_BACKLOG: usize = 64 * 1024;

/// A count of event responses the hub queued and the stream has not taken
/// yet. The hub adds, the stream task takes; neither ever waits.
#[derive(Clone, Debug, Default)]
pub struct Backlog(Arc<AtomicUsize>);

impl Backlog {
    fn len(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    fn add(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn take(&self) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}

/// What one watch selects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchSpec {
    /// The key, or the prefix.
    pub key: Vec<u8>,
    /// Match every key starting with `key`.
    pub prefix: bool,
    /// Leave out puts.
    pub no_put: bool,
    /// Leave out deletes.
    pub no_delete: bool,
    /// Send a progress response every progress interval.
    pub progress_notify: bool,
}

impl WatchSpec {
    pub(crate) fn matches(&self, event: &Event) -> bool {
        let key_matches = if self.prefix {
            event.kv.key.starts_with(&self.key)
        } else {
            event.kv.key == self.key
        };
        key_matches
            && match event.kind {
                EventKind::Put => !self.no_put,
                EventKind::Delete => !self.no_delete,
            }
    }
}

/// The events of one revision.
pub type Revision = Arc<[Event]>;

/// Names one watch of a stream: the stream's id for it, and which creation
/// under that id (ids can be reused after a cancel; what the hub queued for
/// an earlier watch with the same id must not reach the new one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WatchTag {
    /// The stream's id for the watch.
    pub id: i64,
    /// Counts creations on the stream.
    pub generation: u64,
}

/// What the hub sends a stream, in order.
#[derive(Clone, Debug)]
pub enum Outgoing {
    /// The watch is registered; events after `revision` (or from its start
    /// revision) follow.
    Created {
        /// The watch.
        watch: WatchTag,
        /// The head of the history when the watch was registered.
        revision: i64,
    },
    /// The events of one revision that the watch selects (`pick`: indexes
    /// into `events`; all of them when `None`).
    Events {
        /// The watch.
        watch: WatchTag,
        /// Their revision.
        revision: i64,
        /// Every event of the revision.
        events: Revision,
        /// Which of them the watch selects.
        pick: Option<Vec<u32>>,
    },
    /// Nothing up to `revision` is left to send to the watch, or to every
    /// watch of the stream when `watch` is `None`.
    Progress {
        /// The watch, or `None` for the whole stream.
        watch: Option<WatchTag>,
        /// Everything up to here was sent.
        revision: i64,
    },
}

/// Why the hub ended a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The watch's queue was full: it was canceled; resume where the stream
    /// stopped delivering.
    TooSlow,
    /// The start revision is older than the history window.
    Compacted {
        /// The oldest revision that can still be watched from.
        oldest: i64,
    },
    /// The member replaced its state with a snapshot and skipped revisions:
    /// resume on another member.
    Reset,
}

/// A watch the hub ended, sent on the stream's control channel, which
/// overtakes the queue.
#[derive(Clone, Debug)]
pub struct Control {
    /// The watch.
    pub watch: WatchTag,
    /// Why.
    pub ended: Ended,
    /// The first revision the watch was to deliver (where to resume when it
    /// ends before anything was delivered).
    pub first: i64,
}
/// The hub's handle: the apply loop appends through it, the API opens
/// streams on it. Cheap to clone.
#[derive(Clone, Debug)]
pub struct WatchHub {
    history: Arc<RwLock<History>>,
    inbox: std_mpsc::Sender<HubMsg>,
    next_stream: Arc<AtomicU64>,
    /// How many streams are open, so a stopping member can wait for them
    /// to be told to resume elsewhere.
    open_streams: Arc<tokio::sync::watch::Sender<usize>>,
}

impl WatchHub {
    /// Starts the fan-out thread with a history of `capacity` revisions (at
    /// most `max_bytes` of events) and progress notifications every
    /// `progress_interval`.
    pub fn start(
        capacity: usize,
        max_bytes: usize,
        progress_interval: Duration,
    ) -> std::io::Result<Self> {
        let history = Arc::new(RwLock::new(History::new(capacity, max_bytes)));
        let (tx, rx) = std_mpsc::channel();
        let fanout = Fanout::new(history.clone(), progress_interval);
        std::thread::Builder::new()
            .name("watch-fanout".into())
            .spawn(move || fanout.run(rx))?;
        Ok(Self {
            history,
            inbox: tx,
            next_stream: Arc::new(AtomicU64::new(1)),
            open_streams: Arc::new(tokio::sync::watch::Sender::new(0)),
        })
    }

    /// Appends the events of one applied revision. Called by the apply loop
    /// only, in revision order.
    pub fn append(&self, revision: i64, events: Vec<Event>) {
        self.history
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .append(revision, events);
    }

    /// Makes `revision` the head of an empty history: the state was replaced
    /// by a snapshot's. Every watch open on this member ends (resume
    /// elsewhere). Called by the apply loop only.
    pub fn reset(&self, revision: i64) {
        self.history
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .reset(revision);
        self.send(HubMsg::Applied);
    }

    /// Tells the fan-out thread that revisions were appended, when some
    /// stream is open: with none, no watcher waits for them, and a watch
    /// created later starts from the history (its stream's `Open` is sent
    /// after the count went up, so it reaches the thread after this
    /// append).
    pub fn applied(&self) {
        if *self.open_streams.borrow() > 0 {
            self.send(HubMsg::Applied);
        }
    }

    /// Stops the fan-out thread: every open stream is told that the member
    /// is shutting down (with where to resume) and ends. Returns once every
    /// stream ended, or after `patience`.
    pub async fn shutdown(&self, patience: Duration) {
        self.send(HubMsg::Shutdown);
        let mut open = self.open_streams.subscribe();
        let _ = tokio::time::timeout(patience, open.wait_for(|n| *n == 0)).await;
    }

    /// The oldest revision a watch can start from, and the newest applied.
    pub fn window(&self) -> (i64, i64) {
        let history = self
            .history
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        (history.oldest(), history.head())
    }

    /// Opens a stream of watches.
    pub fn open(&self) -> HubStream {
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        self.open_streams.send_modify(|n| *n += 1);
        let (queue_tx, queue) = mpsc::unbounded_channel();
        let (control_tx, control) = mpsc::unbounded_channel();
        let backlog = Backlog::default();
        self.send(HubMsg::Open {
            stream: id,
            queue: queue_tx,
            control: control_tx,
            backlog: backlog.clone(),
        });
        HubStream {
            hub: self.clone(),
            id,
            queue,
            control,
            backlog,
            generations: AtomicU64::new(1),
        }
    }

    fn send(&self, msg: HubMsg) {
        let _ = self.inbox.send(msg);
    }
}

/// One stream of watches: what the hub sends it, and the requests it makes.
/// Dropping it cancels its watches.
#[derive(Debug)]
pub struct HubStream {
    hub: WatchHub,
    id: u64,
    /// Created, events and progress, in order. Closed when the hub stops.
    /// Unbounded, but the hub stops adding events for a watch (and cancels
    /// it) once [`WATCH_BACKLOG`] of them, or [`STREAM_BACKLOG`] for the
    /// stream, are not taken: call [`HubStream::taken`] for each.
    pub queue: mpsc::UnboundedReceiver<Outgoing>,
    /// Watches the hub ended; may overtake `queue`.
    pub control: mpsc::UnboundedReceiver<Control>,
    backlog: Backlog,
    /// Numbers the creations on this stream.
    generations: AtomicU64,
}

impl HubStream {
    /// Registers a watch. `start_revision` 0 means after the current head.
    /// Returns its tag, and its backlog to hand to [`HubStream::taken`].
    pub fn create(
        &self,
        watch_id: i64,
        spec: WatchSpec,
        start_revision: i64,
    ) -> (WatchTag, Backlog) {
        let watch = WatchTag {
            id: watch_id,
            generation: self.generations.fetch_add(1, Ordering::Relaxed),
        };
        let backlog = Backlog::default();
        self.hub.send(HubMsg::Create {
            stream: self.id,
            watch,
            spec,
            start_revision,
            backlog: backlog.clone(),
        });
        (watch, backlog)
    }

    /// Records that an [`Outgoing::Events`] of the watch with `backlog` (or
    /// of a watch no longer known, `None`) was taken off the queue.
    pub fn taken(&self, backlog: Option<&Backlog>) {
        self.backlog.take();
        if let Some(backlog) = backlog {
            backlog.take();
        }
    }

    /// Ends a watch.
    pub fn cancel(&self, watch_id: i64) {
        self.hub.send(HubMsg::Cancel {
            stream: self.id,
            watch_id,
        });
    }

    /// Asks for one progress response for the whole stream.
    pub fn progress(&self) {
        self.hub.send(HubMsg::Progress { stream: self.id });
    }
}

impl Drop for HubStream {
    fn drop(&mut self) {
        self.hub.send(HubMsg::Close { stream: self.id });
        self.hub
            .open_streams
            .send_modify(|n| *n = n.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests;

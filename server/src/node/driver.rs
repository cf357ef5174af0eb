//! The driver: a closed event loop, one tokio task, that owns raft-rs's
//! `RawNode` and the fjall storage.
//!
//! It runs on the member's runtime next to the client and peer traffic:
//! a request, a raft message or an acknowledgement reaches it, and its
//! answers leave, without a hand-off to another thread (each cost a
//! wake-up, about 50 µs on the 2-vCPU machine of docs/benchmarks.md). With
//! `--worker-threads 1` (the default) that runtime is a single thread and
//! the driver blocks it while it fsyncs, after yielding once so that the
//! messages a leader sends ahead of its fsync are on the wire first; the
//! requests that arrive meanwhile wait in their sockets and go into the
//! next batch. With more worker threads the fsync goes through
//! `block_in_place`, and the other threads serve on.
//!
//! Each iteration takes every message that is waiting (proposals, peer
//! messages, reads), ticks when due, starts one batched ReadIndex round, and
//! handles at most one Ready in the order that keeps invariants 2 and 3:
//!
//! 1. send `messages()` (a leader replicates before its own fsync),
//! 2. a leader applies the committed entries (all already persisted here),
//! 3. persist entries + HardState in **one** batch, fsynced when it appends
//!    entries or changes the term or vote (`storage::must_sync`),
//! 4. send `persisted_messages()`,
//! 5. a follower applies the committed entries, then `advance`.
//!
//! Applying happens in the driver too ([`Applier`]): a hand-off to another
//! thread cost a wake-up per commit.
//!
//! Proposals that arrive while a batch is being persisted wait in the inbox
//! and go into the next Ready: that is the group commit.
//!
//! A snapshot from the leader is installed into storage (one atomic batch)
//! before the Ready's entries are persisted, and restored into the state
//! ahead of any later entry. Local snapshots are written by the snapshot
//! thread; the driver only records them and compacts the log.
//!
//! Membership changes and leadership transfers are proposed from here too
//! ([`crate::node::conf`]).
//!
//! **Architecture Invariant:** a storage error stops the member (fail-stop).

use std::sync::Arc;
use std::time::{Duration, Instant};

use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType, MessageType};
use raft::{RawNode, SnapshotStatus, StateRole, Storage as _};

use crate::node::apply::Applier;
use crate::node::conf::ParkedChange;
use crate::node::proposals::Envelope;
use crate::node::read_index::{ReadGate, ReadIndexBatcher};
use crate::node::storage::{FjallStorage, StorageError};
use crate::node::transport::Transport;
use crate::node::{DriverMsg, NodeError, Role, Shared};
use crate::state::{Command, MemberChange};

/// Why the driver stopped without a storage failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// Asked to (SIGTERM, or the server is stopping).
    Shutdown,
    /// This member was removed from the cluster.
    Removed(String),
}

/// Most messages taken from the inbox before the loop looks at ticks and
/// Ready again; keeps ticks on time under a flood of proposals.
const MAX_MSGS_PER_ITERATION: usize = 8192;

/// How long a leader may wait before telling followers that entries
/// proposed on it committed. Every append carries the commit index, so a
/// leader that receives another proposal within this time tells them for
/// free; only a quiet leader sends the notice on its own.
const COMMIT_NOTICE_DELAY: Duration = Duration::from_millis(1);

/// The event loop's state. Built by [`crate::node::start`].
pub struct Driver {
    /// raft-rs's node; only this thread touches it.
    pub(crate) raw: RawNode<FjallStorage>,
    /// Everything the rest of the member asks of raft.
    pub(crate) inbox: tokio::sync::mpsc::UnboundedReceiver<DriverMsg>,
    /// Outgoing raft messages.
    pub(crate) transport: Transport,
    /// Applies committed entries and snapshots from the leader.
    pub(crate) applier: Applier,
    /// Status, proposals and applied state shared with the API layer.
    pub(crate) shared: Arc<Shared>,
    /// Batched ReadIndex rounds.
    pub(crate) reads: ReadIndexBatcher,
    /// Raft tick interval.
    pub(crate) tick: Duration,
    /// Log entries kept before the latest snapshot when compacting.
    pub(crate) snapshot_tail: u64,
    /// Set once this member learns it was removed.
    pub(crate) removed: Option<String>,
    /// Followers' commit index as last sent to them (in an append or a
    /// heartbeat), by member id.
    pub(crate) told: std::collections::BTreeMap<u64, u64>,
    /// When followers behind on the commit index are to be told.
    pub(crate) commit_notice: Option<Instant>,
    /// An entry proposed on another member committed: tell followers now,
    /// the proposer answers its client only once it applied the entry.
    pub(crate) notice_now: bool,
    /// Messages were queued to the peer tasks since the driver last
    /// yielded to them.
    pub(crate) unflushed: bool,
    /// A membership change waiting for this new leader to apply the
    /// entries of earlier terms ([`crate::node::conf`]).
    pub(crate) parked_change: Option<ParkedChange>,
    /// The runtime has other worker threads: blocking storage calls are
    /// made with `block_in_place`, so they serve on while this one waits.
    /// On a current-thread runtime the whole member waits (see the module
    /// docs).
    pub(crate) multi_thread: bool,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("id", &self.shared.id)
            .finish_non_exhaustive()
    }
}

impl Driver {
    /// Runs until shutdown. Returns an error only for a storage failure, after
    /// which the member must stop.
    pub async fn run(mut self) -> Result<Stopped, StorageError> {
        let read_timeout = self.shared.status.election_timeout();
        let mut next_tick = Instant::now() + self.tick;
        self.publish_status();
        // One timer for the whole loop, moved only when the wake-up time
        // changes. A new timer per iteration (the inbox wins nearly every
        // time) costs a syscall: tokio wakes its own driver through an
        // eventfd whenever a timer is registered, even from the runtime's
        // thread.
        let timer = tokio::time::sleep_until(tokio::time::Instant::from_std(next_tick));
        tokio::pin!(timer);
        'run: loop {
            let wake = tokio::time::Instant::from_std(
                self.commit_notice.map_or(next_tick, |at| at.min(next_tick)),
            );
            if timer.deadline() != wake {
                timer.as_mut().reset(wake);
            }
            let received = tokio::select! {
                msg = self.inbox.recv() => Some(msg),
                () = &mut timer => None,
            };
            match received {
                Some(Some(msg)) => {
                    if !self.handle(msg) {
                        break 'run;
                    }
                    for _ in 0..MAX_MSGS_PER_ITERATION {
                        match self.inbox.try_recv() {
                            Ok(msg) => {
                                if !self.handle(msg) {
                                    break 'run;
                                }
                            }
                            Err(_) => break,
                        }
                    }
                }
                Some(None) => break 'run,
                None => {}
            }
            let now = Instant::now();
            if now >= next_tick {
                self.raw.tick();
                next_tick += self.tick;
                if next_tick <= now {
                    next_tick = now + self.tick;
                }
                self.reads.expire(now, read_timeout);
                self.leave_stalled_joint();
            }
            let raft = &self.raw.raft;
            let gate = if raft.leader_id == raft::INVALID_ID {
                ReadGate::NoLeader
            } else if raft.state == StateRole::Leader && !raft.commit_to_current_term() {
                ReadGate::NotYet
            } else {
                ReadGate::Open
            };
            let raw = &mut self.raw;
            self.reads.flush(gate, now, |ctx| raw.read_index(ctx));
            if self.raw.has_ready() {
                self.on_ready().await?;
            }
            if self.retry_parked_change(Instant::now()) && self.raw.has_ready() {
                self.on_ready().await?;
            }
            if self.notice_commit(Instant::now()) && self.raw.has_ready() {
                self.on_ready().await?;
            }
            if self.raw.store().take_snapshot_request() {
                self.applier.snapshot_now();
            }
            if self.removed.is_some() {
                break 'run;
            }
        }
        tracing::info!("driver stopped");
        self.shared
            .proposals
            .fail_all(NodeError::Unavailable("member is shutting down".into()));
        Ok(match self.removed.take() {
            Some(why) => Stopped::Removed(why),
            None => Stopped::Shutdown,
        })
    }

    /// Handles one inbox message; false means stop.
    fn handle(&mut self, msg: DriverMsg) -> bool {
        match msg {
            DriverMsg::Propose { data, seq } => {
                let is_leader = self.raw.raft.state == StateRole::Leader;
                if let Err(err) = self.raw.propose(vec![], data) {
                    let why = match self.raw.raft.leader_id {
                        raft::INVALID_ID => "no leader is known".to_string(),
                        leader => format!("leader {leader} is not accepting proposals ({err})"),
                    };
                    self.shared.proposals.complete(
                        seq,
                        Err(NodeError::Unavailable(format!(
                            "proposal dropped: {why}; retry"
                        ))),
                    );
                } else if is_leader {
                    let index = self.raw.raft.raft_log.last_index();
                    self.shared.proposals.expect_at(index, seq);
                } else {
                    let leader = self.raw.raft.leader_id;
                    self.shared.proposals.forwarded_to(seq, leader);
                }
            }
            DriverMsg::Step(msg) => {
                if let Err(err) = self.raw.step(*msg) {
                    tracing::debug!(cause = %err, "dropped a raft message");
                }
            }
            DriverMsg::ReadIndex(reply) => self.reads.push(reply),
            DriverMsg::Unreachable(peer) => self.raw.report_unreachable(peer),
            DriverMsg::ConfChange {
                change,
                context,
                seq,
            } => self.conf_change(change, context, seq),
            DriverMsg::TransferLeader { target, reply } => {
                let _ = reply.send(self.transfer_leader(target));
            }
            DriverMsg::SnapshotWritten(meta) => {
                if let Err(err) = self.record_snapshot(&meta) {
                    tracing::warn!(index = meta.index, cause = %err, "local snapshot not recorded");
                }
            }
            DriverMsg::SnapshotSent { to, ok } => {
                let status = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
            DriverMsg::Removed(why) => {
                tracing::warn!(%why, "this member was removed from the cluster");
                self.removed = Some(why);
                return false;
            }
            DriverMsg::Shutdown => return false,
        }
        true
    }

    /// Records a snapshot the snapshot thread wrote, and compacts the log up
    /// to `snapshot_tail` entries before it.
    fn record_snapshot(
        &mut self,
        meta: &raft::eraftpb::SnapshotMetadata,
    ) -> Result<(), StorageError> {
        let store = self.raw.mut_store();
        store.record_snapshot(meta)?;
        self.shared.status.set_snapshot_index(meta.index);
        let keep_from = meta.index.saturating_sub(self.snapshot_tail) + 1;
        let started = Instant::now();
        let first_before = store.first_index().unwrap_or(0);
        store.compact(keep_from)?;
        let removed = store
            .first_index()
            .unwrap_or(0)
            .saturating_sub(first_before);
        tracing::info!(
            index = meta.index,
            first_index = store.first_index().unwrap_or(0),
            removed,
            compact_ms = started.elapsed().as_millis() as u64,
            "snapshot recorded, log compacted"
        );
        Ok(())
    }

    async fn on_ready(&mut self) -> Result<(), StorageError> {
        let mut ready = self.raw.ready();
        if ready.ss().is_some() {
            // Before any message of this Ready leaves: a peer that hears
            // from this member as leader, and tells a client so, must not
            // find this member's status a step behind.
            self.publish_status();
        }
        if !ready.messages().is_empty() {
            let msgs = ready.take_messages();
            self.send(msgs);
            // On the wire before a leader applies and fsyncs.
            self.flush().await;
        }
        if !ready.snapshot().is_empty() {
            let snapshot = ready.snapshot().clone();
            let index = snapshot.get_metadata().index;
            let started = Instant::now();
            let store = self.raw.mut_store();
            blocking(self.multi_thread, || store.apply_snapshot(snapshot.clone()))?;
            tracing::info!(
                index,
                bytes = snapshot.get_data().len(),
                install_ms = started.elapsed().as_millis() as u64,
                "installed a snapshot from the leader into storage"
            );
            self.shared.status.set_snapshot_index(index);
            self.applier
                .restore(index, snapshot.get_metadata().term, snapshot.get_data());
        }
        // raft-rs hands out only committed entries that are already
        // persisted here, so they may be applied before this Ready's new
        // entries are. A leader does so: its clients are answered an fsync
        // sooner. A follower first persists and acknowledges (the leader's
        // commit waits on that), then applies.
        let mut committed = ready.take_committed_entries();
        if self.raw.raft.state == StateRole::Leader {
            self.apply(std::mem::take(&mut committed))?;
        }
        let hard_state = ready.hs().cloned();
        if !ready.entries().is_empty() || hard_state.is_some() {
            // Nothing sent may wait behind the fsync (a LightReady's
            // messages from the previous round, say).
            self.flush().await;
            let started = Instant::now();
            let store = self.raw.mut_store();
            let entries = ready.entries();
            blocking(self.multi_thread, || {
                store.persist(entries, hard_state.as_ref())
            })?;
            metrics::histogram!("fenced_raft_persist_seconds").record(started.elapsed());
            metrics::histogram!("fenced_raft_entries_per_persist")
                .record(ready.entries().len() as f64);
        }
        if let Some(soft) = ready.ss() {
            tracing::info!(
                leader = soft.leader_id,
                role = ?soft.raft_state,
                term = self.raw.raft.term,
                "raft role changed"
            );
            metrics::counter!("fenced_raft_role_changes_total").increment(1);
            let orphaned = self.shared.proposals.on_leader_change(soft.leader_id);
            if orphaned > 0 {
                tracing::info!(
                    orphaned,
                    "forwarded proposals answered with an unknown outcome: their leader lost leadership"
                );
            }
        }
        let persisted = ready.take_persisted_messages();
        if !persisted.is_empty() {
            self.send(persisted);
            // Acknowledgements go out before this member applies.
            self.flush().await;
        }
        for read in ready.take_read_states() {
            self.reads.on_read_state(&read.request_ctx, read.index);
        }
        self.apply(committed)?;

        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit)?;
        }
        let msgs = light.take_messages();
        self.send(msgs);
        let committed = light.take_committed_entries();
        self.apply(committed)?;
        self.raw.advance_apply();
        self.publish_status();
        Ok(())
    }

    /// Tells followers the commit index when they are behind on it: at once
    /// when an entry another member proposed committed, otherwise once
    /// [`COMMIT_NOTICE_DELAY`] passed without an append that told them
    /// (raft-rs's own broadcast on every commit is off: it cost a message
    /// round per write even when the next append follows right behind).
    /// Returns whether it queued messages.
    fn notice_commit(&mut self, now: Instant) -> bool {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader {
            self.commit_notice = None;
            self.notice_now = false;
            return false;
        }
        let committed = raft.raft_log.committed;
        let me = self.shared.id;
        let told = &self.told;
        let is_behind = |id: u64| id != me && told.get(&id).copied().unwrap_or(0) < committed;
        // Checked on every loop iteration: no allocation unless a notice goes.
        if !raft.prs().iter().any(|(id, _)| is_behind(*id)) {
            self.commit_notice = None;
            self.notice_now = false;
            return false;
        }
        let due = *self.commit_notice.get_or_insert(now + COMMIT_NOTICE_DELAY);
        if !self.notice_now && now < due {
            return false;
        }
        let behind: Vec<u64> = raft
            .prs()
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| is_behind(*id))
            .collect();
        metrics::counter!("fenced_raft_commit_notices_total").increment(1);
        for id in behind {
            self.raw.raft.send_append(id);
            // A peer that could not be sent to (paused, probing) hears it
            // with the next heartbeat; do not try again every delay.
            self.told.insert(id, committed);
        }
        self.commit_notice = None;
        self.notice_now = false;
        true
    }

    /// Applies configuration changes to raft, then every entry to the state
    /// machine, in order.
    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), StorageError> {
        if entries.is_empty() {
            return Ok(());
        }
        for entry in &entries {
            let conf_state = match entry.get_entry_type() {
                EntryType::EntryNormal => continue,
                EntryType::EntryConfChange => {
                    let mut cc = ConfChange::default();
                    if let Err(err) = protobuf::Message::merge_from_bytes(&mut cc, &entry.data) {
                        tracing::error!(index = entry.index, cause = %err, "undecodable conf change");
                        continue;
                    }
                    self.raw.apply_conf_change(&cc)
                }
                EntryType::EntryConfChangeV2 => {
                    let mut cc = ConfChangeV2::default();
                    if let Err(err) = protobuf::Message::merge_from_bytes(&mut cc, &entry.data) {
                        tracing::error!(index = entry.index, cause = %err, "undecodable conf change");
                        continue;
                    }
                    self.raw.apply_conf_change(&cc)
                }
            };
            match conf_state {
                Ok(cs) => self.raw.mut_store().set_conf_state(cs)?,
                Err(err) => {
                    tracing::error!(index = entry.index, cause = %err, "conf change refused")
                }
            }
            self.track_member_change(entry);
        }
        if self.applier.entries(&entries) {
            self.notice_now = true;
        }
        Ok(())
    }

    /// Keeps the transport in step with a committed membership change: a
    /// new member gets a connection, a removed one loses it, and this
    /// member stops once it is removed.
    fn track_member_change(&mut self, entry: &Entry) {
        let mut cc = ConfChangeV2::default();
        if entry.get_entry_type() != EntryType::EntryConfChangeV2
            || protobuf::Message::merge_from_bytes(&mut cc, &entry.data).is_err()
            || cc.context.is_empty()
        {
            return;
        }
        let Ok(envelope) = Envelope::decode(&cc.context) else {
            return;
        };
        match envelope.command {
            Command::MemberChange(MemberChange::Add { id, peer_addr, .. })
                if id != self.shared.id =>
            {
                self.transport.set_peer(id, peer_addr);
            }
            Command::MemberChange(MemberChange::Remove { id }) if id == self.shared.id => {
                self.removed = Some(format!(
                    "member {id} was removed from the cluster (raft index {})",
                    entry.index
                ));
            }
            Command::MemberChange(MemberChange::Remove { id }) => {
                self.transport.remove_peer(id);
                self.told.remove(&id);
            }
            _ => {}
        }
    }

    /// Lets the peer tasks (on this thread's runtime) write what was sent
    /// since the last flush, before the driver goes on with blocking work.
    async fn flush(&mut self) {
        if std::mem::take(&mut self.unflushed) {
            tokio::task::yield_now().await;
        }
    }

    fn send(&mut self, msgs: Vec<raft::eraftpb::Message>) {
        self.unflushed |= !msgs.is_empty();
        for msg in msgs {
            let to = msg.to;
            if matches!(
                msg.get_msg_type(),
                MessageType::MsgAppend | MessageType::MsgHeartbeat
            ) {
                let told = self.told.entry(to).or_default();
                *told = (*told).max(msg.commit);
            }
            if !self.transport.has_peer(to) {
                // A member this one learned about from a snapshot.
                if let Some(addr) = self.peer_addr(to) {
                    self.transport.set_peer(to, addr);
                }
            }
            let is_snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
            let queued = self.transport.send(msg);
            if !queued {
                self.raw.report_unreachable(to);
                if is_snapshot {
                    self.raw.report_snapshot(to, SnapshotStatus::Failure);
                }
            }
            // A queued snapshot is reported by the transport once sent.
        }
    }

    fn peer_addr(&self, id: u64) -> Option<String> {
        self.shared
            .peers
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&id)
            .cloned()
    }

    fn publish_status(&self) {
        let raft = &self.raw.raft;
        let role = match raft.state {
            StateRole::Follower => Role::Follower,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Candidate => Role::Candidate,
            StateRole::Leader => Role::Leader,
        };
        let first = self.raw.store().first_index().unwrap_or(0);
        self.shared.status.publish(
            raft.leader_id,
            raft.term,
            role,
            raft.raft_log.committed,
            first,
            raft.raft_log.last_index(),
        );
    }
}

/// Runs a blocking storage call: on a multi-thread runtime through
/// `block_in_place` (the worker's other tasks move to another thread), on
/// a current-thread runtime in place.
fn blocking<T>(multi_thread: bool, call: impl FnOnce() -> T) -> T {
    if multi_thread {
        tokio::task::block_in_place(call)
    } else {
        call()
    }
}

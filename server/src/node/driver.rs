//! The driver: a closed event loop on its own OS thread that owns raft-rs's
//! `RawNode` and the fjall storage.
//!
//! Each iteration takes every message that is waiting (proposals, peer
//! messages, reads), ticks when due, starts one batched ReadIndex round, and
//! handles at most one Ready in the order that keeps invariants 2 and 3:
//!
//! 1. send `messages()` (a leader replicates before its own fsync),
//! 2. persist entries + HardState in **one** fsynced batch,
//! 3. send `persisted_messages()`,
//! 4. hand committed entries to the apply loop, then `advance`.
//!
//! Proposals that arrive while a batch is being persisted wait in the inbox
//! and go into the next Ready: that is the group commit.
//!
//! **Architecture Invariant:** a storage error stops the member (fail-stop).

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType, MessageType};
use raft::{RawNode, SnapshotStatus, StateRole, Storage as _};

use crate::node::apply::ApplyTask;
use crate::node::read_index::ReadIndexBatcher;
use crate::node::storage::{FjallStorage, StorageError};
use crate::node::transport::Transport;
use crate::node::{DriverMsg, NodeError, Role, Shared};

/// Most messages taken from the inbox before the loop looks at ticks and
/// Ready again; keeps ticks on time under a flood of proposals.
const MAX_MSGS_PER_ITERATION: usize = 8192;

/// The event loop's state. Built by [`crate::node::start`].
pub struct Driver {
    /// raft-rs's node; only this thread touches it.
    pub(crate) raw: RawNode<FjallStorage>,
    /// Everything the rest of the member asks of raft.
    pub(crate) inbox: mpsc::Receiver<DriverMsg>,
    /// Outgoing raft messages.
    pub(crate) transport: Transport,
    /// Committed entries go here, to be applied off this thread.
    pub(crate) apply_tx: mpsc::Sender<ApplyTask>,
    /// Status, proposals and applied state shared with the API layer.
    pub(crate) shared: Arc<Shared>,
    /// Batched ReadIndex rounds.
    pub(crate) reads: ReadIndexBatcher,
    /// Raft tick interval.
    pub(crate) tick: Duration,
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
    pub fn run(mut self) -> Result<(), StorageError> {
        let read_timeout = self.shared.status.election_timeout();
        let mut next_tick = Instant::now() + self.tick;
        self.publish_status();
        'run: loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.inbox.recv_timeout(wait) {
                Ok(msg) => {
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
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break 'run,
            }
            let now = Instant::now();
            if now >= next_tick {
                self.raw.tick();
                next_tick += self.tick;
                if next_tick <= now {
                    next_tick = now + self.tick;
                }
                self.reads.expire(now, read_timeout);
            }
            let leader_known = self.raw.raft.leader_id != raft::INVALID_ID;
            let raw = &mut self.raw;
            self.reads
                .flush(leader_known, now, |ctx| raw.read_index(ctx));
            if self.raw.has_ready() {
                self.on_ready()?;
            }
        }
        tracing::info!("driver stopped");
        self.shared
            .proposals
            .fail_all(NodeError::Unavailable("member is shutting down".into()));
        Ok(())
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
                }
            }
            DriverMsg::Step(msg) => {
                if let Err(err) = self.raw.step(*msg) {
                    tracing::debug!(cause = %err, "dropped a raft message");
                }
            }
            DriverMsg::ReadIndex(reply) => self.reads.push(reply),
            DriverMsg::Unreachable(peer) => self.raw.report_unreachable(peer),
            DriverMsg::Shutdown => return false,
        }
        true
    }

    fn on_ready(&mut self) -> Result<(), StorageError> {
        let mut ready = self.raw.ready();
        if !ready.messages().is_empty() {
            let msgs = ready.take_messages();
            self.send(msgs);
        }
        if !ready.snapshot().is_empty() {
            // The log is never compacted yet, so no leader sends a snapshot.
            // Installing one into storage without restoring the state
            // machine would diverge silently; stopping is the safe answer.
            let index = ready.snapshot().get_metadata().index;
            return Err(StorageError::InvalidSnapshot(format!(
                "received a snapshot at index {index}, but snapshot install is not supported by \
                 this version"
            )));
        }
        let hard_state = ready.hs().cloned();
        if !ready.entries().is_empty() || hard_state.is_some() {
            let started = Instant::now();
            self.raw
                .mut_store()
                .persist(ready.entries(), hard_state.as_ref())?;
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
        }
        let persisted = ready.take_persisted_messages();
        self.send(persisted);
        for read in ready.take_read_states() {
            self.reads.on_read_state(&read.request_ctx, read.index);
        }
        let committed = ready.take_committed_entries();
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

    /// Applies configuration changes to raft here (they change who raft
    /// talks to), and hands every entry to the apply loop in order.
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
        }
        // The apply loop only stops when this sender is dropped.
        let _ = self.apply_tx.send(ApplyTask::Entries(entries));
        Ok(())
    }

    fn send(&mut self, msgs: Vec<raft::eraftpb::Message>) {
        for msg in msgs {
            let to = msg.to;
            let is_snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
            let delivered = self.transport.send(msg);
            if !delivered {
                self.raw.report_unreachable(to);
            }
            if is_snapshot {
                let status = if delivered {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
        }
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

//! The apply loop: applies committed entries to the state machine, in log
//! order, off the driver's thread, and wakes the requests waiting on them.
//! It also installs snapshots received from the leader, and starts local
//! snapshots every `--snapshot-interval` entries.

use std::sync::Arc;
use std::sync::mpsc;

use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType};

use crate::node::proposals::{Applied, Envelope};
use crate::node::snapshots::{SnapshotJob, Snapshotter};
use crate::node::{NodeError, Shared};
use crate::state::{Command, LockChange, snapshot};

/// Work for the apply loop.
#[derive(Debug)]
pub enum ApplyTask {
    /// Committed entries, in order, all locally persisted.
    Entries(Vec<Entry>),
    /// A snapshot from the leader was installed in storage: replace the state
    /// with its data, which is the state after entry `index`.
    Restore {
        /// Raft index of the snapshot.
        index: u64,
        /// Raft term of the snapshot.
        term: u64,
        /// The encoded state.
        data: Vec<u8>,
    },
    /// Take a snapshot now (a peer needs one newer than the stored one).
    SnapshotNow,
}

/// When to take local snapshots.
#[derive(Debug)]
pub struct SnapshotPolicy {
    /// Applied entries between snapshots.
    pub interval: u64,
    /// Index of the latest snapshot (the state the loop started from).
    pub last: u64,
    /// Index and term of the last applied entry.
    pub applied: (u64, u64),
    /// Writes them.
    pub snapshotter: Snapshotter,
}

/// Runs until the driver drops its sender.
pub fn run(shared: Arc<Shared>, tasks: mpsc::Receiver<ApplyTask>, mut policy: SnapshotPolicy) {
    let mut next = tasks.recv().ok();
    while let Some(task) = next.take() {
        match task {
            ApplyTask::Restore { index, term, data } => {
                restore(&shared, index, &data);
                policy.last = index;
                policy.applied = (index, term);
                next = tasks.recv().ok();
            }
            ApplyTask::SnapshotNow => {
                if policy.applied.0 > policy.last {
                    snapshot(&shared, &mut policy);
                }
                next = tasks.recv().ok();
            }
            ApplyTask::Entries(mut entries) => {
                // Take whatever else is queued too: one lock and one wake-up
                // per batch. A restore waits for the next round.
                loop {
                    match tasks.try_recv() {
                        Ok(ApplyTask::Entries(more)) => entries.extend(more),
                        Ok(restore) => {
                            next = Some(restore);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                apply_entries(&shared, &entries, &mut policy);
                if next.is_none() {
                    next = tasks.recv().ok();
                }
            }
        }
    }
}

fn apply_entries(shared: &Shared, entries: &[Entry], policy: &mut SnapshotPolicy) {
    let Some(last) = entries.last() else {
        return;
    };
    let (changes, members_changed) = apply_batch(shared, entries);
    if members_changed {
        shared.set_peers(read_state(shared).members());
    }
    shared.applied.send_replace(last.index);
    shared.watch.applied();
    for (index, change) in &changes {
        shared.lock_waits.notify(*index, change);
    }
    metrics::gauge!("fenced_applied_index").set(last.index as f64);
    policy.applied = (last.index, last.term);
    if last.index.saturating_sub(policy.last) >= policy.interval {
        snapshot(shared, policy);
    }
}

/// Hands a copy of the state as of the last applied entry to the snapshot
/// thread, unless it is busy.
fn snapshot(shared: &Shared, policy: &mut SnapshotPolicy) {
    if policy.snapshotter.is_busy() {
        return;
    }
    let started = std::time::Instant::now();
    // Constant time: the state's maps share their nodes with the copy.
    let state = read_state(shared).clone();
    metrics::histogram!("fenced_snapshot_pause_seconds").record(started.elapsed());
    let (index, term) = policy.applied;
    let job = SnapshotJob { index, term, state };
    if policy.snapshotter.submit(job) {
        policy.last = index;
    }
}

fn read_state(shared: &Shared) -> std::sync::RwLockReadGuard<'_, crate::state::StateMachine> {
    shared
        .state
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Applies `entries`; returns the lock changes, to be announced once the
/// state lock is released and the applied index published, and whether the
/// member table changed.
fn apply_batch(shared: &Shared, entries: &[Entry]) -> (Vec<(u64, LockChange)>, bool) {
    let mut changes = Vec::new();
    let mut members_changed = false;
    let mut state = shared
        .state
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for entry in entries {
        // Configuration changes carry their envelope in the entry's context
        // (raft applied them in the driver); empty normal entries are a new
        // leader's no-op, empty configuration changes leave a joint one.
        let data = match entry.get_entry_type() {
            EntryType::EntryNormal => entry.data.to_vec(),
            EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => conf_context(entry),
        };
        if data.is_empty() {
            shared.proposals.on_applied(entry.index, None);
            continue;
        }
        let envelope = match Envelope::decode(&data) {
            Ok(envelope) => envelope,
            Err(err) => {
                // Committed entries are written by members, never by clients:
                // an undecodable one means corruption or a version mismatch.
                // Applying around it would diverge from the other members.
                tracing::error!(index = entry.index, cause = %err, "undecodable committed entry; stopping");
                std::process::exit(70);
            }
        };
        shared.proposals.on_applied(entry.index, Some(&envelope));
        members_changed |= matches!(
            envelope.command,
            Command::MemberChange(_) | Command::MemberPublish { .. }
        );
        let output = state.execute_entry(&envelope.command, entry.term);
        if !output.events.is_empty() {
            shared.watch.append(state.revision(), output.events);
        }
        changes.extend(output.locks.into_iter().map(|c| (entry.index, c)));
        let response = output.response;
        metrics::counter!("fenced_applied_commands_total").increment(1);
        if shared.proposals.is_mine(&envelope) {
            let applied = Applied {
                response,
                index: entry.index,
                revision: state.revision(),
            };
            shared.proposals.complete(envelope.seq, Ok(applied));
        }
    }
    if let Some(last) = entries.last() {
        shared
            .state_index
            .store(last.index, std::sync::atomic::Ordering::Release);
    }
    (changes, members_changed)
}

/// The context of a configuration-change entry (empty when there is none).
fn conf_context(entry: &Entry) -> Vec<u8> {
    let context = if entry.get_entry_type() == EntryType::EntryConfChangeV2 {
        let mut cc = ConfChangeV2::default();
        protobuf::Message::merge_from_bytes(&mut cc, &entry.data).map(|()| cc.context)
    } else {
        let mut cc = ConfChange::default();
        protobuf::Message::merge_from_bytes(&mut cc, &entry.data).map(|()| cc.context)
    };
    match context {
        Ok(context) => context.to_vec(),
        Err(err) => {
            tracing::error!(index = entry.index, cause = %err, "undecodable configuration change; stopping");
            std::process::exit(70);
        }
    }
}

/// Replaces the state with a snapshot's. Everything this member knew about
/// the entries it skipped is gone: watchers are sent elsewhere, waiting
/// acquirers look at the new state, and pending writes have an unknown
/// outcome.
fn restore(shared: &Shared, index: u64, data: &[u8]) {
    let restored = match snapshot::decode(data) {
        Ok(state) => state,
        Err(err) => {
            // raft already installed it in storage; serving the old state
            // would be wrong, and a restart reads it again from storage.
            tracing::error!(index, cause = %err, "cannot decode the snapshot from the leader; stopping");
            std::process::exit(70);
        }
    };
    let revision = restored.revision();
    shared.set_peers(restored.members());
    {
        let mut state = shared
            .state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *state = restored;
        shared
            .state_index
            .store(index, std::sync::atomic::Ordering::Release);
    }
    shared.applied.send_replace(index);
    shared.watch.reset(revision);
    shared.lock_waits.wake_all();
    shared.proposals.fail_all(NodeError::DeadlineExceeded(
        "this member caught up from a snapshot; the write's outcome is unknown".into(),
    ));
    tracing::info!(index, revision, "installed a snapshot from the leader");
    metrics::counter!("fenced_snapshot_installs_total").increment(1);
}

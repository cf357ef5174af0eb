//! The apply loop: applies committed entries to the state machine, in log
//! order, off the driver's thread, and wakes the requests waiting on them.

use std::sync::Arc;
use std::sync::mpsc;

use raft::eraftpb::{Entry, EntryType};

use crate::node::Shared;
use crate::node::proposals::{Applied, Envelope};
use crate::state::LockChange;

/// Work for the apply loop.
#[derive(Debug)]
pub enum ApplyTask {
    /// Committed entries, in order, all locally persisted.
    Entries(Vec<Entry>),
}

/// Runs until the driver drops its sender.
pub fn run(shared: Arc<Shared>, tasks: mpsc::Receiver<ApplyTask>) {
    while let Ok(ApplyTask::Entries(mut entries)) = tasks.recv() {
        // Take whatever else is queued too: one lock and one wake-up per batch.
        while let Ok(ApplyTask::Entries(more)) = tasks.try_recv() {
            entries.extend(more);
        }
        let Some(last) = entries.last().map(|e| e.index) else {
            continue;
        };
        let changes = apply_batch(&shared, &entries);
        shared.applied.send_replace(last);
        shared.watch.applied();
        for (index, change) in &changes {
            shared.lock_waits.notify(*index, change);
        }
        metrics::gauge!("fenced_applied_index").set(last as f64);
    }
}

/// Applies `entries`; returns the lock changes, to be announced once the
/// state lock is released and the applied index published.
fn apply_batch(shared: &Shared, entries: &[Entry]) -> Vec<(u64, LockChange)> {
    let mut changes = Vec::new();
    let mut state = shared
        .state
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for entry in entries {
        // Configuration changes are applied to raft by the driver; empty
        // normal entries are a new leader's no-op.
        if entry.get_entry_type() != EntryType::EntryNormal || entry.data.is_empty() {
            shared.proposals.on_applied(entry.index, None);
            continue;
        }
        let envelope = match Envelope::decode(&entry.data) {
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
        let output = state.execute(&envelope.command);
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
    changes
}

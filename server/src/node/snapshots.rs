//! Local snapshots, off the apply and raft threads.
//!
//! Every `--snapshot-interval` applied entries the apply loop hands this
//! thread a copy of the state machine. The copy costs next to nothing (the
//! state lives in persistent maps that share their nodes), so the apply loop
//! pauses for microseconds; this thread then encodes the copy, writes it into
//! fjall (fsynced), and tells the driver, which records the snapshot and
//! compacts the log up to `--snapshot-tail` entries before it.
//!
//! One snapshot is in progress at a time; the apply loop simply skips the
//! interval while the previous one is still being written.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use raft::eraftpb::{ConfState, SnapshotMetadata};

use crate::node::storage::SnapshotWriter;
use crate::node::{DriverMsg, Inbox};
use crate::state::{StateMachine, snapshot};

/// A copy of the state at `index` (an entry of `term`).
#[derive(Debug)]
pub struct SnapshotJob {
    /// Raft index of the last entry the copy includes.
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
    /// The state after applying it.
    pub state: StateMachine,
}

/// Hands snapshot jobs to the snapshot thread.
#[derive(Debug)]
pub struct Snapshotter {
    jobs: mpsc::Sender<SnapshotJob>,
    busy: Arc<AtomicBool>,
}

impl Snapshotter {
    /// Starts the snapshot thread; it writes through `writer` and reports to
    /// the driver's `inbox`.
    pub fn start(writer: SnapshotWriter, inbox: Inbox) -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::channel();
        let busy = Arc::new(AtomicBool::new(false));
        let thread_busy = busy.clone();
        std::thread::Builder::new()
            .name("fenced-snapshot".into())
            .spawn(move || run(rx, writer, inbox, thread_busy))?;
        Ok(Self { jobs, busy })
    }

    /// Whether a snapshot is being written.
    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }

    /// Starts writing `job`; false (and nothing done) while another one is
    /// in progress.
    pub fn submit(&self, job: SnapshotJob) -> bool {
        if self.busy.swap(true, Ordering::AcqRel) {
            return false;
        }
        if self.jobs.send(job).is_err() {
            self.busy.store(false, Ordering::Release);
            return false;
        }
        true
    }
}

fn run(
    jobs: mpsc::Receiver<SnapshotJob>,
    writer: SnapshotWriter,
    inbox: Inbox,
    busy: Arc<AtomicBool>,
) {
    for job in jobs {
        let started = Instant::now();
        let data = snapshot::encode(&job.state);
        let encoded = started.elapsed();
        let result = writer.write(job.index, &data);
        let took = started.elapsed();
        match result {
            Ok(()) => {
                tracing::info!(
                    index = job.index,
                    revision = job.state.revision(),
                    bytes = data.len(),
                    encode_ms = encoded.as_millis() as u64,
                    total_ms = took.as_millis() as u64,
                    "snapshot written"
                );
                metrics::histogram!("fenced_snapshot_write_seconds").record(took);
                metrics::gauge!("fenced_snapshot_bytes").set(data.len() as f64);
                let meta = SnapshotMetadata {
                    index: job.index,
                    term: job.term,
                    conf_state: Some(conf_state_of(&job.state)).into(),
                    ..Default::default()
                };
                if inbox.send(DriverMsg::SnapshotWritten(meta)).is_err() {
                    return;
                }
            }
            Err(err) => {
                // The next interval tries again; the log keeps growing
                // meanwhile, which is safe.
                tracing::error!(index = job.index, cause = %err, "cannot write a snapshot");
                metrics::counter!("fenced_snapshot_failures_total").increment(1);
            }
        }
        busy.store(false, Ordering::Release);
    }
}

/// The raft configuration the member table describes. Membership changes are
/// made one at a time without joint consensus, so the table and raft's
/// configuration agree at every applied index.
pub fn conf_state_of(state: &StateMachine) -> ConfState {
    let mut conf = ConfState::default();
    for member in state.members().iter() {
        if member.learner {
            conf.learners.push(member.id);
        } else {
            conf.voters.push(member.id);
        }
    }
    conf
}

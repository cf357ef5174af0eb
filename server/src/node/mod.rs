//! The replicated core: everything that knows about Raft.
//!
//! [`Node`] is the handle the API layer holds. Writes become proposals
//! ([`Node::propose`]) answered once applied; linearizable reads first pass a
//! ReadIndex barrier ([`Node::read_barrier`]). Behind the handle runs one OS
//! thread, the driver: it owns raft-rs's `RawNode` and the fjall storage,
//! and applies committed entries to the [`StateMachine`].
//!
//! **Architecture Invariant:** only this module names raft-rs types.

pub mod apply;
pub mod bootstrap;
pub mod conf;
pub mod driver;
pub mod logger;
pub mod proposals;
pub mod read_index;
pub mod snapshots;
pub mod status;
pub mod storage;
pub mod transport;
pub mod waits;

use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::state::{Command, MemberChange, StateMachine};
pub use proposals::Applied;
pub use status::{RaftStatus, Role};

/// Why a request to the node failed. Converted to a gRPC status at the edge.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// No leader, shutting down, or the member cannot reach a quorum; the
    /// request may be retried, possibly on another member.
    #[error("{0}")]
    Unavailable(String),
    /// The proposal was dropped (for example by a leader change); retry.
    #[error("{0}")]
    Aborted(String),
    /// The request's deadline passed before it was answered; a write's
    /// outcome is then unknown.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The storage failed; the member is stopping.
    #[error("storage failure: {0}")]
    Storage(String),
    /// The cluster is not in a state that allows the request (a membership
    /// change in flight, a learner not caught up).
    #[error("{0}")]
    FailedPrecondition(String),
}

/// Where messages to the driver go. Sending never blocks and needs no
/// runtime: the API's tasks, the snapshot thread and the transport all use
/// it.
pub type Inbox = tokio::sync::mpsc::UnboundedSender<DriverMsg>;

/// A message to the driver.
#[derive(Debug)]
pub enum DriverMsg {
    /// Propose entry data (an encoded [`proposals::Envelope`]) with this seq.
    Propose {
        /// Encoded envelope.
        data: Vec<u8>,
        /// Sequence number, to fail the waiter if raft refuses the proposal.
        seq: u64,
    },
    /// A raft message from a peer.
    Step(Box<raft::eraftpb::Message>),
    /// Ask for a ReadIndex; the answer is the index to wait for.
    ReadIndex(oneshot::Sender<Result<u64, NodeError>>),
    /// The transport could not deliver to this peer.
    Unreachable(u64),
    /// Propose a membership change (leader only); the waiter of `seq` gets
    /// the answer, or the refusal.
    ConfChange {
        /// The change.
        change: MemberChange,
        /// Encoded envelope of `Command::MemberChange`, carried as the raft
        /// entry's context.
        context: Vec<u8>,
        /// Sequence number of the waiter.
        seq: u64,
    },
    /// Hand leadership to `target` (leader only).
    TransferLeader {
        /// The new leader.
        target: u64,
        /// Whether the transfer started.
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
    /// A snapshot's data was written; record it and compact the log.
    SnapshotWritten(raft::eraftpb::SnapshotMetadata),
    /// The transport finished sending a snapshot to `to`.
    SnapshotSent {
        /// The peer.
        to: u64,
        /// Whether the peer received all of it.
        ok: bool,
    },
    /// A peer says this member was removed from the cluster.
    Removed(String),
    /// Stop after persisting what is in flight.
    Shutdown,
}

/// State shared between the API layer, the driver and the apply loop.
#[derive(Debug)]
pub struct Shared {
    /// This member's id.
    pub id: u64,
    /// The cluster's id.
    pub cluster_id: u64,
    /// Proposals waiting for their entry to apply.
    pub proposals: proposals::Proposals,
    /// The applied state. A `std` lock: it is never held across an await, and
    /// the apply loop holds it only for one batch of entries.
    pub state: RwLock<StateMachine>,
    /// Highest applied raft index; readers wait on it after a ReadIndex.
    /// Published after the state lock is released, so it can trail the
    /// state by one batch.
    pub applied: watch::Sender<u64>,
    /// The raft index the state reflects, set while the state lock is held:
    /// read it under the lock for a consistent (index, state) pair.
    pub state_index: std::sync::atomic::AtomicU64,
    /// The driver's published view of raft (leader, term, indexes).
    pub status: RaftStatus,
    /// Acquirers waiting for their lock place to be granted or to end.
    pub lock_waits: waits::LockWaits,
    /// Peer addresses (id → host:port), this member included: the member
    /// table's, overlaid with `peer_overrides`.
    pub peers: std::sync::RwLock<std::collections::BTreeMap<u64, String>>,
    /// Addresses this member uses for some peers whatever the member table
    /// says (from `--initial-cluster`: a member may reach a peer through
    /// its own route, a proxy say).
    pub peer_overrides: std::collections::BTreeMap<u64, String>,
    /// The history window and watchers; the apply loop appends to it.
    pub watch: crate::watch::WatchHub,
}

impl Shared {
    /// Sets the peer addresses from the member table.
    pub(crate) fn set_peers(&self, members: &crate::state::MemberTable) {
        // Overrides also name members the table does not know yet (a member
        // that joined, before its first snapshot arrives).
        let mut peers: std::collections::BTreeMap<u64, String> = members
            .iter()
            .filter(|m| !m.peer_addr.is_empty())
            .map(|m| (m.id, m.peer_addr.clone()))
            .collect();
        peers.extend(
            self.peer_overrides
                .iter()
                .filter(|(id, _)| !members.was_removed(**id))
                .map(|(id, addr)| (*id, addr.clone())),
        );
        *self
            .peers
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = peers;
    }
}

/// The handle to a running member's replicated core. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Node {
    shared: Arc<Shared>,
    inbox: Inbox,
    default_timeout: Duration,
}

impl Node {
    /// This member's id.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// The cluster id.
    pub fn cluster_id(&self) -> u64 {
        self.shared.cluster_id
    }

    /// Raft status as last published by the driver.
    pub fn status(&self) -> &RaftStatus {
        &self.shared.status
    }

    /// Highest applied raft index.
    pub fn applied_index(&self) -> u64 {
        *self.shared.applied.borrow()
    }

    /// The deadline for a request that came with `timeout` (or none).
    pub fn deadline(&self, timeout: Option<Duration>) -> Instant {
        let timeout = timeout.map_or(self.default_timeout, |t| t.min(self.default_timeout * 6));
        Instant::now() + timeout
    }

    /// Acquirers waiting on lock places.
    pub fn lock_waits(&self) -> &waits::LockWaits {
        &self.shared.lock_waits
    }

    /// The watch hub of this member.
    pub fn watch_hub(&self) -> &crate::watch::WatchHub {
        &self.shared.watch
    }

    /// The peer address of member `id`.
    pub fn peer_addr(&self, id: u64) -> Option<String> {
        self.shared
            .peers
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&id)
            .cloned()
    }

    /// The applied state and the raft index it reflects, consistently.
    /// Never hold the guard across an await.
    pub fn state_at(&self) -> (RwLockReadGuard<'_, StateMachine>, u64) {
        let state = self.state();
        let index = self
            .shared
            .state_index
            .load(std::sync::atomic::Ordering::Acquire);
        (state, index)
    }

    /// Reads the applied state. Never hold the guard across an await.
    pub fn state(&self) -> RwLockReadGuard<'_, StateMachine> {
        self.shared
            .state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Hands a raft message from a peer to the driver.
    pub fn step(&self, msg: raft::eraftpb::Message) -> Result<(), NodeError> {
        self.send(DriverMsg::Step(Box::new(msg)))
    }

    /// Proposes `command` and waits until it is applied on this member.
    pub async fn propose(&self, command: Command, deadline: Instant) -> Result<Applied, NodeError> {
        let (data, seq, rx) = self.shared.proposals.register(command);
        if let Err(err) = self.send(DriverMsg::Propose { data, seq }) {
            self.shared.proposals.forget(seq);
            return Err(err);
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(NodeError::Unavailable("member is shutting down".into())),
            Err(_) => {
                self.shared.proposals.forget(seq);
                Err(self.timeout_error(
                    "the write was not committed before the deadline; its outcome is unknown",
                ))
            }
        }
    }

    /// Proposes a membership change (this member must lead) and waits until
    /// it is applied here.
    pub async fn propose_member_change(
        &self,
        change: MemberChange,
        deadline: Instant,
    ) -> Result<Applied, NodeError> {
        let (context, seq, rx) = self
            .shared
            .proposals
            .register(Command::MemberChange(change.clone()));
        if let Err(err) = self.send(DriverMsg::ConfChange {
            change,
            context,
            seq,
        }) {
            self.shared.proposals.forget(seq);
            return Err(err);
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(NodeError::Unavailable("member is shutting down".into())),
            Err(_) => {
                self.shared.proposals.forget(seq);
                Err(self.timeout_error(
                    "the membership change was not applied before the deadline; its outcome is \
                     unknown (check `fencectl member list`)",
                ))
            }
        }
    }

    /// Asks the driver (which must lead) to hand leadership to `target`.
    pub async fn transfer_leader(&self, target: u64) -> Result<(), NodeError> {
        let (reply, rx) = oneshot::channel();
        self.send(DriverMsg::TransferLeader { target, reply })?;
        rx.await
            .map_err(|_| NodeError::Unavailable("member is shutting down".into()))?
    }

    /// Waits until this member has applied everything committed before the
    /// call (ReadIndex), so a read after it is linearizable. Retries the
    /// ReadIndex round (raft-rs drops it silently while there is no leader, or
    /// before a new leader commits in its term) until `deadline`.
    pub async fn read_barrier(&self, deadline: Instant) -> Result<(), NodeError> {
        let retry_after = self.shared.status.election_timeout();
        let index = loop {
            let (tx, rx) = oneshot::channel();
            self.send(DriverMsg::ReadIndex(tx))?;
            let round_deadline = (Instant::now() + retry_after).min(deadline);
            match tokio::time::timeout_at(round_deadline, rx).await {
                Ok(Ok(Ok(index))) => break index,
                Ok(Ok(Err(err))) if Instant::now() + Duration::from_millis(50) >= deadline => {
                    return Err(err);
                }
                Ok(Ok(Err(_))) => {
                    // No leader right now: wait a little for one to appear.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(Err(_)) => return Err(NodeError::Unavailable("member is shutting down".into())),
                Err(_) if Instant::now() >= deadline => {
                    return Err(self.timeout_error(
                        "could not confirm leadership with a quorum (ReadIndex) before the deadline",
                    ));
                }
                Err(_) => {}
            }
        };
        self.wait_applied(index, deadline).await
    }

    /// Waits until the applied index reaches `index`.
    pub async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), NodeError> {
        let mut applied = self.shared.applied.subscribe();
        match tokio::time::timeout_at(deadline, applied.wait_for(|a| *a >= index)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(NodeError::Unavailable("member is shutting down".into())),
            Err(_) => Err(NodeError::DeadlineExceeded(format!(
                "this member had not applied index {index} before the deadline (applied {})",
                self.applied_index()
            ))),
        }
    }

    /// Asks the driver to stop.
    pub fn shutdown(&self) {
        let _ = self.inbox.send(DriverMsg::Shutdown);
    }

    fn send(&self, msg: DriverMsg) -> Result<(), NodeError> {
        self.inbox
            .send(msg)
            .map_err(|_| NodeError::Unavailable("member is shutting down".into()))
    }

    /// A timeout is UNAVAILABLE when no leader is known (retry elsewhere is
    /// worthwhile), DEADLINE_EXCEEDED otherwise.
    fn timeout_error(&self, what: &str) -> NodeError {
        if self.shared.status.leader() == 0 {
            NodeError::Unavailable(format!("no leader: {what}"))
        } else {
            NodeError::DeadlineExceeded(what.to_string())
        }
    }
}

pub use bootstrap::{open, start};

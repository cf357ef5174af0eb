//! The driver's published view of raft, readable without locks.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

/// A member's raft role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Runs a pre-vote.
    PreCandidate,
    /// Runs an election.
    Candidate,
    /// Leads.
    Leader,
}

impl Role {
    /// Lower-case name, as `Status` reports it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => Role::PreCandidate,
            2 => Role::Candidate,
            3 => Role::Leader,
            _ => Role::Follower,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Role::Follower => 0,
            Role::PreCandidate => 1,
            Role::Candidate => 2,
            Role::Leader => 3,
        }
    }
}

/// Leader and term, as a value others can watch for changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Leadership {
    /// Leader id, 0 when none is known.
    pub leader: u64,
    /// Current term.
    pub term: u64,
    /// Whether this member is the leader.
    pub is_leader: bool,
}

/// Raft status written by the driver after every Ready, read by anyone.
#[derive(Debug)]
pub struct RaftStatus {
    leader: AtomicU64,
    term: AtomicU64,
    role: AtomicU8,
    commit: AtomicU64,
    first_index: AtomicU64,
    last_index: AtomicU64,
    snapshot_index: AtomicU64,
    election_timeout_ms: u64,
    leadership: watch::Sender<Leadership>,
}

impl RaftStatus {
    /// Fresh status for a member with this election timeout.
    pub fn new(election_timeout: Duration) -> Self {
        Self {
            leader: AtomicU64::new(0),
            term: AtomicU64::new(0),
            role: AtomicU8::new(0),
            commit: AtomicU64::new(0),
            first_index: AtomicU64::new(0),
            last_index: AtomicU64::new(0),
            snapshot_index: AtomicU64::new(0),
            election_timeout_ms: election_timeout.as_millis() as u64,
            leadership: watch::Sender::new(Leadership::default()),
        }
    }

    /// Leader id, 0 if none known.
    pub fn leader(&self) -> u64 {
        self.leader.load(Ordering::Acquire)
    }
    /// Current term.
    pub fn term(&self) -> u64 {
        self.term.load(Ordering::Acquire)
    }
    /// Current role.
    pub fn role(&self) -> Role {
        Role::from_u8(self.role.load(Ordering::Acquire))
    }
    /// Commit index.
    pub fn commit(&self) -> u64 {
        self.commit.load(Ordering::Acquire)
    }
    /// First index still in the log.
    pub fn first_index(&self) -> u64 {
        self.first_index.load(Ordering::Acquire)
    }
    /// Last index in the log.
    pub fn last_index(&self) -> u64 {
        self.last_index.load(Ordering::Acquire)
    }
    /// Index of the latest snapshot in storage (0: none).
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_index.load(Ordering::Acquire)
    }
    pub(crate) fn set_snapshot_index(&self, index: u64) {
        self.snapshot_index.store(index, Ordering::Release);
    }
    /// Election timeout.
    pub fn election_timeout(&self) -> Duration {
        Duration::from_millis(self.election_timeout_ms)
    }
    /// Subscribe to leader/term changes.
    pub fn leadership(&self) -> watch::Receiver<Leadership> {
        self.leadership.subscribe()
    }

    /// Publishes the driver's view.
    pub(crate) fn publish(
        &self,
        leader: u64,
        term: u64,
        role: Role,
        commit: u64,
        first: u64,
        last: u64,
    ) {
        self.leader.store(leader, Ordering::Release);
        self.term.store(term, Ordering::Release);
        self.role.store(role.to_u8(), Ordering::Release);
        self.commit.store(commit, Ordering::Release);
        self.first_index.store(first, Ordering::Release);
        self.last_index.store(last, Ordering::Release);
        let next = Leadership {
            leader,
            term,
            is_leader: role == Role::Leader,
        };
        self.leadership.send_if_modified(|cur| {
            let changed = *cur != next;
            *cur = next;
            changed
        });
    }
}

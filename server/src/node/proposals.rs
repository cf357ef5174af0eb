//! Pending proposals: request id → the waiter that gets the applied answer.
//!
//! Every proposal carries `(origin member, boot nonce, seq)`. Whichever member
//! applies the entry computes the same answer (the state machine is
//! deterministic), so the member that *originated* the proposal answers its
//! client from its own apply loop, also when the write was forwarded to the
//! leader by raft. The nonce keeps a restarted member from mistaking entries
//! of its previous life for its own.

use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::node::NodeError;
use crate::state::{Command, Response};

/// What goes into the data of a normal raft entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The member that proposed the entry.
    pub origin: u64,
    /// Random per process start of `origin`.
    pub nonce: u64,
    /// Sequence number within `(origin, nonce)`.
    pub seq: u64,
    /// The command to apply.
    pub command: Command,
}

impl Envelope {
    /// Encodes for the raft log.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain owned data into a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes a raft entry's data.
    pub fn decode(data: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(data)
    }
}

/// The answer of an applied proposal.
#[derive(Debug)]
pub struct Applied {
    /// What the state machine answered.
    pub response: Response,
    /// Raft index of the entry.
    pub index: u64,
    /// Keyspace revision after the entry.
    pub revision: i64,
}

type Waiter = oneshot::Sender<Result<Applied, NodeError>>;

/// The table of proposals this member is waiting on.
#[derive(Debug)]
pub struct Proposals {
    member_id: u64,
    nonce: u64,
    next_seq: AtomicU64,
    waiters: DashMap<u64, Waiter>,
    /// Raft index → seq of proposals this member appended as leader. When a
    /// different entry commits at that index, the proposal was overwritten
    /// after a leader change and will never commit: its waiter is answered
    /// ABORTED at once instead of waiting for its deadline.
    expected: DashMap<u64, u64>,
    /// Seq → the leader a proposal was forwarded to (this member was a
    /// follower when it proposed). When this member sees the leadership
    /// move away from that leader, the proposal may be lost with it or may
    /// still commit: its waiter is answered at once with an
    /// unknown-outcome DEADLINE_EXCEEDED instead of waiting for its deadline.
    forwarded: DashMap<u64, u64>,
}

impl Proposals {
    /// An empty table for `member_id`, with a fresh nonce.
    pub fn new(member_id: u64) -> Self {
        Self {
            member_id,
            nonce: rand::random(),
            next_seq: AtomicU64::new(1),
            waiters: DashMap::new(),
            expected: DashMap::new(),
            forwarded: DashMap::new(),
        }
    }

    /// Registers a waiter for `command`; returns the entry data to propose,
    /// its sequence number and the receiver of the answer.
    pub fn register(
        &self,
        command: Command,
    ) -> (Vec<u8>, u64, oneshot::Receiver<Result<Applied, NodeError>>) {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let envelope = Envelope {
            origin: self.member_id,
            nonce: self.nonce,
            seq,
            command,
        };
        let (tx, rx) = oneshot::channel();
        self.waiters.insert(seq, tx);
        (envelope.encode(), seq, rx)
    }

    /// Whether `envelope` was proposed by this process.
    pub fn is_mine(&self, envelope: &Envelope) -> bool {
        envelope.origin == self.member_id && envelope.nonce == self.nonce
    }

    /// Answers and forgets the waiter of `seq`, if it still waits.
    pub fn complete(&self, seq: u64, result: Result<Applied, NodeError>) {
        if !self.forwarded.is_empty() {
            self.forwarded.remove(&seq);
        }
        if let Some((_, tx)) = self.waiters.remove(&seq) {
            // The client may have given up already; nothing to do then.
            let _ = tx.send(result);
        }
    }

    /// Records that this member, as leader, appended proposal `seq` at `index`.
    pub fn expect_at(&self, index: u64, seq: u64) {
        self.expected.insert(index, seq);
    }

    /// Called for every applied entry. When this member had appended
    /// another proposal of its own at `index`, that proposal lost its place
    /// in the log and is answered ABORTED. `applied` is the (origin, nonce,
    /// seq) of the entry that did commit, if it is a command.
    pub fn on_applied(&self, index: u64, applied: Option<&Envelope>) {
        if self.expected.is_empty() {
            return;
        }
        let Some((_, seq)) = self.expected.remove(&index) else {
            return;
        };
        let same = applied.is_some_and(|e| self.is_mine(e) && e.seq == seq);
        if !same {
            self.complete(
                seq,
                Err(NodeError::Aborted(
                    "the leader changed before this write committed; it was not applied, retry"
                        .into(),
                )),
            );
        }
    }

    /// Records that proposal `seq` was handed to raft while `leader` led
    /// and this member did not: raft forwards it there.
    pub fn forwarded_to(&self, seq: u64, leader: u64) {
        // Not for a request that already gave up while its proposal waited
        // in the driver's inbox.
        if self.waiters.contains_key(&seq) {
            self.forwarded.insert(seq, leader);
        }
    }

    /// Called when this member sees `leader` lead (0: no leader known).
    /// Proposals forwarded to another leader are answered DEADLINE_EXCEEDED
    /// (an unknown outcome, which fenced-client does not retry for a write,
    /// as for any write whose deadline passed with a leader known): the old
    /// leader may have lost them, or a new leader may still commit them,
    /// and nothing here can tell which. Returns how many were answered.
    pub fn on_leader_change(&self, leader: u64) -> usize {
        if self.forwarded.is_empty() {
            return 0;
        }
        let orphaned: Vec<(u64, u64)> = self
            .forwarded
            .iter()
            .filter(|entry| *entry.value() != leader)
            .map(|entry| (*entry.key(), *entry.value()))
            .collect();
        for &(seq, old) in &orphaned {
            self.complete(
                seq,
                Err(NodeError::DeadlineExceeded(format!(
                    "the leadership moved away from member {old} while this write was \
                     forwarded to it; its outcome is unknown"
                ))),
            );
        }
        orphaned.len()
    }

    /// Forgets the waiter of `seq` (its request gave up).
    pub fn forget(&self, seq: u64) {
        self.waiters.remove(&seq);
        self.forwarded.remove(&seq);
    }

    /// Fails every waiter (shutdown).
    pub fn fail_all(&self, err: NodeError) {
        let seqs: Vec<u64> = self.waiters.iter().map(|e| *e.key()).collect();
        for seq in seqs {
            self.complete(seq, Err(err.clone()));
        }
    }

    /// Number of proposals waiting.
    pub fn len(&self) -> usize {
        self.waiters.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.waiters.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::PutRequest;

    fn put() -> Command {
        Command::Put(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            lease: 0,
            prev_kv: false,
        })
    }

    #[test]
    fn envelope_round_trips_and_is_recognised_only_by_its_process() {
        let a = Proposals::new(1);
        let b = Proposals::new(1);
        let (data, seq, _rx) = a.register(put());
        let env = Envelope::decode(&data).unwrap();
        assert_eq!(env.seq, seq);
        assert_eq!(env.command, put());
        assert!(a.is_mine(&env));
        assert!(!b.is_mine(&env), "a restarted member has a new nonce");
    }

    #[test]
    fn an_overwritten_proposal_is_aborted_and_a_committed_one_is_not() {
        let p = Proposals::new(1);
        let (data, seq, mut rx) = p.register(put());
        p.expect_at(5, seq);
        let other = Envelope {
            origin: 2,
            nonce: 9,
            seq: 1,
            command: put(),
        };
        p.on_applied(5, Some(&other));
        assert!(matches!(rx.try_recv(), Ok(Err(NodeError::Aborted(_)))));

        let (data2, seq2, mut rx2) = p.register(put());
        p.expect_at(6, seq2);
        p.on_applied(6, Some(&Envelope::decode(&data2).unwrap()));
        assert!(
            rx2.try_recv().is_err(),
            "its own entry committed: left for the apply loop to answer"
        );
        assert!(p.expected.is_empty());
        let _ = data;
    }

    #[test]
    fn forwarded_proposals_end_when_their_leader_does() {
        let p = Proposals::new(3);
        let (_, to_1, mut rx_1) = p.register(put());
        let (_, to_2, mut rx_2) = p.register(put());
        let (_, local, mut rx_local) = p.register(put());
        p.forwarded_to(to_1, 1);
        p.forwarded_to(to_2, 2);
        assert_eq!(p.on_leader_change(1), 1, "only the one sent to member 2");
        assert!(rx_1.try_recv().is_err(), "still waits: its leader leads");
        match rx_2.try_recv() {
            Ok(Err(NodeError::DeadlineExceeded(m))) => {
                assert!(m.contains("member 2") && m.contains("unknown"), "{m}");
            }
            other => panic!("unexpected {other:?}"),
        }
        // An answered proposal is not answered again at the next change.
        p.complete(to_1, Err(NodeError::Aborted("x".into())));
        assert_eq!(p.on_leader_change(0), 0);
        assert!(matches!(rx_1.try_recv(), Ok(Err(NodeError::Aborted(_)))));
        assert!(rx_local.try_recv().is_err(), "not forwarded: left alone");
        assert_eq!(p.len(), 1);
        p.forget(local);
        assert!(p.is_empty());
    }

    #[test]
    fn complete_answers_once() {
        let p = Proposals::new(7);
        let (_, seq, mut rx) = p.register(put());
        assert_eq!(p.len(), 1);
        p.complete(seq, Err(NodeError::Unavailable("x".into())));
        p.complete(seq, Err(NodeError::Unavailable("y".into())));
        assert!(p.is_empty());
        match rx.try_recv() {
            Ok(Err(NodeError::Unavailable(m))) => assert_eq!(m, "x"),
            other => panic!("unexpected {other:?}"),
        }
    }
}

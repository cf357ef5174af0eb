//! Batched linearizable reads: all ReadIndex requests that reach the driver
//! in one loop iteration share one raft ReadIndex round (one context).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::node::NodeError;

type Reply = oneshot::Sender<Result<u64, NodeError>>;

/// Read requests queued for the next round and rounds awaiting their index.
/// Whether a ReadIndex round can be started now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadGate {
    /// No leader is known.
    NoLeader,
    /// This member leads but has not committed an entry of its term yet.
    NotYet,
    /// A round can go to the leader (this member or another).
    Open,
}

#[derive(Debug, Default)]
pub struct ReadIndexBatcher {
    queued: Vec<Reply>,
    inflight: BTreeMap<u64, (Instant, Vec<Reply>)>,
    next_ctx: u64,
}

impl ReadIndexBatcher {
    /// Queues a request for the next round.
    pub fn push(&mut self, reply: Reply) {
        self.queued.push(reply);
    }

    /// Starts one round for everything queued, through `issue(ctx)`. raft-rs
    /// drops a ReadIndex silently when no leader is known, and on a leader
    /// that has not yet committed an entry of its term. With no leader,
    /// answer UNAVAILABLE at once; on such a new leader, keep the reads
    /// queued until it has committed (a few milliseconds), rather than lose
    /// the round and make every reader wait out its retry (an election
    /// timeout).
    pub fn flush(&mut self, gate: ReadGate, now: Instant, issue: impl FnOnce(Vec<u8>)) {
        if self.queued.is_empty() {
            return;
        }
        if gate == ReadGate::NotYet {
            // Readers that gave up are forgotten; the rest wait.
            self.queued.retain(|reply| !reply.is_closed());
            return;
        }
        let replies = std::mem::take(&mut self.queued);
        if gate == ReadGate::NoLeader {
            for reply in replies {
                let _ = reply.send(Err(NodeError::Unavailable(
                    "no leader is known; cannot serve a linearizable read".into(),
                )));
            }
            return;
        }
        self.next_ctx += 1;
        let ctx = self.next_ctx;
        self.inflight.insert(ctx, (now, replies));
        issue(ctx.to_be_bytes().to_vec());
    }

    /// Answers the round named by `ctx` with `index`.
    pub fn on_read_state(&mut self, ctx: &[u8], index: u64) {
        let Ok(bytes) = <[u8; 8]>::try_from(ctx) else {
            return;
        };
        if let Some((_, replies)) = self.inflight.remove(&u64::from_be_bytes(bytes)) {
            for reply in replies {
                let _ = reply.send(Ok(index));
            }
        }
    }

    /// Fails rounds older than `timeout` (raft-rs may have dropped them).
    pub fn expire(&mut self, now: Instant, timeout: Duration) {
        while let Some(entry) = self.inflight.first_entry() {
            if now.duration_since(entry.get().0) < timeout {
                break;
            }
            for reply in entry.remove().1 {
                let _ = reply.send(Err(NodeError::Unavailable(
                    "ReadIndex round was not confirmed by a quorum in time".into(),
                )));
            }
        }
    }

    /// Number of reads waiting (queued or in flight).
    pub fn len(&self) -> usize {
        self.queued.len() + self.inflight.values().map(|(_, r)| r.len()).sum::<usize>()
    }

    /// True when no read waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_round_answers_every_queued_read() {
        let mut b = ReadIndexBatcher::default();
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        b.push(tx1);
        b.push(tx2);
        let mut issued = Vec::new();
        b.flush(ReadGate::Open, Instant::now(), |ctx| issued.push(ctx));
        assert_eq!(issued.len(), 1, "two reads, one round");
        b.on_read_state(&issued[0], 42);
        assert_eq!(rx1.try_recv().unwrap().unwrap(), 42);
        assert_eq!(rx2.try_recv().unwrap().unwrap(), 42);
        assert!(b.is_empty());
    }

    #[test]
    fn no_leader_fails_fast_and_old_rounds_expire() {
        let mut b = ReadIndexBatcher::default();
        let (tx, mut rx) = oneshot::channel();
        b.push(tx);
        b.flush(ReadGate::NoLeader, Instant::now(), |_| {
            panic!("must not issue without a leader")
        });
        assert!(matches!(
            rx.try_recv().unwrap(),
            Err(NodeError::Unavailable(_))
        ));

        let (tx, mut rx) = oneshot::channel();
        b.push(tx);
        let start = Instant::now();
        b.flush(ReadGate::Open, start, |_| {});
        b.expire(start + Duration::from_millis(10), Duration::from_secs(1));
        assert!(rx.try_recv().is_err(), "not expired yet");
        b.expire(start + Duration::from_secs(2), Duration::from_secs(1));
        assert!(matches!(
            rx.try_recv().unwrap(),
            Err(NodeError::Unavailable(_))
        ));
    }

    #[test]
    fn a_new_leader_holds_reads_until_it_has_committed_in_its_term() {
        let mut b = ReadIndexBatcher::default();
        let (waiting, mut waiting_rx) = oneshot::channel();
        let (gave_up, gave_up_rx) = oneshot::channel();
        b.push(waiting);
        b.push(gave_up);
        drop(gave_up_rx);
        b.flush(ReadGate::NotYet, Instant::now(), |_| {
            panic!("must not issue a round raft-rs would drop")
        });
        assert!(waiting_rx.try_recv().is_err(), "answered too early");
        assert_eq!(b.len(), 1, "the reader that gave up is forgotten");
        let mut issued = Vec::new();
        b.flush(ReadGate::Open, Instant::now(), |ctx| issued.push(ctx));
        assert_eq!(issued.len(), 1);
        b.on_read_state(&issued[0], 7);
        assert_eq!(waiting_rx.try_recv().unwrap().unwrap(), 7);
    }
}

//! Membership changes and leadership transfers, as the driver proposes them.
//!
//! Changes are proposed one at a time and only by the leader, as
//! single-step `ConfChangeV2`s (never a joint configuration), so the
//! replicated member table always equals raft's configuration.
//!
//! A leader that has just taken over cannot propose a change at once:
//! raft-rs counts everything in its log up to its first entry of the term
//! as a possibly pending change until it has applied it. A change that
//! arrives in that window waits here (at most an election timeout) instead
//! of being refused: the client did nothing wrong, and the member it
//! removed may be the one that just handed leadership over. A change that
//! arrives while another change really is in the unapplied log is refused
//! with FAILED_PRECONDITION, as before.

use std::time::Instant;

use raft::eraftpb::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, EntryType,
};
use raft::{GetEntriesContext, ProgressState, StateRole};

use crate::node::NodeError;
use crate::node::driver::Driver;
use crate::state::MemberChange;

/// A learner may be promoted once its log is at most this many entries
/// behind the leader's.
pub const PROMOTE_MAX_LAG: u64 = 1000;

/// A change waiting for a new leader to apply its predecessors' entries.
#[derive(Debug)]
pub(crate) struct ParkedChange {
    change: MemberChange,
    context: Vec<u8>,
    seq: u64,
    /// When to give up and answer UNAVAILABLE.
    until: Instant,
}

/// What checking a change found.
enum Check {
    /// Propose this now.
    Propose(ConfChangeV2),
    /// Only a new leader's term start is pending: wait for it to apply.
    Wait,
}

fn in_flight() -> NodeError {
    NodeError::FailedPrecondition(
        "another membership change is in flight; retry once it is applied".into(),
    )
}

impl Driver {
    /// Takes a change from the API layer: proposes it, parks it until the
    /// leader can propose it, or answers its proposer with the refusal.
    pub(crate) fn conf_change(&mut self, change: MemberChange, context: Vec<u8>, seq: u64) {
        let until = Instant::now() + self.shared.status.election_timeout();
        self.try_conf_change(ParkedChange {
            change,
            context,
            seq,
            until,
        });
    }

    /// Proposes a parked change once the leader has applied what it had to.
    /// True when it proposed (or answered) something.
    pub(crate) fn retry_parked_change(&mut self, now: Instant) -> bool {
        let Some(parked) = self.parked_change.take() else {
            return false;
        };
        if self.raw.raft.has_pending_conf() && self.raw.raft.state == StateRole::Leader {
            if now < parked.until {
                self.parked_change = Some(parked);
                return false;
            }
            self.shared.proposals.complete(
                parked.seq,
                Err(NodeError::Unavailable(format!(
                    "member {} took over as leader and has not applied the entries of earlier \
                     terms yet; retry",
                    self.shared.id
                ))),
            );
            return true;
        }
        self.try_conf_change(parked);
        true
    }

    fn try_conf_change(&mut self, parked: ParkedChange) {
        let seq = parked.seq;
        let result = match self.check_conf_change(&parked.change) {
            Ok(Check::Wait) if self.parked_change.is_none() => {
                tracing::info!(
                    change = ?parked.change,
                    "membership change waits for this new leader to apply earlier entries"
                );
                self.parked_change = Some(parked);
                return;
            }
            Ok(Check::Wait) => Err(in_flight()),
            Ok(Check::Propose(mut cc)) => {
                cc.context = parked.context.into();
                self.propose_conf(cc)
            }
            Err(err) => Err(err),
        };
        match result {
            Ok(index) => self.shared.proposals.expect_at(index, seq),
            Err(err) => self.shared.proposals.complete(seq, Err(err)),
        }
    }

    /// Whether a configuration change entry sits in the log unapplied
    /// (raft-rs's own pending marker also covers a new leader's whole log).
    fn change_in_unapplied_log(&self) -> bool {
        let log = &self.raw.raft.raft_log;
        log.slice(
            log.applied + 1,
            log.last_index() + 1,
            None,
            GetEntriesContext::empty(false),
        )
        .map_or(true, |entries| {
            entries.iter().any(|e| {
                matches!(
                    e.get_entry_type(),
                    EntryType::EntryConfChange | EntryType::EntryConfChangeV2
                )
            })
        })
    }

    /// Checks and proposes one membership change. Refused unless this member
    /// leads, no other change is pending, and (for a promotion) the learner
    /// has caught up.
    fn check_conf_change(&self, change: &MemberChange) -> Result<Check, NodeError> {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader {
            return Err(NodeError::Unavailable(format!(
                "member {} is not the leader (leader: {}); retry",
                self.shared.id, raft.leader_id
            )));
        }
        let conf = raft.prs().conf().to_conf_state();
        if !conf.voters_outgoing.is_empty() {
            return Err(in_flight());
        }
        if raft.has_pending_conf() {
            return if self.change_in_unapplied_log() {
                Err(in_flight())
            } else {
                Ok(Check::Wait)
            };
        }
        let (change_type, id) = match change {
            MemberChange::Add { id, learner, .. } => (
                if *learner {
                    ConfChangeType::AddLearnerNode
                } else {
                    ConfChangeType::AddNode
                },
                *id,
            ),
            MemberChange::Promote { id } => {
                let last = raft.raft_log.last_index();
                let Some(progress) = raft.prs().get(*id) else {
                    return Err(NodeError::FailedPrecondition(format!(
                        "member {id} is not in raft's configuration"
                    )));
                };
                let behind = last.saturating_sub(progress.matched);
                // A learner that never acknowledged anything has not caught up,
                // however short the log.
                if progress.matched == 0
                    || progress.state == ProgressState::Snapshot
                    || behind > PROMOTE_MAX_LAG
                {
                    return Err(NodeError::FailedPrecondition(format!(
                        "learner {id} has not caught up: it has the log up to index {} of {last} \
                         ({behind} behind, at most {PROMOTE_MAX_LAG} allowed); retry once it has",
                        progress.matched
                    )));
                }
                (ConfChangeType::AddNode, *id)
            }
            MemberChange::Remove { id } => (ConfChangeType::RemoveNode, *id),
        };
        let mut single = ConfChangeSingle::default();
        single.set_change_type(change_type);
        single.node_id = id;
        let mut cc = ConfChangeV2::default();
        cc.set_transition(ConfChangeTransition::Auto);
        cc.set_changes(vec![single].into());
        Ok(Check::Propose(cc))
    }

    /// Proposes a checked change; returns the index it went in at.
    fn propose_conf(&mut self, cc: ConfChangeV2) -> Result<u64, NodeError> {
        let before = self.raw.raft.raft_log.last_index();
        self.raw
            .propose_conf_change(vec![], cc)
            .map_err(|err| NodeError::Unavailable(format!("membership change dropped: {err}")))?;
        if self.raw.raft.raft_log.last_index() == before {
            return Err(NodeError::Unavailable(
                "membership change dropped (leadership is moving); retry".into(),
            ));
        }
        Ok(self.raw.raft.raft_log.last_index())
    }

    /// fenced never enters a joint configuration itself, but if one is
    /// found (an older member, or raft-rs's own auto-leave lost with a
    /// leader change: its `commit_apply` only leaves on the leader that
    /// entered), the leader proposes the empty change that leaves it.
    pub(crate) fn leave_stalled_joint(&mut self) {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader
            || raft.has_pending_conf()
            || raft.prs().conf().to_conf_state().voters_outgoing.is_empty()
        {
            return;
        }
        tracing::warn!("leaving a stalled joint configuration");
        if let Err(err) = self
            .raw
            .propose_conf_change(vec![], ConfChangeV2::default())
        {
            tracing::warn!(cause = %err, "could not propose leaving the joint configuration");
        }
    }

    pub(crate) fn transfer_leader(&mut self, target: u64) -> Result<(), NodeError> {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader {
            return Err(NodeError::Unavailable(format!(
                "member {} is not the leader (leader: {}); retry",
                self.shared.id, raft.leader_id
            )));
        }
        if target == self.shared.id {
            return Ok(());
        }
        if !raft.prs().conf().to_conf_state().voters.contains(&target) {
            return Err(NodeError::FailedPrecondition(format!(
                "member {target} is not a voter; only a voter can lead"
            )));
        }
        self.raw.transfer_leader(target);
        Ok(())
    }
}

//! The member table: who is in the cluster, at which addresses, and which
//! ids were removed (an id is never used twice, like a lease id).
//!
//! Raft decides *whether* a configuration change happens; this table records
//! what operators and joining members need to know about it (addresses), and
//! is replicated and snapshotted with the rest of the state so that a member
//! restarting from a snapshot, or one that joined later, knows every peer.
//! Changes are checked on the leader before they are proposed (one at a time),
//! so applying one never fails.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::kv::Fnv1a64;

/// One member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Member id; positive, never reused.
    pub id: u64,
    /// Address peers send raft messages to.
    pub peer_addr: String,
    /// Address clients use; empty until the member published it.
    pub client_addr: String,
    /// A learner receives the log but does not vote.
    pub learner: bool,
}

/// A configuration change, as applied once raft accepted it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberChange {
    /// A new member (learner or voter).
    Add {
        /// Its id.
        id: u64,
        /// Its peer address.
        peer_addr: String,
        /// Its client address, if known.
        client_addr: String,
        /// Whether it joins as a learner.
        learner: bool,
    },
    /// A learner becomes a voter.
    Promote {
        /// The learner.
        id: u64,
    },
    /// A member leaves; its id is never used again.
    Remove {
        /// The member.
        id: u64,
    },
}

impl MemberChange {
    /// The member the change is about.
    pub fn id(&self) -> u64 {
        match self {
            MemberChange::Add { id, .. }
            | MemberChange::Promote { id }
            | MemberChange::Remove { id } => *id,
        }
    }
}

/// Every member, and every id ever removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberTable {
    members: BTreeMap<u64, Member>,
    removed: BTreeSet<u64>,
}

impl MemberTable {
    /// The initial voters. Their addresses are unknown until each publishes
    /// them: members of one cluster may reach each other through different
    /// addresses (proxies), and the bootstrap state must be the same on all.
    pub fn bootstrap(ids: impl IntoIterator<Item = u64>) -> Self {
        let members = ids
            .into_iter()
            .map(|id| {
                let member = Member {
                    id,
                    peer_addr: String::new(),
                    client_addr: String::new(),
                    learner: false,
                };
                (id, member)
            })
            .collect();
        Self {
            members,
            removed: BTreeSet::new(),
        }
    }

    /// Members in id order.
    pub fn iter(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// Member `id`, if present.
    pub fn get(&self, id: u64) -> Option<&Member> {
        self.members.get(&id)
    }

    /// Whether `id` was removed from the cluster at some point.
    pub fn was_removed(&self, id: u64) -> bool {
        self.removed.contains(&id)
    }

    /// The member using `peer_addr` or `client_addr`, if any.
    pub fn using_addr(&self, addr: &str) -> Option<&Member> {
        self.members
            .values()
            .find(|m| m.peer_addr == addr || (!m.client_addr.is_empty() && m.client_addr == addr))
    }

    /// How many members vote.
    pub fn voters(&self) -> usize {
        self.members.values().filter(|m| !m.learner).count()
    }

    /// Applies a change raft accepted.
    pub(super) fn apply(&mut self, change: &MemberChange) {
        match change {
            MemberChange::Add {
                id,
                peer_addr,
                client_addr,
                learner,
            } => {
                self.members.insert(
                    *id,
                    Member {
                        id: *id,
                        peer_addr: peer_addr.clone(),
                        client_addr: client_addr.clone(),
                        learner: *learner,
                    },
                );
            }
            MemberChange::Promote { id } => {
                if let Some(member) = self.members.get_mut(id) {
                    member.learner = false;
                }
            }
            MemberChange::Remove { id } => {
                self.members.remove(id);
                self.removed.insert(*id);
            }
        }
    }

    /// Records the addresses a member published; false when the member is
    /// unknown (removed meanwhile) or nothing changed.
    pub(super) fn publish(&mut self, id: u64, peer_addr: &str, client_addr: &str) -> bool {
        match self.members.get_mut(&id) {
            Some(member) if member.client_addr != client_addr || member.peer_addr != peer_addr => {
                member.peer_addr = peer_addr.to_string();
                member.client_addr = client_addr.to_string();
                true
            }
            _ => false,
        }
    }

    pub(super) fn digest_into(&self, hash: &mut Fnv1a64) {
        for member in self.members.values() {
            hash.write_i64(member.id as i64);
            hash.write_bytes(member.peer_addr.as_bytes());
            hash.write_bytes(member.client_addr.as_bytes());
            hash.write_i64(i64::from(member.learner));
        }
        for id in &self.removed {
            hash.write_i64(*id as i64);
        }
    }
}

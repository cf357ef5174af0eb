//! Waiting for members to catch up, and reading what each one holds, so a
//! test can compare the members after a fault.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use fenced_client::pb::{KeyValue, RangeRequest, StatusResponse};

use crate::{Cluster, wait_for};

/// Everything one member holds, read serializably from its applied state.
/// Its `Debug` output shows keys and values as text, one key per line, so a
/// failed comparison can be read.
#[derive(Clone, PartialEq, Eq)]
pub struct Contents {
    /// The keyspace revision the read reflects.
    pub revision: i64,
    /// Every key, in key order.
    pub kvs: Vec<KeyValue>,
}

impl fmt::Debug for Contents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "revision {}, {} keys", self.revision, self.kvs.len())?;
        for kv in &self.kvs {
            write!(
                f,
                "\n  {:?} = {:?} (create {}, mod {}, version {}, lease {})",
                String::from_utf8_lossy(&kv.key),
                String::from_utf8_lossy(&kv.value),
                kv.create_revision,
                kv.mod_revision,
                kv.version,
                kv.lease
            )?;
        }
        Ok(())
    }
}

impl Cluster {
    /// Waits until a leader is agreed on *and* has committed an entry of its
    /// own term, then returns its id and commit index. That commit index
    /// covers every write the cluster acknowledged before the call.
    ///
    /// A linearizable read through the leader is the proof of the second
    /// part: ReadIndex only completes once the leader has committed in its
    /// term. (A leader fresh from an election may report a commit index
    /// below entries its predecessor committed.)
    pub async fn leader_commit_index(&self, timeout: Duration) -> anyhow::Result<(u64, u64)> {
        wait_for(
            timeout,
            "a leader that has committed in its term",
            || async {
                let leader = self.wait_for_leader(timeout).await?;
                self.client_of(leader)
                    .range(RangeRequest {
                        prefix: true,
                        count_only: true,
                        ..RangeRequest::default()
                    })
                    .await
                    .with_context(|| format!("linearizable read on leader {leader}"))?;
                let status = self.status(leader).await?;
                ensure!(
                    status.leader == leader,
                    "member {leader} no longer leads (it names {})",
                    status.leader
                );
                anyhow::Ok((leader, status.commit_index))
            },
        )
        .await
    }

    /// Waits until member `id` has applied at least `index`; returns its
    /// status.
    pub async fn wait_applied(
        &self,
        id: u64,
        index: u64,
        timeout: Duration,
    ) -> anyhow::Result<StatusResponse> {
        let what = format!("member {id} to apply index {index}");
        wait_for(timeout, &what, || async {
            let status = self.status(id).await?;
            ensure!(
                status.applied_index >= index,
                "member {id} applied {} (commit {}, leader {})",
                status.applied_index,
                status.commit_index,
                status.leader
            );
            anyhow::Ok(status)
        })
        .await
    }

    /// Waits until every running member has applied everything the leader
    /// has committed and all of them report the same applied index and
    /// revision; returns their statuses.
    pub async fn wait_converged(
        &self,
        timeout: Duration,
    ) -> anyhow::Result<BTreeMap<u64, StatusResponse>> {
        let (_, commit) = self.leader_commit_index(timeout).await?;
        let live: Vec<u64> = self.ids().filter(|&id| self.is_live(id)).collect();
        for &id in &live {
            self.wait_applied(id, commit, timeout).await?;
        }
        wait_for(timeout, "every member at one applied index", || async {
            let mut statuses = BTreeMap::new();
            for &id in &live {
                statuses.insert(id, self.status(id).await?);
            }
            let first = statuses.values().next().context("no member is running")?;
            let same = statuses
                .values()
                .all(|s| s.applied_index == first.applied_index && s.revision == first.revision);
            let seen: Vec<String> = statuses
                .iter()
                .map(|(id, s)| {
                    format!(
                        "member {id}: applied {} rev {}",
                        s.applied_index, s.revision
                    )
                })
                .collect();
            ensure!(same, "{}", seen.join("; "));
            anyhow::Ok(statuses)
        })
        .await
    }

    /// Waits as [`Cluster::wait_converged`] does, then reads every running
    /// member's state digest, and returns the statuses once all of them
    /// describe the same applied index. The caller compares the digests.
    ///
    /// An entry can commit between two digest reads even when no client
    /// writes: a restarted member publishes its addresses once it knows a
    /// leader (`MemberPublish`), possibly after the others were read. Digests
    /// of different indexes say nothing, so such a read is taken again.
    pub async fn digests_at_one_index(
        &self,
        timeout: Duration,
    ) -> anyhow::Result<BTreeMap<u64, StatusResponse>> {
        wait_for(timeout, "every member's digest at one applied index", || async {
            let converged = self.wait_converged(timeout).await?;
            let mut statuses = BTreeMap::new();
            for &id in converged.keys() {
                statuses.insert(id, self.status_with_digest(id).await?);
            }
            let indexes: Vec<(u64, u64)> = statuses
                .iter()
                .map(|(&id, s)| (id, s.applied_index))
                .collect();
            ensure!(
                indexes.windows(2).all(|w| w[0].1 == w[1].1),
                "an entry committed while the digests were read: (member, applied index) {indexes:?}"
            );
            anyhow::Ok(statuses)
        })
        .await
    }

    /// Every key member `id` holds, read serializably (from its applied
    /// state, without asking the leader), with one request and no retry.
    pub async fn contents(&self, id: u64) -> anyhow::Result<Contents> {
        let response = self
            .client_of(id)
            .range(RangeRequest {
                prefix: true,
                serializable: true,
                ..RangeRequest::default()
            })
            .await
            .with_context(|| format!("serializable read of every key on member {id}"))?;
        let revision = response
            .header
            .with_context(|| format!("member {id} sent no header"))?
            .revision;
        Ok(Contents {
            revision,
            kvs: response.kvs,
        })
    }
}

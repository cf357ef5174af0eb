//! Joining a running cluster, and keeping this member's entry in the member
//! table right.
//!
//! `fenced --join HOST:PORT` on a new data dir asks the cluster (through any
//! member's client address) to add this member as a learner, then starts
//! with an empty log: the leader sends it a snapshot, then the log. Unless
//! `--learner` is given, the member then asks to be promoted until the
//! leader finds it caught up. Every member publishes its addresses into the
//! member table once it runs, so `member list` and later joiners know them.

use std::time::Duration;

use anyhow::{Context, bail};
use fenced_proto::pb::{self, cluster_client::ClusterClient};
use tonic::Code;

use crate::config::Config;
use crate::node::Node;
use crate::node::bootstrap::{Joined, Opened};
use crate::state::Command;

/// How long a joining member keeps asking before it gives up.
const JOIN_PATIENCE: Duration = Duration::from_secs(60);
/// Pause between attempts (not a synchronisation: the cluster is remote).
const RETRY: Duration = Duration::from_millis(500);

async fn connect(addr: &str) -> anyhow::Result<ClusterClient<tonic::transport::Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("cannot reach --join {addr}"))?;
    Ok(ClusterClient::new(channel))
}

/// Checks that a data dir that already belongs to a cluster is not pointed
/// at another one.
pub async fn check_cluster(config: &Config, opened: &Opened) -> anyhow::Result<()> {
    let (Some(join), Some(recorded)) = (&config.join, opened.cluster_id()) else {
        return Ok(());
    };
    let Ok(mut client) = connect(join).await else {
        tracing::warn!(%join, "cannot reach --join to check the cluster id; resuming anyway");
        return Ok(());
    };
    let status = client
        .status(pb::StatusRequest::default())
        .await?
        .into_inner();
    let theirs = status.header.map_or(0, |h| h.cluster_id);
    if theirs != recorded {
        bail!(
            "data dir {} belongs to cluster {recorded:016x}, but --join {join} is a member of \
             cluster {theirs:016x}; use a new --data-dir to join that cluster",
            config.data_dir.display()
        );
    }
    Ok(())
}

/// Asks the cluster at `--join` to add this member as a learner.
pub async fn join(config: &Config) -> anyhow::Result<Joined> {
    let join = config.join.as_deref().context("no --join address")?;
    let peer_addr = config.peer_listen.to_string();
    let client_addr = config.listen.to_string();
    let started = tokio::time::Instant::now();
    loop {
        match try_join(join, config.id, &peer_addr, &client_addr).await {
            Ok(joined) => return Ok(joined),
            Err(Retry::Never(err)) => return Err(err),
            Err(Retry::Later(err)) if started.elapsed() >= JOIN_PATIENCE => {
                return Err(err.context(format!(
                    "could not join through {join} within {}s",
                    JOIN_PATIENCE.as_secs()
                )));
            }
            Err(Retry::Later(err)) => {
                tracing::warn!(%join, cause = %format!("{err:#}"), "join attempt failed; retrying");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

enum Retry {
    Later(anyhow::Error),
    Never(anyhow::Error),
}

async fn try_join(
    join: &str,
    id: u64,
    peer_addr: &str,
    client_addr: &str,
) -> Result<Joined, Retry> {
    let mut client = connect(join).await.map_err(Retry::Later)?;
    let list = client
        .member_list(pb::MemberListRequest {})
        .await
        .map_err(|s| Retry::Later(s.into()))?
        .into_inner();
    let cluster_id = list.header.as_ref().map_or(0, |h| h.cluster_id);
    let mut members = list.members;
    match members.iter().find(|m| m.id == id) {
        // Added already (a previous attempt crashed before recording it).
        Some(m) if m.peer_addr == peer_addr => {}
        Some(m) => {
            return Err(Retry::Never(anyhow::anyhow!(
                "member id {id} is already in the cluster with peer address {}; pick another --id",
                m.peer_addr
            )));
        }
        None => {
            let request = pb::MemberAddRequest {
                id,
                peer_addr: peer_addr.to_string(),
                client_addr: client_addr.to_string(),
                voter: false,
            };
            match client.member_add(request).await {
                Ok(response) => members = response.into_inner().members,
                Err(s)
                    if matches!(
                        s.code(),
                        Code::AlreadyExists | Code::InvalidArgument | Code::NotFound
                    ) || (s.code() == Code::FailedPrecondition
                        && s.message().contains("never reused")) =>
                {
                    return Err(Retry::Never(anyhow::anyhow!(
                        "the cluster refused to add member {id}: {}",
                        s.message()
                    )));
                }
                Err(s) => return Err(Retry::Later(s.into())),
            }
        }
    }
    let peers = members
        .into_iter()
        .filter(|m| m.id != id && !m.peer_addr.is_empty())
        .map(|m| (m.id, m.peer_addr))
        .collect();
    Ok(Joined { cluster_id, peers })
}

/// Makes this member's entry in the member table carry the addresses it
/// listens on (proposed once the member has a leader and is in the table).
pub async fn publish_addresses(node: Node, peer_addr: String, client_addr: String) {
    loop {
        let current = node
            .state()
            .members()
            .get(node.id())
            .map(|m| (m.peer_addr.clone(), m.client_addr.clone()));
        match current {
            Some((peer, client)) if peer == peer_addr && client == client_addr => return,
            Some(_) if node.status().leader() != 0 => {
                let command = Command::MemberPublish {
                    id: node.id(),
                    peer_addr: peer_addr.clone(),
                    client_addr: client_addr.clone(),
                };
                match node.propose(command, node.deadline(None)).await {
                    Ok(_) => continue,
                    Err(err) => tracing::debug!(cause = %err, "could not publish addresses yet"),
                }
            }
            _ => {}
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Asks (through this member, which forwards to the leader) to promote this
/// learner until the leader finds it caught up.
pub async fn promote_when_caught_up(node: Node, client_addr: String) {
    let id = node.id();
    loop {
        tokio::time::sleep(RETRY).await;
        match node.state().members().get(id) {
            Some(m) if !m.learner => {
                tracing::info!("this member is a voter");
                return;
            }
            Some(_) => {}
            // Not caught up to its own addition yet.
            None => continue,
        }
        let Ok(mut client) = connect(&client_addr).await else {
            continue;
        };
        match client.member_promote(pb::MemberPromoteRequest { id }).await {
            Ok(_) => {
                tracing::info!("promoted to voter");
                return;
            }
            Err(s) if s.code() == Code::NotFound => {
                tracing::warn!("this member is not in the cluster any more; not promoting");
                return;
            }
            Err(s) => tracing::debug!(cause = %s.message(), "not promoted yet"),
        }
    }
}

//! The `Cluster` service: Status and MemberList.

use std::collections::BTreeMap;

use fenced_proto::pb::{self, cluster_server::Cluster};
use tonic::{Request, Response, Status};

use crate::api::header;
use crate::node::Node;

/// Serves this member's view of the cluster.
#[derive(Clone, Debug)]
pub struct ClusterService {
    node: Node,
    /// Peer addresses from the static configuration, id → address.
    peers: BTreeMap<u64, String>,
    /// This member's client address, as configured.
    client_addr: String,
}

impl ClusterService {
    /// A service over `node`.
    pub fn new(node: Node, peers: BTreeMap<u64, String>, client_addr: String) -> Self {
        Self {
            node,
            peers,
            client_addr,
        }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let status = self.node.status();
        let revision = self.node.state().revision();
        Ok(Response::new(pb::StatusResponse {
            header: Some(header(&self.node, revision)),
            member_id: self.node.id(),
            leader: status.leader(),
            raft_term: status.term(),
            commit_index: status.commit(),
            applied_index: self.node.applied_index(),
            revision,
            role: status.role().as_str().to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            first_index: status.first_index(),
            last_index: status.last_index(),
        }))
    }

    async fn member_list(
        &self,
        _: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        let members = self
            .peers
            .iter()
            .map(|(id, peer_addr)| pb::Member {
                id: *id,
                peer_addr: peer_addr.clone(),
                // Other members' client addresses join the replicated state
                // with membership changes; until then only ours is known.
                client_addr: if *id == self.node.id() {
                    self.client_addr.clone()
                } else {
                    String::new()
                },
                learner: false,
            })
            .collect();
        let revision = self.node.state().revision();
        Ok(Response::new(pb::MemberListResponse {
            header: Some(header(&self.node, revision)),
            members,
        }))
    }
}

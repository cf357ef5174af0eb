//! The internal `Peer` service: receives batched raft messages.

use fenced_proto::pb::{self, peer_server::Peer};
use tonic::{Request, Response, Status, Streaming};

use crate::node::{Node, transport};

/// Receives other members' raft traffic.
#[derive(Clone, Debug)]
pub struct PeerService {
    node: Node,
}

impl PeerService {
    /// A service feeding `node`.
    pub fn new(node: Node) -> Self {
        Self { node }
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(
        &self,
        request: Request<Streaming<pb::RaftBatch>>,
    ) -> Result<Response<pb::RaftAck>, Status> {
        let mut stream = request.into_inner();
        while let Some(batch) = stream.message().await? {
            if batch.cluster_id != self.node.cluster_id() {
                tracing::warn!(
                    from = batch.from,
                    their_cluster = batch.cluster_id,
                    "refused raft traffic from another cluster"
                );
                return Err(Status::failed_precondition(format!(
                    "cluster id mismatch: this member is in cluster {:016x}, the sender in {:016x}",
                    self.node.cluster_id(),
                    batch.cluster_id
                )));
            }
            for bytes in &batch.messages {
                let msg = transport::decode(bytes).map_err(|e| {
                    Status::invalid_argument(format!("undecodable raft message: {e}"))
                })?;
                if msg.to != self.node.id() {
                    continue;
                }
                self.node.step(msg)?;
            }
        }
        Ok(Response::new(pb::RaftAck {}))
    }

    async fn hello(
        &self,
        request: Request<pb::HelloRequest>,
    ) -> Result<Response<pb::HelloResponse>, Status> {
        let _ = request;
        Ok(Response::new(pb::HelloResponse {
            member_id: self.node.id(),
            cluster_id: self.node.cluster_id(),
        }))
    }
}

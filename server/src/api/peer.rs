//! The internal `Peer` service: receives batched raft messages and chunked
//! snapshots, and answers forwarded lease questions.

use fenced_proto::pb::{self, peer_server::Peer};
use tonic::{Request, Response, Status, Streaming};

use tokio::time::Instant;

use crate::lessor::Lessor;
use crate::node::{Node, transport};

/// Receives other members' raft traffic and forwarded lease questions.
#[derive(Clone, Debug)]
pub struct PeerService {
    node: Node,
    lessor: Lessor,
}

impl PeerService {
    /// A service feeding `node` and answering for its `lessor`.
    pub fn new(node: Node, lessor: Lessor) -> Self {
        Self { node, lessor }
    }

    fn check_cluster(&self, from: u64, cluster_id: u64) -> Result<(), Status> {
        if cluster_id == self.node.cluster_id() {
            return Ok(());
        }
        tracing::warn!(
            from,
            their_cluster = cluster_id,
            "refused peer traffic from another cluster"
        );
        Err(Status::failed_precondition(format!(
            "cluster id mismatch: this member is in cluster {:016x}, the sender in {:016x}",
            self.node.cluster_id(),
            cluster_id
        )))
    }

    /// A removed member is told so (PERMISSION_DENIED), and stops.
    fn check_member(&self, from: u64) -> Result<(), Status> {
        if self.node.state().members().was_removed(from) {
            return Err(Status::permission_denied(format!(
                "member {from} was removed from the cluster"
            )));
        }
        Ok(())
    }
}

/// The largest snapshot a member accepts (the state lives in memory).
const MAX_SNAPSHOT_BYTES: u64 = 16 * 1024 * 1024 * 1024;

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(
        &self,
        request: Request<Streaming<pb::RaftBatch>>,
    ) -> Result<Response<pb::RaftAck>, Status> {
        let mut stream = request.into_inner();
        while let Some(batch) = stream.message().await? {
            self.check_cluster(batch.from, batch.cluster_id)?;
            self.check_member(batch.from)?;
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

    async fn snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::SnapshotAck>, Status> {
        let mut stream = request.into_inner();
        let Some(first) = stream.message().await? else {
            return Err(Status::invalid_argument("empty snapshot stream"));
        };
        self.check_cluster(first.from, first.cluster_id)?;
        self.check_member(first.from)?;
        let mut msg = transport::decode(&first.message)
            .map_err(|e| Status::invalid_argument(format!("undecodable snapshot message: {e}")))?;
        if first.total_bytes > MAX_SNAPSHOT_BYTES {
            return Err(Status::invalid_argument(format!(
                "snapshot of {} bytes is over the limit of {MAX_SNAPSHOT_BYTES}",
                first.total_bytes
            )));
        }
        let total = first.total_bytes as usize;
        // Grown as chunks arrive: an announced size is not memory to reserve.
        let mut data = Vec::with_capacity(total.min(64 * 1024 * 1024));
        data.extend_from_slice(&first.data);
        while let Some(chunk) = stream.message().await? {
            if data.len() + chunk.data.len() > total {
                return Err(Status::invalid_argument(format!(
                    "snapshot data exceeds the announced {total} bytes"
                )));
            }
            data.extend_from_slice(&chunk.data);
        }
        if data.len() != total {
            return Err(Status::invalid_argument(format!(
                "snapshot stream ended after {} of {total} bytes",
                data.len()
            )));
        }
        if msg.to != self.node.id() {
            return Err(Status::invalid_argument(format!(
                "snapshot for member {} reached member {}",
                msg.to,
                self.node.id()
            )));
        }
        tracing::info!(
            from = first.from,
            index = msg.get_snapshot().get_metadata().index,
            bytes = total,
            "received a snapshot"
        );
        msg.mut_snapshot().set_data(data.into());
        self.node.step(msg)?;
        Ok(Response::new(pb::SnapshotAck {}))
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

    async fn lease(
        &self,
        request: Request<pb::LeaseForwardRequest>,
    ) -> Result<Response<pb::LeaseForwardResponse>, Status> {
        let received = Instant::now();
        let req = request.into_inner();
        self.check_cluster(req.from, req.cluster_id)?;
        // Answered only here, never forwarded again: a member that is not
        // the leader any more says UNAVAILABLE and the sender asks again.
        let deadline = received + self.node.status().election_timeout();
        let statuses = self
            .lessor
            .local(&req.ids, req.refresh, received, deadline)
            .await
            .into_iter()
            .map(|a| pb::LeaseForwardStatus {
                id: a.id,
                code: a.code.grpc(),
                granted_ttl: a.granted_ttl,
                remaining_ms: i64::try_from(a.remaining.as_millis()).unwrap_or(i64::MAX),
                message: a.message,
            })
            .collect();
        Ok(Response::new(pb::LeaseForwardResponse { statuses }))
    }
}

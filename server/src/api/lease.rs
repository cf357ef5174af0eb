//! The `Lease` service: grant, revoke, keepalive stream, time to live, list.
//!
//! Grants and revokes are log commands. Keepalives and TTL questions go to
//! the leader's [`Lessor`] (forwarded when this member follows): only the
//! leader's clock decides when a lease ends.

use std::pin::Pin;
use std::time::Duration;

use fenced_proto::pb::{self, lease_server::Lease};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::api::{client_timeout, header};
use crate::lessor::{LeaseCode, Lessor};
use crate::node::Node;
use crate::state::{Command, Response as Applied};

/// Bounds on the TTL a client may ask for.
#[derive(Clone, Copy, Debug)]
pub struct TtlBounds {
    /// Shortest, seconds: 1.5 x the election timeout, rounded up.
    pub min: i64,
    /// Longest, seconds (`--max-lease-ttl`).
    pub max: i64,
}

/// Serves the `Lease` service.
#[derive(Clone, Debug)]
pub struct LeaseService {
    node: Node,
    lessor: Lessor,
    ttl: TtlBounds,
}

impl LeaseService {
    /// A service for `node`, with its lessor.
    pub fn new(node: Node, lessor: Lessor, ttl: TtlBounds) -> Self {
        Self { node, lessor, ttl }
    }

    /// How long one keepalive may wait for a leader before it is answered
    /// UNAVAILABLE in the stream: clients send one every TTL/3 and must hear
    /// back well before their lease could end.
    fn keepalive_wait(&self) -> Duration {
        self.node
            .status()
            .election_timeout()
            .min(Duration::from_secs(1))
    }
}

type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let deadline = self.node.deadline(client_timeout(&request));
        let req = request.into_inner();
        let TtlBounds { min, max } = self.ttl;
        if req.ttl < min || req.ttl > max {
            return Err(Status::invalid_argument(format!(
                "lease TTL {}s is out of range: the minimum is {min}s (1.5 x the election \
                 timeout, so a lease outlives a leader election), the maximum is {max}s \
                 (--max-lease-ttl)",
                req.ttl
            )));
        }
        if req.id < 0 {
            return Err(Status::invalid_argument(format!(
                "lease id {} is negative; use 0 to let the server pick",
                req.id
            )));
        }
        let applied = self
            .node
            .propose(
                Command::LeaseGrant {
                    id: req.id,
                    ttl: req.ttl,
                },
                deadline,
            )
            .await?;
        match applied.response {
            Applied::LeaseGrant { id, ttl } => Ok(Response::new(pb::LeaseGrantResponse {
                header: Some(header(&self.node, applied.revision)),
                id,
                ttl,
            })),
            Applied::Error(err) => Err(err.into()),
            other => Err(unexpected(&other)),
        }
    }

    async fn revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let deadline = self.node.deadline(client_timeout(&request));
        let id = request.into_inner().id;
        if id <= 0 {
            return Err(Status::not_found(format!(
                "lease {id} not found (lease ids are positive)"
            )));
        }
        let applied = self
            .node
            .propose(Command::LeaseRevoke { id }, deadline)
            .await?;
        match applied.response {
            Applied::LeaseRevoke { revision } => Ok(Response::new(pb::LeaseRevokeResponse {
                header: Some(header(&self.node, revision)),
            })),
            Applied::Error(err) => Err(err.into()),
            other => Err(unexpected(&other)),
        }
    }

    type KeepAliveStream = KeepAliveStream;

    async fn keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::KeepAliveStream>, Status> {
        let mut requests = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let service = self.clone();
        tokio::spawn(async move {
            // Answered one at a time, in order. Concurrent streams share
            // ReadIndex rounds inside the node.
            while let Ok(Some(req)) = requests.message().await {
                let deadline = Instant::now() + service.keepalive_wait();
                let answer = service.lessor.query(&[req.id], true, deadline).await.pop();
                let response = match answer {
                    Some(a) => pb::LeaseKeepAliveResponse {
                        header: Some(header(&service.node, service.node.state().revision())),
                        id: req.id,
                        ttl: if a.code == LeaseCode::Ok {
                            a.granted_ttl
                        } else {
                            0
                        },
                        code: a.code.grpc(),
                        message: a.message,
                    },
                    None => continue,
                };
                if tx.send(Ok(response)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let deadline = self.node.deadline(client_timeout(&request));
        let req = request.into_inner();
        let answer = self
            .lessor
            .query(&[req.id], false, deadline)
            .await
            .pop()
            .ok_or_else(|| Status::internal("the lessor gave no answer"))?;
        match answer.code {
            LeaseCode::Ok => {}
            LeaseCode::NotFound => return Err(Status::not_found(answer.message)),
            LeaseCode::Unavailable => return Err(Status::unavailable(answer.message)),
        }
        // The keys come from this member's state, made current first.
        self.node.read_barrier(deadline).await?;
        let state = self.node.state();
        let keys = match state.leases().get(req.id) {
            Some(lease) if req.keys => lease.keys.iter().cloned().collect(),
            Some(_) => Vec::new(),
            None => return Err(Status::not_found(format!("lease {} not found", req.id))),
        };
        Ok(Response::new(pb::LeaseTimeToLiveResponse {
            header: Some(header(&self.node, state.revision())),
            id: req.id,
            ttl: answer.ttl_secs(),
            granted_ttl: answer.granted_ttl,
            keys,
            remaining_ms: i64::try_from(answer.remaining.as_millis()).unwrap_or(i64::MAX),
        }))
    }

    async fn list(
        &self,
        request: Request<pb::LeaseListRequest>,
    ) -> Result<Response<pb::LeaseListResponse>, Status> {
        let deadline = self.node.deadline(client_timeout(&request));
        self.node.read_barrier(deadline).await?;
        let state = self.node.state();
        let leases = state
            .leases()
            .iter()
            .map(|lease| pb::LeaseStatus {
                id: lease.id,
                granted_ttl: lease.ttl,
            })
            .collect();
        Ok(Response::new(pb::LeaseListResponse {
            header: Some(header(&self.node, state.revision())),
            leases,
        }))
    }
}

/// A response of the wrong kind for the command: a bug, reported as one.
pub(crate) fn unexpected(response: &Applied) -> Status {
    Status::internal(format!(
        "the state machine answered with an unexpected response: {response:?}"
    ))
}

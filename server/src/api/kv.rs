//! The `KV` service: Range, Put, DeleteRange, Txn.

use fenced_proto::pb::{self, kv_server::Kv};
use tonic::{Request, Response, Status};

use crate::api::{Limits, client_timeout, convert, header};
use crate::node::{Applied, Node};
use crate::state::{self, Command};

/// Serves the revisioned keyspace.
#[derive(Clone, Debug)]
pub struct KvService {
    node: Node,
    limits: Limits,
    /// TEST ONLY (`--unsafe-local-reads`): skip the read barrier of
    /// linearizable ranges, a deliberate bug for `fenced-chaos` to catch.
    unsafe_local_reads: bool,
}

impl KvService {
    /// A service over `node`.
    pub fn new(node: Node, limits: Limits) -> Self {
        Self {
            node,
            limits,
            unsafe_local_reads: false,
        }
    }

    /// TEST ONLY: serve linearizable ranges from local state without a
    /// read barrier (stale reads on a lagging member). See
    /// `Config::unsafe_local_reads`.
    pub fn with_unsafe_local_reads(mut self, enabled: bool) -> Self {
        if enabled {
            tracing::warn!("--unsafe-local-reads: linearizable ranges skip ReadIndex (test only)");
        }
        self.unsafe_local_reads = enabled;
        self
    }

    async fn propose(
        &self,
        command: Command,
        timeout: Option<std::time::Duration>,
    ) -> Result<Applied, Status> {
        let deadline = self.node.deadline(timeout);
        let applied = self.node.propose(command, deadline).await?;
        if let state::Response::Error(err) = applied.response {
            return Err(err.into());
        }
        Ok(applied)
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let timeout = client_timeout(&request);
        let req = request.into_inner();
        let range = convert::range(&req, &self.limits)?;
        if !req.serializable && !self.unsafe_local_reads {
            self.node.read_barrier(self.node.deadline(timeout)).await?;
        }
        let state = self.node.state();
        let current = state.revision();
        if req.revision != 0 && req.revision != current {
            return Err(Status::invalid_argument(format!(
                "range: only the current revision ({current}) can be read; revision {} was asked \
                 (use 0 for the current one)",
                req.revision
            )));
        }
        let result = state.range(&range);
        drop(state);
        metrics::counter!("fenced_requests_total", "method" => "range").increment(1);
        Ok(Response::new(convert::range_response(
            header(&self.node, result.revision),
            result,
        )))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let timeout = client_timeout(&request);
        let put = convert::put(request.into_inner(), &self.limits)?;
        let applied = self.propose(Command::Put(put), timeout).await?;
        metrics::counter!("fenced_requests_total", "method" => "put").increment(1);
        match applied.response {
            state::Response::Put(r) => Ok(Response::new(convert::put_response(
                header(&self.node, applied.revision),
                r,
            ))),
            other => Err(unexpected(other)),
        }
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let timeout = client_timeout(&request);
        let del = convert::delete(request.into_inner(), &self.limits)?;
        let applied = self.propose(Command::DeleteRange(del), timeout).await?;
        metrics::counter!("fenced_requests_total", "method" => "delete_range").increment(1);
        match applied.response {
            state::Response::DeleteRange(r) => Ok(Response::new(convert::delete_response(
                header(&self.node, applied.revision),
                r,
            ))),
            other => Err(unexpected(other)),
        }
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let timeout = client_timeout(&request);
        let txn = convert::txn(request.into_inner(), &self.limits)?;
        let applied = self.propose(Command::Txn(txn), timeout).await?;
        metrics::counter!("fenced_requests_total", "method" => "txn").increment(1);
        match applied.response {
            state::Response::Txn(r) => Ok(Response::new(convert::txn_response(
                header(&self.node, applied.revision),
                r,
            ))),
            other => Err(unexpected(other)),
        }
    }
}

/// The state machine answered a command with another command's answer: a
/// bug, reported rather than panicking.
fn unexpected(response: state::Response) -> Status {
    tracing::error!(
        ?response,
        "state machine answered with the wrong response kind"
    );
    Status::internal("internal error: unexpected response kind")
}

//! The `Cluster` service: Status, the member list, and membership changes.
//!
//! Membership changes and leadership transfers are decided by the leader:
//! a member that is not the leader forwards the call to the leader's peer
//! address (this service is served on the peer listener too), once. The
//! leader checks the request against the applied member table, then the
//! driver checks raft's side (one change at a time, a learner caught up)
//! before proposing.

use std::net::SocketAddr;

use fenced_proto::pb::{self, cluster_client::ClusterClient, cluster_server::Cluster};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::api::{client_timeout, header};
use crate::node::Node;
use crate::state::MemberChange;

/// Metadata key marking a call one member forwarded to the leader.
const FORWARDED: &str = "fenced-forwarded";

/// Serves this member's view of the cluster and membership changes.
#[derive(Clone, Debug)]
pub struct ClusterService {
    node: Node,
}

/// Where a leader-only call goes.
enum Route {
    /// This member leads.
    Local,
    /// Forward to the leader at this peer address.
    Leader(u64, String),
}

impl ClusterService {
    /// A service over `node`.
    pub fn new(node: Node) -> Self {
        Self { node }
    }

    /// The members once the answer is sent.
    fn members(&self) -> Vec<pb::Member> {
        self.node
            .state()
            .members()
            .iter()
            .map(|m| pb::Member {
                id: m.id,
                peer_addr: m.peer_addr.clone(),
                client_addr: m.client_addr.clone(),
                learner: m.learner,
            })
            .collect()
    }

    fn change_response(&self) -> Response<pb::MemberChangeResponse> {
        let revision = self.node.state().revision();
        Response::new(pb::MemberChangeResponse {
            header: Some(header(&self.node, revision)),
            members: self.members(),
        })
    }

    /// Finds the leader, waiting for one until `deadline`. A forwarded call
    /// is never forwarded again.
    async fn route(&self, forwarded: bool, deadline: Instant) -> Result<Route, Status> {
        let mut leadership = self.node.status().leadership();
        loop {
            let leader = self.node.status().leader();
            if leader == self.node.id() {
                return Ok(Route::Local);
            }
            if leader != 0 {
                if forwarded {
                    return Err(Status::unavailable(format!(
                        "member {} is not the leader any more (leader: {leader}); retry",
                        self.node.id()
                    )));
                }
                let addr = self.node.peer_addr(leader).ok_or_else(|| {
                    Status::unavailable(format!(
                        "the address of leader {leader} is not known yet; retry"
                    ))
                })?;
                return Ok(Route::Leader(leader, addr));
            }
            let changed = tokio::time::timeout_at(deadline, leadership.changed()).await;
            if !matches!(changed, Ok(Ok(()))) {
                return Err(Status::unavailable(
                    "no leader: the cluster is electing one or has lost its quorum; retry",
                ));
            }
        }
    }

    fn deadline<T>(&self, request: &Request<T>) -> Instant {
        self.node.deadline(client_timeout(request))
    }

    /// Connects to the leader's peer listener.
    async fn leader_client(
        &self,
        leader: u64,
        addr: &str,
        deadline: Instant,
    ) -> Result<ClusterClient<tonic::transport::Channel>, Status> {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Status::internal(format!("bad peer address {addr:?}: {e}")))?
            .connect_timeout(std::time::Duration::from_secs(1))
            .timeout(deadline.saturating_duration_since(Instant::now()));
        let channel = endpoint.connect().await.map_err(|e| {
            Status::unavailable(format!("cannot reach leader {leader} at {addr}: {e}"))
        })?;
        Ok(ClusterClient::new(channel))
    }

    async fn add_local(
        &self,
        req: pb::MemberAddRequest,
        deadline: Instant,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        {
            let state = self.node.state();
            let members = state.members();
            if let Some(existing) = members.get(req.id) {
                return Err(Status::already_exists(format!(
                    "member id {} is already in the cluster (peer address {})",
                    req.id, existing.peer_addr
                )));
            }
            if members.was_removed(req.id) {
                return Err(Status::failed_precondition(format!(
                    "member id {} was removed from this cluster; ids are never reused, pick another",
                    req.id
                )));
            }
            for addr in [&req.peer_addr, &req.client_addr] {
                if let Some(user) = members.using_addr(addr).filter(|_| !addr.is_empty()) {
                    return Err(Status::already_exists(format!(
                        "address {addr} is already used by member {}",
                        user.id
                    )));
                }
            }
        }
        let change = MemberChange::Add {
            id: req.id,
            peer_addr: req.peer_addr,
            client_addr: req.client_addr,
            learner: !req.voter,
        };
        self.node.propose_member_change(change, deadline).await?;
        Ok(self.change_response())
    }

    async fn promote_local(
        &self,
        id: u64,
        deadline: Instant,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        match self.node.state().members().get(id) {
            None => return Err(not_a_member(id)),
            Some(m) if !m.learner => {
                return Err(Status::failed_precondition(format!(
                    "member {id} is already a voter"
                )));
            }
            Some(_) => {}
        }
        self.node
            .propose_member_change(MemberChange::Promote { id }, deadline)
            .await?;
        Ok(self.change_response())
    }

    /// Removes `id`. When this member (the leader) is the one to go, it
    /// hands leadership over first and answers UNAVAILABLE: whoever routed
    /// the call here routes it again, to the new leader (this member is
    /// about to stop, so it cannot be the one to relay the answer).
    async fn remove_local(
        &self,
        id: u64,
        deadline: Instant,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        let successor = {
            let state = self.node.state();
            let members = state.members();
            let Some(member) = members.get(id) else {
                return Err(not_a_member(id));
            };
            if !member.learner && members.voters() == 1 {
                return Err(Status::failed_precondition(format!(
                    "member {id} is the last voter; a cluster cannot remove its last voter"
                )));
            }
            members
                .iter()
                .find(|m| !m.learner && m.id != id)
                .map(|m| m.id)
        };
        if id == self.node.id() {
            let Some(successor) = successor else {
                return Err(Status::failed_precondition(format!(
                    "member {id} is the last voter; a cluster cannot remove its last voter"
                )));
            };
            tracing::info!(
                successor,
                "handing leadership over before removing this member"
            );
            self.transfer_and_wait(successor, deadline).await?;
            return Err(Status::unavailable(format!(
                "member {id} led the cluster and handed leadership to member {successor} before \
                 its removal; retry there"
            )));
        }
        self.node
            .propose_member_change(MemberChange::Remove { id }, deadline)
            .await?;
        Ok(self.change_response())
    }

    async fn transfer_and_wait(&self, target: u64, deadline: Instant) -> Result<(), Status> {
        match self.node.state().members().get(target) {
            None => return Err(not_a_member(target)),
            Some(m) if m.learner => {
                return Err(Status::failed_precondition(format!(
                    "member {target} is a learner; promote it before it can lead"
                )));
            }
            Some(_) => {}
        }
        let mut leadership = self.node.status().leadership();
        self.node.transfer_leader(target).await?;
        let moved = tokio::time::timeout_at(deadline, leadership.wait_for(|l| l.leader == target))
            .await
            .is_ok_and(|r| r.is_ok());
        if !moved {
            return Err(Status::deadline_exceeded(format!(
                "leadership did not move to member {target} before the deadline (it may be \
                 behind or unreachable); the current leader is {}",
                self.node.status().leader()
            )));
        }
        Ok(())
    }
}

fn not_a_member(id: u64) -> Status {
    Status::not_found(format!("member {id} is not in the cluster"))
}

fn is_forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED)
}

/// A request to send to the leader: marked forwarded, with what is left of
/// the deadline.
fn forward<T>(message: T, deadline: Instant) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(deadline.saturating_duration_since(Instant::now()));
    request
        .metadata_mut()
        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    request
}

fn check_addr(flag: &str, addr: &str, required: bool) -> Result<(), Status> {
    if addr.is_empty() && !required {
        return Ok(());
    }
    if addr.parse::<SocketAddr>().is_err()
        && addr
            .rsplit_once(':')
            .and_then(|(host, port)| (!host.is_empty()).then_some(port))
            .and_then(|port| port.parse::<u16>().ok())
            .is_none()
    {
        return Err(Status::invalid_argument(format!(
            "{flag} {addr:?} is not HOST:PORT"
        )));
    }
    Ok(())
}

fn check_id(id: u64) -> Result<(), Status> {
    if id == 0 {
        return Err(Status::invalid_argument(
            "member id must be a positive integer",
        ));
    }
    Ok(())
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let status = self.node.status();
        let (revision, copy, state_index) = {
            let (state, index) = self.node.state_at();
            // A copy costs nothing (persistent maps): the digest is computed
            // without holding the state lock the apply loop needs.
            let copy = request.get_ref().digest.then(|| state.clone());
            (state.revision(), copy, index)
        };
        let copy_taken = copy.is_some();
        let digest = match copy {
            Some(copy) => tokio::task::spawn_blocking(move || copy.digest())
                .await
                .map_err(|e| Status::internal(format!("digest task failed: {e}")))?,
            None => 0,
        };
        Ok(Response::new(pb::StatusResponse {
            header: Some(header(&self.node, revision)),
            member_id: self.node.id(),
            leader: status.leader(),
            raft_term: status.term(),
            commit_index: status.commit(),
            // With a digest, the index the digested state reflects (the
            // published applied index can trail the state by a batch).
            applied_index: if copy_taken {
                state_index
            } else {
                self.node.applied_index()
            },
            revision,
            role: status.role().as_str().to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            first_index: status.first_index(),
            last_index: status.last_index(),
            snapshot_index: status.snapshot_index(),
            state_digest: digest,
        }))
    }

    async fn member_list(
        &self,
        _: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        let revision = self.node.state().revision();
        Ok(Response::new(pb::MemberListResponse {
            header: Some(header(&self.node, revision)),
            members: self.members(),
        }))
    }

    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        let deadline = self.deadline(&request);
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        check_id(req.id)?;
        check_addr("peer address", &req.peer_addr, true)?;
        check_addr("client address", &req.client_addr, false)?;
        match self.route(forwarded, deadline).await? {
            Route::Local => self.add_local(req, deadline).await,
            Route::Leader(leader, addr) => {
                let mut client = self.leader_client(leader, &addr, deadline).await?;
                client.member_add(forward(req, deadline)).await
            }
        }
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        let deadline = self.deadline(&request);
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        check_id(req.id)?;
        match self.route(forwarded, deadline).await? {
            Route::Local => self.promote_local(req.id, deadline).await,
            Route::Leader(leader, addr) => {
                let mut client = self.leader_client(leader, &addr, deadline).await?;
                client.member_promote(forward(req, deadline)).await
            }
        }
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        let deadline = self.deadline(&request);
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        check_id(req.id)?;
        let leader = match self.route(forwarded, deadline).await? {
            Route::Local => return self.remove_local(req.id, deadline).await,
            Route::Leader(leader, addr) => {
                let mut client = self.leader_client(leader, &addr, deadline).await?;
                match client.member_remove(forward(req, deadline)).await {
                    Err(status) if status.code() == tonic::Code::Unavailable => leader,
                    answer => return answer,
                }
            }
        };
        // The leader was the member to remove and handed leadership over
        // (maybe to this member): once more, to the new leader.
        let mut leadership = self.node.status().leadership();
        let moved = tokio::time::timeout_at(
            deadline,
            leadership.wait_for(|l| l.leader != leader && l.leader != 0),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        if !moved {
            return Err(Status::unavailable(format!(
                "leader {leader} did not hand leadership over before the deadline; retry"
            )));
        }
        match self.route(false, deadline).await? {
            Route::Local => self.remove_local(req.id, deadline).await,
            Route::Leader(leader, addr) => {
                let mut client = self.leader_client(leader, &addr, deadline).await?;
                client.member_remove(forward(req, deadline)).await
            }
        }
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        let deadline = self.deadline(&request);
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        check_id(req.target)?;
        match self.route(forwarded, deadline).await? {
            Route::Local => {
                self.transfer_and_wait(req.target, deadline).await?;
                let revision = self.node.state().revision();
                Ok(Response::new(pb::TransferLeaderResponse {
                    header: Some(header(&self.node, revision)),
                    leader: req.target,
                }))
            }
            Route::Leader(leader, addr) => {
                let mut client = self.leader_client(leader, &addr, deadline).await?;
                client.transfer_leader(forward(req, deadline)).await
            }
        }
    }
}

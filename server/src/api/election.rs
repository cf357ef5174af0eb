//! The `Election` service: campaign (blocking, FIFO), proclaim, leader,
//! observe, resign.
//!
//! An election is a lock queue (`state/election.rs`), so a campaign waits
//! exactly like an acquire (`lock::wait_for_grant`). Observe is a watch on the
//! election's leader record, served from this member's watch hub: the current
//! leader first, then one response per revision that changed the record.

use std::pin::Pin;

use fenced_proto::pb::{self, election_server::Election};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::api::convert::check_name;
use crate::api::lease::unexpected;
use crate::api::lock::wait_for_grant;
use crate::api::watch::leaderless;
use crate::api::{client_timeout, header};
use crate::node::Node;
use crate::state::{
    AcquireCommand, Command, EventKind, KeyValue, Leader, LockMode, RangeRequest,
    Response as Applied, election_lock_name, leader_record_key, lock_key,
};
use crate::watch::{Ended, Outgoing, WatchSpec};

/// Largest value a candidate may publish, bytes (values travel in every
/// Observe response).
pub const MAX_ELECTION_VALUE_BYTES: usize = 64 * 1024;

/// Serves the `Election` service.
#[derive(Clone, Debug)]
pub struct ElectionService {
    node: Node,
}

impl ElectionService {
    /// A service for `node`.
    pub fn new(node: Node) -> Self {
        Self { node }
    }
}

fn check_value(value: &[u8], what: &str) -> Result<(), Status> {
    if value.len() > MAX_ELECTION_VALUE_BYTES {
        return Err(Status::invalid_argument(format!(
            "{what}: value is {} bytes, the limit is {MAX_ELECTION_VALUE_BYTES} bytes",
            value.len()
        )));
    }
    Ok(())
}

/// Validates a leader key from a proclaim or resign (a resign may pass token
/// 0: withdraw the lease's candidacy, whatever it is).
fn check_leader_key(key: Option<&pb::LeaderKey>, what: &str) -> Result<pb::LeaderKey, Status> {
    let key = key.ok_or_else(|| {
        Status::invalid_argument(format!(
            "{what}: leader is missing; pass the leader key Campaign returned"
        ))
    })?;
    check_name(&key.name, what)?;
    let withdraw = what == "resign" && key.token == 0;
    if (key.token <= 0 && !withdraw) || key.lease <= 0 {
        return Err(Status::invalid_argument(format!(
            "{what}: leader key has token {} and lease {}; both must be positive (use the key Campaign returned; resign also takes token 0 to withdraw a candidacy)",
            key.token, key.lease
        )));
    }
    Ok(key.clone())
}

fn leader_to_pb(leader: &Leader) -> pb::LeaderKey {
    pb::LeaderKey {
        name: leader.name.clone(),
        key: leader.key.clone(),
        token: leader.token,
        lease: leader.lease,
    }
}

/// The leader a leader record describes.
fn leader_from_record(name: &str, record: &KeyValue) -> Leader {
    Leader {
        name: name.to_string(),
        key: lock_key(&election_lock_name(name), record.lease),
        token: record.create_revision,
        lease: record.lease,
        value: record.value.clone(),
    }
}

impl ElectionService {
    fn observation(&self, revision: i64, leader: Option<&Leader>) -> pb::ObserveResponse {
        pb::ObserveResponse {
            header: Some(header(&self.node, revision)),
            revision,
            leader: leader.map(leader_to_pb),
            value: leader.map(|l| l.value.clone()).unwrap_or_default(),
        }
    }
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<pb::ObserveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<pb::CampaignRequest>,
    ) -> Result<Response<pb::CampaignResponse>, Status> {
        let call_timeout = client_timeout(&request);
        let req = request.into_inner();
        check_name(&req.name, "campaign")?;
        check_value(&req.value, "campaign")?;
        if req.lease <= 0 {
            return Err(Status::invalid_argument(format!(
                "campaign: lease {} is not a lease id; grant one with Lease.Grant and keep it alive",
                req.lease
            )));
        }
        if req.wait_timeout_ms < 0 {
            return Err(Status::invalid_argument(format!(
                "campaign: wait_timeout_ms {} is negative (0 waits until the call's deadline)",
                req.wait_timeout_ms
            )));
        }
        let place = AcquireCommand {
            name: election_lock_name(&req.name),
            lease: req.lease,
            mode: LockMode::Exclusive,
            permits: 1,
            try_only: false,
            delay_ms: 0,
        };
        let campaign = Command::ElectionCampaign {
            name: req.name.clone(),
            lease: req.lease,
            value: req.value,
        };
        let (grant, revision) = wait_for_grant(
            &self.node,
            &place,
            campaign,
            req.wait_timeout_ms,
            call_timeout,
        )
        .await?;
        Ok(Response::new(pb::CampaignResponse {
            header: Some(header(&self.node, revision)),
            leader: Some(pb::LeaderKey {
                name: req.name,
                key: grant.key,
                token: grant.token,
                lease: req.lease,
            }),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<pb::ProclaimRequest>,
    ) -> Result<Response<pb::ProclaimResponse>, Status> {
        let deadline = self.node.deadline(client_timeout(&request));
        let req = request.into_inner();
        let key = check_leader_key(req.leader.as_ref(), "proclaim")?;
        check_value(&req.value, "proclaim")?;
        let command = Command::ElectionProclaim {
            name: key.name,
            token: key.token,
            lease: key.lease,
            value: req.value,
        };
        let applied = self.node.propose(command, deadline).await?;
        match applied.response {
            Applied::ElectionProclaim { revision } => Ok(Response::new(pb::ProclaimResponse {
                header: Some(header(&self.node, revision)),
            })),
            Applied::Error(err) => Err(err.into()),
            other => Err(unexpected(&other)),
        }
    }

    async fn leader(
        &self,
        request: Request<pb::LeaderRequest>,
    ) -> Result<Response<pb::LeaderResponse>, Status> {
        let deadline = self.node.deadline(client_timeout(&request));
        let req = request.into_inner();
        check_name(&req.name, "leader")?;
        if !req.serializable {
            self.node.read_barrier(deadline).await?;
        }
        let state = self.node.state();
        match state.leader(&req.name) {
            Some(leader) => Ok(Response::new(pb::LeaderResponse {
                header: Some(header(&self.node, state.revision())),
                leader: Some(leader_to_pb(&leader)),
                value: leader.value,
            })),
            None => Err(Status::not_found(format!(
                "election {:?} has no leader at revision {}",
                req.name,
                state.revision()
            ))),
        }
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        request: Request<pb::ObserveRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let req = request.into_inner();
        check_name(&req.name, "observe")?;
        if req.start_revision < 0 {
            return Err(Status::invalid_argument(format!(
                "observe: start_revision {} is negative (0 starts with the current leader)",
                req.start_revision
            )));
        }
        let mut hub = self.node.watch_hub().open();
        let spec = WatchSpec {
            key: leader_record_key(&req.name),
            prefix: false,
            no_put: false,
            no_delete: false,
            progress_notify: false,
        };
        let (tx, rx) = mpsc::channel(16);
        // The current leader, then the changes after its revision; read in
        // one look at the state, released before anything is awaited. A
        // resume from a revision the history no longer holds is served the
        // same way when the leader record has not changed since that
        // revision: nothing was missed, and the first answer repeats the
        // state the observer already knows.
        let (current, leader, unchanged_since) = {
            let state = self.node.state();
            let record = state
                .range(&RangeRequest {
                    key: leader_record_key(&req.name),
                    ..RangeRequest::default()
                })
                .kvs
                .into_iter()
                .next();
            (
                state.revision(),
                state.leader(&req.name),
                record.map(|r| r.mod_revision),
            )
        };
        let (oldest, _) = self.node.watch_hub().window();
        let start = req.start_revision;
        let from_now = start == 0
            || (start < oldest && unchanged_since.is_some_and(|changed| changed < start));
        let (first, (_, backlog)) = if from_now {
            let created = hub.create(1, spec, current + 1);
            (Some(self.observation(current, leader.as_ref())), created)
        } else {
            (None, hub.create(1, spec, start))
        };
        let service = self.clone();
        let name = req.name;
        tokio::spawn(async move {
            if let Some(first) = first
                && tx.send(Ok(first)).await.is_err()
            {
                return;
            }
            let leaderless = leaderless(service.node.clone());
            tokio::pin!(leaderless);
            loop {
                let out = tokio::select! {
                    biased;
                    () = &mut leaderless => {
                        let _ = tx.send(Err(Status::unavailable(format!(
                            "observe {name:?}: this member has no leader (partitioned or in an election); observe again from the revision after the last one received, on another member"
                        )))).await;
                        return;
                    }
                    ended = hub.control.recv() => {
                        let status = match ended.map(|c| c.ended) {
                            Some(Ended::Compacted { oldest }) => Status::out_of_range(format!(
                                "observe {name:?}: the history window starts at revision {oldest}; observe from 0 for the current leader"
                            )),
                            Some(Ended::TooSlow) => Status::resource_exhausted(format!(
                                "observe {name:?}: this observer fell behind; observe again from the revision after the last one received"
                            )),
                            Some(Ended::Reset) => Status::unavailable(format!(
                                "observe {name:?}: this member caught up from a snapshot; observe again from the revision after the last one received, on another member"
                            )),
                            None => Status::unavailable("member is shutting down"),
                        };
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    out = hub.queue.recv() => out,
                    () = tx.closed() => return,
                };
                let response = match out {
                    Some(Outgoing::Events {
                        revision,
                        events,
                        pick,
                        ..
                    }) => {
                        hub.taken(Some(&backlog));
                        // The record's last change in this revision decides.
                        let last = match &pick {
                            Some(pick) => pick.last().and_then(|i| events.get(*i as usize)),
                            None => events.last(),
                        };
                        let Some(last) = last else { continue };
                        let leader = (last.kind == EventKind::Put)
                            .then(|| leader_from_record(&name, &last.kv));
                        service.observation(revision, leader.as_ref())
                    }
                    Some(Outgoing::Created { .. } | Outgoing::Progress { .. }) => continue,
                    None => {
                        let _ = tx
                            .send(Err(Status::unavailable("member is shutting down")))
                            .await;
                        return;
                    }
                };
                if tx.send(Ok(response)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn resign(
        &self,
        request: Request<pb::ResignRequest>,
    ) -> Result<Response<pb::ResignResponse>, Status> {
        let deadline = self.node.deadline(client_timeout(&request));
        let req = request.into_inner();
        let key = check_leader_key(req.leader.as_ref(), "resign")?;
        let command = Command::ElectionResign {
            name: key.name,
            token: key.token,
            lease: key.lease,
        };
        let applied = self.node.propose(command, deadline).await?;
        match applied.response {
            Applied::ElectionResign { revision } => Ok(Response::new(pb::ResignResponse {
                header: Some(header(&self.node, revision)),
            })),
            Applied::Error(err) => Err(err.into()),
            other => Err(unexpected(&other)),
        }
    }
}

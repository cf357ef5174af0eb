//! In-process fake members for the session, lock, election, watch and
//! fencectl tests: `Lease`, `Lock` and `Election` services whose answers
//! each test chooses, a log of what they were asked, and `Watch` and
//! `Observe` streams that the test itself answers, message by message
//! (see [`WatchCall`] and [`ObserveCall`]).

#![allow(dead_code, unreachable_pub)]

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fenced_client::pb::election_server::{Election, ElectionServer};
use fenced_client::pb::lease_server::{Lease, LeaseServer};
use fenced_client::pb::lock_server::{Lock, LockServer};
use fenced_client::pb::watch_request::RequestUnion;
use fenced_client::pb::watch_server::{Watch, WatchServer};
use fenced_client::pb::{
    AcquireRequest, AcquireResponse, CampaignRequest, CampaignResponse, CheckTokenRequest,
    CheckTokenResponse, DescribeRequest, DescribeResponse, LeaderKey, LeaderRequest,
    LeaderResponse, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest,
    LeaseKeepAliveResponse, LeaseListRequest, LeaseListResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
    ObserveRequest, ObserveResponse, ProclaimRequest, ProclaimResponse, ReleaseRequest,
    ReleaseResponse, ResignRequest, ResignResponse, WatchCreateRequest, WatchRequest,
    WatchResponse,
};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream, UnboundedReceiverStream};
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Code, Request, Response, Status, Streaming};

/// The TTL every keepalive answer reports.
pub const TTL: Duration = Duration::from_secs(1);
/// The id of every lease the fake grants.
pub const LEASE: i64 = 7;

/// How a fake member answers keepalives.
#[derive(Clone, Copy, Debug)]
pub enum KeepAlive {
    /// OK, with the TTL.
    Answer,
    /// Takes the stream and its requests, never answers (a member that is
    /// partitioned from the leader, or frozen after sending headers).
    Silent,
    /// Never even sends the response headers (a frozen process).
    Hang,
    /// Answers every request with this code and TTL 0.
    Code(Code),
}

/// The token of every leadership the fake grants.
pub const LEADER_TOKEN: i64 = 42;

/// What a fake member was asked.
#[derive(Debug, Default)]
pub struct Log {
    pub keepalives: usize,
    pub revokes: Vec<i64>,
    pub acquires: Vec<AcquireRequest>,
    pub releases: Vec<ReleaseRequest>,
    pub campaigns: Vec<CampaignRequest>,
    pub proclaims: Vec<ProclaimRequest>,
    pub resigns: Vec<ResignRequest>,
}

/// A watch stream the fake accepted: the watch it was asked for, and the
/// sender of the stream's responses. Send `Err` to end the stream with that
/// status; drop the sender to end it cleanly.
#[derive(Debug)]
pub struct WatchCall {
    pub create: WatchCreateRequest,
    pub responses: mpsc::UnboundedSender<Result<WatchResponse, Status>>,
}

/// An observe stream the fake accepted, answered like a [`WatchCall`].
#[derive(Debug)]
pub struct ObserveCall {
    pub request: ObserveRequest,
    pub responses: mpsc::UnboundedSender<Result<ObserveResponse, Status>>,
}

#[derive(Clone, Debug)]
struct FakeMember {
    /// Read when a stream opens and for every request, so a test can
    /// change it while a session runs.
    keepalive: Arc<Mutex<KeepAlive>>,
    log: Arc<Mutex<Log>>,
    /// Woken whenever the log changes, for tests that wait for a request
    /// sent in the background.
    logged: Arc<Notify>,
    watch_calls: mpsc::UnboundedSender<WatchCall>,
    observe_calls: mpsc::UnboundedSender<ObserveCall>,
}

impl FakeMember {
    fn keepalive(&self) -> KeepAlive {
        *self.keepalive.lock().unwrap()
    }

    fn record(&self, entry: impl FnOnce(&mut Log)) {
        entry(&mut self.log.lock().unwrap());
        self.logged.notify_waiters();
    }
}

type AnswerStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for FakeMember {
    async fn grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let request = request.into_inner();
        Ok(Response::new(LeaseGrantResponse {
            header: None,
            id: if request.id == 0 { LEASE } else { request.id },
            ttl: request.ttl,
        }))
    }

    async fn revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let id = request.into_inner().id;
        self.record(|log| log.revokes.push(id));
        Ok(Response::new(LeaseRevokeResponse { header: None }))
    }

    type KeepAliveStream = AnswerStream;

    async fn keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<AnswerStream>, Status> {
        if let KeepAlive::Hang = self.keepalive() {
            std::future::pending::<()>().await;
        }
        let mut requests = request.into_inner();
        let (answers, stream) = mpsc::channel(16);
        let member = self.clone();
        tokio::spawn(async move {
            while let Some(Ok(request)) = requests.next().await {
                member.record(|log| log.keepalives += 1);
                let answer = match member.keepalive() {
                    KeepAlive::Answer => LeaseKeepAliveResponse {
                        id: request.id,
                        ttl: TTL.as_secs() as i64,
                        ..LeaseKeepAliveResponse::default()
                    },
                    KeepAlive::Code(code) => LeaseKeepAliveResponse {
                        id: request.id,
                        code: code as i32,
                        message: format!("lease {} says {code:?}", request.id),
                        ..LeaseKeepAliveResponse::default()
                    },
                    KeepAlive::Silent | KeepAlive::Hang => continue,
                };
                if answers.send(Ok(answer)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(stream))))
    }

    /// Lease 7 exists, with two keys; every other is NOT_FOUND.
    async fn time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let request = request.into_inner();
        if request.id != LEASE {
            return Err(Status::not_found(format!("lease {} not found", request.id)));
        }
        let keys = match request.keys {
            true => vec![b"a".to_vec(), b"b".to_vec()],
            false => Vec::new(),
        };
        Ok(Response::new(LeaseTimeToLiveResponse {
            header: None,
            id: LEASE,
            ttl: 9,
            granted_ttl: 10,
            keys,
            remaining_ms: 8500,
        }))
    }

    async fn list(
        &self,
        _: Request<LeaseListRequest>,
    ) -> Result<Response<LeaseListResponse>, Status> {
        Ok(Response::new(LeaseListResponse {
            header: None,
            leases: vec![
                LeaseStatus {
                    id: LEASE,
                    granted_ttl: 10,
                },
                LeaseStatus {
                    id: 8,
                    granted_ttl: 60,
                },
            ],
        }))
    }
}

/// Lock `free` is granted at once with token 42; lock `busy` never is
/// (the acquire waits out its wait, or forever). An acquire with a 1 ms wait
/// is an abandon and gets DEADLINE_EXCEEDED. The first acquire of lock
/// `unknown-once` gets DEADLINE_EXCEEDED at once (a member that could not
/// tell whether its proposal committed); later ones are granted.
#[tonic::async_trait]
impl Lock for FakeMember {
    async fn acquire(
        &self,
        request: Request<AcquireRequest>,
    ) -> Result<Response<AcquireResponse>, Status> {
        let request = request.into_inner();
        self.record(|log| log.acquires.push(request.clone()));
        let tries = self
            .log
            .lock()
            .unwrap()
            .acquires
            .iter()
            .filter(|a| a.name == request.name)
            .count();
        match request.name.as_str() {
            "unknown-once" if tries == 1 => Err(Status::deadline_exceeded(
                "the leadership moved away while this write was forwarded; its outcome is unknown",
            )),
            "free" | "unknown-once" => Ok(Response::new(AcquireResponse {
                token: 42,
                key: format!("__fenced/lock/{}/@{}", request.name, request.lease).into_bytes(),
                ..AcquireResponse::default()
            })),
            _ if request.wait_timeout_ms > 0 => {
                tokio::time::sleep(Duration::from_millis(request.wait_timeout_ms as u64)).await;
                Err(Status::deadline_exceeded(format!(
                    "waited {} ms for lock {}",
                    request.wait_timeout_ms, request.name
                )))
            }
            _ => std::future::pending().await,
        }
    }

    async fn release(
        &self,
        request: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        let request = request.into_inner();
        self.record(|log| log.releases.push(request));
        Ok(Response::new(ReleaseResponse { header: None }))
    }

    async fn describe(
        &self,
        _: Request<DescribeRequest>,
    ) -> Result<Response<DescribeResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn check_token(
        &self,
        _: Request<CheckTokenRequest>,
    ) -> Result<Response<CheckTokenResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }
}

/// Election `free` elects at once with token 42; in `busy` a campaign
/// waits out its wait (or forever). `none` has no leader; every other
/// election is led by lease 7 with value `node-a`. Proclaim and resign
/// succeed for token 42 and are FAILED_PRECONDITION for any other.
#[tonic::async_trait]
impl Election for FakeMember {
    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let request = request.into_inner();
        self.record(|log| log.campaigns.push(request.clone()));
        match request.name.as_str() {
            "busy" if request.wait_timeout_ms > 0 => {
                tokio::time::sleep(Duration::from_millis(request.wait_timeout_ms as u64)).await;
                Err(Status::deadline_exceeded(format!(
                    "waited {} ms in election busy",
                    request.wait_timeout_ms
                )))
            }
            "busy" => std::future::pending().await,
            name => Ok(Response::new(CampaignResponse {
                header: None,
                leader: Some(leader_key(name, request.lease)),
            })),
        }
    }

    async fn proclaim(
        &self,
        request: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let request = request.into_inner();
        self.record(|log| log.proclaims.push(request.clone()));
        current(request.leader.as_ref())?;
        Ok(Response::new(ProclaimResponse { header: None }))
    }

    async fn leader(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let name = request.into_inner().name;
        if name == "none" {
            return Err(Status::not_found(format!("election {name} has no leader")));
        }
        Ok(Response::new(LeaderResponse {
            header: None,
            leader: Some(leader_key(&name, LEASE)),
            value: b"node-a".to_vec(),
        }))
    }

    type ObserveStream = UnboundedReceiverStream<Result<ObserveResponse, Status>>;

    async fn observe(
        &self,
        request: Request<ObserveRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let (responses, stream) = mpsc::unbounded_channel();
        let call = ObserveCall {
            request: request.into_inner(),
            responses,
        };
        self.observe_calls
            .send(call)
            .map_err(|_| Status::internal("no test takes observe calls"))?;
        Ok(Response::new(UnboundedReceiverStream::new(stream)))
    }

    async fn resign(
        &self,
        request: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let request = request.into_inner();
        self.record(|log| log.resigns.push(request.clone()));
        current(request.leader.as_ref())?;
        Ok(Response::new(ResignResponse { header: None }))
    }
}

pub fn leader_key(name: &str, lease: i64) -> LeaderKey {
    LeaderKey {
        name: name.to_owned(),
        key: format!("__fenced/election/{name}/@{lease}").into_bytes(),
        token: LEADER_TOKEN,
        lease,
    }
}

fn current(leader: Option<&LeaderKey>) -> Result<(), Status> {
    match leader {
        Some(leader) if leader.token == LEADER_TOKEN => Ok(()),
        _ => Err(Status::failed_precondition("not the current leader")),
    }
}

/// Hands every watch stream to the test, once its first request (the
/// create) has arrived; the test answers it through the [`WatchCall`].
#[tonic::async_trait]
impl Watch for FakeMember {
    type WatchStream = UnboundedReceiverStream<Result<WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let mut requests = request.into_inner();
        let (responses, stream) = mpsc::unbounded_channel();
        let calls = self.watch_calls.clone();
        tokio::spawn(async move {
            let Some(Ok(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(create)),
            })) = requests.next().await
            else {
                return;
            };
            if calls.send(WatchCall { create, responses }).is_err() {
                return;
            }
            // Keep reading, so the request side stays open as long as the
            // client keeps it open.
            while let Some(Ok(_)) = requests.next().await {}
        });
        Ok(Response::new(UnboundedReceiverStream::new(stream)))
    }
}

/// A running fake member: its address and what it was asked.
pub struct Fake {
    pub endpoint: String,
    pub log: Arc<Mutex<Log>>,
    keepalive: Arc<Mutex<KeepAlive>>,
    logged: Arc<Notify>,
    watch_calls: tokio::sync::Mutex<mpsc::UnboundedReceiver<WatchCall>>,
    observe_calls: tokio::sync::Mutex<mpsc::UnboundedReceiver<ObserveCall>>,
}

impl Fake {
    /// The next watch stream a client opens on this member.
    pub async fn next_watch(&self) -> WatchCall {
        self.watch_calls.lock().await.recv().await.unwrap()
    }

    /// The next observe stream a client opens on this member.
    pub async fn next_observe(&self) -> ObserveCall {
        self.observe_calls.lock().await.recv().await.unwrap()
    }

    /// Waits until the log satisfies `done` (checked now and after every
    /// change), for requests a client sends in the background.
    pub async fn wait_for(&self, done: impl Fn(&Log) -> bool) {
        loop {
            let changed = self.logged.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if done(&self.log.lock().unwrap()) {
                return;
            }
            changed.await;
        }
    }

    pub fn keepalives(&self) -> usize {
        self.log.lock().unwrap().keepalives
    }

    /// Changes how keepalives are answered from now on.
    pub fn set_keepalive(&self, keepalive: KeepAlive) {
        *self.keepalive.lock().unwrap() = keepalive;
    }
}

pub async fn fake(keepalive: KeepAlive) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    let (watch_calls, watch_inbox) = mpsc::unbounded_channel();
    let (observe_calls, observe_inbox) = mpsc::unbounded_channel();
    let member = FakeMember {
        keepalive: Arc::new(Mutex::new(keepalive)),
        log: Arc::default(),
        logged: Arc::default(),
        watch_calls,
        observe_calls,
    };
    let log = member.log.clone();
    let keepalive = member.keepalive.clone();
    let logged = member.logged.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(LeaseServer::new(member.clone()))
            .add_service(LockServer::new(member.clone()))
            .add_service(ElectionServer::new(member.clone()))
            .add_service(WatchServer::new(member))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    Fake {
        endpoint,
        log,
        keepalive,
        logged,
        watch_calls: tokio::sync::Mutex::new(watch_inbox),
        observe_calls: tokio::sync::Mutex::new(observe_inbox),
    }
}

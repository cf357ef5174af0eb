//! In-process fake members for the session, lock and fencectl tests: a
//! `Lease` and a `Lock` service whose answers each test chooses, and a log
//! of what they were asked.

#![allow(dead_code, unreachable_pub)]

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fenced_client::pb::lease_server::{Lease, LeaseServer};
use fenced_client::pb::lock_server::{Lock, LockServer};
use fenced_client::pb::{
    AcquireRequest, AcquireResponse, CheckTokenRequest, CheckTokenResponse, DescribeRequest,
    DescribeResponse, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest,
    LeaseKeepAliveResponse, LeaseListRequest, LeaseListResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
    ReleaseRequest, ReleaseResponse,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
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

/// What a fake member was asked.
#[derive(Debug, Default)]
pub struct Log {
    pub keepalives: usize,
    pub revokes: Vec<i64>,
    pub acquires: Vec<AcquireRequest>,
    pub releases: Vec<ReleaseRequest>,
}

#[derive(Clone, Debug)]
struct FakeMember {
    /// Read when a stream opens and for every request, so a test can
    /// change it while a session runs.
    keepalive: Arc<Mutex<KeepAlive>>,
    log: Arc<Mutex<Log>>,
}

impl FakeMember {
    fn keepalive(&self) -> KeepAlive {
        *self.keepalive.lock().unwrap()
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
        self.log
            .lock()
            .unwrap()
            .revokes
            .push(request.into_inner().id);
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
                member.log.lock().unwrap().keepalives += 1;
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
/// is an abandon and gets DEADLINE_EXCEEDED.
#[tonic::async_trait]
impl Lock for FakeMember {
    async fn acquire(
        &self,
        request: Request<AcquireRequest>,
    ) -> Result<Response<AcquireResponse>, Status> {
        let request = request.into_inner();
        self.log.lock().unwrap().acquires.push(request.clone());
        match request.name.as_str() {
            "free" => Ok(Response::new(AcquireResponse {
                token: 42,
                key: format!("__fenced/lock/free/@{}", request.lease).into_bytes(),
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
        self.log.lock().unwrap().releases.push(request.into_inner());
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

/// A running fake member: its address and what it was asked.
pub struct Fake {
    pub endpoint: String,
    pub log: Arc<Mutex<Log>>,
    keepalive: Arc<Mutex<KeepAlive>>,
}

impl Fake {
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
    let member = FakeMember {
        keepalive: Arc::new(Mutex::new(keepalive)),
        log: Arc::default(),
    };
    let log = member.log.clone();
    let keepalive = member.keepalive.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(LeaseServer::new(member.clone()))
            .add_service(LockServer::new(member))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    Fake {
        endpoint,
        log,
        keepalive,
    }
}

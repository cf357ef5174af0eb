//! The client's failover and retry rules, against in-process fake members
//! whose answers each test chooses.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fenced_client::pb::cluster_server::{Cluster, ClusterServer};
use fenced_client::pb::kv_server::{Kv, KvServer};
use fenced_client::pb::{
    DeleteRangeRequest, DeleteRangeResponse, MemberAddRequest, MemberChangeResponse,
    MemberListRequest, MemberListResponse, MemberPromoteRequest, MemberRemoveRequest, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, StatusRequest, StatusResponse,
    TransferLeaderRequest, TransferLeaderResponse, TxnRequest, TxnResponse,
};
use fenced_client::{Client, ClientConfig};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status};

/// How a fake member answers every request.
#[derive(Clone, Copy, Debug)]
enum Behaviour {
    /// Succeeds, with its member id in the header.
    Answer,
    /// Fails with this code.
    Fail(Code),
    /// Never answers.
    Hang,
}

#[derive(Clone, Debug)]
struct FakeMember {
    id: u64,
    behaviour: Behaviour,
    calls: Arc<AtomicUsize>,
}

impl FakeMember {
    async fn answer<T>(
        &self,
        response: impl FnOnce(ResponseHeader) -> T,
    ) -> Result<Response<T>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match self.behaviour {
            Behaviour::Answer => Ok(Response::new(response(ResponseHeader {
                member_id: self.id,
                ..ResponseHeader::default()
            }))),
            Behaviour::Fail(code) => Err(Status::new(code, format!("member {} says no", self.id))),
            Behaviour::Hang => std::future::pending().await,
        }
    }
}

#[tonic::async_trait]
impl Kv for FakeMember {
    async fn range(&self, _: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        self.answer(|header| RangeResponse {
            header: Some(header),
            ..RangeResponse::default()
        })
        .await
    }

    async fn put(&self, _: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        self.answer(|header| PutResponse {
            header: Some(header),
            prev_kv: None,
        })
        .await
    }

    async fn delete_range(
        &self,
        _: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        self.answer(|header| DeleteRangeResponse {
            header: Some(header),
            ..DeleteRangeResponse::default()
        })
        .await
    }

    async fn txn(&self, _: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        self.answer(|header| TxnResponse {
            header: Some(header),
            ..TxnResponse::default()
        })
        .await
    }
}

#[tonic::async_trait]
impl Cluster for FakeMember {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let id = self.id;
        self.answer(|header| StatusResponse {
            header: Some(header),
            member_id: id,
            ..StatusResponse::default()
        })
        .await
    }

    async fn member_list(
        &self,
        _: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        self.answer(|header| MemberListResponse {
            header: Some(header),
            members: Vec::new(),
        })
        .await
    }

    async fn member_add(
        &self,
        _: Request<MemberAddRequest>,
    ) -> Result<Response<MemberChangeResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn member_promote(
        &self,
        _: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberChangeResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn member_remove(
        &self,
        _: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberChangeResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn transfer_leader(
        &self,
        _: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
}

/// A running fake member: its address and how many requests it received.
struct Fake {
    endpoint: String,
    calls: Arc<AtomicUsize>,
}

impl Fake {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

async fn fake(id: u64, behaviour: Behaviour) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    let member = FakeMember {
        id,
        behaviour,
        calls: Arc::default(),
    };
    let calls = member.calls.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(KvServer::new(member.clone()))
            .add_service(ClusterServer::new(member))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    Fake { endpoint, calls }
}

/// An address nothing listens on: bound once, then released.
async fn closed_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().to_string()
}

fn answered_by(response: &PutResponse) -> u64 {
    response.header.as_ref().unwrap().member_id
}

#[tokio::test]
async fn unavailable_fails_over_and_the_next_member_becomes_current() {
    let first = fake(1, Behaviour::Fail(Code::Unavailable)).await;
    let second = fake(2, Behaviour::Answer).await;
    let client = Client::new([&first.endpoint, &second.endpoint]).unwrap();

    assert_eq!(answered_by(&client.put("k", "v").await.unwrap()), 2);
    assert_eq!(client.current_endpoint(), second.endpoint);
    // Sticky: the next request starts at the member that answered.
    client.put("k", "v").await.unwrap();
    assert_eq!((first.calls(), second.calls()), (1, 2));
}

#[tokio::test]
async fn aborted_is_retried() {
    let first = fake(1, Behaviour::Fail(Code::Aborted)).await;
    let second = fake(2, Behaviour::Answer).await;
    let client = Client::new([&first.endpoint, &second.endpoint]).unwrap();
    assert_eq!(answered_by(&client.put("k", "v").await.unwrap()), 2);
}

#[tokio::test]
async fn refused_connections_fail_over() {
    let second = fake(2, Behaviour::Answer).await;
    let client = Client::new([closed_endpoint().await, second.endpoint.clone()]).unwrap();
    assert_eq!(answered_by(&client.put("k", "v").await.unwrap()), 2);
}

#[tokio::test]
async fn other_codes_are_returned_at_once() {
    let first = fake(1, Behaviour::Fail(Code::FailedPrecondition)).await;
    let second = fake(2, Behaviour::Answer).await;
    let client = Client::new([&first.endpoint, &second.endpoint]).unwrap();

    let err = client.put("k", "v").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(err.to_string(), "FailedPrecondition: member 1 says no");
    assert_eq!(second.calls(), 0);
}

#[tokio::test]
async fn the_deadline_ends_retries_and_names_the_last_error() {
    let first = fake(1, Behaviour::Fail(Code::Unavailable)).await;
    let second = fake(2, Behaviour::Fail(Code::Unavailable)).await;
    let client = ClientConfig::new([&first.endpoint, &second.endpoint])
        .request_timeout(Duration::from_millis(300))
        .build()
        .unwrap();

    let started = std::time::Instant::now();
    let err = client.get("k").await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert!(err.to_string().contains("says no"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // Both members were tried, more than once, with backoff in between.
    assert!(first.calls() >= 2 && second.calls() >= 2);
}

#[tokio::test]
async fn without_retry_one_attempt_is_made() {
    let first = fake(1, Behaviour::Fail(Code::Unavailable)).await;
    let second = fake(2, Behaviour::Answer).await;
    let client = ClientConfig::new([&first.endpoint, &second.endpoint])
        .retry(false)
        .build()
        .unwrap();

    assert_eq!(
        client.put("k", "v").await.unwrap_err().code(),
        Code::Unavailable
    );
    assert_eq!((first.calls(), second.calls()), (1, 0));
}

#[tokio::test]
async fn a_silent_member_costs_one_attempt_timeout() {
    let first = fake(1, Behaviour::Hang).await;
    let second = fake(2, Behaviour::Answer).await;
    let client = ClientConfig::new([&first.endpoint, &second.endpoint])
        .attempt_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    assert_eq!(answered_by(&client.put("k", "v").await.unwrap()), 2);

    // Without the cap, the silent member uses up the whole deadline.
    let client = ClientConfig::new([&first.endpoint, &second.endpoint])
        .request_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    assert_eq!(
        client.put("k", "v").await.unwrap_err().code(),
        Code::DeadlineExceeded
    );
}

#[tokio::test]
async fn status_of_asks_only_that_member() {
    let first = fake(1, Behaviour::Answer).await;
    let second = fake(2, Behaviour::Answer).await;
    let closed = closed_endpoint().await;
    let client = Client::new([&first.endpoint, &second.endpoint, &closed]).unwrap();

    assert_eq!(
        client.status_of(&second.endpoint).await.unwrap().member_id,
        2
    );
    assert_eq!(
        client.status_of(&closed).await.unwrap_err().code(),
        Code::Unavailable
    );
    assert_eq!(first.calls(), 0);
    // An endpoint outside the configured list works too.
    let third = fake(3, Behaviour::Answer).await;
    assert_eq!(
        client.status_of(&third.endpoint).await.unwrap().member_id,
        3
    );
}

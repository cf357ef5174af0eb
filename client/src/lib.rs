//! Rust client for fenced.
//!
//! A [`Client`] talks gRPC to a list of fenced members. Any member serves any
//! request (followers forward writes to the leader), so the client keeps one
//! *current* endpoint and only moves to the next one when the current one is
//! unreachable or says it cannot serve the request right now. With
//! [`ClientConfig::prefer_leader`] the current endpoint follows the leader,
//! which saves writes and lock hand-offs the forwarding hop.
//!
//! ```no_run
//! # async fn demo() -> Result<(), fenced_client::Error> {
//! use std::time::Duration;
//! use fenced_client::ClientConfig;
//!
//! let client = ClientConfig::new(["127.0.0.1:7379", "127.0.0.1:7479"])
//!     .request_timeout(Duration::from_secs(2))
//!     .build()?;
//! client.put("greeting", "hello").await?;
//! let kv = client.get("greeting").await?;
//! assert_eq!(kv.map(|kv| kv.value), Some(b"hello".to_vec()));
//! # Ok(())
//! # }
//! ```
//!
//! # Locks
//!
//! A lock is held by a lease, and a [`Session`] is a lease this client keeps
//! alive in the background. Take locks through the session, pass the
//! fencing token to whatever the lock protects, and stop as soon as the
//! session is lost:
//!
//! ```no_run
//! # async fn demo(client: fenced_client::Client) -> Result<(), fenced_client::Error> {
//! use std::time::Duration;
//! use fenced_client::LockOptions;
//!
//! let session = client.session(Duration::from_secs(10)).await?;
//! let options = LockOptions::default().wait_timeout(Duration::from_secs(30));
//! let guard = session.lock_with("jobs/nightly", options).await?;
//! let token = guard.token();
//! tokio::select! {
//!     // The work, which hands `token` to the storage it writes to, so that
//!     // a write from an older holder is refused.
//!     () = async { /* write with `token` */ } => {}
//!     reason = session.lost() => {
//!         eprintln!("lock lost ({reason}); stopping");
//!         return Ok(());
//!     }
//! }
//! guard.release().await?;
//! session.close().await?;
//! # Ok(())
//! # }
//! ```
//!
//! The session is lost once the client cannot be sure the lease is alive:
//! a safety margin before the lease could expire on the server when no
//! keepalive was acknowledged in time, or when the server says the lease is
//! gone. See [`Session`] for the timing.
//!
//! # Elections
//!
//! A campaign is held by a session's lease too. Candidates are elected in
//! the order they campaigned; the leader publishes a value, and its token
//! (the revision it was elected at) is a fencing token like a lock's.
//! Anyone can ask who leads, or follow every change:
//!
//! ```no_run
//! # async fn demo(client: fenced_client::Client) -> Result<(), fenced_client::Error> {
//! use std::time::Duration;
//! use futures::StreamExt as _;
//!
//! let session = client.session(Duration::from_secs(10)).await?;
//! // Waits until elected.
//! let leadership = session.campaign("scheduler", "10.0.0.7:8080").await?;
//! println!("leading with token {}", leadership.token());
//! tokio::select! {
//!     () = async { /* lead, passing `leadership.token()` along */ } => {}
//!     reason = leadership.lost() => {
//!         eprintln!("leadership lost ({reason}); stepping down");
//!         return Ok(());
//!     }
//! }
//! leadership.resign().await?;
//!
//! // Elsewhere: who leads now, and every change from here on.
//! let leader = client.leader("scheduler").await?;
//! let mut changes = client.observe("scheduler").await?;
//! while let Some(observation) = changes.next().await {
//!     let observation = observation?;
//!     let value = observation.leader.map(|leader| leader.value);
//!     println!("at revision {}: {value:?}", observation.revision);
//! }
//! # let _ = leader;
//! # Ok(())
//! # }
//! ```
//!
//! # Watches
//!
//! A watch is a stream of the changes to a key or a prefix, one
//! [`WatchBatch`] per revision. It survives member failures: a broken
//! stream is opened again on the next member from the revision after the
//! last one delivered, so no revision is missed or seen twice.
//!
//! ```no_run
//! # async fn demo(client: fenced_client::Client) -> Result<(), fenced_client::Error> {
//! use futures::StreamExt as _;
//! use fenced_client::EventKind;
//!
//! let mut batches = client.watch("config/").prefix().prev_kv().stream().await?;
//! while let Some(batch) = batches.next().await {
//!     // An error ends the stream: `OUT_OF_RANGE` when the revision to
//!     // resume from left the history window, `DEADLINE_EXCEEDED` when no
//!     // member took the watch back within the reconnect timeout.
//!     for event in batch?.events {
//!         match event.kind {
//!             EventKind::Put => println!("set {:?}", event.kv.key),
//!             EventKind::Delete => println!("deleted {:?}", event.kv.key),
//!         }
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - `config`: [`ClientConfig`], the endpoint list, timeouts and retry
//!   policy, and the builder that turns it into a [`Client`].
//! - `client`: [`Client`], the KV and cluster RPCs, and the retry loop that
//!   every method goes through.
//! - `lease`: the lease RPCs on [`Client`] (grant, revoke, time-to-live,
//!   list).
//! - `session`: [`Session`], a lease kept alive, and its builder.
//! - `lost`: [`SessionStatus`], until when the lease is certainly alive
//!   (pure bookkeeping over instants), and [`Lost`], the signal that it may
//!   no longer be.
//! - `keepalive`: the task behind a session: the `KeepAlive` stream, its
//!   answer timeout and failover between endpoints.
//! - `lock`: the lock RPCs on [`Client`], and the deadline of an acquire.
//! - `guard`: [`LockOptions`], [`Session::lock_with`] and [`LockGuard`],
//!   the grant a session holds; abandoning a cancelled acquire; the
//!   session's claims on lock and election names.
//! - `election`: the election RPCs on [`Client`] ([`Client::leader`],
//!   campaign, proclaim, resign) and [`LeaderInfo`].
//! - `leadership`: [`Session::campaign`], [`Client::campaign`] and
//!   [`Leadership`], the leadership a session holds; withdrawing a
//!   cancelled campaign.
//! - `observe`: [`Client::observe`] and [`ObserveStream`], an election's
//!   [`Observation`]s across reconnects.
//! - `watch`: [`Client::watch`], [`WatchBuilder`] and [`WatchStream`], key
//!   changes as [`WatchBatch`]es across reconnects; `watch::answer`, what
//!   one response on a watch stream means.
//! - `resume`: where a re-created watch or observe stream starts, and the
//!   failover between endpoints of such a stream, with when to give up
//!   (pure bookkeeping).
//! - `endpoint`: parsing endpoint strings and the lazily connected channel
//!   of each endpoint.
//! - `error`: [`Error`], a `tonic::Status` or a configuration problem.
//!
//! # Retries
//!
//! A request is retried on the next endpoint (round-robin, with a short
//! backoff after every full round) when it fails with `UNAVAILABLE` (no leader,
//! shutting down, connection refused), `ABORTED` (the proposal was dropped by a
//! leader change), or a transport error (the connection broke mid-request),
//! until the request deadline passes. Every other code is returned at once.
//! A lock acquire or a campaign is retried the same way (the server finds
//! the lease's queue place again), with a deadline of its wait plus the
//! request timeout.
//!
//! A watch or observe stream that breaks (or that a member cancels with a
//! revision to resume from) is opened again on the next endpoint, with the
//! same backoff, until a member takes it or the reconnect timeout
//! ([`ClientConfig::reconnect_timeout`], the request timeout unless set)
//! passes; it then ends with an error. A stream that stopped answering is
//! found by the connection's keepalive pings.
//!
//! Writes are retried too. Like etcd's client, this means a write whose
//! connection broke after the server received it may be applied twice; use a
//! [`Client::txn`] with a compare on `mod_revision` when that matters.
//!
//! The generated API types are re-exported as [`pb`]: requests and responses
//! are the protobuf messages of package `fenced.v1`, unchanged.

mod client;
mod config;
mod election;
mod endpoint;
mod error;
mod guard;
mod keepalive;
mod leadership;
mod lease;
mod lock;
mod lost;
mod observe;
mod resume;
mod session;
mod watch;

pub use client::Client;
pub use config::{ClientConfig, DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT};
pub use election::LeaderInfo;
pub use error::Error;
/// Generated protobuf types and gRPC stubs of package `fenced.v1`.
pub use fenced_proto::pb;
pub use guard::{LockGuard, LockOptions};
pub use leadership::Leadership;
pub use lost::{Lost, LostReason, SessionStatus};
pub use observe::{Observation, ObserveStream};
pub use session::{DEFAULT_SESSION_TTL, Session, SessionBuilder};
pub use watch::{EventKind, WatchBatch, WatchBuilder, WatchEvent, WatchStream};

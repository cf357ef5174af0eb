//! Rust client for fenced.
//!
//! A [`Client`] talks gRPC to a list of fenced members. Any member serves any
//! request (followers forward writes to the leader), so the client keeps one
//! *current* endpoint and only moves to the next one when the current one is
//! unreachable or says it cannot serve the request right now.
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
//! # Layout
//!
//! - `config`: [`ClientConfig`], the endpoint list, timeouts and retry
//!   policy, and the builder that turns it into a [`Client`].
//! - `client`: [`Client`], one method per RPC, and the retry loop that
//!   every method goes through.
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
//!
//! Writes are retried too. Like etcd's client, this means a write whose
//! connection broke after the server received it may be applied twice; use a
//! [`Client::txn`] with a compare on `mod_revision` when that matters.
//!
//! The generated API types are re-exported as [`pb`]: requests and responses
//! are the protobuf messages of package `fenced.v1`, unchanged.

mod client;
mod config;
mod endpoint;
mod error;

pub use client::Client;
pub use config::{ClientConfig, DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT};
pub use error::Error;
/// Generated protobuf types and gRPC stubs of package `fenced.v1`.
pub use fenced_proto::pb;

//! The fenced gRPC API: generated types and service stubs for package
//! `fenced.v1`, re-exported as [`pb`].
//!
//! **Architecture Invariant:** only this crate defines prost types of the
//! public API; the server and the client convert at their edges.

#![allow(missing_docs, unreachable_pub, missing_debug_implementations)]

/// Generated code for package `fenced.v1` (public API and the internal peer service).
pub mod pb {
    tonic::include_proto!("fenced.v1");
}

/// Encoded file descriptor set, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("fenced_descriptor");

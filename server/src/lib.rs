//! fenced: a distributed lock and leader-election service on Raft.
//!
//! # Layout
//!
//! A request travels: gRPC service in [`api`] → [`node::Node`] (propose or
//! ReadIndex) → the driver task in [`node::driver`] (owns raft-rs's
//! `RawNode`, persists through [`node::storage`], sends through
//! [`node::transport`], applies committed entries to the pure
//! [`state::StateMachine`] and wakes the waiting request).
//!
//! - [`config`]: flags and their validation.
//! - [`node`]: everything that knows about Raft.
//! - [`state`]: the deterministic state machine (no IO, no clock).
//! - [`lessor`]: the leader's clock for leases and lock-delays; proposes
//!   expiries through the log.
//! - [`watch`]: the history window of applied events and the fan-out thread
//!   that feeds watchers (and election observers) without ever blocking the
//!   apply loop.
//! - [`api`]: one tonic service per file; validation and conversion at the edge.
//! - [`http`]: `/metrics` and `/health` beside gRPC on the client address.
//! - [`server`]: wires it all together and runs until SIGTERM.

pub mod api;
pub mod config;
pub mod http;
pub mod join;
pub mod lessor;
pub mod node;
pub mod server;
pub mod state;
pub mod watch;

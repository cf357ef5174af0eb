//! The fenced test harness: real `fenced` processes on loopback, a fault
//! proxy between them, and helpers to wait for what a test expects.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use fenced_tests::Cluster;
//!
//! let cluster = Cluster::start(3).await?;
//! let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
//! cluster.isolate(leader);
//! let new_leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
//! assert_ne!(new_leader, leader);
//! cluster.heal_all();
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - `binaries`: builds `fenced` and `fencectl` once per test process
//!   ([`fenced_bin`], [`fencectl_bin`]).
//! - `cluster`: [`Cluster`] and [`ClusterConfig`]: starting members, the
//!   verbs that break them (kill, stop, pause, cut), clients, and waiting
//!   for a leader.
//! - `member`: one child process, its data dir, log and signals.
//! - `proxy`: [`PeerNetwork`], a TCP proxy per ordered pair of members, so
//!   any two can be cut apart.
//! - `ports`: loopback ports that stay free until a member binds them.
//! - `wait`: [`wait_for`] and [`wait_until`], polling with a deadline; the
//!   harness never sleeps for a fixed time.
//! - `converge`: waiting until members have caught up with the leader
//!   ([`Cluster::wait_converged`]) and reading all a member holds
//!   ([`Cluster::contents`]), to compare members after a fault.
//! - `history`: [`History`], the writes a cluster acknowledged, to check
//!   every member against.
//! - `metrics`: a member's Prometheus metrics ([`Cluster::metric`],
//!   [`Cluster::wait_for_watchers`]), for what only the server can see.
//!
//! A [`Cluster`] prints the last lines of every member's log when it is
//! dropped; the test runner shows that output for failing tests only. Set
//! `FENCED_TEST_KEEP_FILES=1` to also keep the members' data dirs and logs.

mod binaries;
mod cluster;
mod converge;
mod history;
mod member;
mod metrics;
mod ports;
mod proxy;
mod wait;

pub use binaries::{fencectl_bin, fenced_bin};
pub use cluster::{Cluster, ClusterConfig, Joiner};
pub use converge::Contents;
pub use history::History;
pub use proxy::PeerNetwork;
pub use wait::{POLL_INTERVAL, wait_for, wait_until};

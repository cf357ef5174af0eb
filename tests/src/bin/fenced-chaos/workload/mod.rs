//! The workloads: tasks that drive the cluster through `fenced-client`
//! and record every operation, until the run's stop signal.
//!
//! - `register`: reads, writes and compare-and-swaps of a few keys.
//! - `lock`: holders of a few exclusive locks writing to a fenced resource.
//! - `election`: candidates winning and resigning, observers following.
//! - `watch`: writers under a prefix, watchers of the prefix.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::ValueEnum;
use fenced_client::{Client, ClientConfig, Error};
use serde::Serialize;
use tokio::sync::watch;
use tonic::Code;

use crate::nemesis::ClientPauses;
use crate::record::{Outcome, Recorder};

pub(crate) mod election;
pub(crate) mod lock;
pub(crate) mod register;
pub(crate) mod watch_keys;

/// The workloads `--workload` selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum WorkloadKind {
    Register,
    Lock,
    Election,
    Watch,
}

/// The TTL of every session (lock holders, candidates): the shortest the
/// server allows with its default election timeout, so that faults and
/// client pauses make leases expire often.
pub(crate) const LEASE_TTL: Duration = Duration::from_secs(2);

/// What every workload task shares.
#[derive(Clone, Debug)]
pub(crate) struct Context {
    pub(crate) recorder: Arc<Recorder>,
    pub(crate) endpoints: Vec<String>,
    /// Becomes `true` when the workloads must stop issuing operations.
    pub(crate) stop: watch::Receiver<bool>,
    pub(crate) pauses: Arc<ClientPauses>,
    /// Source of values unique in the run.
    values: Arc<AtomicU64>,
}

impl Context {
    pub(crate) fn new(
        recorder: Arc<Recorder>,
        endpoints: Vec<String>,
        stop: watch::Receiver<bool>,
        pauses: Arc<ClientPauses>,
    ) -> Context {
        Context {
            recorder,
            endpoints,
            stop,
            pauses,
            values: Arc::new(AtomicU64::new(1)),
        }
    }

    /// A value no other operation of the run writes.
    pub(crate) fn unique_value(&self) -> u64 {
        self.values.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// A client whose requests go to endpoint `first` first. With `retry`
    /// off every request is one attempt (a retried write may be applied
    /// twice, which the register checker would rightly call a violation);
    /// the client still moves to the next endpoint after a failure.
    pub(crate) fn client(&self, first: usize, retry: bool) -> Client {
        let n = self.endpoints.len();
        let rotated: Vec<String> = (0..n)
            .map(|i| self.endpoints[(first + i) % n].clone())
            .collect();
        let config = ClientConfig::new(rotated)
            .retry(retry)
            .request_timeout(Duration::from_secs(3))
            .attempt_timeout(Duration::from_millis(1500))
            .connect_timeout(Duration::from_millis(500))
            .keepalive(Duration::from_millis(500), Duration::from_secs(1))
            .reconnect_timeout(Duration::from_secs(10));
        match config.build() {
            Ok(client) => client,
            Err(err) => panic!("harness endpoints are well-formed: {err}"),
        }
    }

    /// Waits `pause` or until the stop signal, whichever is first.
    pub(crate) async fn think(&self, pause: Duration) {
        let mut stop = self.stop.clone();
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|stopped| *stopped) => {}
        }
    }
}

/// The outcome of an operation that changes state and returned `err`:
/// certainly failed for errors that say the request was refused, unknown
/// otherwise (a timeout, a broken connection, a lost leader: the change may
/// still commit).
pub(crate) fn write_error(err: &Error) -> Outcome {
    let error = err.to_string();
    match err.code() {
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::NotFound
        | Code::OutOfRange
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::Unimplemented => Outcome::Fail { error },
        _ => Outcome::Unknown { error },
    }
}

/// The outcome of a lock acquire or a campaign that returned `err`:
/// certainly failed only when the server refused it (no such lease, bad
/// input). The client fails them by itself, with `FAILED_PRECONDITION`,
/// when its session is lost, and the server may grant them after that.
pub(crate) fn grant_error(err: &Error) -> Outcome {
    let error = err.to_string();
    match err.code() {
        Code::InvalidArgument | Code::NotFound => Outcome::Fail { error },
        _ => Outcome::Unknown { error },
    }
}

/// The outcome of a read that returned `err`: it changed nothing.
pub(crate) fn read_error(err: &Error) -> Outcome {
    Outcome::Fail {
        error: err.to_string(),
    }
}

/// Parses a value the workloads wrote (decimal text).
pub(crate) fn parse_value(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

//! Server configuration: the command-line flags and their validation.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Flags of the `fenced` binary. Defaults run a single-member cluster.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "fenced",
    version,
    about = "fenced: distributed locks and leader election"
)]
pub struct Config {
    /// This member's id (a positive integer, unique in the cluster).
    #[arg(long, default_value_t = 1)]
    pub id: u64,

    /// Where the raft log, raft state and snapshots live.
    #[arg(long, default_value = "fenced-data")]
    pub data_dir: PathBuf,

    /// Client address: gRPC, plus plain HTTP `GET /metrics` and `GET /health`.
    #[arg(long, default_value = "127.0.0.1:7379")]
    pub listen: SocketAddr,

    /// Address other members reach this member's peer service on.
    #[arg(long, default_value = "127.0.0.1:7380")]
    pub peer_listen: SocketAddr,

    /// The members of a new static cluster, `ID=HOST:PEERPORT,...`. Defaults to
    /// this member alone. Only read when the data dir is new; on restart the
    /// member ids must match what the data dir records.
    #[arg(long)]
    pub initial_cluster: Option<String>,

    /// Join a running cluster through this client address (`HOST:PORT` of any
    /// member): the member is added as a learner, catches up, and is promoted
    /// to voter once caught up (unless `--learner`). Only read when the data
    /// dir is new; a member that already joined just restarts.
    #[arg(long, conflicts_with = "initial_cluster")]
    pub join: Option<String>,

    /// With `--join`: stay a learner (receives the log, never votes).
    #[arg(long, requires = "join")]
    pub learner: bool,

    /// Take a snapshot of the state every this many applied log entries
    /// (etcd's `--snapshot-count` default). A restart re-applies at most
    /// this many entries; each snapshot encodes the whole state.
    #[arg(long, default_value_t = 100_000)]
    pub snapshot_interval: u64,

    /// Log entries kept before the latest snapshot when the log is
    /// compacted, so a follower that lags a little catches up from the log.
    #[arg(long, default_value_t = 5_000)]
    pub snapshot_tail: u64,

    /// Mixed into the cluster id, so two clusters with the same member ids
    /// refuse each other's traffic.
    #[arg(long, default_value = "fenced")]
    pub cluster_token: String,

    /// Raft tick interval in milliseconds.
    #[arg(long, default_value_t = 10)]
    pub tick_ms: u64,

    /// Ticks between leader heartbeats.
    #[arg(long, default_value_t = 10)]
    pub heartbeat_ticks: usize,

    /// Ticks without a leader before an election (randomized up to twice this).
    #[arg(long, default_value_t = 100)]
    pub election_ticks: usize,

    /// Largest key accepted, in bytes.
    #[arg(long, default_value_t = 4096)]
    pub max_key_bytes: usize,

    /// Largest value accepted, in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_value_bytes: usize,

    /// Largest gRPC request accepted, in bytes.
    #[arg(long, default_value_t = 3 * 1024 * 1024 / 2)]
    pub max_request_bytes: usize,

    /// How long a request may wait for a leader, a commit or a read barrier
    /// when the client sets no deadline, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub request_timeout_ms: u64,

    /// Longest lease TTL a client may ask for, in seconds. The shortest is
    /// derived: 1.5 x the election timeout, rounded up to whole seconds, so a
    /// lease always outlives a leader election.
    #[arg(long, default_value_t = 24 * 3600)]
    pub max_lease_ttl: i64,

    /// Revisions of applied events each member keeps in memory for watches
    /// that start in the past, and for resuming a watch or an observer after
    /// a reconnect.
    #[arg(long, default_value_t = 100_000)]
    pub watch_history: usize,

    /// Most bytes the watch history may hold (keys, values and previous
    /// values of its events); the oldest revisions go first.
    #[arg(long, default_value_t = 256 * 1024 * 1024)]
    pub watch_history_bytes: usize,

    /// How often a watch created with `progress_notify` gets a progress
    /// response, in milliseconds. Progress keeps a quiet watch's resume
    /// point inside the history window.
    #[arg(long, default_value_t = 10_000)]
    pub watch_progress_interval_ms: u64,

    /// Threads that run the member's event loop: client and peer traffic
    /// and the raft driver. 1 (the default) runs everything on one thread,
    /// which blocks during each log fsync; that costs the fewest thread
    /// wake-ups and measured fastest on a 2-vCPU machine, except for
    /// delivering events to thousands of watchers (docs/benchmarks.md).
    /// More threads use a work-stealing runtime, the fsync handed off so
    /// the other threads keep serving.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: u16,

    /// Log filter (tracing `EnvFilter` syntax); `RUST_LOG` overrides it.
    #[arg(long, default_value = "info,fjall=warn,lsm_tree=warn")]
    pub log: String,

    /// TEST ONLY, deliberately unsafe: `Range` skips the ReadIndex barrier
    /// and answers from this member's applied state even when the client
    /// asked for a linearizable read, so a lagging or partitioned member
    /// serves stale values. It exists so `fenced-chaos` can prove it catches
    /// such a bug; hidden from `--help`.
    #[arg(long, hide = true)]
    pub unsafe_local_reads: bool,
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Checks the flags against each other; every error names the flag.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError("--id must be a positive integer".into()));
        }
        if self.tick_ms == 0 {
            return Err(ConfigError("--tick-ms must be at least 1".into()));
        }
        if self.heartbeat_ticks == 0 || self.election_ticks <= self.heartbeat_ticks {
            return Err(ConfigError(format!(
                "--election-ticks ({}) must be greater than --heartbeat-ticks ({}), which must be at least 1",
                self.election_ticks, self.heartbeat_ticks
            )));
        }
        if self.watch_history == 0 {
            return Err(ConfigError(
                "--watch-history must be at least 1 revision".into(),
            ));
        }
        if self.watch_progress_interval_ms == 0 {
            return Err(ConfigError(
                "--watch-progress-interval-ms must be at least 1".into(),
            ));
        }
        if self.listen == self.peer_listen {
            return Err(ConfigError(format!(
                "--listen and --peer-listen must differ (both are {})",
                self.listen
            )));
        }
        if self.max_lease_ttl < self.min_lease_ttl() {
            return Err(ConfigError(format!(
                "--max-lease-ttl ({}s) must be at least the minimum lease TTL ({}s, 1.5 x the election timeout)",
                self.max_lease_ttl,
                self.min_lease_ttl()
            )));
        }
        if self.snapshot_interval == 0 {
            return Err(ConfigError(
                "--snapshot-interval must be at least 1 entry".into(),
            ));
        }
        if let Some(join) = &self.join {
            if join
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                return Err(ConfigError(format!(
                    "--join {join:?} must be HOST:PORT (a member's client address)"
                )));
            }
            return Ok(());
        }
        let members = self.initial_members()?;
        if !members.contains_key(&self.id) {
            return Err(ConfigError(format!(
                "--initial-cluster does not list this member's --id {}",
                self.id
            )));
        }
        Ok(())
    }

    /// The initial members: id → peer address.
    pub fn initial_members(&self) -> Result<BTreeMap<u64, String>, ConfigError> {
        let Some(spec) = &self.initial_cluster else {
            return Ok(BTreeMap::from([(self.id, self.peer_listen.to_string())]));
        };
        parse_initial_cluster(spec)
    }

    /// Raft tick interval.
    pub fn tick_interval(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }

    /// Election timeout (the lower bound raft-rs randomizes from).
    pub fn election_timeout(&self) -> Duration {
        self.tick_interval() * self.election_ticks as u32
    }

    /// Shortest lease TTL a client may ask for: 1.5 x the election timeout,
    /// in whole seconds, rounded up.
    pub fn min_lease_ttl(&self) -> i64 {
        let ms = self.election_timeout().as_millis().saturating_mul(3) / 2;
        i64::try_from(ms.div_ceil(1000)).unwrap_or(i64::MAX).max(1)
    }

    /// Default request deadline.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_initial_cluster(spec: &str) -> Result<BTreeMap<u64, String>, ConfigError> {
    let mut members = BTreeMap::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part.split_once('=').ok_or_else(|| {
            ConfigError(format!(
                "--initial-cluster entry {part:?} is not ID=HOST:PORT"
            ))
        })?;
        let id: u64 = id.trim().parse().ok().filter(|id| *id > 0).ok_or_else(|| {
            ConfigError(format!(
                "--initial-cluster entry {part:?}: id must be a positive integer"
            ))
        })?;
        let addr = addr.trim();
        if addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            return Err(ConfigError(format!(
                "--initial-cluster entry {part:?}: address must be HOST:PORT"
            )));
        }
        if members.insert(id, addr.to_string()).is_some() {
            return Err(ConfigError(format!(
                "--initial-cluster lists id {id} twice"
            )));
        }
    }
    if members.is_empty() {
        return Err(ConfigError("--initial-cluster is empty".into()));
    }
    Ok(members)
}

/// The cluster id: a stable hash (FNV-1a) of the token and the sorted
/// initial member ids. Addresses are left out on purpose, so a member may
/// reach a peer through a different address (a proxy, a new IP).
pub fn cluster_id(token: &str, member_ids: impl IntoIterator<Item = u64>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    feed(token.as_bytes());
    for id in member_ids {
        feed(&id.to_be_bytes());
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_initial_cluster() {
        let m = parse_initial_cluster("1=127.0.0.1:1, 2=h:2").unwrap();
        assert_eq!(m.get(&1).map(String::as_str), Some("127.0.0.1:1"));
        assert_eq!(m.get(&2).map(String::as_str), Some("h:2"));
        for bad in ["", "1", "0=a:1", "x=a:1", "1=a", "1=a:1,1=b:2", "1=a:99999"] {
            assert!(
                parse_initial_cluster(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn cluster_id_ignores_addresses_but_not_ids_or_token() {
        let a = cluster_id("t", [1, 2, 3]);
        assert_eq!(a, cluster_id("t", [1, 2, 3]));
        assert_ne!(a, cluster_id("t", [1, 2]));
        assert_ne!(a, cluster_id("u", [1, 2, 3]));
    }
}

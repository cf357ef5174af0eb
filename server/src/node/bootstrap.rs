//! Starting a member: open the data dir, check it against the flags, load
//! the latest snapshot, build the raft node, and start the driver, apply and
//! snapshot threads.
//!
//! A new member of a static cluster (`--initial-cluster`) starts from a
//! bootstrap snapshot at index 1: the empty state with the initial voters.
//! Every initial member builds the same one, so the log starts at index 2
//! everywhere, and a member added later (which starts empty) always catches
//! up from a snapshot, which carries the configuration, never from entry 1.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use anyhow::{Context, bail};
use fjall::{Keyspace, KeyspaceCreateOptions, PersistMode};
use raft::eraftpb::{Snapshot, SnapshotMetadata};
use raft::{RawNode, Storage as _};
use tokio::sync::watch;

use crate::config::{Config, cluster_id};
use crate::node::apply::{Applier, SnapshotPolicy};
use crate::node::driver::{Driver, Stopped};
use crate::node::read_index::ReadIndexBatcher;
use crate::node::snapshots::{Snapshotter, conf_state_of};
use crate::node::storage::{FjallStorage, StorageError};
use crate::node::transport::{Transport, TransportContext};
use crate::node::{DriverMsg, Node, RaftStatus, Shared, logger, proposals};
use crate::state::{MemberTable, StateMachine, snapshot};

/// A started member's core: the handle and the driver's task.
#[derive(Debug)]
pub struct Started {
    /// The handle for the API layer.
    pub node: Node,
    /// The driver's task; its result says why it stopped, or a storage
    /// failure.
    pub driver: tokio::task::JoinHandle<Result<Stopped, StorageError>>,
}

/// What a data dir records about the member it belongs to.
const META_MEMBER_ID: &str = "member_id";
const META_CLUSTER_ID: &str = "cluster_id";
const META_MEMBERS: &str = "initial_member_ids";
/// Set on a member that joined a running cluster: the peers it was told
/// about (`id=addr,...`), to reach before any snapshot arrives.
const META_JOINED: &str = "joined_peers";

/// A data dir opened, before the member starts.
pub struct Opened {
    storage: FjallStorage,
    meta: Keyspace,
    /// The recorded identity: (member id, cluster id).
    recorded: Option<(u64, u64)>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("recorded", &self.recorded)
            .finish_non_exhaustive()
    }
}

/// What a member that joins learned from the cluster.
#[derive(Clone, Debug)]
pub struct Joined {
    /// The cluster's id.
    pub cluster_id: u64,
    /// Every member's id and peer address.
    pub peers: BTreeMap<u64, String>,
}

impl Opened {
    /// The cluster this data dir belongs to, if it belongs to one yet.
    pub fn cluster_id(&self) -> Option<u64> {
        self.recorded.map(|(_, cluster)| cluster)
    }

    /// Whether the member must ask a cluster to add it (`--join` on a new
    /// data dir).
    pub fn needs_join(&self, config: &Config) -> bool {
        config.join.is_some() && self.recorded.is_none()
    }
}

/// Opens the data dir (creating it) and reads what it records.
pub fn open(config: &Config) -> anyhow::Result<Opened> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create --data-dir {}", config.data_dir.display()))?;
    let db_dir = config.data_dir.join("db");
    let storage = FjallStorage::open(&db_dir).with_context(|| {
        format!(
            "cannot open the raft storage in {} (is another fenced running on this --data-dir?)",
            db_dir.display()
        )
    })?;
    let meta = storage
        .database()
        .keyspace("member", KeyspaceCreateOptions::default)?;
    let recorded = match (meta.get(META_MEMBER_ID)?, meta.get(META_CLUSTER_ID)?) {
        (Some(id), Some(cluster)) => Some((read_u64(&id)?, read_u64(&cluster)?)),
        (None, _) if storage.is_initialized() => {
            bail!(
                "data dir {} holds raft state but no member record; it is damaged",
                config.data_dir.display()
            )
        }
        _ => None,
    };
    Ok(Opened {
        storage,
        meta,
        recorded,
    })
}

/// Starts the member's core on an opened data dir. `joined` is the answer
/// of the cluster this member just asked to add it. Must run inside a tokio
/// runtime (peer tasks are spawned on it).
pub fn start(config: &Config, opened: Opened, joined: Option<Joined>) -> anyhow::Result<Started> {
    let Opened {
        mut storage,
        meta,
        recorded,
    } = opened;
    let dir = config.data_dir.display().to_string();
    let db = storage.database().clone();
    let (cluster_id, overrides) = match (recorded, joined) {
        (None, Some(joined)) => {
            record_identity(
                &db,
                &meta,
                config.id,
                joined.cluster_id,
                None,
                Some(&joined.peers),
            )?;
            tracing::info!(cluster_id = joined.cluster_id, peers = ?joined.peers, "joined the cluster as a new member");
            (joined.cluster_id, BTreeMap::new())
        }
        (None, None) => {
            let members = config.initial_members()?;
            let cluster_id = cluster_id(&config.cluster_token, members.keys().copied());
            record_identity(&db, &meta, config.id, cluster_id, Some(&members), None)?;
            (cluster_id, members)
        }
        (Some((recorded_id, recorded_cluster)), _) => {
            if recorded_id != config.id {
                bail!(
                    "data dir {dir} belongs to member {recorded_id}, but --id {} was given; \
                     use the matching --id or another --data-dir",
                    config.id
                );
            }
            let overrides = check_restart(&meta, config, recorded_cluster, &dir)?;
            (recorded_cluster, overrides)
        }
    };
    let is_joiner = meta.get(META_JOINED)?.is_some();
    if !is_joiner && !storage.is_initialized() {
        // Also after a crash between recording the identity and this.
        bootstrap(&mut storage, &overrides)?;
        tracing::info!(cluster_id, members = ?overrides, "bootstrapped a new member");
    }
    let joined_peers = meta
        .get(META_JOINED)?
        .map(|v| crate::config::parse_initial_cluster(&String::from_utf8_lossy(&v)))
        .transpose()?
        .unwrap_or_default();

    // The state starts from the latest snapshot; raft re-delivers the
    // committed entries after it.
    let (state, applied, applied_term) = match storage.snapshot_metadata().cloned() {
        Some(meta) => {
            let started = std::time::Instant::now();
            let data = storage.snapshot_data(meta.index)?;
            let state = snapshot::decode(&data).with_context(|| {
                format!(
                    "the snapshot at index {} in {dir} is unreadable",
                    meta.index
                )
            })?;
            tracing::info!(
                index = meta.index,
                revision = state.revision(),
                bytes = data.len(),
                load_ms = started.elapsed().as_millis() as u64,
                "loaded the latest snapshot"
            );
            (state, meta.index, meta.term)
        }
        None if storage.is_initialized() => bail!(
            "data dir {dir} has raft state but no snapshot: it was written by an older fenced \
             that this version cannot read; start the member with a new --data-dir (it catches up)"
        ),
        None => (StateMachine::new(), 0, 0),
    };
    tracing::info!(
        cluster_id,
        first_index = storage.first_index().unwrap_or(0),
        last_index = storage.last_index().unwrap_or(0),
        applied,
        "opened the data dir"
    );

    let raft_config = raft::Config {
        id: config.id,
        election_tick: config.election_ticks,
        heartbeat_tick: config.heartbeat_ticks,
        // raft-rs randomizes the election timeout in [min, max). Its default
        // max is 2x, so detecting a dead leader could take 2 s at the 1 s
        // default; 1.5x keeps failover well under 3 s even when an fsync
        // stalls for a few hundred ms, and pre-vote keeps split votes rare.
        min_election_tick: config.election_ticks,
        max_election_tick: config.election_ticks + config.election_ticks / 2,
        // The state machine starts from the snapshot; entries after it are
        // re-applied.
        applied,
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        check_quorum: true,
        // The driver tells followers about commits itself, batched
        // (`Driver::notice_commit`).
        skip_bcast_commit: true,
        pre_vote: true,
        batch_append: true,
        ..Default::default()
    };
    raft_config
        .validate()
        .context("invalid raft configuration")?;
    let snapshot_writer = storage.snapshot_writer();
    let mut raw = RawNode::new(&raft_config, storage, &logger::raft_logger())
        .context("cannot start the raft node")?;
    // A sole voter need not wait an election timeout to lead.
    let voters = raw.store().initial_state()?.conf_state.voters;
    if voters == [config.id] {
        raw.campaign().context("cannot campaign")?;
    }

    let mut peer_overrides: BTreeMap<u64, String> = joined_peers;
    peer_overrides.extend(overrides);
    peer_overrides.remove(&config.id);
    let revision = state.revision();
    let shared = Arc::new(Shared {
        id: config.id,
        cluster_id,
        proposals: proposals::Proposals::new(config.id),
        applied: watch::Sender::new(applied),
        state_index: std::sync::atomic::AtomicU64::new(applied),
        status: RaftStatus::new(config.election_timeout()),
        lock_waits: Default::default(),
        peers: RwLock::new(BTreeMap::new()),
        peer_overrides,
        state: RwLock::new(state),
        watch: crate::watch::WatchHub::start(
            config.watch_history,
            config.watch_history_bytes,
            std::time::Duration::from_millis(config.watch_progress_interval_ms),
        )
        .context("cannot start the watch fan-out thread")?,
    });
    shared.set_peers(
        shared
            .state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .members(),
    );
    if revision > 0 {
        shared.watch.reset(revision);
    }
    shared.status.set_snapshot_index(applied);
    let (inbox_tx, inbox_rx) = tokio::sync::mpsc::unbounded_channel::<DriverMsg>();
    let peers = shared
        .peers
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    let transport = Transport::start(
        TransportContext {
            from: config.id,
            cluster_id,
            inbox: inbox_tx.clone(),
            runtime: tokio::runtime::Handle::current(),
        },
        &peers,
    );

    let policy = SnapshotPolicy {
        interval: config.snapshot_interval,
        last: applied,
        applied: (applied, applied_term),
        snapshotter: Snapshotter::start(snapshot_writer, inbox_tx.clone())
            .context("cannot start the snapshot thread")?,
    };
    let driver = Driver {
        raw,
        inbox: inbox_rx,
        transport,
        applier: Applier::new(shared.clone(), policy),
        shared: shared.clone(),
        reads: ReadIndexBatcher::default(),
        tick: config.tick_interval(),
        snapshot_tail: config.snapshot_tail,
        removed: None,
        told: BTreeMap::new(),
        commit_notice: None,
        notice_now: false,
        unflushed: false,
        parked_change: None,
        multi_thread: tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread,
    };
    let driver = tokio::spawn(driver.run());
    let node = Node {
        shared,
        inbox: inbox_tx,
        default_timeout: config.request_timeout(),
    };
    Ok(Started { node, driver })
}

/// Writes the bootstrap snapshot of a new static cluster: the empty state
/// with `members` as voters, at index 1 term 1.
fn bootstrap(storage: &mut FjallStorage, members: &BTreeMap<u64, String>) -> anyhow::Result<()> {
    let state = StateMachine::bootstrap(MemberTable::bootstrap(members.keys().copied()));
    let meta = SnapshotMetadata {
        index: 1,
        term: 1,
        conf_state: Some(conf_state_of(&state)).into(),
        ..Default::default()
    };
    let mut snapshot = Snapshot::default();
    snapshot.set_metadata(meta);
    snapshot.set_data(snapshot::encode(&state).into());
    storage.apply_snapshot(snapshot)?;
    Ok(())
}

/// Records who a new data dir belongs to.
fn record_identity(
    db: &fjall::Database,
    meta: &Keyspace,
    id: u64,
    cluster_id: u64,
    initial: Option<&BTreeMap<u64, String>>,
    joined: Option<&BTreeMap<u64, String>>,
) -> anyhow::Result<()> {
    meta.insert(META_MEMBER_ID, id.to_be_bytes())?;
    meta.insert(META_CLUSTER_ID, cluster_id.to_be_bytes())?;
    if let Some(members) = initial {
        let ids: Vec<String> = members.keys().map(u64::to_string).collect();
        meta.insert(META_MEMBERS, ids.join(",").as_bytes())?;
    }
    if let Some(peers) = joined {
        let peers: Vec<String> = peers.iter().map(|(id, a)| format!("{id}={a}")).collect();
        meta.insert(META_JOINED, peers.join(",").as_bytes())?;
    }
    db.persist(PersistMode::SyncAll)?;
    Ok(())
}

/// On restart, refuses flags that contradict the record; returns the peer
/// addresses `--initial-cluster` gives for other members.
fn check_restart(
    meta: &Keyspace,
    config: &Config,
    recorded_cluster: u64,
    dir: &str,
) -> anyhow::Result<BTreeMap<u64, String>> {
    let joined = meta.get(META_JOINED)?.is_some();
    if joined || config.join.is_some() {
        // A member that joined has no initial cluster to check; one restarted
        // with `--join` again simply resumes.
        if config.join.is_some() {
            tracing::info!("the data dir already belongs to the cluster; --join is ignored");
        }
        return Ok(BTreeMap::new());
    }
    let members = config.initial_members()?;
    let ids: Vec<String> = members.keys().map(u64::to_string).collect();
    let ids = ids.join(",");
    let recorded_members = meta
        .get(META_MEMBERS)?
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_default();
    if recorded_members != ids {
        bail!(
            "data dir {dir} was created for a cluster of members [{recorded_members}], \
             but --initial-cluster names [{ids}]"
        );
    }
    let cluster = cluster_id(&config.cluster_token, members.keys().copied());
    if recorded_cluster != cluster {
        bail!(
            "data dir {dir} belongs to cluster {recorded_cluster:016x}, but the flags give cluster \
             {cluster:016x} (check --cluster-token)"
        );
    }
    Ok(members)
}

fn read_u64(bytes: &[u8]) -> anyhow::Result<u64> {
    let arr: [u8; 8] = bytes
        .try_into()
        .context("corrupt member record in the data dir")?;
    Ok(u64::from_be_bytes(arr))
}

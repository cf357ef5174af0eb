//! Starting a member: open the data dir, check it against the flags, build
//! the raft node, and start the driver and apply threads.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, mpsc};
use std::thread::JoinHandle;

use anyhow::{Context, bail};
use fjall::{KeyspaceCreateOptions, PersistMode};
use raft::eraftpb::ConfState;
use raft::{RawNode, Storage as _};
use tokio::sync::watch;

use crate::config::{Config, cluster_id};
use crate::node::driver::Driver;
use crate::node::read_index::ReadIndexBatcher;
use crate::node::storage::FjallStorage;
use crate::node::transport::{Transport, TransportContext};
use crate::node::{DriverMsg, Node, RaftStatus, Shared, apply, logger, proposals};
use crate::state::StateMachine;

/// A started member's core: the handle and its threads.
#[derive(Debug)]
pub struct Started {
    /// The handle for the API layer.
    pub node: Node,
    /// Driver thread; its result is a storage failure, if any.
    pub driver: JoinHandle<anyhow::Result<()>>,
    /// Apply thread.
    pub apply: JoinHandle<()>,
    /// Peer addresses as configured (id → address), this member included.
    pub peers: BTreeMap<u64, String>,
}

/// What a data dir records about the member it belongs to.
const META_MEMBER_ID: &str = "member_id";
const META_CLUSTER_ID: &str = "cluster_id";
const META_MEMBERS: &str = "initial_member_ids";

/// Opens the data dir and starts the member's core. Must run inside a tokio
/// runtime (peer tasks are spawned on it).
pub fn start(config: &Config) -> anyhow::Result<Started> {
    let members = config.initial_members()?;
    let cluster_id = cluster_id(&config.cluster_token, members.keys().copied());
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create --data-dir {}", config.data_dir.display()))?;
    let db_dir = config.data_dir.join("db");
    let mut storage = FjallStorage::open(&db_dir)
        .with_context(|| format!("cannot open the raft storage in {}", db_dir.display()))?;
    check_or_record_identity(&storage, config, cluster_id, &members)?;
    if !storage.is_initialized() {
        let voters: Vec<u64> = members.keys().copied().collect();
        storage.initialize_with_conf_state(ConfState::from((voters, vec![])))?;
        tracing::info!(cluster_id, members = ?members, "bootstrapped a new member");
    } else {
        tracing::info!(
            cluster_id,
            first_index = storage.first_index().unwrap_or(0),
            last_index = storage.last_index().unwrap_or(0),
            "resuming from the data dir"
        );
    }

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
        // Entries are re-applied from the start of the log on every start:
        // the state machine lives in memory until snapshots land.
        applied: 0,
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        batch_append: true,
        ..Default::default()
    };
    raft_config
        .validate()
        .context("invalid raft configuration")?;
    let mut raw = RawNode::new(&raft_config, storage, &logger::raft_logger())
        .context("cannot start the raft node")?;
    // A sole voter need not wait an election timeout to lead.
    let voters = raw.store().initial_state()?.conf_state.voters;
    if voters == [config.id] {
        raw.campaign().context("cannot campaign")?;
    }

    let shared = Arc::new(Shared {
        id: config.id,
        cluster_id,
        proposals: proposals::Proposals::new(config.id),
        state: RwLock::new(StateMachine::new()),
        applied: watch::Sender::new(0),
        status: RaftStatus::new(config.election_timeout()),
        lock_waits: Default::default(),
        peers: RwLock::new(members.clone()),
        watch: crate::watch::WatchHub::start(
            config.watch_history,
            config.watch_history_bytes,
            std::time::Duration::from_millis(config.watch_progress_interval_ms),
        )
        .context("cannot start the watch fan-out thread")?,
    });
    let (inbox_tx, inbox_rx) = mpsc::channel::<DriverMsg>();
    let (apply_tx, apply_rx) = mpsc::channel();

    let peers: BTreeMap<u64, String> = members
        .iter()
        .filter(|(id, _)| **id != config.id)
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    let transport = Transport::start(
        TransportContext {
            from: config.id,
            cluster_id,
            inbox: inbox_tx.clone(),
            runtime: tokio::runtime::Handle::current(),
        },
        &peers,
    );

    let apply = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("fenced-apply".into())
            .spawn(move || apply::run(shared, apply_rx))?
    };
    let driver = Driver {
        raw,
        inbox: inbox_rx,
        transport,
        apply_tx,
        shared: shared.clone(),
        reads: ReadIndexBatcher::default(),
        tick: config.tick_interval(),
    };
    let driver = std::thread::Builder::new()
        .name("fenced-raft".into())
        .spawn(move || {
            driver
                .run()
                .map_err(|err| anyhow::anyhow!("raft storage failed: {err}"))
        })?;

    let node = Node {
        shared,
        inbox: inbox_tx,
        default_timeout: config.request_timeout(),
    };
    Ok(Started {
        node,
        driver,
        apply,
        peers: members,
    })
}

/// On a new data dir, records who it belongs to; on an old one, refuses
/// flags that contradict the record.
fn check_or_record_identity(
    storage: &FjallStorage,
    config: &Config,
    cluster_id: u64,
    members: &BTreeMap<u64, String>,
) -> anyhow::Result<()> {
    let db = storage.database();
    let meta = db.keyspace("member", KeyspaceCreateOptions::default)?;
    let ids: Vec<String> = members.keys().map(u64::to_string).collect();
    let ids = ids.join(",");
    let dir = config.data_dir.display();
    match meta.get(META_MEMBER_ID)? {
        None => {
            if storage.is_initialized() {
                bail!("data dir {dir} holds raft state but no member record; it is damaged");
            }
            meta.insert(META_MEMBER_ID, config.id.to_be_bytes())?;
            meta.insert(META_CLUSTER_ID, cluster_id.to_be_bytes())?;
            meta.insert(META_MEMBERS, ids.as_bytes())?;
            db.persist(PersistMode::SyncAll)?;
        }
        Some(recorded) => {
            let recorded_id = read_u64(&recorded)?;
            if recorded_id != config.id {
                bail!(
                    "data dir {dir} belongs to member {recorded_id}, but --id {} was given; \
                     use the matching --id or another --data-dir",
                    config.id
                );
            }
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
            let recorded_cluster = meta
                .get(META_CLUSTER_ID)?
                .map(|v| read_u64(&v))
                .transpose()?;
            if recorded_cluster != Some(cluster_id) {
                bail!(
                    "data dir {dir} belongs to cluster {:016x}, but the flags give cluster {cluster_id:016x} \
                     (check --cluster-token)",
                    recorded_cluster.unwrap_or(0)
                );
            }
        }
    }
    Ok(())
}

fn read_u64(bytes: &[u8]) -> anyhow::Result<u64> {
    let arr: [u8; 8] = bytes
        .try_into()
        .context("corrupt member record in the data dir")?;
    Ok(u64::from_be_bytes(arr))
}

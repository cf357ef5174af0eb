//! Crash safety: members are killed (SIGKILL) and restarted over and over
//! while writers stream puts; afterwards every acknowledged write is on
//! every member, with the value that was acknowledged.
//!
//! The victims are chosen at random. The seed is printed; set
//! `FENCED_TEST_SEED` to replay the same sequence of victims.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fenced_client::{Client, ClientConfig};
use fenced_tests::{Cluster, History, wait_for, wait_until};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

const LEADER_TIMEOUT: Duration = Duration::from_secs(15);

/// How many times a member is killed and restarted.
const ROUNDS: usize = 20;

/// Concurrent writers, each with its own client over every member.
const WRITERS: usize = 3;

/// The deadline of one put, retries on other members included.
const WRITE_TIMEOUT: Duration = Duration::from_millis(2500);

/// How many new acknowledgements each round waits for after the victim is
/// back, so that writes are in flight across every crash and the test
/// cannot pass with a cluster that stopped taking writes.
const WRITES_PER_ROUND: usize = 10;

/// Fewer acknowledged writes than this and the test proves too little.
const MIN_ACKNOWLEDGED: usize = 100;

/// The environment variable that fixes the seed.
const SEED_VAR: &str = "FENCED_TEST_SEED";

/// What the writers share.
#[derive(Debug, Default)]
struct Writers {
    /// The next key number; every put writes a key no other put writes.
    next: AtomicU64,
    /// Set when the writers should finish.
    stop: AtomicBool,
    /// Puts that returned an error (their outcome is unknown), by gRPC
    /// code, for the summary.
    failed: Mutex<BTreeMap<String, u64>>,
    history: History,
}

impl Writers {
    fn failed(&self) -> u64 {
        self.failed_by_code().values().sum()
    }

    fn failed_by_code(&self) -> BTreeMap<String, u64> {
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Puts `k/{n}` = `v{n}` for fresh `n` until told to stop, recording each
/// acknowledged put.
async fn write_until_stopped(client: Client, shared: Arc<Writers>) {
    while !shared.stop.load(Ordering::Relaxed) {
        let n = shared.next.fetch_add(1, Ordering::Relaxed);
        let (key, value) = (format!("k/{n}"), format!("v{n}"));
        match client.put(key.as_str(), value.as_str()).await {
            Ok(_) => shared.history.record(key, value),
            Err(err) => {
                let mut failed = shared.failed.lock().unwrap_or_else(PoisonError::into_inner);
                *failed.entry(format!("{:?}", err.code())).or_default() += 1;
            }
        }
    }
}

fn seed() -> u64 {
    match std::env::var(SEED_VAR) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|err| panic!("{SEED_VAR}={text:?} is not a u64: {err}")),
        Err(_) => rand::random(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_repeated_crashes() -> anyhow::Result<()> {
    let seed = seed();
    println!("seed {seed} (replay with {SEED_VAR}={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();

    let cluster = Cluster::start(3).await?;
    cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    let shared = Arc::new(Writers::default());
    // Each writer starts on another member (its endpoint list rotated), so
    // whichever member is killed, some writer has requests in flight on it.
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let mut endpoints = cluster.endpoints();
            endpoints.rotate_left(writer % cluster.size());
            let client = ClientConfig::new(endpoints)
                .request_timeout(WRITE_TIMEOUT)
                .build()
                .expect("harness endpoints are valid");
            tokio::spawn(write_until_stopped(client, shared.clone()))
        })
        .collect();
    let history = &shared.history;

    let mut leader_kills = 0;
    for round in 1..=ROUNDS {
        let victim = rng.random_range(1..=cluster.size() as u64);
        let leader_before = cluster.status(victim).await.map(|s| s.leader).unwrap_or(0);
        if victim == leader_before {
            leader_kills += 1;
        }
        let acknowledged_before = history.len();
        let round_started = Instant::now();

        cluster.kill(victim).await?;
        let leader = cluster
            .wait_for_leader(LEADER_TIMEOUT)
            .await
            .with_context(|| format!("round {round}: no leader after killing member {victim}"))?;
        let leaderless_for = round_started.elapsed();
        cluster.restart(victim)?;
        wait_for(LEADER_TIMEOUT, "the restarted member to answer", || {
            cluster.status(victim)
        })
        .await
        .with_context(|| format!("round {round}: member {victim} did not come back"))?;
        wait_until(
            LEADER_TIMEOUT,
            "writes to be acknowledged again",
            || async { history.len() >= acknowledged_before + WRITES_PER_ROUND },
        )
        .await
        .with_context(|| {
            format!(
                "round {round}: writes stalled after member {victim} was restarted \
                 ({} acknowledged in the round)",
                history.len() - acknowledged_before
            )
        })?;
        println!(
            "round {round:2}: killed member {victim}{}, leader {leader} after {leaderless_for:?}, \
             round took {:?}; {} acknowledged, {} failed so far",
            match victim == leader_before {
                true => " (the leader)",
                false => "",
            },
            round_started.elapsed(),
            history.len(),
            shared.failed(),
        );
    }

    shared.stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.context("a writer panicked")?;
    }
    let acknowledged = history.len();
    let failed = shared.failed();
    println!(
        "{acknowledged} writes acknowledged, {failed} failed {:?}, in {:?}; \
         {leader_kills} of {ROUNDS} rounds killed the leader",
        shared.failed_by_code(),
        started.elapsed()
    );
    assert!(
        acknowledged > MIN_ACKNOWLEDGED,
        "only {acknowledged} writes were acknowledged ({failed} failed); too few to prove anything"
    );

    // Every member has applied everything committed; each holds every
    // acknowledged write with its value, and all hold the same data.
    let statuses = cluster.wait_converged(LEADER_TIMEOUT).await?;
    let mut reference = None;
    for (&id, status) in &statuses {
        let contents = cluster.contents(id).await?;
        let violations = history.violations(&contents.kvs);
        assert!(
            violations.is_empty(),
            "member {id} (applied {}): {} of {acknowledged} acknowledged writes are missing \
             or hold another value (seed {seed}); the first ones:\n{}",
            status.applied_index,
            violations.len(),
            violations[..violations.len().min(20)].join("\n")
        );
        println!(
            "member {id}: applied {}, revision {}, {} keys; every acknowledged write present",
            status.applied_index,
            contents.revision,
            contents.kvs.len()
        );
        match &reference {
            None => reference = Some((id, contents)),
            Some((first, expected)) => {
                assert!(
                    contents == *expected,
                    "member {id} holds other data than member {first} (revisions {} and {}, \
                     {} and {} keys)",
                    contents.revision,
                    expected.revision,
                    contents.kvs.len(),
                    expected.kvs.len()
                );
            }
        }
    }
    Ok(())
}

//! `fenced-bench`: the same workload against fenced or etcd, one summary
//! line per run (or JSON with `-o json`).
//!
//! ```text
//! fenced-bench --target fenced|etcd --endpoints a,b,c WORKLOAD [--clients N]
//!              [--duration S | --total N] [-o json]
//!     WORKLOAD: put [--keys N] [--value-size B] | lock [--locks N]
//! ```
//!
//! Closed loop: each client issues its next request when the previous one is
//! answered. Latencies go into an hdrhistogram per client, merged at the end.
//! For `lock` one operation is one acquire + release cycle of a lock shared
//! with the other clients mapped to it, and its latency is the whole cycle.

mod target;

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use rand::Rng;
use serde::Serialize;

use crate::target::{Locker, Target};

/// TTL of the one lease each `lock` client grants. Not kept alive on either
/// system: a run must end well before it expires.
const LOCK_LEASE_TTL_SECS: i64 = 120;
/// Longest a `lock` run may last with leases of [`LOCK_LEASE_TTL_SECS`].
const MAX_LOCK_RUN: Duration = Duration::from_secs(100);

#[derive(Debug, Parser)]
#[command(
    name = "fenced-bench",
    about = "Benchmark fenced against etcd with the same workload"
)]
struct Args {
    /// Which system to drive.
    #[arg(long, value_enum, default_value_t = TargetKind::Fenced)]
    target: TargetKind,
    /// Client endpoints, comma separated.
    #[arg(
        long,
        env = "FENCED_ENDPOINTS",
        default_value = "127.0.0.1:7379",
        value_delimiter = ','
    )]
    endpoints: Vec<String>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 1, global = true)]
    clients: usize,
    /// gRPC connections shared by the clients (0 = one per client, at most 16).
    #[arg(long, default_value_t = 0, global = true)]
    conns: usize,
    /// Run for this many seconds.
    #[arg(long, global = true, conflicts_with = "total")]
    duration: Option<f64>,
    /// Run until this many requests completed.
    #[arg(long, global = true)]
    total: Option<u64>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Simple, global = true)]
    output: Output,
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum TargetKind {
    Fenced,
    Etcd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Simple,
    Json,
}

#[derive(Clone, Debug, Subcommand)]
enum Workload {
    /// Writes of random keys.
    Put {
        /// Distinct keys written.
        #[arg(long, default_value_t = 10_000)]
        keys: u64,
        /// Bytes per value.
        #[arg(long, default_value_t = 256)]
        value_size: usize,
    },
    /// Acquire + release cycles: client i loops on lock `bench-lock-{i %
    /// locks}` (blocking, FIFO) with its own lease.
    Lock {
        /// Distinct locks the clients are spread over.
        #[arg(long, default_value_t = 1)]
        locks: usize,
    },
}

#[derive(Debug, Serialize)]
struct Summary {
    workload: &'static str,
    target: TargetKind,
    clients: usize,
    /// Distinct locks (`lock` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    locks: Option<usize>,
    ops: u64,
    errors: u64,
    seconds: f64,
    ops_per_sec: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    let stop = match (args.duration, args.total) {
        (Some(s), _) if s > 0.0 => Stop::After(Duration::from_secs_f64(s)),
        (_, Some(n)) if n > 0 => Stop::Total(n),
        (None, None) => Stop::After(Duration::from_secs(10)),
        _ => bail!("--duration and --total must be positive"),
    };
    let conns = match args.conns {
        0 => args.clients.min(16),
        n => n,
    };
    if args.endpoints.is_empty() {
        bail!("--endpoints must name at least one endpoint");
    }
    let mut targets = Vec::with_capacity(conns);
    for i in 0..conns {
        targets.push(Target::connect(args.target, &args.endpoints, i).await?);
    }
    let summary = match args.workload.clone() {
        Workload::Put { keys, value_size } => {
            run_put(&args, &targets, stop, keys, value_size).await?
        }
        Workload::Lock { locks } => run_lock(&args, &targets, stop, locks).await?,
    };
    match args.output {
        Output::Json => println!("{}", serde_json::to_string(&summary)?),
        Output::Simple => println!(
            "{} target={:?} clients={}{} ops={} errors={} time={:.1}s ops/s={:.0} p50={:.2}ms p99={:.2}ms p999={:.2}ms",
            summary.workload,
            summary.target,
            summary.clients,
            summary
                .locks
                .map(|n| format!(" locks={n}"))
                .unwrap_or_default(),
            summary.ops,
            summary.errors,
            summary.seconds,
            summary.ops_per_sec,
            summary.p50_us as f64 / 1000.0,
            summary.p99_us as f64 / 1000.0,
            summary.p999_us as f64 / 1000.0,
        ),
    }
    Ok(())
}

#[derive(Clone, Copy, Debug)]
enum Stop {
    After(Duration),
    Total(u64),
}

async fn run_put(
    args: &Args,
    targets: &[Target],
    stop: Stop,
    keys: u64,
    value_size: usize,
) -> anyhow::Result<Summary> {
    // Warm up every connection so connection setup is not measured.
    for target in targets {
        target
            .put(b"bench-warmup".to_vec(), vec![0; value_size])
            .await
            .context("warm-up put")?;
    }
    let started = Instant::now();
    let issued = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let target = targets[i % targets.len()].clone();
        let issued = issued.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = new_histogram();
            let mut errors = 0u64;
            let value = vec![b'x'; value_size];
            loop {
                let more = match stop {
                    Stop::After(d) => started.elapsed() < d,
                    Stop::Total(n) => issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n,
                };
                if !more {
                    break;
                }
                let key = format!("bench/{:08}", rand::rng().random_range(0..keys.max(1)));
                let t = Instant::now();
                match target.put(key.into_bytes(), value.clone()).await {
                    Ok(()) => {
                        let _ = hist.record(t.elapsed().as_micros() as u64);
                    }
                    Err(_) => errors += 1,
                }
            }
            (hist, errors)
        }));
    }
    let mut hist = new_histogram();
    let mut errors = 0;
    for task in tasks {
        let (h, e) = task.await?;
        hist.add(&h).context("merging histograms")?;
        errors += e;
    }
    Ok(summarize("put", args, hist, errors, started.elapsed()))
}

async fn run_lock(
    args: &Args,
    targets: &[Target],
    stop: Stop,
    locks: usize,
) -> anyhow::Result<Summary> {
    if locks == 0 {
        bail!("--locks must be at least 1");
    }
    if let Stop::After(d) = stop
        && d > MAX_LOCK_RUN
    {
        bail!(
            "the lock workload's leases ({LOCK_LEASE_TTL_SECS} s TTL) are not kept alive; \
             use --duration of at most {} s",
            MAX_LOCK_RUN.as_secs()
        );
    }
    // Every client grants its lease first, over its own connection; this
    // also warms up the connections, so neither is measured.
    let lockers: Vec<Locker> = futures::future::try_join_all(
        (0..args.clients).map(|i| targets[i % targets.len()].locker(LOCK_LEASE_TTL_SECS)),
    )
    .await
    .context("granting the clients' leases")?;
    let started = Instant::now();
    let issued = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(args.clients);
    for (i, mut locker) in lockers.into_iter().enumerate() {
        let issued = issued.clone();
        let name = format!("bench-lock-{}", i % locks);
        tasks.push(tokio::spawn(async move {
            let mut hist = new_histogram();
            let mut errors = 0u64;
            let mut first_error = None;
            let mut cut_short = false;
            loop {
                let more = match stop {
                    Stop::After(d) => started.elapsed() < d,
                    Stop::Total(n) => {
                        cut_short = started.elapsed() >= MAX_LOCK_RUN;
                        !cut_short && issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n
                    }
                };
                if !more {
                    break;
                }
                let t = Instant::now();
                let cycle = match locker.acquire(&name).await {
                    Ok(held) => locker.release(held).await.context("release"),
                    Err(err) => Err(err.context("acquire")),
                };
                match cycle {
                    Ok(()) => {
                        let _ = hist.record(t.elapsed().as_micros() as u64);
                    }
                    Err(err) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{err:#}"));
                    }
                }
            }
            (hist, errors, first_error, cut_short, locker)
        }));
    }
    let mut hist = new_histogram();
    let mut errors = 0;
    let mut first_error = None;
    let mut cut_short = false;
    let mut lockers = Vec::with_capacity(tasks.len());
    for task in tasks {
        let (h, e, first, short, locker) = task.await?;
        hist.add(&h).context("merging histograms")?;
        errors += e;
        first_error = first_error.or(first);
        cut_short |= short;
        lockers.push(locker);
    }
    let elapsed = started.elapsed();
    if let Some(err) = first_error {
        eprintln!("fenced-bench: {errors} failed cycles; the first: {err}");
    }
    if cut_short {
        eprintln!(
            "fenced-bench: stopped after {} s, before --total was reached: the leases are not kept alive",
            MAX_LOCK_RUN.as_secs()
        );
    }
    // Revoke the leases so they do not expire during a later run. Not timed.
    let revoked = futures::future::join_all(lockers.into_iter().map(Locker::revoke)).await;
    if let Some(Err(err)) = revoked.into_iter().find(Result::is_err) {
        eprintln!("fenced-bench: revoking a lease failed: {err:#}");
    }
    let mut summary = summarize("lock", args, hist, errors, elapsed);
    summary.locks = Some(locks);
    Ok(summary)
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 60 s at 3 significant digits; cannot fail for these bounds.
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| Histogram::new(3).unwrap())
}

fn summarize(
    workload: &'static str,
    args: &Args,
    hist: Histogram<u64>,
    errors: u64,
    elapsed: Duration,
) -> Summary {
    let seconds = elapsed.as_secs_f64();
    Summary {
        workload,
        target: args.target,
        clients: args.clients,
        locks: None,
        ops: hist.len(),
        errors,
        seconds,
        ops_per_sec: hist.len() as f64 / seconds,
        p50_us: hist.value_at_quantile(0.50),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        max_us: hist.max(),
    }
}

//! `fenced-bench`: the same workload against fenced or etcd, one summary
//! line per run (or JSON with `-o json`).
//!
//! ```text
//! fenced-bench --target fenced|etcd --endpoints a,b,c WORKLOAD [--clients N]
//!              [--duration S | --total N] [-o json]
//!     WORKLOAD: put [--keys N] [--value-size B]
//!             | range [--keys N] [--value-size B] [--serializable]
//!             | lock [--locks N]
//!             | lease-keepalive [--ttl S] [--interval-ms MS]
//!             | watch-latency [--watchers N] [--per-stream M] [--rate R]
//!             | watch-hold [--watchers N] [--per-stream M]
//!             | election-failover [--candidates K] [--ttl S]
//!             | member-failover --pids P1,P2,P3 [--locks N] [--kill-after S] [--after S]
//! ```
//!
//! `put`, `range`, `lock` and `lease-keepalive` are closed loops: each
//! client issues its next request when the previous one is answered
//! (`lease-keepalive --interval-ms` paces each lease instead). Latencies go
//! into an hdrhistogram per client, merged at the end. For `lock` one
//! operation is one acquire + release cycle of a lock shared with the other
//! clients mapped to it, and its latency is the whole cycle. `range` (see
//! `range`) reads keys it wrote before the run; `lease-keepalive` (see
//! `keepalive`) keeps one lease per client alive over a stream of its own.
//!
//! `watch-latency`, `watch-hold` (see `watch`) and `election-failover` (see
//! `election`) ignore `--clients` and `--conns`: their shape is set by
//! their own flags. `member-failover` (see `member_failover`) runs the lock
//! workload with `--clients` clients, SIGKILLs the leading member's process
//! and times the next successful acquire; it ignores `--duration`,
//! `--total` and `--conns`.

mod election;
mod keepalive;
mod member_failover;
mod range;
mod target;
mod watch;

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
    /// Run for this many seconds (watch-hold: hold the watches this long;
    /// election-failover: start rounds for this long; member-failover:
    /// ignored).
    #[arg(long, global = true, conflicts_with = "total")]
    duration: Option<f64>,
    /// Run until this many requests completed (watch-latency: puts;
    /// election-failover: failover rounds; lease-keepalive: keepalives;
    /// member-failover: ignored).
    #[arg(long, global = true)]
    total: Option<u64>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Simple, global = true)]
    output: Output,
    /// fenced only (put, range, lock, member-failover): `spread` puts
    /// connection k on endpoint k mod N (followers forward writes to the
    /// leader); `leader` puts every connection on the member leading at the
    /// start, and fenced-client follows the leader (`prefer_leader`). etcd
    /// always goes through etcd-client's balancer.
    #[arg(long, value_enum, default_value_t = Route::Spread, global = true)]
    route: Route,
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum TargetKind {
    Fenced,
    Etcd,
}

/// Where fenced connections go; see `--route`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Route {
    Spread,
    Leader,
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
    /// Point reads of random keys out of --keys, all written before the
    /// run (not timed).
    Range {
        /// Distinct keys written before the run and read.
        #[arg(long, default_value_t = 1_000)]
        keys: u64,
        /// Bytes per value.
        #[arg(long, default_value_t = 256)]
        value_size: usize,
        /// Serializable reads (from the member's applied state) instead of
        /// linearizable ones.
        #[arg(long)]
        serializable: bool,
    },
    /// Acquire + release cycles: client i loops on lock `bench-lock-{i %
    /// locks}` (blocking, FIFO) with its own lease.
    Lock {
        /// Distinct locks the clients are spread over.
        #[arg(long, default_value_t = 1)]
        locks: usize,
    },
    /// One lease per client kept alive over a keepalive stream of its own,
    /// one keepalive in flight per lease; figures are keepalives
    /// acknowledged per second and the round trip of one keepalive.
    LeaseKeepalive {
        /// TTL of every lease, seconds.
        #[arg(long, default_value_t = 60)]
        ttl: i64,
        /// Send each lease's keepalives this far apart (open loop per lease,
        /// latencies corrected for coordinated omission); 0: closed loop.
        #[arg(long, default_value_t = 0)]
        interval_ms: u64,
    },
    /// N watchers of one key on the first endpoint, one writer putting to
    /// it through the same endpoint; latency is put issued -> event
    /// received, over every (watcher, event) pair.
    WatchLatency {
        /// Watches of the key.
        #[arg(long, default_value_t = 1)]
        watchers: usize,
        /// Watches per gRPC stream; each stream has its own connection.
        #[arg(long, default_value_t = 100)]
        per_stream: usize,
        /// Puts per second, open loop; 0: closed loop, one put at a time.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
    },
    /// Opens N watchers of one key on the first endpoint and holds them for
    /// --duration (for sampling the member's memory), then times one put's
    /// delivery to all of them.
    WatchHold {
        /// Watches of the key.
        #[arg(long, default_value_t = 10_000)]
        watchers: usize,
        /// Watches per gRPC stream; each stream has its own connection.
        #[arg(long, default_value_t = 100)]
        per_stream: usize,
    },
    /// K candidates in one election; the leader's keepalives stop (no
    /// revoke, no resign); time until an observer sees the next leader.
    ElectionFailover {
        /// Candidates queued at the start of every round.
        #[arg(long, default_value_t = 3)]
        candidates: usize,
        /// Lease TTL of every candidate, whole seconds.
        #[arg(long, default_value_t = 2)]
        ttl: u64,
    },
    /// The lock workload (--clients clients over --locks locks) while the
    /// leading member's process is SIGKILLed; time from the kill to the
    /// first successful acquire issued after it, for the first and the last
    /// client. Leaves that member dead: restart it before the next run.
    MemberFailover {
        /// The server process id of each endpoint, in --endpoints order; the
        /// leader's is sent SIGKILL (needs the right to signal it). The
        /// leader is the member whose own status says so.
        #[arg(long, value_delimiter = ',', required = true)]
        pids: Vec<u32>,
        /// Distinct locks; 0: one per client (no client waits for another).
        #[arg(long, default_value_t = 0)]
        locks: usize,
        /// Seconds of lock cycles before the kill.
        #[arg(long, default_value_t = 2.0)]
        kill_after: f64,
        /// Seconds of lock cycles after every client acquired again.
        #[arg(long, default_value_t = 1.0)]
        after: f64,
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
    /// Figures particular to a workload (watchers, puts, TTL, ...).
    #[serde(flatten)]
    extra: serde_json::Map<String, serde_json::Value>,
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
    if args.endpoints.is_empty() {
        bail!("--endpoints must name at least one endpoint");
    }
    let summary = match args.workload.clone() {
        Workload::Put { keys, value_size } => {
            let (targets, role) = connect(&args).await?;
            with_role(
                run_put(&args, &targets, stop, keys, value_size).await?,
                role,
            )
        }
        Workload::Range {
            keys,
            value_size,
            serializable,
        } => {
            let (targets, role) = connect(&args).await?;
            with_role(
                run_range(&args, &targets, stop, keys, value_size, serializable).await?,
                role,
            )
        }
        Workload::Lock { locks } => {
            let (targets, role) = connect(&args).await?;
            with_role(run_lock(&args, &targets, stop, locks).await?, role)
        }
        Workload::LeaseKeepalive { ttl, interval_ms } => {
            let (targets, role) = connect(&args).await?;
            with_role(
                run_lease_keepalive(&args, &targets, stop, ttl, interval_ms).await?,
                role,
            )
        }
        Workload::WatchLatency {
            watchers,
            per_stream,
            rate,
        } => run_watch_latency(&args, stop, watchers, per_stream, rate).await?,
        Workload::WatchHold {
            watchers,
            per_stream,
        } => run_watch_hold(&args, stop, watchers, per_stream).await?,
        Workload::ElectionFailover { candidates, ttl } => {
            run_election_failover(&args, stop, candidates, ttl).await?
        }
        Workload::MemberFailover {
            pids,
            locks,
            kill_after,
            after,
        } => run_member_failover(&args, pids, locks, kill_after, after).await?,
    };
    match args.output {
        Output::Json => println!("{}", serde_json::to_string(&summary)?),
        Output::Simple => println!("{}", simple_line(&summary)),
    }
    Ok(())
}

/// The `--conns` connections of `put`, `range`, `lock` and
/// `lease-keepalive`, and, for fenced with one connection, the role of the
/// member it reaches at the start ("leader", "follower"): a 1-client figure
/// depends on it, and with `--route spread` it is whichever role the first
/// endpoint has. (etcd-client balances its one connection over every
/// endpoint, so no single role applies.)
async fn connect(args: &Args) -> anyhow::Result<(Vec<Target>, Option<String>)> {
    let conns = match args.conns {
        0 => args.clients.min(16),
        n => n,
    };
    let (endpoints, spread) = route(args).await?;
    let mut targets = Vec::with_capacity(conns);
    for i in 0..conns {
        let index = if spread { i } else { 0 };
        targets.push(Target::connect(args.target, &endpoints, index, args.route).await?);
    }
    let role = match (args.target, conns, endpoints.first()) {
        (TargetKind::Fenced, 1, Some(first)) => target::member_role(args.target, first).await.ok(),
        _ => None,
    };
    Ok((targets, role))
}

/// `summary` with the `member_role` of its single connection, if known.
fn with_role(mut summary: Summary, role: Option<String>) -> Summary {
    if let Some(role) = role {
        summary.extra.insert("member_role".into(), role.into());
    }
    summary
}

/// The endpoints in the order connections use them, and whether
/// connections spread over them: with `--route leader` on fenced, the
/// leader first and no spreading.
async fn route(args: &Args) -> anyhow::Result<(Vec<String>, bool)> {
    if args.target == TargetKind::Etcd || args.route == Route::Spread {
        return Ok((args.endpoints.clone(), true));
    }
    let endpoints = target::leader_first(&args.endpoints).await?;
    Ok((endpoints, false))
}

/// The summary as one human-readable line.
fn simple_line(summary: &Summary) -> String {
    let ms = |us: u64| us as f64 / 1000.0;
    let extra: String = summary
        .extra
        .iter()
        .map(|(k, v)| match v {
            serde_json::Value::Number(n) if n.is_f64() => {
                format!(" {k}={:.1}", n.as_f64().unwrap_or_default())
            }
            serde_json::Value::String(s) => format!(" {k}={s}"),
            other => format!(" {k}={other}"),
        })
        .collect();
    let rate = match summary.workload {
        "watch-latency" => format!(" events/s={:.0}", summary.ops_per_sec),
        "watch-hold" => format!(" watches-opened/s={:.0}", summary.ops_per_sec),
        "lease-keepalive" => format!(" keepalives/s={:.0}", summary.ops_per_sec),
        "election-failover" => String::new(),
        "member-failover" => format!(" cycles/s={:.0}", summary.ops_per_sec),
        _ => format!(" ops/s={:.0}", summary.ops_per_sec),
    };
    let clients = match summary.workload {
        "put" | "range" | "lock" | "lease-keepalive" | "member-failover" => {
            format!(" clients={}", summary.clients)
        }
        _ => String::new(),
    };
    format!(
        "{} target={:?}{clients}{} ops={} errors={} time={:.1}s{rate} p50={:.2}ms p99={:.2}ms p999={:.2}ms max={:.2}ms{extra}",
        summary.workload,
        summary.target,
        summary
            .locks
            .map(|n| format!(" locks={n}"))
            .unwrap_or_default(),
        summary.ops,
        summary.errors,
        summary.seconds,
        ms(summary.p50_us),
        ms(summary.p99_us),
        ms(summary.p999_us),
        ms(summary.max_us),
    )
}

/// When a run ends.
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

async fn run_range(
    args: &Args,
    targets: &[Target],
    stop: Stop,
    keys: u64,
    value_size: usize,
    serializable: bool,
) -> anyhow::Result<Summary> {
    let run = range::run(targets, args.clients, stop, keys, value_size, serializable).await?;
    let elapsed = Duration::from_secs_f64(run.seconds);
    let mut summary = summarize("range", args, run.hist, run.errors, elapsed);
    let extra = &mut summary.extra;
    extra.insert("keys".into(), keys.into());
    extra.insert(
        "consistency".into(),
        if serializable {
            "serializable"
        } else {
            "linearizable"
        }
        .into(),
    );
    extra.insert("missing".into(), run.missing.into());
    extra.insert("populate_seconds".into(), run.populate_seconds.into());
    Ok(summary)
}

async fn run_lease_keepalive(
    args: &Args,
    targets: &[Target],
    stop: Stop,
    ttl: i64,
    interval_ms: u64,
) -> anyhow::Result<Summary> {
    if ttl <= 0 {
        bail!("--ttl must be at least 1 s");
    }
    let interval = Duration::from_millis(interval_ms);
    let run = keepalive::run(targets, args.clients, stop, ttl, interval).await?;
    let elapsed = Duration::from_secs_f64(run.seconds);
    let mut summary = summarize("lease-keepalive", args, run.hist, run.errors, elapsed);
    // With an interval the histogram holds corrected values too: the rate
    // is of acknowledged keepalives only.
    summary.ops = run.acks;
    summary.ops_per_sec = run.acks as f64 / run.seconds;
    let extra = &mut summary.extra;
    extra.insert("leases".into(), args.clients.into());
    extra.insert("ttl_s".into(), ttl.into());
    extra.insert("interval_ms".into(), interval_ms.into());
    Ok(summary)
}

async fn run_member_failover(
    args: &Args,
    pids: Vec<u32>,
    locks: usize,
    kill_after: f64,
    after: f64,
) -> anyhow::Result<Summary> {
    if !(kill_after >= 0.0 && after >= 0.0) {
        bail!("--kill-after and --after must not be negative");
    }
    let shape = member_failover::Shape {
        kind: args.target,
        endpoints: args.endpoints.clone(),
        pids,
        clients: args.clients,
        locks: if locks == 0 { args.clients } else { locks },
        kill_after: Duration::from_secs_f64(kill_after),
        after: Duration::from_secs_f64(after),
        route: args.route,
    };
    let run = member_failover::run(&shape).await?;
    let elapsed = Duration::from_secs_f64(run.seconds);
    let errors = run.acquire_errors + run.release_errors;
    let mut summary = summarize("member-failover", args, run.hist, errors, elapsed);
    let cycles = run.cycles_before_kill + run.cycles_after_kill;
    summary.ops = cycles;
    summary.ops_per_sec = cycles as f64 / run.seconds;
    summary.locks = Some(shape.locks);
    let extra = &mut summary.extra;
    extra.insert("failover_ms".into(), run.failover_ms.into());
    extra.insert("all_clients_ms".into(), run.all_clients_ms.into());
    extra.insert("killed_member".into(), run.killed_member.into());
    extra.insert("killed_endpoint".into(), run.killed_endpoint.into());
    extra.insert(
        "new_leader".into(),
        run.new_leader.unwrap_or_else(|| "?".to_owned()).into(),
    );
    extra.insert("acquire_errors".into(), run.acquire_errors.into());
    extra.insert("release_errors".into(), run.release_errors.into());
    extra.insert("cycles_before_kill".into(), run.cycles_before_kill.into());
    extra.insert("cycles_after_kill".into(), run.cycles_after_kill.into());
    Ok(summary)
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

async fn run_watch_latency(
    args: &Args,
    stop: Stop,
    watchers: usize,
    per_stream: usize,
    rate: f64,
) -> anyhow::Result<Summary> {
    if watchers == 0 || per_stream == 0 {
        bail!("--watchers and --per-stream must be at least 1");
    }
    let shape = watch::Shape {
        kind: args.target,
        endpoint: args.endpoints[0].clone(),
        watchers,
        per_stream,
    };
    let run = watch::run_latency(&shape, stop, rate).await?;
    let errors = run.put_errors + run.watch_errors + run.missed;
    let elapsed = Duration::from_secs_f64(run.seconds);
    let mut summary = summarize("watch-latency", args, run.hist, errors, elapsed);
    summary.ops = run.events;
    summary.ops_per_sec = run.events as f64 / run.seconds;
    let extra = &mut summary.extra;
    extra.insert("watchers".into(), watchers.into());
    extra.insert("streams".into(), run.streams.into());
    extra.insert("rate".into(), rate.into());
    extra.insert("puts".into(), run.puts.into());
    extra.insert(
        "puts_per_sec".into(),
        (run.puts as f64 / run.seconds).into(),
    );
    extra.insert("put_errors".into(), run.put_errors.into());
    extra.insert("watch_errors".into(), run.watch_errors.into());
    extra.insert("missed".into(), run.missed.into());
    extra.insert("member_role".into(), run.role.into());
    extra.insert("put_p50_us".into(), run.acks.value_at_quantile(0.5).into());
    extra.insert("put_p99_us".into(), run.acks.value_at_quantile(0.99).into());
    Ok(summary)
}

async fn run_watch_hold(
    args: &Args,
    stop: Stop,
    watchers: usize,
    per_stream: usize,
) -> anyhow::Result<Summary> {
    if watchers == 0 || per_stream == 0 {
        bail!("--watchers and --per-stream must be at least 1");
    }
    let shape = watch::Shape {
        kind: args.target,
        endpoint: args.endpoints[0].clone(),
        watchers,
        per_stream,
    };
    let run = watch::run_hold(&shape, stop).await?;
    let elapsed = Duration::from_secs_f64(run.open_seconds);
    let mut summary = summarize("watch-hold", args, run.hist, run.errors, elapsed);
    summary.ops = watchers as u64;
    summary.ops_per_sec = watchers as f64 / run.open_seconds;
    let extra = &mut summary.extra;
    extra.insert("watchers".into(), watchers.into());
    extra.insert("streams".into(), run.streams.into());
    extra.insert("open_seconds".into(), run.open_seconds.into());
    extra.insert("hold_seconds".into(), run.hold_seconds.into());
    extra.insert("member_role".into(), run.role.into());
    Ok(summary)
}

async fn run_election_failover(
    args: &Args,
    stop: Stop,
    candidates: usize,
    ttl: u64,
) -> anyhow::Result<Summary> {
    if ttl == 0 {
        bail!("--ttl must be at least 1 s");
    }
    let run = election::run(args.target, &args.endpoints, stop, candidates, ttl).await?;
    let elapsed = Duration::from_secs_f64(run.seconds);
    let mut summary = summarize("election-failover", args, run.hist, run.errors, elapsed);
    let extra = &mut summary.extra;
    extra.insert("candidates".into(), candidates.into());
    extra.insert("ttl_s".into(), ttl.into());
    extra.insert("granted_ttl_s".into(), run.granted_ttl.into());
    extra.insert("rounds_ms".into(), run.rounds_ms.into());
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
        extra: serde_json::Map::new(),
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

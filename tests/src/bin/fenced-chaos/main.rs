//! `fenced-chaos`: Jepsen-style fault injection with history checking.
//!
//! ```text
//! fenced-chaos --duration S [--nemesis partition,kill,pause,member|all]
//!              [--workload register,lock,election,watch|all]
//!              [--seed N] [--out DIR]
//! ```
//!
//! Starts a 5-member cluster of real `fenced` processes (the harness of
//! `fenced-tests`, with a fault proxy between every pair), runs the chosen
//! workloads through `fenced-client` while the nemesis injects faults on a
//! schedule drawn from the seed, then heals everything, lets the streams
//! catch up, and checks the recorded history. Exits 0 only when every
//! checker passed; prints the operations checked and the violations found.
//!
//! # Layout
//!
//! - `record`: the recorder and the history's types.
//! - `check`: one checker per workload, with tests on known-bad histories.
//! - `nemesis`: the seeded schedule and the task applying it.
//! - `workload`: the workloads, and the fenced resource of `lock`.
//! - `report`: text and JSON output.

mod check;
mod nemesis;
mod record;
mod report;
mod workload;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, ValueEnum};
use fenced_tests::{Cluster, ClusterConfig};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::check::{Verdict, Violation};
use crate::nemesis::{ClientPauses, Nemesis, NemesisKind, ScheduleSpec};
use crate::record::{Call, Outcome, Recorder, Ret, StreamLog};
use crate::report::Report;
use crate::workload::{Context, LEASE_TTL, WorkloadKind};

/// Cluster size: a majority survives two failures.
const MEMBERS: u64 = 5;
/// How long streams get to catch up, and workers to finish, after the
/// run.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(
    name = "fenced-chaos",
    about = "Fault injection against a 5-member fenced cluster, with history checking"
)]
struct Args {
    /// How long to run the workloads and the nemesis, in seconds.
    #[arg(long, required_unless_present = "recheck")]
    duration: Option<f64>,
    /// Fault families, comma separated: partition, kill, pause, member, or
    /// all.
    #[arg(long, default_value = "all", value_delimiter = ',')]
    nemesis: Vec<String>,
    /// Workloads, comma separated: register, lock, election, watch, or all.
    #[arg(long, default_value = "all", value_delimiter = ',')]
    workload: Vec<String>,
    /// Seed of the fault schedule (random unless given; always printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Write report.json, history.json and streams.json here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Check the history a run wrote with `--out` again (history.json and
    /// streams.json in this dir), without running anything.
    #[arg(long, conflicts_with = "duration")]
    recheck: Option<PathBuf>,
    /// Test the checker: start members with the hidden server flag
    /// `--unsafe-local-reads` (stale reads), which a run must catch.
    #[arg(long, hide = true)]
    unsafe_local_reads: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let nemeses: BTreeSet<NemesisKind> = parse_list(&args.nemesis, "--nemesis");
    let workloads: BTreeSet<WorkloadKind> = parse_list(&args.workload, "--workload");
    if let Some(dir) = &args.recheck {
        return match recheck(dir) {
            Ok(report) if report.violations() == 0 => ExitCode::SUCCESS,
            Ok(_) => ExitCode::FAILURE,
            Err(err) => {
                eprintln!("fenced-chaos: {err:#}");
                ExitCode::from(3)
            }
        };
    }
    let duration = args.duration.unwrap_or_default();
    if !(duration.is_finite() && duration > 0.0) {
        Args::command()
            .error(
                clap::error::ErrorKind::InvalidValue,
                "--duration must be a positive number of seconds",
            )
            .exit();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("fenced-chaos: starting the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, nemeses, workloads)) {
        Ok(report) if report.violations() == 0 => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("fenced-chaos: {err:#}");
            ExitCode::from(3)
        }
    }
}

/// Parses a comma-separated list of `T`s, or `all`; exits with a usage
/// error on anything else.
fn parse_list<T: ValueEnum + Ord + Copy>(items: &[String], flag: &str) -> BTreeSet<T> {
    let mut set = BTreeSet::new();
    for item in items {
        if item == "all" {
            set.extend(T::value_variants().iter().copied());
            continue;
        }
        match T::from_str(item, true) {
            Ok(value) => {
                set.insert(value);
            }
            Err(_) => {
                let names: Vec<String> = T::value_variants()
                    .iter()
                    .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_owned()))
                    .collect();
                Args::command()
                    .error(
                        clap::error::ErrorKind::InvalidValue,
                        format!(
                            "{flag}: unknown {item:?}; expected all or some of {}",
                            names.join(",")
                        ),
                    )
                    .exit();
            }
        }
    }
    set
}

async fn run(
    args: Args,
    nemeses: BTreeSet<NemesisKind>,
    workloads: BTreeSet<WorkloadKind>,
) -> anyhow::Result<Report> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let duration_secs = args.duration.unwrap_or_default();
    let duration = Duration::from_secs_f64(duration_secs);
    let names = |set: Vec<String>| set.join(",");
    let nemesis_names = names(
        nemeses
            .iter()
            .map(|k| format!("{k:?}").to_lowercase())
            .collect(),
    );
    let workload_names = names(
        workloads
            .iter()
            .map(|k| format!("{k:?}").to_lowercase())
            .collect(),
    );
    println!(
        "fenced-chaos: seed {seed}, {:.0}s, nemesis {nemesis_names}, workload {workload_names}",
        duration.as_secs_f64()
    );
    println!(
        "  reproduce: fenced-chaos --seed {seed} --duration {} --nemesis {nemesis_names} \
         --workload {workload_names}{}",
        duration_secs,
        match args.unsafe_local_reads {
            true => " --unsafe-local-reads",
            false => "",
        }
    );
    let spec = ScheduleSpec {
        seed,
        kinds: nemeses.clone(),
        duration,
        members: (1..=MEMBERS).collect(),
        client_pauses: workloads.contains(&WorkloadKind::Lock)
            || workloads.contains(&WorkloadKind::Election),
        lease_ttl: LEASE_TTL,
    };
    let steps = nemesis::schedule(&spec);
    println!("schedule ({} faults):", steps.len());
    for step in &steps {
        println!("  {step}");
    }

    // Members log warnings only, unless FENCED_CHAOS_MEMBER_LOG asks for
    // more (a tracing filter, e.g. `info,fenced_server::lessor=debug`).
    let member_log = std::env::var("FENCED_CHAOS_MEMBER_LOG").unwrap_or_else(|_| "warn".into());
    // Snapshots ten times as often as the default, so that a run of a few
    // minutes takes and installs several: compaction, catch-up by snapshot
    // and restarts from one stay under fault.
    let mut config = ClusterConfig::new(MEMBERS)
        .env("RUST_LOG", &member_log)
        .args(["--snapshot-interval", "10000", "--snapshot-tail", "5000"]);
    if args.unsafe_local_reads {
        println!("  note: members run with --unsafe-local-reads (stale reads on purpose)");
        config = config.arg("--unsafe-local-reads");
    }
    // Building (or checking) the server may wait for Cargo's lock: do it
    // off the runtime, and say so, so a wait is not mistaken for a hang.
    println!("fenced binary: building or checking (set FENCED_BIN to use a prebuilt one)");
    let fenced = tokio::task::spawn_blocking(|| fenced_tests::fenced_bin().to_owned()).await?;
    println!("fenced binary: {}", fenced.display());
    let cluster = Arc::new(Cluster::start_with(config).await?);
    cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .context("the cluster elected no leader")?;
    let setup = cluster.client();
    let start_revision = setup
        .status()
        .await
        .context("status before the run")?
        .revision
        + 1;

    let start = Instant::now();
    let recorder = Arc::new(Recorder::new(start.into_std()));
    let pauses = Arc::new(ClientPauses::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (election_until_tx, election_until) = tokio::sync::watch::channel(None);
    let (watch_until_tx, watch_until) = tokio::sync::watch::channel(None);
    let context = Context::new(
        recorder.clone(),
        cluster.endpoints(),
        stop_rx,
        pauses.clone(),
    );
    // Workers stop at the stop signal; observers and watchers once they
    // reached the revision the end of the run sets.
    let mut tasks = JoinSet::new();
    if workloads.contains(&WorkloadKind::Register) {
        workload::register::start(&context, &mut tasks);
    }
    if workloads.contains(&WorkloadKind::Lock) {
        workload::lock::start(&context, &mut tasks);
    }
    let observers = match workloads.contains(&WorkloadKind::Election) {
        true => workload::election::start(&context, &mut tasks, start_revision, election_until),
        false => Vec::new(),
    };
    let watchers = match workloads.contains(&WorkloadKind::Watch) {
        true => workload::watch_keys::start(&context, &mut tasks, start_revision, watch_until),
        false => Vec::new(),
    };

    let nemesis = Nemesis::new(
        cluster.clone(),
        recorder.clone(),
        pauses,
        MEMBERS + 1,
        member_log,
    );
    let deadline = start + duration;
    tokio::select! {
        () = nemesis.run(start, &steps) => tokio::time::sleep_until(deadline).await,
        () = tokio::time::sleep_until(deadline) => {}
    }
    println!(
        "{:>10} run over: healing, stopping the workloads",
        record::secs(recorder.now())
    );
    nemesis.heal().await;
    let _ = stop_tx.send(true);
    let leader = cluster.wait_for_leader(DRAIN_TIMEOUT).await;
    if let Err(err) = &leader {
        eprintln!("no leader after healing: {err:#}");
    }

    // Sentinels mark the revision every stream must reach.
    let sentinel_context = context.clone();
    let mut notes = Vec::new();
    if workloads.contains(&WorkloadKind::Election) {
        match election_sentinel(&sentinel_context).await {
            Some(token) => drop(election_until_tx.send(Some(token))),
            None => notes.push("no final election sentinel: observers' ends are not checked"),
        }
    }
    if workloads.contains(&WorkloadKind::Watch) {
        match watch_sentinel(&sentinel_context).await {
            Some(revision) => drop(watch_until_tx.send(Some(revision))),
            None => notes.push("no final watch sentinel: watchers' ends are not checked"),
        }
    }
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        eprintln!(
            "some tasks did not finish within {DRAIN_TIMEOUT:?} after the run; aborting them"
        );
        tasks.abort_all();
    }

    let history = recorder.history();
    let observers: Vec<StreamLog<_>> = observers.iter().map(|log| lock(log).clone()).collect();
    let watchers: Vec<StreamLog<_>> = watchers.iter().map(|log| lock(log).clone()).collect();
    let mut verdicts = Vec::new();
    if workloads.contains(&WorkloadKind::Register) {
        verdicts.push(check::register::check(&history));
    }
    if workloads.contains(&WorkloadKind::Lock) {
        verdicts.push(check::lock::check(&history));
    }
    if workloads.contains(&WorkloadKind::Election) {
        let mut verdict = check::election::check(&history, &observers);
        check_reached(&mut verdict, &observers, *election_until_tx.borrow());
        verdicts.push(verdict);
    }
    if workloads.contains(&WorkloadKind::Watch) {
        let mut verdict = check::watch::check(&history, &watchers);
        check_reached(&mut verdict, &watchers, *watch_until_tx.borrow());
        verdicts.push(verdict);
    }
    if let Some(verdict) = verdicts.first_mut() {
        verdict.notes.extend(notes.iter().map(ToString::to_string));
    }
    let report = Report {
        seed,
        duration_secs,
        nemeses: nemeses
            .iter()
            .map(|k| format!("{k:?}").to_lowercase())
            .collect(),
        workloads: workloads
            .iter()
            .map(|k| format!("{k:?}").to_lowercase())
            .collect(),
        unsafe_local_reads: args.unsafe_local_reads,
        schedule: steps,
        faults: nemesis.log(),
        verdicts,
        history,
        observers,
        watchers,
    };
    print!("{}", report.text());
    if let Some(dir) = &args.out {
        report.write(dir)?;
        println!(
            "\nwrote {}/report.json, history.json, streams.json",
            dir.display()
        );
    }
    println!(
        "\nfenced-chaos: seed {seed}: {} operations checked, {} violations",
        report.checked(),
        report.violations()
    );
    drop(cluster);
    Ok(report)
}

/// Runs every checker again on a run's `--out` dir and prints the report.
/// The end-of-run stall checks need the sentinels and are not repeated.
fn recheck(dir: &std::path::Path) -> anyhow::Result<Report> {
    let read = |name: &str| -> anyhow::Result<String> {
        let path = dir.join(name);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    let history: Vec<record::Op> =
        serde_json::from_str(&read("history.json")?).context("parsing history.json")?;
    #[derive(serde::Deserialize)]
    struct Streams {
        observers: Vec<StreamLog<record::Observed>>,
        watchers: Vec<StreamLog<record::Seen>>,
    }
    let streams: Streams =
        serde_json::from_str(&read("streams.json")?).context("parsing streams.json")?;
    let summary: serde_json::Value =
        serde_json::from_str(&read("report.json")?).context("parsing report.json")?;
    let verdicts = vec![
        check::register::check(&history),
        check::lock::check(&history),
        check::election::check(&history, &streams.observers),
        check::watch::check(&history, &streams.watchers),
    ];
    let report = Report {
        seed: summary["seed"].as_u64().unwrap_or_default(),
        duration_secs: summary["report"]["duration_secs"]
            .as_f64()
            .unwrap_or_default(),
        nemeses: Vec::new(),
        workloads: Vec::new(),
        unsafe_local_reads: false,
        schedule: Vec::new(),
        faults: Vec::new(),
        verdicts,
        history,
        observers: streams.observers,
        watchers: streams.watchers,
    };
    print!("{}", report.text());
    println!(
        "\nfenced-chaos: recheck of {} (seed {}): {} operations checked, {} violations",
        dir.display(),
        report.seed,
        report.checked(),
        report.violations()
    );
    Ok(report)
}

/// A last campaign and resign by the harness, after the workloads
/// stopped; returns the winning token, the revision every observer must
/// reach. Recorded like any campaign.
async fn election_sentinel(context: &Context) -> Option<i64> {
    let client = context.client(0, true);
    let recorder = &context.recorder;
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while Instant::now() < deadline {
        let process = recorder.process();
        let Ok(session) = client.session_builder().ttl(LEASE_TTL).build().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let value = context.unique_value();
        let call = Call::Campaign {
            election: workload::election::ELECTION.into(),
            lease: session.lease_id(),
            value,
        };
        let pending = recorder.invoke(process, call);
        let wait = Duration::from_secs(10);
        match session
            .campaign_with_timeout(workload::election::ELECTION, value.to_string(), wait)
            .await
        {
            Ok(leadership) => {
                let token = leadership.token();
                recorder.complete(pending, Outcome::Ok(Ret::Granted { token }));
                let alive_until = recorder.at(session.status().alive_until().into_std());
                let call = Call::Resign {
                    election: workload::election::ELECTION.into(),
                    token,
                    alive_until,
                };
                let pending = recorder.invoke(process, call);
                let outcome = match leadership.resign().await {
                    Ok(()) => Outcome::Ok(Ret::Done),
                    Err(err) => workload::write_error(&err),
                };
                recorder.complete(pending, outcome);
                let _ = session.close().await;
                return Some(token);
            }
            Err(err) => {
                recorder.complete(pending, workload::grant_error(&err));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    None
}

/// A last put under the watched prefix; returns its revision, which every
/// watcher must reach.
async fn watch_sentinel(context: &Context) -> Option<i64> {
    let client = context.client(0, false);
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while Instant::now() < deadline {
        let process = context.recorder.process();
        if let Outcome::Ok(Ret::Written { revision }) =
            workload::watch_keys::put(context, &client, process).await
        {
            return Some(revision);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Flags every stream that did not get to `until` after the run (a watch
/// or observer that stalled misses everything after where it stopped).
fn check_reached<T: Clone + HasRevision>(
    verdict: &mut Verdict,
    logs: &[StreamLog<T>],
    until: Option<i64>,
) {
    let Some(until) = until else {
        return;
    };
    for log in logs {
        let last = log
            .items
            .last()
            .map_or(log.start_revision - 1, HasRevision::revision);
        if last < until {
            let errors: Vec<String> = log
                .errors
                .iter()
                .rev()
                .take(3)
                .map(|(time, error)| format!("{} {error}", record::secs(*time)))
                .collect();
            verdict.violations.push(
                Violation::new(
                    format!(
                        "{} stalled: it got to revision {last} and never to the final revision \
                         {until} within {DRAIN_TIMEOUT:?} after the run (last errors below)",
                        log.name
                    ),
                    Vec::new(),
                )
                .with_items(errors),
            );
        }
    }
}

/// Stream items carry the revision they reflect.
trait HasRevision {
    fn revision(&self) -> i64;
}

impl HasRevision for record::Seen {
    fn revision(&self) -> i64 {
        self.revision
    }
}

impl HasRevision for record::Observed {
    fn revision(&self) -> i64 {
        self.revision
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

//! The nemesis: a schedule of faults drawn from a seed before the run
//! starts (so the same seed gives the same schedule), and the task that
//! applies it to the cluster.
//!
//! Targets that only exist at run time ("the leader") are resolved when the
//! fault starts, and the fault log records what they resolved to.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use clap::ValueEnum;
use fenced_tests::{Cluster, Joiner, wait_for};
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::{Rng as _, SeedableRng as _};
use serde::Serialize;
use tokio::time::Instant;
use tonic::Code;

use crate::record::{Recorder, secs};

/// The families of faults `--nemesis` selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum NemesisKind {
    /// Network partitions through the fault proxy.
    Partition,
    /// SIGKILL and restart.
    Kill,
    /// SIGSTOP/SIGCONT of members, and client pauses of lock holders and
    /// leaders.
    Pause,
    /// Membership changes: a new member joins (from a snapshot, while the
    /// workloads run), becomes a voter, sometimes the leader, and is
    /// removed again.
    Member,
}

/// One fault, as scheduled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "fault", rename_all = "snake_case")]
pub(crate) enum Fault {
    /// Cut `minority` off from the other members.
    PartitionHalves { minority: Vec<u64> },
    /// Cut the current leader off from everyone.
    IsolateLeader,
    /// Two halves joined only through `order[2]`, which sees everyone
    /// (`order[0..2]` | `order[2]` | `order[3..]`).
    Bridge { order: Vec<u64> },
    /// Each member sees only its neighbours in `order` (a ring): every
    /// member is in a majority, and no two majorities are the same.
    Ring { order: Vec<u64> },
    /// SIGKILL `member` (`None`: the leader), restart it after the hold.
    Kill { member: Option<u64> },
    /// SIGSTOP `member` (`None`: the leader), SIGCONT after the hold.
    Pause { member: Option<u64> },
    /// The next lock holder or leader to reach its pause point freezes for
    /// the hold (longer than its lease) before using its token.
    ClientPause,
    /// A new member joins through the leader (`fenced --join`: added as a
    /// learner, catches up by snapshot, promoted automatically); with
    /// `lead`, leadership is then moved to it. At the end of the hold it is
    /// removed (with `lead`: the leader is removed, which moves leadership
    /// away first) and must exit 0. The original five members keep their
    /// ids; a member id is never used twice.
    MemberChurn { lead: bool },
}

/// A fault and when it starts and how long it lasts.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Step {
    /// From the start of the run.
    pub(crate) at: Duration,
    pub(crate) hold: Duration,
    pub(crate) fault: Fault,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "at {:>6.1}s for {:>4.1}s: {}",
            self.at.as_secs_f64(),
            self.hold.as_secs_f64(),
            self.fault
        )
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = |member: &Option<u64>| match member {
            Some(id) => format!("member {id}"),
            None => "the leader".to_owned(),
        };
        match self {
            Fault::PartitionHalves { minority } => write!(f, "partition {minority:?} | rest"),
            Fault::IsolateLeader => write!(f, "isolate the leader"),
            Fault::Bridge { order } => write!(
                f,
                "bridge {:?} | {} | {:?}",
                &order[..2],
                order[2],
                &order[3..]
            ),
            Fault::Ring { order } => write!(f, "overlapping majorities (ring {order:?})"),
            Fault::Kill { member } => write!(f, "SIGKILL {}, then restart", target(member)),
            Fault::Pause { member } => write!(f, "SIGSTOP {}, then SIGCONT", target(member)),
            Fault::ClientPause => write!(f, "pause a client holding a lock or leadership"),
            Fault::MemberChurn { lead: false } => write!(f, "add a member, then remove it"),
            Fault::MemberChurn { lead: true } => {
                write!(f, "add a member, make it the leader, then remove it")
            }
        }
    }
}

/// What the schedule may use.
#[derive(Clone, Debug)]
pub(crate) struct ScheduleSpec {
    pub(crate) seed: u64,
    pub(crate) kinds: BTreeSet<NemesisKind>,
    pub(crate) duration: Duration,
    pub(crate) members: Vec<u64>,
    /// Whether a workload takes client pauses (lock or election).
    pub(crate) client_pauses: bool,
    /// A client pause must outlast this (the workloads' lease TTL).
    pub(crate) lease_ttl: Duration,
}

/// The schedule for `spec`: faults one after another, each held for a few
/// seconds, with a few quiet seconds between them, until shortly before
/// the end. Deterministic in the seed.
pub(crate) fn schedule(spec: &ScheduleSpec) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut steps = Vec::new();
    let mut at = Duration::from_secs(3);
    let end = spec.duration.saturating_sub(Duration::from_secs(3));
    let mut choices: Vec<&str> = Vec::new();
    if spec.kinds.contains(&NemesisKind::Partition) {
        choices.extend(["halves", "isolate-leader", "bridge", "ring"]);
    }
    if spec.kinds.contains(&NemesisKind::Kill) {
        choices.extend(["kill", "kill-leader"]);
    }
    if spec.kinds.contains(&NemesisKind::Pause) {
        choices.extend(["pause", "pause-leader"]);
        if spec.client_pauses {
            choices.push("client-pause");
        }
    }
    if spec.kinds.contains(&NemesisKind::Member) {
        choices.extend(member_fault());
    }
    if choices.is_empty() || spec.members.len() < 3 {
        return steps;
    }
    loop {
        let choice = choices[rng.random_range(0..choices.len())];
        let mut order = spec.members.clone();
        order.shuffle(&mut rng);
        let member = order[0];
        let (fault, hold) = match choice {
            "halves" => {
                let minority = order[..spec.members.len() / 2].to_vec();
                (
                    Fault::PartitionHalves { minority },
                    secs_between(&mut rng, 2.0, 8.0),
                )
            }
            "isolate-leader" => (Fault::IsolateLeader, secs_between(&mut rng, 2.0, 8.0)),
            "bridge" => (Fault::Bridge { order }, secs_between(&mut rng, 2.0, 8.0)),
            "ring" => (Fault::Ring { order }, secs_between(&mut rng, 2.0, 8.0)),
            "kill" => (
                Fault::Kill {
                    member: Some(member),
                },
                secs_between(&mut rng, 1.0, 6.0),
            ),
            "kill-leader" => (
                Fault::Kill { member: None },
                secs_between(&mut rng, 1.0, 6.0),
            ),
            // Longer than the election timeout (1 s, randomized up to 2 s).
            "pause" => (
                Fault::Pause {
                    member: Some(member),
                },
                secs_between(&mut rng, 1.5, 5.0),
            ),
            "pause-leader" => (
                Fault::Pause { member: None },
                secs_between(&mut rng, 2.5, 5.0),
            ),
            "client-pause" => (
                Fault::ClientPause,
                spec.lease_ttl + secs_between(&mut rng, 1.0, 3.0),
            ),
            "member-churn" => (
                Fault::MemberChurn { lead: false },
                secs_between(&mut rng, 3.0, 8.0),
            ),
            "member-churn-leader" => (
                Fault::MemberChurn { lead: true },
                secs_between(&mut rng, 3.0, 8.0),
            ),
            other => unreachable!("unknown fault choice {other}"),
        };
        if at + hold > end {
            break;
        }
        steps.push(Step { at, hold, fault });
        at += hold + secs_between(&mut rng, 2.0, 5.0);
    }
    steps
}

/// The membership faults. The schedule reserves only the hold; joining
/// (which takes a snapshot install and a promotion) happens before it.
pub(crate) fn member_fault() -> Vec<&'static str> {
    vec!["member-churn", "member-churn-leader"]
}

/// How long a joining member may take to become a voter, and a removal to
/// be accepted.
const MEMBER_CHANGE_TIMEOUT: Duration = Duration::from_secs(30);

fn secs_between(rng: &mut StdRng, low: f64, high: f64) -> Duration {
    Duration::from_secs_f64(rng.random_range(low..high))
}

/// Client pauses the nemesis asked for and a workload has not taken yet.
#[derive(Debug, Default)]
pub(crate) struct ClientPauses {
    pending: Mutex<VecDeque<Duration>>,
}

impl ClientPauses {
    /// Asks the next client at a pause point to freeze for `hold`.
    fn request(&self, hold: Duration) {
        self.lock().push_back(hold);
    }

    /// A pause to take now, if one was asked for.
    pub(crate) fn take(&self) -> Option<Duration> {
        self.lock().pop_front()
    }

    /// Drops pauses nobody took (at the end of the run).
    fn clear(&self) -> usize {
        let mut pending = self.lock();
        let n = pending.len();
        pending.clear();
        n
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Duration>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A fault as it happened.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct FaultRecord {
    /// ns since the start.
    pub(crate) start: u64,
    pub(crate) end: Option<u64>,
    /// `partition`, `kill`, `pause`, `client-pause` or `member`.
    pub(crate) kind: &'static str,
    /// What was done, with the leader resolved.
    pub(crate) description: String,
}

impl fmt::Display for FaultRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = self.end.map_or_else(|| "-".to_owned(), secs);
        write!(
            f,
            "{:>10} .. {end:>10}  {}",
            secs(self.start),
            self.description
        )
    }
}

/// Applies a schedule to a cluster.
#[derive(Debug)]
pub(crate) struct Nemesis {
    cluster: Arc<Cluster>,
    recorder: Arc<Recorder>,
    pauses: Arc<ClientPauses>,
    /// Members this nemesis stopped or killed and has not brought back.
    stopped: Mutex<BTreeSet<u64>>,
    killed: Mutex<BTreeSet<u64>>,
    /// Members the nemesis added and has not removed yet.
    joiners: Mutex<BTreeMap<u64, Joiner>>,
    /// The id the next added member gets.
    next_member: AtomicU64,
    /// `RUST_LOG` of added members, as for the others.
    member_log: String,
    log: Mutex<Vec<FaultRecord>>,
}

impl Nemesis {
    pub(crate) fn new(
        cluster: Arc<Cluster>,
        recorder: Arc<Recorder>,
        pauses: Arc<ClientPauses>,
        first_new_member: u64,
        member_log: String,
    ) -> Nemesis {
        Nemesis {
            cluster,
            recorder,
            pauses,
            stopped: Mutex::default(),
            killed: Mutex::default(),
            joiners: Mutex::default(),
            next_member: AtomicU64::new(first_new_member),
            member_log,
            log: Mutex::default(),
        }
    }

    /// Runs `steps` from `start`. Cancel it by dropping the future, then
    /// call [`Nemesis::heal`].
    pub(crate) async fn run(&self, start: Instant, steps: &[Step]) {
        for step in steps {
            tokio::time::sleep_until(start + step.at).await;
            let index = self.begin(step).await;
            tokio::time::sleep(step.hold).await;
            self.end(step, index).await;
        }
    }

    /// Undoes whatever is still in effect: heals the network, resumes
    /// stopped members, restarts killed ones, removes added ones.
    pub(crate) async fn heal(&self) {
        self.cluster.heal_all();
        let stopped: Vec<u64> = std::mem::take(&mut *lock(&self.stopped))
            .into_iter()
            .collect();
        for id in stopped {
            if let Err(err) = self.cluster.resume(id) {
                eprintln!("nemesis: resuming member {id} at the end: {err:#}");
            }
        }
        let killed: Vec<u64> = std::mem::take(&mut *lock(&self.killed))
            .into_iter()
            .collect();
        for id in killed {
            if let Err(err) = self.cluster.restart(id) {
                eprintln!("nemesis: restarting member {id} at the end: {err:#}");
            }
        }
        if let Err(err) = self.remove_joiners().await {
            eprintln!("nemesis: removing added members at the end: {err:#}");
        }
        let untaken = self.pauses.clear();
        let now = self.recorder.now();
        for record in lock(&self.log).iter_mut() {
            if record.end.is_none() {
                record.end = Some(now);
            }
        }
        if untaken > 0 {
            eprintln!("nemesis: {untaken} client pause(s) were not taken by any client");
        }
    }

    /// Every fault applied so far.
    pub(crate) fn log(&self) -> Vec<FaultRecord> {
        lock(&self.log).clone()
    }

    async fn begin(&self, step: &Step) -> usize {
        let (kind, description) = match self.apply(&step.fault, step.hold).await {
            Ok(done) => done,
            Err(err) => ("failed", format!("{} failed: {err:#}", step.fault)),
        };
        println!("{:>10} nemesis: {description}", secs(self.recorder.now()));
        let mut log = lock(&self.log);
        log.push(FaultRecord {
            start: self.recorder.now(),
            end: None,
            kind,
            description,
        });
        log.len() - 1
    }

    async fn end(&self, step: &Step, index: usize) {
        let result: anyhow::Result<()> = async {
            match &step.fault {
                Fault::PartitionHalves { .. }
                | Fault::IsolateLeader
                | Fault::Bridge { .. }
                | Fault::Ring { .. } => self.cluster.heal_all(),
                Fault::Kill { .. } => {
                    let killed: Vec<u64> = std::mem::take(&mut *lock(&self.killed))
                        .into_iter()
                        .collect();
                    for id in killed {
                        self.cluster.restart(id)?;
                    }
                }
                Fault::Pause { .. } => {
                    let stopped: Vec<u64> = std::mem::take(&mut *lock(&self.stopped))
                        .into_iter()
                        .collect();
                    for id in stopped {
                        self.cluster.resume(id)?;
                    }
                }
                Fault::ClientPause => {}
                Fault::MemberChurn { .. } => self.remove_joiners().await?,
            }
            Ok(())
        }
        .await;
        if let Err(err) = result {
            eprintln!("nemesis: ending {}: {err:#}", step.fault);
        }
        if let Some(record) = lock(&self.log).get_mut(index) {
            record.end = Some(self.recorder.now());
        }
    }

    /// Starts `fault`; returns its kind and what was done.
    async fn apply(&self, fault: &Fault, hold: Duration) -> anyhow::Result<(&'static str, String)> {
        let cluster = &self.cluster;
        let done = match fault {
            Fault::PartitionHalves { minority } => {
                let rest: Vec<u64> = cluster.ids().filter(|id| !minority.contains(id)).collect();
                for &a in minority {
                    for &b in &rest {
                        cluster.cut(a, b);
                    }
                }
                ("partition", format!("partition {minority:?} | {rest:?}"))
            }
            Fault::IsolateLeader => {
                let leader = self.leader().await;
                cluster.isolate(leader);
                ("partition", format!("isolate leader {leader}"))
            }
            Fault::Bridge { order } => {
                let (left, right) = (&order[..2], &order[3..]);
                for &a in left {
                    for &b in right {
                        cluster.cut(a, b);
                    }
                }
                ("partition", format!("{fault}"))
            }
            Fault::Ring { order } => {
                let n = order.len();
                for i in 0..n {
                    for j in i + 1..n {
                        let distance = (j - i).min(n - (j - i));
                        if distance > 1 {
                            cluster.cut(order[i], order[j]);
                        }
                    }
                }
                ("partition", format!("{fault}"))
            }
            Fault::Kill { member } => {
                let (id, what) = self.target(*member).await;
                cluster.kill(id).await?;
                lock(&self.killed).insert(id);
                ("kill", format!("SIGKILL {what} {id}"))
            }
            Fault::Pause { member } => {
                let (id, what) = self.target(*member).await;
                cluster.pause(id).await?;
                lock(&self.stopped).insert(id);
                (
                    "pause",
                    format!("SIGSTOP {what} {id} for {:.1}s", hold.as_secs_f64()),
                )
            }
            Fault::ClientPause => {
                self.pauses.request(hold);
                (
                    "client-pause",
                    format!(
                        "client pause of {:.1}s requested (the next holder or leader takes it)",
                        hold.as_secs_f64()
                    ),
                )
            }
            Fault::MemberChurn { lead } => ("member", self.add_member(*lead).await?),
        };
        Ok(done)
    }

    /// Starts a new member that joins through the leader, waits until it
    /// is a voter, and with `lead` moves leadership to it. Returns what
    /// happened; a slow promotion or a refused transfer is reported, not an
    /// error (the member stays and is removed at the end of the hold).
    async fn add_member(&self, lead: bool) -> anyhow::Result<String> {
        let id = self.next_member.fetch_add(1, Ordering::Relaxed);
        let via = self.leader().await;
        let env = [("RUST_LOG", self.member_log.as_str())];
        let joiner = self.cluster.spawn_joiner(id, via, &[], &env)?;
        lock(&self.joiners).insert(id, joiner);
        let started = Instant::now();
        let client = self.cluster.client();
        let voter = wait_for(
            MEMBER_CHANGE_TIMEOUT,
            "the new member to be a voter",
            || {
                let client = client.clone();
                async move {
                    let list = client.member_list().await.map_err(|err| err.to_string())?;
                    match list.members.iter().find(|m| m.id == id) {
                        Some(m) if !m.learner => Ok(()),
                        Some(_) => Err(format!("member {id} is still a learner")),
                        None => Err(format!("member {id} is not in the member list yet")),
                    }
                }
            },
        )
        .await;
        let mut text = format!("member {id} joined through member {via}");
        match voter {
            Ok(()) => text += &format!(", a voter after {:.1}s", started.elapsed().as_secs_f64()),
            Err(err) => return Ok(format!("{text}; not a voter: {err:#}")),
        }
        if lead {
            match client.transfer_leader(id).await {
                Ok(_) => text += &format!(", then the leader (was {via})"),
                Err(err) => text += &format!("; leadership not moved to it: {err}"),
            }
        }
        Ok(text)
    }

    /// Removes every member this nemesis added (retrying while another
    /// change is in flight or there is no leader) and waits until each has
    /// exited; a removed member must exit 0.
    async fn remove_joiners(&self) -> anyhow::Result<()> {
        let joiners: Vec<Joiner> = std::mem::take(&mut *lock(&self.joiners))
            .into_values()
            .collect();
        let client = self.cluster.client();
        let mut problems = Vec::new();
        for joiner in joiners {
            let id = joiner.id();
            let removed = wait_for(MEMBER_CHANGE_TIMEOUT, "the removal to be accepted", || {
                let client = client.clone();
                async move {
                    match client.member_remove(id).await {
                        Ok(_) => Ok(()),
                        // Already gone: an earlier attempt whose answer was
                        // lost did it.
                        Err(err) if err.code() == Code::NotFound => Ok(()),
                        Err(err) => Err(err.to_string()),
                    }
                }
            })
            .await;
            if let Err(err) = removed {
                problems.push(format!("member {id} not removed: {err:#}"));
                continue;
            }
            match joiner.wait_exit(Duration::from_secs(15)).await {
                Some(status) if status.success() => println!(
                    "{:>10} nemesis: member {id} removed; it exited 0",
                    secs(self.recorder.now())
                ),
                Some(status) => problems.push(format!(
                    "removed member {id} exited with {status}; its log ends:\n{}",
                    joiner.log_tail(20)
                )),
                None => problems.push(format!("removed member {id} did not exit within 15 s")),
            }
        }
        match problems.is_empty() {
            true => Ok(()),
            false => Err(anyhow::anyhow!(problems.join("\n"))),
        }
    }

    /// The member a fault targets: the given one, or the leader.
    async fn target(&self, member: Option<u64>) -> (u64, &'static str) {
        match member {
            Some(id) => (id, "member"),
            None => (self.leader().await, "leader"),
        }
    }

    /// The current leader, or (when none is agreed on within a few
    /// seconds) the lowest live member, so the fault still happens.
    async fn leader(&self) -> u64 {
        match self.cluster.wait_for_leader(Duration::from_secs(3)).await {
            Ok(leader) => leader,
            Err(_) => self
                .cluster
                .ids()
                .find(|&id| self.cluster.is_live(id))
                .unwrap_or(1),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(seed: u64, kinds: &[NemesisKind]) -> ScheduleSpec {
        ScheduleSpec {
            seed,
            kinds: kinds.iter().copied().collect(),
            duration: Duration::from_secs(120),
            members: vec![1, 2, 3, 4, 5],
            client_pauses: true,
            lease_ttl: Duration::from_secs(2),
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let all = [
            NemesisKind::Partition,
            NemesisKind::Kill,
            NemesisKind::Pause,
        ];
        let a = schedule(&spec(7, &all));
        let b = schedule(&spec(7, &all));
        let c = schedule(&spec(8, &all));
        let text = |steps: &[Step]| steps.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert!(a.len() > 5, "{:?}", text(&a));
        assert_eq!(text(&a), text(&b));
        assert_ne!(text(&a), text(&c));
    }

    #[test]
    fn schedules_use_only_the_chosen_faults_and_end_in_time() {
        let steps = schedule(&spec(1, &[NemesisKind::Kill]));
        assert!(!steps.is_empty());
        for step in &steps {
            assert!(matches!(step.fault, Fault::Kill { .. }), "{step}");
            assert!(step.at + step.hold <= Duration::from_secs(117), "{step}");
        }
        let pauses = schedule(&spec(1, &[NemesisKind::Pause]));
        for step in &pauses {
            match step.fault {
                Fault::Pause { .. } => assert!(step.hold > Duration::from_secs(1), "{step}"),
                Fault::ClientPause => assert!(step.hold > Duration::from_secs(2), "{step}"),
                _ => panic!("not a pause: {step}"),
            }
        }
    }

    #[test]
    fn member_faults_add_and_remove_members() {
        let steps = schedule(&spec(1, &[NemesisKind::Member]));
        assert!(steps.len() > 3, "{steps:?}");
        for step in &steps {
            assert!(matches!(step.fault, Fault::MemberChurn { .. }), "{step}");
        }
        let leads = steps
            .iter()
            .filter(|s| s.fault == Fault::MemberChurn { lead: true })
            .count();
        assert!(leads > 0 && leads < steps.len(), "both kinds: {steps:?}");
    }
}

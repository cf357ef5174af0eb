//! [`Cluster`]: real `fenced` processes on loopback, wired through the fault
//! proxy, with the verbs a test needs to break them.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use fenced_client::pb::StatusResponse;
use fenced_client::{Client, ClientConfig};

use crate::member::{Member, MemberSpec, Signal};
use crate::ports::free_loopback_addr;
use crate::proxy::PeerNetwork;
use crate::{fencectl_bin, fenced_bin, wait_for};

/// How long a stopped member may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How many log lines of each member a failing test prints.
const LOG_TAIL_LINES: usize = 50;

/// Set this environment variable to keep the members' data dirs and logs
/// after a test (their paths are printed).
const KEEP_FILES_VAR: &str = "FENCED_TEST_KEEP_FILES";

/// What cluster to start.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    size: u64,
    extra_args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    ready_timeout: Duration,
}

impl ClusterConfig {
    /// A cluster of `size` members with ids `1..=size`.
    pub fn new(size: u64) -> ClusterConfig {
        ClusterConfig {
            size,
            extra_args: Vec::new(),
            env: Vec::new(),
            ready_timeout: Duration::from_secs(30),
        }
    }

    /// Appends a flag for every member, after the harness's own flags.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// Appends flags for every member.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.extra_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for every member (for example
    /// `RUST_LOG`).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// How long [`Cluster::start_with`] waits for every member to answer
    /// `Status` (30 s by default: the first start of a test run may share
    /// the machine with a build).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }
}

/// A running cluster of `fenced` processes, killed when dropped.
///
/// Members are numbered from 1. Methods taking a member id panic on an id
/// that is not in the cluster: that is a bug in the test, not a failure of
/// the system under test.
#[derive(Debug)]
pub struct Cluster {
    members: BTreeMap<u64, Member>,
    network: PeerNetwork,
    /// Runs the proxies; held only to be dropped, after `network` (fields
    /// drop in declaration order).
    _proxy_runtime: ProxyRuntime,
}

/// The runtime the proxies run on. A runtime of its own, so they keep
/// forwarding while the test blocks its thread or uses a single-threaded
/// runtime, and so a cluster works with any test runtime. Dropping it shuts
/// it down without blocking, which is allowed inside an async test (dropping
/// a plain `Runtime` there panics).
#[derive(Debug)]
struct ProxyRuntime(Option<tokio::runtime::Runtime>);

impl ProxyRuntime {
    fn start() -> anyhow::Result<ProxyRuntime> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fenced-test-proxy")
            .enable_all()
            .build()
            .context("starting the proxy runtime")?;
        Ok(ProxyRuntime(Some(runtime)))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        match &self.0 {
            Some(runtime) => runtime.handle(),
            None => unreachable!("only Drop takes the runtime"),
        }
    }
}

impl Drop for ProxyRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl Cluster {
    /// Starts `size` members and waits until each answers `Status`. It does
    /// not wait for a leader; see [`Cluster::wait_for_leader`].
    pub async fn start(size: u64) -> anyhow::Result<Cluster> {
        Cluster::start_with(ClusterConfig::new(size)).await
    }

    /// Starts a cluster as configured and waits until each member answers
    /// `Status`.
    pub async fn start_with(config: ClusterConfig) -> anyhow::Result<Cluster> {
        if config.size == 0 {
            bail!("a cluster needs at least one member");
        }
        // Build (or check) the binary first, so a long first build does not
        // eat into any timeout below.
        fenced_bin();
        let proxy_runtime = ProxyRuntime::start()?;
        let ids: Vec<u64> = (1..=config.size).collect();
        let client_addrs: BTreeMap<u64, SocketAddr> =
            ids.iter().map(|&id| (id, free_loopback_addr())).collect();
        let peer_addrs: BTreeMap<u64, SocketAddr> =
            ids.iter().map(|&id| (id, free_loopback_addr())).collect();
        let network = PeerNetwork::start(&peer_addrs, proxy_runtime.handle())
            .context("starting the fault proxies")?;

        let mut members = BTreeMap::new();
        for &id in &ids {
            // Each member sees the others at its own proxies, and itself at
            // its real peer address.
            let initial_cluster = ids
                .iter()
                .map(|&other| match other == id {
                    true => format!("{other}={}", peer_addrs[&other]),
                    false => format!("{other}={}", network.addr(id, other)),
                })
                .collect::<Vec<_>>()
                .join(",");
            let spec = MemberSpec {
                id,
                client_addr: client_addrs[&id],
                peer_addr: peer_addrs[&id],
                bootstrap: ["--initial-cluster".into(), initial_cluster],
                extra_args: config.extra_args.clone(),
                env: config.env.clone(),
            };
            let member = Member::new(spec).context("creating a member directory")?;
            members.insert(id, member);
        }
        // From here on, `Drop` cleans up whatever was started.
        let cluster = Cluster {
            members,
            network,
            _proxy_runtime: proxy_runtime,
        };
        for member in cluster.members.values() {
            member.start()?;
        }
        cluster.wait_ready(config.ready_timeout).await?;
        Ok(cluster)
    }

    /// The member ids, ascending.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.members.keys().copied()
    }

    /// The number of members.
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// The fault proxy between the members.
    pub fn network(&self) -> &PeerNetwork {
        &self.network
    }

    /// Cuts all traffic between members `a` and `b`; see [`PeerNetwork::cut`].
    pub fn cut(&self, a: u64, b: u64) {
        self.network.cut(a, b);
    }

    /// Lets traffic between `a` and `b` flow again.
    pub fn heal(&self, a: u64, b: u64) {
        self.network.heal(a, b);
    }

    /// Cuts member `id` off from all others.
    pub fn isolate(&self, id: u64) {
        self.network.isolate(id);
    }

    /// Heals every cut.
    pub fn heal_all(&self) {
        self.network.heal_all();
    }

    // ------------------------------------------------------------ processes

    /// Starts a new member `id` that joins the cluster through member
    /// `via`'s client address (`fenced --join`), with `extra_args` on top of
    /// nothing else: it does not inherit the cluster's extra arguments. It
    /// talks to the others directly, not through the fault proxies. Returns
    /// once the process is spawned.
    pub fn join(&mut self, id: u64, via: u64, extra_args: &[&str]) -> anyhow::Result<()> {
        if self.members.contains_key(&id) {
            bail!("member {id} already exists in the harness");
        }
        let member = self.start_joiner(id, via, extra_args, &[])?;
        self.members.insert(id, member);
        Ok(())
    }

    /// Like [`Cluster::join`], but the new member is not part of this
    /// `Cluster` (whose other methods keep meaning the members it started
    /// with): the caller owns it, and dropping the [`Joiner`] kills it.
    /// For a nemesis that adds and removes members while the cluster is
    /// shared.
    pub fn spawn_joiner(
        &self,
        id: u64,
        via: u64,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Joiner> {
        self.start_joiner(id, via, extra_args, env).map(Joiner)
    }

    fn start_joiner(
        &self,
        id: u64,
        via: u64,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Member> {
        let spec = MemberSpec {
            id,
            client_addr: free_loopback_addr(),
            peer_addr: free_loopback_addr(),
            bootstrap: ["--join".into(), self.endpoint(via)],
            extra_args: extra_args.iter().map(OsString::from).collect(),
            env: env
                .iter()
                .map(|(key, value)| (OsString::from(key), OsString::from(value)))
                .collect(),
        };
        let member = Member::new(spec).context("creating a member directory")?;
        member.start()?;
        Ok(member)
    }

    /// Crashes member `id` (SIGKILL) and waits until it has exited.
    pub async fn kill(&self, id: u64) -> anyhow::Result<()> {
        let member = self.member(id);
        member.signal(Signal::Kill)?;
        member
            .wait_exit(STOP_TIMEOUT)
            .await
            .with_context(|| format!("member {id} did not exit after SIGKILL"))?;
        Ok(())
    }

    /// Asks member `id` to shut down (SIGTERM), waits up to 10 s for it to
    /// exit and returns its exit status. A paused member is resumed so it
    /// can act on the signal.
    pub async fn stop(&self, id: u64) -> anyhow::Result<ExitStatus> {
        let member = self.member(id);
        member.signal(Signal::Terminate)?;
        member
            .wait_exit(STOP_TIMEOUT)
            .await
            .ok_or_else(|| anyhow!("member {id} did not exit within {STOP_TIMEOUT:?} of SIGTERM"))
    }

    /// Freezes member `id` (SIGSTOP) and waits until the kernel reports it
    /// stopped. Its sockets stay open, so peers see silence, not errors.
    pub async fn pause(&self, id: u64) -> anyhow::Result<()> {
        let member = self.member(id);
        member.signal(Signal::Stop)?;
        member.wait_stopped(Duration::from_secs(5)).await
    }

    /// Thaws member `id` (SIGCONT).
    pub fn resume(&self, id: u64) -> anyhow::Result<()> {
        self.member(id).signal(Signal::Continue)
    }

    /// Starts member `id` again, with the same flags and data dir. It must
    /// have exited (see [`Cluster::kill`] and [`Cluster::stop`]). Returns
    /// once the process is spawned; wait for what the test needs next.
    pub fn restart(&self, id: u64) -> anyhow::Result<()> {
        self.member(id).start()
    }

    /// Whether member `id`'s process is running and not paused.
    pub fn is_live(&self, id: u64) -> bool {
        self.member(id).is_live()
    }

    /// Member `id`'s exit status, once it has exited.
    pub fn exit_status(&self, id: u64) -> Option<ExitStatus> {
        self.member(id).exit_status()
    }

    /// Member `id`'s data dir.
    pub fn data_dir(&self, id: u64) -> &std::path::Path {
        self.member(id).data_dir()
    }

    /// Member `id`'s log (stdout and stderr, across restarts).
    pub fn log_path(&self, id: u64) -> &std::path::Path {
        self.member(id).log_path()
    }

    // ------------------------------------------------------------ clients

    /// Member `id`'s client address, `127.0.0.1:PORT`.
    pub fn endpoint(&self, id: u64) -> String {
        self.member(id).client_addr.to_string()
    }

    /// Every member's client address, in id order.
    pub fn endpoints(&self) -> Vec<String> {
        self.ids().map(|id| self.endpoint(id)).collect()
    }

    /// Every member's client address, member `first`'s first and the
    /// others in id order: for a client that must start on that member.
    pub fn endpoints_from(&self, first: u64) -> Vec<String> {
        let mut endpoints = vec![self.endpoint(first)];
        endpoints.extend(
            self.ids()
                .filter(|&id| id != first)
                .map(|id| self.endpoint(id)),
        );
        endpoints
    }

    /// Member `id`'s real peer address (`--peer-listen`), not a proxy.
    pub fn peer_addr(&self, id: u64) -> SocketAddr {
        self.member(id).peer_addr
    }

    /// A client configuration over every member, to adjust before
    /// `build()`.
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::new(self.endpoints())
    }

    /// A client over every member, with the default configuration.
    pub fn client(&self) -> Client {
        build(self.client_config())
    }

    /// A client that talks only to member `id` and never retries, so every
    /// answer (and every error) is that member's own.
    pub fn client_of(&self, id: u64) -> Client {
        build(ClientConfig::new([self.endpoint(id)]).retry(false))
    }

    /// Member `id`'s status, asked once.
    pub async fn status(&self, id: u64) -> anyhow::Result<StatusResponse> {
        self.client_of(id)
            .status()
            .await
            .with_context(|| format!("status of member {id}"))
    }

    /// Member `id`'s status with its state digest (a pass over its whole
    /// state: for comparing members once they converged).
    pub async fn status_with_digest(&self, id: u64) -> anyhow::Result<StatusResponse> {
        let endpoint = self.endpoint(id);
        self.client_of(id)
            .status_of_with(&endpoint, true)
            .await
            .with_context(|| format!("status of member {id}"))
    }

    /// A `fencectl` command with `--endpoints` set to every member; add the
    /// subcommand and run it.
    pub fn fencectl(&self) -> std::process::Command {
        let mut command = std::process::Command::new(fencectl_bin());
        command.arg("--endpoints").arg(self.endpoints().join(","));
        command
    }

    // ------------------------------------------------------------ waiting

    /// Waits until a leader is agreed on, and returns its id.
    ///
    /// Agreed means: a majority of the *whole* cluster (not just of the live
    /// members) reports the same leader in `Status`, and that leader answers
    /// too and names itself. Requiring a cluster majority means a member
    /// that is cut off and still believes in an old leader cannot produce a
    /// false answer; requiring the leader's own answer means a paused or
    /// killed leader does not count.
    pub async fn wait_for_leader(&self, timeout: Duration) -> anyhow::Result<u64> {
        let quorum = self.members.len() / 2 + 1;
        let probes: BTreeMap<u64, Client> = self
            .ids()
            .map(|id| {
                let config = ClientConfig::new([self.endpoint(id)])
                    .retry(false)
                    .request_timeout(Duration::from_millis(500));
                (id, build(config))
            })
            .collect();
        wait_for(timeout, "a leader agreed on by a majority", || async {
            let live: Vec<u64> = self.ids().filter(|&id| self.is_live(id)).collect();
            let answers = futures::future::join_all(
                live.iter()
                    .map(|id| async { (*id, probes[id].status().await) }),
            )
            .await;
            let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
            for (_, answer) in &answers {
                if let Ok(status) = answer
                    && status.leader != 0
                {
                    *votes.entry(status.leader).or_default() += 1;
                }
            }
            let self_confirmed = |leader: u64| {
                answers.iter().any(|(id, answer)| {
                    *id == leader && answer.as_ref().is_ok_and(|s| s.leader == leader)
                })
            };
            votes
                .iter()
                .find(|&(&leader, &count)| count >= quorum && self_confirmed(leader))
                .map(|(&leader, _)| leader)
                .ok_or_else(|| describe_answers(&answers))
        })
        .await
    }

    /// Waits until every member that is running answers `Status`; fails at
    /// once if a member exits.
    async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let result = wait_for(timeout, "every member to answer Status", || async {
            for (&id, member) in &self.members {
                if member.has_exited() {
                    return Err(ExitedEarly(id, member.exit_status()).to_string());
                }
            }
            let answers = futures::future::join_all(
                self.ids()
                    .map(|id| async move { (id, self.status(id).await) }),
            )
            .await;
            match answers.iter().all(|(_, answer)| answer.is_ok()) {
                true => Ok(()),
                false => Err(describe_answers(&answers)),
            }
        })
        .await;
        result.map_err(|err| {
            let logs: Vec<String> = self
                .members
                .values()
                .map(|member| {
                    format!(
                        "---- member {} log ({}):\n{}",
                        member.id,
                        member.log_path().display(),
                        member.log_tail(LOG_TAIL_LINES)
                    )
                })
                .collect();
            err.context(logs.join("\n"))
        })
    }

    fn member(&self, id: u64) -> &Member {
        self.members
            .get(&id)
            .unwrap_or_else(|| panic!("no member {id} in a cluster of {}", self.members.len()))
    }
}

impl Drop for Cluster {
    /// Kills every member, then prints the tail of each member's log.
    ///
    /// The logs are printed on every drop, not only while panicking: a test
    /// that fails by returning `Err` is not panicking when its cluster is
    /// dropped. The test runner captures this output and shows it only for
    /// tests that fail (or with `--nocapture`).
    fn drop(&mut self) {
        for member in self.members.values() {
            member.kill_and_reap();
        }
        let keep = std::env::var_os(KEEP_FILES_VAR).is_some();
        let failed = match std::thread::panicking() {
            true => " (the test panicked)",
            false => "",
        };
        eprintln!("==== fenced-tests: cluster dropped{failed}; member logs follow");
        for member in self.members.values_mut() {
            eprintln!(
                "---- member {} log, last {LOG_TAIL_LINES} lines ({}):\n{}",
                member.id,
                member.log_path().display(),
                member.log_tail(LOG_TAIL_LINES)
            );
            if keep && let Some(path) = member.keep_files() {
                eprintln!("---- member {} files kept in {}", member.id, path.display());
            }
        }
        if !keep {
            eprintln!("(set {KEEP_FILES_VAR}=1 to keep the members' data dirs and logs)");
        }
    }
}

/// A member started with [`Cluster::spawn_joiner`], owned by the caller.
/// Dropping it kills the process and deletes its files.
#[derive(Debug)]
pub struct Joiner(Member);

impl Joiner {
    /// Its member id.
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// Its client address, `127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        self.0.client_addr.to_string()
    }

    /// Waits up to `timeout` for the process to exit; its status, if it
    /// did.
    pub async fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        self.0.wait_exit(timeout).await
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.0.log_tail(lines)
    }
}

impl Drop for Joiner {
    fn drop(&mut self) {
        self.0.kill_and_reap();
    }
}

/// A member process that exited while the harness waited for it.
struct ExitedEarly(u64, Option<ExitStatus>);

impl std::fmt::Display for ExitedEarly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.1 {
            Some(status) => write!(f, "member {} exited early ({status})", self.0),
            None => write!(f, "member {} is not running", self.0),
        }
    }
}

/// One line per member: what its `Status` said, or its error. The "last
/// seen" part of a wait's timeout message.
fn describe_answers(answers: &[(u64, Result<StatusResponse, impl std::fmt::Display>)]) -> String {
    let lines: Vec<String> = answers
        .iter()
        .map(|(id, answer)| match answer {
            Ok(status) => format!(
                "member {id}: leader {} term {} role {:?} applied {}",
                status.leader, status.raft_term, status.role, status.applied_index
            ),
            Err(err) => format!("member {id}: {err:#}"),
        })
        .collect();
    lines.join("; ")
}

/// Builds a client for harness-made endpoints, which are always valid.
fn build(config: ClientConfig) -> Client {
    match config.build() {
        Ok(client) => client,
        Err(err) => panic!("harness endpoints are well-formed: {err}"),
    }
}

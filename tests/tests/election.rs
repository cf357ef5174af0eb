//! Elections against real members: `fencectl elect` candidates on different
//! members, one leader at every moment, a killed leader replaced when its
//! lease runs out (not before, not much later) with a higher token, and
//! observers on different members that see the same sequence; proclaim and
//! resign only by the current leadership; FIFO hand-off on resign; and the
//! errors bad input gets.

use std::os::unix::process::CommandExt as _;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use fenced_client::pb::{
    self, election_client::ElectionClient, kv_client::KvClient, lease_client::LeaseClient,
};
use fenced_tests::{Cluster, POLL_INTERVAL, fencectl_bin, wait_until};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tonic::Code;
use tonic::transport::Channel;

const LEADER_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a stream may stay silent when the test expects something.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(20);

async fn channel(cluster: &Cluster, id: u64) -> anyhow::Result<Channel> {
    Ok(
        tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.endpoint(id)))?
            .connect()
            .await?,
    )
}

/// Raw clients of one member.
#[derive(Clone)]
struct Member {
    election: ElectionClient<Channel>,
    leases: LeaseClient<Channel>,
    kv: KvClient<Channel>,
}

impl Member {
    async fn connect(cluster: &Cluster, id: u64) -> anyhow::Result<Member> {
        let channel = channel(cluster, id).await?;
        Ok(Member {
            election: ElectionClient::new(channel.clone()),
            leases: LeaseClient::new(channel.clone()),
            kv: KvClient::new(channel),
        })
    }

    async fn grant(&mut self, ttl: i64) -> anyhow::Result<i64> {
        let granted = self
            .leases
            .grant(pb::LeaseGrantRequest { ttl, id: 0 })
            .await?
            .into_inner();
        Ok(granted.id)
    }

    async fn campaign(
        &mut self,
        name: &str,
        lease: i64,
        value: &str,
    ) -> Result<pb::LeaderKey, tonic::Status> {
        let response = self
            .election
            .campaign(campaign(name, lease, value))
            .await?
            .into_inner();
        response
            .leader
            .ok_or_else(|| tonic::Status::internal("campaign answered without a leader key"))
    }

    /// `(token, lease, value)` of the current leader; `None` on NOT_FOUND.
    async fn leader(&mut self, name: &str) -> anyhow::Result<Option<(i64, i64, Vec<u8>)>> {
        match self
            .election
            .leader(pb::LeaderRequest {
                name: name.into(),
                serializable: false,
            })
            .await
        {
            Ok(response) => {
                let response = response.into_inner();
                let key = response.leader.context("leader without key")?;
                Ok(Some((key.token, key.lease, response.value)))
            }
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(status.into()),
        }
    }

    async fn proclaim(&mut self, key: &pb::LeaderKey, value: &str) -> Result<i64, tonic::Status> {
        let response = self
            .election
            .proclaim(pb::ProclaimRequest {
                leader: Some(key.clone()),
                value: value.into(),
            })
            .await?
            .into_inner();
        Ok(response.header.map_or(0, |h| h.revision))
    }

    async fn resign(&mut self, key: &pb::LeaderKey) -> Result<i64, tonic::Status> {
        let response = self
            .election
            .resign(pb::ResignRequest {
                leader: Some(key.clone()),
            })
            .await?
            .into_inner();
        Ok(response.header.map_or(0, |h| h.revision))
    }

    /// How many candidates are queued in election `name` (leader included).
    async fn candidates(&mut self, name: &str) -> anyhow::Result<i64> {
        let response = self
            .kv
            .range(pb::RangeRequest {
                key: format!("__fenced/election/{name}/").into_bytes(),
                prefix: true,
                count_only: true,
                ..Default::default()
            })
            .await?
            .into_inner();
        Ok(response.count)
    }

    async fn wait_for_candidates(&mut self, name: &str, count: i64) -> anyhow::Result<()> {
        let what = format!("{count} candidates in election {name}");
        wait_until(Duration::from_secs(10), &what, || {
            let mut member = self.clone();
            async move { member.candidates(name).await.is_ok_and(|c| c == count) }
        })
        .await
    }
}

fn campaign(name: &str, lease: i64, value: &str) -> pb::CampaignRequest {
    pb::CampaignRequest {
        name: name.into(),
        lease,
        value: value.into(),
        wait_timeout_ms: 0,
    }
}

/// One observation: revision, leader `(token, lease)` (none: no leader),
/// value.
type Seen = (i64, Option<(i64, i64)>, Vec<u8>);

fn seen(response: &pb::ObserveResponse) -> Seen {
    (
        response.revision,
        response.leader.as_ref().map(|l| (l.token, l.lease)),
        response.value.clone(),
    )
}

fn led(revision: i64, token: i64, lease: i64, value: &str) -> Seen {
    (revision, Some((token, lease)), value.into())
}

/// An `Observe` stream on one member, read in the background into a list.
struct Observer {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Why the stream stopped, once it did.
    stopped: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Observer {
    async fn start(member: &Member, name: &str, start_revision: i64) -> anyhow::Result<Observer> {
        let mut stream = member
            .election
            .clone()
            .observe(pb::ObserveRequest {
                name: name.into(),
                start_revision,
            })
            .await?
            .into_inner();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let stopped: Arc<Mutex<Option<String>>> = Arc::default();
        let task = {
            let (seen, stopped) = (seen.clone(), stopped.clone());
            tokio::spawn(async move {
                let why = loop {
                    match stream.message().await {
                        Ok(Some(response)) => {
                            let header = response.header.as_ref().map_or(0, |h| h.revision);
                            if header != response.revision {
                                break format!(
                                    "observation and header revisions differ: {response:?}"
                                );
                            }
                            seen.lock().unwrap().push(self::seen(&response));
                        }
                        Ok(None) => break "the observe stream ended".to_string(),
                        Err(status) => break format!("the observe stream failed: {status}"),
                    }
                };
                *stopped.lock().unwrap() = Some(why);
            })
        };
        Ok(Observer {
            seen,
            stopped,
            task,
        })
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until the observer has seen `count` observations.
    async fn wait_for(&self, count: usize) -> anyhow::Result<Vec<Seen>> {
        let what = format!("{count} observations");
        wait_until(RESPONSE_TIMEOUT, &what, || async {
            self.seen.lock().unwrap().len() >= count || self.stopped.lock().unwrap().is_some()
        })
        .await
        .with_context(|| format!("seen so far: {:?}", self.seen()))?;
        if let Some(why) = self.stopped.lock().unwrap().clone() {
            bail!("{why}, after {:?}", self.seen());
        }
        Ok(self.seen())
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ------------------------------------------------------------------ a

/// A `fencectl -o json elect` process, in its own process group so it can
/// be killed like a crashed machine.
struct Candidate {
    child: Child,
    /// The `elected` line once printed, and when it was read.
    elected: tokio::task::JoinHandle<anyhow::Result<(Instant, serde_json::Value)>>,
}

impl Candidate {
    /// Campaigns for `name` with `value` through member `first` (the other
    /// members follow it in `--endpoints`, for failover).
    fn start(
        cluster: &Cluster,
        first: u64,
        name: &str,
        value: &str,
        ttl: u64,
    ) -> anyhow::Result<Self> {
        let endpoints = cluster.endpoints_from(first);
        let mut command = std::process::Command::new(fencectl_bin());
        command
            .arg("--endpoints")
            .arg(endpoints.join(","))
            .args([
                "-o",
                "json",
                "elect",
                name,
                value,
                "--ttl",
                &ttl.to_string(),
            ])
            .process_group(0)
            .stdout(Stdio::piped());
        let mut child = Command::from(command).kill_on_drop(true).spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let elected = tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let line = lines
                .next_line()
                .await?
                .context("exited without being elected")?;
            let at = Instant::now();
            Ok((
                at,
                serde_json::from_str(&line).with_context(|| line.clone())?,
            ))
        });
        Ok(Candidate { child, elected })
    }

    /// Waits for the `elected` line; returns when it came, token and lease.
    async fn elected(&mut self) -> anyhow::Result<(Instant, i64, i64)> {
        let (at, json) = tokio::time::timeout(Duration::from_secs(30), &mut self.elected)
            .await
            .context("not elected within 30 s")???;
        let token = json["token"].as_i64().with_context(|| json.to_string())?;
        let lease = json["lease"].as_i64().with_context(|| json.to_string())?;
        Ok((at, token, lease))
    }

    fn is_elected(&self) -> bool {
        self.elected.is_finished()
    }

    fn pid(&self) -> anyhow::Result<libc::pid_t> {
        Ok(self.child.id().context("already reaped")? as libc::pid_t)
    }

    /// SIGKILL to the whole group: the client dies without a word.
    #[allow(unsafe_code)]
    fn crash(&self) -> anyhow::Result<()> {
        // SAFETY: killpg(2) takes two integers and touches none of our
        // memory; the group is our unreaped child's own (process_group(0)).
        let rc = unsafe { libc::killpg(self.pid()?, libc::SIGKILL) };
        ensure!(rc == 0, "killpg failed");
        Ok(())
    }

    /// SIGTERM: the candidate resigns, revokes its lease and exits 0.
    #[allow(unsafe_code)]
    async fn stop(&mut self) -> anyhow::Result<()> {
        // SAFETY: kill(2) takes two integers and touches none of our memory;
        // the pid is our child, not reaped yet (we hold its `Child`).
        let rc = unsafe { libc::kill(self.pid()?, libc::SIGTERM) };
        ensure!(rc == 0, "kill failed");
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await??;
        ensure!(status.success(), "fencectl elect exited with {status}");
        Ok(())
    }
}

/// `fencectl -o json observe NAME` through one member, collecting every
/// observation line.
struct CliObserver {
    _child: Child,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl CliObserver {
    fn start(cluster: &Cluster, member: u64, name: &str) -> anyhow::Result<CliObserver> {
        let mut command = std::process::Command::new(fencectl_bin());
        command
            .arg("--endpoints")
            .arg(cluster.endpoint(member))
            .args(["-o", "json", "observe", name])
            .stdout(Stdio::piped());
        let mut child = Command::from(command).kill_on_drop(true).spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) else {
                        continue;
                    };
                    let leader = json["token"].as_i64().zip(json["lease"].as_i64());
                    let value = json["value"].as_str().unwrap_or_default();
                    let revision = json["revision"].as_i64().unwrap_or(-1);
                    seen.lock()
                        .unwrap()
                        .push((revision, leader, value.as_bytes().to_vec()));
                }
            });
        }
        Ok(CliObserver {
            _child: child,
            seen,
        })
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// What a background poller of `Leader` saw, with when.
type Polled = Vec<(Instant, Option<(i64, i64, Vec<u8>)>)>;

#[tokio::test]
async fn a_killed_leaders_successor_is_elected_when_its_lease_runs_out_and_all_observers_agree()
-> anyhow::Result<()> {
    const NAME: &str = "svc";
    const TTL: u64 = 3;
    let cluster = Cluster::start(3).await?;
    cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    let mut members = Vec::new();
    for id in cluster.ids() {
        members.push(Member::connect(&cluster, id).await?);
    }

    // Observers on members 1 and 3 (raw) and 2 (fencectl), before anyone
    // campaigns: each starts with "no leader".
    let first = Observer::start(&members[0], NAME, 0).await?;
    let third = Observer::start(&members[2], NAME, 0).await?;
    let cli = CliObserver::start(&cluster, 2, NAME)?;
    for observer in [&first, &third] {
        let initial = observer.wait_for(1).await?;
        ensure!(initial[0].1.is_none(), "{initial:?}");
    }

    // A through member 1, then B through 2, then C through 3.
    let mut a = Candidate::start(&cluster, 1, NAME, "cand-a", TTL)?;
    let (_, a_token, a_lease) = a.elected().await?;
    let mut b = Candidate::start(&cluster, 2, NAME, "cand-b", TTL)?;
    members[0].wait_for_candidates(NAME, 2).await?;
    let mut c = Candidate::start(&cluster, 3, NAME, "cand-c", TTL)?;
    members[0].wait_for_candidates(NAME, 3).await?;
    ensure!(!b.is_elected() && !c.is_elected(), "two candidates elected");

    // `Leader`, polled in the background through every member in turn.
    let polled: Arc<Mutex<Polled>> = Arc::default();
    let poller = {
        let polled = polled.clone();
        let mut members = members.clone();
        tokio::spawn(async move {
            for n in 0.. {
                let answer = members[n % 3].leader(NAME).await?;
                polled.lock().unwrap().push((Instant::now(), answer));
                tokio::time::sleep(POLL_INTERVAL).await;
            }
            anyhow::Ok(())
        })
    };
    wait_until(Duration::from_secs(10), "a few Leader polls", || async {
        polled.lock().unwrap().len() >= 3
    })
    .await?;
    let leader_json = cluster
        .fencectl()
        .args(["-o", "json", "leader", NAME])
        .output()?;
    ensure!(leader_json.status.success(), "{leader_json:?}");
    let leader_json: serde_json::Value = serde_json::from_slice(&leader_json.stdout)?;
    ensure!(
        leader_json["value"] == "cand-a" && leader_json["token"] == a_token,
        "fencectl leader said {leader_json}"
    );

    // Crash A's client. B takes over once A's lease expired: no sooner than
    // the TTL minus the keepalive interval (TTL/3), within TTL + 1 s.
    a.crash()?;
    let crashed_at = Instant::now();
    let (b_at, b_token, b_lease) = b.elected().await?;
    let took = b_at - crashed_at;
    let ttl = Duration::from_secs(TTL);
    ensure!(
        took >= ttl * 2 / 3,
        "B was elected only {took:?} after A crashed"
    );
    ensure!(
        took <= ttl + Duration::from_secs(1),
        "B took {took:?} to be elected after A crashed"
    );
    ensure!(b_token > a_token, "B's token {b_token} after A's {a_token}");
    ensure!(!c.is_elected(), "C elected while B leads");
    let polled_token = |token: i64| {
        let polled = polled.clone();
        async move {
            let what = format!("a Leader poll naming token {token}");
            wait_until(Duration::from_secs(10), &what, || async {
                polled
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|(_, answer)| answer.as_ref().is_some_and(|l| l.0 == token))
            })
            .await
        }
    };
    polled_token(b_token).await?;

    // B steps down cleanly: C, next in line, leads at once. Then C too:
    // no leader.
    b.stop().await?;
    let (_, c_token, c_lease) = c.elected().await?;
    ensure!(c_token > b_token);
    polled_token(c_token).await?;
    c.stop().await?;
    let expected_len = 5;
    let first_seen = first.wait_for(expected_len).await?;
    let third_seen = third.wait_for(expected_len).await?;
    if poller.is_finished() {
        bail!("the Leader poller stopped: {:?}", poller.await?);
    }
    poller.abort();

    // Both raw observers: no leader, A, B (at its token: A's expiry and B's
    // grant are one revision), C, no leader.
    let end = first_seen[4].0;
    let expected = [
        led(a_token, a_token, a_lease, "cand-a"),
        led(b_token, b_token, b_lease, "cand-b"),
        led(c_token, c_token, c_lease, "cand-c"),
        (end, None, Vec::new()),
    ];
    assert_eq!(first_seen[1..], expected[..], "observer on member 1");
    assert_eq!(
        third_seen[1..],
        first_seen[1..],
        "observers on members 1 and 3"
    );
    ensure!(end > c_token);
    // fencectl observe on member 2 saw the same, after its own start.
    wait_until(
        Duration::from_secs(10),
        "fencectl observe to catch up",
        || async { cli.seen().last() == expected.last() },
    )
    .await
    .with_context(|| format!("fencectl observe saw {:?}", cli.seen()))?;
    let cli_seen = cli.seen();
    ensure!(cli_seen[0].1.is_none(), "{cli_seen:?}");
    assert_eq!(cli_seen[1..], expected[..], "fencectl observe on member 2");

    // Every `Leader` answer named exactly one leader, in order, never going
    // back, and never B before A's lease could have run out.
    let polled = std::mem::take(&mut *polled.lock().unwrap());
    let mut last_token = 0;
    for (at, answer) in &polled {
        match answer {
            Some((token, lease, value)) => {
                let (expected_lease, expected_value) = match *token {
                    t if t == a_token => (a_lease, "cand-a"),
                    t if t == b_token => (b_lease, "cand-b"),
                    t if t == c_token => (c_lease, "cand-c"),
                    t => bail!("Leader named token {t}, no candidate's"),
                };
                ensure!(*lease == expected_lease && value == expected_value.as_bytes());
                ensure!(*token >= last_token, "Leader went back to {token}");
                if *token == b_token {
                    ensure!(
                        *at - crashed_at >= ttl * 2 / 3,
                        "Leader named B {:?} after A crashed",
                        *at - crashed_at
                    );
                }
                last_token = *token;
            }
            None => ensure!(
                last_token == c_token,
                "Leader found no leader while candidates were queued"
            ),
        }
    }
    let tokens: Vec<i64> = polled
        .iter()
        .filter_map(|(_, a)| a.as_ref().map(|l| l.0))
        .collect();
    ensure!(
        tokens.contains(&a_token) && tokens.contains(&b_token) && tokens.contains(&c_token),
        "Leader polls saw tokens {tokens:?}; A {a_token}, B {b_token}, C {c_token}"
    );
    eprintln!(
        "A {a_token}, B {b_token} ({took:?} after the crash, TTL {ttl:?}), C {c_token}; \
         {} Leader polls",
        polled.len()
    );
    Ok(())
}

// ------------------------------------------------------------------ b

#[tokio::test]
async fn only_the_current_leadership_may_proclaim_or_resign() -> anyhow::Result<()> {
    const NAME: &str = "jobs/scheduler";
    let cluster = Cluster::start(3).await?;
    cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    let mut m1 = Member::connect(&cluster, 1).await?;
    let mut m2 = Member::connect(&cluster, 2).await?;
    let mut m3 = Member::connect(&cluster, 3).await?;
    let observer = Observer::start(&m2, NAME, 0).await?;
    observer.wait_for(1).await?;
    let l1 = m1.grant(60).await?;
    let l2 = m1.grant(60).await?;

    let key1 = m1.campaign(NAME, l1, "one").await?;
    let second = {
        let mut m3 = m3.clone();
        tokio::spawn(async move { m3.campaign(NAME, l2, "two").await })
    };
    m1.wait_for_candidates(NAME, 2).await?;

    // The leader proclaims; everyone sees the new value.
    let proclaimed = m2.proclaim(&key1, "one-b").await?;
    assert_eq!(
        m3.leader(NAME).await?,
        Some((key1.token, l1, b"one-b".to_vec()))
    );

    // Resign hands over to L2 in the same revision.
    let resigned = m1.resign(&key1).await?;
    let key2 = tokio::time::timeout(RESPONSE_TIMEOUT, second).await???;
    assert_eq!(key2.token, resigned, "L2 is elected by the resign itself");
    ensure!(key2.token > key1.token);

    // The old leadership can do nothing any more, on any member.
    for member in [&mut m1, &mut m2, &mut m3] {
        let err = member
            .proclaim(&key1, "stale")
            .await
            .expect_err("proclaim by a resigned leader");
        assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
        ensure!(
            err.message().contains(&key1.token.to_string()),
            "{}",
            err.message()
        );
        let err = member
            .resign(&key1)
            .await
            .expect_err("resign by a resigned leader");
        assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    }
    assert_eq!(
        m1.leader(NAME).await?,
        Some((key2.token, l2, b"two".to_vec()))
    );

    // L1 campaigns again and leads again once L2's lease is revoked: its
    // old key (same lease, older token) is still refused.
    let again = {
        let mut m1 = m1.clone();
        tokio::spawn(async move { m1.campaign(NAME, l1, "one-again").await })
    };
    m1.wait_for_candidates(NAME, 2).await?;
    m2.leases.revoke(pb::LeaseRevokeRequest { id: l2 }).await?;
    let key3 = tokio::time::timeout(RESPONSE_TIMEOUT, again).await???;
    ensure!(key3.token > key2.token && key3.lease == l1);
    for key in [&key1, &key2] {
        let err = m3
            .proclaim(key, "stale")
            .await
            .expect_err("proclaim with an old key");
        assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
        let err = m3.resign(key).await.expect_err("resign with an old key");
        assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    }
    let proclaimed_again = m3.proclaim(&key3, "three").await?;
    assert_eq!(
        m2.leader(NAME).await?,
        Some((key3.token, l1, b"three".to_vec()))
    );

    let expected = vec![
        led(key1.token, key1.token, l1, "one"),
        led(proclaimed, key1.token, l1, "one-b"),
        led(key2.token, key2.token, l2, "two"),
        led(key3.token, key3.token, l1, "one-again"),
        led(proclaimed_again, key3.token, l1, "three"),
    ];
    let seen = observer.wait_for(1 + expected.len()).await?;
    assert_eq!(seen[1..], expected[..], "observed on member 2");
    // Observing from a past revision replays the same changes.
    let replay = Observer::start(&m1, NAME, key1.token).await?;
    assert_eq!(
        replay.wait_for(expected.len()).await?,
        expected,
        "replayed on member 1"
    );
    Ok(())
}

// ------------------------------------------------------------------ c

#[tokio::test]
async fn resign_hands_leadership_to_the_next_candidate_in_fifo_order() -> anyhow::Result<()> {
    const NAME: &str = "fifo";
    let cluster = Cluster::start(3).await?;
    cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    let mut members = Vec::new();
    for id in cluster.ids() {
        members.push(Member::connect(&cluster, id).await?);
    }
    let observer = Observer::start(&members[1], NAME, 0).await?;
    observer.wait_for(1).await?;
    let mut leases = Vec::new();
    for _ in 0..5 {
        leases.push(members[0].grant(60).await?);
    }
    let first = members[0].campaign(NAME, leases[0], "c0").await?;
    // Four more, queued one after the other through alternating members.
    let mut waiting = Vec::new();
    for (n, &lease) in leases.iter().enumerate().skip(1) {
        let mut member = members[n % 3].clone();
        waiting.push(tokio::spawn(async move {
            member.campaign(NAME, lease, &format!("c{n}")).await
        }));
        members[0].wait_for_candidates(NAME, n as i64 + 1).await?;
    }

    // Each resign elects the next in line, at the resign's revision; the
    // ones behind it keep waiting.
    let mut current = first;
    let mut expected = vec![led(current.token, current.token, leases[0], "c0")];
    let mut waiting = waiting.into_iter();
    for n in 1..leases.len() {
        let resigned = members[n % 3].resign(&current).await?;
        let next =
            tokio::time::timeout(RESPONSE_TIMEOUT, waiting.next().context("a waiter")?).await???;
        ensure!(
            next.lease == leases[n],
            "after a resign, lease {} leads; expected {} (FIFO)",
            next.lease,
            leases[n]
        );
        assert_eq!(next.token, resigned, "elected by the resign itself");
        ensure!(next.token > current.token);
        assert_eq!(
            members[(n + 1) % 3].leader(NAME).await?,
            Some((next.token, leases[n], format!("c{n}").into_bytes()))
        );
        expected.push(led(next.token, next.token, leases[n], &format!("c{n}")));
        current = next;
    }
    let ended = members[0].resign(&current).await?;
    expected.push((ended, None, Vec::new()));
    for member in &mut members {
        assert_eq!(member.leader(NAME).await?, None);
    }
    assert_eq!(members[2].candidates(NAME).await?, 0);
    // The observer saw every hand-off as one change, never "no leader" in
    // between.
    let seen = observer.wait_for(1 + expected.len()).await?;
    assert_eq!(seen[1..], expected[..]);
    Ok(())
}

// ------------------------------------------------------------------ d

#[tokio::test]
async fn bad_election_requests_get_the_right_codes() -> anyhow::Result<()> {
    let cluster = Cluster::start(1).await?;
    cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    let mut member = Member::connect(&cluster, 1).await?;
    let lease = member.grant(60).await?;

    let expect =
        |what: &str, result: Result<pb::LeaderKey, tonic::Status>, code, words: &[&str]| {
            let err = match result {
                Ok(key) => panic!("{what}: accepted, elected {key:?}"),
                Err(err) => err,
            };
            assert_eq!(err.code(), code, "{what}: {err}");
            for word in words {
                assert!(
                    err.message().contains(word),
                    "{what}: message {:?} lacks {word:?}",
                    err.message()
                );
            }
        };
    expect(
        "campaign with an unknown lease",
        member.campaign("e", 987_654, "v").await,
        Code::NotFound,
        &["987654"],
    );
    expect(
        "campaign with lease 0",
        member.campaign("e", 0, "v").await,
        Code::InvalidArgument,
        &["lease"],
    );
    expect(
        "campaign with an empty name",
        member.campaign("", lease, "v").await,
        Code::InvalidArgument,
        &["empty"],
    );
    expect(
        "campaign with a 257-byte name",
        member.campaign(&"n".repeat(257), lease, "v").await,
        Code::InvalidArgument,
        &["257", "256"],
    );
    expect(
        "campaign with a space in the name",
        member.campaign("a b", lease, "v").await,
        Code::InvalidArgument,
        &["' '"],
    );
    expect(
        "campaign with a value over 64 KiB",
        member
            .campaign("e", lease, &"v".repeat(64 * 1024 + 1))
            .await,
        Code::InvalidArgument,
        &["65537", "65536"],
    );
    let mut negative_wait = campaign("e", lease, "v");
    negative_wait.wait_timeout_ms = -1;
    expect(
        "campaign with a negative wait",
        member
            .election
            .campaign(negative_wait)
            .await
            .map(|r| r.into_inner().leader.unwrap_or_default()),
        Code::InvalidArgument,
        &["wait_timeout_ms"],
    );
    // A 256-byte name is fine.
    let long_name = "n".repeat(256);
    let long = member.campaign(&long_name, lease, "v").await?;
    member.resign(&long).await?;

    // Leader of an election nobody leads (never campaigned, or ended).
    let err = member
        .election
        .leader(pb::LeaderRequest {
            name: "nobody".into(),
            serializable: false,
        })
        .await
        .expect_err("no leader");
    assert_eq!(err.code(), Code::NotFound, "{err}");
    assert_eq!(member.leader(&long_name).await?, None);
    let err = member
        .election
        .leader(pb::LeaderRequest {
            name: String::new(),
            serializable: true,
        })
        .await
        .expect_err("empty name");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");

    // Observe, proclaim and resign check their input too.
    for (name, start_revision) in [("", 0), ("e", -1)] {
        let err = member
            .election
            .observe(pb::ObserveRequest {
                name: name.into(),
                start_revision,
            })
            .await
            .err()
            .with_context(|| format!("observe {name:?} from {start_revision} accepted"))?;
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    }
    let err = member
        .election
        .proclaim(pb::ProclaimRequest {
            leader: None,
            value: b"v".to_vec(),
        })
        .await
        .expect_err("proclaim without a leader key");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let err = member
        .resign(&pb::LeaderKey {
            name: "e".into(),
            key: Vec::new(),
            token: -1,
            lease,
        })
        .await
        .expect_err("resign with token -1");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    // Token 0 withdraws whatever the lease has: nothing here (answered all
    // the same), then a leadership.
    let withdraw = pb::LeaderKey {
        name: "w".into(),
        key: Vec::new(),
        token: 0,
        lease,
    };
    member.resign(&withdraw).await?;
    member.campaign("w", lease, "x").await?;
    ensure!(member.leader("w").await?.is_some());
    member.resign(&withdraw).await?;
    ensure!(
        member.leader("w").await?.is_none(),
        "withdrawn, the leadership is gone"
    );

    // A campaign that waits too long gives up with DEADLINE_EXCEEDED and
    // leaves no candidacy behind.
    let holder = member.campaign("busy", lease, "first").await?;
    let other = member.grant(60).await?;
    let mut short = campaign("busy", other, "second");
    short.wait_timeout_ms = 300;
    let err = member
        .election
        .campaign(short)
        .await
        .expect_err("campaign behind a leader with a 300 ms wait");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    assert_eq!(member.candidates("busy").await?, 1);
    // The election is unharmed: its leader resigns and nobody leads.
    member.resign(&holder).await?;
    assert_eq!(member.leader("busy").await?, None);
    assert_eq!(member.candidates("busy").await?, 0);
    Ok(())
}

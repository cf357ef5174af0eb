//! The lessor: the leader's clock for leases and lock-delays.
//!
//! The replicated state knows which leases are alive but not *when* they end:
//! time never enters the state machine except as committed commands. The
//! lessor runs on every member but acts only on the leader. It keeps one
//! deadline per lease on the monotonic clock, and when a deadline passes it
//! proposes `LeaseExpire` through the log (in batches, at most
//! [`MAX_EXPIRE_PER_TICK`] leases per tick, so a mass expiry never stalls
//! writes). It does the same for lock-delays with `LockDelayEnd`.
//!
//! **Architecture Invariant:** a lease never expires earlier than its TTL
//! after the last keepalive any leader acknowledged.
//! - A keepalive is acknowledged only after this member confirmed, in its
//!   current term, that it is still the leader (a ReadIndex round, batched
//!   with every other read in flight), and only for a lease that is alive in
//!   the applied state and not already being expired. Its deadline becomes at
//!   least *receipt time + TTL*, and the client measures from its send time,
//!   which is earlier.
//! - A new leader starts acting only after a ReadIndex round in its term has
//!   completed and been applied: everything the old leader committed, and any
//!   expiry it proposed that survives in the log, is applied first. Then it
//!   gives every lease a full TTL from that moment, later than the moment it
//!   took over. An old leader's acknowledgements all happened before the
//!   quorum that elected the new leader stopped answering it.
//! - A deposed leader (paused, partitioned) cannot complete a ReadIndex round,
//!   so it acknowledges nothing, and its expiry proposals cannot commit.
//! - Keepalives reaching a follower are forwarded to the leader's lessor over
//!   the peer service, never answered locally.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dashmap::DashMap;
use fenced_proto::pb;
use fenced_proto::pb::peer_client::PeerClient;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::node::Node;
use crate::state::{Command, StateMachine};

/// How often the leader looks for passed deadlines.
const TICK: Duration = Duration::from_millis(50);
/// Most leases expired by one proposal, one proposal per tick.
pub const MAX_EXPIRE_PER_TICK: usize = 256;
/// An expiry or delay end that has not applied after this long is proposed
/// again (the first proposal was lost, e.g. to a leader change).
const REPROPOSE_AFTER: Duration = Duration::from_secs(2);

/// How a lease question was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseCode {
    /// Alive; the figures are valid.
    Ok,
    /// Unknown, ended, or being expired.
    NotFound,
    /// No leader could answer now; ask again.
    Unavailable,
}

impl LeaseCode {
    /// The gRPC code number.
    pub fn grpc(self) -> i32 {
        match self {
            LeaseCode::Ok => 0,
            LeaseCode::NotFound => 5,
            LeaseCode::Unavailable => 14,
        }
    }

    fn from_grpc(code: i32) -> Self {
        match code {
            0 => LeaseCode::Ok,
            5 => LeaseCode::NotFound,
            _ => LeaseCode::Unavailable,
        }
    }
}

/// The answer about one lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseAnswer {
    /// The lease.
    pub id: i64,
    /// Outcome.
    pub code: LeaseCode,
    /// Granted TTL, seconds (0 unless `Ok`).
    pub granted_ttl: i64,
    /// Time left on the leader's clock (0 unless `Ok`).
    pub remaining: Duration,
    /// Why, when not `Ok`.
    pub message: String,
}

impl LeaseAnswer {
    fn failed(id: i64, code: LeaseCode, message: impl Into<String>) -> Self {
        Self {
            id,
            code,
            granted_ttl: 0,
            remaining: Duration::ZERO,
            message: message.into(),
        }
    }

    /// Whole seconds left, rounded up.
    pub fn ttl_secs(&self) -> i64 {
        let ms = self.remaining.as_millis();
        i64::try_from(ms.div_ceil(1000)).unwrap_or(i64::MAX)
    }
}

/// The leader's deadlines. Valid only for `term`; 0 means not acting.
#[derive(Debug, Default)]
struct Book {
    term: u64,
    deadlines: HashMap<i64, Instant>,
    /// Leases whose expiry was proposed, with when.
    expiring: HashMap<i64, Instant>,
    lease_generation: Option<u64>,
    /// Lock-delays (name, since) with when their end is due.
    delays: HashMap<(String, i64), Instant>,
    /// Delay ends proposed, with when.
    delays_proposed: HashMap<(String, i64), Instant>,
    delay_generation: Option<u64>,
}

impl Book {
    fn reset(&mut self) {
        *self = Book::default();
    }

    /// Brings the deadlines in line with the applied state: leases and delays
    /// the book does not know get a full TTL (delay) from `now`; ended ones
    /// are forgotten.
    fn sync(&mut self, state: &StateMachine, now: Instant) {
        let leases = state.leases();
        if self.lease_generation != Some(leases.generation()) {
            for lease in leases.iter() {
                self.deadlines
                    .entry(lease.id)
                    .or_insert_with(|| now + ttl_duration(lease.ttl));
            }
            self.deadlines.retain(|id, _| leases.contains(*id));
            self.expiring.retain(|id, _| leases.contains(*id));
            self.lease_generation = Some(leases.generation());
        }
        let locks = state.locks();
        if self.delay_generation != Some(locks.delay_generation()) {
            let mut current = HashMap::new();
            for (name, delay) in locks.delays() {
                let key = (name.to_string(), delay.since);
                let due = self
                    .delays
                    .get(&key)
                    .copied()
                    .unwrap_or_else(|| now + Duration::from_millis(delay.ms));
                current.insert(key, due);
            }
            self.delays = current;
            self.delays_proposed
                .retain(|key, _| self.delays.contains_key(key));
            self.delay_generation = Some(locks.delay_generation());
        }
    }

    /// Leases to expire now (at most a batch) and delay ends due now; marks
    /// them proposed.
    fn due(&mut self, now: Instant) -> (Vec<i64>, Vec<(String, i64)>) {
        let mut expire: Vec<i64> = self
            .deadlines
            .iter()
            .filter(|(id, deadline)| {
                **deadline <= now
                    && self
                        .expiring
                        .get(id)
                        .is_none_or(|at| now.duration_since(*at) >= REPROPOSE_AFTER)
            })
            .map(|(id, _)| *id)
            .collect();
        expire.sort_unstable();
        expire.truncate(MAX_EXPIRE_PER_TICK);
        for id in &expire {
            self.expiring.insert(*id, now);
        }
        let mut ends: Vec<(String, i64)> = self
            .delays
            .iter()
            .filter(|(key, due)| {
                **due <= now
                    && self
                        .delays_proposed
                        .get(*key)
                        .is_none_or(|at| now.duration_since(*at) >= REPROPOSE_AFTER)
            })
            .map(|(key, _)| key.clone())
            .collect();
        ends.sort();
        for key in &ends {
            self.delays_proposed.insert(key.clone(), now);
        }
        (expire, ends)
    }
}

fn ttl_duration(ttl: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl).unwrap_or(0))
}

/// The lessor handle; cheap to clone.
#[derive(Clone, Debug)]
pub struct Lessor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    node: Node,
    book: Mutex<Book>,
    peers: DashMap<u64, PeerClient<Channel>>,
}

impl Lessor {
    /// A lessor for `node`; call [`Lessor::run`] to start it.
    pub fn new(node: Node) -> Self {
        Self {
            inner: Arc::new(Inner {
                node,
                book: Mutex::new(Book::default()),
                peers: DashMap::new(),
            }),
        }
    }

    /// The leader loop: takes over leases when this member becomes leader,
    /// proposes expiries and delay ends. Runs until the task is dropped.
    pub async fn run(self) {
        let node = &self.inner.node;
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let status = node.status();
            if status.leader() != node.id() {
                self.book().reset();
                continue;
            }
            let term = status.term();
            if self.book().term != term && !self.take_over(term).await {
                continue;
            }
            let now = Instant::now();
            let (expire, ends) = {
                let state = node.state();
                let mut book = self.book();
                if book.term != term {
                    continue;
                }
                book.sync(&state, now);
                book.due(now)
            };
            if !expire.is_empty() {
                metrics::counter!("fenced_lease_expiries_proposed_total")
                    .increment(expire.len() as u64);
                tracing::debug!(leases = ?expire, "proposing lease expiry");
                // With the term: void if a successor appends it.
                self.propose(Command::LeaseExpireInTerm { ids: expire, term });
            }
            for (name, since) in ends {
                self.propose(Command::LockDelayEndInTerm { name, since, term });
            }
        }
    }

    /// Starts acting as leader in `term`, once a ReadIndex round in this term
    /// has completed and been applied. Every lease and delay starts afresh.
    async fn take_over(&self, term: u64) -> bool {
        let node = &self.inner.node;
        let deadline = Instant::now() + node.status().election_timeout();
        if node.read_barrier(deadline).await.is_err() {
            return false;
        }
        let status = node.status();
        if status.leader() != node.id() || status.term() != term {
            return false;
        }
        let state = node.state();
        let mut book = self.book();
        book.reset();
        book.term = term;
        book.sync(&state, Instant::now());
        tracing::info!(
            term,
            leases = book.deadlines.len(),
            delays = book.delays.len(),
            "lessor took over: every lease gets its full TTL from now"
        );
        true
    }

    fn propose(&self, command: Command) {
        let node = self.inner.node.clone();
        tokio::spawn(async move {
            let deadline = node.deadline(None);
            if let Err(err) = node.propose(command, deadline).await {
                tracing::debug!(cause = %err, "lessor proposal failed; it is retried");
            }
        });
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.inner
            .book
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Refreshes (`refresh`) or reports the leases `ids`, on whichever
    /// member is leader: answered here when this member leads, forwarded to
    /// the leader otherwise. Waits for a leader until `deadline`.
    pub async fn query(&self, ids: &[i64], refresh: bool, deadline: Instant) -> Vec<LeaseAnswer> {
        let received = Instant::now();
        let node = &self.inner.node;
        let mut leadership = node.status().leadership();
        loop {
            let leader = node.status().leader();
            let answers = if leader == node.id() {
                self.local(ids, refresh, received, deadline).await
            } else if leader != 0 {
                self.forward(leader, ids, refresh, deadline).await
            } else {
                unavailable(ids, "no leader is known; retry")
            };
            let retry = answers.iter().any(|a| a.code == LeaseCode::Unavailable);
            if !retry {
                return answers;
            }
            // Ask again when the leadership changes (or shortly: a new
            // leader may still be taking over), while time remains.
            let pause = (Instant::now() + TICK).min(deadline);
            let _ = tokio::time::timeout_at(pause, leadership.changed()).await;
            if Instant::now() >= deadline {
                return answers;
            }
        }
    }

    /// Answers on the leader. A refresh first confirms leadership in the
    /// current term (ReadIndex) and then extends each deadline to at least
    /// `received + TTL`.
    pub async fn local(
        &self,
        ids: &[i64],
        refresh: bool,
        received: Instant,
        deadline: Instant,
    ) -> Vec<LeaseAnswer> {
        let node = &self.inner.node;
        let term = node.status().term();
        if node.status().leader() != node.id() {
            return unavailable(ids, "this member is not the leader");
        }
        if self.book().term != term {
            return unavailable(ids, "the new leader is still taking over leases; retry");
        }
        if refresh {
            if let Err(err) = node.read_barrier(deadline).await {
                return unavailable(ids, format!("leadership not confirmed: {err}"));
            }
            if node.status().term() != term || node.status().leader() != node.id() {
                return unavailable(ids, "leadership changed while confirming; retry");
            }
        }
        let state = node.state();
        let mut book = self.book();
        if book.term != term {
            return unavailable(ids, "leadership changed while confirming; retry");
        }
        let now = Instant::now();
        ids.iter()
            .map(|&id| {
                let Some(lease) = state.leases().get(id) else {
                    return LeaseAnswer::failed(id, LeaseCode::NotFound, not_found(id));
                };
                if book.expiring.contains_key(&id) {
                    return LeaseAnswer::failed(
                        id,
                        LeaseCode::NotFound,
                        format!("lease {id} expired (its expiry is being committed)"),
                    );
                }
                let ttl = ttl_duration(lease.ttl);
                let entry = book.deadlines.entry(id).or_insert(now + ttl);
                if refresh {
                    *entry = (*entry).max(received + ttl);
                }
                LeaseAnswer {
                    id,
                    code: LeaseCode::Ok,
                    granted_ttl: lease.ttl,
                    remaining: entry.saturating_duration_since(now),
                    message: String::new(),
                }
            })
            .collect()
    }

    async fn forward(
        &self,
        leader: u64,
        ids: &[i64],
        refresh: bool,
        deadline: Instant,
    ) -> Vec<LeaseAnswer> {
        let node = &self.inner.node;
        let Some(mut client) = self.peer(leader) else {
            return unavailable(ids, format!("no address for leader {leader}"));
        };
        let request = pb::LeaseForwardRequest {
            from: node.id(),
            cluster_id: node.cluster_id(),
            ids: ids.to_vec(),
            refresh,
        };
        match tokio::time::timeout_at(deadline, client.lease(request)).await {
            Ok(Ok(response)) => {
                let statuses = response.into_inner().statuses;
                ids.iter()
                    .map(|&id| match statuses.iter().find(|s| s.id == id) {
                        Some(s) => LeaseAnswer {
                            id,
                            code: LeaseCode::from_grpc(s.code),
                            granted_ttl: s.granted_ttl,
                            remaining: Duration::from_millis(
                                u64::try_from(s.remaining_ms).unwrap_or(0),
                            ),
                            message: s.message.clone(),
                        },
                        None => LeaseAnswer::failed(
                            id,
                            LeaseCode::Unavailable,
                            "the leader did not answer for this lease",
                        ),
                    })
                    .collect()
            }
            Ok(Err(status)) => unavailable(
                ids,
                format!("forwarding to leader {leader} failed: {}", status.message()),
            ),
            Err(_) => unavailable(ids, format!("leader {leader} did not answer in time")),
        }
    }

    fn peer(&self, id: u64) -> Option<PeerClient<Channel>> {
        if let Some(client) = self.inner.peers.get(&id) {
            return Some(client.clone());
        }
        let addr = self.inner.node.peer_addr(id)?;
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .ok()?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true);
        let client = PeerClient::new(endpoint.connect_lazy());
        self.inner.peers.insert(id, client.clone());
        Some(client)
    }
}

fn not_found(id: i64) -> String {
    format!("lease {id} not found (it expired, was revoked, or never existed)")
}

fn unavailable(ids: &[i64], message: impl Into<String>) -> Vec<LeaseAnswer> {
    let message = message.into();
    ids.iter()
        .map(|&id| LeaseAnswer::failed(id, LeaseCode::Unavailable, message.clone()))
        .collect()
}

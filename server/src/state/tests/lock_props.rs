//! Property tests of leases and locks: random sequences of lease grants,
//! acquires, releases (by current and stale tokens), cancels, expiries,
//! revokes, delay ends, lock-token transactions and plain puts and deletes,
//! played against a naive model and checked for the lock invariants after
//! every step.
//!
//! Ops pick their leases and tokens by index and are resolved into commands
//! against the state before each step, so a sequence keeps hitting live
//! leases and current tokens, and sometimes dead leases and stale tokens.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::state::{
    AcquireCommand, AcquireOutcome, ApplyError, CancelOutcome, Delay, Grant, Holder, LeaveReason,
    LockChange, LockMode, Output, StateMachine, is_reserved, lock_key,
};

/// Lock names, and the permits each is used with unless an acquire
/// deliberately disagrees.
const LOCKS: &[(&str, u32)] = &[("a", 1), ("b", 1), ("c", 2)];

/// Keys for puts: plain ones, and reserved ones that must be refused.
const PUT_KEYS: &[&[u8]] = &[
    b"a",
    b"ab",
    b"b",
    b"__fenced/x",
    b"__fenced/lock/a/@0000000000000001",
];

/// Keys and prefixes for deletes; several cover lock keys.
const DELETE_KEYS: &[&[u8]] = &[b"", b"a", b"b", b"__fenced/", b"__fenced/lock/a/"];

/// A lease chosen by index: among the live ones, or among every id up to
/// one above the highest granted (0, dead and unknown ids included).
#[derive(Clone, Copy, Debug)]
struct Pick {
    alive: bool,
    index: usize,
}

/// A token chosen by index: among the current holders' tokens, or among
/// stale ones (every token this lock ever had, 0, and the next revision).
#[derive(Clone, Copy, Debug)]
struct TokenPick {
    current: bool,
    index: usize,
}

/// Which lease a release names.
#[derive(Clone, Copy, Debug)]
enum ReleaseBy {
    /// 0: whichever holder has the token.
    Any,
    /// The lease of the holder the token was picked from.
    Holder,
    /// Some other lease.
    Other(Pick),
}

/// One random step, before it is resolved against the state.
#[derive(Clone, Debug)]
enum Op {
    /// Grant a lease: id 0, or an explicit id relative to the highest.
    Grant {
        offset: Option<i64>,
        ttl: i64,
    },
    /// Acquire; `permits` None keeps to the lock's own permits.
    Acquire {
        lock: usize,
        lease: Pick,
        shared: bool,
        permits: Option<u32>,
        try_only: bool,
        delay_ms: u64,
    },
    Release {
        lock: usize,
        token: TokenPick,
        by: ReleaseBy,
    },
    Cancel {
        lock: usize,
        lease: Pick,
    },
    Expire {
        leases: Vec<Pick>,
    },
    Revoke {
        lease: Pick,
    },
    /// End the lock's delay: with its own start, or a wrong one.
    DelayEnd {
        lock: usize,
        stale: bool,
    },
    Put {
        key: usize,
        lease: Option<Pick>,
    },
    Delete {
        key: usize,
        prefix: bool,
    },
    /// A transaction guarded by a lock-token compare.
    Guard {
        lock: usize,
        token: TokenPick,
        op: CompareOp,
    },
}

fn pick() -> impl Strategy<Value = Pick> {
    (prop::bool::weighted(0.85), 0..8_usize).prop_map(|(alive, index)| Pick { alive, index })
}

fn token_pick() -> impl Strategy<Value = TokenPick> {
    (prop::bool::weighted(0.8), 0..8_usize)
        .prop_map(|(current, index)| TokenPick { current, index })
}

/// Mostly lock "a", so that queues form.
fn lock_index() -> impl Strategy<Value = usize> {
    prop_oneof![4 => Just(0), 1 => Just(1), 2 => Just(2)]
}

fn op() -> impl Strategy<Value = Op> {
    let ttl = prop_oneof![4 => Just(10_i64), 1 => -1..2_i64];
    let grant = (prop::option::weighted(0.2, -2..3_i64), ttl)
        .prop_map(|(offset, ttl)| Op::Grant { offset, ttl });
    let acquire = (
        lock_index(),
        pick(),
        any::<bool>(),
        prop::option::weighted(0.1, 0..3_u32),
        prop::bool::weighted(0.2),
        prop_oneof![3 => Just(0_u64), 1 => Just(100), 1 => Just(250)],
    )
        .prop_map(
            |(lock, lease, shared, permits, try_only, delay_ms)| Op::Acquire {
                lock,
                lease,
                shared,
                permits,
                try_only,
                delay_ms,
            },
        );
    let by = prop_oneof![
        2 => Just(ReleaseBy::Any),
        2 => Just(ReleaseBy::Holder),
        1 => pick().prop_map(ReleaseBy::Other),
    ];
    let release = (lock_index(), token_pick(), by).prop_map(|(lock, token, by)| Op::Release {
        lock,
        token,
        by,
    });
    let compare_op = prop_oneof![
        Just(CompareOp::Equal),
        Just(CompareOp::NotEqual),
        Just(CompareOp::Greater),
        Just(CompareOp::Less),
    ];
    prop_oneof![
        3 => grant,
        10 => acquire,
        6 => release,
        2 => (lock_index(), pick()).prop_map(|(lock, lease)| Op::Cancel { lock, lease }),
        2 => prop::collection::vec(pick(), 1..3).prop_map(|leases| Op::Expire { leases }),
        1 => pick().prop_map(|lease| Op::Revoke { lease }),
        2 => (lock_index(), prop::bool::weighted(0.3))
            .prop_map(|(lock, stale)| Op::DelayEnd { lock, stale }),
        2 => (0..PUT_KEYS.len(), prop::option::weighted(0.6, pick()))
            .prop_map(|(key, lease)| Op::Put { key, lease }),
        1 => (0..DELETE_KEYS.len(), any::<bool>())
            .prop_map(|(key, prefix)| Op::Delete { key, prefix }),
        1 => (lock_index(), token_pick(), compare_op)
            .prop_map(|(lock, token, op)| Op::Guard { lock, token, op }),
    ]
}

/// Five leases to start with, then random ops.
fn ops() -> impl Strategy<Value = Vec<Op>> {
    let start = Op::Grant {
        offset: None,
        ttl: 10,
    };
    prop::collection::vec(op(), 0..80)
        .prop_map(move |ops| std::iter::repeat_n(start.clone(), 5).chain(ops).collect())
}

/// Tokens each lock has had, to pick stale ones from.
type Tokens = BTreeMap<String, Vec<i64>>;

fn resolve_lease(state: &StateMachine, pick: Pick) -> i64 {
    let alive: Vec<i64> = state.leases().iter().map(|lease| lease.id).collect();
    if pick.alive && !alive.is_empty() {
        return alive[pick.index % alive.len()];
    }
    // 0 ..= max_id + 1: no lease, dead or live leases, an unknown one.
    let span = state.leases().max_id().saturating_add(2);
    i64::try_from(pick.index).unwrap_or(0) % span
}

/// A token of lock `name` and the lease of the holder it came from, if any.
fn resolve_token(
    state: &StateMachine,
    tokens: &Tokens,
    name: &str,
    pick: TokenPick,
) -> (i64, Option<i64>) {
    let holders = state
        .locks()
        .get(name)
        .map_or(&[][..], |lock| lock.holders.as_slice());
    if pick.current && !holders.is_empty() {
        let holder = &holders[pick.index % holders.len()];
        return (holder.token, Some(holder.lease));
    }
    let mut stale: Vec<i64> = tokens.get(name).cloned().unwrap_or_default();
    stale.retain(|token| !holders.iter().any(|h| h.token == *token));
    stale.extend([0, state.revision() + 1]);
    (stale[pick.index % stale.len()], None)
}

/// What [`busy_lock`] looks for.
#[derive(Clone, Copy, Debug)]
enum Busy {
    Holders,
    Waiters,
    Delay,
}

/// The lock `lock`, or when it has no holders (waiters, delay) the next
/// lock that has.
fn busy_lock(state: &StateMachine, lock: usize, busy: Busy) -> usize {
    let fits = |index: &usize| {
        state
            .locks()
            .get(LOCKS[*index].0)
            .is_some_and(|lock| match busy {
                Busy::Holders => !lock.holders.is_empty(),
                Busy::Waiters => !lock.waiters.is_empty(),
                Busy::Delay => lock.delay.is_some(),
            })
    };
    (lock..LOCKS.len())
        .chain(0..lock)
        .find(fits)
        .unwrap_or(lock)
}

/// The command an op stands for, against the state before it. Releases of
/// a current token, cancels and ends of a current delay go to a lock that
/// has holders, waiters or a delay.
fn resolve(op: &Op, state: &StateMachine, tokens: &Tokens) -> Command {
    let name = |lock: usize| LOCKS[lock].0.to_string();
    match op {
        Op::Grant { offset, ttl } => Command::LeaseGrant {
            id: offset.map_or(0, |offset| state.leases().max_id() + offset),
            ttl: *ttl,
        },
        Op::Acquire {
            lock,
            lease,
            shared,
            permits,
            try_only,
            delay_ms,
        } => Command::LockAcquire(AcquireCommand {
            name: name(*lock),
            lease: resolve_lease(state, *lease),
            mode: if *shared {
                LockMode::Shared
            } else {
                LockMode::Exclusive
            },
            permits: permits.unwrap_or(LOCKS[*lock].1),
            try_only: *try_only,
            delay_ms: *delay_ms,
        }),
        Op::Release { lock, token, by } => {
            let lock = if token.current {
                busy_lock(state, *lock, Busy::Holders)
            } else {
                *lock
            };
            let (token, holder) = resolve_token(state, tokens, &name(lock), *token);
            let lease = match by {
                ReleaseBy::Any => 0,
                ReleaseBy::Holder => holder.unwrap_or(0),
                ReleaseBy::Other(pick) => resolve_lease(state, *pick),
            };
            Command::LockRelease {
                name: name(lock),
                token,
                lease,
            }
        }
        Op::Cancel { lock, lease } => {
            // Mostly a waiter, when there is one.
            let lock = busy_lock(state, *lock, Busy::Waiters);
            let waiters = state.locks().get(LOCKS[lock].0).map_or(vec![], |lock| {
                lock.waiters.iter().map(|w| w.lease).collect()
            });
            let lease = if lease.alive && !waiters.is_empty() {
                waiters[lease.index % waiters.len()]
            } else {
                resolve_lease(state, *lease)
            };
            Command::LockCancel {
                name: name(lock),
                lease,
            }
        }
        Op::Expire { leases } => Command::LeaseExpire {
            ids: leases
                .iter()
                .map(|pick| resolve_lease(state, *pick))
                .collect(),
        },
        Op::Revoke { lease } => Command::LeaseRevoke {
            id: resolve_lease(state, *lease),
        },
        Op::DelayEnd { lock, stale } => {
            let lock = if *stale {
                *lock
            } else {
                busy_lock(state, *lock, Busy::Delay)
            };
            let delay = state.locks().get(&name(lock)).and_then(|lock| lock.delay);
            let since = match delay {
                Some(delay) if *stale => delay.since - 1,
                Some(delay) => delay.since,
                None => state.revision(),
            };
            Command::LockDelayEnd {
                name: name(lock),
                since,
            }
        }
        Op::Put { key, lease } => Command::Put(PutRequest {
            key: PUT_KEYS[*key].to_vec(),
            value: bytes("v"),
            lease: lease.map_or(0, |pick| resolve_lease(state, pick)),
            prev_kv: false,
        }),
        Op::Delete { key, prefix } => Command::DeleteRange(DeleteRequest {
            key: DELETE_KEYS[*key].to_vec(),
            prefix: *prefix,
            prev_kv: false,
        }),
        Op::Guard { lock, token, op } => {
            let (token, _) = resolve_token(state, tokens, &name(*lock), *token);
            txn(
                vec![Compare {
                    key: bytes(name(*lock)),
                    op: *op,
                    target: CompareTarget::LockToken(token),
                }],
                vec![op_put("guarded", "")],
                vec![],
            )
        }
    }
}

/// LockConflict messages are prose; the model only knows the kind.
fn normalized(response: Response) -> Response {
    match response {
        Response::Error(ApplyError::LockConflict(_)) => {
            Response::Error(ApplyError::LockConflict(String::new()))
        }
        other => other,
    }
}

proptest! {
    /// The machine answers, reports lock changes and ends up exactly as the
    /// naive model does, and every invariant holds after every step.
    #[test]
    fn locks_match_naive_model(ops in ops()) {
        let mut state = StateMachine::new();
        let mut model = Model::default();
        let mut tokens = Tokens::new();
        for (step, op) in ops.iter().enumerate() {
            let command = resolve(op, &state, &tokens);
            let before = state.clone();
            let output = state.execute(&command);
            let (response, changes) = model.apply(&command);
            prop_assert_eq!(
                (normalized(output.response.clone()), &output.locks),
                (response, &changes),
                "step {} {:?}", step, command
            );
            prop_assert_eq!(state.revision(), model.revision, "step {}", step);
            prop_assert_eq!(&model_locks(&state), &model.locks, "step {}", step);
            let alive: BTreeSet<i64> = state.leases().iter().map(|lease| lease.id).collect();
            prop_assert_eq!(&alive, &model.leases, "step {}", step);
            prop_assert_eq!(state.leases().max_id(), model.max_id, "step {}", step);
            let user: BTreeMap<Vec<u8>, i64> = state
                .range(&scan(""))
                .kvs
                .into_iter()
                .filter(|kv| !is_reserved(&kv.key))
                .map(|kv| (kv.key, kv.lease))
                .collect();
            prop_assert_eq!(&user, &model.keys, "step {}", step);
            if let Err(problem) = invariants(&before, &command, &output, &state, &mut tokens) {
                prop_assert!(false, "step {} {:?}: {}", step, command, problem);
            }
        }
    }

    /// The same ops, once as values and once through the postcard encoding
    /// the log uses, give the same outputs, state and digest.
    #[test]
    fn same_log_same_locks(ops in ops()) {
        let mut direct = StateMachine::new();
        let mut decoded = StateMachine::new();
        let mut tokens = Tokens::new();
        for op in &ops {
            let command = resolve(op, &direct, &tokens);
            let encoded = postcard::to_stdvec(&command).expect("commands encode");
            let command_again: Command = postcard::from_bytes(&encoded).expect("commands decode");
            prop_assert_eq!(&command_again, &command);
            let output = direct.execute(&command);
            prop_assert_eq!(&output, &decoded.execute(&command_again));
            for change in &output.locks {
                if let LockChange::Granted { name, token, .. } = change {
                    tokens.entry(name.clone()).or_default().push(*token);
                }
            }
        }
        prop_assert_eq!(&direct, &decoded);
        prop_assert_eq!(direct.digest(), decoded.digest());
    }

    /// A state restored from a snapshot taken at any point of a run is the
    /// same state: equal, same digest, and the rest of the run gives the
    /// same outputs on both.
    #[test]
    fn snapshot_anywhere_restores_the_same_state(ops in ops(), cut in any::<prop::sample::Index>()) {
        let cut = cut.index(ops.len() + 1);
        let mut original = StateMachine::new();
        let mut tokens = Tokens::new();
        let mut restored = None;
        for (step, op) in ops.iter().enumerate() {
            if step == cut {
                restored = Some(crate::state::snapshot::decode(&crate::state::snapshot::encode(&original)).expect("a snapshot decodes"));
            }
            let command = resolve(op, &original, &tokens);
            let output = original.execute(&command);
            if let Some(restored) = restored.as_mut() {
                prop_assert_eq!(&output, &restored.execute(&command));
            }
            for change in &output.locks {
                if let LockChange::Granted { name, token, .. } = change {
                    tokens.entry(name.clone()).or_default().push(*token);
                }
            }
        }
        let restored = restored.unwrap_or_else(|| crate::state::snapshot::decode(&crate::state::snapshot::encode(&original)).expect("a snapshot decodes"));
        prop_assert_eq!(original.digest(), restored.digest());
        prop_assert_eq!(&original, &restored);
    }

    /// Whatever numbers and names a command holds, apply does not panic and
    /// leaves a consistent state.
    #[test]
    fn wild_commands_never_panic(commands in prop::collection::vec(wild_command(), 0..40)) {
        let mut state = StateMachine::new();
        for command in &commands {
            state.execute(command);
            if let Err(problem) = consistency(&state) {
                prop_assert!(false, "{:?}: {}", command, problem);
            }
        }
    }
}

/// Lock commands with unchecked numbers: ids and tokens at the edges of
/// i64, permits and delays at the edges of their types, odd names.
fn wild_command() -> impl Strategy<Value = Command> {
    let number = prop_oneof![
        4 => -1..4_i64,
        1 => Just(i64::MAX),
        1 => Just(i64::MIN),
        1 => any::<i64>(),
    ];
    let name = prop_oneof![
        Just(String::new()),
        Just("a".to_string()),
        Just("a/@0000000000000001".to_string()),
        "\\PC{0,3}",
    ];
    let mode = prop_oneof![Just(LockMode::Exclusive), Just(LockMode::Shared)];
    let permits = prop_oneof![Just(0_u32), Just(1), Just(2), Just(u32::MAX)];
    let delay = prop_oneof![Just(0_u64), Just(1), Just(u64::MAX)];
    let acquire = (
        name.clone(),
        number.clone(),
        mode,
        permits,
        any::<bool>(),
        delay,
    )
        .prop_map(|(name, lease, mode, permits, try_only, delay_ms)| {
            Command::LockAcquire(AcquireCommand {
                name,
                lease,
                mode,
                permits,
                try_only,
                delay_ms,
            })
        });
    prop_oneof![
        2 => (number.clone(), number.clone()).prop_map(|(id, ttl)| Command::LeaseGrant { id, ttl }),
        4 => acquire,
        1 => (name.clone(), number.clone(), number.clone())
            .prop_map(|(name, token, lease)| Command::LockRelease { name, token, lease }),
        1 => (name.clone(), number.clone())
            .prop_map(|(name, lease)| Command::LockCancel { name, lease }),
        1 => (name.clone(), number.clone())
            .prop_map(|(name, since)| Command::LockDelayEnd { name, since }),
        1 => prop::collection::vec(number.clone(), 0..3)
            .prop_map(|ids| Command::LeaseExpire { ids }),
        1 => number.clone().prop_map(|id| Command::LeaseRevoke { id }),
        1 => (name, number).prop_map(|(name, token)| txn(
            vec![Compare {
                key: bytes(name),
                op: CompareOp::Equal,
                target: CompareTarget::LockToken(token),
            }],
            vec![],
            vec![],
        )),
    ]
}

/// Checks one step directly on the machine, whatever the model says, and
/// records the tokens granted:
///
/// - a grant's token is the new revision, above every earlier token of the
///   lock; grants of one step share it;
/// - no grant while a delay is in force (unless this step ended it);
/// - FIFO: a waiter is granted only when every waiter ahead of it was, and
///   an acquire is granted at once only on an empty queue;
/// - after a cancel or a failed try-only acquire the lease has no waiting
///   place; only the delay's own start ends it; an error, a retried
///   acquire, a stale delay end change nothing;
/// - the revision moves by one exactly when keys changed, and the events
///   carry it; the state stays consistent.
fn invariants(
    before: &StateMachine,
    command: &Command,
    output: &Output,
    after: &StateMachine,
    tokens: &mut Tokens,
) -> Result<(), String> {
    consistency(after)?;
    let revision = after.revision();
    if output.events.is_empty() != (revision == before.revision()) {
        return Err(format!("revision {} -> {revision}", before.revision()));
    }
    if revision != before.revision() && revision != before.revision() + 1 {
        return Err(format!("revision {} -> {revision}", before.revision()));
    }
    if let Some(event) = output.events.iter().find(|e| e.kv.mod_revision != revision) {
        return Err(format!("event {event:?} not at {revision}"));
    }
    let unchanged = matches!(
        output.response,
        Response::Error(_) | Response::LockDelayEnd(false)
    ) || matches!(
        (command, &output.response),
        (
            Command::LockCancel { .. },
            Response::LockCancel(CancelOutcome::Held(_))
        )
    ) || matches!(command, Command::LockAcquire(cmd) if has_place(before, &cmd.name, cmd.lease));
    if unchanged && (after != before || !output.locks.is_empty() || !output.events.is_empty()) {
        return Err(format!("{:?} changed the state", output.response));
    }
    let mut this_step: BTreeMap<&str, i64> = BTreeMap::new();
    for change in &output.locks {
        let LockChange::Granted { name, lease, token } = change else {
            continue;
        };
        if *token != revision {
            return Err(format!("{change:?} at revision {revision}"));
        }
        let last = tokens.get(name.as_str()).and_then(|t| t.last()).copied();
        if last.is_some_and(|last| last >= *token) && this_step.get(name.as_str()) != Some(token) {
            return Err(format!("{change:?} after token {last:?}"));
        }
        this_step.insert(name, *token);
        let delay_ended = matches!(
            (command, &output.response),
            (Command::LockDelayEnd { name: ended, .. }, Response::LockDelayEnd(true)) if ended == name
        );
        let lock_before = before.locks().get(name);
        if lock_before.is_some_and(|lock| lock.delay.is_some()) && !delay_ended {
            return Err(format!("{change:?} during a delay"));
        }
        if after
            .locks()
            .get(name)
            .is_some_and(|lock| lock.delay.is_some())
        {
            return Err(format!("{change:?} while a delay starts"));
        }
        let waiters: Vec<i64> = lock_before.map_or(vec![], |lock| {
            lock.waiters.iter().map(|w| w.lease).collect()
        });
        match waiters.iter().position(|w| w == lease) {
            Some(position) => {
                let (_, after_waiters) = places(after, name);
                if let Some(ahead) = waiters[..position]
                    .iter()
                    .find(|w| after_waiters.contains(w))
                {
                    return Err(format!("{change:?} while lease {ahead} still waits ahead"));
                }
            }
            None if !waiters.is_empty() => {
                return Err(format!("{change:?} jumped the queue {waiters:?}"));
            }
            None => {}
        }
    }
    for (name, token) in this_step {
        tokens.entry(name.to_string()).or_default().push(token);
    }
    let waiting = |name: &str, lease: i64| places(after, name).1.contains(&lease);
    let delay_since = |name: &str| {
        before
            .locks()
            .get(name)
            .and_then(|l| l.delay)
            .map(|d| d.since)
    };
    match (command, &output.response) {
        (Command::LockDelayEnd { name, since }, Response::LockDelayEnd(true))
            if delay_since(name) != Some(*since) =>
        {
            Err(format!(
                "a delay end for {since} ended {:?}",
                delay_since(name)
            ))
        }
        (Command::LockCancel { name, lease }, Response::LockCancel(_)) if waiting(name, *lease) => {
            Err(format!(
                "lease {lease} still waits for {name:?} after a cancel"
            ))
        }
        (Command::LockAcquire(cmd), Response::Error(ApplyError::LockBusy { .. }))
            if has_place(after, &cmd.name, cmd.lease) =>
        {
            Err(format!("lease {} has a place after a busy try", cmd.lease))
        }
        _ => Ok(()),
    }
}

/// Whether `lease` holds or waits for lock `name`.
fn has_place(state: &StateMachine, name: &str, lease: i64) -> bool {
    let (holders, waiters) = places(state, name);
    holders.iter().any(|(l, _)| *l == lease) || waiters.contains(&lease)
}

/// One place in a model lock: holders first, in grant order, then waiters.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Place {
    lease: i64,
    mode: LockMode,
    delay_ms: u64,
    /// Some for a holder.
    token: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ModelLock {
    permits: u32,
    /// Every place in arrival order. Under FIFO the holders are a prefix.
    places: Vec<Place>,
    delay: Option<Delay>,
}

/// The machine's locks in the model's shape.
fn model_locks(state: &StateMachine) -> BTreeMap<String, ModelLock> {
    state
        .locks()
        .iter()
        .map(|(name, lock)| {
            let holders = lock.holders.iter().map(|h| Place {
                lease: h.lease,
                mode: h.mode,
                delay_ms: h.delay_ms,
                token: Some(h.token),
            });
            let waiters = lock.waiters.iter().map(|w| Place {
                lease: w.lease,
                mode: w.mode,
                delay_ms: w.delay_ms,
                token: None,
            });
            let lock = ModelLock {
                permits: lock.permits,
                places: holders.chain(waiters).collect(),
                delay: lock.delay,
            };
            (name.to_string(), lock)
        })
        .collect()
}

/// Leases and locks the slowest obvious way: a lock is one list of places
/// in arrival order, and granting walks it from the start.
#[derive(Debug, Default)]
struct Model {
    revision: i64,
    max_id: i64,
    leases: BTreeSet<i64>,
    /// Plain keys and the lease each is attached to.
    keys: BTreeMap<Vec<u8>, i64>,
    locks: BTreeMap<String, ModelLock>,
}

impl ModelLock {
    fn holders(&self, name: &str) -> Vec<Holder> {
        self.places
            .iter()
            .filter_map(|p| {
                Some(Holder {
                    lease: p.lease,
                    token: p.token?,
                    key: lock_key(name, p.lease),
                    mode: p.mode,
                    delay_ms: p.delay_ms,
                })
            })
            .collect()
    }

    fn grant(&self, name: &str, lease: i64) -> Option<Grant> {
        let place = self.places.iter().find(|p| p.lease == lease)?;
        Some(Grant {
            token: place.token?,
            key: lock_key(name, lease),
            holders: self.holders(name),
        })
    }

    fn waiting(&self) -> usize {
        self.places.iter().filter(|p| p.token.is_none()).count()
    }

    fn is_unused(&self) -> bool {
        self.places.is_empty() && self.delay.is_none()
    }
}

impl Model {
    /// The answer and the lock changes of one command.
    fn apply(&mut self, command: &Command) -> (Response, Vec<LockChange>) {
        let next = self.revision + 1;
        let mut changes = vec![];
        let result = self.dispatch(command, next, &mut changes);
        if result.is_err() {
            changes.clear();
        }
        (normalized(result.unwrap_or_else(Response::Error)), changes)
    }

    fn dispatch(
        &mut self,
        command: &Command,
        next: i64,
        changes: &mut Vec<LockChange>,
    ) -> Result<Response, ApplyError> {
        match command {
            Command::LeaseGrant { id, ttl } => {
                if *ttl <= 0 {
                    return Err(ApplyError::InvalidTtl(*ttl));
                }
                let id = match *id {
                    0 if self.max_id == i64::MAX => return Err(ApplyError::LeaseIdsExhausted),
                    0 => self.max_id + 1,
                    id if self.leases.contains(&id) => return Err(ApplyError::LeaseExists(id)),
                    id if id <= self.max_id => {
                        return Err(ApplyError::LeaseIdUsed {
                            id,
                            max: self.max_id,
                        });
                    }
                    id => id,
                };
                self.max_id = id;
                self.leases.insert(id);
                Ok(Response::LeaseGrant { id, ttl: *ttl })
            }
            Command::LeaseRevoke { id } => {
                if !self.leases.contains(id) {
                    return Err(ApplyError::LeaseNotFound(*id));
                }
                self.end_leases(&[*id], LeaveReason::LeaseRevoked, next, changes);
                Ok(Response::LeaseRevoke {
                    revision: self.revision,
                })
            }
            Command::LeaseExpire { ids } => {
                let expired = self.end_leases(ids, LeaveReason::LeaseExpired, next, changes);
                Ok(Response::LeaseExpire {
                    revision: self.revision,
                    expired,
                })
            }
            Command::LockAcquire(cmd) => self.acquire(cmd, next, changes),
            Command::ElectionCampaign { .. }
            | Command::ElectionProclaim { .. }
            | Command::ElectionResign { .. } => {
                panic!("the lock model does not generate election commands (see tests/election.rs)")
            }
            Command::LockRelease { name, token, lease } => {
                let stale = || ApplyError::StaleToken {
                    name: name.clone(),
                    token: *token,
                };
                let lock = self.locks.get_mut(name).ok_or_else(stale)?;
                let matching: Vec<usize> = (0..lock.places.len())
                    .filter(|&i| {
                        let place = &lock.places[i];
                        place.token == Some(*token) && (*lease == 0 || place.lease == *lease)
                    })
                    .collect();
                let index = match matching.as_slice() {
                    [] => return Err(stale()),
                    [index] => *index,
                    _ => {
                        return Err(ApplyError::AmbiguousToken {
                            name: name.clone(),
                            token: *token,
                            holders: matching.len(),
                        });
                    }
                };
                let place = lock.places.remove(index);
                changes.push(left(name, place.lease, LeaveReason::Released));
                self.advance(name, next, changes);
                self.revision = next;
                Ok(Response::LockRelease { revision: next })
            }
            Command::LockCancel { name, lease } => {
                let Some(lock) = self.locks.get_mut(name) else {
                    return Ok(Response::LockCancel(CancelOutcome::NotQueued));
                };
                if let Some(grant) = lock.grant(name, *lease) {
                    return Ok(Response::LockCancel(CancelOutcome::Held(grant)));
                }
                let before = lock.places.len();
                lock.places.retain(|p| p.lease != *lease);
                if lock.places.len() == before {
                    return Ok(Response::LockCancel(CancelOutcome::NotQueued));
                }
                changes.push(left(name, *lease, LeaveReason::Cancelled));
                self.advance(name, next, changes);
                self.revision = next;
                Ok(Response::LockCancel(CancelOutcome::Cancelled))
            }
            Command::LockDelayEnd { name, since } => {
                let Some(lock) = self.locks.get_mut(name) else {
                    return Ok(Response::LockDelayEnd(false));
                };
                if lock.delay.map(|d| d.since) != Some(*since) {
                    return Ok(Response::LockDelayEnd(false));
                }
                lock.delay = None;
                if self.advance(name, next, changes) {
                    self.revision = next;
                }
                Ok(Response::LockDelayEnd(true))
            }
            Command::Put(put) => {
                if is_reserved(&put.key) {
                    return Err(ApplyError::ReservedKey(
                        String::from_utf8_lossy(&put.key).into_owned(),
                    ));
                }
                if put.lease != 0 && !self.leases.contains(&put.lease) {
                    return Err(ApplyError::LeaseNotFound(put.lease));
                }
                self.keys.insert(put.key.clone(), put.lease);
                self.revision = next;
                Ok(put_ok(next))
            }
            Command::DeleteRange(delete) => {
                let before = self.keys.len();
                self.keys.retain(|key, _| {
                    let covered = if delete.prefix {
                        key.starts_with(&delete.key)
                    } else {
                        *key == delete.key
                    };
                    !covered
                });
                let deleted = (before - self.keys.len()) as i64;
                if deleted > 0 {
                    self.revision = next;
                }
                Ok(super::deleted(self.revision, deleted, vec![]))
            }
            Command::Txn(txn) => {
                // Only the guard transactions of `resolve`: one lock-token
                // compare, one plain put on success.
                let holds = txn.compare.iter().all(|c| {
                    let CompareTarget::LockToken(token) = c.target else {
                        return false;
                    };
                    let current = std::str::from_utf8(&c.key).is_ok_and(|name| {
                        self.locks
                            .get(name)
                            .is_some_and(|lock| lock.places.iter().any(|p| p.token == Some(token)))
                    });
                    match c.op {
                        CompareOp::Equal => current,
                        CompareOp::NotEqual => !current,
                        CompareOp::Greater | CompareOp::Less => false,
                    }
                });
                let ops = if holds { &txn.success } else { &txn.failure };
                let mut responses = vec![];
                for op in ops {
                    if let TxnOp::Put(put) = op {
                        self.keys.insert(put.key.clone(), put.lease);
                        self.revision = next;
                        responses.push(TxnOpResult::Put(PutResult {
                            revision: next,
                            prev_kv: None,
                        }));
                    }
                }
                Ok(txn_ok(self.revision, holds, responses))
            }
            // The model does not generate member commands or the leader's
            // term-stamped ones.
            Command::MemberChange(_)
            | Command::MemberPublish { .. }
            | Command::LeaseExpireInTerm { .. }
            | Command::LockDelayEndInTerm { .. } => Ok(Response::Members),
        }
    }

    fn acquire(
        &mut self,
        cmd: &AcquireCommand,
        next: i64,
        changes: &mut Vec<LockChange>,
    ) -> Result<Response, ApplyError> {
        let name = &cmd.name;
        if !self.leases.contains(&cmd.lease) {
            return Err(ApplyError::LeaseNotFound(cmd.lease));
        }
        if cmd.permits == 0 || (cmd.permits > 1 && cmd.mode == LockMode::Shared) {
            return Err(ApplyError::LockConflict(String::new()));
        }
        let key = lock_key(name, cmd.lease);
        let grantable = match self.locks.get(name) {
            None => true,
            Some(lock) => {
                if lock.permits != cmd.permits {
                    return Err(ApplyError::LockConflict(String::new()));
                }
                if let Some(position) = lock.places.iter().position(|p| p.lease == cmd.lease) {
                    return Ok(Response::LockAcquire(match lock.grant(name, cmd.lease) {
                        Some(grant) => AcquireOutcome::Granted(grant),
                        None => AcquireOutcome::Queued {
                            key,
                            position: (position - lock.holders(name).len()) as u64,
                        },
                    }));
                }
                lock.waiting() == 0
                    && lock.delay.is_none()
                    && admits(lock.permits, &lock.holders(name), cmd.mode)
            }
        };
        if !grantable && cmd.try_only {
            return Err(ApplyError::LockBusy {
                name: name.clone(),
                holders: self
                    .locks
                    .get(name)
                    .map_or(0, |lock| lock.holders(name).len()),
            });
        }
        self.revision = next;
        let lock = self.locks.entry(name.clone()).or_insert(ModelLock {
            permits: cmd.permits,
            places: vec![],
            delay: None,
        });
        lock.places.push(Place {
            lease: cmd.lease,
            mode: cmd.mode,
            delay_ms: cmd.delay_ms,
            token: grantable.then_some(next),
        });
        if grantable {
            changes.push(got(name, cmd.lease, next));
            return Ok(granted(name, cmd.lease, next, lock.holders(name)));
        }
        Ok(Response::LockAcquire(AcquireOutcome::Queued {
            key,
            position: lock.waiting() as u64 - 1,
        }))
    }

    /// Ends the live leases among `ids`: their places (lock by lock, in name
    /// order), then their plain keys; then grants in every lock touched.
    fn end_leases(
        &mut self,
        ids: &[i64],
        reason: LeaveReason,
        next: i64,
        changes: &mut Vec<LockChange>,
    ) -> Vec<i64> {
        let mut ended = vec![];
        let mut touched = BTreeSet::new();
        let mut changed = false;
        for id in ids {
            if !self.leases.remove(id) {
                continue;
            }
            ended.push(*id);
            for (name, lock) in &mut self.locks {
                let Some(index) = lock.places.iter().position(|p| p.lease == *id) else {
                    continue;
                };
                let place = lock.places.remove(index);
                if place.token.is_some()
                    && reason == LeaveReason::LeaseExpired
                    && place.delay_ms > 0
                {
                    let ms = lock.delay.map_or(0, |d| d.ms).max(place.delay_ms);
                    lock.delay = Some(Delay { since: next, ms });
                }
                changes.push(left(name, *id, reason));
                touched.insert(name.clone());
                changed = true;
            }
            let before = self.keys.len();
            self.keys.retain(|_, lease| lease != id);
            changed |= self.keys.len() != before;
        }
        for name in &touched {
            self.advance(name, next, changes);
        }
        if changed {
            self.revision = next;
        }
        ended
    }

    /// Grants waiters of lock `name` from the start of the list while each
    /// fits with the holders before it and no delay is in force; forgets the
    /// lock when unused. Whether anyone was granted.
    fn advance(&mut self, name: &str, next: i64, changes: &mut Vec<LockChange>) -> bool {
        let Some(lock) = self.locks.get_mut(name) else {
            return false;
        };
        let mut any = false;
        if lock.delay.is_none() {
            for index in 0..lock.places.len() {
                if lock.places[index].token.is_some() {
                    continue;
                }
                let holders = lock.holders(name);
                if !admits(lock.permits, &holders, lock.places[index].mode) {
                    break;
                }
                lock.places[index].token = Some(next);
                changes.push(got(name, lock.places[index].lease, next));
                any = true;
            }
        }
        if lock.is_unused() {
            self.locks.remove(name);
        }
        any
    }
}

//! Property tests: random command sequences over a small key alphabet (with
//! the empty key and 0xff edges that prefix scans get wrong), checked for
//! determinism, against a naive model, and for the revision invariants.

use proptest::prelude::*;

use super::*;
use crate::state::{KvStore, StateMachine};

/// Few keys, so that commands collide; prefixes of each other, the empty key
/// (refused at the API edge, but it must not break the machine) and 0xff
/// bytes where a prefix's end is computed.
const KEYS: &[&[u8]] = &[
    b"",
    b"a",
    b"ab",
    b"abc",
    b"b",
    b"ba",
    b"a\xff",
    b"a\xff\x00",
    b"\xff",
    b"\xff\xff",
];

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(KEYS).prop_map(<[u8]>::to_vec)
}

/// Values that order differently from each other and from the empty one.
const VALUES: &[&[u8]] = &[b"", b"x", b"y", b"xy"];

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(VALUES).prop_map(<[u8]>::to_vec)
}

/// Mostly 0; other ids make `StateMachine` refuse the command, and are kept
/// by `KvStore` for the lease compare.
fn lease() -> impl Strategy<Value = i64> {
    prop_oneof![8 => Just(0), 1 => Just(1), 1 => Just(7)]
}

fn put_request() -> impl Strategy<Value = PutRequest> {
    (key(), value(), lease(), any::<bool>()).prop_map(|(key, value, lease, prev_kv)| PutRequest {
        key,
        value,
        lease,
        prev_kv,
    })
}

fn delete_request() -> impl Strategy<Value = DeleteRequest> {
    (key(), any::<bool>(), any::<bool>()).prop_map(|(key, prefix, prev_kv)| DeleteRequest {
        key,
        prefix,
        prev_kv,
    })
}

fn range_request() -> impl Strategy<Value = RangeRequest> {
    (
        key(),
        any::<bool>(),
        -2..6_i64,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(key, prefix, limit, count_only, keys_only)| RangeRequest {
            key,
            prefix,
            limit,
            count_only,
            keys_only,
        })
}

fn compare_item() -> impl Strategy<Value = Compare> {
    let op = prop_oneof![
        Just(CompareOp::Equal),
        Just(CompareOp::Greater),
        Just(CompareOp::Less),
        Just(CompareOp::NotEqual),
    ];
    let number = -1..5_i64;
    let target = prop_oneof![
        number.clone().prop_map(CompareTarget::Version),
        number.clone().prop_map(CompareTarget::CreateRevision),
        number.clone().prop_map(CompareTarget::ModRevision),
        value().prop_map(CompareTarget::Value),
        prop_oneof![Just(0), Just(1), Just(7)].prop_map(CompareTarget::Lease),
    ];
    (key(), op, target).prop_map(|(key, op, target)| Compare { key, op, target })
}

fn txn_op() -> impl Strategy<Value = TxnOp> {
    prop_oneof![
        range_request().prop_map(TxnOp::Range),
        put_request().prop_map(TxnOp::Put),
        delete_request().prop_map(TxnOp::DeleteRange),
    ]
}

fn command() -> impl Strategy<Value = Command> {
    let txn = (
        prop::collection::vec(compare_item(), 0..3),
        prop::collection::vec(txn_op(), 0..4),
        prop::collection::vec(txn_op(), 0..4),
    )
        .prop_map(|(compare, success, failure)| TxnRequest {
            compare,
            success,
            failure,
        });
    prop_oneof![
        3 => put_request().prop_map(Command::Put),
        2 => delete_request().prop_map(Command::DeleteRange),
        2 => txn.prop_map(Command::Txn),
    ]
}

fn commands() -> impl Strategy<Value = Vec<Command>> {
    prop::collection::vec(command(), 0..40)
}

/// The keyspace after `commands`, applied without the lease check.
fn store_after(commands: &[Command]) -> KvStore {
    let mut store = KvStore::default();
    for command in commands {
        let mut events = Vec::new();
        match command {
            Command::Put(put) => {
                store.put(put, &mut events);
            }
            Command::DeleteRange(delete) => {
                store.delete(delete, &mut events);
            }
            Command::Txn(txn) => {
                store.txn(txn, &mut events);
            }
            other => unreachable!("command() makes only KV commands, not {other:?}"),
        }
    }
    store
}

/// Every pair, in key order.
fn everything(state: &StateMachine) -> Vec<KeyValue> {
    state.range(&scan("")).kvs
}

proptest! {
    /// The same log, once as values and once through the postcard encoding
    /// the log uses, gives the same answers, events, state and digest.
    #[test]
    fn same_log_same_everything(commands in commands()) {
        let mut direct = StateMachine::new();
        let mut decoded = StateMachine::new();
        for command in &commands {
            let encoded = postcard::to_stdvec(command).expect("commands encode");
            let command_again: Command = postcard::from_bytes(&encoded).expect("commands decode");
            prop_assert_eq!(direct.apply(command), decoded.apply(&command_again));
        }
        prop_assert_eq!(&direct, &decoded);
        prop_assert_eq!(direct.digest(), decoded.digest());
        prop_assert_eq!(direct.clone().digest(), direct.digest());
    }

    /// Different states have different digests (a collision among these few
    /// states would mean a field is missing from the hash). On `KvStore`,
    /// which keeps lease ids that `StateMachine` refuses for now.
    #[test]
    fn different_state_different_digest(left in commands(), right in commands()) {
        let one = store_after(&left);
        let other = store_after(&right);
        prop_assert_eq!(one == other, one.digest() == other.digest());
    }

    /// The keyspace answers exactly what a naive, scan-everything model does,
    /// for every command and for reads in between.
    #[test]
    fn matches_naive_model(
        commands in commands(),
        reads in prop::collection::vec(range_request(), 1..8),
    ) {
        let mut store = KvStore::default();
        let mut model = Model::default();
        for command in &commands {
            let mut events = Vec::new();
            let mut model_events = Vec::new();
            match command {
                Command::Put(put) => prop_assert_eq!(
                    store.put(put, &mut events),
                    model.put(put, &mut model_events)
                ),
                Command::DeleteRange(delete) => prop_assert_eq!(
                    store.delete(delete, &mut events),
                    model.delete(delete, &mut model_events)
                ),
                Command::Txn(txn) => prop_assert_eq!(
                    store.txn(txn, &mut events),
                    model.txn(txn, &mut model_events)
                ),
                other => unreachable!("command() makes only KV commands, not {other:?}"),
            }
            prop_assert_eq!(events, model_events);
            prop_assert_eq!(store.revision(), model.revision);
            for read in &reads {
                prop_assert_eq!(store.range(read), model.range(read, model.revision));
            }
        }
    }

    /// The revision advances by exactly one for a command that changes a key
    /// (and emits events), and stays otherwise; answers report it, events
    /// carry it, and a command without events leaves the state untouched.
    #[test]
    fn revision_moves_by_one_per_change(commands in commands()) {
        let mut state = StateMachine::new();
        for command in &commands {
            let before = state.clone();
            let (response, events) = state.apply(command);
            let after = state.revision();
            if events.is_empty() {
                prop_assert_eq!(after, before.revision());
                prop_assert_eq!(&state, &before);
            } else {
                prop_assert_eq!(after, before.revision() + 1);
            }
            for event in &events {
                prop_assert_eq!(event.kv.mod_revision, after);
            }
            match response {
                Response::Put(put) => prop_assert_eq!(put.revision, after),
                Response::DeleteRange(delete) => prop_assert_eq!(delete.revision, after),
                Response::Txn(txn) => prop_assert_eq!(txn.revision, after),
                Response::Error(_) => prop_assert_eq!(&state, &before),
                other => unreachable!("KV commands answer KV responses, not {other:?}"),
            }
        }
    }

    /// Every pair satisfies 1 <= create_revision <= mod_revision <= revision
    /// and version >= 1, and a full range lists strictly ordered keys.
    #[test]
    fn revisions_of_every_key_are_ordered(commands in commands()) {
        let mut state = StateMachine::new();
        for command in &commands {
            state.apply(command);
            let revision = state.revision();
            let kvs = everything(&state);
            for kv in &kvs {
                prop_assert!(1 <= kv.create_revision, "{:?}", kv);
                prop_assert!(kv.create_revision <= kv.mod_revision, "{:?}", kv);
                prop_assert!(kv.mod_revision <= revision, "{:?} at {}", kv, revision);
                prop_assert!(kv.version >= 1, "{:?}", kv);
            }
            prop_assert!(kvs.windows(2).all(|pair| pair[0].key < pair[1].key));
        }
    }
}

/// The keyspace written the slowest obvious way: a sorted `Vec`, and reads
/// that test every key with `starts_with`.
#[derive(Debug, Default)]
struct Model {
    kvs: Vec<KeyValue>,
    revision: i64,
}

impl Model {
    fn put(&mut self, req: &PutRequest, events: &mut Vec<Event>) -> PutResult {
        let revision = self.revision + 1;
        let prev_kv = self.put_at(req, revision, events);
        self.revision = revision;
        PutResult {
            revision,
            prev_kv: if req.prev_kv { prev_kv } else { None },
        }
    }

    fn delete(&mut self, req: &DeleteRequest, events: &mut Vec<Event>) -> DeleteResult {
        let deleted = self.delete_at(req, self.revision + 1, events);
        if !deleted.is_empty() {
            self.revision += 1;
        }
        DeleteResult {
            revision: self.revision,
            deleted: deleted.len() as i64,
            prev_kvs: if req.prev_kv { deleted } else { vec![] },
        }
    }

    fn txn(&mut self, req: &TxnRequest, events: &mut Vec<Event>) -> TxnResult {
        let succeeded = req.compare.iter().all(|compare| self.holds(compare));
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let start = self.revision;
        // The txn changed something once it emitted an event.
        let events_before = events.len();
        let mut responses = vec![];
        for op in ops {
            let changed = events.len() > events_before;
            responses.push(match op {
                TxnOp::Range(range) => {
                    TxnOpResult::Range(self.range(range, start + i64::from(changed)))
                }
                TxnOp::Put(put) => {
                    let prev_kv = self.put_at(put, start + 1, events);
                    TxnOpResult::Put(PutResult {
                        revision: start + 1,
                        prev_kv: if put.prev_kv { prev_kv } else { None },
                    })
                }
                TxnOp::DeleteRange(delete) => {
                    let deleted = self.delete_at(delete, start + 1, events);
                    TxnOpResult::DeleteRange(DeleteResult {
                        revision: start + i64::from(events.len() > events_before),
                        deleted: deleted.len() as i64,
                        prev_kvs: if delete.prev_kv { deleted } else { vec![] },
                    })
                }
            });
        }
        self.revision = start + i64::from(events.len() > events_before);
        TxnResult {
            revision: self.revision,
            succeeded,
            responses,
        }
    }

    fn range(&self, req: &RangeRequest, revision: i64) -> RangeResult {
        let matches: Vec<&KeyValue> = self
            .kvs
            .iter()
            .filter(|kv| covers(&req.key, req.prefix, &kv.key))
            .collect();
        let limit = if req.limit > 0 {
            req.limit as usize
        } else {
            usize::MAX
        };
        let kvs = if req.count_only {
            vec![]
        } else {
            let mut kvs: Vec<KeyValue> = matches.iter().take(limit).map(|&kv| kv.clone()).collect();
            if req.keys_only {
                kvs.iter_mut().for_each(|kv| kv.value.clear());
            }
            kvs
        };
        RangeResult {
            revision,
            kvs,
            more: matches.len() > limit,
            count: matches.len() as i64,
        }
    }

    fn holds(&self, compare: &Compare) -> bool {
        let stored = self.kvs.iter().find(|kv| kv.key == compare.key);
        let missing = kv("", "", 0, 0, 0);
        let kv = stored.unwrap_or(&missing);
        let op = compare.op;
        match &compare.target {
            CompareTarget::Value(given) => stored.is_some() && relates(op, &kv.value, given),
            CompareTarget::Version(given) => relates(op, &kv.version, given),
            CompareTarget::CreateRevision(given) => relates(op, &kv.create_revision, given),
            CompareTarget::ModRevision(given) => relates(op, &kv.mod_revision, given),
            CompareTarget::Lease(given) => relates(op, &kv.lease, given),
            // Not generated here; the keyspace alone never confirms a holder.
            CompareTarget::LockToken(_) => false,
        }
    }

    fn put_at(
        &mut self,
        req: &PutRequest,
        revision: i64,
        events: &mut Vec<Event>,
    ) -> Option<KeyValue> {
        let prev_kv = self.kvs.iter().find(|kv| kv.key == req.key).cloned();
        self.kvs.retain(|kv| kv.key != req.key);
        let kv = KeyValue {
            key: req.key.clone(),
            create_revision: prev_kv
                .as_ref()
                .map_or(revision, |prev| prev.create_revision),
            mod_revision: revision,
            version: prev_kv.as_ref().map_or(0, |prev| prev.version) + 1,
            value: req.value.clone(),
            lease: req.lease,
        };
        self.kvs.push(kv.clone());
        self.kvs.sort_by(|left, right| left.key.cmp(&right.key));
        events.push(Event {
            kind: EventKind::Put,
            kv,
            prev_kv: prev_kv.clone(),
        });
        prev_kv
    }

    fn delete_at(
        &mut self,
        req: &DeleteRequest,
        revision: i64,
        events: &mut Vec<Event>,
    ) -> Vec<KeyValue> {
        let (deleted, kept): (Vec<KeyValue>, Vec<KeyValue>) = self
            .kvs
            .drain(..)
            .partition(|kv| covers(&req.key, req.prefix, &kv.key));
        self.kvs = kept;
        for prev in &deleted {
            events.push(delete_event(&prev.key, revision, prev.clone()));
        }
        deleted
    }
}

fn relates<T: PartialOrd>(op: CompareOp, have: &T, given: &T) -> bool {
    match op {
        CompareOp::Equal => have == given,
        CompareOp::Greater => have > given,
        CompareOp::Less => have < given,
        CompareOp::NotEqual => have != given,
    }
}

fn covers(wanted: &[u8], prefix: bool, key: &[u8]) -> bool {
    if prefix {
        key.starts_with(wanted)
    } else {
        key == wanted
    }
}

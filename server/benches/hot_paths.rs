//! Hot paths that need no cluster: applying a command to the state
//! machine, encoding a raft entry, persisting one Ready to fjall.
//!
//! ```text
//! cargo bench -p fenced-server --bench hot_paths
//! cargo bench -p fenced-server --bench hot_paths -- apply   # a filter
//! ```
//!
//! Each figure is one call of the named function, on one thread, with the
//! inputs built outside the timed part. `persist` fsyncs (fdatasync) into a
//! temporary directory under `$TMPDIR`, so it measures that disk.

use std::hint::black_box;

use divan::Bencher;
use fenced_server::node::proposals::Envelope;
use fenced_server::node::storage::FjallStorage;
use fenced_server::state::{
    AcquireCommand, AcquireOutcome, Command, LockMode, PutRequest, Response, StateMachine,
};
use raft::eraftpb::{Entry, HardState};

fn main() {
    divan::main();
}

/// Keys in the keyspace the put benchmarks write into.
const KEYS: usize = 10_000;
/// Bytes per value, as in `fenced-bench put`.
const VALUE_SIZE: usize = 256;

fn put(i: usize) -> Command {
    Command::Put(PutRequest {
        key: format!("bench/{:08}", i % KEYS).into_bytes(),
        value: vec![b'x'; VALUE_SIZE],
        lease: 0,
        prev_kv: false,
    })
}

fn acquire(name: &str, lease: i64) -> Command {
    Command::LockAcquire(AcquireCommand {
        name: name.to_owned(),
        lease,
        mode: LockMode::Exclusive,
        permits: 1,
        try_only: false,
        delay_ms: 0,
    })
}

/// A state with `leases` leases (ids 1..=leases) and [`KEYS`] keys written.
fn populated(leases: usize) -> StateMachine {
    let mut state = StateMachine::new();
    for _ in 0..leases {
        state.apply(&Command::LeaseGrant { id: 0, ttl: 60 });
    }
    for i in 0..KEYS {
        state.apply(&put(i));
    }
    state
}

/// The token of a granted acquire; panics otherwise (a broken setup).
fn granted_token(response: &Response) -> i64 {
    match response {
        Response::LockAcquire(AcquireOutcome::Granted(grant)) => grant.token,
        other => panic!("the setup's acquire was not granted: {other:?}"),
    }
}

mod apply {
    use super::*;

    /// A put overwriting one of [`KEYS`] keys (each write adds a revision to
    /// the key's history).
    #[divan::bench]
    fn put(bencher: Bencher) {
        let mut state = populated(0);
        let mut i = 0;
        bencher.bench_local(|| {
            i += 1;
            state.apply(black_box(&super::put(i)))
        });
    }

    /// An acquire of a free lock (granted at once), then its release with
    /// nobody waiting: two applies per iteration.
    ///
    /// The state is not cloned between iterations: the keyspace and the
    /// tables are persistent maps, so a clone would make the next apply
    /// copy the nodes it touches, which the apply loop never does.
    #[divan::bench(counters = [divan::counter::ItemsCount::new(2usize)])]
    fn acquire_release(bencher: Bencher) {
        let mut state = populated(1);
        let acquire = acquire("bench-lock", 1);
        bencher.bench_local(|| {
            let token = granted_token(&state.apply(black_box(&acquire)).0);
            let release = Command::LockRelease {
                name: "bench-lock".to_owned(),
                token,
                lease: 1,
            };
            ok(state.apply(black_box(&release)).0)
        });
    }

    /// A contended hand-off, two applies per iteration: the holder releases
    /// (the same apply grants the lock to the waiter), then queues again
    /// behind the new holder.
    #[divan::bench(counters = [divan::counter::ItemsCount::new(2usize)])]
    fn release_handoff_and_requeue(bencher: Bencher) {
        let mut state = populated(2);
        let mut token = granted_token(&state.apply(&acquire("bench-lock", 1)).0);
        ok(state.apply(&acquire("bench-lock", 2)).0);
        let (mut holder, mut waiter) = (1i64, 2i64);
        bencher.bench_local(|| {
            let release = Command::LockRelease {
                name: "bench-lock".to_owned(),
                token,
                lease: holder,
            };
            ok(state.apply(black_box(&release)).0);
            // The waiter was granted in the release's apply, at its
            // revision: that revision is its token.
            token = state.revision();
            let requeue = acquire("bench-lock", holder);
            let queued = state.apply(black_box(&requeue)).0;
            if !matches!(queued, Response::LockAcquire(AcquireOutcome::Queued { .. })) {
                panic!("the re-acquire was not queued: {queued:?}");
            }
            (holder, waiter) = (waiter, holder);
        });
    }
}

/// `response` unless it is an error (a broken benchmark setup).
fn ok(response: Response) -> Response {
    if let Response::Error(err) = &response {
        panic!("the state machine refused a benchmark command: {err:?}");
    }
    response
}

mod envelope {
    use super::*;

    fn envelope(command: Command) -> Envelope {
        Envelope {
            origin: 1,
            nonce: 0x5eed_5eed_5eed_5eed,
            seq: 123_456,
            command,
        }
    }

    /// Encoding a put of a 256-byte value for the raft log.
    #[divan::bench]
    fn encode_put(bencher: Bencher) {
        let envelope = envelope(put(7));
        bencher.bench_local(|| black_box(&envelope).encode());
    }

    /// Encoding an exclusive acquire for the raft log.
    #[divan::bench]
    fn encode_acquire(bencher: Bencher) {
        let envelope = envelope(acquire("bench-lock", 42));
        bencher.bench_local(|| black_box(&envelope).encode());
    }

    /// Decoding a put entry's data, as the apply loop does.
    #[divan::bench]
    fn decode_put(bencher: Bencher) {
        let data = envelope(put(7)).encode();
        bencher.bench_local(|| Envelope::decode(black_box(&data)));
    }
}

mod persist {
    use super::*;

    /// One Ready: `entries` put entries appended after the last one and a
    /// HardState committing them, in one fjall batch, fdatasynced.
    #[divan::bench(args = [1, 16, 64], sample_count = 40, sample_size = 1)]
    fn ready(bencher: Bencher, entries: usize) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut storage = FjallStorage::open(dir.path()).expect("opening fjall");
        let data = Envelope {
            origin: 1,
            nonce: 1,
            seq: 1,
            command: put(1),
        }
        .encode();
        let mut next_index = 1u64;
        bencher
            .with_inputs(|| {
                let first = next_index;
                next_index += entries as u64;
                let batch: Vec<Entry> = (first..next_index)
                    .map(|index| {
                        let mut entry = Entry {
                            index,
                            term: 1,
                            ..Default::default()
                        };
                        entry.data = data.clone().into();
                        entry
                    })
                    .collect();
                let hard_state = HardState {
                    term: 1,
                    vote: 1,
                    commit: next_index - 1,
                    ..Default::default()
                };
                (batch, hard_state)
            })
            .bench_local_values(|(batch, hard_state)| {
                storage
                    .persist(black_box(&batch), Some(&hard_state))
                    .expect("persist")
            });
    }
}

//! What a snapshot costs at a given size: the pause of the apply loop (the
//! copy of the state), encoding, size, decoding. Used for the snapshot
//! figures in docs/benchmarks.md:
//!
//! ```sh
//! cargo run --release -p fenced-server --example snapshot_cost -- 100000 10000 100
//! ```
//!
//! Arguments: keys, leases, value bytes (every 10th key is attached to a
//! lease, and every lease holds a lock).

use std::time::{Duration, Instant};

use fenced_server::state::{AcquireCommand, Command, LockMode, PutRequest, StateMachine, snapshot};

fn arg(n: usize, default: i64) -> i64 {
    std::env::args()
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let (keys, leases, value) = (arg(1, 100_000), arg(2, 10_000), arg(3, 100));
    let mut state = StateMachine::new();
    for _ in 0..leases {
        state.execute(&Command::LeaseGrant { id: 0, ttl: 60 });
    }
    for lease in 1..=leases {
        state.execute(&Command::LockAcquire(AcquireCommand {
            name: format!("lock/{}", lease % 1000),
            lease,
            mode: LockMode::Exclusive,
            permits: 1,
            try_only: false,
            delay_ms: 0,
        }));
    }
    for i in 0..keys {
        state.execute(&Command::Put(PutRequest {
            key: format!("key/{i:08}").into_bytes(),
            value: vec![b'x'; value as usize],
            lease: if i % 10 == 0 && leases > 0 {
                1 + (i / 10) % leases
            } else {
                0
            },
            prev_kv: false,
        }));
    }
    println!("{keys} keys of {value} B values, {leases} leases each queued on one of 1000 locks");
    let mut best = [Duration::MAX; 3];
    let mut bytes = 0;
    for _ in 0..5 {
        let started = Instant::now();
        let copy = state.clone();
        let pause = started.elapsed();
        let started = Instant::now();
        let encoded = snapshot::encode(&copy);
        let encode = started.elapsed();
        let started = Instant::now();
        let decoded = snapshot::decode(&encoded).expect("a snapshot decodes");
        let decode = started.elapsed();
        assert_eq!(decoded.digest(), state.digest());
        bytes = encoded.len();
        for (b, t) in best.iter_mut().zip([pause, encode, decode]) {
            *b = (*b).min(t);
        }
    }
    println!(
        "best of 5: apply-loop pause (copy) {:?}, encode {:?}, size {} bytes ({:.1} MiB), decode {:?}",
        best[0],
        best[1],
        bytes,
        bytes as f64 / (1024.0 * 1024.0),
        best[2]
    );
}

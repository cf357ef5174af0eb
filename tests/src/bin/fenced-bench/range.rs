//! The `range` workload: point reads of keys written before the timed part.
//!
//! Before the run, `keys` keys (`bench-range/00000000` ...) are written
//! with values of `value_size` bytes, over all the connections at once; the
//! writes are not timed. Then each client reads a random one of them,
//! closed loop, over the `--conns` connections (fenced: connection k on
//! endpoint k mod n, through the generated KV stub; etcd: etcd-client,
//! balanced over the endpoints). A linearizable read costs a ReadIndex
//! round with the leader on fenced and a quorum read (also a ReadIndex) on
//! etcd 3.4; a serializable read is answered from the member's applied
//! state on both. A read that finds no key counts as an error: every key
//! was written before the run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context;
use hdrhistogram::Histogram;
use rand::Rng;

use crate::target::Target;
use crate::{Stop, new_histogram};

/// The key of number `i`.
fn key(i: u64) -> Vec<u8> {
    format!("bench-range/{i:08}").into_bytes()
}

/// What a `range` run measured.
#[derive(Debug)]
pub(crate) struct RangeRun {
    pub(crate) hist: Histogram<u64>,
    pub(crate) errors: u64,
    /// Reads that found no key (counted in `errors` too).
    pub(crate) missing: u64,
    pub(crate) seconds: f64,
    /// Seconds the untimed writes of the keys took.
    pub(crate) populate_seconds: f64,
}

/// Writes the keys, then runs `clients` readers until `stop`.
pub(crate) async fn run(
    targets: &[Target],
    clients: usize,
    stop: Stop,
    keys: u64,
    value_size: usize,
    serializable: bool,
) -> anyhow::Result<RangeRun> {
    let keys = keys.max(1);
    let populating = Instant::now();
    // One writer per connection, each writing every n-th key; this also
    // warms up every connection, so connection setup is not measured.
    let writers = targets.iter().enumerate().map(|(w, target)| {
        let target = target.clone();
        let n = targets.len() as u64;
        async move {
            let value = vec![b'r'; value_size];
            let mut i = w as u64;
            while i < keys {
                target.put(key(i), value.clone()).await?;
                i += n;
            }
            // A read of each kind, so the first timed read is not the first
            // of its kind on this connection.
            target.range(key(0), serializable).await?;
            anyhow::Ok(())
        }
    });
    futures::future::try_join_all(writers)
        .await
        .context("writing the keys before the run")?;
    let populate_seconds = populating.elapsed().as_secs_f64();

    let started = Instant::now();
    let issued = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(clients);
    for i in 0..clients {
        let target = targets[i % targets.len()].clone();
        let issued = issued.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = new_histogram();
            let mut errors = 0u64;
            let mut missing = 0u64;
            let mut first_error = None;
            loop {
                let more = match stop {
                    Stop::After(d) => started.elapsed() < d,
                    Stop::Total(n) => issued.fetch_add(1, Ordering::Relaxed) < n,
                };
                if !more {
                    break;
                }
                let k = key(rand::rng().random_range(0..keys));
                let t = Instant::now();
                match target.range(k, serializable).await {
                    Ok(true) => {
                        let _ = hist.record(t.elapsed().as_micros() as u64);
                    }
                    Ok(false) => {
                        errors += 1;
                        missing += 1;
                    }
                    Err(err) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{err:#}"));
                    }
                }
            }
            (hist, errors, missing, first_error)
        }));
    }
    let mut hist = new_histogram();
    let mut errors = 0;
    let mut missing = 0;
    let mut first_error = None;
    for task in tasks {
        let (h, e, m, first) = task.await?;
        hist.add(&h).context("merging histograms")?;
        errors += e;
        missing += m;
        first_error = first_error.or(first);
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Some(err) = first_error {
        eprintln!("fenced-bench: {errors} failed reads; the first: {err}");
    }
    Ok(RangeRun {
        hist,
        errors,
        missing,
        seconds,
        populate_seconds,
    })
}

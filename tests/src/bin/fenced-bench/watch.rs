//! The watch workloads: `watch-latency` (how long a put takes to reach N
//! watchers of its key) and `watch-hold` (N idle watchers held open, so the
//! serving member's memory can be sampled).
//!
//! Both systems get the same shape. The N watches of the one key are spread
//! over `ceil(N / per_stream)` gRPC watch streams, each on its own
//! connection, all to the first endpoint; each stream carries up to
//! `per_stream` watches (created one after the other on the stream, each
//! from "now"). The writer has a connection of its own to the same first
//! endpoint. fenced: the generated `Watch` stub re-exported by fenced-client
//! (fenced-client's `WatchStream` carries one watch per gRPC stream, and the
//! shape here needs many). etcd: etcd-client's `WatchStream`, which takes
//! more watches on the same stream.
//!
//! Every put's value is the moment it was issued: nanoseconds since a base
//! instant shared by the writer and the watchers, which run in this one
//! process on one monotonic clock. A watcher receiving the event subtracts
//! it from the moment the response was decoded, so one event's latency is
//! "put issued → event received by that watcher": it includes sending the
//! put, the commit, the apply on the watchers' member and the fan-out, and
//! it is never negative. The ack of the put plays no part (an event may
//! arrive before its put is acknowledged).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, bail};
use fenced_client::pb;
use fenced_client::pb::watch_client::WatchClient;
use fenced_client::pb::watch_request::RequestUnion;
use hdrhistogram::Histogram;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::Streaming;
use tonic::transport::Endpoint;

use crate::target::{Target, member_role, url};
use crate::{Stop, TargetKind, new_histogram};

/// The value of the put that ends a run: every watcher stops at it.
const SENTINEL: u64 = u64::MAX;
/// How long the watchers may take to see the last put after the writer
/// stopped; a watch that has not seen it by then counts as failed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest time to open one stream and have all its watches confirmed.
const OPEN_TIMEOUT: Duration = Duration::from_secs(60);

/// The shape of a watch workload.
#[derive(Clone, Debug)]
pub(crate) struct Shape {
    pub(crate) kind: TargetKind,
    /// The watchers' and the writer's member.
    pub(crate) endpoint: String,
    pub(crate) watchers: usize,
    pub(crate) per_stream: usize,
}

impl Shape {
    /// How many watches each stream carries: `per_stream` each, the last
    /// one the remainder.
    fn streams(&self) -> Vec<usize> {
        let per = self.per_stream.max(1);
        let mut left = self.watchers;
        let mut counts = Vec::with_capacity(self.watchers.div_ceil(per));
        while left > 0 {
            let n = left.min(per);
            counts.push(n);
            left -= n;
        }
        counts
    }
}

/// What a `watch-latency` run measured.
#[derive(Debug)]
pub(crate) struct LatencyRun {
    /// "put issued → event received", over every (watcher, event) pair.
    pub(crate) hist: Histogram<u64>,
    /// Events received by all watchers (the final marker put not counted).
    pub(crate) events: u64,
    /// Puts acknowledged.
    pub(crate) puts: u64,
    /// Puts that failed.
    pub(crate) put_errors: u64,
    /// Watches that were cancelled or whose stream ended early.
    pub(crate) watch_errors: u64,
    /// Sum over the watches of the acknowledged puts each did not receive.
    pub(crate) missed: u64,
    /// From the first put to the last put's answer.
    pub(crate) seconds: f64,
    pub(crate) streams: usize,
    /// The Raft role of the watchers' member at the start.
    pub(crate) role: String,
    /// Put issued → put acknowledged.
    pub(crate) acks: Histogram<u64>,
}

/// What a `watch-hold` run measured.
#[derive(Debug)]
pub(crate) struct HoldRun {
    /// Latency of the one put made after the hold, over every watcher.
    pub(crate) hist: Histogram<u64>,
    /// Time to open every stream and have every watch confirmed.
    pub(crate) open_seconds: f64,
    pub(crate) hold_seconds: f64,
    /// Watches that did not deliver the put made after the hold.
    pub(crate) errors: u64,
    pub(crate) streams: usize,
    pub(crate) role: String,
}

/// `watch-latency`: N watchers of one key, one writer putting to it at
/// `rate` puts/s (open loop: each put is issued on schedule whether or not
/// the earlier ones were answered), or with `rate` 0 one put at a time
/// (closed loop).
pub(crate) async fn run_latency(
    shape: &Shape,
    stop: Stop,
    rate: f64,
) -> anyhow::Result<LatencyRun> {
    if !(rate >= 0.0 && rate.is_finite()) {
        bail!("--rate must be a number of puts per second, 0 for closed loop");
    }
    let role = role_of(shape).await;
    let key = unique_key();
    let writer = Target::connect(
        shape.kind,
        std::slice::from_ref(&shape.endpoint),
        0,
        crate::Route::Spread,
    )
    .await?;
    // Warms the writer's connection, on another key.
    writer
        .put(b"bench-watch-warmup".to_vec(), vec![0; 8])
        .await
        .context("warm-up put")?;
    let streams = open_all(shape, &key).await?;
    let stream_count = streams.len();
    let base = Instant::now();
    let receivers: Vec<_> = streams
        .into_iter()
        .map(|(conn, ids)| tokio::spawn(receive(conn, ids, base)))
        .collect();

    let started = Instant::now();
    let written = write(&writer, &key, stop, rate, base).await;
    let (puts, put_errors) = (written.ok, written.failed);
    let seconds = started.elapsed().as_secs_f64();
    let tallies = finish(&writer, &key, receivers).await?;

    let mut run = LatencyRun {
        hist: new_histogram(),
        events: 0,
        puts,
        put_errors,
        watch_errors: 0,
        missed: 0,
        seconds,
        streams: stream_count,
        role,
        acks: written.acks,
    };
    for tally in tallies {
        run.hist.add(&tally.hist).context("merging histograms")?;
        run.events += tally.events;
        run.watch_errors += tally.failed;
        run.missed += tally
            .per_watch
            .iter()
            .map(|got| puts.saturating_sub(*got))
            .sum::<u64>();
        if let Some(err) = tally.first_error {
            eprintln!("fenced-bench: a watch failed: {err}");
        }
    }
    Ok(run)
}

/// `watch-hold`: opens N watchers and holds them for `hold`, then makes one
/// put and times its delivery to every watcher.
pub(crate) async fn run_hold(shape: &Shape, stop: Stop) -> anyhow::Result<HoldRun> {
    let Stop::After(hold) = stop else {
        bail!("watch-hold holds the watches for --duration seconds; --total does not apply");
    };
    let role = role_of(shape).await;
    let key = unique_key();
    let writer = Target::connect(
        shape.kind,
        std::slice::from_ref(&shape.endpoint),
        0,
        crate::Route::Spread,
    )
    .await?;
    writer
        .put(b"bench-watch-warmup".to_vec(), vec![0; 8])
        .await
        .context("warm-up put")?;
    let started = Instant::now();
    let streams = open_all(shape, &key).await?;
    let open_seconds = started.elapsed().as_secs_f64();
    let stream_count = streams.len();
    // compare.sh waits for this line before it samples the member's RSS.
    eprintln!(
        "watch-hold: {} watches open on {} over {stream_count} streams in {open_seconds:.1} s; holding for {:.1} s",
        shape.watchers,
        shape.endpoint,
        hold.as_secs_f64()
    );
    let base = Instant::now();
    let receivers: Vec<_> = streams
        .into_iter()
        .map(|(conn, ids)| tokio::spawn(receive(conn, ids, base)))
        .collect();
    tokio::time::sleep(hold).await;
    let stamp = base.elapsed().as_nanos() as u64;
    writer
        .put(key.clone(), stamp.to_be_bytes().to_vec())
        .await
        .context("the put after the hold")?;
    let tallies = finish(&writer, &key, receivers).await?;
    let mut hist = new_histogram();
    let mut errors = 0;
    for tally in tallies {
        hist.add(&tally.hist).context("merging histograms")?;
        // A watch that was cancelled before the put has no event either.
        errors += tally.per_watch.iter().filter(|got| **got == 0).count() as u64;
        if let Some(err) = tally.first_error {
            eprintln!("fenced-bench: a watch failed: {err}");
        }
    }
    Ok(HoldRun {
        hist,
        open_seconds,
        hold_seconds: hold.as_secs_f64(),
        errors,
        streams: stream_count,
        role,
    })
}

async fn role_of(shape: &Shape) -> String {
    match member_role(shape.kind, &shape.endpoint).await {
        Ok(role) => role,
        Err(err) => {
            eprintln!(
                "fenced-bench: could not ask {} for its role: {err:#}",
                shape.endpoint
            );
            "unknown".to_owned()
        }
    }
}

/// A key no earlier run wrote, so no old event can reach the watchers.
fn unique_key() -> Vec<u8> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("bench-watch/{}-{nanos}", std::process::id()).into_bytes()
}

/// Opens every stream of the shape at once; each with its watches confirmed.
async fn open_all(shape: &Shape, key: &[u8]) -> anyhow::Result<Vec<(Conn, Vec<i64>)>> {
    let opens = shape.streams().into_iter().map(|count| async move {
        tokio::time::timeout(
            OPEN_TIMEOUT,
            Conn::open(shape.kind, &shape.endpoint, key, count),
        )
        .await
        .with_context(|| format!("{count} watches not confirmed within {OPEN_TIMEOUT:?}"))?
    });
    futures::future::try_join_all(opens)
        .await
        .context("opening the watch streams")
}

/// What the writer did.
#[derive(Debug)]
struct Written {
    /// Puts acknowledged.
    ok: u64,
    failed: u64,
    /// Put issued → put acknowledged, for comparison with the events.
    acks: Histogram<u64>,
}

/// The writer: puts stamped with their issue time until `stop`.
async fn write(writer: &Target, key: &[u8], stop: Stop, rate: f64, base: Instant) -> Written {
    let started = Instant::now();
    let mut issued = 0u64;
    let more = |issued: u64| match stop {
        Stop::After(d) => started.elapsed() < d,
        Stop::Total(n) => issued < n,
    };
    let put = |writer: Target| {
        let key = key.to_vec();
        async move {
            let stamp = base.elapsed().as_nanos() as u64;
            let sent = Instant::now();
            writer.put(key, stamp.to_be_bytes().to_vec()).await?;
            Ok::<_, anyhow::Error>(sent.elapsed().as_micros() as u64)
        }
    };
    let mut written = Written {
        ok: 0,
        failed: 0,
        acks: new_histogram(),
    };
    let mut tally = |result: anyhow::Result<u64>| match result {
        Ok(micros) => {
            written.ok += 1;
            let _ = written.acks.record(micros.max(1));
        }
        Err(_) => written.failed += 1,
    };
    if rate == 0.0 {
        while more(issued) {
            issued += 1;
            tally(put(writer.clone()).await);
        }
        return written;
    }
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    // Open loop: a late tick is made up at once rather than dropped.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut inflight = tokio::task::JoinSet::new();
    loop {
        ticker.tick().await;
        if !more(issued) {
            break;
        }
        issued += 1;
        inflight.spawn(put(writer.clone()));
    }
    while let Some(done) = inflight.join_next().await {
        tally(done.unwrap_or_else(|err| Err(err.into())));
    }
    written
}

/// Ends a run: the marker put, then every receiver's tally (a receiver
/// that has not seen the marker within [`DRAIN_TIMEOUT`] counts its
/// unfinished watches as failed).
async fn finish(
    writer: &Target,
    key: &[u8],
    receivers: Vec<tokio::task::JoinHandle<Tally>>,
) -> anyhow::Result<Vec<Tally>> {
    let mut last = None;
    for _ in 0..3 {
        match writer
            .put(key.to_vec(), SENTINEL.to_be_bytes().to_vec())
            .await
        {
            Ok(()) => {
                last = None;
                break;
            }
            Err(err) => last = Some(err),
        }
    }
    if let Some(err) = last {
        for receiver in &receivers {
            receiver.abort();
        }
        return Err(err.context("the marker put that ends the run"));
    }
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let mut tallies = Vec::with_capacity(receivers.len());
    for receiver in receivers {
        let abort = receiver.abort_handle();
        match tokio::time::timeout_at(deadline, receiver).await {
            Ok(tally) => tallies.push(tally.context("a watch receiver panicked")?),
            Err(_) => {
                abort.abort();
                bail!("the watchers did not all see the last put within {DRAIN_TIMEOUT:?}");
            }
        }
    }
    Ok(tallies)
}

/// What one stream's watches received.
#[derive(Debug)]
struct Tally {
    hist: Histogram<u64>,
    events: u64,
    /// Events per watch, in the order the watches were created.
    per_watch: Vec<u64>,
    /// Watches cancelled, or cut off by the stream's end.
    failed: u64,
    first_error: Option<String>,
}

/// Reads one stream until every watch on it saw the marker put, the
/// stream ends, or the watches are all cancelled.
async fn receive(mut conn: Conn, ids: Vec<i64>, base: Instant) -> Tally {
    let index: HashMap<i64, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let mut done = vec![false; ids.len()];
    let mut remaining = ids.len();
    let mut tally = Tally {
        hist: new_histogram(),
        events: 0,
        per_watch: vec![0; ids.len()],
        failed: 0,
        first_error: None,
    };
    let mut stamps = Vec::new();
    while remaining > 0 {
        stamps.clear();
        let received = conn.next(&mut stamps).await;
        let now = Instant::now();
        match received {
            Ok(Some(Received::Events(watch_id))) => {
                let Some(&w) = index.get(&watch_id) else {
                    continue;
                };
                for stamp in &stamps {
                    if *stamp == SENTINEL {
                        if !done[w] {
                            done[w] = true;
                            remaining -= 1;
                        }
                        continue;
                    }
                    let issued = base + Duration::from_nanos(*stamp);
                    let micros = now.saturating_duration_since(issued).as_micros() as u64;
                    let _ = tally.hist.record(micros.max(1));
                    tally.per_watch[w] += 1;
                    tally.events += 1;
                }
            }
            Ok(Some(Received::Canceled(watch_id, reason))) => {
                if let Some(&w) = index.get(&watch_id)
                    && !done[w]
                {
                    done[w] = true;
                    remaining -= 1;
                    tally.failed += 1;
                    tally
                        .first_error
                        .get_or_insert_with(|| format!("watch {watch_id} cancelled: {reason}"));
                }
            }
            Ok(Some(Received::Other)) => {}
            Ok(None) => {
                tally.failed += remaining as u64;
                tally
                    .first_error
                    .get_or_insert_with(|| "the member ended the watch stream".to_owned());
                break;
            }
            Err(err) => {
                tally.failed += remaining as u64;
                tally.first_error.get_or_insert_with(|| format!("{err:#}"));
                break;
            }
        }
    }
    tally
}

/// One watch stream on a connection of its own.
enum Conn {
    Fenced {
        /// Kept open: a member ends a watch stream whose request side ended.
        _requests: mpsc::Sender<pb::WatchRequest>,
        responses: Streaming<pb::WatchResponse>,
    },
    #[cfg(feature = "etcd")]
    Etcd {
        _requests: etcd_client::WatchRequestSender,
        responses: etcd_client::WatchResponseStream,
    },
}

/// One response, reduced to what the workloads need.
enum Received {
    /// Events for this watch id; their stamps were pushed to the caller's
    /// buffer.
    Events(i64),
    /// The watch ended, with the reason.
    Canceled(i64, String),
    /// Anything else (a progress notice, a late confirmation).
    Other,
}

/// The issue stamp a put's value carries; `None` for a value this
/// benchmark did not write.
fn stamp(value: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(value).ok().map(u64::from_be_bytes)
}

impl Conn {
    /// Opens a stream to `endpoint` on a new connection with `count`
    /// watches of `key`, and waits until all are confirmed; returns their
    /// ids in creation order.
    async fn open(
        kind: TargetKind,
        endpoint: &str,
        key: &[u8],
        count: usize,
    ) -> anyhow::Result<(Conn, Vec<i64>)> {
        match kind {
            TargetKind::Fenced => {
                let channel = Endpoint::from_shared(url(endpoint))
                    .with_context(|| format!("endpoint {endpoint:?}"))?
                    .connect_timeout(Duration::from_secs(5))
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .with_context(|| format!("connecting to {endpoint}"))?;
                // Room for every create, so they are all queued up front.
                let (requests, outbox) = mpsc::channel(count + 1);
                for _ in 0..count {
                    let create = pb::WatchCreateRequest {
                        key: key.to_vec(),
                        ..Default::default()
                    };
                    requests
                        .try_send(pb::WatchRequest {
                            request_union: Some(RequestUnion::CreateRequest(create)),
                        })
                        .map_err(|_| anyhow::anyhow!("queueing a watch create"))?;
                }
                let mut responses = WatchClient::new(channel)
                    .watch(ReceiverStream::new(outbox))
                    .await
                    .context("opening a watch stream")?
                    .into_inner();
                let mut ids = Vec::with_capacity(count);
                while ids.len() < count {
                    let response = responses
                        .message()
                        .await
                        .context("waiting for watch confirmations")?
                        .context("the member ended the watch stream before confirming")?;
                    if response.canceled {
                        bail!("a watch create was refused: {}", response.cancel_reason);
                    }
                    if response.created {
                        ids.push(response.watch_id);
                    }
                }
                Ok((
                    Conn::Fenced {
                        _requests: requests,
                        responses,
                    },
                    ids,
                ))
            }
            #[cfg(feature = "etcd")]
            TargetKind::Etcd => {
                let client = etcd_client::Client::connect([url(endpoint)], None)
                    .await
                    .with_context(|| format!("connecting to {endpoint}"))?;
                let stream = client
                    .watch_client()
                    .watch(key.to_vec(), None)
                    .await
                    .context("opening a watch stream")?;
                let (mut requests, mut responses) = stream.split();
                // The first create went with the stream; the rest are sent
                // while the confirmations are read.
                let key = key.to_vec();
                let sender = tokio::spawn(async move {
                    for _ in 1..count {
                        requests.watch(key.clone(), None).await?;
                    }
                    Ok::<_, etcd_client::Error>(requests)
                });
                let mut ids = Vec::with_capacity(count);
                while ids.len() < count {
                    let response = responses
                        .message()
                        .await
                        .context("waiting for watch confirmations")?
                        .context("the member ended the watch stream before confirming")?;
                    if response.canceled() {
                        bail!("a watch create was refused: {}", response.cancel_reason());
                    }
                    if response.created() {
                        ids.push(response.watch_id());
                    }
                }
                let requests = sender
                    .await
                    .context("the watch create sender panicked")?
                    .context("sending watch creates")?;
                Ok((
                    Conn::Etcd {
                        _requests: requests,
                        responses,
                    },
                    ids,
                ))
            }
            #[cfg(not(feature = "etcd"))]
            TargetKind::Etcd => bail!("this fenced-bench was built without the etcd target"),
        }
    }

    /// The next response; an event response's stamps go to `stamps`.
    /// `None` when the stream ended.
    async fn next(&mut self, stamps: &mut Vec<u64>) -> anyhow::Result<Option<Received>> {
        match self {
            Conn::Fenced { responses, .. } => {
                let Some(response) = responses.message().await? else {
                    return Ok(None);
                };
                if response.canceled {
                    return Ok(Some(Received::Canceled(
                        response.watch_id,
                        response.cancel_reason,
                    )));
                }
                if response.events.is_empty() {
                    return Ok(Some(Received::Other));
                }
                stamps.extend(
                    response
                        .events
                        .iter()
                        .filter_map(|e| e.kv.as_ref().and_then(|kv| stamp(&kv.value))),
                );
                Ok(Some(Received::Events(response.watch_id)))
            }
            #[cfg(feature = "etcd")]
            Conn::Etcd { responses, .. } => {
                let Some(response) = responses.message().await? else {
                    return Ok(None);
                };
                if response.canceled() {
                    return Ok(Some(Received::Canceled(
                        response.watch_id(),
                        response.cancel_reason().to_owned(),
                    )));
                }
                if response.events().is_empty() {
                    return Ok(Some(Received::Other));
                }
                stamps.extend(
                    response
                        .events()
                        .iter()
                        .filter_map(|e| e.kv().and_then(|kv| stamp(kv.value()))),
                );
                Ok(Some(Received::Events(response.watch_id())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(watchers: usize, per_stream: usize) -> Shape {
        Shape {
            kind: TargetKind::Fenced,
            endpoint: "127.0.0.1:1".to_owned(),
            watchers,
            per_stream,
        }
    }

    #[test]
    fn watchers_are_spread_over_full_streams_then_the_remainder() {
        assert_eq!(shape(1, 100).streams(), vec![1]);
        assert_eq!(shape(100, 100).streams(), vec![100]);
        assert_eq!(shape(250, 100).streams(), vec![100, 100, 50]);
        assert_eq!(shape(10_000, 100).streams().len(), 100);
        assert_eq!(shape(0, 100).streams(), Vec::<usize>::new());
    }

    #[test]
    fn stamps_round_trip_and_foreign_values_are_ignored() {
        assert_eq!(stamp(&42u64.to_be_bytes()), Some(42));
        assert_eq!(stamp(&SENTINEL.to_be_bytes()), Some(SENTINEL));
        assert_eq!(stamp(b"x"), None);
    }
}

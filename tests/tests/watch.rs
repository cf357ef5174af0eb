//! Watches against real members: a watch from the past replays every
//! revision once and in order; the client's watch carries on across the
//! crash of the member serving it without a gap or a repeat; a restarted
//! member serves watches from the history it rebuilt; ten thousand watchers
//! on one member all get every put while one stalled stream is canceled
//! (with the revision to resume from) instead of holding anyone up; bad
//! requests are refused in-band and leave the stream serving.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use fenced_client::pb::{self, watch_client::WatchClient, watch_request::RequestUnion};
use fenced_client::{Client, ClientConfig, EventKind, WatchBatch};
use fenced_tests::{Cluster, ClusterConfig, wait_for, wait_until};
use futures::StreamExt as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

const LEADER_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one watch response may take to arrive.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(20);

async fn channel(cluster: &Cluster, id: u64) -> anyhow::Result<Channel> {
    Ok(
        Endpoint::from_shared(format!("http://{}", cluster.endpoint(id)))?
            .connect()
            .await?,
    )
}

/// One raw `Watch` stream: requests go in through `requests`, responses
/// come out of `responses`.
struct WatchConn {
    requests: mpsc::UnboundedSender<pb::WatchRequest>,
    responses: tonic::Streaming<pb::WatchResponse>,
}

impl WatchConn {
    async fn open(channel: Channel) -> anyhow::Result<WatchConn> {
        let (requests, rx) = mpsc::unbounded_channel();
        let responses = WatchClient::new(channel)
            .watch(UnboundedReceiverStream::new(rx))
            .await
            .context("opening a watch stream")?
            .into_inner();
        Ok(WatchConn {
            requests,
            responses,
        })
    }

    fn send(&self, request: RequestUnion) -> anyhow::Result<()> {
        self.requests
            .send(pb::WatchRequest {
                request_union: Some(request),
            })
            .map_err(|_| anyhow::anyhow!("the watch stream's request side is closed"))
    }

    fn create(&self, create: pb::WatchCreateRequest) -> anyhow::Result<()> {
        self.send(RequestUnion::CreateRequest(create))
    }

    fn cancel(&self, watch_id: i64) -> anyhow::Result<()> {
        self.send(RequestUnion::CancelRequest(pb::WatchCancelRequest {
            watch_id,
        }))
    }

    fn progress(&self) -> anyhow::Result<()> {
        self.send(RequestUnion::ProgressRequest(pb::WatchProgressRequest {}))
    }

    /// The next response; an error if the stream fails, ends, or is silent
    /// for [`RESPONSE_TIMEOUT`].
    async fn next(&mut self) -> anyhow::Result<pb::WatchResponse> {
        match tokio::time::timeout(RESPONSE_TIMEOUT, self.responses.message()).await {
            Err(_) => bail!("no watch response within {RESPONSE_TIMEOUT:?}"),
            Ok(Err(status)) => bail!("the watch stream failed: {status}"),
            Ok(Ok(None)) => bail!("the watch stream ended"),
            Ok(Ok(Some(response))) => Ok(response),
        }
    }

    /// Creates a watch and waits for its `created` answer; returns the
    /// revision the answer names.
    async fn create_and_confirm(&mut self, create: pb::WatchCreateRequest) -> anyhow::Result<i64> {
        let watch_id = create.watch_id;
        self.create(create)?;
        let response = self.next().await?;
        ensure!(
            response.created && !response.canceled && response.watch_id == watch_id,
            "expected the creation of watch {watch_id}, got {response:?}"
        );
        Ok(revision_of(&response))
    }
}

fn revision_of(response: &pb::WatchResponse) -> i64 {
    response.header.as_ref().map_or(0, |h| h.revision)
}

fn create(watch_id: i64, key: &str, prefix: bool, start_revision: i64) -> pb::WatchCreateRequest {
    pb::WatchCreateRequest {
        key: key.into(),
        prefix,
        start_revision,
        watch_id,
        ..Default::default()
    }
}

/// The revision a put committed at.
fn put_revision(response: &pb::PutResponse) -> anyhow::Result<i64> {
    Ok(response
        .header
        .as_ref()
        .context("put without header")?
        .revision)
}

/// One acknowledged write.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Write {
    key: Vec<u8>,
    value: Vec<u8>,
}

/// Acknowledged writes by revision; fails unless the revisions are
/// contiguous (nothing else writes to the cluster in these tests).
fn contiguous(writes: &BTreeMap<i64, Write>) -> anyhow::Result<(i64, i64)> {
    let first = *writes.keys().next().context("no writes")?;
    let last = *writes.keys().next_back().context("no writes")?;
    ensure!(
        last - first + 1 == writes.len() as i64,
        "{} acknowledged writes span revisions {first}..={last}: a write was applied twice \
         or something else wrote",
        writes.len()
    );
    Ok((first, last))
}

// ------------------------------------------------------------------ a

#[tokio::test]
async fn a_watch_from_the_middle_gets_every_later_revision_once_and_in_order() -> anyhow::Result<()>
{
    let cluster = Cluster::start(3).await?;
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    let follower = cluster
        .ids()
        .find(|&id| id != leader)
        .context("a follower")?;

    // 1,000 puts from 8 concurrent writers over 37 keys, so keys have many
    // versions and revisions interleave between writers.
    const PUTS: usize = 1000;
    const WRITERS: usize = 8;
    let client = cluster.client();
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in (writer..PUTS).step_by(WRITERS) {
                let key = format!("mid/{:02}", n % 37).into_bytes();
                let value = format!("value-{n}").into_bytes();
                let response = client.put(key.clone(), value.clone()).await?;
                acked.push((put_revision(&response)?, Write { key, value }));
            }
            anyhow::Ok(acked)
        }));
    }
    let mut writes = BTreeMap::new();
    for task in tasks {
        for (revision, write) in task.await?? {
            ensure!(
                writes.insert(revision, write).is_none(),
                "two puts acknowledged at revision {revision}"
            );
        }
    }
    let (first, last) = contiguous(&writes)?;
    ensure!(writes.len() == PUTS);
    let start = first + (PUTS as i64) / 2;

    // What each revision's event must say, from the full history: the
    // key's create revision, version and previous pair.
    let mut expected = BTreeMap::new();
    let mut current: BTreeMap<Vec<u8>, pb::KeyValue> = BTreeMap::new();
    for (&revision, write) in &writes {
        let previous = current.get(&write.key).cloned();
        let kv = pb::KeyValue {
            key: write.key.clone(),
            create_revision: previous.as_ref().map_or(revision, |p| p.create_revision),
            mod_revision: revision,
            version: previous.as_ref().map_or(1, |p| p.version + 1),
            value: write.value.clone(),
            lease: 0,
        };
        current.insert(write.key.clone(), kv.clone());
        expected.insert(revision, (kv, previous));
    }

    // A prefix watch with previous pairs, and an exact watch of one key,
    // both from the middle, on a follower.
    let mut conn = WatchConn::open(channel(&cluster, follower).await?).await?;
    conn.create_and_confirm(pb::WatchCreateRequest {
        prev_kv: true,
        ..create(1, "mid/", true, start)
    })
    .await?;
    // Watch 1's events may already flow; watch 2's creation comes among
    // them, before any event of its own.
    conn.create(create(2, "mid/07", false, start))?;
    let mut exact_created = false;
    let exact_expected: Vec<i64> = writes
        .range(start..)
        .filter(|(_, w)| w.key == b"mid/07")
        .map(|(r, _)| *r)
        .collect();
    ensure!(!exact_expected.is_empty());

    let mut prefix_seen = Vec::new();
    let mut exact_seen = Vec::new();
    while prefix_seen.last() != Some(&last) || exact_seen.last() != exact_expected.last() {
        let response = conn.next().await?;
        let revision = revision_of(&response);
        ensure!(
            !response.canceled && response.code == 0,
            "watch canceled: {response:?}"
        );
        if response.created {
            ensure!(
                response.watch_id == 2 && !exact_created,
                "unexpected creation: {response:?}"
            );
            exact_created = true;
            continue;
        }
        ensure!(
            response.events.len() == 1,
            "revision {revision}: {response:?}"
        );
        let event = &response.events[0];
        let (kv, previous) = expected
            .get(&revision)
            .with_context(|| format!("an event at revision {revision}, which nobody wrote"))?;
        ensure!(event.r#type == pb::event::EventType::Put as i32);
        ensure!(
            event.kv.as_ref() == Some(kv),
            "revision {revision}: got {:?}, wrote {kv:?}",
            event.kv
        );
        match response.watch_id {
            1 => {
                ensure!(
                    event.prev_kv == *previous,
                    "revision {revision}: previous pair {:?}, expected {previous:?}",
                    event.prev_kv
                );
                prefix_seen.push(revision);
            }
            2 => {
                ensure!(exact_created, "an event of watch 2 before its creation");
                ensure!(event.prev_kv.is_none(), "prev_kv was not asked for");
                exact_seen.push(revision);
            }
            other => bail!("a response for watch {other}: {response:?}"),
        }
    }
    let prefix_expected: Vec<i64> = (start..=last).collect();
    assert_eq!(prefix_seen, prefix_expected, "the prefix watch's revisions");
    assert_eq!(exact_seen, exact_expected, "the exact watch's revisions");

    // Nothing more is pending: the next put under the prefix is the prefix
    // watch's very next response, and a progress answer past it finds the
    // exact watch with nothing more to say.
    let sentinel = put_revision(&client.put("mid/zz", "end").await?)?;
    assert_eq!(sentinel, last + 1);
    // Its event is the very next response; once it arrived the member has
    // applied the sentinel, so one progress answer must cover it and find
    // nothing else pending.
    let response = conn.next().await?;
    ensure!(
        response.watch_id == 1 && revision_of(&response) == sentinel && !response.progress,
        "expected only the sentinel at {sentinel}, got {response:?}"
    );
    conn.progress()?;
    let response = conn.next().await?;
    ensure!(
        response.watch_id == -1 && response.progress && revision_of(&response) >= sentinel,
        "expected a progress answer covering {sentinel}, got {response:?}"
    );
    eprintln!(
        "wrote revisions {first}..={last}; watched from {start}: {} + {} events",
        prefix_seen.len(),
        exact_seen.len()
    );
    Ok(())
}

// ------------------------------------------------------------------ b

/// What the background writer of test b acknowledged, and what failed
/// (outcome unknown).
#[derive(Debug, Default)]
struct Written {
    acked: BTreeMap<i64, Write>,
    unknown: Vec<Write>,
}

#[tokio::test]
async fn the_client_watch_carries_on_across_a_crash_of_its_member_without_gap_or_repeat()
-> anyhow::Result<()> {
    watch_carries_on_through(Fault::Kill).await
}

/// An isolated member applies nothing new; after an election timeout
/// without a leader it ends its watch streams, and the client's watch moves
/// on to a member that can serve it.
#[tokio::test]
async fn the_client_watch_leaves_a_member_cut_off_from_the_others_without_gap_or_repeat()
-> anyhow::Result<()> {
    watch_carries_on_through(Fault::Isolate).await
}

/// What happens to the member serving the watch.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// SIGKILL.
    Kill,
    /// Its peer links are cut; its client port stays reachable.
    Isolate,
}

async fn watch_carries_on_through(fault: Fault) -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    // The watch is served by a follower, which is killed; the writer writes
    // through the leader, which stays, so every write gets a clear answer.
    let victim = cluster
        .ids()
        .find(|&id| id != leader)
        .context("a follower")?;
    let watcher = ClientConfig::new(cluster.endpoints_from(victim)).build()?;
    let mut batches = watcher.watch("w/").prefix().stream().await?;
    cluster
        .wait_for_watchers(victim, 1, Duration::from_secs(10))
        .await
        .context("the watch is not served by the member about to be killed")?;

    let received: Arc<Mutex<Vec<WatchBatch>>> = Arc::default();
    let reader = {
        let received = received.clone();
        tokio::spawn(async move {
            while let Some(batch) = batches.next().await {
                received.lock().unwrap().push(batch?);
            }
            Err::<(), _>(anyhow::anyhow!("the watch stream ended"))
        })
    };
    let written: Arc<Mutex<Written>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let client = cluster.client_of(leader);
        let written = written.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let write = Write {
                    key: format!("w/{n:06}").into_bytes(),
                    value: format!("{n}").into_bytes(),
                };
                match client.put(write.key.clone(), write.value.clone()).await {
                    Ok(response) => {
                        let revision = put_revision(&response)?;
                        written.lock().unwrap().acked.insert(revision, write);
                    }
                    Err(err) => {
                        eprintln!("write {n} failed (outcome unknown): {err}");
                        written.lock().unwrap().unknown.push(write);
                    }
                }
                n += 1;
            }
            anyhow::Ok(())
        })
    };
    let count = || received.lock().unwrap().len();
    let progress = |at_least: usize, what: &'static str| {
        let count = &count;
        let reader = &reader;
        async move {
            wait_until(Duration::from_secs(30), what, || async move {
                count() >= at_least || reader.is_finished()
            })
            .await
        }
    };
    progress(200, "200 batches before the fault").await?;
    match fault {
        Fault::Kill => cluster.kill(victim).await?,
        Fault::Isolate => cluster.isolate(victim),
    }
    let at_kill = count();
    progress(at_kill + 300, "300 batches after the fault").await?;
    stop.store(true, Ordering::Relaxed);
    writer.await??;
    let written = std::mem::take(&mut *written.lock().unwrap());
    let last_acked = *written.acked.keys().next_back().context("no writes")?;
    wait_until(
        Duration::from_secs(30),
        "the watch to reach the last acknowledged write",
        || async {
            received
                .lock()
                .unwrap()
                .last()
                .is_some_and(|b| b.revision >= last_acked)
                || reader.is_finished()
        },
    )
    .await?;
    if reader.is_finished() {
        bail!("the watch ended early: {:?}", reader.await?);
    }
    reader.abort();

    let received = std::mem::take(&mut *received.lock().unwrap());
    let first_acked = *written.acked.keys().next().context("no writes")?;
    // The watch started before the first write; revisions before the first
    // acknowledged one can only be writes whose answer was lost.
    let mut expected_revision = received.first().context("nothing watched")?.revision;
    ensure!(
        expected_revision <= first_acked,
        "the watch began at {expected_revision}, after the first acknowledged write at {first_acked}"
    );
    let mut unknown_seen = 0;
    for batch in received.iter().filter(|b| b.revision <= last_acked) {
        ensure!(
            batch.revision == expected_revision,
            "after revision {} came {} (a gap or a repeat)",
            expected_revision - 1,
            batch.revision
        );
        expected_revision += 1;
        ensure!(batch.events.len() == 1, "{batch:?}");
        let event = &batch.events[0];
        ensure!(event.kind == EventKind::Put);
        let got = Write {
            key: event.kv.key.clone(),
            value: event.kv.value.clone(),
        };
        match written.acked.get(&batch.revision) {
            Some(write) => ensure!(
                *write == got,
                "revision {}: watched {got:?}, acknowledged {write:?}",
                batch.revision
            ),
            // Only a write whose answer was lost may show up unacknowledged.
            None => {
                ensure!(
                    written.unknown.contains(&got),
                    "revision {}: watched {got:?}, which no writer wrote",
                    batch.revision
                );
                unknown_seen += 1;
            }
        }
    }
    ensure!(
        expected_revision == last_acked + 1,
        "the watch stopped at {}",
        expected_revision - 1
    );
    eprintln!(
        "watched revisions {first_acked}..={last_acked} contiguously ({} acknowledged, \
         {unknown_seen} of {} unknown); member {victim}: {fault:?} after {at_kill} batches",
        written.acked.len(),
        written.unknown.len()
    );
    Ok(())
}

// ------------------------------------------------------------------ c

/// Reads watch `watch_id` on `conn` until it reached `last`, checking each
/// revision against `writes` (every revision from `start` on, in order).
async fn expect_replay(
    conn: &mut WatchConn,
    watch_id: i64,
    writes: &BTreeMap<i64, Write>,
    start: i64,
    last: i64,
) -> anyhow::Result<()> {
    let mut next = start;
    while next <= last {
        let response = conn.next().await?;
        ensure!(
            response.watch_id == watch_id && !response.canceled && response.events.len() == 1,
            "expected revision {next} of watch {watch_id}, got {response:?}"
        );
        let revision = revision_of(&response);
        ensure!(revision == next, "expected revision {next}, got {revision}");
        let kv = response.events[0].kv.as_ref().context("event without kv")?;
        let write = writes.get(&revision).context("unwritten revision")?;
        ensure!(
            kv.key == write.key && kv.value == write.value && kv.mod_revision == revision,
            "revision {revision}: watched {kv:?}, wrote {write:?}"
        );
        next += 1;
    }
    Ok(())
}

async fn write_many(
    client: &Client,
    writes: &mut BTreeMap<i64, Write>,
    from: usize,
    count: usize,
) -> anyhow::Result<()> {
    for n in from..from + count {
        let write = Write {
            key: format!("hist/{:03}", n % 101).into_bytes(),
            value: format!("v{n}").into_bytes(),
        };
        let response = client.put(write.key.clone(), write.value.clone()).await?;
        writes.insert(put_revision(&response)?, write);
    }
    Ok(())
}

#[tokio::test]
async fn a_restarted_member_serves_watches_from_the_history_it_rebuilt() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    let member = cluster
        .ids()
        .find(|&id| id != leader)
        .context("a follower")?;
    let client = cluster.client_of(leader);
    let mut writes = BTreeMap::new();
    write_many(&client, &mut writes, 0, 200).await?;

    // A crash, and more writes while the member is down: on restart it
    // replays what it had and learns the rest from the leader.
    cluster.kill(member).await?;
    write_many(&client, &mut writes, 200, 100).await?;
    cluster.restart(member)?;
    wait_for(
        Duration::from_secs(20),
        "the restarted member to answer",
        || cluster.status(member),
    )
    .await?;
    let (first, last) = contiguous(&writes)?;
    // At once, before it need have caught up: the watch follows the
    // member's apply loop.
    let mut conn = WatchConn::open(channel(&cluster, member).await?).await?;
    conn.create_and_confirm(create(1, "hist/", true, first))
        .await?;
    expect_replay(&mut conn, 1, &writes, first, last).await?;
    conn.cancel(1)?;
    let canceled = conn.next().await?;
    ensure!(
        canceled.canceled && canceled.watch_id == 1 && canceled.code == 0,
        "{canceled:?}"
    );

    // A clean stop (SIGTERM) with a watch open: the member tells the watch
    // where to resume (the revision after the last one it had to send),
    // ends the stream, and exits cleanly.
    conn.create_and_confirm(create(2, "hist/", true, 0)).await?;
    let status = cluster.stop(member).await?;
    ensure!(status.success(), "member {member} exited with {status}");
    // A level watch may first be told how far it got (a progress response
    // for the last revision), then comes the cancel.
    let response = loop {
        let response =
            match tokio::time::timeout(Duration::from_secs(5), conn.responses.message()).await {
                Err(_) => bail!("the open watch did not end when its member exited"),
                Ok(Ok(Some(response))) => response,
                Ok(Ok(None)) => bail!("on SIGTERM the open watch ended without a cancel"),
                Ok(Err(status)) => {
                    bail!("on SIGTERM the open watch broke without a cancel: {status}")
                }
            };
        if response.progress && response.watch_id == 2 {
            ensure!(
                revision_of(&response) == last,
                "a farewell progress for {}, expected {last}",
                revision_of(&response)
            );
            continue;
        }
        break response;
    };
    ensure!(
        response.canceled
            && response.watch_id == 2
            && response.code == tonic::Code::Unavailable as i32
            && response.resume_revision == last + 1,
        "on shutdown, expected an UNAVAILABLE cancel naming revision {} to resume from: {response:?}",
        last + 1
    );
    write_many(&client, &mut writes, 300, 50).await?;
    cluster.restart(member)?;
    wait_for(
        Duration::from_secs(20),
        "the restarted member to answer",
        || cluster.status(member),
    )
    .await?;
    let (_, last) = contiguous(&writes)?;
    let middle = first + 123;
    let mut conn = WatchConn::open(channel(&cluster, member).await?).await?;
    conn.create_and_confirm(create(7, "hist/", true, middle))
        .await?;
    expect_replay(&mut conn, 7, &writes, middle, last).await?;
    Ok(())
}

// ------------------------------------------------------------------ d

/// Reading streams of test d, and the watches per stream.
const STREAMS: usize = 10;
const WATCHES_PER_STREAM: i64 = 1000;
/// The key every watcher of test d watches (half of them exactly, half by
/// the prefix `fan/`).
const FAN_KEY: &str = "fan/all";

fn fan_create(watch_id: i64, start_revision: i64) -> pb::WatchCreateRequest {
    match watch_id % 2 {
        0 => create(watch_id, FAN_KEY, false, start_revision),
        _ => create(watch_id, "fan/", true, start_revision),
    }
}

/// What one reading stream received, per watch id.
#[derive(Debug, Default)]
struct FanState {
    revisions: BTreeMap<i64, Vec<i64>>,
    /// Responses that were not a plain single event for a known watch.
    odd: Vec<String>,
}

/// Opens a stream on `channel` with watches `1..=WATCHES_PER_STREAM`,
/// waits until every one is created, and returns it.
async fn open_fan_stream(channel: Channel) -> anyhow::Result<(WatchConn, i64)> {
    let mut conn = WatchConn::open(channel).await?;
    for id in 1..=WATCHES_PER_STREAM {
        conn.create(fan_create(id, 0))?;
    }
    let mut created = BTreeSet::new();
    let mut revision = 0;
    while created.len() < WATCHES_PER_STREAM as usize {
        let response = conn.next().await?;
        ensure!(response.created && !response.canceled, "{response:?}");
        ensure!(created.insert(response.watch_id), "{response:?}");
        revision = revision.max(revision_of(&response));
    }
    Ok((conn, revision))
}

/// Reads a fan stream for ever, recording into `state`; `events` counts
/// every event response.
fn spawn_fan_reader(
    mut conn: WatchConn,
    state: Arc<Mutex<FanState>>,
    events: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<anyhow::Error> {
    tokio::spawn(async move {
        loop {
            let response = match conn.responses.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return anyhow::anyhow!("a fan stream ended"),
                Err(status) => return anyhow::anyhow!("a fan stream failed: {status}"),
            };
            let revision = revision_of(&response);
            let mut state = state.lock().unwrap();
            let plain = !response.canceled
                && response.code == 0
                && response.events.len() == 1
                && response.events[0]
                    .kv
                    .as_ref()
                    .is_some_and(|kv| kv.key == FAN_KEY.as_bytes() && kv.mod_revision == revision);
            match plain {
                true => state
                    .revisions
                    .entry(response.watch_id)
                    .or_default()
                    .push(revision),
                false => state.odd.push(format!("{response:?}")),
            }
            drop(state);
            events.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// Puts `FAN_KEY` once and waits until every reading stream has received
/// `expected_events` event responses in all. Returns the revision, the
/// acknowledgement latency and the time until everyone had it.
async fn fan_round(
    client: &Client,
    n: usize,
    counters: &[Arc<AtomicU64>],
    expected_events: u64,
) -> anyhow::Result<(i64, Duration, Duration)> {
    let started = Instant::now();
    let revision = put_revision(&client.put(FAN_KEY, format!("round-{n}")).await?)?;
    let acked = started.elapsed();
    wait_until(
        Duration::from_secs(30),
        "every watcher to get the put",
        || async {
            counters
                .iter()
                .all(|c| c.load(Ordering::Relaxed) >= expected_events)
        },
    )
    .await?;
    Ok((revision, acked, started.elapsed()))
}

/// Puts `count` times to a key no watcher selects, as fast as they are
/// acknowledged, and returns the rate.
async fn unwatched_burst(client: &Client, count: u32) -> anyhow::Result<f64> {
    let started = Instant::now();
    for n in 0..count {
        client.put("unwatched", format!("{n}")).await?;
    }
    Ok(f64::from(count) / started.elapsed().as_secs_f64())
}

fn describe_rounds(what: &str, rounds: &[(i64, Duration, Duration)]) -> String {
    let count = rounds.len() as u32;
    let acked: Duration = rounds.iter().map(|r| r.1).sum();
    let delivered: Duration = rounds.iter().map(|r| r.2).sum();
    format!(
        "{what}: {count} puts; mean ack {:?}, mean delivery to all 10,000 watchers {:?}; \
         {:.1} puts/s acknowledged, {:.1} rounds/s delivered",
        acked / count.max(1),
        delivered / count.max(1),
        f64::from(count) / acked.as_secs_f64(),
        f64::from(count) / delivered.as_secs_f64(),
    )
}

#[tokio::test]
async fn ten_thousand_watchers_get_every_put_and_a_stalled_stream_is_canceled_not_waited_for()
-> anyhow::Result<()> {
    let cluster = Cluster::start(1).await?;
    cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    let client = cluster.client_of(1);

    // 10 streams of 1,000 watches, each on a connection of its own.
    let mut states = Vec::new();
    let mut counters = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..STREAMS {
        let (conn, _) = open_fan_stream(channel(&cluster, 1).await?).await?;
        let state: Arc<Mutex<FanState>> = Arc::default();
        let counter = Arc::new(AtomicU64::new(0));
        readers.push(spawn_fan_reader(conn, state.clone(), counter.clone()));
        states.push(state);
        counters.push(counter);
    }
    // The hub counts its watchers just after confirming the last one.
    let expected_watchers = STREAMS * WATCHES_PER_STREAM as usize;
    let watchers = cluster
        .wait_for_watchers(1, expected_watchers, Duration::from_secs(10))
        .await?;
    assert_eq!(watchers, expected_watchers);

    // Puts in lock step: each put reaches all 10,000 watchers before the
    // next. One put is 1,000 responses per stream; unpaced puts would pile
    // up more than this test process decodes, and a member rightly cancels
    // watchers that fall 65,536 responses behind over their stream.
    let per_round = WATCHES_PER_STREAM as u64;
    let mut rounds = Vec::new();
    let mut puts = Vec::new();
    for n in 0..10 {
        let round = fan_round(&client, n, &counters, per_round * (puts.len() as u64 + 1)).await?;
        puts.push(round.0);
        rounds.push(round);
    }
    let without = describe_rounds("without a stalled stream", &rounds);
    let burst_without = unwatched_burst(&client, 200).await?;

    // An 11th stream that is never read after its watches are created, on
    // a connection with small HTTP/2 windows so little piles up in transit:
    // its backlog grows by 1,000 responses a put until the member cancels
    // its watches.
    let stalled_channel = Endpoint::from_shared(format!("http://{}", cluster.endpoint(1)))?
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await?;
    let (mut stalled, stalled_created) = open_fan_stream(stalled_channel).await?;
    let burst_with = unwatched_burst(&client, 200).await?;
    let canceled_before = cluster.metric(1, "fenced_watch_canceled_total").await?;
    let stall_from = puts.len();
    let mut rounds = Vec::new();
    let stalled_canceled = loop {
        let round = fan_round(
            &client,
            puts.len(),
            &counters,
            per_round * (puts.len() as u64 + 1),
        )
        .await?;
        puts.push(round.0);
        rounds.push(round);
        let canceled = cluster.metric(1, "fenced_watch_canceled_total").await? - canceled_before;
        if canceled >= WATCHES_PER_STREAM as f64 {
            break canceled;
        }
        ensure!(
            rounds.len() < 200,
            "200 puts and the stalled stream's watches are still not all canceled ({canceled})"
        );
    };
    let rounds_to_cancel = rounds.len();
    // The others go on after the cancel too.
    for _ in 0..5 {
        let round = fan_round(
            &client,
            puts.len(),
            &counters,
            per_round * (puts.len() as u64 + 1),
        )
        .await?;
        puts.push(round.0);
        rounds.push(round);
    }
    let with = describe_rounds("with a stalled stream", &rounds);
    assert_eq!(
        stalled_canceled, WATCHES_PER_STREAM as f64,
        "only the stalled stream's watches are canceled"
    );

    // Every one of the 10,000 got every put, once, in order.
    for (stream, state) in states.iter().enumerate() {
        let state = state.lock().unwrap();
        ensure!(
            state.odd.is_empty(),
            "stream {stream}: {} unexpected responses, first {}",
            state.odd.len(),
            state.odd[0]
        );
        ensure!(state.revisions.len() == WATCHES_PER_STREAM as usize);
        for (watch_id, revisions) in &state.revisions {
            ensure!(
                *revisions == puts,
                "stream {stream} watch {watch_id} got {revisions:?}, puts were {puts:?}"
            );
        }
    }
    for reader in &readers {
        ensure!(!reader.is_finished(), "a fan reader stopped");
    }

    // Now read the stalled stream: each watch got a prefix of the puts since
    // it was created, then a RESOURCE_EXHAUSTED cancel naming where to
    // resume.
    let stalled_puts: Vec<i64> = puts[stall_from..].to_vec();
    ensure!(stalled_puts[0] > stalled_created);
    let mut got: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    let mut resume: BTreeMap<i64, i64> = BTreeMap::new();
    while resume.len() < WATCHES_PER_STREAM as usize {
        let response = stalled.next().await?;
        let watch_id = response.watch_id;
        ensure!(
            !resume.contains_key(&watch_id),
            "watch {watch_id} got a response after its cancel: {response:?}"
        );
        if response.canceled {
            ensure!(
                response.code == Code::ResourceExhausted as i32,
                "watch {watch_id} canceled with code {}: {response:?}",
                response.code
            );
            ensure!(!response.cancel_reason.is_empty(), "{response:?}");
            let received = got.get(&watch_id).map_or(&[][..], Vec::as_slice);
            let want = received.last().map_or(stalled_puts[0], |r| r + 1);
            ensure!(
                response.resume_revision == want,
                "watch {watch_id} received {received:?} and was told to resume from {}",
                response.resume_revision
            );
            resume.insert(watch_id, response.resume_revision);
        } else {
            ensure!(response.events.len() == 1, "{response:?}");
            got.entry(watch_id)
                .or_default()
                .push(revision_of(&response));
        }
    }
    for (watch_id, revisions) in &got {
        ensure!(
            stalled_puts.starts_with(revisions),
            "stalled watch {watch_id} got {revisions:?} of {stalled_puts:?}"
        );
    }
    let delivered_before_cancel: usize = got.values().map(Vec::len).sum();

    // Resuming each from its revision yields exactly the rest.
    for (&watch_id, &from) in &resume {
        stalled.create(fan_create(watch_id + WATCHES_PER_STREAM, from))?;
    }
    let last = *puts.last().context("no puts")?;
    let mut done = BTreeSet::new();
    while done.len() < WATCHES_PER_STREAM as usize {
        let response = stalled.next().await?;
        if response.created {
            continue;
        }
        let watch_id = response.watch_id - WATCHES_PER_STREAM;
        ensure!(
            !response.canceled && response.events.len() == 1 && resume.contains_key(&watch_id),
            "{response:?}"
        );
        let revisions = got.entry(watch_id).or_default();
        revisions.push(revision_of(&response));
        if revision_of(&response) == last {
            done.insert(watch_id);
        }
    }
    for (watch_id, revisions) in &got {
        ensure!(
            *revisions == stalled_puts,
            "stalled watch {watch_id}, resumed, got {revisions:?} of {stalled_puts:?}"
        );
    }
    eprintln!("10,000 watchers over {STREAMS} streams on one member");
    eprintln!("{without}");
    eprintln!("{with}");
    eprintln!(
        "200 unpaced puts of an unwatched key: {burst_without:.0} puts/s without the stalled \
         stream, {burst_with:.0} puts/s with it"
    );
    eprintln!(
        "the stalled stream's {WATCHES_PER_STREAM} watches were canceled after {rounds_to_cancel} \
         puts, having been sent {delivered_before_cancel} events; all resumed"
    );
    Ok(())
}

// ------------------------------------------------------------------ e

#[tokio::test]
async fn bad_watch_requests_are_refused_in_band_and_the_stream_keeps_serving() -> anyhow::Result<()>
{
    const HISTORY: i64 = 50;
    let cluster =
        Cluster::start_with(ClusterConfig::new(1).args(["--watch-history", "50"])).await?;
    cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    let client = cluster.client_of(1);
    let mut conn = WatchConn::open(channel(&cluster, 1).await?).await?;

    async fn refused(
        conn: &mut WatchConn,
        watch_id: i64,
        code: Code,
        words: &[&str],
    ) -> anyhow::Result<pb::WatchResponse> {
        let response = conn.next().await?;
        ensure!(
            response.canceled
                && !response.created
                && response.code == code as i32
                && response.watch_id == watch_id,
            "expected watch {watch_id} refused with {code:?}, got {response:?}"
        );
        for word in words {
            ensure!(
                response.cancel_reason.contains(word),
                "{code:?} reason {:?} lacks {word:?}",
                response.cancel_reason
            );
        }
        Ok(response)
    }

    // An exact watch needs a key.
    conn.create(create(0, "", false, 0))?;
    refused(&mut conn, 0, Code::InvalidArgument, &["empty"]).await?;
    // Cancel of an id that does not exist.
    conn.cancel(77)?;
    refused(&mut conn, 77, Code::NotFound, &["77"]).await?;
    // An id already in use.
    conn.create_and_confirm(create(5, "k", false, 0)).await?;
    conn.create(create(5, "other", false, 0))?;
    refused(&mut conn, 5, Code::AlreadyExists, &["5", "in use"]).await?;
    // More malformed creates, and a request with nothing in it.
    conn.create(create(-3, "k", false, 0))?;
    refused(&mut conn, -3, Code::InvalidArgument, &["negative"]).await?;
    conn.create(create(6, "k", false, -1))?;
    refused(&mut conn, 6, Code::InvalidArgument, &["start_revision"]).await?;
    conn.create(pb::WatchCreateRequest {
        no_put: true,
        no_delete: true,
        ..create(8, "k", false, 0)
    })?;
    refused(
        &mut conn,
        8,
        Code::InvalidArgument,
        &["no_put", "no_delete"],
    )
    .await?;
    conn.create(create(9, &"x".repeat(4097), false, 0))?;
    refused(&mut conn, 9, Code::InvalidArgument, &["4097", "4096"]).await?;
    conn.requests.send(pb::WatchRequest {
        request_union: None,
    })?;
    refused(&mut conn, 0, Code::InvalidArgument, &[]).await?;

    // Below the history window: OUT_OF_RANGE naming the oldest revision
    // still held, which itself can be watched from.
    let mut last = 0;
    for n in 0..(HISTORY + 30) {
        last = put_revision(&client.put(format!("h/{n}"), "v").await?)?;
    }
    let oldest = last - HISTORY + 1;
    conn.create(create(10, "h/", true, 1))?;
    let compacted = refused(&mut conn, 10, Code::OutOfRange, &["history window"]).await?;
    assert_eq!(compacted.compact_revision, oldest, "{compacted:?}");
    conn.create(create(11, "h/", true, oldest - 1))?;
    let compacted = refused(&mut conn, 11, Code::OutOfRange, &[]).await?;
    assert_eq!(compacted.compact_revision, oldest);
    conn.create_and_confirm(create(12, "h/", true, oldest))
        .await?;
    for revision in oldest..=last {
        let response = conn.next().await?;
        ensure!(
            response.watch_id == 12 && revision_of(&response) == revision,
            "expected revision {revision} from the window, got {response:?}"
        );
    }

    // After all that, the stream still serves: watch 5 (created before the
    // refusals) and a new one both see the next put to `k`, once.
    conn.create_and_confirm(create(13, "k", false, 0)).await?;
    let revision = put_revision(&client.put("k", "after").await?)?;
    let mut seen = BTreeSet::new();
    while seen.len() < 2 {
        let response = conn.next().await?;
        ensure!(
            revision_of(&response) == revision
                && response.events.len() == 1
                && seen.insert(response.watch_id),
            "{response:?}"
        );
    }
    assert_eq!(seen, BTreeSet::from([5, 13]));
    conn.cancel(5)?;
    let canceled = conn.next().await?;
    ensure!(
        canceled.canceled && canceled.watch_id == 5 && canceled.code == 0,
        "{canceled:?}"
    );
    // Canceled means canceled: the next put reaches watch 13 only, and a
    // second cancel of 5 is NOT_FOUND.
    let revision = put_revision(&client.put("k", "again").await?)?;
    let response = conn.next().await?;
    ensure!(
        response.watch_id == 13 && revision_of(&response) == revision,
        "{response:?}"
    );
    conn.cancel(5)?;
    refused(&mut conn, 5, Code::NotFound, &[]).await?;
    Ok(())
}

//! The hub on its own: history window, live and past starts, filters,
//! slow-stream cancel, progress. Real fan-out thread, no server.

use std::time::Duration;

use super::*;
use crate::state::KeyValue;

fn put(key: &str, revision: i64) -> Event {
    Event {
        kind: EventKind::Put,
        kv: KeyValue {
            key: key.as_bytes().to_vec(),
            create_revision: revision,
            mod_revision: revision,
            version: 1,
            value: format!("v{revision}").into_bytes(),
            lease: 0,
        },
        prev_kv: None,
    }
}

fn delete(key: &str, revision: i64) -> Event {
    Event {
        kind: EventKind::Delete,
        ..put(key, revision)
    }
}

fn spec(key: &str, prefix: bool) -> WatchSpec {
    WatchSpec {
        key: key.as_bytes().to_vec(),
        prefix,
        no_put: false,
        no_delete: false,
        progress_notify: false,
    }
}

/// Appends revisions `from..=to`, one put of `key` each.
fn write(hub: &WatchHub, key: &str, from: i64, to: i64) {
    for revision in from..=to {
        hub.append(revision, vec![put(key, revision)]);
    }
    hub.applied();
}

/// A stream and the backlogs of its watches, taken as a reader takes them.
struct Reader {
    stream: HubStream,
    backlogs: std::collections::HashMap<i64, Backlog>,
}

impl Reader {
    fn open(hub: &WatchHub) -> Self {
        Self {
            stream: hub.open(),
            backlogs: Default::default(),
        }
    }

    fn create(&mut self, watch_id: i64, spec: WatchSpec, start_revision: i64) {
        let (_, backlog) = self.stream.create(watch_id, spec, start_revision);
        self.backlogs.insert(watch_id, backlog);
    }
}

async fn next(reader: &mut Reader) -> Outgoing {
    let out = tokio::time::timeout(Duration::from_secs(10), reader.stream.queue.recv())
        .await
        .expect("the hub answers within 10 s")
        .expect("the hub is running");
    if let Outgoing::Events { watch, .. } = &out {
        reader.stream.taken(reader.backlogs.get(&watch.id));
    }
    out
}

/// Receives until `watch_id` got revision `last`; the revisions it got.
async fn revisions_until(stream: &mut Reader, watch_id: i64, last: i64) -> Vec<i64> {
    let mut seen = Vec::new();
    while seen.last() != Some(&last) {
        if let Outgoing::Events {
            watch, revision, ..
        } = next(stream).await
            && watch.id == watch_id
        {
            seen.push(revision);
        }
    }
    seen
}

#[test]
fn history_keeps_the_last_revisions() {
    let mut history = History::new(3, usize::MAX);
    assert_eq!((history.oldest(), history.head()), (1, 0));
    for revision in 1..=5 {
        history.append(revision, vec![put("k", revision)]);
    }
    assert_eq!((history.oldest(), history.head()), (3, 5));
    assert!(history.get(2).is_none());
    assert_eq!(history.get(4).map(|e| e[0].kv.mod_revision), Some(4));
    // Old or empty revisions are ignored.
    history.append(5, vec![put("k", 5)]);
    history.append(6, vec![]);
    assert_eq!(history.head(), 5);
}

#[test]
fn history_keeps_within_its_size_but_always_the_newest() {
    // Each event costs its overhead plus "k" and "vN".
    // (Values "v10".."v99" all have the same length.)
    let one = event_bytes_of(&put("k", 10));
    let mut history = History::new(100, 3 * one);
    for revision in 10..=20 {
        history.append(revision, vec![put("k", revision)]);
    }
    assert_eq!((history.oldest(), history.head()), (18, 20));
    assert_eq!(history.bytes(), 3 * one);
    let mut tiny = History::new(100, 1);
    tiny.append(1, vec![put("k", 1)]);
    tiny.append(2, vec![put("k", 2)]);
    assert_eq!((tiny.oldest(), tiny.head()), (2, 2));
}

fn event_bytes_of(event: &Event) -> usize {
    let mut probe = History::new(1, usize::MAX);
    probe.append(1, vec![event.clone()]);
    probe.bytes()
}

#[tokio::test]
async fn a_watch_from_now_gets_new_revisions_only() {
    let hub = WatchHub::start(100, usize::MAX, Duration::from_secs(60)).expect("hub");
    write(&hub, "k", 1, 3);
    let mut stream = Reader::open(&hub);
    // Wait until the hub saw revisions 1-3 before creating the watch.
    while hub.window().1 < 3 {
        tokio::task::yield_now().await;
    }
    stream.create(7, spec("k", false), 0);
    let Outgoing::Created { watch, revision } = next(&mut stream).await else {
        panic!("created first");
    };
    assert_eq!((watch.id, revision), (7, 3));
    write(&hub, "k", 4, 5);
    assert_eq!(revisions_until(&mut stream, 7, 5).await, vec![4, 5]);
}

#[tokio::test]
async fn a_watch_from_the_past_is_caught_up_then_follows() {
    let hub = WatchHub::start(1000, usize::MAX, Duration::from_secs(60)).expect("hub");
    write(&hub, "k", 1, 500);
    let mut stream = Reader::open(&hub);
    stream.create(1, spec("k", false), 100);
    write(&hub, "k", 501, 600);
    let seen = revisions_until(&mut stream, 1, 600).await;
    assert_eq!(seen, (100..=600).collect::<Vec<_>>());
}

#[tokio::test]
async fn prefix_and_filters_select_events_within_a_revision() {
    let hub = WatchHub::start(100, usize::MAX, Duration::from_secs(60)).expect("hub");
    let mut stream = Reader::open(&hub);
    stream.create(1, spec("a/", true), 1);
    stream.create(
        2,
        WatchSpec {
            no_put: true,
            ..spec("a/", true)
        },
        1,
    );
    hub.append(1, vec![put("a/1", 1), put("b", 1), delete("a/2", 1)]);
    hub.append(2, vec![put("b", 2)]);
    hub.append(3, vec![put("a/3", 3)]);
    hub.applied();
    let mut got = Vec::new();
    while got.len() < 3 {
        if let Outgoing::Events {
            watch,
            revision,
            events,
            pick,
        } = next(&mut stream).await
        {
            let watch_id = watch.id;
            let keys: Vec<String> = match pick {
                Some(pick) => pick
                    .iter()
                    .map(|i| String::from_utf8_lossy(&events[*i as usize].kv.key).into_owned())
                    .collect(),
                None => events
                    .iter()
                    .map(|e| String::from_utf8_lossy(&e.kv.key).into_owned())
                    .collect(),
            };
            got.push((watch_id, revision, keys));
        }
    }
    got.sort();
    assert_eq!(
        got,
        vec![
            (1, 1, vec!["a/1".to_string(), "a/2".to_string()]),
            (1, 3, vec!["a/3".to_string()]),
            (2, 1, vec!["a/2".to_string()]),
        ]
    );
}

#[tokio::test]
async fn a_start_below_the_window_is_compacted() {
    let hub = WatchHub::start(10, usize::MAX, Duration::from_secs(60)).expect("hub");
    write(&hub, "k", 1, 50);
    let mut stream = Reader::open(&hub);
    stream.create(3, spec("k", false), 5);
    let control = tokio::time::timeout(Duration::from_secs(10), stream.stream.control.recv())
        .await
        .expect("answered")
        .expect("open");
    assert_eq!(control.watch.id, 3);
    assert_eq!(control.ended, Ended::Compacted { oldest: 41 });
}

#[tokio::test]
async fn a_stream_that_does_not_read_is_canceled_and_others_go_on() {
    let hub = WatchHub::start(10_000, usize::MAX, Duration::from_secs(60)).expect("hub");
    let mut stalled = Reader::open(&hub);
    let mut reader = Reader::open(&hub);
    stalled.create(1, spec("k", false), 0);
    reader.create(1, spec("k", false), 0);
    assert!(matches!(next(&mut reader).await, Outgoing::Created { .. }));
    let total = WATCH_BACKLOG as i64 + 200;
    // The reader keeps up (it reads each chunk before the next is written);
    // the stalled stream reads nothing.
    let mut seen = Vec::new();
    for chunk in (1..=total).step_by(100) {
        let last = (chunk + 99).min(total);
        write(&hub, "k", chunk, last);
        seen.extend(revisions_until(&mut reader, 1, last).await);
    }
    assert_eq!(
        seen,
        (1..=total).collect::<Vec<_>>(),
        "the reader misses nothing"
    );
    let control = tokio::time::timeout(Duration::from_secs(10), stalled.stream.control.recv())
        .await
        .expect("the stalled stream is told")
        .expect("open");
    assert_eq!((control.watch.id, control.ended), (1, Ended::TooSlow));
    // What was queued before the cancel is still there, in order.
    let mut queued = Vec::new();
    while let Ok(out) = stalled.stream.queue.try_recv() {
        if let Outgoing::Events { revision, .. } = out {
            queued.push(revision);
        }
    }
    assert_eq!(queued, (1..queued.len() as i64 + 1).collect::<Vec<_>>());
    assert!(queued.len() < total as usize);
}

#[tokio::test]
async fn progress_waits_until_the_stream_is_level() {
    let hub = WatchHub::start(1000, usize::MAX, Duration::from_secs(60)).expect("hub");
    write(&hub, "k", 1, 20);
    let mut stream = Reader::open(&hub);
    stream.create(1, spec("k", false), 1);
    stream.stream.progress();
    let mut last_event = 0;
    loop {
        match next(&mut stream).await {
            Outgoing::Events { revision, .. } => last_event = revision,
            Outgoing::Progress { watch, revision } => {
                assert_eq!(watch, None);
                assert_eq!(revision, 20);
                assert_eq!(last_event, 20, "progress comes after every event up to it");
                break;
            }
            Outgoing::Created { .. } => {}
        }
    }
}

#[tokio::test]
async fn many_watches_on_one_stream_are_not_too_slow_for_a_burst() {
    let hub = WatchHub::start(1000, usize::MAX, Duration::from_secs(60)).expect("hub");
    let mut reader = Reader::open(&hub);
    let watches = 2_000;
    for id in 1..=watches {
        reader.create(id, spec("k", false), 1);
    }
    // A burst of 200 revisions: 400,000 responses queued on one stream,
    // more than STREAM_BACKLOG only if the reader never takes any.
    write(&hub, "k", 1, 200);
    let mut delivered = 0;
    let mut last = std::collections::HashMap::new();
    while delivered < watches * 200 {
        if let Outgoing::Events {
            watch, revision, ..
        } = next(&mut reader).await
        {
            let watch_id = watch.id;
            let previous = last.insert(watch_id, revision).unwrap_or(0);
            assert_eq!(revision, previous + 1, "watch {watch_id} in order");
            delivered += 1;
        }
    }
    assert!(last.values().all(|r| *r == 200));
    assert!(
        reader.stream.control.try_recv().is_err(),
        "no watch was canceled"
    );
}

#[tokio::test]
async fn shutdown_closes_every_stream() {
    let hub = WatchHub::start(100, usize::MAX, Duration::from_secs(60)).expect("hub");
    let mut reader = Reader::open(&hub);
    reader.create(1, spec("k", false), 0);
    assert!(matches!(next(&mut reader).await, Outgoing::Created { .. }));
    let stopping = {
        let hub = hub.clone();
        tokio::spawn(async move { hub.shutdown(Duration::from_secs(30)).await })
    };
    // A level watch is told how far it got, then the queue closes.
    let farewell = next(&mut reader).await;
    assert!(
        matches!(farewell, Outgoing::Progress { watch: Some(w), revision: 0 } if w.id == 1),
        "{farewell:?}"
    );
    let closed = tokio::time::timeout(Duration::from_secs(10), reader.stream.queue.recv())
        .await
        .expect("the queue closes within 10 s");
    assert!(closed.is_none(), "nothing but the end: {closed:?}");
    drop(reader);
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("shutdown returns once the stream is gone")
        .expect("shutdown task");
}

#[tokio::test]
async fn revisions_evicted_before_they_were_sent_cancel_the_level_watches() {
    let hub = WatchHub::start(3, usize::MAX, Duration::from_secs(60)).expect("hub");
    let mut reader = Reader::open(&hub);
    reader.create(1, spec("k", false), 0);
    assert!(matches!(next(&mut reader).await, Outgoing::Created { .. }));
    // Ten revisions arrive between two rounds; the history keeps three.
    for revision in 1..=10 {
        hub.append(revision, vec![put("k", revision)]);
    }
    hub.applied();
    let control = tokio::time::timeout(Duration::from_secs(10), reader.stream.control.recv())
        .await
        .expect("the watch is told")
        .expect("open");
    assert_eq!(control.ended, Ended::Compacted { oldest: 8 });
    assert_eq!(control.first, 1, "the watch began at revision 1");
    while let Ok(out) = reader.stream.queue.try_recv() {
        assert!(
            !matches!(out, Outgoing::Events { .. }),
            "no events after the hole: {out:?}"
        );
    }
}

#[tokio::test]
async fn a_reused_watch_id_does_not_receive_the_old_watchs_leftovers() {
    let hub = WatchHub::start(100, usize::MAX, Duration::from_secs(60)).expect("hub");
    let mut reader = Reader::open(&hub);
    let (old, _) = reader.stream.create(1, spec("a", false), 1);
    write(&hub, "a", 1, 3);
    reader.stream.cancel(1);
    let (new, _) = reader.stream.create(1, spec("b", false), 4);
    assert_ne!(old, new, "each creation has its own tag");
    assert_eq!((old.id, new.id), (1, 1));
    hub.append(4, vec![put("b", 4)]);
    hub.applied();
    // Everything for the new watch carries its tag.
    loop {
        match next(&mut reader).await {
            Outgoing::Events {
                watch, revision, ..
            } if watch == new => {
                assert_eq!(revision, 4);
                break;
            }
            Outgoing::Events { watch, .. } | Outgoing::Created { watch, .. } => {
                assert!(watch == old || watch == new, "{watch:?}");
            }
            Outgoing::Progress { .. } => {}
        }
    }
}

//! The `Watch` service: one bidirectional stream carrying many watches,
//! served from this member's watch hub (`watch.rs`).
//!
//! Each stream runs one task. It reads create / cancel / progress requests,
//! answers bad ones in-band (a response with `code` set; the stream stays
//! open for the other watches), and forwards what the hub queued for the
//! stream. It remembers, per watch, the revision after the last one it
//! forwarded: when the hub cancels a watch for falling behind, that is where
//! the client resumes, so nothing is lost and nothing is sent twice.

use std::collections::HashMap;
use std::pin::Pin;

use fenced_proto::pb::{self, watch_server::Watch};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::api::{Limits, header};
use crate::node::Node;
use crate::state::{Event, EventKind};
use crate::watch::{
    Backlog, Control, Ended, HubStream, Outgoing, WATCH_BACKLOG, WatchSpec, WatchTag,
};

/// Most watches one stream may carry.
pub const MAX_WATCHES_PER_STREAM: usize = 100_000;

/// Serves the `Watch` service.
#[derive(Clone, Debug)]
pub struct WatchService {
    node: Node,
    limits: Limits,
}

impl WatchService {
    /// A service for `node`, checking keys against `limits`.
    pub fn new(node: Node, limits: Limits) -> Self {
        Self { node, limits }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let task = StreamTask {
            node: self.node.clone(),
            limits: self.limits,
            hub: self.node.watch_hub().open(),
            tx,
            watches: HashMap::new(),
            next_id: 1,
        };
        tokio::spawn(task.run(inbound));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// What the stream task knows about one of its watches.
struct WatchState {
    /// Include previous pairs in events.
    prev_kv: bool,
    /// Which creation under this id it is: what the hub queued for an
    /// earlier watch with the same id is dropped.
    tag: WatchTag,
    /// Its responses the hub queued and this task has not taken yet.
    backlog: Backlog,
    /// The revision to resume from: one after the last revision forwarded,
    /// or the start revision before anything was forwarded.
    resume_from: i64,
}

struct StreamTask {
    node: Node,
    limits: Limits,
    hub: HubStream,
    tx: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    watches: HashMap<i64, WatchState>,
    next_id: i64,
}

/// Whether the stream goes on.
type Flow = Result<(), ()>;

impl StreamTask {
    async fn run(mut self, mut inbound: Streaming<pb::WatchRequest>) {
        let mut requests_done = false;
        let leaderless = leaderless(self.node.clone());
        tokio::pin!(leaderless);
        loop {
            let flow = tokio::select! {
                biased;
                control = self.hub.control.recv() => match control {
                    Some(control) => self.ended(control).await,
                    // The hub stopped: the member is shutting down.
                    None => {
                        self.end_all("member is shutting down").await;
                        Err(())
                    }
                },
                request = inbound.message(), if !requests_done => match request {
                    Ok(Some(request)) => self.request(request).await,
                    // The client sent all its requests (or its side broke):
                    // its watches go on until the response side is gone.
                    Ok(None) | Err(_) => {
                        requests_done = true;
                        Ok(())
                    }
                },
                out = self.hub.queue.recv() => match out {
                    Some(out) => self.forward(out).await,
                    None => {
                        self.end_all("member is shutting down").await;
                        Err(())
                    }
                },
                () = &mut leaderless => {
                    self.end_all("member has no leader (partitioned or in an election)").await;
                    Err(())
                }
                () = self.tx.closed() => Err(()),
            };
            if flow.is_err() {
                return;
            }
        }
    }

    async fn send(&self, response: pb::WatchResponse) -> Flow {
        self.tx.send(Ok(response)).await.map_err(|_| ())
    }

    fn response(&self, watch_id: i64, revision: i64) -> pb::WatchResponse {
        pb::WatchResponse {
            header: Some(header(&self.node, revision)),
            watch_id,
            ..Default::default()
        }
    }

    /// Refuses a request in-band.
    async fn refuse(&self, watch_id: i64, code: Code, reason: String) -> Flow {
        let revision = self.node.watch_hub().window().1;
        let response = pb::WatchResponse {
            canceled: true,
            cancel_reason: reason,
            code: code as i32,
            ..self.response(watch_id, revision)
        };
        self.send(response).await
    }

    async fn request(&mut self, request: pb::WatchRequest) -> Flow {
        use pb::watch_request::RequestUnion;
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                if self.watches.remove(&cancel.watch_id).is_none() {
                    return self
                        .refuse(
                            cancel.watch_id,
                            Code::NotFound,
                            format!(
                                "cancel: no watch {} on this stream (already canceled, or never created)",
                                cancel.watch_id
                            ),
                        )
                        .await;
                }
                self.hub.cancel(cancel.watch_id);
                let revision = self.node.watch_hub().window().1;
                let response = pb::WatchResponse {
                    canceled: true,
                    cancel_reason: "canceled by the client".into(),
                    ..self.response(cancel.watch_id, revision)
                };
                self.send(response).await
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                self.hub.progress();
                Ok(())
            }
            None => {
                self.refuse(
                    0,
                    Code::InvalidArgument,
                    "watch request has no create, cancel or progress request".into(),
                )
                .await
            }
        }
    }

    async fn create(&mut self, create: pb::WatchCreateRequest) -> Flow {
        let watch_id = create.watch_id;
        if let Err(reason) = self.check(&create) {
            return self.refuse(watch_id, Code::InvalidArgument, reason).await;
        }
        let watch_id = if watch_id == 0 {
            // Server-picked ids only grow, so a canceled id is not handed
            // out again on this stream.
            while self.watches.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        } else if self.watches.contains_key(&watch_id) {
            return self
                .refuse(
                    watch_id,
                    Code::AlreadyExists,
                    format!("create: watch id {watch_id} is already in use on this stream"),
                )
                .await;
        } else {
            watch_id
        };
        if self.watches.len() >= MAX_WATCHES_PER_STREAM {
            return self
                .refuse(
                    watch_id,
                    Code::FailedPrecondition,
                    format!(
                        "create: this stream already carries {MAX_WATCHES_PER_STREAM} watches, the limit; open another stream"
                    ),
                )
                .await;
        }
        let spec = WatchSpec {
            key: create.key,
            prefix: create.prefix,
            no_put: create.no_put,
            no_delete: create.no_delete,
            progress_notify: create.progress_notify,
        };
        let (tag, backlog) = self.hub.create(watch_id, spec, create.start_revision);
        self.watches.insert(
            watch_id,
            WatchState {
                prev_kv: create.prev_kv,
                resume_from: create.start_revision,
                tag,
                backlog,
            },
        );
        Ok(())
    }

    fn check(&self, create: &pb::WatchCreateRequest) -> Result<(), String> {
        if create.watch_id < 0 {
            return Err(format!(
                "create: watch_id {} is negative (0 lets the server pick)",
                create.watch_id
            ));
        }
        if create.key.is_empty() && !create.prefix {
            return Err(
                "create: key must not be empty for an exact watch (an empty prefix watches every key)"
                    .into(),
            );
        }
        if create.key.len() > self.limits.max_key_bytes {
            return Err(format!(
                "create: key is {} bytes, the limit is {} bytes",
                create.key.len(),
                self.limits.max_key_bytes
            ));
        }
        if create.start_revision < 0 {
            return Err(format!(
                "create: start_revision {} is negative (0 watches from now on)",
                create.start_revision
            ));
        }
        if create.no_put && create.no_delete {
            return Err("create: no_put and no_delete together would select nothing".into());
        }
        Ok(())
    }

    /// Forwards what the hub queued.
    async fn forward(&mut self, out: Outgoing) -> Flow {
        match out {
            Outgoing::Created { watch, revision } => {
                let Some(state) = self.current(watch) else {
                    return Ok(());
                };
                if state.resume_from == 0 {
                    state.resume_from = revision + 1;
                }
                let response = pb::WatchResponse {
                    created: true,
                    ..self.response(watch.id, revision)
                };
                self.send(response).await
            }
            Outgoing::Events {
                watch,
                revision,
                events,
                pick,
            } => {
                // A watch canceled (or replaced) since the hub queued this is
                // skipped.
                let Some(state) = self.current(watch) else {
                    self.hub.taken(None);
                    return Ok(());
                };
                state.resume_from = revision + 1;
                let prev_kv = state.prev_kv;
                let backlog = state.backlog.clone();
                self.hub.taken(Some(&backlog));
                let events: Vec<pb::Event> = match &pick {
                    Some(pick) => pick
                        .iter()
                        .filter_map(|i| events.get(*i as usize))
                        .map(|e| event_to_pb(e, prev_kv))
                        .collect(),
                    None => events.iter().map(|e| event_to_pb(e, prev_kv)).collect(),
                };
                let response = pb::WatchResponse {
                    events,
                    ..self.response(watch.id, revision)
                };
                self.send(response).await
            }
            Outgoing::Progress {
                watch: Some(watch),
                revision,
            } => {
                let Some(state) = self.current(watch) else {
                    return Ok(());
                };
                // Nothing up to `revision` is left: resume after it.
                state.resume_from = state.resume_from.max(revision + 1);
                let response = pb::WatchResponse {
                    progress: true,
                    ..self.response(watch.id, revision)
                };
                self.send(response).await
            }
            Outgoing::Progress {
                watch: None,
                revision,
            } => {
                for state in self.watches.values_mut() {
                    state.resume_from = state.resume_from.max(revision + 1);
                }
                let response = pb::WatchResponse {
                    progress: true,
                    ..self.response(-1, revision)
                };
                self.send(response).await
            }
        }
    }

    /// The state of the watch `tag` names, if that watch is still the one
    /// with its id.
    fn current(&mut self, tag: WatchTag) -> Option<&mut WatchState> {
        self.watches
            .get_mut(&tag.id)
            .filter(|state| state.tag == tag)
    }

    /// The hub ended a watch.
    async fn ended(&mut self, control: Control) -> Flow {
        if self.current(control.watch).is_none() {
            return Ok(());
        }
        let Some(state) = self.watches.remove(&control.watch.id) else {
            return Ok(());
        };
        // Before anything was forwarded, resume where the watch began.
        let resume_from = if state.resume_from == 0 {
            control.first
        } else {
            state.resume_from
        };
        let revision = self.node.watch_hub().window().1;
        let watch_id = control.watch.id;
        let response = match control.ended {
            Ended::Compacted { oldest } => pb::WatchResponse {
                canceled: true,
                compact_revision: oldest,
                code: Code::OutOfRange as i32,
                cancel_reason: format!(
                    "revision {resume_from} is older than the history window, which starts at revision {oldest}"
                ),
                ..self.response(watch_id, revision)
            },
            Ended::Reset => pb::WatchResponse {
                canceled: true,
                resume_revision: resume_from,
                code: Code::Unavailable as i32,
                cancel_reason: format!(
                    "this member caught up from a snapshot and skipped revisions; watch again from revision {resume_from} on another member"
                ),
                ..self.response(watch_id, revision)
            },
            Ended::TooSlow => pb::WatchResponse {
                canceled: true,
                resume_revision: resume_from,
                code: Code::ResourceExhausted as i32,
                cancel_reason: format!(
                    "the watcher fell behind by more than {WATCH_BACKLOG} queued responses; watch again from revision {resume_from}"
                ),
                ..self.response(watch_id, revision)
            },
        };
        self.send(response).await
    }

    /// This member cannot serve the stream any more (shutting down, or cut
    /// off from the leader so its state may be stale): tell every watch
    /// where to resume, then end the stream.
    async fn end_all(&mut self, why: &str) {
        let revision = self.node.watch_hub().window().1;
        let watches: Vec<(i64, i64)> = self
            .watches
            .iter()
            .map(|(id, state)| (*id, state.resume_from))
            .collect();
        for (watch_id, resume_from) in watches {
            let response = pb::WatchResponse {
                canceled: true,
                resume_revision: resume_from,
                code: Code::Unavailable as i32,
                cancel_reason: format!(
                    "{why}; watch again from revision {resume_from} on another member"
                ),
                ..self.response(watch_id, revision)
            };
            if self.send(response).await.is_err() {
                return;
            }
        }
        let _ = self
            .tx
            .send(Err(Status::unavailable(why.to_string())))
            .await;
    }
}

/// Resolves once this member has known no leader for a whole election
/// timeout. A member cut off from the leader applies nothing new, so its
/// watchers would wait in silence while the rest of the cluster moves on;
/// ending their streams sends them to a member that can serve them (what
/// etcd's `WithRequireLeader` does on request, by default here).
pub(crate) async fn leaderless(node: Node) {
    let patience = node.status().election_timeout();
    let mut leadership = node.status().leadership();
    loop {
        // Wait (without polling) until no leader is known, then give it an
        // election timeout to come back.
        let lost = leadership.wait_for(|l| l.leader == 0).await.is_ok();
        if !lost {
            // The member is stopping; that ends the stream another way.
            return std::future::pending().await;
        }
        let back = tokio::time::timeout(patience, leadership.wait_for(|l| l.leader != 0))
            .await
            .map(|r| r.is_ok());
        match back {
            Ok(true) => continue,
            Ok(false) => return std::future::pending().await,
            Err(_) => return,
        }
    }
}

fn event_to_pb(event: &Event, with_prev: bool) -> pb::Event {
    pb::Event {
        r#type: match event.kind {
            EventKind::Put => pb::event::EventType::Put as i32,
            EventKind::Delete => pb::event::EventType::Delete as i32,
        },
        kv: Some(event.kv.clone().into()),
        prev_kv: if with_prev {
            event.prev_kv.clone().map(Into::into)
        } else {
            None
        },
    }
}

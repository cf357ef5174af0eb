//! Watching keys: [`Client::watch`] gives a [`WatchBuilder`], whose
//! [`WatchBuilder::stream`] opens a [`WatchStream`] of [`WatchBatch`]es.
//!
//! A watch is served by the one member its stream is connected to. When
//! that stream breaks (the member went away, its connection stopped
//! answering pings) or the member cancels the watch with a revision to
//! resume from (it is shutting down, or this watcher fell behind), the
//! stream is opened again on the next member, starting right after the
//! last revision accounted for (see `resume`). A batch that was already
//! delivered is dropped, so the caller sees every revision once, in order.
//!
//! Each stream carries exactly one watch, so every response on it belongs
//! to that watch. The stream is driven by the caller's polling: nothing
//! runs in the background, and a caller that stops polling stops reading,
//! which the member eventually answers by cancelling the watch as slow; it
//! is then resumed from where the caller left off.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::codec::Streaming;
use tonic::transport::Channel;

use self::answer::Answer;
use crate::error::breaks_stream;
use crate::pb::watch_client::WatchClient;
use crate::pb::watch_request::RequestUnion;
use crate::pb::{KeyValue, WatchCreateRequest, WatchRequest, WatchResponse};
use crate::resume::{Items, Next, Reconnect, Resume, Source, until_error};
use crate::{Client, Error};

mod answer;

/// What to watch, from [`Client::watch`]; [`WatchBuilder::stream`] starts it.
#[derive(Clone, Debug)]
#[must_use = "a watch builder does nothing until `stream` is awaited"]
pub struct WatchBuilder {
    client: Client,
    request: WatchCreateRequest,
}

/// The events of one revision that a watch matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchBatch {
    /// The revision of every event in the batch.
    pub revision: i64,
    /// In the order the revision made them (one revision may change many
    /// keys: a transaction, a prefix delete, a lease that ended).
    pub events: Vec<WatchEvent>,
}

/// One changed key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// A put or a delete.
    pub kind: EventKind,
    /// The key after the change. For a delete: the key, an empty value,
    /// and `mod_revision` set to the revision of the delete.
    pub kv: KeyValue,
    /// The key before the change, when the watch asked for it
    /// ([`WatchBuilder::prev_kv`]) and the key existed.
    pub prev_kv: Option<KeyValue>,
}

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// Created or overwritten.
    Put,
    /// Deleted (by a delete, or because its lease ended).
    Delete,
}

/// A watch that follows the cluster across member failures; a
/// [`Stream`] of `Result<WatchBatch, Error>`.
///
/// Batches come in revision order, each revision once. The stream ends
/// after its first error, which is one of:
///
/// - `OUT_OF_RANGE`: the start revision (or, after a reconnect, the
///   revision to resume from) is older than the members' history window;
///   the message names the oldest revision left. Read the current state
///   and watch again from after it.
/// - `DEADLINE_EXCEEDED`: the stream broke and no member took it back
///   within the reconnect timeout
///   ([`ClientConfig::reconnect_timeout`](crate::ClientConfig::reconnect_timeout)),
///   naming the last failure.
/// - whatever a member refused the watch with (`INVALID_ARGUMENT`, ...).
///
/// Dropping the stream closes it.
pub struct WatchStream {
    inner: Items<WatchBatch>,
}

impl Client {
    /// Starts describing a watch of `key`: from now, puts and deletes,
    /// without previous values. Await [`WatchBuilder::stream`] to start it.
    pub fn watch(&self, key: impl Into<Vec<u8>>) -> WatchBuilder {
        WatchBuilder {
            client: self.clone(),
            request: WatchCreateRequest {
                key: key.into(),
                // Progress notifications move the resume point while the
                // watched keys are quiet, so a reconnect after a long quiet
                // spell does not ask for a revision the history window has
                // dropped. They are never shown to the caller.
                progress_notify: true,
                ..WatchCreateRequest::default()
            },
        }
    }
}

impl WatchBuilder {
    /// Watch every key that starts with the key (an empty key then watches
    /// everything).
    pub fn prefix(mut self) -> Self {
        self.request.prefix = true;
        self
    }

    /// Deliver the changes from `revision` on, including those already
    /// made, instead of only the changes after now. Fails with
    /// `OUT_OF_RANGE` when the history window no longer holds `revision`.
    pub fn from_revision(mut self, revision: i64) -> Self {
        self.request.start_revision = revision;
        self
    }

    /// Include each key's previous value in its event.
    pub fn prev_kv(mut self) -> Self {
        self.request.prev_kv = true;
        self
    }

    /// Leave out puts.
    pub fn no_put(mut self) -> Self {
        self.request.no_put = true;
        self
    }

    /// Leave out deletes.
    pub fn no_delete(mut self) -> Self {
        self.request.no_delete = true;
        self
    }

    /// The create request the watch starts with (later streams ask for the
    /// revision to resume from instead of its `start_revision`).
    pub fn request(&self) -> &WatchCreateRequest {
        &self.request
    }

    /// Opens the watch on the current endpoint, failing over like any
    /// request until a member confirms it, and returns the stream of its
    /// batches. A watch that no member takes within the reconnect timeout,
    /// or that a member refuses (a bad key, a compacted start revision),
    /// fails here.
    pub async fn stream(self) -> Result<WatchStream, Error> {
        let WatchBuilder { client, request } = self;
        let reconnect = Reconnect::new(
            client.first_member(),
            client.member_count(),
            client.config(),
        );
        let mut watcher = Watcher {
            resume: Resume::new(request.start_revision),
            client,
            request,
            reconnect,
            open: None,
        };
        watcher.connect().await?;
        Ok(WatchStream {
            inner: until_error(watcher),
        })
    }
}

impl Stream for WatchStream {
    type Item = Result<WatchBatch, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchStream").finish_non_exhaustive()
    }
}

/// The state behind a [`WatchStream`].
struct Watcher {
    client: Client,
    /// The watch as the caller described it; each stream sends a copy with
    /// the start revision `resume` says.
    request: WatchCreateRequest,
    resume: Resume,
    reconnect: Reconnect,
    /// The stream in use; `None` between a failure and the next connect.
    open: Option<OpenWatch>,
}

/// One watch stream that a member confirmed.
struct OpenWatch {
    endpoint: String,
    /// Kept open for the stream's life: a member ends a watch stream whose
    /// request side has ended.
    _requests: mpsc::Sender<WatchRequest>,
    responses: Streaming<WatchResponse>,
    opened_at: Instant,
}

/// Why one attempt to open a watch stream failed.
enum OpenError {
    /// Try the next member; what went wrong on this one.
    Retry(Error),
    /// The watch cannot be served anywhere (refused, compacted).
    Fatal(Error),
}

impl Watcher {
    /// The next batch to deliver, reconnecting as often as it takes; an
    /// error ends the stream.
    async fn next_batch(&mut self) -> Result<WatchBatch, Error> {
        loop {
            if self.open.is_none() {
                self.connect().await?;
            }
            let Some(open) = self.open.as_mut() else {
                continue;
            };
            let failure = match open.responses.message().await {
                Ok(Some(response)) => match Answer::from(response) {
                    Answer::Events(batch) => {
                        self.reconnect.connected();
                        if self.resume.accept(batch.revision) {
                            return Ok(batch);
                        }
                        continue;
                    }
                    // A second confirmation says no more than progress.
                    Answer::Progress(revision) | Answer::Created(revision) => {
                        self.reconnect.connected();
                        self.resume.progress(revision);
                        continue;
                    }
                    Answer::Empty => continue,
                    Answer::Moved {
                        resume_revision,
                        why,
                    } => {
                        // The client's own count is never later than the
                        // member's suggestion, and resuming from it never
                        // skips anything; duplicates are dropped.
                        tracing::debug!(
                            resume_revision,
                            resume = self.resume.start_revision(),
                            "the member asked for the watch to be resumed"
                        );
                        Error::from(Status::unavailable(why))
                    }
                    Answer::Compacted(status) | Answer::Refused(status) => {
                        return Err(status.into());
                    }
                },
                Ok(None) => Status::unavailable("the member ended the watch stream").into(),
                Err(status) if breaks_stream(&status) => status.into(),
                Err(status) => return Err(status.into()),
            };
            let Some(open) = self.open.take() else {
                continue;
            };
            tracing::debug!(
                endpoint = %open.endpoint,
                cause = %failure,
                resume = self.resume.start_revision(),
                "watch stream broke; resuming on the next endpoint"
            );
            match self.reconnect.broke(open.opened_at, Instant::now()) {
                Next::Retry(pause) => tokio::time::sleep(pause).await,
                Next::GiveUp => {
                    return Err(self.reconnect.give_up("watch", &open.endpoint, failure));
                }
            }
        }
    }

    /// Opens a stream on the current endpoint, and on the following ones
    /// until one confirms the watch or the reconnect deadline passes.
    async fn connect(&mut self) -> Result<(), Error> {
        loop {
            let started = Instant::now();
            let (endpoint, channel) = self.client.member(self.reconnect.endpoint());
            let endpoint = endpoint.to_owned();
            let mut request = self.request.clone();
            request.start_revision = self.resume.start_revision();
            let budget = self
                .client
                .config()
                .attempt_timeout
                .unwrap_or(self.client.config().request_timeout);
            let opened = tokio::time::timeout(budget, open(channel, request)).await;
            let failure = match opened {
                Ok(Ok((open, created))) => {
                    self.resume.created(created);
                    self.open = Some(OpenWatch {
                        endpoint,
                        opened_at: Instant::now(),
                        ..open
                    });
                    return Ok(());
                }
                Ok(Err(OpenError::Fatal(err))) => return Err(err),
                Ok(Err(OpenError::Retry(err))) => err,
                Err(_) => Status::deadline_exceeded(format!(
                    "{endpoint} did not confirm the watch within {budget:?}"
                ))
                .into(),
            };
            tracing::debug!(%endpoint, cause = %failure, "opening the watch failed");
            match self.reconnect.failed(started, Instant::now()) {
                Next::Retry(pause) => tokio::time::sleep(pause).await,
                Next::GiveUp => return Err(self.reconnect.give_up("watch", &endpoint, failure)),
            }
        }
    }
}

/// Opens a watch stream on `channel` and waits for the member to confirm
/// the watch; returns the stream and the revision after which its events
/// follow.
async fn open(
    channel: Channel,
    request: WatchCreateRequest,
) -> Result<(OpenWatch, i64), OpenError> {
    let (requests, outbox) = mpsc::channel(1);
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(request)),
    };
    if requests.try_send(create).is_err() {
        return Err(OpenError::Fatal(
            Status::internal("the watch request channel refused the create").into(),
        ));
    }
    let stream_failed = |status: Status| match breaks_stream(&status) {
        true => OpenError::Retry(status.into()),
        false => OpenError::Fatal(status.into()),
    };
    let mut responses = WatchClient::new(channel)
        .max_decoding_message_size(crate::client::MAX_RESPONSE_BYTES)
        .watch(ReceiverStream::new(outbox))
        .await
        .map_err(stream_failed)?
        .into_inner();
    loop {
        let response = match responses.message().await {
            Ok(Some(response)) => response,
            Ok(None) => {
                return Err(OpenError::Retry(
                    Status::unavailable("the member ended the watch stream before confirming it")
                        .into(),
                ));
            }
            Err(status) => return Err(stream_failed(status)),
        };
        match Answer::from(response) {
            Answer::Created(revision) => {
                let open = OpenWatch {
                    endpoint: String::new(),
                    _requests: requests,
                    responses,
                    opened_at: Instant::now(),
                };
                return Ok((open, revision));
            }
            // Nothing else is expected before the confirmation; a progress
            // response would be harmless, so it is skipped.
            Answer::Progress(_) | Answer::Empty => {}
            Answer::Events(batch) => {
                return Err(OpenError::Retry(
                    Status::internal(format!(
                        "the member sent events of revision {} before confirming the watch",
                        batch.revision
                    ))
                    .into(),
                ));
            }
            Answer::Moved { why, .. } => {
                return Err(OpenError::Retry(Status::unavailable(why).into()));
            }
            Answer::Compacted(status) | Answer::Refused(status) => {
                return Err(OpenError::Fatal(status.into()));
            }
        }
    }
}

impl EventKind {
    /// `PUT` or `DELETE`, as the API spells the event types.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Put => "PUT",
            EventKind::Delete => "DELETE",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Source for Watcher {
    type Item = WatchBatch;

    fn next_item(&mut self) -> impl std::future::Future<Output = Result<WatchBatch, Error>> + Send {
        self.next_batch()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builder_fills_the_create_request() {
        let client = Client::new(["127.0.0.1:1"]).unwrap();
        let builder = client
            .watch("app/")
            .prefix()
            .from_revision(12)
            .prev_kv()
            .no_delete();
        assert_eq!(
            builder.request(),
            &WatchCreateRequest {
                key: b"app/".to_vec(),
                prefix: true,
                start_revision: 12,
                progress_notify: true,
                no_put: false,
                no_delete: true,
                prev_kv: true,
                watch_id: 0,
            }
        );
    }
}

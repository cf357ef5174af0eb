//! Following an election: [`Client::observe`] gives an [`ObserveStream`]
//! of [`Observation`]s, the leader (or none) after every change.
//!
//! Like a watch, an observe stream is served by one member and is opened
//! again on the next one when it breaks, from the revision after the last
//! observation delivered; an observation at or below that revision is
//! dropped, so every change is seen once, in order. The stream is driven by
//! the caller's polling; nothing runs in the background.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::time::Instant;
use tonic::codec::Streaming;
use tonic::{Code, Status};

use crate::error::breaks_stream;
use crate::pb::election_client::ElectionClient;
use crate::pb::{ObserveRequest, ObserveResponse};
use crate::resume::{Items, Next, Reconnect, Resume, Source, until_error};
use crate::{Client, Error, LeaderInfo};

/// The state of an election at a revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// The revision this observation reflects.
    pub revision: i64,
    /// The leader from that revision on; `None`: the election has no leader.
    pub leader: Option<LeaderInfo>,
}

/// A [`Stream`] of `Result<Observation, Error>` for one election, from
/// [`Client::observe`]: the state at the start, then every change (a new
/// leader, a proclaimed value, no leader) in revision order.
///
/// It follows the cluster across member failures. It ends after its first
/// error: `OUT_OF_RANGE` when the revision to resume from is older than the
/// history window, `DEADLINE_EXCEEDED` when no member took the stream back
/// within the reconnect timeout
/// ([`ClientConfig::reconnect_timeout`](crate::ClientConfig::reconnect_timeout)),
/// or what a member refused it with. Dropping the stream closes it.
pub struct ObserveStream {
    inner: Items<Observation>,
}

impl Client {
    /// Observes election `name`: the current leader (or none) first, then
    /// every change. The first stream is opened here, failing over like a
    /// request, so a bad name or an unreachable cluster fails at once.
    pub async fn observe(&self, name: impl Into<String>) -> Result<ObserveStream, Error> {
        self.observe_from(name, 0).await
    }

    /// Observes election `name` from `start_revision`: every change at or
    /// after it (0: the current state, then every change). `OUT_OF_RANGE`
    /// when the history window no longer holds `start_revision`.
    pub async fn observe_from(
        &self,
        name: impl Into<String>,
        start_revision: i64,
    ) -> Result<ObserveStream, Error> {
        let mut observer = Observer {
            client: self.clone(),
            name: name.into(),
            resume: Resume::new(start_revision),
            reconnect: Reconnect::new(self.first_member(), self.member_count(), self.config()),
            open: None,
            last: None,
        };
        observer.connect().await?;
        Ok(ObserveStream {
            inner: until_error(observer),
        })
    }
}

impl Stream for ObserveStream {
    type Item = Result<Observation, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl fmt::Debug for ObserveStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObserveStream").finish_non_exhaustive()
    }
}

impl From<ObserveResponse> for Observation {
    fn from(response: ObserveResponse) -> Self {
        Observation {
            revision: response.revision,
            leader: response
                .leader
                .map(|leader| LeaderInfo::new(leader, response.value)),
        }
    }
}

/// The state behind an [`ObserveStream`].
struct Observer {
    client: Client,
    name: String,
    resume: Resume,
    reconnect: Reconnect,
    /// The stream in use; `None` between a failure and the next connect.
    open: Option<OpenObserve>,
    /// The last observation delivered, for the one case the revision
    /// cannot tell a repeat: an observation without a revision.
    last: Option<Observation>,
}

/// One observe stream that a member accepted.
struct OpenObserve {
    endpoint: String,
    responses: Streaming<ObserveResponse>,
    opened_at: Instant,
}

impl Observer {
    /// The next observation to deliver, reconnecting as often as it takes;
    /// an error ends the stream.
    async fn next_observation(&mut self) -> Result<Observation, Error> {
        loop {
            if self.open.is_none() {
                self.connect().await?;
            }
            let Some(open) = self.open.as_mut() else {
                continue;
            };
            let failure: Error = match open.responses.message().await {
                Ok(Some(response)) => {
                    self.reconnect.connected();
                    let observation = Observation::from(response);
                    if self.deliver(&observation) {
                        self.last = Some(observation.clone());
                        return Ok(observation);
                    }
                    continue;
                }
                Ok(None) => Status::unavailable("the member ended the observe stream").into(),
                // RESOURCE_EXHAUSTED: this observer fell behind and was
                // dropped; resuming from the last revision loses nothing.
                Err(status)
                    if breaks_stream(&status) || status.code() == Code::ResourceExhausted =>
                {
                    status.into()
                }
                Err(status) => return Err(status.into()),
            };
            let Some(open) = self.open.take() else {
                continue;
            };
            tracing::debug!(
                endpoint = %open.endpoint,
                cause = %failure,
                resume = self.resume.start_revision(),
                "observe stream broke; resuming on the next endpoint"
            );
            match self.reconnect.broke(open.opened_at, Instant::now()) {
                Next::Retry(pause) => tokio::time::sleep(pause).await,
                Next::GiveUp => {
                    return Err(self
                        .reconnect
                        .give_up("observe stream", &open.endpoint, failure));
                }
            }
        }
    }

    /// Whether `observation` is new. An observation with a revision is new
    /// when it is past the resume point (which it then moves); one without
    /// (a member that cannot say which revision its first answer reflects)
    /// when it differs from the last one delivered.
    /// A newer observation that names the same leader as the last one
    /// delivered (a member repeating the current state after a resume) is
    /// not a change: it moves the resume point but is not delivered.
    fn deliver(&mut self, observation: &Observation) -> bool {
        let changed = self.last.as_ref().map(|last| &last.leader) != Some(&observation.leader);
        if observation.revision > 0 {
            self.resume.accept(observation.revision) && changed
        } else {
            changed
        }
    }

    /// Opens a stream on the current endpoint, and on the following ones
    /// until one accepts or the reconnect deadline passes.
    async fn connect(&mut self) -> Result<(), Error> {
        loop {
            let started = Instant::now();
            let (endpoint, channel) = self.client.member(self.reconnect.endpoint());
            let endpoint = endpoint.to_owned();
            let request = ObserveRequest {
                name: self.name.clone(),
                start_revision: self.resume.start_revision(),
            };
            let config = self.client.config();
            let budget = config.attempt_timeout.unwrap_or(config.request_timeout);
            // The call completes when the member sends its response
            // headers. No gRPC timeout is sent: it would end the stream.
            let mut election = ElectionClient::new(channel);
            let call = election.observe(request);
            let failure: Error = match tokio::time::timeout(budget, call).await {
                Ok(Ok(response)) => {
                    self.open = Some(OpenObserve {
                        endpoint,
                        responses: response.into_inner(),
                        opened_at: Instant::now(),
                    });
                    return Ok(());
                }
                Ok(Err(status)) if breaks_stream(&status) => status.into(),
                Ok(Err(status)) => return Err(status.into()),
                Err(_) => Status::deadline_exceeded(format!(
                    "{endpoint} did not accept the observe stream within {budget:?}"
                ))
                .into(),
            };
            tracing::debug!(%endpoint, cause = %failure, "opening the observe stream failed");
            match self.reconnect.failed(started, Instant::now()) {
                Next::Retry(pause) => tokio::time::sleep(pause).await,
                Next::GiveUp => {
                    return Err(self.reconnect.give_up("observe stream", &endpoint, failure));
                }
            }
        }
    }
}

impl Source for Observer {
    type Item = Observation;

    fn next_item(
        &mut self,
    ) -> impl std::future::Future<Output = Result<Observation, Error>> + Send {
        self.next_observation()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::LeaderKey;

    fn observation(revision: i64, token: Option<i64>) -> Observation {
        Observation {
            revision,
            leader: token.map(|token| LeaderInfo {
                name: "db".to_owned(),
                token,
                ..LeaderInfo::default()
            }),
        }
    }

    fn observer() -> Observer {
        let client = Client::new(["127.0.0.1:1"]).unwrap();
        Observer {
            reconnect: Reconnect::new(0, 1, client.config()),
            client,
            name: "db".to_owned(),
            resume: Resume::new(0),
            open: None,
            last: None,
        }
    }

    #[test]
    fn responses_become_observations() {
        let response = ObserveResponse {
            header: None,
            revision: 12,
            leader: Some(LeaderKey {
                name: "db".to_owned(),
                key: b"__fenced/election/db/@7".to_vec(),
                token: 10,
                lease: 7,
            }),
            value: b"node-a".to_vec(),
        };
        let observation = Observation::from(response);
        assert_eq!(observation.revision, 12);
        let leader = observation.leader.unwrap();
        assert_eq!((leader.token, leader.lease), (10, 7));
        assert_eq!(leader.value, b"node-a");
        let none = Observation::from(ObserveResponse {
            revision: 13,
            ..ObserveResponse::default()
        });
        assert_eq!(none, observation_none(13));
    }

    fn observation_none(revision: i64) -> Observation {
        observation(revision, None)
    }

    #[test]
    fn a_resumed_stream_repeats_nothing() {
        let mut observer = observer();
        // The first stream: the state at 10, then a change at 12.
        assert!(observer.deliver(&observation(10, Some(8))));
        assert!(observer.deliver(&observation(12, None)));
        // It breaks; the next one is asked to start at 13.
        assert_eq!(observer.resume.start_revision(), 13);
        // A member that replays from earlier anyway.
        assert!(!observer.deliver(&observation(12, None)));
        assert!(observer.deliver(&observation(13, Some(13))));
    }

    #[test]
    fn observations_without_a_revision_are_compared() {
        let mut observer = observer();
        let first = observation(0, None);
        assert!(observer.deliver(&first));
        observer.last = Some(first.clone());
        assert!(!observer.deliver(&first));
        assert!(observer.deliver(&observation(0, Some(3))));
        assert_eq!(observer.resume.start_revision(), 0);
    }
}

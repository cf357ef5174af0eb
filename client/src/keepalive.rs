//! The task behind a [`Session`](crate::Session): it keeps one lease alive
//! over a `KeepAlive` stream and fails over between the client's endpoints.
//!
//! One keepalive is in flight at a time, so an answer always belongs to the
//! last request sent, whose send instant is what the session's deadline is
//! measured from. A stream is given up (and the next endpoint tried at
//! once) when a keepalive is not answered within the answer timeout, when
//! the member says `UNAVAILABLE`, or when the stream breaks; after every
//! full round of endpoints that failed in a row the task pauses with a
//! doubling backoff, so it never spins.
//!
//! The task ends when the session is stopped (the session's stop sender is
//! dropped), or when it is lost; either way it records why in the status
//! before it goes. It never sleeps past the moment the session would count
//! as lost, so that moment is always observed on time.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::Streaming;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::Client;
use crate::lost::{LostReason, SessionStatus};
use crate::pb::lease_client::LeaseClient;
use crate::pb::{LeaseKeepAliveRequest, LeaseKeepAliveResponse};

/// The keepalive timing that follows from a TTL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Timing {
    /// Time between two keepalives: a third of the TTL, so that two can go
    /// missing before the lease is in danger.
    pub(crate) interval: Duration,
    /// How long a keepalive may stay unanswered before its stream is given
    /// up: `min(ttl / 3, 1 s)`. A paused or partitioned member keeps its TCP
    /// connection open and just never answers; this is what gets the
    /// session off it long before the lease is in danger.
    pub(crate) answer_timeout: Duration,
    /// How long before the lease could expire the session counts as lost:
    /// `max(ttl / 10, 100 ms)`, time for the holder to stop writing.
    pub(crate) margin: Duration,
}

impl Timing {
    pub(crate) fn for_ttl(ttl: Duration) -> Timing {
        Timing {
            interval: ttl / 3,
            answer_timeout: (ttl / 3).min(Duration::from_secs(1)),
            margin: (ttl / 10).max(Duration::from_millis(100)),
        }
    }

    /// The timing before the TTL is known (keeping an existing lease alive,
    /// before its first answer): the first keepalive goes at once, so only
    /// the answer timeout matters.
    fn unknown_ttl() -> Timing {
        Timing {
            interval: Duration::from_secs(1),
            answer_timeout: Duration::from_secs(1),
            margin: Duration::from_millis(100),
        }
    }
}

/// The keepalive loop of one session.
#[derive(Debug)]
pub(crate) struct KeepAliveTask {
    client: Client,
    lease_id: i64,
    /// The granted TTL; `None` until the first answer when keeping an
    /// existing lease alive.
    ttl: Option<Duration>,
    timing: Timing,
    /// The session's status; this task is its only writer.
    status: watch::Sender<SessionStatus>,
    /// Resolves (with an error) when the session drops its sender.
    stop: oneshot::Receiver<()>,
    /// The endpoint to use, as an index that wraps around the endpoints.
    endpoint: usize,
    /// Streams that failed in a row; reset by an OK answer.
    failures: usize,
    /// The next pause after a full round of failed endpoints.
    backoff: Duration,
}

/// Why the task ends.
enum Exit {
    Stopped,
    Lost(LostReason),
}

/// How one stream ended.
enum StreamEnd {
    Exit(Exit),
    /// Try the next endpoint; why this one was given up.
    Failover(String),
}

impl KeepAliveTask {
    pub(crate) fn new(
        client: Client,
        lease_id: i64,
        ttl: Option<Duration>,
        status: watch::Sender<SessionStatus>,
        stop: oneshot::Receiver<()>,
    ) -> Self {
        let timing = ttl.map_or_else(Timing::unknown_ttl, Timing::for_ttl);
        let endpoint = client.first_member();
        let backoff = client.config().backoff_initial;
        KeepAliveTask {
            client,
            lease_id,
            ttl,
            timing,
            status,
            stop,
            endpoint,
            failures: 0,
            backoff,
        }
    }

    /// Sends the first keepalive at `next_send`, and runs until the session
    /// is stopped or lost.
    pub(crate) async fn run(mut self, mut next_send: Instant) {
        let exit = loop {
            let why = match self.stream(next_send).await {
                StreamEnd::Exit(exit) => break exit,
                StreamEnd::Failover(why) => why,
            };
            tracing::debug!(lease = self.lease_id, %why, "keepalive moves to the next endpoint");
            self.endpoint = self.endpoint.wrapping_add(1);
            self.failures += 1;
            if self.failures.is_multiple_of(self.client.member_count()) {
                let pause = self.backoff;
                self.backoff = (self.backoff * 2).min(self.client.config().backoff_max);
                if let Some(exit) = self.pause(pause).await {
                    break exit;
                }
            }
            // The last keepalive may not have been acknowledged: refresh at
            // once on the new stream.
            next_send = Instant::now();
        };
        let reason = match exit {
            Exit::Stopped => LostReason::Closed,
            Exit::Lost(reason) => reason,
        };
        tracing::debug!(lease = self.lease_id, %reason, "keepalive task ends");
        self.status.send_modify(|status| status.lose(reason));
    }

    /// Sleeps for `pause`, unless the session is stopped or lost first.
    async fn pause(&mut self, pause: Duration) -> Option<Exit> {
        let lost_at = self.status.borrow().lost_at();
        tokio::select! {
            () = tokio::time::sleep(pause) => None,
            _ = &mut self.stop => Some(Exit::Stopped),
            () = sleep_until(lost_at) => Some(Exit::Lost(LostReason::Expired)),
        }
    }

    /// Keeps the lease alive over one stream to the current endpoint, the
    /// first keepalive at `next_send`, until the stream has to be given up.
    async fn stream(&mut self, mut next_send: Instant) -> StreamEnd {
        let (name, channel) = self.client.member(self.endpoint);
        let name = name.to_owned();
        let mut lease_client = LeaseClient::new(channel);
        // Capacity 1 is enough: a request is only queued once the previous
        // one was answered, and so taken by the transport long before.
        let (requests, outbox) = mpsc::channel(1);
        let mut outbox = Some(outbox);
        let mut answers: Option<Streaming<LeaseKeepAliveResponse>> = None;
        loop {
            let lost_at = self.status.borrow().lost_at();
            tokio::select! {
                () = sleep_until(next_send) => {}
                _ = &mut self.stop => return StreamEnd::Exit(Exit::Stopped),
                () = sleep_until(lost_at) => {
                    return StreamEnd::Exit(Exit::Lost(LostReason::Expired));
                }
                // Nothing is expected while no keepalive is in flight;
                // whatever comes is the stream ending.
                ended = unsolicited(&mut answers) => {
                    return StreamEnd::Failover(format!("{name}: keepalive stream {ended}"));
                }
            }
            let sent = Instant::now();
            let request = LeaseKeepAliveRequest { id: self.lease_id };
            if requests.try_send(request).is_err() {
                return StreamEnd::Failover(format!("{name}: the stream took no request"));
            }
            let exchange = exchange(&mut lease_client, &mut outbox, &mut answers);
            let answer = tokio::select! {
                answer = timeout_at(sent + self.timing.answer_timeout, exchange) => answer,
                _ = &mut self.stop => return StreamEnd::Exit(Exit::Stopped),
                () = sleep_until(lost_at) => {
                    return StreamEnd::Exit(Exit::Lost(LostReason::Expired));
                }
            };
            let answer = match answer {
                Ok(Ok(Some(answer))) => answer,
                Ok(Ok(None)) => {
                    return StreamEnd::Failover(format!("{name} closed the keepalive stream"));
                }
                Ok(Err(status)) => {
                    let err = crate::Error::from(status);
                    return StreamEnd::Failover(format!("{name}: {err}"));
                }
                Err(_) => {
                    return StreamEnd::Failover(format!(
                        "no keepalive answer from {name} within {:?}",
                        self.timing.answer_timeout
                    ));
                }
            };
            match Code::from(answer.code) {
                Code::Ok if answer.ttl > 0 => {
                    if !self.ack(sent, answer.ttl) {
                        return StreamEnd::Exit(Exit::Lost(LostReason::Expired));
                    }
                    self.failures = 0;
                    self.backoff = self.client.config().backoff_initial;
                    next_send = sent + self.timing.interval;
                }
                // An OK with no time left is the lease ending too.
                Code::Ok | Code::NotFound => {
                    let message = match answer.message.is_empty() {
                        true => format!("lease {} not found", self.lease_id),
                        false => answer.message,
                    };
                    return StreamEnd::Exit(Exit::Lost(LostReason::NotFound(message)));
                }
                // UNAVAILABLE (no leader confirmed the refresh) and anything
                // unexpected: try again, on another member.
                code => {
                    return StreamEnd::Failover(format!(
                        "{name} answered {code:?}: {}",
                        answer.message
                    ));
                }
            }
        }
    }

    /// Records an OK answer to the keepalive sent at `sent`; false when the
    /// session was lost before it came.
    fn ack(&mut self, sent: Instant, ttl_secs: i64) -> bool {
        let answered = Duration::from_secs(u64::try_from(ttl_secs).unwrap_or(0));
        let ttl = match self.ttl {
            Some(ttl) => ttl.min(answered),
            None => {
                // The first answer for an existing lease tells its TTL.
                self.ttl = Some(answered);
                self.timing = Timing::for_ttl(answered);
                answered
            }
        };
        let margin = self.timing.margin;
        let mut alive = false;
        self.status.send_modify(|status| {
            alive = status.ack(Instant::now(), sent, ttl, ttl_secs, margin);
        });
        alive
    }
}

/// Opens the stream if this is its first keepalive (the call completes
/// when the member sends its response headers, which a frozen member never
/// does), then reads the answer.
async fn exchange(
    lease_client: &mut LeaseClient<Channel>,
    outbox: &mut Option<mpsc::Receiver<LeaseKeepAliveRequest>>,
    answers: &mut Option<Streaming<LeaseKeepAliveResponse>>,
) -> Result<Option<LeaseKeepAliveResponse>, Status> {
    let answers = match answers {
        Some(answers) => answers,
        None => {
            let outbox = outbox
                .take()
                .ok_or_else(|| Status::internal("keepalive stream opened twice"))?;
            let response = lease_client.keep_alive(ReceiverStream::new(outbox)).await?;
            answers.insert(response.into_inner())
        }
    };
    answers.message().await
}

/// Resolves when an open stream yields anything (an answer nobody asked
/// for, an error, or its end), describing it; never while no stream is
/// open.
async fn unsolicited(answers: &mut Option<Streaming<LeaseKeepAliveResponse>>) -> String {
    let Some(answers) = answers else {
        return std::future::pending().await;
    };
    match answers.message().await {
        Ok(Some(answer)) => format!("sent an unrequested answer (code {})", answer.code),
        Ok(None) => "ended".to_owned(),
        Err(status) => format!("failed: {}", crate::Error::from(status)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_follows_the_ttl() {
        assert_eq!(
            Timing::for_ttl(Duration::from_secs(2)),
            Timing {
                interval: Duration::from_nanos(666_666_666),
                answer_timeout: Duration::from_nanos(666_666_666),
                margin: Duration::from_millis(200),
            }
        );
        assert_eq!(
            Timing::for_ttl(Duration::from_secs(30)),
            Timing {
                interval: Duration::from_secs(10),
                answer_timeout: Duration::from_secs(1),
                margin: Duration::from_secs(3),
            }
        );
        // The margin has a floor for short TTLs.
        assert_eq!(
            Timing::for_ttl(Duration::from_millis(600)).margin,
            Duration::from_millis(100)
        );
    }
}

//! [`ClientConfig`]: where a [`Client`] connects, how long a request may take,
//! and whether it moves to another member when one fails.

use std::time::Duration;

use crate::{Client, Error};

/// How long one request may take in total, retries included, unless the
/// configuration says otherwise. Long enough to ride out a leader election
/// (about one second with the default tick settings), short enough that a
/// person at a terminal is not left waiting.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long establishing a TCP connection to one member may take. On loopback
/// or a LAN a healthy member accepts in well under a millisecond, so one
/// second only ever elapses for a member that is gone.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Settings for a [`Client`]; build one with [`ClientConfig::build`].
///
/// Every setter takes and returns `self`, so a configuration reads as one
/// expression: `ClientConfig::new(["a:1", "b:2"]).retry(false).build()`.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Members to talk to, as given (`host:port` or `http://host:port`);
    /// kept as strings so errors and output show what the user typed.
    pub(crate) endpoints: Vec<String>,
    /// Total time for one request, retries and backoff included.
    pub(crate) request_timeout: Duration,
    /// Time allowed for the TCP connect to one member.
    pub(crate) connect_timeout: Duration,
    /// Optional cap on a single attempt, so that a member which accepts the
    /// connection but never answers (stopped with SIGSTOP, or partitioned
    /// from the leader while forwarding) costs only this much of the request
    /// deadline before the next member is tried.
    pub(crate) attempt_timeout: Option<Duration>,
    /// When false, every request makes exactly one attempt on the current
    /// endpoint and returns that attempt's error unchanged.
    pub(crate) retry: bool,
    /// Pause after the first full round of endpoints that all failed.
    pub(crate) backoff_initial: Duration,
    /// The pause doubles after every further failed round up to this cap.
    pub(crate) backoff_max: Duration,
    /// How long a connection with requests in flight may stay silent before
    /// the client pings the member.
    pub(crate) keepalive_interval: Duration,
    /// How long the member may take to answer that ping before the
    /// connection counts as dead and its requests fail over.
    pub(crate) keepalive_timeout: Duration,
    /// How long a broken watch or observe stream may go without a member
    /// taking it back before it ends with an error; `None`: the request
    /// timeout.
    pub(crate) reconnect_timeout: Option<Duration>,
    /// Whether requests go to the leader's endpoint once the client has
    /// found it (off by default).
    pub(crate) prefer_leader: bool,
}

impl ClientConfig {
    /// A configuration for these endpoints with the default timeouts and
    /// retries enabled. Endpoints are `host:port` or `http://host:port`.
    pub fn new<I, S>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            attempt_timeout: None,
            retry: true,
            backoff_initial: Duration::from_millis(25),
            backoff_max: Duration::from_millis(500),
            keepalive_interval: Duration::from_secs(1),
            keepalive_timeout: Duration::from_secs(2),
            reconnect_timeout: None,
            prefer_leader: false,
        }
    }

    /// Total time one request may take, retries included. When it passes, the
    /// request fails with `DEADLINE_EXCEEDED`, naming the last error seen.
    /// The deadline is also sent to the server as the gRPC timeout.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Time allowed for connecting to one member before it counts as
    /// unreachable and the next one is tried.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Caps each attempt at `timeout`: an attempt that gets no answer in time
    /// is abandoned and, with retries on, the next member is tried with what
    /// is left of the request deadline. Off by default, because an abandoned
    /// write may still be applied; chaos tests that pause members want it on.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// Turns retries on (the default) or off. Off means one attempt on the
    /// current endpoint and its error as is: for tests and tools that must
    /// know what one particular member answers.
    pub fn retry(mut self, enabled: bool) -> Self {
        self.retry = enabled;
        self
    }

    /// The backoff after a full round of failed endpoints: starts at
    /// `initial`, doubles per round, never exceeds `max`.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max.max(initial);
        self
    }

    /// HTTP/2 keepalive: a connection with requests in flight that has been
    /// silent for `interval` is pinged, and closed when the ping is not
    /// answered within `timeout`; its requests then fail over like those of
    /// an unreachable member. This is what moves a request off a member that
    /// froze (SIGSTOP, a hung VM) without a per-attempt timeout. The defaults
    /// (1 s, 2 s) detect a frozen member within about 3 s, inside the default
    /// request deadline, while leaving a member that is merely busy seconds
    /// to answer a ping (pings are answered by the connection task, not by
    /// request handlers).
    pub fn keepalive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.keepalive_interval = interval;
        self.keepalive_timeout = timeout;
        self
    }

    /// How long a broken [`WatchStream`](crate::WatchStream) or
    /// [`ObserveStream`](crate::ObserveStream) keeps trying other members
    /// before it gives up and yields an error (`DEADLINE_EXCEEDED`, naming
    /// the last failure). The time counts from the first failed attempt; a
    /// stream that delivers something, or stays up for a second, starts
    /// afresh. Defaults to the request timeout, so an outage is reported
    /// instead of hidden; `Duration::MAX` keeps trying for ever.
    pub fn reconnect_timeout(mut self, timeout: Duration) -> Self {
        self.reconnect_timeout = Some(timeout);
        self
    }

    /// Sends requests to the leader's endpoint (off by default). The client
    /// asks every endpoint for its `Status` in the background, at the first
    /// request, every 5 s while requests are made, and soon after a request
    /// had to fail over, and moves its current endpoint to the member that
    /// says it leads. Requests never wait for that lookup; until it
    /// answers, and when no endpoint leads, they go where they would go
    /// anyway. A write sent to a follower is forwarded to the leader
    /// through raft and answered once the follower applied it, which costs
    /// a round trip more than a write the leader takes itself, and every
    /// lock hand-off through a follower waits for that follower to learn
    /// the commit: with many lock holders, writing through the leader gives
    /// about 1.5× the cycles per second (docs/benchmarks.md). Streams
    /// (watches, observes, keepalives) open on the current endpoint too.
    pub fn prefer_leader(mut self, enabled: bool) -> Self {
        self.prefer_leader = enabled;
        self
    }

    /// The endpoints, as given.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Checks the endpoints and builds the client. No connection is made
    /// here: each endpoint connects on its first request, so a client for a
    /// cluster that is still starting can be built early.
    pub fn build(self) -> Result<Client, Error> {
        Client::from_config(self)
    }
}

//! [`Session`]: a lease that this client keeps alive, for holding locks.
//!
//! This module owns the session's public face: building it (granting a
//! lease, or finding an existing one), its accessors, and closing it. What
//! the session knows about its lease, and when it counts as lost, is in
//! `lost`; the task that sends the keepalives is in `keepalive`.

use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::{Code, Status};

use crate::guard::Claims;
use crate::keepalive::{KeepAliveTask, Timing};
use crate::lost::{Lost, LostReason, SessionStatus};
use crate::{Client, Error};

/// The TTL of a session built without [`SessionBuilder::ttl`].
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(10);

/// A lease kept alive in the background, for holding locks.
///
/// Created by [`Client::session`] or [`Client::session_builder`]. A task
/// sends a keepalive every third of the TTL over a `KeepAlive` stream,
/// moving to the next endpoint when a member fails, says it cannot confirm
/// a leader, or leaves a keepalive unanswered for `min(ttl / 3, 1 s)`.
///
/// Watch [`Session::lost`]: it fires once the client can no longer be sure
/// the lease is alive, which is `max(ttl / 10, 100 ms)` before the lease
/// could expire on the server, or when the server says the lease is gone.
/// From then on every lock taken with the session must be treated as lost.
///
/// Dropping the session stops the keepalives without revoking the lease
/// (it then expires after its TTL, releasing its locks); [`Session::close`]
/// revokes it at once.
#[derive(Debug)]
pub struct Session {
    /// The client the session was made with; locks taken with the session
    /// use it too.
    client: Client,
    lease_id: i64,
    /// The granted TTL, which the keepalive timing is derived from.
    ttl: Duration,
    /// What the keepalive task knows; it is the only writer.
    status: watch::Receiver<SessionStatus>,
    /// Dropping this (with the session, or in `close`) stops the task.
    stop: oneshot::Sender<()>,
    /// Awaited by `close`, so no keepalive is in flight when it revokes.
    task: JoinHandle<()>,
    /// The lock names this session holds or is acquiring (see `guard`).
    claims: Claims,
}

/// Options for a [`Session`], from [`Client::session_builder`].
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `build` is awaited"]
pub struct SessionBuilder {
    client: Client,
    ttl: Duration,
    /// The id to ask for when granting; 0 lets the server pick.
    grant_id: i64,
    /// Keep this lease alive instead of granting one.
    existing_lease: Option<i64>,
}

impl Client {
    /// Grants a lease of `ttl` (whole seconds) and keeps it alive; see
    /// [`Session`]. Shorthand for `client.session_builder().ttl(ttl).build()`.
    pub async fn session(&self, ttl: Duration) -> Result<Session, Error> {
        self.session_builder().ttl(ttl).build().await
    }

    /// A builder for a [`Session`] with options: TTL, lease id, or an
    /// existing lease to keep alive.
    pub fn session_builder(&self) -> SessionBuilder {
        SessionBuilder {
            client: self.clone(),
            ttl: DEFAULT_SESSION_TTL,
            grant_id: 0,
            existing_lease: None,
        }
    }
}

impl SessionBuilder {
    /// The TTL of the lease to grant, in whole seconds (the server's unit);
    /// [`DEFAULT_SESSION_TTL`] unless set. The server's bounds apply (at
    /// least 1.5 x its election timeout, 2 s by default): outside them the
    /// build fails with `INVALID_ARGUMENT`.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Grant the lease with this id instead of letting the server pick. It
    /// must be positive and above every id granted before.
    pub fn lease_id(mut self, id: i64) -> Self {
        self.grant_id = id;
        self
    }

    /// Keep this existing lease alive instead of granting one. The TTL
    /// comes from the server's first keepalive answer, which `build` waits
    /// for (`NOT_FOUND` if the lease does not exist); [`SessionBuilder::ttl`]
    /// is then ignored.
    pub fn existing_lease(mut self, id: i64) -> Self {
        self.existing_lease = Some(id);
        self
    }

    /// Grants (or finds) the lease and starts the keepalives.
    ///
    /// A grant whose answer arrives so late that the lease could already be
    /// near its expiry fails with `UNAVAILABLE` (and the lease is revoked
    /// in the background); trying again is safe.
    pub async fn build(self) -> Result<Session, Error> {
        match self.existing_lease {
            Some(id) => self.attach(id).await,
            None => self.grant().await,
        }
    }

    async fn grant(self) -> Result<Session, Error> {
        if self.ttl.subsec_nanos() != 0 {
            return Err(Status::invalid_argument(format!(
                "a lease TTL is whole seconds; {:?} is not",
                self.ttl
            ))
            .into());
        }
        let ttl_secs = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX);
        // Every attempt of the grant starts after this instant, so the one
        // that succeeded does too: the lease lives at least until `sent + ttl`.
        let sent = Instant::now();
        let response = self.client.lease_grant(ttl_secs, self.grant_id).await?;
        let id = response.id;
        let Some(ttl) = u64::try_from(response.ttl).ok().filter(|secs| *secs > 0) else {
            return Err(Status::internal(format!(
                "the server granted lease {id} with TTL {}",
                response.ttl
            ))
            .into());
        };
        let ttl = Duration::from_secs(ttl);
        let timing = Timing::for_ttl(ttl);
        let status = SessionStatus::granted(sent, ttl, response.ttl, timing.margin);
        if status.lost_now(Instant::now()).is_some() {
            let client = self.client.clone();
            tokio::spawn(async move { client.lease_revoke(id).await });
            return Err(Status::unavailable(format!(
                "lease {id} was granted {:?} after the request, too late to keep its \
                 {ttl:?} TTL safely; try again",
                sent.elapsed()
            ))
            .into());
        }
        let next_send = sent + timing.interval;
        Ok(Session::start(
            self.client,
            id,
            Some(ttl),
            status,
            next_send,
        ))
    }

    async fn attach(self, id: i64) -> Result<Session, Error> {
        let limit = self.client.config().request_timeout;
        let status = SessionStatus::attaching(Instant::now() + limit);
        let mut session = Session::start(self.client, id, None, status, Instant::now());
        let first = session
            .status
            .wait_for(|status| status.acks() > 0 || status.lost().is_some())
            .await
            .map(|status| (status.lost().cloned(), status.ttl_secs()));
        match first {
            Ok((None, ttl_secs)) => {
                session.ttl = Duration::from_secs(u64::try_from(ttl_secs).unwrap_or(0));
                Ok(session)
            }
            Ok((Some(LostReason::NotFound(message)), _)) => {
                Err(Status::new(Code::NotFound, message).into())
            }
            Ok((Some(LostReason::Expired), _)) => Err(Status::deadline_exceeded(format!(
                "no keepalive for lease {id} was acknowledged within {limit:?}"
            ))
            .into()),
            Ok((Some(LostReason::Closed), _)) | Err(_) => {
                Err(Status::cancelled("the keepalive task ended").into())
            }
        }
    }
}

impl Session {
    fn start(
        client: Client,
        lease_id: i64,
        ttl: Option<Duration>,
        status: SessionStatus,
        next_send: Instant,
    ) -> Session {
        let (stop, stopped) = oneshot::channel();
        let (sender, receiver) = watch::channel(status);
        let task = KeepAliveTask::new(client.clone(), lease_id, ttl, sender, stopped);
        let task = tokio::spawn(task.run(next_send));
        Session {
            client,
            lease_id,
            ttl: ttl.unwrap_or_default(),
            status: receiver,
            stop,
            task,
            claims: Claims::default(),
        }
    }

    /// The lease's id.
    pub fn lease_id(&self) -> i64 {
        self.lease_id
    }

    /// The lease's granted TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The client this session uses.
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn claims(&self) -> &Claims {
        &self.claims
    }

    /// Whether the session is lost; see [`Session::lost`]. Once true,
    /// always true.
    pub fn is_lost(&self) -> bool {
        self.status.borrow().lost_now(Instant::now()).is_some()
    }

    /// A handle that resolves, with the reason, once the client can no
    /// longer be sure the lease is alive: when no keepalive was
    /// acknowledged for the TTL minus `max(ttl / 10, 100 ms)` (measured from
    /// the send of the last acknowledged one), when the server says the
    /// lease is gone, or when the session is closed or dropped.
    pub fn lost(&self) -> Lost {
        Lost::new(self.status.clone())
    }

    /// What the session knows now.
    pub fn status(&self) -> SessionStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every keepalive answer and the loss, for
    /// callers that report each refresh.
    pub fn status_changes(&self) -> watch::Receiver<SessionStatus> {
        self.status.clone()
    }

    /// Stops the keepalives and revokes the lease, which releases every
    /// lock it holds. A lease that is already gone (`NOT_FOUND`) is not an
    /// error.
    pub async fn close(self) -> Result<(), Error> {
        let Session {
            client,
            lease_id,
            stop,
            task,
            ..
        } = self;
        drop(stop);
        // The task ends at its next wake-up, which the dropped sender causes.
        let _ = task.await;
        match client.lease_revoke(lease_id).await {
            Ok(_) => Ok(()),
            Err(err) if err.code() == Code::NotFound => Ok(()),
            Err(err) => Err(err),
        }
    }
}

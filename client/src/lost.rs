//! What a [`Session`](crate::Session) knows about its lease: until when
//! the lease is *certainly* alive, and so when the session counts as lost.
//!
//! The server promises that a lease never expires earlier than its TTL
//! after the last keepalive it acknowledged, counted from any moment before
//! the server received it. So when a keepalive sent at instant `s` is
//! answered OK, the client knows the lease is alive until `s + ttl` by its
//! own monotonic clock, whatever happened on the wire. A session is *lost*
//! a safety margin before that instant, unless a later keepalive moved it;
//! or at once when the server says the lease is gone. Lost is final: a late
//! answer never revives a session, and the keepalives stop, so a holder
//! that gave up is not kept alive by accident.
//!
//! Everything here is bookkeeping over instants passed in (or read once,
//! under the status lock, so that every reader agrees with the keepalive
//! task about whether the deadline has passed); it sends nothing.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// Why a session was lost.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LostReason {
    /// No keepalive was acknowledged in time: the lease may be expiring,
    /// or about to, and the client cannot tell.
    Expired,
    /// The server answered that the lease does not exist (it expired or
    /// was revoked); the server's message.
    NotFound(String),
    /// The session was closed or dropped.
    Closed,
}

/// A cloneable handle that resolves when its session is lost; from
/// [`Session::lost`](crate::Session::lost).
///
/// `.await` it (it implements [`IntoFuture`]), or call [`Lost::wait`] to
/// get a future while keeping the handle. It keeps working after the
/// session is dropped (and then reports [`LostReason::Closed`]).
#[derive(Clone, Debug)]
pub struct Lost {
    status: watch::Receiver<SessionStatus>,
}

/// What a session knows about its lease, as of the last keepalive answer.
#[derive(Clone, Debug)]
pub struct SessionStatus {
    /// Keepalives answered OK so far.
    acks: u64,
    /// The TTL in seconds the last OK answer (or the grant) reported.
    ttl_secs: i64,
    /// The lease is certainly alive until then: the send instant of the
    /// last acknowledged keepalive (or of the grant) plus the TTL.
    alive_until: Instant,
    /// When the session counts as lost unless a keepalive is acknowledged
    /// first: `alive_until` minus the margin.
    lost_at: Instant,
    /// Set once, never cleared.
    lost: Option<LostReason>,
    /// Whether `alive_until` is a promise of the server yet. Not before the
    /// first answer when keeping an existing lease alive; `lost_at` is then
    /// only the limit on waiting for that answer.
    promised: bool,
}

impl Lost {
    pub(crate) fn new(status: watch::Receiver<SessionStatus>) -> Self {
        Lost { status }
    }

    /// Whether the session is lost now.
    pub fn is_lost(&self) -> bool {
        self.reason().is_some()
    }

    /// Why the session is lost, or `None` while it is not.
    pub fn reason(&self) -> Option<LostReason> {
        self.status.borrow().lost_now(Instant::now())
    }

    /// Resolves when the session is lost (at once if it is). Holds its own
    /// clone of the handle, so it borrows nothing.
    pub fn wait(&self) -> impl Future<Output = LostReason> + Send + 'static {
        let mut status = self.status.clone();
        async move {
            loop {
                let lost_at = {
                    let current = status.borrow_and_update();
                    if let Some(reason) = current.lost_now(Instant::now()) {
                        return reason;
                    }
                    current.lost_at
                };
                tokio::select! {
                    changed = status.changed() => {
                        if changed.is_err() {
                            // The task always records why it ended before
                            // it goes; this is only for a task that panicked.
                            return status
                                .borrow()
                                .lost_now(Instant::now())
                                .unwrap_or(LostReason::Closed);
                        }
                    }
                    () = tokio::time::sleep_until(lost_at) => {}
                }
            }
        }
    }
}

impl IntoFuture for Lost {
    type Output = LostReason;
    type IntoFuture = Pin<Box<dyn Future<Output = LostReason> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.wait())
    }
}

impl SessionStatus {
    /// The status right after a grant sent at `sent` was answered.
    pub(crate) fn granted(sent: Instant, ttl: Duration, ttl_secs: i64, margin: Duration) -> Self {
        SessionStatus {
            acks: 0,
            ttl_secs,
            alive_until: sent + ttl,
            lost_at: lost_deadline(sent, ttl, margin),
            lost: None,
            promised: true,
        }
    }

    /// The status of an existing lease before its first keepalive answer,
    /// which must come before `limit`.
    pub(crate) fn attaching(limit: Instant) -> Self {
        SessionStatus {
            acks: 0,
            ttl_secs: 0,
            alive_until: limit,
            lost_at: limit,
            lost: None,
            promised: false,
        }
    }

    /// Records that a keepalive sent at `sent` was answered OK at `now`
    /// with `ttl` (`ttl_secs` as the server said it). Returns false, and
    /// changes nothing but the loss, when the session was lost before the
    /// answer came: a late answer never revives a session.
    pub(crate) fn ack(
        &mut self,
        now: Instant,
        sent: Instant,
        ttl: Duration,
        ttl_secs: i64,
        margin: Duration,
    ) -> bool {
        if self.lost_now(now).is_some() {
            self.lose(LostReason::Expired);
            return false;
        }
        self.acks += 1;
        self.ttl_secs = ttl_secs;
        let until = sent + ttl;
        if !self.promised || until > self.alive_until {
            self.alive_until = until;
            self.lost_at = lost_deadline(sent, ttl, margin);
            self.promised = true;
        }
        true
    }

    /// Marks the session lost, keeping the first reason.
    pub(crate) fn lose(&mut self, reason: LostReason) {
        self.lost.get_or_insert(reason);
    }

    /// Why the session is lost at `now`, if it is: a recorded reason, or
    /// the clock past `lost_at`.
    pub(crate) fn lost_now(&self, now: Instant) -> Option<LostReason> {
        match &self.lost {
            Some(reason) => Some(reason.clone()),
            None if now >= self.lost_at => Some(LostReason::Expired),
            None => None,
        }
    }

    /// When the session will count as lost unless a keepalive is
    /// acknowledged first.
    pub(crate) fn lost_at(&self) -> Instant {
        self.lost_at
    }

    /// Keepalives answered OK so far.
    pub fn acks(&self) -> u64 {
        self.acks
    }

    /// The TTL in seconds the last OK answer reported (the grant's before
    /// the first keepalive).
    pub fn ttl_secs(&self) -> i64 {
        self.ttl_secs
    }

    /// Until when the lease is certainly alive, by this process's
    /// monotonic clock.
    pub fn alive_until(&self) -> Instant {
        self.alive_until
    }

    /// Why the session was lost, once the keepalive task recorded it. (For
    /// the loss as of now, clock included, use [`Session::is_lost`](crate::Session::is_lost) or
    /// [`Lost::reason`].)
    pub fn lost(&self) -> Option<&LostReason> {
        self.lost.as_ref()
    }
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LostReason::Expired => {
                f.write_str("no keepalive was acknowledged in time; the lease may have expired")
            }
            LostReason::NotFound(message) if message.is_empty() => {
                f.write_str("the lease was not found (expired or revoked)")
            }
            LostReason::NotFound(message) => write!(f, "the lease was not found: {message}"),
            LostReason::Closed => f.write_str("the session was closed"),
        }
    }
}

/// The instant a session counts as lost when the last keepalive the server
/// acknowledged was sent at `acked_send`: the server keeps the lease until
/// at least `acked_send + ttl`, and the client gives up `margin` earlier to
/// leave its holder time to stop.
pub(crate) fn lost_deadline(acked_send: Instant, ttl: Duration, margin: Duration) -> Instant {
    acked_send + ttl.saturating_sub(margin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keepalive::Timing;

    const TTL: Duration = Duration::from_secs(3);

    fn margin() -> Duration {
        Timing::for_ttl(TTL).margin
    }

    #[test]
    fn the_deadline_is_the_acked_send_plus_ttl_minus_the_margin() {
        let sent = Instant::now();
        assert_eq!(margin(), Duration::from_millis(300));
        assert_eq!(
            lost_deadline(sent, TTL, margin()),
            sent + Duration::from_millis(2700)
        );
        // The margin never exceeds the TTL.
        assert_eq!(lost_deadline(sent, TTL, 2 * TTL), sent);
    }

    #[test]
    fn an_ack_moves_the_deadline_to_its_send_instant() {
        let t0 = Instant::now();
        let mut status = SessionStatus::granted(t0, TTL, 3, margin());
        let sent = t0 + Duration::from_secs(1);
        assert!(status.ack(sent + Duration::from_millis(5), sent, TTL, 3, margin()));
        assert_eq!(status.acks(), 1);
        // Measured from the send, not from the answer.
        assert_eq!(status.alive_until(), sent + TTL);
        assert_eq!(status.lost_at(), sent + Duration::from_millis(2700));
        assert_eq!(status.lost_now(sent + Duration::from_millis(2699)), None);
        assert_eq!(
            status.lost_now(sent + Duration::from_millis(2700)),
            Some(LostReason::Expired)
        );
    }

    #[test]
    fn an_older_ack_never_moves_the_deadline_back() {
        let t0 = Instant::now();
        let mut status = SessionStatus::granted(t0 + TTL, TTL, 3, margin());
        let before = status.lost_at();
        assert!(status.ack(t0 + TTL, t0, TTL, 3, margin()));
        assert_eq!(status.lost_at(), before);
    }

    #[test]
    fn a_late_answer_does_not_revive_a_lost_session() {
        let t0 = Instant::now();
        let mut status = SessionStatus::granted(t0, TTL, 3, margin());
        let late = t0 + TTL;
        assert!(!status.ack(late, late - Duration::from_millis(10), TTL, 3, margin()));
        assert_eq!(status.lost(), Some(&LostReason::Expired));
        assert_eq!(status.acks(), 0);
    }

    #[test]
    fn the_first_reason_is_kept() {
        let mut status = SessionStatus::granted(Instant::now(), TTL, 3, margin());
        status.lose(LostReason::NotFound("lease 7 not found".to_owned()));
        status.lose(LostReason::Closed);
        assert_eq!(
            status.lost_now(Instant::now()),
            Some(LostReason::NotFound("lease 7 not found".to_owned()))
        );
    }

    #[test]
    fn an_existing_lease_takes_the_deadline_of_its_first_answer() {
        let t0 = Instant::now();
        let mut status = SessionStatus::attaching(t0 + Duration::from_secs(5));
        let sent = t0 + Duration::from_millis(10);
        // The first answer may bring the deadline forward.
        assert!(status.ack(
            sent,
            sent,
            Duration::from_secs(2),
            2,
            Duration::from_millis(200)
        ));
        assert_eq!(status.lost_at(), sent + Duration::from_millis(1800));
    }

    #[tokio::test(start_paused = true)]
    async fn lost_fires_at_the_deadline_by_the_clock_alone() {
        let t0 = Instant::now();
        let (sender, receiver) = watch::channel(SessionStatus::granted(t0, TTL, 3, margin()));
        let lost = Lost { status: receiver };
        let waiter = tokio::spawn(lost.clone().into_future());
        tokio::time::sleep(Duration::from_millis(2699)).await;
        assert!(!lost.is_lost());
        assert!(!waiter.is_finished());
        // An acknowledged keepalive sent at 1 s moves the deadline to 3.7 s.
        sender.send_modify(|status| {
            status.ack(
                Instant::now(),
                t0 + Duration::from_secs(1),
                TTL,
                3,
                margin(),
            );
        });
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(!lost.is_lost());
        tokio::time::sleep(Duration::from_millis(101)).await;
        assert_eq!(lost.reason(), Some(LostReason::Expired));
        assert_eq!(waiter.await.unwrap(), LostReason::Expired);
    }

    #[tokio::test(start_paused = true)]
    async fn lost_fires_when_the_task_goes() {
        let (sender, receiver) =
            watch::channel(SessionStatus::granted(Instant::now(), TTL, 3, margin()));
        let lost = Lost { status: receiver };
        drop(sender);
        assert_eq!(lost.await, LostReason::Closed);
    }
}

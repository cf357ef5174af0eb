//! The bookkeeping that lets a long-lived stream (a watch, an observe) be
//! opened again on another member without a gap and without a repeat:
//! [`Resume`], the revision the next stream starts from, and [`Reconnect`],
//! which member to try next, how long to pause, and when to give up.
//!
//! Both are pure: instants are passed in, nothing is sent or awaited here,
//! so every rule is tested with plain numbers.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;

use tokio::time::Instant;
use tonic::Status;

use crate::{ClientConfig, Error};

/// A stream that stayed open this long proved that its member works: when
/// it breaks, the failover starts afresh (first endpoint pause 0, backoff
/// reset, a new give-up deadline) instead of continuing the last run.
pub(crate) const STABLE_STREAM: Duration = Duration::from_secs(1);

/// Where a re-created stream starts so that it misses nothing and repeats
/// nothing.
///
/// The rule is one number, `next`: every revision below it has been
/// delivered or is known to hold nothing for the stream. A new stream asks
/// for `start_revision = next`, and a batch below `next` (a member that
/// replays from an earlier point than asked, or a batch already delivered
/// by the previous member) is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Resume {
    /// The first revision not yet accounted for; 0 until the first stream
    /// says where it started, when no start revision was given (0 asks the
    /// server for "changes after now").
    next: i64,
}

impl Resume {
    /// Bookkeeping for a stream asked to start at `start_revision` (0:
    /// from now).
    pub(crate) fn new(start_revision: i64) -> Self {
        Resume {
            next: start_revision.max(0),
        }
    }

    /// The start revision to ask the next stream for.
    pub(crate) fn start_revision(&self) -> i64 {
        self.next
    }

    /// A stream was created and promises every change after `revision`
    /// (a watch's `created` answer). When the stream was asked for "from
    /// now", this fixes what "now" was, so a stream re-created later asks
    /// for `revision + 1` and does not skip what happened in between. An
    /// explicit start revision is kept: the member replays from it.
    pub(crate) fn created(&mut self, revision: i64) {
        if self.next == 0 {
            self.next = revision.max(0).saturating_add(1);
        }
    }

    /// The member says nothing up to `revision` is left to deliver (a
    /// progress notification). Moving past it keeps the resume point inside
    /// the member's history window while the watched keys are quiet.
    pub(crate) fn progress(&mut self, revision: i64) {
        self.next = self.next.max(revision.saturating_add(1));
    }

    /// A batch of revision `revision` arrived: whether to deliver it. A
    /// delivered batch moves the resume point past it; one below the resume
    /// point was delivered already (or precedes the start) and is dropped.
    pub(crate) fn accept(&mut self, revision: i64) -> bool {
        if revision < self.next {
            return false;
        }
        self.next = revision.saturating_add(1);
        true
    }
}

/// What to do after a failed attempt or a broken stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Try the next endpoint after this pause (zero inside a round).
    Retry(Duration),
    /// Stop: retries are off, or no member took the stream within the
    /// reconnect timeout.
    GiveUp,
}

/// Failover between endpoints for one long-lived stream: the same
/// round-robin and doubling backoff as the request retry loop, with a
/// deadline counted from the first failure of a run rather than from a
/// request.
#[derive(Clone, Debug)]
pub(crate) struct Reconnect {
    /// The endpoint to use next, as an index that wraps around them.
    endpoint: usize,
    /// How many endpoints there are (at least one).
    members: usize,
    /// Attempts that failed in a row since the stream last worked.
    failures: usize,
    /// The pause after the next full round of failures.
    backoff: Duration,
    backoff_initial: Duration,
    backoff_max: Duration,
    /// How long a run of failures may last before giving up.
    limit: Duration,
    /// Whether to try again at all (`ClientConfig::retry`).
    retry: bool,
    /// When the current run of failures began; `None` while the stream
    /// works.
    failing_since: Option<Instant>,
}

impl Reconnect {
    /// Starts at endpoint `first` of `members`, with the retry settings of
    /// `config`.
    pub(crate) fn new(first: usize, members: usize, config: &ClientConfig) -> Self {
        Reconnect {
            endpoint: first,
            members: members.max(1),
            failures: 0,
            backoff: config.backoff_initial,
            backoff_initial: config.backoff_initial,
            backoff_max: config.backoff_max,
            limit: config.reconnect_timeout.unwrap_or(config.request_timeout),
            retry: config.retry,
            failing_since: None,
        }
    }

    /// The endpoint to try now.
    pub(crate) fn endpoint(&self) -> usize {
        self.endpoint
    }

    /// The stream works (it delivered something, or stayed up long
    /// enough): the next failure starts a new run.
    pub(crate) fn connected(&mut self) {
        self.failures = 0;
        self.backoff = self.backoff_initial;
        self.failing_since = None;
    }

    /// An attempt that began at `started` failed at `now` (it could not
    /// open the stream, or the stream broke): move to the next endpoint and
    /// say whether, and after what pause, to try it.
    pub(crate) fn failed(&mut self, started: Instant, now: Instant) -> Next {
        let since = *self.failing_since.get_or_insert(started);
        self.endpoint = self.endpoint.wrapping_add(1);
        self.failures += 1;
        if !self.retry || now.saturating_duration_since(since) >= self.limit {
            return Next::GiveUp;
        }
        if !self.failures.is_multiple_of(self.members) {
            return Next::Retry(Duration::ZERO);
        }
        let pause = self.backoff;
        self.backoff = (self.backoff * 2).min(self.backoff_max);
        // Never pause past the deadline: the last attempt gets to run.
        let left = self
            .limit
            .saturating_sub(now.saturating_duration_since(since));
        Next::Retry(pause.min(left))
    }

    /// A stream opened at `opened_at` broke at `now`. A stream that stayed
    /// up for [`STABLE_STREAM`] counts as having worked, so the failover
    /// starts afresh; one that broke at once continues the run that opened
    /// it, so a member that accepts streams and drops them at once cannot
    /// make the client spin.
    pub(crate) fn broke(&mut self, opened_at: Instant, now: Instant) -> Next {
        if now.saturating_duration_since(opened_at) >= STABLE_STREAM {
            self.connected();
        }
        self.failed(now, now)
    }

    /// The error that ends a stream that gave up after `last` (from
    /// `endpoint`): `last` as is when retries are off, else
    /// `DEADLINE_EXCEEDED` naming it.
    pub(crate) fn give_up(&self, what: &str, endpoint: &str, last: Error) -> Error {
        if !self.retry {
            return last;
        }
        Status::deadline_exceeded(format!(
            "no member took the {what} within {:?}; last error from {endpoint}: {last}",
            self.limit
        ))
        .into()
    }
}

/// The items a resuming stream produces until its first error.
pub(crate) trait Source: Send + 'static {
    /// What the stream yields.
    type Item: Send + 'static;
    /// The next item, reconnecting as needed; an error ends the stream.
    fn next_item(&mut self) -> impl Future<Output = Result<Self::Item, Error>> + Send;
}

/// A stream boxed for a public wrapper type.
pub(crate) type Items<T> = Pin<Box<dyn Stream<Item = Result<T, Error>> + Send>>;

/// The items of `source` as a stream whose last item is the first error.
pub(crate) fn until_error<S: Source>(source: S) -> Items<S::Item> {
    Box::pin(futures::stream::unfold(Some(source), |source| async move {
        let mut source = source?;
        match source.next_item().await {
            Ok(item) => Some((Ok(item), Some(source))),
            Err(err) => Some((Err(err), None)),
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_stream_from_now_resumes_after_the_created_revision() {
        let mut resume = Resume::new(0);
        assert_eq!(resume.start_revision(), 0);
        resume.created(41);
        // Broken before any event: the next member replays from 42, so the
        // changes made while reconnecting are not skipped.
        assert_eq!(resume.start_revision(), 42);
        // A second `created` (the re-created stream) changes nothing.
        resume.created(50);
        assert_eq!(resume.start_revision(), 42);
    }

    #[test]
    fn an_explicit_start_is_kept_when_the_stream_is_created() {
        let mut resume = Resume::new(10);
        resume.created(41);
        assert_eq!(resume.start_revision(), 10);
        assert!(resume.accept(10));
        assert_eq!(resume.start_revision(), 11);
    }

    #[test]
    fn delivered_batches_move_the_resume_point_and_repeats_are_dropped() {
        let mut resume = Resume::new(0);
        resume.created(4);
        assert!(resume.accept(5));
        assert!(resume.accept(7));
        assert_eq!(resume.start_revision(), 8);
        // The next member replays what the last one already sent.
        assert!(!resume.accept(5));
        assert!(!resume.accept(7));
        assert!(resume.accept(8));
        assert_eq!(resume.start_revision(), 9);
    }

    #[test]
    fn batches_before_the_start_are_dropped() {
        let mut resume = Resume::new(0);
        resume.created(20);
        assert!(!resume.accept(20));
        assert!(!resume.accept(3));
        assert!(resume.accept(21));
    }

    #[test]
    fn progress_moves_the_resume_point_but_never_back() {
        let mut resume = Resume::new(0);
        resume.created(4);
        resume.progress(100);
        assert_eq!(resume.start_revision(), 101);
        resume.progress(50);
        assert_eq!(resume.start_revision(), 101);
        // Nothing at or below a progress revision is delivered again.
        assert!(!resume.accept(100));
        assert!(resume.accept(101));
    }

    #[test]
    fn a_created_revision_of_zero_still_fixes_the_start() {
        let mut resume = Resume::new(0);
        resume.created(0);
        assert_eq!(resume.start_revision(), 1);
        let mut negative = Resume::new(-5);
        assert_eq!(negative.start_revision(), 0);
        negative.created(-1);
        assert_eq!(negative.start_revision(), 1);
    }

    fn reconnect(members: usize) -> Reconnect {
        let config = ClientConfig::new(["a:1"])
            .request_timeout(Duration::from_secs(5))
            .backoff(25 * MS, 100 * MS);
        Reconnect::new(0, members, &config)
    }

    #[test]
    fn failover_goes_round_robin_and_pauses_after_each_round() {
        let mut reconnect = reconnect(3);
        let t0 = Instant::now();
        let mut pauses = Vec::new();
        for i in 0..9 {
            let now = t0 + i * MS;
            match reconnect.failed(now, now) {
                Next::Retry(pause) => pauses.push(pause),
                Next::GiveUp => panic!("gave up after {i} failures"),
            }
        }
        assert_eq!(reconnect.endpoint(), 9);
        let zero = Duration::ZERO;
        assert_eq!(
            pauses,
            [
                zero,
                zero,
                25 * MS,
                zero,
                zero,
                50 * MS,
                zero,
                zero,
                100 * MS
            ]
        );
    }

    #[test]
    fn gives_up_once_a_run_of_failures_outlasts_the_limit() {
        let mut reconnect = reconnect(2);
        let last = Error::from(Status::unavailable("no leader"));
        assert_eq!(
            reconnect.give_up("watch", "a:1", last).to_string(),
            "DeadlineExceeded: no member took the watch within 5s; last error from a:1: \
             Unavailable: no leader"
        );
        let t0 = Instant::now();
        // The run starts when its first attempt started, not when it failed.
        assert_eq!(
            reconnect.failed(t0, t0 + 3 * MS),
            Next::Retry(Duration::ZERO)
        );
        let late = t0 + Duration::from_millis(4990);
        // A pause never runs past the deadline.
        assert_eq!(reconnect.failed(late, late), Next::Retry(10 * MS));
        let after = t0 + Duration::from_secs(5);
        assert_eq!(reconnect.failed(after, after), Next::GiveUp);
    }

    #[test]
    fn working_again_starts_a_new_run() {
        let mut reconnect = reconnect(1);
        let t0 = Instant::now();
        assert_eq!(reconnect.failed(t0, t0), Next::Retry(25 * MS));
        assert_eq!(reconnect.failed(t0, t0), Next::Retry(50 * MS));
        reconnect.connected();
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(reconnect.failed(t1, t1), Next::Retry(25 * MS));
    }

    #[test]
    fn only_a_stream_that_stayed_up_resets_the_run() {
        let mut reconnect = reconnect(1);
        let t0 = Instant::now();
        assert_eq!(reconnect.failed(t0, t0), Next::Retry(25 * MS));
        // Opened, and dropped at once: the run goes on, the backoff grows.
        assert_eq!(reconnect.broke(t0, t0 + MS), Next::Retry(50 * MS));
        // Up for a second: a fresh run.
        let opened = t0 + 2 * MS;
        assert_eq!(
            reconnect.broke(opened, opened + STABLE_STREAM),
            Next::Retry(25 * MS)
        );
        // A run that began long ago and never recovered gives up.
        let mut stuck = self::reconnect(1);
        assert_eq!(stuck.failed(t0, t0), Next::Retry(25 * MS));
        let later = t0 + Duration::from_secs(5);
        assert_eq!(stuck.broke(later - MS, later), Next::GiveUp);
    }

    #[test]
    fn without_retries_the_first_failure_is_final() {
        let config = ClientConfig::new(["a:1"]).retry(false);
        let mut reconnect = Reconnect::new(0, 3, &config);
        let t0 = Instant::now();
        assert_eq!(reconnect.failed(t0, t0), Next::GiveUp);
        // The last error is the stream's error, unchanged.
        let last = Error::from(Status::unavailable("connection refused"));
        let err = reconnect.give_up("watch", "a:1", last);
        assert_eq!(err.to_string(), "Unavailable: connection refused");
    }

    #[test]
    fn reconnecting_for_ever() {
        let config = ClientConfig::new(["a:1"]).reconnect_timeout(Duration::MAX);
        let mut reconnect = Reconnect::new(0, 1, &config);
        let t0 = Instant::now();
        let year = Duration::from_secs(365 * 24 * 3600);
        assert!(matches!(reconnect.failed(t0, t0 + year), Next::Retry(_)));
    }
}

//! Waiting for a condition with a deadline, instead of sleeping.
//!
//! A test that sleeps "long enough" is slow when the machine is fast and
//! flaky when it is slow. These helpers poll instead, at most every
//! [`POLL_INTERVAL`], and fail with a message that says what was awaited and
//! what was last seen.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use anyhow::anyhow;
use tokio::time::Instant;

/// The shortest time between the starts of two polls: often enough that a
/// test waits little longer than needed, rarely enough not to load members
/// that are busy electing a leader.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Polls `probe` until it returns `Ok`, and returns that value; gives up
/// after `timeout` with an error naming `what` and the probe's last error.
///
/// A probe that hangs is cut off at the deadline, so `timeout` bounds the
/// whole wait.
///
/// ```no_run
/// # async fn demo(client: fenced_client::Client) -> anyhow::Result<()> {
/// use anyhow::Context as _;
/// let kv = fenced_tests::wait_for(std::time::Duration::from_secs(5), "key k", || async {
///     client.get("k").await?.context("not there yet")
/// })
/// .await?;
/// # Ok(())
/// # }
/// ```
pub async fn wait_for<T, E, F, Fut>(
    timeout: Duration,
    what: &str,
    mut probe: F,
) -> anyhow::Result<T>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_seen = String::from("no check finished");
    loop {
        let poll_started = Instant::now();
        match tokio::time::timeout_at(deadline, probe()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(err)) => last_seen = format!("{err:#}"),
            Err(_) => last_seen.push_str(" (and the check after it did not finish in time)"),
        }
        if Instant::now() >= deadline {
            return Err(anyhow!(
                "timed out after {timeout:?} waiting for {what}; last seen: {last_seen}"
            ));
        }
        tokio::time::sleep_until((poll_started + POLL_INTERVAL).min(deadline)).await;
    }
}

/// Polls `condition` until it is true; gives up after `timeout` with an
/// error naming `what`.
pub async fn wait_until<F, Fut>(
    timeout: Duration,
    what: &str,
    mut condition: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(timeout, what, || {
        let check = condition();
        async move {
            match check.await {
                true => Ok(()),
                false => Err("condition false"),
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn returns_the_first_success() {
        let calls = AtomicU32::new(0);
        let value = wait_for(Duration::from_secs(1), "third call", || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                2 => Ok(7),
                n => Err(format!("call {n}")),
            }
        })
        .await
        .unwrap();
        assert_eq!(value, 7);
    }

    #[tokio::test(start_paused = true)]
    async fn polls_no_faster_than_the_interval_and_reports_the_last_error() {
        let calls = AtomicU32::new(0);
        let started = Instant::now();
        let err = wait_for(Duration::from_secs(1), "nothing", || async {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(format!("attempt {n}"))
        })
        .await
        .unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        let calls = calls.load(Ordering::SeqCst);
        assert!(calls <= 41, "{calls} polls in one second");
        assert!(err.to_string().contains("waiting for nothing"), "{err}");
        assert!(
            err.to_string().contains(&format!("attempt {}", calls - 1)),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_probe_is_cut_off_at_the_deadline() {
        let started = Instant::now();
        let result = wait_until(Duration::from_millis(300), "never", || {
            std::future::pending()
        })
        .await;
        assert!(result.is_err());
        assert_eq!(started.elapsed(), Duration::from_millis(300));
    }
}

//! `fencectl lock NAME [-- CMD ARGS...]`: hold a lock while a command runs,
//! or until a signal.
//!
//! Both forms create a session (a lease kept alive), acquire the lock with
//! it, and on the way out release the lock and revoke the lease.
//!
//! With CMD, the command runs with `FENCED_LOCK_TOKEN`, `FENCED_LOCK_NAME`,
//! `FENCED_LOCK_KEY` and `FENCED_LEASE_ID` in its environment, and fencectl
//! exits with the command's exit code (128 + N when signal N killed it; 127
//! when it could not be found, 126 when it could not be run). If the
//! session is lost first, the command gets SIGTERM and fencectl waits for
//! it. A SIGTERM to fencectl is passed on to the command; SIGINT is not,
//! because Ctrl-C at the terminal already reaches the command (it is in the
//! same foreground process group) and a second copy could cut its own
//! clean-up short.
//!
//! Without CMD, fencectl prints the grant and holds the lock until SIGINT
//! or SIGTERM (exit 0) or until the session is lost (exit 1).

use std::ffi::OsString;
use std::io;
use std::os::unix::process::ExitStatusExt as _;
use std::process::{ExitCode, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use fenced_client::pb::LockMode;
use fenced_client::{Client, LockGuard, LockOptions, Session};
use tokio::process::Command;

use crate::output::Output;
use crate::parse_seconds;
use crate::signals::{self, Stop, StopSignals};

#[derive(Debug, Args)]
pub(crate) struct LockArgs {
    /// The lock's name: 1-256 bytes of A-Z a-z 0-9 . _ - : /
    name: String,
    /// TTL of the session's lease, in whole seconds.
    #[arg(long, value_name = "S", default_value_t = 10)]
    ttl: u64,
    /// Wait at most S seconds for the lock [default: wait forever]. Here it
    /// replaces the global --timeout: the requests of `lock` take 5 s.
    #[arg(long, value_name = "S", value_parser = parse_seconds)]
    timeout: Option<Duration>,
    /// Acquire in shared (reader) mode.
    #[arg(long)]
    shared: bool,
    /// Use the lock as a semaphore of N holders.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    permits: Option<u32>,
    /// After this session's lease expires while holding the lock, keep the
    /// lock unavailable for S seconds.
    #[arg(long, value_name = "S", value_parser = parse_seconds)]
    lock_delay: Option<Duration>,
    /// The command to run while holding the lock, after `--`.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<OsString>,
}

impl LockArgs {
    fn options(&self) -> LockOptions {
        LockOptions {
            mode: if self.shared {
                LockMode::Shared
            } else {
                LockMode::Exclusive
            },
            permits: self.permits,
            wait_timeout: self.timeout,
            try_only: false,
            lock_delay: self.lock_delay,
        }
    }
}

pub(crate) async fn run(
    args: LockArgs,
    client: &Client,
    output: &Output,
) -> anyhow::Result<ExitCode> {
    // From here on SIGINT and SIGTERM come to us, so that every way out
    // goes through the clean-up below.
    let mut signals = StopSignals::new()?;
    let ttl = Duration::from_secs(args.ttl);
    // (`select!` drops the futures before it runs the chosen branch, so the
    // branches may consume what the futures borrowed.)
    let session = tokio::select! {
        session = client.session(ttl) => session.context("creating the session")?,
        signal = signals.recv() => bail!("interrupted by {signal} before the lock was acquired"),
    };
    let guard = tokio::select! {
        guard = session.lock_with(args.name.as_str(), args.options()) => match guard {
            Ok(guard) => guard,
            Err(err) => {
                close_quietly(session).await;
                return Err(err).with_context(|| format!("acquiring lock {}", args.name));
            }
        },
        signal = signals.recv() => {
            close_quietly(session).await;
            bail!("interrupted by {signal} while waiting for lock {}", args.name);
        }
    };
    if args.command.is_empty() {
        hold(session, guard, output, &mut signals).await
    } else {
        run_command(session, guard, &args.command, &mut signals).await
    }
}

/// Without CMD: print the grant and hold the lock until a signal or the loss.
async fn hold(
    session: Session,
    guard: LockGuard,
    output: &Output,
    signals: &mut StopSignals,
) -> anyhow::Result<ExitCode> {
    if let Err(err) = output.lock_granted(&guard) {
        release_and_close(session, guard).await;
        return Err(err.into());
    }
    tokio::select! {
        reason = session.lost() => {
            let name = guard.name().to_owned();
            drop(guard);
            close_quietly(session).await;
            bail!("lock {name} lost: {reason}")
        }
        _ = signals.recv() => {
            release(guard).await;
            session.close().await.context("revoking the session's lease")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// With CMD: run it under the lock; see the module documentation.
async fn run_command(
    session: Session,
    guard: LockGuard,
    command: &[OsString],
    signals: &mut StopSignals,
) -> anyhow::Result<ExitCode> {
    let program = command[0].to_string_lossy().into_owned();
    let spawned = Command::new(&command[0])
        .args(&command[1..])
        .env("FENCED_LOCK_TOKEN", guard.token().to_string())
        .env("FENCED_LOCK_NAME", guard.name())
        .env(
            "FENCED_LOCK_KEY",
            String::from_utf8_lossy(guard.key()).as_ref(),
        )
        .env("FENCED_LEASE_ID", guard.lease().to_string())
        .stdin(Stdio::inherit())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) => {
            release_and_close(session, guard).await;
            eprintln!("Error: running {program}: {err}");
            return Ok(ExitCode::from(spawn_failure_code(&err)));
        }
    };
    let lost = session.lost();
    let mut lost_reported = false;
    let status = loop {
        tokio::select! {
            status = child.wait() => {
                break status.with_context(|| format!("waiting for {program}"))?;
            }
            reason = lost.wait(), if !lost_reported => {
                lost_reported = true;
                eprintln!(
                    "fencectl: lock {} lost: {reason}; sending SIGTERM to {program}",
                    guard.name()
                );
                pass_sigterm(&child, &program);
            }
            signal = signals.recv() => match signal {
                Stop::Terminate => pass_sigterm(&child, &program),
                // The command got Ctrl-C from the terminal itself.
                Stop::Interrupt => {}
            },
        }
    };
    if lost_reported {
        drop(guard);
        close_quietly(session).await;
    } else {
        release_and_close(session, guard).await;
    }
    Ok(ExitCode::from(exit_code(status)))
}

fn pass_sigterm(child: &tokio::process::Child, program: &str) {
    // `id` is None once the child has been reaped: then it is gone anyway.
    if let Some(pid) = child.id()
        && let Err(err) = signals::terminate(pid)
    {
        eprintln!("fencectl: sending SIGTERM to {program}: {err}");
    }
}

/// Releases the lock and revokes the lease, reporting failures on stderr
/// only: the command's exit code is what fencectl exits with.
async fn release_and_close(session: Session, guard: LockGuard) {
    release(guard).await;
    if let Err(err) = session.close().await {
        eprintln!("fencectl: revoking lease: {err}");
    }
}

/// Releases the lock, reporting a failure on stderr only: the lease's
/// revoke that follows releases it anyway.
async fn release(guard: LockGuard) {
    let name = guard.name().to_owned();
    if let Err(err) = guard.release().await {
        eprintln!("fencectl: releasing lock {name}: {err}");
    }
}

/// Revokes the lease of a session that failed or was lost, if the cluster
/// still knows it; nothing to report either way. Waits at most the TTL
/// (the revoke itself gives up after the request timeout): by then the
/// lease ends by itself, and a cluster that does not answer must not hold
/// up the exit any longer.
pub(crate) async fn close_quietly(session: Session) {
    let ttl = session.ttl();
    let _ = tokio::time::timeout(ttl, session.close()).await;
}

/// The exit code that reports `status` the way a shell does.
fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(255),
        (None, None) => 1,
    }
}

/// The exit code for a command that could not be started, as a shell
/// reports it: 127 not found, 126 found but not runnable.
fn spawn_failure_code(err: &io::Error) -> u8 {
    match err.kind() {
        io::ErrorKind::NotFound => 127,
        _ => 126,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        // Killed by SIGTERM (15).
        assert_eq!(exit_code(ExitStatus::from_raw(15)), 143);
        let missing = io::Error::from(io::ErrorKind::NotFound);
        assert_eq!(spawn_failure_code(&missing), 127);
        let denied = io::Error::from(io::ErrorKind::PermissionDenied);
        assert_eq!(spawn_failure_code(&denied), 126);
    }

    #[test]
    fn arguments_become_lock_options() {
        use clap::Parser as _;
        let cli = crate::Cli::try_parse_from([
            "fencectl",
            "lock",
            "db",
            "--shared",
            "--permits",
            "3",
            "--timeout",
            "2.5",
            "--lock-delay",
            "1",
            "--",
            "sh",
            "-c",
            "exit 3",
        ])
        .unwrap();
        let crate::Command::Lock(args) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(
            args.options(),
            LockOptions {
                mode: LockMode::Shared,
                permits: Some(3),
                wait_timeout: Some(Duration::from_millis(2500)),
                try_only: false,
                lock_delay: Some(Duration::from_secs(1)),
            }
        );
        assert_eq!(args.command, ["sh", "-c", "exit 3"]);
        assert_eq!(args.ttl, 10);
        assert_eq!(cli.timeout, Some(Duration::from_millis(2500)));
    }

    /// `lock --timeout` and the global `--timeout` are one argument (one
    /// clap id): given before or after `lock`, it is the wait (and `main`
    /// gives `lock` the default request timeout); other commands keep the
    /// global meaning.
    #[test]
    fn timeout_is_one_argument_for_lock() {
        use clap::Parser as _;
        for argv in [
            &["fencectl", "--timeout", "2", "lock", "db"][..],
            &["fencectl", "lock", "db", "--timeout", "2"][..],
        ] {
            let cli = crate::Cli::try_parse_from(argv).unwrap();
            assert_eq!(cli.timeout, Some(Duration::from_secs(2)), "{argv:?}");
            let crate::Command::Lock(args) = cli.command else {
                panic!("parsed as {:?}", cli.command);
            };
            assert_eq!(args.timeout, Some(Duration::from_secs(2)), "{argv:?}");
        }
        let cli = crate::Cli::try_parse_from(["fencectl", "get", "k", "--timeout", "2"]).unwrap();
        assert_eq!(cli.timeout, Some(Duration::from_secs(2)));
    }

    #[test]
    fn the_wait_defaults_to_forever() {
        use clap::Parser as _;
        let cli = crate::Cli::try_parse_from(["fencectl", "lock", "db"]).unwrap();
        assert_eq!(cli.timeout, None);
        let crate::Command::Lock(args) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(args.options(), LockOptions::default());
        assert!(args.command.is_empty());
    }
}

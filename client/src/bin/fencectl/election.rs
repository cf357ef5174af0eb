//! `fencectl elect`, `leader` and `observe`: campaigning in an election,
//! asking who leads it, and following it.
//!
//! `elect NAME VALUE` creates a session (a lease kept alive), campaigns
//! with it, prints once elected and leads until SIGINT or SIGTERM (then it
//! resigns and revokes the lease: exit 0) or until the session is lost
//! (exit 1). A signal while still campaigning withdraws the candidacy and
//! exits 1, like `lock`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use fenced_client::{Client, Leadership, Session};
use futures::StreamExt as _;

use crate::lock::close_quietly;
use crate::output::Output;
use crate::signals::StopSignals;

#[derive(Debug, Args)]
pub(crate) struct ElectArgs {
    /// The election's name: 1-256 bytes of A-Z a-z 0-9 . _ - : /
    name: String,
    /// The value to publish as the leader's once elected.
    #[arg(allow_hyphen_values = true)]
    value: String,
    /// TTL of the session's lease, in whole seconds.
    #[arg(long, value_name = "S", default_value_t = 10)]
    ttl: u64,
}

pub(crate) async fn elect(
    args: ElectArgs,
    client: &Client,
    output: &Output,
) -> anyhow::Result<ExitCode> {
    // From here on SIGINT and SIGTERM come to us, so that every way out
    // goes through the clean-up below.
    let mut signals = StopSignals::new()?;
    let ttl = Duration::from_secs(args.ttl);
    let session = tokio::select! {
        session = client.session(ttl) => session.context("creating the session")?,
        signal = signals.recv() => bail!("interrupted by {signal} before campaigning"),
    };
    let leadership = tokio::select! {
        leadership = session.campaign(args.name.as_str(), args.value.as_bytes()) => {
            match leadership {
                Ok(leadership) => leadership,
                Err(err) => {
                    close_quietly(session).await;
                    return Err(err).with_context(|| format!("campaigning in {}", args.name));
                }
            }
        }
        signal = signals.recv() => {
            // Dropping the campaign withdraws the candidacy; the revoke
            // that follows removes it too.
            close_quietly(session).await;
            bail!("interrupted by {signal} while campaigning in {}", args.name);
        }
    };
    if let Err(err) = output.elected(&leadership, args.value.as_bytes()) {
        resign_and_close(session, leadership).await;
        return Err(err.into());
    }
    tokio::select! {
        reason = leadership.lost() => {
            drop(leadership);
            close_quietly(session).await;
            bail!("leadership of {} lost: {reason}", args.name)
        }
        _ = signals.recv() => {
            resign(leadership).await;
            session.close().await.context("revoking the session's lease")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `leader NAME`: one line (or object), also when there is no leader.
pub(crate) async fn leader(client: &Client, output: &Output, name: &str) -> anyhow::Result<()> {
    let leader = client.leader(name).await?;
    output.leader(name, leader.as_ref())?;
    Ok(())
}

/// `observe NAME`: the state, then every change, until a signal (exit 0) or
/// until the stream fails (exit 1).
pub(crate) async fn observe(client: &Client, output: &Output, name: &str) -> anyhow::Result<()> {
    let mut signals = StopSignals::new()?;
    let mut observations = tokio::select! {
        observations = client.observe(name) => {
            observations.with_context(|| format!("observing {name}"))?
        }
        _ = signals.recv() => return Ok(()),
    };
    loop {
        tokio::select! {
            observation = observations.next() => match observation {
                Some(Ok(observation)) => output.observation(name, &observation)?,
                Some(Err(err)) => return Err(err).with_context(|| format!("observing {name}")),
                None => bail!("the observe stream of {name} ended"),
            },
            _ = signals.recv() => return Ok(()),
        }
    }
}

/// Resigns and revokes the lease, reporting failures on stderr only.
async fn resign_and_close(session: Session, leadership: Leadership) {
    resign(leadership).await;
    if let Err(err) = session.close().await {
        eprintln!("fencectl: revoking lease: {err}");
    }
}

/// Resigns, reporting a failure on stderr only: the lease's revoke that
/// follows ends the leadership anyway.
async fn resign(leadership: Leadership) {
    let name = leadership.name().to_owned();
    if let Err(err) = leadership.resign().await {
        eprintln!("fencectl: resigning from {name}: {err}");
    }
}

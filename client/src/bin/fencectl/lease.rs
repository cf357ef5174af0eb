//! `fencectl lease ...`: grant, keepalive, revoke, list, ttl.

use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;
use fenced_client::Client;

use crate::output::Output;
use crate::parse_lease_id;
use crate::signals::StopSignals;

#[derive(Debug, Subcommand)]
pub(crate) enum LeaseCommand {
    /// Grant a lease; prints its id and TTL.
    Grant {
        /// The lease's time to live, in whole seconds.
        #[arg(value_name = "TTL_SECONDS")]
        ttl: i64,
    },
    /// Keep a lease alive until Ctrl-C or SIGTERM, printing each refresh.
    /// Fails (exit 1) when the lease is lost.
    Keepalive {
        /// The lease id (decimal, or hex with 0x).
        #[arg(value_parser = parse_lease_id)]
        id: i64,
    },
    /// Revoke a lease: delete its keys and release its locks now.
    Revoke {
        /// The lease id (decimal, or hex with 0x).
        #[arg(value_parser = parse_lease_id)]
        id: i64,
    },
    /// List the live leases, one per line.
    List,
    /// Show a lease's remaining and granted TTL.
    Ttl {
        /// The lease id (decimal, or hex with 0x).
        #[arg(value_parser = parse_lease_id)]
        id: i64,
        /// Also list the keys attached to the lease.
        #[arg(long)]
        keys: bool,
    },
}

pub(crate) async fn run(
    command: LeaseCommand,
    client: &Client,
    output: &Output,
) -> anyhow::Result<ExitCode> {
    match command {
        LeaseCommand::Grant { ttl } => {
            let response = client.lease_grant(ttl, 0).await?;
            output.lease_granted(response.id, response.ttl)?;
        }
        LeaseCommand::Keepalive { id } => keepalive(client, output, id).await?,
        LeaseCommand::Revoke { id } => {
            let response = client.lease_revoke(id).await?;
            output.lease_revoked(id, &response)?;
        }
        LeaseCommand::List => {
            let response = client.lease_list().await?;
            output.leases(&response.leases)?;
        }
        LeaseCommand::Ttl { id, keys } => {
            let response = client.lease_time_to_live(id, keys).await?;
            // etcd answers an unknown lease with TTL -1 rather than an error;
            // treat that the same as NOT_FOUND.
            if response.ttl < 0 {
                bail!("lease {id} not found (expired or revoked)");
            }
            output.lease_ttl(&response, keys)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Keeps lease `id` alive with a session on it, printing every answer,
/// until a signal (success, the lease is left to expire) or until the
/// session is lost (failure).
async fn keepalive(client: &Client, output: &Output, id: i64) -> anyhow::Result<()> {
    let mut signals = StopSignals::new()?;
    let session = tokio::select! {
        session = client.session_builder().existing_lease(id).build() => session?,
        _ = signals.recv() => return Ok(()),
    };
    let lost = session.lost();
    let mut changes = session.status_changes();
    let mut printed = 0;
    loop {
        let (acks, ttl) = {
            let status = changes.borrow_and_update();
            (status.acks(), status.ttl_secs())
        };
        if acks > printed {
            output.lease_keepalive(id, ttl)?;
            printed = acks;
        }
        if let Some(reason) = lost.reason() {
            bail!("lease {id} lost: {reason}");
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    bail!("the keepalive of lease {id} ended unexpectedly");
                }
            }
            _ = lost.wait() => {}
            _ = signals.recv() => return Ok(()),
        }
    }
}

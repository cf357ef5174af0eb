//! `fencectl`: the command-line client for fenced.
//!
//! Parsing lives in [`Cli`], one async function per command does the work,
//! and everything printed to stdout goes through `output::Output`, so the
//! simple and JSON formats are defined in one place. The commands that hold
//! or follow something have their own files: `lease` (with `lease
//! keepalive`), `lock`, `election` (`elect`, `leader`, `observe`) and
//! `watch`; `signals` is the SIGINT/SIGTERM handling they share.
//!
//! Exit codes: 0 success, 1 the operation failed (message on stderr), 2 the
//! command line was wrong (clap's usage errors, and endpoints that cannot be
//! parsed). `lock NAME -- CMD` exits with CMD's code instead (see
//! `lock.rs`).

#[path = "fencectl/election.rs"]
mod election;
#[path = "fencectl/lease.rs"]
mod lease;
#[path = "fencectl/lock.rs"]
mod lock;
#[path = "fencectl/output.rs"]
mod output;
#[path = "fencectl/signals.rs"]
mod signals;
#[path = "fencectl/watch.rs"]
mod watch;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{CommandFactory as _, Parser, Subcommand, error::ErrorKind};
use fenced_client::pb::{DeleteRangeRequest, PutRequest, RangeRequest};
use fenced_client::{Client, ClientConfig, DEFAULT_REQUEST_TIMEOUT};

use crate::election::ElectArgs;
use crate::lease::LeaseCommand;
use crate::lock::LockArgs;
use crate::output::{Format, Output, StatusRow};
use crate::watch::WatchArgs;

/// Command-line client for fenced.
#[derive(Debug, Parser)]
#[command(name = "fencectl", version)]
struct Cli {
    /// Client addresses of the members, comma-separated (host:port or http://host:port).
    #[arg(
        long,
        global = true,
        env = "FENCED_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7379"
    )]
    endpoints: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Simple)]
    output: Format,
    /// Time one request may take, retries on other endpoints included, in
    /// seconds [default: 5]. For `watch` and `observe` it is also how long a
    /// broken stream may take to find a member that takes it back. For
    /// `lock` it is how long to wait for the lock instead, and requests take
    /// the default.
    // `lock --timeout` shares this argument (same clap id; clap then does not
    // add the global one to `lock`, and a value given before or after `lock`
    // lands in both). No clap default, since a default would become the
    // lock's wait, which must default to "forever".
    #[arg(long, global = true, value_name = "S", value_parser = parse_seconds)]
    timeout: Option<Duration>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a key.
    Put {
        key: String,
        #[arg(allow_hyphen_values = true)]
        value: String,
        /// Attach the key to this lease (decimal, or hex with 0x).
        #[arg(long, value_parser = parse_lease_id)]
        lease: Option<i64>,
    },
    /// Read a key, or every key under a prefix.
    Get {
        key: String,
        /// Treat KEY as a prefix.
        #[arg(long)]
        prefix: bool,
        /// Answer from the member's local state, without a linearizable read.
        #[arg(long)]
        serializable: bool,
        /// Return at most N keys.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(0..))]
        limit: Option<i64>,
    },
    /// Delete a key, or every key under a prefix; prints how many were deleted.
    Del {
        key: String,
        /// Treat KEY as a prefix.
        #[arg(long)]
        prefix: bool,
    },
    /// Show the status of every endpoint, one row each.
    Status,
    /// Leases: grant, keep alive, revoke, list, time to live.
    Lease {
        #[command(subcommand)]
        command: LeaseCommand,
    },
    /// Hold a lock while CMD runs, or (without CMD) until Ctrl-C.
    Lock(LockArgs),
    /// Campaign in an election; print when elected, lead until Ctrl-C,
    /// then resign. Fails (exit 1) when the leadership is lost.
    Elect(ElectArgs),
    /// Show the leader of an election (or that it has none).
    Leader {
        /// The election's name.
        name: String,
    },
    /// Show the leader of an election, then every change, until Ctrl-C.
    Observe {
        /// The election's name.
        name: String,
    },
    /// Print every change of a key (or prefix), one line per event, until
    /// Ctrl-C.
    Watch(WatchArgs),
    /// Cluster membership: list, add, promote, remove.
    Member {
        #[command(subcommand)]
        command: MemberCommand,
    },
    /// Hand leadership to voter ID; returns once it leads.
    TransferLeader {
        /// The member to lead.
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
enum MemberCommand {
    /// List the members of the cluster.
    List,
    /// Add member ID, reachable by peers at PEER_ADDR, as a learner (start it
    /// with `fenced --id ID --join ...`, or let `--join` add it instead).
    Add {
        /// The new member's id (never used before in this cluster).
        id: u64,
        /// HOST:PORT the new member's `--peer-listen` is reached at.
        peer_addr: String,
        /// HOST:PORT clients will use (the member publishes it anyway).
        #[arg(long, default_value = "")]
        client_addr: String,
        /// Add as a learner (the default; kept for symmetry with etcdctl).
        #[arg(long, conflicts_with = "voter")]
        learner: bool,
        /// Add as a voter right away (the quorum grows before it caught up).
        #[arg(long)]
        voter: bool,
    },
    /// Make learner ID a voter; refused until it has caught up.
    Promote {
        /// The learner.
        id: u64,
    },
    /// Remove member ID; it stops. Removing the leader hands leadership over
    /// first.
    Remove {
        /// The member.
        id: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let request_timeout = match cli.command {
        // There `--timeout` is the wait for the lock (see `Cli::timeout`).
        Command::Lock(_) => DEFAULT_REQUEST_TIMEOUT,
        _ => cli.timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT),
    };
    let client = match ClientConfig::new(cli.endpoints.iter().cloned())
        .request_timeout(request_timeout)
        .build()
    {
        Ok(client) => client,
        Err(err) => Cli::command().error(ErrorKind::ValueValidation, err).exit(),
    };
    let output = Output::new(cli.output);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(&anyhow::Error::new(err).context("starting the runtime")),
    };
    match runtime.block_on(run(cli.command, &client, &output)) {
        Ok(code) => code,
        Err(err) if output::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => fail(&err),
    }
}

/// Prints the error the way every failure is reported, and gives exit code 1.
fn fail(err: &anyhow::Error) -> ExitCode {
    eprintln!("Error: {err:#}");
    ExitCode::FAILURE
}

/// Runs one command; its exit code when it succeeds (0, except for a
/// `lock` that ran a command).
async fn run(command: Command, client: &Client, output: &Output) -> anyhow::Result<ExitCode> {
    let done = match command {
        Command::Lease { command } => return lease::run(command, client, output).await,
        Command::Lock(args) => return lock::run(args, client, output).await,
        Command::Elect(args) => return election::elect(args, client, output).await,
        Command::Leader { name } => election::leader(client, output, &name).await,
        Command::Observe { name } => election::observe(client, output, &name).await,
        Command::Watch(args) => watch::run(args, client, output).await,
        Command::Put { key, value, lease } => put(client, output, key, value, lease).await,
        Command::Get {
            key,
            prefix,
            serializable,
            limit,
        } => {
            let request = RangeRequest {
                key: key.into_bytes(),
                prefix,
                serializable,
                limit: limit.unwrap_or(0),
                ..RangeRequest::default()
            };
            get(client, output, request).await
        }
        Command::Del { key, prefix } => del(client, output, key, prefix).await,
        Command::Status => status(client, output).await,
        Command::Member { command } => member(command, client, output).await,
        Command::TransferLeader { id } => {
            let response = client.transfer_leader(id).await?;
            output.leader_moved(response.leader).map_err(Into::into)
        }
    };
    done.map(|()| ExitCode::SUCCESS)
}

async fn put(
    client: &Client,
    output: &Output,
    key: String,
    value: String,
    lease: Option<i64>,
) -> anyhow::Result<()> {
    let request = PutRequest {
        key: key.into_bytes(),
        value: value.into_bytes(),
        lease: lease.unwrap_or(0),
        ..PutRequest::default()
    };
    let response = client.put_with(request).await?;
    output.put(&response)?;
    Ok(())
}

async fn get(client: &Client, output: &Output, request: RangeRequest) -> anyhow::Result<()> {
    let response = client.range(request).await?;
    output.key_values(&response.kvs)?;
    Ok(())
}

async fn del(client: &Client, output: &Output, key: String, prefix: bool) -> anyhow::Result<()> {
    let request = DeleteRangeRequest {
        key: key.into_bytes(),
        prefix,
        ..DeleteRangeRequest::default()
    };
    let response = client.delete_range(request).await?;
    output.deleted(&response)?;
    Ok(())
}

/// Asks every endpoint at once, each on its own: one unreachable member must
/// not hide the others, and must not make the answer come from another one.
async fn status(client: &Client, output: &Output) -> anyhow::Result<()> {
    let queries = client.endpoints().map(|endpoint| async move {
        StatusRow {
            endpoint: endpoint.to_owned(),
            result: client.status_of_with(endpoint, true).await,
        }
    });
    let rows = futures::future::join_all(queries).await;
    output.status(&rows)?;
    let failed = rows.iter().filter(|row| row.result.is_err()).count();
    if failed > 0 {
        bail!("{failed} of {} endpoints did not answer", rows.len());
    }
    Ok(())
}

async fn member(command: MemberCommand, client: &Client, output: &Output) -> anyhow::Result<()> {
    let members = match command {
        MemberCommand::List => client.member_list().await?.members,
        MemberCommand::Add {
            id,
            peer_addr,
            client_addr,
            learner: _,
            voter,
        } => {
            client
                .member_add(id, &peer_addr, &client_addr, voter)
                .await?
                .members
        }
        MemberCommand::Promote { id } => client.member_promote(id).await?.members,
        MemberCommand::Remove { id } => client.member_remove(id).await?.members,
    };
    output.members(&members)?;
    Ok(())
}

/// Parses a positive number of seconds, fractions allowed (`0.5`).
pub(crate) fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(format!("{text:?} must be a positive number of seconds"));
    }
    Duration::try_from_secs_f64(seconds).map_err(|err| err.to_string())
}

/// Parses a lease id: decimal, or hexadecimal with a `0x` prefix.
pub(crate) fn parse_lease_id(text: &str) -> anyhow::Result<i64> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => i64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.with_context(|| format!("{text:?} is not a lease id"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn seconds_and_lease_ids() {
        assert_eq!(parse_seconds("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("inf").is_err());
        assert_eq!(parse_lease_id("42").unwrap(), 42);
        assert_eq!(parse_lease_id("0x2a").unwrap(), 42);
        assert!(parse_lease_id("x").is_err());
    }
}

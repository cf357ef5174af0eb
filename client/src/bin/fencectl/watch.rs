//! `fencectl watch KEY [--prefix] [--rev R] [--prev-kv]`: one line (or
//! object) per event until SIGINT or SIGTERM (exit 0), or until the watch
//! fails (exit 1: compacted, or no member took it back).

use anyhow::{Context as _, bail};
use clap::Args;
use fenced_client::Client;
use futures::StreamExt as _;

use crate::output::Output;
use crate::signals::StopSignals;

#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// The key to watch, or with --prefix the prefix.
    key: String,
    /// Watch every key that starts with KEY.
    #[arg(long)]
    prefix: bool,
    /// Start at revision R, replaying the changes since then [default:
    /// only changes from now on].
    #[arg(long, value_name = "R", value_parser = clap::value_parser!(i64).range(1..))]
    rev: Option<i64>,
    /// Print each key's previous value too.
    #[arg(long)]
    prev_kv: bool,
}

pub(crate) async fn run(args: WatchArgs, client: &Client, output: &Output) -> anyhow::Result<()> {
    let mut signals = StopSignals::new()?;
    let mut watch = client.watch(args.key.as_bytes());
    if args.prefix {
        watch = watch.prefix();
    }
    if let Some(revision) = args.rev {
        watch = watch.from_revision(revision);
    }
    if args.prev_kv {
        watch = watch.prev_kv();
    }
    let what = match args.prefix {
        true => format!("prefix {}", args.key),
        false => args.key.clone(),
    };
    let mut batches = tokio::select! {
        batches = watch.stream() => batches.with_context(|| format!("watching {what}"))?,
        _ = signals.recv() => return Ok(()),
    };
    loop {
        tokio::select! {
            batch = batches.next() => match batch {
                Some(Ok(batch)) => output.watch_batch(&batch, args.prev_kv)?,
                Some(Err(err)) => return Err(err).with_context(|| format!("watching {what}")),
                None => bail!("the watch of {what} ended"),
            },
            _ = signals.recv() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    #[test]
    fn arguments() {
        let cli = crate::Cli::try_parse_from([
            "fencectl",
            "watch",
            "app/",
            "--prefix",
            "--rev",
            "12",
            "--prev-kv",
        ])
        .unwrap();
        let crate::Command::Watch(args) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(args.key, "app/");
        assert!(args.prefix && args.prev_kv);
        assert_eq!(args.rev, Some(12));
        assert!(crate::Cli::try_parse_from(["fencectl", "watch", "a", "--rev", "0"]).is_err());
    }
}

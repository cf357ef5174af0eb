//! One `fenced` child process: its flags, its files, and the signals a test
//! sends it.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use tempfile::TempDir;

use crate::fenced_bin;

/// How often process state is polled while waiting for it to change.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// A cluster member: the flags it runs with and its process, if any.
#[derive(Debug)]
pub(crate) struct Member {
    pub(crate) id: u64,
    /// Where clients reach it (`--listen`).
    pub(crate) client_addr: SocketAddr,
    /// Where it accepts peers (`--peer-listen`); other members reach it
    /// through the fault proxy instead.
    pub(crate) peer_addr: SocketAddr,
    /// The complete argument list, reused verbatim by restarts.
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    /// Holds the data dir and the log, and deletes both when the cluster is
    /// dropped (unless kept for debugging).
    root: Option<TempDir>,
    data_dir: PathBuf,
    /// Outside the data dir, so the server never sees a file it did not
    /// write, and appended to across restarts.
    log_path: PathBuf,
    /// A std mutex: it is never held across an await.
    process: Mutex<Process>,
}

/// What the harness knows about the member's process.
#[derive(Debug)]
enum Process {
    /// Never started, or reaped after it exited.
    Exited(Option<ExitStatus>),
    /// Started and not yet reaped. `paused` is set by SIGSTOP, cleared by
    /// SIGCONT.
    Running { child: Child, paused: bool },
}

/// Everything needed to start a member.
#[derive(Debug)]
pub(crate) struct MemberSpec {
    pub(crate) id: u64,
    pub(crate) client_addr: SocketAddr,
    pub(crate) peer_addr: SocketAddr,
    /// The `--initial-cluster` value, as this member must see it.
    /// `--initial-cluster ...`, or `--join ADDR` for a member that joins a
    /// running cluster.
    pub(crate) bootstrap: [String; 2],
    pub(crate) extra_args: Vec<OsString>,
    pub(crate) env: Vec<(OsString, OsString)>,
}

impl Member {
    /// Creates the member's directory; does not start it.
    pub(crate) fn new(spec: MemberSpec) -> io::Result<Member> {
        let root = tempfile::Builder::new()
            .prefix(&format!("fenced-member{}-", spec.id))
            .tempdir()?;
        // Not created here: the server creates its data dir, as it must when
        // an operator starts it for the first time.
        let data_dir = root.path().join("data");
        let log_path = root.path().join(format!("member{}.log", spec.id));
        let mut args: Vec<OsString> = vec![
            "--id".into(),
            spec.id.to_string().into(),
            "--data-dir".into(),
            data_dir.clone().into(),
            "--listen".into(),
            spec.client_addr.to_string().into(),
            "--peer-listen".into(),
            spec.peer_addr.to_string().into(),
        ];
        args.extend(spec.bootstrap.map(OsString::from));
        args.extend(spec.extra_args);
        Ok(Member {
            id: spec.id,
            client_addr: spec.client_addr,
            peer_addr: spec.peer_addr,
            args,
            env: spec.env,
            root: Some(root),
            data_dir,
            log_path,
            process: Mutex::new(Process::Exited(None)),
        })
    }

    pub(crate) fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub(crate) fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Starts the process. Fails if it is already running.
    pub(crate) fn start(&self) -> anyhow::Result<()> {
        let mut process = self.lock();
        if process.reap().is_none() {
            bail!("member {} is already running", self.id);
        }
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        // A marker per start, so a log spanning restarts reads clearly.
        let since_epoch = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        writeln!(
            log,
            "==== harness: starting member {} at unix time {:.3}: {} {}",
            self.id,
            since_epoch.as_secs_f64(),
            fenced_bin().display(),
            self.args_text()
        )?;
        let child = Command::new(fenced_bin())
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning member {}", self.id))?;
        *process = Process::Running {
            child,
            paused: false,
        };
        Ok(())
    }

    /// Whether the process is running and not paused.
    pub(crate) fn is_live(&self) -> bool {
        let mut process = self.lock();
        process.reap().is_none() && matches!(*process, Process::Running { paused: false, .. })
    }

    /// The exit status, if the process has exited (`None` also when it was
    /// never started).
    pub(crate) fn exit_status(&self) -> Option<ExitStatus> {
        self.lock().reap().flatten()
    }

    /// Whether the process has exited (or was never started).
    pub(crate) fn has_exited(&self) -> bool {
        self.lock().reap().is_some()
    }

    /// Sends `signal` if the process is still running (an exited process
    /// cannot receive it, and its pid may belong to someone else by now).
    /// SIGTERM to a paused process is followed by SIGCONT, so it can act on
    /// it.
    pub(crate) fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let mut process = self.lock();
        if process.reap().is_some() {
            bail!("member {} is not running", self.id);
        }
        let Process::Running { child, paused } = &mut *process else {
            unreachable!("reap() returned None, so the process is running");
        };
        send_signal(child.id(), signal)
            .with_context(|| format!("sending {signal:?} to member {}", self.id))?;
        match signal {
            Signal::Stop => *paused = true,
            Signal::Continue => *paused = false,
            // A stopped process only acts on SIGTERM once it runs again.
            Signal::Terminate if *paused => {
                send_signal(child.id(), Signal::Continue)
                    .with_context(|| format!("resuming member {} to terminate it", self.id))?;
                *paused = false;
            }
            Signal::Kill | Signal::Terminate => {}
        }
        Ok(())
    }

    /// Waits until the process has exited, at most `timeout`.
    pub(crate) async fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.lock().reap() {
                return status;
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits until the kernel reports the process as stopped, so a test that
    /// paused a member knows it no longer runs. Linux only; elsewhere it
    /// returns at once.
    pub(crate) async fn wait_stopped(&self, timeout: Duration) -> anyhow::Result<()> {
        let Some(pid) = self.pid() else {
            bail!("member {} is not running", self.id);
        };
        let stat_path = format!("/proc/{pid}/stat");
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let Ok(stat) = std::fs::read_to_string(&stat_path) else {
                return Ok(());
            };
            // The state follows the parenthesised command name.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            if matches!(state, Some('T' | 't')) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "member {} did not stop within {timeout:?} (state {state:?})",
                    self.id
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// SIGKILL and reap, blocking; for `Drop`, where nothing can be awaited.
    pub(crate) fn kill_and_reap(&self) {
        let mut process = self.lock();
        if let Process::Running { child, .. } = &mut *process {
            let _ = child.kill();
            let status = child.wait().ok();
            *process = Process::Exited(status);
        }
    }

    /// The last `lines` lines of the member's log.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        match std::fs::read(&self.log_path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let all: Vec<&str> = text.lines().collect();
                all[all.len().saturating_sub(lines)..].join("\n")
            }
            Err(err) => format!("(no log at {}: {err})", self.log_path.display()),
        }
    }

    /// Keeps the member's directory (data and log) after the test, and
    /// returns its path.
    pub(crate) fn keep_files(&mut self) -> Option<PathBuf> {
        self.root.take().map(TempDir::keep)
    }

    fn pid(&self) -> Option<u32> {
        match &*self.lock() {
            Process::Running { child, .. } => Some(child.id()),
            Process::Exited(_) => None,
        }
    }

    fn args_text(&self) -> String {
        let args: Vec<_> = self.args.iter().map(|arg| arg.to_string_lossy()).collect();
        args.join(" ")
    }

    fn lock(&self) -> MutexGuard<'_, Process> {
        // A panic while holding the lock leaves `Process` consistent (every
        // update is a single assignment), so poisoning can be ignored.
        self.process.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Process {
    /// Collects the exit status if the process has exited. `None` while it
    /// is still running, `Some(status)` once it is not.
    fn reap(&mut self) -> Option<Option<ExitStatus>> {
        match self {
            Process::Exited(status) => Some(*status),
            Process::Running { child, .. } => match child.try_wait() {
                Ok(None) => None,
                Ok(Some(status)) => {
                    *self = Process::Exited(Some(status));
                    Some(Some(status))
                }
                Err(_) => None,
            },
        }
    }
}

/// The signals the harness sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Signal {
    /// SIGKILL: a crash.
    Kill,
    /// SIGTERM: a clean shutdown request.
    Terminate,
    /// SIGSTOP: freeze (a long GC pause, a hung VM).
    Stop,
    /// SIGCONT: thaw after SIGSTOP.
    Continue,
}

/// Sends a signal with kill(2).
#[allow(unsafe_code)]
fn send_signal(pid: u32, signal: Signal) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
    let signal = match signal {
        Signal::Kill => libc::SIGKILL,
        Signal::Terminate => libc::SIGTERM,
        Signal::Stop => libc::SIGSTOP,
        Signal::Continue => libc::SIGCONT,
    };
    // SAFETY: kill(2) takes two integers and touches none of our memory. The
    // pid is our own child that has not been reaped yet (checked under the
    // process lock by the caller), so it cannot have been reused by another
    // process.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

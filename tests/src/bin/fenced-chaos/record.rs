//! The recorder: every operation a workload performs, as an invocation and
//! its completion (ok, fail or unknown), with monotonic timestamps, the
//! logical process that ran it, its inputs and its outputs.
//!
//! Time is nanoseconds since the recorder was made, on the monotonic clock,
//! which the members on the same machine share; so the lease deadlines a
//! client computes can be compared with the times operations completed.
//!
//! A process is a sequence of operations that never overlap. A process whose
//! operation ended unknown may still have that operation in flight, so its
//! worker continues as a new process (Jepsen's rule); [`Recorder::process`]
//! hands out fresh ids.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// What an operation asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub(crate) enum Call {
    /// Register: a linearizable read of `key`.
    Read { key: String },
    /// Register: a put of a value unique in the run.
    Write { key: String, value: u64 },
    /// Register: put `new` if the key holds `expect`, else read it back.
    Cas { key: String, expect: u64, new: u64 },
    /// Lock: acquire `lock` exclusively with `lease`.
    Acquire { lock: String, lease: i64 },
    /// Lock: read the fenced resource of `lock` with `token`.
    /// `alive_until` (here and below) is the lease deadline the holder's
    /// session vouched for when it last checked (ns since start).
    ResourceRead {
        lock: String,
        token: i64,
        alive_until: u64,
    },
    /// Lock: replace the fenced resource's list by the `base_len` values
    /// read before plus `value`, with `token`.
    ResourceWrite {
        lock: String,
        token: i64,
        value: u64,
        base_len: usize,
        alive_until: u64,
    },
    /// Lock: release the grant `token`.
    Release {
        lock: String,
        token: i64,
        alive_until: u64,
    },
    /// Election: campaign in `election` with `lease`, publishing `value`.
    Campaign {
        election: String,
        lease: i64,
        value: u64,
    },
    /// Election: resign the leadership `token`.
    Resign {
        election: String,
        token: i64,
        alive_until: u64,
    },
    /// Watch: a put of a unique value under the watched prefix.
    Put { key: String, value: u64 },
    /// Nemesis: this client process was frozen for `millis` while holding
    /// `token` of `lock` or of `election`.
    Pause {
        millis: u64,
        token: i64,
        lock: Option<String>,
        election: Option<String>,
    },
}

/// What a successful operation returned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ret", rename_all = "snake_case")]
pub(crate) enum Ret {
    /// A read's value; `None`: the key does not exist.
    Value { value: Option<u64> },
    /// A write or a put committed at `revision`.
    Written { revision: i64 },
    /// A compare-and-swap that swapped.
    Swapped { revision: i64 },
    /// A compare-and-swap that found another value (read back in the same
    /// transaction).
    NotSwapped { value: Option<u64> },
    /// A lock grant or an election win, with its fencing token.
    Granted { token: i64 },
    /// The fenced resource's list.
    Values { values: Vec<u64> },
    /// The fenced resource refused a token below the highest it accepted.
    Rejected { highest: i64 },
    /// Done, nothing to report (a release, a resign, an accepted write).
    Done,
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Outcome {
    /// Not completed when the history was taken; treated as unknown.
    Pending,
    /// It took effect and returned this.
    Ok(Ret),
    /// It certainly did not take effect.
    Fail { error: String },
    /// It may or may not have taken effect (a timeout, a broken
    /// connection, an error that does not say).
    Unknown { error: String },
}

/// One operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Op {
    /// Its index in the history, in invocation order.
    pub(crate) id: usize,
    pub(crate) process: u64,
    /// Invocation time, ns since the start.
    pub(crate) invoke: u64,
    /// Completion time, ns since the start; `None` while pending.
    pub(crate) complete: Option<u64>,
    pub(crate) call: Call,
    pub(crate) outcome: Outcome,
}

impl Op {
    /// The returned value, when the operation succeeded.
    pub(crate) fn ret(&self) -> Option<&Ret> {
        match &self.outcome {
            Outcome::Ok(ret) => Some(ret),
            _ => None,
        }
    }

    /// The completion time, or "never" for an unknown operation.
    pub(crate) fn complete_or_max(&self) -> u64 {
        match self.outcome {
            Outcome::Unknown { .. } | Outcome::Pending => u64::MAX,
            _ => self.complete.unwrap_or(u64::MAX),
        }
    }

    /// The operation's kind as a short name (`read`, `acquire`, ...).
    pub(crate) fn kind(&self) -> &'static str {
        match self.call {
            Call::Read { .. } => "read",
            Call::Write { .. } => "write",
            Call::Cas { .. } => "cas",
            Call::Acquire { .. } => "acquire",
            Call::ResourceRead { .. } => "resource-read",
            Call::ResourceWrite { .. } => "resource-write",
            Call::Release { .. } => "release",
            Call::Campaign { .. } => "campaign",
            Call::Resign { .. } => "resign",
            Call::Put { .. } => "put",
            Call::Pause { .. } => "client-pause",
        }
    }

    /// `ok`, `fail` or `unknown`.
    pub(crate) fn outcome_name(&self) -> &'static str {
        match self.outcome {
            Outcome::Ok(_) => "ok",
            Outcome::Fail { .. } => "fail",
            Outcome::Unknown { .. } | Outcome::Pending => "unknown",
        }
    }
}

/// Seconds with millisecond precision, for printing times.
pub(crate) fn secs(ns: u64) -> String {
    format!("{:.3}s", ns as f64 / 1e9)
}

impl fmt::Display for Op {
    /// Two lines, Jepsen style: the invocation and the completion.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let call = serde_json::to_string(&self.call).unwrap_or_default();
        writeln!(
            f,
            "{:>10} p{:<4} #{:<6} invoke  {call}",
            secs(self.invoke),
            self.process,
            self.id
        )?;
        let when = self.complete.map_or_else(|| "-".to_owned(), secs);
        let what = match &self.outcome {
            Outcome::Ok(ret) => serde_json::to_string(ret).unwrap_or_default(),
            Outcome::Fail { error } | Outcome::Unknown { error } => error.clone(),
            Outcome::Pending => "still pending at the end".to_owned(),
        };
        write!(
            f,
            "{when:>10} p{:<4} #{:<6} {:<7} {what}",
            self.process,
            self.id,
            self.outcome_name()
        )
    }
}

/// Collects the history of a run; shared by every worker.
#[derive(Debug)]
pub(crate) struct Recorder {
    start: Instant,
    /// A std mutex: held only to push or update one entry.
    ops: Mutex<Vec<Op>>,
    next_process: AtomicU64,
}

/// An operation invoked and not yet completed.
#[derive(Debug)]
#[must_use = "complete the operation"]
pub(crate) struct Pending(usize);

impl Recorder {
    pub(crate) fn new(start: Instant) -> Recorder {
        Recorder {
            start,
            ops: Mutex::new(Vec::new()),
            next_process: AtomicU64::new(0),
        }
    }

    /// Nanoseconds since the start.
    pub(crate) fn now(&self) -> u64 {
        self.at(Instant::now())
    }

    /// `instant` as nanoseconds since the start (0 if before it).
    pub(crate) fn at(&self, instant: Instant) -> u64 {
        let since = instant.saturating_duration_since(self.start);
        u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
    }

    /// A fresh process id.
    pub(crate) fn process(&self) -> u64 {
        self.next_process.fetch_add(1, Ordering::Relaxed)
    }

    /// Records the invocation of `call` by `process`.
    pub(crate) fn invoke(&self, process: u64, call: Call) -> Pending {
        let mut ops = self.lock();
        let id = ops.len();
        ops.push(Op {
            id,
            process,
            invoke: self.now(),
            complete: None,
            call,
            outcome: Outcome::Pending,
        });
        Pending(id)
    }

    /// Records how `pending` ended.
    pub(crate) fn complete(&self, pending: Pending, outcome: Outcome) {
        let now = self.now();
        let mut ops = self.lock();
        let op = &mut ops[pending.0];
        op.complete = Some(now);
        op.outcome = outcome;
    }

    /// A copy of the history so far.
    pub(crate) fn history(&self) -> Vec<Op> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Op>> {
        self.ops.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What one long-lived stream (a watch, an election observer) delivered.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StreamLog<T> {
    /// `watcher 2`, `observer 1`.
    pub(crate) name: String,
    /// The revision the stream was opened from; every stream of a workload
    /// starts at the same one.
    pub(crate) start_revision: i64,
    pub(crate) items: Vec<T>,
    /// Errors that ended the stream (it was opened again after the last
    /// item), with their times.
    pub(crate) errors: Vec<(u64, String)>,
}

/// One change a watcher saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Seen {
    /// When it arrived, ns since the start.
    pub(crate) time: u64,
    pub(crate) revision: i64,
    pub(crate) key: String,
    /// The value put; `None` for a delete.
    pub(crate) value: Option<u64>,
}

/// One state of an election an observer saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Observed {
    pub(crate) time: u64,
    pub(crate) revision: i64,
    /// The leader from that revision on, if any.
    pub(crate) leader: Option<ObservedLeader>,
}

/// A leader as an observer saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ObservedLeader {
    pub(crate) token: i64,
    pub(crate) lease: i64,
    /// The published value, if it parsed as the workload's number.
    pub(crate) value: Option<u64>,
}

impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = self
            .value
            .map_or_else(|| "deleted".to_owned(), |v| format!("= {v}"));
        write!(
            f,
            "{:>10} rev {} {} {value}",
            secs(self.time),
            self.revision,
            self.key
        )
    }
}

impl fmt::Display for Observed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:>10} rev {} ", secs(self.time), self.revision)?;
        match self.leader {
            Some(leader) => write!(
                f,
                "leader token {} lease {} value {:?}",
                leader.token, leader.lease, leader.value
            ),
            None => write!(f, "no leader"),
        }
    }
}

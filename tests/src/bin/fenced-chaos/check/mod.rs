//! The checkers: each takes the whole history (and, for streams, what the
//! observers saw) and returns what it checked and every violation, each
//! with the smallest part of the history that shows it.
//!
//! A checker never trusts an unknown operation to have failed: it may have
//! taken effect at any time after its invocation, or never.

use serde::Serialize;

use crate::record::Op;

pub(crate) mod election;
pub(crate) mod lock;
pub(crate) mod register;
pub(crate) mod watch;

/// What one checker found.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Verdict {
    /// `register`, `lock`, `election` or `watch`.
    pub(crate) checker: &'static str,
    /// Operations (or stream items) the checker looked at.
    pub(crate) checked: usize,
    pub(crate) violations: Vec<Violation>,
    /// Facts worth reporting that are not violations (fenced stale
    /// holders, unknown operations left out, ...).
    pub(crate) notes: Vec<String>,
}

/// One broken guarantee.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Violation {
    /// What is wrong, in one sentence.
    pub(crate) what: String,
    /// The smallest part of the history that shows it, in invocation order.
    pub(crate) ops: Vec<Op>,
    /// Stream items (watch events, observations) involved, as text.
    pub(crate) items: Vec<String>,
}

impl Violation {
    pub(crate) fn new(what: impl Into<String>, mut ops: Vec<Op>) -> Violation {
        ops.sort_by_key(|op| (op.invoke, op.id));
        Violation {
            what: what.into(),
            ops,
            items: Vec::new(),
        }
    }

    pub(crate) fn with_items(mut self, items: Vec<String>) -> Violation {
        self.items = items;
        self
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}", self.what)?;
        for op in &self.ops {
            writeln!(f, "{op}")?;
        }
        for item in &self.items {
            writeln!(f, "    {item}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use crate::record::{Call, Op, Outcome, Ret};

    /// Builds histories by hand for the checkers' tests; times are in
    /// arbitrary units (ns).
    #[derive(Debug, Default)]
    pub(crate) struct HistoryBuilder {
        pub(crate) ops: Vec<Op>,
    }

    impl HistoryBuilder {
        pub(crate) fn new() -> HistoryBuilder {
            HistoryBuilder::default()
        }

        /// An operation that succeeded.
        pub(crate) fn op(
            &mut self,
            process: u64,
            invoke: u64,
            complete: u64,
            call: Call,
            ret: Ret,
        ) {
            self.push(process, invoke, Some(complete), call, Outcome::Ok(ret));
        }

        /// An operation that certainly failed.
        pub(crate) fn fail(&mut self, process: u64, invoke: u64, complete: u64, call: Call) {
            let outcome = Outcome::Fail {
                error: "refused".into(),
            };
            self.push(process, invoke, Some(complete), call, outcome);
        }

        /// An operation that failed with this error text.
        pub(crate) fn push_fail(
            &mut self,
            process: u64,
            invoke: u64,
            complete: u64,
            call: Call,
            error: &str,
        ) {
            let outcome = Outcome::Fail {
                error: error.into(),
            };
            self.push(process, invoke, Some(complete), call, outcome);
        }

        /// An operation whose outcome is unknown.
        pub(crate) fn unknown(&mut self, process: u64, invoke: u64, call: Call) {
            let outcome = Outcome::Unknown {
                error: "timed out".into(),
            };
            self.push(process, invoke, Some(invoke + 1_000), call, outcome);
        }

        fn push(
            &mut self,
            process: u64,
            invoke: u64,
            complete: Option<u64>,
            call: Call,
            outcome: Outcome,
        ) {
            self.ops.push(Op {
                id: self.ops.len(),
                process,
                invoke,
                complete,
                call,
                outcome,
            });
        }
    }

    impl Call {
        pub(crate) fn read(key: &str) -> Call {
            Call::Read { key: key.into() }
        }

        pub(crate) fn write(key: &str, value: u64) -> Call {
            Call::Write {
                key: key.into(),
                value,
            }
        }

        pub(crate) fn cas(key: &str, expect: u64, new: u64) -> Call {
            Call::Cas {
                key: key.into(),
                expect,
                new,
            }
        }
    }

    impl Ret {
        pub(crate) fn value(value: Option<u64>) -> Ret {
            Ret::Value { value }
        }

        pub(crate) fn written(revision: i64) -> Ret {
            Ret::Written { revision }
        }
    }
}

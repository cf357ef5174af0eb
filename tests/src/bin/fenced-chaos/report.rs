//! The report: operations per kind and outcome, faults injected, what each
//! checker found; printed, and written as JSON with `--out DIR`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

use crate::check::Verdict;
use crate::nemesis::{FaultRecord, Step};
use crate::record::{Observed, Op, Seen, StreamLog};

/// Everything a run produced.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) seed: u64,
    pub(crate) duration_secs: f64,
    pub(crate) nemeses: Vec<String>,
    pub(crate) workloads: Vec<String>,
    pub(crate) unsafe_local_reads: bool,
    pub(crate) schedule: Vec<Step>,
    pub(crate) faults: Vec<FaultRecord>,
    pub(crate) verdicts: Vec<Verdict>,
    #[serde(skip)]
    pub(crate) history: Vec<Op>,
    #[serde(skip)]
    pub(crate) observers: Vec<StreamLog<Observed>>,
    #[serde(skip)]
    pub(crate) watchers: Vec<StreamLog<Seen>>,
}

/// Counts for the JSON summary.
#[derive(Debug, Serialize)]
struct Summary<'a> {
    seed: u64,
    operations: usize,
    checked: usize,
    violations: usize,
    per_kind: BTreeMap<&'static str, BTreeMap<&'static str, usize>>,
    faults_per_kind: BTreeMap<&'static str, usize>,
    report: &'a Report,
}

impl Report {
    pub(crate) fn violations(&self) -> usize {
        self.verdicts.iter().map(|v| v.violations.len()).sum()
    }

    pub(crate) fn checked(&self) -> usize {
        self.verdicts.iter().map(|v| v.checked).sum()
    }

    fn per_kind(&self) -> BTreeMap<&'static str, BTreeMap<&'static str, usize>> {
        let mut counts: BTreeMap<&'static str, BTreeMap<&'static str, usize>> = BTreeMap::new();
        for op in &self.history {
            *counts
                .entry(op.kind())
                .or_default()
                .entry(op.outcome_name())
                .or_default() += 1;
        }
        counts
    }

    fn faults_per_kind(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for fault in &self.faults {
            *counts.entry(fault.kind).or_default() += 1;
        }
        counts
    }

    /// The report as text.
    pub(crate) fn text(&self) -> String {
        let mut out = String::new();
        let per_kind = self.per_kind();
        let _ = writeln!(out, "\n== operations ({})", self.history.len());
        let _ = writeln!(
            out,
            "  {:<16} {:>8} {:>8} {:>8}",
            "kind", "ok", "fail", "unknown"
        );
        for (kind, outcomes) in &per_kind {
            let n = |o: &str| outcomes.get(o).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "  {kind:<16} {:>8} {:>8} {:>8}",
                n("ok"),
                n("fail"),
                n("unknown")
            );
        }
        for log in &self.observers {
            let _ = writeln!(
                out,
                "  {:<16} {:>8} states, {} stream errors",
                log.name,
                log.items.len(),
                log.errors.len()
            );
        }
        for log in &self.watchers {
            let _ = writeln!(
                out,
                "  {:<16} {:>8} events, {} stream errors",
                log.name,
                log.items.len(),
                log.errors.len()
            );
        }
        let per_fault = self.faults_per_kind();
        let summary: Vec<String> = per_fault.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(
            out,
            "\n== faults injected ({}: {})",
            self.faults.len(),
            summary.join(", ")
        );
        for fault in &self.faults {
            let _ = writeln!(out, "  {fault}");
        }
        let _ = writeln!(out, "\n== checkers");
        for verdict in &self.verdicts {
            let _ = writeln!(
                out,
                "  {:<9} {:>7} checked, {} violation(s)",
                verdict.checker,
                verdict.checked,
                verdict.violations.len()
            );
            for note in &verdict.notes {
                let _ = writeln!(out, "            note: {note}");
            }
        }
        for verdict in &self.verdicts {
            for (i, violation) in verdict.violations.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "\n== VIOLATION {} #{}: {violation}",
                    verdict.checker,
                    i + 1
                );
            }
        }
        out
    }

    /// Writes `report.json` (summary, schedule, faults, verdicts with the
    /// failing parts of the history), `history.json` (every operation)
    /// and `streams.json` (what observers and watchers saw) into `dir`.
    pub(crate) fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let summary = Summary {
            seed: self.seed,
            operations: self.history.len(),
            checked: self.checked(),
            violations: self.violations(),
            per_kind: self.per_kind(),
            faults_per_kind: self.faults_per_kind(),
            report: self,
        };
        write_json(&dir.join("report.json"), &summary)?;
        write_json(&dir.join("history.json"), &self.history)?;
        #[derive(Serialize)]
        struct Streams<'a> {
            observers: &'a [StreamLog<Observed>],
            watchers: &'a [StreamLog<Seen>],
        }
        write_json(
            &dir.join("streams.json"),
            &Streams {
                observers: &self.observers,
                watchers: &self.watchers,
            },
        )?;
        Ok(())
    }
}

fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    serde_json::to_writer_pretty(std::io::BufWriter::new(file), value)
        .with_context(|| format!("writing {}", path.display()))
}

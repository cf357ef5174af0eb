#!/usr/bin/env python3
"""Turns compare.sh's JSON lines into docs/benchmarks.md (min/median/max, ratio)."""
import argparse, json, os, platform, statistics, subprocess
from collections import defaultdict

ap = argparse.ArgumentParser()
ap.add_argument("results"); ap.add_argument("out")
ap.add_argument("--rounds", type=int); ap.add_argument("--duration", type=float)
ap.add_argument("--fsync-us", type=int); ap.add_argument("--etcd-version")
ap.add_argument("--fenced-version"); ap.add_argument("--command")
a = ap.parse_args()

runs = defaultdict(list)
for line in open(a.results):
    d = json.loads(line)
    runs[(d["label"], d["target"])].append(d)

def mmm(xs):
    return min(xs), statistics.median(xs), max(xs)

def fmt_ops(x): return f"{x:,.0f}"
def fmt_ms(us): return f"{us/1000:.2f}"

cpu = "unknown"
try:
    for l in open("/proc/cpuinfo"):
        if l.startswith("model name"):
            cpu = l.split(":", 1)[1].strip(); break
except OSError:
    pass
cores = os.cpu_count()

labels = []
kind = {}  # label -> workload ("put", "lock", ...)
for (label, _t), rs in runs.items():
    if label not in labels: labels.append(label)
    kind[label] = rs[0].get("workload", "put")

lines = []
lines.append("# Benchmarks\n")
lines.append("Every figure is measured by `fenced-bench` against fenced and against etcd in the same")
lines.append("run, on the same machine, alternating (etcd, fenced, etcd, ...). Regenerate with:\n")
lines.append("```\n" + a.command.strip() + "\n```\n")
lines.append("## Machine and versions\n")
lines.append(f"- CPU: {cpu}, {cores} cores; kernel {platform.release()}")
lines.append(f"- Disk fsync latency (4 KiB `dd oflag=dsync`, same filesystem as both data dirs): {a.fsync_us} µs")
lines.append(f"- {a.etcd_version.strip()}, 3 members on loopback, `--heartbeat-interval 100 --election-timeout 1000`, fsync on (default)")
lines.append(f"- {a.fenced_version.strip()}, 3 members on loopback, defaults (tick 10 ms, heartbeat 100 ms, election 1 s), fsync on")
lines.append(f"- {a.rounds} rounds of {a.duration:g} s per workload and system; closed loop; figures are min / median / max over rounds\n")
# One table per workload; (workload, heading, rate column, sentence under the heading).
TABLES = [
    ("put", "Results: put", "ops/s", None),
    ("lock", "Results: lock", "cycles/s",
     "One operation is one acquire + release cycle; its latency is the whole cycle."),
]
for label in labels:
    if kind[label] not in [t[0] for t in TABLES]:
        TABLES.append((kind[label], f"Results: {kind[label]}", "ops/s", None))

ratios = []
def table(workload, heading, rate, intro):
    rows = [l for l in labels if kind[l] == workload]
    if not rows: return
    lines.append(f"## {heading}\n")
    if intro: lines.append(intro + "\n")
    lines.append(f"| workload | system | {rate} | p50 ms | p99 ms | p99.9 ms | errors |")
    lines.append("|---|---|---|---|---|---|---|")
    for label in rows:
        med = {}
        for target in ("etcd", "fenced"):
            rs = runs.get((label, target), [])
            if not rs: continue
            ops = mmm([r["ops_per_sec"] for r in rs])
            p50 = mmm([r["p50_us"] for r in rs]); p99 = mmm([r["p99_us"] for r in rs]); p999 = mmm([r["p999_us"] for r in rs])
            errs = sum(r["errors"] for r in rs)
            med[target] = (ops[1], p50[1], p99[1])
            lines.append(f"| {label} | {target} | {fmt_ops(ops[1])} ({fmt_ops(ops[0])}–{fmt_ops(ops[2])}) | "
                         f"{fmt_ms(p50[1])} ({fmt_ms(p50[0])}–{fmt_ms(p50[2])}) | {fmt_ms(p99[1])} ({fmt_ms(p99[0])}–{fmt_ms(p99[2])}) | "
                         f"{fmt_ms(p999[1])} | {errs} |")
        if "etcd" in med and "fenced" in med:
            ratios.append((label, med["fenced"][0] / med["etcd"][0], med["fenced"][1] / med["etcd"][1], med["fenced"][2] / med["etcd"][2]))
    lines.append("")

for t in TABLES:
    table(*t)
lines.append("## Ratios (fenced ÷ etcd, medians)\n")
lines.append("| workload | throughput (ops/s, cycles/s) | p50 latency | p99 latency |")
lines.append("|---|---|---|---|")
for (label, t, p50, p99) in ratios:
    lines.append(f"| {label} | {t:.2f}× | {p50:.2f}× | {p99:.2f}× |")
lines.append("\nThroughput above 1× is better for fenced; latency below 1× is better for fenced.\n")
lines.append("## Workloads\n")
lines.append("- `put-N`: N concurrent clients each writing a random key out of 10,000 with a 256-byte value,")
lines.append("  closed loop, over min(N, 16) gRPC connections spread across all three members' endpoints.")
lines.append("  fenced's client sends to one member and moves on failure (a follower forwards to the leader);")
lines.append("  etcd-client balances across the endpoints.")
lines.append("- `lock-CxL`: C concurrent clients over L locks; client i loops on lock `bench-lock-{i mod L}`:")
lines.append("  acquire (blocking, FIFO) with its own lease, then release at once; closed loop, over")
lines.append("  min(C, 16) gRPC connections. Each client grants one lease (TTL 120 s) before the run and")
lines.append("  revokes it after; neither system gets keepalives (see the notes).")
lines.append("  fenced: `Lock.Acquire(name, lease)` → token, then `Lock.Release(name, token, lease)`, through")
lines.append("  the generated gRPC stubs; connection k goes to endpoint k mod 3 (a follower forwards the")
lines.append("  commands to the leader). etcd: its v3lock service, `Lock(name, lease)` → key, then")
lines.append("  `Unlock(key)`, through etcd-client (which balances across the endpoints).")
notes = os.environ.get("BENCH_NOTES", os.path.join(os.path.dirname(__file__), "notes.md"))
if notes and os.path.exists(notes):
    lines.append("\n## Notes\n")
    lines.append(open(notes).read().strip())
open(a.out, "w").write("\n".join(lines) + "\n")

#!/usr/bin/env python3
"""Turns compare.sh's JSON lines into docs/benchmarks.md (min/median/max, ratio)."""
import argparse, json, os, platform, statistics, subprocess
from collections import defaultdict

ap = argparse.ArgumentParser()
ap.add_argument("results"); ap.add_argument("out")
ap.add_argument("--rounds", type=int); ap.add_argument("--duration", type=float)
ap.add_argument("--fsync-us", type=int); ap.add_argument("--etcd-version")
ap.add_argument("--fenced-version"); ap.add_argument("--command")
ap.add_argument("--watch-duration", type=float); ap.add_argument("--watch-rate", type=float)
ap.add_argument("--failovers", type=int); ap.add_argument("--hold", type=float)
ap.add_argument("--mf-kills", type=int); ap.add_argument("--mf-kill-after", type=float)
ap.add_argument("--mf-after", type=float)
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
lines.append(f"- put, range, lock and lease-keepalive: {a.rounds} rounds of {a.duration:g} s per workload and system; closed loop; figures are median (min–max) over rounds")
if a.watch_duration:
    lines.append(f"- watch-latency: {a.rounds} rounds of {a.watch_duration:g} s, writer open loop at {a.watch_rate:g} puts/s")
if a.failovers:
    lines.append(f"- election-failover: {a.rounds} runs of {a.failovers} failover(s) each; figures over all failovers")
if a.mf_kills:
    lines.append(f"- member-failover: {a.rounds} rounds of {a.mf_kills} run(s) per system, one leader SIGKILLed per run "
                 f"after {a.mf_kill_after:g} s of lock cycles; the killed member is restarted before the next run")
if a.hold:
    members = sorted({r.get("member") for (l, _t), rs in runs.items() if l.startswith("watch-hold") for r in rs} - {None})
    where = "on each member" if len(members) >= 3 else "on member " + ", ".join(map(str, members))
    lines.append(f"- memory: 10,000 watchers held {a.hold:g} s {where} of each system, once")
lines.append("")
# One table per workload; (workload, heading, rate column, sentence under the heading).
TABLES = [
    ("put", "Results: put", "ops/s", None),
    ("range", "Results: range", "reads/s",
     "Point reads of keys written before the run: `range-N` linearizable, `range-ser-N` serializable."),
    ("lock", "Results: lock", "cycles/s",
     "One operation is one acquire + release cycle; its latency is the whole cycle."),
    ("lease-keepalive", "Results: lease keepalive", "keepalives/s",
     "N leases, each kept alive over a keepalive stream of its own with one keepalive in flight;\n"
     "the latency is one keepalive's round trip (sent → acknowledged with a positive TTL)."),
]
SPECIAL = ("watch-latency", "watch-hold", "election-failover", "member-failover")
for label in labels:
    if kind[label] not in [t[0] for t in TABLES] + list(SPECIAL):
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
            # A single connection's figure depends on the role of the member
            # it reached (fenced-bench records it): name it, round by round.
            system = target
            if any("member_role" in r for r in rs):
                system = f"{target} (via {', '.join(r.get('member_role', '?') for r in rs)})"
            lines.append(f"| {label} | {system} | {fmt_ops(ops[1])} ({fmt_ops(ops[0])}–{fmt_ops(ops[2])}) | "
                         f"{fmt_ms(p50[1])} ({fmt_ms(p50[0])}–{fmt_ms(p50[2])}) | {fmt_ms(p99[1])} ({fmt_ms(p99[0])}–{fmt_ms(p99[2])}) | "
                         f"{fmt_ms(p999[1])} | {errs} |")
        if "etcd" in med and "fenced" in med:
            ratios.append((label, med["fenced"][0] / med["etcd"][0], med["fenced"][1] / med["etcd"][1], med["fenced"][2] / med["etcd"][2]))
    lines.append("")

for t in TABLES:
    table(*t)

def roles(rs):
    return "/".join(sorted({r.get("member_role", "?") for r in rs}))

def watch_table():
    rows = [l for l in labels if kind[l] == "watch-latency"]
    if not rows: return
    lines.append("## Results: watch latency\n")
    lines.append("N watchers of one key on one member (a follower on both systems), one writer putting to that key")
    lines.append("through the same member; latency is *put issued → event received*, over every (watcher, event) pair.\n")
    lines.append("| workload | system | member | events/s | puts/s | p50 ms | p99 ms | p99.9 ms | put ack p50 ms | missed | errors |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for label in rows:
        med = {}
        for target in ("etcd", "fenced"):
            rs = runs.get((label, target), [])
            if not rs: continue
            ev = mmm([r["ops_per_sec"] for r in rs]); puts = mmm([r["puts_per_sec"] for r in rs])
            p50 = mmm([r["p50_us"] for r in rs]); p99 = mmm([r["p99_us"] for r in rs]); p999 = mmm([r["p999_us"] for r in rs])
            missed = sum(r.get("missed", 0) for r in rs); errs = sum(r["errors"] for r in rs)
            ack = statistics.median([r.get("put_p50_us", 0) for r in rs])
            med[target] = (p50[1], p99[1])
            lines.append(f"| {label} | {target} | {roles(rs)} | {fmt_ops(ev[1])} | {puts[1]:.0f} | "
                         f"{fmt_ms(p50[1])} ({fmt_ms(p50[0])}–{fmt_ms(p50[2])}) | {fmt_ms(p99[1])} ({fmt_ms(p99[0])}–{fmt_ms(p99[2])}) | "
                         f"{fmt_ms(p999[1])} | {fmt_ms(ack)} | {missed} | {errs} |")
        if "etcd" in med and "fenced" in med:
            ratios.append((label, None, med["fenced"][0] / med["etcd"][0], med["fenced"][1] / med["etcd"][1]))
    lines.append("")
    lines.append("*put ack p50*: put issued → put acknowledged, as the writer saw it, for comparison.\n")

def failover_table():
    rows = [l for l in labels if kind[l] == "election-failover"]
    if not rows: return
    lines.append("## Results: election failover\n")
    lines.append("Time from the leader's keepalives stopping (right after an acknowledged one; no revoke, no resign)")
    lines.append("to an observer on the first endpoint receiving the next leader. The lease TTL bounds it from below.\n")
    lines.append("| workload | system | TTL s | failovers | min ms | p50 ms | max ms | p50 − TTL ms | errors |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for label in rows:
        med = {}
        for target in ("etcd", "fenced"):
            rs = runs.get((label, target), [])
            if not rs: continue
            xs = sorted(x for r in rs for x in r.get("rounds_ms", []))
            errs = sum(r["errors"] for r in rs)
            ttl = rs[0].get("granted_ttl_s") or rs[0].get("ttl_s")
            if not xs:
                lines.append(f"| {label} | {target} | {ttl} | 0 | – | – | – | – | {errs} |"); continue
            p50 = statistics.median(xs)
            med[target] = (p50, xs[-1])
            lines.append(f"| {label} | {target} | {ttl} | {len(xs)} | {xs[0]:,.0f} | {p50:,.0f} | {xs[-1]:,.0f} | "
                         f"{p50 - ttl * 1000:+,.0f} | {errs} |")
        if "etcd" in med and "fenced" in med:
            ratios.append((label, None, med["fenced"][0] / med["etcd"][0], med["fenced"][1] / med["etcd"][1]))
    lines.append("")

def member_failover_table():
    rows = [l for l in labels if kind[l] == "member-failover"]
    if not rows: return
    lines.append("## Results: member failover\n")
    lines.append("C clients cycle (acquire, release) on C locks, one lock each, through clients that know every")
    lines.append("endpoint; the leading member's process is SIGKILLed. *first acquire*: kill → the first successful")
    lines.append("acquire issued after the kill, over all clients (the figure the target is about); *every client*:")
    lines.append("kill → the last client's first such acquire. A value near 10,000 ms is the bench's 10 s call timeout")
    lines.append("ending a call that got no answer. Errors are failed acquire / release calls, each retried after 10 ms.\n")
    lines.append("| workload | system | kills | first acquire ms: min / median / max | every client ms: min / median / max | acquire errors | release errors | within 1,500 ms |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for label in rows:
        med = {}
        for target in ("etcd", "fenced"):
            rs = runs.get((label, target), [])
            if not rs: continue
            first = sorted(r["failover_ms"] for r in rs); every = sorted(r["all_clients_ms"] for r in rs)
            acq = sum(r.get("acquire_errors", 0) for r in rs); rel = sum(r.get("release_errors", 0) for r in rs)
            within = sum(1 for x in first if x <= 1500)
            med[target] = (statistics.median(first), statistics.median(every))
            lines.append(f"| {label} | {target} | {len(rs)} | {first[0]:,.0f} / {statistics.median(first):,.0f} / {first[-1]:,.0f} | "
                         f"{every[0]:,.0f} / {statistics.median(every):,.0f} / {every[-1]:,.0f} | {acq:,} | {rel:,} | {within} of {len(rs)} |")
        if "etcd" in med and "fenced" in med:
            ratios.append((label, None, med["fenced"][0] / med["etcd"][0], med["fenced"][1] / med["etcd"][1]))
    lines.append("")
    lines.append("*within 1,500 ms*: runs whose first acquire came within the target, election timeout (1 s) + 500 ms.")
    lines.append("In the ratios below, p50 is the median first acquire and p99 the median of every client.\n")

def memory_table():
    rs_all = [(t, r) for (l, t), rs in runs.items() if kind[l] == "watch-hold" for r in rs]
    if not rs_all: return
    lines.append("## Results: memory per 10,000 watchers\n")
    lines.append("10,000 watchers of one key opened on one member (100 watch streams of 100 watches, each stream on")
    lines.append("its own connection) and held idle; the member's RSS (`ps -o rss`) before, and while they are open.")
    lines.append("Then one put, timed to every watcher (put issued → event received). Each sampled member once.\n")
    lines.append("| system | member | RSS before MiB | RSS with watchers MiB | KiB per watcher | open s | one put to all: p50 / max ms | errors |")
    lines.append("|---|---|---|---|---|---|---|---|")
    per = {}
    for target in ("etcd", "fenced"):
        for t, r in sorted(rs_all, key=lambda x: x[1].get("member", 0)):
            if t != target: continue
            n = r["watchers"]; b = r["rss_before_kib"]; d = r["rss_during_kib"]
            k = (d - b) / n
            per.setdefault(target, []).append(k)
            lines.append(f"| {target} | {r.get('member', '?')} ({r.get('member_role', '?')}) | {b/1024:.1f} | {d/1024:.1f} | "
                         f"{k:.2f} | {r['open_seconds']:.2f} | {fmt_ms(r['p50_us'])} / {fmt_ms(r['max_us'])} | {r['errors']} |")
    lines.append("")
    for target, ks in per.items():
        m = statistics.median(ks)
        lines.append(f"- {target}: median {m:.2f} KiB per watcher, {m * 10000 / 1024:.1f} MiB per 10,000 watchers")
    if "etcd" in per and "fenced" in per:
        r = statistics.median(per["fenced"]) / statistics.median(per["etcd"])
        lines.append(f"- fenced ÷ etcd: {r:.2f}×")
        ratios.append(("memory per watcher", None, None, None, r))
    lines.append("")

watch_table()
failover_table()
member_failover_table()
memory_table()

def fx(x): return "–" if x is None else f"{x:.2f}×"
lines.append("## Ratios (fenced ÷ etcd, medians)\n")
lines.append("| workload | throughput (ops/s, cycles/s) | p50 latency | p99 latency (failover: max) | memory |")
lines.append("|---|---|---|---|---|")
for row in ratios:
    label, t, p50, p99 = row[:4]
    mem = row[4] if len(row) > 4 else None
    lines.append(f"| {label} | {fx(t)} | {fx(p50)} | {fx(p99)} | {fx(mem)} |")
lines.append("\nThroughput above 1× is better for fenced; latency and memory below 1× are better for fenced.\n")
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
lines.append("- `*-leader` (`--route leader`): the same workload, but every fenced connection goes to the member")
lines.append("  leading at the start and fenced-client follows the leader (`ClientConfig::prefer_leader`), so no")
lines.append("  write is forwarded by a follower. etcd is unchanged: etcd-client balances across the endpoints,")
lines.append("  as in every row (etcd-client has no leader routing), so its rows are further samples of the")
lines.append("  same etcd workload.")
lines.append(open(os.path.join(os.path.dirname(__file__), "workloads-more.md")).read().rstrip())
lines.append(open(os.path.join(os.path.dirname(__file__), "workloads-watch.md")).read().rstrip())
notes = os.environ.get("BENCH_NOTES", os.path.join(os.path.dirname(__file__), "notes.md"))
if notes and os.path.exists(notes):
    lines.append("\n## Notes\n")
    lines.append(open(notes).read().strip())
open(a.out, "w").write("\n".join(lines) + "\n")

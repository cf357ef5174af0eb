#!/usr/bin/env bash
# Side-by-side benchmark: a 3-member etcd 3.4 and a 3-member fenced on
# loopback, same machine, same disk, fsync on, same heartbeat (100 ms) and
# election timeout (1 s).
#
# First the memory held by 10,000 idle watchers (watch-hold), once on each
# member of each system (etcd member 1, fenced member 1, etcd member 2, ...),
# sampling the member's RSS before and while they are open. Then ROUNDS
# rounds of every other workload (put, range linearizable and serializable,
# lock acquire+release cycles, lease keepalives, watch-latency at 1, 100 and
# 1,000 watchers, election-failover, member-failover), each run alternately
# on etcd then fenced. member-failover SIGKILLs the leading member; the
# script starts it again (same data dir and flags) and waits until it is
# healthy before the next run. The report has min/median/max over the runs
# and the ratios.
#
#   tests/bench/compare.sh            # full: about 20 minutes of runs; writes docs/benchmarks.md
#   tests/bench/compare.sh --quick    # 2 rounds of short runs of one variant of every
#                                     # workload, under 3 minutes: a smoke test of the whole
#                                     # pipeline; writes $TARGET_DIR/benchmarks-quick.md
#
# Both first build the release binaries (minutes when the sources changed).
#
# Binaries are built into $CARGO_TARGET_DIR when set (else target/).
#
# Needs root for `apt-get install etcd-server protobuf-compiler` when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

QUICK=0
[[ "${1:-}" == "--quick" ]] && QUICK=1
if ((QUICK)); then
  ROUNDS=2          # rounds of every workload (etcd, fenced, etcd, fenced)
  DURATION=1        # seconds per put / range / lock / lease-keepalive run
  WATCH_DURATION=2  # seconds per watch-latency run
  FAILOVERS=1       # failovers per election-failover run
  HOLD=2            # seconds the 10,000 watchers are held
  HOLD_MEMBERS="1"  # members whose memory is sampled
  MF_KILLS=1        # member-failover runs (one kill each) per round and system
  MF_KILL_AFTER=1   # seconds of lock cycles before the kill
  MF_AFTER=0.5      # seconds of lock cycles after every client acquired again
else
  ROUNDS=3
  DURATION=10
  WATCH_DURATION=10
  FAILOVERS=5
  HOLD=5
  HOLD_MEMBERS="1 2 3"
  MF_KILLS=2
  MF_KILL_AFTER=3
  MF_AFTER=2
fi
WATCH_RATE=100      # puts/s of the watch-latency writer (open loop)
HOLD_WATCHERS=10000
FAILOVER_TTL=2      # s; the smallest TTL both systems grant with a 1 s election timeout

need() { command -v "$1" >/dev/null 2>&1; }
if ! need etcd || ! need protoc; then
  echo "installing etcd-server, etcd-client and protobuf-compiler (Debian packages)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client protobuf-compiler >/dev/null
fi

echo "building release binaries"
cargo build --release -q -p fenced-server --bin fenced
cargo build --release -q -p fenced-tests --bin fenced-bench --features etcd
# cargo resolves a relative CARGO_TARGET_DIR against the working directory,
# which is $ROOT here.
TARGET_DIR=${CARGO_TARGET_DIR:-target}
[[ "$TARGET_DIR" == /* ]] || TARGET_DIR=$ROOT/$TARGET_DIR
FENCED=$TARGET_DIR/release/fenced
BENCH=$TARGET_DIR/release/fenced-bench
# A quick run is a smoke test: its figures never replace the documented ones.
if ((QUICK)); then OUT=$TARGET_DIR/benchmarks-quick.md; else OUT=docs/benchmarks.md; fi

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/fenced-compare.XXXXXX")
# The current process of each member (member i at index i-1). A member that
# member-failover killed is started again and its entry replaced. Members are
# disowned, so bash does not report the killed ones; cleanup waits for them
# by polling.
ETCD_PIDS=()
FENCED_PIDS=()
cleanup() {
  local p alive
  for p in "${ETCD_PIDS[@]}" "${FENCED_PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
    alive=0
    for p in "${ETCD_PIDS[@]}" "${FENCED_PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# Loopback ports: etcd 32379.. (client) 32380.. (peer); fenced 31379.. 31380..
# (both below the kernel's ephemeral range, 32768.., so no outgoing
# connection can hold one of them when a member starts).
ETCD_CLUSTER="e1=http://127.0.0.1:32380,e2=http://127.0.0.1:32382,e3=http://127.0.0.1:32384"
ETCD_EPS="127.0.0.1:32379,127.0.0.1:32381,127.0.0.1:32383"
FENCED_CLUSTER="1=127.0.0.1:31380,2=127.0.0.1:31382,3=127.0.0.1:31384"
FENCED_EPS="127.0.0.1:31379,127.0.0.1:31381,127.0.0.1:31383"
# Starts etcd member $1 (1..3); on a restart it resumes from its data dir
# (etcd ignores --initial-cluster-state once the data dir exists).
start_etcd() {
  local i=$1 c p
  c=$((32379 + (i - 1) * 2)); p=$((c + 1))
  etcd --name "e$i" --data-dir "$WORK/etcd$i" \
    --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
    --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
    --initial-cluster "$ETCD_CLUSTER" --initial-cluster-state new \
    --heartbeat-interval 100 --election-timeout 1000 \
    >>"$WORK/etcd$i.log" 2>&1 &
  ETCD_PIDS[$((i - 1))]=$!
  disown $!
}
# Starts fenced member $1 (1..3); on a restart it resumes from its data dir.
start_fenced() {
  local i=$1 c p
  c=$((31379 + (i - 1) * 2)); p=$((c + 1))
  "$FENCED" --id "$i" --data-dir "$WORK/fenced$i" --listen "127.0.0.1:$c" --peer-listen "127.0.0.1:$p" \
    --initial-cluster "$FENCED_CLUSTER" --log warn >>"$WORK/fenced$i.log" 2>&1 &
  FENCED_PIDS[$((i - 1))]=$!
  disown $!
}
for i in 1 2 3; do start_etcd "$i"; start_fenced "$i"; done

# Whether member $2 of system $1 answers its health check (etcd: a quorum
# read through it; fenced: /health, which needs a known leader).
member_healthy() { # etcd|fenced i
  if [[ $1 == etcd ]]; then
    ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$((32379 + ($2 - 1) * 2))" endpoint health >/dev/null 2>&1
  else
    curl -sf "http://127.0.0.1:$((31379 + ($2 - 1) * 2))/health" >/dev/null
  fi
}
# Starts member $2 of system $1 again after member-failover killed it and
# waits until it is healthy, then a second more so it has caught up.
restart_member() { # etcd|fenced i
  local kind=$1 i=$2 old
  if [[ $kind == etcd ]]; then old=${ETCD_PIDS[$((i - 1))]}; else old=${FENCED_PIDS[$((i - 1))]}; fi
  # The kill has been sent; wait until the process is gone so its ports are free.
  for _ in $(seq 1 50); do kill -0 "$old" 2>/dev/null || break; sleep 0.1; done
  if [[ $kind == etcd ]]; then start_etcd "$i"; else start_fenced "$i"; fi
  for _ in $(seq 1 150); do member_healthy "$kind" "$i" && break; sleep 0.2; done
  member_healthy "$kind" "$i" || { echo "$kind member $i is not healthy after its restart:" >&2; tail -5 "$WORK/$kind$i.log" >&2; exit 1; }
  sleep 1
}

echo "waiting for both clusters to elect a leader (${SECONDS}s since the start)"
for _ in $(seq 1 100); do
  if ETCDCTL_API=3 etcdctl --endpoints "$ETCD_EPS" endpoint health >/dev/null 2>&1 &&
     curl -sf http://127.0.0.1:31379/health >/dev/null && curl -sf http://127.0.0.1:31381/health >/dev/null &&
     curl -sf http://127.0.0.1:31383/health >/dev/null; then break; fi
  sleep 0.2
done
# A member that did not start (a port in use, ...) would leave a 2-member
# cluster that still answers: refuse to measure that.
for i in 0 1 2; do
  for kind in etcd fenced; do
    if [[ $kind == etcd ]]; then pid=${ETCD_PIDS[$i]}; else pid=${FENCED_PIDS[$i]}; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$kind member $((i + 1)) is not running:" >&2
      tail -5 "$WORK/$kind$((i + 1)).log" >&2
      exit 1
    fi
  done
done
ETCDCTL_API=3 etcdctl --endpoints "$ETCD_EPS" endpoint health >/dev/null 2>&1 || { echo "etcd is not healthy" >&2; exit 1; }
for port in 31379 31381 31383; do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null || { echo "fenced member on $port is not healthy" >&2; exit 1; }
done

# The fsync latency of the disk both data dirs live on.
dd if=/dev/zero of="$WORK/fsync-probe" bs=4k count=500 oflag=dsync 2>"$WORK/dd.txt"
FSYNC_US=$(python3 -c "
import re; t=open('$WORK/dd.txt').read(); s=float(re.search(r'copied, ([0-9.]+) s', t).group(1)); print(round(s/500*1e6))")

RESULTS=$WORK/results.jsonl
# Appends one JSON line to $RESULTS: the bench's summary plus a label and
# any extra key=value fields.
record() { # json label [key=value...]
  python3 -c "
import json, sys
d = json.loads(sys.argv[1]); d['label'] = sys.argv[2]
for kv in sys.argv[3:]:
    k, v = kv.split('=', 1); d[k] = json.loads(v)
print(json.dumps(d))" "$@" >>"$RESULTS"
}

LAST_LINE=
run() { # target endpoints label args...
  local target=$1 eps=$2 label=$3; shift 3
  case " $* " in
    *" --total "* | *" --duration "* | *" member-failover "*) ;;
    *) set -- "$@" --duration "$DURATION" ;;
  esac
  LAST_LINE=$("$BENCH" --target "$target" --endpoints "$eps" -o json "$@")
  echo "  $target $label: $LAST_LINE"
  record "$LAST_LINE" "$label"
}

# member-failover on one system: the bench kills the leader (pids passed in
# endpoint order), then the killed member is started again.
member_failover() { # target label args...
  local target=$1 label=$2 eps pids killed; shift 2
  if [[ $target == etcd ]]; then eps=$ETCD_EPS; pids=$(IFS=,; echo "${ETCD_PIDS[*]}")
  else eps=$FENCED_EPS; pids=$(IFS=,; echo "${FENCED_PIDS[*]}"); fi
  run "$target" "$eps" "$label" "$@" --pids "$pids"
  killed=$(python3 -c "import json, sys; print(json.loads(sys.argv[1])['killed_member'])" "$LAST_LINE")
  restart_member "$target" "$killed"
}

# The endpoint list of one system with a follower first. The watch
# workloads put their watchers and their writer on the first endpoint, and
# a follower sees a commit one append later than the leader: both systems
# get a follower, the common case in a 3-member cluster.
follower_first() { # etcd|fenced endpoints
  local target=$1 eps=$2 status
  if [[ $target == etcd ]]; then
    status=$(ETCDCTL_API=3 etcdctl --endpoints "$eps" endpoint status -w json)
  else
    status="["
    for ep in ${eps//,/ }; do
      status+="{\"Endpoint\":\"$ep\",\"Status\":$(curl -sf "http://$ep/health" || echo null)},"
    done
    status="${status%,}]"
  fi
  python3 -c "
import json, sys
target, eps, rows = sys.argv[1], sys.argv[2].split(','), json.loads(sys.argv[3])
def follower(row):
    s = row.get('Status') or {}
    me = s['header']['member_id'] if target == 'etcd' else s.get('member_id')
    return bool(s) and s.get('leader') not in (0, None) and me != s.get('leader')
first = next((r['Endpoint'] for r in rows if follower(r)), eps[0])
first = first.split('://')[-1]
print(','.join([first] + [e for e in eps if e != first]))" "$target" "$eps" "$status"
}

# watch-hold: opens $HOLD_WATCHERS watchers on one member and samples that
# member's RSS (ps, KiB) before, and while they are open (the largest of
# three samples taken after a 1 s settle).
hold() { # target endpoint member-pid member-number
  local target=$1 ep=$2 pid=$3 member=$4 before during=0 rss bp line
  before=$(ps -o rss= -p "$pid" | tr -d ' ')
  "$BENCH" --target "$target" --endpoints "$ep" -o json --duration "$HOLD" \
    watch-hold --watchers "$HOLD_WATCHERS" >"$WORK/hold.out" 2>"$WORK/hold.err" &
  bp=$!
  for _ in $(seq 1 600); do
    grep -q "watches open" "$WORK/hold.err" && break
    kill -0 "$bp" 2>/dev/null || break
    sleep 0.1
  done
  sleep 1
  for _ in 1 2 3; do
    rss=$(ps -o rss= -p "$pid" | tr -d ' ')
    ((rss > during)) && during=$rss
    sleep 0.3
  done
  if ! wait "$bp"; then cat "$WORK/hold.err" >&2; exit 1; fi
  line=$(cat "$WORK/hold.out")
  echo "  $target watch-hold member $member: rss ${before} -> ${during} KiB; $line"
  record "$line" "watch-hold-10k" "member=$member" "rss_before_kib=$before" "rss_during_kib=$during"
}

echo "memory: $HOLD_WATCHERS idle watchers on each member, RSS before and during (${SECONDS}s since the start)"
for i in $HOLD_MEMBERS; do
  hold etcd "$(echo "$ETCD_EPS" | cut -d, -f"$i")" "${ETCD_PIDS[$((i - 1))]}" "$i"
  hold fenced "$(echo "$FENCED_EPS" | cut -d, -f"$i")" "${FENCED_PIDS[$((i - 1))]}" "$i"
done

# label|arguments|in --quick. lock-CxL: C clients cycling (acquire, release)
# over L locks. range-N: N clients reading one key each time, linearizable;
# range-ser-N the same, serializable. keepalive-N: N leases each kept alive
# over a stream of its own, closed loop. watch-N: N watchers of one key on a
# follower, one writer at WATCH_RATE puts/s. mfail-C: C clients on C locks
# while the leading member is SIGKILLed (run MF_KILLS times a round).
# *-leader: fenced's connections all on the leader and fenced-client
# following it (`--route leader`, fenced-client's `prefer_leader`); etcd
# runs the same workload through etcd-client's balancer, as in every row.
WORKLOADS=(
  "put-1|put --clients 1|0"
  "put-64|put --clients 64|1"
  "range-1|range --clients 1|0"
  "range-64|range --clients 64|1"
  "range-ser-64|range --clients 64 --serializable|1"
  "lock-1x1|lock --clients 1 --locks 1|1"
  "lock-16x16|lock --clients 16 --locks 16|0"
  "lock-64x8|lock --clients 64 --locks 8|1"
  "put-64-leader|put --clients 64 --route leader|0"
  "lock-1x1-leader|lock --clients 1 --locks 1 --route leader|0"
  "lock-64x8-leader|lock --clients 64 --locks 8 --route leader|1"
  "keepalive-1|lease-keepalive --clients 1|0"
  "keepalive-64|lease-keepalive --clients 64|1"
  "watch-1|watch-latency --watchers 1 --rate $WATCH_RATE --duration $WATCH_DURATION|0"
  "watch-100|watch-latency --watchers 100 --rate $WATCH_RATE --duration $WATCH_DURATION|0"
  "watch-1000|watch-latency --watchers 1000 --rate $WATCH_RATE --duration $WATCH_DURATION|1"
  "failover-3|election-failover --candidates 3 --ttl $FAILOVER_TTL --total $FAILOVERS|1"
  "mfail-8|--clients 8 member-failover --kill-after $MF_KILL_AFTER --after $MF_AFTER|1"
)
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS (${SECONDS}s since the start)"
  for w in "${WORKLOADS[@]}"; do
    label=${w%%|*}; rest=${w#*|}; args=${rest%|*}; in_quick=${rest##*|}
    ((QUICK && !in_quick)) && continue
    if [[ $label == mfail-* ]]; then
      for _ in $(seq 1 "$MF_KILLS"); do
        # shellcheck disable=SC2086
        member_failover etcd "$label" $args
        # shellcheck disable=SC2086
        member_failover fenced "$label" $args
      done
      continue
    fi
    etcd_eps=$ETCD_EPS; fenced_eps=$FENCED_EPS
    if [[ $label == watch-* ]]; then
      etcd_eps=$(follower_first etcd "$ETCD_EPS"); fenced_eps=$(follower_first fenced "$FENCED_EPS")
    fi
    # shellcheck disable=SC2086
    run etcd "$etcd_eps" "$label" $args
    # shellcheck disable=SC2086
    run fenced "$fenced_eps" "$label" $args
  done
done

python3 "$ROOT/tests/bench/report.py" "$RESULTS" "$OUT" \
  --rounds "$ROUNDS" --duration "$DURATION" --watch-duration "$WATCH_DURATION" \
  --watch-rate "$WATCH_RATE" --failovers "$FAILOVERS" --hold "$HOLD" --fsync-us "$FSYNC_US" \
  --mf-kills "$MF_KILLS" --mf-kill-after "$MF_KILL_AFTER" --mf-after "$MF_AFTER" \
  --etcd-version "$(etcd --version | head -1)" --fenced-version "$("$FENCED" --version)" \
  --command "tests/bench/compare.sh ${1:-}"
# The raw results, to regenerate the report (for example after editing
# tests/bench/notes.md): python3 tests/bench/report.py RESULTS OUT --rounds ...
cp "$RESULTS" "${OUT%.md}-results.jsonl"
echo "wrote $OUT and ${OUT%.md}-results.jsonl (${SECONDS}s since the start)"

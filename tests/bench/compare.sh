#!/usr/bin/env bash
# Side-by-side benchmark: a 3-member etcd 3.4 and a 3-member fenced on
# loopback, same machine, same disk, fsync on, same heartbeat (100 ms) and
# election timeout (1 s). Workloads (put, then lock acquire+release cycles)
# run alternately (etcd, fenced, etcd, ...) for ROUNDS rounds;
# docs/benchmarks.md gets min/median/max and the ratio.
#
#   tests/bench/compare.sh            # full: 3 rounds x 10 s per run (about 6 minutes)
#   tests/bench/compare.sh --quick    # 3 rounds x 3 s per run (about 3 minutes)
#
# Binaries are built into $CARGO_TARGET_DIR when set (else target/).
#
# Needs root for `apt-get install etcd-server protobuf-compiler` when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

ROUNDS=3
DURATION=10
OUT=docs/benchmarks.md
if [[ "${1:-}" == "--quick" ]]; then DURATION=3; fi

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

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/fenced-compare.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# Loopback ports: etcd 32379.. (client) 32380.. (peer); fenced 33379.. 33380..
ETCD_CLUSTER="e1=http://127.0.0.1:32380,e2=http://127.0.0.1:32382,e3=http://127.0.0.1:32384"
ETCD_EPS="127.0.0.1:32379,127.0.0.1:32381,127.0.0.1:32383"
for i in 1 2 3; do
  c=$((32379 + (i - 1) * 2)); p=$((c + 1))
  etcd --name "e$i" --data-dir "$WORK/etcd$i" \
    --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
    --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
    --initial-cluster "$ETCD_CLUSTER" --initial-cluster-state new \
    --heartbeat-interval 100 --election-timeout 1000 \
    >"$WORK/etcd$i.log" 2>&1 &
  PIDS+=($!)
done
FENCED_CLUSTER="1=127.0.0.1:33380,2=127.0.0.1:33382,3=127.0.0.1:33384"
FENCED_EPS="127.0.0.1:33379,127.0.0.1:33381,127.0.0.1:33383"
for i in 1 2 3; do
  c=$((33379 + (i - 1) * 2)); p=$((c + 1))
  "$FENCED" --id "$i" --data-dir "$WORK/fenced$i" --listen "127.0.0.1:$c" --peer-listen "127.0.0.1:$p" \
    --initial-cluster "$FENCED_CLUSTER" --log warn >"$WORK/fenced$i.log" 2>&1 &
  PIDS+=($!)
done

echo "waiting for both clusters to elect a leader"
for _ in $(seq 1 100); do
  if ETCDCTL_API=3 etcdctl --endpoints "$ETCD_EPS" endpoint health >/dev/null 2>&1 &&
     curl -sf http://127.0.0.1:33379/health >/dev/null && curl -sf http://127.0.0.1:33381/health >/dev/null &&
     curl -sf http://127.0.0.1:33383/health >/dev/null; then break; fi
  sleep 0.2
done

# The fsync latency of the disk both data dirs live on.
dd if=/dev/zero of="$WORK/fsync-probe" bs=4k count=500 oflag=dsync 2>"$WORK/dd.txt"
FSYNC_US=$(python3 -c "
import re; t=open('$WORK/dd.txt').read(); s=float(re.search(r'copied, ([0-9.]+) s', t).group(1)); print(round(s/500*1e6))")

RESULTS=$WORK/results.jsonl
run() { # target endpoints label args...
  local target=$1 eps=$2 label=$3; shift 3
  local line
  line=$("$BENCH" --target "$target" --endpoints "$eps" -o json "$@" --duration "$DURATION")
  echo "  $target $label: $line"
  python3 -c "import json,sys; d=json.loads(sys.argv[1]); d['label']=sys.argv[2]; print(json.dumps(d))" "$line" "$label" >>"$RESULTS"
}

# label|arguments. lock-CxL: C clients cycling (acquire, release) over L locks.
WORKLOADS=(
  "put-1|put --clients 1"
  "put-64|put --clients 64"
  "lock-1x1|lock --clients 1 --locks 1"
  "lock-16x16|lock --clients 16 --locks 16"
  "lock-64x8|lock --clients 64 --locks 8"
)
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS"
  for w in "${WORKLOADS[@]}"; do
    label=${w%%|*}; args=${w#*|}
    # shellcheck disable=SC2086
    run etcd "$ETCD_EPS" "$label" $args
    # shellcheck disable=SC2086
    run fenced "$FENCED_EPS" "$label" $args
  done
done

python3 "$ROOT/tests/bench/report.py" "$RESULTS" "$OUT" \
  --rounds "$ROUNDS" --duration "$DURATION" --fsync-us "$FSYNC_US" \
  --etcd-version "$(etcd --version | head -1)" --fenced-version "$("$FENCED" --version)" \
  --command "tests/bench/compare.sh ${1:-}"
echo "wrote $OUT"

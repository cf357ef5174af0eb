#!/usr/bin/env bash
# Snapshot figures for docs/benchmarks.md (issue 5), on one machine:
#   1. what a snapshot costs at KEYS keys and LEASES leases (apply-loop pause,
#      encode time, size, decode time): the snapshot_cost example;
#   2. a 3-member cluster loaded with KEYS keys; a 4th member joins while a
#      put load runs: time until it has installed the snapshot, caught up and
#      been promoted, and put throughput with and without the catch-up.
# Usage: tests/bench/snapshot-catchup.sh [KEYS] [LEASES]
set -euo pipefail
cd "$(dirname "$0")/../.."
KEYS=${1:-100000}
LEASES=${2:-10000}
B=target/release
cargo build --release -q --bin fenced --bin fencectl -p fenced-server -p fenced-client
cargo build --release -q -p fenced-tests --bin fenced-bench

echo "== snapshot cost ($KEYS keys, $LEASES leases, 100 B values)"
cargo run --release -q -p fenced-server --example snapshot_cost -- "$KEYS" "$LEASES" 100

DIR=$(mktemp -d /tmp/fenced-snapbench.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$DIR"' EXIT
P=$((20000 + RANDOM % 20000))
CLUSTER="1=127.0.0.1:$((P+1)),2=127.0.0.1:$((P+3)),3=127.0.0.1:$((P+5))"
for i in 1 2 3; do
    $B/fenced --id $i --data-dir "$DIR/$i" --listen 127.0.0.1:$((P+2*i-2)) \
        --peer-listen 127.0.0.1:$((P+2*i-1)) --initial-cluster "$CLUSTER" > "$DIR/m$i.log" 2>&1 &
done
export FENCED_ENDPOINTS=127.0.0.1:$P,127.0.0.1:$((P+2)),127.0.0.1:$((P+4))
until $B/fencectl status > /dev/null 2>&1; do sleep 0.2; done

echo "== load: $KEYS puts of 100 B values to random keys out of $KEYS, 64 clients"
$B/fenced-bench --clients 64 --total "$KEYS" put --keys "$KEYS" --value-size 100
$B/fencectl -o json status | head -1

echo "== put load alone (16 clients, 10 s)"
$B/fenced-bench --clients 16 --duration 10 put

echo "== member 4 joins during the same put load"
$B/fenced-bench --clients 16 --duration 10 put > "$DIR/during.txt" &
BENCH=$!
sleep 1
START=$(date +%s.%N)
$B/fenced --id 4 --data-dir "$DIR/4" --listen 127.0.0.1:$((P+6)) --peer-listen 127.0.0.1:$((P+7)) \
    --join 127.0.0.1:$P > "$DIR/m4.log" 2>&1 &
until grep -q "installed a snapshot from the leader index" "$DIR/m4.log"; do sleep 0.05; done
INSTALLED=$(date +%s.%N)
until $B/fencectl member list | grep -q "^4, .*, false$"; do sleep 0.05; done
PROMOTED=$(date +%s.%N)
wait $BENCH
cat "$DIR/during.txt"
grep -h "sent a snapshot\|installed a snapshot" "$DIR"/m*.log | sed 's/^[^ ]* *//'
echo "join -> snapshot installed: $(echo "$INSTALLED - $START" | bc) s; join -> promoted to voter: $(echo "$PROMOTED - $START" | bc) s"

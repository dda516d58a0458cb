#!/usr/bin/env bash
# A/B of Redis SET throughput on a fresh local 3-node cluster, for
# comparing two catga binaries in one session (this VM's speed drifts by
# ±20% over minutes, so alternate them: A B A B A B).
#
#   bench/ab-set.sh LABEL path/to/catga [config.toml] [rounds]
#
# Starts deploy/start-cluster.sh with that binary (and config file, given
# to every node as CATGA_CONFIG) in a fresh directory, finds the leader
# through Sentinel, then per round runs through the leader
#   redis-benchmark -t set -c 50 -n 100000 -P 1   and   -n 400000 -P 16
# and prints SETs/s, the three nodes' CPU (utime+stime) per SET in µs and
# their context switches (every thread's) per SET. CLIENTS=N changes -c
# (50), e.g. to see per-entry against per-SET cost. Needs redis-tools.
set -euo pipefail
label=$1 bin=$2 cfg=${3:-} rounds=${4:-1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CATGA_LOCAL_DIR=${TMPDIR:-/tmp}/catga-ab-$label CATGA_BIN=$bin
rm -rf "$CATGA_LOCAL_DIR"
if [[ -n "$cfg" ]]; then export CATGA_CONFIG=$cfg; fi
"$ROOT/deploy/start-cluster.sh" >/dev/null
unset CATGA_CONFIG
trap '"$ROOT/deploy/stop-cluster.sh" >/dev/null 2>&1' EXIT
leader=""
for _ in $(seq 1 100); do
    leader=$(redis-cli -p 26379 SENTINEL get-master-addr-by-name mymaster 2>/dev/null | tail -1 || true)
    if [[ -n "$leader" ]] && redis-cli -p "$leader" set ab-probe 1 2>/dev/null | grep -q OK; then break; fi
    sleep 0.1
done
pids=$(cat "$CATGA_LOCAL_DIR"/n*.pid)
ticks() { for p in $pids; do cat "/proc/$p/stat"; done | awk '{s += $14 + $15} END {print s}'; }
switches() {
    for p in $pids; do cat /proc/"$p"/task/*/status; done | awk '/ctxt_switches/ {s += $2} END {print s}'
}
hz=$(getconf CLK_TCK)
for _ in $(seq 1 "$rounds"); do
    for depth in 1 16; do
        n=$((depth == 1 ? 100000 : 400000))
        t0=$(ticks) c0=$(switches)
        rps=$(redis-benchmark -p "$leader" -t set -n "$n" -c "${CLIENTS:-50}" -P "$depth" -q 2>&1 | tr '\r' '\n' |
            grep -a "per second" | awk '{print $2}')
        t1=$(ticks) c1=$(switches)
        awk -v l="$label" -v d="$depth" -v r="$rps" -v t="$((t1 - t0))" -v c="$((c1 - c0))" -v hz="$hz" -v n="$n" \
            'BEGIN {printf "%s -P %s: %s SETs/s, CPU %.2f µs/SET, %.3f context switches/SET\n", l, d, r, t * 1e6 / hz / n, c / n}'
    done
done

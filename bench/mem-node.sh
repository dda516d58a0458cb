#!/usr/bin/env bash
# Resident memory of one catga node under a Redis load, for comparing
# binaries or settings in one session (alternate them: A B A B).
#
#   bench/mem-node.sh path/to/catga [ENV=value ...]
#
# Starts a single node (ports 7001-7005 on 127.0.0.1, data in a fresh
# temporary directory) with the given environment, then prints VmRSS and
# the part of it in transparent huge pages (AnonHugePages) at start, after
# `redis-benchmark -t set -r 100000 -n 300000 -d 100 -P 16` (about 95 k
# keys of 100 bytes) and after 2 M SETs to one key on top (-P 16, with its
# rate). Needs redis-tools.
set -euo pipefail
bin=$1
shift
dir=$(mktemp -d)
env "$@" "$bin" --name mem --data-dir "$dir" --redis 127.0.0.1:7001 --nats 127.0.0.1:7002 \
    --sentinel 127.0.0.1:7003 --cluster 127.0.0.1:7004 --http 127.0.0.1:7005 --bootstrap-expect 1 \
    >"$dir.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir" "$dir.log"' EXIT
for _ in $(seq 1 100); do
    if redis-cli -p 7001 set probe 1 2>/dev/null | grep -q OK; then break; fi
    sleep 0.1
done
report() {
    local rss huge
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
    huge=$(awk '/^AnonHugePages/ {print $2}' "/proc/$pid/smaps_rollup")
    echo "$1: VmRSS $((rss / 1024)) MiB, in huge pages $((huge / 1024)) MiB"
}
report start
redis-benchmark -p 7001 -t set -r 100000 -n 300000 -d 100 -P 16 -q >/dev/null 2>&1
report "$(redis-cli -p 7001 dbsize) keys"
redis-benchmark -p 7001 -t set -n 2000000 -P 16 -q 2>&1 | tr '\r' '\n' | grep -a "per second" | tail -1
report "+2M SETs to one key"

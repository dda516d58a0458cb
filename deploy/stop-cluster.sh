#!/usr/bin/env bash
# Stops the nodes started by deploy/start-cluster.sh: SIGTERM (lame-duck
# drain of clients), then SIGKILL after a grace period.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${CATGA_LOCAL_DIR:-$ROOT/deploy/local}
for i in 1 2 3; do
    pidfile=$DIR/n$i.pid
    [[ -f $pidfile ]] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "n$i did not stop in 10 s; killing" >&2
            kill -KILL "$pid" || true
        fi
        echo "n$i stopped"
    fi
    rm -f "$pidfile"
done

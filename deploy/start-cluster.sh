#!/usr/bin/env bash
# Starts a 3-node Catga cluster on this machine, in the background.
#
#   deploy/start-cluster.sh        build (release), make certs on first run, start n1 n2 n3
#   deploy/stop-cluster.sh         stop them (SIGTERM: clients are drained first)
#
# Needs only cargo. Logs, data and certificates live under one folder:
#   $CATGA_LOCAL_DIR (default deploy/local)/{certs,n1,n2,n3,n1.log,...}
# Ports (set to 0 for free ports, as the tests do):
#   CATGA_NATS_PORTS="4222 4223 4224"  CATGA_CLUSTER_PORTS="6222 6223 6224"
#   CATGA_HTTP_PORTS="8222 8223 8224"  CATGA_REDIS_PORTS="6379 6380 6381"
#   CATGA_SENTINEL_PORTS="26379 26380 26381"
# CATGA_BIN=path/to/catga skips the build.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${CATGA_LOCAL_DIR:-$ROOT/deploy/local}
read -r -a NATS_PORTS <<<"${CATGA_NATS_PORTS:-4222 4223 4224}"
read -r -a CLUSTER_PORTS <<<"${CATGA_CLUSTER_PORTS:-6222 6223 6224}"
read -r -a HTTP_PORTS <<<"${CATGA_HTTP_PORTS:-8222 8223 8224}"
read -r -a REDIS_PORTS <<<"${CATGA_REDIS_PORTS:-6379 6380 6381}"
read -r -a SENTINEL_PORTS <<<"${CATGA_SENTINEL_PORTS:-26379 26380 26381}"
HOST=${CATGA_HOST:-127.0.0.1}

if [[ -z "${CATGA_BIN:-}" ]]; then
    (cd "$ROOT" && cargo build --release --bin catga)
    CATGA_BIN=$ROOT/target/release/catga
fi

mkdir -p "$DIR"
for i in 1 2 3; do
    if [[ -f "$DIR/n$i.pid" ]] && kill -0 "$(cat "$DIR/n$i.pid")" 2>/dev/null; then
        echo "n$i is already running (pid $(cat "$DIR/n$i.pid")); run deploy/stop-cluster.sh first" >&2
        exit 1
    fi
done
if [[ ! -f "$DIR/certs/ca.pem" ]]; then
    "$CATGA_BIN" certs init --dir "$DIR/certs" --nodes n1,n2,n3
fi

# Waits for node $1's "listening" log line and prints it.
wait_listening() {
    local log=$1 pid=$2
    for _ in $(seq 1 300); do
        if line=$(grep -m1 "catga node listening" "$log" 2>/dev/null); then
            echo "$line"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "node exited; its log ($log):" >&2
            cat "$log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "timed out waiting for $log" >&2
    return 1
}

field() { sed -n "s/.*$1=\([^ ]*\).*/\1/p"; }

SEED=""
for i in 1 2 3; do
    args=(run --name "n$i" --data-dir "$DIR/n$i" --tls-dir "$DIR/certs"
        --nats "$HOST:${NATS_PORTS[$((i - 1))]}" --cluster "$HOST:${CLUSTER_PORTS[$((i - 1))]}" --http "$HOST:${HTTP_PORTS[$((i - 1))]}"
        --redis "$HOST:${REDIS_PORTS[$((i - 1))]}" --sentinel "$HOST:${SENTINEL_PORTS[$((i - 1))]}"
        --advertise "$HOST")
    if [[ -n "$SEED" ]]; then
        args+=(--peers "$SEED")
    fi
    # The "listening" line this script waits for is logged at info by
    # catga_node::node; keep it whatever level the user picks.
    RUST_LOG="${RUST_LOG:-info},catga_node::node=info" nohup "$CATGA_BIN" "${args[@]}" >"$DIR/n$i.log" 2>&1 &
    echo $! >"$DIR/n$i.pid"
    line=$(wait_listening "$DIR/n$i.log" "$(cat "$DIR/n$i.pid")")
    nats=$(echo "$line" | field nats)
    cluster=$(echo "$line" | field cluster)
    http=$(echo "$line" | field http)
    redis=$(echo "$line" | field redis)
    sentinel=$(echo "$line" | field sentinel)
    [[ -z "$SEED" ]] && SEED=$cluster
    echo "n$i pid=$(cat "$DIR/n$i.pid") nats=nats://$nats redis=redis://$redis sentinel=$sentinel cluster=$cluster http=http://$http log=$DIR/n$i.log"
done
echo "cluster up; connect any NATS client to a nats:// URL above and any Redis client to a redis:// one (Sentinel-aware clients: the sentinel addresses); stop with deploy/stop-cluster.sh"

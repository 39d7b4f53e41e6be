#!/usr/bin/env bash
# The gRPC API benchmark (bench/README.md, "gRPC API"): against the local Redis and RabbitMQ,
# starts wx-gateway and wx-worker as real processes on a config with $ACCOUNTS accounts and an
# admin API key, then runs wxgate-api:
#   1. subscribe  Events.Subscribe next to a bare lapin consumer of the same group queue, with
#                 the same prefetch, alternately, $ROUNDS rounds;
#   2. latency    pushes through the gateway at $RATE/s, time from each 200 to the subscriber;
#   3. hold       $GROUP_COUNT groups and $STREAMS open subscriptions, the worker's RSS.
# Prints each JSON summary and removes everything it created, also on failure.
#
# Environment (all optional):
#   CARGO_TARGET_DIR  build directory                          (default $HOME/.cache/wxgate-target)
#   ACCOUNTS          configured accounts                      (default 10000)
#   QUEUE_TYPE        classic | quorum                         (default quorum)
#   DURATION          latency: how long                        (default 10s)
#   EVENTS, PREFETCH, ROUNDS  subscribe                        (default 50000, 256, 3)
#   RATE              latency: pushes per second               (default 1000)
#   GROUP_COUNT, STREAMS  hold                                 (default 100, 50)
#   ONLY              run only these steps, e.g. "subscribe latency"
#   PORT, WORKER_PORT, GRPC_PORT, SIM_PORT                     (default 18080, 18091, 18051, 18099)
# (Tokens.GetAccessToken has its own tool: wxgate-tokens, see bench/README.md.)
#   SKIP_BUILD=1      use the binaries already built
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ACCOUNTS=${ACCOUNTS:-10000}
QUEUE_TYPE=${QUEUE_TYPE:-quorum}
DURATION=${DURATION:-10s}
EVENTS=${EVENTS:-50000}
PREFETCH=${PREFETCH:-256}
ROUNDS=${ROUNDS:-3}
RATE=${RATE:-1000}
GROUP_COUNT=${GROUP_COUNT:-100}
STREAMS=${STREAMS:-50}
ONLY=${ONLY:-subscribe latency hold}
PORT=${PORT:-18080}
WORKER_PORT=${WORKER_PORT:-18091}
GRPC_PORT=${GRPC_PORT:-18051}
SIM_PORT=${SIM_PORT:-18099}
API_KEY=bench-admin-key
GATEWAY_PID=""
WORKER_PID=""

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
start_namespace bench

check_prerequisites
raise_fd_limit
build_release wx-gateway wx-worker wxgate-bench
for bin in wx-gateway wx-worker wxgate-api; do
    link_private "$CARGO_TARGET_DIR/release/$bin" "$bin"
done

stop_processes() {
    stop wx-worker "$WORKER_PID"
    stop wx-gateway "$GATEWAY_PID"
    # Consumer-group queues are {ns}.group.* (removed with every {ns}.* queue); the exchange
    # their dropped events go to is not.
    delete_exchange "${NS}.groups.dropped"
}

CONFIG=$WORK/api.toml
{
    config_head "$NS" "$PORT"
    cat <<CONF
metrics_per_account = false

[worker]
http_listen = "127.0.0.1:$WORKER_PORT"
grpc_listen = "127.0.0.1:$GRPC_PORT"

[wechat]
api_base = "http://127.0.0.1:$SIM_PORT"

[[api_keys]]
name = "bench"
sha256 = "$(printf '%s' "$API_KEY" | sha256sum | cut -d' ' -f1)"
accounts = ["*"]
CONF
    for ((i = 0; i < ACCOUNTS; i++)); do
        printf '\n[[accounts]]\nid = "bench%d"\nappid = "wx%016x"\nsecret = "bench-secret-%d"\ntoken = "benchtoken"\nmode = "plain"\n' "$i" "$i" "$i"
    done
} >"$CONFIG"

log "starting wx-gateway and wx-worker (namespace $NS, $ACCOUNTS accounts, queue type $QUEUE_TYPE)"
"$WORK/wx-gateway" --config "$CONFIG" >>"$WORK/gateway.log" 2>&1 &
GATEWAY_PID=$!
wait_ready wx-gateway "$GATEWAY_PID" "http://127.0.0.1:$PORT/readyz" "$WORK/gateway.log"
"$WORK/wx-worker" --config "$CONFIG" >>"$WORK/worker.log" 2>&1 &
WORKER_PID=$!
wait_ready wx-worker "$WORKER_PID" "http://127.0.0.1:$WORKER_PORT/readyz" "$WORK/worker.log"

api() { "$WORK/wxgate-api" --config "$CONFIG" --api-key "$API_KEY" --worker-pid "$WORKER_PID" "$@"; }
echo "## wxgate gRPC API · $(date -u +%Y-%m-%dT%H:%MZ) · $(nproc) CPUs · load $(cut -d' ' -f1 /proc/loadavg) · $ACCOUNTS accounts · $QUEUE_TYPE queues"
for step in $ONLY; do
    log "running $step"
    case "$step" in
    subscribe) api subscribe --events "$EVENTS" --prefetch "$PREFETCH" --rounds "$ROUNDS" ;;
    latency) api latency --rate "$RATE" --duration "$DURATION" ;;
    hold) api hold --groups "$GROUP_COUNT" --streams "$STREAMS" ;;
    *) die "unknown step $step" ;;
    esac
done
if grep -qiE 'error|panic' "$WORK/worker.log"; then
    log "wx-worker logged errors; last lines:"
    grep -iE 'error|panic' "$WORK/worker.log" | tail -n 5 >&2
fi

#!/usr/bin/env bash
# Hostile input against a release wx-gateway or wx-worker, with its RSS before, during and
# after each attack; see bench/README.md ("Hostile input").
#
# TARGET=gateway (the default): builds wx-gateway and wxgate-hostile (release), starts the
# gateway on a temporary config (random namespace, gateway.max_connections = MAX_CONNECTIONS,
# a 2 s header timeout, max_body_bytes 1 MiB so the XML limits rather than the size refuse
# the XML attacks), runs wxgate-hostile against it, prints its markdown table, and removes
# everything it created.
#
# TARGET=worker: the same with wx-worker (worker.http_max_connections = MAX_CONNECTIONS, a
# 2 s worker.http_header_timeout_ms, an admin API key, WeChat pointed at a closed local
# port): the HTTP attacks on its health listener, the HTTP/2 attacks on its gRPC listener,
# and slow Events.Subscribe streams fed through RabbitMQ.
#
# Environment (all optional):
#   CARGO_TARGET_DIR  build directory          (default $HOME/.cache/wxgate-target)
#   TARGET            gateway or worker        (default gateway)
#   MAX_CONNECTIONS   the HTTP connection cap  (default 256)
#   BEYOND            connections past the cap (default 1000)
#   COPIES            parallel copies per attack (default 50)
#   PORT              HTTP listen port         (default 18090)
#   GRPC_PORT         worker gRPC port         (default 18051)
#   IDLE              worker: idle gRPC connections of each kind (default 5000)
#   SKIP_BUILD=1      use the binaries already in $CARGO_TARGET_DIR/release
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
QUEUE_TYPE=${QUEUE_TYPE:-classic}
TARGET=${TARGET:-gateway}
MAX_CONNECTIONS=${MAX_CONNECTIONS:-256}
BEYOND=${BEYOND:-1000}
COPIES=${COPIES:-50}
PORT=${PORT:-18090}
GRPC_PORT=${GRPC_PORT:-18051}
IDLE=${IDLE:-5000}
API_KEY=hostile-admin-key
PID=""

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
start_namespace hostile
case "$TARGET" in
gateway) BIN_NAME=wx-gateway ;;
worker) BIN_NAME=wx-worker ;;
*) die "TARGET must be gateway or worker" ;;
esac
stop_processes() {
    stop "$BIN_NAME" "$PID"
    # Events.Subscribe declares the exchange consumer groups dead-letter to.
    [[ "$TARGET" == worker ]] && delete_exchange "${NS}.groups.dropped"
    return 0
}

check_prerequisites
# Past the idle connections and the flood, the attacker needs a descriptor for each, and so
# does the process attacked.
raise_fd_limit

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    log "building $BIN_NAME and wxgate-hostile (release, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    (cd "$ROOT" && cargo build --release -p "$BIN_NAME" -p wxgate-bench --bin "$BIN_NAME" --bin wxgate-hostile)
fi
TARGET_BIN=$CARGO_TARGET_DIR/release/$BIN_NAME
HOSTILE_BIN=$CARGO_TARGET_DIR/release/wxgate-hostile
[[ -x "$TARGET_BIN" && -x "$HOSTILE_BIN" ]] || die "binaries missing in $CARGO_TARGET_DIR/release"

{
    config_head "$NS" "$PORT"
    if [[ "$TARGET" == gateway ]]; then
        cat <<TOML
max_connections = $MAX_CONNECTIONS
header_timeout_ms = 2000
max_body_bytes = 1048576
TOML
    else
        cat <<TOML

[worker]
http_listen = "127.0.0.1:$PORT"
grpc_listen = "127.0.0.1:$GRPC_PORT"
http_max_connections = $MAX_CONNECTIONS
http_header_timeout_ms = 2000

[wechat]
# Nothing here calls WeChat; a closed local port keeps it so.
api_base = "http://127.0.0.1:9"

[[api_keys]]
name = "hostile"
sha256 = "$(printf '%s' "$API_KEY" | sha256sum | cut -d' ' -f1)"
accounts = ["*"]
TOML
    fi
    bench_account plain
    echo 'secret = "bench-secret"'
} >"$WORK/config.toml"

"$TARGET_BIN" --config "$WORK/config.toml" >"$WORK/target.log" 2>&1 &
PID=$!
wait_ready "$BIN_NAME" "$PID" "http://127.0.0.1:$PORT/readyz" "$WORK/target.log"

log "attacking ($BIN_NAME pid $PID, cap $MAX_CONNECTIONS, $COPIES copies per attack)"
echo "## $BIN_NAME · $(date -u +%Y-%m-%dT%H:%MZ) · $(nproc) CPUs · commit $(git -C "$ROOT" rev-parse --short HEAD)"
if [[ "$TARGET" == gateway ]]; then
    "$HOSTILE_BIN" --addr "127.0.0.1:$PORT" --pid "$PID" --account bench --token benchtoken \
        --max-connections "$MAX_CONNECTIONS" --beyond "$BEYOND" --copies "$COPIES"
else
    "$HOSTILE_BIN" --target worker --addr "127.0.0.1:$PORT" --pid "$PID" \
        --grpc-addr "127.0.0.1:$GRPC_PORT" --api-key "$API_KEY" --account bench \
        --appid wx0000000000bench --amqp-url "$AMQP_URL" --namespace "$NS" --idle "$IDLE" \
        --max-connections "$MAX_CONNECTIONS" --beyond "$BEYOND" --copies "$COPIES"
fi
kill -0 "$PID" || die "$BIN_NAME died"
log "$BIN_NAME alive; its log: $(grep -c . "$WORK/target.log") lines"
if grep -qiE 'panic' "$WORK/target.log"; then
    log "$BIN_NAME logged panics:"
    grep -iE 'panic' "$WORK/target.log" | tail -n 5 >&2
fi

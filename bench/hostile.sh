#!/usr/bin/env bash
# Hostile input against a release wx-gateway, with its RSS before and after each attack; see
# bench/README.md ("Hostile input").
#
# Builds wx-gateway and wxgate-hostile (release), starts the gateway on a temporary config
# (random namespace, gateway.max_connections = MAX_CONNECTIONS, a 2 s header timeout,
# max_body_bytes 1 MiB so the XML limits rather than the size refuse the XML attacks), runs
# wxgate-hostile against it, prints its markdown table, and removes everything it created.
#
# Environment (all optional):
#   CARGO_TARGET_DIR  build directory          (default $HOME/.cache/wxgate-target)
#   MAX_CONNECTIONS   gateway.max_connections  (default 256)
#   BEYOND            connections past the cap (default 1000)
#   COPIES            parallel copies per attack (default 50)
#   PORT              gateway listen port      (default 18090)
#   SKIP_BUILD=1      use the binaries already in $CARGO_TARGET_DIR/release
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
QUEUE_TYPE=${QUEUE_TYPE:-classic}
MAX_CONNECTIONS=${MAX_CONNECTIONS:-256}
BEYOND=${BEYOND:-1000}
COPIES=${COPIES:-50}
PORT=${PORT:-18090}
GATEWAY_PID=""

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
start_namespace hostile
stop_processes() { stop wx-gateway "$GATEWAY_PID"; }

check_prerequisites
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    log "building wx-gateway and wxgate-hostile (release, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    (cd "$ROOT" && cargo build --release -p wx-gateway -p wxgate-bench --bin wx-gateway --bin wxgate-hostile)
fi
GATEWAY_BIN=$CARGO_TARGET_DIR/release/wx-gateway
HOSTILE_BIN=$CARGO_TARGET_DIR/release/wxgate-hostile
[[ -x "$GATEWAY_BIN" && -x "$HOSTILE_BIN" ]] || die "binaries missing in $CARGO_TARGET_DIR/release"

{
    config_head "$NS" "$PORT"
    cat <<TOML
max_connections = $MAX_CONNECTIONS
header_timeout_ms = 2000
max_body_bytes = 1048576
TOML
    bench_account plain
} >"$WORK/gateway.toml"

"$GATEWAY_BIN" --config "$WORK/gateway.toml" >"$WORK/gateway.log" 2>&1 &
GATEWAY_PID=$!
wait_ready wx-gateway "$GATEWAY_PID" "http://127.0.0.1:$PORT/readyz" "$WORK/gateway.log"

log "attacking (gateway pid $GATEWAY_PID, cap $MAX_CONNECTIONS, $COPIES copies per attack)"
"$HOSTILE_BIN" --addr "127.0.0.1:$PORT" --pid "$GATEWAY_PID" --account bench --token benchtoken \
    --max-connections "$MAX_CONNECTIONS" --beyond "$BEYOND" --copies "$COPIES"
kill -0 "$GATEWAY_PID" || die "the gateway died"
log "gateway alive; its log: $(grep -c . "$WORK/gateway.log") lines"

#!/usr/bin/env bash
# Load matrix for wx-gateway against the local Redis and RabbitMQ; see bench/README.md.
#
# Builds wx-gateway and wxgate-load (release), starts the gateway on a temporary config
# with a random namespace, runs plain/safe x 32/128 connections, then an RSS run with
# 10,000 extra accounts and 1,000 idle keep-alive connections, prints a markdown table,
# and removes everything it created (gateway process, {ns}.* queues and exchange,
# {ns}:* Redis keys, the temporary directory).
#
# Environment (all optional):
#   CARGO_TARGET_DIR  build directory           (default $HOME/.cache/wxgate-target)
#   QUEUE_TYPE        classic | quorum          (default classic)
#   MODES             callback modes to run     (default "plain safe")
#   CONNECTIONS       connection counts         (default "32 128")
#   DURATION, WARMUP  per run                   (default 10s, 2s)
#   RSS_ACCOUNTS      accounts in the RSS run   (default 10000)
#   IDLE_CONNECTIONS  idle conns in the RSS run (default 1000)
#   PORT              gateway listen port       (default 18080)
#   REDIS_URL         (default redis://127.0.0.1:6379/0)
#   AMQP_URL          (default amqp://guest:guest@127.0.0.1:5672/%2f)
#   RUST_LOG          gateway log filter        (default warn: no per-request logging)
#   SKIP_BUILD=1      use the binaries already in $CARGO_TARGET_DIR/release
#   GATEWAY_BIN       run this wx-gateway binary instead (e.g. an older build, to compare)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
QUEUE_TYPE=${QUEUE_TYPE:-classic}
MODES=${MODES:-plain safe}
CONNECTIONS=${CONNECTIONS:-32 128}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
RSS_ACCOUNTS=${RSS_ACCOUNTS:-10000}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-1000}
PORT=${PORT:-18080}

TOKEN=benchtoken
AES_KEY=abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG
APPID=wx0000000000bench
GATEWAY_PID=""

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
start_namespace bench

check_prerequisites

# 1,000 idle connections on both ends of one machine need more than the usual 1,024 fds.
raise_fd_limit

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    log "building wx-gateway and wxgate-load (release, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    (cd "$ROOT" && cargo build --release -p wx-gateway -p wxgate-bench)
fi
GATEWAY_BIN=${GATEWAY_BIN:-$CARGO_TARGET_DIR/release/wx-gateway}
LOAD_BIN=$CARGO_TARGET_DIR/release/wxgate-load
[[ -x "$GATEWAY_BIN" && -x "$LOAD_BIN" ]] || die "binaries missing in $CARGO_TARGET_DIR/release"

stop_gateway() {
    stop wx-gateway "$GATEWAY_PID"
    GATEWAY_PID=""
}

stop_processes() {
    stop_gateway
}

# write_config FILE EXTRA_ACCOUNTS
write_config() {
    local file=$1 extra=$2
    {
        config_head "$NS" "$PORT"
        cat <<EOF

[[accounts]]
id = "bench"
appid = "$APPID"
token = "$TOKEN"
mode = "plain"

[[accounts]]
id = "benchsafe"
appid = "$APPID"
token = "$TOKEN"
encoding_aes_key = "$AES_KEY"
mode = "safe"
EOF
        local i
        for ((i = 0; i < extra; i++)); do
            printf '\n[[accounts]]\nid = "acc%d"\nappid = "wx%016x"\ntoken = "%s"\nencoding_aes_key = "%s"\nmode = "safe"\n[[accounts.custom]]\nmatch = { msg_type = "text" }\nreply = { echo = true }\n' \
                "$i" "$i" "$TOKEN" "$AES_KEY"
        done
    } >"$file"
}

start_gateway() {
    local config=$1
    log "starting wx-gateway (namespace $NS, queue type $QUEUE_TYPE, $config)"
    "$GATEWAY_BIN" --config "$config" >>"$WORK/gateway.log" 2>&1 &
    GATEWAY_PID=$!
    wait_ready wx-gateway "$GATEWAY_PID" "http://127.0.0.1:$PORT/readyz" "$WORK/gateway.log"
}

purge_worker_queue() {
    # Nothing consumes {ns}.worker during the bench; keep it from growing across runs.
    rabbitmqctl -q purge_queue "${NS}.worker" >/dev/null 2>&1 || log "could not purge ${NS}.worker"
}

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# settled_rss_kib PID: RSS once it has stopped falling (two readings 0.5 s apart within
# 256 KiB, at most 15 s): the config's transient parse tree is freed at start and jemalloc
# returns those pages over the next second, so a reading taken at readiness can include it.
settled_rss_kib() {
    local pid=$1 previous current deadline=$((SECONDS + 15))
    previous=$(rss_kib "$pid")
    while ((SECONDS < deadline)); do
        sleep 0.5
        current=$(rss_kib "$pid")
        if ((previous - current < 256 && current - previous < 256)); then
            break
        fi
        previous=$current
    done
    rss_kib "$pid"
}

# run_load NAME ARGS... : runs wxgate-load, keeps its JSON line in $WORK/NAME.json
run_load() {
    local name=$1
    shift
    log "run $name: $*"
    if ! "$LOAD_BIN" --json --gateway-pid "$GATEWAY_PID" --duration "$DURATION" --warmup "$WARMUP" \
        --token "$TOKEN" --aes-key "$AES_KEY" --appid "$APPID" "$@" >"$WORK/$name.json"; then
        log "run $name reported failure"
    fi
    [[ -s "$WORK/$name.json" ]] || echo '{}' >"$WORK/$name.json"
    purge_worker_queue
}

fmt_row() {
    # mode, connections, req/s, p50, p90, p99, max, errors, gateway cpu, rss, load cpu
    jq -r '"| \(.mode // "?") | \(.connections // "?") | \(.req_per_s // "-") | \(.latency_ms.p50 // "-") | \(.latency_ms.p90 // "-") | \(.latency_ms.p99 // "-") | \(.latency_ms.max // "-") | \(.errors.total // "-")\(if (.errors.total // 0) > 0 then " \(.errors | del(.total) | tostring)" else "" end) | \(.gateway_cpu_us_per_req // "-") | \(if .gateway_rss_kib then (.gateway_rss_kib / 1024 * 10 | round / 10) else "-" end) | \(.load_cpu_us_per_req // "-") |"' "$1"
}

# --- the matrix ---------------------------------------------------------------------------
write_config "$WORK/matrix.toml" 0
start_gateway "$WORK/matrix.toml"
MATRIX_RSS_IDLE=$(rss_kib "$GATEWAY_PID")
for mode in $MODES; do
    url="http://127.0.0.1:$PORT/wx/bench"
    [[ "$mode" == plain ]] || url="http://127.0.0.1:$PORT/wx/benchsafe"
    for connections in $CONNECTIONS; do
        run_load "matrix-$mode-$connections" --url "$url" --mode "$mode" --connections "$connections"
    done
done
stop_gateway

# --- the RSS run: many accounts, many idle connections --------------------------------------
write_config "$WORK/rss.toml" "$RSS_ACCOUNTS"
start_gateway "$WORK/rss.toml"
RSS_READY=$(rss_kib "$GATEWAY_PID")
RSS_IDLE=$(settled_rss_kib "$GATEWAY_PID")
# Peak from here on: the connections and the load, not the config parsing at start.
echo 5 >"/proc/$GATEWAY_PID/clear_refs" 2>/dev/null || log "cannot reset the peak RSS; it includes the start"
run_load rss --url "http://127.0.0.1:$PORT/wx/benchsafe" --mode safe --connections 32 \
    --idle-connections "$IDLE_CONNECTIONS"
RSS_PEAK=$(awk '/^VmHWM:/ { print $2 }' "/proc/$GATEWAY_PID/status")
stop_gateway

# --- report --------------------------------------------------------------------------------
cat <<EOF

## wx-gateway load matrix

$(date -u +%Y-%m-%dT%H:%MZ) · $(nproc) CPUs · $(uname -r) · queue type \`$QUEUE_TYPE\` · ${DURATION} per run after ${WARMUP} warmup
· generator and gateway on the same machine · gateway RSS at start ${MATRIX_RSS_IDLE} KiB

| mode | connections | req/s | p50 ms | p90 ms | p99 ms | max ms | errors | gateway CPU µs/req | gateway RSS MiB | load CPU µs/req |
|---|---|---|---|---|---|---|---|---|---|---|
EOF
for mode in $MODES; do
    for connections in $CONNECTIONS; do
        fmt_row "$WORK/matrix-$mode-$connections.json"
    done
done
cat <<EOF

### RSS with $((RSS_ACCOUNTS + 2)) accounts and $IDLE_CONNECTIONS idle connections

| accounts | idle connections (open at end) | RSS at readiness MiB | RSS settled MiB | RSS with idle connections MiB | RSS at end of load MiB | peak RSS MiB | req/s (safe, 32 conns) | p99 ms | errors |
|---|---|---|---|---|---|---|---|---|---|
EOF
jq -r --arg accounts "$((RSS_ACCOUNTS + 2))" --arg ready "$RSS_READY" --arg idle "$RSS_IDLE" --arg peak "$RSS_PEAK" '"| \($accounts) | \(.idle_connections.requested // "?") (\(.idle_connections.open_at_end // "?")) | \($ready | tonumber / 1024 * 10 | round / 10) | \($idle | tonumber / 1024 * 10 | round / 10) | \(if .gateway_rss_after_idle_open_kib then (.gateway_rss_after_idle_open_kib / 1024 * 10 | round / 10) else "-" end) | \(if .gateway_rss_kib then (.gateway_rss_kib / 1024 * 10 | round / 10) else "-" end) | \($peak | tonumber / 1024 * 10 | round / 10) | \(.req_per_s // "-") | \(.latency_ms.p99 // "-") | \(.errors.total // "-") |"' "$WORK/rss.json"
echo
if grep -qiE 'error|panic' "$WORK/gateway.log"; then
    log "the gateway logged errors; last lines:"
    grep -iE 'error|panic' "$WORK/gateway.log" | tail -n 5 >&2
fi

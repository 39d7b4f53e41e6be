#!/usr/bin/env bash
# Where this machine's CPU goes per callback, process by process, and how many callbacks per
# second the machine could carry at full use (cores × 1 s ÷ CPU per callback).
#
# Rows, one run each, all against the local Redis and RabbitMQ in a random namespace:
#   pipeline wxgate  wxgate-pipeline: the gateway's Redis and RabbitMQ work with no HTTP, through
#                    the gateway's own publisher (IN_FLIGHT events at once)
#   pipeline lapin   the same through lapin 4 (the reference client)
#   floor http       wxgate-floor --work http (hyper alone) driven by wxgate-load
#   wx-gateway       the gateway driven by wxgate-load
# The HTTP rows run at CONNECTIONS connections in plain mode.
#
# Environment (all optional):
#   CARGO_TARGET_DIR  build directory                 (default $HOME/.cache/wxgate-target)
#   QUEUE_TYPE        classic | quorum                (default quorum)
#   EVENTS            events/callbacks per row        (default 100000)
#   IN_FLIGHT         pipeline events at once         (default 512)
#   CONNECTIONS       HTTP connections                (default 128)
#   RATE              pace the HTTP rows at RATE callbacks/s (default: as fast as they go)
#   PORT              listen port                     (default 18084)
#   REDIS_URL, AMQP_URL
#   SKIP_BUILD=1      use the binaries already built
#   GATEWAY_BIN       run this wx-gateway binary instead (e.g. an older build, to compare)
#   ONLY_GATEWAY=1    skip the pipeline and floor rows
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
QUEUE_TYPE=${QUEUE_TYPE:-quorum}
EVENTS=${EVENTS:-100000}
IN_FLIGHT=${IN_FLIGHT:-512}
CONNECTIONS=${CONNECTIONS:-128}
PORT=${PORT:-18084}

SERVER_PID=""

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
start_namespace budget

check_prerequisites
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    log "building wx-gateway and the bench tools (release)"
    (cd "$ROOT" && cargo build --release -p wx-gateway -p wxgate-bench)
fi
BIN=$CARGO_TARGET_DIR/release
for tool in wxgate-load wxgate-floor wxgate-pipeline; do
    [[ -x "$BIN/$tool" ]] || die "$BIN/$tool missing"
done
GATEWAY_BIN=${GATEWAY_BIN:-$BIN/wx-gateway}
[[ -x "$GATEWAY_BIN" ]] || die "$GATEWAY_BIN missing"
REDIS_PID=$(pgrep -x redis-server | head -1) || die "no redis-server process on this machine"
RABBIT_PID=$(pgrep -f beam.smp | head -1) || die "no RabbitMQ (beam.smp) process on this machine"

stop_processes() {
    stop server "$SERVER_PID"
}

{
    config_head "$NS" "$PORT"
    bench_account "plain"
} >"$WORK/config.toml"

ROWS=()
# row LABEL JSON CPU_KEY CLIENT_NAME: a table row from a tool's JSON summary.
row() {
    local label=$1 json=$2 key=$3 client=$4
    ROWS+=("$(jq -r --arg name "$label" --arg key "$key" --arg client "$client" --argjson cores "$(nproc)" '
        .[$key] as $cpu
        | ($cpu[$client] // 0) as $c | ($cpu.load // 0) as $l
        | ($cpu.rabbitmq // 0) as $b | ($cpu.redis // 0) as $r
        | ($c + $l + $b + $r) as $total
        | "| \($name) | \(.events_per_sec // .req_per_s | round) | \(.latency_ms.p99) | \($c) | \(if $l > 0 then $l else "-" end) | \($b) | \($r) | \($total * 10 | round / 10) | \($cores * 1000000 / $total | round) |"
        ' <<<"$json")")
}

purge() { rabbitmqctl -q purge_queue "${NS}.worker" >/dev/null 2>&1 || true; }

CLIENTS=(wxgate lapin)
[[ "${ONLY_GATEWAY:-0}" == 1 ]] && CLIENTS=()
for client in "${CLIENTS[@]}"; do
    log "pipeline, $client client: $EVENTS events, $IN_FLIGHT in flight"
    out=$("$BIN/wxgate-pipeline" --config "$WORK/config.toml" --client "$client" --json \
        --in-flight "$IN_FLIGHT" --events "$EVENTS" \
        --watch "rabbitmq=$RABBIT_PID" --watch "redis=$REDIS_PID") || die "wxgate-pipeline failed"
    row "pipeline, $client client, $IN_FLIGHT in flight" "$out" cpu_us_per_event pipeline
    purge
done

# http_row LABEL COMMAND...: starts COMMAND as the server, drives it, records a row.
http_row() {
    local label=$1
    shift
    "$@" --config "$WORK/config.toml" >>"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    wait_ready "$label" "$SERVER_PID" "http://127.0.0.1:$PORT/readyz" "$WORK/server.log" 60
    log "$label: $EVENTS callbacks at $CONNECTIONS connections"
    local out errors
    out=$("$BIN/wxgate-load" --json --url "http://127.0.0.1:$PORT/wx/bench" --mode plain \
        --connections "$CONNECTIONS" --warmup 0s --requests 5000) || die "wxgate-load failed"
    out=$("$BIN/wxgate-load" --json --url "http://127.0.0.1:$PORT/wx/bench" --mode plain \
        --connections "$CONNECTIONS" --warmup 0s --requests "$EVENTS" ${RATE:+--rate "$RATE"} \
        --watch "server=$SERVER_PID" --watch "rabbitmq=$RABBIT_PID" --watch "redis=$REDIS_PID") ||
        die "wxgate-load failed"
    errors=$(jq -r '.errors.total' <<<"$out")
    ((errors == 0)) || die "$label: $errors callbacks failed: $(jq -c .errors <<<"$out")"
    row "$label, $CONNECTIONS connections" "$out" cpu_us_per_req server
    stop "$label" "$SERVER_PID"
    SERVER_PID=""
    purge
}

[[ "${ONLY_GATEWAY:-0}" == 1 ]] || http_row "floor http" "$BIN/wxgate-floor" --work http
http_row "$(basename "$GATEWAY_BIN")" "$GATEWAY_BIN"

cat <<EOF

## CPU per callback, by process

$(date -u +%Y-%m-%dT%H:%MZ) · $(nproc) CPUs · $(uname -r) · queue type \`$QUEUE_TYPE\` · $EVENTS per row · RabbitMQ $(rabbitmqctl -q version 2>/dev/null || echo "?")

| row | events/s | p99 ms | client/server µs | load µs | RabbitMQ µs | Redis µs | total µs | machine ceiling/s |
|---|---|---|---|---|---|---|---|---|
EOF
printf '%s\n' "${ROWS[@]}"
cat <<EOF

"machine ceiling" = $(nproc) cores × 1 s ÷ total CPU per event: the rate at which these processes
alone would use every core.
EOF

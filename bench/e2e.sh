#!/usr/bin/env bash
# End-to-end benchmark, push -> wx-gateway -> RabbitMQ -> wx-worker -> custom/send, against
# the local Redis and RabbitMQ; see bench/README.md.
#
# Builds wx-gateway, wx-worker and wxgate-e2e (release), writes a config with a random
# namespace and $ACCOUNTS accounts that echo text through custom rules, starts gateway and
# worker as real processes, and runs wxgate-e2e, which plays WeChat on both sides (pushes and
# the simulated API the worker replies to) through three phases: one push per account (so
# the worker holds a token for every account), a steady open-loop rate, and a closed loop for
# the maximum. Prints a markdown table and removes everything it created (processes, {ns}.*
# queues and exchange, {ns}:* Redis keys, the temporary directory), also on failure.
#
# Environment (all optional):
#   CARGO_TARGET_DIR    build directory                        (default $HOME/.cache/wxgate-target)
#   ACCOUNTS            configured accounts, all echoing text  (default 10000)
#   MODE                callback mode of the accounts          (default safe; plain, compat)
#   QUEUE_TYPE          classic | quorum                       (default quorum)
#   CONCURRENCY         worker.concurrency                     (default 256)
#   PREFETCH            worker.prefetch                        (default 256)
#   METRICS_PER_ACCOUNT gateway.metrics_per_account            (default false, as advised for many accounts)
#   WARMUP_RATE         pushes/s of the one-per-account phase  (default 1000; 0 skips it)
#   STEADY_RATE         pushes/s of the steady phase           (default 1000)
#   STEADY_DURATION     length of the steady phase             (default 30s)
#   MAX_CONCURRENCY     concurrent pushes of the max phase     (default 64; 0 skips it)
#   MAX_DURATION        length of the max phase                (default 20s)
#   EXTRA_PHASES        more wxgate-e2e --phase specs, e.g. "r2k=rate:2000:20s" (default none)
#   E2E_THREADS         tokio threads of wxgate-e2e            (default 1)
#   PORT, WORKER_PORT, SIM_PORT  listen ports                  (default 18080, 18091, 18099)
#   REDIS_URL           (default redis://127.0.0.1:6379/0)
#   AMQP_URL            (default amqp://guest:guest@127.0.0.1:5672/%2f)
#   RUST_LOG            gateway and worker log filter          (default warn)
#   E2E_JSON_OUT        also copy wxgate-e2e's JSON summary to this file
#   SKIP_BUILD=1        use the binaries already in $CARGO_TARGET_DIR/release
#   GATEWAY_BIN, WORKER_BIN  run these builds instead (e.g. an older one, to compare)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ACCOUNTS=${ACCOUNTS:-10000}
MODE=${MODE:-safe}
QUEUE_TYPE=${QUEUE_TYPE:-quorum}
CONCURRENCY=${CONCURRENCY:-256}
PREFETCH=${PREFETCH:-256}
METRICS_PER_ACCOUNT=${METRICS_PER_ACCOUNT:-false}
WARMUP_RATE=${WARMUP_RATE:-1000}
STEADY_RATE=${STEADY_RATE:-1000}
STEADY_DURATION=${STEADY_DURATION:-30s}
MAX_CONCURRENCY=${MAX_CONCURRENCY:-64}
MAX_DURATION=${MAX_DURATION:-20s}
EXTRA_PHASES=${EXTRA_PHASES:-}
E2E_THREADS=${E2E_THREADS:-1}
PORT=${PORT:-18080}
WORKER_PORT=${WORKER_PORT:-18091}
SIM_PORT=${SIM_PORT:-18099}

TOKEN=benchtoken
AES_KEY=abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG
GATEWAY_PID=""
WORKER_PID=""
E2E_PID=""

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
start_namespace bench

check_prerequisites
case "$MODE" in plain | compat | safe) ;; *) die "MODE must be plain, compat or safe" ;; esac
((ACCOUNTS >= 1)) || die "ACCOUNTS must be at least 1"

# The worker keeps up to CONCURRENCY connections to the simulator, the pusher some to the
# gateway: more than the usual 1,024 fds on both ends of one machine.
raise_fd_limit
build_release wx-gateway wx-worker wxgate-bench
declare -A SOURCE=(
    [wx-gateway]=${GATEWAY_BIN:-$CARGO_TARGET_DIR/release/wx-gateway}
    [wx-worker]=${WORKER_BIN:-$CARGO_TARGET_DIR/release/wx-worker}
    [wxgate-e2e]=$CARGO_TARGET_DIR/release/wxgate-e2e
)
for bin in wx-gateway wx-worker wxgate-e2e; do
    link_private "${SOURCE[$bin]}" "$bin"
done
GATEWAY_BIN=$WORK/wx-gateway
WORKER_BIN=$WORK/wx-worker
E2E_BIN=$WORK/wxgate-e2e

stop_processes() {
    stop wxgate-e2e "$E2E_PID"
    stop wx-worker "$WORKER_PID"
    stop wx-gateway "$GATEWAY_PID"
}

# --- config ---------------------------------------------------------------------------------
CONFIG=$WORK/e2e.toml
{
    config_head "$NS" "$PORT"
    cat <<EOF
metrics_per_account = $METRICS_PER_ACCOUNT

[worker]
http_listen = "127.0.0.1:$WORKER_PORT"
concurrency = $CONCURRENCY
prefetch = $PREFETCH

[wechat]
api_base = "http://127.0.0.1:$SIM_PORT"
token_mode = "stable"
EOF
    key_line=""
    [[ "$MODE" == plain ]] || key_line="encoding_aes_key = \"$AES_KEY\""
    for ((i = 0; i < ACCOUNTS; i++)); do
        printf '\n[[accounts]]\nid = "e2e%d"\nappid = "wx%016x"\nsecret = "e2e-secret-%d"\ntoken = "%s"\n%s\nmode = "%s"\n\n[[accounts.custom]]\nmatch = { msg_type = "text" }\nreply = { echo = true }\n' \
            "$i" "$i" "$i" "$TOKEN" "$key_line" "$MODE"
    done
} >"$CONFIG"

# --- processes ------------------------------------------------------------------------------
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

log "starting wx-gateway and wx-worker (namespace $NS, $ACCOUNTS $MODE accounts, queue type $QUEUE_TYPE)"
"$GATEWAY_BIN" --config "$CONFIG" >>"$WORK/gateway.log" 2>&1 &
GATEWAY_PID=$!
wait_ready wx-gateway "$GATEWAY_PID" "http://127.0.0.1:$PORT/readyz" "$WORK/gateway.log"
"$WORKER_BIN" --config "$CONFIG" >>"$WORK/worker.log" 2>&1 &
WORKER_PID=$!
wait_ready wx-worker "$WORKER_PID" "http://127.0.0.1:$WORKER_PORT/readyz" "$WORK/worker.log"
GATEWAY_RSS_IDLE=$(rss_kib "$GATEWAY_PID")
WORKER_RSS_IDLE=$(rss_kib "$WORKER_PID")
# Reset VmHWM, so the peaks reported cover the load only, not the config parsing at start.
for pid in "$GATEWAY_PID" "$WORKER_PID"; do
    echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || log "cannot reset the peak RSS of $pid; peaks include start-up"
done

# --- the run --------------------------------------------------------------------------------
phases=()
((WARMUP_RATE > 0)) && phases+=(--phase "warmup=each:$WARMUP_RATE")
phases+=(--phase "steady=rate:$STEADY_RATE:$STEADY_DURATION")
((MAX_CONCURRENCY > 0)) && phases+=(--phase "max=closed:$MAX_CONCURRENCY:$MAX_DURATION")
for spec in $EXTRA_PHASES; do phases+=(--phase "$spec"); done

# Redis and RabbitMQ CPU per event too, when their processes are visible (shared with anyone
# else using them at the time).
watch=()
redis_pid=$(redis-cli -u "$REDIS_URL" info server 2>/dev/null | tr -d '\r' | awk -F: '/^process_id:/ { print $2 }')
[[ -n "$redis_pid" && -r "/proc/$redis_pid/stat" ]] && watch+=(--watch "redis=$redis_pid")
rabbit_pid=$(rabbitmqctl -q eval 'os:getpid().' 2>/dev/null | tr -d '"' || true)
[[ -n "$rabbit_pid" && -r "/proc/$rabbit_pid/stat" ]] && watch+=(--watch "rabbitmq=$rabbit_pid")

LOAD_BEFORE=$(cut -d' ' -f1 /proc/loadavg)
log "running wxgate-e2e ${phases[*]} (1-minute load average $LOAD_BEFORE)"
E2E_STATUS=0
"$E2E_BIN" --config "$CONFIG" --json --threads "$E2E_THREADS" \
    --gateway-pid "$GATEWAY_PID" --worker-pid "$WORKER_PID" "${watch[@]}" "${phases[@]}" \
    >"$WORK/e2e.json" 2>"$WORK/e2e.log" &
E2E_PID=$!
wait "$E2E_PID" || E2E_STATUS=$?
E2E_PID=""
if [[ ! -s "$WORK/e2e.json" ]]; then
    cat "$WORK/e2e.log" >&2
    die "wxgate-e2e failed (status $E2E_STATUS)"
fi
((E2E_STATUS == 0)) || log "wxgate-e2e reported errors or missing replies (status $E2E_STATUS)"
GATEWAY_RSS_END=$(rss_kib "$GATEWAY_PID")
WORKER_RSS_END=$(rss_kib "$WORKER_PID")
LOAD_AFTER=$(cut -d' ' -f1 /proc/loadavg)

# --- report ---------------------------------------------------------------------------------
mib() { jq -n --arg kib "$1" '$kib | tonumber / 1024 * 10 | round / 10'; }
cat <<EOF

## wxgate end to end (push -> custom/send)

$(date -u +%Y-%m-%dT%H:%MZ) · $(nproc) CPUs · $(uname -r) · 1-min load $LOAD_BEFORE before, $LOAD_AFTER after · $ACCOUNTS \`$MODE\` accounts · queue type \`$QUEUE_TYPE\`
· worker.concurrency $CONCURRENCY, prefetch $PREFETCH · pusher, simulator, gateway, worker, Redis and RabbitMQ on the same machine

| phase | load | pushes | push/s | replies/s | errors | missing | p50 ms | p90 ms | p99 ms | max ms | kept up | worker RSS MiB (peak) | gateway RSS MiB (peak) |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
EOF
jq -r '.phases[] | "| \(.name) | \(if .kind == "closed" then "closed, \(.concurrency) conc." elif .kind == "each" then "\(.rate_target)/s, 1 per account" else "\(.rate_target)/s open" end) | \(.pushes) | \(.pushes_per_s | . * 10 | round / 10) | \(.replies_per_s | . * 10 | round / 10) | \(.errors.total)\(if .errors.total > 0 then " \(.errors.by_kind | tostring)" else "" end) | \(.missing) | \(.latency_ms.end_to_end.p50 // "-") | \(.latency_ms.end_to_end.p90 // "-") | \(.latency_ms.end_to_end.p99 // "-") | \(.latency_ms.end_to_end.max // "-") | \(if .kept_up then "yes" else "no (drain \(.drain_ms | round) ms)" end) | \(if .memory.worker then "\(.memory.worker.rss_kib / 1024 * 10 | round / 10) (\(.memory.worker.peak_kib / 1024 * 10 | round / 10))" else "-" end) | \(if .memory.gateway then "\(.memory.gateway.rss_kib / 1024 * 10 | round / 10) (\(.memory.gateway.peak_kib / 1024 * 10 | round / 10))" else "-" end) |"' "$WORK/e2e.json"
cat <<EOF

CPU µs per event: utime+stime over the phase and its drain, divided by the phase's successful
pushes (Redis and RabbitMQ include anyone else using them meanwhile).

| phase | wx-worker | wx-gateway | wxgate-e2e (pusher + simulator) | Redis | RabbitMQ | sum |
|---|---|---|---|---|---|---|
EOF
jq -r 'def r: if type == "number" then . * 10 | round / 10 else "-" end;
    .phases[] | .cpu_us_per_event as $c | "| \(.name) | \($c.worker | r) | \($c.gateway | r) | \($c.e2e | r) | \($c.redis | r) | \($c.rabbitmq | r) | \([$c[]] | add | round) |"' "$WORK/e2e.json"
cat <<EOF

Latency: from just before each push is signed and sent to the gateway until the simulator
receives the matching \`custom/send\`. Open-loop phases, from each push's due time instead:
$(jq -r '[.phases[] | select(.latency_ms.from_schedule) | "\(.name) p50 \(.latency_ms.from_schedule.p50) / p99 \(.latency_ms.from_schedule.p99) ms"] | join("; ")' "$WORK/e2e.json").
Gateway answer (push → 200 \`success\`): $(jq -r '[.phases[] | "\(.name) p50 \(.latency_ms.push_answer.p50 // "-") / p99 \(.latency_ms.push_answer.p99 // "-") ms"] | join("; ")' "$WORK/e2e.json").

| RSS MiB | at start | at end |
|---|---|---|
| wx-worker | $(mib "$WORKER_RSS_IDLE") | $(mib "$WORKER_RSS_END") |
| wx-gateway | $(mib "$GATEWAY_RSS_IDLE") | $(mib "$GATEWAY_RSS_END") |

Token requests per appid (simulator): $(jq -r '.tokens | "\(.appids) appids pushed to: \(.exactly_one) exactly one, \(.none) none, \(.more) more than one (max \(.max)); \(.total) in all"' "$WORK/e2e.json").
Simulator: $(jq -r '"\(.custom_send_calls) custom/send calls, \(.stable_token_calls) stable_token calls; \(.feed_lagged) calls missed by the receipt feed"' "$WORK/e2e.json").
EOF
echo
for name in gateway worker; do
    if grep -qiE 'error|panic' "$WORK/$name.log"; then
        log "wx-$name logged errors; last lines:"
        grep -iE 'error|panic' "$WORK/$name.log" | tail -n 5 >&2
    fi
done
if [[ -n "${E2E_JSON_OUT:-}" ]]; then
    cp "$WORK/e2e.json" "$E2E_JSON_OUT"
fi
exit "$E2E_STATUS"

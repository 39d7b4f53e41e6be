#!/usr/bin/env bash
# What one callback costs wx-gateway, in counts that do not depend on how busy the machine is:
# system calls and context switches per callback (perf stat on the gateway process, at
# CONNECTIONS connections) and user-space instructions per callback (callgrind, at 16
# connections), and CPU time per callback (task-clock; compare rows of one run only). Several
# gateway builds, and the cost floor under them (wxgate-floor), can be compared side by side.
#
# Usage: bash bench/profile.sh [COMMAND ...]   (default: $CARGO_TARGET_DIR/release/wx-gateway)
#   Each COMMAND is a binary and its arguments in one word, started with --config FILE added:
#   bash bench/profile.sh "$T/wxgate-floor --work http" "$T/wxgate-floor --work protocol" "$T/wx-gateway"
#
# Environment (all optional):
#   CARGO_TARGET_DIR   build directory                       (default $HOME/.cache/wxgate-target)
#   MODE               plain | safe                          (default plain)
#   CONNECTIONS        connections for the syscall count     (default 128)
#   REQUESTS           callbacks counted by perf stat        (default 40000)
#   CALLGRIND_REQUESTS callbacks counted by callgrind        (default 3000; 0 skips callgrind)
#   QUEUE_TYPE         classic | quorum                      (default quorum)
#   PORT               gateway listen port                   (default 18083)
#   REDIS_URL, AMQP_URL
#   SKIP_BUILD=1       use the binaries already built
#
# Needs perf (linux-perf, with syscall tracepoints) and valgrind; the load generator is
# wxgate-load. Removes everything it created, also on failure.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODE=${MODE:-plain}
CONNECTIONS=${CONNECTIONS:-128}
REQUESTS=${REQUESTS:-40000}
CALLGRIND_REQUESTS=${CALLGRIND_REQUESTS:-3000}
QUEUE_TYPE=${QUEUE_TYPE:-quorum}
PORT=${PORT:-18083}

GATEWAY_PID=""

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
start_namespace prof

check_prerequisites
command -v perf >/dev/null || die "perf not found (apt-get install linux-perf)"
if ((CALLGRIND_REQUESTS > 0)); then
    command -v valgrind >/dev/null || die "valgrind not found (or set CALLGRIND_REQUESTS=0)"
fi
case "$MODE" in plain | safe) ;; *) die "MODE must be plain or safe" ;; esac

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    log "building wx-gateway, wxgate-load and wxgate-floor (release)"
    (cd "$ROOT" && cargo build --release -p wx-gateway -p wxgate-bench)
fi
LOAD_BIN=$CARGO_TARGET_DIR/release/wxgate-load
[[ -x "$LOAD_BIN" ]] || die "$LOAD_BIN missing"
COMMANDS=("$@")
((${#COMMANDS[@]} > 0)) || COMMANDS=("$CARGO_TARGET_DIR/release/wx-gateway")
for command in "${COMMANDS[@]}"; do
    read -ra words <<<"$command"
    [[ -x "${words[0]}" ]] || die "${words[0]} is not an executable"
done

stop_processes() {
    stop wx-gateway "$GATEWAY_PID"
}

{
    config_head "$NS" "$PORT"
    bench_account "$MODE"
} >"$WORK/config.toml"
URL="http://127.0.0.1:$PORT/wx/bench"

# start_gateway WRAPPER... BIN: starts BIN (under WRAPPER, e.g. valgrind) and waits for /readyz.
start_gateway() {
    "$@" --config "$WORK/config.toml" >>"$WORK/gateway.log" 2>&1 &
    GATEWAY_PID=$!
    wait_ready wx-gateway "$GATEWAY_PID" "http://127.0.0.1:$PORT/readyz" "$WORK/gateway.log" 120
}

# load ARGS...: runs wxgate-load; dies unless every callback was answered 200 `success`.
load() {
    local out errors
    out=$("$LOAD_BIN" --json --warmup 0s --url "$URL" --mode "$MODE" "$@") || die "wxgate-load failed"
    errors=$(jq -r '.errors.total // 0' <<<"$out")
    ((errors == 0)) || die "$errors callbacks failed: $(jq -c .errors <<<"$out")"
}

# per_req EVENT: perf's count of EVENT divided by the callbacks.
per_req() { awk -F, -v e="$1" -v n="$REQUESTS" '$3 == e { printf "%.2f", $1 / n }' "$WORK/perf.txt"; }

EVENTS=task-clock,raw_syscalls:sys_enter,syscalls:sys_enter_recvfrom,syscalls:sys_enter_writev,syscalls:sys_enter_sendto,syscalls:sys_enter_write,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex,context-switches
ROWS=()
for command in "${COMMANDS[@]}"; do
    read -ra words <<<"$command"
    label="$(basename "${words[0]}")${words[1]:+ ${words[*]:1}}"
    log "syscalls: $command, $REQUESTS $MODE callbacks at $CONNECTIONS connections"
    start_gateway "${words[@]}"
    load --requests 5000 --connections "$CONNECTIONS"
    perf stat -x, -o "$WORK/perf.txt" -e "$EVENTS" -p "$GATEWAY_PID" &
    perf_pid=$!
    sleep 0.5
    load --requests "$REQUESTS" --connections "$CONNECTIONS"
    kill -INT "$perf_pid"
    wait "$perf_pid" || true
    stop wx-gateway "$GATEWAY_PID"
    GATEWAY_PID=""
    rabbitmqctl -q purge_queue "${NS}.worker" >/dev/null 2>&1 || true
    cpu_us=$(awk -F, -v n="$REQUESTS" '$3 == "task-clock" { printf "%.1f", $1 * 1000 / n }' "$WORK/perf.txt")
    row="| $label | $cpu_us | $(per_req raw_syscalls:sys_enter) | $(per_req syscalls:sys_enter_recvfrom) | $(per_req syscalls:sys_enter_writev) | $(per_req syscalls:sys_enter_sendto) | $(per_req syscalls:sys_enter_write) | $(per_req syscalls:sys_enter_epoll_wait) | $(per_req syscalls:sys_enter_futex) | $(per_req context-switches)"

    instructions="-"
    if ((CALLGRIND_REQUESTS > 0)); then
        log "callgrind: $command, $CALLGRIND_REQUESTS $MODE callbacks at 16 connections"
        rm -f "$WORK"/callgrind.out*
        start_gateway valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out" "${words[@]}"
        load --requests 500 --connections 16
        callgrind_control -z "$GATEWAY_PID" >/dev/null
        load --requests "$CALLGRIND_REQUESTS" --connections 16
        callgrind_control -d "$GATEWAY_PID" >/dev/null
        stop wx-gateway "$GATEWAY_PID"
        GATEWAY_PID=""
        rabbitmqctl -q purge_queue "${NS}.worker" >/dev/null 2>&1 || true
        # The dump made after zeroing is the second file (callgrind.out.1).
        total=$(callgrind_annotate "$WORK/callgrind.out.1" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
        [[ -n "$total" ]] && instructions=$(awk -v t="$total" -v n="$CALLGRIND_REQUESTS" 'BEGIN { printf "%.1fk", t / n / 1000 }')
    fi
    ROWS+=("$row | $instructions |")
done

cat <<EOF

## wx-gateway cost per callback

$(date -u +%Y-%m-%dT%H:%MZ) · $(nproc) CPUs · $(uname -r) · $MODE · queue type \`$QUEUE_TYPE\` · syscalls over $REQUESTS callbacks at $CONNECTIONS connections · instructions over $CALLGRIND_REQUESTS at 16

| command | CPU µs | syscalls | recvfrom | writev | sendto | write | epoll_wait | futex | context switches | user instructions (callgrind) |
|---|---|---|---|---|---|---|---|---|---|---|
EOF
printf '%s\n' "${ROWS[@]}"

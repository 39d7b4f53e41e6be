#!/usr/bin/env bash
# Clusters, long form (issue 16): wx-gateway and wx-worker (release builds, real processes)
# against a 3-node RabbitMQ cluster and a Redis Cluster (3 masters + 3 replicas) started by
# scripts/testbed.sh on ports of their own; see bench/README.md, "cluster.sh".
#
# Part 1, scaling: ROUNDS rounds; each runs the same phases with 1 gateway + 1 worker and
# with 2 gateways + 3 workers (the order alternates round by round), each fleet on a fresh
# namespace, wxgate-e2e spreading the pushes over the gateways. Reports push/s, push ->
# custom/send p50/p99, errors, missing, duplicates, token calls per appid, CPU µs per event by
# process (every gateway, worker, RabbitMQ node and Redis node) and the ratio 2+3 / 1+1.
# Part 2, node failures under load: 2 gateways + 3 workers at FAULT_RATE pushes/s (open loop)
# for FAULT_LOAD_S seconds; FAULT_AT_S seconds in, (a) the RabbitMQ node leading {ns}.worker
# is SIGKILLed (restarted RESTART_AFTER_S later), (b) a Redis Cluster master is SIGKILLed,
# (c) on a Sentinel set (its own bed, redis.mode = "sentinel") the master is SIGKILLed.
# Reports pushes answered 200, refused, replies, duplicates, lost and the time until served
# again, from wxgate-e2e's per-push timeline.
#
# Everything it starts (processes, test beds, its temporary directory) is stopped and removed
# at exit, also on failure or Ctrl-C. The machine's Redis (6379) and RabbitMQ (5672) are not
# used.
#
# Environment (all optional):
#   CARGO_TARGET_DIR     build directory                          (default $HOME/.cache/wxgate-target)
#   PARTS                which parts to run                       (default "scaling faults")
#   ROUNDS               rounds of part 1                         (default 3)
#   ACCOUNTS             configured accounts, all echoing text    (default 1000)
#   MODE                 callback mode of the accounts            (default safe; plain, compat)
#   WARMUP_RATE          pushes/s of the one-per-account phase    (default 500)
#   STEADY_RATE          pushes/s of the steady phase             (default 500)
#   STEADY_DURATION      length of the steady phase               (default 20s)
#   MAX_CONCURRENCY      concurrent pushes of the max phase       (default 64)
#   MAX_DURATION         length of the max phase                  (default 15s)
#   SCENARIOS            faults of part 2                         (default "rabbit redis sentinel")
#   FAULT_RATE           pushes/s during a fault run              (default 300)
#   FAULT_LOAD_S         length of a fault run's load             (default 90)
#   FAULT_AT_S           the fault, seconds into the load         (default 20)
#   RESTART_AFTER_S      killed node restarted this much later    (default 20)
#   SERVED_MS            a 200 slower than this counts as not served (default 1000)
#   CONCURRENCY, PREFETCH  worker.concurrency, worker.prefetch    (default 256, 256)
#   PORT_BASE            gateways PORT_BASE+i, workers +10+i (HTTP) and +20+i (gRPC),
#                        simulator +30                            (default 18200)
#   E2E_THREADS          tokio threads of wxgate-e2e              (default 1)
#   RUST_LOG             gateway and worker log filter            (default warn)
#   SKIP_BUILD=1         use the binaries already in $CARGO_TARGET_DIR/release
#   KEEP_JSON=DIR        also copy every wxgate-e2e JSON summary and timeline, the fault
#                        times and the gateway and worker logs (fleet.log) to DIR
#   TESTBED_BOOT_S, TESTBED_JOIN_S  testbed.sh deadlines               (default 240, 120)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PARTS=${PARTS:-scaling faults}
ROUNDS=${ROUNDS:-3}
ACCOUNTS=${ACCOUNTS:-1000}
MODE=${MODE:-safe}
WARMUP_RATE=${WARMUP_RATE:-500}
STEADY_RATE=${STEADY_RATE:-500}
STEADY_DURATION=${STEADY_DURATION:-20s}
MAX_CONCURRENCY=${MAX_CONCURRENCY:-64}
MAX_DURATION=${MAX_DURATION:-15s}
SCENARIOS=${SCENARIOS:-rabbit redis sentinel}
FAULT_RATE=${FAULT_RATE:-300}
FAULT_LOAD_S=${FAULT_LOAD_S:-90}
FAULT_AT_S=${FAULT_AT_S:-20}
RESTART_AFTER_S=${RESTART_AFTER_S:-20}
SERVED_MS=${SERVED_MS:-1000}
CONCURRENCY=${CONCURRENCY:-256}
PREFETCH=${PREFETCH:-256}
PORT_BASE=${PORT_BASE:-18200}
E2E_THREADS=${E2E_THREADS:-1}
TESTBED=$ROOT/scripts/testbed.sh
# A RabbitMQ node can take over 90 s to boot on two cores shared with builds.
export TESTBED_BOOT_S=${TESTBED_BOOT_S:-240} TESTBED_JOIN_S=${TESTBED_JOIN_S:-120}

TOKEN=benchtoken
AES_KEY=abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG
SIM_PORT=$((PORT_BASE + 30))

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

for tool in curl jq awk redis-server redis-cli rabbitmqctl; do
    command -v "$tool" >/dev/null || die "$tool not found"
done
case "$MODE" in plain | compat | safe) ;; *) die "MODE must be plain, compat or safe" ;; esac
((ROUNDS >= 1 && ACCOUNTS >= 1)) || die "ROUNDS and ACCOUNTS must be at least 1"
((FAULT_AT_S + RESTART_AFTER_S < FAULT_LOAD_S)) || die "FAULT_AT_S + RESTART_AFTER_S must be below FAULT_LOAD_S"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/wxgate-cluster.XXXXXX")
# As root, the RabbitMQ nodes run as the `rabbitmq` user: it must reach the beds inside.
chmod 711 "$WORK"
BEDS=()     # "KIND DIR" of every bed brought up (or being brought up)
FLEET=()    # "NAME PID" of the gateways and workers running
HELPERS=()  # background fault sequences, bed start-ups and wxgate-e2e

# forget PID: drops PID (exactly) from HELPERS once it has been waited for.
forget() {
    local kept=() pid
    for pid in "${HELPERS[@]}"; do [[ "$pid" == "$1" ]] || kept+=("$pid"); done
    HELPERS=("${kept[@]}")
}

# Stops, in this order, the fault sequences and wxgate-e2e, the fleet, the beds; removes WORK.
cleanup() {
    local status=$? entry
    trap - EXIT INT TERM
    for entry in "${HELPERS[@]}"; do
        kill -TERM "$entry" 2>/dev/null || true
        wait "$entry" 2>/dev/null || true
    done
    stop_fleet
    for entry in "${BEDS[@]}"; do
        # shellcheck disable=SC2086 # KIND DIR
        set -- $entry
        "$TESTBED" down "$1" "$2" >/dev/null 2>>"$WORK/testbed.log" || log "testbed down $1 failed: see above"
    done
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

raise_fd_limit
build_release wx-gateway wx-worker wxgate-bench
for bin in wx-gateway wx-worker wxgate-e2e; do
    link_private "$CARGO_TARGET_DIR/release/$bin" "$bin"
done

# --- test beds ------------------------------------------------------------------------------

# bed_up KIND NAME: brings a bed up in $WORK/NAME, its KEY=value lines into $WORK/NAME.env.
bed_up() {
    local kind=$1 dir=$WORK/$2
    BEDS+=("$kind $dir")
    "$TESTBED" up "$kind" "$dir" >"$dir.env" 2>>"$WORK/testbed.log" || {
        tail -n 30 "$WORK/testbed.log" >&2
        die "testbed up $kind failed"
    }
}

# bed_value NAME KEY
bed_value() { awk -F= -v key="$2" '$1 == key { sub(/^[^=]*=/, ""); print; exit }' "$WORK/$1.env"; }

# bed_status KIND NAME KEY: one line of `testbed.sh status`.
bed_status() {
    "$TESTBED" status "$1" "$WORK/$2" 2>>"$WORK/testbed.log" |
        awk -F= -v key="$3" '$1 == key { sub(/^[^=]*=/, ""); print; exit }'
}

# toml_list A,B,C: ["A", "B", "C"]
toml_list() { jq -Rc 'split(",")' <<<"$1"; }

# --- fleet ----------------------------------------------------------------------------------

# write_config NS REDIS_TOML FILE
write_config() {
    local ns=$1 redis=$2 file=$3 key_line=""
    [[ "$MODE" == plain ]] || key_line="encoding_aes_key = \"$AES_KEY\""
    {
        cat <<EOF
namespace = "$ns"

$redis

[rabbitmq]
urls = $(toml_list "$AMQP_URLS")
queue_type = "quorum"

[gateway]
listen = "127.0.0.1:$PORT_BASE"
metrics_per_account = false

[worker]
http_listen = "127.0.0.1:$((PORT_BASE + 10))"
grpc_listen = "127.0.0.1:$((PORT_BASE + 20))"
concurrency = $CONCURRENCY
prefetch = $PREFETCH

[wechat]
api_base = "http://127.0.0.1:$SIM_PORT"
token_mode = "stable"
EOF
        for ((i = 0; i < ACCOUNTS; i++)); do
            printf '\n[[accounts]]\nid = "e2e%d"\nappid = "wx%016x"\nsecret = "e2e-secret-%d"\ntoken = "%s"\n%s\nmode = "%s"\n\n[[accounts.custom]]\nmatch = { msg_type = "text" }\nreply = { echo = true }\n' \
                "$i" "$i" "$i" "$TOKEN" "$key_line" "$MODE"
        done
    } >"$file"
}

redis_cluster_toml() {
    printf '[redis]\nmode = "cluster"\nurls = %s\n' "$(toml_list "$REDIS_CLUSTER_URLS")"
}

sentinel_toml() {
    printf '[redis]\nmode = "sentinel"\nurls = %s\nsentinel_master = "%s"\n' \
        "$(toml_list "$SENTINEL_URLS")" "$SENTINEL_MASTER"
}

# start_fleet CONFIG GATEWAYS WORKERS: gateway i on PORT_BASE+i, worker i on PORT_BASE+10+i
# (HTTP) and PORT_BASE+20+i (gRPC); returns once every one is ready.
start_fleet() {
    local config=$1 gateways=$2 workers=$3 i pid
    for ((i = 0; i < gateways; i++)); do
        WXGATE__GATEWAY__LISTEN="127.0.0.1:$((PORT_BASE + i))" \
            "$WORK/wx-gateway" --config "$config" >>"$WORK/gateway-$i.log" 2>&1 &
        pid=$!
        FLEET+=("gateway-$i $pid")
        wait_ready "wx-gateway $i" "$pid" "http://127.0.0.1:$((PORT_BASE + i))/readyz" "$WORK/gateway-$i.log"
    done
    for ((i = 0; i < workers; i++)); do
        WXGATE__WORKER__HTTP_LISTEN="127.0.0.1:$((PORT_BASE + 10 + i))" \
            WXGATE__WORKER__GRPC_LISTEN="127.0.0.1:$((PORT_BASE + 20 + i))" \
            "$WORK/wx-worker" --config "$config" >>"$WORK/worker-$i.log" 2>&1 &
        pid=$!
        FLEET+=("worker-$i $pid")
        wait_ready "wx-worker $i" "$pid" "http://127.0.0.1:$((PORT_BASE + 10 + i))/readyz" "$WORK/worker-$i.log"
    done
}

stop_fleet() {
    local entry
    for entry in "${FLEET[@]}"; do
        # shellcheck disable=SC2086 # NAME PID
        set -- $entry
        stop "$1" "$2"
    done
    FLEET=()
    local log_file
    for log_file in "$WORK"/gateway-*.log "$WORK"/worker-*.log; do
        [[ -f "$log_file" ]] || continue
        if grep -qE ' ERROR |panicked' "$log_file"; then
            log "$(basename "$log_file" .log) logged errors; last lines:"
            grep -E ' ERROR |panicked' "$log_file" | tail -n 3 >&2
        fi
        if [[ -n "${KEEP_JSON:-}" ]]; then
            mkdir -p "$KEEP_JSON"
            { echo "==== $(basename "$log_file" .log) (${FLEET_LABEL:-})"; cat "$log_file"; } >>"$KEEP_JSON/fleet.log"
        fi
        rm -f "$log_file"
    done
}

# fleet_args: --gateway URL and --watch NAME=PID of every running gateway and worker.
fleet_args() {
    local entry
    for entry in "${FLEET[@]}"; do
        # shellcheck disable=SC2086 # NAME PID
        set -- $entry
        case $1 in gateway-*) printf -- '--gateway\nhttp://127.0.0.1:%s/wx\n' "$((PORT_BASE + ${1#gateway-}))" ;; esac
    done
}
fleet_watch() {
    local entry
    for entry in "${FLEET[@]}"; do
        # shellcheck disable=SC2086 # NAME PID
        set -- $entry
        printf -- '--watch\n%s=%s\n' "$1" "$2"
    done
}

# bed_watch: --watch for every RabbitMQ and Redis Cluster node (rabbit-I, redis-PORT).
bed_watch() {
    local names pids i
    IFS=, read -r -a names <<<"$(bed_status rabbit rabbit RUNNING)"
    IFS=, read -r -a pids <<<"$(bed_status rabbit rabbit PIDS)"
    for i in "${!names[@]}"; do printf -- '--watch\nrabbit-%s=%s\n' "${names[$i]}" "${pids[$i]}"; done
    IFS=, read -r -a names <<<"$(bed_status redis-cluster rcluster RUNNING)"
    IFS=, read -r -a pids <<<"$(bed_status redis-cluster rcluster PIDS)"
    for i in "${!names[@]}"; do printf -- '--watch\nredis-%s=%s\n' "${names[$i]}" "${pids[$i]}"; done
}

# delete_queues NS: the namespace's queues on the RabbitMQ bed, so idle quorum queues of
# earlier rounds cost nothing in later ones.
delete_queues() {
    local node queue
    node=$(bed_value rabbit RABBIT_NODES)
    node=${node%%,*}
    for queue in $(timeout 30 rabbitmqctl -q -n "$node" list_queues name --no-table-headers 2>/dev/null | grep "^$1\." || true); do
        timeout 30 rabbitmqctl -q -n "$node" delete_queue "$queue" >/dev/null 2>&1 || log "could not delete queue $queue"
    done
}

# run_e2e OUT ARGS...: runs wxgate-e2e in the background (so a signal reaches cleanup), JSON to
# OUT; returns its status (1 = errors or missing replies, which the tables show).
run_e2e() {
    local out=$1 status=0
    shift
    "$WORK/wxgate-e2e" --json --threads "$E2E_THREADS" "$@" >"$out" 2>>"$WORK/e2e.log" &
    local pid=$!
    HELPERS+=("$pid")
    wait "$pid" || status=$?
    forget "$pid"
    [[ -s "$out" ]] || { tail -n 20 "$WORK/e2e.log" >&2; die "wxgate-e2e failed (status $status)"; }
    if [[ -n "${KEEP_JSON:-}" ]]; then mkdir -p "$KEEP_JSON" && cp "$out" "$KEEP_JSON/"; fi
    return "$status"
}

# --- part 1: scaling ------------------------------------------------------------------------

# scaling_run ROUND GATEWAYS WORKERS
scaling_run() {
    local round=$1 gateways=$2 workers=$3 ns config out
    ns="bc$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n')"
    config=$WORK/$ns.toml
    out=$WORK/scaling-r$round-${gateways}g${workers}w.json
    write_config "$ns" "$(redis_cluster_toml)" "$config"
    log "round $round: $gateways gateway(s) + $workers worker(s), namespace $ns"
    FLEET_LABEL="round $round, $gateways+$workers, $ns"
    start_fleet "$config" "$gateways" "$workers"
    local args=()
    mapfile -t args < <(fleet_args; fleet_watch; bed_watch)
    run_e2e "$out" --config "$config" "${args[@]}" \
        --phase "warmup=each:$WARMUP_RATE" --phase "steady=rate:$STEADY_RATE:$STEADY_DURATION" \
        --phase "max=closed:$MAX_CONCURRENCY:$MAX_DURATION" ||
        log "round $round, $gateways+$workers: wxgate-e2e reported errors or missing replies"
    stop_fleet
    delete_queues "$ns"
    jq -c --argjson round "$round" --arg fleet "$gateways+$workers" '{round: $round, fleet: $fleet} + .' "$out" >>"$WORK/scaling.jsonl"
}

scaling_report() {
    local jsonl=$WORK/scaling.jsonl
    cat <<EOF

## Part 1: 1 gateway + 1 worker vs 2 gateways + 3 workers (RabbitMQ cluster + Redis Cluster)

$ACCOUNTS \`$MODE\` accounts · quorum queues · phases warmup=each:$WARMUP_RATE, steady=rate:$STEADY_RATE:$STEADY_DURATION, max=closed:$MAX_CONCURRENCY:$MAX_DURATION · worker.concurrency $CONCURRENCY, prefetch $PREFETCH · everything on one machine ($(nproc) CPUs)

| round | fleet | steady push/s | steady p50 / p99 ms | max push/s | max p50 / p99 ms | errors | missing | duplicates | token calls per appid |
|---|---|---:|---:|---:|---:|---:|---:|---:|---|
EOF
    jq -r 'def r1: . * 10 | round / 10; def ph(n): .phases[] | select(.name == n);
        "| \(.round) | \(.fleet) | \(ph("steady").pushes_per_s | r1) | \(ph("steady").latency_ms.end_to_end.p50 // "-") / \(ph("steady").latency_ms.end_to_end.p99 // "-") | \(ph("max").pushes_per_s | r1) | \(ph("max").latency_ms.end_to_end.p50 // "-") / \(ph("max").latency_ms.end_to_end.p99 // "-") | \([.phases[].errors.total] | add) | \([.phases[].missing] | add) | \([.phases[].duplicates] | add) | \(.tokens | "\(.exactly_one)/\(.appids) exactly one, max \(.max)") |"' "$jsonl"
    cat <<EOF

Ratio 2+3 / 1+1 within each round (same phases, back to back):

| figure | round ratios | median | range |
|---|---|---:|---|
EOF
    jq -rs 'def r2: . * 100 | round / 100;
        def ph(n): .phases[] | select(.name == n);
        def ratios(f): [group_by(.round)[] | (map(select(.fleet == "2+3"))[0] | f) / (map(select(.fleet == "1+1"))[0] | f)];
        def median: sort | .[(length - 1) / 2 | floor];
        def row(name; f): ratios(f) as $r | "| \(name) | \($r | map(r2 | tostring) | join(", ")) | \($r | median | r2) | \($r | min | r2)–\($r | max | r2) |";
        row("max push/s"; ph("max").pushes_per_s),
        row("max p99"; ph("max").latency_ms.end_to_end.p99),
        row("steady push/s"; ph("steady").pushes_per_s),
        row("steady p50"; ph("steady").latency_ms.end_to_end.p50),
        row("steady p99"; ph("steady").latency_ms.end_to_end.p99)' "$jsonl"
    local phase
    for phase in steady max; do
        cat <<EOF

CPU µs per event, $phase phase (utime+stime of each process from the phase start to the end of
its drain / successful pushes; each RabbitMQ and Redis node of the beds):

| round | fleet | gateways | workers | RabbitMQ nodes | Redis nodes | wxgate-e2e | sum |
|---|---|---|---|---|---|---:|---:|
EOF
        jq -r --arg phase "$phase" 'def r: . * 10 | round / 10;
            def part(p): to_entries | map(select(.key | startswith(p)));
            def cell(p): part(p) as $e | if ($e | length) == 0 then "-" else "\($e | map(.value) | add | r)\(if ($e | length) > 1 then " (\($e | map(.value | r | tostring) | join(" + ")))" else "" end)" end;
            (.phases[] | select(.name == $phase) | .cpu_us_per_event) as $c
            | "| \(.round) | \(.fleet) | \($c | cell("gateway-")) | \($c | cell("worker-")) | \($c | cell("rabbit-")) | \($c | cell("redis-")) | \($c.e2e | r) | \([$c[]] | add | round) |"' "$jsonl"
    done
    cat <<EOF

Mean CPU µs per event by role over the rounds:

| phase | fleet | gateways | workers | RabbitMQ (3 nodes) | Redis (6 nodes) | wxgate-e2e | sum |
|---|---|---:|---:|---:|---:|---:|---:|
EOF
    jq -rs 'def r: . * 10 | round / 10;
        def role(p): to_entries | map(select(.key | startswith(p)) | .value) | add // 0;
        def mean(f): map(f) | add / length | r;
        ("steady", "max") as $phase | group_by(.fleet)[]
        | (map(.phases[] | select(.name == $phase) | .cpu_us_per_event)) as $cs
        | "| \($phase) | \(.[0].fleet) | \($cs | mean(role("gateway-"))) | \($cs | mean(role("worker-"))) | \($cs | mean(role("rabbit-"))) | \($cs | mean(role("redis-"))) | \($cs | mean(.e2e)) | \($cs | mean([.[]] | add) | round) |"' "$jsonl"
}

# --- part 2: faults -------------------------------------------------------------------------

# at_offset START_MS SECONDS: sleeps until START_MS + SECONDS s.
at_offset() {
    local due=$(($1 + $2 * 1000)) now
    now=$(date +%s%3N)
    ((due > now)) || return 0
    sleep "$(awk -v ms=$((due - now)) 'BEGIN { printf "%.3f", ms / 1000 }')"
}

# fault_sequence SCENARIO NS START_MS EVENTS: the fault and the restart, KEY=value lines
# (FAULT_MS=…, …) appended to EVENTS.
fault_sequence() {
    local scenario=$1 ns=$2 start=$3 events=$4 leader port
    at_offset "$start" "$FAULT_AT_S"
    case $scenario in
    rabbit)
        leader=$("$TESTBED" queue-leader rabbit "$WORK/rabbit" "$ns.worker" 2>>"$WORK/testbed.log" | awk -F= '$1 == "LEADER" { print $2 }')
        echo "FAULT_MS=$(date +%s%3N)" >>"$events"
        "$TESTBED" kill-node rabbit "$WORK/rabbit" "$leader" 2>>"$WORK/testbed.log"
        echo "WHAT=RabbitMQ node $leader (leader of $ns.worker) SIGKILLed" >>"$events"
        at_offset "$start" "$((FAULT_AT_S + RESTART_AFTER_S))"
        echo "RESTART_MS=$(date +%s%3N)" >>"$events"
        "$TESTBED" start-node rabbit "$WORK/rabbit" "$leader" 2>>"$WORK/testbed.log"
        echo "BACK_MS=$(date +%s%3N)" >>"$events"
        ;;
    redis | sentinel)
        local kind=redis-cluster dir=$WORK/rcluster
        [[ $scenario == sentinel ]] && kind=sentinel dir=$WORK/sentinel
        echo "FAULT_MS=$(date +%s%3N)" >>"$events"
        port=$("$TESTBED" kill-master "$kind" "$dir" 2>>"$WORK/testbed.log" | awk -F= '$1 == "KILLED_PORT" { print $2 }')
        echo "WHAT=$kind master on port $port SIGKILLed" >>"$events"
        "$TESTBED" wait-failover "$kind" "$dir" >/dev/null 2>>"$WORK/testbed.log"
        echo "FAILOVER_MS=$(date +%s%3N)" >>"$events"
        at_offset "$start" "$((FAULT_AT_S + RESTART_AFTER_S))"
        echo "RESTART_MS=$(date +%s%3N)" >>"$events"
        "$TESTBED" start-node "$kind" "$dir" "$port" 2>>"$WORK/testbed.log"
        echo "BACK_MS=$(date +%s%3N)" >>"$events"
        ;;
    esac
}

# fault_run SCENARIO: 2 gateways + 3 workers under FAULT_RATE, the fault FAULT_AT_S in.
fault_run() {
    local scenario=$1 ns config out timeline events redis
    ns="bf$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n')"
    config=$WORK/$ns.toml
    out=$WORK/fault-$scenario.json
    timeline=$WORK/fault-$scenario.csv
    events=$WORK/fault-$scenario.events
    : >"$events"
    if [[ $scenario == sentinel ]]; then redis=$(sentinel_toml); else redis=$(redis_cluster_toml); fi
    write_config "$ns" "$redis" "$config"
    FLEET_LABEL="fault $scenario, $ns"
    log "fault $scenario: 2 gateways + 3 workers, $FAULT_RATE/s for $FAULT_LOAD_S s, fault at $FAULT_AT_S s, namespace $ns"
    start_fleet "$config" 2 3
    local args=()
    mapfile -t args < <(fleet_args)
    local start
    start=$(date +%s%3N)
    fault_sequence "$scenario" "$ns" "$start" "$events" &
    local sequence=$!
    HELPERS+=("$sequence")
    run_e2e "$out" --config "$config" "${args[@]}" --timeline "$timeline" \
        --drain-timeout 150s --push-timeout 5s \
        --phase "load=rate:$FAULT_RATE:${FAULT_LOAD_S}s" || true
    wait "$sequence" || log "fault $scenario: the fault sequence failed (see $WORK/testbed.log)"
    forget "$sequence"
    stop_fleet
    if [[ -n "${KEEP_JSON:-}" ]]; then cp "$timeline" "$events" "$KEEP_JSON/"; fi
    fault_row "$scenario" "$out" "$timeline" "$events" >>"$WORK/faults.rows"
}

# fault_row SCENARIO JSON TIMELINE EVENTS: the scenario's line of the faults table, fields
# separated by `|`.
fault_row() {
    local scenario=$1 out=$2 timeline=$3 events=$4 row
    row=$(mktemp "$WORK/row.XXXXXX")
    local fault_ms
    fault_ms=$(awk -F= '$1 == "FAULT_MS" { print $2 }' "$events")
    [[ -n "$fault_ms" ]] || die "fault $scenario: no fault happened (see $WORK/testbed.log)"
    # One row: pushes, 200s, refused by kind, replies, replies to refused, lost, and the times.
    awk -F, -v fault="$fault_ms" -v slow="$SERVED_MS" '
        NR == 1 { next }
        {
            pushes++
            ok = ($8 == "ok")
            if (ok) { oks++; if ($7 == "") lost++ } else { refused++; kinds[$8]++; if ($7 != "") late++ }
            if ($7 != "") replies++
            if ($6 + 0 >= fault + 0) {
                disturbed = !ok || ($6 - $5 > slow)
                if (disturbed && $5 + 0 > last_bad + 0) last_bad = $5
                if (ok && $6 - $5 > slowest) slowest = $6 - $5
            }
            starts[NR] = $5; fast[NR] = ok && ($6 - $5 <= slow)
        }
        END {
            # Served again: from the fault to the start of the first push after the last
            # disturbed one (not 200, or 200 slower than SERVED_MS).
            served = 0
            if (last_bad > 0) {
                first_good = 0
                for (i in starts) if (starts[i] > last_bad && fast[i] && (first_good == 0 || starts[i] < first_good)) first_good = starts[i]
                served = (first_good > 0 ? first_good - fault : -1)
            }
            k = ""
            for (kind in kinds) k = k (k == "" ? "" : ", ") kind " " kinds[kind]
            printf "%d|%d|%d%s|%d|%d|%d|%.2f|%.2f", pushes, oks, refused, (k == "" ? "" : " (" k ")"), replies, late, lost, served / 1000, slowest / 1000
        }' "$timeline" >"$row"
    # The longest gap between consecutive 200 answers after the fault (the first one measured
    # from the fault itself).
    awk -F, -v fault="$fault_ms" 'NR > 1 && $8 == "ok" && $6 + 0 >= fault + 0 { print $6 }' "$timeline" |
        sort -n | awk -v fault="$fault_ms" '
            { gap = $1 - (NR == 1 ? fault : previous); if (gap > longest) longest = gap; previous = $1 }
            END { printf "|%.2f\n", longest / 1000 }' >>"$row"
    local what times
    what=$(awk -F= '$1 == "WHAT" { sub(/^[^=]*=/, ""); print }' "$events")
    times=$(awk -F= -v f="$fault_ms" '$1 ~ /_MS$/ && $1 != "FAULT_MS" { printf "%s%s +%.1f s", sep, tolower(substr($1, 1, length($1) - 3)), ($2 - f) / 1000; sep = ", " }' "$events")
    jq -r --arg what "$what" --arg times "$times" --arg scenario "$scenario" --rawfile row "$row" '
        ($row | rtrimstr("\n") | split("|")) as $f | .phases[0] as $p
        | "\($scenario)|\($what) (\($times))|\($f[0])|\($f[1])|\($f[2])|\($f[3])|\($f[4])|\($p.duplicates)|\($f[5])|\($f[6])|\($f[8])|\($f[7])|\(.tokens.max)"' \
        "$out"
}

faults_report() {
    cat <<END

## Part 2: node failures under load (2 gateways + 3 workers)

$FAULT_RATE pushes/s open loop for $FAULT_LOAD_S s, $ACCOUNTS \`$MODE\` accounts round robin over both
gateways, one delivery per push (no retry), 5 s push timeout; the fault $FAULT_AT_S s in, the
killed node restarted $RESTART_AFTER_S s after it; worker.retry_delays_ms at its default.

| scenario | fault (times after it) | pushes | answered 200 | refused (WeChat would retry) | replies | replies to refused | duplicates | lost | served again after s | longest gap in 200s s | slowest 200 after the fault s | most token calls for one appid |
|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|
END
    awk -F'|' '{ printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13 }' "$WORK/faults.rows"
    cat <<END

- lost: pushes answered 200 without a reply at the end of the drain (150 s); replies:
  distinct pushes answered by an accepted custom/send (each event delivered is answered by one).
- served again: from the SIGKILL to the start of the first push after the last disturbed one
  (not answered 200, or answered 200 slower than $SERVED_MS ms); 0 when nothing was disturbed.
- longest gap: the longest time after the fault with no 200 answer (the first gap measured
  from the fault); at $FAULT_RATE/s over 2 gateways the normal gap is a few ms.
END
}

# --- main -----------------------------------------------------------------------------------

case " $PARTS " in *" faults "*) want_faults=1 ;; *) want_faults=0 ;; esac
case " $PARTS " in *" scaling "*) want_scaling=1 ;; *) want_scaling=0 ;; esac

log "bringing up the RabbitMQ cluster and the Redis Cluster (beds in $WORK)"
# The RabbitMQ bed boots in the background (about 30 s) while the Redis Cluster comes up;
# registered here, as the subshell's own registration does not reach this shell.
BEDS+=("rabbit $WORK/rabbit")
bed_up rabbit rabbit &
rabbit_up=$!
HELPERS+=("$rabbit_up")
bed_up redis-cluster rcluster
wait "$rabbit_up" || die "the RabbitMQ bed did not come up (see above)"
forget "$rabbit_up"
AMQP_URLS=$(bed_value rabbit AMQP_URLS)
REDIS_CLUSTER_URLS=$(bed_value rcluster REDIS_CLUSTER_URLS)
[[ -n "$AMQP_URLS" && -n "$REDIS_CLUSTER_URLS" ]] || die "a bed printed no URLs"
if ((want_faults)) && [[ " $SCENARIOS " == *" sentinel "* ]]; then
    bed_up sentinel sentinel
    SENTINEL_URLS=$(bed_value sentinel SENTINEL_URLS)
    SENTINEL_MASTER=$(bed_value sentinel SENTINEL_MASTER)
fi

COMMIT=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
LOAD_BEFORE=$(cut -d' ' -f1 /proc/loadavg)
STARTED=$(date -u +%Y-%m-%dT%H:%MZ)

if ((want_scaling)); then
    for ((round = 1; round <= ROUNDS; round++)); do
        if ((round % 2)); then order=("1 1" "2 3"); else order=("2 3" "1 1"); fi
        for fleet in "${order[@]}"; do
            # shellcheck disable=SC2086 # GATEWAYS WORKERS
            scaling_run "$round" $fleet
        done
    done
fi
if ((want_faults)); then
    : >"$WORK/faults.rows"
    for scenario in $SCENARIOS; do
        case $scenario in rabbit | redis | sentinel) fault_run "$scenario" ;; *) die "unknown scenario $scenario" ;; esac
    done
fi

echo
echo "# wxgate on clusters ($STARTED, commit $COMMIT, $(nproc) CPUs, $(uname -r), 1-min load $LOAD_BEFORE before, $(cut -d' ' -f1 /proc/loadavg) after)"
((want_scaling)) && scaling_report
((want_faults)) && faults_report
echo

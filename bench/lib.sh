# Shell helpers shared by the bench scripts (gateway.sh, e2e.sh, api.sh, cluster.sh, …). Sourcing
# it defines log() and die() (prefixed with the script's name) and the defaults every script
# shares: CARGO_TARGET_DIR, REDIS_URL, AMQP_URL, RUST_LOG (warn: no per-request logging).

BENCH_NAME=$(basename "$0")
log() { printf '[%s] %s\n' "$BENCH_NAME" "$*" >&2; }
die() { log "error: $*"; exit 1; }

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/wxgate-target}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
export RUST_LOG=${RUST_LOG:-warn}

# raise_fd_limit: up to 65,536 open files (else the hard limit): the load generator and the
# servers keep thousands of connections on both ends of one machine.
raise_fd_limit() { ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true; }

# build_release PACKAGE...: `cargo build --release -p PACKAGE ...` in the workspace, unless
# SKIP_BUILD=1.
build_release() {
    [[ "${SKIP_BUILD:-0}" == 1 ]] && return 0
    local args=() package
    for package in "$@"; do args+=(-p "$package"); done
    log "building $* (release, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    (cd "$ROOT" && cargo build --release "${args[@]}")
}

# link_private SOURCE NAME: links (or copies) the program SOURCE to $WORK/NAME, so that a build
# in the shared target directory during the run cannot swap it between its build and its start.
link_private() {
    [[ -x "$1" ]] || die "$1 missing"
    ln -f "$1" "$WORK/$2" 2>/dev/null || cp "$1" "$WORK/$2"
}

# stop_processes: what the script started; each script that starts processes redefines it.
stop_processes() { :; }

# start_namespace PREFIX: a random namespace PREFIX<hex> in NS and a temporary directory in
# WORK; at exit, also on failure or Ctrl-C, stop_processes runs, then both are removed.
start_namespace() {
    NS="$1$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n')"
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/wxgate-${BENCH_NAME%.sh}.XXXXXX")
    trap cleanup EXIT
    trap 'exit 130' INT TERM
}

# cleanup: the EXIT trap of start_namespace; keeps the script's exit status.
cleanup() {
    local status=$?
    stop_processes
    remove_namespace "$NS" "$REDIS_URL"
    rm -rf "$WORK"
    exit "$status"
}

# check_prerequisites: the tools the scripts use, Redis at $REDIS_URL, RabbitMQ on
# 127.0.0.1:5672, and a valid $QUEUE_TYPE; dies naming what is missing.
check_prerequisites() {
    local tool
    for tool in curl jq redis-cli rabbitmqctl; do
        command -v "$tool" >/dev/null || die "$tool not found"
    done
    redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1 ||
        die "Redis not reachable at $REDIS_URL (start it: docker compose up -d redis, or service redis-server start)"
    (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null ||
        die "RabbitMQ not reachable on 127.0.0.1:5672 (start it: docker compose up -d rabbitmq, or service rabbitmq-server start)"
    case "$QUEUE_TYPE" in classic | quorum) ;; *) die "QUEUE_TYPE must be classic or quorum" ;; esac
}

# stop NAME PID: SIGTERM, then KILL if it has not exited 15 s later (the gateway and the worker
# drain for up to 10 s on SIGTERM, docs/contract.md §1.1, §1.3).
stop() {
    local name=$1 pid=$2
    [[ -n "$pid" ]] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        local deadline=$((SECONDS + 15))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name did not exit within 15 s of SIGTERM; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || log "$name exited with status $?"
}

# delete_exchange NAME
delete_exchange() {
    local exchange=$1
    # rabbitmqctl cannot delete exchanges; use the management API when it is enabled, else
    # the broker's own delete function through eval (RabbitMQ 3.x signature).
    if command -v rabbitmqadmin >/dev/null &&
        rabbitmqadmin delete exchange name="$exchange" >/dev/null 2>&1; then
        return 0
    fi
    local result
    result=$(rabbitmqctl eval "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$exchange\">>), false, <<\"wxgate-bench\">>)." 2>&1) || true
    case "$result" in
    *ok* | *not_found*) ;;
    *) log "could not delete exchange $exchange (delete it by hand): $result" ;;
    esac
}

# remove_namespace NS REDIS_URL: every {NS}.* queue, the {NS}.events exchange, every {NS}:* key.
remove_namespace() {
    local ns=$1 redis_url=$2
    log "removing RabbitMQ queues and exchange $ns.*"
    local listing queue attempt
    # A busy broker can time a listing out; try again rather than leave the queues behind.
    for attempt in 1 2 3; do
        listing=$(rabbitmqctl -q list_queues name 2>/dev/null) && break
        log "listing queues failed (attempt $attempt)"
        listing=""
    done
    for queue in $(grep -E "^${ns}\." <<<"$listing" || true); do
        rabbitmqctl -q delete_queue "$queue" >/dev/null 2>&1 || log "could not delete queue $queue"
    done
    # Deleting is idempotent (not_found is fine), so no listing is needed for the exchange.
    delete_exchange "${ns}.events"
    log "removing Redis keys $ns:*"
    redis-cli -u "$redis_url" --scan --pattern "${ns}:*" | xargs -r -n 500 redis-cli -u "$redis_url" del >/dev/null
}

# wait_ready NAME PID URL LOG [SECONDS]: polls URL until it answers 2xx; dies with the tail of
# LOG if PID exits first or SECONDS (60) pass.
wait_ready() {
    local name=$1 pid=$2 url=$3 logfile=$4 limit=${5:-60}
    local deadline=$((SECONDS + limit))
    until curl -fsS -o /dev/null "$url" 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$logfile" >&2
            die "$name exited before becoming ready"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 20 "$logfile" >&2
            die "$name not ready within $limit s"
        fi
        sleep 0.2
    done
    log "$name ready (pid $pid)"
}

# config_head NS PORT: the start of a benchmark config: namespace, Redis, RabbitMQ with
# $QUEUE_TYPE, and the [gateway] table listening on 127.0.0.1:PORT (open for more keys).
config_head() {
    cat <<EOF
namespace = "$1"

[redis]
url = "$REDIS_URL"

[rabbitmq]
url = "$AMQP_URL"
queue_type = "$QUEUE_TYPE"

[gateway]
listen = "127.0.0.1:$2"
EOF
}

# bench_account MODE: the one account the single-account scripts drive (id `bench`), in MODE.
bench_account() {
    cat <<EOF

[[accounts]]
id = "bench"
appid = "wx0000000000bench"
token = "benchtoken"
encoding_aes_key = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
mode = "$1"
EOF
}

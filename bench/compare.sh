#!/usr/bin/env bash
# wx-gateway against Python WeChat callback servers, on one machine, with one load generator;
# see bench/README.md "compare.sh".
#
# Every server does the same work per callback: verify the signature (and in safe mode the
# msg_signature), parse the XML (decrypting it in safe mode), and answer a passive text reply
# echoing the message (encrypted in safe mode). wx-gateway does it through its full pipeline
# besides: Redis dedup, a confirmed publish to RabbitMQ ({ns}.worker a quorum queue unless
# QUEUE_TYPE says otherwise), the answer stored in Redis. The Python servers, each under
# gunicorn with sync workers, one per core:
#   flask     a Flask view as the tutorials write it: sha1 over sorted token/timestamp/nonce,
#             xmltodict, WXBizMsgCrypt written out with pycryptodome (bench/compare/flask_plain.py)
#   wechatpy  wechatpy in Flask: check_signature, parse_message, create_reply, WeChatCrypto
#             (bench/compare/flask_wechatpy.py)
#   werobot   WeRoBot's own WSGI app with an @robot.text echo (bench/compare/werobot_app.py)
# They are installed from PyPI (bench/compare/requirements.txt) into bench/compare/.venv, which
# the script creates, and reinstalls when requirements.txt changes.
#
# Runs are interleaved so that the machine's drift hits every server alike: per round, for each
# mode, wxgate, flask, wechatpy, werobot one after the other; each run starts its server afresh
# (wx-gateway with a fresh namespace, so no callback is a dedup hit), checks 20 answers, then
# measures with `wxgate-load --expect echo` (every answer checked: signature, decryption, the
# echoed content and addressing; a wrong answer counts as an error, not as throughput). After
# each wx-gateway run, {ns}.worker must hold every callback it answered (check, warmup and
# measured). Prints the runs round by round and the ratios wxgate/python per round with their
# range, as markdown.
#
# CPU per request is utime+stime from /proc over the measured window: the gateway process, or
# the gunicorn master and all its workers summed; for wx-gateway, Redis and RabbitMQ (which
# anything else on the machine may be using too) are reported in their own column.
#
# Environment (all optional):
#   ROUNDS            rounds                        (default 3)
#   DURATION, WARMUP  per run                       (default 10s, 2s)
#   CONNECTIONS       keep-alive connections        (default 32)
#   MODES             callback modes                (default "plain safe")
#   SERVERS           servers, in run order         (default "wxgate flask wechatpy werobot")
#   WORKERS           gunicorn sync workers         (default nproc)
#   QUEUE_TYPE        classic | quorum              (default quorum, the gateway's default)
#   PORT              listen port of every server   (default 18090)
#   PYTHON            interpreter for the venv      (default python3)
#   CARGO_TARGET_DIR  build directory               (default $HOME/.cache/wxgate-target)
#   REDIS_URL         (default redis://127.0.0.1:6379/0)
#   AMQP_URL          (default amqp://guest:guest@127.0.0.1:5672/%2f)
#   SKIP_BUILD=1      use the binaries already in $CARGO_TARGET_DIR/release
#   GATEWAY_BIN       run this wx-gateway binary instead
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-32}
MODES=${MODES:-plain safe}
SERVERS=${SERVERS:-wxgate flask wechatpy werobot}
WORKERS=${WORKERS:-$(nproc)}
QUEUE_TYPE=${QUEUE_TYPE:-quorum}
PORT=${PORT:-18090}
PYTHON=${PYTHON:-python3}

TOKEN=benchtoken
AES_KEY=abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG
APPID=wx0000000000bench
COMPARE_DIR=$ROOT/bench/compare
VENV=$COMPARE_DIR/.venv
CHECK_REQUESTS=20
SERVER_PID=""
SERVER_NAME=""
RUN_NS=""

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
start_namespace cmp

check_prerequisites
for server in $SERVERS; do
    case "$server" in wxgate | flask | wechatpy | werobot) ;; *) die "unknown server $server" ;; esac
done
for mode in $MODES; do
    case "$mode" in plain | safe) ;; *) die "MODES: plain and/or safe, not $mode" ;; esac
done
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
[[ "$WORKERS" =~ ^[1-9][0-9]*$ ]] || die "WORKERS must be a positive integer"
REDIS_PID=$(pgrep -x redis-server | head -1) || die "no redis-server process on this machine"
RABBIT_PID=$(pgrep -f beam.smp | head -1) || die "no RabbitMQ (beam.smp) process on this machine"

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    log "building wx-gateway and wxgate-load (release, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    (cd "$ROOT" && cargo build --release -p wx-gateway -p wxgate-bench)
fi
GATEWAY_BIN=${GATEWAY_BIN:-$CARGO_TARGET_DIR/release/wx-gateway}
LOAD_BIN=$CARGO_TARGET_DIR/release/wxgate-load
[[ -x "$GATEWAY_BIN" && -x "$LOAD_BIN" ]] || die "binaries missing in $CARGO_TARGET_DIR/release"
# Private copies: a build in the shared target directory cannot swap one during the run.
cp "$GATEWAY_BIN" "$WORK/wx-gateway"
cp "$LOAD_BIN" "$WORK/wxgate-load"
GATEWAY_BIN=$WORK/wx-gateway
LOAD_BIN=$WORK/wxgate-load

# --- the Python servers' virtualenv ------------------------------------------------------------
requirements_stamp=$(sha256sum "$COMPARE_DIR/requirements.txt" | cut -d' ' -f1)
if [[ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" != "$requirements_stamp" ]]; then
    log "creating $VENV from requirements.txt"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$COMPARE_DIR/requirements.txt"
    echo "$requirements_stamp" >"$VENV/.requirements.sha256"
fi

# --- starting and stopping one server ------------------------------------------------------------
stop_server() {
    stop "$SERVER_NAME" "$SERVER_PID"
    SERVER_PID=""
    if [[ -n "$RUN_NS" ]]; then
        remove_namespace "$RUN_NS" "$REDIS_URL"
        RUN_NS=""
    fi
}

stop_processes() {
    stop_server
}

# start_wxgate ROUND MODE: a fresh namespace, one account `bench` in MODE with the passive
# echo rule, listening on $PORT.
start_wxgate() {
    local round=$1 mode=$2
    RUN_NS="${NS}-r${round}-${mode}"
    {
        config_head "$RUN_NS" "$PORT"
        bench_account "$mode"
        cat <<'EOF'

[[accounts.passive]]
match = { msg_type = "text" }
reply = { echo = true }
EOF
    } >"$WORK/gateway.toml"
    SERVER_NAME=wx-gateway
    "$GATEWAY_BIN" --config "$WORK/gateway.toml" >>"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    wait_ready wx-gateway "$SERVER_PID" "http://127.0.0.1:$PORT/readyz" "$WORK/server.log"
}

# signed_query NONCE: signature, timestamp and nonce of a callback URL for $TOKEN.
signed_query() {
    local nonce=$1 timestamp signature
    timestamp=$(date +%s)
    signature=$(printf '%s\n' "$TOKEN" "$timestamp" "$nonce" | LC_ALL=C sort | tr -d '\n' | sha1sum | cut -d' ' -f1)
    printf 'signature=%s&timestamp=%s&nonce=%s' "$signature" "$timestamp" "$nonce"
}

# start_python SERVER: gunicorn with $WORKERS sync workers on $PORT, ready once it answers
# WeChat's URL verification (a signed GET echoing `echostr`).
start_python() {
    local server=$1 module
    case "$server" in
    flask) module=flask_plain:app ;;
    wechatpy) module=flask_wechatpy:app ;;
    werobot) module=werobot_app:app ;;
    esac
    SERVER_NAME="gunicorn ($server)"
    WX_TOKEN=$TOKEN WX_AES_KEY=$AES_KEY WX_APPID=$APPID \
        "$VENV/bin/gunicorn" --chdir "$COMPARE_DIR" --workers "$WORKERS" --worker-class sync \
        --bind "127.0.0.1:$PORT" --log-level warning --error-logfile - "$module" \
        >>"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    local deadline=$((SECONDS + 60)) answer=""
    until [[ "$answer" == ready ]]; do
        kill -0 "$SERVER_PID" 2>/dev/null || { tail -n 20 "$WORK/server.log" >&2; die "$SERVER_NAME exited"; }
        ((SECONDS < deadline)) || { tail -n 20 "$WORK/server.log" >&2; die "$SERVER_NAME not ready within 60 s"; }
        sleep 0.2
        answer=$(curl -fsS "http://127.0.0.1:$PORT/wx/bench?$(signed_query 4711)&echostr=ready" 2>/dev/null) || true
    done
    # Every worker up, so the CPU of all of them is read.
    until (($(pgrep -P "$SERVER_PID" | wc -l) >= WORKERS)); do
        ((SECONDS < deadline)) || die "$SERVER_NAME: fewer than $WORKERS workers"
        sleep 0.2
    done
    log "$SERVER_NAME ready (master $SERVER_PID, workers $(pgrep -P "$SERVER_PID" | tr '\n' ' '))"
}

# check_server SERVER MODE: a forged signature is refused, and $CHECK_REQUESTS callbacks are
# answered with the right echo (wxgate-load --expect echo checks each answer).
check_server() {
    local server=$1 mode=$2 status
    status=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: text/xml' \
        --data '<xml><ToUserName><![CDATA[gh_000000000000]]></ToUserName><FromUserName><![CDATA[oForged]]></FromUserName><CreateTime>1</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[forged]]></Content><MsgId>1</MsgId></xml>' \
        "http://127.0.0.1:$PORT/wx/bench?signature=0000000000000000000000000000000000000000&timestamp=$(date +%s)&nonce=1") || true
    [[ "$status" == 4* ]] || die "$server accepted a forged signature (status $status)"
    "$LOAD_BIN" --json --url "http://127.0.0.1:$PORT/wx/bench" --mode "$mode" --expect echo \
        --token "$TOKEN" --aes-key "$AES_KEY" --appid "$APPID" \
        --connections 2 --warmup 0s --requests "$CHECK_REQUESTS" >"$WORK/check.json" || true
    jq -e --argjson n "$CHECK_REQUESTS" '.ok == $n and .errors.total == 0' "$WORK/check.json" >/dev/null ||
        die "$server ($mode) did not answer $CHECK_REQUESTS callbacks with the echo: $(cat "$WORK/check.json")"
}

# queued NS: messages in {NS}.worker.
queued() {
    rabbitmqctl -q list_queues name messages 2>/dev/null | awk -v q="$1.worker" '$1 == q { print $2 }'
}

# run_one ROUND MODE SERVER: one measured run; its summary goes to $WORK/runs.jsonl.
run_one() {
    local round=$1 mode=$2 server=$3 watch=() pid
    if [[ $server == wxgate ]]; then
        start_wxgate "$round" "$mode"
        watch=(--gateway-pid "$SERVER_PID" --watch "rabbitmq=$RABBIT_PID" --watch "redis=$REDIS_PID")
    else
        start_python "$server"
        watch=(--watch "master=$SERVER_PID")
        for pid in $(pgrep -P "$SERVER_PID"); do watch+=(--watch "worker$pid=$pid"); done
    fi
    check_server "$server" "$mode"
    log "round $round, $mode, $server: ${DURATION} after ${WARMUP} warmup, $CONNECTIONS connections"
    local json=$WORK/run-$round-$mode-$server.json
    "$LOAD_BIN" --json --url "http://127.0.0.1:$PORT/wx/bench" --mode "$mode" --expect echo \
        --token "$TOKEN" --aes-key "$AES_KEY" --appid "$APPID" --connections "$CONNECTIONS" \
        --duration "$DURATION" --warmup "$WARMUP" "${watch[@]}" >"$json" ||
        log "round $round, $mode, $server: wxgate-load reported failure"
    [[ -s "$json" ]] || echo '{}' >"$json"

    # RSS of the server: the gateway, or gunicorn's master and workers together.
    local rss=0 kib
    for pid in "$SERVER_PID" $(pgrep -P "$SERVER_PID" || true); do
        kib=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)
        rss=$((rss + ${kib:-0}))
    done

    # Every callback the gateway answered is in {ns}.worker (a publish confirmed before the answer).
    local answered queued_count="null" deadline
    answered=$(jq --argjson n "$CHECK_REQUESTS" '(.ok // 0) + (.warmup_ok // 0) + $n' "$json")
    if [[ $server == wxgate ]]; then
        deadline=$((SECONDS + 30))
        queued_count=$(queued "$RUN_NS")
        while [[ "${queued_count:-0}" -lt "$answered" ]] && ((SECONDS < deadline)); do
            sleep 0.5
            queued_count=$(queued "$RUN_NS")
        done
        queued_count=${queued_count:-0}
        if ((queued_count < answered)); then
            die "$RUN_NS.worker holds $queued_count messages, but the gateway answered $answered callbacks"
        fi
    fi
    stop_server
    jq -c --argjson round "$round" --arg server "$server" --argjson rss "$rss" \
        --argjson answered "$answered" --argjson queued "$queued_count" '{
            round: $round, mode: (.mode // "?"), server: $server,
            rps: .req_per_s, p50: .latency_ms.p50, p99: .latency_ms.p99,
            errors: .errors.total, error_kinds: .errors,
            cpu: (if $server == "wxgate" then .gateway_cpu_us_per_req
                  else ([.cpu_us_per_req | to_entries[] | select(.key != "load") | .value] | add) end),
            deps: (if $server == "wxgate" then ((.cpu_us_per_req.rabbitmq // 0) + (.cpu_us_per_req.redis // 0)) else null end),
            load: .load_cpu_us_per_req, rss_mib: ($rss / 1024 * 10 | round / 10),
            answered: $answered, queued: $queued }' "$json" >>"$WORK/runs.jsonl"
}

# --- the rounds --------------------------------------------------------------------------------
: >"$WORK/runs.jsonl"
for ((round = 1; round <= ROUNDS; round++)); do
    for mode in $MODES; do
        for server in $SERVERS; do
            run_one "$round" "$mode" "$server"
        done
    done
done

# --- report --------------------------------------------------------------------------------------
versions=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(", ".join(f"{p} {m.version(p)}" for p in ("Flask", "wechatpy", "WeRoBot", "gunicorn", "xmltodict", "pycryptodome", "cryptography")))')
cat <<EOF

## wx-gateway and Python callback servers

$(date -u +%Y-%m-%dT%H:%MZ) · $(nproc) CPUs · $(uname -r) · $ROUNDS rounds · ${DURATION} per run after ${WARMUP} warmup
· $CONNECTIONS connections · queue type \`$QUEUE_TYPE\` · gunicorn $WORKERS sync workers
· Python $("$VENV/bin/python" -c 'import platform; print(platform.python_version())'); $versions

| round | mode | server | req/s | p50 ms | p99 ms | errors | server CPU µs/req | Redis+RabbitMQ CPU µs/req | load CPU µs/req | server RSS MiB | answered / in {ns}.worker |
|---|---|---|---|---|---|---|---|---|---|---|---|
EOF
jq -r '"| \(.round) | \(.mode) | \(.server) | \(.rps // "-") | \(.p50 // "-") | \(.p99 // "-") | \(.errors // "-")\(if (.errors // 0) > 0 then " \(.error_kinds | del(.total) | tostring)" else "" end) | \(.cpu // "-" | if type == "number" then (. * 10 | round / 10) else . end) | \(.deps // "-" | if type == "number" then (. * 10 | round / 10) else . end) | \(.load // "-") | \(.rss_mib) | \(if .queued == null then "-" else "\(.answered) / \(.queued)" end) |"' "$WORK/runs.jsonl"

cat <<'EOF'

Ratios wxgate / python per round (min–max over the rounds): req/s (higher is wxgate faster),
and python / wxgate for server CPU per request (how many times the gateway's CPU the Python
server spends; "+deps" adds Redis and RabbitMQ to the gateway's side) and p99.

| mode | against | req/s ratio per round | range | CPU ratio per round | range | CPU ratio +deps range | p99 ratio (python/wxgate) range |
|---|---|---|---|---|---|---|---|
EOF
jq -rs '
  def r2: if . == null then null else . * 100 | round / 100 end;
  def range_of: map(select(. != null)) | if length == 0 then "-" else "\(min | r2)–\(max | r2)" end;
  def ratio(a; b): if (a // 0) > 0 and (b // 0) > 0 then a / b else null end;
  . as $runs
  | [$runs[] | select(.server != "wxgate")] | map({mode, server}) | unique_by([.mode, .server])
  | sort_by([(if .mode == "plain" then 0 else 1 end), .server])[]
  | . as $key
  | [$runs[] | select(.mode == $key.mode and .server == $key.server)] as $python
  | [$python[] | . as $p | ($runs[] | select(.server == "wxgate" and .mode == $p.mode and .round == $p.round)) as $w
      | {rps: ratio($w.rps; $p.rps), cpu: ratio($p.cpu; $w.cpu), deps: ratio($p.cpu; (($w.cpu // 0) + ($w.deps // 0))), p99: ratio($p.p99; $w.p99)}] as $pairs
  | "| \($key.mode) | \($key.server) | \([$pairs[].rps | r2 // "-"] | map(tostring) | join(", ")) | \([$pairs[].rps] | range_of) | \([$pairs[].cpu | r2 // "-"] | map(tostring) | join(", ")) | \([$pairs[].cpu] | range_of) | \([$pairs[].deps] | range_of) | \([$pairs[].p99] | range_of) |"
' "$WORK/runs.jsonl"
echo
if grep -qE 'ERROR|panicked|Traceback' "$WORK/server.log"; then
    log "a server logged errors; last lines:"
    grep -E 'ERROR|panicked|Traceback' "$WORK/server.log" | tail -n 5 >&2
fi
if jq -e 'select((.errors // 1) > 0)' "$WORK/runs.jsonl" >/dev/null; then
    log "some runs had errors (see the table)"
    exit 1
fi

#!/usr/bin/env bash
# The cluster test bed on one machine: a three-node RabbitMQ cluster, a six-node Redis
# Cluster, or a Redis Sentinel set (one master, one replica, three sentinels), each started
# on free ports of its own, with the faults the tests need.
#
#   scripts/testbed.sh up            KIND DIR        # start; prints KEY=value lines
#   scripts/testbed.sh status        KIND DIR        # the same lines, plus what runs now
#   scripts/testbed.sh down          KIND DIR        # stop everything it started, remove DIR
#   scripts/testbed.sh stop-node     KIND DIR NODE   # graceful stop of one node
#   scripts/testbed.sh start-node    KIND DIR NODE   # start it again, same data, rejoined
#   scripts/testbed.sh kill-node     KIND DIR NODE   # SIGKILL one node
#   scripts/testbed.sh kill-master   KIND DIR [PORT] # SIGKILL a Redis master
#   scripts/testbed.sh wait-failover KIND DIR        # until a replica has taken over
#   scripts/testbed.sh queue-leader  rabbit DIR QUEUE [VHOST]  # a quorum queue's leader
#
# KIND is `rabbit`, `redis-cluster` or `sentinel`. DIR holds the nodes' data, logs, pid files
# and the bed's state; it must not exist yet (or be empty) for `up`, and `down` removes it.
# NODE is a RabbitMQ node's index (0, 1, 2, in the order of AMQP_URLS) or a Redis node's port
# (a Redis Cluster node, or the sentinel set's master or replica). `kill-master` on a Redis
# Cluster kills the master serving PORT's slots when PORT is a master, else the first master
# holding slots; on a sentinel set it kills the current master (PORT is then not accepted).
# `start-node` returns once the node is back: a RabbitMQ node in the cluster, a Redis Cluster
# node at cluster_state:ok (a former master as a replica, in sync), a former sentinel master
# as a replica of the new one (the sentinels take about ten seconds to reconfigure it).
#
# Output. Only KEY=value lines go to stdout; progress and errors go to stderr. `up` and
# `status` print what a config needs:
#   rabbit:        AMQP_URLS=amqp://guest:guest@127.0.0.1:P1/%2f,…  RABBIT_NODES=n0@localhost,…
#                  RABBIT_PORTS=P1,P2,P3
#   redis-cluster: REDIS_CLUSTER_URLS=redis://127.0.0.1:P1,…  REDIS_CLUSTER_PORTS=P1,…,P6
#   sentinel:      SENTINEL_URLS=redis://127.0.0.1:S1,…  SENTINEL_MASTER=wxgate
#                  SENTINEL_PORTS=S1,S2,S3  REDIS_PORTS=M,R (the master first, at `up`)
# `status` adds RUNNING=… (node indexes or ports running now), PIDS=… (the processes of the
# bed that are alive) and, on Redis, MASTER_PORTS=… (the masters now: those holding slots,
# or the sentinels' master). `kill-master` prints KILLED_PORT=P; `wait-failover` prints
# MASTER_PORTS=… after the takeover; `queue-leader` prints LEADER=I (the node's index) and
# LEADER_NODE=name, as the first running node's `list_queues` sees them (VHOST: `/`).
#
# Ports are picked at random in 20000-31999 among those nobody listens on, and reserved in
# ${TMPDIR:-/tmp}/wxgate-testbed-ports (one directory per port naming its DIR), so several
# beds (two CI clones, parallel tests) can run at once. The machine's shared Redis (6379) and
# RabbitMQ (5672, node rabbit@…, distribution port 25672) are never used or touched. Erlang's
# port mapper (epmd, port 4369) is the machine's: the first node starts it when none runs, and
# `down` leaves it running, as other Erlang nodes may use it.
#
# Every wait has a deadline and fails naming what it waited for; a failed `up` shows the tail
# of the nodes' logs and removes what it started. Needs redis-server and redis-cli (7.0 or
# later) for the Redis kinds, the rabbitmq-server package for `rabbit`; as root the RabbitMQ
# nodes run as the `rabbitmq` user (Debian's wrapper), so DIR is made world-writable.
set -euo pipefail

# Deadlines, in seconds.
readonly BOOT_S=${TESTBED_BOOT_S:-90}          # a node starts and answers
readonly JOIN_S=${TESTBED_JOIN_S:-60}          # nodes form a cluster / a set
readonly STOP_S=${TESTBED_STOP_S:-60}          # a node stops
readonly FAILOVER_S=${TESTBED_FAILOVER_S:-60}  # a replica takes over
readonly CTL_S=20                              # one rabbitmqctl / redis-cli call

readonly SENTINEL_MASTER=wxgate
readonly PORT_REGISTRY="${TMPDIR:-/tmp}/wxgate-testbed-ports"

log() { echo "testbed: $*" >&2; }
LAST_ERROR=""
die() {
  LAST_ERROR=$*
  echo "testbed: error: $*" >&2
  exit 1
}

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
  exit 2
}

# ---------------------------------------------------------------------------------------
# Small helpers.

now_ms() { date +%s%3N; }

# wait_for SECONDS WHAT CMD... — runs CMD until it succeeds, at most SECONDS; dies naming WHAT
# and the last output of CMD otherwise.
wait_for() {
  local seconds=$1 what=$2
  shift 2
  local deadline=$(( $(now_ms) + seconds * 1000 )) out
  while true; do
    if out=$("$@" 2>&1); then
      return 0
    fi
    if (( $(now_ms) >= deadline )); then
      die "$what: not reached within ${seconds}s; last check said: ${out:-(nothing)}"
    fi
    sleep 0.2
  done
}

# join_by SEP ITEMS... — ITEMS joined by SEP.
join_by() {
  local sep=$1 out="" item
  shift
  for item in "$@"; do out+="${out:+$sep}$item"; done
  printf '%s' "$out"
}

# alive PID — the process exists and is not a zombie (PID 1 may not reap daemons here).
alive() {
  local pid=$1 state
  [[ -n $pid && -r /proc/$pid/stat ]] || return 1
  state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ -n $state && $state != Z ]]
}

# listening PORT — something accepts TCP connections on 127.0.0.1:PORT (or any address, where
# `ss` is installed).
listening() {
  if command -v ss >/dev/null; then
    [[ -n $(ss -Htln "sport = :$1" 2>/dev/null) ]]
  else
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
  fi
}

# reserve_port — prints a free port and reserves it for DIR (released by `down`).
reserve_port() {
  mkdir -p "$PORT_REGISTRY"
  chmod 1777 "$PORT_REGISTRY" 2>/dev/null || true
  local port owner i
  for (( i = 0; i < 2000; i++ )); do
    port=$(( 20000 + RANDOM % 12000 ))
    (( port == 25672 )) && continue
    listening "$port" && continue
    if ! mkdir "$PORT_REGISTRY/$port" 2>/dev/null; then
      # A reservation whose bed is gone (its DIR removed without `down`) is stale.
      owner=$(cat "$PORT_REGISTRY/$port/owner" 2>/dev/null || true)
      [[ -n $owner && ! -d $owner ]] || continue
      rm -rf "$PORT_REGISTRY/$port"
      mkdir "$PORT_REGISTRY/$port" 2>/dev/null || continue
    fi
    echo "$DIR" >"$PORT_REGISTRY/$port/owner"
    echo "$port" >>"$DIR/ports"
    echo "$port"
    return 0
  done
  die "no free port in 20000-31999"
}

release_ports() {
  local port owner
  [[ -f $DIR/ports ]] || return 0
  while read -r port; do
    owner=$(cat "$PORT_REGISTRY/$port/owner" 2>/dev/null || true)
    if [[ $owner == "$DIR" ]]; then rm -rf "${PORT_REGISTRY:?}/$port"; fi
  done <"$DIR/ports"
}

# state KEY — a value recorded by `up` in DIR/state.
state() {
  local line
  line=$(grep -m1 "^$1=" "$DIR/state") || die "$DIR/state has no $1 (is the bed up?)"
  printf '%s' "${line#*=}"
}

check_up() {
  [[ -f $DIR/state ]] || die "no $KIND test bed in $DIR (no $DIR/state)"
  local kind
  kind=$(state KIND)
  [[ $kind == "$KIND" ]] || die "$DIR holds a $kind test bed, not $KIND"
}

# On a failed `up`: show the logs' tails, then remove what was started.
on_failed_up() {
  local rc=$?
  trap - EXIT
  if (( rc != 0 )); then
    local f
    for f in "$DIR"/*/*.log "$DIR"/*/log/*.log; do
      [[ -f $f ]] || continue
      echo "testbed: ---- tail of $f" >&2
      tail -n 15 "$f" >&2 || true
    done
    down_any || true
    log "up failed${LAST_ERROR:+: $LAST_ERROR}; removed what it had started"
  fi
  exit "$rc"
}

# ---------------------------------------------------------------------------------------
# Redis (both kinds).

rcli() { timeout "$CTL_S" redis-cli -h 127.0.0.1 -p "$@" </dev/null; }

redis_dir() { echo "$DIR/redis-$1"; }

redis_pid() { cat "$(redis_dir "$1")/redis.pid" 2>/dev/null || true; }

redis_ping() { [[ $(rcli "$1" ping 2>&1) == PONG ]]; }

# redis_field PORT SECTION FIELD — one field of INFO (or CLUSTER INFO when SECTION is cluster).
redis_field() {
  local port=$1 section=$2 field=$3
  if [[ $section == cluster ]]; then
    rcli "$port" cluster info
  else
    rcli "$port" info "$section"
  fi | tr -d '\r' | awk -F: -v f="$field" '$1 == f { print $2 }'
}

# write_redis_conf PORT EXTRA... — a config file for a node on PORT; EXTRA are more lines.
write_redis_conf() {
  local port=$1 dir
  shift
  dir=$(redis_dir "$port")
  mkdir -p "$dir"
  {
    echo "port $port"
    echo "bind 127.0.0.1"
    echo "daemonize yes"
    echo "pidfile $dir/redis.pid"
    echo "logfile $dir/redis.log"
    echo "dir $dir"
    echo "appendonly yes"
    echo "save \"\""
    # A replica's first sync starts at once, not after the default 5 s wait for others.
    echo "repl-diskless-sync-delay 0"
    local line
    for line in "$@"; do echo "$line"; done
  } >"$dir/redis.conf"
}

start_redis() {
  local port=$1
  local dir
  dir=$(redis_dir "$port")
  [[ -f $dir/redis.conf ]] || die "no Redis node on port $port in this bed"
  if alive "$(redis_pid "$port")"; then
    die "the Redis node on port $port is already running"
  fi
  rm -f "$dir/redis.pid"
  if [[ -f $dir/sentinel ]]; then
    redis-server "$dir/redis.conf" --sentinel </dev/null >&2
  else
    redis-server "$dir/redis.conf" </dev/null >&2
  fi
}

# stop_redis PORT SIGNAL — stops the node and waits until its process is gone.
stop_redis() {
  local port=$1 signal=$2 pid
  pid=$(redis_pid "$port")
  alive "$pid" || return 0
  kill "-$signal" "$pid" 2>/dev/null || true
  if ! wait_gone "$pid" "$STOP_S"; then
    log "the Redis node on port $port did not stop on SIG$signal within ${STOP_S}s; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" 10 || die "the Redis node on port $port (pid $pid) survives SIGKILL"
  fi
}

wait_gone() {
  local pid=$1 seconds=$2
  local deadline=$(( $(now_ms) + seconds * 1000 ))
  while alive "$pid"; do
    (( $(now_ms) < deadline )) || return 1
    sleep 0.1
  done
}

list_of() { tr ',' ' ' <<<"$(state "$1")"; }

# ---------------------------------------------------------------------------------------
# Redis Cluster.

cluster_up() {
  local ports=() port bus i
  for (( i = 0; i < 6; i++ )); do
    port=$(reserve_port)
    bus=$(reserve_port)
    write_redis_conf "$port" \
      "cluster-enabled yes" \
      "cluster-config-file nodes.conf" \
      "cluster-node-timeout 1000" \
      "cluster-port $bus" \
      "cluster-announce-ip 127.0.0.1" \
      "appendfsync everysec"
    ports+=("$port")
  done
  {
    echo "KIND=redis-cluster"
    echo "REDIS_CLUSTER_PORTS=$(join_by , "${ports[@]}")"
  } >"$DIR/state"
  for port in "${ports[@]}"; do start_redis "$port"; done
  for port in "${ports[@]}"; do
    wait_for "$BOOT_S" "the Redis Cluster node on port $port answers PING" redis_ping "$port"
  done
  local addrs=()
  for port in "${ports[@]}"; do addrs+=("127.0.0.1:$port"); done
  log "creating the Redis Cluster on ports ${ports[*]}"
  timeout "$JOIN_S" redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 \
    --cluster-yes </dev/null >&2 || die "redis-cli --cluster create failed"
  cluster_wait_settled "$JOIN_S"
}

# cluster_settled — every running node says cluster_state:ok, knows all six nodes and sees
# all 16384 slots served; every master holding slots answers; every replica's link is up.
cluster_settled() {
  local port running=() masters
  for port in $(list_of REDIS_CLUSTER_PORTS); do
    alive "$(redis_pid "$port")" && running+=("$port")
  done
  (( ${#running[@]} > 0 )) || { echo "no node runs"; return 1; }
  for port in "${running[@]}"; do
    local info
    info=$(rcli "$port" cluster info 2>&1 | tr -d '\r') || { echo "$port: $info"; return 1; }
    grep -q '^cluster_state:ok$' <<<"$info" || { echo "$port: not cluster_state:ok"; return 1; }
    grep -q '^cluster_slots_ok:16384$' <<<"$info" \
      || { echo "$port: $(grep '^cluster_slots_' <<<"$info" | tr '\n' ' ')"; return 1; }
    grep -q '^cluster_known_nodes:6$' <<<"$info" || { echo "$port: not 6 known nodes"; return 1; }
    if [[ $(redis_field "$port" replication role) == slave ]]; then
      [[ $(redis_field "$port" replication master_link_status) == up ]] \
        || { echo "$port: replica link not up"; return 1; }
    fi
  done
  masters=$(cluster_masters "${running[0]}") || { echo "${running[0]}: $masters"; return 1; }
  for port in $masters; do
    redis_ping "$port" || { echo "master $port (holding slots) does not answer"; return 1; }
  done
}

# cluster_node_back PORT — the node says cluster_state:ok and, as a replica, is in sync.
cluster_node_back() {
  [[ $(redis_field "$1" cluster cluster_state) == ok ]] || { echo "not cluster_state:ok"; return 1; }
  if [[ $(redis_field "$1" replication role) == slave ]]; then
    replica_linked "$1"
  fi
}

cluster_wait_settled() {
  wait_for "$1" "the Redis Cluster settles (cluster_state:ok, all slots served by live masters)" \
    cluster_settled
}

# cluster_masters PORT — the ports of the masters holding slots, as node PORT sees them.
cluster_masters() {
  local nodes
  nodes=$(rcli "$1" cluster nodes 2>&1 | tr -d '\r') || { echo "$nodes"; return 1; }
  # Fields: id addr flags master ping pong epoch link slot…; addr is ip:port@bus.
  awk '$3 ~ /master/ && $3 !~ /fail/ && NF >= 9 { split($2, a, "[:@]"); print a[2] }' \
    <<<"$nodes" | sort -n | tr '\n' ' '
}

cluster_any_running() {
  local port
  for port in $(list_of REDIS_CLUSTER_PORTS); do
    if alive "$(redis_pid "$port")" && redis_ping "$port"; then
      echo "$port"
      return 0
    fi
  done
  return 1
}

cluster_kill_master() {
  local wanted=${1:-} from masters victim=""
  from=$(cluster_any_running) || die "no Redis Cluster node runs"
  masters=$(cluster_masters "$from") || die "CLUSTER NODES on $from failed: $masters"
  if [[ -n $wanted ]]; then
    [[ " $masters " == *" $wanted "* ]] || die "port $wanted is not a master holding slots (masters: $masters)"
    victim=$wanted
  else
    victim=${masters%% *}
  fi
  [[ -n $victim ]] || die "no master holding slots"
  stop_redis "$victim" KILL
  echo "$victim" >"$DIR/killed"
  echo "KILLED_PORT=$victim"
}

cluster_wait_failover() {
  local killed
  killed=$(cat "$DIR/killed" 2>/dev/null) || die "no kill-master to wait for in $DIR"
  # Right after the SIGKILL the others still count the dead master's slots as served (it is
  # only suspected); cluster_settled also requires every master holding slots to answer.
  cluster_wait_settled "$FAILOVER_S"
  rm -f "$DIR/killed"
  local from
  from=$(cluster_any_running) || die "no Redis Cluster node runs"
  echo "MASTER_PORTS=$(cluster_masters "$from" | xargs | tr ' ' ',')"
  log "the slots of $killed are served by a new master"
}

# ---------------------------------------------------------------------------------------
# Sentinel set.

sentinel_up() {
  local master replica sentinels=() s i
  master=$(reserve_port)
  replica=$(reserve_port)
  write_redis_conf "$master" "appendfsync everysec"
  write_redis_conf "$replica" "appendfsync everysec" "replicaof 127.0.0.1 $master"
  for (( i = 0; i < 3; i++ )); do
    s=$(reserve_port)
    local dir
    dir=$(redis_dir "$s")
    mkdir -p "$dir"
    : >"$dir/sentinel"
    {
      echo "port $s"
      echo "bind 127.0.0.1"
      echo "daemonize yes"
      echo "pidfile $dir/redis.pid"
      echo "logfile $dir/redis.log"
      echo "dir $dir"
      echo "sentinel announce-ip 127.0.0.1"
      echo "sentinel monitor $SENTINEL_MASTER 127.0.0.1 $master 2"
      echo "sentinel down-after-milliseconds $SENTINEL_MASTER 1000"
      echo "sentinel failover-timeout $SENTINEL_MASTER 5000"
      echo "sentinel parallel-syncs $SENTINEL_MASTER 1"
    } >"$dir/redis.conf"
    sentinels+=("$s")
  done
  {
    echo "KIND=sentinel"
    echo "REDIS_PORTS=$master,$replica"
    echo "SENTINEL_PORTS=$(join_by , "${sentinels[@]}")"
  } >"$DIR/state"
  start_redis "$master"
  start_redis "$replica"
  for s in "$master" "$replica"; do
    wait_for "$BOOT_S" "the Redis node on port $s answers PING" redis_ping "$s"
  done
  wait_for "$JOIN_S" "the replica on port $replica has synced with the master on $master" \
    replica_linked "$replica"
  for s in "${sentinels[@]}"; do start_redis "$s"; done
  for s in "${sentinels[@]}"; do
    wait_for "$BOOT_S" "the sentinel on port $s answers PING" redis_ping "$s"
  done
  for s in "${sentinels[@]}"; do
    wait_for "$JOIN_S" "the sentinel on port $s knows the master, the replica and 2 other sentinels" \
      sentinel_knows_all "$s" "$master"
  done
}

replica_linked() {
  [[ $(redis_field "$1" replication role) == slave ]] || { echo "$1 is not a replica"; return 1; }
  [[ $(redis_field "$1" replication master_link_status) == up ]] || { echo "$1: link not up"; return 1; }
}

# sentinel_field SENTINEL FIELD — one field of SENTINEL MASTER wxgate.
sentinel_field() {
  rcli "$1" sentinel master "$SENTINEL_MASTER" 2>/dev/null | tr -d '\r' \
    | awk -v f="$2" 'NR % 2 == 1 && $0 == f { getline; print; exit }'
}

sentinel_master_port() {
  rcli "$1" sentinel get-master-addr-by-name "$SENTINEL_MASTER" 2>/dev/null | tr -d '\r' | sed -n 2p
}

# sentinel_knows_all SENTINEL MASTER_PORT
sentinel_knows_all() {
  local s=$1 want=$2 got
  got=$(sentinel_master_port "$s")
  [[ $got == "$want" ]] || { echo "master is '$got', not $want"; return 1; }
  [[ $(sentinel_field "$s" flags) == master ]] || { echo "flags $(sentinel_field "$s" flags)"; return 1; }
  [[ $(sentinel_field "$s" num-slaves) -ge 1 ]] || { echo "no replica known"; return 1; }
  [[ $(sentinel_field "$s" num-other-sentinels) -ge 2 ]] \
    || { echo "$(sentinel_field "$s" num-other-sentinels) other sentinels known"; return 1; }
}

sentinel_current_master() {
  local s
  for s in $(list_of SENTINEL_PORTS); do
    if alive "$(redis_pid "$s")"; then
      sentinel_master_port "$s"
      return 0
    fi
  done
  return 1
}

sentinel_kill_master() {
  [[ -z ${1:-} ]] || die "kill-master on a sentinel set kills the current master; it takes no port"
  local master
  master=$(sentinel_current_master) || die "no sentinel runs"
  [[ -n $master ]] || die "the sentinels name no master"
  stop_redis "$master" KILL
  echo "$master" >"$DIR/killed"
  echo "KILLED_PORT=$master"
}

# sentinel_new_master OLD — every running sentinel names the same master, not OLD, and that
# node says it is a master.
sentinel_new_master() {
  local old=$1 s got="" m
  for s in $(list_of SENTINEL_PORTS); do
    alive "$(redis_pid "$s")" || continue
    m=$(sentinel_master_port "$s")
    [[ -n $m && $m != "$old" ]] || { echo "sentinel $s still names ${m:-nothing}"; return 1; }
    [[ -z $got || $got == "$m" ]] || { echo "sentinels disagree: $got and $m"; return 1; }
    got=$m
  done
  [[ -n $got ]] || { echo "no sentinel runs"; return 1; }
  [[ $(redis_field "$got" replication role) == master ]] || { echo "$got is not a master yet"; return 1; }
}

sentinel_wait_failover() {
  local killed master
  killed=$(cat "$DIR/killed" 2>/dev/null) || die "no kill-master to wait for in $DIR"
  wait_for "$FAILOVER_S" "the sentinels name a new master in place of port $killed" \
    sentinel_new_master "$killed"
  rm -f "$DIR/killed"
  master=$(sentinel_current_master)
  echo "MASTER_PORTS=$master"
  log "the sentinels promoted the node on port $master"
}

# ---------------------------------------------------------------------------------------
# RabbitMQ cluster.

rabbit_dir() { echo "$DIR/rabbit-$1"; }

rabbit_node() { tr ',' '\n' <<<"$(state RABBIT_NODES)" | sed -n "$(( $1 + 1 ))p"; }

rabbit_port() { tr ',' '\n' <<<"$(state RABBIT_PORTS)" | sed -n "$(( $1 + 1 ))p"; }

rabbit_pid() { cat "$(rabbit_dir "$1")/pid" 2>/dev/null || true; }

rctl() { timeout "$CTL_S" rabbitmqctl -q -n "$@" </dev/null; }

check_rabbit_index() {
  [[ $1 =~ ^[0-2]$ ]] || die "a RabbitMQ node is named by its index 0, 1 or 2, not '$1'"
}

start_rabbit() {
  local i=$1 dir node port dist
  dir=$(rabbit_dir "$i")
  node=$(rabbit_node "$i")
  port=$(rabbit_port "$i")
  dist=$(cat "$dir/dist_port")
  if alive "$(rabbit_pid "$i")"; then
    die "RabbitMQ node $i ($node) is already running"
  fi
  rm -f "$dir/pid"
  RABBITMQ_NODENAME=$node \
  RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
  RABBITMQ_NODE_PORT=$port \
  RABBITMQ_DIST_PORT=$dist \
  RABBITMQ_MNESIA_BASE=$dir/mnesia \
  RABBITMQ_LOG_BASE=$dir/log \
  RABBITMQ_CONFIG_FILE=$dir/rabbitmq.conf \
  RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins \
  RABBITMQ_PID_FILE=$dir/pid \
    timeout "$BOOT_S" rabbitmq-server -detached </dev/null >/dev/null 2>&1 \
    || die "rabbitmq-server -detached failed for node $i ($node)"
}

rabbit_booted() {
  local i=$1 node
  node=$(rabbit_node "$i")
  # await_startup fails at once while the node has not registered with epmd yet.
  rctl "$node" await_startup --timeout "$CTL_S" >/dev/null 2>&1 \
    || { echo "$node has not booted"; return 1; }
  listening "$(rabbit_port "$i")" || { echo "$node does not listen on AMQP yet"; return 1; }
}

# rabbit_running_count I — how many running nodes node I's cluster_status lists.
rabbit_running_count() {
  rctl "$(rabbit_node "$1")" cluster_status --formatter json 2>/dev/null \
    | grep -o '"running_nodes":\[[^]]*\]' | grep -o '@localhost' | wc -l
}

rabbit_cluster_of() {
  local i=$1 want=$2 got
  got=$(rabbit_running_count "$i") || got=0
  [[ $got == "$want" ]] || { echo "$(rabbit_node "$i") sees $got running nodes, not $want"; return 1; }
}

rabbit_up() {
  local ports=() nodes=() i port dist dir
  for (( i = 0; i < 3; i++ )); do
    port=$(reserve_port)
    dist=$(reserve_port)
    ports+=("$port")
    dir=$(rabbit_dir "$i")
    mkdir -p "$dir/mnesia" "$dir/log"
    echo "$dist" >"$dir/dist_port"
    # An empty config file replaces the system one, which names the shared listener.
    : >"$dir/rabbitmq.conf"
    echo "[]." >"$dir/enabled_plugins"
  done
  # The first AMQP port makes the node names unique on this machine's epmd.
  for (( i = 0; i < 3; i++ )); do nodes+=("wxgatetb${ports[0]}n$i@localhost"); done
  {
    echo "KIND=rabbit"
    echo "RABBIT_NODES=$(join_by , "${nodes[@]}")"
    echo "RABBIT_PORTS=$(join_by , "${ports[@]}")"
  } >"$DIR/state"
  # As root, Debian's wrapper runs the nodes as the `rabbitmq` user.
  chmod -R a+rwX "$DIR"
  for (( i = 0; i < 3; i++ )); do start_rabbit "$i"; done
  for (( i = 0; i < 3; i++ )); do
    wait_for "$BOOT_S" "RabbitMQ node $i (${nodes[$i]}) boots" rabbit_booted "$i"
  done
  log "three RabbitMQ nodes booted after $(( $(now_ms) - STARTED_MS )) ms"
  # Joins one at a time (each changes the cluster's membership), then both apps start
  # together, as after a restart of two members: that saves one boot.
  for (( i = 1; i < 3; i++ )); do
    log "joining ${nodes[$i]} to ${nodes[0]}"
    rctl "${nodes[$i]}" stop_app >&2 || die "stop_app on ${nodes[$i]} failed"
    rctl "${nodes[$i]}" join_cluster "${nodes[0]}" >&2 \
      || die "join_cluster ${nodes[0]} on ${nodes[$i]} failed"
  done
  local starts=()
  for (( i = 1; i < 3; i++ )); do
    timeout "$BOOT_S" rabbitmqctl -q -n "${nodes[$i]}" start_app </dev/null >&2 &
    starts+=($!)
  done
  for (( i = 1; i < 3; i++ )); do
    wait "${starts[$i - 1]}" || die "start_app on ${nodes[$i]} failed"
  done
  wait_for "$JOIN_S" "the RabbitMQ cluster_status shows 3 running nodes" rabbit_cluster_of 0 3
  for (( i = 1; i < 3; i++ )); do
    wait_for "$BOOT_S" "RabbitMQ node $i (${nodes[$i]}) boots" rabbit_booted "$i"
  done
}

stop_rabbit() {
  local i=$1 node pid
  node=$(rabbit_node "$i")
  pid=$(rabbit_pid "$i")
  alive "$pid" || return 0
  # `stop PIDFILE` returns once the node's process has exited.
  timeout "$STOP_S" rabbitmqctl -q -n "$node" stop "$(rabbit_dir "$i")/pid" </dev/null >/dev/null 2>&1 \
    || true
  if ! wait_gone "$pid" 5; then
    log "RabbitMQ node $i ($node) did not stop within ${STOP_S}s; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" 10 || die "RabbitMQ node $i (pid $pid) survives SIGKILL"
  fi
}

# ---------------------------------------------------------------------------------------
# Commands.

# The bed's processes: "NAME PID" lines for the nodes that have a pid file.
bed_pids() {
  local i port
  case $KIND in
    rabbit)
      for i in 0 1 2; do echo "$i $(rabbit_pid "$i")"; done ;;
    redis-cluster)
      for port in $(list_of REDIS_CLUSTER_PORTS); do echo "$port $(redis_pid "$port")"; done ;;
    sentinel)
      for port in $(list_of REDIS_PORTS) $(list_of SENTINEL_PORTS); do
        echo "$port $(redis_pid "$port")"
      done ;;
  esac
}

print_config() {
  local ports urls=() p
  case $KIND in
    rabbit)
      for p in $(list_of RABBIT_PORTS); do urls+=("amqp://guest:guest@127.0.0.1:$p/%2f"); done
      echo "AMQP_URLS=$(join_by , "${urls[@]}")"
      echo "RABBIT_NODES=$(state RABBIT_NODES)"
      echo "RABBIT_PORTS=$(state RABBIT_PORTS)" ;;
    redis-cluster)
      for p in $(list_of REDIS_CLUSTER_PORTS); do urls+=("redis://127.0.0.1:$p"); done
      echo "REDIS_CLUSTER_URLS=$(join_by , "${urls[@]}")"
      echo "REDIS_CLUSTER_PORTS=$(state REDIS_CLUSTER_PORTS)" ;;
    sentinel)
      for p in $(list_of SENTINEL_PORTS); do urls+=("redis://127.0.0.1:$p"); done
      echo "SENTINEL_URLS=$(join_by , "${urls[@]}")"
      echo "SENTINEL_MASTER=$SENTINEL_MASTER"
      echo "SENTINEL_PORTS=$(state SENTINEL_PORTS)"
      echo "REDIS_PORTS=$(state REDIS_PORTS)" ;;
  esac
}

cmd_up() {
  case $KIND in rabbit | redis-cluster | sentinel) ;; *) usage ;; esac
  if [[ -e $DIR ]] && [[ -n $(ls -A "$DIR") ]]; then
    die "$DIR exists and is not empty (another bed? run down first)"
  fi
  mkdir -p "$DIR"
  DIR=$(cd "$DIR" && pwd)
  trap on_failed_up EXIT
  STARTED_MS=$(now_ms)
  case $KIND in
    rabbit) rabbit_up ;;
    redis-cluster) cluster_up ;;
    sentinel) sentinel_up ;;
  esac
  trap - EXIT
  log "$KIND is up in $(( $(now_ms) - STARTED_MS )) ms"
  print_config
}

cmd_status() {
  check_up
  print_config
  local running=() pids=() name pid masters=""
  while read -r -u 3 name pid; do
    if alive "$pid"; then
      running+=("$name")
      pids+=("$pid")
    fi
  done 3< <(bed_pids)
  echo "RUNNING=$(join_by , "${running[@]}")"
  echo "PIDS=$(join_by , "${pids[@]}")"
  case $KIND in
    redis-cluster)
      local from
      if from=$(cluster_any_running); then masters=$(cluster_masters "$from" | xargs | tr ' ' ','); fi
      echo "MASTER_PORTS=$masters" ;;
    sentinel)
      masters=$(sentinel_current_master || true)
      echo "MASTER_PORTS=$masters" ;;
  esac
}

# down_any — stops whatever DIR's pid files name, releases the ports, removes DIR; fails
# (after all that) when a node would not stop.
down_any() {
  local name pid failed=0
  if [[ -f $DIR/state ]]; then
    KIND=$(state KIND)
    # In parallel: a RabbitMQ node takes seconds to stop.
    local stops=()
    while read -r -u 3 name pid; do
      alive "$pid" || continue
      case $KIND in
        rabbit) stop_rabbit "$name" & ;;
        *) stop_redis "$name" TERM & ;;
      esac
      stops+=($!)
    done 3< <(bed_pids)
    local stop
    for stop in "${stops[@]}"; do wait "$stop" || failed=1; done
    if [[ $KIND == rabbit ]]; then
      # A node killed with its `up` before it wrote its pid file is found by name.
      local i node
      for i in 0 1 2; do
        node=$(rabbit_node "$i")
        if [[ -n $node ]] && epmd -names 2>/dev/null | grep -q "^name ${node%@*} "; then
          rctl "$node" stop >/dev/null 2>&1 || failed=1
        fi
      done
    fi
  fi
  release_ports
  rm -rf "${DIR:?}"
  (( failed == 0 ))
}

cmd_down() {
  [[ -e $DIR ]] || { log "$DIR does not exist: nothing to stop"; return 0; }
  DIR=$(cd "$DIR" && pwd)
  if [[ -f $DIR/state ]]; then check_up; fi
  down_any || die "some nodes of $DIR did not stop; their processes may be left (see above)"
  log "$KIND in $DIR is down"
}

cmd_stop_node() {
  check_up
  local node=${1:?stop-node needs a node (a RabbitMQ index or a Redis port)}
  case $KIND in
    rabbit) check_rabbit_index "$node"; stop_rabbit "$node" ;;
    *) [[ -f $(redis_dir "$node")/redis.conf ]] || die "no Redis node on port $node in this bed"
       stop_redis "$node" TERM ;;
  esac
  log "$KIND node $node stopped"
}

cmd_start_node() {
  check_up
  local node=${1:?start-node needs a node (a RabbitMQ index or a Redis port)}
  case $KIND in
    rabbit)
      check_rabbit_index "$node"
      start_rabbit "$node"
      wait_for "$BOOT_S" "RabbitMQ node $node boots" rabbit_booted "$node"
      local i running=0
      for i in 0 1 2; do alive "$(rabbit_pid "$i")" && running=$(( running + 1 )); done
      wait_for "$JOIN_S" "node $node is back in the cluster" \
        rabbit_cluster_of "$node" "$running" ;;
    *)
      start_redis "$node"
      wait_for "$BOOT_S" "the Redis node on port $node answers PING" redis_ping "$node"
      case $KIND in
        redis-cluster)
          wait_for "$JOIN_S" "the Redis Cluster node on port $node is back in the cluster" \
            cluster_node_back "$node" ;;
        sentinel)
          if [[ ! -f $(redis_dir "$node")/sentinel ]]; then
            local master
            master=$(sentinel_current_master || true)
            if [[ -n $master && $master != "$node" ]]; then
              # A former master comes back as a master on its own data until the sentinels
              # reconfigure it (about ten seconds).
              wait_for "$FAILOVER_S" "the sentinels make the node on port $node a replica of $master" \
                replica_linked "$node"
            fi
          fi ;;
      esac ;;
  esac
  log "$KIND node $node started"
}

cmd_kill_node() {
  check_up
  local node=${1:?kill-node needs a node (a RabbitMQ index or a Redis port)} pid
  case $KIND in
    rabbit) check_rabbit_index "$node"; pid=$(rabbit_pid "$node") ;;
    *) [[ -f $(redis_dir "$node")/redis.conf ]] || die "no Redis node on port $node in this bed"
       pid=$(redis_pid "$node") ;;
  esac
  alive "$pid" || die "$KIND node $node is not running"
  kill -KILL "$pid"
  wait_gone "$pid" 10 || die "$KIND node $node (pid $pid) survives SIGKILL"
  log "$KIND node $node killed"
}

cmd_queue_leader() {
  check_up
  [[ $KIND == rabbit ]] || die "queue-leader is for rabbit"
  local queue=${1:?queue-leader needs a queue name} vhost=${2:-/} i leader=""
  for i in 0 1 2; do
    alive "$(rabbit_pid "$i")" || continue
    leader=$(rctl "$(rabbit_node "$i")" list_queues -p "$vhost" name leader --no-table-headers \
      2>/dev/null | awk -F '\t' -v q="$queue" '$1 == q { print $2; exit }') || true
    break
  done
  [[ -n $leader ]] || die "no running node names a leader for queue '$queue' in vhost '$vhost'"
  for i in 0 1 2; do
    if [[ $(rabbit_node "$i") == "$leader" ]]; then
      echo "LEADER=$i"
      echo "LEADER_NODE=$leader"
      return 0
    fi
  done
  die "the leader of '$queue' is $leader, not a node of this bed"
}

cmd_kill_master() {
  check_up
  case $KIND in
    redis-cluster) cluster_kill_master "${1:-}" ;;
    sentinel) sentinel_kill_master "${1:-}" ;;
    *) die "kill-master is for redis-cluster and sentinel; stop-node stops a RabbitMQ node" ;;
  esac
}

cmd_wait_failover() {
  check_up
  local started
  started=$(now_ms)
  case $KIND in
    redis-cluster) cluster_wait_failover ;;
    sentinel) sentinel_wait_failover ;;
    *) die "wait-failover is for redis-cluster and sentinel" ;;
  esac
  log "failover seen after $(( $(now_ms) - started )) ms of waiting"
}

(( $# >= 3 )) || usage
COMMAND=$1
KIND=$2
DIR=$3
shift 3
case $KIND in rabbit | redis-cluster | sentinel) ;; *) usage ;; esac

case $COMMAND in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  stop-node) cmd_stop_node "$@" ;;
  start-node) cmd_start_node "$@" ;;
  kill-node) cmd_kill_node "$@" ;;
  kill-master) cmd_kill_master "$@" ;;
  queue-leader) cmd_queue_leader "$@" ;;
  wait-failover) cmd_wait_failover "$@" ;;
  *) usage ;;
esac

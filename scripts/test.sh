#!/usr/bin/env bash
# The test command: makes sure Redis (127.0.0.1:6379) and RabbitMQ (127.0.0.1:5672,
# guest/guest) are running — starting them, and installing Debian's packages when they are
# absent — then runs `cargo test --workspace` with any arguments given.
#
#   scripts/test.sh                 # everything
#   scripts/test.sh -p wxgate       # one crate
#
# The tests use their own random namespaces on these services and remove them afterwards.
# Set WXGATE__REDIS__URL / WXGATE__RABBITMQ__URL to test against services elsewhere (then
# nothing is started here).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "test.sh: $*" >&2; }

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root to run: $*"; return 1; fi
}

install_packages() {
  command -v apt-get >/dev/null || { log "no apt-get: install $* yourself"; exit 1; }
  log "installing $* (Debian packages)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
rabbitmq_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

ensure_redis() {
  redis_up && return
  command -v redis-server >/dev/null || install_packages redis-server
  redis_up && return # the package's own service may have started it
  log "starting redis on 127.0.0.1:6379"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 100); do redis_up && return; sleep 0.1; done
  log "redis did not start (see /var/log/redis/ci.log)"; exit 1
}

ensure_rabbitmq() {
  rabbitmq_up && return
  command -v rabbitmq-server >/dev/null || install_packages rabbitmq-server
  if ! rabbitmq_up; then
    log "starting rabbitmq on 127.0.0.1:5672"
    rabbitmq-server -detached || true
  fi
  rabbitmqctl await_startup --timeout 120 >/dev/null
  rabbitmq_up || { log "rabbitmq did not start"; exit 1; }
}

[[ -n "${WXGATE__REDIS__URL:-}" ]] || ensure_redis
[[ -n "${WXGATE__RABBITMQ__URL:-}" ]] || ensure_rabbitmq

exec cargo test --workspace "$@"

#!/usr/bin/env bash
# Faults under load, the long form: the scenarios of tests/faults (RabbitMQ and Redis stopped
# and started, Redis, gateway, worker and `wxgate tail` killed with SIGKILL, WeChat slow,
# failing, and answering after the worker's timeout) with minutes-long load and fault windows,
# one scenario at a time, printing the fault table (pushes, 200s, published, sent, dead,
# queued, duplicates, lost) for bench/README.md.
#
# The scenarios start wx-gateway, wx-worker and wxgate as child processes, and their own Redis
# and RabbitMQ node on other ports where one is stopped (the shared 6379/5672 are never
# touched); each cleans up its namespace, processes and data directories, also on failure.
#
# Environment (all optional):
#   CARGO_TARGET_DIR   build directory                      (default $HOME/.cache/wxgate-target)
#   FAULTS_RATE        pushes/s                             (default 100)
#   FAULTS_LOAD_S      least seconds of load per scenario   (default 240)
#   FAULTS_WINDOW_S    seconds of each timed fault window   (default 60)
#   FAULTS_LOG         RUST_LOG of gateway and worker       (default error)
#   FILTER             run only the scenarios whose test name contains this (default all)
#   RELEASE            1: release builds; 0: the dev profile, as the tests build  (default 1)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export FAULTS_RATE=${FAULTS_RATE:-100}
export FAULTS_LOAD_S=${FAULTS_LOAD_S:-240}
export FAULTS_WINDOW_S=${FAULTS_WINDOW_S:-60}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/wxgate-target}

cd "$ROOT"
echo "faults: ${FAULTS_RATE} pushes/s, load >= ${FAULTS_LOAD_S}s, fault windows ${FAULTS_WINDOW_S}s" >&2
# Release builds by default: the load generator, gateway and worker should not be the bottleneck.
PROFILE=()
[ "${RELEASE:-1}" = 1 ] && PROFILE=(--release)
cargo build "${PROFILE[@]}" --quiet -p wx-gateway -p wx-worker -p wxgate --bins
cargo test "${PROFILE[@]}" --quiet -p wxgate-tests --test faults -- --test-threads=1 --nocapture ${FILTER:-} \
    | tee /dev/stderr | grep -E '^\|' | awk '!seen[$0]++'

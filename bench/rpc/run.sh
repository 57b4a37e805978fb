#!/bin/sh
# Interleaved runs: for each test, run 1 then run 2, each over all stacks in turn.
# Usage: ./run.sh [procs|inproc|both]   after `cargo build --release` here.
# Env: STACKS, TESTS, PORT (procs mode: PORT..PORT+3), SERVER_THREADS,
# CLIENT_THREADS, CARGO_TARGET_DIR (where the binary was built), B (the binary).
# Each line: run, mode, stack, test, p50, p99, calls/s, 1-minute load average.
set -e
cd "$(dirname "$0")"
B=${B:-${CARGO_TARGET_DIR:-target}/release/rpcbench}
[ -x "$B" ] || { echo "no $B: run cargo build --release first" >&2; exit 1; }
MODE=${1:-both}
case $MODE in procs|inproc|both) ;; *) echo "usage: $0 [procs|inproc|both]" >&2; exit 2;; esac
STACKS=${STACKS:-"mesh tonic-default tonic-win tonic-adaptive"}
TESTS=${TESTS:-"unary c4 c16 stream big4m fetch16m"}
# The cluster credentials (a throwaway CA), created when absent.
$B certs certs
if [ "$MODE" = procs ] || [ "$MODE" = both ]; then
  # Below Linux's ephemeral range (32768-60999), where other programs' outgoing
  # connections can hold a port and make the bind fail.
  PORT=${PORT:-27300}
  $B server certs $PORT & SERVER=$!
  trap 'kill $SERVER 2>/dev/null' EXIT
  sleep 1; kill -0 $SERVER || { echo "server failed to start" >&2; exit 1; }
  for t in $TESTS; do for run in 1 2; do for s in $STACKS; do
    printf 'run%s\t' $run; $B client certs $PORT $s $t | tr '\n' '\t'; cut -d' ' -f1 /proc/loadavg
  done; done; done
  kill $SERVER; trap - EXIT
fi
if [ "$MODE" = inproc ] || [ "$MODE" = both ]; then
  for t in $TESTS; do for run in 1 2; do for s in $STACKS; do
    printf 'run%s\t' $run; $B inproc certs $s $t | tr '\n' '\t'; cut -d' ' -f1 /proc/loadavg
  done; done; done
fi

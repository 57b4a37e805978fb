#!/usr/bin/env bash
# Sets up the machine, builds nimbus and the examples, and runs the parallel sum on
# the embedded default: one process that spawns children and gathers their results.
# Then runs it again, and an MPI program, on a cluster of a planner and three worker
# processes on loopback.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

scripts/setup.sh
scripts/build-guests.sh
cargo build --release
nimbus=target/release/nimbus
set -x
"$nimbus" run target/guests/hello.wasm
"$nimbus" run --hosts 2 target/guests/parallel-sum.wasm -- 1000 100000000
set +x

echo "--- the same on a cluster: a planner and three worker processes"
data="$(mktemp -d)"
cleanup() {
    kill $(jobs -p) 2>/dev/null || true
    rm -rf "$data"
}
trap cleanup EXIT
# The cluster's CA and node certificate: every node and client below uses them.
"$nimbus" cluster init "$data/cluster"
export NIMBUS_CLUSTER_DIR="$data/cluster"
coproc PLANNER { NIMBUS_DATA_DIR="$data/planner" exec "$nimbus" planner --listen 127.0.0.1:0; }
read -r announced <&"${PLANNER[0]}"
planner="${announced#nimbus: planner listening on }"
for n in 1 2 3; do
    NIMBUS_DATA_DIR="$data/worker-$n" "$nimbus" worker --planner "$planner" >"$data/worker-$n.log" &
done
for _ in $(seq 100); do
    [ "$("$nimbus" hosts --planner "$planner" | tail -n +2 | wc -l)" = 3 ] && break
    sleep 0.1
done
set -x
"$nimbus" run --planner "$planner" target/guests/parallel-sum.wasm -- 1000 100000000
"$nimbus" run --planner "$planner" --ranks 4 target/guests/c-mpi-check.wasm
"$nimbus" hosts --planner "$planner"

#!/usr/bin/env bash
# Sets up the machine, builds nimbus and the examples, and runs the parallel sum on
# the embedded default: one process that spawns children and gathers their results.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

scripts/setup.sh
scripts/build-guests.sh
cargo build --release
set -x
target/release/nimbus run target/guests/hello.wasm
target/release/nimbus run --hosts 2 target/guests/parallel-sum.wasm -- 1000 100000000

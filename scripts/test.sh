#!/usr/bin/env bash
# Sets up the machine, builds the guest programs, and runs every check and test.
# Ends with one line totalling every test run: `tests: N passed, N failed`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# Where the time goes, for keeping the whole under its budget.
phase() { echo "test.sh: $1 by ${SECONDS} s"; }

# A clean build (CI's) is faster without incremental compilation, and its target
# directory smaller; a developer's rebuilds keep it.
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi

scripts/setup.sh
phase setup
scripts/build-guests.sh
phase guests
cargo fmt --all -- --check
(cd guests && cargo fmt --all -- --check)
cargo clippy --workspace --all-targets -- -D warnings
(cd guests && cargo clippy --all-targets -- -D warnings)
phase clippy

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
host="$(rustc -vV | sed -n 's/^host: //p')"
(cd guests && cargo test -p nimbus-sdk -p nimbus-kernels --target "$host") 2>&1 | tee -a "$log"
cargo test --workspace 2>&1 | tee -a "$log"
phase tests
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log"

#!/usr/bin/env bash
# Sets up the machine, builds the guest programs, and runs every check and test.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

scripts/setup.sh
scripts/build-guests.sh
cargo fmt --all -- --check
(cd guests && cargo fmt --all -- --check)
cargo clippy --workspace --all-targets -- -D warnings
(cd guests && cargo clippy --all-targets -- -D warnings)
(cd guests && cargo test -p nimbus-sdk -p nimbus-kernels --target "$(rustc -vV | sed -n 's/^host: //p')")
cargo test --workspace

#!/usr/bin/env bash
# Prepares a fresh machine for nimbus: the wasm32-wasip1 Rust target, the Debian
# packages that build C guests, redis-server for the Redis state tests, and binaryen
# (wasm-opt: the asyncify transform that makes commands capturable).
# Idempotent: does nothing that is already done.
set -euo pipefail

if ! rustup target list --installed | grep -qx wasm32-wasip1; then
  rustup target add wasm32-wasip1
fi

packages=(clang lld wasi-libc libclang-rt-14-dev-wasm32 redis-server binaryen "$@")
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

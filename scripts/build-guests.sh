#!/usr/bin/env bash
# Builds every nimbus guest program into <repo>/target/guests/*.wasm:
#   - the Rust guests workspace (guests/) in release for wasm32-wasip1, built in
#     <repo>/target/guest-build, each binary copied as <binary>.wasm;
#     (cdylib reactors come out as lib_name.wasm and are copied as lib-name.wasm);
#   - each guests/c/NAME.c compiled with clang as c-NAME.wasm (underscores become dashes);
#     a NAME ending in _service is a reactor (-mexec-model=reactor), not a command;
#     a NAME starting with kernel_ (a compute kernel) is built with -msimd128.
# Idempotent: cargo rebuilds only what changed, C files are recompiled only when the
# source or include/nimbus.h is newer than the output, and unchanged outputs are not
# rewritten. Installs nothing (the setup script does that).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET=wasm32-wasip1
BUILD_DIR="$ROOT/target/guest-build"
OUT_DIR="$ROOT/target/guests"
CC="${CC_WASM:-clang}"

mkdir -p "$OUT_DIR"

# Copies $1 to $2 unless $2 already has the same contents.
copy_if_changed() {
    if ! cmp -s "$1" "$2"; then
        cp "$1" "$2.tmp"
        mv -f "$2.tmp" "$2"
        echo "  updated $(basename "$2")"
    fi
}

echo "building Rust guests ($TARGET, release)"
# cargo reads guests/.cargo/config.toml only when run from inside guests/.
(cd "$ROOT/guests" && cargo build --release --target "$TARGET" --target-dir "$BUILD_DIR")

shopt -s nullglob
rust_wasms=("$BUILD_DIR/$TARGET/release/"*.wasm)
if [ ${#rust_wasms[@]} -eq 0 ]; then
    echo "error: cargo produced no .wasm in $BUILD_DIR/$TARGET/release" >&2
    exit 1
fi
for wasm in "${rust_wasms[@]}"; do
    name="$(basename "$wasm")"
    copy_if_changed "$wasm" "$OUT_DIR/${name//_/-}"
done

echo "building C guests"
# Whether $1 is newer than its source $2, every header and this script.
fresh() {
    [ -f "$1" ] && [ "$1" -nt "$2" ] && [ "$1" -nt "${BASH_SOURCE[0]}" ] || return 1
    local header
    for header in "$ROOT/include/"*.h; do
        [ "$1" -nt "$header" ] || return 1
    done
}
for src in "$ROOT/guests/c/"*.c; do
    name="$(basename "$src" .c)"
    out="$OUT_DIR/c-${name//_/-}.wasm"
    fresh "$out" "$src" && continue
    flags=()
    [[ $name == *_service ]] && flags+=(-mexec-model=reactor)
    # Compute kernels run with SIMD, as their native builds vectorise.
    [[ $name == kernel_* ]] && flags+=(-msimd128)
    "$CC" --target=wasm32-wasi -O2 -Wall -Wextra -Werror "${flags[@]}" -I "$ROOT/include" "$src" -o "$out.tmp"
    mv -f "$out.tmp" "$out"
    echo "  built $(basename "$out")"
done

echo "guests in $OUT_DIR:"
ls "$OUT_DIR"

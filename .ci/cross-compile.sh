#!/usr/bin/env bash
# Compile every csrc/*/*.c for macOS and the BSDs with zig's C compiler (PyPI
# package ziglang), warnings as errors, so the kqueue backend and the
# portable fallbacks are checked on every CI run without those machines.
#
# Targets: aarch64-macos, x86_64-macos, x86_64-freebsd, x86_64-netbsd,
# x86_64-openbsd.  zig ships libc headers for all five (checked with
# `python -m ziglang targets`, zig 0.17); nothing is linked or run.
# As CMake does there, epoll.c is left out and PE_HAVE_KQUEUE=1 defined.
# The warning flags are CMake's, plus -Werror.
#
# Usage, from anywhere: bash .ci/cross-compile.sh [target ...]
# Prints one line per target; exits non-zero if any file fails anywhere.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
command -v "$PY" >/dev/null 2>&1 || PY=python
if ! "$PY" -m ziglang version >/dev/null 2>&1; then
    echo "installing ziglang from PyPI" >&2
    "$PY" -m pip install --quiet ziglang || exit 2
fi

if [ $# -gt 0 ]; then
    targets=("$@")
else
    targets=(aarch64-macos x86_64-macos x86_64-freebsd x86_64-netbsd
             x86_64-openbsd)
fi
flags=(-std=gnu11 -Wall -Wextra -Werror -Wno-unused-parameter -Wshadow
       -Wstrict-prototypes -DPE_HAVE_KQUEUE=1 -Icsrc/include)

sources=()
# The core only: csrc/cpython/ is the CPython accelerator (needs Python.h,
# built by CMake for the host's CPython).
for f in csrc/poller/*.c csrc/loop/*.c csrc/http/*.c; do
    [ "$(basename "$f")" = epoll.c ] || sources+=("$f")
done
if [ ${#sources[@]} -eq 0 ]; then
    echo "no csrc/*/*.c found" >&2
    exit 2
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

status=0
for t in "${targets[@]}"; do
    failed=()
    for f in "${sources[@]}"; do
        # zig cc adds -c itself, so -fsyntax-only is refused; an object
        # file in a scratch directory costs little more.
        if ! log=$("$PY" -m ziglang cc -target "$t" "${flags[@]}" \
                   -c -o "$out/$(basename "$f" .c).o" "$f" 2>&1); then
            failed+=("$(basename "$f")")
            printf '%s\n' "$log" >&2
        fi
    done
    if [ ${#failed[@]} -eq 0 ]; then
        echo "$t: ok (${#sources[@]} files)"
    else
        echo "$t: FAILED: ${failed[*]}"
        status=1
    fi
done
exit $status

#!/usr/bin/env bash
# Build every libFuzzer target fuzz/fuzz_NAME.c against the C core and run it
# for a bounded time on a scratch copy of its seed corpus fuzz/corpus/NAME
# (libFuzzer adds what it finds to the first directory; the repository's
# seeds are never written).
# Usage: bash scripts/fuzz.sh [SECONDS] [NAME...]
#        bash scripts/fuzz.sh --workdir   (print the scratch folder: binaries,
#                                          logs, grown corpora; then exit)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# Scratch space per checkout, named as test.sh names its own: two clones
# fuzzed on one machine must not share binaries or corpora.
WORK=${PYEPOLL_FUZZ_DIR:-/tmp/pyepoll-fuzz-$(printf %s "$ROOT" | cksum | cut -d' ' -f1)}
if [ "${1:-}" = --workdir ]; then echo "$WORK"; exit 0; fi
mkdir -p "$WORK"
SECONDS_EACH=${1:-30}
shift || true

core=()
for src in "$ROOT"/csrc/poller/*.c "$ROOT"/csrc/loop/*.c "$ROOT"/csrc/http/*.c; do
  case "$(basename "$src")" in
    kqueue.c) ;;                       # not on Linux
    *) core+=("$src") ;;
  esac
done

targets=("$@")
if ((${#targets[@]} == 0)); then
  for f in "$ROOT"/fuzz/fuzz_*.c; do
    n=$(basename "$f" .c); targets+=("${n#fuzz_}")
  done
fi

for name in "${targets[@]}"; do
  bin="$WORK/fuzz_$name"
  clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
    -DPE_HAVE_EPOLL=1 -I"$ROOT/csrc" -I"$ROOT/csrc/include" "$ROOT/fuzz/fuzz_$name.c" "${core[@]}" -o "$bin"
  rm -rf "$WORK/corpus-$name"; mkdir -p "$WORK/corpus-$name"
  seeds="$ROOT/fuzz/corpus/$name"
  [ -d "$seeds" ] || { echo "fuzz_$name: no seed corpus at fuzz/corpus/$name" >&2; exit 1; }
  # Input size caps keep executions cheap where an input is a program of
  # operations (what the long local runs used); -timeout turns a hang of
  # one input into a failure.
  case "$name" in
    loop) opts=(-max_len=256) ;;
    ring) opts=(-max_len=512) ;;
    conntable) opts=(-max_len=600) ;;
    *) opts=() ;;
  esac
  "$bin" -max_total_time="$SECONDS_EACH" -timeout=30 -print_final_stats=1 \
    "${opts[@]}" "$WORK/corpus-$name" "$seeds" >"$WORK/fuzz_$name.log" 2>&1 \
    || { tail -40 "$WORK/fuzz_$name.log"; echo "fuzz_$name: FAILED" >&2; exit 1; }
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$WORK/fuzz_$name.log" | grep -o '[0-9]*$' || echo "?")
  echo "fuzz_$name: ${SECONDS_EACH}s, $runs executions, no crash"
done

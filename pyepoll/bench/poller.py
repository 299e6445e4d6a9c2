"""poller: Poller.wait and pyepoll.epoll.poll against select.epoll.poll,
with the kernel's share, side by side in one run (issues 2 and 3).

Cases: 1 ready fd among N idle (N = 10, 1000, 10000) and 1024 ready fds.
Rows, all waiting with timeout 0 on the same registrations:

  select.epoll.poll      CPython's, maxevents = registered (the reference)
  select.epoll.poll(0)   CPython's with its default maxevents (-1: 1023)
  pyepoll.epoll.poll     the drop-in, same arguments
  pyepoll.Poller.wait    Poller.wait(0)
  cffi floor             lib.pe_waiter_poll on the Poller's waiter: one cffi
                         call into the C poller, no Python list built
  kernel (C loop)        epoll_wait(fd, ev, maxevents, 0) in a C loop on the
                         select.epoll descriptor, inherited by a child
                         (pyepoll/bench/c/epoll_wait_loop.c, built with cc)

Per call: the median over interleaved repeats of CPU time (this thread's;
the child's own for the C loop) and of wall time, on one pinned CPU, with
ratios to select.epoll.poll.  --instructions adds user-space instructions
per call counted by valgrind's callgrind (machine-independent; the kernel
is not counted), each candidate in its own run minus a no-op's.

    python -m pyepoll.bench poller [--quick] [--repeats 15] [--instructions]
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import select
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import pyepoll
from pyepoll._binding import lib

from ._proc import Skip, build, raise_nofile
from ._servers import _env
from .dropins import FdSet

CASES: List[Tuple[str, int, int]] = [
    ("N=10", 10, 1), ("N=1000", 1000, 1), ("N=10000", 10000, 1),
    ("1024 ready", 0, 1024)]
REF = "select.epoll.poll"
KERNEL = "kernel (C loop)"


class Setup:
    """The three waiting objects on one set of registrations."""

    def __init__(self, n_idle: int, n_ready: int) -> None:
        raise_nofile(2 * (n_idle + n_ready) + 200)
        self.fds = FdSet(n_idle, n_ready)
        self.expected = n_ready
        self.maxevents = max(len(self.fds.all), 1)
        self.std = select.epoll()
        self.pe = pyepoll.epoll()
        self.poller = pyepoll.Poller("epoll")
        for fd in self.fds.all:
            self.std.register(fd, select.EPOLLIN)
            self.pe.register(fd, select.EPOLLIN)
            self.poller.register(fd, pyepoll.READ)

    def candidates(self) -> Dict[str, Callable[[], object]]:
        std_poll, pe_poll, wait = self.std.poll, self.pe.poll, self.poller.wait
        maxevents = self.maxevents
        waiter, poll_waiter = self.poller._w, lib.pe_waiter_poll
        release = lib.pe_waiter_release

        most = lib.PE_WAIT_MAX_EVENTS

        def floor() -> int:
            r = poll_waiter(waiter)
            if 0 < r <= most:
                release(waiter)        # events left in the array: let go
            return r

        return {
            REF: lambda: std_poll(0, maxevents),
            # How most code calls it: maxevents -1 (FD_SETSIZE - 1 slots,
            # a 12 KB buffer allocated per call).  Only for comparison; at
            # 1024 ready it returns 1023 events and is left out.
            "select.epoll.poll(0)": lambda: std_poll(0),
            "pyepoll.epoll.poll": lambda: pe_poll(0, maxevents),
            "pyepoll.Poller.wait": lambda: wait(0),
            "cffi floor": floor,
            "no-op": lambda: None,
        }

    def check(self, name: str, fn: Callable[[], object]) -> None:
        got = fn()
        if name == "no-op":
            return
        if name == "cffi floor":
            # One event travels in the result (see struct pe_waiter).
            one = got < -4095 or got >= lib.PE_WAIT_READ_BASE  # type: ignore
            n = 1 if one else got
        else:
            n = len(got)  # type: ignore[arg-type]
        if n != self.expected:
            raise SystemExit(f"{name}: {n} events, expected {self.expected}")

    def close(self) -> None:
        self.std.close()
        self.pe.close()
        self.poller.close()
        self.fds.close()


def time_calls(fn: Callable[[], object], calls: int) -> Tuple[float, float]:
    """(CPU seconds, wall seconds) per call of fn over `calls` calls."""
    rng = range(calls)
    gc_was = gc.isenabled()
    gc.disable()
    try:
        c0, w0 = time.thread_time(), time.perf_counter()
        for _ in rng:
            fn()
        return ((time.thread_time() - c0) / calls,
                (time.perf_counter() - w0) / calls)
    finally:
        if gc_was:
            gc.enable()


def build_kernel_loop() -> Optional[str]:
    try:
        return str(build("epoll_wait_loop"))
    except Skip:
        return None


def kernel_calls(exe: str, s: Setup, calls: int) -> Tuple[float, float]:
    fd = s.std.fileno()
    res = subprocess.run(
        [exe, str(fd), str(s.maxevents), str(calls), str(s.expected)],
        pass_fds=(fd,), capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        raise SystemExit(f"{exe} failed ({res.returncode}): {res.stderr}")
    cpu_ns, wall_ns = map(float, res.stdout.split())
    return cpu_ns / 1e9, wall_ns / 1e9


def measure(s: Setup, exe: Optional[str], repeats: int,
            budget: float) -> Dict[str, Tuple[float, float]]:
    cands = s.candidates()
    del cands["no-op"]
    if s.expected > 1023:
        del cands["select.epoll.poll(0)"]
    for name, fn in cands.items():
        s.check(name, fn)
    calls = {}
    for name, fn in cands.items():
        k = 10
        while True:                    # size each sample to about `budget`
            t = time_calls(fn, k)[1] * k
            if t > budget / 4 or k > 10_000_000:
                break
            k *= 4
        calls[name] = max(10, int(k * budget / max(t, 1e-9)))
    if exe:
        calls[KERNEL] = calls["cffi floor"] * 2
    samples: Dict[str, List[Tuple[float, float]]] = {n: [] for n in calls}
    for _ in range(repeats):           # interleaved: drift hits all alike
        for name in calls:
            if name == KERNEL:
                samples[name].append(kernel_calls(exe, s, calls[name]))
            else:
                samples[name].append(time_calls(cands[name], calls[name]))
    return {name: (statistics.median(c for c, _ in v),
                   statistics.median(w for _, w in v))
            for name, v in samples.items()}


# -- instruction counts ------------------------------------------------------------


def one_candidate(case: str, name: str, calls: int) -> None:
    """Child of --instructions: set up `case`, run candidate `name` `calls`
    times inside deque.extend (callgrind counts only inside it)."""
    import collections
    import itertools
    label, n_idle, n_ready = next(c for c in CASES if c[0] == case)
    s = Setup(n_idle, n_ready)
    fn = s.candidates()[name]
    s.check(name, fn)
    collections.deque(maxlen=0).extend(
        itertools.starmap(fn, itertools.repeat((), calls)))


def instructions(case: str, names: Sequence[str], calls: int
                 ) -> Dict[str, float]:
    counts = {}
    for name in list(names) + ["no-op"]:
        with tempfile.NamedTemporaryFile() as out:
            res = subprocess.run(
                ["valgrind", "--tool=callgrind", "--toggle-collect=deque_extend",
                 f"--callgrind-out-file={out.name}", sys.executable,
                 "-m", "pyepoll.bench.poller", "--one", case, name, str(calls)],
                capture_output=True, text=True, timeout=600,
                env={**_env(), "PYTHONHASHSEED": "0"})
            total = [line for line in res.stderr.splitlines()
                     if "Collected :" in line]
            if res.returncode != 0 or not total:
                raise SystemExit(f"callgrind run of {name} failed:\n"
                                 f"{res.stderr[-2000:]}")
            counts[name] = int(total[-1].split()[-1]) / calls
    noop = counts.pop("no-op")
    return {name: c - noop for name, c in counts.items()}


# -- report ------------------------------------------------------------------------


def fmt(seconds: float) -> str:
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} us"
    return f"{seconds * 1e3:.2f} ms"


def table(title: str, rows: Dict[str, Dict[str, float]], columns: List[str],
          show: Callable[[float], str]) -> None:
    print(f"\n{title}  (x = ratio to {REF}, lower is better)")
    width = max(len(r) for r in rows) + 2
    print(" " * width + "".join(c.rjust(20) for c in columns))
    for name, cells in rows.items():
        line = name.ljust(width)
        for col in columns:
            v = cells.get(col)
            if v is None:
                line += "n/a".rjust(20)
                continue
            text = show(v)
            ref = rows[REF].get(col)
            if name != REF and ref:
                text += f" {v / ref:.2f}x"
            line += text.rjust(20)
        print(line)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyepoll.bench poller",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--instructions", action="store_true",
                        help="also count instructions with callgrind")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        one_candidate(args.one[0], args.one[1], int(args.one[2]))
        return 0
    if "epoll" not in pyepoll.available_backends():
        raise SystemExit("bench_poller needs epoll (Linux)")
    repeats = args.repeats or (5 if args.quick else 15)
    budget = 0.005 if args.quick else 0.02
    exe = build_kernel_loop()
    print(f"pyepoll {pyepoll.__version__} poller benchmark: Python "
          f"{platform.python_version()}, {platform.system()} "
          f"{platform.release()}, {os.cpu_count()} CPUs; wait(0) per call, "
          f"medians of {repeats} interleaved samples on one CPU")
    if exe is None:
        print("(no C compiler: no kernel row)")
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(affinity)})
    cpu: Dict[str, Dict[str, float]] = {}
    wall: Dict[str, Dict[str, float]] = {}
    ins: Dict[str, Dict[str, float]] = {}
    try:
        for label, n_idle, n_ready in CASES:
            s = Setup(n_idle, n_ready)
            try:
                got = measure(s, exe, repeats, budget)
            finally:
                s.close()
            for name, (c, w) in got.items():
                cpu.setdefault(name, {})[label] = c
                wall.setdefault(name, {})[label] = w
            if args.instructions:
                calls = 200 if n_ready > 1 else 3000
                names = [n for n in got if n != KERNEL]
                for name, c in instructions(label, names, calls).items():
                    ins.setdefault(name, {})[label] = c
            print(f"  measured {label}", file=sys.stderr)
    finally:
        os.sched_setaffinity(0, affinity)
    columns = [c[0] for c in CASES]
    table("CPU time per call", cpu, columns, fmt)
    table("wall time per call", wall, columns, fmt)
    if ins:
        table("user-space instructions per call (callgrind, minus a no-op "
              "call)", ins, columns, lambda v: f"{v:,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""asyncio: the event loops side by side on echo, 1 KiB messages over 64
connections by default: asyncio Protocol, BufferedProtocol and streams
(asyncio.start_server), each on the stdlib's loop, on pyepoll's selector
loop (the stdlib loop on pyepoll's selector), on pyepoll's loop (its
transports are C connections) and on uvloop, with the plain C epoll server
as the floor no Python server can pass; and an HTTP hello parsed with
httptools (keep-alive GETs) on the same loops.  The load client is compiled C,
pinned to its own core; the figure that separates servers on two cores is
server CPU per message.

Frameworks: uvicorn (httptools, lifespan and access log off) serving an ASGI
hello and aiohttp.web's hello, on the stdlib loop, pyepoll's loop and
uvloop, loaded by wrk (100 keep-alive connections by default); then each
framework's server on pyepoll's loop (and on the stdlib's) is profiled
under the same load: which share of its CPU is the loop's, the
framework's, the kernel's.  Memory: N idle connections (5000 by default)
held against a fresh Protocol echo server on each loop, its RSS growth
divided by N."""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from typing import Dict, List, Optional, Tuple

from . import _cli
from ._proc import (Run, ServerProc, Skip, cpu_delta, cpu_sample, disabled,
                    raise_nofile, rss_bytes, run_loadgen, run_wrk)
from ._report import Section, Table, check_line, median_by, ratio_line
from ._servers import (C_ECHO, FRAMEWORKS, Fleet, asyncio_servers, check_echo,
                       _env, _need_module, running_loop, server_python,
                       server_python_description)

FLAVOURS = ("Protocol", "BufferedProtocol", "streams")


def build() -> argparse.ArgumentParser:
    ap = _cli.parser("asyncio", __doc__, seconds=2.0, repeats=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024])
    ap.add_argument("--conns", type=int, nargs="+", default=[64])
    ap.add_argument("--servers", nargs="+",
                    help="substrings of server names to run (plain C and "
                         "the uvloop rows always run)")
    ap.add_argument("--wrk-conns", type=int, default=100,
                    help="wrk's keep-alive connections for the framework "
                         "rows (default: %(default)s)")
    ap.add_argument("--profile-seconds", type=float, default=3.0,
                    help="length of each framework server's profile under "
                         "load (default: %(default)s; 0: none)")
    ap.add_argument("--idle", type=int, default=5000,
                    help="idle connections of the memory rows (default: "
                         "%(default)s; 0: none)")
    ap.add_argument("--threadsafe", type=int, default=20000,
                    help="round trips of the call_soon_threadsafe rows "
                         "(default: %(default)s; 0: none)")
    return ap


def run(args: argparse.Namespace) -> Section:
    if args.smoke:
        args.sizes, args.conns = [1024], [8]
        args.seconds, args.repeats = 0.2, 1
        args.wrk_conns = min(args.wrk_conns, 8)
        args.profile_seconds = min(args.profile_seconds, 0.5)
        args.idle = min(args.idle, 200)
        args.threadsafe = min(args.threadsafe, 2000)
    points = [(s, c) for s in args.sizes for c in args.conns]
    # HTTP: keep-alive GETs, one in flight per connection (size 0 marks it).
    http_points = [(0, c) for c in args.conns]
    # The frameworks under wrk ("wrk" marks it).
    wrk_points = [("wrk", args.wrk_conns)]
    specs = asyncio_servers()
    fleet = Fleet(specs, only=args.servers,
                  always=[C_ECHO] + [n for n in specs if n.startswith("uvloop")])

    def measure(name, p):
        spec = specs[name]
        if spec.load == "wrk":
            return (run_wrk(fleet.procs[name], p[1], args.seconds, 1)
                    if p[0] == "wrk" else None)
        http = spec.protocol == "http"
        if p[0] == "wrk" or http != (p[0] == 0):
            return None
        return run_loadgen(fleet.procs[name], "http" if http else "echo",
                           p[1], args.seconds, 1 if http else p[0])

    try:
        results = _cli.interleave(fleet, points + http_points + wrk_points,
                                  args.repeats, measure)
        shares = profile_frameworks(fleet, args) if args.profile_seconds > 0 else []
    finally:
        fleet.stop()
    memory, mem_skipped = (idle_memory(specs, args) if args.idle > 0
                           else (Table("", "", []), {}))
    wakeups, wake_skipped = (threadsafe_round_trips(args)
                             if args.threadsafe > 0
                             else (Table("", "", []), {}))

    sec = Section("asyncio", intro=_cli.standard_intro(args))
    sec.intro.append("every server first echoed 7 B and 200 KB byte-exact; "
                     "the load client checks every byte it gets back")
    cols = [f"{s} B x {c}" for s, c in points]
    hcols = [f"GET x {c}" for _, c in http_points]
    hcpu = Table("asyncio HTTP hello (httptools) server CPU per request",
                 "us user+sys", hcols, reference="uvloop httptools")
    hthr = Table("asyncio HTTP hello (httptools) throughput", "requests/s",
                 hcols, reference="uvloop httptools", lower_is_better=False)
    thr = Table("asyncio echo throughput", "messages/s", cols, reference=C_ECHO,
                lower_is_better=False)
    cpu = Table("asyncio echo server CPU per message", "us user+sys", cols,
                reference=C_ECHO)
    user = Table("asyncio echo server user-space CPU per message", "us user",
                 cols, reference=C_ECHO)
    p99 = Table("asyncio echo latency p99", "us round trip", cols,
                reference=C_ECHO)
    # Rows are loops, columns frameworks: each ratio is to the same
    # framework on uvloop.
    wcols = [f"{fw}, wrk {c} conns" for fw in FRAMEWORKS for _, c in wrk_points]
    wcpu = Table("asyncio frameworks hello (wrk, keep-alive) server CPU per "
                 "request", "us user+sys", wcols, reference="uvloop")
    wthr = Table("asyncio frameworks hello (wrk, keep-alive) throughput",
                 "requests/s", wcols, reference="uvloop", lower_is_better=False)
    for name, by_point in results.items():
        for (size, conns), runs in by_point.items():
            if size == "wrk":
                loop, fw = name.rsplit(" ", 1)
                for r in runs:
                    wcpu.add(loop, f"{fw}, wrk {conns} conns", r.cpu_per_op_us)
                    wthr.add(loop, f"{fw}, wrk {conns} conns", r.rate)
                continue
            if size == 0:
                for r in runs:
                    hcpu.add(name, f"GET x {conns}", r.cpu_per_op_us)
                    hthr.add(name, f"GET x {conns}", r.rate)
                continue
            col = f"{size} B x {conns}"
            for r in runs:
                thr.add(name, col, r.rate)
                cpu.add(name, col, r.cpu_per_op_us)
                user.add(name, col, r.user_per_op_us)
                p99.add(name, col, r.p99)
    wcpu.notes.append("uvicorn: httptools parser, ASGI hello app, lifespan and "
                      "access log off; aiohttp: aiohttp.web, one GET handler; "
                      "wrk -t1, one request in flight per connection")
    sec.tables += [cpu, user, thr, p99, hcpu, hthr, wcpu, wthr]
    if memory.points:
        sec.tables.append(memory)
    if wakeups.rows:
        sec.tables.append(wakeups)
    note = _cli.client_note(results)
    if note:
        sec.tables[0].notes.append(note)
    sec.summary = summary(results, points[0], http_points[0], wrk_points[0])
    if memory.points:
        col = memory.points[0]
        r = memory.ratio("pyepoll loop Protocol", col)
        if on_pypy():       # no uvloop there, and issue 14 sets no target
            sec.summary.append(ratio_line(
                f"pyepoll loop memory per idle connection vs the stdlib loop ({col})", r))
        else:
            sec.summary.append(check_line(
                f"pyepoll loop memory per idle connection vs uvloop ({col})",
                r, 0.5, "<="))
    if wakeups.rows:
        col = wakeups.points[0]
        r = wakeups.ratio("pyepoll loop", col)
        sec.summary.append(ratio_line(
            f"pyepoll loop call_soon_threadsafe round trip vs {wakeups.reference}", r))
    sec.summary += shares
    sec.skipped = fleet.skip_notes() + [
        f"{n} (memory): {why}" for n, why in mem_skipped.items()
        if n not in fleet.skipped] + [
        f"{n} (call_soon_threadsafe): {why}" for n, why in wake_skipped.items()]
    return sec


# Rows of the call_soon_threadsafe table: name -> runtime of _threadsafe.py.
THREADSAFE_ROWS = {"asyncio": "asyncio", "pyepoll loop": "pyepollaio",
                   "uvloop": "uvloop"}


def threadsafe_round_trips(args: argparse.Namespace
                           ) -> Tuple[Table, Dict[str, str]]:
    """Each loop in a fresh process per repeat (interleaved): a worker
    thread answers each future the loop awaits with call_soon_threadsafe
    (pyepoll/bench/_threadsafe.py).  Returns the table (process CPU per
    round trip) and the rows skipped, with why."""
    n = args.threadsafe
    col = f"{n} round trips"
    table = Table("asyncio call_soon_threadsafe round trip (a thread answers "
                  "each awaited future)", "us user+sys", [col],
                  reference="asyncio" if on_pypy() else "uvloop")
    # "pyepoll loop Protocol" picks the "pyepoll loop" row too.
    names = [r for r in THREADSAFE_ROWS if not args.servers
             or r == table.reference
             or any(w in r or r in w for w in args.servers)]
    skipped: Dict[str, str] = {}
    if "uvloop" in names:
        try:
            _need_module("uvloop")
        except Skip as e:
            skipped["uvloop"] = str(e)
    for rep in range(args.repeats):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            if name in skipped:
                continue
            res = subprocess.run(
                [server_python(), "-m", "pyepoll.bench._threadsafe",
                 THREADSAFE_ROWS[name], str(n)], capture_output=True,
                text=True, env=_env(), cwd="/", timeout=60 + n / 1000)
            if res.returncode != 0:
                last = (res.stderr.strip().splitlines() or ["failed"])[-1]
                raise RuntimeError(f"{name}: call_soon_threadsafe run "
                                   f"failed: {last}")
            table.add(name, col, json.loads(res.stdout)["cpu_us"])
    table.notes.append("CPU of the whole process (the loop's thread and the "
                       "worker's) per round trip, as a finished "
                       "run_in_executor job wakes its loop")
    return table, skipped


# -- the loop's share of a framework request ---------------------------------------


def profile_frameworks(fleet: Fleet, args: argparse.Namespace) -> List[str]:
    """For each framework server on pyepoll's loop and on the stdlib loop:
    a wrk run, and inside it a window of --profile-seconds during which the
    server samples its own CPU by part of the stack (see _serve._Sampler)
    while /proc gives its user and system CPU; then, where perf is
    installed, a second window recorded by perf."""
    out = []
    for fw in FRAMEWORKS:
        for loop in ("pyepoll loop", "asyncio"):
            name = f"{loop} {fw}"
            proc = fleet.procs.get(name)
            if proc is None or not proc.alive():
                continue
            try:
                sampled, perf = _profile(proc, args)
            except (RuntimeError, OSError) as e:
                out.append(f"{name}: profile failed: {e}")
                continue
            out.append(f"{name}: {sampled[0]}")
            out.append(f"{name}, the loop's top functions: {sampled[1]}")
            if perf:
                out.append(f"{name}, perf: {perf}")
    if out:
        out.insert(0, "share of server CPU per request under wrk "
                      f"({args.wrk_conns} conns), from a 1 ms ITIMER_PROF "
                      "sampler in the server counting the running Python "
                      "function's package; C code and system calls count to "
                      "the Python function calling them, so the loop's share "
                      "includes the kernel's work for its send/recv/epoll "
                      "(loop = pyepoll + asyncio); kernel = the server's "
                      "system CPU from /proc; loop - kernel approximates the "
                      "loop's own user-space share (the frameworks make their "
                      "system calls through the loop's transports).  Where "
                      "perf is installed, a second window of the same run: "
                      "perf's cpu-clock samples by binary, which cannot tell "
                      "loop from framework Python but checks the kernel share "
                      "and shows the C parts")
    return out


def _profile(proc: ServerProc, args: argparse.Namespace
             ) -> Tuple[Tuple[str, str], Optional[str]]:
    """((the sampler's split, the loop's costliest functions), perf's split
    or None) of one wrk run."""
    path = os.path.join(proc.dir, "profile.json")
    if os.path.exists(path):
        os.unlink(path)
    lead = 0.3 if args.smoke else 0.5
    perf_exe = None if disabled("perf") else shutil.which("perf")
    windows = 2 if perf_exe else 1
    done: List[object] = []
    load = threading.Thread(target=lambda: done.append(_wrk_or_error(
        proc, args.wrk_conns, lead + windows * args.profile_seconds + 1.0)))
    load.start()
    perf = None
    try:
        time.sleep(lead)
        c0 = cpu_sample(proc.pid)
        os.kill(proc.pid, signal.SIGUSR1)
        time.sleep(args.profile_seconds)
        os.kill(proc.pid, signal.SIGUSR2)
        user, system = cpu_delta(c0, cpu_sample(proc.pid))
        if perf_exe:
            perf = _perf_split(perf_exe, proc, args.profile_seconds)
    finally:
        load.join()
    if isinstance(done[0], Exception):
        raise RuntimeError(str(done[0]))
    deadline = time.monotonic() + 5
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise RuntimeError("the server wrote no profile")
        time.sleep(0.05)
    with open(path) as f:
        prof = json.load(f)
    counts: Dict[str, int] = prof["parts"]
    samples = sum(counts.values())
    total = user + system
    if not samples or total <= 0:
        raise RuntimeError("no samples")

    def share(*parts: str) -> float:
        return sum(counts.get(p, 0) for p in parts) / samples

    loop_fns = sorted(((n, f.split("|", 1)[1]) for f, n in prof["functions"].items()
                       if f.split("|", 1)[0] in ("pyepoll", "asyncio")), reverse=True)
    top = ", ".join(f"{fn} {n / samples:.0%}" for n, fn in loop_fns[:6])
    loop, kernel = share("pyepoll", "asyncio"), system / total
    return (f"loop {loop:.0%} (pyepoll {share('pyepoll'):.0%}, "
            f"asyncio {share('asyncio'):.0%}), framework {share('framework'):.0%}, "
            f"app {share('app'):.0%}, other Python {share('other'):.0%}; "
            f"kernel {kernel:.0%}, loop - kernel {loop - kernel:.0%} "
            f"({samples} samples, "
            f"{total / max(args.profile_seconds, 1e-9):.0%} of a core)",
            top or "none sampled"), perf


def _perf_split(exe: str, proc: ServerProc, seconds: float) -> str:
    """perf record of the server for `seconds`, its samples summed by
    binary: kernel, interpreter (libpython, libc, cffi), pyepoll's C core,
    the rest (the framework's C extensions: httptools, aiohttp's parser,
    multidict...)."""
    data = os.path.join(proc.dir, "perf.data")
    rec = subprocess.run([exe, "record", "-q", "-F", "999", "-p", str(proc.pid),
                          "-o", data, "--", "sleep", f"{seconds:g}"],
                         capture_output=True, text=True, timeout=seconds + 30)
    rep = subprocess.run([exe, "report", "-i", data, "--sort", "dso", "--stdio"],
                         capture_output=True, text=True, timeout=60)
    shares: Dict[str, float] = {}
    for m in re.finditer(r"^\s+([\d.]+)%\s+(\S+)", rep.stdout, re.M):
        dso = m.group(2)
        if dso.startswith("[kernel"):
            part = "kernel"
        elif dso.startswith("_core."):
            part = "pyepoll C core"
        elif re.match(r"(lib)?python|libc[.-]|_cffi_backend|ld-linux|\[vdso", dso):
            part = "interpreter"
        else:
            part = "other C extensions"
        shares[part] = shares.get(part, 0.0) + float(m.group(1))
    if not shares:
        return "failed: " + ((rec.stderr or rep.stderr).strip().splitlines() or ["no samples"])[-1]
    return ", ".join(f"{p} {shares.get(p, 0.0):.0f}%" for p in
                     ("kernel", "interpreter", "pyepoll C core", "other C extensions"))


def _wrk_or_error(proc: ServerProc, conns: int, seconds: float) -> object:
    """The load thread's result: the Run, or the exception it raised (so
    that the main thread reports it)."""
    try:
        return run_wrk(proc, conns, seconds, 1)
    except Exception as e:      # noqa: BLE001 (handed over, not swallowed)
        return e


# -- memory per idle connection ----------------------------------------------------


MEMORY_ROWS = ("asyncio Protocol", "pyepoll loop Protocol", "uvloop Protocol")


def idle_memory(specs, args: argparse.Namespace) -> Tuple[Table, Dict[str, str]]:
    """A fresh Protocol echo server per loop and repeat (interleaved): echo
    checked, RSS read once its descriptors are steady, then --idle
    connections opened from this process; once the server holds them all
    and a moment has passed, (RSS after - RSS before) / N.  Returns the
    table and the rows skipped, with why."""
    from .idle_clients import Idle, settle, stable_fds
    n = args.idle
    col = f"{n} idle"
    table = Table("asyncio memory per idle connection (Protocol echo server)",
                  "bytes RSS", [col], reference="asyncio Protocol" if on_pypy()
                  else "uvloop Protocol")
    raise_nofile(n + 1024)
    names = [r for r in MEMORY_ROWS if r in specs and (
        not args.servers or r == table.reference
        or any(w in r for w in args.servers))]
    skipped: Dict[str, str] = {}
    for rep in range(min(args.repeats, 3)):
        shift = rep % max(len(names), 1)
        for name in names[shift:] + names[:shift]:
            if name in skipped:
                continue
            try:
                proc = specs[name].start()
            except Skip as e:
                skipped[name] = str(e)
                continue
            idle = Idle(proc.port)
            try:
                if running_loop(proc) != specs[name].loop:
                    raise AssertionError(f"{name} runs on loop "
                                         f"{running_loop(proc)!r}, not "
                                         f"{specs[name].loop!r}")
                check_echo(proc.port)
                base_fds = stable_fds(proc.pid)
                base = rss_bytes(proc.pid)
                got = idle.grow(n, timeout=max(10.0, n / 500))
                held = settle(proc.pid, base_fds + got, timeout=5.0) - base_fds
                time.sleep(0.3)
                if got < n or held < n:
                    table.notes.append(f"{name}: only {held} of {n} idle "
                                       f"connections held; not counted")
                    continue
                table.add(name, col, (rss_bytes(proc.pid) - base) / n)
                check_echo(proc.port)       # still serving with N held
            finally:
                idle.close()
                proc.stop()
    table.notes.append("RSS growth of a fresh server from before the idle "
                       "connections to after, divided by their number; "
                       "kernel socket buffers are not in RSS")
    return table, skipped


def on_pypy() -> bool:
    """Whether the Python servers run on PyPy (this process, or --python's
    interpreter)."""
    return server_python_description().startswith("PyPy")


def summary(results: Dict[str, Dict[object, List[Run]]], point,
            http_point, wrk_point) -> List[str]:
    """Issue 14's targets at the first point (1 KiB x 64 by default)."""
    def med(name: str, at=point) -> Optional[float]:
        return median_by(results.get(name, {}).get(at, []),
                       lambda r: r.cpu_per_op_us)

    def ratio(a: str, b: str, at=point) -> Optional[float]:
        x, y = med(a, at), med(b, at)
        return x / y if x is not None and y else None

    out = [f"server CPU per message at {point[0]} B x {point[1]} (medians):"]
    # Each uvloop target's floor: the plain C server against that uvloop row.
    for flavour in ("Protocol", "BufferedProtocol"):
        floor = ratio(C_ECHO, f"uvloop {flavour}")
        if floor is not None:
            out.append(f"floor: plain C epoll (no Python) vs uvloop {flavour}: "
                       f"{floor:.2f}x")
    out += [
        check_line("pyepoll loop Protocol vs uvloop",
                   ratio("pyepoll loop Protocol", "uvloop Protocol"), 0.85, "<="),
        check_line("pyepoll loop Protocol vs plain C",
                   ratio("pyepoll loop Protocol", C_ECHO), 1.2, "<="),
        check_line("pyepoll loop BufferedProtocol vs uvloop",
                   ratio("pyepoll loop BufferedProtocol",
                         "uvloop BufferedProtocol"), 0.8, "<="),
        ratio_line("pyepoll loop BufferedProtocol vs plain C",
                   ratio("pyepoll loop BufferedProtocol", C_ECHO)),
        check_line("pyepoll loop streams vs uvloop",
                   ratio("pyepoll loop streams", "uvloop streams"), 0.9, "<="),
        check_line("pyepoll loop httptools hello vs uvloop (CPU/request)",
                   ratio("pyepoll loop httptools", "uvloop httptools",
                         http_point), 0.9, "<="),
        check_line(f"pyepoll loop uvicorn+httptools vs uvloop (CPU/request, "
                   f"wrk {wrk_point[1]} conns)",
                   ratio("pyepoll loop uvicorn", "uvloop uvicorn", wrk_point),
                   0.9, "<="),
        check_line(f"pyepoll loop aiohttp vs uvloop (CPU/request, wrk "
                   f"{wrk_point[1]} conns)",
                   ratio("pyepoll loop aiohttp", "uvloop aiohttp", wrk_point),
                   0.9, "<="),
        # Issue 14 asks PyPy for <= 0.7x its stdlib loop (no uvloop there).
        check_line("pyepoll loop Protocol vs stdlib asyncio",
                   ratio("pyepoll loop Protocol", "asyncio Protocol"),
                   0.7 if on_pypy() else 1.0,
                   "<="),
    ]
    return out


def main(argv: Optional[List[str]] = None) -> int:
    return _cli.main("asyncio", build, run, argv)

"""Processes for the network scenarios: the compiled load client, servers
pinned to their own core, CPU and memory read from /proc.

Linux only (the load client uses epoll; CPU time and RSS come from /proc).
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

C_DIR = pathlib.Path(__file__).resolve().parent / "c"
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# A client using this share of one core or more is the bottleneck: the
# throughput it reports then measures the client, not the server.
SATURATED = 0.9


def disabled(name: str) -> bool:
    """PYEPOLL_BENCH_WITHOUT=wrk,nginx,uvloop,... runs as if those were not
    installed (how the tests check the fallbacks on a machine that has
    them)."""
    return name in os.environ.get("PYEPOLL_BENCH_WITHOUT", "").replace(" ", "").split(",")


class Skip(Exception):
    """A compared implementation cannot run here (not installed, no C
    compiler, ...); the message says why."""


# -- cores -------------------------------------------------------------------------


def cores() -> Tuple[Optional[int], Optional[int]]:
    """(server core, client core), or (None, None) when fewer than two
    cores are available to this process: then nothing is pinned."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return None, None
    if len(allowed) < 2:
        return None, None
    return allowed[0], allowed[1]


def _pinner(core: Optional[int]):
    if core is None:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, {core})
    return pin


def pinning_note() -> str:
    server, client = cores()
    if server is None:
        return "fewer than 2 cores: server and client share the CPU (not pinned)"
    return f"server pinned to CPU {server}, load client to CPU {client}"


def raise_nofile(need: int = 1 << 30) -> int:
    """Raise the soft descriptor limit toward `need` (at most the hard
    limit); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- compiled helpers --------------------------------------------------------------


def _cache_dir() -> pathlib.Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache")
    path = pathlib.Path(base) / "pyepoll-bench"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".w"
        probe.write_bytes(b"")
        probe.unlink()
        return path
    except OSError:
        path = pathlib.Path(tempfile.gettempdir()) / f"pyepoll-bench-{os.getuid()}"
        path.mkdir(parents=True, exist_ok=True)
        return path


def compiler() -> Optional[str]:
    cc = os.environ.get("CC")
    if cc:
        return cc
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
            return name
    return None


def build(name: str, sources: Sequence[pathlib.Path] = (),
          flags: Sequence[str] = ()) -> pathlib.Path:
    """Compile pyepoll/bench/c/NAME.c (plus `sources`) with -O2 at run time,
    cached by a hash of the sources, the headers beside them, flags and
    compiler; raises Skip when there is no C compiler."""
    cc = compiler()
    if cc is None:
        raise Skip("no C compiler (set CC)")
    srcs = [C_DIR / f"{name}.c", *sources]
    h = hashlib.sha256(cc.encode() + b"\0" + "\0".join(flags).encode())
    for src in srcs + sorted(C_DIR.glob("*.h")):
        h.update(src.read_bytes())
    out = _cache_dir() / f"{name}-{h.hexdigest()[:16]}"
    if not out.exists():
        tmp = out.with_name(out.name + f".{os.getpid()}")
        cmd = [cc, "-O2", *flags, "-o", str(tmp), *map(str, srcs)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise Skip(f"compiling {name}.c failed: {res.stderr.strip()[:400]}")
        os.replace(tmp, out)     # atomic: concurrent runs never see half a file
    return out


def loadgen() -> pathlib.Path:
    return build("loadgen")


def handler_floor() -> pathlib.Path:
    """c/handler_floor.c as an extension module of this Python (CPython)."""
    import sysconfig
    return build("handler_floor", flags=["-shared", "-fPIC", "-I",
                                         sysconfig.get_paths()["include"]])


# -- /proc -------------------------------------------------------------------------


def _tree(pid: int) -> List[int]:
    """pid and its descendants (nginx's worker, a server's workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def cpu_seconds(pid: int) -> Tuple[float, float]:
    """(user, system) CPU seconds of a process and its descendants, every
    thread included."""
    user = system = 0.0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11]) / TICK
        system += int(fields[12]) / TICK
    return user, system


@dataclass
class CpuSample:
    """Per-thread run time in ns (/proc/.../task/TID/schedstat) and the
    process tree's user and system CPU in clock ticks (/proc/PID/stat)."""

    tasks: Dict[int, int]
    user: float
    system: float


def cpu_sample(pid: int) -> CpuSample:
    tasks: Dict[int, int] = {}
    for p in _tree(pid):
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/schedstat") as f:
                    tasks[int(tid)] = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    user, system = cpu_seconds(pid)
    return CpuSample(tasks, user, system)


def cpu_delta(a: CpuSample, b: CpuSample) -> Tuple[float, float]:
    """(user, system) seconds between two samples.  Clock ticks (10 ms on
    most kernels) are too coarse for a one-second run, so when the same
    threads were there before and after, their nanosecond run time gives
    the total and the ticks only split it into user and system.  When
    threads came or went (thread per connection), the ticks alone: a dead
    thread's run time is gone from /proc, its ticks are not (they are
    added to the process's)."""
    du, ds = b.user - a.user, b.system - a.system
    ticks = du + ds
    if a.tasks and a.tasks.keys() == b.tasks.keys():
        total = sum(b.tasks[t] - a.tasks[t] for t in a.tasks) / 1e9
        if total + 2.0 / TICK < ticks:
            # Threads started and ended between the samples: their run
            # time is in the ticks only.
            return du, ds
        if ticks > 0:
            frac = du / ticks
        elif b.user + b.system > 0:
            frac = b.user / (b.user + b.system)
        else:
            frac = 0.5
        return total * frac, total * (1 - frac)
    return du, ds


def sleeps(pid: int) -> int:
    """Voluntary context switches of a process tree's threads: for an
    event-loop server, how often it went to sleep in its wait and was woken
    (a wait that finds events ready does not switch)."""
    total = 0
    for p in _tree(pid):
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/status") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches:"):
                            total += int(line.split()[1])
        except (OSError, ValueError):
            pass
    return total


def rss_bytes(pid: int) -> int:
    total = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def nfds(pid: int) -> int:
    return sum(len(os.listdir(f"/proc/{p}/fd")) for p in _tree(pid))


# -- servers -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not listening on {port} after {timeout:g} s")
            time.sleep(0.02)


class ServerProc:
    """One server process listening on 127.0.0.1:port, pinned to the server
    core.  `cmd` and the `files` written into its private temporary
    directory before it starts may contain "{port}" and "{dir}"."""

    def __init__(self, name: str, cmd: Sequence[str], env: Optional[Dict[str, str]] = None,
                 stop_signal: int = signal.SIGTERM,
                 files: Optional[Dict[str, str]] = None) -> None:
        self.name = name
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="pyepoll-bench-")
        self.stop_signal = stop_signal
        self.log = open(os.path.join(self.dir, "server.log"), "w+")
        for fname, text in (files or {}).items():
            with open(os.path.join(self.dir, fname), "w") as f:
                f.write(text.format(port=self.port, dir=self.dir))
        argv = [a.format(port=self.port, dir=self.dir) for a in cmd]
        # cwd: its own directory, so no source tree in the current one
        # shadows the pyepoll a server's interpreter has installed.
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
            env=env, cwd=self.dir, preexec_fn=_pinner(cores()[0]),
            start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ready(self, timeout: float = 15.0) -> "ServerProc":
        try:
            wait_listening(self.port, self.proc, timeout)
        except RuntimeError as e:
            tail = self.tail()
            self.stop()
            raise RuntimeError(f"{self.name}: {e}: {tail}") from None
        return self

    def tail(self) -> str:
        try:
            with open(self.log.name) as f:
                return f.read()[-600:].strip()
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, self.stop_signal)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def python_cmd(*args: str) -> List[str]:
    return [sys.executable, *args]


# -- load --------------------------------------------------------------------------


@dataclass
class Run:
    """One timed load run against one server."""

    ops: int                  # messages echoed / responses received
    rate: float               # per second
    bad: int                  # wrong bytes / non-200 responses
    closed: int               # connections the server closed early
    p50: float                # round-trip latency, microseconds
    p99: float
    p999: float
    server_user: float        # server CPU seconds during the run
    server_sys: float
    client_cpu: float         # client CPU seconds (user + sys)
    wall: float
    server_sleeps: int = 0    # voluntary context switches during the run
    steal_ms: float = 0.0     # the VM's CPU time the host took during it
    remeasured: int = 0       # runs before it thrown away for steal time

    @property
    def ops_per_sleep(self) -> float:
        """Operations per time the server slept in its wait and was woken:
        1 when every round trip wakes it, large when the client sends
        faster than the server sleeps (a wait that finds events ready
        does not sleep)."""
        return self.ops / self.server_sleeps if self.server_sleeps else float("nan")

    @property
    def cpu_per_op_us(self) -> float:
        return (self.server_user + self.server_sys) / max(self.ops, 1) * 1e6

    @property
    def user_per_op_us(self) -> float:
        return self.server_user / max(self.ops, 1) * 1e6

    @property
    def client_load(self) -> float:
        """Share of one core the client used (1.0 = saturated)."""
        return self.client_cpu / self.wall if self.wall > 0 else 0.0

    @property
    def saturated(self) -> bool:
        return self.client_load >= SATURATED


def steal_ms() -> float:
    """The machine's steal time so far, ms: on a VM, the time its CPUs were
    runnable but the host ran something else (/proc/stat; 0 elsewhere).  A
    round trip caught in it takes that long, whatever the server."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) * 1000.0 / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _run_pinned(cmd: Sequence[str], timeout: float) -> Tuple[str, str, float, int]:
    """Run the client on the client core; (stdout, stderr, wall s, status)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_pinner(cores()[1]))
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError(f"load client did not finish in {timeout:g} s")
    return out, err, time.monotonic() - t0, proc.returncode


@dataclass
class _Measured:
    """One load client's run and what it cost, measured around it."""

    out: str
    err: str
    wall: float
    rc: int
    server_user: float
    server_sys: float
    server_sleeps: int
    steal_ms: float
    client_cpu: float


def _run_measured(server: ServerProc, cmd: Sequence[str], timeout: float) -> _Measured:
    """_run_pinned, with the server's CPU and sleeps, the machine's steal
    time and the client's own CPU over the run."""
    # The client's own CPU: RUSAGE_CHILDREN accumulates every reaped child,
    # so take it as a difference around this one.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    c0, z0, st0 = cpu_sample(server.pid), sleeps(server.pid), steal_ms()
    out, err, wall, rc = _run_pinned(cmd, timeout)
    stolen = steal_ms() - st0
    su, ss = cpu_delta(c0, cpu_sample(server.pid))
    z = sleeps(server.pid) - z0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return _Measured(out, err, wall, rc, su, ss, z, stolen, client_cpu)


def run_loadgen(server: ServerProc, mode: str, conns: int, seconds: float,
                arg: int) -> Run:
    """mode "echo" (arg = message size) or "http" (arg = pipeline depth)."""
    exe = loadgen()
    measured = _run_measured(
        server, [str(exe), mode, str(server.port), str(conns), str(seconds), str(arg)],
        timeout=seconds + 30)
    fields = measured.out.split()
    if len(fields) != 7:
        raise RuntimeError(f"{server.name}: load client failed (status {measured.rc}): "
                           f"{measured.err.strip() or measured.out.strip()}")
    ops, rate, bad, closed = int(fields[0]), float(fields[1]), int(fields[2]), int(fields[3])
    # The client's timed part excludes connecting; so does its CPU, nearly.
    return Run(ops, rate, bad, closed, *map(float, fields[4:7]),
               measured.server_user, measured.server_sys, measured.client_cpu,
               min(measured.wall, seconds) or measured.wall, measured.server_sleeps,
               measured.steal_ms)


WRK_PIPELINE = """\
init = function(args)
  local r = {}
  for i = 1, %d do r[i] = wrk.format(nil, "/") end
  req = table.concat(r)
end
request = function() return req end
"""


def wrk_path() -> Optional[str]:
    return None if disabled("wrk") else shutil.which("wrk")


def run_wrk(server: ServerProc, conns: int, seconds: float, depth: int) -> Run:
    """wrk with one thread on the client core; `depth` > 1 pipelines through
    a Lua script (wrk counts each response)."""
    exe = wrk_path()
    if exe is None:
        raise Skip("wrk not installed")
    cmd = [exe, "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--latency"]
    script = None
    if depth > 1:
        script = os.path.join(server.dir, f"pipeline{depth}.lua")
        with open(script, "w") as f:
            f.write(WRK_PIPELINE % depth)
        cmd += ["-s", script]
    cmd.append(f"http://127.0.0.1:{server.port}/")
    measured = _run_measured(server, cmd, timeout=seconds + 30)
    out = measured.out
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    if measured.rc != 0 or not m:
        raise RuntimeError(f"{server.name}: wrk failed: "
                           f"{measured.err.strip() or out.strip()}")
    ops = int(m.group(1))
    secs = float(m.group(2)) * {"ms": 1e-3, "s": 1.0, "m": 60.0}.get(m.group(3), 1.0)
    bad = int(re.search(r"Non-2xx or 3xx responses: (\d+)", out).group(1)) \
        if "Non-2xx" in out else 0
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    closed = sum(int(g) for g in errs.groups()[:3]) if errs else 0

    def pct(p: str) -> float:
        mm = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not mm or float(mm.group(1)) == 0:
            # wrk prints 0.00us when it kept no latency samples (seen with
            # deep pipelining): not a measurement.
            return float("nan")
        return float(mm.group(1)) * {"us": 1.0, "ms": 1e3, "s": 1e6}[mm.group(2)]
    return Run(ops, ops / secs if secs else 0.0, bad, closed, pct("50"), pct("99"),
               float("nan"), measured.server_user, measured.server_sys,
               measured.client_cpu, secs or measured.wall, measured.server_sleeps,
               measured.steal_ms)


# Less than a clock tick or two is the counter's granularity, not a stall.
STEAL_NOTED_MS = 20.0
# A run with that much steal is measured again, at most this many times
# (the least stolen one kept): on a VM whose host stalls a third of the
# runs, medians of p99 would otherwise be the host's.
STEAL_REMEASURE = 2


def steal_note(runs: Sequence[Run]) -> Optional[str]:
    """Whether the host took this VM's CPUs during the runs: a round trip
    waiting out the steal takes its length, so a p99 of milliseconds in
    such a run is the host's, not the server's."""
    hit = [r for r in runs if r.steal_ms >= STEAL_NOTED_MS]
    again = [r for r in runs if r.remeasured]
    redone = (f"{len(again)} of {len(runs)} runs were measured again "
              f"({sum(r.remeasured for r in again)} runs thrown away) because "
              f"the host stole {STEAL_NOTED_MS:.0f} ms or more of this VM's "
              f"CPU time during them")
    if not hit:
        return redone if again else None
    return ((redone + "; " if again else "")
            + f"host steal time (the hypervisor ran something else on this "
            f"VM's CPUs) in {len(hit)} of {len(runs)} runs kept, up to "
            f"{max(r.steal_ms for r in hit):,.0f} ms in one: latency "
            f"tails of milliseconds there are the host's")


def saturation_note(runs: Sequence[Run], what: str = "throughput") -> Optional[str]:
    """The sentence the issue asks for: was the client the bottleneck?"""
    if not runs:
        return None
    sat = [r for r in runs if r.saturated]
    top = max(r.client_load for r in runs)
    if sat:
        return (f"load client saturated (>= {SATURATED:.0%} of its core) in "
                f"{len(sat)} of {len(runs)} runs (max {top:.0%}): there the {what} "
                f"measures the client; server CPU per operation still compares servers")
    return f"load client not saturated: at most {top:.0%} of its core in every run"

"""dropins: pyepoll's drop-ins against what they replace, side by side in
one run.

  1. selectors: stdlib EpollSelector vs pyepoll DefaultSelector, select(0)
     with 1 ready fd among N idle (N = 10, 1000, 10000), and with 1024 ready;
  2. epoll.poll: select.epoll vs pyepoll.epoll, same sets;
  3. Poller.wait vs select.epoll.poll, same sets;
  4. the floor: lib.pe_poller_wait called through cffi with nothing built
     from its result (the kernel's share plus one cffi call);
  5. asyncio echo: 1 KiB messages over 64 connections, one in flight per
     connection, a fixed message count; the server runs on
     pyepoll.new_event_loop() or on asyncio's default loop in a child
     process, the client (the same for both) in this one.

Timings are medians of repeats (21 samples of ~20 ms each by default),
interleaved so drift hits every row alike, on one pinned CPU; ratios are to
the stdlib row.  Usage:

    python -m pyepoll.bench dropins [--quick] [--repeats 21] [--echo-runs 3]
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import resource
import select
import selectors
import socket
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import pyepoll
from pyepoll import selectors as pesel
from pyepoll._binding import ffi, lib

from ._proc import raise_nofile
from ._servers import _env

# -- table ----------------------------------------------------------------------


def fmt_time(seconds: float) -> str:
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def print_table(title: str, columns: Sequence[str],
                rows: Dict[str, Dict[str, float]], reference: str,
                fmt: Callable[[float], str] = fmt_time) -> None:
    print(f"\n{title}")
    print(f"  (median per call; x = ratio to '{reference}', lower is better)")
    name_w = max(len(r) for r in rows) + 2
    col_w = max(18, *(len(c) + 2 for c in columns))
    print(" " * name_w + "".join(c.rjust(col_w) for c in columns))
    for name, cells in rows.items():
        line = name.ljust(name_w)
        for col in columns:
            value = cells.get(col)
            if value is None:
                line += "n/a".rjust(col_w)
                continue
            text = fmt(value)
            ref = rows[reference].get(col)
            if name != reference and ref:
                text += f" {value / ref:.2f}x"
            line += text.rjust(col_w)
        print(line)


# -- descriptor sets ----------------------------------------------------------------


class FdSet:
    """n_idle idle socket ends plus n_ready ready ones (dups of one socket
    with a byte waiting, so each is a distinct readable descriptor)."""

    def __init__(self, n_idle: int, n_ready: int) -> None:
        self.pairs = [socket.socketpair() for _ in range((n_idle + 1) // 2)]
        self.idle = [s.fileno() for pair in self.pairs for s in pair][:n_idle]
        self.src, self.writer = socket.socketpair()
        self.writer.send(b"x")
        self.ready = [os.dup(self.src.fileno()) for _ in range(n_ready)]
        self.all = self.idle + self.ready

    def close(self) -> None:
        for fd in self.ready:
            os.close(fd)
        for a, b in self.pairs:
            a.close()
            b.close()
        self.src.close()
        self.writer.close()


def time_calls(fn: Callable[[], object], calls: int) -> float:
    """Seconds per call of fn over `calls` calls."""
    rng = range(calls)
    gc_was = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter()
        for _ in rng:
            fn()
        return (time.perf_counter() - t0) / calls
    finally:
        if gc_was:
            gc.enable()


def measure(candidates: Dict[str, Callable[[], object]], expected: int,
            repeats: int, budget: float = 0.02) -> Dict[str, float]:
    """Median seconds per call of each candidate; repeats interleaved."""
    for name, fn in candidates.items():
        got = fn()
        n = got if isinstance(got, int) else len(got)  # type: ignore[arg-type]
        if n != expected:
            raise SystemExit(f"{name}: {n} events, expected {expected}")
    calls = {}
    for name, fn in candidates.items():
        # Size each run to about `budget` seconds.
        k = 10
        while True:
            t = time_calls(fn, k) * k
            if t > budget / 4 or k > 10_000_000:
                break
            k *= 4
        calls[name] = max(10, int(k * budget / max(t, 1e-9)))
    samples: Dict[str, List[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            samples[name].append(time_calls(fn, calls[name]))
    return {name: statistics.median(s) for name, s in samples.items()}


# -- 1-4: waits -------------------------------------------------------------------


def wait_benchmarks(ns: Sequence[int], ready_counts: Sequence[int],
                    repeats: int) -> None:
    # One CPU for the whole comparison: no migrations between samples.
    affinity = None
    if hasattr(os, "sched_getaffinity"):
        affinity = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(affinity)})
    try:
        _wait_benchmarks(ns, ready_counts, repeats)
    finally:
        if affinity is not None:
            os.sched_setaffinity(0, affinity)


def _wait_benchmarks(ns: Sequence[int], ready_counts: Sequence[int],
                     repeats: int) -> None:
    cases: List[Tuple[str, int, int]] = [
        (f"N={n}", n, 1) for n in ns] + [
        (f"{r} ready", 0, r) for r in ready_counts]
    columns = [c[0] for c in cases]
    sel_rows: Dict[str, Dict[str, float]] = {}
    ep_rows: Dict[str, Dict[str, float]] = {}
    poller_rows: Dict[str, Dict[str, float]] = {}
    for column, n_idle, n_ready in cases:
        raise_nofile(2 * (n_idle + n_ready) + 200)
        fds = FdSet(n_idle, n_ready)
        objs: List[object] = []
        try:
            std_sel = selectors.EpollSelector()
            pe_sel = pesel.DefaultSelector()
            std_ep = select.epoll()
            pe_ep = pyepoll.epoll()
            poller = pyepoll.Poller("epoll")
            objs = [std_sel, pe_sel, std_ep, pe_ep, poller]
            for fd in fds.all:
                std_sel.register(fd, selectors.EVENT_READ)
                pe_sel.register(fd, selectors.EVENT_READ)
                std_ep.register(fd, select.EPOLLIN)
                pe_ep.register(fd, select.EPOLLIN)
                poller.register(fd, pyepoll.READ)

            # The floor: the C wait through cffi on a poller with the same
            # registrations, nothing built from what it returns.
            err = ffi.new("int *")
            raw = ffi.gc(lib.pe_poller_new(b"epoll", 0, err), lib.pe_poller_free)
            for fd in fds.all:
                lib.pe_poller_register(raw, fd, lib.PE_READ)
            cap = max(len(fds.all), 1)
            buf = ffi.new("struct pe_event[]", cap)
            wait = lib.pe_poller_wait

            def floor() -> int:
                return wait(raw, buf, cap, 0)

            maxev = max(len(fds.all), 1)
            std_sel_select = std_sel.select
            pe_sel_select = pe_sel.select
            std_poll = std_ep.poll
            pe_poll = pe_ep.poll
            pwait = poller.wait
            sel_rows_now = measure({
                "selectors.EpollSelector": lambda: std_sel_select(0),
                "pyepoll DefaultSelector": lambda: pe_sel_select(0),
                "floor: cffi pe_poller_wait": floor,
            }, n_ready, repeats)
            ep_now = measure({
                "select.epoll.poll": lambda: std_poll(0, maxev),
                "pyepoll.epoll.poll": lambda: pe_poll(0, maxev),
                "floor: cffi pe_poller_wait": floor,
            }, n_ready, repeats)
            poller_now = measure({
                "select.epoll.poll": lambda: std_poll(0, maxev),
                "pyepoll.Poller.wait": lambda: pwait(0),
                "floor: cffi pe_poller_wait": floor,
            }, n_ready, repeats)
            for rows, now in ((sel_rows, sel_rows_now), (ep_rows, ep_now),
                              (poller_rows, poller_now)):
                for name, value in now.items():
                    rows.setdefault(name, {})[column] = value
        finally:
            for obj in objs:
                obj.close()  # type: ignore[attr-defined]
            fds.close()
        print(f"  measured {column}", file=sys.stderr)

    print_table("selectors: select(0), 1 ready among N idle / R ready "
                "(target: pyepoll <= 0.75x)", columns, sel_rows,
                "selectors.EpollSelector")
    print_table("epoll.poll(0, maxevents=registered) (target: within 1.10x)",
                columns, ep_rows, "select.epoll.poll")
    print_table("Poller.wait(0) vs select.epoll.poll(0)", columns,
                poller_rows, "select.epoll.poll")


# -- 5: asyncio echo ------------------------------------------------------------------

MSG = 1024


def echo_server(loop_name: str) -> None:
    """Child process: serve until every connection has closed, then print
    this process's CPU seconds (user, sys) spent serving."""
    if loop_name == "pyepoll":
        loop = pyepoll.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            transport.get_extra_info("socket").setsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)  # type: ignore[attr-defined]

    async def main() -> None:
        server = await loop.create_server(Echo, "127.0.0.1", 0, backlog=1024)
        print(server.sockets[0].getsockname()[1], flush=True)
        line = await loop.run_in_executor(None, sys.stdin.readline)
        assert line.strip() == "go"
        before = resource.getrusage(resource.RUSAGE_SELF)
        line = await loop.run_in_executor(None, sys.stdin.readline)
        after = resource.getrusage(resource.RUSAGE_SELF)
        print(after.ru_utime - before.ru_utime,
              after.ru_stime - before.ru_stime, flush=True)
        server.close()

    loop.run_until_complete(main())
    loop.close()


async def echo_client(port: int, conns: int, per_conn: int) -> float:
    loop = asyncio.get_running_loop()
    payload = b"m" * MSG

    class Client(asyncio.Protocol):
        def __init__(self) -> None:
            self.left = per_conn
            self.pending = 0
            self.done = loop.create_future()

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            transport.get_extra_info("socket").setsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def start(self) -> None:
            self.pending = MSG
            self.transport.write(payload)  # type: ignore[attr-defined]

        def data_received(self, data: bytes) -> None:
            self.pending -= len(data)
            if self.pending:
                return
            self.left -= 1
            if self.left:
                self.pending = MSG
                self.transport.write(payload)  # type: ignore[attr-defined]
            elif not self.done.done():
                self.done.set_result(None)

    clients = []
    for _ in range(conns):
        _, proto = await loop.create_connection(Client, "127.0.0.1", port)
        clients.append(proto)
    t0 = time.perf_counter()
    for c in clients:
        c.start()
    await asyncio.gather(*(c.done for c in clients))
    elapsed = time.perf_counter() - t0
    for c in clients:
        c.transport.close()
    return elapsed


def echo_benchmark(runs: int, conns: int, per_conn: int) -> None:
    total = conns * per_conn
    samples: Dict[str, Dict[str, List[float]]] = {}
    for _ in range(runs):
        for name in ("asyncio default loop", "pyepoll.new_event_loop()"):
            loop_name = "pyepoll" if name.startswith("pyepoll") else "asyncio"
            proc = subprocess.Popen(
                [sys.executable, "-m", "pyepoll.bench.dropins", "--echo-server",
                 loop_name], env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                text=True)
            try:
                assert proc.stdout is not None and proc.stdin is not None
                port = int(proc.stdout.readline())
                proc.stdin.write("go\n")
                proc.stdin.flush()
                elapsed = asyncio.run(echo_client(port, conns, per_conn))
                proc.stdin.write("stop\n")
                proc.stdin.flush()
                user, sys_ = map(float, proc.stdout.readline().split())
                proc.wait(30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            s = samples.setdefault(name, {"rate": [], "cpu": [], "user": [],
                                          "sys": []})
            s["rate"].append(total / elapsed)
            s["cpu"].append((user + sys_) / total)
            s["user"].append(user / total)
            s["sys"].append(sys_ / total)
    print(f"\nasyncio echo: {conns} connections x {per_conn} round trips of "
          f"{MSG} B, one in flight per connection ({runs} runs, medians; "
          f"client: stdlib asyncio in the parent)")
    ref = "asyncio default loop"
    head = ["round trips/s", "server CPU/msg", "user/msg", "sys/msg"]
    print(" " * 28 + "".join(h.rjust(20) for h in head))
    for name, s in samples.items():
        med = {k: statistics.median(v) for k, v in s.items()}
        refmed = {k: statistics.median(v) for k, v in samples[ref].items()}
        cells = []
        for key in ("rate", "cpu", "user", "sys"):
            text = (f"{med[key]:,.0f}" if key == "rate"
                    else fmt_time(med[key]))
            if name != ref and refmed[key]:
                text += f" {med[key] / refmed[key]:.2f}x"
            cells.append(text.rjust(20))
        print(name.ljust(28) + "".join(cells))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyepoll.bench dropins",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats and a shorter echo run")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--echo-runs", type=int, default=None)
    parser.add_argument("--skip-echo", action="store_true")
    parser.add_argument("--echo-server", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.echo_server:
        echo_server(args.echo_server)
        return 0
    repeats = args.repeats or (5 if args.quick else 21)
    echo_runs = args.echo_runs or (1 if args.quick else 3)
    print(f"pyepoll {pyepoll.__version__} drop-in benchmark: Python "
          f"{platform.python_version()}, {platform.system()} "
          f"{platform.release()}, {os.cpu_count()} CPUs")
    wait_benchmarks([10, 1000, 10000], [1024], repeats)
    if not args.skip_echo:
        echo_benchmark(echo_runs, 64, 100 if args.quick else 500)
    return 0


if __name__ == "__main__":
    sys.exit(main())

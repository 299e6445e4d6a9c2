"""wait-scaling: the cost of one wait that returns 1 ready fd while N idle
fds are watched.  select and poll hand the kernel the whole set on every
call, so their cost grows with N; epoll and kqueue keep the interest list in
the kernel, so theirs stays flat."""
from __future__ import annotations

import argparse
import os
import select
import selectors
import socket
import time
from typing import Callable, Dict, List, Tuple

import pyepoll

from . import _cli
from ._proc import raise_nofile
from ._report import Chart, Section, Table, check_line

FD_SETSIZE = 1024
DEFAULT_NS = [10, 100, 1000, 5000, 10000, 15000]


class FdSet:
    """N idle watched descriptors (both ends of idle socketpairs) and one
    socket with a byte waiting."""

    def __init__(self, n: int) -> None:
        self.pairs = [socket.socketpair() for _ in range(max(0, n - 1) // 2)]
        self.idle = [s for pair in self.pairs for s in pair]
        if (n - 1) % 2:
            extra = socket.socketpair()
            self.pairs.append(extra)
            self.idle.append(extra[0])
        self.ready, self.writer = socket.socketpair()
        self.writer.send(b"x")
        self.fds = [s.fileno() for s in self.idle] + [self.ready.fileno()]

    def close(self) -> None:
        for a, b in self.pairs:
            a.close()
            b.close()
        self.ready.close()
        self.writer.close()


Waiter = Callable[[], object]


def _candidates(fdset: FdSet) -> Dict[str, Tuple[Waiter, Callable[[], None]]]:
    """name -> (one wait call, cleanup).  Each waits with timeout 0 on a set
    where exactly one fd is ready."""
    fds = fdset.fds
    out: Dict[str, Tuple[Waiter, Callable[[], None]]] = {}
    small = max(fds) < FD_SETSIZE

    if small:
        out["select.select"] = (lambda: select.select(fds, [], [], 0), lambda: None)
    if hasattr(select, "poll"):
        p = select.poll()
        for fd in fds:
            p.register(fd, select.POLLIN)
        out["select.poll"] = (lambda: p.poll(0), lambda: None)
    if hasattr(select, "epoll"):
        ep = select.epoll()
        for fd in fds:
            ep.register(fd, select.EPOLLIN)
        out["select.epoll"] = (lambda: ep.poll(0), ep.close)
    if hasattr(select, "kqueue"):
        kq = selectors.KqueueSelector()
        for fd in fds:
            kq.register(fd, selectors.EVENT_READ)
        out["selectors.Kqueue"] = (lambda: kq.select(0), kq.close)

    std = [("selectors.Poll", selectors.PollSelector)]
    if small:
        std.insert(0, ("selectors.Select", selectors.SelectSelector))
    if hasattr(selectors, "EpollSelector"):
        std.append(("selectors.Epoll", selectors.EpollSelector))
    for name, cls in std:
        sel = cls()
        for fd in fds:
            sel.register(fd, selectors.EVENT_READ)
        out[name] = (lambda sel=sel: sel.select(0), sel.close)

    for backend in pyepoll.available_backends():
        if backend == "select" and not small:
            continue
        poller = pyepoll.Poller(backend)
        for fd in fds:
            poller.register(fd, pyepoll.READ)
        out[f"pyepoll.Poller({backend})"] = (lambda p=poller: p.wait(0), poller.close)

    try:
        from .. import selectors as pysel  # the drop-in, where built
    except ImportError:
        pysel = None
    if pysel is not None:
        for cls_name in ("SelectSelector", "PollSelector", "EpollSelector", "KqueueSelector"):
            cls = getattr(pysel, cls_name, None)
            if cls is None or (cls_name == "SelectSelector" and not small):
                continue
            sel = cls()
            for fd in fds:
                sel.register(fd, selectors.EVENT_READ)
            out[f"pyepoll.selectors.{cls_name[:-8]}"] = (lambda sel=sel: sel.select(0), sel.close)
    return out


def _check(name: str, result: object, ready_fd: int) -> None:
    """Every implementation must report exactly the one ready fd."""
    if isinstance(result, tuple):                  # select.select
        got = [f if isinstance(f, int) else f.fileno() for f in result[0]]
    else:
        got = []
        for item in result:                        # type: ignore[union-attr]
            first = item[0]
            got.append(first.fd if hasattr(first, "fd") else first)
    if got != [ready_fd]:
        raise AssertionError(f"{name}: expected [{ready_fd}], got {got}")


def _time_calls(fn: Waiter, budget_s: float) -> float:
    """Microseconds per call, from a loop sized to take about budget_s."""
    calls = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        elapsed = time.perf_counter() - t0
        if elapsed >= budget_s or calls >= 1 << 22:
            return elapsed / calls * 1e6
        calls *= 4 if elapsed < budget_s / 16 else 2


def run(ns: List[int], repeats: int, budget_s: float) -> Table:
    """Each repeat sweeps every N afresh (new descriptors, new pollers),
    so a burst of load from elsewhere lands on one sample of each N rather
    than on every sample of one N; within a set, implementations alternate.
    The process stays on one CPU meanwhile (no migrations mid-loop)."""
    limit = raise_nofile(max(ns) + 256)
    table = Table("wait-scaling: one wait, 1 ready fd among N watched",
                  "us per call", ns, reference="select.epoll"
                  if hasattr(select, "epoll") else "selectors.Kqueue")
    fits = [n for n in ns if n + 64 <= limit]
    for n in ns:
        if n not in fits:
            table.notes.append(f"N={n} skipped: RLIMIT_NOFILE is {limit}")
    try:
        saved = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(saved)})
    except (AttributeError, OSError):
        saved = None
    try:
        for r in range(repeats):
            for n in fits:
                fdset = FdSet(n)
                cands = _candidates(fdset)
                try:
                    if r == 0:
                        for name, (fn, _) in cands.items():
                            _check(name, fn(), fdset.ready.fileno())
                    names = list(cands)     # unrotated in round 0: row order
                    shift = r % len(names)
                    for name in names[shift:] + names[:shift]:
                        table.add(name, n, _time_calls(cands[name][0], budget_s))
                finally:
                    for _, close in cands.values():
                        close()
                    fdset.close()
    finally:
        if saved is not None:
            os.sched_setaffinity(0, saved)
    if any(n >= FD_SETSIZE for n in ns):
        table.notes.append("select() cannot watch fds >= FD_SETSIZE (1024): n/a above")
    return table


def summary(table: Table) -> List[str]:
    """The claims issue 6 makes, as measured."""
    lines = []
    poller = "pyepoll.Poller(epoll)"
    ns = [n for n in table.points if table.cell(poller, n)]
    if ns:
        first, last = table.cell(poller, ns[0]), table.cell(poller, ns[-1])
        meds = [table.cell(poller, n).median for n in ns]  # type: ignore[union-attr]
        lines.append(check_line(f"{poller} N={ns[-1]} vs N={ns[0]} (flat: no growth "
                                f"beyond 20%)", last.median / first.median, 1.2, "<="))  # type: ignore[union-attr]
        lines.append(f"{poller} largest/smallest median over every N: "
                     f"{max(meds) / min(meds):.2f}x (noise included)")
        worst = max(table.ratio(poller, n) or 0 for n in ns)
        lines.append(check_line(f"{poller} vs {table.reference}, worst N",
                                worst, 1.0, "<="))
    for slow in ("select.select", "select.poll"):
        a, b = table.cell(slow, 1000), table.cell(table.reference or "", 1000)
        if a and b and a.samples and b.samples:
            lines.append(check_line(f"N=1000: {slow} vs {table.reference}",
                                    a.median / b.median, 50, ">="))
        else:
            lines.append(f"N=1000: {slow} vs {table.reference}: not measured")
    return lines


ALL_ARGS = ["--repeats", "5", "--budget", "0.02"]


def build() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pyepoll.bench wait-scaling",
                                 description=__doc__)
    ap.add_argument("--n", type=int, nargs="+", default=DEFAULT_NS,
                    help="numbers of watched fds")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--budget", type=float, default=0.05,
                    help="seconds per timed loop")
    ap.add_argument("--plot", metavar="FILE.png")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny and short: check every implementation answers")
    return ap


def run_section(args: argparse.Namespace) -> Section:
    if args.smoke:
        args.n, args.repeats, args.budget = [10, 200], 2, 0.005
    table = run(args.n, args.repeats, args.budget)
    mode = "smoke mode: tiny and short; " if args.smoke else ""
    sec = Section("wait-scaling", intro=[
        f"{mode}wait(timeout=0) on a set of N watched fds of which exactly one is "
        f"readable; every implementation first reported exactly that fd; "
        f"{args.repeats} interleaved repeats of ~{args.budget * 1e3:g} ms loops"])
    sec.tables.append(table)
    sec.summary = summary(table)
    sec.charts.append(Chart(table, "wait", logx=True, logy=True, xlabel="watched fds (N)"))
    return sec


def main(argv: List[str] | None = None) -> int:
    return _cli.main("wait-scaling", build, run_section, argv)

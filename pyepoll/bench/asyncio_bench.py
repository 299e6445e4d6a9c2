"""asyncio: the event loops side by side on echo, 1 KiB messages over 64
connections by default: asyncio Protocol, BufferedProtocol and streams
(asyncio.start_server), each on the stdlib's loop, on pyepoll's selector
loop (the stdlib loop on pyepoll's selector), on pyepoll's loop (its
transports are C connections) and on uvloop, with the plain C epoll server
as the floor no Python server can pass; and an HTTP hello parsed with
httptools (keep-alive GETs) on the same loops.  The load client is compiled C,
pinned to its own core; the figure that separates servers on two cores is
server CPU per message."""
from __future__ import annotations

import argparse
import platform
from typing import Dict, List, Optional, Sequence

from . import _cli
from ._proc import Run, run_loadgen
from ._report import Section, Table, check_line
from ._servers import C_ECHO, Fleet, asyncio_servers

FLAVOURS = ("Protocol", "BufferedProtocol", "streams")


def build() -> argparse.ArgumentParser:
    ap = _cli.parser("asyncio", __doc__, seconds=2.0, repeats=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024])
    ap.add_argument("--conns", type=int, nargs="+", default=[64])
    ap.add_argument("--servers", nargs="+",
                    help="substrings of server names to run (plain C and "
                         "the uvloop rows always run)")
    return ap


def _median(runs: Sequence[Run], key) -> Optional[float]:
    vals = sorted(key(r) for r in runs)
    return vals[len(vals) // 2] if vals else None


def run(args: argparse.Namespace) -> Section:
    if args.smoke:
        args.sizes, args.conns = [1024], [8]
        args.seconds, args.repeats = 0.2, 1
    points = [(s, c) for s in args.sizes for c in args.conns]
    # HTTP: keep-alive GETs, one in flight per connection (size 0 marks it).
    http_points = [(0, c) for c in args.conns]
    specs = asyncio_servers()
    fleet = Fleet(specs, only=args.servers,
                  always=[C_ECHO] + [n for n in specs if n.startswith("uvloop")])

    def measure(name, p):
        http = specs[name].protocol == "http"
        if http != (p[0] == 0):
            return None
        return run_loadgen(fleet.procs[name], "http" if http else "echo",
                           p[1], args.seconds, 1 if http else p[0])

    try:
        results = _cli.interleave(fleet, points + http_points, args.repeats,
                                  measure)
    finally:
        fleet.stop()

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
    for name, by_point in results.items():
        for (size, conns), runs in by_point.items():
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
    sec.tables += [cpu, user, thr, p99, hcpu, hthr]
    note = _cli.client_note(results)
    if note:
        sec.tables[0].notes.append(note)
    sec.summary = summary(results, points[0], http_points[0])
    sec.skipped = fleet.skip_notes()
    return sec


def summary(results: Dict[str, Dict[object, List[Run]]], point,
            http_point) -> List[str]:
    """Issue 14's targets at the first point (1 KiB x 64 by default)."""
    def med(name: str, at=point) -> Optional[float]:
        return _median(results.get(name, {}).get(at, []),
                       lambda r: r.cpu_per_op_us)

    def ratio(a: str, b: str, at=point) -> Optional[float]:
        x, y = med(a, at), med(b, at)
        return x / y if x is not None and y else None

    out = [f"server CPU per message at {point[0]} B x {point[1]} (medians):"]
    floor = ratio(C_ECHO, "uvloop Protocol")
    if floor is not None:
        out.append(f"floor: plain C epoll (no Python) vs uvloop Protocol: "
                   f"{floor:.2f}x")
    out += [
        check_line("pyepoll loop Protocol vs uvloop",
                   ratio("pyepoll loop Protocol", "uvloop Protocol"), 0.85, "<="),
        check_line("pyepoll loop Protocol vs plain C",
                   ratio("pyepoll loop Protocol", C_ECHO), 1.2, "<="),
        check_line("pyepoll loop BufferedProtocol vs uvloop",
                   ratio("pyepoll loop BufferedProtocol",
                         "uvloop BufferedProtocol"), 0.8, "<="),
        check_line("pyepoll loop streams vs uvloop",
                   ratio("pyepoll loop streams", "uvloop streams"), 0.9, "<="),
        check_line("pyepoll loop httptools hello vs uvloop (CPU/request)",
                   ratio("pyepoll loop httptools", "uvloop httptools",
                         http_point), 0.9, "<="),
        # Issue 14 asks PyPy for <= 0.7x its stdlib loop (no uvloop there).
        check_line("pyepoll loop Protocol vs stdlib asyncio",
                   ratio("pyepoll loop Protocol", "asyncio Protocol"),
                   0.7 if platform.python_implementation() == "PyPy" else 1.0,
                   "<="),
    ]
    return out


def main(argv: Optional[List[str]] = None) -> int:
    return _cli.main("asyncio", build, run, argv)

"""asyncio: the event loops side by side on echo, 1 KiB messages over 64
connections by default: asyncio Protocol, BufferedProtocol and streams
(asyncio.start_server), each on the stdlib's loop, on pyepoll's selector
loop (the stdlib loop on pyepoll's selector), on pyepoll's loop (its
transports are C connections) and on uvloop, with the plain C epoll server
as the floor no Python server can pass.  The load client is compiled C,
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
    specs = asyncio_servers()
    fleet = Fleet(specs, only=args.servers,
                  always=[C_ECHO] + [n for n in specs if n.startswith("uvloop")])
    try:
        results = _cli.interleave(fleet, points, args.repeats, lambda name, p: run_loadgen(
            fleet.procs[name], "echo", p[1], args.seconds, p[0]))
    finally:
        fleet.stop()

    sec = Section("asyncio", intro=_cli.standard_intro(args))
    sec.intro.append("every server first echoed 7 B and 200 KB byte-exact; "
                     "the load client checks every byte it gets back")
    cols = [f"{s} B x {c}" for s, c in points]
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
            col = f"{size} B x {conns}"
            for r in runs:
                thr.add(name, col, r.rate)
                cpu.add(name, col, r.cpu_per_op_us)
                user.add(name, col, r.user_per_op_us)
                p99.add(name, col, r.p99)
    sec.tables += [cpu, user, thr, p99]
    note = _cli.client_note(results)
    if note:
        sec.tables[0].notes.append(note)
    sec.summary = summary(results, points[0])
    sec.skipped = fleet.skip_notes()
    return sec


def summary(results: Dict[str, Dict[object, List[Run]]], point) -> List[str]:
    """Issue 14's targets at the first point (1 KiB x 64 by default)."""
    def med(name: str) -> Optional[float]:
        return _median(results.get(name, {}).get(point, []),
                       lambda r: r.cpu_per_op_us)

    def ratio(a: str, b: str) -> Optional[float]:
        x, y = med(a), med(b)
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
        # Issue 14 asks PyPy for <= 0.7x its stdlib loop (no uvloop there).
        check_line("pyepoll loop Protocol vs stdlib asyncio",
                   ratio("pyepoll loop Protocol", "asyncio Protocol"),
                   0.7 if platform.python_implementation() == "PyPy" else 1.0,
                   "<="),
    ]
    return out


def main(argv: Optional[List[str]] = None) -> int:
    return _cli.main("asyncio", build, run, argv)

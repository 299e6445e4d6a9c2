"""What every scenario shares on its command line, and the loop that times
servers side by side."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Dict, List, Optional, Sequence, TypeVar

from ._proc import (STEAL_NOTED_MS, STEAL_REMEASURE, Run, Skip, pinning_note,
                    saturation_note, steal_note)
from ._report import Section, have_matplotlib
from ._servers import Fleet, server_python_description, set_server_python

T = TypeVar("T")


def parser(prog: str, doc: Optional[str], seconds: float, repeats: int) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=f"python -m pyepoll.bench {prog}",
                                 description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=seconds,
                    help="length of one timed run (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=repeats,
                    help="runs per point, interleaved across servers; tables "
                         "show the median and min-max (default: %(default)s)")
    ap.add_argument("--plot", metavar="FILE.png",
                    help="draw the chart(s); more than one get -NAME suffixes")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny and short: check every compared server answers "
                         "correctly, time each once")
    ap.add_argument("--python", metavar="PATH",
                    help="interpreter to run the Python servers with, e.g. a "
                         "PyPy venv's python with pyepoll installed there "
                         "(default: this one); C servers are unaffected")
    return ap


def use_python(path: Optional[str]) -> None:
    """Apply --python (before any server starts); exit with the reason if
    that interpreter cannot run pyepoll."""
    try:
        set_server_python(path)
    except ValueError as e:
        raise SystemExit(str(e)) from None


def main(prog: str, build: Callable[[], argparse.ArgumentParser],
         run: Callable[[argparse.Namespace], Section],
         argv: Optional[Sequence[str]]) -> int:
    args = build().parse_args(argv)
    use_python(getattr(args, "python", None))
    section = run(args)
    print(section.render(), flush=True)
    if args.plot:
        if not have_matplotlib():
            print("--plot: matplotlib not installed (pip install pyepoll-io[bench])",
                  file=sys.stderr)
            return 2
        for path in section.plot(args.plot):
            print(f"chart: {path}")
    return 0


def interleave(fleet: Fleet, points: Sequence[T], repeats: int,
               measure: Callable[[str, T], Optional[Run]],
               progress: bool = True) -> Dict[str, Dict[T, List[Run]]]:
    """Every (point, server) once per repeat, servers rotating so that no
    server always runs first or last; a server that dies is reported and
    left out of later runs."""
    names = fleet.checked()
    out: Dict[str, Dict[T, List[Run]]] = {n: {} for n in names}
    for r in range(repeats):
        for point in points:
            shift = r % max(len(names), 1)
            for name in names[shift:] + names[:shift]:
                proc = fleet.procs[name]
                if not proc.alive():
                    fleet.skipped.setdefault(name, f"died: {proc.tail()[-200:]}")
                    continue
                try:
                    run = _measure_unstolen(name, point, measure, progress)
                except Skip as e:
                    fleet.skipped.setdefault(name, str(e))
                    continue
                if run is None:
                    continue
                out[name].setdefault(point, []).append(run)
                if progress:
                    print(f"  [{r + 1}/{repeats}] {name:30} {point!s:>12}: "
                          f"{run.rate:11,.0f}/s  cpu {run.cpu_per_op_us:7.2f} us/op  "
                          f"client {run.client_load:4.0%}"
                          + (f"  steal {run.steal_ms:,.0f} ms"
                             if run.steal_ms >= STEAL_NOTED_MS else ""),
                          file=sys.stderr, flush=True)
    return out


def _measure_unstolen(name: str, point: T,
                      measure: Callable[[str, T], Optional[Run]],
                      progress: bool) -> Optional[Run]:
    """measure(name, point), again (up to STEAL_REMEASURE times) while the
    host stole STEAL_NOTED_MS or more during it; the least stolen run is
    kept, with how many were thrown away."""
    best: Optional[Run] = None
    for attempt in range(STEAL_REMEASURE + 1):
        run = measure(name, point)
        if run is None:
            return best
        if run.bad:
            raise AssertionError(f"{name} at {point}: {run.bad} wrong "
                                 f"bytes/responses under load")
        if best is None or run.steal_ms < best.steal_ms:
            best = run
        best.remeasured = attempt
        if best.steal_ms < STEAL_NOTED_MS:
            break
        if progress and attempt < STEAL_REMEASURE:
            print(f"      {name} {point!s}: steal {run.steal_ms:,.0f} ms, "
                  f"measured again", file=sys.stderr, flush=True)
    return best


def standard_intro(args: argparse.Namespace, extra: str = "") -> List[str]:
    mode = "smoke mode: tiny and short, correctness first; " if args.smoke else ""
    return [f"{mode}{args.seconds:g} s per run x {args.repeats} interleaved repeats; "
            f"{pinning_note()}" + (f"; {extra}" if extra else ""),
            f"Python servers run on: {server_python_description()}",
            "server CPU: run time of the server's threads in ns from /proc "
            "(clock ticks where threads came and went during a run), split "
            "into user and system by the tick counts"]


def client_note(results: Dict[str, Dict[T, List[Run]]], what: str = "throughput") -> Optional[str]:
    """Was the client the bottleneck; and did the host stall the runs."""
    runs = [run for by_point in results.values() for rs in by_point.values() for run in rs]
    notes = [n for n in (saturation_note(runs, what), steal_note(runs)) if n]
    return "; ".join(notes) or None

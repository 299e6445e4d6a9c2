"""trigger: edge- vs level-triggered loops on the same workloads.

Level-triggered epoll reports a ready socket on every wait until it is
drained; edge-triggered reports a change once, and the loop must then read
(and accept) until the kernel says EAGAIN.  Each loop that offers both is
run both ways: the plain C epoll server, pyepoll.Loop (Python handler and C
echo path) and the reference server (echo and HTTP).  Workloads: 1 KiB
echo over 64 connections, 64 KiB echo over one connection (where a level
loop gets one event per buffer), HTTP keep-alive over 64 connections."""
from __future__ import annotations

import argparse
from typing import List, Optional

from . import _cli
from ._proc import Run, run_loadgen
from ._report import Chart, Section, Table
from ._servers import CECHO, PY_HANDLERS, Fleet, trigger_servers

ALL_ARGS = ["--seconds", "1", "--repeats", "3"]
# workload -> (protocol, loadgen mode, connections, size or depth)
WORKLOADS = {
    "echo 1 KiB x64": ("echo", "echo", 64, 1024),
    "echo 64 KiB x1": ("echo", "echo", 1, 65536),
    "http keep-alive x64": ("http", "http", 64, 1),
}
LOOPS = ["plain C epoll", *[name for name, _ in PY_HANDLERS], CECHO,
         "ref server echo", "ref server http"]


def build() -> argparse.ArgumentParser:
    ap = _cli.parser("trigger", __doc__, seconds=2.0, repeats=5)
    ap.add_argument("--servers", nargs="+", help="substrings of server names to run")
    return ap


def run(args: argparse.Namespace) -> Section:
    workloads = dict(WORKLOADS)
    if args.smoke:
        args.seconds, args.repeats = 0.2, 1
        workloads = {"echo 1 KiB x8": ("echo", "echo", 8, 1024),
                     "echo 64 KiB x1": ("echo", "echo", 1, 65536),
                     "http keep-alive x8": ("http", "http", 8, 1)}
    fleet = Fleet(trigger_servers(), only=args.servers)
    specs = fleet.specs

    def measure(name: str, workload: str) -> Optional[Run]:
        proto, mode, conns, arg = workloads[workload]
        if specs[name].protocol != proto:
            return None
        return run_loadgen(fleet.procs[name], mode, conns, args.seconds, arg)

    try:
        results = _cli.interleave(fleet, list(workloads), args.repeats, measure)
    finally:
        fleet.stop()

    cols = list(workloads)
    thr = Table("trigger: throughput", "messages or requests/s", cols,
                lower_is_better=False)
    cpu = Table("trigger: server CPU per message or request", "us user+sys", cols)
    for name, by_w in results.items():
        for w, runs in by_w.items():
            for r in runs:
                thr.add(name, w, r.rate)
                cpu.add(name, w, r.cpu_per_op_us)
    # One row per loop: edge's median over level's, for each measure.
    ratio_cpu = Table("trigger: edge / level, server CPU per operation",
                      "ratio of medians (below 1: edge cheaper)", cols)
    ratio_thr = Table("trigger: edge / level, throughput",
                      "ratio of medians (above 1: edge faster)", cols,
                      lower_is_better=False)
    lines: List[str] = []
    for loop in LOOPS:
        for w in cols:
            for table, ratios in ((cpu, ratio_cpu), (thr, ratio_thr)):
                lv, ed = table.cell(f"{loop} level", w), table.cell(f"{loop} edge", w)
                if lv and ed and lv.samples and ed.samples and lv.median:
                    ratios.add(loop, w, ed.median / lv.median)
    for loop in LOOPS:
        vals = [ratio_cpu.cell(loop, w) for w in cols]
        got = [f"{w}: {c.median:.2f}" for w, c in zip(cols, vals) if c and c.samples]
        if got:
            lines.append(f"{loop}: edge/level CPU per op  " + ", ".join(got))
    note = _cli.client_note(results)
    if note:
        thr.notes.append(note)
    sec = Section("trigger", intro=_cli.standard_intro(args))
    sec.intro.append("every server first answered correctly (byte-exact echo / "
                     "HTTP 200) in both modes")
    sec.tables = [ratio_cpu, ratio_thr, cpu, thr]
    sec.charts = [Chart(ratio_cpu, "ratio-cpu", xlabel="workload")]
    sec.summary = lines
    sec.skipped = fleet.skip_notes()
    return sec


def main(argv: Optional[List[str]] = None) -> int:
    return _cli.main("trigger", build, run, argv)

"""http: "GET /" answered with a 14-byte hello, keep-alive (one request in
flight per connection; at 1, 4 and --conns connections) and pipelined (16 requests deep, where the kernel's
share per request shrinks and user-space cost shows).

Compared: the reference server (event loop; and thread per connection),
a uvloop + httptools server (if installed), an asyncio server with a small
hand parser, and nginx with one worker (if installed, on a temporary
configuration bound to loopback).  Load: wrk with one thread (if
installed), else the built-in compiled client; either way on its own core.
Reported: requests per second and the server's CPU time per request."""
from __future__ import annotations

import argparse
import subprocess
from typing import Dict, List, Optional

from . import _cli
from ._proc import Run, Skip, build as build_c, run_loadgen, run_wrk, wrk_path
from ._report import Chart, Section, Table, check_line
from ._servers import C_HTTP, REF_BUSY, UVLOOP_HTTP, Fleet, csrc, http_servers

REF = "ref server eventloop"
LOW_CONNS = (1, 4)
ALL_ARGS = ["--seconds", "2", "--repeats", "3"]


def build() -> argparse.ArgumentParser:
    ap = _cli.parser("http", __doc__, seconds=3.0, repeats=5)
    ap.add_argument("--conns", type=int, default=100,
                    help="connections (default: %(default)s)")
    ap.add_argument("--depth", type=int, default=16,
                    help="pipelined requests per connection in the "
                         "pipelined runs (default: %(default)s)")
    ap.add_argument("--client", choices=("auto", "wrk", "builtin"), default="auto",
                    help="load client: wrk if installed (auto), or the "
                         "built-in compiled one")
    ap.add_argument("--servers", nargs="+",
                    help="substrings of server names to run (the reference "
                         "rows always run)")
    return ap


def run(args: argparse.Namespace) -> Section:
    if args.smoke:
        args.seconds, args.repeats, args.conns = 0.3, 1, 8
        args.depth = min(args.depth, 4)
    use_wrk = args.client == "wrk" or (args.client == "auto" and wrk_path()
                                       and not args.smoke)
    keep, pipe = "keep-alive", f"pipelined x{args.depth}"
    # mode -> (connections, requests in flight per connection).  Keep-alive
    # also at 1 and 4 connections, where a server's every wakeup carries one
    # event (or a few): there the cost per wakeup decides (issue 15).
    modes = {f"{keep} {c}c": (c, 1) for c in sorted({*LOW_CONNS, args.conns})}
    keep = f"{keep} {args.conns}c"
    modes[pipe] = (args.conns, args.depth)

    def measure(name: str, mode: str) -> Run:
        proc = fleet.procs[name]
        conns, depth = modes[mode]
        if use_wrk:
            return run_wrk(proc, conns, args.seconds, depth)
        return run_loadgen(proc, "http", conns, args.seconds, depth)

    fleet = Fleet(http_servers(), only=args.servers,
                  always=[REF, UVLOOP_HTTP, C_HTTP])
    try:
        results = _cli.interleave(fleet, list(modes), args.repeats, measure)
    finally:
        fleet.stop()

    client = "wrk -t1" if use_wrk else "built-in C client"
    sec = Section("http", intro=_cli.standard_intro(
        args, f"{args.conns} connections (keep-alive also at "
              f"{', '.join(map(str, LOW_CONNS))}); client: {client}"))
    sec.intro.append("every server first answered a GET and 3 pipelined GETs "
                     "with 200 and the expected body; non-200 answers under "
                     "load fail the run")
    if not wrk_path():
        sec.skipped.append("wrk not installed: the built-in client was used")
    thr = Table("HTTP hello throughput", "requests/s", list(modes),
                reference=UVLOOP_HTTP, lower_is_better=False)
    cpu = Table("HTTP hello server CPU per request", "us user+sys", list(modes),
                reference=UVLOOP_HTTP)
    user = Table("HTTP hello server user-space CPU per request", "us user",
                 list(modes), reference=UVLOOP_HTTP)
    how = "as wrk measures it" if use_wrk else "per request; per batch when pipelined"
    lat = Table(f"HTTP latency p99 ({how})", "us", list(modes), reference=UVLOOP_HTTP)
    lat50 = Table(f"HTTP latency p50 ({how})", "us", list(modes), reference=UVLOOP_HTTP)
    batch = Table("HTTP requests per server sleep (requests / voluntary context "
                  "switches)", "requests", list(modes), reference=UVLOOP_HTTP,
                  lower_is_better=False)
    batch.notes.append(
        "how many requests a server serves each time it sleeps in its wait and is "
        "woken: CPU per request falls as this grows (the wakeup's cost is shared), "
        "and it is set by how fast the client sends as much as by the server, so "
        "CPU ratios at many connections move with the client; at 1 connection "
        "every request wakes the server")
    for name, by_mode in results.items():
        for mode, runs in by_mode.items():
            for r in runs:
                thr.add(name, mode, r.rate)
                cpu.add(name, mode, r.cpu_per_op_us)
                user.add(name, mode, r.user_per_op_us)
                if r.p99 == r.p99:
                    lat.add(name, mode, r.p99)
                if r.p50 == r.p50:
                    lat50.add(name, mode, r.p50)
                if r.ops_per_sleep == r.ops_per_sleep:
                    batch.add(name, mode, r.ops_per_sleep)
    note = _cli.client_note(results)
    if note:
        thr.notes.append(note)
    if not any(UVLOOP_HTTP in t.rows for t in (thr,)):
        for t in (thr, cpu, user, lat50, lat, batch):
            t.reference = REF
    sec.tables += [thr, cpu, user, batch, lat50, lat]
    sec.charts += [Chart(thr, "throughput"), Chart(cpu, "cpu"),
                   Chart(cpu, "cpu-pipelined", point=pipe), Chart(cpu, "cpu-keepalive", point=keep)]
    sec.summary = summary(results, keep, pipe)
    sec.summary += low_summary(results, [m for m in modes if m != pipe])
    sec.skipped += fleet.skip_notes()
    try:
        sec.summary.append(parser_speed(20_000 if args.smoke else 2_000_000))
    except Skip as e:
        sec.skipped.append(f"C parser micro-benchmark: {e}")
    return sec


def parser_speed(iterations: int) -> str:
    """The C request parser alone, on one core (source checkouts only)."""
    src = csrc()
    exe = build_c("http_parse", [src / "http" / "http.c"], ["-I", str(src / "include")])
    out = subprocess.run([str(exe), str(iterations)], capture_output=True, text=True,
                         timeout=120)
    if out.returncode != 0:
        raise AssertionError(f"http_parse failed: {out.stderr.strip()}")
    return "C request parser (csrc/http/http.c) alone: " + out.stdout.strip()


def summary(results: Dict[str, Dict[str, List[Run]]], keep: str, pipe: str) -> List[str]:
    """Issue 5's HTTP claims."""
    def med(name: str, mode: str, key) -> Optional[float]:
        vals = sorted(key(r) for r in results.get(name, {}).get(mode, []))
        return vals[len(vals) // 2] if vals else None

    def ratio(mode: str, key) -> Optional[float]:
        a, b = med(REF, mode, key), med(UVLOOP_HTTP, mode, key)
        return a / b if a is not None and b else None

    cpu = lambda r: r.cpu_per_op_us       # noqa: E731
    rate = lambda r: r.rate               # noqa: E731
    lines = [
        check_line(f"{REF} CPU/request vs {UVLOOP_HTTP}, {keep}", ratio(keep, cpu), 1.0, "<="),
        check_line(f"{REF} CPU/request vs {UVLOOP_HTTP}, {pipe}", ratio(pipe, cpu), 1.0, "<="),
        check_line(f"{REF} requests/s vs {UVLOOP_HTTP}, {pipe}", ratio(pipe, rate), 1.5, ">="),
    ]
    ng = med("nginx 1 worker", pipe, rate)
    ref = med(REF, pipe, rate)
    if ng and ref:
        lines.append(f"beside nginx 1 worker, {pipe}: {REF} at {ref / ng:.2f}x its requests/s")
    return lines


def low_summary(results: Dict[str, Dict[str, List[Run]]], keeps: List[str]) -> List[str]:
    """Issue 15: CPU per request at every keep-alive concurrency, as the
    median of per-repeat ratios (the runs of one repeat are seconds apart,
    so the machine's drift cancels); beside each, the plain C server's
    ratio in the same repeats: the floor no server goes below."""
    def per_repeat(name: str, mode: str) -> Optional[float]:
        ra = results.get(name, {}).get(mode, [])
        rb = results.get(UVLOOP_HTTP, {}).get(mode, [])
        ratios = sorted(a.cpu_per_op_us / b.cpu_per_op_us
                        for a, b in zip(ra, rb) if b.cpu_per_op_us)
        return ratios[len(ratios) // 2] if ratios else None

    out = []
    names = (REF, REF_BUSY) if REF_BUSY in results else (REF,)
    for mode in keeps:
        floor = per_repeat(C_HTTP, mode)
        for name in names:
            line = check_line(f"{name} CPU/request vs {UVLOOP_HTTP}, {mode} "
                              f"(per-repeat ratios)", per_repeat(name, mode),
                              0.9, "<=")
            if floor is not None:
                line += f"; floor ({C_HTTP}) {floor:.2f}x"
            out.append(line)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    return _cli.main("http", build, run, argv)

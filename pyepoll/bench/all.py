"""all: every scenario with short durations; writes OUT/report.md and, when
matplotlib is installed, a PNG chart per figure beside it.  With --smoke
each scenario runs tiny and short and checks every compared server
answered correctly first (the CI stage).  What could not run here
(uvloop, httptools, wrk, nginx, matplotlib not installed) is skipped and
said so, in the output and in the report."""
from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import io
import os
import sys
import time
import traceback
from typing import List, Optional, Tuple

from ._proc import pinning_note
from ._report import Section, have_matplotlib, machine

# scenario -> module; `all` runs them in this order.
ORDER = [("wait-scaling", "wait_scaling"), ("idle-clients", "idle_clients"),
         ("echo", "echo"), ("http", "http_bench"), ("trigger", "trigger")]


def build() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pyepoll.bench all", description=__doc__)
    ap.add_argument("--out", default="bench-results",
                    help="directory for report.md and the charts (default: %(default)s)")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny and short: correctness first (CI)")
    ap.add_argument("--only", nargs="+", choices=[n for n, _ in ORDER] + list(EXTRA),
                    help="run only these scenarios")
    ap.add_argument("--dropins", action="store_true",
                    help="also run the drop-ins and poller comparisons (quick)")
    ap.add_argument("--python", metavar="PATH",
                    help="interpreter to run the Python servers of the network "
                         "scenarios with (default: this one)")
    return ap


# Older scripts folded into the package, whose printed tables go into the
# report as they are: name -> (arguments, what they compare).
EXTRA = {
    "dropins": (["--quick", "--skip-echo"],
                "pyepoll.selectors / pyepoll.epoll / Poller.wait against the "
                "stdlib objects they replace"),
    "poller": (["--quick"],
               "Poller.wait and pyepoll.epoll.poll against select.epoll.poll, "
               "with the cffi floor and the kernel's share"),
}


def _run_printed(name: str, smoke: bool) -> Section:
    mod = importlib.import_module(f".{name}", __package__)
    argv, what = EXTRA[name]
    argv = argv + (["--repeats", "1"] if smoke else [])
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        mod.main(argv)
    return Section(name, intro=[f"{what} (python -m pyepoll.bench {name} "
                                f"{' '.join(argv)})"], raw=buf.getvalue())


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: Optional[List[str]] = None) -> int:
    shown = list(sys.argv[2:] if argv is None else argv)
    args = build().parse_args(argv)
    from ._cli import use_python
    use_python(args.python)
    os.makedirs(args.out, exist_ok=True)
    plots = have_matplotlib()
    started = time.monotonic()
    load0 = _loadavg()
    sections: List[Tuple[str, Optional[Section], Optional[str], float]] = []
    todo = [(n, m) for n, m in ORDER if not args.only or n in args.only]
    todo += [(n, n) for n in EXTRA if args.dropins or (args.only and n in args.only)]
    for name, modname in todo:
        t0 = time.monotonic()
        print(f"\n### {name}", flush=True)
        try:
            if name in EXTRA:
                sec = _run_printed(name, args.smoke)
            else:
                mod = importlib.import_module(f".{modname}", __package__)
                opts = mod.build().parse_args(["--smoke"] if args.smoke else mod.ALL_ARGS)
                run = getattr(mod, "run_section", mod.run)
                sec = run(opts)
            print(sec.render(), flush=True)
            sections.append((name, sec, None, time.monotonic() - t0))
        except Exception:
            err = traceback.format_exc()
            print(err, file=sys.stderr, flush=True)
            sections.append((name, None, err, time.monotonic() - t0))
    total = time.monotonic() - started

    lines = [f"# pyepoll benchmarks{' (smoke run)' if args.smoke else ''}", "",
             f"- machine: {machine()}",
             f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
             f"- command: `python -m pyepoll.bench all {' '.join(shown)}`",
             f"- {pinning_note()}",
             f"- total time: {total:.0f} s",
             f"- load average (1/5/15 min) at start: {load0}; at end: {_loadavg()} "
             f"(other processes on the machine are not controlled: medians of "
             f"interleaved repeats, min-max ranges show the spread)", ""]
    if not plots:
        lines += ["charts skipped: matplotlib not installed "
                  "(pip install pyepoll-io[bench])", ""]
    # The claims the issues make, gathered from every scenario's summary.
    claims = [(name, line) for name, sec, _, _ in sections if sec
              for line in sec.summary if "(target " in line]
    if claims:
        lines += ["## Claims checked", "",
                  "| scenario | claim: measured (target) | |", "|---|---|---|"]
        for name, line in claims:
            text, _, verdict = line.rpartition(" ")
            lines.append(f"| {name} | {text} | {verdict} |")
        lines.append("")
    failed = []
    skipped_all: List[str] = []
    for name, sec, err, secs in sections:
        if sec is None:
            failed.append(name)
            lines += [f"## {name}", "", f"FAILED after {secs:.0f} s:", "", "```",
                      (err or "").strip(), "```", ""]
            continue
        images = {}
        if plots and sec.charts:
            for path in sec.plot(os.path.join(args.out, f"{name}.png")):
                images[os.path.basename(path)] = os.path.basename(path)
        md = sec.markdown(images)
        lines += [md, f"_({name}: {secs:.0f} s)_", ""]
        skipped_all += [f"{name}: {s}" for s in sec.skipped]
    report = os.path.join(args.out, "report.md")
    with open(report, "w") as f:
        f.write("\n".join(lines))
    print(f"\nreport: {report}" + ("" if plots else "  (no charts: matplotlib not installed)"))
    for s in skipped_all:
        print(f"skipped: {s}")
    if not plots:
        print("skipped: charts (matplotlib not installed)")
    print(f"total: {total:.0f} s")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0

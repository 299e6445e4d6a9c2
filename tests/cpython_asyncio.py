"""Run CPython's own asyncio tests (the installed ``test.test_asyncio``
package; nothing is copied) with a chosen event loop as the loop under test,
and print the counts, so that pyepoll's loop can be compared with the
stdlib's module by module.

    python tests/cpython_asyncio.py --loop pyepoll test_events test_streams
    python tests/cpython_asyncio.py --loop stdlib test_events test_streams
    python tests/cpython_asyncio.py --loop pyepoll --compare test_streams

With ``--loop pyepoll`` every loop the tests make through the stdlib's
entry points is a :class:`pyepoll.asyncio_loop.EventLoop`:
``asyncio.new_event_loop()`` / ``asyncio.run()`` (the default policy's
loop factory) and ``asyncio.SelectorEventLoop(selector)`` (the selector
argument is ignored: the C loop's poller is the selector).  Loops the tests
build from asyncio's internals (``test_utils.TestLoop``, mocks of
``BaseSelectorEventLoop``) are the tests' own and unchanged.

``--compare`` runs each module with both loops (in child processes) and
lists the tests whose outcome differs.  Each module runs in its own child
with a time limit.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import unittest

DEFAULT_MODULES = [
    "test_events", "test_streams", "test_server", "test_buffered_proto",
    "test_sock_lowlevel", "test_sendfile", "test_protocols", "test_runners",
    "test_ssl", "test_sslproto", "test_subprocess", "test_base_events",
    "test_unix_events", "test_tasks", "test_taskgroups", "test_timeouts",
]


def use_pyepoll_loop() -> None:
    """Make the stdlib's loop entry points build pyepoll's loop."""
    from asyncio import unix_events
    from pyepoll.asyncio_loop import EventLoop

    class TestedLoop(EventLoop):
        def __init__(self, selector=None):
            super().__init__()

    TestedLoop.__name__ = TestedLoop.__qualname__ = "SelectorEventLoop"
    asyncio.SelectorEventLoop = TestedLoop
    unix_events.SelectorEventLoop = TestedLoop
    if hasattr(unix_events, "EventLoop"):       # 3.13+: the platform's loop
        asyncio.EventLoop = unix_events.EventLoop = TestedLoop
    policy = unix_events._UnixDefaultEventLoopPolicy
    policy._loop_factory = TestedLoop
    asyncio.set_event_loop_policy(None)


class Collector(unittest.TextTestResult):
    """Records the outcome of every test by id."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.outcomes = {}

    def addSuccess(self, test):
        super().addSuccess(test)
        self.outcomes[test.id()] = "pass"

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self.outcomes[test.id()] = "fail"

    def addError(self, test, err):
        super().addError(test, err)
        self.outcomes[test.id()] = "error"

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self.outcomes[test.id()] = "skip"

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self.outcomes[test.id()] = "xfail"

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self.outcomes[test.id()] = "xpass"


def run_module(module: str, loop: str, verbose: bool) -> dict:
    """Run one module in this process; return {test id: outcome}."""
    if loop == "pyepoll":
        use_pyepoll_loop()
    suite = unittest.defaultTestLoader.loadTestsFromName(
        f"test.test_asyncio.{module}")
    stream = sys.stderr if verbose else open(os.devnull, "w")
    runner = unittest.TextTestRunner(stream=stream, resultclass=Collector,
                                     verbosity=2 if verbose else 0)
    result = runner.run(suite)
    return result.outcomes


def child(module: str, loop: str, limit: float) -> dict:
    cmd = [sys.executable, __file__, "--child", "--loop", loop, module]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True,
                             timeout=limit)
    except subprocess.TimeoutExpired:
        return {"__module__": f"timeout after {limit:.0f} s"}
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"__module__": f"crashed (rc {out.returncode}): "
                          f"{out.stderr.strip().splitlines()[-1:]}"}


def counts(outcomes: dict) -> dict:
    c = {"pass": 0, "fail": 0, "error": 0, "skip": 0, "xfail": 0, "xpass": 0}
    for v in outcomes.values():
        if v in c:
            c[v] += 1
    return c


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("modules", nargs="*", default=DEFAULT_MODULES)
    ap.add_argument("--loop", choices=["pyepoll", "stdlib"], default="pyepoll")
    ap.add_argument("--compare", action="store_true",
                    help="run each module on both loops and list differences")
    ap.add_argument("--limit", type=float, default=600.0,
                    help="seconds a module may take")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_module(args.modules[0], args.loop, args.verbose)))
        return 0
    loops = ["stdlib", "pyepoll"] if args.compare else [args.loop]
    total = {lp: counts({}) for lp in loops}
    for module in args.modules:
        t0 = time.monotonic()
        res = {lp: child(module, lp, args.limit) for lp in loops}
        line = [f"{module:22}"]
        for lp in loops:
            if "__module__" in res[lp]:
                line.append(f"{lp}: {res[lp]['__module__']}")
                continue
            c = counts(res[lp])
            for k in c:
                total[lp][k] += c[k]
            line.append(f"{lp}: {c['pass']} pass {c['fail']} fail "
                        f"{c['error']} error {c['skip']} skip")
        print("  ".join(line) + f"  ({time.monotonic() - t0:.0f} s)",
              flush=True)
        if args.compare and all("__module__" not in r for r in res.values()):
            for tid in sorted(set(res["stdlib"]) | set(res["pyepoll"])):
                a, b = res["stdlib"].get(tid), res["pyepoll"].get(tid)
                if a != b:
                    print(f"    {tid}: stdlib {a}, pyepoll {b}")
    for lp in loops:
        c = total[lp]
        print(f"total {lp}: {c['pass']} pass {c['fail']} fail {c['error']} "
              f"error {c['skip']} skip {c['xfail']} xfail")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""python -m pyepoll.bench SCENARIO [options]   (SCENARIO --help for each)

scenarios:
  wait-scaling   one wait, 1 ready fd among N idle: select, poll, epoll
  idle-clients   K idle connections vs the concurrency models
  echo           echo throughput, latency, CPU per message
  asyncio        the asyncio loops side by side: Protocol, BufferedProtocol,
                 streams echo on stdlib, pyepoll (selector, C loop), uvloop;
                 uvicorn and aiohttp under wrk with the loop's share of a
                 request; memory per idle connection
  http           HTTP hello, keep-alive and pipelined (wrk if installed)
  trigger        edge- vs level-triggered loops on the same workloads
  dropins        pyepoll's drop-ins vs the stdlib objects they replace
  poller         Poller.wait / epoll.poll vs select.epoll, with the kernel's share
  all            everything, short; writes report.md (+ PNG charts) to --out
"""
from __future__ import annotations

import importlib
import sys

from ._report import machine

SCENARIOS = {
    "wait-scaling": "wait_scaling",
    "idle-clients": "idle_clients",
    "echo": "echo",
    "asyncio": "asyncio_bench",
    "http": "http_bench",
    "trigger": "trigger",
    "dropins": "dropins",
    "poller": "poller",
    "all": "all",
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SCENARIOS:
        print(__doc__.strip())
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown scenario {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    if not sys.platform.startswith("linux") and argv[0] not in ("wait-scaling", "dropins", "poller"):
        print(f"{argv[0]}: Linux only (the load client uses epoll; CPU and "
              f"memory come from /proc)", file=sys.stderr)
        return 2
    print(f"# {machine()}", flush=True)
    module = importlib.import_module(f".{SCENARIOS[argv[0]]}", __package__)
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())

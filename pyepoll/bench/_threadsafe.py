"""Cross-thread wakeups, for ``bench asyncio``'s call_soon_threadsafe rows.

The loop awaits a future; a worker thread answers it with
``loop.call_soon_threadsafe(fut.set_result, i)``, as a finished
``run_in_executor`` job does.  One round trip is one wakeup of a wait that
another thread ends.

    python -m pyepoll.bench._threadsafe RUNTIME N   # asyncio | pyepollaio | uvloop

Prints one JSON line: the process's CPU (both threads, user + sys) and the
wall time per round trip, in microseconds, and the round trips made.
"""
from __future__ import annotations

import asyncio
import json
import resource
import sys
import threading
import time
from typing import Any, List


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _round_trips(n: int) -> dict:
    loop = asyncio.get_running_loop()
    asked = threading.Semaphore(0)
    futures: List[Any] = []

    def worker() -> None:
        for i in range(n):
            asked.acquire()
            loop.call_soon_threadsafe(futures[i].set_result, i)

    th = threading.Thread(target=worker, daemon=True)
    th.start()
    got = 0
    c0, t0 = _cpu(), time.perf_counter()
    for i in range(n):
        fut = loop.create_future()
        futures.append(fut)
        asked.release()
        got += await fut == i
    c1, t1 = _cpu(), time.perf_counter()
    th.join()
    if got != n:
        raise AssertionError(f"{n - got} of {n} futures got another answer")
    return {"cpu_us": (c1 - c0) / n * 1e6, "wall_us": (t1 - t0) / n * 1e6,
            "n": got}


def main(argv: List[str]) -> None:
    runtime, n = argv[0], int(argv[1])
    if runtime == "uvloop":
        import uvloop
        loop = uvloop.new_event_loop()
    elif runtime == "pyepollaio":
        import pyepoll
        loop = pyepoll.new_event_loop()
    elif runtime == "asyncio":
        loop = asyncio.new_event_loop()
    else:
        raise SystemExit(f"unknown runtime {runtime!r}")
    try:
        print(json.dumps(loop.run_until_complete(_round_trips(n))))
    finally:
        loop.close()


if __name__ == "__main__":
    main(sys.argv[1:])

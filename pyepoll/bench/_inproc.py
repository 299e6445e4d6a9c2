"""aiohttp's own cost per request, with no socket under it (issue 14's floor).

    python -m pyepoll.bench._inproc RUNTIME N

runs the bench's aiohttp hello app (pyepoll.bench._serve's, same handler,
same AppRunner settings) on one keep-alive connection whose transport is an
in-process object: a request is handed to the protocol's data_received
and the response is taken from write(), with no syscall, no poller and no
loop I/O code at all.  RUNTIME picks the loop that runs the tasks
(uvloop, pyepollaio, asyncio).  What is left is the framework's per-request
work (parsing, Request/Response objects, the handler task, the writer)
plus the smallest scheduling a loop must do for it: on uvloop (C Handles,
C ready queue) that is the floor no asyncio loop can go below.
``scripts/wakeup_cost.py floor-uvloop-aiohttp`` measures it with
callgrind the same way as the socket targets (difference of two runs).

The next request is fed only once the handler waits for one again (two
call_soon hops after the response's write: the handler task's end wakes
the connection task, which then waits on a new future), as a client's next
request finds it over a socket; so aiohttp takes the same path as in the
socket runs (the feed checks it and exits non-zero if it ever did not).
"""
from __future__ import annotations

import asyncio
import sys
from typing import Any, Optional

from pyepoll.bench._serve import BODY, aiohttp_runner

GET = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


class IdealTransport(asyncio.Transport):
    """The least a transport can do: take the response and say it is open."""

    def __init__(self, loop: asyncio.AbstractEventLoop, driver: "Driver"
                 ) -> None:
        super().__init__()
        self._closing = False
        self._driver = driver
        self._call_soon = loop.call_soon

    def write(self, data: Any) -> None:
        if data.endswith(BODY):
            # The handler task ends, then the connection task runs its
            # keep-alive step and waits: feed after those two hops.
            self._call_soon(self._call_soon, self._driver.feed)

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True

    def abort(self) -> None:
        self._closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_reading(self) -> bool:
        return True


class Driver:
    def __init__(self, loop: asyncio.AbstractEventLoop, n: int) -> None:
        self.loop = loop
        self.left = n
        self.proto: Optional[Any] = None
        self.off_path = 0

    def feed(self) -> None:
        proto = self.proto
        if self.left == 0:
            self.loop.stop()
            return
        self.left -= 1
        if proto._waiter is None:       # not waiting: another path
            self.off_path += 1
        proto.data_received(GET)


async def _setup(driver: Driver) -> Any:
    runner = await aiohttp_runner()
    proto = runner.server()
    proto.connection_made(IdealTransport(asyncio.get_running_loop(), driver))
    await asyncio.sleep(0)              # the connection task now waits
    return runner


def run(runtime: str, n: int) -> int:
    """Serve n requests; the number fed off the socket runs' path (0)."""
    if runtime == "uvloop":
        import uvloop
        loop = uvloop.new_event_loop()
    elif runtime == "pyepollaio":
        import pyepoll
        loop = pyepoll.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    driver = Driver(loop, n)
    try:
        runner = loop.run_until_complete(_setup(driver))
        driver.proto = runner.server.connections[0]
        loop.call_soon(driver.feed)
        loop.run_forever()
        if driver.left:
            raise RuntimeError(f"{driver.left} requests not answered")
        loop.run_until_complete(runner.cleanup())
    finally:
        loop.close()
    return driver.off_path


def main(argv: list) -> None:
    off = run(argv[0], int(argv[1]))
    if off:
        raise SystemExit(f"{off} requests took another path than over a socket")


if __name__ == "__main__":
    main(sys.argv[1:])

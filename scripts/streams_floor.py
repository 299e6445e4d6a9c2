"""The floor of the streams echo (issue 14): what asyncio.streams' own
Python and asyncio's Future/Task cost per message, which every event loop
pays, whatever it is written in.

The echo handler of the bench (``pyepoll.bench._serve._echo_stream``:
``read``, ``write``, ``drain``) runs as a Task over a real
StreamReaderProtocol / StreamReader / StreamWriter, exactly as
``asyncio.start_server`` wires them, but on an ideal loop and transport in
this process: no sockets, no system calls, and every loop or transport
method the streams call per message is a C builtin doing the least its job
needs (``create_future`` is ``functools.partial(asyncio.Future,
loop=loop)``, ``get_debug`` and ``is_closing`` are ``bool`` (False),
``write`` appends to a bounded deque).  Only ``call_soon`` (a Future's
done callback waking the Task) and the loop that runs the ready callbacks
are Python here: they are measured alone (``glue``: the same calls with a
no-op callback and no streams) and subtracted.

    python scripts/streams_floor.py            # callgrind: instructions/message
    python scripts/streams_floor.py --time     # wall time per message, no valgrind

Prints, per message: ``fake`` (streams + Future/Task + the ideal loop's
Python glue), ``glue`` (that glue alone) and ``floor = fake - glue``.
Compare with ``python scripts/wakeup_cost.py aio-streams uvloop-streams``
(user-space instructions per 64 B round trip of a real server; the floor
has no kernel share, so it is a lower bound of what any loop's server
spends in user space).
"""
from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import os
import re
import subprocess
import sys
import tempfile
import time

MSG = b"x" * 64


async def echo(reader: asyncio.StreamReader,
               writer: asyncio.StreamWriter) -> None:
    # pyepoll.bench._serve._echo_stream, the handler of the bench's row.
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


def ideal_loop() -> tuple:
    """(loop, run_ready): a loop object with only what the streams and
    asyncio's C Future/Task ask of it, and the function running its ready
    callbacks as an iteration does."""
    ready: collections.deque = collections.deque()
    append, popleft = ready.append, ready.popleft

    class IdealLoop:
        get_debug = bool                    # bool() is False: no debug
        is_closed = bool

        @staticmethod
        def call_soon(callback, *args, context=None):
            append((callback, args, context))

    loop = IdealLoop()
    loop.create_future = functools.partial(asyncio.Future, loop=loop)

    def run_ready() -> None:
        for _ in range(len(ready)):
            callback, args, context = popleft()
            context.run(callback, *args)

    return loop, run_ready


class IdealTransport(asyncio.Transport):
    """Writes go nowhere (a bounded deque keeps the last); never closing,
    never full."""

    is_closing = bool                       # bool() is False

    def __init__(self) -> None:
        super().__init__()
        self.write = collections.deque(maxlen=1).append

    def get_extra_info(self, name, default=None):
        return default

    def close(self) -> None:
        self.is_closing = functools.partial(bool, True)


def run_fake(n: int) -> None:
    """n messages through the echo Task on the ideal loop."""
    loop, run_ready = ideal_loop()
    tasks = []

    def create_task(coro):
        tasks.append(asyncio.Task(coro, loop=loop))
        return tasks[-1]

    loop.create_task = create_task
    reader = asyncio.StreamReader(limit=2 ** 16, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, echo, loop=loop)
    transport = IdealTransport()
    protocol.connection_made(transport)
    run_ready()                             # the Task's first step: read()
    data_received = protocol.data_received
    for _ in range(n):
        data_received(MSG)                  # as a loop's read would
        run_ready()                         # the Task: write, drain, read
    # The echo really ran: the last write was the message, and EOF ends
    # the Task without an error.  EOF first, so that a failed check leaves
    # no pending Task behind (its __del__ would report to the loop).
    written = list(transport.write.__self__)
    protocol.eof_received()
    run_ready()
    if written != [MSG]:
        raise AssertionError(f"the echo wrote {written!r}, not the message")
    if not tasks[0].done() or tasks[0].exception() is not None:
        raise AssertionError(f"the echo Task did not end cleanly: {tasks[0]!r}")


def run_glue(n: int) -> None:
    """The ideal loop's Python alone: per message one call_soon with a
    context (as a Future's done callback) and one run of the ready
    queue, the callback a builtin doing nothing."""
    loop, run_ready = ideal_loop()
    call_soon = loop.call_soon
    ctx = contextvars.copy_context()
    noop = id
    for _ in range(n):
        noop(MSG)                           # stands for data_received's call
        call_soon(noop, None, context=ctx)
        run_ready()


def callgrind(mode: str, n: int, tmp: str) -> int:
    out = os.path.join(tmp, f"{mode}-{n}.out")
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                    sys.executable, "-X", "frozen_modules=on", __file__,
                    "--child", mode, str(n)],
                   check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL,
                   env=dict(os.environ, PYTHONHASHSEED="0"))
    res = subprocess.run(["callgrind_annotate", "--auto=no", "--threshold=100",
                          out], capture_output=True, text=True,
                         check=True).stdout
    return int(re.search(r"^([\d,]+) \(100.0%\)\s+PROGRAM TOTALS", res, re.M)
               .group(1).replace(",", ""))


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        {"fake": run_fake, "glue": run_glue}[sys.argv[2]](int(sys.argv[3]))
        return
    n1, n2 = 2000, 10000
    per = {}
    if "--time" in sys.argv:
        for mode, fn in (("fake", run_fake), ("glue", run_glue)):
            best = float("inf")
            for _ in range(5):
                t = time.perf_counter()
                fn(n2)
                best = min(best, time.perf_counter() - t)
            per[mode] = best / n2 * 1e6
        unit = "us"
    else:
        with tempfile.TemporaryDirectory() as tmp:
            for mode in ("fake", "glue"):
                a, b = callgrind(mode, n1, tmp), callgrind(mode, n2, tmp)
                per[mode] = (b - a) / (n2 - n1)
        unit = "instructions"
    print(f"python {sys.version.split()[0]}, {unit} per 64 B message:")
    print(f"  fake  (streams + Future/Task + ideal loop glue) {per['fake']:10,.2f}")
    print(f"  glue  (the ideal loop's Python alone)          {per['glue']:10,.2f}")
    print(f"  floor (fake - glue)                            "
          f"{per['fake'] - per['glue']:10,.2f}")


if __name__ == "__main__":
    main()

"""The Python servers the benchmarks compare, each as a user would write it:
``python -m pyepoll.bench._serve KIND PORT``.

Echo: pyepoll.Loop with a Python handler (``loop-py``: wait/recv/send;
``loop-batch``: wait_batch/reply; ``loop-queue``: wait_batch/queue_echo;
``loop-fn``: wait_batch and a handler function per message;
``loop-serve``: Loop.serve calling a handler function per message) or the C echo
path (``loop-c``), level or edge; ``floor-handler``: the least any loop calling
that handler per message must do (c/handler_floor.c, CPython only); asyncio
Protocol and streams, on asyncio's own loop, on uvloop, and on pyepoll's
asyncio loops (``pyepollaio``: the C connection loop; ``pyepollsel``: the
stdlib loop on pyepoll's selector); ``buffered`` is an
asyncio.BufferedProtocol echo.  HTTP: "hello" answered by
an asyncio Protocol with a small hand parser, or by uvloop + httptools, the
usual fast Python stack; and by two frameworks as their users run them:
uvicorn (httptools) serving an ASGI app and aiohttp.web, each on any of the
asyncio loops (``pyepollaio-uvicorn``, ``uvloop-aiohttp``, ...).  Every HTTP
server answers what the reference server answers (a 200 with the same
14-byte body).

Every asyncio server prints the class of its running loop once at start-up
(``pyepoll-bench loop: MODULE.CLASS``), which the bench checks, so a row is
known to run on the loop it names.  The framework servers also answer
SIGUSR1/SIGUSR2 by starting/stopping a CPU sampler (see ``_Sampler``).
"""
from __future__ import annotations

import asyncio
import collections
import dis
import email.utils
import json
import os
import resource
import signal
import sys
import time
from typing import Any, Callable, Dict, List

BODY = b"Hello, World!\n"
BACKLOG = 4096


def _nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- pyepoll.Loop ------------------------------------------------------------------


def serve_loop(port: int, trigger: str, c_echo: bool) -> None:
    from pyepoll import EV_DATA, EV_EOF, Loop

    cap = max(1024, min(_nofile() - 64, 1 << 16))
    loop = Loop(trigger=trigger, echo=c_echo, max_connections=cap)
    loop.listen("127.0.0.1", port, backlog=BACKLOG)
    wait, recv, send = loop.wait, loop.recv, loop.send
    close = loop.close_connection
    # The handler a user writes: one event at a time, recv + send.
    while True:
        for kind, h, _ in wait():
            if kind == EV_DATA:
                try:
                    send(h, recv(h))
                except ConnectionError:
                    pass
            elif kind == EV_EOF:
                close(h)


def serve_loop_serve(port: int, trigger: str) -> None:
    """Loop.serve with a Python handler: the loop calls it per message and
    sends what it returns."""
    from pyepoll import Loop

    cap = max(1024, min(_nofile() - 64, 1 << 16))
    loop = Loop(trigger=trigger, max_connections=cap)
    loop.listen("127.0.0.1", port, backlog=BACKLOG)

    def handler(h: int, data: bytes) -> bytes:
        return data                       # an echo: the reply is the input

    loop.serve(handler)


def serve_handler_floor(port: int) -> None:
    """The floor under serve_loop_serve: the same handler called per message
    by a C epoll loop that does only what any such loop must (c/
    handler_floor.c: the GIL around the wait, a bytes object, the call)."""
    import importlib.machinery
    import importlib.util
    import socket

    from ._proc import handler_floor

    path = handler_floor()
    loader = importlib.machinery.ExtensionFileLoader("handler_floor", str(path))
    spec = importlib.util.spec_from_loader("handler_floor", loader)
    floor = importlib.util.module_from_spec(spec)
    loader.exec_module(floor)
    _nofile()
    sock = socket.create_server(("127.0.0.1", port), backlog=BACKLOG)
    sock.setblocking(False)

    def handler(h: int, data: bytes) -> bytes:
        return data                       # as serve_loop_serve's handler

    floor.serve(sock.fileno(), handler)


def serve_loop_fn(port: int, trigger: str) -> None:
    """What issue 4 calls a handler: a Python function called per message,
    handler(handle, memoryview) -> reply.  A reply that is the input itself
    is queued with queue_echo (no conversion of the view); any other goes
    out with send()."""
    from pyepoll import EV_DATA, EV_EOF, Loop

    cap = max(1024, min(_nofile() - 64, 1 << 16))
    loop = Loop(trigger=trigger, max_connections=cap)
    loop.listen("127.0.0.1", port, backlog=BACKLOG)
    wait_batch, push, send = loop.wait_batch, loop.queue_echo, loop.send
    close = loop.close_connection
    view = loop.batch_view

    def handler(h: int, data: memoryview):
        return data                       # an echo: the reply is the input

    while True:
        for kind, h, n, offset in wait_batch():
            if kind == EV_DATA:
                data = view[offset:offset + n]
                out = handler(h, data)
                try:
                    if out is data:
                        push(h)
                    elif out is not None:
                        send(h, out)
                except ConnectionError:
                    pass
            elif kind == EV_EOF:
                close(h)


def serve_loop_batch(port: int, trigger: str, queue: bool) -> None:
    """The same handler on the batch API: each DATA event brings its bytes
    in one shared buffer, and reply() sends a slice of it back (or
    queue_echo() queues the echo)."""
    from pyepoll import EV_DATA, EV_EOF, Loop

    cap = max(1024, min(_nofile() - 64, 1 << 16))
    loop = Loop(trigger=trigger, max_connections=cap)
    if not hasattr(loop, "wait_batch"):
        raise SystemExit("this pyepoll.Loop has no wait_batch()")
    loop.listen("127.0.0.1", port, backlog=BACKLOG)
    wait_batch, reply = loop.wait_batch, loop.reply
    close = loop.close_connection
    if queue:
        # queue_echo: the echo of what h's DATA brought goes out with every
        # other queued one in the next wait_batch's single C call.
        push = loop.queue_echo
        while True:
            for kind, h, n, offset in wait_batch():
                if kind == EV_DATA:
                    push(h)
                elif kind == EV_EOF:
                    close(h)
    while True:
        for kind, h, n, offset in wait_batch():
            if kind == EV_DATA:
                try:
                    reply(h, offset, n)
                except ConnectionError:
                    pass
            elif kind == EV_EOF:
                close(h)


# -- asyncio -----------------------------------------------------------------------


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


class BufferedEcho(asyncio.BufferedProtocol):
    """Echo through asyncio.BufferedProtocol: bytes land in a buffer the
    protocol owns (no bytes object per read), sent back from a view."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buf = bytearray(65536)
        self.view = memoryview(self.buf)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        self.transport.write(self.view[:nbytes])  # type: ignore[attr-defined]


async def _echo_stream(reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
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


_date = [0.0, b""]


def _http_date() -> bytes:
    now = time.time()
    if int(now) != int(_date[0]):
        _date[0] = now
        _date[1] = email.utils.formatdate(now, usegmt=True).encode()
    return _date[1]  # type: ignore[return-value]


def _response() -> bytes:
    return (b"HTTP/1.1 200 OK\r\nServer: bench\r\nDate: " + _http_date()
            + b"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: "
            + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)


class HandParsedHTTP(asyncio.Protocol):
    """Keep-alive and pipelined GETs, parsed by splitting on the blank line:
    what a small asyncio service without a parser library does."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        out: List[bytes] = []
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end]
            rest = end + 4
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(buf) < rest + length:
                break
            buf = buf[rest + length:]
            out.append(_response())
        self.buf = buf
        if out:
            self.transport.write(b"".join(out))  # type: ignore[attr-defined]


class HttptoolsHTTP(asyncio.Protocol):
    """httptools (llhttp) parser callbacks, answers batched per read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        import httptools
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self.out: List[bytes] = []

    def on_message_complete(self) -> None:
        self.out.append(_response())

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)
        if self.out:
            self.transport.write(b"".join(self.out))  # type: ignore[attr-defined]
            self.out.clear()


LOOP_LINE = "pyepoll-bench loop:"


def announce_loop() -> None:
    """Print the running loop's class (the bench checks it against the row's
    name before timing anything)."""
    t = type(asyncio.get_running_loop())
    print(f"{LOOP_LINE} {t.__module__}.{t.__qualname__}", flush=True)


def serve_asyncio(port: int, factory: Callable[[], asyncio.AbstractEventLoop],
                  what: str) -> None:
    _nofile()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        announce_loop()
        if what == "streams":
            await asyncio.start_server(_echo_stream, "127.0.0.1", port,
                                       backlog=BACKLOG)
        else:
            proto = {"protocol": EchoProtocol, "buffered": BufferedEcho,
                     "http": HandParsedHTTP, "httptools": HttptoolsHTTP}[what]
            await loop.create_server(proto, "127.0.0.1", port, backlog=BACKLOG)
        await asyncio.Future()

    loop = factory()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(main())


# -- frameworks --------------------------------------------------------------------


async def hello_asgi(scope: dict, receive: Callable, send: Callable) -> None:
    """The smallest ASGI app: every request gets the 14-byte hello."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(BODY)).encode())]})
    await send({"type": "http.response.body", "body": BODY})


async def _uvicorn(port: int) -> None:
    """uvicorn's own Server, as ``uvicorn.run`` would build it, but served on
    the loop that is already running (``loop="none"``: uvicorn picks none)."""
    import uvicorn
    config = uvicorn.Config(hello_asgi, host="127.0.0.1", port=port,
                            http="httptools", ws="none", lifespan="off",
                            access_log=False, log_level="warning", loop="none",
                            interface="asgi3", backlog=BACKLOG,
                            timeout_graceful_shutdown=1)
    await uvicorn.Server(config).serve()


async def aiohttp_runner() -> Any:
    """aiohttp.web's hello app, set up and not yet serving: the bench's
    server and the in-process floor (_inproc.py) run the same app."""
    from aiohttp import web

    async def hello(request: "web.Request") -> "web.Response":
        return web.Response(text=BODY.decode())

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    return runner


async def _aiohttp(port: int) -> None:
    from aiohttp import web

    runner = await aiohttp_runner()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=BACKLOG).start()
    await asyncio.Future()


# Which part of the stack a Python source file belongs to, by the top-level
# package it lives in (the loop's own code, the framework, the app).
_PARTS = {"pyepoll": "pyepoll", "asyncio": "asyncio", "uvicorn": "framework",
          "httptools": "framework", "h11": "framework", "aiohttp": "framework",
          "multidict": "framework", "yarl": "framework", "propcache": "framework",
          "aiosignal": "framework", "frozenlist": "framework"}


def _part(filename: str) -> str:
    if filename == __file__:
        return "app"
    parts = os.path.normpath(filename).split(os.sep)
    # The innermost known package directory on the path decides.
    for name in reversed(parts[:-1]):
        if name in _PARTS:
            return _PARTS[name]
    return "other"


# The opcode a function (and a resumed coroutine) starts at, 3.11+.
_RESUME = dis.opmap.get("RESUME")


class _Sampler:
    """A statistical profile of the server's CPU: ITIMER_PROF fires every
    millisecond of CPU time (user and system), and each SIGPROF counts the
    Python function running when Python handles it.  A signal that lands
    in C code or in a system call is handled as that call returns, so C
    code and the kernel's work for a system call count to the Python
    function that made the call (httptools' parser to uvicorn, pyepoll's
    C core and its send/recv/epoll_wait to pyepoll.asyncio_loop).
    (ITIMER_VIRTUAL, meant for user time only, was measured to land the
    same way on a Linux kernel with tick-based CPU accounting, so it is no
    way to leave the kernel out.)  A signal that lands in C code which then
    calls a Python function is handled at that function's first
    instruction (RESUME, 3.11+; also where a coroutine resumes): it counts
    to the caller's frame, so the C loop's batch walk, sends and Task
    steps count to the loop, not to the protocol callback or coroutine
    they start.
    SIGUSR1 starts it, SIGUSR2 stops it and writes the counts, by part of
    the stack and by function, to ``profile.json`` in the working
    directory."""

    def __init__(self) -> None:
        self.counts: Dict[object, int] = collections.Counter()   # by code object
        self.ops: Dict[object, bytes] = {}      # code object -> its co_code
        signal.signal(signal.SIGUSR1, self.start)
        signal.signal(signal.SIGUSR2, self.stop)

    def sample(self, signum: int, frame) -> None:
        code = frame.f_code if frame is not None else None
        if (_RESUME is not None and code is not None and
                frame.f_back is not None and frame.f_lasti >= 0):
            ops = self.ops.get(code)
            if ops is None:
                ops = self.ops[code] = code.co_code
            if frame.f_lasti < len(ops) and ops[frame.f_lasti] == _RESUME:
                code = frame.f_back.f_code      # not started: the caller's
        self.counts[code] += 1

    def start(self, signum: int, frame) -> None:
        self.counts.clear()
        signal.signal(signal.SIGPROF, self.sample)
        signal.setitimer(signal.ITIMER_PROF, 0.001, 0.001)

    def stop(self, signum: int, frame) -> None:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        parts: Dict[str, int] = collections.Counter()
        functions: Dict[str, int] = collections.Counter()
        for code, n in self.counts.items():
            part = _part(code.co_filename) if code is not None else "other"
            parts[part] += n
            if code is not None:
                name = f"{os.path.basename(code.co_filename)}:{code.co_name}"
                functions[f"{part}|{name}"] += n
        with open("profile.json.tmp", "w") as f:
            json.dump({"parts": parts, "functions": functions}, f)
        os.replace("profile.json.tmp", "profile.json")


def serve_framework(port: int, factory: Callable[[], asyncio.AbstractEventLoop],
                    what: str) -> None:
    _nofile()
    _Sampler()

    async def main() -> None:
        announce_loop()
        await {"uvicorn": _uvicorn, "aiohttp": _aiohttp}[what](port)

    loop = factory()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(main())


def _uvloop() -> asyncio.AbstractEventLoop:
    import uvloop
    return uvloop.new_event_loop()


def _pyepoll_aio() -> asyncio.AbstractEventLoop:
    import pyepoll
    return pyepoll.new_event_loop()


def _pyepoll_selector() -> asyncio.AbstractEventLoop:
    import pyepoll
    return pyepoll.new_selector_event_loop()


def main(argv: List[str]) -> None:
    kind, port = argv[0], int(argv[1])
    if kind == "floor-handler":
        serve_handler_floor(port)
        return
    if kind.startswith("loop-"):
        _, what, trigger = kind.split("-")      # loop-py-level, loop-c-edge
        if what == "fn":
            serve_loop_fn(port, trigger)
        elif what == "serve":
            serve_loop_serve(port, trigger)
        elif what in ("batch", "queue"):
            serve_loop_batch(port, trigger, what == "queue")
        else:
            serve_loop(port, trigger, what == "c")
        return
    runtime, what = kind.split("-", 1)          # asyncio-protocol, uvloop-httptools
    factory = {"asyncio": asyncio.new_event_loop, "uvloop": _uvloop,
               "pyepollaio": _pyepoll_aio,
               "pyepollsel": _pyepoll_selector}[runtime]
    if what in ("uvicorn", "aiohttp"):
        serve_framework(port, factory, what)
    else:
        serve_asyncio(port, factory, what)


if __name__ == "__main__":
    main(sys.argv[1:])

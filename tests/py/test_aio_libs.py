"""Real libraries on pyepoll's asyncio loop, one real exchange each on
127.0.0.1: aiohttp (server and client), uvicorn with httptools serving an
ASGI app, websockets (server and client).  A library that is not installed
is skipped (they are test extras, not dependencies of pyepoll)."""
from __future__ import annotations

import asyncio
import socket

import pytest

from pyepoll._binding import ffi, lib
from pyepoll.asyncio_loop import EventLoop

pytestmark = pytest.mark.timeout(60)

LIMIT = 20.0


def run(main):
    """Run main() on a new EventLoop; return its result and how many
    connections the C loop opened (accepted or adopted)."""
    loop = EventLoop()
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
    stats = ffi.new("struct pe_loop_stats *")
    try:
        asyncio.set_event_loop(loop)
        result = loop.run_until_complete(asyncio.wait_for(main(), LIMIT))
        lib.pe_loop_get_stats(loop._p, stats)
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    return result, int(stats.accepted), errors


def test_aiohttp_server_and_client():
    aiohttp = pytest.importorskip("aiohttp")
    from aiohttp import web

    async def hello(request):
        body = await request.read()
        return web.Response(text=f"hello {request.match_info['name']} "
                                 f"{len(body)}")

    async def main():
        app = web.Application()
        app.router.add_route("*", "/hello/{name}", hello)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        out = []
        async with aiohttp.ClientSession() as session:
            for i in range(5):
                async with session.post(f"http://127.0.0.1:{port}/hello/n{i}",
                                        data=b"x" * (i * 100_000)) as resp:
                    out.append((resp.status, await resp.text()))
        await runner.cleanup()
        return out

    out, opened, errors = run(main)
    assert out == [(200, f"hello n{i} {i * 100_000}") for i in range(5)]
    assert opened >= 2            # the server's and the client's sockets
    assert errors == []


def test_uvicorn_httptools_asgi_app():
    uvicorn = pytest.importorskip("uvicorn")
    pytest.importorskip("httptools")

    async def app(scope, receive, send):
        assert scope["type"] == "http"
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        reply = b"asgi " + scope["path"].encode() + b" %d" % len(body)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"),
                                (b"content-length", b"%d" % len(reply))]})
        await send({"type": "http.response.body", "body": reply})

    async def main():
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(app, http="httptools", loop="none",
                                lifespan="off", log_level="warning")
        server = uvicorn.Server(config)
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        r, w = await asyncio.open_connection("127.0.0.1", port)
        replies = []
        for i in range(3):       # keep-alive: three requests, one connection
            body = b"b" * (i * 1000)
            w.write(b"POST /p%d HTTP/1.1\r\nHost: x\r\nContent-Length: %d"
                    b"\r\n\r\n" % (i, len(body)) + body)
            head = await r.readuntil(b"\r\n\r\n")
            length = int([ln for ln in head.split(b"\r\n")
                          if ln.lower().startswith(b"content-length")][0]
                         .split(b":")[1])
            replies.append((head.split(b" ")[1], await r.readexactly(length)))
        w.close()
        await w.wait_closed()
        server.should_exit = True
        await task
        return replies

    replies, opened, errors = run(main)
    assert replies == [(b"200", b"asgi /p%d %d" % (i, i * 1000))
                       for i in range(3)]
    assert opened >= 2
    assert errors == []


def test_websockets_echo():
    pytest.importorskip("websockets")
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import serve

    async def echo(ws):
        async for message in ws:
            await ws.send(message)

    async def main():
        async with serve(echo, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            async with connect(f"ws://127.0.0.1:{port}") as ws:
                got = []
                for msg in ("hi", b"\x00\x01" * 50_000, "bye"):
                    await ws.send(msg)
                    got.append(await ws.recv())
        return got

    got, opened, errors = run(main)
    assert got == ["hi", b"\x00\x01" * 50_000, "bye"]
    assert opened >= 2
    assert errors == []

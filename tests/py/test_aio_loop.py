"""pyepoll.asyncio_loop.EventLoop: transports that are C-loop connections.

Real exchanges on 127.0.0.1 (and Unix socket pairs); every program is
bounded by LIMIT seconds.  test_asyncio.py runs the same asyncio programs
on this loop and the stdlib's side by side; here are the behaviours that
only this loop's transports implement (or could get wrong): which
transport serves a socket, closing, half-close, flow control, buffered
protocols, exceptions in callbacks, descriptors shared with add_reader.
"""
from __future__ import annotations

import asyncio
import contextvars
import gc
import io
import logging
import os
import socket
import sys
import threading
import time

import pytest

from pyepoll import asyncio_loop
from pyepoll.asyncio_loop import CTransport, EventLoop

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("aio_path")]

LIMIT = 15.0


def run(main, **loop_kwargs):
    """Run main() on a new EventLoop; return (result, handler contexts)."""
    loop = EventLoop(**loop_kwargs)
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
    try:
        result = loop.run_until_complete(asyncio.wait_for(main(), LIMIT))
        return result, errors
    finally:
        loop.close()


async def until(cond, what="condition"):
    """Wait (bounded) until cond() is true."""
    deadline = time.monotonic() + LIMIT / 2
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


class Recorder(asyncio.Protocol):
    """Records every callback, in order; optionally echoes."""

    def __init__(self, echo=False, keep_open=False):
        self.echo = echo
        self.keep_open = keep_open
        self.calls = []
        self.data = bytearray()
        self.transport = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.calls.append("made")

    def data_received(self, data):
        assert type(data) is bytes
        self.calls.append("data")
        self.data += data
        if self.echo:
            self.transport.write(data)

    def eof_received(self):
        self.calls.append("eof")
        return self.keep_open

    def pause_writing(self):
        self.calls.append("pause")

    def resume_writing(self):
        self.calls.append("resume")

    def connection_lost(self, exc):
        self.calls.append("lost")
        if not self.lost.done():
            self.lost.set_result(exc)


def port_of(server):
    """The port of a server listening on 127.0.0.1."""
    return server.sockets[0].getsockname()[1]


async def recording_server(factory=Recorder):
    """A server on 127.0.0.1 whose protocols, factory() each, are appended
    to the list returned with it: (server, protocols)."""
    made = []

    def make():
        made.append(factory())
        return made[-1]

    server = await asyncio.get_running_loop().create_server(
        make, "127.0.0.1", 0)
    return server, made


async def open_client(server):
    """A streams connection to server: (reader, writer)."""
    return await asyncio.open_connection("127.0.0.1", port_of(server))


async def close_server(server):
    server.close()
    await server.wait_closed()


async def close_writer(writer):
    writer.close()
    await writer.wait_closed()


async def server_and_client(factory=Recorder, **client):
    """A server whose protocols are Recorders (or factory()), one client
    connection; returns (server, server protocols list, client transport,
    client protocol)."""
    server, made = await recording_server(factory)
    ct, cp = await asyncio.get_running_loop().create_connection(
        lambda: Recorder(**client), "127.0.0.1", port_of(server))
    await until(lambda: made and made[0].transport is not None, "accept")
    return server, made, ct, cp


async def accepted(factory):
    """A transport with protocol factory() over one end of a new socket
    pair: (transport, protocol, the other end)."""
    a, b = socket.socketpair()
    t, p = await asyncio.get_running_loop().connect_accepted_socket(
        factory, a)
    return t, p, b


# -- which transport ----------------------------------------------------------------


def test_server_and_client_transports_are_c_connections():
    async def main():
        server, made, ct, cp = await server_and_client()
        st = made[0].transport
        ct.write(b"ping")
        await until(lambda: bytes(made[0].data) == b"ping")
        st.write(b"pong")
        await until(lambda: bytes(cp.data) == b"pong")
        kinds = (type(st), type(ct))
        peer = st.get_extra_info("peername")
        assert peer == ct.get_extra_info("sockname")
        assert ct.get_extra_info("peername") == st.get_extra_info("sockname")
        assert st.get_extra_info("socket").fileno() >= 0
        assert st.get_extra_info("nonexistent", 7) == 7
        ct.close()
        await cp.lost
        await made[0].lost
        await close_server(server)
        return kinds, made[0].calls, cp.calls

    (kinds, scalls, ccalls), errors = run(main)
    assert kinds == (CTransport, CTransport)
    assert scalls == ["made", "data", "eof", "lost"]
    assert ccalls == ["made", "data", "lost"]
    assert errors == []


def test_streams_echo_and_large_transfer():
    payload = os.urandom(3 * 2**20)

    async def main():
        async def handle(reader, writer):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                writer.write(chunk)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        reader, writer = await open_client(server)
        lines = []
        for i in range(50):
            writer.write(b"line %d\n" % i)
            lines.append(await reader.readline())

        async def send():
            writer.write(payload)
            await writer.drain()
            writer.write_eof()

        sender = asyncio.ensure_future(send())
        got = await reader.read(-1)
        await sender
        await close_writer(writer)
        await close_server(server)
        return lines, got, type(writer.transport)

    (lines, got, kind), errors = run(main)
    assert lines == [b"line %d\n" % i for i in range(50)]
    assert len(got) == len(payload) and got == payload
    assert kind is CTransport
    assert errors == []


def test_servers_keep_their_own_protocol_factories():
    class Tagged(asyncio.Protocol):
        def __init__(self, tag):
            self.tag = tag

        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(self.tag + data)

    async def main():
        loop = asyncio.get_running_loop()
        servers = [await loop.create_server(lambda t=t: Tagged(t),
                                            "127.0.0.1", 0)
                   for t in (b"A:", b"B:", b"C:")]
        out = []
        for _ in range(2):
            for server in servers:
                r, w = await open_client(server)
                w.write(b"x")
                out.append(await r.readexactly(3))
                await close_writer(w)
        for server in servers:
            await close_server(server)
        return out

    out, errors = run(main)
    assert out == [b"A:x", b"B:x", b"C:x"] * 2
    assert errors == []


def test_connect_accepted_socket_and_sock_argument():
    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        ta, pa = await loop.connect_accepted_socket(lambda: Recorder(echo=True),
                                                    a)
        r, w = await asyncio.open_connection(sock=b)
        w.write(b"hello")
        echoed = await r.readexactly(5)
        kinds = (type(ta), type(w.transport))
        await close_writer(w)
        exc = await pa.lost
        return echoed, kinds, exc, a.fileno(), b.fileno()

    (echoed, kinds, exc, afd, bfd), errors = run(main)
    assert echoed == b"hello"
    assert kinds == (CTransport, CTransport)
    assert exc is None
    assert (afd, bfd) == (-1, -1)       # the transports closed them
    assert errors == []


def test_unix_server_is_served_in_c(tmp_path):
    path = str(tmp_path / "s.sock")

    async def main():
        made = []

        def factory():
            made.append(Recorder(echo=True))
            return made[-1]

        server = await asyncio.get_running_loop().create_unix_server(
            factory, path)
        r, w = await asyncio.open_unix_connection(path)
        w.write(b"over unix")
        got = await r.readexactly(9)
        await close_writer(w)
        await close_server(server)
        return got, type(made[0].transport), type(w.transport)

    (got, st, ct), errors = run(main)
    assert got == b"over unix"
    assert (st, ct) == (CTransport, CTransport)


@pytest.mark.skipif(sys.version_info < (3, 13),
                    reason="cleanup_socket is new in Python 3.13")
def test_unix_server_close_removes_its_socket_file_as_the_stdlib(tmp_path):
    async def main(path, replace, **kw):
        server = await asyncio.get_running_loop().create_unix_server(
            asyncio.Protocol, path, **kw)
        replaced = None
        if replace:                     # another server's file now: kept
            os.unlink(path)
            replaced = socket.socket(socket.AF_UNIX)
            replaced.bind(path)
        server.close()
        await server.wait_closed()
        if replaced is not None:
            replaced.close()
        return os.path.exists(path)

    for make in (asyncio.SelectorEventLoop, EventLoop):
        for name, replace, kw, kept in (("default", False, {}, False),
                                        ("replaced", True, {}, True),
                                        ("off", False, {"cleanup_socket": False}, True)):
            path = str(tmp_path / f"{make.__name__}-{name}.sock")
            loop = make()
            try:
                assert loop.run_until_complete(main(path, replace, **kw)) is kept
            finally:
                loop.close()


# -- closing ------------------------------------------------------------------


def test_closed_transport_answers_like_asyncio(caplog):
    async def main():
        server, made, ct, cp = await server_and_client()
        ct.close()
        ct.close()                                   # idempotent
        state = (ct.is_closing(), ct.is_reading(), ct.get_write_buffer_size())
        ct.write(b"dropped")                         # after close: no error
        exc = await cp.lost
        # Every method after connection_lost: asyncio's answers, never a
        # stale handle error.
        for _ in range(6):
            ct.write(b"more")
        ct.writelines([b"a", b"b"])
        ct.write_eof()
        ct.pause_reading()
        ct.resume_reading()
        ct.abort()
        ct.set_write_buffer_limits(100, 10)
        after = (ct.is_closing(), ct.is_reading(), ct.get_write_buffer_size(),
                 ct.get_write_buffer_limits(), ct.can_write_eof())
        await made[0].lost
        await close_server(server)
        return state, exc, after, cp.calls, bytes(made[0].data)

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        (state, exc, after, calls, seen), errors = run(main)
    assert state == (True, False, 0)
    assert exc is None
    assert after == (True, False, 0, (10, 100), True)
    assert calls == ["made", "lost"]
    assert seen == b""                              # nothing after close
    assert "socket.send() raised exception." in caplog.text
    assert errors == []


def test_close_flushes_queued_bytes_before_connection_lost():
    size = 8 * 2**20

    async def main():
        loop = asyncio.get_running_loop()
        t, p, b = await accepted(Recorder)
        b.setblocking(False)
        t.write(b"z" * size)
        queued = t.get_write_buffer_size()
        t.close()
        got = 0
        while not p.lost.done() or got < size:
            try:
                chunk = await loop.sock_recv(b, 1 << 20)
            except ConnectionError:
                break
            if not chunk:
                break
            got += len(chunk)
            if got < size:
                # connection_lost waits for the flush.
                assert not p.lost.done()
        exc = await p.lost
        b.close()
        return queued, got, exc

    (queued, got, exc), errors = run(main)
    assert queued > 0                   # the socket could not take it all
    assert got == size
    assert exc is None


def test_abort_drops_queued_bytes():
    async def main():
        server, made, ct, cp = await server_and_client()
        made[0].transport.pause_reading()
        ct.write(b"q" * (8 * 2**20))
        assert ct.get_write_buffer_size() > 0
        ct.abort()
        assert ct.get_write_buffer_size() == 0
        exc = await cp.lost
        made[0].transport.resume_reading()
        sexc = await made[0].lost
        await close_server(server)
        return exc, len(made[0].data), sexc

    (exc, seen, sexc), errors = run(main)
    assert exc is None
    assert seen < 8 * 2**20
    assert sexc is None or isinstance(sexc, ConnectionResetError)


def test_peer_reset_reports_the_error():
    async def main():
        t, p, b = await accepted(Recorder)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                     b"\x01\x00\x00\x00\x00\x00\x00\x00")
        b.close()
        exc = await p.lost
        t.write(b"after")
        return p.calls, exc

    (calls, exc), errors = run(main)
    # A Unix socket pair reports an orderly EOF; either way once, in order.
    assert calls[0] == "made" and calls[-1] == "lost"
    assert calls.count("lost") == 1


def test_write_eof_and_eof_received_keeping_half_open():
    async def main():
        server, made, ct, cp = await server_and_client(
            lambda: Recorder(keep_open=True))
        ct.write(b"request")
        ct.write_eof()
        with pytest.raises(RuntimeError, match="write_eof"):
            ct.write(b"no")
        st = made[0].transport
        await until(lambda: "eof" in made[0].calls, "server eof")
        # Kept half-open: the server still answers after the EOF.
        st.write(b"reply after eof")
        await until(lambda: bytes(cp.data) == b"reply after eof", "reply")
        st.close()
        await cp.lost
        await made[0].lost
        await close_server(server)
        return made[0].calls, bytes(made[0].data), cp.calls

    (scalls, sdata, ccalls), errors = run(main)
    assert scalls == ["made", "data", "eof", "lost"]
    assert sdata == b"request"
    assert ccalls == ["made", "data", "eof", "lost"]


def test_eof_received_false_closes():
    async def main():
        server, made, ct, cp = await server_and_client()
        ct.write_eof()
        await made[0].lost
        await cp.lost
        await close_server(server)
        return made[0].calls, made[0].transport.is_closing()

    (calls, closing), errors = run(main)
    assert calls == ["made", "eof", "lost"]
    assert closing


# -- flow control -------------------------------------------------------------


def test_pause_and_resume_writing_at_the_water_marks():
    async def main():
        server, made, ct, cp = await server_and_client()
        st = made[0].transport
        st.pause_reading()
        ct.set_write_buffer_limits(high=64 * 1024, low=16 * 1024)
        sent = 0
        while "pause" not in cp.calls:
            ct.write(b"w" * 65536)
            sent += 65536
            assert sent < 64 * 2**20, "pause_writing never came"
        size_at_pause = ct.get_write_buffer_size()
        st.resume_reading()
        await until(lambda: "resume" in cp.calls, "resume_writing")
        size_at_resume = ct.get_write_buffer_size()
        await until(lambda: len(made[0].data) == sent, "all bytes")
        ct.close()
        await cp.lost
        await close_server(server)
        return size_at_pause, size_at_resume, cp.calls

    (at_pause, at_resume, calls), errors = run(main)
    assert at_pause > 64 * 1024
    assert at_resume <= 16 * 1024
    assert calls == ["made", "pause", "resume", "lost"]
    assert errors == []


def test_resume_writing_comes_at_the_low_mark_not_at_empty():
    # A slow reader: the queue passes through (0, low], and resume_writing
    # must come there, with bytes still queued, as asyncio's does.
    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        b.setblocking(False)
        seen = {}

        class Flow(Recorder):
            def resume_writing(self):
                super().resume_writing()
                seen["size"] = self.transport.get_write_buffer_size()

        t, p = await loop.connect_accepted_socket(Flow, a)
        t.set_write_buffer_limits(high=64 * 1024, low=32 * 1024)
        t.write(b"s" * (256 * 1024))
        assert p.calls[-1] == "pause"
        got = 0
        while "size" not in seen or got < 256 * 1024:
            try:
                got += len(b.recv(4096))
            except BlockingIOError:
                pass
            await asyncio.sleep(0.0005)
        t.close()
        await p.lost
        b.close()
        return seen["size"], p.calls

    (size, calls), errors = run(main)
    assert 0 < size <= 32 * 1024
    assert calls == ["made", "pause", "resume", "lost"]


def test_set_write_buffer_limits_validates_like_asyncio():
    async def main():
        server, made, ct, cp = await server_and_client()
        with pytest.raises(ValueError):
            ct.set_write_buffer_limits(high=10, low=20)
        ct.set_write_buffer_limits(high=0)
        limits = ct.get_write_buffer_limits()
        ct.close()
        await cp.lost
        await close_server(server)
        return limits

    limits, errors = run(main)
    assert limits == (0, 0)


def test_pause_reading_holds_data_until_resume():
    async def main():
        server, made, ct, cp = await server_and_client()
        st, sp = made[0].transport, made[0]
        st.pause_reading()
        assert not st.is_reading()
        ct.write(b"held")
        await asyncio.sleep(0.1)
        held = bytes(sp.data)
        st.resume_reading()
        assert st.is_reading()
        await until(lambda: bytes(sp.data) == b"held", "data after resume")
        ct.close()
        await sp.lost
        await close_server(server)
        return held

    held, errors = run(main)
    assert held == b""


async def two_connections_one_acting_on_the_other(loop, act):
    """Two accepted connections (socketpairs) with Recorder protocols;
    whichever gets its bytes first calls act(the other's transport) before
    recording them.  Returns (pairs, transports, protocols)."""
    pairs = [socket.socketpair() for _ in range(2)]
    ts, ps = [], []
    for a, b in pairs:
        t, p = await loop.connect_accepted_socket(Recorder, a)
        ts.append(t)
        ps.append(p)
    await asyncio.sleep(0)

    def acting(i):
        orig = ps[i].data_received

        def data_received(data):
            if not any(p.data for p in ps):
                act(ts[1 - i])
            orig(data)
        return data_received

    for i in range(2):
        ps[i].data_received = acting(i)
        ts[i].set_protocol(ps[i])
    return pairs, ts, ps


def test_pause_reading_from_another_protocols_callback_in_the_same_batch():
    # Two connections whose bytes arrive in one batch; whichever is
    # delivered first pauses the other, whose bytes (already read into the
    # batch) must wait until it is resumed, then come first, in order.
    async def main():
        loop = asyncio.get_running_loop()
        pairs, ts, ps = await two_connections_one_acting_on_the_other(
            loop, lambda t: t.pause_reading())
        pairs[0][1].send(b"zero-1")
        pairs[1][1].send(b"one-1")
        await until(lambda: any(p.data for p in ps), "first data")
        await asyncio.sleep(0.05)
        first = 0 if ps[0].data else 1
        other = 1 - first
        seen_paused = bytes(ps[other].data)
        pairs[other][1].send(b"+2")
        ts[other].resume_reading()
        want = (b"zero-1", b"one-1")[other] + b"+2"
        await until(lambda: bytes(ps[other].data) == want, "held bytes")
        for t in ts:
            t.close()
        for a, b in pairs:
            b.close()
        for p in ps:
            await p.lost
        return seen_paused, ps[other].calls

    (seen, calls), errors = run(main)
    assert seen == b""
    assert calls[0] == "made" and calls[-1] == "lost"
    assert errors == []


def test_close_from_another_protocols_callback_and_slot_reuse():
    # Two connections whose bytes arrive in one batch; whichever is
    # delivered first closes the other, whose bytes (already in the batch)
    # must never reach its protocol.  With room for two connections, the
    # next one takes the freed slot under a new handle (generation): the
    # old handle finds nothing, the new one its own transport.
    async def main():
        loop = asyncio.get_running_loop()
        pairs, ts, ps = await two_connections_one_acting_on_the_other(
            loop, lambda t: t.close())
        handles = [t._h for t in ts]
        pairs[0][1].send(b"zero")
        pairs[1][1].send(b"one")
        await until(lambda: any(p.data for p in ps), "first data")
        first = 0 if ps[0].data else 1
        other = 1 - first
        await ps[other].lost
        gone = handles[other]
        a, b = socket.socketpair()
        t3, p3 = await loop.connect_accepted_socket(Recorder, a)
        b.send(b"three")
        await until(lambda: p3.data == b"three", "new connection's data")
        conns = loop._conns
        state = (gone in conns, conns.get(gone), conns.get(t3._h) is t3,
                 t3._h & 0xFFFFFFFF == gone & 0xFFFFFFFF, t3._h != gone,
                 len(conns))
        for t in (ts[first], t3):
            t.close()
        await ps[first].lost
        await p3.lost
        for s in (a, b, *(x for pr in pairs for x in pr)):
            s.close()
        return ps[other].calls, bytes(ps[first].data), state, len(conns)

    (calls, data, state, left), errors = run(main, max_connections=2)
    assert calls == ["made", "lost"]
    assert data in (b"zero", b"one")
    assert state == (False, None, True, True, True, 2)
    assert left == 0
    assert errors == []


# -- BufferedProtocol -----------------------------------------------------------


class SmallBuffers(asyncio.BufferedProtocol):
    def __init__(self, size):
        self.buf = bytearray(size)
        self.data = bytearray()
        self.sizes = []
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        return self.buf

    def buffer_updated(self, nbytes):
        self.sizes.append(nbytes)
        self.data += self.buf[:nbytes]

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def test_buffered_protocol_with_small_buffers():
    payload = os.urandom(300_000)

    async def main():
        server, made = await recording_server(lambda: SmallBuffers(1000))
        r, w = await open_client(server)
        w.write(payload)
        await w.drain()
        w.write_eof()
        await made[0].lost
        await close_writer(w)
        await close_server(server)
        return bytes(made[0].data), max(made[0].sizes)

    (data, biggest), errors = run(main)
    assert data == payload
    assert biggest <= 1000
    assert errors == []


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_buffered_protocol_with_a_buffer_that_fits(kind):
    # The common case: every read fits the protocol's buffer (bytearray or
    # a view of one), one copy per read.
    payload = os.urandom(500_000)

    class Big(SmallBuffers):
        def __init__(self):
            super().__init__(1 << 20)
            if kind is memoryview:
                self.buf = memoryview(self.buf)

        def buffer_updated(self, nbytes):
            self.sizes.append(nbytes)
            self.data += self.buf[:nbytes]
            self.buf[:nbytes] = bytes(nbytes)    # stale bytes must not pass

    async def main():
        t, p, b = await accepted(Big)
        for i in range(0, len(payload), 7919):
            b.send(payload[i:i + 7919])
            if i % 10 == 0:
                await asyncio.sleep(0)
        await until(lambda: len(p.data) >= len(payload), "all bytes")
        t.close()
        b.close()
        await p.lost
        return bytes(p.data), len(p.sizes)

    (data, calls), errors = run(main)
    assert data == payload
    assert errors == []


def test_buffered_protocol_pausing_inside_buffer_updated():
    # The protocol pauses after each small buffer: the rest of the bytes it
    # was handed waits, in order, until it resumes.
    payload = os.urandom(200_000)

    class Pausing(SmallBuffers):
        def buffer_updated(self, nbytes):
            super().buffer_updated(nbytes)
            self.transport.pause_reading()
            asyncio.get_running_loop().call_later(
                0.0005, self.transport.resume_reading)

    async def main():
        t, p, b = await accepted(lambda: Pausing(4096))
        b.sendall(payload)
        await until(lambda: len(p.data) >= len(payload), "all bytes")
        t.close()
        b.close()
        await p.lost
        return bytes(p.data), len(p.sizes)

    (data, calls), errors = run(main)
    assert data == payload
    assert calls >= len(payload) // 4096
    assert errors == []


def test_buffered_protocol_empty_buffer_is_a_fatal_error():
    class Empty(SmallBuffers):
        def get_buffer(self, sizehint):
            return bytearray()

    async def main():
        t, p, b = await accepted(lambda: Empty(10))
        b.send(b"x")
        exc = await p.lost
        b.close()
        return exc

    exc, errors = run(main)
    assert isinstance(exc, RuntimeError)
    assert [e["message"] for e in errors] == [
        "Fatal error: protocol.get_buffer() call failed."]


# -- exceptions in callbacks ------------------------------------------------------


def test_exception_in_data_received_closes_only_that_transport():
    class Boom(Recorder):
        def data_received(self, data):
            super().data_received(data)
            if data == b"boom":
                raise ZeroDivisionError("boom")

    async def main():
        server, made = await recording_server(lambda: Boom(echo=True))
        r1, w1 = await open_client(server)
        r2, w2 = await open_client(server)
        w1.write(b"boom")
        w2.write(b"fine")
        await until(lambda: len(made) == 2 and all(m.data for m in made))
        gone = await r1.read()               # the server closed it
        w2.write(b"!")
        still = await r2.readexactly(5)
        lost = [m.lost.result() if m.lost.done() else "open" for m in made]
        for w in (w1, w2):
            await close_writer(w)
        await close_server(server)
        return gone, still, lost

    (gone, still, lost), errors = run(main)
    assert still == b"fine!"
    assert sum(isinstance(x, ZeroDivisionError) for x in lost) == 1
    assert lost.count("open") == 1
    assert len(errors) == 1
    ctx = errors[0]
    assert ctx["message"] == ("Fatal error: protocol.data_received() call "
                              "failed.")
    assert isinstance(ctx["exception"], ZeroDivisionError)
    assert isinstance(ctx["transport"], CTransport)
    assert isinstance(ctx["protocol"], Recorder)


async def first_closed_then_next_served(server):
    """A server whose first connection is closed by a failure: the first
    client's read (EOF, b"", if closed), then a second client's echo of
    b"next"; the clients and the server are closed after."""
    r1, w1 = await open_client(server)
    gone = await r1.read()
    r2, w2 = await open_client(server)
    w2.write(b"next")
    echoed = await r2.readexactly(4)
    for w in (w1, w2):
        await close_writer(w)
    await close_server(server)
    return gone, echoed


@pytest.mark.parametrize("debug", [False, True])
def test_protocol_factory_that_raises_closes_only_that_connection(debug):
    """The accepted connection is closed at once (the client reads EOF;
    the stdlib's loop drops the socket, closed when it is collected, which
    in debug mode is later: its traceback holds it), the server goes on
    serving, and the exception is reported to the handler in debug mode
    only, with the stdlib's message."""
    calls = []

    def factory():
        calls.append(len(calls))
        if len(calls) == 1:
            raise ZeroDivisionError("factory")
        return Recorder(echo=True)

    async def main():
        asyncio.get_running_loop().set_debug(debug)
        server = await asyncio.get_running_loop().create_server(
            factory, "127.0.0.1", 0)
        return await first_closed_then_next_served(server)

    (gone, echoed), errors = run(main)
    assert (gone, echoed, len(calls)) == (b"", b"next", 2)
    if debug:
        assert [e["message"] for e in errors] == [
            "Error on transport creation for incoming connection"]
        assert isinstance(errors[0]["exception"], ZeroDivisionError)
    else:
        assert errors == []


def test_connection_made_that_raises_closes_that_connection():
    """A protocol whose connection_made raises never gets a working
    connection: the transport is closed (the client reads EOF) with the
    exception reported as a fatal error, its connection_lost gets that
    exception, and the server goes on.  The stdlib's loop reports it but
    leaves the connection open with nobody serving it (uvloop closes it,
    as here): an open one would hold its descriptor until the client
    left."""
    class BadMade(Recorder):
        first = True

        def connection_made(self, transport):
            super().connection_made(transport)
            if BadMade.first:
                BadMade.first = False
                raise ZeroDivisionError("made")

    async def main():
        server, made = await recording_server(lambda: BadMade(echo=True))
        gone, echoed = await first_closed_then_next_served(server)
        return gone, await made[0].lost, echoed, made

    (gone, lost, echoed, made), errors = run(main)
    assert (gone, echoed) == (b"", b"next")
    assert isinstance(lost, ZeroDivisionError)
    assert made[0].calls == ["made", "lost"]
    assert [e["message"] for e in errors] == [
        "Fatal error: protocol.connection_made() call failed."]
    assert errors[0]["exception"] is lost


def test_exception_in_connection_lost_goes_to_the_handler():
    class BadLost(Recorder):
        def connection_lost(self, exc):
            super().connection_lost(exc)
            raise KeyError("lost")

    async def main():
        t, p, b = await accepted(BadLost)
        t.close()
        await p.lost
        await asyncio.sleep(0.01)
        b.close()
        return p.calls

    calls, errors = run(main)
    assert calls == ["made", "lost"]
    assert [type(e["exception"]) for e in errors] == [KeyError]


# -- one wait for everything ------------------------------------------------------


def test_add_reader_shares_the_wait_and_refuses_a_transports_fd():
    async def main():
        loop = asyncio.get_running_loop()
        server, made, ct, cp = await server_and_client()
        r, w = os.pipe()
        got = loop.create_future()
        loop.add_reader(r, lambda: got.set_result(os.read(r, 10)))
        os.write(w, b"piped")
        piped = await got
        loop.remove_reader(r)
        fd = ct.get_extra_info("socket").fileno()
        with pytest.raises(RuntimeError, match="is used by transport"):
            loop.add_reader(fd, lambda: None)
        with pytest.raises(RuntimeError, match="is used by transport"):
            loop.add_writer(fd, lambda: None)
        # The server side: a connection the C loop accepted.
        ssock = made[0].transport.get_extra_info("socket")
        with pytest.raises(RuntimeError, match="is used by transport"):
            loop.add_reader(ssock.fileno(), lambda: None)
        ct.write(b"still works")
        await until(lambda: bytes(made[0].data) == b"still works")
        os.close(r)
        os.close(w)
        ct.close()
        await cp.lost
        await close_server(server)
        return piped

    piped, errors = run(main)
    assert piped == b"piped"


def test_writer_callbacks_and_remove_in_the_same_batch():
    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        calls = []

        def first():
            calls.append("first")
            loop.remove_writer(b)        # its event may be in this batch

        def second():
            calls.append("second")
            loop.remove_writer(a)
            loop.remove_writer(b)

        loop.add_writer(a, second)
        loop.add_writer(b, first)
        await asyncio.sleep(0.05)
        a.close()
        b.close()
        return calls

    calls, errors = run(main)
    # Each ran once at most, and the removal stopped the repeats.
    assert sorted(set(calls)) == sorted(calls)
    assert "second" in calls


def test_timers_and_call_soon_threadsafe_wake_a_blocked_wait():
    async def main():
        loop = asyncio.get_running_loop()
        order = []
        loop.call_later(0.03, order.append, "late")
        loop.call_later(0.01, order.append, "early")
        loop.call_soon(order.append, "soon")
        t0 = time.monotonic()
        fut = loop.create_future()

        def from_thread():
            time.sleep(0.05)
            loop.call_soon_threadsafe(fut.set_result, time.monotonic())

        th = threading.Thread(target=from_thread)
        th.start()
        woke = await fut
        th.join()
        return order, woke - t0, time.monotonic() - woke

    (order, elapsed, lag), errors = run(main)
    assert order == ["soon", "early", "late"]
    assert 0.04 <= elapsed < 5
    assert lag < 1.0


def test_call_soon_threadsafe_bursts_from_threads_all_run(aio_path):
    # Four threads each queue 500 callbacks while the loop waits: every
    # one runs, in each thread's order, though wakeups made while one is
    # pending write nothing (the C loop's eventfd, not the self-pipe).
    async def main():
        loop = asyncio.get_running_loop()
        # What the stdlib's self-pipe reader would hand on (signal
        # numbers, or call_soon_threadsafe's zero bytes).
        piped = []
        loop._process_self_data = piped.append
        got = {n: [] for n in range(4)}
        done = loop.create_future()
        left = [4 * 500]

        def one(n, i):
            got[n].append(i)
            left[0] -= 1
            if not left[0]:
                done.set_result(None)

        def burst(n):
            for i in range(500):
                loop.call_soon_threadsafe(one, n, i)

        threads = [threading.Thread(target=burst, args=(n,))
                   for n in range(4)]
        for th in threads:
            th.start()
        await done
        for th in threads:
            th.join()
        return got, piped

    (got, piped), errors = run(main)
    assert errors == []
    assert piped == []              # the self-pipe carried none of it
    assert all(got[n] == list(range(500)) for n in range(4))


def test_call_soon_threadsafe_after_close_is_refused_not_a_crash():
    # A thread that keeps calling while the loop closes gets the
    # stdlib's RuntimeError once it is closed; the wakeup of a loop torn
    # down meanwhile is a no-op.
    loop = EventLoop()
    stop = threading.Event()
    seen = []

    def keep_calling():
        while not stop.is_set():
            try:
                loop.call_soon_threadsafe(lambda: None)
            except RuntimeError as exc:
                seen.append(str(exc))
                return

    th = threading.Thread(target=keep_calling)
    th.start()
    loop.run_until_complete(asyncio.sleep(0.01))
    loop.close()
    th.join(LIMIT)
    stop.set()
    assert not th.is_alive()
    assert seen == ["Event loop is closed"]
    loop._write_to_self()           # closed: nothing to wake, no error


def test_timeout_is_rounded_up_not_spun():
    # A timer 0.5 ms away: the wait rounds up to 1 ms instead of polling.
    async def main():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.sleep(0.0005)
        return loop.time() - t0

    elapsed, errors = run(main)
    assert elapsed >= 0.0005


@pytest.mark.parametrize("backend, trigger", [
    ("epoll", "edge"), ("epoll", "level"), ("poll", "level"),
    ("select", "level")])
def test_many_connections_on_each_backend(backend, trigger):

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Recorder(echo=True),
                                          "127.0.0.1", 0)

        async def client(i):
            r, w = await open_client(server)
            msg = b"%d:" % i + b"x" * (i * 37 % 3000)
            w.write(msg)
            got = await r.readexactly(len(msg))
            await close_writer(w)
            return got == msg

        oks = await asyncio.gather(*(client(i) for i in range(100)))
        await close_server(server)
        return oks

    oks, errors = run(main, backend=backend, trigger=trigger)
    assert all(oks) and len(oks) == 100
    assert errors == []


def test_table_full_falls_back_to_stdlib_transports():
    async def main():
        loop = asyncio.get_running_loop()
        pairs = [socket.socketpair() for _ in range(3)]
        kinds, protos = [], []
        for a, b in pairs:
            t, p = await loop.connect_accepted_socket(
                lambda: Recorder(echo=True), a)
            kinds.append(type(t).__name__)
            protos.append(p)
        for i, (a, b) in enumerate(pairs):
            b.send(b"n%d" % i)
        await until(lambda: all(p.data for p in protos))
        echoed = [b.recv(10) for a, b in pairs]
        for p in protos:
            p.transport.close()
        for p in protos:
            await p.lost
        for a, b in pairs:
            b.close()
        return kinds, echoed

    (kinds, echoed), errors = run(main, max_connections=2)
    assert kinds == ["CTransport", "CTransport", "_SelectorSocketTransport"]
    assert echoed == [b"n0", b"n1", b"n2"]


def test_lazily_made_socket_is_closed_once():
    async def main():
        server, made, ct, cp = await server_and_client()
        st = made[0].transport
        sock = st.get_extra_info("socket")
        fd = sock.fileno()
        st.close()
        await made[0].lost
        await cp.lost
        await close_server(server)
        gc.collect()
        try:
            os.fstat(fd)
            still_open = True
        except OSError:
            still_open = False
        return still_open

    still_open, errors = run(main)
    # The fd may already name another file only if something reused it.
    assert not still_open


def test_loop_close_with_open_transports_is_safe():
    loop = EventLoop()

    async def main():
        server, made, ct, cp = await server_and_client()
        return ct, made[0].transport, server

    ct, st, server = loop.run_until_complete(main())
    server.close()
    loop.close()
    # Nothing reaches the freed C loop.
    ct.write(b"x")
    assert ct.is_closing()
    assert ct.get_write_buffer_size() == 0
    ct.close()
    ct.abort()
    st.pause_reading()


def test_new_event_loop_options_are_checked():
    with pytest.raises(ValueError):
        EventLoop(trigger="sideways")
    with pytest.raises(ValueError, match="not available"):
        EventLoop(backend="nonesuch")
    with pytest.raises(ValueError):
        EventLoop(batch=0)
    with pytest.raises(ValueError):
        EventLoop(max_connections=0)
    with pytest.raises(TypeError):
        EventLoop(batch="many")
    with pytest.raises(ValueError, match="edge"):
        EventLoop(backend="poll", trigger="edge")
    loop = asyncio_loop.new_event_loop(trigger="level")
    try:
        assert loop._trigger == "level"
    finally:
        loop.close()


# -- asyncio's order and errors (found by CPython's own tests) ----------------


def test_write_and_drain_to_a_closed_peer_raises_instead_of_spinning():
    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Recorder, "127.0.0.1", 0)
        lsock = server.sockets[0]
        r, w = await open_client(server)
        for t in list(loop._conns.values()):
            if t is not w.transport:
                t.abort()                    # the server side goes away
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            for _ in range(100000):
                w.write(b"foo\n")
                await w.drain()
        w.close()
        await close_server(server)
        return lsock is not None

    assert run(main)[0]


def test_drain_after_close_raises_connection_reset():
    async def main():
        server, made, ct, cp = await server_and_client()
        r, w = await open_client(server)
        w.close()
        with pytest.raises(ConnectionResetError):
            w.write(b"data")
            await w.drain()
        ct.close()
        await close_server(server)
        return True

    assert run(main)[0]


def test_first_data_comes_after_the_awaiting_task_resumes():
    # create_connection's caller gets its transport before the protocol's
    # first bytes arrive, even when they are already waiting.
    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        b.send(b"early bytes")
        seen = {}

        class P(asyncio.BufferedProtocol):
            def get_buffer(self, n):
                self.buf = bytearray(64)
                return self.buf

            def buffer_updated(self, n):
                seen["transport_known"] = "t" in seen

        t, p = await loop.create_connection(P, sock=a)
        seen["t"] = t
        await until(lambda: "transport_known" in seen)
        t.close()
        b.close()
        return seen["transport_known"]

    known, errors = run(main)
    assert known is True


def test_native_sendfile_through_a_full_socket(tmp_path):
    blob = os.urandom(3 * 2**20)
    path = tmp_path / "blob"
    path.write_bytes(blob)

    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        b.setblocking(False)
        t, p = await loop.connect_accepted_socket(Recorder, a)
        t.write(b"head:")                      # queued bytes go first
        received = bytearray()

        async def reader():
            while len(received) < 5 + len(blob) - 1000 + 5:
                chunk = await loop.sock_recv(b, 65536)
                if not chunk:
                    break
                received.extend(chunk)
                await asyncio.sleep(0.001)     # a slow peer: EAGAIN

        task = asyncio.ensure_future(reader())
        with open(path, "rb") as f:
            # fallback=False: only the native path may serve it.
            fut = asyncio.ensure_future(loop.sendfile(t, f, offset=1000,
                                                      fallback=False))
            await asyncio.sleep(0)
            with pytest.raises(RuntimeError, match="sendfile is in progress"):
                t.write(b"no")
            sent = await fut
            pos = f.tell()
        t.write(b":tail")
        await task
        t.close()
        await p.lost
        b.close()
        return sent, pos, bytes(received)

    (sent, pos, received), errors = run(main)
    assert sent == len(blob) - 1000
    assert pos == len(blob)
    assert received == b"head:" + blob[1000:] + b":tail"
    assert errors == []


def test_sendfile_without_a_file_descriptor_falls_back():
    async def main():
        loop = asyncio.get_running_loop()
        t, p, b = await accepted(Recorder)
        b.setblocking(False)
        f = io.BytesIO(b"in memory " * 1000)
        with pytest.raises(asyncio.SendfileNotAvailableError):
            await loop.sendfile(t, f, fallback=False)
        sent = await loop.sendfile(t, f)         # asyncio's write() path
        got = bytearray()
        while len(got) < sent:
            got += await loop.sock_recv(b, 65536)
        t.close()
        await p.lost
        b.close()
        return sent, bytes(got)

    (sent, got), errors = run(main)
    assert sent == 10_000
    assert got == b"in memory " * 1000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_child_gets_a_clear_error_and_the_parent_goes_on():
    loop = EventLoop()
    try:
        async def setup():
            server, made, ct, cp = await server_and_client(
                lambda: Recorder(echo=True))
            return server, ct, cp

        server, ct, cp = loop.run_until_complete(setup())
        pid = os.fork()
        if pid == 0:                              # the child
            code = 1
            try:
                try:
                    loop.run_until_complete(asyncio.sleep(0))
                except RuntimeError as exc:
                    code = 0 if "before fork()" in str(exc) else 2
                ct.write(b"from child")            # no crash, dropped
                loop.close()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)

        async def after():
            ct.write(b"parent")
            await until(lambda: bytes(cp.data) == b"parent", "echo")
            ct.close()
            await cp.lost
            await close_server(server)

        loop.run_until_complete(asyncio.wait_for(after(), LIMIT))
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        loop.close()


# -- the loop's own iteration (EventLoop._run_once) ---------------------------

def test_iteration_runs_timers_in_order_and_prunes_cancelled_ones():
    # Past the stdlib's thresholds (over 100 timers, over half of them
    # cancelled) the heap is rebuilt without the cancelled ones; the rest
    # still fire in time order, each once.
    async def main():
        loop = asyncio.get_running_loop()
        fired = []
        before = len(loop._scheduled)   # wait_for's own timer
        handles = [loop.call_later(0.05 + i * 0.0001, fired.append, i)
                   for i in range(300)]
        for i, h in enumerate(handles):
            if i % 4:
                h.cancel()
        await asyncio.sleep(0)          # one iteration: the rebuild
        assert len(loop._scheduled) == before + 75
        assert loop._timer_cancelled_count == 0
        await asyncio.sleep(0.3)
        return fired

    fired, errors = run(main)
    assert fired == list(range(0, 300, 4))
    assert errors == []


@pytest.mark.parametrize("make_loop", [EventLoop, asyncio.new_event_loop],
                         ids=["pyepoll", "stdlib"])
def test_iteration_runs_only_callbacks_ready_before_it(make_loop):
    # A callback scheduled by a callback runs in the next iteration, ahead
    # of the I/O callbacks of that iteration's wait: the same order on
    # pyepoll's iteration as on the stdlib's.
    async def main():
        loop = asyncio.get_running_loop()
        order = []
        r, w = socket.socketpair()
        try:
            def on_readable():
                order.append("io")
                loop.remove_reader(r)

            def first():
                order.append("first")
                w.send(b"x")
                loop.call_soon(order.append, "second")

            loop.add_reader(r, on_readable)
            loop.call_soon(first)
            await until(lambda: len(order) == 3, "three callbacks")
            return order
        finally:
            r.close()
            w.close()

    loop = make_loop()
    try:
        order = loop.run_until_complete(asyncio.wait_for(main(), LIMIT))
    finally:
        loop.close()
    assert order == ["first", "second", "io"]


def test_debug_mode_logs_slow_callbacks(caplog):
    # Debug mode keeps the stdlib's iteration, slow-callback warning included.
    async def main():
        loop = asyncio.get_running_loop()
        loop.slow_callback_duration = 0.01
        loop.call_soon(time.sleep, 0.05)
        await asyncio.sleep(0.01)

    loop = EventLoop()
    loop.set_debug(True)
    try:
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            loop.run_until_complete(asyncio.wait_for(main(), LIMIT))
    finally:
        loop.close()
    assert any("took" in r.getMessage() and "sleep" in r.getMessage()
               for r in caplog.records), caplog.text


@pytest.mark.parametrize("make_loop", [EventLoop, asyncio.new_event_loop],
                         ids=["pyepoll", "stdlib"])
def test_call_soon_handles_behave_as_the_stdlibs(make_loop):
    # pyepoll's call_soon makes its Handle itself and its iteration runs
    # plain Handles inline: the same handle, context, cancellation and
    # failure report as the stdlib's.
    var = contextvars.ContextVar("var", default="unset")
    loop = make_loop()
    reports = []
    loop.set_exception_handler(lambda lp, ctx: reports.append(ctx))
    seen = []

    def boom(x):
        raise ValueError(f"boom {x}")

    try:
        ctx = contextvars.copy_context()
        ctx.run(var.set, "in ctx")
        h1 = loop.call_soon(lambda: seen.append(var.get()), context=ctx)
        h2 = loop.call_soon(seen.append, "cancelled")
        h3 = loop.call_soon(boom, 7)
        h2.cancel()
        loop.call_soon(loop.stop)
        assert type(h1) is asyncio.Handle and not h1.cancelled()
        assert h2.cancelled()
        loop.run_forever()
    finally:
        loop.close()
    assert seen == ["in ctx"]
    assert len(reports) == 1
    r = reports[0]
    assert set(r) == {"message", "exception", "handle"}
    assert r["message"].startswith("Exception in callback ") and "boom" in r["message"]
    assert isinstance(r["exception"], ValueError) and str(r["exception"]) == "boom 7"
    assert r["handle"] is h3
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.call_soon(seen.append, 1)


# -- deferred writes: sent before the next wait, and never left unsent -------


def _adopted_pair(loop, factory):
    """A CTransport on one end of a socket pair (its protocol from factory)
    and the blocking peer socket, with a timeout."""
    a, b = socket.socketpair()
    t, p = loop.run_until_complete(
        loop.connect_accepted_socket(factory, a))
    assert isinstance(t, CTransport)
    b.settimeout(LIMIT / 3)
    return t, p, b


def _recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def test_writes_of_one_callback_leave_in_one_send_before_the_wait():
    loop = EventLoop()
    try:
        t, p, b = _adopted_pair(loop, asyncio.Protocol)
        t.write(b"head")
        t.write(memoryview(b"body"))
        # Queued for the next wait, counted as asyncio's write buffer.
        assert t.get_write_buffer_size() == 8
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            b.recv(16)
        b.setblocking(True)
        b.settimeout(LIMIT / 3)
        loop.run_until_complete(asyncio.sleep(0))
        assert t.get_write_buffer_size() == 0
        # One send: the peer reads both in one recv.
        assert b.recv(16) == b"headbody"
        t.close()
        b.close()
    finally:
        loop.close()


def test_writes_leave_when_the_loop_stops_in_the_same_callback():
    loop = EventLoop()

    class Answer(asyncio.Protocol):
        def connection_made(self, transport):
            self.t = transport

        def data_received(self, data):
            self.t.write(b"HTTP/1.1 200 OK\r\n\r\n")
            self.t.write(b"hello " + data)
            loop.stop()              # no further iteration, no further wait

    try:
        t, p, b = _adopted_pair(loop, Answer)
        b.sendall(b"you")
        loop.run_forever()
        want = b"HTTP/1.1 200 OK\r\n\r\nhello you"
        assert _recv_exact(b, len(want)) == want
        t.close()
        b.close()
    finally:
        loop.close()


def test_writes_leave_when_run_until_complete_returns_right_after():
    loop = EventLoop()
    try:
        t, p, b = _adopted_pair(loop, asyncio.Protocol)
        fut = loop.create_future()
        # Runs in the same iteration as run_until_complete's own stop.
        fut.add_done_callback(lambda f: t.write(b"last words"))
        loop.call_soon(fut.set_result, None)
        loop.run_until_complete(fut)
        assert _recv_exact(b, 10) == b"last words"
        t.close()
        b.close()
    finally:
        loop.close()


def test_writes_leave_on_loop_close_and_on_abort():
    loop = EventLoop()
    t, p, b = _adopted_pair(loop, asyncio.Protocol)
    t2, p2, b2 = _adopted_pair(loop, asyncio.Protocol)
    # Written while the loop is not running: no wait will come.
    t.write(b"before close")
    t2.write(b"before abort")
    t2.abort()                       # the stdlib sent it at write()
    assert _recv_exact(b2, 12) == b"before abort"
    assert b2.recv(16) == b""
    loop.close()
    assert _recv_exact(b, 12) == b"before close"
    assert b.recv(16) == b""         # then the close
    b.close()
    b2.close()


def test_close_and_write_eof_send_deferred_writes_first():
    async def main():
        loop = asyncio.get_running_loop()
        t, p, b = await accepted(Recorder)
        b.setblocking(False)
        t.write(b"a" * 1000)
        t.write_eof()                # FIN after the deferred bytes
        got = b""
        while True:
            chunk = await loop.sock_recv(b, 4096)
            if not chunk:
                break
            got += chunk
        t.close()
        exc = await p.lost
        t2, p2, b2 = await accepted(Recorder)
        b2.setblocking(False)
        t2.write(b"b" * 1000)
        t2.close()                   # connection_lost after they are out
        lost_at_once = p2.lost.done()
        exc2 = await p2.lost
        got2 = b""
        while True:
            chunk = await loop.sock_recv(b2, 4096)
            if not chunk:
                break
            got2 += chunk
        b.close()
        b2.close()
        return got, exc, got2, exc2, lost_at_once

    (got, exc, got2, exc2, lost_at_once), errors = run(main)
    assert got == b"a" * 1000 and exc is None
    assert got2 == b"b" * 1000 and exc2 is None
    assert not lost_at_once          # scheduled, as the stdlib's close()
    assert not errors


def test_deferred_write_to_a_gone_peer_reports_the_error():
    async def main():
        t, p, b = await accepted(lambda: Recorder(keep_open=True))
        b.close()
        await until(lambda: "eof" in p.calls, "peer EOF")
        t.write(b"into the void")         # deferred: fails at the flush
        assert not p.lost.done()
        return await p.lost

    exc, errors = run(main)
    assert isinstance(exc, (BrokenPipeError, ConnectionResetError))


def test_bytes_written_by_resume_writing_while_closing_are_sent():
    # TLS writes its close_notify from resume_writing after close(): the
    # DRAINED that ends the close must not drop it.
    size = 4 * 2**20

    class Closer(asyncio.Protocol):
        def connection_made(self, transport):
            self.t = transport
            self.lost = asyncio.get_running_loop().create_future()

        def resume_writing(self):
            self.t.write(b"bye")

        def connection_lost(self, exc):
            if not self.lost.done():
                self.lost.set_result(exc)

    async def main():
        loop = asyncio.get_running_loop()
        t, p, b = await accepted(Closer)
        b.setblocking(False)
        t.write(b"z" * size)
        assert t.get_write_buffer_size() > 0
        t.close()
        got = bytearray()
        while True:
            chunk = await loop.sock_recv(b, 1 << 20)
            if not chunk:
                break
            got += chunk
        b.close()
        return bytes(got[-3:]), len(got), await p.lost

    (tail, n, exc), errors = run(main)
    assert n == size + 3 and tail == b"bye"
    assert exc is None

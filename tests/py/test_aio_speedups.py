"""The asyncio loop's C path (pyepoll._speedups, csrc/cpython/speedups.c)
against its pure Python path: the switch, and the edge cases the C walk
and the C CTransport.write handle or hand back to Python.  Each behaviour
test runs on both paths (the aio_path fixture) with the same expectations,
so the two cannot drift apart; test_aio_loop.py and test_asyncio.py run
whole on both paths too."""
from __future__ import annotations

import array
import asyncio
import errno
import functools
import importlib.util
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

from pyepoll import asyncio_loop
from pyepoll.asyncio_loop import CTransport, EventLoop
from test_aio_loop import LIMIT, run, until

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("aio_path")]

IS_CPYTHON = sys.implementation.name == "cpython"
# Inputs write() refuses, and a few odd bytes-likes it takes.
NOT_BYTES = ["text", 7, None, [1, 2], 3.5]


async def pair(protocol):
    """A C transport over one end of a Unix socket pair (adopted: a C
    connection), and the other end as a blocking socket."""
    a, b = socket.socketpair()
    loop = asyncio.get_running_loop()
    t, p = await loop.connect_accepted_socket(protocol, a)
    b.settimeout(LIMIT)
    return t, p, b


def recv_exactly(sock, n):
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


# -- the switch -------------------------------------------------------------------


def test_the_path_in_use_is_what_the_fixture_chose(aio_path):
    async def main():
        t, p, b = await pair(asyncio.Protocol)
        loop = asyncio.get_running_loop()
        info = (type(t._w).__name__, loop._sb is not None,
                type(CTransport.__dict__["write"]).__name__,
                isinstance(t, asyncio.Transport),
                isinstance(t, asyncio.WriteTransport))
        t.close()
        b.close()
        return info

    info, errors = run(main)
    if aio_path == "c":
        assert info == ("Conn", True, "method_descriptor", True, True)
        assert asyncio_loop.SPEEDUPS is True
    else:
        assert info == ("NoneType", False, "function", True, True)
        assert asyncio_loop.SPEEDUPS is False
    assert errors == []


@pytest.mark.parametrize("env, want", [("0", "False function"),
                                       (None, None)])
def test_pyepoll_speedups_environment_variable(env, want, aio_path):
    environ = {k: v for k, v in os.environ.items() if k != "PYEPOLL_SPEEDUPS"}
    if env is not None:
        environ["PYEPOLL_SPEEDUPS"] = env
    code = ("from pyepoll import asyncio_loop as a; "
            "print(a.SPEEDUPS, type(a.CTransport.__dict__['write']).__name__)")
    out = subprocess.run([sys.executable, "-c", code], env=environ,
                         capture_output=True, text=True, timeout=60,
                         check=True).stdout.strip()
    if want is None:
        # Unset: the C path wherever pyepoll._speedups is there (CPython),
        # whatever this process was started with (PYEPOLL_SPEEDUPS=0 makes
        # its own _sp_module None).
        built = importlib.util.find_spec("pyepoll._speedups") is not None
        want = "True method_descriptor" if built else "False function"
    assert out == want


@pytest.mark.skipif(os.environ.get("PYEPOLL_REQUIRE_INSTALLED") != "1"
                    or not IS_CPYTHON,
                    reason="an installed wheel on CPython must carry it; a "
                           "source tree may have built _core alone")
def test_installed_cpython_package_has_the_abi3_speedups():
    import pyepoll._speedups as sp
    assert sp.__file__.endswith("_speedups.abi3.so")
    assert asyncio_loop._sp_module is sp


# -- the batch walk ---------------------------------------------------------------


class _Interrupted:
    """A server on a new EventLoop whose three clients' bytes (ki-0, ki-1,
    ok-2) wait in the kernel before the loop's next wait; data_received
    records (data, what `ran` held then) and raises KeyboardInterrupt for
    the ki- ones."""

    def __init__(self) -> None:
        self.loop = EventLoop()
        self.got: list = []
        self.ran: list = []
        protos: list = []
        got, ran = self.got, self.ran

        class P(asyncio.Protocol):
            def connection_made(self, t):
                protos.append(self)

            def data_received(self, data):
                got.append((data, list(ran)))
                if data.startswith(b"ki"):
                    raise KeyboardInterrupt

        loop = self.loop
        self.server = loop.run_until_complete(
            loop.create_server(P, "127.0.0.1", 0))
        port = self.server.sockets[0].getsockname()[1]
        self.clients = [socket.create_connection(("127.0.0.1", port))
                        for _ in range(3)]
        loop.run_until_complete(until(lambda: len(protos) == 3, "accepts"))
        for c, msg in zip(self.clients, (b"ki-0", b"ki-1", b"ok-2")):
            c.sendall(msg)
        time.sleep(0.3)         # all three arrive before the loop waits

    def rest_and_close(self) -> list:
        """Run until all three were delivered; their data, sorted."""
        loop = self.loop
        loop.run_until_complete(until(lambda: len(self.got) == 3, "the rest"))
        for c in self.clients:
            c.close()
        self.server.close()
        loop.run_until_complete(self.server.wait_closed())
        return sorted(d for d, _ in self.got)


def test_keyboard_interrupt_in_a_queued_walk_keeps_the_rest():
    # A callback ready before the wait: the batch is walked by a callback
    # queued behind it (aio_iter.c's queue_walk, _walk_later), and what a
    # KeyboardInterrupt there leaves is handed out before the next wait.
    x = _Interrupted()
    loop = x.loop
    try:
        loop.call_soon(x.ran.append, "ready")
        with pytest.raises(KeyboardInterrupt):
            loop.run_forever()
        # The callback ready before the wait ran first.
        assert len(x.got) == 1 and x.got[0][1] == ["ready"]
        assert loop._rest is not None and loop._later is None
        with pytest.raises(KeyboardInterrupt):
            loop.run_forever()
        assert x.rest_and_close() == [b"ki-0", b"ki-1", b"ok-2"]
    finally:
        loop.close()


def test_keyboard_interrupt_mid_batch_keeps_the_rest():
    x = _Interrupted()
    loop = x.loop
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run_forever()
        assert len(x.got) == 1
        # The rest of that batch is kept (edge-triggered: never reported
        # again), and handed out before the next wait.
        assert loop._rest is not None
        with pytest.raises(KeyboardInterrupt):
            loop.run_forever()
        assert x.rest_and_close() == [b"ki-0", b"ki-1", b"ok-2"]
    finally:
        loop.close()


class CallableSink:
    """A data_received that is an instance with __call__ (no vectorcall
    slot: the call goes through tp_call)."""

    def __init__(self, out):
        self.out = out

    def __call__(self, data):
        self.out.append(data)


@pytest.mark.parametrize("kind", ["instance", "partial", "builtin"])
def test_data_received_of_any_callable_kind(kind):
    got = []

    class P(asyncio.Protocol):
        def connection_made(self, t):
            if kind == "instance":
                self.data_received = CallableSink(got)
            elif kind == "partial":
                self.data_received = functools.partial(
                    lambda sink, data: sink.append(data), got)
            else:
                self.data_received = got.append
            t.set_protocol(self)       # the transport reads the new callable

    async def main():
        t, p, b = await pair(P)
        b.sendall(b"one")
        await until(lambda: b"".join(got) == b"one", "first bytes")
        b.sendall(b"two")
        await until(lambda: b"".join(got) == b"onetwo", "all bytes")
        t.close()
        b.close()
        return [type(x) for x in got]

    types, errors = run(main)
    assert set(types) == {bytes}
    assert errors == []


def test_system_exit_in_data_received_propagates():
    class P(asyncio.Protocol):
        def data_received(self, data):
            raise SystemExit(3)

    async def main():
        t, p, b = await pair(P)
        b.sendall(b"x")
        await asyncio.sleep(LIMIT)

    with pytest.raises(SystemExit) as info:
        run(main)
    assert info.value.code == 3


@pytest.mark.parametrize("where", ["get_buffer", "buffer_updated"])
def test_exception_in_a_buffered_callback(where):
    class P(asyncio.BufferedProtocol):
        def __init__(self):
            self.buf = bytearray(100)
            self.lost = asyncio.get_running_loop().create_future()

        def get_buffer(self, n):
            if where == "get_buffer":
                raise ValueError(where)
            return self.buf

        def buffer_updated(self, n):
            raise ValueError(where)

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    async def main():
        t, p, b = await pair(P)
        b.sendall(b"hello")
        exc = await p.lost
        b.close()
        return exc

    exc, errors = run(main)
    assert isinstance(exc, ValueError) and str(exc) == where
    assert [e["message"] for e in errors] == [
        f"Fatal error: protocol.{where}() call failed."]
    assert errors[0]["exception"] is exc
    assert isinstance(errors[0]["transport"], CTransport)


class Keep(asyncio.BufferedProtocol):
    """get_buffer returns what make() gives; bytes collected in order."""

    def __init__(self, make):
        self.make = make
        self.data = bytearray()
        self.lost = asyncio.get_running_loop().create_future()

    def get_buffer(self, n):
        self.last = self.make(n)
        return self.last

    def buffer_updated(self, n):
        self.data += memoryview(self.last).cast("B")[:n]

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


@pytest.mark.parametrize("kind", ["bytearray", "memoryview", "small view",
                                  "view cast to int", "short bytearray",
                                  "array", "view of an array"])
def test_buffered_protocol_buffers_the_c_walk_fills_or_hands_back(kind):
    makers = {
        "array": lambda n: array.array("B", bytes(n + 10)),
        "view of an array": lambda n: memoryview(array.array("h", bytes(
            n + 10 + n % 2)))[1:],
        "bytearray": lambda n: bytearray(n + 10),
        "memoryview": lambda n: memoryview(bytearray(n + 10)),
        "small view": lambda n: memoryview(bytearray(7)),
        "view cast to int": lambda n: memoryview(bytearray(4096)).cast("i"),
        "short bytearray": lambda n: bytearray(3),
    }
    payload = bytes(range(256)) * 8

    async def main():
        t, p, b = await pair(lambda: Keep(makers[kind]))
        b.sendall(payload)
        await until(lambda: len(p.data) >= len(payload), "all bytes")
        t.close()
        b.close()
        return bytes(p.data)

    data, errors = run(main)
    assert data == payload
    assert errors == []


@pytest.mark.parametrize("kind", ["readonly view", "bytes", "strided view"])
def test_buffered_protocol_unwritable_buffer_is_a_fatal_error(kind):
    makers = {"readonly view": lambda n: memoryview(bytes(n + 10)),
              "bytes": lambda n: bytes(n + 10),
              "strided view": lambda n: memoryview(bytearray(2 * n + 20))[::2]}

    async def main():
        t, p, b = await pair(lambda: Keep(makers[kind]))
        b.sendall(b"abc")
        exc = await p.lost
        b.close()
        return exc, bytes(p.data)

    (exc, data), errors = run(main)
    assert data == b""
    assert isinstance(exc, TypeError)
    assert [e["message"] for e in errors] == [
        "Fatal error: protocol.get_buffer() call failed."]


def test_get_buffer_that_closes_the_transport_still_gets_buffer_updated():
    class P(asyncio.BufferedProtocol):
        def __init__(self):
            self.calls = []
            self.lost = asyncio.get_running_loop().create_future()

        def connection_made(self, t):
            self.t = t

        def get_buffer(self, n):
            self.calls.append("get_buffer")
            self.t.close()
            return bytearray(n)

        def buffer_updated(self, n):
            self.calls.append(("buffer_updated", n))

        def connection_lost(self, exc):
            self.calls.append("lost")
            self.lost.set_result(exc)

    async def main():
        t, p, b = await pair(P)
        b.sendall(b"12345")
        await p.lost
        b.close()
        return p.calls

    calls, errors = run(main)
    assert calls == ["get_buffer", ("buffer_updated", 5), "lost"]
    assert errors == []


# -- CTransport.write ---------------------------------------------------------------


class ByteSub(bytes):
    pass


def test_write_takes_every_bytes_like_intact():
    big = bytes(range(256)) * 1024                       # 256 KiB
    pieces = [b"bytes", bytearray(b"bytearray"), memoryview(b"view"),
              memoryview(b"0123456789")[::2], ByteSub(b"sub"),
              memoryview(bytearray(b"\x01\x00\x00\x00")).cast("i"),
              memoryview(big), bytearray(big), b"", bytearray(),
              memoryview(b"")]
    want = b"".join(bytes(x) for x in pieces)

    async def main():
        t, p, b = await pair(asyncio.Protocol)
        loop = asyncio.get_running_loop()
        reader = loop.run_in_executor(None, recv_exactly, b, len(want))
        for x in pieces:
            t.write(x)
        got = await reader
        t.close()
        b.close()
        return got

    got, errors = run(main)
    assert got == want
    assert errors == []


def test_write_of_a_released_view_raises_as_the_python_way():
    async def main():
        t, p, b = await pair(asyncio.Protocol)
        view = memoryview(bytearray(b"abc"))
        view.release()
        with pytest.raises(ValueError, match="released"):
            t.write(view)
        t.write(b"after")
        got = await asyncio.get_running_loop().run_in_executor(
            None, recv_exactly, b, 5)
        t.close()
        b.close()
        return got

    got, errors = run(main)
    assert got == b"after"
    assert errors == []


def stdlib_type_errors():
    """What the stdlib's socket transport says for each of NOT_BYTES."""
    async def main():
        a, b = socket.socketpair()
        loop = asyncio.get_running_loop()
        t, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
        out = []
        for bad in NOT_BYTES:
            with pytest.raises(TypeError) as info:
                t.write(bad)
            out.append(str(info.value))
        t.close()
        b.close()
        return out

    loop = asyncio.SelectorEventLoop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def test_write_of_a_non_bytes_raises_the_stdlib_type_error():
    async def main():
        t, p, b = await pair(asyncio.Protocol)
        out = []
        for bad in NOT_BYTES:
            with pytest.raises(TypeError) as info:
                t.write(bad)
            out.append(str(info.value))
        t.close()
        # Refused also once closed, as the stdlib does.
        with pytest.raises(TypeError):
            t.write("text")
        b.close()
        return out

    out, errors = run(main)
    assert out == stdlib_type_errors()
    assert out[0] == "data argument must be a bytes-like object, not 'str'"


def test_write_after_write_eof_and_after_close(caplog):
    async def main():
        t, p, b = await pair(asyncio.Protocol)
        t.write(b"before")
        t.write_eof()
        with pytest.raises(RuntimeError,
                           match=r"Cannot call write\(\) after write_eof\(\)"):
            t.write(b"after eof")
        with pytest.raises(RuntimeError):
            t.write(bytearray(b"after eof"))
        await asyncio.sleep(0)      # deferred writes leave at the next wait
        got = recv_exactly(b, 6) + b.recv(10)          # then the EOF
        t2, p2, b2 = await pair(asyncio.Protocol)
        t2.close()
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            for _ in range(7):
                t2.write(b"dropped")                    # counted, dropped
        state = t2._w.state() if t2._w is not None else None
        b.close()
        b2.close()
        t.close()
        return got, state, b2

    (got, state, b2), errors = run(main)
    assert got == b"before"
    if state is not None:                        # C: writes go to Python
        assert state[0] == 0 and state[2] == 0
    warned = [r for r in caplog.records
              if r.getMessage() == "socket.send() raised exception."]
    assert len(warned) == 3                      # from the 5th drop on
    assert errors == []


def test_pause_writing_once_at_the_high_water_mark():
    class P(asyncio.Protocol):
        def __init__(self):
            self.calls = []

        def pause_writing(self):
            self.calls.append(("pause", transport.get_write_buffer_size()))

        def resume_writing(self):
            self.calls.append(("resume", transport.get_write_buffer_size()))

    transport = None

    async def main():
        nonlocal transport
        t, p, b = await pair(P)
        transport = t
        t.set_write_buffer_limits(high=64 * 1024, low=16 * 1024)
        if t._w is not None:
            assert t._w.state()[1] == 64 * 1024       # the C copy follows
        chunk = b"x" * 4096
        sent = 0
        while not p.calls and sent < 64 * 1024 * 1024:
            t.write(chunk)
            sent += len(chunk)
        paused_after = sent
        for _ in range(3):
            t.write(chunk)                            # still paused: no call
            sent += len(chunk)
        loop = asyncio.get_running_loop()
        got = await loop.run_in_executor(None, recv_exactly, b, sent)
        await until(lambda: len(p.calls) == 2, "resume_writing")
        t.close()
        b.close()
        return p.calls, paused_after, len(got) == sent

    (calls, paused_after, all_there), errors = run(main)
    assert calls[0][0] == "pause" and calls[0][1] > 64 * 1024
    assert calls[1][0] == "resume" and calls[1][1] <= 16 * 1024
    assert paused_after > 64 * 1024
    assert all_there
    assert errors == []


def test_write_on_a_closed_loop_reaches_no_freed_memory():
    loop = EventLoop()

    async def main():
        return await pair(asyncio.Protocol)

    t, p, b = loop.run_until_complete(main())
    sb = loop._sb
    loop.close()
    t.write(b"x")                        # dropped, as after connection loss
    t.write(bytearray(b"x"))
    with pytest.raises(TypeError):
        t.write("x")
    assert t.is_closing()
    if sb is not None:
        assert t._w.state()[0] == 0
        assert sb.select(0) == -errno.EBADF
        assert sb.walk(loop, asyncio_loop._sp.ConnMap(), True) is None
    b.close()


# -- ConnMap: EventLoop._conns on the C path ------------------------------------


def _conn_map(aio_path):
    if aio_path != "c":
        pytest.skip("ConnMap is the C path's (the Python path keeps a dict)")
    return asyncio_loop._sp_module.ConnMap()


def _h(slot, gen):
    return slot | gen << 32


def test_conn_map_answers_as_the_dict_it_replaces(aio_path):
    m, d = _conn_map(aio_path), {}
    objs = [object() for _ in range(6)]
    ops = [("set", _h(0, 1), 0), ("set", _h(40, 3), 1), ("set", _h(7, 1), 2),
           ("pop", _h(40, 3)), ("set", _h(40, 4), 3), ("del", _h(7, 1)),
           ("set", _h(1000, 9), 4), ("set", _h(0, 1), 5), ("pop", _h(9, 1))]
    for op in ops:
        if op[0] == "set":
            m[op[1]] = d[op[1]] = objs[op[2]]
        elif op[0] == "pop":
            assert m.pop(op[1], "none") is d.pop(op[1], "none")
        else:
            del m[op[1]], d[op[1]]
        assert len(m) == len(d)
        assert sorted(m.keys()) == sorted(d) == sorted(m)
        assert {id(v) for v in m.values()} == {id(v) for v in d.values()}
        assert sorted((k, id(v)) for k, v in m.items()) == \
            sorted((k, id(v)) for k, v in d.items())
        for k in (_h(0, 1), _h(40, 3), _h(40, 4), _h(7, 1), _h(1000, 9)):
            assert (k in m) == (k in d)
            assert m.get(k) is d.get(k)
            if k in d:
                assert m[k] is d[k]
            else:
                with pytest.raises(KeyError):
                    m[k]
    with pytest.raises(KeyError):
        m.pop(_h(9, 1))
    with pytest.raises(KeyError):
        del m[_h(9, 1)]
    m.clear()
    assert len(m) == 0 and m.values() == [] and list(m) == []


def test_conn_map_never_answers_a_stale_handle(aio_path):
    m = _conn_map(aio_path)
    old, new = object(), object()
    m[_h(3, 1)] = old
    # The slot's next connection has the next generation.
    assert m.get(_h(3, 2)) is None and _h(3, 2) not in m
    assert m.pop(_h(3, 2), None) is None and m[_h(3, 1)] is old
    m[_h(3, 2)] = new
    assert m.get(_h(3, 1)) is None and _h(3, 1) not in m
    assert m[_h(3, 2)] is new and len(m) == 1
    assert m.pop(_h(3, 1), "gone") == "gone" and len(m) == 1


def test_conn_map_refuses_what_is_no_handle(aio_path):
    m = _conn_map(aio_path)
    with pytest.raises(TypeError):
        m["1"] = object()
    with pytest.raises(ValueError):
        m[5] = object()                  # generation 0: never a handle
    with pytest.raises(ValueError):
        m[_h(0x7FFFFFF0, 1)] = object()  # beyond the C loop's table
    with pytest.raises(OverflowError):
        m[-1] = object()
    with pytest.raises(TypeError):
        asyncio_loop._sp_module.ConnMap({})
    # Looked up, they are keys no entry has, as in a dict.
    for k in ("1", 5, -1, 1 << 70, None, 1.5):
        assert m.get(k) is None and k not in m
        with pytest.raises(KeyError):
            m[k]
    assert len(m) == 0


def test_conn_map_entry_whose_release_changes_the_map(aio_path):
    m = _conn_map(aio_path)

    class Dropping:
        def __del__(self):
            m.pop(_h(1, 1), None)
            m[_h(2, 1)] = "after"

    m[_h(0, 1)] = Dropping()
    m[_h(1, 1)] = "other"
    m[_h(0, 1)] = "replaced"             # Dropping goes: its __del__ runs
    assert sorted(m.items()) == [(_h(0, 1), "replaced"), (_h(2, 1), "after")]
    m[_h(0, 1)] = Dropping()
    m.clear()
    assert len(m) in (0, 1) and m.get(_h(1, 1)) is None
    m.clear()
    assert len(m) == 0


def test_conn_map_cycle_is_collected(aio_path):
    import gc
    import weakref

    m = _conn_map(aio_path)

    class T:
        pass

    t = T()
    t.conns = m
    m[_h(0, 1)] = t
    ref = weakref.ref(t)
    del t, m
    gc.collect()
    assert ref() is None

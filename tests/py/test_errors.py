"""Every error a user can trigger from Python is an exception with a clear
message, never a crash and never a leak of cffi internals: wrong types and
out-of-range values swept over the public calls of Poller, epoll,
selectors, Loop and pyepoll.http; closed objects and stale handles; and
the object still works afterwards.  (The focused per-API tests live beside
each API; this sweep is the net under them.)"""
from __future__ import annotations

import importlib
import socket

import pytest

import pyepoll
import pyepoll.selectors as pselectors
from pyepoll import Loop, StaleHandleError, http

from conftest import BACKENDS

# Each test on both Loop paths (conftest.loop_path: C calls and Python).
pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("loop_path")]

pepoll = importlib.import_module("pyepoll._epoll")

ALLOWED = (TypeError, ValueError, OverflowError, KeyError, BufferError,
           OSError)
# Words that would mean the binding layer leaked into a message.
LEAKS = ("ctype", "cdata", "initializer for", "pe_", "ffi", "_cffi")
BAD_INTS = ["1", 1.5, None, b"x", [], object(), -1, 2**31, 2**32, 2**63,
            2**64, -2**63 - 1]
# Timeouts: any number is a valid one (None, negative, huge: wait long or
# forever), so only what is not a number.
BAD_TIMEOUTS = ["1", b"x", [], object(), float("nan")]


def expect_clear_error(call, *, allowed=ALLOWED):
    """call() must raise one of ``allowed`` with a message a user can read,
    or succeed (some values are valid for some calls)."""
    try:
        call()
    except allowed as exc:
        msg = str(exc)
        assert msg and msg != "None", f"{type(exc).__name__} without a message"
        low = msg.lower()
        for word in LEAKS:
            assert word not in low, f"{type(exc).__name__}: {msg!r}"
        return exc
    return None


@pytest.mark.parametrize("backend", BACKENDS)
def test_poller_sweep(backend, sockpair):
    a, b = sockpair
    with pyepoll.Poller(backend) as p:
        for v in BAD_INTS + [1.0, float("nan")]:
            expect_clear_error(lambda: p.register(v, pyepoll.READ))
            expect_clear_error(lambda: p.unregister(v))
            expect_clear_error(lambda: p.wait(0, maxevents=v))
        for v in BAD_TIMEOUTS:
            with pytest.raises((TypeError, ValueError)):
                p.wait(v)
        for v in BAD_INTS + [0x7FFFFFFF, 0xFFFFFFFF]:
            exc = expect_clear_error(lambda: p.register(a, v))
            if exc is None:
                p.unregister(a)
        p.register(a, pyepoll.READ)
        for v in BAD_INTS:
            expect_clear_error(lambda: p.modify(a, v))
        # Still a working poller.
        p.modify(a, pyepoll.READ)
        b.send(b"x")
        assert dict(p.wait(1.0)).get(a.fileno(), 0) & pyepoll.READ


def test_epoll_sweep(sockpair):
    a, b = sockpair
    ep = pepoll.epoll()
    try:
        for v in BAD_INTS:
            expect_clear_error(lambda: ep.register(v))
            expect_clear_error(lambda: ep.unregister(v))
            expect_clear_error(lambda: ep.poll(0, v))
            expect_clear_error(lambda: pepoll.epoll(v).close())
        for v in BAD_TIMEOUTS:
            with pytest.raises((TypeError, ValueError)):
                ep.poll(v)
        for v in BAD_INTS:
            exc = expect_clear_error(lambda: ep.register(a, v))
            if exc is None:
                ep.unregister(a)
        ep.register(a)
        b.send(b"x")
        assert ep.poll(1.0)
    finally:
        ep.close()


SELECTORS = [n for n in ("DefaultSelector", "EpollSelector", "PollSelector",
                         "SelectSelector", "KqueueSelector")
             if hasattr(pselectors, n)]


@pytest.mark.parametrize("name", SELECTORS)
def test_selectors_sweep(name, sockpair):
    a, b = sockpair
    sel = getattr(pselectors, name)()
    try:
        for v in BAD_INTS:
            expect_clear_error(lambda: sel.register(v, pselectors.EVENT_READ))
            expect_clear_error(lambda: sel.register(a, v))
            expect_clear_error(lambda: sel.unregister(v))
            expect_clear_error(lambda: sel.get_key(v))
        for v in BAD_TIMEOUTS:
            expect_clear_error(lambda: sel.select(v))
        sel.register(a, pselectors.EVENT_READ, "a")
        for v in BAD_INTS:
            expect_clear_error(lambda: sel.modify(a, v))
        b.send(b"x")
        assert [k.data for k, _ in sel.select(1.0)] == ["a"]
    finally:
        sel.close()
    # Closed: ValueError or RuntimeError as the stdlib, never a crash.
    for call in (lambda: sel.register(a, 1), lambda: sel.select(0),
                 lambda: sel.modify(a, 1), lambda: sel.unregister(a)):
        expect_clear_error(call, allowed=ALLOWED + (RuntimeError,))


HANDLE_CALLS = ["recv", "buffered", "peer", "fileno", "get_token",
                "pause_reading", "resume_reading", "shutdown_write",
                "close_connection", "arm_read_timeout"]
# On a connection that has closed these do nothing (pyepoll.loop's docstring).
NOOP_WHEN_CLOSED = {"pause_reading", "resume_reading", "shutdown_write",
                    "close_connection", "arm_read_timeout"}


def test_loop_sweep():
    with Loop(read_timeout=1.0) as loop:
        lid = loop.listen("127.0.0.1", 0)
        addr = loop.sockname(lid)
        for v in BAD_INTS + [0, 1, 1 << 32, (1 << 32) | 5]:
            for m in HANDLE_CALLS:
                expect_clear_error(lambda: getattr(loop, m)(v))
            expect_clear_error(lambda: loop.send(v, b"x"))
            expect_clear_error(lambda: loop.set_token(v, 1))
            expect_clear_error(lambda: loop.recv_into(v, bytearray(4)))
            expect_clear_error(lambda: loop.sockname(v))
            expect_clear_error(lambda: loop.remove_listener(v + 1
                                                            if v == 0 else v))
            expect_clear_error(lambda: loop.reply(v, 0, 1))
        for kw in ("max_connections", "input_high", "input_low",
                   "output_high", "output_max", "accept_batch", "batch",
                   "idle_timeout", "read_timeout", "trigger", "overflow",
                   "backend"):
            for v in BAD_INTS + [float("nan"), float("inf"), 0]:
                def make():
                    Loop(**{kw: v}).close()
                expect_clear_error(make)
        # A real connection: its handle works, then goes stale with a
        # message saying so.
        c = socket.create_connection(addr)
        h = None
        while h is None:
            for kind, hh, _ in loop.wait(1.0):
                if kind == pyepoll.EV_OPEN:
                    h = hh
        for v in ("x", None, 1.5, [], -1, 2**64):
            expect_clear_error(lambda: loop.set_token(h, v))
            expect_clear_error(lambda: loop.recv(h, v))
            expect_clear_error(lambda: loop.send(h, v))
            expect_clear_error(lambda: loop.close_connection(h, v))
        loop.send(h, b"ok")
        assert c.recv(2) == b"ok"
        loop.close_connection(h, "now")
        for m in HANDLE_CALLS:
            if m in NOOP_WHEN_CLOSED:
                assert getattr(loop, m)(h) is None
                continue
            with pytest.raises(StaleHandleError) as ei:
                getattr(loop, m)(h)
            assert "stale" in str(ei.value), str(ei.value)
        with pytest.raises(StaleHandleError, match="stale"):
            loop.send(h, b"x")
        c.close()


def test_http_sweep():
    for v in ["8", 1.5, None, [], 0, -1]:
        expect_clear_error(lambda: http.RequestParser(v))
    p = http.RequestParser()
    for v in [None, 5, "GET / HTTP/1.1\r\n\r\n", [], object()]:
        with pytest.raises(TypeError):
            p.parse(v)
    for v in ["0", None, 1.5, -1, 10**30]:
        expect_clear_error(lambda: p.parse(b"GET / HTTP/1.1\r\n\r\n", v))
    assert p.parse(b"GET / HTTP/1.1\r\n\r\n") > 0


def test_chunked_decoder_refuses_what_it_cannot_write():
    """decode() works in place: a bytes object (immutable) or read-only
    buffer must be refused, not written into."""
    data = b"5\r\nhello\r\n0\r\n\r\n"
    before = bytes(bytearray(data))
    for bad in (data, memoryview(data)):
        with pytest.raises((TypeError, BufferError)):
            http.ChunkedDecoder().decode(bad)
    assert data == before, "decode() wrote into a bytes object"
    for bad in (None, [], "5\r\nhello\r\n0\r\n\r\n", 7):
        with pytest.raises(TypeError):
            http.ChunkedDecoder().decode(bad)
    d = http.ChunkedDecoder()
    buf = bytearray(data)
    assert d.decode(buf) == (5, len(data)) and buf[:5] == b"hello"
    assert d.done
    assert http.ChunkedDecoder().decode(bytearray()) == (0, 0)

"""pyepoll.Loop through real loopback sockets, on every backend and trigger.

Clients live in the test's thread (non-blocking, interleaved with the loop)
or, for bulk transfers, in one client thread; every wait is bounded.
"""
from __future__ import annotations

import collections
import errno
import gc
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from array import array
from typing import Callable, Dict, List, Optional, Tuple

import pytest

import pyepoll
from pyepoll import (
    EV_CLOSED,
    EV_DATA,
    EV_DRAINED,
    EV_EOF,
    EV_OPEN,
    EV_READ_TIMEOUT,
    EV_WAKEUP,
    EV_WRITE_FULL,
    Loop,
    StaleHandleError,
)

from conftest import BACKENDS, RoundTrips

# Each test on both Loop paths (conftest.loop_path: C calls and Python).
pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("loop_path")]

CONFIGS: List[Tuple[str, str]] = []
for _b in BACKENDS:
    CONFIGS.append((_b, "level"))
    if _b in ("epoll", "kqueue"):
        CONFIGS.append((_b, "edge"))

RESET_ERRNOS = (errno.ECONNRESET, errno.EPIPE)


@pytest.fixture(params=CONFIGS, ids=[f"{b}-{t}" for b, t in CONFIGS])
def cfg(request: pytest.FixtureRequest) -> Dict[str, str]:
    backend, trigger = request.param
    return {"backend": backend, "trigger": trigger}


@pytest.fixture
def make(cfg):
    """Make loops on the configuration under test; closed at teardown."""
    made: List[Loop] = []

    def make(**kw) -> Loop:
        loop = Loop(**cfg, **kw)
        made.append(loop)
        return loop

    yield make
    for loop in made:
        loop.close()


def client(addr, *, rcvbuf: int = 0, sndbuf: int = 0) -> socket.socket:
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    c = socket.socket(family, socket.SOCK_STREAM)
    if rcvbuf:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if sndbuf:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    c.settimeout(5)
    c.connect(addr)
    c.setblocking(False)
    return c


def sockopt(loop: Loop, h: int, level: int, opt: int, value: int) -> None:
    """Set an option on a connection's socket (through a duplicate fd)."""
    fd = loop.fileno(h)
    # PyPy's socket(fileno=) makes the file (shared with the duplicate)
    # blocking; the loop's I/O must stay non-blocking.
    blocking = os.get_blocking(fd)
    s = socket.socket(fileno=os.dup(fd))
    try:
        s.setsockopt(level, opt, value)
    finally:
        s.close()
        os.set_blocking(fd, blocking)


def rst_close(c: socket.socket) -> None:
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()


class Harness:
    """A server on a Loop, driven by the test: records every event and
    answers per ``mode``: "echo" (recv + send, pausing reads while output
    is full; closing after the peer's EOF), "collect" (recv into ``got``)
    or "none".  ``batch`` switches to wait_batch, whose DATA brings the
    bytes: "reply" echoes them with reply(), "queue" with queue_echo()."""

    def __init__(self, loop: Loop, mode: str = "echo", host: str = "127.0.0.1",
                 batch: str = ""):
        self.loop = loop
        self.mode = mode
        self.batch = batch
        self.view = loop.batch_view if batch else None
        self.lid = loop.listen(host, 0)
        self.addr = loop.sockname(self.lid)
        self.log: List[Tuple[int, int, int]] = []
        self.opened: List[int] = []
        self.peers: Dict[int, Tuple[str, int]] = {}
        self.closed: Dict[int, int] = {}
        self.eof: set = set()
        self.full: set = set()
        self.got: Dict[int, bytearray] = collections.defaultdict(bytearray)
        self.on_event: Optional[Callable[[int, int, int], None]] = None

    # -- server side --------------------------------------------------------

    def dispatch(self, kind: int, h: int, arg: int, off: int = 0) -> None:
        loop = self.loop
        self.log.append((kind, h, arg))
        if kind == EV_OPEN:
            assert arg == self.lid
            self.opened.append(h)
            try:
                self.peers[h] = loop.peer(h)
            except StaleHandleError:
                pass                      # closed in the same batch
        elif kind == EV_CLOSED:
            assert h not in self.closed, "two CLOSED events for one handle"
            assert h in self.opened, "CLOSED for a handle never opened"
            self.closed[h] = arg
        elif kind == EV_EOF:
            assert h not in self.eof, "two EOF events for one handle"
            self.eof.add(h)
            if self.mode == "echo":
                loop.close_connection(h)          # the peer is done
        elif kind == EV_DATA and self.batch:
            assert h not in self.closed, "DATA after CLOSED"
            assert arg > 0 and off + arg <= len(self.view)
            if self.mode == "echo":
                try:
                    if self.batch == "reply":
                        loop.reply(h, off, arg)
                    else:
                        loop.queue_echo(h)
                except ConnectionError:
                    pass                  # CLOSED follows
            elif self.mode == "collect":
                self.got[h] += self.view[off:off + arg]
        elif kind == EV_DATA and h not in self.closed:
            assert arg > 0
            if self.mode == "echo":
                data = loop.recv(h)
                assert len(data) == arg
                try:
                    loop.send(h, data)
                except ConnectionError:
                    pass                  # CLOSED follows
            elif self.mode == "collect":
                data = loop.recv(h)
                assert len(data) == arg
                self.got[h] += data
        elif kind == EV_WRITE_FULL and self.mode == "echo":
            self.full.add(h)
            loop.pause_reading(h)
        elif kind == EV_DRAINED and h in self.full:
            self.full.discard(h)
            loop.resume_reading(h)
        if self.on_event is not None:
            self.on_event(kind, h, arg)

    def step(self, timeout: float = 0.005) -> None:
        if self.batch:
            for ev in self.loop.wait_batch(timeout):
                self.dispatch(*ev)
            return
        for ev in self.loop.wait(timeout):
            self.dispatch(*ev)

    def pump(self, cond: Callable[[], bool], timeout: float = 5.0,
             what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out waiting for {what}; last events: "
                    f"{self.log[-10:]}")
            self.step(0.01)

    def pump_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.step(max(0.0, min(0.01, deadline - time.monotonic())))

    def handle_of(self, c: socket.socket) -> int:
        name = c.getsockname()[:2]
        self.pump(lambda: any(p == name for p in self.peers.values()),
                  what=f"OPEN of {name}")
        return next(h for h, p in self.peers.items() if p == name)

    def connect(self, **kw) -> Tuple[socket.socket, int]:
        c = client(self.addr, **kw)
        return c, self.handle_of(c)

    # -- client side, interleaved with the loop --------------------------------

    def read(self, c: socket.socket, n: int, timeout: float = 10.0) -> bytes:
        """Read exactly n bytes from client c, running the loop meanwhile."""
        buf = bytearray()
        deadline = time.monotonic() + timeout
        while len(buf) < n:
            try:
                chunk = c.recv(min(n - len(buf), 1 << 20))
            except BlockingIOError:
                chunk = None
            if chunk == b"":
                raise AssertionError(f"EOF after {len(buf)} of {n} bytes")
            if chunk:
                buf += chunk
                continue
            if time.monotonic() > deadline:
                raise AssertionError(f"got {len(buf)} of {n} bytes")
            self.step(0.002)
        return bytes(buf)

    def read_eof(self, c: socket.socket, timeout: float = 5.0) -> bytes:
        """Read until EOF; return what came before it."""
        buf = bytearray()
        deadline = time.monotonic() + timeout
        while True:
            try:
                chunk = c.recv(1 << 20)
            except BlockingIOError:
                chunk = None
            if chunk == b"":
                return bytes(buf)
            if chunk:
                buf += chunk
                continue
            if time.monotonic() > deadline:
                raise AssertionError(f"no EOF; got {len(buf)} bytes")
            self.step(0.002)

    def write(self, c: socket.socket, data: bytes, timeout: float = 10.0) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + timeout
        while view:
            try:
                view = view[c.send(view):]
                continue
            except BlockingIOError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(view)} bytes not sent")
            self.step(0.002)

    def roundtrip(self, c: socket.socket, data: bytes) -> None:
        self.write(c, data)
        assert self.read(c, len(data)) == data

    def kinds(self, h: int) -> List[int]:
        return [k for k, hh, _ in self.log if hh == h]


@pytest.fixture
def harness(make):
    def new(mode: str = "echo", batched: str = "", **kw) -> Harness:
        return Harness(make(**kw), mode, batch=batched)

    return new


def payload(n: int, seed: int) -> bytes:
    """n bytes that differ from connection to connection and position to
    position (cheap to make, so large transfers prove ordering)."""
    block = os.urandom(65536 + 256)
    out = bytearray()
    i = 0
    while len(out) < n:
        off = (seed * 7919 + i * 131) % 256
        out += block[off:off + 65536]
        i += 1
    return bytes(out[:n])


def bulk_clients(addr, payloads: List[bytes], result: dict) -> None:
    """Client thread: one connection per payload, send it all while reading
    the echo back; store what came back in result[index]."""
    sel = selectors.DefaultSelector()
    try:
        conns = []
        for i, data in enumerate(payloads):
            c = socket.create_connection(addr, timeout=10)
            c.setblocking(False)
            st = {"i": i, "sock": c, "out": memoryview(data), "in": bytearray(),
                  "want": len(data)}
            conns.append(st)
            sel.register(c, selectors.EVENT_READ | selectors.EVENT_WRITE, st)
        left = len(conns)
        deadline = time.monotonic() + 90
        while left and time.monotonic() < deadline:
            for key, ev in sel.select(1.0):
                st = key.data
                c = st["sock"]
                if ev & selectors.EVENT_WRITE and st["out"]:
                    try:
                        st["out"] = st["out"][c.send(st["out"][:262144]):]
                    except BlockingIOError:
                        pass
                    if not st["out"]:
                        sel.modify(c, selectors.EVENT_READ, st)
                if ev & selectors.EVENT_READ:
                    try:
                        chunk = c.recv(1 << 20)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        result["error"] = f"connection {st['i']} closed early"
                        sel.unregister(c)
                        left -= 1
                        continue
                    st["in"] += chunk
                    if len(st["in"]) >= st["want"]:
                        sel.unregister(c)
                        left -= 1
        for st in conns:
            result[st["i"]] = bytes(st["in"])
            st["sock"].close()
    except Exception as exc:                      # reported by the test
        result["error"] = repr(exc)
    finally:
        sel.close()
        result["done"] = True


# -- accept, echo, addresses, tokens --------------------------------------------


def test_accept_and_echo(harness):
    hs = harness()
    clients = [hs.connect() for _ in range(3)]
    for i, (c, h) in enumerate(clients):
        hs.roundtrip(c, b"hello %d" % i)
    for c, h in clients:
        hs.roundtrip(c, b"x" * 1000)
    hs.pump(lambda: True)
    assert len(set(h for _, h in clients)) == 3
    assert all(h > 0 for _, h in clients)
    for c, _ in clients:
        c.close()
    hs.pump(lambda: len(hs.closed) == 3, what="3 CLOSED")
    assert set(hs.closed.values()) == {0}
    for _, h in clients:
        assert hs.kinds(h)[0] == EV_OPEN
        assert hs.kinds(h)[-1] == EV_CLOSED


def test_peer_fileno_tokens(harness):
    hs = harness()
    c, h = hs.connect()
    assert hs.loop.peer(h) == c.getsockname()
    fd = hs.loop.fileno(h)
    assert isinstance(fd, int) and fd >= 0
    blocking = os.get_blocking(fd)         # see sockopt()
    dup = socket.socket(fileno=os.dup(fd))
    try:
        assert dup.getpeername() == c.getsockname()
        assert dup.getsockname() == c.getpeername()
    finally:
        dup.close()
        os.set_blocking(fd, blocking)
    assert hs.loop.get_token(h) == 0
    hs.loop.set_token(h, 42)
    assert hs.loop.get_token(h) == 42
    hs.loop.set_token(h, 2**64 - 1)
    assert hs.loop.get_token(h) == 2**64 - 1
    c2, h2 = hs.connect()
    assert hs.loop.get_token(h2) == 0
    hs.loop.set_token(h2, 7)
    assert hs.loop.get_token(h) == 2**64 - 1
    assert hs.loop.buffered(h) == (0, 0)
    c.close()
    c2.close()


def test_ipv6_listener(make):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    loop = make()
    try:
        hs = Harness(loop, host="::1")
    except OSError as exc:
        pytest.skip(f"cannot bind ::1: {exc}")
    assert hs.addr[0] == "::1"
    c, h = hs.connect()
    assert hs.loop.peer(h) == c.getsockname()[:2]
    hs.roundtrip(c, b"over six")
    c.close()


def test_listen_by_name_and_reuse_port(make):
    loop = make()
    lid = loop.listen("localhost", 0)
    host, port = loop.sockname(lid)
    assert host in ("127.0.0.1", "::1") and port > 0
    if hasattr(socket, "SO_REUSEPORT"):
        a = loop.listen("127.0.0.1", 0, reuse_port=True)
        port = loop.sockname(a)[1]
        b = loop.listen("127.0.0.1", port, reuse_port=True)
        assert loop.sockname(b)[1] == port


def test_listen_on_a_taken_port_raises_and_keeps_nothing(make):
    """A port another socket holds: the OSError bind raised (EADDRINUSE),
    as socket.bind raises it, for an address and for a name that resolves
    to several; every socket tried is closed, and the loop serves on."""
    loop = make()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    gc.collect()            # earlier tests' garbage closes nothing meanwhile
    fds = set(os.listdir("/proc/self/fd"))
    try:
        for host in ("127.0.0.1", "localhost"):
            with pytest.raises(OSError) as info:
                loop.listen(host, port)
            assert info.value.errno == errno.EADDRINUSE, host
        # No descriptor opened since is left (one closed meanwhile, by
        # another thread of an earlier test, say, is none of its business).
        assert set(os.listdir("/proc/self/fd")) - fds == set()
        lid = loop.listen("127.0.0.1", 0)
        c = socket.create_connection(loop.sockname(lid), timeout=5)
        deadline = time.monotonic() + 5
        kinds = []
        while pyepoll.EV_OPEN not in kinds and time.monotonic() < deadline:
            kinds += [kind for kind, _, _ in loop.wait(0.2)]
        assert pyepoll.EV_OPEN in kinds
        c.close()
    finally:
        taken.close()


def test_recv_max_and_recv_into(harness):
    hs = harness("none")
    c, h = hs.connect()
    hs.write(c, b"abcdefghij")
    hs.pump(lambda: hs.loop.buffered(h)[0] == 10, what="10 unread bytes")
    assert hs.loop.recv(h, 3) == b"abc"
    assert hs.loop.recv(h, 0) == b""
    buf = bytearray(4)
    assert hs.loop.recv_into(h, buf) == 4
    assert buf == b"defg"
    mv = memoryview(bytearray(10))
    assert hs.loop.recv_into(h, mv[2:]) == 3
    assert bytes(mv[2:5]) == b"hij"
    assert hs.loop.recv(h) == b""
    assert hs.loop.recv_into(h, bytearray(8)) == 0
    c.close()


def test_send_accepts_bytes_like(harness):
    hs = harness("none")
    c, h = hs.connect()
    hs.loop.send(h, b"")
    hs.loop.send(h, b"ab")
    hs.loop.send(h, bytearray(b"cd"))
    hs.loop.send(h, memoryview(b"xxefxx")[2:4])
    ints = array("i", [1, 2])
    hs.loop.send(h, ints)
    want = b"abcdef" + ints.tobytes()
    assert hs.read(c, len(want)) == want
    with pytest.raises(TypeError, match="bytes-like"):
        hs.loop.send(h, "text")
    with pytest.raises(TypeError):
        hs.loop.send(h, 12)
    c.close()


# -- bulk transfers ---------------------------------------------------------------


def echo_bulk(hs: Harness, payloads: List[bytes]) -> None:
    """One client connection per payload streams it through the loop: each
    gets back exactly its bytes, and every connection ends CLOSED."""
    result: dict = {}
    t = threading.Thread(target=bulk_clients, args=(hs.addr, payloads, result),
                         daemon=True)
    t.start()
    deadline = time.monotonic() + 100
    while not result.get("done") and time.monotonic() < deadline:
        hs.step(0.05)
    t.join(5)
    assert result.get("done"), "client thread did not finish"
    assert "error" not in result, result.get("error")
    for i, data in enumerate(payloads):
        assert len(result[i]) == len(data), f"connection {i}"
        assert result[i] == data, f"connection {i}: bytes differ"
    hs.pump(lambda: len(hs.closed) == len(payloads), what=f"{len(payloads)} CLOSED")


def test_bulk_64mib_through_32_connections(harness):
    hs = harness()
    payloads = [payload(2 << 20, i) for i in range(32)]
    echo_bulk(hs, payloads)
    st = hs.loop.stats()
    assert st["bytes_in"] == st["bytes_out"] == 64 << 20
    assert st["accepted"] == st["closed"] == 32
    assert st["conns_open"] == 0


def test_c_echo_mode_byte_exact(harness):
    hs = harness(echo=True)
    payloads = [payload(1 << 20, i) for i in range(8)]
    echo_bulk(hs, payloads)
    kinds = {k for k, _, _ in hs.log}
    assert kinds <= {EV_OPEN, EV_CLOSED, EV_EOF}, kinds
    st = hs.loop.stats()
    assert st["bytes_in"] == st["bytes_out"] == 8 << 20


def test_c_echo_mode_small_messages(harness):
    hs = harness(echo=True)
    c = client(hs.addr)
    for i in range(50):
        hs.roundtrip(c, b"message %d" % i)
    assert not [e for e in hs.log if e[0] == EV_DATA]
    c.close()


# -- output flow control -------------------------------------------------------------


def test_partial_writes_slow_reader(harness):
    hs = harness("none")
    c, h = hs.connect(rcvbuf=4096)
    sockopt(hs.loop, h, socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    data = payload(2 << 20, 1)
    hs.loop.send(h, data)
    assert hs.loop.buffered(h)[1] > 0, "2 MiB went out at once"
    hs.pump(lambda: EV_WRITE_FULL in hs.kinds(h), what="WRITE_FULL")
    assert EV_DRAINED not in hs.kinds(h)
    # The slow reader: small reads with the loop running in between.
    got = bytearray()
    deadline = time.monotonic() + 20
    while len(got) < len(data):
        assert time.monotonic() < deadline
        try:
            got += c.recv(8192)
        except BlockingIOError:
            pass
        hs.step(0)
    assert got == data
    hs.pump(lambda: EV_DRAINED in hs.kinds(h), what="DRAINED")
    assert hs.loop.buffered(h) == (0, 0)
    kinds = hs.kinds(h)
    assert kinds.index(EV_WRITE_FULL) < kinds.index(EV_DRAINED)
    assert kinds.count(EV_DRAINED) == 1
    c.close()


def test_write_full_reported_once_until_drained(harness):
    hs = harness("none", output_high=1024)
    c, h = hs.connect(rcvbuf=4096)
    sockopt(hs.loop, h, socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    for _ in range(8):
        hs.loop.send(h, b"z" * 65536)
    hs.pump_for(0.1)
    full = [arg for k, hh, arg in hs.log if hh == h and k == EV_WRITE_FULL]
    assert len(full) == 1
    assert full[0] > 1024
    assert hs.read(c, 8 * 65536) == b"z" * (8 * 65536)
    hs.pump(lambda: EV_DRAINED in hs.kinds(h), what="DRAINED")
    # Full again after the drain: reported again.
    for _ in range(8):
        hs.loop.send(h, b"y" * 65536)
    hs.pump(lambda: hs.kinds(h).count(EV_WRITE_FULL) == 2, what="2nd WRITE_FULL")
    assert hs.read(c, 8 * 65536) == b"y" * (8 * 65536)
    c.close()


def test_buffer_error_at_output_max(harness):
    hs = harness("none", output_max=1 << 20)
    c, h = hs.connect(rcvbuf=4096)
    sockopt(hs.loop, h, socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    with pytest.raises(BufferError, match="output_max"):
        hs.loop.send(h, b"q" * ((1 << 20) + 1))
    assert hs.loop.buffered(h)[1] == 0
    sent = bytearray()
    chunk = 0
    with pytest.raises(BufferError, match="output_max"):
        for chunk in range(64):
            piece = bytes([65 + chunk % 26]) * 200000
            hs.loop.send(h, piece)
            sent += piece
    before = hs.loop.buffered(h)[1]
    assert before <= 1 << 20
    with pytest.raises(BufferError):
        hs.loop.send(h, b"r" * ((1 << 20) - before + 1))
    assert hs.loop.buffered(h)[1] == before, "a refused send queued bytes"
    assert hs.read(c, len(sent), timeout=20) == bytes(sent)
    c.close()


# -- peers going away ---------------------------------------------------------------


@pytest.mark.libkqueue("its read event clears the socket's pending error, "
                        "so the reset reads as a plain EOF "
                        "(tests/libkqueue/repro_reset_error.c)")
def test_peer_reset(harness):
    hs = harness()
    c, h = hs.connect()
    hs.roundtrip(c, b"before")
    rst_close(c)
    hs.pump(lambda: h in hs.closed, what="CLOSED after RST")
    assert hs.closed[h] in RESET_ERRNOS
    with pytest.raises(StaleHandleError):
        hs.loop.recv(h)
    assert hs.kinds(h).count(EV_CLOSED) == 1


def test_send_to_reset_peer(harness):
    hs = harness("none")
    c, h = hs.connect()
    rst_close(c)
    time.sleep(0.05)
    try:
        for _ in range(4):
            hs.loop.send(h, b"x" * 65536)
    except ConnectionError as exc:
        assert exc.errno in RESET_ERRNOS
    except StaleHandleError:
        pass                    # an earlier send noticed and closed it
    hs.pump(lambda: h in hs.closed, what="CLOSED")
    assert hs.closed[h] in RESET_ERRNOS
    hs.pump_for(0.1)
    assert hs.kinds(h).count(EV_CLOSED) == 1
    with pytest.raises(StaleHandleError):
        hs.loop.send(h, b"x")


# Edge only (level reports the FIN anyway); not strict: it passes when the
# FIN arrives after the data was read.
@pytest.mark.libkqueue("a write filter on the socket makes its read events "
                       "lose EV_EOF (tests/libkqueue/repro_rdhup_lost.c)",
                       trigger="edge", strict=False)
def test_client_half_close_then_server_sends(harness):
    hs = harness("collect")
    c, h = hs.connect()
    hs.write(c, b"request")
    c.shutdown(socket.SHUT_WR)
    hs.pump(lambda: h in hs.eof, what="EOF")
    assert bytes(hs.got[h]) == b"request"
    kinds = hs.kinds(h)
    assert kinds.index(EV_DATA) < kinds.index(EV_EOF)
    assert h not in hs.closed
    hs.loop.send(h, b"response after EOF")
    assert hs.read(c, 18) == b"response after EOF"
    hs.loop.close_connection(h)
    assert hs.read_eof(c) == b""
    hs.pump(lambda: h in hs.closed, what="CLOSED")
    assert hs.closed[h] == 0
    assert hs.kinds(h).count(EV_EOF) == 1
    c.close()


def test_server_shutdown_write(harness):
    hs = harness("collect")
    c, h = hs.connect()
    hs.loop.send(h, b"last words")
    hs.loop.shutdown_write(h)
    hs.loop.shutdown_write(h)                 # idempotent
    assert hs.read_eof(c) == b"last words"
    with pytest.raises(BrokenPipeError):
        hs.loop.send(h, b"more")
    # Reading goes on after our half-close.
    hs.write(c, b"still talking")
    hs.pump(lambda: bytes(hs.got[h]) == b"still talking", what="data")
    c.close()
    hs.pump(lambda: h in hs.eof, what="EOF")
    hs.loop.close_connection(h)
    hs.pump(lambda: h in hs.closed, what="CLOSED")


def test_close_modes(harness):
    hs = harness("none")
    data = payload(1 << 20, 3)
    # flush: everything queued still arrives, then EOF.
    c, h = hs.connect(rcvbuf=4096)
    sockopt(hs.loop, h, socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    hs.loop.send(h, data)
    assert hs.loop.buffered(h)[1] > 0
    hs.loop.close_connection(h, "flush")
    with pytest.raises(StaleHandleError):
        hs.loop.buffered(h)
    assert hs.read_eof(c, timeout=20) == data
    hs.pump(lambda: h in hs.closed, what="CLOSED")
    assert hs.closed[h] == 0
    c.close()
    # now: queued output is dropped.
    c, h = hs.connect(rcvbuf=4096)
    sockopt(hs.loop, h, socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    hs.loop.send(h, data)
    hs.loop.close_connection(h, "now")
    got = hs.read_eof(c)
    assert len(got) < len(data) and data.startswith(got)
    hs.pump(lambda: h in hs.closed, what="CLOSED")
    c.close()
    # abort: the peer sees a reset.
    c, h = hs.connect()
    hs.loop.close_connection(h, "abort")
    with pytest.raises(ConnectionResetError):
        hs.read_eof(c)
    c.close()
    hs.pump(lambda: h in hs.closed, what="CLOSED")
    assert hs.loop.stats()["conns_open"] == 0


# -- timeouts --------------------------------------------------------------------------


def test_idle_timeout(harness):
    hs = harness(idle_timeout=0.2)
    c, h = hs.connect()
    busy, hb = hs.connect()
    # The busy connection talks every 50 ms for 0.6 s: never idle long.
    until = time.monotonic() + 0.6
    while time.monotonic() < until:
        hs.roundtrip(busy, b"ping")
        last = time.monotonic()
        hs.pump_for(0.05)
    assert h in hs.closed and hb not in hs.closed
    assert hs.closed[h] == errno.ETIMEDOUT
    closed_at = [i for i, e in enumerate(hs.log) if e == (EV_CLOSED, h, errno.ETIMEDOUT)]
    assert len(closed_at) == 1
    assert hs.read_eof(c) == b""
    hs.pump(lambda: hb in hs.closed, timeout=2, what="idle CLOSED of busy")
    assert time.monotonic() - last >= 0.19
    st = hs.loop.stats()
    assert st["timed_out"] == 2
    assert st["conns_open"] == 0
    c.close()
    busy.close()


def test_idle_timeout_not_early(harness):
    hs = harness(idle_timeout=0.3)
    c, h = hs.connect()
    t0 = time.monotonic()
    hs.pump(lambda: h in hs.closed, timeout=3, what="idle CLOSED")
    elapsed = time.monotonic() - t0
    assert 0.25 <= elapsed < 1.5, elapsed
    assert hs.closed[h] == errno.ETIMEDOUT
    c.close()


def test_read_timeout(harness):
    hs = harness(read_timeout=0.2)
    fired: Dict[int, float] = {}
    hs.on_event = lambda k, h, a: (fired.setdefault(h, time.monotonic())
                                   if k == EV_READ_TIMEOUT else None)
    c, h = hs.connect()
    t0 = time.monotonic()
    hs.loop.arm_read_timeout(h)
    hs.pump_for(0.1)
    hs.roundtrip(c, b"bytes do not move the deadline")
    hs.pump(lambda: h in fired, timeout=3, what="READ_TIMEOUT")
    assert 0.18 <= fired[h] - t0 < 1.0
    assert h not in hs.closed
    hs.roundtrip(c, b"still open")
    hs.pump_for(0.3)
    assert hs.kinds(h).count(EV_READ_TIMEOUT) == 1, "fired twice"
    # Disarmed: nothing.
    hs.loop.arm_read_timeout(h)
    hs.loop.arm_read_timeout(h, on=False)
    hs.pump_for(0.4)
    assert hs.kinds(h).count(EV_READ_TIMEOUT) == 1
    # Armed again: fires again.
    hs.loop.arm_read_timeout(h, True)
    hs.pump(lambda: hs.kinds(h).count(EV_READ_TIMEOUT) == 2, timeout=3,
            what="second READ_TIMEOUT")
    c.close()


def test_arm_read_timeout_needs_config(harness):
    hs = harness()
    c, h = hs.connect()
    with pytest.raises(ValueError, match="read_timeout"):
        hs.loop.arm_read_timeout(h)
    c.close()


# -- input flow control -------------------------------------------------------------------


def test_input_marks_pause_and_resume(harness):
    hs = harness("none", input_high=65536, input_low=16384)
    c, h = hs.connect(sndbuf=16384)
    sockopt(hs.loop, h, socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    data = payload(1 << 20, 5)
    view = memoryview(data)

    def feed(seconds: float) -> None:
        nonlocal view
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            if view:
                try:
                    view = view[c.send(view):]
                except BlockingIOError:
                    pass
            hs.step(0.002)

    feed(0.3)
    assert hs.loop.buffered(h)[0] == 65536
    assert all(a <= 65536 for k, _, a in hs.log if k == EV_DATA)
    bytes_in = hs.loop.stats()["bytes_in"]
    assert bytes_in == 65536, "read past input_high"
    got = bytearray(hs.loop.recv(h, 40000))    # 25536 left: above low mark
    feed(0.2)
    assert hs.loop.stats()["bytes_in"] == bytes_in, "resumed above input_low"
    got += hs.loop.recv(h, 10000)              # 15536 left: below low mark
    feed(0.2)
    assert hs.loop.stats()["bytes_in"] > bytes_in, "did not resume"
    deadline = time.monotonic() + 20
    while len(got) < len(data):
        assert time.monotonic() < deadline
        got += hs.loop.recv(h)
        feed(0.001)
    assert got == data
    c.close()


def test_small_input_high_is_a_bound(harness):
    # input_high below the core's smallest ring buffer (16 KiB).
    hs = harness("none", input_high=4096, input_low=1024)
    c, h = hs.connect()
    data = payload(20000, 9)
    hs.write(c, data)
    hs.pump_for(0.2)
    assert hs.loop.buffered(h)[0] <= 4096
    assert all(a <= 4096 for k, _, a in hs.log if k == EV_DATA)
    got = bytearray()
    deadline = time.monotonic() + 5
    while len(got) < len(data):
        assert time.monotonic() < deadline
        got += hs.loop.recv(h)
        hs.step(0.002)
    assert got == data
    c.close()


def test_pause_reading(harness):
    hs = harness("collect")
    c, h = hs.connect()
    hs.loop.pause_reading(h)
    hs.write(c, b"held back")
    hs.pump_for(0.2)
    assert EV_DATA not in hs.kinds(h)
    assert hs.loop.buffered(h)[0] == 0
    hs.loop.resume_reading(h)
    hs.pump(lambda: bytes(hs.got[h]) == b"held back", what="data after resume")
    hs.loop.resume_reading(h)                  # harmless when not paused
    c.close()


# -- capacity ------------------------------------------------------------------------------


def test_max_connections_backlog(harness):
    hs = harness(max_connections=2, overflow="backlog")
    c1, h1 = hs.connect()
    c2, h2 = hs.connect()
    c3 = client(hs.addr)                       # waits in the kernel backlog
    hs.write(c3, b"waiting")
    hs.pump_for(0.3)
    assert len(hs.opened) == 2
    with pytest.raises(BlockingIOError):
        c3.recv(100)
    hs.roundtrip(c1, b"still served")
    c1.close()
    hs.pump(lambda: len(hs.opened) == 3, what="third OPEN")
    assert hs.read(c3, 7) == b"waiting"
    st = hs.loop.stats()
    assert st["refused"] == 0 and st["accepted"] == 3
    c2.close()
    c3.close()


def test_max_connections_close(harness):
    hs = harness(max_connections=2, overflow="close")
    c1, _ = hs.connect()
    c2, _ = hs.connect()
    c3 = client(hs.addr)
    try:
        assert hs.read_eof(c3) == b""
    except ConnectionResetError:
        pass
    assert len(hs.opened) == 2
    st = hs.loop.stats()
    assert st["refused"] == 1 and st["accepted"] == 2
    hs.roundtrip(c1, b"unaffected")
    for c in (c1, c2, c3):
        c.close()


def test_batch_limit(harness):
    hs = harness(batch=2)
    clients = [client(hs.addr) for _ in range(5)]
    deadline = time.monotonic() + 5
    while len(hs.opened) < 5:
        assert time.monotonic() < deadline
        evs = hs.loop.wait(0.01)
        assert len(evs) <= 2
        for ev in evs:
            hs.dispatch(*ev)
    for c in clients:
        hs.roundtrip(c, b"b")
        c.close()


EMFILE_CHILD = textwrap.dedent("""
    import json, os, resource, sys
    from pyepoll import Loop, EV_DATA, EV_EOF
    loop = Loop(backend=sys.argv[1], trigger=sys.argv[2])
    lid = loop.listen("127.0.0.1", 0, backlog=64)
    def nfds():
        if os.path.isdir("/proc/self/fd"):
            return len(os.listdir("/proc/self/fd"))
        n = 0
        for fd in range(4096):
            try:
                os.fstat(fd)
                n += 1
            except OSError:
                pass
        return n
    limit = nfds() + 5
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    print(json.dumps({"port": loop.sockname(lid)[1]}), flush=True)
    os.set_blocking(0, False)
    pending = b""
    while True:
        for kind, h, arg in loop.wait(0.1):
            if kind == EV_DATA:
                try:
                    loop.send(h, loop.recv(h))
                except OSError:
                    pass
            elif kind == EV_EOF:
                loop.close_connection(h)
        try:
            chunk = os.read(0, 4096)
        except BlockingIOError:
            continue
        if not chunk:
            break
        pending += chunk
        while b"\\n" in pending:
            line, pending = pending.split(b"\\n", 1)
            t = os.times()
            print(json.dumps(dict(loop.stats(), cpu=t.user + t.system)),
                  flush=True)
    loop.close()
""")


def test_emfile_no_busy_loop(cfg):
    if not hasattr(os, "set_blocking"):
        pytest.skip("needs os.set_blocking")
    proc = subprocess.Popen(
        [sys.executable, "-c", EMFILE_CHILD, cfg["backend"], cfg["trigger"]],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    clients: List[socket.socket] = []

    def stats() -> dict:
        proc.stdin.write(b"stats\n")
        proc.stdin.flush()
        return json.loads(proc.stdout.readline())

    def echoes(c: socket.socket, msg: bytes, timeout: float) -> bool:
        c.settimeout(timeout)
        try:
            c.sendall(msg)
            got = b""
            while len(got) < len(msg):
                chunk = c.recv(100)
                if not chunk:
                    return False
                got += chunk
            return got == msg
        except OSError:
            return False

    try:
        port = json.loads(proc.stdout.readline())["port"]
        for _ in range(12):
            clients.append(socket.create_connection(("127.0.0.1", port), 5))
        time.sleep(0.5)
        s0 = stats()
        assert s0["accept_emfile"] >= 1, s0
        assert 1 <= s0["conns_open"] < 12, s0
        time.sleep(1.0)
        s1 = stats()
        cpu = s1["cpu"] - s0["cpu"]
        assert cpu < 0.3, f"loop process used {cpu:.2f} s CPU in 1 s (busy loop?)"
        # The first connection was accepted before descriptors ran out.
        assert echoes(clients[0], b"still served", 5)
        for c in clients:
            c.close()
        clients.clear()
        # Descriptors free up as the closed connections go: a new client
        # is served (after at most one retry period).
        deadline = time.monotonic() + 10
        while True:
            c = socket.create_connection(("127.0.0.1", port), 5)
            ok = echoes(c, b"new one", 3)
            c.close()
            if ok:
                break
            assert time.monotonic() < deadline, "never served again"
        s2 = stats()
        assert s2["accepted"] > s0["accepted"]
    finally:
        for c in clients:
            c.close()
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


# -- stale handles --------------------------------------------------------------------------


def test_stale_handle_never_touches_the_reused_slot(harness):
    hs = harness(max_connections=1)
    a, ha = hs.connect()
    hs.loop.set_token(ha, 111)
    hs.loop.close_connection(ha, "now")
    assert hs.read_eof(a) == b""
    b, hb = hs.connect()
    assert hb != ha
    assert hb & 0xFFFFFFFF == ha & 0xFFFFFFFF, "one slot: reused"
    hs.loop.set_token(hb, 222)
    hs.write(b, b"pending")
    hs.loop.pause_reading(hb)
    hs.pump_for(0.05)
    # What would lose bytes or has no answer raises ...
    stale_calls = [
        lambda: hs.loop.recv(ha),
        lambda: hs.loop.recv_into(ha, bytearray(10)),
        lambda: hs.loop.send(ha, b"intruder"),
        lambda: hs.loop.get_token(ha),
        lambda: hs.loop.buffered(ha),
        lambda: hs.loop.peer(ha),
        lambda: hs.loop.fileno(ha),
    ]
    for call in stale_calls:
        with pytest.raises(StaleHandleError):
            call()
    # ... and what cannot is a no-op: none of it reaches hb (checked below:
    # hb keeps its token, its pause, its output and stays open).
    assert hs.loop.close_connection(ha, "abort") is None
    assert hs.loop.shutdown_write(ha) is None
    assert hs.loop.pause_reading(ha) is None
    assert hs.loop.resume_reading(ha) is None
    assert hs.loop.set_token(ha, 999) is None
    assert issubclass(StaleHandleError, ValueError)
    assert hs.loop.get_token(hb) == 222
    assert hb not in hs.closed
    hs.loop.resume_reading(hb)
    assert hs.read(b, 7) == b"pending"          # echoed, not "intruder"
    hs.roundtrip(b, b"alive")
    hs.pump_for(0.05)
    with pytest.raises(BlockingIOError):
        b.recv(100)
    assert hs.closed[ha] == 0
    a.close()
    b.close()


def test_handle_zero_and_unknown_are_stale(harness):
    hs = harness()
    for h in (0, 1, 5 | (7 << 32), 2**64 - 1):
        with pytest.raises(StaleHandleError):
            hs.loop.recv(h)
        with pytest.raises(StaleHandleError):
            hs.loop.send(h, b"x")


# -- wakeup, threads, signals -------------------------------------------------------------------


def test_wakeup_from_another_thread(make):
    loop = make()
    timer = threading.Timer(0.1, loop.wakeup)
    t0 = time.monotonic()
    timer.start()
    evs = loop.wait(5)
    timer.join()
    assert evs == [(EV_WAKEUP, 0, 0)]
    assert time.monotonic() - t0 < 2
    loop.wakeup()
    assert loop.wait(5) == [(EV_WAKEUP, 0, 0)]
    assert loop.wait(0) == []


def test_close_from_another_thread_while_waiting(make):
    loop = make()
    addr = loop.sockname(loop.listen())
    timer = threading.Timer(0.1, loop.close)
    timer.start()
    t0 = time.monotonic()
    loop.wait(5)
    timer.join()
    assert time.monotonic() - t0 < 2
    assert loop.closed
    with pytest.raises(ValueError, match="closed loop"):
        loop.wait(0)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(addr, 5)


def test_second_thread_in_the_loop_gets_ebusy(make):
    loop = make()
    h_conn: List[int] = []
    addr = loop.sockname(loop.listen())
    client = socket.create_connection(addr, 5)
    deadline = time.monotonic() + 5
    while not h_conn and time.monotonic() < deadline:
        h_conn += [h for k, h, _ in loop.wait(0.1) if k == EV_OPEN]
    h, = h_conn
    inside = threading.Event()
    got: list = []

    def waiter() -> None:
        inside.set()
        # The main thread's probes below are inside the loop for a moment
        # each: one may refuse this thread first.  Retry until it is in.
        until = time.monotonic() + 5
        while True:
            try:
                got.extend(loop.wait(5))
                return
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > until:
                    raise
            time.sleep(0.001)

    t = threading.Thread(target=waiter)
    t.start()
    inside.wait(5)
    refused = []
    t_end = time.monotonic() + 5
    # The waiter may not be in C yet: poll (no side effects) until the loop
    # answers EBUSY; from then on the waiter blocks there (no client sends)
    # until the wakeup below.
    while not refused and time.monotonic() < t_end:
        for call in (lambda: loop.wait(0), loop.stats):
            try:
                call()
            except OSError as exc:
                refused.append(exc)
        time.sleep(0.01)
    assert refused, "no call was refused while a thread waited"
    for call in (lambda: loop.wait(0), lambda: loop.send(h, b"x"),
                 lambda: loop.close_connection(h), loop.stats,
                 lambda: loop.pause_reading(h)):
        with pytest.raises(OSError) as ei:
            call()
        assert ei.value.errno == errno.EBUSY
        assert "another thread is inside this loop" in str(ei.value)
    loop.wakeup()
    t.join(5)
    assert (EV_WAKEUP, 0, 0) in got
    # Nothing a refused call asked for happened: the connection is open.
    loop.send(h, b"still here")
    client.settimeout(5)
    client.setblocking(True)
    data = b""
    while len(data) < 10:
        data += client.recv(100)
    assert data == b"still here", "a refused send sent nothing"
    client.close()


# Issue 11, reproduction 4: two threads in Loop.wait on one C echo loop
# crashed the process (segfault, "double free or corruption") in 3 of 3
# runs.  Now one of them gets EBUSY each time and the echoes stay exact.
TWO_WAITERS_CHILD = textwrap.dedent("""
    import errno, socket, sys, threading, time
    import pyepoll
    loop = pyepoll.Loop(backend=sys.argv[1], trigger=sys.argv[2], echo=True)
    host, port = loop.sockname(loop.listen())
    stop = time.monotonic() + float(sys.argv[3])
    busy = [0, 0]
    def waiter(i):
        while time.monotonic() < stop:
            try:
                loop.wait(0.01)
            except OSError as exc:
                assert exc.errno == errno.EBUSY, exc
                busy[i] += 1
    threads = [threading.Thread(target=waiter, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    clients = [socket.create_connection((host, port), 5) for _ in range(16)]
    rounds = 0
    while time.monotonic() < stop - 0.5:
        for i, c in enumerate(clients):
            msg = b"%d-%d|" % (i, rounds)
            c.sendall(msg)
            got = b""
            c.settimeout(5)
            while len(got) < len(msg):
                got += c.recv(100)
            assert got == msg, (got, msg)
        rounds += 1
    for t in threads:
        t.join()
    print("rounds", rounds, "busy", sum(busy))
""")


@pytest.mark.parametrize("cfg", [c for c in (("epoll", "edge"),
                                             ("epoll", "level"),
                                             ("poll", "level"))
                                 if c[0] in BACKENDS])
def test_two_threads_waiting_on_one_loop(cfg):
    r = subprocess.run([sys.executable, "-c", TWO_WAITERS_CHILD, *cfg, "3"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    words = r.stdout.split()
    assert words[0] == "rounds" and int(words[1]) > 10, r.stdout
    assert int(words[3]) > 0, "the two waiters never met"


def test_wait_timeout_and_poll(make):
    loop = make()
    t0 = time.monotonic()
    assert loop.wait(0) == []
    assert loop.wait(0.15) == []
    assert 0.14 <= time.monotonic() - t0 < 1.0


def test_wait_retries_after_signal(make):
    loop = make()
    hits = []
    old = signal.signal(signal.SIGALRM, lambda *a: hits.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.02, 0.02)
        t0 = time.monotonic()
        assert loop.wait(0.3) == []
        elapsed = time.monotonic() - t0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert hits, "no signal arrived"
    assert elapsed >= 0.29


def test_signal_handler_exception_propagates(make):
    loop = make()

    def boom(*a):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, boom)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(KeyboardInterrupt):
            loop.wait(5)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    loop.wakeup()
    assert loop.wait(1) == [(EV_WAKEUP, 0, 0)]


# -- listeners and lifecycle ------------------------------------------------------------------


def test_stats_counters(harness):
    hs = harness()
    c1, h1 = hs.connect()
    c2, h2 = hs.connect()
    hs.roundtrip(c1, b"a" * 100)
    hs.roundtrip(c2, b"b" * 250)
    st = hs.loop.stats()
    assert set(st) == {"conns_open", "accepted", "closed", "timed_out",
                       "refused", "accept_emfile", "bytes_in", "bytes_out",
                       "syscalls", "events", "canned"}
    assert st["conns_open"] == 2 and st["accepted"] == 2
    assert st["canned"] == 0
    assert st["closed"] == 0
    assert st["bytes_in"] == st["bytes_out"] == 350
    assert st["syscalls"] > 0
    assert st["events"] == len(hs.log)
    c1.close()
    c2.close()
    hs.pump(lambda: len(hs.closed) == 2, what="2 CLOSED")
    st = hs.loop.stats()
    assert st["conns_open"] == 0 and st["closed"] == 2
    assert st["timed_out"] == st["refused"] == st["accept_emfile"] == 0
    assert st["events"] == len(hs.log)


def test_add_listener_and_close_ownership(make):
    loop = make()
    own = socket.socket()
    own.bind(("127.0.0.1", 0))
    own.listen(8)
    lid = loop.add_listener(own)
    assert loop.sockname(lid) == own.getsockname()
    with pytest.raises(FileExistsError):
        loop.add_listener(own)
    made = loop.listen("127.0.0.1", 0)
    made_addr = loop.sockname(made)
    c = socket.create_connection(own.getsockname(), 5)
    deadline = time.monotonic() + 5
    opened = []
    while not opened:
        assert time.monotonic() < deadline
        opened = [e for e in loop.wait(0.01) if e[0] == EV_OPEN]
    assert opened[0][2] == lid
    loop.close()
    assert loop.closed
    loop.close()                                  # idempotent
    assert own.fileno() >= 0, "the loop closed a socket it did not create"
    own.settimeout(5)
    c2 = socket.create_connection(own.getsockname(), 5)
    own.accept()[0].close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(made_addr, 5)
    c.close()
    c2.close()
    own.close()


def test_sockname_of_a_descriptor_listener_keeps_it_non_blocking(make):
    """sockname() of a listener given as a bare descriptor must leave it
    non-blocking (PyPy's socket(fileno=) would make it blocking, and the
    loop's accept would then stall)."""
    loop = make()
    own = socket.socket()
    try:
        own.bind(("127.0.0.1", 0))
        own.listen(8)
        lid = loop.add_listener(own.fileno())
        assert not os.get_blocking(own.fileno())   # add_listener made it so
        assert loop.sockname(lid) == own.getsockname()
        assert not os.get_blocking(own.fileno())
        loop.close()
    finally:
        own.close()


def test_remove_listener_drains_gracefully(harness):
    hs = harness()
    c, h = hs.connect()
    hs.loop.remove_listener(hs.lid)
    with pytest.raises(KeyError):
        hs.loop.remove_listener(hs.lid)
    with pytest.raises(KeyError):
        hs.loop.sockname(hs.lid)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(hs.addr, 5)
    hs.roundtrip(c, b"existing connection still served")
    c.close()


def test_context_manager(cfg):
    with Loop(**cfg) as loop:
        loop.listen()
        assert not loop.closed
    assert loop.closed
    assert "closed" in repr(loop)


def test_add_listener_rejects_non_listening(make):
    loop = make()
    s = socket.socket()
    try:
        with pytest.raises(ValueError, match="not listening"):
            loop.add_listener(s)
    finally:
        s.close()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with pytest.raises(ValueError, match="SOCK_STREAM"):
            loop.add_listener(u)
    finally:
        u.close()
    with pytest.raises(TypeError):
        loop.add_listener("socket")
    with pytest.raises(ValueError):
        loop.add_listener(-1)


# -- misuse: clear exceptions, never a crash -------------------------------------------------


def test_closed_loop_raises_everywhere():
    loop = Loop()
    loop.close()
    calls = [
        lambda: loop.wait(0), lambda: loop.listen(), lambda: loop.wakeup(),
        lambda: loop.add_listener(0), lambda: loop.remove_listener(0),
        lambda: loop.sockname(0), lambda: loop.recv(1), lambda: loop.send(1, b"x"),
        lambda: loop.send(1, bytearray(b"x")),
        lambda: loop.recv_into(1, bytearray(1)), lambda: loop.close_connection(1),
        lambda: loop.shutdown_write(1), lambda: loop.pause_reading(1),
        lambda: loop.resume_reading(1), lambda: loop.arm_read_timeout(1),
        lambda: loop.set_token(1, 1), lambda: loop.get_token(1),
        lambda: loop.buffered(1), lambda: loop.peer(1), lambda: loop.fileno(1),
        lambda: loop.stats(),
        # Never waited with wait_batch: its buffers are not made (nor named
        # to the C loop, which would be NULL here).
        lambda: loop.wait_batch(0), lambda: loop.batch_view,
        lambda: loop.reply(1, 0, 1),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="I/O operation on closed loop"):
            call()
    with pytest.raises(ValueError):
        with loop:
            pass


@pytest.mark.parametrize("kw, exc", [
    ({"trigger": "both"}, ValueError),
    ({"trigger": 1}, TypeError),
    ({"overflow": "drop"}, ValueError),
    ({"overflow": None}, TypeError),
    ({"backend": "iocp"}, ValueError),
    ({"backend": 3}, TypeError),
    ({"max_connections": 0}, ValueError),
    ({"max_connections": -1}, ValueError),
    ({"max_connections": 2**40}, ValueError),
    ({"max_connections": 1.5}, TypeError),
    ({"input_high": 0}, ValueError),
    ({"input_high": -5}, ValueError),
    ({"input_low": -1}, ValueError),
    ({"input_high": 1000, "input_low": 2000}, ValueError),
    ({"output_high": -1}, ValueError),
    ({"output_max": 0}, ValueError),
    ({"output_max": 2**32}, ValueError),
    ({"accept_batch": 0}, ValueError),
    ({"batch": 0}, ValueError),
    ({"batch": -3}, ValueError),
    ({"batch": "10"}, TypeError),
    ({"idle_timeout": -1}, ValueError),
    ({"idle_timeout": 0}, ValueError),
    ({"idle_timeout": float("nan")}, ValueError),
    ({"idle_timeout": "1"}, TypeError),
    ({"read_timeout": 1e12}, OverflowError),
    ({"busy_poll": -1e-6}, ValueError),
    ({"busy_poll": 1.5}, ValueError),
    ({"busy_poll": float("nan")}, ValueError),
    ({"busy_poll": "50us"}, TypeError),
    ({"busy_poll": True}, TypeError),
])
def test_bad_configuration(kw, exc):
    with pytest.raises(exc):
        Loop(**kw)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in ("poll", "select")])
def test_edge_needs_capable_backend(backend):
    with pytest.raises(ValueError, match="edge"):
        Loop(backend=backend, trigger="edge")


def test_wrong_argument_types(harness):
    hs = harness("none")
    c, h = hs.connect()
    loop = hs.loop
    for bad in ("1", 1.0, None, b"1"):
        with pytest.raises(TypeError):
            loop.recv(bad)
        with pytest.raises(TypeError):
            loop.send(bad, b"x")
        with pytest.raises(TypeError):
            loop.buffered(bad)
    for bad in (-1, 2**64):
        with pytest.raises(OverflowError):
            loop.recv(bad)
        with pytest.raises(OverflowError):
            loop.close_connection(bad)
    with pytest.raises(TypeError):
        loop.recv(h, "all")
    with pytest.raises(ValueError, match="mode"):
        loop.close_connection(h, "later")
    with pytest.raises(TypeError):
        loop.close_connection(h, 0)
    with pytest.raises(OverflowError):
        loop.set_token(h, -1)
    with pytest.raises(OverflowError):
        loop.set_token(h, 2**64)
    with pytest.raises(TypeError):
        loop.set_token(h, "x")
    with pytest.raises(TypeError):
        loop.recv_into(h, b"immutable")
    with pytest.raises(TypeError):
        loop.wait("soon")
    with pytest.raises(ValueError):
        loop.wait(float("nan"))
    with pytest.raises(TypeError):
        loop.listen(80)
    with pytest.raises(ValueError):
        loop.listen("127.0.0.1", 70000)
    with pytest.raises(ValueError):
        loop.listen("127.0.0.1", -1)
    with pytest.raises(TypeError):
        loop.sockname("0")
    with pytest.raises(KeyError):
        loop.sockname(99)
    with pytest.raises(ValueError):
        loop.remove_listener(-1)
    # The connection is unharmed by all of that.
    loop.send(h, b"ok")
    assert hs.read(c, 2) == b"ok"
    c.close()


def test_exports():
    for name in ("Loop", "EV_OPEN", "EV_DATA", "EV_EOF", "EV_DRAINED",
                 "EV_WRITE_FULL", "EV_READ_TIMEOUT", "EV_CLOSED", "EV_WAKEUP"):
        assert name in pyepoll.__all__
        assert getattr(pyepoll, name) is getattr(pyepoll.loop, name)
    kinds = [EV_OPEN, EV_DATA, EV_EOF, EV_DRAINED, EV_WRITE_FULL,
             EV_READ_TIMEOUT, EV_CLOSED, EV_WAKEUP]
    assert len(set(kinds)) == 8


# -- wait_batch: DATA brings its bytes; reply and queue_echo --------------------


@pytest.mark.parametrize("batch", ["reply", "queue"])
def test_batch_echo_16mib_byte_exact(harness, batch):
    hs = harness(batched=batch)
    payloads = [payload(1 << 20, i) for i in range(16)]
    echo_bulk(hs, payloads)
    st = hs.loop.stats()
    assert st["bytes_in"] == st["bytes_out"] == 16 << 20


def test_batch_moves_the_bytes(harness):
    hs = harness("none", batched="reply")
    loop = hs.loop
    conns = [hs.connect() for _ in range(3)]
    for i, (c, _) in enumerate(conns):
        c.sendall(b"%d" % i * (100 + i))
    seen: Dict[int, bytes] = {}
    deadline = time.monotonic() + 5
    while len(seen) < 3:
        assert time.monotonic() < deadline
        spans: List[Tuple[int, int]] = []
        for kind, h, arg, off in loop.wait_batch(0.01):
            if kind != EV_DATA:
                assert off == 0
                continue
            assert all(off >= b or a >= off + arg for a, b in spans), \
                "DATA bytes overlap"
            spans.append((off, off + arg))
            seen[h] = seen.get(h, b"") + bytes(loop.batch_view[off:off + arg])
            # Moved out of the connection: nothing left to recv.
            assert loop.recv(h) == b""
            assert loop.buffered(h) == (0, 0)
    for i, (_, h) in enumerate(conns):
        assert seen[h] == b"%d" % i * (100 + i)
    view = loop.batch_view
    assert view.readonly and len(view) >= 65536
    with pytest.raises(TypeError):
        view[0] = 1
    for c, _ in conns:
        c.close()


def test_batch_carries_over_what_does_not_fit(harness):
    # 8 x 200 KB at once is more than the 256 KiB buffer: DATA that does not
    # fit waits for the next call; every connection's bytes stay in order.
    hs = harness("collect", batched="reply", input_high=262144, input_low=0)
    conns = [hs.connect() for _ in range(8)]
    datas = [payload(200000, 40 + i) for i in range(8)]
    for (c, _), data in zip(conns, datas):
        c.setblocking(True)
        c.sendall(data)
        c.setblocking(False)
    hs.pump(lambda: sum(map(len, hs.got.values())) == 8 * 200000,
            what="all bytes")
    for (_, h), data in zip(conns, datas):
        assert hs.got[h] == data
    for c, _ in conns:
        c.close()


def test_batch_input_marks_resume(harness):
    # Reading pauses at input_high; wait_batch taking the bytes resumes it.
    hs = harness("collect", batched="queue", input_high=4096, input_low=1024)
    c, h = hs.connect()
    data = payload(1 << 20, 11)
    hs.write(c, data)
    hs.pump(lambda: len(hs.got[h]) == len(data), what="1 MiB")
    assert hs.got[h] == data
    assert all(a <= 4096 for k, _, a in hs.log if k == EV_DATA)
    c.close()


def test_queue_echo_keeps_order_with_close(harness):
    hs = harness("none", batched="queue")
    loop = hs.loop
    c, h = hs.connect()
    c.sendall(b"bye")
    hs.pump(lambda: EV_DATA in hs.kinds(h), what="DATA")
    loop.queue_echo(h)
    loop.close_connection(h)         # flushes the queued echo first
    assert hs.read_eof(c) == b"bye"
    c.close()


def test_queue_echo_skips_what_it_cannot_echo(harness):
    hs = harness("none", batched="queue")
    loop = hs.loop
    (c1, h1), (c2, h2) = hs.connect(), hs.connect()
    c1.sendall(b"one")
    hs.pump(lambda: EV_DATA in hs.kinds(h1), what="DATA")
    loop.queue_echo(h2)              # no DATA in the last batch
    loop.queue_echo(h1)
    loop.queue_echo(h1)              # echoed once
    loop.queue_echo(h1 + (5 << 40))  # a stale generation
    hs.step(0.01)
    assert hs.read(c1, 3) == b"one"
    hs.pump_for(0.1)
    with pytest.raises(BlockingIOError):
        c1.recv(10)
    with pytest.raises(BlockingIOError):
        c2.recv(10)
    # A DATA of an older batch is not echoed any more.
    c2.sendall(b"two")
    hs.pump(lambda: EV_DATA in hs.kinds(h2), what="DATA")
    loop.queue_echo(h1)
    loop.queue_echo(h2)
    hs.step(0.01)
    assert hs.read(c2, 3) == b"two"
    hs.pump_for(0.1)
    with pytest.raises(BlockingIOError):
        c1.recv(10)
    c1.close()
    c2.close()


def test_queue_echo_beyond_output_max_closes(harness):
    hs = harness("none", batched="queue", output_max=100)
    c, h = hs.connect()
    c.sendall(bytes(1000))
    hs.pump(lambda: EV_DATA in hs.kinds(h), what="DATA")
    hs.loop.queue_echo(h)
    hs.pump(lambda: h in hs.closed, what="CLOSED")
    assert hs.closed[h] == errno.ENOBUFS
    with pytest.raises(StaleHandleError):
        hs.loop.send(h, b"x")
    c.close()


def test_reply_and_queue_echo_arguments(harness, make):
    fresh = make()
    with pytest.raises(ValueError, match="batch buffer"):
        fresh.reply(1, 0, 1)         # no wait_batch yet: nothing to send
    hs = harness("none", batched="reply")
    loop = hs.loop
    c, h = hs.connect()
    c.sendall(b"abc")
    hs.pump(lambda: EV_DATA in hs.kinds(h), what="DATA")
    size = len(loop.batch_view)
    with pytest.raises(ValueError, match="batch buffer"):
        loop.reply(h, size - 1, 2)
    with pytest.raises(ValueError):
        loop.reply(h, -1, 1)
    with pytest.raises(ValueError):
        loop.reply(h, 0, -1)
    with pytest.raises(TypeError):
        loop.reply(h, "0", 1)
    with pytest.raises(TypeError):
        loop.reply("h", 0, 1)
    with pytest.raises(StaleHandleError):
        loop.reply(h + (5 << 40), 0, 1)
    for bad in ("1", 1.0, None):
        with pytest.raises(TypeError):
            loop.queue_echo(bad)
    for bad in (-1, 2**64):
        with pytest.raises(OverflowError):
            loop.queue_echo(bad)
    loop.reply(h, 0, 3)
    assert hs.read(c, 3) == b"abc"
    loop.close()
    with pytest.raises(ValueError, match="closed"):
        loop.reply(h, 0, 1)
    with pytest.raises(ValueError, match="closed"):
        loop.wait_batch(0)
    with pytest.raises(ValueError, match="closed"):
        loop.batch_view
    c.close()


def test_batch_reports_every_kind(harness):
    # OPEN, DATA, EOF and CLOSED through wait_batch, in order per handle.
    hs = harness("echo", batched="reply")
    c, h = hs.connect()
    hs.roundtrip(c, b"ping")
    c.shutdown(socket.SHUT_WR)
    hs.pump(lambda: h in hs.closed, what="CLOSED")
    kinds = hs.kinds(h)
    assert kinds[0] == EV_OPEN and kinds[-1] == EV_CLOSED
    assert kinds.index(EV_DATA) < kinds.index(EV_EOF)
    c.close()


def test_queue_echo_more_than_a_batch(harness):
    # More queued echoes than events in a batch (the same handle again and
    # again) still go out in the run's call, and only once.
    hs = harness("none", batched="queue", batch=2)
    c, h = hs.connect()
    c.sendall(b"once")
    hs.pump(lambda: EV_DATA in hs.kinds(h), what="DATA")
    for _ in range(5):
        hs.loop.queue_echo(h)
    hs.step(0.01)
    assert hs.read(c, 4) == b"once"
    hs.pump_for(0.1)
    with pytest.raises(BlockingIOError):
        c.recv(10)
    c.close()


def test_wait_batch_returns_a_snapshot(make):
    loop = make()
    lid = loop.listen("127.0.0.1", 0)
    c = client(loop.sockname(lid))
    deadline = time.monotonic() + 5
    while loop.stats()["events"] == 0:          # not consumed: a snapshot
        assert time.monotonic() < deadline, "no OPEN"
        events = loop.wait_batch(0.01)
    c.sendall(b"x")
    c2 = client(loop.sockname(lid))
    later: List[Tuple[int, int, int, int]] = []
    while len(later) < 2:
        assert time.monotonic() < deadline, "no DATA and OPEN"
        later += list(loop.wait_batch(0.01))
    assert sorted(k for k, *_ in later) == [EV_OPEN, EV_DATA]
    h = next(h for k, h, *_ in later if k == EV_DATA)
    # The later calls overwrote the event buffer, not the first result.
    assert list(events) == [(EV_OPEN, h, lid, 0)]
    c.close()
    c2.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_gets_fork_error(harness):
    hs = harness("collect", batched="reply")
    c, h = hs.connect()
    pid = os.fork()
    if pid == 0:                                    # the child
        code = 0
        loop = hs.loop
        for call in (lambda: loop.wait(0), lambda: loop.wait_batch(0),
                     lambda: loop.send(h, b"x"), lambda: loop.recv(h),
                     lambda: loop.reply(h, 0, 1), lambda: loop.stats(),
                     lambda: loop.close_connection(h)):
            try:
                call()
                code |= 1                           # used silently
            except pyepoll.ForkError:
                pass
            except BaseException:  # noqa: BLE001
                code |= 2
        if not loop.closed:
            code |= 4
        loop.close()                                # a no-op here
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    # The parent's loop and connection are untouched.
    c.sendall(b"after fork")
    hs.pump(lambda: bytes(hs.got[h]) == b"after fork", what="bytes")
    hs.loop.send(h, b"ok")
    assert hs.read(c, 2) == b"ok"
    c.close()



# -- the C calls (LoopCalls) and the Python ones: same behaviour at the edges --
# Every test in this file runs on both paths (conftest.loop_path); these
# exercise where the C calls hand over to the Python code.


def _open_conns(loop: Loop, n: int) -> List[Tuple[socket.socket, int]]:
    addr = loop.sockname(loop.listen())
    socks = [client(addr) for _ in range(n)]
    handles: List[int] = []
    deadline = time.monotonic() + 5
    while len(handles) < n:
        assert time.monotonic() < deadline
        handles += [h for kind, h, _, _ in loop.wait_batch(0.01)
                    if kind == EV_OPEN]
    # Accept order is the connect order on one listener.
    by_port = {}
    for h in handles:
        by_port[loop.peer(h)[1]] = h
    return [(c, by_port[c.getsockname()[1]]) for c in socks]


def test_c_calls_in_use(loop_path):
    loop = Loop()
    try:
        for name in ("wait", "recv", "wait_batch", "wait_batch_echo", "send",
                     "reply"):
            method = getattr(loop, name)
            # The C path binds LoopCalls' builtin methods; the Python path
            # the methods of Loop.
            assert (type(method).__name__ == "builtin_function_or_method") \
                == (loop_path == "c"), name
        assert Loop.send.__doc__.startswith("Queue ``data``")
        assert Loop.wait.__doc__.startswith("Do all I/O that is ready")
        assert Loop.recv.__doc__.startswith("Take up to ``max``")
    finally:
        loop.close()


_HOT = ("wait", "recv", "wait_batch", "wait_batch_echo", "send", "reply")


def test_method_lookup_per_loop(loop_path):
    # `loop.wait` is that loop's method whichever loop was looked up last
    # (the C descriptor keeps the last one's), and the class gives the
    # Python function with its doc.
    a, b = Loop(), Loop()
    try:
        for _ in range(2):
            for loop in (a, b, b, a):
                for name in _HOT:
                    m = getattr(loop, name)
                    if loop_path == "c":
                        assert m.__self__ is loop._fast, name
                    else:
                        assert m.__self__ is loop, name
                        assert m.__func__ is getattr(Loop, name), name
        for name in _HOT:
            assert callable(getattr(Loop, name)), name
            assert getattr(Loop, name).__doc__, name
    finally:
        a.close()
        b.close()


@pytest.mark.skipif(not hasattr(sys, "getrefcount"), reason="CPython refcounts")
def test_method_lookup_keeps_nothing_of_a_dead_loop(loop_path):
    # The kept method goes with its Loop: the Loop's C calls (and the C
    # loop they keep alive) are freed with it, not at the next lookup.
    loop = Loop()
    fast = loop._fast
    if fast is None:                    # the Python path keeps nothing
        assert loop.wait.__self__ is loop
        loop.close()
        return
    base = sys.getrefcount(fast)
    for name in _HOT:
        getattr(loop, name)
    assert sys.getrefcount(fast) - base == len(_HOT)    # one kept each
    loop.close()
    del loop
    # Only `fast` here (and getrefcount's argument) are left, at once.
    assert sys.getrefcount(fast) == base - 1


def test_hot_method_arguments():
    hot = getattr(pyepoll.loop._sp, "HotMethod", None)
    if hot is None:
        pytest.skip("no pyepoll._speedups (PyPy or PYEPOLL_SPEEDUPS=0)")
    with pytest.raises(TypeError):
        hot()
    with pytest.raises(TypeError):
        hot(1)
    with pytest.raises(TypeError):
        hot(len, len)
    with pytest.raises(TypeError):
        hot(func=Loop.close)

    class Plain:                        # no _fast: AttributeError, as _Hot
        m = hot(lambda self: 1)

    with pytest.raises(AttributeError):
        Plain().m
    assert Plain.m(None) == 1


def test_calls_on_closed_loop_bound_before(loop_path):
    loop = Loop()
    loop.batch_view
    wait_batch, send, reply = loop.wait_batch, loop.send, loop.reply
    wait, recv = loop.wait, loop.recv
    wait_echo = loop.wait_batch_echo
    loop.close()
    for call in (lambda: wait_batch(0), lambda: wait_batch(None),
                 lambda: wait_echo(0), lambda: wait_echo(None),
                 lambda: send(1, b"x"), lambda: send(1, bytearray(b"x")),
                 lambda: reply(1, 0, 1), lambda: wait(), lambda: wait(0),
                 lambda: wait(timeout=0.5), lambda: recv(1),
                 lambda: recv(1, 5), lambda: recv(1, max=5)):
        with pytest.raises(ValueError, match="I/O operation on closed loop"):
            call()
    # The timeout is checked first, as in the Python code.
    with pytest.raises(TypeError, match="timeout must be an integer"):
        wait("1")


def test_timeout_index_that_closes_the_loop(loop_path):
    # A timeout whose __index__ closes the loop: the closed-loop error,
    # never a call into the torn-down C loop.
    loop = Loop()
    loop.batch_view

    class Closing:
        def __index__(self) -> int:
            loop.close()
            return 1

    with pytest.raises(ValueError, match="I/O operation on closed loop"):
        loop.wait(Closing())
    loop = Loop()
    loop.batch_view
    with pytest.raises(ValueError, match="I/O operation on closed loop"):
        loop.wait_batch(Closing())


def test_wait_events_and_arguments(loop_path):
    loop = Loop(batch=3)
    try:
        conns = _open_conns(loop, 5)
        for c, _ in conns:
            c.sendall(b"hello")
        time.sleep(0.1)
        seen: Dict[int, int] = {}
        sizes: List[int] = []
        deadline = time.monotonic() + 5
        while len(seen) < 5:
            assert time.monotonic() < deadline
            events = loop.wait(0.05)
            assert type(events) is list
            sizes.append(len(events))
            for ev in events:
                assert type(ev) is tuple and len(ev) == 3
                kind, h, arg = ev
                assert (kind, arg) == (EV_DATA, 5)
                seen[h] = arg
        assert sizes[0] == 3 and max(sizes) == 3    # at most batch a wait
        assert sorted(seen) == sorted(h for _, h in conns)
        assert loop.wait(timeout=0) == []
        assert loop.wait(0.0) == []
        with pytest.raises(TypeError):
            loop.wait(0, 1)
        with pytest.raises(TypeError):
            loop.wait(nonsense=1)
        with pytest.raises(TypeError, match="timeout must be an integer"):
            loop.wait("0")
        with pytest.raises(ValueError, match="NaN"):
            loop.wait(float("nan"))
        with pytest.raises(OverflowError):
            loop.wait(1e300)
        for c, _ in conns:
            c.close()
    finally:
        loop.close()


def _data_event(loop: Loop, c: socket.socket, h: int, msg: bytes
                ) -> list:
    """The list wait() returns for msg sent on c, its bytes taken."""
    c.sendall(msg)
    deadline = time.monotonic() + 5
    while True:
        assert time.monotonic() < deadline, "no DATA"
        events = loop.wait(0.05)
        if events:
            assert loop.recv(h) == msg
            return events


def test_wait_never_changes_a_list_the_caller_holds(loop_path):
    # The C wait refills the list it returned last when the caller dropped
    # it; one the caller kept (or iterates) stays as it was.
    loop = Loop()
    try:
        [(c, h)] = _open_conns(loop, 1)
        kept = _data_event(loop, c, h, b"abc")
        assert kept == [(EV_DATA, h, 3)]
        it = iter(_data_event(loop, c, h, b"abcd"))   # an iterator holds it
        later = _data_event(loop, c, h, b"abcde")
        assert later == [(EV_DATA, h, 5)] and later is not kept
        assert kept == [(EV_DATA, h, 3)]
        assert list(it) == [(EV_DATA, h, 4)]
        # Dropped ones, whatever the caller did to them: the next wait's
        # list holds only its own events.
        for change in (lambda ev: ev.append("x"), lambda ev: ev.clear(),
                       lambda ev: ev.__setitem__(0, "x"),
                       lambda ev: ev.extend(range(1000))):
            ev = _data_event(loop, c, h, b"ab")
            change(ev)
            del ev
            assert _data_event(loop, c, h, b"xyz") == [(EV_DATA, h, 3)]
        assert loop.wait(0) == []
        assert _data_event(loop, c, h, b"q") == [(EV_DATA, h, 1)]
        assert kept == [(EV_DATA, h, 3)]
        c.close()
    finally:
        loop.close()


def test_wait_from_del_of_a_dropped_list_item(loop_path):
    # An object the caller put in a returned list, whose __del__ calls
    # wait: that wait and the one dropping the list each get their own.
    loop = Loop()
    try:
        [(c, h)] = _open_conns(loop, 1)
        inner: List[list] = []

        class CallsWait:
            def __del__(self) -> None:
                inner.append(loop.wait(0))

        ev = _data_event(loop, c, h, b"ab")
        ev[0] = CallsWait()
        ev.append(CallsWait())
        del ev          # (the C wait drops them before its run, below)
        if sys.implementation.name == "pypy":
            gc.collect()    # where PyPy runs __del__
        outer = loop.wait(0)
        assert outer == [] and inner == [[], []]
        assert all(r is not outer for r in inner) and inner[0] is not inner[1]
        assert _data_event(loop, c, h, b"xyz") == [(EV_DATA, h, 3)]
        assert outer == [] and inner == [[], []]
        c.close()
    finally:
        loop.close()


def test_wait_reuses_its_dropped_list(loop_path):
    # What makes the C wait cheaper (issue 15): a dropped list and the
    # same event's tuple come back instead of new ones.
    loop = Loop()
    try:
        [(c, h)] = _open_conns(loop, 1)
        first = _data_event(loop, c, h, b"ab")
        event, list_id = first[0], id(first)
        del first
        second = _data_event(loop, c, h, b"cd")
        assert second == [(EV_DATA, h, 2)]
        # The tuple is still held here: only the C wait hands it out again.
        assert (second[0] is event) == (loop_path == "c")
        if loop_path == "c":
            # (The Python path's new list may get the freed one's address.)
            assert id(second) == list_id
        third = _data_event(loop, c, h, b"xyz")     # another event
        assert third == [(EV_DATA, h, 3)] and third[0] is not event
        c.close()
    finally:
        loop.close()


def _batch_data_event(loop: Loop, c: socket.socket, msg: bytes) -> tuple:
    """The DATA event wait_batch() hands out for msg sent on c, its bytes
    checked in batch_view."""
    c.sendall(msg)
    deadline = time.monotonic() + 5
    while True:
        assert time.monotonic() < deadline, "no DATA"
        events = list(loop.wait_batch(0.05))
        if events:
            [event] = events
            kind, _, n, off = event
            assert kind == EV_DATA
            assert bytes(loop.batch_view[off:off + n]) == msg
            return event


def test_wait_batch_reuses_an_event_tuple(loop_path):
    # As wait's (issue 15): the same event's tuple comes back from the C
    # wait_batch; another event gets its own, with its own values.
    loop = Loop()
    try:
        [(c, h)] = _open_conns(loop, 1)
        first = _batch_data_event(loop, c, b"ab")
        assert first == (EV_DATA, h, 2, 0)
        second = _batch_data_event(loop, c, b"cd")
        assert second == (EV_DATA, h, 2, 0)
        assert (second is first) == (loop_path == "c")
        third = _batch_data_event(loop, c, b"xyz")
        assert third == (EV_DATA, h, 3, 0) and third is not first
        assert first == (EV_DATA, h, 2, 0)      # never changed
        c.close()
    finally:
        loop.close()


def test_wait_sends_queued_echoes_first(loop_path):
    loop = Loop()
    try:
        [(c, h)] = _open_conns(loop, 1)
        c.sendall(b"ping")
        deadline = time.monotonic() + 5
        while True:
            assert time.monotonic() < deadline
            if any(k == EV_DATA for k, *_ in loop.wait_batch(0.05)):
                break
        loop.queue_echo(h)
        assert loop.wait(0) == []           # the echo left before the wait
        c.settimeout(5)
        assert c.recv(10) == b"ping"
        c.close()
    finally:
        loop.close()


def test_recv_arguments_and_errors(loop_path):
    loop = Loop(input_high=4096, input_low=1024)
    try:
        [(c, h)] = _open_conns(loop, 1)
        c.sendall(b"abcdefghij")
        deadline = time.monotonic() + 5
        while loop.buffered(h)[0] < 10:
            assert time.monotonic() < deadline
            loop.wait(0.05)
        assert loop.recv(h, True) == b"a"           # an int, as cffi takes it
        assert loop.recv(h, max=2) == b"bc"
        assert loop.recv(h, 0) == b""
        assert loop.recv(h, 2**70) == b"defghij"    # more than input_high
        c.sendall(b"qrst")
        while loop.buffered(h)[0] < 4:
            assert time.monotonic() < deadline
            loop.wait(0.05)
        assert loop.recv(h, -(2**70)) == b"qrst"    # negative: all of it
        assert loop.recv(h) == b""
        with pytest.raises(TypeError):
            loop.recv(h, 2.0)
        with pytest.raises(TypeError):
            loop.recv("h")
        with pytest.raises(TypeError):
            loop.recv(1.0)
        with pytest.raises(OverflowError):
            loop.recv(-1)
        with pytest.raises(OverflowError):
            loop.recv(2**64)
        with pytest.raises(TypeError):
            loop.recv()
        with pytest.raises(TypeError):
            loop.recv(h, 1, 2)
        with pytest.raises(TypeError):
            loop.recv(h, size=1)
        # A full buffer (unread == input_high): read on until empty.
        data = bytes(range(256)) * 16
        c.sendall(data)
        while loop.buffered(h)[0] < 4096:
            assert time.monotonic() < deadline
            loop.wait(0.05)
        assert loop.recv(h) == data
        assert loop.recv(h) == b""
        loop.close_connection(h, "now")
        with pytest.raises(StaleHandleError):
            loop.recv(h)
        with pytest.raises(StaleHandleError):
            loop.recv(h, 5)
        c.close()
    finally:
        loop.close()


def test_handles_from_wait_reach_their_connections(loop_path):
    # Two connections taking turns (the C path keeps the int of the last
    # reported handle): each recv/send reaches its own connection, whether
    # given the int wait returned or an equal one made anew.
    loop = Loop()
    try:
        conns = _open_conns(loop, 2)
        deadline = time.monotonic() + 5
        for rnd in range(6):
            c, want_h = conns[rnd % 2]
            msg = b"m%d" % rnd
            c.sendall(msg)
            got: List[Tuple[int, int, int]] = []
            while not got:
                assert time.monotonic() < deadline
                got = [e for e in loop.wait(0.05) if e[0] == EV_DATA]
            [(_, h, n)] = got
            assert h == want_h and n == len(msg)
            same = int(str(h))          # equal, not the same object
            assert loop.recv(h if rnd < 3 else same) == msg
            loop.send(same if rnd < 3 else h, msg.upper())
            c.settimeout(5)
            assert c.recv(10) == msg.upper()
        for c, _ in conns:
            c.close()
    finally:
        loop.close()


def test_second_thread_wait_and_recv_get_ebusy(loop_path):
    loop = Loop()
    try:
        [(c, h)] = _open_conns(loop, 1)
        out: List[object] = []
        t = threading.Thread(target=lambda: out.append(loop.wait(3)))
        t.start()
        time.sleep(0.2)         # the thread is inside the blocking wait
        for call, what in ((lambda: loop.recv(h), "recv"),
                           (lambda: loop.recv(h, 5), "recv"),
                           (lambda: loop.wait(0), "wait"),
                           (lambda: loop.wait(0.1), "wait")):
            with pytest.raises(OSError) as info:
                call()
            assert info.value.errno == errno.EBUSY
            assert f"Loop.{what}(): another thread" in str(info.value)
        loop.wakeup()
        t.join(5)
        assert out == [[(EV_WAKEUP, 0, 0)]]
        c.close()
    finally:
        loop.close()


def test_close_from_another_thread_during_wait_bound(loop_path):
    loop = Loop()
    addr = loop.sockname(loop.listen())
    wait = loop.wait
    out: List[object] = []
    t = threading.Thread(target=lambda: out.append(wait(5)))
    t.start()
    time.sleep(0.2)
    loop.close()
    t.join(5)
    # It returns (close() wakes it: a WAKEUP at most), no error.
    assert not t.is_alive() and len(out) == 1
    assert [k for k, _, _ in out[0]] in ([], [EV_WAKEUP])
    with pytest.raises(ValueError, match="closed loop"):
        wait(0)
    # The waiter closed the listening socket the loop owned.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(addr, 5)


def test_send_kinds_and_messages(loop_path):
    loop = Loop()
    try:
        [(c, h)] = _open_conns(loop, 1)
        loop.send(h, b"ab")
        loop.send(h, bytearray(b"cd"))
        loop.send(h, memoryview(b"xefx")[1:3])
        loop.send(h, array("B", b"gh"))
        got = b""
        deadline = time.monotonic() + 5
        while len(got) < 8:
            assert time.monotonic() < deadline
            loop.wait_batch(0.01)
            try:
                got += c.recv(100)
            except BlockingIOError:
                pass
        assert got == b"abcdefgh"
        with pytest.raises(TypeError,
                           match=r"^send\(\) needs a bytes-like object, "
                                 r"not str$"):
            loop.send(h, "text")
        with pytest.raises(TypeError,
                           match=r"^send\(\) needs a bytes-like object, "
                                 r"not int$"):
            loop.send(h, 5)
        with pytest.raises(TypeError):
            loop.send("h", b"x")
        with pytest.raises(OverflowError):
            loop.send(-1, b"x")
        with pytest.raises(TypeError):
            loop.send(h)
        with pytest.raises(TypeError):
            loop.wait_batch(0, 1)
        with pytest.raises(TypeError):
            loop.reply(h, "0", 1)
        with pytest.raises(ValueError, match="length must be between"):
            loop.reply(h, 0, -1)
        with pytest.raises(ValueError, match=r"reply range \[0, 16777216\)"):
            loop.reply(h, 0, 1 << 24)
        # Keywords go to the Python method, same answer.
        assert list(loop.wait_batch(timeout=0)) == []
        loop.shutdown_write(h)
        with pytest.raises(BrokenPipeError):
            loop.send(h, b"late")
        with pytest.raises(BrokenPipeError):
            loop.send(h, bytearray(b"late"))
        c.close()
    finally:
        loop.close()


def test_send_reply_on_stale_handle(loop_path):
    loop = Loop()
    try:
        [(c, h)] = _open_conns(loop, 1)
        loop.close_connection(h, "now")
        with pytest.raises(StaleHandleError):
            loop.send(h, b"x")
        with pytest.raises(StaleHandleError):
            loop.send(h, bytearray(b"x"))
        with pytest.raises(StaleHandleError):
            loop.reply(h, 0, 0)
        with pytest.raises(StaleHandleError):
            loop.send(h + (7 << 32), b"x")     # a generation never issued
        c.close()
    finally:
        loop.close()


def test_second_thread_gets_ebusy(loop_path):
    loop = Loop()
    try:
        [(c, h)] = _open_conns(loop, 1)
        out: List[object] = []
        t = threading.Thread(target=lambda: out.append(list(loop.wait_batch(3))))
        t.start()
        time.sleep(0.2)         # the thread is inside the blocking wait
        for call, what in ((lambda: loop.send(h, b"x"), "send"),
                           (lambda: loop.send(h, bytearray(b"x")), "send"),
                           # reply's errors are send's (_send_failed)
                           (lambda: loop.reply(h, 0, 1), "send"),
                           (lambda: loop.wait_batch(0), "wait")):
            with pytest.raises(OSError) as info:
                call()
            assert info.value.errno == errno.EBUSY
            assert f"Loop.{what}(): another thread" in str(info.value)
        loop.wakeup()
        t.join(5)
        assert out and [k for k, *_ in out[0]] == [EV_WAKEUP]
        c.close()
    finally:
        loop.close()


def test_close_from_another_thread_during_wait_batch(loop_path):
    loop = Loop()
    loop.listen()
    loop.batch_view
    wait_batch = loop.wait_batch
    out: List[object] = []
    t = threading.Thread(target=lambda: out.append(list(wait_batch(5))))
    t.start()
    time.sleep(0.2)
    loop.close()
    t.join(5)
    assert not t.is_alive() and len(out) == 1
    with pytest.raises(ValueError, match="closed loop"):
        wait_batch(0)


def test_signal_during_blocking_wait_batch(loop_path):
    loop = Loop()
    loop.batch_view
    seen: List[int] = []
    raise_at = [2]              # the handler raises at this many signals
    threads: List[threading.Thread] = []

    class Stop(Exception):
        pass

    def handler(signum, frame):
        seen.append(signum)
        if len(seen) == raise_at[0]:
            raise Stop

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        main = threading.get_ident()

        def kick():
            for _ in range(2):
                time.sleep(0.2)
                signal.pthread_kill(main, signal.SIGUSR1)

        t = threading.Thread(target=kick)
        threads.append(t)
        t.start()
        start = time.monotonic()
        # The first handler returns: the wait goes on (PEP 475); the
        # second raises, which ends the wait.
        with pytest.raises(Stop):
            loop.wait_batch(5)
        assert 0.3 < time.monotonic() - start < 4
        assert seen == [signal.SIGUSR1] * 2
        t.join(5)
        # A handler that returns, with a timeout: the wait ends at it, empty.
        seen.clear()
        raise_at[0] = 0
        t = threading.Thread(target=kick)
        threads.append(t)
        t.start()
        start = time.monotonic()
        assert list(loop.wait_batch(0.3)) == []
        assert 0.29 < time.monotonic() - start < 2
        assert seen == [signal.SIGUSR1]     # it came, the wait went on
        t.join(5)
    finally:
        for t in threads:
            t.join(5)           # no signal may come after the restore
        signal.signal(signal.SIGUSR1, old)
        loop.close()


@pytest.mark.parametrize("n", [1, 2, 5, 16, 17, 40])
def test_batches_of_n_events(loop_path, n):
    loop = Loop()
    try:
        conns = _open_conns(loop, n)
        for i, (c, _) in enumerate(conns):
            c.sendall(b"%03d" % i * (i + 1))
        time.sleep(0.1)         # all of them readable at the next wait
        got: Dict[int, bytes] = {}
        sizes: List[int] = []
        deadline = time.monotonic() + 5
        while sum(map(len, got.values())) < 3 * n * (n + 1) // 2:
            assert time.monotonic() < deadline
            events = loop.wait_batch(0.05)
            assert iter(events) is events
            batch = list(events)
            sizes.append(len(batch))
            view = loop.batch_view
            for kind, h, arg, off in batch:
                assert kind == EV_DATA
                got[h] = got.get(h, b"") + bytes(view[off:off + arg])
        assert sizes[0] == n    # one batch of n events
        for i, (_, h) in enumerate(conns):
            assert got[h] == b"%03d" % i * (i + 1)
        # Echo them all back queued: the queue goes out with the next wait.
        for h in got:
            loop.queue_echo(h)
        assert list(loop.wait_batch(0)) == []
        for i, (c, _) in enumerate(conns):
            c.settimeout(5)
            want = b"%03d" % i * (i + 1)
            back = b""
            while len(back) < len(want):
                back += c.recv(4096)
            assert back == want
            c.close()
    finally:
        loop.close()


ASK = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"


def _recv_exactly(c: socket.socket, loop: Loop, n: int) -> bytes:
    """Run the loop until the client has n bytes (no more come after)."""
    got = b""
    deadline = time.monotonic() + 5
    while len(got) < n:
        assert time.monotonic() < deadline, f"got {got!r}"
        assert [k for k, *_ in loop.wait_batch(0.01)] == []
        try:
            got += c.recv(65536)
        except BlockingIOError:
            pass
    return got


def _data_of(loop: Loop, h: int) -> bytes:
    """Run the loop until h's DATA comes; its bytes."""
    deadline = time.monotonic() + 5
    while True:
        assert time.monotonic() < deadline, "no DATA"
        for kind, eh, arg, off in loop.wait_batch(0.01):
            if kind == EV_DATA and eh == h:
                return bytes(loop.batch_view[off:off + arg])


def test_canned_answers(make, loop_path):
    """A marked connection's exact asks (alone or pipelined) are answered
    in C with no event; other bytes come as DATA and unmark it; an
    unmarked connection, a passed ``until`` and a cleared ask get DATA."""
    loop = make()
    (c, h), (c2, h2) = _open_conns(loop, 2)
    loop.set_canned(ASK, ANSWER, time.time() + 3600)
    loop.canned_mark(h)
    c.sendall(ASK)
    assert _recv_exactly(c, loop, len(ANSWER)) == ANSWER
    c.sendall(ASK * 5)
    assert _recv_exactly(c, loop, 5 * len(ANSWER)) == ANSWER * 5
    assert loop.stats()["canned"] == 6
    c2.sendall(ASK)                                 # not marked
    assert _data_of(loop, h2) == ASK
    c.sendall(ASK + b"GET")                         # not only asks
    assert _data_of(loop, h) == ASK + b"GET"
    c.sendall(ASK)                                  # unmarked by that DATA
    assert _data_of(loop, h) == ASK
    loop.canned_mark(h)
    loop.set_canned(ASK, ANSWER, time.time() - 1)   # stale
    c.sendall(ASK)
    assert _data_of(loop, h) == ASK
    loop.canned_mark(h)
    loop.set_canned(ASK, ANSWER, time.time() + 3600)
    loop.canned_mark(h, False)
    c.sendall(ASK)
    assert _data_of(loop, h) == ASK
    loop.canned_mark(h)
    loop.set_canned(None)
    c.sendall(ASK)
    assert _data_of(loop, h) == ASK
    assert loop.stats()["canned"] == 6
    with pytest.raises(BlockingIOError):
        c.recv(10)                                  # nothing answered
    c.close()
    c2.close()


def test_canned_refusals(make):
    loop = make()
    with pytest.raises(TypeError):
        loop.set_canned("GET", ANSWER)              # type: ignore[arg-type]
    with pytest.raises(TypeError):
        loop.set_canned(ASK, bytearray(ANSWER))     # type: ignore[arg-type]
    with pytest.raises(ValueError):
        loop.set_canned(ASK, b"")
    with pytest.raises(ValueError):
        loop.set_canned(ASK, b"x" * 4097)
    with pytest.raises(ValueError):
        loop.set_canned(b"x" * 4097, ANSWER)
    (c, h), = _open_conns(loop, 1)
    loop.close_connection(h, "now")
    loop.canned_mark(h)                             # closed: nothing
    c.close()
    loop.close()
    with pytest.raises(ValueError):
        loop.set_canned(None)
    with pytest.raises(ValueError):
        loop.canned_mark(h)


# -- wait_batch_echo: data-only batches echoed without returning ----------------


def _echo_msg(i: int) -> bytes:
    """Round i's 64 B of a round-trip client: a different byte each round,
    so an answer out of order or from the wrong round shows."""
    return bytes([i % 251]) * 64


# With wake_on_signals on, the C loop repeats the runs itself (no GIL
# between them, pe_loop_run_batch_repeat); off, the binding does.
SIGWAKE = [pytest.param(False, id="sigwake-off"),
           pytest.param(True, id="sigwake-on")]


@pytest.mark.parametrize("sigwake", SIGWAKE)
def test_wait_batch_echo_answers_round_trips_in_one_call(loop_path, sigwake):
    loop = Loop()
    try:
        if sigwake:
            loop.wake_on_signals()
        [(c, h)] = _open_conns(loop, 1)
        before = loop.stats()
        rt = RoundTrips(c, _echo_msg, rounds=300)
        rt.start()
        # Every round trip is a batch of one DATA: all are echoed inside
        # this one call, which returns with the client's EOF.
        batch = list(loop.wait_batch_echo(10))
        rt.join(10)
        assert rt.error is None and rt.done == 300
        assert [(k, hh) for k, hh, _, _ in batch] == [(EV_EOF, h)]
        st = loop.stats()
        assert st["bytes_out"] - before["bytes_out"] == 300 * 64
        assert st["events"] - before["events"] == 301
        c.close()
    finally:
        loop.close()


@pytest.mark.parametrize("sigwake", SIGWAKE)
def test_wait_batch_echo_returns_mixed_batches_unanswered(loop_path, sigwake):
    loop = Loop()
    try:
        if sigwake:
            loop.wake_on_signals()
        [(c, h)] = _open_conns(loop, 1)
        c.sendall(b"ping")
        loop.wakeup()
        time.sleep(0.1)             # both ready before the wait
        batch = list(loop.wait_batch_echo(5))
        assert sorted(k for k, *_ in batch) == sorted([EV_DATA, EV_WAKEUP])
        [(_, _, arg, off)] = [e for e in batch if e[0] == EV_DATA]
        assert bytes(loop.batch_view[off:off + arg]) == b"ping"
        assert list(loop.wait_batch(0.05)) == []
        with pytest.raises(BlockingIOError):
            c.recv(10)              # not echoed: the caller decides
        c.sendall(b"again")         # a data-only batch: echoed in the call
        assert list(loop.wait_batch_echo(0.3)) == []
        c.settimeout(5)
        assert c.recv(10) == b"again"
        c.close()
    finally:
        loop.close()


def test_wait_batch_echo_poll_returns_data_as_is(loop_path):
    loop = Loop()
    try:
        [(c, h)] = _open_conns(loop, 1)
        assert list(loop.wait_batch_echo(0)) == []
        c.sendall(b"abc")
        deadline = time.monotonic() + 5
        batch: List[Tuple[int, int, int, int]] = []
        while not batch:
            assert time.monotonic() < deadline
            batch = list(loop.wait_batch_echo(0))
        assert [(k, hh, a) for k, hh, a, _ in batch] == [(EV_DATA, h, 3)]
        time.sleep(0.05)
        with pytest.raises(BlockingIOError):
            c.recv(10)
        c.close()
    finally:
        loop.close()


@pytest.mark.parametrize("sigwake", SIGWAKE)
def test_wait_batch_echo_keeps_its_timeout_while_echoing(loop_path, sigwake):
    loop = Loop()
    try:
        if sigwake:
            loop.wake_on_signals()
        [(c, h)] = _open_conns(loop, 1)
        assert list(loop.wait_batch_echo(0.05)) == []       # nothing came
        rt = RoundTrips(c, _echo_msg, rounds=10**6)
        rt.start()
        waits = 0
        start = time.monotonic()
        # Round trips never stop: each call still ends at its timeout, with
        # nothing or a data-only batch that came when the time was up.
        while time.monotonic() - start < 0.6:
            t0 = time.monotonic()
            batch = list(loop.wait_batch_echo(0.1))
            assert time.monotonic() - t0 < 0.09 + 0.4, "went past its timeout"
            assert all(k == EV_DATA for k, *_ in batch)
            for _, hh, _, _ in batch:
                loop.queue_echo(hh)
            waits += 1
        assert 3 <= waits
        assert rt.done > 10 and rt.is_alive() and rt.error is None
        rt.finish()
    finally:
        loop.close()


def test_wait_batch_echo_arguments(loop_path):
    loop = Loop()
    try:
        loop.listen()
        assert list(loop.wait_batch_echo(timeout=0.01)) == []
        with pytest.raises(TypeError):
            loop.wait_batch_echo("1")
        with pytest.raises(TypeError):
            loop.wait_batch_echo(0, 1)
        with pytest.raises(ValueError):
            loop.wait_batch_echo(float("nan"))
        loop.wakeup()
        assert [k for k, *_ in loop.wait_batch_echo(-1)] == [EV_WAKEUP]
    finally:
        loop.close()


def test_wait_batch_echo_sends_echoes_queued_before(loop_path):
    loop = Loop()
    try:
        [(c, h)] = _open_conns(loop, 1)
        c.sendall(b"first")
        deadline = time.monotonic() + 5
        while not any(k == EV_DATA for k, *_ in loop.wait_batch(0.01)):
            assert time.monotonic() < deadline
        loop.queue_echo(h)
        assert list(loop.wait_batch_echo(0.05)) == []
        c.settimeout(5)
        assert c.recv(10) == b"first"
        c.close()
    finally:
        loop.close()


def test_wait_batch_echo_signals_between_waits(loop_path):
    """Handlers run while the round trips keep the call busy: one that
    wakes the loop ends the call with EV_WAKEUP (the server's stop), one
    that raises ends it with its exception, and no echo is lost."""
    loop = Loop()
    seen: List[int] = []
    mode = ["wake"]

    class Stop(Exception):
        pass

    def handler(signum, frame):
        seen.append(signum)
        if mode[0] == "wake":
            loop.wakeup()
        else:
            raise Stop

    old = signal.signal(signal.SIGUSR1, handler)
    kicker: Optional[threading.Thread] = None
    try:
        [(c, h)] = _open_conns(loop, 1)
        rt = RoundTrips(c, _echo_msg, rounds=10**6)
        rt.start()
        main = threading.get_ident()

        def kick():
            time.sleep(0.3)
            signal.pthread_kill(main, signal.SIGUSR1)

        for m in ("wake", "raise"):
            mode[0] = m
            seen.clear()
            kicker = threading.Thread(target=kick)
            kicker.start()
            start = time.monotonic()
            done = rt.done
            try:
                woken = False
                while not woken:
                    for kind, hh, _, _ in loop.wait_batch_echo(10):
                        if kind == EV_DATA:     # beside the wakeup
                            loop.queue_echo(hh)
                        woken |= kind == EV_WAKEUP
            except Stop:
                assert m == "raise"
            else:
                assert m == "wake"
            kicker.join(5)
            assert seen == [signal.SIGUSR1]
            assert time.monotonic() - start < 5
            assert rt.done > done
        # In C, whatever the raise interrupted still goes out: the round
        # trips go on once the loop waits again.  (In Python a handler may
        # raise anywhere, in this test's loop too, and lose what is in hand.)
        done = rt.done
        deadline = time.monotonic() + 5
        while loop_path == "c" and rt.done < done + 50:
            assert time.monotonic() < deadline, "an echo was lost"
            for kind, hh, _, _ in loop.wait_batch_echo(0.05):
                if kind == EV_DATA:
                    loop.queue_echo(hh)
        assert rt.error is None
        rt.finish()
    finally:
        if kicker is not None:
            kicker.join(5)
        signal.signal(signal.SIGUSR1, old)
        loop.close()


def test_wait_batch_echo_close_from_another_thread(loop_path):
    loop = Loop()
    [(c, h)] = _open_conns(loop, 1)
    rt = RoundTrips(c, _echo_msg, rounds=10**6)
    rt.start()
    wait_echo = loop.wait_batch_echo
    out: List[object] = []
    t = threading.Thread(target=lambda: out.append(list(wait_echo(5))))
    t.start()
    time.sleep(0.3)
    loop.close()
    t.join(5)
    assert not t.is_alive() and len(out) == 1
    with pytest.raises(ValueError, match="closed loop"):
        wait_echo(0)
    rt.finish()


def test_wait_batch_echo_signal_keeps_the_deadline(loop_path):
    # A handler that returns during the blocking wait: the wait goes on
    # (PEP 475) to the call's own deadline, not a fresh one.
    loop = Loop()
    loop.batch_view
    seen: List[int] = []
    old = signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
    main = threading.get_ident()
    kicker = threading.Thread(
        target=lambda: (time.sleep(0.2),
                        signal.pthread_kill(main, signal.SIGUSR1)))
    try:
        kicker.start()
        start = time.monotonic()
        assert list(loop.wait_batch_echo(0.4)) == []
        assert 0.39 < time.monotonic() - start < 0.55 + 1.0
        assert seen == [signal.SIGUSR1]
    finally:
        kicker.join(5)
        signal.signal(signal.SIGUSR1, old)
        loop.close()

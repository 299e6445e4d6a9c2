"""Random connection histories against a model, over real loopback sockets.

A Hypothesis state machine opens clients, sends, reads, half-closes,
closes and resets them, and makes the server send and close, against an
echo server on pyepoll.Loop.  The model holds, per connection, the bytes the
client must still receive and whether each side is open.  After every step:
bytes arrive exactly and in order, each opened connection is closed at most
once (exactly once when the model says it is gone), stale handles are
refused, and the loop's counters agree with the model.
"""
from __future__ import annotations

import errno
import random
import socket
import struct
import time
from typing import Dict, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from pyepoll import (
    EV_CLOSED,
    EV_DATA,
    EV_EOF,
    EV_OPEN,
    Loop,
    StaleHandleError,
)

from conftest import BACKENDS, OVER_LIBKQUEUE

pytestmark = pytest.mark.timeout(600)

CONFIGS: List[Tuple[str, str]] = []
for _b in BACKENDS:
    CONFIGS.append((_b, "level"))
    if _b in ("epoll", "kqueue"):
        CONFIGS.append((_b, "edge"))

RESET_ERRNOS = (errno.ECONNRESET, errno.EPIPE)

# Payloads: mostly small and random, sometimes large windows into a fixed
# pattern (large enough to fill socket buffers and cross input_high).
_PATTERN = random.Random(4).randbytes(1 << 19)
PAYLOADS = st.one_of(
    st.binary(min_size=1, max_size=2000),
    st.tuples(st.integers(0, 1 << 18), st.integers(1, 1 << 18)).map(
        lambda t: _PATTERN[t[0]:t[0] + t[1]]),
)
STEP_TIMEOUT = 10.0


class Conn:
    """The model of one connection."""

    def __init__(self, sock: socket.socket, handle: int) -> None:
        self.sock = sock
        self.handle = handle
        self.expect = bytearray()     # bytes the client has yet to receive
        self.client_shut = False      # client did shutdown(SHUT_WR)
        self.gone = False             # closed on both sides; handle stale


class LoopMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop: Optional[Loop] = None
        self.conns: List[Conn] = []
        self.peers: Dict[Tuple[str, int], int] = {}
        self.closed: Dict[int, int] = {}
        self.eof: set = set()
        self.opened = 0
        self.sent = 0                 # bytes all clients sent
        self.backend = self.trigger = ""

    def libkqueue_breaks(self, what: str) -> bool:
        """Whether on kqueue over libkqueue a rule would check where
        libkqueue differs from the kernels (tests/libkqueue/), so that it
        is not drawn there: "reset", its read event clears the socket's
        error (repro_reset_error.c); "eof", in edge mode a write filter
        makes read events lose EV_EOF (repro_rdhup_lost.c)."""
        if not (OVER_LIBKQUEUE and self.backend == "kqueue"):
            return False
        return what == "reset" or self.trigger == "edge"

    # -- the server: an echo on the loop ------------------------------------------

    @initialize(cfg=st.sampled_from(CONFIGS),
                input_high=st.sampled_from([4096, 65536]),
                initial=st.integers(1, 3),
                style=st.sampled_from(["recv", "reply", "queue"]))
    def start(self, cfg: Tuple[str, str], input_high: int,
              initial: int, style: str) -> None:
        # The echo is made three ways: wait + recv + send, or wait_batch
        # (DATA brings its bytes) + reply, or wait_batch + queue_echo.
        self.style = style
        backend, trigger = cfg
        self.backend, self.trigger = cfg
        self.loop = Loop(backend=backend, trigger=trigger,
                         input_high=input_high, input_low=input_high // 4)
        self.lid = self.loop.listen("127.0.0.1", 0)
        self.addr = self.loop.sockname(self.lid)
        for _ in range(initial):       # so that every rule can run at once
            self.open()

    def step(self, timeout: float = 0.002) -> None:
        loop = self.loop
        if self.style == "recv":
            events = [(k, h, a, 0) for k, h, a in loop.wait(timeout)]
        else:
            events = loop.wait_batch(timeout)
        for kind, h, arg, off in events:
            if kind == EV_OPEN:
                assert arg == self.lid
                self.opened += 1
                try:
                    self.peers[loop.peer(h)] = h
                except StaleHandleError:
                    pass
            elif kind == EV_DATA:
                assert h not in self.closed
                try:
                    if self.style == "recv":
                        data = loop.recv(h)
                        assert len(data) == arg
                        loop.send(h, data)
                    elif self.style == "reply":
                        loop.reply(h, off, arg)
                    else:
                        loop.queue_echo(h)
                except ConnectionError:
                    pass
            elif kind == EV_EOF:
                assert h not in self.eof, "EOF twice"
                self.eof.add(h)
            elif kind == EV_CLOSED:
                assert h not in self.closed, "CLOSED twice"
                self.closed[h] = arg

    def pump(self, cond, what: str) -> None:
        deadline = time.monotonic() + STEP_TIMEOUT
        while not cond():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            self.step()

    def drain(self, c: Conn) -> None:
        """Read everything the model says the client is owed, exactly."""
        got = bytearray()
        want = len(c.expect)
        deadline = time.monotonic() + STEP_TIMEOUT
        while len(got) < want:
            try:
                chunk = c.sock.recv(want - len(got))
            except BlockingIOError:
                chunk = None
            assert chunk != b"", f"EOF after {len(got)} of {want} bytes"
            if chunk:
                got += chunk
                continue
            assert time.monotonic() < deadline, f"got {len(got)} of {want}"
            self.step()
        assert got == c.expect
        c.expect.clear()

    def live(self) -> List[Conn]:
        return [c for c in self.conns if not c.gone]

    # -- rules -------------------------------------------------------------------

    @precondition(lambda self: len(self.live()) < 8)
    @rule()
    def open(self) -> None:
        s = socket.create_connection(self.addr, timeout=5)
        s.setblocking(False)
        name = s.getsockname()
        self.pump(lambda: name in self.peers, "OPEN")
        self.conns.append(Conn(s, self.peers[name]))

    @precondition(lambda self: any(not c.client_shut for c in self.live()))
    @rule(data=st.data(), payload=PAYLOADS)
    def client_send(self, data, payload: bytes) -> None:
        c = data.draw(st.sampled_from(
            [c for c in self.live() if not c.client_shut]))
        view = memoryview(payload)
        deadline = time.monotonic() + STEP_TIMEOUT
        while view:
            try:
                view = view[c.sock.send(view):]
            except BlockingIOError:
                assert time.monotonic() < deadline
                self.step()
        c.expect += payload
        # Wait for the echo to be queued, so that it is ordered before any
        # later server_send in the model.
        self.sent += len(payload)
        self.pump(lambda: self.loop.stats()["bytes_in"] == self.sent, "read")

    @precondition(lambda self: bool(self.live()))
    @rule(data=st.data())
    def client_recv(self, data) -> None:
        self.drain(data.draw(st.sampled_from(self.live())))

    @precondition(lambda self: bool(self.live()))
    @rule(data=st.data(), payload=PAYLOADS)
    def server_send(self, data, payload: bytes) -> None:
        c = data.draw(st.sampled_from(self.live()))
        self.loop.send(c.handle, payload)
        c.expect += payload

    @precondition(lambda self: any(not c.client_shut for c in self.live())
                  and not self.libkqueue_breaks("eof"))
    @rule(data=st.data())
    def client_half_close(self, data) -> None:
        c = data.draw(st.sampled_from(
            [c for c in self.live() if not c.client_shut]))
        c.sock.shutdown(socket.SHUT_WR)
        c.client_shut = True
        self.pump(lambda: c.handle in self.eof, "EOF")
        assert c.handle not in self.closed, "half-close closed the connection"

    @precondition(lambda self: bool(self.live())
                  and not self.libkqueue_breaks("eof"))
    @rule(data=st.data())
    def client_close(self, data) -> None:
        c = data.draw(st.sampled_from(self.live()))
        self.drain(c)                  # unread bytes would turn FIN into RST
        c.sock.close()
        self.pump(lambda: c.handle in self.eof, "EOF")
        self.loop.close_connection(c.handle)
        self.pump(lambda: c.handle in self.closed, "CLOSED")
        assert self.closed[c.handle] == 0
        c.gone = True

    @precondition(lambda self: any(not c.client_shut for c in self.live())
                  and not self.libkqueue_breaks("reset"))
    @rule(data=st.data())
    def client_reset(self, data) -> None:
        c = data.draw(st.sampled_from(
            [c for c in self.live() if not c.client_shut]))
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                          struct.pack("ii", 1, 0))
        c.sock.close()
        self.pump(lambda: c.handle in self.closed, "CLOSED after RST")
        assert self.closed[c.handle] in RESET_ERRNOS
        c.gone = True

    @precondition(lambda self: bool(self.live()))
    @rule(data=st.data(), tail=st.one_of(st.just(b""), PAYLOADS))
    def server_close(self, data, tail: bytes) -> None:
        c = data.draw(st.sampled_from(self.live()))
        self.drain(c)                  # the server has read all there is
        if tail:
            self.loop.send(c.handle, tail)
            c.expect += tail
        self.loop.close_connection(c.handle, "flush")
        with pytest.raises(StaleHandleError):
            self.loop.buffered(c.handle)
        self.drain(c)                  # queued output still arrives...
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:                    # ...and then EOF
            try:
                chunk = c.sock.recv(100)
            except BlockingIOError:
                chunk = None
            if chunk == b"":
                break
            assert not chunk, f"bytes after the model's end: {chunk!r}"
            assert time.monotonic() < deadline, "no EOF after server close"
            self.step()
        self.pump(lambda: c.handle in self.closed, "CLOSED")
        assert self.closed[c.handle] == 0
        c.sock.close()
        c.gone = True

    @precondition(lambda self: any(c.gone for c in self.conns))
    @rule(data=st.data())
    def stale_handle(self, data) -> None:
        c = data.draw(st.sampled_from([c for c in self.conns if c.gone]))
        with pytest.raises(StaleHandleError):
            self.loop.send(c.handle, b"must not arrive anywhere")
        with pytest.raises(StaleHandleError):
            self.loop.recv(c.handle)
        # Closing what is closed is a no-op, and touches no other
        # connection (the invariants and later rules check the rest).
        self.loop.close_connection(c.handle, "abort")
        self.loop.pause_reading(c.handle)

    # -- invariants ----------------------------------------------------------------

    @invariant()
    def counters_agree(self) -> None:
        if self.loop is None:
            return
        st_ = self.loop.stats()
        assert st_["accepted"] == self.opened == len(self.conns)
        assert st_["conns_open"] == len(self.live())
        assert st_["closed"] == len(self.conns) - len(self.live())
        gone = {c.handle for c in self.conns if c.gone}
        assert set(self.closed) == gone

    def teardown(self) -> None:
        for c in self.conns:
            if not c.gone:
                c.sock.close()
        if self.loop is not None:
            self.loop.close()


LoopMachine.TestCase.settings = settings(
    max_examples=30, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow,
                           HealthCheck.filter_too_much])
test_loop_state_machine = LoopMachine.TestCase


# -------------------------------------------------------- canned answers

_ASK = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
# A piece of the client's stream: a run of asks, other bytes, or a cut ask.
_PIECES = st.one_of(
    st.integers(1, 70).map(lambda k: _ASK * k),
    st.binary(min_size=1, max_size=300),
    st.integers(1, len(_ASK) - 1).map(lambda n: _ASK[:n]),
    st.integers(1, len(_ASK) - 1).map(lambda n: _ASK[n:]),
)


def _decode(got: bytes) -> Tuple[bytes, bytes]:
    """The client's view turned back into what it sent: each canned answer
    stands for one ask, each b"D" + length + bytes for those bytes.
    Returns (decoded, undecoded tail)."""
    out, i = [], 0
    while i < len(got):
        if got.startswith(_ANSWER, i):
            out.append(_ASK)
            i += len(_ANSWER)
        elif got[i:i + 1] == b"D" and len(got) >= i + 5:
            n = struct.unpack_from("!I", got, i + 1)[0]
            if len(got) < i + 5 + n:
                break
            out.append(got[i + 5:i + 5 + n])
            i += 5 + n
        else:
            break
    return b"".join(out), got[i:]


@pytest.mark.parametrize("backend,trigger", CONFIGS)
def test_canned_answers_keep_the_stream(backend: str, trigger: str) -> None:
    """Whatever mix of ask runs, other bytes and cut asks a client sends,
    in whatever reads they arrive: every ask answered in C and every DATA
    (echoed here, length-prefixed, and the connection marked again, as a
    server does) come back in the order sent, nothing lost or repeated."""
    loop = Loop(backend=backend, trigger=trigger)
    try:
        lid = loop.listen("127.0.0.1", 0)

        @settings(max_examples=30, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(st.lists(_PIECES, min_size=1, max_size=12))
        def check(pieces: List[bytes]) -> None:
            c = socket.create_connection(loop.sockname(lid), timeout=5)
            c.setblocking(False)
            h = None
            deadline = time.monotonic() + STEP_TIMEOUT
            while h is None:
                assert time.monotonic() < deadline, "no OPEN"
                for kind, eh, _, _ in loop.wait_batch(0.01):
                    if kind == EV_OPEN:
                        h = eh
            loop.set_canned(_ASK, _ANSWER, time.time() + 3600)
            loop.canned_mark(h)
            sent = b"".join(pieces)
            got = b""

            def step(timeout: float) -> None:
                nonlocal got
                for kind, eh, arg, off in loop.wait_batch(timeout):
                    if kind == EV_DATA and eh == h:
                        data = bytes(loop.batch_view[off:off + arg])
                        loop.send(h, b"D" + struct.pack("!I", len(data))
                                  + data)
                        loop.canned_mark(h)
                try:
                    while True:
                        got += c.recv(65536)
                except BlockingIOError:
                    pass

            for piece in pieces:
                c.sendall(piece)
                step(0.0)
            while _decode(got)[0] != sent:
                decoded, tail = _decode(got)
                assert sent.startswith(decoded), (decoded[-80:], tail[:80])
                assert time.monotonic() < deadline, "stream incomplete"
                step(0.01)
            assert _decode(got) == (sent, b"")
            c.close()
            deadline = time.monotonic() + STEP_TIMEOUT
            while loop.stats()["conns_open"]:
                assert time.monotonic() < deadline, "no CLOSED"
                for kind, eh, _, _ in loop.wait_batch(0.01):
                    if kind == EV_EOF:
                        loop.close_connection(eh)

        check()
        assert loop.stats()["canned"] > 0       # C answered some of it
    finally:
        loop.close()

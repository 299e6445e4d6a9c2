"""Loop.serve: the loop calling a Python handler per message.

Every test runs on both Loop paths (conftest.loop_path: the loop in C,
LoopCalls.serve, and the Python one), and the byte-exact ones on every
backend and trigger."""
from __future__ import annotations

import logging
import signal
import socket
import struct
import threading
import time
from typing import Dict, List, Tuple

import pytest

from pyepoll import (EV_CLOSED, EV_DATA, EV_EOF, EV_OPEN, EV_WAKEUP, Loop)
from conftest import BACKENDS

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("loop_path")]

CONFIGS = [(b, t) for b in BACKENDS
           for t in (("level", "edge") if b in ("epoll", "kqueue")
                     else ("level",))]


@pytest.fixture
def loop():
    lp = Loop()
    yield lp
    lp.close()


def connect(loop: Loop) -> Tuple[socket.socket, Tuple[str, int]]:
    addr = loop.sockname(loop.listen())
    return socket.create_connection(addr, timeout=5), addr


def read_exactly(c: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        part = c.recv(n - len(got))
        if not part:
            break
        got += part
    return got


def serve_in_thread(loop: Loop, *args, **kw) -> Tuple[threading.Thread, Dict]:
    """serve() in a thread (signals aside, a handler runs there); the dict
    gets "error" if serve raised, and "returned" when it returned."""
    out: Dict = {}

    def run() -> None:
        try:
            loop.serve(*args, **kw)
            out["returned"] = True
        except BaseException as exc:   # noqa: BLE001 - reported to the test
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


@pytest.mark.parametrize("backend,trigger", CONFIGS)
def test_replies_are_what_the_handler_returns_byte_exact(backend, trigger):
    loop = Loop(backend=backend, trigger=trigger, input_high=4096,
                input_low=1024)
    seen: List[int] = []

    def on_data(h: int, data: bytes) -> bytes:
        assert type(data) is bytes and data
        seen.append(len(data))
        return data.swapcase()

    try:
        addr = loop.sockname(loop.listen())
        t, out = serve_in_thread(loop, on_data)
        clients = [socket.create_connection(addr, timeout=5)
                   for _ in range(3)]
        # Messages of 1 byte to 200 KiB: past input_high the handler gets
        # them in parts, in order, and every byte comes back once.
        for i, size in enumerate((1, 700, 4096, 65537, 200 * 1024)):
            for j, c in enumerate(clients):
                msg = bytes((k * 7 + i + j) % 256 for k in range(size))
                msg = msg.replace(b"\0", b"a")
                sender = threading.Thread(target=c.sendall, args=(msg,))
                sender.start()
                assert read_exactly(c, size) == msg.swapcase()
                sender.join()
        for c in clients:
            c.close()
        assert sum(seen) == 3 * (1 + 700 + 4096 + 65537 + 200 * 1024)
        loop.stop()
        t.join(10)
        assert out == {"returned": True}
    finally:
        loop.close()


def test_none_sends_nothing_and_bytes_likes_are_sent(loop):
    replies = {b"none": None, b"ba": bytearray(b"BA"), b"mv": memoryview(b"MV"),
               b"empty": b""}

    def on_data(h: int, data: bytes):
        return replies.get(data, data)

    c, _ = connect(loop)
    t, out = serve_in_thread(loop, on_data)
    for ask, want in ((b"none", None), (b"ba", b"BA"), (b"mv", b"MV"),
                      (b"empty", None), (b"x", b"x")):
        c.sendall(ask)
        if want is None:
            c.settimeout(0.2)
            with pytest.raises(socket.timeout):
                c.recv(10)
            c.settimeout(5)
        else:
            assert read_exactly(c, len(want)) == want
    loop.stop()
    t.join(10)
    assert out == {"returned": True}
    c.close()


def test_eof_closes_the_connection_without_on_event(loop):
    c, _ = connect(loop)
    t, out = serve_in_thread(loop, lambda h, d: d)
    c.sendall(b"last words")
    c.shutdown(socket.SHUT_WR)
    # The reply, then the close (flush: queued output goes first).
    assert read_exactly(c, 100) == b"last words"
    assert c.recv(10) == b""
    loop.stop()
    t.join(10)
    assert out == {"returned": True}
    assert loop.stats()["conns_open"] == 0
    c.close()


def test_on_event_gets_every_other_event_and_owns_eof(loop):
    events: List[Tuple[int, int, int]] = []
    closed = threading.Event()

    def on_event(kind: int, h: int, arg: int) -> None:
        events.append((kind, h, arg))
        if kind == EV_EOF:
            loop.send(h, b"bye")
            loop.close_connection(h)
        elif kind == EV_CLOSED:
            closed.set()

    c, _ = connect(loop)
    t, out = serve_in_thread(loop, lambda h, d: d.upper(), on_event)
    c.sendall(b"hi")
    assert read_exactly(c, 2) == b"HI"
    c.shutdown(socket.SHUT_WR)
    assert read_exactly(c, 10) == b"bye"
    assert closed.wait(5)
    loop.stop()
    t.join(10)
    assert out == {"returned": True}
    kinds = [k for k, _, _ in events]
    assert kinds[0] == EV_OPEN and EV_EOF in kinds and EV_CLOSED in kinds
    assert EV_DATA not in kinds         # data went to on_data
    assert kinds[-1] == EV_WAKEUP       # stop() woke it
    h = events[0][1]
    assert all(eh == h for k, eh, _ in events if k != EV_WAKEUP)
    c.close()


def test_a_failing_handler_is_logged_its_connection_aborted_others_served(
        loop, caplog):
    def on_data(h: int, data: bytes):
        if data == b"boom":
            raise ValueError("handler bug")
        if data == b"str":
            return "not bytes"          # send() refuses it: TypeError
        return data

    addr = loop.sockname(loop.listen())
    good = socket.create_connection(addr, timeout=5)
    t, out = serve_in_thread(loop, on_data)
    for bad_msg, exc_type in ((b"boom", ValueError), (b"str", TypeError)):
        caplog.clear()
        bad = socket.create_connection(addr, timeout=5)
        bad.sendall(bad_msg)
        try:
            assert bad.recv(10) == b""  # aborted: RST or EOF, no reply
        except ConnectionResetError:
            pass
        bad.close()
        # The server goes on with the other client.
        good.sendall(b"still there")
        assert read_exactly(good, 11) == b"still there"
        records = [r for r in caplog.records if r.name == "pyepoll.loop"]
        assert len(records) == 1, records
        assert records[0].levelno == logging.ERROR
        assert records[0].exc_info[0] is exc_type
    loop.stop()
    t.join(10)
    assert out == {"returned": True}
    good.close()


def test_a_failing_on_event_is_logged_and_serving_goes_on(loop, caplog):
    opened = []

    def on_event(kind: int, h: int, arg: int) -> None:
        if kind == EV_OPEN:
            opened.append(h)
            if len(opened) == 1:
                raise RuntimeError("on_event bug")

    addr = loop.sockname(loop.listen())
    t, out = serve_in_thread(loop, lambda h, d: d, on_event)
    # Aborted at its OPEN: the reset may even beat connect()'s return.
    try:
        with socket.create_connection(addr, timeout=5) as first:
            assert first.recv(10) == b""
    except ConnectionResetError:
        pass
    assert any(r.exc_info and r.exc_info[0] is RuntimeError
               for r in caplog.records if r.name == "pyepoll.loop")
    with socket.create_connection(addr, timeout=5) as second:
        second.sendall(b"served")
        assert read_exactly(second, 6) == b"served"
    loop.stop()
    t.join(10)
    assert out == {"returned": True}


def _two_in_one_batch(loop: Loop) -> Tuple[List[socket.socket], List[int]]:
    """Two connections whose messages are both unread, so that the next
    run reports them in one batch."""
    addr = loop.sockname(loop.listen())
    socks = [socket.create_connection(addr, timeout=5) for _ in range(2)]
    handles: List[int] = []
    deadline = time.monotonic() + 5
    while len(handles) < 2:
        assert time.monotonic() < deadline
        handles += [h for kind, h, _ in loop.wait(0.05) if kind == EV_OPEN]
    for i, s in enumerate(socks):
        s.sendall(b"msg%d" % i)
    time.sleep(0.1)                     # both on the server's side
    return socks, handles


def test_keyboard_interrupt_in_a_handler_ends_serve_and_loses_nothing(loop):
    socks, handles = _two_in_one_batch(loop)
    got: List[Tuple[int, bytes]] = []

    def on_data(h: int, data: bytes):
        got.append((h, data))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        loop.serve(on_data)
    assert len(got) == 1
    # The other message's event comes with the next wait, its bytes unread.
    rest = [(k, h) for k, h, _ in loop.wait(0) if k == EV_DATA]
    (other,) = {h for h in handles if h != got[0][0]}
    assert rest == [(EV_DATA, other)]
    assert loop.recv(other) == b"msg%d" % handles.index(other)
    for s in socks:
        s.close()


def test_a_signal_handler_that_raises_ends_serve(loop):
    class Stop(Exception):
        pass

    def handler(signum, frame):
        raise Stop

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        t0 = time.monotonic()
        with pytest.raises(Stop):
            loop.serve(lambda h, d: d)
        assert time.monotonic() - t0 < 5
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    # The loop is usable afterwards.
    c, _ = connect(loop)
    t, out = serve_in_thread(loop, lambda h, d: d)
    c.sendall(b"after")
    assert read_exactly(c, 5) == b"after"
    loop.stop()
    t.join(10)
    c.close()


def test_timeout_stop_and_stop_before_serve(loop):
    t0 = time.monotonic()
    loop.serve(lambda h, d: d, timeout=0.2)
    took = time.monotonic() - t0
    assert 0.19 <= took < 3
    t0 = time.monotonic()
    loop.serve(lambda h, d: d, timeout=0)       # one poll
    assert time.monotonic() - t0 < 1
    # stop() before serve(): serve handles its first batch (the wakeup
    # at least) and returns.
    loop.stop()
    t0 = time.monotonic()
    loop.serve(lambda h, d: d)
    assert time.monotonic() - t0 < 3
    # stop() from another thread ends a blocked serve.
    timer = threading.Timer(0.2, loop.stop)
    timer.start()
    t0 = time.monotonic()
    loop.serve(lambda h, d: d)
    assert 0.15 <= time.monotonic() - t0 < 5
    timer.join()


def test_stop_from_a_handler_ends_serve_after_its_batch(loop):
    c, _ = connect(loop)

    def on_data(h: int, data: bytes) -> bytes:
        loop.stop()
        return data

    c.sendall(b"one")
    loop.serve(on_data, timeout=10)
    assert read_exactly(c, 3) == b"one"
    c.close()


def test_a_handler_closing_the_loop_ends_serve(loop):
    c, _ = connect(loop)

    def on_data(h: int, data: bytes) -> bytes:
        loop.close()
        return data                      # no loop to send it on: dropped

    c.sendall(b"x")
    loop.serve(on_data, timeout=10)
    assert loop.closed
    c.close()


def test_reply_to_a_connection_the_handler_closed_is_dropped(loop, caplog):
    c, _ = connect(loop)

    def on_data(h: int, data: bytes) -> bytes:
        loop.close_connection(h, "now")
        loop.stop()
        return data

    c.sendall(b"x")
    loop.serve(on_data, timeout=10)
    assert c.recv(10) == b""
    assert not [r for r in caplog.records if r.name == "pyepoll.loop"]
    c.close()


def test_serving_goes_on_after_a_handler_queues_an_echo(loop):
    # queue_echo() echoes unread bytes (none here: serve took them); the
    # queued handle must go out before the next wait, as with wait(), and
    # serving go on (on CPython: a turn in Python, then back in C).
    def on_data(h: int, data: bytes):
        if data == b"q":
            loop.queue_echo(h)
            return None
        return data

    c, _ = connect(loop)
    t, out = serve_in_thread(loop, on_data)
    c.sendall(b"q")
    time.sleep(0.1)
    for msg in (b"abc", b"q", b"def"):
        c.sendall(msg)
        if msg != b"q":
            assert read_exactly(c, len(msg)) == msg
        else:
            time.sleep(0.1)
    loop.stop()
    t.join(10)
    assert out == {"returned": True}
    c.settimeout(0.2)
    with pytest.raises(socket.timeout):
        c.recv(10)                      # nothing more was sent
    c.close()


def test_bad_arguments_and_a_closed_loop():
    lp = Loop()
    with pytest.raises(TypeError, match="on_data must be callable"):
        lp.serve(None)
    with pytest.raises(TypeError, match="on_event must be callable"):
        lp.serve(lambda h, d: d, 3)
    with pytest.raises(TypeError):
        lp.serve(lambda h, d: d, timeout="1")
    lp.close()
    with pytest.raises(ValueError, match="closed"):
        lp.serve(lambda h, d: d)
    lp.stop()                           # no error on a closed loop


def test_rst_from_a_client_mid_reply_is_no_error(loop, caplog):
    c, _ = connect(loop)
    t, out = serve_in_thread(loop, lambda h, d: d * 1000)
    c.sendall(b"x" * 1000)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    time.sleep(0.2)
    loop.stop()
    t.join(10)
    assert out == {"returned": True}
    assert not [r for r in caplog.records if r.name == "pyepoll.loop"]


@pytest.mark.parametrize("backend,trigger", CONFIGS)
def test_busy_poll_serves_the_same_and_keeps_timeouts(backend, trigger):
    """busy_poll changes when the loop sleeps, nothing it delivers: echoes
    byte-exact, and a wait or serve with nothing to do still ends at its
    timeout (polling counts towards it), having polled (syscalls) after a
    wait that ended at once."""
    loop = Loop(backend=backend, trigger=trigger, busy_poll=0.005)
    try:
        loop.wakeup()                   # a wait that ends at once: the
        assert loop.wait(5) == [(EV_WAKEUP, 0, 0)]  # next one polls
        s0 = loop.stats()["syscalls"]
        t0 = time.monotonic()
        assert loop.wait(0.05) == []
        assert 0.045 <= time.monotonic() - t0 < 2.0
        assert loop.stats()["syscalls"] - s0 > 2
        t0 = time.monotonic()
        loop.serve(lambda h, d: d, timeout=0.05)
        assert 0.045 <= time.monotonic() - t0 < 2.0
        c, _ = connect(loop)
        t, out = serve_in_thread(loop, lambda h, d: d[::-1])
        with c:
            for i in range(50):
                msg = bytes(range(i % 200 + 1))
                c.sendall(msg)
                assert read_exactly(c, len(msg)) == msg[::-1]
        loop.stop()
        t.join(10)
        assert out == {"returned": True}
    finally:
        loop.close()

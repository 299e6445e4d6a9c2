"""The handler API (your own protocol on pyepoll.server), run as a real
server process: replies, close, blocking work in the pool with replies
from the loop thread in order, and a handler that raises."""
from __future__ import annotations

import signal
import socket
import threading
import time

import pytest

from test_server import (ALL_MODELS, connect, needs_tgkill,  # noqa: F401
                         sigterm_to_another_thread, start_server)

# Every test here finishes by itself well within this.
pytestmark = pytest.mark.timeout(120)

SCRIPT = r'''
import logging, sys, threading, time
from pyepoll.server import Handler, serve

def slow(arg):
    time.sleep(float(arg))
    return b"slept %s in %s" % (arg, threading.current_thread().name.encode())

class Lines(Handler):
    """A line protocol: each command answered on its own line."""
    def on_open(self, conn):
        self.buf = b""
        conn.send(b"hello\n")

    def on_data(self, conn, data):
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        for line in lines:
            cmd, _, arg = line.partition(b" ")
            if cmd == b"boom":
                raise RuntimeError("boom requested")
            elif cmd == b"sleep":
                conn.submit(slow, arg, then=lambda r: conn.send(
                    r + b", replied in %s\n"
                    % threading.current_thread().name.encode()))
            elif cmd == b"quit":
                conn.send(b"bye\n")
                conn.close()
            else:
                conn.send(line.upper() + b"\n")

logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(asctime)s pyepoll-server[%(process)d] "
                           "%(levelname)s: %(message)s")
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
sys.exit(serve(Lines, port=int(args["--port"]), model=args["--model"],
               pool_threads=int(args.get("--pool-threads", "2"))))
'''


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "lines_server.py"
    path.write_text(SCRIPT)
    return str(path)


class Lines:
    def __init__(self, addr):
        self.sock = connect(addr)
        self.f = self.sock.makefile("rb")
        assert self.line() == b"hello"

    def line(self) -> bytes:
        return self.f.readline().rstrip(b"\n")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.f.close()
        self.sock.close()


@pytest.mark.parametrize("model", ALL_MODELS)
def test_reply_and_close(start_server, script, model):
    srv = start_server("--model", model, script=script)
    c = Lines(srv.addr)
    c.send(b"abc\nd")
    assert c.line() == b"ABC"
    c.send(b"ef\nquit\nignored\n")
    assert c.line() == b"DEF"
    assert c.line() == b"bye"
    assert c.f.read() == b""              # closed after "bye"
    c.close()


@pytest.mark.parametrize("model", ALL_MODELS)
def test_pool_replies_in_order_from_the_loop_thread(start_server, script,
                                                    model):
    srv = start_server("--model", model, script=script)
    c = Lines(srv.addr)
    c.send(b"sleep 0.3\nsleep 0.01\nafter\n")
    first, second, third = c.line(), c.line(), c.line()
    assert first.startswith(b"slept 0.3 in ")
    assert second.startswith(b"slept 0.01 in ")
    assert third == b"AFTER"              # reading waited for the jobs
    if model == "eventloop":
        assert b" in pyepoll-pool" in first
        assert first.endswith(b"replied in MainThread")
    c.close()


def test_pool_is_bounded_and_the_loop_stays_responsive(start_server, script):
    srv = start_server("--model", "eventloop", "--pool-threads", "2",
                       script=script)
    clients = [Lines(srv.addr) for _ in range(4)]
    t0 = time.monotonic()
    for c in clients:
        c.send(b"sleep 0.5\n")
    probe = Lines(srv.addr)               # served while the pool is busy
    probe.send(b"ping\n")
    assert probe.line() == b"PING"
    assert time.monotonic() - t0 < 0.4
    for c in clients:
        assert c.line().startswith(b"slept 0.5")
    elapsed = time.monotonic() - t0
    assert 0.95 < elapsed < 2.5           # 4 jobs, 2 threads: two rounds
    for c in clients + [probe]:
        c.close()


@pytest.mark.parametrize("model", ALL_MODELS)
def test_handler_that_raises(start_server, script, model):
    srv = start_server("--model", model, script=script)
    other = Lines(srv.addr)
    bad = Lines(srv.addr)
    bad.send(b"boom\n")
    bad.sock.settimeout(5)
    try:
        assert bad.f.read() == b""        # the connection is closed
    except ConnectionResetError:
        pass
    srv.wait_for(r"ERROR: handler error; closing connection from 127\.0\.0\.1")
    srv.wait_for(r"RuntimeError: boom requested")
    other.send(b"still here\n")           # the server keeps serving
    assert other.line() == b"STILL HERE"
    fresh = Lines(srv.addr)
    fresh.send(b"x\n")
    assert fresh.line() == b"X"
    for c in (other, bad, fresh):
        c.close()
    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0
    srv.wait_for(r"stats \(final\):.* errors=1$")


@needs_tgkill
def test_sigterm_taken_by_a_pool_thread_still_stops(start_server, script):
    """The event-loop model's main thread sleeps in the loop's wait; a
    SIGTERM that a pool worker takes must still wake it and drain."""
    srv = start_server("--model", "eventloop", script=script)
    c = Lines(srv.addr)
    c.send(b"sleep 0\n")                 # a pool thread exists now
    assert c.line().startswith(b"slept 0 in pyepoll-pool")
    assert sigterm_to_another_thread(srv)
    assert srv.wait(timeout=10) == 0
    srv.wait_for(r"stopped by SIGTERM")
    c.close()


@pytest.mark.parametrize("model", ALL_MODELS)
def test_in_process_server_on_a_thread(model):
    """The Python API without a subprocess: serve() on a thread, stop()
    from another; counters readable."""
    from pyepoll.server import Handler, Server

    class Reverse(Handler):
        def on_data(self, conn, data):
            conn.send(data[::-1])

    server = Server(handler=Reverse, port=0, model=model, pool_threads=2)
    result = []
    t = threading.Thread(target=lambda: result.append(server.serve()))
    t.start()
    try:
        assert server.ready.wait(10)
        with socket.create_connection(server.address, timeout=5) as s:
            s.sendall(b"abc")
            assert s.recv(10) == b"cba"
    finally:
        server.stop()
        t.join(15)
    assert result == [0]
    snap = server.snapshot()
    assert snap["accepted"] == 1 and snap["conns"] == 0
    assert snap["bytes_in"] == snap["bytes_out"] == 3

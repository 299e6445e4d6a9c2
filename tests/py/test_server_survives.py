"""Issue 11: no client can stop the server.  Each test is one of the
reproductions that made the event-loop model exit (status 2, "pause_reading:
connection is closed (stale handle)") before the server's calls on closed
connections became no-ops and every event's errors were kept to its own
connection.  Every test ends by checking that the same server process is
still running and answers a fresh client."""
from __future__ import annotations

import socket
import struct
import time

import pytest

from test_server import (ALL_MODELS, HELLO, connect, get, served_again,
                         start_server)  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(120)


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the server sees a reset, not a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                    struct.pack("ii", 1, 0))
    sock.close()


def still_serving(srv, timeout: float = 10.0) -> None:
    assert srv.proc.poll() is None, f"server exited:\n{srv.output()}"
    served_again(srv.addr, timeout)
    assert srv.proc.poll() is None, f"server exited:\n{srv.output()}"


@pytest.mark.parametrize("model", ALL_MODELS)
def test_reset_during_a_large_response(start_server, model):
    """Reproduction 1: POST 1 MiB, read 1 KiB of the echoed body, reset.
    The output crosses the high-water mark (WRITE_FULL), and the reset is
    seen in the same run: the server paused a connection already closed."""
    srv = start_server("--model", model)
    body = b"x" * (1 << 20)
    head = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body)
    for _ in range(40):
        s = connect(srv.addr)
        try:
            s.sendall(head + body)
            s.recv(1024)
        except OSError:
            pass
        reset(s)
        assert srv.proc.poll() is None, f"server exited:\n{srv.output()}"
    still_serving(srv)


@pytest.mark.parametrize("protocol", ["http", "echo"])
def test_active_and_queued_time_out_together(start_server, protocol):
    """Reproduction 2: one connection active, one queued; both idle past
    the timeout in the same run.  The active one's close started the queued
    one, which the loop had closed too."""
    srv = start_server("--protocol", protocol, "--idle-timeout", "1",
                       "--max-connections", "1", "--overflow", "queue")
    for _ in range(2):
        a = connect(srv.addr)
        b = connect(srv.addr)
        time.sleep(2.2)
        assert srv.proc.poll() is None, f"server exited:\n{srv.output()}"
        a.close()
        b.close()
    if protocol == "http":
        still_serving(srv)
    else:
        with connect(srv.addr) as c:
            c.sendall(b"ping")
            assert c.recv(10) == b"ping"
        assert srv.proc.poll() is None


@pytest.mark.parametrize("trigger", ["edge", "level"])
def test_reset_active_then_queued(start_server, trigger):
    """Reproduction 3: reset the active client, then the queued one: the
    queued one was started after the loop had closed it."""
    srv = start_server("--trigger", trigger, "--max-connections", "1",
                       "--overflow", "queue")
    for _ in range(10):
        a = connect(srv.addr)
        b = connect(srv.addr)
        time.sleep(0.05)
        reset(a)
        reset(b)
        time.sleep(0.05)
        assert srv.proc.poll() is None, f"server exited:\n{srv.output()}"
    still_serving(srv)


HANDLER_SCRIPT = """
import logging, sys
from pyepoll.server import Handler, serve

class Flaky(Handler):
    # Raises from every callback that a client can trigger.
    def on_open(self, conn):
        conn.send(b"hi\\n")
    def on_data(self, conn, data):
        if data.startswith(b"boom"):
            raise RuntimeError("handler bug on data")
        conn.send(data)
    def on_eof(self, conn):
        raise RuntimeError("handler bug on eof")
    def on_close(self, conn, error):
        raise RuntimeError("handler bug on close")

logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(asctime)s pyepoll-server[%(process)d] "
                           "%(levelname)s: %(message)s")
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
sys.exit(serve(Flaky, port=int(args["--port"]), model=args["--model"]))
"""


@pytest.mark.parametrize("model", ALL_MODELS)
def test_handler_exceptions_close_only_their_connection(start_server, tmp_path,
                                                        model):
    script = tmp_path / "flaky.py"
    script.write_text(HANDLER_SCRIPT)
    srv = start_server("--model", model, script=str(script))
    keep = connect(srv.addr)
    assert keep.recv(3) == b"hi\n"
    for _ in range(5):
        c = connect(srv.addr)
        assert c.recv(3) == b"hi\n"
        c.sendall(b"boom")
        c.settimeout(5)
        try:
            assert c.recv(10) == b""        # closed (FIN or reset)
        except ConnectionResetError:
            pass
        c.close()
        d = connect(srv.addr)
        assert d.recv(3) == b"hi\n"
        d.shutdown(socket.SHUT_WR)          # on_eof raises
        d.settimeout(5)
        try:
            assert d.recv(10) == b""
        except ConnectionResetError:
            pass
        d.close()
    keep.sendall(b"still there")
    keep.settimeout(5)
    assert keep.recv(20) == b"still there"
    keep.close()
    time.sleep(0.2)
    assert srv.proc.poll() is None, srv.output()
    assert srv.count("handler bug on data") >= 5, srv.output()

"""--log-level debug says what happens to each connection (open, served,
queued or rejected over capacity, HTTP errors with their status, EOF, close
and why); info says nothing per connection.  Every model."""
from __future__ import annotations

import re
import signal
import socket
import time

import pytest

from test_server import (ALL_MODELS, GET, HELLO, Reader, connect,
                         start_server)  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(120)


def _scenario(srv) -> dict:
    """One client of each kind against --max-connections 1 --overflow
    reject --idle-timeout 1; returns each one's "host:port" as the server
    sees it (the server logs after acting, so each step waits for its line
    when ``srv`` logs at debug level, or a moment otherwise)."""
    debug = "--log-level" in srv.args and "debug" in srv.args

    def settle(pattern: str) -> None:
        if debug:
            srv.wait_for(pattern, timeout=10)
        else:
            time.sleep(0.3)

    peers = {}

    def client():
        """A client being served (one that found the slot still taken,
        answered 503 unasked, is retried: a thread model frees the slot
        just after logging the close)."""
        for _ in range(50):
            s = connect(srv.addr)
            s.settimeout(0.2)
            try:
                rejected = s.recv(1, socket.MSG_PEEK)
            except socket.timeout:
                s.settimeout(10)
                host, port = s.getsockname()[:2]
                return s, re.escape(f"{host}:{port}")
            s.close()
            assert rejected
        raise AssertionError("no free slot")

    s, peers["ok"] = client()                    # served, then closes
    s.sendall(GET)
    assert Reader(s).response().body == HELLO
    s.close()
    settle(peers["ok"] + ": closed")
    s, peers["bad"] = client()                   # malformed request: 400
    s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
    r = Reader(s)
    assert r.response().status == 400
    assert r.closed()
    s.close()
    settle(peers["bad"] + ": closed")
    idle, peers["idle"] = client()               # held until the timeout
    settle(peers["idle"] + ": open, served")
    extra = connect(srv.addr)                    # over capacity: 503
    peers["extra"] = re.escape("%s:%d" % extra.getsockname()[:2])
    extra.sendall(GET)
    assert Reader(extra).response().status == 503
    extra.close()
    settle(peers["idle"] + ": closed")
    idle.close()
    return peers


@pytest.mark.parametrize("model", ALL_MODELS)
def test_debug_logging_follows_each_connection(start_server, model):
    srv = start_server("--model", model, "--log-level", "debug",
                       "--max-connections", "1", "--overflow", "reject",
                       "--idle-timeout", "1")
    p = _scenario(srv)
    srv.wait_for(p["ok"] + r": open, served$")
    srv.wait_for(p["ok"] + r": EOF \(the client finished sending\)$")
    srv.wait_for(p["ok"] + r": closed$")
    srv.wait_for(p["bad"] + r": 400 Bad Request sent \(malformed request")
    srv.wait_for(p["bad"] + r": closed\b.* after 400 Bad Request")
    srv.wait_for(p["extra"] + r": open, over --max-connections 1: "
                 r"rejected, 503 sent$")
    srv.wait_for(p["idle"] + r": closed: idle timeout$")
    assert srv.count(r" DEBUG: .*: open, served$") == 3


@pytest.mark.parametrize("model", ALL_MODELS)
def test_info_logging_says_nothing_per_connection(start_server, model):
    srv = start_server("--model", model, "--max-connections", "1",
                       "--overflow", "reject", "--idle-timeout", "1")
    peers = _scenario(srv)
    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0
    out = srv.output()
    assert "stats (final)" in out                # the log was read whole
    assert " DEBUG: " not in out
    for peer in peers.values():
        assert not re.search(peer, out), peer


@pytest.mark.parametrize("model", ALL_MODELS)
def test_http_limits_are_logged(start_server, model):
    """431 (head too large), 413 (body too large) and 408 (request too
    slow) name their cause."""
    srv = start_server("--log-level", "debug", "--model", model,
                       "--idle-timeout", "1")
    s = connect(srv.addr)
    s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX: " + b"a" * 20000 + b"\r\n\r\n")
    assert Reader(s).response().status == 431
    s.close()
    srv.wait_for(r": 431 Request Header Fields Too Large sent \(head over "
                 r"the size or field-count limit\)")
    s = connect(srv.addr)
    s.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999\r\n\r\n")
    assert Reader(s).response().status == 413
    s.close()
    srv.wait_for(r": 413 \S.* sent \(body over the size limit\)")
    s = connect(srv.addr)
    s.sendall(b"GET / HTTP/1.1\r\nHost:")         # never finished
    assert Reader(s).response().status == 408
    s.close()
    srv.wait_for(r": 408 Request Timeout sent \(request not complete "
                 r"within the request timeout\)")

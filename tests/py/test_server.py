"""The reference server, run as a real process and spoken to by real
clients (curl, http.client, raw sockets).  Every model serves the same
HTTP test list.

The harness here (ServerProcess, the ``start_server`` fixture, the small
HTTP response reader) is shared by the other test_server_*.py files.
"""
from __future__ import annotations

import ctypes
import email.utils
import http.client
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Tuple

import pytest

import pyepoll

# Every test here finishes by itself well within this.
pytestmark = pytest.mark.timeout(120)

MODELS = ["eventloop", "threadpool", "threads"]
HELLO = b"Hello, World!\n"
STARTED = re.compile(r"INFO: serving (\S+) on (\S+):(\d+) ")


def loop_available() -> bool:
    try:
        from pyepoll.loop import Loop  # noqa: F401
    except ImportError:
        return False
    return bool([b for b in pyepoll.available_backends() if b])


def model_param(model: str):
    marks = []
    if model == "eventloop" and not loop_available():
        marks.append(pytest.mark.skip(reason="pyepoll.Loop not available"))
    return pytest.param(model, marks=marks, id=model)


ALL_MODELS = [model_param(m) for m in MODELS]


# ------------------------------------------------------------------ harness

class ServerProcess:
    """``python -m pyepoll.server`` in its own session; its log lines are
    collected by a thread so the pipe never fills."""

    def __init__(self, args: List[str], cwd: str,
                 script: Optional[str] = None) -> None:
        # -X faulthandler: a server that will not stop is sent SIGABRT by
        # wait(), and its threads' stacks land in the report.
        if script is not None:
            cmd = [sys.executable, "-X", "faulthandler", script]
        else:
            cmd = [sys.executable, "-X", "faulthandler", "-m", "pyepoll.server"]
        cmd += args
        if "--port" not in args:
            cmd += ["--port", "0"]
        self.args = cmd
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # Run outside the source tree: import the installed package.
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env,
                                     stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.pid = self.proc.pid
        self.lines: List[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port = 0
        self.host = "127.0.0.1"

    def _read(self) -> None:
        for raw in self.proc.stdout:                  # type: ignore[union-attr]
            with self._cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.lines.append("<EOF>")
            self._cond.notify_all()

    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 15.0,
                 start: int = 0) -> re.Match:
        """The first log line from index ``start`` matching ``pattern``."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            i = start
            while True:
                while i < len(self.lines):
                    m = rx.search(self.lines[i])
                    if m:
                        return m
                    if self.lines[i] == "<EOF>":
                        raise AssertionError(
                            f"server exited before {pattern!r}:\n"
                            + "\n".join(self.lines))
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {pattern!r} within {timeout}s:\n"
                                         + "\n".join(self.lines))
                self._cond.wait(left)

    def count(self, pattern: str) -> int:
        rx = re.compile(pattern)
        with self._cond:
            return sum(1 for line in self.lines if rx.search(line))

    def started(self, timeout: float = 15.0) -> "ServerProcess":
        m = self.wait_for(STARTED.pattern, timeout)
        self.host = m.group(2).strip("[]")
        self.port = int(m.group(3))
        return self

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 20.0) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)   # stacks, then it ends
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self._reader.join(5)
            raise AssertionError(
                f"the server was still running {timeout} s on; its log and "
                f"threads:\n" + self.output()[-12000:]) from None
        self._reader.join(5)
        return code

    def kill(self) -> None:
        """Kill the whole session (workers included), by the leader's pid."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        else:
            try:                           # orphaned workers, if any
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.proc.stdout is not None:
            self._reader.join(5)
            self.proc.stdout.close()

    @property
    def addr(self) -> Tuple[str, int]:
        return (self.host, self.port)


@pytest.fixture
def start_server(tmp_path):
    """start_server(*args, script=None) -> a started ServerProcess; all are
    killed at teardown."""
    procs: List[ServerProcess] = []

    def start(*args: str, script: Optional[str] = None,
              wait: bool = True) -> ServerProcess:
        p = ServerProcess(list(args), str(tmp_path), script)
        procs.append(p)
        return p.started() if wait else p

    yield start
    for p in procs:
        p.kill()


# ------------------------------------------------------------------ clients

def connect(addr, timeout: float = 10.0) -> socket.socket:
    s = socket.create_connection(addr, timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


class Response:
    def __init__(self, status: int, headers: Dict[str, str], body: bytes,
                 head: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.head = head

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.headers} {self.body[:60]!r}>"


class Reader:
    """Reads HTTP responses one after another from a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> bool:
        data = self.sock.recv(262144)
        if not data:
            return False
        self.buf += data
        return True

    def response(self, head_only: bool = False) -> Response:
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                break
            if not self._fill():
                raise EOFError(f"closed before a response; got {bytes(self.buf)!r}")
        head = bytes(self.buf[:i])
        del self.buf[:i + 4]
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        n = 0 if head_only or status < 200 else int(headers.get("content-length", "0"))
        while len(self.buf) < n:
            if not self._fill():
                raise EOFError("closed in a body")
        body = bytes(self.buf[:n])
        del self.buf[:n]
        return Response(status, headers, body, head)

    def closed(self, timeout: float = 5.0) -> bool:
        """True if the server closes (EOF or reset) within ``timeout`` with
        nothing more sent."""
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return not self.buf
                self.buf += data
        except (ConnectionResetError, BrokenPipeError):
            return not self.buf
        except socket.timeout:
            return False


def request(addr, raw: bytes, n: int = 1, head_only: bool = False):
    """Send raw bytes on a new connection; read n responses."""
    with connect(addr) as s:
        s.sendall(raw)
        r = Reader(s)
        return [r.response(head_only) for _ in range(n)]


def get(addr, path: str = "/", method: str = "GET", body=None, headers=None):
    c = http.client.HTTPConnection(addr[0], addr[1], timeout=10)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, dict((k.lower(), v) for k, v in r.getheaders()), r.read()
    finally:
        c.close()


GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


def served_again(addr, timeout: float) -> None:
    """Retry a GET until the server answers HELLO again (after a flood, an
    EMFILE spell...); fail with the last error after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            assert get(addr)[2] == HELLO
            return
        except (OSError, AssertionError) as e:
            if time.monotonic() > deadline:
                raise AssertionError(f"not served again within {timeout:g} s: {e!r}") from e
            time.sleep(0.1)


def recovered(addr, timeout: float) -> None:
    """Served again within `timeout` s, and then 20 fresh clients in a row
    answered within 5 s: no backlog of the flood left behind."""
    served_again(addr, timeout)
    t0 = time.monotonic()
    for _ in range(20):
        assert get(addr)[2] == HELLO
    assert time.monotonic() - t0 < 5


def post(body: bytes, extra: bytes = b"") -> bytes:
    return (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n%s\r\n"
            % (len(body), extra)) + body


# ------------------------------------------------------------ shared server

@pytest.fixture(scope="module", params=ALL_MODELS)
def served(request, tmp_path_factory):
    """One HTTP server per model, shared by the tests that leave it as it
    was; (model, ServerProcess)."""
    model = request.param
    p = ServerProcess(["--model", model, "--idle-timeout", "30"],
                      str(tmp_path_factory.mktemp("srv")))
    try:
        p.started()
        yield model, p
    finally:
        p.kill()


# -------------------------------------------------------------------- tests

def test_get_root(served):
    _, srv = served
    status, headers, body = get(srv.addr)
    assert status == 200
    assert body == HELLO
    assert headers["server"].startswith("pyepoll/")
    assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT",
                        headers["date"])
    assert headers["content-length"] == str(len(HELLO))


def test_post_echoes_body(served):
    _, srv = served
    status, headers, body = get(srv.addr, method="POST", body=b"Hello, Server!")
    assert (status, body) == (200, b"Hello, Server!")
    status, _, body = get(srv.addr, method="POST", body=b"")
    assert (status, body) == (200, b"")


def _curl(*args, input=None):
    # curl is not built with the sanitizers the suite may preload.
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args],
                          input=input, capture_output=True, timeout=20,
                          env=env)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl(served):
    _, srv = served
    url = f"http://{srv.host}:{srv.port}/"
    out = _curl(url)
    assert out.returncode == 0, out.stderr
    assert out.stdout == HELLO
    out = _curl("-X", "POST", "--data", "Hello, Server!", url)
    assert out.stdout == b"Hello, Server!"
    # Two URLs: curl reuses the connection (keep-alive) for the second.
    out = _curl("-v", url, url)
    assert out.stdout == HELLO * 2
    assert b"Re-using existing connection" in out.stderr or \
        b"Reusing existing" in out.stderr
    # A body large enough for curl to send "Expect: 100-continue".
    big = os.urandom(300000).hex().encode()[:300000]
    out = _curl("--data-binary", "@-", url, input=big)
    assert out.stdout == big
    out = _curl("-H", "Transfer-Encoding: chunked", "--data-binary", "@-",
                url, input=big)
    assert out.stdout == big


def test_keep_alive_http_client(served):
    _, srv = served
    c = http.client.HTTPConnection(*srv.addr, timeout=10)
    try:
        for i in range(20):
            c.request("POST", "/", body=b"x" * i)
            r = c.getresponse()
            assert (r.status, r.read()) == (200, b"x" * i)
        sock = c.sock
        c.request("GET", "/")
        r = c.getresponse()
        assert r.read() == HELLO
        assert c.sock is sock           # the same connection all along
    finally:
        c.close()


def test_head(served):
    _, srv = served
    with connect(srv.addr) as s:
        s.sendall(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n" + GET)
        r = Reader(s)
        head = r.response(head_only=True)
        assert head.status == 200
        assert head.headers["content-length"] == str(len(HELLO))
        assert head.body == b""
        nxt = r.response()              # directly after HEAD's header block
        assert nxt.body == HELLO


def test_pipelined_in_order(served):
    _, srv = served
    raw = post(b"first") + GET + post(b"third") + post(b"") + GET
    out = request(srv.addr, raw, n=5)
    assert [r.body for r in out] == [b"first", HELLO, b"third", b"", HELLO]
    assert all(r.status == 200 for r in out)


def test_request_in_one_byte_writes(served):
    _, srv = served
    raw = post(b"split body!")
    with connect(srv.addr) as s:
        for i in range(len(raw)):
            s.send(raw[i:i + 1])
            time.sleep(0.001)
        r = Reader(s).response()
    assert (r.status, r.body) == (200, b"split body!")


def test_http10_closes_unless_keep_alive(served):
    _, srv = served
    with connect(srv.addr) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        r = Reader(s)
        resp = r.response()
        assert resp.body == HELLO
        assert resp.headers.get("connection") == "close"
        assert r.closed()
    with connect(srv.addr) as s:
        s.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        r = Reader(s)
        resp = r.response()
        assert resp.headers.get("connection") == "keep-alive"
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert r.response().body == HELLO
        assert r.closed()


def test_connection_close(served):
    _, srv = served
    with connect(srv.addr) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" + GET)
        r = Reader(s)
        resp = r.response()
        assert resp.headers.get("connection") == "close"
        assert r.closed()               # the pipelined GET is not answered


def test_chunked_body(served):
    _, srv = served
    raw = (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n1;ext=1\r\n \r\n6\r\nworld!\r\n0\r\nX-T: 1\r\n\r\n")
    out = request(srv.addr, raw + GET, n=2)
    assert out[0].body == b"hello world!"
    assert out[1].body == HELLO
    with connect(srv.addr) as s:        # framing split at every byte
        for i in range(len(raw)):
            s.send(raw[i:i + 1])
        assert Reader(s).response().body == b"hello world!"


def test_expect_100_continue(served):
    _, srv = served
    with connect(srv.addr) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        r = Reader(s)
        assert r.response().status == 100
        s.sendall(b"body")
        resp = r.response()
        assert (resp.status, resp.body) == (200, b"body")


@pytest.mark.parametrize("raw,status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n", 400),
    (b"GET / HTTP/1.1\nHost: t\n\n", 400),              # bare LF
    (b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 1x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n", 400),       # smuggling shape
    (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    (b"GET / HTTP/2.0\r\n\r\n", 505),
    (b"GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1048577\r\n\r\n", 413),
    (b"GET / HTTP/1.1\r\nHost: t\r\n" + b"X-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: t\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", 431),
    # RFC 9112 3.2: Host missing from 1.1, or repeated (any version).
    (b"GET / HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET / HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nab", 400),
    # No tunnels: CONNECT is never answered 2xx (RFC 9110 9.3.6).
    (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
     405),
])
def test_errors_answered_then_closed(served, raw, status):
    _, srv = served
    with connect(srv.addr) as s:
        s.sendall(raw)
        r = Reader(s)
        resp = r.response()
        assert resp.status == status, resp
        assert resp.headers.get("connection") == "close"
        if status == 405:
            assert resp.headers.get("allow") == "GET, HEAD, POST"
        assert r.closed()


def test_http10_without_host_is_served(served):
    _, srv = served
    resp, = request(srv.addr, b"GET / HTTP/1.0\r\n\r\n")
    assert (resp.status, resp.body) == (200, HELLO)


def test_chunked_body_over_limit_413(served):
    _, srv = served
    with connect(srv.addr) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"10000\r\n" + b"z" * 0x10000 + b"\r\n"
        r = Reader(s)
        try:
            for _ in range(17):         # 17 x 64 KiB > 1 MiB
                s.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert r.response().status == 413


def test_many_pipelined_requests(served):
    """10,000 requests pipelined on one connection, all answered in order."""
    _, srv = served
    n = 10000
    reqs = [GET if i % 3 else post(b"%d" % i) for i in range(n)]
    with connect(srv.addr, timeout=30) as s:
        sender = threading.Thread(target=s.sendall, args=(b"".join(reqs),))
        sender.start()
        r = Reader(s)
        for i in range(n):
            resp = r.response()
            assert resp.body == (HELLO if i % 3 else b"%d" % i)
        sender.join(10)


def test_http_rules_after_repeated_gets(served):
    """A connection served runs of the same GET (the event loop answers
    them in C once it has seen one) still gets every other request
    answered by the HTTP rules: a body echoed, a head split across
    writes, runs longer than the C loop answers at once, and a malformed
    request's 400 and close."""
    _, srv = served
    with connect(srv.addr) as s:
        r = Reader(s)
        for _ in range(4):
            s.sendall(GET)
            assert r.response().body == HELLO
        s.sendall(post(b"body"))
        assert r.response().body == b"body"
        for _ in range(3):
            s.sendall(GET)
            assert r.response().body == HELLO
        s.sendall(GET * 70)
        assert [r.response().body for _ in range(70)] == [HELLO] * 70
        s.sendall(GET[:10])
        time.sleep(0.05)
        s.sendall(GET[10:])
        assert r.response().body == HELLO
        s.sendall(GET)
        assert r.response().body == HELLO
        s.sendall(b"GET / HTTP/1.1\r\nHost t\r\n\r\n")
        resp = r.response()
        assert (resp.status, resp.headers.get("connection")) == (400, "close")
        assert r.closed()


def test_repeated_gets_date_follows_clock(served):
    """The Date of each answer on a kept-alive connection is the second it
    was sent in, across second boundaries (the C loop's copy of the
    answer stops when its Date second ends)."""
    _, srv = served
    with connect(srv.addr) as s:
        r = Reader(s)
        seen = set()
        t_end = time.time() + 2.3
        while time.time() < t_end:
            before = int(time.time())
            s.sendall(GET)
            resp = r.response()
            after = time.time()
            date = email.utils.parsedate_to_datetime(resp.headers["date"])
            assert before <= date.timestamp() <= after, (before, date, after)
            seen.add(date.timestamp())
            time.sleep(0.01)
        assert len(seen) >= 2


def test_drain_after_repeated_gets(start_server):
    """SIGTERM closes an idle kept-alive connection whose GETs the event
    loop answered in C, and the server exits, counting every request."""
    srv = start_server("--model", "eventloop", "--idle-timeout", "30")
    with connect(srv.addr) as s:
        r = Reader(s)
        for _ in range(50):
            s.sendall(GET)
            assert r.response().body == HELLO
        srv.signal(signal.SIGTERM)
        assert r.closed()
    assert srv.wait() == 0
    srv.wait_for(r"stats \(final\): .*requests=50 ")


@pytest.mark.parametrize("model", ALL_MODELS)
def test_repeated_heads_answered_and_counted(start_server, model):
    """Runs of the same plain GET head (the event loop answers a head equal
    to the last one parsed without parsing it, alone or pipelined) get the
    same answers as any other request; a head only looking like it (same
    length, other bytes: another Host, HTTP/1.0) is parsed and answered by
    its own rules; every request is counted once."""
    srv = start_server("--model", model, "--idle-timeout", "30")
    other = GET.replace(b"Host: t", b"Host: u")
    http10 = GET.replace(b"HTTP/1.1", b"HTTP/1.0")
    assert len(other) == len(http10) == len(GET)
    batches = [GET, GET, GET * 16, other * 2, GET * 3 + other, GET * 5,
               post(b"x"), GET, GET * 2 + http10]
    total = 0
    with connect(srv.addr) as s:
        r = Reader(s)
        for batch in batches:
            s.sendall(batch)
            n = batch.count(b"HTTP/1.")
            total += n
            out = [r.response() for _ in range(n)]
            assert all(x.status == 200 for x in out)
            assert [x.body for x in out] == (
                [b"x"] if batch.startswith(b"POST") else [HELLO] * n)
            assert "connection" not in out[0].headers
        assert out[-1].headers.get("connection") == "close"
        assert r.closed()
    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0
    srv.wait_for(r"stats \(final\): .*requests=%d " % total)


def test_stats_lines(start_server):
    srv = start_server("--stats-interval", "0.2", "--model", "threads")
    for _ in range(3):
        get(srv.addr)
    srv.wait_for(r"stats: conns=\d+ accepted=3 requests=3 req/s=")
    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0
    srv.wait_for(r"stats \(final\): .*requests=3 .*bytes_in=\d+ .*timeouts=0 "
                 r"rejects=0 errors=0")


@pytest.mark.parametrize("model", ALL_MODELS)
def test_echo_protocol_16_mib_byte_exact(start_server, model):
    srv = start_server("--protocol", "echo", "--model", model)
    data = os.urandom(16 << 20)
    got = bytearray()
    with connect(srv.addr, timeout=30) as s:
        sender = threading.Thread(target=s.sendall, args=(data,))
        sender.start()
        while len(got) < len(data):
            chunk = s.recv(1 << 20)
            assert chunk, "closed early"
            got += chunk
        sender.join(10)
        s.shutdown(socket.SHUT_WR)
        assert Reader(s).closed()       # EOF is answered by closing
    assert got == data


@pytest.mark.parametrize("model", ALL_MODELS)
def test_request_timeout_408(start_server, model):
    srv = start_server("--model", model, "--idle-timeout", "1")
    with connect(srv.addr) as s:
        t0 = time.monotonic()
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n")   # head never finished
        r = Reader(s)
        resp = r.response()
        assert resp.status == 408
        assert 0.8 < time.monotonic() - t0 < 5
        assert r.closed()
    with connect(srv.addr) as s:                     # a body that stalls
        s.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        assert Reader(s).response().status == 408


@pytest.mark.parametrize("model", ALL_MODELS)
def test_idle_timeout_closes_quietly(start_server, model):
    srv = start_server("--model", model, "--idle-timeout", "1")
    with connect(srv.addr) as s:
        s.sendall(GET)
        r = Reader(s)
        assert r.response().body == HELLO
        t0 = time.monotonic()
        assert r.closed(timeout=5)      # no 408 for an idle keep-alive
        assert 0.8 < time.monotonic() - t0 < 5
    with connect(srv.addr) as s:        # connected, never sent a byte
        assert Reader(s).closed(timeout=5)


@pytest.mark.parametrize("model", ALL_MODELS)
def test_sigterm_drains_in_flight_request(start_server, model):
    srv = start_server("--model", model)
    idle = connect(srv.addr)
    idle.sendall(GET)
    idle_reader = Reader(idle)
    assert idle_reader.response().body == HELLO      # now idle, kept alive
    busy = connect(srv.addr)
    busy.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n01234")
    time.sleep(0.3)                                  # the request is in flight
    srv.signal(signal.SIGTERM)
    assert idle_reader.closed(timeout=5)             # idle ones go at once
    time.sleep(0.3)
    with pytest.raises(OSError):                     # no longer accepting
        with connect(srv.addr, timeout=2) as s:
            s.sendall(GET)
            Reader(s).response()
    busy.sendall(b"56789")
    r = Reader(busy)
    resp = r.response()
    assert (resp.status, resp.body) == (200, b"0123456789")
    assert resp.headers.get("connection") == "close"
    assert r.closed()
    assert srv.wait(timeout=10) == 0
    idle.close()
    busy.close()


_TGKILL = {"x86_64": 234, "aarch64": 131}.get(platform.machine())
needs_tgkill = pytest.mark.skipif(sys.platform != "linux" or _TGKILL is None,
                                  reason="tgkill: Linux x86_64/aarch64")


def _blocks(pid: int, tid: int, sig: int) -> bool:
    with open(f"/proc/{pid}/task/{tid}/status") as f:
        for line in f:
            if line.startswith("SigBlk:"):
                return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def sigterm_to_another_thread(srv: "ServerProcess") -> bool:
    """Send SIGTERM to one of srv's threads other than the main one
    (tgkill), as the kernel may give a kill() to any thread that does not
    block it; False when srv runs no such thread.  A thread that blocks
    it (libkqueue's own blocks every signal) would keep a signal sent to
    it pending forever, which no kill() can make happen."""
    others = [int(t) for t in os.listdir(f"/proc/{srv.pid}/task")
              if int(t) != srv.pid and
              not _blocks(srv.pid, int(t), signal.SIGTERM)]
    if not others:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.syscall(_TGKILL, srv.pid, others[-1],
                        int(signal.SIGTERM)) == 0, ctypes.get_errno()
    return True


@needs_tgkill
@pytest.mark.parametrize("model", ALL_MODELS)
def test_sigterm_taken_by_another_thread_still_stops(start_server, model):
    """Sent to one of the server's other threads, SIGTERM must still stop
    it: the main thread may be blocked in a wait that the signal does not
    interrupt.  The built-in protocols run the event-loop model on one
    thread (libkqueue's, over it, blocks all signals);
    test_server_handlers covers that model with a pool thread."""
    pool = ["--pool-threads", "4"] if model == "threadpool" else []
    srv = start_server("--model", model, *pool)
    with connect(srv.addr) as s:                # a connection's thread exists
        s.sendall(GET)
        assert Reader(s).response().body == HELLO
        if not sigterm_to_another_thread(srv):
            pytest.skip(f"the {model} model runs no other thread that "
                        f"takes signals here")
        assert srv.wait(timeout=10) == 0


TRACED_SIGNALS = r'''
import logging, sys
from pyepoll import _binding
from pyepoll.server import __main__ as cli

real = _binding.run_signal_handlers

def traced():
    logging.getLogger("pyepoll.server").info("acceptor runs signal handlers")
    real()

_binding.run_signal_handlers = traced
sys.exit(cli.main())
'''


@needs_tgkill
@pytest.mark.parametrize("model", ["threadpool", "threads"])
def test_acceptor_woken_by_a_signal_runs_its_handler_at_once(
        start_server, tmp_path, model):
    """The thread models' acceptor, woken by the signal wakeup pipe, runs
    the pending Python handlers itself (WakeupPipe.take).  Returning
    to the interpreter is not enough on PyPy: a signal that a pool
    thread's check took first waits for a thread switch, and a CI run saw
    a worker's SIGTERM handler run 21 s late.  That race cannot be forced
    from here, so this checks the call, with SIGTERM sent to another
    thread as the kernel may send it."""
    script = tmp_path / "traced.py"
    script.write_text(TRACED_SIGNALS)
    pool = ["--pool-threads", "4"] if model == "threadpool" else []
    srv = start_server("--model", model, *pool, script=str(script))
    with connect(srv.addr) as s:                # a connection's thread exists
        s.sendall(GET)
        assert Reader(s).response().body == HELLO
        # Only a signal that comes while the acceptor sleeps in poll is
        # its to run; one that comes while it runs Python code is run by
        # the interpreter's own check, and the server stops without it.
        deadline = time.monotonic() + 10
        while _blocking_syscall(srv.pid) not in _POLL_SYSCALLS:
            assert time.monotonic() < deadline, "the acceptor never polled"
            time.sleep(0.01)
        assert sigterm_to_another_thread(srv)
        srv.wait_for("acceptor runs signal handlers", timeout=10)
        assert srv.wait(timeout=10) == 0
    srv.wait_for(r"stopped by SIGTERM")


# poll and ppoll on x86_64; aarch64 has ppoll only.
_POLL_SYSCALLS = {"x86_64": {"7", "271"}, "aarch64": {"73"}}.get(
    platform.machine(), set())


def _blocking_syscall(pid: int) -> str:
    """The number of the system call the main thread of pid is in, as
    /proc shows it ("running" when it is in none)."""
    with open(f"/proc/{pid}/task/{pid}/syscall") as f:
        return f.read().split()[0]


def _backend_trigger_params():
    if not loop_available():
        return [pytest.param("-", "-", marks=pytest.mark.skip(
            reason="pyepoll.Loop not available"))]
    out = []
    for b in pyepoll.available_backends():
        for t in ("level", "edge"):
            if t == "edge" and b not in ("epoll", "kqueue"):
                continue
            out.append(pytest.param(b, t, id=f"{b}-{t}"))
    return out


@pytest.mark.parametrize("backend,trigger", _backend_trigger_params())
def test_eventloop_every_backend_and_trigger(start_server, backend, trigger):
    srv = start_server("--backend", backend, "--trigger", trigger)
    srv.wait_for(rf"backend={backend} trigger={trigger}")
    raw = GET + post(b"x" * 100000) + GET
    out = request(srv.addr, raw, n=3)
    assert [r.body for r in out] == [HELLO, b"x" * 100000, HELLO]
    assert get(srv.addr)[2] == HELLO


def test_busy_poll_serves_http_and_echo(start_server):
    srv = start_server("--busy-poll", "200")
    srv.wait_for(r"trigger=level busy_poll=200us max_connections=")
    raw = GET + post(b"y" * 70000) + GET
    assert [r.body for r in request(srv.addr, raw, n=3)] == \
        [HELLO, b"y" * 70000, HELLO]
    echo = start_server("--protocol", "echo", "--busy-poll", "200")
    with connect(echo.addr) as s:
        for i in range(20):
            msg = os.urandom(1 + i * 500)
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                chunk = s.recv(65536)
                assert chunk, "closed early"
                got += chunk
            assert got == msg


def test_cli_rejects_bad_settings(tmp_path):
    for args, message in [
            (["--backend", "nope"], "unknown backend"),
            (["--workers", "0"], "workers must be at least 1"),
            (["--idle-timeout", "-1"], "must not be negative"),
            (["--busy-poll", "1000001"], "busy_poll_us must be in"),
            (["--busy-poll", "-1"], "busy_poll_us must be in")]:
        out = subprocess.run([sys.executable, "-m", "pyepoll.server",
                              "--port", "0", *args], cwd=str(tmp_path),
                             capture_output=True, text=True, timeout=20)
        assert out.returncode != 0
        assert message in out.stderr, out.stderr


def test_help_lists_every_option(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pyepoll.server", "--help"],
                         cwd=str(tmp_path), capture_output=True, text=True,
                         timeout=20)
    assert out.returncode == 0
    text = " ".join(out.stdout.split())        # argparse wraps lines
    for option in ("--host", "--port", "--protocol {http,echo}",
                   "--model {eventloop,threadpool,threads}", "--workers N",
                   "--max-connections N", "--overflow {queue,reject}",
                   "--queue-size N", "--idle-timeout SECONDS",
                   "--pool-threads N", "--trigger {level,edge}",
                   "--backend", "--log-level", "--stats-interval",
                   "--busy-poll USEC"):
        assert option in text, option


def test_console_script_installed():
    """The wheel installs ``pyepoll-server`` beside the interpreter."""
    if os.environ.get("PYEPOLL_REQUIRE_INSTALLED") != "1":
        pytest.skip("running from the source tree: no console script")
    exe = os.path.join(os.path.dirname(sys.executable), "pyepoll-server")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True,
                         timeout=20)
    assert out.returncode == 0 and "--protocol" in out.stdout


def test_no_arguments_serve_http_on_8080(tmp_path):
    """What a user runs first: no arguments, HTTP on 127.0.0.1:8080, one
    startup line, curl answered (GET and a POST echo), SIGTERM exits 0."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", 8080))
        except OSError:
            pytest.skip("127.0.0.1:8080 is in use on this machine")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "pyepoll.server"],
                            cwd=str(tmp_path), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        line = proc.stdout.readline().decode()
        if "in use" in line:
            pytest.skip("127.0.0.1:8080 was taken meanwhile")
        assert re.search(r"INFO: serving http on 127\.0\.0\.1:8080 ", line), line
        addr = ("127.0.0.1", 8080)
        status, _, body = get(addr)
        assert (status, body) == (200, HELLO)
        status, _, body = get(addr, method="POST", body=b"Hello, Server!")
        assert (status, body) == (200, b"Hello, Server!")
        if shutil.which("curl"):
            url = "http://127.0.0.1:8080/"
            assert _curl(url).stdout == HELLO
            out = _curl("-X", "POST", "--data", "Hello, Server!", url)
            assert out.stdout == b"Hello, Server!"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        rest = proc.stdout.read().decode().splitlines()
        # Nothing else was logged before the shutdown began.
        assert rest and "stopped by SIGTERM" in rest[0], rest
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        proc.stdout.close()


def test_reporter_watches_the_parent_once_a_second(monkeypatch) -> None:
    """A worker's reporter asks for its parent (a system call) at most once
    a second however often the loop wakes, asks again within a second,
    and calls back once the parent is gone; with nothing to report and no
    parent it has no work (the event loop then skips it per wakeup)."""
    from pyepoll.server import _stats

    calls: List[float] = []
    parent = [4242]
    monkeypatch.setattr(_stats.os, "getppid",
                        lambda: calls.append(0.0) or parent[0])
    orphaned: List[bool] = []
    rep = _stats.Reporter(0.0, dict)
    assert not rep.active() and rep.timeout(0.0) is None
    rep.watch_parent(4242, lambda: orphaned.append(True))
    assert rep.active()
    for i in range(1000):               # a thousand wakeups in 0.1 s
        rep.tick(100.0 + i / 10000)
    assert len(calls) == 1
    assert 0.9 < rep.timeout(100.1) <= 1.0    # the next check is due then
    rep.tick(101.0)
    assert len(calls) == 2 and not orphaned
    parent[0] = 1                       # reparented: the supervisor died
    rep.tick(101.5)
    assert len(calls) == 2 and not orphaned     # not yet a second
    rep.tick(102.0)
    assert len(calls) == 3 and orphaned == [True]
    rep.tick(105.0)
    assert len(calls) == 3 and orphaned == [True]   # called back once

"""The reference protocols: a strict HTTP/1.1 server and echo.

:class:`HttpSession` is the whole of HTTP, written sans-I/O: bytes go in,
response bytes come out, and a few attributes say what the caller must do
(close, start or stop the request deadline).  :class:`HttpHandler` adapts it
to the handler API, so every concurrency model runs the same code.

Behaviour: keep-alive (HTTP/1.0 only when asked), pipelining (answers in
order, one coalesced write per batch), Content-Length and chunked request
bodies, HEAD, ``Expect: 100-continue``.  ``GET`` answers 200 with a short
text; a request with a body gets its body echoed back.  Errors close the
connection after the answer: 400 malformed, 408 request not complete in
time, 413 body over the limit (decided from Content-Length, before reading
the body), 431 head too large or too many fields, 501 unsupported transfer
coding, 505 HTTP version, 400 for an HTTP/1.1 request without Host or any
request with two (RFC 9112 3.2), 405 with Allow for CONNECT (no tunnels
here, so never a 2xx: RFC 9110 9.3.6).  After an error the connection is half-closed and
what the client still sends is read and dropped for a short while
(a "lingering close"), so the answer is not destroyed by a reset.
"""
from __future__ import annotations

import time
from typing import List, Optional

from .. import http
from . import _connlog
from ..http import (CHUNKED, CLOSE, CONNECT, EXPECT_100, HAS_CL, HOST_BAD,
                    INCOMPLETE, KEEPALIVE, TE_OTHER, ChunkedDecoder,
                    RequestParser)
from .handler import Connection, Handler

__all__ = ["HttpSession", "HttpHandler", "EchoHandler", "Limits",
           "HELLO_BODY", "hello_answer", "hello_until"]

HELLO_BODY = b"Hello, World!\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_HEAD_STATE, _BODY, _CHUNKED, _DEAD = 0, 1, 2, 3
# Heads refused whatever the rest: a missing or repeated Host (RFC 9112
# 3.2), CONNECT (no tunnels here; RFC 9110 9.3.6), an unknown transfer
# coding.  One test on the hot path for all three.
_REFUSED = HOST_BAD | CONNECT | TE_OTHER
_ALLOW = ((b"Allow", b"GET, HEAD, POST"),)
_ERRORS = {
    http.BAD: 400, http.BAD_LENGTH: 400, http.TOO_MANY: 431,
    http.BAD_VERSION: 505,
}


class Limits:
    """Request limits.  A head longer than ``max_head`` (complete or not) or
    with more than ``max_headers`` fields gets 431; a body longer than
    ``max_body`` gets 413; a lingering close drops at most ``max_linger``
    bytes before closing for good."""

    __slots__ = ("max_head", "max_headers", "max_body", "max_linger")

    def __init__(self, max_head: int = 16384, max_headers: int = 100,
                 max_body: int = 1 << 20, max_linger: int = 1 << 20) -> None:
        self.max_head = max_head
        self.max_headers = max_headers
        self.max_body = max_body
        self.max_linger = max_linger


class _Counters:
    """Stand-in for the server's stats when a session is used alone."""
    requests = 0


class _Shared:
    """What the sessions of one thread share: parser, limits, counters."""

    __slots__ = ("parser", "limits", "stats", "max_head")

    def __init__(self, parser: Optional[RequestParser], limits: Optional[Limits],
                 stats: object) -> None:
        self.limits = limits or Limits()
        self.max_head = self.limits.max_head
        self.parser = parser or RequestParser(self.limits.max_headers)
        self.stats = stats if stats is not None else _Counters()


class _Body:
    """A request whose body is being received (made only then, so an idle
    connection does not carry it)."""

    __slots__ = ("remaining", "parts", "length", "decoder", "keep", "http10",
                 "head_only")

    def __init__(self, keep: bool, http10: bool, head_only: bool) -> None:
        self.remaining = 0
        self.parts: List[bytes] = []
        self.length = 0
        self.decoder: Optional[ChunkedDecoder] = None
        self.keep = keep
        self.http10 = http10
        self.head_only = head_only


# Canned answers to GET, rebuilt when the Date second changes.
_canned_until = 0.0
_canned = (b"", b"", b"")
_time = time.time


def hello_answer() -> bytes:
    """The keep-alive answer to a plain GET, with the current Date."""
    return _canned[0] if _time() < _canned_until else _hello()[0]


def hello_until() -> float:
    """When the answers :func:`hello_answer` returned last go stale (the
    end of their Date second, on the :func:`time.time` clock)."""
    return _canned_until


def _hello() -> tuple:
    global _canned_until, _canned
    now = _time()
    if now >= _canned_until:
        _canned = (
            http.response(200, HELLO_BODY),
            http.response(200, HELLO_BODY, keep_alive=False),
            http.response(200, HELLO_BODY, http10=True),
        )
        _canned_until = float(int(now) + 1)
    return _canned


class HttpSession:
    """HTTP/1.1 server side of one connection, without I/O.

    Call :meth:`feed` with the bytes received; send what it returns.  Then:

    * ``closing`` True: the connection must end once the answer is sent
      (error, ``Connection: close``, HTTP/1.0, or draining); later input is
      ignored.  ``linger`` True: input was left unread, so half-close and
      drop input for a while rather than close at once.
    * ``arm`` True / False / None: start (or restart) the request deadline,
      stop it, or leave it as it is.  The deadline covers a request head
      from its first byte, and a body from its last progress; call
      :meth:`timeout` when it passes.
    * ``busy``: a request is partly received.

    ``parser`` (not thread-safe), ``limits`` and ``stats`` (an object with
    a ``requests`` counter) may be shared by the sessions of one thread.
    """

    # Kept small: a server holds one per connection, mostly idle.
    __slots__ = ("_sh", "_state", "_pending", "_body", "_timing", "closing",
                 "arm", "linger", "draining", "status", "_plain")

    def __init__(self, parser: Optional[RequestParser] = None,
                 limits: Optional[Limits] = None, stats: object = None, *,
                 shared: Optional[_Shared] = None) -> None:
        self._sh = shared or _Shared(parser, limits, stats)
        self._state = _HEAD_STATE
        self._pending: Optional[bytearray] = None     # a partial head
        self._body: Optional[_Body] = None
        self._timing = False
        self.closing = False
        #: With ``closing``: close by half-closing and dropping input for a
        #: while (input is left unread), not at once.
        self.linger = False
        self.arm: Optional[bool] = None
        self.draining = False
        #: Status of the last error answered (0 if none).
        self.status = 0
        # Between requests, nothing partial, not draining: the hot path
        # may be tried.  Kept by _feed and drain.
        self._plain = True

    @property
    def busy(self) -> bool:
        """True while a request is partly received."""
        return self._state in (_BODY, _CHUNKED) or bool(self._pending)

    def feed(self, data: bytes) -> bytes:
        """Consume received bytes; return the bytes to send (maybe b"")."""
        if not self._plain or type(data) is not bytes:
            return self._feed(data)
        # The hot path: a run of plain GETs answered with one canned
        # response each; most often the same head as the last one.
        sh = self._sh
        parser = sh.parser
        if data == parser.last_get:
            sh.stats.requests += 1
            self.arm = None
            return _canned[0] if _time() < _canned_until else _hello()[0]
        n, pos = parser.scan_gets(data, 0, sh.max_head)
        if not n:
            return self._feed(data)
        sh.stats.requests += n
        out = _canned[0] if _time() < _canned_until else _hello()[0]
        if n > 1:
            out *= n
        if pos == len(data):
            self.arm = None
            return out
        return out + self._feed(data[pos:])

    def _feed(self, data: bytes) -> bytes:
        if self._state == _DEAD:
            self.arm = None
            return b""
        out: List[bytes] = []
        had_partial = self._pending is not None
        if had_partial:
            self._pending += data          # type: ignore[operator]
            buf = self._pending
            self._pending = None
        else:
            buf = data
        end = len(buf)
        pos = 0
        started = False                     # a new head began in this call
        sh = self._sh
        parser = sh.parser
        while pos < end:
            state = self._state
            if state == _DEAD:
                break
            if state == _HEAD_STATE:
                rc = parser.parse(buf, pos)
                if rc > 0:
                    if rc > sh.max_head:
                        out.append(self._error(431))
                        break
                    first = buf[pos]
                    pos += rc
                    # Only a head starting with 'H' (or a stray CRLF) can
                    # be HEAD: spare the others the method lookup.
                    pos = self._on_head(buf, pos, end, out,
                                        first == 72 or first == 13)
                    started = True
                elif rc == INCOMPLETE:
                    if end - pos > sh.max_head:
                        out.append(self._error(431))
                        break
                    self._pending = bytearray(buf[pos:]) if pos or not \
                        isinstance(buf, bytearray) else buf
                    if pos or not had_partial:
                        started = True
                    break
                else:
                    out.append(self._error(_ERRORS.get(rc, 400)))
                    break
            elif state == _BODY:
                body = self._body
                take = min(body.remaining, end - pos)  # type: ignore[union-attr]
                body.parts.append(buf[pos:pos + take])  # type: ignore
                pos += take
                body.remaining -= take                  # type: ignore
                if body.remaining == 0:                 # type: ignore
                    self._finish_request(out)
            else:                                   # _CHUNKED
                pos = self._chunked(buf, pos, end, out)
        if self._state == _DEAD:
            # Input the answer leaves unread (an error, or requests
            # pipelined after a close) would turn a plain close into a
            # reset that can destroy the answer in flight.
            self.linger = bool(self.status) or pos < end
        self._plain = self._state == _HEAD_STATE and self._pending is None \
            and not self.draining
        self._update_timer(started)
        if len(out) == 1:
            return out[0]
        return b"".join(out)

    def _on_head(self, buf, pos: int, end: int, out: List[bytes],
                 maybe_head: bool) -> int:
        """A complete head was parsed: answer it or prepare for its body."""
        sh = self._sh
        p = sh.parser
        flags = p.flags
        http10 = p.minor == 0
        if http10:
            keep = bool(flags & KEEPALIVE) and not flags & CLOSE
        else:
            keep = not flags & CLOSE
        head_only = False
        if maybe_head:
            mo, ml = p.method
            head_only = ml == 4 and buf[mo:mo + 4] == b"HEAD"
        if flags & _REFUSED:
            out.append(self._error(400 if flags & HOST_BAD else
                                   405 if flags & CONNECT else 501))
            return pos
        if flags & CHUNKED:
            if flags & HAS_CL:                 # request smuggling vector
                out.append(self._error(400))
                return pos
            self._body = body = _Body(keep, http10, head_only)
            body.decoder = ChunkedDecoder()
            self._state = _CHUNKED
            pos = self._chunked(buf, pos, end, out)
            if self._state == _CHUNKED and flags & EXPECT_100 and not http10:
                out.append(_CONTINUE)
            return pos
        if flags & HAS_CL:
            cl = p.content_length
            if cl > sh.limits.max_body:
                out.append(self._error(413))
                return pos
            self._body = body = _Body(keep, http10, head_only)
            if end - pos >= cl:
                body.parts.append(buf[pos:pos + cl])
                self._finish_request(out)
                return pos + cl
            if end > pos:
                body.parts.append(buf[pos:end])
            body.remaining = cl - (end - pos)
            self._state = _BODY
            if flags & EXPECT_100 and not http10:
                out.append(_CONTINUE)
            return end
        # No body.
        sh.stats.requests += 1
        keep = keep and not self.draining
        if head_only:
            out.append(http.response(200, HELLO_BODY, head_only=True,
                                     keep_alive=keep, http10=http10))
        else:
            canned = _hello()
            out.append(canned[1] if not keep else
                       canned[2] if http10 else canned[0])
        if not keep:
            self._state = _DEAD
            self.closing = True
        return pos

    def _chunked(self, buf, pos: int, end: int, out: List[bytes]) -> int:
        if pos >= end:
            return pos
        body = self._body
        chunk = bytearray(buf[pos:end])
        try:
            n, used = body.decoder.decode(chunk)   # type: ignore[union-attr]
        except ValueError:
            out.append(self._error(400))
            return end
        if n:
            body.length += n                       # type: ignore[union-attr]
            if body.length > self._sh.limits.max_body:  # type: ignore
                out.append(self._error(413))
                return end
            body.parts.append(bytes(chunk[:n]))    # type: ignore[union-attr]
        if body.decoder.done:                      # type: ignore[union-attr]
            self._finish_request(out)
        return pos + used

    def _finish_request(self, out: List[bytes]) -> None:
        """A request with a body is complete: echo the body."""
        body, self._body = self._body, None
        self._sh.stats.requests += 1
        keep = body.keep and not self.draining     # type: ignore[union-attr]
        parts = body.parts                          # type: ignore[union-attr]
        out.append(http.response(200, parts[0] if len(parts) == 1
                                 else b"".join(parts),
                                 content_type=b"application/octet-stream",
                                 keep_alive=keep,
                                 http10=body.http10,   # type: ignore
                                 head_only=body.head_only))  # type: ignore
        if keep:
            self._state = _HEAD_STATE
        else:
            self._state = _DEAD
            self.closing = True

    def _error(self, status: int) -> bytes:
        """Answer an error and stop reading requests."""
        self._state = _DEAD
        self._plain = False
        self._pending = None
        self._body = None
        self.closing = True
        self.status = status
        return http.response(status, b"%d %s\n" % (
            status, http.REASONS[status].encode()), keep_alive=False,
            headers=_ALLOW if status == 405 else ())

    def _update_timer(self, started: bool) -> None:
        state = self._state
        if state == _DEAD:
            want, restart = False, False
        elif state == _HEAD_STATE:
            want = self._pending is not None
            restart = started
        else:                       # a body: the deadline follows progress
            want, restart = True, True
        if want:
            self.arm = True if (restart or not self._timing) else None
        else:
            self.arm = False if self._timing else None
        self._timing = want

    def timeout(self) -> bytes:
        """The request deadline passed: 408 if a request is partly here."""
        self.arm = None
        self._timing = False
        if self._state == _DEAD:
            return b""
        if self.busy:
            return self._error(408)
        self._state = _DEAD
        self._plain = False
        self.closing = True
        return b""

    def drain(self) -> bool:
        """The server is shutting down: answer the request in progress,
        if any, with ``Connection: close``.  Returns True when the
        connection can be closed at once (no request in progress)."""
        self.draining = True
        self._plain = False
        if self._state == _DEAD or not self.busy:
            self._state = _DEAD
            self.closing = True
            return True
        return False


class HttpHandler(HttpSession, Handler):
    """Serve HTTP: an :class:`HttpSession` driven through the handler API
    (see the module's docstring).  Make handlers with :meth:`factory` so the
    handlers of one thread share a parser."""

    __slots__ = ("_lingered",)

    def __init__(self, parser: Optional[RequestParser] = None,
                 limits: Optional[Limits] = None, stats: object = None, *,
                 shared: Optional[_Shared] = None) -> None:
        HttpSession.__init__(self, parser, limits, stats, shared=shared)
        self._lingered = -1          # bytes dropped while lingering; -1: not

    @property
    def s(self) -> "HttpHandler":
        """The session (the handler is its own session)."""
        return self

    @classmethod
    def factory(cls, limits: Optional[Limits] = None, stats: object = None):
        """A no-argument callable making handlers that share one parser
        (for handlers driven from a single thread)."""
        shared = _Shared(None, limits, stats)

        def make() -> "HttpHandler":
            return cls(shared=shared)
        make.parser = shared.parser        # type: ignore[attr-defined]
        return make

    def on_data(self, conn: Connection, data: bytes) -> None:
        if self._lingered >= 0:
            self._lingered += len(data)
            if self._lingered > self._sh.limits.max_linger:
                conn.close()
            return
        out = self.feed(data)
        if out:
            conn.send(out)
        if self.closing or self.arm is not None:
            self.after_feed(conn)

    def after_feed(self, conn: Connection) -> None:
        """Act on the session's verdict after a feed: close, or start or
        stop the request deadline."""
        if self.closing:
            if self.status and _connlog.enabled():    # error path only
                _connlog.http_error(conn.peer, self.status)
            if self.linger:
                self._linger(conn)
            else:
                conn.close()
        elif self.arm is not None:
            conn.set_timeout(self.arm)

    def _linger(self, conn: Connection) -> None:
        """Half-close after the answer and drop what still comes, until the
        client closes or the deadline passes."""
        self._lingered = 0
        conn.shutdown_write()
        conn.set_timeout(True)

    def on_eof(self, conn: Connection) -> None:
        conn.close()

    def on_timeout(self, conn: Connection) -> None:
        if self._lingered >= 0:
            conn.close()
            return
        out = self.timeout()
        if out:
            if _connlog.enabled():
                _connlog.http_error(conn.peer, self.status)
            conn.send(out)
            self._linger(conn)
        else:
            conn.close()

    def on_drain(self, conn: Connection) -> None:
        if self._lingered >= 0:
            return
        if self.drain():
            conn.close()


class EchoHandler(Handler):
    """Bytes back as they arrive."""

    __slots__ = ()

    def on_data(self, conn: Connection, data: bytes) -> None:
        conn.send(data)

    def on_eof(self, conn: Connection) -> None:
        conn.close()

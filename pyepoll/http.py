"""HTTP/1.x helpers: the C request-head parser and response building.

:class:`RequestParser` is a thin binding of ``pe_http_parse_request``.  Its
output structures are allocated once and read through memoryview casts, so
parsing a request costs one C call and a few integer reads, never per-field
cdata access.  :class:`ChunkedDecoder` wraps ``pe_http_decode_chunked``.

:func:`response` builds a complete response with ``Date`` (formatted at most
once a second) and ``Server`` headers.
"""
from __future__ import annotations

import time
from email.utils import formatdate
from typing import List, Optional, Sequence, Tuple, Union

from . import __version__
from ._binding import ffi, lib

__all__ = [
    "RequestParser", "ChunkedDecoder", "response", "http_date",
    "SERVER", "REASONS", "INCOMPLETE", "BAD", "TOO_MANY", "BAD_LENGTH",
    "BAD_VERSION", "CHUNKED", "CLOSE", "KEEPALIVE", "HAS_CL", "EXPECT_100",
    "TE_OTHER", "UPGRADE", "HOST_BAD", "CONNECT", "bytes_reader",
]

Buffer = Union[bytes, bytearray, memoryview]

# Return codes of RequestParser.parse besides a positive head length.
INCOMPLETE = lib.PE_HTTP_INCOMPLETE
BAD = lib.PE_HTTP_BAD
TOO_MANY = lib.PE_HTTP_TOO_MANY
BAD_LENGTH = lib.PE_HTTP_BAD_LENGTH
BAD_VERSION = lib.PE_HTTP_BAD_VERSION

# Request flags (RequestParser.flags).
CHUNKED = lib.PE_HTTP_CHUNKED
CLOSE = lib.PE_HTTP_CLOSE
KEEPALIVE = lib.PE_HTTP_KEEPALIVE
HAS_CL = lib.PE_HTTP_HAS_CL
EXPECT_100 = lib.PE_HTTP_EXPECT_100
TE_OTHER = lib.PE_HTTP_TE_OTHER
UPGRADE = lib.PE_HTTP_UPGRADE
HOST_BAD = lib.PE_HTTP_HOST_BAD
CONNECT = lib.PE_HTTP_CONNECT

SERVER = ("pyepoll/" + __version__).encode()

REASONS = {
    100: "Continue", 200: "OK", 400: "Bad Request",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 411: "Length Required",
    413: "Content Too Large", 417: "Expectation Failed",
    431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


def _word(field: str) -> int:
    """Index of a 32-bit field of struct pe_http_request in a 'I' view."""
    return ffi.offsetof("struct pe_http_request", field) // 4


_METHOD = _word("method")
_TARGET = _word("target")
_MINOR = _word("minor_version")
_FLAGS = _word("flags")
_NHEADERS = _word("nheaders")
_CL = ffi.offsetof("struct pe_http_request", "content_length") // 8
_HEADER_WORDS = ffi.sizeof("struct pe_http_header") // 4


class RequestParser:
    """Parse HTTP/1.x request heads into reused output buffers.

    After :meth:`parse` returns a head length, the attributes ``method``,
    ``target`` (``(offset, length)`` into the parsed buffer), ``minor``,
    ``flags`` and ``content_length`` describe the request;
    :meth:`headers` copies the header fields out when they are wanted.
    One parser serves any number of requests, one at a time (not
    thread-safe: give each thread its own).
    """

    __slots__ = ("max_headers", "_req", "_hdrs", "_w", "_q", "_hw",
                 "minor", "flags", "_base", "last_get")

    def __init__(self, max_headers: int = 100) -> None:
        if max_headers <= 0:
            raise ValueError("max_headers must be positive")
        self.max_headers = max_headers
        self._req = ffi.new("struct pe_http_request *")
        self._hdrs = ffi.new("struct pe_http_header[]", max_headers)
        raw = memoryview(ffi.buffer(self._req))
        self._w = raw.cast("I")
        self._q = raw.cast("Q")
        self._hw = memoryview(ffi.buffer(self._hdrs)).cast("I")
        #: HTTP/1.minor of the last parsed head.
        self.minor = 0
        #: PE_HTTP_* flags of the last parsed head.
        self.flags = 0
        self._base = 0
        #: The last plain GET head :meth:`scan_gets` parsed (None: none
        #: yet): a buffer equal to it is one plain GET.
        self.last_get: Optional[bytes] = None

    def parse(self, buf: Buffer, start: int = 0) -> int:
        """Parse the head at ``buf[start:]``.

        Returns the head's length (through the blank line) when complete,
        :data:`INCOMPLETE` when more bytes are needed, or a negative error
        code (:data:`BAD`, :data:`TOO_MANY`, :data:`BAD_LENGTH`,
        :data:`BAD_VERSION`).  Offsets in the results are relative to
        ``buf``, not to ``start``.
        """
        end = len(buf)
        if start == 0 and type(buf) is bytes:
            rc = lib.pe_http_parse_request(buf, end, self._req, self._hdrs,
                                           self.max_headers)
        else:
            if start < 0 or start > end:
                raise ValueError("start out of range")
            rc = lib.pe_http_parse_request(ffi.from_buffer(buf) + start,
                                           end - start, self._req,
                                           self._hdrs, self.max_headers)
        if rc > 0:
            w = self._w
            self._base = start
            self.minor = w[_MINOR]
            self.flags = w[_FLAGS]
        return rc

    def scan_gets(self, buf: bytes, start: int, max_head: int) -> Tuple[int, int]:
        """Count the plain GETs at ``buf[start:]``: complete heads of
        ``GET`` HTTP/1.1 requests with no body and no Connection, Expect or
        Upgrade field, each at most ``max_head`` bytes.

        Returns ``(count, end)``: where the first other thing (anything
        else, an incomplete head, an error) starts.  This is a server's hot
        path: the last plain GET head is remembered, and a head identical
        to it byte for byte is counted without parsing it again (clients
        on a kept-alive connection mostly repeat theirs); any other costs
        one C call.  The parse results (:attr:`flags` and the rest) are
        not updated by this method.
        """
        end = len(buf)
        last = self.last_get
        pos = start
        n = 0
        if last is not None:
            size = len(last)
            if start == 0 and end == size and buf == last:
                return 1, end
            while buf.startswith(last, pos):
                pos += size
                n += 1
            if pos == end:
                return n, pos
        parse, req, hdrs, mh, w = (lib.pe_http_parse_request, self._req,
                                   self._hdrs, self.max_headers, self._w)
        cbuf = None
        while pos < end and buf.startswith(b"GET ", pos):
            if pos == 0:
                rc = parse(buf, end, req, hdrs, mh)
            else:
                if cbuf is None:
                    cbuf = ffi.from_buffer(buf)
                rc = parse(cbuf + pos, end - pos, req, hdrs, mh)
            if rc <= 0 or rc > max_head or w[_FLAGS] or w[_MINOR] != 1:
                break
            head = buf[pos:pos + rc]
            if head != last:
                self.last_get = last = head
            pos += rc
            n += 1
            while buf.startswith(last, pos):
                pos += rc
                n += 1
        return n, pos

    # Read on demand: most requests need none of these.
    @property
    def method(self) -> Tuple[int, int]:
        """(offset, length) of the method in the parsed buffer."""
        return (self._w[_METHOD] + self._base, self._w[_METHOD + 1])

    @property
    def target(self) -> Tuple[int, int]:
        """(offset, length) of the request target in the parsed buffer."""
        return (self._w[_TARGET] + self._base, self._w[_TARGET + 1])

    @property
    def content_length(self) -> int:
        """Content-Length (valid when ``flags & HAS_CL``)."""
        return self._q[_CL]

    @property
    def nheaders(self) -> int:
        """Number of header fields parsed."""
        return self._w[_NHEADERS]

    def headers(self, buf: Buffer) -> List[Tuple[bytes, bytes]]:
        """The header fields of the last parsed head as (name, value) bytes.

        ``buf`` must be the buffer given to :meth:`parse`, unchanged."""
        hw, base, out = self._hw, self._base, []
        data = bytes(buf) if not isinstance(buf, bytes) else buf
        for i in range(self.nheaders):
            k = i * _HEADER_WORDS
            no, nl, vo, vl = hw[k], hw[k + 1], hw[k + 2], hw[k + 3]
            out.append((data[base + no:base + no + nl],
                        data[base + vo:base + vo + vl]))
        return out


class ChunkedDecoder:
    """Incremental decoder of a chunked request body (RFC 9112, 7.1)."""

    __slots__ = ("_st", "_consumed", "_done", "done")

    def __init__(self) -> None:
        self._st = ffi.new("struct pe_http_chunked *")
        self._consumed = ffi.new("size_t *")
        self._done = ffi.new("int *")
        self.done = False

    def decode(self, data: bytearray) -> Tuple[int, int]:
        """Decode ``data`` in place.

        Returns ``(payload, consumed)``: the first ``payload`` bytes of
        ``data`` are now body bytes, and ``consumed`` input bytes were used
        (fewer than ``len(data)`` only once :attr:`done`, when the rest
        belongs to the next request).  Raises ValueError on malformed
        framing, TypeError/BufferError for what is not a writable buffer
        (decoding in place must never write into a bytes object).
        """
        cbuf = ffi.from_buffer(data, require_writable=True)
        if not len(data):
            return 0, 0
        n = lib.pe_http_decode_chunked(self._st, cbuf,
                                       len(data), self._consumed, self._done)
        if n < 0:
            raise ValueError("malformed chunked body")
        self.done = bool(self._done[0])
        return int(n), int(self._consumed[0])


def bytes_reader(view: Buffer):
    """An object whose slices are ``bytes`` copied straight out of ``view``
    (e.g. :attr:`pyepoll.Loop.batch_view`): ``reader[a:b]`` costs one copy
    and no intermediate memoryview (89 ns against 173 ns for
    ``view[a:b].tobytes()`` on a 40-byte request).  It keeps ``view``'s
    memory alive and sees later changes to it."""
    return ffi.buffer(ffi.from_buffer(view))


# ------------------------------------------------------------- responses

_date_second = -1
_date_value = b""


def http_date() -> bytes:
    """The current time as an IMF-fixdate, formatted at most once a second."""
    global _date_second, _date_value
    now = int(time.time())
    if now != _date_second:
        _date_value = formatdate(now, usegmt=True).encode()
        _date_second = now
    return _date_value


def response(status: int, body: bytes = b"", *,
             content_type: Optional[bytes] = b"text/plain; charset=utf-8",
             keep_alive: bool = True, http10: bool = False,
             head_only: bool = False,
             headers: Sequence[Tuple[bytes, bytes]] = ()) -> bytes:
    """A complete HTTP/1.1 response.

    ``keep_alive`` False adds ``Connection: close``; with ``http10`` a kept
    connection says ``Connection: keep-alive`` (HTTP/1.0 closes by
    default).  ``head_only`` announces the body's length but leaves it out
    (the answer to HEAD).
    """
    parts = [b"HTTP/1.1 %d %s\r\nServer: %s\r\nDate: %s\r\n"
             % (status, REASONS.get(status, "Unknown").encode(), SERVER,
                http_date())]
    if content_type is not None and (body or status >= 200):
        parts.append(b"Content-Type: %s\r\n" % content_type)
    parts.append(b"Content-Length: %d\r\n" % len(body))
    for name, value in headers:
        parts.append(b"%s: %s\r\n" % (name, value))
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    elif http10:
        parts.append(b"Connection: keep-alive\r\n")
    parts.append(b"\r\n")
    if not head_only:
        parts.append(body)
    return b"".join(parts)

"""HttpSession (the server's HTTP, without I/O) and pyepoll.http, in
process: exact outputs, timer decisions, and that splitting the input
anywhere never changes what is answered."""
from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyepoll import http
from pyepoll.server.protocols import HELLO_BODY, HttpSession, Limits

from conftest import split_at

# Every test here finishes by itself well within this.
pytestmark = pytest.mark.timeout(120)

DATE = re.compile(rb"Date: [^\r]*\r\n")
GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


def post(body: bytes) -> bytes:
    return b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body) + body


def chunked(*chunks: bytes) -> bytes:
    out = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    for c in chunks:
        out += b"%x\r\n%s\r\n" % (len(c), c)
    return out + b"0\r\n\r\n"


def norm(data: bytes) -> bytes:
    return DATE.sub(b"Date: X\r\n", data)


def statuses(data: bytes):
    return [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]


def feed_all(pieces, limits=None) -> bytes:
    s = HttpSession(limits=limits)
    return b"".join(s.feed(p) for p in pieces)


# ------------------------------------------------------------------- parser

def test_bytes_reader_slices_are_bytes_of_the_current_contents():
    buf = bytearray(b"0123456789")
    r = http.bytes_reader(memoryview(buf).toreadonly())
    assert r[2:5] == b"234" and type(r[2:5]) is bytes
    buf[2:5] = b"abc"
    assert r[0:10] == b"01abc56789"
    assert r[8:20] == b"89"
    with pytest.raises(TypeError):
        http.bytes_reader("text")


def test_parser_offsets_and_headers():
    p = http.RequestParser(8)
    buf = b"xx" + b"PUT /a?b=1 HTTP/1.0\r\nA: 1\r\nContent-Length: 3\r\n\r\nabc"
    n = p.parse(buf, 2)
    assert n == len(buf) - 2 - 3
    mo, ml = p.method
    to, tl = p.target
    assert buf[mo:mo + ml] == b"PUT" and buf[to:to + tl] == b"/a?b=1"
    assert p.minor == 0 and p.flags & http.HAS_CL and p.content_length == 3
    assert p.headers(buf) == [(b"A", b"1"), (b"Content-Length", b"3")]
    assert p.parse(b"GET / HTTP/1.1\r\nHost: t\r\n") == http.INCOMPLETE
    assert p.parse(b"GET / HTTP/1.1\r\nHost: t\r\n" + b"A: b\r\n" * 9 + b"\r\n") \
        == http.TOO_MANY
    assert p.parse(bytearray(GET)) == len(GET)


def test_chunked_decoder_in_place():
    d = http.ChunkedDecoder()
    buf = bytearray(b"3\r\nabc\r\n0\r\n\r\nNEXT")
    n, used = d.decode(buf)
    assert (bytes(buf[:n]), used, d.done) == (b"abc", len(buf) - 4, True)
    with pytest.raises(ValueError):
        http.ChunkedDecoder().decode(bytearray(b"g\r\n"))


def test_date_cached_per_second_and_response_shape():
    assert http.http_date() is http.http_date()
    r = http.response(404, b"nope", keep_alive=False)
    assert r.startswith(b"HTTP/1.1 404 Not Found\r\nServer: pyepoll/")
    assert b"\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope" in r
    assert http.response(200, b"abc", head_only=True).endswith(
        b"Content-Length: 3\r\n\r\n")


# ------------------------------------------------------------------ session

def test_get_and_echo():
    s = HttpSession()
    out = s.feed(GET + post(b"hello"))
    assert statuses(out) == [200, 200]
    assert out.count(HELLO_BODY) == 1 and out.endswith(b"\r\n\r\nhello")
    assert not s.closing and s.arm is None


def test_head_has_length_without_body():
    out = HttpSession().feed(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert out.endswith(b"Content-Length: %d\r\n\r\n" % len(HELLO_BODY))


def test_keep_alive_rules():
    s = HttpSession()
    out = s.feed(b"GET / HTTP/1.0\r\n\r\n")
    assert b"Connection: close" in out and s.closing and not s.linger
    s = HttpSession()
    out = s.feed(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert b"Connection: keep-alive" in out and not s.closing
    s = HttpSession()
    out = s.feed(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" + GET)
    assert statuses(out) == [200] and s.closing and s.linger
    assert s.feed(GET) == b""                      # nothing after a close


@pytest.mark.parametrize("raw,status", [
    (b"NOT HTTP\r\n\r\n", 400),
    (b"GET / HTTP/3.0\r\n\r\n", 505),
    (b"GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: br\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1025\r\n\r\n", 413),
    (b"GET / HTTP/1.1\r\nHost: t\r\nX: " + b"y" * 600 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: t\r\nX: " + b"y" * 600, 431),       # incomplete, too long
])
def test_errors(raw, status):
    s = HttpSession(limits=Limits(max_head=512, max_body=1024))
    out = s.feed(raw)
    assert statuses(out) == [status]
    assert b"Connection: close" in out
    assert s.closing and s.linger and s.status == status


def test_body_limit_decided_before_body():
    s = HttpSession()
    out = s.feed(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1073741824\r\n\r\n")
    assert statuses(out) == [413]


def test_chunked_over_limit():
    s = HttpSession(limits=Limits(max_body=10))
    out = s.feed(chunked(b"123456", b"789012"))
    assert statuses(out) == [413]


def test_timer_decisions():
    s = HttpSession()
    s.feed(b"GET / HT")
    assert s.arm is True and s.busy                 # head started
    s.feed(b"TP/1.1\r\nHost: t\r\n")
    assert s.arm is None                            # same head: keep deadline
    out = s.feed(b"\r\n")
    assert statuses(out) == [200] and s.arm is False and not s.busy
    s.feed(GET + b"GET")                            # answered, next began
    assert s.arm is True
    s = HttpSession()
    s.feed(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nab")
    assert s.arm is True                            # body: follows progress
    s.feed(b"c")
    assert s.arm is True
    s.feed(b"de")
    assert s.arm is False
    assert s.timeout() == b""                       # idle: closes quietly
    assert s.closing
    assert s.feed(GET) == b""                       # and answers no more


def test_timeout_mid_request_is_408():
    s = HttpSession()
    s.feed(b"GET / HTTP/1.1\r\nHost")
    out = s.timeout()
    assert statuses(out) == [408] and s.closing


def test_expect_continue():
    s = HttpSession()
    out = s.feed(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n"
                 b"Expect: 100-continue\r\n\r\n")
    assert out == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert s.feed(b"ok").endswith(b"\r\n\r\nok")


def test_drain():
    s = HttpSession()
    s.feed(GET)
    assert s.drain() is True                        # idle: close now
    assert s.feed(GET) == b""
    s = HttpSession()
    s.feed(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n")
    assert s.drain() is False                       # finish the request
    out = s.feed(b"ok")
    assert b"Connection: close" in out and s.closing


# ------------------------------------------------- splitting never matters

MESSAGES = [
    GET, post(b""), post(b"body bytes"), b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\n",
    chunked(b"abc", b"defgh"), chunked(), b"\r\n" + GET,
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nxyz",
]
ENDINGS = [b"", GET.replace(b"1.1", b"1.0"), b"BAD REQUEST\r\n\r\n",
           b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" + GET,
           b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999\r\n\r\n"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(MESSAGES), max_size=8),
       st.sampled_from(ENDINGS), st.data())
def test_any_split_gives_the_same_answers(messages, ending, data):
    stream = b"".join(messages) + ending
    whole = norm(feed_all([stream]))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    pieces = split_at(stream, cuts)
    pieces = [p for p in pieces if p]
    # 100 Continue is sent only while the body is still missing, so it
    # depends on the split; every final answer must not.
    def finals(out):
        return out.replace(b"HTTP/1.1 100 Continue\r\n\r\n", b"")
    assert finals(norm(feed_all(pieces))) == finals(whole)
    assert statuses(finals(whole)).count(200) >= len(messages)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.data())
def test_garbage_never_raises(junk, data):
    s = HttpSession(limits=Limits(max_head=256, max_body=64))
    cut = data.draw(st.integers(0, len(junk)))
    out = s.feed(junk[:cut]) + s.feed(junk[cut:])
    for code in statuses(out):
        assert code in (100, 200, 400, 413, 431, 501, 505)

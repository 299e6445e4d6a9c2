"""Property tests of pyepoll.http's parser and chunked decoder (Hypothesis).

- A valid request head, generated from its parts, parses back to exactly
  those parts, whatever follows it and wherever it starts in the buffer;
  every proper prefix (the head arriving split at any point) is
  INCOMPLETE.
- Any bytes at all, and valid heads with a byte changed, inserted or
  removed: parse never raises and answers a head length within the
  buffer, INCOMPLETE, or an error code the server maps to a 4xx (or 505
  for a well-formed but unsupported version); a prefix answers INCOMPLETE
  or the same as the whole (errors are found at the first byte that
  proves them).
- Chunked bodies decode to the same payload however they are split; any
  bytes decode or raise ValueError, nothing else.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pyepoll import http

from conftest import split_at

pytestmark = pytest.mark.timeout(300)

# What the reference server answers for each code.
STATUS_OF = {http.BAD: 400, http.TOO_MANY: 431, http.BAD_LENGTH: 400,
             http.BAD_VERSION: 505}

TCHAR = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
tokens = st.binary(min_size=1, max_size=12).map(
    lambda b: bytes(TCHAR[x % len(TCHAR)] for x in b))
# Target: visible ASCII, no space.
targets = st.binary(min_size=0, max_size=40).map(
    lambda b: b"/" + bytes(0x21 + x % 94 for x in b))
# Field value bytes: visible ASCII, SP, HTAB and obs-text, trimmed later.
VCHAR = bytes(range(0x21, 0x7F)) + bytes(range(0x80, 0x100))
values = st.binary(max_size=30).map(
    lambda b: bytes((VCHAR + b" \t")[x % (len(VCHAR) + 2)] for x in b))
# Names the parser interprets; the generator leaves them out so flags are
# known (they have their own tests).
SPECIAL = {b"content-length", b"transfer-encoding", b"connection", b"expect",
           b"upgrade", b"host"}
ows = st.sampled_from([b"", b" ", b"\t", b"  ", b" \t"])


@st.composite
def heads(draw, max_headers=20):
    method = draw(tokens)
    target = draw(targets)
    minor = draw(st.sampled_from([0, 1]))
    hdrs = []
    for _ in range(draw(st.integers(0, max_headers))):
        name = draw(tokens)
        assume(name.lower() not in SPECIAL)
        value = draw(values).strip(b" \t")
        hdrs.append((name, value, draw(ows), draw(ows)))
    cl = draw(st.none() | st.integers(0, 2**63))
    if cl is not None:
        hdrs.insert(draw(st.integers(0, len(hdrs))),
                    (b"Content-Length", b"%d" % cl, draw(ows), draw(ows)))
    blank = draw(st.sampled_from([b"", b"\r\n", b"\r\n\r\n"]))
    raw = blank + b"%s %s HTTP/1.%d\r\n" % (method, target, minor)
    for name, value, pre, post in hdrs:
        raw += name + b":" + pre + value + post + b"\r\n"
    raw += b"\r\n"
    return raw, method, target, minor, [(n, v) for n, v, _, _ in hdrs], cl


def _check_answer(rc: int, buf_len: int) -> None:
    if rc > 0:
        assert rc <= buf_len
    else:
        assert rc == http.INCOMPLETE or rc in STATUS_OF, rc


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.filter_too_much,
                                 HealthCheck.too_slow])
@given(heads(), st.binary(max_size=40), st.binary(max_size=8))
def test_valid_head_round_trips(head, after, before):
    raw, method, target, minor, hdrs, cl = head
    p = http.RequestParser(64)
    buf = before + raw + after
    for b in (buf, bytearray(buf), memoryview(buf)):
        assert p.parse(b, len(before)) == len(raw)
        mo, ml = p.method
        to, tl = p.target
        assert bytes(buf[mo:mo + ml]) == method
        assert bytes(buf[to:to + tl]) == target
        assert p.minor == minor
        assert p.headers(b) == hdrs
        assert p.nheaders == len(hdrs)
        # No Host was generated: RFC 9112 3.2 makes that a 1.1 error only.
        assert bool(p.flags & http.HOST_BAD) == (minor == 1)
        assert bool(p.flags & http.CONNECT) == (method == b"CONNECT")
        if cl is None:
            assert not p.flags & http.HAS_CL
        else:
            assert p.flags & http.HAS_CL and p.content_length == cl
    # Split at every point: the first piece alone is incomplete.
    for cut in range(len(raw)):
        assert p.parse(raw[:cut]) == http.INCOMPLETE, cut


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.filter_too_much])
@given(heads(max_headers=12), st.integers(1, 11))
def test_too_many_headers_is_431_material(head, limit):
    raw, _, _, _, hdrs, _ = head
    p = http.RequestParser(limit)
    rc = p.parse(raw)
    if len(hdrs) <= limit:
        assert rc == len(raw)
    else:
        assert rc == http.TOO_MANY
        assert STATUS_OF[rc] == 431


def _prefix_consistent(p: http.RequestParser, data: bytes) -> None:
    whole = p.parse(data)
    _check_answer(whole, len(data))
    for cut in range(len(data)):
        part = p.parse(data[:cut])
        _check_answer(part, cut)
        if whole > 0 and cut >= whole:
            assert part == whole          # the head is all there already
        elif part != http.INCOMPLETE:
            assert part == whole, (cut, part, whole)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise(data):
    p = http.RequestParser(8)
    _prefix_consistent(p, data)


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.filter_too_much,
                                 HealthCheck.too_slow])
@given(heads(max_headers=6), st.data())
def test_mutated_heads(head, data):
    raw = bytearray(head[0])
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(raw) - 1))
        how = data.draw(st.sampled_from(["set", "insert", "delete"]))
        byte = data.draw(st.sampled_from(
            [0, 9, 10, 13, 32, 58, 0x7F, 0xFF, ord("a"), ord("/")]))
        if how == "set":
            raw[i] = byte
        elif how == "insert":
            raw.insert(i, byte)
        elif len(raw) > 1:
            del raw[i]
    _prefix_consistent(http.RequestParser(8), bytes(raw))


def test_start_out_of_range_is_valueerror():
    p = http.RequestParser()
    for start in (-1, 5):
        with pytest.raises(ValueError, match="start out of range"):
            p.parse(bytearray(b"GET"), start)
    with pytest.raises(ValueError, match="max_headers"):
        http.RequestParser(0)
    with pytest.raises(TypeError):
        p.parse("GET / HTTP/1.1\r\n\r\n")      # str is not a buffer


# ----------------------------------------------------------------- chunked

def _encode(chunks, ext, trailers):
    out = b""
    for c in chunks:
        out += b"%x%s\r\n%s\r\n" % (len(c), ext, c)
    return out + b"0\r\n" + b"".join(b"%s: v\r\n" % t for t in trailers) \
        + b"\r\n"


def _decode_pieces(pieces):
    d = http.ChunkedDecoder()
    payload, rest = b"", b""
    for piece in pieces:
        if d.done:
            rest += piece
            continue
        buf = bytearray(piece)
        n, used = d.decode(buf)
        payload += bytes(buf[:n])
        if d.done:
            rest += piece[used:]
        else:
            assert used == len(piece)
    return payload, d.done, rest


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=40), max_size=6),
       st.sampled_from([b"", b";a=b", b";x"]),
       st.lists(tokens, max_size=2), st.binary(max_size=10), st.data())
def test_chunked_any_split(chunks, ext, trailers, after, data):
    body = _encode(chunks, ext, trailers)
    stream = body + after
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    pieces = split_at(stream, cuts)
    payload, done, rest = _decode_pieces(pieces)
    assert done and payload == b"".join(chunks) and rest == after


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=120), st.integers(0, 120))
def test_chunked_random_bytes(data, cut):
    cut = min(cut, len(data))
    try:
        whole = _decode_pieces([data])
    except ValueError:
        whole = None
    try:
        split = _decode_pieces([data[:cut], data[cut:]])
    except ValueError:
        split = None
    # Split or not, the same payload and the same verdict.
    assert whole == split

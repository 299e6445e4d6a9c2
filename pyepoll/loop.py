"""pyepoll.Loop: a connection loop whose accept/read/write path runs in C.

Python sees batches of ``(kind, handle, arg)`` events and decides only what
it must: what to send back, when to close.  Bytes move between the sockets
and per-connection rings in C; :meth:`Loop.recv` copies them out once,
:meth:`Loop.send` hands them in without a copy in Python.

Handles are ints (slot | generation << 32).  Every connection that was
reported with :data:`EV_OPEN` is reported exactly once with
:data:`EV_CLOSED`, after which its handle is stale: it never touches a
connection that later reused the slot or the descriptor (what a method
then does is listed below).

Threads: a Loop belongs to one thread.  Only :meth:`Loop.wakeup` and
:meth:`Loop.close` may be called from another; any other method called
while a thread is inside the loop raises ``OSError(EBUSY)`` and changes
nothing (the C core takes a flag with one atomic exchange per call), so a
second waiter or a send from a worker thread is an error, never corrupted
memory.

A call on a connection that has closed:

* what cannot lose anything is a silent no-op, because a batch may report
  an event for a connection whose ``EV_CLOSED`` comes later in the same or
  the next batch, and the caller cannot know: :meth:`Loop.close_connection`,
  :meth:`Loop.shutdown_write`, :meth:`Loop.pause_reading`,
  :meth:`Loop.resume_reading`, :meth:`Loop.arm_read_timeout`,
  :meth:`Loop.set_token` and ``queue_echo``;
* what would lose bytes or has no answer raises :class:`StaleHandleError`:
  :meth:`Loop.send`, :meth:`Loop.reply`, :meth:`Loop.recv`,
  :meth:`Loop.recv_into`, :meth:`Loop.buffered`, :meth:`Loop.peer`,
  :meth:`Loop.fileno` and :meth:`Loop.get_token`.
"""
from __future__ import annotations

import array
import errno
import logging
import math
import os
import socket
import struct
import sys
import time
import weakref
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from ._binding import (StaleHandleError, WakeupPipe, ffi, fileno_of, lib,
                       load_speedups, raise_errno, run_signal_handlers)
from ._poller import (
    ForkError, available_backends, best_backend, timeout_to_ms,
)

__all__ = [
    "Loop", "StaleHandleError",
    "EV_OPEN", "EV_DATA", "EV_EOF", "EV_DRAINED", "EV_WRITE_FULL",
    "EV_READ_TIMEOUT", "EV_CLOSED", "EV_WAKEUP",
]

EV_OPEN: int = lib.PE_EV_OPEN
"""A connection was accepted; ``arg`` is the listener id."""
EV_DATA: int = lib.PE_EV_DATA
"""Bytes are buffered for reading; ``arg`` is how many."""
EV_EOF: int = lib.PE_EV_EOF
"""The peer shut down its writing side; sending still works."""
EV_DRAINED: int = lib.PE_EV_DRAINED
"""Output queued by a partial send has all been written."""
EV_WRITE_FULL: int = lib.PE_EV_WRITE_FULL
"""Queued output crossed ``output_high``; ``arg`` is the bytes queued."""
EV_READ_TIMEOUT: int = lib.PE_EV_READ_TIMEOUT
"""An armed read deadline passed; the connection is still open."""
EV_CLOSED: int = lib.PE_EV_CLOSED
"""The connection is gone; ``arg`` is 0 or an errno.  The handle is stale."""
EV_WAKEUP: int = lib.PE_EV_WAKEUP
""":meth:`Loop.wakeup` was called; the handle is 0."""

_TRIGGERS = {"level": 0, "edge": 1}
_OVERFLOWS = {"backlog": lib.PE_OVERFLOW_BACKLOG, "close": lib.PE_OVERFLOW_CLOSE}
_CLOSE_MODES = {"flush": lib.PE_CLOSE_FLUSH, "now": lib.PE_CLOSE_NOW,
                "abort": lib.PE_CLOSE_ABORT}
_STATS = ("conns_open", "accepted", "closed", "timed_out", "refused",
          "accept_emfile", "bytes_in", "bytes_out", "syscalls", "events",
          "canned")
_U32_MAX = 0xFFFFFFFF
_MS_MAX = 0x7FFFFFFF
_MAX_CONNECTIONS = 0x7FFFFFF0   # PE_CT_MAX in csrc/loop/conntable.h
_MAX_BATCH = 1 << 20
_HOSTLEN = 64                   # > INET6_ADDRSTRLEN (46)
# Pending signal handlers run only at a call on PyPy (run_signal_handlers).
_HANDLERS_NEED_A_CALL = sys.implementation.name == "pypy"
_BATCH_BYTES = 256 * 1024       # wait_batch's buffer unless input_high is more
# queue_echo's array: 'L' where it is 64 bits, since CPython converts an int
# to unsigned long with a digit loop but to unsigned long long through the
# generic byte-array path (measured: 290 instructions a handle).
_HANDLE_CODE = "L" if array.array("L").itemsize == 8 else "Q"

# Hot-path names as module globals: CPython caches global lookups in the
# instruction (3.11: ~0 ns), while keyword-only defaults cost a dict lookup
# per call (measured +22 ns a call), so these are not bound as defaults.
_run = lib.pe_loop_run
_run_into = lib.pe_loop_run_into
_run_repeat = lib.pe_loop_run_batch_repeat
_read = lib.pe_loop_read
_send = lib.pe_loop_send
_reply = lib.pe_loop_reply
_echo = lib.pe_loop_echo
_from_buffer = ffi.from_buffer
_monotonic = time.monotonic
# The first event of a batch as one tuple: (kind, arg, handle) of a
# struct pe_loop_event, (kind, handle, arg, off) of a pe_loop_bevent.
_unpack_event = struct.Struct("=IIQ").unpack_from
_unpack_bevent = struct.Struct("=4Q").unpack_from
_iter_bevents = struct.Struct("=4Q").iter_unpack

# wait, recv, wait_batch, send and reply in C (csrc/cpython/loop_calls.c),
# CPython only: None on PyPy or with PYEPOLL_SPEEDUPS=0, where the Python
# code below runs.
_sp: Any = load_speedups()
_LoopCalls: Any = None if _sp is None else _sp.LoopCalls
_CALL_ADDRS = tuple(int(ffi.cast("uintptr_t", ffi.addressof(lib, name)))
                    for name in ("pe_loop_run_batch_repeat", "pe_loop_send",
                                 "pe_loop_reply", "pe_loop_run",
                                 "pe_loop_read", "pe_loop_unget"))


def _address(cdata: Any) -> int:
    return int(ffi.cast("uintptr_t", cdata))


_log = logging.getLogger("pyepoll.loop")

# Loops alive in this process, so that a fork can disarm them in the child.
_live: "weakref.WeakSet[Loop]" = weakref.WeakSet()
# C loops a forked child must never free: freeing closes descriptors by
# number, and a kqueue's number may name an unrelated file in the child.
_inherited: List[Any] = []


def _after_fork_in_child() -> None:
    for loop in list(_live):
        loop._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _size(name: str, value: Any, minimum: int, maximum: int = _U32_MAX) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum or value > maximum:
        raise ValueError(
            f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


def _seconds_to_ms(name: str, value: Optional[float]) -> int:
    """A timeout in seconds -> milliseconds for the C core (0 means none).
    Rounded up, so a deadline never fires early."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{name} must be a number of seconds or None, not "
            f"{type(value).__name__}")
    if math.isnan(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds or "
                         f"None, got {value!r}")
    ms = math.ceil(value * 1000.0)
    if ms > _MS_MAX:
        raise OverflowError(f"{name} is too large ({value!r} s)")
    return int(ms)


def _busy_poll_us(value: Optional[float]) -> int:
    """Loop's busy_poll in seconds -> microseconds for the C core (0: off)."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"busy_poll must be a number of seconds or None, "
                        f"not {type(value).__name__}")
    if not 0 <= value <= 1:             # NaN fails both
        raise ValueError(f"busy_poll must be between 0 and 1 second, got "
                         f"{value!r}")
    return int(math.ceil(value * 1e6))


def _choice(name: str, value: Any, table: Dict[str, int]) -> int:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    try:
        return table[value]
    except KeyError:
        raise ValueError(
            f"{name} must be one of {', '.join(map(repr, table))}, "
            f"not {value!r}") from None


def _raise_busy(what: str) -> None:
    raise OSError(errno.EBUSY,
                  f"Loop.{what}(): another thread is inside this loop (a Loop "
                  f"belongs to one thread; only wakeup() and close() may be "
                  f"called from others)")


def _check(rc: int, what: str) -> int:
    """``rc`` if it is not negative, else the exception for ``-rc``."""
    if rc < 0:
        if rc == -errno.EBUSY:
            _raise_busy(what)
        raise_errno(-rc, what)
    return rc


def _control(rc: int, what: str) -> None:
    """Like :func:`_check` for the calls that are no-ops on a connection
    that has closed (see the module docstring)."""
    if rc < 0 and rc != -errno.ESTALE:
        _check(rc, what)


class Loop:
    """A connection loop: listeners, a fixed-capacity connection table,
    byte buffers per connection and idle/read timeouts, all in C.

    ``trigger`` is ``"level"`` or ``"edge"`` (epoll and kqueue only).
    ``max_connections`` bounds the table; beyond it ``overflow="backlog"``
    stops accepting (the kernel backlog holds newcomers) and ``"close"``
    accepts and closes them at once (counted as ``refused``).
    ``idle_timeout`` (seconds) closes a connection with no bytes either way
    (:data:`EV_CLOSED` with ``ETIMEDOUT``); ``read_timeout`` is the
    deadline of :meth:`arm_read_timeout`.  Reading pauses when
    ``input_high`` bytes are unread and resumes below ``input_low``;
    :data:`EV_WRITE_FULL` is reported above ``output_high`` queued bytes
    and :meth:`send` refuses to queue beyond ``output_max``.  With
    ``echo=True`` the C core sends back whatever it reads (no
    :data:`EV_DATA`).  ``batch`` is the most events one :meth:`wait`
    returns; the rest stay queued for the next.  ``busy_poll`` (seconds,
    at most 1; None: off) makes a wait that would sleep poll first,
    without sleeping, for up to that long, while the last wait ended
    within that time (a wait that polled in vain, or slept longer, makes
    the next one sleep at once, so sparse traffic never polls): under
    dense traffic the next request is found by a poll rather than by
    waking a sleeping thread, whose wake-up is what a server's tail
    latency is made of; the price is the CPU spent polling where the
    other side is the slow one.

    ``queue_echo(h)`` queues, for a handle whose :data:`EV_DATA` came in
    the last :meth:`wait_batch`, a reply made of exactly those bytes (an
    echo); all queued replies go out in one C call before the next
    :meth:`wait_batch` or :meth:`wait`, or before any other send, reply,
    close or shutdown on this loop, so the bytes of a connection keep
    their order.  A handle that is stale by then, or whose DATA was not in
    that batch, is skipped; a reply the peer can no longer take closes the
    connection (:data:`EV_CLOSED` with the errno, ``ENOBUFS`` beyond
    ``output_max``).  It is the bound ``append`` of a 64-bit ``array``, so
    a call costs no Python frame: TypeError/OverflowError for what is not
    an int in [0, 2**64).

    After ``fork()`` a loop made before it raises :class:`ForkError` in the
    child on every call (its sockets belong to the parent too; a child
    that waited would take the parent's bytes); ``close()`` there does
    nothing.  Make a new Loop in the child.
    """

    __slots__ = ("_p", "_ev", "_evbuf", "_vi", "_vq", "_batch", "_rbuf",
                 "_rbytes", "_in_high", "_bev", "_bevbuf", "_bq", "_bbuf",
                 "_bview", "_bsize",
                 "_echoq", "queue_echo", "_eq", "_eqv",
                 "_out_max", "_backend", "_trigger", "_echo", "_listeners",
                 "_owned", "_u32a", "_u32b",
                 "_pid_fork", "_fast", "_stopping", "_sigwake",
                 "_u64", "_int", "_host", "_stats", "__weakref__")

    def __init__(self, *, backend: Optional[str] = None,
                 trigger: str = "level", max_connections: int = 1024,
                 overflow: str = "backlog",
                 idle_timeout: Optional[float] = None,
                 read_timeout: Optional[float] = None,
                 input_high: int = 65536, input_low: int = 16384,
                 output_high: int = 65536, output_max: int = 16 * 2**20,
                 accept_batch: int = 64, nodelay: bool = True,
                 echo: bool = False, batch: int = 1024,
                 busy_poll: Optional[float] = None) -> None:
        self._p: Any = None
        self._pid_fork: Optional[int] = None
        self._sigwake: Optional[WakeupPipe] = None
        self._listeners: Dict[int, socket.socket] = {}
        self._owned: Dict[int, socket.socket] = {}
        if backend is not None:
            if not isinstance(backend, str):
                raise TypeError(f"backend must be a str or None, not "
                                f"{type(backend).__name__}")
            if backend not in ("epoll", "kqueue", "poll", "select"):
                raise ValueError(f"unknown backend {backend!r}; expected one "
                                 f"of epoll, kqueue, poll, select")
        edge = _choice("trigger", trigger, _TRIGGERS)
        cfg = ffi.new("struct pe_loop_config *")
        lib.pe_loop_config_init(cfg)
        cfg.edge = edge
        cfg.max_conns = _size("max_connections", max_connections, 1,
                              _MAX_CONNECTIONS)
        cfg.overflow = _choice("overflow", overflow, _OVERFLOWS)
        cfg.idle_timeout_ms = _seconds_to_ms("idle_timeout", idle_timeout)
        cfg.read_timeout_ms = _seconds_to_ms("read_timeout", read_timeout)
        cfg.busy_poll_us = _busy_poll_us(busy_poll)
        cfg.in_high = _size("input_high", input_high, 1)
        cfg.in_low = _size("input_low", input_low, 0)
        if input_low > input_high:
            raise ValueError(f"input_low ({input_low}) must not exceed "
                             f"input_high ({input_high})")
        cfg.out_high = _size("output_high", output_high, 0)
        cfg.out_max = _size("output_max", output_max, 1)
        cfg.accept_batch = _size("accept_batch", accept_batch, 1)
        cfg.nodelay = 1 if nodelay else 0
        cfg.echo = 1 if echo else 0
        self._batch = _size("batch", batch, 1, _MAX_BATCH)
        if backend is None:
            backend = best_backend()
        name = ffi.new("char[]", backend.encode())
        cfg.backend = name
        err = ffi.new("int *")
        p = lib.pe_loop_new(cfg, err)
        if p == ffi.NULL:
            rc = err[0]
            if rc == -errno.ENOSYS:
                raise ValueError(
                    f"backend {backend!r} is not available here; "
                    f"available: {', '.join(available_backends())}")
            if rc == -errno.EOPNOTSUPP:
                raise ValueError(
                    f"trigger='edge' is not supported by the "
                    f"{backend} backend; "
                    f"use trigger='level'")
            if rc == -errno.EINVAL:
                raise ValueError("invalid loop configuration")
            _check(rc, "creating the loop")
        self._p = ffi.gc(p, lib.pe_loop_free)
        _live.add(self)
        self._backend = backend
        self._trigger = trigger
        self._echo = bool(echo)
        self._in_high = input_high
        self._out_max = output_max
        self._ev = ffi.new("struct pe_loop_event[]", self._batch)
        # One buffer, two views: 32-bit words for kind/arg, 64-bit words for
        # handles.  An event is 4 words or 2 double words.
        self._evbuf = ffi.buffer(self._ev)
        raw = memoryview(self._evbuf)
        self._vi = raw.cast("I")
        self._vq = raw.cast("Q")
        self._rbuf = ffi.new("char[]", input_high)
        # Slicing a cffi buffer object makes the bytes in one copy, faster
        # than ffi.unpack or a memoryview slice's tobytes().
        self._rbytes = ffi.buffer(self._rbuf)
        # wait_batch's buffer and offsets: made on first use, so a loop
        # that never calls it does not pay for them.
        self._bev: Any = None
        self._bevbuf: Any = None
        self._bq: Any = None
        self._eq: Any = None
        self._eqv: Any = None
        self._bbuf: Any = None
        self._bview: Any = None
        self._bsize = max(input_high, _BATCH_BYTES)
        self._echoq = array.array(_HANDLE_CODE)
        self.queue_echo: Callable[[int], None] = self._echoq.append
        # The C calls of this loop; they hold the cffi owner of p too, so
        # the struct outlives a call that is inside when close() comes.
        self._stopping = False          # stop() was called (serve)
        self._fast: Any = None
        if _LoopCalls is not None:
            self._fast = _LoopCalls(
                self, _address(p), self._p, self._echoq, _CALL_ADDRS,
                _FALLBACKS, (_address(self._ev), self._batch,
                             _address(self._rbuf), input_high,
                             (self._ev, self._rbuf)))
        self._u32a = ffi.new("uint32_t *")
        self._u32b = ffi.new("uint32_t *")
        self._u64 = ffi.new("uint64_t *")
        self._int = ffi.new("int *")
        self._host = ffi.new("char[]", _HOSTLEN)
        self._stats = ffi.new("struct pe_loop_stats *")

    # -- state -------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True after :meth:`close` (or, in a forked child, always)."""
        return self._p is None

    @property
    def backend(self) -> str:
        """The readiness backend in use."""
        return self._backend

    @property
    def trigger(self) -> str:
        """``"level"`` or ``"edge"``."""
        return self._trigger

    def _check_open(self) -> Any:
        p = self._p
        if p is None:
            self._raise_closed()
        return p

    def _raise_closed(self) -> None:
        if self._pid_fork is not None:
            raise ForkError(
                f"this Loop was created in process {self._pid_fork}, before "
                f"fork(); its sockets are shared with that process, so "
                f"create a new Loop in the child (pid {os.getpid()})")
        raise ValueError("I/O operation on closed loop")

    def _forked(self) -> None:
        # Every backend: even a poll or select loop would read the bytes of
        # sockets the parent owns.  The C loop is kept, never freed, in the
        # child (see _inherited); close() there does nothing.
        p = self._p
        if p is None:
            return
        _inherited.append(p)
        if self._fast is not None:
            self._fast.detach()
        self._pid_fork = os.getppid()
        self._p = None
        self._owned = {}
        self._listeners = {}

    def close(self) -> None:
        """Close every connection (no events), stop listening, and close the
        sockets :meth:`listen` created (not those given to
        :meth:`add_listener`).  Idempotent.  Called while another thread is
        blocked in :meth:`wait`, it wakes that thread, which finishes the
        close as its wait returns."""
        p = self._p
        if p is None:
            return
        self._p = None
        if self._fast is not None:
            self._fast.detach()
        # The C struct itself is freed with the last reference to p (a
        # thread inside a call holds one), so no call can reach freed memory.
        if lib.pe_loop_teardown(p) == 0:
            self._close_owned()
        self._sigwake_off()

    def _close_owned(self) -> None:
        # After the C teardown: a listening socket's number must not be
        # reused while a run could still watch it.
        owned, self._owned = self._owned, {}
        self._listeners = {}
        for sock in owned.values():
            sock.close()

    def __enter__(self) -> "Loop":
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._p is None else "open"
        return (f"<pyepoll.Loop backend={self._backend!r} "
                f"trigger={self._trigger!r} {state}>")

    # -- listeners -----------------------------------------------------------

    def listen(self, host: Optional[str] = "127.0.0.1", port: int = 0, *,
               backlog: int = 1024, reuse_port: bool = False) -> int:
        """Create a listening TCP socket on ``host`` (an IPv4 or IPv6 address
        or a name; None for every address) and ``port`` (0: any free port), add it, and return
        its listener id.  The loop owns the socket: :meth:`remove_listener`
        and :meth:`close` close it."""
        self._check_open()
        if host is not None and not isinstance(host, str):
            raise TypeError(f"host must be a str or None, not "
                            f"{type(host).__name__}")
        _size("port", port, 0, 65535)
        _size("backlog", backlog, 0, 0x7FFFFFFF)
        if reuse_port and not hasattr(socket, "SO_REUSEPORT"):
            raise ValueError("reuse_port=True: SO_REUSEPORT is not "
                             "available on this platform")
        infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC,
                                   socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
        last: Optional[OSError] = None
        for family, type_, proto, _, addr in infos:
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            sock = socket.socket(family, type_, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind(addr)
                sock.listen(backlog)
                sock.setblocking(False)
                lid = self.add_listener(sock)
            except OSError as exc:
                sock.close()
                last = exc
                continue
            except BaseException:
                sock.close()
                raise
            self._owned[lid] = sock
            return lid
        if last is not None:
            raise last
        raise OSError(errno.EADDRNOTAVAIL,
                      f"no IPv4 or IPv6 address for {host!r}")

    def add_listener(self, sock: Any) -> int:
        """Accept connections from an existing listening socket (an object
        with ``fileno()``, or a descriptor).  The caller keeps owning it; the
        loop holds a reference while it is registered and makes it
        non-blocking.  FileExistsError if the loop already watches it."""
        p = self._check_open()
        fd = fileno_of(sock)
        if isinstance(sock, socket.socket):
            if sock.type != socket.SOCK_STREAM:
                raise ValueError("add_listener needs a SOCK_STREAM socket")
            if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                raise ValueError("socket is not listening (call listen())")
        lid = _check(lib.pe_loop_add_listener(p, fd), f"listener fd {fd}")
        self._listeners[lid] = sock
        return lid

    def remove_listener(self, lid: int) -> None:
        """Stop accepting on listener ``lid`` (connections already accepted
        go on: a graceful drain).  A socket :meth:`listen` made is closed.
        KeyError for an unknown id."""
        p = self._check_open()
        _size("listener id", lid, 0, 0x7FFFFFFF)
        rc = lib.pe_loop_remove_listener(p, lid)
        if rc == -errno.EBUSY:
            _raise_busy("remove_listener")
        if rc < 0:
            raise KeyError(f"no listener with id {lid}")
        self._listeners.pop(lid, None)
        sock = self._owned.pop(lid, None)
        if sock is not None:
            sock.close()

    def sockname(self, lid: int) -> Tuple[str, int]:
        """``(host, port)`` where listener ``lid`` is bound."""
        self._check_open()
        try:
            sock = self._listeners[lid]
        except (KeyError, TypeError):
            if not isinstance(lid, int):
                raise TypeError(f"listener id must be an int, not "
                                f"{type(lid).__name__}") from None
            raise KeyError(f"no listener with id {lid}") from None
        if not isinstance(sock, socket.socket):
            fd = fileno_of(sock)
            # PyPy's socket(fileno=) makes the file blocking, which would
            # stall the loop's accept: keep the mode the loop set.
            blocking = os.get_blocking(fd)
            sock = socket.socket(fileno=fd)
            try:
                addr = sock.getsockname()
            finally:
                sock.detach()
                os.set_blocking(fd, blocking)
        else:
            addr = sock.getsockname()
        return addr[0], addr[1]

    # -- the loop ------------------------------------------------------------

    def wait(self, timeout: Optional[float] = None
             ) -> List[Tuple[int, int, int]]:
        """Do all I/O that is ready and return the events as a list of
        ``(kind, handle, arg)``.

        Blocks until there is at least one event or ``timeout`` seconds
        pass (None: no limit; 0: poll), and then returns an empty list.  At
        most ``batch`` events are returned; the rest come with the next
        call, which does not block.  A signal interrupts the wait only if
        its handler raises (PEP 475).  The GIL is released while waiting.
        """
        ms = -1 if timeout is None else timeout_to_ms(timeout)
        p = self._p
        if p is None:
            self._raise_closed()
        if self._echoq:
            self._flush_echo(p)
        start = _monotonic() if ms > 0 else 0.0
        n = _run(p, self._ev, self._batch, ms)
        if n <= 0 and (n or ms) or self._p is None:
            return self._wait_tail(n, ms, start)
        if n == 1:
            # One event: unpacked in one C call (see wait_batch).
            kind, arg, h = _unpack_event(self._evbuf)
            return [(kind, h, arg)]
        return self._wait_events(n)

    def _wait_tail(self, n: int, ms: int, start: float
                   ) -> List[Tuple[int, int, int]]:
        # After a run that returned nothing, an error, or while close()
        # came (wait in Python or in C, LoopCalls): what wait does from there.
        try:
            if n <= 0 and (n or ms):
                n = self._wait_slow(
                    n, None if ms < 0 else start + ms / 1000.0 if ms else 0.0)
        finally:
            if self._p is None and self._owned:
                self._close_owned()     # close() came while we waited
        return self._wait_events(n)

    def _wait_events(self, n: int) -> List[Tuple[int, int, int]]:
        n4 = n << 2
        vi = self._vi
        return list(zip(vi[0:n4:4], self._vq[1:n << 1:2], vi[1:n4:4]))

    def wait_batch(self, timeout: Optional[float] = None
                   ) -> Iterator[Tuple[int, int, int, int]]:
        """Like :meth:`wait`, but every :data:`EV_DATA` brings its bytes:
        returns an iterator of ``(kind, handle, arg, offset)`` tuples (over
        a snapshot of the batch; ``list()`` it to keep it), and for
        :data:`EV_DATA` the connection's unread bytes are
        ``batch_view[offset:offset + arg]`` -- moved there, so
        :meth:`recv` will not return them again.  No call per connection
        is needed to read.  The view's contents stay valid until the next
        :meth:`wait` or :meth:`wait_batch`; :meth:`reply` sends a part of
        it back.  ``offset`` is 0 for the other kinds."""
        # With wake_on_signals on, runs that make no event (canned answers)
        # are repeated in C: a signal still ends them (see the core's
        # pe_loop_run_batch_repeat).
        return self._wait_batch(timeout, 0 if self._sigwake is None
                                else lib.PE_RUN_AGAIN_EMPTY)

    def _wait_batch(self, timeout: Optional[float], flags: int
                    ) -> Iterator[Tuple[int, int, int, int]]:
        ms = -1 if timeout is None else timeout_to_ms(timeout)
        p = self._p
        if p is None:
            self._raise_closed()
        if self._bev is None:
            self._batch_init()
        try:
            start = _monotonic() if ms > 0 else 0.0
            q = self._echoq
            # The buffers were named to C once (_batch_init): a call
            # converts three arguments, not eight (callgrind: ~600 fewer
            # instructions a wait).
            if not q:
                n = _run_repeat(p, 0, ms, flags)
            elif len(q) == 1:
                # One echo (a one-event batch answered): one item set and
                # one pop instead of a slice copy and a slice delete
                # (callgrind: ~400 fewer instructions).
                self._eqv[0] = q.pop()
                n = _run_repeat(p, 1, ms, flags)
            elif len(q) <= self._batch:
                # The queued echoes go out in the same C call, copied into
                # C memory first (one memcpy; exporting the array with
                # ffi.from_buffer costs three times as much).
                nq = len(q)
                self._eqv[0:nq] = q
                del q[:]
                n = _run_repeat(p, nq, ms, flags)
            else:
                # More than a batch (a handle queued twice): the array is
                # exported, so cannot be resized, while C reads it.
                with _from_buffer("pe_handle[]", q) as hs:
                    n = _run_into(p, hs, len(q), self._bev, self._batch, ms,
                                  self._bbuf, self._bsize)
                del q[:]
            if n <= 0 and (n or ms):
                n = self._wait_slow(
                    n, None if ms < 0 else start + ms / 1000.0 if ms else 0.0,
                    True, flags)
        finally:
            if self._p is None and self._owned:
                self._close_owned()     # close() came while we waited
        if n == 1:
            # One event (a quiet server's every wakeup): its tuple in one
            # C call, without the slice, list and zip below (callgrind:
            # about 1,100 fewer instructions a wakeup).
            return iter((_unpack_bevent(self._bevbuf),))
        if n <= 16:
            # A few events: a copy of their bytes unpacked as it is iterated
            # (callgrind, per batch: 1,100-1,800 fewer instructions than
            # the zip below at 2-16 events; about even from 64 on).
            return _iter_bevents(self._bevbuf[0:n << 5])
        # Four 64-bit words an event: one slice copied out, one iterator
        # zipped with itself makes the tuples.  A zip, not a list: a loop
        # that unpacks each tuple lets zip reuse it (no tuple made and
        # freed per event; measured 15% of the Python cost per event).
        it = iter(self._bq[0:n << 2].tolist())
        return zip(it, it, it, it)

    def wait_batch_echo(self, timeout: Optional[float] = None
                        ) -> Iterator[Tuple[int, int, int, int]]:
        """:meth:`wait_batch` for a loop whose connections all echo: a
        batch made only of :data:`EV_DATA` events is answered by
        :meth:`queue_echo` of each handle, and the wait goes on (until
        ``timeout`` seconds in all).  Returns the first batch holding
        another kind of event, or an empty one at the timeout; a data-only
        batch is returned as it is when the time is up (or ``timeout`` is
        0), so the caller handles :data:`EV_DATA` as after
        :meth:`wait_batch`.  Signal handlers run between two waits.  With
        one client doing round trips, no Python code runs per round trip
        on CPython (the loop is in C there); with :meth:`wake_on_signals`
        on, the GIL is not taken per round trip either."""
        ms = -1 if timeout is None else timeout_to_ms(timeout)
        deadline = _monotonic() + ms / 1000.0 if ms > 0 else 0.0
        queue = self.queue_echo
        # With wake_on_signals on, data-only batches are echoed in C, run
        # after run (pe_loop_run_batch_repeat): one turn here per batch
        # that is not data only, per signal, or at the timeout.
        flags = 0 if self._sigwake is None else (lib.PE_RUN_ECHO_DATA
                                                 | lib.PE_RUN_AGAIN_EMPTY)
        while True:
            batch = list(self._wait_batch(timeout, flags))
            if not batch or not ms or self._p is None:
                return iter(batch)      # (closed meanwhile: as wait_batch)
            for event in batch:
                if event[0] != EV_DATA:
                    return iter(batch)
            if ms > 0:
                timeout = deadline - _monotonic()
                if timeout <= 0:
                    return iter(batch)
            for event in batch:
                queue(event[1])

    def _flush_echo(self, p: Any) -> None:
        q = self._echoq
        with ffi.from_buffer("pe_handle[]", q) as hs:
            rc = _echo(p, hs, len(q))
        if rc == -errno.EBUSY:
            _raise_busy("queue_echo")   # keep the queue: nothing was sent
        del q[:]

    def _batch_init(self) -> None:
        # Called with the loop open.  The C loop keeps pointers to these
        # buffers; they live as long as this object, which holds the loop.
        bev = ffi.new("struct pe_loop_bevent[]", self._batch)
        eq = ffi.new("pe_handle[]", self._batch)
        bbuf = ffi.new("char[]", self._bsize)
        _check(lib.pe_loop_batch_setup(self._p, eq, self._batch, bev,
                                       self._batch, bbuf, self._bsize),
               "wait_batch")
        self._bev = bev
        self._bevbuf = ffi.buffer(bev)
        self._bq = memoryview(self._bevbuf).cast("Q")
        self._eq = eq
        self._eqv = memoryview(ffi.buffer(eq)).cast(_HANDLE_CODE)
        self._bbuf = bbuf
        self._bview = memoryview(ffi.buffer(bbuf)).toreadonly()
        if self._fast is not None:
            self._fast.setup(_address(eq), _address(bev), self._batch,
                             (bev, eq, bbuf))

    def _batch_tail(self, n: int, ms: int, start: float
                    ) -> Iterator[Tuple[int, int, int, int]]:
        # wait_batch in C (LoopCalls) after a run that returned nothing, an
        # error, or while close() came: what wait_batch does from there.
        try:
            if n <= 0 and (n or ms):
                n = self._wait_slow(
                    n, None if ms < 0 else start + ms / 1000.0 if ms else 0.0,
                    True)
        finally:
            if self._p is None and self._owned:
                self._close_owned()     # close() came while we waited
        if n == 1:
            return iter((_unpack_bevent(self._bevbuf),))
        if n <= 16:
            return _iter_bevents(self._bevbuf[0:n << 5])
        it = iter(self._bq[0:n << 2].tolist())
        return zip(it, it, it, it)

    @property
    def batch_view(self) -> memoryview:
        """The read-only buffer :meth:`wait_batch` fills (its
        :data:`EV_DATA` bytes are ``batch_view[offset:offset + arg]``)."""
        self._check_open()
        if self._bview is None:
            self._batch_init()
        return self._bview

    def reply(self, h: int, offset: int, length: int) -> None:
        """:meth:`send` the bytes ``batch_view[offset:offset + length]``
        on ``h``: an echo-like reply made of what the last
        :meth:`wait_batch` delivered, with no buffer object to convert.
        ValueError if the range is outside the buffer."""
        p = self._p
        if p is None:
            self._raise_closed()
        if self._echoq:
            self._flush_echo(p)
        try:
            rc = _reply(p, h, offset, length)
        except (TypeError, OverflowError):
            _size("offset", offset, 0)
            _size("length", length, 0)
            raise                       # the handle was the bad argument
        if rc < 0:
            self._reply_failed(h, rc, offset, length)

    def _reply_failed(self, h: int, rc: int, offset: int, length: int
                      ) -> None:
        if rc == -errno.EINVAL:
            raise ValueError(
                f"reply range [{offset}, {offset + length}) is outside "
                f"the batch buffer ({self._bsize} bytes, filled by "
                f"wait_batch)")
        self._send_failed(h, rc)

    def _wait_slow(self, rc: int, deadline: Optional[float],
                   into: bool = False, flags: int = 0) -> int:
        # Nothing to report yet (work done in C only, e.g. echo mode), or a
        # signal: keep waiting until the deadline (None: none; 0.0: poll).
        while True:
            if rc > 0:
                return rc
            if rc == -errno.EINTR or (rc == 0 and deadline != 0.0
                                       and _HANDLERS_NEED_A_CALL):
                # One that raises ends wait (PEP 475).  A blocking run that
                # returned nothing (every read answered in C: canned
                # answers, the C echo) was interrupted by no signal that
                # came meanwhile: on PyPy its handler would wait for the
                # next event (see run_signal_handlers); CPython's
                # interpreter runs it at its next bytecode.
                run_signal_handlers()
            elif rc < 0:
                if rc == -errno.EBADF and self._p is None:
                    return 0            # close() from another thread
                if rc == -errno.EBUSY:
                    _raise_busy("wait")
                _check(rc, "waiting for events")
            if deadline is None:
                ms = -1
            elif deadline == 0.0:
                if rc == 0:
                    return 0
                ms = 0
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    return 0
                ms = math.ceil(left * 1000.0)
            p = self._p
            if p is None:
                return 0
            if into:
                rc = _run_repeat(p, 0, ms, flags)
            else:
                rc = _run(p, self._ev, self._batch, ms)

    def wakeup(self) -> None:
        """Make a blocked (or the next) :meth:`wait` return an
        :data:`EV_WAKEUP` event.  Safe from any thread."""
        p = self._check_open()
        _check(lib.pe_loop_wakeup(p), "waking the loop")

    def wake_on_signals(self, on: bool = True) -> None:
        """Have every signal wake a blocked :meth:`wait` or :meth:`serve`
        of this loop, whichever thread the kernel gives it to, so that its
        Python handler runs at once (the wait then goes on unless the
        handler raises, as after an interrupted wait).  ``False`` undoes
        it; so does :meth:`close`.

        Needed when the process has other threads: a process-directed
        signal (``kill``) may go to any thread that does not block it, and
        only the main thread's blocked call is interrupted; one taken by
        another thread is handled when the wait next returns, maybe never.
        It sets :func:`signal.set_wakeup_fd` to a pipe the loop watches
        (reading it in C, reporting nothing), so it must be called from
        the main thread, and it replaces the wakeup fd set before, which
        ``False`` puts back.

        On CPython it also lets the C loop go on from run to run without
        the GIL while they need no Python (the echoes of
        :meth:`wait_batch_echo`, :meth:`set_canned` answers): a signal
        brings it back at once, so the GIL is taken once per batch that
        Python handles, not once per round trip."""
        p = self._check_open()
        if not on:
            self._sigwake_off()
            return
        if self._sigwake is not None:
            return
        pipe = WakeupPipe()
        try:
            _check(lib.pe_loop_watch_wake(p, pipe.r, 1), "watching a pipe")
            pipe.install()
        except BaseException:
            lib.pe_loop_watch_wake(p, pipe.r, 0)
            pipe.close()
            raise
        self._sigwake = pipe
        if self._fast is not None:
            self._fast.sigwake(True)

    def _sigwake_off(self) -> None:
        pipe, self._sigwake = self._sigwake, None
        if pipe is not None and self._fast is not None:
            self._fast.sigwake(False)
        if pipe is None or not pipe.uninstall():
            return                      # off the main thread: kept open
        p = self._p
        if p is not None:
            lib.pe_loop_watch_wake(p, pipe.r, 0)
        pipe.close()

    def serve(self, on_data: Callable[[int, bytes], Any],
              on_event: Optional[Callable[[int, int, int], Any]] = None,
              timeout: Optional[float] = None) -> None:
        """Run the loop with a handler per event until :meth:`stop` is
        called (by a handler or another thread) or ``timeout`` seconds
        pass (None: no limit).

        ``on_data(h, data)`` gets each :data:`EV_DATA` connection's unread
        bytes; what it returns, if not None, is sent back on ``h`` as
        :meth:`send` sends it.  ``on_event(kind, h, arg)`` gets every other
        event; without it an :data:`EV_EOF` closes the connection
        (``"flush"``) and the other kinds are dropped.

        No client can stop it: a handler that raises an :class:`Exception`
        (or returns what :meth:`send` refuses) is logged on the
        ``pyepoll.loop`` logger and its connection aborted, and serving
        goes on; a reply to a connection that is gone is dropped (its
        :data:`EV_CLOSED` follows).  Any other exception (KeyboardInterrupt
        from a signal, SystemExit) ends ``serve`` with the events not yet
        handled put back for the next :meth:`wait` or ``serve``.  On
        CPython the loop runs in C: one call of ``on_data`` a message, and
        no other Python code."""
        if not callable(on_data):
            raise TypeError(f"on_data must be callable, not "
                            f"{type(on_data).__name__}")
        if on_event is not None and not callable(on_event):
            raise TypeError(f"on_event must be callable or None, not "
                            f"{type(on_event).__name__}")
        ms = -1 if timeout is None else timeout_to_ms(timeout)
        deadline = _monotonic() + ms / 1000.0 if ms > 0 else 0.0
        self._check_open()
        try:
            while True:
                if ms > 0:
                    left = deadline - _monotonic()
                    if left <= 0:
                        return
                    ms = math.ceil(left * 1000.0)
                fast = self._fast
                if fast is not None:
                    rc = fast.serve(on_data, on_event, ms)
                    if rc is None:
                        return          # stopped, timed out or closed
                    _check(rc, "serve")
                # One turn in Python: without the C calls, or for what the
                # C loop leaves to it (queued echoes, sent by wait).
                events = self.wait(None if ms < 0 else ms / 1000.0)
                if self._p is None:
                    return
                self._serve_events(events, on_data, on_event)
                if self._stopping or self._p is None or not ms:
                    return
        finally:
            self._stopping = False
            if self._fast is not None:
                self._fast.stop(False)

    def _serve_events(self, events: List[Tuple[int, int, int]],
                      on_data: Callable[[int, bytes], Any],
                      on_event: Optional[Callable[[int, int, int], Any]]
                      ) -> None:
        # What LoopCalls.serve does with a batch, in Python.
        for i, (kind, h, arg) in enumerate(events):
            try:
                if kind == EV_DATA:
                    try:
                        data = self.recv(h)
                    except StaleHandleError:
                        continue        # closed earlier in this batch
                    if data:
                        reply = on_data(h, data)
                        if reply is not None:
                            self._serve_reply(h, reply)
                elif on_event is not None:
                    on_event(kind, h, arg)
                elif kind == EV_EOF:
                    self.close_connection(h)
            except Exception as exc:
                self._serve_failed(exc, h)
            except BaseException:
                self._serve_unget(events, i + 1)
                raise
            if self._p is None:
                return

    def _serve_reply(self, h: int, reply: Any) -> None:
        try:
            self.send(h, reply)
        except (ConnectionError, StaleHandleError):
            pass                # gone: dropped (its EV_CLOSED follows)

    def _serve_failed(self, exc: BaseException, h: int) -> None:
        # A handler raised, or its reply was refused: the server goes on,
        # that connection does not (its state is the handler's unknown).
        _log.error("pyepoll.Loop.serve: the handler failed on connection "
                   "%#x; connection aborted", h, exc_info=exc)
        if self._p is not None and h:
            self.close_connection(h, "abort")

    def _serve_unget(self, events: List[Tuple[int, int, int]],
                     start: int) -> None:
        # Called with the exception that ends serve() being raised: the
        # events from start on go back to the loop, for the next wait.
        p = self._p
        n = len(events) - start
        if p is None or n <= 0:
            return
        ev = ffi.new("struct pe_loop_event[]", n)
        for j, (kind, h, arg) in enumerate(events[start:]):
            ev[j].kind, ev[j].handle, ev[j].arg = kind, h, arg
        rc = lib.pe_loop_unget(p, ev, n)
        if rc < 0:
            self._serve_lost(n, rc)

    def _serve_lost(self, n: int, rc: int) -> None:
        _log.error("pyepoll.Loop.serve: %d unhandled events lost (%s)",
                   n, os.strerror(-rc))

    def stop(self) -> None:
        """End :meth:`serve` after the batch it is handling (or, called
        before it, its first batch).  Safe from any thread."""
        self._stopping = True
        fast = self._fast
        if fast is not None:
            fast.stop(True)
        p = self._p
        if p is not None:
            lib.pe_loop_wakeup(p)

    # -- connections -----------------------------------------------------------

    def recv(self, h: int, max: int = -1) -> bytes:
        """Take up to ``max`` unread bytes (all of them when negative) of
        connection ``h``; ``b""`` when nothing is unread."""
        p = self._p
        if p is None:
            self._raise_closed()
        size = self._in_high
        if -1 < max < size:
            size = max
        n = _read(p, h, self._rbuf, size)
        if n > 0:
            if n == size and max < 0:
                return self._recv_rest(h, self._rbytes[:n])
            return self._rbytes[:n]
        if n < 0:
            self._recv_failed(n)
        return b""

    def _recv_failed(self, rc: int) -> None:
        _check(rc, "recv")

    def _recv_rest(self, h: int, head: bytes) -> bytes:
        # The buffer filled up: there may be more unread than input_high
        # (the core can read past it by up to one ring buffer).
        p = self._p
        if p is None:
            return head                 # close() from another thread
        parts = [head]
        size = self._in_high
        while True:
            n = lib.pe_loop_read(p, h, self._rbuf, size)
            if n <= 0:
                break
            parts.append(self._rbytes[:n])
            if n < size:
                break
        return b"".join(parts)

    def recv_into(self, h: int, buffer: Any) -> int:
        """Copy unread bytes of ``h`` into a writable buffer; return how
        many (0 when nothing is unread)."""
        p = self._check_open()
        try:
            cbuf = ffi.from_buffer(buffer, require_writable=True)
        except (TypeError, BufferError):
            raise TypeError(f"recv_into() needs a writable buffer, not "
                            f"{type(buffer).__name__}") from None
        return _check(lib.pe_loop_read(p, h, cbuf, len(cbuf)), "recv_into")

    def send(self, h: int, data: Any) -> None:
        """Queue ``data`` (bytes-like) on ``h``: written now if the socket
        takes it, the rest as it drains.  All or nothing: BufferError if it
        would queue more than ``output_max`` bytes.  BrokenPipeError after
        :meth:`shutdown_write`; ConnectionError if the peer is gone (an
        :data:`EV_CLOSED` follows)."""
        p = self._p
        if p is None:
            self._raise_closed()
        if self._echoq:
            self._flush_echo(p)
        if type(data) is bytes:
            rc = _send(p, h, data, len(data))
        else:
            rc = self._send_buffer(p, h, data)
        if rc < 0:
            self._send_failed(h, rc)

    def _send_buffer(self, p: Any, h: int, data: Any) -> int:
        if isinstance(data, str):
            raise TypeError("send() needs a bytes-like object, not str")
        try:
            cbuf = _from_buffer(data)
        except TypeError:
            raise TypeError(f"send() needs a bytes-like object, not "
                            f"{type(data).__name__}") from None
        return _send(p, h, cbuf, len(cbuf))

    def _send_failed(self, h: int, rc: int) -> None:
        if rc == -errno.ENOBUFS:
            unsent = self.buffered(h)[1]
            raise BufferError(
                f"send() would queue more than output_max ({self._out_max} "
                f"bytes; {unsent} already queued); wait for EV_DRAINED")
        _check(rc, "send")

    def close_connection(self, h: int, mode: str = "flush") -> None:
        """Close ``h``: ``"flush"`` sends queued output first (in the
        background), ``"now"`` drops it, ``"abort"`` resets (RST).  The
        handle is stale at once; :data:`EV_CLOSED` (arg 0) follows.  A
        connection that has closed already is left alone (no error)."""
        p = self._check_open()
        m = _choice("mode", mode, _CLOSE_MODES)
        if self._echoq:
            self._flush_echo(p)
        _control(lib.pe_loop_close(p, h, m), "close_connection")

    def shutdown_write(self, h: int) -> None:
        """Half-close: shut down the writing side once queued output is
        sent; reading goes on.  Idempotent."""
        p = self._check_open()
        if self._echoq:
            self._flush_echo(p)
        _control(lib.pe_loop_shutdown(p, h), "shutdown_write")

    def pause_reading(self, h: int) -> None:
        """Stop reading from ``h`` until :meth:`resume_reading`."""
        _control(lib.pe_loop_pause_reading(self._check_open(), h),
                 "pause_reading")

    def resume_reading(self, h: int) -> None:
        """Undo :meth:`pause_reading`."""
        _control(lib.pe_loop_resume_reading(self._check_open(), h),
                 "resume_reading")

    def arm_read_timeout(self, h: int, on: bool = True) -> None:
        """(Re)start the read deadline of ``h`` (``read_timeout`` seconds
        from now; :data:`EV_READ_TIMEOUT` once when it passes), or disarm it
        with ``on=False``.  Arriving bytes do not move it.  ValueError if
        the loop has no ``read_timeout``."""
        p = self._check_open()
        rc = lib.pe_loop_arm_read_timeout(p, h, 1 if on else 0)
        if rc == -errno.EINVAL:
            raise ValueError("arm_read_timeout() needs Loop(read_timeout=...)")
        _control(rc, "arm_read_timeout")

    def set_canned(self, ask: Optional[bytes], answer: bytes = b"",
                   until: float = 0.0) -> None:
        """Answer ``ask`` with ``answer`` in C, without an event: a read
        on a connection marked with :meth:`canned_mark` that brings
        exactly 1 to 64 copies of ``ask`` gets as many copies of
        ``answer`` sent back (counted in ``stats()["canned"]``), as long
        as the wall clock (:func:`time.time`) is before ``until``; other
        bytes come as :data:`EV_DATA` as usual.  Any event of a marked
        connection unmarks it.  ``None`` (or ``b""``) stops it.  Both are
        at most 4096 bytes (ValueError)."""
        p = self._check_open()
        if not ask:
            _check(lib.pe_loop_set_canned(p, ffi.NULL, 0, ffi.NULL, 0, 0),
                   "set_canned")
            return
        if type(ask) is not bytes or type(answer) is not bytes:
            raise TypeError("set_canned() needs bytes")
        if not answer or len(ask) > lib.PE_CANNED_MAX \
                or len(answer) > lib.PE_CANNED_MAX:
            raise ValueError("set_canned(): answer empty or a part over "
                             f"{lib.PE_CANNED_MAX} bytes")
        # C compares whole seconds (time() < until): rounded down, an
        # answer is never sent at or past ``until``.
        _check(lib.pe_loop_set_canned(p, ask, len(ask), answer, len(answer),
                                      math.floor(until)), "set_canned")

    def canned_mark(self, h: int, on: bool = True) -> None:
        """Mark ``h`` (or with ``on=False`` unmark it) for the answers of
        :meth:`set_canned`.  Nothing on a closed connection."""
        _control(lib.pe_loop_canned_mark(self._check_open(), h,
                                         1 if on else 0), "canned_mark")

    def set_token(self, h: int, token: int) -> None:
        """Attach an integer in [0, 2**64) to ``h``."""
        p = self._check_open()
        if not isinstance(token, int):
            raise TypeError(
                f"token must be an int, not {type(token).__name__}")
        if not 0 <= token < 2**64:
            raise OverflowError(f"token must be in [0, 2**64), got {token}")
        _control(lib.pe_loop_set_token(p, h, token), "set_token")

    def get_token(self, h: int) -> int:
        """The integer attached with :meth:`set_token` (0 if none)."""
        out = self._u64
        _check(lib.pe_loop_get_token(self._check_open(), h, out), "get_token")
        return int(out[0])

    def buffered(self, h: int) -> Tuple[int, int]:
        """``(unread, unsent)`` byte counts of ``h``."""
        a, b = self._u32a, self._u32b
        _check(lib.pe_loop_buffered(self._check_open(), h, a, b), "buffered")
        return int(a[0]), int(b[0])

    def peer(self, h: int) -> Tuple[str, int]:
        """The peer's numeric ``(host, port)``."""
        host, port = self._host, self._int
        _check(lib.pe_loop_peer(self._check_open(), h, host, _HOSTLEN, port),
              "peer")
        return ffi.string(host).decode("ascii"), int(port[0])

    def fileno(self, h: int) -> int:
        """The descriptor of ``h``.  Do not close it or read from it."""
        return _check(lib.pe_loop_fileno(self._check_open(), h), "fileno")

    def stats(self) -> Dict[str, int]:
        """Counters since the loop was made: ``conns_open`` (current),
        ``accepted``, ``closed``, ``timed_out``, ``refused``,
        ``accept_emfile``, ``bytes_in``, ``bytes_out``, ``syscalls``,
        ``events``, ``canned`` (requests :meth:`set_canned` answered)."""
        st = self._stats
        _check(lib.pe_loop_get_stats(self._check_open(), st), "stats")
        return {name: int(getattr(st, name)) for name in _STATS}


class _Hot:
    """A Loop method that is the loop's C one (LoopCalls) where it has one,
    else the Python method; ``Loop.name`` is the Python one (its doc).
    Used without pyepoll._speedups; with it, its HotMethod does this."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func
        self.name = func.__name__
        self.__doc__ = func.__doc__

    def __get__(self, obj: Any, cls: Any = None) -> Any:
        if obj is None:
            return self.func
        fast = obj._fast
        if fast is None:
            return self.func.__get__(obj, cls)
        return getattr(fast, self.name)


# LoopCalls' fallbacks, in the order of loop_calls.c's PY_* enum.
_FALLBACKS = (Loop.wait_batch, Loop._batch_tail, Loop.send,
              Loop._send_failed, Loop.reply, Loop._reply_failed,
              timeout_to_ms, _monotonic, Loop.wait, Loop._wait_tail,
              Loop.recv, Loop._recv_rest, Loop._recv_failed,
              Loop.wait_batch_echo, Loop._serve_failed,
              Loop.close_connection, Loop._serve_reply, Loop._serve_lost)
# CPython: the same descriptor in C, which keeps the bound method of the
# Loop it served last (a Python __get__ per `loop.wait` was ~1,650
# instructions; three a round trip in the README's echo handler).
_HotDescr: Any = _Hot if _sp is None else _sp.HotMethod
Loop.wait = _HotDescr(Loop.wait)  # type: ignore[assignment]
Loop.recv = _HotDescr(Loop.recv)  # type: ignore[assignment]
Loop.wait_batch = _HotDescr(Loop.wait_batch)  # type: ignore[assignment]
Loop.wait_batch_echo = _HotDescr(Loop.wait_batch_echo)  # type: ignore[assignment]
Loop.send = _HotDescr(Loop.send)  # type: ignore[assignment]
Loop.reply = _HotDescr(Loop.reply)  # type: ignore[assignment]

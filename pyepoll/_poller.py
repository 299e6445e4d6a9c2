"""pyepoll.Poller: readiness notification on epoll, kqueue, poll or select."""
from __future__ import annotations

import errno
import math
import operator
import os
import struct
import time
import weakref
from typing import Any, Dict, FrozenSet, List, Optional, Tuple

from ._binding import check, ffi, fileno_of, lib, run_signal_handlers

__all__ = [
    "Poller", "ForkError", "available_backends", "best_backend",
    "READ", "WRITE", "PRI", "ERR", "HUP", "RDHUP", "EDGE", "ONESHOT",
    "EXCLUSIVE",
]

READ: int = lib.PE_READ
WRITE: int = lib.PE_WRITE
PRI: int = lib.PE_PRI
ERR: int = lib.PE_ERR
HUP: int = lib.PE_HUP
RDHUP: int = lib.PE_RDHUP
EDGE: int = lib.PE_EDGE
ONESHOT: int = lib.PE_ONESHOT
EXCLUSIVE: int = lib.PE_EXCLUSIVE

_CONDITIONS = READ | WRITE | PRI | ERR | HUP | RDHUP
_FLAG_CAPS = (
    (EDGE, lib.PE_CAP_EDGE, "EDGE"),
    (ONESHOT, lib.PE_CAP_ONESHOT, "ONESHOT"),
    (EXCLUSIVE, lib.PE_CAP_EXCLUSIVE, "EXCLUSIVE"),
)
_FEATURES = (
    (lib.PE_CAP_EDGE, "edge"), (lib.PE_CAP_ONESHOT, "oneshot"),
    (lib.PE_CAP_EXCLUSIVE, "exclusive"), (lib.PE_CAP_FILENO, "fileno"),
    (lib.PE_CAP_RDHUP, "rdhup"), (lib.PE_CAP_PRI, "pri"),
)
_VALID = _CONDITIONS | EDGE | ONESHOT | EXCLUSIVE
_INITIAL_EVENTS = 1024  # event array slots before the first growth
_MAX_TIMEOUT_MS = 0x7FFFFFFF


class ForkError(RuntimeError):
    """A poller made before fork() was used in the child process."""


def available_backends() -> List[str]:
    """Names of the backends compiled into this build, best first."""
    return ffi.string(lib.pe_backends()).decode().split(",")


def _default_backend() -> str:
    # Read once, at import, so that Poller(), Loop() and
    # selectors.DefaultSelector agree for the whole process.
    wanted = os.environ.get("PYEPOLL_DEFAULT_BACKEND", "")
    names = available_backends()
    return wanted if wanted in names else names[0]


_DEFAULT_BACKEND = _default_backend()


def best_backend() -> str:
    """The backend ``Poller()``, ``Loop()`` and
    ``selectors.DefaultSelector`` use when none is named: the first of
    :func:`available_backends`, or the one the environment variable
    ``PYEPOLL_DEFAULT_BACKEND`` names, if it is compiled in (read at
    import; another name is ignored)."""
    return _DEFAULT_BACKEND


def timeout_to_ms(timeout: Optional[float]) -> int:
    """Seconds -> milliseconds for the kernel: None or negative blocks (-1),
    anything else is rounded up, as CPython's select.epoll.poll does, so a
    wait never returns before the requested time.  Like CPython, only floats
    and integers (objects with __index__) are accepted: TypeError for a str."""
    if timeout is None:
        return -1
    if isinstance(timeout, float):
        seconds = timeout
    else:
        try:
            seconds = operator.index(timeout)
        except TypeError:
            raise TypeError(
                f"timeout must be an integer or float or None, not "
                f"{type(timeout).__name__}"
            ) from None
    if math.isnan(seconds):
        raise ValueError("Invalid value NaN (not a number)")
    if seconds < 0:
        return -1
    ms = math.ceil(seconds * 1000.0)
    if ms > _MAX_TIMEOUT_MS:
        raise OverflowError("timeout is too large")
    return int(ms)


# Pollers alive in this process, so that a fork can disarm them in the child.
_live: "weakref.WeakSet[Poller]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for poller in list(_live):
        poller._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Poller:
    """Watch file descriptors for readiness.

    ``backend`` is one of :func:`available_backends` (``"epoll"``,
    ``"kqueue"``, ``"poll"``, ``"select"``) or None for the best.  Semantics
    are the kernel's: level-triggered registrations report again while the
    condition holds; ``EDGE`` reports a change once (read until EAGAIN);
    ``ONESHOT`` reports once until :meth:`modify` re-arms.

    After ``fork()`` a poller with kernel state (epoll, kqueue) raises
    :class:`ForkError` in the child, because a kqueue is not inherited and an
    epoll instance would be shared with the parent; ``close()`` in the child
    releases only the child's own reference.  poll and select pollers keep
    working in the child with a copy of the registrations.
    """

    __slots__ = ("_p", "_backend", "_caps", "_w", "_wt", "_cap",
                 "_pid_fork", "__weakref__")

    def __init__(self, backend: Optional[str] = None) -> None:
        self._p: Any = None
        self._w: Any = _CLOSED
        self._wt: Any = None
        self._pid_fork: Optional[int] = None
        err = ffi.new("int *")
        name = _backend_name(_DEFAULT_BACKEND if backend is None else backend)
        p = lib.pe_poller_new(name, 0, err)
        if p == ffi.NULL:
            if err[0] == -errno.ENOSYS:
                raise ValueError(
                    f"backend {backend!r} is not available here; "
                    f"available: {', '.join(available_backends())}"
                )
            check(err[0], "creating the poller")
        self._p = ffi.gc(p, lib.pe_poller_free)
        self._backend: str = ffi.string(lib.pe_poller_backend(p)).decode()
        self._caps: int = lib.pe_poller_caps(p)
        self._cap = 0
        self._grow(_INITIAL_EVENTS)
        _live.add(self)

    # -- state ---------------------------------------------------------------

    @property
    def backend(self) -> str:
        """Name of the kernel interface in use."""
        return self._backend

    @property
    def features(self) -> FrozenSet[str]:
        """What this backend honours, so callers test capabilities instead of
        guessing from the platform: a subset of ``{"edge", "oneshot",
        "exclusive", "fileno", "rdhup", "pri"}``."""
        return frozenset(name for bit, name in _FEATURES if self._caps & bit)

    @property
    def closed(self) -> bool:
        """True after :meth:`close` (or, in a forked child, always)."""
        return self._w is _CLOSED

    def _check_open(self) -> Any:
        if self._w is _CLOSED:
            self._raise_closed()
        return self._p

    def _raise_closed(self) -> None:
        if self._pid_fork is not None:
            raise ForkError(
                f"this {self._backend} Poller was created in process "
                f"{self._pid_fork}, before fork(); create a new Poller in "
                f"the child (pid {os.getpid()})"
            )
        raise ValueError("I/O operation on closed poller object")

    # Closed means _w is _CLOSED (a waiter C answers with -EBADF, so wait()
    # needs no test of its own).  The C poller itself (_p) lives as long as
    # this object: a wait() running in another thread may still use it,
    # and then gets -EBADF from C rather than freed memory.

    def _forked(self) -> None:
        if self._w is _CLOSED or self._backend not in ("epoll", "kqueue"):
            return
        self._pid_fork = os.getppid()
        self._w, self._wt = _CLOSED, None
        if self._backend == "kqueue":
            # The number may already name an unrelated file in the child.
            lib.pe_poller_detach(self._p)
        else:
            lib.pe_poller_close(self._p)   # the child's own reference only

    def close(self) -> None:
        """Release the kernel object.  Idempotent."""
        if self._w is not _CLOSED:
            self._w, self._wt = _CLOSED, None
            lib.pe_poller_close(self._p)
            _live.discard(self)

    def fileno(self) -> int:
        """The kernel descriptor (epoll/kqueue).  poll and select have none:
        io.UnsupportedOperation."""
        p = self._check_open()
        fd = lib.pe_poller_fileno(p)
        if fd < 0:
            import io
            raise io.UnsupportedOperation(
                f"the {self._backend} backend has no file descriptor")
        return fd

    def __enter__(self) -> "Poller":
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._w is _CLOSED else "open"
        return f"<pyepoll.Poller backend={self._backend!r} {state}>"

    # -- registrations ---------------------------------------------------------

    def _mask(self, events: int) -> int:
        if not isinstance(events, int):
            raise TypeError(
                f"events must be an int, not {type(events).__name__}")
        if events < 0 or events & ~_VALID:
            raise ValueError(f"invalid event mask {events:#x}")
        for bit, cap, name in _FLAG_CAPS:
            if events & bit and not self._caps & cap:
                raise ValueError(
                    f"{name} is not supported by the {self._backend} backend")
        return events

    def register(self, fd: Any, events: int = READ | WRITE) -> None:
        """Start watching ``fd`` (int or object with fileno()) for ``events``.
        FileExistsError if it is already registered."""
        p = self._check_open()
        fd = fileno_of(fd)
        events = self._mask(events)
        if fd < _PREFILL_BELOW:
            # Before the kernel can report it: a READ batch maps fds to
            # these pairs (_result_registered).
            _read_pair(fd)
        rc = lib.pe_poller_register(p, fd, events)
        if rc == -errno.EINVAL and self._backend == "select":
            # CPython's words for an fd an fd_set cannot hold.
            raise ValueError("filedescriptor out of range in select()")
        check(rc, f"fd {fd}")
        if lib.pe_poller_count(p) > self._cap < _MAX_EVENTS:
            self._grow(self._cap * 2)

    def modify(self, fd: Any, events: int) -> None:
        """Change the events watched for ``fd`` (re-arms ONESHOT).
        FileNotFoundError if it is not registered."""
        p = self._check_open()
        fd = fileno_of(fd)
        check(lib.pe_poller_modify(p, fd, self._mask(events)), f"fd {fd}")

    def unregister(self, fd: Any) -> None:
        """Stop watching ``fd``.  FileNotFoundError if it is not registered.
        Events already reported for it are the caller's; none come later."""
        p = self._check_open()
        fd = fileno_of(fd)
        check(lib.pe_poller_unregister(p, fd), f"fd {fd}")

    def __len__(self) -> int:
        return lib.pe_poller_count(self._check_open())

    # -- waiting ---------------------------------------------------------------

    def _grow(self, cap: int) -> None:
        p = self._p
        cap = min(cap, _MAX_EVENTS)
        # Waiters (struct pe_waiter: the C call's arguments and the event
        # array in one block) are replaced, never resized: a wait in
        # another thread keeps the one it started with.  _w serves timeouts
        # None and 0 (claimed in C); _wt, claimed here, any other timeout,
        # which needs a store into it.
        self._w = _new_waiter(p, cap)
        self._wt = _new_waiter(p, cap)
        self._cap = cap

    def wait(self, timeout: Optional[float] = None,
             maxevents: int = -1) -> List[Tuple[int, int]]:
        """Wait for events; return a list of ``(fd, events)``.

        ``timeout`` in seconds: None or negative blocks, 0 polls; rounded up
        to whole milliseconds.  ``maxevents`` -1 means as many as are
        registered; events beyond it come with the next calls.  A signal
        interrupts the wait only if its handler raises; otherwise the wait
        resumes with the remaining time (PEP 475).  The GIL is released
        while waiting, and several threads may wait at once.
        """
        # The hot path of an event loop: each line here costs a few percent
        # of a 1-ready wait, so only the common call (timeout None or 0) is
        # handled inline.
        w = self._w
        if maxevents != -1:
            return self._wait_other(timeout, maxevents)
        if timeout is None:
            r = _wait_block(w)
        elif timeout == 0:
            r = _wait_poll(w)
        else:
            return self._wait_timed(timeout)
        if r > 1048576:                # one READ event, fd r - 1048577
            try:                       # None: not built yet
                return [_read_pairs[r - 1048577] or _read_pair(r - 1048577)]
            except IndexError:
                return [_read_pair(r - 1048577)]
        if r < -4095:                  # one event of other bits
            try:
                return [_one_event[r]]
            except KeyError:
                return [_new_pair(r)]
        if r == 0:
            return []
        return self._wait_rest(r, w, timeout)

    def _wait_rest(self, r: int, w: Any,
                   timeout: Optional[float]) -> List[Tuple[int, int]]:
        """wait() with timeout None or 0 after a result other than none or
        one event: events in the array, or a failure."""
        while _ONE_BELOW <= r < 0:     # an -errno
            if r == -errno.EBUSY:      # another thread waits on _w
                return self._wait_other(timeout, -1)
            if r != -errno.EINTR or self._w is _CLOSED:
                self._raise_failed(r)
            run_signal_handlers()      # one that raises ends wait (PEP 475)
            r = _wait_block(w) if timeout is None else _wait_poll(w)
        return _result_registered(w, r)

    def _wait_timed(self, timeout: float) -> List[Tuple[int, int]]:
        """wait() with a timeout other than None and 0."""
        w = self._wt
        if w is None:                  # another thread waits on _wt
            return self._wait_other(timeout, -1)
        self._wt = None
        try:
            return _result_registered(w, self._timed(w, timeout_to_ms(timeout)))
        finally:
            # Put back unless closed or replaced by _grow meanwhile.
            if self._wt is None and self._w is not _CLOSED:
                self._wt = w

    def _timed(self, w: Any, ms: int) -> int:
        """Wait ms on waiter w (owned by the caller), retrying EINTR with
        the time that is left (PEP 475).  Returns the waiter's result."""
        deadline = time.monotonic() + ms / 1000.0 if ms > 0 else 0.0
        while True:
            if ms < 0:
                r = _wait_block(w)
            else:
                w.timeout_ms = ms
                r = _wait_ms(w)
            if r != -errno.EINTR:
                break
            run_signal_handlers()      # one that raises ends wait (PEP 475)
            if self._w is _CLOSED:
                self._raise_closed()
            if ms > 0:
                ms = max(0, math.ceil((deadline - time.monotonic()) * 1000.0))
        if _ONE_BELOW <= r < 0:
            self._raise_failed(r)
        return r

    def _wait_other(self, timeout: Optional[float],
                    maxevents: int) -> List[Tuple[int, int]]:
        """wait() when the poller is closed, maxevents is given, or another
        thread holds the shared waiter: a waiter of its own."""
        if self._w is _CLOSED:
            self._raise_closed()
        if maxevents == -1:
            maxevents = self._cap
        elif not isinstance(maxevents, int):
            raise TypeError(f"maxevents must be an int, not "
                            f"{type(maxevents).__name__}")
        elif maxevents <= 0:
            raise ValueError(
                f"maxevents must be greater than 0, got {maxevents}")
        elif maxevents >= self._cap:
            # No more can come back than the shared waiters hold.
            return self.wait(timeout)
        ms = -1 if timeout is None else timeout_to_ms(timeout)
        w = _new_waiter(self._p, maxevents)
        return _result_registered(w, self._timed(w, ms))

    def _raise_failed(self, r: int) -> None:
        if self._w is _CLOSED:
            self._raise_closed()       # closed by another thread meanwhile
        check(r, "waiting for events")


_wait_poll = lib.pe_waiter_poll
_wait_block = lib.pe_waiter_block
_wait_ms = lib.pe_waiter_wait
_release = lib.pe_waiter_release
# Waiter results (see struct pe_waiter in pyepoll.h): below _ONE_BELOW one
# event of any bits, from _READ_BASE on one PE_READ event; wait() has them
# as literals (a constant costs less than a global).
_ONE_BELOW = -4095
_READ_BASE = 1048577
assert _ONE_BELOW == 1 - lib.PE_WAIT_ONE_BASE
assert _READ_BASE == lib.PE_WAIT_READ_BASE == lib.PE_WAIT_MAX_EVENTS + 1
_MAX_EVENTS = lib.PE_WAIT_MAX_EVENTS   # per call; the rest come with the next
_EVENTS_AT = ffi.offsetof("struct pe_waiter", "out")
_iter_events = struct.Struct("=iI").iter_unpack


def _new_waiter(p: Any, cap: int) -> Any:
    return ffi.new("struct pe_waiter *", [p, cap, 0, 0, 0, cap])


# The waiter of every closed Poller: no poller, so C answers -EBADF.
_CLOSED = _new_waiter(ffi.NULL, 1)


# (fd, events) by one-event waiter result, each pair built once: a server
# sees the same few pairs again and again, and a dict lookup costs a third
# of building one.  Pairs are immutable tuples, so sharing one between
# results is invisible.  A plain dict: a subclass with __missing__ is not
# subscripted by the interpreter's fast path.
_one_event: Dict[int, Tuple[int, int]] = {}


# (fd, READ) by fd, the commonest one-event result: a list index is
# cheaper still than a dict lookup.  Filled on first use of each fd.
_read_pairs: List[Optional[Tuple[int, int]]] = []


def _read_pair(fd: int) -> Tuple[int, int]:
    """The (fd, READ) pair, remembered."""
    if fd >= len(_read_pairs):
        _read_pairs.extend([None] * (fd + 1 - len(_read_pairs)))
    pair = _read_pairs[fd]
    if pair is None:
        pair = _read_pairs[fd] = (fd, READ)
    return pair


def _new_pair(r: int) -> Tuple[int, int]:
    """The pair of one-event result r, remembered (bounded: the table is
    emptied when full)."""
    code = -r - lib.PE_WAIT_ONE_BASE
    pair = (code >> 14, code & 0x3FFF)
    if len(_one_event) >= 16384:
        _one_event.clear()
    _one_event[r] = pair
    return pair


# Poller.register builds (fd, READ) for every fd below this before the
# kernel knows the fd (a valid fd is below RLIMIT_NOFILE, 2**20 by default;
# a bogus huge one must not grow the list).
_PREFILL_BELOW = 1 << 20
_read_pair_at = _read_pairs.__getitem__


def _result_registered(w: Any, r: int) -> List[Tuple[int, int]]:
    """_result for a Poller, whose events are for fds registered through a
    Poller, so their (fd, READ) pairs exist: a batch of READ events (C says
    so in all_read) is one C-level map of fds to shared pairs, no tuple
    built or freed per event.  Small batches are not worth the views."""
    if 16 <= r <= _MAX_EVENTS and w.all_read:
        fds = memoryview(ffi.buffer(w))[
            _EVENTS_AT:_EVENTS_AT + 8 * r].cast("i")[::2]
        try:
            pairs = list(map(_read_pair_at, fds))
        except IndexError:             # an fd beyond _PREFILL_BELOW
            return _result(w, r)       # reads the array and releases
        except BaseException:
            _release(w)
            raise
        _release(w)
        return pairs
    return _result(w, r)


def _result(w: Any, r: int) -> List[Tuple[int, int]]:
    """A waiter's successful result as a list of (fd, events); releases the
    waiter when the events were in its array."""
    if r >= _READ_BASE:
        return [_read_pair(r - _READ_BASE)]
    if r < _ONE_BELOW:
        return [_one_event.get(r) or _new_pair(r)]
    if r == 0:
        return []
    try:
        # A memoryview slice: the events are read in place, not copied.
        return list(_iter_events(
            memoryview(ffi.buffer(w))[_EVENTS_AT:_EVENTS_AT + 8 * r]))
    finally:
        _release(w)


def _backend_name(backend: str) -> Any:
    if not isinstance(backend, str):
        raise TypeError(
            f"backend must be a str or None, not {type(backend).__name__}")
    if backend not in ("epoll", "kqueue", "poll", "select"):
        raise ValueError(
            f"unknown backend {backend!r}; expected one of epoll, kqueue, "
            f"poll, select")
    return backend.encode()

"""pyepoll.Poller: readiness notification on epoll, kqueue, poll or select."""
from __future__ import annotations

import errno
import math
import operator
import os
import time
import weakref
from typing import Any, FrozenSet, List, Optional, Tuple

from ._binding import check, ffi, fileno_of, lib

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
_wait = lib.pe_poller_wait  # bound once: a module attribute load per call


class ForkError(RuntimeError):
    """A poller made before fork() was used in the child process."""


def available_backends() -> List[str]:
    """Names of the backends compiled into this build, best first."""
    return ffi.string(lib.pe_backends()).decode().split(",")


def best_backend() -> str:
    """The backend ``Poller()`` uses when none is named."""
    return available_backends()[0]


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

    __slots__ = ("_p", "_backend", "_caps", "_buf", "_view", "_cap",
                 "_pid_fork", "__weakref__")

    def __init__(self, backend: Optional[str] = None) -> None:
        self._p: Any = None
        self._view: Optional[memoryview] = None
        self._pid_fork: Optional[int] = None
        err = ffi.new("int *")
        name = ffi.NULL if backend is None else _backend_name(backend)
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
        return self._p is None

    def _check_open(self) -> Any:
        p = self._p
        if p is None:
            self._raise_closed()
        return p

    def _raise_closed(self) -> None:
        if self._pid_fork is not None:
            raise ForkError(
                f"this {self._backend} Poller was created in process "
                f"{self._pid_fork}, before fork(); create a new Poller in "
                f"the child (pid {os.getpid()})"
            )
        raise ValueError("I/O operation on closed poller object")

    def _forked(self) -> None:
        if self._p is None or self._backend not in ("epoll", "kqueue"):
            return
        self._pid_fork = os.getppid()
        p, self._p = self._p, None
        if self._backend == "kqueue":
            # The number may already name an unrelated file in the child.
            lib.pe_poller_detach(p)
        else:
            lib.pe_poller_close(p)   # the child's own reference only

    def close(self) -> None:
        """Release the kernel object.  Idempotent."""
        p, self._p = self._p, None
        if p is not None:
            lib.pe_poller_close(p)
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
        state = "closed" if self._p is None else "open"
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
        rc = lib.pe_poller_register(p, fd, self._mask(events))
        if rc == -errno.EINVAL and self._backend == "select":
            # CPython's words for an fd an fd_set cannot hold.
            raise ValueError("filedescriptor out of range in select()")
        check(rc, f"fd {fd}")
        if lib.pe_poller_count(p) > self._cap:
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
        self._buf = ffi.new("struct pe_event[]", cap)
        # Events are read through one int32 view: two words per event.
        self._view = memoryview(ffi.buffer(self._buf)).cast("i")
        self._cap = cap

    def wait(self, timeout: Optional[float] = None,
             maxevents: int = -1) -> List[Tuple[int, int]]:
        """Wait for events; return a list of ``(fd, events)``.

        ``timeout`` in seconds: None or negative blocks, 0 polls; rounded up
        to whole milliseconds.  ``maxevents`` -1 means as many as are
        registered.  A signal interrupts the wait only if its handler raises;
        otherwise the wait resumes with the remaining time (PEP 475).  The
        GIL is released while waiting.
        """
        p = self._p
        if p is None:
            self._raise_closed()
        # The two common timeouts skip the conversion call.
        if timeout is None:
            ms = -1
        elif timeout.__class__ is int and timeout == 0:
            ms = 0
        else:
            ms = timeout_to_ms(timeout)
        if maxevents == -1:
            maxevents = self._cap
        elif maxevents > self._cap:
            self._grow(maxevents)
        elif maxevents <= 0:
            raise ValueError(
                f"maxevents must be greater than 0, got {maxevents}")
        n = _wait(p, self._buf, maxevents, ms)
        if n == 1:                 # the common case in a busy server
            view = self._view
            return [(view[0], view[1])]
        if n == 0:
            return []
        if n < 0:
            n = self._wait_retry(n, ms, maxevents)
        view = self._view
        return list(zip(view[0:2 * n:2], view[1:2 * n:2]))

    def _wait_retry(self, rc: int, ms: int, maxevents: int) -> int:
        deadline = None if ms < 0 else time.monotonic() + ms / 1000.0
        while rc == -errno.EINTR:
            # Returning to the interpreter here runs the signal handlers; an
            # exception from one propagates out of wait() (PEP 475).
            if deadline is not None:
                ms = max(0, math.ceil((deadline - time.monotonic()) * 1000.0))
            p = self._p
            if p is None:
                self._raise_closed()
            rc = lib.pe_poller_wait(p, self._buf, maxevents, ms)
        return check(rc, "waiting for events")


def _backend_name(backend: str) -> Any:
    if not isinstance(backend, str):
        raise TypeError(
            f"backend must be a str or None, not {type(backend).__name__}")
    if backend not in ("epoll", "kqueue", "poll", "select"):
        raise ValueError(
            f"unknown backend {backend!r}; expected one of epoll, kqueue, "
            f"poll, select")
    return backend.encode()

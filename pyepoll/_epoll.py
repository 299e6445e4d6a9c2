"""pyepoll.epoll, the class: a drop-in for :class:`select.epoll` on
pyepoll's C core.  This module is private: the package re-exports the class
and the constants, so the dotted name ``pyepoll.epoll`` is the class itself
(as ``select.epoll`` is), whatever resolves it (attribute access,
``pkgutil.resolve_name``, a plugin system's dotted-name lookup).

``import pyepoll as select`` or ``from pyepoll import epoll`` and keep going:
the constructor, register / modify / unregister / poll / close / fileno /
fromfd, the context manager, the EPOLL* constants, the results (raw epoll
bits, ``(fd, events)`` tuples, events unsigned) and the exceptions raised for
every wrong argument are those of CPython's select.epoll.  The poller is a C
one made with PE_POLLER_RAW, so event bits pass untranslated both ways.

Linux only: elsewhere this module raises ImportError and ``pyepoll.epoll``
does not exist, as ``select.epoll`` does not.
"""
from __future__ import annotations

import errno as _errno
import math as _math
import operator as _operator
import select as _select
import sys as _sys
import time as _time
import warnings as _warnings
from typing import Any, List, Optional, Tuple

from ._binding import ffi as _ffi
from ._binding import lib as _lib
from ._binding import raise_errno as _raise_errno
from ._binding import run_signal_handlers as _run_signal_handlers
from ._poller import _ONE_BELOW, _new_pair, _new_waiter
from ._poller import _one_event, _read_pair, _read_pairs, _result
from ._poller import _wait_block, _wait_ms, _wait_poll
from ._poller import available_backends as _available_backends

if "epoll" not in _available_backends():
    raise ImportError("pyepoll.epoll needs the epoll backend (Linux only)")

__all__ = [
    "epoll", "EPOLLIN", "EPOLLOUT", "EPOLLPRI", "EPOLLERR", "EPOLLHUP",
    "EPOLLRDHUP", "EPOLLET", "EPOLLONESHOT", "EPOLLEXCLUSIVE", "EPOLLRDNORM",
    "EPOLLRDBAND", "EPOLLWRNORM", "EPOLLWRBAND", "EPOLLMSG", "EPOLL_CLOEXEC",
]

# The select module's own values where it has them, so they match exactly;
# the Linux values otherwise.
EPOLLIN: int = getattr(_select, "EPOLLIN", 0x001)
EPOLLPRI: int = getattr(_select, "EPOLLPRI", 0x002)
EPOLLOUT: int = getattr(_select, "EPOLLOUT", 0x004)
EPOLLERR: int = getattr(_select, "EPOLLERR", 0x008)
EPOLLHUP: int = getattr(_select, "EPOLLHUP", 0x010)
EPOLLRDNORM: int = getattr(_select, "EPOLLRDNORM", 0x040)
EPOLLRDBAND: int = getattr(_select, "EPOLLRDBAND", 0x080)
EPOLLWRNORM: int = getattr(_select, "EPOLLWRNORM", 0x100)
EPOLLWRBAND: int = getattr(_select, "EPOLLWRBAND", 0x200)
EPOLLMSG: int = getattr(_select, "EPOLLMSG", 0x400)
EPOLLRDHUP: int = getattr(_select, "EPOLLRDHUP", 0x2000)
EPOLLEXCLUSIVE: int = getattr(_select, "EPOLLEXCLUSIVE", 0x10000000)
EPOLLONESHOT: int = getattr(_select, "EPOLLONESHOT", 0x40000000)
EPOLLET: int = getattr(_select, "EPOLLET", 0x80000000)
EPOLL_CLOEXEC: int = getattr(_select, "EPOLL_CLOEXEC", 0x80000)

_INT_MAX = 0x7FFFFFFF
_INT_MIN = -0x80000000
_NS_MAX = 2**63            # _PyTime_t range: [-2**63, 2**63)
# CPython's select.epoll.poll() caps maxevents=-1 at FD_SETSIZE - 1.
_DEFAULT_MAXEVENTS = 1023
# Largest event array kept per object.  A larger maxevents is honoured as
# this many per call: epoll_wait may always return fewer than asked, and the
# rest come with the next call.
_MAX_BUFFER = 1 << 16
# One (fd, events) record as the C core writes it: int32 fd, uint32 events.
_monotonic_ns = _time.monotonic_ns
_ceil = _math.ceil
_EINTR = _errno.EINTR
_EBUSY = _errno.EBUSY
# poll()'s (maxevents, waiter) once closed: no maxevents is this object.
_CLOSED_WM: Tuple[Any, Any] = (object(), None)
_ZERO = 0


if _sys.version_info >= (3, 10):
    _index = _operator.index
else:
    def _index(value: Any) -> int:
        """Python 3.9's integer conversion: __index__, else (deprecated)
        __int__, except for floats."""
        try:
            return _operator.index(value)
        except TypeError:
            if isinstance(value, float) or not hasattr(type(value), "__int__"):
                raise
        _warnings.warn(
            f"an integer is required (got type {type(value).__name__}).  "
            f"Implicit conversion to integers using __int__ is deprecated, "
            f"and may be removed in a future version of Python.",
            DeprecationWarning, stacklevel=4)
        return int(value)

# CPython 3.13 warns when a bool is used as a file descriptor.
_WARN_BOOL_FD = _sys.version_info >= (3, 13)


def _c_int(value: Any) -> int:
    """Argument Clinic's ``int`` converter: __index__, then C int range."""
    if isinstance(value, float):
        raise TypeError(
            "'float' object cannot be interpreted as an integer"
            if _sys.version_info >= (3, 10)
            else "integer argument expected, got float")
    value = _index(value)
    if value > _INT_MAX or value < _INT_MIN:
        raise OverflowError("Python int too large to convert to C int")
    return value


def _fildes(fileobj: Any) -> int:
    """PyObject_AsFileDescriptor: an int, or an object whose fileno() gives
    one; OverflowError outside C int, ValueError when negative."""
    if isinstance(fileobj, int):
        fd = fileobj
        if _WARN_BOOL_FD and fileobj.__class__ is bool:
            _warnings.warn("bool is used as a file descriptor",
                           RuntimeWarning, stacklevel=3)
    else:
        try:
            method = fileobj.fileno
        except AttributeError:
            raise TypeError(
                "argument must be an int, or have a fileno() method.") from None
        fd = method()
        if not isinstance(fd, int):
            raise TypeError("fileno() returned a non-integer")
    if fd > _INT_MAX or fd < _INT_MIN:
        raise OverflowError("Python int too large to convert to C int")
    if fd < 0:
        raise ValueError(
            f"file descriptor cannot be a negative integer ({int(fd)})")
    return int(fd)


def _eventmask(mask: Any) -> int:
    """Clinic's bitwise ``unsigned int``: __index__, then the low 32 bits
    (negative and oversized masks wrap rather than raise, as in CPython)."""
    if mask.__class__ is not int:
        mask = _index(mask)
    return mask & 0xFFFFFFFF


def _timeout_ns(timeout: Any) -> int:
    """The timeout object as nanoseconds, as _PyTime_FromSecondsObject with
    _PyTime_ROUND_TIMEOUT (away from zero) converts it."""
    if isinstance(timeout, float):
        if timeout != timeout:
            raise ValueError("Invalid value NaN (not a number)")
        ns = timeout * 1e9
        if not -9.223372036854775808e18 <= ns < 9.223372036854775808e18:
            raise OverflowError("timestamp too large to convert to C _PyTime_t")
        return _math.ceil(ns) if ns >= 0 else _math.floor(ns)
    try:
        seconds = _index(timeout)
    except TypeError:
        raise TypeError("timeout must be an integer or None") from None
    ns = seconds * 1_000_000_000
    if not -_NS_MAX <= seconds < _NS_MAX or not -_NS_MAX <= ns < _NS_MAX:
        raise OverflowError("timestamp too large to convert to C _PyTime_t")
    return ns


def _ns_to_ms(ns: int) -> int:
    ms = -((-ns) // 1_000_000)          # ceiling, as _PyTime_ROUND_CEILING
    if ms > _INT_MAX or ms < _INT_MIN:
        raise OverflowError("timeout is too large")
    return ms


class epoll:
    """select.epoll(sizehint=-1, flags=0)

    Returns an epolling object.

    sizehint must be a positive integer or -1 for the default size; it is
    checked and otherwise ignored, as is flags (which must be 0 or
    EPOLL_CLOEXEC).  The descriptor is always close-on-exec.
    """

    __slots__ = ("_p", "_wm", "_wt", "_held", "__weakref__")
    # Named where users find it: pyepoll.epoll (pickle, repr of the class,
    # tools that rebuild the dotted name from __module__ and __qualname__).
    __module__ = "pyepoll"

    def __init__(self, sizehint: int = -1, flags: int = 0) -> None:
        self._p: Any = None
        self._wm: Tuple[Any, Any] = _CLOSED_WM
        sizehint = _c_int(sizehint)
        flags = _c_int(flags)
        if sizehint != -1 and sizehint <= 0:
            raise ValueError("negative sizehint")
        if flags and flags != EPOLL_CLOEXEC:
            raise OSError("invalid flags")
        self._open(-1)

    def _open(self, fd: int) -> None:
        self._p = None
        self._wm = _CLOSED_WM
        self._wt: Any = None
        self._held: Any = None
        err = _ffi.new("int *")
        if fd == -1:
            p = _lib.pe_poller_new(b"epoll", _lib.PE_POLLER_RAW, err)
        else:
            p = _lib.pe_poller_fromfd(b"epoll", fd, _lib.PE_POLLER_RAW, err)
        if p == _ffi.NULL:
            _raise_errno(-err[0] if err[0] < 0 else _errno.EBADF)
        self._p = _ffi.gc(p, _lib.pe_poller_free)
        # Waiters (struct pe_waiter: the C call's arguments and its event
        # array in one block).  _wm: (maxevents, waiter) for the last
        # maxevents polled with, claimed in C, for timeouts None and 0;
        # _wt: claimed here (swapped out), for other timeouts, which store
        # into it.  A thread finding either busy uses a waiter of its own.
        self._wm = (-1, _new_waiter(self._p, _DEFAULT_MAXEVENTS))
        self._wt = _new_waiter(self._p, _DEFAULT_MAXEVENTS)

    @classmethod
    def fromfd(cls, fd: int, /) -> "epoll":
        """Create an epoll object from a given control fd (not duplicated:
        closing the object closes fd)."""
        fd = _c_int(fd)
        self = cls.__new__(cls)
        self._open(fd)
        return self

    # -- state ---------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True if the epoll handler is closed"""
        return self._p is None

    def close(self) -> None:
        """Close the epoll control file descriptor.

        Further operations on the epoll object will raise an exception.
        """
        p, self._p = self._p, None
        if p is not None:
            self._wm, self._wt = _CLOSED_WM, None
            # The C object itself lives as long as this one, so a poll()
            # running in another thread gets EBADF, never freed memory.
            self._held = p
            _lib.pe_poller_close(p)

    def fileno(self) -> int:
        """Return the epoll control file descriptor."""
        p = self._p
        if p is None:
            _raise_closed()
        return _lib.pe_poller_fileno(p)

    def __enter__(self) -> "epoll":
        if self._p is None:
            _raise_closed()
        return self

    def __exit__(self, exc_type: Any = None, exc_value: Any = None,
                 exc_tb: Any = None, /) -> None:
        self.close()

    def __reduce__(self) -> Any:
        raise TypeError(f"cannot pickle {type(self).__name__!r} object")

    # -- registrations ---------------------------------------------------------

    def register(self, fd: Any,
                 eventmask: int = EPOLLIN | EPOLLPRI | EPOLLOUT) -> None:
        """Registers a new fd or raises an OSError if the fd is already
        registered.

        fd is the target file descriptor of the operation; eventmask a bit
        set composed of the various EPOLL constants.
        """
        if fd.__class__ is not int or not 0 <= fd <= _INT_MAX:
            fd = _fildes(fd)
        if eventmask.__class__ is not int or not 0 <= eventmask <= 0xFFFFFFFF:
            eventmask = _eventmask(eventmask)
        p = self._p
        if p is None:
            _raise_closed()
        rc = _lib.pe_poller_register(p, fd, eventmask)
        if rc < 0:
            _raise_errno(-rc)

    def modify(self, fd: Any, eventmask: int) -> None:
        """Modify event mask for a registered file descriptor."""
        if fd.__class__ is not int or not 0 <= fd <= _INT_MAX:
            fd = _fildes(fd)
        if eventmask.__class__ is not int or not 0 <= eventmask <= 0xFFFFFFFF:
            eventmask = _eventmask(eventmask)
        p = self._p
        if p is None:
            _raise_closed()
        rc = _lib.pe_poller_modify(p, fd, eventmask)
        if rc < 0:
            _raise_errno(-rc)

    def unregister(self, fd: Any) -> None:
        """Remove a registered file descriptor from the epoll object."""
        if fd.__class__ is not int or not 0 <= fd <= _INT_MAX:
            fd = _fildes(fd)
        p = self._p
        if p is None:
            _raise_closed()
        rc = _lib.pe_poller_unregister(p, fd)
        if rc < 0:
            _raise_errno(-rc)

    # -- waiting ---------------------------------------------------------------

    def poll(self, timeout: Optional[float] = None,
             maxevents: int = -1) -> List[Tuple[int, int]]:
        """Wait for events on the epoll file descriptor.

        timeout is the maximum time to wait in seconds (as float); None or
        -1 waits indefinitely.  maxevents is the maximum number of events
        returned; -1 means no limit.  Returns a list of (fd, events) 2-tuples.
        """
        # The hot path (as in pyepoll.Poller.wait): the maxevents of the
        # last call, timeout None or 0.  Everything else, errors included,
        # goes through _poll, which follows CPython step by step.
        # "is": an equal float or Decimal must still be refused as CPython
        # does; _poll re-keys on an equal int object.
        wm = self._wm
        if maxevents is not wm[0]:     # always so once closed: _CLOSED_WM
            return self._poll(timeout, maxevents)
        w = wm[1]
        if timeout is None:
            r = _wait_block(w)
        elif timeout is _ZERO:         # int 0 is one object; 0.0 takes _poll
            r = _wait_poll(w)
        else:
            return self._poll(timeout, maxevents)
        if r > 1048576:                # one EPOLLIN event, fd r - 1048577
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
        return self._poll_rest(r, w, timeout, maxevents)

    def _poll_rest(self, r: int, w: Any, timeout: Optional[float],
                   maxevents: int) -> List[Tuple[int, int]]:
        """poll() on the hot path after a result other than none or one
        event: events in the array, or a failure."""
        if r == -_EBUSY:               # another thread polls on it
            return self._poll(timeout, maxevents)
        r, w = self._retry(r, w, -1 if timeout is None else 0, 0)
        return _result(w, r)

    def _poll(self, timeout: Any, maxevents: Any) -> List[Tuple[int, int]]:
        """poll() with CPython's argument handling, in its order."""
        # maxevents is converted before the closed check, its value checked
        # after the timeout.
        if maxevents.__class__ is not int or not (
                _INT_MIN <= maxevents <= _INT_MAX):
            maxevents = _c_int(maxevents)
        p = self._p
        if p is None:
            _raise_closed()
        # deadline (monotonic ns) is needed only to retry after EINTR; 0: none.
        if timeout is None:
            ms = -1
            deadline = 0
        elif timeout.__class__ is float and 0.0 <= timeout <= 2147483.0:
            ns = _ceil(timeout * 1e9)
            ms = (ns + 999_999) // 1_000_000
            deadline = _monotonic_ns() + ns if ns else 0
        elif timeout.__class__ is int and 0 <= timeout <= 2147483:
            ms = timeout * 1000
            deadline = _monotonic_ns() + timeout * 1_000_000_000 if ms else 0
        else:
            ns = _timeout_ns(timeout)
            ms = _ns_to_ms(ns)
            if ms < 0:
                ms = -1
            deadline = _monotonic_ns() + ns if ns > 0 else 0
        if maxevents == -1:
            cap = _DEFAULT_MAXEVENTS
        elif maxevents < 1:
            raise ValueError(
                f"maxevents must be greater than 0, got {maxevents}")
        else:
            # A larger maxevents is honoured as _MAX_BUFFER per call:
            # epoll_wait may always return fewer than asked, and the rest
            # come with the next call.
            cap = min(maxevents, _MAX_BUFFER)
        wm = self._wm
        if wm[1] is None or wm[0] != maxevents:
            wm = (maxevents, _new_waiter(p, cap))
        elif wm[0] is not maxevents:
            wm = (maxevents, wm[1])
        if self._p is not None:
            self._wm = wm              # the next call with it takes the hot path
        if ms <= 0:
            w = wm[1]
            r = _wait_poll(w) if ms == 0 else _wait_block(w)
            if r != -_EBUSY:
                r, w = self._retry(r, w, ms, deadline)
                return _result(w, r)
        # A timeout to store, or the shared waiter busy: claim _wt, or use
        # a waiter of this call's own.
        w = self._wt
        own = w is None or len(w.out) < cap
        if own:
            w = _new_waiter(p, cap)
        else:
            self._wt = None
        try:
            w.maxevents = cap
            if ms > 0:
                w.timeout_ms = ms
            r = _wait_ms(w) if ms > 0 else (
                _wait_poll(w) if ms == 0 else _wait_block(w))
            r, w2 = self._retry(r, w, ms, deadline)
            return _result(w2, r)
        finally:
            if not own and self._wt is None and self._p is not None:
                self._wt = w

    def _retry(self, r: int, w: Any, ms: int,
               deadline: int) -> Tuple[int, Any]:
        """The result of waiter w once no EINTR, and the waiter holding it:
        another one when w, shared, was taken by another thread meanwhile."""
        while r == -_EINTR or r == -_EBUSY:
            if r == -_EINTR:
                _run_signal_handlers()     # one that raises ends poll (PEP 475)
            p = self._p
            if p is None:
                _raise_closed()
            if r == -_EBUSY:
                w = _new_waiter(p, w.maxevents)
            if ms > 0:
                left = deadline - _monotonic_ns()
                if left < 0:
                    return 0, w
                ms = -((-left) // 1_000_000)
                w.timeout_ms = ms
                r = _wait_ms(w)
            else:
                r = _wait_poll(w) if ms == 0 else _wait_block(w)
        if _ONE_BELOW <= r < 0:
            if self._p is None:
                _raise_closed()
            _raise_errno(-r)
        return r, w

    def __repr__(self) -> str:
        state = "closed" if self._p is None else f"fd={self.fileno()}"
        return f"<pyepoll.epoll {state}>"


def _raise_closed() -> None:
    raise ValueError("I/O operation on closed epoll object")

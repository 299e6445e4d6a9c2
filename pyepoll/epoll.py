"""pyepoll.epoll: a drop-in for :class:`select.epoll` on pyepoll's C core.

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
import struct as _struct
import sys as _sys
import time as _time
import warnings as _warnings
from typing import Any, List, Optional, Tuple

from ._binding import ffi as _ffi
from ._binding import lib as _lib
from ._binding import raise_errno as _raise_errno
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
_iter_records = _struct.Struct("=iI").iter_unpack
_monotonic_ns = _time.monotonic_ns
_ceil = _math.ceil
_EINTR = _errno.EINTR
_wait = _lib.pe_poller_wait


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

    __slots__ = ("_p", "_buffers", "__weakref__")

    def __init__(self, sizehint: int = -1, flags: int = 0) -> None:
        self._p: Any = None
        sizehint = _c_int(sizehint)
        flags = _c_int(flags)
        if sizehint != -1 and sizehint <= 0:
            raise ValueError("negative sizehint")
        if flags and flags != EPOLL_CLOEXEC:
            raise OSError("invalid flags")
        self._open(-1)

    def _open(self, fd: int) -> None:
        self._p = None
        # Event arrays not in use.  poll() takes one and puts it back, so
        # threads polling the same object at once never share one.
        self._buffers: List[_Buffer] = [_new_buffer(_DEFAULT_MAXEVENTS)]
        err = _ffi.new("int *")
        if fd == -1:
            p = _lib.pe_poller_new(b"epoll", _lib.PE_POLLER_RAW, err)
        else:
            p = _lib.pe_poller_fromfd(b"epoll", fd, _lib.PE_POLLER_RAW, err)
        if p == _ffi.NULL:
            _raise_errno(-err[0] if err[0] < 0 else _errno.EBADF)
        self._p = _ffi.gc(p, _lib.pe_poller_free)

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
            # The C object itself is freed when the last reference goes, so
            # a poll() running in another thread never sees freed memory.
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
        # Argument order and checks as CPython: maxevents is converted before
        # the closed check, its value checked after the timeout.
        if maxevents.__class__ is not int or not (
                _INT_MIN <= maxevents <= _INT_MAX):
            maxevents = _c_int(maxevents)
        if maxevents == -1:
            maxevents = _DEFAULT_MAXEVENTS
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
        if maxevents < 1:
            raise ValueError(
                f"maxevents must be greater than 0, got {maxevents}")
        try:
            buf = self._buffers.pop()
        except IndexError:
            buf = _new_buffer(_DEFAULT_MAXEVENTS)   # another thread polls
        array, records, words, cap = buf
        if maxevents > cap:
            if cap < _MAX_BUFFER:
                buf = _new_buffer(min(maxevents, _MAX_BUFFER))
                array, records, words, cap = buf
            if maxevents > cap:
                maxevents = cap
        n = _wait(p, array, maxevents, ms)
        if n == 1:
            fd = words[0]
            result = [(fd if fd <= _INT_MAX else fd - 0x100000000, words[1])]
        elif n > 0:
            result = list(_iter_records(records[:n << 3]))
        elif n == 0:
            result = []
        else:
            n = self._retry(n, ms, deadline, array, maxevents)
            result = list(_iter_records(records[:n << 3]))
        self._buffers.append(buf)
        return result

    def _retry(self, rc: int, ms: int, deadline: int, array: Any,
               maxevents: int) -> int:
        # Entering this function let the interpreter run the signal handlers;
        # an exception from one propagates (PEP 475).
        while rc == -_EINTR:
            if ms > 0:
                left = deadline - _monotonic_ns()
                if left < 0:
                    return 0
                ms = -((-left) // 1_000_000)
            p = self._p
            if p is None:
                _raise_closed()
            rc = _wait(p, array, maxevents, ms)
            if rc == -_EINTR:
                _run_signal_handlers()
        if rc < 0:
            _raise_errno(-rc)
        return rc

    def __repr__(self) -> str:
        state = "closed" if self._p is None else f"fd={self.fileno()}"
        return f"<pyepoll.epoll {state}>"


_Buffer = Tuple[Any, memoryview, memoryview, int]


def _new_buffer(cap: int) -> _Buffer:
    """An event array of cap events with its two views: bytes (for
    struct.iter_unpack) and uint32 words (fd, events, fd, events, ...)."""
    array = _ffi.new("struct pe_event[]", cap)
    raw = memoryview(_ffi.buffer(array))
    return array, raw.cast("B"), raw.cast("I"), cap


def _raise_closed() -> None:
    raise ValueError("I/O operation on closed epoll object")


def _run_signal_handlers() -> None:
    """Calling a Python function gives the interpreter a point to run
    pending signal handlers (and raise what they raise)."""

"""pyepoll.selectors: the stdlib's selectors on pyepoll's C core.

``from pyepoll import selectors`` and keep going: EpollSelector,
KqueueSelector (where the kqueue backend is compiled), PollSelector,
SelectSelector and DefaultSelector (the one for pyepoll.best_backend()) are
:class:`selectors.BaseSelector` subclasses with the semantics of
Lib/selectors.py: the stdlib's :class:`~selectors.SelectorKey`, a read-only
``get_map()``, ValueError for bad events, KeyError for a duplicate or unknown
file object, ``modify()`` of only the data without a system call,
``unregister()`` of an fd closed since (no OSError), ``select()`` timeouts
(None blocks, <= 0 polls, others rounded up to milliseconds), EVENT_READ /
EVENT_WRITE with error and hang-up conditions reported as both, masked by
what was registered.

Differences, all deliberate: ``modify()`` with invalid events raises
ValueError and leaves the registration as it was (the stdlib's poll-like
selectors accept it; its select and kqueue ones unregister the file object
first); KqueueSelector reports a file object readable and writable at once as
one ``(key, EVENT_READ | EVENT_WRITE)`` entry, not two; SelectSelector waits
in whole milliseconds.

``select()`` is the hot path: one C call fills a reused event array, and each
event becomes a prebuilt ``(key, events)`` tuple with two lookups.  That
array belongs to the selector, so one selector serves one thread at a time
(as in asyncio); pyepoll.epoll, by contrast, may be polled by several
threads at once.
"""
from __future__ import annotations

import errno as _errno
import math as _math
import os as _os
import sys as _sys
import time as _time
import warnings as _warnings
import weakref as _weakref
from collections.abc import Mapping as _Mapping
from typing import Any, Dict, Iterator, List, Optional, Tuple

from ._binding import ffi as _ffi
from ._binding import lib as _lib
from ._binding import raise_errno as _raise_errno
from ._binding import run_signal_handlers as _run_signal_handlers
from ._poller import _EVENTS_AT, _new_pair, _new_waiter, _one_event
from ._poller import _release, _wait_block, _wait_ms, _wait_poll
from ._poller import available_backends as _available_backends
from ._poller import best_backend as _best_backend

# The stdlib's own names, so keys and masks compare equal across the two.
from selectors import EVENT_READ, EVENT_WRITE, BaseSelector, SelectorKey

__all__ = [
    "BaseSelector", "SelectorKey", "EVENT_READ", "EVENT_WRITE",
    "DefaultSelector", "PollSelector", "SelectSelector",
]

_PE_READ: int = _lib.PE_READ
_PE_WRITE: int = _lib.PE_WRITE
# Selector events -> poller bits, indexed by EVENT_READ | EVENT_WRITE.
_TO_POLLER = (0, _PE_READ, _PE_WRITE, _PE_READ | _PE_WRITE)

# Poller bits -> selector events, as Lib/selectors.py maps epoll's: anything
# but "writable" (errors, hang-ups, priority data) also means readable, and
# anything but "readable" also means writable.  The C poller reports only
# READ, PRI, WRITE, ERR, HUP and RDHUP, so the table covers every value.
_ALL_BITS = (_lib.PE_READ | _lib.PE_PRI | _lib.PE_WRITE | _lib.PE_ERR
             | _lib.PE_HUP | _lib.PE_RDHUP)
_TO_SELECTOR: List[int] = [
    (EVENT_READ if bits & ~_PE_WRITE else 0)
    | (EVENT_WRITE if bits & ~_PE_READ else 0)
    for bits in range(_ALL_BITS + 1)
]

_INT_MAX = 0x7FFFFFFF
# CPython 3.13 warns when a bool is used as a file descriptor.
_WARN_BOOL_FD = _sys.version_info >= (3, 13)
_INITIAL_EVENTS = 64
_monotonic = _time.monotonic
_ceil = _math.ceil
_EINTR = _errno.EINTR
_EBUSY = _errno.EBUSY
# select() reads a waiter's one-READ-event result as answers[1].
assert _TO_SELECTOR[_lib.PE_READ] == EVENT_READ == 1


def _fileobj_to_fd(fileobj: Any) -> int:
    """A file descriptor from an int or an object with fileno(); ValueError
    for anything else, as Lib/selectors.py."""
    if isinstance(fileobj, int):
        fd = fileobj
    else:
        try:
            fd = int(fileobj.fileno())
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"Invalid file object: {fileobj!r}") from None
    if fd < 0:
        raise ValueError(f"Invalid file descriptor: {fd}")
    return fd


def _answers(key: SelectorKey) -> Tuple[Tuple[SelectorKey, int], ...]:
    """What select() returns for this key, indexed by the ready selector
    events before masking: built once per registration, not per event."""
    events = key.events
    return tuple((key, ready & events) for ready in range(4))


class _SelectorMapping(_Mapping):
    """Read-only mapping of file objects to selector keys (iterates fds)."""

    __slots__ = ("_selector",)

    def __init__(self, selector: "_CoreSelector") -> None:
        self._selector = selector

    def __len__(self) -> int:
        return len(self._selector._fd_to_key)

    def __getitem__(self, fileobj: Any) -> SelectorKey:
        selector = self._selector
        try:
            return selector._fd_to_key[selector._fileobj_lookup(fileobj)]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None

    def __iter__(self) -> Iterator[int]:
        return iter(self._selector._fd_to_key)


# Selectors whose kernel object a forked child must not touch (kqueue).
_kernel_private: "_weakref.WeakSet[_CoreSelector]" = _weakref.WeakSet()


def _after_fork_in_child() -> None:
    for selector in list(_kernel_private):
        p, selector._p = selector._p, None
        selector._rehot()
        if p is not None:
            # The number may already name an unrelated file in the child.
            _lib.pe_poller_detach(p)


if hasattr(_os, "register_at_fork"):
    _os.register_at_fork(after_in_child=_after_fork_in_child)


class _CoreSelector(BaseSelector):
    """Selector on one C poller; subclasses name the backend."""

    _backend = ""
    # True when the backend has a kernel object (epoll, kqueue): closing
    # releases it and later calls raise ValueError, as the stdlib's do.  The
    # stdlib's poll and select selectors keep working after close().
    _kernel = False
    # Timeouts beyond a C int of milliseconds: the stdlib's select and
    # kqueue selectors accept them (timeval/timespec), epoll and poll raise.
    _clamp_timeout = False

    def __init__(self) -> None:
        self._fd_to_key: Dict[int, SelectorKey] = {}
        # fd -> prebuilt (key, events) results; see _answers().
        self._ready: Dict[int, Tuple[Tuple[SelectorKey, int], ...]] = {}
        self._map: Optional[_SelectorMapping] = _SelectorMapping(self)
        self._p: Any = None
        self._cap = 0
        self._grow(_INITIAL_EVENTS)
        self._open()

    def _open(self) -> None:
        err = _ffi.new("int *")
        p = _lib.pe_poller_new(self._backend.encode(), 0, err)
        if p == _ffi.NULL:
            _raise_errno(-err[0])
        self._p = _ffi.gc(p, _lib.pe_poller_free)
        if self._backend == "kqueue":
            _kernel_private.add(self)
        self._rehot()

    def _grow(self, cap: int) -> None:
        self._cap = cap
        self._rehot()                  # new waiters of this capacity

    def _rehot(self) -> None:
        """Rebuild select() for the current poller and event array.

        select() is a closure over them, installed on the instance when the
        class does not override it: no attribute loads and no bound method
        per call, which is a tenth of the whole call."""
        self._select = _make_select(self)
        if type(self).select is _CoreSelector.select:
            self.select = self._select  # type: ignore[method-assign]

    def _poller(self) -> Any:
        p = self._p
        if p is None:
            _raise_closed(self._backend)
        return p

    # -- file objects ------------------------------------------------------------

    def _fileobj_lookup(self, fileobj: Any) -> int:
        """The fd of fileobj; for an object that no longer gives one (closed),
        the fd it was registered with, found by identity."""
        try:
            return _fileobj_to_fd(fileobj)
        except ValueError:
            for key in self._fd_to_key.values():
                if key.fileobj is fileobj:
                    return key.fd
            raise

    def _key_from_fd(self, fd: int) -> Optional[SelectorKey]:
        """The key registered for fd, or None."""
        return self._fd_to_key.get(fd)

    # -- registrations -----------------------------------------------------------

    def register(self, fileobj: Any, events: int,
                 data: Any = None) -> SelectorKey:
        """Watch fileobj (fd or object with fileno()) for events
        (EVENT_READ | EVENT_WRITE) and return its new SelectorKey.
        ValueError for bad events or file objects, KeyError if already
        registered, OSError if the kernel refuses it."""
        if (not events) or (events & ~(EVENT_READ | EVENT_WRITE)):
            raise ValueError(f"Invalid events: {events!r}")
        fd = self._fileobj_lookup(fileobj)
        fd_to_key = self._fd_to_key
        if fd in fd_to_key:
            raise KeyError(f"{fileobj!r} (FD {fd}) is already registered")
        p = self._poller()
        if fd > _INT_MAX:
            raise OverflowError("file descriptor is greater than maximum")
        if _WARN_BOOL_FD and fd.__class__ is bool:
            _warnings.warn("bool is used as a file descriptor",
                           RuntimeWarning, stacklevel=2)
        rc = _lib.pe_poller_register(p, fd, _TO_POLLER[events])
        if rc < 0:
            _raise_errno(-rc)
        key = SelectorKey(fileobj, fd, events, data)
        fd_to_key[fd] = key
        self._ready[fd] = _answers(key)
        if len(fd_to_key) > self._cap:
            self._grow(self._cap * 2)
        return key

    def unregister(self, fileobj: Any) -> SelectorKey:
        """Stop watching fileobj and return its key; KeyError if it is not
        registered.  A file closed since it was registered is fine."""
        if fileobj.__class__ is int and fileobj in self._fd_to_key:
            fd = fileobj
        else:
            fd = self._fileobj_lookup(fileobj)
        try:
            key = self._fd_to_key.pop(fd)
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None
        del self._ready[fd]
        p = self._p
        if p is not None:
            # An error (the fd was closed since it was registered) is not
            # the caller's concern: the registration is gone either way.
            _lib.pe_poller_unregister(p, fd)
        return key

    def modify(self, fileobj: Any, events: int,
               data: Any = None) -> SelectorKey:
        """Change the events and data of a registered file object and
        return its new key; a change of data alone makes no system call."""
        if fileobj.__class__ is int and fileobj in self._fd_to_key:
            fd = fileobj
        else:
            fd = self._fileobj_lookup(fileobj)
        try:
            key = self._fd_to_key[fd]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None
        if events != key.events:
            if (not events) or (events & ~(EVENT_READ | EVENT_WRITE)):
                raise ValueError(f"Invalid events: {events!r}")
            rc = _lib.pe_poller_modify(self._poller(), fd, _TO_POLLER[events])
            if rc < 0:
                # As the stdlib: a registration the kernel refused is gone.
                self._fd_to_key.pop(fd, None)
                self._ready.pop(fd, None)
                _lib.pe_poller_unregister(self._p, fd)
                _raise_errno(-rc)
        elif data == key.data:
            return key
        key = SelectorKey(key.fileobj, fd, events, data)
        self._fd_to_key[fd] = key
        self._ready[fd] = _answers(key)
        return key

    def get_key(self, fileobj: Any) -> SelectorKey:
        """Return the key associated to a registered file object."""
        if self._map is None:
            raise RuntimeError("Selector is closed")
        if fileobj.__class__ is int and fileobj >= 0:
            # asyncio's path: an fd is its own lookup key.
            try:
                return self._fd_to_key[fileobj]
            except KeyError:
                raise KeyError(f"{fileobj!r} is not registered") from None
        try:
            return self._map[fileobj]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None

    def get_map(self) -> Optional[_SelectorMapping]:
        """Read-only mapping of file objects to keys (None once closed)."""
        return self._map

    def close(self) -> None:
        """Forget every registration and release the kernel object."""
        p, self._p = self._p, None
        self._rehot()
        if p is not None:
            # Freed when the last reference goes (not under a running wait).
            _lib.pe_poller_close(p)
            _kernel_private.discard(self)
        self._fd_to_key.clear()
        self._ready.clear()
        self._map = None
        if not self._kernel:
            self._open()

    # -- waiting -----------------------------------------------------------------

    def select(self, timeout: Optional[float] = None
               ) -> List[Tuple[SelectorKey, int]]:
        """Wait until registered file objects are ready or timeout seconds
        pass (None: no limit; <= 0: poll) and return ``[(key, events)]``.
        A signal whose handler returns does not cut the wait short."""
        # Instances of classes that do not override select() call the fast
        # closure directly (see _rehot); this is for subclasses' super().
        return self._select(timeout)

    def __repr__(self) -> str:
        state = "closed" if self._map is None else f"{len(self._fd_to_key)} fds"
        return f"<pyepoll.selectors.{type(self).__name__} {state}>"


class _Waiter:
    """A struct pe_waiter (the C wait's arguments and event array in one
    block, see pyepoll.h) with views of its events: even int32 words are
    fds, odd uint32 words event bits."""

    __slots__ = ("w", "fds", "bits")

    def __init__(self, p: Any, cap: int) -> None:
        self.w = _new_waiter(p, cap)
        raw = memoryview(_ffi.buffer(self.w))[_EVENTS_AT:]
        self.fds = raw.cast("i")
        self.bits = raw.cast("I")


def _make_select(selector: _CoreSelector) -> Any:
    """select() for this selector's current poller and capacity."""
    p = selector._p
    cap = selector._cap
    ready = selector._ready
    clamp = selector._clamp_timeout
    backend = selector._backend
    owner = _weakref.ref(selector)     # no cycle: the closure is on it
    table = _TO_SELECTOR
    one_event = _one_event
    # shared: timeouts <= 0 and None, claimed in C (a second thread gets
    # -EBUSY and a waiter of its own); timed: any other timeout, which is
    # stored into it, claimed here by taking it out of the closure.
    shared = _Waiter(p, cap) if p is not None else None
    w = shared.w if shared is not None else None
    timed: Optional[_Waiter] = _Waiter(p, cap) if p is not None else None

    def select(timeout: Optional[float] = None
               ) -> List[Tuple[SelectorKey, int]]:
        if p is None:
            _raise_closed(backend)
        if timeout is None:
            r = _wait_block(w)
        elif timeout <= 0:
            r = _wait_poll(w)
        else:
            # Millisecond resolution, rounded up to wait at least timeout.
            ms = _ceil(timeout * 1e3)
            if ms > _INT_MAX:
                ms = _long_timeout(clamp, timeout)
            return wait_timed(ms)
        if r > 1048576:                # one READ event, fd r - 1048577
            try:
                return [ready[r - 1048577][1]]     # 1: EVENT_READ
            except KeyError:           # unregistered meanwhile
                return []
        if r < -4095:                  # one event of other bits
            try:
                fd, ev = one_event[r]
            except KeyError:
                fd, ev = _new_pair(r)
            try:
                return [ready[fd][table[ev]]]
            except KeyError:           # unregistered meanwhile
                return []
        if r == 0:
            return []
        return rest(r, shared, 0 if timeout is not None else -1)

    def wait_timed(ms: int) -> List[Tuple[SelectorKey, int]]:
        nonlocal timed
        waiter = timed
        if waiter is None:             # another thread has it
            waiter = _Waiter(p, cap)
        timed = None
        try:
            waiter.w.timeout_ms = ms
            return rest(_wait_ms(waiter.w), waiter, ms)
        finally:
            if timed is None:
                timed = waiter

    def rest(r: int, waiter: _Waiter, ms: int
             ) -> List[Tuple[SelectorKey, int]]:
        if r == -_EBUSY and waiter is shared:
            waiter = _Waiter(p, cap)   # another thread waits on it
            r = -_EINTR
        deadline = _monotonic() + ms / 1000.0 if ms > 0 else 0.0
        while r == -_EINTR:
            # One that raises ends select() with its exception (PEP 475).
            _run_signal_handlers()
            if ms > 0:
                ms = max(0, _ceil((deadline - _monotonic()) * 1e3))
                waiter.w.timeout_ms = ms
                r = _wait_ms(waiter.w)
            else:
                r = _wait_poll(waiter.w) if ms == 0 else _wait_block(waiter.w)
        if r > 1048576:
            answers = ready.get(r - 1048577)
            return [answers[EVENT_READ]] if answers is not None else []
        if r < -4095:
            fd, ev = one_event.get(r) or _new_pair(r)
            answers = ready.get(fd)
            return [answers[table[ev]]] if answers is not None else []
        if r < 0:
            owner_now = owner()
            if r == -_errno.EBADF and (owner_now is None
                                       or owner_now._p is None):
                _raise_closed(backend)      # closed by another thread
            _raise_errno(-r)
        if r == 0:
            return []
        try:
            fds, bits = waiter.fds, waiter.bits
            try:
                if r == 1:
                    return [ready[fds[0]][table[bits[1]]]]
                m = r << 1
                return [ready[fd][table[ev]]
                        for fd, ev in zip(fds[0:m:2], bits[1:m:2])]
            except (KeyError, IndexError):
                return collect(waiter, r)
        finally:
            _release(waiter.w)

    def collect(waiter: _Waiter, n: int) -> List[Tuple[SelectorKey, int]]:
        # The slow way, skipping what is not (or no longer) registered.
        result = []
        fds, bits = waiter.fds, waiter.bits
        for fd, ev in zip(fds[0:2 * n:2], bits[1:2 * n:2]):
            answers = ready.get(fd)
            if answers is not None:
                events = ((EVENT_READ if ev & ~_PE_WRITE else 0)
                          | (EVENT_WRITE if ev & ~_PE_READ else 0))
                result.append(answers[events])
        return result

    select.__doc__ = _CoreSelector.select.__doc__
    return select


def _long_timeout(clamp: bool, timeout: float) -> int:
    if clamp and timeout < 9.2e9:
        # Returns early after 24.8 days, with nothing ready.
        return _INT_MAX
    raise OverflowError("timeout is too large")


def _raise_closed(backend: str) -> None:
    raise ValueError(f"I/O operation on closed {backend} object")



class _KernelSelector(_CoreSelector):
    _kernel = True

    def fileno(self) -> int:
        """The kernel descriptor (epoll or kqueue)."""
        return _lib.pe_poller_fileno(self._poller())


_BACKENDS = _available_backends()

if "epoll" in _BACKENDS:

    class EpollSelector(_KernelSelector):
        """Epoll-based selector."""
        _backend = "epoll"

    __all__.append("EpollSelector")

if "kqueue" in _BACKENDS:

    class KqueueSelector(_KernelSelector):
        """Kqueue-based selector."""
        _backend = "kqueue"
        _clamp_timeout = True

    __all__.append("KqueueSelector")


class PollSelector(_CoreSelector):
    """Poll-based selector."""
    _backend = "poll"


class SelectSelector(_CoreSelector):
    """Select-based selector."""
    _backend = "select"
    _clamp_timeout = True

    # Descriptors at or above FD_SETSIZE: select(2) cannot watch them.  As
    # the stdlib's SelectSelector, register() accepts them and select()
    # raises ValueError while any is registered.
    _beyond: Optional[set] = None

    def register(self, fileobj: Any, events: int,
                 data: Any = None) -> SelectorKey:
        """As the base register(); a descriptor beyond FD_SETSIZE is
        accepted, and select() raises ValueError while it is registered."""
        try:
            return super().register(fileobj, events, data)
        except OSError as exc:
            if exc.errno != _errno.EINVAL:
                raise
        key = SelectorKey(fileobj, self._fileobj_lookup(fileobj), events, data)
        self._fd_to_key[key.fd] = key
        self._ready[key.fd] = _answers(key)
        if self._beyond is None:
            self._beyond = set()
        self._beyond.add(key.fd)
        return key

    def unregister(self, fileobj: Any) -> SelectorKey:
        """As the base unregister()."""
        key = super().unregister(fileobj)
        if self._beyond:
            self._beyond.discard(key.fd)
        return key

    def modify(self, fileobj: Any, events: int,
               data: Any = None) -> SelectorKey:
        """As the base modify(), descriptors beyond FD_SETSIZE included."""
        if self._beyond:
            fd = self._fileobj_lookup(fileobj)
            if fd in self._beyond:
                key = self._fd_to_key[fd]
                if (not events) or (events & ~(EVENT_READ | EVENT_WRITE)):
                    raise ValueError(f"Invalid events: {events!r}")
                key = SelectorKey(key.fileobj, fd, events, data)
                self._fd_to_key[fd] = key
                self._ready[fd] = _answers(key)
                return key
        return super().modify(fileobj, events, data)

    def select(self, timeout: Optional[float] = None
               ) -> List[Tuple[SelectorKey, int]]:
        """As the base select(); ValueError while a descriptor beyond
        FD_SETSIZE is registered, as the stdlib's SelectSelector."""
        if self._beyond:
            raise ValueError("filedescriptor out of range in select()")
        return super().select(timeout)

    def close(self) -> None:
        """As the base close()."""
        super().close()
        self._beyond = None


DefaultSelector: type = {
    "epoll": globals().get("EpollSelector"),
    "kqueue": globals().get("KqueueSelector"),
    "select": SelectSelector,
}.get(_best_backend()) or PollSelector

"""An asyncio event loop whose TCP and Unix stream transports are
connections of pyepoll's C loop (design: docs/asyncio.md).

:class:`EventLoop` is the stdlib's selector event loop with two changes:

* its selector is the C loop's own poller: every ``add_reader`` /
  ``add_writer`` fd (the self-pipe, signals, subprocess pipes, UDP,
  ``sock_*``) waits in the same ``pe_loop_run_into`` call as the C
  connections, with the timeout asyncio's scheduler asks for;
* stream sockets become C connections: accepting, reading, buffering and
  writing happen in C, and each batch of connection events is handed
  straight to the transports' protocols, with no callback handle per read.

Everything else (timers, ready callbacks, TLS over these transports, UDP,
subprocesses, signal handlers, executors) is the stdlib's own code.
"""
from __future__ import annotations

import asyncio
import contextvars
import errno
import heapq
import inspect
import io
import math
import os
import selectors
import socket
import sys
import warnings
from asyncio import base_events, constants, format_helpers, futures
from asyncio import protocols, sslproto
from asyncio import transports, trsock
from asyncio.exceptions import SendfileNotAvailableError
from asyncio.log import logger
from typing import Any, Callable, Dict, List, Optional, Tuple

from ._binding import errno_error as _errno_exc
from ._binding import ffi, lib, load_speedups, run_signal_handlers
from ._poller import available_backends
from .loop import _inherited, _live

__all__ = ["EventLoop", "new_event_loop", "SPEEDUPS"]

_EV_OPEN = lib.PE_EV_OPEN
_EV_DATA = lib.PE_EV_DATA
_EV_EOF = lib.PE_EV_EOF
_EV_DRAINED = lib.PE_EV_DRAINED
_EV_CLOSED = lib.PE_EV_CLOSED
_EV_FD = lib.PE_EV_FD
_PE_READ = lib.PE_READ
_PE_WRITE = lib.PE_WRITE
_CLOSE_NOW = lib.PE_CLOSE_NOW
_ADOPT = lib.PE_ADOPT_PAUSED | lib.PE_ADOPT_KEEPFD
_EVENT_READ = selectors.EVENT_READ
_EVENT_WRITE = selectors.EVENT_WRITE

_run_into = lib.pe_loop_run_into
_write = lib.pe_loop_write
_memmove = ffi.memmove
_from_buffer = ffi.from_buffer
_NULL = ffi.NULL
_MS_MAX = 0x7FFFFFFF
_STREAM_FAMILIES = (socket.AF_INET, socket.AF_INET6,
                    getattr(socket, "AF_UNIX", -1))
# Bytes one batch can bring: a connection reads at most input_high per run.
_INPUT_HIGH = 256 * 1024
# Writes a connection may hold back for the flush before the next wait
# (defer_writes, docs/asyncio.md "Writes and flushing").
_DEFER_BYTES = 64 * 1024
_BATCH_BYTES = 1024 * 1024
# 3.13+: Server tracks its transports (close_clients) and _attach takes one.
_ATTACH_TAKES_TRANSPORT = len(
    inspect.signature(base_events.Server._attach).parameters) > 1
_MISSING = object()
_Handle = asyncio.Handle
_new_handle = asyncio.Handle.__new__
_copy_context = contextvars.copy_context
# The stdlib's thresholds for rebuilding the timer heap, and its longest wait.
_MIN_SCHEDULED = base_events._MIN_SCHEDULED_TIMER_HANDLES
_MIN_CANCELLED_FRACTION = base_events._MIN_CANCELLED_TIMER_HANDLES_FRACTION
_MAX_SELECT_TIMEOUT = base_events.MAXIMUM_SELECT_TIMEOUT
_NO_EXTRA: Dict[str, Any] = {}      # shared, never written (see CTransport)
_HIGH_MAX = 1 << 62                 # a high-water mark C compares as int64


def _report_handle_failure(handle: asyncio.Handle, exc: BaseException) -> None:
    """What Handle._run does when its callback raised: the loop's exception
    handler gets the same context (message, exception, handle)."""
    cb = format_helpers._format_callback_source(handle._callback, handle._args)
    handle._loop.call_exception_handler({
        "message": f"Exception in callback {cb}",
        "exception": exc,
        "handle": handle,
    })


def _load_speedups() -> Any:
    """pyepoll._speedups (csrc/cpython/speedups.c), the C hot path of the
    batch walk and of CTransport.write, given the core's entry points; None
    on PyPy, where it is not built, or with PYEPOLL_SPEEDUPS=0."""
    _speedups: Any = load_speedups()
    if _speedups is None:
        return None
    _speedups.init(
        int(ffi.cast("uintptr_t", ffi.addressof(lib, "pe_loop_run_into"))),
        int(ffi.cast("uintptr_t", ffi.addressof(lib, "pe_loop_write"))))
    _speedups.iter_init(
        asyncio.Handle, contextvars.Context, contextvars.copy_context,
        heapq.heappop, _report_handle_failure, _MIN_SCHEDULED,
        _MIN_CANCELLED_FRACTION, _MAX_SELECT_TIMEOUT, futures.Future,
        asyncio.TimerHandle)
    return _speedups


# The module new loops use; None: the pure Python path.  SPEEDUPS says which
# (read at import: PYEPOLL_SPEEDUPS=0 forces the Python path).
_sp = _load_speedups()
SPEEDUPS = _sp is not None


# pyepoll.loop's fork registry serves these loops too: its after-fork hook
# calls _forked() on every loop in _live, and _inherited keeps the C loops a
# child must never free (a kqueue's number may name another file there).


class _LoopSelector(selectors.BaseSelector):
    """selectors API over the C loop's poller (``pe_loop_watch``).  Only
    :class:`EventLoop` uses it: ``select()`` also dispatches the C
    connections' events of the batch before it returns the fds' events."""

    def __init__(self, loop: "EventLoop") -> None:
        self._loop: Optional[EventLoop] = loop
        self._fd_to_key: Dict[int, selectors.SelectorKey] = {}
        self._map = selectors._SelectorMapping(self)   # type: ignore[attr-defined]

    def _watch(self, fd: int, events: int) -> None:
        loop = self._loop
        if loop is None or loop._p is None:
            raise RuntimeError("selector is closed")
        bits = ((_PE_READ if events & _EVENT_READ else 0) |
                (_PE_WRITE if events & _EVENT_WRITE else 0))
        rc = lib.pe_loop_watch(loop._p, fd, bits)
        if rc < 0:
            if rc == -errno.EEXIST:
                raise FileExistsError(
                    errno.EEXIST, f"fd {fd} is a connection of the event "
                                  f"loop's transports")
            raise _errno_exc(-rc)

    def register(self, fileobj: Any, events: int,
                 data: Any = None) -> selectors.SelectorKey:
        if not events or events & ~(_EVENT_READ | _EVENT_WRITE):
            raise ValueError(f"Invalid events: {events!r}")
        fd = selectors._fileobj_to_fd(fileobj)      # type: ignore[attr-defined]
        if fd in self._fd_to_key:
            raise KeyError(f"{fileobj!r} (FD {fd}) is already registered")
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._watch(fd, events)
        self._fd_to_key[fd] = key
        return key

    def _fileobj_lookup(self, fileobj: Any) -> int:
        # As selectors: a closed file object is found by identity.
        try:
            return selectors._fileobj_to_fd(fileobj)  # type: ignore[attr-defined]
        except ValueError:
            for key in self._fd_to_key.values():
                if key.fileobj is fileobj:
                    return key.fd
            raise

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = self._fileobj_lookup(fileobj)
        try:
            key = self._fd_to_key.pop(fd)
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None
        loop = self._loop
        if loop is not None and loop._p is not None:
            # A closed fd (or one a connection took over) is already gone
            # from the poller, as selectors ignores the OSError then.
            lib.pe_loop_watch(loop._p, fd, 0)
        return key

    def modify(self, fileobj: Any, events: int,
               data: Any = None) -> selectors.SelectorKey:
        if not events or events & ~(_EVENT_READ | _EVENT_WRITE):
            raise ValueError(f"Invalid events: {events!r}")
        fd = self._fileobj_lookup(fileobj)
        try:
            key = self._fd_to_key[fd]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None
        if events != key.events:
            self._watch(fd, events)
        key = key._replace(events=events, data=data)
        self._fd_to_key[fd] = key
        return key

    def select(self, timeout: Optional[float] = None
               ) -> List[Tuple[selectors.SelectorKey, int]]:
        loop = self._loop
        if loop is None:
            raise RuntimeError("selector is closed")
        return loop._select(timeout, self._fd_to_key)

    def close(self) -> None:
        self._fd_to_key.clear()
        self._loop = None

    def get_map(self) -> Any:
        return self._map if self._loop is not None else None


class EventLoop(asyncio.SelectorEventLoop):  # type: ignore[misc, valid-type]
    """asyncio's selector event loop on pyepoll's C connection loop.

    ``backend`` picks the poller (None: the best); ``trigger`` is
    ``"edge"`` (default where the backend has it) or ``"level"`` for the
    connections (fds given to ``add_reader`` are always level-triggered,
    as asyncio expects); ``max_connections`` bounds the C connection table
    (sockets beyond it get the stdlib's transports); ``batch`` is the most
    events one wait hands out."""

    # The state the iteration and call_soon read per call, stdlib's and
    # ours, in slots (beside the instance dict the stdlib's classes give):
    # aio_iter.c reads them through their member descriptors, not by a
    # lookup in a dict of some 40 keys each time, and stdlib code that
    # sets them (loop._debug = True, stop()'s _stopping) still does.  With
    # a few more here the dict keeps at most 30 keys, CPython 3.11+'s
    # bound for an instance's attributes kept inline (its lookups, and the
    # misses _asyncio's loop.call_soon/get_debug make before finding the
    # method, cost less then).
    __slots__ = ("_debug", "_closed", "_stopping", "_ready", "_scheduled",
                 "_clock_resolution", "_timer_cancelled_count", "_sb", "_p",
                 "_rest", "_later", "_conns", "_selector", "_task_factory",
                 "_thread_id")

    def __init__(self, *, backend: Optional[str] = None,
                 trigger: Optional[str] = None,
                 max_connections: int = 65536, batch: int = 512) -> None:
        # Closed until the stdlib's __init__ ran, so that __del__ after a
        # refused argument finds nothing to close.
        self._closed = True
        self._p: Any = None
        if backend is not None and backend not in available_backends():
            raise ValueError(f"backend {backend!r} is not available here; "
                             f"available: {', '.join(available_backends())}")
        for name_, value, top in (("max_connections", max_connections,
                                   0x7FFFFFF0),
                                  ("batch", batch, 1 << 20)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name_} must be an int, not "
                                f"{type(value).__name__}")
            if not 1 <= value <= top:
                raise ValueError(f"{name_} must be between 1 and {top}, "
                                 f"got {value}")
        cfg = ffi.new("struct pe_loop_config *")
        lib.pe_loop_config_init(cfg)
        name = _NULL if backend is None else ffi.new("char[]", backend.encode())
        cfg.backend = name
        if trigger is None:
            best = backend or available_backends()[0]
            trigger = "edge" if best in ("epoll", "kqueue") else "level"
        if trigger not in ("edge", "level"):
            raise ValueError(f"trigger must be 'edge' or 'level', "
                             f"not {trigger!r}")
        cfg.edge = 1 if trigger == "edge" else 0
        cfg.max_conns = max_connections
        cfg.in_high = _INPUT_HIGH
        cfg.in_low = _INPUT_HIGH // 4
        # asyncio queues without bound and calls pause_writing itself: no
        # WRITE_FULL, no ENOBUFS short of absurd sizes.
        cfg.out_high = 0xFFFFFFFF
        cfg.out_max = 0x7FFFFFFF
        cfg.nodelay = 1
        # The writes of one batch of callbacks (uvicorn's head and body)
        # leave in one send, before the next wait.
        cfg.defer_writes = _DEFER_BYTES
        err = ffi.new("int *")
        p = lib.pe_loop_new(cfg, err)
        if p == _NULL:
            if err[0] == -errno.EOPNOTSUPP:
                raise ValueError(f"trigger='edge' is not supported by the "
                                 f"{backend} backend; use trigger='level'")
            raise _errno_exc(-err[0])
        self._p = ffi.gc(p, lib.pe_loop_free)
        self._trigger = trigger
        self._batch = batch
        self._bev = ffi.new("struct pe_loop_bevent[]", batch)
        self._bq = memoryview(ffi.buffer(self._bev)).cast("Q")
        self._bsize = _BATCH_BYTES
        self._bbuf = ffi.new("char[]", self._bsize)
        # Slicing the cffi buffer makes a bytes object in one copy.
        self._bbytes = ffi.buffer(self._bbuf)
        self._bview = memoryview(self._bbytes)
        # The C walk (pyepoll._speedups) over the same buffers; None: the
        # Python walk.
        self._sb: Any = None
        if _sp is not None:
            addr = ffi.cast
            self._sb = _sp.Batch(
                int(addr("uintptr_t", self._p)),
                int(addr("uintptr_t", self._bev)), batch,
                int(addr("uintptr_t", self._bbuf)), self._bsize,
                (self._p, self._bev, self._bbuf))
        # handle -> CTransport; on the C paths a ConnMap (the same use, an
        # array indexed by the handle's slot, read by the C walk per DATA).
        self._conns: Any = {} if _sp is None else _sp.ConnMap()
        # listener id -> (protocol factory, Server); listening fd -> id.
        self._serving: Dict[int, Tuple[Callable[[], Any], Any]] = {}
        self._listener_of: Dict[int, int] = {}
        self._rest: Any = None
        self._later: Optional[List[int]] = None
        self._handle_out = ffi.new("pe_handle *")
        self._u32 = ffi.new("uint32_t[2]")
        self._pid_fork: Optional[int] = None
        _live.add(self)
        super().__init__(_LoopSelector(self))
        if self._sb is not None:
            self._sb.bind(self, self._conns, self._ready)

    def _forked(self) -> None:
        # In a fork()ed child: the C loop (and its sockets) are the
        # parent's; keep it, never free or wait on it here.
        p, self._p = self._p, None
        if p is None:
            return
        _inherited.append(p)
        if self._sb is not None:
            self._sb.detach()
        self._pid_fork = os.getppid()
        for t in list(self._conns.values()):
            t._loop_gone()
        self._conns.clear()

    # -- the wait --------------------------------------------------------------

    def run_forever(self) -> None:
        # Writes are sent before each wait; an iteration that stops the loop
        # has no next wait, so its writes leave here (run_until_complete
        # ends through this too).
        try:
            super().run_forever()
        finally:
            self._flush()

    def _flush(self) -> None:
        """Send every connection's deferred writes now; a failed send
        closes that connection (its CLOSED comes with the next batch)."""
        p = self._p
        if p is not None:
            lib.pe_loop_flush(p)

    def _prune_timers(self) -> None:
        """The stdlib's upkeep of the timer heap: rebuild it without the
        cancelled timers when they are many, else pop those at its head."""
        scheduled = self._scheduled
        n = len(scheduled)
        if (n > _MIN_SCHEDULED and
                self._timer_cancelled_count / n > _MIN_CANCELLED_FRACTION):
            keep = []
            for handle in scheduled:
                if handle._cancelled:
                    handle._scheduled = False
                else:
                    keep.append(handle)
            heapq.heapify(keep)
            self._scheduled = keep
            self._timer_cancelled_count = 0
        else:
            while scheduled and scheduled[0]._cancelled:
                self._timer_cancelled_count -= 1
                handle = heapq.heappop(scheduled)
                handle._scheduled = False

    def _run_once_py(self) -> None:
        """One iteration: the stdlib's _run_once, step for step, without
        what it spends per wakeup that this loop does not need (a second
        clock read when no timer is pending, the selector's frame, an empty
        _process_events call).  A server that answers one request per
        wakeup pays this every time (issue 15).  Debug mode (slow-callback
        logging) keeps the stdlib's own."""
        if self._debug:
            return super()._run_once()
        if self._scheduled:
            self._prune_timers()
        scheduled = self._scheduled
        ready = self._ready
        if ready or self._stopping:
            timeout: Optional[float] = 0
        elif scheduled:
            timeout = min(max(0, scheduled[0]._when - self.time()),
                          _MAX_SELECT_TIMEOUT)
        else:
            timeout = None
        event_list = self._select(timeout, self._selector._fd_to_key)
        if event_list:
            self._process_events(event_list)
        event_list = None               # no cycle through a traceback
        if scheduled:
            end_time = self.time() + self._clock_resolution
            while scheduled:
                handle = scheduled[0]
                if handle._when >= end_time:
                    break
                handle = heapq.heappop(scheduled)
                handle._scheduled = False
                ready.append(handle)
        # Only the callbacks ready now; those they schedule run next time.
        for _ in range(len(ready)):
            handle = ready.popleft()
            if handle._cancelled:
                continue
            if handle.__class__ is not _Handle:
                handle._run()           # TimerHandle, or a subclass
                continue
            # Handle._run inlined (one frame less per callback); a failure
            # goes through Handle._run's own reporting, which runs the
            # callback no second time (_failed_handle).
            try:
                handle._context.run(handle._callback, *handle._args)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                _report_handle_failure(handle, exc)
        handle = None

    # pyepoll._speedups replaces it with the same steps in C (aio_iter.c).
    _run_once = _run_once_py

    def _call_soon_py(self, callback: Any, *args: Any,
                      context: Any = None) -> asyncio.Handle:
        """The stdlib's call_soon, with the Handle made here: outside debug
        mode that is two Python frames less (Handle.__init__ and its
        get_debug call) for the call every task wake-up makes."""
        if self._debug or self._closed:
            handle = super().call_soon(callback, *args, context=context)
            if handle._source_traceback:
                # Debug: the stack ends at the caller, not at this frame.
                del handle._source_traceback[-1]
            return handle
        handle = _new_handle(_Handle)
        handle._context = _copy_context() if context is None else context
        handle._loop = self
        handle._callback = callback
        handle._args = args
        handle._cancelled = False
        handle._repr = None
        handle._source_traceback = None
        self._ready.append(handle)
        return handle

    call_soon = _call_soon_py       # or aio_iter.c's (see _use_speedups)

    # The stdlib's; aio_iter.c has both in C (no Python frame per Future,
    # whose __init__ asks get_debug) and calls this one in debug mode, so
    # a Future's source traceback is the stdlib's.
    _create_future_py = base_events.BaseEventLoop.create_future
    create_future = _create_future_py
    _get_debug_py = base_events.BaseEventLoop.get_debug
    get_debug = _get_debug_py

    def _select_timeout(self, timeout: Optional[float]
                        ) -> List[Tuple[selectors.SelectorKey, int]]:
        # aio_iter.c's run_once, when the wait is not Batch.select's alone.
        return self._select(timeout, self._selector._fd_to_key)

    def _select(self, timeout: Optional[float],
                fd_to_key: Dict[int, selectors.SelectorKey]
                ) -> List[Tuple[selectors.SelectorKey, int]]:
        p = self._p
        if p is None:
            if self._pid_fork is not None:
                raise RuntimeError(
                    f"this event loop was created in process "
                    f"{self._pid_fork}, before fork(); create a new one in "
                    f"the child (pid {os.getpid()})")
            raise RuntimeError("Event loop is closed")
        if self._rest is not None:
            # A callback's BaseException (KeyboardInterrupt) left part of
            # the last batch undelivered: hand it out before waiting.
            it, self._rest = self._rest, None
            if self._sb is not None:
                return self._walk_c(it, fd_to_key)
            return self._walk(it, fd_to_key)
        if self._later is not None:
            # The iteration that queued _walk_later was interrupted: walk
            # now, before the next run overwrites the batch buffer.
            self._walk_later(self._later)
            return []
        sb = self._sb
        if sb is not None:
            # The C path: timeout, wait and walk in one call (as below).
            try:
                r = sb.select(timeout)
            except BaseException:
                self._rest = True            # the walk keeps its position
                raise
            if r is None:
                return []
            return self._select_result(r, fd_to_key)
        if timeout is None:
            ms = -1
        elif timeout <= 0:
            ms = 0
        else:
            # Rounded up: a timer due in 0.3 ms must not spin at 0 ms.
            ms = math.ceil(timeout * 1000.0)
            if ms > _MS_MAX:
                ms = _MS_MAX
        n = _run_into(p, _NULL, 0, self._bev, self._batch, ms, self._bbuf,
                      self._bsize)
        if n <= 0:
            if n == -errno.EINTR:
                run_signal_handlers()   # one that raises ends run (PEP 475)
            elif n:
                raise _errno_exc(-n)
            return []
        vals = self._bq[0:n << 2].tolist()
        if self._ready:
            # asyncio runs I/O callbacks after those that were ready before
            # the wait (a task woken by a waiter sees its transport before
            # the transport's first data): the batch's connection events
            # go in one callback behind them; the fds' events as usual.
            self._later = vals
            self._call_soon(self._walk_later, (vals,), None)
            return self._fd_events(vals, fd_to_key)
        it = iter(vals)
        return self._walk(zip(it, it, it, it), fd_to_key)

    def _select_result(self, r: Any,
                       fd_to_key: Optional[Dict[int, selectors.SelectorKey]]
                       = None) -> List[Tuple[selectors.SelectorKey, int]]:
        """What Batch.select's answer other than None means (the C path of
        _select, and aio_iter.c's run_once): the fds' events, a failed or
        interrupted wait, or a batch left for a queued walk (aio_iter.c's
        queue_walk takes the same steps in C, and gives the fds' events
        here as a list)."""
        if fd_to_key is None:
            fd_to_key = self._selector._fd_to_key
        if type(r) is list:
            return self._ready_keys(r, fd_to_key)
        if r <= 0:
            if r == -errno.EINTR:
                run_signal_handlers()   # as on the Python path of _select
            elif r:
                raise _errno_exc(-r)
            return []
        # Callbacks were ready before the wait: as in _select, the batch
        # stays in the buffers until the queued walk.
        token = self._later = [r]
        self._call_soon(self._walk_later, (token,), None)
        fds = self._sb.fd_events()
        return self._ready_keys(fds, fd_to_key) if fds else []

    def _walk_later(self, vals: List[int]) -> None:
        if self._later is not vals:
            return                       # walked already (see _select)
        self._later = None
        sb = self._sb
        if sb is not None:
            # _walk_c(False, None) inlined: one frame less per queued walk,
            # which a busy server pays once per wakeup.
            try:
                sb.walk(self, self._conns, False)
            except BaseException:
                self._rest = False
                raise
            return
        it = iter(vals)
        self._walk(zip(it, it, it, it), None)

    def _walk_c(self, want_fds: bool,
                fd_to_key: Optional[Dict[int, selectors.SelectorKey]]
                ) -> List[Tuple[selectors.SelectorKey, int]]:
        """_walk in C (pyepoll._speedups): DATA for transports on a fast
        path is delivered there, every other event comes to _event in
        batch order.  An exception that escapes leaves the rest of the
        batch (its position is the C walk's) for the next select."""
        try:
            fds = self._sb.walk(self, self._conns, want_fds)
        except BaseException:
            self._rest = want_fds
            raise
        if fds is None or fd_to_key is None:
            return []
        return self._ready_keys(fds, fd_to_key)

    def _event(self, kind: int, h: int, arg: int, off: int) -> None:
        # One event the C walk hands back: the Python walk's own code
        # (what escapes it, the C walk lets escape).
        self._walk(((kind, h, arg, off),), None)

    def _feed_at(self, t: "CTransport", off: int, n: int, buf: Any) -> None:
        # BufferedProtocol, a buffer the C walk does not fill itself.
        t._feed_buffered(self._bbuf + off, n, buf)

    def _fd_events(self, vals: List[int],
                   fd_to_key: Dict[int, selectors.SelectorKey]
                   ) -> List[Tuple[selectors.SelectorKey, int]]:
        fds = [(vals[i + 1], vals[i + 2]) for i in range(0, len(vals), 4)
               if vals[i] == _EV_FD]
        return self._ready_keys(fds, fd_to_key) if fds else []

    def _walk(self, events: Any,
              fd_to_key: Optional[Dict[int, selectors.SelectorKey]]
              ) -> List[Tuple[selectors.SelectorKey, int]]:
        """Dispatch a batch's connection events; return its fd events as
        selector keys (none when fd_to_key is None: handed out already)."""
        conns = self._conns
        bbytes = self._bbytes
        bbuf = self._bbuf
        fds = None
        try:
            for kind, h, arg, off in events:
                if kind == _EV_DATA:
                    t = conns.get(h)
                    if t is None:
                        continue
                    if t._fast:
                        try:
                            t._data_received(bbytes[off:off + arg])
                        except (SystemExit, KeyboardInterrupt):
                            raise
                        except BaseException as exc:
                            t._fatal_error(exc, "Fatal error: "
                                           "protocol.data_received() call "
                                           "failed.")
                    elif t._bfast:
                        try:
                            buf = t._get_buffer(arg)
                        except (SystemExit, KeyboardInterrupt):
                            raise
                        except BaseException as exc:
                            t._fatal_error(exc, "Fatal error: "
                                           "protocol.get_buffer() call "
                                           "failed.")
                            continue
                        if ((buf is t._bufc and t._bufc_room >= arg) or
                                (type(buf) is bytearray and len(buf) >= arg)):
                            # All of it fits: one copy, one call.
                            _memmove(buf, bbuf + off, arg)
                            try:
                                t._buffer_updated(arg)
                            except (SystemExit, KeyboardInterrupt):
                                raise
                            except BaseException as exc:
                                t._fatal_error(exc, "Fatal error: "
                                               "protocol.buffer_updated() "
                                               "call failed.")
                        else:
                            t._feed_buffered(bbuf + off, arg, buf)
                    else:
                        t._data_slow(off, arg)
                elif kind == _EV_FD:
                    if fds is None:
                        fds = []
                    fds.append((h, arg))
                elif kind == _EV_OPEN:
                    self._on_open(h, arg)
                elif kind == _EV_CLOSED:
                    t = conns.pop(h, None)
                    if t is not None:
                        t._on_closed(arg)
                elif kind == _EV_EOF:
                    t = conns.get(h)
                    if t is not None:
                        t._on_eof()
                elif kind == _EV_DRAINED:
                    t = conns.get(h)
                    if t is not None:
                        t._on_drained(arg)
        except BaseException:
            if fd_to_key is not None:
                self._rest = events
            else:
                # The fds' events of this batch were handed out: drop
                # them from what is left.
                self._rest = ((k, h, a, o) for k, h, a, o in events
                              if k != _EV_FD)
            raise
        if fds is None or fd_to_key is None:
            return []
        return self._ready_keys(fds, fd_to_key)

    @staticmethod
    def _ready_keys(fds: List[Tuple[int, int]],
                    fd_to_key: Dict[int, selectors.SelectorKey]
                    ) -> List[Tuple[selectors.SelectorKey, int]]:
        # Keys are looked up now: a reader removed by a callback of the
        # batch is not called (as selectors' select does).
        ready = []
        for fd, bits in fds:
            key = fd_to_key.get(fd)
            if key is not None:
                mask = ((_EVENT_READ if bits & _PE_READ else 0) |
                        (_EVENT_WRITE if bits & _PE_WRITE else 0)) & key.events
                if mask:
                    ready.append((key, mask))
        return ready

    # -- connections ---------------------------------------------------------

    def _on_open(self, h: int, lid: int) -> None:
        entry = self._serving.get(lid)
        if entry is None:                  # its server closed meanwhile
            lib.pe_loop_close(self._p, h, _CLOSE_NOW)
            return
        factory, server = entry
        try:
            protocol = factory()
        except (SystemExit, KeyboardInterrupt):
            lib.pe_loop_close(self._p, h, _CLOSE_NOW)
            raise
        except BaseException as exc:
            lib.pe_loop_close(self._p, h, _CLOSE_NOW)
            if self._debug:
                self.call_exception_handler({
                    "message": "Error on transport creation for incoming "
                               "connection",
                    "exception": exc,
                })
            return
        t = CTransport(self, h, None, protocol, None, server)
        try:
            protocol.connection_made(t)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            t._fatal_error(exc, "Fatal error: protocol.connection_made() "
                                "call failed.")

    def _make_socket_transport(self, sock: socket.socket, protocol: Any,
                               waiter: Any = None, *, extra: Any = None,
                               server: Any = None) -> Any:
        p = self._p
        if (p is None or sock.type != socket.SOCK_STREAM or
                sock.family not in _STREAM_FAMILIES):
            return super()._make_socket_transport(
                sock, protocol, waiter, extra=extra, server=server)
        out = self._handle_out
        rc = lib.pe_loop_adopt(p, sock.fileno(), _ADOPT, out)
        if rc < 0:
            # Table full (or a descriptor the loop cannot take): the
            # stdlib's transport still serves it, in the same wait.
            return super()._make_socket_transport(
                sock, protocol, waiter, extra=extra, server=server)
        base_events._set_nodelay(sock)
        t = CTransport(self, int(out[0]), sock, protocol, extra, server)
        # As the stdlib, the addresses are known from the start (a peer
        # that answers and closes at once must not take them along).
        t.get_extra_info("socket")
        # As the stdlib: connection_made first, then reading, then the
        # waiter, each a callback of the next iteration.
        self.call_soon(protocol.connection_made, t)
        self.call_soon(t._start_reading)
        if waiter is not None:
            self.call_soon(futures._set_result_unless_cancelled, waiter, None)
        return t

    def _make_ssl_transport(self, rawsock: socket.socket, protocol: Any,
                            sslcontext: Any, waiter: Any = None, *,
                            server_side: bool = False,
                            server_hostname: Optional[str] = None,
                            extra: Any = None, server: Any = None,
                            **kwargs: Any) -> Any:
        # The stdlib's TLS (sslproto) over a C-connection transport; the
        # keyword arguments differ between Python versions and go through.
        ssl_protocol = sslproto.SSLProtocol(
            self, protocol, sslcontext, waiter, server_side, server_hostname,
            **kwargs)
        self._make_socket_transport(rawsock, ssl_protocol, extra=extra,
                                    server=server)
        return ssl_protocol._app_transport

    async def _sendfile_native(self, transp: Any, file: Any, offset: int,
                               count: Optional[int]) -> int:
        """loop.sendfile on a C connection: sendfile(2) from the file
        straight to the socket once the transport's queue is empty, with
        reading paused meanwhile (as the stdlib's)."""
        if not isinstance(transp, CTransport):
            return await super()._sendfile_native(transp, file, offset, count)
        try:
            fileno = file.fileno()
        except (AttributeError, io.UnsupportedOperation):
            raise SendfileNotAvailableError("not a regular file") from None
        try:
            fsize = os.fstat(fileno).st_size
        except OSError:
            raise SendfileNotAvailableError("not a regular file") from None
        blocksize = count if count else fsize
        if not blocksize:
            return 0
        resume_reading = transp.is_reading()
        transp.pause_reading()
        await transp._make_empty_waiter()
        total = 0
        try:
            while not count or total < count:
                want = (count - total) if count else blocksize
                h = transp._h
                if not h:
                    raise ConnectionError("Connection is closed by peer")
                n = lib.pe_loop_sendfile(self._p, h, fileno, offset + total,
                                         min(want, 0x7FFFF000))
                if n > 0:
                    total += n
                elif n == 0:
                    break                         # the file's end
                elif n == -errno.EAGAIN:
                    await transp._wait_writable()
                elif total == 0 and n not in (-errno.EPIPE,
                                              -errno.ECONNRESET):
                    # A file sendfile(2) cannot read: asyncio falls back.
                    raise SendfileNotAvailableError("os.sendfile call failed")
                else:
                    if n == -errno.ESTALE:
                        raise ConnectionError("Connection is closed by peer")
                    raise _errno_exc(-n)
            return total
        finally:
            if total > 0:
                os.lseek(fileno, offset + total, os.SEEK_SET)
            transp._reset_empty_waiter()
            if resume_reading:
                transp.resume_reading()

    def _start_serving(self, protocol_factory: Any, sock: socket.socket,
                       sslcontext: Any = None, server: Any = None,
                       backlog: int = 100, *args: Any, **kwargs: Any) -> None:
        if (sslcontext or self._p is None or
                sock.type != socket.SOCK_STREAM or
                sock.family not in _STREAM_FAMILIES):
            # TLS servers accept in Python; the accepted sockets still
            # become C connections through _make_ssl_transport.
            return super()._start_serving(protocol_factory, sock, sslcontext,
                                          server, backlog, *args, **kwargs)
        fd = sock.fileno()
        if fd in self._listener_of:
            return
        lid = lib.pe_loop_add_listener(self._p, fd)
        if lid < 0:
            raise _errno_exc(-lid)
        self._serving[lid] = (protocol_factory, server)
        self._listener_of[fd] = lid

    def _ensure_fd_no_transport(self, fd: Any) -> None:
        # add_reader/add_writer/sock_* on a transport's socket: asyncio's
        # RuntimeError, for the stdlib's transports and for C connections.
        super()._ensure_fd_no_transport(fd)
        fileno = fd if isinstance(fd, int) else int(fd.fileno())
        out = self._handle_out
        if self._p is not None and lib.pe_loop_fd_handle(
                self._p, fileno, out) == 0:
            transport = self._conns.get(int(out[0]))
            if transport is not None and not transport.is_closing():
                raise RuntimeError(f"File descriptor {fd!r} is used by "
                                   f"transport {transport!r}")

    def _stop_serving(self, sock: socket.socket) -> None:
        lid = self._listener_of.pop(sock.fileno(), None)
        if lid is not None:
            if self._p is not None:
                lib.pe_loop_remove_listener(self._p, lid)
            del self._serving[lid]
        # Then the stdlib's own, which finds no reader for a C listener: it
        # closes the socket, and from 3.13 removes a Unix server's socket
        # file unless the file was replaced (create_unix_server's
        # cleanup_socket).
        super()._stop_serving(sock)

    def close(self) -> None:
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        # Before the transports' sockets close: what they wrote goes out.
        self._flush()
        super().close()
        for t in list(self._conns.values()):
            t._loop_gone()
        self._conns.clear()
        self._serving.clear()
        self._listener_of.clear()
        p, self._p = self._p, None
        if self._sb is not None:
            self._sb.detach()       # before the C loop is torn down
        if p is not None:
            # Closes the C connections it owns now; the struct itself goes
            # with the last reference to p, so a call_soon_threadsafe in
            # another thread that read self._p before this still wakes a
            # dead loop (a no-op), never freed memory.
            lib.pe_loop_teardown(p)

    def _write_to_self(self) -> None:
        # call_soon_threadsafe (and a Python signal handler's callback)
        # wakes the wait through the C loop's eventfd: one write, none
        # while a wakeup is pending, drained in C with no Python callback.
        # The stdlib's self-pipe stays for signal.set_wakeup_fd.
        p = self._p
        if p is not None:
            lib.pe_loop_wakeup(p)


class CTransport(transports._FlowControlMixin,  # type: ignore[misc]
                 transports.Transport):
    """A stream transport whose socket is a connection of the C loop."""

    _start_tls_compatible = True
    _sendfile_compatible = (constants._SendfileMode.TRY_NATIVE
                            if sys.platform.startswith("linux")
                            else constants._SendfileMode.FALLBACK)

    __slots__ = ("_p", "_h", "_sock", "_sock_fd", "_protocol",
                 "_data_received", "_buffered", "_fast", "_bfast",
                 "_get_buffer", "_buffer_updated", "_closing",
                 "_conn_lost", "_eof", "_paused", "_held", "_held_eof",
                 "_lost_exc", "_server", "_protocol_connected", "_bufc",
                 "_empty_waiter", "_wwaiter", "_wblock",
                 "_bufc_room", "_w",
                 "__weakref__")

    def __init__(self, loop: EventLoop, h: int, sock: Optional[socket.socket],
                 protocol: Any, extra: Any, server: Any) -> None:
        # _w: the transport's state for the C paths (pyepoll._speedups.Conn),
        # kept current by _sync(); None on the Python path.
        self._w: Any = None
        # No dict per connection until get_extra_info fills one.
        super().__init__(_NO_EXTRA if extra is None else extra, loop)
        self._p = loop._p
        self._h = h
        self._sock = sock             # ours to close; None: the C loop's fd
        self._sock_fd = (sock.fileno() if sock is not None
                         else lib.pe_loop_fileno(self._p, h))
        self._closing = False
        self._conn_lost = 0
        self._eof = False
        # loop.sendfile: the queue drained (empty) / the socket writable;
        # _wblock: write() refuses (after write_eof, during a sendfile).
        self._empty_waiter: Any = None
        self._wwaiter: Any = None
        self._wblock = False
        self._paused = False
        self._held: Optional[List[bytes]] = None
        self._held_eof = False
        self._lost_exc: Optional[BaseException] = None
        self._bufc: Any = None          # BufferedProtocol: last view seen
        self._bufc_room = 0
        self._protocol_connected = False
        self._server = server
        self.set_protocol(protocol)
        if server is not None:
            if _ATTACH_TAKES_TRANSPORT:
                server._attach(self)
            else:
                server._attach()
        # Not in loop._transports (a weak map, ~150 bytes a connection):
        # _ensure_fd_no_transport asks the C loop instead.
        loop._conns[h] = self
        if loop._sb is not None:
            self._w = _sp.Conn(loop._sb)
            self._sync()

    def _sync(self) -> None:
        """Tell the C paths (if any) what changed: the handle write() may
        use (0: the Python way), the high-water mark, how DATA is
        delivered.  Called after every change of those."""
        w = self._w
        if w is None:
            return
        if self._fast:
            mode, cb1, cb2 = 1, self._data_received, None
        elif self._bfast:
            mode, cb1, cb2 = 2, self._get_buffer, self._buffer_updated
        else:
            mode, cb1, cb2 = 0, None, None
        h = 0 if self._wblock or self._p is None else self._h
        w.set(h, min(self._high_water, _HIGH_MAX), mode, cb1, cb2)

    def _set_write_buffer_limits(self, high: Any = None,
                                 low: Any = None) -> None:
        super()._set_write_buffer_limits(high, low)
        self._sync()

    def __repr__(self) -> str:
        state = ("closed" if self._h == 0 and self._conn_lost else
                 "closing" if self._closing else "open")
        return (f"<pyepoll.CTransport fd={self._sock_fd} {state} "
                f"reading={self.is_reading()}>")

    # -- protocol --------------------------------------------------------------

    def set_protocol(self, protocol: Any) -> None:
        self._protocol = protocol
        self._protocol_connected = True
        self._buffered = isinstance(protocol, protocols.BufferedProtocol)
        self._data_received = (None if self._buffered
                               else protocol.data_received)
        self._get_buffer = protocol.get_buffer if self._buffered else None
        self._buffer_updated = (protocol.buffer_updated if self._buffered
                                else None)
        self._update_fast()

    def get_protocol(self) -> Any:
        return self._protocol

    def _update_fast(self) -> None:
        # Straight from the batch walk: data_received (_fast) or one
        # get_buffer/buffer_updated (_bfast); else the slow path (paused,
        # closing, bytes held back).
        ok = not self._paused and not self._closing and self._held is None
        self._fast = ok and not self._buffered
        self._bfast = ok and self._buffered
        self._sync()

    # -- events from the batch walk ------------------------------------------

    def _data_slow(self, off: int, n: int) -> None:
        loop = self._loop
        if self._conn_lost or self._closing:
            return                          # stdlib stops reading on close
        if self._paused or self._held is not None:
            # Paused by a callback earlier in this batch: keep the bytes
            # for resume_reading, in order.
            if self._held is None:
                self._held = []
            self._held.append(loop._bbytes[off:off + n])
            self._update_fast()
            return
        if self._buffered:
            self._feed_buffered(loop._bbuf + off, n)
        else:
            self._deliver(loop._bbytes[off:off + n])

    def _deliver(self, data: bytes) -> None:
        try:
            self._data_received(data)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(
                exc, "Fatal error: protocol.data_received() call failed.")

    def _feed_buffered(self, src: Any, n: int, first: Any = None) -> None:
        """Copy n bytes from src (a C pointer into the batch buffer, or a
        bytes object held back) into the protocol's buffers, with no bytes
        object made; get_buffer is asked again while it gives less room
        than there are bytes.  first: what get_buffer already returned."""
        proto = self._protocol
        pos = 0
        while pos < n:
            try:
                if first is not None:
                    buf, first = first, None
                else:
                    buf = proto.get_buffer(n - pos)
                kind = type(buf)
                if buf is self._bufc:
                    room = self._bufc_room   # the same buffer as last time
                elif kind is bytearray:
                    room = len(buf)
                else:
                    mv = memoryview(buf)
                    if not mv.c_contiguous or mv.readonly:
                        raise TypeError("get_buffer() must return a writable "
                                        "contiguous buffer")
                    room = mv.nbytes
                    if kind is memoryview:
                        # A view's size cannot change: remember it.
                        self._bufc = buf
                        self._bufc_room = room
                if not room:
                    raise RuntimeError("get_buffer() returned an empty buffer")
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(
                    exc, "Fatal error: protocol.get_buffer() call failed.")
                return
            k = room if room < n - pos else n - pos
            try:
                if type(src) is bytes:
                    _memmove(buf, memoryview(src)[pos:pos + k], k)
                else:
                    _memmove(buf, src + pos, k)
            except (TypeError, ValueError, BufferError) as exc:
                # A view released since get_buffer returned it, say.
                self._fatal_error(exc, "Fatal read error on socket transport")
                return
            try:
                proto.buffer_updated(k)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(
                    exc, "Fatal error: protocol.buffer_updated() call failed.")
                return
            pos += k
            if pos < n and (self._paused or self._closing):
                if not self._closing:
                    # Paused by buffer_updated: the rest waits for resume.
                    self._held = [bytes(ffi.buffer(src + pos, n - pos))
                                  if type(src) is not bytes else src[pos:]]
                    self._update_fast()
                return

    def _on_eof(self) -> None:
        if self._conn_lost or self._closing:
            return
        if self._paused or self._held is not None:
            self._held_eof = True
            return
        if self._loop.get_debug():
            logger.debug("%r received EOF", self)
        try:
            keep_open = self._protocol.eof_received()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(
                exc, "Fatal error: protocol.eof_received() call failed.")
            return
        if not keep_open:
            self.close()
        # else: half-open; the C loop stopped reading, writes go on.

    def _on_drained(self, queued: int = 0) -> None:
        if queued:
            # The queue fell to the low-water mark (pe_loop_notify_below).
            if self._protocol_paused:
                self._maybe_resume_protocol()
            return
        waiter = self._empty_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        waiter, self._wwaiter = self._wwaiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._protocol_paused:
            self._maybe_resume_protocol()
        if self._closing and self._h:
            # close() waited for the queued bytes: they are out, unless a
            # callback above (resume_writing: TLS's close_notify) wrote
            # more, which leaves first (-1: that send failed, CLOSED
            # follows with the error; > 0: the next DRAINED closes).
            if self._send_deferred():
                return
            self._conn_lost += 1
            self._close_now()
            self._call_connection_lost(None)

    def _on_closed(self, err: int) -> None:
        """CLOSED for a connection the C loop closed itself (the peer reset,
        a send failed): the handle is stale; tell the protocol once."""
        self._h = 0
        self._closing = True
        self._fast = self._bfast = False
        self._sync()
        if not self._conn_lost:
            self._conn_lost = 1
        exc = self._lost_exc
        if exc is None and err:
            exc = _errno_exc(err)
        try:
            self._call_connection_lost(exc)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as e:
            self._loop.call_exception_handler({
                "message": "Exception in protocol.connection_lost()",
                "exception": e,
                "transport": self,
                "protocol": self._protocol,
            })

    def _call_connection_lost(self, exc: Optional[BaseException]) -> None:
        for waiter in (self._empty_waiter, self._wwaiter):
            if waiter is not None and not waiter.done():
                waiter.set_exception(
                    ConnectionError("Connection is closed by peer"))
        self._wwaiter = None
        try:
            if self._protocol_connected:
                self._protocol.connection_lost(exc)
        finally:
            sock, self._sock = self._sock, None
            if sock is not None:
                sock.close()
            self._protocol = None
            self._data_received = None
            self._get_buffer = self._buffer_updated = None
            self._sync()
            server, self._server = self._server, None
            if server is not None:
                if _ATTACH_TAKES_TRANSPORT:
                    server._detach(self)
                else:
                    server._detach()

    def _loop_gone(self) -> None:
        # The loop closed under us: nothing may reach the freed C loop, and
        # the descriptors go with it (those the C loop owned it closes).
        self._h = 0
        self._p = None
        self._closing = True
        self._fast = self._bfast = False
        self._sync()
        self._conn_lost = self._conn_lost or 1
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()             # (in a forked child: its own copy)

    def _start_reading(self) -> None:
        # After connection_made (adopted sockets start paused in C).
        if self._h and not self._paused and not self._closing:
            lib.pe_loop_resume_reading(self._p, self._h)

    # -- closing -------------------------------------------------------------

    def _send_deferred(self) -> int:
        """Send the loop's deferred writes now if this transport has bytes
        queued.  Returns the bytes still queued (the socket is full), or -1
        when the send failed: the C loop closed the connection and its
        CLOSED, with the error, is on the way."""
        p, h = self._p, self._h
        u = self._loop._u32
        if not h or lib.pe_loop_buffered(p, h, _NULL, u) < 0 or not u[0]:
            return 0                 # nothing queued (or closed already)
        lib.pe_loop_flush(p)
        if lib.pe_loop_buffered(p, h, _NULL, u) < 0:
            return -1
        return int(u[0])

    def _close_now(self) -> None:
        """Close in C now (queued bytes dropped); the caller tells the
        protocol.  The C loop's CLOSED for it is ignored."""
        h, self._h = self._h, 0
        if not h:
            return
        self._sync()
        if self._p is not None:
            lib.pe_loop_close(self._p, h, _CLOSE_NOW)
            self._loop._conns.pop(h, None)
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._fast = self._bfast = False
        self._sync()
        h = self._h
        if not h:
            return
        lib.pe_loop_pause_reading(self._p, h)
        # Writes deferred to the next wait go now, as the stdlib's write()
        # would have sent them: only what the socket refused delays
        # connection_lost (a failed send: CLOSED brings the error).
        if self._send_deferred() == 0:
            self._conn_lost += 1
            self._close_now()
            self._loop.call_soon(self._call_connection_lost, None)
        # else: DRAINED closes it once the queued bytes are out.

    def abort(self) -> None:
        self._force_close(None)

    def _force_close(self, exc: Optional[BaseException]) -> None:
        if self._conn_lost:
            return
        self._closing = True
        self._fast = self._bfast = False
        self._sync()
        self._conn_lost += 1
        if self._h:
            # The stdlib's write() sent what the socket took before an
            # abort; deferred writes get that one send too.
            self._send_deferred()
            self._close_now()
            self._loop.call_soon(self._call_connection_lost, exc)
        else:
            # The C loop closed it already: its CLOSED will carry exc.
            self._lost_exc = exc

    def _fatal_error(self, exc: BaseException,
                     message: str = "Fatal error on transport") -> None:
        if isinstance(exc, OSError):
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=True)
        else:
            self._loop.call_exception_handler({
                "message": message,
                "exception": exc,
                "transport": self,
                "protocol": self._protocol,
            })
        self._force_close(exc)

    def _is_closing_py(self) -> bool:
        return self._closing

    is_closing = _is_closing_py     # or aio_iter.c's (see _use_speedups)

    # -- reading ---------------------------------------------------------------

    def is_reading(self) -> bool:
        return not self._closing and not self._paused

    def pause_reading(self) -> None:
        if self._closing or self._paused:
            return
        self._paused = True
        self._fast = self._bfast = False
        self._sync()
        if self._h:
            lib.pe_loop_pause_reading(self._p, self._h)
        if self._loop.get_debug():
            logger.debug("%r pauses reading", self)

    def resume_reading(self) -> None:
        if self._closing or not self._paused:
            return
        self._paused = False
        if self._held is not None or self._held_eof:
            # Bytes a callback's pause held back go first, from the ready
            # queue (never from inside this call).
            self._loop.call_soon(self._deliver_held)
        else:
            self._update_fast()
        if self._h:
            lib.pe_loop_resume_reading(self._p, self._h)
        if self._loop.get_debug():
            logger.debug("%r resumes reading", self)

    def _deliver_held(self) -> None:
        while self._held and not self._paused and not self._closing:
            data = self._held.pop(0)
            if self._buffered:
                self._feed_buffered(data, len(data))
            else:
                self._deliver(data)
        if self._held == []:
            self._held = None
        if self._held is None and self._held_eof and not self._paused:
            self._held_eof = False
            self._update_fast()
            self._on_eof()
            return
        self._update_fast()

    # -- writing ---------------------------------------------------------------

    def _write_py(self, data: Any) -> None:
        h = self._h
        kind = type(data)
        # The common case first: a live connection, writes allowed (h is 0
        # once the connection is lost or closed).
        if h and not self._wblock:
            if kind is bytes:
                if not data:
                    return
                rc = _write(self._p, h, data, len(data))
            elif kind is memoryview or kind is bytearray:
                if not data:
                    return
                try:
                    buf = _from_buffer(data)
                except (TypeError, ValueError, BufferError):
                    buf = _from_buffer(bytes(data))  # non-contiguous view
                rc = _write(self._p, h, buf, len(buf))
            else:
                return self._write_slow(data)
            if rc > self._high_water:
                self._maybe_pause_protocol()
            elif rc < 0:
                self._write_failed(rc)
            return
        self._write_slow(data)

    write = _write_py    # the C one (pyepoll._speedups) replaces it

    def _maybe_pause_protocol(self) -> None:
        was = self._protocol_paused
        super()._maybe_pause_protocol()
        if self._protocol_paused and not was and self._h:
            # resume_writing at the low-water mark, as asyncio does; with a
            # mark of 0 this asks for the DRAINED of an empty queue, which
            # deferred bytes sent whole would not report otherwise.
            lib.pe_loop_notify_below(self._p, self._h, self._low_water)

    def _write_slow(self, data: Any) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, "
                            f"not {type(data).__name__!r}")
        if self._eof:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self._empty_waiter is not None:
            raise RuntimeError("unable to write; sendfile is in progress")
        if not data:
            return
        if self._conn_lost:
            if self._conn_lost >= constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning("socket.send() raised exception.")
            self._conn_lost += 1
            return
        if self._h:                     # a subclass of bytes, bytearray...
            self.write(bytes(data))

    def _write_failed(self, rc: int) -> None:
        if rc == -errno.ENOBUFS:
            self._fatal_error(BufferError("write buffer over 2 GiB"),
                              "Fatal write error on socket transport")
            return
        # The C loop closed the connection: the send failed (the peer went
        # away), or it had (-ESTALE).  Its CLOSED, carrying the error, is
        # on the way; until then the transport is closing, as asyncio's
        # is after a write error (drain() then yields to the loop).
        self._h = 0
        self._closing = True
        self._fast = self._bfast = False
        self._sync()
        self._conn_lost += 1

    def _make_empty_waiter(self) -> Any:
        if self._empty_waiter is not None:
            raise RuntimeError("Empty waiter is already set")
        self._empty_waiter = self._loop.create_future()
        self._wblock = True
        self._sync()
        # Deferred writes go now; only a full socket is waited for.
        if self._send_deferred() <= 0:
            self._empty_waiter.set_result(None)
        return self._empty_waiter

    def _reset_empty_waiter(self) -> None:
        self._empty_waiter = None
        self._wblock = self._eof
        self._sync()

    def _wait_writable(self) -> Any:
        """A future done at the next DRAINED (pe_loop_sendfile's EAGAIN
        armed it)."""
        if self._wwaiter is None:
            self._wwaiter = self._loop.create_future()
        return self._wwaiter

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        if self._closing or self._eof:
            return
        self._eof = self._wblock = True
        self._sync()
        if self._h:
            lib.pe_loop_shutdown(self._p, self._h)   # after queued bytes

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        h = self._h
        if not h:
            return 0
        u = self._loop._u32
        if lib.pe_loop_buffered(self._p, h, _NULL, u) < 0:
            return 0
        return int(u[0])

    # -- extra info ----------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        value = self._extra.get(name, _MISSING)
        if value is not _MISSING:
            return value
        if name not in ("socket", "sockname", "peername"):
            return default
        sock = self._socket()
        if sock is None:
            return default
        if self._extra is _NO_EXTRA:
            self._extra = {}
        extra = self._extra
        extra["socket"] = trsock.TransportSocket(sock)
        try:
            extra["sockname"] = sock.getsockname()
        except OSError:
            extra["sockname"] = None
        if "peername" not in extra:
            try:
                extra["peername"] = sock.getpeername()
            except OSError:
                extra["peername"] = None
        return extra[name]

    def _socket(self) -> Optional[socket.socket]:
        """The Python socket object, made on first use for a connection the
        C loop accepted (the fd is then the object's to close)."""
        if self._sock is not None:
            return self._sock
        if not self._h:
            return None
        if lib.pe_loop_keep_fd(self._p, self._h) < 0:
            return None
        self._sock = socket.socket(fileno=self._sock_fd)
        return self._sock


def _use_speedups(on: bool) -> None:
    """Switch the path loops created from now on take (tests): the C one
    (only where pyepoll._speedups loaded) or the pure Python one."""
    global _sp, SPEEDUPS
    _sp = (_sp_module if on else None)
    SPEEDUPS = _sp is not None
    CTransport.write = (_sp.write_method(CTransport)  # type: ignore
                        if _sp is not None else CTransport._write_py)
    if _sp is not None:
        # One iteration, call_soon, create_future, get_debug and the
        # transport's is_closing in C (csrc/cpython/aio_iter.c); time and
        # create_task, the stdlib's one-liners aiohttp calls per request,
        # in csrc/cpython/aio_methods.c.
        (EventLoop._run_once, EventLoop.call_soon, EventLoop.create_future,
         EventLoop.get_debug) = _sp.iter_methods(EventLoop)
        CTransport.is_closing, = _sp.transport_methods(CTransport)
        small = _sp.small_methods(
            EventLoop, base_events,
            "context" in inspect.signature(
                base_events.BaseEventLoop.create_task).parameters)
    else:
        EventLoop._run_once = EventLoop._run_once_py    # type: ignore
        EventLoop.call_soon = EventLoop._call_soon_py   # type: ignore
        EventLoop.create_future = EventLoop._create_future_py  # type: ignore
        EventLoop.get_debug = EventLoop._get_debug_py   # type: ignore
        CTransport.is_closing = CTransport._is_closing_py  # type: ignore
        small = _SMALL_PY
    for name, method in small.items():
        setattr(EventLoop, name, method)


_sp_module = _sp
# The Python methods the C ones replace: the stdlib's own for the loop.
_SMALL_PY = {"time": base_events.BaseEventLoop.time,
             "create_task": base_events.BaseEventLoop.create_task}
_use_speedups(SPEEDUPS)


def new_event_loop(**kwargs: Any) -> EventLoop:
    """A new :class:`EventLoop` (keyword arguments as its constructor)."""
    return EventLoop(**kwargs)

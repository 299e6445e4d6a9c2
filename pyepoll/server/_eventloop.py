"""The event-loop model (default): one thread, pyepoll.Loop doing the I/O.

Accepting, reading, writing, buffering and timeouts happen in C; this thread
handles batches of events and calls handlers.  Blocking work submitted by a
handler runs in a bounded pool of --pool-threads threads; the pool hands
results back through a deque and wakes the loop, and their callbacks run
here, so handlers never see two threads.

Capacity: at most --max-connections connections are active.  Beyond that,
overflow ``queue`` keeps up to --queue-size accepted connections (reading
paused) in a FIFO and activates them in order as others close; the C loop's
table holds exactly active + queued, so newcomers beyond that wait in the
kernel backlog.  Overflow ``reject`` answers up to --queue-size extras at
a time with 503 (HTTP) or closes them (echo); beyond that, the C loop
closes them at accept.

Memory per connection matters (servers hold many idle ones): the
connection objects live in a list indexed by the C table's slot (no dict),
and what only some connections need (pool jobs, data held while paused)
sits in a side object made on demand.
"""
from __future__ import annotations

import collections
import logging
import socket
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Deque, List, Optional

from ..http import bytes_reader, response
from ..loop import (EV_CLOSED, EV_DATA, EV_DRAINED, EV_EOF, EV_OPEN,
                    EV_READ_TIMEOUT, EV_WAKEUP, EV_WRITE_FULL, Loop)
from . import _connlog
from ._config import Config
from ._stats import Stats
from .handler import Connection, Handler
from .protocols import HttpHandler, hello_answer, hello_until

__all__ = ["EventLoopModel", "LoopFailed"]

log = logging.getLogger("pyepoll.server")

# Why reading is paused (bits of _LoopConn.paused).
_P_FULL = 1       # output above the high-water mark
_P_JOBS = 2       # pool jobs pending: their replies come first
_P_QUEUED = 4     # waiting in the overflow FIFO
_HOLD = _P_JOBS | _P_QUEUED     # data arriving now waits

_SLOT = 0xFFFFFFFF              # a handle's low 32 bits: its table slot
_IDLE_MARGIN = 0.5
# Runs of up to this many pipelined answers are kept ready (per Date
# second): a bound on what a client can make the server cache.
_CACHED_RUNS = 64


class LoopFailed(RuntimeError):
    """The event loop itself failed; the server cannot go on."""


class _Extra:
    """Per-connection state that most connections never need."""

    __slots__ = ("peer", "jobs", "held", "eof_held", "direct")

    def __init__(self) -> None:
        self.peer: Optional[tuple] = None
        self.jobs: Deque[list] = collections.deque()
        self.held: List[bytes] = []     # data that came while paused
        self.eof_held = False
        self.direct = False             # True while a job's callback runs


class _LoopConn(Connection):
    """A connection of the event loop, as its handler sees it.  Each model
    makes a subclass whose ``_m`` is the model."""

    __slots__ = ("h", "handler", "closed", "paused", "active", "x")
    _m: "EventLoopModel"

    def __init__(self, h: int) -> None:
        self.h = h
        self.handler: Optional[Handler] = None
        self.closed = False
        self.paused = 0
        self.active = False
        self.x: Optional[_Extra] = None

    def extra(self) -> _Extra:
        x = self.x
        if x is None:
            self.x = x = _Extra()
        return x

    @property
    def peer(self):                                # type: ignore[override]
        x = self.extra()
        if x.peer is None:
            try:
                x.peer = self._m.loop.peer(self.h)
            except (OSError, ValueError):
                x.peer = ("?", 0)
        return x.peer

    def _queued_behind_jobs(self, item: Optional[bytes]) -> bool:
        x = self.x
        if x is not None and x.jobs and not x.direct:
            # Behind the replies of jobs still running: keep the order.
            x.jobs.append([None, item])
            return True
        return False

    def send(self, data: bytes) -> None:
        if self.closed or (self.x is not None
                           and self._queued_behind_jobs(data)):
            return
        try:
            self._m.send(self.h, data)
        except (BufferError, OSError, ValueError):
            self.send_failed()

    def send_failed(self) -> None:
        """Called in the exception handler of a failed send."""
        if isinstance(sys.exc_info()[1], BufferError):
            log.warning("output of %s:%s over the limit; closing", *self.peer)
            self.abort()
        else:
            # The peer is gone: EV_CLOSED follows.
            self.closed = True

    def close(self) -> None:
        if self.closed or (self.x is not None
                           and self._queued_behind_jobs(None)):
            return
        self.closed = True
        try:
            self._m.loop.close_connection(self.h, "flush")
        except (OSError, ValueError):
            pass

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self._m.loop.close_connection(self.h, "abort")
            except (OSError, ValueError):
                pass

    def shutdown_write(self) -> None:
        if not self.closed:
            try:
                self._m.loop.shutdown_write(self.h)
            except (OSError, ValueError):
                pass

    def set_timeout(self, on: bool = True) -> None:
        if not self.closed:
            try:
                self._m.loop.arm_read_timeout(self.h, on)
            except (OSError, ValueError):
                pass

    def submit(self, fn: Callable[..., Any], *args: Any,
               then: Optional[Callable[[Any], None]] = None) -> None:
        self._m.submit(self, fn, args, then)


class EventLoopModel:
    """Serve connections with :class:`pyepoll.Loop` on the calling thread."""

    def __init__(self, cfg: Config, new_factory: Callable[[], Callable[[], Handler]],
                 stats: Stats, listener: socket.socket) -> None:
        self.cfg = cfg
        self.stats = stats
        self._listener = listener
        self._echo = cfg.handler is None and cfg.protocol == "echo"
        self._http = cfg.handler is None and cfg.protocol == "http"
        self._factory = new_factory()
        # The parser the built-in HTTP handlers of this thread share.
        self._parser = getattr(self._factory, "parser", None) \
            if self._http else None
        self._capacity = cfg.max_connections
        self._queueing = cfg.overflow == "queue"
        idle = cfg.idle_timeout or None
        if idle is not None and not self._echo \
                and cfg.request_timeout >= idle:
            # A stalled request must get its 408 before the idle timer,
            # started by the same last byte, closes the connection.
            idle += _IDLE_MARGIN
        size = self._capacity + cfg.queue_size
        self.loop = Loop(
            backend=cfg.backend, trigger=cfg.trigger,
            max_connections=size,
            overflow="backlog" if self._queueing else "close",
            idle_timeout=idle,
            read_timeout=cfg.request_timeout,
            batch=1024, busy_poll=cfg.busy_poll_us / 1e6 or None)
        self.send = self.loop.send
        self._lid = self.loop.add_listener(listener)
        # A signal may go to any thread that does not block it (a
        # --pool-threads worker, libkqueue's own thread), and then no wait
        # of this one is interrupted: SIGTERM's handler would run at the
        # next event, maybe never.  The loop watches a signal wakeup fd.
        # Here, not in run: before the server announces itself, so that
        # what it holds then (its descriptors) is what it holds serving.
        if threading.current_thread() is threading.main_thread():
            self.loop.wake_on_signals()
        self._conn_cls = type("_Conn", (_LoopConn,), {"__slots__": (),
                                                      "_m": self})
        # Indexed by table slot; an entry is checked against the full
        # handle (slot + generation) before use.
        self._table: List[Optional[_LoopConn]] = [None] * size
        self._nconns = 0
        self._fifo: Deque[_LoopConn] = collections.deque()
        self._active = 0
        self._pool: Optional[ThreadPoolExecutor] = None
        self._done: Deque[_LoopConn] = collections.deque()
        self._stop = False
        self._drain_deadline: Optional[float] = None
        self._draining = False
        self._reject_answer = response(503, b"503 Service Unavailable\n",
                                       keep_alive=False)
        self._final: dict = {}
        self._debug = _connlog.enabled()       # read once: free when off

    @property
    def backend(self) -> str:
        return self.loop.backend

    def _get(self, h: int) -> Optional[_LoopConn]:
        c = self._table[h & _SLOT]
        if c is not None and c.h == h:
            return c
        return None

    # ------------------------------------------------------------- control

    def stop(self, now: bool = False) -> None:
        """Begin a graceful drain (signal- and thread-safe)."""
        if now:
            self._drain_deadline = time.monotonic()
        self._stop = True
        try:
            self.loop.wakeup()
        except (OSError, ValueError):
            pass

    def snapshot(self) -> dict:
        if self.loop.closed:
            return dict(self._final)
        snap = self.stats.as_dict()
        if not self.loop.closed:
            ls = self.loop.stats()
            snap["conns"] = ls["conns_open"]
            snap["accepted"] = ls["accepted"]
            snap["bytes_in"] = ls["bytes_in"]
            snap["bytes_out"] = ls["bytes_out"]
            snap["timeouts"] += ls["timed_out"]
            snap["rejects"] += ls["refused"]
            snap["requests"] += ls["canned"]      # answered in C
        return snap

    # ---------------------------------------------------------------- run

    def run(self, reporter) -> None:
        loop = self.loop
        table = self._table
        # wait_batch hands each connection's bytes over with its event: no
        # read call per connection (a C call also releases and retakes
        # the GIL, a few hundred instructions each).
        wait = loop.wait_batch
        view = bytes_reader(loop.batch_view)     # slices are bytes
        send = loop.send
        stats = self.stats
        slot, hold, http_handler = _SLOT, _HOLD, HttpHandler
        # The built-in echo: replies queued with queue_echo go out
        # together, in one C call, before the next wait.  Measured against
        # the loop's C echo mode (a write right after each read): 5-9% more
        # messages/s at 64 connections, 1 KiB (the client is woken once for
        # a burst of replies), for up to 3% more CPU per message.
        echo_handler, queue_echo = _Echo, loop.queue_echo
        echo, fifo = self._echo, self._fifo
        # While every active connection is a built-in echo and none waits
        # in the FIFO, a batch of data only needs nothing from this loop:
        # wait_batch_echo answers it and waits on (in C on CPython), so a
        # round trip runs no Python.  A batch with anything else (opens,
        # closes, timeouts, a full output, the wakeup of stop()) comes
        # back here; signal handlers run between its waits.
        wait_echo = loop.wait_batch_echo
        # The built-in HTTP's hot path, inline: a connection between
        # requests whose bytes are exactly a plain GET head seen before
        # gets the canned answer (as HttpSession.feed would answer it)
        # with no call but the send.  Any head the parser remembered is a
        # plain GET, so a stale one is still right, merely less likely
        # to match.
        parser = self._parser
        last_get: Optional[bytes] = None
        size = 0
        answer = b""
        answers: dict = {}      # n -> n answers in a row, for this Date
        # Further in: a connection answered here is marked, and its next
        # reads of that head are answered by the C loop itself
        # (Loop.set_canned) until any event of it comes here, or the
        # answer's Date second ends.  Per request then: no wakeup of this
        # loop, no bytes object, no call.
        set_canned, mark = loop.set_canned, loop.canned_mark
        canned_ask: Optional[bytes] = None
        canned_answer = b""
        # A reporter with no stats line and no parent to watch has nothing
        # to do between waits: no clock read or calls per wakeup then.
        timed = reporter.active()
        timeout = None
        try:
            while True:
                if timed or self._stop:
                    now = time.monotonic()
                    reporter.tick(now)
                    timeout = reporter.timeout(now)
                if self._stop:
                    if not self._draining:
                        self._begin_drain()
                    if not self._nconns or now >= self._drain_deadline:
                        break
                    left = max(0.0, self._drain_deadline - now)
                    timeout = left if timeout is None else min(timeout, left)
                try:
                    if echo and not fifo:
                        events = wait_echo(timeout)
                    else:
                        events = wait(timeout)
                except Exception as exc:
                    # The loop itself failed (the poller, memory): the one
                    # thing that stops the server.
                    raise LoopFailed(f"the event loop failed: {exc!r}") \
                        from exc
                if parser is not None:
                    last_get = parser.last_get
                    if last_get is not None:
                        size = len(last_get)
                    got = hello_answer()        # Date checked once a batch
                    if got is not answer:
                        answer = got
                        answers = {1: got}
                    if (last_get is not canned_ask
                            or answer is not canned_answer) \
                            and last_get is not None and not self._draining:
                        set_canned(last_get, answer, hello_until())
                        canned_ask, canned_answer = last_get, answer
                hits = 0
                for kind, h, arg, off in events:
                    try:
                        if kind == EV_DATA:
                            if echo and not fifo:
                                # Every active connection is a built-in echo
                                # and none waits in the FIFO (its data would
                                # be held): nothing to look up (queue_echo
                                # skips handles closed meanwhile).
                                queue_echo(h)
                                continue
                            c = table[h & slot]
                            if c is None or c.closed or c.h != h:
                                continue
                            handler = c.handler
                            if handler.__class__ is echo_handler \
                                    and not c.paused & hold:
                                queue_echo(h)
                                continue
                            data = view[off:off + arg]
                            if c.paused & hold:
                                c.extra().held.append(data)
                                continue
                            try:
                                if handler.__class__ is http_handler \
                                        and handler._lingered < 0:
                                    if data == last_get:
                                        if handler._plain:
                                            hits += 1
                                            try:
                                                send(h, answer)
                                                mark(h)
                                            except (BufferError, OSError,
                                                    ValueError):
                                                c.send_failed()
                                            continue
                                    elif last_get is not None \
                                            and not arg % size and handler._plain:
                                        # Pipelined: non-overlapping copies
                                        # adding up to the whole length tile it.
                                        n = data.count(last_get)
                                        if n * size == arg:
                                            hits += n
                                            out = answers.get(n)
                                            if out is None:
                                                out = answer * n
                                                if n <= _CACHED_RUNS:
                                                    answers[n] = out
                                            try:
                                                send(h, out)
                                                mark(h)
                                            except (BufferError, OSError,
                                                    ValueError):
                                                c.send_failed()
                                            continue
                                    # The built-in HTTP, without the layers.
                                    out = handler.feed(data)
                                    if out:
                                        try:
                                            send(h, out)
                                        except (BufferError, OSError, ValueError):
                                            c.send_failed()
                                    if handler.closing or handler.arm is not None:
                                        handler.after_feed(c)
                                else:
                                    handler.on_data(c, data)   # type: ignore
                            except Exception:
                                self._failed(c)
                        elif kind == EV_OPEN:
                            self._opened(h)
                        elif kind == EV_CLOSED:
                            self._closed(h, arg)
                        elif kind == EV_EOF:
                            self._eof(h)
                        elif kind == EV_READ_TIMEOUT:
                            self._timeout(h)
                        elif kind == EV_WRITE_FULL:
                            self._pause(h, _P_FULL)
                        elif kind == EV_DRAINED:
                            self._resume(h, _P_FULL)
                        elif kind == EV_WAKEUP:
                            self._run_done()
                    except Exception:
                        # Whatever one connection's event raised closes
                        # that connection only.
                        self._event_failed(h)
                if hits:
                    stats.requests += hits
        finally:
            if self._nconns and self._draining:
                log.warning("grace period over: %d connection(s) cut",
                            self._nconns)
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
            if not loop.closed:
                loop.wake_on_signals(False)

    def close(self) -> None:
        if not self.loop.closed:
            self._final = self.snapshot()
            self.loop.close()

    # ---------------------------------------------------------- admission

    def _opened(self, h: int) -> None:
        c = self._conn_cls(h)
        if self._debug:
            _connlog.loop_opened(self, c)
        self._table[h & _SLOT] = c
        self._nconns += 1
        if self._draining:
            c.close()
        elif self._active < self._capacity:
            self._activate(c)
        elif self._queueing:
            c.paused = _P_QUEUED
            self.loop.pause_reading(h)
            self._fifo.append(c)
        else:
            self.stats.rejects += 1
            if self._http:
                # Answer, half-close, and wait (bounded by the request
                # deadline) for the client to close: a close with its
                # request unread would reset the connection under the answer.
                c.handler = _Rejected()
                c.send(self._reject_answer)
                c.shutdown_write()
                c.set_timeout(True)
            else:
                c.closed = True
                self.loop.close_connection(h, "now")

    def _activate(self, c: _LoopConn) -> None:
        if self._debug:
            _connlog.loop_activated(c)
        self._active += 1
        c.active = True
        if self._echo:
            c.handler = _Echo()
            return
        try:
            c.handler = handler = self._factory()
            handler.on_open(c)
        except Exception:
            self._failed(c)

    def _closed(self, h: int, err: int) -> None:
        c = self._get(h)
        if c is None:
            return
        if self._debug:
            _connlog.loop_closed(self, c, err)
        self._table[h & _SLOT] = None
        self._nconns -= 1
        c.closed = True
        if c.active:
            self._active -= 1
            if c.handler is not None:
                try:
                    c.handler.on_close(c, err)
                except Exception:
                    self.stats.errors += 1
                    log.exception("handler error in on_close")
        fifo = self._fifo
        while fifo and self._active < self._capacity:
            q = fifo.popleft()
            if q.closed:
                continue
            q.paused &= ~_P_QUEUED
            self._activate(q)
            if q.closed:
                continue
            if not q.paused:
                self.loop.resume_reading(q.h)
            self._replay(q)

    def _event_failed(self, h: int) -> None:
        self.stats.errors += 1
        try:
            c = self._get(h)
            peer = c.peer if c is not None else ("?", 0)
            log.exception("error handling an event of %s:%s; closing it",
                          *peer)
            if c is not None:
                c.abort()
            else:
                self.loop.close_connection(h, "abort")
        except Exception:                   # never out of the run loop
            log.exception("error closing a failed connection")

    def _failed(self, c: _LoopConn) -> None:
        self.stats.errors += 1
        log.exception("handler error; closing connection from %s:%s",
                      *c.peer)
        c.abort()

    # -------------------------------------------------------------- events

    def _eof(self, h: int) -> None:
        c = self._get(h)
        if c is None or c.closed:
            return
        if self._debug:
            _connlog.eof(c.peer)
        if c.paused & _HOLD:
            c.extra().eof_held = True
            return
        try:
            c.handler.on_eof(c)                      # type: ignore[union-attr]
        except Exception:
            self._failed(c)

    def _timeout(self, h: int) -> None:
        c = self._get(h)
        if c is None or c.closed or c.handler is None:
            return
        if c.active:
            self.stats.timeouts += 1
        try:
            c.handler.on_timeout(c)
        except Exception:
            self._failed(c)

    def _pause(self, h: int, why: int) -> None:
        c = self._get(h)
        if c is None or c.closed:
            return
        if not c.paused:
            self.loop.pause_reading(h)
        c.paused |= why

    def _resume(self, h: int, why: int) -> None:
        c = self._get(h)
        if c is None or c.closed or not c.paused & why:
            return
        c.paused &= ~why
        if not c.paused:
            self.loop.resume_reading(h)

    def _replay(self, c: _LoopConn) -> None:
        """Deliver what came in while the connection was paused."""
        x = c.x
        if x is None:
            return
        handler = c.handler
        try:
            while x.held and not c.closed and not c.paused & _P_JOBS:
                handler.on_data(c, x.held.pop(0))    # type: ignore[union-attr]
            if x.eof_held and not x.held and not c.closed \
                    and not c.paused & _P_JOBS:
                x.eof_held = False
                handler.on_eof(c)                    # type: ignore[union-attr]
        except Exception:
            self._failed(c)

    # ---------------------------------------------------------------- pool

    def submit(self, c: _LoopConn, fn: Callable[..., Any], args: tuple,
               then: Optional[Callable[[Any], None]]) -> None:
        if c.closed:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.cfg.pool_threads,
                                            thread_name_prefix="pyepoll-pool")
        fut = self._pool.submit(fn, *args)
        c.extra().jobs.append([fut, then])
        if not c.paused & _P_JOBS:
            if not c.paused:
                self.loop.pause_reading(c.h)
            c.paused |= _P_JOBS
        done, wakeup = self._done, self.loop.wakeup

        def finished(_f: Future) -> None:
            done.append(c)
            try:
                wakeup()
            except (OSError, ValueError):
                pass
        fut.add_done_callback(finished)

    def _run_done(self) -> None:
        """Run, on this thread and in submission order, the callbacks of
        jobs that finished (and the sends and closes queued behind them)."""
        done = self._done
        while done:
            c = done.popleft()
            x = c.extra()
            jobs = x.jobs
            while jobs and (jobs[0][0] is None or jobs[0][0].done()):
                fut, then = jobs.popleft()
                if c.closed:
                    continue
                x.direct = True
                try:
                    if fut is None:           # a send or close kept in line
                        if then is None:
                            c.close()
                        else:
                            c.send(then)
                    else:
                        result = fut.result()
                        if then is not None:
                            then(result)
                except Exception:
                    self._failed(c)
                finally:
                    x.direct = False
            if not jobs and c.paused & _P_JOBS and not c.closed:
                c.paused &= ~_P_JOBS
                if not c.paused:
                    self.loop.resume_reading(c.h)
                self._replay(c)

    # --------------------------------------------------------------- drain

    def _begin_drain(self) -> None:
        self._draining = True
        if self._http:
            self.loop.set_canned(None)      # every request reaches on_drain
        if self._drain_deadline is None:
            self._drain_deadline = time.monotonic() + self.cfg.grace
        try:
            self.loop.remove_listener(self._lid)
        except (KeyError, ValueError):
            pass
        try:
            self._listener.close()
        except OSError:
            pass
        while self._fifo:                # accepted, never served
            q = self._fifo.popleft()
            if not q.closed:
                q.closed = True
                self.loop.close_connection(q.h, "now")
        for c in self._table:
            if c is None or c.closed or not c.active or c.handler is None:
                continue
            try:
                c.handler.on_drain(c)
            except Exception:
                self._failed(c)


class _Rejected(Handler):
    """An over-capacity HTTP client being answered 503: drop its input,
    close when it closes or when the deadline passes."""

    __slots__ = ()

    def on_data(self, conn: Connection, data: bytes) -> None:
        pass


class _Echo(Handler):
    """The built-in echo.  The loop answers its data with
    Loop.queue_echo (no bytes object, one C call for the batch's echoes);
    on_data serves only data held while the connection was paused."""

    __slots__ = ()

    def on_data(self, conn: Connection, data: bytes) -> None:
        conn.send(data)

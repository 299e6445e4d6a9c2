"""The classic models, for comparison: a fixed thread pool, and a thread per
connection.  Plain blocking sockets; the same handlers as the event loop.

Capacity, the same rule as the event loop's: at most --max-connections
connections are served at once (the thread pool: also at most
--pool-threads, one per worker).  Beyond that, overflow ``queue`` keeps up
to --queue-size accepted connections in a FIFO, served in order as slots
free (then stops accepting: the kernel backlog holds the rest), and
``reject`` answers 503 (HTTP) or closes (echo) at once.

threadpool: min(--pool-threads, --max-connections) workers serve a
connection each until it closes, so a worker is held by its connection
however idle it is: that is the design's weakness, and the point of having
it here.

threads: a thread per connection being served.

Each connection thread waits with poll() on its socket and on a pipe shared
by all threads, written once when the server starts draining, so idle
threads learn of a shutdown at once.
"""
from __future__ import annotations

import collections
import errno
import logging
import math
import os
import select
import socket
import struct
import threading
import time
from typing import Callable, Deque, Optional, Tuple

from .._binding import WakeupPipe
from ..http import response
from . import _connlog
from ._config import Config
from ._stats import Stats
from .handler import Connection, Handler

__all__ = ["ThreadedModel"]

log = logging.getLogger("pyepoll.server")

_POLLIN = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP
_RECV_SIZE = 65536
_LINGER_ABORT = struct.pack("ii", 1, 0)
# Writes try without blocking first; a full buffer is waited on with poll,
# so the wait is bounded by the idle timeout since the last byte moved.
# (Linux, macOS and the BSDs have the flag; these models need poll anyway.)
_DONTWAIT = socket.MSG_DONTWAIT

Factory = Callable[[], Handler]


class _SockConn(Connection):
    """A connection served by one thread; output is coalesced per callback."""

    __slots__ = ("sock", "peer", "closed", "_out", "_closing", "_shut",
                 "_deadline", "_model", "_err")

    def __init__(self, sock: socket.socket, peer, model: "ThreadedModel"):
        self.sock = sock
        self.peer = peer[:2] if isinstance(peer, tuple) else (str(peer), 0)
        self.closed = False
        self._out: list = []
        self._closing: Optional[str] = None    # "flush" | "abort"
        self._shut = 0                         # 1 wanted, 2 done
        self._deadline: Optional[float] = None
        self._model = model
        self._err = 0                          # errno of a failed write

    def send(self, data: bytes) -> None:
        if not self.closed and self._closing is None:
            self._out.append(data)

    def close(self) -> None:
        if self._closing is None:
            self._closing = "flush"

    def abort(self) -> None:
        self._closing = "abort"
        self._out.clear()

    def shutdown_write(self) -> None:
        if not self._shut:
            self._shut = 1

    def set_timeout(self, on: bool = True) -> None:
        self._deadline = (time.monotonic() + self._model.request_timeout
                          if on else None)

    def submit(self, fn, *args, then=None) -> None:
        # This thread is the connection's own: blocking work runs inline.
        result = fn(*args)
        if then is not None:
            then(result)


class ThreadedModel:
    """Serve with blocking sockets and threads (``per_connection`` False:
    the fixed pool; True: a thread per connection)."""

    def __init__(self, cfg: Config, new_factory: Callable[[], Factory],
                 stats: Stats, listener: socket.socket,
                 per_connection: bool) -> None:
        self.cfg = cfg
        self.stats = stats
        self.request_timeout = cfg.request_timeout
        self._new_factory = new_factory
        self._listener = listener
        self._per_conn = per_connection
        self._http = cfg.handler is None and cfg.protocol == "http"
        self._idle = cfg.idle_timeout or None
        self._debug = _connlog.enabled()       # read once: free when off
        # Served at once; then the overflow FIFO (queue only).
        self._capacity = cfg.max_connections if per_connection \
            else min(cfg.pool_threads, cfg.max_connections)
        self._qcap = cfg.queue_size if cfg.overflow == "queue" else 0
        # The option that set the capacity, for debug lines.
        self._limit = (f"--max-connections {self._capacity}"
                       if self._capacity == cfg.max_connections
                       else f"--pool-threads {self._capacity}")
        self._cond = threading.Condition()
        self._fifo: Deque[Tuple[socket.socket, object]] = collections.deque()
        self._active = 0                 # connections being served
        self._threads = 0                # live connection threads
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stopping = False
        self._draining = False
        self._drain_deadline: Optional[float] = None
        self._reject_answer = response(503, b"503 Service Unavailable\n",
                                       keep_alive=False)
        # A signal may be delivered to any thread that does not block it,
        # and then the acceptor's poll() (no timeout without a stats
        # interval) is not interrupted: SIGTERM's Python handler would wait
        # for the next connection.  signal.set_wakeup_fd has the C-level
        # handler write a byte to a pipe whichever thread takes it, which
        # wakes the poll, and the handler runs as the poll returns.  A pipe
        # of its own: the drain pipe, once written, stays readable.  Made
        # here, before the server announces itself, so that what it holds
        # then (its descriptors) is what it holds serving.
        self._sig_pipe: Optional[WakeupPipe] = WakeupPipe()
        if threading.current_thread() is threading.main_thread():
            self._sig_pipe.install()

    # ---------------------------------------------------------------- control

    def stop(self, now: bool = False) -> None:
        """Begin a graceful drain (signal- and thread-safe)."""
        if now:
            self._drain_deadline = time.monotonic()
        self._stopping = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def snapshot(self) -> dict:
        snap = self.stats.as_dict()
        snap["conns"] = self._active + len(self._fifo)
        return snap

    # ------------------------------------------------------------ acceptor

    def run(self, reporter) -> None:
        """Accept on this thread until stopped, then drain."""
        try:
            self._accept_until_stopped(reporter, self._sig_pipe)
        finally:
            self.close()
        self._drain(reporter)

    def close(self) -> None:
        """Put back the signal wakeup fd (once; the pipe stays open off
        the main thread, where it cannot be put back)."""
        pipe, self._sig_pipe = self._sig_pipe, None
        if pipe is not None and pipe.uninstall():
            pipe.close()

    def _accept_until_stopped(self, reporter, sig_pipe: WakeupPipe) -> None:
        sig_r = sig_pipe.r
        listener = self._listener
        listener.setblocking(False)
        poller = select.poll()
        poller.register(listener, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        poller.register(sig_r, select.POLLIN)
        if not self._per_conn:
            factory_maker = self._new_factory
            for i in range(self._capacity):
                threading.Thread(target=self._pool_worker, args=(factory_maker,),
                                 name=f"pool-{i}", daemon=True).start()
        queueing = self.cfg.overflow == "queue"
        while not self._stopping:
            now = time.monotonic()
            reporter.tick(now)
            wait = reporter.timeout(now)
            if queueing and self._full():
                # Stop accepting: the kernel backlog holds the rest.
                with self._cond:
                    if self._full() and not self._stopping:
                        self._cond.wait(0.5 if wait is None else min(wait, 0.5))
                sig_pipe.take()
                continue
            ms = -1 if wait is None else math.ceil(wait * 1000)
            for fd, _ in poller.poll(ms):
                if fd == sig_r:
                    sig_pipe.take()
                elif fd != self._wake_r:
                    self._accept_some(listener)

    def _full(self) -> bool:
        return self._active + len(self._fifo) >= self._capacity + self._qcap

    def _accept_some(self, listener: socket.socket) -> None:
        for _ in range(64):
            try:
                sock, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS,
                               errno.ENOMEM):
                    log.warning("accept: %s; pausing accepts", e.strerror)
                    time.sleep(0.1)
                return
            self.stats.accepted += 1
            sock.setblocking(True)
            self._admit(sock, peer)
            if self.cfg.overflow == "queue" and self._full():
                return

    def _admit(self, sock: socket.socket, peer) -> None:
        with self._cond:
            if self._full():
                admitted = False
            elif self._per_conn and self._active < self._capacity:
                self._active += 1
                self._threads += 1
                admitted = True
                threading.Thread(target=self._conn_thread, args=(sock, peer),
                                 daemon=True).start()
            else:
                waiting = self._active + len(self._fifo) >= self._capacity
                self._fifo.append((sock, peer))
                self._cond.notify_all()
                admitted = True
                if self._debug and waiting:
                    _connlog.opened(peer, f"over {self._limit}: queued "
                                    f"({len(self._fifo)} waiting)")
        if not admitted:
            self._reject(sock, peer)

    def _reject(self, sock: socket.socket, peer) -> None:
        self.stats.rejects += 1
        if self._debug:
            _connlog.opened(peer, f"over {self._limit}: rejected, "
                            + ("503 sent" if self._http else "closed"))
        try:
            sock.setblocking(False)
            if self._http:
                sock.send(self._reject_answer)
                sock.shutdown(socket.SHUT_WR)
                # Unread input would turn the close into a reset that can
                # destroy the answer in flight: drop what already arrived.
                sock.recv(_RECV_SIZE)
        except OSError:
            pass
        sock.close()

    # ------------------------------------------------------------- workers

    def _pool_worker(self, factory_maker: Callable[[], Factory]) -> None:
        factory = factory_maker()
        while True:
            with self._cond:
                while not self._fifo and not self._draining:
                    self._cond.wait()
                if not self._fifo:
                    return
                sock, peer = self._fifo.popleft()
                self._active += 1
                self._cond.notify_all()
            try:
                self._serve(sock, peer, factory)
            finally:
                with self._cond:
                    self._active -= 1
                    self._cond.notify_all()

    def _conn_thread(self, sock: socket.socket, peer) -> None:
        factory = self._new_factory()
        try:
            while True:
                self._serve(sock, peer, factory)
                with self._cond:
                    # A FIFO entry takes this thread over (served in order).
                    if self._fifo and not self._draining:
                        sock, peer = self._fifo.popleft()
                        self._cond.notify_all()
                        continue
                    self._active -= 1
                    self._threads -= 1
                    self._cond.notify_all()
                    return
        except BaseException:
            with self._cond:
                self._active -= 1
                self._threads -= 1
                self._cond.notify_all()
            raise

    # ------------------------------------------------------ one connection

    def _serve(self, sock: socket.socket, peer, factory: Factory) -> None:
        conn = _SockConn(sock, peer, self)
        stats = self.stats
        idle = self._idle
        err = 0
        note = None                      # why it closed, for debug lines
        handler: Optional[Handler] = None
        poller = select.poll()
        poller.register(sock, _POLLIN)
        watching_drain = not self._draining
        if watching_drain:
            poller.register(self._wake_r, select.POLLIN)
        fd = sock.fileno()
        if self._debug:
            _connlog.opened(conn.peer, "served")
        last = time.monotonic()
        try:
            handler = factory()
            if not watching_drain:
                conn._closing = "flush"
            handler.on_open(conn)
            self._flush(conn)
            while conn._closing is None:
                now = time.monotonic()
                # A running request deadline (never longer than the idle
                # timeout) governs alone: the stalled request gets its 408.
                dl = conn._deadline
                limit = dl if dl is not None else last + idle if idle else None
                ddl = self._drain_deadline
                if ddl is not None and (limit is None or ddl < limit):
                    limit = ddl
                ms = -1 if limit is None else max(0, math.ceil((limit - now) * 1000))
                ready = poller.poll(ms)
                now = time.monotonic()
                if not ready:
                    if ddl is not None and now >= ddl:
                        note = "grace period over"
                        conn.abort()
                    elif dl is not None and now >= dl:
                        conn._deadline = None
                        stats.timeouts += 1
                        handler.on_timeout(conn)
                        self._flush(conn)
                    elif dl is None and idle and now >= last + idle:
                        stats.timeouts += 1
                        err = errno.ETIMEDOUT
                        break
                    continue
                readable = False
                for rfd, _ in ready:
                    if rfd == fd:
                        readable = True
                    elif watching_drain and self._stopping:
                        poller.unregister(self._wake_r)
                        watching_drain = False
                        note = "server draining"
                        handler.on_drain(conn)
                        self._flush(conn)
                if not readable or conn._closing is not None:
                    continue
                try:
                    data = sock.recv(_RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as e:
                    err = e.errno or 0
                    break
                last = now
                if not data:
                    if self._debug:
                        _connlog.eof(conn.peer)
                    handler.on_eof(conn)
                    self._flush(conn)
                    break       # nothing more can be read: close after output
                stats.bytes_in += len(data)
                handler.on_data(conn, data)
                if conn._out or conn._shut == 1:
                    self._flush(conn)
                    last = time.monotonic()
        except Exception:
            stats.errors += 1
            log.exception("handler error; closing connection from %s:%s",
                          *conn.peer)
            note = "handler error"
            conn.abort()
        finally:
            self._close(conn)
            if not err and conn._err:
                err = conn._err
                if err == errno.ETIMEDOUT:
                    stats.timeouts += 1
                    note = "writing: the client stopped reading"
            if self._debug:
                _connlog.closed(conn.peer, _connlog.reason(err, handler, note))
            if handler is not None:
                try:
                    handler.on_close(conn, err)
                except Exception:
                    stats.errors += 1
                    log.exception("handler error in on_close")

    def _flush(self, conn: _SockConn) -> None:
        out = conn._out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            try:
                self._send_all(conn.sock, data)
                self.stats.bytes_out += len(data)
            except OSError as e:
                conn._err = e.errno or 0
                conn.abort()
                return
        if conn._shut == 1:
            conn._shut = 2
            try:
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _send_all(self, sock: socket.socket, data: bytes) -> None:
        """sendall, except that a client taking no byte for the idle
        timeout gets TimeoutError (errno ETIMEDOUT): a reader that stopped
        reading is closed at the idle timeout, as by the event loop.  (A
        socket timeout applies to each send call, and a call that moved a
        few bytes before timing out returns them: the next call waited a
        whole timeout again, closing such a reader at twice it.)"""
        idle = self._idle
        if idle is None:
            sock.sendall(data)
            return
        view = memoryview(data)
        waiter = None
        while view:
            try:
                view = view[sock.send(view, _DONTWAIT):]
                continue
            except (BlockingIOError, InterruptedError):
                pass
            if waiter is None:
                waiter = select.poll()
                waiter.register(sock, select.POLLOUT)
            if not waiter.poll(math.ceil(idle * 1000)):
                raise TimeoutError(errno.ETIMEDOUT, "client stopped reading")

    def _close(self, conn: _SockConn) -> None:
        if conn.closed:
            return
        self._flush(conn)
        conn.closed = True
        sock = conn.sock
        try:
            if conn._closing == "abort":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                _LINGER_ABORT)
        except OSError:
            pass
        sock.close()

    # -------------------------------------------------------------- drain

    def _drain(self, reporter) -> None:
        """Stop accepting; let connections finish within the grace period."""
        try:
            self._listener.close()
        except OSError:
            pass
        if self._drain_deadline is None:
            self._drain_deadline = time.monotonic() + self.cfg.grace
        with self._cond:
            self._draining = True
            waiting = list(self._fifo)
            self._fifo.clear()
            self._cond.notify_all()
        for sock, _ in waiting:          # accepted, never served
            sock.close()
        while True:
            now = time.monotonic()
            with self._cond:
                if self._active == 0 or now >= self._drain_deadline:
                    break
                self._cond.wait(min(0.2, self._drain_deadline - now))
            reporter.tick(time.monotonic())
        if self._active:
            log.warning("grace period over: %d connection(s) cut", self._active)

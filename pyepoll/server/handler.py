"""The handler API: what a protocol implements, and what it is given.

One :class:`Handler` object is made per connection (the server calls the
handler class, or any factory, with no arguments).  The server calls its
``on_*`` methods from one thread at a time, in order; a handler answers
through the :class:`Connection` it is given.  Every concurrency model drives
handlers the same way, so a protocol written once runs on all of them.

A handler that raises gets its connection closed; the error is logged and
counted, and the server goes on serving the others.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

__all__ = ["Handler", "Connection"]


class Connection:
    """One client connection as a handler sees it (made by the server).

    ``send`` queues bytes (sent in order, coalesced with other sends made
    in the same callback); ``close`` closes once queued bytes are sent.

    On a connection that has closed (the client reset it, a timeout, the
    handler's own ``close``), every method does nothing, ``send`` included:
    the client is gone, so there is nobody to tell, and a handler cannot
    know before :meth:`Handler.on_close` arrives (which it always does,
    once).  ``closed`` says whether sending still reaches the client.
    """

    __slots__ = ()

    #: (host, port) of the client.
    peer: Tuple[str, int]
    #: True once the connection is closed (``send`` is then ignored).
    closed: bool

    def send(self, data: bytes) -> None:
        """Queue ``data`` for the client."""
        raise NotImplementedError

    def close(self) -> None:
        """Close after the queued bytes are sent."""
        raise NotImplementedError

    def abort(self) -> None:
        """Close at once, dropping queued bytes (the client sees a reset)."""
        raise NotImplementedError

    def shutdown_write(self) -> None:
        """Half-close: send FIN after the queued bytes; reading goes on."""
        raise NotImplementedError

    def set_timeout(self, on: bool = True) -> None:
        """Start (or, with False, stop) the request deadline.

        When it passes, :meth:`Handler.on_timeout` is called.  Restarting
        it pushes it back by the full request timeout."""
        raise NotImplementedError

    def submit(self, fn: Callable[..., Any], *args: Any,
               then: Optional[Callable[[Any], None]] = None) -> None:
        """Run ``fn(*args)`` in the worker pool, then ``then(result)`` back
        on the connection's own thread (the loop thread).

        Replies keep their order: ``send`` and ``close`` called while jobs
        are pending take effect after the earlier jobs' ``then``.  Reading
        from this connection pauses until every submitted job's ``then``
        has run, so a client cannot queue unbounded work.  If ``fn``
        raises, the error is logged and the connection closed.  (In the
        thread models the connection already has its own thread, and
        ``fn`` runs there, inline.)"""
        raise NotImplementedError


class Handler:
    """Base class of a protocol: override the events you need.

    Example: an echo protocol is ``on_data = lambda self, conn, data:
    conn.send(data)``.
    """

    __slots__ = ()

    def on_open(self, conn: Connection) -> None:
        """A client connected (after any wait in the overflow queue)."""

    def on_data(self, conn: Connection, data: bytes) -> None:
        """Bytes arrived, as many as were available (never empty)."""

    def on_eof(self, conn: Connection) -> None:
        """The client shut down its sending side.  Default: close."""
        conn.close()

    def on_timeout(self, conn: Connection) -> None:
        """The deadline started with :meth:`Connection.set_timeout` passed.
        Default: close."""
        conn.close()

    def on_drain(self, conn: Connection) -> None:
        """The server is shutting down gracefully.  Default: close.

        A handler in the middle of a request may finish it first; the
        server waits for its connections for a grace period."""
        conn.close()

    def on_close(self, conn: Connection, error: int) -> None:
        """The connection is gone.  ``error`` is 0 or an errno
        (ECONNRESET, ETIMEDOUT for an idle timeout, ...)."""

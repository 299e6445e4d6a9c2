"""Debug lines about single connections (``--log-level debug``).

What a person debugging one connection needs, each line starting with the
client's address: when it opened, whether it was served, queued or
rejected over capacity, an HTTP error answered (with its status and cause),
the client's EOF, and when and why it closed (idle timeout, reset, ...).

The models read :func:`enabled` once, when they start, into an attribute,
and call these functions only when it was true: with debug logging off a
connection costs one attribute test at open and one at close, and the HTTP
handlers test nothing outside their error paths.
"""
from __future__ import annotations

import errno
import logging
import os
from typing import Any, Optional

from ..http import REASONS

__all__ = ["enabled", "opened", "eof", "closed", "http_error", "reason",
           "loop_opened", "loop_activated", "loop_closed"]

log = logging.getLogger("pyepoll.server")

# What each error status means here (see protocols.HttpSession).
_CAUSES = {
    400: "malformed request, or Host missing or repeated",
    405: "CONNECT (no tunnels)",
    408: "request not complete within the request timeout",
    413: "body over the size limit",
    431: "head over the size or field-count limit",
    501: "unsupported transfer coding",
    505: "unsupported HTTP version",
}


def enabled() -> bool:
    """True when connection debug lines would be printed."""
    return log.isEnabledFor(logging.DEBUG)


def _addr(peer: Any) -> str:
    try:
        host, port = peer[0], peer[1]
    except (TypeError, IndexError):
        return str(peer)
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def opened(peer: Any, how: str) -> None:
    log.debug("%s: open, %s", _addr(peer), how)


def eof(peer: Any) -> None:
    log.debug("%s: EOF (the client finished sending)", _addr(peer))


def http_error(peer: Any, status: int) -> None:
    log.debug("%s: %d %s sent (%s); closing after it", _addr(peer), status,
              REASONS.get(status, "?"), _CAUSES.get(status, "error"))


def reason(err: int, handler: Any = None, note: Optional[str] = None) -> str:
    """Why a connection closed: from the errno the close carried (0 or,
    e.g., ETIMEDOUT for the idle timeout), the HTTP error status its
    handler answered, and a model's own note."""
    parts = []
    if err == errno.ETIMEDOUT:
        parts.append("idle timeout")
    elif err:
        parts.append(f"{errno.errorcode.get(err, err)} ({os.strerror(err)})")
    status = getattr(handler, "status", 0)
    if status:
        parts.append(f"after {status} {REASONS.get(status, '?')}")
    if note:
        parts.append(f"({note})")
    return " ".join(parts)


def closed(peer: Any, why: str) -> None:
    log.debug("%s: closed%s", _addr(peer), ": " + why if why else "")


# -- the event-loop model's hooks (one call each in _eventloop.py) ---------

def loop_opened(model: Any, c: Any) -> None:
    """At the start of EventLoopModel._opened: what it is about to do
    with ``c`` (the same tests, in the same order).  The peer is read now,
    while the socket is surely connected (a rejected client may be gone
    once its 503 is sent), and cached for the close line."""
    cap = model.cfg.max_connections
    if model._draining:
        how = "refused: the server is draining"
    elif model._active < model._capacity:
        return                   # served: logged by loop_activated
    elif model._queueing:
        how = (f"over --max-connections {cap}: queued "
               f"({len(model._fifo) + 1} waiting)")
    elif model._http:
        how = f"over --max-connections {cap}: rejected, 503 sent"
    else:
        how = f"over --max-connections {cap}: rejected, closed"
    opened(c.peer, how)


def loop_activated(c: Any) -> None:
    """EventLoopModel._activate starts serving ``c`` (at once or after
    waiting in the FIFO)."""
    opened(c.peer, "served")     # peer read now: it is cached for the close


def loop_closed(model: Any, c: Any, err: int) -> None:
    """On EV_CLOSED for ``c``, which carried ``err``."""
    note = None
    if not c.active:
        note = "never served"
    elif model._draining:
        note = "server draining"
    closed(c.peer, reason(err, c.handler, note))

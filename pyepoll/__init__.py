"""pyepoll: fast, correct event notification for Python servers.

Layers, each using only the one below it:

* :class:`Poller` - register / modify / unregister / wait on epoll, kqueue,
  poll or select, with generation-checked events and no per-call allocation.
"""
from __future__ import annotations

from ._binding import StaleHandleError
from ._poller import (
    EDGE,
    ERR,
    EXCLUSIVE,
    HUP,
    ONESHOT,
    PRI,
    RDHUP,
    READ,
    WRITE,
    ForkError,
    Poller,
    available_backends,
    best_backend,
)

from . import selectors
from .loop import (
    EV_CLOSED, EV_DATA, EV_DRAINED, EV_EOF, EV_OPEN, EV_READ_TIMEOUT,
    EV_WAKEUP, EV_WRITE_FULL, Loop,
)

# select.epoll drop-in, Linux only: elsewhere pyepoll.epoll does not exist,
# as select.epoll does not.
if "epoll" in available_backends():
    from ._epoll import (
        EPOLL_CLOEXEC, EPOLLERR, EPOLLET, EPOLLEXCLUSIVE, EPOLLHUP, EPOLLIN,
        EPOLLMSG, EPOLLONESHOT, EPOLLOUT, EPOLLPRI, EPOLLRDBAND, EPOLLRDHUP,
        EPOLLRDNORM, EPOLLWRBAND, EPOLLWRNORM, epoll,
    )

__version__ = "0.1.0"

__all__ = [
    "Poller", "ForkError", "StaleHandleError", "available_backends",
    "best_backend", "READ", "WRITE", "PRI", "ERR", "HUP", "RDHUP", "EDGE",
    "ONESHOT", "EXCLUSIVE",
]
__all__ += ["selectors", "new_event_loop", "new_selector_event_loop", "run"]
__all__ += ["Loop", "EV_OPEN", "EV_DATA", "EV_EOF", "EV_DRAINED",
            "EV_WRITE_FULL", "EV_READ_TIMEOUT", "EV_CLOSED", "EV_WAKEUP"]
if "epoll" in available_backends():
    __all__ += ["epoll"]


def __getattr__(name: str):
    # asyncio is imported only when its entry points are first used.
    if name in ("new_event_loop", "new_selector_event_loop", "run",
                "EventLoopPolicy"):
        from . import aio
        return getattr(aio, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

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

__version__ = "0.1.0"

__all__ = [
    "Poller", "ForkError", "StaleHandleError", "available_backends",
    "best_backend", "READ", "WRITE", "PRI", "ERR", "HUP", "RDHUP", "EDGE",
    "ONESHOT", "EXCLUSIVE",
]

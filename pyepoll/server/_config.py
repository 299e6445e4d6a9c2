"""Server configuration: every option of the CLI, plus the Python-only ones."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from .handler import Handler
from .protocols import Limits

__all__ = ["Config", "MODELS", "PROTOCOLS", "OVERFLOWS", "TRIGGERS"]

MODELS = ("eventloop", "threadpool", "threads")
PROTOCOLS = ("http", "echo")
OVERFLOWS = ("queue", "reject")
TRIGGERS = ("level", "edge")
LOG_LEVELS = ("debug", "info", "warning", "error")

# The longest a client may take to send one request head, or between two
# pieces of a body, when --idle-timeout allows more (slowloris defence).
REQUEST_TIMEOUT_CAP = 30.0


@dataclass
class Config:
    """What :class:`~pyepoll.server.Server` serves and how.

    The fields up to ``stats_interval`` are the CLI's options (see
    ``pyepoll-server --help``); the rest exist only in the Python API.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    protocol: str = "http"
    model: str = "eventloop"
    workers: int = 1
    max_connections: int = 10000
    overflow: str = "queue"
    queue_size: int = 1024
    idle_timeout: float = 60.0
    pool_threads: int = 16
    trigger: str = "level"
    backend: Optional[str] = None
    log_level: str = "info"
    stats_interval: float = 0.0
    #: Eventloop model: microseconds a wait polls before it sleeps (0: off).
    busy_poll_us: int = 0

    #: Handler class (or no-argument factory) for your own protocol; when
    #: set, ``protocol`` only names it in the logs.
    handler: Optional[Callable[[], Handler]] = None
    #: HTTP request limits.
    limits: Limits = field(default_factory=Limits)
    #: Seconds a graceful shutdown waits for requests in flight.
    grace: float = 10.0
    backlog: int = 1024
    #: Bind with SO_REUSEPORT (set for --workers processes).
    reuse_port: bool = False

    @property
    def request_timeout(self) -> float:
        """Deadline for a request head (from its first byte) and between
        pieces of a body: the idle timeout, at most 30 s."""
        if self.idle_timeout and self.idle_timeout > 0:
            return min(self.idle_timeout, REQUEST_TIMEOUT_CAP)
        return REQUEST_TIMEOUT_CAP

    def validate(self) -> None:
        """Raise ValueError for a setting that cannot work."""
        def one_of(name: str, allowed: tuple) -> None:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}")
        one_of("model", MODELS)
        one_of("overflow", OVERFLOWS)
        one_of("trigger", TRIGGERS)
        one_of("log_level", LOG_LEVELS)
        if self.handler is None:
            one_of("protocol", PROTOCOLS)
        if self.model != "eventloop":
            # The thread models wait with blocking sockets.
            if self.backend is not None:
                raise ValueError(f"backend applies only to the eventloop "
                                 f"model, not {self.model}")
            if self.trigger != "level":
                raise ValueError(f"trigger applies only to the eventloop "
                                 f"model, not {self.model}")
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be in 0..65535")
        for name in ("workers", "max_connections", "pool_threads", "backlog"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.queue_size < 0:
            raise ValueError("queue_size must not be negative")
        if not 0 <= self.busy_poll_us <= 1000000:
            raise ValueError("busy_poll_us must be in 0..1000000")
        for name in ("idle_timeout", "stats_interval", "grace"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")

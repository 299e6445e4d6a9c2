"""Server: binds, runs one concurrency model, handles signals and stats."""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from typing import Any, Callable, Dict, Optional, Tuple

from ._config import Config
from ._stats import Reporter, Stats
from .handler import Handler
from .protocols import EchoHandler, HttpHandler

__all__ = ["Server", "serve", "make_listener"]

log = logging.getLogger("pyepoll.server")


def make_listener(host: str, port: int, backlog: int = 1024,
                  reuse_port: bool = False, listen: bool = True) -> socket.socket:
    """A TCP socket bound to (host, port), listening unless ``listen`` is
    False.  IPv4 or IPv6, by what ``host`` resolves to."""
    family, _, _, _, addr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
        if listen:
            sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _raise_fd_limit(wanted: int) -> None:
    """Servers need a descriptor per connection: raise the soft limit
    toward the hard one when it is too low."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    except (ImportError, ValueError, OSError):
        pass


def _factory_maker(cfg: Config, stats: Stats) -> Callable[[], Callable[[], Handler]]:
    """Returns a function each serving thread calls once to get its handler
    factory (HTTP handlers of one thread share a parser)."""
    if cfg.handler is not None:
        user = cfg.handler
        return lambda: user
    if cfg.protocol == "http":
        return lambda: HttpHandler.factory(cfg.limits, stats)
    return lambda: EchoHandler


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Server:
    """A server: ``Server(handler=MyHandler, port=9000).serve()``.

    Options are the fields of :class:`Config`, given as a Config or as
    keywords.  :meth:`serve` blocks until a graceful shutdown (SIGTERM,
    SIGINT, or :meth:`stop`) has finished, and returns the exit status.
    """

    def __init__(self, config: Optional[Config] = None, **options: Any) -> None:
        cfg = config if config is not None else Config()
        for name, value in options.items():
            if not hasattr(cfg, name):
                raise TypeError(f"unknown option {name!r}")
            setattr(cfg, name, value)
        cfg.validate()
        self.config = cfg
        self.stats = Stats()
        self.address: Optional[Tuple[str, int]] = None
        self._model: Any = None
        self._stop_requested = False
        self._signal: Optional[int] = None
        self._signal_time = 0.0
        self._ready_fd: Optional[int] = None   # set by the worker supervisor
        self._parent: Optional[int] = None
        #: Set once the server listens (``address`` is then known).
        self.ready = threading.Event()

    # ------------------------------------------------------------- control

    def stop(self) -> None:
        """Begin a graceful shutdown (thread- and signal-safe)."""
        self._stop_requested = True
        if self._model is not None:
            self._model.stop()

    def snapshot(self) -> Dict[str, int]:
        """Current counters: conns, accepted, requests, bytes_in,
        bytes_out, timeouts, rejects, errors."""
        if self._model is not None:
            return self._model.snapshot()
        return self.stats.as_dict()

    def _on_signal(self, signum: int, frame: object) -> None:
        if self._signal is None:
            self._signal = signum
            self._signal_time = time.monotonic()
        self.stop()

    # ---------------------------------------------------------------- serve

    def serve(self) -> int:
        """Serve until shut down; returns 0 after a graceful shutdown."""
        cfg = self.config
        if cfg.workers > 1 and self._ready_fd is None:
            from ._workers import supervise
            return supervise(self)
        _raise_fd_limit(cfg.max_connections + cfg.queue_size + 256)
        listener = make_listener(cfg.host, cfg.port, cfg.backlog,
                                 cfg.reuse_port)
        self.address = listener.getsockname()[:2]
        model = self._make_model(listener)
        self._model = model
        if self._stop_requested:
            model.stop()
        main = threading.current_thread() is threading.main_thread()
        saved = {}
        if main:
            for sig in (signal.SIGTERM, signal.SIGINT):
                saved[sig] = signal.signal(sig, self._on_signal)
        reporter = Reporter(cfg.stats_interval, model.snapshot)
        if self._parent is not None:
            reporter.watch_parent(self._parent, model.stop)
        try:
            self._announce(model)
            self.ready.set()
            model.run(reporter)
            if self._signal is not None:
                log.info("stopped by %s; drained in %.2f s",
                         signal.Signals(self._signal).name,
                         time.monotonic() - self._signal_time)
            reporter.final()
        finally:
            if hasattr(model, "close"):
                model.close()
            for sig, handler in saved.items():
                signal.signal(sig, handler)
        return 0

    def _make_model(self, listener: socket.socket) -> Any:
        cfg = self.config
        maker = _factory_maker(cfg, self.stats)
        if cfg.model == "eventloop":
            from ._eventloop import EventLoopModel
            try:
                return EventLoopModel(cfg, maker, self.stats, listener)
            except BaseException:
                listener.close()
                raise
        from ._threaded import ThreadedModel
        return ThreadedModel(cfg, maker, self.stats, listener,
                             per_connection=cfg.model == "threads")

    def _announce(self, model: Any) -> None:
        cfg = self.config
        host, port = self.address     # type: ignore[misc]
        proto = (getattr(cfg.handler, "__name__", "handler")
                 if cfg.handler is not None else cfg.protocol)
        details = f"model={cfg.model}"
        if cfg.model == "eventloop":
            details += f" backend={model.backend} trigger={cfg.trigger}"
            if cfg.busy_poll_us:
                details += f" busy_poll={cfg.busy_poll_us}us"
        details += (f" max_connections={cfg.max_connections}"
                    f" overflow={cfg.overflow} queue_size={cfg.queue_size}"
                    f" pool_threads={cfg.pool_threads}"
                    f" idle_timeout={cfg.idle_timeout:g}"
                    f" pid={os.getpid()}")
        if self._ready_fd is not None:
            log.info("worker serving %s on %s (%s)", proto,
                     _host_port(host, port), details)
            try:
                os.write(self._ready_fd, b"r")
            except OSError:
                pass
        else:
            log.info("serving %s on %s (%s)", proto, _host_port(host, port),
                     details)


def serve(handler: Optional[Callable[[], Handler]] = None, **options: Any) -> int:
    """Run a server until it is shut down; see :class:`Server`.

    ``serve(MyHandler, port=9000, pool_threads=8)``."""
    if handler is not None:
        options["handler"] = handler
    return Server(**options).serve()

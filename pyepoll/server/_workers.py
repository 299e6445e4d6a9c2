"""--workers N: worker processes sharing one port with SO_REUSEPORT.

The parent binds the port first (without listening, so it never receives a
connection) to learn it when --port is 0 and to keep it reserved for
restarted workers.  Each worker is a forked child that binds its own
listening socket with SO_REUSEPORT; the kernel spreads connections over
them.  The parent restarts a worker that dies, forwards SIGTERM/SIGINT to
the workers (each drains gracefully), and exits 0 when all of them did.
"""
from __future__ import annotations

import logging
import os
import select
import signal
import socket
import sys
import time
from typing import Dict

__all__ = ["supervise"]

log = logging.getLogger("pyepoll.server")

_READY_TIMEOUT = 30.0
_MIN_LIFETIME = 1.0       # a worker dying younger than this is restarted late


def supervise(server) -> int:
    """Run ``server`` (a :class:`~pyepoll.server.Server`) in
    ``config.workers`` processes; returns the exit status."""
    from ._server import _host_port, make_listener
    cfg = server.config
    if not hasattr(socket, "SO_REUSEPORT"):
        raise OSError("--workers needs SO_REUSEPORT, which this platform lacks")
    reserve = make_listener(cfg.host, cfg.port, reuse_port=True, listen=False)
    host, port = reserve.getsockname()[:2]
    cfg.port = port
    cfg.reuse_port = True
    ready_r, ready_w = os.pipe()
    children: Dict[int, int] = {}         # pid -> worker index
    born: Dict[int, float] = {}
    state = {"stopping": False, "signal": 0}
    parent = os.getpid()

    def spawn(index: int) -> int:
        for h in logging.getLogger().handlers:
            h.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                reserve.close()
                os.close(ready_r)
                cfg.workers = 1
                server._ready_fd = ready_w
                server._parent = parent
                code = server.serve()
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = index
        born[pid] = time.monotonic()
        return pid

    def forward(signum: int, frame: object) -> None:
        if not state["stopping"]:
            state["stopping"] = True
            state["signal"] = signum
            for pid in list(children):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    saved = {sig: signal.signal(sig, forward)
             for sig in (signal.SIGTERM, signal.SIGINT)}
    status = 0
    try:
        for i in range(cfg.workers):
            spawn(i)
        if not _wait_ready(ready_r, cfg.workers, children, state):
            forward(signal.SIGTERM, None)
            status = 1
        elif not state["stopping"]:
            log.info("serving %s on %s (model=%s workers=%d pids=%s pid=%d)",
                     cfg.protocol if cfg.handler is None else "handler",
                     _host_port(host, port), cfg.model, cfg.workers,
                     ",".join(map(str, children)), parent)
        while children:
            try:
                pid, wstatus = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            index = children.pop(pid, None)
            if index is None:
                continue
            code = os.waitstatus_to_exitcode(wstatus)
            if state["stopping"]:
                if code != 0:
                    log.warning("worker %d (pid %d) exited with %d",
                                index, pid, code)
                    status = 1
                continue
            log.warning("worker %d (pid %d) exited with %d; restarting",
                        index, pid, code)
            if time.monotonic() - born.pop(pid, 0.0) < _MIN_LIFETIME:
                time.sleep(_MIN_LIFETIME)
            if not state["stopping"]:
                spawn(index)
        if state["signal"]:
            log.info("stopped by %s; all workers done",
                     signal.Signals(state["signal"]).name)
    finally:
        for sig, h in saved.items():
            signal.signal(sig, h)
        for pid in children:           # only on an unexpected error above
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        os.close(ready_r)
        os.close(ready_w)
        reserve.close()
    return status


def _wait_ready(fd: int, count: int, children: Dict[int, int],
                state: dict) -> bool:
    """Wait until ``count`` workers report that they listen."""
    deadline = time.monotonic() + _READY_TIMEOUT
    got = 0
    while got < count:
        left = deadline - time.monotonic()
        if left <= 0 or state["stopping"]:
            return got >= count
        r, _, _ = select.select([fd], [], [], min(left, 0.5))
        if r:
            got += len(os.read(fd, count - got))
        else:
            # A worker that died before listening will never report.
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid:
                children.pop(pid, None)
                log.error("a worker died while starting")
                return False
    return True

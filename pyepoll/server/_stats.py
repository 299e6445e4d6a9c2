"""Counters a user can read, and the periodic stats line."""
from __future__ import annotations

import logging
import os
import time
from typing import Callable, Dict, Optional

__all__ = ["Stats", "Reporter", "format_stats"]

log = logging.getLogger("pyepoll.server")

FIELDS = ("conns", "accepted", "requests", "bytes_in", "bytes_out",
          "timeouts", "rejects", "errors")


class Stats:
    """Counters kept in Python by every model.

    Models whose I/O happens in C add the C loop's own counters in their
    ``snapshot()``; these are the ones Python sees first."""

    __slots__ = FIELDS

    def __init__(self) -> None:
        for name in FIELDS:
            setattr(self, name, 0)

    def as_dict(self) -> Dict[str, int]:
        return {name: getattr(self, name) for name in FIELDS}


def format_stats(snap: Dict[str, int], rate: Optional[float]) -> str:
    parts = [f"conns={snap['conns']}", f"accepted={snap['accepted']}",
             f"requests={snap['requests']}"]
    if rate is not None:
        parts.append(f"req/s={rate:.1f}")
    parts += [f"bytes_in={snap['bytes_in']}", f"bytes_out={snap['bytes_out']}",
              f"timeouts={snap['timeouts']}", f"rejects={snap['rejects']}",
              f"errors={snap['errors']}"]
    return " ".join(parts)


class Reporter:
    """Logs a stats line every ``interval`` seconds (0: never) and a final
    one.  ``tick`` is called from the model's own loop."""

    def __init__(self, interval: float,
                 snapshot: Callable[[], Dict[str, int]]) -> None:
        self.interval = interval
        self._snapshot = snapshot
        self._last_time = time.monotonic()
        self._last_requests = 0
        self.next_at = self._last_time + interval if interval > 0 else None
        self._parent = 0
        self._parent_check_at = 0.0
        self._orphaned: Optional[Callable[[], None]] = None

    def watch_parent(self, pid: int, orphaned: Callable[[], None]) -> None:
        """Call ``orphaned`` once the parent process ``pid`` is gone
        (checked every second): a worker must not outlive its supervisor."""
        self._parent = pid
        self._orphaned = orphaned

    def active(self) -> bool:
        """False when :meth:`tick` can never do anything (no stats line,
        no parent watched): the model may then skip calling it."""
        return self.next_at is not None or bool(self._parent)

    def timeout(self, now: float) -> Optional[float]:
        """Seconds until the next tick is due (None: never)."""
        t = None if self.next_at is None else max(0.0, self.next_at - now)
        if self._parent:
            left = max(0.0, self._parent_check_at - now)
            if t is None or t > left:
                t = left
        return t

    def tick(self, now: float) -> None:
        if self.next_at is not None and now >= self.next_at:
            self._log("stats", now)
            self.next_at = now + self.interval
        # getppid() is a system call: once a second, not once per wakeup.
        if self._parent and now >= self._parent_check_at:
            self._parent_check_at = now + 1.0
            if os.getppid() == self._parent:
                return
            self._parent = 0
            log.warning("supervisor gone; shutting down")
            self._orphaned()                      # type: ignore[misc]

    def final(self) -> None:
        self._log("stats (final)", time.monotonic())

    def _log(self, label: str, now: float) -> None:
        snap = self._snapshot()
        dt = now - self._last_time
        rate = (snap["requests"] - self._last_requests) / dt if dt > 0 else 0.0
        self._last_time, self._last_requests = now, snap["requests"]
        log.info("%s: %s", label, format_stats(snap, rate))

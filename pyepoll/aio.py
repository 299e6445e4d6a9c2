"""asyncio on pyepoll: entry points.

    pyepoll.run(main())                                   # like asyncio.run
    asyncio.Runner(loop_factory=pyepoll.new_event_loop)   # 3.11+
    asyncio.run(main(), loop_factory=pyepoll.new_event_loop)  # 3.12+

:func:`new_event_loop` makes a :class:`pyepoll.asyncio_loop.EventLoop`:
asyncio's selector loop whose TCP and Unix stream transports are
connections of pyepoll's C loop, and whose one wait serves them and every
other descriptor asyncio watches.  :func:`new_selector_event_loop` makes
the stdlib's :class:`asyncio.SelectorEventLoop` with pyepoll's
:data:`pyepoll.selectors.DefaultSelector` underneath (only the selector
differs from asyncio's own loop).  Everything asyncio offers works on both
(streams, protocols, UDP, Unix sockets, subprocesses, signal handlers,
sendfile, SSL).

:class:`EventLoopPolicy` is for code that still sets a policy.  asyncio
deprecates policies from Python 3.14 on; there, reading
``pyepoll.aio.EventLoopPolicy`` warns likewise (DeprecationWarning).
"""
from __future__ import annotations

import asyncio
import sys
import warnings
from typing import Any, Coroutine, Optional, TypeVar

from .selectors import DefaultSelector

__all__ = ["new_event_loop", "new_selector_event_loop", "run",
           "EventLoopPolicy"]

_T = TypeVar("_T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new asyncio event loop on pyepoll's C connection loop
    (:class:`pyepoll.asyncio_loop.EventLoop`)."""
    from .asyncio_loop import EventLoop
    return EventLoop()


def new_selector_event_loop() -> asyncio.AbstractEventLoop:
    """A new :class:`asyncio.SelectorEventLoop` on pyepoll's best selector
    (the stdlib's loop; only the selector is pyepoll's)."""
    return asyncio.SelectorEventLoop(DefaultSelector())


if sys.version_info >= (3, 11):

    def run(main: Coroutine[Any, Any, _T], *,
            debug: Optional[bool] = None) -> _T:
        """Run a coroutine on a new pyepoll event loop and close the loop;
        :func:`asyncio.run` with pyepoll's loop."""
        if asyncio._get_running_loop() is not None:
            # Before the Runner makes a loop it could not shut down here.
            raise RuntimeError(
                "pyepoll.run() cannot be called from a running event loop")
        with asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
            return runner.run(main)

else:

    def run(main: Coroutine[Any, Any, _T], *,
            debug: Optional[bool] = None) -> _T:
        """Run a coroutine on a new pyepoll event loop and close the loop;
        :func:`asyncio.run` with pyepoll's loop."""
        if asyncio._get_running_loop() is not None:
            raise RuntimeError(
                "pyepoll.run() cannot be called from a running event loop")
        if not asyncio.iscoroutine(main):
            raise ValueError(f"a coroutine was expected, got {main!r}")
        loop = new_event_loop()
        try:
            asyncio.set_event_loop(loop)
            if debug is not None:
                loop.set_debug(debug)
            return loop.run_until_complete(main)
        finally:
            try:
                _cancel_all_tasks(loop)
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    def _cancel_all_tasks(loop: asyncio.AbstractEventLoop) -> None:
        pending = asyncio.all_tasks(loop)
        if not pending:
            return
        for task in pending:
            task.cancel()
        loop.run_until_complete(
            asyncio.gather(*pending, return_exceptions=True))
        for task in pending:
            if not task.cancelled() and task.exception() is not None:
                loop.call_exception_handler({
                    "message": "unhandled exception during asyncio.run() "
                               "shutdown",
                    "exception": task.exception(),
                    "task": task,
                })


def _policy_base() -> Optional[type]:
    """asyncio's default policy class, fetched without its 3.14+
    deprecation warning; None once asyncio no longer has one."""
    if sys.version_info < (3, 14):
        return asyncio.DefaultEventLoopPolicy
    module = sys.modules.get(
        "asyncio.windows_events" if sys.platform == "win32"
        else "asyncio.unix_events")
    return getattr(module, "_DefaultEventLoopPolicy", None)


def _make_policy_class() -> Optional[type]:
    base = _policy_base()
    if base is None:
        return None

    class EventLoopPolicy(base):  # type: ignore[misc, valid-type]
        """asyncio's default event loop policy, making pyepoll loops."""

        def new_event_loop(self) -> asyncio.AbstractEventLoop:
            """A new event loop on pyepoll's C connection loop."""
            return new_event_loop()

    EventLoopPolicy.__module__ = __name__
    return EventLoopPolicy


_EventLoopPolicy = _make_policy_class()

if sys.version_info < (3, 14):
    EventLoopPolicy = _EventLoopPolicy
else:

    def __getattr__(name: str) -> Any:
        if name == "EventLoopPolicy" and _EventLoopPolicy is not None:
            warnings.warn(
                "pyepoll.aio.EventLoopPolicy is deprecated like asyncio's "
                "policies (Python 3.14+); use pyepoll.run(), or "
                "asyncio.Runner / asyncio.run with "
                "loop_factory=pyepoll.new_event_loop",
                DeprecationWarning, stacklevel=2)
            return _EventLoopPolicy
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

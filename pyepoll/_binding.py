"""The one importer of the compiled core, and the one place errors are mapped.

Every C function returns 0, a count, or -errno.  :func:`check` turns a
negative result into the exception CPython raises for the same failure, so
``-EEXIST`` becomes FileExistsError, ``-ENOENT`` FileNotFoundError, ``-EPERM``
PermissionError, and so on (``OSError(errno, ...)`` picks the subclass).
A wait that fails with ``-EINTR`` calls :func:`run_signal_handlers` before
it retries (PEP 475).
"""
from __future__ import annotations

import errno
import os
import signal
import sys
import threading
from typing import NoReturn, Optional


def _no_core(exc: ModuleNotFoundError) -> ImportError:
    """The ImportError for a pyepoll without a compiled core this Python can
    load: what happened, and the ways out."""
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    import importlib.machinery
    wanted = ", ".join(f"_core{s}" for s in
                       importlib.machinery.EXTENSION_SUFFIXES)
    present = sorted(f for f in os.listdir(here) if f.startswith("_core."))
    found = (f"; {here} has only {', '.join(present)}, built for another "
             f"Python" if present else "")
    if os.path.isfile(os.path.join(root, "csrc", "include", "pyepoll.h")):
        # The usual cause: run from a clone, whose pyepoll/ comes first on
        # sys.path and hides the installed package.
        return ImportError(
            f"pyepoll was imported from its source tree ({here}), where the "
            f"compiled extension pyepoll._core is not built (this Python "
            f"loads {wanted}{found}). Either build it in place: "
            f"pip install cffi scikit-build-core cmake ninja && "
            f"pip install --no-build-isolation -e . (in {root}); or run from "
            f"outside the source tree (cd elsewhere), so that Python imports "
            f"the pyepoll installed by pip install .",
            name=exc.name, path=here)
    return ImportError(
        f"pyepoll at {here} has no compiled extension pyepoll._core that "
        f"this Python can load (it loads {wanted}{found}): reinstall "
        f"pyepoll-io with this interpreter's pip",
        name=exc.name, path=here)


try:
    from ._core import ffi, lib  # noqa: F401  (re-exported to the others)
except ModuleNotFoundError as _exc:
    if _exc.name != __name__.rpartition(".")[0] + "._core":
        raise                   # something _core itself imports is missing
    raise _no_core(_exc) from None

__all__ = ["ffi", "lib", "check", "errno_error", "raise_errno",
           "run_signal_handlers", "fileno_of", "StaleHandleError"]


class StaleHandleError(ValueError):
    """A connection handle was used after its connection closed."""


def load_speedups() -> object:
    """pyepoll._speedups (csrc/cpython/), the C hot paths of the asyncio
    loop and of Loop; None on PyPy, where it is not built, in a dev build
    of _core alone, or with PYEPOLL_SPEEDUPS=0 (the pure Python paths)."""
    if (os.environ.get("PYEPOLL_SPEEDUPS") == "0" or
            sys.implementation.name != "cpython"):
        return None
    try:
        from . import _speedups
    except ImportError:
        return None
    return _speedups


def errno_error(err: int, context: str = "") -> OSError:
    """The OSError CPython raises for the positive errno ``err``: its
    subclass for err (ConnectionResetError for ECONNRESET...)."""
    message = os.strerror(err)
    if context:
        message = f"{message}: {context}"
    return OSError(err, message)


def raise_errno(err: int, context: str = "") -> NoReturn:
    """Raise the exception CPython would raise for the positive errno
    ``err``; a stale connection handle is a StaleHandleError."""
    if err == errno.ESTALE:
        stale = "connection is closed (stale handle)"
        raise StaleHandleError(f"{context}: {stale}" if context else stale)
    raise errno_error(err, context)


def check(rc: int, context: str = "") -> int:
    """Return ``rc`` when it is not negative, else raise for ``-rc``."""
    if rc < 0:
        raise_errno(-rc, context)
    return rc


if hasattr(signal, "pthread_sigmask"):
    _sigmask = signal.pthread_sigmask
    _SIG_BLOCK = signal.SIG_BLOCK

    def run_signal_handlers() -> None:
        """Run the pending Python signal handlers now, raising what one
        raises: PyErr_CheckSignals for Python code.  Every wait calls it
        after -EINTR, before it retries.

        Returning to the interpreter is not enough on PyPy.  It runs
        handlers at a periodic check that JIT-compiled code may not reach
        before the retried wait, and a signal another thread's check took
        first waits there for a thread switch: either way the handler ran
        only when the retried wait returned, at its timeout.  Changing the
        signal mask runs the handlers on both interpreters (CPython and
        PyPy check signals after pthread_sigmask, since an unblocked one may
        be pending); blocking the empty set changes nothing."""
        _sigmask(_SIG_BLOCK, ())
else:
    def run_signal_handlers() -> None:
        """Without pthread_sigmask, calling a Python function is the point
        where the interpreter runs pending handlers."""


class WakeupPipe:
    """A non-blocking pipe for :func:`signal.set_wakeup_fd`: its C-level
    handler writes a byte to it whichever thread takes a signal, so a wait
    that watches ``r`` wakes (a signal taken by another thread interrupts
    no wait of the main thread's); :meth:`take` then runs the Python
    handler.

    :meth:`install` (main thread only, as CPython requires) points the
    wakeup fd here; :meth:`uninstall` puts back the one it replaced, then
    :meth:`close` closes the pipe."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        self._old: Optional[int] = None     # the fd replaced, if installed
        try:
            os.set_blocking(self.r, False)
            os.set_blocking(self.w, False)
        except BaseException:
            self.close()
            raise

    def install(self) -> None:
        self._old = signal.set_wakeup_fd(self.w, warn_on_full_buffer=False)

    def take(self) -> None:
        """Empty ``r``; if a signal came, run its Python handler now (what
        it raises is raised here).  Waking up is not enough on PyPy: a
        signal that another thread's periodic check took first waits for a
        thread switch to reach the main thread, and with the other threads
        idle none may come (a server worker saw its SIGTERM handler run
        21 s late)."""
        try:
            got = os.read(self.r, 512)
        except BlockingIOError:
            return
        if got:
            run_signal_handlers()

    def uninstall(self) -> bool:
        """Undo :meth:`install`; False off the main thread, which cannot
        change the wakeup fd: then the pipe must stay open (a signal still
        writes to w, and a number reused by another file would take the
        byte)."""
        if self._old is None:
            return True
        if threading.current_thread() is not threading.main_thread():
            return False
        try:
            mine = signal.set_wakeup_fd(self._old)
        except (OSError, ValueError):
            # The fd to put back was closed (or made blocking) since:
            # there is none to put back.
            mine = signal.set_wakeup_fd(-1)
        if mine != self.w:
            signal.set_wakeup_fd(mine)  # set again since: not ours to undo
        self._old = None
        return True

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


def fileno_of(fileobj: object) -> int:
    """Return the descriptor of an int or of an object with ``fileno()``.

    Raises exactly what CPython's select.epoll raises for the same argument:
    TypeError for something that is neither, ValueError for a negative fd.
    """
    if isinstance(fileobj, int):
        fd = int(fileobj)
    else:
        try:
            method = fileobj.fileno  # type: ignore[attr-defined]
        except AttributeError:
            raise TypeError(
                "argument must be an int, or have a fileno() method."
            ) from None
        fd = method()
        if not isinstance(fd, int):
            raise TypeError("fileno() returned a non-integer")
    if fd < 0:
        raise ValueError(f"file descriptor cannot be a negative integer ({fd})")
    if fd > 0x7FFFFFFF:
        raise OverflowError("file descriptor is greater than maximum")
    return fd

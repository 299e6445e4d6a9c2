"""The one importer of the compiled core, and the one place errors are mapped.

Every C function returns 0, a count, or -errno.  :func:`check` turns a
negative result into the exception CPython raises for the same failure, so
``-EEXIST`` becomes FileExistsError, ``-ENOENT`` FileNotFoundError, ``-EPERM``
PermissionError, and so on (``OSError(errno, ...)`` picks the subclass).
"""
from __future__ import annotations

import errno
import os
from typing import NoReturn

from ._core import ffi, lib  # noqa: F401  (re-exported to the other modules)

__all__ = ["ffi", "lib", "check", "raise_errno", "fileno_of", "StaleHandleError"]


class StaleHandleError(ValueError):
    """A connection handle was used after its connection closed."""


def raise_errno(err: int, context: str = "") -> NoReturn:
    """Raise the exception CPython would raise for the positive errno ``err``."""
    if err == errno.ESTALE:
        stale = "connection is closed (stale handle)"
        raise StaleHandleError(f"{context}: {stale}" if context else stale)
    message = os.strerror(err)
    if context:
        message = f"{message}: {context}"
    raise OSError(err, message)


def check(rc: int, context: str = "") -> int:
    """Return ``rc`` when it is not negative, else raise for ``-rc``."""
    if rc < 0:
        raise_errno(-rc, context)
    return rc


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

"""Generate the C source of the cffi extension ``pyepoll._core``.

The cdef is the marked block of csrc/include/pyepoll.h, read here so that the C
declarations exist in exactly one place.  CMake runs this script at build
time (``python build_ffi.py OUT.c``) and compiles its output against the
static core; nothing is compiled by cffi itself.
"""
from __future__ import annotations

import pathlib
import re
import sys

from cffi import FFI

HEADER = (pathlib.Path(__file__).resolve().parent / "csrc" / "include" /
          "pyepoll.h")
_BLOCK = re.compile(r"/\* PE_CDEF_BEGIN \*/(.*?)/\* PE_CDEF_END \*/", re.S)


def cdef_source(header: pathlib.Path = HEADER) -> str:
    """Return the declarations between the PE_CDEF markers of the header."""
    match = _BLOCK.search(header.read_text())
    if match is None:
        raise SystemExit(f"{header}: no PE_CDEF_BEGIN/PE_CDEF_END block")
    return match.group(1)


def make_ffi() -> FFI:
    ffi = FFI()
    ffi.cdef(cdef_source())
    ffi.set_source("pyepoll._core", '#include "pyepoll.h"')
    return ffi


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: build_ffi.py OUTPUT.c")
    make_ffi().emit_c_code(sys.argv[1])

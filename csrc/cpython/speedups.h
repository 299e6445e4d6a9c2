/*
 * speedups.h - what the files of pyepoll._speedups (every .c in csrc/cpython/)
 * share: one module, several files, each adding its own types and
 * functions to the module from PyInit__speedups (speedups.c).
 *
 * Same rules in every file: Limited API 3.9 (one abi3 module for every
 * CPython >= 3.9), the core reached only through addresses cffi hands over
 * (never a second copy of it), and anything unusual left to the Python
 * code, which stays the one implementation of the semantics.
 */
#ifndef PYEPOLL_SPEEDUPS_H
#define PYEPOLL_SPEEDUPS_H

#define Py_LIMITED_API 0x03090000
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "pyepoll.h"

/* Each file's part of the module: adds its types and functions to m;
 * 0, or -1 with an exception set. */
/* The exception being raised reported as `except BaseException as exc:
 * func(*lead, exc, *trail)` would: exc is the handled one (sys.exc_info())
 * during the call, and is cleared.  lead and trail may be NULL.
 * SystemExit and KeyboardInterrupt stay raised.  0, or -1 with an
 * exception to propagate (speedups.c). */
int pe_py_report_raised(PyObject *func, PyObject *lead, PyObject *trail);

int pe_py_add_iter(PyObject *m);      /* aio_iter.c: EventLoop's iteration */
int pe_py_add_loop(PyObject *m);      /* loop_calls.c: pyepoll.Loop */
int pe_py_add_methods(PyObject *m);   /* aio_methods.c: small methods */

#endif

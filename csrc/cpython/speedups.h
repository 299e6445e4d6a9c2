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

/* METH_FASTCALL (| METH_KEYWORDS): the vectorcall convention of builtin
 * methods, with no argument tuple or keyword dict a call (~150
 * instructions).  CPython implements it since 3.7 with this value and the
 * stable ABI names it from 3.10 on; the 3.9 limited headers only do not
 * declare it. */
#ifndef METH_FASTCALL
#define METH_FASTCALL 0x0080
#endif

#include "pyepoll.h"

/* `n = call` for one of the core's waits, with timeout ms: the GIL let go
 * only when the wait may block (ms != 0), so that other threads run
 * meanwhile (and can call wakeup() or close()).  A wait that cannot block
 * (callbacks or events ready) keeps the GIL, as a non-blocking send does:
 * letting it go and taking it back costs some 400 instructions, more than
 * the poll.  The reverse, a zero-timeout run first with the GIL held and
 * the release only if it found nothing, was measured and is worse with one
 * connection: the next request is rarely there yet, so it adds an
 * epoll_wait (1.22 a round trip under strace) and more instructions than
 * the release it saves.  The call must not touch Python objects. */
#define PE_PY_WAIT(n, ms, call)                 \
    do {                                        \
        if ((ms) == 0) {                        \
            (n) = (call);                       \
        } else {                                \
            Py_BEGIN_ALLOW_THREADS              \
            (n) = (call);                       \
            Py_END_ALLOW_THREADS                \
        }                                       \
    } while (0)

/* Each file's part of the module: adds its types and functions to m;
 * 0, or -1 with an exception set. */
/* The exception being raised reported as `except BaseException as exc:
 * func(*lead, exc, *trail)` would: exc is the handled one (sys.exc_info())
 * during the call, and is cleared.  lead and trail may be NULL.
 * SystemExit and KeyboardInterrupt stay raised.  0, or -1 with an
 * exception to propagate (speedups.c). */
int pe_py_report_raised(PyObject *func, PyObject *lead, PyObject *trail);

/* Whether loop is the one that waited last (or was bound last) and its C
 * loop is live: then its _sb is that Batch and its _p is set, and
 * pe_py_loop_select(timeout) is its Batch.select(timeout) (speedups.c). */
int pe_py_loop_known(PyObject *loop);
PyObject *pe_py_loop_select(PyObject *timeout);

/* {"loop": loop} to call asyncio.Future with, kept by the Batch of the
 * loop that waited last (never changed; callees do not write to keyword
 * dicts), or NULL for another loop (borrowed; speedups.c). */
PyObject *pe_py_loop_future_kw(PyObject *loop);

/* loop._ready (never rebound after __init__) as the Batch of the loop
 * that waited last keeps it, or NULL for another loop (borrowed). */
PyObject *pe_py_loop_ready(PyObject *loop);
/* That _ready's append and popleft, bound (borrowed; NULL likewise). */
PyObject *pe_py_loop_ready_append(PyObject *loop);
PyObject *pe_py_loop_ready_popleft(PyObject *loop);

/* EventLoop._conns on the C paths (conn_map.c): its type, and the
 * transport stored under exactly handle h (borrowed), or NULL. */
extern PyTypeObject *pe_py_conn_map_type;
PyObject *pe_py_conn_of(PyObject *map, pe_handle h);

int pe_py_add_conn_map(PyObject *m); /* conn_map.c: ConnMap */
int pe_py_add_iter(PyObject *m);      /* aio_iter.c: EventLoop's iteration */
int pe_py_add_loop(PyObject *m);      /* loop_calls.c: pyepoll.Loop */
int pe_py_add_methods(PyObject *m);   /* aio_methods.c: small methods */

#endif

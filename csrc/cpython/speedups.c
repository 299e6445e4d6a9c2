/*
 * speedups.c - pyepoll._speedups: the asyncio loop's hot path in C, for
 * CPython only (pyepoll/asyncio_loop.py; docs/asyncio.md, "Speedups").
 *
 * The only C in the project that knows Python: everything else in csrc/
 * is the Python-free core, reached from Python through cffi.  This module
 * is no second copy of that core.  It calls the core's own entry points
 * (csrc/loop/loop_guard.c, one thread inside at a time) through function
 * pointers that cffi hands over as addresses (init()), and it reads the
 * batch that pe_loop_run_into fills into buffers cffi allocated.
 *
 * What it saves per event is Python's: the batch walk's bytecode, cffi's
 * argument conversion and its GIL release around a non-blocking send, and
 * the Python frame of CTransport.write.  Anything unusual (an event other
 * than DATA, a transport that is paused or closing, a protocol's odd
 * buffer, an error) goes back to the Python code, which stays the one
 * implementation of asyncio's semantics; this file only does the common
 * case the same way.
 *
 * Limited API 3.9 (one abi3 module for every CPython >= 3.9), plus the
 * buffer protocol, which joined it in 3.11 (declared below for older
 * headers).
 */
#include "speedups.h"

#include <errno.h>
#include <string.h>

typedef int (*run_into_fn)(pe_loop *, const pe_handle *, size_t,
                           struct pe_loop_bevent *, int, int, void *, size_t);
typedef int64_t (*write_fn)(pe_loop *, pe_handle, const void *, size_t);

/* The core's guarded entry points, from init(). */
static run_into_fn core_run_into;
static write_fn core_write;

static PyTypeObject *batch_type;
static PyTypeObject *conn_type;

/* Interned attribute and method names. */
static PyObject *s_w, *s_event, *s_feed_at, *s_fatal_error, *s_write_py,
    *s_maybe_pause, *s_write_failed;

/* A memoryview written up to this size is sent from C; a larger one goes
 * the Python way (cffi sends it in place). */
#define COPY_MAX 65536

/* The buffer protocol: in the limited API (and its headers) from 3.11 on;
 * every CPython 3 exports these two functions, with this Py_buffer layout
 * since 3.3, so a module built for 3.9 declares them itself. */
#if Py_LIMITED_API + 0 >= 0x030B0000
typedef Py_buffer pe_buffer;
#define pe_get_buffer PyObject_GetBuffer
#define pe_release_buffer PyBuffer_Release
#else
typedef struct {
    void *buf;
    PyObject *obj;
    Py_ssize_t len, itemsize;
    int readonly, ndim;
    char *format;
    Py_ssize_t *shape, *strides, *suboffsets;
    void *internal;
} pe_buffer;
PyAPI_FUNC(int) PyObject_GetBuffer(PyObject *, pe_buffer *, int);
PyAPI_FUNC(void) PyBuffer_Release(pe_buffer *);
#define pe_get_buffer PyObject_GetBuffer
#define pe_release_buffer PyBuffer_Release
#define PyBUF_SIMPLE 0
#define PyBUF_WRITABLE 0x0001
#endif

/* ------------------------------------------------------------------ Batch */

/* One per EventLoop: its C loop, the batch buffers (cffi's; `owners`
 * keeps them alive) and the walk's position in the last batch. */
typedef struct {
    PyObject_HEAD
    pe_loop *l;                 /* NULL once detached: nothing may call C */
    struct pe_loop_bevent *ev;
    int max;
    char *buf;
    size_t buflen;
    int n;                      /* events in the last batch */
    int pos;                    /* the next one to walk */
    PyObject *owners;
    /* bind(): what select() walks with (the loop, its _conns and _ready);
     * a cycle through the loop, which detach() breaks. */
    PyObject *loop, *conns, *ready;
    PyObject *future_kw;        /* {"loop": loop} (pe_py_loop_future_kw) */
    /* ready.append and ready.popleft, bound once: a call each per
     * callback, without looking the method up each time. */
    PyObject *ready_append, *ready_popleft;
} Batch;

/* CTransport's `_w` slot: its member descriptor and that one's get
 * function (from write_method(); NULL: getattr, as on 3.9). */
static PyObject *w_descr;
static descrgetfunc w_get;

/* t._w, a new reference (t: a CTransport, as the conns map and the write
 * method descriptor guarantee). */
static PyObject *get_w(PyObject *t)
{
    if (w_get)
        return w_get(w_descr, t, NULL);
    return PyObject_GetAttr(t, s_w);
}

/* The Batch bound last (borrowed: its dealloc forgets it), so that
 * aio_iter.c finds that loop's __dict__ without a getattr per call. */
static Batch *current;

static PyObject *batch_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    unsigned long long l, ev, buf, buflen;
    int max;
    PyObject *owners;
    Batch *b;

    if (kw && PyDict_Size(kw)) {
        PyErr_SetString(PyExc_TypeError, "Batch() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "KKiKKO", &l, &ev, &max, &buf, &buflen,
                          &owners))
        return NULL;
    if (!l || !ev || !buf || max <= 0) {
        PyErr_SetString(PyExc_ValueError, "Batch: null buffer or max <= 0");
        return NULL;
    }
    b = (Batch *)PyType_GenericAlloc(type, 0);
    if (!b)
        return NULL;
    b->l = (pe_loop *)(uintptr_t)l;
    b->ev = (struct pe_loop_bevent *)(uintptr_t)ev;
    b->max = max;
    b->buf = (char *)(uintptr_t)buf;
    b->buflen = (size_t)buflen;
    b->n = b->pos = 0;
    Py_INCREF(owners);
    b->owners = owners;
    return (PyObject *)b;
}

static int batch_traverse(PyObject *self, visitproc visit, void *arg)
{
    Batch *b = (Batch *)self;
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(b->owners);
    Py_VISIT(b->loop);
    Py_VISIT(b->conns);
    Py_VISIT(b->ready);
    Py_VISIT(b->future_kw);
    Py_VISIT(b->ready_append);
    Py_VISIT(b->ready_popleft);
    return 0;
}

static int batch_clear(PyObject *self)
{
    Batch *b = (Batch *)self;
    Py_CLEAR(b->loop);
    Py_CLEAR(b->conns);
    Py_CLEAR(b->ready);
    Py_CLEAR(b->future_kw);
    Py_CLEAR(b->ready_append);
    Py_CLEAR(b->ready_popleft);
    return 0;
}

static void batch_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (current == (Batch *)self)
        current = NULL;
    batch_clear(self);
    Py_CLEAR(((Batch *)self)->owners);
    ((freefunc)PyType_GetSlot(tp, Py_tp_free))(self);
    Py_DECREF(tp);
}

/* bind(loop, conns, ready): what select() walks with. */
static PyObject *batch_bind(PyObject *self, PyObject *args)
{
    Batch *b = (Batch *)self;
    PyObject *loop, *conns, *ready, *kw, *append = NULL, *popleft = NULL;

    if (!PyArg_ParseTuple(args, "OO!O", &loop, pe_py_conn_map_type, &conns,
                          &ready))
        return NULL;
    kw = PyDict_New();
    if (!kw || PyDict_SetItemString(kw, "loop", loop) < 0 ||
        !(append = PyObject_GetAttrString(ready, "append")) ||
        !(popleft = PyObject_GetAttrString(ready, "popleft"))) {
        Py_XDECREF(kw);
        Py_XDECREF(append);
        return NULL;
    }
    batch_clear(self);
    b->ready_append = append;
    b->ready_popleft = popleft;
    Py_INCREF(loop);
    Py_INCREF(conns);
    Py_INCREF(ready);
    b->loop = loop;
    b->conns = conns;
    b->ready = ready;
    b->future_kw = kw;
    current = b;
    Py_RETURN_NONE;
}

PyObject *pe_py_loop_ready(PyObject *loop)
{
    return current && current->loop == loop ? current->ready : NULL;
}

PyObject *pe_py_loop_ready_append(PyObject *loop)
{
    return current && current->loop == loop ? current->ready_append : NULL;
}

PyObject *pe_py_loop_ready_popleft(PyObject *loop)
{
    return current && current->loop == loop ? current->ready_popleft : NULL;
}

PyObject *pe_py_loop_future_kw(PyObject *loop)
{
    return current && current->loop == loop ? current->future_kw : NULL;
}

static PyObject *batch_detach(PyObject *self, PyObject *unused)
{
    ((Batch *)self)->l = NULL;
    ((Batch *)self)->n = ((Batch *)self)->pos = 0;
    batch_clear(self);
    Py_RETURN_NONE;
}

static int append_fd(PyObject **fds, const struct pe_loop_bevent *e)
{
    PyObject *item;
    int rc;

    if (!*fds && !(*fds = PyList_New(0)))
        return -1;
    item = Py_BuildValue("(KK)", (unsigned long long)e->handle,
                         (unsigned long long)e->arg);
    if (!item)
        return -1;
    rc = PyList_Append(*fds, item);
    Py_DECREF(item);
    return rc;
}

/* fd_events() -> [(fd, bits)] of the whole last batch (the walk is left
 * for later, behind the ready callbacks). */
static PyObject *batch_fd_events(PyObject *self, PyObject *unused)
{
    Batch *b = (Batch *)self;
    PyObject *fds = NULL;
    int i;

    for (i = 0; i < b->n; i++)
        if (b->ev[i].kind == PE_EV_FD && append_fd(&fds, &b->ev[i]) < 0) {
            Py_XDECREF(fds);
            return NULL;
        }
    if (!fds)
        return PyList_New(0);
    return fds;
}

/* ------------------------------------------------------------------- Conn */

enum { MODE_SLOW = 0, MODE_DATA = 1, MODE_BUFFERED = 2 };

/* One per CTransport (its _w): what the walk and write() need, mirrored by
 * CTransport._sync() whenever the transport's state changes. */
typedef struct {
    PyObject_HEAD
    Batch *batch;
    pe_handle h;                /* 0: write() goes the Python way */
    long long high;             /* the high-water mark */
    int mode;                   /* MODE_*: how the walk delivers DATA */
    PyObject *cb1;              /* data_received, or get_buffer */
    PyObject *cb2;              /* buffer_updated */
} Conn;

static PyObject *conn_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    PyObject *batch;
    Conn *c;

    if (kw && PyDict_Size(kw)) {
        PyErr_SetString(PyExc_TypeError, "Conn() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "O!", batch_type, &batch))
        return NULL;
    c = (Conn *)PyType_GenericAlloc(type, 0);
    if (!c)
        return NULL;
    Py_INCREF(batch);
    c->batch = (Batch *)batch;
    return (PyObject *)c;
}

static int conn_traverse(PyObject *self, visitproc visit, void *arg)
{
    Conn *c = (Conn *)self;
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(c->batch);
    Py_VISIT(c->cb1);
    Py_VISIT(c->cb2);
    return 0;
}

static int conn_clear(PyObject *self)
{
    Conn *c = (Conn *)self;
    c->h = 0;
    c->mode = MODE_SLOW;
    Py_CLEAR(c->batch);
    Py_CLEAR(c->cb1);
    Py_CLEAR(c->cb2);
    return 0;
}

static void conn_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    conn_clear(self);
    ((freefunc)PyType_GetSlot(tp, Py_tp_free))(self);
    Py_DECREF(tp);
}

/* set(h, high, mode, cb1, cb2): h 0 sends every write() to Python. */
static PyObject *conn_set(PyObject *self, PyObject *args)
{
    Conn *c = (Conn *)self;
    unsigned long long h;
    long long high;
    int mode;
    PyObject *cb1, *cb2, *old1, *old2;

    if (!PyArg_ParseTuple(args, "KLiOO", &h, &high, &mode, &cb1, &cb2))
        return NULL;
    if (mode < MODE_SLOW || mode > MODE_BUFFERED ||
        (mode == MODE_DATA && cb1 == Py_None) ||
        (mode == MODE_BUFFERED && (cb1 == Py_None || cb2 == Py_None))) {
        PyErr_SetString(PyExc_ValueError, "Conn.set: bad mode or callbacks");
        return NULL;
    }
    c->h = (pe_handle)h;
    c->high = high;
    c->mode = mode;
    old1 = c->cb1;
    old2 = c->cb2;
    c->cb1 = cb1 == Py_None ? NULL : (Py_INCREF(cb1), cb1);
    c->cb2 = cb2 == Py_None ? NULL : (Py_INCREF(cb2), cb2);
    Py_XDECREF(old1);
    Py_XDECREF(old2);
    Py_RETURN_NONE;
}

/* state() -> (h, high, mode): for tests. */
static PyObject *conn_state(PyObject *self, PyObject *unused)
{
    Conn *c = (Conn *)self;
    return Py_BuildValue("(KLi)", (unsigned long long)c->h, c->high, c->mode);
}

/* --------------------------------------------------------------- the walk */

/* PyObject_VectorcallDict, which every CPython from 3.9 on exports but
 * the limited API does not declare: declared weak here, so the loader
 * binds it as it binds every Py* function, and an interpreter without it
 * leaves it NULL (then the varargs call, which costs some 60 instructions
 * more per callback, walking its va_list).  Not dlsym: that would tie
 * the module to glibc 2.34 and the wheel to manylinux_2_34. */
#if defined(__GNUC__) || defined(__clang__)
PyAPI_FUNC(PyObject *) PyObject_VectorcallDict(PyObject *, PyObject *const *,
                                               size_t, PyObject *)
    __attribute__((weak));
#define vcall_dict PyObject_VectorcallDict
#else
#define vcall_dict NULL
#endif

/* The vectorcall flag letting a bound method put self in args[-1] instead
 * of copying the arguments (CPython's value since 3.8). */
#define ARGS_OFFSET ((size_t)1 << (8 * sizeof(size_t) - 1))

/* callable(arg), taking arg's reference; no argument tuple made. */
static PyObject *call1(PyObject *callable, PyObject *arg)
{
    PyObject *r, *args[2];

    if (!arg)
        return NULL;
    Py_INCREF(callable);             /* a callback may drop the Conn's ref */
    if (vcall_dict) {
        args[0] = NULL;
        args[1] = arg;
        r = vcall_dict(callable, args + 1, 1 | ARGS_OFFSET, NULL);
    } else {
        r = PyObject_CallFunctionObjArgs(callable, arg, NULL);
    }
    Py_DECREF(callable);
    Py_DECREF(arg);
    return r;
}

/* A protocol callback raised: as _walk's `except BaseException as exc:
 * t._fatal_error(exc, message)`, with exc the handled exception meanwhile.
 * SystemExit and KeyboardInterrupt stay raised.  -1: an exception to
 * propagate. */
static int callback_failed(PyObject *t, const char *message)
{
    PyObject *fatal, *msg;
    int rc;

    if (PyErr_ExceptionMatches(PyExc_SystemExit) ||
        PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))
        return -1;
    msg = PyUnicode_FromString(message);
    if (!msg)
        return -1;
    fatal = PyObject_GetAttr(t, s_fatal_error);
    if (!fatal) {
        Py_DECREF(msg);
        return -1;
    }
    rc = pe_py_report_raised(fatal, NULL, msg);
    Py_DECREF(fatal);
    Py_DECREF(msg);
    return rc;
}

int pe_py_report_raised(PyObject *func, PyObject *lead, PyObject *trail)
{
    PyObject *type, *value, *tb, *ot, *ov, *otb, *args, *r = NULL;

    if (PyErr_ExceptionMatches(PyExc_SystemExit) ||
        PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))
        return -1;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb)
        PyException_SetTraceback(value, tb);
    PyErr_GetExcInfo(&ot, &ov, &otb);
    Py_INCREF(type);
    Py_INCREF(value);
    Py_XINCREF(tb);
    PyErr_SetExcInfo(type, value, tb);
    args = lead ? (trail ? PyTuple_Pack(3, lead, value, trail)
                         : PyTuple_Pack(2, lead, value))
                : (trail ? PyTuple_Pack(2, value, trail)
                         : PyTuple_Pack(1, value));
    if (args) {
        r = PyObject_Call(func, args, NULL);
        Py_DECREF(args);
    }
    PyErr_SetExcInfo(ot, ov, otb);
    Py_DECREF(type);
    Py_DECREF(value);
    Py_XDECREF(tb);
    if (!r)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* BufferedProtocol: n bytes at src into what get_buffer returned, then
 * buffer_updated(n).  1: done; 0: not a buffer handled here (the Python
 * way takes it, and says what is wrong with it); -1: an exception to
 * propagate. */
static int feed_buffer(PyObject *t, PyObject *buffer_updated, PyObject *buf,
                       const char *src, Py_ssize_t n)
{
    pe_buffer view;
    PyObject *r;

    if (PyByteArray_CheckExact(buf)) {
        if (PyByteArray_Size(buf) < n)
            return 0;
        memcpy(PyByteArray_AsString(buf), src, (size_t)n);
    } else {
        /* Writable and C-contiguous (a strided memoryview refuses a
         * request without strides), its size in bytes, as the Python
         * way's memoryview(buf) checks. */
        if (pe_get_buffer(buf, &view, PyBUF_WRITABLE) < 0) {
            if (!PyErr_ExceptionMatches(PyExc_Exception))
                return -1;
            PyErr_Clear();
            return 0;
        }
        if (view.len < n) {
            pe_release_buffer(&view);
            return 0;
        }
        memcpy(view.buf, src, (size_t)n);
        pe_release_buffer(&view);
    }
    r = call1(buffer_updated, PyLong_FromSsize_t(n));
    if (!r)
        return callback_failed(
            t, "Fatal error: protocol.buffer_updated() call failed.") < 0
            ? -1 : 1;
    Py_DECREF(r);
    return 1;
}

/* One DATA event of a transport on a fast path.  -1: propagate. */
static int deliver(PyObject *loop, PyObject *t, Conn *c,
                   const struct pe_loop_bevent *e, const char *src)
{
    Py_ssize_t n = (Py_ssize_t)e->arg;
    PyObject *r, *get_buffer, *buffer_updated;
    int rc;

    if (c->mode == MODE_DATA) {
        r = call1(c->cb1, PyBytes_FromStringAndSize(src, n));
        if (!r)
            return callback_failed(
                t, "Fatal error: protocol.data_received() call failed.");
        Py_DECREF(r);
        return 0;
    }
    /* Both callbacks as they are now: get_buffer may close or pause the
     * transport (its _sync() then clears them in the Conn), and the
     * Python walk still calls buffer_updated then. */
    get_buffer = c->cb1;
    buffer_updated = c->cb2;
    Py_INCREF(get_buffer);
    Py_INCREF(buffer_updated);
    r = call1(get_buffer, PyLong_FromSsize_t(n));
    Py_DECREF(get_buffer);
    if (!r) {
        Py_DECREF(buffer_updated);
        return callback_failed(
            t, "Fatal error: protocol.get_buffer() call failed.");
    }
    rc = feed_buffer(t, buffer_updated, r, src, n);
    Py_DECREF(buffer_updated);
    if (rc == 0) {
        /* Smaller, odd or refused: the Python way, from this buffer. */
        PyObject *x = PyObject_CallMethod(loop, "_feed_at", "OKKO", t,
                                          (unsigned long long)e->off,
                                          (unsigned long long)e->arg, r);
        rc = x ? 1 : -1;
        Py_XDECREF(x);
    }
    Py_DECREF(r);
    return rc < 0 ? -1 : 0;
}

/* walk(loop, conns, want_fds) -> [(fd, bits)] or None (conns: the loop's
 * _conns, a ConnMap).  Walks the last
 * batch from where it stopped: DATA of a transport on a fast path is
 * delivered here, every other event goes to loop._event(kind, h, arg, off)
 * in batch order, FD events are collected (if want_fds).  An exception
 * that escapes (SystemExit, KeyboardInterrupt, or one the Python side let
 * through) leaves the rest of the batch for the next walk. */
static PyObject *walk(Batch *b, PyObject *loop, PyObject *conns,
                      int want_fds)
{
    PyObject *fds = NULL;

    while (b->pos < b->n) {
        const struct pe_loop_bevent *e = &b->ev[b->pos++];
        PyObject *r;

        if (e->kind == PE_EV_FD) {
            if (want_fds && append_fd(&fds, e) < 0)
                goto fail;
            continue;
        }
        if (e->kind == PE_EV_WAKEUP)
            continue;           /* call_soon_threadsafe: the wait returned */
        if (e->kind == PE_EV_DATA) {
            PyObject *t, *w;
            int rc;

            t = pe_py_conn_of(conns, e->handle);
            if (!t)
                continue;                       /* closed meanwhile */
            Py_INCREF(t);
            w = get_w(t);
            if (!w) {
                Py_DECREF(t);
                goto fail;
            }
            if (Py_TYPE(w) == conn_type && ((Conn *)w)->mode != MODE_SLOW &&
                e->off + e->arg <= b->buflen) {
                rc = deliver(loop, t, (Conn *)w, e, b->buf + e->off);
                Py_DECREF(w);
                Py_DECREF(t);
                if (rc < 0)
                    goto fail;
                continue;
            }
            Py_DECREF(w);
            Py_DECREF(t);
        }
        r = PyObject_CallMethod(loop, "_event", "KKKK",
                                (unsigned long long)e->kind,
                                (unsigned long long)e->handle,
                                (unsigned long long)e->arg,
                                (unsigned long long)e->off);
        if (!r)
            goto fail;
        Py_DECREF(r);
    }
    if (!fds)
        Py_RETURN_NONE;
    return fds;
fail:
    Py_XDECREF(fds);
    return NULL;
}

static PyObject *batch_select(PyObject *self, PyObject *timeout);

int pe_py_loop_known(PyObject *loop)
{
    return current && current->loop == loop && current->l;
}

PyObject *pe_py_loop_select(PyObject *timeout)
{
    return batch_select((PyObject *)current, timeout);
}

static PyObject *batch_walk(PyObject *self, PyObject *args)
{
    PyObject *loop, *conns;
    int want_fds;

    if (!PyArg_ParseTuple(args, "OO!p", &loop, pe_py_conn_map_type, &conns,
                          &want_fds))
        return NULL;
    return walk((Batch *)self, loop, conns, want_fds);
}

#define MS_MAX 0x7FFFFFFF

/* select(timeout) -> None, [(fd, bits)] or an int: the common iteration
 * of EventLoop._select in one call.  The timeout in seconds (None: block)
 * becomes milliseconds rounded up; the wait runs; when the loop's ready
 * queue is empty the batch is walked here (None: no fd events, or nothing
 * came: the common wait of 0 ms between callbacks needs no Python).  An
 * int is for the Python side: the wait's -errno, or the count of a batch
 * left for later (callbacks were ready before it). */
static PyObject *batch_select(PyObject *self, PyObject *timeout)
{
    Batch *b = (Batch *)self;
    PyObject *loop, *conns, *r;
    Py_ssize_t queued;
    int ms, n;

    if (!b->l)
        return PyLong_FromLong(-EBADF);         /* detached */
    if (!b->loop) {
        PyErr_SetString(PyExc_RuntimeError, "Batch.select before bind()");
        return NULL;
    }
    current = b;
    if (timeout == Py_None) {
        ms = -1;
    } else {
        double t = PyFloat_AsDouble(timeout), x;

        if (t == -1.0 && PyErr_Occurred())
            return NULL;
        if (t != t) {
            PyErr_SetString(PyExc_ValueError,
                            "cannot convert float NaN to integer");
            return NULL;
        }
        if (t <= 0) {
            ms = 0;
        } else {
            /* Rounded up: a timer due in 0.3 ms must not spin at 0 ms. */
            x = t * 1000.0;
            if (x >= (double)MS_MAX) {
                ms = MS_MAX;
            } else {
                ms = (int)x;
                if ((double)ms < x)
                    ms++;
            }
        }
    }
    PE_PY_WAIT(n, ms, core_run_into(b->l, NULL, 0, b->ev, b->max, ms, b->buf,
                                    b->buflen));
    b->n = n > 0 ? n : 0;
    b->pos = 0;
    if (n == 0)
        Py_RETURN_NONE;     /* nothing came: as an empty walk */
    if (n < 0)
        return PyLong_FromLong(n);
    queued = PyObject_Size(b->ready);
    if (queued < 0)
        return NULL;
    if (queued)
        return PyLong_FromLong(n);
    /* The walk's callbacks may close the loop (detach clears these). */
    loop = b->loop;
    conns = b->conns;
    Py_INCREF(loop);
    Py_INCREF(conns);
    r = walk(b, loop, conns, 1);
    Py_DECREF(loop);
    Py_DECREF(conns);
    return r;
}

/* -------------------------------------------------------- transport.write */

/* CTransport.write(data) as a method of the class (write_method()): a
 * bytes or bytearray written on a live, writable connection goes to
 * pe_loop_write here, without a Python frame and with the GIL held (the
 * send does not block).  Everything else is CTransport._write_py's. */
static PyObject *transport_write(PyObject *self, PyObject *data)
{
    PyObject *w;
    pe_buffer view;
    int held = 0;
    const char *p;
    Py_ssize_t len;
    long long high;
    int64_t rc;
    Conn *c;

    w = get_w(self);
    if (!w)
        return NULL;
    c = (Conn *)w;
    if (Py_TYPE(w) != conn_type || !c->h || !c->batch || !c->batch->l)
        goto python;
    if (PyBytes_CheckExact(data)) {
        p = PyBytes_AsString(data);
        len = PyBytes_Size(data);
    } else if (PyByteArray_CheckExact(data)) {
        p = PyByteArray_AsString(data);
        len = PyByteArray_Size(data);
    } else if (PyMemoryView_Check(data)) {
        /* Its bytes in place when C-contiguous; a strided or released
         * view goes the Python way, which says what is wrong. */
        if (pe_get_buffer(data, &view, PyBUF_SIMPLE) < 0) {
            if (!PyErr_ExceptionMatches(PyExc_Exception)) {
                Py_DECREF(w);
                return NULL;
            }
            PyErr_Clear();
            goto python;
        }
        if (view.len > COPY_MAX) {
            pe_release_buffer(&view);
            goto python;
        }
        held = 1;
        p = view.buf;
        len = view.len;
    } else {
        goto python;
    }
    /* The core copies what the socket does not take now. */
    rc = len ? core_write(c->batch->l, c->h, p, (size_t)len) : 0;
    high = c->high;
    if (held)
        pe_release_buffer(&view);
    Py_DECREF(w);
    if (rc > high)
        return PyObject_CallMethodObjArgs(self, s_maybe_pause, NULL);
    if (rc < 0) {
        PyObject *r, *code = PyLong_FromLongLong(rc);
        if (!code)
            return NULL;
        r = PyObject_CallMethodObjArgs(self, s_write_failed, code, NULL);
        Py_DECREF(code);
        return r;
    }
    Py_RETURN_NONE;
python:
    Py_DECREF(w);
    return PyObject_CallMethodObjArgs(self, s_write_py, data, NULL);
}

static PyMethodDef write_def = {
    "write", transport_write, METH_O,
    "Write data to the transport (bytes-like); see asyncio's WriteTransport."
};

/* write_method(cls) -> a method descriptor of cls running transport_write */
static PyObject *write_method(PyObject *module, PyObject *cls)
{
    PyObject *descr, *old;
    descrgetfunc g;

    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "write_method() needs a class");
        return NULL;
    }
    /* The class's `_w` slot, read without a getattr by the walk and by
     * write(). */
    descr = PyObject_GetAttr(cls, s_w);
    if (!descr)
        return NULL;
    g = (descrgetfunc)PyType_GetSlot(Py_TYPE(descr), Py_tp_descr_get);
    PyErr_Clear();              /* 3.9: no slots of a static type */
    w_get = NULL;               /* getattr until the new one is kept */
    old = w_descr;
    w_descr = descr;            /* the reference GetAttr gave */
    Py_XDECREF(old);
    w_get = g;
    return PyDescr_NewMethod((PyTypeObject *)cls, &write_def);
}

/* init(run_into_address, write_address): the core's entry points. */
static PyObject *init(PyObject *module, PyObject *args)
{
    unsigned long long run_into, write;

    if (!PyArg_ParseTuple(args, "KK", &run_into, &write))
        return NULL;
    if (!run_into || !write) {
        PyErr_SetString(PyExc_ValueError, "init: null function address");
        return NULL;
    }
    core_run_into = (run_into_fn)(uintptr_t)run_into;
    core_write = (write_fn)(uintptr_t)write;
    Py_RETURN_NONE;
}

/* ----------------------------------------------------------------- module */

static PyMethodDef batch_methods[] = {
    {"bind", batch_bind, METH_VARARGS, "bind(loop, conns, ready)"},
    {"select", batch_select, METH_O,
     "select(timeout) -> None, [(fd, bits)], or an int for the caller"},
    {"walk", batch_walk, METH_VARARGS,
     "walk(loop, conns, want_fds) -> [(fd, bits)] or None"},
    {"fd_events", batch_fd_events, METH_NOARGS,
     "fd_events() -> [(fd, bits)] of the last batch"},
    {"detach", batch_detach, METH_NOARGS,
     "forget the C loop: it is being freed (or is the parent's)"},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot batch_slots[] = {
    {Py_tp_new, batch_new},
    {Py_tp_dealloc, batch_dealloc},
    {Py_tp_traverse, batch_traverse},
    {Py_tp_clear, batch_clear},
    {Py_tp_methods, batch_methods},
    {Py_tp_doc, "Batch(loop, events, max, buf, buflen, owners): "
                "an EventLoop's C loop and batch buffers (addresses)"},
    {0, NULL},
};

static PyType_Spec batch_spec = {
    "pyepoll._speedups.Batch", sizeof(Batch), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, batch_slots,
};

static PyMethodDef conn_methods[] = {
    {"set", conn_set, METH_VARARGS, "set(h, high, mode, cb1, cb2)"},
    {"state", conn_state, METH_NOARGS, "state() -> (h, high, mode)"},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot conn_slots[] = {
    {Py_tp_new, conn_new},
    {Py_tp_dealloc, conn_dealloc},
    {Py_tp_traverse, conn_traverse},
    {Py_tp_clear, conn_clear},
    {Py_tp_methods, conn_methods},
    {Py_tp_doc, "Conn(batch): a CTransport's state for the C paths"},
    {0, NULL},
};

static PyType_Spec conn_spec = {
    "pyepoll._speedups.Conn", sizeof(Conn), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, conn_slots,
};

static PyMethodDef module_methods[] = {
    {"init", init, METH_VARARGS, "init(run_into_address, write_address)"},
    {"write_method", write_method, METH_O,
     "write_method(cls) -> CTransport.write in C, as a method of cls"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "pyepoll._speedups",
    "The asyncio loop's hot path in C (CPython only; see csrc/cpython/).",
    -1, module_methods, NULL, NULL, NULL, NULL,
};

static int intern(PyObject **slot, const char *name)
{
    *slot = PyUnicode_InternFromString(name);
    return *slot ? 0 : -1;
}

PyMODINIT_FUNC PyInit__speedups(void)
{
    PyObject *m;

    if (intern(&s_w, "_w") < 0 ||
        intern(&s_event, "_event") < 0 ||
        intern(&s_feed_at, "_feed_at") < 0 ||
        intern(&s_fatal_error, "_fatal_error") < 0 ||
        intern(&s_write_py, "_write_py") < 0 ||
        intern(&s_maybe_pause, "_maybe_pause_protocol") < 0 ||
        intern(&s_write_failed, "_write_failed") < 0)
        return NULL;
    m = PyModule_Create(&module_def);
    if (!m)
        return NULL;
    batch_type = (PyTypeObject *)PyType_FromSpec(&batch_spec);
    conn_type = (PyTypeObject *)PyType_FromSpec(&conn_spec);
    if (!batch_type || !conn_type ||
        PyModule_AddObject(m, "Batch", (Py_INCREF(batch_type),
                                        (PyObject *)batch_type)) < 0 ||
        PyModule_AddObject(m, "Conn", (Py_INCREF(conn_type),
                                       (PyObject *)conn_type)) < 0 ||
        pe_py_add_loop(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    if (pe_py_add_conn_map(m) < 0 || pe_py_add_iter(m) < 0 ||
        pe_py_add_methods(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

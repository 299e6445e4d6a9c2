/*
 * loop_calls.c - pyepoll.Loop's hot calls in C (CPython only): wait,
 * recv, wait_batch, wait_batch_echo, send and reply of one Loop, as the
 * Python code in pyepoll/loop.py does them in their common case (issue 15:
 * cffi's argument conversion and the GIL release of a non-blocking call
 * were ~1,000 instructions a wakeup; wait_batch_echo keeps a quiet echo
 * server's round trips out of Python altogether).
 *
 * One LoopCalls per Loop.  It calls the core's guarded entry points
 * (csrc/loop/loop_guard.c) through addresses cffi handed over, on the
 * buffers Loop._batch_init allocated with cffi (`owners` keeps them and
 * the C loop's cffi owner alive: the struct is freed only with the last
 * reference to that owner, so a Loop closed by another thread while a
 * call is inside leaves memory the core answers -EBADF from).
 *
 * Anything unusual goes back to the Python code, which stays the one
 * implementation of the semantics and of every message: a closed or
 * forked loop (detach()), a queued echo before wait/send/reply, keyword
 * arguments, arguments that are not plain ints or bytes/bytearray, a wait
 * that returned nothing or an error (EINTR runs the signal handlers
 * there), a recv that filled its buffer, and any failed call.
 */
#include "speedups.h"

#include <structmember.h>

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <time.h>

typedef int (*run_fn)(pe_loop *, struct pe_loop_event *, int, int);
typedef int64_t (*read_fn)(pe_loop *, pe_handle, void *, size_t);
typedef int (*run_batch_fn)(pe_loop *, int, int, unsigned);
typedef int64_t (*send_fn)(pe_loop *, pe_handle, const void *, size_t);
typedef int64_t (*reply_fn)(pe_loop *, pe_handle, uint32_t, uint32_t);
typedef int (*unget_fn)(pe_loop *, const struct pe_loop_event *, int);

/* The Python fallbacks (loop.py), each called with the Loop first. */
enum {
    PY_WAIT_BATCH,      /* (loop, timeout): the whole Python wait_batch */
    PY_BATCH_TAIL,      /* (loop, n, ms, start): after the run */
    PY_SEND,            /* (loop, h, data): the whole Python send */
    PY_SEND_FAILED,     /* (loop, h, rc) */
    PY_REPLY,           /* (loop, h, offset, length): the whole reply */
    PY_REPLY_FAILED,    /* (loop, h, rc, offset, length) */
    PY_TIMEOUT_MS,      /* (timeout) -> ms */
    PY_MONOTONIC,       /* () -> seconds */
    PY_WAIT,            /* (loop, timeout): the whole Python wait */
    PY_WAIT_TAIL,       /* (loop, n, ms, start): after the run */
    PY_RECV,            /* (loop, h, max): the whole Python recv */
    PY_RECV_REST,       /* (loop, h, head): the buffer filled up */
    PY_RECV_FAILED,     /* (loop, rc) */
    PY_WAIT_ECHO,       /* (loop, timeout): the whole wait_batch_echo */
    PY_SERVE_FAILED,    /* (loop, exc, h): a handler of serve raised */
    PY_CLOSE,           /* (loop, h): Loop.close_connection */
    PY_SERVE_REPLY,     /* (loop, h, reply): the whole reply of serve */
    PY_SERVE_LOST,      /* (loop, n, rc): events could not be put back */
    PY_N
};

typedef struct {
    PyObject_HEAD
    pe_loop *l;                 /* NULL after detach(): Python decides */
    pe_handle *eq;              /* the batch buffers; NULL before setup() */
    int cap;                    /* events and echo handles they hold */
    struct pe_loop_bevent *ev;
    struct pe_loop_event *wev;  /* wait's events: Loop._ev, wcap of them */
    int wcap;
    char *rbuf;                 /* recv's buffer: Loop._rbuf, rsize bytes */
    size_t rsize;
    run_fn run;
    read_fn read;
    /* The int of the handle wait last reported, and its value: a quiet
     * server's next wait reports the same connection, and its recv and
     * send get that int back, so neither converts (~170 instructions a
     * round trip at one connection). */
    PyObject *last_obj;
    pe_handle last_h;
    /* The list wait last returned, refilled by the next wait when this is
     * its only reference (the caller dropped it: nobody can see it
     * change), and the event tuple it last held with that event's values,
     * returned again for the same event (a tuple cannot change).  A quiet
     * server's wait then allocates nothing (~550 instructions a round
     * trip at one connection, list and tuple made and freed). */
    PyObject *wlist;
    PyObject *last_ev;
    uint64_t last_ev_kind, last_ev_arg;
    pe_handle last_ev_h;
    /* wait_batch's tuple (kind, handle, arg, off) last made, kept the
     * same way (a tuple and an int made and freed per event, ~100
     * instructions each round trip). */
    PyObject *last_bev;
    struct pe_loop_bevent last_bev_is;
    run_batch_fn run_batch;
    send_fn send;
    reply_fn reply;
    unget_fn unget;
    PyObject *loop_ref;         /* a weak reference: no cycle via the Loop */
    PyObject *echoq;            /* Loop._echoq (the array queue_echo fills) */
    int echoq_is_array;         /* exactly an array.array: see echoes_queued */
    PyObject *owners;           /* cffi objects that own l and the buffers */
    int stopping;               /* Loop.stop() came: serve returns */
    /* Loop.wake_on_signals is on: every signal wakes the C loop, so runs
     * that need no Python may follow each other without the GIL (see
     * run_batch). */
    int sigwake;
    /* serve's (h, data) for on_data, filled again for the next message
     * when nobody else kept it: PyObject_Call on a tuple is ~70
     * instructions less than PyObject_CallFunctionObjArgs, which
     * counts and copies its varargs each call. */
    PyObject *data_args;
    PyObject *py[PY_N];
} LoopCalls;

static PyTypeObject *loop_calls_type;

/* Whether o is exactly an array.array: 1, 0, or -1 with an exception. */
static int is_array(PyObject *o)
{
    PyObject *mod = PyImport_ImportModule("array"), *type;
    int r;

    if (!mod)
        return -1;
    type = PyObject_GetAttrString(mod, "array");
    Py_DECREF(mod);
    if (!type)
        return -1;
    r = (PyObject *)Py_TYPE(o) == type;
    Py_DECREF(type);
    return r;
}

/* How many handles Loop._echoq holds (queue_echo appends them), or -1
 * with an exception.  An array.array keeps its length in ob_size (its
 * sq_length returns just that): read there, not through PyObject_Size,
 * which wait and send both ask (~30 instructions a round trip). */
static Py_ssize_t echoes_queued(LoopCalls *c)
{
    return c->echoq_is_array ? Py_SIZE(c->echoq) : PyObject_Size(c->echoq);
}

/* LoopCalls(loop, l, owner, echoq, (run_batch, send, reply, run, read,
 *                                   unget),
 *           fallbacks, (ev, batch, rbuf, rsize, owners)) */
static PyObject *lc_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    PyObject *loop, *owner, *echoq, *fallbacks, *bufowners;
    unsigned long long l, run_batch, send, reply, run, read, unget, wev, rbuf,
        rsize;
    LoopCalls *c;
    int i, wcap;

    if (kw && PyDict_Size(kw)) {
        PyErr_SetString(PyExc_TypeError,
                        "LoopCalls() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OKOO(KKKKKK)O!(KiKKO)", &loop, &l, &owner,
                          &echoq, &run_batch, &send, &reply, &run, &read,
                          &unget, &PyTuple_Type, &fallbacks, &wev, &wcap,
                          &rbuf, &rsize, &bufowners))
        return NULL;
    if (!l || !run_batch || !send || !reply || !run || !read || !unget ||
        !wev ||
        wcap <= 0 || !rbuf || !rsize || PyTuple_Size(fallbacks) != PY_N) {
        PyErr_SetString(PyExc_ValueError,
                        "LoopCalls: null address or wrong fallbacks");
        return NULL;
    }
    c = (LoopCalls *)PyType_GenericAlloc(type, 0);
    if (!c)
        return NULL;
    c->loop_ref = PyWeakref_NewRef(loop, NULL);
    if (!c->loop_ref) {
        Py_DECREF(c);
        return NULL;
    }
    c->l = (pe_loop *)(uintptr_t)l;
    c->run_batch = (run_batch_fn)(uintptr_t)run_batch;
    c->send = (send_fn)(uintptr_t)send;
    c->reply = (reply_fn)(uintptr_t)reply;
    c->run = (run_fn)(uintptr_t)run;
    c->read = (read_fn)(uintptr_t)read;
    c->unget = (unget_fn)(uintptr_t)unget;
    c->wev = (struct pe_loop_event *)(uintptr_t)wev;
    c->wcap = wcap;
    c->rbuf = (char *)(uintptr_t)rbuf;
    c->rsize = (size_t)rsize;
    Py_INCREF(echoq);
    c->echoq = echoq;
    if ((c->echoq_is_array = is_array(echoq)) < 0) {
        Py_DECREF(c);
        return NULL;
    }
    c->owners = PyList_New(0);
    if (!c->owners || PyList_Append(c->owners, owner) < 0 ||
        PyList_Append(c->owners, bufowners) < 0) {
        Py_DECREF(c);
        return NULL;
    }
    for (i = 0; i < PY_N; i++) {
        c->py[i] = PyTuple_GetItem(fallbacks, i);
        Py_INCREF(c->py[i]);
    }
    return (PyObject *)c;
}

static int lc_traverse(PyObject *self, visitproc visit, void *arg)
{
    LoopCalls *c = (LoopCalls *)self;
    int i;

    Py_VISIT(Py_TYPE(self));
    Py_VISIT(c->loop_ref);
    Py_VISIT(c->echoq);
    Py_VISIT(c->owners);
    Py_VISIT(c->wlist);
    Py_VISIT(c->last_ev);
    Py_VISIT(c->last_bev);
    Py_VISIT(c->data_args);
    for (i = 0; i < PY_N; i++)
        Py_VISIT(c->py[i]);
    return 0;
}

static int lc_clear(PyObject *self)
{
    LoopCalls *c = (LoopCalls *)self;
    int i;

    c->l = NULL;
    c->eq = NULL;
    Py_CLEAR(c->last_obj);
    Py_CLEAR(c->wlist);
    Py_CLEAR(c->last_ev);
    Py_CLEAR(c->last_bev);
    Py_CLEAR(c->data_args);
    Py_CLEAR(c->loop_ref);
    Py_CLEAR(c->echoq);
    Py_CLEAR(c->owners);
    for (i = 0; i < PY_N; i++)
        Py_CLEAR(c->py[i]);
    return 0;
}

static void lc_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    lc_clear(self);
    ((freefunc)PyType_GetSlot(tp, Py_tp_free))(self);
    Py_DECREF(tp);
}

/* setup(eq, ev, cap, owners): the buffers Loop._batch_init named to
 * pe_loop_batch_setup (cap handles and cap events). */
static PyObject *lc_setup(PyObject *self, PyObject *args)
{
    LoopCalls *c = (LoopCalls *)self;
    unsigned long long eq, ev;
    int cap;
    PyObject *owners;

    if (!PyArg_ParseTuple(args, "KKiO", &eq, &ev, &cap, &owners))
        return NULL;
    if (!eq || !ev || cap <= 0) {
        PyErr_SetString(PyExc_ValueError, "setup: null buffer or cap <= 0");
        return NULL;
    }
    if (!c->owners || PyList_Append(c->owners, owners) < 0)
        return NULL;
    c->eq = (pe_handle *)(uintptr_t)eq;
    c->ev = (struct pe_loop_bevent *)(uintptr_t)ev;
    c->cap = cap;
    Py_RETURN_NONE;
}

/* detach(): the Loop closed or this is a forked child; every call goes the
 * Python way from now on (it raises what the Loop raises). */
static PyObject *lc_detach(PyObject *self, PyObject *unused)
{
    ((LoopCalls *)self)->l = NULL;
    Py_RETURN_NONE;
}

/* A fallback called with the Loop first; NULL if the Loop is gone (a
 * bound method outliving it), as calling its Python method would not. */
static PyObject *fallback(LoopCalls *c, int which, PyObject *a, PyObject *b,
                          PyObject *d, PyObject *e)
{
    PyObject *loop = c->loop_ref ? PyWeakref_GetObject(c->loop_ref) : NULL;
    PyObject *fn = c->py[which], *r;

    if (!loop || loop == Py_None || !fn) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ReferenceError, "the Loop is gone");
        return NULL;
    }
    Py_INCREF(loop);
    Py_INCREF(fn);
    r = PyObject_CallFunctionObjArgs(fn, loop, a, b, d, e, NULL);
    Py_DECREF(fn);
    Py_DECREF(loop);
    return r;
}

static PyObject *lc_send_impl(PyObject *, PyObject *const *, Py_ssize_t);
static PyObject *lc_reply_impl(PyObject *, PyObject *const *, Py_ssize_t);

/* Keywords or odd arguments: the Python method, called as given. */
static PyObject *whole_python(LoopCalls *c, int which, PyObject *const *args,
                              Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *loop = c->loop_ref ? PyWeakref_GetObject(c->loop_ref) : NULL;
    PyObject *full, *kw = NULL, *r = NULL;
    Py_ssize_t i, nkw = kwnames ? PyTuple_Size(kwnames) : 0;

    if (!loop || loop == Py_None || !c->py[which]) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ReferenceError, "the Loop is gone");
        return NULL;
    }
    if (!(full = PyTuple_New(nargs + 1)))
        return NULL;
    Py_INCREF(loop);
    PyTuple_SetItem(full, 0, loop);
    for (i = 0; i < nargs; i++) {
        Py_INCREF(args[i]);
        PyTuple_SetItem(full, i + 1, args[i]);
    }
    if (nkw) {
        if (!(kw = PyDict_New()))
            goto done;
        for (i = 0; i < nkw; i++)
            if (PyDict_SetItem(kw, PyTuple_GetItem(kwnames, i),
                               args[nargs + i]) < 0)
                goto done;
    }
    r = PyObject_Call(c->py[which], full, kw);
done:
    Py_XDECREF(kw);
    Py_DECREF(full);
    return r;
}

/* 64-bit unsigned long (LP64): CPython converts it with a digit loop, an
 * unsigned long long through the generic byte-array path. */
#if ULONG_MAX >= UINT64_MAX
#define U64_FROM(v) PyLong_FromUnsignedLong((unsigned long)(v))
#define U64_AS(o) PyLong_AsUnsignedLong(o)
#else
#define U64_FROM(v) PyLong_FromUnsignedLongLong((unsigned long long)(v))
#define U64_AS(o) PyLong_AsUnsignedLongLong(o)
#endif

/* A new reference to an int of value h: the cached one (last_obj) when
 * it is that value, else a new one, which becomes the cached one. */
static PyObject *handle_obj(LoopCalls *c, pe_handle h)
{
    PyObject *o;

    if (c->last_obj && c->last_h == h) {
        Py_INCREF(c->last_obj);
        return c->last_obj;
    }
    if (!(o = U64_FROM(h)))
        return NULL;
    Py_INCREF(o);
    Py_XDECREF(c->last_obj);
    c->last_obj = o;
    c->last_h = h;
    return o;
}

/* An event as a tuple: (kind, handle, arg) for wait, n == 3, or (kind,
 * handle, arg, off) for wait_batch, n == 4. */
static PyObject *event_obj(LoopCalls *c, int n, uint64_t kind, pe_handle h,
                           uint64_t arg, uint64_t off)
{
    PyObject *t = PyTuple_New(n), *v[4];
    int i;

    if (!t)
        return NULL;
    v[0] = U64_FROM(kind);
    v[1] = handle_obj(c, h);
    v[2] = U64_FROM(arg);
    v[3] = n == 4 ? U64_FROM(off) : NULL;
    for (i = 0; i < n; i++) {
        if (!v[i]) {
            for (; i < n; i++)
                Py_XDECREF(v[i]);
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SetItem(t, i, v[i]);            /* steals v[i] */
    }
    return t;
}

/* A new reference to wait's tuple (kind, handle, arg) for event e: the
 * one last made when e is that event again, else a new one, which
 * becomes the kept one. */
static PyObject *wait_event_obj(LoopCalls *c, const struct pe_loop_event *e)
{
    PyObject *t;

    if (c->last_ev && c->last_ev_kind == e->kind && c->last_ev_h ==
        e->handle && c->last_ev_arg == e->arg) {
        Py_INCREF(c->last_ev);
        return c->last_ev;
    }
    if (!(t = event_obj(c, 3, e->kind, e->handle, e->arg, 0)))
        return NULL;
    Py_INCREF(t);
    Py_XDECREF(c->last_ev);             /* a tuple of ints: no __del__ */
    c->last_ev = t;
    c->last_ev_kind = e->kind;
    c->last_ev_h = e->handle;
    c->last_ev_arg = e->arg;
    return t;
}

/* A new reference to wait_batch's tuple (kind, handle, arg, off) for
 * event b, kept as wait_event_obj keeps wait's. */
static PyObject *batch_event_obj(LoopCalls *c, const struct pe_loop_bevent *b)
{
    const struct pe_loop_bevent *k = &c->last_bev_is;
    PyObject *t;

    if (c->last_bev && k->kind == b->kind && k->handle == b->handle &&
        k->arg == b->arg && k->off == b->off) {
        Py_INCREF(c->last_bev);
        return c->last_bev;
    }
    if (!(t = event_obj(c, 4, b->kind, b->handle, b->arg, b->off)))
        return NULL;
    Py_INCREF(t);
    Py_XDECREF(c->last_bev);            /* a tuple of ints: no __del__ */
    c->last_bev = t;
    c->last_bev_is = *b;
    return t;
}

/* Whether o is a tuple of exact ints, as wait makes them: dropping it
 * runs no Python code. */
static int int_tuple(PyObject *o)
{
    Py_ssize_t i, n;

    if (!PyTuple_CheckExact(o))
        return 0;
    n = PyTuple_Size(o);
    for (i = 0; i < n; i++)
        if (!PyLong_CheckExact(PyTuple_GetItem(o, i)))
            return 0;
    return 1;
}

/* The list wait returned last, taken out of c, when nobody else holds
 * it (else NULL), for wait_list to refill, with its length and its first
 * item (borrowed; NULL if none), so wait_list need not ask again: nobody
 * can change a list only this call holds.  Taken before the run, as
 * whatever the caller put in it is dropped here: a __del__ that calls
 * wait must neither get this list nor run between the run and the
 * events it left in c->wev being read.  -1 with an exception. */
static int take_wlist(LoopCalls *c, PyObject **out, Py_ssize_t *len,
                      PyObject **first)
{
    PyObject *list = c->wlist;
    Py_ssize_t i, n;

    *out = *first = NULL;
    *len = 0;
    if (!list || Py_REFCNT(list) != 1)
        return 0;
    c->wlist = NULL;
    n = PyList_Size(list);
    for (i = 0; i < n; i++) {
        PyObject *t = PyList_GetItem(list, i);

        if (t != c->last_ev && !int_tuple(t)) {
            if (PyList_SetSlice(list, 0, n, NULL) < 0) {
                Py_DECREF(list);
                return -1;
            }
            n = 0;
            break;
        }
        if (i == 0)
            *first = t;
    }
    *out = list;
    *len = n;
    if (n == 0)
        *first = NULL;
    return 0;
}

/* A list take_wlist took that wait does not return: kept again (its
 * items are wait's tuples, dropping it runs no Python code). */
static void keep_wlist(LoopCalls *c, PyObject *list)
{
    if (list && !c->wlist)
        c->wlist = list;
    else
        Py_XDECREF(list);
}

/* wait's n events as the list of (kind, handle, arg) it returns: list
 * (take_wlist's, of length have, first its first item), resized, or if
 * NULL a new one; kept for the next wait. */
static PyObject *wait_list(LoopCalls *c, int n, PyObject *list,
                           Py_ssize_t have, PyObject *first)
{
    Py_ssize_t i;

    if (list) {
        if (have > n && PyList_SetSlice(list, n, have, NULL) < 0)
            goto fail;
    } else if (!(list = PyList_New(n))) {
        return NULL;
    } else {
        have = n;                       /* n NULL items, each set below */
        first = NULL;
    }
    for (i = 0; i < n; i++) {
        PyObject *t = wait_event_obj(c, &c->wev[i]);

        if (!t)
            goto fail;
        if (i >= have) {
            if (PyList_Append(list, t) < 0) {
                Py_DECREF(t);
                goto fail;
            }
            Py_DECREF(t);
        } else if ((i == 0 ? first : PyList_GetItem(list, i)) == t) {
            Py_DECREF(t);               /* already there */
        } else {
            PyList_SetItem(list, i, t); /* steals t, drops the old item */
        }
    }
    Py_INCREF(list);
    keep_wlist(c, list);
    return list;
fail:
    Py_DECREF(list);
    return NULL;
}

/* The handle in h as the uint64 value the core takes; the int wait last
 * reported is known without a conversion.  -1 with an exception set for
 * what is not an int in [0, 2**64). */
static int handle_of(LoopCalls *c, PyObject *h, pe_handle *out)
{
    unsigned long long v;

    if (h == c->last_obj) {
        *out = c->last_h;
        return 0;
    }
    v = U64_AS(h);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *out = (pe_handle)v;
    return 0;
}

/* The batch's n events as an iterator of (kind, handle, arg, offset). */
static PyObject *events(LoopCalls *c, int n)
{
    PyObject *t = PyTuple_New(n), *it;
    int i;

    if (!t)
        return NULL;
    for (i = 0; i < n; i++) {
        PyObject *e = batch_event_obj(c, &c->ev[i]);

        if (!e) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SetItem(t, i, e);               /* steals e */
    }
    it = PyObject_GetIter(t);
    Py_DECREF(t);
    return it;
}

/* The queued echoes (Loop._echoq) moved into eq, as the Python code moves
 * them: how many, or -1 with an exception. */
static int take_echoes(LoopCalls *c, Py_ssize_t nq)
{
    Py_ssize_t i;

    for (i = 0; i < nq; i++) {
        PyObject *h = PySequence_GetItem(c->echoq, i);
        uint64_t v;

        if (!h)
            return -1;
        v = U64_AS(h);
        Py_DECREF(h);
        if (v == (uint64_t)-1 && PyErr_Occurred())
            return -1;
        c->eq[i] = (pe_handle)v;
    }
    if (PySequence_DelSlice(c->echoq, 0, nq) < 0)
        return -1;
    return (int)nq;
}

/* Seconds on CLOCK_MONOTONIC: a wait's own deadline is kept on it, with
 * no call into Python (time.monotonic() was ~280 instructions a wait).
 * Only differences of it are used: the Python code's deadlines stay on
 * time.monotonic(). */
static double mono_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* The timeout as wait and wait_batch convert it (timeout_to_ms): *ms (-1:
 * none) and, for a positive one, *t0 (mono_now()).  0, or -1 with an
 * exception. */
static int timeout_ms(LoopCalls *c, PyObject *timeout, int *ms, double *t0)
{
    PyObject *m;
    long v;

    *t0 = 0.0;
    if (timeout == Py_None) {
        *ms = -1;
        return 0;
    }
    if (!(m = PyObject_CallFunctionObjArgs(c->py[PY_TIMEOUT_MS], timeout,
                                           NULL)))
        return -1;
    v = PyLong_AsLong(m);
    Py_DECREF(m);
    if (v == -1 && PyErr_Occurred())
        return -1;
    *ms = (int)v;
    if (*ms > 0)
        *t0 = mono_now();
    return 0;
}

/* After a run that returned nothing, an error, or that close() came
 * during: the Python tail `which` (it waits on, runs signal handlers,
 * raises, closes the owned sockets), given the wait's whole timeout ms
 * and, when ms > 0, its start t0 rebased onto time.monotonic()'s scale. */
static PyObject *wait_tail(LoopCalls *c, int which, int n, int ms, double t0)
{
    PyObject *pn, *pms, *pstart, *r = NULL;
    double start = 0.0;

    if (ms > 0) {
        PyObject *t = PyObject_CallObject(c->py[PY_MONOTONIC], NULL);

        if (!t)
            return NULL;
        start = PyFloat_AsDouble(t) - (mono_now() - t0);
        Py_DECREF(t);
        if (PyErr_Occurred())
            return NULL;
    }
    pn = PyLong_FromLong(n);
    pms = PyLong_FromLong(ms);
    pstart = PyFloat_FromDouble(start);
    if (pn && pms && pstart)
        r = fallback(c, which, pn, pms, pstart, NULL);
    Py_XDECREF(pn);
    Py_XDECREF(pms);
    Py_XDECREF(pstart);
    return r;
}

/* wait(timeout=None): Loop.wait. */
static PyObject *lc_wait(PyObject *self, PyObject *const *args,
                         Py_ssize_t nargs, PyObject *kwnames)
{
    LoopCalls *c = (LoopCalls *)self;
    PyObject *list, *first;
    double t0;
    Py_ssize_t nq, have;
    pe_loop *l;
    int ms, n;

    if (kwnames || nargs > 1 || c->l == NULL ||
        (nq = echoes_queued(c)) != 0)   /* echoes go out first */
        return PyErr_Occurred() ? NULL
               : whole_python(c, PY_WAIT, args, nargs, kwnames);
    if (nargs == 0 || args[0] == Py_None) {
        ms = -1;                    /* wait(): no call to convert it */
        t0 = 0.0;
    } else if (timeout_ms(c, args[0], &ms, &t0) < 0) {
        return NULL;
    }
    if (take_wlist(c, &list, &have, &first) < 0)
        return NULL;
    if ((l = c->l) == NULL) {       /* the timeout's __index__ closed it */
        keep_wlist(c, list);
        return whole_python(c, PY_WAIT, args, nargs, kwnames);
    }
    PE_PY_WAIT(n, ms, c->run(l, c->wev, c->wcap, ms));
    if (c->l == NULL || (n <= 0 && (n || ms))) {
        keep_wlist(c, list);
        return wait_tail(c, PY_WAIT_TAIL, n, ms, t0);
    }
    return wait_list(c, n, list, have, first);
}

/* recv(h, max=-1): Loop.recv, the GIL held (a copy out of the ring). */
static PyObject *lc_recv(PyObject *self, PyObject *const *args,
                         Py_ssize_t nargs, PyObject *kwnames)
{
    LoopCalls *c = (LoopCalls *)self;
    pe_handle h;
    long long max = -1;
    size_t size;
    int64_t n;
    PyObject *b, *r;

    if (kwnames || nargs < 1 || nargs > 2 || c->l == NULL ||
        !PyLong_Check(args[0]) || (nargs == 2 && !PyLong_Check(args[1])))
        return whole_python(c, PY_RECV, args, nargs, kwnames);
    if (handle_of(c, args[0], &h) < 0) {
        PyErr_Clear();                  /* Python raises its own error */
        return whole_python(c, PY_RECV, args, nargs, kwnames);
    }
    if (nargs == 2) {
        int overflow;

        max = PyLong_AsLongLongAndOverflow(args[1], &overflow);
        if (max == -1 && PyErr_Occurred())
            return NULL;
        if (overflow)                   /* only its sign matters below */
            max = overflow > 0 ? LLONG_MAX : LLONG_MIN;
    }
    size = c->rsize;
    if (max > -1 && (unsigned long long)max < size)
        size = (size_t)max;
    n = c->read(c->l, (pe_handle)h, c->rbuf, size);
    if (n > 0) {
        if (!(b = PyBytes_FromStringAndSize(c->rbuf, (Py_ssize_t)n)))
            return NULL;
        if ((size_t)n < size || max >= 0)
            return b;
        /* The buffer filled up: more may be unread (Python reads on). */
        r = fallback(c, PY_RECV_REST, args[0], b, NULL, NULL);
        Py_DECREF(b);
        return r;
    }
    if (n < 0) {
        if (!(b = PyLong_FromLongLong(n)))
            return NULL;
        r = fallback(c, PY_RECV_FAILED, b, NULL, NULL, NULL);
        Py_DECREF(b);
        return r;
    }
    return PyBytes_FromStringAndSize(NULL, 0);
}

/* run_batch's result when a signal handler raised (the exception set). */
#define RUN_RAISED INT_MIN

/* One pe_loop_run_batch with the necho handles queued in eq, the GIL
 * released around a run that may block.  A run with no timeout that
 * returned no events (every read answered in C: canned answers, or the
 * C echo) is run again here after the signal handlers, as a wait that a
 * signal interrupted would: a signal that came while the loop was
 * answering interrupted no syscall, and must not wait for the next
 * event to be handled.  With wake_on_signals on, a signal wakes the loop
 * wherever it is, so the core repeats such runs (and, with echo, echoes
 * batches of DATA only) itself: the GIL is taken once per batch Python
 * needs, not once per round trip (~400 instructions of one, issue 15). */
static int run_batch(LoopCalls *c, int necho, int ms, int echo)
{
    unsigned flags = !c->sigwake ? 0
                     : PE_RUN_AGAIN_EMPTY | (echo ? PE_RUN_ECHO_DATA : 0);
    int n;

    for (;;) {
        pe_loop *l = c->l;

        PE_PY_WAIT(n, ms, c->run_batch(l, necho, ms, flags));
        if (n != 0 || ms >= 0 || c->l == NULL)
            return n;
        if (PyErr_CheckSignals() < 0)
            return RUN_RAISED;
        if (c->l == NULL)               /* a handler closed the loop */
            return 0;
        necho = 0;
    }
}

/* What wait_batch and wait_batch_echo do before their first run: the
 * timeout converted (*ms, *t0) and the queued echoes taken into eq
 * (*necho).  0; 1 when the Python method must do the call (a closed loop,
 * more echoes than a batch holds); -1 with an exception. */
static int batch_begin(LoopCalls *c, PyObject *timeout, int *ms, double *t0,
                       int *necho)
{
    Py_ssize_t nq;

    if (c->l == NULL || c->eq == NULL ||
        (nq = echoes_queued(c)) < 0 || nq > c->cap)
        return PyErr_Occurred() ? -1 : 1;
    if (timeout_ms(c, timeout, ms, t0) < 0)
        return -1;
    if (c->l == NULL)               /* the timeout's __index__ closed it */
        return 1;
    *necho = nq ? take_echoes(c, nq) : 0;
    return *necho < 0 ? -1 : 0;
}

/* wait_batch(timeout=None): Loop.wait_batch. */
static PyObject *lc_wait_batch(PyObject *self, PyObject *const *args,
                               Py_ssize_t nargs, PyObject *kwnames)
{
    LoopCalls *c = (LoopCalls *)self;
    PyObject *timeout = nargs > 0 ? args[0] : Py_None;
    double t0;
    int ms, necho, n, rc;

    if (kwnames)
        return whole_python(c, PY_WAIT_BATCH, args, nargs, kwnames);
    if (nargs > 1) {
        PyErr_Format(PyExc_TypeError,
                     "wait_batch() takes at most 1 argument (%zd given)",
                     nargs);
        return NULL;
    }
    if ((rc = batch_begin(c, timeout, &ms, &t0, &necho)) != 0) {
        if (rc < 0)
            return NULL;
        goto python;
    }
    if ((n = run_batch(c, necho, ms, 0)) == RUN_RAISED)
        return NULL;
    if (c->l == NULL || (n <= 0 && (n || ms)))
        return wait_tail(c, PY_BATCH_TAIL, n, ms, t0);
    return events(c, n);
python:
    if (PyErr_Occurred())
        return NULL;
    return fallback(c, PY_WAIT_BATCH, timeout, NULL, NULL, NULL);
}

/* The batch's n handles put back in Loop._echoq (queue_echo), the
 * exception being raised kept: a signal handler raised between two runs
 * of wait_batch_echo, whose echoes then go out with the next wait. */
static void requeue_echoes(LoopCalls *c, int n)
{
    PyObject *type, *value, *tb;
    int i;

    PyErr_Fetch(&type, &value, &tb);
    for (i = 0; i < n; i++) {
        PyObject *r = PyObject_CallMethod(c->echoq, "append", "K",
                                          (unsigned long long)c->ev[i].handle);
        if (!r) {
            PyErr_Clear();              /* the signal's exception wins */
            break;
        }
        Py_DECREF(r);
    }
    PyErr_Restore(type, value, tb);
}

/* wait_batch_echo(timeout=None): Loop.wait_batch_echo.  The waits and the
 * echoes of data-only batches stay in here: with one client doing round
 * trips no Python code runs per round trip (issue 15). */
static PyObject *lc_wait_batch_echo(PyObject *self, PyObject *const *args,
                                    Py_ssize_t nargs, PyObject *kwnames)
{
    LoopCalls *c = (LoopCalls *)self;
    PyObject *timeout = nargs > 0 ? args[0] : Py_None;
    double t0;
    int ms, ms0, necho, n, i, rc;

    if (kwnames)
        return whole_python(c, PY_WAIT_ECHO, args, nargs, kwnames);
    if (nargs > 1) {
        PyErr_Format(PyExc_TypeError,
                     "wait_batch_echo() takes at most 1 argument (%zd given)",
                     nargs);
        return NULL;
    }
    if ((rc = batch_begin(c, timeout, &ms, &t0, &necho)) != 0) {
        if (rc < 0)
            return NULL;
        goto python;
    }
    ms0 = ms;
    for (;;) {
        if ((n = run_batch(c, necho, ms, 1)) == RUN_RAISED)
            return NULL;                /* the echoes went out */
        /* As wait_batch: the Python tail, with the whole timeout. */
        if (c->l == NULL || (n <= 0 && (n || ms)))
            return wait_tail(c, PY_BATCH_TAIL, n, ms0, t0);
        /* Returned as it is: a batch with another kind of event, an empty
         * poll, or any batch once the time is up. */
        for (i = 0; i < n && c->ev[i].kind == PE_EV_DATA; i++)
            ;
        if (i < n || n == 0 || ms == 0)
            return events(c, n);
        if (ms > 0) {
            double left = ms0 / 1000.0 - (mono_now() - t0);

            if (left <= 0)
                return events(c, n);
            ms = (int)ceil(left * 1000.0);
        }
        /* What Python would do between two waits: signal handlers (a
         * handler's stop() wakes the loop, so the next run returns). */
        if (PyErr_CheckSignals() < 0) {
            requeue_echoes(c, n);
            return NULL;
        }
        if (c->l == NULL) {             /* a handler closed the loop */
            requeue_echoes(c, n);
            goto python;
        }
        for (i = 0; i < n; i++)
            c->eq[i] = c->ev[i].handle;
        necho = n;
    }
python:
    if (PyErr_Occurred())
        return NULL;
    return fallback(c, PY_WAIT_ECHO, timeout, NULL, NULL, NULL);
}

/* send(h, data): Loop.send for bytes and bytearray, the GIL held (the
 * core's send never blocks). */
static PyObject *lc_send(PyObject *self, PyObject *const *args,
                         Py_ssize_t nargs, PyObject *kwnames)
{
    if (kwnames)
        return whole_python((LoopCalls *)self, PY_SEND, args, nargs, kwnames);
    return lc_send_impl(self, args, nargs);
}

static PyObject *lc_send_impl(PyObject *self, PyObject *const *args,
                         Py_ssize_t nargs)
{
    LoopCalls *c = (LoopCalls *)self;
    pe_handle h;
    char *buf;
    Py_ssize_t len;
    int64_t rc;
    PyObject *data, *prc, *r;

    if (nargs != 2 || c->l == NULL || !PyLong_Check(args[0]))
        goto python;
    if (handle_of(c, args[0], &h) < 0) {
        PyErr_Clear();                  /* Python raises its own error */
        goto python;
    }
    data = args[1];
    if (PyBytes_CheckExact(data)) {
        if (PyBytes_AsStringAndSize(data, &buf, &len) < 0)
            return NULL;
    } else if (PyByteArray_CheckExact(data)) {
        buf = PyByteArray_AsString(data);
        len = PyByteArray_Size(data);
    } else {
        goto python;
    }
    if (echoes_queued(c) != 0)      /* queued echoes go out first */
        goto python;
    rc = c->send(c->l, h, buf, (size_t)len);
    if (rc >= 0)
        Py_RETURN_NONE;
    if (!(prc = PyLong_FromLongLong(rc)))
        return NULL;
    r = fallback(c, PY_SEND_FAILED, args[0], prc, NULL, NULL);
    Py_DECREF(prc);
    return r;
python:
    if (PyErr_Occurred())
        return NULL;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError,
                     "send() takes 2 positional arguments (%zd given)",
                     nargs);
        return NULL;
    }
    return fallback(c, PY_SEND, args[0], args[1], NULL, NULL);
}

/* reply(h, offset, length): Loop.reply, the GIL held. */
static PyObject *lc_reply(PyObject *self, PyObject *const *args,
                         Py_ssize_t nargs, PyObject *kwnames)
{
    if (kwnames)
        return whole_python((LoopCalls *)self, PY_REPLY, args, nargs, kwnames);
    return lc_reply_impl(self, args, nargs);
}

static PyObject *lc_reply_impl(PyObject *self, PyObject *const *args,
                          Py_ssize_t nargs)
{
    LoopCalls *c = (LoopCalls *)self;
    unsigned long long off, len;
    pe_handle h;
    int64_t rc;
    PyObject *prc, *r;
    Py_ssize_t nq;

    if (nargs != 3 || c->l == NULL || !PyLong_Check(args[0]) ||
        !PyLong_Check(args[1]) || !PyLong_Check(args[2]))
        goto python;
    if (handle_of(c, args[0], &h) < 0) {
        PyErr_Clear();
        goto python;
    }
    off = U64_AS(args[1]);
    len = U64_AS(args[2]);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        goto python;
    }
    if (off > UINT32_MAX || len > UINT32_MAX)
        goto python;
    nq = echoes_queued(c);
    if (nq != 0)
        goto python;
    rc = c->reply(c->l, h, (uint32_t)off, (uint32_t)len);
    if (rc >= 0)
        Py_RETURN_NONE;
    if (!(prc = PyLong_FromLongLong(rc)))
        return NULL;
    r = fallback(c, PY_REPLY_FAILED, args[0], prc, args[1], args[2]);
    Py_DECREF(prc);
    return r;
python:
    if (PyErr_Occurred())
        return NULL;
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError,
                     "reply() takes 3 positional arguments (%zd given)",
                     nargs);
        return NULL;
    }
    return fallback(c, PY_REPLY, args[0], args[1], args[2], NULL);
}

/* ------------------------------------------------------------------ serve */

/* The exception a handler of serve raised, if it is an Exception, given
 * to Loop._serve_failed (logged, the connection aborted) and cleared: 0.
 * -1 leaves it raised to end serve (KeyboardInterrupt, SystemExit, or
 * _serve_failed itself raised). */
static int serve_failed(LoopCalls *c, PyObject *h)
{
    PyObject *loop = c->loop_ref ? PyWeakref_GetObject(c->loop_ref) : NULL;
    int rc;

    if (!PyErr_ExceptionMatches(PyExc_Exception) || !loop || loop == Py_None)
        return -1;
    Py_INCREF(loop);
    rc = pe_py_report_raised(c->py[PY_SERVE_FAILED], loop, h);
    Py_DECREF(loop);
    return rc;
}

/* The events of serve's batch from the first not handled on put back
 * into the loop, for its next wait; the exception that ends serve kept
 * (a failure to put them back is logged, as the Python path logs it). */
static void serve_unget(LoopCalls *c, const struct pe_loop_event *ev, int n)
{
    PyObject *type, *value, *tb, *pn, *prc, *r = NULL;
    int rc;

    if (n <= 0 || c->l == NULL || (rc = c->unget(c->l, ev, n)) >= 0)
        return;
    PyErr_Fetch(&type, &value, &tb);
    pn = PyLong_FromLong(n);
    prc = PyLong_FromLong(rc);
    if (pn && prc)
        r = fallback(c, PY_SERVE_LOST, pn, prc, NULL, NULL);
    Py_XDECREF(pn);
    Py_XDECREF(prc);
    Py_XDECREF(r);
    PyErr_Clear();                      /* the exception ending serve wins */
    PyErr_Restore(type, value, tb);
}

/* All unread bytes of h (as recv() returns them), or NULL: with an
 * exception, or none when there is nothing to hand over (none unread, or
 * h closed earlier in the batch). */
static PyObject *serve_read(LoopCalls *c, PyObject *h, pe_handle hv)
{
    int64_t n = c->read(c->l, hv, c->rbuf, c->rsize);
    PyObject *b, *r;

    if (n > 0) {
        if (!(b = PyBytes_FromStringAndSize(c->rbuf, (Py_ssize_t)n)) ||
            (size_t)n < c->rsize)
            return b;
        r = fallback(c, PY_RECV_REST, h, b, NULL, NULL);
        Py_DECREF(b);
        return r;
    }
    if (n == 0 || n == -ESTALE)
        return NULL;
    if ((b = PyLong_FromLongLong(n)) != NULL) {
        Py_XDECREF(fallback(c, PY_RECV_FAILED, b, NULL, NULL, NULL));
        Py_DECREF(b);
    }
    return NULL;                        /* with what recv() raises */
}

/* on_data's reply r sent on h as send() sends it: 0 (a connection gone
 * is no error here: ConnectionError, its EV_CLOSED follows, or
 * StaleHandleError, closed already), or -1 with the exception. */
static int serve_reply(LoopCalls *c, PyObject *h, pe_handle hv, PyObject *r)
{
    char *buf;
    Py_ssize_t len, nq;
    int64_t rc;
    PyObject *prc, *res;

    if (PyBytes_CheckExact(r)) {
        if (PyBytes_AsStringAndSize(r, &buf, &len) < 0)
            return -1;
    } else if (PyByteArray_CheckExact(r)) {
        buf = PyByteArray_AsString(r);
        len = PyByteArray_Size(r);
    } else {
        goto python;
    }
    if ((nq = echoes_queued(c)) != 0) { /* queued echoes go out first */
        if (nq < 0)
            return -1;
        goto python;
    }
    rc = c->send(c->l, hv, buf, (size_t)len);
    if (rc >= 0 || rc == -ESTALE)
        return 0;
    if (!(prc = PyLong_FromLongLong(rc)))
        return -1;
    res = fallback(c, PY_SEND_FAILED, h, prc, NULL, NULL);
    Py_DECREF(prc);
    if (res) {
        Py_DECREF(res);
        return 0;
    }
    if (!PyErr_ExceptionMatches(PyExc_ConnectionError))
        return -1;
    PyErr_Clear();
    return 0;
python:
    res = fallback(c, PY_SERVE_REPLY, h, r, NULL, NULL);
    Py_XDECREF(res);
    return res ? 0 : -1;
}

/* on_data(h, data), both references taken (the tuple keeps them until
 * the next message); what it returned, or NULL with its exception. */
static PyObject *call_on_data(LoopCalls *c, PyObject *on_data, PyObject *h,
                              PyObject *data)
{
    PyObject *t = c->data_args, *r;

    if (t == NULL || Py_REFCNT(t) != 1) {
        Py_CLEAR(c->data_args);         /* someone kept it: a new one */
        if (!(t = c->data_args = PyTuple_New(2))) {
            Py_DECREF(h);
            Py_DECREF(data);
            return NULL;
        }
    }
    PyTuple_SetItem(t, 0, h);           /* steal; drop the last ones */
    PyTuple_SetItem(t, 1, data);
    Py_INCREF(t);
    r = PyObject_Call(on_data, t, NULL);
    Py_DECREF(t);
    return r;
}

/* Event e of serve's batch handled: 0, or -1 with the exception that
 * ends serve. */
static int serve_event(LoopCalls *c, PyObject *on_data, PyObject *on_event,
                       const struct pe_loop_event *e)
{
    PyObject *h, *r, *kind, *arg;
    int rc = 0;

    if (!(h = handle_obj(c, e->handle)))
        return -1;
    if (e->kind == PE_EV_DATA) {
        PyObject *data = serve_read(c, h, e->handle);

        if (!data) {
            rc = PyErr_Occurred() ? serve_failed(c, h) : 0;
            Py_DECREF(h);
            return rc;
        }
        Py_INCREF(h);
        r = call_on_data(c, on_data, h, data);
        if (r && r != Py_None && c->l != NULL &&
            serve_reply(c, h, e->handle, r) < 0)
            Py_CLEAR(r);
    } else if (on_event != Py_None) {
        kind = U64_FROM(e->kind);
        arg = U64_FROM(e->arg);
        r = kind && arg ? PyObject_CallFunctionObjArgs(on_event, kind, h,
                                                       arg, NULL) : NULL;
        Py_XDECREF(kind);
        Py_XDECREF(arg);
    } else if (e->kind == PE_EV_EOF) {
        r = fallback(c, PY_CLOSE, h, NULL, NULL, NULL);
    } else {
        Py_DECREF(h);
        return 0;
    }
    if (r)
        Py_DECREF(r);
    else
        rc = serve_failed(c, h);
    Py_DECREF(h);
    return rc;
}

/* serve(on_data, on_event, ms): Loop.serve's loop (loop.py), the waits
 * and the calls of the handlers made from here: per message, one call of
 * on_data and no other Python code.  None when serve is over: stop()
 * came, the ms passed (-1: no limit), or the loop closed.  An int when
 * Python must take a turn: 0 for queued echoes (its wait sends them), a
 * -errno the run failed with.  NULL with the exception that ends serve
 * (a signal handler's, or a handler's that is no Exception; the batch's
 * events not yet handled are put back). */
static PyObject *lc_serve(PyObject *self, PyObject *const *args,
                          Py_ssize_t nargs)
{
    LoopCalls *c = (LoopCalls *)self;
    PyObject *on_data, *on_event, *r = NULL;
    struct pe_loop_event *ev;
    double t0 = 0.0;
    long ms0;
    int ms, n, i;

    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError,
                     "serve() takes 3 positional arguments (%zd given)",
                     nargs);
        return NULL;
    }
    on_data = args[0];
    on_event = args[1];
    ms0 = PyLong_AsLong(args[2]);
    if (ms0 == -1 && PyErr_Occurred())
        return NULL;
    if (ms0 < -1 || ms0 > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "serve: ms out of range");
        return NULL;
    }
    ms = (int)ms0;
    if (ms > 0)
        t0 = mono_now();
    /* Its own batch, not wait's buffer (Loop._ev): a handler may call
     * wait() or serve() itself, which would write over it. */
    if (!(ev = PyMem_Malloc((size_t)c->wcap * sizeof(*ev))))
        return PyErr_NoMemory();
    for (;;) {
        pe_loop *l = c->l;
        Py_ssize_t nq;

        if (l == NULL)
            break;
        if ((nq = echoes_queued(c)) != 0) {
            if (nq > 0)
                r = PyLong_FromLong(0);
            goto out;
        }
        PE_PY_WAIT(n, ms, c->run(l, ev, c->wcap, ms));
        if (c->l == NULL)
            break;                      /* closed while it waited */
        if (n == -EINTR || n == 0) {
            /* A signal (or a run whose reads were all answered in C,
             * which a signal may have come during, or one woken by
             * wake_on_signals' pipe): its handler now, as wait runs it;
             * one that raises ends serve. */
            if (PyErr_CheckSignals() < 0)
                goto out;
            n = 0;
        } else if (n < 0) {
            r = PyLong_FromLong(n);
            goto out;
        }
        for (i = 0; i < n; i++) {
            if (serve_event(c, on_data, on_event, &ev[i]) < 0) {
                serve_unget(c, ev + i + 1, n - i - 1);
                goto out;
            }
            if (c->l == NULL)           /* a handler closed the loop */
                break;
        }
        if (c->l == NULL || c->stopping || ms == 0)
            break;
        if (ms > 0) {
            double left = ms0 / 1000.0 - (mono_now() - t0);

            if (left <= 0)
                break;
            ms = (int)ceil(left * 1000.0);
        }
    }
    Py_INCREF(Py_None);
    r = Py_None;
out:
    PyMem_Free(ev);
    return r;
}

/* *flag = bool(on): None, or NULL with the exception. */
static PyObject *set_flag(int *flag, PyObject *on)
{
    int v = PyObject_IsTrue(on);

    if (v < 0)
        return NULL;
    *flag = v;
    Py_RETURN_NONE;
}

/* stop(on): Loop.stop's flag (True), cleared as serve returns (False). */
static PyObject *lc_stop(PyObject *self, PyObject *on)
{
    return set_flag(&((LoopCalls *)self)->stopping, on);
}

/* sigwake(on): Loop.wake_on_signals is on (True) or off (False). */
static PyObject *lc_sigwake(PyObject *self, PyObject *on)
{
    return set_flag(&((LoopCalls *)self)->sigwake, on);
}

#define FAST(name, doc)                                         \
    {#name, (PyCFunction)(void (*)(void))lc_##name,             \
     METH_FASTCALL | METH_KEYWORDS, doc}

static PyMethodDef lc_methods[] = {
    FAST(wait, "Loop.wait"),
    FAST(recv, "Loop.recv"),
    FAST(wait_batch, "Loop.wait_batch"),
    FAST(wait_batch_echo, "Loop.wait_batch_echo"),
    FAST(send, "Loop.send"),
    FAST(reply, "Loop.reply"),
    {"serve", (PyCFunction)(void (*)(void))lc_serve, METH_FASTCALL,
     "serve(on_data, on_event, ms): Loop.serve's loop"},
    {"stop", lc_stop, METH_O, "stop(on): Loop.stop's flag"},
    {"sigwake", lc_sigwake, METH_O,
     "sigwake(on): Loop.wake_on_signals is on or off"},
    {"setup", lc_setup, METH_VARARGS, "setup(eq, ev, cap, owners)"},
    {"detach", lc_detach, METH_NOARGS,
     "forget the C loop: the Loop closed (or is the parent's)"},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot lc_slots[] = {
    {Py_tp_new, lc_new},
    {Py_tp_dealloc, lc_dealloc},
    {Py_tp_traverse, lc_traverse},
    {Py_tp_clear, lc_clear},
    {Py_tp_methods, lc_methods},
    {Py_tp_doc, "LoopCalls(loop, l, owner, echoq, addresses, fallbacks, "
                "buffers): a pyepoll.Loop's hot calls in C"},
    {0, NULL},
};

static PyType_Spec lc_spec = {
    "pyepoll._speedups.LoopCalls", sizeof(LoopCalls), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, lc_slots,
};

/* ---------------------------------------------------------------- HotMethod
 *
 * HotMethod(func): Loop's descriptor for wait, recv, send, ... (loop.py's
 * _Hot, in C).  On the class it is func (its doc); on a Loop it is the
 * bound method of that Loop's LoopCalls (loop._fast) of func's name, or
 * func bound to the Loop where _fast is None.  The bound method is kept
 * for the Loop it was made for, known by a weak reference whose callback
 * drops it with the Loop: `loop.wait()` in a handler finds it in ~20
 * instructions, where loop.py's _Hot ran a Python __get__ and made a new
 * bound method each time (~1,650 instructions a lookup, three a round
 * trip in the README's echo).
 */

typedef struct {
    PyObject_HEAD
    PyObject *func;
    PyObject *name;             /* func.__name__ */
    PyObject *ref;              /* a weak reference to the Loop served last */
    PyObject *bound;            /* its LoopCalls' method */
    PyObject *forget;           /* ref's callback: this object's forget() */
} HotMethod;

static PyObject *fast_name;     /* "_fast", interned */

static int hm_traverse(PyObject *self, visitproc visit, void *arg)
{
    HotMethod *h = (HotMethod *)self;

    Py_VISIT(Py_TYPE(self));
    Py_VISIT(h->func);
    Py_VISIT(h->name);
    Py_VISIT(h->ref);
    Py_VISIT(h->bound);
    Py_VISIT(h->forget);
    return 0;
}

static int hm_clear(PyObject *self)
{
    HotMethod *h = (HotMethod *)self;

    Py_CLEAR(h->func);
    Py_CLEAR(h->name);
    Py_CLEAR(h->ref);
    Py_CLEAR(h->bound);
    Py_CLEAR(h->forget);
    return 0;
}

static void hm_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    hm_clear(self);
    ((freefunc)PyType_GetSlot(tp, Py_tp_free))(self);
    Py_DECREF(tp);
}

/* forget(ref): the Loop ref named is gone; so is its bound method. */
static PyObject *hm_forget(PyObject *self, PyObject *ref)
{
    HotMethod *h = (HotMethod *)self;

    if (ref == h->ref) {
        PyObject *bound = h->bound;

        h->bound = NULL;
        Py_CLEAR(h->ref);
        Py_XDECREF(bound);
    }
    Py_RETURN_NONE;
}

static PyMethodDef hm_forget_def = {
    "forget", hm_forget, METH_O, "drop the method kept for a gone Loop",
};

static PyObject *hm_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    PyObject *func;
    HotMethod *h;

    if (kw && PyDict_Size(kw)) {
        PyErr_SetString(PyExc_TypeError,
                        "HotMethod() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "O", &func))
        return NULL;
    if (!PyCallable_Check(func)) {
        PyErr_SetString(PyExc_TypeError, "HotMethod() needs a function");
        return NULL;
    }
    if (!(h = (HotMethod *)PyType_GenericAlloc(type, 0)))
        return NULL;
    Py_INCREF(func);
    h->func = func;
    h->name = PyObject_GetAttrString(func, "__name__");
    if (!h->name || !PyUnicode_Check(h->name) ||
        !(h->forget = PyCFunction_New(&hm_forget_def, (PyObject *)h))) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "__name__ is not a str");
        Py_DECREF(h);
        return NULL;
    }
    return (PyObject *)h;
}

static PyObject *hm_get(PyObject *self, PyObject *obj, PyObject *type)
{
    HotMethod *h = (HotMethod *)self;
    PyObject *fast, *bound, *ref, *old_ref, *old_bound;

    if (obj == NULL || obj == Py_None) {
        Py_INCREF(h->func);
        return h->func;
    }
    if (h->ref && PyWeakref_GetObject(h->ref) == obj) {
        Py_INCREF(h->bound);
        return h->bound;
    }
    if (!(fast = PyObject_GetAttr(obj, fast_name)))
        return NULL;
    if (fast == Py_None) {              /* the Python methods */
        Py_DECREF(fast);
        return PyObject_CallMethod(h->func, "__get__", "OO", obj,
                                   type ? type : Py_None);
    }
    bound = PyObject_GetAttr(fast, h->name);
    Py_DECREF(fast);
    if (!bound)
        return NULL;
    /* Kept only where the Loop takes weak references (a Loop does). */
    if (!(ref = PyWeakref_NewRef(obj, h->forget))) {
        PyErr_Clear();
        return bound;
    }
    old_ref = h->ref;
    old_bound = h->bound;
    h->ref = ref;
    Py_INCREF(bound);
    h->bound = bound;
    Py_XDECREF(old_ref);                /* its callback is not called */
    Py_XDECREF(old_bound);
    return bound;
}

static PyMemberDef hm_members[] = {
    {"__func__", T_OBJECT, offsetof(HotMethod, func), READONLY,
     "the Python method"},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot hm_slots[] = {
    {Py_tp_new, hm_new},
    {Py_tp_dealloc, hm_dealloc},
    {Py_tp_traverse, hm_traverse},
    {Py_tp_clear, hm_clear},
    {Py_tp_descr_get, hm_get},
    {Py_tp_members, hm_members},
    {Py_tp_doc, "HotMethod(func): a pyepoll.Loop method that is the Loop's "
                "C one (LoopCalls) where it has one"},
    {0, NULL},
};

static PyType_Spec hm_spec = {
    "pyepoll._speedups.HotMethod", sizeof(HotMethod), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, hm_slots,
};

int pe_py_add_loop(PyObject *m)
{
    PyObject *hm;

    if (!(fast_name = PyUnicode_InternFromString("_fast")))
        return -1;
    if (!(hm = PyType_FromSpec(&hm_spec)))
        return -1;
    if (PyModule_AddObject(m, "HotMethod", hm) < 0) {
        Py_DECREF(hm);
        return -1;
    }
    loop_calls_type = (PyTypeObject *)PyType_FromSpec(&lc_spec);
    if (!loop_calls_type)
        return -1;
    Py_INCREF(loop_calls_type);
    if (PyModule_AddObject(m, "LoopCalls", (PyObject *)loop_calls_type) < 0) {
        Py_DECREF(loop_calls_type);
        return -1;
    }
    return 0;
}

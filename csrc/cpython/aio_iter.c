/*
 * aio_iter.c - one asyncio loop iteration and call_soon in C, for
 * pyepoll.asyncio_loop.EventLoop on CPython (docs/asyncio.md, "Speedups").
 *
 * What a server pays per wakeup and per callback besides its protocol:
 * the stdlib's _run_once (timer upkeep, the timeout, the wait, moving due
 * timers, running the ready callbacks) and call_soon (a Handle per task
 * step).  uvloop has these in Cython; here they are the same steps as
 * EventLoop._run_once_py and EventLoop._call_soon_py, without a Python
 * frame each.  Anything unusual goes to that Python code, which stays the
 * one implementation: debug mode, a closed loop, a non-callable callback,
 * pruning cancelled timers, the wait's rare results, a Handle subclass
 * (TimerHandle) or an odd context.
 *
 * Limited API 3.9: Handle's slots are read and written as attributes
 * (their member descriptors), Context.run is called through its method
 * descriptor, heapq.heappop is the stdlib's.
 */
#include "speedups.h"

/* From iter_init(): the stdlib's objects these steps use. */
static PyTypeObject *handle_type;       /* asyncio.Handle */
static newfunc handle_new;
static PyObject *context_type;          /* contextvars.Context */
static PyObject *context_run;           /* contextvars.Context.run */
static PyObject *copy_context;
static PyObject *heappop;
static PyObject *report_failure;        /* asyncio_loop._report_handle_failure */

static PyObject *s_debug, *s_closed, *s_ready, *s_scheduled, *s_stopping,
    *s_when, *s_cancelled, *s_context, *s_callback, *s_args, *s_loop,
    *s_repr, *s_source_tb, *s_time, *s_clock_res, *s_sb, *s_p, *s_rest,
    *s_later, *s_select, *s_select_py, *s_select_result, *s_process_events,
    *s_run, *s_run_once_py, *s_call_soon_py, *s_prune, *s_append, *s_popleft,
    *s_scheduled_flag, *s_kw_context, *s_cancelled_count, *s_walk_later,
    *s_fd_events, *s_conns, *s_walk;

static PyObject *empty_tuple;
static PyObject *kw_context_seen;       /* a str equal to "context" */
static PyObject *future_type;           /* asyncio.Future (create_future) */
static PyObject *s_loop_kw, *s_closing, *s_create_future_py;
/* CTransport's `_closing` slot: its member descriptor and that one's
 * get function (NULL: getattr). */
static PyObject *closing_descr;
static descrgetfunc closing_get;

static void keep(PyObject **slot, PyObject *v);

/* Handle's slots, set and read through their member descriptors' own
 * functions where the runtime gives them out (PyType_GetSlot on a static
 * type: 3.10+), which is what setattr/getattr end in for a class with
 * __slots__ and no __dict__, minus the type lookup; else setattr/getattr. */
enum { F_CONTEXT, F_LOOP, F_CALLBACK, F_ARGS, F_CANCELLED, F_REPR,
       F_SOURCE_TB, NFIELDS };
static PyObject **const field_name[NFIELDS] = {
    &s_context, &s_loop, &s_callback, &s_args, &s_cancelled, &s_repr,
    &s_source_tb,
};
static PyObject *field_descr[NFIELDS];
static descrgetfunc field_get[NFIELDS];
static descrsetfunc field_set[NFIELDS];

/* Where each of Handle's slots sits in a Handle (bytes from its start),
 * found by probe_fields(): set through its member descriptor, a slot is a
 * plain object pointer in the instance, and reading or writing it there
 * is what that descriptor does, minus its call, type check and
 * PyMember_SetOne (~45 instructions a slot, 7 per call_soon).  0: not
 * known (the probe failed or did not run), use the descriptors. */
static Py_ssize_t field_off[NFIELDS];
static int fields_direct;

static PyObject **hslot(PyObject *h, int f)
{
    return (PyObject **)((char *)h + field_off[f]);
}

/* h.<field f> = v.  h: a Handle (the exact type, or TimerHandle, which
 * keeps its base's layout). */
static int hset(PyObject *h, int f, PyObject *v)
{
    if (fields_direct) {
        PyObject **p = hslot(h, f), *old = *p;

        Py_INCREF(v);
        *p = v;
        Py_XDECREF(old);
        return 0;
    }
    if (field_set[f])
        return field_set[f](field_descr[f], h, v);
    return PyObject_SetAttr(h, *field_name[f], v);
}

/* h.<field f>, a new reference; an unset slot raises AttributeError as
 * its descriptor does. */
static PyObject *hget(PyObject *h, int f)
{
    if (fields_direct) {
        PyObject *v = *hslot(h, f);

        if (!v) {
            PyErr_SetObject(PyExc_AttributeError, *field_name[f]);
            return NULL;
        }
        Py_INCREF(v);
        return v;
    }
    if (field_get[f])
        return field_get[f](field_descr[f], h, (PyObject *)handle_type);
    return PyObject_GetAttr(h, *field_name[f]);
}

/* Handles run_once ran that nobody else references, their four
 * per-call slots cleared (_cancelled False, _repr and _source_traceback
 * None as call_soon sets them): call_soon takes one before allocating a
 * new Handle, which saves the allocation, the GC linking and the dealloc
 * per task wake-up.  Only with fields_direct and a known weakref slot. */
#define HANDLE_POOL 16
static PyObject *handle_pool[HANDLE_POOL];
static int handle_pooled;
static int pool_ok;
static Py_ssize_t weaklist_off;         /* 0: Handle takes no weakrefs */

/* No one but the caller holds h, not even a weak reference. */
static int handle_alone(PyObject *h)
{
    return Py_REFCNT(h) == 1 &&
           (!weaklist_off || !*(PyObject **)((char *)h + weaklist_off));
}

/* After run_once ran h (its reference, which this takes): into the pool
 * when h is a plain Handle left as call_soon made it and no one else
 * holds it; else dropped as before. */
static void handle_done(PyObject *h)
{
    if (pool_ok && handle_pooled < HANDLE_POOL &&
        Py_TYPE(h) == handle_type && handle_alone(h) &&
        *hslot(h, F_CANCELLED) == Py_False &&
        *hslot(h, F_REPR) == Py_None && *hslot(h, F_SOURCE_TB) == Py_None) {
        static const int drop[] = { F_CONTEXT, F_LOOP, F_CALLBACK, F_ARGS };
        PyObject *old[4];
        size_t i;

        /* Unlinked first, then released: a finalizer that runs meanwhile
         * finds h in the pool, complete. */
        for (i = 0; i < 4; i++) {
            old[i] = *hslot(h, drop[i]);
            *hslot(h, drop[i]) = NULL;
        }
        handle_pool[handle_pooled++] = h;
        for (i = 0; i < 4; i++)
            Py_XDECREF(old[i]);
        return;
    }
    Py_DECREF(h);
}

/* A pooled Handle no one else took meanwhile (gc.get_objects() shows
 * them), or NULL. */
static PyObject *handle_reuse(void)
{
    while (handle_pooled > 0) {
        PyObject *h = handle_pool[--handle_pooled];

        if (handle_alone(h))
            return h;
        Py_DECREF(h);
    }
    return NULL;
}

static void pool_clear(void)
{
    while (handle_pooled > 0) {
        PyObject *h = handle_pool[--handle_pooled];
        Py_DECREF(h);
    }
}

static Py_ssize_t type_ssize(PyObject *type, const char *attr)
{
    PyObject *v = PyObject_GetAttrString(type, attr);
    Py_ssize_t n;

    if (!v)
        return -1;
    n = PyLong_AsSsize_t(v);
    Py_DECREF(v);
    return n;
}

/* Where in obj (size bytes, __basicsize__) each of marks[0..n) sits:
 * each must be in exactly one pointer-sized word after the object
 * header.  1 with off[] filled, else 0. */
static int find_marks(PyObject *obj, Py_ssize_t size, PyObject *const *marks,
                      int n, Py_ssize_t *off)
{
    Py_ssize_t at;
    int i;

    for (i = 0; i < n; i++) {
        int hits = 0;

        for (at = (Py_ssize_t)sizeof(PyObject);
             at + (Py_ssize_t)sizeof(PyObject *) <= size;
             at += (Py_ssize_t)sizeof(PyObject *))
            if (*(PyObject **)((char *)obj + at) == marks[i]) {
                hits++;
                off[i] = at;
            }
        if (hits != 1)
            return 0;
    }
    return 1;
}

/* Find where Handle keeps each slot: a fresh Handle gets a distinct new
 * object in each slot through its descriptor, and each must then sit in
 * exactly one pointer-sized word of the instance (after the object
 * header, within __basicsize__); the weakref slot (__weakrefoffset__)
 * must be NULL, then set while a weakref lives.  Anything else leaves
 * the descriptors in use (fields_direct 0, no pool).  0, or -1 with an
 * exception (only for a failed allocation or call). */
static int probe_fields(void)
{
    PyObject *h = NULL, *mark[NFIELDS] = { NULL }, *ref;
    Py_ssize_t size, found[NFIELDS];
    int i, ok, rc = -1;

    fields_direct = pool_ok = 0;
    pool_clear();
    size = type_ssize((PyObject *)handle_type, "__basicsize__");
    if (size < 0)
        goto done;
    weaklist_off = type_ssize((PyObject *)handle_type, "__weakrefoffset__");
    if (weaklist_off == -1 && PyErr_Occurred())
        goto done;
    h = handle_new(handle_type, empty_tuple, NULL);
    if (!h)
        goto done;
    for (i = 0; i < NFIELDS; i++) {
        mark[i] = PyObject_CallObject((PyObject *)&PyBaseObject_Type, NULL);
        if (!mark[i] || hset(h, i, mark[i]) < 0)
            goto done;
    }
    if (!find_marks(h, size, mark, NFIELDS, found))
        goto fine;
    for (i = 0; i < NFIELDS; i++)
        field_off[i] = found[i];
    if (weaklist_off) {
        PyObject **w = (PyObject **)((char *)h + weaklist_off);

        /* In the instance, or (3.12+, "managed") in the words before
         * its GC header. */
        if (weaklist_off > size - (Py_ssize_t)sizeof(PyObject *) ||
            (weaklist_off > 0 && weaklist_off < (Py_ssize_t)sizeof(PyObject))
            || weaklist_off < -4 * (Py_ssize_t)sizeof(PyObject *))
            goto fine;
        if (*w)
            goto fine;
        ref = PyWeakref_NewRef(h, NULL);
        if (!ref)
            goto done;
        ok = *w != NULL;
        Py_DECREF(ref);
        if (!ok || *w)
            goto fine;
    }
    fields_direct = 1;
    pool_ok = 1;
fine:
    rc = 0;
done:
    Py_XDECREF(h);
    for (i = 0; i < NFIELDS; i++)
        Py_XDECREF(mark[i]);
    return rc;
}

/* asyncio.TimerHandle's `_when` slot: its member descriptor and that
 * one's get function (NULL: getattr), read per iteration while a timer is
 * pending (aiohttp's keep-alive always is). */
static PyTypeObject *timer_type;
static PyObject *when_descr;
static descrgetfunc when_get;

/* A timer's _when as a double: -1.0 with an exception on failure. */
static double timer_when(PyObject *t)
{
    PyObject *v;
    double d;

    if (when_get && Py_TYPE(t) == timer_type)
        v = when_get(when_descr, t, (PyObject *)timer_type);
    else
        v = PyObject_GetAttr(t, s_when);
    if (!v)
        return -1.0;
    d = PyFloat_AsDouble(v);
    Py_DECREF(v);
    return d;
}

static Py_ssize_t min_scheduled;
static double min_cancelled_fraction, max_select_timeout;

/* getattr(o, name) is true: 1, 0, or -1 with an exception. */
static int attr_true(PyObject *o, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(o, name);
    int r;

    if (!v)
        return -1;
    r = PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

/* The loop's own state (_debug, _ready, ...): EventLoop's __slots__
 * (asyncio_loop.py), read through their member descriptors' get function
 * as getattr ends in for them, minus the lookups through EventLoop's long
 * MRO.  A loop type that is not EventLoop or a subclass leaving these
 * names alone, or a runtime without the slot functions (3.9), reads them
 * by getattr. */
enum { L_DEBUG, L_CLOSED, L_STOPPING, L_READY, L_SCHEDULED, L_CLOCK_RES,
       L_CANCELLED_COUNT, L_SB, L_P, L_REST, L_LATER, NLFIELDS };
static PyObject **const lfield_name[NLFIELDS] = {
    &s_debug, &s_closed, &s_stopping, &s_ready, &s_scheduled, &s_clock_res,
    &s_cancelled_count, &s_sb, &s_p, &s_rest, &s_later,
};
static PyTypeObject *loop_type;         /* EventLoop (iter_methods) */
static PyObject *lfield_descr[NLFIELDS];
static descrgetfunc lfield_get;         /* one for all: member_descriptor's */
/* Where loop_type keeps each (probe_loop()), as for Handle's slots; 0:
 * not known. */
static Py_ssize_t lfield_off[NLFIELDS];
static int loop_direct;
static descrsetfunc lfield_set;
/* The subclass of EventLoop checked last and whether it left every one of
 * these names to EventLoop's slots (a strong reference: no other type can
 * reuse its address while it is remembered). */
static PyTypeObject *checked_type;
static int checked_plain;

static int same_slots(PyTypeObject *t)
{
    int i, ok = 1;

    if (t == loop_type)
        return lfield_get != NULL;
    if (t == checked_type)
        return checked_plain;
    if (!lfield_get || !PyType_IsSubtype(t, loop_type))
        ok = 0;
    for (i = 0; ok && i < NLFIELDS; i++) {
        /* On the class a member descriptor's get gives itself. */
        PyObject *v = PyObject_GetAttr((PyObject *)t, *lfield_name[i]);

        if (!v) {
            PyErr_Clear();
            ok = 0;
        } else {
            ok = v == lfield_descr[i];
            Py_DECREF(v);
        }
    }
    Py_INCREF(t);
    Py_XDECREF(checked_type);
    checked_type = t;
    checked_plain = ok;
    return ok;
}

/* loop.<field f>: a new reference, or NULL with an exception (an unset
 * slot: AttributeError, as getattr). */
static PyObject *lget(PyObject *loop, int f)
{
    if (same_slots(Py_TYPE(loop))) {
        PyObject *v = loop_direct
            ? *(PyObject **)((char *)loop + lfield_off[f]) : NULL;

        if (v) {
            Py_INCREF(v);
            return v;
        }
        /* unset (AttributeError), or offsets not known */
        return lfield_get(lfield_descr[f], loop, (PyObject *)loop_type);
    }
    return PyObject_GetAttr(loop, *lfield_name[f]);
}

/* loop._ready: the Batch's, or looked up (a new reference). */
static PyObject *lready(PyObject *loop)
{
    PyObject *r = pe_py_loop_ready(loop);

    if (r) {
        Py_INCREF(r);
        return r;
    }
    return lget(loop, L_READY);
}

static int call_drop(PyObject *r)
{
    if (!r)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* loop._ready.append(h): 0, or -1 with an exception.  The Batch's bound
 * method when it has this loop's _ready. */
static int ready_append(PyObject *loop, PyObject *h)
{
    PyObject *f = pe_py_loop_ready_append(loop), *ready;
    int t;

    if (f)
        return call_drop(PyObject_CallFunctionObjArgs(f, h, NULL));
    ready = lget(loop, L_READY);
    if (!ready)
        return -1;
    t = call_drop(PyObject_CallMethodObjArgs(ready, s_append, h, NULL));
    Py_DECREF(ready);
    return t;
}

/* ready.popleft() (ready: what lready() gave), likewise; a new reference
 * or NULL.  A callback may have bound another loop's Batch meanwhile. */
static PyObject *ready_popleft(PyObject *loop, PyObject *ready)
{
    PyObject *f = pe_py_loop_ready(loop) == ready
                  ? pe_py_loop_ready_popleft(loop) : NULL;

    if (f)
        return PyObject_CallObject(f, NULL);
    return PyObject_CallMethodObjArgs(ready, s_popleft, NULL);
}

static int ltrue(PyObject *loop, int f)
{
    PyObject *v;
    int r;

    if (loop_direct && Py_TYPE(loop) == loop_type) {
        /* _debug, _closed, _stopping: mostly exactly False */
        v = *(PyObject **)((char *)loop + lfield_off[f]);
        if (v == Py_False)
            return 0;
        if (v == Py_True)
            return 1;
    }
    v = lget(loop, f);
    if (!v)
        return -1;
    r = v == Py_True ? 1 : v == Py_False ? 0 : PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

static double ldouble(PyObject *loop, int f)
{
    PyObject *v = lget(loop, f);
    double x;

    if (!v)
        return -1.0;
    x = PyFloat_AsDouble(v);
    Py_DECREF(v);
    return x;
}

static double call_time(PyObject *loop)
{
    PyObject *v = PyObject_CallMethodObjArgs(loop, s_time, NULL);
    double d;

    if (!v)
        return -1.0;
    d = PyFloat_AsDouble(v);
    Py_DECREF(v);
    return d;
}

/* The cancelled timers: when the heap's head is one, or when they are many
 * (the stdlib's thresholds), loop._prune_timers() does the stdlib's work.
 * 0, or -1 with an exception. */
static int prune_timers(PyObject *loop, PyObject *scheduled, Py_ssize_t n)
{
    PyObject *head = PyList_GetItem(scheduled, 0);      /* borrowed */
    int cancelled;

    if (!head)
        return -1;
    Py_INCREF(head);
    if (Py_TYPE(head) == timer_type || Py_TYPE(head) == handle_type) {
        /* Handle's own slot (TimerHandle leaves it alone). */
        PyObject *v = hget(head, F_CANCELLED);

        cancelled = v ? PyObject_IsTrue(v) : -1;
        Py_XDECREF(v);
    } else {
        cancelled = attr_true(head, s_cancelled);
    }
    Py_DECREF(head);
    if (cancelled < 0)
        return -1;
    if (!cancelled && n > min_scheduled) {
        PyObject *c = lget(loop, L_CANCELLED_COUNT);
        double count;

        if (!c)
            return -1;
        count = PyFloat_AsDouble(c);
        Py_DECREF(c);
        if (count == -1.0 && PyErr_Occurred())
            return -1;
        cancelled = count / (double)n > min_cancelled_fraction;
    }
    if (!cancelled)
        return 0;
    return call_drop(PyObject_CallMethodObjArgs(loop, s_prune, NULL));
}

static PyObject *call_soon(PyObject *loop, PyObject *const *args,
                           Py_ssize_t nargs, PyObject *kwnames);

/* EventLoop._walk_later(token) as the callback queue_walk queues, bound to
 * the loop: the Python method's steps without its frame.  A batch walked
 * already (an interrupted iteration's _select did it) is left; a loop with
 * no Batch (the Python path) takes the Python method's way. */
static PyObject *walk_later(PyObject *loop, PyObject *token)
{
    PyObject *later = lget(loop, L_LATER), *sb, *conns, *r;

    if (!later)
        return NULL;
    Py_DECREF(later);
    if (later != token)
        Py_RETURN_NONE;
    sb = lget(loop, L_SB);
    if (!sb)
        return NULL;
    if (sb == Py_None) {
        Py_DECREF(sb);
        return PyObject_CallMethodObjArgs(loop, s_walk_later, token, NULL);
    }
    if (PyObject_SetAttr(loop, s_later, Py_None) < 0) {
        Py_DECREF(sb);
        return NULL;
    }
    conns = PyObject_GetAttr(loop, s_conns);
    r = conns ? PyObject_CallMethodObjArgs(sb, s_walk, loop, conns, Py_False,
                                           NULL)
              : NULL;
    Py_XDECREF(conns);
    Py_DECREF(sb);
    if (!r) {
        /* As _walk_c: the rest of the batch waits for the next select. */
        PyObject *type, *value, *tb;

        PyErr_Fetch(&type, &value, &tb);
        if (PyObject_SetAttr(loop, s_rest, Py_False) < 0)
            PyErr_Clear();
        PyErr_Restore(type, value, tb);
        return NULL;
    }
    Py_DECREF(r);
    Py_RETURN_NONE;
}

static PyMethodDef walk_later_def = {
    "_walk_later", walk_later, METH_O,
    "Walk the batch a wait left behind the ready callbacks (C)."
};

/* Batch.select's answer n > 0: callbacks were ready before the wait, so
 * the batch's connection events wait behind them.  _select_result's steps
 * without its frames (and the Python Handle.__init__ of its _call_soon):
 * `token = loop._later = [n]`, walk_later queued with token, then
 * the fds' events of the batch; those (rare: the self-pipe, add_reader fds)
 * go to _select_result as the list it turns into selector keys.  Takes r;
 * a new reference to the events' list or Py_None, NULL with an exception. */
static PyObject *queue_walk(PyObject *loop, PyObject *r)
{
    PyObject *token = PyList_New(1), *args[2], *h, *sb, *fds, *v;
    Py_ssize_t n;

    if (!token) {
        Py_DECREF(r);
        return NULL;
    }
    PyList_SetItem(token, 0, r);                        /* steals r */
    if (PyObject_SetAttr(loop, s_later, token) < 0) {
        Py_DECREF(token);
        return NULL;
    }
    args[0] = PyCFunction_New(&walk_later_def, loop);
    if (!args[0]) {
        Py_DECREF(token);
        return NULL;
    }
    args[1] = token;
    h = call_soon(loop, args, 2, NULL);
    Py_DECREF(args[0]);
    Py_DECREF(token);
    if (!h)
        return NULL;
    Py_DECREF(h);
    sb = lget(loop, L_SB);
    if (!sb)
        return NULL;
    fds = PyObject_CallMethodObjArgs(sb, s_fd_events, NULL);
    Py_DECREF(sb);
    if (!fds)
        return NULL;
    n = PyObject_Size(fds);
    if (n <= 0) {
        Py_DECREF(fds);
        if (n < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    v = PyObject_CallMethodObjArgs(loop, s_select_result, fds, NULL);
    Py_DECREF(fds);
    return v;
}

/* The wait, with the timeout in seconds (None: block).  The common case is
 * Batch.select, its rare results and the loop's odd states the Python
 * _select's.  A new reference to the fd events' list (possibly empty) or
 * Py_None; NULL with an exception. */
static PyObject *loop_wait(PyObject *loop, PyObject *timeout)
{
    PyObject *sb = NULL, *v, *r;
    int plain, known;

    /* The loop that waited last, alive: its _sb and _p need no lookup. */
    known = pe_py_loop_known(loop);
    if (!known) {
        sb = lget(loop, L_SB);
        if (!sb)
            return NULL;
    }
    plain = known || sb != Py_None;
    if (plain && !known) {
        v = lget(loop, L_P);
        plain = v && v != Py_None;
        Py_XDECREF(v);
    }
    if (plain) {
        v = lget(loop, L_REST);
        plain = v && v == Py_None;
        Py_XDECREF(v);
    }
    if (plain) {
        v = lget(loop, L_LATER);
        plain = v && v == Py_None;
        Py_XDECREF(v);
    }
    if (PyErr_Occurred()) {
        Py_XDECREF(sb);
        return NULL;
    }
    if (!plain) {
        Py_XDECREF(sb);
        return PyObject_CallMethodObjArgs(loop, s_select_py, timeout, NULL);
    }
    if (known) {
        r = pe_py_loop_select(timeout);
    } else {
        r = PyObject_CallMethodObjArgs(sb, s_select, timeout, NULL);
        Py_DECREF(sb);
    }
    if (!r) {
        /* As _select: the walk keeps its position for the next select. */
        PyObject *type, *value, *tb;

        PyErr_Fetch(&type, &value, &tb);
        if (PyObject_SetAttr(loop, s_rest, Py_True) < 0)
            PyErr_Clear();
        PyErr_Restore(type, value, tb);
        return NULL;
    }
    if (r == Py_None)
        return r;
    if (PyLong_CheckExact(r) && PyLong_AsLong(r) > 0)
        return queue_walk(loop, r);
    v = PyObject_CallMethodObjArgs(loop, s_select_result, r, NULL);
    Py_DECREF(r);
    return v;
}

/* A plain Handle's callback raised: as `except BaseException as exc:
 * _report_handle_failure(handle, exc)`, exc the handled exception
 * meanwhile; SystemExit and KeyboardInterrupt propagate.  0 or -1. */
static int handle_failed(PyObject *handle)
{
    return pe_py_report_raised(report_failure, handle, NULL);
}

/* Run one handle popped from _ready: 0, or -1 with an exception. */
static int run_handle(PyObject *h)
{
    PyObject *ctx = NULL, *cb = NULL, *args = NULL, *call = NULL, *r;
    Py_ssize_t i, na;
    int c;

    if (Py_TYPE(h) != handle_type) {
        c = attr_true(h, s_cancelled);
        if (c)
            return c < 0 ? -1 : 0;
        return call_drop(PyObject_CallMethodObjArgs(h, s_run, NULL));
    }
    r = hget(h, F_CANCELLED);
    if (!r)
        return -1;
    c = r == Py_False ? 0 : PyObject_IsTrue(r);
    Py_DECREF(r);
    if (c)
        return c < 0 ? -1 : 0;
    ctx = hget(h, F_CONTEXT);
    cb = ctx ? hget(h, F_CALLBACK) : NULL;
    args = cb ? hget(h, F_ARGS) : NULL;
    if (!args)
        goto fail;
    if ((PyObject *)Py_TYPE(ctx) != context_type ||
        !PyTuple_CheckExact(args)) {
        /* Not what call_soon makes: Handle._run's own way. */
        Py_DECREF(ctx);
        Py_DECREF(cb);
        Py_DECREF(args);
        return call_drop(PyObject_CallMethodObjArgs(h, s_run, NULL));
    }
    na = PyTuple_Size(args);
    if (na <= 2) {
        /* ctx.run(cb, *a) for the one or two arguments a Future's
         * callback or a task step has: no argument tuple made per call
         * (h holds ctx, cb and args meanwhile). */
        r = PyObject_CallFunctionObjArgs(
            context_run, ctx, cb, na > 0 ? PyTuple_GetItem(args, 0) : NULL,
            na > 1 ? PyTuple_GetItem(args, 1) : NULL, NULL);
        Py_DECREF(ctx);
        Py_DECREF(cb);
        Py_DECREF(args);
        if (r) {
            Py_DECREF(r);
            return 0;
        }
        return handle_failed(h);
    }
    call = PyTuple_New(na + 2);
    if (!call)
        goto fail;
    PyTuple_SetItem(call, 0, ctx);                      /* steals */
    PyTuple_SetItem(call, 1, cb);
    ctx = cb = NULL;
    for (i = 0; i < na; i++) {
        PyObject *a = PyTuple_GetItem(args, i);
        Py_INCREF(a);
        PyTuple_SetItem(call, i + 2, a);
    }
    Py_DECREF(args);
    r = PyObject_Call(context_run, call, NULL);         /* ctx.run(cb, *a) */
    Py_DECREF(call);
    if (r) {
        Py_DECREF(r);
        return 0;
    }
    return handle_failed(h);
fail:
    Py_XDECREF(ctx);
    Py_XDECREF(cb);
    Py_XDECREF(args);
    return -1;
}

/* EventLoop._run_once: the steps of _run_once_py (the stdlib's, in order). */
static PyObject *run_once(PyObject *loop, PyObject *unused)
{
    PyObject *scheduled = NULL, *ready = NULL, *timeout = NULL, *events;
    PyObject *h;
    Py_ssize_t n, todo, i;
    int t;

    t = ltrue(loop, L_DEBUG);
    if (t)
        return t < 0 ? NULL
                     : PyObject_CallMethodObjArgs(loop, s_run_once_py, NULL);
    scheduled = lget(loop, L_SCHEDULED);
    if (!scheduled)
        return NULL;
    if (!PyList_CheckExact(scheduled)) {
        Py_DECREF(scheduled);
        return PyObject_CallMethodObjArgs(loop, s_run_once_py, NULL);
    }
    n = PyList_Size(scheduled);
    if (n) {
        if (prune_timers(loop, scheduled, n) < 0)
            goto fail;
        Py_DECREF(scheduled);
        scheduled = lget(loop, L_SCHEDULED);    /* pruning renews it */
        if (!scheduled)
            goto fail;
    }
    ready = lready(loop);
    if (!ready || (n = PyObject_Size(ready)) < 0)
        goto fail;
    t = n ? 1 : ltrue(loop, L_STOPPING);
    if (t < 0)
        goto fail;
    if (t) {
        timeout = PyLong_FromLong(0);
    } else if (PyList_Size(scheduled) > 0) {
        PyObject *head = PyList_GetItem(scheduled, 0);
        double when, now;

        Py_INCREF(head);
        when = timer_when(head);
        Py_DECREF(head);
        if (when == -1.0 && PyErr_Occurred())
            goto fail;
        now = call_time(loop);
        if (now == -1.0 && PyErr_Occurred())
            goto fail;
        when -= now;
        if (when < 0)
            when = 0;
        if (when > max_select_timeout)
            when = max_select_timeout;
        timeout = PyFloat_FromDouble(when);
    } else {
        timeout = Py_None;
        Py_INCREF(timeout);
    }
    if (!timeout)
        goto fail;
    events = loop_wait(loop, timeout);
    Py_CLEAR(timeout);
    if (!events)
        goto fail;
    t = events == Py_None ? 0 : PyObject_IsTrue(events);
    if (t > 0)
        t = call_drop(PyObject_CallMethodObjArgs(loop, s_process_events,
                                                 events, NULL));
    Py_DECREF(events);
    if (t < 0)
        goto fail;
    if (PyList_Size(scheduled) > 0) {
        double end = call_time(loop), res;

        if (end == -1.0 && PyErr_Occurred())
            goto fail;
        res = ldouble(loop, L_CLOCK_RES);
        if (res == -1.0 && PyErr_Occurred())
            goto fail;
        end += res;
        while (PyList_Size(scheduled) > 0) {
            PyObject *head = PyList_GetItem(scheduled, 0);
            double when;

            Py_INCREF(head);
            when = timer_when(head);
            Py_DECREF(head);
            if (when == -1.0 && PyErr_Occurred())
                goto fail;
            if (when >= end)
                break;
            h = PyObject_CallFunctionObjArgs(heappop, scheduled, NULL);
            if (!h)
                goto fail;
            if (PyObject_SetAttr(h, s_scheduled_flag, Py_False) < 0 ||
                call_drop(PyObject_CallMethodObjArgs(ready, s_append, h,
                                                     NULL)) < 0) {
                Py_DECREF(h);
                goto fail;
            }
            Py_DECREF(h);
        }
    }
    /* Only the callbacks ready now; those they schedule run next time.
     * popleft called as a method: no bound method made per iteration for
     * the one or two callbacks a wakeup mostly has. */
    todo = PyObject_Size(ready);
    if (todo < 0)
        goto fail;
    for (i = 0; i < todo; i++) {
        h = ready_popleft(loop, ready);
        if (!h)
            goto fail;
        t = run_handle(h);
        handle_done(h);
        if (t < 0)
            goto fail;
    }
    Py_DECREF(ready);
    Py_DECREF(scheduled);
    Py_RETURN_NONE;
fail:
    Py_XDECREF(timeout);
    Py_XDECREF(ready);
    Py_XDECREF(scheduled);
    return NULL;
}

/* EventLoop.call_soon(callback, *args, context=None): a real
 * asyncio.Handle with every slot as Handle.__init__ sets it outside debug
 * mode, appended to _ready.  Debug mode, a closed loop, a non-callable
 * callback and odd arguments: _call_soon_py.  Called the vectorcall way
 * (args[0..nargs), then the values of the keywords named in kwnames): a
 * Future's done callbacks come with context=, and a keyword dict per
 * call was a third of this call's cost. */
static PyObject *call_soon(PyObject *loop, PyObject *const *args,
                           Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *ctx = Py_None, *cb, *cbargs = NULL, *h = NULL;
    Py_ssize_t i, nkw = kwnames ? PyTuple_Size(kwnames) : 0;
    int t;

    if (nargs < 1 || nkw > 1)
        goto python;
    if (nkw == 1) {
        PyObject *k = PyTuple_GetItem(kwnames, 0);

        /* _asyncio's "context" is not our interned string: the last
         * key object found equal is remembered, not compared again. */
        t = k == s_kw_context || k == kw_context_seen ? 1
            : PyObject_RichCompareBool(k, s_kw_context, Py_EQ);
        if (t < 0)
            return NULL;
        if (!t)
            goto python;
        if (k != kw_context_seen && PyUnicode_CheckExact(k))
            keep(&kw_context_seen, k);
        ctx = args[nargs];
    }
    cb = args[0];
    if (!PyCallable_Check(cb))
        goto python;
    if ((t = ltrue(loop, L_DEBUG)) != 0 ||
        (t = ltrue(loop, L_CLOSED)) != 0) {
        if (t < 0)
            return NULL;
        goto python;
    }
    if (ctx == Py_None)
        ctx = PyObject_CallObject(copy_context, NULL);
    else
        Py_INCREF(ctx);
    if (!ctx)
        return NULL;
    cbargs = PyTuple_New(nargs - 1);
    if (!cbargs)
        goto fail;
    for (i = 1; i < nargs; i++) {
        Py_INCREF(args[i]);
        PyTuple_SetItem(cbargs, i - 1, args[i]);        /* steals */
    }
    h = handle_reuse();
    if (h) {            /* _cancelled, _repr, _source_traceback are set */
        hset(h, F_CONTEXT, ctx);
        hset(h, F_LOOP, loop);
        hset(h, F_CALLBACK, cb);
        hset(h, F_ARGS, cbargs);
    } else {
        h = handle_new(handle_type, empty_tuple, NULL);
        if (!h ||
            hset(h, F_CONTEXT, ctx) < 0 || hset(h, F_LOOP, loop) < 0 ||
            hset(h, F_CALLBACK, cb) < 0 || hset(h, F_ARGS, cbargs) < 0 ||
            hset(h, F_CANCELLED, Py_False) < 0 ||
            hset(h, F_REPR, Py_None) < 0 || hset(h, F_SOURCE_TB, Py_None) < 0)
            goto fail;
    }
    Py_CLEAR(ctx);
    Py_CLEAR(cbargs);
    if (ready_append(loop, h) < 0)
        goto fail;
    return h;
fail:
    Py_XDECREF(ctx);
    Py_XDECREF(cbargs);
    Py_XDECREF(h);
    return NULL;
python:
    {
        /* _call_soon_py(*args, **kwargs): rebuilt as a tuple and a dict. */
        PyObject *f = NULL, *a = NULL, *kw = NULL, *r = NULL;

        f = PyObject_GetAttr(loop, s_call_soon_py);
        a = f ? PyTuple_New(nargs) : NULL;
        if (!a)
            goto pyfail;
        for (i = 0; i < nargs; i++) {
            Py_INCREF(args[i]);
            PyTuple_SetItem(a, i, args[i]);
        }
        if (nkw) {
            kw = PyDict_New();
            if (!kw)
                goto pyfail;
            for (i = 0; i < nkw; i++)
                if (PyDict_SetItem(kw, PyTuple_GetItem(kwnames, i),
                                   args[nargs + i]) < 0)
                    goto pyfail;
        }
        r = PyObject_Call(f, a, kw);
pyfail:
        Py_XDECREF(f);
        Py_XDECREF(a);
        Py_XDECREF(kw);
        return r;
    }
}

/* EventLoop.create_future(): BaseEventLoop's `futures.Future(loop=self)`,
 * without its Python frame (every StreamReader read makes one). */
static PyObject *create_future(PyObject *loop, PyObject *unused)
{
    PyObject *kw, *r;
    int t = ltrue(loop, L_DEBUG);

    if (t)      /* debug: the Future's source traceback shows this call */
        return t < 0 ? NULL
                     : PyObject_CallMethodObjArgs(loop, s_create_future_py,
                                                  NULL);
    kw = pe_py_loop_future_kw(loop);
    if (kw)                     /* the loop's own {"loop": loop} */
        return PyObject_Call(future_type, empty_tuple, kw);
    kw = PyDict_New();
    if (!kw)
        return NULL;
    if (PyDict_SetItem(kw, s_loop_kw, loop) < 0) {
        Py_DECREF(kw);
        return NULL;
    }
    r = PyObject_Call(future_type, empty_tuple, kw);
    Py_DECREF(kw);
    return r;
}

/* EventLoop.get_debug(): BaseEventLoop's `return self._debug`, without
 * its Python frame (every Future's __init__ asks it). */
static PyObject *get_debug(PyObject *loop, PyObject *unused)
{
    return lget(loop, L_DEBUG);
}

/* CTransport.is_closing(): `return self._closing`, without a Python frame
 * (StreamWriter.drain asks it per write). */
static PyObject *is_closing(PyObject *t, PyObject *unused)
{
    if (closing_get)
        return closing_get(closing_descr, t, NULL);
    return PyObject_GetAttr(t, s_closing);
}

static PyMethodDef run_once_def = {
    "_run_once", run_once, METH_NOARGS,
    "One iteration of the loop (C; see EventLoop._run_once_py)."
};

static PyMethodDef call_soon_def = {
    "call_soon", (PyCFunction)(void (*)(void))call_soon,
    METH_FASTCALL | METH_KEYWORDS,
    "call_soon(callback, *args, context=None) -> asyncio.Handle"
};

static PyMethodDef create_future_def = {
    "create_future", create_future, METH_NOARGS,
    "Create a Future object attached to the loop."
};

static PyMethodDef get_debug_def = {
    "get_debug", get_debug, METH_NOARGS, "The loop's debug mode."
};

static PyMethodDef is_closing_def = {
    "is_closing", is_closing, METH_NOARGS,
    "Return True if the transport is closing or closed."
};

/* Find where cls (EventLoop) keeps the loop fields, as probe_fields()
 * does for Handle, on an instance made by object.__new__ (no __init__;
 * its _closed ends True, so that its __del__ finds nothing to close).
 * 0, or -1 with an exception. */
static int probe_loop(PyObject *cls)
{
    PyObject *loop, *mark[NLFIELDS] = { NULL };
    Py_ssize_t size = type_ssize(cls, "__basicsize__"), found[NLFIELDS];
    int i, rc = -1;

    if (size < 0)
        return -1;
    loop = PyObject_CallMethod((PyObject *)&PyBaseObject_Type, "__new__",
                               "O", cls);
    if (!loop)
        return -1;
    for (i = 0; i < NLFIELDS; i++) {
        mark[i] = PyObject_CallObject((PyObject *)&PyBaseObject_Type, NULL);
        if (!mark[i] ||
            lfield_set(lfield_descr[i], loop, mark[i]) < 0)
            goto done;
    }
    if (find_marks(loop, size, mark, NLFIELDS, found)) {
        for (i = 0; i < NLFIELDS; i++)
            lfield_off[i] = found[i];
        loop_direct = 1;
    }
    rc = 0;
done:
    {
        PyObject *type, *value, *tb;

        PyErr_Fetch(&type, &value, &tb);
        if (lfield_set(lfield_descr[L_CLOSED], loop, Py_True) < 0)
            PyErr_Clear();
        PyErr_Restore(type, value, tb);
    }
    Py_DECREF(loop);
    for (i = 0; i < NLFIELDS; i++)
        Py_XDECREF(mark[i]);
    return rc;
}

/* cls's slots for the loop fields: their member descriptors when every
 * one is one (Handle's _context tells the type), else none (getattr). */
static int loop_slots(PyObject *cls)
{
    PyTypeObject *member_type = Py_TYPE(field_descr[F_CONTEXT]);
    descrgetfunc g = NULL;
    int i, all = 1;

    lfield_get = NULL;          /* getattr until all are known */
    Py_CLEAR(checked_type);
    for (i = 0; i < NLFIELDS; i++) {
        PyObject *descr = PyObject_GetAttr(cls, *lfield_name[i]);

        if (!descr) {
            if (!PyErr_ExceptionMatches(PyExc_AttributeError))
                return -1;
            PyErr_Clear();      /* no such slot: getattr */
            all = 0;
            continue;
        }
        all = all && Py_TYPE(descr) == member_type;
        keep(&lfield_descr[i], descr);
        Py_DECREF(descr);
    }
    if (all) {
        g = (descrgetfunc)PyType_GetSlot(member_type, Py_tp_descr_get);
        lfield_set = g ? (descrsetfunc)PyType_GetSlot(member_type,
                                                      Py_tp_descr_set)
                       : NULL;
        PyErr_Clear();          /* 3.9: no slots of a static type */
        if (!lfield_set)
            g = NULL;
    }
    keep((PyObject **)&loop_type, cls);
    lfield_get = g;
    loop_direct = 0;
    return g ? probe_loop(cls) : 0;
}

/* iter_methods(cls) -> (_run_once, call_soon, create_future, get_debug)
 * as method descriptors of cls */
static PyObject *iter_methods(PyObject *module, PyObject *cls)
{
    PyObject *a, *b, *c, *e;

    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "iter_methods() needs a class");
        return NULL;
    }
    if (!handle_type) {
        PyErr_SetString(PyExc_RuntimeError, "iter_init() was not called");
        return NULL;
    }
    if (loop_slots(cls) < 0)
        return NULL;
    a = PyDescr_NewMethod((PyTypeObject *)cls, &run_once_def);
    b = a ? PyDescr_NewMethod((PyTypeObject *)cls, &call_soon_def) : NULL;
    c = b ? PyDescr_NewMethod((PyTypeObject *)cls, &create_future_def) : NULL;
    e = c ? PyDescr_NewMethod((PyTypeObject *)cls, &get_debug_def) : NULL;
    if (!e) {
        Py_XDECREF(a);
        Py_XDECREF(b);
        Py_XDECREF(c);
        return NULL;
    }
    return Py_BuildValue("(NNNN)", a, b, c, e);
}

/* transport_methods(cls) -> (is_closing,) as method descriptors of cls,
 * which must have a `_closing` slot. */
static PyObject *transport_methods(PyObject *module, PyObject *cls)
{
    PyObject *descr, *a;
    descrgetfunc g;

    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "transport_methods() needs a class");
        return NULL;
    }
    descr = PyObject_GetAttr(cls, s_closing);
    if (!descr)
        return NULL;
    g = (descrgetfunc)PyType_GetSlot(Py_TYPE(descr), Py_tp_descr_get);
    PyErr_Clear();              /* 3.9: no slots of a static type */
    closing_get = NULL;         /* getattr until the new one is known */
    keep(&closing_descr, descr);
    Py_DECREF(descr);
    closing_get = g;
    a = PyDescr_NewMethod((PyTypeObject *)cls, &is_closing_def);
    return a ? Py_BuildValue("(N)", a) : NULL;
}

/* *slot = a new reference to v (a second iter_init replaces the first). */
static void keep(PyObject **slot, PyObject *v)
{
    PyObject *old = *slot;

    Py_INCREF(v);
    *slot = v;
    Py_XDECREF(old);
}

/* iter_init(Handle, Context, copy_context, heappop, report_failure,
 *           min_scheduled, min_cancelled_fraction, max_select_timeout,
 *           Future[, TimerHandle]) */
static PyObject *iter_init(PyObject *module, PyObject *args)
{
    PyObject *ht, *ct, *cc, *hp, *rf, *ft, *tt = NULL, *run;
    Py_ssize_t ms;
    double frac, mx;
    int i;

    if (!PyArg_ParseTuple(args, "O!O!OOOnddO!|O!", &PyType_Type, &ht,
                          &PyType_Type, &ct, &cc, &hp, &rf, &ms, &frac, &mx,
                          &PyType_Type, &ft, &PyType_Type, &tt))
        return NULL;
    if (!(PyType_GetFlags((PyTypeObject *)ht) & Py_TPFLAGS_HEAPTYPE)) {
        PyErr_SetString(PyExc_TypeError, "iter_init: Handle must be a class");
        return NULL;
    }
    run = PyObject_GetAttrString(ct, "run");
    if (!run)
        return NULL;
    keep(&context_run, run);
    Py_DECREF(run);
    keep((PyObject **)&handle_type, ht);
    handle_new = (newfunc)PyType_GetSlot(handle_type, Py_tp_new);
    for (i = 0; i < NFIELDS; i++) {
        PyObject *descr = PyObject_GetAttr(ht, *field_name[i]);
        descrgetfunc g;
        descrsetfunc st;

        if (!descr)
            return NULL;
        g = (descrgetfunc)PyType_GetSlot(Py_TYPE(descr), Py_tp_descr_get);
        st = g ? (descrsetfunc)PyType_GetSlot(Py_TYPE(descr),
                                              Py_tp_descr_set) : NULL;
        PyErr_Clear();          /* 3.9: no slots of a static type */
        field_get[i] = NULL;    /* the slow way until both are known */
        field_set[i] = NULL;
        keep(&field_descr[i], descr);
        Py_DECREF(descr);
        if (g && st) {
            field_get[i] = g;
            field_set[i] = st;
        }
    }
    if (probe_fields() < 0)
        return NULL;
    keep(&context_type, ct);
    keep(&copy_context, cc);
    keep(&heappop, hp);
    keep(&report_failure, rf);
    keep(&future_type, ft);
    when_get = NULL;            /* getattr unless TimerHandle's is known */
    if (tt) {
        PyObject *descr = PyObject_GetAttr(tt, s_when);
        descrgetfunc g;

        if (!descr)
            return NULL;
        g = Py_TYPE(descr) == Py_TYPE(field_descr[F_CONTEXT])
            ? (descrgetfunc)PyType_GetSlot(Py_TYPE(descr), Py_tp_descr_get)
            : NULL;
        PyErr_Clear();          /* 3.9: no slots of a static type */
        keep(&when_descr, descr);
        Py_DECREF(descr);
        keep((PyObject **)&timer_type, tt);
        when_get = g;
    }
    min_scheduled = ms;
    min_cancelled_fraction = frac;
    max_select_timeout = mx;
    Py_RETURN_NONE;
}

/* handle_pool() -> (direct, pooled, loop_direct): whether Handle's slots
 * are reached at their probed offsets (and Handles pooled), how many
 * Handles wait in the pool now, and whether the loop's slots are reached
 * at theirs (tests). */
static PyObject *handle_pool_state(PyObject *module, PyObject *unused)
{
    return Py_BuildValue("(OiO)", fields_direct ? Py_True : Py_False,
                         handle_pooled, loop_direct ? Py_True : Py_False);
}

static PyMethodDef iter_functions[] = {
    {"handle_pool", handle_pool_state, METH_NOARGS,
     "handle_pool() -> (direct, pooled, loop_direct): Handle slots by "
     "offset, the Handles call_soon may reuse now, loop slots by offset"},
    {"iter_init", iter_init, METH_VARARGS,
     "iter_init(Handle, Context, copy_context, heappop, report_failure, "
     "min_scheduled, min_cancelled_fraction, max_select_timeout, Future"
     "[, TimerHandle])"},
    {"iter_methods", iter_methods, METH_O,
     "iter_methods(cls) -> (_run_once, call_soon, create_future, get_debug) "
     "in C, as methods of cls"},
    {"transport_methods", transport_methods, METH_O,
     "transport_methods(cls) -> (is_closing,) in C, as methods of cls"},
    {NULL, NULL, 0, NULL},
};

static int name(PyObject **slot, const char *s)
{
    *slot = PyUnicode_InternFromString(s);
    return *slot ? 0 : -1;
}

int pe_py_add_iter(PyObject *m)
{
    if (name(&s_debug, "_debug") < 0 || name(&s_closed, "_closed") < 0 ||
        name(&s_ready, "_ready") < 0 || name(&s_scheduled, "_scheduled") < 0 ||
        name(&s_stopping, "_stopping") < 0 || name(&s_when, "_when") < 0 ||
        name(&s_cancelled, "_cancelled") < 0 ||
        name(&s_context, "_context") < 0 ||
        name(&s_callback, "_callback") < 0 || name(&s_args, "_args") < 0 ||
        name(&s_loop, "_loop") < 0 || name(&s_repr, "_repr") < 0 ||
        name(&s_source_tb, "_source_traceback") < 0 ||
        name(&s_time, "time") < 0 ||
        name(&s_clock_res, "_clock_resolution") < 0 ||
        name(&s_sb, "_sb") < 0 || name(&s_p, "_p") < 0 ||
        name(&s_rest, "_rest") < 0 || name(&s_later, "_later") < 0 ||
        name(&s_select, "select") < 0 ||
        name(&s_select_py, "_select_timeout") < 0 ||
        name(&s_select_result, "_select_result") < 0 ||
        name(&s_process_events, "_process_events") < 0 ||
        name(&s_run, "_run") < 0 ||
        name(&s_run_once_py, "_run_once_py") < 0 ||
        name(&s_call_soon_py, "_call_soon_py") < 0 ||
        name(&s_prune, "_prune_timers") < 0 ||
        name(&s_append, "append") < 0 || name(&s_popleft, "popleft") < 0 ||
        name(&s_scheduled_flag, "_scheduled") < 0 ||
        name(&s_kw_context, "context") < 0 ||
        name(&s_cancelled_count, "_timer_cancelled_count") < 0 ||
        name(&s_loop_kw, "loop") < 0 ||
        name(&s_closing, "_closing") < 0 ||
        name(&s_create_future_py, "_create_future_py") < 0 ||
        name(&s_walk_later, "_walk_later") < 0 ||
        name(&s_fd_events, "fd_events") < 0 ||
        name(&s_conns, "_conns") < 0 || name(&s_walk, "walk") < 0)
        return -1;
    empty_tuple = PyTuple_New(0);
    if (!empty_tuple)
        return -1;
    return PyModule_AddFunctions(m, iter_functions);
}

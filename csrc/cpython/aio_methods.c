/*
 * aio_methods.c - small methods of pyepoll.asyncio_loop's EventLoop in C
 * (docs/asyncio.md, "Speedups").
 *
 * aiohttp's request path calls a handful of one-line loop and transport
 * methods per request (issue 14): loop.time() (keep-alive, and the
 * iteration's own two reads when a timer is pending), loop.create_task()
 * (the handler task), and loop.get_debug() and transport.is_closing(),
 * which aio_iter.c serves (the streams ask them too).  On the stdlib's
 * loop each is a Python frame; uvloop has them in Cython.  Here they are the
 * stdlib's code step for step: time() calls base_events' `time.monotonic`
 * looked up at each call as the stdlib does (a patched clock is seen),
 * create_task builds `tasks.Task(coro, loop=self)` itself only in the
 * plain case and gives everything else to the stdlib's create_task.
 */
#include "speedups.h"

static PyObject *be_globals;        /* asyncio.base_events.__dict__ */
static PyObject *check_closed_py;   /* BaseEventLoop._check_closed */
static PyObject *create_task_py;    /* BaseEventLoop.create_task */
static int has_context;             /* create_task takes context= (3.11+) */
static PyObject *s_time_mod, *s_monotonic, *s_tasks, *s_Task, *s_debug,
    *s_closed, *s_task_factory, *s_check_closed, *s_name,
    *s_context, *s_loop;

/* time.monotonic itself, as small_methods() found it. */
static PyObject *monotonic_fn;

#ifdef __linux__
#include <time.h>

/* time.monotonic()'s value on Linux (CPython reads CLOCK_MONOTONIC and
 * converts its nanoseconds as _PyTime_AsSecondsDouble does), without the
 * call; elsewhere the clock time.monotonic reads may be another. */
static PyObject *monotonic_now(void)
{
    struct timespec ts;
    long long ns;

    if (clock_gettime(CLOCK_MONOTONIC, &ts) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    ns = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    if (ns % 1000000000LL == 0)
        return PyFloat_FromDouble((double)(ns / 1000000000LL));
    return PyFloat_FromDouble((double)ns / 1e9);
}
#endif

/* EventLoop.time(): `return time.monotonic()` in asyncio.base_events,
 * looked up at every call (a patched `time` or `time.monotonic` is seen);
 * a real module's attribute is read from its dict, and the real
 * monotonic on Linux is its clock read here. */
static PyObject *loop_time(PyObject *self, PyObject *unused)
{
    PyObject *mod = PyDict_GetItemWithError(be_globals, s_time_mod), *f, *r;

    if (!mod) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_NameError, "name 'time' is not defined");
        return NULL;
    }
    Py_INCREF(mod);
    f = NULL;
    if (PyModule_CheckExact(mod)) {
        f = PyDict_GetItemWithError(PyModule_GetDict(mod), s_monotonic);
        if (f)
            Py_INCREF(f);
        else if (PyErr_Occurred()) {
            Py_DECREF(mod);
            return NULL;
        }
    }
    if (!f)             /* not a module, or a module __getattr__'s */
        f = PyObject_GetAttr(mod, s_monotonic);
    Py_DECREF(mod);
    if (!f)
        return NULL;
#ifdef __linux__
    if (f == monotonic_fn) {
        Py_DECREF(f);
        return monotonic_now();
    }
#endif
    r = PyObject_CallObject(f, NULL);
    Py_DECREF(f);
    return r;
}

/* 1 when getattr(o, name) is None, 0 when not, -1 with an exception. */
static int attr_is_none(PyObject *o, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(o, name);

    if (!v)
        return -1;
    Py_DECREF(v);
    return v == Py_None;
}

/* The case create_task builds itself: coro alone (name and context absent
 * or None), no task factory, not in debug mode (whose Task keeps a source
 * traceback the stdlib trims), an open loop whose _check_closed is the
 * stdlib's.  1, 0, or -1 with an exception. */
static int plain_create_task(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *v;
    int t;

    if (PyTuple_Size(args) != 1)
        return 0;
    if (kw) {
        PyObject *key, *value;
        Py_ssize_t pos = 0;

        while (PyDict_Next(kw, &pos, &key, &value)) {
            if (value != Py_None)
                return 0;
            t = PyObject_RichCompareBool(key, s_name, Py_EQ);
            if (t == 0 && has_context)
                t = PyObject_RichCompareBool(key, s_context, Py_EQ);
            if (t <= 0)
                return t;
        }
    }
    v = PyObject_GetAttr(self, s_debug);
    if (!v)
        return -1;
    t = v == Py_False;
    Py_DECREF(v);
    if (!t)
        return 0;
    v = PyObject_GetAttr(self, s_closed);
    if (!v)
        return -1;
    t = v == Py_False;
    Py_DECREF(v);
    if (!t)
        return 0;
    v = PyObject_GetAttr((PyObject *)Py_TYPE(self), s_check_closed);
    if (!v)
        return -1;
    t = v == check_closed_py;
    Py_DECREF(v);
    if (!t)
        return 0;
    return attr_is_none(self, s_task_factory);
}

/* EventLoop.create_task(coro, *, name=None, context=None): plain,
 * `tasks.Task(coro, loop=self)` (tasks as base_events sees it); anything
 * else, the stdlib's create_task. */
static PyObject *loop_create_task(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *tasks, *task_type, *kwargs, *r;
    int t = plain_create_task(self, args, kw);

    if (t < 0)
        return NULL;
    if (!t) {
        PyObject *full = PyTuple_New(PyTuple_Size(args) + 1);
        Py_ssize_t i;

        if (!full)
            return NULL;
        Py_INCREF(self);
        PyTuple_SetItem(full, 0, self);
        for (i = 0; i < PyTuple_Size(args); i++) {
            PyObject *a = PyTuple_GetItem(args, i);

            Py_INCREF(a);
            PyTuple_SetItem(full, i + 1, a);
        }
        r = PyObject_Call(create_task_py, full, kw);
        Py_DECREF(full);
        return r;
    }
    tasks = PyDict_GetItemWithError(be_globals, s_tasks);
    if (!tasks) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_NameError, "name 'tasks' is not defined");
        return NULL;
    }
    Py_INCREF(tasks);
    task_type = PyObject_GetAttr(tasks, s_Task);
    Py_DECREF(tasks);
    if (!task_type)
        return NULL;
    /* The running loop's own {"loop": loop} (create_future's too): Task's
     * __init__ reads it and keeps no reference; else one made here. */
    kwargs = pe_py_loop_future_kw(self);
    if (kwargs) {
        Py_INCREF(kwargs);
    } else if (!(kwargs = PyDict_New()) ||
               PyDict_SetItem(kwargs, s_loop, self) < 0) {
        Py_XDECREF(kwargs);
        Py_DECREF(task_type);
        return NULL;
    }
    r = PyObject_Call(task_type, args, kwargs);
    Py_DECREF(kwargs);
    Py_DECREF(task_type);
    return r;
}

static PyMethodDef loop_time_def = {
    "time", loop_time, METH_NOARGS,
    "Return the time according to the event loop's clock (time.monotonic)."
};

static PyMethodDef loop_create_task_def = {
    "create_task", (PyCFunction)(void (*)(void))loop_create_task,
    METH_VARARGS | METH_KEYWORDS,
    "create_task(coro, *, name=None, context=None) -> asyncio.Task"
};

/* Each definition as a method descriptor of cls, in a dict by name. */
static int add_methods(PyObject *out, PyObject *cls, PyMethodDef **defs)
{
    for (; *defs; defs++) {
        PyObject *m = PyDescr_NewMethod((PyTypeObject *)cls, *defs);

        if (!m || PyDict_SetItemString(out, (*defs)->ml_name, m) < 0) {
            Py_XDECREF(m);
            return -1;
        }
        Py_DECREF(m);
    }
    return 0;
}

static PyMethodDef *loop_defs[] = {
    &loop_time_def, &loop_create_task_def, NULL,
};

/* *slot = v, a reference the caller gives (a second call replaces). */
static void replace(PyObject **slot, PyObject *v)
{
    PyObject *old = *slot;

    *slot = v;
    Py_XDECREF(old);
}

/* small_methods(loop_cls, base_events, has_context) -> a dict of name ->
 * method descriptor for setattr.  has_context: the stdlib's create_task takes context=
 * (3.11+; before, passing it is its TypeError). */
static PyObject *small_methods(PyObject *module, PyObject *args)
{
    PyObject *lc, *be, *g, *cc, *ct, *base, *lm;
    int ctx;

    if (!PyArg_ParseTuple(args, "O!O!p", &PyType_Type, &lc, &PyModule_Type,
                          &be, &ctx))
        return NULL;
    g = PyModule_GetDict(be);
    if (!g)
        return NULL;
    Py_INCREF(g);
    base = PyObject_GetAttrString(be, "BaseEventLoop");
    cc = base ? PyObject_GetAttr(base, s_check_closed) : NULL;
    ct = cc ? PyObject_GetAttrString(base, "create_task") : NULL;
    Py_XDECREF(base);
    if (!ct) {
        Py_XDECREF(cc);
        Py_DECREF(g);
        return NULL;
    }
    {
        PyObject *tm = PyImport_ImportModule("time");
        PyObject *mf = tm ? PyObject_GetAttr(tm, s_monotonic) : NULL;

        Py_XDECREF(tm);
        if (!mf) {
            Py_DECREF(g);
            Py_DECREF(cc);
            Py_DECREF(ct);
            return NULL;
        }
        replace(&monotonic_fn, mf);
    }
    replace(&be_globals, g);
    replace(&check_closed_py, cc);
    replace(&create_task_py, ct);
    has_context = ctx;
    if (!(lm = PyDict_New()))
        return NULL;
    if (add_methods(lm, lc, loop_defs) < 0) {
        Py_DECREF(lm);
        return NULL;
    }
    return lm;
}

static PyMethodDef methods_functions[] = {
    {"small_methods", small_methods, METH_VARARGS,
     "small_methods(EventLoop, asyncio.base_events, has_context) -> "
     "{name: loop method} in C"},
    {NULL, NULL, 0, NULL},
};

static int intern_as(PyObject **slot, const char *s)
{
    *slot = PyUnicode_InternFromString(s);
    return *slot ? 0 : -1;
}

int pe_py_add_methods(PyObject *m)
{
    if (intern_as(&s_time_mod, "time") < 0 ||
        intern_as(&s_monotonic, "monotonic") < 0 ||
        intern_as(&s_tasks, "tasks") < 0 || intern_as(&s_Task, "Task") < 0 ||
        intern_as(&s_debug, "_debug") < 0 ||
        intern_as(&s_closed, "_closed") < 0 ||
        intern_as(&s_task_factory, "_task_factory") < 0 ||
        intern_as(&s_check_closed, "_check_closed") < 0 ||
        intern_as(&s_name, "name") < 0 ||
        intern_as(&s_context, "context") < 0 ||
        intern_as(&s_loop, "loop") < 0)
        return -1;
    return PyModule_AddFunctions(m, methods_functions);
}

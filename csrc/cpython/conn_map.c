/*
 * conn_map.c - pyepoll._speedups.ConnMap: EventLoop._conns (handle ->
 * CTransport) as an array indexed by the handle's slot.
 *
 * The C walk finds the transport of every DATA event here.  In a dict
 * that took a new int object per event, its hash and a probe (some 390
 * instructions per message, issue 14); here it is an index and one
 * compare.  A handle is its connection's slot in the C loop's table (low
 * 32 bits) and that slot's generation (high 32 bits, never 0, bumped when
 * the slot is freed: csrc/loop/conntable.h), so an entry answers only to
 * the exact handle it was stored under: a stale handle, whose slot a new
 * connection took, finds nothing, as it would in the dict.
 *
 * The Python code keeps using it as the dict it replaces (get, pop,
 * [h] = t, values, clear, len, in); the pure-Python path (PyPy,
 * PYEPOLL_SPEEDUPS=0) keeps the dict.  The array grows to the highest slot
 * stored (16 bytes a slot; the C loop hands out never-used slots first,
 * so up to its max_connections).
 */
#include "speedups.h"

#include <string.h>

/* The C loop's table never has more slots (PE_CT_MAX, csrc/loop). */
#define SLOT_MAX 0x7FFFFFF0u

struct cm_entry {
    pe_handle h;                /* 0: empty */
    PyObject *t;                /* strong */
};

typedef struct {
    PyObject_HEAD
    struct cm_entry *tab;
    uint32_t cap;
    Py_ssize_t len;
} ConnMap;

PyTypeObject *pe_py_conn_map_type;

PyObject *pe_py_conn_of(PyObject *map, pe_handle h)
{
    ConnMap *m = (ConnMap *)map;
    uint32_t slot = (uint32_t)h;

    if (slot < m->cap && m->tab[slot].h == h && h)
        return m->tab[slot].t;
    return NULL;
}

/* The handle a key names; 0 for anything that cannot be one (another
 * type, negative, too big), which no entry matches, as a dict finds no
 * such key. */
static pe_handle key_of(PyObject *key)
{
    unsigned long long h;

    if (!PyLong_Check(key))
        return 0;
    h = PyLong_AsUnsignedLongLong(key);
    if (h == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return (pe_handle)h;
}

/* Removes h's entry: its transport (a new reference), or NULL. */
static PyObject *take(ConnMap *m, pe_handle h)
{
    PyObject *t = pe_py_conn_of((PyObject *)m, h);

    if (!t)
        return NULL;
    m->tab[(uint32_t)h].h = 0;
    m->tab[(uint32_t)h].t = NULL;
    m->len--;
    return t;
}

static int put(ConnMap *m, PyObject *key, PyObject *t)
{
    unsigned long long h;
    uint32_t slot;
    PyObject *old;

    if (!PyLong_Check(key)) {
        PyErr_SetString(PyExc_TypeError,
                        "ConnMap keys are connection handles (int)");
        return -1;
    }
    h = PyLong_AsUnsignedLongLong(key);
    if (h == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    slot = (uint32_t)h;
    if ((h >> 32) == 0 || slot >= SLOT_MAX) {
        PyErr_Format(PyExc_ValueError, "not a connection handle: %llu", h);
        return -1;
    }
    if (slot >= m->cap) {
        uint32_t cap = m->cap ? m->cap : 16;
        struct cm_entry *tab;

        while (cap <= slot)
            cap = cap > SLOT_MAX / 2 ? SLOT_MAX : cap * 2;
        tab = PyMem_Realloc(m->tab, (size_t)cap * sizeof(*tab));
        if (!tab) {
            PyErr_NoMemory();
            return -1;
        }
        memset(tab + m->cap, 0, (size_t)(cap - m->cap) * sizeof(*tab));
        m->tab = tab;
        m->cap = cap;
    }
    /* The old transport goes last: its __del__ may change the map. */
    old = m->tab[slot].t;
    if (!old)
        m->len++;
    Py_INCREF(t);
    m->tab[slot].h = (pe_handle)h;
    m->tab[slot].t = t;
    Py_XDECREF(old);
    return 0;
}

static PyObject *cm_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    if (PyTuple_Size(args) || (kw && PyDict_Size(kw))) {
        PyErr_SetString(PyExc_TypeError, "ConnMap() takes no arguments");
        return NULL;
    }
    return PyType_GenericAlloc(type, 0);
}

static int cm_traverse(PyObject *self, visitproc visit, void *arg)
{
    ConnMap *m = (ConnMap *)self;
    uint32_t i;

    Py_VISIT(Py_TYPE(self));
    for (i = 0; i < m->cap; i++)
        Py_VISIT(m->tab[i].t);
    return 0;
}

static PyObject *cm_clear_method(PyObject *self, PyObject *unused);

static int cm_clear(PyObject *self)
{
    PyObject *r = cm_clear_method(self, NULL);

    Py_XDECREF(r);
    return 0;
}

static void cm_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);

    PyObject_GC_UnTrack(self);
    cm_clear(self);
    PyMem_Free(((ConnMap *)self)->tab);
    ((freefunc)PyType_GetSlot(tp, Py_tp_free))(self);
    Py_DECREF(tp);
}

static Py_ssize_t cm_len(PyObject *self)
{
    return ((ConnMap *)self)->len;
}

static PyObject *cm_getitem(PyObject *self, PyObject *key)
{
    PyObject *t = pe_py_conn_of(self, key_of(key));

    if (!t) {
        PyErr_SetObject(PyExc_KeyError, key);
        return NULL;
    }
    Py_INCREF(t);
    return t;
}

static int cm_setitem(PyObject *self, PyObject *key, PyObject *t)
{
    if (t)
        return put((ConnMap *)self, key, t);
    t = take((ConnMap *)self, key_of(key));
    if (!t) {
        PyErr_SetObject(PyExc_KeyError, key);
        return -1;
    }
    Py_DECREF(t);
    return 0;
}

static int cm_contains(PyObject *self, PyObject *key)
{
    return pe_py_conn_of(self, key_of(key)) != NULL;
}

/* get(h, default=None) */
static PyObject *cm_get(PyObject *self, PyObject *args)
{
    PyObject *key, *dflt = Py_None, *t;

    if (!PyArg_ParseTuple(args, "O|O:get", &key, &dflt))
        return NULL;
    t = pe_py_conn_of(self, key_of(key));
    t = t ? t : dflt;
    Py_INCREF(t);
    return t;
}

/* pop(h[, default]) */
static PyObject *cm_pop(PyObject *self, PyObject *args)
{
    PyObject *key, *dflt = NULL, *t;

    if (!PyArg_ParseTuple(args, "O|O:pop", &key, &dflt))
        return NULL;
    t = take((ConnMap *)self, key_of(key));
    if (t)
        return t;
    if (!dflt) {
        PyErr_SetObject(PyExc_KeyError, key);
        return NULL;
    }
    Py_INCREF(dflt);
    return dflt;
}

enum { KEYS, VALUES, ITEMS };

/* A list of the keys, values or (key, value) pairs, in slot order. */
static PyObject *listing(PyObject *self, int what)
{
    ConnMap *m = (ConnMap *)self;
    PyObject *out = PyList_New(0), *item;
    uint32_t i;
    int rc;

    if (!out)
        return NULL;
    for (i = 0; i < m->cap; i++) {
        if (!m->tab[i].t)
            continue;
        if (what == VALUES) {
            Py_INCREF(m->tab[i].t);
            item = m->tab[i].t;
        } else if (what == KEYS) {
            item = PyLong_FromUnsignedLongLong(m->tab[i].h);
        } else {
            item = Py_BuildValue("(KO)", (unsigned long long)m->tab[i].h,
                                 m->tab[i].t);
        }
        rc = item ? PyList_Append(out, item) : -1;
        Py_XDECREF(item);
        if (rc < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}

static PyObject *cm_keys(PyObject *self, PyObject *unused)
{
    return listing(self, KEYS);
}

static PyObject *cm_values(PyObject *self, PyObject *unused)
{
    return listing(self, VALUES);
}

static PyObject *cm_items(PyObject *self, PyObject *unused)
{
    return listing(self, ITEMS);
}

static PyObject *cm_iter(PyObject *self)
{
    PyObject *keys = listing(self, KEYS), *it;

    if (!keys)
        return NULL;
    it = PyObject_GetIter(keys);
    Py_DECREF(keys);
    return it;
}

static PyObject *cm_clear_method(PyObject *self, PyObject *unused)
{
    ConnMap *m = (ConnMap *)self;
    uint32_t i;

    /* Each transport leaves the map before its reference goes: a __del__
     * that looks at (or changes) the map sees a consistent one. */
    for (i = 0; i < m->cap; i++) {
        PyObject *t = m->tab[i].t;

        if (!t)
            continue;
        m->tab[i].h = 0;
        m->tab[i].t = NULL;
        m->len--;
        Py_DECREF(t);
    }
    Py_RETURN_NONE;
}

static PyMethodDef cm_methods[] = {
    {"get", cm_get, METH_VARARGS, "get(h, default=None)"},
    {"pop", cm_pop, METH_VARARGS, "pop(h[, default])"},
    {"keys", cm_keys, METH_NOARGS, "keys() -> a list of the handles"},
    {"values", cm_values, METH_NOARGS, "values() -> a list of the transports"},
    {"items", cm_items, METH_NOARGS, "items() -> a list of (h, transport)"},
    {"clear", cm_clear_method, METH_NOARGS, "remove every entry"},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot cm_slots[] = {
    {Py_tp_new, cm_new},
    {Py_tp_dealloc, cm_dealloc},
    {Py_tp_traverse, cm_traverse},
    {Py_tp_clear, cm_clear},
    {Py_tp_iter, cm_iter},
    {Py_tp_methods, cm_methods},
    {Py_mp_length, cm_len},
    {Py_mp_subscript, cm_getitem},
    {Py_mp_ass_subscript, cm_setitem},
    {Py_sq_contains, cm_contains},
    {Py_tp_doc, "ConnMap(): handle -> transport, indexed by the handle's "
                "slot (EventLoop._conns on the C paths)"},
    {0, NULL},
};

static PyType_Spec cm_spec = {
    "pyepoll._speedups.ConnMap", sizeof(ConnMap), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, cm_slots,
};

int pe_py_add_conn_map(PyObject *m)
{
    pe_py_conn_map_type = (PyTypeObject *)PyType_FromSpec(&cm_spec);
    if (!pe_py_conn_map_type)
        return -1;
    Py_INCREF(pe_py_conn_map_type);
    if (PyModule_AddObject(m, "ConnMap",
                           (PyObject *)pe_py_conn_map_type) < 0) {
        Py_DECREF(pe_py_conn_map_type);
        return -1;
    }
    return 0;
}

/*
 * handler_floor.c - the floor of a server that calls Python per message.
 *
 * Loop.serve(on_data) promises one call of a Python function per message
 * and no other Python code.  Any loop that keeps that promise must still,
 * per round trip: give up the GIL while it sleeps in epoll_wait and take it
 * back (other threads must run meanwhile), make the message a bytes object,
 * and call the function.  This CPython extension does that and nothing
 * else: no connection table, no timeouts, no buffering, so that the bench
 * can measure the floor beside plain C and Loop.serve in one run.  It uses
 * Loop.serve's two savings that any loop can make (one argument tuple
 * refilled while nobody else holds it, the handle's int kept for the next
 * message from the same connection), so the floor is not set too high.
 *
 *   import handler_floor
 *   handler_floor.serve(listen_fd, handler)  # handler(fd, data) -> reply
 *
 * Level-triggered; a reply that is not bytes is not sent.  Ends with the
 * exception a signal handler or the handler raised.  Built at run time by
 * pyepoll.bench._serve (kind "floor-handler") against the running Python.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "write_all.h"

static void accept_all(int ep, int lfd)
{
    struct epoll_event ev;
    int c, one = 1;

    while ((c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        ev.events = EPOLLIN;
        ev.data.fd = c;
        epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
    }
}

/* handler(h, data) with the tuple *targs, refilled when only we hold it. */
static PyObject *call(PyObject *handler, PyObject **targs, PyObject *h,
                      PyObject *data)
{
    PyObject *r;

    if (*targs == NULL || Py_REFCNT(*targs) != 1) {
        Py_CLEAR(*targs);
        if (!(*targs = PyTuple_New(2))) {
            Py_DECREF(data);
            return NULL;
        }
    }
    Py_INCREF(h);
    PyTuple_SetItem(*targs, 0, h);          /* steals; drops the last ones */
    PyTuple_SetItem(*targs, 1, data);
    Py_INCREF(*targs);
    r = PyObject_Call(handler, *targs, NULL);
    Py_DECREF(*targs);
    return r;
}

static PyObject *serve(PyObject *self, PyObject *args)
{
    static char buf[65536];             /* used with the GIL held only */
    struct epoll_event ev, evs[256];
    PyObject *handler, *targs = NULL, *h = NULL, *data, *r;
    int lfd, ep, n, i, last = -1;

    (void)self;
    if (!PyArg_ParseTuple(args, "iO:serve", &lfd, &handler))
        return NULL;
    if ((ep = epoll_create1(EPOLL_CLOEXEC)) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    ev.events = EPOLLIN;
    ev.data.fd = lfd;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto out;
    }
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        n = epoll_wait(ep, evs, 256, -1);
        Py_END_ALLOW_THREADS
        if (n < 0) {
            if (errno != EINTR) {
                PyErr_SetFromErrno(PyExc_OSError);
                goto out;
            }
            if (PyErr_CheckSignals() < 0)
                goto out;
            continue;
        }
        for (i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            ssize_t got;

            if (fd == lfd) {
                accept_all(ep, lfd);
                continue;
            }
            got = read(fd, buf, sizeof(buf));
            if (got < 0 && (errno == EAGAIN || errno == EINTR))
                continue;               /* level-triggered: reported again */
            if (got <= 0) {
                close(fd);              /* EOF or error: also unregisters */
                continue;
            }
            /* h is the fd's number, right for whichever connection has it. */
            if (fd != last) {
                Py_XDECREF(h);
                if (!(h = PyLong_FromLong(fd)))
                    goto out;
                last = fd;
            }
            if (!(data = PyBytes_FromStringAndSize(buf, got)) ||
                !(r = call(handler, &targs, h, data)))
                goto out;
            if (PyBytes_Check(r) &&
                write_all(fd, PyBytes_AS_STRING(r),
                           (size_t)PyBytes_GET_SIZE(r)) < 0)
                close(fd);
            Py_DECREF(r);
        }
    }
out:
    close(ep);
    Py_XDECREF(targs);
    Py_XDECREF(h);
    return NULL;
}

static PyMethodDef methods[] = {
    {"serve", serve, METH_VARARGS,
     "serve(listen_fd, handler): call handler(fd, data) per message and "
     "send back the bytes it returns, until an exception"},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "handler_floor",
    "The floor of a server calling a Python function per message.", -1,
    methods, NULL, NULL, NULL, NULL
};

PyMODINIT_FUNC PyInit_handler_floor(void)
{
    return PyModule_Create(&module);
}

/*
 * loop_fd.c - what an event loop built on this one (asyncio) needs beyond
 * listeners: descriptors it watches itself, in the same wait as the
 * connections (pe_loop_watch), and sockets connected elsewhere made
 * connections (pe_loop_adopt, pe_loop_keep_fd), with writes that report
 * what is left queued (pe_loop_write), and files sent by the kernel
 * (pe_loop_sendfile).
 *
 * A watched fd is level-triggered even in an edge loop: asyncio's readers
 * and writers are told again while the fd stays ready, and run one
 * callback per wakeup, not a drain to EAGAIN.  Its interest lives in the
 * fd map's tag (PE_FD_FOREIGN | 1 read | 2 write), so watching costs no
 * table of its own.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/sendfile.h>
#endif

#include "loop.h"

static uint32_t tag_events(uint32_t v)
{
    return ((v & 1u) ? PE_READ : 0) | ((v & 2u) ? PE_WRITE : 0);
}

/* Stop watching fd (pe_loop_watch or pe_loop_watch_wake). */
static int unwatch(pe_loop *l, int fd)
{
    int rc = pe_poller_unregister(l->p, fd);

    l->fdmap[fd] = 0;
    /* Closed before it was forgotten: the close took the kernel's
     * registration along, which is what forgetting wanted. */
    return rc == -ENOENT || rc == -EBADF ? 0 : rc;
}

int pe__loop_watch(pe_loop *l, int fd, uint32_t events)
{
    uint32_t v, have;
    int rc;

    if (fd < 0)
        return -EBADF;
    if (events & ~(uint32_t)(PE_READ | PE_WRITE))
        return -EINVAL;
    v = fd < l->nfdmap ? l->fdmap[fd] : 0;
    if (v && (!PE_FD_IS_FOREIGN(v) || v == PE_FD_WAKE_ONLY))
        return -EEXIST;
    have = v ? tag_events(v) : 0;
    if (events == have)
        return 0;
    l->st.syscalls++;
    if (!events)
        return unwatch(l, fd);
    rc = have ? pe_poller_modify(l->p, fd, events)
              : pe_poller_register(l->p, fd, events);
    if (rc < 0) {
        if (have && (rc == -ENOENT || rc == -EBADF))
            l->fdmap[fd] = 0;        /* closed meanwhile: nothing watched */
        return rc;
    }
    return pe__loop_fdmap_set(l, fd, PE_FD_FOREIGN |
                                     ((events & PE_READ) ? 1u : 0) |
                                     ((events & PE_WRITE) ? 2u : 0));
}

int pe__loop_watch_wake(pe_loop *l, int fd, int on)
{
    uint32_t v;
    int rc;

    if (fd < 0)
        return -EBADF;
    v = fd < l->nfdmap ? l->fdmap[fd] : 0;
    if (v && v != PE_FD_WAKE_ONLY)
        return -EEXIST;
    if (!on == !v)
        return 0;
    l->st.syscalls++;
    if (!on)
        return unwatch(l, fd);
    if ((rc = pe_poller_register(l->p, fd, PE_READ)) < 0)
        return rc;
    if ((rc = pe__loop_fdmap_set(l, fd, PE_FD_WAKE_ONLY)) < 0)
        pe_poller_unregister(l->p, fd);
    return rc;
}

/* Read a wake-only fd empty (edge mode sees no new edge for bytes left
 * behind); its bytes (signal numbers) mean nothing here.  Bounded: a
 * writer faster than this loop is drained on the next wakeup. */
static void wake_drain(pe_loop *l, int fd)
{
    char buf[256];
    ssize_t n;
    int i;

    for (i = 0; i < 16; i++) {
        n = read(fd, buf, sizeof(buf));
        l->st.syscalls++;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < (ssize_t)sizeof(buf))
            break;                       /* a short read: it is empty */
    }
}

void pe__fd_event(pe_loop *l, uint32_t v, const struct pe_event *ev)
{
    uint32_t r = 0;

    if (v == PE_FD_WAKE_ONLY) {
        wake_drain(l, ev->fd);
        l->woke = 1;
        return;
    }

    /* As selectors do: an error or hangup wakes readers and writers. */
    if ((v & 1u) && (ev->events & (PE_READ | PE_PRI | PE_RDHUP | PE_ERR |
                                   PE_HUP)))
        r |= PE_READ;
    if ((v & 2u) && (ev->events & (PE_WRITE | PE_ERR | PE_HUP)))
        r |= PE_WRITE;
    if (r)
        pe__loop_emit(l, PE_EV_FD, r, (pe_handle)(uint32_t)ev->fd);
}

void pe__fd_forget_stale(pe_loop *l, int fd)
{
    /* The kernel dropped the old registration with the close (or keeps
     * one on another description, whose events the poller's generation
     * check drops); the poller's table must forget it too. */
    pe_poller_unregister(l->p, fd);
    l->st.syscalls++;
    l->fdmap[fd] = 0;
}

int pe__loop_adopt(pe_loop *l, int fd, uint32_t flags, pe_handle *out)
{
    uint32_t slot, v;
    struct pe_conn *c;
    int fl, rc;

    if (fd < 0)
        return -EBADF;
    if (flags & ~(uint32_t)(PE_ADOPT_PAUSED | PE_ADOPT_KEEPFD) || !out)
        return -EINVAL;
    v = fd < l->nfdmap ? l->fdmap[fd] : 0;
    if (v && !PE_FD_IS_FOREIGN(v))
        return -EEXIST;
    if ((fl = fcntl(fd, F_GETFL)) < 0)
        return -errno;
    if (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return -errno;
    if ((rc = pe__conn_attach(l, fd, &slot)) < 0)
        return rc;
    c = &l->ct.slots[slot];
    if (flags & PE_ADOPT_KEEPFD)
        c->flags |= PE_CF_KEEPFD;
    if (flags & PE_ADOPT_PAUSED) {
        /* Edge: bytes that came before the edge we will see must be read
         * on resume, so assume there may be some. */
        c->flags |= PE_CF_UPAUSE | PE_CF_RDMORE;
        if (pe__conn_interest(l, slot) < 0)
            return -EIO;             /* closed by a poller error: CLOSED */
    }
    *out = pe__ct_handle(&l->ct, slot);
    return 0;
}

int pe__loop_keep_fd(pe_loop *l, pe_handle h)
{
    struct pe_conn *c;

    if (!(c = pe__ct_get(&l->ct, h)))
        return -ESTALE;
    c->flags |= PE_CF_KEEPFD;
    return 0;
}

int pe__loop_notify_below(pe_loop *l, pe_handle h, uint32_t low)
{
    struct pe_conn *c;

    if (!(c = pe__ct_get(&l->ct, h)))
        return -ESTALE;
    /* Outside struct pe_conn, which must stay small for idle connections;
     * calloc'd pages cost nothing until a slot's mark is written. */
    if (!l->wlow && !(l->wlow = calloc(l->ct.cap, sizeof(*l->wlow))))
        return -ENOMEM;
    l->wlow[(uint32_t)h] = low;
    c->flags |= PE_CF_LOWARM;
    return 0;
}

int pe__loop_fd_handle(pe_loop *l, int fd, pe_handle *out)
{
    uint32_t v;
    pe_handle h;

    if (fd < 0 || fd >= l->nfdmap || !out)
        return -ENOENT;
    v = l->fdmap[fd];
    if (!v || v > PE_CT_MAX)
        return -ENOENT;              /* nothing, or a listener/watch tag */
    h = pe__ct_handle(&l->ct, v - 1);
    if (!pe__ct_get(&l->ct, h))
        return -ENOENT;              /* flushing after a FLUSH close */
    *out = h;
    return 0;
}

int64_t pe__loop_write(pe_loop *l, pe_handle h, const void *buf, size_t len)
{
    int64_t rc = pe__loop_send(l, h, buf, len);
    struct pe_conn *c;

    if (rc < 0)
        return rc;
    if (!(c = pe__ct_get(&l->ct, h)))
        return 0;                    /* the send closed it: CLOSED follows */
    return (int64_t)c->out.len;
}

int64_t pe__loop_sendfile(pe_loop *l, pe_handle h, int in_fd, int64_t offset,
                         size_t count)
{
#ifdef __linux__
    uint32_t slot = (uint32_t)h;
    struct pe_conn *c;
    off_t off = (off_t)offset;
    ssize_t n;
    int err;

    if (!(c = pe__ct_get(&l->ct, h)))
        return -ESTALE;
    if (c->flags & (PE_CF_SHUT_WANT | PE_CF_SHUT_DONE))
        return -EPIPE;
    if (c->out.len) {
        /* The file's bytes would overtake.  Deferred bytes make no DRAINED
         * when they leave whole, unless asked: the caller waits for one. */
        if (c->flags & PE_CF_DEFER)
            c->flags |= PE_CF_DREPORT;
        return -EBUSY;
    }
    if (in_fd < 0 || offset < 0)
        return -EINVAL;
    do {
        n = sendfile(c->fd, in_fd, &off, count);
    } while (n < 0 && errno == EINTR);
    l->st.syscalls++;
    if (n >= 0) {
        l->st.bytes_out += (uint64_t)n;
        if (n)
            pe__conn_touch(l, slot);
        return n;
    }
    err = errno;
    if (err == EAGAIN || err == EWOULDBLOCK) {
        c->flags |= PE_CF_WANTW;
        pe__conn_interest(l, slot);  /* level: watch for writable */
        return -EAGAIN;
    }
    if (err == EPIPE || err == ECONNRESET || err == ENOTCONN ||
        err == ETIMEDOUT)
        pe__conn_close(l, slot, err);
    return -err;
#else
    (void)l; (void)h; (void)in_fd; (void)offset; (void)count;
    return -ENOSYS;
#endif
}

/*
 * loop_accept.c - listeners and accepting.
 *
 * Listeners are unregistered while accepting is paused (table full under
 * PE_OVERFLOW_BACKLOG, or out of descriptors) and registered again when a
 * slot frees; epoll and kqueue report an already pending backlog at
 * registration, so edge mode loses nothing.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE                 /* accept4 */
#endif
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "loop.h"

/* --------------------------------------------------------------- listeners */

static int listener_sync(pe_loop *l, int id)
{
    struct pe_listener *li = &l->ls[id];
    int want = li->fd >= 0 && !l->accept_paused, rc = 0;

    if (want == li->registered)
        return 0;
    /* Edge listeners re-registered after a pause: epoll and kqueue report
     * a backlog that is already pending at registration. */
    if (want)
        rc = pe_poller_register(l->p, li->fd,
                                PE_READ | (l->cfg.edge ? PE_EDGE : 0));
    else
        pe_poller_unregister(l->p, li->fd);
    l->st.syscalls++;
    if (rc == 0)
        li->registered = want;
    return rc;
}

static void accept_pause(pe_loop *l, unsigned why)
{
    l->accept_paused |= why;
    for (int i = 0; i < l->nls; i++)
        listener_sync(l, i);
}

void pe__loop_accept_resume(pe_loop *l, unsigned why)
{
    if (!(l->accept_paused & why))
        return;
    l->accept_paused &= ~why;
    if (!l->accept_paused)
        for (int i = 0; i < l->nls; i++)
            listener_sync(l, i);
}

void pe__loop_slot_freed(pe_loop *l)
{
    pe__loop_accept_resume(l, PE_AP_FULL | PE_AP_EMFILE);
}

int pe__loop_add_listener(pe_loop *l, int fd)
{
    struct pe_listener *ls;
    int id = l->nls, fl, rc;

    if (fd < 0)
        return -EBADF;
    if (fd < l->nfdmap && l->fdmap[fd])
        return -EEXIST;
    if ((fl = fcntl(fd, F_GETFL)) < 0)
        return -errno;
    /* An edge-mode accept loop on a blocking socket would hang the loop. */
    if (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return -errno;
    if (!(ls = realloc(l->ls, (size_t)(id + 1) * sizeof(*ls))))
        return -ENOMEM;
    l->ls = ls;
    if ((rc = pe__loop_fdmap_set(l, fd, PE_FD_LISTENER | (uint32_t)id)) < 0)
        return rc;
    ls[id].fd = fd;
    ls[id].registered = 0;
    ls[id].ready = 0;
    ls[id].no_nodelay = 0;
    l->nls++;
    if ((rc = listener_sync(l, id)) < 0) {
        l->fdmap[fd] = 0;
        l->nls--;
        return rc;
    }
    return id;
}

int pe__loop_remove_listener(pe_loop *l, int id)
{
    struct pe_listener *li;

    if (id < 0 || id >= l->nls || l->ls[id].fd < 0)
        return -ENOENT;
    li = &l->ls[id];
    if (li->registered) {
        pe_poller_unregister(l->p, li->fd);
        l->st.syscalls++;
    }
    l->fdmap[li->fd] = 0;
    li->fd = -1;
    li->registered = li->ready = 0;
    return 0;
}

/* ------------------------------------------------------------------ accept */

static int do_accept(int lfd)
{
    int fd;
#ifdef __linux__
    fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
        return -errno;
#else
    int fl;

    if ((fd = accept(lfd, NULL, NULL)) < 0)
        return -errno;
    if ((fl = fcntl(fd, F_GETFL)) < 0 ||
        fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 ||
        fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
        int e = errno;

        close(fd);
        return -e;
    }
#endif
    return fd;
}

/* Out of descriptors (or kernel memory): the pending connection would be
 * reported again at once.  Spend the spare descriptor to accept and drop
 * it, then stop watching listeners until a connection closes or a second
 * passes, so there is no busy loop. */
static void on_accept_starved(pe_loop *l, int lfd, int err)
{
    l->st.accept_emfile += (err == EMFILE || err == ENFILE);
    if ((err == EMFILE || err == ENFILE) && l->reserve_fd >= 0) {
        int fd;

        close(l->reserve_fd);
        if ((fd = do_accept(lfd)) >= 0)
            close(fd);
        l->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        l->st.syscalls += 3 + (fd >= 0);
    }
    l->now = l->clock(l->clock_arg);
    l->emfile_until = l->now + PE_EMFILE_RETRY_MS;
    accept_pause(l, PE_AP_EMFILE);
}

static void set_nodelay(pe_loop *l, struct pe_listener *li, int fd)
{
    int one = 1;

    if (!l->cfg.nodelay || li->no_nodelay)
        return;
    l->st.syscalls++;
    /* Unix sockets refuse it; stop asking for this listener. */
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
        li->no_nodelay = 1;
}

void pe__loop_accept(pe_loop *l, int id)
{
    uint32_t n, limit = l->cfg.edge ? UINT32_MAX : l->cfg.accept_batch;
    struct pe_listener *li = &l->ls[id];
    int fd;

    for (n = 0; n < limit && li->fd >= 0 && li->registered; n++) {
        if (pe__ct_full(&l->ct) && l->cfg.overflow == PE_OVERFLOW_BACKLOG) {
            accept_pause(l, PE_AP_FULL);
            return;
        }
        fd = do_accept(li->fd);
        l->st.syscalls++;
        if (fd < 0) {
            if (fd == -EINTR || fd == -ECONNABORTED || fd == -EPROTO ||
                fd == -EPERM)
                continue;
            if (fd == -EMFILE || fd == -ENFILE || fd == -ENOBUFS ||
                fd == -ENOMEM)
                on_accept_starved(l, li->fd, -fd);
            return;                     /* EAGAIN and the unexpected */
        }
        if (pe__ct_full(&l->ct)) {      /* PE_OVERFLOW_CLOSE */
            close(fd);
            l->st.syscalls++;
            l->st.refused++;
            continue;
        }
        set_nodelay(l, li, fd);
        pe__conn_open(l, fd, id);
    }
}

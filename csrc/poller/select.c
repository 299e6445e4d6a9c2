/*
 * select.c - the select(2) backend: the portable last resort, and the
 * baseline the others are measured against.
 *
 * fds at or above FD_SETSIZE cannot be represented at all (FD_SET beyond
 * it writes out of bounds; fortified libcs abort): refused at register
 * with EINVAL, the error CPython reports as "filedescriptor out of range in
 * select()".  select() overwrites its sets, so every wait works on copies,
 * which also leaves the interest free for another thread's update while we
 * are blocked.  Errors and hangups show up as readable or writable, as
 * select reports them; the exceptional set (out-of-band data) is PE_PRI.
 * When more fds are ready than the caller takes, the scan resumes where it
 * stopped, so every ready fd is reported over successive calls.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/time.h>

#include "backend.h"

struct sel_state {
    fd_set   rd, wr, ex;            /* interest */
    fd_set   wrd, wwr, wex;         /* the copies a wait hands to select */
    int      maxfd;                 /* highest registered fd, -1: none */
    int      start;                 /* where the next scan begins */
    uint32_t gen[FD_SETSIZE];       /* 0: not registered */
    uint32_t wgen[FD_SETSIZE];
};

static int sel_init(pe_poller *p, int adopt_fd)
{
    struct sel_state *st = calloc(1, sizeof(*st));

    if (!st)
        return -ENOMEM;
    FD_ZERO(&st->rd);
    FD_ZERO(&st->wr);
    FD_ZERO(&st->ex);
    st->maxfd = -1;
    p->state = st;
    return 0;
}

static void sel_destroy(pe_poller *p)
{
    free(p->state);
    p->state = NULL;
}

static void set_bit(fd_set *s, int fd, int on)
{
    if (on)
        FD_SET(fd, s);
    else
        FD_CLR(fd, s);
}

static int sel_update(pe_poller *p, int fd, uint32_t old, uint32_t ev,
                      uint32_t gen)
{
    struct sel_state *st = p->state;

    /* A closed fd is taken, as select.select and selectors take it: the
     * waits fail with EBADF until it is unregistered. */
    if (!old && fd >= FD_SETSIZE)
        return -EINVAL;
    set_bit(&st->rd, fd, ev & PE_READ);
    set_bit(&st->wr, fd, ev & PE_WRITE);
    set_bit(&st->ex, fd, ev & PE_PRI);
    st->gen[fd] = ev ? gen : 0;
    if (ev && fd > st->maxfd)
        st->maxfd = fd;
    while (st->maxfd >= 0 && !st->gen[st->maxfd])
        st->maxfd--;
    return 0;
}

static int sel_wait(pe_poller *p, struct pe_raw_event *out, int max,
                    int timeout_ms)
{
    struct sel_state *st = p->state;
    struct timeval tv, *tvp = NULL;
    int nfds = st->maxfd + 1, ready, err, k, fd, cnt = 0;

    st->wrd = st->rd;
    st->wwr = st->wr;
    st->wex = st->ex;
    if (nfds)
        memcpy(st->wgen, st->gen, (size_t)nfds * sizeof(st->gen[0]));
    if (timeout_ms >= 0) {
        tv.tv_sec = timeout_ms / 1000;
        tv.tv_usec = (timeout_ms % 1000) * 1000;
        tvp = &tv;
    }
    pe__unlock(p);
    ready = select(nfds, &st->wrd, &st->wwr, &st->wex, tvp);
    err = errno;
    pe__lock(p);
    if (ready <= 0)
        return ready < 0 ? -err : 0;
    /* ready counts set bits, not fds. */
    fd = st->start < nfds ? st->start : 0;
    for (k = 0; k < nfds && ready > 0 && cnt < max; k++) {
        uint32_t ev = (FD_ISSET(fd, &st->wrd) ? PE_READ : 0) |
                      (FD_ISSET(fd, &st->wwr) ? PE_WRITE : 0) |
                      (FD_ISSET(fd, &st->wex) ? PE_PRI : 0);

        if (ev) {
            out[cnt].fd = fd;
            out[cnt].events = ev;
            out[cnt].gen = st->wgen[fd];
            cnt++;
            ready -= !!(ev & PE_READ) + !!(ev & PE_WRITE) + !!(ev & PE_PRI);
        }
        if (++fd == nfds)
            fd = 0;
    }
    st->start = fd;
    return cnt;
}

const struct pe_backend pe__select_backend = {
    .name = "select",
    .caps = PE_CAP_PRI,
    .init = sel_init,
    .destroy = sel_destroy,
    .update = sel_update,
    .wait = sel_wait,
    .kernel_checks = 0,
    .kev_size = 0,
};

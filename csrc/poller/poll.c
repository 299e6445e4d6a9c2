/*
 * poll.c - the poll(2) backend: everywhere, O(registered fds) per wait.
 *
 * The interest set is a dense pollfd array with an fd -> index map, so an
 * update is O(1) (delete moves the last entry into the hole).  A wait
 * polls a copy, not the array itself: poll() writes revents back at the
 * end, and another thread's update may move or reallocate the array while
 * we are blocked.  The copy costs a memcpy next to a kernel walk of every
 * fd.  When more fds are ready than the caller takes, the scan starts where
 * the previous one stopped, so every ready fd is reported over successive
 * calls (a full batch never hides an fd for good).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE                 /* POLLRDHUP */
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "backend.h"

struct poll_state {
    struct pollfd *pfd;         /* interest, dense */
    uint32_t      *gen;         /* generation of pfd[i] */
    int            n, cap;
    int           *idx;         /* fd -> index + 1, 0: absent */
    int            nidx;
    struct pollfd *wpfd;        /* the copy a wait polls */
    uint32_t      *wgen;
    int            wcap;
    int            start;       /* where the next scan begins */
};

static short to_poll(uint32_t ev)
{
    return (short)(((ev & PE_READ) ? POLLIN : 0) |
                   ((ev & PE_PRI) ? POLLPRI : 0) |
                   ((ev & PE_WRITE) ? POLLOUT : 0)
#ifdef POLLRDHUP
                   | ((ev & PE_RDHUP) ? POLLRDHUP : 0)
#endif
                   );
}

static uint32_t from_poll(short re)
{
    return ((re & POLLIN) ? PE_READ : 0) | ((re & POLLPRI) ? PE_PRI : 0) |
           ((re & POLLOUT) ? PE_WRITE : 0) | ((re & POLLHUP) ? PE_HUP : 0) |
           ((re & (POLLERR | POLLNVAL)) ? PE_ERR : 0)
#ifdef POLLRDHUP
           | ((re & POLLRDHUP) ? PE_RDHUP : 0)
#endif
           ;
}

/* Grow *arr of *cap elements of size sz to hold need; new room zeroed. */
static int grow(void **arr, int *cap, int need, size_t sz)
{
    int n = *cap ? *cap : 64;
    char *a;

    if (need <= *cap)
        return 0;
    while (n < need)
        n = n > (1 << 29) ? need : n * 2;
    if (!(a = realloc(*arr, (size_t)n * sz)))
        return -ENOMEM;
    memset(a + (size_t)*cap * sz, 0, (size_t)(n - *cap) * sz);
    *arr = a;
    *cap = n;
    return 0;
}

/* poll() takes closed fds (reporting POLLNVAL), and so do we, as
 * select.poll does; but fd indexes tables here and in the generic layer,
 * so a number no descriptor of ours could have is refused rather than
 * allocated for.  Asked only when the tables must grow. */
static int fd_possible(int fd)
{
    struct rlimit rl;

    if (fcntl(fd, F_GETFD) >= 0)
        return 1;
    return getrlimit(RLIMIT_NOFILE, &rl) == 0 &&
           (rl.rlim_cur == RLIM_INFINITY || (rlim_t)fd < rl.rlim_cur);
}

static int pl_init(pe_poller *p, int adopt_fd)
{
    if (!(p->state = calloc(1, sizeof(struct poll_state))))
        return -ENOMEM;
    return 0;
}

static void pl_destroy(pe_poller *p)
{
    struct poll_state *st = p->state;

    if (st) {
        free(st->pfd);
        free(st->gen);
        free(st->idx);
        free(st->wpfd);
        free(st->wgen);
        free(st);
        p->state = NULL;
    }
}

static int pl_update(pe_poller *p, int fd, uint32_t old, uint32_t ev,
                     uint32_t gen)
{
    struct poll_state *st = p->state;
    int i, cap, rc;

    if (!old) {
        if (fd >= st->nidx && !fd_possible(fd))
            return -EBADF;
        cap = st->cap;
        if ((rc = grow((void **)&st->pfd, &cap, st->n + 1, sizeof(*st->pfd))) < 0 ||
            (rc = grow((void **)&st->gen, &st->cap, st->n + 1, sizeof(*st->gen))) < 0 ||
            (rc = grow((void **)&st->idx, &st->nidx, fd + 1, sizeof(*st->idx))) < 0)
            return rc;
        i = st->n++;
        st->pfd[i].fd = fd;
        st->idx[fd] = i + 1;
    } else {
        i = st->idx[fd] - 1;
        if (!ev) {
            int last = --st->n;

            st->pfd[i] = st->pfd[last];
            st->gen[i] = st->gen[last];
            st->idx[st->pfd[i].fd] = i + 1;
            st->idx[fd] = 0;
            return 0;
        }
    }
    st->pfd[i].events = to_poll(ev);
    st->pfd[i].revents = 0;
    st->gen[i] = gen;
    return 0;
}

static int pl_wait(pe_poller *p, struct pe_raw_event *out, int max,
                   int timeout_ms)
{
    struct poll_state *st = p->state;
    int n = st->n, wcap = st->wcap, ready, err, i, k, cnt = 0;

    if (grow((void **)&st->wpfd, &wcap, n, sizeof(*st->wpfd)) < 0 ||
        grow((void **)&st->wgen, &st->wcap, n, sizeof(*st->wgen)) < 0)
        return -ENOMEM;
    if (n) {
        memcpy(st->wpfd, st->pfd, (size_t)n * sizeof(*st->pfd));
        memcpy(st->wgen, st->gen, (size_t)n * sizeof(*st->gen));
    }
    pe__unlock(p);
    ready = poll(st->wpfd, (nfds_t)n, timeout_ms < 0 ? -1 : timeout_ms);
    err = errno;
    pe__lock(p);
    if (ready <= 0)
        return ready < 0 ? -err : 0;
    i = st->start < n ? st->start : 0;
    for (k = 0; k < n && ready > 0 && cnt < max; k++) {
        const struct pollfd *q = &st->wpfd[i];

        if (q->revents) {
            out[cnt].fd = q->fd;
            out[cnt].events = from_poll(q->revents);
            out[cnt].gen = st->wgen[i];
            cnt++;
            ready--;
        }
        if (++i == n)
            i = 0;
    }
    st->start = i;
    return cnt;
}

const struct pe_backend pe__poll_backend = {
    .name = "poll",
    .caps = PE_CAP_PRI
#ifdef POLLRDHUP
            | PE_CAP_RDHUP
#endif
            ,
    .init = pl_init,
    .destroy = pl_destroy,
    .update = pl_update,
    .wait = pl_wait,
    .kernel_checks = 0,
    .kev_size = 0,
};

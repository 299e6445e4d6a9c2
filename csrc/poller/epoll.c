/*
 * epoll.c - the epoll backend (Linux).
 *
 * pe bits are epoll's bits, so nothing is translated.  What this file does
 * about epoll's known flaws:
 *   - a registration belongs to the open file, not the fd number: a closed
 *     fd whose file lives on through a dup keeps reporting under the old
 *     number.  Each registration's data carries a generation beside the fd
 *     ({fd, gen} laid out as epoll_data.fd plus the other half, so tools
 *     that read data.fd, CPython's select.epoll included, agree with us);
 *     the generic layer drops mismatches.
 *   - close() removes a registration silently, so our table can be stale:
 *     kernel_checks makes the generic layer ask epoll_ctl, which knows.
 *   - EPOLLEXCLUSIVE is refused by EPOLL_CTL_MOD (EINVAL): passed on as is.
 * The kernel's event array lives in the caller's scratch (kev_size), so
 * several threads may wait on one instance, as epoll allows.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>

#include "backend.h"

_Static_assert(PE_READ == EPOLLIN && PE_PRI == EPOLLPRI &&
               PE_WRITE == EPOLLOUT && PE_ERR == EPOLLERR &&
               PE_HUP == EPOLLHUP && PE_RDHUP == EPOLLRDHUP &&
               PE_ONESHOT == EPOLLONESHOT && PE_EDGE == (uint32_t)EPOLLET,
               "pe bits must equal epoll's");
#ifdef EPOLLEXCLUSIVE
_Static_assert(PE_EXCLUSIVE == EPOLLEXCLUSIVE, "pe bits must equal epoll's");
#endif

/* epoll_data as {fd, gen} in memory order: data.fd is the first member of
 * the union on either byte order. */
struct ep_tag {
    int32_t  fd;
    uint32_t gen;
};
_Static_assert(sizeof(struct ep_tag) == sizeof(epoll_data_t), "tag size");

static int ep_init(pe_poller *p, int adopt_fd)
{
    int fd = adopt_fd;

    /* An adopted descriptor is taken on trust, as select.epoll.fromfd does:
     * there is no way to check that it is an epoll without consuming its
     * pending events; a wrong one fails on first use with EINVAL/EBADF. */
    if (fd < 0) {
        fd = epoll_create1((p->flags & PE_POLLER_NOCLOEXEC) ? 0 : EPOLL_CLOEXEC);
        if (fd < 0)
            return -errno;
    }
    p->kfd = fd;
    return 0;
}

static void ep_destroy(pe_poller *p)
{
    if (p->kfd >= 0) {
        close(p->kfd);
        p->kfd = -1;
    }
}

static int ep_update(pe_poller *p, int fd, uint32_t old, uint32_t ev,
                     uint32_t gen)
{
    struct epoll_event e;
    struct ep_tag tag = {fd, gen};
    int op = !old ? EPOLL_CTL_ADD : ev ? EPOLL_CTL_MOD : EPOLL_CTL_DEL;

    e.events = ev;
    memcpy(&e.data, &tag, sizeof(tag));
    /* A non-NULL event on DEL too: kernels before 2.6.9 required it. */
    return epoll_ctl(p->kfd, op, fd, &e) < 0 ? -errno : 0;
}

static int ep_kwait(int kfd, struct pe_raw_event *out, int max,
                    int timeout_ms)
{
    struct epoll_event *kev = pe__kev_area(out, max);
    int n = epoll_wait(kfd, kev, max, timeout_ms < 0 ? -1 : timeout_ms), i;

    if (n < 0)
        return -errno;
    for (i = 0; i < n; i++) {
        struct ep_tag tag;

        memcpy(&tag, &kev[i].data, sizeof(tag));
        out[i].fd = tag.fd;
        out[i].gen = tag.gen;
        out[i].events = kev[i].events;
    }
    return n;
}

static int ep_wait(pe_poller *p, struct pe_raw_event *out, int max,
                   int timeout_ms)
{
    int kfd = p->kfd, n;

    pe__unlock(p);
    n = ep_kwait(kfd, out, max, timeout_ms);
    pe__lock(p);
    return n;
}

const struct pe_backend pe__epoll_backend = {
    .name = "epoll",
    .caps = PE_CAP_EDGE | PE_CAP_ONESHOT | PE_CAP_EXCLUSIVE | PE_CAP_FILENO |
            PE_CAP_RDHUP | PE_CAP_PRI,
    .init = ep_init,
    .destroy = ep_destroy,
    .update = ep_update,
    .wait = ep_wait,
    .kwait = ep_kwait,
    .kernel_checks = 1,
    .kev_size = sizeof(struct epoll_event),
};

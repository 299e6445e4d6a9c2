/*
 * kqueue.c - the kqueue backend (macOS, FreeBSD, NetBSD, OpenBSD).
 *
 * Where kqueue differs from epoll, and what this file does about it:
 *   - read and write are separate filters (knotes), each with its own flags
 *     and udata, reported as separate kevents: wait() merges them into one
 *     event per fd, in O(n) and without allocating.
 *   - EV_ADD on an existing knote updates udata but keeps the flags it was
 *     created with (EV_CLEAR, EV_DISPATCH): a change between edge, level
 *     and oneshot deletes and re-adds the filter.
 *   - EV_ADD never says EEXIST, so the generic table is authoritative
 *     (kernel_checks = 0); close() drops an fd's knotes silently, so ENOENT
 *     on EV_DELETE means "already gone".
 *   - EV_DISPATCH disables the filter that fired, not the whole fd as
 *     EPOLLONESHOT does; modify re-arms it (EV_ADD|EV_ENABLE).
 * Several threads may wait at once (kev_size): each fetches kevents into
 * its own scratch and merges under p->lock.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/types.h>
#include <sys/event.h>

#include "backend.h"

#define KQ_MODE (PE_EDGE | PE_ONESHOT)

/* fd -> index of its event in the output of the merge in progress;
 * validated on use, never cleared.  Merges run under p->lock, so waiters
 * share it; the kevents themselves go to each waiter's own scratch. */
struct kq_state {
    uint32_t *slot;
    int       nslot;
};

static int kq_open(unsigned flags)
{
    int cloexec = !(flags & PE_POLLER_NOCLOEXEC), fd, err;

#if defined(KQUEUE_CLOEXEC)                 /* FreeBSD 14+ */
    fd = kqueuex(cloexec ? KQUEUE_CLOEXEC : 0);
    cloexec = 0;
#elif defined(__NetBSD__)
    fd = kqueue1(cloexec ? O_CLOEXEC : 0);
    cloexec = 0;
#else
    /* macOS, OpenBSD: not atomic, which matters only for an exec without
     * fork in another thread (a fork child never inherits a kqueue). */
    fd = kqueue();
#endif
    if (fd < 0)
        return -errno;
    if (cloexec && fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
        err = errno;
        close(fd);
        return -err;
    }
    return fd;
}

static int kq_init(pe_poller *p, int adopt_fd)
{
    struct kq_state *st = calloc(1, sizeof(*st));
    struct timespec zero = {0, 0};
    int fd = adopt_fd;

    if (!st)
        return -ENOMEM;
    /* An empty, non-blocking kevent() fails with EBADF unless fd is a
     * kqueue: refuse another descriptor now rather than on first use. */
    if (fd >= 0 && kevent(fd, NULL, 0, NULL, 0, &zero) < 0)
        fd = -errno;
    else if (fd < 0)
        fd = kq_open(p->flags);
    if (fd < 0) {
        free(st);
        return fd;
    }
    p->kfd = fd;
    p->state = st;
    return 0;
}

static void kq_destroy(pe_poller *p)
{
    struct kq_state *st = p->state;

    if (p->kfd >= 0) {
        close(p->kfd);
        p->kfd = -1;
    }
    if (st) {
        free(st->slot);
        free(st);
        p->state = NULL;
    }
}

/* Make room for fd in the merge table; new entries are zeroed so that no
 * indeterminate value is ever read (the entries are validated anyway). */
static int kq_grow_slots(struct kq_state *st, int fd)
{
    uint32_t *s;
    int n = st->nslot ? st->nslot : 64;

    if (fd < st->nslot)
        return 0;
    while (n <= fd)
        n = n > INT32_MAX / 2 ? fd + 1 : n * 2;
    if (!(s = realloc(st->slot, (size_t)n * sizeof(*s))))
        return -ENOMEM;
    memset(s + st->nslot, 0, (size_t)(n - st->nslot) * sizeof(*s));
    st->slot = s;
    st->nslot = n;
    return 0;
}

/* Append the changes that take one filter from `old` to `ev`. */
static int kq_filter_changes(struct kevent *ch, int fd, int filter,
                             uint32_t bit, uint32_t old, uint32_t ev,
                             uint32_t gen)
{
    void *udata = (void *)(uintptr_t)gen;
    unsigned fl = EV_ADD | EV_ENABLE | EV_RECEIPT;
    int n = 0;

    if ((old & bit) && (!(ev & bit) || (old & KQ_MODE) != (ev & KQ_MODE))) {
        EV_SET(&ch[n], fd, filter, EV_DELETE | EV_RECEIPT, 0, 0, udata);
        n++;
    }
    if (ev & bit) {
        if (ev & PE_EDGE)
            fl |= EV_CLEAR;
        if (ev & PE_ONESHOT)
            fl |= EV_DISPATCH;
        /* Re-added even when unchanged: it stores the new generation and
         * re-arms a filter that EV_DISPATCH disabled. */
        EV_SET(&ch[n], fd, filter, fl, 0, 0, udata);
        n++;
    }
    return n;
}

static int kq_update(pe_poller *p, int fd, uint32_t old, uint32_t ev,
                     uint32_t gen)
{
    struct kq_state *st = p->state;
    struct kevent ch[4], rc[4];
    struct timespec zero = {0, 0};
    int n = 0, got, i, err = 0;

    if (ev && (err = kq_grow_slots(st, fd)) < 0)
        return err;
    n += kq_filter_changes(ch + n, fd, EVFILT_READ, PE_READ, old, ev, gen);
    n += kq_filter_changes(ch + n, fd, EVFILT_WRITE, PE_WRITE, old, ev, gen);
    if (n == 0)                 /* no filter: only ERR wanted (or nothing) */
        return ev && fcntl(fd, F_GETFD) < 0 ? -errno : 0;
    /* With EV_RECEIPT on every change the kernel applies them all, writes
     * one receipt each (EV_ERROR set, data = 0 or errno) and returns
     * without collecting pending events, which would be lost here.  (macOS
     * before 10.14 zeroed data in receipts: errors go unseen there.) */
    got = kevent(p->kfd, ch, n, rc, n, &zero);
    if (got < 0)
        return -errno;
    for (i = 0; i < got; i++) {
        /* ENOENT only comes from EV_DELETE (EV_ADD creates): the knote
         * went away with a close, which is what we wanted. */
        if ((rc[i].flags & EV_ERROR) && rc[i].data != 0 &&
            rc[i].data != ENOENT && err == 0)
            err = -(int)rc[i].data;
    }
    return err;
}

static uint32_t kq_bits(const struct kevent *kev)
{
    int eof = (kev->flags & EV_EOF) != 0, err = eof && kev->fflags != 0;

    if (kev->flags & EV_ERROR)
        return PE_ERR;
    /* Read EOF: the peer shut down writing; with a socket error (reset)
     * the connection is gone both ways, as epoll's IN|RDHUP|HUP|ERR says.
     * Write EOF: nothing more can be sent. */
    if (kev->filter == EVFILT_READ)
        return PE_READ | (eof ? PE_RDHUP : 0) | (err ? PE_HUP | PE_ERR : 0);
    if (kev->filter == EVFILT_WRITE)
        return PE_WRITE | (eof ? PE_HUP : 0) | (err ? PE_ERR : 0);
    return 0;                   /* a filter someone else added (adopted fd) */
}

/* A kevent that does not fit the batch goes back: EV_ENABLE makes the
 * kernel re-check the filter and queue it again if it still holds, which
 * also re-arms an EV_DISPATCH filter, so edge and oneshot registrations
 * lose nothing.  Only for the fd's current generation: an older udata
 * would overwrite the newer one. */
static void kq_requeue(pe_poller *p, const struct kevent *kev, uint32_t gen)
{
    struct pe_fdent *e = pe__fdent(p, (int)kev->ident);
    struct timespec zero = {0, 0};
    struct kevent ch;

    if (!e || !e->ev || e->gen != gen)
        return;
    EV_SET(&ch, kev->ident, kev->filter, EV_ENABLE, 0, 0, kev->udata);
    (void)kevent(p->kfd, &ch, 1, NULL, 0, &zero);
}

static int kq_wait(pe_poller *p, struct pe_raw_event *out, int max,
                   int timeout_ms)
{
    struct kevent *kev = pe__kev_area(out, max);
    struct kq_state *st = p->state;
    struct timespec ts, *tsp = NULL;
    int kfd = p->kfd, n, err, i, cnt = 0;
    /* When the batch holds every registration, fetch room for both
     * filters of each, so no fd is split across two calls; more fds than
     * max can then come back only through registrations made meanwhile. */
    int want = max >= p->nregistered ? 2 * max : max;

    if (timeout_ms >= 0) {
        ts.tv_sec = timeout_ms / 1000;
        ts.tv_nsec = (long)(timeout_ms % 1000) * 1000000L;
        tsp = &ts;
    }
    pe__unlock(p);
    n = kevent(kfd, NULL, 0, kev, want, tsp);
    err = errno;
    pe__lock(p);
    if (n < 0)
        return -err;
    for (i = 0; i < n; i++) {
        uint32_t bits = kq_bits(&kev[i]);
        uint32_t gen = (uint32_t)(uintptr_t)kev[i].udata;
        int fd = (int)kev[i].ident;
        uint32_t j = fd >= 0 && fd < st->nslot ? st->slot[fd] : UINT32_MAX;

        if (!bits)
            continue;
        /* The entry is this merge's only if it lies below cnt and names
         * fd; a generation mismatch stays separate so the generic layer
         * can drop the stale half.  fds beyond the table were registered
         * by someone else (adopted kqueue) and are passed on unmerged. */
        if (j < (uint32_t)cnt && out[j].fd == fd && out[j].gen == gen) {
            out[j].events |= bits;
        } else if (cnt == max) {
            kq_requeue(p, &kev[i], gen);
        } else {
            if (fd >= 0 && fd < st->nslot)
                st->slot[fd] = (uint32_t)cnt;
            out[cnt].fd = fd;
            out[cnt].events = bits;
            out[cnt].gen = gen;
            cnt++;
        }
    }
    return cnt;
}

const struct pe_backend pe__kqueue_backend = {
    .name = "kqueue",
    .caps = PE_CAP_EDGE | PE_CAP_ONESHOT | PE_CAP_FILENO | PE_CAP_RDHUP,
    .init = kq_init,
    .destroy = kq_destroy,
    .update = kq_update,
    .wait = kq_wait,
    .kernel_checks = 0,
    .kev_size = 2 * sizeof(struct kevent),  /* both filters of each fd */
};

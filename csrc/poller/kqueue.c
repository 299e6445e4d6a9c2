/*
 * kqueue.c - the kqueue backend (macOS, FreeBSD, NetBSD, OpenBSD).
 *
 * Where kqueue differs from epoll, and what this file does about it:
 *   - read and write are separate filters (knotes), each with its own flags
 *     and udata, reported as separate kevents: wait() merges them into one
 *     event per fd, in O(n) and without allocating.
 *   - A knote belongs to an fd number, not to the open file: close() drops
 *     the number's knotes silently (even while a dup keeps the file open;
 *     closing the dup leaves them alone), and EV_ADD never says EEXIST.  The
 *     generic table therefore answers EEXIST/ENOENT (kernel_checks = 0), and
 *     kq_gone tells it when a registration went away with a close.
 *   - modify deletes each kept filter and adds it again (kq_filter_changes
 *     says why), which re-arms an EV_DISPATCH filter the way EPOLLONESHOT
 *     is re-armed, and reports what is ready now, as EPOLL_CTL_MOD does.
 * Several threads may wait at once (kev_size): each fetches kevents into
 * its own scratch and merges under p->lock.
 *
 * libkqueue (the kqueue API over epoll on Linux), on which the test suite
 * runs this file in CI, cannot see a close(): its knotes outlive the fd.
 * kq_gone covers that by comparing the file itself (see there).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/types.h>
#include <sys/stat.h>
#include <sys/event.h>

#include "backend.h"

#define KQ_MODE (PE_EDGE | PE_ONESHOT)

/* The open file an fd number named when it was registered. */
struct kq_file {
    dev_t dev;
    ino_t ino;
};

/* slot: fd -> index of its event in the output of the merge in progress;
 * validated on use, never cleared.  Merges run under p->lock, so waiters
 * share it; the kevents themselves go to each waiter's own scratch.
 * file: fd -> the file registered under it (kq_gone). */
struct kq_state {
    uint32_t       *slot;
    struct kq_file *file;
    int             nslot;
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
        free(st->file);
        free(st);
        p->state = NULL;
    }
}

/* Make room for fd in the per-fd tables; new entries are zeroed so that
 * no indeterminate value is ever read (the slots are validated anyway). */
static int kq_grow_slots(struct kq_state *st, int fd)
{
    uint32_t *s;
    struct kq_file *f;
    int n = st->nslot ? st->nslot : 64;

    if (fd < st->nslot)
        return 0;
    while (n <= fd)
        n = n > INT32_MAX / 2 ? fd + 1 : n * 2;
    if (!(s = realloc(st->slot, (size_t)n * sizeof(*s))))
        return -ENOMEM;
    st->slot = s;
    if (!(f = realloc(st->file, (size_t)n * sizeof(*f))))
        return -ENOMEM;            /* slot is larger, which is harmless */
    memset(s + st->nslot, 0, (size_t)(n - st->nslot) * sizeof(*s));
    memset(f + st->nslot, 0, (size_t)(n - st->nslot) * sizeof(*f));
    st->file = f;
    st->nslot = n;
    return 0;
}

/* Append the changes that take one filter from interest `old` to `ev`.
 *
 * A filter in both is deleted and added again, never re-added in place.
 * What the kernels do with EV_ADD on an existing knote (kqueue(2)):
 *   - FreeBSD, macOS: udata, fflags and data are replaced and the filter
 *     is checked again, but the flags it was created with (EV_CLEAR,
 *     EV_DISPATCH) stay: a change of mode needs a new knote anyway.
 *   - OpenBSD, NetBSD (older releases at least): the same, but EV_ENABLE
 *     without EV_ADD only clears the disabled state, without checking the
 *     filter again: a oneshot re-armed that way would not report data
 *     that was already there.
 *   - libkqueue: EV_ADD (also EV_RECEIPT, or no flag) on an existing
 *     socket knote goes to the filter's modify, which refuses anything
 *     without EV_CLEAR: the receipt then holds whatever errno was left
 *     over (EPERM, EAGAIN, EINTR... or 0) and udata is not updated.
 * A new knote behaves the same everywhere: it is checked at attach, so
 * modify reports what is ready now (as EPOLL_CTL_MOD does), takes the
 * mode asked for, and re-arms an EV_DISPATCH filter.  Its EV_DELETE also
 * says ENOENT when a close took the registration (kq_update). */
static int kq_filter_changes(struct kevent *ch, int fd, int filter,
                             uint32_t bit, uint32_t old, uint32_t ev,
                             uint32_t gen)
{
    void *udata = (void *)(uintptr_t)gen;
    unsigned fl = EV_ADD | EV_ENABLE | EV_RECEIPT;
    int n = 0;

    if (old & bit) {
        EV_SET(&ch[n], fd, filter, EV_DELETE | EV_RECEIPT, 0, 0, udata);
        n++;
    }
    if (ev & bit) {
        if (ev & PE_EDGE)
            fl |= EV_CLEAR;
        if (ev & PE_ONESHOT)
            fl |= EV_DISPATCH;
        EV_SET(&ch[n], fd, filter, fl, 0, 0, udata);
        n++;
    }
    return n;
}

/* Delete fd's filters named in ev, errors ignored (cleaning up). */
static void kq_delete(pe_poller *p, int fd, uint32_t ev)
{
    struct kevent ch[2], rc[2];
    struct timespec zero = {0, 0};
    int n = 0;

    if (ev & PE_READ)
        EV_SET(&ch[n++], fd, EVFILT_READ, EV_DELETE | EV_RECEIPT, 0, 0, 0);
    if (ev & PE_WRITE)
        EV_SET(&ch[n++], fd, EVFILT_WRITE, EV_DELETE | EV_RECEIPT, 0, 0, 0);
    if (n)
        (void)kevent(p->kfd, ch, n, rc, n, &zero);
}

static int kq_update(pe_poller *p, int fd, uint32_t old, uint32_t ev,
                     uint32_t gen)
{
    struct kq_state *st = p->state;
    struct kevent ch[4], rc[4];
    struct timespec zero = {0, 0};
    struct stat sb;
    int n = 0, got, i, err = 0, gone = 0;

    if (ev && (err = kq_grow_slots(st, fd)) < 0)
        return err;
    if (!old && ev) {              /* a registration: remember its file */
        if (fstat(fd, &sb) < 0)
            return -errno;
        st->file[fd].dev = sb.st_dev;
        st->file[fd].ino = sb.st_ino;
    }
    n += kq_filter_changes(ch + n, fd, EVFILT_READ, PE_READ, old, ev, gen);
    n += kq_filter_changes(ch + n, fd, EVFILT_WRITE, PE_WRITE, old, ev, gen);
    if (n == 0)                 /* no filter: only ERR wanted (or nothing) */
        return ev && fcntl(fd, F_GETFD) < 0 ? -errno : 0;
    /* With EV_RECEIPT on every change the kernel applies them all, writes
     * one receipt each (EV_ERROR set, data = 0 or errno), in order, and
     * returns without collecting pending events, which would be lost
     * here.  (macOS before 10.14 zeroed data in receipts: errors go
     * unseen there.) */
    got = kevent(p->kfd, ch, n, rc, n, &zero);
    if (got < 0)
        return -errno;
    for (i = 0; i < got; i++) {
        if (!(rc[i].flags & EV_ERROR) || rc[i].data == 0)
            continue;
        /* ENOENT only comes from EV_DELETE (EV_ADD creates): a close took
         * the knote along. */
        if (rc[i].data == ENOENT)
            gone = 1;
        else if (err == 0)
            err = -(int)rc[i].data;
    }
    if (gone && ev) {
        /* A modify of a registration that a close took along (epoll says
         * the same): what was just added belongs to whatever file holds
         * the number now, and goes. */
        kq_delete(p, fd, ev);
        return fcntl(fd, F_GETFD) < 0 ? -EBADF : -ENOENT;
    }
    if (err && ev && !old)
        kq_delete(p, fd, ev);      /* a register is all or nothing */
    return err;                    /* unregister: gone is what was wanted */
}

/* Whether fd's registration (interest ev, generation gen) went away with
 * a close, so that a register of the same number must succeed.
 *   - Another file under the number: the registered one was closed (its
 *     knotes went with it; libkqueue keeps them, dead: they are deleted).
 *   - The same file, as far as fstat tells (the BSDs give every socket
 *     inode 0, so there it tells only pipes and files apart): still
 *     registered, unless the number was closed meanwhile, which only the
 *     kernel knows: a change that changes nothing (flags 0, same udata)
 *     says ENOENT then.  On the BSDs and macOS this answers for sockets.
 *     libkqueue, whose knotes outlive a close, calls the registration
 *     live; its modify path may fail that change with a leftover errno,
 *     which is why errno is cleared first and only ENOENT counts.
 * Returns -EBADF (fd closed) or -ENOENT (another file) when gone, 0 when
 * live. */
static int kq_gone(pe_poller *p, int fd, uint32_t ev, uint32_t gen)
{
    struct kq_state *st = p->state;
    struct timespec zero = {0, 0};
    struct kevent ch;
    struct stat sb;

    if (fstat(fd, &sb) < 0) {
        kq_delete(p, fd, ev);
        return -EBADF;
    }
    if (fd < st->nslot && (st->file[fd].dev != sb.st_dev ||
                           st->file[fd].ino != sb.st_ino)) {
        kq_delete(p, fd, ev);
        return -ENOENT;
    }
    if (!(ev & (PE_READ | PE_WRITE)))
        return 0;                  /* no knote to ask about */
    EV_SET(&ch, fd, (ev & PE_READ) ? EVFILT_READ : EVFILT_WRITE, 0, 0, 0,
           (void *)(uintptr_t)gen);
    errno = 0;
    if (kevent(p->kfd, &ch, 1, NULL, 0, &zero) < 0 && errno == ENOENT) {
        kq_delete(p, fd, ev);      /* the other filter, if any */
        return -ENOENT;
    }
    return 0;
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
    .gone = kq_gone,
    .kernel_checks = 0,
    .kev_size = 2 * sizeof(struct kevent),  /* both filters of each fd */
};

/*
 * poller.c - the generic poller: policy on top of one backend (backend.h).
 *
 * What lives here and why:
 *   - The fd table (interest + generation per fd) is what lets a wait drop
 *     events of a registration that changed meanwhile: a closed fd whose
 *     number was reused, an fd re-registered or unregistered by another
 *     thread while the kernel was filling our batch.  Every register takes
 *     a fresh generation; modify keeps it (events already collected are
 *     still for the same registration, and are masked by the new interest).
 *   - epoll knows its registrations better than we do (a close removes
 *     them silently), so for kernel_checks backends the kernel answers
 *     EEXIST/ENOENT and the table follows it; elsewhere the table answers.
 *   - PE_POLLER_RAW (the select.epoll drop-in) passes bits untouched both
 *     ways and delivers whatever the kernel reports, registrations made
 *     through another object sharing the descriptor included.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"

#define PE_CONDITIONS (PE_READ | PE_PRI | PE_WRITE | PE_ERR | PE_HUP | PE_RDHUP)
#define PE_FLAGS      (PE_EXCLUSIVE | PE_ONESHOT | PE_EDGE)
#define PE_ALWAYS     (PE_ERR | PE_HUP)    /* reported whatever the interest */

static const struct pe_backend *const backends[] = {
#ifdef PE_HAVE_EPOLL
    &pe__epoll_backend,
#endif
#ifdef PE_HAVE_KQUEUE
    &pe__kqueue_backend,
#endif
    &pe__poll_backend,
    &pe__select_backend,
};
#define NBACKENDS ((int)(sizeof(backends) / sizeof(backends[0])))

const char *pe_backends(void)
{
    return
#ifdef PE_HAVE_EPOLL
        "epoll,"
#endif
#ifdef PE_HAVE_KQUEUE
        "kqueue,"
#endif
        "poll,select";
}

static const struct pe_backend *find_backend(const char *name)
{
    int i;

    if (!name)
        return backends[0];
    for (i = 0; i < NBACKENDS; i++)
        if (strcmp(backends[i]->name, name) == 0)
            return backends[i];
    return NULL;
}

static pe_poller *make(const char *backend, int fd, unsigned flags, int *err)
{
    const struct pe_backend *be = find_backend(backend);
    pe_poller *p = NULL;
    int rc = 0;

    if (flags & ~(unsigned)(PE_POLLER_RAW | PE_POLLER_NOCLOEXEC))
        rc = -EINVAL;
    else if (!be)
        rc = -ENOSYS;
    else if ((flags & PE_POLLER_RAW) && strcmp(be->name, "epoll") != 0)
        rc = -EOPNOTSUPP;          /* raw bits mean epoll's bits */
    else if (fd != -1 && !(be->caps & PE_CAP_FILENO))
        rc = -EINVAL;
    else if (!(p = calloc(1, sizeof(*p))))
        rc = -ENOMEM;
    if (rc == 0) {
        p->be = be;
        p->kfd = -1;
        p->flags = flags;
        p->next_gen = 1;
        if ((rc = -pthread_mutex_init(&p->lock, NULL)) == 0) {
            pe__lock(p);
            rc = be->init(p, fd);
            pe__unlock(p);
            if (rc < 0)
                pthread_mutex_destroy(&p->lock);
        }
        if (rc < 0) {
            free(p);
            p = NULL;
        }
    }
    if (err)
        *err = rc;
    return p;
}

pe_poller *pe_poller_new(const char *backend, unsigned flags, int *err)
{
    return make(backend, -1, flags, err);
}

pe_poller *pe_poller_fromfd(const char *backend, int fd, unsigned flags,
                            int *err)
{
    if (fd < 0) {
        if (err)
            *err = -EBADF;
        return NULL;
    }
    return make(backend, fd, flags, err);
}

void pe_poller_free(pe_poller *p)
{
    if (!p)
        return;
    p->be->destroy(p);             /* closes kfd unless already -1 */
    pthread_mutex_destroy(&p->lock);
    while (p->nretired > 0)
        free(p->retired[--p->nretired]);
    free(p->fds);
    free(p->raw);
    free(p);
}

/* Memory stays until pe_poller_free: a wait in another thread may still be
 * using the table and its scratch. */
int pe_poller_close(pe_poller *p)
{
    int rc = 0;

    pe__lock(p);
    if (!p->closed) {
        /* Atomic stores: lock-free waits read both without the lock. */
        __atomic_store_n(&p->closed, 1, __ATOMIC_RELEASE);
        if (p->kfd >= 0 && close(p->kfd) < 0 && errno != EINTR)
            rc = -errno;           /* EINTR: the descriptor is gone anyway */
        __atomic_store_n(&p->kfd, -1, __ATOMIC_RELEASE);
    }
    pe__unlock(p);
    return rc;
}

/* No lock: it is meant for a forked child, where no other thread runs but
 * the lock may have been held by a parent thread at fork time. */
void pe_poller_detach(pe_poller *p)
{
    __atomic_store_n(&p->closed, 1, __ATOMIC_RELEASE);
    __atomic_store_n(&p->kfd, -1, __ATOMIC_RELEASE);
}

int pe_poller_fileno(const pe_poller *p)
{
    return p->closed ? -1 : p->kfd;
}

const char *pe_poller_backend(const pe_poller *p)
{
    return p->be->name;
}

unsigned pe_poller_caps(const pe_poller *p)
{
    return p->be->caps;
}

int pe_poller_count(const pe_poller *p)
{
    return p->closed ? -EBADF : p->nregistered;
}

/* ------------------------------------------------------- registrations */

static int check_events(const pe_poller *p, uint32_t events)
{
    unsigned caps = p->be->caps;

    if (p->flags & PE_POLLER_RAW)
        return 0;
    if (events & ~(uint32_t)(PE_CONDITIONS | PE_FLAGS))
        return -EINVAL;
    if (((events & PE_EDGE) && !(caps & PE_CAP_EDGE)) ||
        ((events & PE_ONESHOT) && !(caps & PE_CAP_ONESHOT)) ||
        ((events & PE_EXCLUSIVE) && !(caps & PE_CAP_EXCLUSIVE)))
        return -EOPNOTSUPP;
    return 0;
}

/* A new table, never a realloc: a lock-free wait may still read the old
 * one, which is retired until pe_poller_free (doubling keeps the retired
 * ones smaller than the live one together).  fds is published before
 * nfds, so a reader that sees the new length sees the new table. */
static int grow_table(pe_poller *p, int fd)
{
    struct pe_fdent *t;
    int n = p->nfds ? p->nfds : 64;

    while (n <= fd)
        n = n > (1 << 29) ? fd + 1 : n * 2;
    if (p->fds && p->nretired == (int)(sizeof(p->retired) /
                                       sizeof(p->retired[0])))
        return -ENOMEM;            /* unreachable with doubling */
    if (!(t = malloc((size_t)n * sizeof(*t))))
        return -ENOMEM;
    if (p->nfds)
        memcpy(t, p->fds, (size_t)p->nfds * sizeof(*t));
    memset(t + p->nfds, 0, (size_t)(n - p->nfds) * sizeof(*t));
    if (p->fds)
        p->retired[p->nretired++] = p->fds;
    __atomic_store_n(&p->fds, t, __ATOMIC_RELEASE);
    __atomic_store_n(&p->nfds, n, __ATOMIC_RELEASE);
    return 0;
}

static uint32_t new_gen(pe_poller *p)
{
    uint32_t g = p->next_gen++;

    if (p->next_gen == 0)          /* 0 never names a registration */
        p->next_gen = 1;
    return g;
}

/* Record a registration the backend accepted.  The table grows only for
 * descriptors the kernel (or the backend's own check) found open, so a
 * bogus huge fd never allocates. */
static int record(pe_poller *p, int fd, uint32_t ev, uint32_t gen)
{
    struct pe_fdent *e = pe__fdent(p, fd);
    int rc;

    if (!e) {
        if ((rc = grow_table(p, fd)) < 0)
            return rc;
        e = &p->fds[fd];
    }
    p->nregistered += !e->ev;
    __atomic_store_n(&e->ev, ev, __ATOMIC_RELAXED);
    __atomic_store_n(&e->gen, gen, __ATOMIC_RELAXED);
    return 0;
}

static void forget(pe_poller *p, struct pe_fdent *e)
{
    p->nregistered -= !!e->ev;
    __atomic_store_n(&e->ev, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&e->gen, 0, __ATOMIC_RELAXED);
}

/* Common entry of the calls that change the table: lock, refuse a closed
 * poller or a negative fd, and make seq odd (a seqlock write section,
 * see backend.h: lock-free waits that overlap it filter again under the
 * lock).  leave() ends it. */
static int enter(pe_poller *p, int fd)
{
    pe__lock(p);
    if (p->closed || fd < 0) {
        pe__unlock(p);
        return -EBADF;
    }
    __atomic_store_n(&p->seq, p->seq + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    return 0;
}

static void leave(pe_poller *p)
{
    __atomic_store_n(&p->seq, p->seq + 1, __ATOMIC_RELEASE);
    pe__unlock(p);
}

int pe_poller_register(pe_poller *p, int fd, uint32_t events)
{
    struct pe_fdent *e;
    uint32_t ev = events | PE_ERR, gen;
    int rc;

    if ((rc = enter(p, fd)) < 0)
        return rc;
    if ((rc = check_events(p, events)) < 0)
        goto out;
    e = pe__fdent(p, fd);
    /* With kernel_checks a table entry may be stale (fd closed, number
     * reused): the kernel's add decides, and success replaces it. */
    if (e && e->ev && !p->be->kernel_checks) {
        rc = -EEXIST;
        goto out;
    }
    gen = new_gen(p);
    if ((rc = p->be->update(p, fd, 0, ev, gen)) < 0)
        goto out;
    if ((rc = record(p, fd, ev, gen)) < 0)
        p->be->update(p, fd, ev, 0, gen);
out:
    leave(p);
    return rc;
}

int pe_poller_modify(pe_poller *p, int fd, uint32_t events)
{
    struct pe_fdent *e;
    uint32_t ev = events | PE_ERR, gen;
    int rc;

    if ((rc = enter(p, fd)) < 0)
        return rc;
    if ((rc = check_events(p, events)) < 0)
        goto out;
    e = pe__fdent(p, fd);
    if (e && e->ev) {
        rc = p->be->update(p, fd, e->ev, ev, e->gen);
        if (rc == 0)
            __atomic_store_n(&e->ev, ev, __ATOMIC_RELAXED);
        else if (p->be->kernel_checks && (rc == -ENOENT || rc == -EBADF))
            forget(p, e);          /* the kernel dropped it with a close */
    } else if (!p->be->kernel_checks) {
        rc = -ENOENT;
    } else {
        /* Unknown here, maybe registered through another object sharing
         * the descriptor: the kernel decides, and success adopts it. */
        gen = new_gen(p);
        if ((rc = p->be->update(p, fd, PE_ERR, ev, gen)) == 0)
            rc = record(p, fd, ev, gen);
    }
out:
    leave(p);
    return rc;
}

int pe_poller_unregister(pe_poller *p, int fd)
{
    struct pe_fdent *e;
    int rc;

    if ((rc = enter(p, fd)) < 0)
        return rc;
    e = pe__fdent(p, fd);
    if (e && e->ev) {
        rc = p->be->update(p, fd, e->ev, 0, e->gen);
        /* ENOENT/EBADF: the fd was closed, taking the registration along;
         * the kernel's answer is still reported, as epoll_ctl would. */
        if (rc == 0 || rc == -ENOENT || rc == -EBADF)
            forget(p, e);
    } else if (!p->be->kernel_checks) {
        rc = -ENOENT;
    } else {
        rc = p->be->update(p, fd, PE_ERR, 0, 0);
    }
    leave(p);
    return rc;
}

/* ---------------------------------------------------------------- wait */

static size_t scratch_bytes(const struct pe_backend *be, int max)
{
    return pe__kev_offset(max) + (size_t)max * be->kev_size;
}

/* Deliver what the table still stands behind: an event counts only if its
 * fd is registered under the same generation, and only for bits in the
 * current interest (ERR/HUP always).  Raw mode keeps everything.  Written
 * branch-free: the loop runs once per kernel event.  The loads are atomic
 * because a lock-free wait runs this while a writer may change the table
 * (the seqlock then discards the result); nfds before fds (see
 * grow_table). */
static int deliver(const pe_poller *p, const struct pe_raw_event *raw, int n,
                   struct pe_event *out)
{
    static const struct pe_fdent none = {0, 0};
    uint32_t nfds = (uint32_t)__atomic_load_n(&p->nfds, __ATOMIC_ACQUIRE);
    const struct pe_fdent *fds = __atomic_load_n(&p->fds, __ATOMIC_ACQUIRE);
    uint32_t always = (p->flags & PE_POLLER_RAW) ? ~0u : PE_ALWAYS;
    uint32_t keep_unknown = (p->flags & PE_POLLER_RAW) ? 1 : 0;
    int i, cnt = 0;

    for (i = 0; i < n; i++) {
        int32_t fd = raw[i].fd;
        const struct pe_fdent *e = (uint32_t)fd < nfds ? &fds[fd] : &none;
        uint32_t eev = __atomic_load_n(&e->ev, __ATOMIC_RELAXED);
        uint32_t egen = __atomic_load_n(&e->gen, __ATOMIC_RELAXED);
        uint32_t ok = ((egen == raw[i].gen) & (eev != 0)) | keep_unknown;
        uint32_t ev = raw[i].events & (eev | always) & (0u - ok);

        out[cnt].fd = fd;          /* cnt <= i < max: always in bounds */
        out[cnt].events = ev;
        cnt += ev != 0;
    }
    return cnt;
}

/* deliver() without the lock when no writer overlaps it (seq even and
 * unchanged), else again under the lock. */
static int deliver_seq(pe_poller *p, const struct pe_raw_event *raw, int n,
                       struct pe_event *out)
{
    unsigned seq = __atomic_load_n(&p->seq, __ATOMIC_ACQUIRE);
    int cnt;

    if (!(seq & 1)) {
        cnt = deliver(p, raw, n, out);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&p->seq, __ATOMIC_RELAXED) == seq)
            return cnt;
    }
    pe__lock(p);
    cnt = deliver(p, raw, n, out);
    pe__unlock(p);
    return cnt;
}

/* The wait of a kwait backend (see backend.h): no lock unless a writer
 * overlaps the filtering.  Same results as the locked path below. */
static int wait_lockfree(pe_poller *p, struct pe_event *out, int max,
                         int timeout_ms)
{
    const struct pe_backend *be = p->be;
    struct pe_raw_event *raw, *own = NULL;
    int kfd = __atomic_load_n(&p->kfd, __ATOMIC_ACQUIRE), n, cnt;

    if (kfd < 0)
        return -EBADF;             /* closed */
    if (__atomic_exchange_n(&p->waiting, 1, __ATOMIC_ACQUIRE)) {
        /* Another thread waits with the shared scratch: a private one. */
        if (!(raw = own = malloc(scratch_bytes(be, max))))
            return -ENOMEM;
    } else {
        if (max > p->nraw) {       /* once per larger batch, not per call */
            void *r = realloc(p->raw, scratch_bytes(be, max));

            if (!r) {
                __atomic_store_n(&p->waiting, 0, __ATOMIC_RELEASE);
                return -ENOMEM;
            }
            p->raw = r;
            p->nraw = max;
        }
        raw = p->raw;
    }
    n = be->kwait(kfd, raw, max, timeout_ms);
    if (n > 0) {
        /* As collect(): a full batch thinned by stale entries is topped
         * up once without blocking. */
        cnt = deliver_seq(p, raw, n, out);
        if (n == max && cnt < n) {
            n = be->kwait(kfd, raw, max - cnt, 0);
            if (n > 0)
                cnt += deliver_seq(p, raw, n, out + cnt);
        }
        n = cnt;
    }
    if (__atomic_load_n(&p->closed, __ATOMIC_ACQUIRE))
        n = -EBADF;
    if (own)
        free(own);
    else
        __atomic_store_n(&p->waiting, 0, __ATOMIC_RELEASE);
    return n;
}

/* Backend wait into the scratch, then filter into out.  A full batch that
 * lost entries to staleness (epoll keeps a closed fd's registration while
 * a dup of its file lives) is topped up once without blocking, so stale
 * registrations never crowd out live ones for a whole call.  Every entry
 * still being stale can make a wait return 0 before its timeout. */
static int collect(pe_poller *p, struct pe_raw_event *raw, int max,
                   struct pe_event *out, int timeout_ms)
{
    int n = p->be->wait(p, raw, max, timeout_ms), cnt;

    if (n <= 0 || p->closed)
        return p->closed ? -EBADF : n;
    cnt = deliver(p, raw, n, out);
    if (n == max && cnt < n) {
        n = p->be->wait(p, raw, max - cnt, 0);
        if (n > 0 && !p->closed)
            cnt += deliver(p, raw, n, out + cnt);
    }
    return cnt;
}

static inline int wait_into(pe_poller *p, struct pe_event *out,
                            int maxevents, int timeout_ms)
{
    const struct pe_backend *be = p->be;
    struct pe_raw_event *raw, *own = NULL;
    int max = maxevents, n;

    if (maxevents <= 0)
        return -EINVAL;
    if (be->kwait)
        return wait_lockfree(p, out, maxevents, timeout_ms);
    pe__lock(p);
    if (p->closed) {
        n = -EBADF;
        goto out;
    }
    /* Where the backend itself forgets closed fds, results are bounded by
     * the registrations: keep the scratch small when callers pass a
     * generous maxevents.  epoll may hold more (stale, or made elsewhere). */
    if (!be->kernel_checks && max > p->nregistered)
        max = p->nregistered > 0 ? p->nregistered : 1;
    if (p->waiting) {
        n = -EBUSY;
        if (!be->kev_size || !(raw = own = malloc(scratch_bytes(be, max))))
            goto out;
        n = collect(p, raw, max, out, timeout_ms);
    } else {
        if (max > p->nraw) {       /* once per larger batch, not per call */
            void *r = realloc(p->raw, scratch_bytes(be, max));

            if (!r) {
                n = -ENOMEM;
                goto out;
            }
            p->raw = r;
            p->nraw = max;
        }
        raw = p->raw;
        p->waiting = 1;
        n = collect(p, raw, max, out, timeout_ms);
        p->waiting = 0;
    }
out:
    pe__unlock(p);
    free(own);
    return n;
}

int pe_poller_wait(pe_poller *p, struct pe_event *out, int maxevents,
                   int timeout_ms)
{
    return wait_into(p, out, maxevents, timeout_ms);
}

/* See pyepoll.h: claim, wait, and hand one event back in the result. */
static inline int waiter_run(struct pe_waiter *w, int timeout_ms)
{
    int n;

    if (!w->poller)
        return -EBADF;             /* a binding's stand-in for closed */
    if (__atomic_exchange_n(&w->busy, 1, __ATOMIC_ACQUIRE))
        return -EBUSY;
    n = wait_into(w->poller, w->out,
                  w->maxevents < PE_WAIT_MAX_EVENTS ? w->maxevents
                                                    : PE_WAIT_MAX_EVENTS,
                  timeout_ms);
    if (n == 1) {
        uint32_t fd = (uint32_t)w->out[0].fd, ev = w->out[0].events;

        if (ev == PE_READ && fd <= (uint32_t)(INT_MAX - PE_WAIT_READ_BASE))
            n = PE_WAIT_READ_BASE + (int)fd;
        else if (fd < 65535 && ev < 0x4000)
            n = -(PE_WAIT_ONE_BASE + (int)(fd << 14 | ev));
    }
    if (n <= 0 || n >= PE_WAIT_READ_BASE)   /* nothing left in out */
        __atomic_store_n(&w->busy, 0, __ATOMIC_RELEASE);
    return n;
}

int pe_waiter_poll(struct pe_waiter *w)
{
    return waiter_run(w, 0);
}

int pe_waiter_block(struct pe_waiter *w)
{
    return waiter_run(w, -1);
}

int pe_waiter_wait(struct pe_waiter *w)
{
    return waiter_run(w, w->timeout_ms);
}

void pe_waiter_release(struct pe_waiter *w)
{
    __atomic_store_n(&w->busy, 0, __ATOMIC_RELEASE);
}

/*
 * poller_wait.c - the generic poller's waits: pe_poller_wait and the
 * waiters (struct pe_waiter, one-pointer waits for bindings).
 *
 * A wait asks the backend for raw events (fd, generation, bits) and keeps
 * what the fd table still stands behind (deliver): the registration
 * changed meanwhile, the event is dropped.  epoll waits take no lock while
 * nothing changes the table (wait_lockfree, see backend.h); the other
 * backends wait with the poller's mutex held around everything but the
 * kernel call.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>

#include "backend.h"

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

/* The wait of a kwait backend on a PE_POLLER_OWNED poller: no other
 * thread can be inside it, so the scratch is free, the table cannot change
 * under deliver() and the poller cannot close meanwhile.  Same results as
 * wait_lockfree. */
static int wait_owned(pe_poller *p, struct pe_event *out, int max,
                      int timeout_ms)
{
    const struct pe_backend *be = p->be;
    int n, cnt;

    if (p->closed)
        return -EBADF;
    if (max > p->nraw) {           /* once per larger batch, not per call */
        void *r = realloc(p->raw, scratch_bytes(be, max));

        if (!r)
            return -ENOMEM;
        p->raw = r;
        p->nraw = max;
    }
    n = be->kwait(p->kfd, p->raw, max, timeout_ms);
    if (n <= 0)
        return n;
    cnt = deliver(p, p->raw, n, out);
    if (n == max && cnt < n) {     /* topped up as in collect() */
        n = be->kwait(p->kfd, p->raw, max - cnt, 0);
        if (n > 0)
            cnt += deliver(p, p->raw, n, out + cnt);
    }
    return cnt;
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
        return (p->flags & PE_POLLER_OWNED)
                   ? wait_owned(p, out, maxevents, timeout_ms)
                   : wait_lockfree(p, out, maxevents, timeout_ms);
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
    if (n <= 0 || n >= PE_WAIT_READ_BASE) {  /* nothing left in out */
        __atomic_store_n(&w->busy, 0, __ATOMIC_RELEASE);
    } else {
        int i, all = 1;

        for (i = 0; i < n; i++)
            all &= w->out[i].events == PE_READ;
        w->all_read = all;
    }
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

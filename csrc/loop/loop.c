/*
 * loop.c - the connection loop: lifecycle, run(), timeouts, the event
 * queue.  Accepting lives in loop_accept.c, per-connection I/O in
 * loop_io.c, the handle API in loop_api.c.
 *
 * One run: read the clock (only if a timeout is configured), wait for at
 * most the time to the earliest deadline, handle connection events, then
 * pending reads, then accepts, then expiries, and hand out queued events.
 * Accepting after every connection event of the batch matters: a
 * connection closed while handling the batch frees its fd number, and an
 * accept that reused the number before a later event of the same batch was
 * handled would apply that stale event to the new connection.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "loop.h"

static uint64_t mono_ms(void *arg)
{
    struct timespec ts;

    (void)arg;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void pe__loop_set_clock(pe_loop *l, uint64_t (*fn)(void *), void *arg)
{
    l->clock = fn ? fn : mono_ms;
    l->clock_arg = arg;
    l->now = l->clock(arg);
}

void pe_loop_config_init(struct pe_loop_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->max_conns = 1024;
    cfg->overflow = PE_OVERFLOW_BACKLOG;
    cfg->in_high = 64 * 1024;
    cfg->in_low = 16 * 1024;
    cfg->out_high = 64 * 1024;
    cfg->out_max = 16 * 1024 * 1024;
    cfg->accept_batch = 64;
    cfg->nodelay = 1;
}

/* ------------------------------------------------------------ event queue */

static int queue_grow(pe_loop *l)
{
    uint32_t ncap = l->qcap ? l->qcap * 2 : 256, i;
    struct pe_loop_event *nq;

    if (ncap < l->qcap || !(nq = malloc((size_t)ncap * sizeof(*nq))))
        return -ENOMEM;
    for (i = 0; i < l->qlen; i++)
        nq[i] = l->q[(l->qhead + i) & (l->qcap - 1)];
    free(l->q);
    l->q = nq;
    l->qhead = 0;
    l->qcap = ncap;
    return 0;
}

void pe__loop_emit(pe_loop *l, uint32_t kind, uint32_t arg, pe_handle h)
{
    struct pe_loop_event *e;

    /* The queue starts at 256 entries and only doubles, so losing an event
     * takes a failed allocation of at least 8 KiB. */
    if (l->qlen == l->qcap && queue_grow(l) < 0)
        return;
    if (l->cn_asklen && kind != PE_EV_OPEN && kind != PE_EV_WAKEUP &&
        kind != PE_EV_FD) {
        /* Whatever the caller hears of a connection may change what it
         * would answer: canned answers stop until it marks it again. */
        struct pe_conn *c = pe__ct_get(&l->ct, h);

        if (c)
            c->flags &= ~PE_CF_CANNED;
    }
    e = &l->q[(l->qhead + l->qlen) & (l->qcap - 1)];
    e->kind = kind;
    e->arg = arg;
    e->handle = h;
    l->qlen++;
}

static int deliver(pe_loop *l, struct pe_loop_event *out, int max)
{
    uint32_t n = l->qlen < (uint32_t)max ? l->qlen : (uint32_t)max, i;

    for (i = 0; i < n; i++)
        out[i] = l->q[(l->qhead + i) & (l->qcap - 1)];
    l->qhead = (l->qhead + n) & (l->qcap - 1);
    l->qlen -= n;
    l->st.events += n;
    return (int)n;
}

/* Events handed out but not handled (a handler raised part-way through a
 * batch) go back to the front of the queue, in their order, so that the
 * next run hands them out again before anything new. */
int pe__loop_unget(pe_loop *l, const struct pe_loop_event *ev, int n)
{
    int i;

    if (n < 0 || (n > 0 && !ev))
        return -EINVAL;
    while (l->qcap - l->qlen < (uint32_t)n)
        if (queue_grow(l) < 0)
            return -ENOMEM;
    for (i = n - 1; i >= 0; i--) {
        l->qhead = (l->qhead - 1) & (l->qcap - 1);
        l->q[l->qhead] = ev[i];
        l->qlen++;
    }
    l->st.events -= (uint64_t)n;        /* counted again when handed out */
    return 0;
}

/* ------------------------------------------------------------------ fd map */

int pe__loop_fdmap_set(pe_loop *l, int fd, uint32_t v)
{
    if (fd >= l->nfdmap) {
        int n = l->nfdmap ? l->nfdmap : 64;
        uint32_t *m;

        while (n <= fd)
            n *= 2;
        if (!(m = realloc(l->fdmap, (size_t)n * sizeof(*m))))
            return -ENOMEM;
        memset(m + l->nfdmap, 0, (size_t)(n - l->nfdmap) * sizeof(*m));
        l->fdmap = m;
        l->nfdmap = n;
    }
    l->fdmap[fd] = v;
    return 0;
}

/* --------------------------------------------------------------- lifecycle */

static int check_config(const struct pe_loop_config *c)
{
    if (c->max_conns == 0 || c->max_conns > PE_CT_MAX ||
        c->overflow > PE_OVERFLOW_CLOSE || c->in_high == 0 ||
        c->in_low > c->in_high || c->out_max == 0 ||
        c->idle_timeout_ms > INT32_MAX || c->read_timeout_ms > INT32_MAX ||
        c->busy_poll_us > PE_BUSY_POLL_MAX_US)
        return -EINVAL;
    return 0;
}

pe_loop *pe_loop_new(const struct pe_loop_config *cfg, int *err)
{
    pe_loop *l;
    int rc;

    if (!cfg || (rc = check_config(cfg)) < 0) {
        rc = -EINVAL;
        goto out;
    }
    if (!(l = calloc(1, sizeof(*l)))) {
        rc = -ENOMEM;
        goto out;
    }
    l->cfg = *cfg;
    l->cfg.backend = NULL;            /* not ours to keep */
    if (l->cfg.accept_batch == 0)
        l->cfg.accept_batch = 1;
    l->reserve_fd = l->wake_r = l->wake_w = -1;
    pe__loop_set_clock(l, NULL, NULL);
    /* One run reads up to a poller batch of connections before their
     * bytes are taken, each into a pooled buffer: a pool smaller than that
     * sends the rest back to malloc every run (heap trimmed and refaulted,
     * brk calls).  At most 512 x 16 KiB (8 MiB, in buffers of any pooled
     * size) stay pooled after a burst. */
    pe__bufpool_init(&l->pool, cfg->max_conns < 512 ? (cfg->max_conns < 64 ?
                                                       64 : cfg->max_conns)
                                                    : 512);
    /* Owned: every use of it runs under the loop's guard (loop_guard.c). */
    if (!(l->p = pe_poller_new(cfg->backend, PE_POLLER_OWNED, &rc)))
        goto fail;
    l->caps = pe_poller_caps(l->p);
    if (cfg->edge && !(l->caps & PE_CAP_EDGE)) {
        rc = -EOPNOTSUPP;
        goto fail;
    }
    l->conn_events = PE_READ;
    if (cfg->edge)
        l->conn_events = PE_READ | PE_WRITE | PE_EDGE |
                         ((l->caps & PE_CAP_RDHUP) ? PE_RDHUP : 0);
    if ((rc = pe__ct_init(&l->ct, cfg->max_conns)) < 0)
        goto fail;
    l->nevs = cfg->max_conns + 8 < 1024 ? (int)cfg->max_conns + 8 : 1024;
    rc = -ENOMEM;
    if (!(l->evs = malloc((size_t)l->nevs * sizeof(*l->evs))) ||
        queue_grow(l) < 0)
        goto fail;
    if ((rc = pe__wakeup_open(&l->wake_r, &l->wake_w)) < 0 ||
        (rc = pe__loop_fdmap_set(l, l->wake_r, PE_FD_WAKEUP)) < 0 ||
        (rc = pe_poller_register(l->p, l->wake_r, PE_READ)) < 0)
        goto fail;
    /* Spare descriptor for EMFILE: without it, a level-triggered listener
     * would report the same pending connection forever. */
    l->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    return l;
fail:
    pe_loop_free(l);
out:
    if (err)
        *err = rc;
    return NULL;
}

/* Everything but the struct itself and the wakeup descriptors: a thread
 * may still hold the pointer (see loop_guard.c) and call pe_loop_wakeup. */
void pe__loop_teardown(pe_loop *l)
{
    uint32_t s;

    if (l->dead)
        return;
    l->dead = 1;
    if (l->ndfl)
        pe__loop_flush_teardown(l);
    for (s = 0; s < l->ct.fresh; s++) {
        struct pe_conn *c = &l->ct.slots[s];

        if (!(c->flags & PE_CF_INUSE))
            continue;
        if (!(c->flags & PE_CF_KEEPFD))
            close(c->fd);
        pe__ring_clear(&c->in, &l->pool);
        pe__ring_clear(&c->out, &l->pool);
    }
    if (l->reserve_fd >= 0)
        close(l->reserve_fd);
    l->reserve_fd = -1;
    if (l->p)
        pe_poller_free(l->p);
    l->p = NULL;
    pe__ct_destroy(&l->ct);
    pe__bufpool_destroy(&l->pool);
    free(l->fdmap);
    free(l->ls);
    free(l->evs);
    free(l->q);
    free(l->pend);
    free(l->dfl);
    free(l->wlow);
    free(l->cn_ask);
    free(l->cn_answers);
    l->cn_ask = l->cn_answers = NULL;
    l->cn_asklen = 0;
    l->fdmap = NULL;
    l->wlow = NULL;
    l->ls = NULL;
    l->evs = NULL;
    l->q = NULL;
    l->pend = NULL;
    l->dfl = NULL;
    l->ndfl = l->dflcap = 0;
    l->nfdmap = l->nls = 0;
}

void pe_loop_free(pe_loop *l)
{
    if (!l)
        return;
    pe__loop_teardown(l);
    pe__wakeup_close(l->wake_r, l->wake_w);
    free(l);
}

int pe__loop_get_stats(pe_loop *l, struct pe_loop_stats *out)
{
    *out = l->st;
    out->conns_open = l->ct.used;
    return 0;
}

int pe_loop_wakeup(pe_loop *l)
{
    int rc;

    if (atomic_exchange(&l->wake_pending, 1))
        return 0;                       /* one is on its way already */
    rc = pe__wakeup_signal(l->wake_w);
    if (rc < 0)
        atomic_store(&l->wake_pending, 0);  /* nothing is on its way */
    return rc;
}

/* ---------------------------------------------------------------- timeouts */

static int64_t remaining(const pe_loop *l, int list, uint32_t timeout)
{
    uint32_t s = pe__lru_head(&l->ct, list);
    int32_t left;

    if (s == PE_NOSLOT)
        return INT64_MAX;
    left = (int32_t)(l->ct.slots[s].tick[list] + timeout - pe__tick(l));
    return left < 0 ? 0 : left;
}

static int wait_timeout(const pe_loop *l, int timeout_ms)
{
    int64_t t = timeout_ms < 0 ? INT64_MAX : timeout_ms, r;

    if (l->cfg.idle_timeout_ms &&
        (r = remaining(l, PE_LRU_IDLE, l->cfg.idle_timeout_ms)) < t)
        t = r;
    if (l->cfg.read_timeout_ms &&
        (r = remaining(l, PE_LRU_READ, l->cfg.read_timeout_ms)) < t)
        t = r;
    if (l->accept_paused & PE_AP_EMFILE) {
        r = l->emfile_until > l->now ? (int64_t)(l->emfile_until - l->now) : 0;
        if (r < t)
            t = r;
    }
    return t == INT64_MAX ? -1 : (int)t;
}

static int expired(const pe_loop *l, int list, uint32_t timeout)
{
    uint32_t s = pe__lru_head(&l->ct, list);

    return s != PE_NOSLOT &&
           (int32_t)(pe__tick(l) - l->ct.slots[s].tick[list]) >= (int32_t)timeout;
}

static void expire(pe_loop *l)
{
    uint32_t s;

    /* Both lists are sorted by tick: stop at the first live entry. */
    while (l->cfg.idle_timeout_ms &&
           expired(l, PE_LRU_IDLE, l->cfg.idle_timeout_ms)) {
        s = pe__lru_head(&l->ct, PE_LRU_IDLE);
        l->st.timed_out++;
        pe__conn_close(l, s, ETIMEDOUT);
    }
    while (l->cfg.read_timeout_ms &&
           expired(l, PE_LRU_READ, l->cfg.read_timeout_ms)) {
        s = pe__lru_head(&l->ct, PE_LRU_READ);
        pe__lru_remove(&l->ct, PE_LRU_READ, s);
        pe__loop_emit(l, PE_EV_READ_TIMEOUT, 0, pe__ct_handle(&l->ct, s));
    }
}

/* --------------------------------------------------------------------- run */

static void dispatch(pe_loop *l, const struct pe_event *ev)
{
    uint32_t v;

    if (ev->fd < 0 || ev->fd >= l->nfdmap || !(v = l->fdmap[ev->fd]))
        return;
    if (v == PE_FD_WAKEUP) {
        pe__wakeup_drain(l->wake_r);
        /* Cleared after the read, never before: a wakeup that skipped its
         * write saw the flag set, so it came before this store, and the
         * work it announced (queued before it called) is handled after
         * this run returns; one after the store writes, and the next wait
         * sees it.  Cleared before the read, a write landing between the
         * two would be drained and leave the flag set over an empty fd. */
        atomic_store(&l->wake_pending, 0);
        l->st.syscalls++;
        pe__loop_emit(l, PE_EV_WAKEUP, 0, 0);
    } else if (PE_FD_IS_FOREIGN(v)) {
        pe__fd_event(l, v, ev);
    } else if (v & PE_FD_LISTENER) {
        l->ls[v & ~PE_FD_LISTENER].ready = 1;
        l->ls_ready = 1;
    } else if (l->ct.slots[v - 1].fd == ev->fd) {
        pe__conn_event(l, v - 1, ev->events);
    }
}

static void run_pending(pe_loop *l)
{
    uint32_t n = l->npend, i;

    for (i = 0; i < n; i++)
        pe__conn_pending(l, l->pend[i]);
    /* Reads above may have queued more; keep those for the next run. */
    memmove(l->pend, l->pend + n, (size_t)(l->npend - n) * sizeof(*l->pend));
    l->npend -= n;
}

static int64_t mono_ns(void)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* A wait with cfg.busy_poll_us: poll without sleeping until something is
 * ready or the time is up (at most *timeout_ms, which is left reduced by
 * the time spent), then sleep.  Adaptive, so that sparse traffic costs no
 * polling: it polls only if the last wait ended within the time, and a
 * wait whose polling found nothing decides the next by how long it then
 * slept.  The poller's count of events, or its -errno. */
static int busy_wait(pe_loop *l, int timeout_ms)
{
    int64_t full = (int64_t)l->cfg.busy_poll_us * 1000, budget = full, t0;
    int64_t spent = 0;
    int n;

    t0 = mono_ns();
    if (l->spin_ok) {
        if (timeout_ms > 0 && (int64_t)timeout_ms * 1000000 < budget)
            budget = (int64_t)timeout_ms * 1000000;
        for (;;) {
            n = pe_poller_wait(l->p, l->evs, l->nevs, 0);
            l->st.syscalls++;
            if (n != 0)
                return n;
            if ((spent = mono_ns() - t0) >= budget)
                break;
        }
        if (timeout_ms > 0) {
            int ms = (int)(spent / 1000000);

            timeout_ms = timeout_ms > ms ? timeout_ms - ms : 0;
        }
        t0 += spent;
    }
    n = pe_poller_wait(l->p, l->evs, l->nevs, timeout_ms);
    l->st.syscalls++;
    l->spin_ok = !l->spin_ok && n > 0 && mono_ns() - t0 < full;
    return n;
}

int pe__loop_run_io(pe_loop *l, int timeout_ms)
{
    int timers = l->cfg.idle_timeout_ms || l->cfg.read_timeout_ms ||
                 (l->accept_paused & PE_AP_EMFILE);
    int n, i, timeout = timeout_ms;

    if (timers)
        l->now = l->clock(l->clock_arg);
    if (l->qlen || l->npend)
        timeout = 0;
    else if (timers)
        timeout = wait_timeout(l, timeout_ms);
    if (timeout != 0 && l->cfg.busy_poll_us) {
        n = busy_wait(l, timeout);
    } else {
        n = pe_poller_wait(l->p, l->evs, l->nevs, timeout);
        l->st.syscalls++;
    }
    if (n < 0) {
        if (!l->qlen)
            return n;
        n = 0;                           /* hand out what is queued */
    }
    if (timers && timeout != 0)
        l->now = l->clock(l->clock_arg);
    for (i = 0; i < n; i++)
        dispatch(l, &l->evs[i]);
    if (l->npend)
        run_pending(l);
    if (l->ls_ready) {          /* else no listener's turn: no scan */
        l->ls_ready = 0;
        for (i = 0; i < l->nls; i++) {
            if (l->ls[i].ready) {
                l->ls[i].ready = 0;
                pe__loop_accept(l, i);
            }
        }
    }
    if ((l->accept_paused & PE_AP_EMFILE) && l->now >= l->emfile_until)
        pe__loop_accept_resume(l, PE_AP_EMFILE);
    if (timers)
        expire(l);
    return 0;
}

int pe__loop_run(pe_loop *l, struct pe_loop_event *out, int max, int timeout_ms)
{
    int rc;

    if (!out || max <= 0)
        return -EINVAL;
    l->bn = 0;          /* DATA from here on is not in the batch buffer */
    if (l->ndfl)
        pe__loop_flush(l);      /* deferred writes leave before the wait */
    if ((rc = pe__loop_run_io(l, timeout_ms)) < 0)
        return rc;
    return l->qlen ? deliver(l, out, max) : 0;
}

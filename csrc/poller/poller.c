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
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"

#define PE_CONDITIONS (PE_READ | PE_PRI | PE_WRITE | PE_ERR | PE_HUP | PE_RDHUP)
#define PE_FLAGS      (PE_EXCLUSIVE | PE_ONESHOT | PE_EDGE)

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

    if (flags & ~(unsigned)(PE_POLLER_RAW | PE_POLLER_NOCLOEXEC |
                           PE_POLLER_OWNED))
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
    /* A table entry may be stale (fd closed, number reused).  With
     * kernel_checks the kernel's add decides, and success replaces it;
     * elsewhere the backend may know that a close took it along. */
    if (e && e->ev && !p->be->kernel_checks) {
        if (!p->be->gone || p->be->gone(p, fd, e->ev, e->gen) == 0) {
            rc = -EEXIST;
            goto out;
        }
        forget(p, e);
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
        else if ((p->be->kernel_checks || p->be->gone) &&
                 (rc == -ENOENT || rc == -EBADF))
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

/* Waiting (pe_poller_wait, the waiters) lives in poller_wait.c. */

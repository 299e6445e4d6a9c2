/*
 * backend.h - the contract between the generic poller (poller.c) and one
 * kernel backend (epoll.c, kqueue.c, poll.c, select.c).
 *
 * The generic poller owns the policy: argument checks, the fd table (current
 * interest and generation of every registered fd), EEXIST/ENOENT for backends
 * whose kernel does not say so itself, refusing flags a backend cannot honour,
 * masking delivered events by current interest, and dropping events whose
 * generation is stale.  A backend only translates:
 *
 *   init     create kernel state (fd >= 0: adopt that descriptor instead).
 *   destroy  free what init made; closes the kernel descriptor unless
 *            p->kfd was already set to -1 (closed or detached).
 *   update   make the kernel's interest in fd equal `ev` (pe bits + flags),
 *            tagging it with `gen`.  old == 0 means add, ev == 0 means
 *            delete.  Returns 0 or -errno.  The generic layer always sets
 *            PE_ERR in a registered interest (it is reported regardless),
 *            so "registered with no events" is never confused with 0; on
 *            kernel_checks backends old == PE_ERR may stand for "registered
 *            elsewhere, interest unknown" (modify/unregister asks the kernel).
 *   wait     wait up to timeout_ms and write at most max pe_raw_events
 *            (fd, generation, pe bits; one per fd, read and write merged).
 *            Returns the count or -errno.  The generic code filters them.
 *
 * Events carry pe bits: PE_READ, PE_WRITE, PE_PRI, PE_ERR, PE_HUP, PE_RDHUP.
 *
 * Threads.  As with CPython's select.epoll, one thread may register while
 * another waits, several may wait at once, and close may come from any
 * thread; only pe_poller_free needs the poller idle.  p->lock serializes
 * everything but the kernel's wait itself: init/update/destroy run with it
 * held, and so does wait, which must drop it (pe__unlock) around its
 * blocking system call only, touching nothing shared while unlocked.  A
 * backend that keeps no per-wait state of its own sets kev_size: the
 * generic layer then hands each waiter a private scratch holding out[max]
 * followed by room for max kernel events (pe__kev_area), and several
 * threads may wait at once.  Otherwise a second concurrent wait gets -EBUSY
 * (as select.poll refuses a concurrent poll()).
 *
 * Lock-free waits.  A backend whose kernel call needs nothing but the
 * kernel descriptor sets kwait too; its waits then take no lock at all
 * while nothing changes the table (the uncontended case, two mutex round
 * trips per wait saved): the wait claims the scratch atomically, calls
 * kwait, and filters under a sequence lock (seq, odd while a writer holds
 * the mutex and changes the table; the reader retries under the mutex
 * when seq moved).  Tables replaced by growth are retired, not freed,
 * until pe_poller_free, so an optimistic reader never touches freed
 * memory; kfd and closed are written with atomic stores for it.
 */
#ifndef PE_BACKEND_H
#define PE_BACKEND_H

#include <pthread.h>
#include <stddef.h>

#include "pyepoll.h"

struct pe_raw_event {
    int32_t  fd;
    uint32_t events;
    uint32_t gen;
};

struct pe_backend {
    const char *name;
    unsigned    caps;          /* PE_CAP_* */
    int  (*init)(pe_poller *p, int adopt_fd);
    void (*destroy)(pe_poller *p);
    int  (*update)(pe_poller *p, int fd, uint32_t old, uint32_t ev,
                   uint32_t gen);
    int  (*wait)(pe_poller *p, struct pe_raw_event *out, int max,
                 int timeout_ms);
    /* Optional: wait's kernel call alone, on descriptor kfd, lock and
     * poller untouched (see Lock-free waits above); needs kev_size. */
    int  (*kwait)(int kfd, struct pe_raw_event *out, int max, int timeout_ms);
    /* Nonzero when the kernel itself reports EEXIST/ENOENT (epoll); then the
     * generic layer asks it instead of trusting its own table, which can be
     * stale after a registered fd was closed and its number reused. */
    int kernel_checks;
    /* Optional, where the table answers (kernel_checks == 0) but the kernel
     * drops a closed fd's registration silently (kqueue): whether fd's
     * registration (interest ev, generation gen) went away, so that a
     * register of the number may succeed.  0: still registered; -EBADF
     * (fd closed) or -ENOENT (another file now): gone, kernel state
     * cleared. */
    int (*gone)(pe_poller *p, int fd, uint32_t ev, uint32_t gen);
    /* Bytes of one kernel event when wait uses pe__kev_area and nothing
     * else per call (see Threads above); 0 otherwise. */
    size_t kev_size;
};

/* Interest of one fd as the generic layer knows it; index = fd. */
struct pe_fdent {
    uint32_t ev;               /* 0: not registered (else PE_ERR is set) */
    uint32_t gen;
};

struct pe_poller {
    const struct pe_backend *be;
    int       kfd;             /* kernel descriptor (epoll/kqueue), or -1 */
    int       closed;
    unsigned  flags;           /* PE_POLLER_* */
    int       nregistered;
    uint32_t  next_gen;
    struct pe_fdent *fds;      /* grown on demand, index = fd */
    int       nfds;            /* length of fds */
    struct pe_raw_event *raw;  /* scratch for wait, grown on demand */
    int       nraw;
    void     *state;           /* backend-private */
    pthread_mutex_t lock;      /* see Threads above */
    int       waiting;         /* raw is lent to a wait in progress */
    unsigned  seq;             /* odd while the table changes (kwait) */
    int       nretired;
    struct pe_fdent *retired[32];  /* tables outgrown (doubling: < 32) */
};

/* Bits reported whatever the interest. */
#define PE_ALWAYS (PE_ERR | PE_HUP)

/* Current table entry for fd, or NULL when fd is beyond the table. */
static inline struct pe_fdent *pe__fdent(pe_poller *p, int fd)
{
    return (fd >= 0 && fd < p->nfds) ? &p->fds[fd] : NULL;
}

static inline void pe__lock(pe_poller *p)
{
    pthread_mutex_lock(&p->lock);
}

static inline void pe__unlock(pe_poller *p)
{
    pthread_mutex_unlock(&p->lock);
}

/* Where a kev_size backend puts its kernel events: after out[max],
 * aligned for any kernel struct. */
#define PE__KEV_ALIGN 16
static inline size_t pe__kev_offset(int max)
{
    size_t off = (size_t)max * sizeof(struct pe_raw_event);

    return (off + PE__KEV_ALIGN - 1) & ~(size_t)(PE__KEV_ALIGN - 1);
}

static inline void *pe__kev_area(struct pe_raw_event *out, int max)
{
    return (char *)out + pe__kev_offset(max);
}

/* Backends; each defined only where its OS has it. */
extern const struct pe_backend pe__epoll_backend;
extern const struct pe_backend pe__kqueue_backend;
extern const struct pe_backend pe__poll_backend;
extern const struct pe_backend pe__select_backend;

/* Milliseconds to struct timespec / timeval helpers live with the backends
 * that need them; the generic layer passes milliseconds only. */

#endif /* PE_BACKEND_H */

/*
 * loop_guard.c - the loop's entry points: one thread inside at a time.
 *
 * A loop is single-threaded by design, but a caller can still enter it from
 * two threads (two waiters, a send from a worker thread).  Unguarded, that
 * corrupts the table and the rings.  Each entry point takes a flag with one
 * atomic exchange (a lock-free try-lock, never a wait) and answers -EBUSY
 * when another thread holds it, as the Poller answers a second waiter on
 * poll/select.
 *
 * Teardown from another thread (Python's Loop.close while a wait blocks)
 * uses the same flag: pe_loop_teardown marks the loop closing and tears it
 * down itself if it can take the flag; otherwise the thread inside sees the
 * mark when it lets go and tears down then.  The two sides write one flag
 * and then read the other (sequentially consistent), so at least one of
 * them sees both, and the exchange makes exactly one of them do it.  The
 * struct outlives the teardown, so a late caller reads `dead` and gets
 * -EBADF instead of freed memory.
 */
#include <errno.h>

#include "loop.h"

static int enter(pe_loop *l)
{
    if (atomic_exchange(&l->inside, 1))
        return -EBUSY;
    if (l->dead) {
        atomic_store(&l->inside, 0);
        return -EBADF;
    }
    return 0;
}

static void leave(pe_loop *l)
{
    atomic_store(&l->inside, 0);
    if (atomic_load(&l->closing) && !atomic_exchange(&l->inside, 1)) {
        pe__loop_teardown(l);
        atomic_store(&l->inside, 0);
    }
}

int pe_loop_teardown(pe_loop *l)
{
    atomic_store(&l->closing, 1);
    if (atomic_exchange(&l->inside, 1)) {
        pe_loop_wakeup(l);              /* the wakeup fds outlive teardown */
        return 1;
    }
    pe__loop_teardown(l);
    atomic_store(&l->inside, 0);
    return 0;
}

/* Each entry point: the implementation (loop.h) called with the flag held. */
#define GUARDED(type, name, params, args)       \
    type pe_loop_##name params                  \
    {                                           \
        type rc;                                \
        int e = enter(l);                       \
                                                \
        if (e < 0)                              \
            return e;                           \
        rc = pe__loop_##name args;              \
        leave(l);                               \
        return rc;                              \
    }

GUARDED(int, run, (pe_loop *l, struct pe_loop_event *out, int max,
                   int timeout_ms), (l, out, max, timeout_ms))
GUARDED(int, unget, (pe_loop *l, const struct pe_loop_event *ev, int n),
        (l, ev, n))
GUARDED(int, run_into, (pe_loop *l, const pe_handle *echo, size_t necho,
                        struct pe_loop_bevent *out, int max, int timeout_ms,
                        void *buf, size_t buflen),
        (l, echo, necho, out, max, timeout_ms, buf, buflen))
GUARDED(int, batch_setup, (pe_loop *l, const pe_handle *echo, size_t echo_cap,
                           struct pe_loop_bevent *out, int max, void *buf,
                           size_t buflen),
        (l, echo, echo_cap, out, max, buf, buflen))
GUARDED(int, run_batch, (pe_loop *l, int necho, int timeout_ms),
        (l, necho, timeout_ms))
GUARDED(int, run_batch_repeat, (pe_loop *l, int necho, int timeout_ms,
                                unsigned flags), (l, necho, timeout_ms, flags))
GUARDED(int, add_listener, (pe_loop *l, int fd), (l, fd))
GUARDED(int, remove_listener, (pe_loop *l, int id), (l, id))
GUARDED(int64_t, read, (pe_loop *l, pe_handle h, void *buf, size_t len),
        (l, h, buf, len))
GUARDED(int64_t, send, (pe_loop *l, pe_handle h, const void *buf, size_t len),
        (l, h, buf, len))
GUARDED(int64_t, reply, (pe_loop *l, pe_handle h, uint32_t off, uint32_t len),
        (l, h, off, len))
GUARDED(int, echo, (pe_loop *l, const pe_handle *hs, size_t n), (l, hs, n))
GUARDED(int, close, (pe_loop *l, pe_handle h, int mode), (l, h, mode))
GUARDED(int, shutdown, (pe_loop *l, pe_handle h), (l, h))
GUARDED(int, pause_reading, (pe_loop *l, pe_handle h), (l, h))
GUARDED(int, resume_reading, (pe_loop *l, pe_handle h), (l, h))
GUARDED(int, arm_read_timeout, (pe_loop *l, pe_handle h, int on), (l, h, on))
GUARDED(int, set_token, (pe_loop *l, pe_handle h, uint64_t token),
        (l, h, token))
GUARDED(int, get_token, (pe_loop *l, pe_handle h, uint64_t *token),
        (l, h, token))
GUARDED(int, buffered, (pe_loop *l, pe_handle h, uint32_t *in, uint32_t *out),
        (l, h, in, out))
GUARDED(int, peer, (pe_loop *l, pe_handle h, char *host, size_t hostlen,
                    int *port), (l, h, host, hostlen, port))
GUARDED(int, fileno, (pe_loop *l, pe_handle h), (l, h))
GUARDED(int, get_stats, (pe_loop *l, struct pe_loop_stats *out), (l, out))
GUARDED(int, watch, (pe_loop *l, int fd, uint32_t events), (l, fd, events))
GUARDED(int, watch_wake, (pe_loop *l, int fd, int on), (l, fd, on))
GUARDED(int, adopt, (pe_loop *l, int fd, uint32_t flags, pe_handle *out),
        (l, fd, flags, out))
GUARDED(int, keep_fd, (pe_loop *l, pe_handle h), (l, h))
GUARDED(int, notify_below, (pe_loop *l, pe_handle h, uint32_t low),
        (l, h, low))
GUARDED(int, fd_handle, (pe_loop *l, int fd, pe_handle *out), (l, fd, out))
GUARDED(int64_t, write, (pe_loop *l, pe_handle h, const void *buf, size_t len),
        (l, h, buf, len))
GUARDED(int64_t, sendfile, (pe_loop *l, pe_handle h, int in_fd, int64_t offset,
                            size_t count), (l, h, in_fd, offset, count))
GUARDED(int, flush, (pe_loop *l), (l))
GUARDED(int, set_canned, (pe_loop *l, const void *ask, size_t ask_len,
                          const void *answer, size_t answer_len,
                          int64_t until),
        (l, ask, ask_len, answer, answer_len, until))
GUARDED(int, canned_mark, (pe_loop *l, pe_handle h, int on), (l, h, on))

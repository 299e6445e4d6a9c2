/*
 * pyepoll.h - the whole public C API of pyepoll's core.
 *
 * Conventions (everywhere in csrc/):
 *   - functions return 0, a count, or -errno; EINTR is returned, never
 *     swallowed, so the caller can run signal handlers and retry (PEP 475);
 *   - nothing here knows Python: no PyObject, no printing (the one
 *     exception is csrc/cpython/, the CPython-only accelerator module
 *     pyepoll._speedups, which calls this API through cffi's function
 *     addresses and is no part of the core);
 *   - pe_ names are public, pe__ names are internal to csrc/, the rest static.
 *
 * The block between the PE_CDEF_BEGIN and PE_CDEF_END markers is read by
 * build_ffi.py as cffi's cdef, so it must stay valid as both C and cdef:
 * plain declarations, integer-literal #defines, no #if, no expressions.
 */
#ifndef PYEPOLL_H
#define PYEPOLL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* PE_CDEF_BEGIN */

/* ---------------------------------------------------------------- poller */

/* Event bits.  They equal Linux's EPOLL* values, so the epoll backend and
 * the select.epoll drop-in pass them through untranslated; the other
 * backends translate to and from these. */
#define PE_READ      0x001
#define PE_PRI       0x002
#define PE_WRITE     0x004
#define PE_ERR       0x008
#define PE_HUP       0x010
#define PE_RDHUP     0x2000
/* Registration flags (never reported back). */
#define PE_EXCLUSIVE 0x10000000
#define PE_ONESHOT   0x40000000
#define PE_EDGE      0x80000000

/* Backend capability bits, from pe_poller_caps(). */
#define PE_CAP_EDGE      0x01
#define PE_CAP_ONESHOT   0x02
#define PE_CAP_EXCLUSIVE 0x04
#define PE_CAP_FILENO    0x08
#define PE_CAP_RDHUP     0x10
#define PE_CAP_PRI       0x20

/* pe_poller_new() flags. */
/* RAW: event bits go to the kernel unchecked and come back unmasked
 * (epoll only; what select.epoll does, for the drop-in). */
#define PE_POLLER_RAW      0x01
/* NOCLOEXEC: leave the kernel descriptor inheritable across exec. */
#define PE_POLLER_NOCLOEXEC 0x02
/* OWNED: the caller never lets two threads use the poller at once (its own
 * lock or guard serializes every call, as the Loop's does).  Waits then skip
 * what lets another thread register, wait or close meanwhile (the claim on
 * the shared scratch, the sequence lock): ~60 instructions of a wait with
 * one event.  Events are filtered exactly as without it. */
#define PE_POLLER_OWNED    0x04

typedef struct pe_poller pe_poller;

/* One ready descriptor.  Two 32-bit words, so Python reads a whole batch
 * through one memoryview cast instead of per-field cdata access. */
struct pe_event {
    int32_t  fd;
    uint32_t events;
};

/* Names of the backends compiled in, best first, separated by ','. */
const char *pe_backends(void);

/* backend: "epoll", "kqueue", "poll", "select" or NULL for the best.
 * On failure returns NULL and stores -errno in *err (-ENOSYS: backend not
 * compiled in). */
pe_poller *pe_poller_new(const char *backend, unsigned flags, int *err);
/* Wrap an existing kernel descriptor (epoll or kqueue) without duplicating
 * it; registrations made elsewhere are unknown to the poller. */
pe_poller *pe_poller_fromfd(const char *backend, int fd, unsigned flags, int *err);
/* Close the kernel descriptor (if still open) and free. */
void pe_poller_free(pe_poller *p);
/* Close the kernel descriptor; later calls return -EBADF. Idempotent. */
int pe_poller_close(pe_poller *p);
/* Forget the kernel descriptor without closing it: for a forked child,
 * whose number may already name an unrelated file (kqueue). */
void pe_poller_detach(pe_poller *p);
int pe_poller_fileno(const pe_poller *p);          /* -1 if none/closed */
const char *pe_poller_backend(const pe_poller *p);
unsigned pe_poller_caps(const pe_poller *p);
int pe_poller_count(const pe_poller *p);            /* registered fds */

/* -EBADF: negative fd or closed poller; -EEXIST / -ENOENT as epoll_ctl;
 * -EINVAL: unknown event bits; -EOPNOTSUPP: a flag this backend cannot
 * honour (e.g. PE_EDGE on poll); other -errno from the kernel. */
int pe_poller_register(pe_poller *p, int fd, uint32_t events);
int pe_poller_modify(pe_poller *p, int fd, uint32_t events);
int pe_poller_unregister(pe_poller *p, int fd);

/* Wait up to timeout_ms (-1: forever, 0: poll) and fill out[0..maxevents).
 * Returns the number of events, or -errno (-EINTR included).  One event per
 * fd; events for registrations that changed meanwhile are dropped. */
int pe_poller_wait(pe_poller *p, struct pe_event *out, int maxevents,
                   int timeout_ms);

/* pe_poller_wait with its arguments in memory, for bindings where passing
 * arguments costs more than the wait (cffi builds a tuple for two or more
 * and converts each: measured at a third of a 1-ready wait).  The caller
 * sets poller and maxevents (<= the length of out) once and passes one
 * pointer; pe_waiter_poll waits 0 ms, pe_waiter_block forever, and
 * pe_waiter_wait timeout_ms (the caller's to serialize: one writer).
 * A waiter whose poller is NULL answers -EBADF (a closed stand-in).
 *
 * Threads.  A waiter is claimed for the call (busy, atomically); a second
 * wait on it meanwhile returns -EBUSY at once, leaving the caller to use
 * another waiter.  When events land in out (a result > 0) the waiter stays
 * claimed until pe_waiter_release, so the caller reads them undisturbed.
 *
 * Results: as pe_poller_wait, except that exactly one event comes back
 * in the result itself (nothing stays claimed) when it can:
 *   PE_WAIT_READ_BASE + fd       events == PE_READ (the common one);
 *   -(PE_WAIT_ONE_BASE + (fd << 14 | events))
 *                                other events, 0 <= fd < 65535 (all
 *                                conditions are below 0x4000);
 * both beyond any count (at most PE_WAIT_MAX_EVENTS: maxevents above it
 * is taken as it) and any -errno (>= -4095), and small integers for
 * Python: a binding maps them to (fd, events) without touching the
 * buffer, by list index or dict lookup.  With a count, all_read says
 * whether every event in out is exactly PE_READ (a binding may then map
 * fds alone to prebuilt pairs). */
struct pe_waiter {
    pe_poller *poller;
    int32_t maxevents;
    int32_t timeout_ms;
    int32_t busy;
    int32_t all_read;       /* set with a count: every event is PE_READ */
    struct pe_event out[];
};
#define PE_WAIT_ONE_BASE 4096
#define PE_WAIT_MAX_EVENTS 1048576
#define PE_WAIT_READ_BASE 1048577
int pe_waiter_poll(struct pe_waiter *w);
int pe_waiter_block(struct pe_waiter *w);
int pe_waiter_wait(struct pe_waiter *w);
void pe_waiter_release(struct pe_waiter *w);

/* ------------------------------------------------------------------ loop */

/* A connection loop: listeners, a fixed-capacity connection table, byte
 * rings per connection, idle/read timeouts, accept/read/write in C.  Python
 * sees batches of pe_loop_event and decides only what it must. */
typedef struct pe_loop pe_loop;

/* A connection handle: slot in the low 32 bits, generation in the high 32.
 * Generations start at 1, so 0 is never a valid handle.  A handle whose
 * connection closed is refused with -ESTALE, never applied to a connection
 * that later reused the slot or the fd. */
typedef uint64_t pe_handle;

/* What a batch reports.  Every connection that was OPENed gets exactly one
 * CLOSED, whoever closed it.  The handle is stale from the moment CLOSED is
 * queued: a DATA earlier in the same batch may already find it stale (the
 * peer reset after sending, say). */
enum pe_loop_event_kind {
    PE_EV_OPEN = 1,         /* arg: listener id */
    PE_EV_DATA = 2,         /* arg: bytes now buffered for reading; at most
                               one per connection per run */
    PE_EV_EOF = 3,          /* peer shut down its writing side; arg 0.  Once;
                               reading stops, sending still works until the
                               connection is closed (idle timeout applies) */
    PE_EV_DRAINED = 4,      /* output ring emptied after a partial send;
                               arg 0.  With pe_loop_notify_below armed,
                               also once when it falls to <= the mark;
                               arg: bytes still queued then (> 0) */
    PE_EV_WRITE_FULL = 5,   /* output crossed out_high; arg: bytes queued.
                               Once, then again only after DRAINED */
    PE_EV_READ_TIMEOUT = 6, /* armed read deadline passed; still open */
    PE_EV_CLOSED = 7,       /* arg: 0 or a positive errno (ECONNRESET,
                               ETIMEDOUT for idle timeout, EPIPE, ...) */
    PE_EV_WAKEUP = 8,       /* pe_loop_wakeup() was called; handle 0 */
    PE_EV_FD = 9            /* a descriptor given to pe_loop_watch is ready;
                               handle: the fd, arg: PE_READ and/or PE_WRITE */
};

/* kind and arg first, then the handle as one 64-bit word: Python reads a
 * batch through two memoryview casts ('I' for kind/arg, 'Q' for handles)
 * and never rebuilds a handle from its parts. */
struct pe_loop_event {
    uint32_t  kind;
    uint32_t  arg;
    pe_handle handle;
};

/* Overflow policy when the table is full. */
#define PE_OVERFLOW_BACKLOG 0   /* stop accepting; the kernel backlog holds them */
#define PE_OVERFLOW_CLOSE   1   /* accept and close at once (counted refused) */

/* pe_loop_close modes. */
#define PE_CLOSE_FLUSH 0        /* close after queued output is sent */
#define PE_CLOSE_NOW   1        /* close now, dropping queued output */
#define PE_CLOSE_ABORT 2        /* send RST (SO_LINGER 0) and close now */

#define PE_BUSY_POLL_MAX_US 1000000u   /* 1 s */

struct pe_loop_config {
    const char *backend;        /* NULL: best available */
    int      edge;              /* 1: edge-triggered, 0: level-triggered */
    uint32_t max_conns;         /* table capacity (> 0) */
    uint32_t overflow;          /* PE_OVERFLOW_* */
    uint32_t idle_timeout_ms;   /* 0: none; no bytes either way -> CLOSED(ETIMEDOUT) */
    uint32_t read_timeout_ms;   /* deadline for pe_loop_arm_read_timeout; 0: none */
    uint32_t in_high;           /* pause reading when this much is unread (> 0);
                                   also the most ever buffered for reading */
    uint32_t in_low;            /* resume when unread falls below (<= in_high) */
    uint32_t out_high;          /* report WRITE_FULL above this */
    uint32_t out_max;           /* pe_loop_send beyond this: -ENOBUFS */
    uint32_t accept_batch;      /* accepts per listener per wakeup (level;
                                   edge mode accepts until EAGAIN) */
    int      nodelay;           /* TCP_NODELAY on accepted sockets */
    int      echo;              /* data read is sent back in C: no DATA,
                                   DRAINED or WRITE_FULL events */
    uint32_t defer_writes;      /* 0: off.  Else pe_loop_send/write to a
                                   connection with nothing queued only
                                   queue, up to this many bytes in all, and
                                   the next run (or pe_loop_flush) sends
                                   them, one send per connection; a write
                                   that would exceed it sends at once */
    uint32_t busy_poll_us;      /* 0: off.  Else a run that would sleep
                                   polls first, without sleeping, for up
                                   to this many microseconds (of its
                                   timeout) if the last wait ended within
                                   that time (so sparse traffic never
                                   polls): what comes meanwhile is
                                   handled without the wake-up of a
                                   sleeping thread, for the CPU the
                                   polling spends */
};

/* Counters since pe_loop_new.  conns_open is current (connections still
 * flushing after a PE_CLOSE_FLUSH included); syscalls counts every system
 * call the loop made, poller waits and updates included; events counts
 * events handed out by pe_loop_run. */
struct pe_loop_stats {
    uint64_t conns_open;
    uint64_t accepted;
    uint64_t closed;
    uint64_t timed_out;
    uint64_t refused;
    uint64_t accept_emfile;
    uint64_t bytes_in;
    uint64_t bytes_out;
    uint64_t syscalls;
    uint64_t events;
    uint64_t canned;            /* requests answered by pe_loop_set_canned */
};

/* Fill cfg with defaults (level, 1024 conns, 64 KiB/16 KiB input marks,
 * 64 KiB out_high, 16 MiB out_max, accept_batch 64, nodelay on). */
void pe_loop_config_init(struct pe_loop_config *cfg);
pe_loop *pe_loop_new(const struct pe_loop_config *cfg, int *err);
/* Closes every connection (no events) and frees; listener fds are not
 * closed (the caller owns them).  No other thread may hold the loop. */
void pe_loop_free(pe_loop *l);
/* Threads.  One thread at a time may be inside the loop's functions (all
 * but pe_loop_wakeup, pe_loop_teardown and pe_loop_free): a call made
 * while another thread is inside returns -EBUSY and touches nothing.
 * pe_loop_teardown closes every connection (no events) and releases all
 * memory but the struct: at once (returns 0) when no thread is inside,
 * else by that thread as its call returns (returns 1; the thread is woken
 * if it waits).  From then on every call returns -EBADF, and only
 * pe_loop_free (once nobody can call any more) releases the rest. */
int pe_loop_teardown(pe_loop *l);

/* Listening socket owned by the caller (made non-blocking if it is not).
 * Returns an id >= 0 (the OPEN event's arg), -EEXIST if the loop already
 * watches that fd.  Out of descriptors (EMFILE), the loop accepts and drops
 * one pending connection with a reserved descriptor, then stops watching
 * its listeners until a connection closes or a second passes. */
int pe_loop_add_listener(pe_loop *l, int fd);
int pe_loop_remove_listener(pe_loop *l, int id);    /* -ENOENT: unknown id */

/* Wait up to timeout_ms (-1: until something happens; never past the next
 * idle or read deadline), do all I/O that is ready, and report at most max
 * events (max > 0).  Events that do not fit stay queued for the next call,
 * which then does not block.  Returns the count or -errno (-EINTR
 * included). */
int pe_loop_run(pe_loop *l, struct pe_loop_event *out, int max, int timeout_ms);
/* Put n events that pe_loop_run handed out back at the front of the queue,
 * in their order: the next run hands them out first, without blocking (a
 * handler that raised part-way through a batch leaves the rest unhandled,
 * not lost; a DATA event's bytes are still unread).  0, -EINVAL, or
 * -ENOMEM (nothing put back). */
int pe_loop_unget(pe_loop *l, const struct pe_loop_event *ev, int n);
/* An event of pe_loop_run_into: every field a 64-bit word, so Python
 * reads a batch through one memoryview slice and one iterator. */
struct pe_loop_bevent {
    uint64_t  kind;
    pe_handle handle;
    uint64_t  arg;              /* DATA: bytes at off in the caller's buffer */
    uint64_t  off;              /* 0 for other kinds */
};

/* pe_loop_echo(echo, necho) if necho, then pe_loop_run, except that each
 * DATA event hands its connection's unread bytes over: they are in buf at
 * off (no two events' bytes overlap; often read there straight from the
 * socket) and no longer buffered in the loop, so no per-connection read
 * call is needed.  A DATA whose bytes do not fit waits for the next call;
 * with buflen >= in_high each connection's bytes come whole.  The bytes
 * stay valid until the next run; pe_loop_reply and pe_loop_echo send from
 * them. */
int pe_loop_run_into(pe_loop *l, const pe_handle *echo, size_t necho,
                     struct pe_loop_bevent *out, int max, int timeout_ms,
                     void *buf, size_t buflen);
/* pe_loop_run_into with the buffers named once by pe_loop_batch_setup:
 * the echo list is the first necho (0..echo_cap) handles of echo.  A
 * binding pays per argument it converts, and a wait that returns one
 * event is mostly that.  -EINVAL before a setup or for necho out of
 * range; a setup with NULL buffers or max <= 0 is -EINVAL and changes
 * nothing.  The buffers stay the caller's: they must outlive their use. */
int pe_loop_batch_setup(pe_loop *l, const pe_handle *echo, size_t echo_cap,
                        struct pe_loop_bevent *out, int max, void *buf,
                        size_t buflen);
int pe_loop_run_batch(pe_loop *l, int necho, int timeout_ms);
/* pe_loop_run_batch_repeat flags. */
#define PE_RUN_ECHO_DATA   0x1  /* a batch of DATA only: echo it, run again */
#define PE_RUN_AGAIN_EMPTY 0x2  /* a run that made no event: run again */
/* pe_loop_run_batch, run again inside the loop while its batch needs
 * nothing of the caller: with PE_RUN_ECHO_DATA a batch of DATA events only
 * is echoed (as pe_loop_echo would, each event's bytes sent back once) and
 * the loop runs again; with PE_RUN_AGAIN_EMPTY a run that made no event
 * (its reads all answered by pe_loop_set_canned, or one that returned
 * early) runs again, with what is left of the timeout.  The caller's
 * echoes go out with the first run.  Returns as pe_loop_run_batch, and at
 * once after a run in which a pe_loop_watch_wake fd was read (a signal:
 * the caller's handlers must run), in which the loop began closing, or
 * after which the timeout is up (the last batch, maybe DATA only, is then
 * the caller's).  For a caller that must take a lock to look at a batch
 * (CPython's GIL): it takes it once per batch it needs, not once per run.
 * Signals reach a caller only through a watch_wake fd or an interrupted
 * wait, so without such an fd it must pass no flag (one run, as
 * pe_loop_run_batch). */
int pe_loop_run_batch_repeat(pe_loop *l, int necho, int timeout_ms,
                             unsigned flags);
/* pe_loop_send of len bytes at off in the buffer the last
 * pe_loop_run_into filled (-EINVAL outside it): an echo-like reply with
 * no conversion of a buffer object. */
int64_t pe_loop_reply(pe_loop *l, pe_handle h, uint32_t off, uint32_t len);
/* For each handle, pe_loop_send back the bytes its DATA event of the last
 * pe_loop_run_into delivered (an echo), once.  Handles that are stale or
 * had no DATA in that batch are skipped; a send that fails closes the
 * connection (CLOSED(errno); ENOBUFS beyond out_max).  Returns how many
 * were sent or queued.  One call for a whole batch of replies. */
int pe_loop_echo(pe_loop *l, const pe_handle *hs, size_t n);
/* Canned answers: an HTTP server's hot path without its caller.  While
 * set (ask_len > 0), a read of pe_loop_run_into on a connection marked by
 * pe_loop_canned_mark that brings exactly k copies of ask, 1 <= k <=
 * PE_CANNED_RUN, and nothing else is answered in C with k copies of
 * answer (pe_loop_send's rules; -ENOBUFS closes): no DATA event, counted
 * in stats.canned; after pe_loop_shutdown the read is DATA.  Only until the wall clock (CLOCK_REALTIME) reaches
 * until, in seconds: an answer carrying a Date stops there, and the caller sets the
 * next.  Any event of a marked connection unmarks it, so its caller sees
 * everything that could change its state.  A pe_loop_run_into whose
 * reads were all answered returns 0 (no events), whatever its timeout:
 * the caller runs what must run between waits (a signal that came while
 * the loop was answering interrupts no wait) and waits again.  ask_len 0
 * clears (ask and answer unused); the bytes
 * are copied.  -EINVAL for NULL buffers with a length or an answer
 * longer than PE_CANNED_MAX; -ENOMEM. */
#define PE_CANNED_RUN 64
#define PE_CANNED_MAX 4096
int pe_loop_set_canned(pe_loop *l, const void *ask, size_t ask_len,
                       const void *answer, size_t answer_len, int64_t until);
/* Mark (on != 0) or unmark h for canned answers.  -ESTALE: stale handle. */
int pe_loop_canned_mark(pe_loop *l, pe_handle h, int on);
/* Thread-safe and async-signal-safe: make a blocked or the next run return
 * with a PE_EV_WAKEUP event. */
int pe_loop_wakeup(pe_loop *l);

/* Copy up to len unread bytes out (0 when none).  Returns bytes or -errno.
 * Reading below in_low resumes reading paused at in_high. */
int64_t pe_loop_read(pe_loop *l, pe_handle h, void *buf, size_t len);
/* Queue len bytes; sent now if possible, the rest when writable.  All or
 * nothing: -ENOBUFS if queued + len would exceed out_max, -EPIPE after
 * pe_loop_shutdown.  When the peer is gone (-EPIPE, -ECONNRESET, ...) the
 * connection is closed: CLOSED(errno) follows, the handle is stale. */
int64_t pe_loop_send(pe_loop *l, pe_handle h, const void *buf, size_t len);
/* mode: PE_CLOSE_*.  The handle is stale when this returns; CLOSED(0)
 * comes in the next batch.  FLUSH keeps sending queued output in the
 * background (idle timeout still applies), then closes. */
int pe_loop_close(pe_loop *l, pe_handle h, int mode);
/* Half-close: shutdown(SHUT_WR) once queued output is sent; reading goes
 * on.  Idempotent. */
int pe_loop_shutdown(pe_loop *l, pe_handle h);
/* Stop / restart reading (independent of the in_high/in_low pause). */
int pe_loop_pause_reading(pe_loop *l, pe_handle h);
int pe_loop_resume_reading(pe_loop *l, pe_handle h);
/* on: (re)start a deadline read_timeout_ms from now; it fires once as
 * READ_TIMEOUT unless disarmed (on = 0).  Arriving bytes do not move it.
 * -EINVAL when read_timeout_ms is 0. */
int pe_loop_arm_read_timeout(pe_loop *l, pe_handle h, int on);
int pe_loop_set_token(pe_loop *l, pe_handle h, uint64_t token);
int pe_loop_get_token(pe_loop *l, pe_handle h, uint64_t *token);
/* Bytes waiting: unread input and unsent output. */
int pe_loop_buffered(pe_loop *l, pe_handle h, uint32_t *in, uint32_t *out);
/* Numeric peer address ("127.0.0.1", "::1") and port; -EAFNOSUPPORT for
 * a non-IP socket, -ENOSPC if host is too short. */
int pe_loop_peer(pe_loop *l, pe_handle h, char *host, size_t hostlen,
                 int *port);
int pe_loop_fileno(pe_loop *l, pe_handle h);
int pe_loop_get_stats(pe_loop *l, struct pe_loop_stats *out);

/* Foreign descriptors and adopted sockets (loop_fd.c): what an event loop
 * such as asyncio needs so that one wait serves the C connections and every
 * other descriptor its users watch. */

/* Watch fd (not one of the loop's own) for PE_READ and/or PE_WRITE,
 * level-triggered whatever the loop's trigger; events 0 forgets it (a
 * descriptor already closed included).  Readiness comes as PE_EV_FD, its
 * arg masked by what is watched; an error or hangup counts as both.
 * -EEXIST: a connection's, listener's or the wakeup descriptor; -EINVAL:
 * other bits; else the poller's -errno.  A watched fd that is closed
 * without being forgotten is forgotten when its number becomes a
 * connection. */
int pe_loop_watch(pe_loop *l, int fd, uint32_t events);
/* on: fd (the caller's, non-blocking: the read end of the pipe given to
 * CPython's signal.set_wakeup_fd) wakes a blocked pe_loop_run, which reads
 * it empty and reports nothing for it, so a run woken by it alone returns
 * 0 as if a signal had interrupted its wait: the caller runs its signal
 * handlers whichever thread took the signal.  off (0): forgets fd.
 * -EEXIST: a descriptor the loop has another use for. */
int pe_loop_watch_wake(pe_loop *l, int fd, int on);

/* pe_loop_adopt flags. */
#define PE_ADOPT_PAUSED 0x1     /* do not read until pe_loop_resume_reading */
#define PE_ADOPT_KEEPFD 0x2     /* the caller closes fd: the loop never does */

/* Make a connected stream socket a connection of the loop (made
 * non-blocking); *out gets its handle.  No OPEN event: the caller knows.
 * -EEXIST: the loop already uses fd; -ENOSPC: the table is full; -EINVAL:
 * unknown flags; else -errno. */
int pe_loop_adopt(pe_loop *l, int fd, uint32_t flags, pe_handle *out);
/* From now on the caller closes h's descriptor, after pe_loop_close
 * returned or CLOSED was reported (the loop unregisters it, never closes
 * it).  A connection whose fd the caller keeps cannot be closed with
 * PE_CLOSE_FLUSH while output is queued (-EINVAL). */
int pe_loop_keep_fd(pe_loop *l, pe_handle h);
/* Report PE_EV_DRAINED once when h's queued output falls to low bytes or
 * fewer (arg: what is left; an empty queue's DRAINED(0) also disarms it):
 * asyncio's write low-water mark.  Armed until reported or re-armed. */
int pe_loop_notify_below(pe_loop *l, pe_handle h, uint32_t low);
/* The handle of the live connection whose descriptor is fd: 0 and *out,
 * or -ENOENT (not a connection, or one closed already). */
int pe_loop_fd_handle(pe_loop *l, int fd, pe_handle *out);
/* pe_loop_send, but returns the bytes still queued for h after it (0: all
 * sent), or 0 when the send closed the connection (CLOSED follows). */
int64_t pe_loop_write(pe_loop *l, pe_handle h, const void *buf, size_t len);
/* Send up to count bytes of file in_fd from offset straight to h's socket
 * (sendfile(2), Linux; -ENOSYS elsewhere), only while nothing is queued
 * (-EBUSY otherwise).  Returns bytes sent, 0 at the file's end, or -EAGAIN
 * when the socket is full: a PE_EV_DRAINED then says when it is writable.
 * -EINVAL, -ESPIPE and the like (what sendfile cannot read) leave the
 * connection open; a peer that is gone closes it (CLOSED(errno) follows). */
int64_t pe_loop_sendfile(pe_loop *l, pe_handle h, int in_fd, int64_t offset,
                         size_t count);
/* With defer_writes: send every connection's deferred bytes now (one send
 * or writev each; what the socket does not take stays queued and goes out
 * when it is writable, DRAINED(0) then as for any queued output).  Runs do
 * this themselves before they wait.  A deferred flush that sends all
 * reports no DRAINED unless one was asked for (pe_loop_notify_below, a
 * WRITE_FULL, a pe_loop_sendfile refused with -EBUSY).  A failed send
 * closes the connection: CLOSED(errno).  Returns how many connections it
 * sent for. */
int pe_loop_flush(pe_loop *l);

/* ------------------------------------------------------------------ http */

/* HTTP/1.x request head parser: no allocation, caller-owned output, every
 * position an offset into the caller's buffer (so Python reads results with
 * one memoryview cast).  Strict where hops could disagree on framing
 * (request smuggling): CRLF line ends only (a bare LF or CR is BAD), one SP
 * between request-line parts, token method and header names, no space
 * before a colon, no obs-fold, no control byte but HTAB in values.  Empty
 * lines before the request line are skipped (RFC 9112 2.2). */
struct pe_http_span {
    uint32_t off;
    uint32_t len;
};

/* value is trimmed of surrounding SP/HTAB. */
struct pe_http_header {
    struct pe_http_span name;
    struct pe_http_span value;
};

/* pe_http_request.flags: what the headers say, nothing inferred from the
 * version (HTTP/1.0 without "Connection: keep-alive" sets no flag; the
 * caller applies each version's default).  Header names match
 * case-insensitively, as do the tokens below. */
#define PE_HTTP_CHUNKED    0x01  /* Transfer-Encoding ends with chunked */
#define PE_HTTP_CLOSE      0x02  /* Connection list has close */
#define PE_HTTP_KEEPALIVE  0x04  /* Connection list has keep-alive */
#define PE_HTTP_HAS_CL     0x08  /* Content-Length present and valid */
#define PE_HTTP_EXPECT_100 0x10  /* Expect: 100-continue */
#define PE_HTTP_TE_OTHER   0x20  /* a transfer coding other than a plain
                                    "chunked" (gzip, parameters...): 501 */
#define PE_HTTP_UPGRADE    0x40  /* Upgrade header present */
#define PE_HTTP_HOST_BAD   0x80  /* Host repeated, or missing from an
                                    HTTP/1.1 request: 400 (RFC 9112 3.2) */
#define PE_HTTP_CONNECT    0x100 /* the method is CONNECT */

/* Return codes of pe_http_parse_request besides a positive head length.
 * Errors are reported at the first byte that proves them, so a prefix of
 * the input gives either INCOMPLETE or the same answer as the whole. */
#define PE_HTTP_INCOMPLETE  -2   /* need more bytes (nothing past len is read) */
#define PE_HTTP_BAD         -1   /* malformed: answer 400 */
#define PE_HTTP_TOO_MANY    -3   /* more headers than fit: answer 431 */
/* Framing that cannot be trusted, answer 400 and close: Content-Length not
 * all digits, a list, overflowing 64 bits, or repeated with a different
 * value (identical repeats are fine); Content-Length together with
 * Transfer-Encoding; Transfer-Encoding in an HTTP/1.0 request, empty, or
 * with any coding after chunked (RFC 9112 6.1, 6.3). */
#define PE_HTTP_BAD_LENGTH  -4
#define PE_HTTP_BAD_VERSION -5   /* well-formed HTTP/x.y other than 1.0/1.1: 505 */

struct pe_http_request {
    uint64_t content_length;     /* valid with PE_HTTP_HAS_CL */
    struct pe_http_span method;
    struct pe_http_span target;
    uint32_t minor_version;      /* 0 or 1 */
    uint32_t flags;              /* PE_HTTP_* */
    uint32_t nheaders;
};

/* Parse one request head at buf[0..len).  Returns the length of the head
 * (leading empty lines and the final blank line included) when complete,
 * or a PE_HTTP_* code < 0; on a code the fields of req are unspecified.
 * headers may be NULL when max_headers is 0.  For pipelined requests, parse
 * the next head at buf + returned length + body length.  The caller bounds
 * the head size (431 when still INCOMPLETE at its limit); each call rescans
 * from buf, so a head arriving in k pieces costs k scans. */
int pe_http_parse_request(const char *buf, size_t len,
                          struct pe_http_request *req,
                          struct pe_http_header *headers, uint32_t max_headers);

/* Incremental chunked-body decoder state; zero it to start. */
struct pe_http_chunked {
    uint64_t remaining;          /* bytes left in the current chunk */
    uint32_t state;
    uint32_t meta;               /* framing bytes since the last data run */
};
/* Decode in place, tolerating input split anywhere: consumes buf[0..len),
 * moves payload bytes to the front, returns their count (>= 0) and sets
 * *consumed (== len unless *done) and *done (1 after the last chunk and the
 * trailers, which are skipped; bytes from buf + *consumed on belong to the
 * next request).  PE_HTTP_BAD on malformed framing (CRLF only, chunk size
 * overflowing 64 bits, whitespace after a size without an extension, more
 * than 8192 bytes of extensions or trailers), and on every later call. */
int64_t pe_http_decode_chunked(struct pe_http_chunked *st, char *buf,
                               size_t len, size_t *consumed, int *done);

/* PE_CDEF_END */

#ifdef __cplusplus
}
#endif

#endif /* PYEPOLL_H */

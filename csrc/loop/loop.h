/*
 * loop.h - internals shared by loop.c (lifecycle, run, accept, timeouts)
 * and loop_io.c (per-connection reads, writes, closes and the handle API).
 *
 * Interest policy.  Level mode registers a connection for READ while it
 * wants input and WRITE only while output is queued, and unregisters it when
 * it wants neither (epoll and poll report ERR/HUP even with an empty mask,
 * which would spin).  Edge mode registers READ|WRITE|EDGE(|RDHUP) once and
 * never calls epoll_ctl again for that connection: pausing is a flag, and a
 * resume that may have missed an edge queues a read attempt (the pending
 * list) for the next run.
 */
#ifndef PE_LOOP_H
#define PE_LOOP_H

#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "conntable.h"
#include "pyepoll.h"
#include "ring.h"

/* Connection flags used by the loop (the table owns the low four bits). */
#define PE_CF_EOF        0x0010u   /* peer shut its writing side */
#define PE_CF_SHUT_WANT  0x0020u   /* shutdown(SHUT_WR) once output drains */
#define PE_CF_SHUT_DONE  0x0040u
#define PE_CF_UPAUSE     0x0080u   /* paused by the user */
#define PE_CF_HPAUSE     0x0100u   /* paused: unread input >= in_high */
#define PE_CF_EPAUSE     0x0200u   /* paused: echo output >= out_high */
#define PE_CF_REG_READ   0x0400u   /* level mode: registered interest */
#define PE_CF_REG_WRITE  0x0800u
#define PE_CF_REG        0x1000u   /* registered with the poller at all */
#define PE_CF_WFULL      0x2000u   /* WRITE_FULL reported, not yet drained */
#define PE_CF_PENDING    0x4000u   /* on the pending-read list */
#define PE_CF_RDMORE     0x8000u   /* edge: socket may hold unread bytes */
#define PE_CF_DIRECT    0x10000u   /* this run read into the batch buffer:
                                      bidx is the offset, DATA's arg the length */
#define PE_CF_KEEPFD    0x20000u   /* the caller closes the fd, never the loop */
#define PE_CF_WANTW     0x40000u   /* report DRAINED when writable (sendfile) */
#define PE_CF_LOWARM    0x80000u   /* report DRAINED(queued) at <= wlow */
#define PE_CF_DEFER    0x100000u   /* defer_writes: every queued byte is
                                      deferred (none sent, socket not known
                                      full); on the flush list */
#define PE_CF_DREPORT  0x200000u   /* report DRAINED(0) when the deferred
                                      bytes are out (sendfile's -EBUSY) */
#define PE_CF_CANNED   0x400000u   /* pe_loop_canned_mark: canned answers */

#define PE_CF_PAUSED (PE_CF_UPAUSE | PE_CF_HPAUSE | PE_CF_EPAUSE)

/* fd-map values: 0 = nothing, 1..PE_CT_MAX = slot + 1, tags above. */
#define PE_FD_LISTENER 0x80000000u    /* | listener id */
#define PE_FD_WAKEUP   0xFFFFFFFFu
/* pe_loop_watch: | 1 watched for reading, | 2 for writing (never both 0). */
#define PE_FD_FOREIGN  0x7FFFFFF8u
#define PE_FD_IS_FOREIGN(v) (((v) & ~3u) == PE_FD_FOREIGN)
/* pe_loop_watch_wake: a foreign fd watched for no event of its own (so one
 * closed unforgotten is forgotten as the others are). */
#define PE_FD_WAKE_ONLY PE_FD_FOREIGN

/* accept_paused reasons. */
#define PE_AP_FULL   0x1
#define PE_AP_EMFILE 0x2
#define PE_EMFILE_RETRY_MS 1000

struct pe_listener {
    int fd;                  /* -1: removed */
    int registered;
    int ready;               /* reported readable in this run */
    int no_nodelay;          /* TCP_NODELAY refused (unix socket) */
};

struct pe_loop {
    /* loop_guard.c: one thread inside at a time; teardown requested. */
    atomic_int inside;
    atomic_int closing;
    int dead;                    /* torn down: every entry is -EBADF */
    struct pe_loop_config cfg;
    pe_poller *p;
    unsigned caps;
    uint32_t conn_events;        /* registration of a connection */
    struct pe_conntable ct;
    struct pe_bufpool pool;

    uint32_t *fdmap;
    int nfdmap;

    struct pe_listener *ls;
    int nls;
    int ls_ready;                /* a listener's ready may be set: run looks */
    unsigned accept_paused;      /* PE_AP_* */
    /* cfg.busy_poll_us: the last wait ended within it, so the next one
     * polls first (a wait that had to sleep longer does not). */
    int spin_ok;
    int woke;                    /* a watch_wake fd was read (run_repeat) */
    uint64_t emfile_until;       /* ms: retry accepting after EMFILE */
    int reserve_fd;              /* spare descriptor for EMFILE */

    int wake_r, wake_w;
    /* A wakeup is written and not yet drained: pe_loop_wakeup skips its
     * write() then (a burst of call_soon_threadsafe costs one syscall, as
     * libuv's uv_async_send does with its pending flag). */
    atomic_int wake_pending;

    struct pe_event *evs;        /* poller output, reused */
    int nevs;

    char *bbuf;                  /* buffer of the last pe_loop_run_into */
    uint32_t bbuflen;
    struct pe_loop_bevent *bout; /* and its events */
    /* During a pe_loop_run_into that started with nothing queued: reads
     * go straight into dbuf (see loop_batch.c); NULL otherwise. */
    char *dbuf;
    uint32_t dpos, dlen, dmax;
    uint32_t bn;                 /* events it handed out */

    /* pe_loop_batch_setup's buffers for pe_loop_run_batch. */
    const pe_handle *sb_echo;
    size_t sb_echo_cap;
    struct pe_loop_bevent *sb_out;
    int sb_max;
    void *sb_buf;
    size_t sb_buflen;

    struct pe_loop_event *q;     /* events not yet handed out */
    uint32_t qhead, qlen, qcap;

    uint32_t *wlow;              /* per slot: pe_loop_notify_below's mark
                                    (calloc'd on first use, NULL before) */
    uint32_t *pend;              /* slots needing a read attempt */
    uint32_t npend, pendcap;
    /* defer_writes: connections holding deferred bytes, as handles so an
     * entry whose slot was freed (and maybe reused) is known stale; only
     * entries whose slot still has PE_CF_DEFER count (see loop_io.c). */
    pe_handle *dfl;
    uint32_t ndfl, dflcap;

    /* pe_loop_set_canned: the ask, its answer PE_CANNED_RUN times over
     * (one send for a pipelined run), valid while time() < cn_until. */
    char *cn_ask;
    char *cn_answers;
    uint32_t cn_asklen, cn_anslen;
    int64_t cn_until;

    uint64_t (*clock)(void *);
    void *clock_arg;
    uint64_t now;                /* ms, read once per run */

    struct pe_loop_stats st;
};

/* Tests: replace the monotonic millisecond clock. */
void pe__loop_set_clock(pe_loop *l, uint64_t (*fn)(void *), void *arg);

/* The implementations behind the entry points of loop_guard.c, which
 * call them with the loop held; inside the core, call these. */
int     pe__loop_run(pe_loop *l, struct pe_loop_event *out, int max,
                     int timeout_ms);
int     pe__loop_unget(pe_loop *l, const struct pe_loop_event *ev, int n);
int     pe__loop_run_into(pe_loop *l, const pe_handle *echo, size_t necho,
                          struct pe_loop_bevent *out, int max, int timeout_ms,
                          void *buf, size_t buflen);
int     pe__loop_add_listener(pe_loop *l, int fd);
int     pe__loop_remove_listener(pe_loop *l, int id);
int     pe__loop_batch_setup(pe_loop *l, const pe_handle *echo, size_t echo_cap,
                             struct pe_loop_bevent *out, int max, void *buf,
                             size_t buflen);
int     pe__loop_run_batch(pe_loop *l, int necho, int timeout_ms);
int     pe__loop_run_batch_repeat(pe_loop *l, int necho, int timeout_ms,
                                  unsigned flags);
int64_t pe__loop_read(pe_loop *l, pe_handle h, void *buf, size_t len);
int64_t pe__loop_send(pe_loop *l, pe_handle h, const void *buf, size_t len);
int64_t pe__loop_reply(pe_loop *l, pe_handle h, uint32_t off, uint32_t len);
int     pe__loop_echo(pe_loop *l, const pe_handle *hs, size_t n);
int     pe__loop_close(pe_loop *l, pe_handle h, int mode);
int     pe__loop_shutdown(pe_loop *l, pe_handle h);
int     pe__loop_pause_reading(pe_loop *l, pe_handle h);
int     pe__loop_resume_reading(pe_loop *l, pe_handle h);
int     pe__loop_arm_read_timeout(pe_loop *l, pe_handle h, int on);
int     pe__loop_set_token(pe_loop *l, pe_handle h, uint64_t token);
int     pe__loop_get_token(pe_loop *l, pe_handle h, uint64_t *token);
int     pe__loop_buffered(pe_loop *l, pe_handle h, uint32_t *in, uint32_t *out);
int     pe__loop_peer(pe_loop *l, pe_handle h, char *host, size_t hostlen,
                      int *port);
int     pe__loop_fileno(pe_loop *l, pe_handle h);
int     pe__loop_get_stats(pe_loop *l, struct pe_loop_stats *out);
int     pe__loop_watch(pe_loop *l, int fd, uint32_t events);
int     pe__loop_watch_wake(pe_loop *l, int fd, int on);
int     pe__loop_adopt(pe_loop *l, int fd, uint32_t flags, pe_handle *out);
int     pe__loop_keep_fd(pe_loop *l, pe_handle h);
int     pe__loop_notify_below(pe_loop *l, pe_handle h, uint32_t low);
int     pe__loop_fd_handle(pe_loop *l, int fd, pe_handle *out);
int64_t pe__loop_write(pe_loop *l, pe_handle h, const void *buf, size_t len);
int64_t pe__loop_sendfile(pe_loop *l, pe_handle h, int in_fd, int64_t offset,
                          size_t count);
int     pe__loop_flush(pe_loop *l);
int     pe__loop_set_canned(pe_loop *l, const void *ask, size_t ask_len,
                            const void *answer, size_t answer_len,
                            int64_t until);
int     pe__loop_canned_mark(pe_loop *l, pe_handle h, int on);

/* loop.c */
/* Close every connection, free all but the struct and the wakeup fds. */
void pe__loop_teardown(pe_loop *l);
/* Wait and do the I/O of one run; events pile up in the queue.  0 or the
 * poller's -errno (only when nothing is queued to hand out instead). */
int  pe__loop_run_io(pe_loop *l, int timeout_ms);
int  pe__loop_fdmap_set(pe_loop *l, int fd, uint32_t v);
void pe__loop_emit(pe_loop *l, uint32_t kind, uint32_t arg, pe_handle h);
/* loop_accept.c */
void pe__loop_slot_freed(pe_loop *l);
void pe__loop_accept(pe_loop *l, int id);
void pe__loop_accept_resume(pe_loop *l, unsigned why);

/* loop_fd.c: a foreign fd's readiness -> PE_EV_FD; forget a watched fd
 * whose number is about to be reused (it was closed without unwatch). */
void pe__fd_event(pe_loop *l, uint32_t v, const struct pe_event *ev);
void pe__fd_forget_stale(pe_loop *l, int fd);

/* loop_batch.c: 1 if it read (or closed), 0 if the ring must be used. */
int  pe__conn_read_direct(pe_loop *l, uint32_t slot, int short_ok);

/* loop_io.c */
ssize_t pe__sendv(int fd, struct iovec *iov, int n);   /* no SIGPIPE */
void pe__conn_finish(pe_loop *l, uint32_t slot, int abort);  /* no event */
/* These return -1 when they closed the connection. */
int  pe__conn_interest(pe_loop *l, uint32_t slot);
int  pe__conn_resumed(pe_loop *l, uint32_t slot);
void pe__conn_pending_add(pe_loop *l, uint32_t slot);
/* defer_writes: queue len bytes without sending (1), or 0 when they must
 * be sent now (deferring is off, the socket is known full, or the
 * connection would hold more deferred bytes than allowed: those it holds
 * are sent first, so the caller's send keeps the order); < 0: -ENOMEM, or
 * -EPIPE when sending the deferred bytes closed it (CLOSED follows). */
int  pe__conn_defer(pe_loop *l, uint32_t slot, const void *buf, size_t len);
/* loop_guard teardown: each connection's deferred bytes, one send. */
void pe__loop_flush_teardown(pe_loop *l);
void pe__conn_open(pe_loop *l, int fd, int listener);
/* Make fd a connection (registered, no event): 0 and *slot, or -errno with
 * fd left open. */
int  pe__conn_attach(pe_loop *l, int fd, uint32_t *slot);
void pe__conn_event(pe_loop *l, uint32_t slot, uint32_t events);
void pe__conn_pending(pe_loop *l, uint32_t slot);
/* Unread input was taken: resume reading paused at in_high once below
 * in_low (may close the connection on a poller error). */
void pe__conn_taken(pe_loop *l, uint32_t slot);
/* Close for the loop's own reasons: CLOSED(err) unless already detached. */
void pe__conn_close(pe_loop *l, uint32_t slot, int err);

static inline uint32_t pe__tick(const pe_loop *l)
{
    return (uint32_t)l->now;
}

static inline void pe__conn_touch(pe_loop *l, uint32_t slot)
{
    if (l->cfg.idle_timeout_ms)
        pe__lru_touch(&l->ct, PE_LRU_IDLE, slot, pe__tick(l));
}

/* wakeup.c: rd/wr are the same eventfd on Linux, a pipe elsewhere. */
int  pe__wakeup_open(int *rd, int *wr);
void pe__wakeup_close(int rd, int wr);
int  pe__wakeup_signal(int wr);
void pe__wakeup_drain(int rd);

#endif /* PE_LOOP_H */

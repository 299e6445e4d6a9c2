/*
 * loop_batch.c - handing a batch out with its bytes (pe_loop_run_into) and
 * answering from them (pe_loop_reply, pe_loop_echo).
 *
 * A binding pays per call, not per byte: pe_loop_run_into moves every DATA
 * event's bytes into one caller buffer, so the caller needs no read call
 * per connection, and pe_loop_echo sends a whole batch of echo replies in
 * one call (pe_loop_run_into takes that list too, making one call per
 * batch in all).  A connection remembers where its DATA sits in the last
 * batch (bidx), so an echo needs only its handle.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "loop.h"

int pe__loop_batch_setup(pe_loop *l, const pe_handle *echo, size_t echo_cap,
                         struct pe_loop_bevent *out, int max, void *buf,
                         size_t buflen)
{
    if ((!echo && echo_cap) || !out || max <= 0 || !buf || buflen == 0)
        return -EINVAL;
    l->sb_echo = echo;
    l->sb_echo_cap = echo_cap;
    l->sb_out = out;
    l->sb_max = max;
    l->sb_buf = buf;
    l->sb_buflen = buflen;
    return 0;
}

int pe__loop_run_batch(pe_loop *l, int necho, int timeout_ms)
{
    if (!l->sb_out || necho < 0 || (size_t)necho > l->sb_echo_cap)
        return -EINVAL;
    return pe__loop_run_into(l, necho ? l->sb_echo : NULL, (size_t)necho,
                             l->sb_out, l->sb_max, timeout_ms, l->sb_buf,
                             l->sb_buflen);
}

int64_t pe__loop_reply(pe_loop *l, pe_handle h, uint32_t off, uint32_t len)
{
    if (!l->bbuf || off > l->bbuflen || len > l->bbuflen - off)
        return -EINVAL;
    return pe__loop_send(l, h, l->bbuf + off, len);
}

/* h's DATA of the last batch sent back, once: 1 if sent or queued. */
static int echo_one(pe_loop *l, pe_handle h)
{
    struct pe_loop_bevent *e;
    struct pe_conn *c;
    uint32_t idx;
    int64_t rc;

    if (!(c = pe__ct_get(&l->ct, h)) || !c->bidx)
        return 0;
    idx = c->bidx - 1;
    c->bidx = 0;                         /* once per DATA */
    if (idx >= l->bn || (e = &l->bout[idx])->handle != h ||
        e->kind != PE_EV_DATA)
        return 0;                        /* its DATA was in an older batch */
    rc = pe__loop_send(l, h, l->bbuf + e->off, (size_t)e->arg);
    if (rc == -ENOBUFS)                  /* nobody to tell but CLOSED */
        pe__conn_close(l, (uint32_t)h, ENOBUFS);
    return rc >= 0;
}

int pe__loop_echo(pe_loop *l, const pe_handle *hs, size_t n)
{
    size_t i;
    int sent = 0;

    for (i = 0; i < n; i++)
        sent += echo_one(l, hs[i]);
    return sent;
}

/* The runs a binding would otherwise make one by one, each between taking
 * and giving up its lock: only the first gets the caller's echoes. */
int pe__loop_run_batch_repeat(pe_loop *l, int necho, int timeout_ms,
                              unsigned flags)
{
    uint64_t deadline = 0, now;
    int n, i;

    if (flags & ~(unsigned)(PE_RUN_ECHO_DATA | PE_RUN_AGAIN_EMPTY))
        return -EINVAL;
    if (timeout_ms > 0)
        deadline = l->clock(l->clock_arg) + (uint64_t)timeout_ms;
    for (;;) {
        l->woke = 0;
        n = pe__loop_run_batch(l, necho, timeout_ms);
        if (n < 0 || l->woke || atomic_load(&l->closing) || timeout_ms == 0)
            return n;
        if (!(flags & (n ? PE_RUN_ECHO_DATA : PE_RUN_AGAIN_EMPTY)))
            return n;
        for (i = 0; i < n && l->sb_out[i].kind == PE_EV_DATA; i++)
            ;
        if (i < n)
            return n;
        /* A run may return nothing before its time (a poll for pending
         * reads, a stale event); the whole timeout is the call's. */
        if (timeout_ms > 0) {
            if ((now = l->clock(l->clock_arg)) >= deadline)
                return n;
            timeout_ms = (int)(deadline - now);
        }
        for (i = 0; i < n; i++)
            echo_one(l, l->sb_out[i].handle);
        necho = 0;
    }
}

int pe__loop_set_canned(pe_loop *l, const void *ask, size_t ask_len,
                        const void *answer, size_t answer_len, int64_t until)
{
    char *a, *run;
    int i;

    if (ask_len == 0) {
        l->cn_asklen = 0;
        return 0;
    }
    if (!ask || !answer || answer_len == 0 || ask_len > PE_CANNED_MAX ||
        answer_len > PE_CANNED_MAX)
        return -EINVAL;
    if (!(a = malloc(ask_len)))
        return -ENOMEM;
    if (!(run = malloc(answer_len * PE_CANNED_RUN))) {
        free(a);
        return -ENOMEM;
    }
    memcpy(a, ask, ask_len);
    for (i = 0; i < PE_CANNED_RUN; i++)
        memcpy(run + (size_t)i * answer_len, answer, answer_len);
    free(l->cn_ask);
    free(l->cn_answers);
    l->cn_ask = a;
    l->cn_answers = run;
    l->cn_asklen = (uint32_t)ask_len;
    l->cn_anslen = (uint32_t)answer_len;
    l->cn_until = until;
    return 0;
}

int pe__loop_canned_mark(pe_loop *l, pe_handle h, int on)
{
    struct pe_conn *c = pe__ct_get(&l->ct, h);

    if (!c)
        return -ESTALE;
    if (on)
        c->flags |= PE_CF_CANNED;
    else
        c->flags &= ~PE_CF_CANNED;
    return 0;
}

/* n bytes just read at p on a marked connection: 1 if they were k copies
 * of the ask and k answers went out (or the send failed and closed the
 * connection), 0 if the caller must hand them out as DATA. */
static int canned_answer(pe_loop *l, uint32_t slot, const char *p,
                         uint32_t n)
{
    uint32_t len = l->cn_asklen, i, k;
    struct timespec now;
    pe_handle h;
    int64_t rc;

    if (!len || n % len || (k = n / len) > PE_CANNED_RUN)
        return 0;
    /* Shut down for writing (pe_loop_shutdown): no answer can go out, and
     * the caller still reads the rest of the input: DATA as for anyone. */
    if (l->ct.slots[slot].flags & (PE_CF_SHUT_WANT | PE_CF_SHUT_DONE))
        return 0;
    for (i = 0; i < n; i += len)
        if (memcmp(p + i, l->cn_ask, len) != 0)
            return 0;
    /* Not time(): on Linux it is the coarse clock, a tick behind the
     * one the caller's until came from. */
    if (clock_gettime(CLOCK_REALTIME, &now) < 0 ||
        (int64_t)now.tv_sec >= l->cn_until)
        return 0;                        /* stale Date: the caller renews */
    h = pe__ct_handle(&l->ct, slot);
    rc = pe__loop_send(l, h, l->cn_answers, (size_t)k * l->cn_anslen);
    if (rc < 0 && pe__ct_get(&l->ct, h))
        pe__conn_close(l, slot, (int)-rc);   /* nobody to tell but CLOSED */
    l->st.canned += k;
    return 1;
}

/* Read straight into the caller's buffer, skipping the input ring, when
 * the DATA this read makes is sure to be handed out by this call: the run
 * started with nothing queued (so no older DATA needs the buffer first),
 * the event's place in the queue is below max, and the connection holds
 * nothing unread.  One read per connection per run: bytes read after it
 * would belong behind these, so a connection that may hold more is read
 * again next run (edge: pending list; level: the poller says so). */
int pe__conn_read_direct(pe_loop *l, uint32_t slot, int short_ok)
{
    struct pe_conn *c = &l->ct.slots[slot];
    uint32_t room = l->cfg.in_high, space = l->dlen - l->dpos;
    pe_handle h;
    ssize_t n;

    if (c->flags & PE_CF_DIRECT) {       /* read already in this run */
        c->flags |= PE_CF_RDMORE;
        if (l->cfg.edge)
            pe__conn_pending_add(l, slot);
        return 1;
    }
    if (l->qlen >= l->dmax || space < (room < 4096 ? room : 4096))
        return 0;
    if (room > space)
        room = space;
    do {
        n = read(c->fd, l->dbuf + l->dpos, room);
    } while (n < 0 && errno == EINTR);
    l->st.syscalls++;
    h = pe__ct_handle(&l->ct, slot);
    if (n > 0 && (c->flags & PE_CF_CANNED) &&
        canned_answer(l, slot, l->dbuf + l->dpos, (uint32_t)n)) {
        l->st.bytes_in += (uint64_t)n;
        if (!(c->flags & PE_CF_INUSE) || pe__ct_handle(&l->ct, slot) != h)
            return 1;                    /* the send closed it */
        if (short_ok && (uint32_t)n < room) {
            c->flags &= ~PE_CF_RDMORE;
        } else {
            c->flags |= PE_CF_RDMORE;
            if (l->cfg.edge)
                pe__conn_pending_add(l, slot);
        }
        pe__conn_touch(l, slot);
        return 1;
    }
    if (n > 0) {
        c->bidx = l->dpos;
        c->flags |= PE_CF_DIRECT;
        l->dpos += (uint32_t)n;
        l->st.bytes_in += (uint64_t)n;
        if (short_ok && (uint32_t)n < room) {
            c->flags &= ~PE_CF_RDMORE;
        } else {
            c->flags |= PE_CF_RDMORE;
            if (l->cfg.edge)
                pe__conn_pending_add(l, slot);
        }
        pe__conn_touch(l, slot);
        pe__loop_emit(l, PE_EV_DATA, (uint32_t)n, h);
    } else if (n == 0) {
        c->flags = (c->flags | PE_CF_EOF) & ~PE_CF_RDMORE;
        pe__loop_emit(l, PE_EV_EOF, 0, h);
        pe__conn_interest(l, slot);
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
        c->flags &= ~PE_CF_RDMORE;
    } else {
        pe__conn_close(l, slot, errno);
    }
    return 1;
}

/* Direct bytes whose DATA stays queued (the call ran out of room or
 * events) move into their rings: the buffer is overwritten next call. */
static void rescue_direct(pe_loop *l, const char *buf)
{
    uint32_t i, cnt = l->qlen;
    struct pe_loop_event *e;
    struct pe_conn *c;

    for (i = 0; i < cnt; i++) {
        e = &l->q[(l->qhead + i) & (l->qcap - 1)];
        if (e->kind != PE_EV_DATA || !(c = pe__ct_get(&l->ct, e->handle)) ||
            !(c->flags & PE_CF_DIRECT))
            continue;
        c->flags &= ~PE_CF_DIRECT;
        /* The ring is empty: nothing was read after the direct bytes. */
        if (pe__ring_append(&c->in, &l->pool, buf + c->bidx, e->arg,
                            l->cfg.in_high) < 0) {
            pe__conn_close(l, (uint32_t)e->handle, ENOMEM);
            continue;
        }
        c->bidx = 0;
    }
}

/* Hand out queued events; a DATA event takes its connection's unread bytes
 * along, packed into buf in event order.  A DATA whose bytes were taken
 * already (a second DATA of a carried-over batch) or whose handle went
 * stale is dropped: there is nothing left to report.  A DATA that does not
 * fit waits for the next call, so each connection's bytes stay whole and
 * in order. */
static int deliver_into(pe_loop *l, struct pe_loop_bevent *out, int max,
                        char *buf, uint32_t buflen)
{
    uint32_t pos = l->dpos, mask = l->qcap - 1, take;
    struct pe_loop_event e;
    struct pe_conn *c;
    int n = 0;

    while (n < max && l->qlen) {
        e = l->q[l->qhead];
        out[n].kind = e.kind;
        out[n].handle = e.handle;
        out[n].arg = e.arg;
        out[n].off = 0;
        if (e.kind == PE_EV_DATA) {
            if ((c = pe__ct_get(&l->ct, e.handle)) &&
                (c->flags & PE_CF_DIRECT)) {
                /* Read into buf already, at bidx; the ring is empty. */
                c->flags &= ~PE_CF_DIRECT;
                out[n].off = c->bidx;
                c->bidx = (uint32_t)++n;
                l->qhead = (l->qhead + 1) & mask;
                l->qlen--;
                continue;
            }
            if (!c || c->in.len == 0) {
                l->qhead = (l->qhead + 1) & mask;
                l->qlen--;
                continue;
            }
            take = c->in.len;
            if (take > buflen - pos) {
                if (n || pos)
                    break;
                take = buflen;           /* buflen < in_high: stay queued */
            }
            pe__ring_take(&c->in, &l->pool, buf + pos, take);
            out[n].arg = take;
            out[n].off = pos;
            pos += take;
            c->bidx = (uint32_t)++n;
            if (c->in.len)
                break;                   /* the event stays for the rest */
            /* May close the connection, appending CLOSED to the queue. */
            pe__conn_taken(l, (uint32_t)e.handle);
            mask = l->qcap - 1;
        } else {
            n++;
        }
        l->qhead = (l->qhead + 1) & mask;
        l->qlen--;
    }
    l->st.events += (uint64_t)n;
    return n;
}

int pe__loop_run_into(pe_loop *l, const pe_handle *echo, size_t necho,
                     struct pe_loop_bevent *out, int max, int timeout_ms,
                     void *buf, size_t buflen)
{
    int rc;

    if (!out || max <= 0 || !buf || buflen == 0 || (necho && !echo))
        return -EINVAL;
    if (necho)
        pe__loop_echo(l, echo, necho);
    if (l->ndfl)
        pe__loop_flush(l);      /* deferred writes leave before the wait */
    if (buflen > UINT32_MAX)
        buflen = UINT32_MAX;
    l->bbuf = buf;
    l->bbuflen = (uint32_t)buflen;
    l->bout = out;
    l->bn = 0;                   /* the last batch's bytes are overwritten */
    l->dbuf = l->qlen || l->cfg.echo ? NULL : buf;
    l->dpos = 0;
    l->dlen = (uint32_t)buflen;
    l->dmax = (uint32_t)max;
    /* Reads all answered in C (canned) make no events: 0 goes back, not
     * a second wait here, so the caller gets to run its signal handlers
     * (a signal while the loop answers interrupts no syscall). */
    rc = pe__loop_run_io(l, timeout_ms);
    l->dbuf = NULL;
    if (rc < 0)
        return rc;                       /* nothing was read: dpos is 0 */
    if (l->qlen)
        l->bn = (uint32_t)deliver_into(l, out, max, buf, (uint32_t)buflen);
    if (l->dpos && l->qlen)
        rescue_direct(l, buf);
    l->dpos = 0;
    return (int)l->bn;
}

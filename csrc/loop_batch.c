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

#include "loop.h"

int64_t pe_loop_reply(pe_loop *l, pe_handle h, uint32_t off, uint32_t len)
{
    if (!l->bbuf || off > l->bbuflen || len > l->bbuflen - off)
        return -EINVAL;
    return pe_loop_send(l, h, l->bbuf + off, len);
}

int pe_loop_echo(pe_loop *l, const pe_handle *hs, size_t n)
{
    struct pe_loop_bevent *e;
    struct pe_conn *c;
    uint32_t idx;
    int64_t rc;
    size_t i;
    int sent = 0;

    for (i = 0; i < n; i++) {
        if (!(c = pe__ct_get(&l->ct, hs[i])) || !c->bidx)
            continue;
        idx = c->bidx - 1;
        c->bidx = 0;                     /* once per DATA */
        if (idx >= l->bn || (e = &l->bout[idx])->handle != hs[i] ||
            e->kind != PE_EV_DATA)
            continue;                    /* its DATA was in an older batch */
        rc = pe_loop_send(l, hs[i], l->bbuf + e->off, (size_t)e->arg);
        if (rc == -ENOBUFS)              /* nobody to tell but CLOSED */
            pe__conn_close(l, (uint32_t)hs[i], ENOBUFS);
        else if (rc >= 0)
            sent++;
    }
    return sent;
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
    uint32_t pos = 0, mask = l->qcap - 1, take;
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
            if (!(c = pe__ct_get(&l->ct, e.handle)) || c->in.len == 0) {
                l->qhead = (l->qhead + 1) & mask;
                l->qlen--;
                continue;
            }
            take = c->in.len;
            if (take > buflen - pos) {
                if (n)
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

int pe_loop_run_into(pe_loop *l, const pe_handle *echo, size_t necho,
                     struct pe_loop_bevent *out, int max, int timeout_ms,
                     void *buf, size_t buflen)
{
    int rc;

    if (!out || max <= 0 || !buf || buflen == 0 || (necho && !echo))
        return -EINVAL;
    if (necho)
        pe_loop_echo(l, echo, necho);
    if (buflen > UINT32_MAX)
        buflen = UINT32_MAX;
    l->bbuf = buf;
    l->bbuflen = (uint32_t)buflen;
    l->bout = out;
    l->bn = 0;                   /* the last batch's bytes are overwritten */
    if ((rc = pe__loop_run_io(l, timeout_ms)) < 0)
        return rc;
    if (l->qlen)
        l->bn = (uint32_t)deliver_into(l, out, max, buf, (uint32_t)buflen);
    return (int)l->bn;
}

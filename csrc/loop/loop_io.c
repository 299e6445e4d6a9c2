/*
 * loop_io.c - one connection's reads, writes and closes, and the
 * handle-based API (pe_loop_read/send/close/...).
 *
 * Functions that may close the connection return -1 when they did; the
 * caller must not touch the slot afterwards.  Every close of a connection
 * whose handle is still live queues exactly one CLOSED.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "loop.h"

#ifdef MSG_NOSIGNAL
#define PE_NOSIGNAL MSG_NOSIGNAL
#else
#define PE_NOSIGNAL 0            /* SO_NOSIGPIPE is set on the socket */
#endif

/* Read only when at least this much room can be offered; an empty ring
 * offers a whole PE_RING_MIN buffer. */
#define PE_READ_MIN 4096u

#define SLOT(l, s) (&(l)->ct.slots[(s)])

ssize_t pe__sendv(int fd, struct iovec *iov, int n)
{
    struct msghdr m;
    ssize_t r;

    do {
        if (n == 1) {
            r = send(fd, iov[0].iov_base, iov[0].iov_len, PE_NOSIGNAL);
        } else {
            memset(&m, 0, sizeof(m));
            m.msg_iov = iov;
            m.msg_iovlen = n;
            r = sendmsg(fd, &m, PE_NOSIGNAL);
        }
    } while (r < 0 && errno == EINTR);
    return r;
}

void pe__conn_pending_add(pe_loop *l, uint32_t slot)
{
    struct pe_conn *c = SLOT(l, slot);

    if (c->flags & PE_CF_PENDING)
        return;
    if (l->npend == l->pendcap) {
        uint32_t n = l->pendcap ? l->pendcap * 2 : 64;
        uint32_t *p = realloc(l->pend, (size_t)n * sizeof(*p));

        if (!p)
            return;              /* the idle timeout will reap it */
        l->pend = p;
        l->pendcap = n;
    }
    l->pend[l->npend++] = slot;
    c->flags |= PE_CF_PENDING;
}

/* Teardown without events. */
void pe__conn_finish(pe_loop *l, uint32_t slot, int abort)
{
    struct pe_conn *c = SLOT(l, slot);

    if (c->flags & PE_CF_REG) {
        pe_poller_unregister(l->p, c->fd);
        l->st.syscalls++;
    }
    if (abort) {
        struct linger lg = { 1, 0 };

        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        l->st.syscalls++;
    }
    if (!(c->flags & PE_CF_KEEPFD)) {
        close(c->fd);
        l->st.syscalls++;
    }
    l->fdmap[c->fd] = 0;
    pe__ring_clear(&c->in, &l->pool);
    pe__ring_clear(&c->out, &l->pool);
    pe__ct_free(&l->ct, slot);
    l->st.closed++;
    pe__loop_slot_freed(l);
}

void pe__conn_close(pe_loop *l, uint32_t slot, int err)
{
    struct pe_conn *c = SLOT(l, slot);

    if (!(c->flags & PE_CF_DETACHED))
        pe__loop_emit(l, PE_EV_CLOSED, (uint32_t)err,
                      pe__ct_handle(&l->ct, slot));
    pe__conn_finish(l, slot, 0);
}

/* Level mode: make the registered interest match what the connection
 * wants.  Edge mode registered everything once. */
int pe__conn_interest(pe_loop *l, uint32_t slot)
{
    struct pe_conn *c = SLOT(l, slot);
    uint32_t want = 0, have = 0, f;
    int rc;

    if (l->cfg.edge)
        return 0;
    if (!(c->flags & (PE_CF_EOF | PE_CF_PAUSED | PE_CF_DETACHED)))
        want |= PE_READ;
    /* Deferred bytes wait for the flush before the next wait, not for a
     * writable event (the socket is not known to be full). */
    if ((c->out.len && !(c->flags & PE_CF_DEFER)) ||
        (c->flags & PE_CF_WANTW))
        want |= PE_WRITE;
    if (c->flags & PE_CF_REG_READ)
        have |= PE_READ;
    if (c->flags & PE_CF_REG_WRITE)
        have |= PE_WRITE;
    if (want == have)
        return 0;
    if (!want)
        rc = pe_poller_unregister(l->p, c->fd);
    else if (!have)
        rc = pe_poller_register(l->p, c->fd, want);
    else
        rc = pe_poller_modify(l->p, c->fd, want);
    l->st.syscalls++;
    if (rc < 0) {
        pe__conn_close(l, slot, -rc);
        return -1;
    }
    f = c->flags & ~(PE_CF_REG | PE_CF_REG_READ | PE_CF_REG_WRITE);
    if (want)
        f |= PE_CF_REG;
    if (want & PE_READ)
        f |= PE_CF_REG_READ;
    if (want & PE_WRITE)
        f |= PE_CF_REG_WRITE;
    c->flags = f;
    return 0;
}

/* A pause reason was cleared. */
int pe__conn_resumed(pe_loop *l, uint32_t slot)
{
    struct pe_conn *c = SLOT(l, slot);

    if (c->flags & PE_CF_PAUSED)
        return 0;
    if (l->cfg.edge) {
        /* The edge that announced those bytes is gone: read next run. */
        if (c->flags & PE_CF_RDMORE)
            pe__conn_pending_add(l, slot);
        return 0;
    }
    return pe__conn_interest(l, slot);
}

int pe__conn_attach(pe_loop *l, int fd, uint32_t *slotp)
{
    uint32_t slot;
    struct pe_conn *c;
    int rc;

    if ((slot = pe__ct_alloc(&l->ct)) == PE_NOSLOT)
        return -ENOSPC;
    c = SLOT(l, slot);
#ifdef SO_NOSIGPIPE
    int one = 1;

    setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof(one));
    l->st.syscalls++;
#endif
    c->fd = fd;
    /* A watched fd closed without pe_loop_watch(fd, 0): its number is
     * this connection's now. */
    if (fd < l->nfdmap && PE_FD_IS_FOREIGN(l->fdmap[fd]))
        pe__fd_forget_stale(l, fd);
    if ((rc = pe__loop_fdmap_set(l, fd, slot + 1)) == 0) {
        rc = pe_poller_register(l->p, fd, l->conn_events);
        l->st.syscalls++;
        if (rc < 0)
            l->fdmap[fd] = 0;
    }
    if (rc < 0) {
        pe__ct_free(&l->ct, slot);
        return rc;
    }
    c->flags |= PE_CF_REG | (l->cfg.edge ? 0 : PE_CF_REG_READ);
    if (l->cfg.idle_timeout_ms)
        pe__lru_push(&l->ct, PE_LRU_IDLE, slot, pe__tick(l));
    l->st.accepted++;
    *slotp = slot;
    return 0;
}

void pe__conn_open(pe_loop *l, int fd, int listener)
{
    uint32_t slot;

    if (pe__conn_attach(l, fd, &slot) < 0) {
        close(fd);
        l->st.refused++;
        return;
    }
    pe__loop_emit(l, PE_EV_OPEN, (uint32_t)listener,
                  pe__ct_handle(&l->ct, slot));
}

static int echo(pe_loop *l, uint32_t slot);

/* Output ring emptied; report: emit DRAINED (see conn_flush). */
static int conn_drained(pe_loop *l, uint32_t slot, int report)
{
    struct pe_conn *c = SLOT(l, slot);

    if (c->flags & PE_CF_DETACHED) {        /* PE_CLOSE_FLUSH finished */
        pe__conn_finish(l, slot, 0);
        return -1;
    }
    c->flags &= ~PE_CF_WFULL;
    if (report && !l->cfg.echo)
        pe__loop_emit(l, PE_EV_DRAINED, 0, pe__ct_handle(&l->ct, slot));
    if ((c->flags & (PE_CF_SHUT_WANT | PE_CF_SHUT_DONE)) == PE_CF_SHUT_WANT) {
        shutdown(c->fd, SHUT_WR);
        l->st.syscalls++;
        c->flags |= PE_CF_SHUT_DONE;
    }
    if (c->flags & PE_CF_EPAUSE) {
        c->flags &= ~PE_CF_EPAUSE;
        /* Bytes that did not fit under out_max are still in the input. */
        if (c->in.len && echo(l, slot) < 0)
            return -1;
        return pe__conn_resumed(l, slot);
    }
    return pe__conn_interest(l, slot);
}

/* Write queued output once; partial means the socket is full, and both
 * level and edge notification will say when it is not.  Deferred bytes
 * sent whole make no DRAINED (the caller never saw a full socket) unless
 * something waits for one: a low mark, a WRITE_FULL, sendfile's -EBUSY.
 * Whatever is left afterwards is plain queued output. */
static int conn_flush(pe_loop *l, uint32_t slot)
{
    struct pe_conn *c = SLOT(l, slot);
    uint32_t f = c->flags;
    int report = !(f & PE_CF_DEFER) ||
                 (f & (PE_CF_LOWARM | PE_CF_WFULL | PE_CF_DREPORT));
    struct iovec iov[2];
    ssize_t n;

    c->flags &= ~(PE_CF_DEFER | PE_CF_DREPORT);
    if (!c->out.len)
        return 0;
    n = pe__sendv(c->fd, iov, pe__ring_data_iov(&c->out, iov));
    l->st.syscalls++;
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        pe__conn_close(l, slot, errno);
        return -1;
    }
    pe__ring_consume(&c->out, &l->pool, (size_t)n);
    l->st.bytes_out += (uint64_t)n;
    pe__conn_touch(l, slot);
    if (!c->out.len) {
        c->flags &= ~PE_CF_LOWARM;
        return conn_drained(l, slot, report);
    }
    if ((c->flags & PE_CF_LOWARM) && c->out.len <= l->wlow[slot]) {
        c->flags &= ~PE_CF_LOWARM;
        pe__loop_emit(l, PE_EV_DRAINED, c->out.len,
                      pe__ct_handle(&l->ct, slot));
    }
    return 0;
}

/* ------------------------------------------------------- deferred writes */

/* defer_writes: a write to a connection with nothing queued goes into its
 * output ring and the connection onto the flush list (dfl); runs flush the
 * list before they wait (pe__loop_flush), so the writes one batch of
 * callbacks makes leave in one send.  The bytes are ordinary queued output
 * the whole time (pe_loop_buffered, close FLUSH, shutdown and sendfile see
 * them), only their first send is put off. */

static int dfl_add(pe_loop *l, uint32_t slot)
{
    if (l->ndfl == l->dflcap) {
        uint32_t n = l->dflcap ? l->dflcap * 2 : 64;
        pe_handle *p = realloc(l->dfl, (size_t)n * sizeof(*p));

        if (!p)
            return -ENOMEM;
        l->dfl = p;
        l->dflcap = n;
    }
    l->dfl[l->ndfl++] = pe__ct_handle(&l->ct, slot);
    return 0;
}

/* One send of the deferred bytes; the rest waits for writable. */
static int flush_deferred(pe_loop *l, uint32_t slot)
{
    if (conn_flush(l, slot) < 0)
        return -1;
    return SLOT(l, slot)->out.len ? pe__conn_interest(l, slot) : 0;
}

int pe__conn_defer(pe_loop *l, uint32_t slot, const void *buf, size_t len)
{
    struct pe_conn *c = SLOT(l, slot);
    uint32_t max = l->cfg.defer_writes;
    int rc;

    if (c->out.len && !(c->flags & PE_CF_DEFER))
        return 0;                        /* the socket is full: queue */
    if (c->out.len && len > max - c->out.len) {
        /* Over the bound: what is deferred leaves first, then this write
         * is deferred anew or sent by the caller. */
        if (flush_deferred(l, slot) < 0)
            return -EPIPE;
        if (c->out.len)
            return 0;
    }
    if (len > max)
        return 0;
    if (!(c->flags & PE_CF_DEFER) && dfl_add(l, slot) < 0)
        return 0;                        /* no room to remember: send */
    rc = pe__ring_append(&c->out, &l->pool, buf, len, l->cfg.out_max);
    if (rc < 0)
        return c->out.len ? rc : 0;      /* empty: the caller sends it */
    c->flags |= PE_CF_DEFER;
    if (c->out.len > l->cfg.out_high && !(c->flags & PE_CF_WFULL) &&
        !l->cfg.echo) {
        c->flags |= PE_CF_WFULL;
        pe__loop_emit(l, PE_EV_WRITE_FULL, c->out.len,
                      pe__ct_handle(&l->ct, slot));
    }
    return 1;
}

/* The live entries of the list: the slot still has the handle's
 * generation (a freed slot has a new one) and PE_CF_DEFER (cleared by
 * any send of its output, a close, or a free). */
static struct pe_conn *dfl_entry(pe_loop *l, pe_handle h)
{
    struct pe_conn *c = SLOT(l, (uint32_t)h);

    if (c->gen != (uint32_t)(h >> 32) ||
        (c->flags & (PE_CF_INUSE | PE_CF_DEFER)) !=
            (PE_CF_INUSE | PE_CF_DEFER))
        return NULL;
    return c;
}

int pe__loop_flush(pe_loop *l)
{
    uint32_t n = l->ndfl, i;
    int sent = 0;

    if (!n)
        return 0;                        /* dfl may still be NULL */
    for (i = 0; i < n; i++) {
        if (!dfl_entry(l, l->dfl[i]))
            continue;
        flush_deferred(l, (uint32_t)l->dfl[i]);
        sent++;
    }
    /* Nothing above defers anew, but keep any entry it added. */
    memmove(l->dfl, l->dfl + n, (size_t)(l->ndfl - n) * sizeof(*l->dfl));
    l->ndfl -= n;
    return sent;
}

void pe__loop_flush_teardown(pe_loop *l)
{
    struct iovec iov[2];
    struct pe_conn *c;
    uint32_t i;
    int niov;

    /* A write that found nothing queued would have been sent at once
     * without defer_writes: send it now, once, before the close. */
    for (i = 0; i < l->ndfl; i++) {
        if (!(c = dfl_entry(l, l->dfl[i])))
            continue;
        c->flags &= ~PE_CF_DEFER;
        if ((niov = pe__ring_data_iov(&c->out, iov)) > 0) {
            pe__sendv(c->fd, iov, niov);    /* what it takes; no retry */
            l->st.syscalls++;
        }
    }
    l->ndfl = 0;
}

/* Echo mode: send what was read straight from the input ring; hand what
 * the socket did not take to the output ring (no copy when it is empty). */
static int echo(pe_loop *l, uint32_t slot)
{
    struct pe_conn *c = SLOT(l, slot);
    struct iovec iov[2];
    ssize_t n;

    if (c->flags & (PE_CF_SHUT_WANT | PE_CF_SHUT_DONE)) {
        pe__ring_clear(&c->in, &l->pool);   /* nowhere to echo to */
        c->flags &= ~PE_CF_HPAUSE;
        return 0;
    }
    if (c->out.len == 0) {
        n = pe__sendv(c->fd, iov, pe__ring_data_iov(&c->in, iov));
        l->st.syscalls++;
        if (n > 0) {
            pe__ring_consume(&c->in, &l->pool, (size_t)n);
            l->st.bytes_out += (uint64_t)n;
        } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            pe__conn_close(l, slot, errno);
            return -1;
        }
        if (c->in.len == 0) {
            c->flags &= ~PE_CF_HPAUSE;
            return 0;
        }
    }
    /* Over out_max the bytes wait in the input ring until output drains. */
    if (pe__ring_move(&c->out, &c->in, &l->pool, l->cfg.out_max) < 0 ||
        c->out.len >= l->cfg.out_high)
        c->flags |= PE_CF_EPAUSE;
    /* No pe_loop_read clears an in_high pause here: echo empties the
     * input, and the caller resumes once output drains (EPAUSE). */
    if (c->in.len == 0)
        c->flags &= ~PE_CF_HPAUSE;
    return pe__conn_interest(l, slot);
}

static void conn_read(pe_loop *l, uint32_t slot, uint32_t events)
{
    struct pe_conn *c = SLOT(l, slot);
    int edge = l->cfg.edge, eof = 0, niov, i;
    /* Edge mode: a short read proves the socket empty, unless the peer's
     * FIN may be waiting behind the data (RDHUP unknown or reported). */
    int short_ok = edge && (l->caps & PE_CAP_RDHUP) &&
                   !(events & (PE_RDHUP | PE_HUP | PE_ERR));
    uint32_t got = 0, room, high = l->cfg.in_high;
    struct iovec iov[2];
    size_t offered;
    ssize_t n;

    /* Echo: input is moved whole into the output ring, so more than out_max
     * of it could never move, even with the output empty. */
    if (l->cfg.echo && l->cfg.out_max < high)
        high = l->cfg.out_max;

    if (c->flags & (PE_CF_EOF | PE_CF_DETACHED))
        return;
    if (c->flags & PE_CF_PAUSED) {
        c->flags |= PE_CF_RDMORE;
        return;
    }
    if (l->dbuf && c->in.len == 0 && pe__conn_read_direct(l, slot, short_ok))
        return;
    for (;;) {
        room = high > c->in.len ? high - c->in.len : 0;
        if (room == 0) {
            c->flags |= PE_CF_HPAUSE | PE_CF_RDMORE;
            if (pe__conn_interest(l, slot) < 0)
                return;
            break;
        }
        if (pe__ring_reserve(&c->in, &l->pool,
                             room < PE_READ_MIN ? room : PE_READ_MIN,
                             high) < 0) {
            pe__conn_close(l, slot, ENOMEM);
            return;
        }
        /* The ring may have more space than in_high allows: offer room. */
        niov = pe__ring_space_iov(&c->in, iov);
        for (offered = 0, i = 0; i < niov; i++) {
            if (iov[i].iov_len >= room - offered) {
                iov[i].iov_len = room - offered;
                niov = i + 1;
            }
            offered += iov[i].iov_len;
        }
        if (niov == 1)
            n = read(c->fd, iov[0].iov_base, iov[0].iov_len);
        else
            n = readv(c->fd, iov, niov);
        l->st.syscalls++;
        if (n > 0) {
            int empty = short_ok && (size_t)n < offered;

            pe__ring_commit(&c->in, (size_t)n);
            got += (uint32_t)n;
            l->st.bytes_in += (uint64_t)n;
            if (l->cfg.echo && echo(l, slot) < 0)
                return;
            c->flags = empty ? c->flags & ~PE_CF_RDMORE
                             : c->flags | PE_CF_RDMORE;
            /* Pause now rather than on the next wakeup. */
            if (c->in.len >= high) {
                c->flags |= PE_CF_HPAUSE;
                if (pe__conn_interest(l, slot) < 0)
                    return;
            }
            if (!edge || empty || (c->flags & PE_CF_PAUSED))
                break;                  /* level: told again if more */
            continue;
        }
        if (n == 0) {
            eof = 1;
            break;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            c->flags &= ~PE_CF_RDMORE;
            break;
        }
        pe__conn_close(l, slot, errno);
        return;
    }
    /* A read that brought nothing gives the reserved buffer back: an idle
     * connection holds no memory. */
    if (c->in.len == 0)
        pe__ring_consume(&c->in, &l->pool, 0);
    if (got) {
        pe__conn_touch(l, slot);
        if (!l->cfg.echo)
            pe__loop_emit(l, PE_EV_DATA, c->in.len,
                          pe__ct_handle(&l->ct, slot));
    }
    if (eof) {
        c->flags = (c->flags | PE_CF_EOF) & ~PE_CF_RDMORE;
        pe__loop_emit(l, PE_EV_EOF, 0, pe__ct_handle(&l->ct, slot));
        pe__conn_interest(l, slot);
    }
}

static int sock_error(pe_loop *l, int fd)
{
    int err = 0;
    socklen_t len = sizeof(err);

    l->st.syscalls++;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        return errno;
    return err;
}

void pe__conn_event(pe_loop *l, uint32_t slot, uint32_t events)
{
    struct pe_conn *c = SLOT(l, slot);
    int err;

    if (!(c->flags & PE_CF_INUSE))
        return;
    if ((events & PE_ERR) && (err = sock_error(l, c->fd)) != 0) {
        pe__conn_close(l, slot, err);
        return;
    }
    /* Write first: it frees the output ring, so an echo of what is read
     * next can go out directly. */
    if (c->out.len && (events & (PE_WRITE | PE_HUP | PE_ERR)) &&
        conn_flush(l, slot) < 0)
        return;
    if ((c->flags & PE_CF_WANTW) && (events & (PE_WRITE | PE_HUP | PE_ERR))) {
        /* pe_loop_sendfile met a full socket: tell the caller once. */
        c->flags &= ~PE_CF_WANTW;
        pe__loop_emit(l, PE_EV_DRAINED, 0, pe__ct_handle(&l->ct, slot));
        if (pe__conn_interest(l, slot) < 0)
            return;
    }
    if (events & (PE_READ | PE_RDHUP | PE_HUP | PE_ERR))
        conn_read(l, slot, events);
}

void pe__conn_pending(pe_loop *l, uint32_t slot)
{
    struct pe_conn *c = SLOT(l, slot);

    /* Entries of freed slots have lost the flag; a read done meanwhile by
     * an event cleared RDMORE. */
    if (!(c->flags & PE_CF_PENDING))
        return;
    c->flags &= ~PE_CF_PENDING;
    if (c->flags & PE_CF_RDMORE)
        conn_read(l, slot, PE_RDHUP);   /* drain to EAGAIN: FIN may wait */
}

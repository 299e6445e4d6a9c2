/*
 * loop_api.c - what the user does with a connection handle between runs.
 *
 * Every function refuses a stale handle with -ESTALE.  A handle goes stale
 * the moment its CLOSED is queued, whoever closed it, even while a FLUSH
 * close is still sending in the background.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "loop.h"

#define GET(l, h, c)                                  \
    do {                                              \
        if (!((c) = pe__ct_get(&(l)->ct, (h))))       \
            return -ESTALE;                           \
    } while (0)

void pe__conn_taken(pe_loop *l, uint32_t slot)
{
    struct pe_conn *c = &l->ct.slots[slot];

    if ((c->flags & PE_CF_HPAUSE) &&
        (c->in.len < l->cfg.in_low || c->in.len == 0)) {
        c->flags &= ~PE_CF_HPAUSE;
        pe__conn_resumed(l, slot);
    }
}

int64_t pe__loop_read(pe_loop *l, pe_handle h, void *buf, size_t len)
{
    struct pe_conn *c;
    size_t n;

    GET(l, h, c);
    n = pe__ring_take(&c->in, &l->pool, buf, len);
    pe__conn_taken(l, (uint32_t)h);
    return (int64_t)n;
}

int64_t pe__loop_send(pe_loop *l, pe_handle h, const void *buf, size_t len)
{
    uint32_t slot = (uint32_t)h;
    struct pe_conn *c;
    size_t done = 0;
    int rc;

    GET(l, h, c);
    if (c->flags & (PE_CF_SHUT_WANT | PE_CF_SHUT_DONE))
        return -EPIPE;
    if (len == 0)
        return 0;
    /* All or nothing, decided before the kernel takes a byte. */
    if (len > l->cfg.out_max || c->out.len > l->cfg.out_max - len)
        return -ENOBUFS;
    if (l->cfg.defer_writes && (rc = pe__conn_defer(l, slot, buf, len)))
        return rc < 0 ? rc : (int64_t)len;
    if (c->out.len == 0) {
        /* Most sends fit the socket buffer: one syscall, no copy. */
        struct iovec iov = { (void *)buf, len };
        ssize_t n = pe__sendv(c->fd, &iov, 1);

        l->st.syscalls++;
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            rc = errno;
            pe__conn_close(l, slot, rc);
            return -rc;
        }
        if (n > 0) {
            done = (size_t)n;
            l->st.bytes_out += (uint64_t)n;
            pe__conn_touch(l, slot);
            if (done == len)
                return (int64_t)len;
        }
    }
    rc = pe__ring_append(&c->out, &l->pool, (const char *)buf + done,
                         len - done, l->cfg.out_max);
    if (rc < 0) {
        if (done == 0)
            return rc;
        /* Part of it left already: the stream cannot be repaired. */
        pe__conn_close(l, slot, -rc);
        return rc;
    }
    if (pe__conn_interest(l, slot) < 0)
        return (int64_t)len;            /* closed; CLOSED is queued */
    if (c->out.len > l->cfg.out_high && !(c->flags & PE_CF_WFULL) &&
        !l->cfg.echo) {
        c->flags |= PE_CF_WFULL;
        pe__loop_emit(l, PE_EV_WRITE_FULL, c->out.len, h);
    }
    return (int64_t)len;
}

int pe__loop_close(pe_loop *l, pe_handle h, int mode)
{
    uint32_t slot = (uint32_t)h;
    struct pe_conn *c;

    if (mode < PE_CLOSE_FLUSH || mode > PE_CLOSE_ABORT)
        return -EINVAL;
    GET(l, h, c);
    /* The caller would close the fd while the loop still sends on it. */
    if (mode == PE_CLOSE_FLUSH && c->out.len && (c->flags & PE_CF_KEEPFD))
        return -EINVAL;
    pe__loop_emit(l, PE_EV_CLOSED, 0, h);
    if (mode == PE_CLOSE_FLUSH && c->out.len) {
        /* Keep the slot until the output is gone; refuse the handle now.
         * The idle timeout still applies to a peer that never reads. */
        c->flags = (c->flags | PE_CF_DETACHED) & ~PE_CF_RDMORE;
        pe__lru_remove(&l->ct, PE_LRU_READ, slot);
        pe__ring_clear(&c->in, &l->pool);
        pe__conn_interest(l, slot);
        return 0;
    }
    pe__conn_finish(l, slot, mode == PE_CLOSE_ABORT);
    return 0;
}

int pe__loop_shutdown(pe_loop *l, pe_handle h)
{
    struct pe_conn *c;

    GET(l, h, c);
    if (c->flags & (PE_CF_SHUT_WANT | PE_CF_SHUT_DONE))
        return 0;
    c->flags |= PE_CF_SHUT_WANT;
    if (c->out.len == 0) {
        l->st.syscalls++;
        if (shutdown(c->fd, SHUT_WR) < 0)
            return -errno;
        c->flags |= PE_CF_SHUT_DONE;
    }
    return 0;
}

int pe__loop_pause_reading(pe_loop *l, pe_handle h)
{
    struct pe_conn *c;

    GET(l, h, c);
    c->flags |= PE_CF_UPAUSE;
    pe__conn_interest(l, (uint32_t)h);
    return 0;
}

int pe__loop_resume_reading(pe_loop *l, pe_handle h)
{
    struct pe_conn *c;

    GET(l, h, c);
    if (c->flags & PE_CF_UPAUSE) {
        c->flags &= ~PE_CF_UPAUSE;
        pe__conn_resumed(l, (uint32_t)h);
    }
    return 0;
}

int pe__loop_arm_read_timeout(pe_loop *l, pe_handle h, int on)
{
    uint32_t slot = (uint32_t)h;
    struct pe_conn *c;

    GET(l, h, c);
    if (!l->cfg.read_timeout_ms)
        return -EINVAL;
    pe__lru_remove(&l->ct, PE_LRU_READ, slot);
    if (on) {
        /* Between runs the cached time may be old; the deadline is not. */
        l->now = l->clock(l->clock_arg);
        pe__lru_push(&l->ct, PE_LRU_READ, slot, pe__tick(l));
    }
    return 0;
}

int pe__loop_set_token(pe_loop *l, pe_handle h, uint64_t token)
{
    struct pe_conn *c;

    GET(l, h, c);
    c->token = token;
    return 0;
}

int pe__loop_get_token(pe_loop *l, pe_handle h, uint64_t *token)
{
    struct pe_conn *c;

    GET(l, h, c);
    *token = c->token;
    return 0;
}

int pe__loop_buffered(pe_loop *l, pe_handle h, uint32_t *in, uint32_t *out)
{
    struct pe_conn *c;

    GET(l, h, c);
    if (in)
        *in = c->in.len;
    if (out)
        *out = c->out.len;
    return 0;
}

int pe__loop_peer(pe_loop *l, pe_handle h, char *host, size_t hostlen,
                 int *port)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    const void *addr;
    struct pe_conn *c;
    int p;

    GET(l, h, c);
    if (getpeername(c->fd, (struct sockaddr *)&ss, &sl) < 0)
        return -errno;
    if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)&ss;

        addr = &sin->sin_addr;
        p = ntohs(sin->sin_port);
    } else if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&ss;

        addr = &sin6->sin6_addr;
        p = ntohs(sin6->sin6_port);
    } else {
        return -EAFNOSUPPORT;
    }
    if (!inet_ntop(ss.ss_family, addr, host, (socklen_t)hostlen))
        return -errno;
    if (port)
        *port = p;
    return 0;
}

int pe__loop_fileno(pe_loop *l, pe_handle h)
{
    struct pe_conn *c;

    GET(l, h, c);
    return c->fd;
}

/*
 * ring.c - per-connection byte ring and its buffer pool (see ring.h).
 *
 * A ring never holds more than PE_RING_LIMIT (2^31) bytes, so its capacity,
 * the next power of two, always fits a uint32_t and no sum below overflows.
 * Growth takes a fresh buffer and copies the data to its start instead of
 * calling realloc: realloc keeps the wrapped layout, which would need a
 * second copy to undo, and on failure the old buffer must stay intact.
 */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ring.h"

#define PE_RING_LIMIT (UINT32_MAX / 2 + 1)

/* The pool is a LIFO list per size threaded through the free buffers'
 * first word: parking a buffer needs no memory of its own, so it cannot
 * fail. */
void pe__bufpool_init(struct pe_bufpool *pool, uint32_t limit)
{
    for (int i = 0; i < PE_POOL_SIZES; i++)
        pool->bufs[i] = NULL;
    pool->count = pool->units = 0;
    pool->limit = limit;
}

void pe__bufpool_destroy(struct pe_bufpool *pool)
{
    for (int i = 0; i < PE_POOL_SIZES; i++) {
        while (pool->bufs[i]) {
            void **b = pool->bufs[i];

            pool->bufs[i] = *b;
            free(b);
        }
    }
    pool->count = pool->units = 0;
}

/* The pool's list for a capacity (a power of two >= PE_RING_MIN), or -1
 * for one too large to pool. */
static int size_index(uint32_t cap)
{
    int i = __builtin_ctz(cap / PE_RING_MIN);

    return i < PE_POOL_SIZES ? i : -1;
}

static char *buf_get(struct pe_bufpool *pool, uint32_t cap)
{
    int i = size_index(cap);
    void **b;

    if (i < 0 || !pool->bufs[i])
        return malloc(cap);
    b = pool->bufs[i];
    pool->bufs[i] = *b;
    pool->count--;
    pool->units -= cap / PE_RING_MIN;
    return (char *)b;
}

static void buf_put(struct pe_bufpool *pool, char *buf, uint32_t cap)
{
    void **b = (void **)(void *)buf;
    int i = size_index(cap);

    if (i < 0 || cap / PE_RING_MIN > pool->limit - pool->units) {
        free(buf);
        return;
    }
    *b = pool->bufs[i];
    pool->bufs[i] = b;
    pool->count++;
    pool->units += cap / PE_RING_MIN;
}

static void release(struct pe_ring *r, struct pe_bufpool *pool)
{
    if (r->buf)
        buf_put(pool, r->buf, r->cap);
    r->buf = NULL;
    r->cap = r->head = r->len = 0;
}

/* Copy n bytes in behind the data; the space is known to be there. */
static void copy_in(struct pe_ring *r, const char *src, size_t n)
{
    uint32_t tail = (r->head + r->len) & (r->cap - 1);
    size_t first = r->cap - tail;

    if (first > n)
        first = n;
    memcpy(r->buf + tail, src, first);
    memcpy(r->buf, src + first, n - first);
    r->len += (uint32_t)n;
}

/* Copy the first n bytes out (n <= len) without consuming them. */
static void copy_out(const struct pe_ring *r, char *dst, size_t n)
{
    size_t first = r->cap - r->head;

    if (n == 0)
        return;                         /* r->buf may be NULL */
    if (first > n)
        first = n;
    memcpy(dst, r->buf + r->head, first);
    if (n > first)                      /* wrapped: the rest from the start */
        memcpy(dst + first, r->buf, n - first);
}

int pe__ring_reserve(struct pe_ring *r, struct pe_bufpool *pool, size_t need,
                     size_t max)
{
    uint32_t cap, total;
    char *nb;

    if (need == 0)
        return 0;
    /* Checked even when the space is there: with a max that is not a power
     * of two the buffer may be larger than max allows to hold. */
    if (need > PE_RING_LIMIT - r->len || r->len + need > max)
        return -ENOBUFS;
    if (need <= r->cap - r->len)
        return 0;
    total = r->len + (uint32_t)need;
    cap = r->cap ? r->cap : PE_RING_MIN;
    while (cap < total)
        cap *= 2;
    nb = buf_get(pool, cap);
    if (!nb)
        return -ENOMEM;
    copy_out(r, nb, r->len);
    if (r->buf)
        buf_put(pool, r->buf, r->cap);
    r->buf = nb;
    r->cap = cap;
    r->head = 0;
    return 0;
}

int pe__ring_data_iov(const struct pe_ring *r, struct iovec iov[2])
{
    uint32_t first = r->cap - r->head;

    if (r->len == 0)
        return 0;
    iov[0].iov_base = r->buf + r->head;
    if (r->len <= first) {
        iov[0].iov_len = r->len;
        return 1;
    }
    iov[0].iov_len = first;
    iov[1].iov_base = r->buf;
    iov[1].iov_len = r->len - first;
    return 2;
}

void pe__ring_consume(struct pe_ring *r, struct pe_bufpool *pool, size_t n)
{
    assert(n <= r->len);
    if (n >= r->len) {
        release(r, pool);
        return;
    }
    r->head = (r->head + (uint32_t)n) & (r->cap - 1);
    r->len -= (uint32_t)n;
}

int pe__ring_append(struct pe_ring *r, struct pe_bufpool *pool,
                    const void *src, size_t n, size_t max)
{
    int rc;

    if (n == 0)
        return 0;
    rc = pe__ring_reserve(r, pool, n, max);
    if (rc < 0)
        return rc;
    copy_in(r, src, n);
    return 0;
}

size_t pe__ring_take(struct pe_ring *r, struct pe_bufpool *pool, void *dst,
                     size_t n)
{
    if (n > r->len)
        n = r->len;
    copy_out(r, dst, n);
    if (n == r->len) {
        release(r, pool);               /* all of it: the buffer goes back */
    } else {
        r->head = (r->head + (uint32_t)n) & (r->cap - 1);
        r->len -= (uint32_t)n;
    }
    return n;
}

int pe__ring_move(struct pe_ring *dst, struct pe_ring *src,
                  struct pe_bufpool *pool, size_t max)
{
    struct iovec iov[2];
    int rc, cnt;

    if (src->len == 0) {
        release(src, pool);
        return 0;
    }
    if (dst->len == 0) {
        /* Hand the buffer over: the echo path moves without copying. */
        if (src->len > max)
            return -ENOBUFS;
        release(dst, pool);             /* it may hold a reserved buffer */
        *dst = *src;
        src->buf = NULL;
        src->cap = src->head = src->len = 0;
        return 0;
    }
    rc = pe__ring_reserve(dst, pool, src->len, max);
    if (rc < 0)
        return rc;
    cnt = pe__ring_data_iov(src, iov);
    for (int i = 0; i < cnt; i++)
        copy_in(dst, iov[i].iov_base, iov[i].iov_len);
    release(src, pool);
    return 0;
}

void pe__ring_clear(struct pe_ring *r, struct pe_bufpool *pool)
{
    release(r, pool);
}

/*
 * ring.h - per-connection byte ring (internal).
 *
 * A power-of-two circular buffer that owns memory only while it holds data:
 * an idle connection's rings are a few words each and point nowhere.  Space
 * and data are exposed as at most two iovecs so the loop reads with readv
 * and writes with writev across the wrap, with no copying.
 *
 * Freed buffers of 16 KiB to 256 KiB go to a per-loop pool (a LIFO stack
 * per size, linked through the buffers' first word), so a request/response
 * connection that empties its ring every message does not pay malloc/free
 * each time, and neither does one whose messages are larger than 16 KiB:
 * glibc would trim the heap top behind such frees and grow it again on the
 * next read, a brk pair every few reads.  The pool holds at most `limit`
 * x 16 KiB in all; larger buffers are freed as soon as their ring empties.
 */
#ifndef PE_RING_H
#define PE_RING_H

#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#define PE_RING_MIN 16384u          /* smallest buffer; one pool unit */
#define PE_POOL_SIZES 5             /* pooled: PE_RING_MIN << 0..4 */

struct pe_bufpool {
    void   **bufs[PE_POOL_SIZES];   /* per size: top free buffer; *bufs is
                                       the next */
    uint32_t count;                 /* buffers pooled, all sizes */
    uint32_t units;                 /* their bytes / PE_RING_MIN */
    uint32_t limit;                 /* keep at most this many units */
};

struct pe_ring {
    char    *buf;                   /* NULL while empty */
    uint32_t cap;                   /* 0 or a power of two >= PE_RING_MIN */
    uint32_t head;                  /* offset of the first unread byte */
    uint32_t len;                   /* bytes held */
};

void pe__bufpool_init(struct pe_bufpool *pool, uint32_t limit);
void pe__bufpool_destroy(struct pe_bufpool *pool);

/* Make room for at least `need` more bytes, growing by powers of two, never
 * beyond `max` bytes held in total (the capacity may exceed a max that is
 * not a power of two).  0 (always for need 0), -ENOBUFS (len + need > max
 * or > 2^31) or -ENOMEM; on error the ring is unchanged. */
int pe__ring_reserve(struct pe_ring *r, struct pe_bufpool *pool, size_t need,
                     size_t max);

/* Free space as up to two iovecs (after pe__ring_reserve); returns count.
 * This is all the free space, which may be more than `need` and more than
 * `max` allows: the caller bounds what it commits.  Inline, as is
 * pe__ring_commit: each runs once per read, where a call cost as much as
 * their work. */
static inline int pe__ring_space_iov(const struct pe_ring *r,
                                     struct iovec iov[2])
{
    uint32_t free_ = r->cap - r->len, tail, first;

    if (free_ == 0)
        return 0;
    tail = (r->head + r->len) & (r->cap - 1);
    first = r->cap - tail;
    iov[0].iov_base = r->buf + tail;
    /* True as well when the data wraps: the gap [tail, head) is it all. */
    if (first >= free_) {
        iov[0].iov_len = free_;
        return 1;
    }
    iov[0].iov_len = first;
    iov[1].iov_base = r->buf;
    iov[1].iov_len = free_ - first;
    return 2;
}

/* Data as up to two iovecs, oldest first; returns count (0 when empty). */
int pe__ring_data_iov(const struct pe_ring *r, struct iovec iov[2]);

/* n bytes were written into the space iovecs. */
static inline void pe__ring_commit(struct pe_ring *r, size_t n)
{
    assert(n <= (size_t)(r->cap - r->len));
    r->len += (uint32_t)n;
}

/* n bytes were taken from the front; releases the buffer when empty.
 * n may be 0: an empty ring then gives back a buffer reserved for a read
 * that brought nothing (EAGAIN), so an idle connection holds no memory. */
void pe__ring_consume(struct pe_ring *r, struct pe_bufpool *pool, size_t n);

/* Copy in (reserve + copy + commit): 0 or -errno, all or nothing. */
int pe__ring_append(struct pe_ring *r, struct pe_bufpool *pool,
                    const void *src, size_t n, size_t max);
/* Copy out up to n bytes and consume them; returns bytes copied. */
size_t pe__ring_take(struct pe_ring *r, struct pe_bufpool *pool, void *dst,
                     size_t n);
/* Move everything from src to the end of dst (echo path); src ends empty.
 * All or nothing: -ENOBUFS (dst would exceed max) or -ENOMEM leave both
 * rings unchanged.  An empty dst takes over src's buffer without copying. */
int pe__ring_move(struct pe_ring *dst, struct pe_ring *src,
                  struct pe_bufpool *pool, size_t max);
/* Drop all data and memory. */
void pe__ring_clear(struct pe_ring *r, struct pe_bufpool *pool);

#endif /* PE_RING_H */

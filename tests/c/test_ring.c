/*
 * test_ring.c - byte ring and buffer pool (csrc/loop/ring.c).
 *
 * This file compiles its own copy of ring.c with malloc and free routed
 * through counters, so tests can see exactly how many buffers are alive and
 * can make an allocation fail; the production source has no test hooks.
 * (The copy's definitions satisfy every ring symbol, so the linker never
 * pulls ring.o out of the core library.)
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cmocka.h>

static long live;               /* blocks from t_malloc not yet freed */
static long mallocs;            /* successful t_malloc calls */
static int fail_next;           /* this many coming t_malloc calls fail */

static void *t_malloc(size_t n)
{
    void *p;

    if (fail_next > 0) {
        fail_next--;
        return NULL;
    }
    p = malloc(n);
    if (p) {
        live++;
        mallocs++;
    }
    return p;
}

static void t_free(void *p)
{
    if (p)
        live--;
    free(p);
}

#define malloc t_malloc
#define free t_free
#include "loop/ring.c"
#undef malloc
#undef free

#define MIN PE_RING_MIN

static void fill(uint8_t *p, size_t n, uint32_t seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)((seed + i) * 2654435761u >> 13);
}

static int setup(void **state)
{
    (void)state;
    live = mallocs = 0;
    fail_next = 0;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    assert_int_equal(live, 0);          /* every test ends owning nothing */
    return 0;
}

static size_t iov_total(const struct iovec *iov, int n)
{
    size_t t = 0;

    for (int i = 0; i < n; i++) {
        assert_true(iov[i].iov_len > 0);
        t += iov[i].iov_len;
    }
    return t;
}

/* Put a MIN ring at head `head` holding `len` (< MIN) bytes of fill(seed):
 * one byte parked just before `head` keeps the buffer while the rest is
 * appended behind it. */
static void place(struct pe_ring *r, struct pe_bufpool *pool, uint32_t head,
                  uint32_t len, uint32_t seed, uint8_t *expect)
{
    uint32_t pos = (head + MIN - 1) % MIN;
    uint8_t *tmp = calloc(1, MIN);

    assert_true(len < MIN);
    pe__ring_clear(r, pool);
    assert_int_equal(pe__ring_append(r, pool, tmp, pos + 1, MIN), 0);
    pe__ring_consume(r, pool, pos);
    fill(expect, len, seed);
    assert_int_equal(pe__ring_append(r, pool, expect, len, 4 * MIN), 0);
    pe__ring_consume(r, pool, 1);
    assert_int_equal(r->head, head);
    assert_int_equal(r->len, len);
    free(tmp);
}

static void test_empty_owns_nothing(void **state)
{
    struct pe_bufpool pool;
    struct pe_ring r = {0};
    struct iovec iov[2] = {{0}};
    char c;

    (void)state;
    pe__bufpool_init(&pool, 0);
    assert_int_equal(pe__ring_data_iov(&r, iov), 0);
    assert_int_equal(pe__ring_space_iov(&r, iov), 0);
    assert_int_equal(pe__ring_reserve(&r, &pool, 0, MIN), 0);
    assert_null(r.buf);
    assert_int_equal(pe__ring_take(&r, &pool, &c, 1), 0);
    assert_int_equal(pe__ring_append(&r, &pool, &c, 0, MIN), 0);
    pe__ring_move(&r, &(struct pe_ring){0}, &pool, MIN);
    assert_null(r.buf);
    assert_int_equal(mallocs, 0);

    /* A reserve for a read that brought nothing is given back by
     * consume(0), as after EAGAIN. */
    assert_int_equal(pe__ring_reserve(&r, &pool, 1, MIN), 0);
    assert_non_null(r.buf);
    assert_int_equal(r.cap, MIN);
    assert_int_equal(pe__ring_space_iov(&r, iov), 1);
    assert_int_equal(iov[0].iov_len, MIN);
    assert_int_equal(live, 1);
    pe__ring_consume(&r, &pool, 0);
    assert_null(r.buf);
    assert_int_equal(r.cap, 0);
    assert_int_equal(live, 0);

    /* Consuming to empty releases the buffer. */
    assert_int_equal(pe__ring_append(&r, &pool, "abc", 3, MIN), 0);
    pe__ring_consume(&r, &pool, 2);
    assert_non_null(r.buf);
    pe__ring_consume(&r, &pool, 1);
    assert_null(r.buf);
    assert_int_equal(r.cap + r.head + r.len, 0);
    assert_int_equal(live, 0);
    pe__bufpool_destroy(&pool);
}

static void test_append_take_across_wrap(void **state)
{
    static uint8_t in[3 * MIN], out[3 * MIN];
    struct pe_bufpool pool;
    struct pe_ring r = {0};
    struct iovec iov[2] = {{0}};

    (void)state;
    pe__bufpool_init(&pool, 4);
    fill(in, sizeof(in), 7);
    assert_int_equal(pe__ring_append(&r, &pool, in, MIN - 100, MIN), 0);
    assert_int_equal(pe__ring_take(&r, &pool, out, MIN - 300), MIN - 300);
    assert_memory_equal(out, in, MIN - 300);
    /* 200 held at the end; 250 more go 100 before and 150 after the wrap. */
    assert_int_equal(pe__ring_append(&r, &pool, in + MIN - 100, 250, MIN), 0);
    assert_int_equal(r.cap, MIN);
    assert_int_equal(r.len, 450);
    assert_int_equal(pe__ring_data_iov(&r, iov), 2);
    assert_int_equal(iov[0].iov_len, 300);
    assert_int_equal(iov[1].iov_len, 150);
    assert_ptr_equal(iov[1].iov_base, r.buf);
    /* Take less than is held, across the wrap, then the rest. */
    assert_int_equal(pe__ring_take(&r, &pool, out, 301), 301);
    assert_memory_equal(out, in + MIN - 300, 301);
    assert_int_equal(pe__ring_take(&r, &pool, out, sizeof(out)), 149);
    assert_memory_equal(out, in + MIN + 1, 149);
    assert_null(r.buf);
    assert_int_equal(pe__ring_take(&r, &pool, out, 10), 0);
    pe__ring_clear(&r, &pool);
    pe__bufpool_destroy(&pool);
}

static void test_iov_shapes(void **state)
{
    static uint8_t exp[MIN];
    struct pe_bufpool pool;
    struct pe_ring r = {0};
    struct iovec iov[2] = {{0}};

    (void)state;
    pe__bufpool_init(&pool, 4);

    /* Data from 0: one data iovec, one space iovec after it. */
    place(&r, &pool, 0, 1000, 1, exp);
    assert_int_equal(pe__ring_data_iov(&r, iov), 1);
    assert_ptr_equal(iov[0].iov_base, r.buf);
    assert_int_equal(iov[0].iov_len, 1000);
    assert_int_equal(pe__ring_space_iov(&r, iov), 1);
    assert_ptr_equal(iov[0].iov_base, r.buf + 1000);
    assert_int_equal(iov[0].iov_len, MIN - 1000);

    /* Data in the middle: space on both sides of the wrap. */
    place(&r, &pool, 5000, 1000, 2, exp);
    assert_int_equal(pe__ring_data_iov(&r, iov), 1);
    assert_int_equal(pe__ring_space_iov(&r, iov), 2);
    assert_ptr_equal(iov[0].iov_base, r.buf + 6000);
    assert_int_equal(iov[0].iov_len, MIN - 6000);
    assert_ptr_equal(iov[1].iov_base, r.buf);
    assert_int_equal(iov[1].iov_len, 5000);
    assert_int_equal(iov_total(iov, 2), MIN - 1000);

    /* Data ending exactly at the end: one space iovec at the start. */
    place(&r, &pool, MIN - 1000, 1000, 3, exp);
    assert_int_equal(pe__ring_data_iov(&r, iov), 1);
    assert_int_equal(pe__ring_space_iov(&r, iov), 1);
    assert_ptr_equal(iov[0].iov_base, r.buf);
    assert_int_equal(iov[0].iov_len, MIN - 1000);

    /* Wrapped data: two data iovecs, the gap between as one space. */
    place(&r, &pool, MIN - 1000, 3000, 4, exp);
    assert_int_equal(pe__ring_data_iov(&r, iov), 2);
    assert_ptr_equal(iov[0].iov_base, r.buf + MIN - 1000);
    assert_int_equal(iov[0].iov_len, 1000);
    assert_ptr_equal(iov[1].iov_base, r.buf);
    assert_int_equal(iov[1].iov_len, 2000);
    assert_memory_equal(iov[0].iov_base, exp, 1000);
    assert_memory_equal(iov[1].iov_base, exp + 1000, 2000);
    assert_int_equal(pe__ring_space_iov(&r, iov), 1);
    assert_ptr_equal(iov[0].iov_base, r.buf + 2000);
    assert_int_equal(iov[0].iov_len, MIN - 3000);

    /* Full, wrapped: no space iovec at all, never a zero-length one. */
    pe__ring_commit(&r, MIN - 3000);
    assert_int_equal(pe__ring_space_iov(&r, iov), 0);
    assert_int_equal(pe__ring_data_iov(&r, iov), 2);
    assert_int_equal(iov_total(iov, 2), MIN);
    pe__ring_clear(&r, &pool);
    pe__bufpool_destroy(&pool);
}

static void test_readv_writev_socket(void **state)
{
    static uint8_t exp[MIN], msg[5000], got[8000];
    struct pe_bufpool pool;
    struct pe_ring r = {0};
    struct iovec iov[2] = {{0}};
    int sv[2], n;
    ssize_t k;
    size_t have = 0;

    (void)state;
    pe__bufpool_init(&pool, 4);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);

    /* 2000 bytes end 1000 before the wrap; 5000 arrive across it. */
    place(&r, &pool, MIN - 3000, 2000, 9, exp);
    fill(msg, sizeof(msg), 99);
    assert_int_equal(write(sv[1], msg, sizeof(msg)), (ssize_t)sizeof(msg));
    n = pe__ring_space_iov(&r, iov);
    assert_int_equal(n, 2);
    assert_int_equal(iov[0].iov_len, 1000);
    k = readv(sv[0], iov, n);
    assert_int_equal(k, (ssize_t)sizeof(msg));
    pe__ring_commit(&r, (size_t)k);
    assert_int_equal(r.len, 7000);

    /* Send it all back with one writev across the wrap. */
    n = pe__ring_data_iov(&r, iov);
    assert_int_equal(n, 2);
    assert_int_equal(iov[0].iov_len, 3000);
    assert_int_equal(iov[1].iov_len, 4000);
    k = writev(sv[0], iov, n);
    assert_int_equal(k, 7000);
    pe__ring_consume(&r, &pool, (size_t)k);
    assert_null(r.buf);
    while (have < 7000) {
        k = read(sv[1], got + have, sizeof(got) - have);
        assert_true(k > 0);
        have += (size_t)k;
    }
    assert_memory_equal(got, exp, 2000);
    assert_memory_equal(got + 2000, msg, sizeof(msg));
    close(sv[0]);
    close(sv[1]);
    pe__bufpool_destroy(&pool);
}

static void test_grow_wrapped(void **state)
{
    static uint8_t exp[MIN], more[5 * MIN], out[6 * MIN];
    struct pe_bufpool pool;
    struct pe_ring r = {0};
    char *old;
    long m0;
    struct iovec iov[2] = {{0}};

    (void)state;
    pe__bufpool_init(&pool, 4);
    place(&r, &pool, MIN - 1000, 3000, 5, exp);
    fill(more, sizeof(more), 55);
    /* Fits exactly: no growth, no new buffer. */
    old = r.buf;
    m0 = mallocs;
    assert_int_equal(pe__ring_append(&r, &pool, more, MIN - 3000, 8 * MIN), 0);
    assert_int_equal(r.cap, MIN);
    assert_ptr_equal(r.buf, old);
    assert_int_equal(mallocs, m0);
    assert_int_equal(r.len, MIN);
    /* One byte more doubles and unwraps to head 0. */
    assert_int_equal(pe__ring_append(&r, &pool, more + MIN - 3000, 1,
                                     8 * MIN), 0);
    assert_int_equal(r.cap, 2 * MIN);
    assert_int_equal(r.head, 0);
    assert_int_equal(pe__ring_data_iov(&r, iov), 1);
    assert_memory_equal(r.buf, exp, 3000);
    assert_memory_equal(r.buf + 3000, more, MIN - 2999);
    /* A big append doubles as often as needed at once. */
    assert_int_equal(pe__ring_take(&r, &pool, out, 10), 10);
    assert_int_equal(pe__ring_append(&r, &pool, more + MIN - 2999,
                                     4 * MIN, 8 * MIN), 0);
    assert_int_equal(r.cap, 8 * MIN);
    assert_int_equal(r.head, 0);
    assert_int_equal(r.len, 5 * MIN - 9);
    assert_int_equal(pe__ring_take(&r, &pool, out, sizeof(out)), 5 * MIN - 9);
    assert_memory_equal(out, exp + 10, 2990);
    assert_memory_equal(out + 2990, more, 5 * MIN - 2999);
    assert_null(r.buf);
    pe__bufpool_destroy(&pool);
}

static void test_max(void **state)
{
    static uint8_t data[3 * MIN], out[3 * MIN];
    struct pe_bufpool pool;
    struct pe_ring r = {0}, before;

    (void)state;
    pe__bufpool_init(&pool, 4);
    fill(data, sizeof(data), 3);
    assert_int_equal(pe__ring_append(&r, &pool, data, MIN + 1, MIN), -ENOBUFS);
    assert_null(r.buf);
    assert_int_equal(pe__ring_append(&r, &pool, data, MIN, MIN), 0);
    before = r;
    assert_int_equal(pe__ring_append(&r, &pool, data, 1, MIN), -ENOBUFS);
    assert_int_equal(pe__ring_reserve(&r, &pool, 1, MIN), -ENOBUFS);
    assert_memory_equal(&r, &before, sizeof(r));

    /* A max that is not a power of two: the buffer is bigger than max,
     * the bytes held are not, even where the buffer has room. */
    assert_int_equal(pe__ring_append(&r, &pool, data + MIN, 1000, MIN + 1000),
                     0);
    assert_int_equal(r.cap, 2 * MIN);
    before = r;
    assert_int_equal(pe__ring_reserve(&r, &pool, 1, MIN + 1000), -ENOBUFS);
    assert_int_equal(pe__ring_append(&r, &pool, data, 1, MIN + 1000),
                     -ENOBUFS);
    assert_int_equal(pe__ring_reserve(&r, &pool, 0, MIN + 1000), 0);
    assert_memory_equal(&r, &before, sizeof(r));
    /* Under a smaller max than what is held, one more byte is refused;
     * asking for nothing is always granted. */
    assert_int_equal(pe__ring_reserve(&r, &pool, 1, MIN), -ENOBUFS);
    assert_int_equal(pe__ring_reserve(&r, &pool, 0, MIN), 0);
    assert_int_equal(pe__ring_append(&r, &pool, data, 0, MIN), 0);
    assert_memory_equal(&r, &before, sizeof(r));
    assert_int_equal(pe__ring_take(&r, &pool, out, sizeof(out)), MIN + 1000);
    assert_memory_equal(out, data, MIN + 1000);

    /* Sizes near the 32-bit limit are refused before any arithmetic can
     * wrap; 2^31 itself is allowed and reaches the allocator. */
    assert_int_equal(pe__ring_reserve(&r, &pool, SIZE_MAX, SIZE_MAX),
                     -ENOBUFS);
#if SIZE_MAX > UINT32_MAX
    assert_int_equal(pe__ring_reserve(&r, &pool, (size_t)UINT32_MAX + 1,
                                      SIZE_MAX), -ENOBUFS);
#endif
    assert_int_equal(pe__ring_reserve(&r, &pool, UINT32_MAX, SIZE_MAX),
                     -ENOBUFS);
    assert_int_equal(pe__ring_reserve(&r, &pool, UINT32_MAX / 2 + 2,
                                      SIZE_MAX), -ENOBUFS);
    fail_next = 1;
    assert_int_equal(pe__ring_reserve(&r, &pool, UINT32_MAX / 2 + 1,
                                      SIZE_MAX), -ENOMEM);
    assert_int_equal(pe__ring_append(&r, &pool, data, 10, MIN), 0);
    assert_int_equal(pe__ring_reserve(&r, &pool, UINT32_MAX / 2 - 8,
                                      SIZE_MAX), -ENOBUFS);
    fail_next = 1;
    assert_int_equal(pe__ring_reserve(&r, &pool, UINT32_MAX / 2 - 9,
                                      SIZE_MAX), -ENOMEM);
    assert_int_equal(r.len, 10);
    assert_int_equal(r.cap, MIN);
    pe__ring_clear(&r, &pool);
    pe__bufpool_destroy(&pool);
}

static void test_pool(void **state)
{
    struct pe_bufpool pool;
    struct pe_ring r[3] = {{0}};
    char *first, *bufs[3];

    (void)state;
    pe__bufpool_init(&pool, 2);
    assert_int_equal(pe__ring_append(&r[0], &pool, "x", 1, MIN), 0);
    first = r[0].buf;
    pe__ring_consume(&r[0], &pool, 1);
    assert_int_equal(pool.count, 1);
    assert_int_equal(live, 1);
    /* Another ring gets the same buffer back, without malloc. */
    assert_int_equal(pe__ring_append(&r[1], &pool, "y", 1, MIN), 0);
    assert_ptr_equal(r[1].buf, first);
    assert_int_equal(mallocs, 1);
    assert_int_equal(pool.count, 0);
    pe__ring_clear(&r[1], &pool);

    /* Three buffers released, two kept: the limit. */
    for (int i = 0; i < 3; i++) {
        assert_int_equal(pe__ring_append(&r[i], &pool, "z", 1, MIN), 0);
        bufs[i] = r[i].buf;
    }
    assert_int_equal(live, 3);
    for (int i = 0; i < 3; i++)
        pe__ring_clear(&r[i], &pool);
    assert_int_equal(pool.count, 2);
    assert_int_equal(live, 2);
    /* LIFO: the last one parked comes out first. */
    assert_int_equal(pe__ring_append(&r[0], &pool, "z", 1, MIN), 0);
    assert_ptr_equal(r[0].buf, bufs[1]);

    /* Growing past MIN parks the small buffer; the 2 x MIN one does not
     * fit the one unit of budget left, so it is freed. */
    assert_int_equal(pool.count, 1);
    assert_int_equal(pe__ring_reserve(&r[0], &pool, MIN, 4 * MIN), 0);
    assert_int_equal(r[0].cap, 2 * MIN);
    assert_int_equal(pool.count, 2);
    assert_int_equal(live, 3);
    assert_int_equal(pe__ring_append(&r[1], &pool, "v", 1, MIN), 0);
    assert_int_equal(pool.count, 1);
    pe__ring_clear(&r[0], &pool);
    assert_int_equal(pool.count, 1);
    assert_int_equal(live, 2);
    pe__ring_clear(&r[1], &pool);
    assert_int_equal(pool.count, 2);

    /* Growth takes its MIN buffer from the pool even when malloc fails. */
    fail_next = 100;
    assert_int_equal(pe__ring_append(&r[2], &pool, "w", 1, MIN), 0);
    assert_int_equal(pool.count, 1);
    fail_next = 0;
    pe__ring_clear(&r[2], &pool);

    pe__bufpool_destroy(&pool);
    assert_int_equal(pool.count, 0);
    assert_int_equal(live, 0);

    /* A pool with limit 0 keeps nothing. */
    pe__bufpool_init(&pool, 0);
    assert_int_equal(pe__ring_append(&r[0], &pool, "x", 1, MIN), 0);
    pe__ring_clear(&r[0], &pool);
    assert_int_equal(pool.count, 0);
    assert_int_equal(live, 0);
    pe__bufpool_destroy(&pool);
}

/* Larger buffers are pooled by size, within one budget counted in MIN
 * units; beyond the largest pooled size they go straight back to free. */
static void test_pool_sizes(void **state)
{
    struct pe_bufpool pool;
    struct pe_ring r[3] = {{0}};
    char *big, *small;
    uint32_t top = MIN << (PE_POOL_SIZES - 1);

    (void)state;
    pe__bufpool_init(&pool, 6);
    /* A 64 KiB message through a ring: 4 units parked, reused as is. */
    assert_int_equal(pe__ring_reserve(&r[0], &pool, 4 * MIN, 8 * MIN), 0);
    assert_int_equal(r[0].cap, 4 * MIN);
    big = r[0].buf;
    pe__ring_clear(&r[0], &pool);
    assert_int_equal(pool.count, 1);
    assert_int_equal(pool.units, 4);
    assert_int_equal(live, 1);
    assert_int_equal(pe__ring_reserve(&r[1], &pool, 3 * MIN, 8 * MIN), 0);
    assert_ptr_equal(r[1].buf, big);
    assert_int_equal(mallocs, 1);
    assert_int_equal(pool.units, 0);

    /* A MIN request never takes the parked big buffer, nor the reverse. */
    assert_int_equal(pe__ring_append(&r[0], &pool, "s", 1, MIN), 0);
    small = r[0].buf;
    pe__ring_clear(&r[0], &pool);
    pe__ring_clear(&r[1], &pool);
    assert_int_equal(pool.count, 2);
    assert_int_equal(pool.units, 5);
    assert_int_equal(pe__ring_reserve(&r[0], &pool, 2 * MIN, 8 * MIN), 0);
    assert_int_equal(r[0].cap, 2 * MIN);
    assert_ptr_not_equal(r[0].buf, big);
    assert_ptr_not_equal(r[0].buf, small);
    assert_int_equal(live, 3);
    /* 5 units held, 2 more do not fit the 6: freed. */
    pe__ring_clear(&r[0], &pool);
    assert_int_equal(pool.units, 5);
    assert_int_equal(live, 2);

    /* The largest pooled size is pooled; twice that never is. */
    pe__bufpool_destroy(&pool);
    assert_int_equal(live, 0);
    pe__bufpool_init(&pool, 64);
    assert_int_equal(pe__ring_reserve(&r[2], &pool, top, 4 * top), 0);
    assert_int_equal(r[2].cap, top);
    pe__ring_clear(&r[2], &pool);
    assert_int_equal(pool.units, top / MIN);
    assert_int_equal(pe__ring_reserve(&r[2], &pool, 2 * top, 4 * top), 0);
    assert_int_equal(r[2].cap, 2 * top);
    pe__ring_clear(&r[2], &pool);
    assert_int_equal(pool.count, 1);
    assert_int_equal(live, 1);
    pe__bufpool_destroy(&pool);
    assert_int_equal(pool.count, 0);
    assert_int_equal(pool.units, 0);
    assert_int_equal(live, 0);
}

static void test_move(void **state)
{
    static uint8_t a[2 * MIN], b[2 * MIN], out[4 * MIN];
    struct pe_bufpool pool;
    struct pe_ring src = {0}, dst = {0}, s0, d0;
    char *sbuf;
    long m0;

    (void)state;
    pe__bufpool_init(&pool, 4);
    fill(a, sizeof(a), 1);
    fill(b, sizeof(b), 2);

    /* Handover: the buffer itself changes hands, nothing is allocated. */
    place(&src, &pool, MIN - 100, 300, 1, a);
    sbuf = src.buf;
    m0 = mallocs;
    assert_int_equal(pe__ring_move(&dst, &src, &pool, MIN), 0);
    assert_ptr_equal(dst.buf, sbuf);
    assert_int_equal(dst.head, MIN - 100);
    assert_int_equal(dst.len, 300);
    assert_null(src.buf);
    assert_int_equal(src.cap + src.len + src.head, 0);
    assert_int_equal(mallocs, m0);

    /* Over max: refused, both unchanged. */
    assert_int_equal(pe__ring_append(&src, &pool, b, MIN, 2 * MIN), 0);
    s0 = src;
    d0 = dst;
    assert_int_equal(pe__ring_move(&dst, &src, &pool, MIN + 299), -ENOBUFS);
    assert_memory_equal(&src, &s0, sizeof(src));
    assert_memory_equal(&dst, &d0, sizeof(dst));

    /* Copy onto data already there, growing dst; allocation failure
     * first leaves both unchanged. */
    fail_next = 1;
    assert_int_equal(pe__ring_move(&dst, &src, &pool, 2 * MIN), -ENOMEM);
    assert_memory_equal(&src, &s0, sizeof(src));
    assert_memory_equal(&dst, &d0, sizeof(dst));
    assert_int_equal(pe__ring_move(&dst, &src, &pool, 2 * MIN), 0);
    assert_null(src.buf);
    assert_int_equal(dst.len, MIN + 300);
    assert_int_equal(pe__ring_take(&dst, &pool, out, sizeof(out)), MIN + 300);
    assert_memory_equal(out, a, 300);
    assert_memory_equal(out + 300, b, MIN);

    /* Copy where src wraps and dst has room: no allocation. */
    assert_int_equal(pe__ring_append(&dst, &pool, a, 10, 4 * MIN), 0);
    place(&src, &pool, MIN - 50, 200, 3, b);
    m0 = mallocs;
    assert_int_equal(pe__ring_move(&dst, &src, &pool, 4 * MIN), 0);
    assert_int_equal(mallocs, m0);
    assert_int_equal(pe__ring_take(&dst, &pool, out, sizeof(out)), 210);
    assert_memory_equal(out, a, 10);
    assert_memory_equal(out + 10, b, 200);

    /* dst holding only a reserved buffer: it is given back, src's taken. */
    assert_int_equal(pe__ring_reserve(&dst, &pool, 1, MIN), 0);
    assert_int_equal(pe__ring_append(&src, &pool, a, 2 * MIN, 2 * MIN), 0);
    sbuf = src.buf;
    assert_int_equal(pe__ring_move(&dst, &src, &pool, 2 * MIN), 0);
    assert_ptr_equal(dst.buf, sbuf);
    assert_int_equal(dst.cap, 2 * MIN);

    /* Empty src: nothing happens. */
    d0 = dst;
    assert_int_equal(pe__ring_move(&dst, &src, &pool, 0), 0);
    assert_memory_equal(&dst, &d0, sizeof(dst));
    pe__ring_clear(&dst, &pool);
    pe__bufpool_destroy(&pool);
}

static void test_alloc_failure(void **state)
{
    static uint8_t exp[MIN], out[2 * MIN];
    struct pe_bufpool pool;
    struct pe_ring r = {0}, before;

    (void)state;
    pe__bufpool_init(&pool, 0);
    fail_next = 1;
    assert_int_equal(pe__ring_append(&r, &pool, "x", 1, MIN), -ENOMEM);
    assert_null(r.buf);
    assert_int_equal(r.cap + r.len + r.head, 0);
    fail_next = 1;
    assert_int_equal(pe__ring_reserve(&r, &pool, 1, MIN), -ENOMEM);
    assert_null(r.buf);

    /* Growth of wrapped data fails: same buffer, same bytes. */
    place(&r, &pool, MIN - 10, 100, 4, exp);
    before = r;
    fail_next = 1;
    assert_int_equal(pe__ring_append(&r, &pool, exp, MIN, 4 * MIN), -ENOMEM);
    assert_memory_equal(&r, &before, sizeof(r));
    assert_int_equal(live, 1);
    assert_int_equal(pe__ring_take(&r, &pool, out, sizeof(out)), 100);
    assert_memory_equal(out, exp, 100);
    pe__bufpool_destroy(&pool);
}

/* A model: the ring's bytes as a flat array (start, len). */
struct model {
    uint8_t *b;
    size_t start, len, size;
};

static uint64_t rng;

static uint32_t rnd(uint32_t n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return n ? (uint32_t)((rng >> 11) % n) : 0;
}

static uint8_t *model_tail(struct model *m, size_t n)
{
    if (m->start + m->len + n > m->size) {
        memmove(m->b, m->b + m->start, m->len);
        m->start = 0;
    }
    assert_true(m->len + n <= m->size);
    return m->b + m->start + m->len;
}

static void check_front(struct model *m, const uint8_t *got, size_t n)
{
    assert_true(n <= m->len);
    assert_memory_equal(got, m->b + m->start, n);
    m->start += n;
    m->len -= n;
}

static void check_shape(const struct pe_ring *r, const struct model *m,
                        const struct pe_bufpool *pool, int full)
{
    struct iovec iov[2] = {{0}};
    size_t off = 0;
    int n;

    assert_int_equal(r->len, m->len);
    assert_true(r->len <= r->cap);
    assert_true(pool->count <= pool->limit);
    /* A buffer exactly while data is held. */
    assert_true((r->buf != NULL) == (r->len != 0));
    if (r->cap) {
        assert_true(r->cap >= MIN && (r->cap & (r->cap - 1)) == 0);
        assert_true(r->head < r->cap);
    } else {
        assert_int_equal(r->head, 0);
    }
    if (!full)
        return;
    n = pe__ring_data_iov(r, iov);
    for (int i = 0; i < n; i++) {
        assert_memory_equal(iov[i].iov_base, m->b + m->start + off,
                            iov[i].iov_len);
        off += iov[i].iov_len;
    }
    assert_int_equal(off, m->len);
    n = pe__ring_space_iov(r, iov);
    assert_int_equal(iov_total(iov, n), r->cap - r->len);
}

static size_t pick_len(void)
{
    switch (rnd(4)) {
    case 0: return rnd(64);
    case 1: return rnd(4096);
    case 2: return rnd(MIN + 100);
    default: return rnd(3 * MIN);
    }
}

static void run_model(uint64_t seed, int ops)
{
    static const size_t maxes[] = {MIN, MIN + 777, 2 * MIN, 3 * MIN + 5,
                                   8 * MIN};
    static uint8_t tmp[8 * MIN + 1];
    struct pe_bufpool pool;
    struct pe_ring r[2] = {{0}};
    struct model m[2];
    struct iovec iov[2] = {{0}};
    int rings_with_buf;

    rng = seed;
    pe__bufpool_init(&pool, 3);
    for (int i = 0; i < 2; i++) {
        m[i].size = 32 * MIN;
        m[i].b = calloc(1, m[i].size);
        m[i].start = m[i].len = 0;
    }
    for (int op = 0; op < ops; op++) {
        int i = (int)rnd(2), rc, cnt;
        struct pe_ring *x = &r[i], before = *x;
        struct model *mm = &m[i];
        size_t max = maxes[rnd(5)], n = pick_len(), k;
        int fail = rnd(40) == 0;

        fail_next = fail;
        switch (rnd(7)) {
        case 0:                         /* append */
            fill(tmp, n, (uint32_t)op);
            rc = pe__ring_append(x, &pool, tmp, n, max);
            if (n && mm->len + n > max) {
                assert_int_equal(rc, -ENOBUFS);
            } else if (rc == -ENOMEM) {
                assert_true(fail);
            } else {
                assert_int_equal(rc, 0);
                memcpy(model_tail(mm, n), tmp, n);
                mm->len += n;
            }
            if (rc < 0)
                assert_memory_equal(x, &before, sizeof(*x));
            break;
        case 1:                         /* take */
            k = pe__ring_take(x, &pool, tmp, n);
            assert_int_equal(k, n < mm->len ? n : mm->len);
            check_front(mm, tmp, k);
            break;
        case 2:                         /* read: reserve, partial commit */
        case 3:
            rc = pe__ring_reserve(x, &pool, n, max);
            if (n && mm->len + n > max) {
                assert_int_equal(rc, -ENOBUFS);
                break;
            }
            if (rc == -ENOMEM) {
                assert_true(fail);
                assert_memory_equal(x, &before, sizeof(*x));
                break;
            }
            assert_int_equal(rc, 0);
            cnt = pe__ring_space_iov(x, iov);
            assert_true(iov_total(iov, cnt) >= n);
            k = rnd(2) ? n : rnd((uint32_t)n + 1);
            fill(tmp, k, (uint32_t)op * 31u);
            memcpy(model_tail(mm, k), tmp, k);
            mm->len += k;
            for (int j = 0, off = 0; j < cnt && (size_t)off < k; j++) {
                size_t c = iov[j].iov_len < k - off ? iov[j].iov_len
                                                    : k - off;
                memcpy(iov[j].iov_base, tmp + off, c);
                off += (int)c;
            }
            pe__ring_commit(x, k);
            if (k == 0)
                pe__ring_consume(x, &pool, 0);   /* the read got EAGAIN */
            break;
        case 4:                         /* write: consume from data iovs */
            cnt = pe__ring_data_iov(x, iov);
            k = n < mm->len ? n : mm->len;
            for (int j = 0, off = 0; j < cnt && (size_t)off < k; j++) {
                size_t c = iov[j].iov_len < k - off ? iov[j].iov_len
                                                    : k - off;
                memcpy(tmp + off, iov[j].iov_base, c);
                off += (int)c;
            }
            check_front(mm, tmp, k);
            pe__ring_consume(x, &pool, k);
            break;
        case 5: {                       /* move the other ring onto this */
            struct pe_ring *o = &r[!i], obefore = *o;
            struct model *om = &m[!i];
            int hand = x->len == 0 && o->len > 0;
            char *obuf = o->buf;

            rc = pe__ring_move(x, o, &pool, max);
            if (om->len && mm->len + om->len > max) {
                assert_int_equal(rc, -ENOBUFS);
            } else if (rc == -ENOMEM) {
                assert_true(fail && !hand);
            } else {
                assert_int_equal(rc, 0);
                if (hand)
                    assert_ptr_equal(x->buf, obuf);
                memcpy(model_tail(mm, om->len), om->b + om->start, om->len);
                mm->len += om->len;
                om->len = 0;
            }
            if (rc < 0) {
                assert_memory_equal(x, &before, sizeof(*x));
                assert_memory_equal(o, &obefore, sizeof(*o));
            }
            break;
        }
        default:
            if (rnd(4) == 0) {
                pe__ring_clear(x, &pool);
                mm->len = 0;
            }
            break;
        }
        fail_next = 0;
        for (int j = 0; j < 2; j++)
            check_shape(&r[j], &m[j], &pool, op % 256 == 0);
        rings_with_buf = (r[0].buf != NULL) + (r[1].buf != NULL);
        assert_int_equal(live, rings_with_buf + (long)pool.count);
    }
    for (int j = 0; j < 2; j++) {
        check_shape(&r[j], &m[j], &pool, 1);
        pe__ring_clear(&r[j], &pool);
        free(m[j].b);
    }
    pe__bufpool_destroy(&pool);
}

static void test_random_vs_model(void **state)
{
    (void)state;
    run_model(0x9e3779b97f4a7c15ull, 100000);
    run_model(42, 100000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_empty_owns_nothing, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_append_take_across_wrap, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_iov_shapes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_readv_writev_socket, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_grow_wrapped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_max, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool_sizes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_move, setup, teardown),
        cmocka_unit_test_setup_teardown(test_alloc_failure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_random_vs_model, setup,
                                        teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}

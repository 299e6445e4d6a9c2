// Build: clang -g -O1 -fsanitize=fuzzer,address,undefined -Icsrc -Icsrc/include fuzz/fuzz_ring.c csrc/loop/ring.c -o /tmp/fuzz_ring
/*
 * fuzz_ring.c - libFuzzer target for csrc/loop/ring.c.
 *
 * Byte 0 sets the pool limit (0..3).  Then each op is 4 bytes:
 *   code  bits 0-2 op, bit 3 which ring (of two), bits 4-6 max (table),
 *         bit 7 multiplies the length by 4;
 *   n     16 bits little-endian, a length;
 *   frac  how much of a read's reservation is filled (frac/255).
 * Two rings and a pool are driven side by side with a model (each ring's
 * bytes as a flat array); any difference in bytes, lengths, error codes or
 * ownership (a buffer exactly while data is held, pool within its limit and
 * disjoint from the rings) abort()s.  Leaks are left to LeakSanitizer.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "loop/ring.h"

#define CHECK(x)              \
    do {                      \
        if (!(x))             \
            abort();          \
    } while (0)

#define MODEL_SIZE (64 * PE_RING_MIN)

struct model {
    uint8_t *b;
    size_t start, len;
};

static const size_t maxes[8] = {
    0, 1, PE_RING_MIN - 1, PE_RING_MIN, PE_RING_MIN + 1,
    3 * PE_RING_MIN + 5, 8 * PE_RING_MIN, 16 * PE_RING_MIN,
};

#define PATTERN_SLACK 8192

static uint8_t tmp[4 * 65536];
static uint8_t pattern[4 * 65536 + PATTERN_SLACK];
static uint32_t counter;

/* Fresh bytes for each write: a window into a fixed random pattern at a
 * new offset each time, so bytes out of order or from the wrong write show
 * up, without generating them one by one. */
static const uint8_t *gen(void)
{
    counter = (counter + 7919) % PATTERN_SLACK;
    return pattern + counter;
}

static void pattern_init(void)
{
    uint64_t x = 0x9e3779b97f4a7c15ull;

    for (size_t i = 0; i < sizeof(pattern); i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        pattern[i] = (uint8_t)(x >> 32);
    }
}

static uint8_t *model_tail(struct model *m, size_t n)
{
    if (m->start + m->len + n > MODEL_SIZE) {
        memmove(m->b, m->b + m->start, m->len);
        m->start = 0;
    }
    CHECK(m->len + n <= MODEL_SIZE);
    return m->b + m->start + m->len;
}

static void model_front(struct model *m, const uint8_t *got, size_t n)
{
    CHECK(n <= m->len);
    CHECK(memcmp(got, m->b + m->start, n) == 0);
    m->start += n;
    m->len -= n;
}

/* Scatter n bytes into iovecs / gather up to n from them; bytes moved. */
static size_t iov_put(const struct iovec *iov, int cnt, const uint8_t *src,
                      size_t n)
{
    size_t off = 0;

    for (int i = 0; i < cnt && off < n; i++) {
        size_t c = iov[i].iov_len < n - off ? iov[i].iov_len : n - off;

        memcpy(iov[i].iov_base, src + off, c);
        off += c;
    }
    return off;
}

static size_t iov_get(const struct iovec *iov, int cnt, uint8_t *dst,
                      size_t n)
{
    size_t off = 0;

    for (int i = 0; i < cnt && off < n; i++) {
        size_t c = iov[i].iov_len < n - off ? iov[i].iov_len : n - off;

        memcpy(dst + off, iov[i].iov_base, c);
        off += c;
    }
    return off;
}

static size_t iov_sum(const struct iovec *iov, int cnt)
{
    size_t t = 0;

    CHECK(cnt >= 0 && cnt <= 2);
    for (int i = 0; i < cnt; i++) {
        CHECK(iov[i].iov_len > 0);
        t += iov[i].iov_len;
    }
    return t;
}

static void check(const struct pe_ring *r, const struct model *m,
                  const struct pe_bufpool *pool, const struct pe_ring *other,
                  int full)
{
    struct iovec iov[2];
    size_t off = 0;
    uint32_t n = 0, units = 0;
    int cnt;

    CHECK(r->len == m->len);
    CHECK(r->len <= r->cap);
    CHECK((r->buf != NULL) == (r->len != 0));
    if (r->cap) {
        CHECK(r->cap >= PE_RING_MIN && (r->cap & (r->cap - 1)) == 0);
        CHECK(r->head < r->cap);
        CHECK(r->buf != other->buf);
    } else {
        CHECK(r->head == 0);
    }
    CHECK(pool->count <= pool->units && pool->units <= pool->limit);
    for (int i = 0; i < PE_POOL_SIZES; i++) {
        for (void **b = pool->bufs[i]; b; b = *b, n++) {
            CHECK(n < pool->count && (char *)b != r->buf);
            units += 1u << i;
        }
    }
    CHECK(n == pool->count && units == pool->units);
    cnt = pe__ring_data_iov(r, iov);
    CHECK(iov_sum(iov, cnt) == r->len);
    if (full) {
        for (int i = 0; i < cnt; i++) {
            CHECK(memcmp(iov[i].iov_base, m->b + m->start + off,
                         iov[i].iov_len) == 0);
            off += iov[i].iov_len;
        }
    }
    cnt = pe__ring_space_iov(r, iov);
    CHECK(iov_sum(iov, cnt) == r->cap - r->len);
}

static void run_op(struct pe_ring *rings, struct model *models,
                   struct pe_bufpool *pool, const uint8_t *op)
{
    int w = (op[0] >> 3) & 1, rc, cnt;
    struct pe_ring *r = &rings[w], *o = &rings[!w];
    struct model *m = &models[w], *om = &models[!w];
    size_t max = maxes[(op[0] >> 4) & 7];
    size_t n = (size_t)(op[1] | op[2] << 8) << ((op[0] & 0x80) ? 2 : 0);
    struct pe_ring before = *r, obefore = *o;
    /* Room already there: the buffer must stay where it is. */
    int fits = n <= before.cap - before.len;
    const uint8_t *src;
    struct iovec iov[2];
    size_t k;

    switch (op[0] & 7) {
    case 0:                                         /* append */
        src = gen();
        rc = pe__ring_append(r, pool, src, n, max);
        if (n && m->len + n > max) {
            CHECK(rc == -ENOBUFS);
            CHECK(memcmp(r, &before, sizeof(*r)) == 0);
            break;
        }
        CHECK(rc == 0);
        CHECK(!fits || !n || (r->buf == before.buf && r->head == before.head));
        memcpy(model_tail(m, n), src, n);
        m->len += n;
        break;
    case 1:                                         /* take */
        k = pe__ring_take(r, pool, tmp, n);
        CHECK(k == (n < m->len ? n : m->len));
        model_front(m, tmp, k);
        break;
    case 2:                                         /* read */
        rc = pe__ring_reserve(r, pool, n, max);
        if (n && m->len + n > max) {
            CHECK(rc == -ENOBUFS);
            CHECK(memcmp(r, &before, sizeof(*r)) == 0);
            break;
        }
        CHECK(rc == 0);
        CHECK(!fits || r->buf == before.buf);
        cnt = pe__ring_space_iov(r, iov);
        CHECK(iov_sum(iov, cnt) >= n);
        k = n * op[3] / 255;
        src = gen();
        CHECK(iov_put(iov, cnt, src, k) == k);
        pe__ring_commit(r, k);
        memcpy(model_tail(m, k), src, k);
        m->len += k;
        if (k == 0)
            pe__ring_consume(r, pool, 0);           /* EAGAIN */
        break;
    case 3:                                         /* write */
        cnt = pe__ring_data_iov(r, iov);
        k = iov_get(iov, cnt, tmp, n);
        CHECK(k == (n < m->len ? n : m->len));
        model_front(m, tmp, k);
        pe__ring_consume(r, pool, k);
        break;
    case 4: {                                       /* move o onto r */
        char *obuf = o->buf;
        int hand = r->len == 0 && o->len != 0;

        rc = pe__ring_move(r, o, pool, max);
        if (om->len && m->len + om->len > max) {
            CHECK(rc == -ENOBUFS);
            CHECK(memcmp(r, &before, sizeof(*r)) == 0);
            CHECK(memcmp(o, &obefore, sizeof(*o)) == 0);
            break;
        }
        CHECK(rc == 0);
        CHECK(!hand || r->buf == obuf);
        CHECK(!before.len || om->len > before.cap - before.len ||
              r->buf == before.buf);
        memcpy(model_tail(m, om->len), om->b + om->start, om->len);
        m->len += om->len;
        om->start = om->len = 0;
        break;
    }
    case 5:                                         /* clear */
        pe__ring_clear(r, pool);
        m->start = m->len = 0;
        break;
    default:                                        /* reserve, no read */
        rc = pe__ring_reserve(r, pool, n, max);
        if (n && m->len + n > max) {
            CHECK(rc == -ENOBUFS);
            break;
        }
        CHECK(rc == 0);
        CHECK(r->cap - r->len >= n);
        CHECK(!fits || r->buf == before.buf);
        pe__ring_consume(r, pool, 0);
        break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct model models[2];
    static int ready;
    struct pe_ring rings[2] = {{0}, {0}};
    struct pe_bufpool pool;
    size_t i;

    if (size < 1)
        return 0;
    for (i = 0; i < 2; i++) {
        if (!models[i].b)
            models[i].b = malloc(MODEL_SIZE);
        CHECK(models[i].b);
        models[i].start = models[i].len = 0;
    }
    if (!ready) {
        pattern_init();
        ready = 1;
    }
    counter = 0;
    /* 0-9 units: 32 and 64 KiB buffers get pooled too, or not */
    pe__bufpool_init(&pool, (data[0] & 3) * 3u);
    for (i = 1; i + 4 <= size; i += 4) {
        run_op(rings, models, &pool, data + i);
        for (int j = 0; j < 2; j++)
            check(&rings[j], &models[j], &pool, &rings[!j],
                  models[j].len <= 4096 || (i & 63) == 1);
    }
    for (int j = 0; j < 2; j++) {
        check(&rings[j], &models[j], &pool, &rings[!j], 1);
        pe__ring_clear(&rings[j], &pool);
    }
    pe__bufpool_destroy(&pool);
    return 0;
}

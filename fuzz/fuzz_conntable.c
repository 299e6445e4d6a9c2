/*
 * fuzz_conntable.c - libFuzzer target for csrc/loop/conntable.c.
 *
 * Build and run (scripts/fuzz.sh does the same):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Icsrc -Icsrc/include \
 *     fuzz/fuzz_conntable.c csrc/loop/conntable.c -o /tmp/fuzz_conntable
 *   /tmp/fuzz_conntable -runs=10000000 /tmp/corpus-ct fuzz/corpus/conntable
 *
 * Byte 0 sets the capacity (1..64).  Then each op is 3 bytes:
 *   code  low 3 bits: the op; bit 3: which LRU list;
 *   a, b  operands (a slot index, a handle's index in the history, a tick).
 * The table is driven side by side with a model that knows what the
 * design promises: never-used slots first, then freed slots in FIFO order;
 * generations never 0 and bumped on free; a handle is honoured exactly
 * while its slot is in use with that generation and not detached; each
 * LRU list holds its slots in push/touch order.  After every op the whole
 * table is checked against the model (lists walked both ways, flags,
 * counts); any difference abort()s.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "loop/conntable.h"

#define CHECK(x)              \
    do {                      \
        if (!(x))             \
            abort();          \
    } while (0)

#define CAP_MAX 64
#define HIST 256

struct model {
    uint32_t cap, fresh, used;
    uint8_t inuse[CAP_MAX], detached[CAP_MAX];
    uint32_t gen[CAP_MAX];
    uint32_t freeq[CAP_MAX], fhead, flen;   /* FIFO of freed slots */
    /* LRU lists: slots in order, head first, with their ticks. */
    uint32_t lru[2][CAP_MAX], nlru[2];
    uint32_t tick[2][CAP_MAX];
    uint8_t linked[2][CAP_MAX];
    /* Every handle ever issued (a ring): old ones must be refused. */
    pe_handle hist[HIST];
    uint32_t nhist;
};

static int lru_find(const struct model *m, int list, uint32_t slot)
{
    if (!m->linked[list][slot])
        return -1;
    for (uint32_t i = 0; i < m->nlru[list]; i++)
        if (m->lru[list][i] == slot)
            return (int)i;
    return -1;
}

static void lru_drop(struct model *m, int list, uint32_t slot)
{
    int i = lru_find(m, list, slot);

    if (i < 0)
        return;
    memmove(&m->lru[list][i], &m->lru[list][i + 1],
            (m->nlru[list] - (uint32_t)i - 1) * sizeof(uint32_t));
    m->nlru[list]--;
    m->linked[list][slot] = 0;
}

static void lru_append(struct model *m, int list, uint32_t slot, uint32_t t)
{
    m->lru[list][m->nlru[list]++] = slot;
    m->linked[list][slot] = 1;
    m->tick[list][slot] = t;
}

/* The n-th in-use slot (wrapping), or PE_NOSLOT when none is. */
static uint32_t pick_used(const struct model *m, uint8_t n)
{
    uint32_t k;

    if (m->used == 0)
        return PE_NOSLOT;
    k = n % m->used;
    for (uint32_t s = 0; s < m->cap; s++)
        if (m->inuse[s] && k-- == 0)
            return s;
    abort();
}

static int model_live(const struct model *m, pe_handle h)
{
    uint32_t slot = (uint32_t)h, gen = (uint32_t)(h >> 32);

    return slot < m->cap && gen != 0 && m->inuse[slot] &&
           !m->detached[slot] && m->gen[slot] == gen;
}

static void check_all(const struct pe_conntable *ct, const struct model *m)
{
    CHECK(ct->cap == m->cap);
    CHECK(ct->used == m->used);
    CHECK(ct->fresh == m->fresh);
    CHECK(ct->flen == m->flen);
    CHECK(pe__ct_full(ct) == (m->used == m->cap));
    for (uint32_t i = 0; i < m->flen; i++)
        CHECK(ct->freeq[(ct->fhead + i) % ct->cap] ==
              m->freeq[(m->fhead + i) % m->cap]);
    for (uint32_t s = 0; s < m->fresh; s++) {
        const struct pe_conn *c = &ct->slots[s];

        CHECK(c->gen == m->gen[s] && c->gen != 0);
        CHECK(!!(c->flags & PE_CF_INUSE) == m->inuse[s]);
        CHECK(!!(c->flags & PE_CF_DETACHED) == m->detached[s]);
        for (int l = 0; l < 2; l++)
            CHECK(pe__lru_linked(c, l) == m->linked[l][s]);
    }
    for (int l = 0; l < 2; l++) {
        uint32_t s = ct->lru[l].head, prev = PE_NOSLOT;

        CHECK(ct->lru[l].count == m->nlru[l]);
        for (uint32_t i = 0; i < m->nlru[l]; i++) {
            CHECK(s == m->lru[l][i]);
            CHECK(ct->slots[s].lru[l].prev == prev);
            CHECK(ct->slots[s].tick[l] == m->tick[l][s]);
            prev = s;
            s = ct->slots[s].lru[l].next;
        }
        CHECK(s == PE_NOSLOT && ct->lru[l].tail == prev);
        CHECK(pe__lru_head(ct, l) == (m->nlru[l] ? m->lru[l][0] : PE_NOSLOT));
    }
}

static void check_handle(struct pe_conntable *ct, const struct model *m,
                         pe_handle h)
{
    struct pe_conn *c = NULL;
    int live = model_live(m, h);

    CHECK((pe__ct_get(ct, h) != NULL) == live);
    CHECK(pe__ct_lookup(ct, h, &c) == (live ? 0 : -ESTALE));
    CHECK(!live || c == &ct->slots[(uint32_t)h]);
}

static void run_op(struct pe_conntable *ct, struct model *m,
                   const uint8_t *op)
{
    int list = (op[0] >> 3) & 1;
    uint32_t s, want;

    switch (op[0] & 7) {
    case 0:                                          /* alloc */
    case 1:
        if (m->fresh < m->cap) {
            want = m->fresh++;
            m->gen[want] = 1;
        } else if (m->flen) {
            want = m->freeq[m->fhead];
            m->fhead = (m->fhead + 1) % m->cap;
            m->flen--;
        } else {
            want = PE_NOSLOT;
        }
        s = pe__ct_alloc(ct);
        CHECK(s == want);
        if (s == PE_NOSLOT)
            break;
        CHECK(ct->slots[s].flags == PE_CF_INUSE && ct->slots[s].fd == -1 &&
              ct->slots[s].token == 0 && ct->slots[s].in.buf == NULL &&
              ct->slots[s].out.buf == NULL);
        m->inuse[s] = 1;
        m->detached[s] = 0;
        m->used++;
        CHECK(pe__ct_handle(ct, s) == ((pe_handle)m->gen[s] << 32 | s));
        m->hist[m->nhist++ % HIST] = pe__ct_handle(ct, s);
        /* Scribble on it as a user of the table would. */
        ct->slots[s].fd = op[1];
        ct->slots[s].token = op[2];
        break;
    case 2:                                          /* free */
        if ((s = pick_used(m, op[1])) == PE_NOSLOT)
            break;
        /* Sometimes from the last generation: the next must skip 0. */
        if (op[2] == 0xFF) {
            ct->slots[s].gen = m->gen[s] = UINT32_MAX;
        }
        pe__ct_free(ct, s);
        m->inuse[s] = m->detached[s] = 0;
        m->gen[s] = m->gen[s] == UINT32_MAX ? 1 : m->gen[s] + 1;
        m->used--;
        m->freeq[(m->fhead + m->flen++) % m->cap] = s;
        lru_drop(m, 0, s);
        lru_drop(m, 1, s);
        CHECK(ct->slots[s].fd == -1);
        break;
    case 3:                                          /* detach */
        if ((s = pick_used(m, op[1])) == PE_NOSLOT)
            break;
        ct->slots[s].flags |= PE_CF_DETACHED;
        m->detached[s] = 1;
        break;
    case 4:                                          /* lru push */
        if ((s = pick_used(m, op[1])) == PE_NOSLOT ||
            lru_find(m, list, s) >= 0)
            break;                                   /* not allowed */
        pe__lru_push(ct, list, s, op[2]);
        lru_append(m, list, s, op[2]);
        break;
    case 5:                                          /* lru remove */
        if ((s = pick_used(m, op[1])) == PE_NOSLOT)
            break;
        pe__lru_remove(ct, list, s);                 /* linked or not */
        lru_drop(m, list, s);
        break;
    case 6:                                          /* lru touch */
        if ((s = pick_used(m, op[1])) == PE_NOSLOT)
            break;
        pe__lru_touch(ct, list, s, op[2]);
        lru_drop(m, list, s);
        lru_append(m, list, s, op[2]);
        break;
    default:                                         /* handle lookups */
        if (m->nhist) {
            uint32_t n = m->nhist < HIST ? m->nhist : HIST;

            check_handle(ct, m, m->hist[op[1] % n]);
        }
        /* Forged handles: any slot, small generations, 0. */
        check_handle(ct, m, (pe_handle)op[2] << 32 | op[1]);
        check_handle(ct, m, (pe_handle)op[1] % (m->cap + 2));
        break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct model m;
    struct pe_conntable ct;
    size_t i;

    if (size < 1)
        return 0;
    memset(&m, 0, sizeof(m));
    m.cap = (data[0] % CAP_MAX) + 1;
    CHECK(pe__ct_init(&ct, m.cap) == 0);
    for (i = 1; i + 3 <= size; i += 3) {
        run_op(&ct, &m, data + i);
        check_all(&ct, &m);
    }
    /* Every handle ever issued, once more at the end. */
    for (uint32_t k = 0; k < m.nhist && k < HIST; k++)
        check_handle(&ct, &m, m.hist[k]);
    pe__ct_destroy(&ct);
    return 0;
}

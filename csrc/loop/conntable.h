/*
 * conntable.h - fixed-capacity connection table with intrusive LRU lists
 * (internal to csrc/).
 *
 * Slots live in one calloc'd array, so pages of never-used slots cost no
 * memory.  Never-used slots are handed out first, then freed slots in FIFO
 * order: a freed slot is reused as late as possible, which keeps a stale
 * handle (slot + generation) stale for as long as we can.  The generation
 * is bumped on free and never 0, so handle 0 is never valid.
 *
 * Each uniform timeout (idle, read) is an LRU list threaded through the
 * slots by 32-bit indexes: touching is O(1) (move to the tail) and the list
 * stays sorted by tick, so expiry is found at the head without any scan.
 */
#ifndef PE_CONNTABLE_H
#define PE_CONNTABLE_H

#include <stdint.h>

#include "pyepoll.h"
#include "ring.h"

#define PE_NOSLOT 0xFFFFFFFFu
#define PE_CT_MAX 0x7FFFFFF0u     /* room for fd-map tags above it */

/* LRU lists. */
#define PE_LRU_IDLE 0
#define PE_LRU_READ 1

/* Flag bits owned by the table; the loop uses the others (see loop.h). */
#define PE_CF_INUSE    0x0001u
#define PE_CF_DETACHED 0x0002u    /* handle refused, connection still flushing */
#define PE_CF_LRU0     0x0004u    /* linked in list 0 */
#define PE_CF_LRU1     0x0008u    /* linked in list 1 */

struct pe_link {
    uint32_t prev, next;
};

struct pe_conn {
    int32_t  fd;
    uint32_t gen;
    uint32_t flags;
    uint32_t tick[2];            /* per list: ms tick of the last touch */
    struct pe_link lru[2];
    uint32_t bidx;               /* loop: 1 + index of its DATA in the last
                                    pe_loop_run_into batch, 0: none */
    uint64_t token;
    struct pe_ring in, out;
};

struct pe_lru {
    uint32_t head, tail, count;
};

struct pe_conntable {
    struct pe_conn *slots;
    uint32_t cap;
    uint32_t used;
    uint32_t fresh;              /* slots [fresh, cap) were never used */
    uint32_t fhead, flen;        /* FIFO of freed slots in freeq */
    uint32_t *freeq;
    struct pe_lru lru[2];
};

int  pe__ct_init(struct pe_conntable *ct, uint32_t cap);
void pe__ct_destroy(struct pe_conntable *ct);

/* A free slot, marked in use with flags = PE_CF_INUSE and everything else
 * zeroed but gen; PE_NOSLOT when the table is full. */
uint32_t pe__ct_alloc(struct pe_conntable *ct);
/* Unlink from the LRU lists, bump the generation, queue the slot for reuse. */
void pe__ct_free(struct pe_conntable *ct, uint32_t slot);

static inline pe_handle pe__ct_handle(const struct pe_conntable *ct,
                                      uint32_t slot)
{
    return (pe_handle)slot | (pe_handle)ct->slots[slot].gen << 32;
}

static inline int pe__ct_full(const struct pe_conntable *ct)
{
    return ct->used == ct->cap;
}

/* The connection a live handle names, or NULL (stale, detached, bogus). */
static inline struct pe_conn *pe__ct_get(struct pe_conntable *ct, pe_handle h)
{
    uint32_t slot = (uint32_t)h, gen = (uint32_t)(h >> 32);
    struct pe_conn *c;

    if (slot >= ct->cap || gen == 0)
        return NULL;
    c = &ct->slots[slot];
    if (c->gen != gen ||
        (c->flags & (PE_CF_INUSE | PE_CF_DETACHED)) != PE_CF_INUSE)
        return NULL;
    return c;
}

/* 0 and *out set, or -ESTALE. */
int pe__ct_lookup(struct pe_conntable *ct, pe_handle h, struct pe_conn **out);

/* LRU lists: push at the tail with tick (slot must not be linked in that
 * list), remove if linked, touch = re-stamp and move to the tail. */
void pe__lru_push(struct pe_conntable *ct, int list, uint32_t slot,
                  uint32_t tick);
void pe__lru_remove(struct pe_conntable *ct, int list, uint32_t slot);
void pe__lru_touch(struct pe_conntable *ct, int list, uint32_t slot,
                   uint32_t tick);

static inline uint32_t pe__lru_head(const struct pe_conntable *ct, int list)
{
    return ct->lru[list].head;
}

static inline int pe__lru_linked(const struct pe_conn *c, int list)
{
    return (c->flags & (PE_CF_LRU0 << list)) != 0;
}

#endif /* PE_CONNTABLE_H */

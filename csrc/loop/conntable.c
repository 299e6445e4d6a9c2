/*
 * conntable.c - connection slots, handle generations, LRU timeout lists.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "conntable.h"

/* An idle connection must stay cheap: slot + fd-map entry + poller entry. */
_Static_assert(sizeof(struct pe_conn) <= 96, "struct pe_conn grew");

int pe__ct_init(struct pe_conntable *ct, uint32_t cap)
{
    memset(ct, 0, sizeof(*ct));
    if (cap == 0 || cap > PE_CT_MAX)
        return -EINVAL;
    /* calloc: the kernel hands out zero pages lazily, so a large table
     * costs memory only as far as it is used. */
    ct->slots = calloc(cap, sizeof(*ct->slots));
    ct->freeq = malloc((size_t)cap * sizeof(*ct->freeq));
    if (!ct->slots || !ct->freeq) {
        free(ct->slots);
        free(ct->freeq);
        ct->slots = NULL;
        ct->freeq = NULL;
        return -ENOMEM;
    }
    ct->cap = cap;
    for (int i = 0; i < 2; i++)
        ct->lru[i].head = ct->lru[i].tail = PE_NOSLOT;
    return 0;
}

void pe__ct_destroy(struct pe_conntable *ct)
{
    free(ct->slots);
    free(ct->freeq);
    ct->slots = NULL;
    ct->freeq = NULL;
    ct->cap = ct->used = 0;
}

uint32_t pe__ct_alloc(struct pe_conntable *ct)
{
    uint32_t slot, gen;
    struct pe_conn *c;

    if (ct->fresh < ct->cap) {
        slot = ct->fresh++;
        gen = 1;
    } else if (ct->flen > 0) {
        slot = ct->freeq[ct->fhead];
        ct->fhead = ct->fhead + 1 == ct->cap ? 0 : ct->fhead + 1;
        ct->flen--;
        gen = ct->slots[slot].gen;
    } else {
        return PE_NOSLOT;
    }
    c = &ct->slots[slot];
    memset(c, 0, sizeof(*c));
    c->gen = gen;
    c->fd = -1;
    c->flags = PE_CF_INUSE;
    ct->used++;
    return slot;
}

void pe__ct_free(struct pe_conntable *ct, uint32_t slot)
{
    struct pe_conn *c = &ct->slots[slot];
    uint32_t tail;

    pe__lru_remove(ct, PE_LRU_IDLE, slot);
    pe__lru_remove(ct, PE_LRU_READ, slot);
    c->flags = 0;
    c->fd = -1;
    if (++c->gen == 0)
        c->gen = 1;
    tail = ct->fhead + ct->flen;
    if (tail >= ct->cap)
        tail -= ct->cap;
    ct->freeq[tail] = slot;
    ct->flen++;
    ct->used--;
}

int pe__ct_lookup(struct pe_conntable *ct, pe_handle h, struct pe_conn **out)
{
    struct pe_conn *c = pe__ct_get(ct, h);

    if (!c)
        return -ESTALE;
    *out = c;
    return 0;
}

void pe__lru_push(struct pe_conntable *ct, int list, uint32_t slot,
                  uint32_t tick)
{
    struct pe_lru *q = &ct->lru[list];
    struct pe_conn *c = &ct->slots[slot];

    c->tick[list] = tick;
    c->lru[list].prev = q->tail;
    c->lru[list].next = PE_NOSLOT;
    if (q->tail != PE_NOSLOT)
        ct->slots[q->tail].lru[list].next = slot;
    else
        q->head = slot;
    q->tail = slot;
    q->count++;
    c->flags |= PE_CF_LRU0 << list;
}

void pe__lru_remove(struct pe_conntable *ct, int list, uint32_t slot)
{
    struct pe_lru *q = &ct->lru[list];
    struct pe_conn *c = &ct->slots[slot];
    uint32_t prev, next;

    if (!(c->flags & (PE_CF_LRU0 << list)))
        return;
    prev = c->lru[list].prev;
    next = c->lru[list].next;
    if (prev != PE_NOSLOT)
        ct->slots[prev].lru[list].next = next;
    else
        q->head = next;
    if (next != PE_NOSLOT)
        ct->slots[next].lru[list].prev = prev;
    else
        q->tail = prev;
    q->count--;
    c->flags &= ~(PE_CF_LRU0 << list);
}

void pe__lru_touch(struct pe_conntable *ct, int list, uint32_t slot,
                   uint32_t tick)
{
    /* Already the tail: the common case for a busy connection. */
    if (ct->lru[list].tail == slot && pe__lru_linked(&ct->slots[slot], list)) {
        ct->slots[slot].tick[list] = tick;
        return;
    }
    pe__lru_remove(ct, list, slot);
    pe__lru_push(ct, list, slot, tick);
}

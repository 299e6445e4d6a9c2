/* test_conntable.c - slots, handles, FIFO reuse, LRU lists. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif
#endif
#ifndef RUNNING_ON_VALGRIND
#define RUNNING_ON_VALGRIND 0
#endif
#if defined(__SANITIZE_ADDRESS__)
#define PE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PE_ASAN 1
#endif
#endif
#ifndef PE_ASAN
#define PE_ASAN 0
#endif

#include "loop/conntable.h"

static void test_exhaustion(void **state)
{
    struct pe_conntable ct;
    uint32_t s[3];

    (void)state;
    assert_int_equal(pe__ct_init(&ct, 0), -EINVAL);
    assert_int_equal(pe__ct_init(&ct, 3), 0);
    for (int i = 0; i < 3; i++) {
        s[i] = pe__ct_alloc(&ct);
        assert_true(s[i] < 3);
        for (int j = 0; j < i; j++)
            assert_int_not_equal(s[i], s[j]);
    }
    assert_true(pe__ct_full(&ct));
    assert_int_equal(pe__ct_alloc(&ct), PE_NOSLOT);
    assert_int_equal(ct.used, 3);
    pe__ct_free(&ct, s[1]);
    assert_false(pe__ct_full(&ct));
    assert_int_equal(pe__ct_alloc(&ct), s[1]);
    assert_int_equal(pe__ct_alloc(&ct), PE_NOSLOT);
    pe__ct_destroy(&ct);
}

static void test_fifo_reuse(void **state)
{
    struct pe_conntable ct;

    (void)state;
    assert_int_equal(pe__ct_init(&ct, 4), 0);
    /* Never-used slots first, even when an older slot is free. */
    assert_int_equal(pe__ct_alloc(&ct), 0);
    assert_int_equal(pe__ct_alloc(&ct), 1);
    pe__ct_free(&ct, 0);
    assert_int_equal(pe__ct_alloc(&ct), 2);
    assert_int_equal(pe__ct_alloc(&ct), 3);
    /* Then freed slots in the order they were freed (0 first). */
    pe__ct_free(&ct, 3);
    pe__ct_free(&ct, 1);
    assert_int_equal(pe__ct_alloc(&ct), 0);
    assert_int_equal(pe__ct_alloc(&ct), 3);
    pe__ct_free(&ct, 2);
    assert_int_equal(pe__ct_alloc(&ct), 1);
    assert_int_equal(pe__ct_alloc(&ct), 2);
    assert_int_equal(pe__ct_alloc(&ct), PE_NOSLOT);
    /* The FIFO wraps around its storage many times. */
    for (uint32_t round = 0; round < 50; round++) {
        uint32_t order[4] = { (round + 1) % 4, (round + 3) % 4, round % 4,
                              (round + 2) % 4 };

        for (int i = 0; i < 4; i++)
            pe__ct_free(&ct, order[i]);
        for (int i = 0; i < 4; i++)
            assert_int_equal(pe__ct_alloc(&ct), order[i]);
    }
    pe__ct_destroy(&ct);
}

static void test_stale_handles(void **state)
{
    struct pe_conntable ct;
    struct pe_conn *c;
    pe_handle h, h2;
    uint32_t s;

    (void)state;
    assert_int_equal(pe__ct_init(&ct, 1), 0);
    s = pe__ct_alloc(&ct);
    h = pe__ct_handle(&ct, s);
    assert_int_equal(h >> 32, 1);            /* generations start at 1 */
    assert_int_equal(pe__ct_lookup(&ct, h, &c), 0);
    assert_ptr_equal(c, &ct.slots[s]);
    assert_int_equal(pe__ct_lookup(&ct, 0, &c), -ESTALE);
    assert_int_equal(pe__ct_lookup(&ct, h + 1, &c), -ESTALE);   /* slot 1 */
    assert_int_equal(pe__ct_lookup(&ct, (pe_handle)2 << 32, &c), -ESTALE);

    /* A detached connection (flushing after close) refuses its handle. */
    ct.slots[s].flags |= PE_CF_DETACHED;
    assert_int_equal(pe__ct_lookup(&ct, h, &c), -ESTALE);
    ct.slots[s].flags &= ~PE_CF_DETACHED;

    pe__ct_free(&ct, s);
    assert_int_equal(pe__ct_lookup(&ct, h, &c), -ESTALE);
    assert_int_equal(pe__ct_alloc(&ct), s);  /* same slot, new generation */
    h2 = pe__ct_handle(&ct, s);
    assert_int_not_equal(h, h2);
    assert_int_equal(pe__ct_lookup(&ct, h, &c), -ESTALE);
    assert_int_equal(pe__ct_lookup(&ct, h2, &c), 0);

    /* The generation skips 0 when it wraps. */
    ct.slots[s].gen = UINT32_MAX;
    pe__ct_free(&ct, s);
    assert_int_equal(pe__ct_alloc(&ct), s);
    assert_int_equal(ct.slots[s].gen, 1);
    pe__ct_destroy(&ct);
}

/* Walk a list from the head and compare with the expected slots. */
static void check_list(struct pe_conntable *ct, int list, const uint32_t *want,
                       uint32_t n)
{
    uint32_t s = ct->lru[list].head, prev = PE_NOSLOT, i = 0;

    assert_int_equal(ct->lru[list].count, n);
    while (s != PE_NOSLOT) {
        assert_true(i < n);
        assert_int_equal(s, want[i]);
        assert_int_equal(ct->slots[s].lru[list].prev, prev);
        prev = s;
        s = ct->slots[s].lru[list].next;
        i++;
    }
    assert_int_equal(i, n);
    assert_int_equal(ct->lru[list].tail, n ? want[n - 1] : PE_NOSLOT);
}

static void test_lru(void **state)
{
    struct pe_conntable ct;

    (void)state;
    assert_int_equal(pe__ct_init(&ct, 8), 0);
    for (uint32_t i = 0; i < 5; i++) {
        assert_int_equal(pe__ct_alloc(&ct), i);
        pe__lru_push(&ct, PE_LRU_IDLE, i, 100 + i);
    }
    check_list(&ct, PE_LRU_IDLE, (uint32_t[]){ 0, 1, 2, 3, 4 }, 5);
    check_list(&ct, PE_LRU_READ, NULL, 0);

    pe__lru_touch(&ct, PE_LRU_IDLE, 0, 200);      /* head to tail */
    check_list(&ct, PE_LRU_IDLE, (uint32_t[]){ 1, 2, 3, 4, 0 }, 5);
    assert_int_equal(ct.slots[0].tick[PE_LRU_IDLE], 200);
    pe__lru_touch(&ct, PE_LRU_IDLE, 3, 201);      /* middle to tail */
    check_list(&ct, PE_LRU_IDLE, (uint32_t[]){ 1, 2, 4, 0, 3 }, 5);
    pe__lru_touch(&ct, PE_LRU_IDLE, 3, 202);      /* tail stays */
    check_list(&ct, PE_LRU_IDLE, (uint32_t[]){ 1, 2, 4, 0, 3 }, 5);
    assert_int_equal(ct.slots[3].tick[PE_LRU_IDLE], 202);

    /* The second list is independent of the first. */
    pe__lru_push(&ct, PE_LRU_READ, 4, 7);
    pe__lru_push(&ct, PE_LRU_READ, 1, 8);
    check_list(&ct, PE_LRU_READ, (uint32_t[]){ 4, 1 }, 2);

    pe__lru_remove(&ct, PE_LRU_IDLE, 1);          /* head */
    pe__lru_remove(&ct, PE_LRU_IDLE, 0);          /* middle */
    pe__lru_remove(&ct, PE_LRU_IDLE, 3);          /* tail */
    pe__lru_remove(&ct, PE_LRU_IDLE, 3);          /* not linked: no-op */
    check_list(&ct, PE_LRU_IDLE, (uint32_t[]){ 2, 4 }, 2);
    assert_false(pe__lru_linked(&ct.slots[3], PE_LRU_IDLE));
    assert_true(pe__lru_linked(&ct.slots[4], PE_LRU_READ));

    /* Touching an unlinked slot links it. */
    pe__lru_touch(&ct, PE_LRU_IDLE, 3, 300);
    check_list(&ct, PE_LRU_IDLE, (uint32_t[]){ 2, 4, 3 }, 3);

    /* Freeing unlinks from both lists. */
    pe__ct_free(&ct, 4);
    check_list(&ct, PE_LRU_IDLE, (uint32_t[]){ 2, 3 }, 2);
    check_list(&ct, PE_LRU_READ, (uint32_t[]){ 1 }, 1);
    pe__ct_free(&ct, 2);
    pe__ct_free(&ct, 3);
    pe__ct_free(&ct, 1);
    check_list(&ct, PE_LRU_IDLE, NULL, 0);
    check_list(&ct, PE_LRU_READ, NULL, 0);
    assert_int_equal(pe__lru_head(&ct, PE_LRU_IDLE), PE_NOSLOT);
    pe__ct_destroy(&ct);
}

#ifdef __linux__
static long resident_kib(void)
{
    long pages = 0, rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");

    assert_non_null(f);
    assert_int_equal(fscanf(f, "%ld %ld", &pages, &rss), 2);
    fclose(f);
    return rss * (sysconf(_SC_PAGESIZE) / 1024);
}
#endif

/* A big table costs memory only for the slots in use. */
static void test_lazy_memory(void **state)
{
    (void)state;
    assert_true(sizeof(struct pe_conn) <= 96);
#ifdef __linux__
    struct pe_conntable ct;
    long before, after;

    /* Both instrument every allocated byte. */
    if (PE_ASAN || RUNNING_ON_VALGRIND)
        skip();
    before = resident_kib();

    assert_int_equal(pe__ct_init(&ct, 1u << 20), 0);   /* 96 MiB of slots */
    for (int i = 0; i < 1000; i++)
        assert_true(pe__ct_alloc(&ct) != PE_NOSLOT);
    after = resident_kib();
    assert_true(after - before < 4096);
    pe__ct_destroy(&ct);
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exhaustion),
        cmocka_unit_test(test_fifo_reuse),
        cmocka_unit_test(test_stale_handles),
        cmocka_unit_test(test_lru),
        cmocka_unit_test(test_lazy_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

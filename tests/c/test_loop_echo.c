/*
 * test_loop_echo.c - regressions found by fuzz/fuzz_loop.c: the echo mode
 * (input sent back in C) must never stall while the peer keeps reading.
 *
 * 1. An echo connection paused at in_high (its output ring could not take
 *    the input) stayed paused for good once the output drained: nothing
 *    but pe_loop_read cleared that pause, and echo mode has no reader.
 * 2. With out_max below in_high, more input than out_max could be read at
 *    once; it can never move into the output ring, even an empty one, so
 *    the connection stopped forever.
 *
 * One end of a Unix socketpair is handed to the loop (as an accepted
 * connection would be); the test plays the client from the same thread.
 * Every mode: epoll edge, epoll level, poll, select.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "loop/loop.h"
#include "pyepoll.h"
#include "support.h"

#define TOTAL (256u << 10)
#define DEADLINE_MS 5000

static unsigned char pat(size_t i)
{
    return (unsigned char)((i * 131) ^ (i >> 8));
}

/* Write TOTAL bytes into an echo connection, first without reading any
 * back (so the loop's output fills and it pauses), then reading; every
 * byte must come back in order before the deadline. */
static void roundtrip(const struct mode *m, uint32_t in_high, uint32_t out_high,
                      uint32_t out_max, int sndbuf)
{
    static unsigned char buf[TOTAL];
    struct pe_loop_config cfg;
    struct pe_loop_event ev[16];
    size_t sent = 0, back = 0;
    uint64_t until;
    pe_loop *l;
    int sv[2], n, rounds = 0;

    mode_config(&cfg, m);
    cfg.echo = 1;
    cfg.max_conns = 4;
    cfg.in_high = in_high;
    cfg.in_low = in_high / 2;
    cfg.out_high = out_high;
    cfg.out_max = out_max;
    l = new_loop_or_skip(&cfg);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK |
                                SOCK_CLOEXEC, 0, sv), 0);
    assert_int_equal(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sndbuf,
                                sizeof(sndbuf)), 0);
    pe__conn_open(l, sv[0], 0);
    for (size_t i = 0; i < TOTAL; i++)
        buf[i] = pat(i);

    until = now_ms() + DEADLINE_MS;
    while (back < TOTAL) {
        ssize_t w, r;

        if (now_ms() > until)
            fail_msg("%s%s in_high %u out_max %u: stalled, %zu of %zu bytes "
                     "sent, %zu back", m->backend, m->edge ? " edge" : "",
                     in_high, out_max, sent, (size_t)TOTAL, back);
        if (sent < TOTAL) {
            w = send(sv[1], buf + sent, TOTAL - sent, MSG_NOSIGNAL);
            assert_true(w > 0 || (w < 0 && errno == EAGAIN));
            if (w > 0)
                sent += (size_t)w;
        }
        n = pe_loop_run(l, ev, 16, 1);
        assert_true(n >= 0);
        for (int i = 0; i < n; i++)
            assert_true(ev[i].kind == PE_EV_OPEN);
        /* The first rounds read nothing back: the output piles up. */
        if (++rounds < 50)
            continue;
        while ((r = recv(sv[1], buf + back, TOTAL - back, 0)) > 0) {
            for (size_t i = back; i < back + (size_t)r; i++)
                if (buf[i] != pat(i))
                    fail_msg("byte %zu differs", i);
            back += (size_t)r;
        }
    }
    assert_int_equal(back, TOTAL);
    pe_loop_free(l);
    close(sv[1]);
}

/* 1: out_max == in_high, out_high too: a read that finds the output ring
 * nearly full leaves in_high bytes in the input (both pauses set). */
static void test_echo_resumes_after_in_high(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_MODES; i++)
        roundtrip(&modes[i], 4096, 4096, 4096, 4096);
}

/* 2: out_max far below in_high. */
static void test_echo_out_max_below_in_high(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_MODES; i++) {
        roundtrip(&modes[i], 65536, 100, 300, 4096);
        roundtrip(&modes[i], 65536, 1, 1000, 1);
    }
}

/* The defaults, as a control. */
static void test_echo_defaults(void **state)
{
    struct pe_loop_config d;

    (void)state;
    pe_loop_config_init(&d);
    for (size_t i = 0; i < N_MODES; i++)
        roundtrip(&modes[i], d.in_high, d.out_high, d.out_max, 4096);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_echo_resumes_after_in_high),
        cmocka_unit_test(test_echo_out_max_below_in_high),
        cmocka_unit_test(test_echo_defaults),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}

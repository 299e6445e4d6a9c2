/*
 * test_loop_defer.c - defer_writes (loop_io.c): writes to a connection with
 * nothing queued wait in its output ring until the next run or
 * pe_loop_flush, then leave in one send, in order, with every path that
 * looks at queued output (close, abort, shutdown, sendfile, teardown)
 * seeing them.
 *
 * Each test runs once per mode (epoll edge and level, poll, select), over
 * socketpairs adopted by the loop, in one thread; every wait is bounded.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "pyepoll.h"
#include "support.h"

#define DEADLINE_MS 5000
#define MAXEV 64

struct batch {
    struct pe_loop_event ev[MAXEV];
    int n;
};

static pe_loop *new_loop(void **state, uint32_t max_conns, uint32_t defer)
{
    struct pe_loop_config cfg;

    mode_config(&cfg, *state);
    cfg.max_conns = max_conns;
    cfg.defer_writes = defer;
    return new_loop_or_skip(&cfg);
}

static int run(pe_loop *l, struct batch *b, int timeout)
{
    b->n = pe_loop_run(l, b->ev, MAXEV, timeout);
    assert_true(b->n >= 0);
    return b->n;
}

static const struct pe_loop_event *find(const struct batch *b, uint32_t kind,
                                        pe_handle h)
{
    for (int i = 0; i < b->n; i++)
        if (b->ev[i].kind == kind && b->ev[i].handle == h)
            return &b->ev[i];
    return NULL;
}

/* A socketpair whose sv[0] the loop adopted (the loop closes it unless
 * flags has PE_ADOPT_KEEPFD); sv[1] is the non-blocking peer. */
static pe_handle pair(pe_loop *l, int sv[2], uint32_t flags)
{
    pe_handle h = 0;

    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    nonblock(sv[1]);
    assert_int_equal(pe_loop_adopt(l, sv[0], flags, &h), 0);
    return h;
}

/* What the peer can read now, without waiting: bytes, and *eof when the
 * stream ended. */
static size_t drain_peer(int fd, void *buf, size_t cap, int *eof)
{
    size_t got = 0;
    ssize_t n;

    *eof = 0;
    while (got < cap) {
        n = read(fd, (char *)buf + got, cap - got);
        if (n > 0) {
            got += (size_t)n;
        } else {
            if (n == 0)
                *eof = 1;
            else
                assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
            break;
        }
    }
    return got;
}

static uint64_t bytes_out(pe_loop *l)
{
    struct pe_loop_stats st;

    assert_int_equal(pe_loop_get_stats(l, &st), 0);
    return st.bytes_out;
}

/* Writes wait for the run (or pe_loop_flush) and leave in one send; they
 * count as queued meanwhile; whole, they make no DRAINED. */
static void test_deferred_until_run(void **state)
{
    pe_loop *l = new_loop(state, 8, 65536);
    struct batch b;
    char buf[64];
    int sv[2], eof;
    uint32_t in, out;
    pe_handle h = pair(l, sv, 0);

    assert_int_equal(pe_loop_write(l, h, "abc", 3), 3);
    assert_int_equal(pe_loop_write(l, h, "def", 3), 6);
    assert_int_equal(pe_loop_send(l, h, "g", 1), 1);
    assert_int_equal(pe_loop_buffered(l, h, &in, &out), 0);
    assert_int_equal(out, 7);
    assert_int_equal(drain_peer(sv[1], buf, sizeof(buf), &eof), 0);
    assert_int_equal(bytes_out(l), 0);
    run(l, &b, 0);
    assert_null(find(&b, PE_EV_DRAINED, h));
    assert_int_equal(bytes_out(l), 7);
    assert_int_equal(drain_peer(sv[1], buf, sizeof(buf), &eof), 7);
    assert_memory_equal(buf, "abcdefg", 7);
    assert_int_equal(pe_loop_buffered(l, h, &in, &out), 0);
    assert_int_equal(out, 0);

    /* pe_loop_flush sends them without a run; a second has nothing. */
    assert_int_equal(pe_loop_write(l, h, "xy", 2), 2);
    assert_int_equal(pe_loop_flush(l), 1);
    assert_int_equal(pe_loop_flush(l), 0);
    assert_int_equal(drain_peer(sv[1], buf, sizeof(buf), &eof), 2);
    assert_memory_equal(buf, "xy", 2);

    /* A low mark asks for DRAINED(0) when the deferred bytes are out. */
    assert_int_equal(pe_loop_write(l, h, "z", 1), 1);
    assert_int_equal(pe_loop_notify_below(l, h, 0), 0);
    run(l, &b, 0);
    assert_non_null(find(&b, PE_EV_DRAINED, h));
    assert_int_equal(find(&b, PE_EV_DRAINED, h)->arg, 0);
    assert_int_equal(pe_loop_close(l, h, PE_CLOSE_NOW), 0);
    pe_loop_free(l);
    close(sv[1]);
}

/* defer_writes 0: sent at once, as always. */
static void test_off_sends_now(void **state)
{
    pe_loop *l = new_loop(state, 8, 0);
    char buf[8];
    int sv[2], eof;
    pe_handle h = pair(l, sv, 0);

    assert_int_equal(pe_loop_write(l, h, "now", 3), 0);
    assert_int_equal(drain_peer(sv[1], buf, sizeof(buf), &eof), 3);
    assert_int_equal(pe_loop_flush(l), 0);
    pe_loop_free(l);
    close(sv[1]);
}

/* Deferred, over-the-bound and queued-behind-a-full-socket writes mixed:
 * the peer gets every byte once, in order; a write over the bound sends
 * what was deferred at once. */
static void test_order_mixed(void **state)
{
    pe_loop *l = new_loop(state, 8, 1024);
    static unsigned char src[(1 << 20) + 8192], got[sizeof(src)];
    static const size_t sizes[] = { 100, 2000, 10, 500, 600, 1024, 1,
                                    1 << 20, 7, 300, 3000, 5 };
    struct batch b;
    size_t pos = 0, have = 0, i;
    int sv[2], eof, rcv = 4096;
    uint64_t until = now_ms() + DEADLINE_MS;
    pe_handle h;

    for (i = 0; i < sizeof(src); i++)
        src[i] = (unsigned char)(i * 13 + (i >> 9));
    h = pair(l, sv, 0);
    setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv));
    for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        assert_true(pos + sizes[i] <= sizeof(src));
        assert_true(pe_loop_write(l, h, src + pos, sizes[i]) >= 0);
        pos += sizes[i];
        if (i == 1) {
            /* 100 deferred, then 2000 over the bound: both out already. */
            have += drain_peer(sv[1], got + have, sizeof(got) - have, &eof);
            assert_int_equal(have, 2100);
        }
    }
    while (have < pos) {
        run(l, &b, 1);
        have += drain_peer(sv[1], got + have, sizeof(got) - have, &eof);
        assert_false(eof);
        if (now_ms() > until)
            fail_msg("%zu of %zu bytes arrived", have, pos);
    }
    assert_int_equal(have, pos);
    assert_memory_equal(got, src, pos);
    assert_int_equal(pe_loop_close(l, h, PE_CLOSE_NOW), 0);
    pe_loop_free(l);
    close(sv[1]);
}

/* A FLUSH close sends the deferred bytes, then closes: the peer reads
 * them, then EOF. */
static void test_close_flush(void **state)
{
    pe_loop *l = new_loop(state, 8, 65536);
    struct batch b;
    char buf[64];
    size_t have = 0;
    int sv[2], eof = 0;
    uint64_t until = now_ms() + DEADLINE_MS;
    pe_handle h = pair(l, sv, 0);

    assert_int_equal(pe_loop_write(l, h, "hello", 5), 5);
    assert_int_equal(pe_loop_close(l, h, PE_CLOSE_FLUSH), 0);
    assert_int_equal(pe_loop_write(l, h, "x", 1), -ESTALE);
    while (!eof) {
        run(l, &b, 1);
        have += drain_peer(sv[1], buf + have, sizeof(buf) - have, &eof);
        if (now_ms() > until)
            fail_msg("no EOF after %zu bytes", have);
    }
    assert_int_equal(have, 5);
    assert_memory_equal(buf, "hello", 5);
    pe_loop_free(l);
    close(sv[1]);
}

/* An abort (or a NOW close) drops the deferred bytes; the slot, reused by
 * the next connection, is not confused with the old list entry. */
static void test_abort_drops_slot_reused(void **state)
{
    pe_loop *l = new_loop(state, 1, 65536);
    struct batch b;
    char buf[64];
    int sv[2], sv2[2], eof;
    pe_handle h = pair(l, sv, 0), h2;

    assert_int_equal(pe_loop_write(l, h, "lost", 4), 4);
    assert_int_equal(pe_loop_close(l, h, PE_CLOSE_ABORT), 0);
    h2 = pair(l, sv2, 0);
    assert_int_equal((uint32_t)h2, (uint32_t)h);      /* the same slot */
    assert_true(h2 != h);
    assert_int_equal(pe_loop_write(l, h2, "kept", 4), 4);
    run(l, &b, 0);
    assert_int_equal(drain_peer(sv2[1], buf, sizeof(buf), &eof), 4);
    assert_memory_equal(buf, "kept", 4);
    assert_int_equal(drain_peer(sv[1], buf, sizeof(buf), &eof), 0);
    assert_true(eof);                    /* closed with nothing sent */
    /* The old entry went with the run: a flush has nothing left. */
    assert_int_equal(pe_loop_flush(l), 0);

    /* Closed while on the list, then reused before the flush. */
    assert_int_equal(pe_loop_write(l, h2, "gone", 4), 4);
    assert_int_equal(pe_loop_close(l, h2, PE_CLOSE_NOW), 0);
    close(sv[1]);
    h = pair(l, sv, 0);
    assert_int_equal((uint32_t)h, (uint32_t)h2);
    assert_int_equal(pe_loop_flush(l), 0);   /* the new one deferred nothing */
    assert_int_equal(drain_peer(sv[1], buf, sizeof(buf), &eof), 0);
    assert_false(eof);
    assert_int_equal(drain_peer(sv2[1], buf, sizeof(buf), &eof), 0);
    assert_true(eof);
    assert_int_equal(pe_loop_close(l, h, PE_CLOSE_NOW), 0);
    pe_loop_free(l);
    close(sv[1]);
    close(sv2[1]);
}

/* shutdown: the FIN follows the deferred bytes. */
static void test_shutdown_after_deferred(void **state)
{
    pe_loop *l = new_loop(state, 8, 65536);
    struct batch b;
    char buf[64];
    int sv[2], eof;
    pe_handle h = pair(l, sv, 0);

    assert_int_equal(pe_loop_write(l, h, "data", 4), 4);
    assert_int_equal(pe_loop_shutdown(l, h), 0);
    assert_int_equal(pe_loop_write(l, h, "more", 4), -EPIPE);
    assert_int_equal(drain_peer(sv[1], buf, sizeof(buf), &eof), 0);
    assert_false(eof);                   /* no FIN ahead of the bytes */
    run(l, &b, 0);
    assert_int_equal(drain_peer(sv[1], buf, sizeof(buf), &eof), 4);
    assert_memory_equal(buf, "data", 4);
    assert_int_equal(drain_peer(sv[1], buf, sizeof(buf), &eof), 0);
    assert_true(eof);
    assert_int_equal(pe_loop_close(l, h, PE_CLOSE_NOW), 0);
    pe_loop_free(l);
    close(sv[1]);
}

#ifdef __linux__
/* sendfile refuses while deferred bytes wait, and the DRAINED that the
 * refusal promises comes once they are out; the file follows them. */
static void test_sendfile_busy_then_drained(void **state)
{
    pe_loop *l = new_loop(state, 8, 65536);
    struct batch b;
    char path[] = "/tmp/pe_defer_XXXXXX", buf[64];
    int sv[2], fd, eof;
    uint64_t until = now_ms() + DEADLINE_MS;
    pe_handle h = pair(l, sv, PE_ADOPT_KEEPFD);

    fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    assert_int_equal(write(fd, "FILE", 4), 4);
    assert_int_equal(pe_loop_write(l, h, "head", 4), 4);
    assert_int_equal(pe_loop_sendfile(l, h, fd, 0, 4), -EBUSY);
    do {
        run(l, &b, 1);
        if (now_ms() > until)
            fail_msg("no DRAINED");
    } while (!find(&b, PE_EV_DRAINED, h));
    assert_int_equal(find(&b, PE_EV_DRAINED, h)->arg, 0);
    assert_int_equal(pe_loop_sendfile(l, h, fd, 0, 4), 4);
    assert_int_equal(drain_peer(sv[1], buf, sizeof(buf), &eof), 8);
    assert_memory_equal(buf, "headFILE", 8);
    assert_int_equal(pe_loop_close(l, h, PE_CLOSE_NOW), 0);
    pe_loop_free(l);
    close(fd);
    close(sv[0]);
    close(sv[1]);
}
#endif

/* A peer gone before the flush: the flush's failed send closes the
 * connection with CLOSED(errno), as a queued send's failure does. */
static void test_flush_failure_closes(void **state)
{
    pe_loop *l = new_loop(state, 8, 65536);
    struct batch b;
    const struct pe_loop_event *e;
    uint64_t until = now_ms() + DEADLINE_MS;
    int sv[2];
    pe_handle h = pair(l, sv, 0);

    close(sv[1]);
    assert_int_equal(pe_loop_write(l, h, "void", 4), 4);
    do {
        run(l, &b, 1);
        if (now_ms() > until)
            fail_msg("no CLOSED");
    } while (!(e = find(&b, PE_EV_CLOSED, h)));
    assert_true(e->arg == EPIPE || e->arg == ECONNRESET);
    assert_int_equal(pe_loop_write(l, h, "x", 1), -ESTALE);
    pe_loop_free(l);
}

/* Freeing the loop sends what was deferred (it would have left at write
 * time without defer_writes), then closes. */
static void test_free_sends_deferred(void **state)
{
    pe_loop *l = new_loop(state, 8, 65536);
    char buf[64];
    int sv[2], sv2[2], eof;
    pe_handle h = pair(l, sv, 0), h2 = pair(l, sv2, 0);

    assert_int_equal(pe_loop_write(l, h, "bye", 3), 3);
    assert_int_equal(pe_loop_write(l, h2, "dropped", 7), 7);
    assert_int_equal(pe_loop_close(l, h2, PE_CLOSE_NOW), 0);
    pe_loop_free(l);
    assert_int_equal(drain_peer(sv[1], buf, sizeof(buf), &eof), 3);
    assert_memory_equal(buf, "bye", 3);
    assert_int_equal(drain_peer(sv[1], buf, sizeof(buf), &eof), 0);
    assert_true(eof);
    assert_int_equal(drain_peer(sv2[1], buf, sizeof(buf), &eof), 0);
    assert_true(eof);
    close(sv[1]);
    close(sv2[1]);
}

/* pe_loop_run_into flushes too (the asyncio loop's wait). */
static void test_run_into_flushes(void **state)
{
    pe_loop *l = new_loop(state, 8, 65536);
    struct pe_loop_bevent ev[8];
    static char bbuf[1 << 16];
    char buf[64];
    int sv[2], eof;
    pe_handle h = pair(l, sv, 0);

    assert_int_equal(pe_loop_write(l, h, "into", 4), 4);
    assert_true(pe_loop_run_into(l, NULL, 0, ev, 8, 0, bbuf,
                                 sizeof(bbuf)) >= 0);
    assert_int_equal(drain_peer(sv[1], buf, sizeof(buf), &eof), 4);
    assert_memory_equal(buf, "into", 4);
    assert_int_equal(pe_loop_close(l, h, PE_CLOSE_NOW), 0);
    pe_loop_free(l);
    close(sv[1]);
}

#define T(f) cmocka_unit_test(f)

int main(void)
{
    struct CMUnitTest per_mode[] = {
        T(test_deferred_until_run),
        T(test_off_sends_now),
        T(test_order_mixed),
        T(test_close_flush),
        T(test_abort_drops_slot_reused),
        T(test_shutdown_after_deferred),
#ifdef __linux__
        T(test_sendfile_busy_then_drained),
#endif
        T(test_flush_failure_closes),
        T(test_free_sends_deferred),
        T(test_run_into_flushes),
    };

    return run_per_mode("defer-", per_mode,
                        sizeof(per_mode) / sizeof(per_mode[0]));
}

/*
 * test_poller.c - one backend contract suite, run against every backend
 * compiled in (pe_backends()), plus a few backend-specific checks.
 *
 * Every test is bounded in time: waits that expect something use a finite
 * timeout, and the only infinite wait (EINTR) has a failsafe thread.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/time.h>
#ifdef PE_HAVE_EPOLL
#include <sys/epoll.h>
#endif

#include "pyepoll.h"
#include "support.h"

#define FLAGS (PE_EDGE | PE_ONESHOT | PE_EXCLUSIVE)

static const char *g_backend;       /* the backend the current group tests */
static unsigned g_flags;            /* and the flags its pollers are made with */

struct fx {
    pe_poller *p;
    int a, b;                       /* a socketpair; a is usually watched */
};

static int is(const char *name)
{
    return strcmp(g_backend, name) == 0;
}

static void pair(int *a, int *b)
{
    int sv[2];

    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    nonblock(sv[0]);
    nonblock(sv[1]);
    *a = sv[0];
    *b = sv[1];
}

static void put(int fd)
{
    assert_int_equal(write(fd, "x", 1), 1);
}

static void fill(int fd)
{
    static char buf[65536];

    while (write(fd, buf, sizeof(buf)) > 0)
        ;
    assert_int_equal(errno, EAGAIN);
}

static void drain(int fd)
{
    static char buf[65536];

    while (read(fd, buf, sizeof(buf)) > 0)
        ;
}

/* Events reported for fd in one wait (0: none).  Checks the contract on the
 * whole batch: one event per fd, no flag bits, nothing empty. */
static uint32_t events_for(pe_poller *p, int fd, int ms)
{
    struct pe_event ev[64];
    uint32_t got = 0;
    int n = pe_poller_wait(p, ev, 64, ms), i, seen = 0;

    assert_true(n >= 0);
    for (i = 0; i < n; i++) {
        assert_int_equal(ev[i].events & FLAGS, 0);
        assert_int_not_equal(ev[i].events, 0);
        if (ev[i].fd == fd) {
            assert_int_equal(seen, 0);
            seen = 1;
            got = ev[i].events;
        }
    }
    return got;
}

/* Expect exactly `want` for fd: wait a while for something, not at all for
 * nothing (readiness on a socketpair is immediate). */
static void expect(pe_poller *p, int fd, uint32_t want)
{
    assert_int_equal(events_for(p, fd, want ? 1000 : 0), want);
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    int err = 1;

    assert_non_null(f);
    f->p = pe_poller_new(g_backend, g_flags, &err);
    assert_non_null(f->p);
    assert_int_equal(err, 0);
    assert_string_equal(pe_poller_backend(f->p), g_backend);
    pair(&f->a, &f->b);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;

    pe_poller_free(f->p);
    if (f->a >= 0)
        close(f->a);
    if (f->b >= 0)
        close(f->b);
    free(f);
    return 0;
}

static int raise_nofile(rlim_t want)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return -1;
    if (rl.rlim_cur >= want)
        return 0;
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want) {
        print_message("RLIMIT_NOFILE hard limit %llu < %llu needed\n",
                      (unsigned long long)rl.rlim_max,
                      (unsigned long long)want);
        return -1;
    }
    rl.rlim_cur = want;
    return setrlimit(RLIMIT_NOFILE, &rl);
}

/* --------------------------------------------------------- readiness */

static void test_level_repeats(void **state)
{
    struct fx *f = *state;
    int i;

    assert_int_equal(pe_poller_register(f->p, f->a, PE_READ), 0);
    expect(f->p, f->a, 0);
    put(f->b);
    for (i = 0; i < 3; i++)
        expect(f->p, f->a, PE_READ);
    drain(f->a);
    expect(f->p, f->a, 0);
}

static void test_edge_once(void **state)
{
    struct fx *f = *state;

    if (!(pe_poller_caps(f->p) & PE_CAP_EDGE)) {
        assert_int_equal(pe_poller_register(f->p, f->a, PE_READ | PE_EDGE),
                         -EOPNOTSUPP);
        assert_int_equal(pe_poller_count(f->p), 0);
        return;
    }
    assert_int_equal(pe_poller_register(f->p, f->a, PE_READ | PE_EDGE), 0);
    put(f->b);
    expect(f->p, f->a, PE_READ);
    expect(f->p, f->a, 0);          /* still readable, no new edge */
    put(f->b);
    expect(f->p, f->a, PE_READ);
    expect(f->p, f->a, 0);
}

static void test_oneshot_until_rearmed(void **state)
{
    struct fx *f = *state;
    uint32_t ev = PE_READ | PE_ONESHOT;

    if (!(pe_poller_caps(f->p) & PE_CAP_ONESHOT)) {
        assert_int_equal(pe_poller_register(f->p, f->a, ev), -EOPNOTSUPP);
        assert_int_equal(pe_poller_count(f->p), 0);
        return;
    }
    assert_int_equal(pe_poller_register(f->p, f->a, ev), 0);
    put(f->b);
    expect(f->p, f->a, PE_READ);
    expect(f->p, f->a, 0);
    put(f->b);
    expect(f->p, f->a, 0);          /* disarmed: new data does not report */
    assert_int_equal(pe_poller_count(f->p), 1);
    assert_int_equal(pe_poller_register(f->p, f->a, ev), -EEXIST);
    assert_int_equal(pe_poller_modify(f->p, f->a, ev), 0);
    expect(f->p, f->a, PE_READ);
    expect(f->p, f->a, 0);
}

static void test_write_ready(void **state)
{
    struct fx *f = *state;

    assert_int_equal(pe_poller_register(f->p, f->a, PE_WRITE), 0);
    expect(f->p, f->a, PE_WRITE);
    fill(f->a);
    expect(f->p, f->a, 0);
    drain(f->b);
    expect(f->p, f->a, PE_WRITE);
}

static void test_hup_after_peer_close(void **state)
{
    struct fx *f = *state;
    uint32_t rdhup = (pe_poller_caps(f->p) & PE_CAP_RDHUP) ? PE_RDHUP : 0;
    uint32_t ev;

    assert_int_equal(pe_poller_register(f->p, f->a, PE_READ | rdhup), 0);
    expect(f->p, f->a, 0);
    close(f->b);
    f->b = -1;
    ev = events_for(f->p, f->a, 1000);
    assert_true(ev & PE_READ);
    assert_false(ev & PE_WRITE);    /* not asked for */
    if (rdhup)
        assert_true(ev & PE_RDHUP);
    if (is("epoll") || is("poll"))
        assert_true(ev & PE_HUP);
}

static void test_rdhup_after_peer_shutdown(void **state)
{
    struct fx *f = *state;
    uint32_t rdhup = (pe_poller_caps(f->p) & PE_CAP_RDHUP) ? PE_RDHUP : 0;
    uint32_t ev;

    assert_int_equal(pe_poller_register(f->p, f->a, PE_READ | rdhup), 0);
    assert_int_equal(shutdown(f->b, SHUT_WR), 0);
    ev = events_for(f->p, f->a, 1000);
    assert_int_equal(ev, PE_READ | rdhup);  /* half-closed: no HUP yet */
}

static void test_hup_reported_without_interest(void **state)
{
    struct fx *f = *state;
    uint32_t ev;

    /* select has no hangup condition; kqueue has no filter to carry one
     * when neither READ nor WRITE is asked for. */
    if (is("select") || is("kqueue"))
        skip();
    assert_int_equal(pe_poller_register(f->p, f->a, 0), 0);
    assert_int_equal(pe_poller_count(f->p), 1);
    expect(f->p, f->a, 0);
    close(f->b);
    f->b = -1;
    ev = events_for(f->p, f->a, 1000);
    assert_true(ev & PE_HUP);
    assert_false(ev & (PE_READ | PE_WRITE));
}

static void test_modify_changes_interest(void **state)
{
    struct fx *f = *state;

    assert_int_equal(pe_poller_register(f->p, f->a, PE_READ | PE_WRITE), 0);
    expect(f->p, f->a, PE_WRITE);
    assert_int_equal(pe_poller_modify(f->p, f->a, PE_READ), 0);
    expect(f->p, f->a, 0);
    put(f->b);
    expect(f->p, f->a, PE_READ);
    assert_int_equal(pe_poller_modify(f->p, f->a, PE_WRITE), 0);
    expect(f->p, f->a, PE_WRITE);   /* readable, but no longer asked */
    assert_int_equal(pe_poller_modify(f->p, f->a, PE_READ | PE_WRITE), 0);
    expect(f->p, f->a, PE_READ | PE_WRITE);
    assert_int_equal(pe_poller_count(f->p), 1);
}

static void test_unregister_stops_events(void **state)
{
    struct fx *f = *state;
    struct pe_event ev[4];

    assert_int_equal(pe_poller_register(f->p, f->a, PE_READ), 0);
    put(f->b);
    expect(f->p, f->a, PE_READ);
    assert_int_equal(pe_poller_unregister(f->p, f->a), 0);
    assert_int_equal(pe_poller_count(f->p), 0);
    assert_int_equal(pe_poller_wait(f->p, ev, 4, 0), 0);
    assert_int_equal(pe_poller_unregister(f->p, f->a), -ENOENT);
    assert_int_equal(pe_poller_register(f->p, f->a, PE_READ), 0);
    expect(f->p, f->a, PE_READ);
}

/* A registered fd is closed while its file lives on (dup), and its number
 * is reused by a new socket.  epoll keeps the old registration alive and
 * reporting under the same number: only the new one's events may come. */
static void test_reused_fd_gets_no_stale_event(void **state)
{
    struct fx *f = *state;
    int num = f->a, keep, c, d, rc;

    assert_int_equal(pe_poller_register(f->p, f->a, PE_READ), 0);
    put(f->b);
    expect(f->p, num, PE_READ);
    keep = dup(f->a);
    assert_true(keep >= 0);
    pair(&c, &d);                   /* before the close, or c takes num */
    close(f->a);
    assert_int_equal(dup2(c, num), num);
    close(c);
    rc = pe_poller_register(f->p, num, PE_READ | PE_WRITE);
    if (is("epoll") || is("kqueue")) {
        /* The kernel, not the table, decides: epoll's add, or kqueue's
         * answer that the close took the old knotes along. */
        assert_int_equal(rc, 0);
    } else {
        assert_int_equal(rc, -EEXIST);  /* the table is the authority */
        assert_int_equal(pe_poller_unregister(f->p, num), 0);
        assert_int_equal(pe_poller_register(f->p, num, PE_READ | PE_WRITE), 0);
    }
    assert_int_equal(pe_poller_count(f->p), 1);
#ifdef PE_TEST_OVER_LIBKQUEUE
    if (is("kqueue")) {
        close(keep);
        close(d);
        print_message("libkqueue: the old file's READ may still come "
                      "(tests/libkqueue/repro_close_keeps_knote.c)\n");
        skip();
    }
#endif
    expect(f->p, num, PE_WRITE);    /* the old file's READ is stale */
    expect(f->p, num, PE_WRITE);
    put(d);
    expect(f->p, num, PE_READ | PE_WRITE);
    close(keep);
    close(d);
}

/* What a close does to a registration.  Closing a dup leaves the original
 * registered (a kqueue knote belongs to the fd number; epoll's to the
 * file and number), so registering it again is EEXIST everywhere.
 * Closing the registered number itself takes the kernel's registration
 * along: modify then fails as epoll_ctl does (EBADF) and the table forgets
 * it. */
static void test_close_of_dup_or_registered_fd(void **state)
{
    struct fx *f = *state;
    int keep = dup(f->a);

    assert_true(keep >= 0);
    assert_int_equal(pe_poller_register(f->p, f->a, PE_READ), 0);
    assert_int_equal(close(keep), 0);
    assert_int_equal(pe_poller_register(f->p, f->a, PE_READ), -EEXIST);
    assert_int_equal(pe_poller_modify(f->p, f->a, PE_READ | PE_WRITE), 0);
    expect(f->p, f->a, PE_WRITE);
    if (!is("epoll") && !is("kqueue"))
        return;                     /* user-space tables: see test_errors */
    assert_int_equal(close(f->a), 0);
    assert_int_equal(pe_poller_modify(f->p, f->a, PE_READ), -EBADF);
    assert_int_equal(pe_poller_count(f->p), 0);
    assert_int_equal(pe_poller_register(f->p, f->a, PE_READ), -EBADF);
    f->a = -1;
}

/* --------------------------------------------------------------- errors */

static void test_errors(void **state)
{
    struct fx *f = *state;
    struct pe_event ev[2];

    assert_int_equal(pe_poller_register(f->p, f->a, PE_READ), 0);
    assert_int_equal(pe_poller_register(f->p, f->a, PE_READ), -EEXIST);
    assert_int_equal(pe_poller_modify(f->p, f->b, PE_READ), -ENOENT);
    assert_int_equal(pe_poller_unregister(f->p, f->b), -ENOENT);
    assert_int_equal(pe_poller_register(f->p, -1, PE_READ), -EBADF);
    assert_int_equal(pe_poller_modify(f->p, -1, PE_READ), -EBADF);
    assert_int_equal(pe_poller_unregister(f->p, -1), -EBADF);
    assert_int_equal(pe_poller_register(f->p, f->b, 0x100), -EINVAL);
    assert_int_equal(pe_poller_modify(f->p, f->a, PE_READ | 0x100), -EINVAL);
    assert_int_equal(pe_poller_wait(f->p, ev, 0, 0), -EINVAL);
    assert_int_equal(pe_poller_wait(f->p, ev, -1, 0), -EINVAL);
    if (pe_poller_caps(f->p) & PE_CAP_EXCLUSIVE) {
        assert_int_equal(pe_poller_register(f->p, f->b, PE_READ | PE_EXCLUSIVE), 0);
        /* epoll refuses EXCLUSIVE on modify; that is passed on. */
        assert_int_equal(pe_poller_modify(f->p, f->b, PE_READ | PE_EXCLUSIVE),
                         -EINVAL);
        assert_int_equal(pe_poller_unregister(f->p, f->b), 0);
    } else {
        assert_int_equal(pe_poller_register(f->p, f->b, PE_READ | PE_EXCLUSIVE),
                         -EOPNOTSUPP);
    }
    assert_int_equal(pe_poller_count(f->p), 1);
    expect(f->p, f->a, 0);          /* nothing above disturbed the table */
}

/* A number that names no open file: the kernel-object backends refuse it;
 * poll and select take it as their system calls (and CPython) do, poll
 * reporting it as an error, select failing every wait until it goes. */
static void test_closed_fd_number(void **state)
{
    struct fx *f = *state;
    struct pe_event ev[4];
    int gone = dup(f->b), rc;

    close(gone);
    rc = pe_poller_register(f->p, gone, PE_READ);
    if (is("poll")) {
        assert_int_equal(rc, 0);
        expect(f->p, gone, PE_ERR);
    } else if (is("select")) {
        assert_int_equal(rc, 0);
        assert_int_equal(pe_poller_wait(f->p, ev, 4, 0), -EBADF);
    } else {
        assert_int_equal(rc, -EBADF);
        assert_int_equal(pe_poller_count(f->p), 0);
        return;
    }
    assert_int_equal(pe_poller_unregister(f->p, gone), 0);
    assert_int_equal(pe_poller_wait(f->p, ev, 4, 0), 0);
    /* A number beyond any descriptor is refused rather than allocated. */
    assert_int_equal(pe_poller_register(f->p, 0x7ffffff0, PE_READ),
                     is("select") ? -EINVAL : -EBADF);
}

static void test_regular_file(void **state)
{
    struct fx *f = *state;
    FILE *tmp = tmpfile();
    int rc;

    assert_non_null(tmp);
    rc = pe_poller_register(f->p, fileno(tmp), PE_READ);
    if (is("epoll")) {
        assert_int_equal(rc, -EPERM);
        assert_int_equal(pe_poller_count(f->p), 0);
    } else if (is("kqueue")) {
        /* kqueue(2): a file is readable while its offset is before the
         * end, so an empty one is not.  (Registered again after the write:
         * libkqueue, unlike the kernels, never reports a file that grows
         * after it was seen at its end: tests/libkqueue/repro_file_growth.c.) */
        assert_int_equal(rc, 0);
        expect(f->p, fileno(tmp), 0);
        assert_int_equal(pe_poller_unregister(f->p, fileno(tmp)), 0);
        assert_int_equal(pwrite(fileno(tmp), "x", 1, 0), 1);
        assert_int_equal(pe_poller_register(f->p, fileno(tmp), PE_READ), 0);
        expect(f->p, fileno(tmp), PE_READ);
        assert_int_equal(pe_poller_unregister(f->p, fileno(tmp)), 0);
    } else {
        assert_int_equal(rc, 0);    /* always ready where it is allowed */
        expect(f->p, fileno(tmp), PE_READ);
        assert_int_equal(pe_poller_unregister(f->p, fileno(tmp)), 0);
    }
    fclose(tmp);
}

static void test_fd_beyond_fd_setsize(void **state)
{
    struct fx *f = *state;
    int big = FD_SETSIZE + 3;

    if (raise_nofile((rlim_t)big + 1) < 0) {
        print_message("cannot open fd %d\n", big);
        skip();
    }
    assert_int_equal(dup2(f->a, big), big);
    if (is("select")) {
        assert_int_equal(pe_poller_register(f->p, big, PE_READ), -EINVAL);
        assert_int_equal(pe_poller_count(f->p), 0);
    } else {
        assert_int_equal(pe_poller_register(f->p, big, PE_READ), 0);
        put(f->b);
        expect(f->p, big, PE_READ);
    }
    close(big);
}

static void test_use_after_close(void **state)
{
    struct fx *f = *state;
    struct pe_event ev[2];

    assert_int_equal(pe_poller_register(f->p, f->a, PE_READ), 0);
    assert_int_equal(pe_poller_close(f->p), 0);
    assert_int_equal(pe_poller_close(f->p), 0);
    assert_int_equal(pe_poller_fileno(f->p), -1);
    assert_int_equal(pe_poller_register(f->p, f->b, PE_READ), -EBADF);
    assert_int_equal(pe_poller_modify(f->p, f->a, PE_READ), -EBADF);
    assert_int_equal(pe_poller_unregister(f->p, f->a), -EBADF);
    assert_int_equal(pe_poller_wait(f->p, ev, 2, 0), -EBADF);
    assert_int_equal(pe_poller_count(f->p), -EBADF);
    assert_string_equal(pe_poller_backend(f->p), g_backend);
}

/* ------------------------------------------------------------- waiting */

static void test_timeouts(void **state)
{
    struct fx *f = *state;
    struct pe_event ev[4];
    uint64_t t0;

    t0 = now_ms();
    assert_int_equal(pe_poller_wait(f->p, ev, 4, 0), 0);
    assert_true(now_ms() - t0 < 100);
    assert_int_equal(pe_poller_register(f->p, f->a, PE_READ), 0);
    t0 = now_ms();
    assert_int_equal(pe_poller_wait(f->p, ev, 4, 0), 0);
    assert_true(now_ms() - t0 < 100);
    t0 = now_ms();
    assert_int_equal(pe_poller_wait(f->p, ev, 4, 50), 0);
    assert_true(now_ms() - t0 >= 45);
    assert_true(now_ms() - t0 < 2000);
}

/* A full batch is never a lost event: 100 ready fds, 7 at a time, all
 * reported within ceil(100 / 7) calls (the kernel's or our rotation). */
static void test_small_batches_reach_every_fd(void **state)
{
    struct fx *f = *state;
    enum { N = 100, MAX = 7, CALLS = (N + MAX - 1) / MAX };
    int a[N], b[N], seen[N] = {0}, nseen = 0, calls = 0, i, j, k, n;
    struct pe_event ev[MAX];

    for (i = 0; i < N; i++) {
        pair(&a[i], &b[i]);
        put(b[i]);
        assert_int_equal(pe_poller_register(f->p, a[i], PE_READ), 0);
    }
    while (nseen < N && calls < 4 * CALLS) {
        n = pe_poller_wait(f->p, ev, MAX, 1000);
        calls++;
        assert_true(n > 0 && n <= MAX);
        for (j = 0; j < n; j++) {
            assert_int_equal(ev[j].events, PE_READ);
            for (k = 0; k < j; k++)
                assert_int_not_equal(ev[k].fd, ev[j].fd);
            for (k = 0; k < N && a[k] != ev[j].fd; k++)
                ;
            assert_true(k < N);
            nseen += !seen[k];
            seen[k] = 1;
        }
    }
    assert_int_equal(nseen, N);
    assert_true(calls <= CALLS);
    for (i = 0; i < N; i++) {
        close(a[i]);
        close(b[i]);
    }
}

static void test_ten_thousand_fds(void **state)
{
    struct fx *f = *state;
    enum { PAIRS = 5000, READY_EVERY = 50 };
    int *fds, i, n, ready = 0;
    struct pe_event *ev;

    if (is("select")) {
        print_message("select: fds beyond FD_SETSIZE (%d) are refused\n",
                      FD_SETSIZE);
        skip();
    }
    if (raise_nofile(2 * PAIRS + 64) < 0)
        skip();
    fds = malloc(2 * PAIRS * sizeof(*fds));
    ev = malloc(2 * PAIRS * sizeof(*ev));
    assert_non_null(fds);
    assert_non_null(ev);
    for (i = 0; i < PAIRS; i++) {
        pair(&fds[2 * i], &fds[2 * i + 1]);
        assert_int_equal(pe_poller_register(f->p, fds[2 * i], PE_READ), 0);
        assert_int_equal(pe_poller_register(f->p, fds[2 * i + 1], PE_READ), 0);
    }
    assert_int_equal(pe_poller_count(f->p), 2 * PAIRS);
    for (i = 0; i < PAIRS; i += READY_EVERY, ready++)
        put(fds[2 * i + 1]);
    n = pe_poller_wait(f->p, ev, 2 * PAIRS, 1000);
    assert_int_equal(n, ready);
    for (i = 0; i < n; i++) {
        int k;

        for (k = 0; k < 2 * PAIRS && fds[k] != ev[i].fd; k++)
            ;
        assert_true(k < 2 * PAIRS && k % (2 * READY_EVERY) == 0);
        assert_int_equal(ev[i].events, PE_READ);
    }
    for (i = 0; i < 2 * PAIRS; i++) {
        assert_int_equal(pe_poller_unregister(f->p, fds[i]), 0);
        close(fds[i]);
    }
    assert_int_equal(pe_poller_count(f->p), 0);
    free(fds);
    free(ev);
}

/* ------------------------------------------------------ signals, threads */

static void on_alarm(int sig)
{
    (void)sig;
}

struct failsafe {
    int stop_r, wake_w;
    pthread_t t;
};

/* Makes a stuck wait return after 3 s instead of hanging the suite. */
static void *failsafe_main(void *arg)
{
    struct failsafe *fs = arg;
    struct pollfd q = {fs->stop_r, POLLIN, 0};

    if (poll(&q, 1, 3000) == 0)
        put(fs->wake_w);
    return NULL;
}

static void test_signal_interrupts_infinite_wait(void **state)
{
    struct fx *f = *state;
    struct sigaction sa, old;
    struct itimerval it = {{0, 0}, {0, 50000}}, off = {{0, 0}, {0, 0}};
    struct failsafe fs;
    struct pe_event ev[4];
    sigset_t alrm, prev;
    int stop[2], rc;
    uint64_t t0;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_alarm;       /* no SA_RESTART */
    sigemptyset(&sa.sa_mask);
    assert_int_equal(sigaction(SIGALRM, &sa, &old), 0);
    assert_int_equal(pipe(stop), 0);
    fs.stop_r = stop[0];
    fs.wake_w = f->b;
    assert_int_equal(pe_poller_register(f->p, f->a, PE_READ), 0);
    /* The signal must reach this thread, not the failsafe. */
    sigemptyset(&alrm);
    sigaddset(&alrm, SIGALRM);
    pthread_sigmask(SIG_BLOCK, &alrm, &prev);
    assert_int_equal(pthread_create(&fs.t, NULL, failsafe_main, &fs), 0);
    pthread_sigmask(SIG_SETMASK, &prev, NULL);
    assert_int_equal(setitimer(ITIMER_REAL, &it, NULL), 0);
    t0 = now_ms();
    rc = pe_poller_wait(f->p, ev, 4, -1);
    setitimer(ITIMER_REAL, &off, NULL);
    put(stop[1]);
    pthread_join(fs.t, NULL);
    sigaction(SIGALRM, &old, NULL);
    close(stop[0]);
    close(stop[1]);
    assert_int_equal(rc, -EINTR);
    assert_true(now_ms() - t0 < 2500);
    /* The poller is still fine after the interruption. */
    put(f->b);
    expect(f->p, f->a, PE_READ);
}

struct waiter {
    pe_poller *p;
    int timeout_ms;
    int rc;
    struct pe_event ev[8];
    pthread_t t;
};

static void *waiter_main(void *arg)
{
    struct waiter *w = arg;

    w->rc = pe_poller_wait(w->p, w->ev, 8, w->timeout_ms);
    return NULL;
}

/* While one thread is blocked in wait, another registers (never blocked
 * behind the kernel wait) and waits too: the kernel-object backends
 * (epoll, kqueue) allow concurrent waits, poll and select refuse them with
 * -EBUSY. */
static void test_other_thread_while_waiting(void **state)
{
    struct fx *f = *state;
    struct waiter w = {f->p, 3000, 1, {{0, 0}}, 0};
    struct pe_event ev[4];
    int c, d, rc;
    uint64_t t0;

    pair(&c, &d);
    assert_int_equal(pe_poller_register(f->p, f->a, PE_READ), 0);
    assert_int_equal(pthread_create(&w.t, NULL, waiter_main, &w), 0);
    sleep_ms(100);
    t0 = now_ms();
    assert_int_equal(pe_poller_register(f->p, c, PE_READ), 0);
    rc = pe_poller_wait(f->p, ev, 4, 0);
    assert_true(now_ms() - t0 < 500);
    assert_int_equal(rc, is("poll") || is("select") ? -EBUSY : 0);
    put(f->b);
    pthread_join(w.t, NULL);
    assert_int_equal(w.rc, 1);
    assert_int_equal(w.ev[0].fd, f->a);
    assert_int_equal(w.ev[0].events, PE_READ);
    put(d);
    expect(f->p, c, PE_READ);
    close(c);
    close(d);
}

static void test_close_while_waiting(void **state)
{
    struct fx *f = *state;
    struct waiter w = {f->p, 3000, 1, {{0, 0}}, 0};

    assert_int_equal(pe_poller_register(f->p, f->a, PE_READ), 0);
    assert_int_equal(pthread_create(&w.t, NULL, waiter_main, &w), 0);
    sleep_ms(100);
    assert_int_equal(pe_poller_close(f->p), 0);
    put(f->b);                      /* wakes the waiter where it still waits */
    pthread_join(w.t, NULL);
    assert_int_equal(w.rc, -EBADF);
}

/* ------------------------------------------------------------ waiters */

static struct pe_waiter *new_waiter(pe_poller *p, int max)
{
    struct pe_waiter *w = calloc(1, sizeof(*w) + max * sizeof(w->out[0]));

    assert_non_null(w);
    w->poller = p;
    w->maxevents = max;
    return w;
}

/* One event comes back in the result: PE_READ alone as READ_BASE + fd,
 * other events below -4095 with fd and events recoverable; the waiter is
 * free again; nothing ready is 0. */
static void test_waiter_one_event_in_result(void **state)
{
    struct fx *f = *state;
    struct pe_waiter *w = new_waiter(f->p, 8);
    int r, code;

    assert_int_equal(pe_poller_register(f->p, f->a, PE_READ | PE_WRITE), 0);
    assert_int_equal(pe_poller_modify(f->p, f->a, PE_READ), 0);
    assert_int_equal(pe_waiter_poll(w), 0);
    put(f->b);
    r = pe_waiter_poll(w);
    assert_int_equal(r, PE_WAIT_READ_BASE + f->a);
    assert_int_equal(w->busy, 0);
    /* The same from the blocking and the timed entry points. */
    assert_int_equal(pe_waiter_block(w), r);
    w->timeout_ms = 1000;
    assert_int_equal(pe_waiter_wait(w), r);
    assert_int_equal(pe_poller_modify(f->p, f->a, PE_READ | PE_WRITE), 0);
    r = pe_waiter_poll(w);
    assert_true(r < -4095);
    code = -r - PE_WAIT_ONE_BASE;
    assert_int_equal(code >> 14, f->a);
    assert_int_equal(code & 0x3fff, PE_READ | PE_WRITE);
    assert_int_equal(w->busy, 0);
    free(w);
}

/* Several events land in out and keep the waiter claimed until released:
 * a second wait on it meanwhile gets -EBUSY at once. */
static void test_waiter_claimed_while_events_are_read(void **state)
{
    struct fx *f = *state;
    struct pe_waiter *w = new_waiter(f->p, 8);
    int got = 0, i, r;

    assert_int_equal(pe_poller_register(f->p, f->a, PE_READ), 0);
    assert_int_equal(pe_poller_register(f->p, f->b, PE_WRITE), 0);
    put(f->b);
    assert_int_equal(pe_waiter_poll(w), 2);
    for (i = 0; i < 2; i++)
        got |= w->out[i].fd == f->a && w->out[i].events == PE_READ ? 1 :
               w->out[i].fd == f->b && w->out[i].events == PE_WRITE ? 2 : 4;
    assert_int_equal(got, 3);
    assert_int_equal(w->busy, 1);
    assert_int_equal(w->all_read, 0);        /* one of them is WRITE */
    assert_int_equal(pe_waiter_poll(w), -EBUSY);
    assert_int_equal(pe_waiter_block(w), -EBUSY);    /* never blocks */
    pe_waiter_release(w);
    assert_int_equal(pe_poller_modify(f->p, f->b, PE_READ), 0);
    put(f->a);                               /* both readable now */
    assert_int_equal(pe_waiter_poll(w), 2);
    assert_int_equal(w->all_read, 1);
    pe_waiter_release(w);
    /* maxevents bounds the batch. */
    w->maxevents = 1;
    r = pe_waiter_poll(w);
    assert_true(r == PE_WAIT_READ_BASE + f->a || r == PE_WAIT_READ_BASE + f->b);
    free(w);
}

/* pe_waiter_wait honours timeout_ms; errors come back as -errno with the
 * waiter free again. */
static void test_waiter_timeout_and_errors(void **state)
{
    struct fx *f = *state;
    struct pe_waiter *w = new_waiter(f->p, 4);
    uint64_t t0;

    w->timeout_ms = 60;
    t0 = now_ms();
    assert_int_equal(pe_waiter_wait(w), 0);
    assert_true(now_ms() - t0 >= 55);
    w->maxevents = 0;
    assert_int_equal(pe_waiter_poll(w), -EINVAL);
    assert_int_equal(w->busy, 0);
    w->maxevents = 4;
    assert_int_equal(pe_poller_close(f->p), 0);
    assert_int_equal(pe_waiter_poll(w), -EBADF);
    assert_int_equal(w->busy, 0);
    w->poller = NULL;               /* a binding's closed stand-in */
    assert_int_equal(pe_waiter_block(w), -EBADF);
    free(w);
}

struct waiter_thread {
    struct pe_waiter *w;
    int rc;
    pthread_t t;
};

static void *waiter_thread_main(void *arg)
{
    struct waiter_thread *wt = arg;

    wt->rc = pe_waiter_block(wt->w);
    return NULL;
}

/* A thread blocked on a waiter holds it: another thread's wait on the same
 * waiter returns -EBUSY at once, and on a second waiter answers (epoll,
 * kqueue) or gets the backend's -EBUSY (poll, select). */
static void test_waiter_held_by_a_blocked_thread(void **state)
{
    struct fx *f = *state;
    struct waiter_thread wt = {new_waiter(f->p, 4), 1, 0};
    struct pe_waiter *other = new_waiter(f->p, 4);
    uint64_t t0;

    assert_int_equal(pe_poller_register(f->p, f->a, PE_READ), 0);
    assert_int_equal(pthread_create(&wt.t, NULL, waiter_thread_main, &wt), 0);
    sleep_ms(100);
    t0 = now_ms();
    assert_int_equal(pe_waiter_block(wt.w), -EBUSY);
    assert_int_equal(pe_waiter_poll(other),
                     is("poll") || is("select") ? -EBUSY : 0);
    assert_true(now_ms() - t0 < 500);
    put(f->b);
    pthread_join(wt.t, NULL);
    assert_int_equal(wt.rc, PE_WAIT_READ_BASE + f->a);
    free(wt.w);
    free(other);
}

struct churn {
    pe_poller *p;
    int fds[64];                    /* readable descriptors to churn */
    int stop;                       /* atomic */
    pthread_t t;
};

/* Registers and unregisters (growing the table now and then with a high
 * dup) while the main thread waits: with epoll the waits filter without
 * the lock, racing these writers. */
static void *churn_main(void *arg)
{
    struct churn *c = arg;
    int i = 0, high = -1;

    while (!__atomic_load_n(&c->stop, __ATOMIC_ACQUIRE)) {
        int fd = c->fds[i++ % 64];

        pe_poller_register(c->p, fd, PE_READ);
        pe_poller_modify(c->p, fd, PE_READ | PE_WRITE);
        pe_poller_unregister(c->p, fd);
        if (i % 256 == 0) {
            if (high >= 0) {
                pe_poller_unregister(c->p, high);
                close(high);
            }
            high = fcntl(c->fds[0], F_DUPFD, 64 + (i / 256) % 4000);
            if (high >= 0)
                pe_poller_register(c->p, high, PE_READ);
        }
    }
    if (high >= 0) {
        pe_poller_unregister(c->p, high);
        close(high);
    }
    return NULL;
}

/* Lock-free waits (epoll) racing table writers: every event delivered is
 * for a descriptor that was registered, with bits it could have, and the
 * stable registration is never lost.  (poll and select build their kernel
 * sets under the lock; there a descriptor closed after unregister while a
 * select() runs is the kernel's EBADF, as with select.select.) */
static void test_wait_while_table_changes(void **state)
{
    struct fx *f = *state;
    struct churn c;
    struct pe_event ev[128];
    int src, dst, i, n, rounds = 0, bad = 0, stable;
    uint64_t t0 = now_ms();

    if (!is("epoll")) {
        skip();
        return;
    }
    memset(&c, 0, sizeof(c));
    c.p = f->p;
    pair(&src, &dst);
    put(dst);                       /* src readable; its dups too */
    for (i = 0; i < 64; i++)
        assert_true((c.fds[i] = dup(src)) >= 0);
    put(f->b);
    assert_int_equal(pe_poller_register(f->p, f->a, PE_READ), 0);
    assert_int_equal(pthread_create(&c.t, NULL, churn_main, &c), 0);
    /* No assert while the thread runs: a failure would free the poller
     * under it. */
    /* At least 300 ms and 20 waits: the churn thread retakes the table
     * mutex back to back, and a mutex is not fair, so on a loaded machine a
     * wait that must redo its filter under the mutex can queue for a while;
     * 30 s without 20 waits (valgrind on a busy machine is slow) is a
     * failure to make progress. */
    while ((now_ms() - t0 < 300 || rounds < 20) && now_ms() - t0 < 30000 &&
           !bad) {
        n = pe_poller_wait(f->p, ev, 128, 0);
        bad |= n < 1;
        for (i = 0, stable = 0; i < n; i++) {
            bad |= ev[i].fd < 0 || ev[i].events == 0 ||
                   (ev[i].events & ~(uint32_t)(PE_READ | PE_WRITE));
            stable |= ev[i].fd == f->a && ev[i].events == PE_READ;
        }
        bad |= !stable;
        rounds++;
    }
    __atomic_store_n(&c.stop, 1, __ATOMIC_RELEASE);
    pthread_join(c.t, NULL);
    for (i = 0; i < 64; i++)
        close(c.fds[i]);
    close(src);
    close(dst);
    assert_int_equal(bad, 0);
    assert_true(rounds >= 20);
}

/* -------------------------------------------------- creation, raw mode */

static void test_flags_and_fromfd(void **state)
{
    struct fx *f = *state;
    int err = 0;

    assert_null(pe_poller_new(g_backend, 0x80, &err));
    assert_int_equal(err, -EINVAL);
    assert_null(pe_poller_fromfd(g_backend, -1, 0, &err));
    assert_int_equal(err, -EBADF);
    if (pe_poller_caps(f->p) & PE_CAP_FILENO) {
        assert_true(pe_poller_fileno(f->p) >= 0);
        assert_true(fcntl(pe_poller_fileno(f->p), F_GETFD) & FD_CLOEXEC);
    } else {
        assert_int_equal(pe_poller_fileno(f->p), -1);
        assert_null(pe_poller_fromfd(g_backend, f->a, 0, &err));
        assert_int_equal(err, -EINVAL);
    }
    if (!is("epoll")) {
        assert_null(pe_poller_new(g_backend, PE_POLLER_RAW, &err));
        assert_int_equal(err, -EOPNOTSUPP);
    }
}

#ifdef PE_HAVE_EPOLL
static void test_epoll_raw_and_fromfd(void **state)
{
    struct fx *f = *state;
    pe_poller *raw, *plain, *nc;
    struct pe_event ev[4];
    int err = 1;

    if (!is("epoll"))
        skip();
    nc = pe_poller_new("epoll", PE_POLLER_NOCLOEXEC, &err);
    assert_non_null(nc);
    assert_false(fcntl(pe_poller_fileno(nc), F_GETFD) & FD_CLOEXEC);
    pe_poller_free(nc);

    assert_int_equal(pe_poller_register(f->p, f->a, EPOLLIN | EPOLLRDNORM),
                     -EINVAL);
    assert_int_equal(pe_poller_register(f->p, f->a, PE_READ), 0);
    put(f->b);

    /* Raw: sees what the kernel holds, registered through another object
     * included, with bits untouched. */
    raw = pe_poller_fromfd("epoll", dup(pe_poller_fileno(f->p)),
                           PE_POLLER_RAW, &err);
    assert_non_null(raw);
    assert_int_equal(pe_poller_wait(raw, ev, 4, 1000), 1);
    assert_int_equal(ev[0].fd, f->a);
    assert_int_equal(ev[0].events, EPOLLIN);
    assert_int_equal(pe_poller_register(raw, f->a, EPOLLIN), -EEXIST);
    assert_int_equal(pe_poller_modify(raw, f->a, EPOLLIN | EPOLLRDNORM), 0);
    assert_int_equal(pe_poller_wait(raw, ev, 4, 1000), 1);
    assert_int_equal(ev[0].events, EPOLLIN | EPOLLRDNORM);

    /* Not raw: registrations made elsewhere stay unknown until modified. */
    plain = pe_poller_fromfd("epoll", dup(pe_poller_fileno(f->p)), 0, &err);
    assert_non_null(plain);
    assert_int_equal(pe_poller_count(plain), 0);
    assert_int_equal(pe_poller_wait(plain, ev, 4, 0), 0);
    assert_int_equal(pe_poller_modify(plain, f->a, PE_READ | PE_WRITE), 0);
    assert_int_equal(pe_poller_count(plain), 1);
    assert_int_equal(pe_poller_wait(plain, ev, 4, 1000), 1);
    assert_int_equal(ev[0].events, PE_READ | PE_WRITE);
    assert_int_equal(pe_poller_unregister(plain, f->a), 0);
    assert_int_equal(pe_poller_unregister(f->p, f->a), -ENOENT);
    assert_int_equal(pe_poller_count(f->p), 0);   /* the kernel said so */
    pe_poller_free(plain);
    pe_poller_free(raw);
}
#endif

static void test_backend_names(void **state)
{
    const char *list = pe_backends();
    size_t n = strlen(list);
    pe_poller *p;
    int err = 1;

    (void)state;
    assert_true(n > 12);
    assert_string_equal(list + n - 12, ",poll,select");
#if defined(PE_HAVE_EPOLL)
    assert_memory_equal(list, "epoll,", 6);
#elif defined(PE_HAVE_KQUEUE)
    assert_memory_equal(list, "kqueue,", 7);
#endif
    p = pe_poller_new(NULL, 0, &err);
    assert_non_null(p);
    assert_int_equal(err, 0);
    assert_memory_equal(list, pe_poller_backend(p),
                        strlen(pe_poller_backend(p)));
    pe_poller_free(p);
    assert_null(pe_poller_new("nope", 0, &err));
    assert_int_equal(err, -ENOSYS);
#ifndef PE_HAVE_KQUEUE
    assert_null(pe_poller_new("kqueue", 0, &err));
    assert_int_equal(err, -ENOSYS);
#endif
    pe_poller_free(NULL);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
    const struct CMUnitTest general[] = {
        cmocka_unit_test(test_backend_names),
    };
/* The contract for every poller, one thread at a time. */
#define ONE_THREAD_CONTRACT                     \
        T(test_level_repeats),                  \
        T(test_edge_once),                      \
        T(test_oneshot_until_rearmed),          \
        T(test_write_ready),                    \
        T(test_hup_after_peer_close),           \
        T(test_rdhup_after_peer_shutdown),      \
        T(test_hup_reported_without_interest),  \
        T(test_modify_changes_interest),        \
        T(test_unregister_stops_events),        \
        T(test_reused_fd_gets_no_stale_event),  \
        T(test_close_of_dup_or_registered_fd),  \
        T(test_errors),                         \
        T(test_closed_fd_number),               \
        T(test_regular_file),                   \
        T(test_fd_beyond_fd_setsize),           \
        T(test_use_after_close),                \
        T(test_timeouts),                       \
        T(test_small_batches_reach_every_fd),   \
        T(test_ten_thousand_fds),               \
        T(test_waiter_one_event_in_result),     \
        T(test_waiter_claimed_while_events_are_read), \
        T(test_waiter_timeout_and_errors),      \
        T(test_flags_and_fromfd)
    const struct CMUnitTest contract[] = {
        ONE_THREAD_CONTRACT,
        /* and what other threads may do meanwhile */
        T(test_signal_interrupts_infinite_wait),
        T(test_other_thread_while_waiting),
        T(test_close_while_waiting),
        T(test_waiter_held_by_a_blocked_thread),
        T(test_wait_while_table_changes),
#ifdef PE_HAVE_EPOLL
        T(test_epoll_raw_and_fromfd),
#endif
    };
    /* The contract again on PE_POLLER_OWNED pollers (the Loop's), which
     * one thread uses at a time. */
    const struct CMUnitTest owned[] = {
        ONE_THREAD_CONTRACT,
    };
    char names[64], *name, *save = NULL, group[80];
    int fails;

    signal(SIGPIPE, SIG_IGN);
    fails = cmocka_run_group_tests_name("general", general, NULL, NULL);
    snprintf(names, sizeof(names), "%s", pe_backends());
    for (name = strtok_r(names, ",", &save); name;
         name = strtok_r(NULL, ",", &save)) {
        g_backend = name;
        g_flags = 0;
        fails += cmocka_run_group_tests_name(name, contract, NULL, NULL);
        g_flags = PE_POLLER_OWNED;
        snprintf(group, sizeof(group), "%s owned", name);
        fails += cmocka_run_group_tests_name(group, owned, NULL, NULL);
    }
    return fails ? 1 : 0;
}

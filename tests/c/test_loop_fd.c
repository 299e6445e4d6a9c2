/*
 * test_loop_fd.c - foreign descriptors and adopted sockets (loop_fd.c):
 * what the asyncio loop builds on.
 *
 * Each test runs once per mode (epoll edge and level, poll, select; modes
 * whose backend is not compiled in are skipped), over pipes, socketpairs
 * and loopback TCP, all in one thread; every wait is bounded.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "pyepoll.h"
#include "support.h"

#define DEADLINE_MS 5000
#define MAXEV 64

static pe_loop *new_loop(void **state, uint32_t max_conns)
{
    struct pe_loop_config cfg;

    mode_config(&cfg, *state);
    cfg.max_conns = max_conns;
    return new_loop_or_skip(&cfg);
}

/* One run; the events of the given kind and handle (0: any) counted. */
struct batch {
    struct pe_loop_event ev[MAXEV];
    int n;
};

static int run(pe_loop *l, struct batch *b, int timeout)
{
    b->n = pe_loop_run(l, b->ev, MAXEV, timeout);
    assert_true(b->n >= 0);
    return b->n;
}

static int count(const struct batch *b, uint32_t kind, pe_handle h)
{
    int n = 0;

    for (int i = 0; i < b->n; i++)
        n += b->ev[i].kind == kind && (!h || b->ev[i].handle == h);
    return n;
}

static const struct pe_loop_event *find(const struct batch *b, uint32_t kind,
                                        pe_handle h)
{
    for (int i = 0; i < b->n; i++)
        if (b->ev[i].kind == kind && (!h || b->ev[i].handle == h))
            return &b->ev[i];
    return NULL;
}

/* Run (bounded) until an event of kind for h comes; it is in b. */
static const struct pe_loop_event *run_until(pe_loop *l, struct batch *b,
                                             uint32_t kind, pe_handle h)
{
    uint64_t until = now_ms() + DEADLINE_MS;
    const struct pe_loop_event *e;

    for (;;) {
        run(l, b, 20);
        if ((e = find(b, kind, h)))
            return e;
        if (now_ms() > until)
            fail_msg("no event of kind %u within %d ms", kind, DEADLINE_MS);
    }
}

static int fd_open(int fd)
{
    return fcntl(fd, F_GETFD) >= 0;
}

/* ------------------------------------------------------------------ watch */

static void test_watch_pipe_read(void **state)
{
    pe_loop *l = new_loop(state, 8);
    struct batch b;
    const struct pe_loop_event *e;
    int p[2];
    char c;

    assert_int_equal(pipe(p), 0);
    assert_int_equal(pe_loop_watch(l, p[0], PE_READ), 0);
    assert_int_equal(run(l, &b, 0), 0);          /* empty: nothing */
    assert_int_equal(write(p[1], "x", 1), 1);
    e = run_until(l, &b, PE_EV_FD, (pe_handle)p[0]);
    assert_int_equal(e->arg, PE_READ);
    assert_int_equal(count(&b, PE_EV_FD, 0), 1);
    /* Level-triggered even in an edge loop: told again while unread. */
    e = run_until(l, &b, PE_EV_FD, (pe_handle)p[0]);
    assert_int_equal(e->arg, PE_READ);
    assert_int_equal(read(p[0], &c, 1), 1);
    assert_int_equal(run(l, &b, 10), 0);
    /* Forgotten: data waits unreported. */
    assert_int_equal(write(p[1], "y", 1), 1);
    assert_int_equal(pe_loop_watch(l, p[0], 0), 0);
    assert_int_equal(run(l, &b, 10), 0);
    /* Watched again, it is reported at once. */
    assert_int_equal(pe_loop_watch(l, p[0], PE_READ), 0);
    run_until(l, &b, PE_EV_FD, (pe_handle)p[0]);
    pe_loop_free(l);
    assert_true(fd_open(p[0]));                  /* never the loop's to close */
    close(p[0]);
    close(p[1]);
}

static void test_watch_modify_and_mask(void **state)
{
    pe_loop *l = new_loop(state, 8);
    struct batch b;
    const struct pe_loop_event *e;
    int sv[2];

    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    /* Writable at once, not readable. */
    assert_int_equal(pe_loop_watch(l, sv[0], PE_READ | PE_WRITE), 0);
    e = run_until(l, &b, PE_EV_FD, (pe_handle)sv[0]);
    assert_int_equal(e->arg, PE_WRITE);
    /* Narrowed to reading: the writable socket is quiet. */
    assert_int_equal(pe_loop_watch(l, sv[0], PE_READ), 0);
    assert_int_equal(run(l, &b, 10), 0);
    assert_int_equal(write(sv[1], "ab", 2), 2);
    e = run_until(l, &b, PE_EV_FD, (pe_handle)sv[0]);
    assert_int_equal(e->arg, PE_READ);
    /* Both: both reported in one event. */
    assert_int_equal(pe_loop_watch(l, sv[0], PE_READ | PE_WRITE), 0);
    e = run_until(l, &b, PE_EV_FD, (pe_handle)sv[0]);
    assert_int_equal(e->arg, PE_READ | PE_WRITE);
    /* A hangup wakes a reader even with nothing to read. */
    assert_int_equal(pe_loop_watch(l, sv[0], PE_READ), 0);
    {
        char buf[4];

        assert_int_equal(read(sv[0], buf, sizeof(buf)), 2);
    }
    close(sv[1]);
    e = run_until(l, &b, PE_EV_FD, (pe_handle)sv[0]);
    assert_int_equal(e->arg, PE_READ);
    assert_int_equal(pe_loop_watch(l, sv[0], 0), 0);
    pe_loop_free(l);
    close(sv[0]);
}

static void test_watch_refusals(void **state)
{
    pe_loop *l = new_loop(state, 8);
    struct batch b;
    const struct pe_loop_event *e;
    int port, lfd = tcp_listener(&port), cfd, sfd, p[2];

    assert_true(pe_loop_add_listener(l, lfd) >= 0);
    assert_int_equal(pe_loop_watch(l, lfd, PE_READ), -EEXIST);
    cfd = tcp_client(port, 0);
    e = run_until(l, &b, PE_EV_OPEN, 0);
    sfd = pe_loop_fileno(l, e->handle);
    assert_true(sfd >= 0);
    assert_int_equal(pe_loop_watch(l, sfd, PE_READ), -EEXIST);
    {
        pe_handle found = 0;

        assert_int_equal(pe_loop_fd_handle(l, sfd, &found), 0);
        assert_int_equal(found, e->handle);
        assert_int_equal(pe_loop_fd_handle(l, lfd, &found), -ENOENT);
        assert_int_equal(pe_loop_fd_handle(l, -1, &found), -ENOENT);
        assert_int_equal(pe_loop_fd_handle(l, 100000, &found), -ENOENT);
    }
    assert_int_equal(pe_loop_watch(l, -1, PE_READ), -EBADF);
    assert_int_equal(pipe(p), 0);
    assert_int_equal(pe_loop_watch(l, p[0], PE_READ | PE_ERR), -EINVAL);
    assert_int_equal(pe_loop_watch(l, p[0], 0), 0);  /* unknown: nothing */
    /* A watched fd cannot be listened on or adopted behind its back. */
    assert_int_equal(pe_loop_watch(l, p[0], PE_READ), 0);
    assert_int_equal(pe_loop_add_listener(l, p[0]), -EEXIST);
    pe_loop_free(l);
    close(cfd);
    close(lfd);
    close(p[0]);
    close(p[1]);
}

static void test_watch_beside_connections(void **state)
{
    pe_loop *l = new_loop(state, 8);
    struct batch b;
    const struct pe_loop_event *e;
    int port, lfd = tcp_listener(&port), cfd, p[2];
    uint64_t until = now_ms() + DEADLINE_MS;
    pe_handle h;
    int data = 0, fd = 0;

    assert_true(pe_loop_add_listener(l, lfd) >= 0);
    assert_int_equal(pipe(p), 0);
    assert_int_equal(pe_loop_watch(l, p[0], PE_READ), 0);
    cfd = tcp_client(port, 0);
    e = run_until(l, &b, PE_EV_OPEN, 0);
    h = e->handle;
    assert_int_equal(send(cfd, "hello", 5, 0), 5);
    assert_int_equal(write(p[1], "x", 1), 1);
    /* Both come from the same waits; the connection's bytes are its own. */
    while (!(data && fd) && now_ms() < until) {
        run(l, &b, 20);
        data += count(&b, PE_EV_DATA, h);
        fd += count(&b, PE_EV_FD, (pe_handle)p[0]);
    }
    assert_true(data && fd);
    {
        char buf[16];

        assert_int_equal(pe_loop_read(l, h, buf, sizeof(buf)), 5);
        assert_memory_equal(buf, "hello", 5);
    }
    pe_loop_free(l);
    close(cfd);
    close(lfd);
    close(p[0]);
    close(p[1]);
}

static void test_watch_in_run_into(void **state)
{
    pe_loop *l = new_loop(state, 8);
    struct pe_loop_bevent ev[8];
    char buf[4096];
    int p[2], n, i, got = 0;
    uint64_t until = now_ms() + DEADLINE_MS;

    assert_int_equal(pipe(p), 0);
    assert_int_equal(pe_loop_watch(l, p[1], PE_WRITE), 0);
    while (!got && now_ms() < until) {
        n = pe_loop_run_into(l, NULL, 0, ev, 8, 20, buf, sizeof(buf));
        assert_true(n >= 0);
        for (i = 0; i < n; i++)
            if (ev[i].kind == PE_EV_FD) {
                assert_int_equal(ev[i].handle, (pe_handle)p[1]);
                assert_int_equal(ev[i].arg, PE_WRITE);
                assert_int_equal(ev[i].off, 0);
                got = 1;
            }
    }
    assert_true(got);
    pe_loop_free(l);
    close(p[0]);
    close(p[1]);
}

/* A watched fd closed without being forgotten, its number then accepted:
 * the connection works and no foreign event is reported for it. */
static void test_watch_stale_number_reused(void **state)
{
    const struct mode *m = *state;
    pe_loop *l;
    struct batch b;
    const struct pe_loop_event *e;
    int port, lfd, cfd, p[2], stale;
    char buf[8];

    /* select() refuses a closed descriptor (EBADF) until it is forgotten,
     * as the stdlib's SelectSelector does. */
    if (strcmp(m->backend, "select") == 0)
        skip();
    l = new_loop(state, 8);
    lfd = tcp_listener(&port);
    assert_true(pe_loop_add_listener(l, lfd) >= 0);
    assert_int_equal(pipe(p), 0);
    stale = p[0];
    assert_int_equal(pe_loop_watch(l, stale, PE_READ), 0);
    cfd = tcp_client(port, 0);          /* connected, not yet accepted */
    close(p[0]);                     /* the lowest free number: the accept's */
    e = run_until(l, &b, PE_EV_OPEN, 0);
    if (pe_loop_fileno(l, e->handle) != stale)
        skip();                      /* the number went elsewhere */
    assert_int_equal(send(cfd, "abc", 3, 0), 3);
    run_until(l, &b, PE_EV_DATA, e->handle);
    assert_int_equal(count(&b, PE_EV_FD, 0), 0);
    assert_int_equal(pe_loop_read(l, e->handle, buf, sizeof(buf)), 3);
    /* The number is a connection's now. */
    assert_int_equal(pe_loop_watch(l, stale, PE_READ), -EEXIST);
    pe_loop_free(l);
    close(cfd);
    close(lfd);
    close(p[1]);
}

/* ------------------------------------------------------------------ adopt */

static void test_adopt_paused_keepfd(void **state)
{
    pe_loop *l = new_loop(state, 8);
    struct batch b;
    pe_handle h = 0;
    int sv[2];
    char buf[16];

    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(write(sv[1], "early", 5), 5);
    assert_int_equal(pe_loop_adopt(l, sv[0], PE_ADOPT_PAUSED | PE_ADOPT_KEEPFD,
                                   &h), 0);
    assert_true(h != 0);
    assert_true(fcntl(sv[0], F_GETFL) & O_NONBLOCK);
    /* Paused: the bytes wait. */
    run(l, &b, 20);
    assert_int_equal(count(&b, PE_EV_DATA, h), 0);
    assert_int_equal(pe_loop_resume_reading(l, h), 0);
    run_until(l, &b, PE_EV_DATA, h);
    assert_int_equal(pe_loop_read(l, h, buf, sizeof(buf)), 5);
    assert_memory_equal(buf, "early", 5);
    /* Writes go out; the queued count is what is left. */
    assert_int_equal(pe_loop_write(l, h, "pong", 4), 0);
    assert_int_equal(read(sv[1], buf, sizeof(buf)), 4);
    assert_memory_equal(buf, "pong", 4);
    /* EOF and CLOSED as for an accepted connection. */
    assert_int_equal(pe_loop_close(l, h, PE_CLOSE_NOW), 0);
    {
        pe_handle found = 0;

        assert_int_equal(pe_loop_fd_handle(l, sv[0], &found), -ENOENT);
    }
    run_until(l, &b, PE_EV_CLOSED, h);
    assert_int_equal(pe_loop_write(l, h, "x", 1), -ESTALE);
    assert_true(fd_open(sv[0]));                 /* KEEPFD: still ours */
    pe_loop_free(l);
    assert_true(fd_open(sv[0]));
    close(sv[0]);
    close(sv[1]);
}

static void test_adopt_owned_fd_closed(void **state)
{
    pe_loop *l = new_loop(state, 8);
    struct batch b;
    pe_handle h = 0;
    int sv[2];
    char c;

    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(pe_loop_adopt(l, sv[0], 0, &h), 0);
    assert_int_equal(write(sv[1], "z", 1), 1);
    run_until(l, &b, PE_EV_DATA, h);
    assert_int_equal(pe_loop_close(l, h, PE_CLOSE_NOW), 0);
    assert_false(fd_open(sv[0]));                /* the loop's to close */
    assert_int_equal(read(sv[1], &c, 1), 0);     /* the peer sees EOF */
    pe_loop_free(l);
    close(sv[1]);
}

static void test_adopt_write_queues(void **state)
{
    pe_loop *l = new_loop(state, 8);
    struct batch b;
    pe_handle h = 0;
    static char big[1 << 20];
    int sv[2], rcv = 4096;
    int64_t q;
    size_t got = 0;
    ssize_t n;
    uint64_t until = now_ms() + DEADLINE_MS;

    memset(big, 'q', sizeof(big));
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv));
    assert_int_equal(pe_loop_adopt(l, sv[0], PE_ADOPT_KEEPFD, &h), 0);
    q = pe_loop_write(l, h, big, sizeof(big));
    assert_true(q > 0 && q <= (int64_t)sizeof(big));
    /* A FLUSH close would send on a descriptor the caller may close. */
    assert_int_equal(pe_loop_close(l, h, PE_CLOSE_FLUSH), -EINVAL);
    {
        uint32_t in = 0, out = 0;

        assert_int_equal(pe_loop_buffered(l, h, &in, &out), 0);
        assert_int_equal(out, (uint32_t)q);
    }
    /* The peer reads it all; DRAINED says the queue emptied. */
    fcntl(sv[1], F_SETFL, O_NONBLOCK);
    for (;;) {
        char buf[65536];

        while ((n = read(sv[1], buf, sizeof(buf))) > 0)
            got += (size_t)n;
        run(l, &b, 5);
        if (find(&b, PE_EV_DRAINED, h))
            break;
        if (now_ms() > until)
            fail_msg("not drained: %zu bytes read", got);
    }
    while ((n = read(sv[1], (char[65536]){0}, 65536)) > 0)
        got += (size_t)n;
    assert_int_equal(got, sizeof(big));
    assert_int_equal(pe_loop_close(l, h, PE_CLOSE_FLUSH), 0);
    pe_loop_free(l);
    close(sv[0]);
    close(sv[1]);
}

static void test_adopt_refusals(void **state)
{
    pe_loop *l = new_loop(state, 1);
    pe_handle h = 0, h2 = 0;
    int sv[2], sv2[2], p[2];

    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv2), 0);
    assert_int_equal(pe_loop_adopt(l, -1, 0, &h), -EBADF);
    assert_int_equal(pe_loop_adopt(l, sv[0], 0x100, &h), -EINVAL);
    assert_int_equal(pe_loop_adopt(l, sv[0], 0, NULL), -EINVAL);
    assert_int_equal(pe_loop_adopt(l, sv[0], PE_ADOPT_KEEPFD, &h), 0);
    assert_int_equal(pe_loop_adopt(l, sv[0], PE_ADOPT_KEEPFD, &h2), -EEXIST);
    assert_int_equal(pe_loop_adopt(l, sv2[0], PE_ADOPT_KEEPFD, &h2), -ENOSPC);
    assert_int_equal(h2, 0);
    /* A watched fd adopted: the watch gives way to the connection. */
    assert_int_equal(pe_loop_close(l, h, PE_CLOSE_NOW), 0);
    assert_int_equal(pipe(p), 0);
    assert_int_equal(pe_loop_watch(l, sv2[0], PE_READ), 0);
    assert_int_equal(pe_loop_adopt(l, sv2[0], PE_ADOPT_KEEPFD, &h2), 0);
    assert_int_equal(pe_loop_watch(l, sv2[0], 0), -EEXIST);
    assert_int_equal(pe_loop_keep_fd(l, h), -ESTALE);
    pe_loop_free(l);
    close(sv[0]);
    close(sv[1]);
    close(sv2[0]);
    close(sv2[1]);
    close(p[0]);
    close(p[1]);
}

static void test_keep_fd_accepted(void **state)
{
    pe_loop *l = new_loop(state, 8);
    struct batch b;
    const struct pe_loop_event *e;
    int port, lfd = tcp_listener(&port), cfd, sfd;
    pe_handle h;

    assert_true(pe_loop_add_listener(l, lfd) >= 0);
    cfd = tcp_client(port, 0);
    e = run_until(l, &b, PE_EV_OPEN, 0);
    h = e->handle;
    sfd = pe_loop_fileno(l, h);
    assert_int_equal(pe_loop_keep_fd(l, h), 0);
    /* The peer resets: CLOSED(errno) or EOF, and the fd stays ours. */
    close(cfd);
    run_until(l, &b, PE_EV_EOF, h);
    assert_int_equal(pe_loop_close(l, h, PE_CLOSE_ABORT), 0);
    run_until(l, &b, PE_EV_CLOSED, h);
    assert_true(fd_open(sfd));
    pe_loop_free(l);
    assert_true(fd_open(sfd));
    close(sfd);
    close(lfd);
}


/* asyncio's low-water mark: DRAINED(queued) once when the queue falls to
 * the mark, then DRAINED(0) when it empties. */
static void test_notify_below(void **state)
{
    pe_loop *l = new_loop(state, 8);
    struct batch b;
    pe_handle h = 0;
    static char big[1 << 20], sink[65536];
    int sv[2], rcv = 4096, lows = 0, empty = 0;
    uint32_t low_arg = 0;
    int64_t q;
    ssize_t r;
    uint64_t until = now_ms() + DEADLINE_MS;

    memset(big, 'w', sizeof(big));
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv));
    fcntl(sv[1], F_SETFL, O_NONBLOCK);
    assert_int_equal(pe_loop_adopt(l, sv[0], PE_ADOPT_KEEPFD, &h), 0);
    q = pe_loop_write(l, h, big, sizeof(big));
    assert_true(q > 200000);
    assert_int_equal(pe_loop_notify_below(l, h, 100000), 0);
    while (!empty) {
        r = read(sv[1], sink, 8192);     /* a slow reader */
        (void)r;
        run(l, &b, 1);
        for (int i = 0; i < b.n; i++) {
            if (b.ev[i].kind != PE_EV_DRAINED || b.ev[i].handle != h)
                continue;
            if (b.ev[i].arg) {
                lows++;
                low_arg = b.ev[i].arg;
                assert_int_equal(empty, 0);
            } else {
                empty++;
            }
        }
        if (now_ms() > until)
            fail_msg("not drained");
    }
    assert_int_equal(lows, 1);           /* once */
    assert_true(low_arg <= 100000);
    assert_int_equal(empty, 1);
    assert_int_equal(pe_loop_notify_below(l, h, 10), 0);
    assert_int_equal(pe_loop_close(l, h, PE_CLOSE_NOW), 0);
    assert_int_equal(pe_loop_notify_below(l, h, 10), -ESTALE);
    pe_loop_free(l);
    close(sv[0]);
    close(sv[1]);
}

#ifdef __linux__
/* A file sent by the kernel through a full socket: -EAGAIN, then DRAINED
 * when writable, every byte once, in order; refused while bytes are
 * queued or for a descriptor sendfile cannot read. */
static void test_sendfile(void **state)
{
    pe_loop *l = new_loop(state, 8);
    struct batch b;
    pe_handle h = 0;
    char path[] = "/tmp/pe_sendfile_XXXXXX";
    static unsigned char file[1 << 21], got[1 << 21];
    int sv[2], fd, p[2], rcv = 4096, again = 0;
    int64_t off = 0, n;
    size_t have = 0;
    ssize_t r;
    uint64_t until = now_ms() + DEADLINE_MS;

    for (size_t i = 0; i < sizeof(file); i++)
        file[i] = (unsigned char)(i * 7 + (i >> 11));
    fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    assert_int_equal(write(fd, file, sizeof(file)), (ssize_t)sizeof(file));
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv));
    fcntl(sv[1], F_SETFL, O_NONBLOCK);
    assert_int_equal(pe_loop_adopt(l, sv[0], PE_ADOPT_KEEPFD, &h), 0);
    /* Queued bytes first: the file must not overtake them. */
    assert_true(pe_loop_write(l, h, file, sizeof(file)) > 0);
    assert_int_equal(pe_loop_sendfile(l, h, fd, 0, 100), -EBUSY);
    while (have < sizeof(file)) {
        if ((r = read(sv[1], got, sizeof(got))) > 0)
            have += (size_t)r;
        run(l, &b, 1);
        if (now_ms() > until)
            fail_msg("queued bytes not drained");
    }
    have = 0;
    while (off < (int64_t)sizeof(file)) {
        n = pe_loop_sendfile(l, h, fd, off, sizeof(file) - (size_t)off);
        if (n == -EAGAIN) {
            again++;
            /* Read some, then the loop must say writable. */
            while (!find(&b, PE_EV_DRAINED, h)) {
                if ((r = read(sv[1], got + have, sizeof(got) - have)) > 0)
                    have += (size_t)r;
                run(l, &b, 5);
                if (now_ms() > until)
                    fail_msg("no DRAINED after EAGAIN at %lld", (long long)off);
            }
            b.n = 0;
            continue;
        }
        assert_true(n > 0);
        off += n;
    }
    assert_true(again > 0);          /* the small buffer filled */
    assert_int_equal(pe_loop_sendfile(l, h, fd, off, 100), 0);   /* EOF */
    while (have < sizeof(file)) {
        if ((r = read(sv[1], got + have, sizeof(got) - have)) > 0)
            have += (size_t)r;
        else if (now_ms() > until)
            fail_msg("file bytes missing: %zu", have);
    }
    assert_memory_equal(got, file, sizeof(file));
    /* Not a file sendfile can read: refused, the connection stays. */
    assert_int_equal(pipe(p), 0);
    n = pe_loop_sendfile(l, h, p[0], 0, 10);
    assert_true(n == -EINVAL || n == -ESPIPE);
    assert_int_equal(pe_loop_sendfile(l, h, -1, 0, 10), -EINVAL);
    assert_int_equal(pe_loop_write(l, h, "ok", 2), 0);
    assert_int_equal(pe_loop_close(l, h, PE_CLOSE_NOW), 0);
    assert_int_equal(pe_loop_sendfile(l, h, fd, 0, 10), -ESTALE);
    pe_loop_free(l);
    close(p[0]);
    close(p[1]);
    close(fd);
    close(sv[0]);
    close(sv[1]);
}
#endif

/* ------------------------------------------------------------- watch_wake */

/* A blocked run returns (0 events) when the wake fd is written, from
 * another process here as CPython's signal handler would from another
 * thread, and reads it empty, more than one read's worth included. */
static void test_watch_wake(void **state)
{
    pe_loop *l = new_loop(state, 8);
    struct batch b;
    uint64_t t0;
    char buf[300];
    int p[2];
    pid_t pid;

    assert_int_equal(pipe(p), 0);
    assert_int_equal(fcntl(p[0], F_SETFL, O_NONBLOCK), 0);
    assert_int_equal(pe_loop_watch_wake(l, p[0], 1), 0);
    assert_int_equal(pe_loop_watch_wake(l, p[0], 1), 0);     /* again: no-op */
    assert_int_equal(run(l, &b, 0), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct timespec ts = {0, 50 * 1000 * 1000};

        nanosleep(&ts, NULL);
        memset(buf, 15, sizeof(buf));
        _exit(write(p[1], buf, sizeof(buf)) == (ssize_t)sizeof(buf) ? 0 : 1);
    }
    /* Woken, it returns with nothing to report (SIGCHLD is ignored: no
     * EINTR), long before its timeout. */
    t0 = now_ms();
    assert_int_equal(run(l, &b, DEADLINE_MS), 0);
    assert_true(now_ms() - t0 < DEADLINE_MS - 1000);
    {
        int st;

        assert_int_equal(waitpid(pid, &st, 0), pid);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    /* The 300 bytes were read (more than one read of 256). */
    assert_int_equal(read(p[0], buf, sizeof(buf)), -1);
    assert_int_equal(errno, EAGAIN);
    assert_int_equal(run(l, &b, 10), 0);
    /* Off: bytes stay unread, and no run returns early for them. */
    assert_int_equal(pe_loop_watch_wake(l, p[0], 0), 0);
    assert_int_equal(pe_loop_watch_wake(l, p[0], 0), 0);
    assert_int_equal(write(p[1], "s", 1), 1);
    t0 = now_ms();
    assert_int_equal(run(l, &b, 100), 0);
    assert_true(now_ms() - t0 >= 90);
    assert_int_equal(read(p[0], buf, sizeof(buf)), 1);
    pe_loop_free(l);
    assert_true(fd_open(p[0]));                  /* never the loop's to close */
    close(p[0]);
    close(p[1]);
}

static void test_watch_wake_refusals(void **state)
{
    pe_loop *l = new_loop(state, 8);
    int port, lfd = tcp_listener(&port), p[2], q[2];

    assert_true(pe_loop_add_listener(l, lfd) >= 0);
    assert_int_equal(pe_loop_watch_wake(l, lfd, 1), -EEXIST);
    assert_int_equal(pe_loop_watch_wake(l, -1, 1), -EBADF);
    assert_int_equal(pipe(p), 0);
    assert_int_equal(pipe(q), 0);
    assert_int_equal(pe_loop_watch(l, q[0], PE_READ), 0);
    assert_int_equal(pe_loop_watch_wake(l, q[0], 1), -EEXIST);
    assert_int_equal(pe_loop_watch_wake(l, q[0], 0), -EEXIST);
    assert_int_equal(pe_loop_watch_wake(l, p[0], 1), 0);
    assert_int_equal(pe_loop_watch(l, p[0], PE_READ), -EEXIST);
    assert_int_equal(pe_loop_watch(l, p[0], 0), -EEXIST);
    assert_int_equal(pe_loop_add_listener(l, p[0]), -EEXIST);
    pe_loop_free(l);
    close(lfd);
    close(p[0]);
    close(p[1]);
    close(q[0]);
    close(q[1]);
}

#define T(f) cmocka_unit_test(f)

int main(void)
{
    struct CMUnitTest per_mode[] = {
        T(test_watch_pipe_read),
        T(test_watch_modify_and_mask),
        T(test_watch_refusals),
        T(test_watch_beside_connections),
        T(test_watch_in_run_into),
        T(test_watch_stale_number_reused),
        T(test_adopt_paused_keepfd),
        T(test_adopt_owned_fd_closed),
        T(test_adopt_write_queues),
        T(test_adopt_refusals),
        T(test_keep_fd_accepted),
        T(test_notify_below),
        T(test_watch_wake),
        T(test_watch_wake_refusals),
#ifdef __linux__
        T(test_sendfile),
#endif
    };

    return run_per_mode("fd-", per_mode,
                        sizeof(per_mode) / sizeof(per_mode[0]));
}

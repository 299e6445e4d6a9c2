/*
 * test_loop.c - the connection loop over real loopback TCP sockets.
 *
 * Every behaviour test runs once per mode: epoll edge, epoll level, poll,
 * select (modes whose backend is not compiled in are skipped).  Clients are
 * plain non-blocking sockets driven in the same thread between runs of the
 * loop; every wait is bounded by a deadline.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "loop/loop.h"
#include "pyepoll.h"
#include "support.h"

#define DEADLINE_MS 10000

/* ----------------------------------------------------------------- helpers */

static uint64_t vclock;                   /* virtual time for timeout tests */

static uint64_t fake_clock(void *arg)
{
    (void)arg;
    return vclock;
}

static unsigned char pat(size_t i, unsigned seed)
{
    return (unsigned char)((i * 7) ^ (i >> 9) ^ seed);
}

static void fill(unsigned char *b, size_t off, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        b[i] = pat(off + i, seed);
}

static void check_pat(const unsigned char *b, size_t off, size_t n,
                      unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        if (b[i] != pat(off + i, seed))
            fail_msg("byte %zu: got %u want %u", off + i, b[i],
                     pat(off + i, seed));
}

static void rst_close(int fd)
{
    struct linger lg = { 1, 0 };

    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(fd);
}

/* Wait (bounded) until fd is readable, then recv. */
static ssize_t recv_wait(int fd, void *buf, size_t n, int ms)
{
    struct pollfd p = { fd, POLLIN, 0 };

    if (poll(&p, 1, ms) <= 0)
        return -2;
    return recv(fd, buf, n, 0);
}

/* Send the next pattern bytes (up to 8 KiB) without blocking. */
static void send_pat(int fd, size_t *sent, unsigned seed)
{
    unsigned char b[8192];
    ssize_t n;

    fill(b, *sent, sizeof(b), seed);
    n = send(fd, b, sizeof(b), 0);
    assert_true(n > 0 || (n < 0 && errno == EAGAIN));
    if (n > 0)
        *sent += (size_t)n;
}

/* ---------------------------------------------------------------- fixture */

struct env {
    pe_loop *l;
    int lfd, port, lid;
    struct pe_loop_event *ev;
    size_t nev, cap, open_seen;
};

static void base_config(struct pe_loop_config *cfg, void **state)
{
    mode_config(cfg, *state);
    cfg->max_conns = 64;
}

static void env_open(struct env *e, const struct pe_loop_config *cfg)
{
    memset(e, 0, sizeof(*e));
    e->l = new_loop_or_skip(cfg);
    e->lfd = tcp_listener(&e->port);
    e->lid = pe_loop_add_listener(e->l, e->lfd);
    assert_true(e->lid >= 0);
}

static void env_close(struct env *e)
{
    pe_loop_free(e->l);
    close(e->lfd);
    free(e->ev);
}

static int pump_max(struct env *e, int timeout, int max)
{
    int n;

    if (e->cap - e->nev < (size_t)max) {
        e->cap = (e->cap + (size_t)max) * 2;
        e->ev = realloc(e->ev, e->cap * sizeof(*e->ev));
        assert_non_null(e->ev);
    }
    n = pe_loop_run(e->l, e->ev + e->nev, max, timeout);
    assert_true(n >= 0 || n == -EINTR);
    if (n > 0)
        e->nev += (size_t)n;
    return n;
}

static int pump(struct env *e, int timeout)
{
    return pump_max(e, timeout, 256);
}

static size_t count_ev(const struct env *e, uint32_t kind, pe_handle h)
{
    size_t n = 0;

    for (size_t i = 0; i < e->nev; i++)
        n += e->ev[i].kind == kind && (!h || e->ev[i].handle == h);
    return n;
}

static const struct pe_loop_event *last_ev(const struct env *e, uint32_t kind,
                                           pe_handle h)
{
    for (size_t i = e->nev; i-- > 0;)
        if (e->ev[i].kind == kind && (!h || e->ev[i].handle == h))
            return &e->ev[i];
    return NULL;
}

#define PUMP_UNTIL(e, cond)                                            \
    do {                                                               \
        uint64_t until_ = now_ms() + DEADLINE_MS;                      \
        while (!(cond)) {                                              \
            if (now_ms() > until_)                                     \
                fail_msg("timed out waiting for: %s", #cond);          \
            pump((e), 5);                                              \
        }                                                              \
    } while (0)

/* The next OPEN not yet returned by this function. */
static pe_handle next_open(struct env *e)
{
    uint64_t until = now_ms() + DEADLINE_MS;

    for (;;) {
        for (; e->open_seen < e->nev; e->open_seen++) {
            if (e->ev[e->open_seen].kind == PE_EV_OPEN) {
                assert_int_equal(e->ev[e->open_seen].arg, e->lid);
                return e->ev[e->open_seen++].handle;
            }
        }
        if (now_ms() > until)
            fail_msg("no connection accepted");
        pump(e, 5);
    }
}

/* Internals: an idle connection must hold no buffer. */
static void assert_no_buffers(const struct env *e, pe_handle h)
{
    const struct pe_conn *c = &e->l->ct.slots[(uint32_t)h];

    assert_int_equal(c->gen, (uint32_t)(h >> 32));
    assert_null(c->in.buf);
    assert_null(c->out.buf);
}

static uint64_t syscalls(const struct env *e)
{
    struct pe_loop_stats st;

    pe_loop_get_stats(e->l, &st);
    return st.syscalls;
}

static struct pe_loop_stats stats(const struct env *e)
{
    struct pe_loop_stats st;

    pe_loop_get_stats(e->l, &st);
    return st;
}

/* One request/response through a server that echoes (in C or by the test
 * via serve_echo). */
static void serve_echo(struct env *e, pe_handle h)
{
    unsigned char buf[65536];
    int64_t n;

    while ((n = pe_loop_read(e->l, h, buf, sizeof(buf))) > 0)
        assert_int_equal(pe_loop_send(e->l, h, buf, (size_t)n), n);
}

static void roundtrip(struct env *e, int fd, pe_handle h_user)
{
    char out[100] = { 0 }, in[100];
    size_t got = 0;
    ssize_t n;

    snprintf(out, sizeof(out), "ping %d %llu", fd,
             (unsigned long long)now_ms());
    assert_int_equal(send(fd, out, sizeof(out), 0), (ssize_t)sizeof(out));
    PUMP_UNTIL(e, (h_user ? serve_echo(e, h_user) : (void)0,
                   (n = recv(fd, in + got, sizeof(in) - got, 0)) > 0
                       ? (got += (size_t)n) : 0,
                   got == sizeof(in)));
    assert_memory_equal(in, out, sizeof(out));
}

/* ------------------------------------------------------------------- echo */

static pe_handle small_buffers(struct env *e, int *cfd)
{
    int sz = 4096;
    pe_handle h;

    *cfd = tcp_client(e->port, sz);
    h = next_open(e);
    assert_int_equal(setsockopt(pe_loop_fileno(e->l, h), SOL_SOCKET,
                                SO_SNDBUF, &sz, sizeof(sz)), 0);
    return h;
}


/* Echo client `id`'s turn: send it up to `step` more bytes of its pattern
 * (`len` in all), then take back and check whatever has come.  Returns 1
 * once all `len` bytes are back. */
static int client_turn(int fd, unsigned id, size_t *sent, size_t *rcvd,
                       size_t len, size_t step)
{
    static unsigned char sbuf[16384], rbuf[16384];
    size_t chunk = len - *sent < step ? len - *sent : step;
    ssize_t n;

    assert_true(step <= sizeof(sbuf));
    if (chunk) {
        fill(sbuf, *sent, chunk, id);
        n = send(fd, sbuf, chunk, 0);
        if (n > 0)
            *sent += (size_t)n;
    }
    while ((n = recv(fd, rbuf, sizeof(rbuf), 0)) > 0) {
        check_pat(rbuf, *rcvd, (size_t)n, id);
        *rcvd += (size_t)n;
    }
    assert_true(*rcvd <= len);
    return *rcvd == len;
}

static void echo_clients(struct env *e, int user_echo)
{
    enum { NC = 6, LEN = 300000 };
    int fd[NC];
    pe_handle h[NC];
    size_t sent[NC] = { 0 }, rcvd[NC] = { 0 }, done = 0;
    uint64_t until = now_ms() + DEADLINE_MS * 2;

    for (int i = 0; i < NC; i++)
        fd[i] = tcp_client(e->port, 0);
    for (int i = 0; i < NC; i++)
        h[i] = next_open(e);
    while (done < NC) {
        assert_true(now_ms() < until);
        done = 0;
        for (int i = 0; i < NC; i++) {
            done += (size_t)client_turn(fd[i], (unsigned)i, &sent[i], &rcvd[i],
                                        LEN, 5000);
            if (user_echo)
                serve_echo(e, h[i]);
        }
        pump(e, 1);
    }
    assert_int_equal(stats(e).bytes_in, NC * LEN);
    assert_int_equal(stats(e).bytes_out, NC * LEN);
    if (!user_echo)
        assert_int_equal(count_ev(e, PE_EV_DATA, 0), 0);
    /* Client closes: EOF, the test closes, exactly one CLOSED each. */
    for (int i = 0; i < NC; i++)
        close(fd[i]);
    PUMP_UNTIL(e, count_ev(e, PE_EV_EOF, 0) == NC);
    for (int i = 0; i < NC; i++)
        assert_int_equal(pe_loop_close(e->l, h[i], PE_CLOSE_FLUSH), 0);
    PUMP_UNTIL(e, count_ev(e, PE_EV_CLOSED, 0) == NC);
    for (int i = 0; i < NC; i++)
        assert_int_equal(count_ev(e, PE_EV_CLOSED, h[i]), 1);
    assert_int_equal(stats(e).conns_open, 0);
}

static void test_echo_c(void **state)
{
    struct pe_loop_config cfg;
    struct env e;

    base_config(&cfg, state);
    cfg.echo = 1;
    env_open(&e, &cfg);
    echo_clients(&e, 0);
    env_close(&e);
}

static void test_echo_user(void **state)
{
    struct pe_loop_config cfg;
    struct env e;

    base_config(&cfg, state);
    env_open(&e, &cfg);
    echo_clients(&e, 1);
    env_close(&e);
}

/* Echo mode with a client that sends but does not read: reading stops
 * near out_high instead of buffering without bound, and resumes when the
 * client reads; every byte comes back in order. */
static void test_echo_backpressure(void **state)
{
    enum { TOTAL = 8 << 20 };
    struct pe_loop_config cfg;
    struct env e;
    static unsigned char rbuf[16384];
    size_t sent = 0, got = 0;
    uint32_t in, out, most = 0;
    uint64_t t0;
    pe_handle h;
    ssize_t n;
    int fd;

    base_config(&cfg, state);
    cfg.echo = 1;
    cfg.out_high = 64 * 1024;
    env_open(&e, &cfg);
    h = small_buffers(&e, &fd);
    /* The client's send buffer small too, so the kernel hides less.  (Not
     * the server's receive buffer: shrinking it after the handshake makes
     * the kernel drop segments and stall on retransmission.) */
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &(int){ 4096 },
                                sizeof(int)), 0);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &(int){ 1 }, sizeof(int));
    /* Fill until the loop stops reading, then keep pushing a while. */
    PUMP_UNTIL(&e, (send_pat(fd, &sent, 4),
                    pe_loop_buffered(e.l, h, &in, &out), out >= cfg.out_high));
    t0 = now_ms();
    while (now_ms() - t0 < 200) {
        send_pat(fd, &sent, 4);
        pump(&e, 1);
        pe_loop_buffered(e.l, h, &in, &out);
        if (out > most)
            most = out;
    }
    assert_true(sent < TOTAL);                  /* the client got stuck */
    assert_true(most >= cfg.out_high);
    assert_true(most <= cfg.out_high + PE_RING_MIN);
    assert_true(in == 0);
    PUMP_UNTIL(&e, ({
        while ((n = recv(fd, rbuf, sizeof(rbuf), 0)) > 0) {
            check_pat(rbuf, got, (size_t)n, 4);
            got += (size_t)n;
        }
        if (sent < TOTAL)
            send_pat(fd, &sent, 4);
        pe_loop_buffered(e.l, h, NULL, &out);
        assert_true(out <= cfg.out_high + PE_RING_MIN);
        sent >= TOTAL && got == sent;
    }));
    assert_no_buffers(&e, h);
    close(fd);
    env_close(&e);
}

/* Echo mode costs one read and one send per message: no epoll_ctl, no
 * extra read to see EAGAIN. */
static void test_echo_syscalls(void **state)
{
    enum { N = 200 };
    struct pe_loop_config cfg;
    struct env e;
    char msg[1024], in[1024];
    uint64_t s0, waits = 0;
    pe_handle h;
    int fd;

    base_config(&cfg, state);
    cfg.echo = 1;
    env_open(&e, &cfg);
    fd = tcp_client(e.port, 0);
    h = next_open(&e);
    memset(msg, 'm', sizeof(msg));
    s0 = syscalls(&e);
    for (int i = 0; i < N; i++) {
        size_t got = 0;
        ssize_t n;

        assert_int_equal(send(fd, msg, sizeof(msg), 0), sizeof(msg));
        while (got < sizeof(in)) {
            pump(&e, 1000);
            waits++;
            while ((n = recv(fd, in + got, sizeof(in) - got, 0)) > 0)
                got += (size_t)n;
        }
    }
    /* wait + read + send per message, with each extra wait counted. */
    assert_int_equal(syscalls(&e) - s0, 2 * N + waits);
    assert_no_buffers(&e, h);
    close(fd);
    env_close(&e);
}

/* ---------------------------------------------------------------- writing */


static void test_partial_writes(void **state)
{
    enum { TOTAL = 4 << 20 };
    struct pe_loop_config cfg;
    struct env e;
    unsigned char *big = malloc(TOTAL), buf[4096];
    size_t got = 0;
    ssize_t n;
    uint32_t out;
    pe_handle h;
    int fd;

    base_config(&cfg, state);
    env_open(&e, &cfg);
    h = small_buffers(&e, &fd);
    fill(big, 0, TOTAL, 3);
    /* Several sends: the first goes to the socket, the rest queue. */
    for (size_t off = 0; off < TOTAL; off += TOTAL / 8)
        assert_int_equal(pe_loop_send(e.l, h, big + off, TOTAL / 8), TOTAL / 8);
    assert_int_equal(pe_loop_buffered(e.l, h, NULL, &out), 0);
    assert_true(out > 0 && out <= TOTAL);
    /* The client reads slowly: a few KiB per run of the loop. */
    PUMP_UNTIL(&e, ((n = recv(fd, buf, sizeof(buf), 0)) > 0
                        ? (check_pat(buf, got, (size_t)n, 3), got += (size_t)n)
                        : 0,
                    got == TOTAL));
    PUMP_UNTIL(&e, count_ev(&e, PE_EV_DRAINED, h) == 1);
    assert_int_equal(count_ev(&e, PE_EV_WRITE_FULL, h), 1);
    assert_int_equal(pe_loop_buffered(e.l, h, NULL, &out), 0);
    assert_int_equal(out, 0);
    assert_no_buffers(&e, h);
    assert_int_equal(stats(&e).bytes_out, TOTAL);
    assert_true(recv(fd, buf, sizeof(buf), 0) < 0 && errno == EAGAIN);
    close(fd);
    free(big);
    env_close(&e);
}

/* Sends queued behind unsent output cost no syscall. */
static void test_coalesce(void **state)
{
    enum { BIG = 1 << 20 };
    struct pe_loop_config cfg;
    struct env e;
    unsigned char *big = malloc(BIG + 10000), buf[8192];
    size_t got = 0;
    uint64_t s0;
    ssize_t n;
    pe_handle h;
    int fd;

    base_config(&cfg, state);
    env_open(&e, &cfg);
    h = small_buffers(&e, &fd);
    fill(big, 0, BIG + 10000, 9);
    assert_int_equal(pe_loop_send(e.l, h, big, BIG), BIG);
    s0 = syscalls(&e);
    for (int i = 0; i < 10; i++)
        assert_int_equal(pe_loop_send(e.l, h, big + BIG + i * 1000, 1000), 1000);
    assert_int_equal(syscalls(&e), s0);
    PUMP_UNTIL(&e, ((n = recv(fd, buf, sizeof(buf), 0)) > 0
                        ? (check_pat(buf, got, (size_t)n, 9), got += (size_t)n)
                        : 0,
                    got == BIG + 10000));
    close(fd);
    free(big);
    env_close(&e);
}

static void test_write_full_enobufs(void **state)
{
    struct pe_loop_config cfg;
    struct env e;
    static unsigned char chunk[32768], buf[65536];
    uint32_t out, out2;
    pe_handle h;
    int fd, sends = 0;
    int64_t rc;

    base_config(&cfg, state);
    cfg.out_high = 64 * 1024;
    cfg.out_max = 256 * 1024;
    env_open(&e, &cfg);
    h = small_buffers(&e, &fd);
    for (int round = 1; round <= 2; round++) {
        while ((rc = pe_loop_send(e.l, h, chunk, sizeof(chunk))) > 0)
            assert_true(++sends < 1000);
        assert_int_equal(rc, -ENOBUFS);
        assert_int_equal(pe_loop_buffered(e.l, h, NULL, &out), 0);
        assert_true(out <= cfg.out_max && out > cfg.out_max - sizeof(chunk));
        /* All or nothing: the refused send queued nothing. */
        assert_int_equal(pe_loop_send(e.l, h, chunk, sizeof(chunk)), -ENOBUFS);
        assert_int_equal(pe_loop_buffered(e.l, h, NULL, &out2), 0);
        assert_int_equal(out2, out);
        if (out < cfg.out_max)
            assert_int_equal(pe_loop_send(e.l, h, chunk, cfg.out_max - out),
                             cfg.out_max - out);
        pump(&e, 0);
        assert_int_equal(count_ev(&e, PE_EV_WRITE_FULL, h), round);
        assert_true(last_ev(&e, PE_EV_WRITE_FULL, h)->arg > cfg.out_high);
        /* Drain it all; WRITE_FULL is re-armed by DRAINED. */
        PUMP_UNTIL(&e, (recv(fd, buf, sizeof(buf), 0),
                        count_ev(&e, PE_EV_DRAINED, h) == (size_t)round));
    }
    close(fd);
    env_close(&e);
}

static void test_peer_reset(void **state)
{
    struct pe_loop_config cfg;
    struct env e;
    static unsigned char big[1 << 20];
    const struct pe_loop_event *ev;
    pe_handle h;
    int fd;
    int64_t rc;

    base_config(&cfg, state);
    env_open(&e, &cfg);
    /* Reset while the loop is writing queued output. */
    h = small_buffers(&e, &fd);
    assert_int_equal(pe_loop_send(e.l, h, big, sizeof(big)), sizeof(big));
    pump(&e, 0);
    rst_close(fd);
    PUMP_UNTIL(&e, count_ev(&e, PE_EV_CLOSED, h) == 1);
    ev = last_ev(&e, PE_EV_CLOSED, h);
    assert_true(ev->arg == ECONNRESET || ev->arg == EPIPE);
    assert_int_equal(pe_loop_send(e.l, h, "x", 1), -ESTALE);

    /* Reset seen by a direct send: the error is returned and CLOSED with
     * the same errno follows in the next batch. */
    fd = tcp_client(e.port, 0);
    h = next_open(&e);
    rst_close(fd);
    rc = pe_loop_send(e.l, h, "x", 1);
    assert_true(rc == -ECONNRESET || rc == -EPIPE);
    assert_int_equal(pe_loop_send(e.l, h, "x", 1), -ESTALE);
    pump(&e, 0);
    assert_int_equal(count_ev(&e, PE_EV_CLOSED, h), 1);
    assert_int_equal(last_ev(&e, PE_EV_CLOSED, h)->arg, -rc);
    env_close(&e);
}

static void test_half_close(void **state)
{
    struct pe_loop_config cfg;
    struct env e;
    char buf[16];
    uint64_t s0, t0;
    size_t nev;
    pe_handle h;
    int fd;

    base_config(&cfg, state);
    env_open(&e, &cfg);
    fd = tcp_client(e.port, 0);
    h = next_open(&e);
    assert_int_equal(send(fd, "last words", 10, 0), 10);
    assert_int_equal(shutdown(fd, SHUT_WR), 0);
    PUMP_UNTIL(&e, count_ev(&e, PE_EV_EOF, h) == 1);
    assert_int_equal(count_ev(&e, PE_EV_DATA, h), 1);
    assert_int_equal(pe_loop_read(e.l, h, buf, sizeof(buf)), 10);
    assert_memory_equal(buf, "last words", 10);
    assert_no_buffers(&e, h);

    /* Nothing left to watch: runs block and report nothing (no HUP spin). */
    nev = e.nev;
    s0 = syscalls(&e);
    t0 = now_ms();
    for (int i = 0; i < 5; i++)
        assert_int_equal(pump(&e, 10), 0);
    assert_true(now_ms() - t0 >= 40);
    assert_int_equal(syscalls(&e) - s0, 5);
    assert_int_equal(e.nev, nev);

    /* The server can still send, then half-close itself. */
    assert_int_equal(pe_loop_send(e.l, h, "bye", 3), 3);
    assert_int_equal(recv_wait(fd, buf, sizeof(buf), 2000), 3);
    assert_memory_equal(buf, "bye", 3);
    assert_int_equal(pe_loop_shutdown(e.l, h), 0);
    assert_int_equal(recv_wait(fd, buf, sizeof(buf), 2000), 0);
    assert_int_equal(pe_loop_send(e.l, h, "more", 4), -EPIPE);
    assert_int_equal(count_ev(&e, PE_EV_EOF, h), 1);
    assert_int_equal(pe_loop_close(e.l, h, PE_CLOSE_FLUSH), 0);
    pump(&e, 0);
    assert_int_equal(count_ev(&e, PE_EV_CLOSED, h), 1);
    assert_int_equal(last_ev(&e, PE_EV_CLOSED, h)->arg, 0);
    close(fd);

    /* EOF with nothing read: the buffer reserved for the read is freed. */
    fd = tcp_client(e.port, 0);
    h = next_open(&e);
    assert_int_equal(shutdown(fd, SHUT_WR), 0);
    PUMP_UNTIL(&e, count_ev(&e, PE_EV_EOF, h) == 1);
    assert_int_equal(count_ev(&e, PE_EV_DATA, h), 0);
    assert_no_buffers(&e, h);
    close(fd);
    env_close(&e);
}

static void test_close_modes(void **state)
{
    enum { BIG = 1 << 20 };
    struct pe_loop_config cfg;
    struct env e;
    unsigned char *big = malloc(BIG), buf[8192];
    size_t got = 0;
    ssize_t n;
    pe_handle h;
    int fd;

    base_config(&cfg, state);
    env_open(&e, &cfg);
    /* FLUSH: handle stale at once, CLOSED once, the bytes still arrive. */
    h = small_buffers(&e, &fd);
    fill(big, 0, BIG, 5);
    assert_int_equal(pe_loop_send(e.l, h, big, BIG), BIG);
    assert_int_equal(pe_loop_close(e.l, h, PE_CLOSE_FLUSH), 0);
    assert_int_equal(pe_loop_send(e.l, h, "x", 1), -ESTALE);
    assert_int_equal(pe_loop_close(e.l, h, PE_CLOSE_NOW), -ESTALE);
    PUMP_UNTIL(&e, ((n = recv(fd, buf, sizeof(buf), 0)) > 0
                        ? (check_pat(buf, got, (size_t)n, 5), got += (size_t)n)
                        : 0,
                    n == 0));
    assert_int_equal(got, BIG);
    assert_int_equal(count_ev(&e, PE_EV_CLOSED, h), 1);
    assert_int_equal(stats(&e).conns_open, 0);
    close(fd);

    /* ABORT: the peer sees a reset. */
    fd = tcp_client(e.port, 0);
    h = next_open(&e);
    assert_int_equal(pe_loop_close(e.l, h, PE_CLOSE_ABORT), 0);
    n = recv_wait(fd, buf, sizeof(buf), 2000);
    assert_true(n < 0 && errno == ECONNRESET);
    close(fd);

    /* NOW with an empty output ring: plain EOF. */
    fd = tcp_client(e.port, 0);
    h = next_open(&e);
    assert_int_equal(pe_loop_close(e.l, h, 99), -EINVAL);
    assert_int_equal(pe_loop_close(e.l, h, PE_CLOSE_NOW), 0);
    assert_int_equal(recv_wait(fd, buf, sizeof(buf), 2000), 0);
    pump(&e, 0);
    assert_int_equal(count_ev(&e, PE_EV_CLOSED, 0), 3);
    close(fd);
    free(big);
    env_close(&e);
}

/* ------------------------------------------------------------- accepting */

static struct rlimit saved_nofile;
static int nofile_lowered;

static int restore_nofile(void **state)
{
    (void)state;
    if (nofile_lowered)
        setrlimit(RLIMIT_NOFILE, &saved_nofile);
    nofile_lowered = 0;
    return 0;
}

static void wait_dropped(int fd)
{
    char c;
    ssize_t n = recv_wait(fd, &c, 1, 3000);

    assert_true(n == 0 || (n < 0 && errno == ECONNRESET));
}

static void test_emfile(void **state)
{
    struct pe_loop_config cfg;
    struct pe_loop_stats st;
    struct rlimit lim;
    struct env e;
    int a, b, c, d, x, free_fd, iters = 0;
    uint64_t s0, t0;
    pe_handle ha, hd;

    base_config(&cfg, state);
    cfg.echo = 1;
    env_open(&e, &cfg);
    vclock = 1000;
    pe__loop_set_clock(e.l, fake_clock, NULL);  /* no timed retry unless asked */
    a = tcp_client(e.port, 0);
    ha = next_open(&e);
    roundtrip(&e, a, 0);
    b = socket(AF_INET, SOCK_STREAM, 0);        /* descriptors taken now, */
    c = socket(AF_INET, SOCK_STREAM, 0);        /* connected later */
    d = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(b >= 0 && c >= 0 && d >= 0);

    /* No descriptor number left below the limit. */
    free_fd = fcntl(0, F_DUPFD, 0);
    assert_true(free_fd >= 0);
    close(free_fd);
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &saved_nofile), 0);
    lim = saved_nofile;
    lim.rlim_cur = (rlim_t)free_fd;
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &lim), 0);
    nofile_lowered = 1;

    tcp_connect_fd(b, e.port);
    PUMP_UNTIL(&e, stats(&e).accept_emfile == 1);
    wait_dropped(b);                            /* accepted and closed */
    tcp_connect_fd(c, e.port);

    /* The listener is not watched: runs block, nothing is retried. */
    s0 = syscalls(&e);
    t0 = now_ms();
    while (now_ms() - t0 < 300) {
        pump(&e, 50);
        iters++;
    }
    assert_true(iters <= 10);
    assert_true(syscalls(&e) - s0 <= (uint64_t)iters);
    st = stats(&e);
    assert_int_equal(st.accept_emfile, 1);
    assert_int_equal(st.accepted, 1);

    /* A second later (virtual) the listener is tried once more; still no
     * descriptor, so c is dropped too. */
    vclock += 999;
    pump(&e, 0);
    assert_int_equal(stats(&e).accept_emfile, 1);
    vclock += 1;
    PUMP_UNTIL(&e, stats(&e).accept_emfile > 1);
    wait_dropped(c);

    /* Existing connections keep working. */
    roundtrip(&e, a, 0);

    /* One closes: its descriptor lets the next client in.  The client
     * keeps its own descriptor (half-close) so only the server's frees. */
    tcp_connect_fd(d, e.port);
    assert_int_equal(shutdown(a, SHUT_WR), 0);
    PUMP_UNTIL(&e, count_ev(&e, PE_EV_EOF, ha) == 1);
    assert_int_equal(pe_loop_close(e.l, ha, PE_CLOSE_NOW), 0);
    hd = next_open(&e);
    roundtrip(&e, d, 0);
    x = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(x < 0 && errno == EMFILE);      /* the limit still holds */
    restore_nofile(NULL);
    roundtrip(&e, d, 0);
    assert_int_equal(count_ev(&e, PE_EV_CLOSED, hd), 0);
    close(a);
    close(b);
    close(c);
    close(d);
    env_close(&e);
}

static void max_conns(void **state, uint32_t policy)
{
    struct pe_loop_config cfg;
    struct env e;
    pe_handle h1;
    char ch;
    int c1, c2, c3;

    base_config(&cfg, state);
    cfg.max_conns = 2;
    cfg.overflow = policy;
    cfg.echo = 1;
    env_open(&e, &cfg);
    c1 = tcp_client(e.port, 0);
    c2 = tcp_client(e.port, 0);
    c3 = tcp_client(e.port, 0);
    h1 = next_open(&e);
    next_open(&e);
    if (policy == PE_OVERFLOW_CLOSE) {
        PUMP_UNTIL(&e, stats(&e).refused == 1);
        wait_dropped(c3);
    } else {
        uint64_t t0 = now_ms();

        assert_int_equal(send(c3, "x", 1, 0), 1);
        while (now_ms() - t0 < 100)
            pump(&e, 10);
        assert_int_equal(stats(&e).refused, 0);
        assert_true(recv(c3, &ch, 1, 0) < 0 && errno == EAGAIN);
    }
    assert_int_equal(count_ev(&e, PE_EV_OPEN, 0), 2);
    roundtrip(&e, c1, 0);
    roundtrip(&e, c2, 0);
    /* A slot frees: the backlog is served (the queued byte included). */
    assert_int_equal(pe_loop_close(e.l, h1, PE_CLOSE_NOW), 0);
    close(c1);
    if (policy == PE_OVERFLOW_BACKLOG) {
        ssize_t n;

        next_open(&e);
        PUMP_UNTIL(&e, (n = recv(c3, &ch, 1, 0)) >= 0);
        assert_int_equal(n, 1);
        assert_int_equal(ch, 'x');
        roundtrip(&e, c3, 0);
    } else {
        close(c3);
        c3 = tcp_client(e.port, 0);
        next_open(&e);
        roundtrip(&e, c3, 0);
    }
    close(c2);
    close(c3);
    env_close(&e);
}

static void test_max_conns_backlog(void **state)
{
    max_conns(state, PE_OVERFLOW_BACKLOG);
}

static void test_max_conns_close(void **state)
{
    max_conns(state, PE_OVERFLOW_CLOSE);
}

/* --------------------------------------------------------------- timeouts */

static void test_idle_timeout(void **state)
{
    struct pe_loop_config cfg;
    struct env e;
    char buf[8];
    pe_handle ha, hb, hc;
    uint64_t t0;
    int a, b, c;

    base_config(&cfg, state);
    cfg.idle_timeout_ms = 5000;
    env_open(&e, &cfg);
    vclock = 1000;
    pe__loop_set_clock(e.l, fake_clock, NULL);
    a = tcp_client(e.port, 0);
    b = tcp_client(e.port, 0);
    ha = next_open(&e);
    hb = next_open(&e);

    vclock = 4000;                               /* a talks, b does not */
    assert_int_equal(send(a, "hi", 2, 0), 2);
    PUMP_UNTIL(&e, count_ev(&e, PE_EV_DATA, ha) == 1);
    assert_int_equal(pe_loop_read(e.l, ha, buf, sizeof(buf)), 2);
    vclock = 5999;
    pump(&e, 0);
    assert_int_equal(count_ev(&e, PE_EV_CLOSED, 0), 0);
    vclock = 6000;
    pump(&e, 0);
    assert_int_equal(count_ev(&e, PE_EV_CLOSED, hb), 1);
    assert_int_equal(last_ev(&e, PE_EV_CLOSED, hb)->arg, ETIMEDOUT);
    assert_int_equal(count_ev(&e, PE_EV_CLOSED, ha), 0);
    wait_dropped(b);

    /* run(-1) sleeps only until the earliest deadline (a at 9000). */
    vclock = 8970;
    t0 = now_ms();
    assert_int_equal(pump(&e, -1), 0);
    assert_true(now_ms() - t0 >= 20 && now_ms() - t0 < 2000);
    vclock = 9000;
    pump(&e, 0);
    assert_int_equal(last_ev(&e, PE_EV_CLOSED, ha)->arg, ETIMEDOUT);

    /* Sending counts as activity too. */
    c = tcp_client(e.port, 0);
    hc = next_open(&e);
    vclock = 13000;
    pump(&e, 0);
    assert_int_equal(pe_loop_send(e.l, hc, "x", 1), 1);
    vclock = 17999;
    pump(&e, 0);
    assert_int_equal(count_ev(&e, PE_EV_CLOSED, hc), 0);
    vclock = 18000;
    pump(&e, 0);
    assert_int_equal(count_ev(&e, PE_EV_CLOSED, hc), 1);
    assert_int_equal(stats(&e).timed_out, 3);
    close(a);
    close(b);
    close(c);
    env_close(&e);
}

static void test_read_timeout(void **state)
{
    struct pe_loop_config cfg;
    struct env e;
    char buf[8];
    pe_handle h;
    int fd;

    base_config(&cfg, state);
    cfg.read_timeout_ms = 3000;
    env_open(&e, &cfg);
    vclock = 0;
    pe__loop_set_clock(e.l, fake_clock, NULL);
    fd = tcp_client(e.port, 0);
    h = next_open(&e);
    assert_int_equal(pe_loop_arm_read_timeout(e.l, h, 1), 0);
    vclock = 2000;                   /* bytes arrive: the deadline stands */
    assert_int_equal(send(fd, "ab", 2, 0), 2);
    PUMP_UNTIL(&e, count_ev(&e, PE_EV_DATA, h) == 1);
    assert_int_equal(count_ev(&e, PE_EV_READ_TIMEOUT, 0), 0);
    vclock = 2999;
    pump(&e, 0);
    assert_int_equal(count_ev(&e, PE_EV_READ_TIMEOUT, 0), 0);
    vclock = 3000;
    pump(&e, 0);
    assert_int_equal(count_ev(&e, PE_EV_READ_TIMEOUT, h), 1);
    /* Still open and usable; the deadline fired once. */
    assert_int_equal(pe_loop_read(e.l, h, buf, sizeof(buf)), 2);
    assert_int_equal(pe_loop_send(e.l, h, "ok", 2), 2);
    vclock = 10000;
    pump(&e, 0);
    assert_int_equal(count_ev(&e, PE_EV_READ_TIMEOUT, h), 1);
    /* Disarmed before the deadline: nothing. */
    assert_int_equal(pe_loop_arm_read_timeout(e.l, h, 1), 0);
    vclock = 11000;
    assert_int_equal(pe_loop_arm_read_timeout(e.l, h, 0), 0);
    vclock = 20000;
    pump(&e, 0);
    assert_int_equal(count_ev(&e, PE_EV_READ_TIMEOUT, h), 1);
    /* Re-arming restarts the deadline. */
    assert_int_equal(pe_loop_arm_read_timeout(e.l, h, 1), 0);
    vclock = 22000;
    assert_int_equal(pe_loop_arm_read_timeout(e.l, h, 1), 0);
    vclock = 24000;
    pump(&e, 0);
    assert_int_equal(count_ev(&e, PE_EV_READ_TIMEOUT, h), 1);
    vclock = 25000;
    pump(&e, 0);
    assert_int_equal(count_ev(&e, PE_EV_READ_TIMEOUT, h), 2);
    assert_int_equal(count_ev(&e, PE_EV_CLOSED, h), 0);
    close(fd);
    env_close(&e);
}

/* ----------------------------------------------------------- flow control */


static void pause_resume(void **state, uint32_t high, uint32_t low)
{
    enum { TOTAL = 512 * 1024 };
    struct pe_loop_config cfg;
    struct env e;
    static unsigned char rbuf[4096];
    size_t sent = 0, got = 0;
    uint32_t in;
    uint64_t s0;
    size_t ndata;
    pe_handle h;
    int fd;

    base_config(&cfg, state);
    cfg.in_high = high;
    cfg.in_low = low;
    env_open(&e, &cfg);
    fd = tcp_client(e.port, 0);
    h = next_open(&e);
    /* The server does not read: input stops at in_high. */
    PUMP_UNTIL(&e, (send_pat(fd, &sent, 1),
                    pe_loop_buffered(e.l, h, &in, NULL), in >= cfg.in_high));
    assert_int_equal(in, cfg.in_high);
    ndata = count_ev(&e, PE_EV_DATA, h);
    s0 = syscalls(&e);
    for (int i = 0; i < 3; i++)
        pump(&e, 10);
    assert_int_equal(syscalls(&e) - s0, 3);      /* waits only */
    assert_int_equal(count_ev(&e, PE_EV_DATA, h), ndata);
    pe_loop_buffered(e.l, h, &in, NULL);
    assert_int_equal(in, cfg.in_high);

    /* Reading below in_low resumes; everything arrives intact. */
    PUMP_UNTIL(&e, ({
        int64_t n = pe_loop_read(e.l, h, rbuf, sizeof(rbuf));
        assert_true(n >= 0);
        check_pat(rbuf, got, (size_t)n, 1);
        got += (size_t)n;
        if (sent < TOTAL)
            send_pat(fd, &sent, 1);
        pe_loop_buffered(e.l, h, &in, NULL);
        assert_true(in <= cfg.in_high);
        sent >= TOTAL && got == sent;
    }));
    assert_int_equal(got, sent);

    /* Paused by the user: no DATA until resumed. */
    assert_int_equal(pe_loop_pause_reading(e.l, h), 0);
    ndata = count_ev(&e, PE_EV_DATA, h);
    assert_int_equal(send(fd, "0123456789", 10, 0), 10);
    for (int i = 0; i < 3; i++)
        pump(&e, 10);
    assert_int_equal(count_ev(&e, PE_EV_DATA, h), ndata);
    assert_int_equal(pe_loop_resume_reading(e.l, h), 0);
    PUMP_UNTIL(&e, count_ev(&e, PE_EV_DATA, h) == ndata + 1);
    assert_int_equal(pe_loop_read(e.l, h, rbuf, sizeof(rbuf)), 10);
    assert_memory_equal(rbuf, "0123456789", 10);
    close(fd);
    env_close(&e);
}

static void test_pause_resume(void **state)
{
    pause_resume(state, 32 * 1024, 8 * 1024);
}

/* in_high below the smallest ring buffer still bounds what is read. */
static void test_pause_resume_small(void **state)
{
    pause_resume(state, 1000, 100);
}

/* ---------------------------------------------------------------- wakeup */

static void *wake_later(void *arg)
{
    sleep_ms(50);
    assert_int_equal(pe_loop_wakeup(arg), 0);
    return NULL;
}

static void test_wakeup(void **state)
{
    struct pe_loop_config cfg;
    struct env e;
    pthread_t t;
    uint64_t t0;

    base_config(&cfg, state);
    env_open(&e, &cfg);
    t0 = now_ms();
    assert_int_equal(pthread_create(&t, NULL, wake_later, e.l), 0);
    while (count_ev(&e, PE_EV_WAKEUP, 0) == 0 && now_ms() - t0 < 5000)
        pump(&e, 5000);
    pthread_join(t, NULL);
    assert_int_equal(count_ev(&e, PE_EV_WAKEUP, 0), 1);
    assert_true(now_ms() - t0 >= 40 && now_ms() - t0 < 3000);
    assert_int_equal(last_ev(&e, PE_EV_WAKEUP, 0)->handle, 0);
    /* Several wakeups before a run make one event; then nothing. */
    for (int i = 0; i < 3; i++)
        assert_int_equal(pe_loop_wakeup(e.l), 0);
    assert_int_equal(pump(&e, 1000), 1);
    assert_int_equal(count_ev(&e, PE_EV_WAKEUP, 0), 2);
    assert_int_equal(pump(&e, 0), 0);
    env_close(&e);
}

/* busy_poll_us: a run that would sleep polls first (counted syscalls)
 * when the last wait ended within the polling time, never past its
 * timeout; a wait that polled in vain, or slept longer, makes the next
 * one sleep at once (sparse traffic costs no polling).  What comes
 * during the polling is handled as a blocking wait would handle it. */
static void test_busy_poll(void **state)
{
    struct pe_loop_config cfg;
    struct env e;
    pthread_t t;
    uint64_t t0, s0, el;
    pe_handle h;
    int fd, err = 0;

    base_config(&cfg, state);
    cfg.busy_poll_us = 20000;                   /* 20 ms */
    env_open(&e, &cfg);
    /* The first wait sleeps: nothing says traffic is dense. */
    s0 = syscalls(&e);
    assert_int_equal(pump(&e, 30), 0);
    assert_int_equal(syscalls(&e) - s0, 1);
    /* A wait that ends at once (a wakeup): the next one polls, for 20 ms,
     * then sleeps out its 60. */
    assert_int_equal(pe_loop_wakeup(e.l), 0);
    assert_int_equal(pump(&e, 5000), 1);
    s0 = syscalls(&e);
    t0 = now_ms();
    assert_int_equal(pump(&e, 60), 0);
    el = now_ms() - t0;
    assert_true(el >= 55 && el < 2000);
    assert_true(syscalls(&e) - s0 > 3);
    /* It polled in vain: the next one sleeps at once. */
    s0 = syscalls(&e);
    assert_int_equal(pump(&e, 10), 0);
    assert_int_equal(syscalls(&e) - s0, 1);
    /* A timeout shorter than the polling bounds it. */
    assert_int_equal(pe_loop_wakeup(e.l), 0);
    assert_int_equal(pump(&e, 5000), 1);
    t0 = now_ms();
    assert_int_equal(pump(&e, 5), 0);
    assert_true(now_ms() - t0 < 1000);
    /* A poll (timeout 0) polls once. */
    s0 = syscalls(&e);
    assert_int_equal(pump(&e, 0), 0);
    assert_int_equal(syscalls(&e) - s0, 1);
    /* Found while polling or sleeping: a wakeup from another thread 50 ms
     * on, then echoes byte-exact. */
    t0 = now_ms();
    assert_int_equal(pthread_create(&t, NULL, wake_later, e.l), 0);
    while (count_ev(&e, PE_EV_WAKEUP, 0) < 3 && now_ms() - t0 < 5000)
        pump(&e, 5000);
    pthread_join(t, NULL);
    assert_int_equal(count_ev(&e, PE_EV_WAKEUP, 0), 3);
    fd = tcp_client(e.port, 0);
    h = next_open(&e);
    for (int i = 0; i < 20; i++)
        roundtrip(&e, fd, h);
    close(fd);
    env_close(&e);
    /* More than a second is refused. */
    pe_loop_config_init(&cfg);
    cfg.busy_poll_us = PE_BUSY_POLL_MAX_US + 1;
    assert_null(pe_loop_new(&cfg, &err));
    assert_int_equal(err, -EINVAL);
}

/* Wakeups made while one is pending write nothing more: the descriptor
 * holds one (a burst of call_soon_threadsafe is one syscall). */
static void test_wakeup_coalesces(void **state)
{
    struct pe_loop_config cfg;
    struct env e;
    char buf[64];

    base_config(&cfg, state);
    env_open(&e, &cfg);
    for (int i = 0; i < 5; i++)
        assert_int_equal(pe_loop_wakeup(e.l), 0);
    /* What the descriptor holds, read behind the loop's back: one eventfd
     * count of 1, or one pipe byte.  Then put it back as it was. */
#ifdef __linux__
    uint64_t count = 0;

    assert_int_equal(read(e.l->wake_r, &count, sizeof(count)), sizeof(count));
    assert_int_equal(count, 1);
#else
    assert_int_equal(read(e.l->wake_r, buf, sizeof(buf)), 1);
#endif
    assert_int_equal(pe__wakeup_signal(e.l->wake_w), 0);
    assert_int_equal(pump(&e, 1000), 1);
    assert_int_equal(count_ev(&e, PE_EV_WAKEUP, 0), 1);
    /* Drained: the next wakeup writes again and is seen. */
    assert_int_equal(pe_loop_wakeup(e.l), 0);
    assert_int_equal(pump(&e, 1000), 1);
    assert_int_equal(count_ev(&e, PE_EV_WAKEUP, 0), 2);
    assert_int_equal(pump(&e, 0), 0);
    (void)buf;
    env_close(&e);
}

/* Another thread queues work (a counter) and wakes the loop, many times
 * over, while the loop waits, drains and takes the work: no wakeup is
 * lost to the pending flag, whatever the interleaving. */
struct wake_ping {
    pe_loop *l;
    atomic_int queued, handled, failed;
    int rounds;
};

static void *wake_pinger(void *arg)
{
    struct wake_ping *w = arg;

    for (int i = 1; i <= w->rounds; i++) {
        uint64_t until = now_ms() + DEADLINE_MS;

        atomic_store(&w->queued, i);
        if (pe_loop_wakeup(w->l) != 0)
            atomic_store(&w->failed, 1);
        /* Three rounds in four go on at once: wakeups then also land while
         * the loop is between its drain and its next wait. */
        while (!(i & 3) && atomic_load(&w->handled) < i && !atomic_load(&w->failed)) {
            if (now_ms() > until) {
                atomic_store(&w->failed, 1);
                break;
            }
            sched_yield();      /* valgrind runs one thread at a time */
        }
        if (atomic_load(&w->failed))
            break;
    }
    return NULL;
}

static void test_wakeup_never_lost(void **state)
{
    struct pe_loop_config cfg;
    struct env e;
    struct wake_ping w;
    struct pe_loop_event ev[8];
    pthread_t t;

    base_config(&cfg, state);
    env_open(&e, &cfg);
    memset(&w, 0, sizeof(w));
    w.l = e.l;
    w.rounds = 20000;
    assert_int_equal(pthread_create(&t, NULL, wake_pinger, &w), 0);
    while (atomic_load(&w.handled) < w.rounds && !atomic_load(&w.failed)) {
        int n = pe_loop_run(e.l, ev, 8, 2000);

        assert_true(n >= 0 || n == -EINTR);
        if (n == 0 && atomic_load(&w.queued) > atomic_load(&w.handled)) {
            atomic_store(&w.failed, 1);     /* queued work and no wakeup */
            break;
        }
        atomic_store(&w.handled, atomic_load(&w.queued));
    }
    pthread_join(t, NULL);
    assert_int_equal(atomic_load(&w.failed), 0);
    assert_int_equal(atomic_load(&w.handled), w.rounds);
    env_close(&e);
}

/* ----------------------------------------------------------------- threads */

struct blocked_run {
    pe_loop *l;
    struct pe_loop_event ev[8];
    int rc;
    uint64_t took;
};

static void *run_blocking(void *arg)
{
    struct blocked_run *r = arg;
    uint64_t t0 = now_ms();

    /* A run may do I/O and report nothing (edge mode's first WRITE
     * readiness): wait on until there is an event. */
    do
        r->rc = pe_loop_run(r->l, r->ev, 8, 5000);
    while (r->rc == 0 && now_ms() - t0 < 5000);
    r->took = now_ms() - t0;
    return NULL;
}

/* Start a thread blocked in pe_loop_run and return once it is inside. */
static void start_blocked(pthread_t *t, struct blocked_run *r, pe_loop *l)
{
    uint64_t until = now_ms() + DEADLINE_MS;

    memset(r, 0, sizeof(*r));
    r->l = l;
    assert_int_equal(pthread_create(t, NULL, run_blocking, r), 0);
    while (!atomic_load(&l->inside)) {
        assert_true(now_ms() < until);
        sleep_ms(1);
    }
    sleep_ms(1);                /* past the flag, into the poller's wait */
}

/* A second thread entering any entry point while one is inside gets
 * -EBUSY and changes nothing; wakeup still works from there. */
static void test_threads_busy(void **state)
{
    struct pe_loop_config cfg;
    struct pe_loop_event ev[4];
    struct pe_loop_stats st;
    struct blocked_run r;
    struct env e;
    char buf[16];
    pthread_t t;
    pe_handle h;
    int a;

    base_config(&cfg, state);
    env_open(&e, &cfg);
    a = tcp_client(e.port, 0);
    h = next_open(&e);
    start_blocked(&t, &r, e.l);
    assert_int_equal(pe_loop_run(e.l, ev, 4, 0), -EBUSY);
    assert_int_equal(pe_loop_send(e.l, h, "x", 1), -EBUSY);
    assert_int_equal(pe_loop_read(e.l, h, buf, sizeof(buf)), -EBUSY);
    assert_int_equal(pe_loop_close(e.l, h, PE_CLOSE_NOW), -EBUSY);
    assert_int_equal(pe_loop_pause_reading(e.l, h), -EBUSY);
    assert_int_equal(pe_loop_add_listener(e.l, a), -EBUSY);
    assert_int_equal(pe_loop_get_stats(e.l, &st), -EBUSY);
    assert_int_equal(pe_loop_wakeup(e.l), 0);
    pthread_join(t, NULL);
    assert_int_equal(r.rc, 1);
    assert_int_equal(r.ev[0].kind, PE_EV_WAKEUP);
    /* The refused close did nothing: the connection still echoes. */
    assert_int_equal(pe_loop_send(e.l, h, "y", 1), 1);
    assert_int_equal(recv_wait(a, buf, sizeof(buf), 2000), 1);
    assert_int_equal(buf[0], 'y');
    assert_int_equal(pe_loop_get_stats(e.l, &st), 0);
    assert_int_equal(st.conns_open, 1);
    close(a);
    env_close(&e);
}

/* Teardown from another thread while one waits: the waiter is woken and
 * tears down on its way out; then every entry point answers -EBADF, and
 * the connections are closed.  With nobody inside it happens at once. */
static void test_threads_teardown(void **state)
{
    struct pe_loop_config cfg;
    struct pe_loop_event ev[4];
    struct pe_loop_stats st;
    struct blocked_run r;
    struct env e;
    char buf[16];
    pthread_t t;
    pe_handle h;
    int a;

    base_config(&cfg, state);
    env_open(&e, &cfg);
    a = tcp_client(e.port, 0);
    h = next_open(&e);
    start_blocked(&t, &r, e.l);
    assert_int_equal(pe_loop_teardown(e.l), 1);
    pthread_join(t, NULL);
    assert_true(r.took < 3000);
    assert_true(e.l->dead);
    assert_int_equal(pe_loop_run(e.l, ev, 4, 0), -EBADF);
    assert_int_equal(pe_loop_send(e.l, h, "x", 1), -EBADF);
    assert_int_equal(pe_loop_get_stats(e.l, &st), -EBADF);
    assert_int_equal(pe_loop_wakeup(e.l), 0);
    assert_int_equal(recv_wait(a, buf, sizeof(buf), 2000), 0);   /* closed */
    assert_int_equal(pe_loop_teardown(e.l), 0);                  /* again */
    close(a);
    env_close(&e);

    base_config(&cfg, state);
    env_open(&e, &cfg);
    assert_int_equal(pe_loop_teardown(e.l), 0);
    assert_int_equal(pe_loop_run(e.l, ev, 4, 0), -EBADF);
    assert_int_equal(pe_loop_add_listener(e.l, e.lfd), -EBADF);
    env_close(&e);
}

/* -------------------------------------------------------- handles, events */

static void test_stale_handle(void **state)
{
    struct pe_loop_config cfg;
    struct env e;
    char buf[64];
    uint64_t tok = 0;
    uint32_t in, out;
    pe_handle ha, hb;
    int a, b, port;

    base_config(&cfg, state);
    cfg.max_conns = 1;
    cfg.read_timeout_ms = 1000;
    env_open(&e, &cfg);
    a = tcp_client(e.port, 0);
    ha = next_open(&e);
    assert_int_equal(pe_loop_set_token(e.l, ha, 42), 0);
    assert_int_equal(pe_loop_get_token(e.l, ha, &tok), 0);
    assert_int_equal(tok, 42);
    assert_true(pe_loop_fileno(e.l, ha) >= 0);
    assert_int_equal(pe_loop_peer(e.l, ha, buf, sizeof(buf), &port), 0);
    assert_string_equal(buf, "127.0.0.1");
    {
        struct sockaddr_in sa;
        socklen_t sl = sizeof(sa);

        getsockname(a, (struct sockaddr *)&sa, &sl);
        assert_int_equal(port, ntohs(sa.sin_port));
    }
    assert_int_equal(pe_loop_peer(e.l, ha, buf, 3, &port), -ENOSPC);

    assert_int_equal(pe_loop_close(e.l, ha, PE_CLOSE_NOW), 0);
    assert_int_equal(pe_loop_read(e.l, ha, buf, 1), -ESTALE);
    assert_int_equal(pe_loop_send(e.l, ha, buf, 1), -ESTALE);
    assert_int_equal(pe_loop_close(e.l, ha, PE_CLOSE_NOW), -ESTALE);
    assert_int_equal(pe_loop_shutdown(e.l, ha), -ESTALE);
    assert_int_equal(pe_loop_pause_reading(e.l, ha), -ESTALE);
    assert_int_equal(pe_loop_resume_reading(e.l, ha), -ESTALE);
    assert_int_equal(pe_loop_arm_read_timeout(e.l, ha, 1), -ESTALE);
    assert_int_equal(pe_loop_set_token(e.l, ha, 1), -ESTALE);
    assert_int_equal(pe_loop_get_token(e.l, ha, &tok), -ESTALE);
    assert_int_equal(pe_loop_buffered(e.l, ha, &in, &out), -ESTALE);
    assert_int_equal(pe_loop_peer(e.l, ha, buf, sizeof(buf), &port), -ESTALE);
    assert_int_equal(pe_loop_fileno(e.l, ha), -ESTALE);
    assert_int_equal(pe_loop_read(e.l, 0, buf, 1), -ESTALE);
    pump(&e, 0);
    pump(&e, 0);
    assert_int_equal(count_ev(&e, PE_EV_CLOSED, ha), 1);
    assert_int_equal(recv_wait(a, buf, 1, 2000), 0);

    /* The slot is reused (capacity 1); the old handle stays stale. */
    b = tcp_client(e.port, 0);
    hb = next_open(&e);
    assert_int_equal((uint32_t)hb, (uint32_t)ha);
    assert_int_not_equal(hb, ha);
    assert_int_equal(pe_loop_send(e.l, ha, "x", 1), -ESTALE);
    assert_int_equal(pe_loop_send(e.l, hb, "x", 1), 1);
    assert_int_equal(pe_loop_get_token(e.l, hb, &tok), 0);
    assert_int_equal(tok, 0);
    close(a);
    close(b);
    env_close(&e);
}

static void test_events_beyond_max(void **state)
{
    enum { N = 10 };
    struct pe_loop_config cfg;
    struct env e;
    int fd[N], total = 0, n;
    uint64_t t0;

    base_config(&cfg, state);
    env_open(&e, &cfg);
    for (int i = 0; i < N; i++)
        fd[i] = tcp_client(e.port, 0);
    /* All ten are accepted in one run, handed out three at a time. */
    n = pump_max(&e, 2000, 3);
    assert_int_equal(n, 3);
    total = n;
    t0 = now_ms();
    while (total < N) {
        n = pump_max(&e, -1, 3);                 /* must not block */
        assert_true(n == 3 || n == N - total);
        total += n;
    }
    assert_true(now_ms() - t0 < 1000);
    assert_int_equal(count_ev(&e, PE_EV_OPEN, 0), N);
    for (int i = 0; i < N; i++)
        for (int j = 0; j < i; j++)
            assert_int_not_equal(e.ev[i].handle, e.ev[j].handle);
    assert_int_equal(stats(&e).events, N);
    for (int i = 0; i < N; i++)
        close(fd[i]);
    env_close(&e);
}

static void test_no_sigpipe(void **state)
{
    struct pe_loop_config cfg;
    struct env e;
    static unsigned char big[1 << 20];
    void (*old)(int) = signal(SIGPIPE, SIG_DFL);
    const struct pe_loop_event *ev;
    pe_handle h;
    int64_t rc = 0;
    int fd;

    base_config(&cfg, state);
    env_open(&e, &cfg);
    /* Direct sends to a closed peer. */
    fd = tcp_client(e.port, 0);
    h = next_open(&e);
    close(fd);
    for (int i = 0; i < 100 && rc >= 0; i++) {
        rc = pe_loop_send(e.l, h, "data", 4);
        pump(&e, 1);
    }
    assert_true(rc == -EPIPE || rc == -ECONNRESET || rc == -ESTALE);
    PUMP_UNTIL(&e, count_ev(&e, PE_EV_CLOSED, h) == 1);
    ev = last_ev(&e, PE_EV_CLOSED, h);
    assert_true(ev->arg == EPIPE || ev->arg == ECONNRESET);

    /* The loop's own writes of queued output. */
    h = small_buffers(&e, &fd);
    assert_int_equal(pe_loop_send(e.l, h, big, sizeof(big)), sizeof(big));
    close(fd);
    PUMP_UNTIL(&e, count_ev(&e, PE_EV_CLOSED, h) == 1);
    ev = last_ev(&e, PE_EV_CLOSED, h);
    assert_true(ev->arg == EPIPE || ev->arg == ECONNRESET);
    signal(SIGPIPE, old);
    env_close(&e);
}

/* ------------------------------------------------------------ once only */

static void test_config(void **state)
{
    struct pe_loop_config cfg;
    int err = 0;

    (void)state;
    pe_loop_config_init(&cfg);
    assert_int_equal(cfg.max_conns, 1024);
    assert_int_equal(cfg.edge, 0);
    cfg.backend = "poll";
    cfg.edge = 1;
    assert_null(pe_loop_new(&cfg, &err));
    assert_int_equal(err, -EOPNOTSUPP);
    cfg.edge = 0;
    cfg.in_low = cfg.in_high + 1;
    assert_null(pe_loop_new(&cfg, &err));
    assert_int_equal(err, -EINVAL);
    pe_loop_config_init(&cfg);
    cfg.max_conns = 0;
    assert_null(pe_loop_new(&cfg, &err));
    assert_int_equal(err, -EINVAL);
}

static void test_listeners(void **state)
{
    struct pe_loop_config cfg;
    struct env e;
    int port2, lfd2, id2, fd;

    base_config(&cfg, state);
    env_open(&e, &cfg);
    assert_int_equal(pe_loop_add_listener(e.l, e.lfd), -EEXIST);
    assert_int_equal(pe_loop_add_listener(e.l, -1), -EBADF);
    lfd2 = tcp_listener(&port2);
    id2 = pe_loop_add_listener(e.l, lfd2);
    assert_int_equal(id2, e.lid + 1);
    fd = tcp_client(port2, 0);
    PUMP_UNTIL(&e, count_ev(&e, PE_EV_OPEN, 0) == 1);
    assert_int_equal(last_ev(&e, PE_EV_OPEN, 0)->arg, id2);
    close(fd);
    assert_int_equal(pe_loop_remove_listener(e.l, id2), 0);
    assert_int_equal(pe_loop_remove_listener(e.l, id2), -ENOENT);
    fd = tcp_client(port2, 0);                  /* sits in the backlog */
    for (int i = 0; i < 5; i++)
        pump(&e, 5);
    assert_int_equal(count_ev(&e, PE_EV_OPEN, 0), 1);
    close(fd);
    close(lfd2);
    env_close(&e);
}

/* Listeners and a connection ready in the same runs, and runs with only
 * the connection's events between them: every listener's turn comes (a
 * run looks at the listeners only when one of them was reported). */
static void test_listeners_and_data_in_one_run(void **state)
{
    struct pe_loop_config cfg;
    struct env e;
    int port2, lfd2, id2, c, a, b, round;
    pe_handle h;

    base_config(&cfg, state);
    env_open(&e, &cfg);
    lfd2 = tcp_listener(&port2);
    id2 = pe_loop_add_listener(e.l, lfd2);
    assert_true(id2 >= 0);
    c = tcp_client(e.port, 0);
    h = next_open(&e);
    for (round = 0; round < 3; round++) {
        size_t opens = count_ev(&e, PE_EV_OPEN, 0);
        size_t datas = count_ev(&e, PE_EV_DATA, h), start = e.nev, i;
        int from1, from2;
        char buf[8];

        a = tcp_client(e.port, 0);
        b = tcp_client(port2, 0);
        assert_int_equal(send(c, "x", 1, 0), 1);
        PUMP_UNTIL(&e, count_ev(&e, PE_EV_OPEN, 0) == opens + 2 &&
                       count_ev(&e, PE_EV_DATA, h) > datas);
        assert_int_equal(pe_loop_read(e.l, h, buf, sizeof(buf)), 1);
        for (i = start, from1 = from2 = 0; i < e.nev; i++) {
            if (e.ev[i].kind == PE_EV_OPEN) {
                from1 += e.ev[i].arg == (uint32_t)e.lid;
                from2 += e.ev[i].arg == (uint32_t)id2;
            }
        }
        assert_int_equal(from1, 1);         /* one from each listener */
        assert_int_equal(from2, 1);
        /* Runs with the connection's data alone, then the listeners. */
        assert_int_equal(send(c, "y", 1, 0), 1);
        PUMP_UNTIL(&e, count_ev(&e, PE_EV_DATA, h) > datas + 1);
        assert_int_equal(pe_loop_read(e.l, h, buf, sizeof(buf)), 1);
        close(a);
        close(b);
    }
    assert_int_equal(count_ev(&e, PE_EV_OPEN, 0), 1 + 3 * 2);
    close(c);
    close(lfd2);
    env_close(&e);
}

/* ------------------------------------------------------- batch delivery */

/* pe_loop_run_into through the env's event log; DATA bytes are checked
 * and handed to `use` before the next call overwrites the buffer. */
struct batch {
    unsigned char *buf;
    size_t len;
    struct pe_loop_bevent out[256];
    pe_handle echo[256];         /* sent by the next pump_into */
    size_t necho;
    int setup;                   /* named by pe_loop_batch_setup: pump_into
                                    calls pe_loop_run_batch */
};

static int pump_into(struct env *e, struct batch *b, int timeout,
                     void (*use)(struct env *, struct batch *,
                                 const struct pe_loop_event *, uint32_t, void *),
                     void *arg)
{
    struct pe_loop_event *ev;
    size_t necho = b->necho;
    int n;

    if (e->cap - e->nev < 256) {
        e->cap = (e->cap + 256) * 2;
        e->ev = realloc(e->ev, e->cap * sizeof(*e->ev));
        assert_non_null(e->ev);
    }
    ev = e->ev + e->nev;
    b->necho = 0;
    if (b->setup)
        n = pe_loop_run_batch(e->l, (int)necho, timeout);
    else
        n = pe_loop_run_into(e->l, necho ? b->echo : NULL, necho, b->out, 256,
                             timeout, b->buf, b->len);
    assert_true(n >= 0 || n == -EINTR);
    for (int i = 0; i < n; i++) {
        ev[i].kind = (uint32_t)b->out[i].kind;
        ev[i].arg = (uint32_t)b->out[i].arg;
        ev[i].handle = b->out[i].handle;
        if (ev[i].kind != PE_EV_DATA) {
            assert_int_equal(b->out[i].off, 0);
            continue;
        }
        /* Inside the buffer, never empty, never overlapping another. */
        assert_true(ev[i].arg > 0);
        assert_true(b->out[i].off + ev[i].arg <= b->len);
        for (int j = 0; j < i; j++)
            if (b->out[j].kind == PE_EV_DATA)
                assert_true(b->out[i].off >= b->out[j].off + b->out[j].arg ||
                            b->out[j].off >= b->out[i].off + ev[i].arg);
        if (use)
            use(e, b, &ev[i], (uint32_t)b->out[i].off, arg);
    }
    if (n > 0)
        e->nev += (size_t)n;
    return n;
}

struct echo_state {
    int reply;            /* 1: pe_loop_reply at once, 0: pe_loop_echo,
                             2: the echo list of the next pe_loop_run_into,
                             3: the same through pe_loop_run_batch */
    pe_handle q[256];
    size_t nq;
};

static void batch_echo_use(struct env *e, struct batch *b,
                           const struct pe_loop_event *ev, uint32_t off,
                           void *arg)
{
    struct echo_state *st = arg;
    unsigned char tmp[1];

    /* The bytes were moved out of the connection. */
    assert_int_equal(pe_loop_read(e->l, ev->handle, tmp, 1), 0);
    if (st->reply == 1)
        assert_int_equal(pe_loop_reply(e->l, ev->handle, off, ev->arg),
                         ev->arg);
    else if (st->reply >= 2)
        b->echo[b->necho++] = ev->handle;
    else
        st->q[st->nq++] = ev->handle;
}

/* Six clients stream 300 KB each through a server that echoes what each
 * batch delivers, by pe_loop_reply or by one pe_loop_echo per batch; the
 * buffer is as small as in_high, so DATA carries over between calls and
 * reading pauses at in_high and resumes as batches take the bytes. */
static void batch_echo_clients(void **state, int reply)
{
    enum { NC = 6, LEN = 300000 };
    struct pe_loop_config cfg;
    struct echo_state st = { reply, { 0 }, 0 };
    static struct batch b;
    struct env e;
    int fd[NC];
    size_t sent[NC] = { 0 }, rcvd[NC] = { 0 }, done = 0;
    uint64_t until;

    base_config(&cfg, state);
    cfg.in_high = 16384;
    cfg.in_low = 4096;
    env_open(&e, &cfg);
    b.necho = 0;
    b.len = cfg.in_high;
    b.buf = malloc(b.len);
    assert_non_null(b.buf);
    b.setup = reply == 3;
    if (b.setup)
        assert_int_equal(pe_loop_batch_setup(e.l, b.echo, 256, b.out, 256,
                                             b.buf, b.len), 0);
    for (int i = 0; i < NC; i++)
        fd[i] = tcp_client(e.port, 0);
    for (int i = 0; i < NC; i++)
        next_open(&e);
    until = now_ms() + DEADLINE_MS * 2;
    while (done < NC) {
        assert_true(now_ms() < until);
        done = 0;
        for (int i = 0; i < NC; i++) {
            done += (size_t)client_turn(fd[i], (unsigned)i, &sent[i], &rcvd[i],
                                        LEN, 9000);
        }
        if (st.nq) {
            assert_int_equal(pe_loop_echo(e.l, st.q, st.nq), (int)st.nq);
            st.nq = 0;
        }
        pump_into(&e, &b, 1, batch_echo_use, &st);
    }
    assert_int_equal(stats(&e).bytes_in, NC * LEN);
    assert_int_equal(stats(&e).bytes_out, NC * LEN);
    for (int i = 0; i < NC; i++)
        close(fd[i]);
    env_close(&e);
    free(b.buf);
}

static void test_batch_echo_reply(void **state)
{
    batch_echo_clients(state, 1);
}

static void test_batch_echo_queued(void **state)
{
    batch_echo_clients(state, 0);
}

static void test_batch_echo_in_run(void **state)
{
    batch_echo_clients(state, 2);
}

static void test_batch_echo_run_batch(void **state)
{
    batch_echo_clients(state, 3);
}

/* pe_loop_run_batch needs a setup, and both refuse what they cannot use
 * (a refused setup keeps the previous one). */
static void test_batch_setup_refusals(void **state)
{
    struct pe_loop_config cfg;
    static char buf[4096];
    static struct pe_loop_bevent out[8];
    static pe_handle echo[4];
    struct env e;

    base_config(&cfg, state);
    env_open(&e, &cfg);
    assert_int_equal(pe_loop_run_batch(e.l, 0, 0), -EINVAL);
    assert_int_equal(pe_loop_batch_setup(e.l, echo, 4, NULL, 8, buf, 4096),
                     -EINVAL);
    assert_int_equal(pe_loop_batch_setup(e.l, echo, 4, out, 0, buf, 4096),
                     -EINVAL);
    assert_int_equal(pe_loop_batch_setup(e.l, echo, 4, out, 8, NULL, 4096),
                     -EINVAL);
    assert_int_equal(pe_loop_batch_setup(e.l, echo, 4, out, 8, buf, 0),
                     -EINVAL);
    assert_int_equal(pe_loop_batch_setup(e.l, NULL, 4, out, 8, buf, 4096),
                     -EINVAL);
    assert_int_equal(pe_loop_run_batch(e.l, 0, 0), -EINVAL);
    assert_int_equal(pe_loop_batch_setup(e.l, echo, 4, out, 8, buf, 4096), 0);
    assert_int_equal(pe_loop_batch_setup(e.l, NULL, 0, NULL, 8, buf, 4096),
                     -EINVAL);
    assert_int_equal(pe_loop_run_batch(e.l, 0, 0), 0);
    assert_int_equal(pe_loop_run_batch(e.l, 5, 0), -EINVAL);
    assert_int_equal(pe_loop_run_batch(e.l, -1, 0), -EINVAL);
    assert_int_equal(pe_loop_run_batch(e.l, 4, 0), 0); /* stale: skipped */
    env_close(&e);
}

struct collect {
    pe_handle h;
    unsigned char got[8192];
    size_t n, calls;
};

static void batch_collect_use(struct env *e, struct batch *b,
                              const struct pe_loop_event *ev, uint32_t off,
                              void *arg)
{
    struct collect *c = arg;

    (void)e;
    assert_int_equal(ev->handle, c->h);
    assert_true(c->n + ev->arg <= sizeof(c->got));
    memcpy(c->got + c->n, b->buf + off, ev->arg);
    c->n += ev->arg;
    c->calls++;
}

/* A buffer smaller than in_high: one connection's bytes come in pieces of
 * the buffer's size, in order, one call after another. */
static void test_batch_small_buffer(void **state)
{
    struct pe_loop_config cfg;
    struct collect col = { 0 };
    unsigned char out[5000], small[1000];
    struct batch b = { small, sizeof(small), { { 0 } }, { 0 }, 0, 0 };
    struct env e;
    uint64_t until;
    int fd;

    base_config(&cfg, state);
    env_open(&e, &cfg);
    fd = tcp_client(e.port, 0);
    col.h = next_open(&e);
    fill(out, 0, sizeof(out), 3);
    assert_int_equal(send(fd, out, sizeof(out), 0), (ssize_t)sizeof(out));
    until = now_ms() + DEADLINE_MS;
    while (col.n < sizeof(out)) {
        assert_true(now_ms() < until);
        pump_into(&e, &b, 5, batch_collect_use, &col);
    }
    assert_int_equal(col.n, sizeof(out));
    assert_memory_equal(col.got, out, sizeof(out));
    assert_true(col.calls >= 5);
    close(fd);
    env_close(&e);
}

/* pe_loop_echo and pe_loop_reply refuse what is not theirs to send. */
static void test_batch_echo_refusals(void **state)
{
    struct pe_loop_config cfg;
    unsigned char buf[65536], in[16];
    struct batch b = { buf, sizeof(buf), { { 0 } }, { 0 }, 0, 0 };
    struct env e;
    pe_handle h, h2, q[3];
    int fd, fd2;

    base_config(&cfg, state);
    env_open(&e, &cfg);
    /* Nothing delivered yet: no buffer to reply from. */
    assert_int_equal(pe_loop_reply(e.l, 1, 0, 1), -EINVAL);
    fd = tcp_client(e.port, 0);
    fd2 = tcp_client(e.port, 0);
    h = next_open(&e);
    h2 = next_open(&e);
    assert_int_equal(send(fd, "hello", 5, 0), 5);
    PUMP_UNTIL(&e, (pump_into(&e, &b, 5, NULL, NULL),
                    count_ev(&e, PE_EV_DATA, h) == 1));
    assert_int_equal(pe_loop_reply(e.l, h, (uint32_t)sizeof(buf) - 1, 2),
                     -EINVAL);
    assert_int_equal(pe_loop_reply(e.l, h, UINT32_MAX, 1), -EINVAL);
    /* h2 had no DATA, a bogus handle is stale; h is echoed once only. */
    q[0] = h2;
    q[1] = h | 0x7ull << 40;
    q[2] = h;
    assert_int_equal(pe_loop_echo(e.l, q, 3), 1);
    assert_int_equal(pe_loop_echo(e.l, &h, 1), 0);
    assert_int_equal(recv_wait(fd, in, sizeof(in), 2000), 5);
    assert_memory_equal(in, "hello", 5);
    /* After the next batch the old DATA cannot be echoed any more. */
    assert_int_equal(send(fd2, "x", 1, 0), 1);
    PUMP_UNTIL(&e, (pump_into(&e, &b, 5, NULL, NULL),
                    count_ev(&e, PE_EV_DATA, h2) == 1));
    assert_int_equal(pe_loop_echo(e.l, &h, 1), 0);
    assert_int_equal(pe_loop_echo(e.l, &h2, 1), 1);
    assert_int_equal(recv_wait(fd2, in, sizeof(in), 2000), 1);
    /* A plain pe_loop_run in between: the batch is no longer the last. */
    assert_int_equal(send(fd2, "y", 1, 0), 1);
    PUMP_UNTIL(&e, (pump_into(&e, &b, 5, NULL, NULL),
                    count_ev(&e, PE_EV_DATA, h2) == 2));
    pump(&e, 0);
    assert_int_equal(pe_loop_echo(e.l, &h2, 1), 0);
    close(fd);
    close(fd2);
    env_close(&e);
}

/* An echo beyond out_max has nobody to report to but CLOSED(ENOBUFS). */
static void test_batch_echo_enobufs(void **state)
{
    struct pe_loop_config cfg;
    unsigned char buf[65536], out[1000] = { 0 };
    struct batch b = { buf, sizeof(buf), { { 0 } }, { 0 }, 0, 0 };
    struct echo_state st = { 0, { 0 }, 0 };
    struct env e;
    uint64_t until;
    pe_handle h;
    int fd;

    base_config(&cfg, state);
    cfg.out_max = 100;
    env_open(&e, &cfg);
    fd = tcp_client(e.port, 0);
    h = next_open(&e);
    assert_int_equal(send(fd, out, sizeof(out), 0), (ssize_t)sizeof(out));
    /* Echo each batch's bytes (one loopback segment: all 1000 at once). */
    until = now_ms() + DEADLINE_MS;
    while (!count_ev(&e, PE_EV_CLOSED, h)) {
        assert_true(now_ms() < until);
        pump_into(&e, &b, 5, batch_echo_use, &st);
        if (st.nq) {
            assert_int_equal(pe_loop_echo(e.l, st.q, st.nq), 0);
            st.nq = 0;
        }
    }
    assert_int_equal(count_ev(&e, PE_EV_CLOSED, h), 1);
    assert_int_equal(last_ev(&e, PE_EV_CLOSED, h)->arg, ENOBUFS);
    assert_int_equal(pe_loop_send(e.l, h, "x", 1), -ESTALE);
    close(fd);
    env_close(&e);
}

/* X holds unread bytes in its ring (from a plain pe_loop_run) when X and
 * Y both get more: Y is read straight into the small batch buffer, X into
 * its ring, and X's bytes do not fit behind Y's.  Whichever goes first,
 * every byte comes once and in order (Y's may have to move into its ring
 * until the next call). */
static void test_batch_direct_and_ring(void **state)
{
    struct pe_loop_config cfg;
    struct collect cx = { 0 }, cy = { 0 };
    unsigned char x[2048], y[1500], small[3000];
    struct batch b = { small, sizeof(small), { { 0 } }, { 0 }, 0, 0 };
    struct env e;
    uint64_t until;
    int fdx, fdy, n;

    base_config(&cfg, state);
    cfg.in_high = 2048;
    cfg.in_low = 0;
    env_open(&e, &cfg);
    fdx = tcp_client(e.port, 0);
    cx.h = next_open(&e);
    fdy = tcp_client(e.port, 0);
    cy.h = next_open(&e);
    fill(x, 0, sizeof(x), 5);
    fill(y, 0, sizeof(y), 6);
    assert_int_equal(send(fdx, x, 2000, 0), 2000);
    PUMP_UNTIL(&e, count_ev(&e, PE_EV_DATA, cx.h) == 1 &&
                   stats(&e).bytes_in == 2000);
    assert_int_equal(send(fdx, x + 2000, 48, 0), 48);
    assert_int_equal(send(fdy, y, sizeof(y), 0), (ssize_t)sizeof(y));
    until = now_ms() + DEADLINE_MS;
    while (cx.n < sizeof(x) || cy.n < sizeof(y)) {
        assert_true(now_ms() < until);
        n = pump_into(&e, &b, 5, NULL, NULL);
        for (int i = 0; i < n; i++) {
            const struct pe_loop_bevent *o = &b.out[i];
            struct collect *c = o->handle == cx.h ? &cx : &cy;

            if (o->kind != PE_EV_DATA)
                continue;
            assert_true(o->handle == cx.h || o->handle == cy.h);
            assert_true(c->n + o->arg <= sizeof(c->got));
            memcpy(c->got + c->n, small + o->off, o->arg);
            c->n += o->arg;
        }
    }
    assert_int_equal(cx.n, sizeof(x));
    assert_int_equal(cy.n, sizeof(y));
    assert_memory_equal(cx.got, x, sizeof(x));
    assert_memory_equal(cy.got, y, sizeof(y));
    close(fdx);
    close(fdy);
    env_close(&e);
}

/* A DATA left queued (beyond max) whose handle then went stale is not
 * handed out by pe_loop_run_into: there are no bytes to give, and CLOSED
 * says what happened. */
static void test_batch_stale_data_dropped(void **state)
{
    struct pe_loop_config cfg;
    unsigned char buf[65536];
    struct batch b = { buf, sizeof(buf), { { 0 } }, { 0 }, 0, 0 };
    struct env e;
    pe_handle h[2], first, other;
    int fd[2];

    base_config(&cfg, state);
    env_open(&e, &cfg);
    for (int i = 0; i < 2; i++) {
        fd[i] = tcp_client(e.port, 0);
        h[i] = next_open(&e);
    }
    /* Loopback delivers within send(): both are readable at the next run,
     * which reads both and hands out one DATA. */
    for (int i = 0; i < 2; i++)
        assert_int_equal(send(fd[i], "abc", 3, 0), 3);
    assert_int_equal(pump_max(&e, 1000, 1), 1);
    assert_int_equal(e.ev[e.nev - 1].kind, PE_EV_DATA);
    assert_int_equal(stats(&e).bytes_in, 6);
    first = e.ev[e.nev - 1].handle;
    other = first == h[0] ? h[1] : h[0];
    assert_int_equal(pe_loop_close(e.l, other, PE_CLOSE_NOW), 0);
    pump_into(&e, &b, 0, NULL, NULL);
    assert_int_equal(count_ev(&e, PE_EV_DATA, other), 0);
    assert_int_equal(count_ev(&e, PE_EV_CLOSED, other), 1);
    assert_int_equal(stats(&e).events, 4);   /* 2 OPEN, DATA, CLOSED */
    for (int i = 0; i < 2; i++)
        close(fd[i]);
    env_close(&e);
}

/* ---------------------------------------------------------- canned answers */

#define ASK "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
#define ANSWER "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"

/* Runs the loop until the client has received k answers; checks them. */
static size_t canned_exchange(struct env *e, struct batch *b, int fd,
                              size_t k)
{
    char got[64 * sizeof(ANSWER)];
    size_t want = k * (sizeof(ANSWER) - 1), n = 0;
    uint64_t until = now_ms() + DEADLINE_MS;
    ssize_t r;

    while (n < want) {
        assert_true(now_ms() < until);
        pump_into(e, b, 5, NULL, NULL);
        r = recv(fd, got + n, sizeof(got) - n, MSG_DONTWAIT);
        if (r > 0)
            n += (size_t)r;
    }
    assert_int_equal(n, want);
    for (size_t i = 0; i < k; i++)
        assert_memory_equal(got + i * (sizeof(ANSWER) - 1), ANSWER,
                            sizeof(ANSWER) - 1);
    return n;
}

/* PUMP_UNTIL through pe_loop_run_into, the only run that answers. */
#define PUMP_INTO_UNTIL(e, b, cond)                                    \
    do {                                                               \
        uint64_t until_ = now_ms() + DEADLINE_MS;                      \
        while (!(cond)) {                                              \
            if (now_ms() > until_)                                     \
                fail_msg("timed out waiting for: %s", #cond);          \
            pump_into((e), (b), 5, NULL, NULL);                        \
        }                                                              \
    } while (0)

/* A marked connection's exact asks (one, or a pipelined run) are answered
 * in C without DATA; anything else comes as DATA and unmarks it; an
 * unmarked connection, a stale answer, a run over PE_CANNED_RUN or a
 * cleared ask come as DATA too. */
static void test_canned(void **state)
{
    static unsigned char buf[65536];
    static struct batch b;
    struct pe_loop_config cfg;
    char run[65 * sizeof(ASK)];
    struct env e;
    pe_handle h, h2;
    int fd, fd2;
    size_t d;

    b.buf = buf;
    b.len = sizeof(buf);
    base_config(&cfg, state);
    env_open(&e, &cfg);
    fd = tcp_client(e.port, 0);
    h = next_open(&e);
    fd2 = tcp_client(e.port, 0);
    h2 = next_open(&e);
    assert_int_equal(pe_loop_set_canned(e.l, ASK, sizeof(ASK) - 1, ANSWER,
                                        sizeof(ANSWER) - 1,
                                        (int64_t)time(NULL) + 3600), 0);
    assert_int_equal(pe_loop_canned_mark(e.l, h, 1), 0);

    assert_int_equal(send(fd, ASK, sizeof(ASK) - 1, 0), sizeof(ASK) - 1);
    canned_exchange(&e, &b, fd, 1);
    for (size_t i = 0; i < 3; i++)
        memcpy(run + i * (sizeof(ASK) - 1), ASK, sizeof(ASK) - 1);
    assert_int_equal(send(fd, run, 3 * (sizeof(ASK) - 1), 0),
                     3 * (sizeof(ASK) - 1));
    canned_exchange(&e, &b, fd, 3);
    assert_int_equal(count_ev(&e, PE_EV_DATA, h), 0);
    assert_int_equal(stats(&e).canned, 4);

    /* The unmarked connection gets its ask as DATA. */
    assert_int_equal(send(fd2, ASK, sizeof(ASK) - 1, 0), sizeof(ASK) - 1);
    PUMP_INTO_UNTIL(&e, &b, count_ev(&e, PE_EV_DATA, h2) == 1);

    /* Other bytes: DATA, and the mark is gone (the next ask is DATA). */
    assert_int_equal(send(fd, "GET /x", 6, 0), 6);
    PUMP_INTO_UNTIL(&e, &b, count_ev(&e, PE_EV_DATA, h) == 1);
    assert_int_equal(last_ev(&e, PE_EV_DATA, h)->arg, 6);
    assert_int_equal(send(fd, ASK, sizeof(ASK) - 1, 0), sizeof(ASK) - 1);
    PUMP_INTO_UNTIL(&e, &b, count_ev(&e, PE_EV_DATA, h) == 2);

    /* More than PE_CANNED_RUN asks in one read: DATA. */
    assert_int_equal(pe_loop_canned_mark(e.l, h, 1), 0);
    for (size_t i = 0; i < PE_CANNED_RUN + 1; i++)
        memcpy(run + i * (sizeof(ASK) - 1), ASK, sizeof(ASK) - 1);
    d = (PE_CANNED_RUN + 1) * (sizeof(ASK) - 1);
    assert_int_equal(send(fd, run, d, 0), (ssize_t)d);
    PUMP_INTO_UNTIL(&e, &b, count_ev(&e, PE_EV_DATA, h) == 3);

    /* A stale answer (until passed): DATA. */
    assert_int_equal(pe_loop_canned_mark(e.l, h, 1), 0);
    assert_int_equal(pe_loop_set_canned(e.l, ASK, sizeof(ASK) - 1, ANSWER,
                                        sizeof(ANSWER) - 1,
                                        (int64_t)time(NULL)), 0);
    assert_int_equal(send(fd, ASK, sizeof(ASK) - 1, 0), sizeof(ASK) - 1);
    PUMP_INTO_UNTIL(&e, &b, count_ev(&e, PE_EV_DATA, h) == 4);

    /* Cleared: DATA. */
    assert_int_equal(pe_loop_canned_mark(e.l, h, 1), 0);
    assert_int_equal(pe_loop_set_canned(e.l, NULL, 0, NULL, 0, 0), 0);
    assert_int_equal(send(fd, ASK, sizeof(ASK) - 1, 0), sizeof(ASK) - 1);
    PUMP_INTO_UNTIL(&e, &b, count_ev(&e, PE_EV_DATA, h) == 5);
    assert_int_equal(stats(&e).canned, 4);
    close(fd);
    close(fd2);
    env_close(&e);
}

static void test_canned_refusals(void **state)
{
    struct pe_loop_config cfg;
    static char big[PE_CANNED_MAX + 1];
    struct env e;
    pe_handle h;
    int fd;

    base_config(&cfg, state);
    env_open(&e, &cfg);
    assert_int_equal(pe_loop_set_canned(e.l, NULL, 3, "a", 1, 0), -EINVAL);
    assert_int_equal(pe_loop_set_canned(e.l, "abc", 3, NULL, 1, 0), -EINVAL);
    assert_int_equal(pe_loop_set_canned(e.l, "abc", 3, "a", 0, 0), -EINVAL);
    assert_int_equal(pe_loop_set_canned(e.l, big, sizeof(big), "a", 1, 0),
                     -EINVAL);
    assert_int_equal(pe_loop_set_canned(e.l, "abc", 3, big, sizeof(big), 0),
                     -EINVAL);
    assert_int_equal(pe_loop_canned_mark(e.l, 12345, 1), -ESTALE);
    fd = tcp_client(e.port, 0);
    h = next_open(&e);
    assert_int_equal(pe_loop_canned_mark(e.l, h, 1), 0);
    assert_int_equal(pe_loop_close(e.l, h, PE_CLOSE_NOW), 0);
    assert_int_equal(pe_loop_canned_mark(e.l, h, 0), -ESTALE);
    close(fd);
    env_close(&e);
}

/* After pe_loop_shutdown an answer cannot be sent: the ask comes as DATA
 * and the connection stays open for the rest of its input (it was eaten,
 * counted and the connection closed with EPIPE: found by fuzz_loop). */
static void test_canned_after_shutdown(void **state)
{
    static unsigned char buf[65536];
    static struct batch b;
    struct pe_loop_config cfg;
    struct env e;
    pe_handle h;
    char c;
    int fd;

    b.buf = buf;
    b.len = sizeof(buf);
    base_config(&cfg, state);
    env_open(&e, &cfg);
    fd = tcp_client(e.port, 0);
    h = next_open(&e);
    assert_int_equal(pe_loop_set_canned(e.l, ASK, sizeof(ASK) - 1, ANSWER,
                                        sizeof(ANSWER) - 1,
                                        (int64_t)time(NULL) + 3600), 0);
    assert_int_equal(pe_loop_canned_mark(e.l, h, 1), 0);
    assert_int_equal(pe_loop_shutdown(e.l, h), 0);
    assert_int_equal(recv(fd, &c, 1, 0), 0);          /* EOF: shut down */
    assert_int_equal(send(fd, ASK, sizeof(ASK) - 1, 0), sizeof(ASK) - 1);
    PUMP_INTO_UNTIL(&e, &b, count_ev(&e, PE_EV_DATA, h) == 1 ||
                                count_ev(&e, PE_EV_CLOSED, h) == 1);
    assert_int_equal(count_ev(&e, PE_EV_CLOSED, h), 0);
    assert_int_equal(last_ev(&e, PE_EV_DATA, h)->arg, sizeof(ASK) - 1);
    assert_int_equal(stats(&e).canned, 0);
    assert_int_equal(pe_loop_buffered(e.l, h, NULL, NULL), 0);
    close(fd);
    env_close(&e);
}

/* A wait without a timeout whose reads were all answered in C returns 0,
 * no events (its caller runs signal handlers and waits again), the
 * answer out. */
static void test_canned_returns_no_events(void **state)
{
    static unsigned char buf[65536];
    static struct batch b;
    struct pe_loop_config cfg;
    char got[sizeof(ANSWER)];
    struct env e;
    pe_handle h;
    int fd, n;

    b.buf = buf;
    b.len = sizeof(buf);
    base_config(&cfg, state);
    env_open(&e, &cfg);
    fd = tcp_client(e.port, 0);
    h = next_open(&e);
    assert_int_equal(pe_loop_set_canned(e.l, ASK, sizeof(ASK) - 1, ANSWER,
                                        sizeof(ANSWER) - 1,
                                        (int64_t)time(NULL) + 3600), 0);
    assert_int_equal(pe_loop_canned_mark(e.l, h, 1), 0);
    assert_int_equal(send(fd, ASK, sizeof(ASK) - 1, 0), sizeof(ASK) - 1);
    n = pump_into(&e, &b, -1, NULL, NULL);
    assert_int_equal(n, 0);
    assert_int_equal(stats(&e).canned, 1);
    assert_int_equal(recv_wait(fd, got, sizeof(got), 1000),
                     sizeof(ANSWER) - 1);
    assert_memory_equal(got, ANSWER, sizeof(ANSWER) - 1);
    /* Still marked: the next ask is answered the same way. */
    assert_int_equal(send(fd, ASK, sizeof(ASK) - 1, 0), sizeof(ASK) - 1);
    assert_int_equal(pump_into(&e, &b, -1, NULL, NULL), 0);
    assert_int_equal(stats(&e).canned, 2);
    assert_int_equal(recv_wait(fd, got, sizeof(got), 1000),
                     sizeof(ANSWER) - 1);
    close(fd);
    env_close(&e);
}

/* Two connections answered without an event in one run: both answers
 * are out and nothing is reported. */
static void test_canned_two_no_events(void **state)
{
    static unsigned char buf[65536];
    static struct batch b;
    struct pe_loop_config cfg;
    char got[sizeof(ANSWER)];
    struct env e;
    pe_handle h[2];
    int fd[2], n, answered = 0;

    b.buf = buf;
    b.len = sizeof(buf);
    base_config(&cfg, state);
    env_open(&e, &cfg);
    assert_int_equal(pe_loop_set_canned(e.l, ASK, sizeof(ASK) - 1, ANSWER,
                                        sizeof(ANSWER) - 1,
                                        (int64_t)time(NULL) + 3600), 0);
    for (int i = 0; i < 2; i++) {
        fd[i] = tcp_client(e.port, 0);
        h[i] = next_open(&e);
        assert_int_equal(pe_loop_canned_mark(e.l, h[i], 1), 0);
    }
    for (int i = 0; i < 2; i++)
        assert_int_equal(send(fd[i], ASK, sizeof(ASK) - 1, 0),
                         sizeof(ASK) - 1);
    /* Loopback has both asks in place already; a backend may still hand
     * them over in two runs, each with no events. */
    for (int tries = 0; tries < 50 && answered < 2; tries++) {
        n = pump_into(&e, &b, 100, NULL, NULL);
        assert_int_equal(n, 0);
        answered = (int)stats(&e).canned;
    }
    assert_int_equal(answered, 2);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(recv_wait(fd[i], got, sizeof(got), 1000),
                         sizeof(ANSWER) - 1);
        assert_memory_equal(got, ANSWER, sizeof(ANSWER) - 1);
        close(fd[i]);
    }
    env_close(&e);
}

/* --------------------------------------------------- runs repeated inside */

/* A blocking client thread: rounds of `ask` answered by `answer` (each
 * checked), then a half-close; or, with wake_fd >= 0, a byte written to
 * wake_fd instead (a signal's wakeup). */
struct asker {
    int fd, wake_fd, rounds, done;
    const char *ask, *answer;
    size_t asklen, anslen;
};

static void *asker_main(void *arg)
{
    struct asker *a = arg;
    char got[256];

    for (a->done = 0; a->done < a->rounds; a->done++) {
        size_t n = 0;
        ssize_t r;

        if (send(a->fd, a->ask, a->asklen, 0) != (ssize_t)a->asklen)
            return NULL;
        while (n < a->anslen) {
            if ((r = recv_wait(a->fd, got + n, a->anslen - n,
                               DEADLINE_MS)) <= 0)
                return NULL;
            n += (size_t)r;
        }
        if (memcmp(got, a->answer, a->anslen) != 0)
            return NULL;
    }
    if (a->wake_fd >= 0)
        (void)!write(a->wake_fd, "s", 1);
    else
        shutdown(a->fd, SHUT_WR);
    return NULL;
}

static void repeat_setup(struct env *e, void **state, struct batch *b,
                         unsigned char *buf, size_t len)
{
    struct pe_loop_config cfg;

    base_config(&cfg, state);
    env_open(e, &cfg);
    b->buf = buf;
    b->len = len;
    b->necho = 0;
    assert_int_equal(pe_loop_batch_setup(e->l, b->echo, 256, b->out, 256,
                                         b->buf, b->len), 0);
}

/* ECHO_DATA: 200 round trips, each a batch of one DATA, are all echoed
 * inside one call, which returns with the client's EOF; the events count
 * every DATA.  (AGAIN_EMPTY: edge mode's poll for a pending read may
 * make a run return nothing early.) */
static void test_run_repeat_echo(void **state)
{
    static unsigned char buf[65536];
    static struct batch b;
    struct asker a = { -1, -1, 200, 0, NULL, NULL, 64, 64 };
    char msg[64];
    struct pe_loop_stats before;
    struct env e;
    pthread_t t;
    pe_handle h;
    int n;

    repeat_setup(&e, state, &b, buf, sizeof(buf));
    memset(msg, 'e', sizeof(msg));
    a.ask = a.answer = msg;
    a.fd = tcp_client(e.port, 0);
    h = next_open(&e);
    before = stats(&e);
    assert_int_equal(pthread_create(&t, NULL, asker_main, &a), 0);
    n = pe_loop_run_batch_repeat(e.l, 0, DEADLINE_MS,
                                 PE_RUN_ECHO_DATA | PE_RUN_AGAIN_EMPTY);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(a.done, 200);
    assert_int_equal(n, 1);
    assert_int_equal(b.out[0].kind, PE_EV_EOF);
    assert_true(b.out[0].handle == h);
    assert_int_equal(stats(&e).bytes_out - before.bytes_out, 200 * 64);
    assert_int_equal(stats(&e).events - before.events, 201);
    close(a.fd);
    env_close(&e);
}

/* AGAIN_EMPTY: runs whose reads were all answered (canned) follow each
 * other inside one call, which returns 0 once a watch_wake fd is read;
 * a byte already there ends the call after one run. */
static void test_run_repeat_canned_until_woken(void **state)
{
    static unsigned char buf[65536];
    static struct batch b;
    struct asker a = { -1, -1, 100, 0, ASK, ANSWER, sizeof(ASK) - 1,
                       sizeof(ANSWER) - 1 };
    struct env e;
    pthread_t t;
    pe_handle h;
    int wp[2];

    repeat_setup(&e, state, &b, buf, sizeof(buf));
    assert_int_equal(pipe2(wp, O_NONBLOCK | O_CLOEXEC), 0);
    assert_int_equal(pe_loop_watch_wake(e.l, wp[0], 1), 0);
    a.wake_fd = wp[1];
    a.fd = tcp_client(e.port, 0);
    h = next_open(&e);
    assert_int_equal(pe_loop_set_canned(e.l, ASK, sizeof(ASK) - 1, ANSWER,
                                        sizeof(ANSWER) - 1,
                                        (int64_t)time(NULL) + 3600), 0);
    assert_int_equal(pe_loop_canned_mark(e.l, h, 1), 0);
    assert_int_equal(pthread_create(&t, NULL, asker_main, &a), 0);
    assert_int_equal(pe_loop_run_batch_repeat(e.l, 0, -1,
                                              PE_RUN_AGAIN_EMPTY), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(a.done, 100);
    assert_int_equal(stats(&e).canned, 100);
    /* Woken before the call: one run, nothing to report. */
    assert_int_equal(write(wp[1], "s", 1), 1);
    assert_int_equal(pe_loop_run_batch_repeat(e.l, 0, -1,
                                              PE_RUN_AGAIN_EMPTY |
                                              PE_RUN_ECHO_DATA), 0);
    assert_int_equal(pe_loop_watch_wake(e.l, wp[0], 0), 0);
    close(wp[0]);
    close(wp[1]);
    close(a.fd);
    env_close(&e);
}

/* Without flags it is one run (a DATA batch comes back unanswered); with
 * a timeout, a data-only batch that came when the time was up is the
 * caller's; bad flags and a loop without setup are refused. */
static void test_run_repeat_once_and_refusals(void **state)
{
    static unsigned char buf[65536];
    static struct batch b;
    struct pe_loop_config cfg;
    char got[8];
    struct env e;
    pe_handle h;
    int fd, n;

    base_config(&cfg, state);
    env_open(&e, &cfg);
    assert_int_equal(pe_loop_run_batch_repeat(e.l, 0, 0, 0), -EINVAL);
    env_close(&e);
    repeat_setup(&e, state, &b, buf, sizeof(buf));
    assert_int_equal(pe_loop_run_batch_repeat(e.l, 0, 0, 0x4), -EINVAL);
    fd = tcp_client(e.port, 0);
    h = next_open(&e);
    assert_int_equal(send(fd, "ping", 4, 0), 4);
    n = pe_loop_run_batch_repeat(e.l, 0, DEADLINE_MS, 0);
    assert_int_equal(n, 1);
    assert_int_equal(b.out[0].kind, PE_EV_DATA);
    assert_true(b.out[0].handle == h);
    assert_int_equal(recv_wait(fd, got, sizeof(got), 50), -2);
    /* Time up (a poll): the data-only batch is returned, not echoed. */
    assert_int_equal(send(fd, "pong", 4, 0), 4);
    sleep_ms(20);
    n = pe_loop_run_batch_repeat(e.l, 0, 0, PE_RUN_ECHO_DATA);
    assert_int_equal(n, 1);
    assert_int_equal(b.out[0].kind, PE_EV_DATA);
    assert_memory_equal(buf + b.out[0].off, "pong", 4);
    assert_int_equal(recv_wait(fd, got, sizeof(got), 50), -2);
    /* The caller's echoes go out with the first run. */
    b.echo[0] = h;
    assert_int_equal(pe_loop_run_batch_repeat(e.l, 1, 0, PE_RUN_ECHO_DATA),
                     0);
    assert_int_equal(recv_wait(fd, got, sizeof(got), 1000), 4);
    assert_memory_equal(got, "pong", 4);
    close(fd);
    env_close(&e);
}

/* ------------------------------------------------------------------ main */

#define T(f) cmocka_unit_test(f)

/* Events put back with pe_loop_unget come out of the next run first, in
 * their order, without blocking, before an event queued earlier; a DATA
 * event put back still has its bytes unread; the queue grows past its
 * first 256 entries to take them; the events count is not doubled. */
static void test_unget(void **state)
{
    struct pe_loop_config cfg;
    struct pe_loop_stats st;
    struct pe_loop_event back[300], out[400];
    struct env e;
    pe_handle h;
    char buf[16];
    uint64_t events;
    int c, n, i;

    base_config(&cfg, state);
    env_open(&e, &cfg);
    c = tcp_client(e.port, 0);
    h = next_open(&e);
    assert_int_equal(send(c, "ping", 4, 0), 4);
    PUMP_UNTIL(&e, count_ev(&e, PE_EV_DATA, h) == 1);
    assert_int_equal(pe_loop_get_stats(e.l, &st), 0);
    events = st.events;
    /* The DATA event goes back, behind 299 made-up wakeups before it and
     * a real wakeup already queued behind them all. */
    for (i = 0; i < 299; i++) {
        back[i].kind = PE_EV_WAKEUP;
        back[i].arg = (uint32_t)i;
        back[i].handle = 0;
    }
    back[299] = *last_ev(&e, PE_EV_DATA, h);
    assert_int_equal(pe_loop_wakeup(e.l), 0);
    assert_int_equal(pe_loop_unget(e.l, back, 300), 0);
    n = pe_loop_run(e.l, out, 400, -1);     /* must not block */
    assert_int_equal(n, 301);
    for (i = 0; i < 300; i++) {
        assert_int_equal(out[i].kind, back[i].kind);
        assert_int_equal(out[i].arg, back[i].arg);
        assert_int_equal(out[i].handle, back[i].handle);
    }
    assert_int_equal(out[300].kind, PE_EV_WAKEUP);
    assert_int_equal(pe_loop_get_stats(e.l, &st), 0);
    assert_int_equal(st.events, events + 1);
    assert_int_equal(pe_loop_read(e.l, h, buf, sizeof(buf)), 4);
    assert_memory_equal(buf, "ping", 4);
    /* Nothing else is queued; refusals change nothing. */
    assert_int_equal(pe_loop_unget(e.l, back, -1), -EINVAL);
    assert_int_equal(pe_loop_unget(e.l, NULL, 1), -EINVAL);
    assert_int_equal(pe_loop_unget(e.l, NULL, 0), 0);
    assert_int_equal(pe_loop_run(e.l, out, 400, 0), 0);
    close(c);
    env_close(&e);
}

int main(void)
{
    struct CMUnitTest per_mode[] = {
        T(test_echo_c),
        T(test_echo_user),
        T(test_echo_syscalls),
        T(test_echo_backpressure),
        T(test_partial_writes),
        T(test_coalesce),
        T(test_write_full_enobufs),
        T(test_peer_reset),
        T(test_half_close),
        T(test_close_modes),
        cmocka_unit_test_teardown(test_emfile, restore_nofile),
        T(test_max_conns_backlog),
        T(test_max_conns_close),
        T(test_idle_timeout),
        T(test_read_timeout),
        T(test_pause_resume),
        T(test_pause_resume_small),
        T(test_wakeup),
        T(test_busy_poll),
        T(test_wakeup_coalesces),
        T(test_wakeup_never_lost),
        T(test_threads_busy),
        T(test_threads_teardown),
        T(test_stale_handle),
        T(test_events_beyond_max),
        T(test_unget),
        T(test_no_sigpipe),
        T(test_listeners),
        T(test_listeners_and_data_in_one_run),
        T(test_batch_echo_reply),
        T(test_batch_echo_queued),
        T(test_batch_echo_in_run),
        T(test_batch_echo_run_batch),
        T(test_batch_setup_refusals),
        T(test_batch_small_buffer),
        T(test_batch_echo_refusals),
        T(test_batch_echo_enobufs),
        T(test_run_repeat_echo),
        T(test_run_repeat_canned_until_woken),
        T(test_run_repeat_once_and_refusals),
        T(test_batch_stale_data_dropped),
        T(test_batch_direct_and_ring),
        T(test_canned),
        T(test_canned_refusals),
        T(test_canned_after_shutdown),
        T(test_canned_returns_no_events),
        T(test_canned_two_no_events),
    };
    const struct CMUnitTest once[] = { T(test_config) };
    int failed = run_per_mode("", per_mode,
                              sizeof(per_mode) / sizeof(per_mode[0]));

    failed += cmocka_run_group_tests_name("loop", once, NULL, NULL);
    return failed;
}

/*
 * loadgen.c - the load client of python -m pyepoll.bench.
 *
 * Written in C so that the client is not what limits a Python server.  One
 * thread, one epoll, CONNS blocking sockets (a write of one message never
 * waits long: only one message or batch is in flight per connection, so
 * the server is always reading).
 *
 *   loadgen echo PORT CONNS SECONDS SIZE
 *       one SIZE-byte message in flight per connection; every echoed byte
 *       is checked against what was sent (each message has its own bytes).
 *   loadgen http PORT CONNS SECONDS DEPTH
 *       DEPTH pipelined "GET /" per connection in flight (1: plain
 *       keep-alive); every response must be "HTTP/1.x 200" with a
 *       Content-Length body.
 *
 * Prints one line:
 *   ops ops_per_s bad closed p50_us p99_us p999_us
 * ops = messages echoed or responses received; bad = wrong bytes (echo) or
 * non-200 / malformed responses (http); closed = connections the server
 * closed before the end (they are not reopened); latencies are round trips
 * of one message (echo) or one pipelined batch (http), from a histogram
 * with about 1.5% resolution.  Exit status 1 if anything was bad, or no
 * connection could be opened.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAXMSG 65536
#define HBUF 65536

struct conn {
    int fd;
    unsigned seq;           /* message number (echo) */
    size_t got;             /* bytes of the current echo / buffered (http) */
    int pending;            /* responses still expected (http) */
    const char *msg;        /* current message: a window into `pattern` */
    uint64_t sent_ns;       /* when the message or batch went out */
    char *in;               /* http: unparsed response bytes */
};

/* Messages are windows at varying offsets into one random pattern, so
 * every message differs without costing the client a loop to build it. */
static char pattern[2 * MAXMSG];

static const char request[] = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
static char *batch;            /* DEPTH requests back to back */
static size_t batch_len;

/* Latency histogram: exact below 128 ns, then 64 buckets per power of two
 * (values v with highest bit b >= 7 share a bucket per 2^(b-6) ns). */
#define NBUCKETS (128 + 58 * 64)
static uint64_t hist[NBUCKETS];

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void record(uint64_t v)
{
    int b, shift;
    size_t idx;

    if (v < 128) {
        hist[v]++;
        return;
    }
    b = 63 - __builtin_clzll(v);
    shift = b - 6;
    idx = 128 + (size_t)(shift - 1) * 64 + (size_t)((v >> shift) - 64);
    hist[idx < NBUCKETS ? idx : NBUCKETS - 1]++;
}

/* The middle of the bucket holding the q-quantile, in microseconds. */
static double quantile_us(double q)
{
    uint64_t total = 0, want, seen = 0;

    for (size_t i = 0; i < NBUCKETS; i++)
        total += hist[i];
    if (total == 0)
        return 0;
    want = (uint64_t)(q * (double)(total - 1)) + 1;
    for (size_t i = 0; i < NBUCKETS; i++) {
        seen += hist[i];
        if (seen >= want) {
            if (i < 128)
                return (double)i / 1000.0;
            size_t shift = (i - 128) / 64 + 1, sub = (i - 128) % 64 + 64;
            double lo = (double)((uint64_t)sub << shift);

            return (lo + (double)((uint64_t)1 << shift) / 2) / 1000.0;
        }
    }
    return 0;
}

static int connect_retry(int port)
{
    struct sockaddr_in sa;
    uint64_t until = now_ns() + 3000000000u;
    int one = 1;

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons((unsigned short)port);
    for (;;) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

        if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            return fd;
        }
        if (fd >= 0)
            close(fd);
        if (now_ns() > until)
            return -1;
        usleep(10000);
    }
}

static void next_msg(struct conn *c, int id)
{
    c->msg = pattern + ((c->seq * 131u + (unsigned)id * 977u) & (MAXMSG - 1));
}

static int send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);

        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Parse complete responses at the start of c->in.  Returns how many were
 * consumed, adds non-200 or malformed ones to *bad; -1 if the stream cannot
 * be followed any more. */
static int parse_responses(struct conn *c, unsigned long long *bad)
{
    size_t off = 0;
    int n = 0;

    for (;;) {
        char *head = c->in + off, *end, *cl;
        size_t avail = c->got - off, head_len, body;

        end = memmem(head, avail, "\r\n\r\n", 4);
        if (!end)
            break;
        head_len = (size_t)(end - head) + 4;
        if (avail < 12 || memcmp(head, "HTTP/1.", 7) != 0)
            return -1;
        body = 0;
        cl = memmem(head, head_len, "\r\nContent-Length:", 17);
        if (!cl)
            cl = memmem(head, head_len, "\r\ncontent-length:", 17);
        if (cl)
            body = strtoul(cl + 17, NULL, 10);
        if (avail < head_len + body)
            break;
        if (memcmp(head + 8, " 200", 4) != 0)
            (*bad)++;
        off += head_len + body;
        n++;
    }
    if (off > 0) {
        memmove(c->in, c->in + off, c->got - off);
        c->got -= off;
    }
    if (c->got == HBUF)
        return -1;          /* a head larger than the buffer */
    return n;
}

int main(int argc, char **argv)
{
    int port, nconn, ep, http, depth = 1, open_conns = 0;
    double secs;
    size_t size = 0;
    uint64_t t0, t1, deadline;
    unsigned long long ops = 0, bad = 0, closed = 0;
    struct epoll_event ev, evs[256];
    struct conn *cs;
    static char buf[MAXMSG];

    if (argc != 6 || (strcmp(argv[1], "echo") && strcmp(argv[1], "http"))) {
        fprintf(stderr, "usage: %s echo|http PORT CONNS SECONDS SIZE|DEPTH\n",
                argv[0]);
        return 2;
    }
    http = strcmp(argv[1], "http") == 0;
    port = atoi(argv[2]);
    nconn = atoi(argv[3]);
    secs = atof(argv[4]);
    if (http)
        depth = atoi(argv[5]);
    else
        size = (size_t)atol(argv[5]);
    if (nconn <= 0 || secs <= 0 || depth <= 0 || depth > 1024 ||
        (!http && (size == 0 || size > MAXMSG)))
        return 2;
    signal(SIGPIPE, SIG_IGN);
    srand(12345);
    for (size_t i = 0; i < sizeof(pattern); i++)
        pattern[i] = (char)rand();
    if (http) {
        batch_len = (size_t)depth * (sizeof(request) - 1);
        batch = malloc(batch_len);
        for (int i = 0; i < depth; i++)
            memcpy(batch + (size_t)i * (sizeof(request) - 1), request,
                   sizeof(request) - 1);
    }
    cs = calloc((size_t)nconn, sizeof(*cs));
    ep = epoll_create1(EPOLL_CLOEXEC);
    for (int i = 0; i < nconn; i++) {
        if ((cs[i].fd = connect_retry(port)) < 0) {
            perror("connect");
            return 1;
        }
        if (http)
            cs[i].in = malloc(HBUF);
        ev.events = EPOLLIN;
        ev.data.u32 = (unsigned)i;
        epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
        open_conns++;
    }
    t0 = now_ns();
    deadline = t0 + (uint64_t)(secs * 1e9);
    for (int i = 0; i < nconn; i++) {
        struct conn *c = &cs[i];
        int rc;

        c->sent_ns = t0;
        if (http) {
            c->pending = depth;
            rc = send_all(c->fd, batch, batch_len);
        } else {
            next_msg(c, i);
            rc = send_all(c->fd, c->msg, size);
        }
        if (rc < 0) {
            close(c->fd);
            c->fd = -1;
            closed++;
            open_conns--;
        }
    }
    while ((t1 = now_ns()) < deadline && open_conns > 0) {
        int n = epoll_wait(ep, evs, 256, 50);

        for (int k = 0; k < n; k++) {
            int i = (int)evs[k].data.u32;
            struct conn *c = &cs[i];
            ssize_t r;
            int done = 0;

            if (c->fd < 0)
                continue;
            if (http)
                r = read(c->fd, c->in + c->got, HBUF - c->got);
            else
                r = read(c->fd, buf, size - c->got);
            if (r < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (r <= 0)
                goto drop;
            if (http) {
                int got;

                c->got += (size_t)r;
                if ((got = parse_responses(c, &bad)) < 0) {
                    bad++;
                    goto drop;
                }
                ops += (unsigned long long)got;
                c->pending -= got;
                done = c->pending <= 0;
            } else {
                for (ssize_t j = 0; j < r; j++)
                    bad += buf[j] != c->msg[c->got + (size_t)j];
                c->got += (size_t)r;
                done = c->got == size;
                if (done) {
                    ops++;
                    c->got = 0;
                }
            }
            if (!done)
                continue;
            t1 = now_ns();
            record(t1 - c->sent_ns);
            if (t1 >= deadline)
                continue;
            c->sent_ns = t1;
            if (http) {
                c->pending = depth;
                if (send_all(c->fd, batch, batch_len) < 0)
                    goto drop;
            } else {
                c->seq++;
                next_msg(c, i);
                if (send_all(c->fd, c->msg, size) < 0)
                    goto drop;
            }
            continue;
drop:
            close(c->fd);       /* closing also leaves the epoll set */
            c->fd = -1;
            closed++;
            open_conns--;
        }
    }
    t1 = now_ns();
    printf("%llu %.1f %llu %llu %.2f %.2f %.2f\n", ops,
           (double)ops / ((double)(t1 - t0) / 1e9), bad, closed,
           quantile_us(0.50), quantile_us(0.99), quantile_us(0.999));
    for (int i = 0; i < nconn; i++) {
        if (cs[i].fd >= 0)
            close(cs[i].fd);
        free(cs[i].in);
    }
    free(cs);
    free(batch);
    return bad ? 1 : 0;
}

/*
 * soak_client.c - open, use once and close TOTAL connections against a
 * server, CONC at a time, from one thread (epoll).  Built and driven by
 * scripts/soak.py; usable alone:
 *
 *   cc -O2 -o soak_client scripts/soak_client.c
 *   ./soak_client HOST PORT TOTAL CONC http|echo [linger0] [NSRC]
 *
 * Each connection sends one request ("GET / HTTP/1.1" or one echo line),
 * reads the whole answer (HTTP: head + Content-Length body; echo: the line
 * back), checks it, and closes.  Source addresses rotate over NSRC
 * loopback addresses 127.1.x.y (IP_BIND_ADDRESS_NO_PORT: the port is
 * picked at connect time for the full 4-tuple), so TIME_WAIT entries left
 * by our closes spread over NSRC times the ephemeral port range.  With
 * linger0 the client closes with SO_LINGER 0 (an RST, no TIME_WAIT).
 *
 * Prints "progress DONE ERRORS" every 100 ms and "final DONE ERRORS
 * SECONDS" at the end, all on stdout; exit status 0 when no connection
 * failed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

enum { ST_CONNECTING, ST_READING };

struct conn {
    int fd;
    int state;
    size_t got;
    char buf[512];
};

static struct sockaddr_in dst;
static int http, linger0, nsrc;
static const char *req;
static size_t reqlen;
static long started, done, errors, total;   /* started: attempts */
static unsigned src_next;

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int open_one(int ep, struct conn *c)
{
    struct epoll_event ev;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;

    started++;                   /* attempts: a failure counts as an error */
    if (fd < 0)
        return -1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (nsrc > 0) {
        struct sockaddr_in src;
        unsigned k = src_next++ % (unsigned)nsrc;

        memset(&src, 0, sizeof(src));
        src.sin_family = AF_INET;
        src.sin_addr.s_addr = htonl(0x7f010000u | ((k / 250 + 1) << 8) |
                                    (k % 250 + 1));
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
        if (bind(fd, (struct sockaddr *)&src, sizeof(src)) < 0) {
            close(fd);
            return -1;
        }
    }
    if (connect(fd, (struct sockaddr *)&dst, sizeof(dst)) < 0 &&
        errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    c->fd = fd;
    c->state = ST_CONNECTING;
    c->got = 0;
    ev.events = EPOLLOUT;
    ev.data.ptr = c;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
        close(fd);
        return -1;
    }
    return 0;
}

static void finish(int ep, struct conn *c, int ok)
{
    if (linger0) {
        struct linger lg = { 1, 0 };

        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    if (ok)
        done++;
    else
        errors++;
}

/* 1: complete and right, 0: need more, -1: wrong. */
static int answer_done(const struct conn *c)
{
    const char *end, *cl;
    size_t head, body;

    if (!http)
        return c->got < reqlen ? 0 : memcmp(c->buf, req, reqlen) == 0 ? 1 : -1;
    if (c->got < 12)
        return 0;
    if (memcmp(c->buf, "HTTP/1.1 200", 12) != 0)
        return -1;
    end = memmem(c->buf, c->got, "\r\n\r\n", 4);
    if (!end)
        return c->got < sizeof(c->buf) ? 0 : -1;
    head = (size_t)(end - c->buf) + 4;
    cl = memmem(c->buf, head, "Content-Length: ", 16);
    if (!cl)
        return -1;
    body = strtoul(cl + 16, NULL, 10);
    return c->got >= head + body ? 1 : 0;
}

static void step(int ep, struct conn *c, uint32_t events)
{
    ssize_t n;
    int r;

    if (c->state == ST_CONNECTING) {
        struct epoll_event ev;

        if (events & (EPOLLERR | EPOLLHUP)) {
            finish(ep, c, 0);
            return;
        }
        /* A request this small always fits an empty socket buffer. */
        if (send(c->fd, req, reqlen, MSG_NOSIGNAL) != (ssize_t)reqlen) {
            finish(ep, c, 0);
            return;
        }
        c->state = ST_READING;
        ev.events = EPOLLIN;
        ev.data.ptr = c;
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        return;
    }
    for (;;) {
        n = recv(c->fd, c->buf + c->got, sizeof(c->buf) - c->got, 0);
        if (n < 0 && errno == EAGAIN)
            return;
        if (n <= 0) {
            finish(ep, c, 0);
            return;
        }
        c->got += (size_t)n;
        if ((r = answer_done(c)) != 0) {
            finish(ep, c, r > 0);
            return;
        }
    }
}

int main(int argc, char **argv)
{
    struct epoll_event evs[256];
    struct conn *conns;
    double t0, last = 0;
    int ep, conc;

    if (argc < 6) {
        fprintf(stderr, "usage: %s HOST PORT TOTAL CONC http|echo "
                "[linger0] [NSRC]\n", argv[0]);
        return 2;
    }
    memset(&dst, 0, sizeof(dst));
    dst.sin_family = AF_INET;
    dst.sin_port = htons((unsigned short)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &dst.sin_addr) != 1) {
        fprintf(stderr, "bad host %s\n", argv[1]);
        return 2;
    }
    total = atol(argv[3]);
    conc = atoi(argv[4]);
    http = strcmp(argv[5], "http") == 0;
    linger0 = argc > 6 && strcmp(argv[6], "linger0") == 0;
    nsrc = argc > 7 ? atoi(argv[7]) : 0;
    req = http ? "GET / HTTP/1.1\r\nHost: soak\r\n\r\n" : "soak ping\n";
    reqlen = strlen(req);
    if (conc < 1 || total < 1 || !(conns = calloc((size_t)conc, sizeof(*conns))))
        return 2;
    if ((ep = epoll_create1(EPOLL_CLOEXEC)) < 0)
        return 2;
    t0 = now();
    for (int i = 0; i < conc; i++) {
        conns[i].fd = -1;
        if (started < total && open_one(ep, &conns[i]) < 0)
            errors++;
    }
    while (done + errors < total) {
        int n = epoll_wait(ep, evs, 256, 100);
        double t;

        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;

            step(ep, c, evs[i].events);
            /* Replace each finished connection at once. */
            while (c->fd < 0 && started < total) {
                if (open_one(ep, c) == 0)
                    break;
                errors++;
            }
        }
        if ((t = now()) - last >= 0.1) {
            last = t;
            printf("progress %ld %ld\n", done, errors);
            fflush(stdout);
        }
    }
    printf("final %ld %ld %.3f\n", done, errors, now() - t0);
    fflush(stdout);
    return errors ? 1 : 0;
}

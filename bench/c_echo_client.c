/*
 * c_echo_client.c - load client for the echo benchmarks.
 *
 * N connections, one SIZE-byte message in flight on each, for SECONDS;
 * every echoed byte is checked against what was sent (each message has its
 * own content).  Not part of the CMake build:
 *
 *   cc -O2 -o /tmp/c_echo_client bench/c_echo_client.c
 *   /tmp/c_echo_client PORT [CONNS=64] [SECONDS=5] [SIZE=1024]
 *
 * Prints one line: "messages messages_per_s bad_bytes".  Exit status 1 if a
 * byte came back wrong or a connection closed early.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct conn {
    int fd;
    unsigned seq;          /* message number */
    size_t got;            /* bytes of the current echo received */
    const char *msg;       /* current message: a window into `pattern` */
};

/* Messages are windows at varying offsets into one random pattern, so
 * every message differs without costing the client a loop to build it. */
static char pattern[2 * 65536];

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void make_msg(struct conn *c, int id)
{
    c->msg = pattern + ((c->seq * 131u + (unsigned)id * 977u) & 65535u);
}

static int connect_retry(int port)
{
    struct sockaddr_in sa;
    double until = now_s() + 3;
    int one = 1;

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons((unsigned short)port);
    for (;;) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);

        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            return fd;
        }
        close(fd);
        if (now_s() > until)
            return -1;
        usleep(10000);
    }
}

int main(int argc, char **argv)
{
    int port, nconn, ep;
    double secs, t0, t1;
    size_t size;
    unsigned long long msgs = 0, bad = 0;
    struct epoll_event ev, evs[256];
    struct conn *cs;
    char buf[65536];
    int failed = 0;

    if (argc < 2) {
        fprintf(stderr, "usage: %s PORT [CONNS] [SECONDS] [SIZE]\n", argv[0]);
        return 2;
    }
    port = atoi(argv[1]);
    nconn = argc > 2 ? atoi(argv[2]) : 64;
    secs = argc > 3 ? atof(argv[3]) : 5;
    size = argc > 4 ? (size_t)atoi(argv[4]) : 1024;
    if (size == 0 || size > 65536 || nconn <= 0)
        return 2;
    srand(12345);
    for (size_t i = 0; i < sizeof(pattern); i++)
        pattern[i] = (char)rand();
    cs = calloc((size_t)nconn, sizeof(*cs));
    ep = epoll_create1(0);
    for (int i = 0; i < nconn; i++) {
        if ((cs[i].fd = connect_retry(port)) < 0) {
            perror("connect");
            return 1;
        }
        ev.events = EPOLLIN;
        ev.data.u32 = (unsigned)i;
        epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
    }
    t0 = now_s();
    for (int i = 0; i < nconn; i++) {
        make_msg(&cs[i], i);
        if (write(cs[i].fd, cs[i].msg, size) != (ssize_t)size)
            return 1;
    }
    while ((t1 = now_s()) - t0 < secs && !failed) {
        int n = epoll_wait(ep, evs, 256, 100);

        for (int k = 0; k < n; k++) {
            int i = (int)evs[k].data.u32;
            struct conn *c = &cs[i];
            ssize_t r = read(c->fd, buf, size - c->got);

            if (r <= 0) {
                if (r < 0 && errno == EAGAIN)
                    continue;
                fprintf(stderr, "connection %d closed early\n", i);
                failed = 1;
                break;
            }
            for (ssize_t j = 0; j < r; j++)
                bad += buf[j] != c->msg[c->got + (size_t)j];
            c->got += (size_t)r;
            if (c->got < size)
                continue;
            msgs++;
            c->got = 0;
            c->seq++;
            make_msg(c, i);
            if (write(c->fd, c->msg, size) != (ssize_t)size) {
                failed = 1;
                break;
            }
        }
    }
    printf("%llu %.0f %llu\n", msgs, msgs / (t1 - t0), bad);
    for (int i = 0; i < nconn; i++)
        close(cs[i].fd);
    free(cs);
    return failed || bad ? 1 : 0;
}

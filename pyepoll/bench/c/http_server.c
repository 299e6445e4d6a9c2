/*
 * http_server.c - the HTTP floor: a plain C epoll server answering every
 * request head with the benchmarks' hello response.
 *
 * It does the least a keep-alive HTTP/1.1 server can: one read per
 * wakeup, a scan for the blank line that ends each head (pipelined heads
 * included; a head split across reads is kept for the next one), and one
 * write of all the answers.  No parsing beyond that, so its CPU per request
 * is the kernel's share plus almost nothing: what no Python server can go
 * below.  The answer carries the same headers as the Python hello servers
 * of pyepoll/bench/_serve.py (Server, Date, Content-Type, Content-Length).
 * The http scenario compiles it at run time:
 *
 *   cc -O2 -o http_server http_server.c
 *   ./http_server PORT          # PORT 0: any free port
 *
 * Prints the port it listens on, one line, once it accepts connections.
 * Stops on SIGINT or SIGTERM.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "write_all.h"

#define MAX_FDS 65536
#define HEAD_MAX 8192           /* a longer head closes the connection */
#define BODY "Hello, World!\n"

static volatile sig_atomic_t stop;

/* The unfinished head of each connection, by fd (allocated on first use). */
struct pending {
    size_t len;
    char buf[HEAD_MAX];
};
static struct pending *pending[MAX_FDS];

static char response[256];
static size_t response_len;
static time_t response_second = -1;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

/* Rebuilt once a second, for its Date header. */
static void refresh_response(void)
{
    time_t now = time(NULL);
    struct tm tm;
    char date[64];

    if (now == response_second)
        return;
    response_second = now;
    gmtime_r(&now, &tm);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
    response_len = (size_t)snprintf(
        response, sizeof(response),
        "HTTP/1.1 200 OK\r\nServer: bench\r\nDate: %s\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Length: %zu\r\n"
        "\r\n" BODY, date, sizeof(BODY) - 1);
}

static void drop(int fd)
{
    free(pending[fd]);
    pending[fd] = NULL;
    close(fd);                  /* closing also unregisters it */
}

/* One read; answer every head it completes, in one write. */
static void serve(int fd)
{
    static char out[HEAD_MAX / 16 * sizeof(response)];
    struct pending *p = pending[fd];
    size_t scan_from, start = 0, out_len = 0;
    ssize_t r;
    char *end;

    if (p == NULL && (p = pending[fd] = calloc(1, sizeof(*p))) == NULL) {
        close(fd);
        return;
    }
    r = read(fd, p->buf + p->len, sizeof(p->buf) - p->len);
    if (r == 0 || (r < 0 && errno != EAGAIN)) {
        drop(fd);
        return;
    }
    if (r < 0)
        return;
    /* A terminator may straddle the previous read: rescan its last 3. */
    scan_from = p->len > 3 ? p->len - 3 : 0;
    p->len += (size_t)r;
    refresh_response();
    while ((end = memmem(p->buf + scan_from, p->len - scan_from,
                         "\r\n\r\n", 4)) != NULL) {
        start = (size_t)(end - p->buf) + 4;
        scan_from = start;
        if (out_len + response_len > sizeof(out)) {
            if (write_all(fd, out, out_len) < 0) {
                drop(fd);
                return;
            }
            out_len = 0;
        }
        memcpy(out + out_len, response, response_len);
        out_len += response_len;
    }
    if (out_len > 0 && write_all(fd, out, out_len) < 0) {
        drop(fd);
        return;
    }
    memmove(p->buf, p->buf + start, p->len - start);
    p->len -= start;
    if (p->len == sizeof(p->buf))
        drop(fd);               /* a head that does not fit */
}

int main(int argc, char **argv)
{
    struct epoll_event ev, evs[256];
    struct sockaddr_in sa;
    struct sigaction sact;
    socklen_t salen = sizeof(sa);
    int lfd, ep, one = 1;

    if (argc < 2) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    memset(&sact, 0, sizeof(sact));
    sact.sa_handler = on_signal;            /* no SA_RESTART: wake epoll */
    sigaction(SIGINT, &sact, NULL);
    sigaction(SIGTERM, &sact, NULL);
    signal(SIGPIPE, SIG_IGN);

    lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons((unsigned short)atoi(argv[1]));
    if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        listen(lfd, 4096) < 0 ||
        getsockname(lfd, (struct sockaddr *)&sa, &salen) < 0) {
        perror("bind/listen");
        return 1;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    ev.events = EPOLLIN;
    ev.data.fd = lfd;
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    printf("%d\n", ntohs(sa.sin_port));
    fflush(stdout);

    while (!stop) {
        int n = epoll_wait(ep, evs, 256, -1);

        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;

            if (fd == lfd) {
                int c;

                while ((c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    if (c >= MAX_FDS) {
                        close(c);
                        continue;
                    }
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                    ev.events = EPOLLIN;
                    ev.data.fd = c;
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
                }
                continue;
            }
            serve(fd);
        }
    }
    return 0;
}

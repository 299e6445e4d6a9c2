/*
 * echo_server.c - the baseline: a plain C epoll echo server.
 *
 * What a competent C programmer writes in a hundred lines: one read and one
 * write per message, nothing else.  Level-triggered by default; with "edge"
 * it registers with EPOLLET and reads until a short read proves the socket
 * empty (the rule an edge-triggered loop must follow).  The benchmarks
 * (python -m pyepoll.bench echo / trigger) compile it at run time:
 *
 *   cc -O2 -o echo_server echo_server.c
 *   ./echo_server PORT [level|edge]      # PORT 0: any free port
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
#include <unistd.h>

#include "write_all.h"

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

/* Echo what is there.  Level mode reads once (epoll reports the socket
 * again if more is left); edge mode must read until the socket is empty,
 * and a read shorter than the buffer proves it is. */
static void serve(int fd, int edge)
{
    static char buf[65536];

    for (;;) {
        ssize_t r = read(fd, buf, sizeof(buf));

        if (r > 0) {
            if (write_all(fd, buf, (size_t)r) < 0) {
                close(fd);
                return;
            }
            if (!edge || (size_t)r < sizeof(buf))
                return;
        } else if (r < 0 && errno == EAGAIN) {
            return;
        } else {
            close(fd);          /* EOF or error: closing also unregisters */
            return;
        }
    }
}

int main(int argc, char **argv)
{
    struct epoll_event ev, evs[256];
    struct sockaddr_in sa;
    struct sigaction sact;
    socklen_t salen = sizeof(sa);
    int lfd, ep, one = 1, edge;

    if (argc < 2) {
        fprintf(stderr, "usage: %s PORT [level|edge]\n", argv[0]);
        return 2;
    }
    edge = argc > 2 && strcmp(argv[2], "edge") == 0;
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
    ev.events = EPOLLIN | (edge ? EPOLLET : 0);
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

                /* Until EAGAIN: required in edge mode, cheap in level. */
                while ((c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                    ev.events = EPOLLIN | (edge ? EPOLLET : 0);
                    ev.data.fd = c;
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
                }
                continue;
            }
            serve(fd, edge);
        }
    }
    return 0;
}

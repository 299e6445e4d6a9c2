/*
 * c_echo_server.c - the baseline: a plain C epoll echo server.
 *
 * Level-triggered, one read and one write per message, nothing else: what
 * a competent C programmer writes in fifty lines.  The benchmarks compare
 * pyepoll's loop against it.  Not part of the CMake build:
 *
 *   cc -O2 -o /tmp/c_echo_server bench/c_echo_server.c
 *   /tmp/c_echo_server PORT          # stop with SIGINT or SIGTERM
 *
 * On exit it prints one line: "cpu_user_s cpu_sys_s bytes_echoed".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

/* Rare with one message in flight: finish a short write by waiting. */
static int write_rest(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);

        if (w > 0) {
            p += w;
            n -= (size_t)w;
        } else if (w < 0 && errno == EAGAIN) {
            struct pollfd pf = { fd, POLLOUT, 0 };

            poll(&pf, 1, -1);
        } else {
            return -1;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    static char buf[16384];
    struct epoll_event ev, evs[256];
    struct sockaddr_in sa;
    struct sigaction sact;
    struct rusage ru;
    unsigned long long bytes = 0;
    int lfd, ep, one = 1;

    if (argc != 2) {
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
        listen(lfd, 1024) < 0) {
        perror("bind/listen");
        return 1;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    ev.events = EPOLLIN;
    ev.data.fd = lfd;
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);

    while (!stop) {
        int n = epoll_wait(ep, evs, 256, -1);

        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;

            if (fd == lfd) {
                int c;

                while ((c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                    ev.events = EPOLLIN;
                    ev.data.fd = c;
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
                }
                continue;
            }
            ssize_t r = read(fd, buf, sizeof(buf));

            if (r > 0 && write_rest(fd, buf, (size_t)r) == 0) {
                bytes += (unsigned long long)r;
            } else if (r == 0 || (r < 0 && errno != EAGAIN)) {
                close(fd);
            }
        }
    }
    getrusage(RUSAGE_SELF, &ru);
    printf("%.6f %.6f %llu\n",
           ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6,
           ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6, bytes);
    return 0;
}

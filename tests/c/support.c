/* support.c - see support.h. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "support.h"

const struct mode modes[N_MODES] = {
    { "epoll", 1, "epoll-edge" },
    { "epoll", 0, "epoll-level" },
    { "poll", 0, "poll-level" },
    { "select", 0, "select-level" },
};

int run_per_mode(const char *prefix, struct CMUnitTest *tests, size_t n)
{
    int failed = 0;

    for (size_t m = 0; m < N_MODES; m++) {
        char name[64];

        snprintf(name, sizeof(name), "%s%s", prefix, modes[m].name);
        for (size_t i = 0; i < n; i++)
            tests[i].initial_state = (void *)&modes[m];
        failed += _cmocka_run_group_tests(name, tests, n, NULL, NULL);
    }
    return failed;
}

void mode_config(struct pe_loop_config *cfg, const struct mode *m)
{
    pe_loop_config_init(cfg);
    cfg->backend = m->backend;
    cfg->edge = m->edge;
}

pe_loop *new_loop_or_skip(const struct pe_loop_config *cfg)
{
    int err = 0;
    pe_loop *l = pe_loop_new(cfg, &err);

    if (!l && err == -ENOSYS)
        skip();
    assert_non_null(l);
    return l;
}

uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void sleep_ms(unsigned ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };

    while (nanosleep(&ts, &ts) != 0)
        ;                           /* a signal: sleep the rest */
}

void nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);

    assert_true(fl >= 0);
    assert_int_equal(fcntl(fd, F_SETFL, fl | O_NONBLOCK), 0);
}

int tcp_listener(int *port)
{
    struct sockaddr_in sa;
    socklen_t sl = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

    assert_true(fd >= 0);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fd, 64), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    *port = ntohs(sa.sin_port);
    nonblock(fd);
    return fd;
}

void tcp_connect_fd(int fd, int port)
{
    struct sockaddr_in sa;

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons((uint16_t)port);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    nonblock(fd);
}

int tcp_client(int port, int rcvbuf)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    assert_true(fd >= 0);
    if (rcvbuf)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    tcp_connect_fd(fd, port);
    return fd;
}

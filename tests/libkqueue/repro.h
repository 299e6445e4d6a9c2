/*
 * repro.h - helpers for the libkqueue reproductions (repro_*.c).
 *
 * Each repro uses plain kqueue calls only (no pyepoll code) to show one way
 * libkqueue differs from the kqueue(2) of FreeBSD and macOS, the reference.
 * Each names what it accounts for: pytest tests marked
 * @pytest.mark.libkqueue (expected to fail over libkqueue), a C test that
 * skips a check there, or a choice in csrc/poller/kqueue.c.  It exits 0 when it
 * sees libkqueue's behaviour, 1 when it sees the kernels' (libkqueue was
 * fixed: drop the marker or the skip), 2 when something else broke;
 * scripts/test.sh runs them all.
 */
#ifndef REPRO_H
#define REPRO_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/event.h>
#include <sys/socket.h>
#include <unistd.h>

#define CHECK(cond)                                                         \
    do {                                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "%s:%d: %s failed (errno %d)\n", __FILE__,      \
                    __LINE__, #cond, errno);                                \
            exit(2);                                                        \
        }                                                                   \
    } while (0)

/* A connected TCP pair on 127.0.0.1: *srv accepted, *cli connecting. */
static inline void tcp_pair(int *srv, int *cli)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    int ls = socket(AF_INET, SOCK_STREAM, 0);

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(ls >= 0 && bind(ls, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    CHECK(listen(ls, 1) == 0);
    CHECK(getsockname(ls, (struct sockaddr *)&sa, &len) == 0);
    *cli = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(*cli >= 0);
    CHECK(connect(*cli, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    *srv = accept(ls, NULL, NULL);
    CHECK(*srv >= 0);
    close(ls);
}

/* Apply one change, with a receipt; returns the receipt's data (errno). */
static inline long change(int kq, int fd, int filter, int flags, void *udata)
{
    struct kevent ch, rc;
    struct timespec zero = {0, 0};

    EV_SET(&ch, fd, filter, flags | EV_RECEIPT, 0, 0, udata);
    CHECK(kevent(kq, &ch, 1, &rc, 1, &zero) == 1);
    return (rc.flags & EV_ERROR) ? (long)rc.data : 0;
}

static inline int verdict(int libkqueue_seen, const char *what)
{
    printf("%s: %s\n", libkqueue_seen ? "libkqueue behaviour" :
           "kernel behaviour (libkqueue fixed? drop the pytest marker)", what);
    return libkqueue_seen ? 0 : 1;
}

#endif

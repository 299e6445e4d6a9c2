/*
 * write_all.h - the bench's C servers' one way to send a whole reply.
 *
 * Their sockets are non-blocking and a reply rarely fills the socket
 * buffer (one message in flight per connection), so a short write is
 * finished by waiting for POLLOUT here rather than by queueing.
 * Included by echo_server.c, http_server.c and handler_floor.c; the
 * bench's build() hashes this header with them.
 */
#ifndef PYEPOLL_BENCH_WRITE_ALL_H
#define PYEPOLL_BENCH_WRITE_ALL_H

#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <unistd.h>

/* n bytes at p written to fd: 0, or -1 with errno (the peer is gone). */
static int write_all(int fd, const char *p, size_t n)
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

#endif

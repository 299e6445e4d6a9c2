/*
 * With both EVFILT_READ and EVFILT_WRITE on one socket, libkqueue's shared
 * epoll registration loses EPOLLRDHUP, so a read event no longer carries
 * EV_EOF when the peer's FIN arrived behind data: an edge-triggered reader
 * that stops at a short read never learns of the EOF.  FreeBSD and macOS
 * set EV_EOF on the read filter whenever the peer shut down writing,
 * whatever other filters the socket has.
 * pytest: test_client_half_close_then_server_sends[kqueue-edge].
 */
#include "repro.h"

/* EV_EOF of the read event after "data" + FIN, with or without a write
 * filter on the same socket. */
static int eof_seen(int with_write)
{
    struct kevent ev[2];
    struct timespec one = {1, 0};
    int kq = kqueue(), srv, cli, n, i, eof = -1;

    CHECK(kq >= 0);
    tcp_pair(&srv, &cli);
    CHECK(change(kq, srv, EVFILT_READ, EV_ADD | EV_CLEAR, NULL) == 0);
    if (with_write)
        CHECK(change(kq, srv, EVFILT_WRITE, EV_ADD | EV_CLEAR, NULL) == 0);
    CHECK(write(cli, "data", 4) == 4);
    CHECK(shutdown(cli, SHUT_WR) == 0);
    usleep(100000);
    n = kevent(kq, NULL, 0, ev, 2, &one);
    for (i = 0; i < n; i++)
        if (ev[i].filter == EVFILT_READ)
            eof = (ev[i].flags & EV_EOF) != 0;
    CHECK(eof >= 0);
    close(srv);
    close(cli);
    close(kq);
    return eof;
}

int main(void)
{
    int alone = eof_seen(0), both = eof_seen(1);

    printf("read event EV_EOF: read filter alone %d, with a write filter %d\n",
           alone, both);
    return verdict(alone && !both,
                   "a write filter makes the read filter lose EV_EOF");
}

/*
 * After a peer's reset, libkqueue's read event takes the socket's pending
 * error (getsockopt SO_ERROR, which clears it) to fill fflags, so the
 * application's recv() then sees a plain EOF (0) instead of ECONNRESET.
 * FreeBSD and macOS copy so_error into fflags and leave it pending: the
 * next recv() fails with ECONNRESET.
 * pytest: test_peer_reset[kqueue-*] (the loop reports the reset's errno).
 */
#include "repro.h"

int main(void)
{
    struct linger lg = {1, 0};
    struct kevent ev;
    struct timespec one = {1, 0};
    int kq = kqueue(), srv, cli, n;
    char buf[16];
    ssize_t got;

    CHECK(kq >= 0);
    tcp_pair(&srv, &cli);
    CHECK(change(kq, srv, EVFILT_READ, EV_ADD, NULL) == 0);
    CHECK(setsockopt(cli, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)) == 0);
    CHECK(close(cli) == 0);                    /* sends RST */
    usleep(100000);
    n = kevent(kq, NULL, 0, &ev, 1, &one);
    CHECK(n == 1 && (ev.flags & EV_EOF));
    printf("read event: EV_EOF, fflags (socket error) = %u\n", ev.fflags);
    got = recv(srv, buf, sizeof(buf), 0);
    printf("recv() after it: %zd, errno %d (ECONNRESET = %d)\n", got,
           got < 0 ? errno : 0, ECONNRESET);
    return verdict(got == 0, "the reset's error is gone from the socket");
}

/*
 * libkqueue cannot see a close() (it says so in its BUGS.md): a closed
 * descriptor's knote stays, and while a dup keeps the old file open, that
 * file's readiness can still be reported under the fd number, into the
 * knote the number gets next (here: in most rounds after the first).
 * kqueue(2): "Calling close() on a file descriptor will remove any kevents
 * that reference the descriptor", so nothing of the old file comes once
 * the number names another file.
 * C test: test_poller's test_reused_fd_gets_no_stale_event on kqueue.
 */
#include "repro.h"

#define ROUNDS 20

/* Whether the new file under the number is reported readable (it has
 * nothing to read: the old one has). */
static int one_round(void)
{
    struct kevent ev[4];
    struct timespec wait = {0, 200000000};
    int kq = kqueue(), a[2], c[2], keep, num, n, i, stale = 0;

    CHECK(kq >= 0);
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, a) == 0);
    num = a[0];
    CHECK(change(kq, num, EVFILT_READ, EV_ADD, (void *)1) == 0);
    CHECK(write(a[1], "x", 1) == 1);           /* the old file is readable */
    CHECK(kevent(kq, NULL, 0, ev, 4, &wait) == 1);
    CHECK((keep = dup(num)) >= 0);             /* and stays open */
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, c) == 0);
    CHECK(close(num) == 0);
    CHECK(dup2(c[0], num) == num);             /* the number, reused */
    CHECK(close(c[0]) == 0);
    /* The old registration is gone (kernels: ENOENT; libkqueue deletes its
     * dead knote); register the new file for both filters. */
    (void)change(kq, num, EVFILT_READ, EV_DELETE, NULL);
    CHECK(change(kq, num, EVFILT_READ, EV_ADD, (void *)2) == 0);
    CHECK(change(kq, num, EVFILT_WRITE, EV_ADD, (void *)2) == 0);
    n = kevent(kq, NULL, 0, ev, 4, &wait);
    for (i = 0; i < n; i++)
        if (ev[i].ident == (uintptr_t)num && ev[i].filter == EVFILT_READ)
            stale = 1;
    close(kq);
    close(keep);
    close(num);
    close(a[1]);
    close(c[1]);
    return stale;
}

int main(void)
{
    int round, stale = 0;

    for (round = 0; round < ROUNDS; round++)
        stale += one_round();
    printf("%d of %d rounds: READ for a reused fd number whose new file "
           "has nothing to read\n", stale, ROUNDS);
    return verdict(stale > 0,
                   "a closed fd's file still reports under its number");
}

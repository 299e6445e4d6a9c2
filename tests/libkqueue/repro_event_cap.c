/*
 * libkqueue returns at most 512 events from one kevent() call, however
 * many are ready and however large nevents is (its epoll_wait array is
 * MAX_KEVENT = 512).  kqueue(2): "kevent() returns the number of events
 * placed in the eventlist, up to the value given by nevents".
 * pytest: test_ten_thousand_fds[kqueue] (all ready ones from one call).
 */
#include "repro.h"

/* Ready descriptors: dups of one readable socket (each fd number is a
 * knote of its own), few enough for the usual limit of 1024 open files. */
#define NFDS 600

int main(void)
{
    static struct kevent ev[2 * NFDS];
    struct timespec one = {1, 0};
    int kq = kqueue(), i, sv[2], fd, n;

    CHECK(kq >= 0);
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    CHECK(write(sv[1], "x", 1) == 1);          /* sv[0] is readable */
    for (i = 0; i < NFDS; i++) {
        CHECK((fd = dup(sv[0])) >= 0);
        CHECK(change(kq, fd, EVFILT_READ, EV_ADD, NULL) == 0);
    }
    n = kevent(kq, NULL, 0, ev, 2 * NFDS, &one);
    CHECK(n > 0);
    printf("%d of %d readable descriptors reported by one kevent()\n", n,
           NFDS);
    return verdict(n < NFDS, "one kevent() call caps the events it returns");
}

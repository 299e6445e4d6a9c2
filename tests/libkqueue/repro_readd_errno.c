/*
 * EV_ADD on an existing level-triggered socket knote: libkqueue sends it
 * to the read filter's modify, which refuses anything without EV_CLEAR and
 * sets no errno, so the receipt carries whatever errno the caller had
 * left (EAGAIN here, set on purpose), and udata keeps its old value.
 * kqueue(2): "Re-adding an existing event will modify the parameters of
 * the original event, and not result in a duplicate entry": receipt 0,
 * new udata.  Why pyepoll's modify deletes and adds a kept filter
 * (kq_filter_changes in csrc/poller/kqueue.c); no test is marked for it.
 */
#include "repro.h"

int main(void)
{
    struct kevent ev;
    struct timespec one = {1, 0};
    int kq = kqueue(), sv[2], n;
    long rc;

    CHECK(kq >= 0 && socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    CHECK(change(kq, sv[0], EVFILT_READ, EV_ADD, (void *)1) == 0);
    errno = EAGAIN;                            /* left over from elsewhere */
    rc = change(kq, sv[0], EVFILT_READ, EV_ADD, (void *)2);
    CHECK(write(sv[1], "x", 1) == 1);
    n = kevent(kq, NULL, 0, &ev, 1, &one);
    CHECK(n == 1);
    printf("re-add receipt: %ld; udata reported after it: %ld (wanted 2)\n",
           rc, (long)(intptr_t)ev.udata);
    return verdict(rc != 0 || ev.udata != (void *)2,
                   "EV_ADD on an existing knote fails with a stale errno");
}

/*
 * A regular file's EVFILT_READ, once libkqueue has seen the file at its
 * end, never fires again, even when the file grows (its read filter drops
 * the file from its epoll set, with a TODO to watch it with inotify).
 * kqueue(2), EVFILT_READ on a vnode: "Returns when the file pointer is not
 * at the end of file", so a write that grows the file makes it fire.
 * C test: test_poller's test_regular_file registers again after the write.
 */
#include "repro.h"

int main(void)
{
    struct kevent ev;
    struct timespec zero = {0, 0}, one = {1, 0};
    FILE *tmp = tmpfile();
    int kq = kqueue(), fd, before, after;

    CHECK(kq >= 0 && tmp != NULL);
    fd = fileno(tmp);
    CHECK(change(kq, fd, EVFILT_READ, EV_ADD, NULL) == 0);
    before = kevent(kq, NULL, 0, &ev, 1, &zero);   /* empty: at its end */
    CHECK(pwrite(fd, "x", 1, 0) == 1);
    after = kevent(kq, NULL, 0, &ev, 1, &one);
    printf("empty file: %d events; after a 1-byte write: %d events\n",
           before, after);
    CHECK(before == 0);
    return verdict(after == 0, "a file seen at its end never fires again");
}

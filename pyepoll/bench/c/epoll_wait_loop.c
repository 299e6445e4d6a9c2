/*
 * epoll_wait_loop.c - the kernel's share of a wait: epoll_wait(fd, ev,
 * MAXEVENTS, 0) in a plain C loop on an epoll descriptor inherited from
 * python -m pyepoll.bench poller, so it watches exactly the registrations
 * the Python candidates wait on.  The benchmark builds it with cc when
 * there is one:
 *
 *   cc -O2 -o epoll_wait_loop epoll_wait_loop.c
 *   ./epoll_wait_loop EPFD MAXEVENTS CALLS EXPECTED
 *
 * Prints "cpu_ns_per_call wall_ns_per_call".  Exit status 1 if a call
 * returned other than EXPECTED events (the comparison would be unfair).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <time.h>

static double ns(clockid_t clock)
{
    struct timespec ts;

    clock_gettime(clock, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv)
{
    int epfd, max, expected, i;
    long calls;
    struct epoll_event *ev;
    double cpu0, wall0;

    if (argc != 5)
        return 2;
    epfd = atoi(argv[1]);
    max = atoi(argv[2]);
    calls = atol(argv[3]);
    expected = atoi(argv[4]);
    if (max <= 0 || calls <= 0 || !(ev = calloc(max, sizeof(*ev))))
        return 2;
    cpu0 = ns(CLOCK_PROCESS_CPUTIME_ID);
    wall0 = ns(CLOCK_MONOTONIC);
    for (i = 0; i < calls; i++)
        if (epoll_wait(epfd, ev, max, 0) != expected)
            return 1;
    printf("%.1f %.1f\n", (ns(CLOCK_PROCESS_CPUTIME_ID) - cpu0) / calls,
           (ns(CLOCK_MONOTONIC) - wall0) / calls);
    return 0;
}

/*
 * wakeup.c - make a blocked pe_loop_run return, from any thread or from a
 * signal handler.
 *
 * Linux: one eventfd (a counter; one read drains any number of wakeups).
 * Elsewhere: a non-blocking self-pipe; when it is full a wakeup is already
 * pending, so EAGAIN is success.  Signalling is a single write(), which is
 * async-signal-safe; errno is preserved for the interrupted code.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/eventfd.h>
#endif

#include "loop.h"

#ifndef __linux__
static int set_flags(int fd)
{
    int fl = fcntl(fd, F_GETFL);

    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return -errno;
    if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
        return -errno;
    return 0;
}
#endif

int pe__wakeup_open(int *rd, int *wr)
{
#ifdef __linux__
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);

    if (fd < 0)
        return -errno;
    *rd = *wr = fd;
    return 0;
#else
    int fds[2], rc;

    if (pipe(fds) < 0)
        return -errno;
    if ((rc = set_flags(fds[0])) < 0 || (rc = set_flags(fds[1])) < 0) {
        close(fds[0]);
        close(fds[1]);
        return rc;
    }
    *rd = fds[0];
    *wr = fds[1];
    return 0;
#endif
}

void pe__wakeup_close(int rd, int wr)
{
    if (rd >= 0)
        close(rd);
    if (wr >= 0 && wr != rd)
        close(wr);
}

int pe__wakeup_signal(int wr)
{
    int saved = errno, rc = 0;
    ssize_t n;
#ifdef __linux__
    uint64_t one = 1;

    do
        n = write(wr, &one, sizeof(one));
    while (n < 0 && errno == EINTR);
#else
    char one = 1;

    do
        n = write(wr, &one, 1);
    while (n < 0 && errno == EINTR);
#endif
    /* EAGAIN: the counter or the pipe is full, a wakeup is pending. */
    if (n < 0 && errno != EAGAIN)
        rc = -errno;
    errno = saved;
    return rc;
}

void pe__wakeup_drain(int rd)
{
    char buf[64];

#ifdef __linux__
    /* One read resets the eventfd counter. */
    if (read(rd, buf, sizeof(buf)) < 0)
        return;
#else
    while (read(rd, buf, sizeof(buf)) > 0)
        ;
#endif
}

/*
 * In a fork()ed child, libkqueue closes the descriptors of every kqueue on
 * its list by number (linux_libkqueue_fork in its src/linux/platform.c).
 * A kqueue the parent has close()d stays on that list until libkqueue's
 * monitoring thread notices, so a child forked in that window loses
 * whatever file the parent opened under the freed number since.
 * kqueue(2) on FreeBSD and macOS: a closed kqueue is gone, and fork()
 * touches no other descriptor (the child just does not inherit kqueues).
 * Accounts for: test_selectors' fork test is not run over libkqueue (the
 * stdlib EpollSelector it checks could get a number a test's kqueue just
 * freed, and its child saw EBADF).
 */
#include <fcntl.h>
#include <sys/wait.h>

#include "repro.h"

#define ROUNDS 50

/* Whether the child found the file under the reused number closed. */
static int one_round(void)
{
    int kq = kqueue(), p[2], status;
    pid_t pid;

    CHECK(kq >= 0);
    CHECK(close(kq) == 0);
    CHECK(pipe(p) == 0);                /* the lowest free numbers: kq's */
    pid = fork();
    CHECK(pid >= 0);
    if (pid == 0)
        _exit(fcntl(p[0], F_GETFD) < 0 && errno == EBADF ? 10 : 11);
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status));
    close(p[0]);
    close(p[1]);
    CHECK(WEXITSTATUS(status) == 10 || WEXITSTATUS(status) == 11);
    return WEXITSTATUS(status) == 10;
}

int main(void)
{
    int round, lost = 0;

    for (round = 0; round < ROUNDS; round++)
        lost += one_round();
    printf("%d of %d rounds: the child found a file opened under a closed "
           "kqueue's number closed\n", lost, ROUNDS);
    return verdict(lost > 0,
                   "fork() closes numbers of kqueues closed just before it");
}

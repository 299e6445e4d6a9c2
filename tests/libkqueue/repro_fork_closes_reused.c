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
 *
 * Whether the monitoring thread runs before the fork is the scheduler's
 * call: with a CPU to spare it wins every time (0 of 50 rounds on one CI
 * machine, 2-18 of 50 on another).  So the thread is moved onto this
 * thread's CPU under SCHED_IDLE, which never preempts a running thread:
 * it runs only while this one sleeps (in waitpid), and every fork lands
 * in the window.  That window is libkqueue's; holding the thread back
 * only makes each round see it.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/wait.h>

#include "repro.h"

#define ROUNDS 50

/* Pin this thread and libkqueue's monitoring thread ("libkqueue_mon") to
 * this CPU and make the monitor SCHED_IDLE (unprivileged: it lowers a
 * priority).  The thread exists while a kqueue does. */
static void hold_back_monitor(void)
{
    struct sched_param none = {0};
    struct dirent *task;
    cpu_set_t here;
    int found = 0;
    DIR *tasks = opendir("/proc/self/task");

    CHECK(tasks != NULL);
    CPU_ZERO(&here);
    CPU_SET(sched_getcpu(), &here);
    CHECK(sched_setaffinity(0, sizeof(here), &here) == 0);
    while ((task = readdir(tasks)) != NULL) {
        char path[300], name[32] = "";
        FILE *comm;
        pid_t tid = (pid_t)atoi(task->d_name);

        if (tid <= 0)
            continue;
        snprintf(path, sizeof(path), "/proc/self/task/%s/comm", task->d_name);
        if ((comm = fopen(path, "r")) == NULL)
            continue;
        if (fgets(name, sizeof(name), comm) != NULL &&
            strcmp(name, "libkqueue_mon\n") == 0) {
            CHECK(sched_setaffinity(tid, sizeof(here), &here) == 0);
            CHECK(sched_setscheduler(tid, SCHED_IDLE, &none) == 0);
            found = 1;
        }
        fclose(comm);
    }
    closedir(tasks);
    CHECK(found);
}

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
    int round, lost = 0, keeper = kqueue();    /* keeps the monitor alive */

    CHECK(keeper >= 0);
    hold_back_monitor();
    for (round = 0; round < ROUNDS; round++)
        lost += one_round();
    close(keeper);
    printf("%d of %d rounds: the child found a file opened under a closed "
           "kqueue's number closed\n", lost, ROUNDS);
    return verdict(lost > 0,
                   "fork() closes numbers of kqueues closed just before it");
}

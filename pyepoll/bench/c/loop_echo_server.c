/*
 * loop_echo_server.c - pyepoll's connection loop in echo mode, driven by a
 * few lines of C: the bytes never leave the core, and no Python runs.  The
 * echo scenario compiles it with the core's sources when it runs from a
 * source checkout (csrc/ is not in the wheel), to set the C loop itself
 * beside echo_server.c and beside pyepoll.Loop(echo=True):
 *
 *   cc -O2 -Icsrc/include -o loop_echo_server loop_echo_server.c \
 *      csrc/poller/\*.c csrc/loop/\*.c   # but kqueue.c off BSD/macOS
 *   ./loop_echo_server PORT [level|edge] [BACKEND]   # SIGINT/SIGTERM stops
 *
 * On exit it prints one line: "cpu_user_s cpu_sys_s bytes_echoed syscalls".
 */
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "pyepoll.h"

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

int main(int argc, char **argv)
{
    struct pe_loop_event evs[256];
    struct pe_loop_config cfg;
    struct pe_loop_stats st;
    struct sockaddr_in sa;
    struct sigaction sact;
    struct rusage ru;
    pe_loop *l;
    int lfd, one = 1, err = 0;

    if (argc < 2) {
        fprintf(stderr, "usage: %s PORT [level|edge] [BACKEND]\n", argv[0]);
        return 2;
    }
    memset(&sact, 0, sizeof(sact));
    sact.sa_handler = on_signal;            /* no SA_RESTART: run -> -EINTR */
    sigaction(SIGINT, &sact, NULL);
    sigaction(SIGTERM, &sact, NULL);

    lfd = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons((unsigned short)atoi(argv[1]));
    if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        listen(lfd, 1024) < 0) {
        perror("bind/listen");
        return 1;
    }
    pe_loop_config_init(&cfg);
    cfg.echo = 1;
    cfg.edge = argc > 2 && strcmp(argv[2], "edge") == 0;
    cfg.backend = argc > 3 ? argv[3] : NULL;
    cfg.max_conns = 4096;
    if (!(l = pe_loop_new(&cfg, &err))) {
        fprintf(stderr, "pe_loop_new: %s\n", strerror(-err));
        return 1;
    }
    if ((err = pe_loop_add_listener(l, lfd)) < 0) {
        fprintf(stderr, "add_listener: %s\n", strerror(-err));
        return 1;
    }
    while (!stop) {
        int n = pe_loop_run(l, evs, 256, -1);

        for (int i = 0; i < n; i++)
            if (evs[i].kind == PE_EV_EOF)
                pe_loop_close(l, evs[i].handle, PE_CLOSE_FLUSH);
    }
    pe_loop_get_stats(l, &st);
    getrusage(RUSAGE_SELF, &ru);
    printf("%.6f %.6f %llu %llu\n",
           ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6,
           ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6,
           (unsigned long long)st.bytes_out, (unsigned long long)st.syscalls);
    pe_loop_free(l);
    close(lfd);
    return 0;
}

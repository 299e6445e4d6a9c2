/*
 * support.h - helpers shared by the C tests (tests/c/support.c is linked
 * into every tests/c/test_*.c).  Each one fails the running cmocka test
 * when a system call it makes fails.
 */
#ifndef PE_TEST_SUPPORT_H
#define PE_TEST_SUPPORT_H

#include <stddef.h>
#include <stdint.h>

#include "pyepoll.h"

struct CMUnitTest;

/* A loop configuration the per-mode loop tests run in: backend, edge
 * triggering (else level), and the name the test group is reported as. */
struct mode {
    const char *backend;
    int edge;
    const char *name;
};

/* epoll edge and level, poll, select: each loop test runs in all of them
 * (a mode whose backend is not compiled in skips). */
#define N_MODES 4
extern const struct mode modes[N_MODES];

/* Run the group of tests once per mode, each test's state the mode, the
 * group named prefix followed by the mode's name; returns the failures. */
int run_per_mode(const char *prefix, struct CMUnitTest *tests, size_t n);

/* cfg initialised (pe_loop_config_init) for mode m's backend and trigger. */
void mode_config(struct pe_loop_config *cfg, const struct mode *m);

/* pe_loop_new(cfg); the running test is skipped when cfg's backend is not
 * compiled in, fails on any other error. */
pe_loop *new_loop_or_skip(const struct pe_loop_config *cfg);

/* Monotonic time in milliseconds. */
uint64_t now_ms(void);

void sleep_ms(unsigned ms);

void nonblock(int fd);

/* A non-blocking TCP listener on 127.0.0.1, on a free port (stored in
 * *port). */
int tcp_listener(int *port);

/* Connect fd to 127.0.0.1:port (a blocking connect completes at once on
 * loopback), then make it non-blocking. */
void tcp_connect_fd(int fd, int port);

/* A non-blocking TCP client connected to 127.0.0.1:port; rcvbuf, if not 0,
 * its SO_RCVBUF set before it connects. */
int tcp_client(int port, int rcvbuf);

#endif

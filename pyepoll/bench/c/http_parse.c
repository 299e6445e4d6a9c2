/*
 * http_parse.c - nanoseconds per request of the C HTTP/1.1 request parser
 * (csrc/http/http.c) on a typical 300-byte browser GET.  The http scenario
 * compiles it when it runs from a source checkout:
 *
 *   cc -O2 -Icsrc/include -o http_parse http_parse.c csrc/http/http.c && ./http_parse [iterations]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pyepoll.h"

/* A typical browser navigation request, about 300 bytes. */
static const char request[] =
    "GET /articles/2024/epoll-vs-kqueue.html?ref=home HTTP/1.1\r\n"
    "Host: www.example.com\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0\r\n"
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    "Accept-Language: en-US,en;q=0.5\r\n"
    "Accept-Encoding: gzip, deflate, br\r\n"
    "Connection: keep-alive\r\n"
    "\r\n";

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    long iters = argc > 1 ? atol(argv[1]) : 10000000;
    size_t len = sizeof(request) - 1;
    char *buf = malloc(len);     /* not a constant the compiler can fold */
    struct pe_http_request req;
    struct pe_http_header hdr[32];
    volatile unsigned sink = 0;
    double ns[5];

    memcpy(buf, request, len);
    for (int rep = 0; rep < 5; rep++) {
        double t0 = now();
        for (long k = 0; k < iters; k++) {
            int r = pe_http_parse_request(buf, len, &req, hdr, 32);
            if (r != (int)len) {
                fprintf(stderr, "parse failed: %d\n", r);
                return 1;
            }
            sink += req.flags + req.nheaders;
        }
        ns[rep] = (now() - t0) * 1e9 / (double)iters;
    }
    qsort(ns, 5, sizeof(ns[0]), cmp);
    printf("%zu-byte GET, %d headers, %ld parses x 5 runs: median %.1f ns/request "
           "(min %.1f, max %.1f), %.2f GB/s\n", len, (int)req.nheaders, iters,
           ns[2], ns[0], ns[4], (double)len / ns[2]);
    free(buf);
    return sink == 0xdeadbeef;
}

/*
 * test_http.c - request-head parser and chunked decoder (csrc/http/http.c).
 *
 * Every input is copied to the very end of a readable mapping followed by
 * a PROT_NONE page (the picohttpparser trick), so reading even one byte
 * past len crashes the test instead of passing by luck.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "pyepoll.h"

#define MAXH 16
#define ROOM_PAGES 16

static char *g_map, *g_end;
static size_t g_room, g_page;
static const char *g_buf;           /* where the last input was placed */
static struct pe_http_request req;
static struct pe_http_header hdr[MAXH];

static int setup(void **state)
{
    (void)state;
    g_page = (size_t)sysconf(_SC_PAGESIZE);
    g_room = ROOM_PAGES * g_page;
    g_map = mmap(NULL, g_room + g_page, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANON, -1, 0);
    if (g_map == MAP_FAILED)
        return -1;
    if (mprotect(g_map + g_room, g_page, PROT_NONE) != 0)
        return -1;
    g_end = g_map + g_room;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    munmap(g_map, g_room + g_page);
    return 0;
}

/* Copy n bytes so that they end exactly at the guard page. */
static char *place(const void *src, size_t n)
{
    assert_true(n <= g_room);
    char *p = g_end - n;
    memmove(p, src, n);
    g_buf = p;
    return p;
}

static int parse_max(const char *s, size_t n, uint32_t max)
{
    memset(hdr, 0xa5, sizeof(hdr));
    return pe_http_parse_request(place(s, n), n, &req, max ? hdr : NULL, max);
}

static int parse_n(const char *s, size_t n)
{
    return parse_max(s, n, MAXH);
}

#define PARSE(lit) parse_n(lit, sizeof(lit) - 1)
#define SPAN_EQ(span, lit) span_eq((span), lit, sizeof(lit) - 1)

static void span_eq(struct pe_http_span s, const char *lit, size_t n)
{
    assert_int_equal(s.len, n);
    assert_memory_equal(g_buf + s.off, lit, n);
}

/* Result for the whole input is want; every proper prefix gives
 * INCOMPLETE, or (for an error) possibly want already. */
static void check_all_prefixes(const char *s, size_t n, int want)
{
    for (size_t k = 0; k < n; k++) {
        int r = parse_n(s, k);
        if (r != PE_HTTP_INCOMPLETE && !(want < 0 && r == want))
            fail_msg("prefix %zu of %zu: got %d, want INCOMPLETE or %d",
                     k, n, r, want);
    }
    assert_int_equal(parse_n(s, n), want);
}
#define CHECK(lit, want) check_all_prefixes(lit, sizeof(lit) - 1, want)
#define CHECK_OK(lit) check_all_prefixes(lit, sizeof(lit) - 1, sizeof(lit) - 1)

/* ------------------------------------------------------------- requests */

static void test_get(void **state)
{
    static const char r[] = "GET /index.html?a=1 HTTP/1.1\r\n"
                            "Host: example.com\r\n"
                            "Accept: */*\r\n\r\n";
    (void)state;
    assert_int_equal(PARSE(r), sizeof(r) - 1);
    SPAN_EQ(req.method, "GET");
    SPAN_EQ(req.target, "/index.html?a=1");
    assert_int_equal(req.minor_version, 1);
    assert_int_equal(req.flags, 0);
    assert_int_equal(req.nheaders, 2);
    SPAN_EQ(hdr[0].name, "Host");
    SPAN_EQ(hdr[0].value, "example.com");
    SPAN_EQ(hdr[1].name, "Accept");
    SPAN_EQ(hdr[1].value, "*/*");
}

static void test_post_head(void **state)
{
    static const char post[] = "POST /form HTTP/1.1\r\nHost: x\r\n"
                               "content-LENGTH: 11\r\n"
                               "Expect: 100-Continue\r\n\r\nhello world";
    static const char head[] = "HEAD / HTTP/1.0\r\n\r\n";
    (void)state;
    assert_int_equal(PARSE(post), sizeof(post) - 1 - 11);
    SPAN_EQ(req.method, "POST");
    assert_int_equal(req.flags, PE_HTTP_HAS_CL | PE_HTTP_EXPECT_100);
    assert_int_equal(req.content_length, 11);
    assert_memory_equal(g_buf + sizeof(post) - 1 - 11, "hello world", 11);

    assert_int_equal(PARSE(head), sizeof(head) - 1);
    SPAN_EQ(req.method, "HEAD");
    SPAN_EQ(req.target, "/");
    assert_int_equal(req.minor_version, 0);
    assert_int_equal(req.nheaders, 0);
}

static void test_connection_flags(void **state)
{
    static const struct { const char *v; uint32_t flags; } cases[] = {
        { "close", PE_HTTP_CLOSE },
        { "Keep-Alive", PE_HTTP_KEEPALIVE },
        { "Upgrade, CLOSE", PE_HTTP_CLOSE },
        { "keep-alive ,\tclose", PE_HTTP_CLOSE | PE_HTTP_KEEPALIVE },
        { ",, close ,,", PE_HTTP_CLOSE },
        { "closed", 0 },
        { "keep-alive-ish, clos", 0 },
        { "", 0 },
    };
    char buf[256];
    (void)state;
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        int n = snprintf(buf, sizeof(buf),
                         "GET / HTTP/1.1\r\nHost: h\r\nConnection: %s\r\n\r\n",
                         cases[k].v);
        assert_int_equal(parse_n(buf, (size_t)n), n);
        assert_int_equal(req.flags, cases[k].flags);
    }
}

/* Flags report headers only: a version's default is the caller's job. */
static void test_version_defaults_untouched(void **state)
{
    (void)state;
    assert_int_equal(PARSE("GET / HTTP/1.0\r\n\r\n"), 18);
    assert_int_equal(req.minor_version, 0);
    assert_int_equal(req.flags, 0);
    assert_int_equal(PARSE("GET / HTTP/1.1\r\nHost: h\r\n\r\n"), 27);
    assert_int_equal(req.minor_version, 1);
    assert_int_equal(req.flags, 0);
    assert_int_equal(PARSE("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), 42);
    assert_int_equal(req.flags, PE_HTTP_KEEPALIVE);
}

static void test_expect_upgrade(void **state)
{
    (void)state;
    assert_true(PARSE("GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue, x\r\n\r\n") > 0);
    assert_int_equal(req.flags, 0);
    assert_true(PARSE("GET / HTTP/1.1\r\nHost: h\r\nExpect:100-continue \r\n\r\n") > 0);
    assert_int_equal(req.flags, PE_HTTP_EXPECT_100);
    assert_true(PARSE("GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n"
                      "upgrade: websocket\r\n\r\n") > 0);
    assert_int_equal(req.flags, PE_HTTP_UPGRADE);
}

/* RFC 9112 3.2: a 1.1 request needs exactly one Host, any request at most
 * one; the parser flags the rest for the server's 400.  CONNECT is flagged
 * so a server that does not tunnel can refuse it. */
static void test_host_and_connect(void **state)
{
    (void)state;
    assert_true(PARSE("GET / HTTP/1.1\r\n\r\n") > 0);
    assert_int_equal(req.flags, PE_HTTP_HOST_BAD);
    assert_true(PARSE("GET / HTTP/1.1\r\nhOsT: a\r\n\r\n") > 0);
    assert_int_equal(req.flags, 0);
    assert_true(PARSE("GET / HTTP/1.1\r\nHost:\r\n\r\n") > 0);  /* empty ok */
    assert_int_equal(req.flags, 0);
    assert_true(PARSE("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n") > 0);
    assert_int_equal(req.flags, PE_HTTP_HOST_BAD);
    assert_true(PARSE("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n") > 0);
    assert_int_equal(req.flags, PE_HTTP_HOST_BAD);
    assert_true(PARSE("GET / HTTP/1.0\r\n\r\n") > 0);           /* 1.0: none ok */
    assert_int_equal(req.flags, 0);
    assert_true(PARSE("GET / HTTP/1.1\r\nHosts: a\r\n\r\n") > 0);
    assert_int_equal(req.flags, PE_HTTP_HOST_BAD);
    assert_true(PARSE("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n") > 0);
    assert_int_equal(req.flags, PE_HTTP_CONNECT);
    assert_true(PARSE("Connect a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n") > 0);
    assert_int_equal(req.flags, 0);                    /* another method */
    assert_true(PARSE("CONNECTX / HTTP/1.1\r\nHost: a\r\n\r\n") > 0);
    assert_int_equal(req.flags, 0);
    /* An incomplete head never carries the scratch bit out. */
    assert_int_equal(PARSE("GET / HTTP/1.1\r\nHost: a\r\n"), PE_HTTP_INCOMPLETE);
}

static void test_pipelined(void **state)
{
    static const char r[] =
        "\r\nGET /a HTTP/1.1\r\nHost: a\r\n\r\n"
        "POST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyz"
        "\r\nGET /c HTTP/1.0\r\nConnection: close\r\n\r\n";
    size_t off = 0, n = sizeof(r) - 1;
    int rc;
    (void)state;

    /* Parse in place from each offset: the rest of the buffer follows. */
    char *buf = place(r, n);
    rc = pe_http_parse_request(buf, n, &req, hdr, MAXH);
    assert_int_equal(rc, 30);
    assert_int_equal(req.method.off, 2);
    assert_memory_equal(buf + req.target.off, "/a", 2);
    off += (size_t)rc;

    rc = pe_http_parse_request(buf + off, n - off, &req, hdr, MAXH);
    assert_true(rc > 0);
    assert_memory_equal(buf + off + req.target.off, "/b", 2);
    assert_int_equal(req.content_length, 3);
    off += (size_t)rc + req.content_length;

    /* A stray CRLF after a body is an empty line before the next one. */
    rc = pe_http_parse_request(buf + off, n - off, &req, hdr, MAXH);
    assert_int_equal((size_t)rc, n - off);
    assert_memory_equal(buf + off + req.target.off, "/c", 2);
    assert_int_equal(req.flags, PE_HTTP_CLOSE);
}

static void test_incomplete_prefixes(void **state)
{
    (void)state;
    CHECK_OK("GET / HTTP/1.1\r\n\r\n");
    CHECK_OK("\r\n\r\nGET / HTTP/1.0\r\n\r\n");
    CHECK_OK("POST /upload/file.bin?x=%20y HTTP/1.1\r\n"
          "Host: example.com:8080\r\n"
          "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:120.0)\r\n"
          "Content-Length: 12345\r\n"
          "Transfer-Note:\t \r\n"
          "X-Obs-Text: caf\xc3\xa9 \t\r\n"
          "Connection: keep-alive\r\n\r\n");
    assert_int_equal(req.nheaders, 6);
    assert_int_equal(req.flags, PE_HTTP_HAS_CL | PE_HTTP_KEEPALIVE);
    assert_int_equal(req.content_length, 12345);
}

static void test_malformed(void **state)
{
    static const char *bad[] = {
        "G@T / HTTP/1.1\r\n\r\n",              /* method not a token */
        "GET\x01 / HTTP/1.1\r\n\r\n",
        " GET / HTTP/1.1\r\n\r\n",
        "GET  / HTTP/1.1\r\n\r\n",              /* two spaces */
        "GET\t/ HTTP/1.1\r\n\r\n",
        "GET /\r\n\r\n",                        /* missing version */
        "GET / \r\n\r\n",
        "GET /\x7f HTTP/1.1\r\n\r\n",
        "GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n",     /* target not ASCII */
        "GET / HTTP/1.1 \r\n\r\n",
        "GET / http/1.1\r\n\r\n",
        "GET / HTTP/1.1x\r\n\r\n",
        "GET / HTTP/11.1\r\n\r\n",
        "GET / HTTP/1.\r\n\r\n",
        "GET / HTTP/2\r\n\r\n",
        "GET / HTTP/1.1\n\r\n",                 /* bare LF */
        "GET / HTTP/1.1\r\nHost: x\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\n\n",
        "\n\nGET / HTTP/1.1\r\n\r\n",
        "\r\rGET / HTTP/1.1\r\n\r\n",            /* bare CR */
        "GET / HTTP/1.1\rX\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\n\rX",
        "GET / HTTP/1.1\r\nHost : x\r\n\r\n",   /* space before colon */
        "GET / HTTP/1.1\r\nHost\t: x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",   /* obs-fold */
        "GET / HTTP/1.1\r\nHost: x\r\n\tfolded\r\n\r\n",
        "GET / HTTP/1.1\r\n Host: x\r\n\r\n",
        "GET / HTTP/1.1\r\n: empty-name\r\n\r\n",
        "GET / HTTP/1.1\r\nX@Y: z\r\n\r\n",
        "GET / HTTP/1.1\r\nNo-Colon\r\n\r\n",
        "GET / HTTP/1.1\r\nX: a\x7f\r\n\r\n",
        "GET / HTTP/1.1\r\nX: \x1b[31m\r\n\r\n",
    };
    (void)state;
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        size_t n = strlen(bad[k]);
        int r = parse_n(bad[k], n);
        if (r != PE_HTTP_BAD)
            fail_msg("case %zu: got %d, want BAD", k, r);
        check_all_prefixes(bad[k], n, PE_HTTP_BAD);
    }
}

/* NUL bytes, which strlen-based code would miss, in every part. */
static void test_nul_bytes(void **state)
{
    static const char req_text[] = "GET /x HTTP/1.1\r\nHost: ab\r\n\r\n";
    char buf[sizeof(req_text)];
    (void)state;
    for (size_t k = 0; k < sizeof(req_text) - 1; k++) {
        memcpy(buf, req_text, sizeof(req_text));
        buf[k] = '\0';
        int r = parse_n(buf, sizeof(req_text) - 1);
        if (r != PE_HTTP_BAD)
            fail_msg("NUL at %zu: got %d", k, r);
    }
}

/* Control bytes and HTAB at every position of a long value and target,
 * to hit every lane of the eight-byte scans and the bytewise tails. */
static void test_scan_lanes(void **state)
{
    char buf[256];
    (void)state;
    for (int len = 1; len <= 40; len++) {
        for (int pos = 0; pos < len; pos++) {
            char v[64];
            memset(v, 'a', (size_t)len);
            v[len] = '\0';

            v[pos] = '\t';
            int n = snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nX: z%s\r\n\r\n", v);
            assert_int_equal(parse_n(buf, (size_t)n), n);
            assert_int_equal(hdr[0].value.len, (uint32_t)len + 1 - (pos == len - 1));

            v[pos] = "\x01\x1f\x7f"[pos % 3];
            n = snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nX: z%s\r\n\r\n", v);
            assert_int_equal(parse_n(buf, (size_t)n), PE_HTTP_BAD);

            v[pos] = (char)0x80;        /* obs-text: fine in a value only */
            n = snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nX: z%s\r\n\r\n", v);
            assert_int_equal(parse_n(buf, (size_t)n), n);
            assert_int_equal(hdr[0].value.len, (uint32_t)len + 1);
            n = snprintf(buf, sizeof(buf), "GET /%s HTTP/1.1\r\n\r\n", v);
            assert_int_equal(parse_n(buf, (size_t)n), PE_HTTP_BAD);

            v[pos] = '\x1f';
            n = snprintf(buf, sizeof(buf), "GET /%s HTTP/1.1\r\n\r\n", v);
            assert_int_equal(parse_n(buf, (size_t)n), PE_HTTP_BAD);
        }
    }
}

static void test_value_trim(void **state)
{
    static const char r[] = "GET / HTTP/1.1\r\n"
                            "A:  \t spaced out \t \r\n"
                            "B:\r\n"
                            "C:    \r\n"
                            "D:x y\r\n\r\n";
    (void)state;
    assert_int_equal(PARSE(r), sizeof(r) - 1);
    assert_int_equal(req.nheaders, 4);
    SPAN_EQ(hdr[0].value, "spaced out");
    assert_int_equal(hdr[1].value.len, 0);
    assert_int_equal(hdr[2].value.len, 0);
    SPAN_EQ(hdr[3].value, "x y");
}

static void test_too_many(void **state)
{
    static const char r[] = "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    (void)state;
    assert_int_equal(parse_max(r, sizeof(r) - 1, 3), sizeof(r) - 1);
    assert_int_equal(req.nheaders, 3);
    assert_int_equal(parse_max(r, sizeof(r) - 1, 2), PE_HTTP_TOO_MANY);
    assert_int_equal(parse_max(r, sizeof(r) - 1, 0), PE_HTTP_TOO_MANY);
    assert_int_equal(parse_max("GET / HTTP/1.1\r\n\r\n", 18, 0), 18);
    /* Known as soon as the extra header's first byte arrives. */
    assert_int_equal(parse_max(r, 23, 1), PE_HTTP_TOO_MANY);
    assert_int_equal(parse_max(r, 22, 1), PE_HTTP_INCOMPLETE);
}

static void expect_cl(const char *hdrs, int want, uint64_t value)
{
    char buf[512];
    int n = snprintf(buf, sizeof(buf), "POST / HTTP/1.1\r\nHost: h\r\n%s\r\n", hdrs);
    int r = parse_n(buf, (size_t)n);
    if (want > 0)
        want = n;
    if (r != want)
        fail_msg("%s: got %d, want %d", hdrs, r, want);
    if (want > 0) {
        assert_true(req.flags & PE_HTTP_HAS_CL);
        assert_true(req.content_length == value);
    }
    check_all_prefixes(buf, (size_t)n, want);
}

static void test_content_length(void **state)
{
    (void)state;
    expect_cl("Content-Length: 0\r\n", 1, 0);
    expect_cl("Content-Length:  \t42 \r\n", 1, 42);
    expect_cl("Content-Length: 007\r\n", 1, 7);
    expect_cl("Content-Length: 18446744073709551615\r\n", 1, UINT64_MAX);
    expect_cl("Content-Length: 5\r\ncontent-length: 5\r\n", 1, 5);
    expect_cl("Content-Length: 18446744073709551616\r\n", PE_HTTP_BAD_LENGTH, 0);
    expect_cl("Content-Length: 99999999999999999999999\r\n", PE_HTTP_BAD_LENGTH, 0);
    expect_cl("Content-Length: abc\r\n", PE_HTTP_BAD_LENGTH, 0);
    expect_cl("Content-Length: 12a\r\n", PE_HTTP_BAD_LENGTH, 0);
    expect_cl("Content-Length: -1\r\n", PE_HTTP_BAD_LENGTH, 0);
    expect_cl("Content-Length: +5\r\n", PE_HTTP_BAD_LENGTH, 0);
    expect_cl("Content-Length: 0x10\r\n", PE_HTTP_BAD_LENGTH, 0);
    expect_cl("Content-Length: 1 2\r\n", PE_HTTP_BAD_LENGTH, 0);
    expect_cl("Content-Length: 5, 5\r\n", PE_HTTP_BAD_LENGTH, 0);
    expect_cl("Content-Length:\r\n", PE_HTTP_BAD_LENGTH, 0);
    expect_cl("Content-Length: 5\r\nContent-Length: 6\r\n", PE_HTTP_BAD_LENGTH, 0);
    expect_cl("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
              PE_HTTP_BAD_LENGTH, 0);
    expect_cl("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
              PE_HTTP_BAD_LENGTH, 0);
    expect_cl("Transfer-Encoding: gzip\r\nContent-Length: 5\r\n",
              PE_HTTP_BAD_LENGTH, 0);
    /* Names are matched whole. */
    assert_true(PARSE("POST / HTTP/1.1\r\nHost: h\r\nContent-Lengths: x\r\n"
                      "Content-Lengt: y\r\nXContent-Length: z\r\n\r\n") > 0);
    assert_int_equal(req.flags, 0);
}

static void expect_te(const char *hdrs, int minor, int want, uint32_t flags)
{
    char buf[512];
    int n = snprintf(buf, sizeof(buf), "POST / HTTP/1.%d\r\nHost: h\r\n%s\r\n",
                     minor, hdrs);
    int r = parse_n(buf, (size_t)n);
    if (want > 0)
        want = n;
    if (r != want)
        fail_msg("%s: got %d, want %d", hdrs, r, want);
    if (want > 0 && req.flags != flags)
        fail_msg("%s: flags %#x, want %#x", hdrs, req.flags, flags);
}

static void test_transfer_encoding(void **state)
{
    (void)state;
    expect_te("Transfer-Encoding: chunked\r\n", 1, 1, PE_HTTP_CHUNKED);
    expect_te("transfer-encoding: CHUNKED \r\n", 1, 1, PE_HTTP_CHUNKED);
    expect_te("Transfer-Encoding: , chunked\r\n", 1, 1, PE_HTTP_CHUNKED);
    expect_te("Transfer-Encoding: gzip, chunked\r\n", 1, 1,
              PE_HTTP_CHUNKED | PE_HTTP_TE_OTHER);
    expect_te("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", 1, 1,
              PE_HTTP_CHUNKED | PE_HTTP_TE_OTHER);
    expect_te("Transfer-Encoding: gzip\r\n", 1, 1, PE_HTTP_TE_OTHER);
    expect_te("Transfer-Encoding: chunked;x=1\r\n", 1, 1, PE_HTTP_TE_OTHER);
    expect_te("Transfer-Encoding: xchunked\r\n", 1, 1, PE_HTTP_TE_OTHER);
    expect_te("Transfer-Encoding: chunked, gzip\r\n", 1, PE_HTTP_BAD_LENGTH, 0);
    expect_te("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", 1,
              PE_HTTP_BAD_LENGTH, 0);
    expect_te("Transfer-Encoding:\r\n", 1, PE_HTTP_BAD_LENGTH, 0);
    expect_te("Transfer-Encoding: , ,\r\n", 1, PE_HTTP_BAD_LENGTH, 0);
    expect_te("Transfer-Encoding: chunked\r\n", 0, PE_HTTP_BAD_LENGTH, 0);
    expect_te("Transfer-Encoding : chunked\r\n", 1, PE_HTTP_BAD, 0);
    expect_te("Transfer-Encoding: \x0b" "chunked\r\n", 1, PE_HTTP_BAD, 0);
}

static void test_versions(void **state)
{
    (void)state;
    CHECK("GET / HTTP/2.0\r\n\r\n", PE_HTTP_BAD_VERSION);
    CHECK("GET / HTTP/1.2\r\n\r\n", PE_HTTP_BAD_VERSION);
    CHECK("GET / HTTP/0.9\r\n\r\n", PE_HTTP_BAD_VERSION);
    CHECK("GET / HTTP/9.9\r\nHost: x\r\n\r\n", PE_HTTP_BAD_VERSION);
    CHECK("GET / HTTP/1.0\r\n\r\n", 18);
    assert_int_equal(req.minor_version, 0);
}

/* -------------------------------------------------------------- chunked */

struct dec {
    char out[4096];
    size_t nout, consumed;
    int done;
    int64_t rc;
};

/* Feed s[0..n) in pieces cut at the given points; each piece is decoded
 * in place at the guard page. */
static void decode_pieces(const char *s, size_t n, const size_t *cuts,
                          size_t ncuts, struct dec *d)
{
    struct pe_http_chunked st = { 0 };
    size_t from = 0;

    memset(d, 0, sizeof(*d));
    for (size_t k = 0; k <= ncuts; k++) {
        size_t to = k < ncuts ? cuts[k] : n, consumed = 99;
        int done = -1;
        char *p = place(s + from, to - from);
        int64_t r = pe_http_decode_chunked(&st, p, to - from, &consumed, &done);
        if (r < 0) {
            d->rc = r;
            return;
        }
        assert_true((size_t)r <= consumed && consumed <= to - from);
        assert_true(done || consumed == to - from);
        assert_true(d->nout + (size_t)r <= sizeof(d->out));
        memcpy(d->out + d->nout, p, (size_t)r);
        d->nout += (size_t)r;
        d->consumed += consumed;
        d->done = done;
        if (done)
            return;
        from = to;
    }
}

#define BODY "5\r\nhello\r\n" "1A;name=value;q=\"a b\"\r\n" \
             "abcdefghijklmnopqrstuvwxyz\r\n" "1\r\n!\r\n" \
             "0\r\nTrailer-One: 1\r\nX:\ty\r\n\r\n"
#define PAYLOAD "helloabcdefghijklmnopqrstuvwxyz!"

static void test_chunked_one_shot(void **state)
{
    static const char body[] = BODY "GET /next";
    struct dec d;
    (void)state;
    decode_pieces(body, sizeof(body) - 1, NULL, 0, &d);
    assert_int_equal(d.rc, 0);
    assert_int_equal(d.done, 1);
    assert_int_equal(d.consumed, sizeof(BODY) - 1);
    assert_int_equal(d.nout, sizeof(PAYLOAD) - 1);
    assert_memory_equal(d.out, PAYLOAD, sizeof(PAYLOAD) - 1);

    /* Done is sticky and consumes nothing more. */
    struct pe_http_chunked st = { 0 };
    size_t consumed;
    int done;
    char *p = place(body, sizeof(body) - 1);
    assert_int_equal(pe_http_decode_chunked(&st, p, sizeof(body) - 1,
                                            &consumed, &done), sizeof(PAYLOAD) - 1);
    assert_int_equal(pe_http_decode_chunked(&st, p, 4, &consumed, &done), 0);
    assert_int_equal(consumed, 0);
    assert_int_equal(done, 1);
}

static void test_chunked_every_split(void **state)
{
    static const char body[] = BODY "NEXT";
    size_t n = sizeof(body) - 1;
    struct dec whole, part;
    (void)state;

    decode_pieces(body, n, NULL, 0, &whole);
    assert_int_equal(whole.done, 1);
    for (size_t s = 0; s <= n; s++) {
        decode_pieces(body, n, &s, 1, &part);
        assert_int_equal(part.rc, 0);
        assert_int_equal(part.done, 1);
        assert_int_equal(part.consumed, whole.consumed);
        assert_int_equal(part.nout, whole.nout);
        assert_memory_equal(part.out, whole.out, whole.nout);
    }
    /* One byte at a time. */
    size_t cuts[sizeof(body)];
    for (size_t s = 0; s < n; s++)
        cuts[s] = s + 1;
    decode_pieces(body, n, cuts, n - 1, &part);
    assert_int_equal(part.done, 1);
    assert_int_equal(part.consumed, whole.consumed);
    assert_memory_equal(part.out, whole.out, whole.nout);
}

static void test_chunked_bad(void **state)
{
    static const char *bad[] = {
        "g\r\n",
        "\r\n",
        ";ext\r\n",
        "5\nhello\r\n0\r\n\r\n",                /* bare LF */
        "5\r\nhello\n0\r\n\r\n",
        "5\r\nhelloX\r\n0\r\n\r\n",             /* no CRLF after data */
        "5\r\nhello\r\r\n",
        "5 \r\nhello\r\n",                       /* BWS without extension */
        "-5\r\n",
        "0x5\r\n",
        "11111111111111111\r\n",                 /* 17 hex digits: overflow */
        "10000000000000000\r\n",
        "5;a\x01\r\nhello\r\n",                  /* control byte in extension */
        "0\r\n trailer: folded\r\n\r\n",
        "0\r\nX: y\n\r\n",
        "0\r\n\rX",
        "0\r\n\n",
    };
    struct dec d;
    (void)state;
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        size_t n = strlen(bad[k]);
        decode_pieces(bad[k], n, NULL, 0, &d);
        if (d.rc != PE_HTTP_BAD)
            fail_msg("case %zu: got %lld, want BAD", k, (long long)d.rc);
        /* Split anywhere, the error still comes. */
        for (size_t s = 0; s <= n; s++) {
            decode_pieces(bad[k], n, &s, 1, &d);
            assert_int_equal(d.rc, PE_HTTP_BAD);
        }
    }
}

static void test_chunked_edges(void **state)
{
    struct pe_http_chunked st = { 0 };
    size_t consumed;
    int done;
    struct dec d;
    (void)state;

    /* The largest size is not an overflow: it just waits for data. */
    static const char max[] = "ffffffffffffffff\r\nabc";
    char *p = place(max, sizeof(max) - 1);
    assert_int_equal(pe_http_decode_chunked(&st, p, sizeof(max) - 1,
                                            &consumed, &done), 3);
    assert_int_equal(consumed, sizeof(max) - 1);
    assert_int_equal(done, 0);
    assert_true(st.remaining == UINT64_MAX - 3);

    static const char zeros[] = "0000000000000000000000005\r\nhello\r\n0\r\n\r\n";
    decode_pieces(zeros, sizeof(zeros) - 1, NULL, 0, &d);
    assert_int_equal(d.done, 1);
    assert_int_equal(d.nout, 5);

    static const char ext[] = "1 ; a = \"b\"\t;c\r\nZ\r\n0;last\r\n\r\n";
    decode_pieces(ext, sizeof(ext) - 1, NULL, 0, &d);
    assert_int_equal(d.done, 1);
    assert_memory_equal(d.out, "Z", 1);

    /* An endless extension is refused, and the error sticks. */
    static char big[9000];
    memset(big, 'x', sizeof(big));
    memcpy(big, "1;", 2);
    memset(&st, 0, sizeof(st));
    p = place(big, sizeof(big));
    assert_int_equal(pe_http_decode_chunked(&st, p, sizeof(big), &consumed, &done),
                     PE_HTTP_BAD);
    p = place("\r\nZ\r\n", 5);
    assert_int_equal(pe_http_decode_chunked(&st, p, 5, &consumed, &done),
                     PE_HTTP_BAD);
    assert_int_equal(done, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get),
        cmocka_unit_test(test_post_head),
        cmocka_unit_test(test_connection_flags),
        cmocka_unit_test(test_host_and_connect),
        cmocka_unit_test(test_version_defaults_untouched),
        cmocka_unit_test(test_expect_upgrade),
        cmocka_unit_test(test_pipelined),
        cmocka_unit_test(test_incomplete_prefixes),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_nul_bytes),
        cmocka_unit_test(test_scan_lanes),
        cmocka_unit_test(test_value_trim),
        cmocka_unit_test(test_too_many),
        cmocka_unit_test(test_content_length),
        cmocka_unit_test(test_transfer_encoding),
        cmocka_unit_test(test_versions),
        cmocka_unit_test(test_chunked_one_shot),
        cmocka_unit_test(test_chunked_every_split),
        cmocka_unit_test(test_chunked_bad),
        cmocka_unit_test(test_chunked_edges),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

/*
 * http.c - strict HTTP/1.x request-head parser and chunked-body decoder.
 *
 * Strict on purpose: whenever two HTTP implementations could disagree on
 * where a message ends (request smuggling), we refuse instead of guessing.
 *
 *  - Lines end with CRLF only.  RFC 9112 2.2 lets a recipient accept a bare
 *    LF, but front proxies differ on it, and a lone LF that one hop treats
 *    as a line end and another as data is how smuggled requests hide.  A
 *    bare LF or bare CR anywhere in the head or chunk framing is BAD.
 *  - Empty lines (CRLF) before the request line are skipped (RFC 9112 2.2:
 *    some clients send one after a POST body) and counted in the length.
 *  - Exactly one SP between the parts of the request line; no whitespace
 *    before a header's colon, no obs-fold, no control character in a value
 *    except HTAB; obs-text (0x80-0xFF) is allowed in values only.
 *  - Framing headers are checked as they arrive, so an error is reported at
 *    the first byte that proves it: for any prefix of the input the result
 *    is INCOMPLETE or the result of the whole input (the fuzzer checks it).
 *
 * Speed: one pass, no allocation, a 256-entry class table, and eight bytes
 * at a time (SWAR) over the request target and header values, which are
 * most of a typical head.
 */
#include <limits.h>
#include <stdint.h>
#include <string.h>

#include "pyepoll.h"

/* 1: tchar (RFC 9110 5.6.2); 2: field-value byte (VCHAR, obs-text, SP,
 * HTAB).  Every tchar is a value byte, hence 3. */
#define V 2
static const uint8_t cls[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, V, 0, 0, 0, 0, 0, 0,           /* 00 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,           /* 10 */
    V, 3, V, 3, 3, 3, 3, 3, V, V, 3, 3, V, 3, 3, V,           /* 20 */
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, V, V, V, V, V, V,           /* 30 */
    V, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,           /* 40 */
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, V, V, V, 3, 3,           /* 50 */
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,           /* 60 */
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, V, 3, V, 3, 0,           /* 70 */
    V, V, V, V, V, V, V, V, V, V, V, V, V, V, V, V,           /* 80 */
    V, V, V, V, V, V, V, V, V, V, V, V, V, V, V, V,           /* 90 */
    V, V, V, V, V, V, V, V, V, V, V, V, V, V, V, V,           /* a0 */
    V, V, V, V, V, V, V, V, V, V, V, V, V, V, V, V,           /* b0 */
    V, V, V, V, V, V, V, V, V, V, V, V, V, V, V, V,           /* c0 */
    V, V, V, V, V, V, V, V, V, V, V, V, V, V, V, V,           /* d0 */
    V, V, V, V, V, V, V, V, V, V, V, V, V, V, V, V,           /* e0 */
    V, V, V, V, V, V, V, V, V, V, V, V, V, V, V, V,           /* f0 */
};
#undef V
#define IS_TOKEN(c) (cls[(unsigned char)(c)] & 1)
#define IS_VALUE(c) (cls[(unsigned char)(c)] & 2)
#define IS_OWS(c) ((c) == ' ' || (c) == '\t')

/* Heads longer than this are refused: lengths and offsets must fit the
 * int return value and the uint32_t spans. */
#define HEAD_MAX ((size_t)INT_MAX)
/* Chunk framing bytes (size line with extensions, or the trailer section)
 * allowed between two data runs: extensions are skipped, not stored, but
 * an endless one must not keep a connection busy without payload. */
#define CHUNK_META_MAX 8192

#define ONES  0x0101010101010101ull
#define HIGHS 0x8080808080808080ull

static inline uint64_t load8(const unsigned char *p)
{
    uint64_t x;

    memcpy(&x, p, 8);
    return x;
}

/* Nonzero when one of the eight bytes is < 0x20 or 0x7F.  The borrow
 * trick can flag bytes after a true hit but never makes one up, so the
 * answer is exact for the word; bytes >= 0x80 are masked out by ~x. */
static inline uint64_t has_ctl(uint64_t x)
{
    return ((x - ONES * 0x20) | ((x ^ ONES * 0x7f) - ONES)) & ~x & HIGHS;
}

/* Nonzero when one byte is outside 0x21..0x7E. */
static inline uint64_t has_nonvisible(uint64_t x)
{
    return ((x - ONES * 0x21) | ((x ^ ONES * 0x7f) - ONES) | x) & HIGHS;
}

/* End of a run of request-target bytes (visible ASCII) from i. */
static size_t scan_target(const unsigned char *p, size_t i, size_t n)
{
    while (n - i >= 8 && !has_nonvisible(load8(p + i)))
        i += 8;
    while (i < n && (unsigned)p[i] - 0x21u < 0x5eu)
        i++;
    return i;
}

/* End of a run of field-value bytes from i.  HTAB is a control byte to
 * the word test, so a word holding one is finished bytewise. */
static size_t scan_value(const unsigned char *p, size_t i, size_t n)
{
    for (;;) {
        while (n - i >= 8 && !has_ctl(load8(p + i)))
            i += 8;
        size_t stop = n - i >= 8 ? i + 8 : n;
        while (i < stop && IS_VALUE(p[i]))
            i++;
        if (i < stop || i == n)
            return i;
    }
}

/* Case-insensitive compare of s[0..n) with a lowercase literal. */
static int ieq(const unsigned char *s, size_t n, const char *lit, size_t litlen)
{
    if (n != litlen)
        return 0;
    for (size_t k = 0; k < n; k++) {
        unsigned c = s[k];
        if (c - 'A' < 26u)
            c += 'a' - 'A';
        if (c != (unsigned char)lit[k])
            return 0;
    }
    return 1;
}
#define IEQ(s, n, lit) ieq((s), (n), lit, sizeof(lit) - 1)

/* Calls fn on each element of a comma list (RFC 9110 5.6.1): elements
 * are trimmed, empty ones skipped.  Returns the number of elements, or
 * fn's first negative result. */
static int each_element(const unsigned char *v, size_t n,
                        int (*fn)(const unsigned char *, size_t, void *),
                        void *arg)
{
    int count = 0;
    size_t i = 0;

    while (i < n) {
        size_t a = i, b;
        while (i < n && v[i] != ',')
            i++;
        b = i++;
        while (a < b && IS_OWS(v[a]))
            a++;
        while (b > a && IS_OWS(v[b - 1]))
            b--;
        if (a == b)
            continue;
        count++;
        int rc = fn(v + a, b - a, arg);
        if (rc < 0)
            return rc;
    }
    return count;
}

/* Transfer-Encoding elements across all its lines.  chunked must be the
 * final coding and appear once (RFC 9112 6.1, 6.3): anything after it
 * leaves the body length undeterminable, so it is a framing error.  An
 * element that is not a plain token (parameters, junk) is never taken for
 * chunked: it counts as some other coding, which the server refuses. */
static int te_element(const unsigned char *e, size_t n, void *arg)
{
    struct pe_http_request *req = arg;

    if (req->flags & PE_HTTP_CHUNKED)
        return PE_HTTP_BAD_LENGTH;
    if (IEQ(e, n, "chunked"))
        req->flags |= PE_HTTP_CHUNKED;
    else
        req->flags |= PE_HTTP_TE_OTHER;
    return 0;
}

static int conn_element(const unsigned char *e, size_t n, void *arg)
{
    struct pe_http_request *req = arg;

    if (IEQ(e, n, "close"))
        req->flags |= PE_HTTP_CLOSE;
    else if (IEQ(e, n, "keep-alive"))
        req->flags |= PE_HTTP_KEEPALIVE;
    return 0;
}

/* Digits only: no sign, no list, no whitespace inside (RFC 9110 8.6).
 * Identical repeats are allowed, differing ones are not. */
static int content_length(struct pe_http_request *req,
                          const unsigned char *v, size_t n)
{
    uint64_t x = 0;

    if (n == 0)
        return PE_HTTP_BAD_LENGTH;
    for (size_t k = 0; k < n; k++) {
        unsigned d = (unsigned)v[k] - '0';
        if (d > 9 || x > (UINT64_MAX - d) / 10)
            return PE_HTTP_BAD_LENGTH;
        x = x * 10 + d;
    }
    if ((req->flags & PE_HTTP_HAS_CL) && req->content_length != x)
        return PE_HTTP_BAD_LENGTH;
    req->content_length = x;
    req->flags |= PE_HTTP_HAS_CL;
    return 0;
}

/* Sets flags from one header line.  Content-Length together with
 * Transfer-Encoding is refused whatever the order (RFC 9112 6.3: the
 * classic smuggling case), as is Transfer-Encoding in an HTTP/1.0 request,
 * whose framing RFC 9112 6.1 says to treat as faulty. */
/* A Host field was seen: a scratch flag, cleared before the parse returns
 * (a plain request carries no flag at all, which servers' fast paths test). */
#define SEEN_HOST 0x80000000u

static int note_header(struct pe_http_request *req, const unsigned char *name,
                       size_t nlen, const unsigned char *v, size_t vlen)
{
    int rc;

    switch (nlen) {
    case 14:
        if (!IEQ(name, nlen, "content-length"))
            return 0;
        if (req->flags & (PE_HTTP_CHUNKED | PE_HTTP_TE_OTHER))
            return PE_HTTP_BAD_LENGTH;
        return content_length(req, v, vlen);
    case 17:
        if (!IEQ(name, nlen, "transfer-encoding"))
            return 0;
        if ((req->flags & PE_HTTP_HAS_CL) || req->minor_version == 0)
            return PE_HTTP_BAD_LENGTH;
        rc = each_element(v, vlen, te_element, req);
        return rc == 0 ? PE_HTTP_BAD_LENGTH : rc < 0 ? rc : 0;
    case 10:
        if (IEQ(name, nlen, "connection")) {
            rc = each_element(v, vlen, conn_element, req);
            return rc < 0 ? rc : 0;
        }
        return 0;
    case 6:
        if (IEQ(name, nlen, "expect") && IEQ(v, vlen, "100-continue"))
            req->flags |= PE_HTTP_EXPECT_100;
        return 0;
    case 7:
        if (IEQ(name, nlen, "upgrade"))
            req->flags |= PE_HTTP_UPGRADE;
        return 0;
    case 4:
        if (IEQ(name, nlen, "host")) {
            if (req->flags & SEEN_HOST)
                req->flags |= PE_HTTP_HOST_BAD;
            req->flags |= SEEN_HOST;
        }
        return 0;
    }
    return 0;
}

/* "HTTP/1.x" CRLF at p[i..): checked byte by byte as far as it goes, so
 * garbage is BAD at once; a well-formed other version is BAD_VERSION once
 * its line is complete. */
static int parse_version(const unsigned char *p, size_t *ip, size_t n,
                         struct pe_http_request *req)
{
    static const char shape[] = "HTTP/0.0\r\n";   /* 0: any digit */
    size_t i = *ip;

    for (size_t k = 0; k < sizeof(shape) - 1; k++) {
        if (i + k == n)
            return PE_HTTP_INCOMPLETE;
        unsigned c = p[i + k];
        if (shape[k] == '0' ? c - '0' > 9u : c != (unsigned char)shape[k])
            return PE_HTTP_BAD;
    }
    if (p[i + 5] != '1' || p[i + 7] > '1')
        return PE_HTTP_BAD_VERSION;
    req->minor_version = p[i + 7] - '0';
    *ip = i + 10;
    return 0;
}

static int parse(const unsigned char *p, size_t n, struct pe_http_request *req,
                 struct pe_http_header *headers, uint32_t max_headers)
{
    size_t i = 0, start;
    int rc;

    while (i < n && p[i] == '\r') {
        if (i + 1 == n)
            return PE_HTTP_INCOMPLETE;
        if (p[i + 1] != '\n')
            return PE_HTTP_BAD;
        i += 2;
    }

    start = i;
    while (i < n && IS_TOKEN(p[i]))
        i++;
    if (i == n)
        return PE_HTTP_INCOMPLETE;
    if (i == start || p[i] != ' ')
        return PE_HTTP_BAD;
    req->method.off = (uint32_t)start;
    req->method.len = (uint32_t)(i - start);
    if (i - start == 7 && !memcmp(p + start, "CONNECT", 7))
        req->flags |= PE_HTTP_CONNECT;      /* methods are case-sensitive */

    start = ++i;
    i = scan_target(p, i, n);
    if (i == n)
        return PE_HTTP_INCOMPLETE;
    if (i == start || p[i] != ' ')
        return PE_HTTP_BAD;
    req->target.off = (uint32_t)start;
    req->target.len = (uint32_t)(i - start);

    i++;
    if ((rc = parse_version(p, &i, n, req)) != 0)
        return rc;

    for (;;) {
        size_t name, nlen, v, vend;

        if (i == n)
            return PE_HTTP_INCOMPLETE;
        if (p[i] == '\r') {
            if (i + 1 == n)
                return PE_HTTP_INCOMPLETE;
            if (p[i + 1] != '\n')
                return PE_HTTP_BAD;
            if (!(req->flags & SEEN_HOST) && req->minor_version == 1)
                req->flags |= PE_HTTP_HOST_BAD;
            req->flags &= ~SEEN_HOST;
            return (int)(i + 2);
        }
        if (req->nheaders == max_headers)
            return PE_HTTP_TOO_MANY;

        /* A line starting with whitespace (obs-fold, or space before the
         * first field) fails here as an empty name. */
        name = i;
        while (i < n && IS_TOKEN(p[i]))
            i++;
        if (i == n)
            return PE_HTTP_INCOMPLETE;
        if (i == name || p[i] != ':')
            return PE_HTTP_BAD;
        nlen = i - name;

        i++;
        while (i < n && IS_OWS(p[i]))
            i++;
        v = i;
        i = scan_value(p, i, n);
        if (i == n)
            return PE_HTTP_INCOMPLETE;
        if (p[i] != '\r')
            return PE_HTTP_BAD;
        if (i + 1 == n)
            return PE_HTTP_INCOMPLETE;
        if (p[i + 1] != '\n')
            return PE_HTTP_BAD;
        vend = i;
        while (vend > v && IS_OWS(p[vend - 1]))
            vend--;
        i += 2;

        struct pe_http_header *h = &headers[req->nheaders++];
        h->name.off = (uint32_t)name;
        h->name.len = (uint32_t)nlen;
        h->value.off = (uint32_t)v;
        h->value.len = (uint32_t)(vend - v);
        if ((rc = note_header(req, p + name, nlen, p + v, vend - v)) != 0)
            return rc;
    }
}

int pe_http_parse_request(const char *buf, size_t len,
                          struct pe_http_request *req,
                          struct pe_http_header *headers, uint32_t max_headers)
{
    size_t n = len > HEAD_MAX ? HEAD_MAX : len;
    int rc;

    memset(req, 0, sizeof(*req));
    rc = parse((const unsigned char *)buf, n, req, headers, max_headers);
    if (rc == PE_HTTP_INCOMPLETE && n < len)
        return PE_HTTP_BAD;
    return rc;
}

/* ------------------------------------------------------- chunked bodies */

enum {
    CK_SIZE0,       /* first hex digit of a chunk size (zeroed state) */
    CK_SIZE,        /* more hex digits, ';', BWS or CR */
    CK_SIZE_WS,     /* BWS after the size: only before an extension */
    CK_EXT,         /* chunk extensions, skipped to CR */
    CK_SIZE_LF,
    CK_DATA,
    CK_DATA_CR,
    CK_DATA_LF,
    CK_TRAILER0,    /* start of a trailer line, or the final CRLF */
    CK_TRAILER,
    CK_TRAILER_LF,
    CK_END_LF,
    CK_DONE,
    CK_ERROR
};

static int hexval(unsigned c)
{
    if (c - '0' < 10u)
        return (int)(c - '0');
    c |= 0x20;
    if (c - 'a' < 6u)
        return (int)(c - 'a' + 10);
    return -1;
}

/* One framing byte: returns the next state, CK_ERROR on malformed. */
static uint32_t chunk_step(struct pe_http_chunked *st, unsigned c)
{
    int d;

    switch (st->state) {
    case CK_SIZE0:
        if ((d = hexval(c)) < 0)
            return CK_ERROR;
        st->remaining = (uint64_t)d;
        return CK_SIZE;
    case CK_SIZE:
        if ((d = hexval(c)) >= 0) {
            if (st->remaining > UINT64_MAX >> 4)
                return CK_ERROR;
            st->remaining = st->remaining << 4 | (uint64_t)d;
            return CK_SIZE;
        }
        return c == '\r' ? CK_SIZE_LF : c == ';' ? CK_EXT
             : IS_OWS(c) ? CK_SIZE_WS : CK_ERROR;
    case CK_SIZE_WS:
        return IS_OWS(c) ? CK_SIZE_WS : c == ';' ? CK_EXT : CK_ERROR;
    case CK_EXT:
        return c == '\r' ? CK_SIZE_LF : IS_VALUE(c) ? CK_EXT : CK_ERROR;
    case CK_SIZE_LF:
        if (c != '\n')
            return CK_ERROR;
        return st->remaining ? CK_DATA : CK_TRAILER0;
    case CK_DATA_CR:
        return c == '\r' ? CK_DATA_LF : CK_ERROR;
    case CK_DATA_LF:
        return c == '\n' ? CK_SIZE0 : CK_ERROR;
    case CK_TRAILER0:
        return c == '\r' ? CK_END_LF : IS_TOKEN(c) ? CK_TRAILER : CK_ERROR;
    case CK_TRAILER:
        return c == '\r' ? CK_TRAILER_LF : IS_VALUE(c) ? CK_TRAILER : CK_ERROR;
    case CK_TRAILER_LF:
        return c == '\n' ? CK_TRAILER0 : CK_ERROR;
    case CK_END_LF:
        return c == '\n' ? CK_DONE : CK_ERROR;
    }
    return CK_ERROR;
}

int64_t pe_http_decode_chunked(struct pe_http_chunked *st, char *buf,
                               size_t len, size_t *consumed, int *done)
{
    unsigned char *p = (unsigned char *)buf;
    size_t i = 0, out = 0;

    while (i < len && st->state != CK_DONE) {
        if (st->state == CK_DATA) {
            size_t k = len - i;
            if (k > st->remaining)
                k = (size_t)st->remaining;
            if (out != i)
                memmove(p + out, p + i, k);
            out += k;
            i += k;
            st->remaining -= k;
            if (st->remaining == 0)
                st->state = CK_DATA_CR;
            continue;
        }
        if (st->state == CK_ERROR || ++st->meta > CHUNK_META_MAX) {
            st->state = CK_ERROR;
            *consumed = i;
            *done = 0;
            return PE_HTTP_BAD;
        }
        st->state = chunk_step(st, p[i++]);
        if (st->state == CK_DATA)
            st->meta = 0;
    }
    if (st->state == CK_ERROR) {
        *consumed = i;
        *done = 0;
        return PE_HTTP_BAD;
    }
    *consumed = i;
    *done = st->state == CK_DONE;
    return (int64_t)out;
}

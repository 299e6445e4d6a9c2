/*
 * fuzz_http.c - libFuzzer target for csrc/http/http.c.
 *
 * Build and run (not part of CMake; scripts/fuzz.sh does the same):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Icsrc/include \
 *     fuzz/fuzz_http.c csrc/http/http.c -o /tmp/fuzz_http
 *   /tmp/fuzz_http -runs=10000000 /tmp/corpus-http fuzz/corpus/http
 *
 * The first byte is control: max_headers (its low 5 bits) and a split
 * position.  The rest is the input.  Checked:
 *   - the head parser stays in bounds and its spans lie inside the head;
 *   - a prefix of the input parses to INCOMPLETE or to the whole input's
 *     answer (errors are reported at the first byte that proves them);
 *   - the chunked decoder (fed the body after a parsed head, else the whole
 *     input) gives the same payload, consumed count, done flag and error
 *     whether the input comes in one piece or split in two.
 * Every piece is copied into its own exact-size heap block, so ASan
 * catches a read one byte past len.
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pyepoll.h"

static char *dup_exact(const uint8_t *p, size_t n)
{
    char *b = malloc(n ? n : 1);
    if (n)
        memcpy(b, p, n);
    return b;
}

static void check_span(struct pe_http_span s, int head)
{
    assert(s.off <= (uint32_t)head && s.len <= (uint32_t)head - s.off);
}

static int parse(const uint8_t *in, size_t n, uint32_t max,
                 struct pe_http_request *req)
{
    char *b = dup_exact(in, n);
    struct pe_http_header *h = max ? malloc(max * sizeof(*h)) : NULL;
    int r = pe_http_parse_request(b, n, req, h, max);

    assert(r > 0 || r == PE_HTTP_INCOMPLETE || r == PE_HTTP_BAD ||
           r == PE_HTTP_TOO_MANY || r == PE_HTTP_BAD_LENGTH ||
           r == PE_HTTP_BAD_VERSION);
    if (r > 0) {
        assert((size_t)r <= n);
        assert(req->nheaders <= max);
        assert(req->minor_version <= 1);
        assert(req->method.len > 0 && req->target.len > 0);
        check_span(req->method, r);
        check_span(req->target, r);
        for (uint32_t k = 0; k < req->nheaders; k++) {
            check_span(h[k].name, r);
            check_span(h[k].value, r);
            assert(h[k].name.len > 0 && b[h[k].name.off + h[k].name.len] == ':');
        }
        if (req->flags & (PE_HTTP_CHUNKED | PE_HTTP_TE_OTHER))
            assert(!(req->flags & PE_HTTP_HAS_CL) && req->minor_version == 1);
        assert(b[r - 2] == '\r' && b[r - 1] == '\n');
    }
    free(h);
    free(b);
    return r;
}

struct decoded {
    int64_t rc;                 /* payload total, or PE_HTTP_BAD */
    size_t consumed;
    int done;
    char *payload;
};

static void decode(struct pe_http_chunked *st, const uint8_t *in, size_t n,
                   struct decoded *d)
{
    char *b = dup_exact(in, n);
    size_t consumed = 12345;
    int done = -1;
    int64_t r = pe_http_decode_chunked(st, b, n, &consumed, &done);

    if (r == PE_HTTP_BAD) {
        d->rc = PE_HTTP_BAD;
    } else {
        assert(r >= 0 && (size_t)r <= consumed && consumed <= n);
        assert(done == 0 || done == 1);
        assert(done || consumed == n);
        memcpy(d->payload + d->rc, b, (size_t)r);
        d->rc += r;
        d->consumed += consumed;
        d->done = done;
    }
    free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct pe_http_request req, preq;
    if (size < 1)
        return 0;
    unsigned ctl = data[0];
    const uint8_t *in = data + 1;
    size_t n = size - 1;
    uint32_t max = ctl & 31;
    size_t split = n * ctl / 255;

    int r = parse(in, n, max, &req);
    int rp = parse(in, split, max, &preq);
    if (r > 0 && split >= (size_t)r) {
        assert(rp == r && preq.flags == req.flags &&
               preq.nheaders == req.nheaders &&
               preq.content_length == req.content_length);
    } else {
        assert(rp == PE_HTTP_INCOMPLETE || rp == r);
    }

    const uint8_t *body = in;
    size_t blen = n;
    if (r > 0) {
        body += r;
        blen -= (size_t)r;
    }
    split = blen * ctl / 255;

    struct pe_http_chunked st1 = { 0 }, st2 = { 0 };
    struct decoded one = { 0, 0, 0, malloc(blen + 1) };
    struct decoded two = { 0, 0, 0, malloc(blen + 1) };
    decode(&st1, body, blen, &one);
    decode(&st2, body, split, &two);
    if (two.rc != PE_HTTP_BAD && !two.done)
        decode(&st2, body + split, blen - split, &two);
    assert(one.rc == two.rc);
    if (one.rc != PE_HTTP_BAD) {
        assert(one.done == two.done && one.consumed == two.consumed);
        assert(memcmp(one.payload, two.payload, (size_t)one.rc) == 0);
    }
    free(one.payload);
    free(two.payload);
    return 0;
}

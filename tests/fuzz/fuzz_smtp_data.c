/*
 * fuzz_smtp_data.c - the DATA body scanner (rl_smtp_data_scan) against its
 * contract in smtp.h and against a small reference model of it.
 *
 * Input layout: byte 0 = flags (bit 0: reject mode; bits 1-3: max_size
 * choice; bit 4: make emit fail), bytes 1-4 = chunk sizes used in turn to
 * split the body, byte 5 = which emit call fails; the rest is the body.
 *
 * Checked: at most one end of data; a scan that does not end consumes its
 * whole chunk; the bytes after the end are left unconsumed and later calls
 * consume and emit nothing; the output has no bare CR, no bare LF, no NUL;
 * without an error it holds exactly one end-of-data sequence, at its end,
 * iff the scan is done ("\r\n.\r\n", or ".\r\n" as the whole output); with
 * an error, nothing is emitted after it; the size counter and max_size agree
 * with the output; the split scan, the one-piece scan and the model give
 * the same output, consumption and error (with RL_E_TOO_BIG the output is
 * only a prefix of the unlimited one: where the limit bites depends on how
 * the bytes were emitted).  A failing emit callback stops the scan at once
 * and its value is returned.
 */
#include "fuzz_common.h"

#include "relabel/errors.h"
#include "relabel/smtp.h"

#define DATA_HDR 6
#define DATA_EMIT_FAIL (-7777)

struct data_out {
    char *p;
    size_t len, cap;
    size_t calls;
    size_t fail_at; /* 0: never, else the emit call that fails */
    bool failed;
};

static void
data_out_put(struct data_out *o, const char *p, size_t n)
{
    if (o->len + n > o->cap) {
        size_t cap = o->cap > 0 ? o->cap : 64;

        while (cap < o->len + n)
            cap *= 2;
        o->p = realloc(o->p, cap);
        FUZZ_CHECK(o->p != NULL);
        o->cap = cap;
    }
    if (n > 0)
        memcpy(o->p + o->len, p, n);
    o->len += n;
}

static int
data_emit(void *arg, const char *p, size_t n)
{
    struct data_out *o = arg;

    /* Nothing is emitted once the callback has refused. */
    FUZZ_CHECK(!o->failed);
    FUZZ_CHECK(p != NULL || n == 0);
    o->calls++;
    if (o->fail_at != 0 && o->calls == o->fail_at) {
        o->failed = true;
        return DATA_EMIT_FAIL;
    }
    data_out_put(o, p, n);
    return 0;
}

struct data_result {
    struct data_out out;
    size_t consumed;
    bool done;
    int error;
    bool emit_failed;
    uint64_t size;
};

/*
 * Scans body[0..len) in chunks whose sizes cycle through sizes[0..3] (0
 * means an empty call), each chunk copied into a block of exactly its size.
 */
static void
data_scan(const char *body, size_t len, bool reject, uint64_t max_size, const uint8_t sizes[4],
          size_t fail_at, struct data_result *res)
{
    struct rl_smtp_data d;
    size_t off = 0, k = 0, ndone = 0;
    bool all_zero = sizes[0] == 0 && sizes[1] == 0 && sizes[2] == 0 && sizes[3] == 0;

    memset(res, 0, sizeof(*res));
    res->out.fail_at = fail_at;
    rl_smtp_data_init(&d, reject, max_size);
    for (;;) {
        size_t n = all_zero ? len - off : sizes[k++ % 4];
        char *chunk;
        bool done = false;
        size_t before = res->out.len;
        int error_before = d.error;
        long r;

        if (n > len - off)
            n = len - off;
        chunk = fuzz_dup(body + off, n);
        r = rl_smtp_data_scan(&d, chunk, n, data_emit, &res->out, &done);
        free(chunk);
        if (r < 0) {
            /* Only the callback's own value comes back. */
            FUZZ_CHECK(r == DATA_EMIT_FAIL && res->out.failed);
            res->emit_failed = true;
            break;
        }
        FUZZ_CHECK(!res->out.failed);
        FUZZ_CHECK((size_t)r <= n);
        /* Nothing is emitted after an error. */
        FUZZ_CHECK(error_before == 0 || res->out.len == before);
        FUZZ_CHECK(error_before == 0 || d.error == error_before);
        off += (size_t)r;
        if (done) {
            ndone++;
            FUZZ_CHECK(ndone == 1);
            break;
        }
        FUZZ_CHECK((size_t)r == n);
        if (off == len)
            break;
    }
    res->consumed = off;
    res->error = d.error;
    res->size = d.size;
    res->done = ndone == 1;
    if (res->done) {
        /* Once done, nothing more is consumed or emitted. */
        size_t before = res->out.len, calls = res->out.calls;
        bool done = false;
        long r = rl_smtp_data_scan(&d, body + off, len - off, data_emit, &res->out, &done);

        FUZZ_CHECK(r == 0 && done);
        FUZZ_CHECK(res->out.len == before && res->out.calls == calls);
    }
}

/*
 * The reference model: the whole body at once, line by line.  Produces the
 * output without any size limit, the consumed count, done, the first NUL or
 * bare-newline error, and how many output bytes came before that error.
 */
struct data_model {
    struct data_out out;
    size_t consumed;
    bool done;
    int error;
    size_t before_error; /* output bytes before the error (== out.len if none) */
};

static void
data_model_emit(struct data_model *m, const char *p, size_t n)
{
    if (m->error == 0)
        data_out_put(&m->out, p, n);
}

static void
data_model_fail(struct data_model *m, int err)
{
    if (m->error == 0) {
        m->error = err;
        m->before_error = m->out.len;
    }
}

/* Emits line[0..n), stopping with RL_E_NUL at a NUL. */
static void
data_model_text(struct data_model *m, const char *line, size_t n)
{
    const char *nul = n > 0 ? memchr(line, '\0', n) : NULL;

    if (nul == NULL) {
        data_model_emit(m, line, n);
        return;
    }
    data_model_emit(m, line, (size_t)(nul - line));
    data_model_fail(m, RL_E_NUL);
}

static void
data_model(const char *p, size_t len, bool reject, struct data_model *m)
{
    size_t pos = 0;
    bool bare_bol = false; /* the current line followed a bare CR or LF */

    memset(m, 0, sizeof(*m));
    while (pos < len) {
        size_t j = pos, tlen;
        bool bare, dot;

        while (j < len && p[j] != '\r' && p[j] != '\n')
            j++;
        dot = j - pos == 1 && p[pos] == '.' && !bare_bol;
        if (j == len || (p[j] == '\r' && j + 1 == len)) {
            /* Incomplete line: what may be emitted already is.  A "." at
             * a proper line start and a trailing CR are held back. */
            if (!dot) {
                if (bare_bol && j > pos && p[pos] == '.')
                    data_model_emit(m, ".", 1);
                data_model_text(m, p + pos, j - pos);
            }
            pos = len;
            break;
        }
        bare = !(p[j] == '\r' && p[j + 1] == '\n');
        tlen = bare ? 1 : 2;
        if (dot && !bare) {
            data_model_emit(m, ".\r\n", 3);
            m->done = true;
            pos = j + tlen;
            break;
        }
        if (dot) {
            /* "." ended by a bare CR/LF: the stuffed line "..". */
            if (reject)
                data_model_fail(m, RL_E_BARE_NEWLINE);
            data_model_emit(m, "..\r\n", 4);
        } else {
            if (bare_bol && j > pos && p[pos] == '.')
                data_model_emit(m, ".", 1);
            data_model_text(m, p + pos, j - pos);
            if (bare && reject)
                data_model_fail(m, RL_E_BARE_NEWLINE);
            data_model_emit(m, "\r\n", 2);
        }
        bare_bol = bare;
        pos = j + tlen;
    }
    m->consumed = pos;
    if (m->error == 0)
        m->before_error = m->out.len;
}

/* No bare CR, no bare LF, no NUL in out[0..n). */
static void
data_check_clean(const char *o, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        FUZZ_CHECK(o[i] != '\0');
        if (o[i] == '\r')
            FUZZ_CHECK(i + 1 < n && o[i + 1] == '\n');
        if (o[i] == '\n')
            FUZZ_CHECK(i > 0 && o[i - 1] == '\r');
    }
}

/* Position of the first end-of-data sequence in o[0..n), or n. */
static size_t
data_find_end(const char *o, size_t n)
{
    size_t i;

    if (n >= 3 && memcmp(o, ".\r\n", 3) == 0)
        return 0;
    for (i = 0; i + 5 <= n; i++) {
        if (memcmp(o + i, "\r\n.\r\n", 5) == 0)
            return i + 2;
    }
    return n;
}

static void
data_check_result(const struct data_result *res, uint64_t max_size)
{
    const char *o = res->out.p;
    size_t n = res->out.len;

    data_check_clean(o, n);
    if (res->error == 0 && res->done) {
        /* Exactly one end of data, at the very end of the output. */
        FUZZ_CHECK(n >= 3 && memcmp(o + n - 3, ".\r\n", 3) == 0);
        FUZZ_CHECK(n == 3 || (n >= 5 && memcmp(o + n - 5, "\r\n.\r\n", 5) == 0));
        FUZZ_CHECK(data_find_end(o, n) == n - 3);
        FUZZ_CHECK(res->size == n - 3);
    } else {
        /* Not done, or refused: the upstream must not see an end. */
        FUZZ_CHECK(data_find_end(o, n) == n);
        FUZZ_CHECK(res->size == n);
    }
    FUZZ_CHECK(res->error == 0 || res->error == RL_E_NUL || res->error == RL_E_BARE_NEWLINE ||
               res->error == RL_E_TOO_BIG);
    if (max_size != 0)
        FUZZ_CHECK(res->size <= max_size);
}

static bool
data_same(const struct data_result *a, const struct data_result *b)
{
    return a->consumed == b->consumed && a->done == b->done && a->error == b->error &&
           a->out.len == b->out.len &&
           (a->out.len == 0 || memcmp(a->out.p, b->out.p, a->out.len) == 0);
}

/* a's output is a prefix of b's. */
static bool
data_prefix(const struct data_out *a, const struct data_out *b)
{
    return a->len <= b->len && (a->len == 0 || memcmp(a->p, b->p, a->len) == 0);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint64_t max_sizes[8] = {0, 1, 3, 5, 16, 64, 1000, 25u * 1024u * 1024u};
    static const uint8_t one_piece[4] = {0, 0, 0, 0};
    struct data_result split, whole, unlimited, failing;
    struct data_model m;
    const char *body;
    size_t len;
    bool reject;
    uint64_t max_size;
    uint8_t sizes[4];

    if (size < DATA_HDR)
        return 0;
    reject = data[0] & 1;
    max_size = max_sizes[(data[0] >> 1) & 7];
    /* Mostly small chunks: they exercise the held states. */
    for (size_t i = 0; i < 4; i++)
        sizes[i] = data[1 + i] & 0x80 ? data[1 + i] : data[1 + i] & 7;
    body = (const char *)data + DATA_HDR;
    len = size - DATA_HDR;

    data_scan(body, len, reject, max_size, sizes, 0, &split);
    data_scan(body, len, reject, max_size, one_piece, 0, &whole);
    data_scan(body, len, reject, 0, one_piece, 0, &unlimited);
    data_model(body, len, reject, &m);

    data_check_result(&split, max_size);
    data_check_result(&whole, max_size);
    data_check_result(&unlimited, 0);

    /* The model and the unlimited scan agree exactly. */
    FUZZ_CHECK(unlimited.consumed == m.consumed && unlimited.done == m.done);
    FUZZ_CHECK(unlimited.error == m.error);
    FUZZ_CHECK(unlimited.out.len == m.before_error);
    FUZZ_CHECK(data_prefix(&unlimited.out, &m.out));

    if (split.error == RL_E_TOO_BIG || whole.error == RL_E_TOO_BIG) {
        /* The limit bites where the body passes max_size, before any
         * other error would have. */
        uint64_t body_len = unlimited.out.len - (unlimited.done && unlimited.error == 0 ? 3 : 0);

        FUZZ_CHECK(split.error == RL_E_TOO_BIG && whole.error == RL_E_TOO_BIG);
        FUZZ_CHECK(body_len > max_size);
        FUZZ_CHECK(split.consumed == whole.consumed && split.done == whole.done);
        FUZZ_CHECK(split.consumed == unlimited.consumed && split.done == unlimited.done);
        FUZZ_CHECK(data_prefix(&split.out, &unlimited.out));
        FUZZ_CHECK(data_prefix(&whole.out, &unlimited.out));
    } else {
        FUZZ_CHECK(data_same(&split, &whole));
        FUZZ_CHECK(data_same(&split, &unlimited));
    }

    /* A failing callback stops the scan with its own value. */
    if ((data[0] & 0x10) && split.out.calls > 0) {
        size_t fail_at = 1 + data[5] % split.out.calls;

        data_scan(body, len, reject, max_size, sizes, fail_at, &failing);
        FUZZ_CHECK(failing.emit_failed);
        FUZZ_CHECK(data_prefix(&failing.out, &split.out));
        free(failing.out.p);
    }

    free(split.out.p);
    free(whole.out.p);
    free(unlimited.out.p);
    free(m.out.p);
    return 0;
}

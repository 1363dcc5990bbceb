/*
 * fuzz_smtp_ehlo.c - rl_smtp_ehlo_caps() and rl_smtp_ehlo_render() against
 * their contract in smtp.h and a reference filter.
 *
 * Input layout: byte 0 = options (bit 0 starttls, bit 1 auth, bits 2-4
 * size_cap choice, bits 5-6 hostname choice), byte 1 = capacity of the small
 * output buffer; the rest is parsed as the upstream's reply.
 *
 * For a complete 250 reply: caps are exactly the flags of the keywords on
 * the lines after the first (SIZE value 0 without SIZE); the rendered reply
 * is a well-formed 250 reply ("250-" on every line but the last "250 ",
 * CRLF, parses back as one reply), its first line is the hostname, then the
 * upstream's allowed lines in the upstream's order (PIPELINING, SIZE,
 * 8BITMIME, ENHANCEDSTATUSCODES, DSN, SMTPUTF8, AUTH only with opts.auth;
 * each once), SIZE <= cap when a cap is set, STARTTLS only with
 * opts.starttls and then exactly once and last; never CHUNKING or
 * BINARYMIME.  The small buffer gives the same bytes or RL_E_FULL, never
 * more than its capacity.  A local reply (no upstream reply) is checked the
 * same way.
 */
#include "fuzz_common.h"

#include "relabel/errors.h"
#include "relabel/smtp.h"

#define EHLO_HDR 2

struct ehlo_kw {
    const char *name;
    unsigned flag; /* public RL_EHLO_* flag, 0 for none */
    bool keep;
};

static const struct ehlo_kw ehlo_kws[] = {
    {"STARTTLS", RL_EHLO_STARTTLS, false},
    {"PIPELINING", RL_EHLO_PIPELINING, true},
    {"AUTH", RL_EHLO_AUTH, true},
    {"SIZE", RL_EHLO_SIZE, true},
    {"CHUNKING", RL_EHLO_CHUNKING, false},
    {"8BITMIME", RL_EHLO_8BITMIME, true},
    {"SMTPUTF8", RL_EHLO_SMTPUTF8, true},
    {"ENHANCEDSTATUSCODES", 0, true},
    {"DSN", 0, true},
};
#define EHLO_NKWS (sizeof(ehlo_kws) / sizeof(ehlo_kws[0]))

/* The keyword of a capability line: up to the first space. */
static const struct ehlo_kw *
ehlo_kw_of(const char *text, size_t len, size_t *kwlen)
{
    size_t n, k;

    for (n = 0; n < len && text[n] != ' '; n++)
        ;
    if (kwlen != NULL)
        *kwlen = n;
    for (k = 0; k < EHLO_NKWS; k++) {
        if (fuzz_ieq(text, n, ehlo_kws[k].name))
            return &ehlo_kws[k];
    }
    return NULL;
}

/* Adds digit d to *v; false on overflow. */
static bool
ehlo_digit(uint64_t *v, unsigned d)
{
    if (*v > (UINT64_MAX - d) / 10)
        return false;
    *v = *v * 10 + d;
    return true;
}

/* The number after "SIZE" and spaces: its leading digits, saturating. */
static uint64_t
ehlo_leading_number(const char *text, size_t len)
{
    uint64_t v = 0;
    size_t i = 4;

    while (i < len && text[i] == ' ')
        i++;
    for (; i < len && text[i] >= '0' && text[i] <= '9'; i++) {
        if (!ehlo_digit(&v, (unsigned)(text[i] - '0')))
            return UINT64_MAX;
    }
    return v;
}

/* "SIZE" SP digits, nothing else; the value in *v. */
static bool
ehlo_size_of(const char *text, size_t len, uint64_t *v)
{
    size_t i;

    *v = 0;
    if (len < 6 || memcmp(text, "SIZE ", 5) != 0)
        return false;
    for (i = 5; i < len; i++) {
        if (text[i] < '0' || text[i] > '9' || !ehlo_digit(v, (unsigned)(text[i] - '0')))
            return false;
    }
    return true;
}

/* An expected output line after the first. */
struct ehlo_line {
    const char *text; /* NULL: "SIZE <size>" */
    size_t len;
    uint64_t size;
};

static void
ehlo_check_render(const char *reply, size_t len, const struct rl_smtp_ehlo_opts *opts,
                  size_t small_cap)
{
    struct ehlo_line want[EHLO_NKWS + 2];
    size_t nwant = 0, off = 0, nline = 0, out_len = 0, small_len = 0, big_cap, i, o;
    const char *host = opts->hostname != NULL ? opts->hostname : "";
    const char *text;
    size_t tlen;
    bool last, seen_size = false;
    const struct ehlo_kw *seen[EHLO_NKWS];
    size_t nseen = 0;
    char *big, *small;
    struct rl_smtp_reply r;
    int rc;

    /* The reference filter. */
    while (reply != NULL && rl_smtp_reply_line(reply, len, &off, &text, &tlen, &last)) {
        const struct ehlo_kw *kw;
        bool dup = false;

        if (nline++ == 0)
            continue;
        kw = ehlo_kw_of(text, tlen, NULL);
        if (kw == NULL || !kw->keep ||
            (kw->flag == RL_EHLO_AUTH && (!opts->auth || opts->auth_line != NULL)))
            continue;
        for (i = 0; i < nseen; i++)
            dup = dup || seen[i] == kw;
        if (dup)
            continue;
        seen[nseen++] = kw;
        want[nwant].text = text;
        want[nwant].len = tlen;
        want[nwant].size = 0;
        if (kw->flag == RL_EHLO_SIZE) {
            seen_size = true;
            if (opts->size_cap != 0) {
                uint64_t v;

                /* Only the leading digits count (RFC 1870 has nothing
                 * after the number); an overflow saturates. */
                want[nwant].text = NULL;
                v = ehlo_leading_number(text, tlen);
                want[nwant].size = v == 0 || v > opts->size_cap ? opts->size_cap : v;
            }
        }
        nwant++;
    }
    if (opts->size_cap != 0 && !seen_size) {
        want[nwant].text = NULL;
        want[nwant].size = opts->size_cap;
        nwant++;
    }
    if (opts->auth && opts->auth_line != NULL) {
        /* relabel's own AUTH line replaces the upstream's. */
        want[nwant].text = opts->auth_line;
        want[nwant].len = strlen(opts->auth_line);
        want[nwant].size = 0;
        nwant++;
    }
    if (opts->starttls) {
        want[nwant].text = "STARTTLS";
        want[nwant].len = 8;
        nwant++;
    }

    /* Everything fits in the reply's own size plus the generated lines. */
    big_cap = len + strlen(host) + 128;
    big = malloc(big_cap);
    FUZZ_CHECK(big != NULL);
    rc = rl_smtp_ehlo_render(reply, len, opts, big, big_cap, &out_len);
    FUZZ_CHECK(rc == RL_SMTP_OK);
    FUZZ_CHECK(out_len <= big_cap);

    /* Well-formed: parses back as one complete 250 reply, CRLF only. */
    FUZZ_CHECK(rl_smtp_reply_parse(big, out_len, out_len + 1, &r) == RL_SMTP_OK);
    FUZZ_CHECK(r.code == 250 && r.len == out_len && r.lines == nwant + 1);
    for (i = 0; i < out_len; i++) {
        FUZZ_CHECK(big[i] != '\0');
        if (big[i] == '\n')
            FUZZ_CHECK(i > 0 && big[i - 1] == '\r');
    }

    /* Line by line against the reference. */
    off = 0;
    o = 0;
    for (i = 0; i <= nwant; i++) {
        const char *line = big + o;
        const char *crlf;
        size_t n;
        char size_text[32];

        FUZZ_CHECK(o < out_len);
        crlf = memchr(line, '\n', out_len - o);
        FUZZ_CHECK(crlf != NULL && crlf > line && crlf[-1] == '\r');
        n = (size_t)(crlf - line) - 1;
        FUZZ_CHECK(n >= 4);
        FUZZ_CHECK(memcmp(line, i < nwant ? "250-" : "250 ", 4) == 0);
        if (i == 0) {
            FUZZ_CHECK(n - 4 == strlen(host) && memcmp(line + 4, host, n - 4) == 0);
        } else {
            const struct ehlo_line *w = &want[i - 1];
            const struct ehlo_kw *kw;
            size_t kwlen;

            if (w->text != NULL) {
                FUZZ_CHECK(n - 4 == w->len && memcmp(line + 4, w->text, w->len) == 0);
            } else {
                int k = snprintf(size_text, sizeof(size_text), "SIZE %llu",
                                 (unsigned long long)w->size);

                FUZZ_CHECK(n - 4 == (size_t)k && memcmp(line + 4, size_text, (size_t)k) == 0);
            }
            /* And the rules themselves, independently of the model. */
            kw = ehlo_kw_of(line + 4, n - 4, &kwlen);
            FUZZ_CHECK(kw != NULL);
            FUZZ_CHECK(kw->flag != RL_EHLO_CHUNKING);
            FUZZ_CHECK(!fuzz_ieq(line + 4, kwlen, "BINARYMIME"));
            FUZZ_CHECK(kw->flag != RL_EHLO_AUTH || opts->auth);
            if (kw->flag == RL_EHLO_STARTTLS)
                FUZZ_CHECK(opts->starttls && i == nwant && n - 4 == 8);
            if (kw->flag == RL_EHLO_SIZE && opts->size_cap != 0) {
                uint64_t v;

                FUZZ_CHECK(ehlo_size_of(line + 4, n - 4, &v));
                FUZZ_CHECK(v > 0 && v <= opts->size_cap);
            }
        }
        o += n + 2;
    }
    FUZZ_CHECK(o == out_len);
    if (opts->starttls)
        FUZZ_CHECK(out_len >= 14 && memcmp(big + out_len - 14, "250 STARTTLS\r\n", 14) == 0);

    /* The small buffer: the same bytes, or RL_E_FULL. */
    small = malloc(small_cap > 0 ? small_cap : 1);
    FUZZ_CHECK(small != NULL);
    rc = rl_smtp_ehlo_render(reply, len, opts, small, small_cap, &small_len);
    if (out_len <= small_cap) {
        FUZZ_CHECK(rc == RL_SMTP_OK && small_len == out_len);
        FUZZ_CHECK(memcmp(small, big, out_len) == 0);
    } else {
        FUZZ_CHECK(rc == RL_E_FULL);
        FUZZ_CHECK(small_len <= small_cap);
    }
    free(small);
    free(big);
}

static void
ehlo_check_caps(const char *reply, size_t len)
{
    size_t off = 0, nline = 0;
    unsigned want = 0, caps;
    uint64_t size = 1;
    const char *text;
    size_t tlen;
    bool last;

    while (rl_smtp_reply_line(reply, len, &off, &text, &tlen, &last)) {
        const struct ehlo_kw *kw;

        if (nline++ == 0)
            continue;
        kw = ehlo_kw_of(text, tlen, NULL);
        if (kw != NULL)
            want |= kw->flag;
    }
    caps = rl_smtp_ehlo_caps(reply, len, &size);
    FUZZ_CHECK(caps == want);
    if (!(caps & RL_EHLO_SIZE))
        FUZZ_CHECK(size == 0);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint64_t caps[8] = {0,         1,         1000,           25u * 1024u * 1024u,
                                     52428800u, 52428801u, UINT64_MAX - 1, UINT64_MAX};
    static const char *const hosts[4] = {"smtp.example.com", "mx", "", NULL};
    struct rl_smtp_ehlo_opts opts;
    struct rl_smtp_reply r;
    const char *reply;
    size_t len, small_cap;
    char *copy;

    if (size < EHLO_HDR)
        return 0;
    opts.starttls = data[0] & 1;
    opts.auth = (data[0] >> 1) & 1;
    opts.size_cap = caps[(data[0] >> 2) & 7];
    opts.hostname = hosts[(data[0] >> 5) & 3];
    opts.auth_line = (data[0] & 0x80) != 0 ? "AUTH PLAIN LOGIN" : NULL;
    small_cap = data[1];
    reply = (const char *)data + EHLO_HDR;
    len = size - EHLO_HDR;

    /* The local reply, without an upstream one. */
    ehlo_check_render(NULL, 0, &opts, small_cap);

    if (rl_smtp_reply_parse(reply, len, len + 1, &r) != RL_SMTP_OK || r.code != 250)
        return 0;
    /* Only the reply's own bytes, so that over-reads show. */
    copy = fuzz_dup(reply, r.len);
    ehlo_check_caps(copy, r.len);
    ehlo_check_render(copy, r.len, &opts, small_cap);
    free(copy);
    return 0;
}

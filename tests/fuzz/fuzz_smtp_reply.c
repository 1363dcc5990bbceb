/*
 * fuzz_smtp_reply.c - rl_smtp_reply_parse(), rl_smtp_reply_line() and
 * rl_smtp_hide() against their contract in smtp.h.
 *
 * The input is read as the upstream's byte stream, reply after reply, at
 * several limits.  For an accepted reply: code 200..599, len > 0 and ending
 * in LF, every line "DDD" + '-'/' '/nothing with the same code, '-' on all
 * but the last, no CR/NUL inside a line; rl_smtp_reply_line() yields exactly
 * r.lines lines, texts inside the reply, `last` on the final one only; the
 * same reply cut out on its own parses the same.  MORE, LINE_TOO_LONG and
 * PROTO are checked against the limit.  Every line text is passed through
 * rl_smtp_hide() with Mailgun's names into a small and a large buffer: the
 * result never exceeds cap, never holds a hidden name as a whole token, and
 * the small result is a prefix of the large one.
 */
#include "fuzz_common.h"

#include "relabel/errors.h"
#include "relabel/smtp.h"

static const char *const reply_names[] = {"mailgun.org", "postgun.com", "mailgun"};
#define REPLY_NNAMES (sizeof(reply_names) / sizeof(reply_names[0]))
static const char reply_repl[] = "smtp.example.com";

static bool
reply_is_token(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
}

/* The token tok[0..n) (trailing dots already removed) names the provider. */
static bool
reply_names_provider(const char *tok, size_t n)
{
    /* A name occurs as whole labels: bounded by the token's ends or by
     * '.', '-' or '_' on both sides. */
    for (size_t i = 0; i < REPLY_NNAMES; i++) {
        size_t nl = strlen(reply_names[i]);

        for (size_t at = 0; nl <= n && at + nl <= n; at++) {
            bool left = at == 0 || strchr(".-_", tok[at - 1]) != NULL;
            bool right = at + nl == n || strchr(".-_", tok[at + nl]) != NULL;

            if (left && right && fuzz_ieq(tok + at, nl, reply_names[i]))
                return true;
        }
    }
    return false;
}

/* No token of out[0..n) names the provider; in particular no "mailgun". */
static void
reply_check_hidden(const char *out, size_t n)
{
    size_t i = 0;

    while (i < n) {
        size_t j = i, k;

        if (!reply_is_token(out[i])) {
            i++;
            continue;
        }
        while (j < n && reply_is_token(out[j]))
            j++;
        for (k = j; k > i && out[k - 1] == '.'; k--)
            ;
        FUZZ_CHECK(!reply_names_provider(out + i, k - i));
        FUZZ_CHECK(!fuzz_ieq(out + i, k - i, "mailgun"));
        i = j;
    }
}

static void
reply_check_hide(const char *text, size_t len)
{
    /* A matching token is at least 7 bytes and becomes 16: 3x is enough. */
    size_t big_cap = 3 * len + sizeof(reply_repl);
    char *big = malloc(big_cap);
    char small[24];
    size_t nb, ns, small_cap = len % sizeof(small);

    FUZZ_CHECK(big != NULL);
    nb = rl_smtp_hide(text, len, reply_names, REPLY_NNAMES, reply_repl, big, big_cap);
    FUZZ_CHECK(nb <= big_cap);
    /* Not truncated: nothing but matching tokens changes length. */
    FUZZ_CHECK(nb < big_cap);
    reply_check_hidden(big, nb);
    /* A text without any provider name is copied unchanged. */
    {
        char *none = malloc(len + 1);

        FUZZ_CHECK(none != NULL);
        FUZZ_CHECK(rl_smtp_hide(text, len, NULL, 0, reply_repl, none, len + 1) == len);
        FUZZ_CHECK(len == 0 || memcmp(none, text, len) == 0);
        free(none);
    }

    ns = rl_smtp_hide(text, len, reply_names, REPLY_NNAMES, reply_repl, small, small_cap);
    FUZZ_CHECK(ns <= small_cap);
    FUZZ_CHECK(ns <= nb && (ns == 0 || memcmp(small, big, ns) == 0));
    /* Cut short, the output ends at a token boundary: a token is written
     * whole or not at all, so no cut token can name the provider. */
    if (ns < nb && ns > 0)
        FUZZ_CHECK(!reply_is_token(small[ns - 1]) || !reply_is_token(big[ns]));
    reply_check_hidden(small, ns);
    free(big);
}

/* Checks the lines of an accepted reply p[0..r->len). */
static void
reply_check_lines(const char *p, const struct rl_smtp_reply *r)
{
    size_t off = 0, count = 0;
    const char *text;
    size_t text_len;
    bool last = false;

    for (;;) {
        size_t start = off, n, end;
        const char *s = p + off;
        const char *lf;
        bool more;

        more = rl_smtp_reply_line(p, r->len, &off, &text, &text_len, &last);
        if (!more)
            break;
        count++;
        FUZZ_CHECK(count <= r->lines);
        FUZZ_CHECK(off > start && off <= r->len);
        /* Each line ends at its LF. */
        lf = memchr(s, '\n', r->len - start);
        FUZZ_CHECK(lf != NULL && off == (size_t)(lf - p) + 1);
        end = (size_t)(lf - p);
        n = end - start;
        if (n > 0 && p[end - 1] == '\r')
            n--;
        FUZZ_CHECK(n >= 3);
        FUZZ_CHECK((s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0') == r->code);
        FUZZ_CHECK(n == 3 || s[3] == '-' || s[3] == ' ');
        FUZZ_CHECK(last == (n == 3 || s[3] != '-'));
        FUZZ_CHECK(last == (count == r->lines));
        FUZZ_CHECK(fuzz_within(text, text_len, p, r->len));
        FUZZ_CHECK(text_len == (n > 3 ? n - 4 : 0));
        FUZZ_CHECK(n <= 3 || text == s + 4);
        FUZZ_CHECK(!fuzz_has(text, text_len, '\r'));
        FUZZ_CHECK(!fuzz_has(text, text_len, '\n'));
        FUZZ_CHECK(!fuzz_has(text, text_len, '\0'));
        reply_check_hide(text, text_len);
    }
    FUZZ_CHECK(count == r->lines);
    FUZZ_CHECK(off == r->len);
    FUZZ_CHECK(last);
}

static void
reply_stream(const char *p, size_t len, size_t max)
{
    size_t off = 0;

    while (off < len) {
        struct rl_smtp_reply r, r2;
        size_t rest = len - off;
        int rc = rl_smtp_reply_parse(p + off, rest, max, &r);

        if (rc == RL_SMTP_MORE) {
            FUZZ_CHECK(rest < max);
            break;
        }
        if (rc == RL_E_LINE_TOO_LONG) {
            FUZZ_CHECK(rest >= max);
            break;
        }
        if (rc == RL_E_PROTO)
            break;
        FUZZ_CHECK(rc == RL_SMTP_OK);
        FUZZ_CHECK(r.code >= 200 && r.code <= 599);
        FUZZ_CHECK(r.len > 0 && r.len <= rest && r.len <= max);
        FUZZ_CHECK(r.lines >= 1 && r.lines <= r.len);
        FUZZ_CHECK(p[off + r.len - 1] == '\n');
        reply_check_lines(p + off, &r);

        /* The same reply on its own, in a block of exactly its size. */
        {
            char *q = fuzz_dup(p + off, r.len);

            FUZZ_CHECK(rl_smtp_reply_parse(q, r.len, max, &r2) == RL_SMTP_OK);
            FUZZ_CHECK(r2.code == r.code && r2.len == r.len && r2.lines == r.lines);
            /* Any shorter cut of it is incomplete, never a different reply. */
            if (r.len > 1) {
                int rc2 = rl_smtp_reply_parse(q, r.len - 1, max, &r2);

                FUZZ_CHECK(rc2 == RL_SMTP_MORE || rc2 == RL_E_LINE_TOO_LONG);
            }
            free(q);
        }
        off += r.len;
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const size_t maxes[] = {4, 16, 512, 16384};
    const char *p = (const char *)data;
    size_t i;

    for (i = 0; i < sizeof(maxes) / sizeof(maxes[0]); i++)
        reply_stream(p, size, maxes[i]);
    reply_stream(p, size, size + 1);
    return 0;
}

/*
 * smtp_reply.c - finds complete (possibly multi-line) replies in the
 * upstream's bytes (RFC 5321 §4.2, §4.2.1), walks their lines, and rewrites
 * reply text so that it never names the provider.  Results point into the
 * caller's bytes.  Must not allocate, log or do I/O, and must never read past
 * the given length.
 */
#include <string.h>

#include "relabel/buf.h"
#include "relabel/errors.h"
#include "relabel/limits.h"
#include "relabel/smtp.h"

static bool
reply_is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/*
 * Checks the start of one reply line, s[0..n), which may be incomplete:
 * "DDD" with the first digit 2..5 (RFC 5321 §4.2.1), then '-', ' ' or the
 * end of the line.  `partial` allows a CR in the separator position, since
 * its LF may still be on the way.  Sets *code once three digits are there,
 * else leaves it at 0.
 */
static bool
reply_head_ok(const char *s, size_t n, bool partial, int *code)
{
    size_t i;

    *code = 0;
    for (i = 0; i < 3 && i < n; i++) {
        if (!reply_is_digit(s[i]))
            return false;
    }
    if (n >= 1 && (s[0] < '2' || s[0] > '5'))
        return false;
    if (n < 3)
        return partial;
    *code = (s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0');
    if (n == 3)
        return true;
    return s[3] == '-' || s[3] == ' ' || (partial && s[3] == '\r');
}

int
rl_smtp_reply_parse(const char *p, size_t len, size_t max, struct rl_smtp_reply *r)
{
    size_t window = len < max ? len : max;
    size_t off = 0, lines = 0;
    int first = 0;

    memset(r, 0, sizeof(*r));
    for (;;) {
        const char *lf = memchr(p + off, '\n', window - off);
        size_t end, n;
        int code;
        bool last;

        if (lf == NULL) {
            /* Refuse garbage early rather than waiting for max bytes of
             * it: the incomplete line must at least start like a reply. */
            if (!reply_head_ok(p + off, window - off, true, &code) ||
                (code != 0 && first != 0 && code != first))
                return RL_E_PROTO;
            return len < max ? RL_SMTP_MORE : RL_E_LINE_TOO_LONG;
        }
        end = (size_t)(lf - p);
        n = end - off;
        if (n > 0 && p[end - 1] == '\r')
            n--;
        if (n < 3 || !reply_head_ok(p + off, n, false, &code))
            return RL_E_PROTO;
        /* RFC 5321 §4.2.1: every line of a multi-line reply has the same
         * code; a mismatch means we lost track of the reply boundaries. */
        if (first == 0)
            first = code;
        else if (code != first)
            return RL_E_PROTO;
        /* A stray CR or a NUL would reach the client unchanged. */
        if (memchr(p + off, '\r', n) != NULL || memchr(p + off, '\0', n) != NULL)
            return RL_E_PROTO;
        lines++;
        last = n == 3 || p[off + 3] != '-';
        off = end + 1;
        if (last)
            break;
    }
    r->code = first;
    r->len = off;
    r->lines = lines;
    return RL_SMTP_OK;
}

bool
rl_smtp_reply_line(const char *reply, size_t len, size_t *off, const char **text, size_t *text_len,
                   bool *last)
{
    const char *s, *lf;
    size_t n, next;

    if (*off >= len)
        return false;
    s = reply + *off;
    lf = memchr(s, '\n', len - *off);
    n = lf != NULL ? (size_t)(lf - s) : len - *off;
    next = *off + n + (lf != NULL ? 1 : 0);
    if (n > 0 && s[n - 1] == '\r')
        n--;
    if (n > 3) {
        *text = s + 4;
        *text_len = n - 4;
        *last = s[3] != '-';
    } else {
        *text = s + n;
        *text_len = 0;
        *last = true;
    }
    *off = next;
    return true;
}

/* RFC 1035 §2.3.1 letters, digits and hyphen, plus the dots between labels
 * and the underscore some service names carry. */
static bool
hide_is_token(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
}

static int
hide_lower(int c)
{
    return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

static bool
hide_equal(const char *a, const char *b, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (hide_lower((unsigned char)a[i]) != hide_lower((unsigned char)b[i]))
            return false;
    }
    return true;
}

/* Labels are separated by dots and, for this purpose, hyphens. */
static bool
hide_is_sep(char c)
{
    return c == '.' || c == '-' || c == '_';
}

/*
 * A token names the provider when one of the names occurs in it as a run of
 * whole labels: "smtp.mailgun.org", "mailgun-eu" and "Mailgun" do,
 * "notmailgun.org" and "mailgunner" do not.  Such a token is replaced as a
 * whole, so no part of a provider host name is left behind.
 */
static bool
hide_match(const char *tok, size_t n, const char *const *names, size_t nnames)
{
    size_t i;

    for (i = 0; i < nnames; i++) {
        size_t nl, at;

        if (names[i] == NULL || names[i][0] == '\0')
            continue;
        nl = strlen(names[i]);
        for (at = 0; nl <= n && at <= n - nl; at++) {
            if ((at == 0 || hide_is_sep(tok[at - 1])) &&
                (at + nl == n || hide_is_sep(tok[at + nl])) && hide_equal(tok + at, names[i], nl))
                return true;
        }
    }
    return false;
}

static size_t
hide_put(char *out, size_t cap, size_t o, const char *s, size_t n)
{
    if (n > cap - o)
        n = cap - o;
    if (n == 0)
        return o;
    memcpy(out + o, s, n);
    return o + n;
}

size_t
rl_smtp_hide(const char *text, size_t len, const char *const *names, size_t nnames,
             const char *repl, char *out, size_t cap)
{
    size_t rl = repl != NULL ? strlen(repl) : 0;
    size_t i = 0, o = 0;

    while (i < len && o < cap) {
        size_t j = i, k;

        if (!hide_is_token(text[i])) {
            while (j < len && !hide_is_token(text[j]))
                j++;
            o = hide_put(out, cap, o, text + i, j - i);
            i = j;
            continue;
        }
        while (j < len && hide_is_token(text[j]))
            j++;
        /* Trailing dots end a sentence ("... by smtp.mailgun.org.") or
         * make a name absolute; they are kept, but not compared. */
        for (k = j; k > i && text[k - 1] == '.'; k--)
            ;
        /* A token is written whole or not at all: cut short, a token that
         * names nothing ("mailgunx") could become one that does. */
        if (k > i && hide_match(text + i, k - i, names, nnames)) {
            if (rl + (j - k) > cap - o)
                break;
            o = hide_put(out, cap, o, repl, rl);
            o = hide_put(out, cap, o, text + k, j - k);
        } else {
            if (j - i > cap - o)
                break;
            o = hide_put(out, cap, o, text + i, j - i);
        }
        i = j;
    }
    return o;
}

int
rl_smtp_reply_take(struct rl_buf *in, struct rl_smtp_reply *r, const char **p)
{
    int rc;

    *p = rl_buf_data(in);
    rc = rl_smtp_reply_parse(*p, rl_buf_len(in), RL_SMTP_REPLY_MAX, r);
    if (rc == RL_SMTP_OK)
        rl_buf_consume(in, r->len);
    return rc;
}

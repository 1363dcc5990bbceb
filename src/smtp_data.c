/*
 * smtp_data.c - the DATA body scanner.  It reads the client's message as a
 * stream, finds the one end-of-data line (RFC 5321 §4.1.1.4: CRLF "." CRLF)
 * whatever the read boundaries, and hands on exactly the bytes the upstream
 * must receive: no bare CR, bare LF or NUL (§2.3.8), so that no parser
 * further down can see an end of data earlier than relabel did (SMTP
 * smuggling, CVE-2023-51764/5/6).
 *
 * It owns only the few bits of state in struct rl_smtp_data.  It must not
 * allocate, copy the body, log or do I/O: messages of up to 50 MB pass
 * through here, so bytes are emitted in place, in runs found with memchr().
 */
#include <string.h>

#include "relabel/errors.h"
#include "relabel/smtp.h"

/*
 * Where the scanner stands.  The three "held" states keep bytes that were
 * consumed but not yet emitted, because what they mean depends on a byte
 * that has not arrived: a CR (CRLF or bare CR?), a "." at the start of a
 * proper line (end of data or not?), and "." CR.  They are emitted later
 * from constants, so the caller never has to keep them.
 */
enum data_state {
    DATA_BOL,      /* at the start of a line that followed CRLF */
    DATA_BOL_BARE, /* at the start of a line that followed a bare CR or LF */
    DATA_TEXT,     /* inside a line */
    DATA_CR,       /* held: CR */
    DATA_DOT,      /* held: "." at DATA_BOL */
    DATA_DOT_CR,   /* held: "." CR at DATA_BOL */
    DATA_END,      /* CRLF "." CRLF seen; nothing more is consumed */
};

/* One call's context, so helpers can emit and report the callback's error. */
struct data_scan {
    struct rl_smtp_data *d;
    rl_smtp_data_emit_cb emit;
    void *arg;
};

static void
data_fail(struct rl_smtp_data *d, int err)
{
    if (d->error == 0)
        d->error = err;
}

/*
 * Emits p[0..n), whose last `tail` bytes are the end-of-data line: RFC 1870
 * §4 does not count it in the message size.  After an error, output stops
 * for good: the upstream must never see the end of a message relabel has
 * refused, so the session can only drop that upstream transaction.
 */
static int
data_emit(struct data_scan *s, const char *p, size_t n, size_t tail)
{
    struct rl_smtp_data *d = s->d;
    uint64_t body = n - tail;
    int rc;

    if (n == 0 || d->error != 0)
        return 0;
    if (d->max_size != 0 && body > d->max_size - d->size) {
        data_fail(d, RL_E_TOO_BIG);
        return 0;
    }
    rc = s->emit(s->arg, p, n);
    if (rc != 0)
        return rc;
    d->size += body;
    return 0;
}

/*
 * Emits the in-place run p[0..n) and then `repl`, which stands for a bare CR
 * or LF when `bare` (refused in reject mode) or is an inserted dot.
 */
static int
data_splice(struct data_scan *s, const char *p, size_t n, const char *repl, size_t rn, bool bare)
{
    int rc = data_emit(s, p, n, 0);

    if (rc != 0)
        return rc;
    if (bare && s->d->reject_bare) {
        data_fail(s->d, RL_E_BARE_NEWLINE);
        return 0;
    }
    return data_emit(s, repl, rn, 0);
}

static size_t
data_find(const char *p, size_t from, size_t len, char c)
{
    const char *q = memchr(p + from, c, len - from);

    return q != NULL ? (size_t)(q - p) : len;
}

/*
 * Settles the held state with the next byte c.  Sets *eat when c was used
 * up, and returns the emit callback's error.  The cases mirror those of the
 * main loop below, which handles the same bytes when they arrive together.
 */
static int
data_resume(struct data_scan *s, char c, bool *eat)
{
    struct rl_smtp_data *d = s->d;

    *eat = true;
    switch (d->state) {
    case DATA_CR:
        if (c == '\n') {
            d->state = DATA_BOL;
            return data_emit(s, "\r\n", 2, 0);
        }
        *eat = false;
        d->state = DATA_BOL_BARE;
        return data_splice(s, NULL, 0, "\r\n", 2, true);
    case DATA_DOT:
        if (c == '\r') {
            d->state = DATA_DOT_CR;
            return 0;
        }
        if (c == '\n') {
            d->state = DATA_BOL_BARE;
            return data_splice(s, NULL, 0, "..\r\n", 4, true);
        }
        /* A stuffed dot or a line like ".foo": the client's own business. */
        *eat = false;
        d->state = DATA_TEXT;
        return data_emit(s, ".", 1, 0);
    case DATA_DOT_CR:
        if (c == '\n') {
            d->state = DATA_END;
            return data_emit(s, ".\r\n", 3, 3);
        }
        *eat = false;
        d->state = DATA_BOL_BARE;
        return data_splice(s, NULL, 0, "..\r\n", 4, true);
    default:
        *eat = false;
        return 0;
    }
}

static bool
data_held(unsigned state)
{
    return state == DATA_CR || state == DATA_DOT || state == DATA_DOT_CR;
}

void
rl_smtp_data_init(struct rl_smtp_data *d, bool reject_bare, uint64_t max_size)
{
    memset(d, 0, sizeof(*d));
    /* RFC 5321 §4.1.1.4: the body starts as if after a CRLF, so ".\r\n"
     * first is an empty message. */
    d->state = DATA_BOL;
    d->reject_bare = reject_bare;
    d->max_size = max_size;
}

long
rl_smtp_data_scan(struct rl_smtp_data *d, const char *p, size_t len, rl_smtp_data_emit_cb emit,
                  void *arg, bool *done)
{
    struct data_scan s = {d, emit, arg};
    size_t i = 0, r, ncr, nlf, nnul, next;
    bool eat;
    int rc = 0;

    *done = d->state == DATA_END;
    if (*done)
        return 0;

    while (i < len && data_held(d->state)) {
        rc = data_resume(&s, p[i], &eat);
        if (rc != 0)
            return rc;
        if (eat)
            i++;
        if (d->state == DATA_END) {
            *done = true;
            return (long)i;
        }
    }

    /* p[r..i) is the run of input bytes that will be emitted unchanged. */
    r = i;
    ncr = data_find(p, i, len, '\r');
    nlf = data_find(p, i, len, '\n');
    nnul = data_find(p, i, len, '\0');
    while (i < len) {
        switch (d->state) {
        case DATA_BOL:
            if (p[i] != '.') {
                d->state = DATA_TEXT;
                break;
            }
            /* RFC 5321 §4.5.2: a line starting with "." is either the end
             * of data or carries a dot the client added; both are sent on
             * unchanged.  A "." ended by a bare CR or LF is neither, for
             * relabel: it becomes the stuffed line ".." CRLF. */
            if (i + 1 == len || (p[i + 1] == '\r' && i + 2 == len)) {
                rc = data_emit(&s, p + r, i - r, 0);
                d->state = i + 1 == len ? DATA_DOT : DATA_DOT_CR;
                i = r = len;
            } else if (p[i + 1] == '\r' && p[i + 2] == '\n') {
                rc = data_emit(&s, p + r, i + 3 - r, 3);
                d->state = DATA_END;
                *done = true;
                return rc != 0 ? rc : (long)(i + 3);
            } else if (p[i + 1] == '\r' || p[i + 1] == '\n') {
                rc = data_splice(&s, p + r, i - r, "..\r\n", 4, true);
                d->state = DATA_BOL_BARE;
                i = r = i + 2;
            } else {
                d->state = DATA_TEXT;
                i++;
            }
            break;
        case DATA_BOL_BARE:
            /* The client did not stuff this dot: for SMTP the line had not
             * started.  Add one so the upstream keeps it (§4.5.2). */
            if (p[i] == '.') {
                rc = data_splice(&s, p + r, i - r, ".", 1, false);
                r = i++;
            }
            d->state = DATA_TEXT;
            break;
        case DATA_TEXT:
            if (ncr < i)
                ncr = data_find(p, i, len, '\r');
            if (nlf < i)
                nlf = data_find(p, i, len, '\n');
            if (nnul < i)
                nnul = data_find(p, i, len, '\0');
            next = ncr < nlf ? ncr : nlf;
            next = next < nnul ? next : nnul;
            if (next == len) {
                i = len;
                break;
            }
            i = next;
            if (p[i] == '\r' && i + 1 == len) {
                rc = data_emit(&s, p + r, i - r, 0);
                d->state = DATA_CR;
                i = r = len;
            } else if (p[i] == '\r' && p[i + 1] == '\n') {
                /* The common case: CRLF stays inside the run. */
                d->state = DATA_BOL;
                i += 2;
            } else if (p[i] == '\0') {
                rc = data_emit(&s, p + r, i - r, 0);
                data_fail(d, RL_E_NUL);
                i = r = i + 1;
            } else {
                /* A bare CR or LF becomes CRLF (RFC 5321 §2.3.8). */
                rc = data_splice(&s, p + r, i - r, "\r\n", 2, true);
                d->state = DATA_BOL_BARE;
                i = r = i + 1;
            }
            break;
        default:
            /* Held states are settled above, DATA_END returns. */
            return RL_E_PROTO;
        }
        if (rc != 0)
            return rc;
    }
    rc = data_emit(&s, p + r, i - r, 0);
    if (rc != 0)
        return rc;
    return (long)i;
}

/* ---- Message-ID ------------------------------------------------------- */

void
rl_smtp_msgid_init(struct rl_smtp_msgid *m)
{
    memset(m, 0, sizeof(*m));
}

static int
msgid_lower(int c)
{
    return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

/* Appends line[from..len) to the value, spaces trimmed at both ends. */
static void
msgid_take(struct rl_smtp_msgid *m, size_t from, size_t len)
{
    size_t have = strlen(m->value);

    while (from < len && (m->line[from] == ' ' || m->line[from] == '\t'))
        from++;
    while (len > from && (m->line[len - 1] == ' ' || m->line[len - 1] == '\t'))
        len--;
    if (len - from > sizeof(m->value) - 1 - have)
        len = from + (sizeof(m->value) - 1 - have);
    memcpy(m->value + have, m->line + from, len - from);
    m->value[have + len - from] = '\0';
}

/* A complete header line (without CRLF, possibly cut at sizeof(line)). */
static void
msgid_line(struct rl_smtp_msgid *m)
{
    static const char name[] = "message-id:";
    size_t len = m->line_len, i;

    if (len == 0) {
        m->done = true; /* the empty line ends the header section */
        return;
    }
    if (m->line[0] == ' ' || m->line[0] == '\t') {
        if (m->in_field)
            msgid_take(m, 0, len);
        return;
    }
    m->in_field = false;
    if (len < sizeof(name) - 1 || m->value[0] != '\0')
        return;
    for (i = 0; i < sizeof(name) - 1; i++)
        if (msgid_lower((unsigned char)m->line[i]) != name[i])
            return;
    m->in_field = true;
    msgid_take(m, sizeof(name) - 1, len);
}

void
rl_smtp_msgid_feed(struct rl_smtp_msgid *m, const char *p, size_t n)
{
    for (size_t i = 0; i < n && !m->done; i++) {
        if (++m->seen >= RL_SMTP_MSGID_SCAN)
            m->done = true;
        if (p[i] == '\n') {
            if (m->line_len > 0 && m->line[m->line_len - 1] == '\r')
                m->line_len--;
            msgid_line(m);
            m->line_len = 0;
        } else if (m->line_len < sizeof(m->line)) {
            m->line[m->line_len++] = p[i];
        }
    }
}

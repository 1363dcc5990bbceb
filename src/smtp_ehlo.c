/*
 * smtp_ehlo.c - reads the capability lines of the upstream's EHLO reply
 * (RFC 5321 §4.1.1.1, §2.2.2) and renders the reply relabel shows the
 * client: the brand's hostname first, then an allow-list of what relabel
 * can relay unchanged.  Must not allocate, log or do I/O; the input is a
 * complete reply already accepted by rl_smtp_reply_parse().
 */
#include <string.h>

#include "relabel/errors.h"
#include "relabel/smtp.h"

/* Kept extensions without a public RL_EHLO_* flag; they only matter for
 * render, and rl_smtp_ehlo_caps() masks them out. */
#define EHLO_ENHANCED 0x100u
#define EHLO_DSN 0x200u
#define EHLO_PUBLIC 0xffu

struct ehlo_kw {
    const char *name;
    unsigned flag;
    bool keep; /* relabel relays it unchanged (AUTH: only if opts->auth) */
};

/*
 * STARTTLS is never kept from upstream: the upstream's TLS is not the
 * client's (RFC 3207).  CHUNKING and BINARYMIME need BDAT (RFC 3030),
 * which relabel does not relay yet; unknown extensions are dropped because
 * relabel cannot know whether they change the command syntax it parses.
 */
static const struct ehlo_kw ehlo_kws[] = {
    {"STARTTLS", RL_EHLO_STARTTLS, false},
    {"PIPELINING", RL_EHLO_PIPELINING, true}, /* RFC 2920 */
    {"AUTH", RL_EHLO_AUTH, true},             /* RFC 4954 */
    {"SIZE", RL_EHLO_SIZE, true},             /* RFC 1870 */
    {"CHUNKING", RL_EHLO_CHUNKING, false},
    {"8BITMIME", RL_EHLO_8BITMIME, true},         /* RFC 6152 */
    {"SMTPUTF8", RL_EHLO_SMTPUTF8, true},         /* RFC 6531 */
    {"ENHANCEDSTATUSCODES", EHLO_ENHANCED, true}, /* RFC 2034 */
    {"DSN", EHLO_DSN, true},                      /* RFC 3461 */
};

#define EHLO_NKWS (sizeof(ehlo_kws) / sizeof(ehlo_kws[0]))

/* At most one line per kept keyword, plus STARTTLS. */
#define EHLO_MAX_ITEMS (EHLO_NKWS + 1)

static int
ehlo_lower(int c)
{
    return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

/* Finds the keyword that starts a capability line; the keyword ends at SP
 * (RFC 5321 §4.1.1.1 ehlo-line), so "AUTH=PLAIN" matches nothing. */
static const struct ehlo_kw *
ehlo_lookup(const char *text, size_t len)
{
    size_t n, i, k;

    for (n = 0; n < len && text[n] != ' '; n++)
        ;
    for (k = 0; k < EHLO_NKWS; k++) {
        const char *name = ehlo_kws[k].name;

        for (i = 0; i < n && name[i] != '\0'; i++) {
            if (ehlo_lower((unsigned char)text[i]) != ehlo_lower((unsigned char)name[i]))
                break;
        }
        if (i == n && name[i] == '\0')
            return &ehlo_kws[k];
    }
    return NULL;
}

/* The SIZE parameter (RFC 1870 §4); 0 when absent or not a number, which
 * RFC 1870 reads as "no fixed limit".  Saturates instead of wrapping. */
static uint64_t
ehlo_size_value(const char *text, size_t len)
{
    uint64_t v = 0;
    size_t i = 4;

    while (i < len && text[i] == ' ')
        i++;
    for (; i < len && text[i] >= '0' && text[i] <= '9'; i++) {
        unsigned d = (unsigned)(text[i] - '0');

        if (v > (UINT64_MAX - d) / 10)
            return UINT64_MAX;
        v = v * 10 + d;
    }
    return v;
}

unsigned
rl_smtp_ehlo_caps(const char *reply, size_t len, uint64_t *size)
{
    unsigned caps = 0;
    size_t off = 0, nline = 0;
    const char *text;
    size_t tlen;
    bool last;

    *size = 0;
    while (rl_smtp_reply_line(reply, len, &off, &text, &tlen, &last)) {
        const struct ehlo_kw *kw;

        /* The first line is the server's name and greeting, not a
         * capability (RFC 5321 §4.1.1.1). */
        if (nline++ == 0)
            continue;
        kw = ehlo_lookup(text, tlen);
        if (kw == NULL || !(kw->flag & EHLO_PUBLIC))
            continue;
        if (kw->flag == RL_EHLO_SIZE && !(caps & RL_EHLO_SIZE))
            *size = ehlo_size_value(text, tlen);
        caps |= kw->flag;
    }
    return caps;
}

struct ehlo_item {
    const char *text; /* NULL: "SIZE <size>" is generated */
    size_t len;
    uint64_t size;
};

struct ehlo_out {
    char *p;
    size_t cap;
    size_t len;
    bool full;
};

static void
ehlo_put(struct ehlo_out *o, const char *s, size_t n)
{
    if (o->full || n > o->cap - o->len) {
        o->full = true;
        return;
    }
    if (n > 0)
        memcpy(o->p + o->len, s, n);
    o->len += n;
}

static void
ehlo_put_u64(struct ehlo_out *o, uint64_t v)
{
    char tmp[20];
    size_t n = sizeof(tmp);

    do {
        tmp[--n] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    ehlo_put(o, tmp + n, sizeof(tmp) - n);
}

int
rl_smtp_ehlo_render(const char *reply, size_t len, const struct rl_smtp_ehlo_opts *opts, char *out,
                    size_t cap, size_t *out_len)
{
    struct ehlo_item items[EHLO_MAX_ITEMS];
    struct ehlo_out o = {out, cap, 0, false};
    const char *host = opts->hostname != NULL ? opts->hostname : "";
    size_t nitems = 0, off = 0, nline = 0, i;
    unsigned seen = 0;
    const char *text;
    size_t tlen;
    bool last;

    *out_len = 0;
    while (reply != NULL && rl_smtp_reply_line(reply, len, &off, &text, &tlen, &last)) {
        const struct ehlo_kw *kw;
        struct ehlo_item *it;

        if (nline++ == 0)
            continue;
        kw = ehlo_lookup(text, tlen);
        if (kw == NULL || !kw->keep || (kw->flag & seen))
            continue;
        if (kw->flag == RL_EHLO_AUTH && (!opts->auth || opts->auth_line != NULL))
            continue;
        seen |= kw->flag;
        it = &items[nitems++];
        it->text = text;
        it->len = tlen;
        it->size = 0;
        if (kw->flag == RL_EHLO_SIZE && opts->size_cap != 0) {
            /* Advertise the smaller of the two limits: the provider's
             * advertised SIZE may be larger than what it accepts. */
            uint64_t v = ehlo_size_value(text, tlen);

            it->text = NULL;
            it->size = v == 0 || v > opts->size_cap ? opts->size_cap : v;
        }
    }
    if (opts->size_cap != 0 && !(seen & RL_EHLO_SIZE)) {
        items[nitems].text = NULL;
        items[nitems].size = opts->size_cap;
        nitems++;
    }
    if (opts->auth && opts->auth_line != NULL) {
        items[nitems].text = opts->auth_line;
        items[nitems].len = strlen(opts->auth_line);
        nitems++;
    }
    if (opts->starttls) {
        items[nitems].text = "STARTTLS";
        items[nitems].len = 8;
        nitems++;
    }

    /* RFC 5321 §4.2.1: "250-" on every line but the last, "250 " on it. */
    ehlo_put(&o, nitems > 0 ? "250-" : "250 ", 4);
    ehlo_put(&o, host, strlen(host));
    ehlo_put(&o, "\r\n", 2);
    for (i = 0; i < nitems; i++) {
        ehlo_put(&o, i + 1 < nitems ? "250-" : "250 ", 4);
        if (items[i].text != NULL) {
            ehlo_put(&o, items[i].text, items[i].len);
        } else {
            ehlo_put(&o, "SIZE ", 5);
            ehlo_put_u64(&o, items[i].size);
        }
        ehlo_put(&o, "\r\n", 2);
    }
    if (o.full)
        return RL_E_FULL;
    *out_len = o.len;
    return RL_SMTP_OK;
}

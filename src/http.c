/*
 * http.c - the request head parser of the metrics endpoint (see http.h).
 *
 * The head is parsed again from its first byte each time more arrives: it
 * is at most a few KiB, and a parser without saved state cannot be driven
 * into an inconsistent one.  Only complete lines are interpreted; the
 * incomplete last line is checked character by character with the same
 * rules, so that anything that can no longer become a valid head is
 * refused as soon as it is seen.
 */
#include <string.h>

#include "relabel/http.h"

/* tchar, RFC 9110 §5.6.2: the characters of methods and field names. */
static bool
http_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return true;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* The request target: visible ASCII only (RFC 9112 §3.2). */
static bool
http_vchar(unsigned char c)
{
    return c >= 0x21 && c <= 0x7e;
}

/* A field value: visible characters, SP, HTAB and obs-text (RFC 9110
 * §5.5); every other control character is refused. */
static bool
http_field_char(unsigned char c)
{
    return c == ' ' || c == '\t' || (c >= 0x21 && c != 0x7f);
}

static bool
http_ieq(const char *p, size_t n, const char *lower)
{
    size_t i;

    for (i = 0; i < n && lower[i] != '\0'; i++) {
        unsigned char c = (unsigned char)p[i];

        if ((c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c) != (unsigned char)lower[i])
            return false;
    }
    return i == n && lower[i] == '\0';
}

/* What the header fields said that matters beyond their syntax. */
struct http_fields {
    unsigned hosts;
};

/*
 * The request line p[0..n) without its line end; `complete` says whether
 * that end was seen.  Returns 0, RL_HTTP_MORE (a valid prefix) or a
 * negative status.
 */
static int
http_request_line(const char *p, size_t n, bool complete, struct rl_http_req *req)
{
    static const char version[] = "HTTP/D.D"; /* D: a digit */
    size_t i = 0, start, rest;

    while (i < n && http_tchar((unsigned char)p[i]))
        i++;
    if (i == n)
        return complete ? -400 : RL_HTTP_MORE;
    if (i == 0 || p[i] != ' ')
        return -400;
    req->method = p;
    req->method_len = i;

    start = ++i;
    if (i == n)
        return complete ? -400 : RL_HTTP_MORE;
    if (p[i] != '/') /* origin-form only: no absolute URI, no "*" */
        return -400;
    while (i < n && http_vchar((unsigned char)p[i]))
        i++;
    if (i == n)
        return complete ? -400 : RL_HTTP_MORE;
    if (p[i] != ' ')
        return -400;
    req->path = p + start;
    req->path_len = i - start;
    for (size_t k = 0; k < req->path_len; k++) {
        if (req->path[k] == '?') {
            req->path_len = k;
            break;
        }
    }

    i++;
    rest = n - i;
    for (size_t k = 0; k < rest && k < sizeof(version) - 1; k++) {
        unsigned char c = (unsigned char)p[i + k];

        if (version[k] == 'D' ? (c < '0' || c > '9') : c != (unsigned char)version[k])
            return -400;
    }
    if (rest > sizeof(version) - 1)
        return -400;
    if (!complete)
        return RL_HTTP_MORE;
    if (rest < sizeof(version) - 1)
        return -400;
    if (p[i + 5] != '1' || p[i + 7] > '1')
        return -505;
    req->minor = p[i + 7] - '0';
    return 0;
}

/* One header field line p[0..n) without its line end: "name: value". */
static int
http_field(const char *p, size_t n, bool complete, struct http_fields *f)
{
    size_t i = 0, v, e;

    if (n > 0 && (p[0] == ' ' || p[0] == '\t'))
        return -400; /* obs-fold, RFC 9112 §5.2 */
    while (i < n && http_tchar((unsigned char)p[i]))
        i++;
    if (i == n)
        return complete ? -400 : RL_HTTP_MORE;
    if (i == 0 || p[i] != ':')
        return -400; /* also whitespace before the colon, RFC 9112 §5.1 */
    for (size_t k = i + 1; k < n; k++)
        if (!http_field_char((unsigned char)p[k]))
            return -400;
    if (!complete)
        return RL_HTTP_MORE;

    for (v = i + 1; v < n && (p[v] == ' ' || p[v] == '\t'); v++)
        ;
    for (e = n; e > v && (p[e - 1] == ' ' || p[e - 1] == '\t'); e--)
        ;
    if (http_ieq(p, i, "host") && ++f->hosts > 1)
        return -400; /* RFC 9112 §3.2 */
    if (http_ieq(p, i, "transfer-encoding"))
        return -400; /* no endpoint takes a body */
    if (http_ieq(p, i, "content-length")) {
        if (v == e)
            return -400;
        for (size_t k = v; k < e; k++)
            if (p[k] != '0')
                return -400;
    }
    return 0;
}

int
rl_http_parse_request(const char *p, size_t len, size_t max, struct rl_http_req *req)
{
    struct rl_http_req r;
    struct http_fields f = {0};
    size_t lim = len < max ? len : max, pos = 0;
    bool first = true;

    memset(&r, 0, sizeof(r));
    for (;;) {
        const char *lf = memchr(p + pos, '\n', lim - pos);
        size_t end = lf != NULL ? (size_t)(lf - p) : lim;
        size_t n = end - pos;
        bool complete = lf != NULL;
        int rc;

        /* The CR of a CRLF; at the end of a partial line, one that may be. */
        if (n > 0 && p[end - 1] == '\r')
            n--;
        if (first)
            rc = http_request_line(p + pos, n, complete, &r);
        else if (complete && n == 0) {
            r.used = end + 1;
            break;
        } else
            rc = http_field(p + pos, n, complete, &f);
        if (rc < 0)
            return rc;
        if (!complete)
            return len >= max ? -431 : RL_HTTP_MORE;
        first = false;
        pos = end + 1;
    }
    if (r.minor == 1 && f.hosts == 0)
        return -400;
    *req = r;
    return 0;
}

const char *
rl_http_reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 431:
        return "Request Header Fields Too Large";
    case 503:
        return "Service Unavailable";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Error";
    }
}

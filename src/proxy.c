/*
 * proxy.c - PROXY protocol v1 and v2 header parser.
 *
 * The header is attacker-facing only when it comes from an untrusted
 * source, which the listener refuses before calling this; still, every
 * length is checked against the bytes present and against a fixed cap, and
 * a prefix that cannot become a valid header fails at once instead of
 * waiting for more bytes.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>

#include "relabel/errors.h"
#include "relabel/proxy.h"

#define PROXY_MORE 1

static const char proxy_v2_sig[12] = {'\r', '\n', '\r', '\n', '\0', '\r',
                                      '\n', 'Q',  'U',  'I',  'T',  '\n'};

/* PP2_TYPE_AUTHORITY: the host name the client asked for (its SNI). */
#define PROXY_PP2_AUTHORITY 0x02

static uint16_t
proxy_be16(const unsigned char *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

/* Parses a decimal port, 0..65535, no sign, no leading zeros beyond "0". */
static int
proxy_port(const char *p, size_t len, uint16_t *port)
{
    unsigned v = 0;

    if (len == 0 || len > 5 || (len > 1 && p[0] == '0'))
        return RL_E_PROTO;
    for (size_t i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9')
            return RL_E_PROTO;
        v = v * 10 + (unsigned)(p[i] - '0');
    }
    if (v > 65535)
        return RL_E_PROTO;
    *port = (uint16_t)v;
    return 0;
}

static int
proxy_addr(int family, const char *p, size_t len, uint16_t port, struct sockaddr_storage *ss)
{
    char text[INET6_ADDRSTRLEN];

    if (len == 0 || len >= sizeof(text))
        return RL_E_PROTO;
    memcpy(text, p, len);
    text[len] = '\0';
    memset(ss, 0, sizeof(*ss));
    if (family == AF_INET) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)ss;

        if (inet_pton(AF_INET, text, &s4->sin_addr) != 1)
            return RL_E_PROTO;
        s4->sin_family = AF_INET;
        s4->sin_port = htons(port);
    } else {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;

        if (inet_pton(AF_INET6, text, &s6->sin6_addr) != 1)
            return RL_E_PROTO;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(port);
    }
    return 0;
}

/* v1: "PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n" or "PROXY UNKNOWN ...\r\n". */
static int
proxy_v1(const char *p, size_t len, struct rl_proxy_hdr *h)
{
    const char *end = memchr(p, '\n', len < RL_PROXY_V1_MAX ? len : RL_PROXY_V1_MAX);
    const char *field[6];
    size_t flen[6], nf = 0, n;
    uint16_t sport, dport;
    int family;

    if (end == NULL)
        return len < RL_PROXY_V1_MAX ? PROXY_MORE : RL_E_PROTO;
    if (end == p || end[-1] != '\r')
        return RL_E_PROTO;
    n = (size_t)(end - 1 - p); /* the line without CRLF */
    for (size_t i = 0; i < n && nf < 6;) {
        size_t j = i;

        while (j < n && p[j] != ' ')
            j++;
        field[nf] = p + i;
        flen[nf++] = j - i;
        if (j < n && j + 1 == n)
            return RL_E_PROTO; /* trailing space */
        i = j + 1;
    }
    h->version = RL_PROXY_V1;
    h->used = (size_t)(end - p) + 1;
    if (nf >= 2 && flen[1] == 7 && memcmp(field[1], "UNKNOWN", 7) == 0) {
        h->local = true;
        return 0;
    }
    if (nf != 6 || field[5] + flen[5] != p + n)
        return RL_E_PROTO;
    if (flen[1] == 4 && memcmp(field[1], "TCP4", 4) == 0)
        family = AF_INET;
    else if (flen[1] == 4 && memcmp(field[1], "TCP6", 4) == 0)
        family = AF_INET6;
    else
        return RL_E_PROTO;
    if (proxy_port(field[4], flen[4], &sport) < 0 || proxy_port(field[5], flen[5], &dport) < 0)
        return RL_E_PROTO;
    if (proxy_addr(family, field[2], flen[2], sport, &h->src) < 0 ||
        proxy_addr(family, field[3], flen[3], dport, &h->dst) < 0)
        return RL_E_PROTO;
    return 0;
}

/* Reads the v2 TLVs after the addresses; only AUTHORITY is kept. */
static int
proxy_v2_tlvs(const unsigned char *p, size_t len, struct rl_proxy_hdr *h)
{
    while (len > 0) {
        size_t vlen;

        if (len < 3)
            return RL_E_PROTO;
        vlen = proxy_be16(p + 1);
        if (vlen > len - 3)
            return RL_E_PROTO;
        if (p[0] == PROXY_PP2_AUTHORITY) {
            if (vlen >= sizeof(h->authority))
                return RL_E_PROTO;
            memcpy(h->authority, p + 3, vlen);
            h->authority[vlen] = '\0';
        }
        p += 3 + vlen;
        len -= 3 + vlen;
    }
    return 0;
}

static int
proxy_v2(const unsigned char *p, size_t len, struct rl_proxy_hdr *h)
{
    size_t body, total;
    unsigned cmd, fam;

    if (len < 16)
        return PROXY_MORE;
    if ((p[12] & 0xf0) != 0x20)
        return RL_E_PROTO; /* version 2 only */
    cmd = p[12] & 0x0f;
    fam = p[13];
    body = proxy_be16(p + 14);
    total = 16 + body;
    if (total > RL_PROXY_V2_MAX || cmd > 1)
        return RL_E_PROTO;
    if (len < total)
        return PROXY_MORE;
    h->version = RL_PROXY_V2;
    h->used = total;
    p += 16;
    if (cmd == 0) { /* LOCAL: a health check from the balancer itself */
        h->local = true;
        return 0;
    }
    if (fam == 0x11) { /* TCP over IPv4 */
        struct sockaddr_in *s = (struct sockaddr_in *)&h->src;
        struct sockaddr_in *d = (struct sockaddr_in *)&h->dst;

        if (body < 12)
            return RL_E_PROTO;
        s->sin_family = d->sin_family = AF_INET;
        memcpy(&s->sin_addr, p, 4);
        memcpy(&d->sin_addr, p + 4, 4);
        memcpy(&s->sin_port, p + 8, 2);
        memcpy(&d->sin_port, p + 10, 2);
        return proxy_v2_tlvs(p + 12, body - 12, h);
    }
    if (fam == 0x21) { /* TCP over IPv6 */
        struct sockaddr_in6 *s = (struct sockaddr_in6 *)&h->src;
        struct sockaddr_in6 *d = (struct sockaddr_in6 *)&h->dst;

        if (body < 36)
            return RL_E_PROTO;
        s->sin6_family = d->sin6_family = AF_INET6;
        memcpy(&s->sin6_addr, p, 16);
        memcpy(&d->sin6_addr, p + 16, 16);
        memcpy(&s->sin6_port, p + 32, 2);
        memcpy(&d->sin6_port, p + 34, 2);
        return proxy_v2_tlvs(p + 36, body - 36, h);
    }
    /* PROXY with an unspecified or non-TCP family: treat like LOCAL, as
     * the specification asks of receivers that do not handle it. */
    if (fam == 0x00) {
        h->local = true;
        return 0;
    }
    return RL_E_PROTO;
}

int
rl_proxy_parse(const char *p, size_t len, unsigned versions, struct rl_proxy_hdr *h)
{
    size_t n;

    memset(h, 0, sizeof(*h));
    if (len == 0)
        return PROXY_MORE;
    if ((unsigned char)p[0] == '\r') {
        n = len < sizeof(proxy_v2_sig) ? len : sizeof(proxy_v2_sig);
        if (!(versions & RL_PROXY_V2) || memcmp(p, proxy_v2_sig, n) != 0)
            return RL_E_PROTO;
        if (len < sizeof(proxy_v2_sig))
            return PROXY_MORE;
        return proxy_v2((const unsigned char *)p, len, h);
    }
    n = len < 6 ? len : 6;
    if (!(versions & RL_PROXY_V1) || memcmp(p, "PROXY ", n) != 0)
        return RL_E_PROTO;
    if (len < 6)
        return PROXY_MORE;
    return proxy_v1(p, len, h);
}

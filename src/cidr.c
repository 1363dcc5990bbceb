/*
 * cidr.c - IP addresses and networks for the access rules (allow, deny,
 * proxy_trusted) and for counting clients by address.
 *
 * Everything works on the normalised struct rl_cidr_addr, where an
 * IPv4-mapped IPv6 address is plain IPv4: a client that reaches a dual
 * stack socket, or whose address a load balancer wrote as TCP6, is the same
 * client and meets the same IPv4 rules.  A rule never matches across
 * families otherwise, so "::/0" means every IPv6 client and no IPv4 one.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "relabel/cidr.h"
#include "relabel/errors.h"

static const uint8_t cidr_v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

static bool
cidr_is_v4mapped(const uint8_t *b)
{
    return memcmp(b, cidr_v4mapped, sizeof(cidr_v4mapped)) == 0;
}

static void
cidr_addr_v6(struct rl_cidr_addr *a, const uint8_t *b)
{
    memset(a, 0, sizeof(*a));
    if (cidr_is_v4mapped(b)) {
        a->family = AF_INET;
        memcpy(a->bytes, b + 12, 4);
    } else {
        a->family = AF_INET6;
        memcpy(a->bytes, b, 16);
    }
}

void
rl_cidr_addr_set(struct rl_cidr_addr *a, const struct sockaddr *sa)
{
    memset(a, 0, sizeof(*a));
    if (sa->sa_family == AF_INET) {
        a->family = AF_INET;
        memcpy(a->bytes, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    } else if (sa->sa_family == AF_INET6) {
        cidr_addr_v6(a, ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr);
    } else {
        a->family = AF_UNSPEC;
    }
}

bool
rl_cidr_addr_equal(const struct rl_cidr_addr *a, const struct rl_cidr_addr *b)
{
    return a->family != AF_UNSPEC && a->family == b->family &&
           memcmp(a->bytes, b->bytes, sizeof(a->bytes)) == 0;
}

void
rl_cidr_sockaddr_unmap(struct sockaddr_storage *ss)
{
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
    struct sockaddr_in s4;

    if (ss->ss_family != AF_INET6 || !cidr_is_v4mapped(s6->sin6_addr.s6_addr))
        return;
    memset(&s4, 0, sizeof(s4));
    s4.sin_family = AF_INET;
    s4.sin_port = s6->sin6_port;
    memcpy(&s4.sin_addr, s6->sin6_addr.s6_addr + 12, 4);
    memset(ss, 0, sizeof(*ss));
    memcpy(ss, &s4, sizeof(s4));
}

char *
rl_cidr_peer_text(const struct sockaddr *sa, char *out, size_t cap)
{
    char ip[INET6_ADDRSTRLEN];

    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;

        inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
        snprintf(out, cap, "[%s]:%u", ip, ntohs(s6->sin6_port));
    } else if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;

        inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
        snprintf(out, cap, "%s:%u", ip, ntohs(s4->sin_port));
    } else {
        snprintf(out, cap, "-");
    }
    return out;
}

/* Bits of the address beyond the prefix are all zero. */
static bool
cidr_host_bits_zero(const uint8_t *b, size_t nbytes, unsigned prefix)
{
    for (size_t i = 0; i < nbytes; i++) {
        unsigned keep = prefix >= 8 * (i + 1) ? 8 : prefix > 8 * i ? prefix - 8 * (unsigned)i : 0;
        uint8_t mask = (uint8_t)(keep == 8 ? 0 : 0xffu >> keep);

        if (b[i] & mask)
            return false;
    }
    return true;
}

/* True if the first `prefix` bits of a and b agree. */
static bool
cidr_prefix_equal(const uint8_t *a, const uint8_t *b, unsigned prefix)
{
    size_t whole = prefix / 8;
    unsigned rest = prefix % 8;

    if (memcmp(a, b, whole) != 0)
        return false;
    if (rest == 0)
        return true;
    return ((a[whole] ^ b[whole]) & (uint8_t)(0xffu << (8 - rest))) == 0;
}

int
rl_cidr_parse(const char *p, size_t len, struct rl_cidr *c, const char **why)
{
    char text[INET6_ADDRSTRLEN];
    const char *slash = memchr(p, '/', len);
    size_t alen = slash ? (size_t)(slash - p) : len;
    uint8_t b[16];
    unsigned prefix = 0, max;
    int family;

    memset(c, 0, sizeof(*c));
    *why = "not an IPv4 or IPv6 address";
    if (alen == 0 || alen >= sizeof(text))
        return RL_E_PROTO;
    memcpy(text, p, alen);
    text[alen] = '\0';
    if (inet_pton(AF_INET, text, b) == 1)
        family = AF_INET;
    else if (inet_pton(AF_INET6, text, b) == 1)
        family = AF_INET6;
    else
        return RL_E_PROTO;
    max = family == AF_INET ? 32 : 128;
    prefix = max;
    if (slash != NULL) {
        const char *d = slash + 1, *end = p + len;

        *why = family == AF_INET ? "the prefix length is not a number from 0 to 32"
                                 : "the prefix length is not a number from 0 to 128";
        if (d == end || end - d > 3)
            return RL_E_PROTO;
        for (prefix = 0; d < end; d++) {
            if (*d < '0' || *d > '9')
                return RL_E_PROTO;
            prefix = prefix * 10 + (unsigned)(*d - '0');
        }
        if (prefix > max)
            return RL_E_PROTO;
    }
    if (!cidr_host_bits_zero(b, max / 8, prefix)) {
        *why = "bits are set after the prefix (write the network address)";
        return RL_E_PROTO;
    }
    if (family == AF_INET6 && prefix >= 96 && cidr_is_v4mapped(b)) {
        /* ::ffff:10.0.0.0/104 is 10.0.0.0/8. */
        c->net.family = AF_INET;
        memcpy(c->net.bytes, b + 12, 4);
        c->prefix = prefix - 96;
        return 0;
    }
    c->net.family = (uint8_t)family;
    memcpy(c->net.bytes, b, max / 8);
    c->prefix = prefix;
    return 0;
}

bool
rl_cidr_match(const struct rl_cidr *c, const struct rl_cidr_addr *a)
{
    return a->family != AF_UNSPEC && a->family == c->net.family &&
           cidr_prefix_equal(a->bytes, c->net.bytes, c->prefix);
}

static bool
cidr_is_sep(char ch)
{
    return ch == ',' || ch == ' ' || ch == '\t';
}

int
rl_cidr_list_parse(const char *text, struct rl_cidr_list *l, char *err, size_t cap)
{
    size_t n = 0, cap_items = l->n + 1;
    struct rl_cidr *items;
    const char *p = text;
    bool comma = true; /* an item is due: at the start and after a comma */

    for (const char *q = text; *q != '\0'; q++)
        cap_items += *q == ',' || *q == ' ' || *q == '\t';
    items = calloc(cap_items, sizeof(*items));
    if (items == NULL) {
        snprintf(err, cap, "out of memory");
        return RL_E_NOMEM;
    }
    if (l->n > 0)
        memcpy(items, l->items, l->n * sizeof(*items));
    n = l->n;
    for (;;) {
        const char *start, *why;
        size_t len;

        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == ',' || *p == '\0') {
            if (comma) {
                snprintf(err, cap,
                         *p == '\0' && n == l->n ? "empty list" : "empty item in the list");
                free(items);
                return RL_E_PROTO;
            }
            if (*p == '\0')
                break;
            comma = true;
            p++;
            continue;
        }
        start = p;
        while (*p != '\0' && !cidr_is_sep(*p))
            p++;
        len = (size_t)(p - start);
        if (rl_cidr_parse(start, len, &items[n], &why) < 0) {
            snprintf(err, cap, "\"%.*s\": %s", (int)(len < 80 ? len : 80), start, why);
            free(items);
            return RL_E_PROTO;
        }
        n++;
        comma = false;
    }
    free(l->items);
    l->items = items;
    l->n = n;
    return 0;
}

void
rl_cidr_list_free(struct rl_cidr_list *l)
{
    free(l->items);
    l->items = NULL;
    l->n = 0;
}

const struct rl_cidr *
rl_cidr_list_match(const struct rl_cidr_list *l, const struct rl_cidr_addr *a)
{
    for (size_t i = 0; i < l->n; i++)
        if (rl_cidr_match(&l->items[i], a))
            return &l->items[i];
    return NULL;
}

char *
rl_cidr_text(const struct rl_cidr *c, char *out, size_t cap)
{
    char ip[INET6_ADDRSTRLEN] = "?";

    inet_ntop(c->net.family == AF_INET ? AF_INET : AF_INET6, c->net.bytes, ip, sizeof(ip));
    snprintf(out, cap, "%s/%u", ip, c->prefix);
    return out;
}

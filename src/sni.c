/*
 * sni.c - host names to brands: normalising what a client sent, looking it
 * up in a sorted map (an exact name, then the wildcard of its parent), and
 * checking whether a certificate name covers a configured one.  See sni.h
 * for the rules.  Both lookups are binary searches, so the cost per
 * handshake stays small with thousands of names.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "relabel/sni.h"

static char
sni_lower(char ch)
{
    return ch >= 'A' && ch <= 'Z' ? (char)(ch - 'A' + 'a') : ch;
}

bool
rl_sni_is_wildcard(const char *s)
{
    const char *rest;

    if (s[0] != '*' || s[1] != '.')
        return false;
    rest = s + 2;
    /* At least two labels after "*.": "*.com" would claim a whole TLD. */
    return rest[0] != '\0' && strchr(rest, '.') != NULL && strchr(rest, '*') == NULL;
}

size_t
rl_sni_normalize(const char *name, size_t len, char *out, size_t cap)
{
    if (len > 0 && name[len - 1] == '.')
        len--;
    if (len == 0 || len >= cap || len > RL_SNI_NAME_MAX - 1)
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)name[i];

        if (ch <= 0x20 || ch >= 0x7f)
            return 0;
        out[i] = sni_lower((char)ch);
    }
    out[len] = '\0';
    return len;
}

static int
sni_compare(const void *a, const void *b)
{
    return strcmp(((const struct rl_sni_name *)a)->name, ((const struct rl_sni_name *)b)->name);
}

void
rl_sni_sort(struct rl_sni_map *m)
{
    if (m->n > 1)
        qsort(m->items, m->n, sizeof(*m->items), sni_compare);
}

/* The entry whose name is exactly key (lower case), or NULL. */
static const struct rl_sni_name *
sni_find(const struct rl_sni_map *m, const char *key)
{
    size_t lo = 0, hi = m->n;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(key, m->items[mid].name);

        if (c == 0)
            return &m->items[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

const struct rl_sni_name *
rl_sni_lookup(const struct rl_sni_map *m, const char *name, size_t len)
{
    char key[RL_SNI_NAME_MAX + 2];
    const struct rl_sni_name *hit;
    char *dot;
    size_t n;

    if (m == NULL || m->n == 0)
        return NULL;
    /* Room for "*" in front of the parent: key + 1 holds the name. */
    n = rl_sni_normalize(name, len, key + 1, sizeof(key) - 1);
    if (n == 0 || key[1] == '*')
        return NULL;
    hit = sni_find(m, key + 1);
    if (hit != NULL)
        return hit;
    /* "mail.example.net" -> "*.example.net": the first label becomes "*".
     * An empty first label (".example.net") matches nothing. */
    dot = strchr(key + 1, '.');
    if (dot == NULL || dot == key + 1)
        return NULL;
    dot[-1] = '*';
    return sni_find(m, dot - 1);
}

/* Case-insensitive equality of a[0..alen) and the string b. */
static bool
sni_equal(const char *a, size_t alen, const char *b)
{
    return strlen(b) == alen && strncasecmp(a, b, alen) == 0;
}

bool
rl_sni_covers(const char *cert, size_t cert_len, const char *name)
{
    const char *dot;

    if (cert_len > 0 && cert[cert_len - 1] == '.')
        cert_len--;
    if (cert_len == 0)
        return false;
    if (sni_equal(cert, cert_len, name))
        return true;
    /* Only a whole left-most "*" label is a wildcard in a certificate, and
     * it covers one label of a plain name, never a wildcard name. */
    if (cert_len < 3 || cert[0] != '*' || cert[1] != '.' || name[0] == '*')
        return false;
    dot = strchr(name, '.');
    if (dot == NULL || dot == name)
        return false;
    return sni_equal(cert + 1, cert_len - 1, dot);
}

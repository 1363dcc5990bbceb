/*
 * sni.h - the host names clients ask for (TLS server_name, RFC 6066 §3)
 * and the brands that answer to them.
 *
 * A brand answers to its hostname and its aliases.  An alias may be a
 * wildcard "*.example.net", which stands for exactly one more label in
 * front ("mail.example.net", not "example.net" nor "a.b.example.net"), as
 * RFC 6125 §6.4.3 has clients match a certificate's wildcard.  Matching
 * ignores ASCII case and one trailing dot; an exact name wins over a
 * wildcard, whatever the order in the file.  Config loading makes sure no
 * name (wildcards included) belongs to two brands, so a lookup has at most
 * one answer of each kind.
 *
 * Pure: no I/O, no logging, no allocation.
 */
#ifndef RELABEL_SNI_H
#define RELABEL_SNI_H

#include <stdbool.h>
#include <stddef.h>

/* A DNS name is at most 253 octets (RFC 1035 §2.3.4); a trailing dot adds
 * one more. */
#define RL_SNI_NAME_MAX 254

struct rl_sni_name {
    char *name;   /* lower case, no trailing dot; "*.example.net" for a wildcard */
    size_t brand; /* index into rl_config.brands */
    int line;     /* the config line that named it */
};

/* Sorted by name (rl_sni_sort), each name once. */
struct rl_sni_map {
    struct rl_sni_name *items;
    size_t n;
};

/* True if s is a wildcard pattern relabel accepts: "*." followed by at
 * least two labels (the rest is checked as a DNS name by the caller). */
bool rl_sni_is_wildcard(const char *s);

/*
 * Lower-cases name[0..len) into out (cap bytes, NUL-terminated), without
 * one trailing dot.  Returns the length written, or 0 if the name is empty,
 * too long, or holds a NUL byte, a space or a byte outside ASCII: no such
 * name is in any map, and none is worth remembering.
 */
size_t rl_sni_normalize(const char *name, size_t len, char *out, size_t cap);

/* Sorts a map for rl_sni_lookup(). */
void rl_sni_sort(struct rl_sni_map *m);

/*
 * The brand for the name a client asked for (any case, one trailing dot
 * allowed): the entry naming it exactly, else the wildcard for its parent
 * ("*.example.net" for "mail.example.net").  Returns the entry, or NULL.
 */
const struct rl_sni_name *rl_sni_lookup(const struct rl_sni_map *m, const char *name, size_t len);

/*
 * Whether a certificate's DNS name `cert` (maybe "*.example.net") covers
 * `name`, a name relabel answers to (maybe itself a wildcard).  A wildcard
 * name is covered only by the same wildcard: a certificate for
 * "mail.example.net" leaves every other name under "*.example.net" out.
 * Case is ignored.
 */
bool rl_sni_covers(const char *cert, size_t cert_len, const char *name);

#endif

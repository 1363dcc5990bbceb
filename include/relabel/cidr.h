/*
 * cidr.h - IP addresses and networks for access rules: parsing "10.0.0.0/8"
 * and "2001:db8::/32", matching a client address against a list, and the
 * "ip:port" text used in log lines.
 *
 * Pure: no I/O, no logging; the only allocation is the array of a parsed
 * list.  An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is the IPv4 address
 * a.b.c.d here, both as a client and in a rule, so that IPv4 rules hold
 * whichever way the address reached relabel.
 */
#ifndef RELABEL_CIDR_H
#define RELABEL_CIDR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* A client address without its port, normalised: family AF_INET (bytes
 * 0..3 used, the rest zero) or AF_INET6; AF_UNSPEC when unknown. */
struct rl_cidr_addr {
    uint8_t family;
    uint8_t bytes[16];
};

/* A network: the address with its host bits zero, and the prefix length. */
struct rl_cidr {
    struct rl_cidr_addr net;
    unsigned prefix; /* 0..32 for AF_INET, 0..128 for AF_INET6 */
};

struct rl_cidr_list {
    struct rl_cidr *items;
    size_t n;
};

/* Longest text of one rule: an IPv6 address plus "/128". */
#define RL_CIDR_TEXT_MAX 56
/* Room for "[IPv6]:port". */
#define RL_CIDR_PEER_MAX 64

/* Normalises a socket address (AF_INET, AF_INET6; anything else gives
 * AF_UNSPEC).  IPv4-mapped IPv6 becomes AF_INET. */
void rl_cidr_addr_set(struct rl_cidr_addr *a, const struct sockaddr *sa);

/* Same address; two AF_UNSPEC addresses are never equal. */
bool rl_cidr_addr_equal(const struct rl_cidr_addr *a, const struct rl_cidr_addr *b);

/*
 * Rewrites an IPv4-mapped IPv6 socket address in ss as the AF_INET address
 * it stands for (port kept); anything else is left alone.
 */
void rl_cidr_sockaddr_unmap(struct sockaddr_storage *ss);

/* "a.b.c.d:port" or "[v6]:port" into out (cap bytes, at least
 * RL_CIDR_PEER_MAX); "-" for an unknown family.  Returns out. */
char *rl_cidr_peer_text(const struct sockaddr *sa, char *out, size_t cap);

/*
 * Parses one rule from p[0..len): "ADDR/PREFIX", or "ADDR" alone for one
 * host (/32 or /128).  An IPv4-mapped IPv6 network with a prefix of at
 * least 96 becomes the IPv4 network.  Host bits set below the prefix
 * ("10.1.2.3/8") are refused: the rule would not say what it means.
 * Returns 0, or RL_E_PROTO with *why set to a static reason.
 */
int rl_cidr_parse(const char *p, size_t len, struct rl_cidr *c, const char **why);

bool rl_cidr_match(const struct rl_cidr *c, const struct rl_cidr_addr *a);

/*
 * Parses a list of rules separated by commas and/or white space into a
 * l, appending to the rules it already holds (a key may be given on
 * several lines); free with rl_cidr_list_free.  An empty list, or an empty
 * item between two commas, is an error.  On failure returns RL_E_PROTO (or
 * RL_E_NOMEM) with a message naming the bad item in err[0..cap), and l is
 * as it was.
 */
int rl_cidr_list_parse(const char *text, struct rl_cidr_list *l, char *err, size_t cap);
void rl_cidr_list_free(struct rl_cidr_list *l);

/* The first rule of l that matches a, or NULL. */
const struct rl_cidr *rl_cidr_list_match(const struct rl_cidr_list *l,
                                         const struct rl_cidr_addr *a);

/* "10.0.0.0/8", "::1/128" into out (cap bytes, at least RL_CIDR_TEXT_MAX). */
char *rl_cidr_text(const struct rl_cidr *c, char *out, size_t cap);

#endif

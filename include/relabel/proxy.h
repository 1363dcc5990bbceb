/*
 * proxy.h - the PROXY protocol header (HAProxy's proxy-protocol.txt, v1
 * text and v2 binary) that a load balancer puts in front of a connection to
 * pass on the client's address.
 *
 * Pure: no I/O, no allocation, no logging.  Whether a header is accepted at
 * all (trusted source, required) is the listener's decision.
 */
#ifndef RELABEL_PROXY_H
#define RELABEL_PROXY_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#define RL_PROXY_V1 0x1u
#define RL_PROXY_V2 0x2u

/* A v1 line is at most 107 bytes (CRLF included); a v2 header relabel
 * accepts is at most this long (addresses plus a few TLVs). */
#define RL_PROXY_V1_MAX 107
#define RL_PROXY_V2_MAX 1024

struct rl_proxy_hdr {
    unsigned version; /* RL_PROXY_V1 or RL_PROXY_V2 */
    bool local;       /* v2 LOCAL or v1 UNKNOWN: keep the socket's addresses */
    struct sockaddr_storage src;
    struct sockaddr_storage dst;
    char authority[256]; /* v2 PP2_TYPE_AUTHORITY (the client's SNI), "" if none */
    size_t used;         /* bytes of the header, to consume */
};

/*
 * Parses a header at the start of p[0..len), accepting the versions in
 * `versions` (RL_PROXY_V1 | RL_PROXY_V2).  Returns 0 with *h filled,
 * RL_SMTP_MORE-style 1 when the bytes so far are a valid prefix, or
 * RL_E_PROTO for anything else (wrong signature, a version not accepted,
 * bad address, too long).
 */
int rl_proxy_parse(const char *p, size_t len, unsigned versions, struct rl_proxy_hdr *h);

#endif

/*
 * upstream.h - where the upstream is: resolving its host name to the list
 * of addresses a session tries in turn, and which of them to skip.
 *
 * Resolution runs on libuv's thread pool; a literal IP address is used as
 * it is.  Results are kept in a process-wide cache shared by every worker
 * (and the main thread's upstream checks), under the module's own lock:
 * RL_RESOLVE_CACHE_ENTRIES names for RL_RESOLVE_CACHE_MS each.  At most one
 * lookup per name is in flight: a request for a name being looked up waits
 * for that lookup's answer (delivered on its own loop through a uv_async).
 * Failures are not cached.
 *
 * The addresses are ordered as getaddrinfo(3) sorted them (RFC 6724), then
 * interleaved by family (RFC 8305 §4): the first of the preferred family,
 * the first of the other, the second of the preferred, ...  so that a
 * broken IPv6 path costs one attempt, not all of them.
 *
 * Broken addresses: an address:port that refused a connection or timed
 * out is remembered for RL_BROKEN_ADDR_MS (process-wide, same lock, at
 * most RL_BROKEN_ADDR_MAX entries, the oldest replaced first) so that later
 * sessions skip it; a successful connection forgets it.
 */
#ifndef RELABEL_UPSTREAM_H
#define RELABEL_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "relabel/config.h"

#define RL_UPSTREAM_ADDRS_MAX 8

struct rl_upstream_addrs {
    struct sockaddr_storage a[RL_UPSTREAM_ADDRS_MAX];
    size_t n;
    bool cached; /* the answer came from the cache, not a lookup of its own */
};

/* status is 0 with at least one address, or a UV_E* code. */
typedef void (*rl_upstream_resolved_cb)(void *arg, int status,
                                        const struct rl_upstream_addrs *addrs);

struct rl_upstream_req;

/*
 * Starts resolving u->host; the addresses come with u->port.  The callback
 * runs later, from the loop, never from inside this call.  Returns NULL
 * (and *err) if it could not start.
 */
struct rl_upstream_req *rl_upstream_resolve(uv_loop_t *loop, const struct rl_upstream_conf *u,
                                            rl_upstream_resolved_cb cb, void *arg, int *err);

/* The callback will not be called; the request frees itself. */
void rl_upstream_cancel(struct rl_upstream_req *req);

/* Interleaves a's addresses by family, keeping each family's order. */
void rl_upstream_interleave(struct rl_upstream_addrs *a);

/* Sets the port of every address in a. */
void rl_upstream_set_port(struct rl_upstream_addrs *a, uint16_t port);

/* The address (with its port) refused or timed out: skip it for a while. */
void rl_upstream_mark_broken(const struct sockaddr_storage *sa);

/* A connection to it succeeded: no longer broken. */
void rl_upstream_mark_ok(const struct sockaddr_storage *sa);

/* Whether the address (with its port) is marked broken now. */
bool rl_upstream_is_broken(const struct sockaddr_storage *sa);

/* Forgets the cache and the broken addresses (tests). */
void rl_upstream_reset(void);

#endif

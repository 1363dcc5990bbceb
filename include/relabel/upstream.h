/*
 * upstream.h - where the upstream is: resolving its host name to the list
 * of addresses a session tries in turn.  Resolution runs on libuv's thread
 * pool; a literal IP address is used as it is.
 */
#ifndef RELABEL_UPSTREAM_H
#define RELABEL_UPSTREAM_H

#include <stddef.h>
#include <sys/socket.h>
#include <uv.h>

#include "relabel/config.h"

#define RL_UPSTREAM_ADDRS_MAX 8

struct rl_upstream_addrs {
    struct sockaddr_storage a[RL_UPSTREAM_ADDRS_MAX];
    size_t n;
};

/* status is 0 with at least one address, or a UV_E* code. */
typedef void (*rl_upstream_resolved_cb)(void *arg, int status,
                                        const struct rl_upstream_addrs *addrs);

struct rl_upstream_req;

/*
 * Starts resolving u->host / u->port.  The callback runs later, from the
 * loop, never from inside this call.  Returns NULL (and *err) if it could
 * not start.
 */
struct rl_upstream_req *rl_upstream_resolve(uv_loop_t *loop, const struct rl_upstream_conf *u,
                                            rl_upstream_resolved_cb cb, void *arg, int *err);

/* The callback will not be called; the request frees itself. */
void rl_upstream_cancel(struct rl_upstream_req *req);

#endif

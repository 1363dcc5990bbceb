/*
 * upstream.c - resolving the upstream's name to addresses.
 *
 * A request outlives its caller if it has to: cancelling only detaches the
 * callback, and the request frees itself when libuv is done with it, so a
 * session never waits on a DNS lookup to be freed.
 */
#include <stdlib.h>
#include <string.h>

#include "relabel/errors.h"
#include "relabel/upstream.h"

struct rl_upstream_req {
    uv_getaddrinfo_t gai;
    rl_upstream_resolved_cb cb;
    void *arg;
};

static void
upstream_on_resolved(uv_getaddrinfo_t *gai, int status, struct addrinfo *res)
{
    struct rl_upstream_req *req = gai->data;
    struct rl_upstream_addrs addrs;

    addrs.n = 0;
    if (status == 0) {
        for (struct addrinfo *ai = res; ai != NULL && addrs.n < RL_UPSTREAM_ADDRS_MAX;
             ai = ai->ai_next) {
            if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
                continue;
            if (ai->ai_addrlen > sizeof(addrs.a[0]))
                continue;
            memcpy(&addrs.a[addrs.n++], ai->ai_addr, ai->ai_addrlen);
        }
        if (addrs.n == 0)
            status = UV_EAI_NODATA;
    }
    uv_freeaddrinfo(res);
    if (req->cb != NULL)
        req->cb(req->arg, status, &addrs);
    free(req);
}

struct rl_upstream_req *
rl_upstream_resolve(uv_loop_t *loop, const struct rl_upstream_conf *u, rl_upstream_resolved_cb cb,
                    void *arg, int *err)
{
    struct rl_upstream_req *req = calloc(1, sizeof(*req));
    struct addrinfo hints;
    char port[8];
    int rc;

    if (req == NULL) {
        *err = RL_E_NOMEM;
        return NULL;
    }
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(port, sizeof(port), "%u", u->port);
    req->cb = cb;
    req->arg = arg;
    req->gai.data = req;
    rc = uv_getaddrinfo(loop, &req->gai, upstream_on_resolved, u->host, port, &hints);
    if (rc < 0) {
        free(req);
        *err = rc;
        return NULL;
    }
    return req;
}

void
rl_upstream_cancel(struct rl_upstream_req *req)
{
    req->cb = NULL;
    req->arg = NULL;
    uv_cancel((uv_req_t *)&req->gai);
}

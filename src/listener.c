/*
 * listener.c - binding, listening and accepting.
 *
 * One uv_tcp_t per configured address.  IPv6 wildcard sockets are bound
 * v6-only so that "0.0.0.0:465, [::]:465" works on every system.  Accepting
 * never blocks on anything: the session starts its TLS handshake or sends
 * its greeting and returns.
 */
#include <stdlib.h>

#include "relabel/errors.h"
#include "relabel/listener.h"
#include "relabel/log.h"
#include "relabel/session.h"

#define LISTENER_BACKLOG 511

struct listener_sock {
    uv_tcp_t tcp;
    struct rl_ctx *ctx;
    const struct rl_listener_conf *lc;
    const struct rl_addr *addr;
    struct rl_listeners *set;
};

struct rl_listeners {
    struct listener_sock *socks;
    size_t n;
    size_t open; /* handles not yet closed */
};

static void
listener_on_connection(uv_stream_t *server, int status)
{
    struct listener_sock *ls = server->data;
    int rc;

    if (status < 0) {
        rl_log(RL_LOG_WARN, "listener %s accept error on %s: %s", ls->lc->name, ls->addr->text,
               uv_strerror(status));
        return;
    }
    if (ls->ctx->stopping)
        return;
    rc = rl_session_accept(ls->ctx, ls->lc, server);
    if (rc < 0)
        rl_log(RL_LOG_WARN, "listener %s cannot accept on %s: %s", ls->lc->name, ls->addr->text,
               rl_strerror(rc));
}

static void
listener_on_close(uv_handle_t *h)
{
    struct listener_sock *ls = h->data;
    struct rl_listeners *set = ls->set;

    if (--set->open == 0) {
        free(set->socks);
        free(set);
    }
}

int
rl_listeners_open(struct rl_ctx *ctx, const struct rl_config *cfg, FILE *err,
                  struct rl_listeners **out)
{
    struct rl_listeners *set = calloc(1, sizeof(*set));
    size_t total = 0;
    int rc = 0;

    if (set == NULL)
        return RL_E_NOMEM;
    for (size_t i = 0; i < cfg->nlisteners; i++)
        total += cfg->listeners[i].naddrs;
    set->socks = calloc(total ? total : 1, sizeof(*set->socks));
    if (set->socks == NULL) {
        free(set);
        return RL_E_NOMEM;
    }
    for (size_t i = 0; i < cfg->nlisteners && rc == 0; i++) {
        const struct rl_listener_conf *lc = &cfg->listeners[i];

        for (size_t j = 0; j < lc->naddrs && rc == 0; j++) {
            struct listener_sock *ls = &set->socks[set->n];
            const struct sockaddr *sa = (const struct sockaddr *)&lc->addrs[j].ss;
            unsigned flags = sa->sa_family == AF_INET6 ? UV_TCP_IPV6ONLY : 0;

            uv_tcp_init(ctx->loop, &ls->tcp);
            ls->tcp.data = ls;
            ls->ctx = ctx;
            ls->lc = lc;
            ls->addr = &lc->addrs[j];
            ls->set = set;
            set->n++;
            set->open++;
            rc = uv_tcp_bind(&ls->tcp, sa, flags);
            if (rc == 0)
                rc = uv_listen((uv_stream_t *)&ls->tcp, LISTENER_BACKLOG, listener_on_connection);
            if (rc < 0) {
                if (lc->listen_line > 0)
                    fprintf(err, "%s:%d: ", cfg->path, lc->listen_line);
                else
                    fprintf(err, "%s: ", cfg->path);
                fprintf(err, "listener \"%s\": cannot listen on %s: %s\n", lc->name,
                        lc->addrs[j].text, uv_strerror(rc));
                break;
            }
            rl_log(RL_LOG_INFO, "listening on %s listener=%s tls=%s brand=%s", lc->addrs[j].text,
                   lc->name, lc->tls == RL_TLS_IMPLICIT ? "implicit" : "starttls", lc->brand->name);
        }
    }
    if (rc < 0) {
        rl_listeners_close(set);
        return rc;
    }
    *out = set;
    return 0;
}

void
rl_listeners_close(struct rl_listeners *set)
{
    if (set->n == 0) {
        free(set->socks);
        free(set);
        return;
    }
    for (size_t i = 0; i < set->n; i++)
        uv_close((uv_handle_t *)&set->socks[i].tcp, listener_on_close);
}

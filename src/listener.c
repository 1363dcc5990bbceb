/*
 * listener.c - binding, listening and accepting.
 *
 * One uv_tcp_t per configured address, each allocated on its own so that a
 * reload can keep a socket (its handle must not move) while the set around
 * it changes.  A socket holds a reference on the snapshot its listener
 * settings come from; sessions are started with that snapshot.  IPv6
 * sockets are bound v6-only so that "0.0.0.0:465, [::]:465" works on every
 * system.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "relabel/errors.h"
#include "relabel/listener.h"
#include "relabel/log.h"
#include "relabel/session.h"

#define LISTENER_BACKLOG 511

struct listener_sock {
    uv_tcp_t tcp;
    struct rl_ctx *ctx;
    struct rl_snapshot *snap;
    const struct rl_listener_conf *lc;
    const struct rl_addr *addr;
    char text[sizeof(((struct rl_addr *)0)->text)];
    struct listener_sock *next;
};

struct rl_listeners {
    struct rl_ctx *ctx;
    struct listener_sock *socks;
    struct listener_sock *fresh; /* prepared, not yet committed */
    struct rl_snapshot *pending; /* the snapshot they were prepared for */
    bool reuseport;              /* several workers listen on each address */
};

static void
listener_on_connection(uv_stream_t *server, int status)
{
    struct listener_sock *ls = server->data;
    int rc;

    if (status < 0) {
        rl_log(RL_LOG_WARN, "listener %s accept error on %s: %s", ls->lc->name, ls->text,
               uv_strerror(status));
        return;
    }
    if (ls->ctx->stopping)
        return;
    rc = rl_session_accept(ls->ctx, ls->snap, ls->lc, server);
    if (rc < 0)
        rl_log(RL_LOG_WARN, "listener %s cannot accept on %s: %s", ls->lc->name, ls->text,
               rl_strerror(rc));
}

static void
listener_on_close(uv_handle_t *h)
{
    struct listener_sock *ls = h->data;

    rl_snapshot_unref(ls->snap);
    free(ls);
}

static void
listener_close_list(struct listener_sock *ls)
{
    while (ls != NULL) {
        struct listener_sock *next = ls->next;

        rl_log(RL_LOG_INFO, "listener %s closed on %s", ls->lc->name, ls->text);
        uv_close((uv_handle_t *)&ls->tcp, listener_on_close);
        ls = next;
    }
}

static void
listener_adopt(struct listener_sock *ls, struct rl_snapshot *snap,
               const struct rl_listener_conf *lc, const struct rl_addr *addr)
{
    struct rl_snapshot *old = ls->snap;

    ls->snap = rl_snapshot_ref(snap);
    ls->lc = lc;
    ls->addr = addr;
    rl_snapshot_unref(old);
}

/* Several workers listen on one address, each with its own socket: the
 * kernel spreads new connections over them (SO_REUSEPORT, which libuv has
 * no flag for, so it is set before binding). */
static int
listener_reuseport(uv_tcp_t *tcp)
{
    uv_os_fd_t fd;
    int one = 1;

    if (uv_fileno((uv_handle_t *)tcp, &fd) < 0)
        return UV_EBADF;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
        return uv_translate_sys_error(errno);
    return 0;
}

/* Binds one address; NULL (reason printed) on failure. */
static struct listener_sock *
listener_bind(struct rl_listeners *set, struct rl_snapshot *snap, const struct rl_listener_conf *lc,
              const struct rl_addr *addr, FILE *err)
{
    const struct sockaddr *sa = (const struct sockaddr *)&addr->ss;
    unsigned flags = sa->sa_family == AF_INET6 ? UV_TCP_IPV6ONLY : 0;
    struct listener_sock *ls = calloc(1, sizeof(*ls));
    const struct rl_config *cfg = snap->cfg;
    int rc;

    if (ls == NULL) {
        fprintf(err, "%s: listener \"%s\": out of memory\n", cfg->path, lc->name);
        return NULL;
    }
    uv_tcp_init_ex(set->ctx->loop, &ls->tcp, sa->sa_family);
    ls->tcp.data = ls;
    ls->ctx = set->ctx;
    snprintf(ls->text, sizeof(ls->text), "%s", addr->text);
    listener_adopt(ls, snap, lc, addr);
    rc = set->reuseport ? listener_reuseport(&ls->tcp) : 0;
    if (rc == 0)
        rc = uv_tcp_bind(&ls->tcp, sa, flags);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&ls->tcp, LISTENER_BACKLOG, listener_on_connection);
    if (rc < 0) {
        if (lc->listen_line > 0)
            fprintf(err, "%s:%d: ", cfg->path, lc->listen_line);
        else
            fprintf(err, "%s: ", cfg->path);
        fprintf(err, "listener \"%s\": cannot listen on %s: %s\n", lc->name, addr->text,
                uv_strerror(rc));
        uv_close((uv_handle_t *)&ls->tcp, listener_on_close);
        return NULL;
    }
    rl_log(RL_LOG_INFO, "listening on %s listener=%s tls=%s brand=%s", addr->text, lc->name,
           lc->tls == RL_TLS_IMPLICIT ? "implicit" : "starttls", lc->brand->name);
    return ls;
}

/* Takes the socket listening on addr out of *list, or returns NULL. */
static struct listener_sock *
listener_take(struct listener_sock **list, const struct rl_addr *addr)
{
    for (struct listener_sock **pp = list; *pp != NULL; pp = &(*pp)->next) {
        struct listener_sock *ls = *pp;

        if (strcmp(ls->text, addr->text) == 0) {
            *pp = ls->next;
            ls->next = NULL;
            return ls;
        }
    }
    return NULL;
}

int
rl_listeners_prepare(struct rl_listeners *set, struct rl_snapshot *snap, FILE *err)
{
    const struct rl_config *cfg = snap->cfg;
    struct listener_sock *fresh = NULL, *old = set->socks;

    /* Bind what is new, without touching what runs. */
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        const struct rl_listener_conf *lc = &cfg->listeners[i];

        for (size_t j = 0; j < lc->naddrs; j++) {
            struct listener_sock *ls;
            bool exists = false;

            for (ls = old; ls != NULL && !exists; ls = ls->next)
                exists = strcmp(ls->text, lc->addrs[j].text) == 0;
            if (exists)
                continue;
            ls = listener_bind(set, snap, lc, &lc->addrs[j], err);
            if (ls == NULL) {
                listener_close_list(fresh);
                return RL_E_CONFIG;
            }
            ls->next = fresh;
            fresh = ls;
        }
    }
    set->fresh = fresh;
    set->pending = rl_snapshot_ref(snap);
    return 0;
}

void
rl_listeners_rollback(struct rl_listeners *set)
{
    listener_close_list(set->fresh);
    set->fresh = NULL;
    rl_snapshot_unref(set->pending);
    set->pending = NULL;
}

void
rl_listeners_commit(struct rl_listeners *set)
{
    struct rl_snapshot *snap = set->pending;
    const struct rl_config *cfg = snap->cfg;
    struct listener_sock *kept = NULL, *fresh = set->fresh, *old = set->socks;

    /* Move every kept socket to the new settings, close the rest. */
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        const struct rl_listener_conf *lc = &cfg->listeners[i];

        for (size_t j = 0; j < lc->naddrs; j++) {
            struct listener_sock *ls = listener_take(&old, &lc->addrs[j]);

            if (ls == NULL)
                continue;
            listener_adopt(ls, snap, lc, &lc->addrs[j]);
            ls->next = kept;
            kept = ls;
        }
    }
    listener_close_list(old);
    while (fresh != NULL) {
        struct listener_sock *next = fresh->next;

        fresh->next = kept;
        kept = fresh;
        fresh = next;
    }
    set->socks = kept;
    set->fresh = NULL;
    set->pending = NULL;
    rl_snapshot_unref(snap);
}

int
rl_listeners_update(struct rl_listeners *set, struct rl_snapshot *snap, FILE *err)
{
    int rc = rl_listeners_prepare(set, snap, err);

    if (rc == 0)
        rl_listeners_commit(set);
    return rc;
}

int
rl_listeners_open(struct rl_ctx *ctx, struct rl_snapshot *snap, bool reuseport, FILE *err,
                  struct rl_listeners **out)
{
    struct rl_listeners *set = calloc(1, sizeof(*set));
    int rc;

    if (set == NULL)
        return RL_E_NOMEM;
    set->ctx = ctx;
    set->reuseport = reuseport;
    rc = rl_listeners_update(set, snap, err);
    if (rc < 0) {
        free(set);
        return rc;
    }
    *out = set;
    return 0;
}

void
rl_listeners_close(struct rl_listeners *set)
{
    if (set->pending != NULL)
        rl_listeners_rollback(set);
    listener_close_list(set->socks);
    free(set);
}

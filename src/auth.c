/*
 * auth.c - password checks on the libuv threadpool, bounded over the
 * whole process, with a delay before a failure is reported.  See auth.h.
 *
 * A request is in exactly one place: its worker's wait queue, the
 * threadpool (holding one of RL_AUTH_VERIFY_MAX tokens, counted in
 * rl_shared under its lock), or its failure-delay timer.  Tokens are
 * taken and given back on the request's own worker loop; a worker that
 * gives one back pokes every other worker with checks waiting.
 */
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "relabel/auth.h"
#include "relabel/ctx.h"
#include "relabel/limits.h"
#include "relabel/log.h"
#include "relabel/users.h"

struct rl_authq {
    uv_async_t async; /* another worker gave back a token */
    struct rl_ctx *ctx;
    struct rl_auth_req *head, *tail;
    size_t nwaiting; /* under shared->lock: read by other workers */
};

enum auth_where { AUTH_WAITING, AUTH_RUNNING, AUTH_DELAY };

struct rl_auth_req {
    uv_work_t work;
    uv_timer_t timer;
    struct rl_authq *q;
    struct rl_auth_req *next;
    enum auth_where where;
    bool cancelled;
    bool ok;
    unsigned delay_ms;
    rl_auth_cb cb;
    void *arg;
    char *hash; /* NULL: unknown user */
    size_t plen;
    char password[RL_USER_PASSWORD_MAX];
};

static void auth_pump(struct rl_authq *q);

static void
auth_free(struct rl_auth_req *r)
{
    explicit_bzero(r->password, sizeof(r->password));
    if (r->hash != NULL) {
        explicit_bzero(r->hash, strlen(r->hash));
        free(r->hash);
    }
    free(r);
}

static void
auth_on_timer_close(uv_handle_t *h)
{
    auth_free(h->data);
}

static void
auth_on_async(uv_async_t *a)
{
    auth_pump(a->data);
}

int
rl_auth_init(struct rl_ctx *ctx)
{
    struct rl_authq *q = calloc(1, sizeof(*q));
    int rc;

    if (q == NULL)
        return UV_ENOMEM;
    rc = uv_async_init(ctx->loop, &q->async, auth_on_async);
    if (rc < 0) {
        free(q);
        return rc;
    }
    q->async.data = q;
    q->ctx = ctx;
    /* Waiting checks belong to sessions, which keep the loop alive. */
    uv_unref((uv_handle_t *)&q->async);
    pthread_mutex_lock(&ctx->shared->lock);
    ctx->authq = q;
    pthread_mutex_unlock(&ctx->shared->lock);
    return 0;
}

static void
auth_on_q_close(uv_handle_t *h)
{
    free(h->data);
}

void
rl_auth_close(struct rl_ctx *ctx)
{
    struct rl_authq *q = ctx->authq;

    if (q == NULL)
        return;
    /* No other worker sends to it once it is unlisted. */
    pthread_mutex_lock(&ctx->shared->lock);
    ctx->authq = NULL;
    pthread_mutex_unlock(&ctx->shared->lock);
    uv_close((uv_handle_t *)&q->async, auth_on_q_close);
}

/* On the threadpool: nothing but crypt. */
static void
auth_work(uv_work_t *w)
{
    struct rl_auth_req *r = w->data;

    r->ok = rl_users_verify(r->hash, r->password, r->plen);
    explicit_bzero(r->password, sizeof(r->password));
}

static void
auth_deliver(struct rl_auth_req *r)
{
    rl_auth_cb cb = r->cb;
    void *arg = r->arg;
    bool ok = r->ok;

    if (r->where == AUTH_DELAY)
        uv_close((uv_handle_t *)&r->timer, auth_on_timer_close);
    else
        auth_free(r);
    cb(arg, ok);
}

static void
auth_on_delay(uv_timer_t *t)
{
    auth_deliver(t->data);
}

/* Gives a token back; other workers with checks waiting are woken. */
static void
auth_release(struct rl_authq *q)
{
    struct rl_shared *sh = q->ctx->shared;

    pthread_mutex_lock(&sh->lock);
    sh->nverify--;
    for (size_t i = 0; i < sh->nworkers; i++) {
        struct rl_authq *o = sh->workers[i]->authq;

        if (o != NULL && o != q && o->nwaiting > 0)
            uv_async_send(&o->async);
    }
    pthread_mutex_unlock(&sh->lock);
}

static void
auth_after(uv_work_t *w, int status)
{
    struct rl_auth_req *r = w->data;
    struct rl_authq *q = r->q;

    auth_release(q);
    if (r->cancelled || status != 0) {
        if (!r->cancelled) {
            r->ok = false;
            r->delay_ms = 0;
        } else {
            auth_free(r);
            auth_pump(q);
            return;
        }
    }
    if (!r->ok && r->delay_ms > 0 && uv_timer_init(w->loop, &r->timer) == 0) {
        r->where = AUTH_DELAY;
        r->timer.data = r;
        uv_timer_start(&r->timer, auth_on_delay, r->delay_ms, 0);
    } else {
        auth_deliver(r);
    }
    auth_pump(q);
}

/* Starts waiting checks while tokens are free. */
static void
auth_pump(struct rl_authq *q)
{
    struct rl_shared *sh = q->ctx->shared;

    while (q->head != NULL) {
        struct rl_auth_req *r = q->head;
        bool got;

        pthread_mutex_lock(&sh->lock);
        got = sh->nverify < RL_AUTH_VERIFY_MAX;
        if (got) {
            sh->nverify++;
            q->nwaiting--;
        }
        pthread_mutex_unlock(&sh->lock);
        if (!got)
            return;
        q->head = r->next;
        if (q->head == NULL)
            q->tail = NULL;
        r->next = NULL;
        r->where = AUTH_RUNNING;
        r->work.data = r;
        if (uv_queue_work(q->ctx->loop, &r->work, auth_work, auth_after) != 0) {
            rl_log(RL_LOG_ERROR, "cannot queue a password check");
            pthread_mutex_lock(&sh->lock);
            sh->nverify--;
            pthread_mutex_unlock(&sh->lock);
            r->ok = false;
            auth_deliver(r);
        }
    }
}

struct rl_auth_req *
rl_auth_verify(struct rl_ctx *ctx, const char *hash, const char *password, size_t plen,
               unsigned fail_delay_ms, rl_auth_cb cb, void *arg)
{
    struct rl_authq *q = ctx->authq;
    struct rl_auth_req *r;

    if (q == NULL)
        return NULL;
    r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    if (hash != NULL && (r->hash = strdup(hash)) == NULL) {
        free(r);
        return NULL;
    }
    if (plen > sizeof(r->password)) {
        /* Never matches; still costs a check (users.c). */
        free(r->hash);
        r->hash = NULL;
        plen = 0;
    }
    memcpy(r->password, password, plen);
    r->plen = plen;
    r->q = q;
    r->cb = cb;
    r->arg = arg;
    r->delay_ms = fail_delay_ms;
    r->where = AUTH_WAITING;
    if (q->tail != NULL)
        q->tail->next = r;
    else
        q->head = r;
    q->tail = r;
    pthread_mutex_lock(&ctx->shared->lock);
    q->nwaiting++;
    pthread_mutex_unlock(&ctx->shared->lock);
    /* Started from the async, never inside this call: the caller's state
     * is set before any callback can run. */
    uv_async_send(&q->async);
    return r;
}

void
rl_auth_cancel(struct rl_auth_req *r)
{
    struct rl_authq *q = r->q;

    switch (r->where) {
    case AUTH_WAITING: {
        struct rl_auth_req **pp = &q->head, *prev = NULL;

        while (*pp != NULL && *pp != r) {
            prev = *pp;
            pp = &(*pp)->next;
        }
        if (*pp == r) {
            *pp = r->next;
            if (q->tail == r)
                q->tail = prev;
        }
        pthread_mutex_lock(&q->ctx->shared->lock);
        q->nwaiting--;
        pthread_mutex_unlock(&q->ctx->shared->lock);
        auth_free(r);
        break;
    }
    case AUTH_RUNNING:
        /* Freed in auth_after(), which libuv calls even when the work
         * is cancelled before it started. */
        r->cancelled = true;
        uv_cancel((uv_req_t *)&r->work);
        break;
    case AUTH_DELAY:
        uv_timer_stop(&r->timer);
        uv_close((uv_handle_t *)&r->timer, auth_on_timer_close);
        break;
    }
}
